//! Runs a plugin's `<name>.vectors.toml` natively, so `cargo test` checks the same vectors that
//! `vsync plugin validate` runs against the built component. Needs the `vectors` feature
//! (enable it under `[dev-dependencies]` only).
//!
//! The format (the one `vsync plugin validate` reads):
//!
//! ```toml
//! config = { from = "prod/", to = "eu/" }  # default config, handed to `configure` as JSON
//! [context]                                 # default context: origin, destination, origin_mount,
//! destination = "eu"                        # destination_mount, kv_version (1 | 2), labels
//! labels = { region = "eu" }
//!
//! [[vector]]
//! path = "prod/app/db"
//! expect = "eu/app/db"      # or: dropped = true | included = true | error = "invalid-config"
//! ```
//!
//! A vector may override `config` (replaced as a whole) and `context` (field by field). `error`
//! matches the error's case name (`invalid-config`, `invalid-path`, `failed`) or a substring of
//! its message.
//!
//! ```
//! use vsync_plugin_sdk::{Context, PluginError, Transformer};
//!
//! struct Upper;
//! impl Transformer for Upper {
//!     fn configure(config: &str) -> Result<Self, PluginError> {
//!         if config == "{}" { Ok(Upper) } else { Err(PluginError::InvalidConfig("no settings".into())) }
//!     }
//!     fn transform(&self, path: &str, _ctx: &Context) -> Result<Option<String>, PluginError> {
//!         Ok(path.starts_with("prod/").then(|| path.to_uppercase()))
//!     }
//! }
//!
//! let passed = vsync_plugin_sdk::testing::vectors::check_transformer::<Upper>(r#"
//!     [[vector]]
//!     path = "prod/db"
//!     expect = "PROD/DB"
//!     [[vector]]
//!     path = "dev/db"
//!     dropped = true
//!     [[vector]]
//!     config = { x = 1 }
//!     path = "prod/db"
//!     error = "invalid-config"
//! "#);
//! assert_eq!(passed, 3);
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::{Context, Filter, KvVersion, PluginError, Transformer};

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct CtxSpec {
    origin: Option<String>,
    destination: Option<String>,
    origin_mount: Option<String>,
    destination_mount: Option<String>,
    kv_version: Option<u8>,
    labels: Option<BTreeMap<String, String>>,
}

impl CtxSpec {
    fn over(&self, base: &CtxSpec) -> Result<Context, String> {
        let mut b = super::context();
        let pick = |a: &Option<String>, b: &Option<String>| a.clone().or_else(|| b.clone());
        if let Some(v) = pick(&self.origin, &base.origin) {
            b.0.origin = v;
        }
        if let Some(v) = pick(&self.destination, &base.destination) {
            b.0.destination = v;
        }
        if let Some(v) = pick(&self.origin_mount, &base.origin_mount) {
            b.0.origin_mount = v;
        }
        if let Some(v) = pick(&self.destination_mount, &base.destination_mount) {
            b.0.destination_mount = v;
        }
        b.0.kv_version = match self.kv_version.or(base.kv_version) {
            None | Some(2) => KvVersion::V2,
            Some(1) => KvVersion::V1,
            Some(n) => return Err(format!("context.kv_version must be 1 or 2, not {n}")),
        };
        if let Some(labels) = self.labels.as_ref().or(base.labels.as_ref()) {
            b.0.labels = labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        }
        Ok(b.build())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Vector {
    config: Option<toml::Table>,
    context: Option<CtxSpec>,
    path: String,
    expect: Option<String>,
    dropped: Option<bool>,
    included: Option<bool>,
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VectorsFile {
    config: Option<toml::Table>,
    context: Option<CtxSpec>,
    #[serde(default)]
    vector: Vec<Vector>,
}

/// What a vector expects.
enum Want<'a> {
    Path(&'a str),
    Dropped,
    Included,
    Error(&'a str),
}

fn want(v: &Vector) -> Result<Want<'_>, String> {
    let mut found = Vec::new();
    if let Some(p) = &v.expect {
        found.push(Want::Path(p));
    }
    if v.dropped == Some(true) {
        found.push(Want::Dropped);
    }
    if v.included == Some(true) {
        found.push(Want::Included);
    }
    if let Some(e) = &v.error {
        found.push(Want::Error(e));
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err("no expectation (expect, dropped, included or error)".into()),
        _ => Err("more than one expectation".into()),
    }
}

fn error_matches(want: &str, e: &PluginError) -> bool {
    want == e.case() || e.to_string().contains(want)
}

/// Runs every vector with `call` (configure + one call; `Ok(Some(path))` is "kept/mapped",
/// `Ok(None)` "dropped"). Returns the number of vectors, or panics listing every failure.
fn run(
    kind: &str,
    vectors_toml: &str,
    call: impl Fn(&str, &str, &Context) -> Result<Option<String>, PluginError>,
) -> usize {
    let file: VectorsFile = match toml::from_str(vectors_toml) {
        Ok(f) => f,
        Err(e) => panic!("vectors file does not parse: {e}"),
    };
    assert!(!file.vector.is_empty(), "vectors file has no [[vector]]");
    let base = file.context.clone().unwrap_or_default();
    let mut failures = Vec::new();
    for (i, v) in file.vector.iter().enumerate() {
        let label = format!("vector #{} ({:?})", i + 1, v.path);
        let want = match want(v) {
            Ok(w) => w,
            Err(m) => {
                failures.push(format!("{label}: {m}"));
                continue;
            }
        };
        if matches!(want, Want::Included) && kind != "filter" {
            failures.push(format!("{label}: `included` is for filters; use `expect` for a transformer"));
            continue;
        }
        let config = v.config.as_ref().or(file.config.as_ref()).cloned().unwrap_or_default();
        let config = match serde_json::to_string(&config) {
            Ok(c) => c,
            Err(e) => {
                failures.push(format!("{label}: config is not JSON-representable: {e}"));
                continue;
            }
        };
        let ctx = match v.context.clone().unwrap_or_default().over(&base) {
            Ok(c) => c,
            Err(m) => {
                failures.push(format!("{label}: {m}"));
                continue;
            }
        };
        let got = call(&config, &v.path, &ctx);
        let problem = match (&want, &got) {
            (Want::Path(w), Ok(Some(g))) if g == w => None,
            (Want::Dropped, Ok(None)) => None,
            (Want::Included, Ok(Some(_))) => None,
            (Want::Error(w), Err(e)) if error_matches(w, e) => None,
            (Want::Path(w), _) => Some(format!("expected `{w}`, got {got:?}")),
            (Want::Dropped, _) => Some(format!("expected dropped, got {got:?}")),
            (Want::Included, _) => Some(format!("expected included, got {got:?}")),
            (Want::Error(w), _) => Some(format!("expected error `{w}`, got {got:?}")),
        };
        if let Some(p) = problem {
            failures.push(format!("{label}: {p}"));
        }
    }
    assert!(failures.is_empty(), "{} of {} vectors failed:\n{}", failures.len(), file.vector.len(), failures.join("\n"));
    file.vector.len()
}

/// Checks a transformer against a vectors file's text (e.g.
/// `include_str!("../regex.vectors.toml")`). Returns how many vectors passed; panics listing
/// every failing vector otherwise.
pub fn check_transformer<T: Transformer>(vectors_toml: &str) -> usize {
    run("transformer", vectors_toml, |config, path, ctx| T::configure(config)?.transform(path, ctx))
}

/// Checks a filter against a vectors file's text: `included = true` expects `include` to return
/// `true`, `dropped = true` expects `false`. Returns how many vectors passed; panics listing every
/// failing vector otherwise.
///
/// ```
/// use vsync_plugin_sdk::{Context, Filter, PluginError};
///
/// struct NoTmp;
/// impl Filter for NoTmp {
///     fn configure(_config: &str) -> Result<Self, PluginError> { Ok(NoTmp) }
///     fn include(&self, path: &str, _ctx: &Context) -> Result<bool, PluginError> {
///         Ok(!path.starts_with("tmp/"))
///     }
/// }
///
/// vsync_plugin_sdk::testing::vectors::check_filter::<NoTmp>(r#"
///     [[vector]]
///     path = "app/db"
///     included = true
///     [[vector]]
///     path = "tmp/x"
///     dropped = true
/// "#);
/// ```
pub fn check_filter<T: Filter>(vectors_toml: &str) -> usize {
    run("filter", vectors_toml, |config, path, ctx| {
        Ok(T::configure(config)?.include(path, ctx)?.then(|| path.to_owned()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Label;
    impl Transformer for Label {
        fn configure(_config: &str) -> Result<Self, PluginError> {
            Ok(Label)
        }
        fn transform(&self, path: &str, ctx: &Context) -> Result<Option<String>, PluginError> {
            let r = ctx.label("region").ok_or_else(|| PluginError::Failed("no region label".into()))?;
            Ok(Some(format!("{r}/{path}/{}/{:?}", ctx.destination, ctx.kv_version)))
        }
    }

    #[test]
    fn context_defaults_and_overrides() {
        let n = check_transformer::<Label>(
            r#"
            [context]
            destination = "eu"
            labels = { region = "eu" }
            [[vector]]
            path = "a"
            expect = "eu/a/eu/V2"
            [[vector]]
            context = { kv_version = 1, destination = "x" }
            path = "a"
            expect = "eu/a/x/V1"
            [[vector]]
            context = { labels = {} }
            path = "a"
            error = "failed"
            [[vector]]
            context = { labels = {} }
            path = "a"
            error = "no region"
            "#,
        );
        assert_eq!(n, 4);
    }

    #[test]
    #[should_panic(expected = "expected `nope`")]
    fn a_wrong_expectation_fails() {
        check_transformer::<Label>("[context]\nlabels = { region = \"eu\" }\n[[vector]]\npath = \"a\"\nexpect = \"nope\"\n");
    }

    #[test]
    #[should_panic(expected = "no expectation")]
    fn a_vector_needs_an_expectation() {
        check_transformer::<Label>("[[vector]]\npath = \"a\"\n");
    }

    #[test]
    #[should_panic(expected = "does not parse")]
    fn unknown_keys_are_refused() {
        check_transformer::<Label>("[[vector]]\npath = \"a\"\nexpcet = \"a\"\n");
    }
}

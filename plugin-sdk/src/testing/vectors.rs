//! Runs a plugin's `<name>.vectors.toml` natively, so `cargo test` checks the same vectors that
//! `vsync plugin validate` runs against the built component. Needs the `vectors` feature
//! (enable it under `[dev-dependencies]` only).
//!
//! The format is the one `vsync plugin validate` reads, described (and defined, for both) in
//! [`format`].
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

use crate::{Context, Filter, KvVersion, PluginError, Transformer};

pub mod format;

use format::{Expectation, VectorContext, VectorsFile};

fn context(c: VectorContext) -> Context {
    Context {
        origin: c.origin,
        destination: c.destination,
        origin_mount: c.origin_mount,
        destination_mount: c.destination_mount,
        kv_version: if c.kv_version == 1 { KvVersion::V1 } else { KvVersion::V2 },
        labels: c.labels.into_iter().collect(),
    }
}

/// Runs one vector with `call`; `None` when it passed, else what went wrong.
fn check(
    file: &VectorsFile,
    v: &format::Vector,
    filter: bool,
    call: &impl Fn(&str, &str, &Context) -> Result<Option<String>, PluginError>,
) -> Option<String> {
    let prepared = v
        .expectation(filter)
        .and_then(|want| Ok((want, v.config_json(file)?, context(v.context(file)?))));
    let (want, config, ctx) = match prepared {
        Ok(p) => p,
        Err(m) => return Some(m),
    };
    let got = call(&config, &v.path, &ctx);
    match (&want, &got) {
        (Expectation::Path(w), Ok(Some(g))) if g == w => None,
        (Expectation::Dropped, Ok(None)) | (Expectation::Included, Ok(Some(_))) => None,
        (Expectation::Error(w), Err(e)) if format::error_matches(w, Some(e.case()), &e.to_string()) => None,
        (Expectation::Path(w), _) => Some(format!("expected `{w}`, got {got:?}")),
        (Expectation::Dropped, _) => Some(format!("expected dropped, got {got:?}")),
        (Expectation::Included, _) => Some(format!("expected included, got {got:?}")),
        (Expectation::Error(w), _) => Some(format!("expected error `{w}`, got {got:?}")),
    }
}

/// Runs every vector with `call` (configure + one call; `Ok(Some(path))` is "kept/mapped",
/// `Ok(None)` "dropped"). Returns the number of vectors, or panics listing every failure.
fn run(filter: bool, vectors_toml: &str, call: impl Fn(&str, &str, &Context) -> Result<Option<String>, PluginError>) -> usize {
    let file = match VectorsFile::parse(vectors_toml) {
        Ok(f) => f,
        Err(e) => panic!("vectors file does not parse: {e}"),
    };
    assert!(!file.vector.is_empty(), "vectors file has no [[vector]]");
    let failures: Vec<String> = file
        .vector
        .iter()
        .enumerate()
        .filter_map(|(i, v)| check(&file, v, filter, &call).map(|p| format!("vector #{} ({:?}): {p}", i + 1, v.path)))
        .collect();
    assert!(failures.is_empty(), "{} of {} vectors failed:\n{}", failures.len(), file.vector.len(), failures.join("\n"));
    file.vector.len()
}

/// Checks a transformer against a vectors file's text (e.g.
/// `include_str!("../regex.vectors.toml")`). Returns how many vectors passed; panics listing
/// every failing vector otherwise.
pub fn check_transformer<T: Transformer>(vectors_toml: &str) -> usize {
    run(false, vectors_toml, |config, path, ctx| T::configure(config)?.transform(path, ctx))
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
    run(true, vectors_toml, |config, path, ctx| {
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

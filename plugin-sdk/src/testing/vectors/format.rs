//! The test-vectors file format (`<name>.vectors.toml`), defined once: the SDK's
//! [`testing::vectors`](super) runs it natively in `cargo test`, and `vsync plugin validate`
//! runs it against the built component (the host compiles this very file in as a module of
//! its own). It is self-contained on purpose, std, serde and toml only, so that sharing it
//! adds nothing to either side.
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
//! - Each vector has exactly one expectation: `expect` (the transformer's output, or for a
//!   filter the path itself, included), `dropped = true` (a filter excludes the path, a
//!   transformer returns none; `included = false` says the same), `included = true` (filters
//!   only; `dropped = false` says the same) or `error`.
//! - A vector may override `config` (replaced as a whole; none at all is `{}`) and `context`
//!   (field by field). Context defaults: origin `origin`, destination `test`, mounts `secret/`,
//!   KV v2, no labels.
//! - `error` matches the error's case name (`invalid-config`, `invalid-path`, `failed`; `vsync
//!   plugin validate` also knows its own verdicts `timeout`, `memory-exceeded`,
//!   `output-too-long` and `trap`) or a substring of its message.
//! - Unknown keys are refused.

use std::collections::BTreeMap;

use serde::Deserialize;

/// A whole vectors file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VectorsFile {
    /// Default config of every vector.
    #[serde(default)]
    pub config: Option<toml::Table>,
    /// Default context of every vector.
    #[serde(default)]
    pub context: Option<ContextSpec>,
    /// The vectors, in file order.
    #[serde(default)]
    pub vector: Vec<Vector>,
}

/// A context as written: every field optional.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextSpec {
    /// Origin name.
    pub origin: Option<String>,
    /// Destination name.
    pub destination: Option<String>,
    /// Origin mount.
    pub origin_mount: Option<String>,
    /// Destination mount.
    pub destination_mount: Option<String>,
    /// KV version of the origin mount: 1 or 2.
    pub kv_version: Option<u8>,
    /// Destination labels.
    pub labels: Option<BTreeMap<String, String>>,
}

/// One `[[vector]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vector {
    /// This vector's config (replaces the file's).
    #[serde(default)]
    pub config: Option<toml::Table>,
    /// This vector's context (overrides the file's field by field).
    #[serde(default)]
    pub context: Option<ContextSpec>,
    /// The mount-relative origin path.
    pub path: String,
    /// The expected output path.
    #[serde(default)]
    pub expect: Option<String>,
    /// Whether the path is expected to be dropped.
    #[serde(default)]
    pub dropped: Option<bool>,
    /// Whether the path is expected to be included (filters).
    #[serde(default)]
    pub included: Option<bool>,
    /// The expected error: a case name or part of the message.
    #[serde(default)]
    pub error: Option<String>,
}

/// The context a vector runs with, defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VectorContext {
    /// Origin name.
    pub origin: String,
    /// Destination name.
    pub destination: String,
    /// Origin mount.
    pub origin_mount: String,
    /// Destination mount.
    pub destination_mount: String,
    /// KV version of the origin mount: 1 or 2.
    pub kv_version: u8,
    /// Destination labels.
    pub labels: BTreeMap<String, String>,
}

/// What a vector expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expectation<'a> {
    /// This output path (for a filter: the path is included).
    Path(&'a str),
    /// Excluded by a filter, or no output from a transformer.
    Dropped,
    /// Included by a filter.
    Included,
    /// An error whose case is, or whose message contains, this text.
    Error(&'a str),
}

impl VectorsFile {
    /// Parses a vectors file's text.
    pub fn parse(text: &str) -> Result<VectorsFile, toml::de::Error> {
        toml::from_str(text)
    }
}

impl Vector {
    /// The vector's one expectation; `filter` tells whether the plugin is a filter (`included`
    /// is for filters only).
    pub fn expectation(&self, filter: bool) -> Result<Expectation<'_>, String> {
        let mut found = Vec::new();
        if let Some(p) = &self.expect {
            found.push(Expectation::Path(p));
        }
        for (flag, dropped) in [(self.dropped, true), (self.included, false)] {
            match flag {
                Some(f) if f == dropped => found.push(Expectation::Dropped),
                Some(_) => found.push(Expectation::Included),
                None => {}
            }
        }
        if let Some(e) = &self.error {
            found.push(Expectation::Error(e));
        }
        match found[..] {
            [Expectation::Included] if !filter => Err("`included` is for filters; use `expect` for a transformer".into()),
            [one] => Ok(one),
            [] => Err("no expectation (one of `expect`, `dropped`, `included` or `error`)".into()),
            _ => Err("more than one expectation (a vector needs exactly one of `expect`, `dropped`, `included`, `error`)".into()),
        }
    }

    /// The config handed to `configure`: the vector's, else the file's, else `{}`, as JSON.
    pub fn config_json(&self, file: &VectorsFile) -> Result<String, String> {
        let config = self.config.as_ref().or(file.config.as_ref()).cloned().unwrap_or_default();
        serde_json::to_string(&config).map_err(|e| format!("config is not JSON-representable: {e}"))
    }

    /// The context: the vector's fields, else the file's, else the defaults.
    pub fn context(&self, file: &VectorsFile) -> Result<VectorContext, String> {
        let (own, base) = (self.context.clone().unwrap_or_default(), file.context.clone().unwrap_or_default());
        let pick = |a: Option<String>, b: Option<String>, default: &str| a.or(b).unwrap_or_else(|| default.to_owned());
        let kv_version = match own.kv_version.or(base.kv_version) {
            None => 2,
            Some(v @ (1 | 2)) => v,
            Some(n) => return Err(format!("context.kv_version must be 1 or 2, not {n}")),
        };
        Ok(VectorContext {
            origin: pick(own.origin, base.origin, "origin"),
            destination: pick(own.destination, base.destination, "test"),
            origin_mount: pick(own.origin_mount, base.origin_mount, "secret/"),
            destination_mount: pick(own.destination_mount, base.destination_mount, "secret/"),
            kv_version,
            labels: own.labels.or(base.labels).unwrap_or_default(),
        })
    }
}

/// Whether an error with this case name (if any) and message is the `want`ed one.
pub fn error_matches(want: &str, case: Option<&str>, message: &str) -> bool {
    case == Some(want) || message.contains(want)
}

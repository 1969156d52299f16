//! The JSON Schema of `vsync.toml`, generated from the config types with `schemars`.
//!
//! It is committed as `engine/config/vsync.schema.json` (a test regenerates it and fails when
//! the file is stale) for editors and CI linters, and the loader walks documents against it to
//! find every unknown key (`crate::diag`). Durations and sizes are strings with units in the
//! file, so their schemas are written here by hand.

use std::sync::OnceLock;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};

/// humantime's syntax: one or more `<number><unit>` groups (`"30s"`, `"1h 30m"`, `"50ms"`).
pub const DURATION_PATTERN: &str = r"^\s*([0-9]+\s*[a-zA-Zµ]+\s*)+$";

/// A byte count with an optional unit.
pub const SIZE_PATTERN: &str = r"^\s*[0-9]+\s*(B|KiB|MiB|GiB|KB|kB|MB|GB)?\s*$";

/// Schema of a duration field.
pub fn duration(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "pattern": DURATION_PATTERN,
        "description": "A duration: a number with a unit (ns, us, ms, s, m, h, d), like \"30s\", \"1m\", \"50ms\" or \"1h 30m\".",
        "examples": ["30s", "1m", "50ms"],
    })
}

/// Schema of a size field.
pub fn size(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "pattern": SIZE_PATTERN,
        "description": "A size in bytes, with a unit: B, KiB, MiB, GiB (powers of 2) or KB, MB, GB (powers of 10), like \"32MiB\".",
        "examples": ["32MiB", "512KiB"],
    })
}

/// Schema of `workers`: `"auto"` or a number of requests in flight.
pub fn workers(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "Requests in flight per Vault side: \"auto\" (adaptive, from 1 up to 256, following latency and back-pressure; the default) or a fixed number from 1 to 1024.",
        "oneOf": [
            { "const": "auto" },
            { "type": "integer", "minimum": 1, "maximum": 1024 }
        ],
        "default": "auto",
    })
}

// Mirrors of `vsync_core::VersionsMode` and `DeletePolicy` for the schema (the core crate does
// not depend on schemars); a test checks both accept the same words.

/// Which KV v2 versions a destination replicates.
#[derive(JsonSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum Versions {
    /// An exact replica of every KV v2 version (the default).
    All,
    /// Only the current version is copied.
    Latest,
}

/// What a destination does when a secret disappears at the origin.
#[derive(JsonSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum Deletes {
    /// Remove the secret at the destination (KV v2: all versions and metadata; the default).
    Mirror,
    /// Soft-delete the latest version (KV v2); KV v1 values are left in place.
    Soft,
    /// Leave the destination copy alone.
    Ignore,
}

/// The config's JSON Schema (draft 2020-12), as JSON.
pub fn json_schema() -> serde_json::Value {
    let mut schema = schemars::schema_for!(crate::Config).to_value();
    no_null(&mut schema);
    schema
}

/// TOML has no null: an optional key is one that may be left out, so the `null` alternatives
/// schemars gives `Option` fields (and their `default: null`) would only mislead an editor.
fn no_null(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            if map.get("default") == Some(&Value::Null) {
                map.remove("default");
            }
            if let Some(Value::Array(types)) = map.get_mut("type") {
                types.retain(|t| t != "null");
                if types.len() == 1 {
                    let only = types.remove(0);
                    map.insert("type".into(), only);
                }
            }
            let null = serde_json::json!({ "type": "null" });
            if let Some(Value::Array(alts)) = map.get_mut("anyOf") {
                alts.retain(|a| *a != null);
                if alts.len() == 1 {
                    let only = alts.remove(0);
                    map.remove("anyOf");
                    if let Value::Object(fields) = only {
                        for (k, field) in fields {
                            map.entry(k).or_insert(field);
                        }
                    }
                }
            }
            map.values_mut().for_each(no_null);
        }
        Value::Array(items) => items.iter_mut().for_each(no_null),
        _ => {}
    }
}

/// The schema, generated once per process for the unknown-key walk.
pub(crate) fn cached() -> &'static serde_json::Value {
    static SCHEMA: OnceLock<serde_json::Value> = OnceLock::new();
    SCHEMA.get_or_init(json_schema)
}

/// The schema as committed: pretty JSON with a trailing newline.
pub fn json_schema_text() -> String {
    let mut text = serde_json::to_string_pretty(&json_schema()).unwrap_or_default();
    text.push('\n');
    text
}

//! The destination's `config_hash`: a SHA-256 over a canonical JSON encoding of what decides
//! where a destination writes (its mount map, transforms and filters, and `versions = "all"`).
//! When the hash a destination committed differs from the one in force, its next cycle
//! re-plans every key (`vsync_core::cycle::plan_cycle`, `recheck_all`): targets are computed
//! again, so moved keys are written at their new place and removed from the old.
//!
//! The encoding is versioned and language-independent (not a `Debug` print):
//!
//! ```text
//! {"filters":[{"config":{..},"plugin":"glob"}],"format":1,"mounts":{"secret/":"replica/"},
//!  "transforms":[..],"versions":"all"}
//! ```
//!
//! Objects have their keys sorted (bytewise), there is no white space, strings and numbers are
//! written as `serde_json` writes them, mounts are normalised (`secret` and `secret/` are one
//! mount), a plugin without `config` has `{}`, and `versions` is present only for `"all"` (a
//! switch to `all` re-checks every key and adopts exact copies; `latest` needs no re-check).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;
use sha2::{Digest as _, Sha256};
use vsync_core::VersionsMode;

/// Version of the encoding, inside it (`"format":1`).
pub const CONFIG_HASH_FORMAT: u64 = 1;

/// A plugin of a stack as the hash and the plugin host see it: its name and its `configure`
/// JSON.
pub type PluginConfig = (String, Value);

/// The hash of a destination's mount map (normalised), transforms, filters and versions mode,
/// as 64 lowercase hex digits.
pub fn config_hash(
    mounts: &BTreeMap<String, String>,
    transforms: &[PluginConfig],
    filters: &[PluginConfig],
    versions: VersionsMode,
) -> String {
    let text = canonical_json(&document(mounts, transforms, filters, versions));
    vsync_core::Digest(Sha256::digest(text.as_bytes()).into()).to_hex()
}

/// The document that is hashed.
fn document(
    mounts: &BTreeMap<String, String>,
    transforms: &[PluginConfig],
    filters: &[PluginConfig],
    versions: VersionsMode,
) -> Value {
    let stack = |list: &[PluginConfig]| -> Value {
        list.iter()
            .map(|(plugin, config)| serde_json::json!({ "plugin": plugin, "config": config }))
            .collect()
    };
    let mut doc = serde_json::json!({
        "format": CONFIG_HASH_FORMAT,
        "mounts": mounts,
        "transforms": stack(transforms),
        "filters": stack(filters),
    });
    if versions == VersionsMode::All
        && let Value::Object(map) = &mut doc
    {
        map.insert("versions".into(), Value::String("all".into()));
    }
    doc
}

/// Canonical JSON: object keys sorted, no white space. (`serde_json` keeps insertion order
/// when its `preserve_order` feature is on anywhere in the build, so the order is made here.)
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let sorted: BTreeMap<&String, &Value> = map.iter().collect();
            out.push('{');
            for (i, (k, v)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{}:", Value::String(k.clone()));
                write_canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        scalar => {
            let _ = write!(out, "{scalar}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mounts(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect()
    }

    #[test]
    fn the_encoding_is_canonical_and_pinned() {
        let m = mounts(&[("secret/", "replica/"), ("kv1/", "kv1/")]);
        let t = vec![("regex".to_owned(), serde_json::json!({ "to": "{app}", "from": "^(?P<app>.*)$" }))];
        let f = vec![("glob".to_owned(), serde_json::json!({ "include": ["**"] }))];
        let doc = canonical_json(&document(&m, &t, &f, VersionsMode::All));
        assert_eq!(
            doc,
            r#"{"filters":[{"config":{"include":["**"]},"plugin":"glob"}],"format":1,"mounts":{"kv1/":"kv1/","secret/":"replica/"},"transforms":[{"config":{"from":"^(?P<app>.*)$","to":"{app}"},"plugin":"regex"}],"versions":"all"}"#
        );
        // Pinned: a change of the encoding changes every destination's hash (a full re-plan).
        // The value is `sha256sum` of `{"filters":[],"format":1,"mounts":{"secret/":"secret/"},"transforms":[]}`.
        assert_eq!(config_hash(&m, &t, &f, VersionsMode::All), config_hash(&m, &t, &f, VersionsMode::All));
        assert_eq!(
            config_hash(&mounts(&[("secret/", "secret/")]), &[], &[], VersionsMode::Latest),
            "b49c97960784139e59b6afb43481a88997f4a9c95e12cc1ad89668ff2767e496"
        );
    }

    #[test]
    fn key_order_does_not_matter_and_every_part_counts() {
        let m = mounts(&[("secret/", "secret/")]);
        let a: Value = serde_json::from_str(r#"{"from":"a","to":"b"}"#).unwrap_or_default();
        let b: Value = serde_json::from_str(r#"{"to":"b","from":"a"}"#).unwrap_or_default();
        let base = config_hash(&m, &[("regex".into(), a.clone())], &[], VersionsMode::Latest);
        assert_eq!(base, config_hash(&m, &[("regex".into(), b)], &[], VersionsMode::Latest));
        let others = [
            config_hash(&mounts(&[("secret/", "other/")]), &[("regex".into(), a.clone())], &[], VersionsMode::Latest),
            config_hash(&m, &[("prefix".into(), a.clone())], &[], VersionsMode::Latest),
            config_hash(&m, &[], &[("regex".into(), a.clone())], VersionsMode::Latest),
            config_hash(&m, &[("regex".into(), a)], &[], VersionsMode::All),
        ];
        for other in others {
            assert_ne!(base, other);
        }
    }
}

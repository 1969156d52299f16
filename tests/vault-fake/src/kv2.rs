//! KV v2 keys: versions, pruning, delete/undelete/destroy, metadata and mount config, with the
//! rules of OpenBao 2.7.2 (`internal/builtin/logical/kv`; each rule pinned by `tests/contract.rs`).

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde_json::{Value, json};

use crate::error::ApiError;
use crate::time::{after, go_duration, parse_duration_secs, rfc3339};

/// Versions kept when neither the key nor the mount sets `max_versions`.
const DEFAULT_MAX_VERSIONS: u64 = 10;

/// A KV v2 mount's `config`.
#[derive(Debug, Clone, Default)]
pub(crate) struct MountConfig {
    pub max_versions: u64,
    pub cas_required: bool,
    /// Seconds; negative disables `delete_version_after` for the whole mount (stored as -1).
    pub delete_version_after: i64,
}

impl MountConfig {
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "cas_required": self.cas_required,
            "delete_version_after": go_duration(self.delete_version_after),
            "max_versions": self.max_versions,
            "metadata_cas_required": false,
        })
    }

    /// `POST <mount>config`: only the fields given change.
    pub(crate) fn update(&mut self, body: &Value) -> Result<(), ApiError> {
        if let Some(v) = body.get("max_versions") {
            self.max_versions = uint_field("max_versions", v)?;
        }
        if let Some(v) = body.get("cas_required") {
            self.cas_required = bool_field("cas_required", v)?;
        }
        if let Some(v) = body.get("delete_version_after") {
            let secs = parse_duration_secs("delete_version_after", v)?;
            self.delete_version_after = if secs < 0 { -1 } else { secs };
        }
        Ok(())
    }
}

/// One version of a key.
#[derive(Debug, Clone)]
pub(crate) struct Version {
    /// `None` once destroyed.
    pub data: Option<Value>,
    pub created: SystemTime,
    pub deletion: Option<SystemTime>,
    pub destroyed: bool,
}

impl Version {
    /// Deleted at `now`: a deletion time that has come.
    pub(crate) fn deleted_at(&self, now: SystemTime) -> bool {
        self.deletion.is_some_and(|d| d <= now)
    }

    fn to_json(&self) -> Value {
        json!({
            "created_time": rfc3339(self.created),
            "deletion_time": self.deletion.map(rfc3339).unwrap_or_default(),
            "destroyed": self.destroyed,
        })
    }
}

/// A KV v2 key: its metadata and kept versions.
#[derive(Debug, Clone)]
pub(crate) struct Key {
    pub current_version: u64,
    pub oldest_version: u64,
    pub max_versions: u64,
    pub cas_required: bool,
    /// Seconds (never negative on a key).
    pub delete_version_after: i64,
    pub custom_metadata: Option<BTreeMap<String, String>>,
    pub created: SystemTime,
    pub updated: SystemTime,
    pub metadata_version: u64,
    pub versions: BTreeMap<u64, Version>,
}

impl Key {
    fn new(now: SystemTime) -> Self {
        Self {
            current_version: 0,
            oldest_version: 0,
            max_versions: 0,
            cas_required: false,
            delete_version_after: 0,
            custom_metadata: None,
            created: now,
            updated: now,
            metadata_version: 0,
            versions: BTreeMap::new(),
        }
    }

    /// The metadata document (`GET metadata`, a `key_info` entry).
    pub(crate) fn metadata_json(&self) -> Value {
        let versions: serde_json::Map<String, Value> =
            self.versions.iter().map(|(n, v)| (n.to_string(), v.to_json())).collect();
        json!({
            "cas_required": self.cas_required,
            "created_time": rfc3339(self.created),
            "current_metadata_version": self.metadata_version,
            "current_version": self.current_version,
            "custom_metadata": self.custom_metadata,
            "delete_version_after": go_duration(self.delete_version_after),
            "max_versions": self.max_versions,
            "metadata_cas_required": false,
            "oldest_version": self.oldest_version,
            "updated_time": rfc3339(self.updated),
            "versions": versions,
        })
    }

    /// The per-version metadata of a data read or write.
    fn version_json(&self, number: u64, version: &Version) -> Value {
        json!({
            "created_time": rfc3339(version.created),
            "custom_metadata": self.custom_metadata,
            "deletion_time": version.deletion.map(rfc3339).unwrap_or_default(),
            "destroyed": version.destroyed,
            "version": number,
        })
    }

    /// `AddVersion`: a new `current_version + 1`, then pruning to `max(key, mount)` versions
    /// (10 when both are 0).
    fn add_version(&mut self, data: Value, now: SystemTime, deletion: Option<SystemTime>, config: &MountConfig) -> u64 {
        self.current_version += 1;
        let version = Version { data: Some(data), created: now, deletion, destroyed: false };
        self.versions.insert(self.current_version, version);
        self.updated = now;
        let keep = match self.max_versions.max(config.max_versions) {
            0 => DEFAULT_MAX_VERSIONS,
            n => n,
        };
        if self.current_version - self.oldest_version >= keep {
            let drop_through = self.current_version - keep;
            self.versions.retain(|n, _| *n > drop_through);
            self.oldest_version = drop_through + 1;
        }
        self.current_version
    }
}

/// The keys of one KV v2 mount.
#[derive(Debug, Clone, Default)]
pub(crate) struct Kv2 {
    pub config: MountConfig,
    pub keys: BTreeMap<String, Key>,
}

impl Kv2 {
    /// `GET data/<p>[?version=N]`: `Ok((status, data))` where a deleted or destroyed version is
    /// a 404 that carries its metadata.
    pub(crate) fn read(&self, path: &str, version: i64, now: SystemTime) -> Result<(u16, Value), ApiError> {
        let key = self.keys.get(path).ok_or_else(ApiError::not_found)?;
        let number = if version <= 0 { key.current_version } else { version.unsigned_abs() };
        let v = key.versions.get(&number).ok_or_else(ApiError::not_found)?;
        let meta = key.version_json(number, v);
        if v.deleted_at(now) || v.destroyed {
            return Ok((404, json!({"data": null, "metadata": meta})));
        }
        Ok((200, json!({"data": v.data.clone().unwrap_or(Value::Null), "metadata": meta})))
    }

    /// `POST data/<p>`: `{"options":{"cas":N},"data":{...}}`.
    pub(crate) fn write(&mut self, path: &str, body: &Value, now: SystemTime) -> Result<Value, ApiError> {
        if path.is_empty() || path.ends_with('/') {
            return Err(ApiError::bad_request("cannot write to a path ending in '/'"));
        }
        let data = match body.get("data") {
            None => return Err(ApiError::bad_request("no data provided")),
            Some(d @ (Value::Object(_) | Value::Null)) => d.clone(),
            Some(other) => {
                let got = if other.is_array() { "[]interface {}" } else if other.is_string() { "string" } else { "float64" };
                return Err(ApiError::bad_request(format!(
                    "error converting input for field \"data\": '' expected type 'map[string]interface {{}}', got unconvertible type '{got}'"
                )));
            }
        };
        let cas = match body.get("options").and_then(|o| o.get("cas")) {
            Some(v) => Some(uint_field("cas", v)?),
            None => None,
        };
        let existing = self.keys.get(path);
        let current = existing.map_or(0, |k| k.current_version);
        let required = self.config.cas_required || existing.is_some_and(|k| k.cas_required);
        match cas {
            None if required => return Err(ApiError::bad_request("check-and-set parameter required for this call")),
            Some(c) if c != current => {
                return Err(ApiError::bad_request("check-and-set parameter did not match the current version"));
            }
            _ => {}
        }
        let config = self.config.clone();
        let key = self.keys.entry(path.to_owned()).or_insert_with(|| Key::new(now));
        let deletion = deletion_after(config.delete_version_after, key.delete_version_after).map(|s| after(now, s));
        let number = key.add_version(data, now, deletion, &config);
        let version = key.versions.get(&number).cloned().ok_or_else(|| ApiError::new(500, "version vanished"))?;
        Ok(key.version_json(number, &version))
    }

    /// `DELETE data/<p>`: soft-deletes the latest version unless it is already deleted or
    /// destroyed (or the key is missing).
    pub(crate) fn delete_latest(&mut self, path: &str, now: SystemTime) {
        if let Some(key) = self.keys.get_mut(path) {
            let current = key.current_version;
            if let Some(v) = key.versions.get_mut(&current)
                && !v.destroyed
                && !v.deleted_at(now)
            {
                v.deletion = Some(now);
            }
        }
    }

    /// `POST delete|undelete|destroy/<p>` `{"versions":[...]}`. Missing keys and versions are
    /// skipped; delete and undelete skip destroyed versions; destroy keeps a deletion time.
    pub(crate) fn versions_op(&mut self, op: &str, path: &str, body: &Value, now: SystemTime) -> Result<(), ApiError> {
        let versions = version_list(op, body)?;
        let Some(key) = self.keys.get_mut(path) else {
            return Ok(());
        };
        for number in versions {
            let Some(v) = key.versions.get_mut(&number) else { continue };
            match op {
                "delete" if !v.destroyed && !v.deleted_at(now) => v.deletion = Some(now),
                "undelete" if !v.destroyed => v.deletion = None,
                "destroy" => {
                    v.destroyed = true;
                    v.data = None;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// `POST metadata/<p>`: creates the key if missing; only the fields given change; never
    /// prunes.
    pub(crate) fn write_metadata(&mut self, path: &str, body: &Value, now: SystemTime) -> Result<(), ApiError> {
        if path.is_empty() || path.ends_with('/') {
            return Err(ApiError::bad_request("cannot write to a path ending in '/'"));
        }
        let max_versions = body.get("max_versions").map(|v| uint_field("max_versions", v)).transpose()?;
        let cas_required = body.get("cas_required").map(|v| bool_field("cas_required", v)).transpose()?;
        let dva = body
            .get("delete_version_after")
            .map(|v| parse_duration_secs("delete_version_after", v))
            .transpose()?;
        if let Some(secs) = dva.filter(|s| *s < 0) {
            return Err(ApiError::bad_request(format!(
                "error converting input for field \"delete_version_after\": cannot provide negative value '{secs}'"
            )));
        }
        let custom = body.get("custom_metadata").map(custom_metadata).transpose()?;
        let key = self.keys.entry(path.to_owned()).or_insert_with(|| Key::new(now));
        if let Some(m) = max_versions {
            key.max_versions = m;
        }
        if let Some(c) = cas_required {
            key.cas_required = c;
        }
        if let Some(d) = dva {
            key.delete_version_after = d;
        }
        if let Some(c) = custom {
            key.custom_metadata = c;
        }
        key.metadata_version += 1;
        key.updated = now;
        Ok(())
    }
}

/// The delay a new version is deleted after: the smaller positive of the mount's and the key's
/// values, none when the mount's is negative (disabled).
fn deletion_after(mount: i64, key: i64) -> Option<i64> {
    if mount < 0 {
        return None;
    }
    [mount, key].into_iter().filter(|s| *s > 0).min()
}

/// The `versions` of a version operation (OpenBao's destroy words its refusal in lower case).
fn version_list(op: &str, body: &Value) -> Result<Vec<u64>, ApiError> {
    let text = if op == "destroy" { "no version number provided" } else { "No version number provided" };
    let none = || ApiError::bad_request(text);
    let list = body.get("versions").and_then(Value::as_array).ok_or_else(none)?;
    if list.is_empty() {
        return Err(none());
    }
    list.iter().map(|v| uint_field("versions", v)).collect()
}

/// `custom_metadata`: string values, at most 64 keys; an empty map reads back as `null`.
fn custom_metadata(value: &Value) -> Result<Option<BTreeMap<String, String>>, ApiError> {
    let bad = |m: &str| ApiError::bad_request(format!("custom_metadata validation failed: {m}"));
    let map = match value {
        Value::Null => return Ok(None),
        Value::Object(map) => map,
        _ => return Err(bad("expected a map of strings")),
    };
    if map.len() > 64 {
        return Err(bad("payload must contain at most 64 keys"));
    }
    let mut out = BTreeMap::new();
    for (k, v) in map {
        let text = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if k.len() > 128 {
            return Err(bad(&format!("length of key \"{k}\" is {} but must be 128 or less", k.len())));
        }
        if text.len() > 512 {
            return Err(bad(&format!("length of value for key \"{k}\" is {} but must be 512 or less", text.len())));
        }
        out.insert(k.clone(), text);
    }
    Ok((!out.is_empty()).then_some(out))
}

/// An integer field given as a number or a numeric string (negative values read as 0).
pub(crate) fn uint_field(field: &str, value: &Value) -> Result<u64, ApiError> {
    let parsed = match value {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    };
    parsed.map(|n| n.max(0).unsigned_abs()).ok_or_else(|| {
        ApiError::bad_request(format!("error converting input for field \"{field}\": cannot parse '{value}' as int"))
    })
}

fn bool_field(field: &str, value: &Value) -> Result<bool, ApiError> {
    match value {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s == "true" || s == "1" => Ok(true),
        Value::String(s) if s == "false" || s == "0" => Ok(false),
        _ => Err(ApiError::bad_request(format!("error converting input for field \"{field}\": cannot parse as bool"))),
    }
}

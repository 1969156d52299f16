//! Wire types of the KV API: mount info, KV v2 metadata, and the opaque secret payload.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use vsync_core::KvVersion;

/// A secret's data, kept exactly as the origin sent it (no re-normalisation of numbers or key
/// order), so that what is written is byte for byte what was read. Its `Debug` never shows it.
pub struct SecretData(Box<RawValue>);

impl SecretData {
    /// Wraps a JSON document. Fails if `json` is not valid JSON.
    pub fn from_json(json: &str) -> Result<Self, serde_json::Error> {
        RawValue::from_string(json.to_owned()).map(Self)
    }

    /// The raw JSON text.
    pub fn as_json(&self) -> &str {
        self.0.get()
    }

    pub(crate) fn raw(&self) -> &RawValue {
        &self.0
    }

    pub(crate) fn from_raw(raw: Box<RawValue>) -> Self {
        Self(raw)
    }

    /// Whether two payloads hold the same JSON value (object key order and whitespace ignored).
    pub fn same_value(&self, other: &SecretData) -> bool {
        if self.as_json() == other.as_json() {
            return true;
        }
        let a: Result<serde_json::Value, _> = serde_json::from_str(self.as_json());
        let b: Result<serde_json::Value, _> = serde_json::from_str(other.as_json());
        matches!((a, b), (Ok(a), Ok(b)) if a == b)
    }

    /// Size of the JSON text in bytes.
    pub fn len(&self) -> usize {
        self.as_json().len()
    }

    /// True for an empty JSON text (never produced by the server).
    pub fn is_empty(&self) -> bool {
        self.as_json().is_empty()
    }
}

impl std::fmt::Debug for SecretData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretData(<redacted, {} bytes>)", self.len())
    }
}

/// What the server says about a mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// Mount path, normalised to end in `/`.
    pub path: String,
    /// KV engine version.
    pub kind: KvVersion,
    /// Mount UUID: changes when the mount is disabled and enabled again.
    pub uuid: String,
}

/// Per-version entry of KV v2 metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// When the version was written.
    #[serde(default)]
    pub created_time: String,
    /// Empty when live; a (possibly future) time when soft-deleted.
    #[serde(default)]
    pub deletion_time: String,
    /// Destroyed versions keep their entry with this flag.
    #[serde(default)]
    pub destroyed: bool,
}

impl VersionInfo {
    /// Whether the version carries a deletion at `now`: a destroyed version that was also
    /// soft-deleted (its deletion time stays when it is destroyed), or a live one whose deletion
    /// time has passed. A destroyed version's data is gone whatever its time says, so any
    /// deletion time on it counts; a future one on a readable version does not yet.
    pub fn is_deleted_at(&self, now: SystemTime) -> bool {
        if self.destroyed {
            return !self.deletion_time.is_empty();
        }
        !self.deletion_time.is_empty() && !self.is_live_at(now)
    }

    /// The deletion time as of `now`: what a change detector compares (empty while a deletion
    /// time set by `delete_version_after` lies ahead, so its expiry shows as a change).
    pub fn effective_deletion_time(&self, now: SystemTime) -> &str {
        if self.is_deleted_at(now) { &self.deletion_time } else { "" }
    }

    /// Whether the version's data can be read at `now`: not destroyed, and no deletion time
    /// or one still in the future (`delete_version_after`).
    pub fn is_live_at(&self, now: SystemTime) -> bool {
        if self.destroyed {
            return false;
        }
        if self.deletion_time.is_empty() {
            return true;
        }
        match humantime::parse_rfc3339_weak(self.deletion_time.trim_end_matches('Z')) {
            Ok(t) => t > now,
            // An unparseable time is treated as "deleted": reading would fail anyway.
            Err(_) => false,
        }
    }
}

/// KV v2 key metadata (`GET <mount>/metadata/<path>`, or a key's `key_info` entry in a
/// detailed-metadata listing).
///
/// `current_version` and `versions` are required: they decide whether the key has a live
/// version, and with them defaulted, metadata that lacks them (`{}`) would read as "no live
/// version", which the origin scan turns into a delete in `latest` mode. OpenBao always sends
/// both (`current_version: 0, versions: {}` for a key with metadata only); decoding fails
/// without them, and for a `null` `versions`. The other fields are settings whose absence
/// deletes nothing, and default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvMetadata {
    /// Highest version number written (0 for a key with metadata only).
    pub current_version: u64,
    /// Oldest version still kept (0 when nothing was ever pruned).
    #[serde(default)]
    pub oldest_version: u64,
    /// When the key was created; changes only if the key is deleted and re-created.
    #[serde(default)]
    pub created_time: String,
    /// Last data or metadata write (not changed by delete/undelete/destroy).
    #[serde(default)]
    pub updated_time: String,
    /// Per-key `max_versions` (0: mount default).
    #[serde(default)]
    pub max_versions: u64,
    /// Per-key `cas_required`.
    #[serde(default)]
    pub cas_required: bool,
    /// Per-key `delete_version_after` (duration string such as `"0s"`).
    #[serde(default)]
    pub delete_version_after: String,
    /// User metadata; `None` when never set.
    #[serde(default)]
    pub custom_metadata: Option<BTreeMap<String, String>>,
    /// Versions kept, keyed by version number.
    #[serde(deserialize_with = "versions_map")]
    pub versions: BTreeMap<u64, VersionInfo>,
}

impl KvMetadata {
    /// Whether the current version is readable at `now`.
    pub fn current_is_live_at(&self, now: SystemTime) -> bool {
        self.current_version > 0
            && self
                .versions
                .get(&self.current_version)
                .is_some_and(|v| v.is_live_at(now))
    }
}

/// The server keys `versions` by decimal strings. `null` is refused like a missing field (see
/// [`KvMetadata`]).
fn versions_map<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<u64, VersionInfo>, D::Error> {
    let raw: Option<BTreeMap<String, VersionInfo>> = Option::deserialize(d)?;
    raw.ok_or_else(|| serde::de::Error::custom("`versions` is null"))?
        .into_iter()
        .map(|(k, v)| {
            k.parse::<u64>()
                .map(|n| (n, v))
                .map_err(|_| serde::de::Error::custom(format!("version key `{k}` is not a number")))
        })
        .collect()
}

/// Metadata of one version as returned with a data read or write.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct VersionMeta {
    /// Version number.
    #[serde(default)]
    pub version: u64,
    /// When written.
    #[serde(default)]
    pub created_time: String,
    /// Deletion time, empty when live.
    #[serde(default)]
    pub deletion_time: String,
    /// Destroyed flag.
    #[serde(default)]
    pub destroyed: bool,
    /// The key's `custom_metadata`, which KV repeats in every data answer (`null`: none).
    #[serde(default)]
    pub custom_metadata: Option<BTreeMap<String, String>>,
}

/// Result of reading one KV v2 version.
#[derive(Debug)]
pub enum DataRead {
    /// The version is live: its data and metadata.
    Live(SecretData, VersionMeta),
    /// The version is soft-deleted (404 with a body).
    Deleted(VersionMeta),
    /// The version is destroyed (404 with a body).
    Destroyed(VersionMeta),
    /// The key or version does not exist (plain 404).
    Missing,
}

/// One secret found by a recursive listing.
#[derive(Debug, Clone)]
pub struct ListedSecret {
    /// Path relative to the mount.
    pub path: String,
    /// KV v2 metadata when the listing supplied it (OpenBao `detailed-metadata` scan).
    pub metadata: Option<KvMetadata>,
}

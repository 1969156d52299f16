//! Domain types: what the origin holds and what a destination remembers having copied.
//!
//! None of these types ever holds a secret value: paths, versions and timestamps only.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex};

use serde::{Deserialize, Serialize};

/// The KV secrets engine version of a mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum KvVersion {
    /// KV v1: unversioned values.
    #[serde(rename = "kv1")]
    V1,
    /// KV v2: versioned values with metadata.
    #[serde(rename = "kv2")]
    V2,
}

impl std::fmt::Display for KvVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KvVersion::V1 => "kv1",
            KvVersion::V2 => "kv2",
        })
    }
}

/// A mount name, interned: a million keys of one mount share one allocation (an info of 1M
/// entries would otherwise spend ~40 MB on copies of `secret/`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MountName(Arc<str>);

fn intern(name: &str) -> Arc<str> {
    static TABLE: LazyLock<Mutex<HashSet<Arc<str>>>> = LazyLock::new(Default::default);
    // A poisoned table is still a valid set of names.
    let mut table = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(found) = table.get(name) {
        return found.clone();
    }
    let new: Arc<str> = Arc::from(name);
    table.insert(new.clone());
    new
}

impl MountName {
    /// The name (`secret/`).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for MountName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for MountName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for MountName {
    fn from(s: &str) -> Self {
        Self(intern(s))
    }
}

impl From<String> for MountName {
    fn from(s: String) -> Self {
        Self(intern(&s))
    }
}

impl From<&String> for MountName {
    fn from(s: &String) -> Self {
        Self(intern(s))
    }
}

impl PartialEq<str> for MountName {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for MountName {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl std::fmt::Debug for MountName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*self.0, f)
    }
}

impl std::fmt::Display for MountName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for MountName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for MountName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Ok(Self::from(&*s))
    }
}

/// Identifies a secret at the origin: its mount (normalised, `secret/`) and its mount-relative
/// path (`app/db`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SecretPath {
    /// Origin mount, ending in `/`.
    pub mount: MountName,
    /// Path relative to the mount, no leading `/`.
    pub path: String,
}

impl SecretPath {
    /// Builds a key from a normalised mount and a relative path.
    pub fn new(mount: impl Into<MountName>, path: impl Into<String>) -> Self {
        Self {
            mount: mount.into(),
            path: path.into(),
        }
    }
}

impl std::fmt::Display for SecretPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.mount, self.path)
    }
}

/// Where a secret is written at a destination.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DestPath {
    /// Destination mount, ending in `/`.
    pub mount: String,
    /// Path relative to the destination mount.
    pub path: String,
}

impl std::fmt::Display for DestPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.mount, self.path)
    }
}

/// What the origin scan saw for one secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginEntry {
    /// Engine version of the secret's mount.
    pub kind: KvVersion,
    /// KV v2 `current_version` (0 for KV v1, which has no versions).
    pub current_version: u64,
    /// KV v2 metadata `created_time`, which changes only when the key is re-created
    /// (empty for KV v1).
    pub created_time: String,
    /// Whether the current version can be read: false when it is soft-deleted or destroyed,
    /// or when a KV v2 key has metadata but no version yet.
    pub current_live: bool,
    /// KV v2: digest of the whole metadata. KV v1: HMAC of the value, or `None` when the origin
    /// has no digest key (the destination then compares values itself each cycle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<crate::digest::Digest>,
}

impl OriginEntry {
    /// A KV v2 secret with no readable current version (deleted, destroyed, or metadata only):
    /// there is nothing to copy, and a copy made earlier goes.
    pub fn is_gone(&self) -> bool {
        self.kind == KvVersion::V2 && (!self.current_live || self.current_version == 0)
    }
}

/// Everything one origin scan saw, keyed by origin secret.
pub type OriginSnapshot = BTreeMap<SecretPath, OriginEntry>;

/// What a destination remembers about one secret it copied: the origin's entry as it was
/// copied (compared with the origin's info, bucket by bucket) and, outside the compared digest,
/// where it was written and the per-key state of `versions = "all"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestEntry {
    /// The origin entry that was copied.
    pub origin: OriginEntry,
    /// Where the secret was written.
    pub target: DestPath,
    /// Set when the key was replicated exactly (`versions = "all"`); `None` for `latest`
    /// copies (and entries of format 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<ExactState>,
    /// `latest` KV v2 copies: the destination version vsync's last write created (or found
    /// equal), so the next update writes with `cas` = this version without reading first.
    /// Outside the compared digests; `None` for entries before format 3 and for KV v1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dest_version: Option<u64>,
}

/// Per-key state of an exact (`versions = "all"`) replica, outside the compared digests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExactState {
    /// Destination versions that hold a placeholder (see `exact::PLACEHOLDER`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub placeholders: Vec<u64>,
}

impl DestEntry {
    /// An entry of a `latest` copy (or a tombstone).
    pub fn new(origin: OriginEntry, target: DestPath) -> Self {
        Self { origin, target, exact: None, dest_version: None }
    }

    /// Whether the destination holds a copy for this entry (it is not a tombstone). An exact
    /// replica always exists at its target, whatever the state of its current version.
    pub fn has_copy(&self) -> bool {
        self.exact.is_some() || !self.origin.is_gone()
    }
}

/// A destination's memory of what it copied, keyed by origin secret.
pub type DestinationState = BTreeMap<SecretPath, DestEntry>;

/// What a destination does when a secret disappears at the origin (`deletes` in config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeletePolicy {
    /// Remove the secret at the destination (KV v2: all versions and metadata).
    #[default]
    Mirror,
    /// Soft-delete the latest version (KV v2); KV v1 values are left in place.
    Soft,
    /// Leave the destination copy alone.
    Ignore,
}

/// Which KV v2 versions a destination replicates (`versions` in config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VersionsMode {
    /// An exact replica of every version (version numbers, flags, key metadata).
    #[default]
    All,
    /// Only the current version is copied.
    Latest,
}

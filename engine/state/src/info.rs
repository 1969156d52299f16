//! Storing sync info: one small root document per side plus content-addressed bucket parts.
//!
//! Layout in the store directory, per side (`origin`, `destination-eu`):
//! - `<side>.json`: the root ([`InfoRoot`]): format version, generation, bucket count, origin
//!   mount UUIDs, configuration hash, and per bucket its digest and the names of its parts;
//! - `<side>.buckets/<sha256 of the part>.json`: a part, a JSON array of `[key, entry]` rows,
//!   never over [`PART_LIMIT`] bytes (Consul's value limit), however large the bucket.
//!
//! A commit writes the parts that do not exist yet, then replaces the root atomically; a commit
//! that changes nothing writes nothing. Parts referenced by neither the new nor the previous
//! root are removed afterwards, so a reader holding the previous root still finds its parts.

use std::collections::{BTreeMap, HashSet};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use vsync_core::info::{Buckets, Digest, HasOrigin, INFO_FORMAT, split_for_storage};
use vsync_core::SecretKey;

use crate::{FileStore, Result, SideLock, StateError};

/// Largest part written, in bytes (Consul rejects values over 512 KiB).
pub const PART_LIMIT: usize = 512 * 1024;

/// One bucket in a root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketRef {
    /// Digest of the bucket's canonical encoding (compared between sides).
    pub digest: Digest,
    /// Names of its parts, in order.
    pub parts: Vec<String>,
}

/// The root document of a side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InfoRoot {
    /// Sync-info format ([`INFO_FORMAT`]).
    pub format: u32,
    /// Increases with every commit.
    pub generation: u64,
    /// True when the info comes from a complete scan (only complete infos are published).
    pub complete: bool,
    /// Origin mount -> UUID.
    pub origin_mounts: BTreeMap<String, String>,
    /// Destination only: hash of the mount map, transforms and filters the entries were made
    /// with; a different hash makes the next plan re-check every target.
    #[serde(default)]
    pub config_hash: Option<String>,
    /// Buckets, by index.
    pub buckets: Vec<BucketRef>,
}

impl InfoRoot {
    /// Bucket digests by index.
    pub fn digests(&self) -> Vec<Digest> {
        self.buckets.iter().map(|b| b.digest).collect()
    }
}

/// A loaded side: its root and its entries.
#[derive(Debug)]
pub struct LoadedInfo<T> {
    /// The root.
    pub root: InfoRoot,
    /// Entries in the root's bucket layout.
    pub buckets: Buckets<T>,
}

fn part_name(side: &str, hash: &str) -> String {
    format!("{side}.buckets/{hash}")
}

/// Loads a side's info; `None` if it never committed. An unknown format version is an error.
pub fn load<T: HasOrigin + DeserializeOwned>(store: &FileStore, side: &str) -> Result<Option<LoadedInfo<T>>> {
    let Some(raw) = store.read::<serde_json::Value>(side)? else {
        return Ok(None);
    };
    let path = store.dir().join(format!("{side}.json"));
    let found = raw.get("format").and_then(serde_json::Value::as_u64).unwrap_or(0) as u32;
    if found != INFO_FORMAT {
        return Err(StateError::UnknownFormat {
            path,
            found,
            supported: INFO_FORMAT,
        });
    }
    let root: InfoRoot = serde_json::from_value(raw).map_err(|e| StateError::Corrupt {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let mut buckets = Buckets::new(root.buckets.len().max(1) as u32);
    for b in &root.buckets {
        for part in &b.parts {
            let name = part_name(side, part);
            let rows: Vec<(SecretKey, T)> = store.read(&name)?.ok_or_else(|| StateError::Corrupt {
                path: store.dir().join(format!("{name}.json")),
                message: "bucket part referenced by the root is missing".into(),
            })?;
            for (k, v) in rows {
                buckets.insert(k, v);
            }
        }
    }
    Ok(Some(LoadedInfo { root, buckets }))
}

/// Commits a side's info: new parts first, then the root; GC afterwards. Returns whether
/// anything was written (a commit equal to the stored one writes nothing).
pub fn commit<T: HasOrigin + Serialize>(
    store: &FileStore,
    lock: &SideLock,
    side: &str,
    origin_mounts: BTreeMap<String, String>,
    config_hash: Option<String>,
    buckets: &Buckets<T>,
    digests: &[Digest],
) -> Result<bool> {
    let previous: Option<InfoRoot> = store.read(side).ok().flatten();
    let mut refs = Vec::with_capacity(buckets.buckets().len());
    let mut to_write = Vec::new();
    for (i, bucket) in buckets.buckets().iter().enumerate() {
        let rows: Vec<(&SecretKey, &T)> = bucket.iter().collect();
        let chunks = split_for_storage(&rows, PART_LIMIT).map_err(|e| StateError::Corrupt {
            path: store.dir().join(side),
            message: e.to_string(),
        })?;
        let mut parts = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            let hash = Digest(Sha256::digest(chunk.as_bytes()).into()).to_hex();
            parts.push(hash.clone());
            to_write.push((hash, chunk));
        }
        refs.push(BucketRef {
            digest: digests.get(i).copied().unwrap_or_else(|| buckets.digest(i as u32)),
            parts,
        });
    }
    let mut root = InfoRoot {
        format: INFO_FORMAT,
        generation: previous.as_ref().map_or(0, |p| p.generation),
        complete: true,
        origin_mounts,
        config_hash,
        buckets: refs,
    };
    if previous.as_ref() == Some(&root) {
        return Ok(false);
    }
    root.generation += 1;
    for (hash, chunk) in to_write {
        let name = part_name(side, &hash);
        if !store.exists(&name) {
            store.write_raw(lock, &name, chunk.as_bytes())?;
        }
    }
    store.write(lock, side, &root)?;
    // Keep the parts of this root and of the previous one (a reader may still hold it).
    let mut keep: HashSet<String> = root.buckets.iter().flat_map(|b| b.parts.iter().cloned()).collect();
    if let Some(p) = &previous {
        keep.extend(p.buckets.iter().flat_map(|b| b.parts.iter().cloned()));
    }
    for name in store.list(&format!("{side}.buckets"))? {
        if !keep.contains(&name) {
            store.remove(&part_name(side, &name))?;
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use vsync_core::{KvVersion, OriginEntry, SyncInfo};

    use super::*;

    fn entry(v: u64) -> OriginEntry {
        OriginEntry {
            kind: KvVersion::V2,
            current_version: v,
            created_time: "2026-11-22T10:09:20Z".into(),
            current_live: true,
            digest: None,
        }
    }

    #[test]
    fn commit_load_no_op_and_gc() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        let lock = store.lock_side("origin").unwrap();
        let info = SyncInfo::from_entries(4, (0..50).map(|i| (SecretKey::new("secret/", format!("k{i}")), entry(i))));
        let mounts: BTreeMap<String, String> = [("secret/".to_owned(), "uuid-1".to_owned())].into();
        assert!(commit(&store, &lock, "origin", mounts.clone(), None, &info, &info.digests()).unwrap());
        let mtime = store.modified("origin");
        assert!(!commit(&store, &lock, "origin", mounts.clone(), None, &info, &info.digests()).unwrap(), "no change, no write");
        assert_eq!(store.modified("origin"), mtime);
        let loaded: LoadedInfo<OriginEntry> = load(&store, "origin").unwrap().unwrap();
        assert_eq!(loaded.buckets, info);
        assert_eq!(loaded.root.digests(), info.digests());
        assert_eq!(loaded.root.origin_mounts, mounts);

        // Two more generations: parts of generation 1 that neither keeps are collected.
        let mut changed = info.clone();
        for round in 0..2 {
            for i in 0..50 {
                changed.insert(SecretKey::new("secret/", format!("k{i}")), entry(100 + round * 100 + i));
            }
            commit(&store, &lock, "origin", mounts.clone(), None, &changed, &changed.digests()).unwrap();
        }
        let parts = store.list("origin.buckets").unwrap();
        assert_eq!(parts.len(), 8, "4 buckets x (current + previous generation)");
        let loaded: LoadedInfo<OriginEntry> = load(&store, "origin").unwrap().unwrap();
        assert_eq!(loaded.root.generation, 3);
        assert_eq!(loaded.buckets, changed);
    }

    #[test]
    fn unknown_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        std::fs::write(dir.path().join("origin.json"), br#"{"format": 99}"#).unwrap();
        let err = load::<OriginEntry>(&store, "origin").unwrap_err();
        assert!(matches!(err, StateError::UnknownFormat { found: 99, .. }), "{err}");
    }
}

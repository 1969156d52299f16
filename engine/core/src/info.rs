//! Sync info: what a side knows about every secret, grouped into buckets with digests, so two
//! sides can skip every bucket they agree on.
//!
//! # Canonical encoding, format 1
//!
//! A bucket's digest is SHA-256 over this byte string (language-independent, no debug prints):
//!
//! ```text
//! "vsync-bucket-v1\n"
//! for each entry, in ascending (mount bytes, path bytes) order:
//!     field(mount) field(path)
//!     u8 kind            1 = KV v1, 2 = KV v2
//!     u64 current_version
//!     field(created_time)
//!     u8 current_live    0 or 1
//!     u8 has_digest      0 or 1, then the 32 digest bytes when 1
//! field(x) = u32 length of x (big endian) || bytes of x (UTF-8)
//! all integers big endian
//! ```
//!
//! A secret's bucket is `u64::from_be_bytes(SHA-256(mount || 0x00 || path)[0..8]) % bucket_count`.
//!
//! Per-entry digests hold no secret value: a KV v2 entry's digest is SHA-256 over its *metadata*
//! (see [`MetadataDigest`]); a KV v1 entry's digest is an HMAC-SHA-256 of its value under a key
//! that is never stored with the info ([`value_hmac`]), so reading the info does not let anyone
//! confirm a guessed value.

use std::collections::BTreeMap;

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::types::{KvVersion, OriginEntry, SecretKey};

/// Format version of the sync info (encoding, bucket hash, stored documents).
pub const INFO_FORMAT: u32 = 1;

/// Bucket counts are chosen so a bucket holds about this many entries.
pub const TARGET_BUCKET_ENTRIES: usize = 1024;

/// A 32-byte digest, shown and stored as lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// Hex form.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// Parses the hex form.
    pub fn from_hex(hex: &str) -> Option<Digest> {
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, chunk) in hex.as_bytes().chunks(2).enumerate() {
            let s = std::str::from_utf8(chunk).ok()?;
            out[i] = u8::from_str_radix(s, 16).ok()?;
        }
        Some(Digest(out))
    }
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Digest({})", &self.to_hex()[..12])
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::from_hex(&s).ok_or_else(|| serde::de::Error::custom("digest is not 64 hex digits"))
    }
}

/// The inputs of a KV v2 metadata digest: everything replication cares about, including the
/// whole versions map (delete, undelete and destroy do not change `updated_time`).
#[derive(Debug, Clone, Default)]
pub struct MetadataDigest<'a> {
    /// `current_version`.
    pub current_version: u64,
    /// `oldest_version`.
    pub oldest_version: u64,
    /// `created_time`.
    pub created_time: &'a str,
    /// `max_versions`.
    pub max_versions: u64,
    /// `cas_required`.
    pub cas_required: bool,
    /// `delete_version_after`.
    pub delete_version_after: &'a str,
    /// `custom_metadata` (sorted by key).
    pub custom_metadata: Vec<(&'a str, &'a str)>,
    /// `(version, created_time, deletion_time, destroyed)`, ascending by version.
    pub versions: Vec<(u64, &'a str, &'a str, bool)>,
}

impl MetadataDigest<'_> {
    /// SHA-256 over a length-prefixed encoding of every field.
    pub fn digest(&self) -> Digest {
        let mut h = Sha256::new();
        h.update(b"vsync-metadata-v1\n");
        h.update(self.current_version.to_be_bytes());
        h.update(self.oldest_version.to_be_bytes());
        field(&mut h, self.created_time.as_bytes());
        h.update(self.max_versions.to_be_bytes());
        h.update([u8::from(self.cas_required)]);
        field(&mut h, self.delete_version_after.as_bytes());
        let mut custom = self.custom_metadata.clone();
        custom.sort();
        h.update((custom.len() as u64).to_be_bytes());
        for (k, v) in custom {
            field(&mut h, k.as_bytes());
            field(&mut h, v.as_bytes());
        }
        let mut versions = self.versions.clone();
        versions.sort_by_key(|v| v.0);
        h.update((versions.len() as u64).to_be_bytes());
        for (n, created, deleted, destroyed) in versions {
            h.update(n.to_be_bytes());
            field(&mut h, created.as_bytes());
            field(&mut h, deleted.as_bytes());
            h.update([u8::from(destroyed)]);
        }
        Digest(h.finalize().into())
    }
}

/// HMAC-SHA-256 of a KV v1 value's canonical JSON under `key`. Without the key the digest
/// cannot be recomputed, so it does not reveal the value.
pub fn value_hmac(key: &[u8], canonical_json: &str) -> Digest {
    // HMAC accepts keys of any length; new_from_slice cannot fail for it.
    let mut mac = match <Hmac<Sha256> as KeyInit>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return Digest([0; 32]),
    };
    mac.update(b"vsync-kv1-value-v1\n");
    mac.update(canonical_json.as_bytes());
    Digest(mac.finalize().into_bytes().into())
}

fn field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u32).to_be_bytes());
    h.update(bytes);
}

/// The bucket of a secret among `count` buckets.
pub fn bucket_of(key: &SecretKey, count: u32) -> u32 {
    let mut h = Sha256::new();
    h.update(key.mount.as_bytes());
    h.update([0u8]);
    h.update(key.path.as_bytes());
    let d: [u8; 32] = h.finalize().into();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    (u64::from_be_bytes(first) % u64::from(count.max(1))) as u32
}

/// The bucket count chosen for `entries` secrets: a power of two, ~1024 entries a bucket.
pub fn auto_bucket_count(entries: usize) -> u32 {
    let wanted = entries.div_ceil(TARGET_BUCKET_ENTRIES).max(1);
    wanted.next_power_of_two().min(1 << 20) as u32
}

/// Something that carries an origin entry (the origin's own entries, or a destination's record
/// of what it copied), so both sides' buckets digest the same way.
pub trait HasOrigin {
    /// The origin entry this value records.
    fn origin(&self) -> &OriginEntry;
}

impl HasOrigin for OriginEntry {
    fn origin(&self) -> &OriginEntry {
        self
    }
}

/// Secrets grouped into buckets by [`bucket_of`].
#[derive(Debug, Clone, PartialEq)]
pub struct Buckets<T> {
    buckets: Vec<BTreeMap<SecretKey, T>>,
}

impl<T: HasOrigin> Buckets<T> {
    /// `count` empty buckets.
    pub fn new(count: u32) -> Self {
        Self {
            buckets: (0..count.max(1)).map(|_| BTreeMap::new()).collect(),
        }
    }

    /// Builds buckets from entries.
    pub fn from_entries(count: u32, entries: impl IntoIterator<Item = (SecretKey, T)>) -> Self {
        let mut b = Self::new(count);
        for (k, v) in entries {
            b.insert(k, v);
        }
        b
    }

    /// Number of buckets.
    pub fn count(&self) -> u32 {
        self.buckets.len() as u32
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.buckets.iter().map(BTreeMap::len).sum()
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.buckets.iter().all(BTreeMap::is_empty)
    }

    /// Inserts or replaces an entry.
    pub fn insert(&mut self, key: SecretKey, value: T) -> Option<T> {
        let i = bucket_of(&key, self.count()) as usize;
        self.buckets[i].insert(key, value)
    }

    /// Removes an entry.
    pub fn remove(&mut self, key: &SecretKey) -> Option<T> {
        let i = bucket_of(key, self.count()) as usize;
        self.buckets[i].remove(key)
    }

    /// Looks an entry up.
    pub fn get(&self, key: &SecretKey) -> Option<&T> {
        self.buckets[bucket_of(key, self.count()) as usize].get(key)
    }

    /// Whether an entry exists.
    pub fn contains_key(&self, key: &SecretKey) -> bool {
        self.get(key).is_some()
    }

    /// Bucket `i`.
    pub fn bucket(&self, i: u32) -> &BTreeMap<SecretKey, T> {
        &self.buckets[i as usize]
    }

    /// All buckets.
    pub fn buckets(&self) -> &[BTreeMap<SecretKey, T>] {
        &self.buckets
    }

    /// Every entry, bucket by bucket.
    pub fn iter(&self) -> impl Iterator<Item = (&SecretKey, &T)> {
        self.buckets.iter().flat_map(|b| b.iter())
    }

    /// Consumes into entries.
    pub fn into_entries(self) -> impl Iterator<Item = (SecretKey, T)> {
        self.buckets.into_iter().flatten()
    }

    /// The same entries in `count` buckets (a destination follows the origin's layout).
    pub fn rebucket(self, count: u32) -> Self {
        if count == self.count() {
            return self;
        }
        Self::from_entries(count, self.into_entries())
    }

    /// Digest of bucket `i` over the canonical encoding of its origin entries.
    pub fn digest(&self, i: u32) -> Digest {
        bucket_digest(self.buckets[i as usize].iter().map(|(k, v)| (k, v.origin())))
    }

    /// Digests of every bucket.
    pub fn digests(&self) -> Vec<Digest> {
        (0..self.count()).map(|i| self.digest(i)).collect()
    }
}

/// SHA-256 over the canonical encoding (module docs) of entries given in key order.
pub fn bucket_digest<'a>(entries: impl Iterator<Item = (&'a SecretKey, &'a OriginEntry)>) -> Digest {
    let mut h = Sha256::new();
    h.update(b"vsync-bucket-v1\n");
    for (k, e) in entries {
        field(&mut h, k.mount.as_bytes());
        field(&mut h, k.path.as_bytes());
        h.update([match e.kind {
            KvVersion::V1 => 1u8,
            KvVersion::V2 => 2u8,
        }]);
        h.update(e.current_version.to_be_bytes());
        field(&mut h, e.created_time.as_bytes());
        h.update([u8::from(e.current_live)]);
        match &e.digest {
            Some(d) => {
                h.update([1u8]);
                h.update(d.0);
            }
            None => h.update([0u8]),
        }
    }
    Digest(h.finalize().into())
}

/// The origin's sync info.
pub type SyncInfo = Buckets<OriginEntry>;

/// Splits serialised entries into chunks whose JSON stays under `limit` bytes (Consul's 512 KiB
/// value limit), so a bucket of any size can be stored. Each entry is serialised once.
pub fn split_for_storage<T: Serialize>(entries: &[T], limit: usize) -> Result<Vec<String>, serde_json::Error> {
    let mut chunks = Vec::new();
    let mut current = String::from("[");
    for e in entries {
        let s = serde_json::to_string(e)?;
        // +2 for the separator and the closing bracket.
        if current.len() > 1 && current.len() + s.len() + 2 > limit {
            current.push(']');
            chunks.push(std::mem::replace(&mut current, String::from("[")));
        }
        if current.len() > 1 {
            current.push(',');
        }
        current.push_str(&s);
    }
    current.push(']');
    chunks.push(current);
    Ok(chunks)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn entry(v: u64) -> OriginEntry {
        OriginEntry {
            kind: KvVersion::V2,
            current_version: v,
            created_time: "2026-11-22T10:09:20.63904796Z".into(),
            current_live: true,
            digest: Some(Digest([v as u8; 32])),
        }
    }

    #[test]
    fn digest_is_order_independent_and_sensitive_to_every_field() {
        let a = SyncInfo::from_entries(4, (0..100).map(|i| (SecretKey::new("secret/", format!("k{i}")), entry(i))));
        let b = SyncInfo::from_entries(4, (0..100).rev().map(|i| (SecretKey::new("secret/", format!("k{i}")), entry(i))));
        assert_eq!(a.digests(), b.digests());
        let base = a.digests();
        let k = SecretKey::new("secret/", "k7");
        let i = bucket_of(&k, 4);
        type Mutation = Box<dyn Fn(&mut OriginEntry)>;
        let mutations: Vec<Mutation> = vec![
            Box::new(|e| e.current_version += 1),
            Box::new(|e| e.created_time.push('x')),
            Box::new(|e| e.current_live = false),
            Box::new(|e| e.kind = KvVersion::V1),
            Box::new(|e| e.digest = None),
            Box::new(|e| e.digest = Some(Digest([0xAB; 32]))),
        ];
        for m in mutations {
            let mut c = a.clone();
            let mut e = c.get(&k).unwrap().clone();
            m(&mut e);
            c.insert(k.clone(), e);
            let d = c.digests();
            assert_ne!(d[i as usize], base[i as usize]);
            for j in 0..4 {
                if j != i {
                    assert_eq!(d[j as usize], base[j as usize], "other buckets unchanged");
                }
            }
        }
    }

    #[test]
    fn encoding_is_pinned() {
        // The canonical encoding and the bucket hash are a contract between versions (and
        // between a destination and an older origin): these values must never change for
        // format 1. A failure here means the format changed: bump INFO_FORMAT instead.
        let info = SyncInfo::from_entries(1, [(SecretKey::new("secret/", "app/db"), entry(3))]);
        assert_eq!(info.digest(0).to_hex(), "6af072133c51cb9e5b376560415494ee9c93cb1e553271d38d54cbb898935a12");
        assert_eq!(SyncInfo::new(1).digest(0).to_hex(), "c91d624a33b4979dec91fe6095842c288b107ff98ed6088105a1e5b9dfbc3eb7");
        assert_eq!(bucket_of(&SecretKey::new("secret/", "app/db"), 1 << 20), 738275);
    }

    #[test]
    fn mount_and_path_boundary_is_unambiguous() {
        let a = SyncInfo::from_entries(1, [(SecretKey::new("team/", "kv/x"), entry(1))]);
        let b = SyncInfo::from_entries(1, [(SecretKey::new("team/kv/", "x"), entry(1))]);
        assert_ne!(a.digest(0), b.digest(0));
    }

    #[test]
    fn rebucket_keeps_entries() {
        let a = SyncInfo::from_entries(8, (0..1000).map(|i| (SecretKey::new("s/", format!("{i}")), entry(i))));
        let b = a.clone().rebucket(64);
        assert_eq!(b.count(), 64);
        assert_eq!(b.len(), 1000);
        assert!(a.iter().all(|(k, v)| b.get(k) == Some(v)));
        assert_eq!(auto_bucket_count(0), 1);
        assert_eq!(auto_bucket_count(200_000), 256);
        assert_eq!(auto_bucket_count(1_000_000), 1024);
    }

    #[test]
    fn hmac_depends_on_key_and_value() {
        let a = value_hmac(b"k1", r#"{"a":1}"#);
        assert_ne!(a, value_hmac(b"k2", r#"{"a":1}"#));
        assert_ne!(a, value_hmac(b"k1", r#"{"a":2}"#));
        assert_eq!(a, value_hmac(b"k1", r#"{"a":1}"#));
    }

    #[test]
    fn metadata_digest_sees_flags_and_settings() {
        let base = MetadataDigest {
            current_version: 2,
            created_time: "t",
            versions: vec![(1, "t1", "", false), (2, "t2", "", false)],
            ..Default::default()
        };
        let d = base.digest();
        let mut deleted = base.clone();
        deleted.versions[0].2 = "t3";
        assert_ne!(d, deleted.digest());
        let mut destroyed = base.clone();
        destroyed.versions[1].3 = true;
        assert_ne!(d, destroyed.digest());
        let mut custom = base.clone();
        custom.custom_metadata = vec![("owner", "x")];
        assert_ne!(d, custom.digest());
        let mut max = base.clone();
        max.max_versions = 3;
        assert_ne!(d, max.digest());
    }

    #[test]
    fn a_mount_of_200k_long_paths_stores_in_chunks_under_512_kib() {
        let n = 200_000;
        let long = "x".repeat(180);
        let info = SyncInfo::from_entries(
            auto_bucket_count(n),
            (0..n).map(|i| (SecretKey::new("secret/", format!("team-{}/{long}/{i}", i % 97)), entry(i as u64))),
        );
        assert_eq!(info.len(), n);
        let mut chunks = 0;
        let mut total = 0;
        for b in info.buckets() {
            let rows: Vec<(&SecretKey, &OriginEntry)> = b.iter().collect();
            for c in split_for_storage(&rows, 512 * 1024).unwrap() {
                assert!(c.len() <= 512 * 1024, "chunk of {} bytes", c.len());
                let back: Vec<(SecretKey, OriginEntry)> = serde_json::from_str(&c).unwrap();
                total += back.len();
                chunks += 1;
            }
        }
        assert_eq!(total, n);
        assert!(chunks >= info.count() as usize);
        // One giant bucket splits too.
        let rows: Vec<(SecretKey, OriginEntry)> = info.into_entries().take(20_000).collect();
        let parts = split_for_storage(&rows, 512 * 1024).unwrap();
        assert!(parts.len() > 1 && parts.iter().all(|p| p.len() <= 512 * 1024));
    }
}

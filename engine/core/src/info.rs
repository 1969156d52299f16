//! Sync info: what a side knows about every secret, grouped into buckets with digests, so two
//! sides can skip every bucket they agree on.
//!
//! # Canonical bucket encoding, version 1
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
//! (see [`crate::digest::MetadataDigest`]); a KV v1 entry's digest is an HMAC-SHA-256 of its value under a key
//! that is never stored with the info ([`crate::digest::value_hmac`]), so reading the info does not let anyone
//! confirm a guessed value.

use std::collections::BTreeMap;

use sha2::{Digest as _, Sha256};

use crate::digest::{Digest, field};
use crate::types::{DestEntry, KvVersion, OriginEntry, SecretPath};

/// Format version of the stored sync info (root and part documents). The canonical bucket
/// encoding below is versioned on its own (`vsync-bucket-v1`) and did not change.
///
/// - 1: origin and destination entries;
/// - 2: destination entries may carry per-key state outside the digest (placeholder
///   versions of `versions = "all"`);
/// - 3: destination entries may carry the destination version vsync wrote (`dest_version`),
///   so a `latest` update writes with check-and-set without reading first.
///
/// Each side writes the format its entries need ([`HasOrigin::FORMAT`]): origin entries have not
/// changed since format 2, so an origin keeps writing 2 and destinations of the previous
/// release still read it during a rolling upgrade.
pub const INFO_FORMAT: u32 = 3;

/// The oldest stored format this build reads (and upgrades on its next commit).
pub const MIN_READ_FORMAT: u32 = 1;

/// Bucket counts are chosen so a bucket holds about this many entries.
pub const TARGET_BUCKET_ENTRIES: usize = 1024;

/// The bucket of a secret among `count` buckets.
pub fn bucket_of(key: &SecretPath, count: u32) -> u32 {
    let mut h = Sha256::new();
    h.update(key.mount.as_bytes());
    h.update([0u8]);
    h.update(key.path.as_bytes());
    let d: [u8; 32] = h.finalize().into();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    (u64::from_be_bytes(first) % u64::from(count.max(1))) as u32
}

/// The largest automatic bucket count (16M secrets at ~1024 a bucket; beyond that buckets
/// grow, and their parts split).
pub const MAX_AUTO_BUCKETS: u32 = 1 << 14;

/// The bucket count chosen for `entries` secrets: a power of two, ~1024 entries a bucket,
/// at most [`MAX_AUTO_BUCKETS`].
pub fn auto_bucket_count(entries: usize) -> u32 {
    let wanted = entries.div_ceil(TARGET_BUCKET_ENTRIES).max(1);
    wanted.next_power_of_two().min(MAX_AUTO_BUCKETS as usize) as u32
}

/// Something that carries an origin entry (the origin's own entries, or a destination's record
/// of what it copied), so both sides' buckets digest the same way.
pub trait HasOrigin {
    /// The stored format a side of these entries is written in (at most [`INFO_FORMAT`]).
    const FORMAT: u32;
    /// Whether a bucket's digest covers every field of its entries, so two buckets with equal
    /// digests serialise to the same bytes (a commit then reuses the stored parts of a bucket
    /// whose digest did not change instead of serialising it again). False for destination
    /// entries, whose targets and per-key state are outside the digest.
    const DIGEST_COVERS_ENTRY: bool;
    /// The origin entry this value records.
    fn origin(&self) -> &OriginEntry;
}

impl HasOrigin for OriginEntry {
    const FORMAT: u32 = 2;
    const DIGEST_COVERS_ENTRY: bool = true;
    fn origin(&self) -> &OriginEntry {
        self
    }
}

impl HasOrigin for DestEntry {
    const FORMAT: u32 = INFO_FORMAT;
    const DIGEST_COVERS_ENTRY: bool = false;
    fn origin(&self) -> &OriginEntry {
        &self.origin
    }
}

/// Secrets grouped into buckets by [`bucket_of`].
#[derive(Debug, Clone, PartialEq)]
pub struct Buckets<T> {
    buckets: Vec<BTreeMap<SecretPath, T>>,
}

impl<T: HasOrigin> Buckets<T> {
    /// `count` empty buckets.
    pub fn new(count: u32) -> Self {
        Self {
            buckets: (0..count.max(1)).map(|_| BTreeMap::new()).collect(),
        }
    }

    /// Builds buckets from entries.
    pub fn from_entries(count: u32, entries: impl IntoIterator<Item = (SecretPath, T)>) -> Self {
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
    pub fn insert(&mut self, key: SecretPath, value: T) -> Option<T> {
        let i = bucket_of(&key, self.count()) as usize;
        self.buckets[i].insert(key, value)
    }

    /// Removes an entry.
    pub fn remove(&mut self, key: &SecretPath) -> Option<T> {
        let i = bucket_of(key, self.count()) as usize;
        self.buckets[i].remove(key)
    }

    /// Looks an entry up.
    pub fn get(&self, key: &SecretPath) -> Option<&T> {
        self.buckets[bucket_of(key, self.count()) as usize].get(key)
    }

    /// Whether an entry exists.
    pub fn contains_key(&self, key: &SecretPath) -> bool {
        self.get(key).is_some()
    }

    /// Bucket `i`.
    pub fn bucket(&self, i: u32) -> &BTreeMap<SecretPath, T> {
        &self.buckets[i as usize]
    }

    /// All buckets.
    pub fn buckets(&self) -> &[BTreeMap<SecretPath, T>] {
        &self.buckets
    }

    /// Every entry, bucket by bucket.
    pub fn iter(&self) -> impl Iterator<Item = (&SecretPath, &T)> {
        self.buckets.iter().flat_map(|b| b.iter())
    }

    /// Consumes into entries.
    pub fn into_entries(self) -> impl Iterator<Item = (SecretPath, T)> {
        self.buckets.into_iter().flatten()
    }

    /// The same entries in `count` buckets (a destination follows the origin's layout).
    ///
    /// Going down to a count that divides the current one (both powers of two, as automatic
    /// counts are), each new bucket is the union of the old buckets `j, j + count, ...` (a
    /// key's bucket is its hash modulo the count), built densely while the old ones are freed,
    /// so the move holds one bucket's worth of extra memory at most.
    pub fn rebucket(self, count: u32) -> Self {
        let count = count.max(1);
        if count == self.count() {
            return self;
        }
        if self.count() % count != 0 {
            let mut out = Self::from_entries(count, self.into_entries());
            out.compact();
            return out;
        }
        let mut old: Vec<Option<BTreeMap<SecretPath, T>>> = self.buckets.into_iter().map(Some).collect();
        let step = count as usize;
        let buckets = (0..step)
            .map(|j| {
                let mut rows: Vec<(SecretPath, T)> = Vec::new();
                for source in old.iter_mut().skip(j).step_by(step) {
                    rows.extend(source.take().into_iter().flatten());
                }
                rows.into_iter().collect()
            })
            .collect();
        Self { buckets }
    }

    /// Rebuilds every bucket densely. A `BTreeMap` grown by inserts keeps its nodes half to
    /// two-thirds full; one built from sorted rows packs them, which saves about a third of an
    /// info's memory. One bucket is rebuilt at a time.
    pub fn compact(&mut self) {
        for bucket in &mut self.buckets {
            // Iterating a map by value frees its nodes as it goes; collecting sorted rows
            // bulk-builds the new one.
            *bucket = std::mem::take(bucket).into_iter().collect();
        }
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

/// Collects entries into buckets as they arrive (an origin scan), cheaper than inserting into
/// [`Buckets`]: rows are appended to one vector per bucket and each bucket's map is built once,
/// densely, by [`BucketsBuilder::finish`]. A listing hands keys over in key order, the worst
/// order for a B-tree grown by inserts (its nodes stay about half full).
#[derive(Debug)]
pub struct BucketsBuilder<T> {
    rows: Vec<Vec<(SecretPath, T)>>,
    len: usize,
}

impl<T: HasOrigin> BucketsBuilder<T> {
    /// A builder of `count` buckets (the final count may differ: see [`Self::finish`]).
    pub fn new(count: u32) -> Self {
        Self { rows: (0..count.max(1)).map(|_| Vec::new()).collect(), len: 0 }
    }

    /// Adds an entry. A key added twice keeps its last value.
    pub fn push(&mut self, key: SecretPath, value: T) {
        let i = bucket_of(&key, self.rows.len() as u32) as usize;
        self.rows[i].push((key, value));
        self.len += 1;
    }

    /// Entries added so far (a key added twice counts twice).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing was added.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The buckets, `count` of them. Going down to a count that divides the builder's, each
    /// bucket gathers the builder's buckets `j, j + count, ...` (a key's bucket is its hash
    /// modulo the count); any other count re-buckets. One bucket's rows are turned into its
    /// map at a time, and freed as it is built.
    pub fn finish(self, count: u32) -> Buckets<T> {
        let count = count.max(1);
        let have = self.rows.len() as u32;
        if have % count != 0 {
            let mut rebucketed = Self::new(count);
            for (k, v) in self.rows.into_iter().flatten() {
                rebucketed.push(k, v);
            }
            return rebucketed.finish(count);
        }
        let mut rows: Vec<Option<Vec<(SecretPath, T)>>> = self.rows.into_iter().map(Some).collect();
        let step = count as usize;
        let buckets = (0..step)
            .map(|j| {
                let mut gathered: Vec<(SecretPath, T)> = Vec::new();
                for source in rows.iter_mut().skip(j).step_by(step) {
                    let source = source.take().unwrap_or_default();
                    if gathered.is_empty() {
                        gathered = source;
                    } else {
                        gathered.extend(source);
                    }
                }
                // Sorting then collecting bulk-builds the map; of equal keys the last stays.
                gathered.sort_by(|a, b| a.0.cmp(&b.0));
                gathered.into_iter().collect()
            })
            .collect();
        Buckets { buckets }
    }
}

/// SHA-256 over the canonical encoding (module docs) of entries given in key order.
pub fn bucket_digest<'a>(entries: impl Iterator<Item = (&'a SecretPath, &'a OriginEntry)>) -> Digest {
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
        let a = SyncInfo::from_entries(4, (0..100).map(|i| (SecretPath::new("secret/", format!("k{i}")), entry(i))));
        let b = SyncInfo::from_entries(4, (0..100).rev().map(|i| (SecretPath::new("secret/", format!("k{i}")), entry(i))));
        assert_eq!(a.digests(), b.digests());
        let base = a.digests();
        let k = SecretPath::new("secret/", "k7");
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
        let info = SyncInfo::from_entries(1, [(SecretPath::new("secret/", "app/db"), entry(3))]);
        assert_eq!(info.digest(0).to_hex(), "6af072133c51cb9e5b376560415494ee9c93cb1e553271d38d54cbb898935a12");
        assert_eq!(SyncInfo::new(1).digest(0).to_hex(), "c91d624a33b4979dec91fe6095842c288b107ff98ed6088105a1e5b9dfbc3eb7");
        assert_eq!(bucket_of(&SecretPath::new("secret/", "app/db"), 1 << 20), 738275);
    }

    #[test]
    fn mount_and_path_boundary_is_unambiguous() {
        let a = SyncInfo::from_entries(1, [(SecretPath::new("team/", "kv/x"), entry(1))]);
        let b = SyncInfo::from_entries(1, [(SecretPath::new("team/kv/", "x"), entry(1))]);
        assert_ne!(a.digest(0), b.digest(0));
    }

    #[test]
    fn rebucket_keeps_entries() {
        let a = SyncInfo::from_entries(8, (0..1000).map(|i| (SecretPath::new("s/", format!("{i}")), entry(i))));
        let b = a.clone().rebucket(64);
        assert_eq!(b.count(), 64);
        assert_eq!(b.len(), 1000);
        assert!(a.iter().all(|(k, v)| b.get(k) == Some(v)));
        // Down to a divisor (the merge path) and to a count that does not divide (re-insert):
        // the same entries as a fresh build with that count, so the same digests.
        for count in [4, 2, 1, 3, 24] {
            let c = b.clone().rebucket(count);
            assert_eq!(c, SyncInfo::from_entries(count, a.iter().map(|(k, v)| (k.clone(), v.clone()))), "count {count}");
            assert_eq!(c.digests(), SyncInfo::from_entries(count, a.clone().into_entries()).digests());
        }
        let mut d = b.clone();
        d.compact();
        assert_eq!(d, b);
        // The builder gives what inserting would, for any final count, keeping the last of a
        // key added twice.
        for count in [64, 16, 1, 3, 128] {
            let mut builder = BucketsBuilder::new(64);
            for (k, v) in a.iter() {
                builder.push(k.clone(), entry(0));
                builder.push(k.clone(), v.clone());
            }
            assert_eq!(builder.len(), 2000);
            let built = builder.finish(count);
            assert_eq!(built, SyncInfo::from_entries(count, a.iter().map(|(k, v)| (k.clone(), v.clone()))), "count {count}");
        }
        assert_eq!(auto_bucket_count(0), 1);
        assert_eq!(auto_bucket_count(200_000), 256);
        assert_eq!(auto_bucket_count(1_000_000), 1024);
        assert_eq!(auto_bucket_count(5_000_000), 8192);
        assert_eq!(auto_bucket_count(10_000_000), MAX_AUTO_BUCKETS);
        assert_eq!(auto_bucket_count(100_000_000), MAX_AUTO_BUCKETS);
    }

}

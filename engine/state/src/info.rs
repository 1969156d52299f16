//! Storing sync info: one small root document per side plus content-addressed bucket parts.
//!
//! Per side (`origin`, `destination-eu`; key names per backend in [`crate::store`]):
//! - the root ([`InfoRoot`]): format version, generation, bucket count, origin mount UUIDs,
//!   configuration hash, and per bucket its digest and the names of its parts;
//! - parts named by their SHA-256: a JSON array of `[key, entry]` rows, never over
//!   [`PART_LIMIT`] bytes (Consul's value limit), however large the bucket;
//! - the `retired` document: part name -> unix time (seconds) at which a commit replaced the
//!   last root that referenced it.
//!
//! A commit writes the parts that do not exist yet, then replaces the root atomically, if the
//! root is still the version the cycle started from (its *base*); a commit that changes nothing
//! writes nothing.
//!
//! Readers and garbage collection. Other processes (destinations, `plan`, `status`, `verify`)
//! read a side while its writer keeps committing, so a part a reader is about to fetch may be
//! collected under it. Two rules keep that from ever looking like corruption:
//! - **grace**: after each commit the writer records the parts the previous root referenced
//!   and the new one does not as retired now, and removes only stored parts that no current
//!   root references and that were either never recorded (orphans of a failed commit, parts
//!   from before this rule) or retired more than [`PART_GRACE`] ago. A reader therefore has at
//!   least that long, after the root it read was replaced, to fetch its parts. The retired
//!   document stays under [`RETIRED_DOC_LIMIT`] (the oldest entries, and their parts, go
//!   first); a missing or unreadable one is logged and the commit collects at once, as if
//!   every unreferenced part were an orphan (the previous root's parts are still kept);
//! - **reload** (the correctness backstop): a [`load`] that finds a part missing reads the
//!   root again. If the root changed, the part was collected after a newer commit: the load
//!   starts over from the new root, up to [`LOAD_ATTEMPTS`] times, with a tiny backoff; if the
//!   root keeps changing beyond that, [`StateError::RootChurn`] (transient: try again next
//!   cycle). Only a part missing under an *unchanged* root is [`StateError::Corrupt`]: the
//!   writer never collects a part its current root references.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use vsync_core::info::{Buckets, HasOrigin, INFO_FORMAT, MIN_READ_FORMAT};
use vsync_core::{Digest, SecretPath};

use crate::{Result, RootRead, StateError, StateStore, StoreLock};

/// Largest part written, in bytes (Consul rejects values over 512 KiB).
pub const PART_LIMIT: usize = 512 * 1024;

/// How long a part stays stored after a commit replaced the last root that referenced it.
///
/// A reader (a destination process, `plan`, `status`, `verify`) reads a root, then fetches its
/// parts; this is how long it may take after that root was replaced before a part can vanish
/// under it. Loading even a 10M-key info takes seconds to tens of seconds, so 60 s covers a
/// slow reader. The cost is storage: every part retired in the last minute stays in Consul or
/// on disk. An origin publishing every event round replaces a few parts per round, so that is
/// a few hundred parts at most; a full rewrite (a format upgrade, a bigger bucket count) keeps
/// a second copy of the info for a minute. Longer would only add storage: a reader slower than
/// this does not fail, it reloads from the current root ([`load`]), which is the correctness
/// backstop; the grace only makes reloads rare.
pub const PART_GRACE: Duration = Duration::from_secs(60);

/// Roots a [`load`] follows before giving up with [`StateError::RootChurn`]: each time a part
/// is missing because a newer root replaced the one being loaded, the load starts over.
pub const LOAD_ATTEMPTS: u32 = 50;

/// Largest retired-parts document written. Under Consul's 512 KiB value limit with room for
/// the base64 growth of the transaction that writes it (it is written with a lock check); at
/// about 80 bytes an entry that is some 3,000 retired parts.
pub const RETIRED_DOC_LIMIT: usize = 256 * 1024;

/// Name of the retired-parts document of a side ([`StateStore::read_doc`]).
pub const RETIRED_DOC: &str = "retired";

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
    /// Buckets, by index, when they fit in the root (small infos, and every format-1 root).
    /// After [`load`] this always holds every bucket.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buckets: Vec<BucketRef>,
    /// Format 2, large infos: names of the index parts that hold the [`BucketRef`]s, in
    /// bucket order, so the root stays small however many buckets there are.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub index: Vec<String>,
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
    /// The root's store version (changes with every commit).
    pub version: u64,
    /// Entries in the root's bucket layout.
    pub buckets: Buckets<T>,
}

fn corrupt(store: &StateStore, what: String, message: String) -> StateError {
    StateError::Corrupt {
        path: format!("{}: {what}", store.describe()).into(),
        message,
    }
}

/// Parses a root, refusing an unknown format version.
fn parse_root(store: &StateStore, side: &str, bytes: &[u8]) -> Result<InfoRoot> {
    let raw: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| corrupt(store, format!("root of `{side}`"), e.to_string()))?;
    let found = raw.get("format").and_then(serde_json::Value::as_u64).unwrap_or(0) as u32;
    // Older formats are read (entries gain defaults) and upgraded by the next commit.
    if !(MIN_READ_FORMAT..=INFO_FORMAT).contains(&found) {
        return Err(StateError::UnknownFormat {
            path: format!("{}: root of `{side}`", store.describe()).into(),
            found,
            supported: INFO_FORMAT,
        });
    }
    serde_json::from_value(raw).map_err(|e| corrupt(store, format!("root of `{side}`"), e.to_string()))
}

/// Splits serialised entries into chunks whose JSON stays under `limit` bytes (Consul's 512 KiB
/// value limit), so a bucket of any size can be stored. Each entry is serialised once.
pub fn split_for_storage<T: Serialize>(entries: &[T], limit: usize) -> std::result::Result<Vec<String>, serde_json::Error> {
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

/// A root whose bucket list encodes larger than this moves it to index parts.
pub const INLINE_ROOT_LIMIT: usize = 64 * 1024;

/// Moves a large bucket list out of the root into content-addressed index parts (each under
/// [`PART_LIMIT`]); returns the parts to write.
fn split_index(store: &StateStore, side: &str, root: &mut InfoRoot) -> Result<Vec<(String, Vec<u8>)>> {
    let encoded = serde_json::to_vec(&root.buckets).map_err(|e| corrupt(store, format!("root of `{side}`"), e.to_string()))?;
    if encoded.len() <= INLINE_ROOT_LIMIT {
        return Ok(Vec::new());
    }
    let chunks = split_for_storage(&root.buckets, PART_LIMIT).map_err(|e| corrupt(store, format!("index of `{side}`"), e.to_string()))?;
    let mut parts = Vec::with_capacity(chunks.len());
    root.index.clear();
    for chunk in chunks {
        let hash = Digest(Sha256::digest(chunk.as_bytes()).into()).to_hex();
        root.index.push(hash.clone());
        parts.push((hash, chunk.into_bytes()));
    }
    root.buckets.clear();
    Ok(parts)
}

/// Reads a root's index parts into its bucket list (a root without an index is unchanged).
/// `Ok(Err(name))` names an index part that is gone (a newer commit collected it).
async fn resolve_index(store: &StateStore, side: &str, root: &mut InfoRoot) -> Result<std::result::Result<(), String>> {
    if root.index.is_empty() {
        return Ok(Ok(()));
    }
    let mut buckets = Vec::new();
    for name in &root.index {
        let Some(bytes) = store.read_part(side, name).await? else {
            return Ok(Err(name.clone()));
        };
        let actual = Digest(Sha256::digest(&bytes).into()).to_hex();
        if actual != *name {
            return Err(corrupt(store, format!("index part {name} of `{side}`"), format!("its content hashes to {actual}")));
        }
        let refs: Vec<BucketRef> =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(store, format!("index part {name} of `{side}`"), e.to_string()))?;
        buckets.extend(refs);
    }
    root.buckets = buckets;
    Ok(Ok(()))
}

/// Serialised parts a commit holds before writing them.
const WRITE_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Parts fetched at once from Consul (each is one request).
const PARALLEL_READS: usize = 8;

/// Loads a side's info; `None` if it never committed. An unknown format version is an error.
///
/// Reading another side's info races with its writer's garbage collection: a part that
/// vanished while loading is normal when a newer root replaced the one being read (module
/// docs), and the load starts over from the current root. Only a part missing under an
/// unchanged root is [`StateError::Corrupt`]; a root that keeps changing for
/// [`LOAD_ATTEMPTS`] loads is [`StateError::RootChurn`].
pub async fn load<T>(store: &StateStore, side: &str) -> Result<Option<LoadedInfo<T>>>
where
    T: HasOrigin + DeserializeOwned + Send + 'static,
{
    for attempt in 1..=LOAD_ATTEMPTS {
        let Some(root_read) = store.read_root(side).await? else {
            return Ok(None);
        };
        let missing = match load_root::<T>(store, side, &root_read).await? {
            Ok(loaded) => return Ok(Some(loaded)),
            Err(missing) => missing,
        };
        // The writer never collects a part its current root references, so a part missing
        // under the same root (same version, same bytes) was lost or removed by hand.
        if store.read_root(side).await?.as_ref() == Some(&root_read) {
            return Err(missing.corrupt(store, side));
        }
        if attempt < LOAD_ATTEMPTS {
            // A newer root is complete when it is visible (parts are written first), so a
            // retry can succeed at once; the jitter only spreads readers of a churning root.
            let ms = u64::from(attempt.min(10));
            tokio::time::sleep(Duration::from_millis(fastrand::u64(1..=ms))).await;
        }
    }
    Err(StateError::RootChurn {
        side: side.to_owned(),
        store: store.describe(),
        attempts: LOAD_ATTEMPTS,
    })
}

/// A part a load did not find.
enum Missing {
    /// An index part (a bucket list).
    Index(String),
    /// A bucket part.
    Part(String),
}

impl Missing {
    fn corrupt(self, store: &StateStore, side: &str) -> StateError {
        let unchanged = "and the root has not changed since";
        match self {
            Missing::Index(name) => corrupt(
                store,
                format!("index part {name} of `{side}`"),
                format!("index part referenced by the root is missing, {unchanged}"),
            ),
            Missing::Part(name) => corrupt(
                store,
                format!("part {name} of `{side}`"),
                format!("bucket part referenced by the root is missing, {unchanged}"),
            ),
        }
    }
}

/// Loads the info of one root as read; `Ok(Err(_))` names a part that is gone.
async fn load_root<T>(store: &StateStore, side: &str, root_read: &RootRead) -> Result<Result<LoadedInfo<T>, Missing>>
where
    T: HasOrigin + DeserializeOwned + Send + 'static,
{
    let mut root = parse_root(store, side, &root_read.bytes)?;
    if let Err(name) = resolve_index(store, side, &mut root).await? {
        return Ok(Err(Missing::Index(name)));
    }
    Ok(match load_parts::<T>(store, side, &root).await? {
        Ok(buckets) => Ok(LoadedInfo {
            root,
            version: root_read.version,
            buckets,
        }),
        Err(name) => Err(Missing::Part(name)),
    })
}

/// Loads every part of a root; `Ok(Err(hash))` names a part that is gone.
async fn load_parts<T>(store: &StateStore, side: &str, root: &InfoRoot) -> Result<Result<Buckets<T>, String>>
where
    T: HasOrigin + DeserializeOwned + Send + 'static,
{
    let mut buckets = Buckets::new(root.buckets.len().max(1) as u32);
    let names: Vec<String> = root.buckets.iter().flat_map(|b| b.parts.iter().cloned()).collect();
    let mut pending = names.into_iter();
    let mut tasks = tokio::task::JoinSet::new();
    let spawn = |tasks: &mut tokio::task::JoinSet<_>, hash: String| {
        let (store, side) = (store.clone(), side.to_owned());
        tasks.spawn(async move {
            let bytes = store.read_part(&side, &hash).await?;
            let Some(bytes) = bytes else {
                return Ok::<_, StateError>(Err(hash));
            };
            // Parts are named by their content: a part whose bytes do not hash to its name was
            // changed or truncated, and is never trusted.
            let actual = Digest(Sha256::digest(&bytes).into()).to_hex();
            if actual != hash {
                return Err(corrupt(&store, format!("part {hash} of `{side}`"), format!("its content hashes to {actual}")));
            }
            let rows: Vec<(SecretPath, T)> = serde_json::from_slice(&bytes)
                .map_err(|e| corrupt(&store, format!("part {hash} of `{side}`"), e.to_string()))?;
            Ok(Ok(rows))
        });
    };
    for hash in pending.by_ref().take(PARALLEL_READS) {
        spawn(&mut tasks, hash);
    }
    let mut missing = None;
    while let Some(joined) = tasks.join_next().await {
        let result = joined.map_err(|e| corrupt(store, format!("parts of `{side}`"), format!("reader task failed: {e}")))?;
        match result? {
            Ok(rows) => {
                for (k, v) in rows {
                    buckets.insert(k, v);
                }
            }
            Err(hash) => missing = Some(hash),
        }
        if missing.is_none()
            && let Some(hash) = pending.next()
        {
            spawn(&mut tasks, hash);
        }
    }
    Ok(match missing {
        Some(hash) => Err(hash),
        None => {
            // Parts finish in any order, so the maps grew by inserts: pack them.
            buckets.compact();
            Ok(buckets)
        }
    })
}

/// Commits a side's info: new parts first, then the root; GC afterwards. Returns whether
/// anything was written (a commit equal to the stored one writes nothing).
///
/// `base` is the root version the cycle started from: what [`load`] returned for a
/// destination, the root read *before* the scan for the origin (`None`: the side had no root).
/// The root is replaced only if it is still that version, so an older scan or plan never
/// overwrites a newer commit: otherwise [`StateError::Conflict`], with nothing visible. On
/// Consul the swap also checks the side's session lock, so a writer that lost its lock commits
/// nothing ([`StateError::LockLost`]).
///
/// Parts dropped from the root are removed [`PART_GRACE`] after they were dropped (module
/// docs), by the clock of this machine: [`commit_at`] with the current time.
// One argument per part of a root; a struct for two call sites adds nothing.
#[allow(clippy::too_many_arguments)]
pub async fn commit<T: HasOrigin + Serialize>(
    store: &StateStore,
    lock: &StoreLock,
    base: Option<u64>,
    origin_mounts: BTreeMap<String, String>,
    config_hash: Option<String>,
    buckets: &Buckets<T>,
    digests: &[Digest],
) -> Result<bool> {
    commit_at(store, lock, base, origin_mounts, config_hash, buckets, digests, SystemTime::now()).await
}

/// [`commit`] at time `now`: the retirement time recorded for parts this commit drops, and the
/// time against which earlier retirements are aged (tests move it instead of sleeping).
// As `commit`, plus the clock.
#[allow(clippy::too_many_arguments)]
pub async fn commit_at<T: HasOrigin + Serialize>(
    store: &StateStore,
    lock: &StoreLock,
    base: Option<u64>,
    origin_mounts: BTreeMap<String, String>,
    config_hash: Option<String>,
    buckets: &Buckets<T>,
    digests: &[Digest],
    now: SystemTime,
) -> Result<bool> {
    let side = lock.side().to_owned();
    let previous_read = store.read_root(&side).await?;
    // Committed by someone else since the cycle's base: do not even write parts.
    if previous_read.as_ref().map(|r| r.version) != base {
        return Err(StateError::Conflict {
            side,
            store: store.describe(),
        });
    }
    // A corrupt previous root is replaced; one of a newer format (a newer vsync wrote it) is
    // never overwritten by this older build.
    let previous: Option<InfoRoot> = match previous_read.as_ref().map(|r| parse_root(store, &side, &r.bytes)) {
        Some(Ok(root)) => Some(root),
        Some(Err(e @ StateError::UnknownFormat { .. })) => return Err(e),
        Some(Err(_)) | None => None,
    };
    if !lock.is_held() {
        return Err(lock.lost_error(&store.describe()));
    }
    let (refs, mut batch, mut stored) = stage_parts(store, lock, &side, previous.as_ref(), buckets, digests).await?;
    let mut root = InfoRoot {
        format: T::FORMAT,
        generation: previous.as_ref().map_or(0, |p| p.generation),
        complete: true,
        origin_mounts,
        config_hash,
        buckets: refs,
        index: Vec::new(),
    };
    // Every part this root references, kept by the collection below.
    let mut keep: HashSet<String> = root.buckets.iter().flat_map(|b| b.parts.iter().cloned()).collect();
    let index_parts = split_index(store, &side, &mut root)?;
    keep.extend(index_parts.iter().map(|(name, _)| name.clone()));
    batch.extend(index_parts.into_iter().filter(|(name, _)| stored.insert(name.clone())));
    // Index parts are content-addressed: equal names, equal bucket lists.
    if previous.as_ref() == Some(&root) {
        return Ok(false);
    }
    root.generation += 1;
    let root_bytes =
        serde_json::to_vec(&root).map_err(|e| corrupt(store, format!("root of `{side}`"), e.to_string()))?;
    if root_bytes.len() > PART_LIMIT {
        return Err(corrupt(
            store,
            format!("root of `{side}`"),
            format!(
                "{} bytes over the {PART_LIMIT}-byte value limit",
                root_bytes.len()
            ),
        ));
    }
    if !lock.is_held() {
        return Err(lock.lost_error(&store.describe()));
    }
    store.write_new_parts(lock, batch).await?;
    store.swap_root(lock, &root_bytes, base).await?;
    match collect(store, lock, &side, previous, &keep, now).await {
        // The root is committed; the lock's next holder collects what is left.
        Ok(()) | Err(StateError::LockLost { .. }) => Ok(true),
        Err(e) => Err(e),
    }
}

/// Serialises a commit's buckets into parts, writing new ones in batches of
/// [`WRITE_BATCH_BYTES`]; returns the bucket references, the parts still to write, and every
/// part name stored or about to be.
async fn stage_parts<T: HasOrigin + Serialize>(
    store: &StateStore,
    lock: &StoreLock,
    side: &str,
    previous: Option<&InfoRoot>,
    buckets: &Buckets<T>,
    digests: &[Digest],
) -> Result<(Vec<BucketRef>, Vec<(String, Vec<u8>)>, HashSet<String>)> {
    // Parts are written as buckets are serialised, a few MB at a time, so a commit never holds
    // the whole encoded info. Parts already stored (same hash, same bytes) are not rewritten,
    // so a commit that changes nothing writes no part. A part written here that the root swap
    // then does not reference (a conflict, a lost lock) is an orphan: it is in no root and was
    // never retired, so the next commit's collection removes it at once.
    let mut stored: HashSet<String> = store.list_parts(side).await?.into_iter().collect();
    let mut refs = Vec::with_capacity(buckets.buckets().len());
    let mut batch: Vec<(String, Vec<u8>)> = Vec::new();
    let mut batch_bytes = 0;
    // The previous root's buckets, by index, when their parts can stand for equal buckets now:
    // same format and layout, entries fully covered by the digest, parts still stored.
    let mut reusable: Vec<Option<BucketRef>> = Vec::new();
    if T::DIGEST_COVERS_ENTRY
        && let Some(mut p) = previous.cloned().filter(|p| p.format == T::FORMAT)
        && resolve_index(store, side, &mut p).await?.is_ok()
        && p.buckets.len() == buckets.buckets().len()
    {
        reusable = p.buckets.into_iter().map(Some).collect();
    }
    for (i, bucket) in buckets.buckets().iter().enumerate() {
        let digest = digests.get(i).copied().unwrap_or_else(|| buckets.digest(i as u32));
        if let Some(old) = reusable.get_mut(i).and_then(Option::take)
            && old.digest == digest
            && old.parts.iter().all(|name| stored.contains(name))
        {
            // An unchanged bucket of an origin: its stored parts are these entries' bytes.
            refs.push(old);
            continue;
        }
        let rows: Vec<(&SecretPath, &T)> = bucket.iter().collect();
        let chunks = split_for_storage(&rows, PART_LIMIT)
            .map_err(|e| corrupt(store, format!("bucket {i} of `{side}`"), e.to_string()))?;
        let mut parts = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            let hash = Digest(Sha256::digest(chunk.as_bytes()).into()).to_hex();
            parts.push(hash.clone());
            if stored.insert(hash.clone()) {
                batch_bytes += chunk.len();
                batch.push((hash, chunk.into_bytes()));
            }
        }
        if batch_bytes >= WRITE_BATCH_BYTES {
            store.write_new_parts(lock, std::mem::take(&mut batch)).await?;
            batch_bytes = 0;
        }
        refs.push(BucketRef { digest, parts });
    }
    Ok((refs, batch, stored))
}

/// The retired-parts document of a side (module docs): part name -> unix seconds.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Retired {
    parts: BTreeMap<String, u64>,
}

/// Garbage collection after a root swap: records the parts `previous` referenced and the new
/// root (`current`: every part it references) does not as retired at `now`, then removes the
/// stored parts that nothing references and that were never recorded or were retired more
/// than [`PART_GRACE`] ago.
async fn collect(
    store: &StateStore,
    lock: &StoreLock,
    side: &str,
    previous: Option<InfoRoot>,
    current: &HashSet<String>,
    now: SystemTime,
) -> Result<()> {
    let mut dropped: Vec<String> = Vec::new();
    if let Some(mut p) = previous {
        dropped.extend(p.index.iter().cloned());
        if resolve_index(store, side, &mut p).await?.is_err() {
            // The previous index is gone already: which parts it named is unknown, so nothing
            // is collected safely this time (the next commit retires this root's parts).
            return Ok(());
        }
        dropped.extend(p.buckets.into_iter().flat_map(|b| b.parts));
        dropped.retain(|name| !current.contains(name));
    }
    let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let read = read_retired(store, side).await;
    let mut retired = Retired::default();
    let stored = store.list_parts(side).await?;
    let stored_set: HashSet<&String> = stored.iter().collect();
    for (name, at) in read.iter().flat_map(|r| r.parts.iter()) {
        // Re-referenced parts are live again; collected ones need no entry. A time ahead of
        // this clock (another machine's, after a lock takeover) counts from now.
        if !current.contains(name) && stored_set.contains(name) {
            retired.parts.insert(name.clone(), (*at).min(now));
        }
    }
    for name in dropped.into_iter().filter(|name| stored_set.contains(name)) {
        retired.parts.insert(name, now);
    }
    let expired = |at: u64| now.saturating_sub(at) > PART_GRACE.as_secs();
    let mut stale: Vec<String> = stored
        .iter()
        .filter(|name| !current.contains(*name) && retired.parts.get(*name).is_none_or(|at| expired(*at)))
        .cloned()
        .collect();
    retired.parts.retain(|_, at| !expired(*at));
    stale.extend(bound_retired(&mut retired, RETIRED_DOC_LIMIT));
    if read.as_ref() != Some(&retired) {
        let bytes = serde_json::to_vec(&retired).map_err(|e| corrupt(store, format!("retired parts of `{side}`"), e.to_string()))?;
        store.write_locked_doc(lock, RETIRED_DOC, &bytes).await?;
    }
    store.remove_parts(lock, stale).await
}

/// Reads the retired-parts document; `None` when missing or unreadable (logged), which makes
/// this commit collect every unreferenced part except the previous root's at once.
async fn read_retired(store: &StateStore, side: &str) -> Option<Retired> {
    match store.read_doc(side, RETIRED_DOC).await {
        Ok(Some(bytes)) => match serde_json::from_slice(&bytes) {
            Ok(retired) => Some(retired),
            Err(e) => {
                tracing::warn!(side, error = %e, "{}: the retired-parts document is corrupt; collecting unreferenced parts at once", store.describe());
                None
            }
        },
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(side, error = %e, "{}: cannot read the retired-parts document; collecting unreferenced parts at once", store.describe());
            None
        }
    }
}

/// Drops the oldest entries until the document encodes within `limit` bytes; returns the
/// dropped parts (removed at once: a reader that still needs one reloads).
fn bound_retired(retired: &mut Retired, limit: usize) -> Vec<String> {
    // `{"parts":{}}` plus, per entry, `"name":secs` and a comma.
    let entry_len = |name: &str, at: u64| name.len() + 4 + at.to_string().len();
    let mut size = 12 + retired.parts.iter().map(|(n, at)| entry_len(n, *at)).sum::<usize>();
    if size <= limit {
        return Vec::new();
    }
    let mut by_age: Vec<(u64, String)> = retired.parts.iter().map(|(n, at)| (*at, n.clone())).collect();
    by_age.sort();
    let mut dropped = Vec::new();
    for (at, name) in by_age {
        if size <= limit {
            break;
        }
        size -= entry_len(&name, at);
        retired.parts.remove(&name);
        dropped.push(name);
    }
    dropped
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use vsync_core::info::auto_bucket_count;
    use vsync_core::{KvVersion, OriginEntry, SyncInfo};

    use super::*;
    use crate::FileStore;

    fn entry(v: u64) -> OriginEntry {
        OriginEntry {
            kind: KvVersion::V2,
            current_version: v,
            created_time: "2026-11-22T10:09:20Z".into(),
            current_live: true,
            digest: None,
        }
    }

    #[tokio::test]
    async fn commit_load_no_op_and_gc() {
        let dir = tempfile::tempdir().unwrap();
        let file = FileStore::open(dir.path()).unwrap();
        let store = StateStore::File(file.clone());
        let lock = store.lock_side("origin").await.unwrap();
        let info = SyncInfo::from_entries(4, (0..50).map(|i| (SecretPath::new("secret/", format!("k{i}")), entry(i))));
        let mounts: BTreeMap<String, String> = [("secret/".to_owned(), "uuid-1".to_owned())].into();
        assert!(commit(&store, &lock, None, mounts.clone(), None, &info, &info.digests()).await.unwrap());
        let mtime = file.modified("origin");
        let base = store.read_root("origin").await.unwrap().map(|r| r.version);
        assert!(!commit(&store, &lock, base, mounts.clone(), None, &info, &info.digests()).await.unwrap(), "no change, no write");
        assert_eq!(file.modified("origin"), mtime);
        let loaded: LoadedInfo<OriginEntry> = load(&store, "origin").await.unwrap().unwrap();
        assert_eq!(loaded.buckets, info);
        assert_eq!(loaded.root.digests(), info.digests());
        assert_eq!(loaded.root.origin_mounts, mounts);

        // Two more generations, the second one a grace period later: the parts of generation 1
        // (retired by generation 2) are collected, those of generation 2 are kept.
        let mut changed = info.clone();
        let t0 = SystemTime::now();
        for round in 0..2 {
            for i in 0..50 {
                changed.insert(SecretPath::new("secret/", format!("k{i}")), entry(100 + round * 100 + i));
            }
            let base = store.read_root("origin").await.unwrap().map(|r| r.version);
            let now = t0 + (PART_GRACE + Duration::from_secs(2)) * round as u32;
            commit_at(&store, &lock, base, mounts.clone(), None, &changed, &changed.digests(), now).await.unwrap();
        }
        let parts = file.list("origin.buckets").unwrap();
        assert_eq!(parts.len(), 8, "4 buckets x (current + previous generation)");
        let loaded: LoadedInfo<OriginEntry> = load(&store, "origin").await.unwrap().unwrap();
        assert_eq!(loaded.root.generation, 3);
        assert_eq!(loaded.buckets, changed);
    }

    #[tokio::test]
    async fn an_origin_commit_reuses_the_parts_of_unchanged_buckets() {
        let dir = tempfile::tempdir().unwrap();
        let file = FileStore::open(dir.path()).unwrap();
        let store = StateStore::File(file.clone());
        let lock = store.lock_side("origin").await.unwrap();
        let mut info = SyncInfo::from_entries(8, (0..400).map(|i| (SecretPath::new("secret/", format!("k{i}")), entry(i))));
        let base = |s: &StateStore| {
            let s = s.clone();
            async move { s.read_root("origin").await.unwrap().map(|r| r.version) }
        };
        commit(&store, &lock, base(&store).await, BTreeMap::new(), None, &info, &info.digests()).await.unwrap();
        let first: LoadedInfo<OriginEntry> = load(&store, "origin").await.unwrap().unwrap();
        let key = SecretPath::new("secret/", "k7");
        let changed = vsync_core::info::bucket_of(&key, 8) as usize;
        info.insert(key, entry(9999));
        commit(&store, &lock, base(&store).await, BTreeMap::new(), None, &info, &info.digests()).await.unwrap();
        let second: LoadedInfo<OriginEntry> = load(&store, "origin").await.unwrap().unwrap();
        assert_eq!(second.buckets, info, "what loads is what was committed");
        for i in 0..8 {
            let same = first.root.buckets[i].parts == second.root.buckets[i].parts;
            assert_eq!(same, i != changed, "bucket {i}: parts reused exactly when unchanged");
        }
    }

    #[tokio::test]
    async fn a_part_that_does_not_match_its_name_is_corrupt_and_files_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("state");
        let store = StateStore::File(FileStore::open(&sub).unwrap());
        let lock = store.lock_side("origin").await.unwrap();
        let info = SyncInfo::from_entries(1, (0..3).map(|i| (SecretPath::new("secret/", format!("k{i}")), entry(i))));
        commit(&store, &lock, store.read_root("origin").await.unwrap().map(|r| r.version), BTreeMap::new(), None, &info, &info.digests()).await.unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&sub), 0o700);
            assert_eq!(mode(&sub.join("origin.json")), 0o600);
            assert_eq!(mode(&sub.join("origin.lock")), 0o600);
        }
        let part = std::fs::read_dir(sub.join("origin.buckets")).unwrap().next().unwrap().unwrap().path();
        let text = std::fs::read_to_string(&part).unwrap().replace("\"k1\"", "\"kX\"");
        std::fs::write(&part, text).unwrap();
        let err = load::<OriginEntry>(&store, "origin").await.unwrap_err();
        assert!(matches!(err, StateError::Corrupt { .. }) && err.to_string().contains("hashes to"), "{err}");
    }

    #[tokio::test]
    async fn large_bucket_counts_keep_the_root_small_through_index_parts() {
        // A forced `buckets = 8192` (the 16384 automatic buckets of 10M keys: over Consul, in
        // tests/consul_store.rs).
        for count in [8192u32] {
            let dir = tempfile::tempdir().unwrap();
            let file = FileStore::open(dir.path()).unwrap();
            let store = StateStore::File(file.clone());
            let lock = store.lock_side("origin").await.unwrap();
            // One entry per bucket is enough: the root's size depends on the bucket count.
            let mut info = SyncInfo::new(count);
            let (mut i, mut filled) = (0u64, HashSet::new());
            while filled.len() < count as usize && i < u64::from(count) * 20 {
                let key = SecretPath::new("secret/", format!("k{i}"));
                filled.insert(vsync_core::info::bucket_of(&key, count));
                info.insert(key, entry(i));
                i += 1;
            }
            assert!(commit(&store, &lock, store.read_root("origin").await.unwrap().map(|r| r.version), BTreeMap::new(), None, &info, &info.digests()).await.unwrap());
            let root = std::fs::read(dir.path().join("origin.json")).unwrap();
            assert!(root.len() < 4096, "{count} buckets: root of {} bytes", root.len());
            for part in file.list("origin.buckets").unwrap() {
                let len = std::fs::metadata(dir.path().join("origin.buckets").join(format!("{part}.json"))).unwrap().len();
                assert!(len <= PART_LIMIT as u64, "part of {len} bytes");
            }
            let loaded: LoadedInfo<OriginEntry> = load(&store, "origin").await.unwrap().unwrap();
            assert_eq!(loaded.root.buckets.len(), count as usize);
            assert_eq!(loaded.root.digests(), info.digests());
            assert_eq!(loaded.buckets, info);
            assert!(!commit(&store, &lock, store.read_root("origin").await.unwrap().map(|r| r.version), BTreeMap::new(), None, &info, &info.digests()).await.unwrap(), "no change, no write");
            // One change: a new generation; the previous one's parts are kept, older ones go.
            let mut changed = info.clone();
            changed.insert(SecretPath::new("secret/", "k0"), entry(999));
            assert!(commit(&store, &lock, store.read_root("origin").await.unwrap().map(|r| r.version), BTreeMap::new(), None, &changed, &changed.digests()).await.unwrap());
            let loaded: LoadedInfo<OriginEntry> = load(&store, "origin").await.unwrap().unwrap();
            assert_eq!(loaded.buckets, changed);
            changed.insert(SecretPath::new("secret/", "k1"), entry(998));
            assert!(commit(&store, &lock, store.read_root("origin").await.unwrap().map(|r| r.version), BTreeMap::new(), None, &changed, &changed.digests()).await.unwrap());
            let loaded: LoadedInfo<OriginEntry> = load(&store, "origin").await.unwrap().unwrap();
            assert_eq!(loaded.buckets, changed);
            // An index part missing under an unchanged root is corruption, named as such.
            let root: InfoRoot = serde_json::from_slice(&std::fs::read(dir.path().join("origin.json")).unwrap()).unwrap();
            let index = root.index.first().unwrap();
            std::fs::remove_file(dir.path().join("origin.buckets").join(format!("{index}.json"))).unwrap();
            let err = load::<OriginEntry>(&store, "origin").await.unwrap_err();
            assert!(matches!(err, StateError::Corrupt { .. }) && err.to_string().contains(&format!("index part {index}")), "{err}");
        }
    }

    #[test]
    fn the_retired_document_is_bounded_by_dropping_the_oldest_entries() {
        let mut retired = Retired::default();
        for i in 0..5_000u64 {
            let name = Digest(Sha256::digest(i.to_be_bytes()).into()).to_hex();
            retired.parts.insert(name, 1_700_000_000 + i / 10);
        }
        let before = serde_json::to_vec(&retired).unwrap().len();
        assert!(before > RETIRED_DOC_LIMIT, "{before} bytes");
        let all = retired.parts.clone();
        let dropped = bound_retired(&mut retired, RETIRED_DOC_LIMIT);
        let after = serde_json::to_vec(&retired).unwrap().len();
        assert!(after <= RETIRED_DOC_LIMIT && after > RETIRED_DOC_LIMIT - 200, "{after} bytes");
        assert_eq!(dropped.len() + retired.parts.len(), 5_000);
        let newest_dropped = dropped.iter().map(|name| all[name]).max().unwrap();
        assert!(retired.parts.values().all(|at| *at >= newest_dropped), "the oldest go first");
        assert!(bound_retired(&mut retired, RETIRED_DOC_LIMIT).is_empty(), "within the limit: nothing dropped");
        let mut empty = Retired::default();
        assert!(bound_retired(&mut empty, 12).is_empty());
        assert_eq!(serde_json::to_vec(&empty).unwrap().len(), 12, "the fixed overhead counted");
    }

    #[tokio::test]
    async fn unknown_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::File(FileStore::open(dir.path()).unwrap());
        std::fs::write(dir.path().join("origin.json"), br#"{"format": 99}"#).unwrap();
        let err = load::<OriginEntry>(&store, "origin").await.unwrap_err();
        assert!(matches!(err, StateError::UnknownFormat { found: 99, .. }), "{err}");
    }

    #[test]
    fn a_mount_of_200k_long_paths_stores_in_chunks_under_512_kib() {
        let n = 200_000;
        let long = "x".repeat(180);
        let info = SyncInfo::from_entries(
            auto_bucket_count(n),
            (0..n).map(|i| (SecretPath::new("secret/", format!("team-{}/{long}/{i}", i % 97)), entry(i as u64))),
        );
        assert_eq!(info.len(), n);
        let mut chunks = 0;
        let mut total = 0;
        for b in info.buckets() {
            let rows: Vec<(&SecretPath, &OriginEntry)> = b.iter().collect();
            for c in split_for_storage(&rows, 512 * 1024).unwrap() {
                assert!(c.len() <= 512 * 1024, "chunk of {} bytes", c.len());
                let back: Vec<(SecretPath, OriginEntry)> = serde_json::from_str(&c).unwrap();
                total += back.len();
                chunks += 1;
            }
        }
        assert_eq!(total, n);
        assert!(chunks >= info.count() as usize);
        // One giant bucket splits too.
        let rows: Vec<(SecretPath, OriginEntry)> = info.into_entries().take(20_000).collect();
        let parts = split_for_storage(&rows, 512 * 1024).unwrap();
        assert!(parts.len() > 1 && parts.iter().all(|p| p.len() <= 512 * 1024));
    }
}

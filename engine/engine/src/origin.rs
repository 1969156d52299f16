//! The origin side: a complete scan of the configured mounts into sync info, an incremental
//! update of that info from audit events ([`update`]), publishing it, and loading what was
//! published.
//!
//! Any listing, metadata or value error fails the whole scan (or update), so a partial view
//! (which would read as deletes everywhere) is never published or used.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::Instrument as _;
use tracing::info;
use vsync_core::digest::value_hmac;
use vsync_core::info::{BucketsBuilder, auto_bucket_count};
use vsync_core::{Clock, Digest, KvVersion, OriginEntry, OriginInfo, OriginSpec, SecretPath, SystemClock};
use vsync_state::info as state_info;
use vsync_state::{StateStore, StoreLock};
use vsync_vault::{SecretData, VaultClient};

use crate::audit::Change;
use crate::entries::v2_entry;
use crate::fault::Fault;

/// The origin's side name in a state store.
pub use crate::sides::ORIGIN_SIDE;

/// Scans every origin mount completely, bounded by the spec's timeout.
///
/// With `digest_key`, every KV v1 value is read and its HMAC recorded; without, KV v1 entries
/// carry no digest and destinations compare values themselves.
pub async fn scan(origin: &VaultClient, spec: &OriginSpec, digest_key: Option<&[u8]>) -> Result<Arc<OriginInfo>, Fault> {
    scan_with(origin, spec, digest_key, &SystemClock).await
}

/// [`scan`], dating versions (which are deleted) by `clock`.
pub async fn scan_with(origin: &VaultClient, spec: &OriginSpec, digest_key: Option<&[u8]>, clock: &dyn Clock) -> Result<Arc<OriginInfo>, Fault> {
    let info = tokio::time::timeout(spec.timeout, scan_mounts(origin, spec, digest_key, clock.now()))
        .await
        .map_err(|_| Fault::transient(format!("origin scan timed out after {:?}", spec.timeout)))?
        .map_err(|f| f.context("origin scan"))?;
    info!(secrets = info.entries.len(), buckets = info.entries.count(), mounts = info.mounts.len(), "origin scanned");
    Ok(Arc::new(info))
}

/// Buckets an origin scan fills before it knows how many secrets there are: the automatic
/// count for about a million, so a large origin is bucketed right away and a small one merges
/// down ([`BucketsBuilder::finish`]) at the end.
const PROVISIONAL_BUCKETS: u32 = 1024;

async fn scan_mounts(origin: &VaultClient, spec: &OriginSpec, digest_key: Option<&[u8]>, now: SystemTime) -> Result<OriginInfo, Fault> {
    // Entries go into buckets as the listing arrives: no listing is ever held whole.
    let mut entries: BucketsBuilder<OriginEntry> = BucketsBuilder::new(spec.buckets.unwrap_or(PROVISIONAL_BUCKETS));
    let mut uuids = BTreeMap::new();
    let key: Option<Arc<Vec<u8>>> = digest_key.map(|k| Arc::new(k.to_vec()));
    for mount in &spec.mounts {
        let info = origin
            .mount_info(mount)
            .await
            .map_err(|e| Fault::vault(format!("origin mount `{mount}`"), e))?;
        // Servers without detailed-metadata need one metadata read per KV v2 key; keyed KV v1
        // digests need one value read per key. Those keys wait here (paths only).
        let mut to_read: Vec<String> = Vec::new();
        let kind = info.kind;
        let keyed = key.is_some();
        origin
            .scan_secrets(&info, |item| {
                match (kind, item.metadata) {
                    (KvVersion::V2, Some(meta)) => {
                        entries.push(SecretPath::new(mount.as_str(), item.path), v2_entry(&meta, now));
                    }
                    (KvVersion::V1, _) if !keyed => {
                        entries.push(SecretPath::new(mount.as_str(), item.path), v1_entry(None));
                    }
                    _ => to_read.push(item.path),
                }
                Ok(())
            })
            .await
            .map_err(|e| Fault::vault(format!("listing origin mount `{mount}`"), e))?;
        read_each(origin, mount, kind, key.clone(), now, spec.workers, to_read, &mut entries).await?;
        uuids.insert(mount.clone(), info.uuid);
    }
    let count = spec.buckets.unwrap_or_else(|| auto_bucket_count(entries.len()));
    Ok(OriginInfo::new(entries.finish(count), uuids))
}

/// One key's entry read on its own: KV v2 metadata, or the KV v1 value (its HMAC under
/// `hmac_key`; without one the entry only records that the key exists, which a read shows as
/// well as a LIST of its folder). `None`: the key is gone.
async fn read_entry(
    client: &VaultClient,
    key: &SecretPath,
    kind: KvVersion,
    hmac_key: Option<&[u8]>,
    now: SystemTime,
) -> Result<Option<OriginEntry>, Fault> {
    let ctx = || format!("reading origin `{key}`");
    Ok(match kind {
        KvVersion::V2 => client
            .read_metadata(&key.mount, &key.path)
            .await
            .map_err(|e| Fault::vault(ctx(), e))?
            .map(|m| v2_entry(&m, now)),
        KvVersion::V1 => client
            .read_v1(&key.mount, &key.path)
            .await
            .map_err(|e| Fault::vault(ctx(), e))?
            .map(|v| v1_entry(hmac_key.map(|k| value_hmac(k, &canonical_json(&v))))),
    })
}

/// Reads the keys a listing could not describe (KV v2 metadata, KV v1 values for their
/// digest), `workers` at a time (as many tasks as reads in flight), into `entries`. A key gone by the time it
/// is read is left out, as the listing would have if it had been a moment later.
// The scan's parts, passed as they are; a struct for one caller adds nothing.
#[allow(clippy::too_many_arguments)]
async fn read_each(
    origin: &VaultClient,
    mount: &str,
    kind: KvVersion,
    hmac_key: Option<Arc<Vec<u8>>>,
    now: SystemTime,
    workers: usize,
    paths: Vec<String>,
    entries: &mut BucketsBuilder<OriginEntry>,
) -> Result<(), Fault> {
    let mut pending = paths.into_iter();
    let mut reads: JoinSet<Result<Option<(SecretPath, OriginEntry)>, Fault>> = JoinSet::new();
    let spawn = |reads: &mut JoinSet<_>, path: String| {
        let (client, mount, hmac_key) = (origin.clone(), mount.to_owned(), hmac_key.clone());
        reads.spawn(
            async move {
                let key_of = SecretPath::new(mount.as_str(), path);
                let entry = read_entry(&client, &key_of, kind, hmac_key.as_deref().map(Vec::as_slice), now).await?;
                Ok(entry.map(|e| (key_of, e)))
            }
            .in_current_span(),
        );
    };
    for path in pending.by_ref().take(workers.max(1)) {
        spawn(&mut reads, path);
    }
    while let Some(joined) = reads.join_next().await {
        let found = joined.map_err(|e| Fault::transient(format!("origin read task failed: {e}")))??;
        if let Some((k, e)) = found {
            entries.push(k, e);
        }
        if let Some(path) = pending.next() {
            spawn(&mut reads, path);
        }
    }
    Ok(())
}

/// The keys a batch of audit [`Change`]s names, given each mount's KV version: KV v2 requests
/// on `data/`, `metadata/`, `delete/`, `undelete/` and `destroy/` name the key after the
/// prefix; a KV v1 request path is the key. Other paths (`config`, folders) name no key.
pub fn changed_keys(changes: &[Change], kinds: &BTreeMap<String, KvVersion>) -> BTreeSet<SecretPath> {
    let mut keys = BTreeSet::new();
    for c in changes {
        let key = match kinds.get(&c.mount) {
            Some(KvVersion::V2) => c.rest.split_once('/').and_then(|(op, key)| {
                matches!(op, "data" | "metadata" | "delete" | "undelete" | "destroy").then_some(key)
            }),
            Some(KvVersion::V1) => Some(c.rest.as_str()),
            None => None,
        };
        if let Some(key) = key.filter(|k| !k.is_empty() && !k.ends_with('/')) {
            keys.insert(SecretPath::new(c.mount.clone(), key));
        }
    }
    keys
}

/// Applies audit [`Change`]s to `info` (the last complete view): re-reads just the named keys'
/// metadata (KV v2) or value (KV v1 with a digest key; without one, a KV v1 entry only records
/// that the key exists), then adds, replaces or removes their entries and recomputes the
/// digests of the buckets they are in. Returns how many entries changed.
///
/// All or nothing: every read happens before `info` is touched ([`read_changes`], then
/// [`apply_found`]), so an error leaves it as it was. `Ok(None)` means the changes cannot be
/// applied safely (a mount was re-created or is not in the info): only a full scan is right then.
pub async fn update(
    origin: &VaultClient,
    spec: &OriginSpec,
    digest_key: Option<&[u8]>,
    info: &mut OriginInfo,
    changes: &[Change],
    clock: &dyn Clock,
) -> Result<Option<usize>, Fault> {
    let Some(found) = read_changes(origin, spec, digest_key, &info.mounts, changes, clock).await? else {
        return Ok(None);
    };
    Ok(Some(apply_found(info, found)))
}

/// What [`read_changes`] found: each named key's entry now, `None` for a key that is gone.
pub type FoundChanges = Vec<(SecretPath, Option<OriginEntry>)>;

/// The reading half of [`update`]: re-reads the keys `changes` name, given the mount UUIDs of
/// the info they will be applied to, without touching any info (so it can run while
/// destinations copy from that info). `Ok(None)`: a mount was re-created or is unknown, so
/// only a full scan is right.
pub async fn read_changes(
    origin: &VaultClient,
    spec: &OriginSpec,
    digest_key: Option<&[u8]>,
    mounts: &BTreeMap<String, String>,
    changes: &[Change],
    clock: &dyn Clock,
) -> Result<Option<FoundChanges>, Fault> {
    let read = async {
        let mut kinds = BTreeMap::new();
        for mount in changes.iter().map(|c| &c.mount).collect::<BTreeSet<_>>() {
            let found = origin
                .mount_info(mount)
                .await
                .map_err(|e| Fault::vault(format!("origin mount `{mount}`"), e))?;
            // A re-created mount (new UUID) is a full scan's business: destinations refuse it.
            if mounts.get(mount.as_str()) != Some(&found.uuid) {
                return Ok(None);
            }
            kinds.insert(mount.clone(), found.kind);
        }
        let keys = changed_keys(changes, &kinds);
        let now = clock.now();
        let key: Option<Arc<Vec<u8>>> = digest_key.map(|k| Arc::new(k.to_vec()));
        let limit = Arc::new(Semaphore::new(spec.workers.max(1)));
        let mut reads: JoinSet<Result<(SecretPath, Option<OriginEntry>), Fault>> = JoinSet::new();
        for key_of in keys {
            let kind = kinds.get(key_of.mount.as_str()).copied().unwrap_or(KvVersion::V2);
            let (client, limit, hmac_key) = (origin.clone(), limit.clone(), key.clone());
            reads.spawn(async move {
                let _permit = limit.acquire_owned().await;
                let entry = read_entry(&client, &key_of, kind, hmac_key.as_deref().map(Vec::as_slice), now).await?;
                Ok((key_of, entry))
            }.in_current_span());
        }
        let mut found = Vec::new();
        while let Some(joined) = reads.join_next().await {
            found.push(joined.map_err(|e| Fault::transient(format!("origin read task failed: {e}")))??);
        }
        Ok(Some(found))
    };
    let found = tokio::time::timeout(spec.timeout, read)
        .await
        .map_err(|_| Fault::transient(format!("origin update timed out after {:?}", spec.timeout)))?
        .map_err(|f: Fault| f.context("origin update from audit events"))?;
    Ok(found)
}

/// The applying half of [`update`]: adds, replaces or removes the entries `found` names and
/// recomputes the digests of the buckets they are in. Returns how many entries changed.
pub fn apply_found(info: &mut OriginInfo, found: FoundChanges) -> usize {
    let mut touched = BTreeSet::new();
    let mut changed = 0;
    for (key, entry) in found {
        let bucket = vsync_core::info::bucket_of(&key, info.entries.count());
        match entry {
            Some(e) if info.entries.get(&key) == Some(&e) => continue,
            Some(e) => {
                info.entries.insert(key, e);
            }
            None => {
                if info.entries.remove(&key).is_none() {
                    continue;
                }
            }
        }
        changed += 1;
        touched.insert(bucket);
    }
    for i in touched {
        if let Some(d) = info.digests.get_mut(i as usize) {
            *d = info.entries.digest(i);
        }
    }
    changed
}

/// JSON with sorted keys and no whitespace, so equal values digest equally.
pub fn canonical_json(data: &SecretData) -> String {
    serde_json::from_str::<serde_json::Value>(data.as_json())
        .map(|v| v.to_string())
        .unwrap_or_else(|_| data.as_json().to_owned())
}

fn v1_entry(digest: Option<Digest>) -> OriginEntry {
    OriginEntry {
        kind: KvVersion::V1,
        current_version: 0,
        created_time: String::new(),
        current_live: true,
        digest,
    }
}

/// The version of the origin's published root (`None`: nothing published yet). Read before a
/// scan, it is the base that scan's [`publish`] commits against.
pub async fn published_version(store: &StateStore) -> Result<Option<u64>, Fault> {
    let root = store
        .read_root(ORIGIN_SIDE)
        .await
        .map_err(|e| Fault::state(format!("reading the origin's root in {}", store.describe()), e))?;
    Ok(root.map(|r| r.version))
}

/// Publishes the origin info (only complete scans get here) if the published root is still
/// `base` (read before the scan: an older scan never replaces a newer one). Returns whether
/// anything changed.
pub async fn publish(store: &StateStore, lock: &StoreLock, base: Option<u64>, origin: &OriginInfo) -> Result<bool, Fault> {
    state_info::commit(store, lock, base, origin.mounts.clone(), None, &origin.entries, &origin.digests)
        .await
        .map_err(|e| Fault::state(format!("publishing the origin info to {}", store.describe()), e))
}

/// Loads what the origin published, with the generation of its root.
pub async fn load(store: &StateStore) -> Result<(Arc<OriginInfo>, u64), Fault> {
    let loaded = state_info::load::<OriginEntry>(store, ORIGIN_SIDE)
        .await
        .map_err(|e| Fault::state("loading the origin info", e))?
        .ok_or_else(|| {
            Fault::transient(format!(
                "no origin sync info in {} yet: run `vsync origin` (or `vsync run`) first",
                store.describe()
            ))
        })?;
    let generation = loaded.root.generation;
    let info = OriginInfo {
        digests: loaded.root.digests(),
        mounts: loaded.root.origin_mounts,
        entries: loaded.buckets,
    };
    Ok((Arc::new(info), generation))
}

/// The generation of the origin's published root, if any (for status records).
pub async fn published_generation(store: &StateStore) -> Option<u64> {
    let root = store.read_root(ORIGIN_SIDE).await.ok()??;
    serde_json::from_slice::<serde_json::Value>(&root.bytes).ok()?.get("generation")?.as_u64()
}

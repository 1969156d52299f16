//! One sync cycle: scan the origin, plan per destination, copy with bounded concurrency, commit
//! the destination's state only at the end.
//!
//! `versions = "latest"`, file or Consul state store, paths mapped by the destination's
//! filters and transformers (WASM plugins).
//! A cycle that fails commits nothing; a cycle with per-secret failures commits the entries of
//! the secrets that succeeded and keeps the old entries of those that failed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{Context, Result, anyhow, bail};
use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{error, info, warn};
use vsync_config::{Destination, VersionsMode};
use vsync_core::info::{MetadataDigest, auto_bucket_count, value_hmac};
use vsync_core::plan::{Action, Plan, PlanOptions};
use vsync_core::{
    Buckets, DestEntry, Digest, KvVersion, OriginEntry, SecretKey, SyncInfo, Target, normalize_mount,
    plan_buckets,
};
use vsync_state::info as state_info;
use vsync_state::{StateStore, StoreLock};

use crate::plugins::{self, Stack};
use vsync_vault::{DataRead, SecretData, VaultClient, VaultError};

/// The origin's side name in a state store.
pub const ORIGIN_SIDE: &str = "origin";

/// What an origin scan produced, or what the origin published.
#[derive(Debug)]
pub struct OriginInfo {
    /// Every secret of the configured mounts, in buckets.
    pub info: SyncInfo,
    /// Bucket digests.
    pub digests: Vec<Digest>,
    /// Origin mount -> UUID.
    pub mounts: BTreeMap<String, String>,
}

/// Scans every origin mount completely. Any listing, metadata or value error fails the whole
/// scan, so a partial view (which would read as deletes) is never published or used.
///
/// With `digest_key`, every KV v1 value is read and its HMAC recorded; without, KV v1 entries
/// carry no digest and destinations compare values themselves.
pub async fn scan_origin(
    origin: &VaultClient,
    mounts: &[String],
    workers: usize,
    digest_key: Option<&[u8]>,
    buckets: Option<u32>,
) -> Result<OriginInfo> {
    let mut entries: Vec<(SecretKey, OriginEntry)> = Vec::new();
    let mut uuids = BTreeMap::new();
    let now = SystemTime::now();
    let key: Option<Arc<Vec<u8>>> = digest_key.map(|k| Arc::new(k.to_vec()));
    for m in mounts {
        let mount = normalize_mount(m)?;
        let info = origin
            .mount_info(&mount)
            .await
            .with_context(|| format!("origin mount `{mount}`"))?;
        let listed = origin
            .list_secrets(&info)
            .await
            .with_context(|| format!("listing origin mount `{mount}`"))?;
        // Servers without detailed-metadata need one metadata read per KV v2 key; keyed KV v1
        // digests need one value read per key.
        let limit = Arc::new(Semaphore::new(workers.max(1)));
        let mut fetches: JoinSet<Result<Option<(SecretKey, OriginEntry)>>> = JoinSet::new();
        for item in listed {
            let key_of = SecretKey::new(mount.clone(), item.path.clone());
            match (info.kind, item.metadata, key.clone()) {
                (KvVersion::V2, Some(meta), _) => entries.push((key_of, v2_entry(&meta, now))),
                (KvVersion::V1, _, None) => entries.push((key_of, v1_entry(None))),
                (kind, _, hmac_key) => {
                    let (client, limit, mount) = (origin.clone(), limit.clone(), mount.clone());
                    fetches.spawn(async move {
                        let _permit = limit.acquire_owned().await;
                        let ctx = || format!("reading origin `{mount}{}`", item.path);
                        if kind == KvVersion::V2 {
                            // None: deleted between LIST and GET, so not there.
                            let meta = client.read_metadata(&mount, &item.path).await.with_context(ctx)?;
                            return Ok(meta.map(|m| (key_of, v2_entry(&m, now))));
                        }
                        let value = client.read_v1(&mount, &item.path).await.with_context(ctx)?;
                        Ok(value.map(|v| {
                            let digest = hmac_key.map(|k| value_hmac(&k, &canonical_json(&v)));
                            (key_of, v1_entry(digest))
                        }))
                    });
                }
            }
        }
        while let Some(joined) = fetches.join_next().await {
            if let Some(found) = joined.context("origin read task panicked")?? {
                entries.push(found);
            }
        }
        uuids.insert(mount, info.uuid);
    }
    let count = buckets.unwrap_or_else(|| auto_bucket_count(entries.len()));
    let info = SyncInfo::from_entries(count, entries);
    let digests = info.digests();
    Ok(OriginInfo {
        info,
        digests,
        mounts: uuids,
    })
}

/// JSON with sorted keys and no whitespace, so equal values digest equally.
fn canonical_json(data: &SecretData) -> String {
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

fn v2_entry(meta: &vsync_vault::KvMetadata, now: SystemTime) -> OriginEntry {
    let digest = MetadataDigest {
        current_version: meta.current_version,
        oldest_version: meta.oldest_version,
        created_time: &meta.created_time,
        max_versions: meta.max_versions,
        cas_required: meta.cas_required,
        delete_version_after: &meta.delete_version_after,
        custom_metadata: meta
            .custom_metadata
            .iter()
            .flatten()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect(),
        versions: meta
            .versions
            .iter()
            .map(|(n, v)| (*n, v.created_time.as_str(), v.deletion_time.as_str(), v.destroyed))
            .collect(),
    }
    .digest();
    OriginEntry {
        kind: KvVersion::V2,
        current_version: meta.current_version,
        created_time: meta.created_time.clone(),
        current_live: meta.current_is_live_at(now),
        digest: Some(digest),
    }
}

/// Publishes the origin info (only complete scans get here). Returns whether anything changed.
pub async fn publish_origin(store: &StateStore, lock: &StoreLock, origin: &OriginInfo) -> Result<bool> {
    Ok(state_info::commit(store, lock, origin.mounts.clone(), None, &origin.info, &origin.digests).await?)
}

/// Loads what the origin published.
pub async fn load_origin(store: &StateStore) -> Result<OriginInfo> {
    let loaded = state_info::load::<OriginEntry>(store, ORIGIN_SIDE).await?.ok_or_else(|| {
        anyhow!(
            "no origin sync info in {} yet: run `vsync origin` (or `vsync run`) first",
            store.describe()
        )
    })?;
    Ok(OriginInfo {
        digests: loaded.root.digests(),
        mounts: loaded.root.origin_mounts,
        info: loaded.buckets,
    })
}

/// Name of a destination's side in the state store.
pub fn side_name(destination: &str) -> String {
    format!("destination-{destination}")
}

/// A destination's own state, in the origin's bucket layout.
pub struct DestInfo {
    /// What was copied.
    pub buckets: Buckets<DestEntry>,
    /// Their digests.
    pub digests: Vec<Digest>,
    /// Origin mount UUIDs this destination is bound to.
    pub origin_mounts: BTreeMap<String, String>,
    /// Config hash the entries were made with.
    pub config_hash: Option<String>,
}

/// Loads a destination's info, re-bucketed to the origin's layout.
pub async fn load_dest(store: &StateStore, name: &str, bucket_count: u32) -> Result<DestInfo> {
    Ok(match state_info::load::<DestEntry>(store, &side_name(name)).await? {
        None => {
            let buckets = Buckets::new(bucket_count);
            DestInfo {
                digests: buckets.digests(),
                buckets,
                origin_mounts: BTreeMap::new(),
                config_hash: None,
            }
        }
        Some(loaded) => {
            let same_layout = loaded.buckets.count() == bucket_count;
            let buckets = loaded.buckets.rebucket(bucket_count);
            DestInfo {
                digests: if same_layout { loaded.root.digests() } else { buckets.digests() },
                buckets,
                origin_mounts: loaded.root.origin_mounts,
                config_hash: loaded.root.config_hash,
            }
        }
    })
}

/// Hash of what decides where a destination writes (mount map, transforms, filters): when it
/// changes, every target is re-checked.
pub fn config_hash(d: &Destination) -> String {
    // Debug of these ordered maps is deterministic; this hash only ever meets itself.
    let text = format!("{:?}|{:?}|{:?}", d.mounts, d.transforms, d.filters);
    Digest(Sha256::digest(text.as_bytes()).into()).to_hex()
}

/// Flags of one destination cycle.
#[derive(Debug, Clone, Copy, Default)]
pub struct CycleFlags {
    /// Let a cycle past the mass-delete guard.
    pub allow_mass_delete: bool,
    /// Accept re-created origin mounts (new UUID) for this cycle.
    pub allow_origin_change: bool,
}

/// Counts of one destination cycle.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CycleReport {
    /// Secrets written that the destination never had.
    pub added: usize,
    /// Secrets written again (new version, re-created, moved, KV v1 value changed).
    pub updated: usize,
    /// Secrets checked and found equal (KV v1 without digest, or equal data already there).
    pub checked_equal: usize,
    /// Secrets removed or soft-deleted.
    pub deleted: usize,
    /// Secrets in scope that needed nothing.
    pub unchanged: usize,
    /// Secrets that changed at the origin during the cycle (retried next cycle).
    pub skipped: usize,
    /// Per-secret failures.
    pub failed: usize,
    /// Whether the state store was written.
    pub committed: bool,
    /// Origin data reads during the cycle.
    pub origin_data_reads: u64,
    /// Destination data reads during the cycle.
    pub dest_data_reads: u64,
    /// Destination writes (data and metadata) during the cycle.
    pub dest_writes: u64,
}

impl std::fmt::Display for CycleReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} added, {} updated, {} deleted, {} unchanged, {} checked equal, {} skipped, {} failed{}; \
             vault requests: {} origin data reads, {} destination data reads, {} destination writes",
            self.added,
            self.updated,
            self.deleted,
            self.unchanged,
            self.checked_equal,
            self.skipped,
            self.failed,
            if self.committed { "" } else { " (state unchanged)" },
            self.origin_data_reads,
            self.dest_data_reads,
            self.dest_writes,
        )
    }
}

/// Where `key` goes at this destination, or `None` if its mount is not mapped.
/// Normalised origin mount -> destination mount.
pub fn mount_map(d: &Destination) -> Result<BTreeMap<String, String>> {
    d.mounts
        .iter()
        .map(|(from, to)| Ok((normalize_mount(from)?, normalize_mount(to)?)))
        .collect()
}

/// A plan with the targets it computed.
pub struct Planned {
    /// The actions.
    pub plan: Plan,
    /// Target of every key the planner mapped this cycle.
    pub targets: HashMap<SecretKey, Target>,
}

/// Plans a destination cycle without touching anything (used by `vsync plan` and the cycle).
/// `stack` maps paths through the destination's filters and transformers (identity without).
/// Two origin secrets that would land on one destination path are an error, before any write.
pub fn plan_for(d: &Destination, origin: &OriginInfo, dest: &DestInfo, stack: Option<&mut Stack>) -> Result<Planned> {
    if d.versions == VersionsMode::All {
        bail!(
            "destination `{}`: versions = \"all\" (exact replica of every version) is not built \
             yet; set versions = \"latest\"",
            d.name
        );
    }
    if plugins::uses_plugins(d) && stack.is_none() {
        bail!("destination `{}`: transforms or filters configured but no plugin stack given", d.name);
    }
    let map = mount_map(d)?;
    let recheck_all = dest.config_hash.as_deref() != Some(config_hash(d).as_str());
    let kinds = |k: &SecretKey| {
        origin
            .info
            .get(k)
            .map(|e| e.kind)
            .or_else(|| dest.buckets.get(k).map(|e| e.origin.kind))
            .unwrap_or(KvVersion::V2)
    };
    let mut mapper = plugins::Mapper::new(d, &map, stack, &kinds);
    let plan = plan_buckets(
        &origin.info,
        &origin.digests,
        &dest.buckets,
        &dest.digests,
        recheck_all,
        PlanOptions { deletes: d.deletes },
        |k| mapper.map(k),
    );
    let targets = std::mem::take(&mut mapper.targets);
    // Who holds which destination path after the cycle: every written target, plus the copies
    // the plan leaves where they are.
    if !plan.writes.is_empty() {
        let touched: std::collections::HashSet<&SecretKey> =
            plan.writes.iter().chain(plan.removals.iter()).map(|a| a.key()).collect();
        let kept = dest
            .buckets
            .iter()
            .filter(|(k, e)| e.has_copy() && !touched.contains(k))
            .map(|(k, e)| (&e.target, k));
        let written = plan.writes.iter().filter_map(|a| match a {
            Action::CopyV2 { key, target, .. } | Action::SyncV1 { key, target } => Some((target, key)),
            _ => None,
        });
        plugins::check_collisions(d, kept.chain(written)).map_err(|e| crate::runtime::fatal("path-collision", e))?;
    }
    Ok(Planned { plan, targets })
}

/// Outcome of one write action.
enum Done {
    Wrote,
    Equal,
    Recorded,
    Skipped,
}

/// Runs one destination cycle against the origin info and commits the destination's info.
// Each argument is a distinct runtime part the caller owns; bundling them would only move the list.
#[allow(clippy::too_many_arguments)]
pub async fn destination_cycle(
    d: &Destination,
    origin_client: &VaultClient,
    dest_client: &VaultClient,
    origin: &OriginInfo,
    store: &StateStore,
    lock: &StoreLock,
    stack: Option<&mut Stack>,
    flags: CycleFlags,
) -> Result<CycleReport> {
    let origin_before = origin_client.request_counts();
    let dest_before = dest_client.request_counts();
    let mut report = CycleReport::default();
    let mut dest = load_dest(store, &d.name, origin.info.count()).await?;

    // Bind to the origin mounts' UUIDs: a re-created mount is a different data set.
    let mut origin_mounts = dest.origin_mounts.clone();
    for (mount, uuid) in &origin.mounts {
        match origin_mounts.get(mount) {
            Some(old) if old != uuid && !flags.allow_origin_change => {
                return Err(crate::runtime::fatal(
                    "origin-mount-recreated",
                    anyhow!(
                        "destination `{}`: origin mount `{mount}` was re-created (UUID {old} is now {uuid}); \
                         refusing to sync. Check the origin, then run once with --allow-origin-change",
                        d.name
                    ),
                ));
            }
            _ => {
                origin_mounts.insert(mount.clone(), uuid.clone());
            }
        }
    }

    let Planned { plan, targets } = plan_for(d, origin, &dest, stack)?;
    report.failed += plan.failed.len();

    // Mass-delete guard, against the copies the destination holds (not tombstones).
    let deletes = plan.delete_count();
    let copies = dest.buckets.iter().filter(|(_, e)| e.has_copy()).count();
    if deletes > 10 && (deletes as f64) > d.max_delete_ratio * (copies as f64) && !flags.allow_mass_delete {
        return Err(crate::runtime::fatal(
            "mass-delete-guard",
            anyhow!(
                "destination `{}`: the plan would delete {deletes} of {copies} secrets, over max_delete_ratio \
                 {}; nothing was changed. If this is intended, run once with --allow-mass-delete",
                d.name,
                d.max_delete_ratio
            ),
        ));
    }

    // Destination mount kinds decide the write API (a KV v1 origin may feed a KV v2 mount).
    let mut dest_kinds: HashMap<String, KvVersion> = HashMap::new();
    let mounts_needed = plan
        .writes
        .iter()
        .chain(plan.removals.iter())
        .filter_map(|a| match a {
            Action::CopyV2 { target, .. }
            | Action::SyncV1 { target, .. }
            | Action::Delete { target, .. }
            | Action::SoftDelete { target, .. } => Some(target.mount.clone()),
            Action::Record { .. } | Action::Forget { .. } => None,
        })
        .collect::<std::collections::BTreeSet<_>>();
    for m in mounts_needed {
        let info = dest_client
            .mount_info(&m)
            .await
            .with_context(|| format!("destination `{}` mount `{m}`", d.name))?;
        dest_kinds.insert(m, info.kind);
    }
    let dest_kinds = Arc::new(dest_kinds);

    report.unchanged = plan.unchanged;
    let mut not_written = std::collections::HashSet::new();

    // Writes, `workers` at a time.
    let limit = Arc::new(Semaphore::new(d.workers.max(1)));
    let mut tasks = JoinSet::new();
    for action in plan.writes.iter().cloned() {
        let Some(entry) = origin.info.get(action.key()).cloned() else {
            continue;
        };
        let (oc, dc, limit, kinds) = (origin_client.clone(), dest_client.clone(), limit.clone(), dest_kinds.clone());
        let is_new = !dest.buckets.get(action.key()).is_some_and(|e| e.origin.current_live);
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await;
            let result = run_write(&oc, &dc, &kinds, &action).await;
            (action, entry, is_new, result)
        });
    }
    while let Some(joined) = tasks.join_next().await {
        let (action, entry, is_new, result) = joined.context("copy task panicked")?;
        let target = match &action {
            Action::CopyV2 { target, .. } | Action::SyncV1 { target, .. } | Action::Record { target, .. } => target.clone(),
            _ => continue,
        };
        match result {
            Ok(Done::Skipped) => {
                report.skipped += 1;
                not_written.insert(action.key().clone());
                continue;
            }
            Ok(Done::Wrote) if is_new => report.added += 1,
            Ok(Done::Wrote) => report.updated += 1,
            Ok(Done::Equal) => report.checked_equal += 1,
            Ok(Done::Recorded) => {}
            Err(e) => {
                // Lost permissions are not a per-secret problem: halt the cycle, commit nothing.
                // A server that is sealed or unreachable fails every secret alike: stop the
                // cycle (nothing committed) rather than fail each secret after its retries.
                if crate::runtime::fatal_kind(&e).is_some() || server_down(&e) {
                    tasks.abort_all();
                    return Err(e.context(format!("destination `{}`: {} {}", d.name, op_name(&action), action.key())));
                }
                report.failed += 1;
                not_written.insert(action.key().clone());
                error!(destination = %d.name, secret = %action.key(), op = op_name(&action), error = %format!("{e:#}"), "secret failed; it is retried next cycle");
                continue;
            }
        }
        dest.buckets.insert(action.key().clone(), DestEntry { origin: entry, target });
    }

    // Removals, after every write (a moved secret is never missing at both places).
    for action in &plan.removals {
        let key = action.key();
        if not_written.contains(key) {
            continue; // its new copy was not written: keep the old one until it is
        }
        let result = match action {
            Action::Delete { target, .. } => match dest_kinds.get(&target.mount) {
                Some(KvVersion::V2) => dest_client.delete_metadata(&target.mount, &target.path).await,
                Some(KvVersion::V1) => dest_client.delete_v1(&target.mount, &target.path).await,
                None => Err(VaultError::Config(format!("unknown destination mount `{}`", target.mount))),
            },
            Action::SoftDelete { target, .. } => match dest_kinds.get(&target.mount) {
                Some(KvVersion::V2) => dest_client.soft_delete_latest(&target.mount, &target.path).await,
                _ => Ok(()), // KV v1 has no soft delete: leave it
            },
            Action::Forget { .. } => Ok(()),
            _ => continue,
        };
        if let Err(e) = result {
            if matches!(e, VaultError::PermissionDenied { .. } | VaultError::Sealed { .. } | VaultError::Connection { .. }) {
                return Err(anyhow::Error::new(e).context(format!("destination `{}`: {} {key}", d.name, op_name(action))));
            }
            report.failed += 1;
            error!(destination = %d.name, secret = %key, op = op_name(action), error = %e, "secret failed; it is retried next cycle");
            continue;
        }
        let removed_target = match action {
            Action::Delete { target, .. } | Action::SoftDelete { target, .. } => {
                report.deleted += 1;
                Some(target.clone())
            }
            _ => None,
        };
        // A secret that moved keeps its entry (it points at the new place now). One still at
        // the origin, but with no live version, leaves a tombstone so the infos agree.
        let moved = removed_target
            .as_ref()
            .is_some_and(|t| dest.buckets.get(key).is_some_and(|e| e.target != *t));
        if moved {
            continue;
        }
        match (origin.info.get(key), targets.get(key)) {
            (Some(entry), Some(target)) => {
                dest.buckets.insert(key.clone(), DestEntry { origin: entry.clone(), target: target.clone() });
            }
            _ => {
                dest.buckets.remove(key);
            }
        }
    }

    let digests = dest.buckets.digests();
    report.committed = state_info::commit(store, lock, origin_mounts, Some(config_hash(d)), &dest.buckets, &digests).await?;
    let (o, dc) = (origin_client.request_counts(), dest_client.request_counts());
    report.origin_data_reads = o.data_reads - origin_before.data_reads;
    report.dest_data_reads = dc.data_reads - dest_before.data_reads;
    report.dest_writes = (dc.data_writes + dc.metadata_writes) - (dest_before.data_writes + dest_before.metadata_writes);
    Ok(report)
}

/// Whether an error says the server as a whole is unavailable (sealed, unreachable).
fn server_down(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<VaultError>(),
            Some(VaultError::Sealed { .. } | VaultError::Connection { .. })
        )
    })
}

fn op_name(action: &Action) -> &'static str {
    match action {
        Action::CopyV2 { .. } => "copy",
        Action::SyncV1 { .. } => "sync-kv1",
        Action::Record { .. } => "record",
        Action::Delete { .. } => "delete",
        Action::SoftDelete { .. } => "soft-delete",
        Action::Forget { .. } => "forget",
    }
}

async fn run_write(
    origin: &VaultClient,
    dest: &VaultClient,
    kinds: &HashMap<String, KvVersion>,
    action: &Action,
) -> Result<Done> {
    let (key, target, data) = match action {
        Action::Record { .. } => return Ok(Done::Recorded),
        Action::CopyV2 { key, version, target, .. } => {
            match origin.read_version(&key.mount, &key.path, *version).await? {
                DataRead::Live(data, _) => (key, target, data),
                // Deleted, destroyed or gone since the scan: the next scan sees it.
                other => {
                    warn!(secret = %key, version, state = ?other, "origin version changed during the cycle; skipped");
                    return Ok(Done::Skipped);
                }
            }
        }
        Action::SyncV1 { key, target } => match origin.read_v1(&key.mount, &key.path).await? {
            Some(data) => (key, target, data),
            None => return Ok(Done::Skipped),
        },
        _ => return Err(anyhow!("not a write action")),
    };
    let kind = *kinds
        .get(&target.mount)
        .ok_or_else(|| anyhow!("unknown destination mount `{}`", target.mount))?;
    let wrote = write_if_different(dest, kind, target, &data).await?;
    info!(secret = %key, target = %target, wrote, "synced");
    Ok(if wrote { Done::Wrote } else { Done::Equal })
}

/// Writes `data` at `target` unless the destination already holds an equal value.
/// KV v2 writes carry `options.cas` = the destination's current version.
async fn write_if_different(dest: &VaultClient, kind: KvVersion, target: &Target, data: &SecretData) -> Result<bool> {
    let (mount, path) = (target.mount.as_str(), target.path.as_str());
    match kind {
        KvVersion::V1 => {
            if dest.read_v1(mount, path).await?.is_some_and(|cur| cur.same_value(data)) {
                return Ok(false);
            }
            dest.write_v1(mount, path, data).await?;
        }
        KvVersion::V2 => {
            let cas = match dest.read_latest(mount, path).await? {
                DataRead::Live(cur, _) if cur.same_value(data) => return Ok(false),
                DataRead::Live(_, m) | DataRead::Deleted(m) | DataRead::Destroyed(m) => m.version,
                DataRead::Missing => 0,
            };
            match dest.write_version(mount, path, data, cas).await {
                Ok(_) => {}
                // Metadata without a readable latest version (e.g. metadata-only key): ask
                // the metadata for the current version and try once more.
                Err(VaultError::CasMismatch { .. }) => {
                    let current = dest
                        .read_metadata(mount, path)
                        .await?
                        .map_or(0, |m| m.current_version);
                    dest.write_version(mount, path, data, current).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(true)
}

//! One sync cycle: scan the origin, plan per destination, copy with bounded concurrency, commit
//! the destination's state only at the end.
//!
//! This is the first vertical slice (`versions = "latest"`, file state store, identity paths).
//! A cycle that fails commits nothing; a cycle with per-secret failures commits the entries of
//! the secrets that succeeded and keeps the old entries of those that failed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{error, info, warn};
use vsync_config::{Destination, VersionsMode};
use vsync_core::plan::{Action, Plan, PlanOptions};
use vsync_core::{
    DestEntry, DestinationState, KvVersion, OriginEntry, OriginSnapshot, SecretKey, Target,
    normalize_mount, plan_latest,
};
use vsync_state::{FileStore, SideLock, StateError};
use vsync_vault::{DataRead, MountInfo, SecretData, VaultClient, VaultError};

/// Format version of the destination state document this build reads and writes.
pub const DEST_FORMAT: u32 = 1;

/// What the origin scan produced.
#[derive(Debug)]
pub struct Scan {
    /// Every secret in the configured mounts.
    pub snapshot: OriginSnapshot,
    /// Mount info (kind, UUID) by normalised mount.
    pub mounts: BTreeMap<String, MountInfo>,
}

/// Scans every origin mount completely. Any listing or metadata error fails the whole scan, so
/// a partial view (which would read as deletes) is never used.
pub async fn scan_origin(origin: &VaultClient, mounts: &[String], workers: usize) -> Result<Scan> {
    let mut snapshot = OriginSnapshot::new();
    let mut infos = BTreeMap::new();
    let now = SystemTime::now();
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
        // Servers without detailed-metadata need one metadata read per KV v2 key.
        let limit = Arc::new(Semaphore::new(workers.max(1)));
        let mut fetches = JoinSet::new();
        for item in listed {
            let key = SecretKey::new(mount.clone(), item.path.clone());
            match (info.kind, item.metadata) {
                (KvVersion::V1, _) => {
                    snapshot.insert(
                        key,
                        OriginEntry {
                            kind: KvVersion::V1,
                            current_version: 0,
                            created_time: String::new(),
                            current_live: true,
                        },
                    );
                }
                (KvVersion::V2, Some(meta)) => {
                    snapshot.insert(key, v2_entry(&meta, now));
                }
                (KvVersion::V2, None) => {
                    let (client, limit, mount) = (origin.clone(), limit.clone(), mount.clone());
                    fetches.spawn(async move {
                        let _permit = limit.acquire_owned().await;
                        let meta = client.read_metadata(&mount, &item.path).await;
                        (key, meta)
                    });
                }
            }
        }
        while let Some(joined) = fetches.join_next().await {
            let (key, meta) = joined.context("metadata task panicked")?;
            // None: deleted between LIST and GET, so not there.
            if let Some(meta) = meta.with_context(|| format!("reading origin metadata of `{key}`"))? {
                snapshot.insert(key, v2_entry(&meta, now));
            }
        }
        infos.insert(mount, info);
    }
    Ok(Scan {
        snapshot,
        mounts: infos,
    })
}

fn v2_entry(meta: &vsync_vault::KvMetadata, now: SystemTime) -> OriginEntry {
    OriginEntry {
        kind: KvVersion::V2,
        current_version: meta.current_version,
        created_time: meta.created_time.clone(),
        current_live: meta.current_is_live_at(now),
    }
}

/// The destination's document in the state store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DestinationDoc {
    /// Format version ([`DEST_FORMAT`]).
    pub format: u32,
    /// Origin mount UUIDs this destination is bound to.
    pub origin_mounts: BTreeMap<String, String>,
    /// What was copied, per origin secret.
    pub entries: Vec<StoredEntry>,
}

/// One entry of [`DestinationDoc`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEntry {
    /// Origin secret.
    pub key: SecretKey,
    /// What was copied.
    #[serde(flatten)]
    pub entry: DestEntry,
}

impl DestinationDoc {
    fn state(&self) -> DestinationState {
        self.entries.iter().map(|e| (e.key.clone(), e.entry.clone())).collect()
    }

    fn from_state(origin_mounts: BTreeMap<String, String>, state: &DestinationState) -> Self {
        Self {
            format: DEST_FORMAT,
            origin_mounts,
            entries: state
                .iter()
                .map(|(k, e)| StoredEntry {
                    key: k.clone(),
                    entry: e.clone(),
                })
                .collect(),
        }
    }
}

/// Name of a destination's document and lock in the state store.
pub fn side_name(destination: &str) -> String {
    format!("destination-{destination}")
}

/// Loads a destination's document, refusing unknown format versions.
pub fn load_doc(store: &FileStore, destination: &str) -> Result<Option<DestinationDoc>> {
    let name = side_name(destination);
    let Some(raw) = store.read::<serde_json::Value>(&name)? else {
        return Ok(None);
    };
    let found = raw.get("format").and_then(|f| f.as_u64()).unwrap_or(0) as u32;
    if found != DEST_FORMAT {
        return Err(StateError::UnknownFormat {
            path: store.dir().join(format!("{name}.json")),
            found,
            supported: DEST_FORMAT,
        }
        .into());
    }
    let doc = serde_json::from_value(raw).map_err(|e| StateError::Corrupt {
        path: store.dir().join(format!("{name}.json")),
        message: e.to_string(),
    })?;
    Ok(Some(doc))
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
    /// Secrets checked and found equal (KV v1, or state lost but data equal).
    pub checked_equal: usize,
    /// Secrets removed or soft-deleted.
    pub deleted: usize,
    /// Secrets in scope that needed nothing.
    pub unchanged: usize,
    /// Secrets that changed at the origin during the cycle (retried next cycle).
    pub skipped: usize,
    /// Per-secret failures.
    pub failed: usize,
    /// Whether the state document was written.
    pub committed: bool,
}

impl std::fmt::Display for CycleReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} added, {} updated, {} deleted, {} unchanged, {} checked equal, {} skipped, {} failed{}",
            self.added,
            self.updated,
            self.deleted,
            self.unchanged,
            self.checked_equal,
            self.skipped,
            self.failed,
            if self.committed { "" } else { " (state unchanged)" }
        )
    }
}

/// Where `key` goes at this destination, or `None` if its mount is not mapped.
fn target_of(mount_map: &BTreeMap<String, String>, key: &SecretKey) -> Option<Target> {
    mount_map.get(&key.mount).map(|dest_mount| Target {
        mount: dest_mount.clone(),
        path: key.path.clone(),
    })
}

/// Normalised origin mount -> destination mount.
pub fn mount_map(d: &Destination) -> Result<BTreeMap<String, String>> {
    d.mounts
        .iter()
        .map(|(from, to)| Ok((normalize_mount(from)?, normalize_mount(to)?)))
        .collect()
}

/// Plans a destination cycle without touching anything (used by `vsync plan` and the cycle).
pub fn plan_for(d: &Destination, scan: &Scan, state: &DestinationState) -> Result<Plan> {
    if d.versions == VersionsMode::All {
        bail!(
            "destination `{}`: versions = \"all\" (exact replica of every version) is not built \
             yet; set versions = \"latest\"",
            d.name
        );
    }
    let map = mount_map(d)?;
    Ok(plan_latest(
        &scan.snapshot,
        state,
        PlanOptions { deletes: d.deletes },
        |k| target_of(&map, k),
    ))
}

/// Outcome of one write action.
enum Done {
    Wrote(DestEntry),
    Equal(DestEntry),
    Skipped,
}

/// Runs one destination cycle against an origin scan and commits its state.
pub async fn destination_cycle(
    d: &Destination,
    origin: &VaultClient,
    dest: &VaultClient,
    scan: &Scan,
    store: &FileStore,
    lock: &SideLock,
    flags: CycleFlags,
) -> Result<CycleReport> {
    let old_doc = load_doc(store, &d.name)?;
    let mut origin_mounts = old_doc.as_ref().map(|doc| doc.origin_mounts.clone()).unwrap_or_default();
    let mut state = old_doc.as_ref().map(DestinationDoc::state).unwrap_or_default();

    // Bind to the origin mounts' UUIDs: a re-created mount is a different data set.
    for (mount, info) in &scan.mounts {
        match origin_mounts.get(mount) {
            Some(uuid) if *uuid != info.uuid && !flags.allow_origin_change => bail!(
                "destination `{}`: origin mount `{mount}` was re-created (UUID {uuid} is now {}); \
                 refusing to sync. Check the origin, then run once with --allow-origin-change",
                d.name,
                info.uuid
            ),
            _ => {
                origin_mounts.insert(mount.clone(), info.uuid.clone());
            }
        }
    }

    let plan = plan_for(d, scan, &state)?;

    // Mass-delete guard.
    let deletes = plan.delete_count();
    if deletes > 10
        && (deletes as f64) > d.max_delete_ratio * (state.len() as f64)
        && !flags.allow_mass_delete
    {
        bail!(
            "destination `{}`: the plan would delete {deletes} of {} secrets, over max_delete_ratio \
             {}; nothing was changed. If this is intended, run once with --allow-mass-delete",
            d.name,
            state.len(),
            d.max_delete_ratio
        );
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
            Action::Forget { .. } => None,
        })
        .collect::<std::collections::BTreeSet<_>>();
    for m in mounts_needed {
        let info = dest
            .mount_info(&m)
            .await
            .with_context(|| format!("destination `{}` mount `{m}`", d.name))?;
        dest_kinds.insert(m, info.kind);
    }
    let dest_kinds = Arc::new(dest_kinds);

    let mut report = CycleReport {
        unchanged: plan.unchanged,
        ..Default::default()
    };

    let mut not_written = std::collections::HashSet::new();
    // Writes, `workers` at a time.
    let limit = Arc::new(Semaphore::new(d.workers.max(1)));
    let mut tasks = JoinSet::new();
    for action in plan.writes.iter().cloned() {
        let (origin, dest, limit, kinds) = (origin.clone(), dest.clone(), limit.clone(), dest_kinds.clone());
        let origin_entry = scan.snapshot.get(action.key()).cloned();
        let is_new = !state.contains_key(action.key());
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await;
            let result = run_write(&origin, &dest, &kinds, &action, origin_entry).await;
            (action, is_new, result)
        });
    }
    while let Some(joined) = tasks.join_next().await {
        let (action, is_new, result) = joined.context("copy task panicked")?;
        match result {
            Ok(Done::Wrote(entry)) => {
                if is_new {
                    report.added += 1;
                } else {
                    report.updated += 1;
                }
                state.insert(action.key().clone(), entry);
            }
            Ok(Done::Equal(entry)) => {
                report.checked_equal += 1;
                state.insert(action.key().clone(), entry);
            }
            Ok(Done::Skipped) => {
                report.skipped += 1;
                not_written.insert(action.key().clone());
            }
            Err(e) => {
                report.failed += 1;
                not_written.insert(action.key().clone());
                error!(destination = %d.name, secret = %action.key(), op = op_name(&action), error = %e, "secret failed; it is retried next cycle");
            }
        }
    }

    // Removals, after every write (a moved secret is never missing at both places).
    for action in &plan.removals {
        let key = action.key();
        if not_written.contains(key) {
            continue; // its new copy was not written: keep the old one until it is
        }
        let result = match action {
            Action::Delete { target, .. } => match dest_kinds.get(&target.mount) {
                Some(KvVersion::V2) => dest.delete_metadata(&target.mount, &target.path).await,
                Some(KvVersion::V1) => dest.delete_v1(&target.mount, &target.path).await,
                None => Err(VaultError::Config(format!("unknown destination mount `{}`", target.mount))),
            },
            Action::SoftDelete { target, .. } => match dest_kinds.get(&target.mount) {
                Some(KvVersion::V2) => dest.soft_delete_latest(&target.mount, &target.path).await,
                _ => Ok(()), // KV v1 has no soft delete: leave it
            },
            Action::Forget { .. } => Ok(()),
            _ => continue,
        };
        match result {
            Ok(()) => {
                if !matches!(action, Action::Forget { .. }) {
                    report.deleted += 1;
                }
                // Keep the entry of a secret that moved: it now points at its new place.
                let removed_target = match action {
                    Action::Delete { target, .. } | Action::SoftDelete { target, .. } => Some(target),
                    _ => None,
                };
                let moved = removed_target.is_some_and(|t| state.get(key).is_some_and(|e| e.target != *t));
                if !moved {
                    state.remove(key);
                }
            }
            Err(e) => {
                report.failed += 1;
                error!(destination = %d.name, secret = %key, op = op_name(action), error = %e, "secret failed; it is retried next cycle");
            }
        }
    }

    let new_doc = DestinationDoc::from_state(origin_mounts, &state);
    if old_doc.as_ref() != Some(&new_doc) {
        store.write(lock, &side_name(&d.name), &new_doc)?;
        report.committed = true;
    }
    Ok(report)
}

fn op_name(action: &Action) -> &'static str {
    match action {
        Action::CopyV2 { .. } => "copy",
        Action::SyncV1 { .. } => "sync-kv1",
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
    origin_entry: Option<OriginEntry>,
) -> Result<Done> {
    let entry = origin_entry.ok_or_else(|| anyhow!("secret not in the origin scan"))?;
    let (key, target, data) = match action {
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
    let done = DestEntry {
        kind: entry.kind,
        origin_version: entry.current_version,
        origin_created_time: entry.created_time,
        target: target.clone(),
    };
    info!(secret = %key, target = %target, wrote, "synced");
    Ok(if wrote { Done::Wrote(done) } else { Done::Equal(done) })
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

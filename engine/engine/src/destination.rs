//! One destination: load its info, plan a cycle (decisions in `vsync_core::cycle`), execute
//! the plan against the Vaults with bounded workers, and commit the settled info.
//!
//! A cycle that fails commits nothing; a cycle with per-secret failures commits the entries of
//! the secrets that succeeded and keeps the old entries of those that failed. Writes run
//! before removals, so a moved secret is never missing at both places.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{error, info, warn};
use vsync_core::cycle::{self, CycleCounts, CycleFlags, CyclePlan, RemovalOutcome, WriteOutcome};
use vsync_core::{
    Action, DestEntry, DestInfo, DestPath, DestinationMapper, DestinationSpec, KvVersion, OriginInfo, PathMapper, Refusal,
    SecretPath, VersionsMode,
};
use vsync_state::info as state_info;
use vsync_state::{StateStore, StoreLock};
use vsync_vault::{DataRead, SecretData, VaultClient, VaultError};

use crate::fault::{FatalCause, Fault};

/// Name of a destination's side in the state store.
pub fn side_name(destination: &str) -> String {
    format!("destination-{destination}")
}

/// A destination ready to run cycles: its spec and the parts it owns.
pub struct Destination {
    /// What the configuration says.
    pub spec: DestinationSpec,
    /// The destination Vault.
    pub vault: VaultClient,
    /// Where its sync info lives.
    pub store: StateStore,
    /// Its side's writer lock.
    pub lock: StoreLock,
    /// Filters and transformers (the plugin stack), when configured.
    pub mapper: Option<Box<dyn PathMapper>>,
}

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Destination")
            .field("name", &self.spec.name)
            .field("vault", &self.vault.address())
            .field("store", &self.store.describe())
            .field("plugins", &self.mapper.is_some())
            .finish()
    }
}

/// Counts and request figures of one destination cycle.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CycleReport {
    /// What the cycle did, per secret.
    pub counts: CycleCounts,
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
        let c = &self.counts;
        write!(
            f,
            "{} added, {} updated, {} deleted, {} unchanged, {} checked equal, {} skipped, {} failed{}; \
             vault requests: {} origin data reads, {} destination data reads, {} destination writes",
            c.added,
            c.updated,
            c.deleted,
            c.unchanged,
            c.checked_equal,
            c.skipped,
            c.failed,
            if self.committed { "" } else { " (state unchanged)" },
            self.origin_data_reads,
            self.dest_data_reads,
            self.dest_writes,
        )
    }
}

/// What `vsync plan` shows: the plan, and what would stop a real cycle.
#[derive(Debug)]
pub struct Preview {
    /// The plan a cycle would execute.
    pub cycle: CyclePlan,
    /// Refusals a cycle without `--allow-*` flags would stop on.
    pub refusals: Vec<Refusal>,
}

/// Loads a destination's info, re-bucketed to the origin's layout.
pub async fn load_info(store: &StateStore, name: &str, bucket_count: u32) -> Result<DestInfo, Fault> {
    load_versioned(store, name, bucket_count).await.map(|(info, _)| info)
}

/// [`load_info`], with the root version it was loaded from (the cycle's commit base).
async fn load_versioned(store: &StateStore, name: &str, bucket_count: u32) -> Result<(DestInfo, Option<u64>), Fault> {
    let loaded = state_info::load::<DestEntry>(store, &side_name(name))
        .await
        .map_err(|e| Fault::state(format!("loading the info of destination `{name}`"), e))?;
    let version = loaded.as_ref().map(|l| l.version);
    let info = match loaded {
        None => DestInfo::empty(bucket_count),
        Some(loaded) => {
            let same_layout = loaded.buckets.count() == bucket_count;
            let entries = loaded.buckets.rebucket(bucket_count);
            DestInfo {
                digests: if same_layout { loaded.root.digests() } else { entries.digests() },
                entries,
                origin_mounts: loaded.root.origin_mounts,
                config_hash: loaded.root.config_hash,
            }
        }
    };
    Ok((info, version))
}

/// Plans a cycle of `spec` (decisions in `vsync_core::cycle`), logging paths whose mapping
/// failed.
fn plan<'a>(
    spec: &'a DestinationSpec,
    paths: Option<&'a mut dyn PathMapper>,
    origin: &OriginInfo,
    dest: &DestInfo,
    flags: CycleFlags,
) -> Result<CyclePlan, Fault> {
    if spec.versions == VersionsMode::All {
        return Err(Fault::fatal(
            FatalCause::Config,
            format!(
                "destination `{}`: versions = \"all\" (exact replica of every version) is not built yet; \
                 set versions = \"latest\"",
                spec.name
            ),
        ));
    }
    if spec.uses_plugins && paths.is_none() {
        return Err(Fault::fatal(
            FatalCause::Config,
            format!("destination `{}`: transforms or filters configured but no plugin stack given", spec.name),
        ));
    }
    let mut mapper = DestinationMapper::new(&spec.name, &spec.labels, &spec.mounts, paths);
    let planned = cycle::plan_cycle(origin, dest, spec.rules(), flags, &mut mapper).map_err(Fault::refusal)?;
    for (key, e) in &planned.mapping_failures {
        error!(destination = %spec.name, secret = %key, error = %e, "mapping the path failed; the secret is left as it is this cycle");
    }
    Ok(planned)
}

/// Plans a cycle without touching either Vault or writing any state (`vsync plan`): the plan,
/// and what would stop a cycle run without `--allow-*` flags.
pub async fn preview<'a>(
    spec: &'a DestinationSpec,
    store: &StateStore,
    paths: Option<&'a mut dyn PathMapper>,
    origin: &OriginInfo,
) -> Result<Preview, Fault> {
    let dest = load_info(store, &spec.name, origin.entries.count()).await?;
    let everything = CycleFlags { allow_mass_delete: true, allow_origin_change: true };
    let planned = plan(spec, paths, origin, &dest, everything)?;
    let mut refusals = Vec::new();
    if let Err(r) = cycle::bind_origin_mounts(&spec.name, &dest.origin_mounts, &origin.mounts, false) {
        refusals.push(r);
    }
    if let Err(r) = cycle::mass_delete_guard(spec.rules(), &planned.plan, &dest) {
        refusals.push(r);
    }
    Ok(Preview { cycle: planned, refusals })
}

impl Destination {
    /// Runs one cycle against `origin` (read through `origin_vault`) and commits.
    pub async fn cycle(&mut self, origin_vault: &VaultClient, origin: &OriginInfo, flags: CycleFlags) -> Result<CycleReport, Fault> {
        let name = self.spec.name.clone();
        let origin_before = origin_vault.request_counts();
        let dest_before = self.vault.request_counts();
        let (mut dest, base) = load_versioned(&self.store, &name, origin.entries.count()).await?;
        let paths = self.mapper.as_deref_mut().map(|m| m as &mut dyn PathMapper);
        let planned = plan(&self.spec, paths, origin, &dest, flags)?;
        let plan = &planned.plan;

        // Destination mount kinds decide the write API (a KV v1 origin may feed a KV v2 mount).
        // A missing or non-KV mount is fatal, for writes and removals alike.
        let mounts_needed: BTreeSet<&str> = plan
            .writes
            .iter()
            .chain(plan.removals.iter())
            .filter_map(|a| match a {
                Action::CopyV2 { target, .. }
                | Action::SyncV1 { target, .. }
                | Action::Delete { target, .. }
                | Action::SoftDelete { target, .. } => Some(target.mount.as_str()),
                Action::Record { .. } | Action::Forget { .. } => None,
            })
            .collect();
        let mut kinds: HashMap<String, KvVersion> = HashMap::new();
        for m in mounts_needed {
            let info = self
                .vault
                .mount_info(m)
                .await
                .map_err(|e| Fault::vault(format!("destination `{name}` mount `{m}`"), e))?;
            kinds.insert(m.to_owned(), info.kind);
        }
        let kinds = Arc::new(kinds);

        // Writes, `workers` at a time.
        let limit = Arc::new(Semaphore::new(self.spec.workers.max(1)));
        let mut tasks = JoinSet::new();
        for action in plan.writes.iter().cloned() {
            let (oc, dc, limit, kinds) = (origin_vault.clone(), self.vault.clone(), limit.clone(), kinds.clone());
            tasks.spawn(async move {
                let _permit = limit.acquire_owned().await;
                let result = write(&oc, &dc, &kinds, &action).await;
                (action, result)
            });
        }
        let mut writes: HashMap<SecretPath, WriteOutcome> = HashMap::new();
        while let Some(joined) = tasks.join_next().await {
            let (action, result) = joined.map_err(|e| Fault::transient(format!("destination `{name}`: copy task failed: {e}")))?;
            let outcome = match result {
                Ok(o) => o,
                Err(fault) => self.per_secret(fault, &action, || tasks.abort_all())?,
            };
            writes.insert(action.key().clone(), outcome);
        }

        // Removals, after every write.
        let mut removals: HashMap<SecretPath, RemovalOutcome> = HashMap::new();
        for action in cycle::removals_to_run(plan, &writes) {
            let outcome = match remove(&self.vault, &kinds, action).await {
                Ok(()) => RemovalOutcome::Removed,
                Err(fault) => {
                    self.per_secret(fault, action, || {})?;
                    RemovalOutcome::Failed
                }
            };
            removals.insert(action.key().clone(), outcome);
        }

        let counts = cycle::settle(&planned, origin, &mut dest.entries, &writes, &removals);
        let digests = dest.entries.digests();
        // Against the root this cycle loaded: a commit in between (another writer) is a conflict.
        let committed = state_info::commit(
            &self.store,
            &self.lock,
            base,
            planned.origin_mounts.clone(),
            Some(self.spec.config_hash.clone()),
            &dest.entries,
            &digests,
        )
        .await
        .map_err(|e| Fault::state(format!("destination `{name}`: committing its info"), e))?;
        let (o, d) = (origin_vault.request_counts(), self.vault.request_counts());
        Ok(CycleReport {
            counts,
            committed,
            origin_data_reads: o.data_reads - origin_before.data_reads,
            dest_data_reads: d.data_reads - dest_before.data_reads,
            dest_writes: (d.data_writes + d.metadata_writes) - (dest_before.data_writes + dest_before.metadata_writes),
        })
    }

    /// One rule for every action: a fault that stops the cycle (fatal, or a server that is
    /// down) is returned with its context; anything else fails this secret only.
    fn per_secret(&self, fault: Fault, action: &Action, abort: impl FnOnce()) -> Result<WriteOutcome, Fault> {
        let op = op_name(action);
        if fault.stops_cycle() {
            abort();
            return Err(fault.context(format!("destination `{}`: {op} {}", self.spec.name, action.key())));
        }
        error!(destination = %self.spec.name, secret = %action.key(), op, error = %fault, "secret failed; it is retried next cycle");
        Ok(WriteOutcome::Failed)
    }
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

fn kind_of(kinds: &HashMap<String, KvVersion>, target: &DestPath) -> Result<KvVersion, Fault> {
    kinds
        .get(&target.mount)
        .copied()
        .ok_or_else(|| Fault::fatal(FatalCause::Mount, format!("unknown destination mount `{}`", target.mount)))
}

async fn remove(dest: &VaultClient, kinds: &HashMap<String, KvVersion>, action: &Action) -> Result<(), Fault> {
    let result = match action {
        Action::Delete { target, .. } => match kind_of(kinds, target)? {
            KvVersion::V2 => dest.delete_metadata(&target.mount, &target.path).await,
            KvVersion::V1 => dest.delete_v1(&target.mount, &target.path).await,
        },
        Action::SoftDelete { target, .. } => match kind_of(kinds, target)? {
            KvVersion::V2 => dest.soft_delete_latest(&target.mount, &target.path).await,
            KvVersion::V1 => Ok(()), // KV v1 has no soft delete: leave it
        },
        _ => Ok(()),
    };
    result.map_err(|e| Fault::vault(format!("removing {}", action.key()), e))
}

async fn write(origin: &VaultClient, dest: &VaultClient, kinds: &HashMap<String, KvVersion>, action: &Action) -> Result<WriteOutcome, Fault> {
    let read_fault = |e: VaultError| Fault::vault(format!("reading origin {}", action.key()), e);
    let (key, target, data) = match action {
        Action::Record { .. } => return Ok(WriteOutcome::Recorded),
        Action::CopyV2 { key, version, target, .. } => match origin.read_version(&key.mount, &key.path, *version).await.map_err(read_fault)? {
            DataRead::Live(data, _) => (key, target, data),
            // Deleted, destroyed or gone since the scan: the next scan sees it.
            other => {
                warn!(secret = %key, version, state = ?other, "origin version changed during the cycle; skipped");
                return Ok(WriteOutcome::Skipped);
            }
        },
        Action::SyncV1 { key, target } => match origin.read_v1(&key.mount, &key.path).await.map_err(read_fault)? {
            Some(data) => (key, target, data),
            None => return Ok(WriteOutcome::Skipped),
        },
        _ => return Err(Fault::transient("not a write action")),
    };
    let kind = kind_of(kinds, target)?;
    let wrote = write_if_different(dest, kind, target, &data)
        .await
        .map_err(|e| Fault::vault(format!("writing {target}"), e))?;
    info!(secret = %key, target = %target, wrote, "synced");
    Ok(if wrote { WriteOutcome::Written } else { WriteOutcome::Equal })
}

/// Writes `data` at `target` unless the destination already holds an equal value.
/// KV v2 writes carry `options.cas` = the destination's current version.
async fn write_if_different(dest: &VaultClient, kind: KvVersion, target: &DestPath, data: &SecretData) -> Result<bool, VaultError> {
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
                    let current = dest.read_metadata(mount, path).await?.map_or(0, |m| m.current_version);
                    dest.write_version(mount, path, data, current).await?;
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(true)
}

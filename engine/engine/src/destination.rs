//! One destination: load its info, plan a cycle (decisions in `vsync_core::cycle`), execute
//! the plan against the Vaults with bounded workers, and commit the settled info.
//!
//! A cycle that fails commits nothing; a cycle with per-secret failures commits the entries of
//! the secrets that succeeded and keeps the old entries of those that failed. Writes run
//! before removals, so a moved secret is never missing at both places.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::task::JoinSet;
use tracing::Instrument as _;
use tracing::{error, info, warn};
use vsync_core::cycle::{self, CycleCounts, CycleFlags, CyclePlan, Records, RemovalOutcome, TaskCount, WriteOutcome};
use vsync_core::digest::value_hmac;
use vsync_core::orphans;
use vsync_core::{
    Action, DestEntry, DestInfo, DestPath, DestinationMapper, DestinationSpec, ExactState, KvVersion, OriginInfo, PathMapper,
    Refusal, SecretPath, VersionsMode,
};
use vsync_state::info as state_info;
use vsync_state::{StateStore, StoreLock};
use vsync_vault::{DataRead, SecretData, VaultClient, VaultError};

use crate::exact::{self, Inspected, Presence};
use crate::origin::canonical_json;
use crate::progress::Progress;
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
    /// Filters and transformers (the plugin stack), when configured ([`share`] one).
    pub mapper: Option<SharedMapper>,
    /// The origin's KV v1 digest key (`digest_key_file`), when this process can read it: a
    /// KV v1 value read for a copy is checked against the scan's keyed digest.
    pub digest_key: Option<Arc<Vec<u8>>>,
    /// Where the cycle reports progress (inspecting, copying, removing), if anywhere.
    pub progress: Option<Arc<dyn Progress>>,
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

/// A path mapper that a planning thread can hold while the cycle's future waits for it.
pub type SharedMapper = Arc<std::sync::Mutex<Box<dyn PathMapper>>>;

/// Shares a path mapper for [`Destination::mapper`].
pub fn share(mapper: Box<dyn PathMapper>) -> SharedMapper {
    Arc::new(std::sync::Mutex::new(mapper))
}

/// Guards plugin calls while planning runs on a blocking thread: once the cycle is abandoned
/// (timeout, signal: its future is dropped, which sets `cancel`) or its deadline passes, every
/// further path fails at once instead of calling a plugin, so planning ends within one call.
struct PlanningGate<'m> {
    inner: &'m mut dyn PathMapper,
    cancel: &'m AtomicBool,
    deadline: std::time::Instant,
    stopped: bool,
}

impl PathMapper for PlanningGate<'_> {
    fn map_path(&mut self, path: &str, context: &vsync_core::PathContext) -> Result<Option<String>, vsync_core::MapError> {
        if self.stopped || self.cancel.load(Ordering::Relaxed) || std::time::Instant::now() >= self.deadline {
            self.stopped = true;
            return Err(vsync_core::MapError("planning was cancelled".into()));
        }
        self.inner.map_path(path, context)
    }
}

/// Sets its flag when dropped: the cycle's future went away.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Counts and request figures of one destination cycle.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
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
    /// Tasks by kind and outcome.
    pub tasks: Vec<TaskCount>,
    /// Secrets the committed info records.
    pub secrets: usize,
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
    /// Per key of `versions = "all"`: what replicating it takes.
    pub exact: HashMap<SecretPath, Inspected>,
    /// Refusals a cycle without `--allow-*` flags would stop on.
    pub refusals: Vec<Refusal>,
}

impl Preview {
    /// The plan as `vsync plan` prints it: one line per action, then what would stop a cycle.
    pub fn human(&self, name: &str) -> String {
        use std::fmt::Write as _;
        let plan = &self.cycle.plan;
        let mut out = String::new();
        for key in &plan.failed {
            let _ = writeln!(out, "FAIL   {key}: its path could not be mapped (see the log)");
        }
        for action in plan.writes.iter().chain(plan.removals.iter()) {
            let _ = match action {
                Action::CopyV2 { key, version, target, reason } => writeln!(out, "copy   {key} v{version} -> {target} ({reason:?})"),
                Action::ExactV2 { key, target, reason } => {
                    let what = self.exact.get(key).map_or_else(|| "changed at the origin since the scan, next cycle".to_owned(), Inspected::summary);
                    writeln!(out, "exact  {key} -> {target} ({reason:?}): {what}")
                }
                Action::SyncV1 { key, target } => writeln!(out, "check  {key} -> {target} (kv1)"),
                Action::Record { key, .. } => writeln!(out, "record {key} (metadata only or no live version)"),
                Action::Delete { target, .. } => writeln!(out, "delete {target}"),
                Action::SoftDelete { target, .. } => writeln!(out, "soft-delete {target}"),
                Action::Forget { key } if orphans::is_orphan(key) => Ok(()),
                Action::Forget { key } => writeln!(out, "forget {key}"),
            };
        }
        for refusal in &self.refusals {
            let _ = writeln!(out, "STOP   a cycle would stop here: {refusal}");
        }
        let _ = writeln!(
            out,
            "plan for `{name}`: {} write(s), {} removal(s), {} unchanged",
            plan.writes.len(),
            plan.removals.len(),
            plan.unchanged
        );
        out
    }
}

impl Preview {
    /// The plan as `vsync plan --format json` prints it: a machine report for reviewing a
    /// change before it applies. Paths and counts only, never a value.
    pub fn json(&self, name: &str) -> serde_json::Value {
        use serde_json::json;
        let plan = &self.cycle.plan;
        let action = |a: &Action| match a {
            Action::CopyV2 { key, version, target, reason } => {
                json!({"op": "copy", "key": key.to_string(), "version": version, "target": target.to_string(), "reason": format!("{reason:?}")})
            }
            Action::ExactV2 { key, target, reason } => json!({
                "op": "replicate",
                "key": key.to_string(),
                "target": target.to_string(),
                "reason": format!("{reason:?}"),
                "detail": self.exact.get(key).map_or_else(|| "changed at the origin since the scan, next cycle".to_owned(), Inspected::summary),
            }),
            Action::SyncV1 { key, target } => json!({"op": "sync-kv1", "key": key.to_string(), "target": target.to_string()}),
            Action::Record { key, .. } => json!({"op": "record", "key": key.to_string()}),
            // An orphan (a target no origin key is recorded at) has no origin key to show.
            Action::Delete { key, target, .. } => json!({"op": "delete", "key": origin_key(key), "target": target.to_string()}),
            Action::SoftDelete { key, target } => json!({"op": "soft-delete", "key": origin_key(key), "target": target.to_string()}),
            Action::Forget { key } => json!({"op": "forget", "key": origin_key(key)}),
        };
        json!({
            "destination": name,
            "writes": plan.writes.iter().map(action).collect::<Vec<_>>(),
            "removals": plan.removals.iter().map(action).collect::<Vec<_>>(),
            "mapping_failures": plan.failed.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "refusals": self.refusals.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "summary": {"writes": plan.writes.len(), "removals": plan.removals.len(), "unchanged": plan.unchanged},
        })
    }
}

/// An origin key as `vsync plan` shows it: `null` for an orphan's.
fn origin_key(key: &SecretPath) -> serde_json::Value {
    if orphans::is_orphan(key) { serde_json::Value::Null } else { serde_json::Value::String(key.to_string()) }
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

/// Plans a cycle without writing anything (`vsync plan`): the plan, what `versions = "all"`
/// would do per key (both Vaults' metadata are read), and what would stop a cycle run without
/// `--allow-*` flags.
pub async fn preview<'a>(
    spec: &'a DestinationSpec,
    store: &StateStore,
    paths: Option<&'a mut dyn PathMapper>,
    origin_vault: &VaultClient,
    dest_vault: &VaultClient,
    origin: &OriginInfo,
    progress: Option<&dyn Progress>,
) -> Result<Preview, Fault> {
    let mut dest = load_info(store, &spec.name, origin.entries.count()).await?;
    if let Some(request) = crate::verify::pending_repair(store, &spec.name).await? {
        apply_repair(&mut dest, &request);
    }
    let everything = CycleFlags { allow_mass_delete: true, allow_origin_change: true };
    let planned = plan(spec, paths, origin, &dest, everything)?;
    let (exact, failures) = inspect_all(origin_vault, dest_vault, &planned.plan, origin, &dest, spec.workers, progress).await;
    if let Some((_, fault)) = failures.into_iter().next() {
        return Err(fault);
    }
    let mut refusals = Vec::new();
    if let Err(r) = cycle::bind_origin_mounts(&spec.name, &dest.origin_mounts, &origin.mounts, false) {
        refusals.push(r);
    }
    let rebuilds = rebuild_targets(&planned.plan, &exact);
    if let Err(r) = cycle::mass_delete_guard(spec.rules(), &planned.plan, &dest, &rebuilds) {
        refusals.push(r);
    }
    Ok(Preview { cycle: planned, exact, refusals })
}

impl Destination {
    /// Runs one cycle against `origin` (read through `origin_vault`) and commits.
    ///
    /// Planning (with its plugin calls) runs on the blocking pool and is interruptible: the
    /// cycle's deadline (`timeout`) and dropping this future stop it between paths.
    pub async fn cycle(&mut self, origin_vault: &VaultClient, origin: &Arc<OriginInfo>, flags: CycleFlags) -> Result<CycleReport, Fault> {
        let name = self.spec.name.clone();
        let origin_before = origin_vault.request_counts();
        let dest_before = self.vault.request_counts();
        let (mut dest, mut base) = load_versioned(&self.store, &name, origin.entries.count()).await?;
        let repair = crate::verify::pending_repair(&self.store, &name).await?;
        if let Some(request) = &repair {
            apply_repair(&mut dest, request);
            info!(destination = %name, keys = request.keys.len(), remove = request.remove.len(), "repairing what `vsync verify --repair` named");
        }
        let cancel = Arc::new(AtomicBool::new(false));
        let _cancel_on_drop = CancelOnDrop(cancel.clone());
        let deadline = std::time::Instant::now() + self.spec.timeout;
        let (spec, mapper, shared_origin) = (self.spec.clone(), self.mapper.clone(), origin.clone());
        let (returned, result) = tokio::task::spawn_blocking(move || {
            // A previous cycle's abandoned planning holds the lock until its next path.
            let mut held = mapper.as_ref().map(|m| m.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
            let mut gate = held.as_deref_mut().map(|m| PlanningGate { inner: &mut **m, cancel: &cancel, deadline, stopped: false });
            let result = plan(&spec, gate.as_mut().map(|g| g as &mut dyn PathMapper), &shared_origin, &dest, flags);
            let stopped = gate.is_some_and(|g| g.stopped);
            (dest, if stopped { Err(None) } else { result.map_err(Some) })
        })
        .await
        .map_err(|e| Fault::transient(format!("destination `{name}`: planning task failed: {e}")))?;
        let mut dest = returned;
        let planned = match result {
            Ok(p) => p,
            Err(Some(fault)) => return Err(fault),
            Err(None) => {
                return Err(Fault::transient(format!(
                    "destination `{name}`: planning ran past the cycle timeout ({:?}) and was cancelled; nothing committed",
                    self.spec.timeout
                )));
            }
        };
        let plan = &planned.plan;

        let kinds = Arc::new(self.mount_kinds(plan).await?);

        // `versions = "all"`: read both metadata documents of every key to replicate, before
        // any write, so rebuilds count for the mass-delete guard.
        let mut writes: HashMap<SecretPath, WriteOutcome> = HashMap::new();
        let (mut inspected, failures) = inspect_all(origin_vault, &self.vault, plan, origin, &dest, self.spec.workers, self.progress.as_deref()).await;
        for (action, fault) in failures {
            let outcome = self.per_secret(fault, &action, || {})?;
            writes.insert(action.key().clone(), outcome);
        }
        let rebuilds = rebuild_targets(plan, &inspected);
        if !rebuilds.is_empty() && !flags.allow_mass_delete {
            cycle::mass_delete_guard(self.spec.rules(), plan, &dest, &rebuilds).map_err(Fault::refusal)?;
        }

        // Targets this cycle writes that the info does not record for their key are committed
        // as orphans first: should the cycle fail after writing one, and the origin delete its
        // key before the next cycle, that cycle still removes it (vsync_core::orphans).
        let journal = orphans::unrecorded_targets(plan, &dest.entries);
        if !journal.is_empty() {
            base = self.remember(&mut dest, &journal, base).await?;
        }

        // Writes, `workers` at a time. A task is spawned only when one of the `workers` slots
        // is free (never one task per pending write: a 100,000-key first sync would hold
        // 100,000 futures), and finished ones are settled as slots are waited for.
        let workers = self.spec.workers.max(1);
        let mut tasks: JoinSet<(Action, Result<Written, Fault>)> = JoinSet::new();
        let mut records = Records::default();
        let pending = plan.writes.iter().filter(|a| !writes.contains_key(a.key())).count();
        let progress = self.progress.clone().filter(|_| pending > 0);
        if let Some(p) = &progress {
            p.begin("copying", pending as u64);
        }
        for action in plan.writes.iter().cloned() {
            if writes.contains_key(action.key()) {
                continue; // failed while inspecting
            }
            while tasks.len() >= workers {
                if let Some(joined) = tasks.join_next().await {
                    self.settle_write(joined, &mut tasks, &mut records, &mut writes, progress.as_deref())?;
                }
            }
            let found = inspected.remove(action.key());
            let scanned = origin.entries.get(action.key()).and_then(|e| e.digest);
            // The destination version vsync left at this very target, if it recorded one.
            let known_version = match &action {
                Action::CopyV2 { target, .. } => dest.entries.get(action.key()).filter(|e| e.target == *target).and_then(|e| e.dest_version),
                _ => None,
            };
            let (oc, dc, kinds, hmac) = (origin_vault.clone(), self.vault.clone(), kinds.clone(), self.digest_key.clone());
            tasks.spawn(async move {
                let result = match (&action, found) {
                    (Action::ExactV2 { key, target, .. }, Some(found)) => exact::apply(&oc, &dc, key, target, found)
                        .await
                        .map(|(o, state)| Written { outcome: o, exact: Some(state), unverified: false, dest_version: None }),
                    _ => write(&oc, &dc, &kinds, &action, scanned, hmac.as_deref().map(Vec::as_slice), known_version).await,
                };
                (action, result)
            }.in_current_span());
        }
        while let Some(joined) = tasks.join_next().await {
            self.settle_write(joined, &mut tasks, &mut records, &mut writes, progress.as_deref())?;
        }

        if let Some(p) = &progress {
            p.finish();
        }

        // Removals, after every write.
        let mut removals: HashMap<SecretPath, RemovalOutcome> = HashMap::new();
        let to_remove = cycle::removals_to_run(plan, &writes);
        let progress = self.progress.clone().filter(|_| !to_remove.is_empty());
        if let Some(p) = &progress {
            p.begin("removing", to_remove.len() as u64);
        }
        for action in to_remove {
            if let Some(p) = &progress {
                p.advance(1);
            }
            let outcome = match remove(&self.vault, &kinds, action).await {
                Ok(()) => RemovalOutcome::Removed,
                Err(fault) => {
                    self.per_secret(fault, action, || {})?;
                    RemovalOutcome::Failed
                }
            };
            removals.insert(action.key().clone(), outcome);
        }
        if let Some(p) = &progress {
            p.finish();
        }

        let tasks = cycle::task_counts(plan, &writes, &removals);
        let counts = cycle::settle(&planned, origin, &mut dest.entries, &writes, &records, &removals);
        orphans::resolve(&mut dest.entries, &journal, plan);
        if counts.added + counts.updated + counts.deleted > 0 {
            // Settling inserted entries one by one: pack the maps again (a first sync's info is
            // then a third smaller for the rest of the process's life).
            dest.entries.compact();
        }
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
        // Only the request this cycle consumed: one written while it ran is left for the next
        // (handling a key twice rebuilds nothing that is exact).
        if repair.is_some() && crate::verify::pending_repair(&self.store, &name).await? == repair {
            self.store
                .delete_doc(&side_name(&name), crate::verify::REPAIR_DOC)
                .await
                .map_err(|e| Fault::state(format!("destination `{name}`: removing the handled repair request"), e))?;
        }
        let (o, d) = (origin_vault.request_counts(), self.vault.request_counts());
        Ok(CycleReport {
            counts,
            committed,
            origin_data_reads: o.data_reads - origin_before.data_reads,
            dest_data_reads: d.data_reads - dest_before.data_reads,
            dest_writes: (d.data_writes + d.metadata_writes) - (dest_before.data_writes + dest_before.metadata_writes),
            tasks,
            secrets: dest.entries.len(),
        })
    }

    /// The KV version of every destination mount the plan writes or removes at: it decides the
    /// write API (a KV v1 origin may feed a KV v2 mount). A missing or non-KV mount is fatal, for
    /// writes and removals alike; `versions = "all"` also checks each KV v2 mount's
    /// preconditions and refuses mixed KV versions.
    async fn mount_kinds(&self, plan: &vsync_core::Plan) -> Result<HashMap<String, KvVersion>, Fault> {
        let name = &self.spec.name;
        let mounts_needed: BTreeSet<&str> = plan
            .writes
            .iter()
            .chain(plan.removals.iter())
            .filter_map(|a| match a {
                Action::CopyV2 { target, .. }
                | Action::ExactV2 { target, .. }
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
            if self.spec.versions == VersionsMode::All && info.kind == KvVersion::V2 {
                exact::check_mount(&self.vault, m)
                    .await
                    .map_err(|e| Fault::fatal(FatalCause::Config, format!("destination `{name}` mount `{m}`: {e}")))?;
            }
            kinds.insert(m.to_owned(), info.kind);
        }
        if self.spec.versions == VersionsMode::All {
            refuse_mixed_kinds(name, plan, &kinds)?;
        }
        Ok(kinds)
    }

    /// Commits the loaded info (its root settings unchanged) with orphans at `targets`, before
    /// any of them is written; returns the new commit base.
    async fn remember(&self, dest: &mut DestInfo, targets: &[DestPath], base: Option<u64>) -> Result<Option<u64>, Fault> {
        let name = &self.spec.name;
        orphans::remember(&mut dest.entries, targets);
        dest.digests = dest.entries.digests();
        let context = || format!("destination `{name}`: remembering the {} target(s) this cycle writes", targets.len());
        state_info::commit(&self.store, &self.lock, base, dest.origin_mounts.clone(), dest.config_hash.clone(), &dest.entries, &dest.digests)
            .await
            .map_err(|e| Fault::state(context(), e))?;
        let root = self.store.read_root(&side_name(name)).await.map_err(|e| Fault::state(context(), e))?;
        Ok(root.map(|r| r.version))
    }

    /// Records one finished write task; a fault that stops the cycle aborts the others.
    fn settle_write(
        &self,
        joined: Result<(Action, Result<Written, Fault>), tokio::task::JoinError>,
        tasks: &mut JoinSet<(Action, Result<Written, Fault>)>,
        records: &mut Records,
        writes: &mut HashMap<SecretPath, WriteOutcome>,
        progress: Option<&dyn Progress>,
    ) -> Result<(), Fault> {
        if let Some(p) = progress {
            p.advance(1);
        }
        let (action, result) =
            joined.map_err(|e| Fault::transient(format!("destination `{}`: copy task failed: {e}", self.spec.name)))?;
        let outcome = match result {
            Ok(written) => {
                if let Some(state) = written.exact {
                    records.exact.insert(action.key().clone(), state);
                }
                if written.unverified {
                    records.unverified.insert(action.key().clone());
                }
                if let Some(v) = written.dest_version {
                    records.dest_versions.insert(action.key().clone(), v);
                }
                written.outcome
            }
            Err(fault) => self.per_secret(fault, &action, || tasks.abort_all())?,
        };
        writes.insert(action.key().clone(), outcome);
        Ok(())
    }

    /// One rule for every action: a fault that stops the cycle (fatal, or a server that is
    /// down) is returned with its context; anything else fails this secret only.
    fn per_secret(&self, fault: Fault, action: &Action, abort: impl FnOnce()) -> Result<WriteOutcome, Fault> {
        let op = action.op();
        if fault.stops_cycle() {
            abort();
            return Err(fault.context(format!("destination `{}`: {op} {}", self.spec.name, action.key())));
        }
        error!(destination = %self.spec.name, secret = %action.key(), op, error = %fault, "secret failed; it is retried next cycle");
        Ok(WriteOutcome::Failed)
    }
}

/// `vsync verify --repair`: forgets what was recorded for the named keys, so the cycle checks
/// them against the destination and rebuilds the ones that differ, and records the named
/// destination-only targets as orphans, so the plan removes them (under the guard).
fn apply_repair(dest: &mut DestInfo, request: &crate::verify::RepairRequest) {
    for key in &request.keys {
        dest.entries.remove(key);
    }
    orphans::remember(&mut dest.entries, &request.remove);
    dest.digests = dest.entries.digests();
}

/// Targets of existing destination keys the inspected plans rebuild.
fn rebuild_targets(plan: &vsync_core::Plan, inspected: &HashMap<SecretPath, Inspected>) -> Vec<DestPath> {
    plan.writes
        .iter()
        .filter_map(|a| match a {
            Action::ExactV2 { key, target, .. } if inspected.get(key).is_some_and(Inspected::rebuilds_existing) => Some(target.clone()),
            _ => None,
        })
        .collect()
}

/// Inspects every `ExactV2` key of `plan` (`workers` at a time): what it needs, or the fault
/// met while reading.
async fn inspect_all(
    origin_vault: &VaultClient,
    dest_vault: &VaultClient,
    plan: &vsync_core::Plan,
    origin: &OriginInfo,
    dest: &DestInfo,
    workers: usize,
    progress: Option<&dyn Progress>,
) -> (HashMap<SecretPath, Inspected>, Vec<(Action, Fault)>) {
    let workers = workers.max(1);
    let mut tasks = JoinSet::new();
    let (mut found, mut failed) = (HashMap::new(), Vec::new());
    let mut settle = |joined: Result<(Action, Result<Inspected, Fault>), tokio::task::JoinError>| {
        if let Some(p) = progress {
            p.advance(1);
        }
        match joined {
            Ok((action, Ok(i))) => {
                found.insert(action.key().clone(), i);
            }
            Ok((action, Err(fault))) => failed.push((action, fault)),
            Err(e) => tracing::error!(error = %e, "an inspect task failed"),
        }
    };
    let listed = list_fresh_targets(dest_vault, plan, origin, dest).await;
    let pending = plan.writes.iter().filter(|a| matches!(a, Action::ExactV2 { .. })).count();
    if let Some(p) = progress.filter(|_| pending > 0) {
        p.begin("inspecting", pending as u64);
    }
    for action in &plan.writes {
        let Action::ExactV2 { key, target, .. } = action else { continue };
        let Some(scanned) = origin.entries.get(key).cloned() else { continue };
        // At most `workers` inspections in flight (tasks are spawned as slots free up).
        while tasks.len() >= workers {
            if let Some(joined) = tasks.join_next().await {
                settle(joined);
            }
        }
        let known = dest.entries.get(key).cloned();
        let presence = match listed.get(&target.mount) {
            Some(paths) if paths.contains(&target.path) => Presence::Listed,
            Some(_) => Presence::Unlisted,
            None => Presence::Unknown,
        };
        let (oc, dc) = (origin_vault.clone(), dest_vault.clone());
        let (action, key, target) = (action.clone(), key.clone(), target.clone());
        tasks.spawn(async move {
            let result = exact::inspect(&oc, &dc, &key, &target, &scanned, known.as_ref(), presence).await;
            (action, result)
        }.in_current_span());
    }
    while let Some(joined) = tasks.join_next().await {
        settle(joined);
    }
    if let Some(p) = progress.filter(|_| !found.is_empty() || !failed.is_empty()) {
        p.finish();
    }
    (found, failed)
}

/// New single-version keys (the create-only fast path) whose presence at the destination one
/// listing per mount answers more cheaply than a metadata read per key.
const LIST_FRESH_FROM: usize = 64;

/// The paths of each destination mount that many fast-path candidates target (a first sync,
/// a lost state): one listing instead of a metadata read per key. A mount whose listing fails
/// is left out (its keys are read one by one).
async fn list_fresh_targets(
    dest_vault: &VaultClient,
    plan: &vsync_core::Plan,
    origin: &OriginInfo,
    dest: &DestInfo,
) -> HashMap<String, std::collections::HashSet<String>> {
    let mut candidates: HashMap<&str, usize> = HashMap::new();
    for action in &plan.writes {
        let Action::ExactV2 { key, target, .. } = action else { continue };
        if dest.entries.get(key).is_none() && origin.entries.get(key).is_some_and(vsync_core::exact::is_single_default_version) {
            *candidates.entry(target.mount.as_str()).or_default() += 1;
        }
    }
    let recorded = dest.entries.len();
    let mut listed = HashMap::new();
    for (mount, count) in candidates {
        // Listing costs what the destination holds; reading costs what is new.
        if count < LIST_FRESH_FROM || count < recorded / 16 {
            continue;
        }
        let mut paths = std::collections::HashSet::new();
        let result = match dest_vault.mount_info(mount).await {
            Ok(info) => dest_vault
                .scan_secrets(&info, |s| {
                    paths.insert(s.path);
                    Ok(())
                })
                .await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                listed.insert(mount.to_owned(), paths);
            }
            Err(e) => warn!(mount, error = %e, "listing the destination mount failed; new keys are checked one by one"),
        }
    }
    listed
}

/// `versions = "all"` replicates KV v2 to KV v2 and KV v1 to KV v1; a mapping across engine
/// versions only works in `latest` mode.
fn refuse_mixed_kinds(name: &str, plan: &vsync_core::Plan, kinds: &HashMap<String, KvVersion>) -> Result<(), Fault> {
    for action in &plan.writes {
        let (target, origin_kind) = match action {
            Action::ExactV2 { target, .. } => (target, KvVersion::V2),
            Action::SyncV1 { target, .. } => (target, KvVersion::V1),
            _ => continue,
        };
        if let Some(kind) = kinds.get(&target.mount)
            && *kind != origin_kind
        {
            return Err(Fault::fatal(
                FatalCause::Config,
                format!(
                    "destination `{name}`: origin mount `{}` ({origin_kind}) is mapped to `{}` ({kind}); \
                     versions = \"all\" needs the same KV version on both sides: use versions = \"latest\" \
                     for this destination or map it to a {origin_kind} mount",
                    action.key().mount,
                    target.mount
                ),
            ));
        }
    }
    Ok(())
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

/// What one write task produced.
struct Written {
    outcome: WriteOutcome,
    exact: Option<ExactState>,
    unverified: bool,
    /// KV v2 `latest` copies: the destination version now holding the value.
    dest_version: Option<u64>,
}

impl From<WriteOutcome> for Written {
    fn from(outcome: WriteOutcome) -> Self {
        Self { outcome, exact: None, unverified: false, dest_version: None }
    }
}

/// Copies one secret (`latest` KV v2, or KV v1). `scanned` is the keyed digest the scan
/// recorded for a KV v1 value; with the key, a value that changed since the scan is skipped
/// (recording the scan's digest for another value would hide the change for good).
async fn write(
    origin: &VaultClient,
    dest: &VaultClient,
    kinds: &HashMap<String, KvVersion>,
    action: &Action,
    scanned: Option<vsync_core::Digest>,
    digest_key: Option<&[u8]>,
    known_version: Option<u64>,
) -> Result<Written, Fault> {
    let read_fault = |e: VaultError| Fault::vault(format!("reading origin {}", action.key()), e);
    let mut unverified = false;
    let (key, target, data) = match action {
        Action::Record { .. } => return Ok(WriteOutcome::Recorded.into()),
        Action::CopyV2 { key, version, target, .. } => match origin.read_version(&key.mount, &key.path, *version).await.map_err(read_fault)? {
            DataRead::Live(data, _) => (key, target, data),
            // Deleted, destroyed or gone since the scan: the next scan sees it.
            other => {
                warn!(secret = %key, version, state = ?other, "origin version changed during the cycle; skipped");
                return Ok(WriteOutcome::Skipped.into());
            }
        },
        Action::SyncV1 { key, target } => match origin.read_v1(&key.mount, &key.path).await.map_err(read_fault)? {
            Some(data) => {
                match (scanned, digest_key) {
                    (Some(d), Some(k)) if value_hmac(k, &canonical_json(&data)) != d => {
                        warn!(secret = %key, "origin value changed since the scan; skipped until the next scan");
                        return Ok(WriteOutcome::Skipped.into());
                    }
                    (Some(_), None) => unverified = true,
                    _ => {}
                }
                (key, target, data)
            }
            None => return Ok(WriteOutcome::Skipped.into()),
        },
        _ => return Err(Fault::transient("not a write action")),
    };
    let kind = kind_of(kinds, target)?;
    // Optimistic writes (KV v2): when the destination info says this key was never copied,
    // write with cas = 0 (create only); when it recorded the destination version vsync left,
    // write with cas = that version. Neither reads first. A key that exists after all, or
    // that someone else changed, fails the CAS and falls back to read-and-compare.
    let optimistic = match action {
        Action::CopyV2 { reason: vsync_core::CopyReason::Add, .. } => Some(0),
        Action::CopyV2 { .. } => known_version,
        _ => None,
    };
    if kind == KvVersion::V2
        && let Some(cas) = optimistic
    {
        match dest.write_version(&target.mount, &target.path, &data, cas).await {
            Ok(meta) => {
                info!(secret = %key, target = %target, wrote = true, cas, "synced");
                return Ok(Written { dest_version: Some(meta.version), ..WriteOutcome::Written.into() });
            }
            Err(VaultError::CasMismatch { .. }) => {}
            Err(e) => return Err(Fault::vault(format!("writing {target}"), e)),
        }
    }
    let (wrote, dest_version) = write_if_different(dest, kind, target, &data)
        .await
        .map_err(|e| Fault::vault(format!("writing {target}"), e))?;
    info!(secret = %key, target = %target, wrote, "synced");
    Ok(Written { outcome: if wrote { WriteOutcome::Written } else { WriteOutcome::Equal }, exact: None, unverified, dest_version })
}

/// Writes `data` at `target` unless the destination already holds an equal value.
/// KV v2 writes carry `options.cas` = the destination's current version.
/// Writes `data` unless the destination already holds it: whether it wrote, and for KV v2 the
/// destination version that holds the value now.
async fn write_if_different(dest: &VaultClient, kind: KvVersion, target: &DestPath, data: &SecretData) -> Result<(bool, Option<u64>), VaultError> {
    let (mount, path) = (target.mount.as_str(), target.path.as_str());
    match kind {
        KvVersion::V1 => {
            if dest.read_v1(mount, path).await?.is_some_and(|cur| cur.same_value(data)) {
                return Ok((false, None));
            }
            dest.write_v1(mount, path, data).await?;
            Ok((true, None))
        }
        KvVersion::V2 => {
            let cas = match dest.read_latest(mount, path).await? {
                DataRead::Live(cur, m) if cur.same_value(data) => return Ok((false, Some(m.version))),
                DataRead::Live(_, m) | DataRead::Deleted(m) | DataRead::Destroyed(m) => m.version,
                DataRead::Missing => 0,
            };
            let written = match dest.write_version(mount, path, data, cas).await {
                Ok(meta) => meta,
                // Metadata without a readable latest version (e.g. metadata-only key): ask
                // the metadata for the current version and try once more.
                Err(VaultError::CasMismatch { .. }) => {
                    let current = dest.read_metadata(mount, path).await?.map_or(0, |m| m.current_version);
                    dest.write_version(mount, path, data, current).await?
                }
                Err(e) => return Err(e),
            };
            Ok((true, Some(written.version)))
        }
    }
}

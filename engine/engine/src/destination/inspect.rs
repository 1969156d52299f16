//! The inspect stage: what the plan needs from the destination before any write. The KV
//! version of every destination mount it touches (which decides the write API), and for
//! `versions = "all"` both metadata documents of every key to replicate, so that rebuilds of
//! existing keys count for the mass-delete guard.

use std::collections::{BTreeSet, HashMap, HashSet};

use tokio::task::JoinSet;
use tracing::Instrument as _;
use tracing::warn;
use vsync_core::cycle::{self, CycleFlags};
use vsync_core::{Action, DestInfo, DestPath, KvVersion, OriginInfo, Plan, SecretPath, VersionsMode};
use vsync_vault::VaultClient;

use super::parts::{CycleRun, Destination};
use crate::exact::{self, Inspected, Presence, Vaults};
use crate::fault::{FatalCause, Fault};
use crate::progress::Progress;

/// New single-version keys (the create-only fast path) whose presence at the destination one
/// listing per mount answers more cheaply than a metadata read per key.
const LIST_FRESH_FROM: usize = 64;

/// An inspection's result: what each key needs, and the actions whose reads failed.
pub(super) type Inspection = (HashMap<SecretPath, Inspected>, Vec<(Action, Fault)>);

impl Destination {
    /// The inspect stage: mount kinds, the inspection of every `versions = "all"` key (a
    /// failed read fails that secret), and the mass-delete guard over the rebuilds it found.
    pub(super) async fn inspect_stage(&self, run: &mut CycleRun, origin: &OriginInfo, flags: CycleFlags) -> Result<(), Fault> {
        let plan = &run.planned.plan;
        run.kinds = self.mount_kinds(plan).await?.into();
        let (inspected, failures) = inspect_all(&run.vaults, plan, origin, &run.dest, self.spec.workers, self.progress.as_deref()).await;
        for (action, fault) in failures {
            let outcome = self.per_secret(fault, &action, || {})?;
            run.writes.insert(action.key().clone(), outcome);
        }
        let rebuilds = rebuild_targets(plan, &inspected);
        if !rebuilds.is_empty() && !flags.allow_mass_delete {
            cycle::mass_delete_guard(self.spec.rules(), plan, &run.dest, &rebuilds).map_err(Fault::refusal)?;
        }
        run.inspected = inspected;
        Ok(())
    }

    /// The KV version of every destination mount the plan writes or removes at: it decides the
    /// write API (a KV v1 origin may feed a KV v2 mount). A missing or non-KV mount is fatal, for
    /// writes and removals alike; `versions = "all"` also checks each KV v2 mount's
    /// preconditions and refuses mixed KV versions.
    async fn mount_kinds(&self, plan: &Plan) -> Result<HashMap<String, KvVersion>, Fault> {
        let name = &self.spec.name;
        let mut kinds: HashMap<String, KvVersion> = HashMap::new();
        for m in mounts_touched(plan) {
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
}

/// The destination mounts the plan writes or removes at.
fn mounts_touched(plan: &Plan) -> BTreeSet<&str> {
    plan.writes
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
        .collect()
}

/// `versions = "all"` replicates KV v2 to KV v2 and KV v1 to KV v1; a mapping across engine
/// versions only works in `latest` mode.
fn refuse_mixed_kinds(name: &str, plan: &Plan, kinds: &HashMap<String, KvVersion>) -> Result<(), Fault> {
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

/// Targets of existing destination keys the inspected plans rebuild.
pub(super) fn rebuild_targets(plan: &Plan, inspected: &HashMap<SecretPath, Inspected>) -> Vec<DestPath> {
    plan.writes
        .iter()
        .filter_map(|a| match a {
            Action::ExactV2 { key, target, .. } if inspected.get(key).is_some_and(Inspected::rebuilds_existing) => Some(target.clone()),
            _ => None,
        })
        .collect()
}

/// Collects finished inspections, advancing the progress report.
struct Collector<'p> {
    found: HashMap<SecretPath, Inspected>,
    failed: Vec<(Action, Fault)>,
    progress: Option<&'p dyn Progress>,
}

impl Collector<'_> {
    fn settle(&mut self, joined: Result<(Action, Result<Inspected, Fault>), tokio::task::JoinError>) {
        if let Some(p) = self.progress {
            p.advance(1);
        }
        match joined {
            Ok((action, Ok(i))) => {
                self.found.insert(action.key().clone(), i);
            }
            Ok((action, Err(fault))) => self.failed.push((action, fault)),
            Err(e) => tracing::error!(error = %e, "an inspect task failed"),
        }
    }
}

/// Inspects every `ExactV2` key of `plan` (`workers` at a time): what it needs, or the fault
/// met while reading.
pub(super) async fn inspect_all(
    vaults: &Vaults,
    plan: &Plan,
    origin: &OriginInfo,
    dest: &DestInfo,
    workers: usize,
    progress: Option<&dyn Progress>,
) -> Inspection {
    let workers = workers.max(1);
    let mut tasks = JoinSet::new();
    let mut collected = Collector { found: HashMap::new(), failed: Vec::new(), progress };
    let listed = list_fresh_targets(&vaults.dest, plan, origin, dest).await;
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
                collected.settle(joined);
            }
        }
        let known = dest.entries.get(key).cloned();
        let presence = match listed.get(&target.mount) {
            Some(paths) if paths.contains(&target.path) => Presence::Listed,
            Some(_) => Presence::Unlisted,
            None => Presence::Unknown,
        };
        let (vaults, action, key, target) = (vaults.clone(), action.clone(), key.clone(), target.clone());
        tasks.spawn(async move {
            let result = exact::inspect(&vaults, &key, &target, &scanned, known.as_ref(), presence).await;
            (action, result)
        }.in_current_span());
    }
    while let Some(joined) = tasks.join_next().await {
        collected.settle(joined);
    }
    if let Some(p) = progress.filter(|_| !collected.found.is_empty() || !collected.failed.is_empty()) {
        p.finish();
    }
    (collected.found, collected.failed)
}

/// The paths of each destination mount that many fast-path candidates target (a first sync,
/// a lost state): one listing instead of a metadata read per key. A mount whose listing fails
/// is left out (its keys are read one by one).
async fn list_fresh_targets(dest_vault: &VaultClient, plan: &Plan, origin: &OriginInfo, dest: &DestInfo) -> HashMap<String, HashSet<String>> {
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
        match list_mount(dest_vault, mount).await {
            Ok(paths) => {
                listed.insert(mount.to_owned(), paths);
            }
            Err(e) => warn!(mount, error = %e, "listing the destination mount failed; new keys are checked one by one"),
        }
    }
    listed
}

/// Every path of one destination mount.
async fn list_mount(dest_vault: &VaultClient, mount: &str) -> Result<HashSet<String>, vsync_vault::VaultError> {
    let info = dest_vault.mount_info(mount).await?;
    let mut paths = HashSet::new();
    dest_vault
        .scan_secrets(&info, |s| {
            paths.insert(s.path);
            Ok(())
        })
        .await?;
    Ok(paths)
}

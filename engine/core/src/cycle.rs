//! Every decision of one destination cycle, without I/O: bind to the origin mounts' UUIDs,
//! plan (through [`crate::plan_buckets`]), refuse path collisions and mass deletes, choose
//! which removals may run after the writes, and merge the per-secret outcomes into the next
//! destination info.
//!
//! The engine executes what [`CyclePlan`] says and reports an outcome per action; [`settle`]
//! turns those into the info to commit and the cycle's counts. A refused cycle
//! ([`Refusal`]) writes nothing anywhere.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::digest::Digest;
use crate::info::{Buckets, SyncInfo};
use crate::mapping::DestinationMapper;
use crate::plan::{Action, Plan, PlanOptions, plan_buckets};
use crate::types::{DeletePolicy, DestEntry, DestPath, ExactState, KvVersion, OriginEntry, SecretPath, VersionsMode};

/// What the origin published (or a scan produced).
#[derive(Debug, Clone)]
pub struct OriginInfo {
    /// Every secret of the configured mounts, in buckets.
    pub entries: SyncInfo,
    /// Bucket digests.
    pub digests: Vec<Digest>,
    /// Origin mount -> UUID.
    pub mounts: BTreeMap<String, String>,
}

impl OriginInfo {
    /// Builds the info from scanned entries, computing the digests.
    pub fn new(entries: SyncInfo, mounts: BTreeMap<String, String>) -> Self {
        let digests = entries.digests();
        Self { entries, digests, mounts }
    }
}

/// A destination's own state, in the origin's bucket layout.
#[derive(Debug, Clone)]
pub struct DestInfo {
    /// What was copied (and tombstones of keys with no live version).
    pub entries: Buckets<DestEntry>,
    /// Their digests.
    pub digests: Vec<Digest>,
    /// Origin mount UUIDs this destination is bound to.
    pub origin_mounts: BTreeMap<String, String>,
    /// Hash of the mount map and plugin configuration the entries were made with.
    pub config_hash: Option<String>,
}

impl DestInfo {
    /// The state of a destination that never committed.
    pub fn empty(bucket_count: u32) -> Self {
        let entries = Buckets::new(bucket_count);
        Self {
            digests: entries.digests(),
            entries,
            origin_mounts: BTreeMap::new(),
            config_hash: None,
        }
    }

    /// Secrets the destination holds a copy of (tombstones not counted).
    pub fn copies(&self) -> usize {
        self.entries.iter().filter(|(_, e)| e.has_copy()).count()
    }
}

/// The destination's settings that decide a plan.
#[derive(Debug, Clone, Copy)]
pub struct CycleRules<'a> {
    /// Destination name (for messages).
    pub destination: &'a str,
    /// What to do with secrets that left the origin.
    pub deletes: DeletePolicy,
    /// Which KV v2 versions are replicated.
    pub versions: VersionsMode,
    /// The mass-delete guard's ratio.
    pub max_delete_ratio: f64,
    /// Hash of the mount map and plugin configuration in force.
    pub config_hash: &'a str,
    /// Origin mount -> destination mount.
    pub mounts: &'a BTreeMap<String, String>,
}

/// Operator overrides for one cycle (`--allow-mass-delete`, `--allow-origin-change`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CycleFlags {
    /// Let a cycle past the mass-delete guard.
    pub allow_mass_delete: bool,
    /// Accept re-created origin mounts (new UUID) for this cycle.
    pub allow_origin_change: bool,
}

/// Deletes above this count are checked against the ratio; fewer always pass.
pub const MASS_DELETE_FLOOR: usize = 10;

/// Why a cycle is refused before anything is written. Each one needs a human.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    /// An origin mount has a new UUID: it was re-created, so its keys are a different data set.
    #[error(
        "destination `{destination}`: origin mount `{mount}` was re-created (UUID {old} is now {new}); \
         refusing to sync. Check the origin, then run once with --allow-origin-change"
    )]
    OriginMountRecreated {
        /// Destination name.
        destination: String,
        /// The mount.
        mount: String,
        /// UUID the destination is bound to.
        old: String,
        /// UUID the origin reports now.
        new: String,
    },
    /// Two origin secrets would be written to one destination path.
    #[error(
        "destination `{destination}`: {} destination path(s) claimed by more than one origin secret ({}{}); \
         nothing was written. Fix the transforms",
        clashes.len(),
        clashes.iter().take(10).cloned().collect::<Vec<_>>().join("; "),
        if clashes.len() > 10 { "; ..." } else { "" }
    )]
    PathCollision {
        /// Destination name.
        destination: String,
        /// "`a` and `b` both map to `t`", sorted.
        clashes: Vec<String>,
    },
    /// The plan deletes more than `max_delete_ratio` of the destination's secrets.
    #[error(
        "destination `{destination}`: the plan would delete {deletes} of {copies} secrets{}, over max_delete_ratio \
         {ratio}; nothing was changed. If this is intended, run once with --allow-mass-delete",
        mount.as_ref().map(|m| format!(" of mount `{m}`")).unwrap_or_default()
    )]
    MassDelete {
        /// Destination name.
        destination: String,
        /// Deletes planned.
        deletes: usize,
        /// Copies the destination holds.
        copies: usize,
        /// The configured ratio.
        ratio: f64,
        /// The destination mount over the ratio, when the total is not.
        mount: Option<String>,
    },
    /// A mapped origin mount is not in the origin's info: its keys would all read as deleted.
    #[error(
        "destination `{destination}`: origin mount `{mount}` is mapped here but the origin does not publish it \
         (is it still in the origin's `mounts`?); refusing to delete its copies. Fix the configuration, or run \
         once with --allow-origin-change to accept it"
    )]
    OriginMountMissing {
        /// Destination name.
        destination: String,
        /// The mount.
        mount: String,
    },
}

/// A planned cycle.
#[derive(Debug, Clone)]
pub struct CyclePlan {
    /// The actions.
    pub plan: Plan,
    /// Target of every key with a planned removal that was mapped this cycle (what settling
    /// needs; writes carry their targets).
    pub targets: HashMap<SecretPath, DestPath>,
    /// The origin mount UUIDs the destination is bound to after this cycle.
    pub origin_mounts: BTreeMap<String, String>,
    /// Keys whose mapping failed, with the reason.
    pub mapping_failures: Vec<(SecretPath, crate::mapping::MapError)>,
}

/// Binds the destination to the origin mounts' UUIDs: a mount it knows under another UUID was
/// re-created and is refused unless `allow_change`.
pub fn bind_origin_mounts(
    destination: &str,
    bound: &BTreeMap<String, String>,
    current: &BTreeMap<String, String>,
    allow_change: bool,
) -> Result<BTreeMap<String, String>, Refusal> {
    let mut next = bound.clone();
    for (mount, uuid) in current {
        match bound.get(mount) {
            Some(old) if old != uuid && !allow_change => {
                return Err(Refusal::OriginMountRecreated {
                    destination: destination.to_owned(),
                    mount: mount.clone(),
                    old: old.clone(),
                    new: uuid.clone(),
                });
            }
            _ => {
                next.insert(mount.clone(), uuid.clone());
            }
        }
    }
    Ok(next)
}

/// Plans one destination cycle: UUID binding, the per-key plan, then the collision check and
/// the mass-delete guard. Nothing is decided anywhere else.
pub fn plan_cycle(
    origin: &OriginInfo,
    dest: &DestInfo,
    rules: CycleRules<'_>,
    flags: CycleFlags,
    mapper: &mut DestinationMapper<'_>,
) -> Result<CyclePlan, Refusal> {
    let origin_mounts = bind_origin_mounts(rules.destination, &dest.origin_mounts, &origin.mounts, flags.allow_origin_change)?;
    if !flags.allow_origin_change
        && let Some(mount) = rules.mounts.keys().find(|m| !origin.mounts.contains_key(*m))
    {
        return Err(Refusal::OriginMountMissing { destination: rules.destination.to_owned(), mount: mount.clone() });
    }
    let recheck_all = dest.config_hash.as_deref() != Some(rules.config_hash);
    let kind_of = |k: &SecretPath| {
        origin
            .entries
            .get(k)
            .map(|e| e.kind)
            .or_else(|| dest.entries.get(k).map(|e| e.origin.kind))
            .unwrap_or(KvVersion::V2)
    };
    let plan = plan_buckets(
        &origin.entries,
        &origin.digests,
        &dest.entries,
        &dest.digests,
        recheck_all,
        PlanOptions { deletes: rules.deletes, versions: rules.versions },
        |k| mapper.map(k, kind_of(k)),
    );
    // The planner may ask for one key twice (origin side, destination side): report it once.
    let mut mapping_failures = std::mem::take(&mut mapper.failures);
    mapping_failures.sort_by(|a, b| a.0.cmp(&b.0));
    mapping_failures.dedup_by(|a, b| a.0 == b.0);
    // Settling looks a target up only for a removed key still at the origin (a write carries
    // its own): keep just those, so a first sync does not hold a second copy of every path.
    let mut targets = std::mem::take(&mut mapper.targets);
    let removed: HashSet<&SecretPath> = plan.removals.iter().map(Action::key).collect();
    targets.retain(|k, _| removed.contains(k));
    targets.shrink_to_fit();
    drop(removed);
    let cycle = CyclePlan {
        plan,
        targets,
        origin_mounts,
        mapping_failures,
    };
    let mut cycle = cycle;
    check_collisions(rules.destination, &mut cycle.plan, dest)?;
    if !flags.allow_mass_delete {
        mass_delete_guard(rules, &cycle.plan, dest, &[])?;
    }
    Ok(cycle)
}

/// Refuses a plan in which two origin secrets land on one destination path after the cycle:
/// every written target, plus the copies the plan leaves where they are. Then drops every
/// removal whose target one of those holds: a removal never deletes a path that the new
/// destination info assigns to a key (the same one after a move, or another one after a
/// swap or a re-mapping). Such a removal becomes a [`Action::Forget`] of its key.
pub fn check_collisions(destination: &str, plan: &mut Plan, dest: &DestInfo) -> Result<(), Refusal> {
    if plan.writes.is_empty() && plan.removals.is_empty() {
        return Ok(());
    }
    let touched: HashSet<&SecretPath> = plan.writes.iter().chain(plan.removals.iter()).map(Action::key).collect();
    let kept = dest
        .entries
        .iter()
        .filter(|(k, e)| e.has_copy() && !touched.contains(k))
        .map(|(k, e)| (&e.target, k));
    let written = plan.writes.iter().filter_map(|a| match a {
        Action::CopyV2 { key, target, .. } | Action::ExactV2 { key, target, .. } | Action::SyncV1 { key, target } => {
            Some((target, key))
        }
        _ => None,
    });
    let mut claims: HashMap<&DestPath, &SecretPath> = HashMap::new();
    let mut clashes = Vec::new();
    for (target, key) in kept.chain(written) {
        if let Some(other) = claims.insert(target, key)
            && other != key
        {
            clashes.push(format!("`{other}` and `{key}` both map to `{target}`"));
        }
    }
    if !clashes.is_empty() {
        clashes.sort();
        return Err(Refusal::PathCollision {
            destination: destination.to_owned(),
            clashes,
        });
    }
    let claimed: HashSet<DestPath> = claims.into_keys().cloned().collect();
    let written_keys: HashSet<SecretPath> = plan.writes.iter().map(|a| a.key().clone()).collect();
    let mut kept_removals = Vec::with_capacity(plan.removals.len());
    for action in std::mem::take(&mut plan.removals) {
        match &action {
            Action::Delete { key, target, .. } | Action::SoftDelete { key, target } if claimed.contains(target) => {
                // A moved key's entry is replaced by its write; a gone key is forgotten.
                if !written_keys.contains(key) {
                    kept_removals.push(Action::Forget { key: key.clone() });
                }
            }
            _ => kept_removals.push(action),
        }
    }
    plan.removals = kept_removals;
    Ok(())
}

/// The mass-delete guard, against the copies the destination holds (not tombstones), in
/// total and per destination mount. Moves are not deletes. `rebuilds` are targets of existing
/// destination keys the cycle deletes and rewrites (`versions = "all"`): they count as deletes.
pub fn mass_delete_guard(rules: CycleRules<'_>, plan: &Plan, dest: &DestInfo, rebuilds: &[DestPath]) -> Result<(), Refusal> {
    let over = |deletes: usize, copies: usize| deletes > MASS_DELETE_FLOOR && (deletes as f64) > rules.max_delete_ratio * (copies as f64);
    let refuse = |deletes: usize, copies: usize, mount: Option<String>| Refusal::MassDelete {
        destination: rules.destination.to_owned(),
        deletes,
        copies,
        ratio: rules.max_delete_ratio,
        mount,
    };
    let targets: Vec<&DestPath> = plan.deletes().map(|(_, t)| t).chain(rebuilds.iter()).collect();
    let copies = dest.copies();
    if over(targets.len(), copies) {
        return Err(refuse(targets.len(), copies, None));
    }
    let mut per_mount: BTreeMap<&str, usize> = BTreeMap::new();
    for t in &targets {
        *per_mount.entry(t.mount.as_str()).or_default() += 1;
    }
    for (mount, deletes) in per_mount {
        let copies = dest.entries.iter().filter(|(_, e)| e.has_copy() && e.target.mount == mount).count();
        if over(deletes, copies) {
            return Err(refuse(deletes, copies, Some(mount.to_owned())));
        }
    }
    Ok(())
}

/// How one write action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The destination was written.
    Written,
    /// The destination key was deleted and written again (`versions = "all"`).
    Rebuilt,
    /// The destination key already was an exact replica and is adopted (`versions = "all"`).
    Adopted,
    /// The destination already held an equal value.
    Equal,
    /// Nothing to write; the entry is recorded.
    Recorded,
    /// The origin changed during the cycle; retried next cycle.
    Skipped,
    /// Failed (logged); retried next cycle.
    Failed,
}

impl WriteOutcome {
    /// Whether the destination now holds what the plan wanted.
    pub fn succeeded(self) -> bool {
        !matches!(self, WriteOutcome::Skipped | WriteOutcome::Failed)
    }

    /// The outcome's name in metrics.
    pub fn name(self) -> &'static str {
        match self {
            WriteOutcome::Written => "written",
            WriteOutcome::Rebuilt => "rebuilt",
            WriteOutcome::Adopted => "adopted",
            WriteOutcome::Equal => "equal",
            WriteOutcome::Recorded => "recorded",
            WriteOutcome::Skipped => "skipped",
            WriteOutcome::Failed => "failed",
        }
    }
}

/// How many tasks of one kind ended one way in a cycle (`vsync_tasks_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskCount {
    /// [`Action::op`].
    pub kind: &'static str,
    /// [`WriteOutcome::name`], or `removed` / `failed` for a removal.
    pub outcome: &'static str,
    /// How many.
    pub count: u64,
}

/// Tallies a cycle's tasks by kind and outcome, from what its writes and removals returned.
pub fn task_counts(
    plan: &Plan,
    writes: &HashMap<SecretPath, WriteOutcome>,
    removals: &HashMap<SecretPath, RemovalOutcome>,
) -> Vec<TaskCount> {
    let mut tally: BTreeMap<(&'static str, &'static str), u64> = BTreeMap::new();
    for action in &plan.writes {
        if let Some(outcome) = writes.get(action.key()) {
            *tally.entry((action.op(), outcome.name())).or_default() += 1;
        }
    }
    for action in &plan.removals {
        let outcome = match removals.get(action.key()) {
            Some(RemovalOutcome::Removed) => "removed",
            Some(RemovalOutcome::Failed) => "failed",
            None => continue,
        };
        *tally.entry((action.op(), outcome)).or_default() += 1;
    }
    tally.into_iter().map(|((kind, outcome), count)| TaskCount { kind, outcome, count }).collect()
}

/// How one removal ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemovalOutcome {
    /// Done.
    Removed,
    /// Failed (logged); retried next cycle.
    Failed,
}

/// The removals to run once the writes are done: a key whose new copy was not written keeps
/// its old one until it is.
pub fn removals_to_run<'p>(plan: &'p Plan, writes: &HashMap<SecretPath, WriteOutcome>) -> Vec<&'p Action> {
    plan.removals
        .iter()
        .filter(|a| writes.get(a.key()).is_none_or(|o| o.succeeded()))
        .collect()
}

/// What the executor learned per key, beyond the outcome, that the next info records.
#[derive(Debug, Clone, Default)]
pub struct Records {
    /// Per-key state of every key replicated exactly this cycle.
    pub exact: HashMap<SecretPath, ExactState>,
    /// KV v1 keys whose written value could not be checked against the scan's keyed digest
    /// (the destination has no `digest_key_file`).
    pub unverified: HashSet<SecretPath>,
    /// `latest` KV v2 copies: the destination version each write created (or found equal).
    pub dest_versions: HashMap<SecretPath, u64>,
}

/// Counts of one destination cycle.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CycleCounts {
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
    /// Per-secret failures (mapping, write or removal).
    pub failed: usize,
    /// Keys deleted and written again at the destination (also counted as updated).
    pub rebuilt: usize,
    /// Keys found already exact at the destination and adopted without a write.
    pub adopted: usize,
}

/// Merges a cycle's outcomes into the destination's entries: what succeeded is recorded,
/// what failed keeps its old entry (so only it is retried), a moved secret points at its new
/// place, and a secret with no live version leaves a tombstone so both infos agree.
pub fn settle(
    cycle: &CyclePlan,
    origin: &OriginInfo,
    dest: &mut Buckets<DestEntry>,
    writes: &HashMap<SecretPath, WriteOutcome>,
    records: &Records,
    removals: &HashMap<SecretPath, RemovalOutcome>,
) -> CycleCounts {
    let mut counts = CycleCounts {
        unchanged: cycle.plan.unchanged,
        failed: cycle.plan.failed.len(),
        ..CycleCounts::default()
    };
    settle_writes(cycle, origin, dest, writes, records, &mut counts);
    settle_removals(cycle, origin, dest, removals, &mut counts);
    counts
}

/// The writes' part of [`settle`].
fn settle_writes(
    cycle: &CyclePlan,
    origin: &OriginInfo,
    dest: &mut Buckets<DestEntry>,
    writes: &HashMap<SecretPath, WriteOutcome>,
    records: &Records,
    counts: &mut CycleCounts,
) {
    for action in &cycle.plan.writes {
        let key = action.key();
        let (Some(outcome), Some(entry)) = (writes.get(key), origin.entries.get(key)) else {
            continue;
        };
        let target = match action {
            Action::CopyV2 { target, .. }
            | Action::ExactV2 { target, .. }
            | Action::SyncV1 { target, .. }
            | Action::Record { target, .. } => target,
            _ => continue,
        };
        let is_new = !dest.get(key).is_some_and(DestEntry::has_copy);
        if !counts.count_write(*outcome, is_new) {
            continue;
        }
        let next = settled_entry(action, entry, target, dest.get(key), records);
        dest.insert(key.clone(), next);
    }
}

/// The entry a successful write leaves for its key; `previous` is what was recorded.
fn settled_entry(action: &Action, entry: &OriginEntry, target: &DestPath, previous: Option<&DestEntry>, records: &Records) -> DestEntry {
    let key = action.key();
    let mut next = DestEntry::new(entry.clone(), target.clone());
    if matches!(action, Action::ExactV2 { .. }) {
        next.exact = Some(records.exact.get(key).cloned().unwrap_or_default());
    }
    match action {
        Action::CopyV2 { .. } => next.dest_version = records.dest_versions.get(key).copied(),
        // Nothing was written: the copy vsync left is still the one it recorded.
        Action::Record { .. } => {
            next.dest_version = previous.filter(|e| e.target == *target).and_then(|e| e.dest_version);
        }
        _ => {}
    }
    if records.unverified.contains(key) {
        // The value written could not be tied to the scan's keyed digest: record none, so
        // the next cycle compares the values again instead of trusting a digest.
        next.origin.digest = None;
    }
    next
}

/// The removals' part of [`settle`].
fn settle_removals(
    cycle: &CyclePlan,
    origin: &OriginInfo,
    dest: &mut Buckets<DestEntry>,
    removals: &HashMap<SecretPath, RemovalOutcome>,
    counts: &mut CycleCounts,
) {
    for action in &cycle.plan.removals {
        let key = action.key();
        let Some(outcome) = removals.get(key) else {
            continue; // not run: its new copy was not written
        };
        if *outcome == RemovalOutcome::Failed {
            counts.failed += 1;
            continue;
        }
        let removed_target = match action {
            Action::Delete { target, .. } | Action::SoftDelete { target, .. } => {
                counts.deleted += 1;
                Some(target)
            }
            _ => None,
        };
        // A secret that moved keeps its entry (it points at the new place now).
        let moved = removed_target.is_some_and(|t| dest.get(key).is_some_and(|e| e.target != *t));
        if moved {
            continue;
        }
        match (origin.entries.get(key), cycle.targets.get(key)) {
            (Some(entry), Some(target)) => {
                dest.insert(key.clone(), DestEntry::new(entry.clone(), target.clone()));
            }
            _ => {
                dest.remove(key);
            }
        }
    }
}

impl CycleCounts {
    /// Counts one write's outcome; whether its key's entry is settled (skipped and failed
    /// keys keep their old entries).
    fn count_write(&mut self, outcome: WriteOutcome, is_new: bool) -> bool {
        match outcome {
            WriteOutcome::Skipped => {
                self.skipped += 1;
                return false;
            }
            WriteOutcome::Failed => {
                self.failed += 1;
                return false;
            }
            WriteOutcome::Written if is_new => self.added += 1,
            WriteOutcome::Written => self.updated += 1,
            WriteOutcome::Rebuilt => {
                self.updated += 1;
                self.rebuilt += 1;
            }
            WriteOutcome::Adopted => self.adopted += 1,
            WriteOutcome::Equal => self.checked_equal += 1,
            WriteOutcome::Recorded => {}
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::CopyReason;
    use crate::types::OriginEntry;

    fn v2(version: u64) -> OriginEntry {
        OriginEntry {
            kind: KvVersion::V2,
            current_version: version,
            created_time: "t".into(),
            current_live: true,
            digest: Some(Digest([version as u8; 32])),
        }
    }

    fn key(p: &str) -> SecretPath {
        SecretPath::new("secret/", p)
    }

    fn at(p: &str) -> DestPath {
        DestPath { mount: "secret/".into(), path: p.into() }
    }

    fn mounts() -> BTreeMap<String, String> {
        [("secret/".to_owned(), "secret/".to_owned())].into()
    }

    fn origin(entries: &[(&str, OriginEntry)]) -> OriginInfo {
        OriginInfo::new(
            SyncInfo::from_entries(2, entries.iter().map(|(p, e)| (key(p), e.clone()))),
            [("secret/".to_owned(), "uuid-1".to_owned())].into(),
        )
    }

    fn dest(entries: &[(&str, OriginEntry, &str)]) -> DestInfo {
        let b = Buckets::from_entries(
            2,
            entries.iter().map(|(p, e, t)| (key(p), DestEntry::new(e.clone(), at(t)))),
        );
        DestInfo {
            digests: b.digests(),
            entries: b,
            origin_mounts: [("secret/".to_owned(), "uuid-1".to_owned())].into(),
            config_hash: Some("h".into()),
        }
    }

    static MOUNTS: std::sync::LazyLock<BTreeMap<String, String>> = std::sync::LazyLock::new(mounts);
    static RULES: std::sync::LazyLock<CycleRules<'static>> = std::sync::LazyLock::new(|| CycleRules {
        destination: "eu",
        deletes: DeletePolicy::Mirror,
        versions: VersionsMode::Latest,
        max_delete_ratio: 0.5,
        config_hash: "h",
        mounts: &MOUNTS,
    });

    fn plan(o: &OriginInfo, d: &DestInfo, rules: CycleRules<'_>, flags: CycleFlags) -> Result<CyclePlan, Refusal> {
        let (labels, m) = (BTreeMap::new(), mounts());
        let mut mapper = DestinationMapper::new("eu", &labels, &m, None);
        plan_cycle(o, d, rules, flags, &mut mapper)
    }

    /// Runs a cycle whose every action succeeds, returning the next destination info.
    fn apply(o: &OriginInfo, d: &DestInfo, c: &CyclePlan) -> (DestInfo, CycleCounts) {
        let writes = c.plan.writes.iter().map(|a| (a.key().clone(), WriteOutcome::Written)).collect();
        let removals = removals_to_run(&c.plan, &writes)
            .into_iter()
            .map(|a| (a.key().clone(), RemovalOutcome::Removed))
            .collect();
        let mut entries = d.entries.clone();
        let counts = settle(c, o, &mut entries, &writes, &Records::default(), &removals);
        let next = DestInfo {
            digests: entries.digests(),
            entries,
            origin_mounts: c.origin_mounts.clone(),
            config_hash: Some("h".into()),
        };
        (next, counts)
    }

    #[test]
    fn adds_updates_deletes_then_nothing() {
        let o = origin(&[("new", v2(1)), ("upd", v2(3)), ("same", v2(1))]);
        let d = dest(&[("upd", v2(2), "upd"), ("same", v2(1), "same"), ("gone", v2(1), "gone")]);
        let c = plan(&o, &d, *RULES, CycleFlags::default()).expect("plan");
        let (next, counts) = apply(&o, &d, &c);
        assert_eq!((counts.added, counts.updated, counts.deleted, counts.unchanged), (1, 1, 1, 1), "{counts:?}");
        assert_eq!(next.digests, o.digests, "after a good cycle the infos are equal bucket by bucket");
        let again = plan(&o, &next, *RULES, CycleFlags::default()).expect("plan");
        assert!(again.plan.is_empty(), "{:?}", again.plan);
    }

    #[test]
    fn origin_mount_recreated_is_refused_unless_allowed() {
        let mut o = origin(&[("a", v2(1))]);
        o.mounts.insert("secret/".into(), "uuid-2".into());
        let d = dest(&[("a", v2(1), "a")]);
        let err = plan(&o, &d, *RULES, CycleFlags::default()).expect_err("refused");
        assert!(matches!(&err, Refusal::OriginMountRecreated { mount, .. } if mount == "secret/"), "{err}");
        assert!(err.to_string().contains("origin mount `secret/` was re-created"));
        let c = plan(&o, &d, *RULES, CycleFlags { allow_origin_change: true, ..Default::default() }).expect("allowed");
        assert_eq!(c.origin_mounts["secret/"], "uuid-2", "rebound to the new mount");
    }

    #[test]
    fn mass_delete_guard_counts_copies_and_has_a_floor() {
        let names: Vec<String> = (0..30).map(|i| format!("k{i}")).collect();
        let d = dest(&names.iter().map(|n| (n.as_str(), v2(1), n.as_str())).collect::<Vec<_>>());
        // 20 of 30 deleted: over 0.5 and over the floor.
        let kept: Vec<(&str, OriginEntry)> = names[..10].iter().map(|n| (n.as_str(), v2(1))).collect();
        let o = origin(&kept);
        let err = plan(&o, &d, *RULES, CycleFlags::default()).expect_err("guard");
        assert!(matches!(err, Refusal::MassDelete { deletes: 20, copies: 30, .. }), "{err}");
        assert!(err.to_string().contains("--allow-mass-delete"));
        assert!(plan(&o, &d, *RULES, CycleFlags { allow_mass_delete: true, ..Default::default() }).is_ok());
        // 10 deletes are under the floor, whatever the ratio.
        let small = dest(&names[..10].iter().map(|n| (n.as_str(), v2(1), n.as_str())).collect::<Vec<_>>());
        assert!(plan(&origin(&[]), &small, *RULES, CycleFlags::default()).is_ok());
    }

    #[test]
    fn two_secrets_on_one_path_are_refused_before_any_write() {
        let o = origin(&[("eu/db", v2(1)), ("us/db", v2(1))]);
        let d = DestInfo::empty(2);
        let (labels, m) = (BTreeMap::new(), mounts());
        let mut strip = |p: &str, _: &crate::mapping::PathContext| -> Result<Option<String>, crate::mapping::MapError> {
            Ok(Some(p.split_once('/').map_or(p, |(_, rest)| rest).to_owned()))
        };
        let mut mapper = DestinationMapper::new("eu", &labels, &m, Some(&mut strip));
        let err = plan_cycle(&o, &d, *RULES, CycleFlags::default(), &mut mapper).expect_err("collision");
        assert!(err.to_string().contains("`secret/eu/db` and `secret/us/db` both map to `secret/db`"), "{err}");
    }

    #[test]
    fn a_failed_write_keeps_the_old_entry_and_its_old_copy() {
        // `a` moves from `old` to `new`; its write fails, so the old copy must stay.
        let o = origin(&[("a", v2(2))]);
        let mut d = dest(&[("a", v2(1), "old")]);
        d.config_hash = Some("other".into());
        let (labels, m) = (BTreeMap::new(), mounts());
        let mut to_new = |_: &str, _: &crate::mapping::PathContext| -> Result<Option<String>, crate::mapping::MapError> {
            Ok(Some("new".into()))
        };
        let mut mapper = DestinationMapper::new("eu", &labels, &m, Some(&mut to_new));
        let c = plan_cycle(&o, &d, *RULES, CycleFlags::default(), &mut mapper).expect("plan");
        assert!(matches!(c.plan.writes[0], Action::CopyV2 { reason: CopyReason::Update, .. }));
        let writes: HashMap<_, _> = [(key("a"), WriteOutcome::Failed)].into();
        assert!(removals_to_run(&c.plan, &writes).is_empty(), "the old copy stays until the new one is written");
        let mut entries = d.entries.clone();
        let counts = settle(&c, &o, &mut entries, &writes, &Records::default(), &HashMap::new());
        assert_eq!(counts.failed, 1);
        assert_eq!(entries.get(&key("a")), d.entries.get(&key("a")), "old entry kept, so it is retried");

        // Written, then the old copy removed: the entry points at the new place.
        let writes: HashMap<_, _> = [(key("a"), WriteOutcome::Written)].into();
        let run = removals_to_run(&c.plan, &writes);
        assert!(matches!(run[..], [Action::Delete { target, .. }] if target.path == "old"));
        let removals = [(key("a"), RemovalOutcome::Removed)].into();
        let mut entries = d.entries.clone();
        let counts = settle(&c, &o, &mut entries, &writes, &Records::default(), &removals);
        assert_eq!((counts.updated, counts.deleted), (1, 1));
        assert_eq!(entries.get(&key("a")).map(|e| e.target.path.as_str()), Some("new"));
    }

    #[test]
    fn skipped_and_failed_removals_are_retried_and_tombstones_recorded() {
        let mut gone = v2(2);
        gone.current_live = false;
        let o = origin(&[("soft", gone.clone()), ("skip", v2(5))]);
        let d = dest(&[("soft", v2(1), "soft"), ("skip", v2(4), "skip"), ("del", v2(1), "del")]);
        let c = plan(&o, &d, *RULES, CycleFlags::default()).expect("plan");
        let writes: HashMap<_, _> = [(key("skip"), WriteOutcome::Skipped)].into();
        let removals: HashMap<_, _> =
            [(key("soft"), RemovalOutcome::Removed), (key("del"), RemovalOutcome::Failed)].into();
        let mut entries = d.entries.clone();
        let counts = settle(&c, &o, &mut entries, &writes, &Records::default(), &removals);
        assert_eq!((counts.skipped, counts.failed, counts.deleted), (1, 1, 1), "{counts:?}");
        assert_eq!(entries.get(&key("soft")).map(|e| &e.origin), Some(&gone), "tombstone of a key with no live version");
        assert_eq!(entries.get(&key("skip")), d.entries.get(&key("skip")), "skipped: retried next cycle");
        assert!(entries.get(&key("del")).is_some(), "failed delete: retried next cycle");
    }

    #[test]
    fn failed_mappings_are_reported_and_touch_nothing() {
        let o = origin(&[("a", v2(2))]);
        let d = dest(&[("a", v2(1), "a")]);
        let (labels, m) = (BTreeMap::new(), mounts());
        let mut failing = |_: &str, _: &crate::mapping::PathContext| -> Result<Option<String>, crate::mapping::MapError> {
            Err(crate::mapping::MapError::Trap {
                plugin: "x".into(),
                path: "p".into(),
                message: "unreachable".into(),
            })
        };
        let mut mapper = DestinationMapper::new("eu", &labels, &m, Some(&mut failing));
        let mut d2 = d.clone();
        d2.config_hash = None;
        let c = plan_cycle(&o, &d2, *RULES, CycleFlags::default(), &mut mapper).expect("plan");
        assert_eq!(c.plan.failed, vec![key("a")]);
        assert!(c.plan.is_empty());
        assert_eq!(c.mapping_failures.len(), 1, "one report per key");
    }

    fn two_mounts() -> BTreeMap<String, String> {
        [("a/".to_owned(), "x/".to_owned()), ("b/".to_owned(), "x/".to_owned())].into()
    }

    #[test]
    fn a_removal_never_deletes_a_path_written_in_the_same_cycle() {
        // a/db was synced to x/db; now a/db is gone and b/db, mapped to the same x/db, is new.
        let m = two_mounts();
        let rules = CycleRules { mounts: &m, ..*RULES };
        let xdb = DestPath { mount: "x/".into(), path: "db".into() };
        let o = OriginInfo::new(
            SyncInfo::from_entries(2, [(SecretPath::new("b/", "db"), v2(1))]),
            [("a/".to_owned(), "u1".to_owned()), ("b/".to_owned(), "u2".to_owned())].into(),
        );
        let entries = Buckets::from_entries(2, [(SecretPath::new("a/", "db"), DestEntry::new(v2(1), xdb.clone()))]);
        let d = DestInfo { digests: entries.digests(), entries, origin_mounts: o.mounts.clone(), config_hash: Some("h".into()) };
        let labels = BTreeMap::new();
        let mut mapper = DestinationMapper::new("eu", &labels, &m, None);
        let c = plan_cycle(&o, &d, rules, CycleFlags::default(), &mut mapper).expect("plan");
        assert!(matches!(&c.plan.writes[..], [Action::CopyV2 { target, .. }] if *target == xdb));
        assert!(
            !c.plan.removals.iter().any(|a| matches!(a, Action::Delete { target, .. } if *target == xdb)),
            "x/db is written this cycle and must not be deleted: {:?}",
            c.plan.removals
        );
        // The gone key is forgotten; after the cycle only b/db holds x/db.
        let (next, counts) = apply(&o, &d, &c);
        assert_eq!(counts.deleted, 0);
        assert_eq!(next.entries.len(), 1);
        assert_eq!(next.entries.get(&SecretPath::new("b/", "db")).map(|e| &e.target), Some(&xdb));
    }

    #[test]
    fn swapped_mappings_write_both_and_delete_neither() {
        let swapped: BTreeMap<String, String> = [("a/".to_owned(), "y/".to_owned()), ("b/".to_owned(), "x/".to_owned())].into();
        let rules = CycleRules { mounts: &swapped, config_hash: "swapped", ..*RULES };
        let at = |m: &str| DestPath { mount: m.into(), path: "db".into() };
        let o = OriginInfo::new(
            SyncInfo::from_entries(2, [(SecretPath::new("a/", "db"), v2(1)), (SecretPath::new("b/", "db"), v2(1))]),
            [("a/".to_owned(), "u1".to_owned()), ("b/".to_owned(), "u2".to_owned())].into(),
        );
        let entries = Buckets::from_entries(
            2,
            [(SecretPath::new("a/", "db"), DestEntry::new(v2(1), at("x/"))), (SecretPath::new("b/", "db"), DestEntry::new(v2(1), at("y/")))],
        );
        let d = DestInfo { digests: entries.digests(), entries, origin_mounts: o.mounts.clone(), config_hash: Some("h".into()) };
        let labels = BTreeMap::new();
        let mut mapper = DestinationMapper::new("eu", &labels, &swapped, None);
        let c = plan_cycle(&o, &d, rules, CycleFlags::default(), &mut mapper).expect("plan");
        assert_eq!(c.plan.writes.len(), 2);
        assert!(c.plan.removals.iter().all(|a| !matches!(a, Action::Delete { .. })), "{:?}", c.plan.removals);
    }

    #[test]
    fn a_mapped_origin_mount_missing_from_the_origin_info_is_refused() {
        let m = two_mounts();
        let rules = CycleRules { mounts: &m, ..*RULES };
        let o = OriginInfo::new(SyncInfo::new(2), [("a/".to_owned(), "u1".to_owned())].into());
        let d = DestInfo::empty(2);
        let labels = BTreeMap::new();
        let mut mapper = DestinationMapper::new("eu", &labels, &m, None);
        let err = plan_cycle(&o, &d, rules, CycleFlags::default(), &mut mapper).expect_err("refused");
        assert!(matches!(&err, Refusal::OriginMountMissing { mount, .. } if mount == "b/"), "{err}");
    }

    #[test]
    fn the_guard_applies_per_destination_mount_and_moves_do_not_count() {
        // 12 of 100 copies deleted in total (under 0.5) but 12 of 15 of mount `small/`.
        let mut entries = Vec::new();
        for i in 0..85 {
            entries.push((format!("big{i}"), DestPath { mount: "secret/".into(), path: format!("big{i}") }));
        }
        for i in 0..15 {
            entries.push((format!("small{i}"), DestPath { mount: "small/".into(), path: format!("s{i}") }));
        }
        let b = Buckets::from_entries(2, entries.iter().map(|(p, t)| (key(p), DestEntry::new(v2(1), t.clone()))));
        let d = DestInfo { digests: b.digests(), entries: b, origin_mounts: Default::default(), config_hash: None };
        let mut plan = Plan::default();
        for (p, t) in entries.iter().filter(|(p, _)| p.starts_with("small")).take(12) {
            plan.removals.push(Action::Delete { key: key(p), kind: KvVersion::V2, target: t.clone() });
        }
        let err = mass_delete_guard(*RULES, &plan, &d, &[]).expect_err("per mount");
        assert!(matches!(&err, Refusal::MassDelete { mount: Some(m), deletes: 12, copies: 15, .. } if m == "small/"), "{err}");
        // The same removals as moves (their keys are written elsewhere) are not deletes.
        for (p, _) in entries.iter().filter(|(p, _)| p.starts_with("small")).take(12) {
            plan.writes.push(Action::CopyV2 { key: key(p), version: 1, target: at(p), reason: CopyReason::Move });
        }
        assert!(mass_delete_guard(*RULES, &plan, &d, &[]).is_ok());
    }
}

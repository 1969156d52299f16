//! The planner: compares an origin snapshot with a destination's state and decides, per secret,
//! what a cycle must do. Pure: the same inputs always give the same plan.
//!
//! Rules for `versions = "latest"`:
//! - a KV v2 secret is copied when the destination has never copied it, when the origin's current
//!   version or `created_time` differs from what was copied (an update or a re-creation), or when
//!   its target location changed (config change: write the new place, remove the old one);
//! - a KV v2 secret whose current version is deleted, destroyed or absent is handled as a delete;
//! - KV v1 has no versions, so every KV v1 secret is checked: the executor reads both sides and
//!   writes only when they differ;
//! - a secret the destination copied that is no longer at the origin (or no longer in scope) is
//!   deleted according to the [`DeletePolicy`].
//!
//! Rules for `versions = "all"` (KV v2): a secret is replicated exactly ([`Action::ExactV2`];
//! the per-key steps are decided by [`crate::exact`] once both metadata documents are read)
//! when the destination has no exact replica of it, when its origin entry differs from what
//! was replicated, or when its target changed. A deleted or destroyed current version is a
//! flag to copy, not a delete; `deletes` applies only to keys gone from the origin or out of
//! scope.

use serde::Serialize;

use crate::types::{
    DeletePolicy, DestEntry, DestPath, DestinationState, KvVersion, OriginEntry, OriginSnapshot, SecretPath,
    VersionsMode,
};

/// Why a KV v2 secret is copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CopyReason {
    /// Never copied before.
    Add,
    /// The origin has a newer (or different) current version.
    Update,
    /// The origin key was deleted and re-created (`created_time` changed).
    Recreated,
    /// The target location changed (transform or mount mapping changed).
    Move,
}

/// One thing a cycle does for one secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Read the KV v2 origin secret at exactly `version` and write it to `target`.
    CopyV2 {
        /// Origin secret.
        key: SecretPath,
        /// The origin version to read (pinned: never "latest").
        version: u64,
        /// Where to write it.
        target: DestPath,
        /// Why.
        reason: CopyReason,
    },
    /// Make the destination key an exact replica of the KV v2 origin key (`versions = "all"`).
    ExactV2 {
        /// Origin secret.
        key: SecretPath,
        /// Where the replica is.
        target: DestPath,
        /// Why.
        reason: CopyReason,
    },
    /// Read the KV v1 origin value and the destination value; write when they differ.
    SyncV1 {
        /// Origin secret.
        key: SecretPath,
        /// Where to write it.
        target: DestPath,
    },
    /// Remove the destination copy at `target` (all versions for KV v2).
    Delete {
        /// Origin secret the copy came from.
        key: SecretPath,
        /// Engine version of the destination copy.
        kind: KvVersion,
        /// The copy to remove.
        target: DestPath,
    },
    /// Soft-delete the latest version of the KV v2 copy at `target`.
    SoftDelete {
        /// Origin secret the copy came from.
        key: SecretPath,
        /// The copy to soft-delete.
        target: DestPath,
    },
    /// Record the origin's entry without touching either Vault: its metadata changed but not
    /// its data (`versions = "latest"` copies data only), or it has no live version (a
    /// tombstone, so both infos agree bucket by bucket).
    Record {
        /// Origin secret.
        key: SecretPath,
        /// Where the secret is (or would be) written.
        target: DestPath,
    },
    /// Stop tracking a secret without touching the destination (`deletes = "ignore"`).
    Forget {
        /// Origin secret.
        key: SecretPath,
    },
}

impl Action {
    /// The origin secret this action is about.
    pub fn key(&self) -> &SecretPath {
        match self {
            Action::CopyV2 { key, .. }
            | Action::ExactV2 { key, .. }
            | Action::SyncV1 { key, .. }
            | Action::Delete { key, .. }
            | Action::SoftDelete { key, .. }
            | Action::Record { key, .. }
            | Action::Forget { key } => key,
        }
    }

    /// The action's name in logs and metrics (`copy`, `replicate`, `sync-kv1`, `record`,
    /// `delete`, `soft-delete`, `forget`).
    pub fn op(&self) -> &'static str {
        match self {
            Action::CopyV2 { .. } => "copy",
            Action::ExactV2 { .. } => "replicate",
            Action::SyncV1 { .. } => "sync-kv1",
            Action::Record { .. } => "record",
            Action::Delete { .. } => "delete",
            Action::SoftDelete { .. } => "soft-delete",
            Action::Forget { .. } => "forget",
        }
    }
}

/// A cycle's work: writes first, then removals, so a moved secret is never missing at both places.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Copies, checks and records, in key order.
    pub writes: Vec<Action>,
    /// Deletes, soft-deletes and forgets, in key order.
    pub removals: Vec<Action>,
    /// Secrets in scope that need nothing this cycle.
    pub unchanged: usize,
    /// Secrets whose mapping failed (left untouched this cycle).
    pub failed: Vec<SecretPath>,
}

impl Plan {
    /// True when the plan does nothing at all.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.removals.is_empty()
    }

    /// Number of destructive actions (deletes and soft-deletes) in the plan.
    pub fn delete_count(&self) -> usize {
        self.deletes().count()
    }

    /// The destructive removals that are not moves (a moved secret's new copy is written by
    /// the same plan, so its old one going is not a loss).
    pub fn deletes(&self) -> impl Iterator<Item = (&SecretPath, &DestPath)> {
        let written: std::collections::HashSet<&SecretPath> = self.writes.iter().map(Action::key).collect();
        self.removals.iter().filter_map(move |a| match a {
            Action::Delete { key, target, .. } | Action::SoftDelete { key, target } if !written.contains(key) => {
                Some((key, target))
            }
            _ => None,
        })
    }
}

/// Where one origin secret goes in a destination, as decided by the mount map, filters and
/// transformers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapping {
    /// Written at this target.
    To(DestPath),
    /// Out of scope (mount not mapped, or a filter excludes it): a copy is removed.
    OutOfScope,
    /// The mapping failed for this path (a plugin error): the secret is left as it is this
    /// cycle (neither copied nor removed) and reported in [`Plan::failed`].
    Failed,
}

impl From<Option<DestPath>> for Mapping {
    fn from(t: Option<DestPath>) -> Self {
        t.map_or(Mapping::OutOfScope, Mapping::To)
    }
}

/// Knobs of the planner. The default is the `latest` planner with `deletes = "mirror"`;
/// cycles always build their options from the destination's rules.
#[derive(Debug, Clone, Copy)]
pub struct PlanOptions {
    /// What to do with secrets that left the origin.
    pub deletes: DeletePolicy,
    /// Which KV v2 versions are replicated.
    pub versions: VersionsMode,
}

impl Default for PlanOptions {
    fn default() -> Self {
        Self::latest(DeletePolicy::Mirror)
    }
}

impl PlanOptions {
    /// The options of a `versions = "latest"` destination.
    pub fn latest(deletes: DeletePolicy) -> Self {
        Self { deletes, versions: VersionsMode::Latest }
    }
}

/// Plans a `versions = "latest"` cycle.
///
/// `target_of` maps an origin secret to where this destination writes it, or `None` when the
/// secret is out of scope (its mount is not mapped, or a filter excludes it).
pub fn plan_latest<M: Into<Mapping>>(
    origin: &OriginSnapshot,
    dest: &DestinationState,
    options: PlanOptions,
    target_of: impl FnMut(&SecretPath) -> M,
) -> Plan {
    plan_keys(origin, dest, options, target_of, false)
}

/// The per-key planner. With `trust_targets` (the destination's configuration is unchanged, so
/// a key's target is what it was), a key whose origin entry equals the recorded one is
/// unchanged without computing its target: the common case costs one comparison.
fn plan_keys<M: Into<Mapping>>(
    origin: &OriginSnapshot,
    dest: &DestinationState,
    options: PlanOptions,
    mut target_of: impl FnMut(&SecretPath) -> M,
    trust_targets: bool,
) -> Plan {
    let mut plan = Plan::default();
    // Both maps are sorted by key: walk them side by side instead of looking every key up.
    let mut recorded = dest.iter().peekable();
    for (key, entry) in origin {
        while recorded.next_if(|(k, _)| *k < key).is_some() {}
        let known = recorded.peek().filter(|(k, _)| *k == key).map(|(_, v)| *v);
        let exact = options.versions == VersionsMode::All && entry.kind == KvVersion::V2;
        // In `all` mode only an exact replica counts: a `latest` copy of the same entry (after
        // a switch of mode) is checked and adopted or rebuilt.
        if trust_targets
            && entry.digest.is_some()
            && known.is_some_and(|k| k.origin == *entry && (!exact || k.exact.is_some()))
        {
            plan.unchanged += 1;
            continue;
        }
        let target = match target_of(key).into() {
            Mapping::To(t) => t,
            Mapping::OutOfScope => continue,
            Mapping::Failed => {
                plan.failed.push(key.clone());
                continue;
            }
        };
        let one = KeyToPlan { key, entry, known, target, deletes: options.deletes };
        if exact {
            one.plan_exact(&mut plan);
        } else if entry.is_gone() {
            one.plan_gone(&mut plan);
        } else {
            one.plan_latest(&mut plan);
        }
    }
    plan_departed(&mut plan, origin, dest, &mut target_of, options.deletes, trust_targets);
    plan
}

/// One origin key in scope, with what the destination recorded for it and where it goes now.
struct KeyToPlan<'a> {
    key: &'a SecretPath,
    entry: &'a OriginEntry,
    known: Option<&'a DestEntry>,
    target: DestPath,
    deletes: DeletePolicy,
}

impl KeyToPlan<'_> {
    /// A copy that moved leaves its old place behind.
    fn remove_moved(&self, plan: &mut Plan) {
        if let Some(old) = self.known.filter(|old| old.target != self.target && old.has_copy()) {
            plan.removals.push(removal(self.key, old, self.deletes, true));
        }
    }

    /// `versions = "all"`, a KV v2 key: replicate it exactly unless the recorded replica is
    /// the origin's entry at the same target.
    fn plan_exact(self, plan: &mut Plan) {
        self.remove_moved(plan);
        let (entry, target) = (self.entry, &self.target);
        let reason = match self.known {
            None => Some(CopyReason::Add),
            Some(k) if k.exact.is_none() || k.origin.kind != KvVersion::V2 => Some(CopyReason::Update),
            Some(k) if k.target != *target => Some(CopyReason::Move),
            Some(k) if k.origin.created_time != entry.created_time => Some(CopyReason::Recreated),
            Some(k) if k.origin != *entry => Some(CopyReason::Update),
            Some(_) => None,
        };
        match reason {
            Some(reason) => plan.writes.push(Action::ExactV2 { key: self.key.clone(), target: self.target, reason }),
            None => plan.unchanged += 1,
        }
    }

    /// `latest`, a key with no live version: nothing to copy. The destination records the
    /// entry as a tombstone (no copy at the target) so both infos agree bucket by bucket; a
    /// copy it still has goes.
    fn plan_gone(self, plan: &mut Plan) {
        match self.known {
            Some(k) if k.origin == *self.entry && k.target == self.target => plan.unchanged += 1,
            Some(k) if k.has_copy() => plan.removals.push(removal(self.key, k, self.deletes, false)),
            _ => plan.writes.push(Action::Record { key: self.key.clone(), target: self.target }),
        }
    }

    /// `latest`, a live key: copy its current version (KV v2) or sync its value (KV v1).
    fn plan_latest(self, plan: &mut Plan) {
        self.remove_moved(plan);
        let (key, entry, known) = (self.key, self.entry, self.known);
        match entry.kind {
            KvVersion::V2 => match copy_reason(entry, known, &self.target) {
                Some(reason) => plan.writes.push(Action::CopyV2 {
                    key: key.clone(),
                    version: entry.current_version,
                    target: self.target,
                    reason,
                }),
                None if known.is_some_and(|k| k.origin != *entry) => plan.writes.push(Action::Record {
                    key: key.clone(),
                    target: self.target,
                }),
                None => plan.unchanged += 1,
            },
            // A keyed value digest that matches what was copied proves the value is unchanged;
            // without one the executor compares the values.
            KvVersion::V1 => {
                let same = entry.digest.is_some() && known.is_some_and(|k| k.origin == *entry && k.target == self.target);
                if same {
                    plan.unchanged += 1;
                } else {
                    plan.writes.push(Action::SyncV1 { key: key.clone(), target: self.target });
                }
            }
        }
    }
}

/// Recorded keys that left the origin or the destination's scope: their copies are removed
/// (under `deletes`), and entries without a copy are forgotten.
fn plan_departed<M: Into<Mapping>>(
    plan: &mut Plan,
    origin: &OriginSnapshot,
    dest: &DestinationState,
    target_of: &mut impl FnMut(&SecretPath) -> M,
    deletes: DeletePolicy,
    trust_targets: bool,
) {
    let mut current = origin.keys().peekable();
    for (key, old) in dest {
        while current.next_if(|k| *k < key).is_some() {}
        let at_origin = current.peek().is_some_and(|k| *k == key);
        // A recorded key was in scope when recorded; with trusted targets it still is.
        // A failed mapping keeps the copy (it is reported when the origin side is planned).
        let in_scope = at_origin && (trust_targets || target_of(key).into() != Mapping::OutOfScope);
        if !in_scope {
            plan.removals.push(if old.has_copy() {
                removal(key, old, deletes, false)
            } else {
                Action::Forget { key: key.clone() }
            });
        }
    }
}

/// Plans a cycle bucket by bucket: a bucket whose digest equals the destination's is skipped
/// whole, unless `recheck_all` (the destination's transform/filter configuration changed, so
/// targets may move) or it holds KV v1 entries without a value digest (only a value comparison
/// can tell those apart).
///
/// `dest` must use the origin's bucket count ([`crate::Buckets::rebucket`]); the digest slices
/// hold one digest per bucket, as computed by [`crate::Buckets::digests`].
pub fn plan_buckets<M: Into<Mapping>>(
    origin: &crate::SyncInfo,
    origin_digests: &[crate::Digest],
    dest: &crate::Buckets<DestEntry>,
    dest_digests: &[crate::Digest],
    recheck_all: bool,
    options: PlanOptions,
    mut target_of: impl FnMut(&SecretPath) -> M,
) -> Plan {
    let mut plan = Plan::default();
    for i in 0..origin.count() {
        let (o, d) = (origin.bucket(i), dest.bucket(i));
        let equal = origin_digests.get(i as usize) == dest_digests.get(i as usize);
        let unkeyed_v1 = o.values().any(|e| e.kind == KvVersion::V1 && e.digest.is_none());
        if equal && !recheck_all && !unkeyed_v1 {
            plan.unchanged += o.len();
            continue;
        }
        let part = plan_keys(o, d, options, &mut target_of, !recheck_all);
        plan.writes.extend(part.writes);
        plan.removals.extend(part.removals);
        plan.unchanged += part.unchanged;
        plan.failed.extend(part.failed);
    }
    plan
}


fn copy_reason(entry: &OriginEntry, known: Option<&DestEntry>, target: &DestPath) -> Option<CopyReason> {
    let Some(known) = known else {
        return Some(CopyReason::Add);
    };
    let known_origin = &known.origin;
    if known_origin.kind != entry.kind || !known.has_copy() {
        return Some(CopyReason::Update);
    }
    if known_origin.created_time != entry.created_time {
        return Some(CopyReason::Recreated);
    }
    if known_origin.current_version != entry.current_version {
        return Some(CopyReason::Update);
    }
    if known.target != *target {
        return Some(CopyReason::Move);
    }
    None
}

/// The removal for a secret the destination knows. A moved secret's old copy is always removed
/// (the new copy replaces it), whatever the delete policy says about origin deletes.
fn removal(key: &SecretPath, old: &DestEntry, policy: DeletePolicy, moved: bool) -> Action {
    let policy = if moved { DeletePolicy::Mirror } else { policy };
    match (policy, old.origin.kind) {
        (DeletePolicy::Mirror, kind) => Action::Delete {
            key: key.clone(),
            kind,
            target: old.target.clone(),
        },
        (DeletePolicy::Soft, KvVersion::V2) => Action::SoftDelete {
            key: key.clone(),
            target: old.target.clone(),
        },
        (DeletePolicy::Soft, KvVersion::V1) | (DeletePolicy::Ignore, _) => {
            Action::Forget { key: key.clone() }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(version: u64, created: &str) -> OriginEntry {
        OriginEntry {
            kind: KvVersion::V2,
            current_version: version,
            created_time: created.into(),
            current_live: true,
            digest: Some(crate::Digest([version as u8; 32])),
        }
    }

    fn v1() -> OriginEntry {
        OriginEntry {
            kind: KvVersion::V1,
            current_version: 0,
            created_time: String::new(),
            current_live: true,
            digest: None,
        }
    }

    fn key(p: &str) -> SecretPath {
        SecretPath::new("secret/", p)
    }

    fn identity(k: &SecretPath) -> Option<DestPath> {
        Some(DestPath {
            mount: k.mount.to_string(),
            path: k.path.clone(),
        })
    }

    fn copied(entry: &OriginEntry, k: &SecretPath) -> DestEntry {
        DestEntry::new(entry.clone(), identity(k).expect("target"))
    }

    /// Applies the plan to the state the way a fully successful cycle would.
    fn apply(origin: &OriginSnapshot, dest: &mut DestinationState, plan: &Plan) {
        for a in &plan.writes {
            let k = a.key();
            let target = match a {
                Action::CopyV2 { target, .. } | Action::SyncV1 { target, .. } => target.clone(),
                Action::Record { target, .. } => target.clone(),
                _ => unreachable!(),
            };
            let mut e = copied(&origin[k], k);
            e.target = target;
            dest.insert(k.clone(), e);
        }
        for a in &plan.removals {
            let k = a.key();
            let still_written = plan.writes.iter().any(|w| w.key() == k);
            if still_written {
                continue;
            }
            // A secret still at the origin (but gone) leaves a tombstone.
            match (origin.get(k), dest.get(k)) {
                (Some(e), Some(old)) if e.is_gone() && !matches!(a, Action::Forget { .. }) => {
                    let t = old.target.clone();
                    dest.insert(k.clone(), DestEntry::new(e.clone(), t));
                }
                _ => {
                    dest.remove(k);
                }
            }
        }
    }

    #[test]
    fn a_failed_mapping_leaves_the_secret_alone_and_is_reported() {
        let origin: OriginSnapshot = [(key("a"), v2(4, "t1")), (key("b"), v2(2, "t1"))].into();
        let dest: DestinationState = [(key("a"), copied(&v2(3, "t1"), &key("a")))].into();
        let failing = |k: &SecretPath| if k.path == "a" { Mapping::Failed } else { identity(k).into() };
        let plan = plan_latest(&origin, &dest, PlanOptions::default(), failing);
        assert_eq!(plan.failed, vec![key("a")]);
        assert!(plan.removals.is_empty(), "no delete for a failed mapping: {plan:?}");
        assert_eq!(plan.writes.len(), 1, "b is still copied");
        assert_eq!(plan.writes[0].key(), &key("b"));
    }

    #[test]
    fn first_cycle_adds_everything() {
        let origin: OriginSnapshot = [(key("a"), v2(3, "t1")), (key("b"), v1())].into();
        let plan = plan_latest(&origin, &DestinationState::new(), PlanOptions::default(), identity);
        assert_eq!(plan.writes.len(), 2);
        assert!(matches!(plan.writes[0], Action::CopyV2 { version: 3, reason: CopyReason::Add, .. }));
        assert!(matches!(plan.writes[1], Action::SyncV1 { .. }));
        assert!(plan.removals.is_empty());
    }

    #[test]
    fn unchanged_kv2_plans_nothing_but_kv1_is_always_checked() {
        let origin: OriginSnapshot = [(key("a"), v2(3, "t1")), (key("b"), v1())].into();
        let dest: DestinationState = origin.iter().map(|(k, e)| (k.clone(), copied(e, k))).collect();
        let plan = plan_latest(&origin, &dest, PlanOptions::default(), identity);
        assert_eq!(plan.unchanged, 1);
        assert_eq!(plan.writes.len(), 1);
        assert!(matches!(plan.writes[0], Action::SyncV1 { .. }));
    }

    #[test]
    fn new_version_updates_and_recreation_is_detected_even_with_more_versions() {
        let k = key("a");
        let dest: DestinationState = [(k.clone(), copied(&v2(3, "t1"), &k))].into();
        let plan = plan_latest(&[(k.clone(), v2(4, "t1"))].into(), &dest, PlanOptions::default(), identity);
        assert!(matches!(plan.writes[0], Action::CopyV2 { version: 4, reason: CopyReason::Update, .. }));
        // Re-created with a higher version count: only created_time reveals it.
        let plan = plan_latest(&[(k.clone(), v2(5, "t2"))].into(), &dest, PlanOptions::default(), identity);
        assert!(matches!(plan.writes[0], Action::CopyV2 { version: 5, reason: CopyReason::Recreated, .. }));
        // Destination ahead of origin (re-created with fewer versions) is copied too.
        let plan = plan_latest(&[(k.clone(), v2(1, "t1"))].into(), &dest, PlanOptions::default(), identity);
        assert!(matches!(plan.writes[0], Action::CopyV2 { version: 1, .. }));
    }

    #[test]
    fn deleted_or_destroyed_current_version_is_a_delete() {
        let k = key("a");
        let dest: DestinationState = [(k.clone(), copied(&v2(3, "t1"), &k))].into();
        let mut gone = v2(3, "t1");
        gone.current_live = false;
        let plan = plan_latest(&[(k.clone(), gone.clone())].into(), &dest, PlanOptions::default(), identity);
        assert!(plan.writes.is_empty());
        assert!(matches!(plan.removals[0], Action::Delete { kind: KvVersion::V2, .. }));
        // Never copied and not live: only a tombstone is recorded (no Vault I/O).
        let plan = plan_latest(&[(k.clone(), gone.clone())].into(), &DestinationState::new(), PlanOptions::default(), identity);
        assert!(plan.removals.is_empty());
        assert!(matches!(plan.writes[..], [Action::Record { .. }]));
        // Tombstone recorded: nothing more.
        let tomb: DestinationState = [(k.clone(), copied(&gone, &k))].into();
        assert!(plan_latest(&[(k.clone(), gone)].into(), &tomb, PlanOptions::default(), identity).is_empty());
        // Undeleted at origin: copied again.
        let plan = plan_latest(&[(k, v2(3, "t1"))].into(), &tomb, PlanOptions::default(), identity);
        assert!(matches!(plan.writes[0], Action::CopyV2 { version: 3, .. }));
    }

    #[test]
    fn delete_policies() {
        let (a, b) = (key("a"), key("b"));
        let dest: DestinationState =
            [(a.clone(), copied(&v2(1, "t"), &a)), (b.clone(), copied(&v1(), &b))].into();
        let origin = OriginSnapshot::new();
        let mirror = plan_latest(&origin, &dest, PlanOptions::latest(DeletePolicy::Mirror), identity);
        assert_eq!(mirror.delete_count(), 2);
        let soft = plan_latest(&origin, &dest, PlanOptions::latest(DeletePolicy::Soft), identity);
        assert!(matches!(soft.removals[0], Action::SoftDelete { .. }));
        assert!(matches!(soft.removals[1], Action::Forget { .. }), "KV v1 has no soft delete");
        let ignore = plan_latest(&origin, &dest, PlanOptions::latest(DeletePolicy::Ignore), identity);
        assert_eq!(ignore.delete_count(), 0);
        assert_eq!(ignore.removals.len(), 2);
    }

    #[test]
    fn target_change_moves_the_secret() {
        let k = key("prod/app");
        let e = v2(2, "t");
        let dest: DestinationState = [(k.clone(), copied(&e, &k))].into();
        let moved = |k: &SecretPath| Some(DestPath { mount: "other/".into(), path: k.path.clone() });
        let plan = plan_latest(&[(k.clone(), e)].into(), &dest, PlanOptions::latest(DeletePolicy::Ignore), moved);
        assert!(matches!(plan.writes[0], Action::CopyV2 { reason: CopyReason::Move, .. }));
        assert!(
            matches!(&plan.removals[0], Action::Delete { target, .. } if target.mount == "secret/"),
            "the old copy is removed even with deletes = ignore"
        );
    }

    #[test]
    fn out_of_scope_secret_is_removed() {
        let k = key("a");
        let e = v2(1, "t");
        let dest: DestinationState = [(k.clone(), copied(&e, &k))].into();
        let plan = plan_latest(&[(k, e)].into(), &dest, PlanOptions::default(), |_| None);
        assert!(plan.writes.is_empty());
        assert_eq!(plan.delete_count(), 1);
    }

    #[test]
    fn applying_a_plan_then_replanning_only_rechecks_kv1() {
        // A deterministic pseudo-random sweep over many small worlds (a light property test).
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..500 {
            let mut origin = OriginSnapshot::new();
            let mut dest = DestinationState::new();
            for i in 0..(next() % 12) {
                let k = key(&format!("k{i}"));
                let r = next();
                let mut e = if r % 4 == 0 { v1() } else { v2(r % 5, if r % 3 == 0 { "t1" } else { "t2" }) };
                e.current_live = r % 7 != 0;
                if r % 2 == 0 {
                    origin.insert(k.clone(), e.clone());
                }
                if r % 5 < 2 {
                    let mut old = copied(&v2(next() % 5, "t1"), &k);
                    old.origin.kind = if next() % 4 == 0 { KvVersion::V1 } else { KvVersion::V2 };
                    dest.insert(k, old);
                }
            }
            let plan = plan_latest(&origin, &dest, PlanOptions::default(), identity);
            apply(&origin, &mut dest, &plan);
            let again = plan_latest(&origin, &dest, PlanOptions::default(), identity);
            assert!(again.removals.is_empty(), "{again:?}");
            assert!(
                again.writes.iter().all(|a| matches!(a, Action::SyncV1 { .. })),
                "{again:?}"
            );
        }
    }

    #[test]
    fn metadata_only_change_is_recorded_without_copying() {
        let k = key("a");
        let e = v2(3, "t1");
        let dest: DestinationState = [(k.clone(), copied(&e, &k))].into();
        let mut changed = e.clone();
        changed.digest = Some(crate::Digest([0xEE; 32]));
        let plan = plan_latest(&[(k.clone(), changed)].into(), &dest, PlanOptions::default(), identity);
        assert_eq!(plan.writes, vec![Action::Record { key: k.clone(), target: identity(&k).expect("target") }]);
    }

    #[test]
    fn keyed_kv1_digest_skips_the_value_check() {
        let k = key("v1");
        let mut e = v1();
        e.digest = Some(crate::Digest([7; 32]));
        let dest: DestinationState = [(k.clone(), copied(&e, &k))].into();
        assert!(plan_latest(&[(k.clone(), e.clone())].into(), &dest, PlanOptions::default(), identity).is_empty());
        let mut changed = e;
        changed.digest = Some(crate::Digest([8; 32]));
        let plan = plan_latest(&[(k, changed)].into(), &dest, PlanOptions::default(), identity);
        assert!(matches!(plan.writes[0], Action::SyncV1 { .. }));
    }

    fn world(seed: &mut u64, n: usize) -> (OriginSnapshot, DestinationState) {
        let mut next = || {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *seed
        };
        let mut origin = OriginSnapshot::new();
        let mut dest = DestinationState::new();
        for i in 0..n {
            let k = key(&format!("k{i}"));
            let r = next();
            let mut e = if r % 4 == 0 { v1() } else { v2(r % 5, if r % 3 == 0 { "t1" } else { "t2" }) };
            if e.kind == KvVersion::V1 {
                e.digest = Some(crate::Digest([(r % 3) as u8; 32]));
            }
            e.current_live = r % 7 != 0;
            if r % 2 == 0 {
                origin.insert(k.clone(), e.clone());
            }
            if r % 5 < 2 {
                let mut old = copied(&v2(next() % 5, "t1"), &k);
                if next() % 4 == 0 {
                    old.origin = v1();
                    old.origin.digest = Some(crate::Digest([(next() % 3) as u8; 32]));
                }
                dest.insert(k, old);
            }
        }
        (origin, dest)
    }

    #[test]
    fn bucketed_plans_equal_flat_plans_and_converge_to_nothing() {
        let mut seed = 0x1234_5678_9abc_def1;
        for round in 0..200 {
            let (origin, mut dest) = world(&mut seed, (round % 40) + 1);
            let count = (round % 5 + 1) as u32;
            let oi = crate::SyncInfo::from_entries(count, origin.clone());
            let di = crate::Buckets::from_entries(count, dest.clone());
            let bucketed = plan_buckets(&oi, &oi.digests(), &di, &di.digests(), false, PlanOptions::default(), identity);
            let flat = plan_latest(&origin, &dest, PlanOptions::default(), identity);
            let sorted = |mut v: Vec<Action>| {
                v.sort_by(|a, b| a.key().cmp(b.key()));
                v
            };
            assert_eq!(sorted(bucketed.writes.clone()), sorted(flat.writes.clone()));
            assert_eq!(sorted(bucketed.removals.clone()), sorted(flat.removals.clone()));
            // An info compared with itself plans nothing.
            let mirror: DestinationState = origin.iter().map(|(k, e)| (k.clone(), copied(e, k))).collect();
            let mi = crate::Buckets::from_entries(count, mirror);
            assert_eq!(mi.digests(), oi.digests(), "same entries, same digests");
            assert!(plan_buckets(&oi, &oi.digests(), &mi, &mi.digests(), false, PlanOptions::default(), identity).is_empty());
            // Applying a plan then re-comparing plans nothing.
            apply(&origin, &mut dest, &flat);
            let di = crate::Buckets::from_entries(count, dest.clone());
            let again = plan_buckets(&oi, &oi.digests(), &di, &di.digests(), false, PlanOptions::default(), identity);
            assert!(again.is_empty(), "{again:?}");
            assert_eq!(di.digests(), oi.digests(), "after a good cycle the infos are equal bucket by bucket");
        }
    }
}

//! Destination targets that no origin key is recorded at: what a cycle remembers before it
//! writes new targets, and what `vsync verify --repair` asks to remove.
//!
//! A cycle that fails or is aborted commits nothing, so a key it wrote is unknown to the next
//! cycle; if the origin deleted that key in between, no plan would ever remove its copy. So
//! before a cycle writes a target that its key's recorded entry does not name, the target is
//! committed into the destination's info as an *orphan*: an entry under a reserved origin mount
//! ([`ORPHAN_MOUNT`]) that no origin key can use (a NUL byte never reaches a Vault path). The
//! planner sees an orphan as a destination-only key: it is removed under the `deletes` policy
//! and the mass-delete guard, unless the new info assigns its target to a key, in which case
//! the removal becomes a forget (see `cycle::plan_cycle`'s collision check). After the cycle,
//! the orphans of targets its writes recorded are dropped; the others stay, durably.

use std::collections::HashMap;

use crate::info::Buckets;
use crate::plan::{Action, Plan};
use crate::types::{DestEntry, DestPath, ExactState, KvVersion, OriginEntry, SecretPath};

/// The origin mount of orphan entries. It cannot be a real mount: normalised mounts hold no
/// NUL byte, and servers refuse control characters in paths.
pub const ORPHAN_MOUNT: &str = "\u{0}orphan/";

/// The key an orphan of `target` is recorded under.
pub fn orphan_key(target: &DestPath) -> SecretPath {
    SecretPath::new(ORPHAN_MOUNT, format!("{}{}", target.mount, target.path))
}

/// Whether `key` is an orphan's.
pub fn is_orphan(key: &SecretPath) -> bool {
    key.mount == ORPHAN_MOUNT
}

/// An orphan entry at `target`. It always has a copy (so a plan removes it) and matches no
/// origin entry.
pub fn orphan_entry(target: DestPath) -> DestEntry {
    let origin = OriginEntry { kind: KvVersion::V2, current_version: 0, created_time: String::new(), current_live: true, digest: None };
    DestEntry { origin, target, exact: Some(ExactState::default()), dest_version: None }
}

/// Records an orphan at each of `targets` (an entry already there is kept).
pub fn remember(entries: &mut Buckets<DestEntry>, targets: &[DestPath]) {
    for t in targets {
        let key = orphan_key(t);
        if entries.get(&key).is_none() {
            entries.insert(key, orphan_entry(t.clone()));
        }
    }
}

/// The targets `plan` writes that the info does not record for their key: what must be
/// remembered before the writes start.
pub fn unrecorded_targets(plan: &Plan, entries: &Buckets<DestEntry>) -> Vec<DestPath> {
    plan.writes
        .iter()
        .filter_map(|a| match a {
            Action::CopyV2 { key, target, .. } | Action::ExactV2 { key, target, .. } | Action::SyncV1 { key, target } => {
                (entries.get(key).map(|e| &e.target) != Some(target)).then(|| target.clone())
            }
            _ => None,
        })
        .collect()
}

/// The key each target of `plan`'s writes belongs to.
fn writers(plan: &Plan) -> HashMap<&DestPath, &SecretPath> {
    plan.writes
        .iter()
        .filter_map(|a| match a {
            Action::CopyV2 { key, target, .. } | Action::ExactV2 { key, target, .. } | Action::SyncV1 { key, target } => Some((target, key)),
            _ => None,
        })
        .collect()
}

/// Whether `target`'s writer in `plan` now records it (its write succeeded).
fn recorded(entries: &Buckets<DestEntry>, writers: &HashMap<&DestPath, &SecretPath>, target: &DestPath) -> bool {
    writers.get(target).is_some_and(|k| entries.get(k).is_some_and(|e| e.target == *target))
}

/// After a cycle settled: drops the orphans of `remembered` targets that a key now records
/// (its write succeeded). The others stay until a later plan removes or forgets them.
pub fn resolve(entries: &mut Buckets<DestEntry>, remembered: &[DestPath], plan: &Plan) {
    let writers = writers(plan);
    for t in remembered {
        if recorded(entries, &writers, t) {
            entries.remove(&orphan_key(t));
        }
    }
}

/// The orphans `plan` forgets because a key of the new info is written to their target (the
/// removal became a forget), as recorded before the cycle: taken before settling, for
/// [`keep_unclaimed`].
pub fn claimed_forgets(plan: &Plan, entries: &Buckets<DestEntry>) -> Vec<(SecretPath, DestEntry)> {
    let writers = writers(plan);
    plan.removals
        .iter()
        .filter_map(|a| match a {
            Action::Forget { key } if is_orphan(key) => entries.get(key).filter(|e| writers.contains_key(&e.target)).map(|e| (key.clone(), e.clone())),
            _ => None,
        })
        .collect()
}

/// After a cycle settled: an orphan forgotten for a key whose write did not record the target
/// (skipped because the origin changed since the scan, or failed) is kept, or the copy an
/// earlier cycle left there would be known to no one.
pub fn keep_unclaimed(entries: &mut Buckets<DestEntry>, forgotten: Vec<(SecretPath, DestEntry)>, plan: &Plan) {
    let writers = writers(plan);
    for (key, entry) in forgotten {
        if !recorded(entries, &writers, &entry.target) && entries.get(&key).is_none() {
            entries.insert(key, entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(p: &str) -> DestPath {
        DestPath { mount: "secret/".into(), path: p.into() }
    }

    #[test]
    fn only_targets_a_key_does_not_record_are_remembered_and_resolved_once_recorded() {
        let mut entries: Buckets<DestEntry> = Buckets::new(4);
        let key = |p: &str| SecretPath::new("secret/", p);
        let live = OriginEntry { kind: KvVersion::V2, current_version: 1, created_time: "t".into(), current_live: true, digest: None };
        entries.insert(key("known"), DestEntry::new(live.clone(), target("known")));
        let add = |p: &str| Action::CopyV2 { key: key(p), version: 1, target: target(p), reason: crate::plan::CopyReason::Add };
        let plan = Plan { writes: vec![add("known"), add("new"), add("failed")], ..Plan::default() };
        let journal = unrecorded_targets(&plan, &entries);
        assert_eq!(journal, vec![target("new"), target("failed")]);
        remember(&mut entries, &journal);
        assert!(entries.get(&orphan_key(&target("new"))).is_some_and(DestEntry::has_copy));
        // `new` was written and recorded; `failed` was not.
        entries.insert(key("new"), DestEntry::new(live, target("new")));
        resolve(&mut entries, &journal, &plan);
        assert!(entries.get(&orphan_key(&target("new"))).is_none());
        assert!(entries.get(&orphan_key(&target("failed"))).is_some());
        assert!(is_orphan(&orphan_key(&target("failed"))) && !is_orphan(&key("failed")));
    }
}

//! Keys a cycle is about to change at the destination, marked in the info before it writes.
//!
//! A cycle that fails or is killed after changing a destination copy commits nothing, so the
//! info still records the copy as it was. If the origin then returns to exactly the state the
//! info recorded (a version deleted and undeleted, a latest version deleted and undeleted),
//! the next scan matches the record and no plan would ever repair the copy the failed cycle
//! changed. So before a cycle changes a copy the info records, the journal commit (see
//! [`crate::orphans`]) stores that key's entry marked *in flight*, in a way no scan can
//! produce, so the next plan sees the key as changed and compares the destination again:
//!
//! - an exact replica (`versions = "all"`) gets the digest [`IN_FLIGHT_DIGEST`]: the next plan
//!   inspects it exactly (its recorded version and creation time, which the inspection relies
//!   on to tell foreign writes, stay true);
//! - any other entry gets `current_version` [`IN_FLIGHT_VERSION`] and counts as having a copy
//!   (a tombstone the cycle wrote over may have one now): the next plan copies it again (a CAS
//!   write that falls back to reading the copy) or removes it.
//!
//! The mark changes the entry's bucket digest too, so the bucket is planned again. The settled
//! commit records the real entry; a key whose action failed stays marked until a cycle
//! handles it.

use crate::digest::Digest;
use crate::info::Buckets;
use crate::plan::{Action, Plan};
use crate::types::DestEntry;

/// The recorded `current_version` of an entry in flight (no KV v2 key reaches it).
pub const IN_FLIGHT_VERSION: u64 = u64::MAX;

/// The recorded digest of an exact replica in flight (no metadata hashes to it).
pub const IN_FLIGHT_DIGEST: Digest = Digest([0; 32]);

/// Whether a recorded entry is marked in flight.
pub fn is_in_flight(entry: &DestEntry) -> bool {
    entry.origin.current_version == IN_FLIGHT_VERSION || entry.origin.digest == Some(IN_FLIGHT_DIGEST)
}

/// Marks the recorded entry of every key whose copy `plan` changes at the destination (writes,
/// deletes, soft deletes; not records or forgets, which touch no Vault, nor KV v1 values
/// recorded without a digest, which every cycle compares anyway); returns how many entries it
/// newly marked, 0 when the journal commit has nothing to add for them.
pub fn mark(entries: &mut Buckets<DestEntry>, plan: &Plan) -> usize {
    let mut marked = 0;
    for action in plan.writes.iter().chain(&plan.removals) {
        let (key, target) = match action {
            Action::CopyV2 { key, target, .. }
            | Action::ExactV2 { key, target, .. }
            | Action::SyncV1 { key, target }
            | Action::Delete { key, target, .. }
            | Action::SoftDelete { key, target } => (key, target),
            Action::Record { .. } | Action::Forget { .. } => continue,
        };
        let Some(entry) = entries.get(key) else { continue };
        if entry.target != *target || is_in_flight(entry) {
            continue; // a new target is journalled as an orphan instead
        }
        if matches!(action, Action::SyncV1 { .. }) && entry.origin.digest.is_none() {
            continue; // no digest to trust: every cycle compares the values anyway
        }
        let mut entry = entry.clone();
        match entry.exact {
            Some(_) => entry.origin.digest = Some(IN_FLIGHT_DIGEST),
            // A tombstone (no live version recorded) may have a copy now: count it as one, so
            // the key's departure removes it.
            None => {
                entry.origin.current_version = IN_FLIGHT_VERSION;
                entry.origin.current_live = true;
            }
        }
        entries.insert(key.clone(), entry);
        marked += 1;
    }
    marked
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::CopyReason;
    use crate::types::{DestPath, ExactState, KvVersion, OriginEntry, SecretPath};

    fn dp(path: &str) -> DestPath {
        DestPath { mount: "secret/".into(), path: path.into() }
    }

    fn entry(exact: bool) -> DestEntry {
        let origin = OriginEntry { kind: KvVersion::V2, current_version: 3, created_time: "t".into(), current_live: true, digest: Some(Digest([7; 32])) };
        DestEntry { origin, target: dp("k"), exact: exact.then(ExactState::default), dest_version: Some(3) }
    }

    #[test]
    fn changed_copies_are_marked_so_no_scan_matches_them_and_exact_state_stays_true() {
        for exact in [false, true] {
            let mut entries = Buckets::new(1);
            let key = SecretPath::new("secret/", "k");
            entries.insert(key.clone(), entry(exact));
            let mut plan = Plan::default();
            plan.writes.push(Action::ExactV2 { key: key.clone(), target: dp("k"), reason: CopyReason::Update });
            assert_eq!(mark(&mut entries, &plan), 1);
            let marked = entries.get(&key).unwrap();
            assert!(is_in_flight(marked));
            assert_ne!(marked.origin, entry(exact).origin, "a scan's entry never equals a marked one");
            // What the exact inspection relies on is untouched.
            assert_eq!(marked.origin.created_time, "t");
            assert_eq!(marked.origin.current_version == 3, exact);
            assert_eq!(mark(&mut entries, &plan), 0, "marking twice adds nothing to commit");
        }
    }

    #[test]
    fn a_tombstone_written_over_counts_as_a_copy_once_marked() {
        let mut entries = Buckets::new(1);
        let key = SecretPath::new("secret/", "k");
        let mut tombstone = entry(false);
        tombstone.origin.current_live = false;
        assert!(!tombstone.has_copy());
        entries.insert(key.clone(), tombstone);
        let mut plan = Plan::default();
        plan.writes.push(Action::CopyV2 { key: key.clone(), version: 4, target: dp("k"), reason: CopyReason::Update });
        assert_eq!(mark(&mut entries, &plan), 1);
        assert!(entries.get(&key).unwrap().has_copy(), "a later departure of the key removes what this cycle wrote");
    }

    #[test]
    fn new_targets_and_records_are_not_marked() {
        let mut entries = Buckets::new(1);
        let key = SecretPath::new("secret/", "k");
        entries.insert(key.clone(), entry(false));
        let mut plan = Plan::default();
        plan.writes.push(Action::CopyV2 { key: key.clone(), version: 4, target: dp("moved"), reason: CopyReason::Move });
        plan.writes.push(Action::Record { key: key.clone(), target: dp("k") });
        assert_eq!(mark(&mut entries, &plan), 0);
        assert!(!is_in_flight(entries.get(&key).unwrap()));
    }
}

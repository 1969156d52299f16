//! `versions = "all"`: the per-key decisions that make a destination KV v2 key an exact
//! replica of the origin's with the stock API (README "`versions = "all"`").
//!
//! The server numbers versions itself (a data write always creates `current_version + 1`), so
//! the destination reaches the origin's numbers by writing every missing version in order:
//! live origin versions with their data, the others (destroyed, soft-deleted, or below the
//! origin's `oldest_version`) with a [`PLACEHOLDER`] that is then pruned, soft-deleted or
//! destroyed so that nothing readable differs. A retention window set before the writes makes
//! the destination prune exactly what the origin pruned. Flags and key settings are then
//! copied with flag and metadata calls, never with data rewrites.
//!
//! A key is rebuilt (its destination metadata deleted and rewritten) when it was re-created
//! at the origin, when the destination is ahead of the origin or differs from what vsync
//! wrote, or when a placeholder version became live at the origin (version data cannot be
//! replaced in place). A destination key found without state that already matches the origin
//! is adopted without a write.
//!
//! Everything here is pure: [`plan_key`] turns the two metadata documents and the
//! destination's per-key state into a [`KeyPlan`] that the engine executes.

use std::collections::{BTreeMap, BTreeSet};

use crate::digest::MetadataDigest;
use crate::types::{KvVersion, OriginEntry};

/// The data written for a version whose origin data cannot be read (destroyed, soft-deleted,
/// or pruned at the origin). It never stays readable: it is pruned, soft-deleted or destroyed
/// in the same cycle, as the origin's version is.
pub const PLACEHOLDER: &str = r#"{"vsync_placeholder":"this version is not readable at the origin"}"#;

/// What a KV v2 key keeps when neither it nor its mount sets `max_versions`.
pub const DEFAULT_MAX_VERSIONS: u64 = 10;

/// Whether the scan proves `entry` is a key with exactly one version, live, never pruned and
/// with default settings (no `max_versions`, `cas_required`, `delete_version_after` or custom
/// metadata), as a key created by one data write is. Such a key, new at a destination, is
/// replicated exactly by one create-only write of version 1: no metadata read on either side.
///
/// The proof is the entry's metadata digest: it must equal the digest of exactly that metadata
/// (version 1 written at the key's `created_time`, which is how KV v2 stamps a new key), so
/// any other key, however close, takes the full path.
pub fn is_single_default_version(entry: &OriginEntry) -> bool {
    entry.kind == KvVersion::V2
        && entry.current_version == 1
        && entry.current_live
        && entry.digest
            == Some(
                MetadataDigest {
                    current_version: 1,
                    oldest_version: 0,
                    created_time: &entry.created_time,
                    max_versions: 0,
                    cas_required: false,
                    delete_version_after: "0s",
                    custom_metadata: Vec::new(),
                    versions: vec![(1, &entry.created_time, "", false)],
                }
                .digest(),
            )
}

/// Settings of a KV v2 key that vsync copies.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeySettings {
    /// `max_versions`.
    pub max_versions: u64,
    /// `cas_required`.
    pub cas_required: bool,
    /// `delete_version_after` as the server prints it (`0s`, `1h0m0s`).
    pub delete_version_after: String,
    /// `custom_metadata`.
    pub custom_metadata: BTreeMap<String, String>,
}

/// One version's flags, as of the time the metadata was read. The two are independent: a
/// version can be soft-deleted and then destroyed, and keeps its deletion time (the server
/// refuses neither order, but a soft delete or an undelete of a destroyed version changes
/// nothing, so a replica reproduces "deleted and destroyed" by deleting first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VersionFlags {
    /// Soft-deleted: its `deletion_time` has passed (or is set at all, once destroyed).
    pub deleted: bool,
    /// Destroyed.
    pub destroyed: bool,
}

impl VersionFlags {
    /// Readable.
    pub fn live(self) -> bool {
        !self.deleted && !self.destroyed
    }
}

/// The reproducible part of a KV v2 key's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyMeta {
    /// `current_version` (0: metadata only).
    pub current_version: u64,
    /// `oldest_version` (0 until the first prune, 1.. after).
    pub oldest_version: u64,
    /// `created_time` (changes only when the key is re-created).
    pub created_time: String,
    /// Settings.
    pub settings: KeySettings,
    /// Every version the server keeps, with its flags.
    pub versions: BTreeMap<u64, VersionFlags>,
}

impl KeyMeta {
    /// Whether `other` equals this key on every field vsync reproduces (not timestamps).
    pub fn same_replica(&self, other: &KeyMeta) -> bool {
        self.current_version == other.current_version
            && self.oldest_version == other.oldest_version
            && self.settings == other.settings
            && self.versions == other.versions
    }
}

/// What the destination remembers about a key it wrote in `all` mode.
#[derive(Debug, Clone, Copy)]
pub struct KeyState<'a> {
    /// The origin `created_time` it copied.
    pub origin_created_time: &'a str,
    /// Destination versions that hold a placeholder.
    pub placeholders: &'a [u64],
    /// The `current_version` vsync left the destination key at.
    pub written_version: u64,
}

/// Where a written version's data comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSource {
    /// Read the origin at exactly this version.
    Origin,
    /// Write [`PLACEHOLDER`].
    Placeholder,
}

/// Why a key is rebuilt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebuildReason {
    /// The origin key was re-created (its `created_time` changed).
    Recreated,
    /// The destination is ahead of the origin.
    Ahead,
    /// The destination differs from what vsync wrote there (someone else changed it), or it
    /// was found without state and does not match the origin.
    Diverged,
    /// A placeholder version is live at the origin again (undeleted).
    PlaceholderUndeleted,
}

/// What to do with one key. Steps run in field order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyPlan {
    /// Delete the destination key (all versions and metadata) first.
    pub rebuild: Option<RebuildReason>,
    /// Found without state and equal on metadata: compare the data of these live versions;
    /// if all are equal the key is adopted as it is, otherwise it is rebuilt
    /// ([`plan_rebuild`]).
    pub adopt_if_equal: Option<Vec<u64>>,
    /// Before the writes: the retention window (`max_versions`) that makes the destination
    /// prune what the origin pruned, with `delete_version_after` off and `cas_required` off.
    pub window: Option<u64>,
    /// Versions to write, in order, each with `cas` = version - 1.
    pub writes: Vec<(u64, VersionSource)>,
    /// Versions to destroy.
    pub destroy: Vec<u64>,
    /// Versions to soft-delete.
    pub delete: Vec<u64>,
    /// Versions to undelete.
    pub undelete: Vec<u64>,
    /// Settings to write last, when they differ (or were changed for the writes).
    pub settings: Option<KeySettings>,
    /// Destination versions that hold a placeholder after this plan.
    pub placeholders: Vec<u64>,
}

impl KeyPlan {
    /// Whether the plan writes or changes nothing.
    pub fn is_empty(&self) -> bool {
        self.rebuild.is_none()
            && self.adopt_if_equal.is_none()
            && self.window.is_none()
            && self.writes.is_empty()
            && self.destroy.is_empty()
            && self.delete.is_empty()
            && self.undelete.is_empty()
            && self.settings.is_none()
    }

    /// Data writes the plan makes (what bootstrapping costs: `current_version` writes).
    pub fn data_writes(&self) -> usize {
        self.writes.len()
    }
}

/// Plans one key. `dest` is the destination key's metadata (`None`: missing); `state` what
/// the destination recorded when it last wrote the key (`None`: never, or the state was lost).
pub fn plan_key(origin: &KeyMeta, dest: Option<&KeyMeta>, state: Option<KeyState<'_>>) -> KeyPlan {
    let Some(dm) = dest else {
        return catch_up(origin, None, &[]);
    };
    let Some(state) = state else {
        // No state: adopt a key that already is a replica (after the data check), else rebuild.
        if origin.same_replica(dm) {
            let live: Vec<u64> = origin.versions.iter().filter(|(_, f)| f.live()).map(|(v, _)| *v).collect();
            // Versions not readable at the origin may hold anything here: treat them as
            // placeholders, so an undelete at the origin rebuilds the key.
            let placeholders = origin.versions.iter().filter(|(_, f)| !f.live()).map(|(v, _)| *v).collect();
            return KeyPlan { adopt_if_equal: Some(live), placeholders, ..KeyPlan::default() };
        }
        return plan_rebuild(origin, RebuildReason::Diverged);
    };
    if state.origin_created_time != origin.created_time {
        return plan_rebuild(origin, RebuildReason::Recreated);
    }
    if dm.current_version > origin.current_version {
        return plan_rebuild(origin, RebuildReason::Ahead);
    }
    // Someone else wrote (or removed) versions since vsync did: a version with the origin's
    // number may hold other data, which no metadata shows.
    if dm.current_version != state.written_version {
        return plan_rebuild(origin, RebuildReason::Diverged);
    }
    if state
        .placeholders
        .iter()
        .any(|v| origin.versions.get(v).is_some_and(|f| f.live()) && dm.versions.contains_key(v))
    {
        return plan_rebuild(origin, RebuildReason::PlaceholderUndeleted);
    }
    // A destroyed version's flags can no longer change here: one destroyed here but not at the
    // origin was changed by someone else, and one whose deletion differs from the origin's
    // (deleted, then destroyed, at the origin between two cycles of an older vsync) can only
    // be reproduced by writing the key again.
    if dm
        .versions
        .iter()
        .any(|(v, f)| f.destroyed && origin.versions.get(v).is_some_and(|o| !o.destroyed || o.deleted != f.deleted))
    {
        return plan_rebuild(origin, RebuildReason::Diverged);
    }
    catch_up(origin, Some(dm), state.placeholders)
}

/// Plans a rebuild: delete the destination key, then write it from scratch.
pub fn plan_rebuild(origin: &KeyMeta, reason: RebuildReason) -> KeyPlan {
    KeyPlan { rebuild: Some(reason), ..catch_up(origin, None, &[]) }
}

/// Writes the missing versions, then copies flags and settings.
fn catch_up(origin: &KeyMeta, dest: Option<&KeyMeta>, placeholders: &[u64]) -> KeyPlan {
    let mut plan = KeyPlan::default();
    let c = origin.current_version;
    let dcur = dest.map_or(0, |d| d.current_version);
    // The destination's versions after the writes, with their flags (written ones are live).
    let mut after: BTreeMap<u64, VersionFlags> = dest.map(|d| d.versions.clone()).unwrap_or_default();
    let mut holders: BTreeSet<u64> = placeholders.iter().copied().collect();
    let mut settings_changed = false;
    // A new key starts with the server's defaults: no max_versions of its own (the mount's 0
    // means 10), no cas_required, delete_version_after 0s.
    let defaults = KeySettings { delete_version_after: "0s".into(), ..KeySettings::default() };
    if c > dcur {
        // Keep exactly the origin's window while catching up: versions below `oldest` are
        // pruned by the writes themselves. oldest 0 means never pruned.
        let window = if origin.oldest_version >= 1 { c - origin.oldest_version + 1 } else { c + 1 };
        // A new key whose default retention (10) prunes exactly as the origin did needs no
        // window write: most keys, whose few versions were never pruned.
        let default_fits = if origin.oldest_version == 0 { c < DEFAULT_MAX_VERSIONS } else { window == DEFAULT_MAX_VERSIONS };
        if dest.is_some() || !default_fits {
            plan.window = Some(window);
            settings_changed = true;
        }
        for v in dcur + 1..=c {
            let source = match origin.versions.get(&v) {
                Some(f) if f.live() => VersionSource::Origin,
                _ => VersionSource::Placeholder,
            };
            if source == VersionSource::Placeholder {
                holders.insert(v);
            }
            plan.writes.push((v, source));
            after.insert(v, VersionFlags::default());
        }
        // What the window prunes.
        let keep_from = c.saturating_sub(window - 1).max(1);
        after.retain(|v, _| *v >= keep_from);
    }
    // Flags of versions that are not destroyed here yet (plan_key rebuilds the others); the
    // engine undeletes and deletes before it destroys.
    for (v, want) in &origin.versions {
        let Some(have) = after.get(v).filter(|h| !h.destroyed) else { continue };
        if want.deleted && !have.deleted {
            plan.delete.push(*v);
        } else if !want.deleted && have.deleted {
            plan.undelete.push(*v);
        }
        if want.destroyed {
            plan.destroy.push(*v);
        }
    }
    let dest_settings = dest.map_or(&defaults, |d| &d.settings);
    // A key with metadata only is created by its settings write, whatever they are.
    let creates_nothing = dest.is_none() && plan.writes.is_empty();
    if settings_changed || creates_nothing || *dest_settings != origin.settings {
        plan.settings = Some(origin.settings.clone());
    }
    holders.retain(|v| after.contains_key(v));
    plan.placeholders = holders.into_iter().collect();
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_digest_of_exactly_one_default_version_proves_a_simple_key() {
        let created = "2026-12-02T07:00:00.123456789Z";
        let digest = |current: u64, dva: &str, versions: Vec<(u64, &str, &str, bool)>| {
            Some(
                MetadataDigest {
                    current_version: current,
                    oldest_version: 0,
                    created_time: created,
                    max_versions: 0,
                    cas_required: false,
                    delete_version_after: dva,
                    custom_metadata: Vec::new(),
                    versions,
                }
                .digest(),
            )
        };
        let entry = |current: u64, live: bool, d| OriginEntry {
            kind: KvVersion::V2,
            current_version: current,
            created_time: created.into(),
            current_live: live,
            digest: d,
        };
        assert!(is_single_default_version(&entry(1, true, digest(1, "0s", vec![(1, created, "", false)]))));
        // Anything else takes the full path: another setting, a later version time, a deleted
        // version, no digest, a second version, KV v1.
        for e in [
            entry(1, true, digest(1, "1h", vec![(1, created, "", false)])),
            entry(1, true, digest(1, "0s", vec![(1, "2026-12-02T07:00:01Z", "", false)])),
            entry(1, false, digest(1, "0s", vec![(1, created, "2026-12-02T08:00:00Z", false)])),
            entry(1, true, None),
            entry(2, true, digest(2, "0s", vec![(1, created, "", false), (2, created, "", false)])),
            OriginEntry { kind: KvVersion::V1, ..entry(1, true, digest(1, "0s", vec![(1, created, "", false)])) },
        ] {
            assert!(!is_single_default_version(&e), "{e:?}");
        }
    }

    /// Origin metadata with versions `from..=to`; `flags` overrides some.
    fn meta(from: u64, to: u64, oldest: u64, flags: &[(u64, VersionFlags)]) -> KeyMeta {
        let mut versions: BTreeMap<u64, VersionFlags> = (from..=to).map(|v| (v, VersionFlags::default())).collect();
        for (v, f) in flags {
            versions.insert(*v, *f);
        }
        KeyMeta {
            current_version: to,
            oldest_version: oldest,
            created_time: "t1".into(),
            settings: KeySettings { delete_version_after: "0s".into(), ..KeySettings::default() },
            versions,
        }
    }

    const DELETED: VersionFlags = VersionFlags { deleted: true, destroyed: false };
    const DESTROYED: VersionFlags = VersionFlags { deleted: false, destroyed: true };

    /// What a destination looks like after executing `plan` on `dest` (the server's rules:
    /// writes create the next version and prune to the window; flags apply).
    fn execute(dest: Option<&KeyMeta>, plan: &KeyPlan, origin: &KeyMeta) -> KeyMeta {
        let mut d = match (dest, plan.rebuild) {
            (Some(d), None) => d.clone(),
            _ => KeyMeta {
                created_time: "dst".into(),
                settings: KeySettings { delete_version_after: "0s".into(), ..KeySettings::default() },
                ..KeyMeta::default()
            },
        };
        if let Some(w) = plan.window {
            d.settings.max_versions = w;
        }
        for (v, _) in &plan.writes {
            assert_eq!(*v, d.current_version + 1, "cas = v - 1 must hold");
            d.current_version = *v;
            d.versions.insert(*v, VersionFlags::default());
            // KV v2 prunes versions beyond `max_versions` only inside a data write.
            let eff = if d.settings.max_versions == 0 { 10 } else { d.settings.max_versions };
            if d.current_version - d.oldest_version >= eff {
                let keep = d.current_version - eff + 1;
                d.versions.retain(|k, _| *k >= keep);
                d.oldest_version = keep;
            }
        }
        // The server's rules (observed on OpenBao 2.7.2): undelete and delete change nothing on
        // a destroyed version; destroy keeps the deletion time. The engine's order.
        for v in &plan.undelete {
            d.versions.entry(*v).and_modify(|f| f.deleted &= f.destroyed);
        }
        for v in &plan.delete {
            d.versions.entry(*v).and_modify(|f| f.deleted |= !f.destroyed);
        }
        for v in &plan.destroy {
            d.versions.entry(*v).and_modify(|f| f.destroyed = true);
        }
        if let Some(s) = &plan.settings {
            d.settings = s.clone();
        }
        let _ = origin;
        d
    }

    fn converges(origin: &KeyMeta, dest: Option<&KeyMeta>, state: Option<KeyState<'_>>) -> (KeyPlan, KeyMeta) {
        let plan = plan_key(origin, dest, state);
        let after = execute(dest, &plan, origin);
        assert!(origin.same_replica(&after), "not exact:\norigin {origin:?}\ndest   {after:?}\nplan {plan:?}");
        let again = plan_key(origin, Some(&after), Some(KeyState { origin_created_time: &origin.created_time, placeholders: &plan.placeholders, written_version: after.current_version }));
        assert!(again.is_empty(), "a second plan must do nothing: {again:?}");
        (plan, after)
    }

    #[test]
    fn pruned_window_with_deleted_and_destroyed_versions() {
        // S1: origin v6..10 (key max 5), v7 deleted, v8 destroyed; empty destination.
        let mut origin = meta(6, 10, 6, &[(7, DELETED), (8, DESTROYED)]);
        origin.settings.max_versions = 5;
        let (plan, _) = converges(&origin, None, None);
        assert_eq!(plan.data_writes(), 10, "bootstrap writes current_version versions");
        assert_eq!(plan.window, Some(5));
        assert_eq!((plan.destroy.clone(), plan.delete.clone()), (vec![8], vec![7]));
        assert_eq!(plan.placeholders, vec![7, 8], "1..5 are pruned, 7 and 8 stay as placeholders");
    }

    #[test]
    fn no_prune_default_max_and_incremental_with_a_gap() {
        // S3: 3 writes, oldest 0.
        let origin = meta(1, 3, 0, &[]);
        let (plan, dest) = converges(&origin, None, None);
        assert_eq!((plan.window, plan.settings.is_some()), (None, false), "a new key's defaults already fit");
        // S6: destination had 6..10, origin now 18..22 (max 5): 12 writes.
        let mut before = meta(6, 10, 6, &[]);
        before.settings.max_versions = 5;
        let mut now = meta(18, 22, 18, &[]);
        now.settings.max_versions = 5;
        let state = KeyState { origin_created_time: "t1", placeholders: &[], written_version: 10 };
        let (plan, _) = converges(&now, Some(&before), Some(state));
        assert_eq!(plan.data_writes(), 12);
        assert!(plan.writes.iter().take(7).all(|(_, s)| *s == VersionSource::Placeholder), "11..17 were never seen");
        let _ = dest;
    }

    #[test]
    fn recreated_ahead_and_undeleted_placeholders_rebuild() {
        let state = KeyState { origin_created_time: "t1", placeholders: &[], written_version: 5 };
        let dest = meta(1, 5, 0, &[]);
        // S7b: re-created with more versions: only created_time tells.
        let mut origin = meta(1, 7, 0, &[]);
        origin.created_time = "t2".into();
        let (plan, _) = converges(&origin, Some(&dest), Some(state));
        assert_eq!(plan.rebuild, Some(RebuildReason::Recreated));
        // Destination ahead.
        let origin = meta(1, 3, 0, &[]);
        assert_eq!(plan_key(&origin, Some(&dest), Some(state)).rebuild, Some(RebuildReason::Ahead));
        // S9b: v2 was a placeholder (soft-deleted at origin), now undeleted.
        let origin = meta(1, 3, 0, &[]);
        let mut dest = meta(1, 3, 0, &[(2, DELETED)]);
        dest.settings = origin.settings.clone();
        let state = KeyState { origin_created_time: "t1", placeholders: &[2], written_version: 3 };
        let (plan, _) = converges(&origin, Some(&dest), Some(state));
        assert_eq!(plan.rebuild, Some(RebuildReason::PlaceholderUndeleted));
        assert_eq!(plan.data_writes(), 3);
    }

    #[test]
    fn versions_written_by_someone_else_rebuild_even_at_the_origins_number() {
        // vsync left v1; someone wrote v2 at the destination; the origin also reached v2.
        let origin = meta(1, 2, 0, &[]);
        let dest = meta(1, 2, 0, &[]);
        let state = KeyState { origin_created_time: "t1", placeholders: &[], written_version: 1 };
        assert_eq!(plan_key(&origin, Some(&dest), Some(state)).rebuild, Some(RebuildReason::Diverged));
    }

    #[test]
    fn flags_and_settings_cost_no_data_writes() {
        let origin = meta(1, 3, 0, &[]);
        let (_, dest) = converges(&origin, None, None);
        let state = KeyState { origin_created_time: "t1", placeholders: &[], written_version: 3 };
        // Soft delete, destroy and a custom_metadata change at the origin.
        let mut changed = meta(1, 3, 0, &[(3, DELETED), (1, DESTROYED)]);
        changed.settings.custom_metadata.insert("owner".into(), "x".into());
        let (plan, after) = converges(&changed, Some(&dest), Some(state));
        assert_eq!(plan.data_writes(), 0);
        assert_eq!((plan.delete.clone(), plan.destroy.clone()), (vec![3], vec![1]));
        assert!(plan.settings.is_some() && plan.window.is_none());
        // Undelete of a version the destination holds real data for: a flag call.
        let restored = meta(1, 3, 0, &[(1, DESTROYED)]);
        let mut restored = restored;
        restored.settings = changed.settings.clone();
        let (plan, _) = converges(&restored, Some(&after), Some(state));
        assert_eq!((plan.undelete.clone(), plan.data_writes(), plan.rebuild), (vec![3], 0, None));
    }

    #[test]
    fn metadata_only_key_and_a_key_at_version_300() {
        // S10: metadata only.
        let mut origin = meta(1, 0, 0, &[]);
        origin.settings.max_versions = 7;
        let (plan, _) = converges(&origin, None, None);
        assert_eq!((plan.data_writes(), plan.settings.is_some()), (0, true));
        // A metadata-only key with default settings still gets created (by its settings write).
        let bare = meta(1, 0, 0, &[]);
        assert!(plan_key(&bare, None, None).settings.is_some());
        // S13: current 300, key max 5.
        let mut origin = meta(296, 300, 296, &[]);
        origin.settings.max_versions = 5;
        let (plan, _) = converges(&origin, None, None);
        assert_eq!(plan.data_writes(), 300);
        assert!(plan.placeholders.is_empty(), "every placeholder is pruned");
    }

    #[test]
    fn a_matching_key_without_state_is_adopted_otherwise_rebuilt() {
        let origin = meta(1, 3, 0, &[(2, DELETED)]);
        let plan = plan_key(&origin, Some(&origin.clone()), None);
        assert_eq!(plan.adopt_if_equal, Some(vec![1, 3]));
        assert_eq!(plan.placeholders, vec![2]);
        assert!(plan.writes.is_empty() && plan.rebuild.is_none());
        let other = meta(1, 2, 0, &[]);
        assert_eq!(plan_key(&origin, Some(&other), None).rebuild, Some(RebuildReason::Diverged));
    }

    #[test]
    fn a_version_deleted_then_destroyed_at_the_origin_keeps_both_flags_here() {
        let both = VersionFlags { deleted: true, destroyed: true };
        let origin = meta(1, 2, 0, &[(1, both)]);
        // Synced while both were live; then deleted and destroyed at the origin.
        let dest = meta(1, 2, 0, &[]);
        let state = KeyState { origin_created_time: "t1", placeholders: &[], written_version: 2 };
        let (plan, after) = converges(&origin, Some(&dest), Some(state));
        assert_eq!((plan.delete.clone(), plan.destroy.clone(), plan.rebuild), (vec![1], vec![1], None), "{plan:?}");
        assert_eq!(after.versions.get(&1), Some(&both));
        // A replica an older vsync left destroyed without the deletion: only a rebuild
        // reproduces it.
        let old = meta(1, 2, 0, &[(1, DESTROYED)]);
        let (plan, after) = converges(&origin, Some(&old), Some(state));
        assert_eq!(plan.rebuild, Some(RebuildReason::Diverged), "{plan:?}");
        assert_eq!(after.versions.get(&1), Some(&both));
        // A new replica of such a key: the placeholder is deleted, then destroyed.
        let (plan, after) = converges(&origin, None, None);
        assert_eq!((plan.delete.clone(), plan.destroy.clone()), (vec![1], vec![1]), "{plan:?}");
        assert_eq!(after.versions.get(&1), Some(&both));
    }
}

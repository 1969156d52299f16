//! Executing `versions = "all"` for one KV v2 key: read both metadata documents, let
//! `vsync_core::exact` decide, then run its steps against the destination (README "`versions =
//! "all"`"). Reading happens in [`inspect`], before any write of the cycle, so rebuilds count for
//! the mass-delete guard; writing in [`apply`].

use std::sync::Arc;
use std::time::SystemTime;

use tracing::{info, warn};
use vsync_core::exact::{self, KeyMeta, KeyPlan, KeySettings, KeyState, PLACEHOLDER, RebuildReason, VersionFlags, VersionSource};
use vsync_core::{Clock, DestEntry, DestPath, ExactState, OriginEntry, SecretPath, WriteOutcome};
use vsync_vault::{DataRead, KvMetadata, MetadataSettings, SecretData, VaultClient, VaultError};

use crate::fault::Fault;
use crate::entries::v2_entry;

/// The two Vaults a key is replicated between, and the clock that tells which of their
/// versions are deleted (a version whose `deletion_time` has passed). Cheap to clone: each
/// inspect or write task holds one.
#[derive(Clone)]
pub struct Vaults {
    /// The origin Vault.
    pub origin: VaultClient,
    /// The destination Vault.
    pub dest: VaultClient,
    /// The wall time.
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Vaults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vaults").field("origin", &self.origin.address()).field("dest", &self.dest.address()).finish_non_exhaustive()
    }
}

/// The reproducible part of a server's metadata document, as of `now`.
pub fn key_meta(meta: &KvMetadata, now: SystemTime) -> KeyMeta {
    KeyMeta {
        current_version: meta.current_version,
        oldest_version: meta.oldest_version,
        created_time: meta.created_time.clone(),
        settings: KeySettings {
            max_versions: meta.max_versions,
            cas_required: meta.cas_required,
            delete_version_after: meta.delete_version_after.clone(),
            custom_metadata: meta.custom_metadata.clone().unwrap_or_default(),
        },
        versions: meta
            .versions
            .iter()
            .map(|(v, i)| (*v, VersionFlags { destroyed: i.destroyed, deleted: i.is_deleted_at(now) }))
            .collect(),
    }
}

/// What inspecting a key found.
// Held once per key being replicated, for one cycle: boxing the plan would only add allocations.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Inspected {
    /// The origin key changed since the scan (or is gone): retried next cycle.
    Skipped,
    /// A key the destination has no record of, proven by the scan to hold one live version
    /// with default settings ([`exact::is_single_default_version`]): version 1 is written
    /// create-only, with no metadata read on either side. Should the destination hold the key
    /// already (the create-only write fails), the key takes the full path.
    Fresh(OriginEntry),
    /// The steps to run, and whether the destination key exists now.
    Plan {
        /// The decision.
        plan: KeyPlan,
        /// The origin key's settings (for the catch-up window write).
        origin_settings: KeySettings,
        /// Whether a destination key exists (a rebuild deletes it).
        dest_exists: bool,
    },
}

impl Inspected {
    /// What replicating the key takes, for `vsync plan`.
    pub fn summary(&self) -> String {
        let (plan, dest_exists) = match self {
            Inspected::Plan { plan, dest_exists, .. } => (plan, dest_exists),
            Inspected::Fresh(_) => return "1 version write (a new single-version key, create-only)".into(),
            Inspected::Skipped => return "changed at the origin since the scan, next cycle".into(),
        };
        if plan.adopt_if_equal.is_some() {
            return "already exact, adopted without a write".into();
        }
        let mut parts = Vec::new();
        if let Some(reason) = plan.rebuild.filter(|_| *dest_exists) {
            parts.push(format!("REBUILD ({reason:?}: the destination key is deleted, then rewritten)"));
        }
        if !plan.writes.is_empty() {
            parts.push(format!("{} version write(s)", plan.writes.len()));
        }
        let flags = plan.destroy.len() + plan.delete.len() + plan.undelete.len();
        if flags > 0 {
            parts.push(format!("{flags} flag change(s)"));
        }
        if plan.settings.is_some() {
            parts.push("settings".into());
        }
        if parts.is_empty() { "nothing".into() } else { parts.join(", ") }
    }

    /// Whether this deletes an existing destination key (counted by the mass-delete guard).
    pub fn rebuilds_existing(&self) -> bool {
        matches!(self, Inspected::Plan { plan, dest_exists: true, .. } if plan.rebuild.is_some())
    }
}

/// What the cycle knows of a target's presence at the destination before inspecting it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// A listing of the destination mount, taken this cycle, holds the path.
    Listed,
    /// A listing of the destination mount, taken this cycle, does not hold the path.
    Unlisted,
    /// Not listed: the key's destination metadata is read to know.
    Unknown,
}

/// Decides one key's steps. A key new to the destination's info that the scan proves simple
/// is [`Inspected::Fresh`] only when the destination does not hold it (`presence`, or one
/// metadata read): a destination key, even one with metadata only, goes through the full
/// inspection, so the plan, the mass-delete guard and `vsync plan` see what replicating it
/// does (a rebuild wipes its history). `scanned` is the origin entry the plan was made from;
/// `known` what the destination recorded.
pub async fn inspect(
    vaults: &Vaults,
    key: &SecretPath,
    target: &DestPath,
    scanned: &OriginEntry,
    known: Option<&DestEntry>,
    presence: Presence,
) -> Result<Inspected, Fault> {
    if known.is_none() && exact::is_single_default_version(scanned) {
        let absent = match presence {
            Presence::Unlisted => true,
            Presence::Listed => false,
            Presence::Unknown => vaults
                .dest
                .read_metadata(&target.mount, &target.path)
                .await
                .map_err(|e| Fault::vault(format!("reading destination metadata of {target}"), e))?
                .is_none(),
        };
        if absent {
            return Ok(Inspected::Fresh(scanned.clone()));
        }
    }
    inspect_metadata(vaults, key, target, scanned, known).await
}

/// Reads the origin and destination metadata of one key and decides its steps.
pub async fn inspect_metadata(
    vaults: &Vaults,
    key: &SecretPath,
    target: &DestPath,
    scanned: &OriginEntry,
    known: Option<&DestEntry>,
) -> Result<Inspected, Fault> {
    let (origin, dest) = (&vaults.origin, &vaults.dest);
    let now = vaults.clock.now();
    let Some(om) = origin
        .read_metadata(&key.mount, &key.path)
        .await
        .map_err(|e| Fault::vault(format!("reading origin metadata of {key}"), e))?
    else {
        return Ok(Inspected::Skipped);
    };
    if v2_entry(&om, now) != *scanned {
        warn!(secret = %key, "origin key changed since the scan; it is replicated next cycle");
        return Ok(Inspected::Skipped);
    }
    let dm = dest
        .read_metadata(&target.mount, &target.path)
        .await
        .map_err(|e| Fault::vault(format!("reading destination metadata of {target}"), e))?;
    let origin_meta = key_meta(&om, now);
    let dest_meta = dm.as_ref().map(|m| key_meta(m, now));
    let state = known
        .filter(|k| k.target == *target)
        .and_then(|k| k.exact.as_ref().map(|e| (k, e)))
        .map(|(k, e)| KeyState {
            origin_created_time: &k.origin.created_time,
            placeholders: &e.placeholders,
            written_version: k.origin.current_version,
        });
    let mut plan = exact::plan_key(&origin_meta, dest_meta.as_ref(), state);
    if let Some(live) = plan.adopt_if_equal.clone() {
        for v in live {
            if !same_version(origin, dest, key, target, v).await? {
                info!(secret = %key, target = %target, version = v, "destination key differs from the origin; rebuilding it");
                plan = exact::plan_rebuild(&origin_meta, RebuildReason::Diverged);
                break;
            }
        }
    }
    Ok(Inspected::Plan { plan, origin_settings: origin_meta.settings, dest_exists: dm.is_some() })
}

/// Whether version `v` holds equal data on both sides.
async fn same_version(origin: &VaultClient, dest: &VaultClient, key: &SecretPath, target: &DestPath, v: u64) -> Result<bool, Fault> {
    let o = origin
        .read_version(&key.mount, &key.path, v)
        .await
        .map_err(|e| Fault::vault(format!("reading origin {key} v{v}"), e))?;
    let d = dest
        .read_version(&target.mount, &target.path, v)
        .await
        .map_err(|e| Fault::vault(format!("reading destination {target} v{v}"), e))?;
    Ok(matches!((o, d), (DataRead::Live(a, _), DataRead::Live(b, _)) if a.same_value(&b)))
}

fn settings(s: &KeySettings) -> MetadataSettings {
    MetadataSettings {
        max_versions: s.max_versions,
        cas_required: s.cas_required,
        delete_version_after: if s.delete_version_after.is_empty() { "0s".into() } else { s.delete_version_after.clone() },
        custom_metadata: s.custom_metadata.clone(),
    }
}

/// Runs one key's steps. Every data write carries `cas` = version - 1 and checks the version
/// the server returns, so a destination changed by someone else fails the write (and the key
/// is rebuilt next cycle) instead of being overwritten.
pub async fn apply(vaults: &Vaults, key: &SecretPath, target: &DestPath, inspected: Inspected) -> Result<(WriteOutcome, ExactState), Fault> {
    let (plan, origin_settings, dest_exists) = match inspected {
        Inspected::Plan { plan, origin_settings, dest_exists } => (plan, origin_settings, dest_exists),
        Inspected::Skipped => return Ok((WriteOutcome::Skipped, ExactState::default())),
        Inspected::Fresh(scanned) => {
            let (done, foreign) = write_fresh(&vaults.origin, &vaults.dest, key, target).await?;
            if !foreign {
                return Ok(done);
            }
            // Version 1 is ours, but the key existed with metadata only (created between the
            // inspection and the write): its settings are someone else's. The full path
            // writes the origin's (no rebuild: the versions are exact).
            let full = inspect_metadata(vaults, key, target, &scanned, None).await?;
            return Box::pin(apply(vaults, key, target, full)).await;
        }
    };
    if plan.adopt_if_equal.is_some() {
        info!(secret = %key, target = %target, "destination key already exact; adopted");
        return Ok((WriteOutcome::Adopted, ExactState { placeholders: plan.placeholders }));
    }
    let dest = &vaults.dest;
    prepare_target(dest, key, target, &plan, &origin_settings, dest_exists).await?;
    let late = write_versions(&vaults.origin, dest, key, target, &plan).await?;
    let placeholders = set_flags(dest, target, &plan, late).await?;
    if let Some(s) = &plan.settings {
        dest.write_metadata(&target.mount, &target.path, &settings(s))
            .await
            .map_err(|e| Fault::vault(format!("writing the settings of {target}"), e))?;
    }
    info!(secret = %key, target = %target, versions = plan.writes.len(), "replicated exactly");
    let outcome = if plan.rebuild.is_some() && dest_exists { WriteOutcome::Rebuilt } else { WriteOutcome::Written };
    Ok((outcome, ExactState { placeholders }))
}

/// Before the version writes: a rebuild deletes the existing key, and a catch-up window
/// lets the key keep the versions about to be written.
async fn prepare_target(
    dest: &VaultClient,
    key: &SecretPath,
    target: &DestPath,
    plan: &KeyPlan,
    origin_settings: &KeySettings,
    dest_exists: bool,
) -> Result<(), Fault> {
    let (mount, path) = (target.mount.as_str(), target.path.as_str());
    if let Some(reason) = plan.rebuild
        && dest_exists
    {
        // The key is missing (or incomplete) at the destination until the writes below end.
        warn!(secret = %key, target = %target, ?reason, "rebuilding the destination key");
        dest.delete_metadata(mount, path)
            .await
            .map_err(|e| Fault::vault(format!("rebuild: deleting {target}"), e))?;
    }
    if let Some(window) = plan.window {
        let catch_up = MetadataSettings {
            max_versions: window,
            cas_required: false,
            delete_version_after: "0s".into(),
            custom_metadata: origin_settings.custom_metadata.clone(),
        };
        dest.write_metadata(mount, path, &catch_up)
            .await
            .map_err(|e| Fault::vault(format!("setting the retention window of {target}"), e))?;
    }
    Ok(())
}

/// Writes the plan's versions in order, each with `cas` = version - 1. Returns the versions
/// that were deleted or destroyed at the origin since the inspection: they got a placeholder.
async fn write_versions(origin: &VaultClient, dest: &VaultClient, key: &SecretPath, target: &DestPath, plan: &KeyPlan) -> Result<Vec<u64>, Fault> {
    let placeholder = SecretData::from_json(PLACEHOLDER).map_err(|e| Fault::transient(format!("placeholder: {e}")))?;
    let mut late = Vec::new();
    for (v, source) in &plan.writes {
        let data = match source {
            VersionSource::Placeholder => None,
            VersionSource::Origin => match origin
                .read_version(&key.mount, &key.path, *v)
                .await
                .map_err(|e| Fault::vault(format!("reading origin {key} v{v}"), e))?
            {
                DataRead::Live(data, _) => Some(data),
                // Deleted or destroyed since it was inspected: a placeholder, soft-deleted
                // below; the next cycle copies the origin's new flags.
                _ => {
                    late.push(*v);
                    None
                }
            },
        };
        dest.write_version(&target.mount, &target.path, data.as_ref().unwrap_or(&placeholder), v - 1)
            .await
            .map_err(|e| Fault::vault(format!("writing {target} v{v}"), e))?;
    }
    Ok(late)
}

/// Sets the versions' flags, the `late` ones soft-deleted too; returns the key's placeholders.
async fn set_flags(dest: &VaultClient, target: &DestPath, plan: &KeyPlan, late: Vec<u64>) -> Result<Vec<u64>, Fault> {
    let mut placeholders = plan.placeholders.clone();
    let mut delete = plan.delete.clone();
    for v in late {
        placeholders.push(v);
        if !plan.destroy.contains(&v) && !delete.contains(&v) {
            delete.push(v);
        }
    }
    placeholders.sort_unstable();
    placeholders.dedup();
    // Undelete and delete before destroy: neither changes a destroyed version (the server
    // keeps its deletion time as it was), so a version both deleted and destroyed at the
    // origin is soft-deleted first.
    flag(dest, target, "undeleting versions of", &plan.undelete, VaultClient::undelete_versions).await?;
    flag(dest, target, "deleting versions of", &delete, VaultClient::delete_versions).await?;
    flag(dest, target, "destroying versions of", &plan.destroy, VaultClient::destroy_versions).await?;
    Ok(placeholders)
}

/// Version 1 of a [`Inspected::Fresh`] key: read at the origin, written create-only (`cas` 0)
/// at the destination, which then holds exactly the origin's one version with default
/// settings. The outcome, and whether the key turned out to carry settings of its own (a
/// metadata-only key takes a `cas` 0 write; its `custom_metadata` shows in the answer). A key
/// that appeared at the destination since it was inspected fails the create-only write: that
/// fails this secret for this cycle (the next one inspects it in full), never a rebuild that
/// no plan showed.
async fn write_fresh(
    origin: &VaultClient,
    dest: &VaultClient,
    key: &SecretPath,
    target: &DestPath,
) -> Result<((WriteOutcome, ExactState), bool), Fault> {
    let data = match origin
        .read_version(&key.mount, &key.path, 1)
        .await
        .map_err(|e| Fault::vault(format!("reading origin {key} v1"), e))?
    {
        DataRead::Live(data, _) => data,
        _ => {
            warn!(secret = %key, "origin key changed since the scan; it is replicated next cycle");
            return Ok(((WriteOutcome::Skipped, ExactState::default()), false));
        }
    };
    match dest.write_version(&target.mount, &target.path, &data, 0).await {
        Ok(meta) if meta.version == 1 => {
            info!(secret = %key, target = %target, versions = 1, "replicated exactly");
            // A key with settings of its own shows them here: custom metadata, or a deletion
            // time that its `delete_version_after` stamped on the new version.
            let foreign = meta.custom_metadata.as_ref().is_some_and(|c| !c.is_empty()) || !meta.deletion_time.is_empty();
            Ok(((WriteOutcome::Written, ExactState::default()), foreign))
        }
        Ok(meta) => Err(Fault::transient(format!(
            "writing {target} create-only made version {} instead of 1; the key is inspected in full next cycle",
            meta.version
        ))),
        Err(VaultError::CasMismatch { .. }) => Err(Fault::transient(format!(
            "{target} appeared at the destination after it was inspected; it is inspected in full next cycle"
        ))),
        Err(e) => Err(Fault::vault(format!("writing {target} v1"), e)),
    }
}

async fn flag<'c, F, Fut>(dest: &'c VaultClient, target: &'c DestPath, what: &str, versions: &'c [u64], op: F) -> Result<(), Fault>
where
    F: FnOnce(&'c VaultClient, &'c str, &'c str, &'c [u64]) -> Fut,
    Fut: std::future::Future<Output = Result<(), VaultError>>,
{
    if versions.is_empty() {
        return Ok(());
    }
    op(dest, &target.mount, &target.path, versions)
        .await
        .map_err(|e| Fault::vault(format!("{what} {target}"), e))
}

/// The destination-mount preconditions of `versions = "all"`:
/// `max_versions` 0 (the key's window must rule) and `delete_version_after` <= 0 (the
/// destination must not stamp its own deletion times). `Err` says how to fix the mount.
pub async fn check_mount(dest: &VaultClient, mount: &str) -> Result<(), String> {
    let (_, body) = dest
        .sys("GET", &format!("{mount}config"), None)
        .await
        .map_err(|e| format!("reading {mount}config: {e}"))?;
    let data = body.as_ref().and_then(|b| b.get("data"));
    let max = data.and_then(|d| d.get("max_versions")).and_then(serde_json::Value::as_u64).unwrap_or(0);
    let dva = data
        .and_then(|d| d.get("delete_version_after"))
        .and_then(serde_json::Value::as_str)
        .unwrap_or("0s");
    let positive = !dva.starts_with('-') && dva.chars().any(|c| c.is_ascii_digit() && c != '0');
    if max != 0 || positive {
        return Err(format!(
            "versions = \"all\" needs max_versions = 0 and delete_version_after <= 0 on the destination mount \
             (found max_versions = {max}, delete_version_after = {dva}); fix it with \
             `bao write {mount}config max_versions=0 delete_version_after=0s`"
        ));
    }
    Ok(())
}

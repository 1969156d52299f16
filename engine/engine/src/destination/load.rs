//! The load stage: the destination's info as its side stores it, re-bucketed to the origin's
//! layout, with a pending `vsync verify --repair` request applied.

use tracing::info;
use vsync_core::orphans;
use vsync_core::{DestEntry, DestInfo};
use vsync_state::StateStore;
use vsync_state::info as state_info;

use super::parts::{Destination, Loaded};
use crate::fault::Fault;
use crate::sides::{self, RepairRequest, side_name};

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

/// Loads the destination's info for `vsync plan`, a pending repair applied (nothing is
/// consumed: a preview never writes).
pub(super) async fn load_for_preview(store: &StateStore, name: &str, bucket_count: u32) -> Result<DestInfo, Fault> {
    let mut dest = load_info(store, name, bucket_count).await?;
    if let Some(request) = sides::pending_repair(store, name).await? {
        apply_repair(&mut dest, &request);
    }
    Ok(dest)
}

impl Destination {
    /// The load stage of a cycle: the info and its commit base, and the repair request the
    /// cycle consumes.
    pub(super) async fn load(&self, bucket_count: u32) -> Result<Loaded, Fault> {
        let name = &self.spec.name;
        let (mut dest, base) = load_versioned(&self.store, name, bucket_count).await?;
        let repair = sides::pending_repair(&self.store, name).await?;
        if let Some(request) = &repair {
            apply_repair(&mut dest, request);
            info!(destination = %name, keys = request.keys.len(), remove = request.remove.len(), "repairing what `vsync verify --repair` named");
        }
        Ok(Loaded { dest, base, repair })
    }
}

/// `vsync verify --repair`: forgets what was recorded for the named keys, so the cycle checks
/// them against the destination and rebuilds the ones that differ, and records the named
/// destination-only targets as orphans, so the plan removes them (under the guard).
fn apply_repair(dest: &mut DestInfo, request: &RepairRequest) {
    for key in &request.keys {
        dest.entries.remove(key);
    }
    orphans::remember(&mut dest.entries, &request.remove);
    dest.digests = dest.entries.digests();
}

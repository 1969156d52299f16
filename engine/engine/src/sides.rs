//! The sides of the state store and the layout of each side's documents.
//!
//! Every role writes under its own side: `origin`, or `destination-<name>` per destination. A
//! side holds its sync info (root and buckets, read and written by `vsync_state::info`) and two
//! small documents outside the compared info: the `status` record (`vsync status`) and, for a
//! destination, the `repair` request that `vsync verify --repair` leaves for its next cycle.
//! Their names and encodings live here, so the modules that read and write them (the cycle,
//! `verify`, `status`, the roles) agree on one layout without importing each other.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::warn;
use vsync_core::{DestPath, SecretPath};
use vsync_state::StateStore;

use crate::fault::{FatalCause, Fault};

/// The origin's side name in the state store.
pub const ORIGIN_SIDE: &str = "origin";

/// The status document's name in a side.
pub const STATUS_DOC: &str = "status";

/// The name of the repair request document in a destination's side.
pub const REPAIR_DOC: &str = "repair";

/// One side of the state store.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Side {
    /// The origin's side.
    Origin,
    /// A destination's side, by the destination's name.
    Destination(String),
}

impl Side {
    /// The side's name in the state store.
    pub fn name(&self) -> String {
        match self {
            Side::Origin => ORIGIN_SIDE.to_owned(),
            Side::Destination(name) => side_name(name),
        }
    }

    /// The role that writes this side: `origin` or `destination`.
    pub fn role(&self) -> &'static str {
        match self {
            Side::Origin => "origin",
            Side::Destination(_) => "destination",
        }
    }

    /// The destination's name, for a destination's side.
    pub fn destination(&self) -> Option<&str> {
        match self {
            Side::Origin => None,
            Side::Destination(name) => Some(name),
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Side::Origin => f.write_str("the origin"),
            Side::Destination(name) => write!(f, "destination `{name}`"),
        }
    }
}

/// Name of a destination's side in the state store.
pub fn side_name(destination: &str) -> String {
    format!("destination-{destination}")
}

/// Reads a side's status record; a missing or unreadable one is `None` (status is observability).
pub async fn read_status<T: DeserializeOwned>(store: &StateStore, side: &str) -> Option<T> {
    let bytes = store.read_doc(side, STATUS_DOC).await.ok()??;
    serde_json::from_slice(&bytes).ok()
}

/// Writes a side's status record; a failure is logged, never fatal (status is observability).
pub async fn write_status<T: Serialize>(store: &StateStore, side: &str, status: &T) {
    let bytes = match serde_json::to_vec(status) {
        Ok(b) => b,
        Err(e) => return warn!(side, error = %e, "cannot encode the status record"),
    };
    if let Err(e) = store.write_doc(side, STATUS_DOC, &bytes).await {
        warn!(side, error = %e, "cannot write the status record");
    }
}

/// The request `--repair` leaves for the destination role.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairRequest {
    /// Origin keys whose replicas the next cycle rebuilds.
    pub keys: Vec<SecretPath>,
    /// Destination keys that no origin key maps to, which the next cycle removes (under the
    /// `deletes` policy and the mass-delete guard).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<DestPath>,
}

/// Leaves a repair request for the destination's next cycle: `keys` to rebuild, destination-only
/// targets to `remove`.
pub async fn request_repair(store: &StateStore, destination: &str, keys: Vec<SecretPath>, remove: Vec<DestPath>) -> Result<(), Fault> {
    let bytes = serde_json::to_vec(&RepairRequest { keys, remove }).map_err(|e| Fault::transient(format!("encoding the repair request: {e}")))?;
    store
        .write_doc(&side_name(destination), REPAIR_DOC, &bytes)
        .await
        .map_err(|e| Fault::state(format!("writing the repair request of destination `{destination}`"), e))
}

/// The pending repair request of a destination, if any.
pub async fn pending_repair(store: &StateStore, destination: &str) -> Result<Option<RepairRequest>, Fault> {
    let Some(bytes) = store
        .read_doc(&side_name(destination), REPAIR_DOC)
        .await
        .map_err(|e| Fault::state(format!("reading the repair request of destination `{destination}`"), e))?
    else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| Fault::fatal(FatalCause::StateCorrupt, format!("the repair request of destination `{destination}` is corrupt: {e}")))
}

/// Removes a destination's repair request once a cycle handled it.
pub async fn clear_repair(store: &StateStore, destination: &str) -> Result<(), Fault> {
    store
        .delete_doc(&side_name(destination), REPAIR_DOC)
        .await
        .map_err(|e| Fault::state(format!("destination `{destination}`: removing the handled repair request"), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn side_names_are_the_store_layout() {
        assert_eq!(Side::Origin.name(), "origin");
        assert_eq!(Side::Destination("eu".into()).name(), "destination-eu");
        assert_eq!(Side::Destination("eu".into()).destination(), Some("eu"));
        assert_eq!(Side::Origin.role(), "origin");
    }
}

//! Runtime specifications: what the engine needs to know about the origin and each
//! destination, built from the configuration file by `vsync-config`. The engine depends on
//! these plain values, never on the file's schema.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::cycle::CycleRules;
use crate::types::{DeletePolicy, VersionsMode};

/// The most requests in flight an adaptive Vault side (`workers = "auto"`) reaches, and the
/// number of tasks a role with `workers = "auto"` runs at once.
pub const AUTO_WORKERS_MAX: usize = 256;

/// The origin role.
#[derive(Debug, Clone, PartialEq)]
pub struct OriginSpec {
    /// Mounts to scan, normalised (`secret/`).
    pub mounts: Vec<String>,
    /// Scan interval.
    pub interval: Duration,
    /// Time limit of one scan.
    pub timeout: Duration,
    /// Requests in flight during a scan.
    pub workers: usize,
    /// Fixed bucket count (`buckets` in a Consul state block); automatic when `None`.
    pub buckets: Option<u32>,
}

/// One destination role.
#[derive(Debug, Clone, PartialEq)]
pub struct DestinationSpec {
    /// Unique name.
    pub name: String,
    /// Labels handed to plugins.
    pub labels: BTreeMap<String, String>,
    /// Origin mount -> destination mount, both normalised.
    pub mounts: BTreeMap<String, String>,
    /// Backup ticker.
    pub interval: Duration,
    /// Time limit of one cycle.
    pub timeout: Duration,
    /// Requests in flight.
    pub workers: usize,
    /// Which KV v2 versions are replicated.
    pub versions: VersionsMode,
    /// What happens to secrets that left the origin.
    pub deletes: DeletePolicy,
    /// The mass-delete guard's ratio.
    pub max_delete_ratio: f64,
    /// Hash of the mount map, transforms and filters: when it changes, every target is
    /// re-checked.
    pub config_hash: String,
    /// Whether transforms or filters are configured (a path mapper is then required).
    pub uses_plugins: bool,
}

impl DestinationSpec {
    /// The rules a plan of this destination follows.
    pub fn rules(&self) -> CycleRules<'_> {
        CycleRules {
            destination: &self.name,
            deletes: self.deletes,
            versions: self.versions,
            max_delete_ratio: self.max_delete_ratio,
            config_hash: &self.config_hash,
            mounts: &self.mounts,
        }
    }
}

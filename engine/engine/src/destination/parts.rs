//! What a destination owns ([`Destination`]) and the state one cycle carries from stage to
//! stage ([`CycleRun`]).

use std::collections::HashMap;
use std::sync::Arc;

use tracing::error;
use vsync_core::cycle::{CyclePlan, Records, RemovalOutcome, WriteOutcome};
use vsync_core::{Action, Clock, DestInfo, DestPath, DestinationSpec, KvVersion, PathMapper, SecretPath};
use vsync_state::{StateStore, StoreLock};
use vsync_vault::{RequestCounts, VaultClient};

use crate::exact::{Inspected, Vaults};
use crate::fault::Fault;
use crate::progress::Progress;
use crate::sides::RepairRequest;

/// A destination ready to run cycles: its spec and the parts it owns.
pub struct Destination {
    /// What the configuration says.
    pub spec: DestinationSpec,
    /// The destination Vault.
    pub vault: VaultClient,
    /// Where its sync info lives.
    pub store: StateStore,
    /// Its side's writer lock.
    pub lock: StoreLock,
    /// Filters and transformers (the plugin stack), when configured ([`share`] one).
    pub mapper: Option<SharedMapper>,
    /// The origin's KV v1 digest key (`digest_key_file`), when this process can read it: a
    /// KV v1 value read for a copy is checked against the scan's keyed digest.
    pub digest_key: Option<Arc<Vec<u8>>>,
    /// Where the cycle reports progress (inspecting, copying, removing), if anywhere.
    pub progress: Option<Arc<dyn Progress>>,
    /// Where the cycle takes the wall time from (version deletion times, commit times);
    /// `vsync_core::clock::system_clock()` outside a simulation.
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Destination")
            .field("name", &self.spec.name)
            .field("vault", &self.vault.address())
            .field("store", &self.store.describe())
            .field("plugins", &self.mapper.is_some())
            .finish()
    }
}

/// A path mapper that a planning thread can hold while the cycle's future waits for it.
pub type SharedMapper = Arc<std::sync::Mutex<Box<dyn PathMapper>>>;

/// Shares a path mapper for [`Destination::mapper`].
pub fn share(mapper: Box<dyn PathMapper>) -> SharedMapper {
    Arc::new(std::sync::Mutex::new(mapper))
}

/// What the load stage hands to planning: the destination's info and where it came from.
pub(super) struct Loaded {
    /// The info, re-bucketed to the origin's layout, with a pending repair applied.
    pub dest: DestInfo,
    /// The root version it was loaded from: the commit's compare-and-swap base.
    pub base: Option<u64>,
    /// The repair request this cycle consumes, if one was pending.
    pub repair: Option<RepairRequest>,
}

/// One cycle in progress: each stage reads what the earlier ones left and adds its own part.
pub(super) struct CycleRun {
    /// The origin and destination Vaults and the clock.
    pub vaults: Vaults,
    /// Request counts of the origin and destination Vaults when the cycle started.
    pub counts_before: (RequestCounts, RequestCounts),
    /// The destination's info: loaded, then settled with the cycle's outcomes.
    pub dest: DestInfo,
    /// The root version the next commit swaps (moves on when orphans are remembered).
    pub base: Option<u64>,
    /// The repair request this cycle consumes.
    pub repair: Option<RepairRequest>,
    /// The plan.
    pub planned: CyclePlan,
    /// The KV version of every destination mount the plan touches.
    pub kinds: Arc<HashMap<String, KvVersion>>,
    /// `versions = "all"`: what replicating each key takes (taken by its write task).
    pub inspected: HashMap<SecretPath, Inspected>,
    /// Targets committed as orphans before they are written (`vsync_core::orphans`).
    pub journal: Vec<DestPath>,
    /// Per-secret outcomes of the writes (and of inspections that failed).
    pub writes: HashMap<SecretPath, WriteOutcome>,
    /// What the writes recorded beyond their outcome.
    pub records: Records,
    /// Per-secret outcomes of the removals.
    pub removals: HashMap<SecretPath, RemovalOutcome>,
}

impl CycleRun {
    /// A run for `planned`, from what the load stage produced.
    pub fn new(vaults: Vaults, loaded: Loaded, planned: CyclePlan, counts_before: (RequestCounts, RequestCounts)) -> Self {
        Self {
            vaults,
            counts_before,
            dest: loaded.dest,
            base: loaded.base,
            repair: loaded.repair,
            planned,
            kinds: Arc::default(),
            inspected: HashMap::new(),
            journal: Vec::new(),
            writes: HashMap::new(),
            records: Records::default(),
            removals: HashMap::new(),
        }
    }
}

impl Destination {
    /// One rule for every action: a fault that stops the cycle (fatal, or a server that is
    /// down) is returned with its context; anything else fails this secret only.
    pub(super) fn per_secret(&self, fault: Fault, action: &Action, abort: impl FnOnce()) -> Result<WriteOutcome, Fault> {
        let op = action.op();
        if fault.stops_cycle() {
            abort();
            return Err(fault.context(format!("destination `{}`: {op} {}", self.spec.name, action.key())));
        }
        error!(destination = %self.spec.name, secret = %action.key(), op, error = %fault, "secret failed; it is retried next cycle");
        Ok(WriteOutcome::Failed)
    }
}

//! A destination role's side of a round: one cycle, bounded by the destination's `timeout` and
//! abandoned when its side's lock is lost, then settled and observed. [`DestinationRole`] owns
//! what carries across rounds: the destination, how its failures settle, the start-up checks
//! it still owes, and the origin generation its info reflects.

use std::future::Future;
use std::sync::Arc;

use tracing::Instrument as _;
use tracing::info;
use vsync_core::OriginInfo;
use vsync_vault::VaultClient;

use super::settle::{Round, Settling, Shared, Stop, cycle_id, lock_lost};
use crate::destination::Destination;
use crate::fault::Fault;
use crate::observer::{Event, Settled};
use crate::report::CycleReport;
use crate::sides::Side;

/// A step that may fail with a fault, boxed.
pub type BoxFault = std::pin::Pin<Box<dyn Future<Output = Result<(), Fault>> + Send>>;

/// What a destination that was unavailable at start-up (unreachable or sealed) runs before
/// its first cycle: log in, then its start-up checks. Until it succeeds each attempt counts as
/// that destination's failed cycle (retried on its own schedule, shown by `/healthz` and
/// `status`); the other sides run meanwhile.
pub type StartGate = Box<dyn FnMut() -> BoxFault + Send + Sync>;

/// One destination role of this process.
pub(super) struct DestinationRole {
    /// Its parts.
    pub destination: Destination,
    side: Side,
    settling: Settling,
    /// Start-up checks still owed (it was unavailable at start-up).
    gate: Option<StartGate>,
    /// The origin generation its info reflects (from its status record at start).
    applied: Option<u64>,
}

impl std::fmt::Debug for DestinationRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DestinationRole").field("destination", &self.destination).field("gated", &self.gate.is_some()).finish_non_exhaustive()
    }
}

impl DestinationRole {
    pub fn new(destination: Destination, settling: Settling, gate: Option<StartGate>, applied: Option<u64>) -> Self {
        let side = Side::Destination(destination.spec.name.clone());
        Self { destination, side, settling, gate, applied }
    }

    /// Whether an event round skips this role: its last cycle failed, and only full rounds
    /// retry it.
    pub fn skips_events(&self) -> bool {
        self.settling.failing
    }

    /// Runs one cycle on `info` (the origin's `generation`), settles it into `done`, and
    /// has every observer see it. `events`: an event round (its state-store failures do not
    /// count toward the retry budget).
    pub async fn round(&mut self, shared: Shared<'_>, info: &Arc<OriginInfo>, generation: Option<u64>, events: bool, done: &mut Round) -> Result<(), Stop> {
        let Shared { origin_vault, clock, observers, once } = shared;
        let name = self.destination.spec.name.clone();
        let started = clock.now();
        let span = tracing::info_span!("cycle", role = "destination", destination = %name, cycle = %cycle_id(started));
        let result = self.attempt(origin_vault, info).instrument(span).await;
        let ended = clock.now();
        if result.is_ok() {
            self.applied = generation.or(self.applied);
        }
        let writer = self.destination.lock.is_held();
        let outcome = result.as_ref().map(|report| Event::DestinationCycle { name: &name, report });
        observers.settled(&Settled { side: &self.side, started, ended, generation: self.applied, writer, outcome }).await;
        match result {
            Ok(report) => {
                self.settling.succeeded();
                done.per_secret_failures |= report.counts.failed > 0;
                Ok(())
            }
            Err(fault) => done.settle_failure(&mut self.settling, Some(name), fault, once, !events),
        }
    }

    /// Settles a cycle that could not run because the origin's info could not be loaded.
    pub fn settle_unloaded(&mut self, fault: Fault, once: bool, done: &mut Round) -> Result<(), Stop> {
        let name = self.destination.spec.name.clone();
        done.settle_failure(&mut self.settling, Some(name), fault, once, true)
    }

    /// The cycle, with the start-up checks it still owes first, bounded by `timeout` and by
    /// the side's lock.
    async fn attempt(&mut self, origin_vault: &VaultClient, info: &Arc<OriginInfo>) -> Result<CycleReport, Fault> {
        let d = &mut self.destination;
        let (name, timeout) = (d.spec.name.clone(), d.spec.timeout);
        let lost_fault = lock_lost(&format!("destination `{name}`"), &d.lock);
        let lost = d.lock.lost();
        let (gate, flags) = (&mut self.gate, self.settling.flags);
        let gated_cycle = async {
            if let Some(check) = gate.as_mut() {
                check().await?;
                *gate = None;
                info!(destination = %name, "the destination is available: its start-up checks passed");
            }
            d.cycle(origin_vault, info, flags).await
        };
        tokio::select! {
            r = tokio::time::timeout(timeout, gated_cycle) => r.unwrap_or_else(|_| {
                Err(Fault::transient(format!(
                    "destination `{name}`: cycle timed out after {timeout:?}; everything it started was cancelled, \
                     nothing committed"
                )))
            }),
            () = lost => Err(lost_fault),
        }
    }
}

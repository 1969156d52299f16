//! How the loop settles a failed cycle ([`Settling`]), what a round reports back to the
//! scheduler ([`Round`]), the fault that ends the loop ([`Stop`]), and what every role's round
//! shares ([`Shared`]).

use std::time::SystemTime;

use tracing::{error, warn};
use vsync_core::{Clock, CycleFlags};
use vsync_state::StoreLock;
use vsync_vault::VaultClient;

use crate::fault::{FatalCause, Fault, FaultClass, STATE_RETRY_BUDGET};
use crate::observer::Observers;

/// What every role's round reads: the origin Vault, the clock, the observers every settled
/// cycle goes to, and whether this is a `--once` run.
#[derive(Clone, Copy)]
pub(super) struct Shared<'a> {
    /// The origin Vault (scans, and the versions destinations copy).
    pub origin_vault: &'a VaultClient,
    /// The wall time.
    pub clock: &'a dyn Clock,
    /// Where settled cycles go.
    pub observers: &'a Observers,
    /// One round, then return: any failure ends the run.
    pub once: bool,
}

/// Per-role state across rounds.
#[derive(Debug, Default)]
pub(super) struct Settling {
    state_failures: u32,
    /// `--allow-*` overrides; they hold until the role's next successful cycle.
    pub flags: CycleFlags,
    /// The last cycle failed: event rounds skip this role until a full round succeeds, so a
    /// broken side is retried every `interval`, not at the rate of origin writes.
    pub failing: bool,
}

impl Settling {
    /// A role that starts with the `--allow-*` overrides of the command line.
    pub fn with_flags(flags: CycleFlags) -> Self {
        Self { flags, ..Self::default() }
    }

    /// Settles a failed cycle: `Some` stops the process (fatal, or any failure with `once`);
    /// `None` retries next cycle. Transient state-store failures become fatal after
    /// [`STATE_RETRY_BUDGET`] cycles in a row; only full rounds count (`counted`), so a burst
    /// of events cannot spend the budget in seconds.
    pub fn failed(&mut self, fault: Fault, once: bool, counted: bool) -> Option<Fault> {
        self.failing = true;
        if fault.fatal_cause().is_some() || once {
            return Some(fault);
        }
        if fault.class == FaultClass::LockLost {
            warn!("{fault}; nothing committed this cycle: standby until this process holds the lock again");
            return None;
        }
        if fault.class == FaultClass::StateStore && !counted {
            error!("{fault}; nothing committed; retrying at the next full round");
            return None;
        }
        if fault.class == FaultClass::StateStore {
            self.state_failures += 1;
            if self.state_failures >= STATE_RETRY_BUDGET {
                return Some(Fault::fatal(
                    FatalCause::StateStoreUnusable,
                    format!("the state store failed {} cycles in a row: {}", self.state_failures, fault.message),
                ));
            }
        } else {
            self.state_failures = 0;
        }
        error!("{fault}; nothing committed this cycle, retrying next cycle");
        None
    }

    /// Settles a successful cycle: the overrides were used up.
    pub fn succeeded(&mut self) {
        self.failing = false;
        self.state_failures = 0;
        self.flags = CycleFlags::default();
    }
}

/// A fault that ends the loop, and whose it is.
#[derive(Debug)]
pub(super) struct Stop {
    /// The destination whose fault it is; `None` for the origin or the process.
    pub destination: Option<String>,
    /// The fault.
    pub fault: Fault,
}

/// What one round did.
#[derive(Debug, Default)]
pub(super) struct Round {
    /// The origin was scanned completely (an event round may fall back to a scan).
    pub scanned: bool,
    /// Some secrets failed in a completed destination cycle.
    pub per_secret_failures: bool,
    /// With `once`: the first failed cycle (the others still ran).
    pub failed: Option<(Option<String>, Fault)>,
}

impl Round {
    /// Settles a failed cycle of `whose` into the round: `Err` stops the loop (a fatal fault);
    /// a fault that ends a `once` run is kept as the round's first failure.
    pub fn settle_failure(&mut self, settling: &mut Settling, whose: Option<String>, fault: Fault, once: bool, counted: bool) -> Result<(), Stop> {
        match settling.failed(fault, once, counted) {
            Some(fault) if fault.fatal_cause().is_some() => Err(Stop { destination: whose, fault }),
            Some(fault) => {
                self.failed.get_or_insert((whose, fault));
                Ok(())
            }
            None => Ok(()),
        }
    }
}

/// A cycle's id in logs: its start time in milliseconds since the epoch (unique per role, and
/// the same as the `started` of its status record).
pub(super) fn cycle_id(started: SystemTime) -> u128 {
    started.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis())
}

/// The fault of a cycle abandoned because its side's lock was lost.
pub(super) fn lock_lost(whose: &str, lock: &StoreLock) -> Fault {
    Fault::new(
        FaultClass::LockLost,
        format!("{whose}: lost the lock {} (its session ended or could not be renewed); the cycle was abandoned", lock.describe()),
    )
}

//! The one place a settled cycle is reported: [`CycleObserver`].
//!
//! When a role's cycle settles (the origin scanned or updated its info, or a destination
//! cycle ended), the role loop hands one [`Settled`] to every observer, once. Telemetry
//! (metrics and health), the status records (`vsync status`) and the binary's printer (an
//! [`Event`] callback, a [`Reporter`]) are such observers, so an outcome is never recorded by
//! hand in several places, and a simulator can watch the same stream.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use vsync_core::OriginInfo;

use crate::fault::Fault;
use crate::report::CycleReport;
use crate::sides::Side;

/// What the loop reports as it goes (the binary prints it).
#[derive(Debug)]
pub enum Event<'a> {
    /// The origin was scanned and its info published (or found unchanged).
    OriginScanned {
        /// The scan.
        info: &'a OriginInfo,
        /// Whether the published info changed.
        published: bool,
    },
    /// Audit events changed some keys; the info was updated without a scan.
    OriginUpdated {
        /// The updated info.
        info: &'a OriginInfo,
        /// How many entries changed.
        changed: usize,
        /// Whether the published info changed.
        published: bool,
    },
    /// A destination cycle completed.
    DestinationCycle {
        /// Destination name.
        name: &'a str,
        /// What it did.
        report: &'a CycleReport,
    },
}

/// Receives [`Event`]s: the binary's printer. Every such callback is a [`CycleObserver`] of
/// the cycles that completed.
pub type Reporter = Box<dyn Fn(&Event<'_>) + Send + Sync>;

/// One settled cycle of one side.
#[derive(Debug)]
pub struct Settled<'a> {
    /// Whose cycle.
    pub side: &'a Side,
    /// When it started, by the engine's clock.
    pub started: SystemTime,
    /// When it ended, by the engine's clock.
    pub ended: SystemTime,
    /// The origin: the generation it published (or found). A destination: the origin
    /// generation its info reflects after this cycle.
    pub generation: Option<u64>,
    /// Whether this process is still the side's writer: a process that lost the side's lock
    /// must not write the side's status record over the new holder's.
    pub writer: bool,
    /// What the cycle did, or why it failed (nothing was committed then).
    pub outcome: Result<Event<'a>, &'a Fault>,
}

impl Settled<'_> {
    /// How long the cycle took.
    pub fn elapsed(&self) -> Duration {
        self.ended.duration_since(self.started).unwrap_or_default()
    }
}

/// A future an observer returns (a status record is written to the state store).
pub type Observing<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Records settled cycles. Called once per cycle, in the order cycles settle; never fails
/// (observation must not change what the engine does).
pub trait CycleObserver: Send + Sync {
    /// Records one settled cycle.
    fn settled<'a>(&'a self, cycle: &'a Settled<'a>) -> Observing<'a>;
}

/// A callback of [`Event`]s (the binary's printer) sees every cycle that completed.
impl<F: Fn(&Event<'_>) + Send + Sync> CycleObserver for F {
    fn settled<'a>(&'a self, cycle: &'a Settled<'a>) -> Observing<'a> {
        if let Ok(event) = &cycle.outcome {
            self(event);
        }
        Box::pin(std::future::ready(()))
    }
}

/// Every observer of a process, in the order they are told.
#[derive(Default)]
pub struct Observers(Vec<std::sync::Arc<dyn CycleObserver>>);

impl Observers {
    /// Adds an observer; it is told after the ones added before it.
    pub fn push(&mut self, observer: std::sync::Arc<dyn CycleObserver>) {
        self.0.push(observer);
    }

    /// Tells every observer, one after the other.
    pub async fn settled(&self, cycle: &Settled<'_>) {
        for o in &self.0 {
            o.settled(cycle).await;
        }
    }
}

impl std::fmt::Debug for Observers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Observers({})", self.0.len())
    }
}

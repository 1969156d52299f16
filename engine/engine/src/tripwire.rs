//! A [`Tripwire`]: how background tasks (token keepers) stop the role loop with a fatal fault.

use std::sync::Arc;

use tokio::sync::watch;

use crate::fault::Fault;

/// Tripped once, by the first background task that meets a fatal fault; the role loop then
/// abandons its cycle (nothing partial is committed), alerts and stops.
#[derive(Debug, Clone)]
pub struct Tripwire {
    tx: Arc<watch::Sender<Option<Fault>>>,
}

impl Default for Tripwire {
    fn default() -> Self {
        Self::new()
    }
}

impl Tripwire {
    /// An untripped wire.
    pub fn new() -> Self {
        let (tx, _) = watch::channel(None);
        Self { tx: Arc::new(tx) }
    }

    /// Trips the wire (the first fault wins).
    pub fn trip(&self, fault: Fault) {
        self.tx.send_if_modified(|slot| {
            let first = slot.is_none();
            if first {
                *slot = Some(fault);
            }
            first
        });
    }

    /// Resolves with the fault once the wire is tripped.
    pub async fn tripped(&self) -> Fault {
        let mut rx = self.tx.subscribe();
        // The borrowed slot is released before any further await, so the role loop's future
        // stays `Send` (it can be spawned).
        let fault = rx.wait_for(Option::is_some).await.ok().map(|slot| slot.clone().unwrap_or_else(|| Fault::transient("tripwire")));
        match fault {
            Some(fault) => fault,
            // The sender lives in `self`, so the channel cannot close while we wait.
            None => std::future::pending().await,
        }
    }
}

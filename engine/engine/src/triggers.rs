//! What starts a cycle: a change of the origin's published root (a Consul blocking query, or a
//! file poll) and a backup ticker. Triggers that arrive during a cycle are stored (at most
//! one) by [`Notify`], so they coalesce into one follow-up cycle.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{debug, warn};
use vsync_state::StateStore;

/// A background watch of one side's root; stopped when dropped.
#[derive(Debug)]
pub struct RootWatch(JoinHandle<()>);

impl Drop for RootWatch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Watches a side's root and pokes `trigger` when it changes.
///
/// Follows Consul's blocking-query rules: compare versions (wake-ups can
/// be spurious), reset when the index goes backwards, back off on errors (1 s x failures²,
/// capped at 60 s), and never poll faster than every 250 ms.
pub fn watch_root(store: StateStore, side: &'static str, trigger: Arc<Notify>) -> RootWatch {
    RootWatch(tokio::spawn(async move {
        let mut cursor = 0u64;
        let mut seen: Option<u64> = None;
        let mut failures = 0u32;
        loop {
            let started = tokio::time::Instant::now();
            match store.watch_root(side, cursor, Duration::from_secs(300)).await {
                Ok((version, next)) => {
                    failures = 0;
                    cursor = next;
                    if seen.is_some_and(|s| s != version) {
                        debug!(side, version, "root changed: triggering a cycle");
                        trigger.notify_one();
                    }
                    seen = Some(version);
                }
                Err(e) => {
                    failures += 1;
                    let backoff = Duration::from_secs(u64::from(failures * failures).min(60));
                    warn!(side, error = %e, "watching the state store failed; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    cursor = 0;
                }
            }
            let floor = Duration::from_millis(250);
            if started.elapsed() < floor {
                tokio::time::sleep(floor - started.elapsed()).await;
            }
        }
    }))
}

//! Taking a side's writer lock for a role: at once on the file store (a second process fails,
//! naming the lock file); on Consul, while another process holds it, this one is a hot standby
//! that logs who holds the lock and waits until that session ends.

use std::future::Future;
use std::time::Duration;

use tracing::info;
use vsync_state::lock::LockOptions;
use vsync_state::{Holder, StateStore, StoreLock};

use crate::fault::{FatalCause, Fault};

/// Takes the lock of `side`; with `once_limit` (`--once`) waits at most that long, then fails
/// naming the holder. `Ok(None)`: `shutdown` ended the wait.
pub async fn take(
    store: &StateStore,
    side: &str,
    options: &LockOptions,
    once_limit: Option<Duration>,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Result<Option<StoreLock>, Fault> {
    let last = std::sync::Mutex::new(None::<Holder>);
    let mut on_wait = |h: &Holder| {
        info!(side, "standby: {h}; this process waits as a hot standby and takes over when that session ends");
        if let Ok(mut l) = last.lock() {
            *l = Some(h.clone());
        }
    };
    let acquire = store.lock_side_with(side, options, &mut on_wait);
    let limited = async {
        match once_limit {
            Some(limit) => tokio::time::timeout(limit, acquire).await.ok(),
            None => Some(acquire.await),
        }
    };
    let taken = tokio::select! {
        taken = limited => taken,
        () = &mut *shutdown => return Ok(None),
    };
    let waited = last.lock().ok().and_then(|l| l.clone());
    match taken {
        Some(Ok(lock)) => {
            if waited.is_some() {
                info!(side, lock = %lock.describe(), "took over side `{side}`: this process is its writer now");
            }
            Ok(Some(lock))
        }
        Some(Err(e)) => Err(Fault::state(format!("cannot take the lock of side `{side}`"), e)),
        None => {
            let limit = once_limit.unwrap_or_default();
            let who = waited.map_or_else(|| format!("the lock of side `{side}` could not be taken"), |h| h.to_string());
            Err(Fault::fatal(
                FatalCause::StateLocked,
                format!("side `{side}`: {who}; gave up after {limit:?} (with --once a standby waits at most the role's `timeout`)"),
            ))
        }
    }
}

/// How the side locks are taken: the defaults (`vsync_state::lock`), unless the
/// `VSYNC_TEST_LOCK_TIMING=<ttl>,<lock-delay>` environment variable shortens them. That variable
/// exists for the HA end-to-end tests only (a real Consul refuses TTLs under 10 s anyway); it is
/// deliberately not a config key and not documented for operators.
pub fn options_from_env() -> Result<LockOptions, Fault> {
    let mut options = LockOptions::default();
    if let Ok(timing) = std::env::var("VSYNC_TEST_LOCK_TIMING") {
        let parsed = timing
            .split_once(',')
            .and_then(|(t, d)| Some((humantime::parse_duration(t.trim()).ok()?, humantime::parse_duration(d.trim()).ok()?)));
        let Some((ttl, lock_delay)) = parsed else {
            return Err(Fault::fatal(FatalCause::Config, "VSYNC_TEST_LOCK_TIMING must be `<ttl>,<lock-delay>`, e.g. `1s,1s`"));
        };
        options.ttl = ttl;
        options.lock_delay = lock_delay;
    }
    Ok(options)
}

//! The engine loop around cycles: shutdown on signals, triggers (origin-root watch plus a
//! backup ticker, coalesced), fault classes (fatal vs retried next cycle) and alerting.
//!
//! Fault classes (DESIGN section 8): a fatal error stops the current cycle, stops future
//! cycles, is logged with its full context, is POSTed to the alert webhook, and exits 1.
//! Everything else (a Vault or Consul that is down, sealed or slow, a cycle timeout, a secret
//! that failed) is logged and retried on the next cycle. A state store that keeps failing for
//! [`STATE_RETRY_BUDGET`] consecutive cycles becomes fatal too.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Notify, watch};
use tracing::{debug, error, info, warn};
use vsync_state::StateStore;
use vsync_state::consul::ConsulError;
use vsync_vault::VaultError;

/// Consecutive cycles a state store may fail (transiently) before that is fatal.
pub const STATE_RETRY_BUDGET: u32 = 5;

/// Marks an error as fatal, with its kind (for the alert and the log).
#[derive(Debug, Clone, Copy)]
pub struct FatalKind(pub &'static str);

impl std::fmt::Display for FatalKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "fatal ({})", self.0)
    }
}

/// Wraps an error as fatal of `kind`.
pub fn fatal(kind: &'static str, err: anyhow::Error) -> anyhow::Error {
    err.context(FatalKind(kind))
}

/// The fatal kind of an error, or `None` when retrying next cycle may help.
pub fn fatal_kind(err: &anyhow::Error) -> Option<&'static str> {
    if let Some(k) = err.downcast_ref::<FatalKind>() {
        return Some(k.0);
    }
    for cause in err.chain() {
        if let Some(v) = cause.downcast_ref::<VaultError>() {
            match v {
                VaultError::PermissionDenied { .. } => return Some("permission-denied"),
                VaultError::MountNotFound { .. } | VaultError::NotKv { .. } => return Some("mount"),
                VaultError::Config(_) => return Some("config"),
                _ => {}
            }
        }
        if let Some(s) = cause.downcast_ref::<vsync_state::StateError>() {
            match s {
                vsync_state::StateError::UnknownFormat { .. } => return Some("unknown-format"),
                vsync_state::StateError::Corrupt { .. } => return Some("state-corrupt"),
                vsync_state::StateError::Conflict { .. } => return Some("state-conflict"),
                vsync_state::StateError::Locked { .. } => return Some("state-locked"),
                vsync_state::StateError::Consul(c) if !c.is_transient() => return Some("state-store"),
                _ => {}
            }
        }
        if let Some(c) = cause.downcast_ref::<ConsulError>()
            && !c.is_transient()
        {
            return Some("state-store");
        }
    }
    None
}

/// Whether an error came from a state store (counted against [`STATE_RETRY_BUDGET`]).
pub fn is_state_error(err: &anyhow::Error) -> bool {
    err.chain()
        .any(|c| c.downcast_ref::<vsync_state::StateError>().is_some() || c.downcast_ref::<ConsulError>().is_some())
}

/// Why the process stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// Not stopping.
    Running,
    /// SIGINT or SIGTERM: exit 0 without committing anything partial.
    Signal,
    /// A background task hit a fatal error (e.g. a token that cannot be renewed).
    Fatal(String),
}

/// Set once SIGINT or SIGTERM arrives, or a background task trips a fatal error.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<Stop>,
    tx: Arc<watch::Sender<Stop>>,
}

impl Shutdown {
    /// Starts listening for SIGINT and SIGTERM.
    pub fn install() -> Self {
        let (tx, rx) = watch::channel(Stop::Running);
        let tx = Arc::new(tx);
        let signal_tx = tx.clone();
        tokio::spawn(async move {
            signal().await;
            info!("signal received: stopping (nothing partial is committed)");
            signal_tx.send_if_modified(|s| {
                let first = *s == Stop::Running;
                if first {
                    *s = Stop::Signal;
                }
                first
            });
        });
        Self { rx, tx }
    }

    /// Stops the process with a fatal error (first cause wins).
    pub fn trip_fatal(&self, message: String) {
        self.tx.send_if_modified(|s| {
            let first = *s == Stop::Running;
            if first {
                *s = Stop::Fatal(message);
            }
            first
        });
    }

    /// Whether the process is stopping.
    pub fn requested(&self) -> bool {
        *self.rx.borrow() != Stop::Running
    }

    /// Why the process stops (`Running` if it does not).
    pub fn reason(&self) -> Stop {
        self.rx.borrow().clone()
    }

    /// Resolves when the process should stop.
    pub async fn wait(&mut self) {
        let _ = self.rx.wait_for(|v| *v != Stop::Running).await;
    }
}

async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Watches a side's root and pokes `trigger` when it changes. Runs until the process ends.
///
/// Follows Consul's watch rules (reference/consul-kv.md §2.3): compare versions (wake-ups can
/// be spurious), reset when the index goes backwards, back off on errors (1 s x failures²,
/// capped at 60 s), and never poll faster than every 250 ms.
pub fn spawn_root_watch(store: StateStore, side: &'static str, trigger: Arc<Notify>) {
    tokio::spawn(async move {
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
    });
}

/// Waits for the next cycle: a trigger, the backup ticker, or shutdown (returns false).
/// Triggers that arrived during the last cycle are stored (at most one) by [`Notify`], so they
/// coalesce into one follow-up cycle.
pub async fn wait_next(interval: Duration, trigger: Option<&Notify>, shutdown: &mut Shutdown) -> bool {
    if shutdown.requested() {
        return false;
    }
    let poke = async {
        match trigger {
            Some(t) => t.notified().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::time::sleep(interval) => true,
        _ = poke => true,
        _ = shutdown.wait() => false,
    }
}

/// What the alert webhook receives. Never tokens or secret values: messages come from typed
/// errors that carry neither.
#[derive(Debug, Serialize)]
pub struct AlertBody<'a> {
    /// `origin`, `destination` or `run`.
    pub role: &'a str,
    /// Destination name, if any.
    pub destination: Option<&'a str>,
    /// Fatal kind (`permission-denied`, `mass-delete-guard`, ...).
    pub kind: &'a str,
    /// The error with its context.
    pub message: String,
    /// RFC 3339 time.
    pub time: String,
}

/// Posts fatal errors to the configured webhook (a few attempts), and logs them.
#[derive(Debug, Clone)]
pub struct Alerter {
    webhook: Option<String>,
    http: reqwest::Client,
}

impl Alerter {
    /// An alerter for `[alert] webhook` (none: log only).
    pub fn new(webhook: Option<String>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Self { webhook, http }
    }

    /// Reports a fatal error: log with full context, then the webhook.
    pub async fn fatal(&self, role: &str, destination: Option<&str>, err: &anyhow::Error) {
        // A `--once` cycle that failed for a transient reason is reported by the exit code only.
        let Some(kind) = fatal_kind(err) else { return };
        error!(role, destination, kind, "fatal: {err:#}; stopping");
        let Some(url) = &self.webhook else { return };
        let body = AlertBody {
            role,
            destination,
            kind,
            message: format!("{err:#}"),
            time: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        };
        for attempt in 0..3u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
            }
            match self.http.post(url).json(&body).send().await {
                Ok(r) if r.status().is_success() => return,
                Ok(r) => warn!(status = r.status().as_u16(), "alert webhook refused the alert"),
                Err(e) => warn!(error = %e, "alert webhook unreachable"),
            }
        }
        error!("the alert webhook could not be reached; the fatal error is only in this log");
    }
}

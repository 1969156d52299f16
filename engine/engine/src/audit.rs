//! The event-driven origin's feed (`[origin] audit_listen`): a TCP listener for a Vault/OpenBao
//! **socket audit device** (`socket_type = "tcp"`, JSON format).
//!
//! The server writes one JSON object per line, `\n`-terminated, first a `request` entry and,
//! once the request is done, a `response` entry; each device keeps one connection open and
//! opens a new one after an error (it dials when it has a line to write). The feed reads every
//! connection continuously (so the server is never held up by vsync beyond a short lock),
//! parses only `type`, `error` and the request's `operation`, `path`, `mount_point` and
//! `namespace`, and turns successful writes on a configured mount into [`Change`]s, coalesced in
//! a bounded set of dirty paths that the origin role takes in batches ([`AuditFeed::take`]).
//!
//! Audit lines carry HMAC'd values (never plaintext), but they are still never logged, stored
//! or kept: a line lives in a reused read buffer until the next one overwrites it, and only the
//! mount and the path inside it are kept, once the path passed [`valid_key`].
//!
//! **A network-facing surface.** Anyone who can reach the port is a peer, so the feed bounds
//! what a peer can cost (see README "Network exposure"):
//! - only sources in `audit_allow` ([`AuditSettings::allow`]; loopback by default) are read;
//!   the others are closed at once, counted and logged at most once a minute (address only);
//! - memory is bounded in bytes: a line longer than [`max_line`] is not buffered (its first
//!   bytes decide whether it can matter), a connection's buffers shrink back after a long line,
//!   the dirty set holds at most [`MAX_DIRTY_BYTES`], and at most [`MAX_CONNECTIONS`] are read;
//! - time is bounded: a line must complete within [`LINE_TIMEOUT`], a connection that has not
//!   delivered an audit entry is closed after [`UNPROVEN_IDLE`], TCP keepalive finds dead peers,
//!   and when every slot is taken the connection idle the longest is dropped, so the real device
//!   always gets a slot when it (re)connects;
//! - whatever a peer does costs at most one full scan per [`RESCAN_SPACING`]: every refusal and
//!   overflow asks for a rescan, and at most one is ever queued.
//!
//! Whatever the feed sees, the periodic full scan stays the backstop. When the feed knows it
//! may have missed an event (a connection that ended mid-line or with an error, a line too long
//! to read whole, more dirty paths than the set holds, a refused or dropped connection, a
//! configured mount enabled, disabled, tuned or moved) it asks for a rescan, and the origin
//! scans everything.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

/// Longest key path (inside its mount, KV v2 `data/` prefix included) an event is taken for.
/// Vault sets no limit of its own below its 1 MiB request line; a longer path is not kept (its
/// event asks for a rescan instead), so no peer makes the feed hold a megabyte per path.
pub const MAX_KEY_BYTES: usize = 4096;

/// The fixed part of a legal audit line: ids, times, the auth block (token accessor, policies,
/// metadata, entity), headers and the response's version metadata. A KV write's line measures
/// 1.5-3 KiB on OpenBao 2.x; 32 KiB leaves room for long policy lists and token metadata.
pub const LINE_FIXED_BYTES: usize = 32 * 1024;

/// Room for the request's data: each field is its name and a 71-byte HMAC (`hmac-sha256:` and
/// 64 hex digits), so 64 KiB is some 800 fields. A write with more costs a rescan instead of an
/// update (correct, only slower).
pub const LINE_FIELDS_BYTES: usize = 64 * 1024;

/// The longest legal audit line of a write on `mounts`: the fixed part, the data, and the
/// request's path and mount point (each up to the longest mount plus [`MAX_KEY_BYTES`],
/// JSON-escaped: at most 6 bytes per byte, `\u003c`). About 145 KiB for short mounts.
///
/// A longer line is not buffered: its first `max_line` bytes are classified
/// ([`Filter::classify_prefix`]) and the rest skipped as it arrives. A read or list (a scan's
/// own `LIST` of a large folder makes a long line: keys are HMAC'd) is ignored; a write, or
/// anything the prefix cannot tell, asks for a rescan.
pub fn max_line(mounts: &[String]) -> usize {
    let longest_mount = mounts.iter().map(String::len).max().unwrap_or(0);
    LINE_FIXED_BYTES + LINE_FIELDS_BYTES + 2 * 6 * (longest_mount + MAX_KEY_BYTES)
}

/// The read buffer of a connection; a line longer than this grows the line buffer.
const READ_BUFFER: usize = 16 * 1024;

/// A line buffer grown past this by a long line is freed once the line is handled, so a peer
/// that sent one long line does not keep the memory.
const KEEP_LINE_CAPACITY: usize = 64 * 1024;

/// Most bytes the dirty set holds between batches (paths plus [`DIRTY_ENTRY_OVERHEAD`] each);
/// beyond it the set is dropped for one rescan.
pub const MAX_DIRTY_BYTES: usize = 8 * 1024 * 1024;

/// What one dirty entry costs beyond its two strings: their headers and the hash table slot.
const DIRTY_ENTRY_OVERHEAD: usize = 96;

/// Most connections read at once (a server opens one per device). With all of them taken, a
/// new connection drops the one idle the longest ([`Registry::evict`]).
pub const MAX_CONNECTIONS: usize = 64;

/// A line must arrive whole within this of its first byte (the device writes a line at once;
/// a peer that trickles bytes is cut, with a rescan in case it was a device on a sick link).
pub const LINE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection that has not delivered a single audit entry in this long is closed (the device
/// dials when it has a line to write, so it never sits silent on a new connection). A
/// connection that has is kept however long it idles: closing it would lose the server's next
/// event (its first write after the close still succeeds locally); TCP keepalive
/// ([`KEEPALIVE`]) closes it when the peer is gone.
pub const UNPROVEN_IDLE: Duration = Duration::from_secs(30);

/// TCP keepalive: first probe after this much silence, then every 10 s, 3 probes.
pub const KEEPALIVE: Duration = Duration::from_secs(60);

/// Forced rescans are handed out at most once per this: a storm of bad lines, refused peers or
/// dropped connections costs one full scan per period, however long it lasts.
pub const RESCAN_SPACING: Duration = Duration::from_secs(15);

/// Repeated warnings (refused peers, bad lines) are logged at most once per this.
const LOG_SPACING: Duration = Duration::from_secs(60);

/// A failure to start the feed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The listen address could not be bound.
    #[error("origin.audit_listen: cannot listen on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// What the feed listens for.
#[derive(Debug, Clone)]
pub struct AuditSettings {
    /// `origin.audit_listen`.
    pub listen: SocketAddr,
    /// The configured mounts, normalised (`secret/`).
    pub mounts: Vec<String>,
    /// The origin client's namespace (`None`: root).
    pub namespace: Option<String>,
    /// Sources allowed to connect (`origin.audit_allow`); [`loopback`] by default.
    pub allow: Vec<IpNet>,
}

/// The default `audit_allow`: `127.0.0.0/8` and `::1`.
pub fn loopback() -> Vec<IpNet> {
    vec![
        IpNet::V4(ipnet::Ipv4Net::new_assert(std::net::Ipv4Addr::new(127, 0, 0, 0), 8)),
        IpNet::V6(ipnet::Ipv6Net::new_assert(std::net::Ipv6Addr::LOCALHOST, 128)),
    ]
}

/// A successful write on a configured mount, as the request named it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Change {
    /// The configured mount (`secret/`).
    pub mount: String,
    /// The request path inside the mount: `data/app/db`, `metadata/app/db`, `delete/...`,
    /// `undelete/...`, `destroy/...` on KV v2; the key itself on KV v1. The origin maps it to
    /// a key once it knows the mount's KV version.
    pub rest: String,
}

impl Change {
    fn cost(&self) -> usize {
        self.mount.len() + self.rest.len() + DIRTY_ENTRY_OVERHEAD
    }
}

/// What the feed saw since the last [`AuditFeed::take`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// Changed paths, each once.
    pub changes: Vec<Change>,
    /// An event may have been missed: only a full scan is sure to be right.
    pub rescan: bool,
}

impl Batch {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && !self.rescan
    }
}

/// Why the feed asked for a rescan (the `reason` label of `vsync_audit_rescans_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RescanReason {
    /// A connection ended mid-line, with an error, or stalled inside a line.
    Broken,
    /// A write's line was too long to read whole.
    Oversize,
    /// The dirty set outgrew [`MAX_DIRTY_BYTES`].
    Overflow,
    /// A source outside `audit_allow` connected.
    Refused,
    /// A connection was dropped for a new one (every slot taken).
    Evicted,
    /// A write named a path that failed [`valid_key`].
    Invalid,
    /// A configured mount was enabled, disabled, tuned or moved.
    Mount,
    /// The listener was bound again (after a takeover): events may have been missed.
    Resumed,
}

impl RescanReason {
    /// Every reason, in a stable order.
    pub const ALL: [RescanReason; 8] = [
        Self::Broken,
        Self::Oversize,
        Self::Overflow,
        Self::Refused,
        Self::Evicted,
        Self::Invalid,
        Self::Mount,
        Self::Resumed,
    ];

    /// The metric label.
    pub fn name(self) -> &'static str {
        match self {
            Self::Broken => "broken",
            Self::Oversize => "oversize",
            Self::Overflow => "overflow",
            Self::Refused => "refused",
            Self::Evicted => "evicted",
            Self::Invalid => "invalid",
            Self::Mount => "mount",
            Self::Resumed => "resumed",
        }
    }
}

/// Counters since the feed started (never any line content).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedStats {
    /// Connections accepted.
    pub connections: u64,
    /// Connections refused: the source is not in `audit_allow`.
    pub refused: u64,
    /// Connections dropped to make room for a new one.
    pub evicted: u64,
    /// Connections closed for a stalled line or for idling without an audit entry.
    pub timed_out: u64,
    /// Complete lines read.
    pub lines: u64,
    /// Lines that became a [`Change`].
    pub changes: u64,
    /// Lines that were not an audit entry (skipped).
    pub garbage: u64,
    /// Lines over [`max_line`] (not buffered).
    pub oversize: u64,
    /// Writes whose path failed [`valid_key`] (the path is never logged).
    pub invalid: u64,
    /// Rescans asked for, by reason ([`RescanReason::ALL`] order).
    pub rescans: [u64; 8],
    /// Rescans handed to the origin (at most one per [`RESCAN_SPACING`]).
    pub forced_scans: u64,
    /// Whether the listener is bound now.
    pub listening: bool,
}

impl FeedStats {
    /// Rescans asked for, all reasons.
    pub fn rescans_asked(&self) -> u64 {
        self.rescans.iter().sum()
    }
}

#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    refused: AtomicU64,
    evicted: AtomicU64,
    timed_out: AtomicU64,
    lines: AtomicU64,
    changes: AtomicU64,
    garbage: AtomicU64,
    oversize: AtomicU64,
    invalid: AtomicU64,
    rescans: [AtomicU64; 8],
    forced_scans: AtomicU64,
    listening: AtomicU64,
}

#[derive(Debug)]
struct Dirty {
    changes: HashSet<Change>,
    /// What `changes` costs ([`Change::cost`]).
    bytes: usize,
    /// A rescan is queued (at most one).
    rescan: bool,
    /// When the next rescan may be handed out.
    next_rescan: Instant,
}

/// At most one log line per [`LOG_SPACING`]; the others are counted into the next one.
#[derive(Debug, Default)]
struct Throttle {
    last: Mutex<Option<(Instant, u64)>>,
}

impl Throttle {
    /// `Some(suppressed since the last line)` when a line may be logged now.
    fn permit(&self) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        match &mut *last {
            Some((at, suppressed)) if now.duration_since(*at) < LOG_SPACING => {
                *suppressed += 1;
                None
            }
            other => {
                let suppressed = other.map_or(0, |(_, n)| n);
                *other = Some((now, 0));
                Some(suppressed)
            }
        }
    }
}

#[derive(Debug, Default)]
struct Throttles {
    refused: Throttle,
    evicted: Throttle,
    broken: Throttle,
    oversize: Throttle,
    garbage: Throttle,
    invalid: Throttle,
}

#[derive(Debug)]
struct Shared {
    dirty: Mutex<Dirty>,
    notify: Notify,
    counters: Counters,
    filter: Filter,
    max_line: usize,
    allow: Vec<IpNet>,
    throttles: Throttles,
}

impl Shared {
    fn new(settings: &AuditSettings) -> Self {
        Self {
            dirty: Mutex::new(Dirty {
                changes: HashSet::new(),
                bytes: 0,
                rescan: false,
                next_rescan: Instant::now(),
            }),
            notify: Notify::new(),
            counters: Counters::default(),
            filter: Filter::new(settings.mounts.clone(), settings.namespace.as_deref()),
            max_line: max_line(&settings.mounts),
            allow: settings.allow.clone(),
            throttles: Throttles::default(),
        }
    }

    fn dirty(&self) -> MutexGuard<'_, Dirty> {
        // A panic while holding this lock cannot leave the set inconsistent (insert or clear).
        self.dirty.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn allowed(&self, ip: IpAddr) -> bool {
        // An IPv4 peer on a dual-stack socket shows as `::ffff:a.b.c.d`.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.allow.iter().any(|net| net.contains(&ip))
    }

    fn add(&self, change: Change) {
        {
            let mut dirty = self.dirty();
            let cost = change.cost();
            if dirty.changes.contains(&change) {
                return;
            }
            if dirty.bytes + cost > MAX_DIRTY_BYTES {
                // Dropped, not kept: a rescan covers every path, and the set never outgrows
                // its bound.
                dirty.changes = HashSet::new();
                dirty.bytes = 0;
                drop(dirty);
                self.rescan(RescanReason::Overflow);
                return;
            }
            dirty.bytes += cost;
            dirty.changes.insert(change);
        }
        self.notify.notify_one();
    }

    fn rescan(&self, reason: RescanReason) {
        let index = RescanReason::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.counters.rescans[index].fetch_add(1, Ordering::Relaxed);
        // At most one queued: a storm of reasons is one flag.
        self.dirty().rescan = true;
        self.notify.notify_one();
    }
}

/// The running feed: a listener task and its connections; stopped when dropped.
#[derive(Debug)]
pub struct AuditFeed {
    settings: AuditSettings,
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

impl Drop for AuditFeed {
    fn drop(&mut self) {
        // Connection tasks end with the listener task's JoinSet.
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl AuditFeed {
    /// Listens on `addr` for audit devices reporting on `mounts` (normalised, `secret/`) in
    /// `namespace` (the origin client's namespace; `None` for the root namespace), from
    /// loopback sources only.
    pub async fn bind(addr: SocketAddr, mounts: Vec<String>, namespace: Option<String>) -> Result<Self, AuditError> {
        Self::bind_with(AuditSettings { listen: addr, mounts, namespace, allow: loopback() }).await
    }

    /// Listens as `settings` say. An address in use (a demoted origin on this host that has
    /// not let go yet) is retried in the background every second, the full scans covering
    /// meanwhile; any other bind error is returned.
    pub async fn bind_with(settings: AuditSettings) -> Result<Self, AuditError> {
        let shared = Arc::new(Shared::new(&settings));
        let mut feed = Self { addr: settings.listen, settings, shared, task: None };
        feed.listen().await?;
        Ok(feed)
    }

    async fn listen(&mut self) -> Result<(), AuditError> {
        let addr = self.settings.listen;
        let shared = self.shared.clone();
        match TcpListener::bind(addr).await {
            Ok(listener) => {
                self.addr = listener.local_addr().map_err(|source| AuditError::Bind { addr, source })?;
                // A configured port 0 got a port: binding again after a release takes the same.
                self.settings.listen = self.addr;
                info!(listen = %self.addr, max_line = shared.max_line, "audit feed: listening for a socket audit device");
                self.task = Some(tokio::spawn(accept_loop(listener, shared)));
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                error!(listen = %addr, "audit feed: the address is in use (by a demoted origin that has not let go yet?); \
                     retrying every second, full scans only meanwhile");
                self.task = Some(tokio::spawn(async move {
                    let listener = bind_patiently(addr).await;
                    info!(listen = %addr, "audit feed: listening for a socket audit device");
                    shared.rescan(RescanReason::Resumed);
                    accept_loop(listener, shared).await;
                }));
                Ok(())
            }
            Err(source) => Err(AuditError::Bind { addr, source }),
        }
    }

    /// Stops listening and closes every connection (the origin lost its lock: the new writer
    /// binds the port). [`resume`](Self::resume) listens again.
    pub async fn release(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            // Awaited, so the port is free when this returns.
            let _ = task.await;
            self.shared.counters.listening.store(0, Ordering::Relaxed);
            info!(listen = %self.addr, "audit feed: released the listener (this process is not the origin's writer)");
        }
    }

    /// Listens again after [`release`](Self::release), asking for a rescan (events may have
    /// been missed meanwhile). An address still in use is retried in the background.
    pub async fn resume(&mut self) -> Result<(), AuditError> {
        if self.task.is_some() {
            return Ok(());
        }
        self.listen().await?;
        self.shared.rescan(RescanReason::Resumed);
        Ok(())
    }

    /// The address actually bound (a configured port 0 gets a free one).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The longest line read whole ([`max_line`] of the configured mounts).
    pub fn max_line(&self) -> usize {
        self.shared.max_line
    }

    /// Resolves once there is something to [`take`](Self::take) (at once if there is already).
    /// A queued rescan counts from the moment [`RESCAN_SPACING`] allows it.
    pub async fn changed(&self) {
        loop {
            // Registered before the check, so a change made in between still wakes us.
            let notified = self.shared.notify.notified();
            let wait_until = {
                let dirty = self.shared.dirty();
                if !dirty.changes.is_empty() || (dirty.rescan && Instant::now() >= dirty.next_rescan) {
                    return;
                }
                dirty.rescan.then_some(dirty.next_rescan)
            };
            match wait_until {
                Some(at) => {
                    tokio::select! {
                        () = notified => {}
                        () = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Takes everything seen so far, leaving the set empty. A queued rescan is handed out only
    /// once [`RESCAN_SPACING`] has passed since the last; until then the changes come alone.
    pub fn take(&self) -> Batch {
        let mut dirty = self.shared.dirty();
        let now = Instant::now();
        let changes = std::mem::take(&mut dirty.changes);
        dirty.bytes = 0;
        if dirty.rescan && now >= dirty.next_rescan {
            dirty.rescan = false;
            dirty.next_rescan = now + RESCAN_SPACING;
            self.shared.counters.forced_scans.fetch_add(1, Ordering::Relaxed);
            // The scan reads every path these name.
            return Batch { changes: Vec::new(), rescan: true };
        }
        let mut changes: Vec<Change> = changes.into_iter().collect();
        changes.sort_unstable();
        Batch { changes, rescan: false }
    }

    /// A full scan starts now: it covers everything seen so far, a queued rescan included.
    pub fn scan_started(&self) {
        let mut dirty = self.shared.dirty();
        dirty.changes = HashSet::new();
        dirty.bytes = 0;
        if dirty.rescan {
            dirty.rescan = false;
            dirty.next_rescan = Instant::now() + RESCAN_SPACING;
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> FeedStats {
        self.stats_source().get()
    }

    /// A handle that reads the counters (for telemetry), valid for the life of the process.
    pub fn stats_source(&self) -> FeedStatsSource {
        FeedStatsSource(self.shared.clone())
    }
}

/// Reads an [`AuditFeed`]'s counters from elsewhere ([`AuditFeed::stats_source`]).
#[derive(Debug, Clone)]
pub struct FeedStatsSource(Arc<Shared>);

impl FeedStatsSource {
    /// The counters now.
    pub fn get(&self) -> FeedStats {
        let c = &self.0.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        FeedStats {
            connections: load(&c.connections),
            refused: load(&c.refused),
            evicted: load(&c.evicted),
            timed_out: load(&c.timed_out),
            lines: load(&c.lines),
            changes: load(&c.changes),
            garbage: load(&c.garbage),
            oversize: load(&c.oversize),
            invalid: load(&c.invalid),
            rescans: std::array::from_fn(|i| load(&c.rescans[i])),
            forced_scans: load(&c.forced_scans),
            listening: load(&c.listening) == 1,
        }
    }
}

/// Binds `addr`, retrying every second while it is in use; logs at most once a minute.
async fn bind_patiently(addr: SocketAddr) -> TcpListener {
    let throttle = Throttle::default();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        match TcpListener::bind(addr).await {
            Ok(listener) => return listener,
            Err(e) => {
                if throttle.permit().is_some() {
                    warn!(listen = %addr, error = %e, "audit feed: still cannot listen; full scans only meanwhile");
                }
            }
        }
    }
}

/// One connection's slot: what the refusal policy needs to pick one to drop.
#[derive(Debug)]
struct Slot {
    /// When it last completed a line (or opened).
    active: Instant,
    /// It delivered an audit entry: likely the real device.
    proven: bool,
    abort: Option<AbortHandle>,
}

/// The open connections, by id.
#[derive(Debug, Default)]
struct Registry {
    slots: Mutex<HashMap<u64, Slot>>,
}

impl Registry {
    fn slots(&self) -> MutexGuard<'_, HashMap<u64, Slot>> {
        self.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Drops the connection idle the longest, one that never delivered an audit entry first.
    /// Returns whether the dropped one had (so events may be lost with it).
    fn evict(&self) -> Option<bool> {
        let mut slots = self.slots();
        let (&id, _) = slots.iter().min_by_key(|(_, s)| (s.proven, s.active))?;
        let slot = slots.remove(&id)?;
        if let Some(abort) = slot.abort {
            abort.abort();
        }
        Some(slot.proven)
    }

    fn touch(&self, id: u64, proven: bool) {
        if let Some(slot) = self.slots().get_mut(&id) {
            slot.active = Instant::now();
            slot.proven |= proven;
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    shared.counters.listening.store(1, Ordering::Relaxed);
    let registry = Arc::new(Registry::default());
    let mut connections = tokio::task::JoinSet::new();
    let mut next_id = 0u64;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if !admit(&shared, &registry, peer) {
                        continue;
                    }
                    next_id += 1;
                    let id = next_id;
                    registry.slots().insert(id, Slot { active: Instant::now(), proven: false, abort: None });
                    let (shared, registry_of_task) = (shared.clone(), registry.clone());
                    let abort = connections.spawn(async move {
                        serve_connection(stream, peer, &shared, &registry_of_task, id).await;
                        registry_of_task.slots().remove(&id);
                    });
                    if let Some(slot) = registry.slots().get_mut(&id) {
                        slot.abort = Some(abort);
                    }
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    warn!(error = %e, "audit feed: accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// The refusal policy at accept: a source outside `audit_allow` is closed; with every slot
/// taken, the connection idle the longest is dropped for the new one. Both ask for a rescan.
fn admit(shared: &Shared, registry: &Registry, peer: SocketAddr) -> bool {
    if !shared.allowed(peer.ip()) {
        shared.counters.refused.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = shared.throttles.refused.permit() {
            warn!(peer = %peer.ip(), refused_since_last_log = suppressed,
                "audit feed: refused a connection from a source outside origin.audit_allow");
        }
        // Could be a device whose address the allow list misses: a scan covers its events.
        shared.rescan(RescanReason::Refused);
        return false;
    }
    if registry.slots().len() >= MAX_CONNECTIONS {
        let dropped = registry.evict();
        shared.counters.evicted.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = shared.throttles.evicted.permit() {
            warn!(connections = MAX_CONNECTIONS, dropped_since_last_log = suppressed, dropped_delivered_entries = dropped.unwrap_or(false),
                "audit feed: every connection slot was taken; dropped the one idle the longest");
        }
        shared.rescan(RescanReason::Evicted);
    }
    true
}

/// Reads one accepted connection to its end and settles how it ended.
async fn serve_connection(stream: TcpStream, peer: SocketAddr, shared: &Shared, registry: &Registry, id: u64) {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE)
        .with_interval(Duration::from_secs(10))
        .with_retries(3);
    if let Err(e) = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive) {
        debug!(error = %e, "audit feed: cannot set TCP keepalive");
    }
    shared.counters.connections.fetch_add(1, Ordering::Relaxed);
    debug!(%peer, "audit feed: connection opened");
    let ended = read_connection(stream, shared, |proven| registry.touch(id, proven)).await;
    match ended.how {
        Ending::Clean => debug!(%peer, lines = ended.lines, "audit feed: connection closed"),
        Ending::Idle => {
            shared.counters.timed_out.fetch_add(1, Ordering::Relaxed);
            debug!(%peer, "audit feed: closed a connection that sent no audit entry");
        }
        Ending::Partial | Ending::Error | Ending::Stalled => {
            if ended.how == Ending::Stalled {
                shared.counters.timed_out.fetch_add(1, Ordering::Relaxed);
            }
            // The server may have written an event we never read whole.
            if let Some(suppressed) = shared.throttles.broken.permit() {
                warn!(%peer, lines = ended.lines, ending = ended.how.describe(), similar_since_last_log = suppressed,
                    "audit feed: connection ended mid-line, with an error or stalled; a full origin scan follows");
            }
            shared.rescan(RescanReason::Broken);
        }
    }
    if ended.garbage > 0
        && let Some(suppressed) = shared.throttles.garbage.permit()
    {
        warn!(%peer, garbage = ended.garbage, similar_since_last_log = suppressed,
            "audit feed: skipped lines that were not JSON audit entries (is the device's format `json`?)");
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// EOF after a complete line.
    Clean,
    /// EOF inside a line.
    Partial,
    /// A read error (reset and the like).
    Error,
    /// A line did not complete within [`LINE_TIMEOUT`].
    Stalled,
    /// No audit entry within [`UNPROVEN_IDLE`].
    Idle,
}

impl Ending {
    fn describe(self) -> &'static str {
        match self {
            Ending::Clean => "clean",
            Ending::Partial => "end of stream inside a line",
            Ending::Error => "read error",
            Ending::Stalled => "a line stalled",
            Ending::Idle => "idle without an audit entry",
        }
    }
}

#[derive(Debug)]
struct Ended {
    how: Ending,
    lines: u64,
    garbage: u64,
}

/// One line being read: its bytes up to `limit`, or only the fact that it is longer.
#[derive(Debug)]
struct LineBuf {
    bytes: Vec<u8>,
    /// Bytes seen past `limit` (not kept).
    overflow: bool,
    /// When its first byte arrived.
    started: Option<Instant>,
    limit: usize,
}

impl LineBuf {
    fn push(&mut self, chunk: &[u8]) {
        self.started.get_or_insert_with(Instant::now);
        let room = self.limit.saturating_sub(self.bytes.len());
        if chunk.len() > room {
            self.overflow = true;
        }
        let keep = &chunk[..chunk.len().min(room)];
        if !keep.is_empty() {
            // Grows in steps no larger than needed up to the limit.
            self.bytes.reserve_exact(keep.len().max(self.bytes.len().min(room)));
            self.bytes.extend_from_slice(keep);
        }
    }

    fn in_progress(&self) -> bool {
        self.started.is_some()
    }

    fn reset(&mut self) {
        if self.bytes.capacity() > KEEP_LINE_CAPACITY {
            self.bytes = Vec::new();
        } else {
            self.bytes.clear();
        }
        self.overflow = false;
        self.started = None;
    }
}

/// Reads lines until the stream ends, a line stalls, or an unproven connection idles,
/// handing each complete line to the filter. `touch(proven)` marks a complete line.
async fn read_connection(stream: impl AsyncRead + Unpin, shared: &Shared, mut touch: impl FnMut(bool)) -> Ended {
    let mut reader = BufReader::with_capacity(READ_BUFFER, stream);
    let mut line = LineBuf { bytes: Vec::new(), overflow: false, started: None, limit: shared.max_line };
    let (mut lines, mut garbage, mut proven) = (0u64, 0u64, false);
    let mut idle_since = Instant::now();
    let how = loop {
        let deadline = match (line.started, proven) {
            (Some(started), _) => Some((started + LINE_TIMEOUT, Ending::Stalled)),
            (None, false) => Some((idle_since + UNPROVEN_IDLE, Ending::Idle)),
            (None, true) => None,
        };
        let filled = match deadline {
            Some((at, ending)) => match tokio::time::timeout_at(at, reader.fill_buf()).await {
                Ok(r) => r,
                Err(_) => break ending,
            },
            None => reader.fill_buf().await,
        };
        let available = match filled {
            Ok(b) => b,
            Err(_) => break Ending::Error,
        };
        if available.is_empty() {
            break if line.in_progress() { Ending::Partial } else { Ending::Clean };
        }
        let (used, complete) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        line.push(&available[..used]);
        reader.consume(used);
        if !complete {
            continue;
        }
        lines += 1;
        shared.counters.lines.fetch_add(1, Ordering::Relaxed);
        let seen = handle_line(shared, &line);
        garbage += u64::from(seen == Handled::Garbage);
        proven |= seen == Handled::Entry;
        touch(seen == Handled::Entry);
        line.reset();
        idle_since = Instant::now();
    };
    Ended { how, lines, garbage }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handled {
    /// An audit entry (whatever it meant).
    Entry,
    Garbage,
}

/// Classifies one complete line and records what it means.
fn handle_line(shared: &Shared, line: &LineBuf) -> Handled {
    let seen = if line.overflow {
        shared.counters.oversize.fetch_add(1, Ordering::Relaxed);
        shared.filter.classify_prefix(&line.bytes)
    } else {
        shared.filter.classify(&line.bytes)
    };
    match seen {
        Seen::Change(c) => {
            shared.counters.changes.fetch_add(1, Ordering::Relaxed);
            shared.add(c);
        }
        Seen::Rescan(reason) => {
            if reason == RescanReason::Oversize
                && let Some(suppressed) = shared.throttles.oversize.permit()
            {
                warn!(limit = shared.max_line, similar_since_last_log = suppressed,
                    "audit feed: a write's line was over the size limit; a full origin scan follows");
            }
            if reason == RescanReason::Invalid {
                shared.counters.invalid.fetch_add(1, Ordering::Relaxed);
                // Never the path itself: it failed validation, so it may be anything.
                if let Some(suppressed) = shared.throttles.invalid.permit() {
                    warn!(similar_since_last_log = suppressed,
                        "audit feed: a write named a path that is not a usable key (not logged); a full origin scan follows");
                }
            }
            shared.rescan(reason);
        }
        Seen::Ignored => {}
        Seen::Garbage => {
            shared.counters.garbage.fetch_add(1, Ordering::Relaxed);
            return Handled::Garbage;
        }
    }
    Handled::Entry
}

/// Whether a path from an audit line can be a key: at most [`MAX_KEY_BYTES`], no control
/// characters, no empty, `.` or `..` segments (a trailing `/` names a folder and is allowed).
/// Paths that fail are never logged, kept or read.
pub fn valid_key(rest: &str) -> bool {
    rest.len() <= MAX_KEY_BYTES
        && !rest.chars().any(char::is_control)
        && rest
            .trim_end_matches('/')
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..")
}

/// What one line means.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Change(Change),
    /// The feed may be wrong about a configured mount: only a scan is right.
    Rescan(RescanReason),
    Ignored,
    /// Not a JSON audit entry.
    Garbage,
}

/// The few fields of an audit entry the feed reads; everything else is skipped unparsed.
#[derive(Deserialize)]
struct Entry {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    request: Option<Request>,
}

#[derive(Deserialize)]
struct Request {
    #[serde(default)]
    operation: String,
    #[serde(default)]
    path: String,
    #[serde(default)]
    mount_point: Option<String>,
    #[serde(default)]
    namespace: Option<Namespace>,
}

#[derive(Deserialize)]
struct Namespace {
    #[serde(default)]
    path: Option<String>,
}

/// The operations that change a key.
fn is_write(operation: &str) -> bool {
    matches!(operation, "create" | "update" | "delete" | "patch")
}

/// Which lines matter: successful writes on the configured mounts, in the configured namespace.
#[derive(Debug)]
struct Filter {
    /// Normalised mounts, longest first (so a nested mount wins over its parent's prefix).
    mounts: Vec<String>,
    /// The namespace path without surrounding slashes (`""`: root).
    namespace: String,
}

impl Filter {
    fn new(mut mounts: Vec<String>, namespace: Option<&str>) -> Self {
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        Self {
            mounts,
            namespace: namespace.unwrap_or("").trim_matches('/').to_owned(),
        }
    }

    fn classify(&self, line: &[u8]) -> Seen {
        let Ok(entry) = serde_json::from_slice::<Entry>(line) else {
            return Seen::Garbage;
        };
        // The request entry comes before the request is handled; only the response entry
        // says the write is done, so a read after it sees the write.
        if entry.kind != "response" {
            return Seen::Ignored;
        }
        let Some(request) = entry.request else {
            return Seen::Garbage;
        };
        if entry.error.is_some_and(|e| !e.is_empty()) {
            return Seen::Ignored;
        }
        if !is_write(&request.operation) {
            return Seen::Ignored;
        }
        let namespace = request.namespace.and_then(|n| n.path).unwrap_or_default();
        if namespace.trim_matches('/') != self.namespace {
            return Seen::Ignored;
        }
        let path = request.path.as_str();
        if let Some(rest) = path.strip_prefix("sys/") {
            return self.system(rest);
        }
        let mount = match request.mount_point.as_deref() {
            Some(m) if self.mounts.iter().any(|c| c == m) && path.starts_with(m) => m,
            _ => match self.mounts.iter().find(|m| path.starts_with(m.as_str())) {
                Some(m) => m.as_str(),
                None => return Seen::Ignored,
            },
        };
        let rest = &path[mount.len()..];
        if rest.is_empty() {
            return Seen::Ignored;
        }
        if !valid_key(rest) {
            return Seen::Rescan(RescanReason::Invalid);
        }
        Seen::Change(Change {
            mount: mount.to_owned(),
            rest: rest.to_owned(),
        })
    }

    /// A line over the limit, from its first bytes: a request entry or a read (a `LIST` of a
    /// large folder) is ignored; a write, or a prefix too short to tell, asks for a rescan.
    fn classify_prefix(&self, prefix: &[u8]) -> Seen {
        let mut partial = Partial::default();
        // The prefix ends mid-value: the error is expected; what was read before it counts.
        let _ = Top(&mut partial).deserialize(&mut serde_json::Deserializer::from_slice(prefix));
        if !partial.object {
            return Seen::Garbage;
        }
        if partial.kind.as_deref() == Some("request") {
            return Seen::Ignored;
        }
        match partial.operation.as_deref() {
            Some(op) if !is_write(op) => Seen::Ignored,
            _ => Seen::Rescan(RescanReason::Oversize),
        }
    }

    /// `sys/` writes that change a configured mount itself (enable, disable, tune, move):
    /// the origin's view of that mount must be rebuilt.
    fn system(&self, rest: &str) -> Seen {
        if rest.starts_with("remount") {
            // The source and target are HMAC'd in the entry: assume the worst.
            return Seen::Rescan(RescanReason::Mount);
        }
        let Some(mount) = rest.strip_prefix("mounts/") else {
            return Seen::Ignored;
        };
        let mount = mount.strip_suffix("/tune").unwrap_or(mount);
        let mount = format!("{}/", mount.trim_end_matches('/'));
        if self.mounts.contains(&mount) { Seen::Rescan(RescanReason::Mount) } else { Seen::Ignored }
    }
}

/// What the first bytes of an over-long line said, recorded as they are parsed (so a parse
/// that fails at the cut keeps what came before it).
#[derive(Debug, Default)]
struct Partial {
    /// The line starts a JSON object.
    object: bool,
    kind: Option<String>,
    operation: Option<String>,
}

/// The top-level object of an audit entry; reads `type` and `request.operation`, skips the rest.
struct Top<'a>(&'a mut Partial);

impl<'de> DeserializeSeed<'de> for Top<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Top<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an audit entry")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.0.object = true;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "type" => self.0.kind = Some(map.next_value()?),
                "request" => map.next_value_seed(Operation(&mut self.0.operation))?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// The request object: reads `operation`, skips the rest.
struct Operation<'a>(&'a mut Option<String>);

impl<'de> DeserializeSeed<'de> for Operation<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Operation<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an audit request")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == "operation" {
                *self.0 = Some(map.next_value()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use tokio::io::AsyncWriteExt as _;

    use super::*;

    fn mounts() -> Vec<String> {
        vec!["secret/".into(), "team/".into(), "team/kv/".into()]
    }

    fn filter() -> Filter {
        Filter::new(mounts(), None)
    }

    fn line(kind: &str, op: &str, path: &str, mount: Option<&str>, error: Option<&str>) -> String {
        let mut v = serde_json::json!({
            "time": "2026-12-01T22:25:53Z",
            "type": kind,
            "auth": {"client_token": "hmac-sha256:abc"},
            "request": {"id": "x", "operation": op, "path": path, "namespace": {"id": "root"},
                        "data": {"data": {"password": "hmac-sha256:0123"}}},
        });
        if let Some(m) = mount {
            v["request"]["mount_point"] = m.into();
        }
        if let Some(e) = error {
            v["error"] = e.into();
        }
        format!("{v}\n")
    }

    fn change(mount: &str, rest: &str) -> Seen {
        Seen::Change(Change { mount: mount.into(), rest: rest.into() })
    }

    #[test]
    fn classifies_writes_on_configured_mounts_only() {
        let f = filter();
        let c = |kind, op, path, mount| f.classify(line(kind, op, path, mount, None).as_bytes());
        assert_eq!(c("response", "create", "secret/data/a/b", Some("secret/")), change("secret/", "data/a/b"));
        assert_eq!(c("response", "update", "secret/metadata/a", Some("secret/")), change("secret/", "metadata/a"));
        assert_eq!(c("response", "delete", "secret/data/a", None), change("secret/", "data/a"));
        assert_eq!(c("response", "patch", "secret/data/a", None), change("secret/", "data/a"));
        // The nested mount wins over its parent's prefix, with or without mount_point.
        assert_eq!(c("response", "create", "team/kv/x", None), change("team/kv/", "x"));
        assert_eq!(c("response", "create", "team/kv/x", Some("team/kv/")), change("team/kv/", "x"));
        assert_eq!(c("response", "create", "team/y", None), change("team/", "y"));
        // Not a write, not a response, not configured, the mount itself.
        assert_eq!(c("response", "read", "secret/data/a", None), Seen::Ignored);
        assert_eq!(c("response", "list", "secret/metadata/", None), Seen::Ignored);
        assert_eq!(c("request", "create", "secret/data/a", None), Seen::Ignored);
        assert_eq!(c("response", "create", "other/data/a", Some("other/")), Seen::Ignored);
        assert_eq!(c("response", "create", "secretive/a", None), Seen::Ignored);
        assert_eq!(c("response", "update", "secret/", None), Seen::Ignored);
        // Failed requests changed nothing.
        let failed = line("response", "create", "secret/data/a", None, Some("1 error occurred:\n\t* permission denied\n\n"));
        assert_eq!(f.classify(failed.as_bytes()), Seen::Ignored);
        let empty_error = line("response", "create", "secret/data/a", None, Some(""));
        assert_eq!(f.classify(empty_error.as_bytes()), change("secret/", "data/a"));
    }

    #[test]
    fn forged_paths_that_cannot_be_keys_ask_for_a_scan_and_are_never_kept() {
        let f = filter();
        let c = |path: &str| f.classify(line("response", "create", path, None, None).as_bytes());
        for bad in ["secret/data/../x", "secret/data//x", "secret/data/a\u{1b}[31mred", "secret/data/./a", "secret/data/a\nb"] {
            assert_eq!(c(bad), Seen::Rescan(RescanReason::Invalid), "{bad:?}");
        }
        let long = format!("secret/data/{}", "a".repeat(MAX_KEY_BYTES));
        assert_eq!(c(&long), Seen::Rescan(RescanReason::Invalid));
        let fits = format!("secret/{}", "a".repeat(MAX_KEY_BYTES));
        assert!(matches!(c(&fits), Seen::Change(_)));
        assert!(valid_key("metadata/folder/"), "a folder path names no key, but is harmless");
    }

    #[test]
    fn mount_changes_ask_for_a_scan_and_garbage_is_garbage() {
        let f = filter();
        let c = |op, path| f.classify(line("response", op, path, Some("sys/"), None).as_bytes());
        assert_eq!(c("delete", "sys/mounts/secret"), Seen::Rescan(RescanReason::Mount));
        assert_eq!(c("update", "sys/mounts/team/kv/tune"), Seen::Rescan(RescanReason::Mount));
        assert_eq!(c("update", "sys/remount"), Seen::Rescan(RescanReason::Mount));
        assert_eq!(c("update", "sys/mounts/elsewhere"), Seen::Ignored);
        assert_eq!(c("update", "sys/policies/acl/x"), Seen::Ignored);
        assert_eq!(f.classify(b"not json\n"), Seen::Garbage);
        assert_eq!(f.classify(b"{\"type\":\"response\"}\n"), Seen::Garbage);
        assert_eq!(f.classify(b"[1,2]\n"), Seen::Garbage);
    }

    #[test]
    fn namespaces_must_match() {
        let f = Filter::new(vec!["secret/".into()], Some("team-a/"));
        let mut v: serde_json::Value = serde_json::from_str(&line("response", "create", "secret/data/a", None, None)).unwrap();
        assert_eq!(f.classify(v.to_string().as_bytes()), Seen::Ignored, "root namespace, origin in team-a");
        v["request"]["namespace"] = serde_json::json!({"id": "n1", "path": "team-a/"});
        assert_eq!(f.classify(v.to_string().as_bytes()), change("secret/", "data/a"));
        assert_eq!(filter().classify(v.to_string().as_bytes()), Seen::Ignored, "team-a namespace, origin in root");
    }

    #[test]
    fn an_over_long_line_is_judged_by_its_first_bytes() {
        let f = filter();
        // A scan's LIST of a large folder: HMAC'd keys make the line long; it is a read.
        let keys: Vec<String> = (0..5000).map(|i| format!("hmac-sha256:{i:064}")).collect();
        let list = serde_json::json!({"time": "t", "type": "response", "auth": {"policies": ["root"]},
            "request": {"operation": "list", "path": "secret/metadata/big/"}, "response": {"data": {"keys": keys}}});
        let text = list.to_string();
        assert_eq!(f.classify_prefix(&text.as_bytes()[..4096]), Seen::Ignored);
        let write = text.replace("\"list\"", "\"update\"");
        assert_eq!(f.classify_prefix(&write.as_bytes()[..4096]), Seen::Rescan(RescanReason::Oversize));
        let request = text.replace("\"response\",", "\"request\",");
        assert_eq!(f.classify_prefix(&request.as_bytes()[..4096]), Seen::Ignored);
        // Cut before the operation: cannot tell, so a scan.
        assert_eq!(f.classify_prefix(&write.as_bytes()[..20]), Seen::Rescan(RescanReason::Oversize));
        assert_eq!(f.classify_prefix(&[b'a'; 4096]), Seen::Garbage);
        assert_eq!(f.classify_prefix(&[0xff; 4096]), Seen::Garbage);
    }

    #[test]
    fn the_line_limit_follows_the_mounts() {
        let short = max_line(&["secret/".into()]);
        assert!((140 * 1024..150 * 1024).contains(&short), "{short}");
        assert!(max_line(&["a-much-longer-mount-name/".into()]) > short);
    }

    fn settings(allow: Vec<IpNet>) -> AuditSettings {
        AuditSettings { listen: "127.0.0.1:0".parse().unwrap(), mounts: mounts(), namespace: None, allow }
    }

    fn shared() -> Shared {
        Shared::new(&settings(loopback()))
    }

    #[test]
    fn only_allowed_sources_are_read() {
        let s = shared();
        assert!(s.allowed("127.0.0.1".parse().unwrap()));
        assert!(s.allowed("127.9.9.9".parse().unwrap()));
        assert!(s.allowed("::1".parse().unwrap()));
        assert!(s.allowed("::ffff:127.0.0.1".parse().unwrap()), "IPv4 on a dual-stack socket");
        assert!(!s.allowed("10.0.4.7".parse().unwrap()));
        let s = Shared::new(&settings(vec!["10.0.4.0/24".parse().unwrap(), "127.0.0.2/32".parse().unwrap()]));
        assert!(s.allowed("10.0.4.7".parse().unwrap()));
        assert!(s.allowed("127.0.0.2".parse().unwrap()));
        assert!(!s.allowed("127.0.0.1".parse().unwrap()));
        assert!(!s.allowed("10.0.5.1".parse().unwrap()));
    }

    async fn read_all(s: &Shared, input: Vec<u8>, chunk: usize) -> Ended {
        let (mut tx, rx) = tokio::io::duplex(64 * 1024);
        let writer = tokio::spawn(async move {
            for piece in input.chunks(chunk) {
                tx.write_all(piece).await.unwrap();
            }
        });
        let ended = read_connection(rx, s, |_| {}).await;
        writer.await.unwrap();
        ended
    }

    #[tokio::test]
    async fn reads_partial_lines_across_writes_and_skips_garbage() {
        let s = shared();
        let whole = format!(
            "{}garbage\n{}{}",
            line("response", "create", "secret/data/one", None, None),
            line("response", "update", "secret/metadata/two", None, None),
            line("response", "create", "secret/data/one", None, None),
        );
        // Tiny chunks: every line arrives in pieces.
        let ended = read_all(&s, whole.into_bytes(), 7).await;
        assert_eq!((ended.how, ended.lines, ended.garbage), (Ending::Clean, 4, 1));
        let dirty = s.dirty();
        assert!(!dirty.rescan);
        let mut got: Vec<_> = dirty.changes.iter().map(|c| c.rest.clone()).collect();
        got.sort();
        assert_eq!(got, ["data/one", "metadata/two"], "duplicates coalesce");
    }

    #[tokio::test]
    async fn a_stream_ending_mid_line_is_partial() {
        let s = shared();
        let (mut tx, rx) = tokio::io::duplex(1024);
        tx.write_all(b"{\"type\":\"respo").await.unwrap();
        drop(tx);
        assert_eq!(read_connection(rx, &s, |_| {}).await.how, Ending::Partial);
    }

    #[tokio::test]
    async fn an_over_long_line_is_not_buffered_and_the_buffer_shrinks_after() {
        let s = shared();
        let long = format!(
            "{{\"type\":\"response\",\"request\":{{\"operation\":\"update\",\"path\":\"secret/data/{}\"}}}}\n",
            "a".repeat(3 * 1024 * 1024)
        );
        let mut line = LineBuf { bytes: Vec::new(), overflow: false, started: None, limit: s.max_line };
        for piece in long.as_bytes().chunks(READ_BUFFER) {
            line.push(piece);
            assert!(line.bytes.capacity() <= s.max_line, "{} > {}", line.bytes.capacity(), s.max_line);
        }
        assert!(line.overflow);
        assert_eq!(handle_line(&s, &line), Handled::Entry);
        line.reset();
        assert_eq!(line.bytes.capacity(), 0, "a long line's buffer is freed");
        let input = format!("{long}{}", line_of("secret/data/after"));
        let ended = read_all(&s, input.into_bytes(), 100_000).await;
        assert_eq!((ended.how, ended.lines), (Ending::Clean, 2));
        let stats = FeedStatsSource(Arc::new(Shared::new(&settings(loopback())))).get();
        assert_eq!(stats.oversize, 0, "counters are per feed");
        assert_eq!(s.counters.oversize.load(Ordering::Relaxed), 2);
        assert!(s.dirty().rescan);
        assert!(s.dirty().changes.iter().any(|c| c.rest == "data/after"), "the next line still counts");
    }

    fn line_of(path: &str) -> String {
        line("response", "create", path, None, None)
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_line_and_a_silent_connection_time_out() {
        let s = shared();
        let (mut tx, rx) = tokio::io::duplex(1024);
        tx.write_all(b"{\"type\":").await.unwrap();
        let ended = read_connection(rx, &s, |_| {}).await;
        assert_eq!(ended.how, Ending::Stalled);
        let (_tx, rx) = tokio::io::duplex(1024);
        let started = Instant::now();
        assert_eq!(read_connection(rx, &s, |_| {}).await.how, Ending::Idle);
        assert!(started.elapsed() >= UNPROVEN_IDLE);
        // Proven: idles without a limit (here until the peer closes).
        let (mut tx, rx) = tokio::io::duplex(1024);
        tx.write_all(line_of("secret/data/x").as_bytes()).await.unwrap();
        let closer = tokio::spawn(async move {
            tokio::time::sleep(UNPROVEN_IDLE * 10).await;
            drop(tx);
        });
        assert_eq!(read_connection(rx, &s, |_| {}).await.how, Ending::Clean);
        closer.await.unwrap();
    }

    #[test]
    fn the_dirty_set_is_bounded_in_bytes() {
        let s = shared();
        let mut i = 0;
        while !s.dirty().rescan {
            s.add(Change { mount: "secret/".into(), rest: format!("data/{i}/{}", "x".repeat(1000)) });
            i += 1;
            assert!(s.dirty().bytes <= MAX_DIRTY_BYTES);
        }
        assert!(i > MAX_DIRTY_BYTES / 1200, "{i}");
        assert!(s.dirty().changes.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_storm_of_rescans_costs_one_scan_per_spacing() {
        let feed = AuditFeed::bind_with(settings(loopback())).await.unwrap();
        for _ in 0..1000 {
            feed.shared.rescan(RescanReason::Broken);
        }
        feed.changed().await;
        assert_eq!(feed.take(), Batch { changes: vec![], rescan: true });
        feed.shared.rescan(RescanReason::Oversize);
        feed.shared.add(Change { mount: "secret/".into(), rest: "data/a".into() });
        // The change comes alone; the rescan waits its turn.
        let batch = feed.take();
        assert_eq!((batch.changes.len(), batch.rescan), (1, false));
        let started = Instant::now();
        feed.changed().await;
        assert!(started.elapsed() >= RESCAN_SPACING - Duration::from_millis(1));
        assert!(feed.take().rescan);
        let stats = feed.stats();
        assert_eq!((stats.rescans_asked(), stats.forced_scans), (1001, 2));
        // A full scan covers a queued rescan.
        feed.shared.rescan(RescanReason::Evicted);
        feed.scan_started();
        assert!(feed.take().is_empty());
    }

    #[tokio::test]
    async fn release_frees_the_port_and_resume_binds_it_again() {
        let mut feed = AuditFeed::bind_with(settings(loopback())).await.unwrap();
        let addr = feed.local_addr();
        feed.release().await;
        assert!(!feed.stats().listening);
        let other = TcpListener::bind(addr).await.expect("the port is free after release");
        drop(other);
        let mut resumed = AuditFeed::bind_with(AuditSettings { listen: addr, ..settings(loopback()) }).await.unwrap();
        feed.resume().await.unwrap();
        // Both want it: the later one retries in the background instead of failing.
        resumed.release().await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(feed.stats().listening);
        assert!(tokio::net::TcpStream::connect(addr).await.is_ok());
    }
}

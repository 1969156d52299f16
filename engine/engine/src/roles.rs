//! The role loop: ONE loop for `vsync origin`, `vsync destination` and `vsync run`.
//!
//! An [`Engine`] holds an optional [`Publisher`] (the origin role: scan and publish every
//! `interval`) and any number of [`Destination`]s. With a publisher, the destinations use its
//! fresh scan (one shared scan in `run`); without one, they load what the origin published
//! and also wake when the origin's root changes. Each destination's cycle runs and settles on
//! its own, bounded by its `timeout`: one unreachable destination never holds up the others.
//!
//! Shutdown is an injected future (a signal, in the binary): when it resolves, the cycle in
//! progress is abandoned (nothing partial is committed) and [`run`] returns
//! [`Ended::Stopped`]. A fatal fault, from a cycle or from a background task through the
//! [`Tripwire`], is alerted and returned.
//!
//! With an audit feed ([`Publisher::audit`], `[origin] audit_listen`), the origin also wakes on
//! audit events: after a few milliseconds of coalescing it re-reads only the keys the events
//! name, applies them to the info of the last complete scan, publishes at once (compare-and-swap
//! on the root it published last) and, in `vsync run`, runs every destination's cycle on the
//! new info. Any doubt (a failed read or publish, a mount that changed, an event the feed may
//! have missed, a root someone else wrote) makes that round a full scan instead, and the full
//! scan every `interval` stays the backstop.
//!
//! One writer per side: the roles come with their sides' locks held. A cycle whose lock is lost
//! (a Consul session that ended) is abandoned with nothing committed, and before the next round
//! the role waits as a hot standby until the lock is its own again. When [`run`] returns, the
//! locks are released, so a standby takes over at once. A standby origin does not listen for
//! the audit device: losing the origin's lock (even between rounds) releases the feed's port,
//! so the new writer, maybe on this host, can bind it; taking the lock back binds it again.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;
use tracing::Instrument as _;
use tracing::{error, info, warn};
use vsync_core::{CycleFlags, OriginInfo, OriginSpec};
use vsync_state::{StateStore, StoreLock};
use vsync_vault::VaultClient;

use crate::alert::Alerter;
use crate::audit::{AuditFeed, Batch};
use crate::destination::{CycleReport, Destination};
use crate::fault::{FatalCause, Fault, FaultClass, STATE_RETRY_BUDGET};
use crate::destination::side_name;
use crate::origin::{self, ORIGIN_SIDE};
use crate::status::{self, RoleStatus};
use crate::triggers::watch_root;
use crate::telemetry::Telemetry;
use crate::tripwire::Tripwire;

/// Which command runs the loop (the alert's `role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `vsync origin`.
    Origin,
    /// `vsync destination`.
    Destination,
    /// `vsync run`.
    Run,
}

impl Role {
    /// `origin`, `destination` or `run`.
    pub fn name(self) -> &'static str {
        match self {
            Role::Origin => "origin",
            Role::Destination => "destination",
            Role::Run => "run",
        }
    }
}

/// The origin role's own parts: it scans and publishes.
#[derive(Debug)]
pub struct Publisher {
    /// What the configuration says.
    pub spec: OriginSpec,
    /// The origin side's writer lock.
    pub lock: StoreLock,
    /// The KV v1 digest key (`digest_key_file`), never stored.
    pub digest_key: Option<Vec<u8>>,
    /// The socket audit device feed (`audit_listen`): events trigger incremental updates.
    pub audit: Option<AuditFeed>,
}

/// How long the origin waits after an audit event for more to arrive, so a burst of writes
/// becomes one update.
pub const EVENT_COALESCE: Duration = Duration::from_millis(5);

/// The origin info this process published last and the root version it got, the base of the
/// next incremental update. Cleared on any doubt, so the next round scans.
#[derive(Debug, Default)]
struct OriginView {
    info: Option<Arc<OriginInfo>>,
    version: Option<u64>,
}

/// What a round does on the origin side.
#[derive(Debug)]
enum Pass {
    /// A complete scan (or, without a publisher, loading what the origin published).
    Full,
    /// Audit events: update just these keys.
    Events(Batch),
    /// Audit events whose keys were already re-read while the destinations copied the last
    /// round's changes: apply and publish without reading again.
    Prefetched(Prefetch),
}

/// A batch of audit events taken, and its keys re-read, while the destinations of a round ran
/// (the next round only applies and publishes it), so copying one batch overlaps reading the
/// next. The reads are the same as an event round's: only their timing differs.
#[derive(Debug)]
struct Prefetch {
    batch: Batch,
    found: Result<Option<origin::FoundChanges>, Fault>,
}

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

/// Receives [`Event`]s.
pub type Reporter = Box<dyn Fn(&Event<'_>) + Send + Sync>;

/// A step that may fail with a fault, boxed.
pub type BoxFault = std::pin::Pin<Box<dyn Future<Output = Result<(), Fault>> + Send>>;

/// What a destination that was unavailable at start-up (unreachable or sealed) runs before
/// its first cycle: log in, then its start-up checks. Until it succeeds each attempt counts as
/// that destination's failed cycle (retried on its own schedule, shown by `/healthz` and
/// `status`); the other sides run meanwhile.
pub type StartGate = Box<dyn FnMut() -> BoxFault + Send + Sync>;

/// Everything the loop runs.
pub struct Engine {
    /// Which command this is.
    pub role: Role,
    /// The origin Vault (scans, and the versions destinations copy).
    pub origin_vault: VaultClient,
    /// Where the origin's info is published.
    pub origin_store: StateStore,
    /// The origin role, when this process runs it.
    pub publisher: Option<Publisher>,
    /// The destination roles this process runs.
    pub destinations: Vec<Destination>,
    /// Where fatal faults go.
    pub alerter: Alerter,
    /// Background tasks' fatal faults.
    pub tripwire: Tripwire,
    /// Progress reports.
    pub reporter: Reporter,
    /// Metrics and health (`[telemetry] listen` serves them).
    pub telemetry: Arc<Telemetry>,
    /// Destinations that were unavailable at start-up, by name: what each runs before its
    /// first cycle ([`StartGate`]).
    pub deferred: std::collections::HashMap<String, StartGate>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("role", &self.role)
            .field("publisher", &self.publisher)
            .field("destinations", &self.destinations)
            .finish_non_exhaustive()
    }
}

/// How the loop runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// One round, then return.
    pub once: bool,
    /// `--allow-*` overrides; they hold until a destination's next successful cycle.
    pub flags: CycleFlags,
}

/// How [`run`] ended without a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The shutdown future resolved.
    Stopped,
    /// `once`: the round completed; `per_secret_failures` when some secrets failed.
    Once {
        /// Some secrets failed (exit 3).
        per_secret_failures: bool,
    },
}

/// Per-role state across rounds.
#[derive(Debug, Default)]
struct Settling {
    state_failures: u32,
    flags: CycleFlags,
    /// The last cycle failed: event rounds skip this role until a full round succeeds, so a
    /// broken side is retried every `interval`, not at the rate of origin writes.
    failing: bool,
}

impl Settling {
    /// Settles a failed cycle: `Some` stops the process (fatal, or any failure with `once`);
    /// `None` retries next cycle. Transient state-store failures become fatal after
    /// [`STATE_RETRY_BUDGET`] cycles in a row; only full rounds count (`counted`), so a burst
    /// of events cannot spend the budget in seconds.
    fn failed(&mut self, fault: Fault, once: bool, counted: bool) -> Option<Fault> {
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

    fn succeeded(&mut self) {
        self.failing = false;
        self.state_failures = 0;
        self.flags = CycleFlags::default();
    }
}

/// A fault that ends the loop, and whose it is.
struct Stop {
    destination: Option<String>,
    fault: Fault,
}

/// What one round did.
#[derive(Debug, Default)]
struct Round {
    /// The origin was scanned completely (an event round may fall back to a scan).
    scanned: bool,
    per_secret_failures: bool,
    /// With `once`: the first failed cycle (the others still ran).
    failed: Option<(Option<String>, Fault)>,
    /// Events taken and read during the destination cycles: the next round's work.
    prefetched: Option<Prefetch>,
}

/// Runs the roles until `shutdown` resolves, a fatal fault, or (with `once`) one round; then
/// gives the sides' locks up.
pub async fn run(mut engine: Engine, options: RunOptions, shutdown: impl Future<Output = ()>) -> Result<Ended, Fault> {
    let ended = run_loop(&mut engine, options, shutdown).await;
    release_locks(engine).await;
    ended
}

/// Releases every side's lock (Consul: a standby takes over without waiting for a lock-delay).
async fn release_locks(engine: Engine) {
    if let Some(p) = engine.publisher {
        p.lock.release().await;
    }
    for d in engine.destinations {
        d.lock.release().await;
    }
}

/// Waits as a standby for every side whose lock was lost, so no cycle runs without its lock.
/// Transient store failures are retried while waiting; anything else stops the role.
async fn regain_locks(engine: &mut Engine) -> Result<(), Stop> {
    let telemetry = engine.telemetry.clone();
    // A standby does not listen for the audit device: the origin's new writer (maybe on this
    // host) binds the port.
    let mut released = false;
    if let Some(p) = engine.publisher.as_mut().filter(|p| !p.lock.is_held())
        && let Some(feed) = p.audit.as_mut()
    {
        feed.release().await;
        released = true;
    }
    let publisher = engine.publisher.iter_mut().map(|p| (None, &mut p.lock));
    let destinations = engine.destinations.iter_mut().map(|d| (Some(d.spec.name.clone()), &mut d.lock));
    for (destination, lock) in publisher.chain(destinations) {
        if lock.is_held() {
            continue;
        }
        let (side, name) = (lock.side().to_owned(), lock.describe());
        warn!(side, lock = %name, "this process lost the lock of side `{side}`: it is a standby now");
        let role = if destination.is_some() { "destination" } else { "origin" };
        telemetry.standby(role, destination.as_deref(), true);
        let mut on_wait = |h: &vsync_state::Holder| info!(side, "standby: {h}; waiting to take over");
        let regained = lock.regain(&mut on_wait).await;
        telemetry.standby(role, destination.as_deref(), false);
        if let Err(e) = regained {
            let fault = Fault::state(format!("side `{side}`: taking its lock {name} again"), e);
            return Err(Stop { destination, fault });
        }
        info!(side, lock = %name, "took over side `{side}`: this process is its writer again");
    }
    if let Some(feed) = engine.publisher.as_mut().and_then(|p| p.audit.as_mut()).filter(|_| released)
        && let Err(e) = feed.resume().await
    {
        return Err(Stop { destination: None, fault: Fault::fatal(FatalCause::Config, e.to_string()) });
    }
    Ok(())
}

async fn run_loop(engine: &mut Engine, options: RunOptions, shutdown: impl Future<Output = ()>) -> Result<Ended, Fault> {
    let mut shutdown = std::pin::pin!(shutdown);
    let (alerter, tripwire, role) = (engine.alerter.clone(), engine.tripwire.clone(), engine.role);
    let trigger = Arc::new(Notify::new());
    let _watch = (engine.publisher.is_none() && !options.once)
        .then(|| watch_root(engine.origin_store.clone(), ORIGIN_SIDE, trigger.clone()));
    // A round scans (with a publisher) and runs every destination: the origin scans every
    // origin `interval` as configured, and each destination cycles at least every one of its
    // own (its backup ticker); in `vsync run` a destination thus sees a change at the next
    // scan, not at its own ticker. A cycle on an unchanged info compares digests and is done.
    let interval = engine
        .publisher
        .iter()
        .map(|p| p.spec.interval)
        .chain(engine.destinations.iter().map(|d| d.spec.interval))
        .min()
        .unwrap_or(Duration::from_secs(60));
    register_telemetry(engine);
    let mut origin_settling = Settling::default();
    let mut statuses = Statuses::read(engine).await;
    let mut settling: Vec<Settling> = engine
        .destinations
        .iter()
        .map(|_| Settling { state_failures: 0, flags: options.flags, failing: false })
        .collect();
    let mut view = OriginView::default();
    let mut pass = Pass::Full;
    let mut full_due = Instant::now() + interval;
    loop {
        if let (Pass::Full, Some(feed)) = (&pass, engine.publisher.as_ref().and_then(|p| p.audit.as_ref())) {
            // The scan that starts now sees every write whose event arrived before it.
            feed.scan_started();
        }
        let full = matches!(pass, Pass::Full);
        let result = tokio::select! {
            r = async {
                regain_locks(engine).await?;
                round(engine, &mut origin_settling, &mut settling, &mut statuses, &mut view, pass, options.once).await
            } => r,
            _ = &mut shutdown => return Ok(Ended::Stopped),
            fault = tripwire.tripped() => return fail(&alerter, role, Stop { destination: None, fault }).await,
        };
        let round = match result {
            Ok(r) => r,
            Err(stop) => return fail(&alerter, role, stop).await,
        };
        if options.once {
            return match round.failed {
                Some((destination, fault)) => fail(&alerter, role, Stop { destination, fault }).await,
                None => Ok(Ended::Once { per_secret_failures: round.per_secret_failures }),
            };
        }
        // Events never postpone the backstop: the next full round is due `interval` after the
        // last one, however many event rounds ran in between.
        if full || round.scanned {
            full_due = Instant::now() + interval;
        }
        if let Some(prefetched) = round.prefetched {
            // A due backstop scan goes first; it reads everything the batch names, and more.
            pass = if Instant::now() >= full_due { Pass::Full } else { Pass::Prefetched(prefetched) };
            continue;
        }
        // Without a published view (its last round failed) events wait for the next full round:
        // a scan per event batch would hammer the origin while, say, the state store is down.
        let feed = engine.publisher.as_ref().and_then(|p| p.audit.as_ref()).filter(|_| view.info.is_some());
        pass = loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => return Ok(Ended::Stopped),
                fault = tripwire.tripped() => return fail(&alerter, role, Stop { destination: None, fault }).await,
                _ = tokio::time::sleep_until(full_due.into()) => break Pass::Full,
                _ = trigger.notified() => break Pass::Full,
                // A lost origin lock releases the audit listener at once (the next round's
                // standby wait), not at the next round the clock brings.
                () = async {
                    match engine.publisher.as_ref().filter(|p| p.audit.is_some()) {
                        Some(p) => p.lock.lost().await,
                        None => std::future::pending().await,
                    }
                } => break Pass::Full,
                _ = async {
                    match feed {
                        Some(f) => f.changed().await,
                        None => std::future::pending().await,
                    }
                } => {
                    tokio::time::sleep(EVENT_COALESCE).await;
                    if let Some(batch) = feed.map(AuditFeed::take).filter(|b| !b.is_empty()) {
                        break Pass::Events(batch);
                    }
                }
            }
        };
    }
}

/// Declares this process's roles and request counters to its telemetry.
fn register_telemetry(engine: &Engine) {
    let t = &engine.telemetry;
    t.watch_vault("origin", &engine.origin_vault);
    t.watch_store(&engine.origin_store);
    t.watch_origin_store(&engine.origin_store);
    if let Some(p) = &engine.publisher {
        t.add_role("origin", None, p.spec.interval, p.spec.timeout);
        if let Some(feed) = &p.audit {
            t.watch_audit(feed.stats_source());
        }
    }
    for d in &engine.destinations {
        t.add_role("destination", Some(&d.spec.name), d.spec.interval, d.spec.timeout);
        t.watch_vault(&d.spec.name, &d.vault);
        t.watch_store(&d.store);
    }
}

/// A cycle's id in logs: its start time in milliseconds since the epoch (unique per role, and
/// the same as the `started` of its status record).
fn cycle_id(started: SystemTime) -> u128 {
    started.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis())
}

/// Alerts a fault that ends the loop and returns it.
async fn fail(alerter: &Alerter, role: Role, stop: Stop) -> Result<Ended, Fault> {
    alerter.fatal(role.name(), stop.destination.as_deref(), &stop.fault).await;
    Err(stop.fault)
}

/// The status records this process writes (`vsync status`), carried across cycles.
struct Statuses {
    origin: RoleStatus,
    destinations: Vec<RoleStatus>,
}

impl Statuses {
    /// Starts from what the store holds, so the origin's publish history survives a restart.
    async fn read(engine: &Engine) -> Self {
        let mut origin = RoleStatus::new("origin", None);
        if engine.publisher.is_some()
            && let Some(previous) = status::read(&engine.origin_store, ORIGIN_SIDE).await
        {
            origin.published = previous.published;
            origin.last_success = previous.last_success;
            origin.generation = previous.generation;
        }
        let mut destinations = Vec::new();
        for d in &engine.destinations {
            let mut s = RoleStatus::new("destination", Some(&d.spec.name));
            if let Some(previous) = status::read(&d.store, &side_name(&d.spec.name)).await {
                s.last_success = previous.last_success;
                s.generation = previous.generation;
            }
            destinations.push(s);
        }
        Self { origin, destinations }
    }
}

/// The origin side of an event round: applies the batch to the last published view and
/// publishes against that view's root. `Ok(None)`: not safe (no view, a changed mount); the
/// caller scans. The view is taken for the update and put back only after a successful
/// publish, so a failure anywhere leaves no view and the next round scans too.
async fn apply_events(
    vault: &VaultClient,
    store: &StateStore,
    p: &Publisher,
    view: &mut OriginView,
    batch: &Batch,
    prefetched: Option<Result<Option<origin::FoundChanges>, Fault>>,
) -> Result<Option<(Arc<OriginInfo>, bool, usize)>, Fault> {
    if batch.rescan {
        return Ok(None);
    }
    let (Some(mut info), Some(base)) = (view.info.take(), view.version.take()) else {
        return Ok(None);
    };
    let found = match prefetched {
        Some(found) => found?,
        None => origin::read_changes(vault, &p.spec, p.digest_key.as_deref(), &info.mounts, &batch.changes).await?,
    };
    let Some(found) = found else {
        return Ok(None);
    };
    let changed = origin::apply_found(Arc::make_mut(&mut info), found);
    let published = changed > 0 && origin::publish(store, &p.lock, Some(base), &info).await?;
    info!(paths = batch.changes.len(), changed, published, "origin updated from audit events");
    let version = if published { origin::published_version(store).await? } else { Some(base) };
    *view = OriginView { info: Some(info.clone()), version };
    Ok(Some((info, published, changed)))
}

/// One round: the origin scan (or an update from audit events, or the published info), then
/// every destination's cycle, each settled on its own.
#[allow(clippy::too_many_arguments)] // one per piece of loop state; a struct would only rename them
async fn round(
    engine: &mut Engine,
    origin_settling: &mut Settling,
    settling: &mut [Settling],
    statuses: &mut Statuses,
    view: &mut OriginView,
    pass: Pass,
    once: bool,
) -> Result<Round, Stop> {
    let mut done = Round::default();
    let started = SystemTime::now();
    let (batch, mut prefetched) = match pass {
        Pass::Full => (None, None),
        Pass::Events(batch) => (Some(batch), None),
        Pass::Prefetched(Prefetch { batch, found }) => (Some(batch), Some(found)),
    };
    let (info, generation) = match &engine.publisher {
        Some(p) => {
            let (vault, store) = (&engine.origin_vault, &engine.origin_store);
            let scanned = async {
                if let Some(batch) = &batch {
                    match apply_events(vault, store, p, view, batch, prefetched.take()).await {
                        Ok(Some((info, published, changed))) => return Ok((info, published, Some(changed))),
                        Ok(None) => info!(paths = batch.changes.len(), "audit events: scanning the origin instead of an update"),
                        Err(fault) => warn!("{fault}; scanning the origin instead of an update from audit events"),
                    }
                }
                *view = OriginView::default();
                // The commit's base is the root before the scan: an older scan never lands on a
                // newer one.
                let base = origin::published_version(store).await?;
                let info = origin::scan(vault, &p.spec, p.digest_key.as_deref()).await?;
                let published = origin::publish(store, &p.lock, base, &info).await?;
                let version = if published { origin::published_version(store).await? } else { base };
                *view = OriginView { info: Some(info.clone()), version };
                Ok::<_, Fault>((info, published, None))
            }
            // Every log line of the scan carries the role and the cycle id first.
            .instrument(tracing::info_span!("cycle", role = "origin", cycle = %cycle_id(started)));
            let lost = p.lock.lost();
            let scanned = tokio::select! {
                r = scanned => r,
                () = lost => Err(lock_lost("the origin", &p.lock)),
            };
            let elapsed = started.elapsed().unwrap_or_default();
            match scanned {
                // Events that changed nothing (a write of the same metadata, a `config` path):
                // nothing to publish, nothing for the destinations.
                Ok((_, false, Some(_))) => return Ok(done),
                Ok((info, published, changed)) => {
                    engine.telemetry.origin_cycle(elapsed, Ok(info.entries.len()));
                    origin_settling.succeeded();
                    done.scanned = changed.is_none();
                    match changed {
                        None => (engine.reporter)(&Event::OriginScanned { info: &info, published }),
                        Some(changed) => (engine.reporter)(&Event::OriginUpdated { info: &info, changed, published }),
                    }
                    let generation = origin::published_generation(&engine.origin_store).await;
                    statuses.origin.origin_cycle(started, Ok((info.entries.len(), generation, published)));
                    status::write(&engine.origin_store, ORIGIN_SIDE, &statuses.origin).await;
                    (info, generation)
                }
                Err(fault) => {
                    engine.telemetry.origin_cycle(elapsed, Err(&fault));
                    *view = OriginView::default();
                    done.scanned = true;
                    statuses.origin.origin_cycle(started, Err(&fault.message));
                    // Not over the record of the origin's new writer, should this one have lost the lock.
                    if p.lock.is_held() {
                        status::write(&engine.origin_store, ORIGIN_SIDE, &statuses.origin).await;
                    }
                    return match origin_settling.failed(fault, once, true) {
                        Some(fault) if fault.fatal_cause().is_some() => Err(Stop { destination: None, fault }),
                        Some(fault) => Ok(Round { failed: Some((None, fault)), ..done }),
                        None => Ok(done),
                    };
                }
            }
        }
        None => match origin::load(&engine.origin_store).await {
            Ok((info, generation)) => (info, Some(generation)),
            Err(fault) => {
                // Without the origin's info no destination can run: settle it as each one's failure.
                let mut stop = None;
                for (d, s) in engine.destinations.iter().zip(settling.iter_mut()) {
                    if let Some(f) = s.failed(fault.clone(), once, true) {
                        stop.get_or_insert((Some(d.spec.name.clone()), f));
                    }
                }
                return match stop {
                    Some((destination, fault)) if fault.fatal_cause().is_some() => Err(Stop { destination, fault }),
                    failed => Ok(Round { failed, ..done }),
                };
            }
        },
    };
    let events = batch.is_some() && !done.scanned;
    let Engine { destinations, origin_vault, telemetry, reporter, publisher, deferred, .. } = engine;
    // While the destinations copy this round's changes, the next batch of audit events is
    // taken and its keys re-read, so the next round only applies and publishes it: reading one
    // batch overlaps copying the previous one (a burst of writes then flows through both sides
    // at once). Only with a view to apply it to, and never in a `--once` round.
    let feed = publisher.as_ref().and_then(|p| p.audit.as_ref().map(|f| (p, f))).filter(|_| view.info.is_some() && !once);
    let mounts = view.info.as_ref().map(|i| i.mounts.clone()).unwrap_or_default();
    let taken = std::sync::atomic::AtomicBool::new(false);
    let prefetch = async {
        let Some((p, feed)) = feed else {
            return std::future::pending::<Option<Prefetch>>().await;
        };
        feed.changed().await;
        tokio::time::sleep(EVENT_COALESCE).await;
        let batch = feed.take();
        // From here the events are out of the feed: this future must run to its end.
        taken.store(true, std::sync::atomic::Ordering::SeqCst);
        if batch.is_empty() {
            return None;
        }
        let found = if batch.rescan {
            Ok(None)
        } else {
            origin::read_changes(origin_vault, &p.spec, p.digest_key.as_deref(), &mounts, &batch.changes).await
        };
        Some(Prefetch { batch, found })
    };
    let cycles = async {
        for ((d, s), record) in destinations.iter_mut().zip(settling.iter_mut()).zip(statuses.destinations.iter_mut()) {
            if events && s.failing {
                continue;
            }
            let name = d.spec.name.clone();
            let started = SystemTime::now();
            let timeout = d.spec.timeout;
            let (lost, lost_fault) = (d.lock.lost(), lock_lost(&format!("destination `{name}`"), &d.lock));
            let gated_cycle = async {
                if let Some(gate) = deferred.get_mut(&name) {
                    gate().await?;
                    deferred.remove(&name);
                    info!(destination = %name, "the destination is available: its start-up checks passed");
                }
                d.cycle(origin_vault, &info, s.flags).await
            };
            let result = tokio::select! {
                r = tokio::time::timeout(
                    timeout,
                    gated_cycle
                        .instrument(tracing::info_span!("cycle", role = "destination", destination = %name, cycle = %cycle_id(started))),
                ) => r.unwrap_or_else(|_| {
                    Err(Fault::transient(format!(
                        "destination `{name}`: cycle timed out after {timeout:?}; everything it started was cancelled, \
                         nothing committed"
                    )))
                }),
                () = lost => Err(lost_fault),
            };
            match &result {
                Ok(report) => record.destination_cycle(started, generation, Ok(report)),
                Err(fault) => record.destination_cycle(started, generation, Err(&fault.message)),
            }
            let elapsed = started.elapsed().unwrap_or_default();
            telemetry.destination_cycle(&name, elapsed, result.as_ref(), record);
            // A process that lost the side's lock is no longer its writer: its record would
            // land over the new holder's.
            if d.lock.is_held() {
                status::write(&d.store, &side_name(&name), record).await;
            }
            match result {
                Ok(report) => {
                    s.succeeded();
                    done.per_secret_failures |= report.counts.failed > 0;
                    (reporter)(&Event::DestinationCycle { name: &name, report: &report });
                }
                Err(fault) => match s.failed(fault, once, !events) {
                    Some(fault) if fault.fatal_cause().is_some() => return Err(Stop { destination: Some(name), fault }),
                    Some(fault) => {
                        done.failed.get_or_insert((Some(name), fault));
                    }
                    None => {}
                },
            }
        }
        Ok::<Round, Stop>(done)
    };
    tokio::pin!(prefetch);
    tokio::pin!(cycles);
    let mut fetched = None;
    let outcome = tokio::select! {
        r = &mut cycles => r,
        p = &mut prefetch => {
            fetched = Some(p);
            (&mut cycles).await
        }
    };
    // The cycles ended first: a prefetch that already took its batch finishes (its events are
    // out of the feed); one still waiting is dropped, leaving the feed as it was.
    if fetched.is_none() && taken.load(std::sync::atomic::Ordering::SeqCst) {
        fetched = Some(prefetch.await);
    }
    let mut done = outcome?;
    done.prefetched = fetched.flatten();
    Ok(done)
}

/// The fault of a cycle abandoned because its side's lock was lost.
fn lock_lost(whose: &str, lock: &StoreLock) -> Fault {
    Fault::new(
        FaultClass::LockLost,
        format!("{whose}: lost the lock {} (its session ended or could not be renewed); the cycle was abandoned", lock.describe()),
    )
}

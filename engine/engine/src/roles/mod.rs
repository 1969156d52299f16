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
//!
//! The loop only schedules. The roles own their state ([`origin`]: the publisher, its view and
//! prefetch; [`destination`]: each destination and its start-up gate) and settle their own
//! cycles ([`settle`]); every settled cycle goes once to the observers
//! ([`crate::observer::CycleObserver`]): telemetry, the status records and the binary's printer.

mod destination;
mod origin;
mod settle;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tracing::{info, warn};
use vsync_core::{Clock, CycleFlags, OriginInfo};
use vsync_state::StateStore;
use vsync_vault::VaultClient;

pub use destination::{BoxFault, StartGate};
pub use origin::{EVENT_COALESCE, Publisher};

pub use crate::observer::{Event, Reporter};
use crate::alert::Alerter;
use crate::audit::AuditFeed;
use crate::destination::Destination;
use crate::fault::{FatalCause, Fault};
use crate::observer::Observers;
use crate::origin as origin_info;
use crate::sides::ORIGIN_SIDE;
use crate::status::StatusRecords;
use crate::telemetry::Telemetry;
use crate::triggers::watch_root;
use crate::tripwire::Tripwire;
use destination::DestinationRole;
use origin::{OriginRole, OriginStep, Pass, Prefetch};
use settle::{Round, Settling, Shared, Stop};

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
    /// Progress reports: the binary's printer, one of the loop's observers.
    pub reporter: Reporter,
    /// Metrics and health (`[telemetry] listen` serves them); one of the loop's observers.
    pub telemetry: Arc<Telemetry>,
    /// Destinations that were unavailable at start-up, by name: what each runs before its
    /// first cycle ([`StartGate`]).
    pub deferred: std::collections::HashMap<String, StartGate>,
    /// Where the loop takes the wall time from (scans, status records);
    /// `vsync_core::clock::system_clock()` outside a simulation.
    pub clock: Arc<dyn Clock>,
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

/// The roles of this process, each owning its state, and what they share.
struct Roles {
    role: Role,
    origin_vault: VaultClient,
    origin_store: StateStore,
    origin: Option<OriginRole>,
    destinations: Vec<DestinationRole>,
    observers: Observers,
    telemetry: Arc<Telemetry>,
    clock: Arc<dyn Clock>,
    once: bool,
}

impl Roles {
    /// Takes the engine apart into roles. The status records start from what the stores hold;
    /// they, telemetry and the printer observe every cycle, in that order.
    async fn new(engine: Engine, options: RunOptions) -> Self {
        let Engine { role, origin_vault, origin_store, publisher, destinations, reporter, telemetry, mut deferred, clock, .. } = engine;
        let stores: Vec<(String, StateStore)> = destinations.iter().map(|d| (d.spec.name.clone(), d.store.clone())).collect();
        let records = StatusRecords::read(publisher.as_ref().map(|_| &origin_store), &stores).await;
        let destinations = destinations
            .into_iter()
            .map(|d| {
                let gate = deferred.remove(&d.spec.name);
                let applied = records.generation(&crate::sides::Side::Destination(d.spec.name.clone()));
                DestinationRole::new(d, Settling::with_flags(options.flags), gate, applied)
            })
            .collect();
        let mut observers = Observers::default();
        observers.push(telemetry.clone());
        observers.push(Arc::new(records));
        observers.push(Arc::new(reporter));
        let origin = publisher.map(OriginRole::new);
        Self { role, origin_vault, origin_store, origin, destinations, observers, telemetry, clock, once: options.once }
    }

    /// The shortest interval of the roles: a round scans (with a publisher) and runs every
    /// destination, so the origin scans every origin `interval` as configured, and each
    /// destination cycles at least every one of its own (its backup ticker); in `vsync run` a
    /// destination thus sees a change at the next scan, not at its own ticker. A cycle on an
    /// unchanged info compares digests and is done.
    fn interval(&self) -> Duration {
        let origin = self.origin.iter().map(|o| o.publisher.spec.interval);
        origin
            .chain(self.destinations.iter().map(|d| d.destination.spec.interval))
            .min()
            .unwrap_or(Duration::from_secs(60))
    }

    /// Declares this process's roles and request counters to its telemetry.
    fn register_telemetry(&self) {
        let t = &self.telemetry;
        t.watch_vault("origin", &self.origin_vault);
        t.watch_store(&self.origin_store);
        t.watch_origin_store(&self.origin_store);
        if let Some(o) = &self.origin {
            let p = &o.publisher;
            t.add_role("origin", None, p.spec.interval, p.spec.timeout);
            if let Some(feed) = &p.audit {
                t.watch_audit(feed.stats_source());
            }
        }
        for role in &self.destinations {
            let d = &role.destination;
            t.add_role("destination", Some(&d.spec.name), d.spec.interval, d.spec.timeout);
            t.watch_vault(&d.spec.name, &d.vault);
            t.watch_store(&d.store);
        }
    }

    /// Releases every side's lock (Consul: a standby takes over without waiting for a lock-delay).
    async fn release_locks(self) {
        if let Some(o) = self.origin {
            o.publisher.lock.release().await;
        }
        for role in self.destinations {
            role.destination.lock.release().await;
        }
    }

    /// The audit feed, when this process has one.
    fn feed(&self) -> Option<&AuditFeed> {
        self.origin.as_ref().and_then(|o| o.publisher.audit.as_ref())
    }
}

/// Runs the roles until `shutdown` resolves, a fatal fault, or (with `once`) one round; then
/// gives the sides' locks up.
pub async fn run(engine: Engine, options: RunOptions, shutdown: impl Future<Output = ()>) -> Result<Ended, Fault> {
    let (alerter, tripwire) = (engine.alerter.clone(), engine.tripwire.clone());
    let mut roles = Roles::new(engine, options).await;
    let ended = run_loop(&mut roles, &alerter, &tripwire, shutdown).await;
    roles.release_locks().await;
    ended
}

/// What ends the wait between rounds other than the next round.
enum Exit {
    Stopped,
    Tripped(Fault),
}

/// Schedules rounds: a full one every `interval`, on a change of the origin's root (without a
/// publisher), or an event round when audit events arrive; prefetched events go next unless
/// the backstop scan is due.
async fn run_loop(roles: &mut Roles, alerter: &Alerter, tripwire: &Tripwire, shutdown: impl Future<Output = ()>) -> Result<Ended, Fault> {
    let mut shutdown = std::pin::pin!(shutdown);
    let role = roles.role;
    let trigger = Arc::new(Notify::new());
    let _watch = (roles.origin.is_none() && !roles.once).then(|| watch_root(roles.origin_store.clone(), ORIGIN_SIDE, trigger.clone()));
    let interval = roles.interval();
    roles.register_telemetry();
    let mut pass = Pass::Full;
    let mut full_due = Instant::now() + interval;
    loop {
        if let (Pass::Full, Some(feed)) = (&pass, roles.feed()) {
            // The scan that starts now sees every write whose event arrived before it.
            feed.scan_started();
        }
        let full = matches!(pass, Pass::Full);
        let result = tokio::select! {
            r = async {
                regain_locks(roles).await?;
                round(roles, pass).await
            } => r,
            _ = &mut shutdown => return Ok(Ended::Stopped),
            fault = tripwire.tripped() => return fail(alerter, role, Stop { destination: None, fault }).await,
        };
        let (round, prefetched) = match result {
            Ok(r) => r,
            Err(stop) => return fail(alerter, role, stop).await,
        };
        if roles.once {
            return match round.failed {
                Some((destination, fault)) => fail(alerter, role, Stop { destination, fault }).await,
                None => Ok(Ended::Once { per_secret_failures: round.per_secret_failures }),
            };
        }
        // Events never postpone the backstop: the next full round is due `interval` after the
        // last one, however many event rounds ran in between.
        if full || round.scanned {
            full_due = Instant::now() + interval;
        }
        if let Some(prefetched) = prefetched {
            // A due backstop scan goes first; it reads everything the batch names, and more.
            pass = if Instant::now() >= full_due { Pass::Full } else { Pass::Prefetched(prefetched) };
            continue;
        }
        pass = match next_pass(roles, &trigger, full_due, tripwire, &mut shutdown).await {
            Ok(pass) => pass,
            Err(Exit::Stopped) => return Ok(Ended::Stopped),
            Err(Exit::Tripped(fault)) => return fail(alerter, role, Stop { destination: None, fault }).await,
        };
    }
}

/// Waits for what starts the next round: the backstop's time, a change of the origin's root,
/// a lost origin lock, or a batch of audit events.
async fn next_pass(
    roles: &Roles,
    trigger: &Notify,
    full_due: Instant,
    tripwire: &Tripwire,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Result<Pass, Exit> {
    // Without a published view (its last round failed) events wait for the next full round.
    let feed = roles.origin.as_ref().and_then(OriginRole::live_feed);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.as_mut() => return Err(Exit::Stopped),
            fault = tripwire.tripped() => return Err(Exit::Tripped(fault)),
            _ = tokio::time::sleep_until(full_due.into()) => return Ok(Pass::Full),
            _ = trigger.notified() => return Ok(Pass::Full),
            // A lost origin lock releases the audit listener at once (the next round's
            // standby wait), not at the next round the clock brings.
            () = async {
                match roles.origin.as_ref().filter(|o| o.publisher.audit.is_some()) {
                    Some(o) => o.publisher.lock.lost().await,
                    None => std::future::pending().await,
                }
            } => return Ok(Pass::Full),
            _ = async {
                match feed {
                    Some(f) => f.changed().await,
                    None => std::future::pending().await,
                }
            } => {
                tokio::time::sleep(EVENT_COALESCE).await;
                if let Some(batch) = feed.map(AuditFeed::take).filter(|b| !b.is_empty()) {
                    return Ok(Pass::Events(batch));
                }
            }
        }
    }
}

/// Waits as a standby for every side whose lock was lost, so no cycle runs without its lock.
/// Transient store failures are retried while waiting; anything else stops the role.
async fn regain_locks(roles: &mut Roles) -> Result<(), Stop> {
    let telemetry = roles.telemetry.clone();
    // A standby does not listen for the audit device: the origin's new writer (maybe on this
    // host) binds the port.
    let mut released = false;
    if let Some(o) = roles.origin.as_mut().filter(|o| !o.publisher.lock.is_held())
        && let Some(feed) = o.publisher.audit.as_mut()
    {
        feed.release().await;
        released = true;
    }
    let publisher = roles.origin.iter_mut().map(|o| (None, &mut o.publisher.lock));
    let destinations = roles.destinations.iter_mut().map(|r| (Some(r.destination.spec.name.clone()), &mut r.destination.lock));
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
    if let Some(feed) = roles.origin.as_mut().and_then(|o| o.publisher.audit.as_mut()).filter(|_| released)
        && let Err(e) = feed.resume().await
    {
        return Err(Stop { destination: None, fault: Fault::fatal(FatalCause::Config, e.to_string()) });
    }
    Ok(())
}

/// Alerts a fault that ends the loop and returns it.
async fn fail(alerter: &Alerter, role: Role, stop: Stop) -> Result<Ended, Fault> {
    alerter.fatal(role.name(), stop.destination.as_deref(), &stop.fault).await;
    Err(stop.fault)
}

/// One round: the origin side (a scan, an update from audit events, or loading what the
/// origin published), then every destination's cycle, each settled on its own, with the next
/// batch of events prefetched meanwhile.
async fn round(roles: &mut Roles, pass: Pass) -> Result<(Round, Option<Prefetch>), Stop> {
    let events = !matches!(pass, Pass::Full);
    let shared = Shared { origin_vault: &roles.origin_vault, clock: &*roles.clock, observers: &roles.observers, once: roles.once };
    let (info, generation, scanned) = match &mut roles.origin {
        Some(o) => match o.round(shared, &roles.origin_store, pass).await? {
            OriginStep::Run { info, generation, scanned } => (info, generation, scanned),
            OriginStep::Skip(done) => return Ok((done, None)),
        },
        None => match origin_info::load(&roles.origin_store).await {
            Ok((info, generation)) => (info, Some(generation), false),
            Err(fault) => return unloaded(roles, fault).map(|done| (done, None)),
        },
    };
    let mut done = Round { scanned, ..Round::default() };
    // An event round that fell back to a scan counts as a full round for the destinations.
    let events = events && !scanned;
    let prefetched = destinations_round(roles, &info, generation, events, &mut done).await?;
    Ok((done, prefetched))
}

/// Without the origin's info no destination can run: the fault settles as each one's failure.
fn unloaded(roles: &mut Roles, fault: Fault) -> Result<Round, Stop> {
    let mut done = Round::default();
    let mut stop = None;
    for role in &mut roles.destinations {
        if let Err(s) = role.settle_unloaded(fault.clone(), roles.once, &mut done) {
            stop.get_or_insert(s);
        }
    }
    match stop {
        Some(stop) => Err(stop),
        None => Ok(done),
    }
}

/// Every destination's cycle, one after the other, while the origin prefetches the next
/// batch of audit events.
async fn destinations_round(roles: &mut Roles, info: &Arc<OriginInfo>, generation: Option<u64>, events: bool, done: &mut Round) -> Result<Option<Prefetch>, Stop> {
    let Roles { origin_vault, origin, destinations, observers, clock, once, .. } = roles;
    let shared = Shared { origin_vault, clock: &**clock, observers, once: *once };
    let origin: &Option<OriginRole> = origin;
    let taken = AtomicBool::new(false);
    let prefetch = async {
        match origin {
            Some(o) => o.prefetch(shared, &taken).await,
            None => std::future::pending().await,
        }
    };
    let cycles = async {
        for role in destinations.iter_mut() {
            if events && role.skips_events() {
                continue;
            }
            role.round(shared, info, generation, events, done).await?;
        }
        Ok::<(), Stop>(())
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
    if fetched.is_none() && taken.load(Ordering::SeqCst) {
        fetched = Some(prefetch.await);
    }
    outcome?;
    Ok(fetched.flatten())
}

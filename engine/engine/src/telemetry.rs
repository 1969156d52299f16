//! Telemetry: Prometheus metrics and the health verdict behind `[telemetry] listen`
//! (`/metrics`, `/healthz`).
//!
//! The role loop records cycles, tasks, last successes, secret counts and destination status
//! here as they happen; request counters that live in the Vault and Consul clients are read at
//! scrape time (as deltas, so the exported series stay monotonic counters); plugin calls arrive
//! through [`vsync_core::PluginCallObserver`]. Recording never fails and never blocks a cycle.
//! `/metrics` answers OpenMetrics to a scraper that asks for it (Prometheus does) and the
//! classic text format (0.0.4) to anything else ([`classic_text`]).
//!
//! Health: a role is healthy while its last successful cycle ended less than
//! `2 × interval + timeout` ago. A role that has not completed a cycle yet is healthy for that
//! long after it started (the first sync of a large mount may take a while), and a hot standby
//! that waits on another process's lock is healthy (it is doing its job: waiting).
//!
//! `/healthz` is network-facing: its reasons come from a fixed vocabulary (`stale:
//! last success 312 s ago`, the last fault's [`Fault::kind`], a Vault's `sealed` or
//! `unreachable`), never a path, an address or an error text, which go to the logs. Each Vault's
//! `sys/seal-status` probe is cached for [`PROBE_CACHE`] and at most one runs per Vault at a time,
//! so a scraper or an attacker hammering `/healthz` does not multiply the Vaults' load. The server
//! bounds what a client costs: [`MAX_HTTP_CONNECTIONS`], [`MAX_HEADER_BYTES`] of request head,
//! [`HEADER_TIMEOUT`] to send it, [`REQUEST_TIMEOUT`] per answer; request bodies are never read.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use serde::Serialize;
use tracing::{info, warn};
use vsync_state::StateStore;
use vsync_vault::VaultClient;

use crate::audit::{FeedStats, FeedStatsSource, RescanReason};
use crate::observer::{CycleObserver, Event, Observing, Settled};
use crate::report::CycleReport;
use crate::sides::Side;
use crate::fault::Fault;
use crate::status::{self, RoleStatus};

/// Labels of a role's series (`destination` is empty for the origin).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabels {
    role: String,
    destination: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CycleLabels {
    role: String,
    destination: String,
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    destination: String,
    kind: String,
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VaultLabels {
    side: String,
    kind: String,
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SideLabels {
    side: String,
}

/// Each Vault side's request concurrency (`vsync_vault_concurrency_*`): the adaptive limit,
/// requests in flight, and rate-limit answers.
struct ConcurrencyFamilies {
    limit: Family<SideLabels, Gauge>,
    in_flight: Family<SideLabels, Gauge>,
    throttled: Family<SideLabels, Counter>,
}

impl ConcurrencyFamilies {
    fn register(registry: &mut Registry) -> Self {
        let families = Self { limit: Family::default(), in_flight: Family::default(), throttled: Family::default() };
        registry.register(
            "vsync_vault_concurrency_limit",
            "Requests a Vault side may have in flight now (workers = \"auto\": adaptive; 0 when fixed by workers)",
            families.limit.clone(),
        );
        registry.register("vsync_vault_in_flight", "Requests a Vault side has in flight now", families.in_flight.clone());
        registry.register(
            "vsync_vault_throttled",
            "Rate-limit answers (HTTP 429) a Vault side received; retried as back-pressure, never failures",
            families.throttled.clone(),
        );
        families
    }

    /// Brings one side's series up to date; `seen` is the throttled total exported so far.
    fn refresh(&self, side: &str, client: &VaultClient, seen: &mut u64) {
        let now = client.concurrency();
        let labels = SideLabels { side: side.to_owned() };
        self.limit.get_or_create(&labels).set(now.limit as i64);
        self.in_flight.get_or_create(&labels).set(now.in_flight as i64);
        // The series exists from the first scrape (at 0), so rules and dashboards can name it.
        let throttled = self.throttled.get_or_create(&labels);
        if now.throttled > *seen {
            throttled.inc_by(now.throttled - *seen);
            *seen = now.throttled;
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabels {
    plugin: String,
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginNameLabels {
    plugin: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DestinationLabels {
    destination: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn cycle_histogram() -> Histogram {
    // 10 ms .. ~5.8 min.
    Histogram::new(exponential_buckets(0.01, 2.0, 16))
}

fn plugin_histogram() -> Histogram {
    // 1 us .. ~65 ms (the default call limit is 50 ms).
    Histogram::new(exponential_buckets(0.000_001, 2.0, 17))
}

/// One role's health bookkeeping.
#[derive(Debug, Clone)]
struct RoleHealth {
    role: &'static str,
    destination: Option<String>,
    /// `2 × interval + timeout`.
    limit: Duration,
    started: Instant,
    last_success: Option<Instant>,
    /// The last cycle's fault kind, when it failed ([`Fault::kind`]).
    last_fault: Option<&'static str>,
    standby: bool,
}

/// A role in the `/healthz` answer.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RoleVerdict {
    /// `origin` or `destination`.
    pub role: &'static str,
    /// Destination name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    /// Whether this role counts as healthy.
    pub healthy: bool,
    /// `ok`, `starting`, `standby` or `stale`.
    pub state: &'static str,
    /// Seconds since its last successful cycle ended, if it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_success_seconds_ago: Option<f64>,
    /// The limit (`2 × interval + timeout`) in seconds.
    pub limit_seconds: f64,
    /// Why it is unhealthy: `stale: last success N s ago` (or `stale: no success since the
    /// start N s ago`), then `; last cycle: KIND` when it failed ([`Fault::kind`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A Vault of this process in the `/healthz` answer.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct VaultVerdict {
    /// `origin` or the destination's name.
    pub side: String,
    /// `ok`, `sealed` or `unreachable`.
    pub state: &'static str,
    /// For `unreachable`: `timeout`, `connection`, `http NNN` or `error` (details go to the logs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The `/healthz` answer.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Health {
    /// `ok` or `unhealthy`.
    pub status: &'static str,
    /// Every role of this process.
    pub roles: Vec<RoleVerdict>,
    /// Every Vault this process talks to, probed with `sys/seal-status` (cached for
    /// [`PROBE_CACHE`]; a no-change cycle sends the destination nothing, so a sealed
    /// destination shows here before any cycle fails on it).
    pub vaults: Vec<VaultVerdict>,
}

impl Health {
    /// Whether every role is healthy.
    pub fn healthy(&self) -> bool {
        self.status == "ok"
    }
}

/// The process's metrics and health state. Cheap to share (`Arc`); all methods take `&self`.
pub struct Telemetry {
    registry: Registry,
    cycles: Family<CycleLabels, Counter>,
    cycle_duration: HistogramFamily<RoleLabels>,
    tasks: Family<TaskLabels, Counter>,
    vault_requests: Family<VaultLabels, Counter>,
    consul_requests: Family<OutcomeLabels, Counter>,
    plugin_calls: Family<PluginLabels, Counter>,
    plugin_duration: HistogramFamily<PluginNameLabels>,
    last_success: Family<RoleLabels, Gauge<f64, AtomicU64>>,
    secrets: Family<DestinationLabels, Gauge>,
    lag: Family<DestinationLabels, Gauge<f64, AtomicU64>>,
    concurrency: ConcurrencyFamilies,
    audit: AuditMetrics,
    sources: Mutex<Sources>,
    roles: Mutex<Vec<RoleHealth>>,
    /// The last seal probe of each Vault, by side; its lock is held while a probe runs.
    probes: Mutex<HashMap<String, ProbeCell>>,
}

/// One Vault's cached probe: when it ran and what it found.
type ProbeCell = Arc<tokio::sync::Mutex<Option<(Instant, VaultVerdict)>>>;

/// The audit feed's series, filled from its counters at scrape time.
#[derive(Debug, Default)]
struct AuditMetrics {
    connections: Family<KindLabels, Counter>,
    lines: Family<KindLabels, Counter>,
    rescans: Family<ReasonLabels, Counter>,
    forced_scans: Counter,
    listening: Gauge,
}

impl AuditMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "vsync_audit_connections",
            "Audit feed connections by outcome (accepted, refused: source outside audit_allow, evicted: dropped for a new one, timed_out)",
            self.connections.clone(),
        );
        registry.register(
            "vsync_audit_lines",
            "Audit feed lines by kind (all, change, garbage, oversize, invalid: a path that cannot be a key)",
            self.lines.clone(),
        );
        registry.register(
            "vsync_audit_rescans",
            "Full origin scans the audit feed asked for, by reason (at most one is queued)",
            self.rescans.clone(),
        );
        registry.register(
            "vsync_audit_forced_scans",
            "Full origin scans the audit feed's rescans caused (at most one per 15 s)",
            self.forced_scans.clone(),
        );
        registry.register("vsync_audit_listening", "1 while the audit feed's listener is bound", self.listening.clone());
    }

    /// Adds what the feed counted since `seen` and remembers `now`.
    fn update(&self, seen: &mut FeedStats, now: FeedStats) {
        let inc = |c: &Counter, before: u64, after: u64| {
            c.inc_by(after.saturating_sub(before));
        };
        let kind = |k: &str| KindLabels { kind: k.into() };
        for (k, before, after) in [
            ("accepted", seen.connections, now.connections),
            ("refused", seen.refused, now.refused),
            ("evicted", seen.evicted, now.evicted),
            ("timed_out", seen.timed_out, now.timed_out),
        ] {
            inc(&self.connections.get_or_create(&kind(k)), before, after);
        }
        for (k, before, after) in [
            ("all", seen.lines, now.lines),
            ("change", seen.changes, now.changes),
            ("garbage", seen.garbage, now.garbage),
            ("oversize", seen.oversize, now.oversize),
            ("invalid", seen.invalid, now.invalid),
        ] {
            inc(&self.lines.get_or_create(&kind(k)), before, after);
        }
        for (i, reason) in RescanReason::ALL.iter().enumerate() {
            let labels = ReasonLabels { reason: reason.name().into() };
            inc(&self.rescans.get_or_create(&labels), seen.rescans[i], now.rescans[i]);
        }
        inc(&self.forced_scans, seen.forced_scans, now.forced_scans);
        self.listening.set(i64::from(now.listening));
        *seen = now;
    }
}

/// Where scrape-time figures come from.
#[derive(Default)]
struct Sources {
    vaults: Vec<(String, VaultClient)>,
    consuls: Vec<(usize, StateStore)>,
    /// What was exported last, per series, to turn client totals into counter increments.
    seen_vault: HashMap<VaultLabels, u64>,
    seen_consul: HashMap<String, u64>,
    seen_throttled: HashMap<String, u64>,
    /// The origin's state store (its status record gives the current generation) and the
    /// last status of each destination this process runs, for `vsync_lag_seconds`.
    origin_store: Option<StateStore>,
    destinations: Vec<(String, RoleStatus)>,
    /// The audit feed's counters and what was exported last.
    audit: Option<(FeedStatsSource, FeedStats)>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

impl Telemetry {
    /// Empty metrics, every family registered.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let cycles = Family::<CycleLabels, Counter>::default();
        let cycle_duration: HistogramFamily<RoleLabels> = Family::new_with_constructor(cycle_histogram);
        let tasks = Family::<TaskLabels, Counter>::default();
        let vault_requests = Family::<VaultLabels, Counter>::default();
        let consul_requests = Family::<OutcomeLabels, Counter>::default();
        let plugin_calls = Family::<PluginLabels, Counter>::default();
        let plugin_duration: HistogramFamily<PluginNameLabels> = Family::new_with_constructor(plugin_histogram);
        let last_success = Family::<RoleLabels, Gauge<f64, AtomicU64>>::default();
        let secrets = Family::<DestinationLabels, Gauge>::default();
        let lag = Family::<DestinationLabels, Gauge<f64, AtomicU64>>::default();
        let audit = AuditMetrics::default();
        audit.register(&mut registry);
        registry.register("vsync_cycles", "Cycles by role, destination and outcome (ok, secret-failures, failed)", cycles.clone());
        registry.register_with_unit("vsync_cycle_duration", "Cycle duration", Unit::Seconds, cycle_duration.clone());
        registry.register(
            "vsync_tasks",
            "Per-secret tasks of destination cycles by kind (copy, exact, check, record, delete, soft-delete, forget) and outcome",
            tasks.clone(),
        );
        registry.register(
            "vsync_vault_requests",
            "Vault HTTP attempts by side, kind and outcome (ok, not_found, error, transport)",
            vault_requests.clone(),
        );
        registry.register("vsync_consul_requests", "Consul HTTP attempts by outcome (ok, error, transport)", consul_requests.clone());
        registry.register("vsync_plugin_calls", "Plugin calls by plugin and outcome (ok, error)", plugin_calls.clone());
        registry.register_with_unit("vsync_plugin_call_duration", "Plugin call duration", Unit::Seconds, plugin_duration.clone());
        registry.register_with_unit(
            "vsync_last_success_timestamp",
            "End of the role's last successful cycle (Unix time)",
            Unit::Seconds,
            last_success.clone(),
        );
        registry.register("vsync_secrets", "Secrets the destination's info records after its last successful cycle", secrets.clone());
        registry.register_with_unit(
            "vsync_lag",
            "How far the destination lags the origin's published info (0 when current)",
            Unit::Seconds,
            lag.clone(),
        );
        let concurrency = ConcurrencyFamilies::register(&mut registry);
        Self {
            concurrency,
            registry,
            cycles,
            cycle_duration,
            tasks,
            vault_requests,
            consul_requests,
            plugin_calls,
            plugin_duration,
            last_success,
            secrets,
            lag,
            audit,
            sources: Mutex::new(Sources::default()),
            roles: Mutex::new(Vec::new()),
            probes: Mutex::new(HashMap::new()),
        }
    }

    /// Exports the audit feed's counters (`vsync_audit_*`).
    pub fn watch_audit(&self, source: FeedStatsSource) {
        lock(&self.sources).audit = Some((source, FeedStats::default()));
    }

    /// Exports the request counters of a Vault client as `side` (`origin`, `destination eu`
    /// is `eu`). Clones share counters: register each client once.
    pub fn watch_vault(&self, side: &str, client: &VaultClient) {
        let mut sources = lock(&self.sources);
        if !sources.vaults.iter().any(|(s, _)| s == side) {
            sources.vaults.push((side.to_owned(), client.clone()));
        }
    }

    /// Exports the request counters of a Consul state store (a file store has none).
    pub fn watch_store(&self, store: &StateStore) {
        let Some(id) = store.consul_counters_id() else {
            return;
        };
        let mut sources = lock(&self.sources);
        if !sources.consuls.iter().any(|(i, _)| *i == id) {
            sources.consuls.push((id, store.clone()));
        }
    }

    /// Where the origin's status record lives (for the lag of this process's destinations).
    pub fn watch_origin_store(&self, store: &StateStore) {
        lock(&self.sources).origin_store = Some(store.clone());
    }

    /// Declares a role of this process for `/healthz`; `interval` and `timeout` are its own.
    pub fn add_role(&self, role: &'static str, destination: Option<&str>, interval: Duration, timeout: Duration) {
        lock(&self.roles).push(RoleHealth {
            role,
            destination: destination.map(str::to_owned),
            limit: interval * 2 + timeout,
            started: Instant::now(),
            last_success: None,
            last_fault: None,
            standby: false,
        });
    }

    fn with_role(&self, role: &str, destination: Option<&str>, f: impl FnOnce(&mut RoleHealth)) {
        let mut roles = lock(&self.roles);
        if let Some(r) = roles.iter_mut().find(|r| r.role == role && r.destination.as_deref() == destination) {
            f(r);
        }
    }

    /// A role waits on another process's lock (`true`) or holds its own again (`false`).
    pub fn standby(&self, role: &str, destination: Option<&str>, waiting: bool) {
        self.with_role(role, destination, |r| r.standby = waiting);
    }

    /// Records an origin cycle that ended at `ended`: its duration and outcome.
    pub fn origin_cycle(&self, elapsed: Duration, ended: SystemTime, result: Result<usize, &Fault>) {
        let labels = RoleLabels { role: "origin".into(), destination: String::new() };
        self.cycle_duration.get_or_create(&labels).observe(elapsed.as_secs_f64());
        let outcome = if result.is_ok() { "ok" } else { "failed" };
        self.cycles
            .get_or_create(&CycleLabels { role: "origin".into(), destination: String::new(), outcome: outcome.into() })
            .inc();
        match result {
            Ok(_) => {
                self.last_success.get_or_create(&labels).set(unix_seconds(ended));
                self.with_role("origin", None, |r| {
                    r.last_success = Some(Instant::now());
                    r.last_fault = None;
                });
            }
            Err(f) => self.with_role("origin", None, |r| r.last_fault = Some(f.kind())),
        }
    }

    /// Records a destination cycle that ended at `ended`: duration, outcome, tasks, the secrets
    /// it records and the origin generation its info reflects (`applied`, for the lag).
    pub fn destination_cycle(&self, name: &str, elapsed: Duration, ended: SystemTime, result: Result<&CycleReport, &Fault>, applied: Option<u64>) {
        let labels = RoleLabels { role: "destination".into(), destination: name.to_owned() };
        self.cycle_duration.get_or_create(&labels).observe(elapsed.as_secs_f64());
        let outcome = match &result {
            Ok(report) if report.counts.failed > 0 => "secret-failures",
            Ok(_) => "ok",
            Err(_) => "failed",
        };
        self.cycles
            .get_or_create(&CycleLabels { role: "destination".into(), destination: name.to_owned(), outcome: outcome.into() })
            .inc();
        match result {
            Ok(report) => {
                for task in &report.tasks {
                    self.tasks
                        .get_or_create(&TaskLabels {
                            destination: name.to_owned(),
                            kind: task.kind.to_owned(),
                            outcome: task.outcome.to_owned(),
                        })
                        .inc_by(task.count);
                }
                self.secrets
                    .get_or_create(&DestinationLabels { destination: name.to_owned() })
                    .set(i64::try_from(report.secrets).unwrap_or(i64::MAX));
                self.last_success.get_or_create(&labels).set(unix_seconds(ended));
                self.with_role("destination", Some(name), |r| {
                    r.last_success = Some(Instant::now());
                    r.last_fault = None;
                });
            }
            Err(f) => self.with_role("destination", Some(name), |r| r.last_fault = Some(f.kind())),
        }
        // The lag is computed from the applied generation alone (`RoleStatus::lag`).
        let record = RoleStatus { generation: applied, ..RoleStatus::default() };
        let mut sources = lock(&self.sources);
        match sources.destinations.iter_mut().find(|(n, _)| n == name) {
            Some((_, r)) => *r = record,
            None => sources.destinations.push((name.to_owned(), record)),
        }
    }

    /// The health verdict now: the roles' cycles, and a `sys/seal-status` probe of every
    /// Vault (cached for [`PROBE_CACHE`], one at a time per Vault, each bounded by
    /// [`PROBE_TIMEOUT`]).
    pub async fn health(&self) -> Health {
        let mut health = self.cycle_health();
        let vaults: Vec<(String, VaultClient)> = lock(&self.sources).vaults.clone();
        let probes = vaults.into_iter().map(|(side, client)| {
            let cell = lock(&self.probes).entry(side.clone()).or_default().clone();
            async move {
                // Held while probing: concurrent requests wait for this probe's answer.
                let mut cached = cell.lock().await;
                if let Some((at, verdict)) = cached.as_ref()
                    && at.elapsed() < PROBE_CACHE
                {
                    return verdict.clone();
                }
                let verdict = probe(side, &client).await;
                *cached = Some((Instant::now(), verdict.clone()));
                verdict
            }
        });
        health.vaults = futures_join_all(probes).await;
        if health.vaults.iter().any(|v| v.state != "ok") {
            health.status = "unhealthy";
        }
        health
    }

    /// The verdict of the roles' cycles alone.
    pub fn cycle_health(&self) -> Health {
        let now = Instant::now();
        let roles: Vec<RoleVerdict> = lock(&self.roles)
            .iter()
            .map(|r| {
                let since_success = r.last_success.map(|t| now.duration_since(t));
                // Numbers and fixed words only: the fault's details are in the logs.
                let (healthy, state, reason) = if r.standby {
                    (true, "standby", None)
                } else {
                    match since_success {
                        Some(ago) if ago < r.limit => (true, "ok", None),
                        Some(ago) => (false, "stale", Some(format!("stale: last success {} s ago", ago.as_secs()))),
                        None if now.duration_since(r.started) < r.limit => (true, "starting", None),
                        None => (
                            false,
                            "stale",
                            Some(format!("stale: no success since the start {} s ago", now.duration_since(r.started).as_secs())),
                        ),
                    }
                };
                let reason = match (reason, r.last_fault) {
                    (Some(why), Some(kind)) => Some(format!("{why}; last cycle: {kind}")),
                    (why, _) => why,
                };
                RoleVerdict {
                    role: r.role,
                    destination: r.destination.clone(),
                    healthy,
                    state,
                    last_success_seconds_ago: since_success.map(|d| d.as_secs_f64()),
                    limit_seconds: r.limit.as_secs_f64(),
                    reason,
                }
            })
            .collect();
        let status = if roles.iter().all(|r| r.healthy) { "ok" } else { "unhealthy" };
        Health { status, roles, vaults: Vec::new() }
    }

    /// Brings the scrape-time series up to date and encodes every metric (OpenMetrics text).
    pub async fn encode(&self) -> String {
        self.refresh().await;
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            warn!(error = %e, "cannot encode the metrics");
        }
        out
    }

    /// Reads the client counters and the origin's status record.
    async fn refresh(&self) {
        let (origin_store, destinations) = {
            let mut guard = lock(&self.sources);
            let sources = &mut *guard;
            for (side, client) in &sources.vaults {
                self.concurrency.refresh(side, client, sources.seen_throttled.entry(side.clone()).or_insert(0));
                for (kind, outcome, total) in client.request_outcomes() {
                    let labels = VaultLabels { side: side.clone(), kind: kind.name().into(), outcome: outcome.name().into() };
                    let seen = sources.seen_vault.entry(labels.clone()).or_insert(0);
                    if total > *seen {
                        self.vault_requests.get_or_create(&labels).inc_by(total - *seen);
                        *seen = total;
                    }
                }
            }
            let mut consul_totals: HashMap<&'static str, u64> = HashMap::new();
            for (_, store) in &sources.consuls {
                for (outcome, n) in store.consul_request_outcomes().unwrap_or_default() {
                    *consul_totals.entry(outcome).or_default() += n;
                }
            }
            for (outcome, total) in consul_totals {
                let seen = sources.seen_consul.entry(outcome.to_owned()).or_insert(0);
                if total > *seen {
                    self.consul_requests.get_or_create(&OutcomeLabels { outcome: outcome.into() }).inc_by(total - *seen);
                    *seen = total;
                }
            }
            if let Some((source, seen)) = &mut sources.audit {
                self.audit.update(seen, source.get());
            }
            (sources.origin_store.clone(), sources.destinations.clone())
        };
        let Some(store) = origin_store.filter(|_| !destinations.is_empty()) else {
            return;
        };
        let Some(origin) = status::read(&store, crate::sides::ORIGIN_SIDE).await else {
            return;
        };
        let now = SystemTime::now();
        for (name, record) in destinations {
            if let Some(lag) = record.lag(&origin, now) {
                self.lag.get_or_create(&DestinationLabels { destination: name }).set(lag.as_secs_f64());
            }
        }
    }
}

/// Telemetry records every settled cycle: durations, outcomes, tasks and health.
impl CycleObserver for Telemetry {
    fn settled<'a>(&'a self, cycle: &'a Settled<'a>) -> Observing<'a> {
        let (elapsed, ended) = (cycle.elapsed(), cycle.ended);
        match (cycle.side, &cycle.outcome) {
            (Side::Origin, Ok(Event::OriginScanned { info, .. } | Event::OriginUpdated { info, .. })) => {
                self.origin_cycle(elapsed, ended, Ok(info.entries.len()));
            }
            (Side::Origin, Err(fault)) => self.origin_cycle(elapsed, ended, Err(fault)),
            (Side::Destination(name), Ok(Event::DestinationCycle { report, .. })) => {
                self.destination_cycle(name, elapsed, ended, Ok(report), cycle.generation);
            }
            (Side::Destination(name), Err(fault)) => self.destination_cycle(name, elapsed, ended, Err(fault), cycle.generation),
            _ => {}
        }
        Box::pin(std::future::ready(()))
    }
}

impl vsync_core::PluginCallObserver for Telemetry {
    fn plugin_call(&self, plugin: &str, ok: bool, elapsed: Duration) {
        let outcome = if ok { "ok" } else { "error" };
        self.plugin_calls.get_or_create(&PluginLabels { plugin: plugin.to_owned(), outcome: outcome.into() }).inc();
        self.plugin_duration
            .get_or_create(&PluginNameLabels { plugin: plugin.to_owned() })
            .observe(elapsed.as_secs_f64());
    }
}

/// How long `/healthz` waits for a Vault's `sys/seal-status`.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a Vault's `sys/seal-status` answer serves `/healthz`: at most one probe per Vault
/// per this, however often `/healthz` is asked (a Kubernetes probe period is 10-15 s).
pub const PROBE_CACHE: Duration = Duration::from_secs(5);

/// Probes one Vault. The verdict carries fixed words only; what went wrong is logged.
async fn probe(side: String, client: &VaultClient) -> VaultVerdict {
    let answer = tokio::time::timeout(PROBE_TIMEOUT, client.sys("GET", "sys/seal-status", None)).await;
    let (state, reason) = match answer {
        Ok(Ok((200, Some(body)))) if body["sealed"] == serde_json::Value::Bool(false) => ("ok", None),
        Ok(Ok((200, Some(body)))) if body["sealed"] == serde_json::Value::Bool(true) => ("sealed", None),
        Ok(Ok((status, _))) => ("unreachable", Some(format!("http {status}"))),
        Ok(Err(e)) => {
            warn!(side, error = %e, "health probe: sys/seal-status failed");
            let why = match &e {
                vsync_vault::VaultError::Sealed { .. } => return VaultVerdict { side, state: "sealed", reason: None },
                vsync_vault::VaultError::Server { status, .. } => format!("http {status}"),
                vsync_vault::VaultError::Connection { .. } => "connection".to_owned(),
                _ => "error".to_owned(),
            };
            ("unreachable", Some(why))
        }
        Err(_) => ("unreachable", Some("timeout".to_owned())),
    };
    VaultVerdict { side, state, reason }
}

/// Runs the futures concurrently and collects their outputs in order.
async fn futures_join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

/// The classic Prometheus text format (version 0.0.4) of an OpenMetrics body: a counter's
/// `# HELP` and `# TYPE` name its `_total` series (OpenMetrics names the family without the
/// suffix, which text-format parsers such as `promtool check metrics` read as a second family
/// without help), and the `# UNIT` and `# EOF` lines, which that format does not have, go.
/// Samples are unchanged.
pub fn classic_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let described = ["# HELP ", "# TYPE "].iter().find_map(|p| Some((*p, line.strip_prefix(p)?.split_once(' ')?)));
        match described {
            Some((prefix, (name, rest))) if counters.contains(name) => {
                out.push_str(prefix);
                out.push_str(name);
                out.push_str("_total ");
                out.push_str(rest);
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Why the telemetry listener could not start.
#[derive(Debug, thiserror::Error)]
#[error("telemetry.listen `{address}`: {source}")]
pub struct ListenError {
    /// The configured address.
    pub address: String,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// Most telemetry connections served at once; more are closed at accept.
pub const MAX_HTTP_CONNECTIONS: usize = 128;

/// Most bytes of a request head (request line and headers) the server buffers.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// A client has this long to send a request head (an idle keep-alive connection too).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest time a request is worked on; past it the answer is 503.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `address` and serves `/metrics` and `/healthz` in a background task for the life of
/// the process, within the bounds above. Returns the bound address (useful with port 0).
pub async fn serve(address: &str, telemetry: Arc<Telemetry>) -> Result<SocketAddr, ListenError> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| ListenError { address: address.to_owned(), source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ListenError { address: address.to_owned(), source })?;
    let app = router(telemetry);
    tokio::spawn(async move {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HTTP_CONNECTIONS));
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!(error = %e, "telemetry: accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                continue;
            };
            let service = hyper_util::service::TowerToHyperService::new(app.clone());
            tokio::spawn(async move {
                let _slot = slot;
                let mut http = hyper::server::conn::http1::Builder::new();
                http.timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .max_buf_size(MAX_HEADER_BYTES)
                    .max_headers(64);
                // A client that breaks the rules is simply disconnected.
                let _ = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
            });
        }
    });
    info!(address = %bound, "serving /metrics and /healthz");
    Ok(bound)
}

/// `/metrics` and `/healthz`, each bounded by [`REQUEST_TIMEOUT`].
fn router(telemetry: Arc<Telemetry>) -> axum::Router {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    use axum::routing::get;

    let metrics = {
        let t = telemetry.clone();
        move |headers: axum::http::HeaderMap| {
            let t = t.clone();
            async move {
                let Ok(body) = tokio::time::timeout(REQUEST_TIMEOUT, t.encode()).await else {
                    return (StatusCode::SERVICE_UNAVAILABLE, "timeout\n").into_response();
                };
                // OpenMetrics for a scraper that asks for it (Prometheus does); the classic text
                // format for anything else (promtool, curl, older agents).
                let openmetrics = headers
                    .get_all(header::ACCEPT)
                    .iter()
                    .any(|v| v.to_str().is_ok_and(|v| v.contains("application/openmetrics-text")));
                if openmetrics {
                    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response()
                } else {
                    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], classic_text(&body)).into_response()
                }
            }
        }
    };
    let healthz = move || {
        let t = telemetry.clone();
        async move {
            match tokio::time::timeout(REQUEST_TIMEOUT, t.health()).await {
                Ok(health) => {
                    let code = if health.healthy() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
                    (code, axum::Json(health)).into_response()
                }
                Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "timeout\n").into_response(),
            }
        }
    };
    axum::Router::new().route("/metrics", get(metrics)).route("/healthz", get(healthz))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_role_is_healthy_until_its_last_success_is_older_than_the_limit() {
        let t = Telemetry::new();
        t.add_role("destination", Some("eu"), Duration::from_millis(20), Duration::from_millis(10));
        assert_eq!(t.cycle_health().roles[0].state, "starting");
        assert!(t.cycle_health().healthy());
        std::thread::sleep(Duration::from_millis(60));
        let h = t.cycle_health();
        assert!(!h.healthy(), "{h:?}");
        assert!(h.roles[0].reason.as_deref().is_some_and(|r| r.starts_with("stale: no success since the start ")), "{h:?}");
        t.standby("destination", Some("eu"), true);
        assert_eq!(t.cycle_health().roles[0].state, "standby");
        assert!(t.cycle_health().healthy());
        t.standby("destination", Some("eu"), false);
        let report = CycleReport::default();
        t.destination_cycle("eu", Duration::from_millis(5), SystemTime::now(), Ok(&report), None);
        assert!(t.cycle_health().healthy());
        assert_eq!(t.cycle_health().roles[0].state, "ok");
        let sealed = Fault::vault(
            "destination `eu`: writing `secret/prod/db`",
            vsync_vault::VaultError::Sealed { request: "PUT secret/data/prod/db".into(), address: "http://10.0.0.7:8200".into() },
        );
        t.destination_cycle("eu", Duration::from_millis(5), SystemTime::now(), Err(&sealed), None);
        std::thread::sleep(Duration::from_millis(60));
        let h = t.cycle_health();
        assert!(!h.healthy());
        let reason = h.roles[0].reason.clone().unwrap_or_default();
        assert!(reason.starts_with("stale: last success ") && reason.ends_with(" s ago; last cycle: sealed"), "{reason}");
        assert!(!reason.contains("prod") && !reason.contains("10.0.0.7"), "{reason}");
    }

    #[test]
    fn the_classic_text_format_names_counters_by_their_total_series() {
        let om = "# HELP vsync_cycles Cycles.\n# TYPE vsync_cycles counter\nvsync_cycles_total{role=\"origin\"} 1\n\
                  # HELP vsync_lag_seconds Lag.\n# TYPE vsync_lag_seconds gauge\n# UNIT vsync_lag_seconds seconds\n\
                  vsync_lag_seconds{destination=\"eu\"} 0.0\n# EOF\n";
        assert_eq!(
            classic_text(om),
            "# HELP vsync_cycles_total Cycles.\n# TYPE vsync_cycles_total counter\nvsync_cycles_total{role=\"origin\"} 1\n\
             # HELP vsync_lag_seconds Lag.\n# TYPE vsync_lag_seconds gauge\nvsync_lag_seconds{destination=\"eu\"} 0.0\n"
        );
    }

    #[tokio::test]
    async fn metrics_name_the_series_the_issue_lists() {
        let t = Telemetry::new();
        t.add_role("origin", None, Duration::from_secs(1), Duration::from_secs(1));
        t.origin_cycle(Duration::from_millis(30), SystemTime::now(), Ok(10));
        let report = CycleReport {
            tasks: vec![vsync_core::cycle::TaskCount { kind: "copy", outcome: "written", count: 7 }],
            secrets: 7,
            ..CycleReport::default()
        };
        t.destination_cycle("eu", Duration::from_millis(30), SystemTime::now(), Ok(&report), None);
        vsync_core::PluginCallObserver::plugin_call(&t, "regex", true, Duration::from_micros(3));
        let text = t.encode().await;
        for needle in [
            "vsync_cycles_total{role=\"origin\",destination=\"\",outcome=\"ok\"} 1",
            "vsync_cycle_duration_seconds_bucket",
            "vsync_tasks_total{destination=\"eu\",kind=\"copy\",outcome=\"written\"} 7",
            "vsync_plugin_calls_total{plugin=\"regex\",outcome=\"ok\"} 1",
            "vsync_plugin_call_duration_seconds_count{plugin=\"regex\"} 1",
            "vsync_last_success_timestamp_seconds{role=\"destination\",destination=\"eu\"}",
            "vsync_secrets{destination=\"eu\"} 7",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }
}

//! One schedule: a seeded sequence of origin operations, engine cycles (clean, faulty, or cut
//! short by a crash) and time passing, then quiescence and the final invariants.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use vsync_core::{DeletePolicy, VersionsMode};
use vsync_engine::origin;
use vsync_vault::{MetadataSettings, SecretData, VaultError};
use vsync_vault_fake::KeyState;

use crate::check;
use crate::world::{DIGEST_KEY, DEST_SIDE, FaultPlan, STORE_OPS, Setup, World};

/// Paths a schedule picks from: folders, neighbours and characters that need encoding.
const PATHS: [&str; 8] = ["app/db", "app/api", "web", "a b/c%d", "x/y/z", "k1", "k2", "deep/er/key"];

/// Steps per schedule before quiescence.
const STEPS: usize = 28;

/// A failed schedule: the invariant broken and the trace that led there.
#[derive(Debug)]
pub struct Failure {
    pub what: String,
    pub trace: Vec<String>,
}

impl Failure {
    /// The message a failing run prints: the seed, how to replay it, the schedule's trace.
    pub fn report(&self, seed: u64) -> String {
        let tail: Vec<&String> = self.trace.iter().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect();
        format!(
            "simulator seed {seed} broke an invariant: {}\nreplay: VSYNC_SIM_SEED={seed} cargo test -p vsync-engine --test simulator -- --nocapture\ntrace (last {} of {} steps):\n  {}",
            self.what,
            tail.len(),
            self.trace.len(),
            tail.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n  ")
        )
    }
}

/// What a batch of schedules did, for the summary line.
#[derive(Debug, Default)]
pub struct Stats {
    pub cycles: u64,
    pub faulty_cycles: u64,
    pub crashes: u64,
    pub failed_cycles: u64,
    pub origin_ops: u64,
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} cycles ({} with faults, {} crashed, {} failed), {} origin operations",
            self.cycles, self.faulty_cycles, self.crashes, self.failed_cycles, self.origin_ops
        )
    }
}

pub fn run_seed(seed: u64) -> Result<Vec<String>, Failure> {
    run_seed_counted(seed, &mut Stats::default())
}

pub fn run_seed_counted(seed: u64, stats: &mut Stats) -> Result<Vec<String>, Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
    // The client's backoff jitter draws from fastrand's thread-local generator.
    fastrand::seed(seed);
    let logs = check::LogCapture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(logs.clone())
        .with_ansi(false)
        .finish();
    let result = tracing::subscriber::with_default(subscriber, || {
        runtime.block_on(async {
            let mut sim = Sim::new(seed).await;
            let outcome = sim.run(stats).await;
            (outcome, sim.trace)
        })
    });
    let (outcome, mut trace) = result;
    if std::env::var_os("VSYNC_SIM_LOG").is_some() {
        eprintln!("{}", logs.text());
    }
    let outcome = outcome.and_then(|()| check::no_secret_in_logs(&logs));
    match outcome {
        Ok(()) => Ok(trace),
        Err(what) => {
            trace.push(format!("FAILED: {what}"));
            Err(Failure { what, trace })
        }
    }
}

pub struct Sim {
    pub rng: fastrand::Rng,
    pub world: World,
    pub trace: Vec<String>,
    seed: u64,
    values: u64,
    /// Paths the destination held before the first cycle (their versions are foreign until
    /// rebuilt, so I3 leaves them to I1).
    pub preloaded: std::collections::BTreeSet<&'static str>,
    /// Every value each path has held at the origin (I3 in `latest` mode).
    pub history: std::collections::BTreeMap<String, Vec<serde_json::Value>>,
    /// The origin role's view (its last scan, updated by events since).
    view: Option<vsync_core::OriginInfo>,
    /// Audit events of origin operations not yet delivered.
    events: Vec<vsync_engine::audit::Change>,
    /// Whether an event was lost since the last full scan.
    events_lost: bool,
}

/// How a cycle ended.
#[derive(Debug, PartialEq)]
pub enum Ended {
    /// Committed; the destination now matches the scan (failed secrets aside).
    Clean { failed: usize, changed: usize },
    /// Failed with a fault (nothing promised).
    Failed,
    /// The process died mid-cycle.
    Crashed,
}

impl Sim {
    async fn new(seed: u64) -> Sim {
        let mut rng = fastrand::Rng::with_seed(seed);
        let setup = Setup {
            versions: if rng.bool() { VersionsMode::All } else { VersionsMode::Latest },
            deletes: match rng.u8(0..6) {
                0 => DeletePolicy::Ignore,
                1 => DeletePolicy::Soft,
                _ => DeletePolicy::Mirror,
            },
            workers: [1, 2, 4][rng.usize(0..3)],
            scan: rng.u8(0..3) != 0,
            page_size: [1, 2, 1000][rng.usize(0..3)],
        };
        let world = World::new(setup.clone()).await;
        Sim { rng, world, trace: vec![format!("setup {setup:?}")], seed, values: 0, preloaded: Default::default(), history: Default::default(), view: None, events: Vec::new(), events_lost: false }
    }

    async fn run(&mut self, stats: &mut Stats) -> Result<(), String> {
        if self.rng.u8(0..4) == 0 {
            // Adopted by the first cycle; a key the origin drops before any cycle saw it would
            // be a foreign key, which vsync leaves alone and verify reports, by design.
            self.preload_destination().await;
            self.cycle(None).await?;
        }
        for step in 0..STEPS {
            match self.rng.u8(0..20) {
                0..=10 => {
                    stats.origin_ops += 1;
                    self.origin_op().await;
                }
                11..=17 => {
                    let plan = self.fault_plan();
                    // Half the rounds are library cycles of a long-lived role, half are whole
                    // `vsync run --once` processes (publish, load, status, observers).
                    let ended = match self.rng.u8(0..3) {
                        0 => self.cycle(plan).await?,
                        1 => self.event_cycle(plan).await?,
                        _ => self.process_run(plan).await?,
                    };
                    stats.cycles += 1;
                    stats.faulty_cycles += u64::from(plan.is_some());
                    stats.crashes += u64::from(ended == Ended::Crashed);
                    stats.failed_cycles += u64::from(ended == Ended::Failed);
                }
                _ => {
                    let secs = [1, 5, 30, 61, 600][self.rng.usize(0..5)];
                    self.trace.push(format!("step {step}: {secs} s pass"));
                    tokio::time::sleep(Duration::from_secs(secs)).await;
                }
            }
        }
        self.quiesce().await?;
        check::no_secret_in_store(&self.world.memory)?;
        check::verify_detects_injected_drift(self).await
    }

    /// A unique secret value; the marker lets I4 find it anywhere it must not be.
    pub fn value(&mut self) -> SecretData {
        self.values += 1;
        let marker = format!("{}{}-{}", check::SECRET_MARKER, self.seed, self.values);
        SecretData::from_json(&serde_json::json!({ "v": marker, "n": self.values }).to_string()).unwrap()
    }

    /// A unique value the origin is about to hold at `key` (`mount` + path), remembered for I3.
    fn origin_value(&mut self, key: String) -> SecretData {
        let data = self.value();
        let json: serde_json::Value = serde_json::from_str(data.as_json()).unwrap();
        self.history.entry(key).or_default().push(json);
        data
    }

    fn path(&mut self) -> &'static str {
        PATHS[self.rng.usize(0..PATHS.len())]
    }

    /// A destination that already holds the origin's keys, with other values and history.
    async fn preload_destination(&mut self) {
        for _ in 0..self.rng.usize(1..4) {
            let path = self.path();
            let (ours, theirs) = (self.rng.u64(1..3), self.rng.u64(1..4));
            for cas in 0..ours {
                let data = self.origin_value(format!("secret/{path}"));
                let _ = self.world.origin_admin.write_version("secret/", path, &data, cas).await;
            }
            for cas in 0..theirs {
                let data = self.value();
                let _ = self.world.dest_admin.write_version("secret/", path, &data, cas).await;
            }
            self.preloaded.insert(path);
            self.trace.push(format!("origin writes secret/{path} {ours}x; the destination already holds it with {theirs} versions"));
        }
    }

    fn fault_plan(&mut self) -> Option<FaultPlan> {
        if self.rng.bool() {
            return None;
        }
        let odds = |rng: &mut fastrand::Rng, most: u32| if rng.bool() { rng.u32(0..=most) } else { 0 };
        Some(FaultPlan {
            salt: self.rng.u64(..),
            connection: odds(&mut self.rng, 150),
            server: odds(&mut self.rng, 150),
            throttled: odds(&mut self.rng, 200),
            lost_answer: odds(&mut self.rng, 150),
            crash: odds(&mut self.rng, 60),
            sealed: match self.rng.u8(0..12) {
                0 => Some("origin"),
                1 => Some("destination"),
                _ => None,
            },
            store: self.rng.bool().then(|| {
                (STORE_OPS[self.rng.usize(0..STORE_OPS.len())], self.rng.u64(1..4), self.rng.bool())
            }),
            lose_lock: odds(&mut self.rng, 40),
        })
    }

    /// One origin scan and one destination cycle, as one engine round.
    pub async fn cycle(&mut self, plan: Option<FaultPlan>) -> Result<Ended, String> {
        self.round(plan, None).await
    }

    /// The origin's view updated from the audit events since the last round (some lost,
    /// duplicated or reordered, as a socket feed may deliver them), then a destination cycle.
    /// What a lost event hides, the next full scan finds; nothing may be written wrong or
    /// deleted meanwhile.
    async fn event_cycle(&mut self, plan: Option<FaultPlan>) -> Result<Ended, String> {
        if self.view.is_none() {
            return self.cycle(plan).await;
        }
        let mut delivered = Vec::new();
        let mut lost = 0;
        for change in std::mem::take(&mut self.events) {
            match self.rng.u8(0..10) {
                0 => lost += 1,
                1 => {
                    delivered.push(change.clone());
                    delivered.push(change);
                }
                _ => delivered.push(change),
            }
        }
        self.rng.shuffle(&mut delivered);
        self.trace.push(format!("events: {} delivered, {lost} lost", delivered.len()));
        // A lost event is found by the next full scan only: until then a clean cycle need not
        // hold the key it announced (I2 waits for that scan).
        self.events_lost |= lost > 0;
        let ended = self.round(plan, Some(delivered)).await?;
        // Events of a round that did not settle are gone too (the role rescans in full later).
        self.events_lost |= !matches!(ended, Ended::Clean { .. });
        Ok(ended)
    }

    async fn round(&mut self, plan: Option<FaultPlan>, incremental: Option<Vec<vsync_engine::audit::Change>>) -> Result<Ended, String> {
        let view = self.view.clone();
        let new_view = std::cell::RefCell::new(None);
        let lost_events = incremental.is_some() && self.events_lost;
        // An update from events reads only the keys they name: with none, a sealed origin
        // is not touched.
        let full_scan = incremental.is_none();
        let before = self.world.dest.snapshot("secret/");
        let crash = Arc::new(tokio::sync::Notify::new());
        self.world.faults(plan, &crash);
        let store = self.world.store();
        let racing = plan.is_some() && self.rng.bool();
        let reader = racing_reader(&store);
        let origin_client = self.world.engine_origin();
        let spec = self.world.origin_spec();
        let round = async {
            let clock = self.world.clock;
            let info = match incremental {
                Some(changes) => {
                    let mut view = view.ok_or("no scan yet")?;
                    origin::update(&origin_client, &spec, Some(DIGEST_KEY), &mut view, &changes, &clock).await.map_err(|e| e.to_string())?;
                    Arc::new(view)
                }
                None => origin::scan_with(&origin_client, &spec, Some(DIGEST_KEY), &clock).await.map_err(|e| e.to_string())?,
            };
            *new_view.borrow_mut() = Some((*info).clone());
            let role = self.world.role().await;
            role.cycle(&origin_client, &info, World::flags()).await.map_err(|e| e.to_string())
        };
        let outcome = tokio::select! {
            biased;
            _ = crash.notified() => None,
            r = round => Some(r),
            corrupt = reader, if racing => return Err(format!("a reader racing the cycle failed fatally: {corrupt}")),
        };
        self.world.clear_faults();
        // A role whose lock was lost stops; its process restarts and takes the lock again.
        let lock_lost = self.world.role.as_ref().is_some_and(|r| !r.lock.is_held());
        if lock_lost {
            self.world.role = None;
            self.trace.push(format!("the lock of {DEST_SIDE} was lost"));
        }
        if outcome.is_none() {
            self.world.role = None;
        }
        let ended = judge(outcome, plan, full_scan)?;
        self.trace.push(format!("cycle {plan:?}: {ended:?}"));
        if let Some(v) = new_view.into_inner() {
            self.view = Some(v);
            if full_scan {
                // The scan saw everything the pending events announce.
                self.events.clear();
                self.events_lost = false;
            }
        }
        self.check_after(&ended, lost_events, &before)?;
        Ok(ended)
    }

    /// I2 after a clean cycle (unless a lost event hides a change until the next full scan),
    /// and I3 after any.
    fn check_after(&self, ended: &Ended, lost_events: bool, before: &BTreeMap<String, KeyState>) -> Result<(), String> {
        if let Ended::Clean { failed: 0, .. } = ended
            && !lost_events
        {
            check::live_origin_keys_are_present(self)?;
        }
        check::writes_hold_origin_data(self, before)
    }

    /// One `vsync run --once` process: the origin and destination roles over the same store,
    /// through the roles loop and its observers, started from the persisted state only.
    pub async fn process_run(&mut self, plan: Option<FaultPlan>) -> Result<Ended, String> {
        self.world.role = None; // the long-lived role's process ends first (its lock with it)
        // Its scan is published; the event-fed view is the next full scan's (one origin view).
        self.view = None;
        let before = self.world.dest.snapshot("secret/");
        let crash = Arc::new(tokio::sync::Notify::new());
        self.world.faults(plan, &crash);
        let engine = self.world.engine().await;
        let outcome = tokio::select! {
            biased;
            _ = crash.notified() => None,
            r = vsync_engine::run(engine, vsync_engine::RunOptions { once: true, flags: World::flags() }, std::future::pending()) => Some(r),
        };
        self.world.clear_faults();
        let ended = match outcome {
            None => Ended::Crashed,
            Some(Err(_)) => Ended::Failed,
            Some(Ok(vsync_engine::Ended::Once { per_secret_failures })) => Ended::Clean { failed: usize::from(per_secret_failures), changed: 1 },
            Some(Ok(other)) => return Err(format!("run --once ended with {other:?}")),
        };
        self.trace.push(format!("run --once {plan:?}: {ended:?}"));
        self.check_after(&ended, false, &before)?;
        Ok(ended)
    }

    /// Clean cycles until one changes nothing, then the destination must equal the origin.
    async fn quiesce(&mut self) -> Result<(), String> {
        for _ in 0..4 {
            if let Ended::Clean { failed: 0, changed: 0 } = self.cycle(None).await? {
                return check::destination_equals_origin(self).await;
            }
        }
        Err("four clean cycles did not settle".into())
    }

    async fn origin_op(&mut self) {
        // A real request takes time: two operations never share a timestamp (a key deleted and
        // re-created within one clock tick would read back identical, which no server does).
        tokio::time::advance(Duration::from_millis(1)).await;
        let admin = self.world.origin_admin.clone();
        let path = self.path();
        let current = admin.read_metadata("secret/", path).await.ok().flatten();
        let versions: Vec<u64> = current.as_ref().map(|m| m.versions.keys().copied().collect()).unwrap_or_default();
        let pick = |rng: &mut fastrand::Rng| -> Vec<u64> {
            if versions.is_empty() {
                return vec![1];
            }
            let n = rng.usize(1..=versions.len().min(3));
            (0..n).map(|_| versions[rng.usize(0..versions.len())]).collect()
        };
        let op = self.rng.u8(0..14);
        let (what, result): (String, Result<(), VaultError>) = match op {
            0..=4 => {
                let data = self.origin_value(format!("secret/{path}"));
                let cas = current.as_ref().map_or(0, |m| m.current_version);
                ("write".into(), admin.write_version("secret/", path, &data, cas).await.map(|_| ()))
            }
            5 => ("delete latest".into(), admin.soft_delete_latest("secret/", path).await),
            6 => {
                let v = pick(&mut self.rng);
                (format!("delete {v:?}"), admin.delete_versions("secret/", path, &v).await)
            }
            7 => {
                let v = pick(&mut self.rng);
                (format!("undelete {v:?}"), admin.undelete_versions("secret/", path, &v).await)
            }
            8 => {
                let v = pick(&mut self.rng);
                (format!("destroy {v:?}"), admin.destroy_versions("secret/", path, &v).await)
            }
            9 => {
                let settings = self.settings();
                (format!("metadata {settings:?}"), admin.write_metadata("secret/", path, &settings).await)
            }
            10 => ("delete metadata".into(), admin.delete_metadata("secret/", path).await),
            11 | 12 => {
                let data = self.origin_value(format!("kv1/{path}"));
                ("kv1 write".into(), admin.write_v1("kv1/", path, &data).await)
            }
            _ => ("kv1 delete".into(), admin.delete_v1("kv1/", path).await),
        };
        let mount = if op >= 11 { "kv1/" } else { "secret/" };
        let rest = match op {
            0..=5 => format!("data/{path}"),
            6 => format!("delete/{path}"),
            7 => format!("undelete/{path}"),
            8 => format!("destroy/{path}"),
            9 | 10 => format!("metadata/{path}"),
            _ => path.to_owned(),
        };
        self.events.push(vsync_engine::audit::Change { mount: mount.to_owned(), rest });
        self.trace.push(format!("origin {what} {mount}{path}: {}", result.map_or_else(|e| format!("refused ({e})"), |()| "ok".into())));
    }

    fn settings(&mut self) -> MetadataSettings {
        let mut custom = std::collections::BTreeMap::new();
        if self.rng.bool() {
            custom.insert("owner".to_owned(), format!("team-{}", self.rng.u8(0..3)));
        }
        MetadataSettings {
            max_versions: [0, 1, 2, 3, 5][self.rng.usize(0..5)],
            cas_required: self.rng.u8(0..4) == 0,
            delete_version_after: ["0s", "0s", "45s", "10m"][self.rng.usize(0..4)].to_owned(),
            custom_metadata: custom,
        }
    }
}

/// A reader (`vsync verify`, a standby) loading the destination info while a cycle commits and
/// collects parts: it must never see a corrupt info. Resolves only with such a failure.
async fn racing_reader(store: &vsync_state::StateStore) -> String {
    // Bounded: each load wakes the paused clock, and backoffs span virtual seconds.
    for _ in 0..50 {
        if let Err(f) = vsync_engine::destination::load_info(store, "sim", 1).await
            && matches!(f.class, vsync_engine::FaultClass::Fatal(_))
        {
            return f.to_string();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::future::pending().await
}

/// How a library round ended (`None`: the process crashed), and whether that is possible under
/// its faults.
fn judge(outcome: Option<Result<vsync_engine::CycleReport, String>>, plan: Option<FaultPlan>, full_scan: bool) -> Result<Ended, String> {
    let sealed = plan.and_then(|p| p.sealed);
    match outcome {
        None => Ok(Ended::Crashed),
        Some(Err(_)) => Ok(Ended::Failed),
        // The scan reads the origin, so it cannot pass sealed; a destination is only touched
        // when there is something to write (health probes report its seal).
        Some(Ok(_)) if full_scan && sealed == Some("origin") => Err("a cycle ended as if it had worked against a sealed origin".into()),
        Some(Ok(r)) => {
            let c = &r.counts;
            if sealed == Some("destination") && c.added + c.updated + c.deleted + c.rebuilt > 0 {
                return Err(format!("a cycle reported changes at a sealed destination: {c:?}"));
            }
            Ok(Ended::Clean { failed: c.failed, changed: c.added + c.updated + c.deleted + c.rebuilt + c.adopted })
        }
    }
}

//! The simulated world: an origin and a destination in-memory Vault, the clients the engine
//! uses (fault-injecting) and the ones the schedule uses (clean), the state store, and the
//! destination role the engine runs. A crash drops the destination with its clients and lock;
//! the restart builds new ones from the persisted state only.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use vsync_core::clock::Clock;
use vsync_core::{CycleFlags, DeletePolicy, DestinationSpec, OriginSpec, VersionsMode};
use vsync_engine::Destination;
use vsync_state::{MemoryOp, MemoryStore, StateStore};
use vsync_vault::{RetryPolicy, Token, VaultClient, VaultConfig};
use vsync_vault_fake::{FakeVault, FaultHook, Injected, RequestView, TokenPolicy};

/// The mounts every schedule replicates: one of each KV version.
pub const MOUNTS: [(&str, u8); 2] = [("secret/", 2), ("kv1/", 1)];

/// The origin's KV v1 digest key.
pub const DIGEST_KEY: &[u8] = b"simulated digest key, 32 bytes!!";

/// How one schedule's engine is configured.
#[derive(Debug, Clone)]
pub struct Setup {
    pub versions: VersionsMode,
    pub deletes: DeletePolicy,
    pub workers: usize,
    /// Whether the engine's tokens may SCAN; without it listings walk folders with paged LISTs.
    pub scan: bool,
    /// Keys per LIST page (small pages make every folder take several).
    pub page_size: usize,
}

/// Faults of one cycle: each request is hit with these odds, decided from the request itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct FaultPlan {
    /// Seed of the per-request decisions.
    pub salt: u64,
    /// Odds (per mille) that a request gets no answer.
    pub connection: u32,
    /// Odds that a request is answered 500.
    pub server: u32,
    /// Odds that a request is answered 429 with `Retry-After`.
    pub throttled: u32,
    /// Odds that a write is applied and its answer lost.
    pub lost_answer: u32,
    /// Odds that the process dies at this request (only the first one counts).
    pub crash: u32,
    /// A side sealed for the whole cycle (`origin` or `destination`).
    pub sealed: Option<&'static str>,
    /// State-store operations that fail: which, how many, and whether they apply first.
    pub store: Option<(MemoryOp, u64, bool)>,
    /// Odds that the destination's lock is lost at this request (a session invalidated).
    pub lose_lock: u32,
}

/// The state-store operations a cycle's faults pick from.
pub const STORE_OPS: [MemoryOp; 7] = [
    MemoryOp::ReadRoot,
    MemoryOp::ReadPart,
    MemoryOp::WriteParts,
    MemoryOp::SwapRoot,
    MemoryOp::RemoveParts,
    MemoryOp::WriteDoc,
    MemoryOp::WriteLockedDoc,
];

/// The destination's side in the state store.
pub const DEST_SIDE: &str = "destination-sim";

/// A hook that decides faults for the engine's requests and raises the crash flag.
pub fn hook(plan: FaultPlan, side: &'static str, crash: Arc<tokio::sync::Notify>, seen: Arc<Mutex<BTreeMap<String, u64>>>, store: MemoryStore) -> FaultHook {
    Arc::new(move |req: &RequestView| {
        let id = format!("{side} {} {}", req.method, req.api_path);
        let nth = {
            let mut seen = seen.lock().unwrap();
            let n = seen.entry(id.clone()).or_insert(0);
            *n += 1;
            *n
        };
        let roll = |what: u64| (hash((plan.salt, what, &id, nth)) % 1000) as u32;
        if roll(1) < plan.crash {
            crash.notify_one();
        }
        if roll(6) < plan.lose_lock {
            store.lose_lock(DEST_SIDE);
        }
        if roll(2) < plan.connection {
            return Some(Injected::Connection);
        }
        if roll(3) < plan.server {
            return Some(Injected::Status { status: 500, retry_after: None, message: "simulated server fault".into() });
        }
        if roll(4) < plan.throttled {
            return Some(Injected::Status { status: 429, retry_after: Some(1), message: "request path \"x\": rate limit quota exceeded".into() });
        }
        if req.is_write && roll(5) < plan.lost_answer {
            return Some(Injected::LostAnswer);
        }
        None
    })
}

/// A stable hash (std's `DefaultHasher::new()` has fixed keys).
pub fn hash(value: impl std::hash::Hash) -> u64 {
    use std::hash::Hasher;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

/// The simulated wall clock: a fixed epoch plus tokio's (paused) time since the schedule
/// began. The fakes stamp versions with it and the engine judges them by it.
#[derive(Clone, Copy)]
pub struct SimClock {
    start: tokio::time::Instant,
}

impl SimClock {
    fn new() -> Self {
        SimClock { start: tokio::time::Instant::now() }
    }
}

impl Clock for SimClock {
    fn now(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000) + self.start.elapsed()
    }
}

/// The token the engine's clients use (its policy per [`Setup::scan`]); the schedule's own
/// clients use `root`.
const ENGINE_TOKEN: &str = "engine";

fn client(vault: &FakeVault) -> VaultClient {
    client_as(vault, "root", vsync_vault::DEFAULT_LIST_PAGE_SIZE)
}

fn client_as(vault: &FakeVault, token: &str, page_size: usize) -> VaultClient {
    let mut config = VaultConfig::new("http://simulated.invalid", Token::new(token));
    config.list_page_size = page_size;
    config.retry = RetryPolicy { max_attempts: 4, base_delay: Duration::from_millis(100), max_delay: Duration::from_secs(5) };
    config.backpressure_budget = Duration::from_secs(60);
    VaultClient::with_transport(config, vault.transport()).expect("client over the fake")
}

/// Everything one schedule runs against.
pub struct World {
    pub origin: FakeVault,
    pub dest: FakeVault,
    /// The schedule's own clients (no faults: the hook is off while they run).
    pub origin_admin: VaultClient,
    pub dest_admin: VaultClient,
    /// The state store (what survives a crash).
    pub memory: MemoryStore,
    pub setup: Setup,
    /// The running destination role; `None` after a crash until it restarts.
    pub role: Option<Destination>,
    pub clock: SimClock,
}

impl World {
    pub async fn new(setup: Setup) -> World {
        let clock = SimClock::new();
        let stamp: Arc<dyn Fn() -> SystemTime + Send + Sync> = Arc::new(move || clock.now());
        let (origin, dest) = (FakeVault::new(stamp.clone()), FakeVault::new(stamp));
        for (mount, version) in MOUNTS {
            origin.enable_kv(mount, version);
            dest.enable_kv(mount, version);
        }
        let policy = TokenPolicy { pagination_limit: None, scan: setup.scan };
        origin.set_token_policy(ENGINE_TOKEN, policy.clone());
        dest.set_token_policy(ENGINE_TOKEN, policy);
        let (origin_admin, dest_admin) = (client(&origin), client(&dest));
        World { origin, dest, origin_admin, dest_admin, memory: MemoryStore::new("simulated"), setup, role: None, clock }
    }

    /// The simulated wall time (what the fakes stamp).
    pub fn now(&self) -> SystemTime {
        self.clock.now()
    }

    pub fn origin_spec(&self) -> OriginSpec {
        OriginSpec {
            mounts: MOUNTS.iter().map(|(m, _)| (*m).to_owned()).collect(),
            interval: Duration::from_secs(60),
            timeout: Duration::from_secs(600),
            workers: self.setup.workers,
            buckets: None,
        }
    }

    pub fn spec(&self) -> DestinationSpec {
        DestinationSpec {
            name: "sim".into(),
            labels: BTreeMap::new(),
            mounts: MOUNTS.iter().map(|(m, _)| ((*m).to_owned(), (*m).to_owned())).collect(),
            interval: Duration::from_secs(60),
            timeout: Duration::from_secs(600),
            workers: self.setup.workers,
            versions: self.setup.versions,
            deletes: self.setup.deletes,
            max_delete_ratio: 1.0,
            config_hash: "simulator".into(),
            uses_plugins: false,
        }
    }

    pub fn store(&self) -> StateStore {
        StateStore::memory(self.memory.clone())
    }

    /// The destination role, started from the persisted state if it is not running.
    pub async fn role(&mut self) -> &mut Destination {
        if self.role.is_none() {
            let store = self.store();
            let lock = store.lock_side(DEST_SIDE).await.expect("the lock of a dead process is free");
            self.role = Some(Destination {
                spec: self.spec(),
                vault: client_as(&self.dest, ENGINE_TOKEN, self.setup.page_size),
                store,
                lock,
                mapper: None,
                digest_key: Some(Arc::new(DIGEST_KEY.to_vec())),
                progress: None,
                clock: Arc::new(self.clock),
            });
        }
        self.role.as_mut().unwrap()
    }

    /// A whole `vsync run` process (both roles) as the binary composes it, from persisted state.
    pub async fn engine(&mut self) -> vsync_engine::Engine {
        let store = self.store();
        let origin_lock = store.lock_side(vsync_engine::ORIGIN_SIDE).await.expect("the origin's lock is free");
        self.role().await;
        let destination = self.role.take().expect("just started");
        vsync_engine::Engine {
            role: vsync_engine::Role::Run,
            origin_vault: self.engine_origin(),
            origin_store: store,
            publisher: Some(vsync_engine::Publisher {
                spec: self.origin_spec(),
                lock: origin_lock,
                digest_key: Some(DIGEST_KEY.to_vec()),
                audit: None,
            }),
            destinations: vec![destination],
            alerter: vsync_engine::Alerter::new(None),
            tripwire: vsync_engine::Tripwire::new(),
            reporter: Box::new(|_| {}),
            telemetry: Arc::new(vsync_engine::Telemetry::new()),
            deferred: Default::default(),
            clock: Arc::new(self.clock),
        }
    }

    /// The engine's origin client for one cycle (fresh, as a restarted process would have).
    pub fn engine_origin(&self) -> VaultClient {
        client_as(&self.origin, ENGINE_TOKEN, self.setup.page_size)
    }

    pub fn faults(&self, plan: Option<FaultPlan>, crash: &Arc<tokio::sync::Notify>) {
        let sealed = plan.and_then(|p| p.sealed);
        for op in STORE_OPS {
            self.memory.fail_next(op, 0);
            self.memory.fail_next_after_applying(op, 0);
        }
        if let Some((op, n, applied)) = plan.and_then(|p| p.store) {
            match applied {
                true => self.memory.fail_next_after_applying(op, n),
                false => self.memory.fail_next(op, n),
            }
        }
        self.origin.set_sealed(sealed == Some("origin"));
        self.dest.set_sealed(sealed == Some("destination"));
        let seen = Arc::new(Mutex::new(BTreeMap::new()));
        let m = &self.memory;
        self.origin.set_fault_hook(plan.map(|p| hook(p, "origin", crash.clone(), seen.clone(), m.clone())));
        self.dest.set_fault_hook(plan.map(|p| hook(p, "destination", crash.clone(), seen, m.clone())));
    }

    pub fn clear_faults(&self) {
        for op in STORE_OPS {
            self.memory.fail_next(op, 0);
            self.memory.fail_next_after_applying(op, 0);
        }
        self.origin.set_sealed(false);
        self.dest.set_sealed(false);
        self.origin.set_fault_hook(None);
        self.dest.set_fault_hook(None);
    }

    pub fn flags() -> CycleFlags {
        CycleFlags::default()
    }
}

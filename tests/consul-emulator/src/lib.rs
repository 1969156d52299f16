//! Dev-only: an in-process Consul KV emulator on 127.0.0.1, for tests.
//!
//! It implements the KV and txn subset vsync uses (Consul's HTTP API: `/v1/kv`, `/v1/txn`,
//! blocking queries) faithfully, in particular what emulators usually get wrong: one global index shared by every write, per-entry
//! Create/Modify indexes, tombstones and the list-index rule, `X-Consul-Index` on 404s,
//! blocking queries that return only when the index is strictly greater than `?index`, presence
//! flags (`?recurse=false` recurses), CAS and DELETE quirks, idempotent writes that neither bump
//! the index nor wake watchers, all-or-nothing txns reporting every failing op with 409, 413 on
//! size and op limits, key validation, and simple ACLs. Sessions and locks too: TTL sessions
//! (invalidated 2 x TTL after the last renewal, as Consul's timers do), `?acquire`/`?release`
//! with `LockIndex` and `Session`, release or delete of held keys on invalidation, lock-delay,
//! and the txn `check-session` verb. Fault hooks ([`Faults`]) make the index
//! go backwards, inject 429/500/503, drop long polls, add latency and wake watchers spuriously.
//! What it deliberately leaves out is listed in `KNOWN_DEVIATIONS.md`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::watch;

/// Emulator limits and ACLs.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// `/v1/txn` operation limit (64 before Consul 1.14, 128 since).
    pub txn_max_ops: usize,
    /// `kv_max_value_size`: the largest value (PUT body or decoded txn value).
    pub kv_max_value_size: usize,
    /// `txn_max_req_len`: the largest txn body (the limit is the larger of this and
    /// `kv_max_value_size`, as in Consul).
    pub txn_max_req_len: usize,
    /// Wait of a blocking query without `wait` (Consul's `default_query_time`).
    pub default_wait: Duration,
    /// Longest wait; longer ones are clamped silently (Consul's `max_query_time`).
    pub max_wait: Duration,
    /// The datacenter this agent serves (`?dc=` of another one fails).
    pub datacenter: String,
    /// ACLs (default-deny when set).
    pub acl: Option<Acl>,
    /// Shortest session TTL accepted (Consul's `session_ttl_min`, 10 s). Tests lower it so
    /// session expiry takes a second or two, not 20 s; the maximum stays Consul's 86400 s.
    pub session_ttl_min: Duration,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            txn_max_ops: 64,
            kv_max_value_size: 512 * 1024,
            txn_max_req_len: 512 * 1024,
            default_wait: Duration::from_secs(300),
            max_wait: Duration::from_secs(600),
            datacenter: "dc1".into(),
            acl: None,
            session_ttl_min: Duration::from_secs(10),
        }
    }
}

/// Token -> key rules. A request without a token is the anonymous token (no rules: denied).
#[derive(Debug, Clone, Default)]
pub struct Acl {
    /// Rules per token secret.
    pub tokens: BTreeMap<String, Vec<AclRule>>,
}

/// Access to keys starting with `prefix` (the longest matching prefix decides, as with
/// Consul's `key_prefix` rules).
#[derive(Debug, Clone)]
pub struct AclRule {
    /// Key prefix (`""` matches every key).
    pub prefix: String,
    /// `key:read` (and list).
    pub read: bool,
    /// `key:write`.
    pub write: bool,
}

/// Request counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// KV GETs (blocking or not) and read-only txns.
    pub reads: u64,
    /// GETs with `?index` > 0.
    pub blocking_reads: u64,
    /// KV PUTs and DELETEs and write txns.
    pub writes: u64,
    /// Operations in txns.
    pub txn_ops: u64,
    /// Answers with a 4xx or 5xx status, injected ones included, except a read's 404 (a normal
    /// answer for a missing key); dropped long polls count too.
    pub errors: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    value: Vec<u8>,
    flags: u64,
    create: u64,
    modify: u64,
    /// How many times a session newly acquired the key.
    lock_index: u64,
    /// The session holding the key's lock.
    session: Option<String>,
}

/// The node every session belongs to (the emulator is one agent on one node).
const NODE: &str = "consul-emulator";

/// Consul's `SessionTTLMax`.
const SESSION_TTL_MAX: Duration = Duration::from_secs(86_400);

/// Consul's `MaxLockDelay`: longer lock-delays are applied as 60 s.
const MAX_LOCK_DELAY: Duration = Duration::from_secs(60);

/// What invalidating a session does to the keys it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behavior {
    Release,
    Delete,
}

#[derive(Debug, Clone)]
struct Session {
    name: String,
    /// The TTL as given (`""`: none).
    ttl: String,
    lock_delay: Duration,
    behavior: Behavior,
    node_checks: Value,
    create: u64,
    /// When the server invalidates it: 2 x TTL after the last renewal, as Consul's session
    /// timers do (`SessionTTLMultiplier`); `None` without a TTL.
    expires: Option<Instant>,
    ttl_dur: Duration,
}

impl Session {
    fn json(&self, id: &str) -> Value {
        json!({
            "ID": id,
            "Name": self.name,
            "Node": NODE,
            "LockDelay": u64::try_from(self.lock_delay.as_nanos()).unwrap_or(u64::MAX),
            "Behavior": match self.behavior { Behavior::Release => "release", Behavior::Delete => "delete" },
            "TTL": self.ttl,
            "NodeChecks": self.node_checks,
            "ServiceChecks": null,
            "CreateIndex": self.create,
            "ModifyIndex": self.create,
        })
    }

    fn renew(&mut self, now: Instant) {
        if !self.ttl_dur.is_zero() {
            self.expires = Some(now + self.ttl_dur * 2);
        }
    }
}

#[derive(Debug, Default, Clone)]
struct Kv {
    /// The global index: every write, of any key, raises it.
    index: u64,
    entries: BTreeMap<String, Entry>,
    /// Deleted key -> index of its deletion (until reaped).
    tombstones: BTreeMap<String, u64>,
    /// Live sessions by ID.
    sessions: BTreeMap<String, Session>,
    /// Key -> end of the lock-delay an invalidated session left on it.
    lock_delays: HashMap<String, Instant>,
}

impl Kv {
    fn entry_json(key: &str, e: &Entry, with_value: bool) -> Value {
        let mut v = json!({
            "LockIndex": e.lock_index,
            "Key": key,
            "Flags": e.flags,
            "Value": if with_value && !e.value.is_empty() { Value::String(B64.encode(&e.value)) } else { Value::Null },
            "CreateIndex": e.create,
            "ModifyIndex": e.modify,
        });
        // `Session` is `omitempty` in Consul's DirEntry.
        if let Some(s) = &e.session {
            v["Session"] = json!(s);
        }
        v
    }

    fn under<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a String, &'a Entry)> + 'a {
        self.entries.range(prefix.to_owned()..).take_while(move |(k, _)| k.starts_with(prefix))
    }

    /// The list index of a prefix: the max of the matched ModifyIndexes and of the
    /// tombstones under it; the table index when that is 0 or the prefix is empty.
    fn list_index(&self, prefix: &str) -> u64 {
        if prefix.is_empty() {
            return self.index;
        }
        let live = self.under(prefix).map(|(_, e)| e.modify).max();
        let dead = self.tombstones.range(prefix.to_owned()..).take_while(|(k, _)| k.starts_with(prefix)).map(|(_, i)| *i).max();
        match live.max(dead) {
            Some(l) if l > 0 => l,
            _ => self.index,
        }
    }

    /// Sets a key; returns whether anything changed (identical writes change nothing).
    /// As Consul's `kvsSetTxn` for a plain write: the lock's session is kept, and the entry
    /// takes the request's LockIndex, 0 (so a write to a once-locked key is never identical).
    fn set(&mut self, key: &str, value: Vec<u8>, flags: u64, at: u64) -> bool {
        match self.entries.get_mut(key) {
            Some(e) if e.value == value && e.flags == flags && e.lock_index == 0 => false,
            Some(e) => {
                e.value = value;
                e.flags = flags;
                e.lock_index = 0;
                e.modify = at;
                true
            }
            None => {
                self.entries.insert(key.to_owned(), Entry { value, flags, create: at, modify: at, lock_index: 0, session: None });
                true
            }
        }
    }

    /// `?acquire=<session>` (Consul's `kvsLockTxn` after `kvsPreApply`'s lock-delay check):
    /// `Ok(changed)` when the lock is (now) held by `id`, `Err(())` when refused.
    fn acquire(&mut self, key: &str, id: &str, value: Vec<u8>, flags: u64, at: u64, now: Instant) -> Result<bool, ()> {
        if self.lock_delays.get(key).is_some_and(|until| *until > now) {
            return Err(());
        }
        match self.entries.get_mut(key) {
            Some(e) if e.session.as_deref() == Some(id) => {
                // Held already: the value may change, the LockIndex does not.
                if e.value == value && e.flags == flags {
                    return Ok(false);
                }
                e.value = value;
                e.flags = flags;
                e.modify = at;
                Ok(true)
            }
            Some(e) if e.session.is_some() => Err(()),
            Some(e) => {
                e.value = value;
                e.flags = flags;
                e.lock_index += 1;
                e.session = Some(id.to_owned());
                e.modify = at;
                Ok(true)
            }
            None => {
                let entry = Entry { value, flags, create: at, modify: at, lock_index: 1, session: Some(id.to_owned()) };
                self.entries.insert(key.to_owned(), entry);
                Ok(true)
            }
        }
    }

    /// `?release=<session>` (Consul's `kvsUnlockTxn`): only the holder releases; the key keeps
    /// its LockIndex and takes the request's value.
    fn release(&mut self, key: &str, id: &str, value: Vec<u8>, flags: u64, at: u64) -> bool {
        match self.entries.get_mut(key) {
            Some(e) if e.session.as_deref() == Some(id) => {
                e.value = value;
                e.flags = flags;
                e.session = None;
                e.modify = at;
                true
            }
            _ => false,
        }
    }

    /// Invalidates a session (destroyed or expired; Consul's `deleteSessionTxn`): its locks are
    /// released (or the keys deleted, Behavior "delete") at one new index, and each key gets
    /// the session's lock-delay (at most 60 s). Returns whether any key changed.
    fn invalidate(&mut self, id: &str, now: Instant) -> bool {
        let Some(session) = self.sessions.remove(id) else {
            return false;
        };
        let at = self.index + 1;
        // Deleting the session is a Raft write of its own.
        self.index = at;
        let held: Vec<String> = self.entries.iter().filter(|(_, e)| e.session.as_deref() == Some(id)).map(|(k, _)| k.clone()).collect();
        let delay = session.lock_delay.min(MAX_LOCK_DELAY);
        for key in &held {
            match session.behavior {
                Behavior::Release => {
                    if let Some(e) = self.entries.get_mut(key) {
                        e.session = None;
                        e.modify = at;
                    }
                }
                Behavior::Delete => {
                    self.delete(key, at);
                }
            }
            if !delay.is_zero() {
                self.lock_delays.insert(key.clone(), now + delay);
            }
        }
        !held.is_empty()
    }

    /// Invalidates every session whose TTL timer ran out; whether any key changed.
    fn expire_sessions(&mut self, now: Instant) -> bool {
        let due: Vec<String> = self.sessions.iter().filter(|(_, s)| s.expires.is_some_and(|t| t <= now)).map(|(id, _)| id.clone()).collect();
        self.lock_delays.retain(|_, until| *until > now);
        due.iter().fold(false, |changed, id| self.invalidate(id, now) | changed)
    }

    fn delete(&mut self, key: &str, at: u64) -> bool {
        if self.entries.remove(key).is_some() {
            self.tombstones.insert(key.to_owned(), at);
            true
        } else {
            false
        }
    }

    fn delete_tree(&mut self, prefix: &str, at: u64) -> bool {
        let doomed: Vec<String> = self.under(prefix).map(|(k, _)| k.clone()).collect();
        doomed.iter().fold(false, |changed, k| self.delete(k, at) | changed)
    }

    /// CAS rule shared by PUT `?cas` and txn `cas`: 0 means "create only".
    fn cas_ok(&self, key: &str, index: u64) -> bool {
        match self.entries.get(key) {
            None => index == 0,
            Some(e) => index != 0 && e.modify == index,
        }
    }
}

#[derive(Debug, Default)]
struct FaultState {
    fail_count: AtomicUsize,
    fail_status: AtomicU64,
    drop_polls: AtomicUsize,
    zero_index: AtomicBool,
    latency_ms: AtomicU64,
}

#[derive(Debug)]
struct Shared {
    config: EmulatorConfig,
    kv: Mutex<Kv>,
    /// Bumped on every change: blocked queries re-evaluate and return if their index moved.
    changed: watch::Sender<u64>,
    /// Bumped to make blocked queries return now, whatever their index (spurious wake-ups and
    /// snapshot restores).
    interrupt: watch::Sender<u64>,
    faults: FaultState,
    stats: Mutex<Stats>,
}

impl Shared {
    fn kv(&self) -> MutexGuard<'_, Kv> {
        self.kv.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stats(&self) -> MutexGuard<'_, Stats> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake(&self) {
        self.changed.send_modify(|g| *g += 1);
    }

    fn interrupt(&self) {
        self.interrupt.send_modify(|g| *g += 1);
    }

    /// Runs the session TTL timers: invalidates what is due and wakes watchers of released keys.
    fn expire_sessions(&self) {
        let changed = self.kv().expire_sessions(Instant::now());
        if changed {
            self.wake();
        }
    }
}

/// A running emulator; dropping it stops the server and joins its thread.
#[derive(Debug)]
pub struct Emulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Fault injection handle (cloneable; usable from any thread).
#[derive(Debug, Clone)]
pub struct Faults {
    shared: Arc<Shared>,
}

impl Faults {
    /// The next `count` requests get `status` (429, 500, 503) with a Consul-like body.
    pub fn fail_next(&self, status: u16, count: usize) {
        self.shared.faults.fail_status.store(u64::from(status), Ordering::SeqCst);
        self.shared.faults.fail_count.store(count, Ordering::SeqCst);
    }

    /// A snapshot restore: the global index drops to half (at least 1), entries' indexes with
    /// it, tombstones are gone, and blocked queries return now with the lower index.
    pub fn index_backwards(&self) {
        {
            let mut kv = self.shared.kv();
            let new = (kv.index / 2).max(1);
            kv.index = new;
            for e in kv.entries.values_mut() {
                e.modify = e.modify.min(new);
                e.create = e.create.min(e.modify);
            }
            for s in kv.sessions.values_mut() {
                s.create = s.create.min(new);
            }
            kv.tombstones.clear();
        }
        self.shared.interrupt();
    }

    /// Reaps every tombstone now (list indexes may fall, as after Consul's `TombstoneTTL`).
    pub fn reap_tombstones(&self) {
        self.shared.kv().tombstones.clear();
    }

    /// The next `count` blocking GETs lose their connection without an answer.
    pub fn drop_long_polls(&self, count: usize) {
        self.shared.faults.drop_polls.store(count, Ordering::SeqCst);
    }

    /// Wakes every blocked query now, with unchanged data.
    pub fn spurious_wakeup(&self) {
        self.shared.interrupt();
    }

    /// Sends `X-Consul-Index: 0` (a Consul bug clients must survive); blocking still works on
    /// the real index.
    pub fn zero_index(&self, on: bool) {
        self.shared.faults.zero_index.store(on, Ordering::SeqCst);
    }

    /// Delays every answer by `d` (zero turns it off).
    pub fn latency(&self, d: Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.shared.faults.latency_ms.store(ms, Ordering::SeqCst);
    }
}

impl Emulator {
    /// Starts an emulator with default limits and no ACLs.
    pub fn start() -> Emulator {
        Self::start_with(EmulatorConfig::default())
    }

    /// Starts an emulator on its own thread and runtime, on a free loopback port.
    pub fn start_with(config: EmulatorConfig) -> Emulator {
        Self::start_on("127.0.0.1:0", config)
    }

    /// Starts an emulator listening on `listen` (the demo binary's `--listen`).
    ///
    /// # Panics
    /// When the address cannot be bound (a test set-up failure).
    pub fn start_on(listen: &str, config: EmulatorConfig) -> Emulator {
        let listener = std::net::TcpListener::bind(listen).expect("bind the Consul emulator");
        listener.set_nonblocking(true).expect("non-blocking listener");
        let addr = listener.local_addr().expect("listener address");
        let shared = Arc::new(Shared {
            config,
            // Raft never hands out index 0, and Consul answers at least 1.
            kv: Mutex::new(Kv { index: 1, ..Default::default() }),
            changed: watch::channel(0).0,
            interrupt: watch::channel(0).0,
            faults: FaultState::default(),
            stats: Mutex::new(Stats::default()),
        });
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let server = shared.clone();
        // Its own thread and runtime: works from sync tests, from any tokio runtime, and while
        // the test thread blocks on child processes.
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                // Session TTL timers: an expired session's locks are released (and watchers
                // woken) even when no request comes in.
                let timers = server.clone();
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        timers.expire_sessions();
                    }
                });
                loop {
                    tokio::select! {
                        _ = &mut stopped => break,
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { continue };
                            let shared = server.clone();
                            tokio::spawn(async move {
                                let service = hyper::service::service_fn(move |req| handle(shared.clone(), req));
                                let io = hyper_util::rt::TokioIo::new(stream);
                                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                            });
                        }
                    }
                }
            });
            // Dropping the runtime here cancels open connections and blocked queries.
        });
        Emulator {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Fault hooks.
    pub fn faults(&self) -> Faults {
        Faults { shared: self.shared.clone() }
    }

    /// Counters since start or the last reset.
    pub fn stats(&self) -> Stats {
        *self.shared.stats()
    }

    /// Resets the counters.
    pub fn reset_stats(&self) {
        *self.shared.stats() = Stats::default();
    }

    /// The global index.
    pub fn index(&self) -> u64 {
        self.shared.kv().index
    }

    /// A key's value, read directly (no HTTP, no ACLs, no counters).
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.shared.kv().entries.get(key).map(|e| e.value.clone())
    }

    /// Keys under a prefix, sorted, read directly.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        self.shared.kv().under(prefix).map(|(k, _)| k.clone()).collect()
    }

    /// The session holding a key's lock, read directly.
    pub fn lock_holder(&self, key: &str) -> Option<String> {
        self.shared.kv().entries.get(key).and_then(|e| e.session.clone())
    }

    /// IDs of the live sessions, read directly (expired ones are invalidated first).
    pub fn sessions(&self) -> Vec<String> {
        self.shared.expire_sessions();
        self.shared.kv().sessions.keys().cloned().collect()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

type Resp = Response<Full<Bytes>>;

/// Cutting a connection without an answer (a dropped long poll): the service fails, so hyper
/// closes the connection.
#[derive(Debug)]
struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by fault injection")
    }
}

impl std::error::Error for DropConnection {}

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert("Content-Type", HeaderValue::from_static(content_type));
    r
}

fn text(status: StatusCode, body: impl Into<String>) -> Resp {
    respond(status, "text/plain; charset=utf-8", body.into())
}

fn json_resp(status: StatusCode, body: &Value) -> Resp {
    respond(status, "application/json", body.to_string())
}

fn not_found() -> Resp {
    // Consul's 404 on reads has an empty body.
    respond(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", Bytes::new())
}

/// The metadata headers of reads; one leader that is always in contact.
fn read_meta(r: &mut Resp, consistency: &'static str) {
    let h = r.headers_mut();
    h.insert("X-Consul-KnownLeader", HeaderValue::from_static("true"));
    h.insert("X-Consul-LastContact", HeaderValue::from_static("0"));
    h.insert("X-Consul-Effective-Consistency", HeaderValue::from_static(consistency));
}

/// Parses a Go duration (`10s`, `1m30s`, `500ms`, `1.5s`, `-2s`, `0`); a number without a
/// unit (other than `0`) fails, as in Go's `time.ParseDuration`. Negative means zero.
fn go_duration(s: &str) -> Option<Duration> {
    let (negative, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += n * scale;
    }
    if negative || !total.is_finite() {
        return Some(Duration::ZERO);
    }
    Duration::try_from_secs_f64(total).ok()
}

/// Who is asking, under ACLs.
enum Who {
    /// ACLs off.
    Anyone,
    /// A token's rules (empty for the anonymous token); `named` is false for anonymous.
    Rules { rules: Vec<AclRule>, named: bool },
}

impl Who {
    fn rule(&self, key: &str) -> (bool, bool) {
        match self {
            Who::Anyone => (true, true),
            Who::Rules { rules, .. } => rules
                .iter()
                .filter(|r| key.starts_with(&r.prefix))
                .max_by_key(|r| r.prefix.len())
                .map_or((false, false), |r| (r.read, r.write)),
        }
    }

    fn can_read(&self, key: &str) -> bool {
        self.rule(key).0
    }

    fn can_write(&self, key: &str) -> bool {
        self.rule(key).1
    }

    /// Consul's `KeyWritePrefix` (recursive deletes): write on the prefix itself and no rule
    /// under it that denies writing, whether or not keys exist there.
    fn can_write_prefix(&self, prefix: &str) -> bool {
        match self {
            Who::Anyone => true,
            Who::Rules { rules, .. } => {
                self.can_write(prefix) && rules.iter().filter(|r| r.prefix.starts_with(prefix)).all(|r| r.write)
            }
        }
    }

    /// Whether `X-Consul-Results-Filtered-By-ACLs` may be sent (never to anonymous).
    fn named(&self) -> bool {
        matches!(self, Who::Rules { named: true, .. })
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Resp, DropConnection> {
    let latency = shared.faults.latency_ms.load(Ordering::SeqCst);
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let is_read = req.method() == Method::GET;
    let mut resp = match route(&shared, req).await {
        Ok(r) => r,
        Err(e) => {
            shared.stats().errors += 1;
            return Err(e);
        }
    };
    let status = resp.status();
    if (status.is_client_error() || status.is_server_error()) && !(is_read && status == StatusCode::NOT_FOUND) {
        shared.stats().errors += 1;
    }
    let policy = if shared.config.acl.is_some() { "deny" } else { "allow" };
    resp.headers_mut().insert("X-Consul-Default-ACL-Policy", HeaderValue::from_static(policy));
    Ok(resp)
}

/// Go's `path.Clean` on a key, keeping a trailing slash as Go's ServeMux does.
fn clean_key(key: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for seg in key.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut cleaned = out.join("/");
    if key.ends_with('/') && !cleaned.is_empty() {
        cleaned.push('/');
    }
    cleaned
}

/// Characters a key segment keeps unencoded in a redirect's `Location`.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~').remove(b'/');

async fn route(shared: &Arc<Shared>, req: Request<Incoming>) -> Result<Resp, DropConnection> {
    // Injected failures come first, as from an overloaded server or one without a leader.
    if shared.faults.fail_count.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
        let status = u16::try_from(shared.faults.fail_status.load(Ordering::SeqCst)).unwrap_or(500);
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = match status.as_u16() {
            429 => "rate limit exceeded, try a different server",
            503 => "rate limit exceeded, try again later",
            _ => "No cluster leader",
        };
        return Ok(text(status, body));
    }
    let method = req.method().clone();
    let raw_path = req.uri().path().to_owned();
    let raw_query = req.uri().query().map(str::to_owned);
    let params: HashMap<String, String> = raw_query
        .as_deref()
        .map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let has = |name: &str| params.contains_key(name);

    // The first present of `?token=`, `X-Consul-Token`, `Authorization: Bearer`.
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let token = params
        .get("token")
        .cloned()
        .or_else(|| header("X-Consul-Token"))
        .or_else(|| header("Authorization").and_then(|v| v.strip_prefix("Bearer ").map(str::to_owned)));
    let who = match &shared.config.acl {
        None => Who::Anyone,
        Some(acl) => match token.as_deref() {
            None | Some("") => Who::Rules { rules: Vec::new(), named: false },
            Some(t) => match acl.tokens.get(t) {
                Some(rules) => Who::Rules { rules: rules.clone(), named: true },
                None => return Ok(text(StatusCode::FORBIDDEN, "ACL not found")),
            },
        },
    };
    if let Some(dc) = params.get("dc")
        && !dc.is_empty()
        && dc != &shared.config.datacenter
    {
        return Ok(text(StatusCode::INTERNAL_SERVER_ERROR, "No path to datacenter"));
    }
    if has("stale") && has("consistent") {
        return Ok(text(StatusCode::BAD_REQUEST, "Cannot specify ?stale with ?consistent, conflicting semantics."));
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(text(StatusCode::BAD_REQUEST, "cannot read the body")),
    };

    // Session TTL timers first, so no answer shows a session past its invalidation.
    shared.expire_sessions();
    if let Some(rest) = raw_path.strip_prefix("/v1/session/") {
        return Ok(session(shared, &who, &method, rest, &body));
    }
    if raw_path == "/v1/txn" {
        if method != Method::PUT {
            return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"));
        }
        return Ok(txn(shared, &who, &params, &body));
    }
    let Some(encoded_key) = raw_path.strip_prefix("/v1/kv/") else {
        if raw_path == "/v1/kv" {
            return Ok(redirect("/v1/kv/", raw_query.as_deref()));
        }
        return Ok(text(StatusCode::NOT_FOUND, "404 page not found"));
    };
    let key = percent_encoding::percent_decode_str(encoded_key).decode_utf8_lossy().into_owned();
    // Key checks of current servers: traversal, a leading `/`, surrounding spaces and
    // line feeds are refused; other unclean paths (`//`, `/./`) get Go's ServeMux redirect.
    let segments: Vec<&str> = key.split('/').collect();
    if key.starts_with('/') || segments.contains(&"..") || key.contains('\n') || key.trim() != key {
        return Ok(text(StatusCode::BAD_REQUEST, "invalid key name"));
    }
    if key.contains("//") || segments.contains(&".") {
        let location = percent_encoding::utf8_percent_encode(&clean_key(&key), SEGMENT).to_string();
        return Ok(redirect(&format!("/v1/kv/{location}"), raw_query.as_deref()));
    }
    match method {
        Method::GET => get(shared, &who, &key, &params).await,
        Method::PUT => Ok(put(shared, &who, &key, &params, body)),
        Method::DELETE => Ok(delete(shared, &who, &key, &params)),
        _ => Ok(text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")),
    }
}

fn redirect(path: &str, query: Option<&str>) -> Resp {
    let location = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut r = text(StatusCode::MOVED_PERMANENTLY, format!("<a href=\"{location}\">Moved Permanently</a>.\n"));
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert("Location", v);
    }
    r
}

/// Evaluates a GET: the answer, and the real index for blocking (None: not blockable, e.g. a
/// 400 or 403). `X-Consul-Index` carries the index, or 0 under the `zero_index` fault.
fn read(shared: &Shared, who: &Who, key: &str, params: &HashMap<String, String>) -> (Resp, Option<u64>) {
    let has = |n: &str| params.contains_key(n);
    let kv = shared.kv();
    let mut filtered = false;
    let (mut resp, index) = if has("keys") {
        // `keys` implies a list and takes precedence over `recurse`.
        let sep = params.get("separator").or_else(|| params.get("seperator")).map(String::as_str).unwrap_or("");
        let mut out: Vec<String> = Vec::new();
        for (k, _) in kv.under(key) {
            if !who.can_read(k) {
                filtered = true;
                continue;
            }
            let shown = match k[key.len()..].find(sep).filter(|_| !sep.is_empty()) {
                Some(i) => &k[..key.len() + i + sep.len()],
                None => k.as_str(),
            };
            // Sorted input keeps equal cut-offs adjacent.
            if out.last().map(String::as_str) != Some(shown) {
                out.push(shown.to_owned());
            }
        }
        let index = kv.list_index(key);
        if out.is_empty() && !key.is_empty() { (not_found(), index) } else { (json_resp(StatusCode::OK, &json!(out)), index) }
    } else if has("recurse") {
        let mut out = Vec::new();
        for (k, e) in kv.under(key) {
            if who.can_read(k) {
                out.push(Kv::entry_json(k, e, true));
            } else {
                filtered = true;
            }
        }
        let index = kv.list_index(key);
        if out.is_empty() { (not_found(), index) } else { (json_resp(StatusCode::OK, &Value::Array(out)), index) }
    } else {
        if key.is_empty() {
            return (text(StatusCode::BAD_REQUEST, "Missing key name"), None);
        }
        if !who.can_read(key) {
            return (text(StatusCode::FORBIDDEN, "Permission denied"), None);
        }
        match kv.entries.get(key) {
            // The KV table index: a writer anywhere in the KV store wakes a missing key's watcher.
            None => (not_found(), kv.index),
            Some(e) if has("raw") => {
                let mut r = respond(StatusCode::OK, "text/plain", e.value.clone());
                r.headers_mut().insert("X-Content-Type-Options", HeaderValue::from_static("nosniff"));
                r.headers_mut().insert("Content-Security-Policy", HeaderValue::from_static("sandbox"));
                (r, e.modify)
            }
            Some(e) => (json_resp(StatusCode::OK, &json!([Kv::entry_json(key, e, true)])), e.modify),
        }
    };
    drop(kv);
    let shown = if shared.faults.zero_index.load(Ordering::SeqCst) { 0 } else { index };
    resp.headers_mut().insert("X-Consul-Index", shown.into());
    let consistency = if has("stale") { "stale" } else if has("consistent") { "consistent" } else { "leader" };
    read_meta(&mut resp, consistency);
    if filtered && who.named() {
        resp.headers_mut().insert("X-Consul-Results-Filtered-By-ACLs", HeaderValue::from_static("true"));
    }
    (resp, Some(index))
}

/// A GET, blocking when `?index` > 0 (a blocking query).
async fn get(shared: &Arc<Shared>, who: &Who, key: &str, params: &HashMap<String, String>) -> Result<Resp, DropConnection> {
    // An empty `index` or `wait` counts as absent, as in Consul's `parseWait`.
    let min_index: u64 = match params.get("index").filter(|s| !s.is_empty()) {
        None => 0,
        Some(s) => match s.parse() {
            Ok(n) => n,
            Err(_) => return Ok(text(StatusCode::BAD_REQUEST, "Invalid index")),
        },
    };
    let wait = match params.get("wait").filter(|s| !s.is_empty()).map(|w| go_duration(w)) {
        Some(None) => return Ok(text(StatusCode::BAD_REQUEST, "Invalid wait time")),
        Some(Some(d)) if !d.is_zero() => d.min(shared.config.max_wait),
        _ => shared.config.default_wait.min(shared.config.max_wait),
    };
    shared.stats().reads += 1;
    if min_index == 0 {
        return Ok(read(shared, who, key, params).0);
    }
    shared.stats().blocking_reads += 1;
    if shared.faults.drop_polls.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
        // Cut mid-poll, as a restarted agent or a proxy would.
        tokio::time::sleep(Duration::from_millis(50)).await;
        return Err(DropConnection);
    }
    let jitter = wait.mul_f64(fastrand::f64() / 16.0);
    let deadline = tokio::time::Instant::now() + wait + jitter;
    let mut changed = shared.changed.subscribe();
    let mut interrupt = shared.interrupt.subscribe();
    loop {
        // Marked seen before evaluating, so a change in between is not lost.
        changed.borrow_and_update();
        let (resp, index) = read(shared, who, key, params);
        // Strictly greater: an equal index means "nothing new yet".
        match index {
            Some(i) if i <= min_index => {}
            _ => return Ok(resp),
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return Ok(read(shared, who, key, params).0),
            _ = changed.changed() => {}
            _ = interrupt.changed() => return Ok(read(shared, who, key, params).0),
        }
    }
}

/// A numeric query parameter; a malformed one is a plain error in Consul (500).
#[allow(clippy::result_large_err)] // the error is the ready answer, on a dev-only path
fn parse_u64(params: &HashMap<String, String>, name: &str) -> Result<Option<u64>, Resp> {
    match params.get(name) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| text(StatusCode::INTERNAL_SERVER_ERROR, format!("strconv.ParseUint: parsing {v:?}: invalid syntax"))),
    }
}

/// A random UUID (version 4 layout), as Consul's session IDs.
fn uuid() -> String {
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        fastrand::u32(..),
        fastrand::u16(..),
        fastrand::u16(..0x1000),
        0x8000 | fastrand::u16(..0x4000),
        fastrand::u64(..1 << 48)
    )
}

/// `/v1/session/<op>/<id>` (`agent/session_endpoint.go`): create, renew, destroy (PUT), info
/// and list (GET). Under ACLs every named token may manage sessions (no `session` rules are
/// modelled); the anonymous token may not.
fn session(shared: &Shared, who: &Who, method: &Method, rest: &str, body: &[u8]) -> Resp {
    let (op, id) = rest.split_once('/').unwrap_or((rest, ""));
    let write = match op {
        "create" | "renew" | "destroy" => true,
        "info" | "list" => false,
        _ => return text(StatusCode::NOT_FOUND, "404 page not found"),
    };
    if *method != if write { Method::PUT } else { Method::GET } {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    }
    if matches!(who, Who::Rules { named: false, .. }) {
        return text(StatusCode::FORBIDDEN, "Permission denied");
    }
    if write {
        shared.stats().writes += 1;
    } else {
        shared.stats().reads += 1;
    }
    if id.is_empty() && op != "create" && op != "list" {
        return text(StatusCode::BAD_REQUEST, "Missing session");
    }
    let now = Instant::now();
    match op {
        "create" => create_session(shared, body, now),
        "renew" => match shared.kv().sessions.get_mut(id) {
            None => text(StatusCode::NOT_FOUND, format!("Session id '{id}' not found")),
            Some(s) => {
                s.renew(now);
                json_resp(StatusCode::OK, &json!([s.json(id)]))
            }
        },
        "destroy" => {
            let changed = shared.kv().invalidate(id, now);
            if changed {
                shared.wake();
            }
            json_resp(StatusCode::OK, &json!(true))
        }
        _ => {
            let kv = shared.kv();
            let list: Vec<Value> = kv.sessions.iter().filter(|(sid, _)| op == "list" || sid.as_str() == id).map(|(sid, s)| s.json(sid)).collect();
            let mut r = json_resp(StatusCode::OK, &Value::Array(list));
            r.headers_mut().insert("X-Consul-Index", kv.index.into());
            drop(kv);
            read_meta(&mut r, "leader");
            r
        }
    }
}

/// `PUT /v1/session/create`: field names are matched case-insensitively (Go's decoder);
/// `LockDelay` is a Go duration or nanoseconds, and values under 1000 (ns) mean seconds
/// (`FixupLockDelay`); a TTL outside [`session_ttl_min`, 86400 s] or an unknown Behavior is an
/// RPC error (500).
fn create_session(shared: &Shared, body: &[u8], now: Instant) -> Resp {
    let fields = match body.is_empty() {
        true => serde_json::Map::new(),
        false => match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return text(StatusCode::BAD_REQUEST, "Request decode failed: not a JSON object"),
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("Request decode failed: {e}")),
        },
    };
    let field = |name: &str| fields.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v).filter(|v| !v.is_null());
    let seconds_if_tiny = |d: Duration| if d.as_nanos() < 1000 { Duration::from_secs(d.as_nanos() as u64) } else { d };
    let lock_delay = match field("LockDelay") {
        None => Duration::from_secs(15),
        Some(Value::String(v)) => match go_duration(v) {
            Some(d) => seconds_if_tiny(d),
            None => return text(StatusCode::BAD_REQUEST, format!("Request decode failed: time: invalid duration {v:?}")),
        },
        Some(Value::Number(n)) => seconds_if_tiny(Duration::from_nanos(n.as_f64().unwrap_or(0.0).max(0.0) as u64)),
        Some(_) => return text(StatusCode::BAD_REQUEST, "Request decode failed: LockDelay"),
    };
    let mut strings = Vec::new();
    for name in ["TTL", "Name", "Behavior", "Node"] {
        match field(name) {
            None => strings.push(String::new()),
            Some(Value::String(v)) => strings.push(v.clone()),
            Some(_) => return text(StatusCode::BAD_REQUEST, format!("Request decode failed: {name} is not a string")),
        }
    }
    let [ttl, name, behavior, node]: [String; 4] = strings.try_into().unwrap_or_default();
    let ttl_dur = match ttl.as_str() {
        "" => Duration::ZERO,
        t => match go_duration(t) {
            Some(d) => d,
            None => return text(StatusCode::INTERNAL_SERVER_ERROR, format!("Session TTL '{t}' invalid: time: invalid duration {t:?}")),
        },
    };
    let min = shared.config.session_ttl_min;
    if !ttl_dur.is_zero() && (ttl_dur < min || ttl_dur > SESSION_TTL_MAX) {
        let msg = format!("Invalid Session TTL '{}', must be between [{min:?}={SESSION_TTL_MAX:?}]", ttl_dur.as_nanos());
        return text(StatusCode::INTERNAL_SERVER_ERROR, msg);
    }
    let behavior = match behavior.as_str() {
        "" | "release" => Behavior::Release,
        "delete" => Behavior::Delete,
        other => return text(StatusCode::INTERNAL_SERVER_ERROR, format!("Invalid Behavior setting '{other}'")),
    };
    if !node.is_empty() && node != NODE {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "Missing node registration");
    }
    // Health checks are accepted and kept for `info`, but never fail: only the TTL invalidates.
    let node_checks = field("NodeChecks").or_else(|| field("Checks")).cloned().unwrap_or_else(|| json!(["serfHealth"]));
    let id = uuid();
    let mut kv = shared.kv();
    let at = kv.index + 1;
    kv.index = at;
    let mut session = Session { name, ttl, lock_delay, behavior, node_checks, create: at, expires: None, ttl_dur };
    session.renew(now);
    kv.sessions.insert(id.clone(), session);
    json_resp(StatusCode::OK, &json!({"ID": id}))
}

fn put(shared: &Shared, who: &Who, key: &str, params: &HashMap<String, String>, body: Bytes) -> Resp {
    shared.stats().writes += 1;
    if key.is_empty() {
        return text(StatusCode::BAD_REQUEST, "Missing key name");
    }
    if ["cas", "acquire", "release"].iter().filter(|p| params.contains_key(**p)).count() > 1 {
        return text(StatusCode::BAD_REQUEST, "Conflicting flags: cas, acquire and release are exclusive\n");
    }
    let flags = match parse_u64(params, "flags") {
        Ok(f) => f.unwrap_or(0),
        Err(r) => return r,
    };
    let cas = match parse_u64(params, "cas") {
        Ok(c) => c,
        Err(r) => return r,
    };
    let max = shared.config.kv_max_value_size;
    if body.len() > max {
        return text(StatusCode::PAYLOAD_TOO_LARGE, format!("Request body({} bytes) too large, max size: {max} bytes", body.len()));
    }
    if !who.can_write(key) {
        return text(StatusCode::FORBIDDEN, "Permission denied");
    }
    if let Some(id) = params.get("acquire") {
        let changed = {
            let mut kv = shared.kv();
            if !kv.sessions.contains_key(id.as_str()) {
                // Consul's `kvsLockTxn` fails the Raft apply: an RPC error.
                return text(StatusCode::INTERNAL_SERVER_ERROR, format!("invalid session {id:?}"));
            }
            let at = kv.index + 1;
            match kv.acquire(key, id, body.to_vec(), flags, at, Instant::now()) {
                // Held by another session, or within a lock-delay: a 200 `false`.
                Err(()) => return json_resp(StatusCode::OK, &json!(false)),
                Ok(changed) => {
                    if changed {
                        kv.index = at;
                    }
                    changed
                }
            }
        };
        if changed {
            shared.wake();
        }
        return json_resp(StatusCode::OK, &json!(true));
    }
    if let Some(id) = params.get("release") {
        let released = {
            let mut kv = shared.kv();
            let at = kv.index + 1;
            let released = kv.release(key, id, body.to_vec(), flags, at);
            if released {
                kv.index = at;
            }
            released
        };
        if released {
            shared.wake();
        }
        return json_resp(StatusCode::OK, &json!(released));
    }
    let changed = {
        let mut kv = shared.kv();
        if let Some(cas) = cas
            && !kv.cas_ok(key, cas)
        {
            // A failed CAS is a 200 `false`, not an error status.
            return json_resp(StatusCode::OK, &json!(false));
        }
        let at = kv.index + 1;
        let changed = kv.set(key, body.to_vec(), flags, at);
        if changed {
            kv.index = at;
        }
        changed
    };
    // Identical writes neither bump the index nor wake watchers.
    if changed {
        shared.wake();
    }
    json_resp(StatusCode::OK, &json!(true))
}

fn delete(shared: &Shared, who: &Who, key: &str, params: &HashMap<String, String>) -> Resp {
    shared.stats().writes += 1;
    let recurse = params.contains_key("recurse");
    if recurse && params.contains_key("cas") {
        return text(StatusCode::BAD_REQUEST, "Conflicting flags: recurse and cas are exclusive\n");
    }
    if key.is_empty() && !recurse {
        return text(StatusCode::BAD_REQUEST, "Missing key name");
    }
    let cas = match parse_u64(params, "cas") {
        Ok(c) => c,
        Err(r) => return r,
    };
    let allowed = if recurse { who.can_write_prefix(key) } else { who.can_write(key) };
    if !allowed {
        return text(StatusCode::FORBIDDEN, "Permission denied");
    }
    let mut kv = shared.kv();
    let at = kv.index + 1;
    let (result, changed) = if recurse {
        (true, kv.delete_tree(key, at))
    } else {
        match (cas, kv.entries.get(key).map(|e| e.modify)) {
            // CAS-deleting a missing key succeeds.
            (Some(_), None) => (true, false),
            (Some(c), Some(m)) if c != m => (false, false),
            _ => (true, kv.delete(key, at)),
        }
    };
    if changed {
        kv.index = at;
    }
    drop(kv);
    if changed {
        shared.wake();
    }
    json_resp(StatusCode::OK, &json!(result))
}

#[derive(Deserialize)]
struct TxnOpWire {
    // Go decodes field names case-insensitively; the common spellings are accepted.
    #[serde(rename = "KV", alias = "kv", alias = "Kv")]
    kv: Option<KvOpWire>,
}

#[derive(Deserialize)]
struct KvOpWire {
    #[serde(rename = "Verb", alias = "verb")]
    verb: String,
    #[serde(rename = "Key", alias = "key", default)]
    key: String,
    #[serde(rename = "Value", alias = "value", default)]
    value: Option<String>,
    #[serde(rename = "Flags", alias = "flags", default)]
    flags: u64,
    #[serde(rename = "Index", alias = "index", default)]
    index: u64,
    #[serde(rename = "Session", alias = "session", default)]
    session: String,
}

fn is_write(verb: &str) -> bool {
    matches!(verb, "set" | "cas" | "lock" | "unlock" | "delete" | "delete-tree" | "delete-cas")
}

fn op_error(i: usize, what: impl Into<String>) -> Value {
    json!({"OpIndex": i, "What": what.into()})
}

/// `PUT /v1/txn`: limits first (413), then Consul's two phases: the pre-checks (key
/// present, ACLs) and, only if they all pass, the ops against a copy of the store. Each phase
/// reports every failing op; any failure rolls everything back with 409.
fn txn(shared: &Shared, who: &Who, params: &HashMap<String, String>, body: &[u8]) -> Resp {
    let limit = shared.config.txn_max_req_len.max(shared.config.kv_max_value_size);
    if body.len() > limit {
        return text(StatusCode::PAYLOAD_TOO_LARGE, format!("Request body too large, max size: {limit} bytes"));
    }
    let ops: Vec<TxnOpWire> = match serde_json::from_slice(body) {
        Ok(o) => o,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("Failed to parse body: {e}")),
    };
    if ops.len() > shared.config.txn_max_ops {
        let msg = format!("Transaction contains too many operations ({} > {})", ops.len(), shared.config.txn_max_ops);
        return text(StatusCode::PAYLOAD_TOO_LARGE, msg);
    }
    let mut decoded = Vec::with_capacity(ops.len());
    for op in ops {
        let Some(kv) = op.kv else {
            return text(StatusCode::BAD_REQUEST, "Failed to parse body: only KV operations are supported by this emulator");
        };
        let value = match kv.value.as_deref().map(|v| B64.decode(v)) {
            None => Vec::new(),
            Some(Ok(b)) => b,
            Some(Err(e)) => return text(StatusCode::BAD_REQUEST, format!("Failed to parse body: failed to decode value: {e}")),
        };
        if value.len() > shared.config.kv_max_value_size {
            let msg = format!("Value for key {:?} is too large ({} > {} bytes)", kv.key, value.len(), shared.config.kv_max_value_size);
            return text(StatusCode::PAYLOAD_TOO_LARGE, msg);
        }
        decoded.push((kv, value));
    }
    let writes = decoded.iter().any(|(op, _)| is_write(&op.verb));
    {
        let mut s = shared.stats();
        if writes {
            s.writes += 1;
        } else {
            s.reads += 1;
        }
        s.txn_ops += decoded.len() as u64;
    }
    let conflict = |errors: Vec<Value>| json_resp(StatusCode::CONFLICT, &json!({"Results": null, "Errors": errors}));

    // Phase 1, Consul's `kvsPreApply`: gets are filtered on output instead of refused.
    let mut errors = Vec::new();
    for (i, (op, _)) in decoded.iter().enumerate() {
        let key = op.key.as_str();
        if key.is_empty() && op.verb != "delete-tree" {
            errors.push(op_error(i, "Must provide key"));
            continue;
        }
        let allowed = match op.verb.as_str() {
            "delete-tree" => who.can_write_prefix(key),
            "get" | "get-tree" | "get-or-empty" => true,
            "check-index" | "check-session" => who.can_read(key),
            _ => who.can_write(key),
        };
        if !allowed {
            errors.push(op_error(i, "Permission denied"));
        }
    }
    if !errors.is_empty() {
        return conflict(errors);
    }

    // Phase 2 on a copy: all or nothing. Every write shares the txn's one index.
    let mut kv = shared.kv();
    let mut work = kv.clone();
    let at = kv.index + 1;
    let mut results = Vec::new();
    let mut changed = false;
    for (i, (op, value)) in decoded.into_iter().enumerate() {
        let key = op.key.as_str();
        match op.verb.as_str() {
            "set" => {
                changed |= work.set(key, value, op.flags, at);
                results.extend(work.entries.get(key).map(|e| Kv::entry_json(key, e, false)));
            }
            "cas" if work.cas_ok(key, op.index) => {
                changed |= work.set(key, value, op.flags, at);
                results.extend(work.entries.get(key).map(|e| Kv::entry_json(key, e, false)));
            }
            "cas" => errors.push(op_error(i, format!("failed to set key {key:?}, index is stale"))),
            "get" => match work.entries.get(key) {
                Some(e) => results.push(Kv::entry_json(key, e, true)),
                None => errors.push(op_error(i, format!("key {key:?} doesn't exist"))),
            },
            "get-or-empty" => match work.entries.get(key) {
                Some(e) => results.push(Kv::entry_json(key, e, true)),
                None => results.push(json!({"LockIndex": 0, "Key": key, "Flags": 0, "Value": null, "CreateIndex": 0, "ModifyIndex": 0})),
            },
            "get-tree" => results.extend(work.under(key).map(|(k, e)| Kv::entry_json(k, e, true))),
            "check-index" => match work.entries.get(key) {
                Some(e) if e.modify == op.index => results.push(Kv::entry_json(key, e, false)),
                Some(_) => errors.push(op_error(i, format!("current modify index for key {key:?} does not match"))),
                None => errors.push(op_error(i, format!("key {key:?} doesn't exist"))),
            },
            "check-not-exists" => {
                if work.entries.contains_key(key) {
                    errors.push(op_error(i, format!("key {key:?} exists")));
                }
            }
            "delete" => changed |= work.delete(key, at),
            "delete-tree" => changed |= work.delete_tree(key, at),
            "delete-cas" => match work.entries.get(key).map(|e| e.modify) {
                None => {}
                Some(m) if m == op.index => changed |= work.delete(key, at),
                Some(_) => errors.push(op_error(i, format!("failed to delete key {key:?}, index is stale"))),
            },
            "lock" | "unlock" => errors.push(op_error(i, "the txn lock and unlock verbs are not modelled by this emulator")),
            // An unlocked key has the session "": Consul compares the strings.
            "check-session" => match work.entries.get(key) {
                Some(e) if e.session.as_deref().unwrap_or("") == op.session => results.push(Kv::entry_json(key, e, false)),
                Some(e) => {
                    let held = e.session.as_deref().unwrap_or("");
                    errors.push(op_error(i, format!("failed session check for key {key:?}, current session {held:?} != {:?}", op.session)));
                }
                None => errors.push(op_error(i, format!("failed to check session, key {key:?} doesn't exist"))),
            },
            other => errors.push(op_error(i, format!("unknown KV verb {other:?}"))),
        }
    }
    if !errors.is_empty() {
        return conflict(errors);
    }
    if changed {
        work.index = at;
        *kv = work;
    }
    drop(kv);
    if changed {
        shared.wake();
    }
    // Results the token may not read are dropped silently (Consul's `FilterTxnResults`).
    let results: Vec<Value> = results
        .into_iter()
        .filter(|r| r["Key"].as_str().is_some_and(|k| who.can_read(k)))
        .map(|r| json!({"KV": r}))
        .collect();
    let results = if results.is_empty() { Value::Null } else { Value::Array(results) };
    let mut resp = json_resp(StatusCode::OK, &json!({"Results": results, "Errors": null}));
    if !writes {
        // Read-only txns carry the read metadata, but no index (they never block).
        let consistency = if params.contains_key("stale") { "stale" } else if params.contains_key("consistent") { "consistent" } else { "leader" };
        read_meta(&mut resp, consistency);
    }
    resp
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(go_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(go_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(go_duration("1h2m3.5s"), Some(Duration::from_millis(3_723_500)));
        assert_eq!(go_duration("0"), Some(Duration::ZERO));
        assert_eq!(go_duration("-3s"), Some(Duration::ZERO));
        for bad in ["60", "abc", "", "s", "1x", "1.2.3s", "-"] {
            assert_eq!(go_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn cleaning_keys_like_go() {
        assert_eq!(clean_key("a//b"), "a/b");
        assert_eq!(clean_key("a/./b/"), "a/b/");
        assert_eq!(clean_key("a/x/../b"), "a/b");
    }

    #[test]
    fn acl_rules_longest_prefix_and_write_prefix() {
        let who = Who::Rules {
            rules: vec![
                AclRule { prefix: "app/".into(), read: true, write: true },
                AclRule { prefix: "app/locked/".into(), read: true, write: false },
            ],
            named: true,
        };
        assert!(who.can_write("app/x"));
        assert!(!who.can_write("app/locked/x"));
        assert!(who.can_read("app/locked/x"));
        assert!(!who.can_read("other"));
        assert!(who.can_write_prefix("app/x/"));
        assert!(!who.can_write_prefix("app/"), "a denying rule under the prefix");
    }

    #[test]
    fn list_index_uses_tombstones_then_the_table_index() {
        let mut kv = Kv { index: 1, ..Default::default() };
        kv.set("p/a", b"1".to_vec(), 0, 2);
        kv.set("q", b"1".to_vec(), 0, 3);
        kv.index = 3;
        assert_eq!(kv.list_index("p/"), 2);
        kv.delete("p/a", 4);
        kv.index = 4;
        assert_eq!(kv.list_index("p/"), 4, "the tombstone counts");
        kv.tombstones.clear();
        assert_eq!(kv.list_index("p/"), 4, "nothing under the prefix: the table index");
        kv.set("p/b", b"1".to_vec(), 0, 5);
        kv.set("z", b"1".to_vec(), 0, 6);
        kv.index = 6;
        assert_eq!(kv.list_index("p/"), 5);
        assert_eq!(kv.list_index(""), 6);
    }
}

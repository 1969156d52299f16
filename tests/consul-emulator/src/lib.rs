//! Dev-only: an in-process Consul KV emulator on 127.0.0.1, for tests.
//!
//! It implements the KV and txn subset in `reference/consul-kv.md` §2 faithfully, in particular
//! what emulators usually get wrong (§4.2): one global index shared by every write, per-entry
//! Create/Modify indexes, tombstones and the list-index rule, `X-Consul-Index` on 404s,
//! blocking queries that return only when the index is strictly greater than `?index`, presence
//! flags (`?recurse=false` recurses), CAS and DELETE quirks, idempotent writes that neither bump
//! the index nor wake watchers, all-or-nothing txns reporting every failing op with 409, 413 on
//! size and op limits, key validation, and simple ACLs. Fault hooks ([`Faults`]) make the index
//! go backwards, inject 429/500/503, drop long polls, add latency and wake watchers spuriously.
//! What it deliberately leaves out is listed in `KNOWN_DEVIATIONS.md`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::watch;

/// Emulator limits and ACLs.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// `/v1/txn` operation limit (64 before Consul 1.14, 128 since).
    pub txn_max_ops: usize,
    /// `kv_max_value_size`.
    pub kv_max_value_size: usize,
    /// `txn_max_req_len`.
    pub txn_max_req_len: usize,
    /// Wait of a blocking query without `wait`.
    pub default_wait: Duration,
    /// Longest wait (longer ones are clamped).
    pub max_wait: Duration,
    /// The datacenter this agent serves (`?dc=` of another one fails).
    pub datacenter: String,
    /// ACLs (default-deny when set).
    pub acl: Option<Acl>,
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
        }
    }
}

/// Token -> key rules. A request without a token is the anonymous token (no rules).
#[derive(Debug, Clone, Default)]
pub struct Acl {
    /// Rules per token.
    pub tokens: BTreeMap<String, Vec<AclRule>>,
}

/// Access to keys starting with `prefix` (the longest matching prefix decides).
#[derive(Debug, Clone)]
pub struct AclRule {
    /// Key prefix.
    pub prefix: String,
    /// `key:read` (and list).
    pub read: bool,
    /// `key:write`.
    pub write: bool,
}

/// Request counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// KV GETs and read-only txns.
    pub reads: u64,
    /// GETs with `?index` > 0.
    pub blocking_reads: u64,
    /// KV PUTs and DELETEs and write txns.
    pub writes: u64,
    /// Operations in txns.
    pub txn_ops: u64,
    /// Answers with a 4xx or 5xx status.
    pub errors: u64,
}

#[derive(Debug, Clone)]
struct Entry {
    value: Vec<u8>,
    flags: u64,
    create: u64,
    modify: u64,
}

#[derive(Debug, Default)]
struct Kv {
    /// The global index: every write, of any key, raises it.
    index: u64,
    entries: BTreeMap<String, Entry>,
    /// Deleted key -> index of its deletion (until reaped).
    tombstones: BTreeMap<String, u64>,
}

impl Kv {
    fn entry_json(key: &str, e: &Entry, with_value: bool) -> Value {
        json!({
            "LockIndex": 0,
            "Key": key,
            "Flags": e.flags,
            "Value": if with_value && !e.value.is_empty() { Value::String(B64.encode(&e.value)) } else { Value::Null },
            "CreateIndex": e.create,
            "ModifyIndex": e.modify,
        })
    }

    /// The list index of a prefix (§2.2): max of matched ModifyIndex and tombstones under it,
    /// else the table index.
    fn list_index(&self, prefix: &str) -> u64 {
        if prefix.is_empty() {
            return self.index;
        }
        let live = self.entries.range(prefix.to_owned()..).take_while(|(k, _)| k.starts_with(prefix)).map(|(_, e)| e.modify).max();
        let dead = self.tombstones.range(prefix.to_owned()..).take_while(|(k, _)| k.starts_with(prefix)).map(|(_, i)| *i).max();
        match live.max(dead) {
            Some(l) if l > 0 => l,
            _ => self.index,
        }
    }

    /// Sets a key; returns whether anything changed (identical writes change nothing).
    fn set(&mut self, key: &str, value: Vec<u8>, flags: u64, at: u64) -> bool {
        match self.entries.get_mut(key) {
            Some(e) if e.value == value && e.flags == flags => false,
            Some(e) => {
                e.value = value;
                e.flags = flags;
                e.modify = at;
                true
            }
            None => {
                self.entries.insert(key.to_owned(), Entry { value, flags, create: at, modify: at });
                true
            }
        }
    }

    fn delete(&mut self, key: &str, at: u64) -> bool {
        if self.entries.remove(key).is_some() {
            self.tombstones.insert(key.to_owned(), at);
            true
        } else {
            false
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
    /// Bumped on every change: wakes blocked queries.
    changed: watch::Sender<u64>,
    /// Bumped to wake blocked queries with no change.
    spurious: watch::Sender<u64>,
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
}

/// A running emulator; dropping it stops the server.
#[derive(Debug)]
pub struct Emulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Fault injection handle (cloneable).
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

    /// A snapshot restore: the global index drops to half, entries' indexes with it, tombstones
    /// are gone, and blocked queries wake.
    pub fn index_backwards(&self) {
        {
            let mut kv = self.shared.kv();
            let new = (kv.index / 2).max(1);
            kv.index = new;
            for e in kv.entries.values_mut() {
                e.modify = e.modify.min(new);
                e.create = e.create.min(e.modify);
            }
            kv.tombstones.clear();
        }
        self.shared.wake();
    }

    /// Reaps every tombstone now (list indexes may fall).
    pub fn reap_tombstones(&self) {
        self.shared.kv().tombstones.clear();
    }

    /// The next `count` blocking GETs lose their connection without an answer.
    pub fn drop_long_polls(&self, count: usize) {
        self.shared.faults.drop_polls.store(count, Ordering::SeqCst);
    }

    /// Wakes every blocked query now, with unchanged data.
    pub fn spurious_wakeup(&self) {
        self.shared.spurious.send_modify(|g| *g += 1);
    }

    /// Sends `X-Consul-Index: 0` (a Consul bug clients must survive).
    pub fn zero_index(&self, on: bool) {
        self.shared.faults.zero_index.store(on, Ordering::SeqCst);
    }

    /// Delays every answer.
    pub fn latency(&self, d: Duration) {
        self.shared.faults.latency_ms.store(d.as_millis() as u64, Ordering::SeqCst);
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

    /// Starts an emulator listening on `listen`.
    ///
    /// # Panics
    /// When the address cannot be bound (a test set-up failure).
    pub fn start_on(listen: &str, config: EmulatorConfig) -> Emulator {
        let listener = std::net::TcpListener::bind(listen).expect("bind the Consul emulator");
        listener.set_nonblocking(true).expect("non-blocking listener");
        let addr = listener.local_addr().expect("listener address");
        let shared = Arc::new(Shared {
            config,
            kv: Mutex::new(Kv { index: 1, ..Default::default() }),
            changed: watch::channel(0).0,
            spurious: watch::channel(0).0,
            faults: FaultState::default(),
            stats: Mutex::new(Stats::default()),
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = shared.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                let mut stopped = stopped;
                loop {
                    tokio::select! {
                        _ = &mut stopped => break,
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { continue };
                            let shared = server.clone();
                            tokio::spawn(async move {
                                let service = hyper::service::service_fn(move |req| {
                                    let shared = shared.clone();
                                    async move { handle(shared, req).await }
                                });
                                let io = hyper_util::rt::TokioIo::new(stream);
                                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                            });
                        }
                    }
                }
            });
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

    /// A key's value, read directly (no HTTP, no counters).
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.shared.kv().entries.get(key).map(|e| e.value.clone())
    }

    /// Keys under a prefix, read directly.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        self.shared.kv().entries.keys().filter(|k| k.starts_with(prefix)).cloned().collect()
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

/// Turning a dropped long poll into a closed connection: the service fails.
#[derive(Debug)]
struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by fault injection")
    }
}

impl std::error::Error for DropConnection {}

fn text(status: StatusCode, body: impl Into<String>) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body.into())));
    *r.status_mut() = status;
    r.headers_mut().insert("Content-Type", hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

fn json_resp(status: StatusCode, body: &Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert("Content-Type", hyper::header::HeaderValue::from_static("application/json"));
    r
}

fn with_index(mut r: Resp, index: u64, zero: bool) -> Resp {
    let idx = if zero { 0 } else { index };
    let h = r.headers_mut();
    h.insert("X-Consul-Index", idx.into());
    h.insert("X-Consul-KnownLeader", hyper::header::HeaderValue::from_static("true"));
    h.insert("X-Consul-LastContact", hyper::header::HeaderValue::from_static("0"));
    r
}

/// Parses a Go duration (`10s`, `1m30s`, `500ms`, `1.5s`); a bare number has no unit and fails.
fn go_duration(s: &str) -> Option<Duration> {
    if s.is_empty() {
        return None;
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += n * scale;
    }
    Some(Duration::from_secs_f64(total))
}

/// Who is asking, under ACLs.
enum Who {
    /// ACLs off.
    Anyone,
    /// A known token's rules (empty for anonymous).
    Rules(Vec<AclRule>),
}

impl Who {
    fn rule(&self, key: &str) -> (bool, bool) {
        match self {
            Who::Anyone => (true, true),
            Who::Rules(rules) => rules
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
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Resp, DropConnection> {
    let latency = shared.faults.latency_ms.load(Ordering::SeqCst);
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let resp = route(&shared, req).await?;
    if resp.status().is_client_error() || resp.status().is_server_error() {
        shared.stats().errors += 1;
    }
    Ok(resp)
}

async fn route(shared: &Arc<Shared>, req: Request<Incoming>) -> Result<Resp, DropConnection> {
    // Injected failures come first, as from an overloaded server.
    if shared
        .faults
        .fail_count
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        let status = shared.faults.fail_status.load(Ordering::SeqCst) as u16;
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
    let query: Vec<(String, String)> = req
        .uri()
        .query()
        .map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let params: HashMap<String, String> = query.iter().cloned().collect();
    let has = |name: &str| params.contains_key(name);

    let token = req
        .headers()
        .get("X-Consul-Token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| params.get("token").cloned())
        .or_else(|| {
            req.headers()
                .get("Authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::to_owned)
        });
    let who = match &shared.config.acl {
        None => Who::Anyone,
        Some(acl) => match token.as_deref() {
            None | Some("") => Who::Rules(Vec::new()),
            Some(t) => match acl.tokens.get(t) {
                Some(rules) => Who::Rules(rules.clone()),
                None => return Ok(text(StatusCode::FORBIDDEN, "ACL not found")),
            },
        },
    };
    if let Some(dc) = params.get("dc")
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

    if raw_path == "/v1/txn" {
        if method != Method::PUT {
            return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"));
        }
        return Ok(txn(shared, &who, &body));
    }
    let Some(encoded_key) = raw_path.strip_prefix("/v1/kv/").or(if raw_path == "/v1/kv" { Some("") } else { None }) else {
        return Ok(text(StatusCode::NOT_FOUND, "404 page not found"));
    };
    let key = percent_encoding::percent_decode_str(encoded_key).decode_utf8_lossy().into_owned();
    // Key checks of current servers (§2.1): Go's mux cleans `//`, `/./` and `/../` with a
    // redirect; traversal, surrounding spaces and line feeds are refused.
    if key.contains("//") || key.split('/').any(|s| s == ".") {
        let cleaned: Vec<&str> = key.split('/').filter(|s| !s.is_empty() && *s != ".").collect();
        let mut r = text(StatusCode::MOVED_PERMANENTLY, "");
        if let Ok(v) = hyper::header::HeaderValue::from_str(&format!("/v1/kv/{}", cleaned.join("/"))) {
            r.headers_mut().insert("Location", v);
        }
        return Ok(r);
    }
    if key.starts_with('/') || key.split('/').any(|s| s == "..") || key.contains('\n') || key.trim() != key {
        return Ok(text(StatusCode::BAD_REQUEST, "invalid key name"));
    }
    match method {
        Method::GET => get(shared, &who, &key, &params).await,
        Method::PUT => Ok(put(shared, &who, &key, &params, body)),
        Method::DELETE => Ok(delete(shared, &who, &key, &params)),
        _ => Ok(text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")),
    }
}

/// Evaluates a read: status, body and index.
fn read(shared: &Shared, who: &Who, key: &str, params: &HashMap<String, String>) -> Resp {
    let kv = shared.kv();
    let zero = shared.faults.zero_index.load(Ordering::SeqCst);
    let has = |n: &str| params.contains_key(n);
    if has("keys") {
        let sep = params.get("separator").or_else(|| params.get("seperator")).filter(|s| !s.is_empty());
        let matched: Vec<(&String, &Entry)> =
            kv.entries.range(key.to_owned()..).take_while(|(k, _)| k.starts_with(key)).collect();
        let index = kv.list_index(key);
        let visible: Vec<&String> = matched.iter().filter(|(k, _)| who.can_read(k)).map(|(k, _)| *k).collect();
        let mut out: Vec<String> = Vec::new();
        for k in &visible {
            let shown = match sep {
                Some(sep) => match k[key.len()..].find(sep.as_str()) {
                    Some(i) => k[..key.len() + i + sep.len()].to_owned(),
                    None => (*k).clone(),
                },
                None => (*k).clone(),
            };
            if out.last() != Some(&shown) {
                out.push(shown);
            }
        }
        if out.is_empty() && !key.is_empty() {
            return with_index(text(StatusCode::NOT_FOUND, ""), index, zero);
        }
        return with_index(json_resp(StatusCode::OK, &json!(out)), index, zero);
    }
    if has("recurse") {
        let index = kv.list_index(key);
        let out: Vec<Value> = kv
            .entries
            .range(key.to_owned()..)
            .take_while(|(k, _)| k.starts_with(key))
            .filter(|(k, _)| who.can_read(k))
            .map(|(k, e)| Kv::entry_json(k, e, true))
            .collect();
        if out.is_empty() {
            return with_index(text(StatusCode::NOT_FOUND, ""), index, zero);
        }
        return with_index(json_resp(StatusCode::OK, &Value::Array(out)), index, zero);
    }
    if key.is_empty() {
        return text(StatusCode::BAD_REQUEST, "Missing key name");
    }
    if !who.can_read(key) {
        return text(StatusCode::FORBIDDEN, "Permission denied: token lacks key:read");
    }
    match kv.entries.get(key) {
        None => with_index(text(StatusCode::NOT_FOUND, ""), kv.index, zero),
        Some(e) if has("raw") => {
            let mut r = Response::new(Full::new(Bytes::from(e.value.clone())));
            r.headers_mut().insert("Content-Type", hyper::header::HeaderValue::from_static("text/plain"));
            r.headers_mut().insert("X-Content-Type-Options", hyper::header::HeaderValue::from_static("nosniff"));
            r.headers_mut().insert("Content-Security-Policy", hyper::header::HeaderValue::from_static("sandbox"));
            with_index(r, e.modify, zero)
        }
        Some(e) => with_index(json_resp(StatusCode::OK, &json!([Kv::entry_json(key, e, true)])), e.modify, zero),
    }
}

fn index_of(r: &Resp) -> u64 {
    r.headers()
        .get("X-Consul-Index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn get(shared: &Arc<Shared>, who: &Who, key: &str, params: &HashMap<String, String>) -> Result<Resp, DropConnection> {
    let index: u64 = match params.get("index") {
        None => 0,
        Some(s) => match s.parse() {
            Ok(n) => n,
            Err(_) => return Ok(text(StatusCode::BAD_REQUEST, "Invalid index")),
        },
    };
    let wait = match params.get("wait") {
        None => shared.config.default_wait,
        Some(w) => match go_duration(w) {
            Some(d) => d.min(shared.config.max_wait),
            None => return Ok(text(StatusCode::BAD_REQUEST, "Invalid wait time")),
        },
    };
    shared.stats().reads += 1;
    if index == 0 {
        return Ok(read(shared, who, key, params));
    }
    shared.stats().blocking_reads += 1;
    if shared
        .faults
        .drop_polls
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
        return Err(DropConnection);
    }
    let jitter = wait.mul_f64(fastrand::f64() / 16.0);
    let deadline = tokio::time::Instant::now() + wait + jitter;
    let mut changed = shared.changed.subscribe();
    let mut spurious = shared.spurious.subscribe();
    loop {
        changed.borrow_and_update();
        let r = read(shared, who, key, params);
        // Strictly greater: an equal index means "no change yet".
        if index_of(&r) > index || !matches!(r.status(), StatusCode::OK | StatusCode::NOT_FOUND) {
            return Ok(r);
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return Ok(read(shared, who, key, params)),
            _ = changed.changed() => {}
            _ = spurious.changed() => return Ok(read(shared, who, key, params)),
        }
    }
}

// The error is the ready answer; its size does not matter on this dev-only path.
#[allow(clippy::result_large_err)]
fn parse_u64(params: &HashMap<String, String>, name: &str) -> Result<Option<u64>, Resp> {
    match params.get(name) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| text(StatusCode::INTERNAL_SERVER_ERROR, format!("invalid {name}: {v}"))),
    }
}

fn put(shared: &Shared, who: &Who, key: &str, params: &HashMap<String, String>, body: Bytes) -> Resp {
    shared.stats().writes += 1;
    if key.is_empty() {
        return text(StatusCode::BAD_REQUEST, "Missing key name");
    }
    let locks = ["cas", "acquire", "release"].iter().filter(|p| params.contains_key(**p)).count();
    if locks > 1 {
        return text(StatusCode::BAD_REQUEST, "Conflicting flags: cas, acquire and release are exclusive");
    }
    let flags = match parse_u64(params, "flags") {
        Ok(f) => f.unwrap_or(0),
        Err(r) => return r,
    };
    let cas = match parse_u64(params, "cas") {
        Ok(c) => c,
        Err(r) => return r,
    };
    if body.len() > shared.config.kv_max_value_size {
        return text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Request body({} bytes) too large, max size: {} bytes", body.len(), shared.config.kv_max_value_size),
        );
    }
    if !who.can_write(key) {
        return text(StatusCode::FORBIDDEN, "Permission denied: token lacks key:write");
    }
    let changed = {
        let mut kv = shared.kv();
        if let Some(cas) = cas {
            let ok = match kv.entries.get(key) {
                None => cas == 0,
                Some(e) => cas != 0 && e.modify == cas,
            };
            if !ok {
                return json_resp(StatusCode::OK, &json!(false));
            }
        }
        let at = kv.index + 1;
        let changed = kv.set(key, body.to_vec(), flags, at);
        if changed {
            kv.index = at;
        }
        changed
    };
    if changed {
        shared.wake();
    }
    json_resp(StatusCode::OK, &json!(true))
}

fn delete(shared: &Shared, who: &Who, key: &str, params: &HashMap<String, String>) -> Resp {
    shared.stats().writes += 1;
    let recurse = params.contains_key("recurse");
    if recurse && params.contains_key("cas") {
        return text(StatusCode::BAD_REQUEST, "Conflicting flags: cas cannot be used with recurse");
    }
    if key.is_empty() && !recurse {
        return text(StatusCode::BAD_REQUEST, "Missing key name");
    }
    let cas = match parse_u64(params, "cas") {
        Ok(c) => c,
        Err(r) => return r,
    };
    let mut kv = shared.kv();
    let at = kv.index + 1;
    let result;
    let mut changed = false;
    if recurse {
        let doomed: Vec<String> = kv.entries.range(key.to_owned()..).take_while(|(k, _)| k.starts_with(key)).map(|(k, _)| k.clone()).collect();
        if doomed.iter().any(|k| !who.can_write(k)) {
            return text(StatusCode::FORBIDDEN, "Permission denied: token lacks key:write");
        }
        for k in &doomed {
            changed |= kv.delete(k, at);
        }
        result = true;
    } else {
        if !who.can_write(key) {
            return text(StatusCode::FORBIDDEN, "Permission denied: token lacks key:write");
        }
        match (cas, kv.entries.get(key).map(|e| e.modify)) {
            (Some(_), None) => result = true,
            (Some(c), Some(m)) if c != m => result = false,
            _ => {
                changed = kv.delete(key, at);
                result = true;
            }
        }
    }
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
}

fn txn(shared: &Shared, who: &Who, body: &[u8]) -> Resp {
    let limit = shared.config.txn_max_req_len.max(shared.config.kv_max_value_size);
    if body.len() > limit {
        return text(StatusCode::PAYLOAD_TOO_LARGE, format!("Request body({} bytes) too large, max size: {limit} bytes", body.len()));
    }
    let ops: Vec<TxnOpWire> = match serde_json::from_slice(body) {
        Ok(o) => o,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("Failed to parse body: {e}")),
    };
    if ops.len() > shared.config.txn_max_ops {
        return text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Transaction contains too many operations ({} > {})", ops.len(), shared.config.txn_max_ops),
        );
    }
    let mut decoded = Vec::with_capacity(ops.len());
    for op in &ops {
        let Some(kv) = &op.kv else {
            return text(StatusCode::BAD_REQUEST, "Failed to parse body: only KV operations are supported by this emulator");
        };
        let value = match &kv.value {
            None => Vec::new(),
            Some(v) => match B64.decode(v.as_bytes()) {
                Ok(b) => b,
                Err(e) => return text(StatusCode::BAD_REQUEST, format!("Failed to parse body: {e}")),
            },
        };
        if value.len() > shared.config.kv_max_value_size {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("Value for key {:?} is too large ({} > {} bytes)", kv.key, value.len(), shared.config.kv_max_value_size),
            );
        }
        decoded.push((kv, value));
    }
    let writes = decoded.iter().any(|(kv, _)| matches!(kv.verb.as_str(), "set" | "cas" | "delete" | "delete-tree" | "delete-cas" | "lock" | "unlock"));
    {
        let mut s = shared.stats();
        if writes {
            s.writes += 1;
        } else {
            s.reads += 1;
        }
        s.txn_ops += decoded.len() as u64;
    }
    let mut kv = shared.kv();
    // Work on a copy: all or nothing.
    let mut work = Kv {
        index: kv.index,
        entries: kv.entries.clone(),
        tombstones: kv.tombstones.clone(),
    };
    let at = kv.index + 1;
    let mut results = Vec::new();
    let mut errors = Vec::new();
    let mut changed = false;
    for (i, (op, value)) in decoded.into_iter().enumerate() {
        let key = op.key.as_str();
        let write_verb = matches!(op.verb.as_str(), "set" | "cas" | "delete" | "delete-tree" | "delete-cas");
        let allowed = if write_verb { who.can_write(key) } else { who.can_read(key) };
        if !allowed && op.verb != "get-tree" {
            errors.push(json!({"OpIndex": i, "What": format!("Permission denied: key {key:?}")}));
            continue;
        }
        match op.verb.as_str() {
            "set" => {
                changed |= work.set(key, value, op.flags, at);
                results.push(Kv::entry_json(key, &work.entries[key], false));
            }
            "cas" => {
                let ok = match work.entries.get(key) {
                    None => op.index == 0,
                    Some(e) => op.index != 0 && e.modify == op.index,
                };
                if ok {
                    changed |= work.set(key, value, op.flags, at);
                    results.push(Kv::entry_json(key, &work.entries[key], false));
                } else {
                    errors.push(json!({"OpIndex": i, "What": format!("failed to set key {key:?}, index is stale")}));
                }
            }
            "get" => match work.entries.get(key) {
                Some(e) => results.push(Kv::entry_json(key, e, true)),
                None => errors.push(json!({"OpIndex": i, "What": format!("key {key:?} doesn't exist")})),
            },
            "get-or-empty" => match work.entries.get(key) {
                Some(e) => results.push(Kv::entry_json(key, e, true)),
                None => results.push(json!({"LockIndex": 0, "Key": key, "Flags": 0, "Value": null, "CreateIndex": 0, "ModifyIndex": 0})),
            },
            "get-tree" => {
                for (k, e) in work.entries.range(key.to_owned()..).take_while(|(k, _)| k.starts_with(key)) {
                    if who.can_read(k) {
                        results.push(Kv::entry_json(k, e, true));
                    }
                }
            }
            "check-index" => match work.entries.get(key) {
                Some(e) if e.modify == op.index => results.push(Kv::entry_json(key, e, false)),
                Some(_) => errors.push(json!({"OpIndex": i, "What": format!("current modify index {key:?} does not match")})),
                None => errors.push(json!({"OpIndex": i, "What": format!("key {key:?} doesn't exist")})),
            },
            "check-not-exists" => {
                if work.entries.contains_key(key) {
                    errors.push(json!({"OpIndex": i, "What": format!("key {key:?} exists")}));
                }
            }
            "delete" => changed |= work.delete(key, at),
            "delete-tree" => {
                let doomed: Vec<String> = work.entries.range(key.to_owned()..).take_while(|(k, _)| k.starts_with(key)).map(|(k, _)| k.clone()).collect();
                for k in doomed {
                    changed |= work.delete(&k, at);
                }
            }
            "delete-cas" => match work.entries.get(key).map(|e| e.modify) {
                None => {}
                Some(m) if m == op.index => changed |= work.delete(key, at),
                Some(_) => errors.push(json!({"OpIndex": i, "What": format!("failed to delete key {key:?}, index is stale")})),
            },
            other => errors.push(json!({"OpIndex": i, "What": format!("unknown KV verb {other:?}")})),
        }
    }
    if !errors.is_empty() {
        return json_resp(StatusCode::CONFLICT, &json!({"Results": null, "Errors": errors}));
    }
    if changed {
        work.index = at;
    }
    *kv = work;
    drop(kv);
    if changed {
        shared.wake();
    }
    let results: Vec<Value> = results.into_iter().map(|r| json!({"KV": r})).collect();
    json_resp(StatusCode::OK, &json!({"Results": results, "Errors": null}))
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
        assert_eq!(go_duration("60"), None);
        assert_eq!(go_duration("abc"), None);
    }
}

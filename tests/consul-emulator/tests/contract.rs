//! The Consul KV contract suite, written from Consul's documented KV, txn and blocking-query
//! behaviour (each test's comment names the part of the API it pins), over raw HTTP.
//!
//! It always runs against the in-process emulator, and also against a real Consul when
//! `CONSUL_HTTP_ADDR` is set (with `CONSUL_HTTP_TOKEN` if present), under a random
//! `vsync-contract/<n>/` prefix that is deleted afterwards (trailing-slash recursive delete),
//! even when a test fails. Assertions are relations (index after > index before), bounded
//! timings, and version-tolerant where Consul versions differ. The ACL test needs a management
//! token on a real Consul and is skipped without one. The session tests need `session:write`
//! and use the server's real TTL limits (10 s minimum), so they take about half a minute there;
//! the emulator target is configured with a 1 s minimum.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use vsync_consul_emulator::{Acl, AclRule, Emulator, EmulatorConfig};

/// One target of the suite.
struct Target {
    name: String,
    base: String,
    token: Option<String>,
    prefix: String,
    real: bool,
    /// The shortest session TTL the target accepts: Consul's `session_ttl_min` (10 s), or what
    /// the emulator was configured with so the session tests stay fast.
    ttl_min: Duration,
    /// Sessions the test created, destroyed by the cleanup.
    sessions: std::sync::Mutex<Vec<String>>,
    http: reqwest::Client,
    _emulator: Option<Emulator>,
}

#[derive(Debug)]
struct Answer {
    status: u16,
    index: Option<u64>,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The first entry of a single-key read.
    fn entry(&self) -> Value {
        assert_eq!(self.status, 200, "expected an entry: {self:?}");
        self.json()[0].clone()
    }
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a u64: {v}"))
}

impl Target {
    fn key(&self, k: &str) -> String {
        format!("{}{k}", self.prefix)
    }

    async fn call_as(&self, token: Option<&str>, method: &str, path: &str, query: &str, body: Option<Vec<u8>>) -> Answer {
        let url = if query.is_empty() { format!("{}{path}", self.base) } else { format!("{}{path}?{query}", self.base) };
        let mut req = self
            .http
            .request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), url)
            .timeout(Duration::from_secs(30));
        if let Some(t) = token {
            req = req.header("X-Consul-Token", t);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let index = resp.headers().get("X-Consul-Index").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        let headers = resp.headers().clone();
        let body = resp.bytes().await.unwrap().to_vec();
        Answer { status, index, headers, body }
    }

    async fn call(&self, method: &str, path: &str, query: &str, body: Option<Vec<u8>>) -> Answer {
        self.call_as(self.token.as_deref(), method, path, query, body).await
    }

    async fn kv(&self, method: &str, key: &str, query: &str, body: Option<&[u8]>) -> Answer {
        self.call(method, &format!("/v1/kv/{}", self.key(key)), query, body.map(<[u8]>::to_vec)).await
    }

    async fn put(&self, key: &str, value: &[u8]) {
        let a = self.kv("PUT", key, "", Some(value)).await;
        assert_eq!((a.status, a.json()), (200, json!(true)), "PUT {key}");
    }

    async fn txn(&self, ops: Value) -> Answer {
        self.call("PUT", "/v1/txn", "", Some(ops.to_string().into_bytes())).await
    }

    /// Sends a request line as is (URL libraries clean `..` and `//` before sending).
    fn raw(&self, method: &str, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let host = self.base.trim_start_matches("http://").trim_end_matches('/');
        let mut s = std::net::TcpStream::connect(host).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let token = self.token.as_ref().map(|t| format!("X-Consul-Token: {t}\r\n")).unwrap_or_default();
        write!(s, "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{token}Content-Length: 1\r\nConnection: close\r\n\r\nx").unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        (out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0), out)
    }

    /// Blocks on `key` from `index` until `done`, re-polling after spurious wake-ups (which
    /// Consul allows), for at most `limit`. Returns the last answer and the time taken.
    async fn block_until(&self, key: &str, extra: &str, index: u64, limit: Duration, done: impl Fn(&Answer) -> bool) -> (Answer, Duration) {
        let started = Instant::now();
        let mut index = index;
        loop {
            let a = self.kv("GET", key, &format!("{extra}index={index}&wait=5s"), None).await;
            if done(&a) || started.elapsed() > limit {
                return (a, started.elapsed());
            }
            index = a.index.unwrap_or(index).max(1);
        }
    }

    /// Creates a session from `body` (a JSON object); the raw answer.
    async fn create_session(&self, body: Value) -> Answer {
        let a = self.call("PUT", "/v1/session/create", "", Some(body.to_string().into_bytes())).await;
        if let Some(id) = a.json()["ID"].as_str() {
            self.sessions.lock().unwrap().push(id.to_owned());
        }
        a
    }

    /// Creates a session without health checks (only its TTL invalidates it); its ID. Tests
    /// that need a session to outlive them use `ttl_min * 10`.
    async fn session(&self, ttl: Duration, lock_delay: &str, behavior: &str) -> String {
        let body = json!({"Name": "vsync-contract", "TTL": go(ttl), "LockDelay": lock_delay, "Behavior": behavior, "NodeChecks": []});
        let a = self.create_session(body).await;
        assert_eq!(a.status, 200, "create a session: {a:?}");
        let id = a.json()["ID"].as_str().unwrap_or_default().to_owned();
        assert!(!id.is_empty(), "a session ID: {}", a.json());
        id
    }

    /// `GET /v1/session/info/<id>`: the session, or `None` when it is gone.
    async fn session_info(&self, id: &str) -> Option<Value> {
        let a = self.call("GET", &format!("/v1/session/info/{id}"), "", None).await;
        assert_eq!(a.status, 200, "session info answers 200 (an empty list when gone): {a:?}");
        let list = a.json().as_array().cloned().unwrap_or_else(|| panic!("a JSON list: {a:?}"));
        assert!(list.len() <= 1);
        list.into_iter().next()
    }

    async fn acquire(&self, key: &str, session: &str, value: &[u8]) -> Answer {
        self.kv("PUT", key, &format!("acquire={session}"), Some(value)).await
    }

    async fn release(&self, key: &str, session: &str, value: &[u8]) -> Answer {
        self.kv("PUT", key, &format!("release={session}"), Some(value)).await
    }

    async fn cleanup(&self) {
        let sessions = std::mem::take(&mut *self.sessions.lock().unwrap());
        for id in sessions {
            self.call("PUT", &format!("/v1/session/destroy/{id}"), "", None).await;
        }
        // Trailing slash: only this run's keys.
        assert!(self.prefix.ends_with('/'));
        self.call("DELETE", &format!("/v1/kv/{}", self.prefix), "recurse", None).await;
    }
}

fn b64(v: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(v)
}

fn client() -> reqwest::Client {
    // Redirects are answers to check, not to follow (never follow them on PUT or DELETE).
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

fn real_consul() -> Option<String> {
    let addr = std::env::var("CONSUL_HTTP_ADDR").ok().filter(|a| !a.is_empty())?;
    Some(if addr.contains("://") { addr } else { format!("http://{addr}") })
}

/// A Go duration in milliseconds (`1500ms`), as Consul parses it.
fn go(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// The emulator targets' `session_ttl_min`: short, so the TTL tests take seconds, not minutes.
const EMULATOR_TTL_MIN: Duration = Duration::from_secs(1);

/// Consul's default `session_ttl_min` (a real server is tested with its real limits).
const CONSUL_TTL_MIN: Duration = Duration::from_secs(10);

fn emulator_target(emu: Emulator, token: Option<String>, ttl_min: Duration) -> Target {
    Target {
        name: "emulator".into(),
        base: emu.url(),
        token,
        prefix: format!("vsync-contract/{}/", fastrand::u64(..)),
        real: false,
        ttl_min,
        sessions: Default::default(),
        http: client(),
        _emulator: Some(emu),
    }
}

fn targets() -> Vec<Target> {
    let emu = Emulator::start_with(EmulatorConfig { session_ttl_min: EMULATOR_TTL_MIN, ..Default::default() });
    let mut out = vec![emulator_target(emu, None, EMULATOR_TTL_MIN)];
    match real_consul() {
        Some(base) => {
            println!("Consul contract: emulator and real Consul at {base}");
            out.push(Target {
                name: format!("consul {base}"),
                base,
                token: std::env::var("CONSUL_HTTP_TOKEN").ok().filter(|t| !t.is_empty()),
                prefix: format!("vsync-contract/{}/", fastrand::u64(..)),
                real: true,
                ttl_min: CONSUL_TTL_MIN,
                sessions: Default::default(),
                http: client(),
                _emulator: None,
            });
        }
        None => println!("Consul contract: emulator only (no CONSUL_HTTP_ADDR); real-Consul conformance unverified"),
    }
    out
}

/// Runs the body against every target; the prefix is deleted even when the body panics.
macro_rules! contract {
    ($name:ident, |$t:ident| $body:block) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            for target in targets() {
                println!("{}: {}", stringify!($name), target.name);
                let target = Arc::new(target);
                let $t = target.clone();
                let outcome = tokio::spawn(async move { $body }).await;
                target.cleanup().await;
                if let Err(e) = outcome {
                    std::panic::resume_unwind(e.into_panic());
                }
            }
        }
    };
}

// Lists (single mode), reads (headers): a missing key is a 404 with an empty body that
// still carries an index >= 1, and the read metadata headers.
contract!(missing_key_is_404_with_index, |t| {
    let a = t.kv("GET", "nope", "", None).await;
    assert_eq!(a.status, 404);
    assert!(a.body.is_empty(), "404 body is empty");
    assert!(a.index.is_some_and(|i| i >= 1), "404 carries X-Consul-Index >= 1: {:?}", a.index);
    assert!(matches!(a.header("X-Consul-KnownLeader"), Some("true" | "false")));
    assert!(a.header("X-Consul-LastContact").is_some_and(|v| v.parse::<u64>().is_ok()));
    let missing_list = t.kv("GET", "nope/", "recurse", None).await;
    assert_eq!(missing_list.status, 404);
    assert!(missing_list.index.is_some_and(|i| i >= 1));
});

// Writes (index bookkeeping), lists (single index = ModifyIndex): one global index;
// CreateIndex kept across updates and renewed after delete and re-create; PUT has no index.
contract!(global_index_and_create_index, |t| {
    t.put("a", b"1").await;
    let first = t.kv("GET", "a", "", None).await;
    let e1 = first.entry();
    assert_eq!(first.index, Some(u(&e1["ModifyIndex"])), "single read's index is the ModifyIndex");
    assert_eq!(e1["CreateIndex"], e1["ModifyIndex"]);
    assert_eq!(e1["LockIndex"], json!(0));
    assert_eq!(e1["Flags"], json!(0));
    let put = t.kv("PUT", "other", "", Some(b"x")).await;
    assert!(put.index.is_none(), "PUT answers no X-Consul-Index");
    assert_eq!(put.header("Content-Type"), Some("application/json"));
    let other = t.kv("GET", "other", "", None).await.entry();
    assert!(u(&other["ModifyIndex"]) > u(&e1["ModifyIndex"]), "indexes are global, not per key");
    t.put("a", b"2").await;
    let e2 = t.kv("GET", "a", "", None).await.entry();
    assert_eq!(e2["CreateIndex"], e1["CreateIndex"], "CreateIndex kept across updates");
    assert!(u(&e2["ModifyIndex"]) > u(&other["ModifyIndex"]));
    t.kv("DELETE", "a", "", None).await;
    t.put("a", b"3").await;
    let e3 = t.kv("GET", "a", "", None).await.entry();
    assert!(u(&e3["CreateIndex"]) > u(&e2["ModifyIndex"]), "a re-created key has a new CreateIndex");
});

// Reads (values), lists (raw): standard padded base64 (not URL-safe), empty value is
// null, binary values survive, raw mode answers the bytes with the documented headers.
contract!(values_base64_null_and_binary, |t| {
    let bin = [0u8, 255, 254, 10, 0xfb, 0xff];
    t.put("bin", &bin).await;
    t.put("one", b"x").await;
    t.put("empty", b"").await;
    assert_eq!(t.kv("GET", "bin", "", None).await.entry()["Value"], json!("AP/+Cvv/"), "standard alphabet");
    assert_eq!(t.kv("GET", "one", "", None).await.entry()["Value"], json!("eA=="), "padded");
    assert_eq!(t.kv("GET", "empty", "", None).await.entry()["Value"], Value::Null, "empty value is null");
    let raw = t.kv("GET", "bin", "raw", None).await;
    assert_eq!(raw.status, 200);
    assert_eq!(raw.body, bin.to_vec());
    assert_eq!(raw.header("Content-Type"), Some("text/plain"));
    assert_eq!(raw.header("X-Content-Type-Options"), Some("nosniff"));
    assert_eq!(raw.header("Content-Security-Policy"), Some("sandbox"));
    assert!(raw.index.is_some());
    assert_eq!(t.kv("GET", "nothing", "raw", None).await.status, 404);
    // Flags are u64, beyond 2^53 too.
    let big = u64::MAX - 1;
    assert_eq!(t.kv("PUT", "flagged", &format!("flags={big}"), Some(b"v")).await.json(), json!(true));
    assert_eq!(t.kv("GET", "flagged", "", None).await.entry()["Flags"], json!(big));
});

// Reads (presence flags): `recurse=false`, `keys=false` and `raw=false` all switch the
// mode on; `keys` takes precedence over `recurse` and `raw` is ignored on lists.
contract!(presence_flags, |t| {
    t.put("p/a", b"1").await;
    t.put("p/b", b"2").await;
    let a = t.kv("GET", "p/", "recurse=false", None).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json().as_array().map(Vec::len), Some(2), "recurse=false recursed");
    let keys = t.kv("GET", "p/", "keys=false", None).await.json();
    assert_eq!(keys, json!([t.key("p/a"), t.key("p/b")]), "keys=false listed keys");
    assert_eq!(t.kv("GET", "p/a", "raw=false", None).await.body, b"1".to_vec(), "raw=false is raw");
    let both = t.kv("GET", "p/", "keys&recurse", None).await.json();
    assert_eq!(both, json!([t.key("p/a"), t.key("p/b")]), "keys wins over recurse");
    let list_raw = t.kv("GET", "p/", "recurse&raw", None).await.json();
    assert_eq!(list_raw[1]["Value"], json!(b64(b"2")), "raw ignored on a list");
});

// Lists (keys, keys + separator): sorted (byte order), greedy prefixes, separator
// kept, duplicates removed, the misspelt `seperator`, 404 for an empty non-root prefix, 200 for
// the root.
contract!(keys_and_separator, |t| {
    for k in ["web/foo", "web/bar", "web/sub/x", "web/sub/y", "webz", "web/Z", "web/sub-a"] {
        t.put(k, b"v").await;
    }
    let want = |ks: &[&str]| json!(ks.iter().map(|k| t.key(k)).collect::<Vec<_>>());
    let keys = t.kv("GET", "web/", "keys&separator=/", None).await.json();
    assert_eq!(keys, want(&["web/Z", "web/bar", "web/foo", "web/sub-a", "web/sub/"]));
    let misspelt = t.kv("GET", "web/", "keys&seperator=/", None).await.json();
    assert_eq!(misspelt, keys, "`seperator` is accepted");
    let all = t.kv("GET", "web", "keys", None).await.json();
    assert_eq!(all, want(&["web/Z", "web/bar", "web/foo", "web/sub-a", "web/sub/x", "web/sub/y", "webz"]), "greedy, byte order");
    let listed: Vec<String> = t.kv("GET", "web", "recurse", None).await.json().as_array().unwrap().iter().map(|e| e["Key"].as_str().unwrap().to_owned()).collect();
    assert_eq!(json!(listed), all, "recurse lists the same keys, sorted");
    let none = t.kv("GET", "none/", "keys", None).await;
    assert_eq!(none.status, 404);
    assert!(none.index.is_some());
    // The root is never a 404 for `keys` (a real Consul may hold other keys: only the shape).
    let root = t.call("GET", "/v1/kv/", "keys&separator=/", None).await;
    assert_eq!(root.status, 200);
    assert!(root.json().is_array());
    if !t.real {
        assert_eq!(root.json(), json!(["vsync-contract/"]));
        let empty = Emulator::start();
        let r = t.http.get(format!("{}/v1/kv/?keys", empty.url())).send().await.unwrap();
        assert_eq!(r.status(), 200, "root ?keys of an empty store");
        assert_eq!(r.json::<Value>().await.unwrap(), json!([]));
    }
});

// Lists (list index): a list's index is the prefix's own maximum (not the global
// index), deletes raise it through tombstones, and a never-used prefix follows the table index.
contract!(list_index_rule, |t| {
    t.put("l/a", b"1").await;
    t.put("l/b", b"1").await;
    let before = t.kv("GET", "l/", "recurse", None).await;
    let b_modify = u(&t.kv("GET", "l/b", "", None).await.entry()["ModifyIndex"]);
    assert_eq!(before.index, Some(b_modify), "max ModifyIndex under the prefix");
    let unused_before = t.kv("GET", "never-used/", "recurse", None).await.index.unwrap();
    t.put("elsewhere", b"1").await;
    let same = t.kv("GET", "l/", "recurse", None).await.index.unwrap();
    assert_eq!(Some(same), before.index, "a write elsewhere leaves the prefix's index alone");
    let keys_index = t.kv("GET", "l/", "keys", None).await.index.unwrap();
    assert_eq!(keys_index, same, "keys uses the same list index");
    let unused_after = t.kv("GET", "never-used/", "recurse", None).await.index.unwrap();
    assert!(unused_after > unused_before, "a never-used prefix follows the table index");
    t.kv("DELETE", "l/a", "", None).await;
    let after = t.kv("GET", "l/", "recurse", None).await;
    assert!(after.index.unwrap() > same, "the tombstone raised the list index");
    assert_eq!(after.json().as_array().map(Vec::len), Some(1));
    let keys_after = t.kv("GET", "l/", "keys", None).await.index.unwrap();
    assert_eq!(keys_after, after.index.unwrap());
});

// Blocking queries (activation, return rule): `index=0` does not block; an older index returns at
// once; a current one returns within wait + jitter with the current state and normal status,
// and within 1 s after a relevant write.
contract!(blocking_queries, |t| {
    t.put("w", b"1").await;
    let idx = t.kv("GET", "w", "", None).await.index.unwrap();
    let started = Instant::now();
    assert_eq!(t.kv("GET", "w", "index=0&wait=10s", None).await.status, 200);
    assert!(started.elapsed() < Duration::from_secs(1), "index=0 does not block");
    let started = Instant::now();
    let older = t.kv("GET", "w", &format!("index={}&wait=10s", idx - 1), None).await;
    assert!(started.elapsed() < Duration::from_secs(1), "index > N returns at once (strictly greater)");
    assert_eq!(older.index, Some(idx));
    let started = Instant::now();
    let a = t.kv("GET", "w", &format!("index={idx}&wait=2s"), None).await;
    let took = started.elapsed();
    assert_eq!(a.status, 200, "timeout answers the normal status, never 304/408");
    assert_eq!(a.entry()["Value"], json!(b64(b"1")), "with the current state");
    assert!(a.index.unwrap() >= idx);
    assert!(took <= Duration::from_millis(2000 * 17 / 16 + 1000), "returned within wait + jitter: {took:?}");
    // A relevant write wakes it promptly.
    let (woken, _) = tokio::join!(
        t.block_until("w", "", idx, Duration::from_secs(5), |a| a.index.unwrap_or(0) > idx),
        async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            t.put("w", b"2").await;
        }
    );
    assert!(woken.1 < Duration::from_millis(1300), "woken within 1 s of the write: {:?}", woken.1);
    assert_eq!(woken.0.entry()["Value"], json!(b64(b"2")));
});

// Blocking queries: a missing key's watcher (from its 404 index) sees the key appear; a timeout on a missing
// key answers 404 with an index.
contract!(blocking_on_a_missing_key, |t| {
    let miss = t.kv("GET", "later", "", None).await;
    assert_eq!(miss.status, 404);
    let idx = miss.index.unwrap();
    let started = Instant::now();
    let timeout = t.kv("GET", "later", &format!("index={idx}&wait=1s"), None).await;
    assert_eq!(timeout.status, 404, "a timeout on a missing key is a 404");
    assert!(timeout.index.is_some_and(|i| i >= 1));
    assert!(started.elapsed() <= Duration::from_millis(1000 * 17 / 16 + 1000));
    let idx = timeout.index.unwrap();
    let (appeared, _) = tokio::join!(
        t.block_until("later", "", idx, Duration::from_secs(5), |a| a.status == 200),
        async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            t.put("later", b"here").await;
        }
    );
    assert_eq!(appeared.0.status, 200);
    assert!(appeared.0.index.unwrap() > idx);
    assert!(appeared.1 < Duration::from_millis(1300), "{:?}", appeared.1);
});

// Blocking queries (missed states), deletes (tombstones wake): deleting a watched key wakes it with a
// 404 and a higher index; prefix watchers wake on writes and deletes of any key under it.
contract!(deletes_and_prefix_changes_wake_watchers, |t| {
    t.put("d", b"1").await;
    let idx = t.kv("GET", "d", "", None).await.index.unwrap();
    let (a, _) = tokio::join!(
        t.block_until("d", "", idx, Duration::from_secs(5), |a| a.status == 404),
        async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            t.kv("DELETE", "d", "", None).await
        }
    );
    assert_eq!(a.0.status, 404);
    assert!(a.0.index.unwrap() > idx);
    assert!(a.1 < Duration::from_millis(1300));

    t.put("dir/a", b"1").await;
    t.put("dir/b", b"1").await;
    let idx = t.kv("GET", "dir/", "recurse", None).await.index.unwrap();
    let (a, _) = tokio::join!(
        t.block_until("dir/", "recurse&", idx, Duration::from_secs(5), |a| a.index.unwrap_or(0) > idx),
        async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            t.put("dir/c", b"new").await;
        }
    );
    assert!(a.1 < Duration::from_millis(1300), "a new key under the prefix wakes it: {:?}", a.1);
    assert_eq!(a.0.json().as_array().map(Vec::len), Some(3));
    let idx = a.0.index.unwrap();
    let (a, _) = tokio::join!(
        t.block_until("dir/", "keys&", idx, Duration::from_secs(5), |a| a.index.unwrap_or(0) > idx),
        async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            t.kv("DELETE", "dir/a", "", None).await
        }
    );
    assert!(a.1 < Duration::from_millis(1300), "a delete under the prefix wakes it: {:?}", a.1);
    assert_eq!(a.0.json(), json!([t.key("dir/b"), t.key("dir/c")]));
});

// Blocking queries (activation): `wait` is a Go duration; no unit or junk is 400, as is a bad `index`.
contract!(wait_and_index_parameters, |t| {
    t.put("q", b"1").await;
    for wait in ["1500ms", "1.5s", "1m30s", "2s"] {
        // An old index returns at once whatever the wait.
        let a = t.kv("GET", "q", &format!("index=1&wait={wait}"), None).await;
        assert_eq!(a.status, 200, "wait={wait}");
    }
    assert_eq!(t.kv("GET", "q", "index=1&wait=60", None).await.status, 400, "wait without a unit");
    assert_eq!(t.kv("GET", "q", "index=1&wait=soon", None).await.status, 400);
    assert_eq!(t.kv("GET", "q", "index=abc", None).await.status, 400, "invalid index");
    assert_eq!(t.kv("GET", "q", "index=-1", None).await.status, 400, "index is a u64");
});

// Writes (CAS, idempotent writes): cas=0 is create-only, a failed CAS is 200 false,
// an identical write keeps ModifyIndex, flags count as content.
contract!(cas_and_idempotent_writes, |t| {
    assert_eq!(t.kv("PUT", "c", "cas=0", Some(b"1")).await.json(), json!(true));
    let failed = t.kv("PUT", "c", "cas=0", Some(b"2")).await;
    assert_eq!((failed.status, failed.json()), (200, json!(false)), "cas=0 is create-only");
    let m = u(&t.kv("GET", "c", "", None).await.entry()["ModifyIndex"]);
    let stale = t.kv("PUT", "c", &format!("cas={}", m + 1000), Some(b"2")).await;
    assert_eq!((stale.status, stale.json()), (200, json!(false)));
    assert_eq!(t.kv("PUT", "absent", &format!("cas={m}"), Some(b"2")).await.json(), json!(false), "cas>0 needs the key");
    assert_eq!(t.kv("GET", "absent", "", None).await.status, 404);
    assert_eq!(t.kv("PUT", "c", &format!("cas={m}"), Some(b"2")).await.json(), json!(true));
    let m2 = u(&t.kv("GET", "c", "", None).await.entry()["ModifyIndex"]);
    assert!(m2 > m);
    t.put("c", b"2").await;
    let m3 = u(&t.kv("GET", "c", "", None).await.entry()["ModifyIndex"]);
    assert_eq!(m2, m3, "an identical write does not bump ModifyIndex");
    assert_eq!(t.kv("PUT", "c", &format!("cas={m2}"), Some(b"2")).await.json(), json!(true), "identical CAS succeeds");
    assert_eq!(u(&t.kv("GET", "c", "", None).await.entry()["ModifyIndex"]), m2);
    t.kv("PUT", "c", "flags=7", Some(b"2")).await;
    let e = t.kv("GET", "c", "", None).await.entry();
    assert!(u(&e["ModifyIndex"]) > m2, "a flags change is a change");
    assert_eq!(e["Flags"], json!(7));
});

// Writes (errors): missing key 400, conflicting flags 400, malformed numbers an error status,
// over-size 413 (the limit itself is allowed).
contract!(put_errors_and_size_limit, |t| {
    assert_eq!(t.call("PUT", "/v1/kv/", "", Some(b"1".to_vec())).await.status, 400, "missing key name");
    assert_eq!(t.kv("PUT", "f", "cas=0&acquire=abc", Some(b"1")).await.status, 400, "conflicting flags");
    assert!(t.kv("PUT", "f", "flags=abc", Some(b"1")).await.status >= 400);
    assert!(t.kv("PUT", "f", "cas=x", Some(b"1")).await.status >= 400);
    assert_eq!(t.kv("GET", "f", "", None).await.status, 404, "nothing written by the failures");
    let big = vec![b'x'; 512 * 1024 + 1];
    assert_eq!(t.kv("PUT", "big", "", Some(&big)).await.status, 413);
    let exact = vec![b'x'; 512 * 1024];
    assert_eq!(t.kv("PUT", "exact", "", Some(&exact)).await.status, 200, "512 KiB exactly is allowed");
    assert_eq!(t.kv("GET", "exact", "raw", None).await.body.len(), exact.len());
});

// DELETE quirks.
contract!(delete_quirks, |t| {
    assert_eq!(t.kv("DELETE", "never", "", None).await.json(), json!(true), "plain delete of a missing key");
    assert_eq!(t.kv("DELETE", "never", "cas=5", None).await.json(), json!(true), "CAS delete of a missing key is true");
    t.put("x", b"1").await;
    assert_eq!(t.kv("DELETE", "x", "cas=0", None).await.json(), json!(false), "cas=0 on an existing key");
    assert_eq!(t.kv("DELETE", "x", "recurse&cas=1", None).await.status, 400, "recurse with cas");
    assert_eq!(t.call("DELETE", "/v1/kv/", "", None).await.status, 400, "empty key without recurse");
    let m = u(&t.kv("GET", "x", "", None).await.entry()["ModifyIndex"]);
    assert_eq!(t.kv("DELETE", "x", &format!("cas={}", m + 7), None).await.json(), json!(false));
    assert_eq!(t.kv("GET", "x", "", None).await.status, 200, "a failed CAS delete deletes nothing");
    assert_eq!(t.kv("DELETE", "x", &format!("cas={m}"), None).await.json(), json!(true));
    assert_eq!(t.kv("GET", "x", "", None).await.status, 404);
    // Recursive delete is greedy: `tree` also takes `treehouse`; a trailing `/` scopes it.
    for k in ["tree/a", "tree/b/c", "treehouse", "trees/x"] {
        t.put(k, b"1").await;
    }
    assert_eq!(t.kv("DELETE", "tree/", "recurse", None).await.json(), json!(true));
    assert_eq!(t.kv("GET", "tree", "keys", None).await.json(), json!([t.key("treehouse"), t.key("trees/x")]));
    t.kv("DELETE", "tree", "recurse=false", None).await;
    assert_eq!(t.kv("GET", "tree", "keys", None).await.status, 404, "recurse=false recursed, greedily");
});

// Txn: atomic, every failure reported with 409 and null Results, one index
// for all writes, no results for deletes, null values on set results.
contract!(txn_semantics, |t| {
    let (a, b) = (t.key("t/a"), t.key("t/b"));
    let before = t.kv("GET", "t/", "recurse", None).await.index.unwrap();
    let ok = t
        .txn(json!([
            {"KV": {"Verb": "set", "Key": a, "Value": b64(b"1")}},
            {"KV": {"Verb": "set", "Key": b, "Value": b64(b"2"), "Flags": 3}},
            {"KV": {"Verb": "delete", "Key": t.key("t/none")}},
        ]))
        .await;
    assert_eq!(ok.status, 200);
    assert!(ok.index.is_none(), "write txns carry no X-Consul-Index");
    let body = ok.json();
    assert_eq!(body["Errors"], Value::Null);
    let results = body["Results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 2, "no result for delete");
    assert_eq!(results[0]["KV"]["Key"], json!(a));
    assert_eq!(results[0]["KV"]["Value"], Value::Null, "set results carry no value");
    assert_eq!(results[1]["KV"]["Flags"], json!(3));
    let idx = u(&results[0]["KV"]["ModifyIndex"]);
    assert_eq!(results[1]["KV"]["ModifyIndex"], json!(idx), "one index per txn");
    assert!(idx > before);
    let e = t.kv("GET", "t/b", "", None).await.entry();
    assert_eq!((e["ModifyIndex"].clone(), e["Value"].clone()), (json!(idx), json!(b64(b"2"))));

    let bad = t
        .txn(json!([
            {"KV": {"Verb": "set", "Key": a, "Value": b64(b"changed")}},
            {"KV": {"Verb": "cas", "Key": b, "Value": b64(b"x"), "Index": idx + 1000}},
            {"KV": {"Verb": "get", "Key": t.key("t/missing")}},
            {"KV": {"Verb": "check-not-exists", "Key": a}},
            {"KV": {"Verb": "delete", "Key": b}},
        ]))
        .await;
    assert_eq!(bad.status, 409, "a rolled-back txn is 409, not 200 with errors");
    assert_eq!(bad.json()["Results"], Value::Null);
    let failed: Vec<u64> = bad.json()["Errors"].as_array().unwrap().iter().map(|e| u(&e["OpIndex"])).collect();
    assert_eq!(failed, vec![1, 2, 3], "every failing op is reported");
    assert!(bad.json()["Errors"][0]["What"].is_string());
    assert_eq!(t.kv("GET", "t/a", "", None).await.entry()["Value"], json!(b64(b"1")), "rolled back");
    assert_eq!(t.kv("GET", "t/b", "", None).await.status, 200, "the delete was rolled back too");
    assert_eq!(t.kv("GET", "t/", "recurse", None).await.index, Some(idx), "a rolled-back txn moves no index");

    // An identical set keeps its ModifyIndex.
    let same = t.txn(json!([{"KV": {"Verb": "set", "Key": a, "Value": b64(b"1")}}])).await;
    assert_eq!(same.status, 200);
    assert_eq!(same.json()["Results"][0]["KV"]["ModifyIndex"], json!(idx));
});

// Txn (verbs): cas, get, get-tree, check-index, check-not-exists, delete-tree, delete-cas.
contract!(txn_verbs, |t| {
    let k = |s: &str| t.key(s);
    let created = t
        .txn(json!([
            {"KV": {"Verb": "cas", "Key": k("v/a"), "Value": b64(b"a"), "Index": 0}},
            {"KV": {"Verb": "set", "Key": k("v/b"), "Value": b64(b"b")}},
            {"KV": {"Verb": "set", "Key": k("v/c/d"), "Value": b64(b"")}},
            {"KV": {"Verb": "check-not-exists", "Key": k("v/zzz")}},
        ]))
        .await;
    assert_eq!(created.status, 200, "{}", created.json());
    let idx = u(&created.json()["Results"][0]["KV"]["ModifyIndex"]);
    assert_eq!(created.json()["Results"].as_array().map(Vec::len), Some(3), "check-not-exists has no result");

    let read = t
        .txn(json!([
            {"KV": {"Verb": "get", "Key": k("v/a")}},
            {"KV": {"Verb": "get-tree", "Key": k("v/")}},
            {"KV": {"Verb": "check-index", "Key": k("v/b"), "Index": idx}},
        ]))
        .await;
    assert_eq!(read.status, 200);
    assert!(read.index.is_none(), "read-only txns carry no X-Consul-Index");
    let r = read.json()["Results"].as_array().unwrap().clone();
    assert_eq!(r.len(), 1 + 3 + 1);
    assert_eq!(r[0]["KV"]["Value"], json!(b64(b"a")), "get returns the value");
    let tree: Vec<&str> = r[1..4].iter().map(|e| e["KV"]["Key"].as_str().unwrap()).collect();
    assert_eq!(tree, vec![k("v/a"), k("v/b"), k("v/c/d")], "get-tree, sorted");
    assert_eq!(r[3]["KV"]["Value"], Value::Null, "empty value is null in txn results too");
    assert_eq!(r[4]["KV"]["Key"], json!(k("v/b")));

    let stale = t
        .txn(json!([
            {"KV": {"Verb": "check-index", "Key": k("v/b"), "Index": idx + 1}},
            {"KV": {"Verb": "check-index", "Key": k("v/missing"), "Index": idx}},
            {"KV": {"Verb": "cas", "Key": k("v/a"), "Value": b64(b"again"), "Index": 0}},
            {"KV": {"Verb": "delete-cas", "Key": k("v/a"), "Index": idx + 1}},
        ]))
        .await;
    assert_eq!(stale.status, 409);
    let failed: Vec<u64> = stale.json()["Errors"].as_array().unwrap().iter().map(|e| u(&e["OpIndex"])).collect();
    assert_eq!(failed, vec![0, 1, 2, 3]);

    let deleted = t
        .txn(json!([
            {"KV": {"Verb": "delete-cas", "Key": k("v/a"), "Index": idx}},
            {"KV": {"Verb": "delete-cas", "Key": k("v/never"), "Index": 5}},
            {"KV": {"Verb": "delete-tree", "Key": k("v/c/")}},
        ]))
        .await;
    assert_eq!(deleted.status, 200, "delete-cas of a missing key succeeds: {}", deleted.json());
    assert_eq!(deleted.json()["Results"].as_array().map_or(0, Vec::len), 0, "no results for delete verbs");
    assert_eq!(t.kv("GET", "v/", "keys", None).await.json(), json!([k("v/b")]));
    let after = t.kv("GET", "v/", "recurse", None).await.index.unwrap();
    assert!(after > idx, "txn deletes leave tombstones that raise the list index");

    // get-or-empty exists since 1.14; older servers reject the verb with 409.
    let goe = t.txn(json!([{"KV": {"Verb": "get-or-empty", "Key": k("v/none")}}])).await;
    if goe.status == 200 {
        let e = &goe.json()["Results"][0]["KV"];
        assert_eq!((e["Key"].clone(), e["Value"].clone()), (json!(k("v/none")), Value::Null));
    } else {
        assert_eq!(goe.status, 409, "pre-1.14 servers refuse the verb");
    }
});

// Txn (limits, malformed body): op count and sizes are 413 before anything is
// applied (the op limit is 64 or 128 depending on the version); a malformed body is 400.
contract!(txn_limits_and_malformed_bodies, |t| {
    let ops = |n: usize| Value::Array((0..n).map(|i| json!({"KV": {"Verb": "set", "Key": t.key(&format!("n/{i}")), "Value": b64(b"v")}})).collect());
    assert_eq!(t.txn(ops(64)).await.status, 200, "64 ops are portable");
    let limit = if t.txn(ops(128)).await.status == 200 { 128 } else { 64 };
    println!("txn op limit: {limit}");
    let over = t.txn(ops(limit + 1)).await;
    assert_eq!(over.status, 413);
    assert_eq!(t.kv("GET", &format!("n/{limit}"), "", None).await.status, 404, "nothing applied");
    // Total body: many values, each well under the value limit.
    let chunk = b64(&vec![b'y'; 7000]);
    let body: Vec<Value> = (0..60).map(|i| json!({"KV": {"Verb": "set", "Key": t.key(&format!("s/{i}")), "Value": chunk}})).collect();
    assert_eq!(t.txn(Value::Array(body)).await.status, 413, "body over 512 KiB");
    assert_eq!(t.kv("GET", "s/0", "", None).await.status, 404);
    // One value over the value limit (its base64 also overflows the body limit).
    let huge = json!([{"KV": {"Verb": "set", "Key": t.key("huge"), "Value": b64(&vec![b'z'; 512 * 1024 + 1])}}]);
    assert_eq!(t.txn(huge).await.status, 413);
    for bad in ["{not json", "{\"KV\": 1}", "[{\"KV\": {\"Verb\": \"set\", \"Key\": \"k\", \"Value\": \"not base64!\"}}]"] {
        assert_eq!(t.call("PUT", "/v1/txn", "", Some(bad.as_bytes().to_vec())).await.status, 400, "{bad}");
    }
    let missing_key = t.txn(json!([{"KV": {"Verb": "set", "Key": "", "Value": b64(b"v")}}])).await;
    assert_eq!(missing_key.status, 409, "an op without a key is a per-op error");
});

// Reads (keys): leading `/`, `..` and surrounding spaces refused; `//` redirected to
// the clean path (or refused); percent-decoding of key segments.
contract!(key_handling, |t| {
    let p = &t.prefix;
    let bad = |s: u16| matches!(s, 301 | 400 | 500);
    for path in [format!("/v1/kv/{p}a/../b"), format!("/v1/kv/{p}a/%2E%2E/b"), format!("/v1/kv/%2F{p}lead"), format!("/v1/kv/%20{p}lead"), format!("/v1/kv/{p}trail%20")] {
        let (status, _) = t.raw("PUT", &path);
        assert!(bad(status), "{path} refused: {status}");
    }
    // In case an old server stored the leading-space key outside the prefix.
    t.call("DELETE", &format!("/v1/kv/%20{p}lead"), "", None).await;
    let (status, answer) = t.raw("GET", &format!("/v1/kv/{p}a//b?recurse"));
    assert!(matches!(status, 301 | 400), "`//` redirected or refused: {status}");
    if status == 301 {
        let location = answer.lines().find_map(|l| l.strip_prefix("Location: ").or_else(|| l.strip_prefix("location: "))).unwrap_or("");
        assert!(location.contains(&format!("{p}a/b")), "redirect to the clean path: {location}");
    }
    assert_eq!(t.kv("GET", "never", "keys", None).await.status, 404, "nothing was written by the refused keys");
    t.put("sp%20ace/x%3Fy", b"1").await;
    assert_eq!(t.kv("GET", "sp", "keys", None).await.json(), json!([t.key("sp ace/x?y")]), "segments are percent-decoded");
});

// Datacenters and consistency: an unknown datacenter is a 5xx error; `stale` with `consistent` is 400; `stale` alone
// is a normal read.
contract!(datacenter_and_consistency, |t| {
    t.put("dc", b"1").await;
    assert!(t.kv("GET", "dc", "dc=no-such-dc-vsync", None).await.status >= 500, "unknown dc");
    assert_eq!(t.kv("GET", "dc", "stale&consistent", None).await.status, 400);
    assert_eq!(t.kv("GET", "dc", "stale", None).await.status, 200);
    assert_eq!(t.kv("GET", "dc", "consistent", None).await.status, 200);
});

/// A random UUID-shaped session ID that no server has issued.
fn unknown_session() -> String {
    format!("{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}", fastrand::u32(..), fastrand::u16(..), fastrand::u16(..0x1000), fastrand::u16(..0x1000), fastrand::u64(..1 << 48))
}

// Sessions (website/content/api-docs/session.mdx; agent/session_endpoint.go): create answers
// `{"ID": ...}`; info is a one-element list, `[]` once the session is gone; renew answers the
// session as a list, 404 once it is gone; destroy answers `true`, also for a gone session.
// Omitted fields default to Behavior "release" and a 15 s LockDelay (reported in nanoseconds).
contract!(session_life_cycle, |t| {
    let id = t.session(t.ttl_min * 10, "1s", "release").await;
    let info = t.session_info(&id).await.expect("the new session exists");
    assert_eq!(info["ID"], json!(id));
    assert_eq!(info["Name"], json!("vsync-contract"));
    assert_eq!(info["Behavior"], json!("release"));
    assert_eq!(info["LockDelay"], json!(1_000_000_000u64), "LockDelay in nanoseconds");
    assert!(info["TTL"].is_string(), "{info}");
    assert!(u(&info["CreateIndex"]) >= 1);
    let renewed = t.call("PUT", &format!("/v1/session/renew/{id}"), "", None).await;
    assert_eq!(renewed.status, 200, "{renewed:?}");
    assert_eq!(renewed.json()[0]["ID"], json!(id), "renew answers the session");
    let destroyed = t.call("PUT", &format!("/v1/session/destroy/{id}"), "", None).await;
    assert_eq!((destroyed.status, destroyed.json()), (200, json!(true)));
    assert!(t.session_info(&id).await.is_none(), "gone after destroy (an empty list)");
    assert_eq!(t.call("PUT", &format!("/v1/session/renew/{id}"), "", None).await.status, 404, "renewing a gone session");
    let again = t.call("PUT", &format!("/v1/session/destroy/{id}"), "", None).await;
    assert_eq!((again.status, again.json()), (200, json!(true)), "destroy is idempotent");

    let defaults = t.create_session(json!({"TTL": go(t.ttl_min), "NodeChecks": []})).await;
    assert_eq!(defaults.status, 200, "{defaults:?}");
    let info = t.session_info(defaults.json()["ID"].as_str().unwrap()).await.unwrap();
    assert_eq!(info["Behavior"], json!("release"), "release by default");
    assert_eq!(info["LockDelay"], json!(15_000_000_000u64), "a 15 s lock-delay by default");
});

// Session TTL (session.mdx "TTL"; agent/consul/session_endpoint.go `Apply`): a Go duration
// between the server's `session_ttl_min` (10 s by default) and 86400 s; outside that, or
// unparseable, the create fails with an error status (500 in the versions read). An unknown
// Behavior fails the same way.
contract!(session_ttl_bounds, |t| {
    let create = |ttl: String| t.create_session(json!({"TTL": ttl, "NodeChecks": []}));
    assert!(create(go(t.ttl_min / 2)).await.status >= 400, "a TTL under the minimum");
    assert_eq!(create(go(t.ttl_min)).await.status, 200, "the minimum itself");
    assert_eq!(create("86400s".into()).await.status, 200, "the maximum itself");
    assert!(create("86401s".into()).await.status >= 400, "a TTL over the maximum");
    assert!(create("soon".into()).await.status >= 400, "not a duration");
    let bogus = t.create_session(json!({"TTL": go(t.ttl_min), "Behavior": "bogus", "NodeChecks": []})).await;
    assert!(bogus.status >= 400, "an unknown Behavior");
});

// TTL expiry (session.mdx "TTL": "sessions may not be reaped for up to double this TTL";
// agent/consul/session_ttl.go): the TTL is a lower bound, never cut short, and an unrenewed
// session is gone within about 2 x TTL. Renewing every TTL/2 keeps a session and its lock. An
// expired session releases its locks (Behavior "release"): the key and its value stay, without
// a Session, with LockIndex unchanged.
contract!(session_ttl_expiry_and_renewal, |t| {
    let ttl = t.ttl_min;
    let kept = t.session(ttl, "1s", "release").await;
    let lapsed = t.session(ttl, "1s", "release").await;
    let started = Instant::now();
    assert_eq!(t.acquire("kept", &kept, b"k").await.json(), json!(true));
    assert_eq!(t.acquire("lapsed", &lapsed, b"l").await.json(), json!(true));
    let keeper = async {
        while started.elapsed() < ttl * 5 / 2 {
            tokio::time::sleep(ttl / 2).await;
            let r = t.call("PUT", &format!("/v1/session/renew/{kept}"), "", None).await;
            assert_eq!(r.status, 200, "renewing a live session: {r:?}");
        }
    };
    let watcher = async {
        tokio::time::sleep(ttl / 2).await;
        assert!(t.session_info(&lapsed).await.is_some(), "alive before its TTL");
        loop {
            if t.session_info(&lapsed).await.is_none() {
                return started.elapsed();
            }
            assert!(started.elapsed() < ttl * 2 + Duration::from_secs(5), "an unrenewed session is gone within 2 x TTL (+5 s)");
            tokio::time::sleep(ttl / 20).await;
        }
    };
    let ((), gone) = tokio::join!(keeper, watcher);
    println!("an unrenewed session ({ttl:?} TTL) was invalidated after {gone:?}");
    assert!(gone >= ttl, "never before its TTL: {gone:?}");
    assert!(t.session_info(&kept).await.is_some(), "renewed every TTL/2: alive after 2.5 x TTL");
    assert_eq!(t.kv("GET", "kept", "", None).await.entry()["Session"], json!(kept), "and still holding its lock");
    let e = t.kv("GET", "lapsed", "", None).await.entry();
    assert!(e.get("Session").is_none(), "the expired session's lock is released: {e}");
    assert_eq!((e["LockIndex"].clone(), e["Value"].clone()), (json!(1), json!(b64(b"l"))), "key, value and LockIndex stay");
});

// Locks (kv.mdx `acquire`/`release`; agent/consul/state/kvs.go `kvsLockTxn`, `kvsUnlockTxn`):
// acquiring a free or missing key stores the body, sets Session and increments LockIndex;
// another session gets `false` while it is held; the holder may acquire again (LockIndex
// unchanged); only the holder releases (key, value and LockIndex
// stay, Session goes); an explicit release sets no lock-delay; an unknown session never
// acquires; a plain PUT writes the value but keeps the lock.
contract!(acquire_and_release, |t| {
    let s1 = t.session(t.ttl_min * 10, "15s", "release").await;
    let s2 = t.session(t.ttl_min * 10, "15s", "release").await;
    let first = t.acquire("lock", &s1, b"holder-1").await;
    assert_eq!((first.status, first.json()), (200, json!(true)));
    let e = t.kv("GET", "lock", "", None).await.entry();
    assert_eq!((e["Session"].clone(), e["LockIndex"].clone(), e["Value"].clone()), (json!(s1), json!(1), json!(b64(b"holder-1"))));
    assert_eq!(e["CreateIndex"], e["ModifyIndex"], "acquiring a missing key creates it");
    let other = t.acquire("lock", &s2, b"holder-2").await;
    assert_eq!((other.status, other.json()), (200, json!(false)), "held by another session");
    assert_eq!(t.kv("GET", "lock", "", None).await.entry()["Value"], json!(b64(b"holder-1")), "a refused acquire writes nothing");
    assert_eq!(t.acquire("lock", &s1, b"holder-1b").await.json(), json!(true), "the holder may acquire again");
    let e = t.kv("GET", "lock", "", None).await.entry();
    assert_eq!((e["LockIndex"].clone(), e["Value"].clone()), (json!(1), json!(b64(b"holder-1b"))));
    assert_eq!(t.release("lock", &s2, b"x").await.json(), json!(false), "only the holder releases");
    assert_eq!(t.release("lock", &s1, b"released").await.json(), json!(true));
    let e = t.kv("GET", "lock", "", None).await.entry();
    assert!(e.get("Session").is_none(), "released: {e}");
    assert_eq!((e["LockIndex"].clone(), e["Value"].clone()), (json!(1), json!(b64(b"released"))));
    assert_eq!(t.release("lock", &s1, b"x").await.json(), json!(false), "releasing a free key");
    assert_eq!(t.release("never", &s1, b"x").await.json(), json!(false), "releasing a missing key");
    assert_eq!(t.kv("GET", "never", "", None).await.status, 404);
    assert_eq!(t.acquire("lock", &s2, b"holder-2").await.json(), json!(true), "no lock-delay after an explicit release");
    let e = t.kv("GET", "lock", "", None).await.entry();
    assert_eq!((e["Session"].clone(), e["LockIndex"].clone()), (json!(s2), json!(2)), "a new holder increments LockIndex");
    // (A plain PUT also writes the request's LockIndex, 0, in kvsSetTxn: not asserted here.)
    t.put("lock", b"plain").await;
    let e = t.kv("GET", "lock", "", None).await.entry();
    assert_eq!((e["Session"].clone(), e["Value"].clone()), (json!(s2), json!(b64(b"plain"))), "a plain PUT keeps the lock");
    let unknown = t.acquire("u", &unknown_session(), b"v").await;
    assert_ne!((unknown.status, unknown.json()), (200, json!(true)), "an unknown session cannot acquire");
    assert_eq!(t.kv("GET", "u", "", None).await.status, 404, "nor create the key");
});

// Invalidation (agent/consul/state/session.go `deleteSessionTxn`; agent/consul/kvs_endpoint.go
// `kvsPreApply`): destroying a session releases its locks (Behavior "release": key and value
// stay, Session cleared, LockIndex unchanged) or deletes the keys ("delete"), wakes the keys'
// watchers, and starts its lock-delay: no session acquires those keys until it has passed.
contract!(invalidation_releases_locks_after_lock_delay, |t| {
    let delay = Duration::from_secs(2);
    let s1 = t.session(t.ttl_min * 10, &go(delay), "release").await;
    let s2 = t.session(t.ttl_min * 10, &go(delay), "release").await;
    assert_eq!(t.acquire("l", &s1, b"one").await.json(), json!(true));
    let idx = t.kv("GET", "l", "", None).await.index.unwrap();
    let (woken, destroyed_at) = tokio::join!(
        t.block_until("l", "", idx, Duration::from_secs(5), |a| a.status == 200 && a.json()[0].get("Session").is_none()),
        async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let a = t.call("PUT", &format!("/v1/session/destroy/{s1}"), "", None).await;
            assert_eq!(a.json(), json!(true));
            Instant::now()
        }
    );
    assert!(woken.1 < Duration::from_millis(1300), "the release woke the key's watcher: {:?}", woken.1);
    let e = woken.0.entry();
    assert!(e.get("Session").is_none(), "{e}");
    assert_eq!((e["LockIndex"].clone(), e["Value"].clone()), (json!(1), json!(b64(b"one"))));
    assert_eq!(t.acquire("l", &s2, b"two").await.json(), json!(false), "refused during the lock-delay");
    let took = loop {
        if t.acquire("l", &s2, b"two").await.json() == json!(true) {
            break destroyed_at.elapsed();
        }
        assert!(destroyed_at.elapsed() < delay + Duration::from_secs(3), "acquirable once the lock-delay passed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("re-acquired {took:?} after the destroy ({delay:?} lock-delay)");
    let e = t.kv("GET", "l", "", None).await.entry();
    assert_eq!((e["Session"].clone(), e["LockIndex"].clone()), (json!(s2), json!(2)));

    let s3 = t.session(t.ttl_min * 10, "1s", "delete").await;
    assert_eq!(t.acquire("d", &s3, b"x").await.json(), json!(true));
    t.call("PUT", &format!("/v1/session/destroy/{s3}"), "", None).await;
    assert_eq!(t.kv("GET", "d", "", None).await.status, 404, "Behavior \"delete\" deletes the held keys");
});

// Txn `check-session` (agent/consul/state/kvs.go `kvsCheckSessionTxn`): passes while the
// key is locked by that session (its result is the entry, value null); for another session's
// lock, a released lock or a missing key the whole txn rolls back with 409 naming the op.
contract!(txn_check_session, |t| {
    let s1 = t.session(t.ttl_min * 10, "1s", "release").await;
    let s2 = t.session(t.ttl_min * 10, "1s", "release").await;
    assert_eq!(t.acquire("lock", &s1, b"me").await.json(), json!(true));
    let lock = t.key("lock");
    let guarded = |session: &str, key: &str, value: &[u8]| {
        json!([
            {"KV": {"Verb": "check-session", "Key": lock, "Session": session}},
            {"KV": {"Verb": "set", "Key": t.key(key), "Value": b64(value)}},
        ])
    };
    let ok = t.txn(guarded(&s1, "guarded", b"1")).await;
    assert_eq!(ok.status, 200, "{}", ok.json());
    let r = ok.json()["Results"][0]["KV"].clone();
    assert_eq!((r["Key"].clone(), r["Session"].clone(), r["Value"].clone()), (json!(lock), json!(s1), Value::Null));
    assert_eq!(t.kv("GET", "guarded", "", None).await.status, 200);
    let other = t.txn(guarded(&s2, "g2", b"1")).await;
    assert_eq!(other.status, 409, "another session's lock");
    assert_eq!(other.json()["Errors"][0]["OpIndex"], json!(0));
    let missing = t
        .txn(json!([
            {"KV": {"Verb": "check-session", "Key": t.key("no-lock"), "Session": s1}},
            {"KV": {"Verb": "set", "Key": t.key("g2"), "Value": b64(b"1")}},
        ]))
        .await;
    assert_eq!(missing.status, 409, "a missing key");
    assert_eq!(t.release("lock", &s1, b"me").await.json(), json!(true));
    let released = t.txn(guarded(&s1, "g2", b"1")).await;
    assert_eq!(released.status, 409, "a released lock");
    assert_eq!(t.kv("GET", "g2", "", None).await.status, 404, "nothing of the failed txns applied");
});

/// The ACL target: the emulator with ACLs, or a real Consul where a management token creates a
/// policy and a token (removed afterwards).
struct AclSetup {
    target: Target,
    reader: String,
    cleanup: Vec<String>,
}

/// Rules (relative to the prefix): `app/` read, `app/secret/` deny, `rw/` write.
async fn acl_targets() -> Vec<AclSetup> {
    let mut tokens = BTreeMap::new();
    let prefix = format!("vsync-contract/{}/", fastrand::u64(..));
    tokens.insert("admin-secret".to_owned(), vec![AclRule { prefix: String::new(), read: true, write: true }]);
    tokens.insert(
        "reader-secret".to_owned(),
        vec![
            AclRule { prefix: format!("{prefix}app/"), read: true, write: false },
            AclRule { prefix: format!("{prefix}app/secret/"), read: false, write: false },
            AclRule { prefix: format!("{prefix}rw/"), read: true, write: true },
        ],
    );
    let emu = Emulator::start_with(EmulatorConfig { acl: Some(Acl { tokens }), ..Default::default() });
    let mut target = emulator_target(emu, Some("admin-secret".into()), CONSUL_TTL_MIN);
    target.prefix = prefix;
    let mut out = vec![AclSetup { target, reader: "reader-secret".into(), cleanup: Vec::new() }];
    let Some(target) = targets().pop().filter(|t| t.real) else { return out };
    let rules = format!(
        "key_prefix \"{p}app/\" {{ policy = \"read\" }}\nkey_prefix \"{p}app/secret/\" {{ policy = \"deny\" }}\nkey_prefix \"{p}rw/\" {{ policy = \"write\" }}",
        p = target.prefix
    );
    let name = format!("vsync-contract-{}", fastrand::u64(..));
    let policy = target.call("PUT", "/v1/acl/policy", "", Some(json!({"Name": name, "Rules": rules}).to_string().into_bytes())).await;
    if policy.status != 200 {
        println!("acl: real Consul skipped (no management token or ACLs disabled: {})", policy.status);
        return out;
    }
    let policy_id = policy.json()["ID"].as_str().unwrap_or_default().to_owned();
    let token = target.call("PUT", "/v1/acl/token", "", Some(json!({"Policies": [{"ID": policy_id}]}).to_string().into_bytes())).await;
    assert_eq!(token.status, 200, "create a token");
    let reader = token.json()["SecretID"].as_str().unwrap().to_owned();
    let accessor = token.json()["AccessorID"].as_str().unwrap().to_owned();
    out.push(AclSetup { target, reader, cleanup: vec![format!("/v1/acl/token/{accessor}"), format!("/v1/acl/policy/{policy_id}")] });
    out
}

// Reads (authentication), lists (ACL effects on reads), txn (ACL inside a txn): unknown
// token 403; denied single read and write 403; lists filtered silently (all filtered: 404); a
// denied txn op is a per-op 409 error; the token also works as `?token=` and `Bearer`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acls() {
    for AclSetup { target: t, reader, cleanup } in acl_targets().await {
        println!("acls: {}", t.name);
        let t = Arc::new(t);
        let t2 = t.clone();
        let outcome = tokio::spawn(async move {
            let t = t2;
            let r = Some(reader.as_str());
            for k in ["app/a", "app/b", "app/secret/s", "rw/x", "other"] {
                t.put(k, b"v").await;
            }
            let path = |k: &str| format!("/v1/kv/{}", t.key(k));
            assert_eq!(t.call_as(r, "GET", &path("app/a"), "", None).await.status, 200);
            assert_eq!(t.call_as(Some("no-such-token-vsync"), "GET", &path("app/a"), "", None).await.status, 403, "unknown token");
            assert_eq!(t.call_as(r, "GET", &path("app/secret/s"), "", None).await.status, 403, "denied read");
            let other = t.call_as(r, "GET", &path("other"), "", None).await;
            if other.header("X-Consul-Default-ACL-Policy") != Some("allow") {
                assert_eq!(other.status, 403, "no rule under default deny: denied");
            }
            assert_eq!(t.call_as(r, "PUT", &path("app/a"), "", Some(b"w".to_vec())).await.status, 403, "denied write");
            assert_eq!(t.call_as(r, "PUT", &path("rw/x"), "", Some(b"w".to_vec())).await.status, 200);
            let keys = t.call_as(r, "GET", &path("app/"), "keys", None).await;
            assert_eq!(keys.status, 200);
            assert_eq!(keys.json(), json!([t.key("app/a"), t.key("app/b")]), "filtered silently");
            let list = t.call_as(r, "GET", &path("app/secret/"), "recurse", None).await;
            assert_eq!(list.status, 404, "all filtered: 404");
            assert!(list.index.is_some());
            assert_eq!(t.call_as(None, "GET", &path("app/a"), &format!("token={reader}"), None).await.status, 200, "?token=");
            let bearer = t.http.get(format!("{}{}", t.base, path("app/a"))).bearer_auth(&reader).send().await.unwrap();
            assert_eq!(bearer.status(), 200, "Authorization: Bearer");
            let ops = json!([
                {"KV": {"Verb": "set", "Key": t.key("rw/y"), "Value": b64(b"1")}},
                {"KV": {"Verb": "set", "Key": t.key("app/a"), "Value": b64(b"1")}},
                {"KV": {"Verb": "delete", "Key": t.key("app/b")}},
            ]);
            let denied = t.call_as(r, "PUT", "/v1/txn", "", Some(ops.to_string().into_bytes())).await;
            assert_eq!(denied.status, 409, "per-op denial is 409, not 403");
            let failed: Vec<u64> = denied.json()["Errors"].as_array().unwrap().iter().map(|e| u(&e["OpIndex"])).collect();
            assert_eq!(failed, vec![1, 2]);
            assert_eq!(t.kv("GET", "rw/y", "", None).await.status, 404, "nothing applied");
            let tree = json!([{"KV": {"Verb": "get-tree", "Key": t.key("app/")}}]);
            let read = t.call_as(r, "PUT", "/v1/txn", "", Some(tree.to_string().into_bytes())).await;
            assert_eq!(read.status, 200);
            let keys: Vec<String> = read.json()["Results"].as_array().unwrap().iter().map(|e| e["KV"]["Key"].as_str().unwrap().to_owned()).collect();
            assert_eq!(keys, vec![t.key("app/a"), t.key("app/b")], "get-tree filtered silently");
            let unknown = t.call_as(Some("no-such-token-vsync"), "PUT", "/v1/txn", "", Some(tree.to_string().into_bytes())).await;
            assert_eq!(unknown.status, 403, "an unknown token is 403 on txn too");
        })
        .await;
        t.cleanup().await;
        for path in cleanup {
            t.call("DELETE", &path, "", None).await;
        }
        if let Err(e) = outcome {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

//! Emulator-only checks: behaviour the contract may not assert portably (a real Consul may wake
//! spuriously or has fixed server settings), the configuration knobs, counters, direct
//! inspection, and the thread/runtime life cycle.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vsync_consul_emulator::{Acl, AclRule, Emulator, EmulatorConfig, Stats};

struct Got {
    status: u16,
    index: Option<u64>,
    headers: reqwest::header::HeaderMap,
    body: String,
}

async fn call(emu: &Emulator, method: &str, path: &str, token: Option<&str>, body: Option<String>) -> Got {
    let mut req = reqwest::Client::new()
        .request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), format!("{}{path}", emu.url()))
        .timeout(Duration::from_secs(20));
    if let Some(t) = token {
        req = req.header("X-Consul-Token", t);
    }
    if let Some(b) = body {
        req = req.body(b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let index = headers.get("X-Consul-Index").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    Got { status, index, headers, body: r.text().await.unwrap() }
}

async fn put(emu: &Emulator, key: &str, value: &str) {
    let got = call(emu, "PUT", &format!("/v1/kv/{key}"), None, Some(value.to_owned())).await;
    assert_eq!((got.status, got.body.as_str()), (200, "true"), "PUT {key}");
}

/// Times a blocking GET while `during` runs 200 ms after it started.
async fn timed(emu: &Emulator, path: &str, during: impl Future<Output = ()>) -> (Got, Duration) {
    let started = Instant::now();
    let (got, ()) = tokio::join!(call(emu, "GET", path, None, None), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        during.await;
    });
    (got, started.elapsed())
}

// Blocking queries: the emulator never wakes spuriously on its own, so "strictly greater" is observable: an
// equal index, identical writes and writes to other keys all leave the query blocked.
#[tokio::test]
async fn blocks_strictly_and_ignores_identical_and_unrelated_writes() {
    let emu = Emulator::start();
    put(&emu, "w", "1").await;
    put(&emu, "dir/a", "1").await;
    let idx = call(&emu, "GET", "/v1/kv/w", None, None).await.index.unwrap();
    let (got, took) = timed(&emu, &format!("/v1/kv/w?index={idx}&wait=800ms"), async {
        put(&emu, "w", "1").await; // identical
        put(&emu, "other", "x").await; // unrelated
    })
    .await;
    assert!(took >= Duration::from_millis(790), "held until the wait expired: {took:?}");
    assert!(took <= Duration::from_millis(800 * 17 / 16 + 300), "{took:?}");
    assert_eq!((got.status, got.index), (200, Some(idx)));
    let list = call(&emu, "GET", "/v1/kv/dir/?recurse", None, None).await.index.unwrap();
    let (got, took) = timed(&emu, &format!("/v1/kv/dir/?recurse&index={list}&wait=600ms"), put(&emu, "dirt", "x")).await;
    assert!(took >= Duration::from_millis(590), "a write outside the prefix does not wake it: {took:?}");
    assert_eq!(got.index, Some(list));
}

// Blocking queries (spurious wake-ups): the emulator models servers before 1.12, where any KV write wakes a
// missing key's watcher with a 404 and a higher index (the harder case for clients).
#[tokio::test]
async fn any_write_wakes_a_missing_keys_watcher() {
    let emu = Emulator::start();
    let idx = call(&emu, "GET", "/v1/kv/missing", None, None).await.index.unwrap();
    let (got, took) = timed(&emu, &format!("/v1/kv/missing?index={idx}&wait=5s"), put(&emu, "elsewhere", "x")).await;
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert_eq!(got.status, 404);
    assert!(got.index.unwrap() > idx);
}

// Blocking queries (activation): the default wait, the clamp to the maximum, and jitter below wait/16.
#[tokio::test]
async fn default_and_max_wait_with_jitter() {
    let emu = Emulator::start_with(EmulatorConfig {
        default_wait: Duration::from_millis(400),
        max_wait: Duration::from_millis(640),
        ..Default::default()
    });
    put(&emu, "k", "v").await;
    let idx = emu.index();
    for (query, base) in [("", 400), ("&wait=10m", 640), ("&wait=0s", 400), ("&wait=", 400), ("&wait=160ms", 160)] {
        let started = Instant::now();
        let got = call(&emu, "GET", &format!("/v1/kv/k?index={idx}{query}"), None, None).await;
        let took = started.elapsed();
        assert_eq!(got.status, 200);
        assert!(took >= Duration::from_millis(base - 10), "{query}: {took:?}");
        assert!(took <= Duration::from_millis(base * 17 / 16 + 150), "{query}: {took:?} (jitter < wait/16)");
    }
    // `wait` without `index` is ignored, but still parsed.
    let started = Instant::now();
    assert_eq!(call(&emu, "GET", "/v1/kv/k?wait=10s", None, None).await.status, 200);
    assert!(started.elapsed() < Duration::from_millis(300));
    assert_eq!(call(&emu, "GET", "/v1/kv/k?wait=10", None, None).await.status, 400);
}

// Writes, txn (limits): every limit is configurable and answered 413 before anything applies.
#[tokio::test]
async fn configured_limits() {
    let emu = Emulator::start_with(EmulatorConfig { txn_max_ops: 4, kv_max_value_size: 100, txn_max_req_len: 1000, ..Default::default() });
    let set = |k: usize, v: &str| json!({"KV": {"Verb": "set", "Key": format!("k{k}"), "Value": v}});
    let b100 = "x".repeat(100);
    assert_eq!(call(&emu, "PUT", "/v1/kv/ok", None, Some(b100.clone())).await.status, 200);
    let too_big = call(&emu, "PUT", "/v1/kv/big", None, Some(format!("{b100}y"))).await;
    assert_eq!(too_big.status, 413);
    assert!(too_big.body.contains("too large"), "{}", too_big.body);
    let ops = Value::Array((0..5).map(|i| set(i, "eA==")).collect());
    let over = call(&emu, "PUT", "/v1/txn", None, Some(ops.to_string())).await;
    assert_eq!(over.status, 413);
    assert!(over.body.contains("too many operations (5 > 4)"), "{}", over.body);
    // 101 bytes decoded: "eH" * ... is simpler built from real base64 of 101 bytes.
    let v101 = "eHh4".repeat(33) + "eHg="; // 99 + 2 = 101 bytes
    let value = call(&emu, "PUT", "/v1/txn", None, Some(json!([set(1, &v101)]).to_string())).await;
    assert_eq!(value.status, 413, "{}", value.body);
    assert!(value.body.contains("is too large"), "{}", value.body);
    let long_key = |i: usize| json!({"KV": {"Verb": "set", "Key": format!("{}{i}", "p".repeat(300)), "Value": "eA=="}});
    let body = json!([long_key(1), long_key(2), long_key(3), long_key(4)]).to_string();
    assert!(body.len() > 1000);
    assert_eq!(call(&emu, "PUT", "/v1/txn", None, Some(body)).await.status, 413, "body over max(txn_max_req_len, kv_max_value_size)");
    assert_eq!(emu.keys(""), vec!["ok".to_owned()], "nothing else was written");
}

// Datacenters and consistency: the configured datacenter is accepted, any other is 500 "No path to datacenter".
#[tokio::test]
async fn datacenter_name() {
    let emu = Emulator::start_with(EmulatorConfig { datacenter: "west".into(), ..Default::default() });
    put(&emu, "k", "v").await;
    assert_eq!(call(&emu, "GET", "/v1/kv/k?dc=west", None, None).await.status, 200);
    let other = call(&emu, "GET", "/v1/kv/k?dc=dc1", None, None).await;
    assert_eq!((other.status, other.body.as_str()), (500, "No path to datacenter"));
    assert_eq!(call(&emu, "PUT", "/v1/txn?dc=east", None, Some("[]".into())).await.status, 500);
}

// The counters, reset, and direct inspection without HTTP.
#[tokio::test]
async fn stats_and_inspection() {
    let emu = Emulator::start();
    put(&emu, "b/2", "two").await;
    put(&emu, "b/1", "").await;
    put(&emu, "c", "x").await;
    call(&emu, "DELETE", "/v1/kv/c", None, None).await;
    call(&emu, "GET", "/v1/kv/b/1", None, None).await;
    call(&emu, "GET", "/v1/kv/nope", None, None).await;
    call(&emu, "GET", &format!("/v1/kv/b/1?index={}&wait=50ms", emu.index()), None, None).await;
    let read = json!([{"KV": {"Verb": "get", "Key": "b/1"}}, {"KV": {"Verb": "get-tree", "Key": "b/"}}]);
    call(&emu, "PUT", "/v1/txn", None, Some(read.to_string())).await;
    let write = json!([{"KV": {"Verb": "delete", "Key": "b/2"}}, {"KV": {"Verb": "cas", "Key": "b/1", "Index": 1, "Value": null}}]);
    assert_eq!(call(&emu, "PUT", "/v1/txn", None, Some(write.to_string())).await.status, 409);
    call(&emu, "PUT", "/v1/kv/", None, Some("x".into())).await;
    assert_eq!(emu.stats(), Stats { reads: 4, blocking_reads: 1, writes: 6, txn_ops: 4, errors: 2 });
    emu.reset_stats();
    assert_eq!(emu.stats(), Stats::default());
    assert_eq!(emu.get("b/2"), Some(b"two".to_vec()), "the failed txn changed nothing");
    assert_eq!(emu.get("b/1"), Some(Vec::new()));
    assert_eq!(emu.get("c"), None);
    assert_eq!(emu.keys("b/"), vec!["b/1".to_owned(), "b/2".to_owned()]);
    let idx = call(&emu, "GET", "/v1/kv/c", None, None).await.index;
    assert_eq!(idx, Some(emu.index()), "a missing key answers the global index");
}

// ACL details beyond the contract: anonymous requests, KeyWritePrefix on recursive deletes,
// the filtered-results and default-policy headers.
#[tokio::test]
async fn acl_details() {
    let mut tokens = BTreeMap::new();
    tokens.insert(
        "dev".to_owned(),
        vec![AclRule { prefix: "app/".into(), read: true, write: true }, AclRule { prefix: "app/ro/".into(), read: true, write: false }],
    );
    tokens.insert("root".to_owned(), vec![AclRule { prefix: String::new(), read: true, write: true }]);
    let emu = Emulator::start_with(EmulatorConfig { acl: Some(Acl { tokens }), ..Default::default() });
    for k in ["app/x", "app/ro/y", "zzz"] {
        assert_eq!(call(&emu, "PUT", &format!("/v1/kv/{k}"), Some("root"), Some("v".into())).await.status, 200);
    }
    let anon = call(&emu, "GET", "/v1/kv/app/x", None, None).await;
    assert_eq!(anon.status, 403, "anonymous has no rules");
    assert_eq!(anon.headers.get("X-Consul-Default-ACL-Policy").unwrap(), "deny");
    let root_keys = call(&emu, "GET", "/v1/kv/?keys", None, None).await;
    assert_eq!((root_keys.status, root_keys.body.as_str()), (200, "[]"), "anonymous sees an empty root");
    assert!(root_keys.headers.get("X-Consul-Results-Filtered-By-ACLs").is_none(), "never for anonymous");
    let listed = call(&emu, "GET", "/v1/kv/?keys", Some("dev"), None).await;
    assert_eq!(serde_json::from_str::<Value>(&listed.body).unwrap(), json!(["app/ro/y", "app/x"]));
    assert_eq!(listed.headers.get("X-Consul-Results-Filtered-By-ACLs").unwrap(), "true");
    // A denying rule under the prefix refuses the recursive delete, even where no key exists.
    assert_eq!(call(&emu, "DELETE", "/v1/kv/app/?recurse", Some("dev"), None).await.status, 403);
    assert_eq!(call(&emu, "DELETE", "/v1/kv/app/r?recurse", Some("dev"), None).await.status, 403);
    assert_eq!(emu.keys("app/").len(), 2);
    let tree = json!([{"KV": {"Verb": "delete-tree", "Key": "app/"}}]);
    assert_eq!(call(&emu, "PUT", "/v1/txn", Some("dev"), Some(tree.to_string())).await.status, 409);
    assert_eq!(call(&emu, "DELETE", "/v1/kv/app/x?recurse", Some("dev"), None).await.status, 200);
    assert_eq!(emu.keys("app/"), vec!["app/ro/y".to_owned()]);
    let open = Emulator::start();
    let got = call(&open, "GET", "/v1/kv/x", Some("anything"), None).await;
    assert_eq!(got.status, 404, "tokens are ignored without ACLs");
    assert_eq!(got.headers.get("X-Consul-Default-ACL-Policy").unwrap(), "allow");
}

// Sessions: the default `session_ttl_min` is Consul's 10 s; the TTL timer runs without requests
// (a watcher of a held key wakes when the session expires, at 2 x TTL after the last renewal,
// not before 1.5 x TTL); the inspection helpers; txn lock/unlock are not modelled (409).
#[tokio::test]
async fn sessions_timers_limits_and_inspection() {
    let emu = Emulator::start();
    let create = |ttl: &str| call(&emu, "PUT", "/v1/session/create", None, Some(json!({"TTL": ttl, "LockDelay": "0s"}).to_string()));
    assert_eq!(create("9s").await.status, 500, "under the default minimum");
    assert_eq!(create("10s").await.status, 200);

    let fast = Emulator::start_with(EmulatorConfig { session_ttl_min: Duration::from_millis(200), ..Default::default() });
    let body = json!({"TTL": "400ms", "LockDelay": "0s", "Name": "n"}).to_string();
    let id: String = serde_json::from_str::<Value>(&call(&fast, "PUT", "/v1/session/create", None, Some(body)).await.body).unwrap()["ID"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(fast.sessions(), vec![id.clone()]);
    assert_eq!(call(&fast, "PUT", &format!("/v1/kv/l?acquire={id}"), None, Some("me".into())).await.body, "true");
    assert_eq!(fast.lock_holder("l"), Some(id.clone()));
    let created = Instant::now();
    let idx = call(&fast, "GET", "/v1/kv/l", None, None).await.index.unwrap();
    let woken = call(&fast, "GET", &format!("/v1/kv/l?index={idx}&wait=5s"), None, None).await;
    let took = created.elapsed();
    assert!(took >= Duration::from_millis(600) && took < Duration::from_millis(1300), "expired at 2 x TTL: {took:?}");
    assert!(!woken.body.contains("Session"), "{}", woken.body);
    assert_eq!(fast.lock_holder("l"), None);
    assert!(fast.sessions().is_empty());

    // A plain PUT to a once-locked key takes the request's LockIndex, 0 (Consul's kvsSetTxn).
    put(&fast, "l", "plain").await;
    assert!(call(&fast, "GET", "/v1/kv/l", None, None).await.body.contains("\"LockIndex\":0"));

    assert_eq!(call(&emu, "PUT", "/v1/kv/l?acquire=abc", None, Some("v".into())).await.status, 500, "unknown session");
    let lock = json!([{"KV": {"Verb": "lock", "Key": "l", "Value": "eA==", "Session": "abc"}}]);
    assert_eq!(call(&emu, "PUT", "/v1/txn", None, Some(lock.to_string())).await.status, 409, "txn lock is not modelled");
    assert_eq!(emu.get("l"), None);
    assert_eq!(call(&emu, "GET", "/v1/session/create", None, None).await.status, 405);
    assert_eq!(call(&emu, "PUT", "/v1/session/info/x", None, None).await.status, 405);
}

// The emulator runs on its own thread: usable from a plain synchronous test, and dropping it
// closes the port.
#[test]
fn works_without_a_runtime_and_stops_on_drop() {
    use std::io::{Read, Write};
    let emu = Emulator::start();
    let addr = emu.addr();
    assert_eq!(emu.url(), format!("http://{addr}"));
    assert!(addr.ip().is_loopback());
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "PUT /v1/kv/sync HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200") && out.ends_with("true"), "{out}");
    assert_eq!(emu.get("sync"), Some(b"ok".to_vec()));
    drop(emu);
    assert!(std::net::TcpStream::connect(addr).is_err(), "the port is closed after drop");
}

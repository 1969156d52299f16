//! The Consul KV contract suite, written from the documented behaviour
//! (`reference/consul-kv.md` §2, citing the section per test), over raw HTTP.
//!
//! It always runs against the in-process emulator, and also against a real Consul when
//! `CONSUL_HTTP_ADDR` is set (with `CONSUL_HTTP_TOKEN` if present), under a random prefix that
//! is deleted afterwards. Assertions are relations (index after > index before), bounded
//! timings, and version-tolerant where Consul versions differ.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use vsync_consul_emulator::Emulator;

/// One target of the suite.
struct Target {
    name: String,
    base: String,
    token: Option<String>,
    prefix: String,
    http: reqwest::Client,
    _emulator: Option<Emulator>,
}

struct Answer {
    status: u16,
    index: Option<u64>,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

impl Target {
    fn key(&self, k: &str) -> String {
        format!("{}{k}", self.prefix)
    }

    async fn call(&self, method: &str, path: &str, query: &str, body: Option<Vec<u8>>) -> Answer {
        let url = if query.is_empty() {
            format!("{}{path}", self.base)
        } else {
            format!("{}{path}?{query}", self.base)
        };
        let mut req = self
            .http
            .request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), url)
            .timeout(Duration::from_secs(30));
        if let Some(t) = &self.token {
            req = req.header("X-Consul-Token", t);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let index = resp
            .headers()
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body = resp.bytes().await.unwrap().to_vec();
        Answer { status, index, body }
    }

    async fn kv(&self, method: &str, key: &str, query: &str, body: Option<&[u8]>) -> Answer {
        self.call(method, &format!("/v1/kv/{}", self.key(key)), query, body.map(<[u8]>::to_vec))
            .await
    }

    async fn txn(&self, ops: Value) -> Answer {
        self.call("PUT", "/v1/txn", "", Some(ops.to_string().into_bytes())).await
    }

    /// Sends a request line as is (URL libraries clean `..` and `//` before sending).
    fn raw_status(&self, method: &str, path: &str) -> u16 {
        use std::io::{Read, Write};
        let host = self.base.trim_start_matches("http://").trim_end_matches('/');
        let mut s = std::net::TcpStream::connect(host).unwrap();
        let token = self.token.as_ref().map(|t| format!("X-Consul-Token: {t}\r\n")).unwrap_or_default();
        write!(s, "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{token}Content-Length: 1\r\nConnection: close\r\n\r\nx").unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
    }

    async fn cleanup(&self) {
        self.call("DELETE", &format!("/v1/kv/{}", self.prefix), "recurse", None).await;
    }
}

fn b64(v: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(v)
}

async fn targets() -> Vec<Target> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let emu = Emulator::start();
    let mut out = vec![Target {
        name: "emulator".into(),
        base: emu.url(),
        token: None,
        prefix: format!("vsync-contract/{}/", fastrand::u64(..)),
        http: http.clone(),
        _emulator: Some(emu),
    }];
    match std::env::var("CONSUL_HTTP_ADDR") {
        Ok(addr) if !addr.is_empty() => {
            let base = if addr.contains("://") { addr } else { format!("http://{addr}") };
            println!("Consul contract: emulator and real Consul at {base}");
            out.push(Target {
                name: format!("consul {base}"),
                base,
                token: std::env::var("CONSUL_HTTP_TOKEN").ok(),
                prefix: format!("vsync-contract/{}/", fastrand::u64(..)),
                http,
                _emulator: None,
            });
        }
        _ => println!("Consul contract: emulator only (no CONSUL_HTTP_ADDR); real-Consul conformance unverified"),
    }
    out
}

/// Runs `check` against every target, cleaning up each prefix.
macro_rules! contract {
    ($name:ident, |$t:ident| $body:block) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            for $t in targets().await {
                println!("{}: {}", stringify!($name), $t.name);
                $body
                $t.cleanup().await;
            }
        }
    };
}

// §2.2, §4.2 #1-2: a missing key is a 404 that still carries an index (>= 1).
contract!(missing_key_is_404_with_index, |t| {
    let a = t.kv("GET", "nope", "", None).await;
    assert_eq!(a.status, 404);
    assert!(a.index.is_some_and(|i| i >= 1), "404 carries X-Consul-Index");
});

// §2.4, §4.2 #1: one global index; CreateIndex kept across updates, renewed after re-create.
contract!(global_index_and_create_index, |t| {
    assert_eq!(t.kv("PUT", "a", "", Some(b"1")).await.json(), json!(true));
    let first = t.kv("GET", "a", "", None).await.json()[0].clone();
    assert_eq!(t.kv("PUT", "other", "", Some(b"x")).await.json(), json!(true));
    let other = t.kv("GET", "other", "", None).await.json()[0].clone();
    assert!(other["ModifyIndex"].as_u64() > first["ModifyIndex"].as_u64(), "indexes are global");
    t.kv("PUT", "a", "", Some(b"2")).await;
    let second = t.kv("GET", "a", "", None).await.json()[0].clone();
    assert_eq!(second["CreateIndex"], first["CreateIndex"], "CreateIndex kept across updates");
    assert!(second["ModifyIndex"].as_u64() > other["ModifyIndex"].as_u64());
    t.kv("DELETE", "a", "", None).await;
    t.kv("PUT", "a", "", Some(b"3")).await;
    let third = t.kv("GET", "a", "", None).await.json()[0].clone();
    assert!(third["CreateIndex"].as_u64() > second["ModifyIndex"].as_u64(), "re-created key has a new CreateIndex");
});

// §2.1: values are padded standard base64; an empty value is null; binary survives.
contract!(values_base64_null_and_binary, |t| {
    t.kv("PUT", "bin", "", Some(&[0, 255, 254, 10])).await;
    t.kv("PUT", "empty", "", Some(b"")).await;
    let bin = t.kv("GET", "bin", "", None).await.json();
    assert_eq!(bin[0]["Value"], json!(b64(&[0, 255, 254, 10])));
    assert_eq!(t.kv("GET", "empty", "", None).await.json()[0]["Value"], Value::Null);
    let raw = t.kv("GET", "bin", "raw", None).await;
    assert_eq!(raw.body, vec![0, 255, 254, 10]);
});

// §2.1, §4.2 #5: flags are tested by presence: `recurse=false` still recurses.
contract!(presence_flags, |t| {
    t.kv("PUT", "p/a", "", Some(b"1")).await;
    t.kv("PUT", "p/b", "", Some(b"2")).await;
    let a = t.kv("GET", "p/", "recurse=false", None).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json().as_array().map(Vec::len), Some(2), "recurse=false recursed");
});

// §2.2, §4.2 #9: sorted lists, keys with separator keep the separator, greedy prefixes.
contract!(keys_and_separator, |t| {
    for k in ["web/foo", "web/bar", "web/sub/x", "web/sub/y", "webz"] {
        t.kv("PUT", k, "", Some(b"v")).await;
    }
    let keys = t.kv("GET", "web/", "keys&separator=/", None).await.json();
    let want: Vec<String> = ["web/bar", "web/foo", "web/sub/"].iter().map(|k| t.key(k)).collect();
    assert_eq!(keys, json!(want));
    let all = t.kv("GET", "web", "keys", None).await.json();
    let want: Vec<String> = ["web/bar", "web/foo", "web/sub/x", "web/sub/y", "webz"].iter().map(|k| t.key(k)).collect();
    assert_eq!(all, json!(want), "greedy prefix, byte order");
    assert_eq!(t.kv("GET", "none/", "keys", None).await.status, 404);
});

// §2.2 list index, §4.2 #4, #12: deletes raise a prefix's index (tombstones).
contract!(deletes_raise_list_index, |t| {
    t.kv("PUT", "l/a", "", Some(b"1")).await;
    t.kv("PUT", "l/b", "", Some(b"1")).await;
    let before = t.kv("GET", "l/", "recurse", None).await.index.unwrap();
    t.kv("DELETE", "l/a", "", None).await;
    let after = t.kv("GET", "l/", "recurse", None).await.index.unwrap();
    assert!(after > before, "tombstone raised the list index: {before} -> {after}");
});

// §2.3, §4.2 #3: blocking returns only when the index is strictly greater, at most ~wait later,
// with the current state and the normal status; promptly after a relevant write.
contract!(blocking_queries, |t| {
    t.kv("PUT", "w", "", Some(b"1")).await;
    let idx = t.kv("GET", "w", "", None).await.index.unwrap();
    let started = Instant::now();
    let a = t.kv("GET", "w", &format!("index={idx}&wait=2s"), None).await;
    let took = started.elapsed();
    assert_eq!(a.status, 200);
    assert!(took <= Duration::from_millis(2000 * 17 / 16 + 1000), "returned within wait + jitter: {took:?}");
    // A write wakes it.
    let started = Instant::now();
    let q = format!("index={idx}&wait=10s");
    let (a, _) = tokio::join!(t.kv("GET", "w", &q, None), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        t.kv("PUT", "w", "", Some(b"2")).await
    });
    assert!(started.elapsed() < Duration::from_secs(2), "woken by the write: {:?}", started.elapsed());
    assert!(a.index.unwrap() > idx);
    // A stale index returns at once.
    let started = Instant::now();
    t.kv("GET", "w", "index=1&wait=10s", None).await;
    assert!(started.elapsed() < Duration::from_secs(1));
    // Bad parameters.
    assert_eq!(t.kv("GET", "w", "index=1&wait=60", None).await.status, 400, "wait without a unit");
    assert_eq!(t.kv("GET", "w", "index=abc", None).await.status, 400);
});

// §2.3: deleting a watched key wakes the watcher with a 404 and a higher index.
contract!(delete_wakes_watcher, |t| {
    t.kv("PUT", "d", "", Some(b"1")).await;
    let idx = t.kv("GET", "d", "", None).await.index.unwrap();
    let q = format!("index={idx}&wait=10s");
    let (a, _) = tokio::join!(t.kv("GET", "d", &q, None), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        t.kv("DELETE", "d", "", None).await
    });
    assert_eq!(a.status, 404);
    assert!(a.index.unwrap() > idx);
});

// §2.4, §4.2 #6-7: CAS rules; failed CAS is 200 false; idempotent writes keep ModifyIndex.
contract!(cas_and_idempotent_writes, |t| {
    assert_eq!(t.kv("PUT", "c", "cas=0", Some(b"1")).await.json(), json!(true));
    assert_eq!(t.kv("PUT", "c", "cas=0", Some(b"2")).await.json(), json!(false), "cas=0 is create-only");
    let e = t.kv("GET", "c", "", None).await.json()[0].clone();
    let m = e["ModifyIndex"].as_u64().unwrap();
    let stale = t.kv("PUT", "c", &format!("cas={}", m + 1000), Some(b"2")).await;
    assert_eq!((stale.status, stale.json()), (200, json!(false)));
    assert_eq!(t.kv("PUT", "c", &format!("cas={m}"), Some(b"2")).await.json(), json!(true));
    let m2 = t.kv("GET", "c", "", None).await.json()[0]["ModifyIndex"].as_u64().unwrap();
    assert_eq!(t.kv("PUT", "c", "", Some(b"2")).await.json(), json!(true));
    let m3 = t.kv("GET", "c", "", None).await.json()[0]["ModifyIndex"].as_u64().unwrap();
    assert_eq!(m2, m3, "identical write does not bump ModifyIndex");
});

// §2.5, §4.2 #6: DELETE quirks.
contract!(delete_quirks, |t| {
    assert_eq!(t.kv("DELETE", "never", "", None).await.json(), json!(true));
    assert_eq!(t.kv("DELETE", "never", "cas=5", None).await.json(), json!(true), "CAS delete of a missing key is true");
    t.kv("PUT", "x", "", Some(b"1")).await;
    assert_eq!(t.kv("DELETE", "x", "cas=0", None).await.json(), json!(false));
    assert_eq!(t.kv("DELETE", "x", "recurse&cas=1", None).await.status, 400);
    let m = t.kv("GET", "x", "", None).await.json()[0]["ModifyIndex"].as_u64().unwrap();
    assert_eq!(t.kv("DELETE", "x", &format!("cas={m}"), None).await.json(), json!(true));
    assert_eq!(t.kv("GET", "x", "", None).await.status, 404);
});

// §2.6, §4.2 #8: txn: atomic, every failure reported with 409, one index for all writes, no
// results for deletes, null values on set results.
contract!(txn_semantics, |t| {
    let (a, b) = (t.key("t/a"), t.key("t/b"));
    let ok = t
        .txn(json!([
            {"KV": {"Verb": "set", "Key": a, "Value": b64(b"1")}},
            {"KV": {"Verb": "set", "Key": b, "Value": b64(b"2")}},
            {"KV": {"Verb": "delete", "Key": t.key("t/none")}},
        ]))
        .await;
    assert_eq!(ok.status, 200);
    let results = ok.json()["Results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 2, "no result for delete");
    assert_eq!(results[0]["KV"]["Value"], Value::Null);
    assert_eq!(results[0]["KV"]["ModifyIndex"], results[1]["KV"]["ModifyIndex"], "one index per txn");
    let bad = t
        .txn(json!([
            {"KV": {"Verb": "set", "Key": a, "Value": b64(b"changed")}},
            {"KV": {"Verb": "cas", "Key": b, "Value": b64(b"x"), "Index": 1}},
            {"KV": {"Verb": "get", "Key": t.key("t/missing")}},
        ]))
        .await;
    assert_eq!(bad.status, 409);
    let errors = bad.json()["Errors"].as_array().unwrap().clone();
    let failed: Vec<u64> = errors.iter().map(|e| e["OpIndex"].as_u64().unwrap()).collect();
    assert_eq!(failed, vec![1, 2], "every failing op is reported");
    let still = t.kv("GET", "t/a", "", None).await.json();
    assert_eq!(still[0]["Value"], json!(b64(b"1")), "rolled back");
    assert_eq!(t.call("PUT", "/v1/txn", "", Some(b"{not json".to_vec())).await.status, 400);
});

// §2.6, §4.2 #10: op count and size limits answer 413 (the op limit is 64 or 128).
contract!(limits_are_413, |t| {
    let ops: Vec<Value> = (0..129).map(|i| json!({"KV": {"Verb": "get-or-empty", "Key": t.key(&format!("n{i}"))}})).collect();
    assert_eq!(t.txn(Value::Array(ops)).await.status, 413);
    let big = vec![b'x'; 512 * 1024 + 1];
    assert_eq!(t.kv("PUT", "big", "", Some(&big)).await.status, 413);
    let exact = vec![b'x'; 512 * 1024];
    assert_eq!(t.kv("PUT", "exact", "", Some(&exact)).await.status, 200, "512 KiB exactly is allowed");
});

// §2.1, §4.2 #11: key handling: leading `/`, `..` refused; `//` redirected; `%20` decoded.
contract!(key_handling, |t| {
    let dotdot = t.raw_status("PUT", &format!("/v1/kv/{}a/../b", t.prefix));
    assert!(matches!(dotdot, 301 | 400 | 500), "`..` refused: {dotdot}");
    let encoded = t.raw_status("PUT", &format!("/v1/kv/{}a/%2E%2E/b", t.prefix));
    assert!(matches!(encoded, 301 | 400 | 500), "encoded `..` refused: {encoded}");
    let double = t.raw_status("GET", &format!("/v1/kv/{}a//b", t.prefix));
    assert!(matches!(double, 301 | 400), "`//` redirected or refused: {double}");
    t.kv("PUT", "sp%20ace", "", Some(b"1")).await;
    let keys = t.kv("GET", "sp", "keys", None).await.json();
    assert_eq!(keys, json!([t.key("sp ace")]));
    assert_eq!(t.call("PUT", "/v1/kv/", "", Some(b"1".to_vec())).await.status, 400, "missing key name");
});

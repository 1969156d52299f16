//! The emulator's fault hooks and ACLs (not part of the contract: Consul has no such hooks).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;
use vsync_consul_emulator::{Acl, AclRule, Emulator, EmulatorConfig};

async fn get(url: &str, token: Option<&str>) -> (u16, Option<u64>) {
    let mut req = reqwest::Client::new().get(url).timeout(Duration::from_secs(20));
    if let Some(t) = token {
        req = req.header("X-Consul-Token", t);
    }
    match req.send().await {
        Ok(r) => (
            r.status().as_u16(),
            r.headers().get("X-Consul-Index").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()),
        ),
        Err(_) => (0, None),
    }
}

#[tokio::test]
async fn injected_statuses_then_normal_service() {
    let emu = Emulator::start();
    emu.faults().fail_next(503, 2);
    let url = format!("{}/v1/kv/a", emu.url());
    assert_eq!(get(&url, None).await.0, 503);
    assert_eq!(get(&url, None).await.0, 503);
    assert_eq!(get(&url, None).await.0, 404);
    assert_eq!(emu.stats().errors, 2, "injected statuses count; a read's 404 is a normal answer");
}

#[tokio::test]
async fn index_backwards_and_zero_index() {
    let emu = Emulator::start();
    let c = reqwest::Client::new();
    for i in 0..10 {
        c.put(format!("{}/v1/kv/k{i}", emu.url())).body("v").send().await.unwrap();
    }
    let before = emu.index();
    emu.faults().index_backwards();
    assert!(emu.index() < before);
    let (_, idx) = get(&format!("{}/v1/kv/k9", emu.url()), None).await;
    assert!(idx.unwrap() <= emu.index());
    emu.faults().zero_index(true);
    assert_eq!(get(&format!("{}/v1/kv/k9", emu.url()), None).await.1, Some(0));
}

#[tokio::test]
async fn dropped_long_poll_and_spurious_wakeup() {
    let emu = Emulator::start();
    let c = reqwest::Client::new();
    c.put(format!("{}/v1/kv/w", emu.url())).body("v").send().await.unwrap();
    let idx = emu.index();
    emu.faults().drop_long_polls(1);
    let (status, _) = get(&format!("{}/v1/kv/w?index={idx}&wait=5s", emu.url()), None).await;
    assert_eq!(status, 0, "connection dropped without an answer");
    let faults = emu.faults();
    let started = Instant::now();
    let url = format!("{}/v1/kv/w?index={idx}&wait=10s", emu.url());
    let (r, _) = tokio::join!(get(&url, None), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        faults.spurious_wakeup();
    });
    assert_eq!(r, (200, Some(idx)), "woken with unchanged data");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn acl_tokens_rules_and_filtering() {
    let mut tokens = BTreeMap::new();
    tokens.insert(
        "reader".to_owned(),
        vec![
            AclRule { prefix: "app/".into(), read: true, write: false },
            AclRule { prefix: "app/secret/".into(), read: false, write: false },
        ],
    );
    tokens.insert("admin".to_owned(), vec![AclRule { prefix: String::new(), read: true, write: true }]);
    let emu = Emulator::start_with(EmulatorConfig { acl: Some(Acl { tokens }), ..Default::default() });
    let c = reqwest::Client::new();
    for k in ["app/a", "app/secret/b"] {
        let r = c.put(format!("{}/v1/kv/{k}", emu.url())).header("X-Consul-Token", "admin").body("v").send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(get(&format!("{}/v1/kv/app/a", emu.url()), Some("reader")).await.0, 200);
    assert_eq!(get(&format!("{}/v1/kv/app/secret/b", emu.url()), Some("reader")).await.0, 403);
    assert_eq!(get(&format!("{}/v1/kv/app/a", emu.url()), Some("nobody")).await.0, 403, "unknown token");
    let keys: serde_json::Value = c
        .get(format!("{}/v1/kv/app/?keys", emu.url()))
        .header("X-Consul-Token", "reader")
        .send().await.unwrap().json().await.unwrap();
    assert_eq!(keys, json!(["app/a"]), "lists are filtered silently");
    // A denied write inside a txn is a per-op 409 error, not a 403.
    let r = c
        .put(format!("{}/v1/txn", emu.url()))
        .header("X-Consul-Token", "reader")
        .body(json!([{"KV": {"Verb": "set", "Key": "app/a", "Value": "eA=="}}]).to_string())
        .send().await.unwrap();
    assert_eq!(r.status(), 409);
}

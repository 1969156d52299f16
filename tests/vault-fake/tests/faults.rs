//! Fake-only behaviour: fault injection, sealing, snapshots and determinism (what a real
//! server cannot be made to do on demand).
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::{config, data};
use serde_json::json;
use vsync_vault::{DataRead, RetryPolicy, VaultClient, VaultError};
use vsync_vault_fake::{FakeVault, Injected, RequestView};

/// A fake at a fixed, settable time.
fn fixed() -> (FakeVault, Arc<Mutex<SystemTime>>) {
    let now = Arc::new(Mutex::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)));
    let at = now.clone();
    let fake = FakeVault::new(Arc::new(move || *at.lock().unwrap()));
    fake.enable_kv("secret/", 2);
    fake.enable_kv("kv1/", 1);
    (fake, now)
}

fn client(fake: &FakeVault) -> VaultClient {
    VaultClient::with_transport(config("http://fake.invalid", "root"), fake.transport()).unwrap()
}

#[tokio::test]
async fn a_connection_fault_applies_nothing() {
    let (fake, _) = fixed();
    let seen: Arc<Mutex<Vec<RequestView>>> = Arc::default();
    let log = seen.clone();
    fake.set_fault_hook(Some(Arc::new(move |v: &RequestView| {
        log.lock().unwrap().push(v.clone());
        v.is_write.then_some(Injected::Connection)
    })));
    let c = client(&fake);
    assert!(matches!(c.write_version("secret/", "a b/k", &data(json!({"x": 1})), 0).await, Err(VaultError::Connection { .. })));
    assert!(c.read_metadata("secret/", "a b/k").await.unwrap().is_none());
    assert!(fake.snapshot("secret/").is_empty());
    let views = seen.lock().unwrap().clone();
    assert_eq!(views[0], RequestView { method: "POST".into(), api_path: "secret/data/a b/k".into(), is_write: true });
    assert_eq!((views[1].method.as_str(), views[1].is_write), ("GET", false));
    assert_eq!(fake.request_count(), 2);
}

#[tokio::test]
async fn a_lost_answer_is_applied() {
    let (fake, _) = fixed();
    let first = Arc::new(AtomicU64::new(0));
    fake.set_fault_hook(Some(Arc::new(move |v: &RequestView| {
        (v.is_write && first.fetch_add(1, Ordering::SeqCst) == 0).then_some(Injected::LostAnswer)
    })));
    let c = client(&fake);
    assert!(matches!(c.write_version("secret/", "k", &data(json!({"x": 1})), 0).await, Err(VaultError::Connection { .. })));
    assert_eq!(fake.snapshot("secret/")["k"].current_version, 1);
    // The retry the caller would make now fails its check-and-set.
    assert!(matches!(c.write_version("secret/", "k", &data(json!({"x": 1})), 0).await, Err(VaultError::CasMismatch { .. })));
}

#[tokio::test]
async fn injected_statuses_reach_the_client_typed() {
    let (fake, _) = fixed();
    let c = client(&fake);
    for (status, message) in [(500, "internal error"), (503, "standby"), (429, "quota")] {
        let msg = message.to_owned();
        fake.set_fault_hook(Some(Arc::new(move |_: &RequestView| {
            Some(Injected::Status { status, retry_after: Some(2), message: msg.clone() })
        })));
        let result = c.read_metadata("secret/", "k").await;
        match (status, result) {
            (500, Err(VaultError::Server { status: 500, message, .. })) => assert_eq!(message, "internal error"),
            (503, Err(VaultError::Server { status: 503, .. })) => {}
            (429, Err(VaultError::RateLimited { retry_after, .. })) => assert_eq!(retry_after, Some(Duration::from_secs(2))),
            (s, other) => panic!("{s}: {other:?}"),
        }
    }
    fake.set_fault_hook(None);
    assert!(c.read_metadata("secret/", "k").await.unwrap().is_none());
}

#[tokio::test]
async fn the_client_retries_through_throttling() {
    let (fake, _) = fixed();
    let calls = Arc::new(AtomicU64::new(0));
    fake.set_fault_hook(Some(Arc::new(move |_: &RequestView| {
        (calls.fetch_add(1, Ordering::SeqCst) < 2).then(|| Injected::Status { status: 429, retry_after: None, message: "quota".into() })
    })));
    let mut cfg = config("http://fake.invalid", "root");
    cfg.retry = RetryPolicy { max_attempts: 4, base_delay: Duration::from_millis(1), max_delay: Duration::from_millis(5) };
    cfg.backpressure_budget = Duration::from_secs(30);
    let c = VaultClient::with_transport(cfg, fake.transport()).unwrap();
    c.write_version("secret/", "k", &data(json!({})), 0).await.unwrap();
    assert_eq!(fake.request_count(), 3);
}

#[tokio::test]
async fn sealing_and_unsealing() {
    let (fake, _) = fixed();
    let c = client(&fake);
    fake.set_sealed(true);
    assert!(matches!(c.read_metadata("secret/", "k").await, Err(VaultError::Sealed { .. })));
    let (_, body) = c.sys("GET", "sys/seal-status", None).await.unwrap();
    assert_eq!(body.unwrap()["sealed"], true);
    fake.set_sealed(false);
    assert!(c.read_metadata("secret/", "k").await.unwrap().is_none());
}

#[tokio::test]
async fn snapshots_follow_the_injected_clock() {
    let (fake, now) = fixed();
    let c = client(&fake);
    c.write_metadata("secret/", "k", &vsync_vault::MetadataSettings {
        max_versions: 0,
        cas_required: false,
        delete_version_after: "30s".into(),
        custom_metadata: Default::default(),
    })
    .await
    .unwrap();
    let w = c.write_version("secret/", "k", &data(json!({"v": 1})), 0).await.unwrap();
    assert_eq!((w.created_time.as_str(), w.deletion_time.as_str()), ("2027-01-15T08:00:00Z", "2027-01-15T08:00:30Z"));
    *now.lock().unwrap() += Duration::from_millis(29_500);
    assert!(matches!(c.read_latest("secret/", "k").await.unwrap(), DataRead::Live(..)));
    *now.lock().unwrap() += Duration::from_millis(500);
    assert!(matches!(c.read_latest("secret/", "k").await.unwrap(), DataRead::Deleted(_)));
    c.write_v1("kv1/", "v", &data(json!({"a": 1}))).await.unwrap();
    let snap = fake.snapshot("secret/");
    let k = &snap["k"];
    assert_eq!((k.current_version, k.delete_version_after.as_str(), k.v1_data.is_none()), (1, "30s", true));
    assert_eq!(k.versions[&1].data, Some(json!({"v": 1})));
    assert_eq!(k.versions[&1].deletion_time, "2027-01-15T08:00:30Z");
    c.destroy_versions("secret/", "k", &[1]).await.unwrap();
    assert_eq!(fake.snapshot("secret/")["k"].versions[&1].data, None);
    assert_eq!(fake.snapshot("kv1")["v"].v1_data, Some(json!({"a": 1})));
    assert!(fake.snapshot("nomount/").is_empty());
}

#[tokio::test]
async fn two_fakes_given_the_same_requests_answer_alike() {
    let mut bodies = Vec::new();
    for _ in 0..2 {
        let (fake, _) = fixed();
        let c = client(&fake);
        for i in 0..12 {
            c.write_version("secret/", "k", &data(json!({"i": i})), i).await.unwrap();
        }
        c.delete_versions("secret/", "k", &[5]).await.unwrap();
        let (_, info) = c.sys("GET", "sys/internal/ui/mounts/secret", None).await.unwrap();
        let (_, meta) = c.sys("GET", "secret/metadata/k", None).await.unwrap();
        bodies.push((info, meta, format!("{:?}", fake.snapshot("secret/"))));
    }
    assert_eq!(bodies[0], bodies[1]);
}

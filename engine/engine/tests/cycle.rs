//! The engine through its library API against real OpenBao dev servers, no subprocess: a
//! destination cycle that copies, then a cycle that does nothing; a removal on a missing
//! destination mount is fatal like a write; and the role loop with `once`.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use vsync_core::{CycleFlags, DeletePolicy, DestinationSpec, OriginSpec, VersionsMode};
use vsync_engine::{Alerter, Destination, Ended, Engine, FatalCause, Publisher, Role, RunOptions, Tripwire, origin};
use vsync_state::{FileStore, StateStore};
use vsync_test_harness::{Bao, DEV_ROOT_TOKEN};
use vsync_vault::{DataRead, SecretData, Token, VaultClient, VaultConfig};

fn client(bao: &Bao) -> VaultClient {
    VaultClient::new(VaultConfig::new(bao.addr(), Token::new(DEV_ROOT_TOKEN))).unwrap()
}

fn data(v: serde_json::Value) -> SecretData {
    SecretData::from_json(&v.to_string()).unwrap()
}

fn origin_spec() -> OriginSpec {
    OriginSpec {
        mounts: vec!["secret/".into()],
        interval: Duration::from_secs(60),
        timeout: Duration::from_secs(60),
        workers: 4,
        buckets: None,
    }
}

fn dest_spec(mounts: &[(&str, &str)]) -> DestinationSpec {
    DestinationSpec {
        name: "eu".into(),
        labels: BTreeMap::new(),
        mounts: mounts.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect(),
        interval: Duration::from_secs(60),
        timeout: Duration::from_secs(60),
        workers: 4,
        versions: VersionsMode::Latest,
        deletes: DeletePolicy::Mirror,
        max_delete_ratio: 0.5,
        config_hash: "test".into(),
        uses_plugins: false,
    }
}

async fn destination(store: &StateStore, vault: VaultClient, spec: DestinationSpec) -> Destination {
    let lock = store.lock_side(&vsync_engine::side_name(&spec.name)).await.unwrap();
    Destination { spec, vault, store: store.clone(), lock, mapper: None }
}

async fn live(c: &VaultClient, mount: &str, path: &str) -> Option<String> {
    match c.read_latest(mount, path).await.unwrap() {
        DataRead::Live(d, _) => Some(d.as_json().to_owned()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_cycle_copies_then_does_nothing() {
    let (a, b) = (Bao::dev(), Bao::dev());
    let (ca, cb) = (client(&a), client(&b));
    for i in 0..30 {
        ca.write_version("secret/", &format!("app/k{i}"), &data(json!({"v": i})), 0).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::File(FileStore::open(dir.path()).unwrap());
    let mut d = destination(&store, cb.clone(), dest_spec(&[("secret/", "secret/")])).await;

    let info = origin::scan(&ca, &origin_spec(), None).await.unwrap();
    assert_eq!(info.entries.len(), 30);
    let report = d.cycle(&ca, &info, CycleFlags::default()).await.unwrap();
    assert_eq!(report.counts.added, 30, "{report}");
    assert!(report.committed);
    assert_eq!(report.origin_data_reads, 30);
    assert_eq!(live(&cb, "secret/", "app/k7").await.as_deref(), Some(r#"{"v":7}"#));

    // Nothing changed: no Vault data request and no state write.
    let again = d.cycle(&ca, &info, CycleFlags::default()).await.unwrap();
    assert_eq!(again.counts.unchanged, 30, "{again}");
    assert_eq!((again.origin_data_reads, again.dest_data_reads, again.dest_writes), (0, 0, 0), "{again}");
    assert!(!again.committed);

    // One update and one delete at the origin.
    ca.write_version("secret/", "app/k1", &data(json!({"v": "new"})), 1).await.unwrap();
    ca.delete_metadata("secret/", "app/k2").await.unwrap();
    let info = origin::scan(&ca, &origin_spec(), None).await.unwrap();
    let report = d.cycle(&ca, &info, CycleFlags::default()).await.unwrap();
    assert_eq!((report.counts.updated, report.counts.deleted), (1, 1), "{report}");
    assert_eq!(live(&cb, "secret/", "app/k1").await.as_deref(), Some(r#"{"v":"new"}"#));
    assert_eq!(live(&cb, "secret/", "app/k2").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_on_a_missing_destination_mount_is_fatal_like_a_write() {
    let (a, b) = (Bao::dev(), Bao::dev());
    b.enable_kv("gone", 2);
    let (ca, cb) = (client(&a), client(&b));
    ca.write_version("secret/", "x", &data(json!({"v": 1})), 0).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::File(FileStore::open(dir.path()).unwrap());
    let mut d = destination(&store, cb.clone(), dest_spec(&[("secret/", "gone/")])).await;
    let info = origin::scan(&ca, &origin_spec(), None).await.unwrap();
    assert_eq!(d.cycle(&ca, &info, CycleFlags::default()).await.unwrap().counts.added, 1);

    // The origin key goes, and the destination mount disappears: the delete must not be a
    // per-secret failure that the next cycles retry silently.
    ca.delete_metadata("secret/", "x").await.unwrap();
    b.root("DELETE", "sys/mounts/gone", None);
    let info = origin::scan(&ca, &origin_spec(), None).await.unwrap();
    let fault = d.cycle(&ca, &info, CycleFlags::default()).await.unwrap_err();
    assert_eq!(fault.fatal_cause(), Some(FatalCause::Mount), "{fault}");
    assert!(fault.message.contains("gone/"), "{fault}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_role_loop_runs_one_shared_round_and_stops_on_shutdown() {
    let (a, b) = (Bao::dev(), Bao::dev());
    let (ca, cb) = (client(&a), client(&b));
    for i in 0..5 {
        ca.write_version("secret/", &format!("k{i}"), &data(json!({"v": i})), 0).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::File(FileStore::open(dir.path()).unwrap());
    let engine = async |store: &StateStore| Engine {
        role: Role::Run,
        origin_vault: ca.clone(),
        origin_store: store.clone(),
        publisher: Some(Publisher {
            spec: origin_spec(),
            lock: store.lock_side(vsync_engine::ORIGIN_SIDE).await.unwrap(),
            digest_key: None,
        }),
        destinations: vec![destination(store, cb.clone(), dest_spec(&[("secret/", "secret/")])).await],
        alerter: Alerter::new(None),
        tripwire: Tripwire::new(),
        reporter: Box::new(|_| {}),
    };
    let once = RunOptions { once: true, ..Default::default() };
    let ended = vsync_engine::run(engine(&store).await, once, std::future::pending()).await.unwrap();
    assert_eq!(ended, Ended::Once { per_secret_failures: false });
    assert_eq!(live(&cb, "secret/", "k4").await.as_deref(), Some(r#"{"v":4}"#));

    // A long-running loop ends when the injected shutdown future resolves.
    let stop = tokio::time::sleep(Duration::from_millis(500));
    let ended = tokio::time::timeout(Duration::from_secs(20), vsync_engine::run(engine(&store).await, RunOptions::default(), stop))
        .await
        .expect("the loop stopped")
        .unwrap();
    assert_eq!(ended, Ended::Stopped);

    // A fatal fault from a background task stops it too, with that fault.
    let e = engine(&store).await;
    e.tripwire.trip(vsync_engine::Fault::fatal(FatalCause::Token, "origin vault: the token expires"));
    let fault = vsync_engine::run(e, RunOptions::default(), std::future::pending()).await.unwrap_err();
    assert_eq!(fault.fatal_cause(), Some(FatalCause::Token));
}

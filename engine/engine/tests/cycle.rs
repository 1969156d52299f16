//! The engine through its library API against real OpenBao dev servers, no subprocess: a
//! destination cycle that copies, then a cycle that does nothing; a removal on a missing
//! destination mount is fatal like a write; and the role loop with `once`.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use vsync_core::{CycleFlags, DeletePolicy, DestinationSpec, VersionsMode};
use vsync_engine::{Alerter, Destination, Ended, Engine, FatalCause, Publisher, Role, RunOptions, Tripwire, origin};
use vsync_state::{FileStore, StateStore};
use vsync_test_harness::{Bao, DEV_ROOT_TOKEN};
use vsync_vault::{DataRead, Token, VaultClient, VaultConfig};

mod common;
use common::{client, data, origin_spec};

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
    Destination { spec, vault, store: store.clone(), lock, mapper: None, digest_key: None, progress: None, clock: vsync_core::clock::system_clock() }
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
    assert_eq!(report.dest_data_reads, 0, "new keys are created with cas = 0, without a read first");
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
    assert_eq!(report.dest_data_reads, 0, "an update writes with cas = the recorded version, without a read: {report}");
    assert_eq!(live(&cb, "secret/", "app/k1").await.as_deref(), Some(r#"{"v":"new"}"#));
    assert_eq!(live(&cb, "secret/", "app/k2").await, None);

    // Someone wrote the destination copy by hand: the optimistic write's CAS fails, and the
    // fallback reads, compares and writes the origin's value over it.
    cb.write_version("secret/", "app/k3", &data(json!({"v": "by hand"})), 1).await.unwrap();
    ca.write_version("secret/", "app/k3", &data(json!({"v": "origin"})), 1).await.unwrap();
    let info = origin::scan(&ca, &origin_spec(), None).await.unwrap();
    let report = d.cycle(&ca, &info, CycleFlags::default()).await.unwrap();
    assert_eq!(report.counts.updated, 1, "{report}");
    assert_eq!(report.dest_data_reads, 1, "the failed CAS falls back to read-and-compare: {report}");
    assert_eq!(live(&cb, "secret/", "app/k3").await.as_deref(), Some(r#"{"v":"origin"}"#));
    // The fallback recorded the version it wrote: the next update is optimistic again.
    ca.write_version("secret/", "app/k3", &data(json!({"v": "origin 2"})), 2).await.unwrap();
    let info = origin::scan(&ca, &origin_spec(), None).await.unwrap();
    let report = d.cycle(&ca, &info, CycleFlags::default()).await.unwrap();
    assert_eq!((report.counts.updated, report.dest_data_reads), (1, 0), "{report}");
    assert_eq!(live(&cb, "secret/", "app/k3").await.as_deref(), Some(r#"{"v":"origin 2"}"#));
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
            audit: None,
        }),
        destinations: vec![destination(store, cb.clone(), dest_spec(&[("secret/", "secret/")])).await],
        alerter: Alerter::new(None),
        tripwire: Tripwire::new(),
        reporter: Box::new(|_| {}),
        telemetry: Default::default(),
        deferred: Default::default(),
        clock: vsync_core::clock::system_clock(),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_written_this_cycle_is_never_deleted_by_a_removal() {
    // Issue 10 item 1: origin mounts a/ and b/ are both mapped to x/; a/db was synced; then
    // a/db is deleted and b/db created. The cycle writes x/db and must not delete it after.
    let (a, b) = (Bao::dev(), Bao::dev());
    a.enable_kv("a", 2);
    a.enable_kv("b", 2);
    b.enable_kv("x", 2);
    let (ca, cb) = (client(&a), client(&b));
    ca.write_version("a/", "db", &data(json!({"from": "a"})), 0).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::File(FileStore::open(dir.path()).unwrap());
    let mut spec = dest_spec(&[("a/", "x/"), ("b/", "x/")]);
    spec.max_delete_ratio = 1.0;
    let mut d = destination(&store, cb.clone(), spec).await;
    let mut ospec = origin_spec();
    ospec.mounts = vec!["a/".into(), "b/".into()];
    let info = origin::scan(&ca, &ospec, None).await.unwrap();
    d.cycle(&ca, &info, CycleFlags::default()).await.unwrap();
    assert_eq!(live(&cb, "x/", "db").await.as_deref(), Some(r#"{"from":"a"}"#));

    ca.delete_metadata("a/", "db").await.unwrap();
    ca.write_version("b/", "db", &data(json!({"from": "b"})), 0).await.unwrap();
    for round in 0..3 {
        let info = origin::scan(&ca, &ospec, None).await.unwrap();
        let report = d.cycle(&ca, &info, CycleFlags::default()).await.unwrap();
        assert_eq!(report.counts.deleted, 0, "round {round}: {report}");
        assert_eq!(live(&cb, "x/", "db").await.as_deref(), Some(r#"{"from":"b"}"#), "round {round}: {report}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kv1_value_changed_after_the_keyed_scan_is_not_recorded_under_the_old_digest() {
    // Issue 10 item 5: origin value A is scanned with a digest key; the value becomes B before
    // the destination copies; then A again. The destination must end with A.
    let (a, b) = (Bao::dev(), Bao::dev());
    a.enable_kv("kv1", 1);
    b.enable_kv("kv1", 1);
    let (ca, cb) = (client(&a), client(&b));
    let key = std::sync::Arc::new(b"0123456789abcdef0123456789abcdef".to_vec());
    let mut ospec = origin_spec();
    ospec.mounts = vec!["kv1/".into()];
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::File(FileStore::open(dir.path()).unwrap());
    let mut d = destination(&store, cb.clone(), dest_spec(&[("kv1/", "kv1/")])).await;
    d.digest_key = Some(key.clone());

    ca.write_v1("kv1/", "app", &data(json!({"v": "A"}))).await.unwrap();
    let scanned_a = origin::scan(&ca, &ospec, Some(&key)).await.unwrap();
    ca.write_v1("kv1/", "app", &data(json!({"v": "B"}))).await.unwrap();
    let report = d.cycle(&ca, &scanned_a, CycleFlags::default()).await.unwrap();
    assert_eq!(report.counts.skipped, 1, "B does not match the scanned digest: {report}");
    ca.write_v1("kv1/", "app", &data(json!({"v": "A"}))).await.unwrap();
    let info = origin::scan(&ca, &ospec, Some(&key)).await.unwrap();
    d.cycle(&ca, &info, CycleFlags::default()).await.unwrap();
    assert_eq!(cb.read_v1("kv1/", "app").await.unwrap().map(|v| v.as_json().to_owned()).as_deref(), Some(r#"{"v":"A"}"#));

    // Without the key at the destination the value is written but its digest is not trusted:
    // the next cycle compares again and converges.
    let mut d2 = destination(&StateStore::File(FileStore::open(tempfile::tempdir().unwrap().keep()).unwrap()), cb.clone(), {
        let mut s = dest_spec(&[("kv1/", "kv1/")]);
        s.name = "us".into();
        s
    })
    .await;
    ca.write_v1("kv1/", "app", &data(json!({"v": "C"}))).await.unwrap();
    let scanned_c = origin::scan(&ca, &ospec, Some(&key)).await.unwrap();
    ca.write_v1("kv1/", "app", &data(json!({"v": "D"}))).await.unwrap();
    d2.cycle(&ca, &scanned_c, CycleFlags::default()).await.unwrap();
    ca.write_v1("kv1/", "app", &data(json!({"v": "C"}))).await.unwrap();
    let info = origin::scan(&ca, &ospec, Some(&key)).await.unwrap();
    d2.cycle(&ca, &info, CycleFlags::default()).await.unwrap();
    assert_eq!(cb.read_v1("kv1/", "app").await.unwrap().map(|v| v.as_json().to_owned()).as_deref(), Some(r#"{"v":"C"}"#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failed_renewal_of_a_static_token_is_retried_not_fatal() {
    // Issue 10 item 9: a renewable token of TTL 6 s; its first renewal (at 3 s) meets a cut
    // connection for ~1.5 s. Half the TTL remains, so the keeper retries and the token lives.
    let a = Bao::dev();
    let token = a.root("POST", "auth/token/create", Some(&json!({"ttl": "6s", "explicit_max_ttl": "60s", "renewable": true, "policies": ["default"]})));
    let token = token["auth"]["client_token"].as_str().unwrap().to_owned();
    let port: u16 = a.addr().rsplit(':').next().unwrap().parse().unwrap();
    let proxy = vsync_test_harness::Proxy::start(port);
    let c = VaultClient::new(VaultConfig::new(proxy.addr(), Token::new(token))).unwrap();
    let lease = c.lookup_self().await.unwrap();
    let tripwire = Tripwire::new();
    vsync_engine::tokens::spawn_keeper("origin".into(), c.clone(), vsync_engine::tokens::TokenSource::Static, Some(lease), tripwire.clone());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    proxy.set_cut(true);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    proxy.set_cut(false);
    let tripped = tokio::time::timeout(Duration::from_secs(6), tripwire.tripped()).await;
    assert!(tripped.is_err(), "the keeper gave up: {:?}", tripped.map(|f| f.message));
    assert!(c.lookup_self().await.is_ok(), "the token is still valid 10 s after it was created with a 6 s TTL");
}

/// A path mapper that takes `delay` per path (a slow plugin stack).
struct SlowMapper(Duration);

impl vsync_core::PathMapper for SlowMapper {
    fn map_path(&mut self, path: &str, _: &vsync_core::PathContext) -> Result<Option<String>, vsync_core::MapError> {
        std::thread::sleep(self.0);
        Ok(Some(path.to_owned()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_planning_is_cut_by_the_cycle_timeout_and_by_shutdown() {
    // Issue 10 item 8: 200 paths at 50 ms each is 10 s of plugin calls; the cycle timeout is
    // 1 s, and a shutdown after 0.5 s must end the role loop just as fast.
    let (a, b) = (Bao::dev(), Bao::dev());
    let (ca, cb) = (client(&a), client(&b));
    for i in 0..200 {
        ca.write_version("secret/", &format!("k{i}"), &data(json!({"v": i})), 0).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::File(FileStore::open(dir.path()).unwrap());
    let mut spec = dest_spec(&[("secret/", "secret/")]);
    spec.timeout = Duration::from_secs(1);
    spec.uses_plugins = true;
    let mut d = destination(&store, cb.clone(), spec.clone()).await;
    d.mapper = Some(vsync_engine::destination::share(Box::new(SlowMapper(Duration::from_millis(50)))));
    let info = origin::scan(&ca, &origin_spec(), None).await.unwrap();
    let started = std::time::Instant::now();
    let fault = d.cycle(&ca, &info, CycleFlags::default()).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3), "planning ran {:?}", started.elapsed());
    assert!(fault.message.contains("cancelled"), "{fault}");
    assert!(cb.read_metadata("secret/", "k0").await.unwrap().is_none(), "nothing was written");

    // The role loop with a long timeout: the shutdown future ends the planning too.
    drop(d);
    spec.timeout = Duration::from_secs(120);
    let mut d = destination(&store, cb.clone(), spec).await;
    d.mapper = Some(vsync_engine::destination::share(Box::new(SlowMapper(Duration::from_millis(50)))));
    let engine = Engine {
        role: Role::Destination,
        origin_vault: ca.clone(),
        origin_store: store.clone(),
        publisher: None,
        destinations: vec![d],
        alerter: Alerter::new(None),
        tripwire: Tripwire::new(),
        reporter: Box::new(|_| {}),
        telemetry: Default::default(),
        deferred: Default::default(),
        clock: vsync_core::clock::system_clock(),
    };
    // The destination role loads the origin's published info.
    let lock = store.lock_side(vsync_engine::ORIGIN_SIDE).await.unwrap();
    origin::publish(&store, &lock, None, &info).await.unwrap();
    drop(lock);
    let started = std::time::Instant::now();
    let ended = vsync_engine::run(engine, RunOptions::default(), tokio::time::sleep(Duration::from_millis(500))).await.unwrap();
    assert_eq!(ended, Ended::Stopped);
    assert!(started.elapsed() < Duration::from_secs(3), "stopping took {:?}", started.elapsed());
}

/// Maps `k<i>` to `t<(i + 7 * epoch) % 23>`: injective at each epoch, reusing targets over time.
struct Rotating(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl vsync_core::PathMapper for Rotating {
    fn map_path(&mut self, path: &str, _: &vsync_core::PathContext) -> Result<Option<String>, vsync_core::MapError> {
        let i: u64 = path.trim_start_matches('k').parse().map_err(|_| vsync_core::MapError::Other { message: format!("odd path {path}") })?;
        let epoch = self.0.load(std::sync::atomic::Ordering::Relaxed);
        Ok(Some(format!("t{}", (i + 7 * epoch) % 23)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_destination_contents_equal_the_mapped_origin_after_every_cycle() {
    // Issue 10: seeded sequences of creates, updates, deletes and moves (a new mapping epoch);
    // after every cycle the destination's keys and values equal the mapped origin's.
    let sequences: u64 = std::env::var("VSYNC_MODEL_SEQUENCES").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    let mut cycles = 0;
    for (seq, versions) in (0..sequences).flat_map(|s| [(s, VersionsMode::Latest), (s, VersionsMode::All)]) {
        let seed = 0xdead_0000 + seq;
        let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let (a, b) = (Bao::dev(), Bao::dev());
        let (ca, cb) = (client(&a), client(&b));
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::File(FileStore::open(dir.path()).unwrap());
        let epoch = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut spec = dest_spec(&[("secret/", "secret/")]);
        spec.versions = versions;
        spec.uses_plugins = true;
        spec.max_delete_ratio = 1.0;
        let mut d = destination(&store, cb.clone(), spec).await;
        d.mapper = Some(vsync_engine::destination::share(Box::new(Rotating(epoch.clone()))));
        let mut model: BTreeMap<u64, u64> = BTreeMap::new(); // key index -> value
        for step in 0..40u64 {
            let i = next(20);
            match next(6) {
                0..=2 => {
                    let cur = ca.read_metadata("secret/", &format!("k{i}")).await.unwrap().map_or(0, |m| m.current_version);
                    ca.write_version("secret/", &format!("k{i}"), &data(json!({ "v": step })), cur).await.unwrap();
                    model.insert(i, step);
                }
                3 | 4 => {
                    ca.delete_metadata("secret/", &format!("k{i}")).await.unwrap();
                    model.remove(&i);
                }
                _ => {
                    let e = epoch.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                    d.spec.config_hash = format!("epoch-{e}");
                }
            }
            if step % 3 != 2 {
                continue;
            }
            let info = origin::scan(&ca, &origin_spec(), None).await.unwrap();
            let report = d.cycle(&ca, &info, CycleFlags::default()).await.unwrap();
            cycles += 1;
            assert_eq!(report.counts.failed, 0, "seed {seed:#x} step {step}: {report}");
            let e = epoch.load(std::sync::atomic::Ordering::Relaxed);
            let want: BTreeMap<String, String> =
                model.iter().map(|(i, v)| (format!("t{}", (i + 7 * e) % 23), format!(r#"{{"v":{v}}}"#))).collect();
            let listed = cb.list_secrets(&cb.mount_info("secret/").await.unwrap()).await.unwrap();
            let mut got = BTreeMap::new();
            for s in listed {
                if let Some(v) = live(&cb, "secret/", &s.path).await {
                    got.insert(s.path, v);
                }
            }
            assert_eq!(got, want, "seed {seed:#x} ({versions:?}), after step {step}: destination differs from the mapped origin");
        }
    }
    eprintln!("model: {sequences} seeds x 2 modes, {cycles} cycles, destination equal to the mapped origin after each");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_unreachable_destination_does_not_starve_the_others_in_run() {
    // Issue 10 item 6: in `vsync run`, each destination's cycle runs and settles on its own.
    let (a, b) = (Bao::dev(), Bao::dev());
    let (ca, cb) = (client(&a), client(&b));
    ca.write_version("secret/", "x", &data(json!({"v": 1})), 0).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::File(FileStore::open(dir.path()).unwrap());
    let dead = VaultClient::new(VaultConfig::new("http://127.0.0.1:1", Token::new(DEV_ROOT_TOKEN))).unwrap();
    let mut down = dest_spec(&[("secret/", "secret/")]);
    down.name = "down".into();
    let engine = Engine {
        role: Role::Run,
        origin_vault: ca.clone(),
        origin_store: store.clone(),
        publisher: Some(Publisher { spec: origin_spec(), lock: store.lock_side(vsync_engine::ORIGIN_SIDE).await.unwrap(), digest_key: None, audit: None }),
        // The unreachable one first: before the fix its failure ended the round.
        destinations: vec![destination(&store, dead, down).await, destination(&store, cb.clone(), dest_spec(&[("secret/", "secret/")])).await],
        alerter: Alerter::new(None),
        tripwire: Tripwire::new(),
        reporter: Box::new(|_| {}),
        telemetry: Default::default(),
        deferred: Default::default(),
        clock: vsync_core::clock::system_clock(),
    };
    let once = RunOptions { once: true, ..Default::default() };
    let fault = vsync_engine::run(engine, once, std::future::pending()).await.unwrap_err();
    assert!(fault.message.contains("down") || fault.message.contains("127.0.0.1:1"), "{fault}");
    assert_eq!(live(&cb, "secret/", "x").await.as_deref(), Some(r#"{"v":1}"#), "the reachable destination still synced");
}

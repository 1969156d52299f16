//! The event-driven origin against real OpenBao: a socket audit device declared in the origin
//! server's configuration reports (through a loopback proxy the tests can cut) to the feed of a
//! running `Role::Run` engine, with a file audit device beside it. With the scan interval at
//! 60 s only the feed can explain a change arriving in seconds.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::task::JoinHandle;
use vsync_core::{DeletePolicy, DestinationSpec, OriginSpec, VersionsMode};
use vsync_engine::audit::AuditFeed;
use vsync_engine::{Alerter, Destination, Ended, Engine, Event, Fault, Publisher, Role, RunOptions, Tripwire};
use vsync_state::{FileStore, StateStore};
use vsync_test_harness::{Bao, Proxy, audit_devices_hcl};
use vsync_vault::{DataRead, VaultClient};

mod common;
use common::{client, data};

const MOUNTS: [&str; 2] = ["secret/", "v1/"];

fn specs(interval: Duration) -> (OriginSpec, DestinationSpec) {
    let origin = OriginSpec {
        mounts: MOUNTS.iter().map(|m| (*m).to_owned()).collect(),
        interval,
        timeout: Duration::from_secs(120),
        workers: 4,
        buckets: None,
    };
    let dest = DestinationSpec {
        name: "eu".into(),
        labels: BTreeMap::new(),
        mounts: MOUNTS.iter().map(|m| ((*m).to_owned(), (*m).to_owned())).collect(),
        interval,
        timeout: Duration::from_secs(120),
        workers: 4,
        versions: VersionsMode::Latest,
        deletes: DeletePolicy::Mirror,
        max_delete_ratio: 1.0,
        config_hash: "test".into(),
        uses_plugins: false,
    };
    (origin, dest)
}

/// Full scans and event updates the engine reported.
#[derive(Debug, Default)]
struct Seen {
    scans: AtomicUsize,
    updates: AtomicUsize,
    /// When each event update and destination cycle ended, and how many keys it changed.
    timeline: std::sync::Mutex<Vec<(Instant, &'static str, usize)>>,
}

impl Seen {
    fn note(&self, what: &'static str, n: usize) {
        self.timeline.lock().unwrap().push((Instant::now(), what, n));
    }
}

/// An origin whose socket audit device reports through `proxy` to `feed_addr`, a destination,
/// and a file state store.
struct World {
    origin: Bao,
    dest: Bao,
    proxy: Proxy,
    feed_addr: SocketAddr,
    store: StateStore,
    _dir: tempfile::TempDir,
}

async fn world() -> (World, AuditFeed) {
    let feed = AuditFeed::bind("127.0.0.1:0".parse().unwrap(), MOUNTS.iter().map(|m| (*m).to_owned()).collect(), None)
        .await
        .unwrap();
    let feed_addr = feed.local_addr();
    let proxy = Proxy::start(feed_addr.port());
    let dir = tempfile::tempdir().unwrap();
    let hcl = audit_devices_hcl(&format!("127.0.0.1:{}", proxy.port()), &dir.path().join("audit.log"));
    let (origin, dest) = tokio::task::spawn_blocking(move || (Bao::dev_with_config(&hcl), Bao::dev()))
        .await
        .unwrap();
    origin.enable_kv("v1", 1);
    dest.enable_kv("v1", 1);
    let store = StateStore::File(FileStore::open(dir.path().join("state")).unwrap());
    (World { origin, dest, proxy, feed_addr, store, _dir: dir }, feed)
}

/// A running engine and how to stop it.
struct Running {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: JoinHandle<Result<Ended, Fault>>,
    seen: Arc<Seen>,
}

impl Running {
    async fn stop(mut self) {
        drop(self.stop.take());
        assert_eq!(self.task.await.unwrap().unwrap(), Ended::Stopped);
    }
}

async fn start(w: &World, feed: AuditFeed, interval: Duration) -> Running {
    let (origin_spec, dest_spec) = specs(interval);
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    let engine = Engine {
        role: Role::Run,
        origin_vault: client(&w.origin),
        origin_store: w.store.clone(),
        publisher: Some(Publisher {
            spec: origin_spec,
            lock: w.store.lock_side(vsync_engine::ORIGIN_SIDE).await.unwrap(),
            digest_key: None,
            audit: Some(feed),
        }),
        destinations: vec![Destination {
            lock: w.store.lock_side(&vsync_engine::side_name(&dest_spec.name)).await.unwrap(),
            spec: dest_spec,
            vault: client(&w.dest),
            store: w.store.clone(),
            mapper: None,
            digest_key: None,
            progress: None,
            clock: vsync_core::clock::system_clock(),
        }],
        alerter: Alerter::new(None),
        telemetry: Default::default(),
        deferred: Default::default(),
        clock: vsync_core::clock::system_clock(),
        tripwire: Tripwire::new(),
        reporter: Box::new(move |e| match e {
            Event::OriginScanned { .. } => {
                s.scans.fetch_add(1, Ordering::SeqCst);
            }
            Event::OriginUpdated { changed, .. } => {
                s.updates.fetch_add(1, Ordering::SeqCst);
                s.note("origin update", *changed);
            }
            Event::DestinationCycle { report, .. } => s.note("destination cycle", report.counts.added + report.counts.updated),
        }),
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(vsync_engine::run(engine, RunOptions::default(), async move {
        let _ = rx.await;
    }));
    Running { stop: Some(tx), task, seen }
}

async fn live(c: &VaultClient, mount: &str, path: &str) -> Option<String> {
    if mount == "v1/" {
        return c.read_v1(mount, path).await.unwrap().map(|d| d.as_json().to_owned());
    }
    match c.read_latest(mount, path).await.unwrap() {
        DataRead::Live(d, _) => Some(d.as_json().to_owned()),
        _ => None,
    }
}

/// Polls until the destination holds `want` at `mount` `path` (`None`: absent); the time it
/// took, or panics after `limit`.
async fn arrives(c: &VaultClient, mount: &str, path: &str, want: Option<&str>, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if live(c, mount, path).await.as_deref() == want {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "`{mount}{path}` is not {want:?} at the destination after {limit:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// How many keys under `prefix` the destination's `secret/` holds.
async fn count(c: &VaultClient, prefix: &str) -> usize {
    let info = c.mount_info("secret/").await.unwrap();
    c.list_secrets(&info).await.unwrap().iter().filter(|s| s.path.starts_with(prefix)).count()
}

const QUICK: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_deletes_and_a_burst_arrive_through_the_feed_without_a_scan() {
    let (w, feed) = world().await;
    let (ca, cb) = (client(&w.origin), client(&w.dest));
    ca.write_version("secret/", "seed", &data(json!({"v": 0})), 0).await.unwrap();
    let run = start(&w, feed, Duration::from_secs(60)).await;
    arrives(&cb, "secret/", "seed", Some(r#"{"v":0}"#), Duration::from_secs(30)).await;
    assert_eq!(run.seen.scans.load(Ordering::SeqCst), 1, "the start-up scan");

    // A KV v2 write, an update, a soft delete of the current version, a metadata delete.
    ca.write_version("secret/", "app/one", &data(json!({"v": 1})), 0).await.unwrap();
    let took = arrives(&cb, "secret/", "app/one", Some(r#"{"v":1}"#), QUICK).await;
    println!("one write: at the destination after {took:?}");
    ca.write_version("secret/", "app/one", &data(json!({"v": 2})), 1).await.unwrap();
    arrives(&cb, "secret/", "app/one", Some(r#"{"v":2}"#), QUICK).await;
    ca.soft_delete_latest("secret/", "app/one").await.unwrap();
    arrives(&cb, "secret/", "app/one", None, QUICK).await;
    ca.write_version("secret/", "app/two", &data(json!({"v": 1})), 0).await.unwrap();
    arrives(&cb, "secret/", "app/two", Some(r#"{"v":1}"#), QUICK).await;
    ca.delete_metadata("secret/", "app/two").await.unwrap();
    arrives(&cb, "secret/", "app/two", None, QUICK).await;
    assert!(cb.read_metadata("secret/", "app/two").await.unwrap().is_none(), "deletes mirror: the key is gone");

    // KV v1: a write and a delete.
    ca.write_v1("v1/", "plain", &data(json!({"p": 1}))).await.unwrap();
    arrives(&cb, "v1/", "plain", Some(r#"{"p":1}"#), QUICK).await;
    ca.delete_v1("v1/", "plain").await.unwrap();
    arrives(&cb, "v1/", "plain", None, QUICK).await;

    // A burst of 2,000 writes from 8 concurrent writers.
    let burst_started = Instant::now();
    let mut writers = tokio::task::JoinSet::new();
    for t in 0..8 {
        let ca = ca.clone();
        writers.spawn(async move {
            for i in (t..2000).step_by(8) {
                ca.write_version("secret/", &format!("burst/{}/k{i}", i % 20), &data(json!({"i": i})), 0).await.unwrap();
            }
        });
    }
    while let Some(r) = writers.join_next().await {
        r.unwrap();
    }
    let last_write = Instant::now();
    loop {
        let n = count(&cb, "burst/").await;
        if n == 2000 {
            break;
        }
        assert!(last_write.elapsed() < Duration::from_secs(20), "{n} of 2000 burst keys at the destination 20 s after the last write");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after_last = last_write.elapsed();
    println!(
        "burst of 2000 writes: written in {:?}, all at the destination {after_last:?} after the last write ({} event updates)",
        last_write - burst_started,
        run.seen.updates.load(Ordering::SeqCst)
    );
    for (at, what, n) in run.seen.timeline.lock().unwrap().iter().filter(|(at, ..)| *at >= burst_started) {
        let t = at.duration_since(burst_started).as_secs_f64() - (last_write - burst_started).as_secs_f64();
        println!("  {t:+.3} s (from the last write): {what}, {n} keys");
    }
    assert_eq!(live(&cb, "secret/", "burst/19/k1999").await.as_deref(), Some(r#"{"i":1999}"#));
    assert_eq!(run.seen.scans.load(Ordering::SeqCst), 1, "every change came through the feed, without another scan");
    assert!(run.seen.updates.load(Ordering::SeqCst) >= 8);
    // The audit lines never reach the state store: nothing HMAC'd in it.
    for entry in walk(w._dir.path().join("state")) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("hmac-sha256"), "{} holds audit content", entry.display());
    }
    run.stop().await;
}

fn walk(dir: std::path::PathBuf) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_connection_recovers_the_scan_repairs_a_missed_event_and_a_restart_catches_up() {
    let (w, feed) = world().await;
    let (ca, cb) = (client(&w.origin), client(&w.dest));
    let interval = Duration::from_secs(5);
    let run = start(&w, feed, interval).await;
    ca.write_version("secret/", "before", &data(json!({"v": 1})), 0).await.unwrap();
    arrives(&cb, "secret/", "before", Some(r#"{"v":1}"#), QUICK).await;

    // The device cannot reach vsync: the server writes the file device only and answers; the
    // socket device's event for this write is lost.
    w.proxy.set_cut(true);
    let scans_before = run.seen.scans.load(Ordering::SeqCst);
    ca.write_version("secret/", "missed", &data(json!({"v": 1})), 0).await.unwrap();
    w.proxy.set_cut(false);

    // The device reconnects on the next write: events flow again.
    ca.write_version("secret/", "after", &data(json!({"v": 1})), 0).await.unwrap();
    let took = arrives(&cb, "secret/", "after", Some(r#"{"v":1}"#), QUICK).await;
    println!("first write after the cut: at the destination after {took:?}");

    // The periodic scan repairs the missed event.
    arrives(&cb, "secret/", "missed", Some(r#"{"v":1}"#), interval * 3).await;
    // Usually a scan brought it (the backstop, or the feed's rescan after the drop). The cut
    // cannot always make the server lose the event (a write into a connection the proxy is
    // closing may still be read and replayed on reconnect), so only its arrival is asserted
    // here; the while-down case below loses events for certain and asserts the scan.
    let scanned = run.seen.scans.load(Ordering::SeqCst) > scans_before;
    println!("the write made while the link was cut arrived {}", if scanned { "with a scan" } else { "through the feed" });
    run.stop().await;

    // vsync down: writes still succeed (the file device), and nobody hears of them.
    ca.write_version("secret/", "while-down", &data(json!({"v": 1})), 0).await.unwrap();
    // Restarted on the same address: the start-up scan catches up, then events flow again.
    let feed = rebind(w.feed_addr).await;
    let run = start(&w, feed, Duration::from_secs(60)).await;
    arrives(&cb, "secret/", "while-down", Some(r#"{"v":1}"#), Duration::from_secs(30)).await;
    ca.write_version("secret/", "restarted", &data(json!({"v": 1})), 0).await.unwrap();
    arrives(&cb, "secret/", "restarted", Some(r#"{"v":1}"#), QUICK).await;
    assert_eq!(run.seen.scans.load(Ordering::SeqCst), 1, "after the start-up scan, the feed alone");
    run.stop().await;
}

/// Binds a new feed on the address a stopped one used (its listener closes as its task ends).
async fn rebind(addr: SocketAddr) -> AuditFeed {
    let started = Instant::now();
    loop {
        match AuditFeed::bind(addr, MOUNTS.iter().map(|m| (*m).to_owned()).collect(), None).await {
            Ok(f) => return f,
            Err(e) => {
                assert!(started.elapsed() < Duration::from_secs(10), "{e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

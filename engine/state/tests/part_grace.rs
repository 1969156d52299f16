//! Readers of a side racing its writer's garbage collection (issue 18, item 7), on the file
//! store, Consul (the in-process emulator, real HTTP on loopback) and the memory store: a
//! reader holding an old root still finds its parts for `PART_GRACE` after newer commits;
//! after the grace they are collected; a loader racing a writer that commits every few
//! milliseconds never sees `Corrupt`; a part missing under an unchanged root still is
//! `Corrupt`; a broken retired-parts document never fails a commit.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use vsync_consul_emulator::Emulator;
use vsync_core::{KvVersion, OriginEntry, SecretPath, SyncInfo};
use vsync_state::consul::{ConsulClient, ConsulConfig};
use vsync_state::info::{InfoRoot, LoadedInfo, PART_GRACE, RETIRED_DOC, commit_at, load};
use vsync_state::{ConsulStore, FileStore, MemoryStore, StateError, StateStore};

fn memory_backend() -> Backend {
    Backend { store: StateStore::memory(MemoryStore::new("part-grace")), _dir: None, emu: None }
}

/// A store of one kind, with what keeps it alive.
struct Backend {
    store: StateStore,
    _dir: Option<tempfile::TempDir>,
    emu: Option<Emulator>,
}

fn file_backend() -> Backend {
    // On tmpfs when there is one: the races below want a writer that commits every few
    // milliseconds, and each part's fsync on a shared disk would slow it to one commit per
    // 100 ms or more, hiding the race.
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() }.unwrap();
    let store = StateStore::File(FileStore::open(dir.path()).unwrap());
    Backend { store, _dir: Some(dir), emu: None }
}

fn consul_backend() -> Backend {
    let emu = Emulator::start();
    let mut cfg = ConsulConfig::new(emu.url());
    cfg.request_timeout = Duration::from_secs(10);
    let store = StateStore::Consul(ConsulStore::new(ConsulClient::new(cfg).unwrap(), "vsync/").unwrap());
    Backend { store, _dir: None, emu: Some(emu) }
}

fn entry(v: u64) -> OriginEntry {
    OriginEntry {
        kind: KvVersion::V2,
        current_version: v,
        created_time: "2026-11-22T10:09:20Z".into(),
        current_live: true,
        digest: None,
    }
}

fn key(i: usize) -> SecretPath {
    SecretPath::new("secret/", format!("team-{}/app/key-{i}", i % 7))
}

/// `n` keys in `buckets` buckets; `version` changes every entry, so every part changes.
fn info(buckets: u32, n: usize, version: u64) -> SyncInfo {
    SyncInfo::from_entries(buckets, (0..n).map(|i| (key(i), entry(version + i as u64))))
}

async fn base(store: &StateStore) -> Option<u64> {
    store.read_root("origin").await.unwrap().map(|r| r.version)
}

/// Every part a root references (bucket parts; these infos are small enough to need no index).
async fn parts_of_current_root(store: &StateStore) -> Vec<String> {
    let root: InfoRoot = serde_json::from_slice(&store.read_root("origin").await.unwrap().unwrap().bytes).unwrap();
    assert!(root.index.is_empty());
    root.buckets.into_iter().flat_map(|b| b.parts).collect()
}

async fn present(store: &StateStore, parts: &[String]) -> usize {
    let mut n = 0;
    for p in parts {
        if store.read_part("origin", p).await.unwrap().is_some() {
            n += 1;
        }
    }
    n
}

/// Removes one part behind the writer's back.
async fn remove_part(store: &StateStore, part: &str) {
    if let Some(f) = store.as_file() {
        std::fs::remove_file(f.dir().join("origin.buckets").join(format!("{part}.json"))).unwrap();
    } else if let Some(c) = store.as_consul() {
        c.client().delete(&format!("vsync/origin/parts/{part}")).await.unwrap();
    } else {
        assert!(store.as_memory().unwrap().remove_part("origin", part));
    }
}

async fn reader_keeps_its_parts_for_the_grace_then_they_go(store: &StateStore) {
    let lock = store.lock_side("origin").await.unwrap();
    let t0 = SystemTime::now();
    let first = info(4, 200, 0);
    assert!(commit_at(store, &lock, None, BTreeMap::new(), None, &first, &first.digests(), t0).await.unwrap());
    // A slow reader read this root and has not fetched its parts yet.
    let held = parts_of_current_root(store).await;
    assert_eq!(held.len(), 4);
    // Four newer generations, one second apart, each replacing every part.
    for g in 1..=4u64 {
        let next = info(4, 200, g * 1000);
        let now = t0 + Duration::from_secs(g);
        assert!(commit_at(store, &lock, base(store).await, BTreeMap::new(), None, &next, &next.digests(), now).await.unwrap());
    }
    assert_eq!(present(store, &held).await, held.len(), "within the grace, the old root's parts are all still there");
    let latest = parts_of_current_root(store).await;
    // After the grace, the next commit collects them; parts it drops itself start their grace.
    let last = info(4, 200, 9000);
    let after = t0 + Duration::from_secs(4) + PART_GRACE + Duration::from_secs(2);
    assert!(commit_at(store, &lock, base(store).await, BTreeMap::new(), None, &last, &last.digests(), after).await.unwrap());
    assert_eq!(present(store, &held).await, 0, "retired longer than the grace ago: collected");
    assert_eq!(present(store, &latest).await, latest.len(), "just retired: kept");
    let stored: HashSet<String> = store.list_parts("origin").await.unwrap().into_iter().collect();
    let current = parts_of_current_root(store).await;
    assert_eq!(stored.len(), current.len() + latest.len(), "only the current and the just-retired parts: {stored:?}");
    let retired: serde_json::Value = serde_json::from_slice(&store.read_doc("origin", RETIRED_DOC).await.unwrap().unwrap()).unwrap();
    assert_eq!(retired["parts"].as_object().unwrap().len(), latest.len(), "{retired}");
    let loaded: LoadedInfo<OriginEntry> = load(store, "origin").await.unwrap().unwrap();
    assert_eq!(loaded.buckets, last);
}

#[tokio::test]
async fn file_store_reader_keeps_its_parts_for_the_grace_then_they_go() {
    reader_keeps_its_parts_for_the_grace_then_they_go(&file_backend().store).await;
}

#[tokio::test]
async fn consul_reader_keeps_its_parts_for_the_grace_then_they_go() {
    reader_keeps_its_parts_for_the_grace_then_they_go(&consul_backend().store).await;
}

#[tokio::test]
async fn memory_reader_keeps_its_parts_for_the_grace_then_they_go() {
    reader_keeps_its_parts_for_the_grace_then_they_go(&memory_backend().store).await;
}

/// How the racing writer's clock moves.
#[derive(Clone, Copy, PartialEq, Debug)]
enum WriterClock {
    /// The real clock: every commit within the grace of the others.
    Real,
    /// Each commit a grace period after the previous one: only the previous root's parts are
    /// kept, so slow loads lose parts and must reload (the backstop alone).
    GraceEachCommit,
}

#[derive(Debug, Default)]
struct Outcomes {
    loads: AtomicU64,
    churn: AtomicU64,
    commits: AtomicU64,
}

/// A writer committing in a loop for `run` while three loaders load a large info (20,000
/// entries in 256 buckets) repeatedly.
/// Returns the outcome counts; panics on any error but `RootChurn` (and on that too with the
/// real clock).
async fn race(store: &StateStore, clock: WriterClock, run: Duration) -> Arc<Outcomes> {
    let n = 20_000;
    let lock = store.lock_side("origin").await.unwrap();
    let start = info(256, n, 0);
    assert!(commit_at(store, &lock, None, BTreeMap::new(), None, &start, &start.digests(), SystemTime::now()).await.unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(Outcomes::default());
    let writer = {
        let (store, stop, outcomes) = (store.clone(), stop.clone(), outcomes.clone());
        tokio::spawn(async move {
            let (began, t0) = (Instant::now(), SystemTime::now());
            let mut current = start;
            let mut round = 0u64;
            // At least 10 commits, however loaded the machine.
            while began.elapsed() < run || round < 10 {
                round += 1;
                // Change 4 keys spread over the buckets: about 4 parts retire per commit, so
                // a commit is quick while a load reads all 256 buckets.
                for j in 0..4 {
                    let i = (round as usize * 4 + j * 4_999) % n;
                    current.insert(key(i), entry(1_000_000 + round));
                }
                let now = match clock {
                    WriterClock::Real => SystemTime::now(),
                    WriterClock::GraceEachCommit => t0 + (PART_GRACE + Duration::from_secs(1)) * round as u32,
                };
                let base = store.read_root("origin").await.unwrap().map(|r| r.version);
                commit_at(&store, &lock, base, BTreeMap::new(), None, &current, &current.digests(), now).await.unwrap();
                outcomes.commits.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            stop.store(true, Ordering::Relaxed);
        })
    };
    let mut loaders = Vec::new();
    for _ in 0..3 {
        let (store, stop, outcomes) = (store.clone(), stop.clone(), outcomes.clone());
        loaders.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match load::<OriginEntry>(&store, "origin").await {
                    Ok(Some(loaded)) => {
                        assert_eq!(loaded.buckets.len(), n);
                        outcomes.loads.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(StateError::RootChurn { .. }) if clock == WriterClock::GraceEachCommit => {
                        outcomes.churn.fetch_add(1, Ordering::Relaxed);
                    }
                    other => panic!("{clock:?}: a load racing the writer failed: {other:?}"),
                }
            }
        }));
    }
    writer.await.unwrap();
    for l in loaders {
        l.await.unwrap();
    }
    eprintln!("{clock:?}: {outcomes:?}");
    outcomes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store_loaders_racing_a_fast_writer_never_see_corrupt() {
    let o = race(&file_backend().store, WriterClock::Real, Duration::from_secs(2)).await;
    assert!(o.loads.load(Ordering::Relaxed) > 0 && o.churn.load(Ordering::Relaxed) == 0, "{o:?}");
    race(&file_backend().store, WriterClock::GraceEachCommit, Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_loaders_racing_a_fast_writer_never_see_corrupt() {
    // A few milliseconds per request, as to a Consul server in the next zone: a load is 256
    // reads, a commit about 8 requests.
    let backend = consul_backend();
    backend.emu.as_ref().unwrap().faults().latency(Duration::from_millis(2));
    let o = race(&backend.store, WriterClock::Real, Duration::from_secs(2)).await;
    assert!(o.loads.load(Ordering::Relaxed) > 0 && o.churn.load(Ordering::Relaxed) == 0, "{o:?}");
    let backend = consul_backend();
    backend.emu.as_ref().unwrap().faults().latency(Duration::from_millis(2));
    race(&backend.store, WriterClock::GraceEachCommit, Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_loaders_racing_a_fast_writer_never_see_corrupt() {
    let o = race(&memory_backend().store, WriterClock::Real, Duration::from_secs(1)).await;
    assert!(o.loads.load(Ordering::Relaxed) > 0 && o.churn.load(Ordering::Relaxed) == 0, "{o:?}");
    race(&memory_backend().store, WriterClock::GraceEachCommit, Duration::from_secs(1)).await;
}

async fn missing_part_under_an_unchanged_root_is_corrupt(store: &StateStore) {
    let lock = store.lock_side("origin").await.unwrap();
    let first = info(4, 200, 0);
    assert!(commit_at(store, &lock, None, BTreeMap::new(), None, &first, &first.digests(), SystemTime::now()).await.unwrap());
    let parts = parts_of_current_root(store).await;
    remove_part(store, &parts[2]).await;
    let began = Instant::now();
    let err = load::<OriginEntry>(store, "origin").await.unwrap_err();
    assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains(&parts[2]) && err.to_string().contains("has not changed"), "{err}");
    assert!(began.elapsed() < Duration::from_secs(2), "no retries under an unchanged root");
}

#[tokio::test]
async fn file_store_missing_part_under_an_unchanged_root_is_corrupt() {
    missing_part_under_an_unchanged_root_is_corrupt(&file_backend().store).await;
}

#[tokio::test]
async fn consul_missing_part_under_an_unchanged_root_is_corrupt() {
    missing_part_under_an_unchanged_root_is_corrupt(&consul_backend().store).await;
}

#[tokio::test]
async fn memory_missing_part_under_an_unchanged_root_is_corrupt() {
    missing_part_under_an_unchanged_root_is_corrupt(&memory_backend().store).await;
}

async fn a_broken_retired_doc_never_fails_a_commit(store: &StateStore) {
    let lock = store.lock_side("origin").await.unwrap();
    let t0 = SystemTime::now();
    let first = info(4, 200, 0);
    assert!(commit_at(store, &lock, None, BTreeMap::new(), None, &first, &first.digests(), t0).await.unwrap());
    let oldest = parts_of_current_root(store).await;
    let second = info(4, 200, 1000);
    assert!(commit_at(store, &lock, base(store).await, BTreeMap::new(), None, &second, &second.digests(), t0).await.unwrap());
    let previous = parts_of_current_root(store).await;
    // Garbage in the retired document: the next commit collects at once what it cannot date,
    // keeps the root it replaces, and writes a valid document again.
    store.write_doc("origin", RETIRED_DOC, b"{not json").await.unwrap();
    let third = info(4, 200, 2000);
    assert!(commit_at(store, &lock, base(store).await, BTreeMap::new(), None, &third, &third.digests(), t0).await.unwrap());
    assert_eq!(present(store, &oldest).await, 0, "undated unreferenced parts: collected at once");
    assert_eq!(present(store, &previous).await, previous.len(), "the replaced root's parts: kept");
    let doc = store.read_doc("origin", RETIRED_DOC).await.unwrap().unwrap();
    let retired: serde_json::Value = serde_json::from_slice(&doc).unwrap();
    assert_eq!(retired["parts"].as_object().unwrap().len(), previous.len(), "{retired}");
    // A missing document: the same.
    store.delete_doc("origin", RETIRED_DOC).await.unwrap();
    let fourth = info(4, 200, 3000);
    assert!(commit_at(store, &lock, base(store).await, BTreeMap::new(), None, &fourth, &fourth.digests(), t0).await.unwrap());
    assert_eq!(present(store, &previous).await, 0);
    let loaded: LoadedInfo<OriginEntry> = load(store, "origin").await.unwrap().unwrap();
    assert_eq!(loaded.buckets, fourth);
}

#[tokio::test]
async fn file_store_a_broken_retired_doc_never_fails_a_commit() {
    a_broken_retired_doc_never_fails_a_commit(&file_backend().store).await;
}

#[tokio::test]
async fn consul_a_broken_retired_doc_never_fails_a_commit() {
    a_broken_retired_doc_never_fails_a_commit(&consul_backend().store).await;
}

#[tokio::test]
async fn memory_a_broken_retired_doc_never_fails_a_commit() {
    a_broken_retired_doc_never_fails_a_commit(&memory_backend().store).await;
}


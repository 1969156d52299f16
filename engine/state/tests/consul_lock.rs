//! One writer per side on Consul, against the in-process emulator (real HTTP on loopback) with
//! short session TTLs: a standby waits and names the holder, takes over when the holder's
//! session ends (after the lock-delay) or at once when it releases, a lock whose renewal fails
//! is lost, and a writer that lost its lock commits nothing through `info::commit`, so the
//! generation never goes backwards.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vsync_consul_emulator::{Emulator, EmulatorConfig};
use vsync_core::{KvVersion, OriginEntry, SecretPath, SyncInfo};
use vsync_state::consul::{ConsulClient, ConsulConfig};
use vsync_state::info::{LoadedInfo, commit, load};
use vsync_state::{ConsulStore, FileStore, Holder, LockOptions, StateError, StateStore, StoreLock};

fn emulator() -> Emulator {
    Emulator::start_with(EmulatorConfig { session_ttl_min: Duration::from_millis(200), ..Default::default() })
}

fn store(emu: &Emulator) -> StateStore {
    let mut cfg = ConsulConfig::new(emu.url());
    cfg.request_timeout = Duration::from_secs(5);
    StateStore::Consul(ConsulStore::new(ConsulClient::new(cfg).unwrap(), "vsync/").unwrap())
}

fn options(holder: &str, ttl_ms: u64, delay_ms: u64) -> LockOptions {
    LockOptions {
        holder: holder.into(),
        ttl: Duration::from_millis(ttl_ms),
        lock_delay: Duration::from_millis(delay_ms),
    }
}

fn info(version: u64) -> SyncInfo {
    let entry = |v| OriginEntry { kind: KvVersion::V2, current_version: v, created_time: "2026-11-22T10:09:20Z".into(), current_live: true, digest: None };
    SyncInfo::from_entries(2, (0..10).map(|i| (SecretPath::new("secret/", format!("k{i}")), entry(version + i))))
}

fn mounts() -> BTreeMap<String, String> {
    [("secret/".to_owned(), "uuid-1".to_owned())].into()
}

async fn base(store: &StateStore) -> Option<u64> {
    store.read_root("origin").await.unwrap().map(|r| r.version)
}

async fn generation(store: &StateStore) -> u64 {
    let loaded: LoadedInfo<OriginEntry> = load(store, "origin").await.unwrap().unwrap();
    loaded.root.generation
}

fn session_of(lock: &StoreLock) -> String {
    lock.as_consul().expect("a Consul lock").session().to_owned()
}

/// A standby's lock and when it got it.
type Standby = tokio::task::JoinHandle<(StoreLock, Instant)>;

/// Starts a standby for `side` in the background; returns its lock (when it gets it) and what it
/// heard about the holder.
fn standby(store: &StateStore, opts: LockOptions) -> (Standby, Arc<Mutex<Vec<Holder>>>) {
    let heard = Arc::new(Mutex::new(Vec::new()));
    let (store, seen) = (store.clone(), heard.clone());
    let task = tokio::spawn(async move {
        let mut on_wait = |h: &Holder| seen.lock().unwrap().push(h.clone());
        let lock = store.lock_side_with("origin", &opts, &mut on_wait).await.unwrap();
        (lock, Instant::now())
    });
    (task, heard)
}

async fn destroy(emu: &Emulator, session: &str) {
    let r = reqwest::Client::new().put(format!("{}/v1/session/destroy/{session}", emu.url())).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

// Two writers of one side through the public commit path: the standby commits nothing while it
// waits; a writer whose session ended (it has not noticed yet: long TTL, no renewal due) gets
// LockLost from the txn's check-session and the root stays; after the takeover the new writer
// commits; the old writer's older scan, committed against its old base, is a Conflict. The
// generation only ever goes up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_lost_its_lock_commits_nothing_and_generations_never_go_back() {
    let emu = emulator();
    let (a, b) = (store(&emu), store(&emu));
    // A renews only every 5 s: it still believes it holds the lock when its session ends.
    let lock_a = a.lock_side_with("origin", &options("writer-a", 10_000, 500), &mut |_: &Holder| {}).await.unwrap();
    assert!(commit(&a, &lock_a, None, mounts(), None, &info(1), &info(1).digests()).await.unwrap());
    assert_eq!(generation(&a).await, 1);

    let (waiting, heard) = standby(&b, options("writer-b", 1_000, 500));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the standby waits while A holds the lock");
    let first = heard.lock().unwrap().first().cloned().expect("the standby reported the holder");
    assert_eq!(first.holder.as_deref(), Some("writer-a"));
    assert!(first.to_string().contains("vsync/origin/lock") && first.to_string().contains("writer-a"), "{first}");

    // A's "scan" starts from generation 1; then its session ends behind its back.
    let a_base = base(&a).await;
    destroy(&emu, &session_of(&lock_a)).await;
    assert!(lock_a.is_held(), "A has not noticed yet (its next renewal is seconds away)");
    let err = commit(&a, &lock_a, a_base, mounts(), None, &info(100), &info(100).digests()).await.unwrap_err();
    assert!(matches!(err, StateError::LockLost { .. }), "{err}");
    assert!(err.to_string().contains("vsync/origin/lock"), "{err}");
    assert_eq!(generation(&a).await, 1, "nothing of A's commit is visible");

    // B takes over once the lock-delay passed, and commits against what it read after that.
    let (lock_b, _) = tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("B took over").unwrap();
    let b_base = base(&b).await;
    assert!(commit(&b, &lock_b, b_base, mounts(), None, &info(200), &info(200).digests()).await.unwrap());
    assert_eq!(generation(&b).await, 2);

    // A's older scan, committed against its old base, changes nothing either.
    let err = commit(&a, &lock_a, a_base, mounts(), None, &info(100), &info(100).digests()).await.unwrap_err();
    assert!(matches!(err, StateError::Conflict { .. } | StateError::LockLost { .. }), "{err}");
    let loaded: LoadedInfo<OriginEntry> = load(&b, "origin").await.unwrap().unwrap();
    assert_eq!((loaded.root.generation, loaded.buckets), (2, info(200)), "B's commit stands");
    lock_b.release().await;
}

// A holder that dies (its session is invalidated) is taken over after the lock-delay; one that
// releases is taken over at once, without waiting for the lock-delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_after_the_holders_session_ends_or_at_once_after_a_release() {
    let emu = emulator();
    let s = store(&emu);
    let lock_a = s.lock_side_with("origin", &options("writer-a", 1_000, 1_000), &mut |_: &Holder| {}).await.unwrap();
    let (waiting, heard) = standby(&s, options("writer-b", 1_000, 1_000));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ended = Instant::now();
    destroy(&emu, &session_of(&lock_a)).await;
    let (lock_b, took_over) = tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("B took over").unwrap();
    let took = took_over - ended;
    println!("takeover {took:?} after the holder's session ended (1 s lock-delay)");
    assert!(took >= Duration::from_millis(900), "not before the lock-delay: {took:?}");
    assert!(took < Duration::from_millis(2500), "{took:?}");
    assert!(heard.lock().unwrap().iter().any(|h| h.holder.is_none()), "the standby saw the lock-delay: {:?}", heard.lock().unwrap());
    assert_eq!(emu.get("vsync/origin/lock").as_deref(), Some(&b"writer-b"[..]), "the lock names its new holder");
    // A notices within a renewal period.
    tokio::time::timeout(Duration::from_secs(2), lock_a.lost()).await.expect("A's lock is lost");
    assert!(!lock_a.is_held());

    // A release hands over at once (the 5 s lock-delay does not apply to a release).
    let (waiting, _) = standby(&s, options("writer-c", 1_000, 5_000));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let released = Instant::now();
    lock_b.release().await;
    let (lock_c, took_over) = tokio::time::timeout(Duration::from_secs(3), waiting).await.expect("C took over").unwrap();
    println!("takeover {:?} after a release", took_over - released);
    assert!(took_over - released < Duration::from_secs(1));
    lock_c.release().await;
    assert!(emu.lock_holder("vsync/origin/lock").is_none());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(emu.sessions().is_empty(), "no session left behind: {:?}", emu.sessions());
}

// A lock whose renewal keeps failing is lost within one TTL of its last successful renewal
// (`lost()` resolves, commits refuse), and regained once Consul answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_whose_renewal_fails_is_lost_then_regained() {
    let emu = emulator();
    let s = store(&emu);
    let mut lock = s.lock_side_with("origin", &options("writer-a", 1_000, 200), &mut |_: &Holder| {}).await.unwrap();
    assert!(lock.is_held());
    let broken = Instant::now();
    emu.faults().fail_next(500, 1_000_000);
    tokio::time::timeout(Duration::from_secs(3), lock.lost()).await.expect("the lock is lost");
    let took = broken.elapsed();
    println!("lost {took:?} after Consul started failing (1 s TTL)");
    assert!(took <= Duration::from_millis(1_800), "within TTL (+ one renewal period): {took:?}");
    emu.faults().fail_next(500, 0);
    let err = commit(&s, &lock, None, mounts(), None, &info(1), &info(1).digests()).await.unwrap_err();
    assert!(matches!(err, StateError::LockLost { .. }), "{err}");
    assert!(emu.get("vsync/origin/root").is_none(), "nothing committed");
    // Back to standby: the old session expires (2 x TTL) or was destroyed, then it is ours again.
    let mut heard = Vec::new();
    tokio::time::timeout(Duration::from_secs(6), lock.regain(&mut |h: &Holder| heard.push(h.clone())))
        .await
        .expect("regained")
        .unwrap();
    assert!(lock.is_held());
    assert!(commit(&s, &lock, None, mounts(), None, &info(1), &info(1).digests()).await.unwrap());
    lock.release().await;
}

// The file store keeps its OS lock: a second writer of a side fails at once, naming the file.
#[tokio::test]
async fn the_file_store_refuses_a_second_writer_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let a = StateStore::File(FileStore::open(dir.path()).unwrap());
    let b = StateStore::File(FileStore::open(dir.path()).unwrap());
    let held = a.lock_side("origin").await.unwrap();
    assert!(held.is_held());
    let started = Instant::now();
    let err = b.lock_side("origin").await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(matches!(err, StateError::Locked { .. }), "{err}");
    assert!(err.to_string().contains("origin.lock"), "{err}");
    held.release().await;
    b.lock_side("origin").await.unwrap();
}

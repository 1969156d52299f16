//! The memory store through the public interface, on a single-threaded runtime with tokio's
//! paused clock (as the simulator runs it): commits and conflicts, injected transient
//! failures before and after an operation applies, a lost lock and its standby, a reader
//! racing garbage collection step by step, watches, and that a run is reproducible.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use vsync_core::{KvVersion, OriginEntry, SecretPath, SyncInfo};
use vsync_state::info::{LoadedInfo, PART_GRACE, commit, commit_at, load};
use vsync_state::{Holder, LockOptions, MemoryOp, MemoryStore, StateError, StateStore};

fn entry(v: u64) -> OriginEntry {
    OriginEntry {
        kind: KvVersion::V2,
        current_version: v,
        created_time: "2026-11-22T10:09:20Z".into(),
        current_live: true,
        digest: None,
    }
}

/// `n` keys in 4 buckets; `version` changes every entry, so every part changes.
fn info(n: usize, version: u64) -> SyncInfo {
    SyncInfo::from_entries(4, (0..n).map(|i| (SecretPath::new("secret/", format!("k{i}")), entry(version + i as u64))))
}

fn mounts() -> BTreeMap<String, String> {
    [("secret/".to_owned(), "uuid-1".to_owned())].into()
}

fn memory() -> (MemoryStore, StateStore) {
    let mem = MemoryStore::new("test");
    (mem.clone(), StateStore::memory(mem))
}

async fn base(store: &StateStore) -> Option<u64> {
    store.read_root("origin").await.unwrap().map(|r| r.version)
}

async fn generation(store: &StateStore) -> u64 {
    let loaded: LoadedInfo<OriginEntry> = load(store, "origin").await.unwrap().unwrap();
    loaded.root.generation
}

fn holder(name: &str) -> LockOptions {
    LockOptions { holder: name.into(), ..LockOptions::default() }
}

#[tokio::test(start_paused = true)]
async fn commit_load_noop_and_an_old_base_conflicts() {
    let (mem, store) = memory();
    let lock = store.lock_side("origin").await.unwrap();
    assert_eq!(store.describe(), "memory store `test`");
    assert!(commit(&store, &lock, None, mounts(), None, &info(50, 1), &info(50, 1).digests()).await.unwrap());
    let seen = base(&store).await;
    assert!(!commit(&store, &lock, seen, mounts(), None, &info(50, 1), &info(50, 1).digests()).await.unwrap(), "no change, no write");
    assert_eq!(base(&store).await, seen);
    assert!(commit(&store, &lock, seen, mounts(), None, &info(50, 100), &info(50, 100).digests()).await.unwrap());
    let err = commit(&store, &lock, seen, mounts(), None, &info(50, 200), &info(50, 200).digests()).await.unwrap_err();
    assert!(matches!(err, StateError::Conflict { .. }), "{err}");
    let loaded: LoadedInfo<OriginEntry> = load(&store, "origin").await.unwrap().unwrap();
    assert_eq!((loaded.root.generation, loaded.buckets), (2, info(50, 100)));
    assert_eq!(mem.parts("origin").len(), 8, "4 current parts and the 4 just retired");
    store.probe("origin").await.unwrap();
    assert_eq!(mem.holder("origin").as_deref(), Some(LockOptions::default().holder.as_str()));
}

#[tokio::test(start_paused = true)]
async fn injected_failures_fail_before_or_after_applying() {
    let (mem, store) = memory();
    let lock = store.lock_side("origin").await.unwrap();
    // Before: the commit fails and nothing of it is visible; transient, so the next succeeds.
    mem.fail_next(MemoryOp::SwapRoot, 1);
    let err = commit(&store, &lock, None, mounts(), None, &info(10, 1), &info(10, 1).digests()).await.unwrap_err();
    assert!(matches!(&err, StateError::Unavailable { op: "swap root", .. }), "{err}");
    assert!(mem.root("origin").is_none());
    assert!(commit(&store, &lock, None, mounts(), None, &info(10, 1), &info(10, 1).digests()).await.unwrap());
    // After: the root moved although the commit reported a failure (its answer was lost).
    mem.fail_next_after_applying(MemoryOp::SwapRoot, 1);
    let seen = base(&store).await;
    assert!(commit(&store, &lock, seen, mounts(), None, &info(10, 50), &info(10, 50).digests()).await.is_err());
    assert_eq!(generation(&store).await, 2, "the failed commit landed");
    // Reads fail too, counted per kind; a count of 0 clears.
    mem.fail_next(MemoryOp::ReadRoot, 5);
    assert!(matches!(store.read_root("origin").await, Err(StateError::Unavailable { .. })));
    mem.fail_next(MemoryOp::ReadRoot, 0);
    assert!(store.read_root("origin").await.unwrap().is_some());
    assert!(mem.ops(MemoryOp::ReadRoot) >= 2);
}

#[tokio::test(start_paused = true)]
async fn a_lost_lock_is_noticed_commits_nothing_and_a_standby_takes_over() {
    let (mem, store) = memory();
    let mut lock_a = store.lock_side_with("origin", &holder("writer-a"), &mut |_: &Holder| {}).await.unwrap();
    assert!(commit(&store, &lock_a, None, mounts(), None, &info(10, 1), &info(10, 1).digests()).await.unwrap());
    // B waits as a standby and hears who holds the lock.
    let heard = Arc::new(Mutex::new(Vec::new()));
    let standby = {
        let (store, heard) = (store.clone(), heard.clone());
        tokio::spawn(async move {
            let mut on_wait = |h: &Holder| heard.lock().unwrap().push(h.clone());
            store.lock_side_with("origin", &holder("writer-b"), &mut on_wait).await.unwrap()
        })
    };
    tokio::task::yield_now().await;
    assert!(!standby.is_finished());
    assert_eq!(heard.lock().unwrap()[0].holder.as_deref(), Some("writer-a"));
    assert_eq!(store.lock_holder("origin").await.unwrap().as_deref(), Some("writer-a"));

    let a_base = base(&store).await;
    assert!(mem.lose_lock("origin"));
    tokio::time::timeout(Duration::from_secs(1), lock_a.lost()).await.expect("A hears of the loss");
    assert!(!lock_a.is_held());
    let err = commit(&store, &lock_a, a_base, mounts(), None, &info(10, 100), &info(10, 100).digests()).await.unwrap_err();
    assert!(matches!(err, StateError::LockLost { .. }), "{err}");
    let lock_b = standby.await.unwrap();
    assert!(commit(&store, &lock_b, base(&store).await, mounts(), None, &info(10, 200), &info(10, 200).digests()).await.unwrap());
    assert_eq!(generation(&store).await, 2);
    // A regains the lock once B lets it go, and commits against what it reads then.
    let regain = tokio::spawn(async move {
        lock_a.regain(&mut |_: &Holder| {}).await.unwrap();
        lock_a
    });
    tokio::task::yield_now().await;
    assert!(!regain.is_finished(), "B still holds it");
    lock_b.release().await;
    let lock_a = regain.await.unwrap();
    assert!(lock_a.is_held());
    assert!(commit(&store, &lock_a, base(&store).await, mounts(), None, &info(10, 300), &info(10, 300).digests()).await.unwrap());
    assert_eq!(generation(&store).await, 3);
}

// A reader stopped between reading a root and fetching its parts; meanwhile the writer commits
// twice, a grace period apart, and collects the parts of the root the reader holds. Resumed,
// the reader finds them gone under a changed root and reloads: no `Corrupt`.
#[tokio::test(start_paused = true)]
async fn a_reader_racing_garbage_collection_reloads() {
    let (mem, store) = memory();
    let lock = store.lock_side("origin").await.unwrap();
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    assert!(commit_at(&store, &lock, None, mounts(), None, &info(40, 0), &info(40, 0).digests(), t0).await.unwrap());
    let held = mem.parts("origin");

    mem.pause(MemoryOp::ReadPart);
    let reader = {
        let store = store.clone();
        tokio::spawn(async move { load::<OriginEntry>(&store, "origin").await })
    };
    while mem.parked(MemoryOp::ReadPart) == 0 {
        tokio::task::yield_now().await;
    }
    for (g, at) in [(1u64, t0), (2, t0 + PART_GRACE + Duration::from_secs(1))] {
        let next = info(40, g * 1000);
        assert!(commit_at(&store, &lock, base(&store).await, mounts(), None, &next, &next.digests(), at).await.unwrap());
    }
    let removed: Vec<String> = mem.removed_parts().into_iter().map(|(_, hash)| hash).collect();
    assert_eq!(removed, held, "the reader's root's parts were collected under it");
    let roots_read = mem.ops(MemoryOp::ReadRoot);
    mem.resume(MemoryOp::ReadPart);
    let loaded = reader.await.unwrap().unwrap().unwrap();
    assert_eq!((loaded.root.generation, loaded.buckets), (3, info(40, 2000)), "the reload found the newest root");
    assert!(mem.ops(MemoryOp::ReadRoot) >= roots_read + 2, "it read the root again, then loaded anew");
}

#[tokio::test(start_paused = true)]
async fn a_watch_wakes_on_a_commit_and_times_out_on_tokio_time() {
    let (_, store) = memory();
    let (version, cursor) = store.watch_root("origin", 0, Duration::from_secs(60)).await.unwrap();
    assert_eq!(version, 0);
    let started = tokio::time::Instant::now();
    assert_eq!(store.watch_root("origin", cursor, Duration::from_secs(60)).await.unwrap().0, 0, "no change");
    assert_eq!(started.elapsed(), Duration::from_secs(60), "waited the whole (paused) minute");
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let lock = store.lock_side("origin").await.unwrap();
            commit(&store, &lock, None, mounts(), None, &info(5, 1), &info(5, 1).digests()).await.unwrap();
        })
    };
    let started = tokio::time::Instant::now();
    let (version, _) = store.watch_root("origin", cursor, Duration::from_secs(60)).await.unwrap();
    writer.await.unwrap();
    assert!(version > 0);
    assert_eq!(started.elapsed(), Duration::from_secs(5), "woken by the commit");
}

/// A small scenario's trace: every version and the parts collected.
async fn scenario() -> (Vec<u64>, Vec<(String, String)>, u64) {
    let (mem, store) = memory();
    let lock = store.lock_side("origin").await.unwrap();
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let mut versions = Vec::new();
    for g in 0..6u64 {
        if g == 3 {
            mem.fail_next(MemoryOp::WriteParts, 1);
            assert!(commit_at(&store, &lock, base(&store).await, mounts(), None, &info(30, g), &info(30, g).digests(), t0).await.is_err());
        }
        let at = t0 + (PART_GRACE + Duration::from_secs(1)) * g as u32;
        commit_at(&store, &lock, base(&store).await, mounts(), None, &info(30, g * 100), &info(30, g * 100).digests(), at).await.unwrap();
        versions.push(base(&store).await.unwrap());
    }
    (versions, mem.removed_parts(), mem.index())
}

#[tokio::test(start_paused = true)]
async fn the_same_run_gives_the_same_versions_and_collections() {
    let first = scenario().await;
    assert_eq!(first, scenario().await);
    assert!(!first.1.is_empty());
}

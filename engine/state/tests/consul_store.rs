//! The Consul backend against the in-process Consul KV emulator (real HTTP on loopback):
//! commit/load, no-op commits, GC, size limits, CAS conflicts, watches, faults and ACLs.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use vsync_consul_emulator::{Acl, AclRule, Emulator, EmulatorConfig};
use vsync_core::{KvVersion, OriginEntry, SecretPath, SyncInfo};
use vsync_state::consul::{ConsulClient, ConsulConfig, ConsulError, ConsulToken, MAX_VALUE_SIZE};
use vsync_state::info::{LoadedInfo, PART_GRACE, commit, commit_at, load};
use vsync_state::{ConsulStore, StateError, StateStore};

fn store(emu: &Emulator, token: Option<&str>) -> StateStore {
    let mut cfg = ConsulConfig::new(emu.url());
    cfg.token = token.map(ConsulToken::new);
    StateStore::Consul(ConsulStore::new(ConsulClient::new(cfg).unwrap(), "vsync/").unwrap())
}

fn entry(v: u64) -> OriginEntry {
    OriginEntry {
        kind: KvVersion::V2,
        current_version: v,
        created_time: "2026-11-22T10:09:20.123456789Z".into(),
        current_live: true,
        digest: None,
    }
}

fn info(buckets: u32, n: usize, version: u64) -> SyncInfo {
    SyncInfo::from_entries(
        buckets,
        (0..n).map(|i| (SecretPath::new("secret/", format!("team-{}/app/key-{i}", i % 7)), entry(version + i as u64))),
    )
}

fn mounts() -> BTreeMap<String, String> {
    [("secret/".to_owned(), "uuid-1".to_owned())].into()
}

/// The root version a cycle starting now would commit against.
async fn base(store: &StateStore, side: &str) -> Option<u64> {
    store.read_root(side).await.unwrap().map(|r| r.version)
}

#[tokio::test]
async fn commit_load_noop_and_gc_over_consul() {
    let emu = Emulator::start();
    let store = store(&emu, None);
    let lock = store.lock_side("origin").await.unwrap();
    let first = info(16, 2_000, 1);
    assert!(commit(&store, &lock, None, mounts(), None, &first, &first.digests()).await.unwrap());
    let loaded: LoadedInfo<OriginEntry> = load(&store, "origin").await.unwrap().unwrap();
    assert_eq!(loaded.buckets, first);
    assert_eq!(loaded.root.origin_mounts, mounts());

    // An identical commit writes nothing at all.
    emu.reset_stats();
    assert!(!commit(&store, &lock, Some(loaded.version), mounts(), None, &first, &first.digests()).await.unwrap());
    assert_eq!(emu.stats().writes, 0, "a no-op commit must not write");

    // Change one key: one part is new; the root moves; the watchers' index moves.
    let mut second = first.clone();
    second.insert(SecretPath::new("secret/", "team-0/app/key-0"), entry(999));
    let before = emu.index();
    assert!(commit(&store, &lock, Some(loaded.version), mounts(), None, &second, &second.digests()).await.unwrap());
    assert!(emu.index() > before);
    let parts = emu.keys("vsync/origin/parts/");
    assert_eq!(parts.len(), 17, "16 current parts plus the one replaced (kept for readers): {parts:?}");

    // A third generation, a grace period later, collects the part the second one retired
    // and keeps the one it retires itself.
    let mut third = second.clone();
    third.insert(SecretPath::new("secret/", "team-0/app/key-0"), entry(1000));
    let later = std::time::SystemTime::now() + PART_GRACE + Duration::from_secs(2);
    commit_at(&store, &lock, base(&store, "origin").await, mounts(), None, &third, &third.digests(), later).await.unwrap();
    assert_eq!(emu.keys("vsync/origin/parts/").len(), 17);
    let loaded: LoadedInfo<OriginEntry> = load(&store, "origin").await.unwrap().unwrap();
    assert_eq!(loaded.buckets, third);
    assert_eq!(loaded.root.generation, 3);
}

#[tokio::test]
async fn large_info_respects_value_and_txn_limits() {
    // 200k entries with long paths in few buckets: parts must be split under 512 KiB, and
    // transactions must stay within the op and body limits (the emulator answers 413).
    let emu = Emulator::start_with(EmulatorConfig {
        txn_max_ops: 64,
        ..Default::default()
    });
    let store = store(&emu, None);
    let lock = store.lock_side("origin").await.unwrap();
    let long = "x".repeat(180);
    let big = SyncInfo::from_entries(
        8,
        (0..200_000).map(|i| (SecretPath::new("secret/", format!("{long}/{i:08}")), entry(i))),
    );
    assert!(commit(&store, &lock, None, mounts(), None, &big, &big.digests()).await.unwrap());
    let keys = emu.keys("vsync/");
    assert!(keys.len() > 20, "split into many parts: {}", keys.len());
    for k in &keys {
        let len = emu.get(k).unwrap().len();
        assert!(len <= MAX_VALUE_SIZE, "{k} is {len} bytes");
    }
    let loaded: LoadedInfo<OriginEntry> = load(&store, "origin").await.unwrap().unwrap();
    assert_eq!(loaded.buckets.len(), 200_000);
}

// The CAS is against the cycle's base, not a fresh read: a commit whose base is gone (another
// commit landed since the cycle loaded the root) is a Conflict and leaves the newer root alone.
#[tokio::test]
async fn a_commit_against_an_old_base_conflicts() {
    let emu = Emulator::start();
    let a = store(&emu, None);
    let lock = a.lock_side("destination-eu").await.unwrap();
    let first = info(4, 10, 1);
    commit(&a, &lock, None, mounts(), None, &first, &first.digests()).await.unwrap();
    let seen = base(&a, "destination-eu").await;
    // A newer commit lands after the older cycle loaded its base.
    let second = info(4, 10, 50);
    commit(&a, &lock, seen, mounts(), None, &second, &second.digests()).await.unwrap();
    let older = info(4, 10, 20);
    let err = commit(&a, &lock, seen, mounts(), None, &older, &older.digests()).await.unwrap_err();
    assert!(matches!(err, StateError::Conflict { .. }), "{err}");
    assert!(err.to_string().contains("destination-eu"), "{err}");
    let err = commit(&a, &lock, None, mounts(), None, &older, &older.digests()).await.unwrap_err();
    assert!(matches!(err, StateError::Conflict { .. }), "a side that exists is not created again: {err}");
    let loaded: LoadedInfo<OriginEntry> = load(&a, "destination-eu").await.unwrap().unwrap();
    assert_eq!(loaded.buckets, second, "the newer root is untouched");
    assert_eq!(loaded.root.generation, 2);
}

#[tokio::test]
async fn watch_wakes_on_commit_and_resets_on_index_going_back() {
    let emu = Emulator::start();
    let store = store(&emu, None);
    let (version, cursor) = store.watch_root("origin", 0, Duration::from_secs(1)).await.unwrap();
    assert_eq!(version, 0, "no root yet");
    let writer = store.clone();
    let task = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let lock = writer.lock_side("origin").await.unwrap();
        let i = info(2, 5, 1);
        commit(&writer, &lock, None, mounts(), None, &i, &i.digests()).await.unwrap();
    });
    let started = Instant::now();
    let mut cursor = cursor;
    let mut version = 0;
    // Spurious wake-ups are allowed: loop until the version moves, bounded.
    while version == 0 && started.elapsed() < Duration::from_secs(5) {
        (version, cursor) = store.watch_root("origin", cursor, Duration::from_secs(3)).await.unwrap();
    }
    task.await.unwrap();
    assert!(version > 0, "the commit woke the watcher");
    assert!(started.elapsed() < Duration::from_secs(2), "woken promptly: {:?}", started.elapsed());

    // A snapshot restore makes the index go backwards: the cursor resets to 0 (resync).
    emu.faults().index_backwards();
    let (_, next) = store.watch_root("origin", cursor, Duration::from_secs(1)).await.unwrap();
    assert!(next < cursor, "cursor {cursor} -> {next}");
}

#[tokio::test]
async fn transient_faults_are_retried_and_persistent_ones_named() {
    let emu = Emulator::start();
    let store = store(&emu, None);
    let lock = store.lock_side("origin").await.unwrap();
    let i = info(2, 5, 1);
    emu.faults().fail_next(503, 2);
    commit(&store, &lock, None, mounts(), None, &i, &i.digests()).await.unwrap();

    emu.faults().fail_next(500, 100);
    let err = load::<OriginEntry>(&store, "origin").await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("500") && text.contains("vsync/origin/root"), "{text}");
    assert!(matches!(&err, StateError::Consul(e) if e.is_transient()), "{err:?}");
    emu.faults().fail_next(500, 0);
}

#[tokio::test]
async fn acl_denial_is_named_and_the_token_never_shows() {
    let reader = "reader-token-0123456789";
    let mut tokens = BTreeMap::new();
    tokens.insert(
        reader.to_owned(),
        vec![AclRule {
            prefix: "vsync/".into(),
            read: true,
            write: false,
        }],
    );
    let emu = Emulator::start_with(EmulatorConfig {
        acl: Some(Acl { tokens }),
        ..Default::default()
    });
    let store = store(&emu, Some(reader));
    // Without write access the side's lock cannot be taken (the session lock is a write).
    let err = store.lock_side("origin").await.unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(matches!(err, StateError::Consul(ConsulError::Forbidden { .. })), "{text}");
    assert!(!text.contains(reader), "token leaked: {text}");
    // Reads are allowed: an absent root is simply absent.
    assert!(load::<OriginEntry>(&store, "origin").await.unwrap().is_none());
    // An unknown token is refused with 403 too.
    let other = self::store(&emu, Some("unknown"));
    assert!(matches!(
        other.read_root("origin").await.unwrap_err(),
        StateError::Consul(ConsulError::Forbidden { .. })
    ));
}

#[tokio::test]
async fn client_basics_against_the_emulator() {
    let emu = Emulator::start();
    let client = ConsulClient::new(ConsulConfig::new(emu.url())).unwrap();
    // 404 keeps the index (so a caller can wait for the key to appear).
    let missing = client.get("a/b").await.unwrap();
    assert!(missing.data.is_none());
    assert!(missing.index >= 1);
    // Binary values round-trip; CAS 0 creates only.
    assert!(client.put_cas("a/b", &[0, 159, 146, 150], 0).await.unwrap());
    assert!(!client.put_cas("a/b", b"other", 0).await.unwrap());
    let e = client.get("a/b").await.unwrap().data.unwrap();
    assert_eq!(e.value, vec![0, 159, 146, 150]);
    // Empty value reads as empty.
    client.put("a/empty", b"").await.unwrap();
    assert_eq!(client.get("a/empty").await.unwrap().data.unwrap().value, Vec::<u8>::new());
    // Single-key reads are exact (no prefix match on `a/b` -> `a/bc`).
    client.put("a/bc", b"x").await.unwrap();
    assert_eq!(client.get("a/b").await.unwrap().data.unwrap().key, "a/b");
    // delete_cas on a stale index fails; on a missing key succeeds.
    assert!(!client.delete_cas("a/b", e.modify_index + 1000).await.unwrap());
    assert!(client.delete_cas("a/b", e.modify_index).await.unwrap());
    assert!(client.delete_cas("a/never", 5).await.unwrap());
    assert_eq!(client.keys("a/").await.unwrap().data, vec!["a/bc".to_owned(), "a/empty".to_owned()]);
    assert!(client.keys("zzz/").await.unwrap().data.is_empty());
}

#[tokio::test]
async fn the_root_of_ten_million_keys_stays_small_over_consul() {
    // 10M keys give the automatic maximum of 16384 buckets; the root keeps their list in
    // index parts. One entry per bucket is enough: the root's size depends on the count.
    let emu = Emulator::start();
    let store = store(&emu, None);
    let lock = store.lock_side("origin").await.unwrap();
    let count = vsync_core::info::auto_bucket_count(10_000_000);
    assert_eq!(count, vsync_core::info::MAX_AUTO_BUCKETS);
    let mut info = SyncInfo::new(count);
    let (mut i, mut filled) = (0u64, std::collections::HashSet::new());
    while filled.len() < count as usize {
        let key = SecretPath::new("secret/", format!("k{i}"));
        filled.insert(vsync_core::info::bucket_of(&key, count));
        info.insert(key, entry(i));
        i += 1;
    }
    assert!(commit(&store, &lock, None, mounts(), None, &info, &info.digests()).await.unwrap());
    let root = store.read_root("origin").await.unwrap().unwrap();
    assert!(root.bytes.len() < 4096, "root of {} bytes", root.bytes.len());
    let loaded: LoadedInfo<OriginEntry> = load(&store, "origin").await.unwrap().unwrap();
    assert_eq!(loaded.root.buckets.len(), count as usize);
    assert_eq!(loaded.buckets, info);
}

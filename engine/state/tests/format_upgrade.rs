//! The stored sync-info format: a committed fixture of format 1 (written by the vsync of that
//! format: a `latest` destination and its origin) is read by this build and upgraded to the
//! current format by the next commit, without losing an entry.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use vsync_core::info::INFO_FORMAT;
use vsync_core::{DestEntry, OriginEntry, SecretPath};
use vsync_state::info::{LoadedInfo, commit, load};
use vsync_state::{FileStore, StateStore};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

fn format_of(dir: &Path, side: &str) -> u64 {
    let root: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join(format!("{side}.json"))).unwrap()).unwrap();
    root["format"].as_u64().unwrap()
}

#[tokio::test]
async fn format_1_is_read_and_upgraded_on_the_next_commit() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format1"), dir.path());
    assert_eq!(format_of(dir.path(), "destination-eu"), 1);
    let store = StateStore::File(FileStore::open(dir.path()).unwrap());

    let dest: LoadedInfo<DestEntry> = load(&store, "destination-eu").await.unwrap().unwrap();
    let origin: LoadedInfo<OriginEntry> = load(&store, "origin").await.unwrap().unwrap();
    assert_eq!(dest.buckets.len(), 2);
    let db = dest.buckets.get(&SecretPath::new("secret/", "app/db")).unwrap();
    assert_eq!((db.origin.current_version, db.target.path.as_str()), (2, "app/db"));
    assert!(db.exact.is_none(), "format 1 entries are latest-mode copies");
    assert_eq!(origin.buckets.len(), 2);
    assert_eq!(dest.root.digests(), dest.buckets.digests(), "the stored digests still match the entries");

    // The next commit of the same entries upgrades the side's documents.
    let lock = store.lock_side("destination-eu").await.unwrap();
    let digests = dest.buckets.digests();
    let wrote = commit(&store, &lock, Some(dest.version), dest.root.origin_mounts.clone(), dest.root.config_hash.clone(), &dest.buckets, &digests)
        .await
        .unwrap();
    assert!(wrote, "an upgrade is a write even when no entry changed");
    assert_eq!(format_of(dir.path(), "destination-eu"), u64::from(INFO_FORMAT));
    let again: LoadedInfo<DestEntry> = load(&store, "destination-eu").await.unwrap().unwrap();
    assert_eq!(again.buckets, dest.buckets);
    assert_eq!(again.root.generation, dest.root.generation + 1);
}

#[tokio::test]
async fn format_2_is_read_and_upgraded_on_the_next_commit() {
    // Written by the format-2 build: `eu` copies `latest`, `us` replicates exactly.
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format2"), dir.path());
    assert_eq!(format_of(dir.path(), "destination-eu"), 2);
    let store = StateStore::File(FileStore::open(dir.path()).unwrap());
    for side in ["destination-eu", "destination-us"] {
        let dest: LoadedInfo<DestEntry> = load(&store, side).await.unwrap().unwrap();
        assert_eq!(dest.buckets.len(), 2, "{side}");
        let db = dest.buckets.get(&SecretPath::new("secret/", "app/db")).unwrap();
        assert_eq!(db.origin.current_version, 2, "{side}");
        assert_eq!(db.dest_version, None, "format 2 recorded no destination version");
        assert_eq!(db.exact.is_some(), side == "destination-us", "{side}: the exact state survives");
        assert_eq!(dest.root.digests(), dest.buckets.digests(), "{side}: the stored digests still match");

        let lock = store.lock_side(side).await.unwrap();
        let digests = dest.buckets.digests();
        let wrote = commit(&store, &lock, Some(dest.version), dest.root.origin_mounts.clone(), dest.root.config_hash.clone(), &dest.buckets, &digests)
            .await
            .unwrap();
        assert!(wrote, "an upgrade is a write even when no entry changed");
        assert_eq!(format_of(dir.path(), side), u64::from(INFO_FORMAT));
        let again: LoadedInfo<DestEntry> = load(&store, side).await.unwrap().unwrap();
        assert_eq!(again.buckets, dest.buckets);
    }
    // An origin's entries did not change in format 3: it keeps writing format 2, which the
    // previous release's destinations still read during a rolling upgrade.
    let origin: LoadedInfo<OriginEntry> = load(&store, "origin").await.unwrap().unwrap();
    let lock = store.lock_side("origin").await.unwrap();
    commit(&store, &lock, Some(origin.version), origin.root.origin_mounts.clone(), None, &origin.buckets, &origin.buckets.digests())
        .await
        .unwrap();
    assert_eq!(format_of(dir.path(), "origin"), 2);
}

#[tokio::test]
async fn a_newer_format_is_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("origin.json"), br#"{"format": 99, "generation": 7}"#).unwrap();
    let store = StateStore::File(FileStore::open(dir.path()).unwrap());
    let lock = store.lock_side("origin").await.unwrap();
    let info = vsync_core::SyncInfo::new(1);
    let base = store.read_root("origin").await.unwrap().map(|r| r.version);
    let err = commit(&store, &lock, base, Default::default(), None, &info, &info.digests()).await.unwrap_err();
    assert!(matches!(err, vsync_state::StateError::UnknownFormat { found: 99, .. }), "{err}");
    assert!(std::fs::read_to_string(dir.path().join("origin.json")).unwrap().contains("99"), "left as it was");
}

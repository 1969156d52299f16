//! `versions = "all"` against real OpenBao dev servers through the library: named cases (S1, ...,
//! each described where it is set up) with their write counts, adoption after lost state, and a seeded
//! model-based sequence of origin operations interleaved with cycles, after each of which the
//! destination must equal the origin on every reproducible field.
//!
//! `VSYNC_MODEL_SEQUENCES=N` runs N model sequences instead of the CI default.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde_json::json;
use vsync_core::{CycleFlags, DeletePolicy, DestinationSpec, VersionsMode};
use vsync_engine::exact::key_meta;
use vsync_engine::{CycleReport, Destination, origin};
use vsync_state::{FileStore, StateStore};
use vsync_test_harness::Bao;
use vsync_vault::{DataRead, MetadataSettings, VaultClient};

mod common;
use common::{client, data, origin_spec};

fn spec() -> DestinationSpec {
    DestinationSpec {
        name: "eu".into(),
        labels: BTreeMap::new(),
        mounts: [("secret/".to_owned(), "secret/".to_owned())].into(),
        interval: Duration::from_secs(60),
        timeout: Duration::from_secs(120),
        workers: 4,
        versions: VersionsMode::All,
        deletes: DeletePolicy::Mirror,
        max_delete_ratio: 1.0,
        config_hash: "exact-test".into(),
        uses_plugins: false,
    }
}

struct World {
    _a: Bao,
    _b: Bao,
    ca: VaultClient,
    cb: VaultClient,
    _dir: tempfile::TempDir,
    dest: Destination,
}

async fn world() -> World {
    let (a, b) = (Bao::dev(), Bao::dev());
    let (ca, cb) = (client(&a), client(&b));
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::File(FileStore::open(dir.path()).unwrap());
    let lock = store.lock_side("destination-eu").await.unwrap();
    let dest = Destination { spec: spec(), vault: cb.clone(), store, lock, mapper: None, digest_key: None, progress: None, clock: vsync_core::clock::system_clock() };
    World { _a: a, _b: b, ca, cb, _dir: dir, dest }
}

impl World {
    /// One scan and one destination cycle; the report and the destination's data writes.
    async fn cycle(&mut self) -> (CycleReport, u64) {
        let info = origin::scan(&self.ca, &origin_spec(), None).await.unwrap();
        let before = self.cb.request_counts().data_writes;
        let report = self.dest.cycle(&self.ca, &info, CycleFlags::default()).await.unwrap();
        (report, self.cb.request_counts().data_writes - before)
    }

    async fn put(&self, path: &str, v: serde_json::Value) {
        let cur = self.ca.read_metadata("secret/", path).await.unwrap().map_or(0, |m| m.current_version);
        self.ca.write_version("secret/", path, &data(v), cur).await.unwrap();
    }

    async fn settings(&self, path: &str, max_versions: u64, cas_required: bool, dva: &str, custom: &[(&str, &str)]) {
        let s = MetadataSettings {
            max_versions,
            cas_required,
            delete_version_after: dva.into(),
            custom_metadata: custom.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        };
        self.ca.write_metadata("secret/", path, &s).await.unwrap();
    }

    /// The first difference between the origin and the destination, or `None`.
    async fn diff(&self) -> Option<String> {
        let now = SystemTime::now();
        let list = |c: &VaultClient| {
            let c = c.clone();
            async move {
                let info = c.mount_info("secret/").await.unwrap();
                c.list_secrets(&info).await.unwrap().into_iter().map(|s| s.path).collect::<Vec<_>>()
            }
        };
        let (ka, kb) = (list(&self.ca).await, list(&self.cb).await);
        if ka != kb {
            return Some(format!("key sets differ: origin {ka:?}, destination {kb:?}"));
        }
        for k in ka {
            let om = self.ca.read_metadata("secret/", &k).await.unwrap().unwrap();
            let dm = self.cb.read_metadata("secret/", &k).await.unwrap().unwrap();
            let (o, d) = (key_meta(&om, now), key_meta(&dm, now));
            if !o.same_replica(&d) {
                return Some(format!("{k}: metadata differs:\n  origin      {o:?}\n  destination {d:?}"));
            }
            for (v, f) in &o.versions {
                if !f.live() {
                    continue;
                }
                let a = self.ca.read_version("secret/", &k, *v).await.unwrap();
                let b = self.cb.read_version("secret/", &k, *v).await.unwrap();
                match (a, b) {
                    (DataRead::Live(x, _), DataRead::Live(y, _)) if x.same_value(&y) => {}
                    (x, y) => return Some(format!("{k} v{v}: data differs: {x:?} vs {y:?}")),
                }
            }
        }
        None
    }

    async fn assert_exact(&self, context: &str) {
        if let Some(d) = self.diff().await {
            panic!("{context}: {d}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_cases_of_the_reference_replicate_exactly_at_the_promised_cost() {
    let mut w = world().await;
    // S1: key max 5, 10 writes -> v6..10; v7 soft-deleted, v8 destroyed.
    w.settings("s1", 5, false, "0s", &[("owner", "team-a")]).await;
    for i in 1..=10 {
        w.put("s1", json!({ "v": i })).await;
    }
    w.ca.delete_versions("secret/", "s1", &[7]).await.unwrap();
    w.ca.destroy_versions("secret/", "s1", &[8]).await.unwrap();
    // S10: metadata only. S13: version 300, key max 5.
    w.settings("s10", 3, true, "0s", &[]).await;
    w.settings("s13", 5, false, "0s", &[]).await;
    for i in 1..=300 {
        w.put("s13", json!({ "v": i })).await;
    }
    let (report, writes) = w.cycle().await;
    assert_eq!(report.counts.added, 3, "{report}");
    assert_eq!(writes, 10 + 300, "bootstrap writes current_version versions per key");
    w.assert_exact("bootstrap").await;

    // No change: nothing written, nothing read.
    let (report, writes) = w.cycle().await;
    assert_eq!((writes, report.dest_writes, report.dest_data_reads, report.origin_data_reads), (0, 0, 0, 0), "{report}");

    // Metadata-only changes (settings, soft delete, destroy, undelete of a real version) cost no
    // data writes.
    w.settings("s1", 5, false, "0s", &[("owner", "team-b")]).await;
    w.ca.delete_versions("secret/", "s1", &[10]).await.unwrap();
    w.ca.destroy_versions("secret/", "s1", &[9]).await.unwrap();
    let (_, writes) = w.cycle().await;
    assert_eq!(writes, 0);
    w.assert_exact("flags and settings").await;
    w.ca.undelete_versions("secret/", "s1", &[10]).await.unwrap();
    let (report, writes) = w.cycle().await;
    assert_eq!((writes, report.counts.rebuilt), (0, 0), "{report}");
    w.assert_exact("undelete of real data").await;

    // S6: a gap: 12 writes at the origin while the destination holds 6..10.
    for i in 11..=22 {
        w.put("s1", json!({ "v": i })).await;
    }
    let (_, writes) = w.cycle().await;
    assert_eq!(writes, 12, "one write per new version, placeholders for the pruned ones");
    w.assert_exact("gap").await;

    // S9b: undelete of a version the destination holds a placeholder for: rebuild.
    w.put("s9", json!({ "v": 1 })).await;
    w.put("s9", json!({ "v": 2 })).await;
    w.put("s9", json!({ "v": 3 })).await;
    w.ca.delete_versions("secret/", "s9", &[2]).await.unwrap();
    // The destination never saw v2 live: a fresh key makes it a placeholder.
    let (_, writes) = w.cycle().await;
    assert_eq!(writes, 3);
    w.ca.undelete_versions("secret/", "s9", &[2]).await.unwrap();
    let (report, writes) = w.cycle().await;
    assert_eq!((report.counts.rebuilt, writes), (1, 3), "{report}");
    w.assert_exact("undeleted placeholder").await;

    // S7b: re-created with more versions than before: only created_time reveals it.
    w.ca.delete_metadata("secret/", "s9").await.unwrap();
    for i in 1..=5 {
        w.put("s9", json!({ "re": i })).await;
    }
    let (report, writes) = w.cycle().await;
    assert_eq!((report.counts.rebuilt, writes), (1, 5), "{report}");
    w.assert_exact("re-created").await;

    // A key deleted at the origin is deleted at the destination.
    w.ca.delete_metadata("secret/", "s10").await.unwrap();
    let (report, _) = w.cycle().await;
    assert_eq!(report.counts.deleted, 1, "{report}");
    w.assert_exact("deleted key").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_state_adopts_exact_keys_and_rebuilds_changed_ones() {
    let mut w = world().await;
    for i in 1..=4 {
        w.put("a", json!({ "v": i })).await;
        w.put("b", json!({ "v": i })).await;
    }
    w.ca.delete_versions("secret/", "a", &[2]).await.unwrap();
    w.cycle().await;
    w.assert_exact("first").await;

    // The state is lost; someone also changed `b` at the destination.
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::File(FileStore::open(dir.path()).unwrap());
    w.dest.lock = store.lock_side("destination-eu").await.unwrap();
    w.dest.store = store;
    w.cb.write_version("secret/", "b", &data(json!({ "v": "hand" })), 4).await.unwrap();
    let (report, writes) = w.cycle().await;
    assert_eq!((report.counts.adopted, report.counts.rebuilt), (1, 1), "{report}");
    assert_eq!(writes, 4, "only `b` is rewritten");
    w.assert_exact("after lost state").await;
}

/// A tiny deterministic generator (xorshift), so a failing sequence is replayed by its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Keys the destination holds before vsync first runs: one version, two versions, and
/// metadata only with settings of its own (issue 18 items 2 and 8).
async fn hold_at_destination(w: &World) {
    for k in ["k0", "k1", "k2"] {
        w.put(k, json!({ "origin": k })).await;
    }
    w.cb.write_version("secret/", "k0", &data(json!({ "held": 1 })), 0).await.unwrap();
    w.cb.write_version("secret/", "k1", &data(json!({ "held": 1 })), 0).await.unwrap();
    w.cb.write_version("secret/", "k1", &data(json!({ "held": 2 })), 1).await.unwrap();
    let foreign = MetadataSettings { max_versions: 2, cas_required: true, delete_version_after: "1h".into(), custom_metadata: [("o".to_owned(), "x".to_owned())].into() };
    w.cb.write_metadata("secret/", "k2", &foreign).await.unwrap();
}

/// One model step of an origin operation on key `k` (every kind the origin can do).
async fn origin_step(w: &World, rng: &mut Rng, k: &str, step: u64) {
    let meta = w.ca.read_metadata("secret/", k).await.unwrap();
    let cur = meta.as_ref().map_or(0, |m| m.current_version);
    let versions: Vec<u64> = meta.as_ref().map(|m| m.versions.keys().copied().collect()).unwrap_or_default();
    let pick = |rng: &mut Rng| versions.get(rng.below(versions.len().max(1) as u64) as usize).copied();
    match rng.below(11) {
        0..=3 => w.ca.write_version("secret/", k, &data(json!({ "s": step })), cur).await.map(|_| ()).unwrap(),
        4 => {
            if let Some(v) = pick(rng) {
                w.ca.delete_versions("secret/", k, &[v]).await.unwrap();
            }
        }
        5 => {
            if let Some(v) = pick(rng) {
                w.ca.undelete_versions("secret/", k, &[v]).await.unwrap();
            }
        }
        6 => {
            if let Some(v) = pick(rng) {
                w.ca.destroy_versions("secret/", k, &[v]).await.unwrap();
            }
        }
        7 => {
            let max = rng.below(6);
            let custom = if rng.below(2) == 0 { vec![("team", "x")] } else { vec![] };
            w.settings(k, max, rng.below(4) == 0, "0s", &custom).await;
        }
        8 => w.ca.soft_delete_latest("secret/", k).await.unwrap(),
        // Deleted, then destroyed, between two cycles (issue 18 item 4).
        9 => {
            if let Some(v) = pick(rng) {
                w.ca.delete_versions("secret/", k, &[v]).await.unwrap();
                w.ca.destroy_versions("secret/", k, &[v]).await.unwrap();
            }
        }
        _ => w.ca.delete_metadata("secret/", k).await.unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_sequences_of_origin_operations_stay_exact_after_every_cycle() {
    let sequences: u64 = std::env::var("VSYNC_MODEL_SEQUENCES").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    let (mut operations, mut aborted, mut tampered) = (0, 0, 0);
    for seq in 0..sequences {
        let seed = 0x5eed_0000 + seq;
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut w = world().await;
        hold_at_destination(&w).await;
        let keys: Vec<String> = (0..12).map(|i| format!("k{i}")).collect();
        for step in 0..60 {
            let k = &keys[rng.below(keys.len() as u64) as usize];
            origin_step(&w, &mut rng, k, step).await;
            operations += 1;
            if step % 6 == 2 && rng.below(3) == 0 {
                // A cycle cut off at a random point (a kill, a timeout), then the origin deletes
                // keys it may have written (issue 18 item 6).
                let info = origin::scan(&w.ca, &origin_spec(), None).await.unwrap();
                let cut = Duration::from_millis(rng.below(40));
                let _ = tokio::time::timeout(cut, w.dest.cycle(&w.ca, &info, CycleFlags::default())).await;
                let gone = &keys[rng.below(keys.len() as u64) as usize];
                w.ca.delete_metadata("secret/", gone).await.unwrap();
                aborted += 1;
            }
            if step % 6 == 5 {
                let (report, _) = w.cycle().await;
                assert_eq!(report.counts.failed, 0, "seed {seed:#x} step {step}: {report}");
                if let Some(d) = w.diff().await {
                    panic!("seed {seed:#x}, after step {step}: {d}");
                }
                let found = verify_world(&w).await;
                assert!(!found.has_drift() && found.pending.is_empty(), "seed {seed:#x} step {step}: verify after an exact cycle: {found:?}");
                if rng.below(4) == 0 {
                    // Hands at the destination: verify must see them; --repair undoes them.
                    w.cb.write_version("secret/", &format!("stray{step}"), &data(json!({ "x": 1 })), 0).await.unwrap();
                    let found = verify_world(&w).await;
                    assert_eq!(found.extra.len(), 1, "seed {seed:#x} step {step}: {found:?}");
                    vsync_engine::verify::request_repair(&w.dest.store, "eu", Vec::new(), found.extra).await.unwrap();
                    tampered += 1;
                }
            }
        }
    }
    eprintln!("model: {sequences} sequences, {operations} origin operations, {aborted} aborted cycles, {tampered} tamperings; exact after every cycle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_drift_and_repair_rebuilds_it() {
    use vsync_engine::verify::{pending_repair, request_repair, verify};
    let mut w = world().await;
    for k in ["hand", "soft", "meta", "clean"] {
        for i in 1..=3 {
            w.put(k, json!({ "v": i })).await;
        }
    }
    w.cycle().await;
    let run = |w: &World| {
        let (ca, cb, store, spec) = (w.ca.clone(), w.cb.clone(), w.dest.store.clone(), w.dest.spec.clone());
        async move { verify(&vaults(&ca, &cb), &["secret/".to_owned()], &spec, &store, None, true).await.unwrap() }
    };
    let clean = run(&w).await;
    assert_eq!((clean.checked, clean.drifted.len(), clean.pending.len()), (4, 0, 0), "{clean:?}");

    // Hands at the destination: a new version, a soft delete, a custom_metadata change.
    w.cb.write_version("secret/", "hand", &data(json!({ "v": "by hand" })), 3).await.unwrap();
    w.cb.delete_versions("secret/", "soft", &[2]).await.unwrap();
    let s = MetadataSettings { max_versions: 0, cas_required: false, delete_version_after: "0s".into(), custom_metadata: [("x".to_owned(), "y".to_owned())].into() };
    w.cb.write_metadata("secret/", "meta", &s).await.unwrap();
    // And an origin change not replicated yet: pending, not drift.
    w.put("clean", json!({ "v": 4 })).await;
    let found = run(&w).await;
    let drifted: Vec<&str> = found.drifted.iter().map(|d| d.key.path.as_str()).collect();
    assert_eq!(drifted, vec!["hand", "meta", "soft"], "{found:?}");
    assert_eq!(found.pending.iter().map(|k| k.path.as_str()).collect::<Vec<_>>(), vec!["clean"]);

    // --repair: the next cycle rebuilds exactly those keys and consumes the request.
    request_repair(&w.dest.store, "eu", found.drifted.iter().map(|d| d.key.clone()).collect(), Vec::new()).await.unwrap();
    assert!(pending_repair(&w.dest.store, "eu").await.unwrap().is_some());
    let (report, _) = w.cycle().await;
    assert_eq!(report.counts.rebuilt, 3, "{report}");
    assert!(pending_repair(&w.dest.store, "eu").await.unwrap().is_none(), "the request is consumed");
    let after = run(&w).await;
    assert_eq!((after.drifted.len(), after.pending.len()), (0, 0), "{after:?}");
    w.assert_exact("after repair").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_mode_preconditions_and_mixed_kv_versions_are_refused_before_any_write() {
    let mut w = world().await;
    w.put("a", json!({ "v": 1 })).await;
    // A destination mount that keeps 8 versions would keep placeholders the origin pruned.
    w.cb.sys("POST", "secret/config", Some(json!({ "max_versions": 8 }))).await.unwrap();
    let info = origin::scan(&w.ca, &origin_spec(), None).await.unwrap();
    let fault = w.dest.cycle(&w.ca, &info, CycleFlags::default()).await.unwrap_err();
    assert_eq!(fault.fatal_cause(), Some(vsync_engine::FatalCause::Config), "{fault}");
    assert!(fault.message.contains("max_versions = 0") && fault.message.contains("secret/config"), "{fault}");
    assert!(w.cb.read_metadata("secret/", "a").await.unwrap().is_none(), "nothing written");
    w.cb.sys("POST", "secret/config", Some(json!({ "max_versions": 0 }))).await.unwrap();

    // KV v2 origin mapped to a KV v1 destination mount: `all` cannot replicate versions there.
    w._b.enable_kv("flat", 1);
    w.dest.spec.mounts = [("secret/".to_owned(), "flat/".to_owned())].into();
    let fault = w.dest.cycle(&w.ca, &info, CycleFlags::default()).await.unwrap_err();
    assert_eq!(fault.fatal_cause(), Some(vsync_engine::FatalCause::Config), "{fault}");
    assert!(fault.message.contains("versions = \"latest\""), "{fault}");
    assert!(w.cb.read_v1("flat/", "a").await.unwrap().is_none(), "nothing written");

    // In `latest` mode the same mapping works.
    w.dest.spec.versions = VersionsMode::Latest;
    let report = w.dest.cycle(&w.ca, &info, CycleFlags::default()).await.unwrap();
    assert_eq!(report.counts.added, 1, "{report}");
    assert!(w.cb.read_v1("flat/", "a").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_counts_per_key_stay_what_the_algorithm_promises() {
    // One key, each kind of change; the counts exclude the origin scan (one SCAN) and the
    // destination's mount lookups (two `sys` calls a cycle with work).
    let mut w = world().await;
    let per_key = |c: &VaultClient| c.request_counts();
    let delta = |a: vsync_vault::RequestCounts, b: vsync_vault::RequestCounts| {
        (b.data_reads - a.data_reads, b.data_writes - a.data_writes, b.metadata_reads - a.metadata_reads, b.metadata_writes - a.metadata_writes)
    };
    let mut measure = Vec::new();
    for (name, change) in [("bootstrap v5", 0), ("new version", 1), ("metadata only", 2), ("rebuild (re-created, 2 versions)", 3)] {
        match change {
            0 => {
                for i in 1..=5 {
                    w.put("k", json!({ "v": i })).await;
                }
            }
            1 => w.put("k", json!({ "v": 6 })).await,
            2 => w.settings("k", 0, false, "0s", &[("owner", "x")]).await,
            _ => {
                w.ca.delete_metadata("secret/", "k").await.unwrap();
                w.put("k", json!({ "v": "a" })).await;
                w.put("k", json!({ "v": "b" })).await;
            }
        }
        let (o0, d0) = (per_key(&w.ca), per_key(&w.cb));
        w.cycle().await;
        let (o, d) = (delta(o0, per_key(&w.ca)), delta(d0, per_key(&w.cb)));
        w.assert_exact(name).await;
        eprintln!("{name}: origin {} data reads, {} metadata reads; destination {} data writes, {} metadata reads, {} metadata writes", o.0, o.2, d.1, d.2, d.3);
        measure.push((o, d));
    }
    assert_eq!(measure[0].1 .1, 5, "bootstrap: current_version data writes");
    assert_eq!(measure[1].1 .1, 1, "a new version: one data write");
    assert_eq!(measure[2].1 .1, 0, "metadata only: no data write");
    assert_eq!(measure[3].1 .1, 2, "rebuild: the new key's versions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuilds_count_for_the_mass_delete_guard_and_plan_shows_them() {
    let mut w = world().await;
    w.dest.spec.max_delete_ratio = 0.5;
    for i in 0..12 {
        w.put(&format!("k{i}"), json!({ "v": i })).await;
    }
    w.cycle().await;
    // Someone writes a version of every key at the destination: each must be rebuilt.
    for i in 0..12 {
        w.cb.write_version("secret/", &format!("k{i}"), &data(json!({ "v": "hand" })), 1).await.unwrap();
    }
    // The origin changes every key too, so the next cycle looks at them.
    for i in 0..12 {
        w.put(&format!("k{i}"), json!({ "v": "new" })).await;
    }
    let info = origin::scan(&w.ca, &origin_spec(), None).await.unwrap();
    let preview = vsync_engine::preview(&w.dest.spec, &w.dest.store, None, &w.ca, &w.cb, &info, None, vsync_core::clock::system_clock()).await.unwrap();
    let text = preview.human("eu");
    assert_eq!(text.matches("REBUILD").count(), 12, "{text}");
    assert!(text.contains("STOP") && text.contains("--allow-mass-delete"), "{text}");
    let fault = w.dest.cycle(&w.ca, &info, CycleFlags::default()).await.unwrap_err();
    assert_eq!(fault.fatal_cause(), Some(vsync_engine::FatalCause::MassDeleteGuard), "{fault}");
    let allow = CycleFlags { allow_mass_delete: true, ..Default::default() };
    let report = w.dest.cycle(&w.ca, &info, allow).await.unwrap();
    assert_eq!(report.counts.rebuilt, 12, "{report}");
    w.assert_exact("after the allowed rebuilds").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_single_version_keys_take_one_write_and_keys_the_destination_holds_take_the_full_path() {
    let mut w = world().await;
    // Plain one-version keys (the fast path), one with custom metadata and one with two
    // versions (the full path: the scan does not prove them simple).
    for k in ["p1", "p2", "p3", "held", "stray"] {
        w.put(k, json!({ "k": k })).await;
    }
    w.put("custom", json!({ "v": 1 })).await;
    w.settings("custom", 0, false, "0s", &[("team", "a")]).await;
    w.put("two", json!({ "v": 1 })).await;
    w.put("two", json!({ "v": 2 })).await;
    // At the destination, unknown to its (empty) state: `held` equal to the origin's (adopted),
    // `stray` with other data (rebuilt). Their metadata shows they exist: the full path, planned
    // and guarded like any other key (issue 18 item 2), never a create-only write.
    w.cb.write_version("secret/", "held", &data(json!({ "k": "held" })), 0).await.unwrap();
    w.cb.write_version("secret/", "stray", &data(json!({ "k": "other" })), 0).await.unwrap();
    let (o0, d0) = (w.ca.request_counts(), w.cb.request_counts());
    let (report, _) = w.cycle().await;
    let (o, d) = (w.ca.request_counts(), w.cb.request_counts());
    w.assert_exact("after the first cycle").await;
    assert_eq!((report.counts.added, report.counts.adopted, report.counts.rebuilt), (5, 1, 1), "{report}");
    // Metadata reads: the full-path keys (custom, two, held, stray) read both sides; the five
    // fast-path candidates read the destination's once to know it lacks them (a few new keys:
    // cheaper than listing the mount).
    assert_eq!(o.metadata_reads - o0.metadata_reads, 4, "origin metadata reads");
    assert_eq!(d.metadata_reads - d0.metadata_reads, 4 + 5, "destination metadata reads");
    let (_, writes) = w.cycle().await;
    assert_eq!(writes, 0, "a second cycle writes nothing");

    // Many new keys: one listing of the destination mount answers for all of them.
    for i in 0..70 {
        w.put(&format!("bulk/k{i}"), json!({ "i": i })).await;
    }
    w.cb.write_version("secret/", "bulk/k7", &data(json!({ "other": true })), 0).await.unwrap();
    let d0 = w.cb.request_counts();
    let info = origin::scan(&w.ca, &origin_spec(), None).await.unwrap();
    let fault = w.dest.cycle(&w.ca, &info, CycleFlags::default()).await;
    let d = w.cb.request_counts();
    let report = fault.unwrap();
    assert_eq!((report.counts.added, report.counts.rebuilt), (69, 1), "{report}");
    assert_eq!(d.metadata_reads - d0.metadata_reads, 1, "only the held key reads its metadata");
    w.assert_exact("after the bulk").await;
}

/// Runs `vsync verify` for the world's destination.
async fn verify_world(w: &World) -> vsync_engine::verify::VerifyReport {
    vsync_engine::verify::verify(&vaults(&w.ca, &w.cb), &["secret/".to_owned()], &w.dest.spec, &w.dest.store, None, true).await.unwrap()
}

/// Issue 18 item 4: `v1` deleted and then destroyed at the origin between two cycles lost its
/// deletion at the destination (destroy ran first; a destroyed version cannot be deleted), and
/// `verify` did not see it (it compared the deletion of live versions only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_deleted_then_destroyed_between_cycles_keeps_its_deletion() {
    let mut w = world().await;
    w.put("k", json!({ "v": 1 })).await;
    w.put("k", json!({ "v": 2 })).await;
    w.cycle().await;
    w.ca.delete_versions("secret/", "k", &[1]).await.unwrap();
    w.ca.destroy_versions("secret/", "k", &[1]).await.unwrap();
    w.cycle().await;
    let dm = w.cb.read_metadata("secret/", "k").await.unwrap().unwrap();
    let v1 = &dm.versions[&1];
    assert!(v1.destroyed && !v1.deletion_time.is_empty(), "destroyed and deleted, as at the origin: {v1:?}");
    w.assert_exact("after delete + destroy").await;
    let report = verify_world(&w).await;
    assert!(!report.has_drift(), "{report:?}");
}

/// Issue 18 item 8: a create-only write succeeds on a destination key that has metadata only,
/// which kept its own settings (here a `delete_version_after` that expires the only version)
/// while the key was recorded as exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metadata_only_destination_key_gets_the_origin_settings() {
    let mut w = world().await;
    w.put("m", json!({ "v": 1 })).await;
    let foreign = MetadataSettings {
        max_versions: 3,
        cas_required: true,
        delete_version_after: "1h".into(),
        custom_metadata: [("owner".to_owned(), "someone-else".to_owned())].into(),
    };
    w.cb.write_metadata("secret/", "m", &foreign).await.unwrap();
    let (report, _) = w.cycle().await;
    assert_eq!(report.counts.failed, 0, "{report}");
    w.assert_exact("a metadata-only key adopted").await;
    let dm = w.cb.read_metadata("secret/", "m").await.unwrap().unwrap();
    assert!(dm.versions[&1].deletion_time.is_empty(), "no foreign expiry on the replica: {dm:?}");
}

/// Issue 18 item 9: a non-current version that `delete_version_after` expires changed nothing
/// the origin compared (the raw deletion time was set at write time), so the destination kept
/// it readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_of_a_non_current_version_reaches_the_destination() {
    let mut w = world().await;
    w.settings("e", 0, false, "2s", &[]).await;
    w.put("e", json!({ "v": 1 })).await;
    w.settings("e", 0, false, "0s", &[]).await;
    w.put("e", json!({ "v": 2 })).await;
    w.cycle().await;
    w.assert_exact("before the expiry").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (report, _) = w.cycle().await;
    assert_eq!(report.counts.updated, 1, "the expiry is a change: {report}");
    let dm = w.cb.read_metadata("secret/", "e").await.unwrap().unwrap();
    assert!(!dm.versions[&1].deletion_time.is_empty(), "v1 is deleted at the destination too: {dm:?}");
    w.assert_exact("after the expiry").await;
}

/// Issue 18 item 6: a cycle that wrote keys and was then aborted committed nothing, so when
/// the origin deleted those keys before the next cycle, no plan removed their copies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_written_by_an_aborted_cycle_are_removed_when_the_origin_deletes_them() {
    let mut w = world().await;
    for i in 0..30 {
        w.put(&format!("k{i:02}"), json!({ "i": i })).await;
    }
    let port: u16 = w._b.addr().rsplit(':').next().unwrap().parse().unwrap();
    let proxy = vsync_test_harness::Proxy::start(port);
    proxy.set_delay(Duration::from_millis(40));
    let slow = vsync_vault::VaultClient::new(vsync_vault::VaultConfig::new(proxy.addr(), vsync_vault::Token::new(vsync_test_harness::DEV_ROOT_TOKEN))).unwrap();
    let direct = std::mem::replace(&mut w.dest.vault, slow);
    w.dest.spec.workers = 1;
    let info = origin::scan(&w.ca, &origin_spec(), None).await.unwrap();
    {
        let cycle = w.dest.cycle(&w.ca, &info, CycleFlags::default());
        tokio::pin!(cycle);
        loop {
            tokio::select! {
                r = &mut cycle => panic!("the cycle ended before it was aborted: {r:?}"),
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
            let info_b = direct.mount_info("secret/").await.unwrap();
            if direct.list_secrets(&info_b).await.unwrap().len() >= 3 {
                break;
            }
        }
    } // dropped: aborted mid-cycle, nothing committed but the orphans it remembered
    w.dest.vault = direct;
    w.dest.spec.workers = 4;
    let info_b = w.cb.mount_info("secret/").await.unwrap();
    let written: Vec<String> = w.cb.list_secrets(&info_b).await.unwrap().into_iter().map(|s| s.path).collect();
    assert!(written.len() >= 3 && written.len() < 30, "aborted mid-way: {written:?}");
    for k in &written {
        w.ca.delete_metadata("secret/", k).await.unwrap();
    }
    let (report, _) = w.cycle().await;
    assert_eq!(report.counts.failed, 0, "{report}");
    w.assert_exact("after the origin deleted what the aborted cycle wrote").await;
    assert!(!verify_world(&w).await.has_drift());
}

#[test]
fn key_meta_compares_the_deletion_of_destroyed_versions() {
    let meta = |deletion: &str| -> vsync_vault::KvMetadata {
        serde_json::from_value(json!({
            "current_version": 2, "oldest_version": 0, "created_time": "2026-12-07T10:00:00Z", "max_versions": 0,
            "cas_required": false, "delete_version_after": "0s", "custom_metadata": null,
            "versions": {
                "1": { "created_time": "2026-12-07T10:00:00Z", "deletion_time": deletion, "destroyed": true },
                "2": { "created_time": "2026-12-07T10:00:01Z", "deletion_time": "", "destroyed": false }
            }
        }))
        .unwrap()
    };
    let now = SystemTime::now();
    let (both, destroyed) = (key_meta(&meta("2026-12-07T10:00:02Z"), now), key_meta(&meta(""), now));
    assert!(!both.same_replica(&destroyed), "verify sees a destroyed version that lost its deletion");
    assert!(both.same_replica(&key_meta(&meta("2026-12-07T11:00:00Z"), now)), "the time itself is not reproduced");
}

/// Issue 18 item 10: a `verify --repair` request written while a cycle ran was deleted unread
/// by that cycle's commit; only the request the cycle consumed may go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repair_request_written_during_a_cycle_survives_it() {
    use vsync_engine::verify::{pending_repair, request_repair};
    let mut w = world().await;
    for i in 0..10 {
        w.put(&format!("k{i}"), json!({ "i": i })).await;
    }
    let key = |p: &str| vsync_core::SecretPath::new("secret/", p);
    request_repair(&w.dest.store, "eu", vec![key("k0")], Vec::new()).await.unwrap();
    let port: u16 = w._b.addr().rsplit(':').next().unwrap().parse().unwrap();
    let proxy = vsync_test_harness::Proxy::start(port);
    proxy.set_delay(Duration::from_millis(30));
    let slow = VaultClient::new(vsync_vault::VaultConfig::new(proxy.addr(), vsync_vault::Token::new(vsync_test_harness::DEV_ROOT_TOKEN))).unwrap();
    let direct = std::mem::replace(&mut w.dest.vault, slow);
    w.dest.spec.workers = 1;
    let info = origin::scan(&w.ca, &origin_spec(), None).await.unwrap();
    let store = w.dest.store.clone();
    let (report, ()) = tokio::join!(w.dest.cycle(&w.ca, &info, CycleFlags::default()), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        request_repair(&store, "eu", vec![key("k5")], Vec::new()).await.unwrap();
    });
    report.unwrap();
    w.dest.vault = direct;
    let left = pending_repair(&w.dest.store, "eu").await.unwrap();
    assert_eq!(left.map(|r| r.keys), Some(vec![key("k5")]), "the request written during the cycle is left for the next one");
}

/// The two Vaults of a test world, on the machine's clock.
fn vaults(origin: &VaultClient, dest: &VaultClient) -> vsync_engine::exact::Vaults {
    vsync_engine::exact::Vaults { origin: origin.clone(), dest: dest.clone(), clock: vsync_core::clock::system_clock() }
}

//! Sync-info micro benchmarks: planning over two 1M-entry infos that differ in 1% of keys, and
//! building + digesting a 100k-entry info. Baseline in the same run: the flat (unbucketed)
//! planner over the same 1M entries.

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use vsync_core::info::{Buckets, auto_bucket_count};
use vsync_core::Digest;
use vsync_core::plan::{PlanOptions, plan_buckets, plan_latest};
use vsync_core::{DestEntry, DestinationState, KvVersion, OriginEntry, OriginSnapshot, SecretPath, SyncInfo, DestPath};

fn entry(i: u64) -> OriginEntry {
    OriginEntry {
        kind: KvVersion::V2,
        current_version: i % 17 + 1,
        created_time: "2026-11-22T10:09:20.63904796Z".into(),
        current_live: true,
        digest: Some(Digest([(i % 251) as u8; 32])),
    }
}

fn key(i: u64) -> SecretPath {
    SecretPath::new("secret/", format!("team-{}/app-{}/secret-{i}", i % 100, i % 1000))
}

fn target(k: &SecretPath) -> Option<DestPath> {
    Some(DestPath { mount: k.mount.to_string(), path: k.path.clone() })
}

fn worlds(n: u64) -> (OriginSnapshot, DestinationState) {
    let origin: OriginSnapshot = (0..n).map(|i| (key(i), entry(i))).collect();
    let dest: DestinationState = (0..n)
        .map(|i| {
            let mut e = entry(i);
            if i % 100 == 0 {
                e.current_version += 1; // 1% differ
            }
            let k = key(i);
            let t = target(&k).expect("target");
            (k, DestEntry::new(e, t))
        })
        .collect();
    (origin, dest)
}

fn compare_1m(c: &mut Criterion) {
    let n = 1_000_000;
    let (origin, dest) = worlds(n);
    let count = auto_bucket_count(n as usize);
    let oi = SyncInfo::from_entries(count, origin.clone());
    let di = Buckets::from_entries(count, dest.clone());
    let (od, dd) = (oi.digests(), di.digests());
    let mut g = c.benchmark_group("compare_1m_1pct");
    g.sample_size(10);
    g.bench_function("bucketed_with_stored_digests", |b| {
        b.iter(|| black_box(plan_buckets(&oi, &od, &di, &dd, false, PlanOptions::default(), target)))
    });
    g.bench_function("flat_baseline", |b| {
        b.iter(|| black_box(plan_latest(&origin, &dest, PlanOptions::default(), target)))
    });
    g.finish();
}

fn digest_100k(c: &mut Criterion) {
    let n = 100_000u64;
    let rows: Vec<(SecretPath, OriginEntry)> = (0..n).map(|i| (key(i), entry(i))).collect();
    let mut g = c.benchmark_group("info_100k");
    g.sample_size(10);
    g.bench_function("build_and_digest", |b| {
        b.iter(|| {
            let info = SyncInfo::from_entries(auto_bucket_count(rows.len()), rows.iter().cloned());
            black_box(info.digests())
        })
    });
    let info = SyncInfo::from_entries(auto_bucket_count(rows.len()), rows.iter().cloned());
    g.bench_function("encode_for_storage", |b| {
        b.iter(|| {
            for bucket in info.buckets() {
                let r: Vec<_> = bucket.iter().collect();
                // The storage split itself lives in vsync-state; this is its serialisation cost.
                black_box(serde_json::to_string(&r).expect("encode"));
            }
        })
    });
    g.finish();
}

criterion_group!(benches, compare_1m, digest_100k);
criterion_main!(benches);

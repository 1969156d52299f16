//! Builds a 1M-entry origin info and a destination info differing in 1% of keys, plans once,
//! and prints the plan size; run under `/usr/bin/time -v` to read the peak memory.

use vsync_core::info::{Buckets, auto_bucket_count};
use vsync_core::Digest;
use vsync_core::plan::{PlanOptions, plan_buckets};
use vsync_core::{DestEntry, KvVersion, OriginEntry, SecretPath, SyncInfo, DestPath};

fn main() {
    let n: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let count = auto_bucket_count(n as usize);
    let entry = |i: u64| OriginEntry {
        kind: KvVersion::V2,
        current_version: i % 17 + 1,
        created_time: "2026-11-22T10:09:20.63904796Z".into(),
        current_live: true,
        digest: Some(Digest([(i % 251) as u8; 32])),
    };
    let key = |i: u64| SecretPath::new("secret/", format!("team-{}/app-{}/secret-{i}", i % 100, i % 1000));
    let origin = SyncInfo::from_entries(count, (0..n).map(|i| (key(i), entry(i))));
    if std::env::args().nth(2).as_deref() == Some("origin-only") {
        println!("{n} entries in one info, {count} buckets");
        return;
    }
    let dest = Buckets::from_entries(
        count,
        (0..n).map(|i| {
            let mut e = entry(i);
            if i % 100 == 0 {
                e.current_version += 1;
            }
            let k = key(i);
            let target = DestPath { mount: k.mount.to_string(), path: k.path.clone() };
            (k, DestEntry::new(e, target))
        }),
    );
    let started = std::time::Instant::now();
    let (od, dd) = (origin.digests(), dest.digests());
    let digest_time = started.elapsed();
    let started = std::time::Instant::now();
    let plan = plan_buckets(&origin, &od, &dest, &dd, false, PlanOptions::default(), |k| {
        Some(DestPath { mount: k.mount.to_string(), path: k.path.clone() })
    });
    println!(
        "{n} entries, {count} buckets: digests {digest_time:?}, plan {:?}: {} writes, {} unchanged",
        started.elapsed(),
        plan.writes.len(),
        plan.unchanged
    );
}

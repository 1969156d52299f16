//! The end-to-end scenarios (`e2e`, `wan`, `throttled`): the `vsync` binary as users run it,
//! against baselines measured in the same run on the same servers (see the crate docs).

use std::time::Duration;

use vsync_test_harness::Proxy;
use vsync_vault::SecretData;

use crate::binary::{self, BinaryRun, RunConfig};
use crate::{Error, Harness, Measure, Task, client};

/// Which side of the link the latency is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Far {
    Destination,
    Origin,
}

fn port_of(address: &str) -> Result<u16, Error> {
    Ok(address.rsplit(':').next().ok_or("address without a port")?.parse()?)
}

/// One binary run of a full sync of `origin_mount` into a fresh destination mount.
fn sync_once(h: &mut Harness, origin: &str, dest: &str, origin_mount: &str, versions: &str, workers: Option<usize>) -> Result<BinaryRun, Error> {
    let exe = binary::vsync_exe()?;
    let mount = h.fresh_mount();
    let state = h.dir.path().join(format!("state-bin-{}", h.mounts));
    let run = RunConfig { origin, origin_mount, dest, dest_mount: &mount, versions, workers, state: &state };
    let config = binary::write_config(h.dir.path(), h.mounts, &run)?;
    let out = binary::run_once(&exe, &config)?;
    // A million-key mount takes the server longer to disable than the harness's HTTP client
    // waits: the big scenario leaves it (the servers go with the harness).
    if h.mounts_droppable {
        h.drop_mount(&mount);
    }
    if out.code != Some(0) {
        return Err(format!("vsync run --once exited {:?}:\n{}", out.code, out.output).into());
    }
    Ok(out)
}

/// A raw copy of `origin_mount` (`workers` in flight) into a fresh mount.
fn raw_copy(h: &mut Harness, origin: &str, dest: &str, origin_mount: &str, workers: usize, task: Task) -> Result<Measure, Error> {
    let mut spec = h.spec(task);
    spec.origin = origin.to_owned();
    spec.dest = dest.to_owned();
    spec.origin_mount = origin_mount.to_owned();
    spec.workers = workers;
    spec.dest_mount = h.fresh_mount();
    let m = h.run_child(&spec)?;
    h.drop_mount(&spec.dest_mount);
    Ok(m)
}

fn line(name: &str, secs: f64, secrets: usize, rss_mb: f64) {
    println!("  {name:<24} {secs:>8.2} s  {:>8.0} secrets/s  peak RSS {rss_mb:>6.0} MB", secrets as f64 / secs);
}

/// `e2e`: the binary on loopback, defaults and `workers = 4`, against a raw copy at 4.
pub fn loopback(h: &mut Harness, n: usize) -> Result<(), Error> {
    let (a, b) = (h.a.addr(), h.b.addr());
    for versions in ["latest", "all"] {
        let (mut auto, mut four, mut raw) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..h.runs {
            raw.push(raw_copy(h, &a, &b, "secret/", 4, Task::RawCopy)?.secs);
            auto.push(sync_once(h, &a, &b, "secret/", versions, None)?);
            four.push(sync_once(h, &a, &b, "secret/", versions, Some(4))?);
        }
        let (auto, four, raw) = (median_run(auto), median_run(four), median_secs(raw));
        println!("e2e full sync, {versions}, loopback, vsync binary: {n} secrets, median of {} runs", h.runs);
        println!("  ratio {:.2} (raw copy at 4 in flight / vsync defaults); workers = 4: ratio {:.2}; defaults vs workers = 4: {:.2}", raw / auto.secs, raw / four.secs, four.secs / auto.secs);
        line("vsync (workers auto)", auto.secs, n, auto.rss_mb);
        line("vsync (workers = 4)", four.secs, n, four.rss_mb);
        line("raw copy, 4 in flight", raw, n, 0.0);
    }
    // No change: a second run of one configuration, against one bare SCAN.
    let exe = binary::vsync_exe()?;
    let mount = h.fresh_mount();
    let state = h.dir.path().join("state-bin-steady");
    let run = RunConfig { origin: &a, origin_mount: "secret/", dest: &b, dest_mount: &mount, versions: "latest", workers: None, state: &state };
    let config = binary::write_config(h.dir.path(), 0, &run)?;
    binary::run_once(&exe, &config)?;
    let (mut ours, mut scans) = (Vec::new(), Vec::new());
    for _ in 0..h.runs {
        ours.push(binary::run_once(&exe, &config)?);
        scans.push(h.run_child(&h.spec(Task::BareScan))?.secs);
    }
    let (v, scan) = (median_run(ours), median_secs(scans));
    println!("e2e no-change run, loopback, vsync binary: {n} secrets");
    println!("  vsync / bare SCAN: {:.2} (target within 1.3)", v.secs / scan);
    line("vsync run --once", v.secs, n, v.rss_mb);
    line("bare SCAN", scan, n, 0.0);
    h.drop_mount(&mount);
    Ok(())
}

/// `e2e-rss`: one full sync (`latest`, defaults) of every seeded secret by the binary, for its
/// peak RSS (the 1,000,000-secret figure; not in `all`).
pub fn rss(h: &mut Harness, n: usize) -> Result<(), Error> {
    let (a, b) = (h.a.addr(), h.b.addr());
    h.mounts_droppable = false;
    let v = sync_once(h, &a, &b, "secret/", "latest", None)?;
    println!("e2e-rss: full sync of {n} secrets, latest, vsync binary with defaults");
    line("vsync", v.secs, n, v.rss_mb);
    Ok(())
}

/// `wan`: full syncs across a link of `rtt`, the far side the destination and then the origin.
pub fn wan(h: &mut Harness, rt: &tokio::runtime::Runtime, n: usize, rtt: Duration) -> Result<(), Error> {
    let ms = rtt.as_millis();
    for far in [Far::Destination, Far::Origin] {
        let target = match far {
            Far::Destination => port_of(&h.b.addr())?,
            Far::Origin => port_of(&h.a.addr())?,
        };
        let proxy = Proxy::start(target);
        proxy.set_latency(rtt / 2, rtt / 2);
        let (a, b) = match far {
            Far::Destination => (h.a.addr(), proxy.addr()),
            Far::Origin => (proxy.addr(), h.b.addr()),
        };
        let raw64 = raw_copy(h, &a, &b, "secret/", 64, Task::RawCopy)?;
        let raw4 = if n <= 2000 { Some(raw_copy(h, &a, &b, "secret/", 4, Task::RawCopy)?) } else { None };
        for versions in ["latest", "all"] {
            let v = sync_once(h, &a, &b, "secret/", versions, None)?;
            println!("wan, {far:?} side, RTT {ms} ms, {versions}, vsync binary with defaults: {n} secrets");
            println!("  ratio {:.2} (raw copy at 64 in flight / vsync; target at least 0.8)", raw64.secs / v.secs);
            line("vsync", v.secs, n, v.rss_mb);
            line("raw copy, 64 in flight", raw64.secs, n, raw64.rss_mb);
            if let Some(r) = &raw4 {
                line("raw copy, 4 in flight", r.secs, n, r.rss_mb);
            }
        }
        if far == Far::Destination {
            versions_over_wan(h, rt, &a, &b, n, ms)?;
        }
    }
    Ok(())
}

/// `wan` with 5 versions a key (`all` mode) against a raw copier writing each key's versions
/// in order, 64 keys at a time.
fn versions_over_wan(h: &mut Harness, rt: &tokio::runtime::Runtime, a: &str, b: &str, n: usize, ms: u128) -> Result<(), Error> {
    let keys = (n / 10).max(20);
    if !h.versions_seeded {
        h.a.enable_kv("multi", 2);
        rt.block_on(seed_versions(&h.a.addr(), keys, 5))?;
        h.versions_seeded = true;
    }
    let raw = raw_copy(h, a, b, "multi/", 64, Task::RawCopyVersions)?;
    let v = sync_once(h, a, b, "multi/", "all", None)?;
    println!("wan, Destination side, RTT {ms} ms, all, 5 versions a key: {keys} keys ({} versions)", keys * 5);
    println!("  vsync / raw version copier: {:.2} (target within 1.5)", v.secs / raw.secs);
    line("vsync", v.secs, keys, v.rss_mb);
    line("raw, 64 keys at a time", raw.secs, keys, raw.rss_mb);
    Ok(())
}

async fn seed_versions(origin: &str, keys: usize, versions: u64) -> Result<(), Error> {
    let c = client(origin, vsync_test_harness::DEV_ROOT_TOKEN)?;
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..keys {
        let c = c.clone();
        tasks.spawn(async move {
            for v in 1..=versions {
                let data = SecretData::from_json(&format!(r#"{{"key":{k},"version":{v}}}"#))?;
                c.write_version("multi/", &format!("f{}/k{k}", k % 10), &data, v - 1).await?;
            }
            Ok::<_, Error>(())
        });
        if tasks.len() >= 16 {
            if let Some(r) = tasks.join_next().await {
                r??;
            }
        }
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(())
}

/// `throttled`: 300 secrets into a destination mount under a 40 requests/s rate-limit quota.
pub fn throttled(h: &mut Harness, rt: &tokio::runtime::Runtime) -> Result<(), Error> {
    const KEYS: usize = 300;
    const RATE: f64 = 40.0;
    h.a.enable_kv("throttle", 2);
    rt.block_on(async {
        let c = client(&h.a.addr(), vsync_test_harness::DEV_ROOT_TOKEN)?;
        for i in 0..KEYS {
            c.write_version("throttle/", &format!("k{i}"), &SecretData::from_json(&format!(r#"{{"i":{i}}}"#))?, 0).await?;
        }
        Ok::<_, Error>(())
    })?;
    let exe = binary::vsync_exe()?;
    let mount = h.fresh_mount();
    let quota = serde_json::json!({ "path": mount.clone(), "rate": RATE, "interval": "1s" });
    h.b.root("POST", "sys/quotas/rate-limit/bench-throttle", Some(&quota));
    let state = h.dir.path().join("state-throttled");
    let (a, b) = (h.a.addr(), h.b.addr());
    let run = RunConfig { origin: &a, origin_mount: "throttle/", dest: &b, dest_mount: &mount, versions: "latest", workers: None, state: &state };
    let config = binary::write_config(h.dir.path(), 1000, &run)?;
    let out = binary::run_once(&exe, &config)?;
    h.b.root("DELETE", "sys/quotas/rate-limit/bench-throttle", None);
    h.drop_mount(&mount);
    let failed = binary::failed_secrets(&out.output);
    let rate = KEYS as f64 / out.secs;
    println!("throttled: {KEYS} secrets into a mount under a {RATE:.0} requests/s quota, vsync binary with defaults");
    println!(
        "  exit {:?}, {} failed secrets, {:.2} s: {rate:.1} secrets/s = {:.2} of the quota (target: 0 failed, exit 0, at least 0.8)",
        out.code,
        failed.map_or_else(|| "?".into(), |f| f.to_string()),
        out.secs,
        rate / RATE
    );
    if out.code != Some(0) {
        println!("  output:\n{}", out.output);
    }
    Ok(())
}

fn median_secs(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn median_run(mut v: Vec<BinaryRun>) -> BinaryRun {
    v.sort_by(|x, y| x.secs.total_cmp(&y.secs));
    let mid = v.len() / 2;
    v.swap_remove(mid)
}

//! `cargo run --release -p vsync-bench -- [SCENARIO] [--secrets N] [--workers N]`
//!
//! Starts two real OpenBao dev servers on loopback, seeds N small secrets (over 100 folders)
//! at the origin, and measures, driving the `vsync-engine` library (no subprocess):
//!
//! - `full-latest`, `full-all`: a first sync into an empty destination;
//! - `no-change`: the next cycle with nothing changed;
//! - `incremental`: 1% of the secrets get a new version, then scan and cycle;
//! - `scan`: one origin scan.
//!
//! Each prints secrets/s, Vault requests per secret by kind, the process's peak RSS so far,
//! and a ratio against a raw-copy baseline measured in the same run on the same servers (a
//! concurrent loop that lists, reads each secret from the origin and writes it to the
//! destination at the same concurrency, with no bookkeeping): `ratio` = baseline time /
//! vsync time (1.0 = as fast as the raw copy). `all` (the default) runs every scenario.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use vsync_core::{CycleFlags, DeletePolicy, DestinationSpec, OriginSpec, VersionsMode};
use vsync_engine::{Destination, origin};
use vsync_state::{FileStore, StateStore};
use vsync_test_harness::{Bao, DEV_ROOT_TOKEN};
use vsync_vault::{DataRead, RequestCounts, SecretData, Token, VaultClient, VaultConfig};

type Error = Box<dyn std::error::Error + Send + Sync>;

fn client(bao: &Bao) -> Result<VaultClient, Error> {
    Ok(VaultClient::new(VaultConfig::new(bao.addr(), Token::new(DEV_ROOT_TOKEN)))?)
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()))
        .map_or(0.0, |kb| kb / 1024.0)
}

fn delta(a: RequestCounts, b: RequestCounts) -> RequestCounts {
    RequestCounts {
        data_reads: b.data_reads - a.data_reads,
        data_writes: b.data_writes - a.data_writes,
        metadata_reads: b.metadata_reads - a.metadata_reads,
        metadata_writes: b.metadata_writes - a.metadata_writes,
        lists: b.lists - a.lists,
        other: b.other - a.other,
    }
}

fn per_secret(c: &RequestCounts, n: usize) -> String {
    let n = n.max(1) as f64;
    format!(
        "data reads {:.2}, data writes {:.2}, metadata reads {:.2}, metadata writes {:.2}, lists {:.3}",
        c.data_reads as f64 / n,
        c.data_writes as f64 / n,
        c.metadata_reads as f64 / n,
        c.metadata_writes as f64 / n,
        c.lists as f64 / n
    )
}

async fn seed(c: &VaultClient, n: usize, workers: usize, round: u64) -> Result<(), Error> {
    let limit = Arc::new(Semaphore::new(workers * 4));
    let mut tasks = JoinSet::new();
    for i in 0..n {
        let (c, limit) = (c.clone(), limit.clone());
        tasks.spawn(async move {
            let _p = limit.acquire_owned().await;
            let path = format!("folder{}/secret{i}", i % 100);
            let data = SecretData::from_json(&format!(r#"{{"value":"v{round}-{i}","n":{i}}}"#))?;
            let cur = if round == 0 { 0 } else { c.read_metadata("secret/", &path).await?.map_or(0, |m| m.current_version) };
            c.write_version("secret/", &path, &data, cur).await?;
            Ok::<_, Error>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(())
}

/// The baseline: list, then read each secret and write it elsewhere, `workers` at a time.
async fn raw_copy(origin: &VaultClient, dest: &VaultClient, workers: usize) -> Result<(Duration, usize), Error> {
    let started = Instant::now();
    let info = origin.mount_info("secret/").await?;
    let listed = origin.list_secrets(&info).await?;
    let n = listed.len();
    let limit = Arc::new(Semaphore::new(workers));
    let mut tasks = JoinSet::new();
    for item in listed {
        let (o, d, limit) = (origin.clone(), dest.clone(), limit.clone());
        tasks.spawn(async move {
            let _p = limit.acquire_owned().await;
            if let DataRead::Live(data, _) = o.read_latest("secret/", &item.path).await? {
                d.write_version("raw/", &item.path, &data, 0).await?;
            }
            Ok::<_, Error>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok((started.elapsed(), n))
}

struct Bench {
    origin: VaultClient,
    dest: VaultClient,
    workers: usize,
    baseline: Duration,
}

impl Bench {
    fn spec(&self, versions: VersionsMode, mount: &str) -> DestinationSpec {
        DestinationSpec {
            name: format!("bench-{mount}").trim_end_matches('/').to_owned(),
            labels: BTreeMap::new(),
            mounts: [("secret/".to_owned(), mount.to_owned())].into(),
            interval: Duration::from_secs(60),
            timeout: Duration::from_secs(3600),
            workers: self.workers,
            versions,
            deletes: DeletePolicy::Mirror,
            max_delete_ratio: 1.0,
            config_hash: "bench".into(),
            uses_plugins: false,
        }
    }

    fn origin_spec(&self) -> OriginSpec {
        OriginSpec { mounts: vec!["secret/".into()], interval: Duration::from_secs(60), timeout: Duration::from_secs(3600), workers: self.workers, buckets: None }
    }

    /// One scan plus one destination cycle, reported.
    async fn cycle(&self, name: &str, d: &mut Destination, baseline: Option<Duration>) -> Result<(), Error> {
        let (o0, d0) = (self.origin.request_counts(), self.dest.request_counts());
        let started = Instant::now();
        let info = origin::scan(&self.origin, &self.origin_spec(), None).await?;
        let report = d.cycle(&self.origin, &info, CycleFlags::default()).await?;
        let took = started.elapsed();
        let n = info.entries.len();
        let (o, dc) = (delta(o0, self.origin.request_counts()), delta(d0, self.dest.request_counts()));
        let ratio = baseline.map_or(String::new(), |b| format!(", ratio {:.2} (raw copy {:.2} s)", b.as_secs_f64() / took.as_secs_f64(), b.as_secs_f64()));
        println!("{name}: {n} secrets in {:.2} s, {:.0} secrets/s{ratio}", took.as_secs_f64(), n as f64 / took.as_secs_f64());
        println!("  {report}");
        println!("  origin per secret: {}", per_secret(&o, n));
        println!("  destination per secret: {}", per_secret(&dc, n));
        println!("  peak RSS so far: {:.0} MB", peak_rss_mb());
        Ok(())
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str, default: usize| -> Result<usize, Error> {
        match args.iter().position(|a| a == flag) {
            Some(i) => Ok(args.get(i + 1).ok_or(format!("{flag} needs a number"))?.parse()?),
            None => Ok(default),
        }
    };
    let n = value("--secrets", 10_000)?;
    let workers = value("--workers", 4)?;
    let scenario = args.first().filter(|a| !a.starts_with("--")).cloned().unwrap_or_else(|| "all".into());
    let known = ["all", "full-latest", "full-all", "no-change", "incremental", "scan"];
    if !known.contains(&scenario.as_str()) {
        return Err(format!("unknown scenario `{scenario}`; one of {}", known.join(", ")).into());
    }
    let run = |s: &str| scenario == "all" || scenario == s;

    let (a, b) = (Bao::dev(), Bao::dev());
    b.enable_kv("raw", 2);
    b.enable_kv("exact", 2);
    let (ca, cb) = (client(&a)?, client(&b)?);
    let started = Instant::now();
    seed(&ca, n, workers, 0).await?;
    println!("seeded {n} secrets in {:.1} s (workers {workers})", started.elapsed().as_secs_f64());

    let (baseline, copied) = raw_copy(&ca, &cb, workers).await?;
    println!("raw copy baseline: {copied} secrets in {:.2} s, {:.0} secrets/s", baseline.as_secs_f64(), copied as f64 / baseline.as_secs_f64());
    let bench = Bench { origin: ca.clone(), dest: cb.clone(), workers, baseline };

    if run("scan") {
        let started = Instant::now();
        let info = origin::scan(&ca, &bench.origin_spec(), None).await?;
        println!("scan: {} secrets in {:.2} s; peak RSS so far {:.0} MB", info.entries.len(), started.elapsed().as_secs_f64(), peak_rss_mb());
    }
    let dir = tempfile::tempdir()?;
    let store = StateStore::File(FileStore::open(dir.path())?);
    let mut latest = Destination {
        spec: bench.spec(VersionsMode::Latest, "secret/"),
        vault: cb.clone(),
        store: store.clone(),
        lock: store.lock_side("destination-bench-secret").await?,
        mapper: None,
        digest_key: None,
        progress: None,
    };
    if run("full-latest") || run("no-change") || run("incremental") {
        bench.cycle("full sync, latest", &mut latest, Some(bench.baseline)).await?;
    }
    if run("no-change") {
        bench.cycle("no-change cycle, latest", &mut latest, None).await?;
    }
    if run("incremental") {
        let changed = n / 100;
        let started = Instant::now();
        for i in 0..changed {
            let path = format!("folder{}/secret{}", (i * 100) % 100, i * 100);
            let cur = ca.read_metadata("secret/", &path).await?.map_or(0, |m| m.current_version);
            ca.write_version("secret/", &path, &SecretData::from_json(r#"{"value":"changed"}"#)?, cur).await?;
        }
        println!("changed {changed} secrets in {:.1} s", started.elapsed().as_secs_f64());
        bench.cycle("incremental (1% changed), latest", &mut latest, None).await?;
    }
    if run("full-all") {
        let mut exact = Destination {
            spec: bench.spec(VersionsMode::All, "exact/"),
            vault: cb.clone(),
            store: store.clone(),
            lock: store.lock_side("destination-bench-exact").await?,
            mapper: None,
            digest_key: None,
            progress: None,
        };
        bench.cycle("full sync, all", &mut exact, Some(bench.baseline)).await?;
        bench.cycle("no-change cycle, all", &mut exact, None).await?;
    }
    Ok(())
}

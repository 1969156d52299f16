//! Release-mode macro benchmark: how long a write at the origin takes to show at the
//! destination, with `vsync origin` (interval 1 s) and `vsync destination` (watching the origin
//! root) as separate processes on a shared file store and real OpenBao dev servers.
//!
//! `cargo bench -p vsync --bench watch_latency` prints p50/p95/max over 20 writes and, as the
//! same-run baseline, the latency of the same write read back directly from the origin.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use vsync_test_harness::{Bao, DEV_ROOT_TOKEN};
use vsync_vault::{DataRead, SecretData, Token, VaultClient, VaultConfig};

const WRITES: usize = 20;

fn client(b: &Bao) -> VaultClient {
    VaultClient::new(VaultConfig::new(b.addr(), Token::new(DEV_ROOT_TOKEN))).expect("client")
}

fn spawn(cfg: &std::path::Path, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_vsync"))
        .arg("--config")
        .arg(cfg)
        .args(args)
        .env("VSYNC_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn vsync")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn visible(c: &VaultClient, path: &str, value: u64) -> bool {
    matches!(c.read_latest("secret/", path).await, Ok(DataRead::Live(d, _)) if d.as_json().contains(&format!("\"n\":{value}")))
}

fn main() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (a, b) = (Bao::dev(), Bao::dev());
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("vsync.toml");
    let state = dir.path().join("state");
    std::fs::write(
        &cfg,
        format!(
            r#"
[origin]
vault = {{ address = "{}", token = "{DEV_ROOT_TOKEN}" }}
mounts = ["secret/"]
interval = "1s"
state = {{ backend = "file", path = "{}" }}

[[destination]]
name = "eu"
vault = {{ address = "{}", token = "{DEV_ROOT_TOKEN}" }}
mounts = {{ "secret/" = "secret/" }}
state = {{ backend = "file", path = "{}" }}
versions = "latest"
interval = "1m"
"#,
            a.addr(),
            state.display(),
            b.addr(),
            state.display()
        ),
    )
    .expect("config");
    let (ca, cb) = (client(&a), client(&b));
    let mut origin = spawn(&cfg, &["origin"]);
    let mut dest = spawn(&cfg, &["destination", "--name", "eu"]);
    let mut synced = Vec::new();
    let mut direct = Vec::new();
    rt.block_on(async {
        // Warm up: the first cycle of each role.
        let data = SecretData::from_json(&json!({"n": 0}).to_string()).expect("json");
        ca.write_version("secret/", "warmup", &data, 0).await.expect("write");
        let start = Instant::now();
        while !visible(&cb, "warmup", 0).await {
            assert!(start.elapsed() < Duration::from_secs(60), "warm-up never synced");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for n in 1..=WRITES as u64 {
            // Spread writes over the origin's ticker phase.
            tokio::time::sleep(Duration::from_millis(137 * n % 1000)).await;
            let data = SecretData::from_json(&json!({"n": n}).to_string()).expect("json");
            let t0 = Instant::now();
            ca.write_version("secret/", &format!("w{n}"), &data, 0).await.expect("write");
            while !visible(&ca, &format!("w{n}"), n).await {}
            direct.push(t0.elapsed());
            while !visible(&cb, &format!("w{n}"), n).await {
                assert!(t0.elapsed() < Duration::from_secs(30), "write {n} never synced");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            synced.push(t0.elapsed());
        }
    });
    let _ = origin.kill();
    let _ = dest.kill();
    let _ = origin.wait();
    let _ = dest.wait();
    synced.sort();
    direct.sort();
    let p95 = percentile(&synced, 0.95);
    println!("watch latency over {WRITES} writes (origin interval 1 s, destination watching the origin root):");
    println!(
        "  origin write -> visible at destination: p50 {:?}, p95 {:?}, max {:?}",
        percentile(&synced, 0.5),
        p95,
        synced[synced.len() - 1]
    );
    println!(
        "  baseline (write -> read back at origin): p50 {:?}, p95 {:?}; ratio p95 {:.0}x",
        percentile(&direct, 0.5),
        percentile(&direct, 0.95),
        p95.as_secs_f64() / percentile(&direct, 0.95).as_secs_f64().max(1e-9)
    );
    println!("  target p95 < 3 s: {}", if p95 < Duration::from_secs(3) { "met" } else { "MISSED" });
}

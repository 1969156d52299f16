//! Release-mode macro benchmark of the event-driven origin (`[origin] audit_listen`), on real
//! OpenBao dev servers whose configuration declares a socket audit device (to vsync) and a file
//! audit device beside it. Both intervals are 60 s, so only the feed explains fast propagation.
//!
//! `cargo bench -p vsync --bench audit_feed [-- --samples N] [--workers N] [--only run|burst|origin|separate]`
//! prints:
//! - origin write -> destination read latency, p50/p95/max over N writes (default 200):
//!   one `vsync run` process on the file store; `vsync origin` + `vsync destination` as separate
//!   processes over the Consul emulator (blocking query on the origin root) and over the file
//!   store (the destination polls the root every 100 ms); the same-run baseline is the write
//!   read back from the origin itself;
//! - a burst of 2,000 origin writes: time from the last write until all are at the destination,
//!   and its bound measured right after on the same servers: a raw copy of those 2,000 keys
//!   (read at the origin, write at the destination, `workers` at a time, no bookkeeping) plus
//!   the 2,000 metadata reads vsync makes on top;
//! - the origin's own write latency with vsync's listener up, down (nothing listening) and
//!   stalled (accepting, never reading), with the file device beside the socket, and what a
//!   server with only the socket device does when the listener is down.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use vsync_consul_emulator::Emulator;
use vsync_test_harness::{Bao, DEV_ROOT_TOKEN, audit_devices_hcl};
use vsync_vault::{DataRead, SecretData, Token, VaultClient, VaultConfig};

fn client(b: &Bao) -> VaultClient {
    VaultClient::new(VaultConfig::new(b.addr(), Token::new(DEV_ROOT_TOKEN))).expect("client")
}

fn data(n: u64) -> SecretData {
    SecretData::from_json(&json!({"n": n}).to_string()).expect("json")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(mut v: Vec<Duration>) -> String {
    v.sort();
    format!(
        "p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms (n = {})",
        percentile(&v, 0.5).as_secs_f64() * 1e3,
        percentile(&v, 0.95).as_secs_f64() * 1e3,
        v[v.len() - 1].as_secs_f64() * 1e3,
        v.len()
    )
}

/// A listener that accepts and, unless `stalled`, drains every connection, until `stop`.
/// Stands in for vsync while a dev server creates its socket device (the creation test line
/// must be delivered), and plays a stalled vsync.
struct StandIn {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StandIn {
    fn start(listener: TcpListener, stalled: bool) -> StandIn {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            listener.set_nonblocking(true).expect("nonblocking");
            let mut open: Vec<TcpStream> = Vec::new();
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        if !stalled {
                            let mut r = conn.try_clone().expect("clone");
                            std::thread::spawn(move || std::io::copy(&mut r, &mut std::io::sink()));
                        }
                        open.push(conn);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            for c in open {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
        });
        StandIn { stop, thread: Some(thread) }
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An origin dev server whose socket device reports to a free loopback port (returned).
fn origin_with_devices(dir: &Path, file_device: bool) -> (Bao, String) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let listen = listener.local_addr().expect("addr").to_string();
    let stand_in = StandIn::start(listener, false);
    let hcl = if file_device {
        audit_devices_hcl(&listen, &dir.join("audit.log"))
    } else {
        format!("audit \"socket\" \"vsync\" {{\n  options = {{ address = \"{listen}\", socket_type = \"tcp\" }}\n}}\n")
    };
    let bao = Bao::dev_with_config(&hcl);
    stand_in.stop();
    (bao, listen)
}

fn write_config(dir: &Path, a: &Bao, b: &Bao, listen: &str, state: &str, workers: usize) -> PathBuf {
    let cfg = dir.join("vsync.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[origin]
vault = {{ address = "{}", token = "{DEV_ROOT_TOKEN}" }}
mounts = ["secret/"]
interval = "60s"
audit_listen = "{listen}"
state = {state}
workers = {workers}

[[destination]]
name = "eu"
vault = {{ address = "{}", token = "{DEV_ROOT_TOKEN}" }}
mounts = {{ "secret/" = "secret/" }}
state = {state}
versions = "latest"
interval = "60s"
workers = {workers}
"#,
            a.addr(),
            b.addr()
        ),
    )
    .expect("config");
    cfg
}

/// A `vsync` child, killed (by PID) when dropped.
struct Proc(Child);

impl Proc {
    fn spawn(cfg: &Path, args: &[&str]) -> Proc {
        Proc(
            Command::new(env!("CARGO_BIN_EXE_vsync"))
                .current_dir(cfg.parent().expect("dir"))
                .arg("--config")
                .arg(cfg)
                .args(args)
                .env("VSYNC_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn vsync"),
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn visible(c: &VaultClient, path: &str, n: u64) -> bool {
    matches!(c.read_latest("secret/", path).await, Ok(DataRead::Live(d, _)) if d.as_json() == format!("{{\"n\":{n}}}"))
}

async fn wait_visible(c: &VaultClient, path: &str, n: u64, limit: Duration) {
    let started = Instant::now();
    while !visible(c, path, n).await {
        assert!(started.elapsed() < limit, "`{path}` not at the destination after {limit:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// `samples` writes, one at a time, `gap` plus 0-50 ms apart: write -> destination read.
async fn propagation(ca: &VaultClient, cb: &VaultClient, tag: &str, samples: u64, gap: Duration) -> (Vec<Duration>, Vec<Duration>) {
    ca.write_version("secret/", &format!("{tag}/warmup"), &data(0), 0).await.expect("write");
    wait_visible(cb, &format!("{tag}/warmup"), 0, Duration::from_secs(60)).await;
    let (mut synced, mut direct) = (Vec::new(), Vec::new());
    for n in 1..=samples {
        tokio::time::sleep(gap + Duration::from_millis(37 * n % 50)).await;
        let path = format!("{tag}/w{n}");
        let t0 = Instant::now();
        ca.write_version("secret/", &path, &data(n), 0).await.expect("write");
        while !visible(ca, &path, n).await {}
        direct.push(t0.elapsed());
        wait_visible(cb, &path, n, Duration::from_secs(30)).await;
        synced.push(t0.elapsed());
    }
    (synced, direct)
}

/// Origin write latency over up to `n` sequential writes, within `budget` and until 10 writes
/// took over 500 ms; also how many failed.
async fn write_latency(ca: &VaultClient, tag: &str, n: u64, budget: Duration) -> (Vec<Duration>, usize) {
    let mut took = Vec::new();
    let mut failed = 0;
    let started = Instant::now();
    for i in 0..n {
        let t0 = Instant::now();
        if ca.write_version("secret/", &format!("{tag}/w{i}"), &data(i), 0).await.is_err() {
            failed += 1;
        }
        took.push(t0.elapsed());
        if started.elapsed() > budget || took.iter().filter(|d| **d > Duration::from_millis(500)).count() >= 10 {
            break;
        }
    }
    (took, failed)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let samples: u64 = args
        .iter()
        .position(|a| a == "--samples")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let workers: usize = args
        .iter()
        .position(|a| a == "--workers")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let only = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1)).cloned();
    let wants = |s: &str| only.as_deref().is_none_or(|o| o == s);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");

    // 1. One `vsync run` process, file store.
    let (a, listen) = origin_with_devices(dir.path(), true);
    let b = Bao::dev();
    let (ca, cb) = (client(&a), client(&b));
    let run_dir = dir.path().join("run");
    std::fs::create_dir_all(&run_dir).expect("dir");
    let state = format!("{{ backend = \"file\", path = \"{}\" }}", run_dir.join("state").display());
    let cfg = write_config(&run_dir, &a, &b, &listen, &state, workers);
    println!("audit feed benchmark (intervals 60 s, workers {workers}, socket + file audit devices on the origin):");
    {
        let _run = Proc::spawn(&cfg, &["run"]);
        if wants("run") {
            let (synced, direct) = rt.block_on(propagation(&ca, &cb, "run", samples, Duration::ZERO));
            println!("  vsync run (one process, file store): write -> destination read: {}", summary(synced));
            println!("    baseline, write -> read back at the origin: {}", summary(direct));
        }

        // Burst of 2,000 writes, 8 writers.
        let last = wants("burst").then(|| rt.block_on(async {
            let mut writers = tokio::task::JoinSet::new();
            let started = Instant::now();
            for t in 0..8u64 {
                let ca = ca.clone();
                writers.spawn(async move {
                    for i in (t..2000).step_by(8) {
                        ca.write_version("secret/", &format!("burst/{}/k{i}", i % 20), &data(i), 0).await.expect("write");
                    }
                });
            }
            while writers.join_next().await.is_some() {}
            let wrote = started.elapsed();
            let last = Instant::now();
            let info = cb.mount_info("secret/").await.expect("mount");
            loop {
                let n = cb.list_secrets(&info).await.expect("list").iter().filter(|s| s.path.starts_with("burst/")).count();
                if n == 2000 {
                    break;
                }
                assert!(last.elapsed() < Duration::from_secs(120), "burst: {n} of 2000 after 120 s");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            println!("  burst of 2000 writes (8 writers, written in {:.2} s): all at the destination {:.2} s after the last write (target 3 s)",
                wrote.as_secs_f64(), last.elapsed().as_secs_f64());
            // The bound: what the same servers take for the requests any copier needs.
            b.enable_kv("raw", 2);
            let keys: Vec<String> = ca.list_secrets(&ca.mount_info("secret/").await.expect("mount")).await.expect("list")
                .into_iter().map(|s| s.path).filter(|p| p.starts_with("burst/")).collect();
            let limit = Arc::new(tokio::sync::Semaphore::new(workers));
            let started = Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            for k in keys.clone() {
                let (ca, cb, limit) = (ca.clone(), cb.clone(), limit.clone());
                tasks.spawn(async move {
                    let _p = limit.acquire_owned().await;
                    if let Ok(DataRead::Live(d, _)) = ca.read_latest("secret/", &k).await {
                        cb.write_version("raw/", &k, &d, 0).await.expect("raw write");
                    }
                });
            }
            while tasks.join_next().await.is_some() {}
            let raw = started.elapsed();
            let started = Instant::now();
            for k in keys {
                let (ca, limit) = (ca.clone(), limit.clone());
                tasks.spawn(async move {
                    let _p = limit.acquire_owned().await;
                    ca.read_metadata("secret/", &k).await.expect("metadata");
                });
            }
            while tasks.join_next().await.is_some() {}
            println!("    bound, same servers, {workers} at a time: raw copy of the 2000 keys {:.2} s, plus their metadata reads {:.2} s",
                raw.as_secs_f64(), started.elapsed().as_secs_f64());
            last
        }));
        let _ = last;

        // Origin write latency with vsync's listener up.
        if wants("origin") {
            let (up, failed) = rt.block_on(write_latency(&ca, "up", 500, Duration::from_secs(60)));
            println!("  origin write latency, listener up: {}, {failed} failed", summary(up));
        }
    }
    if wants("origin") {
    // vsync is down: nothing listens, the socket device's writes are refused.
    let (down, failed) = rt.block_on(write_latency(&ca, "down", 500, Duration::from_secs(60)));
    println!("  origin write latency, listener down (file device beside): {}, {failed} failed", summary(down));
    // Stalled: accepts, never reads; the server's writes block once the socket buffers fill.
    let stall = StandIn::start(TcpListener::bind(&listen).expect("bind the stalled listener"), true);
    let (stalled, failed) = rt.block_on(write_latency(&ca, "stalled", 20_000, Duration::from_secs(60)));
    let slow = stalled.iter().filter(|d| **d > Duration::from_millis(500)).count();
    let first_slow = stalled.iter().position(|d| *d > Duration::from_millis(500));
    println!(
        "  origin write latency, listener stalled (file device beside): {}, {slow} over 500 ms (the first after {} fast writes), {failed} failed",
        summary(stalled),
        first_slow.map_or("no".to_owned(), |i| i.to_string())
    );
    stall.stop();
    drop(a);

    // 2. A server with the socket device only, listener down.
    let (solo, _listen) = origin_with_devices(dir.path(), false);
    let cs = client(&solo);
    let (alone, failed) = rt.block_on(write_latency(&cs, "alone", 50, Duration::from_secs(60)));
    println!("  socket device only, listener down: {}, {failed} writes failed", summary(alone));
    drop(solo);
    }

    // 3. Separate processes: over the Consul emulator, then over the file store.
    for backend in ["consul", "file"].into_iter().filter(|_| wants("separate")) {
        let (a, listen) = origin_with_devices(dir.path(), true);
        let b = Bao::dev();
        let (ca, cb) = (client(&a), client(&b));
        let emu = Emulator::start();
        let side_dir = dir.path().join(backend);
        std::fs::create_dir_all(&side_dir).expect("dir");
        let state = match backend {
            "consul" => format!("{{ backend = \"consul\", address = \"{}\", prefix = \"bench/\" }}", emu.url()),
            _ => format!("{{ backend = \"file\", path = \"{}\" }}", side_dir.join("state").display()),
        };
        let cfg = write_config(&side_dir, &a, &b, &listen, &state, workers);
        let _origin = Proc::spawn(&cfg, &["origin"]);
        let _dest = Proc::spawn(&cfg, &["destination", "--name", "eu"]);
        let how = if backend == "consul" { "Consul emulator, blocking query" } else { "file store, 100 ms poll" };
        // A destination's watch waits at least 250 ms between two wake-ups (Consul's watch
        // rules): back-to-back writes show that floor, writes 300 ms apart the event path.
        for gap in [Duration::ZERO, Duration::from_millis(300)] {
            let (synced, _) = rt.block_on(propagation(&ca, &cb, &format!("{backend}{}", gap.as_millis()), samples, gap));
            println!("  vsync origin + vsync destination ({how}), writes {}+ ms apart: write -> destination read: {}", gap.as_millis(), summary(synced));
        }
    }
}

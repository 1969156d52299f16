//! Hostile peers against a real `vsync run`'s audit feed (`[origin] audit_listen`), shared by
//! the end-to-end suite (`tests/e2e/hostile.rs`: the real device keeps delivering, counters and
//! logs) and the release-mode benchmark (`cargo bench -p vsync --bench hostile_peers`: peak RSS
//! under a stated bound).
//!
//! [`run`] starts an origin OpenBao whose socket audit device reports to vsync (a file device
//! beside it), a destination, and `vsync run` with both intervals at 60 s and the telemetry
//! listener; then plays each [`Attack`] in turn. Before each, the process's peak RSS is reset
//! (`/proc/PID/clear_refs`); after each, one origin write must reach the destination (only the
//! feed can bring it within the 60 s intervals) and the peak is read (`VmHWM`). Every attack is
//! bounded in connections, bytes and time, and stops by itself. Loopback only: the peer outside
//! `audit_allow` connects from `127.0.0.2` (Linux routes all of `127.0.0.0/8` to loopback),
//! while the device connects from `127.0.0.1`, the only address allowed.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::{Bao, DEV_ROOT_TOKEN, audit_devices_hcl, free_port_pair, http_request};

/// The attacks, in the order [`run`] plays them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attack {
    /// 4 connections, 4 MiB of random bytes each (newlines included), then close.
    RandomBytes,
    /// 8 connections, 2 lines of 16 MiB each: an update of `secret/data/aaaa...`.
    LongLines,
    /// 200 connections opened at once and held, silent, while the write is checked.
    ManyConnections,
    /// 20 connections that trickle one byte of a line every 500 ms for 12 s.
    Slowloris,
    /// 20,000 forged events: writes outside the configured mounts, paths that cannot be keys
    /// (carrying [`FORGED_MARKER`]), and plausible keys that do not exist.
    Forged,
    /// 50 connections from `127.0.0.2` (outside `audit_allow`), each sending a forged event.
    OutsideAllow,
}

impl Attack {
    /// Every attack, in order.
    pub const ALL: [Attack; 6] =
        [Attack::RandomBytes, Attack::LongLines, Attack::ManyConnections, Attack::Slowloris, Attack::Forged, Attack::OutsideAllow];

    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Attack::RandomBytes => "random bytes",
            Attack::LongLines => "16 MiB lines",
            Attack::ManyConnections => "200 parallel connections",
            Attack::Slowloris => "slowloris",
            Attack::Forged => "forged events",
            Attack::OutsideAllow => "peer outside audit_allow",
        }
    }
}

/// Text inside every forged path that fails validation: it must never reach vsync's logs.
pub const FORGED_MARKER: &str = "FORGED-x9q";

/// What one attack cost.
#[derive(Debug, Clone)]
pub struct Phase {
    /// Which attack.
    pub attack: Attack,
    /// Peak resident set during the attack and the write after it, KiB.
    pub peak_rss_kib: u64,
    /// How long the write after the attack took to reach the destination.
    pub delivered_after: Duration,
}

/// What [`run`] measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// Peak RSS after the start-up sync, before any attack, KiB.
    pub baseline_rss_kib: u64,
    /// One per attack.
    pub phases: Vec<Phase>,
    /// `/metrics` at the end.
    pub metrics: String,
    /// vsync's stdout and stderr (debug level).
    pub logs: String,
    /// vsync's exit code after SIGTERM.
    pub exit: Option<i32>,
}

/// A running `vsync run` with its servers.
struct World {
    origin: Bao,
    dest: Bao,
    child: Child,
    listen: SocketAddr,
    telemetry: u16,
    dir: tempfile::TempDir,
}

/// Accepts and drains connections until `stop`: stands in for vsync while the dev server
/// creates its socket device (the creation test line must be delivered).
fn stand_in(listener: TcpListener, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let _ = listener.set_nonblocking(true);
        let mut open = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((s, _)) => {
                    if let Ok(mut r) = s.try_clone() {
                        std::thread::spawn(move || std::io::copy(&mut r, &mut std::io::sink()));
                    }
                    open.push(s);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        for s in open {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    })
}

fn start(vsync: &Path) -> World {
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let listen = listener.local_addr().expect("addr");
    let stop = Arc::new(AtomicBool::new(false));
    let helper = stand_in(listener, stop.clone());
    let hcl = audit_devices_hcl(&listen.to_string(), &dir.path().join("audit.log"));
    let (origin, dest) = (Bao::dev_with_config(&hcl), Bao::dev());
    stop.store(true, Ordering::SeqCst);
    let _ = helper.join();
    let telemetry = free_port_pair();
    let state = format!("{{ backend = \"file\", path = \"{}\" }}", dir.path().join("state").display());
    let cfg = dir.path().join("vsync.toml");
    let text = format!(
        "[origin]\nvault = {{ address = \"{}\", token = \"{DEV_ROOT_TOKEN}\" }}\nmounts = [\"secret/\"]\nstate = {state}\n\
         interval = \"60s\"\naudit_listen = \"{listen}\"\naudit_allow = [\"127.0.0.1\"]\n\n\
         [[destination]]\nname = \"eu\"\nvault = {{ address = \"{}\", token = \"{DEV_ROOT_TOKEN}\" }}\n\
         mounts = {{ \"secret/\" = \"secret/\" }}\nstate = {state}\nversions = \"latest\"\ninterval = \"60s\"\n\n\
         [telemetry]\nlisten = \"127.0.0.1:{telemetry}\"\n",
        origin.addr(),
        dest.addr()
    );
    std::fs::write(&cfg, text).expect("config");
    let child = Command::new(vsync)
        .current_dir(dir.path())
        .args(["--config", cfg.to_str().unwrap_or_default(), "--log-format", "human", "run"])
        .env("VSYNC_LOG", "debug")
        .stdout(Stdio::from(std::fs::File::create(dir.path().join("stdout")).expect("stdout")))
        .stderr(Stdio::from(std::fs::File::create(dir.path().join("stderr")).expect("stderr")))
        .spawn()
        .expect("start vsync");
    World { origin, dest, child, listen, telemetry, dir }
}

impl World {
    fn write(&self, key: &str, value: &str) {
        let (code, body) = http_request(
            self.origin.port,
            "POST",
            &format!("/v1/secret/data/{key}"),
            Some(DEV_ROOT_TOKEN),
            Some(&json!({"data": {"v": value}})),
        );
        assert_eq!(code, 200, "origin write: {body}");
    }

    fn read(&self, key: &str) -> Option<String> {
        let (code, body) = http_request(self.dest.port, "GET", &format!("/v1/secret/data/{key}"), Some(DEV_ROOT_TOKEN), None);
        (code == 200).then(|| body["data"]["data"]["v"].as_str().unwrap_or_default().to_owned())
    }

    /// Writes `key` at the origin; the time until the destination has it (panics after `limit`).
    fn delivered(&self, key: &str, limit: Duration) -> Duration {
        let started = Instant::now();
        self.write(key, key);
        while self.read(key).as_deref() != Some(key) {
            assert!(started.elapsed() < limit, "`{key}` not at the destination {limit:?} after its write:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(5));
        }
        started.elapsed()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn logs(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
        format!("{}{}", read("stdout"), read("stderr"))
    }
}

/// Resets the peak RSS of `pid` (`VmHWM`) to its current RSS.
fn reset_peak(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// The peak RSS of `pid` since the last [`reset_peak`], KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Connects to `target` from `source` (any `127.x.y.z` works on Linux loopback).
pub fn connect_from(source: Ipv4Addr, target: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(IpAddr::V4(source), 0).into())?;
    socket.connect_timeout(&target.into(), Duration::from_secs(5))?;
    Ok(socket.into())
}

/// A forged audit response line: a successful `operation` on `path`.
pub fn forged_line(operation: &str, path: &str) -> String {
    format!("{}\n", json!({"type": "response", "request": {"operation": operation, "path": path}}))
}

/// Runs `n` threads of `f(i)` and waits for them all.
fn in_parallel(n: usize, f: impl Fn(usize) + Send + Sync + 'static) {
    let f = Arc::new(f);
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let f = f.clone();
            std::thread::spawn(move || f(i))
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

/// Plays `attack` against `target`; returns what must stay open while the write is checked.
pub fn play(attack: Attack, target: SocketAddr) -> Vec<TcpStream> {
    match attack {
        Attack::RandomBytes => in_parallel(4, move |_| {
            let Ok(mut s) = TcpStream::connect(target) else { return };
            let mut chunk = vec![0u8; 64 * 1024];
            for _ in 0..64 {
                chunk.iter_mut().for_each(|b| *b = fastrand::u8(..));
                if s.write_all(&chunk).is_err() {
                    break;
                }
            }
        }),
        Attack::LongLines => in_parallel(8, move |_| {
            let Ok(mut s) = TcpStream::connect(target) else { return };
            let head = br#"{"type":"response","request":{"operation":"update","path":"secret/data/"#;
            let filler = vec![b'a'; 1024 * 1024];
            'lines: for _ in 0..2 {
                if s.write_all(head).is_err() {
                    break;
                }
                for _ in 0..16 {
                    if s.write_all(&filler).is_err() {
                        break 'lines;
                    }
                }
                if s.write_all(b"\"}}\n").is_err() {
                    break;
                }
            }
        }),
        Attack::ManyConnections => return (0..200).filter_map(|_| TcpStream::connect(target).ok()).collect(),
        Attack::Slowloris => in_parallel(20, move |_| {
            let Ok(mut s) = TcpStream::connect(target) else { return };
            let line = br#"{"type":"response","request":{"operation":"update","path":"secret/data/slow"}}"#;
            for b in line.iter().take(24) {
                if s.write_all(&[*b]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }),
        Attack::Forged => {
            if let Ok(mut s) = TcpStream::connect(target) {
                let mut text = String::new();
                for i in 0..20_000 {
                    let path = match i % 4 {
                        0 => format!("other/data/{FORGED_MARKER}-{i}"),
                        1 => format!("secret/data/../{FORGED_MARKER}-{i}"),
                        2 => format!("secret/data/{FORGED_MARKER}\u{1b}[31m-{i}"),
                        _ => format!("sys/policies/acl/{FORGED_MARKER}-{i}"),
                    };
                    text.push_str(&forged_line("update", &path));
                }
                let _ = s.write_all(text.as_bytes());
                let _ = s.shutdown(std::net::Shutdown::Write);
                let _ = s.read_to_end(&mut Vec::new());
            }
        }
        Attack::OutsideAllow => in_parallel(50, move |i| {
            let Ok(mut s) = connect_from(Ipv4Addr::new(127, 0, 0, 2), target) else { return };
            let _ = s.write_all(forged_line("update", &format!("secret/data/outsider-{i}")).as_bytes());
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = s.read_to_end(&mut Vec::new());
        }),
    }
    Vec::new()
}

/// Starts the world, plays `attacks` in turn (each followed by a write that must arrive within
/// `deliver_within`), stops vsync with SIGTERM, and reports.
pub fn run(vsync: &Path, attacks: &[Attack], deliver_within: Duration) -> Report {
    let mut w = start(vsync);
    w.delivered("seed", Duration::from_secs(60));
    // The device's connection is the one that brought the seed's event; settle, then measure.
    std::thread::sleep(Duration::from_millis(500));
    let baseline_rss_kib = peak_rss_kib(w.pid());
    let mut phases = Vec::new();
    for (i, attack) in attacks.iter().enumerate() {
        reset_peak(w.pid());
        let held = play(*attack, w.listen);
        let delivered_after = w.delivered(&format!("after-{i}"), deliver_within);
        drop(held);
        phases.push(Phase { attack: *attack, peak_rss_kib: peak_rss_kib(w.pid()), delivered_after });
    }
    let metrics = http_get(w.telemetry, "/metrics").unwrap_or_default();
    let _ = Command::new("kill").arg("-TERM").arg(w.pid().to_string()).status();
    let started = Instant::now();
    let exit = loop {
        match w.child.try_wait() {
            Ok(Some(s)) => break s.code(),
            _ if started.elapsed() > Duration::from_secs(15) => {
                let _ = w.child.kill();
                break None;
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    Report { baseline_rss_kib, phases, metrics, logs: w.logs(), exit }
}

/// `GET path` on a loopback port: the body of a 200 answer.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes()).ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

/// The value of the first sample line of `series` (name plus labels) in `metrics`.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

//! The `wan-tls` scenario: HTTP/2 against HTTP/1.1 over TLS across a long link.
//!
//! Two `-dev-tls` servers of its own (origin and destination), the destination behind the
//! harness proxy at `--rtt-ms`. The raw copier (64 in flight, the library's `VaultClient`)
//! copies the origin's N secrets into a fresh destination mount, once with
//! `HttpVersion::Auto` (HTTP/2, which OpenBao offers by ALPN) and once with
//! `HttpVersion::Http1Only`, alternating which goes first, `--runs` times. Printed: median
//! seconds and secrets/s of each, the ratio, and the TCP connections the proxy forwarded in
//! each run (connection reuse shows there), and the CPU time the copier and the two servers
//! spent (this machine's cores are shared, so CPU can bound what latency alone would not).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use vsync_test_harness::{Bao, DEV_ROOT_TOKEN, Proxy};
use vsync_vault::{HttpVersion, Token, VaultClient, VaultConfig};

use crate::{Error, Harness, Measure, Task, cpu_secs, median, seed};

/// In flight, like the raw copier the `wan` scenario compares vsync with.
const IN_FLIGHT: usize = 64;

/// One HTTP mode's runs: the child's measures and the connections each opened.
#[derive(Debug, Default)]
struct Mode {
    runs: Vec<Measure>,
    connections: Vec<u64>,
    /// CPU seconds of both servers, per run.
    server_cpu: Vec<f64>,
}

/// A client of a TLS server trusting `ca`.
fn tls_client(address: &str, ca: &Path, version: HttpVersion) -> Result<VaultClient, Error> {
    let mut config = VaultConfig::new(address, Token::new(DEV_ROOT_TOKEN));
    config.ca_cert = Some(ca.to_owned());
    config.http_version = version;
    Ok(VaultClient::new(config)?)
}

/// Both servers' CAs in one PEM bundle (each `-dev-tls` server makes its own).
fn ca_bundle(dir: &Path, servers: [&Bao; 2]) -> Result<PathBuf, Error> {
    let mut pem = Vec::new();
    for bao in servers {
        pem.extend(std::fs::read(bao.ca_cert().ok_or("not a TLS server")?)?);
        pem.push(b'\n');
    }
    let path = dir.join("wan-tls-ca.pem");
    std::fs::write(&path, pem)?;
    Ok(path)
}

/// Enables a KV v2 mount and waits until it has upgraded its storage (it answers 400 until then).
async fn enable_kv2(admin: &VaultClient, name: &str) -> Result<(), Error> {
    admin.sys("POST", &format!("sys/mounts/{name}"), Some(json!({"type": "kv", "options": {"version": "2"}}))).await?;
    let started = Instant::now();
    while admin.sys("GET", &format!("{name}/config"), None).await.is_err() {
        if started.elapsed() > Duration::from_secs(30) {
            return Err(format!("kv v2 mount {name} not ready after 30 s").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// `wan-tls`: see the module docs.
pub fn wan_tls(h: &Harness, rt: &tokio::runtime::Runtime, n: usize, rtt: Duration) -> Result<(), Error> {
    let (a, b) = (Bao::dev_tls(), Bao::dev_tls());
    let ca = ca_bundle(h.dir.path(), [&a, &b])?;
    let admin = tls_client(&b.addr(), &ca, HttpVersion::Auto)?;
    rt.block_on(seed(&tls_client(&a.addr(), &ca, HttpVersion::Auto)?, n, 16))?;
    let proxy = Proxy::start(b.port);
    proxy.set_latency(rtt / 2, rtt / 2);
    let far = format!("https://127.0.0.1:{}", proxy.port());
    let (mut h2, mut h1) = (Mode::default(), Mode::default());
    for run in 0..h.runs {
        let order = if run % 2 == 0 { [false, true] } else { [true, false] };
        for http1_only in order {
            let mount = format!("tls{run}{}", if http1_only { "h1" } else { "h2" });
            rt.block_on(enable_kv2(&admin, &mount))?;
            let mut spec = h.spec(Task::RawCopy);
            (spec.origin, spec.dest, spec.dest_mount) = (a.addr(), far.clone(), format!("{mount}/"));
            (spec.workers, spec.ca_cert, spec.http1_only) = (IN_FLIGHT, Some(ca.clone()), http1_only);
            let servers = || [&a, &b].iter().map(|s| s.pid().map_or(0.0, |p| cpu_secs(&p.to_string()))).sum::<f64>();
            let (before, cpu_before) = (proxy.connections(), servers());
            let m = h.run_child(&spec)?;
            let mode = if http1_only { &mut h1 } else { &mut h2 };
            mode.connections.push(proxy.connections() - before);
            mode.server_cpu.push(servers() - cpu_before);
            mode.runs.push(m);
            rt.block_on(admin.sys("DELETE", &format!("sys/mounts/{mount}"), None))?;
        }
    }
    print_modes(&h2, &h1, rtt);
    Ok(())
}

fn print_modes(h2: &Mode, h1: &Mode, rtt: Duration) {
    let (v2, v1) = (median(&h2.runs), median(&h1.runs));
    println!(
        "wan-tls, Destination side, RTT {} ms, TLS, library raw copier at {IN_FLIGHT} in flight: {} secrets, median of {} runs",
        rtt.as_millis(),
        v2.secrets,
        h2.runs.len()
    );
    println!("  ratio {:.2} (HTTP/1.1 time / HTTP/2 time; above 1: HTTP/2 is faster)", v1.secs / v2.secs);
    for (name, mode, m) in [("HTTP/2 (Auto)", h2, &v2), ("HTTP/1.1 (Http1Only)", h1, &v1)] {
        let times = mode.runs.iter().map(|r| format!("{:.2}", r.secs)).collect::<Vec<_>>().join(", ");
        let conns = mode.connections.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
        println!(
            "  {name:<22} {:>8.2} s  {:>8.0} secrets/s  TCP connections per run: {conns}  (runs: {times} s)",
            m.secs,
            m.secrets as f64 / m.secs
        );
        let cpu = |v: Vec<f64>| v.iter().map(|c| format!("{c:.2}")).collect::<Vec<_>>().join(", ");
        println!("    {}; CPU s per run: copier {}, servers {}", m.note, cpu(mode.runs.iter().map(|r| r.cpu_secs).collect()), cpu(mode.server_cpu.clone()));
    }
}

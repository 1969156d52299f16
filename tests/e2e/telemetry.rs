//! `[telemetry] listen`: `/metrics` scraped over HTTP after a real sync (the named series with
//! plausible values), and `/healthz` going healthy -> 503 while the destination is sealed ->
//! healthy again once it is unsealed.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use vsync_consul_emulator::Emulator;
use vsync_test_harness::Bao;

use super::{client, config_with_state, data, http_get};
use crate::runtime::{output_of, wait_exit};

/// The value of the first sample line that starts with `series` (name plus labels).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

pub(crate) fn scrape(port: u16) -> String {
    match http_get(port, "/metrics") {
        Some((200, text)) => text,
        other => panic!("/metrics answered {other:?}"),
    }
}

fn healthz(port: u16) -> (u16, Value) {
    let (code, body) = http_get(port, "/healthz").expect("/healthz answers");
    (code, serde_json::from_str(&body).unwrap_or(Value::String(body)))
}

/// Polls until `check` holds or `limit` passes.
fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "{what} not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_a_real_sync_and_health_through_a_sealed_destination() {
    println!("Consul state store: the in-process emulator (tests/consul-emulator)");
    let emu = Emulator::start();
    // A Raft destination: a dev server cannot be unsealed again.
    let (a, b) = (Bao::dev(), Bao::raft());
    a.enable_kv("kv1", 1);
    b.enable_kv("kv1", 1);
    let ca = client(&a);
    for i in 0..25 {
        ca.write_version("secret/", &format!("app/k{i:02}"), &data(json!({"v": i})), 0).await.unwrap();
    }
    let port = vsync_test_harness::free_port_pair();
    let dir = tempfile::tempdir().unwrap();
    let state = format!("{{ backend = \"consul\", address = \"{}\", prefix = \"vsync-e2e/\" }}", emu.url());
    let extra = format!(
        "interval = \"1s\"\ntimeout = \"2s\"\nfilters = [ {{ plugin = \"glob\", config = {{ include = [\"**\"] }} }} ]\n\n\
         [telemetry]\nlisten = \"127.0.0.1:{port}\"\n"
    );
    let cfg = config_with_state(dir.path(), &a, &b, &extra, &state);
    let text = std::fs::read_to_string(&cfg).unwrap().replacen(
        "mounts = [\"secret/\", \"kv1/\"]",
        "mounts = [\"secret/\", \"kv1/\"]\ninterval = \"1s\"\ntimeout = \"2s\"",
        1,
    );
    std::fs::write(&cfg, text).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vsync"))
        .arg("--config")
        .arg(&cfg)
        .arg("run")
        .env("VSYNC_LOG", "info")
        .env("VSYNC_E2E_DEST_TOKEN", &b.root_token)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Metrics after the first sync: every named series, with values that follow from it.
    let mut metrics = String::new();
    eventually(Duration::from_secs(60), "a destination cycle that copied 25 secrets", || {
        match http_get(port, "/metrics") {
            Some((200, text)) => {
                metrics = text;
                sample(&metrics, "vsync_secrets{destination=\"eu\"}") == Some(25.0)
            }
            _ => false,
        }
    });
    let started = SystemTime::now();
    let ok_cycles = sample(&metrics, "vsync_cycles_total{role=\"destination\",destination=\"eu\",outcome=\"ok\"}");
    assert!(ok_cycles.is_some_and(|n| n >= 1.0), "{metrics}");
    assert!(sample(&metrics, "vsync_cycles_total{role=\"origin\",destination=\"\",outcome=\"ok\"}").is_some_and(|n| n >= 1.0), "{metrics}");
    assert_eq!(sample(&metrics, "vsync_tasks_total{destination=\"eu\",kind=\"copy\",outcome=\"written\"}"), Some(25.0), "{metrics}");
    let data_reads = sample(&metrics, "vsync_vault_requests_total{side=\"origin\",kind=\"data_read\",outcome=\"ok\"}");
    assert!(data_reads.is_some_and(|n| n >= 25.0), "25 origin reads at least: {metrics}");
    let writes = sample(&metrics, "vsync_vault_requests_total{side=\"eu\",kind=\"data_write\",outcome=\"ok\"}");
    assert!(writes.is_some_and(|n| n >= 25.0), "25 destination writes at least: {metrics}");
    assert!(sample(&metrics, "vsync_consul_requests_total{outcome=\"ok\"}").is_some_and(|n| n > 0.0), "{metrics}");
    let glob_calls = sample(&metrics, "vsync_plugin_calls_total{plugin=\"glob\",outcome=\"ok\"}");
    assert!(glob_calls.is_some_and(|n| n >= 25.0), "one filter call per path at least: {metrics}");
    assert!(sample(&metrics, "vsync_plugin_call_duration_seconds_count{plugin=\"glob\"}").is_some_and(|n| n >= 25.0), "{metrics}");
    assert!(metrics.contains("vsync_cycle_duration_seconds_bucket{"), "{metrics}");
    let last = sample(&metrics, "vsync_last_success_timestamp_seconds{role=\"destination\",destination=\"eu\"}").unwrap();
    let now = started.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!((now - 60.0..=now + 1.0).contains(&last), "last success {last} vs now {now}");
    // The lag series appears on the next scrape after a cycle that read the origin's record.
    eventually(Duration::from_secs(10), "vsync_lag_seconds of eu at 0", || {
        sample(&scrape(port), "vsync_lag_seconds{destination=\"eu\"}") == Some(0.0)
    });

    // Health: ok; sealed destination -> 503 naming the role; unsealed -> ok.
    let (code, body) = healthz(port);
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "ok", "{body}");
    b.seal();
    // A change after the seal: the next destination cycle has to write, and fails.
    ca.write_version("secret/", "app/after-seal", &data(json!({"v": "x"})), 0).await.unwrap();
    let sealed = Instant::now();
    let mut unhealthy = Value::Null;
    // A seal probe's answer is cached for a few seconds (PROBE_CACHE): the role can turn
    // stale before the cached probe of its Vault expires, so wait for both.
    eventually(Duration::from_secs(30), "/healthz answering 503 with the destination sealed", || {
        let (code, body) = healthz(port);
        let eu_sealed = body["vaults"].as_array().is_some_and(|v| v.iter().any(|v| v["side"] == "eu" && v["state"] == "sealed"));
        unhealthy = body;
        code == 503 && eu_sealed
    });
    println!("503 after {:?}: {unhealthy}", sealed.elapsed());
    assert_eq!(unhealthy["status"], "unhealthy", "{unhealthy}");
    let vault = |side: &str| unhealthy["vaults"].as_array().unwrap().iter().find(|v| v["side"] == side).unwrap()["state"].clone();
    assert_eq!(vault("eu"), "sealed", "{unhealthy}");
    assert_eq!(vault("origin"), "ok", "{unhealthy}");
    let origin = unhealthy["roles"].as_array().unwrap().iter().find(|r| r["role"] == "origin").unwrap().clone();
    assert_eq!(origin["healthy"], true, "the origin still works: {unhealthy}");
    eventually(Duration::from_secs(30), "a failed destination cycle counted", || {
        sample(&scrape(port), "vsync_cycles_total{role=\"destination\",destination=\"eu\",outcome=\"failed\"}").is_some_and(|n| n >= 1.0)
    });
    // Past 2 x interval + timeout without a success, the role itself is stale, with the cause.
    eventually(Duration::from_secs(30), "the destination role stale with the seal as the reason", || {
        let body = healthz(port).1;
        body["roles"].as_array().unwrap().iter().any(|r| {
            r["destination"] == "eu" && r["healthy"] == false && r["reason"].as_str().is_some_and(|x| x.contains("sealed"))
        })
    });
    b.unseal();
    eventually(Duration::from_secs(30), "/healthz healthy again after the unseal", || healthz(port).0 == 200);
    assert!(cb_has(&b, "secret/", "app/after-seal").await, "the change made while sealed arrived");

    assert!(Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap().success());
    let status = wait_exit(&mut child, Duration::from_secs(10)).expect("exits after SIGTERM");
    let out = output_of(child);
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(!out.contains(&b.root_token), "the destination token leaked into the output");
}

async fn cb_has(b: &Bao, mount: &str, path: &str) -> bool {
    let c = vsync_vault::VaultClient::new(vsync_vault::VaultConfig::new(b.addr(), vsync_vault::Token::new(b.root_token.clone()))).unwrap();
    matches!(c.read_latest(mount, path).await.unwrap(), vsync_vault::DataRead::Live(..))
}


/// `vsync run` from `a` to `b` behind `proxy`, with `extra` destination keys and the telemetry
/// listener; returns the process and the telemetry port.
fn run_behind_proxy(dir: &std::path::Path, a: &Bao, b: &Bao, proxy: &vsync_test_harness::HttpProxy, extra: &str) -> (std::process::Child, u16) {
    let port = vsync_test_harness::free_port_pair();
    let cfg = super::config(dir, a, b, &format!("{extra}\n[telemetry]\nlisten = \"127.0.0.1:{port}\"\n"));
    let text = std::fs::read_to_string(&cfg).unwrap().replace(&b.addr(), &proxy.addr());
    std::fs::write(&cfg, text).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_vsync"))
        .arg("--config")
        .arg(&cfg)
        .arg("run")
        .env("VSYNC_LOG", "info")
        .env("VSYNC_E2E_DEST_TOKEN", &b.root_token)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (child, port)
}

fn timed_healthz(port: u16) -> Duration {
    let started = Instant::now();
    assert!(http_get(port, "/healthz").is_some(), "/healthz answers");
    started.elapsed()
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_under_1000_requests_a_second_answers_as_fast_and_probes_each_vault_once_per_cache_period() {
    let (a, b) = (Bao::dev(), Bao::dev());
    a.enable_kv("kv1", 1);
    b.enable_kv("kv1", 1);
    let proxy = vsync_test_harness::HttpProxy::start(b.port);
    let dir = tempfile::tempdir().unwrap();
    let (mut child, port) = run_behind_proxy(dir.path(), &a, &b, &proxy, "");
    eventually(Duration::from_secs(60), "/healthz 200", || http_get(port, "/healthz").is_some_and(|(c, _)| c == 200));
    let mut quiet: Vec<Duration> = (0..50).map(|_| timed_healthz(port)).collect();
    let (quiet_p50, quiet_p95) = (percentile(&mut quiet, 0.5), percentile(&mut quiet, 0.95));

    // 1,000 requests a second for 5 s: 10 paced threads, a new connection per request.
    let probes_before = proxy.seen("GET", "/v1/sys/seal-status");
    let load = Duration::from_secs(5);
    let started = Instant::now();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let threads: Vec<_> = (0..10)
        .map(|_| {
            let sent = sent.clone();
            std::thread::spawn(move || {
                let mut next = Instant::now();
                while started.elapsed() < load {
                    let _ = http_get(port, "/healthz");
                    sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    next += Duration::from_millis(10);
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
            })
        })
        .collect();
    let mut loaded = Vec::new();
    while started.elapsed() < load {
        loaded.push(timed_healthz(port));
        std::thread::sleep(Duration::from_millis(50));
    }
    for t in threads {
        t.join().unwrap();
    }
    let elapsed = started.elapsed();
    let probes = proxy.seen("GET", "/v1/sys/seal-status") - probes_before;
    let rate = sent.load(std::sync::atomic::Ordering::Relaxed) as f64 / elapsed.as_secs_f64();
    let (loaded_p50, loaded_p95) = (percentile(&mut loaded, 0.5), percentile(&mut loaded, 0.95));
    println!(
        "/healthz quiet p50 {quiet_p50:?} p95 {quiet_p95:?}; under {rate:.0} req/s p50 {loaded_p50:?} p95 {loaded_p95:?}; \
         {probes} seal probes of the destination in {elapsed:?}"
    );
    assert!(rate >= 800.0, "the load reached {rate:.0} req/s only");
    let periods = (elapsed.as_secs_f64() / vsync_engine::telemetry::PROBE_CACHE.as_secs_f64()).ceil() as u64;
    assert!(probes <= periods + 1, "{probes} probes in {elapsed:?}: more than one per {:?}", vsync_engine::telemetry::PROBE_CACHE);
    assert!(loaded_p50 <= quiet_p50 * 4 + Duration::from_millis(20), "p50 {loaded_p50:?} under load vs {quiet_p50:?}");

    assert!(Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap().success());
    let status = wait_exit(&mut child, Duration::from_secs(10)).expect("exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", output_of(child));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_bodies_never_carry_the_paths_or_addresses_of_the_injected_faults() {
    let (a, b) = (Bao::dev(), Bao::dev());
    a.enable_kv("kv1", 1);
    b.enable_kv("kv1", 1);
    let ca = client(&a);
    ca.write_version("secret/", "leak-marker-7/db", &data(json!({"v": 1})), 0).await.unwrap();
    let proxy = vsync_test_harness::HttpProxy::start(b.port);
    let dir = tempfile::tempdir().unwrap();
    let (mut child, port) = run_behind_proxy(dir.path(), &a, &b, &proxy, "interval = \"1s\"\ntimeout = \"2s\"");
    eventually(Duration::from_secs(60), "/healthz 200", || http_get(port, "/healthz").is_some_and(|(c, _)| c == 200));
    // /healthz answers before the start-up checks end: faults injected before the first sync
    // would fail the checks (fatal) instead of a cycle, which is not what this test is about.
    let cb = client(&b);
    let rt = tokio::runtime::Handle::current();
    eventually(Duration::from_secs(60), "the first sync at the destination", || {
        tokio::task::block_in_place(|| rt.block_on(cb.read_metadata("secret/", "leak-marker-7/db"))).is_ok_and(|m| m.is_some())
    });
    // Every destination request now fails with a body naming a path and an address.
    let body = r#"{"errors":["storage at 10.77.0.9:8200 failed on secret/data/leak-marker-7/db"]}"#;
    for method in ["GET", "POST", "PUT", "LIST", "DELETE"] {
        proxy.respond(method, "/v1/*", 500, body);
    }
    ca.write_version("secret/", "leak-marker-7/db", &data(json!({"v": 2})), 1).await.unwrap();
    let mut bodies = Vec::new();
    eventually(Duration::from_secs(30), "the destination role stale with a reason", || {
        let (code, text) = http_get(port, "/healthz").unwrap();
        let stale = code == 503 && text.contains("stale: ");
        bodies.push(text);
        stale
    });
    for _ in 0..10 {
        bodies.push(http_get(port, "/healthz").unwrap().1);
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("{}", bodies.last().unwrap());
    let proxy_port = proxy.port().to_string();
    for text in &bodies {
        for leak in ["leak-marker", "10.77.0.9", "127.0.0.1", &proxy_port, "http://", "secret/", "storage at"] {
            assert!(!text.contains(leak), "`{leak}` in a /healthz body: {text}");
        }
    }
    let last: Value = serde_json::from_str(bodies.last().unwrap()).unwrap();
    let eu = last["vaults"].as_array().unwrap().iter().find(|v| v["side"] == "eu").unwrap().clone();
    assert_eq!((eu["state"].as_str(), eu["reason"].as_str()), (Some("unreachable"), Some("http 500")), "{last}");

    assert!(Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap().success());
    let _ = wait_exit(&mut child, Duration::from_secs(10)).expect("exits after SIGTERM");
    let out = output_of(child);
    assert!(out.contains("leak-marker-7"), "the details are in the logs: {out}");
}

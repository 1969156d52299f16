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
    eventually(Duration::from_secs(30), "/healthz answering 503 with the destination sealed", || {
        let (code, body) = healthz(port);
        unhealthy = body;
        code == 503
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


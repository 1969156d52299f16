//! Runtime behaviour of long-running roles: signals, fatal errors with alerts, `vsync check`.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::json;
use vsync_test_harness::{Bao, DEV_ROOT_TOKEN};

use super::{client, config, contents, data, text};

/// A one-shot HTTP receiver on loopback: returns its URL and a channel with each request body.
fn webhook_receiver() -> (String, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(5) {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            use std::io::Write;
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = tx.send(String::from_utf8_lossy(&body).into_owned());
        }
    });
    (url, rx)
}

pub(crate) fn wait_exit(child: &mut std::process::Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Keys the destination `eu`'s committed info records in `dir/state`. Orphans (targets a cycle
/// remembered before writing them) are left out: a failed cycle commits nothing else.
pub(crate) async fn recorded_keys(dir: &std::path::Path) -> usize {
    let store = vsync_state::StateStore::File(vsync_state::FileStore::open(dir.join("state")).unwrap());
    match vsync_state::info::load::<vsync_core::DestEntry>(&store, "destination-eu").await.unwrap() {
        None => 0,
        Some(loaded) => loaded.buckets.iter().filter(|(k, _)| !vsync_core::orphans::is_orphan(k)).count(),
    }
}

pub(crate) fn output_of(mut child: std::process::Child) -> String {
    let mut out = String::new();
    if let Some(mut s) = child.stdout.take() {
        s.read_to_string(&mut out).unwrap();
    }
    if let Some(mut s) = child.stderr.take() {
        s.read_to_string(&mut out).unwrap();
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_large_first_sync_exits_0_and_commits_nothing() {
    let (a, b) = (Bao::dev(), Bao::dev());
    a.enable_kv("kv1", 1);
    b.enable_kv("kv1", 1);
    let ca = client(&a);
    for i in 0..1500 {
        ca.write_version("secret/", &format!("bulk/{i:05}"), &data(json!({"i": i, "pad": "x".repeat(200)})), 0).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    // One worker, so the first sync takes long enough to interrupt.
    let cfg = config(dir.path(), &a, &b, "workers = 1");
    let mut child = Command::new(env!("CARGO_BIN_EXE_vsync"))
        .arg("--config").arg(&cfg).arg("run")
        .env("VSYNC_LOG", "info").env("VSYNC_E2E_DEST_TOKEN", DEV_ROOT_TOKEN)
        .stdout(Stdio::piped()).stderr(Stdio::piped())
        .spawn().unwrap();
    // Wait until copying is under way (some secrets exist at the destination).
    let cb = client(&b);
    let start = Instant::now();
    loop {
        let info = cb.mount_info("secret/").await.unwrap();
        let n = cb.list_secrets(&info).await.unwrap().len();
        if n >= 20 {
            assert!(n < 1500, "the sync finished before the signal; make it larger");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "copying never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sent = Instant::now();
    // SAFETY-free: `kill` from the shell on our own child's PID.
    assert!(Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap().success());
    let status = wait_exit(&mut child, Duration::from_secs(10)).expect("exits within 10 s of SIGTERM");
    let out = output_of(child);
    assert_eq!(status.code(), Some(0), "{out}");
    println!("exited {:?} after SIGTERM", sent.elapsed());
    assert_eq!(recorded_keys(dir.path()).await, 0, "a partial cycle committed: {out}");

    // The next run converges (a partial commit would have made it skip secrets).
    let out = Command::new(env!("CARGO_BIN_EXE_vsync"))
        .arg("--config").arg(&cfg).args(["run", "--once"])
        .env("VSYNC_LOG", "warn").env("VSYNC_E2E_DEST_TOKEN", DEV_ROOT_TOKEN)
        .output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(contents(&cb).await, contents(&ca).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permission_revoked_mid_run_is_fatal_and_alerts() {
    let (a, b) = (Bao::dev(), Bao::dev());
    a.enable_kv("kv1", 1);
    b.enable_kv("kv1", 1);
    let ca = client(&a);
    for i in 0..10 {
        ca.write_version("secret/", &format!("app/{i}"), &data(json!({"i": i})), 0).await.unwrap();
    }
    let dest_token = b.token_with_policy(
        "vsync-dest",
        r#"path "secret/*" { capabilities = ["create", "read", "update", "delete", "list"] }
           path "kv1/*" { capabilities = ["create", "read", "update", "delete", "list"] }
           path "sys/mounts*" { capabilities = ["read"] }
           path "sys/internal/ui/mounts*" { capabilities = ["read"] }"#,
    );
    let (hook, bodies) = webhook_receiver();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &a, &b, "interval = \"1s\"");
    let text_cfg = std::fs::read_to_string(&cfg).unwrap()
        + &format!("\n[alert]\nwebhook = \"{hook}\"\n");
    let text_cfg = text_cfg.replacen(
        "mounts = [\"secret/\", \"kv1/\"]",
        "mounts = [\"secret/\", \"kv1/\"]\ninterval = \"1s\"",
        1,
    );
    std::fs::write(&cfg, text_cfg).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vsync"))
        .arg("--config").arg(&cfg).arg("run")
        .env("VSYNC_LOG", "info").env("VSYNC_E2E_DEST_TOKEN", &dest_token)
        .stdout(Stdio::piped()).stderr(Stdio::piped())
        .spawn().unwrap();
    let cb = client(&b);
    let start = Instant::now();
    while contents(&cb).await.len() < 10 {
        assert!(start.elapsed() < Duration::from_secs(30), "never converged");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Revoke the destination token, then change something so the next cycle writes.
    b.root("POST", "auth/token/revoke", Some(&json!({"token": dest_token})));
    ca.write_version("secret/", "app/0", &data(json!({"i": "changed"})), 1).await.unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(30)).expect("a fatal error stops the process");
    let out = output_of(child);
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("permission denied"), "{out}");
    let body = bodies.recv_timeout(Duration::from_secs(10)).expect("the webhook got the alert");
    let alert: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(alert["kind"], "permission-denied", "{alert}");
    assert_eq!(alert["role"], "run", "{alert}");
    assert!(alert["time"].as_str().is_some_and(|t| t.starts_with("20")), "{alert}");
    for hay in [&out, &body] {
        assert!(!hay.contains(&dest_token) && !hay.contains(DEV_ROOT_TOKEN), "token leaked: {hay}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_every_problem_at_once() {
    let (a, b) = (Bao::dev(), Bao::dev());
    a.enable_kv("kv1", 1);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &a, &b, "");
    let run = |token: &str| {
        Command::new(env!("CARGO_BIN_EXE_vsync"))
            .arg("--config").arg(&cfg).arg("check")
            .env("VSYNC_LOG", "warn").env("VSYNC_E2E_DEST_TOKEN", token)
            .output().unwrap()
    };
    // The destination lacks the kv1/ mount, and a read-only token cannot write secret/.
    let read_only = b.token_with_policy(
        "read-only",
        r#"path "secret/*" { capabilities = ["read", "list"] }
           path "sys/mounts*" { capabilities = ["read"] }
           path "sys/internal/ui/mounts*" { capabilities = ["read"] }"#,
    );
    let out = run(&read_only);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.lines().any(|l| l.starts_with("FAIL") && l.contains("destination eu") && l.contains("kv1/")), "{t}");
    assert!(t.lines().any(|l| l.starts_with("FAIL") && l.contains("destination eu") && l.contains("secret/") && l.contains("create")), "{t}");
    assert!(t.lines().any(|l| l.starts_with("ok") && l.contains("origin") && l.contains("kv v1")), "{t}");
    assert!(!t.contains(&read_only), "{t}");

    // Fixed: everything passes and the probes are gone.
    b.enable_kv("kv1", 1);
    let out = run(DEV_ROOT_TOKEN);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("checks passed"), "{}", text(&out));
    assert!(contents(&client(&b)).await.is_empty(), "probe secrets removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approle_token_is_renewed_and_re_obtained_across_several_max_ttls() {
    let (a, b) = (Bao::dev(), Bao::dev());
    a.enable_kv("kv1", 1);
    b.enable_kv("kv1", 1);
    b.root("POST", "sys/auth/approle", Some(&json!({"type": "approle"})));
    b.root(
        "PUT",
        "sys/policies/acl/vsync-dest",
        Some(&json!({"policy": r#"path "secret/*" { capabilities = ["create", "read", "update", "delete", "list"] }
            path "kv1/*" { capabilities = ["create", "read", "update", "delete", "list"] }
            path "sys/internal/ui/mounts*" { capabilities = ["read"] }
            path "sys/mounts*" { capabilities = ["read"] }"#})),
    );
    // A 3 s token that can live at most 6 s: the run below spans several of them.
    b.root(
        "POST",
        "auth/approle/role/vsync",
        Some(&json!({"token_policies": ["vsync-dest"], "token_ttl": "3s", "token_max_ttl": "6s"})),
    );
    let role_id = b.root("GET", "auth/approle/role/vsync/role-id", None)["data"]["role_id"].as_str().unwrap().to_owned();
    let secret_id = b.root("POST", "auth/approle/role/vsync/secret-id", None)["data"]["secret_id"].as_str().unwrap().to_owned();

    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &a, &b, "interval = \"1s\"");
    let text_cfg = std::fs::read_to_string(&cfg).unwrap().replace(
        "token_env = \"VSYNC_E2E_DEST_TOKEN\"",
        &format!("approle = {{ role_id = \"{role_id}\", secret_id_env = \"VSYNC_E2E_SECRET_ID\" }}"),
    );
    std::fs::write(&cfg, text_cfg).unwrap();
    let ca = client(&a);
    let mut child = Command::new(env!("CARGO_BIN_EXE_vsync"))
        .arg("--config").arg(&cfg).arg("run")
        .env("VSYNC_LOG", "info,vsync::tokens=debug").env("VSYNC_E2E_SECRET_ID", &secret_id)
        .stdout(Stdio::piped()).stderr(Stdio::piped())
        .spawn().unwrap();
    // Keep writing for three max TTLs; every write must arrive.
    let cb = client(&b);
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed() < Duration::from_secs(16) {
        ca.write_version("secret/", &format!("tick/{i}"), &data(json!({"i": i})), 0).await.unwrap();
        i += 1;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert!(child.try_wait().unwrap().is_none(), "vsync stopped: {}", output_of(child));
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while contents(&cb).await != contents(&ca).await {
        assert!(Instant::now() < deadline, "did not keep syncing");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap().success());
    let status = wait_exit(&mut child, Duration::from_secs(10)).expect("exits after SIGTERM");
    let out = output_of(child);
    assert_eq!(status.code(), Some(0), "{out}");
    let relogins = out.matches("token renewed by a new AppRole login").count();
    assert!(relogins >= 2, "expected re-logins across several max TTLs, saw {relogins}: {out}");
    assert!(!out.contains(&secret_id), "secret ID leaked");
}

/// A config whose origin is reached through `proxy`.
fn via_proxy(cfg: &std::path::Path, origin: &Bao, proxy: &vsync_test_harness::Proxy) {
    let text = std::fs::read_to_string(cfg).unwrap().replacen(&origin.addr(), &proxy.addr(), 1);
    std::fs::write(cfg, text).unwrap();
}

async fn fill(c: &vsync_vault::VaultClient, n: usize) {
    for i in 0..n {
        c.write_version("secret/", &format!("bulk/{i:04}"), &data(json!({"i": i})), 0).await.unwrap();
    }
}

async fn count(c: &vsync_vault::VaultClient) -> usize {
    let info = c.mount_info("secret/").await.unwrap();
    c.list_secrets(&info).await.unwrap().len()
}

fn run_once(cfg: &std::path::Path, dest_token: &str) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_vsync"))
        .arg("--config").arg(cfg).args(["run", "--once"])
        .env("VSYNC_LOG", "warn").env("VSYNC_E2E_DEST_TOKEN", dest_token)
        .stdout(Stdio::piped()).stderr(Stdio::piped())
        .spawn().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_cut_mid_cycle_commits_nothing_then_converges() {
    let (a, b) = (Bao::dev(), Bao::dev());
    a.enable_kv("kv1", 1);
    b.enable_kv("kv1", 1);
    let (ca, cb) = (client(&a), client(&b));
    fill(&ca, 400).await;
    let proxy = vsync_test_harness::Proxy::start(a.port);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &a, &b, "workers = 1");
    via_proxy(&cfg, &a, &proxy);
    let mut child = run_once(&cfg, DEV_ROOT_TOKEN);
    let start = Instant::now();
    while count(&cb).await < 10 {
        assert!(start.elapsed() < Duration::from_secs(60), "copying never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.set_cut(true);
    let status = wait_exit(&mut child, Duration::from_secs(60)).expect("the cycle ends");
    let out = output_of(child);
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(count(&cb).await < 400, "the cut came too late to test anything");
    assert_eq!(recorded_keys(dir.path()).await, 0, "a failed cycle committed: {out}");
    proxy.set_cut(false);
    let child = run_once(&cfg, DEV_ROOT_TOKEN);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(contents(&cb).await, contents(&ca).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_sealed_mid_cycle_commits_nothing_then_converges() {
    // A Raft destination: a dev server cannot be unsealed again.
    let (a, b) = (Bao::dev(), Bao::raft());
    a.enable_kv("kv1", 1);
    b.enable_kv("kv1", 1);
    let ca = client(&a);
    let cb = vsync_vault::VaultClient::new(vsync_vault::VaultConfig::new(b.addr(), vsync_vault::Token::new(b.root_token.clone()))).unwrap();
    fill(&ca, 400).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &a, &b, "workers = 1");
    let mut child = run_once(&cfg, &b.root_token);
    let start = Instant::now();
    while count(&cb).await < 10 {
        assert!(start.elapsed() < Duration::from_secs(60), "copying never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.seal();
    let status = wait_exit(&mut child, Duration::from_secs(60)).expect("the cycle ends");
    let out = output_of(child);
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("sealed"), "{out}");
    assert_eq!(recorded_keys(dir.path()).await, 0, "a failed cycle committed: {out}");
    b.unseal();
    let out = run_once(&cfg, &b.root_token).wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(contents(&cb).await, contents(&ca).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cycle_timeout_against_a_slow_origin_keeps_running_and_recovers() {
    let (a, b) = (Bao::dev(), Bao::dev());
    a.enable_kv("kv1", 1);
    b.enable_kv("kv1", 1);
    let (ca, cb) = (client(&a), client(&b));
    fill(&ca, 60).await;
    let proxy = vsync_test_harness::Proxy::start(a.port);
    proxy.set_delay(Duration::from_millis(150));
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &a, &b, "workers = 2\ntimeout = \"2s\"\ninterval = \"1s\"");
    via_proxy(&cfg, &a, &proxy);
    let mut child = Command::new(env!("CARGO_BIN_EXE_vsync"))
        .arg("--config").arg(&cfg).arg("run")
        .env("VSYNC_LOG", "warn").env("VSYNC_E2E_DEST_TOKEN", DEV_ROOT_TOKEN)
        .stdout(Stdio::piped()).stderr(Stdio::piped())
        .spawn().unwrap();
    // Slow: 60 reads at 150 ms+ each, 2 at a time, cannot finish in 2 s. Let it time out twice.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(child.try_wait().unwrap().is_none(), "a timeout must not stop the process");
    assert_eq!(recorded_keys(dir.path()).await, 0, "a timed-out cycle committed");
    proxy.set_delay(Duration::ZERO);
    let deadline = Instant::now() + Duration::from_secs(30);
    while contents(&cb).await != contents(&ca).await {
        assert!(Instant::now() < deadline, "never converged after the origin sped up");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap().success());
    let status = wait_exit(&mut child, Duration::from_secs(10)).expect("exits after SIGTERM");
    let out = output_of(child);
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(out.contains("timed out"), "{out}");
}

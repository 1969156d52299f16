//! `vsync run` with `[origin] audit_listen`: an OpenBao socket audit device (declared in the
//! server's configuration, a file device beside it) feeds the origin, so with both intervals at
//! 60 s a write or delete reaches the destination in seconds, and the process's logs, at debug
//! level, never hold audit line content.

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use vsync_test_harness::{Bao, DEV_ROOT_TOKEN, audit_devices_hcl};
use vsync_vault::DataRead;

use super::{client, data};

/// Accepts and drains connections on `listener` until `stop` is set, then closes them all:
/// stands in for vsync while the dev server starts, because a server only creates a socket
/// device whose test line it can send.
fn stand_in(listener: TcpListener, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        listener.set_nonblocking(true).unwrap();
        let mut open = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((s, _)) => {
                    let mut r = s.try_clone().unwrap();
                    open.push(s);
                    std::thread::spawn(move || std::io::copy(&mut r, &mut std::io::sink()));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        for s in open {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_audit_listen_propagates_at_once_and_never_logs_audit_lines() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = listener.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let helper = stand_in(listener, stop.clone());
    let hcl = audit_devices_hcl(&listen.to_string(), &dir.path().join("audit.log"));
    let (a, b) = (Bao::dev_with_config(&hcl), Bao::dev());
    // The device exists now; its connections to the stand-in are closed and the server opens
    // a new one (to vsync) on its next write.
    stop.store(true, Ordering::SeqCst);
    helper.join().unwrap();
    let (ca, cb) = (client(&a), client(&b));
    ca.write_version("secret/", "seed", &data(json!({"v": 0})), 0).await.unwrap();
    let state = format!("{{ backend = \"file\", path = \"{}\" }}", dir.path().join("state").display());
    let cfg = dir.path().join("vsync.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[origin]
vault = {{ address = "{}", token = "{DEV_ROOT_TOKEN}" }}
mounts = ["secret/"]
state = {state}
interval = "60s"
audit_listen = "{listen}"

[[destination]]
name = "eu"
vault = {{ address = "{}", token = "{DEV_ROOT_TOKEN}" }}
mounts = {{ "secret/" = "secret/" }}
state = {state}
versions = "latest"
interval = "60s"
"#,
            a.addr(),
            b.addr()
        ),
    )
    .unwrap();
    let log = dir.path().join("vsync.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_vsync"))
        .current_dir(dir.path())
        .arg("--config")
        .arg(&cfg)
        .arg("run")
        .env("VSYNC_LOG", "debug")
        .stdout(Stdio::from(std::fs::File::create(dir.path().join("stdout")).unwrap()))
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    let live = async |path: &str| match cb.read_latest("secret/", path).await.unwrap() {
        DataRead::Live(d, _) => Some(d.as_json().to_owned()),
        _ => None,
    };
    let wait = async |path: &str, want: Option<&str>, limit: Duration| {
        let started = Instant::now();
        while live(path).await.as_deref() != want {
            assert!(started.elapsed() < limit, "`{path}` is not {want:?} at the destination after {limit:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        started.elapsed()
    };
    let seeded = wait("seed", Some(r#"{"v":0}"#), Duration::from_secs(60)).await;
    println!("start-up sync after {seeded:?}");
    let mut took = Vec::new();
    for i in 0..5 {
        ca.write_version("secret/", &format!("app/k{i}"), &data(json!({"i": i})), 0).await.unwrap();
        took.push(wait(&format!("app/k{i}"), Some(&format!(r#"{{"i":{i}}}"#)), Duration::from_secs(5)).await);
    }
    println!("vsync run, origin write to destination read: {took:?}");
    ca.delete_metadata("secret/", "app/k0").await.unwrap();
    wait("app/k0", None, Duration::from_secs(5)).await;

    assert!(Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap().success());
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no exit 10 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    let logs = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(0), "{logs}");
    assert!(logs.contains("audit feed"), "the feed logs that it listens: {logs}");
    let audit_file = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    assert!(audit_file.contains("hmac-sha256:"), "the server's audit lines hold HMAC'd values");
    assert!(!logs.contains("hmac-sha256"), "audit line content in vsync's logs: {logs}");
    let stdout = std::fs::read_to_string(dir.path().join("stdout")).unwrap();
    assert!(!stdout.contains("hmac-sha256"), "{stdout}");
    assert!(stdout.contains("updated from audit events"), "{stdout}");
}

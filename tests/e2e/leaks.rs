//! Tokens and secret values never reach logs, errors, the state store or the metrics: a full
//! run of every command against servers with random root tokens and random secret values,
//! with debug logs on, and every byte of output (and of the state store) grepped for them.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::json;
use vsync_test_harness::Bao;
use vsync_vault::{DataRead, Token, VaultClient, VaultConfig};

use super::data;

fn random_hex(bytes: usize) -> String {
    (0..bytes).map(|_| format!("{:02x}", fastrand::u8(..))).collect()
}

fn run(cfg: &Path, args: &[&str], dest_token: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vsync"))
        .arg("--config")
        .arg(cfg)
        .args(args)
        .env("VSYNC_LOG", "debug")
        .env("VSYNC_E2E_DEST_TOKEN", dest_token)
        .output()
        .unwrap()
}

/// Every file under `dir`, as lossy text.
fn files_text(dir: &Path) -> String {
    let mut out = String::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.push_str(&files_text(&p));
        } else if let Ok(bytes) = std::fs::read(&p) {
            out.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_or_value_appears_in_any_output_or_the_state_store() {
    let (origin_token, dest_token) = (format!("vt{}", random_hex(16)), format!("vt{}", random_hex(16)));
    let (a, b) = (Bao::dev_with_token(&origin_token), Bao::dev_with_token(&dest_token));
    a.enable_kv("kv1", 1);
    b.enable_kv("kv1", 1);
    let ca = VaultClient::new(VaultConfig::new(a.addr(), Token::new(origin_token.clone()))).unwrap();
    let cb = VaultClient::new(VaultConfig::new(b.addr(), Token::new(dest_token.clone()))).unwrap();
    let mut values = Vec::new();
    for i in 0..20 {
        let v = random_hex(12);
        ca.write_version("secret/", &format!("app/k{i:02}"), &data(json!({ "password": v })), 0).await.unwrap();
        values.push(v);
        let v = random_hex(12);
        ca.write_v1("kv1/", &format!("legacy/k{i:02}"), &data(json!({ "password": v }))).await.unwrap();
        values.push(v);
    }
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("origin.token");
    std::fs::write(&token_file, &origin_token).unwrap();
    let state = dir.path().join("state");
    let port = vsync_test_harness::free_port_pair();
    let cfg = dir.path().join("vsync.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[origin]
vault = {{ address = "{}", token_file = "{}" }}
mounts = ["secret/", "kv1/"]
state = {{ backend = "file", path = "{}" }}

[[destination]]
name = "eu"
vault = {{ address = "{}", token_env = "VSYNC_E2E_DEST_TOKEN" }}
mounts = {{ "secret/" = "secret/", "kv1/" = "kv1/" }}
state = {{ backend = "file", path = "{}" }}
transforms = [ {{ plugin = "regex", config = {{ from = "^(?P<rest>.*)$", to = "copied/{{rest}}" }} }} ]

[telemetry]
listen = "127.0.0.1:{port}"
"#,
            a.addr(),
            token_file.display(),
            state.display(),
            b.addr(),
            state.display(),
        ),
    )
    .unwrap();

    let mut outputs = Vec::new();
    let mut record = |what: &str, out: Output, expect: Option<i32>| {
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if let Some(code) = expect {
            assert_eq!(out.status.code(), Some(code), "{what}: {text}");
        }
        outputs.push((what.to_owned(), text));
    };
    record("check", run(&cfg, &["check"], &dest_token), Some(0));
    record("plan", run(&cfg, &["plan", "--name", "eu"], &dest_token), Some(0));
    record("run --once", run(&cfg, &["run", "--once"], &dest_token), Some(0));
    // Updates and deletes, then another cycle.
    for i in 0..5 {
        let v = random_hex(12);
        ca.write_version("secret/", &format!("app/k{i:02}"), &data(json!({ "password": v })), 1).await.unwrap();
        values.push(v);
    }
    ca.delete_metadata("secret/", "app/k19").await.unwrap();
    ca.delete_v1("kv1/", "legacy/k19").await.unwrap();
    record("run --once (changes)", run(&cfg, &["run", "--once"], &dest_token), Some(0));
    record("status", run(&cfg, &["status", "--format", "json"], &dest_token), Some(0));
    record("verify", run(&cfg, &["verify", "--name", "eu", "--data"], &dest_token), None);
    record("policy origin", run(&cfg, &["policy", "origin"], &dest_token), Some(0));
    record("policy destination", run(&cfg, &["policy", "destination", "--name", "eu"], &dest_token), Some(0));
    // A failing run: the destination token is wrong (its error must not echo either token).
    record("run --once (bad token)", run(&cfg, &["run", "--once"], "vt-not-the-token"), Some(1));

    // A long-running process: scrape its metrics and health while it runs.
    let mut child = Command::new(env!("CARGO_BIN_EXE_vsync"))
        .arg("--config")
        .arg(&cfg)
        .arg("run")
        .env("VSYNC_LOG", "debug")
        .env("VSYNC_E2E_DEST_TOKEN", &dest_token)
        // Files, not pipes: debug logs would fill a pipe nobody reads yet and block the process.
        .stdout(std::fs::File::create(dir.path().join("run.out")).unwrap())
        .stderr(std::fs::File::create(dir.path().join("run.err")).unwrap())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let metrics = loop {
        if let Some((200, text)) = super::http_get(port, "/metrics")
            && text.contains("vsync_cycles_total{role=\"destination\"")
        {
            break text;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the running process exited {status}");
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(60), "no metrics from the running process");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let health = super::http_get(port, "/healthz").map(|(_, b)| b).unwrap_or_default();
    assert!(Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap().success());
    let status = crate::runtime::wait_exit(&mut child, std::time::Duration::from_secs(10)).expect("exits after SIGTERM");
    assert_eq!(status.code(), Some(0));
    let long_output = ["run.out", "run.err"].map(|f| std::fs::read_to_string(dir.path().join(f)).unwrap()).concat();
    outputs.push(("run (long)".into(), long_output));
    outputs.push(("/metrics".into(), metrics));
    outputs.push(("/healthz".into(), health));
    outputs.push(("state store files".into(), files_text(&state)));

    // The test could fail: the values did travel, and the outputs are not empty.
    let copied = cb.read_latest("secret/", "copied/app/k00").await.unwrap();
    let DataRead::Live(got, _) = copied else { panic!("copied/app/k00 missing") };
    assert!(got.as_json().contains(&values[40]), "the updated value arrived");
    assert!(outputs.iter().all(|(_, t)| !t.is_empty()));
    assert!(outputs.iter().any(|(w, t)| w == "run --once" && t.contains("\"level\":\"DEBUG\"")), "debug logs were on");

    let total: usize = outputs.iter().map(|(_, t)| t.len()).sum();
    println!("grepped {total} bytes of output and state for 2 tokens and {} values", values.len());
    for (what, text) in &outputs {
        for (name, needle) in [("origin token", &origin_token), ("destination token", &dest_token)] {
            assert!(!text.contains(needle.as_str()), "{name} leaked into {what}");
        }
        for v in &values {
            assert!(!text.contains(v.as_str()), "a secret value leaked into {what}");
        }
    }
}

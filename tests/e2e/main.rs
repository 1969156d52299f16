//! End-to-end tests of the `vsync` binary against real OpenBao dev servers.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::json;
use vsync_test_harness::{Bao, DEV_ROOT_TOKEN};
use vsync_vault::{DataRead, SecretData, Token, VaultClient, VaultConfig};

mod audit;
mod examples;
mod ha;
mod hostile;
mod jwt;
mod kit;
mod leaks;
mod monitoring;
mod plan;
mod plugins;
mod runtime;
mod telemetry;
mod trust;

fn vsync(config: &Path, args: &[&str]) -> Output {
    // Relative paths in a config resolve against its directory; run there too, so that
    // nothing a test starts lands outside its own directory.
    let cwd = config.parent().filter(|p| p.is_dir()).map_or_else(std::env::temp_dir, Path::to_path_buf);
    Command::new(env!("CARGO_BIN_EXE_vsync"))
        .current_dir(cwd)
        .arg("--config")
        .arg(config)
        .args(args)
        .env("VSYNC_LOG", "warn")
        .output()
        .unwrap()
}

/// `GET path` on a loopback port: status and body, or `None` when nothing answers (yet).
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn client(bao: &Bao) -> VaultClient {
    VaultClient::new(VaultConfig::new(bao.addr(), Token::new(DEV_ROOT_TOKEN))).unwrap()
}

fn data(v: serde_json::Value) -> SecretData {
    SecretData::from_json(&v.to_string()).unwrap()
}

/// Writes a config for origin `a` -> destination `b` (named `eu`), both mounts mapped, with a
/// file state store in `dir/state`.
fn config(dir: &Path, a: &Bao, b: &Bao, extra: &str) -> PathBuf {
    let state = format!("{{ backend = \"file\", path = \"{}\" }}", dir.join("state").display());
    config_with_state(dir, a, b, extra, &state)
}

/// Like [`config`], with the given state table for both sides.
fn config_with_state(dir: &Path, a: &Bao, b: &Bao, extra: &str, state: &str) -> PathBuf {
    let path = dir.join("vsync.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[origin]
vault = {{ address = "{}", token = "{DEV_ROOT_TOKEN}" }}
mounts = ["secret/", "kv1/"]
state = {state}

[[destination]]
name = "eu"
vault = {{ address = "{}", token_env = "VSYNC_E2E_DEST_TOKEN" }}
mounts = {{ "secret/" = "secret/", "kv1/" = "kv1/" }}
state = {state}
versions = "latest"
{extra}
"#,
            a.addr(),
            b.addr(),
        ),
    )
    .unwrap();
    path
}

/// Reads every live secret of both mounts of a server: path -> JSON value.
async fn contents(c: &VaultClient) -> BTreeMap<String, serde_json::Value> {
    let mut out = BTreeMap::new();
    for m in ["secret/", "kv1/"] {
        let info = c.mount_info(m).await.unwrap();
        for s in c.list_secrets(&info).await.unwrap() {
            let value = match info.kind {
                vsync_core::KvVersion::V2 => match c.read_latest(m, &s.path).await.unwrap() {
                    DataRead::Live(d, _) => Some(d),
                    _ => None,
                },
                vsync_core::KvVersion::V1 => c.read_v1(m, &s.path).await.unwrap(),
            };
            if let Some(d) = value {
                out.insert(format!("{m}{}", s.path), serde_json::from_str(d.as_json()).unwrap());
            }
        }
    }
    out
}

/// Current version of every KV v2 key at a server.
async fn versions(c: &VaultClient) -> BTreeMap<String, u64> {
    let info = c.mount_info("secret/").await.unwrap();
    c.list_secrets(&info)
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.path, s.metadata.map_or(0, |m| m.current_version)))
        .collect()
}

fn odd_name(i: usize) -> String {
    let names = ["sp ace", "pct%25", "hash#x", "q?uery", "plus+", "ключ", "🔑", ".dot", "a=b&c", "tail "];
    format!("team{}/{}/{}-{i}", i % 4, names[i % names.len()], i % 7)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_once_converges_updates_deletes_and_then_writes_nothing() {
    let (a, b) = (Bao::dev(), Bao::dev());
    a.enable_kv("kv1", 1);
    b.enable_kv("kv1", 1);
    let (ca, cb) = (client(&a), client(&b));
    for i in 0..150 {
        ca.write_version("secret/", &odd_name(i), &data(json!({"i": i, "big": 12345678901234567890u64})), 0).await.unwrap();
    }
    for i in 0..50 {
        ca.write_v1("kv1/", &odd_name(i), &data(json!({"v1": i}))).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &a, &b, "");
    let run = |args: &'static [&'static str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vsync"));
        cmd.arg("--config").arg(&cfg).args(args).env("VSYNC_LOG", "warn").env("VSYNC_E2E_DEST_TOKEN", DEV_ROOT_TOKEN);
        cmd.output().unwrap()
    };

    // 1. First sync: everything copied.
    let out = run(&["run", "--once"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("200 added"), "{}", text(&out));
    let origin = contents(&ca).await;
    assert_eq!(origin.len(), 200);
    assert_eq!(contents(&cb).await, origin);

    // 2. Update, delete (all ways) and add at the origin.
    for i in 0..10 {
        ca.write_version("secret/", &odd_name(i), &data(json!({"i": i, "updated": true})), 1).await.unwrap();
    }
    for i in 0..5 {
        ca.write_v1("kv1/", &odd_name(i), &data(json!({"v1": i, "updated": true}))).await.unwrap();
    }
    for i in 10..15 {
        ca.delete_metadata("secret/", &odd_name(i)).await.unwrap();
    }
    for i in 15..18 {
        ca.soft_delete_latest("secret/", &odd_name(i)).await.unwrap();
    }
    ca.destroy_versions("secret/", &odd_name(18), &[1]).await.unwrap();
    for i in 45..50 {
        ca.delete_v1("kv1/", &odd_name(i)).await.unwrap();
    }
    for i in 200..207 {
        ca.write_version("secret/", &format!("new/{}", odd_name(i)), &data(json!({"new": i})), 0).await.unwrap();
    }
    // Re-created at origin with the same version number: only created_time tells.
    ca.delete_metadata("secret/", &odd_name(19)).await.unwrap();
    ca.write_version("secret/", &odd_name(19), &data(json!({"recreated": true})), 0).await.unwrap();
    let out = run(&["run", "--once"]);
    assert!(out.status.success(), "{}", text(&out));
    let origin = contents(&ca).await;
    assert_eq!(origin.len(), 200 - 5 - 3 - 1 - 5 + 7);
    assert_eq!(contents(&cb).await, origin);
    assert!(text(&out).contains("7 added, 16 updated, 14 deleted"), "{}", text(&out));

    // 3. Nothing changed: no destination version written, state file untouched.
    let before = versions(&cb).await;
    let state_file = dir.path().join("state").join("destination-eu.json");
    let mtime = std::fs::metadata(&state_file).unwrap().modified().unwrap();
    let out = run(&["run", "--once"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("0 added, 0 updated, 0 deleted"), "{}", text(&out));
    assert!(text(&out).contains("(state unchanged)"), "{}", text(&out));
    assert_eq!(versions(&cb).await, before, "no new destination versions");
    assert_eq!(std::fs::metadata(&state_file).unwrap().modified().unwrap(), mtime);
    // The state holds paths and versions, never values or tokens.
    let state = std::fs::read_to_string(&state_file).unwrap();
    assert!(!state.contains("12345678901234567890") && !state.contains("updated") && !state.contains(DEV_ROOT_TOKEN));

    // `vsync plan` agrees: only KV v1 checks remain.
    let out = run(&["plan", "--name", "eu"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("45 write(s), 0 removal(s), 152 unchanged"), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mass_delete_guard_and_origin_mount_recreation_are_fatal() {
    let (a, b) = (Bao::dev(), Bao::dev());
    a.enable_kv("kv1", 1);
    b.enable_kv("kv1", 1);
    let ca = client(&a);
    for i in 0..20 {
        ca.write_version("secret/", &format!("k{i}"), &data(json!({"i": i})), 0).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    // The webhook URL often carries a credential: it is unreachable here, and must not show
    // up in any output when the alert fails.
    let hook_secret = format!("hook-{}", std::process::id());
    let cfg = config(dir.path(), &a, &b, &format!("\n[alert]\nwebhook = \"http://127.0.0.1:1/hooks/{hook_secret}\"\n"));
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_vsync"))
            .arg("--config").arg(&cfg).args(args)
            .env("VSYNC_LOG", "warn").env("VSYNC_E2E_DEST_TOKEN", DEV_ROOT_TOKEN)
            .output().unwrap()
    };
    assert!(run(&["run", "--once"]).status.success());
    for i in 0..15 {
        ca.delete_metadata("secret/", &format!("k{i}")).await.unwrap();
    }
    let out = run(&["run", "--once"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("--allow-mass-delete"), "{}", text(&out));
    assert!(text(&out).contains("alert webhook"), "the failed alert is logged: {}", text(&out));
    assert!(!text(&out).contains(&hook_secret), "the webhook URL leaked: {}", text(&out));
    assert!(!text(&out).contains('\u{1b}'), "colour codes in a pipe: {}", text(&out));
    // Off a terminal, logs are one JSON object per line.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let json: Vec<serde_json::Value> = stderr.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(json.iter().any(|l| l["level"] == "ERROR"), "{stderr}");
    assert_eq!(versions(&client(&b)).await.len(), 20, "destination untouched");
    let out = run(&["run", "--once", "--allow-mass-delete"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(versions(&client(&b)).await.len(), 5);

    // Disable and re-enable the origin kv1 mount: a new UUID halts the destination.
    a.root("DELETE", "sys/mounts/kv1", None);
    a.enable_kv("kv1", 1);
    let out = run(&["run", "--once"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("origin mount `kv1/` was re-created"), "{}", text(&out));
    let out = run(&["run", "--once", "--allow-origin-change"]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn cli_surface_and_config_errors() {
    let out = Command::new(env!("CARGO_BIN_EXE_vsync")).arg("--help").output().unwrap();
    let help = text(&out);
    for sub in ["run", "origin", "destination", "plan", "check", "validate", "plugin", "status", "verify", "policy"] {
        assert!(help.contains(&format!("\n  {sub} ")), "`{sub}` missing from:\n{help}");
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "[origin]\nvault = { address = \"http://127.0.0.1:1\", token = \"t\" }\nmounts = [\"secret/\"]\nstate = { backend = \"file\", path = \"s\" }\nintervall = \"1m\"\n",
    )
    .unwrap();
    let out = vsync(&cfg, &["validate"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out);
    assert!(err.contains("bad.toml:5:") && err.contains("intervall"), "{err}");
    let out = vsync(&dir.path().join("missing.toml"), &["run", "--once"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("missing.toml"));
    // `check` against servers that are not there: every problem listed, exit 1.
    let good = dir.path().join("good.toml");
    std::fs::write(&good, std::fs::read_to_string(&cfg).unwrap().replace("intervall", "interval")).unwrap();
    let out = vsync(&good, &["check"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).lines().any(|l| l.starts_with("FAIL") && l.contains("origin") && l.contains("127.0.0.1:1")),
        "{}",
        text(&out)
    );
    // Status before any cycle: nothing recorded; with --max-lag a destination that never
    // recorded a cycle fails the check.
    let with_dest = dir.path().join("dest.toml");
    std::fs::write(
        &with_dest,
        format!(
            "{}\n[[destination]]\nname = \"eu\"\nvault = {{ address = \"http://127.0.0.1:1\", token = \"t\" }}\nmounts = {{ \"secret/\" = \"secret/\" }}\nstate = {{ backend = \"file\", path = \"s\" }}\n",
            std::fs::read_to_string(&good).unwrap()
        ),
    )
    .unwrap();
    let out = vsync(&with_dest, &["status"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("no status recorded yet"), "{}", text(&out));
    let out = vsync(&with_dest, &["status", "--max-lag", "1m"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("lagging") && text(&out).contains("eu"), "{}", text(&out));
}

/// Where the separate-process test keeps its state.
enum Backend {
    File,
    Consul(vsync_consul_emulator::Emulator),
}

impl Backend {
    fn state_table(&self, dir: &Path) -> String {
        match self {
            Backend::File => format!("{{ backend = \"file\", path = \"{}\" }}", dir.join("state").display()),
            Backend::Consul(emu) => {
                std::fs::write(dir.join("consul.token"), "not-used-by-the-emulator\n").unwrap();
                format!(
                    "{{ backend = \"consul\", address = \"{}\", prefix = \"vsync-e2e/\", token_file = \"{}\", datacenter = \"dc1\" }}",
                    emu.url(),
                    dir.join("consul.token").display()
                )
            }
        }
    }

    /// Every stored document: name -> content.
    fn documents(&self, dir: &Path) -> BTreeMap<String, Vec<u8>> {
        match self {
            Backend::File => walk(&dir.join("state"))
                .into_iter()
                .filter(|p| !p.to_string_lossy().ends_with(".lock") && !p.to_string_lossy().ends_with(".status.json"))
                .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
                .collect(),
            // Like the file store's `.lock` files, the side locks are not sync info (their
            // value names the holding process, so it changes with every run); nor are the
            // per-cycle status records.
            Backend::Consul(emu) => emu
                .keys("")
                .into_iter()
                .filter(|k| !k.ends_with("/lock") && !k.ends_with("/status"))
                .map(|k| (k.clone(), emu.get(&k).unwrap()))
                .collect(),
        }
    }

    /// A token of state writes: file modification times, or the emulator's write count.
    fn writes(&self, dir: &Path) -> String {
        match self {
            Backend::File => {
                let mut v: Vec<_> = walk(&dir.join("state"))
                    .into_iter()
                    // Side locks and per-cycle status records are not sync info.
                    .filter(|p| !p.to_string_lossy().ends_with(".lock") && !p.to_string_lossy().ends_with(".status.json"))
                    .map(|p| format!("{} {:?}", p.display(), std::fs::metadata(&p).unwrap().modified().unwrap()))
                    .collect();
                v.sort();
                v.join("\n")
            }
            // Start-up checks write and delete a probe document; the sync info (root with its
            // generation, content-addressed parts) must be exactly as it was.
            Backend::Consul(_) => format!("{:?}", self.documents(dir)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_and_destination_as_separate_processes() {
    separate_processes(Backend::File).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_and_destination_as_separate_processes_over_consul() {
    println!("Consul state store: the in-process emulator (tests/consul-emulator)");
    separate_processes(Backend::Consul(vsync_consul_emulator::Emulator::start())).await;
}

async fn separate_processes(backend: Backend) {
    let (a, mut b) = (Bao::dev(), Bao::dev());
    a.enable_kv("kv1", 1);
    b.enable_kv("kv1", 1);
    let (ca, cb) = (client(&a), client(&b));
    for i in 0..60 {
        ca.write_version("secret/", &odd_name(i), &data(json!({"i": i})), 0).await.unwrap();
        ca.write_v1("kv1/", &odd_name(i), &data(json!({"v1": i}))).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("digest.key");
    std::fs::write(&key, b"0123456789abcdef0123456789abcdef").unwrap();
    let cfg = config_with_state(dir.path(), &a, &b, "", &backend.state_table(dir.path()));
    // The digest key is an origin setting.
    let text_cfg = std::fs::read_to_string(&cfg).unwrap().replacen(
        "mounts = [\"secret/\", \"kv1/\"]",
        &format!("mounts = [\"secret/\", \"kv1/\"]\ndigest_key_file = \"{}\"", key.display()),
        1,
    );
    std::fs::write(&cfg, text_cfg).unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_vsync"))
            .arg("--config").arg(&cfg).args(args)
            .env("VSYNC_LOG", "warn").env("VSYNC_E2E_DEST_TOKEN", DEV_ROOT_TOKEN)
            .output().unwrap()
    };
    // A destination before any origin info says what to do.
    let out = run(&["destination", "--name", "eu", "--once"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("vsync origin"), "{}", text(&out));

    let out = run(&["origin", "--once"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("120 secrets") && text(&out).contains("published"), "{}", text(&out));
    let out = run(&["destination", "--name", "eu", "--once"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("120 added"), "{}", text(&out));
    assert_eq!(contents(&cb).await, contents(&ca).await);

    // The state holds no values (KV v1 digests are keyed HMACs) and no tokens.
    let docs = backend.documents(dir.path());
    assert!(docs.keys().any(|k| k.contains("origin")) && docs.keys().any(|k| k.contains("destination-eu")), "{:?}", docs.keys());
    for (name, doc) in &docs {
        let doc = String::from_utf8_lossy(doc);
        assert!(!doc.contains("\"v1\"") && !doc.contains(DEV_ROOT_TOKEN) && !doc.contains("not-used-by"), "{name}");
    }

    // No change: the destination makes zero Vault data reads or writes, writes no state.
    let out = run(&["origin", "--once"]);
    assert!(text(&out).contains("unchanged"), "{}", text(&out));
    let before = backend.writes(dir.path());
    let out = run(&["destination", "--name", "eu", "--once"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("0 origin data reads, 0 destination data reads, 0 destination writes"),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("(state unchanged)"), "{}", text(&out));
    assert_eq!(backend.writes(dir.path()), before, "no state writes");
    // Each role recorded its cycle; the destination applied the origin's current generation.
    let out = run(&["status", "--format", "json", "--max-lag", "1h"]);
    assert!(out.status.success(), "{}", text(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["origin"]["last_cycle"]["outcome"], "ok", "{doc}");
    assert_eq!(doc["destinations"][0]["lag_seconds"], 0.0, "{doc}");
    assert_eq!(doc["destinations"][0]["status"]["generation"], doc["origin"]["generation"], "{doc}");

    // Changes flow through a restart of both processes without re-copying the rest.
    ca.write_version("secret/", &odd_name(1), &data(json!({"i": "changed"})), 1).await.unwrap();
    ca.write_v1("kv1/", &odd_name(2), &data(json!({"v1": "changed"}))).await.unwrap();
    assert!(run(&["origin", "--once"]).status.success());
    let out = run(&["destination", "--name", "eu", "--once"]);
    assert!(text(&out).contains("0 added, 2 updated, 0 deleted, 118 unchanged"), "{}", text(&out));
    assert!(text(&out).contains("2 origin data reads"), "{}", text(&out));
    assert_eq!(contents(&cb).await, contents(&ca).await);

    // A failed cycle (destination down) commits nothing.
    ca.write_version("secret/", &odd_name(3), &data(json!({"i": "again"})), 1).await.unwrap();
    assert!(run(&["origin", "--once"]).status.success());
    b.stop();
    let before = backend.writes(dir.path());
    let out = run(&["destination", "--name", "eu", "--once"]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(backend.writes(dir.path()), before, "nothing committed");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_bucket_count_rebuckets_without_recopying() {
    let emu = vsync_consul_emulator::Emulator::start();
    let (a, b) = (Bao::dev(), Bao::dev());
    a.enable_kv("kv1", 1);
    b.enable_kv("kv1", 1);
    let ca = client(&a);
    for i in 0..40 {
        ca.write_version("secret/", &odd_name(i), &data(json!({"i": i})), 0).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let state = |n: u32| format!("{{ backend = \"consul\", address = \"{}\", buckets = {n} }}", emu.url());
    let run = |cfg: &Path| {
        Command::new(env!("CARGO_BIN_EXE_vsync"))
            .arg("--config").arg(cfg).args(["run", "--once"])
            .env("VSYNC_LOG", "warn").env("VSYNC_E2E_DEST_TOKEN", DEV_ROOT_TOKEN)
            .output().unwrap()
    };
    let cfg = config_with_state(dir.path(), &a, &b, "", &state(4));
    let out = run(&cfg);
    assert!(out.status.success() && text(&out).contains("40 added"), "{}", text(&out));
    let cfg = config_with_state(dir.path(), &a, &b, "", &state(16));
    let out = run(&cfg);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("0 added, 0 updated, 0 deleted, 40 unchanged"), "{}", text(&out));
    assert!(text(&out).contains("0 origin data reads, 0 destination data reads, 0 destination writes"), "{}", text(&out));
    assert_eq!(contents(&client(&b)).await, contents(&ca).await);
    // Both sides now use 16 buckets.
    let root: serde_json::Value = serde_json::from_slice(&emu.get("vsync/destination-eu/root").unwrap()).unwrap();
    assert_eq!(root["buckets"].as_array().unwrap().len(), 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_policies_are_all_a_sync_needs() {
    // `vsync policy` prints least-privilege HCL; tokens with exactly those policies (and no
    // default policy) run the start-up checks and an exact sync of both mount kinds.
    let (a, b) = (Bao::dev(), Bao::dev());
    a.enable_kv("kv1", 1);
    b.enable_kv("kv1", 1);
    let ca = client(&a);
    for i in 0..5 {
        ca.write_version("secret/", &format!("app/k{i}"), &data(json!({"i": i})), 0).await.unwrap();
        ca.write_v1("kv1/", &format!("flat{i}"), &data(json!({"i": i}))).await.unwrap();
    }
    ca.write_version("secret/", "app/k0", &data(json!({"i": "two"})), 1).await.unwrap();
    ca.delete_versions("secret/", "app/k0", &[1]).await.unwrap();
    ca.destroy_versions("secret/", "app/k1", &[1]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let write = |origin_token: &str, dest_token: &str| {
        let path = dir.path().join("vsync.toml");
        std::fs::write(
            &path,
            format!(
                r#"
[origin]
vault = {{ address = "{}", token = "{origin_token}" }}
mounts = ["secret/", "kv1/"]
state = {{ backend = "file", path = "{state}" }}

[[destination]]
name = "eu"
vault = {{ address = "{}", token = "{dest_token}" }}
mounts = {{ "secret/" = "secret/", "kv1/" = "kv1/" }}
state = {{ backend = "file", path = "{state}" }}
"#,
                a.addr(),
                b.addr(),
                state = dir.path().join("state").display(),
            ),
        )
        .unwrap();
        path
    };
    let cfg = write(DEV_ROOT_TOKEN, DEV_ROOT_TOKEN);
    let origin_hcl = vsync(&cfg, &["policy", "origin"]);
    let dest_hcl = vsync(&cfg, &["policy", "destination", "--name", "eu"]);
    assert!(origin_hcl.status.success() && dest_hcl.status.success(), "{}{}", text(&origin_hcl), text(&dest_hcl));
    let (origin_hcl, dest_hcl) = (String::from_utf8_lossy(&origin_hcl.stdout).into_owned(), String::from_utf8_lossy(&dest_hcl.stdout).into_owned());
    assert!(origin_hcl.contains("kv1/*") && !origin_hcl.contains("update"), "{origin_hcl}");
    let cfg = write(&a.token_with_policy("vsync-origin", &origin_hcl), &b.token_with_policy("vsync-eu", &dest_hcl));
    let out = vsync(&cfg, &["check"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = vsync(&cfg, &["run", "--once"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(contents(&client(&b)).await, contents(&ca).await);
    let out = vsync(&cfg, &["verify", "--name", "eu", "--data"]);
    assert!(out.status.success(), "{}", text(&out));
}

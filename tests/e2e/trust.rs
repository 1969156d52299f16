//! Trust under real conditions (the release binary against real OpenBao): listings under an
//! ACL `pagination_limit`, destinations that already hold data, one destination down while
//! the others start, and keys that exist at the destination only.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use vsync_test_harness::{Bao, DEV_ROOT_TOKEN, Proxy};

use super::{client, data, text, vsync};

/// A config with one `secret/` mount, origin `origin_token`, and one destination per entry of
/// `dests` (name, address), all with root tokens and a file store in `dir/state`.
fn trust_config(dir: &Path, origin: &str, origin_token: &str, dests: &[(&str, String)], extra: &str) -> PathBuf {
    let state = format!("{{ backend = \"file\", path = \"{}\" }}", dir.join("state").display());
    let mut text = format!(
        "[origin]\nvault = {{ address = \"{origin}\", token = \"{origin_token}\" }}\nmounts = [\"secret/\"]\nstate = {state}\ninterval = \"1s\"\n"
    );
    for (name, address) in dests {
        text.push_str(&format!(
            "\n[[destination]]\nname = \"{name}\"\nvault = {{ address = \"{address}\", token = \"{DEV_ROOT_TOKEN}\" }}\n\
             mounts = {{ \"secret/\" = \"secret/\" }}\nstate = {state}\ninterval = \"1s\"\n{extra}\n"
        ));
    }
    let path = dir.join("vsync.toml");
    std::fs::write(&path, text).unwrap();
    path
}

async fn keys(c: &vsync_vault::VaultClient) -> Vec<String> {
    let info = c.mount_info("secret/").await.unwrap();
    c.list_secrets(&info).await.unwrap().into_iter().map(|s| s.path).collect()
}

/// Issue 18 item 1: a token under `pagination_limit = 10` without `scan` made the LIST walk
/// see 10 keys of a 25-key folder, publish that, delete 15 live copies and exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paginated_policy_never_deletes_live_copies_and_names_pagination_limit() {
    let (a, b) = (Bao::dev(), Bao::dev());
    let (ca, cb) = (client(&a), client(&b));
    for i in 0..25 {
        ca.write_version("secret/", &format!("big/k{i:02}"), &data(json!({ "i": i })), 0).await.unwrap();
    }
    for i in 0..80 {
        ca.write_version("secret/", &format!("f{}/k{i}", i % 8), &data(json!({ "i": i })), 0).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let root = trust_config(dir.path(), &a.addr(), DEV_ROOT_TOKEN, &[("eu", b.addr())], "versions = \"latest\"");
    let out = vsync(&root, &["run", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(keys(&cb).await.len(), 105);

    let limited = a.token_with_policy("paged", r#"path "secret/*" { capabilities = ["read", "list"], pagination_limit = 10 }"#);
    let cfg = trust_config(dir.path(), &a.addr(), &limited, &[("eu", b.addr())], "versions = \"latest\"");
    let check = vsync(&cfg, &["check"]);
    let said = text(&check);
    assert!(said.contains("WARN") && said.contains("`scan` capability"), "check warns about the missing scan: {said}");
    let out = vsync(&cfg, &["run", "--once"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "a listing that may be cut short stops the cycle: {said}");
    assert!(said.contains("pagination_limit"), "the error names pagination_limit: {said}");
    assert_eq!(keys(&cb).await.len(), 105, "no live copy was deleted");

    // `vsync policy origin` grants scan on OpenBao, and a token holding it syncs in full.
    let policy = vsync(&root, &["policy", "origin"]);
    let hcl = String::from_utf8_lossy(&policy.stdout).into_owned();
    assert!(hcl.contains(r#"path "secret/detailed-metadata/*" { capabilities = ["list", "scan"] }"#), "{hcl}");
    assert!(!hcl.lines().any(|l| l.trim_start().starts_with("# path")), "scan is granted, not commented out: {hcl}");
    let hcl_limited = hcl.replace(r#"capabilities = ["read", "list", "scan"] }"#, r#"capabilities = ["read", "list", "scan"], pagination_limit = 10 }"#);
    let scanner = a.token_with_policy("scanner", &hcl_limited);
    ca.delete_metadata("secret/", "big/k24").await.unwrap();
    let cfg = trust_config(dir.path(), &a.addr(), &scanner, &[("eu", b.addr())], "versions = \"latest\"");
    let out = vsync(&cfg, &["run", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(keys(&cb).await.len(), 104, "only the key deleted at the origin is gone");
}

/// Issue 18 item 2: 20 one-version origin keys whose paths hold two versions at the
/// destination were planned as create-only writes and then silently rebuilt (history wiped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopting_keys_with_history_is_planned_as_rebuilds_and_guarded() {
    let (a, b) = (Bao::dev(), Bao::dev());
    let (ca, cb) = (client(&a), client(&b));
    for i in 0..20 {
        let k = format!("app/k{i}");
        ca.write_version("secret/", &k, &data(json!({ "v": 1 })), 0).await.unwrap();
        cb.write_version("secret/", &k, &data(json!({ "old": 1 })), 0).await.unwrap();
        cb.write_version("secret/", &k, &data(json!({ "old": 2 })), 1).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = trust_config(dir.path(), &a.addr(), DEV_ROOT_TOKEN, &[("eu", b.addr())], "");
    assert_eq!(vsync(&cfg, &["origin", "--once"]).status.code(), Some(0));
    let plan = text(&vsync(&cfg, &["plan", "--name", "eu"]));
    assert_eq!(plan.matches("REBUILD").count(), 20, "every held key shows its rebuild: {plan}");
    assert!(!plan.contains("create-only"), "{plan}");
    assert!(plan.contains("STOP"), "the guard shows in the plan: {plan}");
    let out = vsync(&cfg, &["run", "--once"]);
    assert_eq!(out.status.code(), Some(1), "the mass-delete guard stops it: {}", text(&out));
    for i in 0..20 {
        let m = cb.read_metadata("secret/", &format!("app/k{i}")).await.unwrap().unwrap();
        assert_eq!((m.current_version, m.versions.len()), (2, 2), "app/k{i} keeps its history");
    }
    let out = vsync(&cfg, &["run", "--once", "--allow-mass-delete"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let m = cb.read_metadata("secret/", "app/k0").await.unwrap().unwrap();
    assert_eq!(m.current_version, 1, "rebuilt when allowed, as planned");
}

/// Issue 18 item 3: one destination refusing connections at start-up kept `run` from starting,
/// so no region synced. Now the others run, `--once` exits non-zero, and a long-running
/// process brings the missing destination in when it comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_destination_down_at_start_up_does_not_hold_up_the_others() {
    let (a, b, c) = (Bao::dev(), Bao::dev(), Bao::dev());
    let (ca, cb, cc) = (client(&a), client(&b), client(&c));
    for i in 0..5 {
        ca.write_version("secret/", &format!("k{i}"), &data(json!({ "i": i })), 0).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    // `down` is a port nothing listens on.
    let dead = format!("http://127.0.0.1:{}", vsync_test_harness::free_port_pair());
    let cfg = trust_config(dir.path(), &a.addr(), DEV_ROOT_TOKEN, &[("down", dead), ("eu", b.addr())], "");
    let out = vsync(&cfg, &["run", "--once"]);
    let said = text(&out);
    assert_ne!(out.status.code(), Some(0), "a side that could not run makes --once fail: {said}");
    assert_eq!(keys(&cb).await.len(), 5, "the reachable destination synced: {said}");
    assert!(said.contains("down"), "{said}");
    assert_eq!(vsync(&cfg, &["check"]).status.code(), Some(1), "check still fails on an unreachable side");

    // A long run: `late` is cut at a proxy when vsync starts, then comes back.
    let proxy = Proxy::start(c.addr().rsplit(':').next().unwrap().parse().unwrap());
    proxy.set_cut(true);
    let dir = tempfile::tempdir().unwrap();
    let cfg = trust_config(dir.path(), &a.addr(), DEV_ROOT_TOKEN, &[("late", proxy.addr()), ("eu", b.addr())], "");
    let mut child = Command::new(env!("CARGO_BIN_EXE_vsync"))
        .current_dir(dir.path())
        .args(["--config", cfg.to_str().unwrap(), "run"])
        .env("VSYNC_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(child.try_wait().unwrap().is_none(), "vsync run keeps running with one destination down");
    assert!(keys(&cc).await.is_empty());
    // `status` shows the side that cannot run, and that the other one did.
    let status = text(&vsync(&cfg, &["status"]));
    let late = status.lines().find(|l| l.starts_with("destination late")).unwrap_or_default();
    assert!(late.contains("unavailable") && late.contains("last success never"), "{status}");
    let eu = status.lines().find(|l| l.starts_with("destination eu")).unwrap_or_default();
    assert!(!eu.contains("last success never"), "{status}");
    proxy.set_cut(false);
    let deadline = Instant::now() + Duration::from_secs(30);
    while keys(&cc).await.len() < 5 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = child.kill();
    let said = super::runtime::output_of(child);
    assert_eq!(keys(&cc).await.len(), 5, "the destination that came back synced: {said}");
}

/// Issue 18 item 5: `verify` walked origin keys only, so a key at the destination that no
/// origin key maps to was never reported; `--repair` now has the next cycle remove it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_destination_only_keys_and_repair_removes_them() {
    let (a, b) = (Bao::dev(), Bao::dev());
    let (ca, cb) = (client(&a), client(&b));
    for i in 0..4 {
        ca.write_version("secret/", &format!("k{i}"), &data(json!({ "i": i })), 0).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = trust_config(dir.path(), &a.addr(), DEV_ROOT_TOKEN, &[("eu", b.addr())], "");
    assert_eq!(vsync(&cfg, &["run", "--once"]).status.code(), Some(0));
    let clean = vsync(&cfg, &["verify", "--name", "eu"]);
    assert_eq!(clean.status.code(), Some(0), "{}", text(&clean));
    cb.write_version("secret/", "stray/hand-made", &data(json!({ "x": 1 })), 0).await.unwrap();
    let out = vsync(&cfg, &["verify", "--name", "eu"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("secret/stray/hand-made") && said.contains("at the destination only"), "{said}");
    assert!(said.contains("1 drifted"), "{said}");
    assert_eq!(vsync(&cfg, &["verify", "--name", "eu", "--repair"]).status.code(), Some(1));
    let plan = text(&vsync(&cfg, &["plan", "--name", "eu"]));
    assert!(plan.contains("delete secret/stray/hand-made"), "plan shows the repair's removal: {plan}");
    let out = vsync(&cfg, &["run", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(cb.read_metadata("secret/", "stray/hand-made").await.unwrap().is_none(), "removed by the repair");
    assert_eq!(keys(&cb).await.len(), 4);
    let again = vsync(&cfg, &["verify", "--name", "eu"]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
}

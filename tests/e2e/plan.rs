//! `vsync plan` is a dry run: it writes nothing anywhere (the destination's metadata and the
//! state store are byte for byte the same before and after), and `--format json` is a machine
//! report of what the next cycle would do.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};
use vsync_test_harness::{Bao, DEV_ROOT_TOKEN};

use super::{client, data, text, vsync};

/// Every destination key's raw metadata answer (versions, times, settings), by path.
async fn dest_metadata(b: &Bao) -> BTreeMap<String, Value> {
    let c = client(b);
    let info = c.mount_info("secret/").await.unwrap();
    let mut out = BTreeMap::new();
    for item in c.list_secrets(&info).await.unwrap() {
        let (status, body) = b.http("GET", &format!("secret/metadata/{}", item.path), Some(DEV_ROOT_TOKEN), None);
        assert_eq!(status, 200, "{body}");
        out.insert(item.path, body["data"].clone());
    }
    out
}

/// Every file of the state store: name -> bytes.
fn state_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in walk(dir) {
        out.insert(e.strip_prefix(dir).unwrap().display().to_string(), std::fs::read(&e).unwrap());
    }
    out
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files.extend(walk(&p));
        } else {
            files.push(p);
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_writes_nothing_anywhere_and_reports_json() {
    let (a, b) = (Bao::dev(), Bao::dev());
    let ca = client(&a);
    for i in 0..6 {
        ca.write_version("secret/", &format!("app/k{i}"), &data(json!({"v": i})), 0).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let cfg = dir.path().join("vsync.toml");
    // The default mode (`versions = "all"`): plan also reads both sides' metadata per key.
    std::fs::write(
        &cfg,
        format!(
            r#"
[origin]
vault = {{ address = "{}", token = "{DEV_ROOT_TOKEN}" }}
mounts = ["secret/"]
state = {{ backend = "file", path = "{}" }}

[[destination]]
name = "eu"
vault = {{ address = "{}", token = "{DEV_ROOT_TOKEN}" }}
mounts = {{ "secret/" = "secret/" }}
state = {{ backend = "file", path = "{}" }}
"#,
            a.addr(),
            state.display(),
            b.addr(),
            state.display()
        ),
    )
    .unwrap();
    let out = vsync(&cfg, &["run", "--once"]);
    assert!(out.status.success(), "{}", text(&out));
    // Changes the next cycle would apply: one new key, one new version, one delete.
    ca.write_version("secret/", "app/new", &data(json!({"v": "new"})), 0).await.unwrap();
    ca.write_version("secret/", "app/k1", &data(json!({"v": "changed"})), 1).await.unwrap();
    ca.delete_metadata("secret/", "app/k2").await.unwrap();

    let (meta_before, state_before) = (dest_metadata(&b).await, state_files(&state));
    assert_eq!(meta_before.len(), 6);
    let human = vsync(&cfg, &["plan", "--name", "eu"]);
    assert!(human.status.success(), "{}", text(&human));
    let json_out = vsync(&cfg, &["plan", "--name", "eu", "--format", "json"]);
    assert!(json_out.status.success(), "{}", text(&json_out));
    assert_eq!(dest_metadata(&b).await, meta_before, "plan changed the destination's metadata");
    assert_eq!(state_files(&state), state_before, "plan changed the state store");

    let report: Value = serde_json::from_slice(&json_out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&json_out)));
    assert_eq!(report["destination"], "eu");
    let keys = |list: &str| -> Vec<(String, String)> {
        report[list]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| (a["op"].as_str().unwrap().to_owned(), a["key"].as_str().unwrap().to_owned()))
            .collect()
    };
    let mut writes = keys("writes");
    writes.sort();
    assert_eq!(writes, vec![("replicate".into(), "secret/app/k1".into()), ("replicate".into(), "secret/app/new".into())], "{report}");
    assert_eq!(keys("removals"), vec![("delete".to_owned(), "secret/app/k2".to_owned())], "{report}");
    assert_eq!(report["summary"]["unchanged"], 4, "{report}");
    assert!(report["refusals"].as_array().unwrap().is_empty(), "{report}");
    let detail = report["writes"].as_array().unwrap().iter().find(|w| w["key"] == "secret/app/k1").unwrap()["detail"].clone();
    assert!(detail.as_str().is_some_and(|d| !d.is_empty()), "{report}");
    // The human form names the same changes.
    let human = String::from_utf8_lossy(&human.stdout).into_owned();
    assert!(human.contains("secret/app/new") && human.contains("delete secret/app/k2"), "{human}");
}

//! Paths rewritten by WASM plugins, end to end against real OpenBao servers.

use std::process::Command;

use serde_json::json;
use vsync_test_harness::{Bao, DEV_ROOT_TOKEN};

use super::{client, config, contents, data, text};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regex_transform_and_glob_filter_replicate_one_region_subtree() {
    let (a, b) = (Bao::dev(), Bao::dev());
    a.enable_kv("kv1", 1);
    b.enable_kv("kv1", 1);
    let (ca, cb) = (client(&a), client(&b));
    for app in ["billing", "search"] {
        for k in ["db", "api/key"] {
            ca.write_version("secret/", &format!("prod/eu/{app}/{k}"), &data(json!({"app": app})), 0).await.unwrap();
            ca.write_version("secret/", &format!("prod/us/{app}/{k}"), &data(json!({"app": app})), 0).await.unwrap();
        }
    }
    ca.write_version("secret/", "prod/eu/billing/tmp/scratch", &data(json!({"x": 1})), 0).await.unwrap();
    ca.write_version("secret/", "dev/eu/billing/db", &data(json!({"x": 1})), 0).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &a,
        &b,
        r#"labels = { region = "eu" }
transforms = [ { plugin = "regex", config = { from = "^prod/eu/(?P<app>[^/]+)/(?P<rest>.+)$", to = "{app}/{rest}" } } ]
filters = [ { plugin = "glob", config = { include = ["prod/eu/**"], exclude = ["**/tmp/**"] } } ]"#,
    );
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_vsync"))
            .arg("--config").arg(&cfg).args(["run", "--once"])
            .env("VSYNC_LOG", "warn").env("VSYNC_E2E_DEST_TOKEN", DEV_ROOT_TOKEN)
            .output().unwrap()
    };
    let out = Command::new(env!("CARGO_BIN_EXE_vsync")).arg("--config").arg(&cfg).arg("validate").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let out = run();
    assert!(out.status.success(), "{}", text(&out));
    let got: Vec<String> = contents(&cb).await.into_keys().collect();
    assert_eq!(
        got,
        vec!["secret/billing/api/key", "secret/billing/db", "secret/search/api/key", "secret/search/db"],
        "{}",
        text(&out)
    );
    assert_eq!(contents(&cb).await["secret/search/db"], json!({"app": "search"}));
    // Second run: nothing to do.
    let out = run();
    assert!(text(&out).contains("0 destination writes"), "{}", text(&out));
    // The origin side is untouched by the mapping.
    assert_eq!(contents(&ca).await.len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_paths_mapping_to_one_destination_path_fail_before_any_write() {
    let (a, b) = (Bao::dev(), Bao::dev());
    a.enable_kv("kv1", 1);
    b.enable_kv("kv1", 1);
    let ca = client(&a);
    ca.write_version("secret/", "eu/app/db", &data(json!({"r": "eu"})), 0).await.unwrap();
    ca.write_version("secret/", "us/app/db", &data(json!({"r": "us"})), 0).await.unwrap();
    ca.write_version("secret/", "other", &data(json!({"r": "x"})), 0).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &a,
        &b,
        r#"transforms = [ { plugin = "regex", config = { from = "^(?P<region>eu|us)/(?P<rest>.+)$", to = "{rest}" } } ]"#,
    );
    let out = Command::new(env!("CARGO_BIN_EXE_vsync"))
        .arg("--config").arg(&cfg).args(["run", "--once"])
        .env("VSYNC_LOG", "warn").env("VSYNC_E2E_DEST_TOKEN", DEV_ROOT_TOKEN)
        .output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("`secret/eu/app/db` and `secret/us/app/db` both map to `secret/app/db`"), "{}", text(&out));
    assert!(contents(&client(&b)).await.is_empty(), "nothing written");
}

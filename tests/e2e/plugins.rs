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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_plugins_fail_their_paths_and_the_rest_still_syncs() {
    let (a, b) = (Bao::dev(), Bao::dev());
    a.enable_kv("kv1", 1);
    b.enable_kv("kv1", 1);
    let (ca, cb) = (client(&a), client(&b));
    for p in ["loop/x", "bomb/y", "panic/z", "ok/a", "ok/b"] {
        ca.write_version("secret/", p, &data(json!({"p": p})), 0).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    let built = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/plugins-wasm/wasm32-wasip2/release");
    for (name, fixture) in [("looper", "loop"), ("bomb", "membomb"), ("panicky", "panic")] {
        std::fs::copy(built.join(format!("vsync_plugin_fixture_{fixture}.wasm")), plugins.join(format!("{name}.wasm"))).unwrap();
    }
    let cfg = config(
        dir.path(),
        &a,
        &b,
        // A generous call limit: the memory bomb must meet the memory limit, not the clock, on
        // a loaded CI machine (the loop meets the clock either way).
        "transforms = [ { plugin = \"looper\" }, { plugin = \"bomb\" }, { plugin = \"panicky\" } ]\n[plugins]\ncall_timeout = \"2s\"",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_vsync"))
        .arg("--config").arg(&cfg).args(["run", "--once", "--plugins"]).arg(&plugins)
        .env("VSYNC_LOG", "warn").env("VSYNC_E2E_DEST_TOKEN", DEV_ROOT_TOKEN)
        .output().unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(3), "per-path failures exit 3: {t}");
    assert!(t.contains("2 added") && t.contains("3 failed"), "{t}");
    for (plugin, what) in [("looper", "time limit"), ("bomb", "memory limit"), ("panicky", "fixture panic on panic/z")] {
        assert!(t.contains(&format!("plugin `{plugin}`")) && t.contains(what), "{plugin}: {t}");
    }
    let got: Vec<String> = contents(&cb).await.into_keys().collect();
    assert_eq!(got, vec!["secret/ok/a", "secret/ok/b"]);
    // A name clash with the default pack is refused.
    std::fs::copy(plugins.join("looper.wasm"), plugins.join("regex.wasm")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vsync"))
        .arg("--config").arg(&cfg).args(["run", "--once", "--plugins"]).arg(&plugins)
        .env("VSYNC_LOG", "warn").env("VSYNC_E2E_DEST_TOKEN", DEV_ROOT_TOKEN)
        .output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("regex") && text(&out).contains("already taken"), "{}", text(&out));
}

#[test]
fn plugin_validate_cli_json_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let built = root.join("target/plugins-wasm/wasm32-wasip2/release");
    for name in ["regex", "glob"] {
        std::fs::copy(built.join(format!("vsync_plugin_{name}.wasm")), dir.path().join(format!("{name}.wasm"))).unwrap();
        std::fs::copy(root.join(format!("plugins/{name}/{name}.vectors.toml")), dir.path().join(format!("{name}.vectors.toml"))).unwrap();
    }
    let run = |format: &str| {
        Command::new(env!("CARGO_BIN_EXE_vsync"))
            .args(["plugin", "validate"]).arg(dir.path()).args(["--format", format])
            .output().unwrap()
    };
    let out = run("human");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("ok   regex") && text(&out).contains("ok   glob"), "{}", text(&out));
    std::fs::copy(built.join("vsync_plugin_fixture_wrong_world.wasm"), dir.path().join("odd.wasm")).unwrap();
    let out = run("json");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["passed"], false);
    let odd = report["components"].as_array().unwrap().iter().find(|c| c["name"] == "odd").unwrap();
    assert!(odd["error"].as_str().unwrap().contains("exports neither"), "{odd}");
}

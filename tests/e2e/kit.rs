//! The operator's kit commands: `vsync init` (its output validates as printed, its only gap is
//! the token files it names, and with those in place it syncs real servers), `vsync completions`
//! (the bash script loads in a real bash and completes subcommands) and `vsync man`.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::json;
use vsync_test_harness::{Bao, DEV_ROOT_TOKEN};

use super::{client, data, text, vsync};

fn bin(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vsync")).args(args).env("VSYNC_LOG", "warn").output().unwrap()
}

const SUBCOMMANDS: [&str; 13] =
    ["run", "origin", "destination", "plan", "check", "verify", "validate", "policy", "plugin", "status", "init", "completions", "man"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_prints_a_config_that_validates_as_printed_and_syncs_once_its_token_files_exist() {
    let (a, b) = (Bao::dev(), Bao::dev());
    let ca = client(&a);
    for i in 0..6 {
        ca.write_version("secret/", &format!("app/k{i}"), &data(json!({"i": i})), 0).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    // Run somewhere else than where the config goes: init writes nothing but stdout.
    let out = Command::new(env!("CARGO_BIN_EXE_vsync"))
        .current_dir(dir.path())
        .args(["init", "--origin", &a.addr(), "--destination", &format!("eu={}", b.addr())])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(out.stderr.is_empty(), "{}", text(&out));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "init wrote a file");
    let printed = String::from_utf8(out.stdout).unwrap();
    println!("{printed}");
    // Tokens only through files; the ones it names.
    let token_files: Vec<&str> = printed
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| l.split("token_file = \"").skip(1).map(|rest| rest.split('"').next().unwrap()))
        .collect();
    assert_eq!(token_files, ["origin.token", "destination-eu.token"], "{printed}");
    for l in printed.lines().filter(|l| !l.trim_start().starts_with('#')) {
        assert!(!l.contains("token =") && !l.contains("token_env") && !l.contains(DEV_ROOT_TOKEN), "an inline token: {l}");
    }
    assert!(printed.lines().filter(|l| l.starts_with('#')).count() >= 10, "hardly commented:\n{printed}");

    // 1. Exactly as printed, with none of the token files: `vsync validate` accepts it.
    let cfg = dir.path().join("vsync.toml");
    std::fs::write(&cfg, &printed).unwrap();
    let out = vsync(&cfg, &["validate"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("config OK: origin with 1 mount(s), 1 destination(s)"), "{}", text(&out));

    // 2. `vsync check` (which logs in) fails, and every problem is a token file it names.
    let out = vsync(&cfg, &["check"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let fails: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().filter(|l| l.starts_with("FAIL")).collect();
    assert!(!fails.is_empty(), "{}", text(&out));
    for f in &fails {
        assert!(token_files.iter().any(|t| f.contains(&dir.path().join(t).display().to_string())), "not a token-file problem: {f}\n{}", text(&out));
    }
    for t in &token_files {
        assert!(fails.iter().any(|f| f.contains(t)), "{t} not reported:\n{}", text(&out));
    }

    // 3. With the token files in place (beside the config, as its comments say), it works.
    for t in &token_files {
        std::fs::write(dir.path().join(t), format!("{DEV_ROOT_TOKEN}\n")).unwrap();
    }
    let out = vsync(&cfg, &["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = vsync(&cfg, &["run", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("6 added"), "{}", text(&out));
    let origin = contents_secret(&ca).await;
    assert_eq!(origin.len(), 6);
    assert_eq!(contents_secret(&client(&b)).await, origin);
    assert!(dir.path().join("vsync-state").is_dir(), "the state lands beside the config");
}

/// Every live secret under `secret/` (the dev servers here have no `kv1/`): path -> JSON value.
async fn contents_secret(c: &vsync_vault::VaultClient) -> std::collections::BTreeMap<String, serde_json::Value> {
    let mut out = std::collections::BTreeMap::new();
    let info = c.mount_info("secret/").await.unwrap();
    for s in c.list_secrets(&info).await.unwrap() {
        if let vsync_vault::DataRead::Live(d, _) = c.read_latest("secret/", &s.path).await.unwrap() {
            out.insert(format!("secret/{}", s.path), serde_json::from_str(d.as_json()).unwrap());
        }
    }
    out
}

#[test]
fn init_refuses_bad_arguments_with_a_usage_error() {
    for (args, says) in [
        (vec!["init", "--origin", "http://a:8200", "--destination", "eu"], "is not NAME=URL"),
        (vec!["init", "--origin", "http://a:8200", "--destination", "eu=vault-b:8200"], "is not a Vault address"),
        (vec!["init", "--origin", "ftp://a", "--destination", "eu=http://b:8200"], "scheme must be http or https"),
        (vec!["init", "--origin", "http://a:8200", "--destination", "e u=http://b:8200"], "not usable"),
        (vec!["init", "--origin", "http://a:8200", "--destination", "eu=http://b", "--destination", "eu=http://c"], "given twice"),
        (vec!["init", "--origin", "http://a:8200", "--destination", "eu=http://b", "--mount", "a/", "--mount", "a/b"], "overlap"),
        (vec!["init", "--origin", "http://a:8200"], "--destination <NAME=URL>"),
        (vec!["init", "--origin", "http://tok:en@a:8200", "--destination", "eu=http://b"], "credentials"),
    ] {
        let out = bin(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(out.stdout.is_empty(), "{args:?}: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with("error: ") && err.contains(says), "{args:?}: {err}");
        // Never echoes a credential back.
        assert!(!err.contains("tok:en"), "{args:?}: {err}");
    }
    // A --config that does not exist does not matter to init.
    let out = bin(&["--config", "/nonexistent/vsync.toml", "init", "--origin", "http://a:8200", "--destination", "eu=http://b:8200", "--mount", "kv1"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("mounts = { \"kv1/\" = \"kv1/\" }"), "{}", text(&out));
}

#[test]
fn completions_load_in_bash_and_complete_subcommands() {
    for shell in ["bash", "zsh", "fish"] {
        let out = bin(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}: {}", text(&out));
        let script = String::from_utf8(out.stdout).unwrap();
        for sub in SUBCOMMANDS {
            assert!(script.contains(sub), "{shell}: `{sub}` missing:\n{script}");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("vsync.bash");
    std::fs::write(&script, bin(&["completions", "bash"]).stdout).unwrap();
    let out = Command::new("bash").arg("-n").arg(&script).output().unwrap();
    assert!(out.status.success(), "bash -n: {}", text(&out));
    // Loaded into a real bash, it registers for `vsync` and completes `vsync ru` and the
    // shells of `vsync completions`.
    let complete = |words: &str| {
        let probe = format!(
            "source {:?}; complete -p vsync >/dev/null || exit 9; COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); \
             COMP_LINE=\"{words}\"; COMP_POINT=${{#COMP_LINE}}; _vsync vsync \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display()
        );
        let out = Command::new("bash").arg("-c").arg(probe).output().unwrap();
        assert!(out.status.success(), "{words}: {}", text(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let run = complete("vsync ru");
    assert_eq!(run.trim(), "run", "{run}");
    let shells = complete("vsync completions ''");
    for shell in ["bash", "zsh", "fish"] {
        assert!(shells.lines().any(|l| l == shell), "{shells}");
    }
}

#[test]
fn man_prints_the_page_or_writes_one_per_command() {
    let out = bin(&["man"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(page.contains(".TH vsync 1"), "{page}");
    for section in [".SH NAME", ".SH SYNOPSIS", ".SH OPTIONS", ".SH SUBCOMMANDS"] {
        assert!(page.contains(section), "{section} missing:\n{page}");
    }
    for sub in SUBCOMMANDS {
        assert!(page.contains(&format!("vsync\\-{sub}(1)")), "`{sub}` missing:\n{page}");
    }
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("man1");
    let out = bin(&["man", "--dir", target.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let listed: Vec<String> = String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect();
    let mut files: Vec<String> = std::fs::read_dir(&target).unwrap().map(|e| e.unwrap().path().display().to_string()).collect();
    files.sort();
    assert_eq!(listed, files);
    let names: Vec<String> = files.iter().map(|f| Path::new(f).file_name().unwrap().to_string_lossy().into_owned()).collect();
    for want in ["vsync.1", "vsync-run.1", "vsync-init.1", "vsync-plugin-validate.1", "vsync-policy-destination.1"] {
        assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
    }
    let init = std::fs::read_to_string(target.join("vsync-init.1")).unwrap();
    assert!(init.contains("\\-\\-destination") && init.contains("NAME=URL"), "{init}");
}

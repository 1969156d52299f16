//! JWT and Kubernetes auth with the real binary: login on both sides, re-login across several
//! max TTLs with a JWT file rotated on disk, refusals that name the mount and role, and no JWT
//! in any output.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::json;
use vsync_test_harness::{Bao, DEV_ROOT_TOKEN, JwtIssuer};

use super::runtime::{output_of, wait_exit};
use super::{client, config, contents, data, text};

/// What the tests' tokens may do: everything a role, `check` and the token keeper need.
const POLICY: &str = r#"path "secret/*" { capabilities = ["create", "read", "update", "delete", "list"] }
path "kv1/*" { capabilities = ["create", "read", "update", "delete", "list"] }
path "sys/internal/ui/mounts*" { capabilities = ["read"] }
path "sys/mounts*" { capabilities = ["read"] }"#;

/// Enables JWT auth at `auth/<mount>` on `bao`, trusting `issuer`, with role `vsync`.
fn jwt_auth(bao: &Bao, issuer: &JwtIssuer, mount: &str, ttl: &str, max_ttl: &str) {
    bao.root("PUT", "sys/policies/acl/vsync", Some(&json!({ "policy": POLICY })));
    issuer.configure(bao, mount, "vsync", &["vsync"], ttl, max_ttl);
}

/// Writes `jwt` to `path` the way the kubelet rotates a projected token: a new file renamed
/// over the old one, so a reader never sees half a token.
fn write_jwt(path: &Path, jwt: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, jwt).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// `config()` with the origin and/or destination Vault logging in with a JWT.
fn jwt_config(dir: &Path, a: &Bao, b: &Bao, extra: &str, origin_jwt: Option<&str>, dest_jwt: Option<&str>) -> PathBuf {
    let cfg = config(dir, a, b, extra);
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    if let Some(jwt) = origin_jwt {
        text = text.replacen(&format!("token = \"{DEV_ROOT_TOKEN}\""), jwt, 1);
    }
    if let Some(jwt) = dest_jwt {
        text = text.replacen("token_env = \"VSYNC_E2E_DEST_TOKEN\"", jwt, 1);
    }
    std::fs::write(&cfg, text).unwrap();
    cfg
}

fn vsync_cmd(cfg: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vsync"));
    c.arg("--config").arg(cfg).args(args).env("VSYNC_LOG", "info");
    c
}

fn assert_no_jwt(out: &str, jwts: &[String]) {
    for jwt in jwts {
        // The signature is unique per token; the header is the same for all of them.
        let signature = jwt.rsplit('.').next().unwrap();
        assert!(!out.contains(jwt.as_str()) && !out.contains(signature), "a JWT leaked into the output: {out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_and_kubernetes_style_login_on_both_sides_checks_and_syncs() {
    let (a, b) = (Bao::dev(), Bao::dev());
    a.enable_kv("kv1", 1);
    b.enable_kv("kv1", 1);
    // The origin logs in at a `kubernetes` mount (the same request as Kubernetes auth), from a
    // file; the destination at the default `jwt` mount, from an environment variable.
    let (origin_issuer, dest_issuer) = (JwtIssuer::new(), JwtIssuer::new());
    jwt_auth(&a, &origin_issuer, "kubernetes", "1m", "5m");
    jwt_auth(&b, &dest_issuer, "jwt", "1m", "5m");
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("sa-token");
    let origin_jwt = origin_issuer.sign("system:serviceaccount:vsync:vsync", 300, json!({}));
    let dest_jwt = dest_issuer.sign("vsync-eu", 300, json!({}));
    write_jwt(&token_file, &origin_jwt);
    let cfg = jwt_config(
        dir.path(),
        &a,
        &b,
        "",
        Some(&format!("jwt = {{ role = \"vsync\", jwt_file = \"{}\", mount = \"kubernetes\" }}", token_file.display())),
        Some("jwt = { role = \"vsync\", jwt_env = \"VSYNC_E2E_DEST_JWT\" }"),
    );
    let ca = client(&a);
    for i in 0..5 {
        ca.write_version("secret/", &format!("app/{i}"), &data(json!({"i": i})), 0).await.unwrap();
    }
    let jwts = [origin_jwt.clone(), dest_jwt.clone()];

    let check = vsync_cmd(&cfg, &["check"]).env("VSYNC_E2E_DEST_JWT", &dest_jwt).output().unwrap();
    let t = text(&check);
    assert_eq!(check.status.code(), Some(0), "{t}");
    assert!(t.contains("checks passed"), "{t}");
    assert_no_jwt(&t, &jwts);

    let run = vsync_cmd(&cfg, &["run", "--once"]).env("VSYNC_E2E_DEST_JWT", &dest_jwt).output().unwrap();
    let t = text(&run);
    assert_eq!(run.status.code(), Some(0), "{t}");
    assert!(t.matches("logged in with JWT").count() >= 2, "both sides log in with JWT: {t}");
    assert_no_jwt(&t, &jwts);
    let cb = client(&b);
    assert_eq!(contents(&cb).await, contents(&ca).await);
    assert_eq!(contents(&cb).await.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_jwt_login_names_mount_and_role_and_exits_1() {
    let (a, b) = (Bao::dev(), Bao::dev());
    a.enable_kv("kv1", 1);
    b.enable_kv("kv1", 1);
    let issuer = JwtIssuer::new();
    jwt_auth(&b, &issuer, "jwt", "1m", "5m");
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("jwt");
    let dest = |mount: &str| format!("jwt = {{ role = \"vsync\", jwt_file = \"{}\", mount = \"{mount}\" }}", token_file.display());
    let run = |cfg: &Path, args: &[&str]| -> (Option<i32>, String) {
        let out: Output = vsync_cmd(cfg, args).output().unwrap();
        (out.status.code(), text(&out))
    };

    // Signed by a key the auth method does not trust, then expired, then for another audience.
    let bad = [
        JwtIssuer::new().sign("eu", 300, json!({})),
        issuer.sign("eu", 0, json!({"exp": 1_000_000_000})),
        issuer.sign("eu", 300, json!({"aud": "someone-else"})),
    ];
    let cfg = jwt_config(dir.path(), &a, &b, "", None, Some(&dest("jwt")));
    for (jwt, why) in bad.iter().zip(["signature", "expired", "audience"]) {
        write_jwt(&token_file, jwt);
        let (code, t) = run(&cfg, &["check"]);
        assert_eq!(code, Some(1), "{t}");
        assert!(t.lines().any(|l| l.starts_with("FAIL") && l.contains("destination eu")), "{t}");
        assert!(t.contains("JWT login at `auth/jwt` as role `vsync` was refused (HTTP 400)"), "{t}");
        assert!(t.contains(why), "{why}: {t}");
        assert_no_jwt(&t, &bad);
        let (code, t) = run(&cfg, &["run", "--once"]);
        assert_eq!(code, Some(1), "{t}");
        assert!(t.contains("auth/jwt") && t.contains("`vsync`"), "{t}");
        assert_no_jwt(&t, &bad);
    }
    // Nothing mounted at auth/kubernetes on the destination.
    let cfg = jwt_config(dir.path(), &a, &b, "", None, Some(&dest("kubernetes")));
    let (code, t) = run(&cfg, &["check"]);
    assert_eq!(code, Some(1), "{t}");
    assert!(t.contains("auth/kubernetes") && t.contains("no auth method is mounted"), "{t}");
    // A missing or empty file names the file.
    std::fs::remove_file(&token_file).unwrap();
    let cfg = jwt_config(dir.path(), &a, &b, "", None, Some(&dest("jwt")));
    let (code, t) = run(&cfg, &["check"]);
    assert_eq!(code, Some(1), "{t}");
    assert!(t.contains("cannot read jwt_file") && t.contains(&token_file.display().to_string()), "{t}");
    assert!(contents(&client(&b)).await.is_empty(), "nothing was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_token_is_re_obtained_from_the_rotated_file_across_several_max_ttls() {
    let (a, b) = (Bao::dev(), Bao::dev());
    a.enable_kv("kv1", 1);
    b.enable_kv("kv1", 1);
    let issuer = Arc::new(JwtIssuer::new());
    // A 3 s Vault token that lives at most 6 s: the run below spans several of them.
    jwt_auth(&b, &issuer, "jwt", "3s", "6s");
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("sa-token");
    // Each JWT expires 4 s after it is written and the file is rotated every second, as a
    // projected service-account token is: a re-login that used the JWT read at start-up (or any
    // JWT more than 4 s old) would be refused, fail three times and stop vsync.
    let written = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let rotate = |issuer: &JwtIssuer, written: &Mutex<Vec<String>>, path: &Path| {
        let jwt = issuer.sign("vsync-eu", 4, json!({}));
        write_jwt(path, &jwt);
        written.lock().unwrap().push(jwt);
    };
    rotate(&issuer, &written, &token_file);
    let rotator = {
        let (issuer, written, stop, path) = (issuer.clone(), written.clone(), stop.clone(), token_file.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(1));
                rotate(&issuer, &written, &path);
            }
        })
    };
    let cfg = jwt_config(
        dir.path(),
        &a,
        &b,
        "interval = \"1s\"",
        None,
        Some(&format!("jwt = {{ role = \"vsync\", jwt_file = \"{}\" }}", token_file.display())),
    );
    let ca = client(&a);
    let mut child = vsync_cmd(&cfg, &["run"])
        .env("VSYNC_LOG", "info,vsync::tokens=debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Keep writing for about three max TTLs; every write must arrive.
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
    stop.store(true, Ordering::Relaxed);
    rotator.join().unwrap();
    assert!(Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap().success());
    let status = wait_exit(&mut child, Duration::from_secs(10)).expect("exits after SIGTERM");
    let out = output_of(child);
    assert_eq!(status.code(), Some(0), "{out}");
    let relogins = out.matches("token renewed by a new JWT login").count();
    assert!(relogins >= 2, "expected re-logins across several max TTLs, saw {relogins}: {out}");
    assert!(!out.contains("JWT login failed"), "every re-login used a fresh JWT: {out}");
    assert!(contents(&cb).await.len() >= 15, "writes kept arriving");
    assert_no_jwt(&out, &written.lock().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_that_is_not_rotated_stops_vsync_before_its_token_expires() {
    let (a, b) = (Bao::dev(), Bao::dev());
    a.enable_kv("kv1", 1);
    b.enable_kv("kv1", 1);
    let issuer = JwtIssuer::new();
    jwt_auth(&b, &issuer, "jwt", "3s", "6s");
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("sa-token");
    // Valid for the first login only: by the re-login (within the 6 s max TTL) it has expired.
    let jwt = issuer.sign("vsync-eu", 4, json!({}));
    write_jwt(&token_file, &jwt);
    let cfg = jwt_config(
        dir.path(),
        &a,
        &b,
        "interval = \"1s\"",
        None,
        Some(&format!("jwt = {{ role = \"vsync\", jwt_file = \"{}\" }}", token_file.display())),
    );
    let mut child = vsync_cmd(&cfg, &["run"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(30)).expect("a token that cannot be re-obtained is fatal");
    let out = output_of(child);
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(
        out.contains("destination eu vault: the token expires and JWT login failed 3 times: JWT login at `auth/jwt` as role `vsync` was refused (HTTP 400)"),
        "{out}"
    );
    assert!(out.contains("token is expired"), "{out}");
    assert_no_jwt(&out, &[jwt]);
}

#[test]
fn the_kubernetes_example_validates_offline() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/kubernetes.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_vsync")).arg("--config").arg(&example).arg("validate").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let text = std::fs::read_to_string(&example).unwrap();
    assert_eq!(text.matches("mount = \"kubernetes\"").count(), 2, "Kubernetes auth on both sides");
}

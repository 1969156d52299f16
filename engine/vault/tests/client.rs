//! The Vault client against real OpenBao servers: every operation and every error class is
//! provoked for real (no mocks).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::json;
use vsync_core::KvVersion;
use vsync_test_harness::{Bao, DEV_ROOT_TOKEN, HttpProxy, JwtIssuer};
use vsync_vault::{
    DataRead, MetadataSettings, RetryPolicy, SecretData, Token, VaultClient, VaultConfig, VaultError,
};

fn client(bao: &Bao, token: &str) -> VaultClient {
    let mut cfg = VaultConfig::new(bao.addr(), Token::new(token));
    cfg.ca_cert = bao.ca_cert();
    cfg.retry = fast_retry();
    VaultClient::new(cfg).unwrap()
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
    }
}

fn data(json: serde_json::Value) -> SecretData {
    SecretData::from_json(&json.to_string()).unwrap()
}

const ODD: &[&str] = &[
    "sp ace/inner key",
    "pct%25/x",
    "hash#frag",
    "query?x=1&y=2",
    "plus+sign",
    "ключ/🔑",
    "trailing ",
    ".hidden/...",
    "colon:semi;eq=",
    "both",
    "both/child",
];

#[tokio::test]
async fn kv2_round_trip_with_odd_names_scan_and_walk() {
    let bao = Bao::dev();
    let c = client(&bao, DEV_ROOT_TOKEN);
    let mount = c.mount_info("secret").await.unwrap();
    assert_eq!(mount.kind, KvVersion::V2);
    assert_eq!(mount.path, "secret/");
    assert!(!mount.uuid.is_empty());

    for (i, p) in ODD.iter().enumerate() {
        let meta = c.write_version("secret/", p, &data(json!({"i": i, "big": 12345678901234567890u64})), 0).await.unwrap();
        assert_eq!(meta.version, 1, "{p}");
        c.write_version("secret/", p, &data(json!({"i": i, "v": 2})), 1).await.unwrap();
    }
    // Exact pass-through: the version read back is the JSON the server stores.
    match c.read_version("secret/", "plus+sign", 1).await.unwrap() {
        DataRead::Live(d, meta) => {
            assert_eq!(meta.version, 1);
            assert!(d.as_json().contains("\"i\":4"), "{}", d.as_json());
            assert!(format!("{d:?}").contains("redacted"));
        }
        other => panic!("{other:?}"),
    }

    let scanned = c.list_secrets(&mount).await.unwrap();
    let mut want: Vec<&str> = ODD.to_vec();
    want.sort();
    let got: Vec<&str> = scanned.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(got, want);
    assert!(scanned.iter().all(|s| s.metadata.as_ref().is_some_and(|m| m.current_version == 2)),
        "detailed-metadata scan returns metadata");
    let scan_lists = c.request_counts().lists;
    assert_eq!(scan_lists, 1, "one SCAN for the whole mount");

    // A token with list but no scan capability: the client falls back to a LIST walk.
    let token = bao.token_with_policy(
        "walker",
        r#"path "secret/metadata/*" { capabilities = ["read", "list"] }
           path "secret/metadata/" { capabilities = ["list"] }
           path "secret/detailed-metadata/*" { capabilities = ["list"] }
           path "secret/data/*" { capabilities = ["read"] }"#,
    );
    let limited = client(&bao, &token);
    let walked = limited.list_secrets(&mount).await.unwrap();
    let got: Vec<&str> = walked.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(got, want);
    assert!(walked.iter().all(|s| s.metadata.is_none()));
    let meta = limited.read_metadata("secret/", "ключ/🔑").await.unwrap().unwrap();
    assert_eq!(meta.current_version, 2);
    assert_eq!(meta.versions.len(), 2);
    assert!(meta.current_is_live_at(std::time::SystemTime::now()));
    // The second listing goes straight to the walk (remembered).
    let before = limited.request_counts().lists;
    limited.list_secrets(&mount).await.unwrap();
    assert_eq!(limited.request_counts().lists - before, 6, "root + 5 folders, no SCAN retry");
}

#[tokio::test]
async fn kv2_versions_deleted_destroyed_missing_and_cas() {
    let bao = Bao::dev();
    let c = client(&bao, DEV_ROOT_TOKEN);
    for v in 0..3u64 {
        c.write_version("secret/", "app/db", &data(json!({"v": v})), v).await.unwrap();
    }
    c.delete_versions("secret/", "app/db", &[1]).await.unwrap();
    c.destroy_versions("secret/", "app/db", &[2]).await.unwrap();
    assert!(matches!(c.read_version("secret/", "app/db", 1).await.unwrap(), DataRead::Deleted(m) if m.version == 1));
    assert!(matches!(c.read_version("secret/", "app/db", 2).await.unwrap(), DataRead::Destroyed(m) if m.version == 2));
    assert!(matches!(c.read_version("secret/", "app/db", 3).await.unwrap(), DataRead::Live(..)));
    assert!(matches!(c.read_version("secret/", "app/db", 9).await.unwrap(), DataRead::Missing));
    assert!(matches!(c.read_version("secret/", "nope", 1).await.unwrap(), DataRead::Missing));
    assert!(matches!(c.read_version("secret/", "app/db", 0).await, Err(VaultError::Config(_))), "never latest by accident");

    c.undelete_versions("secret/", "app/db", &[1]).await.unwrap();
    assert!(matches!(c.read_version("secret/", "app/db", 1).await.unwrap(), DataRead::Live(..)));
    let meta = c.read_metadata("secret/", "app/db").await.unwrap().unwrap();
    assert!(meta.versions[&2].destroyed);

    // CAS: a stale expectation is refused and typed.
    let err = c.write_version("secret/", "app/db", &data(json!({"x": 1})), 1).await.unwrap_err();
    assert!(matches!(err, VaultError::CasMismatch { .. }), "{err}");
    // Soft-delete latest makes the current version unreadable.
    c.soft_delete_latest("secret/", "app/db").await.unwrap();
    let meta = c.read_metadata("secret/", "app/db").await.unwrap().unwrap();
    assert!(!meta.current_is_live_at(std::time::SystemTime::now()));

    // Metadata settings round trip, then delete everything.
    let settings = MetadataSettings {
        max_versions: 7,
        cas_required: true,
        delete_version_after: "0s".into(),
        custom_metadata: [("owner".to_owned(), "team a".to_owned())].into(),
    };
    c.write_metadata("secret/", "app/db", &settings).await.unwrap();
    let meta = c.read_metadata("secret/", "app/db").await.unwrap().unwrap();
    assert_eq!(meta.max_versions, 7);
    assert!(meta.cas_required);
    assert_eq!(meta.custom_metadata.unwrap()["owner"], "team a");
    c.delete_metadata("secret/", "app/db").await.unwrap();
    assert!(c.read_metadata("secret/", "app/db").await.unwrap().is_none());
    c.delete_metadata("secret/", "app/db").await.unwrap(); // idempotent

    // `data: null` is a value, kept as such.
    c.write_version("secret/", "nullish", &data(serde_json::Value::Null), 0).await.unwrap();
    match c.read_latest("secret/", "nullish").await.unwrap() {
        DataRead::Live(d, _) => assert_eq!(d.as_json(), "null"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn kv1_round_trip_listing_and_empty_mounts() {
    let bao = Bao::dev();
    bao.enable_kv("kv1", 1);
    bao.enable_kv("empty2", 2);
    bao.enable_kv("empty1", 1);
    let c = client(&bao, DEV_ROOT_TOKEN);
    let m1 = c.mount_info("kv1/").await.unwrap();
    assert_eq!(m1.kind, KvVersion::V1);
    for p in ODD {
        c.write_v1("kv1/", p, &data(json!({"path": p}))).await.unwrap();
    }
    let listed = c.list_secrets(&m1).await.unwrap();
    assert_eq!(listed.len(), ODD.len());
    let v = c.read_v1("kv1/", "ключ/🔑").await.unwrap().unwrap();
    assert!(v.same_value(&data(json!({"path": "ключ/🔑"}))));
    c.delete_v1("kv1/", "ключ/🔑").await.unwrap();
    assert!(c.read_v1("kv1/", "ключ/🔑").await.unwrap().is_none());
    c.delete_v1("kv1/", "ключ/🔑").await.unwrap();

    for m in ["empty1", "empty2"] {
        let info = c.mount_info(m).await.unwrap();
        assert!(c.list_secrets(&info).await.unwrap().is_empty(), "{m} lists as empty");
    }
}

#[tokio::test]
async fn missing_mount_revoked_token_and_denied_policy() {
    let bao = Bao::dev();
    let root = client(&bao, DEV_ROOT_TOKEN);
    let err = root.mount_info("nomount").await.unwrap_err();
    assert!(matches!(err, VaultError::MountNotFound { .. }), "{err}");
    assert!(err.to_string().contains("nomount"));

    // A limited token cannot tell a missing mount from a denied one: 403.
    let token = bao.token_with_policy("only-secret", r#"path "secret/data/*" { capabilities = ["read"] }"#);
    let limited = client(&bao, &token);
    let err = limited.read_v1("nomount/", "x").await.unwrap_err();
    assert!(matches!(err, VaultError::PermissionDenied { .. }), "{err}");
    let err = limited.write_version("secret/", "x", &data(json!({})), 0).await.unwrap_err();
    assert!(matches!(err, VaultError::PermissionDenied { .. }), "{err}");
    assert!(!err.to_string().contains(&token), "token never in errors");
    assert!(!format!("{err:?}").contains(&token), "token never in Debug");
    assert!(!format!("{limited:?}").contains(&token));

    // Revoke the token: every request is now 403.
    bao.root("POST", "auth/token/revoke", Some(&json!({"token": token})));
    let err = limited.read_latest("secret/", "x").await.unwrap_err();
    assert!(matches!(err, VaultError::PermissionDenied { .. }), "{err}");
    assert!(!err.is_transient());
}

#[tokio::test]
async fn jwt_login_gets_a_working_token_and_refusals_name_mount_and_role() {
    let bao = Bao::dev();
    bao.enable_kv("kv1", 1);
    bao.root("PUT", "sys/policies/acl/kv1-read", Some(&json!({"policy": r#"path "kv1/*" { capabilities = ["read"] }"#})));
    let issuer = JwtIssuer::new();
    // Mounted under the Kubernetes auth method's usual path: the login request is the same.
    issuer.configure(&bao, "kubernetes", "vsync", &["kv1-read"], "3s", "6s");
    root_write_v1(&bao, "kv1/app", json!({"k": "v"}));

    let anonymous = client(&bao, "");
    let jwt = issuer.sign("system:serviceaccount:vsync:vsync", 60, json!({}));
    let login = anonymous.jwt_login("kubernetes/", "vsync", &jwt).await.unwrap();
    assert!(login.lease.renewable, "{:?}", login.lease);
    assert!(login.lease.ttl <= Duration::from_secs(3) && !login.lease.ttl.is_zero(), "{:?}", login.lease);
    let logged_in = client(&bao, "");
    logged_in.set_token(&login.token).unwrap();
    assert!(logged_in.read_v1("kv1/", "app").await.unwrap().is_some(), "the token carries the role's policy");
    assert!(logged_in.lookup_self().await.unwrap().ttl <= Duration::from_secs(3));

    let refused = |err: &VaultError, status: u16, needle: &str, jwt: &str| {
        let text = err.to_string();
        assert!(matches!(err, VaultError::LoginFailed { status: s, .. } if *s == status), "{text}");
        assert!(text.contains("auth/kubernetes") && (text.contains("`vsync`") || text.contains("`nobody`")), "{text}");
        assert!(text.contains(needle), "{needle}: {text}");
        assert!(!text.contains(jwt) && !format!("{err:?}").contains(jwt), "the JWT leaked: {text}");
        for part in jwt.split('.') {
            assert!(!text.contains(part), "a part of the JWT leaked: {text}");
        }
    };
    // Unknown role.
    let err = anonymous.jwt_login("kubernetes", "nobody", &jwt).await.unwrap_err();
    refused(&err, 400, "nobody", &jwt);
    // Expired (leeways are off), another key, another audience, not a JWT at all.
    let expired = issuer.sign("sa", 0, json!({"exp": 1_000_000_000}));
    refused(&anonymous.jwt_login("kubernetes", "vsync", &expired).await.unwrap_err(), 400, "expired", &expired);
    let foreign = JwtIssuer::new().sign("sa", 60, json!({}));
    refused(&anonymous.jwt_login("kubernetes", "vsync", &foreign).await.unwrap_err(), 400, "HTTP 400", &foreign);
    let wrong_aud = issuer.sign("sa", 60, json!({"aud": "someone-else"}));
    refused(&anonymous.jwt_login("kubernetes", "vsync", &wrong_aud).await.unwrap_err(), 400, "aud", &wrong_aud);
    let garbage = "not-a-jwt-at-all-but-a-long-secret-string";
    refused(&anonymous.jwt_login("kubernetes", "vsync", garbage).await.unwrap_err(), 400, "HTTP 400", garbage);

    // Nothing mounted there: 404 with a token, 403 without one (the hint says so).
    let err = client(&bao, DEV_ROOT_TOKEN).jwt_login("jwt", "vsync", &jwt).await.unwrap_err();
    assert!(matches!(err, VaultError::Config(_)), "{err}");
    assert!(err.to_string().contains("no auth method mounted at `auth/jwt`"), "{err}");
    let err = anonymous.jwt_login("jwt", "vsync", &jwt).await.unwrap_err();
    assert!(matches!(err, VaultError::LoginFailed { status: 403, .. }), "{err}");
    assert!(err.to_string().contains("no auth method is mounted at `auth/jwt`"), "{err}");
    assert!(!err.to_string().contains(&jwt));
}

fn root_write_v1(bao: &Bao, path: &str, value: serde_json::Value) {
    bao.root("POST", path, Some(&value));
}

#[tokio::test]
async fn sealed_server_is_typed_after_bounded_retries() {
    let bao = Bao::dev();
    let c = client(&bao, DEV_ROOT_TOKEN);
    c.write_version("secret/", "a", &data(json!({"a": 1})), 0).await.unwrap();
    bao.seal();
    let before = c.request_counts().data_reads;
    let err = c.read_latest("secret/", "a").await.unwrap_err();
    assert!(matches!(err, VaultError::Sealed { .. }), "{err}");
    assert!(err.is_transient());
    assert_eq!(c.request_counts().data_reads - before, 3, "retried up to max_attempts");
}

#[tokio::test]
async fn too_large_is_permanent_on_dev_413_and_raft_500() {
    let dev = Bao::dev();
    let c = client(&dev, DEV_ROOT_TOKEN);
    let big = format!("{{\"blob\":\"{}\"}}", "x".repeat(33 * 1024 * 1024));
    let before = c.request_counts().data_writes;
    let err = c.write_version("secret/", "big", &SecretData::from_json(&big).unwrap(), 0).await.unwrap_err();
    assert!(matches!(err, VaultError::TooLarge { status: 413, .. }), "{err}");
    assert_eq!(c.request_counts().data_writes - before, 1, "never retried");
    assert!(!err.to_string().contains("xxxx"), "the value is not in the error");

    let raft = Bao::raft();
    let c = client(&raft, &raft.root_token);
    let big = format!("{{\"blob\":\"{}\"}}", "y".repeat(1024 * 1024 + 10));
    let err = c.write_version("secret/", "big", &SecretData::from_json(&big).unwrap(), 0).await.unwrap_err();
    assert!(matches!(err, VaultError::TooLarge { status: 500, .. }), "{err}");
    // A normal write on the same server works.
    c.write_version("secret/", "small", &data(json!({"ok": true})), 0).await.unwrap();
}

#[tokio::test]
async fn rate_limit_honours_retry_after() {
    let bao = Bao::dev();
    bao.root("POST", "sys/quotas/config", Some(&json!({"enable_rate_limit_response_headers": true})));
    bao.root("POST", "sys/quotas/rate-limit/kvlimit", Some(&json!({"path": "secret/", "rate": 2, "interval": "1s"})));
    let mut cfg = VaultConfig::new(bao.addr(), Token::new(DEV_ROOT_TOKEN));
    cfg.retry = RetryPolicy { max_attempts: 1, ..fast_retry() };
    // Throttling is retried for as long as the back-pressure budget allows: none here.
    cfg.backpressure_budget = Duration::ZERO;
    let no_retry = VaultClient::new(cfg).unwrap();
    let mut limited = None;
    for _ in 0..10 {
        if let Err(e) = no_retry.read_latest("secret/", "x").await {
            limited = Some(e);
            break;
        }
    }
    match limited {
        Some(VaultError::RateLimited { retry_after, .. }) => assert!(retry_after.is_some(), "Retry-After parsed"),
        other => panic!("expected a 429, got {other:?}"),
    }
    // With retries, honouring Retry-After gets every request through.
    let mut cfg = VaultConfig::new(bao.addr(), Token::new(DEV_ROOT_TOKEN));
    cfg.retry = RetryPolicy { max_attempts: 5, base_delay: Duration::from_millis(50), max_delay: Duration::from_secs(2) };
    let patient = VaultClient::new(cfg).unwrap();
    for _ in 0..6 {
        patient.read_latest("secret/", "x").await.unwrap();
    }
    // Throttling is back-pressure, not failure: a client that retries nothing else still
    // waits the quota out, and counts what it met.
    let mut cfg = VaultConfig::new(bao.addr(), Token::new(DEV_ROOT_TOKEN));
    cfg.retry = RetryPolicy { max_attempts: 1, ..fast_retry() };
    cfg.concurrency = vsync_vault::concurrency::Concurrency::Adaptive { max: 64 };
    let throttled = VaultClient::new(cfg).unwrap();
    let reads: Vec<_> = (0..8).map(|_| throttled.read_latest("secret/", "x")).collect();
    for r in reads {
        r.await.unwrap();
    }
    let seen = throttled.concurrency();
    assert!(seen.throttled > 0 && seen.adaptive && seen.in_flight == 0, "{seen:?}");
}

#[tokio::test]
async fn tls_with_the_right_ca_works_and_a_wrong_ca_is_refused() {
    let a = Bao::dev_tls();
    let b = Bao::dev_tls();
    let good = client(&a, DEV_ROOT_TOKEN);
    assert_eq!(good.mount_info("secret").await.unwrap().kind, KvVersion::V2);

    let mut cfg = VaultConfig::new(a.addr(), Token::new(DEV_ROOT_TOKEN));
    cfg.ca_cert = b.ca_cert();
    cfg.retry = RetryPolicy { max_attempts: 1, ..fast_retry() };
    let wrong = VaultClient::new(cfg).unwrap();
    let err = wrong.mount_info("secret").await.unwrap_err();
    assert!(matches!(err, VaultError::Connection { .. }), "{err}");

    // No CA at all: the built-in roots do not know the dev CA either.
    let mut cfg = VaultConfig::new(a.addr(), Token::new(DEV_ROOT_TOKEN));
    cfg.retry = RetryPolicy { max_attempts: 1, ..fast_retry() };
    assert!(VaultClient::new(cfg).unwrap().mount_info("secret").await.is_err());

    // tls_skip_verify accepts it (and warns).
    let mut cfg = VaultConfig::new(a.addr(), Token::new(DEV_ROOT_TOKEN));
    cfg.tls_skip_verify = true;
    assert!(VaultClient::new(cfg).unwrap().mount_info("secret").await.is_ok());

    // An unreadable CA file is a config error naming the file.
    let mut cfg = VaultConfig::new(a.addr(), Token::new(DEV_ROOT_TOKEN));
    cfg.ca_cert = Some("/nonexistent/ca.pem".into());
    let err = VaultClient::new(cfg).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
}

#[tokio::test]
async fn refused_connection_is_a_transient_connection_error() {
    let port = vsync_test_harness::free_port_pair();
    let mut cfg = VaultConfig::new(format!("http://127.0.0.1:{port}"), Token::new("t"));
    cfg.retry = fast_retry();
    let c = VaultClient::new(cfg).unwrap();
    let err = c.read_latest("secret/", "x").await.unwrap_err();
    assert!(matches!(err, VaultError::Connection { .. }), "{err}");
    assert!(err.is_transient());
    assert_eq!(c.request_counts().data_reads, 3);
}

#[tokio::test]
async fn namespaces_are_sent_as_a_header() {
    let bao = Bao::dev();
    bao.root("POST", "sys/namespaces/team", None);
    let (status, body) = bao.http(
        "POST",
        "sys/mounts/kvt",
        Some(DEV_ROOT_TOKEN),
        Some(&json!({"type": "kv", "options": {"version": "2"}})),
    );
    assert_eq!(status, 204, "{body}");
    // The mount above is in the root namespace; create one inside `team` via the header.
    let mut cfg = VaultConfig::new(bao.addr(), Token::new(DEV_ROOT_TOKEN));
    cfg.namespace = Some("team".into());
    let team = VaultClient::new(cfg).unwrap();
    team.sys("POST", "sys/mounts/inner", Some(json!({"type": "kv", "options": {"version": "2"}})))
        .await
        .unwrap();
    team.write_version("inner/", "a", &data(json!({"n": 1})), 0).await.unwrap();
    assert_eq!(team.mount_info("inner").await.unwrap().kind, KvVersion::V2);
    // Not visible from the root namespace.
    let root = client(&bao, DEV_ROOT_TOKEN);
    assert!(root.mount_info("inner").await.is_err());
}

// ---------------------------------------------------------------------------------------------
// Strict reading of listings and 404s (issue 10, item 2): only KV's own "nothing here" answers
// mean empty or missing; any other answer fails the call instead of hiding keys. The malformed
// answers come from an HTTP proxy in front of the real server, so everything else is real.

/// A client that reaches `bao` through a fresh rewriting proxy.
fn proxied(bao: &Bao, token: &str) -> (HttpProxy, VaultClient) {
    let proxy = HttpProxy::start(bao.port);
    let mut cfg = VaultConfig::new(proxy.addr(), Token::new(token));
    cfg.retry = fast_retry();
    (proxy, VaultClient::new(cfg).unwrap())
}

/// A fresh client through an existing proxy (no remembered SCAN support, no pooled connection).
fn via(proxy: &HttpProxy, token: &str) -> VaultClient {
    let mut cfg = VaultConfig::new(proxy.addr(), Token::new(token));
    cfg.retry = fast_retry();
    VaultClient::new(cfg).unwrap()
}

/// Listing answers that are not KV's "empty": each must fail the listing.
const MALFORMED_LISTINGS: &[(u16, &str)] = &[
    (200, "{}"),
    (200, r#"{"data":null}"#),
    (200, r#"{"data":{"keys":["a",1]}}"#),
    (200, r#"{"data":{"keys":"a"}}"#),
    (200, r#"{"data":{"key_info":{}}}"#),
    (200, "not json"),
    (404, ""),
    (404, "{}"),
    (404, "not json"),
    (404, r#"{"errors":["no handler for route \"x\""]}"#),
    (404, r#"{"errors":["1 error occurred:\n\t* something else\n\n"]}"#),
    (404, r#"{"errors":[],"data":null}"#),
];

const WALKER_POLICY: &str = r#"path "secret/metadata/*" { capabilities = ["read", "list"] }
   path "secret/metadata/" { capabilities = ["list"] }
   path "kv1/*" { capabilities = ["read", "list"] }
   path "kv1/" { capabilities = ["list"] }"#;

fn seed_v1_and_v2(bao: &Bao) {
    bao.enable_kv("kv1", 1);
    for p in ["top", "app/db", "app/x/y"] {
        bao.root("POST", &format!("secret/data/{p}"), Some(&json!({"data": {"p": p}})));
        bao.root("POST", &format!("kv1/{p}"), Some(&json!({"p": p})));
    }
}

fn assert_listing_error(err: &VaultError) {
    assert!(
        matches!(err, VaultError::Decode { .. } | VaultError::UnexpectedNotFound { .. } | VaultError::MountNotFound { .. }),
        "typed listing error expected, got {err:?}"
    );
    assert!(!err.is_transient(), "{err}");
}

#[tokio::test]
async fn scan_answers_that_are_not_kv_empty_fail_the_listing() {
    let bao = Bao::dev();
    seed_v1_and_v2(&bao);
    let proxy = HttpProxy::start(bao.port);
    let mut wrong = Vec::new();
    for (mount, scan_path) in [("secret", "/v1/secret/detailed-metadata/"), ("kv1", "/v1/kv1/")] {
        for (status, body) in MALFORMED_LISTINGS {
            proxy.clear();
            proxy.respond("SCAN", scan_path, *status, body);
            let c = via(&proxy, DEV_ROOT_TOKEN);
            let info = c.mount_info(mount).await.unwrap();
            let before = proxy.rewritten();
            match c.list_secrets(&info).await {
                Ok(listed) => wrong.push(format!("{mount}: {status} {body:?} listed {} keys", listed.len())),
                Err(e) => {
                    assert_listing_error(&e);
                    assert!(e.to_string().contains("SCAN") || e.to_string().contains(mount), "{e}");
                }
            }
            assert_eq!(proxy.rewritten() - before, 1, "the rule answered the SCAN");
            // Failing is not "SCAN unsupported": no LIST walk was tried instead.
            if c.request_counts().lists != 1 {
                wrong.push(format!("{mount}: {status} {body:?} fell back to a LIST walk"));
            }
        }
    }
    assert!(wrong.is_empty(), "malformed SCAN answers read as a listing:\n{}", wrong.join("\n"));
    // With the rules off the same proxy lists everything.
    proxy.clear();
    let c = via(&proxy, DEV_ROOT_TOKEN);
    for mount in ["secret", "kv1"] {
        let info = c.mount_info(mount).await.unwrap();
        assert_eq!(c.list_secrets(&info).await.unwrap().len(), 3, "{mount}");
    }
}

#[tokio::test]
async fn list_walk_answers_that_are_not_kv_empty_fail_the_listing() {
    let bao = Bao::dev();
    seed_v1_and_v2(&bao);
    // No `scan` capability: the real server refuses SCAN with 403 and the client walks.
    let token = bao.token_with_policy("walker", WALKER_POLICY);
    let proxy = HttpProxy::start(bao.port);
    let mut wrong = Vec::new();
    let folders = [
        ("secret", "/v1/secret/metadata/"),
        ("secret", "/v1/secret/metadata/app/"),
        ("kv1", "/v1/kv1/"),
        ("kv1", "/v1/kv1/app/"),
    ];
    for (mount, folder) in folders {
        for (status, body) in MALFORMED_LISTINGS {
            proxy.clear();
            proxy.respond("LIST", folder, *status, body);
            let c = via(&proxy, &token);
            let info = c.mount_info(mount).await.unwrap();
            let before = proxy.rewritten();
            match c.list_secrets(&info).await {
                Ok(listed) => {
                    let paths: Vec<String> = listed.into_iter().map(|s| s.path).collect();
                    wrong.push(format!("LIST {folder}: {status} {body:?} listed {paths:?}"));
                }
                Err(e) => assert_listing_error(&e),
            }
            assert_eq!(proxy.rewritten() - before, 1, "the rule answered LIST {folder}");
        }
    }
    assert!(wrong.is_empty(), "malformed LIST answers read as a listing:\n{}", wrong.join("\n"));
    proxy.clear();
    let c = via(&proxy, &token);
    for mount in ["secret", "kv1"] {
        let info = c.mount_info(mount).await.unwrap();
        let paths: Vec<String> = c.list_secrets(&info).await.unwrap().into_iter().map(|s| s.path).collect();
        assert_eq!(paths, ["app/db", "app/x/y", "top"], "{mount}");
    }
}

#[tokio::test]
async fn empty_mounts_and_missing_folders_still_list_as_empty() {
    let bao = Bao::dev();
    seed_v1_and_v2(&bao);
    bao.enable_kv("e1", 1);
    bao.enable_kv("e2", 2);
    // What the real server answers, which the strict rule relies on (reference 1.2).
    for scan in ["e2/detailed-metadata/", "e1/", "secret/detailed-metadata/nope/", "kv1/nope/"] {
        let (status, body) = bao.http("SCAN", scan, Some(DEV_ROOT_TOKEN), None);
        assert_eq!((status, &body["data"]), (200, &json!({})), "SCAN {scan}: {body}");
    }
    for list in ["e2/metadata/", "e1/", "secret/metadata/nope/", "kv1/nope/"] {
        let (status, body) = bao.http("LIST", list, Some(DEV_ROOT_TOKEN), None);
        assert_eq!((status, body), (404, json!({"errors": []})), "LIST {list}");
    }
    let token = bao.token_with_policy(
        "walker-empty",
        r#"path "e1/*" { capabilities = ["list"] }
           path "e1/" { capabilities = ["list"] }
           path "e2/metadata/*" { capabilities = ["list"] }
           path "e2/metadata/" { capabilities = ["list"] }"#,
    );
    let (proxy, scanner) = proxied(&bao, DEV_ROOT_TOKEN);
    let walker = via(&proxy, &token);
    for m in ["e1", "e2"] {
        let info = scanner.mount_info(m).await.unwrap();
        assert!(scanner.list_secrets(&info).await.unwrap().is_empty(), "SCAN of empty {m}");
        assert!(walker.list_secrets(&info).await.unwrap().is_empty(), "walk of empty {m}");
    }
    assert!(walker.request_counts().lists >= 4, "the walker walked");

    // The other answers that mean "empty": SCAN 200 `data.keys: []` and 404 `{"errors":[]}`.
    let secret = scanner.mount_info("secret").await.unwrap();
    for (status, body) in [(200, r#"{"data":{"keys":[]}}"#), (200, r#"{"data":{}}"#), (404, r#"{"errors":[]}"#)] {
        proxy.clear();
        proxy.respond("SCAN", "/v1/secret/detailed-metadata/", status, body);
        let c = via(&proxy, DEV_ROOT_TOKEN);
        assert!(c.list_secrets(&secret).await.unwrap().is_empty(), "{status} {body}");
    }
    // A folder that vanishes between LIST levels (404 `{"errors":[]}`) is skipped by the walk.
    proxy.clear();
    proxy.respond("LIST", "/v1/secret/metadata/app/", 404, r#"{"errors":[]}"#);
    let walker = via(&proxy, &bao.token_with_policy("walker2", WALKER_POLICY));
    let paths: Vec<String> = walker.list_secrets(&secret).await.unwrap().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["top"]);
}

#[tokio::test]
async fn unsupported_scan_still_falls_back_to_the_list_walk() {
    let bao = Bao::dev();
    seed_v1_and_v2(&bao);
    // The real answers of a server that does not know SCAN on a path: an unknown method is
    // 405, a path without a handler in the engine 404 "unsupported path", a KV v2 path the
    // plugin does not know 404 with the "Invalid path for a versioned K/V" warning.
    let (status, unknown_method) = bao.http("FOO", "secret/metadata/", Some(DEV_ROOT_TOKEN), None);
    assert_eq!(status, 405, "{unknown_method}");
    let (status, unsupported_path) = bao.http("SCAN", "sys/mounts/", Some(DEV_ROOT_TOKEN), None);
    assert_eq!(status, 404, "{unsupported_path}");
    let (status, invalid_kv_path) = bao.http("SCAN", "secret/nosuch/", Some(DEV_ROOT_TOKEN), None);
    assert_eq!(status, 404, "{invalid_kv_path}");
    assert!(invalid_kv_path["warnings"][0].as_str().unwrap().contains("Invalid path"), "{invalid_kv_path}");

    let proxy = HttpProxy::start(bao.port);
    let mut wrong = Vec::new();
    for (status, body) in [(405, unknown_method), (404, unsupported_path), (404, invalid_kv_path)] {
        let body = body.to_string();
        proxy.clear();
        proxy.respond("SCAN", "/v1/secret/detailed-metadata/", status, &body);
        let c = via(&proxy, DEV_ROOT_TOKEN);
        let info = c.mount_info("secret").await.unwrap();
        match c.list_secrets(&info).await {
            Ok(listed) => {
                let paths: Vec<String> = listed.iter().map(|s| s.path.clone()).collect();
                if paths != ["app/db", "app/x/y", "top"] {
                    wrong.push(format!("{status} {body}: listed {paths:?}"));
                    continue;
                }
                assert!(listed.iter().all(|s| s.metadata.is_none()), "walked, not scanned");
            }
            Err(e) => {
                wrong.push(format!("{status} {body}: {e}"));
                continue;
            }
        }
        // Remembered: the next listing walks straight away.
        let scans = proxy.rewritten();
        c.list_secrets(&info).await.unwrap();
        assert_eq!(proxy.rewritten(), scans, "no second SCAN");
    }
    assert!(wrong.is_empty(), "SCAN-unsupported answers did not fall back to the walk:\n{}", wrong.join("\n"));
}

#[tokio::test]
async fn reads_are_missing_only_on_a_404_with_empty_errors() {
    let bao = Bao::dev();
    seed_v1_and_v2(&bao);
    let c = client(&bao, DEV_ROOT_TOKEN);
    bao.root("POST", "secret/data/app/db", Some(&json!({"data": {"v": 2}})));
    bao.root("POST", "secret/delete/app/db", Some(&json!({"versions": [1]})));
    // The real server: missing key, missing version and missing KV v1 value are exactly
    // 404 `{"errors":[]}`; a deleted version is a 404 with the version's metadata.
    for get in ["secret/metadata/nope", "secret/data/nope", "secret/data/app/db?version=9", "kv1/nope"] {
        let (status, body) = bao.http("GET", get, Some(DEV_ROOT_TOKEN), None);
        assert_eq!((status, body), (404, json!({"errors": []})), "GET {get}");
    }
    let (status, body) = bao.http("GET", "secret/data/app/db?version=1", Some(DEV_ROOT_TOKEN), None);
    assert_eq!(status, 404);
    assert_eq!(body["data"]["metadata"]["version"], 1, "{body}");
    assert!(c.read_metadata("secret/", "nope").await.unwrap().is_none());
    assert!(matches!(c.read_version("secret/", "nope", 1).await.unwrap(), DataRead::Missing));
    assert!(matches!(c.read_version("secret/", "app/db", 9).await.unwrap(), DataRead::Missing));
    assert!(matches!(c.read_version("secret/", "app/db", 1).await.unwrap(), DataRead::Deleted(m) if m.version == 1));
    assert!(matches!(c.read_latest("secret/", "nope").await.unwrap(), DataRead::Missing));
    assert!(c.read_v1("kv1/", "nope").await.unwrap().is_none());
    // A KV v1 read on a KV v2 mount: the real server answers 404 `data: null` with a warning.
    // That is a wrong request, not a missing value.
    let mut wrong = Vec::new();
    match c.read_v1("secret/", "app/db").await {
        Ok(v) => wrong.push(format!("read_v1 on a KV v2 mount (real 404 with a warning): {}", v.is_some())),
        Err(err) => {
            assert!(matches!(err, VaultError::UnexpectedNotFound { .. }), "{err:?}");
            assert!(err.to_string().contains("Invalid path"), "{err}");
        }
    }

    let (proxy, c) = proxied(&bao, DEV_ROOT_TOKEN);
    let no_handler = r#"{"errors":["no handler for route \"secret/metadata/app/db\". route entry not found."]}"#;
    for (status, body) in [(404, no_handler), (404, "{}"), (404, ""), (404, "not json"), (404, r#"{"errors":["x"]}"#)] {
        proxy.clear();
        proxy.respond("GET", "/v1/secret/metadata/app/db", status, body);
        proxy.respond("GET", "/v1/secret/data/app/db", status, body);
        proxy.respond("GET", "/v1/kv1/app/db", status, body);
        match c.read_metadata("secret/", "app/db").await {
            Ok(m) => wrong.push(format!("read_metadata {status} {body:?}: {m:?}")),
            Err(e) => assert_listing_error(&e),
        }
        match c.read_version("secret/", "app/db", 2).await {
            Ok(r) => wrong.push(format!("read_version {status} {body:?}: {r:?}")),
            Err(e) => assert_listing_error(&e),
        }
        match c.read_latest("secret/", "app/db").await {
            Ok(r) => wrong.push(format!("read_latest {status} {body:?}: {r:?}")),
            Err(e) => assert_listing_error(&e),
        }
        match c.read_v1("kv1/", "app/db").await {
            Ok(v) => wrong.push(format!("read_v1 {status} {body:?}: {}", v.is_some())),
            Err(e) => assert_listing_error(&e),
        }
    }
    assert!(wrong.is_empty(), "404s that are not `{{\"errors\":[]}}` read as missing:\n{}", wrong.join("\n"));
    // The one 404 that means missing, even for a key that exists behind the proxy.
    proxy.clear();
    proxy.respond("GET", "/v1/secret/metadata/app/db", 404, r#"{"errors":[]}"#);
    assert!(c.read_metadata("secret/", "app/db").await.unwrap().is_none());
    // A mount that vanished mid-scan names the mount.
    proxy.respond("GET", "/v1/secret/metadata/app/db", 404, no_handler);
    let err = c.read_metadata("secret/", "app/db").await.unwrap_err();
    assert!(matches!(&err, VaultError::MountNotFound { mount, .. } if mount == "secret/"), "{err:?}");
    proxy.clear();
    assert_eq!(c.read_metadata("secret/", "app/db").await.unwrap().unwrap().current_version, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_have_their_own_timeout_longer_than_a_request() {
    // A slow link (every chunk delayed 700 ms each way): a metadata read exceeds the 1 s
    // request timeout, while the mount's SCAN, bounded by the listing timeout, completes.
    let bao = Bao::dev();
    let direct = client(&bao, DEV_ROOT_TOKEN);
    direct.write_version("secret/", "app/db", &data(json!({"v": 1})), 0).await.unwrap();
    let proxy = vsync_test_harness::Proxy::start(bao.port);
    let mut cfg = VaultConfig::new(proxy.addr(), Token::new(DEV_ROOT_TOKEN));
    cfg.retry = RetryPolicy { max_attempts: 1, ..fast_retry() };
    cfg.request_timeout = Duration::from_secs(1);
    cfg.list_timeout = Duration::from_secs(30);
    let slow = VaultClient::new(cfg).unwrap();
    let info = slow.mount_info("secret/").await; // before the delay: sys/ calls are quick
    let info = info.unwrap();
    proxy.set_delay(Duration::from_millis(700));
    let read = slow.read_metadata("secret/", "app/db").await;
    assert!(matches!(read, Err(VaultError::Connection { .. })), "a read past the request timeout fails: {read:?}");
    let listed = slow.list_secrets(&info).await.unwrap();
    assert_eq!(listed.iter().map(|l| l.path.as_str()).collect::<Vec<_>>(), ["app/db"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_scan_streams_and_a_body_cut_off_midway_fails_the_listing() {
    // 3,000 keys over 30 folders: a detailed SCAN body of about 1.4 MB, decoded as it
    // arrives. The same answer cut off after 700 KB must fail the listing (never read as
    // "these are all the keys", which would be deletes everywhere).
    let bao = Bao::dev();
    let c = client(&bao, DEV_ROOT_TOKEN);
    let n = 3_000;
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in 0..8 {
        let c = c.clone();
        tasks.spawn(async move {
            for i in (chunk..n).step_by(8) {
                c.write_version("secret/", &format!("f{}/k{i}", i % 30), &data(json!({"i": i})), 0).await.unwrap();
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let mount = c.mount_info("secret/").await.unwrap();
    let mut seen = std::collections::HashSet::new();
    c.scan_secrets(&mount, |s| {
        assert!(s.metadata.as_ref().is_some_and(|m| m.current_version == 1), "{}", s.path);
        assert!(seen.insert(s.path), "each key once");
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(seen.len(), n);
    assert!(seen.contains("f7/k2977"));

    let proxy = vsync_test_harness::Proxy::start(bao.port);
    let mut cfg = VaultConfig::new(proxy.addr(), Token::new(DEV_ROOT_TOKEN));
    cfg.retry = fast_retry();
    let cut = VaultClient::new(cfg).unwrap();
    let mount = cut.mount_info("secret/").await.unwrap();
    proxy.cut_replies_after(700 * 1024);
    let mut handed = 0;
    let listed = cut
        .scan_secrets(&mount, |_| {
            handed += 1;
            Ok(())
        })
        .await;
    assert!(
        matches!(listed, Err(VaultError::Connection { .. }) | Err(VaultError::Decode { .. })),
        "a cut-off SCAN fails: {listed:?}"
    );
    assert!(handed > 0 && handed < n, "some keys were decoded before the cut ({handed})");
    proxy.cut_replies_after(0);
    // The consumer can stop a listing too; its error comes back as it was.
    let stopped = cut.scan_secrets(&mount, |_| Err(VaultError::Config("consumer full".into()))).await;
    assert!(matches!(&stopped, Err(VaultError::Config(m)) if m == "consumer full"), "{stopped:?}");
}

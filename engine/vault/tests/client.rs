//! The Vault client against real OpenBao servers: every operation and every error class is
//! provoked for real (no mocks).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::json;
use vsync_core::KvVersion;
use vsync_test_harness::{Bao, DEV_ROOT_TOKEN};
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

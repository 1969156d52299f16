//! Listings that could be cut short, against real OpenBao:
//! the LIST walk under an ACL `pagination_limit` (issue 18 item 1), servers that do not page
//! (through the rewriting proxy, as a real OpenBao always pages KV v2), and KV v2 metadata
//! without `current_version` or `versions` (item 10).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::json;
use vsync_core::KvVersion;
use vsync_test_harness::{Bao, DEV_ROOT_TOKEN, HttpProxy};
use vsync_vault::{DEFAULT_LIST_PAGE_SIZE, RetryPolicy, SecretData, Token, VaultClient, VaultConfig, VaultError};

fn client_at(address: String, token: &str, page_size: usize) -> VaultClient {
    let mut cfg = VaultConfig::new(address, Token::new(token));
    cfg.retry = RetryPolicy { max_attempts: 3, base_delay: Duration::from_millis(20), max_delay: Duration::from_millis(200) };
    cfg.list_page_size = page_size;
    VaultClient::new(cfg).unwrap()
}

fn client(bao: &Bao, token: &str, page_size: usize) -> VaultClient {
    client_at(bao.addr(), token, page_size)
}

fn data(json: serde_json::Value) -> SecretData {
    SecretData::from_json(&json.to_string()).unwrap()
}

/// Top-level keys: with `f/` and `both/` the top folder holds exactly 10 entries, so pages of
/// 10 and 5 end on a full page (the next one is OpenBao's 404 past the last key). The names
/// check that paging follows the server's byte order.
const TOP: &[&str] = &["both", "both/child", "sp ace", "ключ", "🔑", "plus+sign", "Z", "t", "~tilde"];

/// 35 keys: [`TOP`], `f/k00`..`f/k24` and `f/sub/x` (the folder `f/` holds 26 entries).
fn seed() -> Vec<String> {
    let mut all: Vec<String> = TOP.iter().map(|k| (*k).to_owned()).collect();
    all.extend((0..25).map(|i| format!("f/k{i:02}")));
    all.push("f/sub/x".to_owned());
    all.sort();
    all
}

async fn write_all(c: &VaultClient, mount: &str, kind: KvVersion) -> Vec<String> {
    let all = seed();
    for p in &all {
        match kind {
            KvVersion::V2 => {
                c.write_version(mount, p, &data(json!({"p": p})), 0).await.unwrap();
            }
            KvVersion::V1 => c.write_v1(mount, p, &data(json!({"p": p}))).await.unwrap(),
        }
    }
    all
}

const PAGED: &str = r#"path "secret/*" { capabilities = ["read","list"], pagination_limit = 10 }"#;

async fn paths(c: &VaultClient, mount: &str) -> Result<Vec<String>, VaultError> {
    let info = c.mount_info(mount).await?;
    Ok(c.list_secrets(&info).await?.into_iter().map(|s| s.path).collect())
}

#[tokio::test]
async fn kv2_walk_under_pagination_limit_pages_every_folder_to_the_end() {
    let bao = Bao::dev();
    let all = write_all(&client(&bao, DEV_ROOT_TOKEN, DEFAULT_LIST_PAGE_SIZE), "secret/", KvVersion::V2).await;
    let token = bao.token_with_policy("paged", PAGED);
    // What the server does (reference 3.1): a plain LIST is cut to 10 keys without a word.
    let (status, plain) = bao.http("LIST", "secret/metadata/f/", Some(&token), None);
    assert_eq!((status, plain["data"]["keys"].as_array().unwrap().len()), (200, 10), "{plain}");
    assert!(plain["warnings"].is_null(), "{plain}");

    for page_size in [10, 5, 3, 1] {
        let c = client(&bao, &token, page_size);
        assert_eq!(paths(&c, "secret").await.unwrap(), all, "page size {page_size}");
        if page_size == 5 {
            // SCAN (403) + top 5,5,404 + both/ 1 + f/ 5,5,5,5,5,1 + f/sub/ 1.
            assert_eq!(c.request_counts().lists, 12, "page size 5: each folder paged to its end");
        }
    }
}

#[tokio::test]
async fn kv2_walk_with_a_page_size_over_pagination_limit_fails_naming_pagination_limit() {
    let bao = Bao::dev();
    write_all(&client(&bao, DEV_ROOT_TOKEN, DEFAULT_LIST_PAGE_SIZE), "secret/", KvVersion::V2).await;
    let token = bao.token_with_policy("paged", PAGED);
    for page_size in [DEFAULT_LIST_PAGE_SIZE, 11] {
        let c = client(&bao, &token, page_size);
        let info = c.mount_info("secret").await.unwrap();
        let mut handed = 0;
        let err = c
            .scan_secrets(&info, |_| {
                handed += 1;
                Ok(())
            })
            .await
            .unwrap_err();
        assert!(
            matches!(&err, VaultError::PaginationLimited { mount, folder, page_size: p, .. }
                if mount == "secret/" && folder.is_empty() && *p == page_size),
            "{err:?}"
        );
        let text = err.to_string();
        for needle in ["pagination_limit", &format!("limit={page_size}"), "top folder", "`scan`", "secret/detailed-metadata/*"] {
            assert!(text.contains(needle), "`{needle}` not in: {text}");
        }
        assert_eq!(handed, 0, "nothing of a refused walk is handed on");
        assert!(!err.is_transient());
        assert!(matches!(c.list_secrets(&info).await, Err(VaultError::PaginationLimited { .. })));
    }

    // The limit on one folder only: the walk gets past the top folder, then fails on `f/`,
    // and the caller gets the error, not the keys listed before it.
    let token = bao.token_with_policy(
        "paged-f",
        r#"path "secret/metadata/*" { capabilities = ["read","list"] }
           path "secret/metadata/f/*" { capabilities = ["read","list"], pagination_limit = 10 }"#,
    );
    let c = client(&bao, &token, DEFAULT_LIST_PAGE_SIZE);
    let err = paths(&c, "secret").await.unwrap_err();
    assert!(matches!(&err, VaultError::PaginationLimited { folder, .. } if folder == "f/"), "{err:?}");
    assert!(err.to_string().contains("folder `f/`"), "{err}");

    // A token that may not LIST at all gets the ordinary permission error.
    let token = bao.token_with_policy("no-list", r#"path "secret/data/*" { capabilities = ["read"] }"#);
    let err = paths(&client(&bao, &token, DEFAULT_LIST_PAGE_SIZE), "secret").await.unwrap_err();
    assert!(matches!(err, VaultError::PermissionDenied { .. }), "{err:?}");
}

#[tokio::test]
async fn a_token_with_scan_lists_everything_under_pagination_limit() {
    let bao = Bao::dev();
    let all = write_all(&client(&bao, DEV_ROOT_TOKEN, DEFAULT_LIST_PAGE_SIZE), "secret/", KvVersion::V2).await;
    let token = bao.token_with_policy(
        "paged-scan",
        r#"path "secret/*" { capabilities = ["read","list","scan"], pagination_limit = 10 }"#,
    );
    let c = client(&bao, &token, DEFAULT_LIST_PAGE_SIZE);
    let info = c.mount_info("secret").await.unwrap();
    let listed = c.list_secrets(&info).await.unwrap();
    assert_eq!(listed.iter().map(|s| s.path.clone()).collect::<Vec<_>>(), all);
    assert!(listed.iter().all(|s| s.metadata.as_ref().is_some_and(|m| m.current_version == 1)), "SCAN of detailed-metadata");
    assert_eq!(c.request_counts().lists, 1, "one SCAN, no walk");
}

#[tokio::test]
async fn kv1_walk_under_pagination_limit_lists_every_key_unpaged() {
    let bao = Bao::dev();
    bao.enable_kv("kv1", 1);
    let all = write_all(&client(&bao, DEV_ROOT_TOKEN, DEFAULT_LIST_PAGE_SIZE), "kv1/", KvVersion::V1).await;
    let token = bao.token_with_policy("paged-kv1", r#"path "kv1/*" { capabilities = ["read","list"], pagination_limit = 10 }"#);
    // What the server does: KV v1 ignores the policy's limit and says so; a `limit` above the
    // policy's is refused even though KV v1 would ignore it.
    let (status, plain) = bao.http("LIST", "kv1/f/", Some(&token), None);
    assert_eq!((status, plain["data"]["keys"].as_array().unwrap().len()), (200, 26), "{plain}");
    assert!(plain["warnings"][0].as_str().unwrap().contains("ignored these unrecognized parameters"), "{plain}");
    let (status, _) = bao.http("LIST", "kv1/f/?limit=100", Some(&token), None);
    assert_eq!(status, 403);

    for page_size in [DEFAULT_LIST_PAGE_SIZE, 5] {
        let c = client(&bao, &token, page_size);
        assert_eq!(paths(&c, "kv1").await.unwrap(), all, "page size {page_size}");
        // SCAN (403) + one plain LIST per folder (top, both/, f/, f/sub/).
        assert_eq!(c.request_counts().lists, 5, "KV v1 folders are listed whole");
    }
}

#[tokio::test]
async fn a_server_that_ignores_limit_and_after_is_read_whole_or_refused() {
    let bao = Bao::dev();
    bao.enable_kv("kv1", 1);
    let root = client(&bao, DEV_ROOT_TOKEN, DEFAULT_LIST_PAGE_SIZE);
    let all = write_all(&root, "secret/", KvVersion::V2).await;
    write_all(&root, "kv1/", KvVersion::V1).await;
    // A real answer of an endpoint without pagination (KV v1): the whole folder, with the
    // framework's warning that HashiCorp Vault also sends for KV v2, which has no pagination.
    let (status, whole) = bao.http("LIST", "kv1/f/?limit=5&after=k03", Some(DEV_ROOT_TOKEN), None);
    assert_eq!(status, 200);
    assert_eq!(whole["warnings"], json!(["Endpoint ignored these unrecognized parameters: [after limit]"]));
    assert_eq!(whole["data"]["keys"].as_array().unwrap().len(), 26);
    let mut silent = whole.clone();
    silent["warnings"] = serde_json::Value::Null;
    let mut one_page = silent.clone();
    one_page["data"]["keys"] = json!(["k00", "k01", "k02", "k03", "k04"]);

    let proxy = HttpProxy::start(bao.port);
    let folder = "/v1/secret/metadata/f/";
    // Says it ignored the parameters, or silently sends more than a page: the whole folder,
    // asked for once.
    for body in [&whole, &silent] {
        proxy.clear();
        proxy.respond("LIST", folder, 200, &body.to_string());
        // No SCAN either, as on a server without it (Vault): the client walks.
        proxy.respond("SCAN", "/v1/secret/detailed-metadata/", 405, r#"{"errors":[]}"#);
        let c = client_at(proxy.addr(), DEV_ROOT_TOKEN, 5);
        let info = c.mount_info("secret").await.unwrap();
        let before = proxy.rewritten();
        let listed: Vec<String> = c.list_secrets(&info).await.unwrap().into_iter().map(|s| s.path).collect();
        assert_eq!(listed, all, "{body}");
        assert_eq!(proxy.rewritten() - before, 2, "one SCAN and one LIST of f/ answered by the rule: {body}");
    }
    // Silently sends the same full page whatever `after` says: an error after the second
    // page, never a loop and never a short folder.
    proxy.clear();
    proxy.respond("SCAN", "/v1/secret/detailed-metadata/", 405, r#"{"errors":[]}"#);
    proxy.respond("LIST", folder, 200, &one_page.to_string());
    let c = client_at(proxy.addr(), DEV_ROOT_TOKEN, 5);
    let info = c.mount_info("secret").await.unwrap();
    let before = proxy.rewritten();
    let err = c.list_secrets(&info).await.unwrap_err();
    assert!(matches!(&err, VaultError::PagingBroken { request, .. } if request.contains("secret/metadata/f/")), "{err:?}");
    assert!(err.to_string().contains("repeats or goes backwards"), "{err}");
    assert_eq!(proxy.rewritten() - before, 3, "SCAN, then two pages of f/");
}

#[tokio::test]
async fn metadata_without_current_version_or_versions_is_refused_naming_the_key() {
    let bao = Bao::dev();
    let root = client(&bao, DEV_ROOT_TOKEN, DEFAULT_LIST_PAGE_SIZE);
    let all = write_all(&root, "secret/", KvVersion::V2).await;
    // A key with metadata only: the real server sends `current_version: 0, versions: {}`.
    let settings = vsync_vault::MetadataSettings {
        max_versions: 0,
        cas_required: false,
        delete_version_after: "0s".into(),
        custom_metadata: Default::default(),
    };
    root.write_metadata("secret/", "meta-only", &settings).await.unwrap();
    let meta = root.read_metadata("secret/", "meta-only").await.unwrap().unwrap();
    assert_eq!((meta.current_version, meta.versions.len()), (0, 0));

    // A real detailed-metadata LIST: folders get `{}` in `key_info`, keys their metadata.
    let (status, detailed) = bao.http("LIST", "secret/detailed-metadata/", Some(DEV_ROOT_TOKEN), None);
    assert_eq!(status, 200);
    assert_eq!(detailed["data"]["key_info"]["f/"], json!({}), "{detailed}");
    assert_eq!(detailed["data"]["key_info"]["t"]["current_version"], 1, "{detailed}");

    // Served as the SCAN answer, it decodes: folders skipped, every key with its metadata.
    let proxy = HttpProxy::start(bao.port);
    let scan = "/v1/secret/detailed-metadata/";
    proxy.respond("SCAN", scan, 200, &detailed.to_string());
    let c = client_at(proxy.addr(), DEV_ROOT_TOKEN, DEFAULT_LIST_PAGE_SIZE);
    let info = c.mount_info("secret").await.unwrap();
    let listed = c.list_secrets(&info).await.unwrap();
    let top: Vec<&str> = listed.iter().map(|s| s.path.as_str()).collect();
    let mut want: Vec<&str> = all.iter().map(String::as_str).filter(|p| !p.contains('/')).collect();
    want.push("meta-only");
    want.sort();
    assert_eq!(top, want);
    assert!(listed.iter().all(|s| s.metadata.is_some()));

    // The same answer with a key's metadata `{}` or without one of the two fields: refused,
    // naming the key (never "no live version", a delete in latest mode).
    for (entry, missing) in [(json!({}), "current_version"), (json!({"current_version": 1}), "versions")] {
        let mut broken = detailed.clone();
        broken["data"]["key_info"]["t"] = entry.clone();
        proxy.clear();
        proxy.respond("SCAN", scan, 200, &broken.to_string());
        let err = c.list_secrets(&info).await.unwrap_err();
        assert!(matches!(err, VaultError::Decode { .. }), "{entry}: {err:?}");
        let text = err.to_string();
        assert!(text.contains("metadata of `t`") && text.contains(missing), "{entry}: {text}");

        // And read on its own.
        let body = json!({"data": entry});
        proxy.respond("GET", "/v1/secret/metadata/t", 200, &body.to_string());
        let err = c.read_metadata("secret/", "t").await.unwrap_err();
        assert!(matches!(err, VaultError::Decode { .. }), "{entry}: {err:?}");
        let text = err.to_string();
        assert!(text.contains("metadata of `t`") && text.contains(missing), "{entry}: {text}");
    }
    proxy.clear();
    assert_eq!(c.read_metadata("secret/", "t").await.unwrap().unwrap().current_version, 1);
}

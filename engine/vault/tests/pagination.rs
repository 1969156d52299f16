//! Listings under an ACL `pagination_limit`, against real OpenBao (reference/vault-kv.md 3.1).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::json;
use vsync_test_harness::{Bao, DEV_ROOT_TOKEN};
use vsync_vault::{RetryPolicy, Token, VaultClient, VaultConfig};

fn client(bao: &Bao, token: &str) -> VaultClient {
    let mut cfg = VaultConfig::new(bao.addr(), Token::new(token));
    cfg.retry = RetryPolicy { max_attempts: 3, base_delay: Duration::from_millis(20), max_delay: Duration::from_millis(200) };
    VaultClient::new(cfg).unwrap()
}

#[tokio::test]
async fn old_code_walk_under_pagination_limit() {
    let bao = Bao::dev();
    for i in 0..25 {
        bao.root("POST", &format!("secret/data/f/k{i:02}"), Some(&json!({"data": {"i": i}})));
    }
    let token = bao.token_with_policy("paged", r#"path "secret/*" { capabilities = ["read","list"], pagination_limit = 10 }"#);
    let c = client(&bao, &token);
    let mount = c.mount_info("secret").await.unwrap();
    match c.list_secrets(&mount).await {
        Ok(listed) => assert_eq!(listed.len(), 25, "a truncated listing was returned as complete"),
        Err(e) => assert!(e.to_string().contains("pagination_limit"), "{e}"),
    }
}

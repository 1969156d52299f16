//! Helpers shared by the engine's integration tests (real OpenBao dev servers).

#![allow(clippy::unwrap_used, dead_code)]

use std::time::Duration;

use vsync_core::OriginSpec;
use vsync_test_harness::{Bao, DEV_ROOT_TOKEN};
use vsync_vault::{SecretData, Token, VaultClient, VaultConfig};

/// A root client of a dev server.
pub fn client(bao: &Bao) -> VaultClient {
    VaultClient::new(VaultConfig::new(bao.addr(), Token::new(DEV_ROOT_TOKEN))).unwrap()
}

/// A secret value from JSON.
pub fn data(v: serde_json::Value) -> SecretData {
    SecretData::from_json(&v.to_string()).unwrap()
}

/// The origin role over `secret/`.
pub fn origin_spec() -> OriginSpec {
    OriginSpec {
        mounts: vec!["secret/".into()],
        interval: Duration::from_secs(60),
        timeout: Duration::from_secs(120),
        workers: 4,
        buckets: None,
    }
}

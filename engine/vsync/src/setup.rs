//! Turns configuration into runtime parts: Vault clients, state stores. The only place where
//! config types meet runtime types.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use vsync_config::{StateSettings, VaultSettings};
use vsync_state::FileStore;
use vsync_vault::{Token, VaultClient, VaultConfig};

/// Resolves the token source of a Vault side. `side` names it in errors ("origin", "destination eu").
fn token(side: &str, v: &VaultSettings) -> Result<Token> {
    if let Some(t) = &v.token {
        return Ok(Token::new(t.clone()));
    }
    if let Some(path) = &v.token_file {
        return Token::from_file(path).with_context(|| format!("{side} vault token"));
    }
    if let Some(var) = &v.token_env {
        let value = std::env::var(var)
            .with_context(|| format!("{side} vault: environment variable `{var}` (token_env) is not set"))?;
        if value.trim().is_empty() {
            bail!("{side} vault: environment variable `{var}` (token_env) is empty");
        }
        return Ok(Token::new(value));
    }
    if v.approle.is_some() {
        bail!("{side} vault: AppRole login is not built yet (issue 4); use token, token_file or token_env");
    }
    bail!("{side} vault: no token source configured")
}

/// Builds the Vault client of one side.
pub fn vault_client(side: &str, v: &VaultSettings) -> Result<VaultClient> {
    let mut cfg = VaultConfig::new(v.address.clone(), token(side, v)?);
    cfg.namespace = v.namespace.clone();
    cfg.ca_cert = v.ca_cert.clone();
    cfg.client_cert = v.client_cert.clone();
    cfg.client_key = v.client_key.clone();
    cfg.tls_skip_verify = v.tls_skip_verify;
    cfg.request_timeout = Duration::from_secs(60);
    VaultClient::new(cfg).with_context(|| format!("{side} vault at {}", v.address))
}

/// Opens the state store of one side.
pub fn file_store(side: &str, s: &StateSettings) -> Result<FileStore> {
    match s {
        StateSettings::File { path } => {
            FileStore::open(path).with_context(|| format!("{side} state store"))
        }
        StateSettings::Consul { .. } => {
            bail!("{side} state: the Consul backend is not built yet (issue 3); use backend = \"file\"")
        }
    }
}

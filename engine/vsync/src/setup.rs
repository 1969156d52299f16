//! Turns configuration into runtime parts: Vault clients, state stores. The only place where
//! config types meet runtime types.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use vsync_config::{StateSettings, VaultSettings};
use vsync_state::consul::{ConsulClient, ConsulConfig, ConsulToken};
use vsync_state::{ConsulStore, FileStore, StateStore};
use vsync_vault::{Token, TokenLease, VaultClient, VaultConfig};

use crate::runtime::Shutdown;
use crate::tokens::{self, Secret, TokenSource};

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
        // Filled in by the AppRole login (`vault_login`).
        return Ok(Token::new(""));
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

/// How a side gets its token (AppRole credentials are read here, never logged).
pub fn token_source(side: &str, v: &VaultSettings) -> Result<TokenSource> {
    let Some(a) = &v.approle else {
        return Ok(TokenSource::Static);
    };
    let secret_id = if let Some(s) = &a.secret_id {
        s.clone()
    } else if let Some(path) = &a.secret_id_file {
        std::fs::read_to_string(path)
            .with_context(|| format!("{side} vault: cannot read approle secret_id_file {}", path.display()))?
            .trim()
            .to_owned()
    } else if let Some(var) = &a.secret_id_env {
        std::env::var(var)
            .with_context(|| format!("{side} vault: environment variable `{var}` (approle secret_id_env) is not set"))?
            .trim()
            .to_owned()
    } else {
        bail!("{side} vault: approle needs secret_id, secret_id_file or secret_id_env");
    };
    if secret_id.is_empty() {
        bail!("{side} vault: the approle secret ID is empty");
    }
    Ok(TokenSource::AppRole {
        mount: a.mount.clone(),
        role_id: a.role_id.clone(),
        secret_id: Secret(secret_id),
    })
}

/// Builds a side's client and logs in when it uses AppRole.
pub async fn vault_login(side: &str, v: &VaultSettings) -> Result<(VaultClient, TokenSource, Option<TokenLease>)> {
    let client = vault_client(side, v)?;
    let source = token_source(side, v)?;
    let lease = tokens::login(&client, side, &source).await?;
    Ok((client, source, lease))
}

/// Builds a side's client, logs in if needed, and keeps its token valid for the life of the
/// process (a token that cannot be kept trips `shutdown` with a fatal error).
pub async fn connect(side: &str, v: &VaultSettings, shutdown: &Shutdown) -> Result<VaultClient> {
    let (client, source, lease) = vault_login(side, v).await?;
    tokens::spawn_keeper(side.to_owned(), client.clone(), source, lease, shutdown.clone());
    Ok(client)
}

/// Opens the state store of one side.
pub fn state_store(side: &str, s: &StateSettings) -> Result<StateStore> {
    match s {
        StateSettings::File { path } => Ok(StateStore::File(
            FileStore::open(path).with_context(|| format!("{side} state store"))?,
        )),
        StateSettings::Consul {
            address,
            prefix,
            token,
            token_file,
            token_env,
            datacenter,
            ca_cert,
            client_cert,
            client_key,
            buckets: _,
        } => {
            let mut cfg = ConsulConfig::new(address.clone());
            cfg.datacenter = datacenter.clone();
            cfg.token = if let Some(t) = token {
                Some(ConsulToken::new(t.clone()))
            } else if let Some(path) = token_file {
                let t = std::fs::read_to_string(path)
                    .with_context(|| format!("{side} state: cannot read token_file {}", path.display()))?;
                if t.trim().is_empty() {
                    bail!("{side} state: token_file {} is empty", path.display());
                }
                Some(ConsulToken::new(t))
            } else if let Some(var) = token_env {
                let t = std::env::var(var)
                    .with_context(|| format!("{side} state: environment variable `{var}` (token_env) is not set"))?;
                Some(ConsulToken::new(t))
            } else {
                None
            };
            if let Some(ca) = ca_cert {
                cfg.ca_cert_pem = Some(
                    std::fs::read(ca).with_context(|| format!("{side} state: cannot read ca_cert {}", ca.display()))?,
                );
            }
            match (client_cert, client_key) {
                (Some(c), Some(k)) => {
                    let mut pem = std::fs::read(c)
                        .with_context(|| format!("{side} state: cannot read client_cert {}", c.display()))?;
                    pem.push(b'\n');
                    pem.extend(
                        std::fs::read(k).with_context(|| format!("{side} state: cannot read client_key {}", k.display()))?,
                    );
                    cfg.client_identity_pem = Some(pem);
                }
                (None, None) => {}
                _ => bail!("{side} state: client_cert and client_key go together"),
            }
            let client = ConsulClient::new(cfg).with_context(|| format!("{side} state: consul at {address}"))?;
            Ok(StateStore::Consul(
                ConsulStore::new(client, prefix).with_context(|| format!("{side} state: prefix `{prefix}`"))?,
            ))
        }
    }
}

/// The origin's configured bucket count, if any (`buckets` in a Consul state block).
pub fn bucket_count(s: &StateSettings) -> Result<Option<u32>> {
    match s {
        StateSettings::Consul { buckets: Some(n), .. } => {
            if *n == 0 || *n > 1 << 20 {
                bail!("origin state: buckets = {n} is out of range (1 to 1048576)");
            }
            Ok(Some(*n))
        }
        _ => Ok(None),
    }
}

//! The composition root: turns the runtime settings the config converts to
//! (`vsync_config::Runtime`) into the runtime parts (Vault clients, logged in once; state
//! stores; `vsync_engine::parts`) that `vsync check` and the roles share. The only place where
//! config types meet runtime types; every decision about the file is made in `vsync-config`.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use vsync_config::{DestinationRuntime, Runtime, SecretRef, SecretSource, StoreSpec, VaultAuth, VaultSpec};
use vsync_engine::parts::{DestinationParts, Parts, VaultSide};
use vsync_engine::tokens::{self, JwtSource, Secret, TokenSource};
use vsync_state::consul::{ConsulClient, ConsulConfig, ConsulToken};
use vsync_state::{ConsulStore, FileStore, StateStore};
use vsync_vault::concurrency::Concurrency;
use vsync_vault::{Token, VaultClient, VaultConfig};

/// A text credential, read.
fn secret(s: &SecretRef) -> Result<String> {
    let value = s.resolve()?;
    Ok(value.text().with_context(|| format!("{}: the value is not UTF-8", s.key()))?.to_owned())
}

/// How a side gets its token, and the token to start with (empty until a login).
fn token_source(auth: &VaultAuth) -> Result<(Token, TokenSource)> {
    Ok(match auth {
        VaultAuth::Token(t) => (Token::new(secret(t)?), TokenSource::Static),
        VaultAuth::AppRole { mount, role_id, secret_id } => {
            let secret_id = Secret(secret(secret_id)?);
            (Token::new(""), TokenSource::AppRole { mount: mount.clone(), role_id: role_id.clone(), secret_id })
        }
        VaultAuth::Jwt { mount, role, jwt } => {
            // Read at each login (projected tokens rotate), by the engine.
            let source = match jwt.source() {
                SecretSource::File(path) => JwtSource::File(path.clone()),
                SecretSource::Env(var) => JwtSource::Env(var.clone()),
                SecretSource::Inline(_) => bail!("{}: a JWT is read from a file or a variable", jwt.key()),
            };
            (Token::new(""), TokenSource::Jwt { mount: mount.clone(), role: role.clone(), jwt: source })
        }
    })
}

/// Builds the Vault client of one side (`workers = "auto"` makes its requests in flight
/// adaptive, a fixed number leaves the role's tasks to bound them) and its token source.
fn vault_client(side: &str, v: &VaultSpec) -> Result<(VaultClient, TokenSource)> {
    let (token, source) = token_source(&v.auth).with_context(|| format!("{side} vault"))?;
    let mut cfg = VaultConfig::new(v.address.clone(), token);
    if v.adaptive {
        cfg.concurrency = Concurrency::Adaptive { max: vsync_core::AUTO_WORKERS_MAX };
    }
    cfg.namespace = v.namespace.clone();
    cfg.ca_cert = v.ca_cert.clone();
    cfg.client_cert = v.client_tls.as_ref().map(|(c, _)| c.clone());
    cfg.client_key = v.client_tls.as_ref().map(|(_, k)| k.clone());
    cfg.tls_skip_verify = v.tls_skip_verify;
    cfg.request_timeout = Duration::from_secs(60);
    let client = VaultClient::new(cfg).with_context(|| format!("{side} vault at {}", v.address))?;
    Ok((client, source))
}

/// A side's client, logged in (for the one-shot commands such as `policy`).
pub async fn login(side: &str, v: &VaultSpec) -> Result<VaultClient> {
    let (client, source) = vault_client(side, v)?;
    tokens::login(&client, side, &source).await.map_err(|f| anyhow::anyhow!(f.message))?;
    Ok(client)
}

/// Builds a side's client and logs in; see [`VaultSide::connect`] for `defer_unavailable`.
async fn connect(side: &str, v: &VaultSpec, defer_unavailable: bool) -> Result<VaultSide, String> {
    let (client, source) = vault_client(side, v).map_err(|e| format!("{e:#}"))?;
    VaultSide::connect(side, client, source, defer_unavailable).await.map_err(|f| f.message)
}

fn read_pem(side: &str, key: &str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{side} state: cannot read {key} {}", path.display()))
}

/// Opens the state store of one side.
pub fn state_store(side: &str, s: &StoreSpec) -> Result<StateStore> {
    let (address, prefix, token, datacenter, ca_cert, client_tls) = match s {
        StoreSpec::File { path } => {
            return Ok(StateStore::File(FileStore::open(path).with_context(|| format!("{side} state store"))?));
        }
        StoreSpec::Consul { address, prefix, token, datacenter, ca_cert, client_tls } => {
            (address, prefix, token, datacenter, ca_cert, client_tls)
        }
    };
    let mut cfg = ConsulConfig::new(address.clone());
    cfg.datacenter = datacenter.clone();
    cfg.token = match token {
        Some(t) => Some(ConsulToken::new(secret(t).with_context(|| format!("{side} state"))?)),
        None => None,
    };
    cfg.ca_cert_pem = ca_cert.as_deref().map(|ca| read_pem(side, "ca_cert", ca)).transpose()?;
    if let Some((cert, key)) = client_tls {
        let mut pem = read_pem(side, "client_cert", cert)?;
        pem.push(b'\n');
        pem.extend(read_pem(side, "client_key", key)?);
        cfg.client_identity_pem = Some(pem);
    }
    let client = ConsulClient::new(cfg).with_context(|| format!("{side} state: consul at {address}"))?;
    let store = ConsulStore::new(client, prefix).with_context(|| format!("{side} state: prefix `{prefix}`"))?;
    Ok(StateStore::Consul(store))
}

/// Builds the origin's parts and those of `destinations`: every Vault logged in once (a
/// destination that cannot be reached logs in later), every store opened. A part that could
/// not be built keeps its error.
pub async fn parts<'r>(rt: &'r Runtime, destinations: impl IntoIterator<Item = &'r DestinationRuntime>) -> Parts {
    let mut dests = Vec::new();
    for d in destinations {
        let side = d.side();
        dests.push(DestinationParts {
            spec: d.spec.clone(),
            vault: connect(&side, &d.vault, true).await,
            store: state_store(&side, &d.store).map_err(|e| format!("{e:#}")),
        });
    }
    Parts {
        origin_spec: rt.origin.spec.clone(),
        origin_vault: connect("origin", &rt.origin.vault, false).await,
        origin_store: state_store("origin", &rt.origin.store).map_err(|e| format!("{e:#}")),
        destinations: dests,
    }
}

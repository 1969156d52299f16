//! The composition root: turns the configuration into the runtime parts (Vault clients,
//! logged in once; state stores; specs; the plugin stacks) that `vsync check` and the roles
//! share. The only place where config types meet runtime types.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use vsync_config::{Config, Destination, StateSettings, VaultSettings, Workers};
use vsync_core::{DestinationSpec, OriginSpec};
use vsync_engine::Tripwire;
use vsync_engine::check;
use vsync_state::consul::{ConsulClient, ConsulConfig, ConsulToken};
use vsync_state::{ConsulStore, FileStore, StateStore};
use vsync_vault::concurrency::Concurrency;
use vsync_vault::{Token, TokenLease, VaultClient, VaultConfig};

use vsync_engine::tokens::{self, JwtSource, Secret, TokenSource};

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
    if v.approle.is_some() || v.jwt.is_some() {
        // Filled in by the login (`vault_login`).
        return Ok(Token::new(""));
    }
    bail!("{side} vault: no token source configured")
}

/// Builds the Vault client of one side; `workers = "auto"` makes its requests in flight
/// adaptive (`vsync_vault::concurrency`), a fixed number leaves the role's tasks to bound them.
pub fn vault_client(side: &str, v: &VaultSettings, workers: Workers) -> Result<VaultClient> {
    let mut cfg = VaultConfig::new(v.address.clone(), token(side, v)?);
    if workers.adaptive() {
        cfg.concurrency = Concurrency::Adaptive { max: vsync_core::AUTO_WORKERS_MAX };
    }
    cfg.namespace = v.namespace.clone();
    cfg.ca_cert = v.ca_cert.clone();
    cfg.client_cert = v.client_cert.clone();
    cfg.client_key = v.client_key.clone();
    cfg.tls_skip_verify = v.tls_skip_verify;
    cfg.request_timeout = Duration::from_secs(60);
    VaultClient::new(cfg).with_context(|| format!("{side} vault at {}", v.address))
}

/// How a side gets its token (AppRole credentials are read here, never logged; a JWT is read
/// at each login, since it rotates).
pub fn token_source(side: &str, v: &VaultSettings) -> Result<TokenSource> {
    if let Some(j) = &v.jwt {
        let jwt = match (&j.jwt_file, &j.jwt_env) {
            (Some(path), None) => JwtSource::File(path.clone()),
            (None, Some(var)) => JwtSource::Env(var.clone()),
            _ => bail!("{side} vault: jwt needs exactly one of jwt_file or jwt_env"),
        };
        return Ok(TokenSource::Jwt { mount: j.mount.clone(), role: j.role.clone(), jwt });
    }
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

/// Builds a side's client and logs in when it uses AppRole or JWT.
pub async fn vault_login(side: &str, v: &VaultSettings, workers: Workers) -> Result<(VaultClient, TokenSource, Option<TokenLease>)> {
    let client = vault_client(side, v, workers)?;
    let source = token_source(side, v)?;
    let lease = tokens::login(&client, side, &source).await.map_err(|f| anyhow::anyhow!(f.message))?;
    Ok((client, source, lease))
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

/// A built part, or its error as a finding's text.
fn part<T>(r: &Result<T>) -> Result<&T, String> {
    r.as_ref().map_err(|e| format!("{e:#}"))
}

/// One Vault side, logged in once; its token is kept valid once a role starts.
pub struct VaultSide {
    /// The client.
    pub client: VaultClient,
    source: TokenSource,
    lease: Option<TokenLease>,
    /// A destination whose login (AppRole, JWT) could not reach its Vault: why. It logs in
    /// when it comes back ([`VaultSide::login_later`]).
    pub login_pending: Option<String>,
}

impl VaultSide {
    /// Builds the client and logs in. With `defer_unavailable` (destinations), a login that
    /// cannot reach the server leaves the side with [`VaultSide::login_pending`] instead of
    /// failing: one region down never stops the others.
    async fn connect(side: &str, v: &VaultSettings, workers: Workers, defer_unavailable: bool) -> Result<Self> {
        let client = vault_client(side, v, workers)?;
        let source = token_source(side, v)?;
        match tokens::login(&client, side, &source).await {
            Ok(lease) => Ok(Self { client, source, lease, login_pending: None }),
            Err(f) if defer_unavailable && f.class == vsync_engine::FaultClass::Unavailable => {
                Ok(Self { client, source, lease: None, login_pending: Some(f.message) })
            }
            Err(f) => Err(anyhow::anyhow!(f.message)),
        }
    }

    /// Keeps the token valid for the life of the process: a token that cannot be kept trips
    /// `tripwire` with a fatal fault.
    pub fn keep_token(&self, side: &str, tripwire: &Tripwire) {
        tokens::spawn_keeper(side.to_owned(), self.client.clone(), self.source.clone(), self.lease, tripwire.clone());
    }

    /// What a side whose login was deferred runs when it is tried again: log in, then keep the
    /// token.
    pub fn login_later(&self, side: &str, tripwire: &Tripwire) -> impl Fn() -> vsync_engine::BoxFault + Send + Sync + 'static {
        let (client, source, side, tripwire) = (self.client.clone(), self.source.clone(), side.to_owned(), tripwire.clone());
        move || {
            let (client, source, side, tripwire) = (client.clone(), source.clone(), side.clone(), tripwire.clone());
            Box::pin(async move {
                let lease = tokens::login(&client, &side, &source).await?;
                tokens::spawn_keeper(side, client, source, lease, tripwire);
                Ok(())
            })
        }
    }
}

/// One destination's parts.
pub struct DestinationParts {
    /// Its runtime spec.
    pub spec: DestinationSpec,
    /// Its Vault, or why it could not be reached.
    pub vault: Result<VaultSide>,
    /// Its state store, or why it could not be opened.
    pub store: Result<StateStore>,
}

/// The parts that `vsync check` and the roles share: built once, so nothing logs in twice.
/// A part that could not be built keeps its error: `check` lists it, a role stops on it.
pub struct Parts {
    /// The origin's runtime spec.
    pub origin_spec: OriginSpec,
    /// The origin Vault.
    pub origin_vault: Result<VaultSide>,
    /// The origin's state store.
    pub origin_store: Result<StateStore>,
    /// The selected destinations.
    pub destinations: Vec<DestinationParts>,
}

impl Parts {
    /// Builds the origin's parts and those of `destinations`.
    pub async fn build<'c>(config: &'c Config, destinations: impl IntoIterator<Item = &'c Destination>) -> Parts {
        let mut dests = Vec::new();
        for d in destinations {
            let side = format!("destination {}", d.name);
            dests.push(DestinationParts {
                spec: d.spec(),
                vault: VaultSide::connect(&side, &d.vault, d.workers, true).await,
                store: state_store(&side, &d.state),
            });
        }
        Parts {
            origin_spec: config.origin_spec(),
            origin_vault: VaultSide::connect("origin", &config.origin.vault, config.origin.workers, false).await,
            origin_store: state_store("origin", &config.origin.state),
            destinations: dests,
        }
    }

    /// The start-up checks over these parts; `origin_writes` when the origin role runs here.
    pub async fn check(&self, origin_writes: bool) -> Vec<check::Finding> {
        let origin = check::OriginParts {
            vault: part(&self.origin_vault).map(|v: &VaultSide| &v.client),
            store: part(&self.origin_store),
            mounts: &self.origin_spec.mounts,
            writes: origin_writes,
        };
        let dests: Vec<check::DestinationParts<'_>> = self
            .destinations
            .iter()
            .map(|d| check::DestinationParts {
                name: &d.spec.name,
                vault: part(&d.vault).map(|v: &VaultSide| &v.client),
                store: part(&d.store),
                mounts: d.spec.mounts.clone(),
                exact: d.spec.versions == vsync_core::VersionsMode::All,
                login_pending: d.vault.as_ref().ok().and_then(|v| v.login_pending.clone()),
            })
            .collect();
        check::run(&origin, &dests).await
    }
}

impl DestinationParts {
    /// What this destination runs before its first cycle when it was unavailable at start-up
    /// (see [`vsync_engine::StartGate`]): the deferred login, if any, then its start-up
    /// checks. An unavailable server fails the attempt transiently; any other problem is fatal,
    /// as it would have been at start-up.
    pub fn start_gate(&self, origin: &VaultClient, origin_mounts: &[String], tripwire: &Tripwire) -> Option<vsync_engine::StartGate> {
        let (Ok(vault), Ok(store)) = (&self.vault, &self.store) else { return None };
        let side = format!("destination {}", self.spec.name);
        let login = vault.login_pending.as_ref().map(|_| std::sync::Arc::new(vault.login_later(&side, tripwire)));
        let logged_in = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(login.is_none()));
        let (client, store, origin, origin_mounts) = (vault.client.clone(), store.clone(), origin.clone(), origin_mounts.to_vec());
        let (name, mounts, exact) = (self.spec.name.clone(), self.spec.mounts.clone(), self.spec.versions == vsync_core::VersionsMode::All);
        Some(Box::new(move || {
            let (login, logged_in) = (login.clone(), logged_in.clone());
            let (client, store, origin, origin_mounts) = (client.clone(), store.clone(), origin.clone(), origin_mounts.clone());
            let (name, mounts) = (name.clone(), mounts.clone());
            Box::pin(async move {
                if let Some(login) = login.filter(|_| !logged_in.load(std::sync::atomic::Ordering::SeqCst)) {
                    login().await?;
                    logged_in.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                let kinds = check::origin_kinds(&origin, &origin_mounts).await;
                let parts = check::DestinationParts { name: &name, vault: Ok(&client), store: Ok(&store), mounts, exact, login_pending: None };
                let findings = check::destination(&parts, &kinds).await;
                if let Some(down) = findings.iter().find(|f| f.transient) {
                    return Err(vsync_engine::Fault::new(vsync_engine::FaultClass::Unavailable, format!("destination `{name}` is unavailable: {down}")));
                }
                let problems: Vec<String> = findings.iter().filter(|f| f.problem.is_some()).map(ToString::to_string).collect();
                if problems.is_empty() {
                    return Ok(());
                }
                Err(vsync_engine::Fault::fatal(
                    vsync_engine::FatalCause::StartupCheck,
                    format!("start-up checks of destination `{name}` failed:\n{}", problems.join("\n")),
                ))
            }) as vsync_engine::BoxFault
        }))
    }
}

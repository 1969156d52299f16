//! The parts a vsync process runs on, built once and shared by `vsync check` and the roles:
//! each Vault side logged in once ([`VaultSide`]), each side's state store, and the specs.
//! Over them: the start-up checks ([`Parts::check`]) and their verdict ([`startup_verdict`]),
//! the token keepers, and the deferred start of a destination that was unavailable at
//! start-up ([`DestinationParts::start_gate`]).
//!
//! A part that could not be built keeps its error as text: `vsync check` lists it, a role
//! stops on it. The binary builds the parts from the configuration; this module never sees
//! the file's schema.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use vsync_core::{DestinationSpec, OriginSpec, PathMapper, VersionsMode};
use vsync_state::StateStore;
use vsync_state::lock::LockOptions;
use vsync_vault::{TokenLease, VaultClient};

use crate::audit::{AuditFeed, AuditSettings};
use crate::check::{self, Finding};
use crate::destination::{Destination, share};
use crate::fault::{FatalCause, Fault, FaultClass};
use crate::progress::Progress;
use crate::roles::{BoxFault, Publisher, StartGate};
use crate::tokens::{self, TokenSource};
use crate::tripwire::Tripwire;

/// One Vault side, logged in once; its token is kept valid once a role starts.
#[derive(Debug)]
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
    /// Logs `client` in with `source`. With `defer_unavailable` (destinations), a login that
    /// cannot reach the server leaves the side with [`VaultSide::login_pending`] instead of
    /// failing: one region down never stops the others.
    pub async fn connect(side: &str, client: VaultClient, source: TokenSource, defer_unavailable: bool) -> Result<Self, Fault> {
        match tokens::login(&client, side, &source).await {
            Ok(lease) => Ok(Self { client, source, lease, login_pending: None }),
            Err(f) if defer_unavailable && f.class == FaultClass::Unavailable => {
                Ok(Self { client, source, lease: None, login_pending: Some(f.message) })
            }
            Err(f) => Err(f),
        }
    }

    /// Keeps the token valid for the life of the process: a token that cannot be kept trips
    /// `tripwire` with a fatal fault.
    pub fn keep_token(&self, side: &str, tripwire: &Tripwire) {
        tokens::spawn_keeper(side.to_owned(), self.client.clone(), self.source.clone(), self.lease, tripwire.clone());
    }

    /// What a side whose login was deferred runs when it is tried again: log in, then keep the
    /// token.
    pub fn login_later(&self, side: &str, tripwire: &Tripwire) -> impl Fn() -> BoxFault + Send + Sync + 'static {
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

/// A built part, or why it could not be built.
pub type Built<T> = Result<T, String>;

/// One destination's parts.
#[derive(Debug)]
pub struct DestinationParts {
    /// Its runtime spec.
    pub spec: DestinationSpec,
    /// Its Vault, or why it could not be reached.
    pub vault: Built<VaultSide>,
    /// Its state store, or why it could not be opened.
    pub store: Built<StateStore>,
}

/// The parts that `vsync check` and the roles share: built once, so nothing logs in twice.
#[derive(Debug)]
pub struct Parts {
    /// The origin's runtime spec.
    pub origin_spec: OriginSpec,
    /// The origin Vault.
    pub origin_vault: Built<VaultSide>,
    /// The origin's state store.
    pub origin_store: Built<StateStore>,
    /// The selected destinations.
    pub destinations: Vec<DestinationParts>,
}

/// A built part for the checks, or its error as a finding's text.
fn part<T>(r: &Built<T>) -> Result<&T, String> {
    r.as_ref().map_err(Clone::clone)
}

impl DestinationParts {
    /// The side's name: `destination NAME`.
    pub fn side(&self) -> String {
        format!("destination {}", self.spec.name)
    }

    fn checked(&self) -> check::DestinationParts<'_> {
        check::DestinationParts {
            name: &self.spec.name,
            vault: part(&self.vault).map(|v| &v.client),
            store: part(&self.store),
            mounts: self.spec.mounts.clone(),
            exact: self.spec.versions == VersionsMode::All,
            login_pending: self.vault.as_ref().ok().and_then(|v| v.login_pending.clone()),
        }
    }
}

impl Parts {
    /// The start-up checks over these parts; `origin_writes` when the origin role runs here.
    pub async fn check(&self, origin_writes: bool) -> Vec<Finding> {
        let origin = check::OriginParts {
            vault: part(&self.origin_vault).map(|v| &v.client),
            store: part(&self.origin_store),
            mounts: &self.origin_spec.mounts,
            writes: origin_writes,
        };
        let dests: Vec<check::DestinationParts<'_>> = self.destinations.iter().map(DestinationParts::checked).collect();
        check::run(&origin, &dests).await
    }

    /// Starts the token keepers of every side that is logged in, and returns the start gate of
    /// each destination in `unavailable` (by name): it logs in (if its login was deferred) and
    /// runs its checks before its first cycle. A deferred login keeps its token from the moment
    /// it succeeds.
    pub fn start(&self, origin: &VaultSide, unavailable: &BTreeSet<String>, tripwire: &Tripwire) -> HashMap<String, StartGate> {
        origin.keep_token("origin", tripwire);
        let mut gates = HashMap::new();
        for d in &self.destinations {
            let side = d.side();
            if unavailable.contains(&side)
                && let Some(gate) = d.start_gate(&origin.client, &self.origin_spec.mounts, tripwire)
            {
                gates.insert(d.spec.name.clone(), gate);
            }
            if let Some(v) = d.vault.as_ref().ok().filter(|v| v.login_pending.is_none()) {
                v.keep_token(&side, tripwire);
            }
        }
        gates
    }
}

/// How the roles' locks are taken: the lock timing, `--once` (a one-shot run waits at most
/// one cycle's timeout for a lock), and the shutdown future that ends a standby's wait.
pub struct Locking<'a, S> {
    /// Lock timing.
    pub options: &'a LockOptions,
    /// A one-shot run.
    pub once: bool,
    /// Shutdown.
    pub shutdown: &'a mut S,
}

impl<S> std::fmt::Debug for Locking<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Locking").field("options", self.options).field("once", &self.once).finish_non_exhaustive()
    }
}

/// A built part for a role; the binary has reported a part that could not be built already.
fn role_part<T>(part: &Built<T>) -> Result<&T, Fault> {
    part.as_ref().map_err(|e| Fault::fatal(FatalCause::Config, e.clone()))
}

impl Parts {
    /// The origin's writer: takes the origin side's lock (a standby waits here), then binds
    /// the audit feed (unless `once`): only the writer listens, a standby on the same host
    /// would otherwise hold the port the device reports to. `None`: stopped while waiting.
    pub async fn publisher<S: Future<Output = ()> + Unpin>(
        &self,
        digest_key: Option<Vec<u8>>,
        audit: Option<AuditSettings>,
        locking: &mut Locking<'_, S>,
    ) -> Result<Option<Publisher>, Fault> {
        let store = role_part(&self.origin_store)?;
        let limit = locking.once.then_some(self.origin_spec.timeout);
        let Some(lock) = crate::locks::take(store, crate::ORIGIN_SIDE, locking.options, limit, locking.shutdown).await? else {
            return Ok(None);
        };
        let audit = match audit.filter(|_| !locking.once) {
            Some(settings) => Some(
                AuditFeed::bind_with(settings)
                    .await
                    .map_err(|e| Fault::fatal(FatalCause::Config, format!("origin.audit_listen: {e}")))?,
            ),
            None => None,
        };
        Ok(Some(Publisher { spec: self.origin_spec.clone(), lock, digest_key, audit }))
    }

    /// Each destination's role, its side's lock taken in turn (`mappers` in the order of the
    /// destinations). `None`: stopped while waiting; every lock held, `publisher`'s too, is
    /// then released so the standbys take over at once.
    pub async fn destinations<S: Future<Output = ()> + Unpin>(
        &self,
        publisher: Option<Publisher>,
        mappers: Vec<Option<Box<dyn PathMapper>>>,
        digest_key: Option<Arc<Vec<u8>>>,
        progress: &dyn Fn() -> Arc<dyn Progress>,
        locking: &mut Locking<'_, S>,
    ) -> Result<Option<(Option<Publisher>, Vec<Destination>)>, Fault> {
        let mut out: Vec<Destination> = Vec::new();
        for (d, mapper) in self.destinations.iter().zip(mappers) {
            let (vault, store) = (role_part(&d.vault)?, role_part(&d.store)?);
            let limit = locking.once.then_some(d.spec.timeout);
            let side = crate::side_name(&d.spec.name);
            let Some(lock) = crate::locks::take(store, &side, locking.options, limit, locking.shutdown).await? else {
                for l in publisher.map(|p| p.lock).into_iter().chain(out.into_iter().map(|d| d.lock)) {
                    l.release().await;
                }
                return Ok(None);
            };
            out.push(Destination {
                spec: d.spec.clone(),
                vault: vault.client.clone(),
                store: store.clone(),
                lock,
                mapper: mapper.map(share),
                digest_key: digest_key.clone(),
                progress: Some(progress()),
                clock: vsync_core::clock::system_clock(),
            });
        }
        Ok(Some((publisher, out)))
    }
}

/// The verdict of the start-up checks of a role: a fatal fault listing every problem that is
/// not transient; otherwise the sides (`destination NAME`) that are unreachable or sealed,
/// each logged: they start when they are back, the others start now.
pub fn startup_verdict(findings: &[Finding]) -> Result<BTreeSet<String>, Fault> {
    let problems: Vec<String> = findings.iter().filter(|f| f.problem.is_some() && !f.transient).map(ToString::to_string).collect();
    if !problems.is_empty() {
        return Err(Fault::fatal(
            FatalCause::StartupCheck,
            format!("start-up checks failed (run `vsync check` for the full report):\n{}", problems.join("\n")),
        ));
    }
    let mut unavailable = BTreeSet::new();
    for f in findings.iter().filter(|f| f.transient) {
        tracing::error!("{f}; this destination is retried on its own schedule, the other sides start now");
        unavailable.insert(f.side.clone());
    }
    tracing::info!(checks = findings.len(), unavailable = unavailable.len(), "start-up checks passed");
    Ok(unavailable)
}

impl DestinationParts {
    /// What this destination runs before its first cycle when it was unavailable at start-up
    /// (see [`StartGate`]): the deferred login, if any, then its start-up checks. An
    /// unavailable server fails the attempt transiently; any other problem is fatal, as it
    /// would have been at start-up.
    pub fn start_gate(&self, origin: &VaultClient, origin_mounts: &[String], tripwire: &Tripwire) -> Option<StartGate> {
        let (Ok(vault), Ok(store)) = (&self.vault, &self.store) else { return None };
        let side = self.side();
        let login = vault.login_pending.as_ref().map(|_| Arc::new(vault.login_later(&side, tripwire)));
        let logged_in = Arc::new(AtomicBool::new(login.is_none()));
        let (client, store, origin, origin_mounts) = (vault.client.clone(), store.clone(), origin.clone(), origin_mounts.to_vec());
        let (name, mounts, exact) = (self.spec.name.clone(), self.spec.mounts.clone(), self.spec.versions == VersionsMode::All);
        Some(Box::new(move || {
            let (login, logged_in) = (login.clone(), logged_in.clone());
            let (client, store, origin, origin_mounts) = (client.clone(), store.clone(), origin.clone(), origin_mounts.clone());
            let (name, mounts) = (name.clone(), mounts.clone());
            Box::pin(async move {
                if let Some(login) = login.filter(|_| !logged_in.load(Ordering::SeqCst)) {
                    login().await?;
                    logged_in.store(true, Ordering::SeqCst);
                }
                let kinds = check::origin_kinds(&origin, &origin_mounts).await;
                let parts = check::DestinationParts { name: &name, vault: Ok(&client), store: Ok(&store), mounts, exact, login_pending: None };
                gate_verdict(&name, &check::destination(&parts, &kinds).await)
            }) as BoxFault
        }))
    }
}

/// A start gate's verdict on a destination's checks: unavailable (transient), failed (fatal)
/// or passed.
fn gate_verdict(name: &str, findings: &[Finding]) -> Result<(), Fault> {
    if let Some(down) = findings.iter().find(|f| f.transient) {
        return Err(Fault::new(FaultClass::Unavailable, format!("destination `{name}` is unavailable: {down}")));
    }
    let problems: Vec<String> = findings.iter().filter(|f| f.problem.is_some()).map(ToString::to_string).collect();
    if problems.is_empty() {
        return Ok(());
    }
    Err(Fault::fatal(
        FatalCause::StartupCheck,
        format!("start-up checks of destination `{name}` failed:\n{}", problems.join("\n")),
    ))
}

//! `vsync-vault-fake`: an in-memory Vault (OpenBao 2.7.2 KV v1 and KV v2) that answers the
//! requests of [`vsync_vault::VaultClient`] through its [`Transport`] seam.
//!
//! The fake is deterministic: no threads, no randomness, no wall clock (time comes from the
//! clock it is given; ids and mount UUIDs from counters). It answers with the status codes,
//! headers and JSON bodies that a real OpenBao 2.7.2 sends, and the contract suite
//! (`tests/contract.rs`) pins every behaviour against a real `bao` server.
//! Faults are injected with [`FakeVault::set_fault_hook`] and [`FakeVault::set_sealed`].
//! See README.md for what is covered and the known deviations.

mod error;
mod kv2;
mod listing;
mod router;
mod time;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::StatusCode;
use vsync_vault::transport::{Exchange, Request, Response, Transport, TransportError};

pub use error::FakeTransportError;

use crate::kv2::Kv2;
use crate::time::rfc3339;

/// The clock the fake reads for every timestamp and every deletion-time judgement.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// Consulted before each request; `Some` injects a fault instead of (or after) serving it.
pub type FaultHook = Arc<dyn Fn(&RequestView) -> Option<Injected> + Send + Sync>;

/// What a [`FaultHook`] sees of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestView {
    /// `GET`, `POST`, `LIST`, `SCAN`, `DELETE`, ...
    pub method: String,
    /// The API path after `/v1/`, percent-decoded.
    pub api_path: String,
    /// Whether the request may change state (`POST`, `PUT`, `PATCH`, `DELETE`).
    pub is_write: bool,
}

/// What a non-root token's policy allows. Every accepted token may read, write, list and
/// delete on every KV mount; this sets the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenPolicy {
    /// The policy's `pagination_limit` (see [`FakeVault::set_pagination_limit`]).
    pub pagination_limit: Option<usize>,
    /// The `scan` capability: without it SCAN (and `?scan=true`) is refused with 403.
    pub scan: bool,
}

impl TokenPolicy {
    /// No limit, SCAN allowed.
    pub fn full() -> Self {
        Self { pagination_limit: None, scan: true }
    }
}

/// A fault to inject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Injected {
    /// No answer ([`TransportError`]); nothing applied.
    Connection,
    /// An error answer (429 quota, 500, 503 standby, ...) with `{"errors":[message]}` and an
    /// optional `Retry-After`; nothing applied.
    Status {
        /// HTTP status.
        status: u16,
        /// `Retry-After` in seconds.
        retry_after: Option<u64>,
        /// The error text.
        message: String,
    },
    /// The request is applied, then its answer is lost ([`TransportError`]).
    LostAnswer,
}

/// One KV v2 key's full state (for KV v1: `current_version` 0, no versions, `v1_data` set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyState {
    /// Highest version written (0: metadata only, or KV v1).
    pub current_version: u64,
    /// Oldest version kept (0 until something was pruned).
    pub oldest_version: u64,
    /// The key's `max_versions` (0: mount default).
    pub max_versions: u64,
    /// The key's `cas_required`.
    pub cas_required: bool,
    /// The key's `delete_version_after` as OpenBao prints it (`"0s"`, `"1h0m0s"`).
    pub delete_version_after: String,
    /// `custom_metadata`; `None` when never set (or set empty).
    pub custom_metadata: Option<BTreeMap<String, String>>,
    /// Every kept version.
    pub versions: BTreeMap<u64, VersionState>,
    /// A KV v1 value.
    pub v1_data: Option<serde_json::Value>,
}

/// One kept version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionState {
    /// The data; `None` once destroyed.
    pub data: Option<serde_json::Value>,
    /// RFC 3339 creation time.
    pub created_time: String,
    /// RFC 3339 deletion time (possibly in the future), `""` when none.
    pub deletion_time: String,
    /// Destroyed flag.
    pub destroyed: bool,
}

/// A KV mount.
#[derive(Debug, Clone)]
pub(crate) struct Mount {
    pub version: u8,
    pub uuid: String,
    pub accessor: String,
    pub kv2: Kv2,
    pub kv1: BTreeMap<String, serde_json::Value>,
}

/// Everything behind the lock.
pub(crate) struct Inner {
    pub clock: Clock,
    pub sealed: bool,
    pub hook: Option<FaultHook>,
    /// Mounts by path (`secret/`, `team/kv/`).
    pub mounts: BTreeMap<String, Mount>,
    /// Accepted tokens and what their policies allow (`root`: everything, no limit).
    pub tokens: BTreeMap<String, TokenPolicy>,
    pub requests: u64,
    /// Counter for request ids and mount UUIDs.
    pub next_id: u64,
}

impl Inner {
    pub(crate) fn now(&self) -> SystemTime {
        (self.clock)()
    }

    pub(crate) fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

/// An in-memory Vault. Clones share one server.
#[derive(Clone)]
pub struct FakeVault {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for FakeVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("FakeVault")
            .field("mounts", &inner.mounts.keys().collect::<Vec<_>>())
            .field("sealed", &inner.sealed)
            .field("requests", &inner.requests)
            .finish_non_exhaustive()
    }
}

impl FakeVault {
    /// An unsealed server with no mounts whose root token `root` is accepted.
    pub fn new(clock: Arc<dyn Fn() -> SystemTime + Send + Sync>) -> Self {
        let inner = Inner {
            clock,
            sealed: false,
            hook: None,
            mounts: BTreeMap::new(),
            tokens: BTreeMap::from([("root".to_owned(), TokenPolicy::full())]),
            requests: 0,
            next_id: 0,
        };
        Self { inner: Arc::new(Mutex::new(inner)) }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Enables a KV mount (`"secret/"`, version 1 or 2); an existing mount there is replaced
    /// (new UUID, no keys), as a disable and enable would.
    pub fn enable_kv(&self, mount: &str, version: u8) {
        let mut inner = self.lock();
        router::enable(&mut inner, mount, version);
    }

    /// The transport a [`vsync_vault::VaultClient`] sends its requests through
    /// (`VaultClient::with_transport`).
    pub fn transport(&self) -> Arc<dyn Transport> {
        Arc::new(self.clone())
    }

    /// Seals or unseals: while sealed every request is answered 503 `Vault is sealed` (and
    /// `sys/seal-status` says `sealed: true`).
    pub fn set_sealed(&self, sealed: bool) {
        self.lock().sealed = sealed;
    }

    /// Installs (or removes) the hook consulted before each request.
    pub fn set_fault_hook(&self, hook: Option<FaultHook>) {
        self.lock().hook = hook;
    }

    /// Accepts `token` with a policy whose `pagination_limit` is `limit`: a plain KV v2 LIST
    /// answers with the first `limit` entries, a `limit` above it is refused (403), SCAN is
    /// not limited, KV v1 ignores it with a warning.
    pub fn set_pagination_limit(&self, token: &str, limit: usize) {
        self.set_token_policy(token, TokenPolicy { pagination_limit: Some(limit), scan: true });
    }

    /// Accepts `token` with full rights and no pagination limit.
    pub fn add_token(&self, token: &str) {
        self.set_token_policy(token, TokenPolicy::full());
    }

    /// Accepts `token` with `policy` (for example without `scan`, so the client walks with
    /// paged LIST requests).
    pub fn set_token_policy(&self, token: &str, policy: TokenPolicy) {
        self.lock().tokens.insert(token.to_owned(), policy);
    }

    /// Disables a mount (its keys are gone; enabling it again gives a new UUID).
    pub fn disable(&self, mount: &str) {
        self.lock().mounts.remove(&router::normalize_mount(mount));
    }

    /// Revokes `token` (later requests with it get 403 `permission denied`).
    pub fn revoke_token(&self, token: &str) {
        self.lock().tokens.remove(token);
    }

    /// The full state of `mount` (every key, every kept version, data included), for
    /// invariants. Empty for a mount that does not exist.
    pub fn snapshot(&self, mount: &str) -> BTreeMap<String, KeyState> {
        let inner = self.lock();
        let Some(m) = inner.mounts.get(&router::normalize_mount(mount)) else {
            return BTreeMap::new();
        };
        if m.version == 1 {
            return m.kv1.iter().map(|(k, v)| (k.clone(), v1_state(v))).collect();
        }
        m.kv2.keys.iter().map(|(path, key)| (path.clone(), v2_state(key))).collect()
    }

    /// Requests received so far (faulted ones included).
    pub fn request_count(&self) -> u64 {
        self.lock().requests
    }

    /// Serves one request (the [`Transport`] implementation).
    fn serve(&self, request: &Request<'_>) -> Result<Response, TransportError> {
        let (view, hook) = {
            let mut inner = self.lock();
            inner.requests += 1;
            (router::view(request), inner.hook.clone())
        };
        // The hook runs unlocked: it may call back into the fake.
        let injected = hook.and_then(|h| h(&view));
        match injected {
            Some(Injected::Connection) => Err(TransportError::new(FakeTransportError::Connection)),
            Some(Injected::Status { status, retry_after, message }) => {
                Ok(respond(router::Reply::error_with(status, vec![message], retry_after)))
            }
            Some(Injected::LostAnswer) => {
                let _ = router::handle(&mut self.lock(), request);
                Err(TransportError::new(FakeTransportError::LostAnswer))
            }
            None => Ok(respond(router::handle(&mut self.lock(), request))),
        }
    }
}

impl Transport for FakeVault {
    fn send<'a>(&'a self, request: Request<'a>) -> Exchange<'a> {
        let result = self.serve(&request);
        Box::pin(std::future::ready(result))
    }
}

fn v1_state(value: &serde_json::Value) -> KeyState {
    KeyState {
        current_version: 0,
        oldest_version: 0,
        max_versions: 0,
        cas_required: false,
        delete_version_after: "0s".into(),
        custom_metadata: None,
        versions: BTreeMap::new(),
        v1_data: Some(value.clone()),
    }
}

fn v2_state(key: &kv2::Key) -> KeyState {
    let versions = key
        .versions
        .iter()
        .map(|(n, v)| {
            let state = VersionState {
                data: v.data.clone(),
                created_time: rfc3339(v.created),
                deletion_time: v.deletion.map(rfc3339).unwrap_or_default(),
                destroyed: v.destroyed,
            };
            (*n, state)
        })
        .collect();
    KeyState {
        current_version: key.current_version,
        oldest_version: key.oldest_version,
        max_versions: key.max_versions,
        cas_required: key.cas_required,
        delete_version_after: time::go_duration(key.delete_version_after),
        custom_metadata: key.custom_metadata.clone(),
        versions,
        v1_data: None,
    }
}

/// Turns a reply into a buffered HTTP answer.
fn respond(reply: router::Reply) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(reqwest::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(reqwest::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(secs) = reply.retry_after {
        headers.insert(reqwest::header::RETRY_AFTER, HeaderValue::from(secs));
    }
    let body = reply.body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    Response::buffered(status, headers, body)
}

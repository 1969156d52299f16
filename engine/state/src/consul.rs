//! A thin async client for the Consul KV subset vsync needs (pinned by the contract suite in
//! `tests/consul-emulator`):
//! single-key reads (plain and blocking), key listing, CAS writes and deletes, `/v1/txn`, and
//! the sessions and locks behind one writer per side (create, renew, destroy; `?acquire`,
//! `?release`; txn `check-session`).
//!
//! Written by hand because the published crates get presence flags, CAS deletes, 404 indexes or
//! binary values wrong. The rules it follows:
//! - flags are sent only to mean "true" (Consul tests `recurse`, `keys`, ... by presence);
//! - a 404 is not an error and keeps its `X-Consul-Index` (so a caller can wait for a key);
//! - values are bytes (`"Value": null` is empty), never forced through UTF-8;
//! - keys are validated and percent-encoded per segment; redirects are never followed;
//! - a failed CAS is `Ok(false)` (PUT/DELETE) or [`TxnOutcome::RolledBack`] (txn), not an error;
//! - transient failures (429, 500, 503, transport) are retried a bounded number of times with
//!   jittered backoff; long polls get an HTTP timeout above `wait * 17/16`;
//! - the ACL token goes in the `X-Consul-Token` header and never into an error or a log line.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Portable `/v1/txn` operation limit (64 before Consul 1.14, 128 since).
pub const TXN_MAX_OPS: usize = 64;
/// Consul's default request body and value size limit (`kv_max_value_size`, `txn_max_req_len`).
pub const MAX_VALUE_SIZE: usize = 512 * 1024;

/// Characters escaped inside one key segment (everything but unreserved URL characters).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// A Consul KV failure. Every variant names the operation and key; none carries the token.
#[derive(Debug, Error)]
pub enum ConsulError {
    /// Bad client configuration (address, CA, certificate).
    #[error("consul: {0}")]
    Config(String),
    /// A key Consul would reject or redirect.
    #[error("consul key `{key}`: {reason}")]
    InvalidKey {
        /// The key.
        key: String,
        /// Why.
        reason: &'static str,
    },
    /// The connection failed or timed out (after retries).
    #[error("consul {op} `{key}` at {address}: {message}")]
    Transport {
        /// Operation.
        op: &'static str,
        /// Key or prefix.
        key: String,
        /// Server address.
        address: String,
        /// Transport error.
        message: String,
    },
    /// The token lacks the permission, or is unknown (403).
    #[error("consul {op} `{key}`: permission denied ({message}); check the ACL token's key policy")]
    Forbidden {
        /// Operation.
        op: &'static str,
        /// Key or prefix.
        key: String,
        /// Consul's message.
        message: String,
    },
    /// A value, body or operation count over a server limit (413).
    #[error("consul {op} `{key}`: over a server size limit ({message})")]
    TooLarge {
        /// Operation.
        op: &'static str,
        /// Key or prefix.
        key: String,
        /// Consul's message.
        message: String,
    },
    /// Any other unexpected status (after retries for the transient ones).
    #[error("consul {op} `{key}`: HTTP {status}: {message}")]
    Status {
        /// Operation.
        op: &'static str,
        /// Key or prefix.
        key: String,
        /// HTTP status.
        status: u16,
        /// Body excerpt.
        message: String,
    },
    /// A response that does not parse.
    #[error("consul {op} `{key}`: unexpected response: {message}")]
    Decode {
        /// Operation.
        op: &'static str,
        /// Key or prefix.
        key: String,
        /// Parser message.
        message: String,
    },
}

impl ConsulError {
    /// Whether retrying later may help (server busy, no leader, network), as opposed to a
    /// configuration or permission problem.
    pub fn is_transient(&self) -> bool {
        match self {
            ConsulError::Transport { .. } => true,
            ConsulError::Status { status, .. } => matches!(status, 429 | 500 | 502 | 503 | 504),
            _ => false,
        }
    }
}

type Result<T, E = ConsulError> = std::result::Result<T, E>;

/// The ACL token; never printed.
#[derive(Clone)]
pub struct ConsulToken(String);

impl ConsulToken {
    /// Wraps a token (surrounding whitespace, e.g. a file's trailing newline, is dropped).
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into().trim().to_owned())
    }
}

impl ConsulToken {
    /// The `X-Consul-Token` header value, marked sensitive: the HTTP stack then never prints
    /// it (a request's or a header map's `Debug` shows `Sensitive`) and HTTP/2 never puts it in
    /// its header compression table.
    fn header_value(&self) -> Result<reqwest::header::HeaderValue> {
        let mut value = reqwest::header::HeaderValue::from_str(&self.0).map_err(|_| {
            // The error would not show the token either, but say only what is wrong.
            ConsulError::Config("the ACL token holds characters an HTTP header cannot carry".into())
        })?;
        value.set_sensitive(true);
        Ok(value)
    }
}

impl fmt::Debug for ConsulToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ConsulToken(<redacted>)")
    }
}

/// How to reach Consul.
#[derive(Debug, Clone, Default)]
pub struct ConsulConfig {
    /// `host:port`, `http://host:port` or `https://host:port`.
    pub address: String,
    /// ACL token, if any.
    pub token: Option<ConsulToken>,
    /// Datacenter to pin (`?dc=`); the agent's own when absent.
    pub datacenter: Option<String>,
    /// CA bundle (PEM bytes) replacing the system roots.
    pub ca_cert_pem: Option<Vec<u8>>,
    /// Client certificate and key (PEM bytes, concatenated) for mTLS.
    pub client_identity_pem: Option<Vec<u8>>,
    /// Timeout of ordinary (non-blocking) requests.
    pub request_timeout: Duration,
    /// Attempts for transient failures (at least 1).
    pub attempts: u32,
}

impl ConsulConfig {
    /// Defaults for an address: 30 s requests, 4 attempts.
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            request_timeout: Duration::from_secs(30),
            attempts: 4,
            ..Default::default()
        }
    }
}

/// One KV entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Key.
    pub key: String,
    /// Value bytes (empty for `"Value": null`).
    pub value: Vec<u8>,
    /// Opaque flags.
    pub flags: u64,
    /// Index at which the key was created.
    pub create_index: u64,
    /// Index of the last change (used for CAS).
    pub modify_index: u64,
    /// How many times a session newly acquired the key's lock.
    pub lock_index: u64,
    /// The session holding the key's lock, if any.
    pub session: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireEntry {
    key: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    flags: u64,
    #[serde(default)]
    create_index: u64,
    #[serde(default)]
    modify_index: u64,
    #[serde(default)]
    lock_index: u64,
    #[serde(default)]
    session: Option<String>,
}

impl WireEntry {
    fn into_entry(self, op: &'static str) -> Result<Entry> {
        let value = match self.value {
            None => Vec::new(),
            Some(v) => B64.decode(v.as_bytes()).map_err(|e| ConsulError::Decode {
                op,
                key: self.key.clone(),
                message: format!("value is not base64: {e}"),
            })?,
        };
        Ok(Entry {
            key: self.key,
            value,
            flags: self.flags,
            create_index: self.create_index,
            modify_index: self.modify_index,
            lock_index: self.lock_index,
            session: self.session.filter(|s| !s.is_empty()),
        })
    }
}

/// A read's result with the index to block on next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read<T> {
    /// The data (`None` for a 404).
    pub data: T,
    /// `X-Consul-Index` (0 when the server sent none).
    pub index: u64,
}

/// One `/v1/txn` KV operation (the verbs vsync uses).
#[derive(Debug, Clone)]
pub enum TxnOp {
    /// Upsert.
    Set {
        /// Key.
        key: String,
        /// Value.
        value: Vec<u8>,
    },
    /// Write if `ModifyIndex == index` (0: only if absent).
    Cas {
        /// Key.
        key: String,
        /// Value.
        value: Vec<u8>,
        /// Expected index.
        index: u64,
    },
    /// Read (fails the txn if missing).
    Get {
        /// Key.
        key: String,
    },
    /// Fail the txn unless the key's `ModifyIndex == index`.
    CheckIndex {
        /// Key.
        key: String,
        /// Expected index.
        index: u64,
    },
    /// Delete (idempotent).
    Delete {
        /// Key.
        key: String,
    },
    /// Delete if `ModifyIndex == index` (a missing key succeeds).
    DeleteCas {
        /// Key.
        key: String,
        /// Expected index.
        index: u64,
    },
    /// Fail the txn unless `session` holds the key's lock.
    CheckSession {
        /// Key.
        key: String,
        /// Session ID.
        session: String,
    },
}

impl TxnOp {
    fn key(&self) -> &str {
        match self {
            TxnOp::Set { key, .. }
            | TxnOp::Cas { key, .. }
            | TxnOp::Get { key }
            | TxnOp::CheckIndex { key, .. }
            | TxnOp::Delete { key }
            | TxnOp::DeleteCas { key, .. }
            | TxnOp::CheckSession { key, .. } => key,
        }
    }

    /// Bytes this op adds to a txn body (base64 inflates values by 4/3).
    pub fn body_cost(&self) -> usize {
        let value = match self {
            TxnOp::Set { value, .. } | TxnOp::Cas { value, .. } => value.len().div_ceil(3) * 4,
            _ => 0,
        };
        let session = match self {
            TxnOp::CheckSession { session, .. } => session.len(),
            _ => 0,
        };
        value + session + self.key().len() + 96
    }

    fn wire(&self) -> WireOp<'_> {
        let (verb, key, value, index) = match self {
            TxnOp::Set { key, value } => ("set", key, Some(B64.encode(value)), None),
            TxnOp::Cas { key, value, index } => ("cas", key, Some(B64.encode(value)), Some(*index)),
            TxnOp::Get { key } => ("get", key, None, None),
            TxnOp::CheckIndex { key, index } => ("check-index", key, None, Some(*index)),
            TxnOp::Delete { key } => ("delete", key, None, None),
            TxnOp::DeleteCas { key, index } => ("delete-cas", key, None, Some(*index)),
            TxnOp::CheckSession { key, .. } => ("check-session", key, None, None),
        };
        let session = match self {
            TxnOp::CheckSession { session, .. } => Some(session.as_str()),
            _ => None,
        };
        WireOp {
            kv: WireKvOp { verb, key, value, index, session },
        }
    }
}

#[derive(Serialize)]
struct WireOp<'a> {
    #[serde(rename = "KV")]
    kv: WireKvOp<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct WireKvOp<'a> {
    verb: &'static str,
    key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<&'a str>,
}

/// A session to create: a TTL session with no health checks (only the TTL, or a destroy, ends
/// it) whose locks are released, not deleted, when it ends.
#[derive(Debug, Clone)]
pub struct SessionSpec {
    /// Human-readable name (who holds it; shown by `consul` tools).
    pub name: String,
    /// TTL: Consul accepts 10 s to 86400 s and may invalidate up to 2 x TTL after the last
    /// renewal, never before the TTL.
    pub ttl: Duration,
    /// After the session ends, its locks cannot be taken for this long (Consul: at most 60 s).
    pub lock_delay: Duration,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireSessionCreated {
    #[serde(rename = "ID")]
    id: String,
}

/// A txn's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOutcome {
    /// Applied; results for every non-delete op (by key, not position: deletes have none).
    Committed(Vec<Entry>),
    /// Rolled back (409): every failing op, as `(op index, message)`.
    RolledBack(Vec<(usize, String)>),
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireTxnResponse {
    #[serde(default)]
    results: Option<Vec<WireTxnResult>>,
    #[serde(default)]
    errors: Option<Vec<WireTxnError>>,
}

#[derive(Deserialize)]
struct WireTxnResult {
    #[serde(rename = "KV")]
    kv: Option<WireEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireTxnError {
    op_index: usize,
    what: String,
}

/// The Consul KV client. Cheap to clone (shares one connection pool).
#[derive(Debug, Clone)]
pub struct ConsulClient {
    http: reqwest::Client,
    base: String,
    /// The ACL token as a sensitive header value (never printed, not even by `Debug`).
    token: Option<reqwest::header::HeaderValue>,
    datacenter: Option<String>,
    request_timeout: Duration,
    attempts: u32,
    outcomes: Arc<RequestOutcomes>,
}

/// Attempts sent to Consul by outcome (each retry counts), shared by clones; for metrics.
#[derive(Debug, Default)]
pub struct RequestOutcomes {
    ok: AtomicU64,
    error: AtomicU64,
    transport: AtomicU64,
}

impl RequestOutcomes {
    /// `(outcome, count)` for `ok` (200, 404 and 409: answers the client expects), `error`
    /// (any other status) and `transport` (no answer).
    pub fn snapshot(&self) -> [(&'static str, u64); 3] {
        [
            ("ok", self.ok.load(Ordering::Relaxed)),
            ("error", self.error.load(Ordering::Relaxed)),
            ("transport", self.transport.load(Ordering::Relaxed)),
        ]
    }
}

/// Checks a key the way vsync uses keys: no leading `/`, no empty, `.` or `..` segments (a
/// trailing `/` is allowed for prefixes), no surrounding spaces, no control characters.
pub fn validate_key(key: &str, prefix_ok: bool) -> Result<()> {
    let bad = |reason| {
        Err(ConsulError::InvalidKey {
            key: key.to_owned(),
            reason,
        })
    };
    if key.is_empty() {
        return bad("empty key");
    }
    if key.starts_with('/') {
        return bad("a key may not start with `/`");
    }
    if key.trim() != key {
        return bad("a key may not start or end with spaces");
    }
    if key.chars().any(char::is_control) {
        return bad("a key may not contain control characters");
    }
    let body = if prefix_ok { key.strip_suffix('/').unwrap_or(key) } else { key };
    if body.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return bad("a key may not have empty, `.` or `..` segments (Consul redirects or rejects them)");
    }
    Ok(())
}

fn encode_key(key: &str) -> String {
    key.split('/')
        .map(|s| utf8_percent_encode(s, SEGMENT).to_string())
        .collect::<Vec<_>>()
        .join("/")
}

fn header_index(resp: &reqwest::Response) -> u64 {
    resp.headers()
        .get("X-Consul-Index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn go_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

/// A Go duration for session settings: whole seconds as `15s` (as Consul shows them), else ms.
fn go_setting(d: Duration) -> String {
    if d.subsec_millis() == 0 { format!("{}s", d.as_secs()) } else { format!("{}ms", d.as_millis()) }
}

impl ConsulClient {
    /// Builds a client. Fails on a malformed address or unusable TLS material.
    pub fn new(cfg: ConsulConfig) -> Result<Self> {
        let address = cfg.address.trim().trim_end_matches('/');
        let base = if address.starts_with("http://") || address.starts_with("https://") {
            address.to_owned()
        } else if address.contains("://") {
            return Err(ConsulError::Config(format!(
                "address `{address}`: only http:// and https:// are supported"
            )));
        } else {
            format!("http://{address}")
        };
        url::Url::parse(&base).map_err(|e| ConsulError::Config(format!("address `{address}`: {e}")))?;
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(60));
        if let Some(pem) = &cfg.ca_cert_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| ConsulError::Config(format!("ca_cert is not a PEM certificate: {e}")))?;
            if certs.is_empty() {
                return Err(ConsulError::Config("ca_cert holds no certificate".into()));
            }
            builder = builder.tls_built_in_root_certs(false);
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        if let Some(pem) = &cfg.client_identity_pem {
            let identity = reqwest::Identity::from_pem(pem)
                .map_err(|e| ConsulError::Config(format!("client_cert/client_key are not a usable PEM pair: {e}")))?;
            builder = builder.identity(identity);
        }
        let http = builder
            .build()
            .map_err(|e| ConsulError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            http,
            base,
            token: cfg.token.as_ref().map(ConsulToken::header_value).transpose()?,
            datacenter: cfg.datacenter,
            request_timeout: cfg.request_timeout,
            attempts: cfg.attempts.max(1),
            outcomes: Arc::default(),
        })
    }

    /// The server address (for messages).
    pub fn address(&self) -> &str {
        &self.base
    }

    /// Attempts so far by outcome, shared by clones (for metrics).
    pub fn request_outcomes(&self) -> [(&'static str, u64); 3] {
        self.outcomes.snapshot()
    }

    /// Identifies the counters behind [`ConsulClient::request_outcomes`]: equal for clones.
    pub fn counters_id(&self) -> usize {
        Arc::as_ptr(&self.outcomes) as usize
    }

    /// One attempt's request: URL, query (with the pinned datacenter), token header, body.
    fn request(
        &self,
        method: &Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Vec<u8>>,
        timeout: Duration,
    ) -> reqwest::RequestBuilder {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .timeout(timeout);
        let mut q: Vec<(&str, String)> = query.to_vec();
        if let Some(dc) = &self.datacenter {
            q.push(("dc", dc.clone()));
        }
        if !q.is_empty() {
            req = req.query(&q);
        }
        if let Some(t) = &self.token {
            // Built once, marked sensitive (see `ConsulToken::header_value`).
            req = req.header("X-Consul-Token", t.clone());
        }
        if let Some(b) = body {
            req = req.body(b.clone());
        }
        req
    }

    /// Sends one request with retries for transient failures; returns status, index and body.
    // The arguments are one request's parts; a struct for a single private call site adds noise.
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        op: &'static str,
        key: &str,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<(StatusCode, u64, Vec<u8>)> {
        let mut last: Option<ConsulError> = None;
        for attempt in 0..self.attempts {
            if attempt > 0 {
                let base = 200u64 << (attempt - 1).min(5);
                tokio::time::sleep(Duration::from_millis(base + fastrand::u64(0..=base))).await;
            }
            let req = self.request(&method, path, query, body.as_ref(), timeout);
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    self.outcomes.transport.fetch_add(1, Ordering::Relaxed);
                    last = Some(ConsulError::Transport {
                        op,
                        key: key.to_owned(),
                        address: self.base.clone(),
                        // The URL holds no token (it travels in a header), so the message is safe.
                        message: e.to_string(),
                    });
                    continue;
                }
            };
            let status = resp.status();
            let expected = matches!(status.as_u16(), 200 | 404 | 409);
            (if expected { &self.outcomes.ok } else { &self.outcomes.error }).fetch_add(1, Ordering::Relaxed);
            let index = header_index(&resp);
            let bytes = match resp.bytes().await {
                Ok(b) => b.to_vec(),
                Err(e) => {
                    last = Some(ConsulError::Transport {
                        op,
                        key: key.to_owned(),
                        address: self.base.clone(),
                        message: format!("reading the response: {e}"),
                    });
                    continue;
                }
            };
            let message = || String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).trim().to_owned();
            match status.as_u16() {
                200 | 404 | 409 => return Ok((status, index, bytes)),
                403 => {
                    return Err(ConsulError::Forbidden {
                        op,
                        key: key.to_owned(),
                        message: message(),
                    });
                }
                413 => {
                    return Err(ConsulError::TooLarge {
                        op,
                        key: key.to_owned(),
                        message: message(),
                    });
                }
                s => {
                    let err = ConsulError::Status {
                        op,
                        key: key.to_owned(),
                        status: s,
                        message: message(),
                    };
                    if !err.is_transient() {
                        return Err(err);
                    }
                    last = Some(err);
                }
            }
        }
        Err(last.unwrap_or_else(|| ConsulError::Config("no attempt was made".into())))
    }

    fn unexpected(op: &'static str, key: &str, status: StatusCode, body: &[u8]) -> ConsulError {
        ConsulError::Status {
            op,
            key: key.to_owned(),
            status: status.as_u16(),
            message: String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned(),
        }
    }

    fn parse_entry(op: &'static str, key: &str, body: &[u8]) -> Result<Option<Entry>> {
        let mut entries: Vec<WireEntry> = serde_json::from_slice(body).map_err(|e| ConsulError::Decode {
            op,
            key: key.to_owned(),
            message: e.to_string(),
        })?;
        // A single-key read returns a one-element array.
        entries.retain(|e| e.key == key);
        entries.pop().map(|e| e.into_entry(op)).transpose()
    }

    /// Reads one key. `data` is `None` for a missing key; `index` is set either way.
    pub async fn get(&self, key: &str) -> Result<Read<Option<Entry>>> {
        validate_key(key, false)?;
        let path = format!("/v1/kv/{}", encode_key(key));
        let (status, index, body) = self
            .send("get", key, Method::GET, &path, &[], None, self.request_timeout)
            .await?;
        match status.as_u16() {
            404 => Ok(Read { data: None, index }),
            200 => Ok(Read {
                data: Self::parse_entry("get", key, &body)?,
                index,
            }),
            _ => Err(Self::unexpected("get", key, status, &body)),
        }
    }

    /// Blocking read: returns when the key's index is above `index` or after about `wait`
    /// (with no change then; callers compare). `index` 0 reads at once.
    pub async fn get_blocking(&self, key: &str, index: u64, wait: Duration) -> Result<Read<Option<Entry>>> {
        validate_key(key, false)?;
        let path = format!("/v1/kv/{}", encode_key(key));
        let query = [("index", index.to_string()), ("wait", go_duration(wait))];
        // Consul adds up to wait/16 of jitter; leave room above it.
        let timeout = wait + wait / 16 + Duration::from_secs(10);
        let (status, idx, body) = self
            .send("watch", key, Method::GET, &path, &query, None, timeout)
            .await?;
        match status.as_u16() {
            404 => Ok(Read { data: None, index: idx }),
            200 => Ok(Read {
                data: Self::parse_entry("watch", key, &body)?,
                index: idx,
            }),
            _ => Err(Self::unexpected("watch", key, status, &body)),
        }
    }

    /// Lists keys under a prefix (sorted). A missing prefix is an empty list.
    pub async fn keys(&self, prefix: &str) -> Result<Read<Vec<String>>> {
        validate_key(prefix, true)?;
        let path = format!("/v1/kv/{}", encode_key(prefix));
        let (status, index, body) = self
            .send("list", prefix, Method::GET, &path, &[("keys", String::new())], None, self.request_timeout)
            .await?;
        match status.as_u16() {
            404 => Ok(Read { data: Vec::new(), index }),
            200 => {
                let keys: Vec<String> = serde_json::from_slice(&body).map_err(|e| ConsulError::Decode {
                    op: "list",
                    key: prefix.to_owned(),
                    message: e.to_string(),
                })?;
                Ok(Read { data: keys, index })
            }
            _ => Err(Self::unexpected("list", prefix, status, &body)),
        }
    }

    async fn put_inner(&self, key: &str, value: &[u8], cas: Option<u64>) -> Result<bool> {
        validate_key(key, false)?;
        if value.len() > MAX_VALUE_SIZE {
            return Err(ConsulError::TooLarge {
                op: "put",
                key: key.to_owned(),
                message: format!("{} bytes, limit {MAX_VALUE_SIZE}", value.len()),
            });
        }
        let path = format!("/v1/kv/{}", encode_key(key));
        let query: Vec<(&str, String)> = cas.map(|c| vec![("cas", c.to_string())]).unwrap_or_default();
        let (status, _, body) = self
            .send("put", key, Method::PUT, &path, &query, Some(value.to_vec()), self.request_timeout)
            .await?;
        if status != StatusCode::OK {
            return Err(Self::unexpected("put", key, status, &body));
        }
        serde_json::from_slice::<bool>(&body).map_err(|e| ConsulError::Decode {
            op: "put",
            key: key.to_owned(),
            message: e.to_string(),
        })
    }

    /// Writes a key unconditionally.
    pub async fn put(&self, key: &str, value: &[u8]) -> Result<()> {
        self.put_inner(key, value, None).await.map(|_| ())
    }

    /// Writes a key if its `ModifyIndex` is `cas` (0: only if absent). `Ok(false)`: CAS failed.
    pub async fn put_cas(&self, key: &str, value: &[u8], cas: u64) -> Result<bool> {
        self.put_inner(key, value, Some(cas)).await
    }

    /// Deletes one key (a missing key is fine). Never a tree delete.
    pub async fn delete(&self, key: &str) -> Result<()> {
        validate_key(key, false)?;
        let path = format!("/v1/kv/{}", encode_key(key));
        let (status, _, body) = self
            .send("delete", key, Method::DELETE, &path, &[], None, self.request_timeout)
            .await?;
        if status != StatusCode::OK {
            return Err(Self::unexpected("delete", key, status, &body));
        }
        Ok(())
    }

    /// Deletes a key if its `ModifyIndex` is `index`. A missing key counts as deleted (`true`).
    pub async fn delete_cas(&self, key: &str, index: u64) -> Result<bool> {
        validate_key(key, false)?;
        let path = format!("/v1/kv/{}", encode_key(key));
        let (status, _, body) = self
            .send("delete", key, Method::DELETE, &path, &[("cas", index.to_string())], None, self.request_timeout)
            .await?;
        if status != StatusCode::OK {
            return Err(Self::unexpected("delete", key, status, &body));
        }
        serde_json::from_slice::<bool>(&body).map_err(|e| ConsulError::Decode {
            op: "delete",
            key: key.to_owned(),
            message: e.to_string(),
        })
    }

    /// Creates a session (`PUT /v1/session/create`); its ID.
    pub async fn create_session(&self, spec: &SessionSpec) -> Result<String> {
        let body = serde_json::json!({
            "Name": spec.name,
            "TTL": go_setting(spec.ttl),
            "LockDelay": go_setting(spec.lock_delay),
            "Behavior": "release",
            // No health checks (not even the agent's serfHealth): the TTL alone ends it.
            "NodeChecks": [],
        });
        let (status, _, bytes) = self
            .send("session create", &spec.name, Method::PUT, "/v1/session/create", &[], Some(body.to_string().into_bytes()), self.request_timeout)
            .await?;
        if status != StatusCode::OK {
            return Err(Self::unexpected("session create", &spec.name, status, &bytes));
        }
        serde_json::from_slice::<WireSessionCreated>(&bytes)
            .map(|c| c.id)
            .map_err(|e| ConsulError::Decode { op: "session create", key: spec.name.clone(), message: e.to_string() })
    }

    /// Renews a session's TTL. `Ok(false)`: the session is gone (expired or destroyed; 404).
    pub async fn renew_session(&self, id: &str) -> Result<bool> {
        let path = format!("/v1/session/renew/{}", encode_key(id));
        let (status, _, bytes) = self.send("session renew", id, Method::PUT, &path, &[], None, self.request_timeout).await?;
        match status.as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            _ => Err(Self::unexpected("session renew", id, status, &bytes)),
        }
    }

    /// Destroys a session (its locks are released, with its lock-delay); a gone one is fine.
    pub async fn destroy_session(&self, id: &str) -> Result<()> {
        let path = format!("/v1/session/destroy/{}", encode_key(id));
        let (status, _, bytes) = self.send("session destroy", id, Method::PUT, &path, &[], None, self.request_timeout).await?;
        if status != StatusCode::OK {
            return Err(Self::unexpected("session destroy", id, status, &bytes));
        }
        Ok(())
    }

    async fn lock_op(&self, op: &'static str, key: &str, session: &str, value: &[u8]) -> Result<bool> {
        validate_key(key, false)?;
        let path = format!("/v1/kv/{}", encode_key(key));
        let (status, _, body) = self
            .send(op, key, Method::PUT, &path, &[(op, session.to_owned())], Some(value.to_vec()), self.request_timeout)
            .await?;
        if status != StatusCode::OK {
            return Err(Self::unexpected(op, key, status, &body));
        }
        serde_json::from_slice::<bool>(&body).map_err(|e| ConsulError::Decode { op, key: key.to_owned(), message: e.to_string() })
    }

    /// Takes the lock of `key` for `session`, writing `value`. `Ok(false)`: another session
    /// holds it, or a lock-delay is running. Acquiring a lock already held is `Ok(true)`.
    pub async fn acquire(&self, key: &str, session: &str, value: &[u8]) -> Result<bool> {
        self.lock_op("acquire", key, session, value).await
    }

    /// Gives up the lock of `key` (no lock-delay follows), writing `value`. `Ok(false)`: the
    /// session did not hold it.
    pub async fn release(&self, key: &str, session: &str, value: &[u8]) -> Result<bool> {
        self.lock_op("release", key, session, value).await
    }

    /// Runs one transaction. The caller keeps within [`TXN_MAX_OPS`] and the body limit
    /// (see [`TxnOp::body_cost`]); nothing is split here, so atomicity is what the caller asked.
    pub async fn txn(&self, ops: &[TxnOp]) -> Result<TxnOutcome> {
        let first = ops.first().map(|o| o.key().to_owned()).unwrap_or_default();
        if ops.is_empty() {
            return Ok(TxnOutcome::Committed(Vec::new()));
        }
        if ops.len() > TXN_MAX_OPS {
            return Err(ConsulError::TooLarge {
                op: "txn",
                key: first,
                message: format!("{} operations, limit {TXN_MAX_OPS}", ops.len()),
            });
        }
        for op in ops {
            validate_key(op.key(), false)?;
        }
        let wire: Vec<WireOp<'_>> = ops.iter().map(TxnOp::wire).collect();
        let body = serde_json::to_vec(&wire).map_err(|e| ConsulError::Decode {
            op: "txn",
            key: first.clone(),
            message: e.to_string(),
        })?;
        let (status, _, bytes) = self
            .send("txn", &first, Method::PUT, "/v1/txn", &[], Some(body), self.request_timeout)
            .await?;
        let parsed: WireTxnResponse = serde_json::from_slice(&bytes).map_err(|e| ConsulError::Decode {
            op: "txn",
            key: first.clone(),
            message: e.to_string(),
        })?;
        match status.as_u16() {
            200 => {
                let mut out = Vec::new();
                for r in parsed.results.unwrap_or_default() {
                    if let Some(kv) = r.kv {
                        out.push(kv.into_entry("txn")?);
                    }
                }
                Ok(TxnOutcome::Committed(out))
            }
            409 => Ok(TxnOutcome::RolledBack(
                parsed
                    .errors
                    .unwrap_or_default()
                    .into_iter()
                    .map(|e| (e.op_index, e.what))
                    .collect(),
            )),
            _ => Err(Self::unexpected("txn", &first, status, &bytes)),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keys_are_validated_and_encoded() {
        assert!(validate_key("vsync/origin/root", false).is_ok());
        assert!(validate_key("vsync/", true).is_ok());
        assert!(validate_key("vsync/", false).is_err());
        assert!(validate_key("/vsync", false).is_err());
        assert!(validate_key("a//b", false).is_err());
        assert!(validate_key("a/../b", false).is_err());
        assert!(validate_key(" a", false).is_err());
        assert!(validate_key("a\nb", false).is_err());
        assert_eq!(encode_key("a b/c?d/é"), "a%20b/c%3Fd/%C3%A9");
    }

    #[test]
    fn token_is_redacted() {
        let t = ConsulToken::new("s3cr3t-token\n");
        assert!(!format!("{t:?}").contains("s3cr3t"));
        assert_eq!(t.0, "s3cr3t-token");
    }

    #[test]
    fn the_token_header_is_sensitive_and_never_printed() {
        let mut cfg = ConsulConfig::new("127.0.0.1:8500");
        cfg.token = Some(ConsulToken::new("s3cr3t-token"));
        let client = ConsulClient::new(cfg).unwrap();
        assert!(!format!("{client:?}").contains("s3cr3t"));
        let req = client
            .request(&Method::GET, "/v1/kv/a", &[], None, Duration::from_secs(1))
            .build()
            .unwrap();
        let header = req.headers().get("X-Consul-Token").unwrap();
        assert!(header.is_sensitive());
        assert_eq!(header.as_bytes(), b"s3cr3t-token", "the header still carries the token");
        assert!(!format!("{req:?}").contains("s3cr3t"), "{req:?}");
        assert!(!format!("{:?}", req.headers()).contains("s3cr3t"));
        // A token no header can carry is refused up front, without echoing it.
        let mut cfg = ConsulConfig::new("127.0.0.1:8500");
        cfg.token = Some(ConsulToken::new("s3cr3t\u{7f}token"));
        let err = ConsulClient::new(cfg).unwrap_err().to_string();
        assert!(err.contains("token") && !err.contains("s3cr3t"), "{err}");
    }

    #[test]
    fn txn_wire_shape() {
        let ops = [
            TxnOp::Cas { key: "a".into(), value: vec![0, 255], index: 0 },
            TxnOp::Delete { key: "b".into() },
            TxnOp::CheckSession { key: "l".into(), session: "s-1".into() },
        ];
        let wire: Vec<_> = ops.iter().map(TxnOp::wire).collect();
        let json = serde_json::to_string(&wire).unwrap();
        assert_eq!(
            json,
            r#"[{"KV":{"Verb":"cas","Key":"a","Value":"AP8=","Index":0}},{"KV":{"Verb":"delete","Key":"b"}},{"KV":{"Verb":"check-session","Key":"l","Session":"s-1"}}]"#
        );
        assert_eq!(go_setting(Duration::from_secs(15)), "15s");
        assert_eq!(go_setting(Duration::from_millis(1500)), "1500ms");
    }
}

//! The HTTP layer: client construction (TLS, namespace, token), path encoding, request
//! counting, error classification and bounded retries with backoff and jitter.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use tracing::{debug, warn};

use crate::concurrency::{Concurrency, ConcurrencySnapshot, Limiter, Signal};
use crate::error::{Result, VaultError};
use crate::transport::{ProtocolCounts, ReqwestTransport, Request, Response, Transport};

/// Everything except RFC 3986 unreserved characters is percent-encoded in a path segment, so
/// `?`, `#`, `%`, `+` and spaces reach the server as part of the name.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// A Vault token. `Debug` and `Display` never show it.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    /// Wraps a token, trimming surrounding whitespace (token files end in a newline).
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into().trim().to_owned())
    }

    /// Reads a token from a file (`token_file`).
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            VaultError::Config(format!("cannot read token file {}: {e}", path.display()))
        })?;
        let token = Self::new(text);
        if token.0.is_empty() {
            return Err(VaultError::Config(format!("token file {} is empty", path.display())));
        }
        Ok(token)
    }

    fn header(&self) -> Result<HeaderValue> {
        let mut value = HeaderValue::from_str(&self.0)
            .map_err(|_| VaultError::Config("token holds characters not allowed in a header".into()))?;
        value.set_sensitive(true);
        Ok(value)
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Bounded retries for transient failures (connection errors, 5xx, 429, sealed).
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, including the first (1 = no retry).
    pub max_attempts: u32,
    /// Delay before the first retry; doubles each time.
    pub base_delay: Duration,
    /// Cap on a single delay (also caps a server's `Retry-After`).
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// Full-jitter exponential backoff: a random delay in [d/2, d] where d doubles per attempt.
    fn delay(&self, attempt: u32) -> Duration {
        let exp = self.base_delay.saturating_mul(1u32 << attempt.min(16));
        let capped = exp.min(self.max_delay);
        let half = capped / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

/// How to reach and authenticate to one Vault server.
#[derive(Debug, Clone)]
pub struct VaultConfig {
    /// Base address, e.g. `http://127.0.0.1:8200`.
    pub address: String,
    /// Token sent as `X-Vault-Token`.
    pub token: Token,
    /// Namespace sent as `X-Vault-Namespace` (Vault Enterprise, OpenBao).
    pub namespace: Option<String>,
    /// PEM file with the CA(s) to trust instead of the built-in roots.
    pub ca_cert: Option<PathBuf>,
    /// PEM client certificate for mutual TLS.
    pub client_cert: Option<PathBuf>,
    /// PEM private key for `client_cert`.
    pub client_key: Option<PathBuf>,
    /// Accept any server certificate. Dangerous; logged loudly.
    pub tls_skip_verify: bool,
    /// Retry policy for transient errors.
    pub retry: RetryPolicy,
    /// Per-request timeout.
    pub request_timeout: Duration,
    /// Timeout of one LIST or SCAN request, which answers with a whole mount's keys at once
    /// (a million-key SCAN body is about 460 MB and takes over a minute to produce).
    pub list_timeout: Duration,
    /// Keys asked for per page when a KV v2 folder is listed with LIST (the walk used when
    /// SCAN is unavailable): [`DEFAULT_LIST_PAGE_SIZE`] unless set. Must be at least 1.
    pub list_page_size: usize,
    /// How many requests this side keeps in flight ([`crate::concurrency`]).
    pub concurrency: Concurrency,
    /// How long a request keeps retrying while the server pushes back (429, a 503 that is not
    /// "sealed"): throttling is back-pressure, not failure. A cycle's own timeout still
    /// bounds it.
    pub backpressure_budget: Duration,
    /// Which HTTP versions the client may speak ([`HttpVersion::Http1Only`] unless set). A
    /// library option, not a config-file key.
    pub http_version: HttpVersion,
}

/// Which HTTP versions a [`VaultClient`] may speak.
///
/// Either way one client keeps its connections open and reuses them (a pool per client, shared
/// by its clones). Over HTTP/2 it sends every request in flight over one connection; over
/// HTTP/1.1 a connection carries one request at a time, so N requests in flight open N
/// connections, each paying its TCP and TLS handshakes (two round trips on a long link) once.
///
/// The default is HTTP/1.1: across a 100 ms round trip, 64 requests in flight over TLS finished
/// 8-14% sooner over 64 HTTP/1.1 connections than multiplexed over one HTTP/2 connection, in
/// every run (`vsync-bench wan-tls`; figures and reasoning in README, "Test it").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum HttpVersion {
    /// HTTP/2 when the server offers it in the TLS handshake (ALPN; OpenBao and Vault do on
    /// TLS listeners), else HTTP/1.1. Plain `http://` is always HTTP/1.1 (no cleartext HTTP/2).
    /// One connection per server instead of one per request in flight.
    Auto,
    /// HTTP/1.1 only, even when the server offers HTTP/2 (the default).
    #[default]
    Http1Only,
}

impl VaultConfig {
    /// A config with defaults for everything but the address and token.
    pub fn new(address: impl Into<String>, token: Token) -> Self {
        Self {
            address: address.into(),
            token,
            namespace: None,
            ca_cert: None,
            client_cert: None,
            client_key: None,
            tls_skip_verify: false,
            retry: RetryPolicy::default(),
            request_timeout: Duration::from_secs(60),
            list_timeout: DEFAULT_LIST_TIMEOUT,
            list_page_size: DEFAULT_LIST_PAGE_SIZE,
            concurrency: Concurrency::Unlimited,
            backpressure_budget: DEFAULT_BACKPRESSURE_BUDGET,
            http_version: HttpVersion::default(),
        }
    }
}

/// How long throttled requests keep retrying by default: the default cycle `timeout`.
pub const DEFAULT_BACKPRESSURE_BUDGET: Duration = Duration::from_secs(300);

/// The longest wait between retries of a throttled request without `Retry-After`: rate-limit
/// quotas count in windows of about a second, so a longer wait only idles the link.
const THROTTLED_MAX_DELAY: Duration = Duration::from_secs(1);

/// [`VaultConfig::list_timeout`] unless set.
pub const DEFAULT_LIST_TIMEOUT: Duration = Duration::from_secs(600);

/// [`VaultConfig::list_page_size`] unless set: keys per page of a paginated KV v2 LIST
/// (`?limit=1000&after=<last key>`).
///
/// Why 1,000: a page is one round trip and is read whole, so the size trades requests against
/// memory and answer time. At 1,000 a folder of N keys costs N/1,000 + 1 requests (one for
/// almost every real folder; 101 for a flat folder of 100,000 keys), and a page is some tens
/// of KB, quick to produce and to decode. Page size also decides which policies the walk works
/// under: OpenBao refuses (403) a `limit` above the token's ACL `pagination_limit`, so a policy
/// with a lower limit fails the walk with [`crate::VaultError::PaginationLimited`], whose
/// message says to grant `scan` (SCAN is not paginated) or raise the limit. Policies that set a
/// limit at all usually choose hundreds to thousands; a smaller page would make every large
/// folder cost many more round trips for the sake of unusually tight limits, which have a
/// better fix (SCAN).
pub const DEFAULT_LIST_PAGE_SIZE: usize = 1000;

/// Class of a request, for the request counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// KV v2 data read or KV v1 value read.
    DataRead,
    /// KV v2 data write or KV v1 value write.
    DataWrite,
    /// KV v2 metadata read.
    MetadataRead,
    /// KV v2 metadata write, delete/undelete/destroy, KV v1 delete.
    MetadataWrite,
    /// LIST or SCAN.
    List,
    /// `sys/` and other calls.
    Other,
}

impl RequestKind {
    /// Every kind, in counter order.
    pub const ALL: [RequestKind; 6] = [
        RequestKind::DataRead,
        RequestKind::DataWrite,
        RequestKind::MetadataRead,
        RequestKind::MetadataWrite,
        RequestKind::List,
        RequestKind::Other,
    ];

    /// The kind's name in metrics (`data_read`, `list`, ...).
    pub fn name(self) -> &'static str {
        match self {
            RequestKind::DataRead => "data_read",
            RequestKind::DataWrite => "data_write",
            RequestKind::MetadataRead => "metadata_read",
            RequestKind::MetadataWrite => "metadata_write",
            RequestKind::List => "list",
            RequestKind::Other => "other",
        }
    }
}

/// How one attempt of a request ended, for the request counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestOutcome {
    /// A 2xx answer.
    Ok,
    /// A 404 (for KV: not there, an expected answer).
    NotFound,
    /// Any other HTTP status.
    Error,
    /// No answer: connection refused, reset or timed out.
    Transport,
}

impl RequestOutcome {
    /// Every outcome, in counter order.
    pub const ALL: [RequestOutcome; 4] =
        [RequestOutcome::Ok, RequestOutcome::NotFound, RequestOutcome::Error, RequestOutcome::Transport];

    /// The outcome's name in metrics.
    pub fn name(self) -> &'static str {
        match self {
            RequestOutcome::Ok => "ok",
            RequestOutcome::NotFound => "not_found",
            RequestOutcome::Error => "error",
            RequestOutcome::Transport => "transport",
        }
    }
}

/// Counts of requests sent, by class (each retry counts), and of attempts by class and outcome.
#[derive(Debug, Default)]
pub struct RequestCounters {
    counts: [AtomicU64; 6],
    outcomes: [[AtomicU64; 4]; 6],
}

/// A snapshot of [`RequestCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// Data reads.
    pub data_reads: u64,
    /// Data writes.
    pub data_writes: u64,
    /// Metadata reads.
    pub metadata_reads: u64,
    /// Metadata writes and deletes.
    pub metadata_writes: u64,
    /// Listings.
    pub lists: u64,
    /// Everything else.
    pub other: u64,
}

impl RequestCounters {
    fn bump(&self, kind: RequestKind) {
        self.counts[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn ended(&self, kind: RequestKind, outcome: RequestOutcome) {
        self.outcomes[kind as usize][outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Attempts so far by kind and outcome (for metrics).
    pub fn by_outcome(&self) -> Vec<(RequestKind, RequestOutcome, u64)> {
        let mut all = Vec::with_capacity(24);
        for kind in RequestKind::ALL {
            for outcome in RequestOutcome::ALL {
                all.push((kind, outcome, self.outcomes[kind as usize][outcome as usize].load(Ordering::Relaxed)));
            }
        }
        all
    }

    /// Current counts.
    pub fn snapshot(&self) -> RequestCounts {
        let c = |k: RequestKind| self.counts[k as usize].load(Ordering::Relaxed);
        RequestCounts {
            data_reads: c(RequestKind::DataRead),
            data_writes: c(RequestKind::DataWrite),
            metadata_reads: c(RequestKind::MetadataRead),
            metadata_writes: c(RequestKind::MetadataWrite),
            lists: c(RequestKind::List),
            other: c(RequestKind::Other),
        }
    }
}

/// An async Vault client. Cheap to clone; clones share the connection pool and counters.
#[derive(Clone)]
pub struct VaultClient {
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) address: String,
    pub(crate) retry: RetryPolicy,
    pub(crate) counters: Arc<RequestCounters>,
    pub(crate) list_timeout: Duration,
    /// Keys per page of a KV v2 LIST (at least 1).
    pub(crate) list_page_size: usize,
    pub(crate) scan_unsupported: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// The token sent with every request; replaced on re-login, shared by clones.
    pub(crate) token: Arc<std::sync::RwLock<HeaderValue>>,
    /// Requests in flight, adaptive or not ([`crate::concurrency`]).
    pub(crate) limiter: Arc<Limiter>,
    pub(crate) backpressure_budget: Duration,
}

impl std::fmt::Debug for VaultClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultClient").field("address", &self.address).finish_non_exhaustive()
    }
}

/// A raw answer the caller interprets (2xx and 404 only; other statuses become errors).
pub(crate) struct Answer {
    pub status: StatusCode,
    pub body: Vec<u8>,
}

/// An answer of [`VaultClient::call_streamed`]: a 2xx whose body is still to be read (a
/// listing of any size is decoded as it arrives), or any other answer read whole.
pub(crate) enum Reply {
    /// A 2xx answer, body unread.
    Streamed(Response),
    /// A 404, read whole.
    Whole(Answer),
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<String>,
}

/// The TLS part of a client: trusted CAs, client certificate, verification.
fn tls_settings(
    mut builder: reqwest::ClientBuilder,
    config: &VaultConfig,
    address: &str,
) -> Result<reqwest::ClientBuilder> {
    if let Some(ca) = &config.ca_cert {
        let pem = std::fs::read(ca).map_err(|e| {
            VaultError::Config(format!("cannot read ca_cert {}: {e}", ca.display()))
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            VaultError::Config(format!("ca_cert {} is not a PEM certificate: {e}", ca.display()))
        })?;
        if certs.is_empty() {
            return Err(VaultError::Config(format!("ca_cert {} holds no certificate", ca.display())));
        }
        builder = builder.tls_built_in_root_certs(false);
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    match (&config.client_cert, &config.client_key) {
        (Some(cert), Some(key)) => {
            let mut pem = std::fs::read(cert).map_err(|e| {
                VaultError::Config(format!("cannot read client_cert {}: {e}", cert.display()))
            })?;
            pem.push(b'\n');
            pem.extend(std::fs::read(key).map_err(|e| {
                VaultError::Config(format!("cannot read client_key {}: {e}", key.display()))
            })?);
            let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                VaultError::Config(format!(
                    "client_cert {} / client_key {} are not a usable PEM pair: {e}",
                    cert.display(),
                    key.display()
                ))
            })?;
            builder = builder.identity(identity);
        }
        (None, None) => {}
        _ => {
            return Err(VaultError::Config(
                "client_cert and client_key must be given together".into(),
            ));
        }
    }
    if config.tls_skip_verify {
        warn!(
            address = %address,
            "tls_skip_verify is set: the server's TLS certificate is NOT verified; anyone on \
             the path can read and change secrets. Use ca_cert instead."
        );
        builder = builder.danger_accept_invalid_certs(true);
    }
    Ok(builder)
}

impl VaultClient {
    /// Builds a client. Fails on unreadable TLS files or a malformed address.
    pub fn new(config: VaultConfig) -> Result<Self> {
        let address = config.address.trim_end_matches('/').to_owned();
        if config.list_page_size == 0 {
            // A page of 0 keys could never reach the end of a folder.
            return Err(VaultError::Config("list_page_size must be at least 1".into()));
        }
        url::Url::parse(&address)
            .map_err(|e| VaultError::Config(format!("invalid Vault address `{address}`: {e}")))?;
        let mut headers = HeaderMap::new();
        let token_header = config.token.header()?;
        headers.insert("X-Vault-Request", HeaderValue::from_static("true"));
        if let Some(ns) = &config.namespace {
            let value = HeaderValue::from_str(ns)
                .map_err(|_| VaultError::Config(format!("invalid namespace `{ns}`")))?;
            headers.insert("X-Vault-Namespace", value);
        }
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .default_headers(headers)
            // A redirect would carry the token to wherever it points, and Vault only redirects
            // to clean up paths we never send: treat redirects as errors instead.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .timeout(config.request_timeout)
            .user_agent(concat!("vsync/", env!("CARGO_PKG_VERSION")));
        builder = tls_settings(builder, &config, &address)?;
        if config.http_version == HttpVersion::Http1Only {
            builder = builder.http1_only();
        }
        let http = builder
            .build()
            .map_err(|e| VaultError::Config(format!("cannot build HTTP client: {e}")))?;
        let mut transport = ReqwestTransport::new(http, address.clone());
        if config.http_version == HttpVersion::Auto && address.starts_with("https:") {
            // HTTP/2 may be offered: let a first burst share one connection (see first_alone).
            transport = transport.first_alone();
        }
        Self::over(config, address, Arc::new(transport), token_header)
    }

    /// Builds a client that sends its requests through `transport` (an in-memory Vault in
    /// tests and the simulator); TLS settings of `config` are not used.
    pub fn with_transport(config: VaultConfig, transport: Arc<dyn Transport>) -> Result<Self> {
        let address = config.address.trim_end_matches('/').to_owned();
        if config.list_page_size == 0 {
            return Err(VaultError::Config("list_page_size must be at least 1".into()));
        }
        let token_header = config.token.header()?;
        Self::over(config, address, transport, token_header)
    }

    fn over(config: VaultConfig, address: String, transport: Arc<dyn Transport>, token: HeaderValue) -> Result<Self> {
        Ok(Self {
            transport,
            address,
            retry: config.retry,
            counters: Arc::new(RequestCounters::default()),
            list_timeout: config.list_timeout,
            list_page_size: config.list_page_size,
            scan_unsupported: Default::default(),
            token: Arc::new(std::sync::RwLock::new(token)),
            limiter: Arc::new(Limiter::new(config.concurrency)),
            backpressure_budget: config.backpressure_budget,
        })
    }

    /// This side's requests in flight, its limit and its throttled answers (for metrics).
    pub fn concurrency(&self) -> ConcurrencySnapshot {
        self.limiter.snapshot()
    }

    /// Replaces the token for every later request of this client and its clones (re-login).
    pub fn set_token(&self, token: &Token) -> Result<()> {
        let header = token.header()?;
        match self.token.write() {
            Ok(mut t) => *t = header,
            Err(poisoned) => *poisoned.into_inner() = header,
        }
        Ok(())
    }

    fn token_header(&self) -> HeaderValue {
        match self.token.read() {
            Ok(t) => t.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The server address this client talks to.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Answers received so far by HTTP version (all zero over an in-memory transport).
    pub fn protocol_counts(&self) -> ProtocolCounts {
        self.transport.protocol_counts()
    }

    /// Requests sent so far, by class.
    pub fn request_counts(&self) -> RequestCounts {
        self.counters.snapshot()
    }

    /// Attempts so far by kind and outcome, shared by clones (for metrics).
    pub fn request_outcomes(&self) -> Vec<(RequestKind, RequestOutcome, u64)> {
        self.counters.by_outcome()
    }

    /// Builds the API path `<prefix segments>/<segments of path>` with every segment
    /// percent-encoded. `path` is a secret path (validated); `prefix` is trusted API text.
    pub(crate) fn api_path(prefix: &str, path: &str) -> Result<String> {
        let mut out = prefix.trim_end_matches('/').to_owned();
        if !path.is_empty() {
            vsync_core::validate_relative_path(path)?;
            for seg in path.split('/') {
                out.push('/');
                out.extend(utf8_percent_encode(seg, SEGMENT));
            }
        }
        Ok(out)
    }

    /// Encodes a mount (`secret/`, `team/kv/`) into its API prefix (`secret`, `team/kv`).
    pub(crate) fn mount_prefix(mount: &str) -> Result<String> {
        let trimmed = mount.trim_end_matches('/');
        Self::api_path("", trimmed).map(|p| p.trim_start_matches('/').to_owned())
    }

    /// Sends one request with retries; returns 2xx and 404 answers, maps everything else to
    /// a typed error.
    pub(crate) async fn call(
        &self,
        kind: RequestKind,
        method: Method,
        api_path: &str,
        query: &[(&str, String)],
        body: Option<(Vec<u8>, &'static str)>,
    ) -> Result<Answer> {
        let method_name = method.clone();
        match self.send(kind, method, api_path, query, body, false).await? {
            Reply::Whole(answer) => Ok(answer),
            // `send` streams only when asked to; never read a body as empty.
            Reply::Streamed(_) => Err(VaultError::Decode {
                request: format!("{method_name} {api_path}"),
                message: "answer left unread".into(),
            }),
        }
    }

    /// Like [`Self::call`], but a 2xx answer comes back with its body unread, for the caller
    /// to decode as it arrives. Retries cover the request up to its headers; a body cut off
    /// later fails the caller's decode, which has already consumed part of it.
    pub(crate) async fn call_streamed(&self, kind: RequestKind, method: Method, api_path: &str) -> Result<Reply> {
        self.send(kind, method, api_path, &[], None, true).await
    }

    async fn send(
        &self,
        kind: RequestKind,
        method: Method,
        api_path: &str,
        query: &[(&str, String)],
        body: Option<(Vec<u8>, &'static str)>,
        stream: bool,
    ) -> Result<Reply> {
        let request = format!("{method} {api_path}");
        let timeout = (kind == RequestKind::List).then_some(self.list_timeout);
        let mut attempt = 0u32;
        let began = std::time::Instant::now();
        loop {
            let permit = self.limiter.acquire().await;
            self.counters.bump(kind);
            let token = self.token_header();
            debug!(%request, attempt, "vault request");
            let exchange = Request { method: &method, api_path, query, token: &token, body: body.as_ref(), timeout };
            let outcome = match self.transport.send(exchange).await {
                Ok(resp) => {
                    let ended = match resp.status {
                        s if s.is_success() => RequestOutcome::Ok,
                        StatusCode::NOT_FOUND => RequestOutcome::NotFound,
                        _ => RequestOutcome::Error,
                    };
                    self.counters.ended(kind, ended);
                    if stream && ended == RequestOutcome::Ok {
                        return Ok(Reply::Streamed(resp));
                    }
                    self.classify(&request, resp).await.map(Reply::Whole)
                }
                Err(source) => Err(Attempt::Retry({
                    self.counters.ended(kind, RequestOutcome::Transport);
                    VaultError::Connection { request: request.clone(), address: self.address.clone(), source }
                }, None)),
            };
            permit.done(signal_of(kind, &outcome));
            match outcome {
                Ok(answer) => return Ok(answer),
                Err(Attempt::Fail(e)) => return Err(e),
                Err(Attempt::Retry(e, retry_after)) => {
                    attempt += 1;
                    // Back-pressure is retried for as long as the budget allows (the cycle's
                    // timeout bounds it too); anything else within the attempt budget.
                    let pushed_back = is_back_pressure(&e);
                    if pushed_back && began.elapsed() >= self.backpressure_budget {
                        return Err(e);
                    }
                    if !pushed_back && attempt >= self.retry.max_attempts {
                        return Err(e);
                    }
                    // Honour Retry-After, never sooner than our own backoff. It has whole-second
                    // granularity, and OpenBao sends "0" when the window resets in under a
                    // second, so 0 is read as 1 s.
                    let backoff = match pushed_back {
                        true => self.retry.delay(attempt.min(8) - 1).min(THROTTLED_MAX_DELAY),
                        false => self.retry.delay(attempt - 1),
                    };
                    let delay = retry_after.map_or(backoff, |d| {
                        d.max(Duration::from_secs(1)).min(self.retry.max_delay).max(backoff)
                    });
                    debug!(%request, attempt, ?delay, error = %e, "retrying vault request");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn classify(&self, request: &str, resp: Response) -> Result<Answer, Attempt> {
        let status = resp.status;
        let retry_after = resp
            .headers
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let location = resp
            .headers
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = match resp.body.bytes().await {
            Ok(b) => b,
            Err(source) => {
                return Err(Attempt::Retry(
                    VaultError::Connection { request: request.to_owned(), address: self.address.clone(), source },
                    None,
                ));
            }
        };
        if status.is_success() || status == StatusCode::NOT_FOUND {
            return Ok(Answer { status, body });
        }
        let message = serde_json::from_slice::<ErrorBody>(&body)
            .map(|b| b.errors.join("; "))
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).chars().take(200).collect());
        let message = message.trim().to_owned();
        let request = request.to_owned();
        let code = status.as_u16();
        Err(match code {
            403 => Attempt::Fail(VaultError::PermissionDenied { request, message }),
            413 => Attempt::Fail(VaultError::TooLarge { request, status: code, message }),
            429 => Attempt::Retry(VaultError::RateLimited { request, retry_after }, retry_after),
            400 if message.contains("check-and-set") => {
                Attempt::Fail(VaultError::CasMismatch { request })
            }
            300..=399 => Attempt::Fail(VaultError::Rejected {
                request,
                status: code,
                message: format!("unexpected redirect to {}", location.unwrap_or_default()),
            }),
            503 if message.contains("sealed") => Attempt::Retry(
                VaultError::Sealed { request, address: self.address.clone() },
                None,
            ),
            500 if message.contains("too large") => {
                Attempt::Fail(VaultError::TooLarge { request, status: code, message })
            }
            500 if message.contains("invalid UTF-8") => {
                Attempt::Fail(VaultError::Rejected { request, status: code, message })
            }
            500..=599 => Attempt::Retry(VaultError::Server { request, status: code, message }, None),
            _ => Attempt::Fail(VaultError::Rejected { request, status: code, message }),
        })
    }
}

enum Attempt {
    Retry(VaultError, Option<Duration>),
    Fail(VaultError),
}

/// Throttling, or a 503 that is not "sealed" (a quota, a standby, a proxy shedding load).
fn is_back_pressure(e: &VaultError) -> bool {
    matches!(e, VaultError::RateLimited { .. } | VaultError::Server { status: 503, .. })
}

/// What one attempt tells the side's concurrency controller.
fn signal_of<T>(kind: RequestKind, outcome: &std::result::Result<T, Attempt>) -> Signal {
    match outcome {
        Err(Attempt::Retry(VaultError::RateLimited { .. }, _)) => Signal::Throttled,
        Err(Attempt::Retry(VaultError::Sealed { .. }, _)) => Signal::Unsampled,
        Err(Attempt::Retry(..)) => Signal::Pressure,
        Err(Attempt::Fail(_)) => Signal::Unsampled,
        // A listing's time is its size, not the path's.
        Ok(_) if matches!(kind, RequestKind::List | RequestKind::Other) => Signal::Unsampled,
        Ok(_) => Signal::Served,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_percent_encoded() {
        let p = VaultClient::api_path("secret/data", "a b/%/#?+/ключ/🔑/x.y~z").expect("valid");
        assert_eq!(
            p,
            "secret/data/a%20b/%25/%23%3F%2B/%D0%BA%D0%BB%D1%8E%D1%87/%F0%9F%94%91/x.y~z"
        );
    }

    #[test]
    fn dot_segments_are_never_sent() {
        for bad in ["a/../b", "./a", "a//b", "..", "a/"] {
            assert!(matches!(
                VaultClient::api_path("secret/data", bad),
                Err(VaultError::InvalidPath(_))
            ));
        }
    }

    #[test]
    fn token_is_redacted() {
        let t = Token::new("s.supersecret\n");
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
        let cfg = VaultConfig::new("http://x", t);
        assert!(!format!("{cfg:?}").contains("supersecret"));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let r = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        for _ in 0..100 {
            let d0 = r.delay(0);
            assert!(d0 >= Duration::from_millis(50) && d0 <= Duration::from_millis(100));
            let d9 = r.delay(9);
            assert!(d9 >= Duration::from_millis(500) && d9 <= Duration::from_secs(1));
        }
    }
}

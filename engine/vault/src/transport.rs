//! The seam between [`crate::VaultClient`] and the wire.
//!
//! Everything the client knows about Vault (path encoding, error classes, retries, back-pressure,
//! paging, 404 shapes) sits above this seam; below it is one HTTP exchange. Production uses
//! [`ReqwestTransport`] (TLS, connection reuse, HTTP/2 when allowed and offered). Tests and the simulator
//! plug in an in-memory Vault that answers the same requests, so the whole client runs over it
//! unchanged: a fault injected there takes the path a real server's would.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};

/// A boxed future of one exchange (the trait is object safe, so a client holds `Arc<dyn _>`).
pub type Exchange<'a> = Pin<Box<dyn Future<Output = Result<Response, TransportError>> + Send + 'a>>;

/// One HTTP exchange with a Vault server.
pub trait Transport: Send + Sync {
    /// Sends `request` and returns the answer's status, headers and (unread) body. An error
    /// means no answer arrived (refused, reset, timed out); any status is an answer.
    fn send<'a>(&'a self, request: Request<'a>) -> Exchange<'a>;

    /// Answers received so far, by the HTTP version they came over (which one a server speaks
    /// is settled per connection, by ALPN in the TLS handshake). A transport that speaks no
    /// HTTP, such as an in-memory Vault, reports none.
    fn protocol_counts(&self) -> ProtocolCounts {
        ProtocolCounts::default()
    }
}

/// Answers received, by HTTP version ([`Transport::protocol_counts`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProtocolCounts {
    /// Answers over HTTP/1.0 or HTTP/1.1.
    pub http1: u64,
    /// Answers over HTTP/2.
    pub http2: u64,
}

/// One request, as the client composed it.
#[derive(Debug)]
pub struct Request<'a> {
    /// The HTTP method (`LIST` and `SCAN` included).
    pub method: &'a Method,
    /// The API path after `/v1/`, every segment already percent-encoded.
    pub api_path: &'a str,
    /// Query parameters (unencoded).
    pub query: &'a [(&'a str, String)],
    /// The `X-Vault-Token` value; empty when the client has no token (a login).
    pub token: &'a HeaderValue,
    /// The body and its content type.
    pub body: Option<&'a (Vec<u8>, &'static str)>,
    /// A deadline for this exchange shorter than the transport's own (listings have their own).
    pub timeout: Option<Duration>,
}

/// An answer: status, headers, and a body that may still be arriving.
#[derive(Debug)]
pub struct Response {
    /// The HTTP status.
    pub status: StatusCode,
    /// The answer's headers (`Retry-After`, `Location`).
    pub headers: HeaderMap,
    /// The body.
    pub body: Body,
}

impl Response {
    /// An answer whose body is all here (what an in-memory server sends).
    pub fn buffered(status: StatusCode, headers: HeaderMap, body: Vec<u8>) -> Self {
        Self { status, headers, body: Body(BodyInner::Buffered(Some(body))) }
    }
}

/// An answer's body: read in chunks as it arrives, or whole.
#[derive(Debug)]
pub struct Body(BodyInner);

#[derive(Debug)]
enum BodyInner {
    Buffered(Option<Vec<u8>>),
    Streaming(reqwest::Response),
}

impl Body {
    /// The next chunk, `None` at the end. An error means the body was cut off.
    pub async fn chunk(&mut self) -> Result<Option<Vec<u8>>, TransportError> {
        match &mut self.0 {
            BodyInner::Buffered(rest) => Ok(rest.take()),
            BodyInner::Streaming(resp) => match resp.chunk().await {
                Ok(chunk) => Ok(chunk.map(|c| c.to_vec())),
                Err(e) => Err(TransportError::new(e.without_url())),
            },
        }
    }

    /// The whole body.
    pub async fn bytes(self) -> Result<Vec<u8>, TransportError> {
        match self.0 {
            BodyInner::Buffered(rest) => Ok(rest.unwrap_or_default()),
            BodyInner::Streaming(resp) => match resp.bytes().await {
                Ok(b) => Ok(b.to_vec()),
                Err(e) => Err(TransportError::new(e.without_url())),
            },
        }
    }
}

/// No answer arrived: the connection was refused, reset or timed out, or the body was cut off.
/// Its text never holds the token (requests carry it in a header, never in the URL).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct TransportError(Box<dyn std::error::Error + Send + Sync>);

impl TransportError {
    /// Wraps the underlying cause.
    pub fn new(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self(source.into())
    }
}

/// The production transport: a `reqwest` client (rustls, pooled connections, HTTP/2 over TLS
/// when the client allows it and the server offers it) aimed at one server.
#[derive(Debug, Clone)]
pub struct ReqwestTransport {
    http: reqwest::Client,
    address: String,
    /// Answers over HTTP/1.x and over HTTP/2, shared by clones.
    versions: Arc<[AtomicU64; 2]>,
    /// Held by the first exchange until it ends, when [`ReqwestTransport::first_alone`] is set.
    first: Option<Arc<FirstExchange>>,
}

/// How long a request waits for a transport's first exchange to end
/// ([`ReqwestTransport::first_alone`]): a TCP and a TLS handshake and one exchange take three
/// round trips, under half a second between regions.
const FIRST_EXCHANGE_WAIT: Duration = Duration::from_secs(2);

/// The first exchange of a transport goes alone ([`ReqwestTransport::first_alone`]).
#[derive(Debug, Default)]
struct FirstExchange {
    gate: tokio::sync::Mutex<()>,
    done: AtomicBool,
}

impl ReqwestTransport {
    /// A transport for `address` (`https://host:port`, no trailing slash) over `http`.
    pub fn new(http: reqwest::Client, address: String) -> Self {
        Self { http, address, versions: Arc::default(), first: None }
    }

    /// Sends the first exchange alone: the requests sent meanwhile wait for it to end. Whether
    /// a server speaks HTTP/2 is known only once a TLS handshake has chosen it (ALPN), so a
    /// burst of N requests on a fresh client would otherwise open N connections even where one
    /// multiplexed HTTP/2 connection carries them all; after the first answer they share its
    /// connection (HTTP/2) or open their own (HTTP/1.1). Costs one exchange's wait, once, and
    /// never more than two seconds (then the others go on their own connections).
    pub fn first_alone(mut self) -> Self {
        self.first = Some(Arc::default());
        self
    }

    fn answered(&self, version: reqwest::Version) {
        let slot = match version {
            reqwest::Version::HTTP_2 => 1,
            reqwest::Version::HTTP_09 | reqwest::Version::HTTP_10 | reqwest::Version::HTTP_11 => 0,
            _ => return,
        };
        self.versions[slot].fetch_add(1, Ordering::Relaxed);
    }
}

impl ReqwestTransport {
    async fn exchange(&self, request: Request<'_>) -> Result<Response, TransportError> {
        let url = format!("{}/v1/{}", self.address, request.api_path);
        let mut req = self.http.request(request.method.clone(), &url);
        if let Some(timeout) = request.timeout {
            req = req.timeout(timeout);
        }
        if !request.token.is_empty() {
            req = req.header("X-Vault-Token", request.token.clone());
        }
        if !request.query.is_empty() {
            req = req.query(request.query);
        }
        if let Some((bytes, content_type)) = request.body {
            req = req.header("Content-Type", *content_type).body(bytes.clone());
        }
        match req.send().await {
            Ok(resp) => {
                self.answered(resp.version());
                Ok(Response {
                    status: resp.status(),
                    headers: resp.headers().clone(),
                    body: Body(BodyInner::Streaming(resp)),
                })
            }
            Err(e) => Err(TransportError::new(e.without_url())),
        }
    }
}

impl Transport for ReqwestTransport {
    fn send<'a>(&'a self, request: Request<'a>) -> Exchange<'a> {
        Box::pin(async move {
            let Some(first) = self.first.as_ref().filter(|f| !f.done.load(Ordering::Acquire)) else {
                return self.exchange(request).await;
            };
            // A first exchange that is slow to answer (a large SCAN is answered only once
            // the server has it all) must not hold the others back: after a while they go.
            let Ok(alone) = tokio::time::timeout(FIRST_EXCHANGE_WAIT, first.gate.lock()).await else {
                return self.exchange(request).await;
            };
            if first.done.load(Ordering::Acquire) {
                drop(alone);
                return self.exchange(request).await;
            }
            // Answered or not, the next ones go: an unreachable server fails them together.
            let result = self.exchange(request).await;
            first.done.store(true, Ordering::Release);
            result
        })
    }

    fn protocol_counts(&self) -> ProtocolCounts {
        ProtocolCounts {
            http1: self.versions[0].load(Ordering::Relaxed),
            http2: self.versions[1].load(Ordering::Relaxed),
        }
    }
}

//! Typed errors of the Vault client, one variant per class of server answer. Messages name the request (method and API path) but never
//! carry a token or a secret value.

use std::time::Duration;

use thiserror::Error;

/// A failed Vault request.
#[derive(Debug, Error)]
pub enum VaultError {
    /// 403: the token is bad, expired, revoked, or its policy denies this path. On a mount that
    /// does not exist a limited token also gets 403, so this can mean "missing mount" too.
    #[error("{request}: permission denied (HTTP 403){}", hint(.message))]
    PermissionDenied {
        /// Method and API path.
        request: String,
        /// Server's error text.
        message: String,
    },
    /// The mount does not exist (root-token 404 "no handler for route", or 400 "No secret
    /// engine mount").
    #[error("mount `{mount}` does not exist on {address}: {message}")]
    MountNotFound {
        /// The mount asked for.
        mount: String,
        /// Server address.
        address: String,
        /// Server's error text.
        message: String,
    },
    /// The mount exists but is not a KV secrets engine.
    #[error("mount `{mount}` is a `{kind}` secrets engine, not KV")]
    NotKv {
        /// The mount.
        mount: String,
        /// The engine type the server reported.
        kind: String,
    },
    /// 503 "Vault is sealed", still sealed after the retry budget.
    #[error("{request}: the server at {address} is sealed (HTTP 503)")]
    Sealed {
        /// Method and API path.
        request: String,
        /// Server address.
        address: String,
    },
    /// 429 rate-limit quota, still limited after the retry budget.
    #[error("{request}: rate limited (HTTP 429){}", retry_after.map(|d| format!(", server asked to retry after {d:?}")).unwrap_or_default())]
    RateLimited {
        /// Method and API path.
        request: String,
        /// Last `Retry-After` the server sent.
        retry_after: Option<Duration>,
    },
    /// The request or the stored entry is too large: 413 from the listener, or Raft's 500
    /// "value/key being too large". Permanent for this key; never retried.
    #[error("{request}: too large for the server (HTTP {status}): {message}")]
    TooLarge {
        /// Method and API path.
        request: String,
        /// 413 or 500.
        status: u16,
        /// Server's error text.
        message: String,
    },
    /// 400 check-and-set mismatch: someone else wrote the key since it was read.
    #[error("{request}: check-and-set did not match the current version (HTTP 400)")]
    CasMismatch {
        /// Method and API path.
        request: String,
    },
    /// A write returned a version other than the one expected.
    #[error("{request}: wrote version {got}, expected {expected}")]
    UnexpectedVersion {
        /// Method and API path.
        request: String,
        /// Version the CAS write should have produced.
        expected: u64,
        /// Version the server reported.
        got: u64,
    },
    /// Any other 4xx (and permanent 5xx such as invalid UTF-8): the request itself is wrong.
    #[error("{request}: rejected (HTTP {status}){}", hint(.message))]
    Rejected {
        /// Method and API path.
        request: String,
        /// HTTP status.
        status: u16,
        /// Server's error text.
        message: String,
    },
    /// A login that the auth method refused (HTTP 400 or 403): a bad or expired credential, an
    /// unknown role, claims the role does not accept. Never carries the credential.
    #[error("{method} login at `auth/{mount}` as role `{role}` was refused (HTTP {status}){}", hint(.message))]
    LoginFailed {
        /// The auth method (`JWT`).
        method: &'static str,
        /// The auth mount.
        mount: String,
        /// The role asked for.
        role: String,
        /// 400 or 403.
        status: u16,
        /// Server's error text, with the credential removed should it appear there.
        message: String,
    },
    /// A 5xx that persisted through the retry budget.
    #[error("{request}: server error (HTTP {status}){}", hint(.message))]
    Server {
        /// Method and API path.
        request: String,
        /// HTTP status.
        status: u16,
        /// Server's error text.
        message: String,
    },
    /// The connection failed (refused, reset, timed out, TLS handshake) through the retry budget.
    #[error("{request}: cannot reach {address}: {source}")]
    Connection {
        /// Method and API path.
        request: String,
        /// Server address.
        address: String,
        /// The transport error (its text holds the URL, never the token).
        #[source]
        source: crate::transport::TransportError,
    },
    /// A 404 that is not KV's "nothing here". KV answers a missing key, version or folder with
    /// exactly `{"errors":[]}` (and a deleted version with its metadata); any other 404 (an
    /// error text, a warning, no `errors` array, no body) means the request did not reach what
    /// it meant to, so reading it as "missing" could turn a fault into a delete.
    #[error("{request}: HTTP 404 that is not an empty not-found (`{{\"errors\":[]}}`): {message}")]
    UnexpectedNotFound {
        /// Method and API path.
        request: String,
        /// What the body held instead (server error texts and warnings, or its shape).
        message: String,
    },
    /// A KV v2 LIST with `limit=<page_size>` was refused (403) while a plain LIST of the same
    /// folder is allowed: the token's policy sets an ACL `pagination_limit` below the page size.
    /// Under such a limit a plain LIST answers with only the first keys and no error, so the
    /// walk never falls back to it (the missing keys would read as deleted). Permanent until the
    /// policy changes.
    #[error(
        "{request}: the token's policy refuses a LIST page of {page_size} keys (HTTP 403 with \
         limit={page_size}) on {} of mount `{mount}` but allows a plain LIST, \
         which its ACL `pagination_limit` would silently cut short: vsync will not list with it. \
         Grant the `scan` capability on `{mount}detailed-metadata/*` (vsync then lists with SCAN, \
         which `pagination_limit` does not limit) or raise `pagination_limit` to at least {page_size}",
        folder_name(.folder)
    )]
    PaginationLimited {
        /// Method and API path of the refused page (without the query).
        request: String,
        /// The mount (`secret/`).
        mount: String,
        /// The folder, relative to the mount (empty for the mount's root).
        folder: String,
        /// The page size that was refused.
        page_size: usize,
    },
    /// A KV v2 LIST page that a paginating server cannot have sent: keys at or before the
    /// `after` key (a repeated or backward page), keys out of order, more keys than the `limit`,
    /// or a later page whose parameters the server says it ignored. The server does not page
    /// as asked, so the folder's listing cannot be trusted to be complete.
    #[error("{request}: the server does not page this LIST as asked: {message}")]
    PagingBroken {
        /// Method and API path (without the query).
        request: String,
        /// What was wrong with the page.
        message: String,
    },
    /// The server answered with a body this client cannot read.
    #[error("{request}: unexpected response: {message}")]
    Decode {
        /// Method and API path.
        request: String,
        /// What was wrong.
        message: String,
    },
    /// The path cannot be sent safely (empty, `.` or `..` segment, ...).
    #[error("invalid secret path: {0}")]
    InvalidPath(#[from] vsync_core::PathError),
    /// The client configuration is unusable (unreadable CA file, bad address, ...).
    #[error("{0}")]
    Config(String),
}

/// A folder of a mount as named in messages (the empty folder is the mount's top level).
fn folder_name(folder: &str) -> String {
    if folder.is_empty() { "the top folder".to_owned() } else { format!("folder `{folder}`") }
}

fn hint(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

impl VaultError {
    /// True for errors that the same request may not hit next time (connection, 5xx, 429,
    /// sealed). Permanent per-key errors (too large, rejected) and 403 are not retriable.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            VaultError::Sealed { .. }
                | VaultError::RateLimited { .. }
                | VaultError::Server { .. }
                | VaultError::Connection { .. }
        )
    }
}

/// Result alias of this crate.
pub type Result<T, E = VaultError> = std::result::Result<T, E>;

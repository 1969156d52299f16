//! The fake's errors: an API error is an HTTP answer with `{"errors":[...]}`; a transport error
//! is no answer at all (an injected connection fault or a lost answer).

/// An error answer: status and OpenBao's error texts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("HTTP {status}: {}", errors.join("; "))]
pub(crate) struct ApiError {
    pub status: u16,
    pub errors: Vec<String>,
}

impl ApiError {
    pub(crate) fn new(status: u16, message: impl Into<String>) -> Self {
        Self { status, errors: vec![message.into()] }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, message)
    }

    /// 404 `{"errors":[]}`: nothing at this path.
    pub(crate) fn not_found() -> Self {
        Self { status: 404, errors: Vec::new() }
    }

    /// A policy denial (valid token): OpenBao's multierror text.
    pub(crate) fn acl_denied() -> Self {
        Self::new(403, "1 error occurred:\n\t* permission denied\n\n")
    }

    /// A bad, expired or missing token.
    pub(crate) fn bad_token() -> Self {
        Self::new(403, "permission denied")
    }

    pub(crate) fn unsupported_operation() -> Self {
        Self::new(405, "1 error occurred:\n\t* unsupported operation\n\n")
    }
}

/// Why no answer arrived (what a [`vsync_vault::transport::TransportError`] wraps).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FakeTransportError {
    /// An injected connection fault: the request never reached the server.
    #[error("connection refused (injected fault; nothing applied)")]
    Connection,
    /// An injected lost answer: the request was applied, its answer never arrived.
    #[error("connection reset after the request was sent (injected fault; the request was applied)")]
    LostAnswer,
}

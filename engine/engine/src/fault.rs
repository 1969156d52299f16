//! Fault classes, decided where an error is created.
//!
//! Every error the engine reports is a [`Fault`]: a message with its context (never a token
//! or a secret value: it is built from typed errors that carry neither) and a [`FaultClass`].
//! The class alone decides what happens next, for writes and removals alike:
//! - [`FaultClass::Fatal`]: stop the cycle and every future cycle, alert, exit 1; the
//!   [`FatalCause`] names it in the log and in the webhook's `kind`;
//! - [`FaultClass::Unavailable`]: the server as a whole cannot serve (sealed, unreachable):
//!   stop the cycle, commit nothing, retry next cycle;
//! - [`FaultClass::StateStore`]: the state store failed transiently: like `Unavailable`, but
//!   [`STATE_RETRY_BUDGET`] such cycles in a row are fatal;
//! - [`FaultClass::LockLost`]: this process lost its side's lock (Consul session): the cycle is
//!   abandoned with nothing committed and the role waits as a standby until it is the writer
//!   again;
//! - [`FaultClass::Transient`]: anything else; for one secret it is a per-secret failure
//!   (retried next cycle while the rest commits), for a scan or a load it fails the cycle.

use vsync_core::Refusal;
use vsync_state::StateError;
use vsync_vault::VaultError;

/// Consecutive cycles a state store may fail (transiently) before that is fatal.
pub const STATE_RETRY_BUDGET: u32 = 5;

/// Why the engine stops for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FatalCause {
    /// A Vault token lost a permission the role needs.
    PermissionDenied,
    /// A mount is missing or is not a KV mount.
    Mount,
    /// The configuration cannot work (a bad path, an unusable setting).
    Config,
    /// An origin mount was re-created (new UUID).
    OriginMountRecreated,
    /// A mapped origin mount is missing from the origin's info.
    OriginMountMissing,
    /// Two origin secrets map to one destination path.
    PathCollision,
    /// The plan deletes more than `max_delete_ratio`.
    MassDeleteGuard,
    /// The state store holds a sync-info format this build does not know.
    UnknownFormat,
    /// A state-store document is corrupt.
    StateCorrupt,
    /// Another writer committed this side meanwhile.
    StateConflict,
    /// Another process holds this side's lock.
    StateLocked,
    /// The state store refuses access (ACL, bad request).
    StateStore,
    /// The state store failed [`STATE_RETRY_BUDGET`] cycles in a row.
    StateStoreUnusable,
    /// A token can no longer be renewed or re-obtained.
    Token,
    /// The start-up checks found problems.
    StartupCheck,
}

impl FatalCause {
    /// The stable name used as the webhook's `kind` and in logs.
    pub fn kind(self) -> &'static str {
        match self {
            FatalCause::PermissionDenied => "permission-denied",
            FatalCause::Mount => "mount",
            FatalCause::Config => "config",
            FatalCause::OriginMountRecreated => "origin-mount-recreated",
            FatalCause::OriginMountMissing => "origin-mount-missing",
            FatalCause::PathCollision => "path-collision",
            FatalCause::MassDeleteGuard => "mass-delete-guard",
            FatalCause::UnknownFormat => "unknown-format",
            FatalCause::StateCorrupt => "state-corrupt",
            FatalCause::StateConflict => "state-conflict",
            FatalCause::StateLocked => "state-locked",
            FatalCause::StateStore => "state-store",
            FatalCause::StateStoreUnusable => "state-store-unusable",
            FatalCause::Token => "token",
            FatalCause::StartupCheck => "startup-check",
        }
    }
}

impl std::fmt::Display for FatalCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind())
    }
}

/// What a fault means for the cycle and the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultClass {
    /// Stop for good.
    Fatal(FatalCause),
    /// The server as a whole is unavailable: stop the cycle, retry next cycle.
    Unavailable,
    /// The state store failed transiently: stop the cycle, retry within the budget.
    StateStore,
    /// The side's lock was lost: abandon the cycle, wait as a standby.
    LockLost,
    /// Anything else: per secret, a per-secret failure; for the cycle, retry next cycle.
    Transient,
}

/// An engine error: its class and the message with its context.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Fault {
    /// What the fault means.
    pub class: FaultClass,
    /// The error with its context, outermost first.
    pub message: String,
    /// A finer kind than the class gives (`sealed`, `unreachable`), for [`Fault::kind`].
    detail: Option<&'static str>,
}

impl Fault {
    /// A fault of `class`.
    pub fn new(class: FaultClass, message: impl Into<String>) -> Self {
        Self { class, message: message.into(), detail: None }
    }

    /// What kind of fault this is, from a fixed vocabulary that never carries a path or an
    /// address (for `/healthz`; the message, with its details, goes to the logs): the fatal
    /// cause's [`FatalCause::kind`], `sealed`, `unreachable`, `unavailable`, `state-store`,
    /// `lock-lost` or `transient`.
    pub fn kind(&self) -> &'static str {
        match (self.class, self.detail) {
            (FaultClass::Fatal(cause), _) => cause.kind(),
            (_, Some(detail)) => detail,
            (FaultClass::Unavailable, None) => "unavailable",
            (FaultClass::StateStore, None) => "state-store",
            (FaultClass::LockLost, None) => "lock-lost",
            (FaultClass::Transient, None) => "transient",
        }
    }

    /// A fatal fault.
    pub fn fatal(cause: FatalCause, message: impl Into<String>) -> Self {
        Self::new(FaultClass::Fatal(cause), message)
    }

    /// A transient fault.
    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(FaultClass::Transient, message)
    }

    /// A Vault error, classified: permission and mount problems are fatal, a sealed or
    /// unreachable server stops the cycle, anything else is transient.
    pub fn vault(context: impl std::fmt::Display, e: VaultError) -> Self {
        let class = match &e {
            VaultError::PermissionDenied { .. } => FaultClass::Fatal(FatalCause::PermissionDenied),
            VaultError::MountNotFound { .. } | VaultError::NotKv { .. } => FaultClass::Fatal(FatalCause::Mount),
            VaultError::Config(_) => FaultClass::Fatal(FatalCause::Config),
            VaultError::LoginFailed { .. } => FaultClass::Fatal(FatalCause::Token),
            // A listing that could be cut short is never trusted: a human fixes the policy or
            // the server (the message says how).
            VaultError::PaginationLimited { .. } => FaultClass::Fatal(FatalCause::PermissionDenied),
            VaultError::PagingBroken { .. } => FaultClass::Fatal(FatalCause::Config),
            VaultError::Sealed { .. } | VaultError::Connection { .. } => FaultClass::Unavailable,
            _ => FaultClass::Transient,
        };
        let detail = match &e {
            VaultError::Sealed { .. } => Some("sealed"),
            VaultError::Connection { .. } => Some("unreachable"),
            _ => None,
        };
        Self { detail, ..Self::new(class, format!("{context}: {e}")) }
    }

    /// A state-store error, classified: a format, corruption, conflict, lock or access problem
    /// is fatal; anything else counts against [`STATE_RETRY_BUDGET`].
    pub fn state(context: impl std::fmt::Display, e: StateError) -> Self {
        let class = match &e {
            StateError::UnknownFormat { .. } => FaultClass::Fatal(FatalCause::UnknownFormat),
            StateError::Corrupt { .. } => FaultClass::Fatal(FatalCause::StateCorrupt),
            StateError::Conflict { .. } => FaultClass::Fatal(FatalCause::StateConflict),
            StateError::Locked { .. } => FaultClass::Fatal(FatalCause::StateLocked),
            StateError::LockLost { .. } => FaultClass::LockLost,
            // A reader outrun by a fast writer's commits: load again next cycle.
            StateError::RootChurn { .. } => FaultClass::StateStore,
            StateError::Consul(c) if !c.is_transient() => FaultClass::Fatal(FatalCause::StateStore),
            _ => FaultClass::StateStore,
        };
        Self::new(class, format!("{context}: {e}"))
    }

    /// A refused plan: always fatal (it needs a human).
    pub fn refusal(r: Refusal) -> Self {
        let cause = match &r {
            Refusal::OriginMountRecreated { .. } => FatalCause::OriginMountRecreated,
            Refusal::OriginMountMissing { .. } => FatalCause::OriginMountMissing,
            Refusal::PathCollision { .. } => FatalCause::PathCollision,
            Refusal::MassDelete { .. } => FatalCause::MassDeleteGuard,
        };
        Self::fatal(cause, r.to_string())
    }

    /// The same fault with `context` in front of its message.
    #[must_use]
    pub fn context(mut self, context: impl std::fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }

    /// The fatal cause, if the fault is fatal.
    pub fn fatal_cause(&self) -> Option<FatalCause> {
        match self.class {
            FaultClass::Fatal(c) => Some(c),
            _ => None,
        }
    }

    /// Whether this fault, met on one secret, stops the whole cycle (the same rule for writes
    /// and removals): a fatal fault or an unavailable server.
    pub fn stops_cycle(&self) -> bool {
        matches!(self.class, FaultClass::Fatal(_) | FaultClass::Unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vault_errors_are_classified_where_they_arise() {
        let denied = VaultError::PermissionDenied { request: "PUT secret/data/x".into(), message: String::new() };
        let f = Fault::vault("write", denied);
        assert_eq!(f.fatal_cause(), Some(FatalCause::PermissionDenied));
        assert!(f.stops_cycle());
        let missing = VaultError::MountNotFound { mount: "x/".into(), address: "http://127.0.0.1:1".into(), message: "no handler".into() };
        assert_eq!(Fault::vault("delete", missing).fatal_cause(), Some(FatalCause::Mount), "fatal for removals too");
        let sealed = VaultError::Sealed { request: "GET".into(), address: "http://127.0.0.1:1".into() };
        let f = Fault::vault("read", sealed);
        assert_eq!(f.class, FaultClass::Unavailable);
        assert_eq!(f.clone().context("destination `eu`").kind(), "sealed", "the kind names no address");
        assert!(f.stops_cycle());
        let other = VaultError::Server { request: "GET".into(), status: 500, message: "boom".into() };
        let f = Fault::vault("read", other);
        assert_eq!(f.class, FaultClass::Transient);
        assert!(!f.stops_cycle(), "a 500 on one secret is a per-secret failure");
    }

    #[test]
    fn state_errors_and_refusals_are_classified() {
        let f = Fault::state("load", StateError::UnknownFormat { path: "x".into(), found: 9, supported: 1 });
        assert_eq!(f.fatal_cause(), Some(FatalCause::UnknownFormat));
        let io = StateError::Io { path: "x".into(), action: "read", source: std::io::Error::other("disk") };
        assert_eq!(Fault::state("load", io).class, FaultClass::StateStore);
        let r = Refusal::MassDelete { destination: "eu".into(), deletes: 20, copies: 30, ratio: 0.5, mount: None };
        let f = Fault::refusal(r).context("destination `eu`");
        assert_eq!(f.fatal_cause().map(FatalCause::kind), Some("mass-delete-guard"));
        assert!(f.message.starts_with("destination `eu`: "), "{}", f.message);
    }
}

//! `vsync-state`: where each side keeps its sync info.
//!
//! One interface ([`StateStore`], module [`store`]) over backends implementing
//! [`StoreBackend`]:
//! - the embedded **file store** ([`FileStore`], module [`mod@file`]): one directory that may hold
//!   the origin side and several destination sides. Each side is locked on its own (an OS file
//!   lock held for the life of the process), so an origin process and destination processes can
//!   share the directory while two writers of the same side cannot. Documents are written
//!   atomically (temp file, fsync, rename, fsync of the directory), so a crash leaves the old or
//!   the new version, never a torn one;
//! - **Consul KV** ([`consul`]: a thin client; [`ConsulStore`], module [`consul_store`]):
//!   content-addressed parts under each side's prefix and one root per side swapped with a CAS;
//!   one writer per side through a session lock, with a second instance waiting as a hot
//!   standby ([`lock`]);
//! - the **memory store** ([`MemoryStore`], module [`memory`]): everything in process, for tests
//!   and the deterministic simulator, with hooks that inject the faults the other two suffer
//!   (transient failures, lost locks, parts collected under a reader).
//!
//! [`info`] stores bucketed sync info on any of them.

use std::path::{Path, PathBuf};

pub mod consul;
pub mod consul_store;
pub mod file;
pub mod info;
pub mod lock;
pub mod memory;
pub mod store;

pub use consul_store::ConsulStore;
pub use file::{FileStore, SideLock};
pub use lock::{Holder, LockOptions};
pub use memory::{MemoryLock, MemoryOp, MemoryStore};
pub use store::{BackendLock, BoxFuture, RootRead, StateStore, StoreBackend, StoreLock};

use thiserror::Error;

/// A state-store failure. Every variant names the file or side concerned.
#[derive(Debug, Error)]
pub enum StateError {
    /// An I/O operation failed.
    #[error("state store {path}: {action}: {source}")]
    Io {
        /// File or directory.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Another process holds this side's lock.
    #[error("state store {path}: side `{side}` is locked by another vsync process (only one writer per side)")]
    Locked {
        /// Lock file.
        path: PathBuf,
        /// Side name.
        side: String,
    },
    /// A document is not valid JSON of the expected shape.
    #[error("state store {path}: corrupt document: {message}")]
    Corrupt {
        /// File.
        path: PathBuf,
        /// Parser message.
        message: String,
    },
    /// A document has a format version this build does not understand.
    #[error("state store {path}: unknown sync-info format version {found} (this vsync understands {supported})")]
    UnknownFormat {
        /// File.
        path: PathBuf,
        /// Version found.
        found: u32,
        /// Version this build writes.
        supported: u32,
    },
    /// A side's root changed under every one of [`info::LOAD_ATTEMPTS`] loads in a row: its
    /// writer commits faster than this reader fetches the parts. Nothing is wrong with the
    /// stored info; transient, the next cycle loads again.
    #[error("{store}: side `{side}` was committed again during each of {attempts} loads in a row (its writer publishes faster than this process reads); retrying next cycle")]
    RootChurn {
        /// Side name.
        side: String,
        /// Store description.
        store: String,
        /// Loads attempted.
        attempts: u32,
    },
    /// The store failed transiently (the memory store's injected faults; a real backend reports
    /// its own error instead). Retrying later may help.
    #[error("{store}: {op} failed: {message}")]
    Unavailable {
        /// Store description.
        store: String,
        /// The operation that failed.
        op: &'static str,
        /// What happened.
        message: String,
    },
    /// A Consul request failed.
    #[error(transparent)]
    Consul(consul::ConsulError),
    /// Another writer replaced this side's root since it was read.
    #[error("{store}: side `{side}` was committed by another writer meanwhile (only one writer per side); nothing of this commit is visible")]
    Conflict {
        /// Side name.
        side: String,
        /// Store description.
        store: String,
    },
    /// This process no longer holds the side's lock (its Consul session ended or could not be
    /// renewed); another instance may be the writer now.
    #[error("{lock}: this process lost the lock of side `{side}` (its session ended or could not be renewed); nothing of this commit is visible")]
    LockLost {
        /// Side name.
        side: String,
        /// Store and lock description.
        lock: String,
    },
}

impl From<consul::ConsulError> for StateError {
    fn from(e: consul::ConsulError) -> Self {
        StateError::Consul(e)
    }
}

/// Result alias of this crate.
pub type Result<T, E = StateError> = std::result::Result<T, E>;

pub(crate) fn io<'a>(path: &'a Path, action: &'static str) -> impl FnOnce(std::io::Error) -> StateError + 'a {
    move |source| StateError::Io {
        path: path.to_owned(),
        action,
        source,
    }
}


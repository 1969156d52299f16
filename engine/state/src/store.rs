//! The state-store interface in sync-info terms: [`StateStore`], a cheap handle over any
//! [`StoreBackend`] (the file store, Consul, the in-memory store).
//!
//! A side (`origin`, `destination-eu`) owns one small **root** document, replaced atomically,
//! and immutable content-addressed **parts**. Everything a side writes lives under its own name,
//! so one side's garbage collection never touches another's.
//!
//! | | file store | Consul | memory |
//! |---|---|---|---|
//! | root | `<dir>/<side>.json` | `<prefix><side>/root` | per side |
//! | part | `<dir>/<side>.buckets/<sha256>.json` | `<prefix><side>/parts/<sha256>` | per side |
//! | lock | `<dir>/<side>.lock` | `<prefix><side>/lock` | per side |
//! | retired parts ([`crate::info`]) | `<dir>/<side>.retired.json` | `<prefix><side>/retired` | a document |
//! | root swap | temp file + fsync + rename | txn: `cas` on the root + `check-session` on the lock | version compare + holder check |
//! | one writer per side | OS file lock: a second process fails at once | session lock: a second process waits as a hot standby ([`crate::lock`]) | held lock: a second taker waits |
//! | root version | file modification time (ns) | `ModifyIndex` | store-wide counter |
//! | change notification | short poll of the root's version | blocking query on the root | in-process wake-up |
//!
//! The backends implement only the primitive operations ([`StoreBackend`], [`BackendLock`]);
//! what is common (side-name checks, skipping parts already stored, the probe) lives here once.

use std::any::Any;
use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::lock::{ConsulLock, Holder, LockOptions, Lost, OnWait};
use crate::memory::{MemoryLock, MemoryStore};
use crate::{ConsulStore, FileStore, Result, SideLock, StateError};

/// A boxed, sendable future: what the object-safe backend traits return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The primitive operations of one kind of state store. Side names reaching a backend are
/// already checked ([`StateStore`] does it), and a lock handed to it was taken from it.
///
/// Object safe: [`StateStore`] holds an `Arc<dyn StoreBackend>`.
pub trait StoreBackend: Debug + Send + Sync + 'static {
    /// The backend itself, for tests that reach behind the interface.
    fn as_any(&self) -> &dyn Any;

    /// Where this store is, for messages (never a credential).
    fn describe(&self) -> String;

    /// Requests sent so far by outcome, for metrics; `None` when the backend sends none.
    fn request_outcomes(&self) -> Option<[(&'static str, u64); 3]> {
        None
    }

    /// Identifies the counters of [`StoreBackend::request_outcomes`] (equal for stores sharing
    /// them); `None` when there are none.
    fn counters_id(&self) -> Option<usize> {
        None
    }

    /// Takes write access to `side`, waiting (reporting the holder to `on_wait`) or failing at
    /// once while another holds it, as the backend does.
    fn lock_side<'a>(&'a self, side: &'a str, options: &'a LockOptions, on_wait: OnWait<'a>) -> BoxFuture<'a, Result<StoreLock>>;

    /// Who holds `side`'s lock, when the backend can tell.
    fn lock_holder<'a>(&'a self, side: &'a str) -> BoxFuture<'a, Result<Option<String>>>;

    /// Reads document `name` of `side`; `None` if there is none.
    fn read_doc<'a>(&'a self, side: &'a str, name: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>>;

    /// Writes document `name` of `side` without a lock.
    fn write_doc<'a>(&'a self, side: &'a str, name: &'a str, bytes: &'a [u8]) -> BoxFuture<'a, Result<()>>;

    /// Removes document `name` of `side`; a missing one is fine.
    fn delete_doc<'a>(&'a self, side: &'a str, name: &'a str) -> BoxFuture<'a, Result<()>>;

    /// Writes document `name` of the lock's side only while the lock is held
    /// ([`StateError::LockLost`] otherwise, where the backend can tell).
    fn write_locked_doc<'a>(&'a self, lock: &'a StoreLock, name: &'a str, bytes: &'a [u8]) -> BoxFuture<'a, Result<()>>;

    /// Reads a side's root and its version; `None` if the side never committed.
    fn read_root<'a>(&'a self, side: &'a str) -> BoxFuture<'a, Result<Option<RootRead>>>;

    /// Reads one part; `None` if it is gone.
    fn read_part<'a>(&'a self, side: &'a str, hash: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>>;

    /// Hashes of the parts a side holds.
    fn list_parts<'a>(&'a self, side: &'a str) -> BoxFuture<'a, Result<Vec<String>>>;

    /// Writes parts of the lock's side (not empty; the caller skips stored ones).
    fn write_new_parts<'a>(&'a self, lock: &'a StoreLock, parts: Vec<(String, Vec<u8>)>) -> BoxFuture<'a, Result<()>>;

    /// Removes parts of the lock's side while the lock is held; missing ones are fine.
    fn remove_parts<'a>(&'a self, lock: &'a StoreLock, hashes: Vec<String>) -> BoxFuture<'a, Result<()>>;

    /// Replaces the lock's side's root if its version is still `expected` (`None`: absent),
    /// else [`StateError::Conflict`]; [`StateError::LockLost`] if the lock is gone.
    fn swap_root<'a>(&'a self, lock: &'a StoreLock, bytes: &'a [u8], expected: Option<u64>) -> BoxFuture<'a, Result<()>>;

    /// Waits until `side`'s root may have changed since `cursor` (0: at once) or `wait`
    /// passed; returns the root's version (0: absent) and the next cursor.
    fn watch_root<'a>(&'a self, side: &'a str, cursor: u64, wait: Duration) -> BoxFuture<'a, Result<(u64, u64)>>;

    /// Checks that this process can write, read, update and delete a document under `side`,
    /// through the document operations (a probe with a unique name, removed afterwards).
    fn probe<'a>(&'a self, side: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let name = format!("probe-{}-{}", std::process::id(), fastrand::u32(..));
            for (value, what) in [(&b"1"[..], "write"), (&b"2"[..], "update")] {
                self.write_doc(side, &name, value).await?;
                if self.read_doc(side, &name).await?.as_deref() != Some(value) {
                    return Err(StateError::Corrupt {
                        path: format!("{}: {side} probe", self.describe()).into(),
                        message: format!("the probe read back different content after {what}"),
                    });
                }
            }
            self.delete_doc(side, &name).await
        })
    }
}

/// A held side lock of one backend ([`StoreLock`] wraps it).
pub trait BackendLock: Debug + Send + Sync + 'static {
    /// The lock itself, so its backend can reach its own kind ([`StoreLock::downcast_ref`]).
    fn as_any(&self) -> &dyn Any;

    /// The side this lock is for.
    fn side(&self) -> &str;

    /// Whether this process still holds it, as far as it knows.
    fn is_held(&self) -> bool;

    /// Resolves once the lock is lost (never, for a lock that cannot be).
    fn lost(&self) -> Lost;

    /// The lock, for messages.
    fn describe(&self) -> String;

    /// After a loss: waits until the lock is held again (a held lock returns at once).
    fn regain<'a>(&'a mut self, on_wait: OnWait<'a>) -> BoxFuture<'a, Result<()>>;

    /// Gives the lock up (bounded, best effort).
    fn release(self: Box<Self>) -> BoxFuture<'static, ()>;
}

/// Write access to one side ([`crate::lock`]): the file store's OS lock, held for the life of
/// the process, a Consul session lock, which can be lost (and regained), or a memory lock.
#[derive(Debug)]
pub struct StoreLock {
    inner: Box<dyn BackendLock>,
}

impl StoreLock {
    /// Wraps a backend's lock.
    pub fn new(lock: impl BackendLock) -> Self {
        Self { inner: Box::new(lock) }
    }

    /// The side this lock is for.
    pub fn side(&self) -> &str {
        self.inner.side()
    }

    /// Whether this process still holds the lock (a file lock always does).
    pub fn is_held(&self) -> bool {
        self.inner.is_held()
    }

    /// Resolves once the lock is lost: abandon the cycle, it cannot commit. Never, for a file
    /// lock. The future owns what it needs, so it can race a cycle that borrows the lock.
    pub fn lost(&self) -> Lost {
        self.inner.lost()
    }

    /// The lock, for messages (`consul key `vsync/origin/lock``, `file /state/origin.lock`).
    pub fn describe(&self) -> String {
        self.inner.describe()
    }

    /// After the lock was lost: waits as a standby until it is held again, reporting the
    /// holder to `on_wait` as it changes. A held lock (and any file lock) returns at once.
    pub async fn regain(&mut self, on_wait: OnWait<'_>) -> Result<()> {
        self.inner.regain(on_wait).await
    }

    /// Gives the lock up (Consul: releases the key, so a standby takes over at once, and ends
    /// the session; bounded, best effort). Dropping a lock releases it too, in the background.
    pub async fn release(self) {
        self.inner.release().await
    }

    /// The backend's own lock, if it is of kind `T`.
    pub fn downcast_ref<T: BackendLock>(&self) -> Option<&T> {
        self.inner.as_any().downcast_ref()
    }

    /// The Consul session lock, if this is one.
    pub fn as_consul(&self) -> Option<&ConsulLock> {
        self.downcast_ref()
    }

    /// The file store's OS lock, if this is one.
    pub fn as_file(&self) -> Option<&SideLock> {
        self.downcast_ref()
    }

    /// The memory store's lock, if this is one.
    pub fn as_memory(&self) -> Option<&MemoryLock> {
        self.downcast_ref()
    }

    /// [`StateError::LockLost`] for this lock in store `store` (its description).
    pub fn lost_error(&self, store: &str) -> StateError {
        StateError::LockLost {
            side: self.side().to_owned(),
            lock: format!("{store}: {}", self.describe()),
        }
    }
}

/// The backend's own kind of `lock`, or an error: a lock of one store used with another.
pub(crate) fn lock_as<T: BackendLock>(lock: &StoreLock) -> Result<&T> {
    lock.downcast_ref().ok_or_else(|| StateError::Corrupt {
        path: lock.side().into(),
        message: "a lock of one kind of store was used with another kind".into(),
    })
}

/// A root as read, with the version a later swap must find.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootRead {
    /// The root document.
    pub bytes: Vec<u8>,
    /// Its version (opaque; changes with every swap).
    pub version: u64,
}

/// A state store of any kind; cheap to clone (clones share the backend).
#[derive(Debug, Clone)]
pub struct StateStore {
    backend: Arc<dyn StoreBackend>,
}

fn valid_side(side: &str) -> Result<()> {
    if side.is_empty() || !side.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        return Err(StateError::Corrupt {
            path: side.into(),
            message: "a side name may only hold letters, digits, `-`, `_` and `.`".into(),
        });
    }
    Ok(())
}

/// Constructors and access to the backend.
impl StateStore {
    /// A store over any backend.
    pub fn from_backend(backend: Arc<dyn StoreBackend>) -> Self {
        Self { backend }
    }

    /// The embedded file store.
    pub fn file(store: FileStore) -> Self {
        Self::from_backend(Arc::new(store))
    }

    /// Consul KV.
    pub fn consul(store: ConsulStore) -> Self {
        Self::from_backend(Arc::new(store))
    }

    /// The in-memory store; `store` stays a handle on the same state (its fault hooks).
    pub fn memory(store: MemoryStore) -> Self {
        Self::from_backend(Arc::new(store))
    }

    /// [`StateStore::file`], spelled as the variant of the former enum so call sites written
    /// against it (`StateStore::File(FileStore::open(..)?)`) keep compiling.
    #[allow(non_snake_case)]
    pub fn File(store: FileStore) -> Self {
        Self::file(store)
    }

    /// [`StateStore::consul`], spelled as the variant of the former enum (see
    /// [`StateStore::File`]).
    #[allow(non_snake_case)]
    pub fn Consul(store: ConsulStore) -> Self {
        Self::consul(store)
    }

    /// The backend.
    pub fn backend(&self) -> &dyn StoreBackend {
        &*self.backend
    }

    /// The file store, if this is one.
    pub fn as_file(&self) -> Option<&FileStore> {
        self.backend.as_any().downcast_ref()
    }

    /// The Consul store, if this is one.
    pub fn as_consul(&self) -> Option<&ConsulStore> {
        self.backend.as_any().downcast_ref()
    }

    /// The memory store, if this is one.
    pub fn as_memory(&self) -> Option<&MemoryStore> {
        self.backend.as_any().downcast_ref()
    }
}

/// The operations, in sync-info terms.
impl StateStore {
    /// Consul attempts so far by outcome (`None` for the other stores); for metrics.
    pub fn consul_request_outcomes(&self) -> Option<[(&'static str, u64); 3]> {
        self.backend.request_outcomes()
    }

    /// Identifies the Consul counters (equal for stores sharing a client); `None` otherwise.
    pub fn consul_counters_id(&self) -> Option<usize> {
        self.backend.counters_id()
    }

    /// Where this store is, for messages (no token).
    pub fn describe(&self) -> String {
        self.backend.describe()
    }

    /// Takes write access to `side` with the default [`LockOptions`], waiting while another
    /// process holds it on Consul (file store: fails at once with [`StateError::Locked`]).
    pub async fn lock_side(&self, side: &str) -> Result<StoreLock> {
        self.lock_side_with(side, &LockOptions::default(), &mut |_: &Holder| {}).await
    }

    /// Takes write access to `side`. File store: the OS lock, or [`StateError::Locked`] at once.
    /// Consul: a session lock; while another process holds it, this one waits as a hot standby
    /// and `on_wait` hears who holds it (each time that changes). Cancel the future (a timeout,
    /// a signal) to stop waiting; the waiting session is then destroyed.
    pub async fn lock_side_with(&self, side: &str, options: &LockOptions, on_wait: OnWait<'_>) -> Result<StoreLock> {
        valid_side(side)?;
        self.backend.lock_side(side, options, on_wait).await
    }

    /// Checks that this process can write, read, update and delete a document under `side`
    /// (a probe with a unique name, removed afterwards; the side's sync info is not touched,
    /// and no lock is needed, so it also works while the side's role is running).
    pub async fn probe(&self, side: &str) -> Result<()> {
        valid_side(side)?;
        self.backend.probe(side).await
    }

    /// Who holds `side`'s Consul lock (`<host> pid <pid>`), `None` when nobody does. The file
    /// store's OS lock is only visible on its machine: always `None`.
    pub async fn lock_holder(&self, side: &str) -> Result<Option<String>> {
        valid_side(side)?;
        self.backend.lock_holder(side).await
    }

    /// Reads a small document `name` of `side` outside the sync info (e.g. `repair`), `None`
    /// if there is none. File store: `<dir>/<side>.<name>.json`; Consul: `<prefix><side>/<name>`.
    pub async fn read_doc(&self, side: &str, name: &str) -> Result<Option<Vec<u8>>> {
        valid_side(side)?;
        self.backend.read_doc(side, name).await
    }

    /// Writes a small document `name` of `side` outside the sync info. It needs no lock: a
    /// request to a side (`vsync verify --repair`) is written by another process.
    pub async fn write_doc(&self, side: &str, name: &str, bytes: &[u8]) -> Result<()> {
        valid_side(side)?;
        self.backend.write_doc(side, name, bytes).await
    }

    /// Writes a small document `name` of the lock's side that only the lock's holder writes
    /// (e.g. the retired-parts record of [`crate::info`]). Consul: one txn with a
    /// `check-session` on the lock, so a writer that lost its lock never overwrites its
    /// successor's document ([`StateError::LockLost`]).
    pub async fn write_locked_doc(&self, lock: &StoreLock, name: &str, bytes: &[u8]) -> Result<()> {
        self.backend.write_locked_doc(lock, name, bytes).await
    }

    /// Removes a document written by [`StateStore::write_doc`]; no error if it is missing.
    pub async fn delete_doc(&self, side: &str, name: &str) -> Result<()> {
        valid_side(side)?;
        self.backend.delete_doc(side, name).await
    }

    /// Reads a side's root; `None` if the side never committed.
    pub async fn read_root(&self, side: &str) -> Result<Option<RootRead>> {
        valid_side(side)?;
        self.backend.read_root(side).await
    }

    /// Reads one part of a side; `None` if it is gone.
    pub async fn read_part(&self, side: &str, hash: &str) -> Result<Option<Vec<u8>>> {
        self.backend.read_part(side, hash).await
    }

    /// Hashes of the parts a side holds.
    pub async fn list_parts(&self, side: &str) -> Result<Vec<String>> {
        self.backend.list_parts(side).await
    }

    /// Writes parts that are not stored yet (they are immutable: same hash, same bytes).
    /// Consul: batched into transactions within the op and body limits.
    pub async fn write_parts(&self, lock: &StoreLock, parts: Vec<(String, Vec<u8>)>) -> Result<usize> {
        let existing: std::collections::HashSet<String> = self.list_parts(lock.side()).await?.into_iter().collect();
        let missing: Vec<(String, Vec<u8>)> = parts.into_iter().filter(|(h, _)| !existing.contains(h)).collect();
        self.write_new_parts(lock, missing).await
    }

    /// Writes parts the caller knows are not stored yet (no listing first); returns how many.
    pub async fn write_new_parts(&self, lock: &StoreLock, missing: Vec<(String, Vec<u8>)>) -> Result<usize> {
        let written = missing.len();
        if written > 0 {
            self.backend.write_new_parts(lock, missing).await?;
        }
        Ok(written)
    }

    /// Replaces a side's root if its version is still `expected` (`None`: the side must not
    /// exist yet), else [`StateError::Conflict`]. Consul: one txn with a `cas` on the root and
    /// a `check-session` on the lock, so a writer whose lock is gone commits nothing
    /// ([`StateError::LockLost`]). File store: the version is compared under the OS lock.
    pub async fn swap_root(&self, lock: &StoreLock, bytes: &[u8], expected: Option<u64>) -> Result<()> {
        self.backend.swap_root(lock, bytes, expected).await
    }

    /// Removes parts of a side (missing ones are fine). Consul: each batch carries a
    /// `check-session` on the lock, so a writer that lost its lock never deletes parts its
    /// successor may already reference ([`StateError::LockLost`]).
    pub async fn remove_parts(&self, lock: &StoreLock, hashes: Vec<String>) -> Result<()> {
        self.backend.remove_parts(lock, hashes).await
    }

    /// Waits until the root of `side` may have changed since `cursor` (0: return at once) or
    /// `wait` passed. Returns the root's version now (0: absent) and the cursor for the next
    /// call. May return with no change (Consul allows spurious wake-ups): callers compare
    /// versions. A Consul index that went backwards (snapshot restore) resets the cursor.
    pub async fn watch_root(&self, side: &str, cursor: u64, wait: Duration) -> Result<(u64, u64)> {
        valid_side(side)?;
        self.backend.watch_root(side, cursor, wait).await
    }
}

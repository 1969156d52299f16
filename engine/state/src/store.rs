//! The state-store interface in sync-info terms, over either backend.
//!
//! A side (`origin`, `destination-eu`) owns one small **root** document, replaced atomically,
//! and immutable content-addressed **parts**. Everything a side writes lives under its own name,
//! so one side's garbage collection never touches another's.
//!
//! | | file store | Consul |
//! |---|---|---|
//! | root | `<dir>/<side>.json` | `<prefix><side>/root` |
//! | part | `<dir>/<side>.buckets/<sha256>.json` | `<prefix><side>/parts/<sha256>` |
//! | lock | `<dir>/<side>.lock` | `<prefix><side>/lock` |
//! | retired parts ([`crate::info`]) | `<dir>/<side>.retired.json` | `<prefix><side>/retired` |
//! | root swap | temp file + fsync + rename | txn: `cas` on the root + `check-session` on the lock |
//! | one writer per side | OS file lock: a second process fails at once | session lock: a second process waits as a hot standby ([`crate::lock`]) |
//! | root version | file modification time (ns) | `ModifyIndex` |
//! | change notification | short poll of the root's version | blocking query on the root |

use std::time::{Duration, Instant, UNIX_EPOCH};

use crate::consul::{ConsulClient, ConsulError, MAX_VALUE_SIZE, TXN_MAX_OPS, TxnOp, TxnOutcome};
use crate::lock::{ConsulLock, Holder, LockOptions, Lost, OnWait};
use crate::{FileStore, Result, SideLock, StateError};

/// A state store of either kind.
#[derive(Debug, Clone)]
pub enum StateStore {
    /// Embedded directory (one machine).
    File(FileStore),
    /// Consul KV.
    Consul(ConsulStore),
}

/// Consul backend: a client and the key prefix (ends with `/`).
#[derive(Debug, Clone)]
pub struct ConsulStore {
    client: ConsulClient,
    prefix: String,
}

/// Write access to one side ([`crate::lock`]): the file store's OS lock, held for the life of
/// the process, or a Consul session lock, which can be lost (and regained).
#[derive(Debug)]
pub enum StoreLock {
    /// File store: the OS lock.
    File(SideLock),
    /// Consul: the session lock on `<prefix><side>/lock` (boxed: it is several times the
    /// size of the file lock).
    Consul(Box<ConsulLock>),
}

impl StoreLock {
    /// The side this lock is for.
    pub fn side(&self) -> &str {
        match self {
            StoreLock::File(l) => l.side(),
            StoreLock::Consul(l) => l.side(),
        }
    }

    /// Whether this process still holds the lock (a file lock always does).
    pub fn is_held(&self) -> bool {
        match self {
            StoreLock::File(_) => true,
            StoreLock::Consul(l) => l.is_held(),
        }
    }

    /// Resolves once the lock is lost: abandon the cycle, it cannot commit. Never, for a file
    /// lock. The future owns what it needs, so it can race a cycle that borrows the lock.
    pub fn lost(&self) -> Lost {
        match self {
            StoreLock::File(_) => Box::pin(std::future::pending()),
            StoreLock::Consul(l) => l.lost(),
        }
    }

    /// The lock, for messages (`consul key `vsync/origin/lock``, `file /state/origin.lock`).
    pub fn describe(&self) -> String {
        match self {
            StoreLock::File(l) => format!("file {}", l.path().display()),
            StoreLock::Consul(l) => format!("consul key `{}`", l.key()),
        }
    }

    /// After the lock was lost: waits as a standby until it is held again, reporting the
    /// holder to `on_wait` as it changes. A held lock (and any file lock) returns at once.
    pub async fn regain(&mut self, on_wait: OnWait<'_>) -> Result<()> {
        match self {
            StoreLock::File(_) => Ok(()),
            StoreLock::Consul(l) => l.regain(on_wait).await,
        }
    }

    /// Gives the lock up (Consul: releases the key, so a standby takes over at once, and ends
    /// the session; bounded, best effort). Dropping a lock releases it too, in the background.
    pub async fn release(self) {
        match self {
            StoreLock::File(l) => drop(l),
            StoreLock::Consul(l) => (*l).release().await,
        }
    }

    pub(crate) fn lost_error(&self, store: &StateStore) -> StateError {
        StateError::LockLost {
            side: self.side().to_owned(),
            lock: format!("{}: {}", store.describe(), self.describe()),
        }
    }
}

/// A root as read, with the version a later swap must find.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootRead {
    /// The root document.
    pub bytes: Vec<u8>,
    /// Its version (opaque; changes with every swap).
    pub version: u64,
}

impl ConsulStore {
    /// A Consul store under `prefix` (a trailing `/` is added when missing).
    pub fn new(client: ConsulClient, prefix: &str) -> Result<Self> {
        let mut prefix = prefix.trim_start_matches('/').to_owned();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        if !prefix.is_empty() {
            crate::consul::validate_key(&prefix, true)?;
        }
        Ok(Self { client, prefix })
    }

    fn root_key(&self, side: &str) -> String {
        format!("{}{side}/root", self.prefix)
    }

    fn parts_prefix(&self, side: &str) -> String {
        format!("{}{side}/parts/", self.prefix)
    }

    fn lock_key(&self, side: &str) -> String {
        format!("{}{side}/lock", self.prefix)
    }

    /// The client (for checks and tests).
    pub fn client(&self) -> &ConsulClient {
        &self.client
    }
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

fn file_version(meta: &std::fs::Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(1, |d| d.as_nanos() as u64)
}

impl StateStore {
    /// Consul attempts so far by outcome (`None` for the file store); for metrics.
    pub fn consul_request_outcomes(&self) -> Option<[(&'static str, u64); 3]> {
        match self {
            StateStore::File(_) => None,
            StateStore::Consul(c) => Some(c.client.request_outcomes()),
        }
    }

    /// Identifies the Consul counters (equal for stores sharing a client); `None` for files.
    pub fn consul_counters_id(&self) -> Option<usize> {
        match self {
            StateStore::File(_) => None,
            StateStore::Consul(c) => Some(c.client.counters_id()),
        }
    }

    /// Where this store is, for messages (no token).
    pub fn describe(&self) -> String {
        match self {
            StateStore::File(f) => format!("file store {}", f.dir().display()),
            StateStore::Consul(c) => format!("consul {} prefix `{}`", c.client.address(), c.prefix),
        }
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
        match self {
            StateStore::File(f) => f.lock_side(side).map(StoreLock::File),
            StateStore::Consul(c) => ConsulLock::acquire(&c.client, side, c.lock_key(side), options.clone(), on_wait)
                .await
                .map(|l| StoreLock::Consul(Box::new(l))),
        }
    }

    /// Checks that this process can write, read, update and delete a document under `side`
    /// (a probe with a unique name, removed afterwards; the side's sync info is not touched,
    /// and no lock is needed, so it also works while the side's role is running).
    pub async fn probe(&self, side: &str) -> Result<()> {
        valid_side(side)?;
        let name = format!("probe-{}-{}", std::process::id(), fastrand::u32(..));
        let mismatch = |what: &str| StateError::Corrupt {
            path: format!("{}: {side} probe", self.describe()).into(),
            message: format!("the probe read back different content after {what}"),
        };
        match self {
            StateStore::File(f) => {
                let doc = format!("{side}.{name}");
                f.write_atomic(&doc, b"1")?;
                let back = std::fs::read(f.doc_path(&doc)).map_err(crate::io(&f.doc_path(&doc), "read"))?;
                if back != b"1" {
                    return Err(mismatch("write"));
                }
                f.write_atomic(&doc, b"2")?;
                let back = std::fs::read(f.doc_path(&doc)).map_err(crate::io(&f.doc_path(&doc), "read"))?;
                if back != b"2" {
                    return Err(mismatch("update"));
                }
                f.remove(&doc)
            }
            StateStore::Consul(c) => {
                let key = format!("{}{side}/{name}", c.prefix);
                c.client.put(&key, b"1").await?;
                if c.client.get(&key).await?.data.map(|e| e.value) != Some(b"1".to_vec()) {
                    return Err(mismatch("write"));
                }
                c.client.put(&key, b"2").await?;
                if c.client.get(&key).await?.data.map(|e| e.value) != Some(b"2".to_vec()) {
                    return Err(mismatch("update"));
                }
                c.client.delete(&key).await?;
                Ok(())
            }
        }
    }

    /// Who holds `side`'s Consul lock (`<host> pid <pid>`), `None` when nobody does. The file
    /// store's OS lock is only visible on its machine: always `None`.
    pub async fn lock_holder(&self, side: &str) -> Result<Option<String>> {
        valid_side(side)?;
        match self {
            StateStore::File(_) => Ok(None),
            StateStore::Consul(c) => Ok(c
                .client
                .get(&c.lock_key(side))
                .await?
                .data
                .filter(|e| e.session.is_some())
                .map(|e| String::from_utf8_lossy(&e.value).into_owned())),
        }
    }

    /// Reads a small document `name` of `side` outside the sync info (e.g. `repair`), `None`
    /// if there is none. File store: `<dir>/<side>.<name>.json`; Consul: `<prefix><side>/<name>`.
    pub async fn read_doc(&self, side: &str, name: &str) -> Result<Option<Vec<u8>>> {
        valid_side(side)?;
        match self {
            StateStore::File(f) => {
                let path = f.doc_path(&format!("{side}.{name}"));
                match std::fs::read(&path) {
                    Ok(b) => Ok(Some(b)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(crate::io(&path, "read")(e)),
                }
            }
            StateStore::Consul(c) => Ok(c.client.get(&format!("{}{side}/{name}", c.prefix)).await?.data.map(|e| e.value)),
        }
    }

    /// Writes a small document `name` of `side` outside the sync info. It needs no lock: a
    /// request to a side (`vsync verify --repair`) is written by another process.
    pub async fn write_doc(&self, side: &str, name: &str, bytes: &[u8]) -> Result<()> {
        valid_side(side)?;
        match self {
            StateStore::File(f) => f.write_atomic(&format!("{side}.{name}"), bytes),
            StateStore::Consul(c) => Ok(c.client.put(&format!("{}{side}/{name}", c.prefix), bytes).await?),
        }
    }

    /// Writes a small document `name` of the lock's side that only the lock's holder writes
    /// (e.g. the retired-parts record of [`crate::info`]). Consul: one txn with a
    /// `check-session` on the lock, so a writer that lost its lock never overwrites its
    /// successor's document ([`StateError::LockLost`]).
    pub async fn write_locked_doc(&self, lock: &StoreLock, name: &str, bytes: &[u8]) -> Result<()> {
        let side = lock.side();
        match (self, lock) {
            (StateStore::File(f), StoreLock::File(_)) => f.write_atomic(&format!("{side}.{name}"), bytes),
            (StateStore::Consul(c), StoreLock::Consul(l)) => {
                let key = format!("{}{side}/{name}", c.prefix);
                let ops = [
                    TxnOp::Set {
                        key: key.clone(),
                        value: bytes.to_vec(),
                    },
                    TxnOp::CheckSession {
                        key: c.lock_key(side),
                        session: l.session().to_owned(),
                    },
                ];
                if ops.iter().map(TxnOp::body_cost).sum::<usize>() > MAX_VALUE_SIZE - 16 * 1024 {
                    return Err(StateError::Consul(ConsulError::TooLarge {
                        op: "txn",
                        key,
                        message: format!("{} bytes do not fit a transaction once base64-encoded", bytes.len()),
                    }));
                }
                match c.client.txn(&ops).await? {
                    TxnOutcome::Committed(_) => Ok(()),
                    TxnOutcome::RolledBack(errors) => Err(permission_denied(c, &errors).unwrap_or_else(|| {
                        if errors.iter().any(|(i, _)| *i == 1) { lock.lost_error(self) } else { rolled_back(c, &errors) }
                    })),
                }
            }
            _ => Err(mismatched(side)),
        }
    }

    /// Removes a document written by [`StateStore::write_doc`]; no error if it is missing.
    pub async fn delete_doc(&self, side: &str, name: &str) -> Result<()> {
        valid_side(side)?;
        match self {
            StateStore::File(f) => {
                let doc = format!("{side}.{name}");
                if f.exists(&doc) { f.remove(&doc) } else { Ok(()) }
            }
            StateStore::Consul(c) => Ok(c.client.delete(&format!("{}{side}/{name}", c.prefix)).await?),
        }
    }

    /// Reads a side's root; `None` if the side never committed.
    pub async fn read_root(&self, side: &str) -> Result<Option<RootRead>> {
        valid_side(side)?;
        match self {
            StateStore::File(f) => {
                let path = f.doc_path(side);
                let file = match std::fs::File::open(&path) {
                    Ok(file) => file,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(crate::io(&path, "open")(e)),
                };
                // Version and bytes from the same open file: a rename in between cannot mix them.
                let meta = file.metadata().map_err(crate::io(&path, "stat"))?;
                let bytes = std::io::read_to_string(file).map_err(crate::io(&path, "read"))?;
                Ok(Some(RootRead {
                    bytes: bytes.into_bytes(),
                    version: file_version(&meta),
                }))
            }
            StateStore::Consul(c) => {
                let read = c.client.get(&c.root_key(side)).await?;
                Ok(read.data.map(|e| RootRead {
                    bytes: e.value,
                    version: e.modify_index,
                }))
            }
        }
    }

    /// Reads one part of a side; `None` if it is gone.
    pub async fn read_part(&self, side: &str, hash: &str) -> Result<Option<Vec<u8>>> {
        match self {
            StateStore::File(f) => {
                let path = f.doc_path(&part_name(side, hash));
                match std::fs::read(&path) {
                    Ok(b) => Ok(Some(b)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(crate::io(&path, "read")(e)),
                }
            }
            StateStore::Consul(c) => {
                let key = format!("{}{hash}", c.parts_prefix(side));
                Ok(c.client.get(&key).await?.data.map(|e| e.value))
            }
        }
    }

    /// Hashes of the parts a side holds.
    pub async fn list_parts(&self, side: &str) -> Result<Vec<String>> {
        match self {
            StateStore::File(f) => f.list(&format!("{side}.buckets")),
            StateStore::Consul(c) => {
                let prefix = c.parts_prefix(side);
                let keys = c.client.keys(&prefix).await?.data;
                Ok(keys
                    .into_iter()
                    .filter_map(|k| k.strip_prefix(&prefix).map(str::to_owned))
                    .filter(|k| !k.contains('/'))
                    .collect())
            }
        }
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
        let side = lock.side();
        let written = missing.len();
        if written == 0 {
            return Ok(0);
        }
        match (self, lock) {
            (StateStore::File(f), StoreLock::File(l)) => {
                for (hash, bytes) in missing {
                    f.write_raw(l, &part_name(side, &hash), &bytes)?;
                }
            }
            (StateStore::Consul(c), _) => {
                let prefix = c.parts_prefix(side);
                // Leave headroom under the body limit for the JSON around the ops.
                let budget = MAX_VALUE_SIZE - 16 * 1024;
                let mut batch: Vec<TxnOp> = Vec::new();
                let mut cost = 0;
                for (hash, bytes) in missing {
                    let op = TxnOp::Set {
                        key: format!("{prefix}{hash}"),
                        value: bytes,
                    };
                    if op.body_cost() > budget {
                        // Too big for a txn body once base64-encoded; a plain PUT takes up to
                        // the value limit itself.
                        if let TxnOp::Set { key, value } = &op {
                            c.client.put(key, value).await?;
                        }
                        continue;
                    }
                    if batch.len() == TXN_MAX_OPS || cost + op.body_cost() > budget {
                        commit_batch(c, std::mem::take(&mut batch)).await?;
                        cost = 0;
                    }
                    cost += op.body_cost();
                    batch.push(op);
                }
                commit_batch(c, batch).await?;
            }
            (StateStore::File(_), StoreLock::Consul(_)) => return Err(mismatched(side)),
        }
        Ok(written)
    }

    /// Replaces a side's root if its version is still `expected` (`None`: the side must not
    /// exist yet), else [`StateError::Conflict`]. Consul: one txn with a `cas` on the root and
    /// a `check-session` on the lock, so a writer whose lock is gone commits nothing
    /// ([`StateError::LockLost`]). File store: the version is compared under the OS lock.
    pub async fn swap_root(&self, lock: &StoreLock, bytes: &[u8], expected: Option<u64>) -> Result<()> {
        let side = lock.side();
        let conflict = || StateError::Conflict {
            side: side.to_owned(),
            store: self.describe(),
        };
        match (self, lock) {
            (StateStore::File(f), StoreLock::File(l)) => {
                let now = std::fs::metadata(f.doc_path(side)).ok().map(|m| file_version(&m));
                if now != expected {
                    return Err(conflict());
                }
                f.write_raw(l, side, bytes)
            }
            (StateStore::Consul(c), StoreLock::Consul(l)) => {
                if !l.is_held() {
                    return Err(lock.lost_error(self));
                }
                let key = c.root_key(side);
                let ops = [
                    TxnOp::Cas {
                        key: key.clone(),
                        value: bytes.to_vec(),
                        index: expected.unwrap_or(0),
                    },
                    TxnOp::CheckSession {
                        key: c.lock_key(side),
                        session: l.session().to_owned(),
                    },
                ];
                let errors = match c.client.txn(&ops).await? {
                    TxnOutcome::Committed(_) => return Ok(()),
                    TxnOutcome::RolledBack(errors) => errors,
                };
                if let Some(denied) = permission_denied(c, &errors) {
                    return Err(denied);
                }
                // A retried txn whose first attempt landed reads as a failed CAS: accept it
                // when the stored root is exactly ours.
                if c.client.get(&key).await?.data.is_some_and(|e| e.value == bytes) {
                    return Ok(());
                }
                if errors.iter().any(|(i, _)| *i == 1) {
                    return Err(lock.lost_error(self));
                }
                Err(conflict())
            }
            _ => Err(mismatched(side)),
        }
    }

    /// Removes parts of a side (missing ones are fine). Consul: each batch carries a
    /// `check-session` on the lock, so a writer that lost its lock never deletes parts its
    /// successor may already reference ([`StateError::LockLost`]).
    pub async fn remove_parts(&self, lock: &StoreLock, hashes: Vec<String>) -> Result<()> {
        let side = lock.side();
        match (self, lock) {
            (StateStore::File(f), StoreLock::File(_)) => {
                for h in hashes {
                    f.remove(&part_name(side, &h))?;
                }
            }
            (StateStore::Consul(c), StoreLock::Consul(l)) => {
                let prefix = c.parts_prefix(side);
                for chunk in hashes.chunks(TXN_MAX_OPS - 1) {
                    let mut ops = vec![TxnOp::CheckSession {
                        key: c.lock_key(side),
                        session: l.session().to_owned(),
                    }];
                    ops.extend(chunk.iter().map(|h| TxnOp::Delete {
                        key: format!("{prefix}{h}"),
                    }));
                    if let TxnOutcome::RolledBack(errors) = c.client.txn(&ops).await? {
                        if let Some(denied) = permission_denied(c, &errors) {
                            return Err(denied);
                        }
                        return Err(if errors.iter().any(|(i, _)| *i == 0) { lock.lost_error(self) } else { rolled_back(c, &errors) });
                    }
                }
            }
            _ => return Err(mismatched(side)),
        }
        Ok(())
    }

    /// Waits until the root of `side` may have changed since `cursor` (0: return at once) or
    /// `wait` passed. Returns the root's version now (0: absent) and the cursor for the next
    /// call. May return with no change (Consul allows spurious wake-ups): callers compare
    /// versions. A Consul index that went backwards (snapshot restore) resets the cursor.
    pub async fn watch_root(&self, side: &str, cursor: u64, wait: Duration) -> Result<(u64, u64)> {
        valid_side(side)?;
        match self {
            StateStore::File(f) => {
                let path = f.doc_path(side);
                let deadline = Instant::now() + wait;
                loop {
                    let now = std::fs::metadata(&path).map(|m| file_version(&m)).unwrap_or(0);
                    if cursor == 0 || now != cursor || Instant::now() >= deadline {
                        return Ok((now, now.max(1)));
                    }
                    tokio::time::sleep(Duration::from_millis(100).min(wait)).await;
                }
            }
            StateStore::Consul(c) => {
                let read = if cursor == 0 {
                    c.client.get(&c.root_key(side)).await?
                } else {
                    c.client.get_blocking(&c.root_key(side), cursor, wait).await?
                };
                let next = if read.index < cursor { 0 } else { read.index.max(1) };
                Ok((read.data.map_or(0, |e| e.modify_index), next))
            }
        }
    }
}

async fn commit_batch(c: &ConsulStore, ops: Vec<TxnOp>) -> Result<()> {
    if ops.is_empty() {
        return Ok(());
    }
    match c.client.txn(&ops).await? {
        TxnOutcome::Committed(_) => Ok(()),
        TxnOutcome::RolledBack(errors) => Err(permission_denied(c, &errors).unwrap_or_else(|| rolled_back(c, &errors))),
    }
}

fn txn_message(errors: &[(usize, String)]) -> String {
    errors
        .iter()
        .take(3)
        .map(|(i, w)| format!("op {i}: {w}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Inside a txn an ACL denial is a per-op error (409), not a 403.
fn permission_denied(c: &ConsulStore, errors: &[(usize, String)]) -> Option<StateError> {
    errors.iter().any(|(_, w)| w.contains("Permission denied")).then(|| {
        StateError::Consul(ConsulError::Forbidden {
            op: "txn",
            key: c.prefix.clone(),
            message: txn_message(errors),
        })
    })
}

fn rolled_back(c: &ConsulStore, errors: &[(usize, String)]) -> StateError {
    StateError::Consul(ConsulError::Status {
        op: "txn",
        key: c.prefix.clone(),
        status: 409,
        message: txn_message(errors),
    })
}

fn mismatched(side: &str) -> StateError {
    StateError::Corrupt {
        path: side.into(),
        message: "a lock of one kind of store was used with the other kind".into(),
    }
}

/// File-store name of a part.
pub(crate) fn part_name(side: &str, hash: &str) -> String {
    format!("{side}.buckets/{hash}")
}

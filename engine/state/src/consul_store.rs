//! The Consul KV backend of [`crate::StateStore`]: a [`ConsulClient`] and a key prefix, with
//! the [`StoreBackend`] operations mapped onto keys, CAS writes and transactions (layout in
//! [`crate::store`]).
//!
//! Every write that only a side's writer may make (root swap, retired-parts record, part
//! removal) runs in one txn with a `check-session` on the side's lock key, so a writer whose
//! session ended changes nothing, whatever it believes.

use std::any::Any;
use std::time::Duration;

use crate::consul::{ConsulClient, ConsulError, MAX_VALUE_SIZE, TXN_MAX_OPS, TxnOp, TxnOutcome};
use crate::lock::{ConsulLock, LockOptions, OnWait};
use crate::store::{BoxFuture, RootRead, StoreBackend, StoreLock, lock_as};
use crate::{Result, StateError};

/// Consul backend: a client and the key prefix (ends with `/`).
#[derive(Debug, Clone)]
pub struct ConsulStore {
    client: ConsulClient,
    prefix: String,
}

/// Leave headroom under the body limit for the JSON around a txn's ops.
const TXN_BUDGET: usize = MAX_VALUE_SIZE - 16 * 1024;

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

    fn doc_key(&self, side: &str, name: &str) -> String {
        format!("{}{side}/{name}", self.prefix)
    }

    /// The client (for checks and tests).
    pub fn client(&self) -> &ConsulClient {
        &self.client
    }

    /// The `check-session` op that makes a txn apply only while `lock` is still ours.
    fn check_session(&self, lock: &StoreLock) -> Result<TxnOp> {
        let held: &ConsulLock = lock_as(lock)?;
        Ok(TxnOp::CheckSession {
            key: self.lock_key(lock.side()),
            session: held.session().to_owned(),
        })
    }

    async fn commit_batch(&self, ops: Vec<TxnOp>) -> Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        match self.client.txn(&ops).await? {
            TxnOutcome::Committed(_) => Ok(()),
            TxnOutcome::RolledBack(errors) => Err(self.permission_denied(&errors).unwrap_or_else(|| self.rolled_back(&errors))),
        }
    }

    /// Inside a txn an ACL denial is a per-op error (409), not a 403.
    fn permission_denied(&self, errors: &[(usize, String)]) -> Option<StateError> {
        errors.iter().any(|(_, w)| w.contains("Permission denied")).then(|| {
            StateError::Consul(ConsulError::Forbidden {
                op: "txn",
                key: self.prefix.clone(),
                message: txn_message(errors),
            })
        })
    }

    fn rolled_back(&self, errors: &[(usize, String)]) -> StateError {
        StateError::Consul(ConsulError::Status {
            op: "txn",
            key: self.prefix.clone(),
            status: 409,
            message: txn_message(errors),
        })
    }

    /// A rolled-back txn whose op `session_op` was the lock check: the lock is lost if that op
    /// failed, else the txn's own errors.
    fn rollback_error(&self, lock: &StoreLock, errors: &[(usize, String)], session_op: usize) -> StateError {
        if let Some(denied) = self.permission_denied(errors) {
            return denied;
        }
        if errors.iter().any(|(i, _)| *i == session_op) {
            return lock.lost_error(&self.describe());
        }
        self.rolled_back(errors)
    }

    async fn write_locked_doc_txn(&self, lock: &StoreLock, name: &str, bytes: &[u8]) -> Result<()> {
        let key = self.doc_key(lock.side(), name);
        let ops = [
            TxnOp::Set {
                key: key.clone(),
                value: bytes.to_vec(),
            },
            self.check_session(lock)?,
        ];
        if ops.iter().map(TxnOp::body_cost).sum::<usize>() > TXN_BUDGET {
            return Err(StateError::Consul(ConsulError::TooLarge {
                op: "txn",
                key,
                message: format!("{} bytes do not fit a transaction once base64-encoded", bytes.len()),
            }));
        }
        match self.client.txn(&ops).await? {
            TxnOutcome::Committed(_) => Ok(()),
            TxnOutcome::RolledBack(errors) => Err(self.rollback_error(lock, &errors, 1)),
        }
    }

    /// Parts in transactions within the op and body limits; a part too big for a txn body
    /// once base64-encoded goes alone in a plain PUT, which takes up to the value limit.
    async fn write_parts_batched(&self, side: &str, parts: Vec<(String, Vec<u8>)>) -> Result<()> {
        let prefix = self.parts_prefix(side);
        let mut batch: Vec<TxnOp> = Vec::new();
        let mut cost = 0;
        for (hash, value) in parts {
            let key = format!("{prefix}{hash}");
            let op = TxnOp::Set { key, value };
            if op.body_cost() > TXN_BUDGET {
                if let TxnOp::Set { key, value } = &op {
                    self.client.put(key, value).await?;
                }
                continue;
            }
            if batch.len() == TXN_MAX_OPS || cost + op.body_cost() > TXN_BUDGET {
                self.commit_batch(std::mem::take(&mut batch)).await?;
                cost = 0;
            }
            cost += op.body_cost();
            batch.push(op);
        }
        self.commit_batch(batch).await
    }

    async fn remove_parts_txn(&self, lock: &StoreLock, hashes: Vec<String>) -> Result<()> {
        let prefix = self.parts_prefix(lock.side());
        for chunk in hashes.chunks(TXN_MAX_OPS - 1) {
            let mut ops = vec![self.check_session(lock)?];
            ops.extend(chunk.iter().map(|h| TxnOp::Delete {
                key: format!("{prefix}{h}"),
            }));
            if let TxnOutcome::RolledBack(errors) = self.client.txn(&ops).await? {
                return Err(self.rollback_error(lock, &errors, 0));
            }
        }
        Ok(())
    }

    async fn swap_root_txn(&self, lock: &StoreLock, bytes: &[u8], expected: Option<u64>) -> Result<()> {
        if !lock.is_held() {
            return Err(lock.lost_error(&self.describe()));
        }
        let key = self.root_key(lock.side());
        let ops = [
            TxnOp::Cas {
                key: key.clone(),
                value: bytes.to_vec(),
                index: expected.unwrap_or(0),
            },
            self.check_session(lock)?,
        ];
        let errors = match self.client.txn(&ops).await? {
            TxnOutcome::Committed(_) => return Ok(()),
            TxnOutcome::RolledBack(errors) => errors,
        };
        if let Some(denied) = self.permission_denied(&errors) {
            return Err(denied);
        }
        // A retried txn whose first attempt landed reads as a failed CAS: accept it when the
        // stored root is exactly ours.
        if self.client.get(&key).await?.data.is_some_and(|e| e.value == bytes) {
            return Ok(());
        }
        if errors.iter().any(|(i, _)| *i == 1) {
            return Err(lock.lost_error(&self.describe()));
        }
        Err(StateError::Conflict {
            side: lock.side().to_owned(),
            store: self.describe(),
        })
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

impl StoreBackend for ConsulStore {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn describe(&self) -> String {
        format!("consul {} prefix `{}`", self.client.address(), self.prefix)
    }

    fn request_outcomes(&self) -> Option<[(&'static str, u64); 3]> {
        Some(self.client.request_outcomes())
    }

    fn counters_id(&self) -> Option<usize> {
        Some(self.client.counters_id())
    }

    fn lock_side<'a>(&'a self, side: &'a str, options: &'a LockOptions, on_wait: OnWait<'a>) -> BoxFuture<'a, Result<StoreLock>> {
        Box::pin(async move {
            let lock = ConsulLock::acquire(&self.client, side, self.lock_key(side), options.clone(), on_wait).await?;
            Ok(StoreLock::new(lock))
        })
    }

    fn lock_holder<'a>(&'a self, side: &'a str) -> BoxFuture<'a, Result<Option<String>>> {
        Box::pin(async move {
            let read = self.client.get(&self.lock_key(side)).await?;
            Ok(read.data.filter(|e| e.session.is_some()).map(|e| String::from_utf8_lossy(&e.value).into_owned()))
        })
    }

    fn read_doc<'a>(&'a self, side: &'a str, name: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        Box::pin(async move { Ok(self.client.get(&self.doc_key(side, name)).await?.data.map(|e| e.value)) })
    }

    fn write_doc<'a>(&'a self, side: &'a str, name: &'a str, bytes: &'a [u8]) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { Ok(self.client.put(&self.doc_key(side, name), bytes).await?) })
    }

    fn delete_doc<'a>(&'a self, side: &'a str, name: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { Ok(self.client.delete(&self.doc_key(side, name)).await?) })
    }

    fn write_locked_doc<'a>(&'a self, lock: &'a StoreLock, name: &'a str, bytes: &'a [u8]) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.write_locked_doc_txn(lock, name, bytes))
    }

    fn read_root<'a>(&'a self, side: &'a str) -> BoxFuture<'a, Result<Option<RootRead>>> {
        Box::pin(async move {
            let read = self.client.get(&self.root_key(side)).await?;
            Ok(read.data.map(|e| RootRead {
                bytes: e.value,
                version: e.modify_index,
            }))
        })
    }

    fn read_part<'a>(&'a self, side: &'a str, hash: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        Box::pin(async move {
            let key = format!("{}{hash}", self.parts_prefix(side));
            Ok(self.client.get(&key).await?.data.map(|e| e.value))
        })
    }

    fn list_parts<'a>(&'a self, side: &'a str) -> BoxFuture<'a, Result<Vec<String>>> {
        Box::pin(async move {
            let prefix = self.parts_prefix(side);
            let keys = self.client.keys(&prefix).await?.data;
            Ok(keys
                .into_iter()
                .filter_map(|k| k.strip_prefix(&prefix).map(str::to_owned))
                .filter(|k| !k.contains('/'))
                .collect())
        })
    }

    // Parts are immutable and named by their content: written without a lock check (a part a
    // lost writer adds is an orphan the next commit's collection removes).
    fn write_new_parts<'a>(&'a self, lock: &'a StoreLock, parts: Vec<(String, Vec<u8>)>) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.write_parts_batched(lock.side(), parts))
    }

    fn remove_parts<'a>(&'a self, lock: &'a StoreLock, hashes: Vec<String>) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.remove_parts_txn(lock, hashes))
    }

    fn swap_root<'a>(&'a self, lock: &'a StoreLock, bytes: &'a [u8], expected: Option<u64>) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.swap_root_txn(lock, bytes, expected))
    }

    // A blocking query on the root; an index that went backwards (snapshot restore) resets the
    // cursor.
    fn watch_root<'a>(&'a self, side: &'a str, cursor: u64, wait: Duration) -> BoxFuture<'a, Result<(u64, u64)>> {
        Box::pin(async move {
            let read = if cursor == 0 {
                self.client.get(&self.root_key(side)).await?
            } else {
                self.client.get_blocking(&self.root_key(side), cursor, wait).await?
            };
            let next = if read.index < cursor { 0 } else { read.index.max(1) };
            Ok((read.data.map_or(0, |e| e.modify_index), next))
        })
    }
}

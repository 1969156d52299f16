//! The event-driven origin's feed (`[origin] audit_listen`): a TCP listener for a Vault/OpenBao
//! **socket audit device** (`socket_type = "tcp"`, JSON format).
//!
//! The server writes one JSON object per line, `\n`-terminated, first a `request` entry and,
//! once the request is done, a `response` entry; each device keeps one connection open and
//! opens a new one after an error. The feed reads every connection continuously (so the server
//! is never held up by vsync beyond a short lock), parses only `type`, `error` and the request's
//! `operation`, `path`, `mount_point` and `namespace`, and turns successful writes on a
//! configured mount into [`Change`]s, coalesced in a bounded set of dirty paths that the origin
//! role takes in batches ([`AuditFeed::take`]).
//!
//! Audit lines carry HMAC'd values (never plaintext), but they are still never logged, stored
//! or kept: a line lives in a reused read buffer until the next one overwrites it, and only the
//! mount and the path inside it are kept.
//!
//! Whatever the feed sees, the periodic full scan stays the backstop. When the feed knows it
//! may have missed an event (a connection that ended mid-line or with an error, a line over
//! [`MAX_LINE`], more dirty paths than [`MAX_DIRTY`], a configured mount enabled, disabled,
//! tuned or moved) its batch says `rescan`, and the origin scans everything at once.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// Longest audit line parsed; a longer one is skipped and the batch asks for a full scan.
/// (Values are replaced by fixed-length HMACs, so a line grows with the number of fields, not
/// with the size of the secret.)
pub const MAX_LINE: usize = 16 * 1024 * 1024;

/// Most dirty paths held between batches; beyond it they are dropped for one full scan.
pub const MAX_DIRTY: usize = 100_000;

/// Most connections read at once; more are closed at accept (a server opens one per device).
pub const MAX_CONNECTIONS: usize = 64;

/// A failure to start the feed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The listen address could not be bound.
    #[error("origin.audit_listen: cannot listen on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A successful write on a configured mount, as the request named it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Change {
    /// The configured mount (`secret/`).
    pub mount: String,
    /// The request path inside the mount: `data/app/db`, `metadata/app/db`, `delete/...`,
    /// `undelete/...`, `destroy/...` on KV v2; the key itself on KV v1. The origin maps it to
    /// a key once it knows the mount's KV version.
    pub rest: String,
}

/// What the feed saw since the last [`AuditFeed::take`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// Changed paths, each once.
    pub changes: Vec<Change>,
    /// An event may have been missed: only a full scan is sure to be right.
    pub rescan: bool,
}

impl Batch {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && !self.rescan
    }
}

/// Counters since the feed started (never any line content).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FeedStats {
    /// Connections accepted.
    pub connections: u64,
    /// Complete lines read.
    pub lines: u64,
    /// Lines that became a [`Change`].
    pub changes: u64,
    /// Lines that were not an audit entry (skipped).
    pub garbage: u64,
    /// Lines over [`MAX_LINE`] (skipped; a full scan follows).
    pub oversize: u64,
    /// Times a full scan was asked for.
    pub rescans: u64,
}

#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    lines: AtomicU64,
    changes: AtomicU64,
    garbage: AtomicU64,
    oversize: AtomicU64,
    rescans: AtomicU64,
}

#[derive(Debug, Default)]
struct Dirty {
    changes: HashSet<Change>,
    rescan: bool,
}

#[derive(Debug)]
struct Shared {
    dirty: Mutex<Dirty>,
    notify: Notify,
    counters: Counters,
    filter: Filter,
}

impl Shared {
    fn dirty(&self) -> MutexGuard<'_, Dirty> {
        // A panic while holding this lock cannot leave the set inconsistent (insert or clear).
        self.dirty.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn add(&self, change: Change) {
        {
            let mut dirty = self.dirty();
            if dirty.rescan {
                // A full scan is due anyway and covers this path.
            } else if dirty.changes.len() >= MAX_DIRTY {
                dirty.changes.clear();
                dirty.rescan = true;
                self.counters.rescans.fetch_add(1, Ordering::Relaxed);
            } else {
                dirty.changes.insert(change);
            }
        }
        self.notify.notify_one();
    }

    fn rescan(&self) {
        {
            let mut dirty = self.dirty();
            dirty.changes.clear();
            dirty.rescan = true;
        }
        self.counters.rescans.fetch_add(1, Ordering::Relaxed);
        self.notify.notify_one();
    }
}

/// The running feed: a listener task and its connections; stopped when dropped.
#[derive(Debug)]
pub struct AuditFeed {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for AuditFeed {
    fn drop(&mut self) {
        // Connection tasks end with the listener task's JoinSet.
        self.task.abort();
    }
}

impl AuditFeed {
    /// Listens on `addr` for audit devices reporting on `mounts` (normalised, `secret/`) in
    /// `namespace` (the origin client's namespace; `None` for the root namespace).
    pub async fn bind(addr: SocketAddr, mounts: Vec<String>, namespace: Option<String>) -> Result<Self, AuditError> {
        let listener = TcpListener::bind(addr).await.map_err(|source| AuditError::Bind { addr, source })?;
        let local = listener.local_addr().map_err(|source| AuditError::Bind { addr, source })?;
        let shared = Arc::new(Shared {
            dirty: Mutex::new(Dirty::default()),
            notify: Notify::new(),
            counters: Counters::default(),
            filter: Filter::new(mounts, namespace.as_deref()),
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        info!(listen = %local, "audit feed: listening for a socket audit device");
        Ok(Self { addr: local, shared, task })
    }

    /// The address actually bound (a configured port 0 gets a free one).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Resolves once there is something to [`take`](Self::take) (at once if there is already).
    pub async fn changed(&self) {
        loop {
            // Registered before the check, so a change made in between still wakes us.
            let notified = self.shared.notify.notified();
            {
                let dirty = self.shared.dirty();
                if dirty.rescan || !dirty.changes.is_empty() {
                    return;
                }
            }
            notified.await;
        }
    }

    /// Takes everything seen so far, leaving the set empty.
    pub fn take(&self) -> Batch {
        let mut dirty = self.shared.dirty();
        let changes = std::mem::take(&mut dirty.changes);
        let rescan = std::mem::replace(&mut dirty.rescan, false);
        let mut changes: Vec<Change> = changes.into_iter().collect();
        changes.sort_unstable();
        Batch { changes, rescan }
    }

    /// The counters so far.
    pub fn stats(&self) -> FeedStats {
        let c = &self.shared.counters;
        FeedStats {
            connections: c.connections.load(Ordering::Relaxed),
            lines: c.lines.load(Ordering::Relaxed),
            changes: c.changes.load(Ordering::Relaxed),
            garbage: c.garbage.load(Ordering::Relaxed),
            oversize: c.oversize.load(Ordering::Relaxed),
            rescans: c.rescans.load(Ordering::Relaxed),
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        warn!(%peer, "audit feed: {MAX_CONNECTIONS} connections open already; closing this one");
                        continue;
                    };
                    shared.counters.connections.fetch_add(1, Ordering::Relaxed);
                    debug!(%peer, "audit feed: connection opened");
                    let shared = shared.clone();
                    connections.spawn(async move {
                        let _slot = slot;
                        let ended = read_connection(stream, &shared).await;
                        match ended.how {
                            Ending::Clean => debug!(%peer, lines = ended.lines, garbage = ended.garbage, "audit feed: connection closed"),
                            Ending::Partial | Ending::Error => {
                                // The server may have written an event we never read whole.
                                warn!(%peer, lines = ended.lines, garbage = ended.garbage, ending = ended.how.describe(),
                                    "audit feed: connection ended mid-line or with an error; a full origin scan follows");
                                shared.rescan();
                            }
                        }
                        if ended.garbage > 0 {
                            warn!(%peer, garbage = ended.garbage, "audit feed: skipped lines that were not JSON audit entries (is the device's format `json`?)");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    warn!(error = %e, "audit feed: accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// EOF after a complete line.
    Clean,
    /// EOF inside a line.
    Partial,
    /// A read error (reset and the like).
    Error,
}

impl Ending {
    fn describe(self) -> &'static str {
        match self {
            Ending::Clean => "clean",
            Ending::Partial => "end of stream inside a line",
            Ending::Error => "read error",
        }
    }
}

#[derive(Debug)]
struct Ended {
    how: Ending,
    lines: u64,
    garbage: u64,
}

/// Reads lines until the stream ends, handing each complete one to the filter.
async fn read_connection(stream: impl AsyncRead + Unpin, shared: &Shared) -> Ended {
    let mut reader = BufReader::with_capacity(256 * 1024, stream);
    let mut line: Vec<u8> = Vec::new();
    let mut oversize = false;
    let (mut lines, mut garbage) = (0u64, 0u64);
    let how = loop {
        let available = match reader.fill_buf().await {
            Ok(b) => b,
            Err(_) => break Ending::Error,
        };
        if available.is_empty() {
            break if line.is_empty() && !oversize { Ending::Clean } else { Ending::Partial };
        }
        let (used, complete) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        if !oversize {
            if line.len() + used > MAX_LINE {
                oversize = true;
                line.clear();
            } else {
                line.extend_from_slice(&available[..used]);
            }
        }
        reader.consume(used);
        if !complete {
            continue;
        }
        lines += 1;
        shared.counters.lines.fetch_add(1, Ordering::Relaxed);
        if oversize {
            shared.counters.oversize.fetch_add(1, Ordering::Relaxed);
            warn!(limit = MAX_LINE, "audit feed: skipped a line over the size limit; a full origin scan follows");
            shared.rescan();
        } else {
            match shared.filter.classify(&line) {
                Seen::Change(c) => {
                    shared.counters.changes.fetch_add(1, Ordering::Relaxed);
                    shared.add(c);
                }
                Seen::Rescan => shared.rescan(),
                Seen::Ignored => {}
                Seen::Garbage => {
                    garbage += 1;
                    shared.counters.garbage.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        line.clear();
        oversize = false;
    };
    Ended { how, lines, garbage }
}

/// What one line means.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Change(Change),
    /// A configured mount itself changed.
    Rescan,
    Ignored,
    /// Not a JSON audit entry.
    Garbage,
}

/// The few fields of an audit entry the feed reads; everything else is skipped unparsed.
#[derive(Deserialize)]
struct Entry {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    request: Option<Request>,
}

#[derive(Deserialize)]
struct Request {
    #[serde(default)]
    operation: String,
    #[serde(default)]
    path: String,
    #[serde(default)]
    mount_point: Option<String>,
    #[serde(default)]
    namespace: Option<Namespace>,
}

#[derive(Deserialize)]
struct Namespace {
    #[serde(default)]
    path: Option<String>,
}

/// Which lines matter: successful writes on the configured mounts, in the configured namespace.
#[derive(Debug)]
struct Filter {
    /// Normalised mounts, longest first (so a nested mount wins over its parent's prefix).
    mounts: Vec<String>,
    /// The namespace path without surrounding slashes (`""`: root).
    namespace: String,
}

impl Filter {
    fn new(mut mounts: Vec<String>, namespace: Option<&str>) -> Self {
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        Self {
            mounts,
            namespace: namespace.unwrap_or("").trim_matches('/').to_owned(),
        }
    }

    fn classify(&self, line: &[u8]) -> Seen {
        let Ok(entry) = serde_json::from_slice::<Entry>(line) else {
            return Seen::Garbage;
        };
        // The request entry comes before the request is handled; only the response entry
        // says the write is done, so a read after it sees the write.
        if entry.kind != "response" {
            return Seen::Ignored;
        }
        let Some(request) = entry.request else {
            return Seen::Garbage;
        };
        if entry.error.is_some_and(|e| !e.is_empty()) {
            return Seen::Ignored;
        }
        if !matches!(request.operation.as_str(), "create" | "update" | "delete" | "patch") {
            return Seen::Ignored;
        }
        let namespace = request.namespace.and_then(|n| n.path).unwrap_or_default();
        if namespace.trim_matches('/') != self.namespace {
            return Seen::Ignored;
        }
        let path = request.path.as_str();
        if let Some(rest) = path.strip_prefix("sys/") {
            return self.system(rest);
        }
        let mount = match request.mount_point.as_deref() {
            Some(m) if self.mounts.iter().any(|c| c == m) && path.starts_with(m) => m,
            _ => match self.mounts.iter().find(|m| path.starts_with(m.as_str())) {
                Some(m) => m.as_str(),
                None => return Seen::Ignored,
            },
        };
        let rest = &path[mount.len()..];
        if rest.is_empty() {
            return Seen::Ignored;
        }
        Seen::Change(Change {
            mount: mount.to_owned(),
            rest: rest.to_owned(),
        })
    }

    /// `sys/` writes that change a configured mount itself (enable, disable, tune, move):
    /// the origin's view of that mount must be rebuilt.
    fn system(&self, rest: &str) -> Seen {
        if rest.starts_with("remount") {
            // The source and target are HMAC'd in the entry: assume the worst.
            return Seen::Rescan;
        }
        let Some(mount) = rest.strip_prefix("mounts/") else {
            return Seen::Ignored;
        };
        let mount = mount.strip_suffix("/tune").unwrap_or(mount);
        let mount = format!("{}/", mount.trim_end_matches('/'));
        if self.mounts.contains(&mount) { Seen::Rescan } else { Seen::Ignored }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use tokio::io::AsyncWriteExt as _;

    use super::*;

    fn filter() -> Filter {
        Filter::new(vec!["secret/".into(), "team/".into(), "team/kv/".into()], None)
    }

    fn line(kind: &str, op: &str, path: &str, mount: Option<&str>, error: Option<&str>) -> String {
        let mut v = serde_json::json!({
            "time": "2026-12-01T22:25:53Z",
            "type": kind,
            "auth": {"client_token": "hmac-sha256:abc"},
            "request": {"id": "x", "operation": op, "path": path, "namespace": {"id": "root"},
                        "data": {"data": {"password": "hmac-sha256:0123"}}},
        });
        if let Some(m) = mount {
            v["request"]["mount_point"] = m.into();
        }
        if let Some(e) = error {
            v["error"] = e.into();
        }
        format!("{v}\n")
    }

    fn change(mount: &str, rest: &str) -> Seen {
        Seen::Change(Change { mount: mount.into(), rest: rest.into() })
    }

    #[test]
    fn classifies_writes_on_configured_mounts_only() {
        let f = filter();
        let c = |kind, op, path, mount| f.classify(line(kind, op, path, mount, None).as_bytes());
        assert_eq!(c("response", "create", "secret/data/a/b", Some("secret/")), change("secret/", "data/a/b"));
        assert_eq!(c("response", "update", "secret/metadata/a", Some("secret/")), change("secret/", "metadata/a"));
        assert_eq!(c("response", "delete", "secret/data/a", None), change("secret/", "data/a"));
        assert_eq!(c("response", "patch", "secret/data/a", None), change("secret/", "data/a"));
        // The nested mount wins over its parent's prefix, with or without mount_point.
        assert_eq!(c("response", "create", "team/kv/x", None), change("team/kv/", "x"));
        assert_eq!(c("response", "create", "team/kv/x", Some("team/kv/")), change("team/kv/", "x"));
        assert_eq!(c("response", "create", "team/y", None), change("team/", "y"));
        // Not a write, not a response, not configured, the mount itself.
        assert_eq!(c("response", "read", "secret/data/a", None), Seen::Ignored);
        assert_eq!(c("response", "list", "secret/metadata/", None), Seen::Ignored);
        assert_eq!(c("request", "create", "secret/data/a", None), Seen::Ignored);
        assert_eq!(c("response", "create", "other/data/a", Some("other/")), Seen::Ignored);
        assert_eq!(c("response", "create", "secretive/a", None), Seen::Ignored);
        assert_eq!(c("response", "update", "secret/", None), Seen::Ignored);
        // Failed requests changed nothing.
        let failed = line("response", "create", "secret/data/a", None, Some("1 error occurred:\n\t* permission denied\n\n"));
        assert_eq!(f.classify(failed.as_bytes()), Seen::Ignored);
        let empty_error = line("response", "create", "secret/data/a", None, Some(""));
        assert_eq!(f.classify(empty_error.as_bytes()), change("secret/", "data/a"));
    }

    #[test]
    fn mount_changes_ask_for_a_scan_and_garbage_is_garbage() {
        let f = filter();
        let c = |op, path| f.classify(line("response", op, path, Some("sys/"), None).as_bytes());
        assert_eq!(c("delete", "sys/mounts/secret"), Seen::Rescan);
        assert_eq!(c("update", "sys/mounts/team/kv/tune"), Seen::Rescan);
        assert_eq!(c("update", "sys/remount"), Seen::Rescan);
        assert_eq!(c("update", "sys/mounts/elsewhere"), Seen::Ignored);
        assert_eq!(c("update", "sys/policies/acl/x"), Seen::Ignored);
        assert_eq!(f.classify(b"not json\n"), Seen::Garbage);
        assert_eq!(f.classify(b"{\"type\":\"response\"}\n"), Seen::Garbage);
        assert_eq!(f.classify(b"[1,2]\n"), Seen::Garbage);
    }

    #[test]
    fn namespaces_must_match() {
        let f = Filter::new(vec!["secret/".into()], Some("team-a/"));
        let mut v: serde_json::Value = serde_json::from_str(&line("response", "create", "secret/data/a", None, None)).unwrap();
        assert_eq!(f.classify(v.to_string().as_bytes()), Seen::Ignored, "root namespace, origin in team-a");
        v["request"]["namespace"] = serde_json::json!({"id": "n1", "path": "team-a/"});
        assert_eq!(f.classify(v.to_string().as_bytes()), change("secret/", "data/a"));
        assert_eq!(filter().classify(v.to_string().as_bytes()), Seen::Ignored, "team-a namespace, origin in root");
    }

    fn shared() -> Shared {
        Shared {
            dirty: Mutex::new(Dirty::default()),
            notify: Notify::new(),
            counters: Counters::default(),
            filter: filter(),
        }
    }

    #[tokio::test]
    async fn reads_partial_lines_across_writes_and_skips_garbage() {
        let s = shared();
        let (mut tx, rx) = tokio::io::duplex(64);
        let whole = format!(
            "{}garbage\n{}{}",
            line("response", "create", "secret/data/one", None, None),
            line("response", "update", "secret/metadata/two", None, None),
            line("response", "create", "secret/data/one", None, None),
        );
        let writer = tokio::spawn(async move {
            // Tiny chunks: every line arrives in pieces.
            for chunk in whole.as_bytes().chunks(7) {
                tx.write_all(chunk).await.unwrap();
            }
        });
        let ended = read_connection(rx, &s).await;
        writer.await.unwrap();
        assert_eq!((ended.how, ended.lines, ended.garbage), (Ending::Clean, 4, 1));
        let dirty = s.dirty();
        assert!(!dirty.rescan);
        let mut got: Vec<_> = dirty.changes.iter().map(|c| c.rest.clone()).collect();
        got.sort();
        assert_eq!(got, ["data/one", "metadata/two"], "duplicates coalesce");
    }

    #[tokio::test]
    async fn a_stream_ending_mid_line_is_partial() {
        let s = shared();
        let (mut tx, rx) = tokio::io::duplex(1024);
        tx.write_all(b"{\"type\":\"respo").await.unwrap();
        drop(tx);
        assert_eq!(read_connection(rx, &s).await.how, Ending::Partial);
    }

    #[test]
    fn the_dirty_set_is_bounded() {
        let s = shared();
        for i in 0..=MAX_DIRTY {
            s.add(Change { mount: "secret/".into(), rest: format!("data/{i}") });
        }
        let dirty = s.dirty();
        assert!(dirty.rescan);
        assert!(dirty.changes.is_empty());
    }
}

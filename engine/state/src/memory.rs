//! The in-memory state store: documents, roots with versions, parts and side locks held in
//! this process, for tests and the deterministic simulator.
//!
//! Deterministic by construction: no threads, no wall clock (waits use tokio's clock, so a
//! paused runtime drives them), ordered maps only, versions from one store-wide counter. The
//! same inputs in the same order give the same versions, listings and outcomes.
//!
//! It behaves like the other backends where [`crate::info`] relies on them: a root swap is a
//! compare of versions plus a check that the caller's lock is the side's current one (Consul's
//! `check-session`); the retired-parts document and part removals check the lock too; parts
//! are written without one (a lost writer leaves orphans, as on Consul). A second taker of a
//! held lock waits as a standby and hears the holder, as on Consul; there is no lock-delay: a
//! lost or released lock is free at once.
//!
//! Fault hooks, for what the real stores suffer:
//! - [`MemoryStore::fail_next`]: the next `n` operations of a kind fail with a transient
//!   [`StateError::Unavailable`] and change nothing; [`MemoryStore::fail_next_after_applying`]:
//!   they take effect, then fail (a request that landed but whose answer was lost);
//! - [`MemoryStore::lose_lock`]: the side's lock is lost, as when Consul invalidates a session:
//!   the holder's [`StoreLock::lost`] resolves, its writes are refused, a standby takes over;
//! - garbage collection: [`MemoryStore::removed_parts`] records every part removed through the
//!   store, [`MemoryStore::remove_part`] removes one behind the writer's back, and
//!   [`MemoryStore::pause`] / [`MemoryStore::resume`] (or `pause_side` / `resume_side`, for one
//!   side) hold operations of a kind where they are ([`MemoryStore::parked`] counts them), so a test can stop a reader between reading a root
//!   and fetching its parts, commit and collect meanwhile, then let the reader go on.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

use crate::lock::{Holder, LockOptions, Lost, OnWait};
use crate::store::{BackendLock, BoxFuture, RootRead, StoreBackend, StoreLock};
use crate::{Result, StateError};

/// A kind of store operation, as the fault hooks name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MemoryOp {
    /// Taking (or regaining) a side lock.
    Lock,
    /// Reading who holds a side lock.
    LockHolder,
    /// Reading a document.
    ReadDoc,
    /// Writing a document without a lock.
    WriteDoc,
    /// Deleting a document.
    DeleteDoc,
    /// Writing a document under the side's lock (the retired-parts record).
    WriteLockedDoc,
    /// Reading a root.
    ReadRoot,
    /// Reading a part.
    ReadPart,
    /// Listing a side's parts.
    ListParts,
    /// Writing parts.
    WriteParts,
    /// Removing parts (garbage collection).
    RemoveParts,
    /// Swapping a root (a commit).
    SwapRoot,
    /// Watching a root.
    WatchRoot,
}

/// Injected failures of one kind of operation.
#[derive(Debug, Default, Clone, Copy)]
struct Failures {
    /// Fail before applying.
    before: u64,
    /// Apply, then fail.
    after: u64,
}

/// A held side lock.
#[derive(Debug)]
struct Held {
    id: u64,
    holder: String,
    held: watch::Sender<bool>,
}

/// One side's data.
#[derive(Debug, Default)]
struct Side {
    root: Option<RootRead>,
    parts: BTreeMap<String, Vec<u8>>,
    docs: BTreeMap<String, Vec<u8>>,
    lock: Option<Held>,
}

/// Everything the store holds.
#[derive(Debug, Default)]
struct State {
    /// Store-wide change counter; root versions and lock ids come from it.
    index: u64,
    sides: BTreeMap<String, Side>,
    failures: BTreeMap<MemoryOp, Failures>,
    /// Paused kinds, on every side (`None`) or on one.
    paused: BTreeSet<(MemoryOp, Option<String>)>,
    parked: BTreeMap<MemoryOp, usize>,
    ops: BTreeMap<MemoryOp, u64>,
    removed: Vec<(String, String)>,
}

impl State {
    fn side(&mut self, side: &str) -> &mut Side {
        self.sides.entry(side.to_owned()).or_default()
    }

    fn next_index(&mut self) -> u64 {
        self.index += 1;
        self.index
    }
}

#[derive(Debug)]
struct Shared {
    name: String,
    state: Mutex<State>,
    /// Bumped on every change a waiter may wait for (a root swap, a lock freed, a resume).
    tick: watch::Sender<u64>,
}

/// The in-memory store (module docs). Cheap to clone: clones share the same data, so a test
/// keeps one to drive the fault hooks of the [`crate::StateStore`] built from another.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    shared: Arc<Shared>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new("memory")
    }
}

/// Construction and inspection (synchronous, never faulted, never paused).
impl MemoryStore {
    /// An empty store; `name` appears in its description and errors.
    pub fn new(name: &str) -> Self {
        let (tick, _) = watch::channel(0);
        Self {
            shared: Arc::new(Shared {
                name: name.to_owned(),
                state: Mutex::new(State::default()),
                tick,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (every change is one step).
        self.shared.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wake(&self) {
        self.shared.tick.send_modify(|t| *t += 1);
    }

    /// The current root of `side`, if any.
    pub fn root(&self, side: &str) -> Option<RootRead> {
        self.state().sides.get(side).and_then(|s| s.root.clone())
    }

    /// The parts `side` holds, sorted.
    pub fn parts(&self, side: &str) -> Vec<String> {
        self.state().sides.get(side).map(|s| s.parts.keys().cloned().collect()).unwrap_or_default()
    }

    /// Document `name` of `side`, if any.
    pub fn doc(&self, side: &str, name: &str) -> Option<Vec<u8>> {
        self.state().sides.get(side).and_then(|s| s.docs.get(name).cloned())
    }

    /// Who holds `side`'s lock now.
    pub fn holder(&self, side: &str) -> Option<String> {
        self.state().sides.get(side).and_then(|s| s.lock.as_ref().map(|h| h.holder.clone()))
    }

    /// How many operations of kind `op` were attempted (failed and paused ones included).
    pub fn ops(&self, op: MemoryOp) -> u64 {
        self.state().ops.get(&op).copied().unwrap_or(0)
    }

    /// Everything stored, labelled (`<side>/root`, `<side>/part/<hash>`, `<side>/doc/<name>`):
    /// what a test searches for bytes that must never be stored.
    pub fn stored(&self) -> Vec<(String, Vec<u8>)> {
        let state = self.state();
        let mut out = Vec::new();
        for (name, side) in &state.sides {
            if let Some(root) = &side.root {
                out.push((format!("{name}/root"), root.bytes.clone()));
            }
            out.extend(side.parts.iter().map(|(h, b)| (format!("{name}/part/{h}"), b.clone())));
            out.extend(side.docs.iter().map(|(d, b)| (format!("{name}/doc/{d}"), b.clone())));
        }
        out
    }

    /// The store-wide change counter (every root version is one of its values).
    pub fn index(&self) -> u64 {
        self.state().index
    }
}

/// Fault hooks (module docs).
impl MemoryStore {
    /// The next `n` operations of kind `op` fail with [`StateError::Unavailable`] and change
    /// nothing (replaces an earlier count; 0 clears it).
    pub fn fail_next(&self, op: MemoryOp, n: u64) {
        self.state().failures.entry(op).or_default().before = n;
    }

    /// The next `n` operations of kind `op` take effect, then fail with
    /// [`StateError::Unavailable`]: the request landed, its answer was lost.
    pub fn fail_next_after_applying(&self, op: MemoryOp, n: u64) {
        self.state().failures.entry(op).or_default().after = n;
    }

    /// Makes `side`'s lock lost, as a Consul session invalidation does: the holder's
    /// [`StoreLock::lost`] resolves and [`StoreLock::is_held`] turns false, its locked writes
    /// fail with [`StateError::LockLost`], and the lock is free for a standby at once. Returns
    /// whether anyone held it.
    pub fn lose_lock(&self, side: &str) -> bool {
        let held = self.state().side(side).lock.take();
        let Some(held) = held else {
            return false;
        };
        held.held.send_replace(false);
        self.wake();
        true
    }

    /// Removes part `hash` of `side` behind its writer's back (lost, or collected by a writer
    /// this test does not run); whether it was there. Not recorded in [`Self::removed_parts`].
    pub fn remove_part(&self, side: &str, hash: &str) -> bool {
        self.state().side(side).parts.remove(hash).is_some()
    }

    /// Every part removed through [`StoreBackend::remove_parts`] (garbage collection), as
    /// `(side, hash)` in removal order.
    pub fn removed_parts(&self) -> Vec<(String, String)> {
        self.state().removed.clone()
    }

    /// Holds every later operation of kind `op`, on any side, before it does anything, until
    /// [`Self::resume`].
    pub fn pause(&self, op: MemoryOp) {
        self.state().paused.insert((op, None));
    }

    /// Holds every later operation of kind `op` on `side` only (a reader of one side while
    /// another side's writer goes on), until [`Self::resume_side`].
    pub fn pause_side(&self, op: MemoryOp, side: &str) {
        self.state().paused.insert((op, Some(side.to_owned())));
    }

    /// Lets the operations held by [`Self::pause`] go on (those held by
    /// [`Self::pause_side`] stay held).
    pub fn resume(&self, op: MemoryOp) {
        self.state().paused.remove(&(op, None));
        self.wake();
    }

    /// Lets the operations held by [`Self::pause_side`] for `side` go on.
    pub fn resume_side(&self, op: MemoryOp, side: &str) {
        self.state().paused.remove(&(op, Some(side.to_owned())));
        self.wake();
    }

    /// How many operations of kind `op` are held by a pause now.
    pub fn parked(&self, op: MemoryOp) -> usize {
        self.state().parked.get(&op).copied().unwrap_or(0)
    }
}

/// The steps every operation goes through.
impl MemoryStore {
    /// Counts the operation on `side`, waits while its kind is paused (on every side or on
    /// this one), then applies a pending fail-before.
    async fn enter(&self, op: MemoryOp, side: &str) -> Result<()> {
        *self.state().ops.entry(op).or_default() += 1;
        let mut parked = false;
        loop {
            let mut tick = self.shared.tick.subscribe();
            {
                let mut state = self.state();
                let paused = state.paused.contains(&(op, None)) || state.paused.contains(&(op, Some(side.to_owned())));
                if !paused {
                    if parked && let Some(n) = state.parked.get_mut(&op) {
                        *n = n.saturating_sub(1);
                    }
                    break;
                }
                if !parked {
                    *state.parked.entry(op).or_default() += 1;
                    parked = true;
                }
            }
            // The sender lives as long as `self`: a closed channel cannot happen here.
            let _ = tick.changed().await;
        }
        self.take_failure(op, |f| &mut f.before)
    }

    /// After an operation took effect: a pending fail-after.
    fn leave(&self, op: MemoryOp) -> Result<()> {
        self.take_failure(op, |f| &mut f.after)
    }

    fn take_failure(&self, op: MemoryOp, which: fn(&mut Failures) -> &mut u64) -> Result<()> {
        let mut state = self.state();
        let Some(left) = state.failures.get_mut(&op).map(which).filter(|n| **n > 0) else {
            return Ok(());
        };
        *left -= 1;
        Err(StateError::Unavailable {
            store: self.describe(),
            op: op_name(op),
            message: "injected transient failure".into(),
        })
    }

    /// The id of `lock` if it is this store's, else an error.
    fn lock_id(&self, lock: &StoreLock) -> Result<u64> {
        match lock.as_memory() {
            Some(l) if Arc::ptr_eq(&l.store.shared, &self.shared) => Ok(l.id),
            _ => Err(StateError::Corrupt {
                path: lock.side().into(),
                message: format!("a lock of another store was used with {}", self.describe()),
            }),
        }
    }

    /// Fails with [`StateError::LockLost`] unless `lock` is its side's current lock.
    fn check_held(&self, state: &State, lock: &StoreLock, id: u64) -> Result<()> {
        let current = state.sides.get(lock.side()).and_then(|s| s.lock.as_ref()).map(|h| h.id);
        if current == Some(id) {
            Ok(())
        } else {
            Err(lock.lost_error(&self.describe()))
        }
    }
}

fn op_name(op: MemoryOp) -> &'static str {
    match op {
        MemoryOp::Lock => "lock",
        MemoryOp::LockHolder => "lock holder",
        MemoryOp::ReadDoc => "read document",
        MemoryOp::WriteDoc => "write document",
        MemoryOp::DeleteDoc => "delete document",
        MemoryOp::WriteLockedDoc => "write locked document",
        MemoryOp::ReadRoot => "read root",
        MemoryOp::ReadPart => "read part",
        MemoryOp::ListParts => "list parts",
        MemoryOp::WriteParts => "write parts",
        MemoryOp::RemoveParts => "remove parts",
        MemoryOp::SwapRoot => "swap root",
        MemoryOp::WatchRoot => "watch root",
    }
}

/// Locks.
impl MemoryStore {
    /// Takes `side`'s lock, waiting as a standby while another holds it.
    async fn acquire(&self, side: &str, options: &LockOptions, on_wait: OnWait<'_>) -> Result<MemoryLock> {
        let mut seen: Option<Holder> = None;
        loop {
            let mut tick = self.shared.tick.subscribe();
            let waiting = {
                let mut state = self.state();
                let current = state.sides.get(side).and_then(|s| s.lock.as_ref()).map(|h| h.holder.clone());
                if current.is_none() {
                    let id = state.next_index();
                    let (tx, rx) = watch::channel(true);
                    state.side(side).lock = Some(Held { id, holder: options.holder.clone(), held: tx });
                    return Ok(MemoryLock { store: self.clone(), side: side.to_owned(), id, options: options.clone(), held: rx });
                }
                Holder { lock: format!("memory lock `{side}`"), holder: current }
            };
            if seen.as_ref() != Some(&waiting) {
                on_wait(&waiting);
                seen = Some(waiting);
            }
            let _ = tick.changed().await;
        }
    }

    /// Frees `side`'s lock if `id` still holds it.
    fn release_lock(&self, side: &str, id: u64) {
        let freed = {
            let mut state = self.state();
            let entry = state.side(side);
            if entry.lock.as_ref().is_some_and(|h| h.id == id) { entry.lock.take() } else { None }
        };
        if let Some(held) = freed {
            held.held.send_replace(false);
            self.wake();
        }
    }
}

/// A held lock of a [`MemoryStore`]; released when dropped.
#[derive(Debug)]
pub struct MemoryLock {
    store: MemoryStore,
    side: String,
    id: u64,
    options: LockOptions,
    held: watch::Receiver<bool>,
}

impl MemoryLock {
    /// This holding's id: a new one each time the lock is taken.
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for MemoryLock {
    fn drop(&mut self) {
        self.store.release_lock(&self.side, self.id);
    }
}

impl BackendLock for MemoryLock {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn side(&self) -> &str {
        &self.side
    }

    fn is_held(&self) -> bool {
        *self.held.borrow()
    }

    fn lost(&self) -> Lost {
        let mut rx = self.held.clone();
        Box::pin(async move {
            // A closed channel: the holding is gone too.
            let _ = rx.wait_for(|held| !*held).await;
        })
    }

    fn describe(&self) -> String {
        format!("memory lock `{}`", self.side)
    }

    fn regain<'a>(&'a mut self, on_wait: OnWait<'a>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            if self.is_held() {
                return Ok(());
            }
            self.store.enter(MemoryOp::Lock, &self.side).await?;
            let fresh = self.store.acquire(&self.side, &self.options, on_wait).await?;
            // The old holding is gone already; dropping it frees nothing.
            *self = fresh;
            Ok(())
        })
    }

    fn release(self: Box<Self>) -> BoxFuture<'static, ()> {
        drop(self);
        Box::pin(async {})
    }
}

/// Root swaps and watches.
impl MemoryStore {
    async fn swap(&self, lock: &StoreLock, bytes: &[u8], expected: Option<u64>) -> Result<()> {
        self.enter(MemoryOp::SwapRoot, lock.side()).await?;
        let id = self.lock_id(lock)?;
        {
            let mut state = self.state();
            self.check_held(&state, lock, id)?;
            if state.sides.get(lock.side()).and_then(|s| s.root.as_ref()).map(|r| r.version) != expected {
                return Err(StateError::Conflict { side: lock.side().to_owned(), store: self.describe() });
            }
            let version = state.next_index();
            state.side(lock.side()).root = Some(RootRead { bytes: bytes.to_vec(), version });
        }
        self.wake();
        self.leave(MemoryOp::SwapRoot)
    }

    /// Returns once the root's version is above `cursor` (0: at once) or `wait` passed.
    async fn watch(&self, side: &str, cursor: u64, wait: Duration) -> Result<(u64, u64)> {
        self.enter(MemoryOp::WatchRoot, side).await?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let mut tick = self.shared.tick.subscribe();
            let (version, index) = {
                let state = self.state();
                let version = state.sides.get(side).and_then(|s| s.root.as_ref()).map_or(0, |r| r.version);
                (version, state.index.max(1))
            };
            if cursor == 0 || version > cursor || tokio::time::Instant::now() >= deadline {
                return Ok((version, index));
            }
            // A timeout ends the wait; the next turn of the loop returns.
            let _ = tokio::time::timeout_at(deadline, tick.changed()).await;
        }
    }
}

/// Documents and parts.
impl MemoryStore {
    async fn read_with<T: Send>(&self, op: MemoryOp, side: &str, read: impl FnOnce(&Side) -> T + Send) -> Result<Option<T>> {
        self.enter(op, side).await?;
        let out = self.state().sides.get(side).map(read);
        self.leave(op)?;
        Ok(out)
    }

    async fn write_with(&self, op: MemoryOp, side: &str, write: impl FnOnce(&mut Side) + Send) -> Result<()> {
        self.enter(op, side).await?;
        write(self.state().side(side));
        self.leave(op)
    }

    /// A write only the holder of `lock` may make.
    async fn write_locked(&self, op: MemoryOp, lock: &StoreLock, write: impl FnOnce(&mut State) + Send) -> Result<()> {
        self.enter(op, lock.side()).await?;
        let id = self.lock_id(lock)?;
        {
            let mut state = self.state();
            self.check_held(&state, lock, id)?;
            write(&mut state);
        }
        self.leave(op)
    }
}

impl StoreBackend for MemoryStore {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn describe(&self) -> String {
        format!("memory store `{}`", self.shared.name)
    }

    fn lock_side<'a>(&'a self, side: &'a str, options: &'a LockOptions, on_wait: OnWait<'a>) -> BoxFuture<'a, Result<StoreLock>> {
        Box::pin(async move {
            self.enter(MemoryOp::Lock, side).await?;
            let lock = self.acquire(side, options, on_wait).await?;
            Ok(StoreLock::new(lock))
        })
    }

    fn lock_holder<'a>(&'a self, side: &'a str) -> BoxFuture<'a, Result<Option<String>>> {
        Box::pin(async move {
            let holder = self.read_with(MemoryOp::LockHolder, side, |s| s.lock.as_ref().map(|h| h.holder.clone())).await?;
            Ok(holder.flatten())
        })
    }

    fn read_doc<'a>(&'a self, side: &'a str, name: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        Box::pin(async move { Ok(self.read_with(MemoryOp::ReadDoc, side, |s| s.docs.get(name).cloned()).await?.flatten()) })
    }

    fn write_doc<'a>(&'a self, side: &'a str, name: &'a str, bytes: &'a [u8]) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.write_with(MemoryOp::WriteDoc, side, move |s| {
            s.docs.insert(name.to_owned(), bytes.to_vec());
        }))
    }

    fn delete_doc<'a>(&'a self, side: &'a str, name: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.write_with(MemoryOp::DeleteDoc, side, move |s| {
            s.docs.remove(name);
        }))
    }

    fn write_locked_doc<'a>(&'a self, lock: &'a StoreLock, name: &'a str, bytes: &'a [u8]) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.write_locked(MemoryOp::WriteLockedDoc, lock, move |state| {
            state.side(lock.side()).docs.insert(name.to_owned(), bytes.to_vec());
        }))
    }

    fn read_root<'a>(&'a self, side: &'a str) -> BoxFuture<'a, Result<Option<RootRead>>> {
        Box::pin(async move { Ok(self.read_with(MemoryOp::ReadRoot, side, |s| s.root.clone()).await?.flatten()) })
    }

    fn read_part<'a>(&'a self, side: &'a str, hash: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        Box::pin(async move { Ok(self.read_with(MemoryOp::ReadPart, side, |s| s.parts.get(hash).cloned()).await?.flatten()) })
    }

    fn list_parts<'a>(&'a self, side: &'a str) -> BoxFuture<'a, Result<Vec<String>>> {
        Box::pin(async move {
            let names = self.read_with(MemoryOp::ListParts, side, |s| s.parts.keys().cloned().collect()).await?;
            Ok(names.unwrap_or_default())
        })
    }

    // Without a lock check, as on Consul: a lost writer's parts are orphans for the next
    // commit's collection.
    fn write_new_parts<'a>(&'a self, lock: &'a StoreLock, parts: Vec<(String, Vec<u8>)>) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.write_with(MemoryOp::WriteParts, lock.side(), move |s| s.parts.extend(parts)))
    }

    fn remove_parts<'a>(&'a self, lock: &'a StoreLock, hashes: Vec<String>) -> BoxFuture<'a, Result<()>> {
        let side = lock.side();
        Box::pin(self.write_locked(MemoryOp::RemoveParts, lock, move |state| {
            for hash in hashes {
                if state.side(side).parts.remove(&hash).is_some() {
                    state.removed.push((side.to_owned(), hash));
                }
            }
        }))
    }

    fn swap_root<'a>(&'a self, lock: &'a StoreLock, bytes: &'a [u8], expected: Option<u64>) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.swap(lock, bytes, expected))
    }

    fn watch_root<'a>(&'a self, side: &'a str, cursor: u64, wait: Duration) -> BoxFuture<'a, Result<(u64, u64)>> {
        Box::pin(self.watch(side, cursor, wait))
    }
}

//! One writer per side: the lock a side's writer holds while it writes.
//!
//! - **File store**: an OS lock on `<dir>/<side>.lock` ([`crate::SideLock`]), held for the life
//!   of the process; a second process on that side fails at once, naming the file.
//! - **Memory store**: an in-process lock ([`crate::MemoryLock`]) that a test can make lost.
//! - **Consul**: a session lock on `<prefix><side>/lock`. The writer creates a TTL session (no
//!   health checks, behaviour "release"), acquires the key with its holder description as the
//!   value, and renews the session every TTL/2 in the background. A second instance is a hot
//!   standby: it keeps a session of its own alive, blocks on the lock key, and acquires it as
//!   soon as the holder's session ends and the lock-delay has passed. A holder that stops
//!   without releasing (killed, partitioned) is taken over within 2 x TTL + lock-delay: Consul
//!   invalidates a session up to 2 x TTL after its last renewal, then refuses the key for the
//!   lock-delay, which keeps a holder that has not noticed its loss yet from racing its
//!   successor.
//!
//! A lock whose renewal fails (session gone, key no longer ours, or no successful renewal for a
//! whole TTL) is *lost*: [`ConsulLock::is_held`] turns false and [`ConsulLock::lost`] resolves,
//! so the cycle in progress is abandoned. Being told is not what keeps a lost writer from
//! writing, though: every root swap runs in one txn with a `check-session` on the lock key, so
//! a writer whose session ended commits nothing whatever it believes.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::consul::{ConsulClient, ConsulError, SessionSpec};
use crate::store::{BackendLock, BoxFuture};
use crate::{Result, StateError};

/// TTL of a side's session. The renewal runs every TTL/2; Consul invalidates an unrenewed session
/// within 2 x TTL. 15 s is Consul's own lock default (`api/lock.go`, `DefaultLockSessionTTL`).
pub const SESSION_TTL: Duration = Duration::from_secs(15);

/// Lock-delay of a side's session: after the session ends, nobody acquires the lock for this
/// long (Consul's default, 15 s). Together with [`SESSION_TTL`]: a standby takes over at most
/// 2 x 15 s + 15 s = 45 s after the holder died.
pub const LOCK_DELAY: Duration = Duration::from_secs(15);

/// How a side lock is taken. The timing defaults to [`SESSION_TTL`] and [`LOCK_DELAY`]; tests
/// shorten it (a real Consul refuses TTLs under 10 s).
#[derive(Debug, Clone)]
pub struct LockOptions {
    /// Who holds the lock, as other instances see it (stored as the lock key's value and in the
    /// session's name): host and process id by default. Never a secret.
    pub holder: String,
    /// Session TTL.
    pub ttl: Duration,
    /// Session lock-delay.
    pub lock_delay: Duration,
}

impl Default for LockOptions {
    fn default() -> Self {
        Self {
            holder: default_holder(),
            ttl: SESSION_TTL,
            lock_delay: LOCK_DELAY,
        }
    }
}

/// `<host> pid <pid>`: what a standby names when it waits for this process.
pub fn default_holder() -> String {
    let host = ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".to_owned());
    format!("{host} pid {}", std::process::id())
}

/// What a standby sees of a side's lock while it waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The lock (`consul key `vsync/origin/lock``).
    pub lock: String,
    /// The holder's description; `None` while nobody holds it but its lock-delay still runs.
    pub holder: Option<String>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.holder {
            Some(h) => write!(f, "{} is held by `{h}`", self.lock),
            None => write!(f, "{} was just released; its lock-delay is running", self.lock),
        }
    }
}

/// Called with the lock's holder whenever a waiting standby sees it change.
pub type OnWait<'a> = &'a mut (dyn FnMut(&Holder) + Send);

/// A future that resolves when a lock is lost (never, for the file store's).
pub type Lost = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A held Consul side lock; renewed in the background until released or dropped.
#[derive(Debug)]
pub struct ConsulLock {
    client: ConsulClient,
    side: String,
    key: String,
    options: LockOptions,
    session: String,
    held: watch::Receiver<bool>,
    renewer: Option<JoinHandle<()>>,
}

/// A session that is destroyed when dropped, unless handed on (a standby's session, while it
/// waits: a cancelled wait leaves no session behind for the TTL).
struct OwnedSession {
    client: ConsulClient,
    id: Option<String>,
}

impl OwnedSession {
    fn id(&self) -> &str {
        self.id.as_deref().unwrap_or_default()
    }

    fn take(mut self) -> String {
        self.id.take().unwrap_or_default()
    }
}

impl Drop for OwnedSession {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            let client = self.client.clone();
            spawn_cleanup(async move {
                let _ = client.destroy_session(&id).await;
            });
        }
    }
}

/// Best effort, for `Drop`: runs `f` on the current runtime, if there is one.
fn spawn_cleanup(f: impl Future<Output = ()> + Send + 'static) {
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), f).await;
        });
    }
}

/// Bounded backoff for a standby's transient failures: 1 s, 2 s, 4 s, ... at most 10 s.
fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(4)).min(Duration::from_secs(10))
}

impl ConsulLock {
    /// Waits until this process holds `key` (the lock of `side`), reporting the holder to
    /// `on_wait` whenever it changes. Transient Consul failures are retried while waiting; a
    /// refusal (ACL, bad request) is returned.
    pub(crate) async fn acquire(client: &ConsulClient, side: &str, key: String, options: LockOptions, on_wait: OnWait<'_>) -> Result<Self> {
        let mut failures = 0u32;
        let mut session: Option<(OwnedSession, Instant)> = None;
        let mut seen: Option<Holder> = None;
        loop {
            match Self::attempt(client, side, &key, &options, &mut session, &mut seen, on_wait).await {
                Ok(Some(id)) => {
                    let (tx, rx) = watch::channel(true);
                    let renewer = tokio::spawn(keep(client.clone(), key.clone(), id.clone(), options.ttl, tx));
                    return Ok(Self {
                        client: client.clone(),
                        side: side.to_owned(),
                        key,
                        options,
                        session: id,
                        held: rx,
                        renewer: Some(renewer),
                    });
                }
                Ok(None) => failures = 0,
                Err(StateError::Consul(e)) if e.is_transient() => {
                    failures += 1;
                    tokio::time::sleep(backoff(failures)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One step of the wait: `Some(session)` when acquired; `None` after waiting a while (the
    /// key changed, its lock-delay may have passed, or our own session needs renewing).
    async fn attempt(
        client: &ConsulClient,
        side: &str,
        key: &str,
        options: &LockOptions,
        session: &mut Option<(OwnedSession, Instant)>,
        seen: &mut Option<Holder>,
        on_wait: OnWait<'_>,
    ) -> Result<Option<String>> {
        // The waiter's own session must stay alive while it waits (the TTL is only a lower
        // bound of its life): renew it every TTL/2, and create a new one if it is gone.
        let due = session.as_ref().is_none_or(|(_, renewed)| renewed.elapsed() >= options.ttl / 2);
        if due {
            let alive = match session.as_ref() {
                Some((s, _)) => client.renew_session(s.id()).await?,
                None => false,
            };
            if !alive {
                let spec = SessionSpec {
                    name: format!("vsync {side} ({})", options.holder),
                    ttl: options.ttl,
                    lock_delay: options.lock_delay,
                };
                let id = client.create_session(&spec).await?;
                *session = Some((OwnedSession { client: client.clone(), id: Some(id) }, Instant::now()));
            } else if let Some((_, renewed)) = session.as_mut() {
                *renewed = Instant::now();
            }
        }
        let Some((owned, _)) = session.as_ref() else {
            return Ok(None);
        };
        if client.acquire(key, owned.id(), options.holder.as_bytes()).await? {
            return Ok(session.take().map(|(s, _)| s.take()));
        }
        let read = client.get(key).await?;
        let holder = Holder {
            lock: format!("consul key `{key}`"),
            holder: read
                .data
                .as_ref()
                .filter(|e| e.session.is_some())
                .map(|e| String::from_utf8_lossy(&e.value).into_owned()),
        };
        if seen.as_ref() != Some(&holder) {
            on_wait(&holder);
            *seen = Some(holder.clone());
        }
        if holder.holder.is_some() {
            // Held: block until the key changes (its holder's session ended), or TTL/2 passed
            // and our own session wants renewing.
            client.get_blocking(key, read.index.max(1), (options.ttl / 2).max(Duration::from_millis(100))).await?;
        } else {
            // Free but refused: the lock-delay of the last holder's session runs; retry soon.
            let retry = (options.lock_delay / 8).clamp(Duration::from_millis(100), Duration::from_secs(1));
            tokio::time::sleep(retry).await;
        }
        Ok(None)
    }

    /// The side.
    pub fn side(&self) -> &str {
        &self.side
    }

    /// The lock key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The session holding the lock (what commits check with `check-session`).
    pub fn session(&self) -> &str {
        &self.session
    }

    /// The options it was taken with.
    pub fn options(&self) -> &LockOptions {
        &self.options
    }

    /// Whether the lock is still held, as far as this process knows (commits check it with
    /// Consul anyway).
    pub fn is_held(&self) -> bool {
        *self.held.borrow()
    }

    /// Resolves once the lock is lost (at once if it is already).
    pub fn lost(&self) -> Lost {
        let mut rx = self.held.clone();
        Box::pin(async move {
            // A closed channel means the renewal stopped: the lock is gone too.
            let _ = rx.wait_for(|held| !*held).await;
        })
    }

    /// Waits, as a standby, until the lock is held again (after it was lost), with a new
    /// session. A lock still held is left as it is.
    pub(crate) async fn regain(&mut self, on_wait: OnWait<'_>) -> Result<()> {
        if self.is_held() {
            return Ok(());
        }
        let fresh = Self::acquire(&self.client, &self.side, self.key.clone(), self.options.clone(), on_wait).await?;
        // The old value's drop stops its (already finished) renewal; its session is gone.
        *self = fresh;
        Ok(())
    }

    /// Gives the lock up now: releases the key (so a standby takes over without waiting for a
    /// lock-delay) and destroys the session. Best effort and bounded (a few seconds): an
    /// unreachable Consul invalidates the session within 2 x TTL anyway.
    pub async fn release(mut self) {
        self.stop_renewing();
        let (client, key, session, value) = (self.client.clone(), self.key.clone(), std::mem::take(&mut self.session), self.options.holder.clone());
        let _ = tokio::time::timeout(Duration::from_secs(2), client.release(&key, &session, value.as_bytes())).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), client.destroy_session(&session)).await;
    }

    fn stop_renewing(&mut self) {
        if let Some(task) = self.renewer.take() {
            task.abort();
        }
    }
}

impl BackendLock for ConsulLock {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn side(&self) -> &str {
        &self.side
    }

    fn is_held(&self) -> bool {
        ConsulLock::is_held(self)
    }

    fn lost(&self) -> Lost {
        ConsulLock::lost(self)
    }

    fn describe(&self) -> String {
        format!("consul key `{}`", self.key)
    }

    fn regain<'a>(&'a mut self, on_wait: OnWait<'a>) -> BoxFuture<'a, Result<()>> {
        Box::pin(ConsulLock::regain(self, on_wait))
    }

    fn release(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(ConsulLock::release(*self))
    }
}

impl Drop for ConsulLock {
    fn drop(&mut self) {
        self.stop_renewing();
        // Released explicitly already, or lost (its session is gone): nothing to do.
        if self.session.is_empty() || !self.is_held() {
            return;
        }
        let (client, key, session, value) = (self.client.clone(), self.key.clone(), self.session.clone(), self.options.holder.clone());
        spawn_cleanup(async move {
            let _ = client.release(&key, &session, value.as_bytes()).await;
            let _ = client.destroy_session(&session).await;
        });
    }
}

/// The renewal of a held lock: every TTL/2 renew the session and check the key is still ours;
/// on a transient failure retry every second, for at most one TTL since the last success (the
/// server may invalidate the session from then on). Then the lock is lost: `held` turns false
/// and the session is destroyed, so the lock is free for a standby after its lock-delay.
async fn keep(client: ConsulClient, key: String, session: String, ttl: Duration, held: watch::Sender<bool>) {
    let mut last_ok = Instant::now();
    let mut failing = false;
    loop {
        let pause = if failing { (ttl / 10).clamp(Duration::from_millis(50), Duration::from_secs(1)) } else { ttl / 2 };
        tokio::time::sleep(pause).await;
        let checked = tokio::time::timeout((ttl / 3).max(Duration::from_millis(100)), async {
            if !client.renew_session(&session).await? {
                return Ok::<bool, ConsulError>(false);
            }
            // Someone may have deleted or released the key: then the session alone is not the lock.
            Ok(client.get(&key).await?.data.is_some_and(|e| e.session.as_deref() == Some(session.as_str())))
        })
        .await;
        match checked {
            Ok(Ok(true)) => {
                last_ok = Instant::now();
                failing = false;
            }
            Ok(Ok(false)) => break,
            Ok(Err(e)) if !e.is_transient() => break,
            // A transient failure or a renewal that did not answer in time.
            _ => {
                failing = true;
                if last_ok.elapsed() >= ttl {
                    break;
                }
            }
        }
    }
    held.send_replace(false);
    let _ = tokio::time::timeout(Duration::from_secs(2), client.destroy_session(&session)).await;
}

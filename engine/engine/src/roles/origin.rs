//! The origin role's side of a round: a complete scan, or an update of the last published info
//! from audit events, then a publish; and the prefetch that reads the next batch of events
//! while the destinations copy. [`OriginRole`] owns what carries across rounds: the publisher,
//! the view it published last and how its failures settle.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tracing::Instrument as _;
use tracing::{info, warn};
use vsync_core::{Clock, OriginInfo, OriginSpec};
use vsync_state::{StateStore, StoreLock};
use vsync_vault::VaultClient;

use super::settle::{Round, Settling, Shared, Stop, cycle_id, lock_lost};
use crate::audit::{AuditFeed, Batch};
use crate::fault::Fault;
use crate::observer::{Event, Settled};
use crate::origin;
use crate::sides::Side;

/// The origin role's own parts: it scans and publishes.
#[derive(Debug)]
pub struct Publisher {
    /// What the configuration says.
    pub spec: OriginSpec,
    /// The origin side's writer lock.
    pub lock: StoreLock,
    /// The KV v1 digest key (`digest_key_file`), never stored.
    pub digest_key: Option<Vec<u8>>,
    /// The socket audit device feed (`audit_listen`): events trigger incremental updates.
    pub audit: Option<AuditFeed>,
}

/// How long the origin waits after an audit event for more to arrive, so a burst of writes
/// becomes one update.
pub const EVENT_COALESCE: Duration = Duration::from_millis(5);

/// The origin info this process published last and the root version it got, the base of the
/// next incremental update. Cleared on any doubt, so the next round scans.
#[derive(Debug, Default)]
pub(super) struct OriginView {
    info: Option<Arc<OriginInfo>>,
    version: Option<u64>,
}

/// What a round does on the origin side.
#[derive(Debug)]
pub(super) enum Pass {
    /// A complete scan (or, without a publisher, loading what the origin published).
    Full,
    /// Audit events: update just these keys.
    Events(Batch),
    /// Audit events whose keys were already re-read while the destinations copied the last
    /// round's changes: apply and publish without reading again.
    Prefetched(Prefetch),
}

/// A batch of audit events taken, and its keys re-read, while the destinations of a round ran
/// (the next round only applies and publishes it), so copying one batch overlaps reading the
/// next. The reads are the same as an event round's: only their timing differs.
#[derive(Debug)]
pub(super) struct Prefetch {
    batch: Batch,
    found: Result<Option<origin::FoundChanges>, Fault>,
}

/// What the origin side of a round leaves for the destinations.
pub(super) enum OriginStep {
    /// The destinations run on `info`, the origin's `generation`; `scanned` when the origin
    /// was scanned completely.
    Run { info: Arc<OriginInfo>, generation: Option<u64>, scanned: bool },
    /// The round ends here.
    Skip(Round),
}

/// What the publisher produced: the info, whether it was published, and for an update from
/// events how many entries changed.
type Published = (Arc<OriginInfo>, bool, Option<usize>);

/// The origin role of this process.
#[derive(Debug)]
pub(super) struct OriginRole {
    /// Its parts.
    pub publisher: Publisher,
    view: OriginView,
    settling: Settling,
    side: Side,
}

impl OriginRole {
    pub fn new(publisher: Publisher) -> Self {
        Self { publisher, view: OriginView::default(), settling: Settling::default(), side: Side::Origin }
    }

    /// The audit feed, when events may drive rounds: only with a view to apply them to
    /// (without one, events wait for the next full round: a scan per event batch would hammer
    /// the origin while, say, the state store is down).
    pub fn live_feed(&self) -> Option<&AuditFeed> {
        self.publisher.audit.as_ref().filter(|_| self.view.info.is_some())
    }

    /// The origin side of a round: scans (or applies the pass's events), publishes, and
    /// settles the outcome, which every observer sees.
    pub async fn round(&mut self, shared: Shared<'_>, store: &StateStore, pass: Pass) -> Result<OriginStep, Stop> {
        let Shared { origin_vault: vault, clock, observers, once } = shared;
        let started = clock.now();
        let (batch, prefetched) = match pass {
            Pass::Full => (None, None),
            Pass::Events(batch) => (Some(batch), None),
            Pass::Prefetched(Prefetch { batch, found }) => (Some(batch), Some(found)),
        };
        let p = &self.publisher;
        let work = publish(p, &mut self.view, vault, store, batch.as_ref(), prefetched, clock)
            // Every log line of the scan carries the role and the cycle id first.
            .instrument(tracing::info_span!("cycle", role = "origin", cycle = %cycle_id(started)));
        let result = tokio::select! {
            r = work => r,
            () = p.lock.lost() => Err(lock_lost("the origin", &p.lock)),
        };
        let ended = clock.now();
        match result {
            // Events that changed nothing (a write of the same metadata, a `config` path):
            // nothing to publish, nothing for the destinations.
            Ok((_, false, Some(_))) => Ok(OriginStep::Skip(Round::default())),
            Ok((info, published, changed)) => {
                self.settling.succeeded();
                let generation = origin::published_generation(store).await;
                let event = match changed {
                    None => Event::OriginScanned { info: &info, published },
                    Some(changed) => Event::OriginUpdated { info: &info, changed, published },
                };
                // It just published under its lock: its record is the side's.
                let settled = Settled { side: &self.side, started, ended, generation, writer: true, outcome: Ok(event) };
                observers.settled(&settled).await;
                Ok(OriginStep::Run { info: info.clone(), generation, scanned: changed.is_none() })
            }
            Err(fault) => {
                self.view = OriginView::default();
                let writer = self.publisher.lock.is_held();
                let settled = Settled { side: &self.side, started, ended, generation: None, writer, outcome: Err(&fault) };
                observers.settled(&settled).await;
                let mut done = Round { scanned: true, ..Round::default() };
                done.settle_failure(&mut self.settling, None, fault, once, true)?;
                Ok(OriginStep::Skip(done))
            }
        }
    }

    /// Takes the next batch of audit events and re-reads its keys, while the destinations copy
    /// this round's changes, so the next round only applies and publishes it: reading one batch
    /// overlaps copying the previous one (a burst of writes then flows through both sides at
    /// once). Only with a view to apply it to, and never in a `--once` round (then it never
    /// resolves). Once it sets `taken`, the events are out of the feed: it must run to its end.
    pub async fn prefetch(&self, shared: Shared<'_>, taken: &AtomicBool) -> Option<Prefetch> {
        let Shared { origin_vault: vault, clock, once, .. } = shared;
        let Some(feed) = self.live_feed().filter(|_| !once) else {
            return std::future::pending().await;
        };
        let mounts = self.view.info.as_ref().map(|i| i.mounts.clone()).unwrap_or_default();
        feed.changed().await;
        tokio::time::sleep(EVENT_COALESCE).await;
        let batch = feed.take();
        taken.store(true, Ordering::SeqCst);
        if batch.is_empty() {
            return None;
        }
        let found = if batch.rescan {
            Ok(None)
        } else {
            let p = &self.publisher;
            origin::read_changes(vault, &p.spec, p.digest_key.as_deref(), &mounts, &batch.changes, clock).await
        };
        Some(Prefetch { batch, found })
    }
}

/// Updates the last published view from `batch`, or (no batch, or an update that is not safe
/// or failed) scans; then publishes. The commit's base is the root before the scan: an older
/// scan never lands on a newer one.
async fn publish(
    p: &Publisher,
    view: &mut OriginView,
    vault: &VaultClient,
    store: &StateStore,
    batch: Option<&Batch>,
    prefetched: Option<Result<Option<origin::FoundChanges>, Fault>>,
    clock: &dyn Clock,
) -> Result<Published, Fault> {
    if let Some(batch) = batch {
        match apply_events(vault, store, p, view, batch, prefetched, clock).await {
            Ok(Some((info, published, changed))) => return Ok((info, published, Some(changed))),
            Ok(None) => info!(paths = batch.changes.len(), "audit events: scanning the origin instead of an update"),
            Err(fault) => warn!("{fault}; scanning the origin instead of an update from audit events"),
        }
    }
    *view = OriginView::default();
    let base = origin::published_version(store).await?;
    let info = origin::scan_with(vault, &p.spec, p.digest_key.as_deref(), clock).await?;
    let published = origin::publish(store, &p.lock, base, &info).await?;
    let version = if published { origin::published_version(store).await? } else { base };
    *view = OriginView { info: Some(info.clone()), version };
    Ok((info, published, None))
}

/// The origin side of an event round: applies the batch to the last published view and
/// publishes against that view's root. `Ok(None)`: not safe (no view, a changed mount); the
/// caller scans. The view is taken for the update and put back only after a successful
/// publish, so a failure anywhere leaves no view and the next round scans too.
async fn apply_events(
    vault: &VaultClient,
    store: &StateStore,
    p: &Publisher,
    view: &mut OriginView,
    batch: &Batch,
    prefetched: Option<Result<Option<origin::FoundChanges>, Fault>>,
    clock: &dyn Clock,
) -> Result<Option<(Arc<OriginInfo>, bool, usize)>, Fault> {
    if batch.rescan {
        return Ok(None);
    }
    let (Some(mut info), Some(base)) = (view.info.take(), view.version.take()) else {
        return Ok(None);
    };
    let found = match prefetched {
        Some(found) => found?,
        None => origin::read_changes(vault, &p.spec, p.digest_key.as_deref(), &info.mounts, &batch.changes, clock).await?,
    };
    let Some(found) = found else {
        return Ok(None);
    };
    let changed = origin::apply_found(Arc::make_mut(&mut info), found);
    let published = changed > 0 && origin::publish(store, &p.lock, Some(base), &info).await?;
    info!(paths = batch.changes.len(), changed, published, "origin updated from audit events");
    let version = if published { origin::published_version(store).await? } else { Some(base) };
    *view = OriginView { info: Some(info.clone()), version };
    Ok(Some((info, published, changed)))
}

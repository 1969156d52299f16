//! Status records for `vsync status`: each role writes one small document per cycle to
//! `<side>/status` in its state store, outside the sync-info root and parts (so watchers and
//! the no-change rule about sync info are unaffected). The origin's record also keeps the
//! publish time of its recent generations, so a destination's lag is computable: 0 when its
//! last commit applied the origin's current generation, otherwise now minus the publish time of
//! the oldest generation it has not applied.
//!
//! The role loop does not write the records itself: [`StatusRecords`] is one of its
//! [`CycleObserver`]s, so each settled cycle lands in its side's record once.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;

use vsync_state::StateStore;

use crate::observer::{CycleObserver, Event, Observing, Settled};
use crate::report::CycleReport;
use crate::sides::{self, ORIGIN_SIDE, Side, side_name};

/// The status document's name in a side.
pub use crate::sides::STATUS_DOC;

/// Publish times kept in the origin's record.
pub const PUBLISHED_KEPT: usize = 64;

/// One role's status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleStatus {
    /// `origin` or `destination`.
    pub role: String,
    /// Destination name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    /// The process that wrote this record (host and pid).
    #[serde(default)]
    pub writer: String,
    /// The last cycle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_cycle: Option<CycleStatus>,
    /// End of the last successful cycle (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success: Option<String>,
    /// Origin: the generation it published last. Destination: the origin generation its last
    /// successful cycle applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// Origin only: publish times of recent generations, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub published: Vec<Published>,
}

/// One cycle.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CycleStatus {
    /// Start (RFC 3339).
    pub started: String,
    /// End (RFC 3339).
    pub ended: String,
    /// `ok`, `secret-failures` (completed, some secrets failed) or `failed`.
    pub outcome: String,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Counts, for a completed cycle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<Counts>,
}

/// A completed cycle's counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Origin: secrets scanned. Destination: secrets added.
    pub secrets: usize,
    /// Destination: updated.
    #[serde(default)]
    pub updated: usize,
    /// Destination: deleted.
    #[serde(default)]
    pub deleted: usize,
    /// Destination: unchanged.
    #[serde(default)]
    pub unchanged: usize,
    /// Destination: per-secret failures.
    #[serde(default)]
    pub failed: usize,
}

/// When a generation was published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// The origin root's generation.
    pub generation: u64,
    /// RFC 3339.
    pub time: String,
}

/// RFC 3339 of `t`, to the millisecond.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn parse(t: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(t.trim_end_matches('Z')).ok()
}

impl RoleStatus {
    /// A fresh record for a role.
    pub fn new(role: &str, destination: Option<&str>) -> Self {
        Self {
            role: role.to_owned(),
            destination: destination.map(str::to_owned),
            writer: vsync_state::lock::default_holder(),
            ..Self::default()
        }
    }

    /// Records an origin cycle that ran from `started` to `ended`.
    pub fn origin_cycle(&mut self, started: SystemTime, ended: SystemTime, result: Result<(usize, Option<u64>, bool), &str>) {
        let mut cycle = CycleStatus { started: rfc3339(started), ended: rfc3339(ended), ..CycleStatus::default() };
        match result {
            Ok((secrets, generation, published)) => {
                cycle.outcome = "ok".into();
                cycle.counts = Some(Counts { secrets, ..Counts::default() });
                self.last_success = Some(cycle.ended.clone());
                if let Some(g) = generation {
                    if published || !self.published.iter().any(|p| p.generation == g) {
                        self.published.push(Published { generation: g, time: cycle.ended.clone() });
                    }
                    self.generation = Some(g);
                }
                let excess = self.published.len().saturating_sub(PUBLISHED_KEPT);
                self.published.drain(..excess);
            }
            Err(e) => {
                cycle.outcome = "failed".into();
                cycle.error = Some(e.to_owned());
            }
        }
        self.last_cycle = Some(cycle);
    }

    /// Records a destination cycle that ran from `started` to `ended`; `generation` is the
    /// origin generation it worked from.
    pub fn destination_cycle(&mut self, started: SystemTime, ended: SystemTime, generation: Option<u64>, result: Result<&CycleReport, &str>) {
        let mut cycle = CycleStatus { started: rfc3339(started), ended: rfc3339(ended), ..CycleStatus::default() };
        match result {
            Ok(report) => {
                let c = &report.counts;
                cycle.outcome = if c.failed > 0 { "secret-failures".into() } else { "ok".into() };
                cycle.counts = Some(Counts {
                    secrets: c.added,
                    updated: c.updated,
                    deleted: c.deleted,
                    unchanged: c.unchanged,
                    failed: c.failed,
                });
                self.last_success = Some(cycle.ended.clone());
                self.generation = generation.or(self.generation);
            }
            Err(e) => {
                cycle.outcome = "failed".into();
                cycle.error = Some(e.to_owned());
            }
        }
        self.last_cycle = Some(cycle);
    }

    /// How far a destination with this record lags the origin's record, at `now`.
    pub fn lag(&self, origin: &RoleStatus, now: SystemTime) -> Option<Duration> {
        let current = origin.generation?;
        let applied = self.generation.unwrap_or(0);
        if applied >= current {
            return Some(Duration::ZERO);
        }
        // The oldest publish this destination has not applied; if the list was trimmed past
        // it, the oldest one kept (a lower bound).
        let oldest = origin.published.iter().find(|p| p.generation > applied).or(origin.published.first())?;
        Some(now.duration_since(parse(&oldest.time)?).unwrap_or_default())
    }
}

/// What `vsync status` shows.
#[derive(Debug, Serialize)]
pub struct StatusReport {
    /// The origin's record.
    pub origin: Option<RoleStatus>,
    /// Who holds the origin side's Consul lock now (standbys wait on it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin_lock_holder: Option<String>,
    /// Each destination's.
    pub destinations: Vec<DestinationStatus>,
    /// Destinations over the allowed lag (or without a record) when a limit was given.
    pub lagging: Vec<String>,
}

impl StatusReport {
    /// One line per role.
    pub fn human(&self) -> String {
        let line = |role: &str, r: &Option<RoleStatus>| match r {
            None => format!("{role}: no status recorded yet"),
            Some(r) => {
                let cycle = r.last_cycle.as_ref().map_or("no cycle yet".to_owned(), |c| {
                    let error = c.error.as_ref().map(|e| format!(" ({e})")).unwrap_or_default();
                    format!("last cycle {} .. {}: {}{error}", c.started, c.ended, c.outcome)
                });
                format!(
                    "{role}: {cycle}; last success {}; generation {}; writer {}",
                    r.last_success.as_deref().unwrap_or("never"),
                    r.generation.map_or("-".to_owned(), |g| g.to_string()),
                    r.writer
                )
            }
        };
        let held = |h: &Option<String>| h.as_ref().map(|h| format!("; lock held by {h}")).unwrap_or_default();
        let mut out = line("origin", &self.origin) + &held(&self.origin_lock_holder) + "\n";
        for d in &self.destinations {
            let lag = d
                .lag_seconds
                .map_or("unknown".to_owned(), |l| humantime::format_duration(Duration::from_secs(l as u64)).to_string());
            out.push_str(&format!("{}; lag {lag}{}\n", line(&format!("destination {}", d.name), &d.status), held(&d.lock_holder)));
        }
        out
    }
}

/// One destination in a [`StatusReport`].
#[derive(Debug, Serialize)]
pub struct DestinationStatus {
    /// Its name.
    pub name: String,
    /// Its record.
    pub status: Option<RoleStatus>,
    /// Its lag behind the origin, when both records exist.
    pub lag_seconds: Option<f64>,
    /// Who holds its side's Consul lock now (its standbys wait on it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock_holder: Option<String>,
}

/// Reads every role's record and computes each destination's lag at `now`; with `max_lag`,
/// names the destinations over it (a destination that never recorded a cycle is over it).
pub async fn report(origin_store: &StateStore, destinations: &[(String, StateStore)], max_lag: Option<Duration>, now: SystemTime) -> StatusReport {
    let origin = read(origin_store, ORIGIN_SIDE).await;
    let origin_lock_holder = origin_store.lock_holder(ORIGIN_SIDE).await.ok().flatten();
    let mut out = StatusReport { origin, origin_lock_holder, destinations: Vec::new(), lagging: Vec::new() };
    for (name, store) in destinations {
        let status = read(store, &side_name(name)).await;
        let lag = match (&status, &out.origin) {
            (Some(r), Some(o)) => r.lag(o, now),
            _ => None,
        };
        if max_lag.is_some_and(|max| lag.is_none_or(|l| l > max)) {
            out.lagging.push(name.clone());
        }
        let side = side_name(name);
        let lock_holder = store.lock_holder(&side).await.ok().flatten();
        out.destinations.push(DestinationStatus { name: name.clone(), status, lag_seconds: lag.map(|l| l.as_secs_f64()), lock_holder });
    }
    out
}

/// Reads a side's status record.
pub async fn read(store: &StateStore, side: &str) -> Option<RoleStatus> {
    sides::read_status(store, side).await
}

/// Writes a side's status record; a failure is logged, never fatal (status is observability).
pub async fn write(store: &StateStore, side: &str, status: &RoleStatus) {
    sides::write_status(store, side, status).await;
}

/// The status records this process writes, carried across cycles: one per side it runs.
#[derive(Debug, Default)]
pub struct StatusRecords {
    sides: Mutex<HashMap<Side, (StateStore, RoleStatus)>>,
}

impl StatusRecords {
    /// Starts each side's record from what its store holds, so the origin's publish history,
    /// the last success and the applied generation survive a restart.
    pub async fn read(origin: Option<&StateStore>, destinations: &[(String, StateStore)]) -> Self {
        let mut sides = HashMap::new();
        if let Some(store) = origin {
            let mut record = RoleStatus::new("origin", None);
            if let Some(previous) = read(store, ORIGIN_SIDE).await {
                record.published = previous.published;
                record.last_success = previous.last_success;
                record.generation = previous.generation;
            }
            sides.insert(Side::Origin, (store.clone(), record));
        }
        for (name, store) in destinations {
            let mut record = RoleStatus::new("destination", Some(name));
            if let Some(previous) = read(store, &side_name(name)).await {
                record.last_success = previous.last_success;
                record.generation = previous.generation;
            }
            sides.insert(Side::Destination(name.clone()), (store.clone(), record));
        }
        Self { sides: Mutex::new(sides) }
    }

    /// The origin generation a side's record says it applied (or published) last.
    pub fn generation(&self, side: &Side) -> Option<u64> {
        self.lock().get(side).and_then(|(_, r)| r.generation)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Side, (StateStore, RoleStatus)>> {
        self.sides.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Applies a settled cycle to its side's record; the record to write, if this process
    /// may write it.
    fn apply(&self, cycle: &Settled<'_>) -> Option<(StateStore, RoleStatus)> {
        let mut sides = self.lock();
        let (store, record) = sides.get_mut(cycle.side)?;
        let (started, ended) = (cycle.started, cycle.ended);
        match (&cycle.side, &cycle.outcome) {
            (Side::Origin, Ok(Event::OriginScanned { info, published } | Event::OriginUpdated { info, published, .. })) => {
                record.origin_cycle(started, ended, Ok((info.entries.len(), cycle.generation, *published)));
            }
            (Side::Destination(_), Ok(Event::DestinationCycle { report, .. })) => {
                record.destination_cycle(started, ended, cycle.generation, Ok(report));
            }
            (Side::Origin, Err(fault)) => record.origin_cycle(started, ended, Err(&fault.message)),
            (Side::Destination(_), Err(fault)) => record.destination_cycle(started, ended, cycle.generation, Err(&fault.message)),
            _ => return None,
        }
        cycle.writer.then(|| (store.clone(), record.clone()))
    }
}

impl CycleObserver for StatusRecords {
    fn settled<'a>(&'a self, cycle: &'a Settled<'a>) -> Observing<'a> {
        let record = self.apply(cycle);
        Box::pin(async move {
            if let Some((store, record)) = record {
                write(&store, &cycle.side.name(), &record).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_zero_when_current_else_since_the_oldest_unapplied_publish() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let origin = RoleStatus {
            generation: Some(5),
            published: vec![
                Published { generation: 3, time: rfc3339(t0) },
                Published { generation: 4, time: rfc3339(t0 + Duration::from_secs(60)) },
                Published { generation: 5, time: rfc3339(t0 + Duration::from_secs(120)) },
            ],
            ..RoleStatus::default()
        };
        let now = t0 + Duration::from_secs(150);
        let dest = |g| RoleStatus { generation: Some(g), ..RoleStatus::default() };
        assert_eq!(dest(5).lag(&origin, now), Some(Duration::ZERO));
        assert_eq!(dest(4).lag(&origin, now), Some(Duration::from_secs(30)), "generation 5 waits since its publish");
        assert_eq!(dest(3).lag(&origin, now), Some(Duration::from_secs(90)));
        assert_eq!(dest(1).lag(&origin, now), Some(Duration::from_secs(150)), "trimmed: the oldest kept");
    }

    #[test]
    fn the_origin_keeps_recent_publish_times() {
        let mut s = RoleStatus::new("origin", None);
        for g in 1..=100 {
            s.origin_cycle(SystemTime::now(), SystemTime::now(), Ok((10, Some(g), true)));
        }
        s.origin_cycle(SystemTime::now(), SystemTime::now(), Ok((10, Some(100), false)));
        assert_eq!(s.published.len(), PUBLISHED_KEPT);
        assert_eq!(s.published.last().map(|p| p.generation), Some(100));
        s.origin_cycle(SystemTime::now(), SystemTime::now(), Err("listing failed"));
        assert_eq!(s.last_cycle.as_ref().map(|c| c.outcome.as_str()), Some("failed"));
        assert!(s.last_success.is_some());
    }

    /// The status records are an observer: each settled cycle lands in its side's record once,
    /// and a process that is no longer the side's writer leaves the stored record alone.
    #[tokio::test]
    async fn status_records_observe_settled_cycles() {
        #![allow(clippy::unwrap_used)]
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::File(vsync_state::FileStore::open(dir.path()).unwrap());
        let records = StatusRecords::read(None, &[("eu".to_owned(), store.clone())]).await;
        let side = Side::Destination("eu".into());
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let report = CycleReport::default();
        let ok = Settled {
            side: &side,
            started: t0,
            ended: t0 + Duration::from_secs(2),
            generation: Some(7),
            writer: true,
            outcome: Ok(Event::DestinationCycle { name: "eu", report: &report }),
        };
        records.settled(&ok).await;
        let stored = read(&store, "destination-eu").await.unwrap();
        assert_eq!(stored.generation, Some(7));
        assert_eq!(stored.last_cycle.as_ref().map(|c| c.outcome.as_str()), Some("ok"));
        assert_eq!(stored.last_success.as_deref(), Some(rfc3339(t0 + Duration::from_secs(2)).as_str()));
        assert_eq!(records.generation(&side), Some(7));

        let fault = crate::fault::Fault::transient("lost the lock");
        let failed = Settled { writer: false, generation: Some(7), outcome: Err(&fault), ..ok };
        records.settled(&failed).await;
        let stored = read(&store, "destination-eu").await.unwrap();
        assert_eq!(stored.last_cycle.as_ref().map(|c| c.outcome.as_str()), Some("ok"), "not the writer: the stored record stays");
    }
}

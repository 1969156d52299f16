//! The execute stage: the plan's writes, `workers` at a time, then its removals. Writes run
//! before removals, so a moved secret is never missing at both places; a fault that stops the
//! cycle aborts the tasks still running.

use std::sync::Arc;

use tokio::task::JoinSet;
use tracing::Instrument as _;
use vsync_core::cycle::{self, RemovalOutcome};
use vsync_core::{Action, OriginInfo};

use super::parts::{CycleRun, Destination};
use super::write::{Written, remove, write};
use crate::exact::{self, Inspected, Vaults};
use crate::fault::Fault;
use crate::progress::Progress;

/// A finished write task: its action and what it did.
type Joined = Result<(Action, Result<Written, Fault>), tokio::task::JoinError>;

impl Destination {
    /// Runs the plan's writes. A task is spawned only when one of the `workers` slots is free
    /// (never one task per pending write: a 100,000-key first sync would hold 100,000
    /// futures), and finished ones are settled as slots are waited for.
    pub(super) async fn write_stage(&self, run: &mut CycleRun, origin: &OriginInfo) -> Result<(), Fault> {
        let workers = self.spec.workers.max(1);
        let mut tasks: JoinSet<(Action, Result<Written, Fault>)> = JoinSet::new();
        let pending = run.planned.plan.writes.iter().filter(|a| !run.writes.contains_key(a.key())).count();
        let progress = self.progress.clone().filter(|_| pending > 0);
        if let Some(p) = &progress {
            p.begin("copying", pending as u64);
        }
        // By index, cloning one action at a time: the settling below needs the run mutably.
        for i in 0..run.planned.plan.writes.len() {
            if run.writes.contains_key(run.planned.plan.writes[i].key()) {
                continue; // failed while inspecting
            }
            while tasks.len() >= workers {
                if let Some(joined) = tasks.join_next().await {
                    self.settle_write(joined, &mut tasks, run, progress.as_deref())?;
                }
            }
            let task = self.write_task(run, origin, run.planned.plan.writes[i].clone());
            tasks.spawn(task.in_current_span());
        }
        while let Some(joined) = tasks.join_next().await {
            self.settle_write(joined, &mut tasks, run, progress.as_deref())?;
        }
        if let Some(p) = &progress {
            p.finish();
        }
        Ok(())
    }

    /// The task that writes one action: an exact replication with what its inspection found,
    /// or a copy.
    fn write_task(
        &self,
        run: &mut CycleRun,
        origin: &OriginInfo,
        action: Action,
    ) -> impl Future<Output = (Action, Result<Written, Fault>)> + Send + use<> {
        let found: Option<Inspected> = run.inspected.remove(action.key());
        let scanned = origin.entries.get(action.key()).and_then(|e| e.digest);
        // The destination version vsync left at this very target, if it recorded one.
        let known_version = match &action {
            Action::CopyV2 { target, .. } => run.dest.entries.get(action.key()).filter(|e| e.target == *target).and_then(|e| e.dest_version),
            _ => None,
        };
        let (vaults, kinds, hmac): (Vaults, Arc<_>, _) = (run.vaults.clone(), run.kinds.clone(), self.digest_key.clone());
        async move {
            let result = match (&action, found) {
                (Action::ExactV2 { key, target, .. }, Some(found)) => exact::apply(&vaults, key, target, found)
                    .await
                    .map(|(o, state)| Written { outcome: o, exact: Some(state), unverified: false, dest_version: None }),
                _ => write(&vaults.origin, &vaults.dest, &kinds, &action, scanned, hmac.as_deref().map(Vec::as_slice), known_version).await,
            };
            (action, result)
        }
    }

    /// Records one finished write task; a fault that stops the cycle aborts the others.
    fn settle_write(
        &self,
        joined: Joined,
        tasks: &mut JoinSet<(Action, Result<Written, Fault>)>,
        run: &mut CycleRun,
        progress: Option<&dyn Progress>,
    ) -> Result<(), Fault> {
        if let Some(p) = progress {
            p.advance(1);
        }
        let (action, result) =
            joined.map_err(|e| Fault::transient(format!("destination `{}`: copy task failed: {e}", self.spec.name)))?;
        let outcome = match result {
            Ok(written) => {
                let key = action.key();
                if let Some(state) = written.exact {
                    run.records.exact.insert(key.clone(), state);
                }
                if written.unverified {
                    run.records.unverified.insert(key.clone());
                }
                if let Some(v) = written.dest_version {
                    run.records.dest_versions.insert(key.clone(), v);
                }
                written.outcome
            }
            Err(fault) => self.per_secret(fault, &action, || tasks.abort_all())?,
        };
        run.writes.insert(action.key().clone(), outcome);
        Ok(())
    }

    /// Runs the plan's removals, after every write, one at a time.
    pub(super) async fn remove_stage(&self, run: &mut CycleRun) -> Result<(), Fault> {
        let to_remove = cycle::removals_to_run(&run.planned.plan, &run.writes);
        let progress = self.progress.clone().filter(|_| !to_remove.is_empty());
        if let Some(p) = &progress {
            p.begin("removing", to_remove.len() as u64);
        }
        for action in to_remove {
            if let Some(p) = &progress {
                p.advance(1);
            }
            let outcome = match remove(&self.vault, &run.kinds, action).await {
                Ok(()) => RemovalOutcome::Removed,
                Err(fault) => {
                    self.per_secret(fault, action, || {})?;
                    RemovalOutcome::Failed
                }
            };
            run.removals.insert(action.key().clone(), outcome);
        }
        if let Some(p) = &progress {
            p.finish();
        }
        Ok(())
    }
}

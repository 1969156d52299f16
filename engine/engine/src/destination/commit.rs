//! The commit stages. Before any write, targets the info does not record for their key are
//! committed as orphans (the journal); after the writes and removals, the outcomes are settled
//! into the info, which is committed against the root the cycle loaded, and the repair request
//! the cycle handled is removed.

use vsync_core::cycle;
use vsync_core::{inflight, orphans};
use vsync_core::{DestInfo, DestPath};
use vsync_state::info as state_info;

use super::parts::{CycleRun, Destination};
use crate::fault::Fault;
use crate::report::CycleReport;
use crate::sides::{self, side_name};

impl Destination {
    /// Targets this cycle writes that the info does not record for their key are committed
    /// as orphans first: should the cycle fail after writing one, and the origin delete its
    /// key before the next cycle, that cycle still removes it (`vsync_core::orphans`).
    ///
    /// Keys whose recorded copies it changes are committed marked in flight in the same commit
    /// (`vsync_core::inflight`): should the cycle fail after changing one, and the origin
    /// return to what the info records, the next cycle still compares that copy again.
    pub(super) async fn journal_stage(&self, run: &mut CycleRun) -> Result<(), Fault> {
        run.journal = orphans::unrecorded_targets(&run.planned.plan, &run.dest.entries);
        let marked = inflight::mark(&mut run.dest.entries, &run.planned.plan);
        if !run.journal.is_empty() || marked > 0 {
            run.base = self.remember(&mut run.dest, &run.journal, run.base).await?;
        }
        Ok(())
    }

    /// Commits the loaded info (its root settings unchanged) with orphans at `targets`, before
    /// any of them is written; returns the new commit base.
    async fn remember(&self, dest: &mut DestInfo, targets: &[DestPath], base: Option<u64>) -> Result<Option<u64>, Fault> {
        let name = &self.spec.name;
        orphans::remember(&mut dest.entries, targets);
        dest.digests = dest.entries.digests();
        let context = || format!("destination `{name}`: remembering the {} new target(s) and the copies this cycle changes", targets.len());
        let (mounts, hash) = (dest.origin_mounts.clone(), dest.config_hash.clone());
        state_info::commit_at(&self.store, &self.lock, base, mounts, hash, &dest.entries, &dest.digests, self.clock.now())
            .await
            .map_err(|e| Fault::state(context(), e))?;
        let root = self.store.read_root(&side_name(name)).await.map_err(|e| Fault::state(context(), e))?;
        Ok(root.map(|r| r.version))
    }

    /// Settles the outcomes into the info, commits it, and reports the cycle.
    pub(super) async fn commit_stage(&self, mut run: CycleRun, origin: &vsync_core::OriginInfo) -> Result<CycleReport, Fault> {
        let name = &self.spec.name;
        let plan = &run.planned.plan;
        let tasks = cycle::task_counts(plan, &run.writes, &run.removals);
        let claimed = orphans::claimed_forgets(plan, &run.dest.entries);
        let counts = cycle::settle(&run.planned, origin, &mut run.dest.entries, &run.writes, &run.records, &run.removals);
        orphans::resolve(&mut run.dest.entries, &run.journal, plan);
        orphans::keep_unclaimed(&mut run.dest.entries, claimed, plan);
        if counts.added + counts.updated + counts.deleted > 0 {
            // Settling inserted entries one by one: pack the maps again (a first sync's info is
            // then a third smaller for the rest of the process's life).
            run.dest.entries.compact();
        }
        let digests = run.dest.entries.digests();
        // Against the root this cycle loaded: a commit in between (another writer) is a conflict.
        let committed = state_info::commit_at(
            &self.store,
            &self.lock,
            run.base,
            run.planned.origin_mounts.clone(),
            Some(self.spec.config_hash.clone()),
            &run.dest.entries,
            &digests,
            self.clock.now(),
        )
        .await
        .map_err(|e| Fault::state(format!("destination `{name}`: committing its info"), e))?;
        // Only the request this cycle consumed: one written while it ran is left for the next
        // (handling a key twice rebuilds nothing that is exact).
        if run.repair.is_some() && sides::pending_repair(&self.store, name).await? == run.repair {
            sides::clear_repair(&self.store, name).await?;
        }
        let (before_o, before_d) = run.counts_before;
        let (o, d) = (run.vaults.origin.request_counts(), run.vaults.dest.request_counts());
        Ok(CycleReport {
            counts,
            committed,
            origin_data_reads: o.data_reads - before_o.data_reads,
            dest_data_reads: d.data_reads - before_d.data_reads,
            dest_writes: (d.data_writes + d.metadata_writes) - (before_d.data_writes + before_d.metadata_writes),
            tasks,
            secrets: run.dest.entries.len(),
        })
    }
}

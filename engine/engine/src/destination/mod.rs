//! One destination: load its info, plan a cycle (decisions in `vsync_core::cycle`), execute
//! the plan against the Vaults with bounded workers, and commit the settled info.
//!
//! A cycle that fails commits nothing; a cycle with per-secret failures commits the entries of
//! the secrets that succeeded and keeps the old entries of those that failed. Writes run
//! before removals, so a moved secret is never missing at both places.
//!
//! [`Destination::cycle`] runs named stages around one `CycleRun`, each in its own module:
//! [`load`] (the info and a pending repair), [`plan`] (interruptible planning), [`inspect`]
//! (mount kinds, `versions = "all"` inspection, the rebuild guard), the journal and the commit
//! ([`commit`]), and the writes and removals ([`execute`], one secret in [`write`]).
//! [`preview`] runs the stages up to the first write for `vsync plan`.

mod commit;
mod execute;
mod inspect;
mod load;
mod parts;
mod plan;
mod preview;
mod write;

use std::sync::Arc;

use vsync_core::{CycleFlags, OriginInfo};
use vsync_vault::VaultClient;

pub use load::load_info;
pub use parts::{Destination, SharedMapper, share};
pub use preview::{Preview, preview};

use crate::exact::Vaults;
use crate::fault::Fault;
use crate::report::CycleReport;
use parts::CycleRun;

impl Destination {
    /// Runs one cycle against `origin` (read through `origin_vault`) and commits.
    ///
    /// Planning (with its plugin calls) runs on the blocking pool and is interruptible: the
    /// cycle's deadline (`timeout`) and dropping this future stop it between paths.
    pub async fn cycle(&mut self, origin_vault: &VaultClient, origin: &Arc<OriginInfo>, flags: CycleFlags) -> Result<CycleReport, Fault> {
        let counts_before = (origin_vault.request_counts(), self.vault.request_counts());
        let loaded = self.load(origin.entries.count()).await?;
        let (loaded, planned) = self.plan_stage(loaded, origin, flags).await?;
        let vaults = Vaults { origin: origin_vault.clone(), dest: self.vault.clone(), clock: self.clock.clone() };
        let mut run = CycleRun::new(vaults, loaded, planned, counts_before);
        self.inspect_stage(&mut run, origin, flags).await?;
        self.journal_stage(&mut run).await?;
        self.write_stage(&mut run, origin).await?;
        self.remove_stage(&mut run).await?;
        self.commit_stage(run, origin).await
    }
}

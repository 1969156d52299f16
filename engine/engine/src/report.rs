//! What a destination cycle reports: [`CycleReport`].
//!
//! The roles, the status records, telemetry and the binary read it; it sits apart from the
//! cycle that produces it so that its readers need not import the cycle (`vsync plan`'s
//! `Preview` lives with the cycle's stages in `crate::destination`, whose inspection it shows).

use vsync_core::cycle::{CycleCounts, TaskCount};

/// Counts and request figures of one destination cycle.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CycleReport {
    /// What the cycle did, per secret.
    pub counts: CycleCounts,
    /// Whether the state store was written.
    pub committed: bool,
    /// Origin data reads during the cycle.
    pub origin_data_reads: u64,
    /// Destination data reads during the cycle.
    pub dest_data_reads: u64,
    /// Destination writes (data and metadata) during the cycle.
    pub dest_writes: u64,
    /// Tasks by kind and outcome.
    pub tasks: Vec<TaskCount>,
    /// Secrets the committed info records.
    pub secrets: usize,
}

impl std::fmt::Display for CycleReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.counts;
        write!(
            f,
            "{} added, {} updated, {} deleted, {} unchanged, {} checked equal, {} skipped, {} failed{}; \
             vault requests: {} origin data reads, {} destination data reads, {} destination writes",
            c.added,
            c.updated,
            c.deleted,
            c.unchanged,
            c.checked_equal,
            c.skipped,
            c.failed,
            if self.committed { "" } else { " (state unchanged)" },
            self.origin_data_reads,
            self.dest_data_reads,
            self.dest_writes,
        )
    }
}

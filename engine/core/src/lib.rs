//! `vsync-core`: the domain types shared by every vsync crate and the I/O-free sync planner.
//!
//! Nothing in this crate talks to a network or a disk, or reads a clock (the [`clock`] port is
//! the seam through which the engine does): it turns what the origin looks
//! like (an [`OriginInfo`]) and what a destination remembers having copied (a [`DestInfo`])
//! into a [`CyclePlan`], and the per-secret outcomes of executing it into the next destination
//! info ([`cycle::settle`]). That keeps every rule of replication testable with plain unit
//! tests and keeps the crate fast to compile.
//!
//! Modules, from the bottom up: [`clock`] (the wall-time port), [`types`] (keys, entries, policies), [`digest`] (metadata and
//! keyed value digests), [`exact`] (per-key decisions of `versions = "all"`), [`info`] (buckets and their canonical encoding), [`path`] (path
//! rules), [`mapping`] (mount map and the plugin seam), [`plan`] (per-key decisions),
//! [`cycle`] (a whole cycle's decisions), [`spec`] (runtime specifications).

pub mod clock;
pub mod cycle;
pub mod digest;
pub mod exact;
pub mod inflight;
pub mod info;
pub mod mapping;
pub mod orphans;
pub mod path;
pub mod plan;
pub mod spec;
pub mod types;

pub use clock::{Clock, SystemClock};
pub use cycle::{CycleCounts, CycleFlags, CyclePlan, CycleRules, DestInfo, OriginInfo, Records, Refusal, RemovalOutcome, WriteOutcome};
pub use digest::Digest;
pub use info::{Buckets, SyncInfo};
pub use mapping::{DestinationMapper, MapError, PathContext, PathMapper, PluginCallObserver};
pub use path::{PathError, join_mount, normalize_mount, validate_relative_path};
pub use plan::{Action, CopyReason, Mapping, Plan, PlanOptions, plan_buckets, plan_latest};
pub use spec::{AUTO_WORKERS_MAX, DestinationSpec, OriginSpec};
pub use types::{
    DeletePolicy, DestEntry, DestPath, DestinationState, ExactState, KvVersion, MountName, OriginEntry, OriginSnapshot, SecretPath,
    VersionsMode,
};

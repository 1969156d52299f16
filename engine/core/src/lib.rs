//! `vsync-core`: the domain types shared by every vsync crate and the I/O-free sync planner.
//!
//! Nothing in this crate talks to a network, a disk or a clock: it turns what the origin looks
//! like (an [`OriginSnapshot`]) and what a destination remembers having copied (a
//! [`DestinationState`]) into a [`Plan`] of per-key actions. That keeps the rules of replication
//! testable with plain unit tests and keeps the crate fast to compile.

pub mod info;
pub mod path;
pub mod plan;
pub mod types;

pub use path::{PathError, join_mount, normalize_mount, validate_relative_path};
pub use info::{Buckets, Digest, SyncInfo};
pub use plan::{Action, CopyReason, Mapping, Plan, PlanOptions, plan_buckets, plan_latest};
pub use types::{
    DeletePolicy, DestEntry, DestinationState, KvVersion, MountName, OriginEntry, OriginSnapshot, SecretKey,
    Target, VersionsMode,
};

//! `vsync-engine`: the vsync runtime as a library.
//!
//! - [`origin`]: the complete origin scan, its incremental update, publishing and loading the
//!   origin info; [`audit`]: the socket audit device feed that triggers those updates;
//! - [`destination`]: one destination's cycle: plan (decisions in `vsync_core::cycle`),
//!   execute with bounded workers, commit;
//! - [`roles`]: ONE loop for the origin, destination and `run` roles, with triggers
//!   ([`triggers`]), per-cycle timeouts and an injected shutdown future;
//! - [`fault`]: typed fault classes, decided where an error is created;
//! - [`check`]: start-up checks on the parts the roles use; [`parts`]: those parts (Vault
//!   sides logged in once, state stores), the checks' verdict and deferred starts;
//! - [`exact`]: executing `versions = "all"` per key; [`verify`]: `vsync verify`;
//! - [`locks`]: one writer per side (hot standby on Consul); [`tripwire`]: background fatal
//!   faults; [`signals`]: the SIGINT/SIGTERM shutdown future;
//! - [`render`]: the human text of `verify` and `check`;
//! - [`status`]: per-cycle status records and lag; [`policy`]: least-privilege Vault policies;
//! - [`tokens`]: token renewal and AppRole or JWT re-login; [`alert`]: the fatal-error webhook;
//! - [`progress`]: progress of long cycles (a log line every few seconds, or the binary's bar);
//! - [`telemetry`]: Prometheus metrics and the health verdict (`/metrics`, `/healthz`).
//!
//! The engine takes runtime specs (`vsync_core::spec`) and reaches the plugins through
//! `vsync_core::PathMapper`; it never sees the configuration schema and never links wasmtime.

pub mod alert;
pub mod audit;
pub mod check;
pub mod destination;
pub mod exact;
pub mod fault;
pub mod locks;
pub mod origin;
pub mod parts;
pub mod policy;
pub mod progress;
pub mod render;
pub mod roles;
pub mod signals;
pub mod status;
pub mod telemetry;
pub mod tokens;
pub mod triggers;
pub mod tripwire;
pub mod verify;

pub use alert::Alerter;
pub use destination::{CycleReport, Destination, Preview, preview, side_name};
pub use fault::{FatalCause, Fault, FaultClass};
pub use origin::ORIGIN_SIDE;
pub use roles::{BoxFault, Ended, Engine, Event, Publisher, Reporter, Role, RunOptions, StartGate, run};
pub use telemetry::Telemetry;
pub use tripwire::Tripwire;

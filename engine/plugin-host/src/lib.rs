//! `vsync-plugin-host`: loads transformer and filter plugins (WebAssembly components built
//! against `wit/plugin@0.1.0`) and runs them sandboxed. The only crate that depends on wasmtime.
//!
//! - **Load pipeline** ([`PluginHost::load_file`]): read; refuse anything that is not a
//!   component (random bytes, core modules); compile (cached on disk when
//!   [`HostConfig::cache_dir`] is set, see below; otherwise each host compiles once, in memory);
//!   refuse a component whose declared memories and tables exceed the limits below; check the
//!   exported API (world and version, from the export name) and every import against an
//!   allowlist; link and pre-instantiate, which type-checks the exports against the world.
//!   `configure` runs at [`PluginHost::instantiate`].
//! - **Compile cache** (`cache.rs`): entries are native code that runs outside the sandbox, so
//!   one is deserialized only after it passed every check: the directory is this user's and
//!   not writable by group or others (else the cache is not used, with a warning); the entry is
//!   a regular file of this user's, not writable by others; and its HMAC-SHA-256 under a
//!   per-user key (`hmac-key`, `0600`, in the directory) matches. Entries are written `0600`,
//!   atomically; one failing a check is ignored, compiled afresh and rewritten.
//!   [`PluginHost::cache_stats`] counts what happened. Entry name: SHA-256 of the component
//!   bytes + wasmtime version + engine compatibility hash.
//! - **Sandbox**: no WASI capabilities. The host links its logging import (forwarded to
//!   `tracing` with the plugin name) and `wasi:random/insecure-seed` (Rust's `HashMap` asks for
//!   it) under the exact name the component imports; every other import the component declares
//!   traps when called (`define_unknown_imports_as_traps`), and anything beyond
//!   `vsync:plugin/*`, `wasi:io/*`, `wasi:cli/*` and `wasi:random/insecure-seed` (files, sockets,
//!   clocks, ...) is refused at load.
//! - **Limits** (`sandbox.rs`): a per-call time limit (epoch deadline; a background thread
//!   ticks every 2 ms while the host or any of its instances lives) and a memory limit that
//!   bounds the whole instance: [`HostConfig::memory_limit`] bytes of linear memory in all,
//!   `memory_limit / 16` table elements in all, one linear memory (multi-memory is off in the
//!   engine), at most 8 tables and 16 core instances. A trap or limit hit fails that call only;
//!   the instance is replaced (re-instantiated and re-configured) before its next call.
//! - **Caps** on what a plugin hands back: error texts over 4 KiB are cut (with a marker), a
//!   transformer output over 4 KiB fails its path ([`CallError::OutputTooLong`]); log lines
//!   over 4 KiB are cut, and an instance forwards at most 32 lines a call and 64 a second
//!   (bursts of 256): the rest is dropped and counted in one summary line.
//! - **Stacks** ([`Stack`]): a destination's filters, then its transformers in order, then the
//!   identity; results must be valid relative paths.
//! - **Validation** ([`validate_dir`]): what `vsync plugin validate` runs in CI.
//!
//! Layout:
//! - `host.rs`: [`HostConfig`], the engine and its epoch ticker, [`PluginHost`] (load a
//!   directory or a file, list, instantiate);
//! - `load.rs`: loading one component (compile through the cache, resource, world and import
//!   checks, link, pre-instantiate);
//! - `instance.rs`: [`Instance`] (store, calls, traps and limit hits as [`CallError`]s,
//!   restart after a trap) and the per-store [`Context`] and log forwarding;
//! - `stack.rs`: [`Stack`] (filters, transformers, identity; output checks) and its
//!   [`vsync_core::PathMapper`] face, whose failures are typed [`vsync_core::MapError`]s;
//! - `error.rs`: [`PluginError`], [`HostError`], [`CallError`];
//! - `bindings.rs` (the two `bindgen!` worlds of `wit/plugin@0.1.0`), `sandbox.rs` (resource
//!   limiter, log budget, caps), `cache.rs` (the compile cache and its trust checks),
//!   `validate.rs` (vectors files and the report; the file format is the SDK's
//!   `plugin-sdk/src/testing/vectors/format.rs`, compiled in here too).
//!
//! `build.rs` builds the `plugins/` workspace and embeds the default pack.

mod bindings;
mod cache;
mod error;
mod host;
mod instance;
mod load;
mod sandbox;
mod stack;
mod validate;

pub use error::{CallError, HostError, PluginError};
pub use host::{API_VERSION, CacheStats, DEFAULT_PACK, HostConfig, PluginHost, PluginKind};
pub use instance::{Context, Instance};
pub use stack::{Stack, StackError, StackSpec};
pub use validate::{ComponentReport, ValidateReport, VectorReport, validate_dir};

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
//! Layout: `bindings.rs` (the two `bindgen!` worlds of `wit/plugin@0.1.0`), `lib.rs` (host,
//! instances, stacks), `sandbox.rs` (resource limiter, log budget, caps), `cache.rs` (the
//! compile cache and its trust checks), `validate.rs` (vectors files and the report);
//! `build.rs` builds the `plugins/` workspace and embeds the default pack.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use thiserror::Error;
use tracing::{debug, error, info, trace, warn};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, Store, Trap};

mod bindings;
mod cache;
mod sandbox;
mod validate;

pub use validate::{ComponentReport, ValidateReport, VectorReport, validate_dir};

use bindings::filter::{Filter as FilterWorld, FilterPre};
use bindings::transformer::vsync::plugin::{host as wit_host, types as wit};
use bindings::transformer::{Transformer as TransformerWorld, TransformerPre};
use cache::{Cache, Lookup};
use sandbox::{LogBudget, Limits, MAX_ERROR_TEXT, MAX_LOG_LINE, MAX_OUTPUT, cap_text};

/// The plugin API this host speaks.
pub const API_VERSION: &str = "0.1.0";
const TRANSFORMER_EXPORT: &str = "vsync:plugin/transformer-api";
const FILTER_EXPORT: &str = "vsync:plugin/filter-api";
/// How often the epoch advances: the granularity of the per-call time limit.
const TICK: Duration = Duration::from_millis(2);

/// The default pack, embedded at build time (see `build.rs`).
pub const DEFAULT_PACK: &[(&str, &[u8])] = &[
    ("identity", include_bytes!(concat!(env!("OUT_DIR"), "/default-pack/identity.wasm"))),
    ("regex", include_bytes!(concat!(env!("OUT_DIR"), "/default-pack/regex.wasm"))),
    ("prefix", include_bytes!(concat!(env!("OUT_DIR"), "/default-pack/prefix.wasm"))),
    ("glob", include_bytes!(concat!(env!("OUT_DIR"), "/default-pack/glob.wasm"))),
];

/// Limits and cache location.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Time limit of one call into a plugin.
    pub call_timeout: Duration,
    /// Memory limit of one plugin instance, in bytes: all its linear memory together (tables
    /// get `memory_limit / 16` elements in all).
    pub memory_limit: u64,
    /// Where compiled components are cached (none: compile on every start). Created `0700`;
    /// not used (with a warning) when another user owns it or group or others may write it.
    pub cache_dir: Option<PathBuf>,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_millis(50),
            memory_limit: 32 << 20,
            cache_dir: None,
        }
    }
}

/// What a plugin does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginKind {
    /// Maps paths.
    Transformer,
    /// Selects paths.
    Filter,
}

impl std::fmt::Display for PluginKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PluginKind::Transformer => "transformer",
            PluginKind::Filter => "filter",
        })
    }
}

/// A plugin's own error value (the WIT `plugin-error`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", content = "message", rename_all = "kebab-case")]
pub enum PluginError {
    /// `configure` rejected its configuration.
    InvalidConfig(String),
    /// The plugin cannot handle this path.
    InvalidPath(String),
    /// Anything else.
    Failed(String),
}

impl PluginError {
    /// The WIT case name (`invalid-config`, `invalid-path`, `failed`).
    pub fn case(&self) -> &'static str {
        match self {
            PluginError::InvalidConfig(_) => "invalid-config",
            PluginError::InvalidPath(_) => "invalid-path",
            PluginError::Failed(_) => "failed",
        }
    }
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PluginError::InvalidConfig(m) | PluginError::InvalidPath(m) | PluginError::Failed(m) => {
                write!(f, "{}: {m}", self.case())
            }
        }
    }
}

impl From<wit::PluginError> for PluginError {
    /// The guest's error, its text cut to [`MAX_ERROR_TEXT`] bytes: it ends up in log lines and
    /// reports, and a plugin must not be able to blow those up.
    fn from(e: wit::PluginError) -> Self {
        let cap = |m| cap_text(m, MAX_ERROR_TEXT);
        match e {
            wit::PluginError::InvalidConfig(m) => PluginError::InvalidConfig(cap(m)),
            wit::PluginError::InvalidPath(m) => PluginError::InvalidPath(cap(m)),
            wit::PluginError::Failed(m) => PluginError::Failed(cap(m)),
        }
    }
}

/// Failures while loading or configuring plugins. Every message names the file or plugin.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum HostError {
    /// Not a WebAssembly component, or one wasmtime cannot compile.
    #[error("plugin file {file}: not a usable WebAssembly component: {reason}")]
    InvalidComponent {
        /// File.
        file: PathBuf,
        /// Parser or compiler message.
        reason: String,
    },
    /// Built against another plugin API version.
    #[error("plugin file {file}: built for plugin API {found}; this vsync supports {expected}")]
    IncompatibleApi {
        /// File.
        file: PathBuf,
        /// Version found.
        found: String,
        /// Version supported.
        expected: &'static str,
    },
    /// Exports neither plugin API.
    #[error("plugin file {file}: exports neither {TRANSFORMER_EXPORT} nor {FILTER_EXPORT} (it exports: {exports})")]
    WrongWorld {
        /// File.
        file: PathBuf,
        /// What it exports.
        exports: String,
    },
    /// Imports a capability plugins may not have.
    #[error("plugin file {file}: imports `{import}`, which plugins may not use (no files, network, clock or environment)")]
    ForbiddenImport {
        /// File.
        file: PathBuf,
        /// The import.
        import: String,
    },
    /// Declares more memories or tables, or bigger ones, than an instance may have.
    #[error("plugin file {file}: exceeds the sandbox's limits: {reason}")]
    ExceedsLimits {
        /// File.
        file: PathBuf,
        /// Which limit, and by how much.
        reason: String,
    },
    /// `configure` failed (or trapped).
    #[error("plugin `{plugin}`: configure failed: {error}")]
    Configure {
        /// Plugin name.
        plugin: String,
        /// Why.
        error: String,
    },
    /// Two plugins with one name.
    #[error("plugin name `{name}` from {file} is already taken by {existing}")]
    NameClash {
        /// Name.
        name: String,
        /// The new file.
        file: PathBuf,
        /// The plugin already loaded.
        existing: String,
    },
    /// No plugin of that name.
    #[error("no plugin named `{name}` (loaded: {loaded})")]
    UnknownPlugin {
        /// Name asked for.
        name: String,
        /// Names loaded.
        loaded: String,
    },
    /// A filter used as a transformer or the other way round.
    #[error("plugin `{plugin}` is a {found}, but is used as a {wanted}")]
    KindMismatch {
        /// Plugin name.
        plugin: String,
        /// Its kind.
        found: PluginKind,
        /// The kind asked for.
        wanted: PluginKind,
    },
    /// A file could not be read.
    #[error("plugin file {path}: {source}")]
    Io {
        /// File or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The engine itself failed.
    #[error("plugin engine: {0}")]
    Engine(String),
}

/// Failures of one call. The engine goes on; the failing path fails alone.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallError {
    /// The call ran past `call_timeout`.
    #[error("plugin `{plugin}`: call exceeded its time limit ({limit:?})")]
    Timeout {
        /// Plugin name.
        plugin: String,
        /// The limit.
        limit: Duration,
    },
    /// The instance hit `memory_limit`.
    #[error("plugin `{plugin}`: memory limit exceeded ({limit} bytes)")]
    MemoryExceeded {
        /// Plugin name.
        plugin: String,
        /// The limit.
        limit: u64,
    },
    /// A transformer returned a path longer than the host accepts.
    #[error("plugin `{plugin}`: returned a path of {length} bytes, over the limit of {limit}")]
    OutputTooLong {
        /// Plugin name.
        plugin: String,
        /// Its length in bytes.
        length: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// The guest trapped (a panic, an unreachable, a forbidden call).
    #[error("plugin `{plugin}`: trapped: {message}")]
    Trap {
        /// Plugin name.
        plugin: String,
        /// The trap, with the panic message when the SDK reported one.
        message: String,
    },
    /// The guest returned its own error.
    #[error("plugin `{plugin}`: {error}")]
    Guest {
        /// Plugin name.
        plugin: String,
        /// The plugin's error.
        error: PluginError,
    },
    /// A fresh instance could not be made after a trap.
    #[error("plugin `{plugin}`: could not be restarted: {message}")]
    Restart {
        /// Plugin name.
        plugin: String,
        /// Why.
        message: String,
    },
}

/// Non-secret facts handed to plugins with each path.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Context {
    /// Origin name.
    pub origin: String,
    /// Destination name.
    pub destination: String,
    /// Origin mount (`secret/`).
    pub origin_mount: String,
    /// Destination mount.
    pub destination_mount: String,
    /// KV version of the origin mount: 1 or 2.
    pub kv_version: u8,
    /// Destination labels.
    pub labels: BTreeMap<String, String>,
}

impl Context {
    fn to_wit(&self) -> wit::Context {
        wit::Context {
            origin: self.origin.clone(),
            destination: self.destination.clone(),
            origin_mount: self.origin_mount.clone(),
            destination_mount: self.destination_mount.clone(),
            kv_version: if self.kv_version == 1 { wit::KvVersion::V1 } else { wit::KvVersion::V2 },
            labels: self.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }
    }
}

/// Per-store state: limits, the plugin's name for its log lines, its log budget (shared with
/// its [`Instance`], which outlives the store) and its last panic message.
pub(crate) struct State {
    limits: Limits,
    plugin: Arc<str>,
    log: Arc<Mutex<LogBudget>>,
    last_error_log: Option<String>,
}

impl wit_host::Host for State {
    fn log(&mut self, level: wit_host::Level, message: String) {
        use wit_host::Level;
        if level == Level::Error {
            // Kept whatever the budget, so a trap that follows (a panic) can say why.
            self.last_error_log = Some(message.chars().take(500).collect());
        }
        // Lines nobody would see do not use up the budget.
        let wanted = match level {
            Level::Trace => tracing::enabled!(tracing::Level::TRACE),
            Level::Debug => tracing::enabled!(tracing::Level::DEBUG),
            Level::Info => tracing::enabled!(tracing::Level::INFO),
            Level::Warn => tracing::enabled!(tracing::Level::WARN),
            Level::Error => tracing::enabled!(tracing::Level::ERROR),
        };
        if !wanted || !self.log.lock().unwrap_or_else(PoisonError::into_inner).admit() {
            return;
        }
        // A plugin must not be able to flood the engine's log with one huge line either.
        let message = cap_text(message, MAX_LOG_LINE);
        let plugin = &*self.plugin;
        match level {
            Level::Trace => trace!(plugin, "{message}"),
            Level::Debug => debug!(plugin, "{message}"),
            Level::Info => info!(plugin, "{message}"),
            Level::Warn => warn!(plugin, "{message}"),
            Level::Error => error!(plugin, "{message}"),
        }
    }
}

impl wit::Host for State {}

/// A compiled, linked and type-checked plugin, ready to instantiate.
struct Loaded {
    name: String,
    kind: PluginKind,
    source: String,
    pre: Pre,
}

/// The plugin pre-instantiated against its world: imports resolved and export types checked
/// once at load, so a restart after a trap is only `Store::new` + instantiate + configure.
enum Pre {
    Transformer(TransformerPre<State>),
    Filter(FilterPre<State>),
}

/// Advances the engine's epoch every [`TICK`] while a host or any of its instances is alive
/// (instances hold it too: an instance that outlives its host keeps its time limit).
struct Ticker {
    stop: Arc<AtomicBool>,
}

impl Ticker {
    fn start(engine: &Engine) -> Result<Arc<Ticker>, HostError> {
        let stop = Arc::new(AtomicBool::new(false));
        // A weak engine handle would be nicer, but `Engine` has none; the thread holds a clone
        // and exits (dropping it) at most one tick after the last owner is gone.
        let (e, flag) = (engine.clone(), stop.clone());
        std::thread::Builder::new()
            .name("vsync-plugin-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    e.increment_epoch();
                }
            })
            .map_err(|e| HostError::Engine(format!("cannot start the epoch ticker: {e}")))?;
        Ok(Arc::new(Ticker { stop }))
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The plugin host: one engine, its ticker, the compile cache, and the loaded plugins.
pub struct PluginHost {
    engine: Engine,
    cfg: HostConfig,
    plugins: BTreeMap<String, Arc<Loaded>>,
    ticker: Arc<Ticker>,
    cache: Option<Cache>,
    stats: CacheCounters,
}

/// What the compile cache did for one host: see [`PluginHost::cache_stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Whether the cache directory passed its checks and is in use.
    pub enabled: bool,
    /// Entries that passed every check and were deserialized.
    pub hits: u64,
    /// Components with no entry yet (compiled).
    pub misses: u64,
    /// Entries that failed a check (owner, mode, format, HMAC) or did not deserialize:
    /// ignored; the component was compiled and the entry rewritten.
    pub rejected: u64,
    /// Entries written.
    pub written: u64,
}

/// [`CacheStats`] as the host counts them (loading takes `&self` for the compile step).
#[derive(Debug, Default)]
struct CacheCounters {
    hits: AtomicU64,
    misses: AtomicU64,
    rejected: AtomicU64,
    written: AtomicU64,
}

impl CacheCounters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost")
            .field("plugins", &self.plugins.keys().collect::<Vec<_>>())
            .field("cfg", &self.cfg)
            .finish()
    }
}

fn engine() -> Result<Engine, HostError> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    // One linear memory per core module, so the memory limit is one number per instance (the
    // limiter also counts memories across the component's modules).
    config.wasm_multi_memory(false);
    Engine::new(&config).map_err(|e| HostError::Engine(e.to_string()))
}

/// Whether a component may import `name` (an instance name with its version).
fn import_allowed(name: &str) -> bool {
    name == "vsync:plugin/host@0.1.0"
        || name == "vsync:plugin/types@0.1.0"
        || name.starts_with("wasi:io/")
        || name.starts_with("wasi:cli/")
        || name.starts_with("wasi:random/insecure-seed@")
}

impl PluginHost {
    /// A host with the embedded default pack loaded.
    pub fn new(cfg: HostConfig) -> Result<Self, HostError> {
        let mut host = Self::empty(cfg)?;
        for (name, bytes) in DEFAULT_PACK {
            host.load_bytes(name, &format!("default pack ({name})"), bytes)?;
        }
        Ok(host)
    }

    /// A host with no plugins (used to validate a directory on its own).
    pub fn empty(cfg: HostConfig) -> Result<Self, HostError> {
        let engine = engine()?;
        let ticker = Ticker::start(&engine)?;
        let cache = cfg.cache_dir.as_deref().and_then(|dir| match Cache::open(dir) {
            Ok(c) => Some(c),
            Err(error) => {
                warn!(%error, "not using the compiled-component cache; compiling every plugin");
                None
            }
        });
        Ok(Self {
            engine,
            cfg,
            plugins: BTreeMap::new(),
            ticker,
            cache,
            stats: CacheCounters::default(),
        })
    }

    /// What the compile cache did so far: whether it is in use, and its hits, misses,
    /// rejected entries and writes (for tests and diagnostics).
    pub fn cache_stats(&self) -> CacheStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CacheStats {
            enabled: self.cache.is_some(),
            hits: get(&self.stats.hits),
            misses: get(&self.stats.misses),
            rejected: get(&self.stats.rejected),
            written: get(&self.stats.written),
        }
    }

    /// Loads every `*.wasm` in `dir` (name = file stem). Returns the names loaded.
    pub fn load_dir(&mut self, dir: &Path) -> Result<Vec<String>, HostError> {
        let io = |source| HostError::Io {
            path: dir.to_owned(),
            source,
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
            .collect();
        files.sort();
        files.iter().map(|f| self.load_file(f)).collect()
    }

    /// Loads one component file; its name is the file stem.
    pub fn load_file(&mut self, path: &Path) -> Result<String, HostError> {
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let bytes = std::fs::read(path).map_err(|source| HostError::Io {
            path: path.to_owned(),
            source,
        })?;
        self.load_bytes(&name, &path.display().to_string(), &bytes)?;
        Ok(name)
    }

    fn load_bytes(&mut self, name: &str, source: &str, bytes: &[u8]) -> Result<(), HostError> {
        let file = PathBuf::from(source);
        if let Some(existing) = self.plugins.get(name) {
            return Err(HostError::NameClash {
                name: name.to_owned(),
                file,
                existing: existing.source.clone(),
            });
        }
        // Parse first: a core module or random bytes are refused before compiling.
        if !wasmparser_is_component(bytes) {
            return Err(HostError::InvalidComponent {
                file,
                reason: "not a WebAssembly component (a core module, or not WebAssembly at all)".into(),
            });
        }
        let component = self.compile(name, &file, bytes)?;
        self.check_resources(&file, &component)?;
        let ty = component.component_type();
        let mut kind = None;
        let mut exports = Vec::new();
        for (export, _) in ty.exports(&self.engine) {
            exports.push(export.to_owned());
            for (prefix, k) in [(TRANSFORMER_EXPORT, PluginKind::Transformer), (FILTER_EXPORT, PluginKind::Filter)] {
                if let Some(version) = export.strip_prefix(prefix).and_then(|r| r.strip_prefix('@')) {
                    if version != API_VERSION {
                        return Err(HostError::IncompatibleApi {
                            file,
                            found: version.to_owned(),
                            expected: API_VERSION,
                        });
                    }
                    kind = Some(k);
                }
            }
        }
        let Some(kind) = kind else {
            return Err(HostError::WrongWorld {
                file,
                exports: if exports.is_empty() { "nothing".into() } else { cap_text(exports.join(", "), MAX_ERROR_TEXT) },
            });
        };
        let mut linker: Linker<State> = Linker::new(&self.engine);
        TransformerWorld::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| HostError::Engine(e.to_string()))?;
        for (import, _) in ty.imports(&self.engine) {
            if !import_allowed(import) {
                return Err(HostError::ForbiddenImport {
                    file,
                    import: cap_text(import.to_owned(), MAX_ERROR_TEXT),
                });
            }
            // The seed Rust's HashMap asks for, under the exact name and version imported (a
            // trap stub would shadow a semver-compatible definition).
            if import.starts_with("wasi:random/insecure-seed@") {
                linker
                    .instance(import)
                    .and_then(|mut i| {
                        i.func_wrap("insecure-seed", |_, (): ()| Ok(((fastrand_u64(), fastrand_u64()),)))
                    })
                    .map_err(|e| HostError::Engine(e.to_string()))?;
            }
        }
        linker
            .define_unknown_imports_as_traps(&component)
            .map_err(|e| HostError::Engine(e.to_string()))?;
        // Resolves every import and checks the exported functions' types against the world:
        // an export with the right name but other signatures is refused here, not at first use.
        let pre = linker.instantiate_pre(&component).map_err(|e| HostError::InvalidComponent {
            file: file.clone(),
            reason: format!("{e:#}"),
        })?;
        let wrong_world = |e: wasmtime::Error| HostError::WrongWorld {
            file: file.clone(),
            exports: cap_text(
                format!("{} (its {kind} API does not match wit/plugin@{API_VERSION}: {e:#})", exports.join(", ")),
                MAX_ERROR_TEXT,
            ),
        };
        let pre = match kind {
            PluginKind::Transformer => Pre::Transformer(TransformerPre::new(pre).map_err(wrong_world)?),
            PluginKind::Filter => Pre::Filter(FilterPre::new(pre).map_err(wrong_world)?),
        };
        self.plugins.insert(
            name.to_owned(),
            Arc::new(Loaded {
                name: name.to_owned(),
                kind,
                source: source.to_owned(),
                pre,
            }),
        );
        debug!(plugin = name, %kind, source, "plugin loaded");
        Ok(())
    }

    /// Refuses a component that declares more, or bigger, memories and tables than an instance
    /// may have: at load, naming the file, rather than at its first instantiation.
    fn check_resources(&self, file: &Path, component: &Component) -> Result<(), HostError> {
        let exceeds = |reason: String| HostError::ExceedsLimits {
            file: file.to_owned(),
            reason,
        };
        let Some(r) = component.resources_required() else {
            return Err(exceeds("it imports core modules, so its memories and tables cannot be checked".into()));
        };
        if r.num_memories as usize > sandbox::MAX_MEMORIES {
            return Err(exceeds(format!(
                "it declares {} linear memories (across its core instances); a plugin may have {}",
                r.num_memories,
                sandbox::MAX_MEMORIES
            )));
        }
        if r.num_tables as usize > sandbox::MAX_TABLES {
            return Err(exceeds(format!("it declares {} tables; a plugin may have {}", r.num_tables, sandbox::MAX_TABLES)));
        }
        // Wasm pages are 64 KiB (custom page sizes are off).
        let initial = r.max_initial_memory_size.unwrap_or(0).saturating_mul(64 << 10);
        if initial > self.cfg.memory_limit {
            return Err(exceeds(format!(
                "its initial linear memory is {initial} bytes, over the memory limit of {} bytes",
                self.cfg.memory_limit
            )));
        }
        let elements = r.max_initial_table_size.unwrap_or(0);
        let limit = sandbox::table_elements(self.cfg.memory_limit);
        if usize::try_from(elements).unwrap_or(usize::MAX) > limit {
            return Err(exceeds(format!("a table starts with {elements} elements, over the limit of {limit}")));
        }
        Ok(())
    }

    /// Compiles, through the on-disk cache when it is in use (see `cache.rs` for why an entry
    /// is trusted).
    fn compile(&self, name: &str, file: &Path, bytes: &[u8]) -> Result<Component, HostError> {
        let invalid = |e: wasmtime::Error| HostError::InvalidComponent {
            file: file.to_owned(),
            reason: format!("{e:#}"),
        };
        let Some(cache) = &self.cache else {
            return Component::new(&self.engine, bytes).map_err(invalid);
        };
        let mut h = Sha256::new();
        h.update(bytes);
        h.update(b"\0wasmtime-48.0.8\0");
        // Engine settings that make a compiled artifact incompatible (wasmtime's own hash).
        let mut compat = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(&self.engine.precompile_compatibility_hash(), &mut compat);
        h.update(std::hash::Hasher::finish(&compat).to_le_bytes());
        let key: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        match cache.get(&key) {
            Lookup::Hit(artifact) => {
                // SAFETY: `deserialize` trusts its input to be wasmtime's own output. This is:
                // the entry authenticated under this user's private key (HMAC-SHA-256 over its
                // name and bytes), from a file of this user's that others cannot write, in a
                // directory likewise, and only `put` below writes such entries, from
                // `serialize`. wasmtime also checks the header and the engine's settings.
                #[allow(unsafe_code)]
                let cached = unsafe { Component::deserialize(&self.engine, &artifact) };
                match cached {
                    Ok(c) => {
                        CacheCounters::bump(&self.stats.hits);
                        return Ok(c);
                    }
                    Err(e) => {
                        CacheCounters::bump(&self.stats.rejected);
                        warn!(plugin = name, path = %cache.entry_path(&key).display(), error = %e, "ignoring an unusable cached component; recompiling");
                    }
                }
            }
            Lookup::Miss => CacheCounters::bump(&self.stats.misses),
            Lookup::Rejected(error) => {
                CacheCounters::bump(&self.stats.rejected);
                warn!(plugin = name, %error, "ignoring a cached component that failed its checks; recompiling");
            }
        }
        let component = Component::new(&self.engine, bytes).map_err(invalid)?;
        match component.serialize() {
            Ok(serialized) => match cache.put(&key, &serialized) {
                Ok(()) => CacheCounters::bump(&self.stats.written),
                Err(error) => debug!(plugin = name, %error, "component cache not written"),
            },
            Err(error) => debug!(plugin = name, %error, "component not serialized for the cache"),
        }
        Ok(component)
    }

    /// Loaded plugins and their kinds.
    pub fn plugin_names(&self) -> Vec<(String, PluginKind)> {
        self.plugins.values().map(|p| (p.name.clone(), p.kind)).collect()
    }

    /// The kind of a loaded plugin.
    pub fn kind(&self, name: &str) -> Option<PluginKind> {
        self.plugins.get(name).map(|p| p.kind)
    }

    /// Instantiates a plugin and configures it with `config_json`.
    pub fn instantiate(&self, name: &str, config_json: &str) -> Result<Instance, HostError> {
        let loaded = self.plugins.get(name).ok_or_else(|| HostError::UnknownPlugin {
            name: name.to_owned(),
            loaded: self.plugins.keys().cloned().collect::<Vec<_>>().join(", "),
        })?;
        let mut instance = Instance {
            loaded: loaded.clone(),
            engine: self.engine.clone(),
            _ticker: self.ticker.clone(),
            cfg: self.cfg.clone(),
            config: config_json.to_owned(),
            live: None,
            ctx_cache: None,
            log: Arc::default(),
        };
        instance.start().map_err(|error| HostError::Configure {
            plugin: name.to_owned(),
            error,
        })?;
        Ok(instance)
    }
}

/// Cheap non-cryptographic randomness for the guest's HashMap seed (what the WASI interface
/// promises: "insecure").
fn fastrand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64));
    h.finish()
}

/// A component (layer 0x0d version 1 = component) vs a core module (version 1, layer 0).
fn wasmparser_is_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[4..8] == [0x0d, 0x00, 0x01, 0x00]
}

enum Bound {
    Transformer(TransformerWorld),
    Filter(FilterWorld),
}

struct Live {
    store: Store<State>,
    bound: Bound,
}

/// A configured plugin instance. Reused across calls; after a trap it is replaced before the
/// next call (wasmtime refuses further calls into a trapped instance).
pub struct Instance {
    loaded: Arc<Loaded>,
    engine: Engine,
    _ticker: Arc<Ticker>,
    cfg: HostConfig,
    config: String,
    live: Option<Live>,
    ctx_cache: Option<(Context, wit::Context)>,
    /// The log budget, kept across restarts: a plugin must not refill it by trapping.
    log: Arc<Mutex<LogBudget>>,
}

impl Drop for Instance {
    fn drop(&mut self) {
        // Lines dropped since the last summary (held back by its interval) are still reported.
        self.budget().summarize(&self.loaded.name);
    }
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance").field("plugin", &self.loaded.name).finish()
    }
}

impl Instance {
    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.loaded.name
    }

    /// The plugin's kind.
    pub fn kind(&self) -> PluginKind {
        self.loaded.kind
    }

    fn budget(&self) -> std::sync::MutexGuard<'_, LogBudget> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn deadline_ticks(&self) -> u64 {
        (self.cfg.call_timeout.as_nanos() / TICK.as_nanos()).max(1) as u64 + 1
    }

    /// Instantiates and configures; the error is a readable reason.
    fn start(&mut self) -> Result<(), String> {
        let state = State {
            limits: Limits::new(self.cfg.memory_limit),
            plugin: Arc::from(self.loaded.name.as_str()),
            log: self.log.clone(),
            last_error_log: None,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(self.deadline_ticks());
        let bound = match &self.loaded.pre {
            Pre::Transformer(p) => p.instantiate(&mut store).map(Bound::Transformer),
            Pre::Filter(p) => p.instantiate(&mut store).map(Bound::Filter),
        }
        .map_err(|e| self.describe_trap(&store, &e).to_string())?;
        store.set_epoch_deadline(self.deadline_ticks());
        self.budget().begin_call();
        let configured = match &bound {
            Bound::Transformer(t) => t.vsync_plugin_transformer_api().call_configure(&mut store, &self.config),
            Bound::Filter(f) => f.vsync_plugin_filter_api().call_configure(&mut store, &self.config),
        };
        self.budget().end_call(&self.loaded.name);
        match configured {
            Ok(Ok(())) => {
                self.live = Some(Live { store, bound });
                Ok(())
            }
            Ok(Err(e)) => Err(PluginError::from(e).to_string()),
            Err(e) => Err(self.describe_trap(&store, &e).to_string()),
        }
    }

    fn describe_trap(&self, store: &Store<State>, e: &wasmtime::Error) -> CallError {
        let plugin = self.loaded.name.clone();
        match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => {
                return CallError::Timeout {
                    plugin,
                    limit: self.cfg.call_timeout,
                };
            }
            Some(Trap::OutOfFuel) => {
                return CallError::Timeout {
                    plugin,
                    limit: self.cfg.call_timeout,
                };
            }
            _ => {}
        }
        if store.data().limits.hit {
            return CallError::MemoryExceeded {
                plugin,
                limit: self.cfg.memory_limit,
            };
        }
        let message = match &store.data().last_error_log {
            Some(logged) => format!("{logged} ({})", e.root_cause()),
            None => e.root_cause().to_string(),
        };
        CallError::Trap { plugin, message }
    }

    /// Gets a usable instance, replacing a poisoned one.
    fn live(&mut self) -> Result<&mut Live, CallError> {
        if self.live.is_none() {
            self.start().map_err(|message| CallError::Restart {
                plugin: self.loaded.name.clone(),
                message,
            })?;
        }
        let ticks = self.deadline_ticks();
        let live = self.live.as_mut().ok_or_else(|| CallError::Restart {
            plugin: self.loaded.name.clone(),
            message: "no instance".into(),
        })?;
        live.store.set_epoch_deadline(ticks);
        live.store.data_mut().last_error_log = None;
        live.store.data().log.lock().unwrap_or_else(PoisonError::into_inner).begin_call();
        Ok(live)
    }

    fn failed(&mut self, e: &wasmtime::Error) -> CallError {
        let err = match &self.live {
            Some(live) => self.describe_trap(&live.store, e),
            None => CallError::Trap {
                plugin: self.loaded.name.clone(),
                message: e.to_string(),
            },
        };
        // A trapped instance cannot be entered again: drop it; the next call makes a new one.
        self.live = None;
        err
    }

    /// The WIT form of `ctx`, reused while the caller passes an equal context (it changes per
    /// destination and mount, not per path): saves re-allocating its strings on every call.
    fn take_ctx(&mut self, ctx: &Context) -> (Context, wit::Context) {
        match self.ctx_cache.take() {
            Some(cached) if cached.0 == *ctx => cached,
            _ => (ctx.clone(), ctx.to_wit()),
        }
    }

    fn misuse(&self, wanted: PluginKind) -> CallError {
        CallError::Guest {
            plugin: self.loaded.name.clone(),
            error: PluginError::Failed(format!("a {} was called as a {wanted}", self.loaded.kind)),
        }
    }

    /// Calls a transformer: `Ok(None)` means "not mine". An output over 4 KiB is an error
    /// ([`CallError::OutputTooLong`]); the instance stays up.
    pub fn transform(&mut self, path: &str, ctx: &Context) -> Result<Option<String>, CallError> {
        let cached = self.take_ctx(ctx);
        let result = {
            let live = self.live()?;
            match &live.bound {
                Bound::Transformer(t) => Some(t.vsync_plugin_transformer_api().call_transform(&mut live.store, path, &cached.1)),
                Bound::Filter(_) => None,
            }
        };
        self.ctx_cache = Some(cached);
        match self.outcome(result, PluginKind::Transformer)? {
            Some(out) if out.len() > MAX_OUTPUT => Err(CallError::OutputTooLong {
                plugin: self.loaded.name.clone(),
                length: out.len(),
                limit: MAX_OUTPUT,
            }),
            out => Ok(out),
        }
    }

    /// Calls a filter: whether the path is included.
    pub fn include(&mut self, path: &str, ctx: &Context) -> Result<bool, CallError> {
        let cached = self.take_ctx(ctx);
        let result = {
            let live = self.live()?;
            match &live.bound {
                Bound::Filter(f) => Some(f.vsync_plugin_filter_api().call_include(&mut live.store, path, &cached.1)),
                Bound::Transformer(_) => None,
            }
        };
        self.ctx_cache = Some(cached);
        self.outcome(result, PluginKind::Filter)
    }

    /// Turns a call's result into ours: the guest's own error, a trap (the instance is
    /// dropped), or `None` when the instance is of the other kind.
    fn outcome<T>(
        &mut self,
        result: Option<wasmtime::Result<Result<T, wit::PluginError>>>,
        wanted: PluginKind,
    ) -> Result<T, CallError> {
        self.budget().end_call(&self.loaded.name);
        match result {
            Some(Ok(Ok(out))) => Ok(out),
            Some(Ok(Err(e))) => Err(CallError::Guest {
                plugin: self.loaded.name.clone(),
                error: e.into(),
            }),
            Some(Err(e)) => Err(self.failed(&e)),
            None => Err(self.misuse(wanted)),
        }
    }
}

/// Which plugins a destination stacks, with their configs (JSON).
#[derive(Debug, Clone, Default)]
pub struct StackSpec {
    /// Transformers, in order (the identity is added at the bottom).
    pub transforms: Vec<(String, serde_json::Value)>,
    /// Filters (all must include a path).
    pub filters: Vec<(String, serde_json::Value)>,
}

/// Why mapping one path failed.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum StackError {
    /// A plugin call failed.
    #[error("path `{path}`: {error}")]
    Call {
        /// The origin path.
        path: String,
        /// The failure.
        error: CallError,
    },
    /// A transformer returned something that is not a valid relative path.
    #[error("path `{path}`: plugin `{plugin}` returned `{output}`, which is not a valid relative path ({reason})")]
    InvalidOutput {
        /// The origin path.
        path: String,
        /// The plugin.
        plugin: String,
        /// What it returned.
        output: String,
        /// Why it is invalid.
        reason: String,
    },
}

/// A destination's filters and transformers, instantiated and configured.
pub struct Stack {
    filters: Vec<Instance>,
    transforms: Vec<Instance>,
    observer: Option<std::sync::Arc<dyn vsync_core::PluginCallObserver>>,
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack")
            .field("filters", &self.filters)
            .field("transforms", &self.transforms)
            .field("observed", &self.observer.is_some())
            .finish()
    }
}

impl Stack {
    /// Instantiates and configures every plugin of `spec`, checking kinds.
    pub fn new(host: &PluginHost, spec: &StackSpec) -> Result<Stack, HostError> {
        let make = |(name, config): &(String, serde_json::Value), wanted: PluginKind| {
            let found = host.kind(name).ok_or_else(|| HostError::UnknownPlugin {
                name: name.clone(),
                loaded: host.plugins.keys().cloned().collect::<Vec<_>>().join(", "),
            })?;
            if found != wanted {
                return Err(HostError::KindMismatch {
                    plugin: name.clone(),
                    found,
                    wanted,
                });
            }
            host.instantiate(name, &config.to_string())
        };
        Ok(Stack {
            filters: spec.filters.iter().map(|p| make(p, PluginKind::Filter)).collect::<Result<_, _>>()?,
            transforms: spec
                .transforms
                .iter()
                .map(|p| make(p, PluginKind::Transformer))
                .collect::<Result<_, _>>()?,
            observer: None,
        })
    }

    /// Reports every call's duration and outcome to `observer` (metrics).
    pub fn observe(&mut self, observer: std::sync::Arc<dyn vsync_core::PluginCallObserver>) {
        self.observer = Some(observer);
    }

    /// Maps a mount-relative origin path: `Ok(None)` when a filter excludes it, otherwise the
    /// first transformer's answer (the identity when none claims it), checked to be a valid
    /// relative path.
    pub fn map(&mut self, path: &str, ctx: &Context) -> Result<Option<String>, StackError> {
        let observer = self.observer.as_deref();
        let observed = |plugin: &str, ok: bool, started: Option<std::time::Instant>| {
            if let (Some(o), Some(s)) = (observer, started) {
                o.plugin_call(plugin, ok, s.elapsed());
            }
        };
        for f in &mut self.filters {
            let started = observer.map(|_| std::time::Instant::now());
            let included = f.include(path, ctx);
            observed(f.name(), included.is_ok(), started);
            let included = included.map_err(|error| StackError::Call {
                path: path.to_owned(),
                error,
            })?;
            if !included {
                return Ok(None);
            }
        }
        for t in &mut self.transforms {
            let started = observer.map(|_| std::time::Instant::now());
            let out = t.transform(path, ctx);
            observed(t.name(), out.is_ok(), started);
            let out = out.map_err(|error| StackError::Call {
                path: path.to_owned(),
                error,
            })?;
            if let Some(out) = out {
                return checked(path, t.name(), out).map(Some);
            }
        }
        // The bottom of every stack: the identity (a path no transformer claims keeps its name).
        // Done natively: the same answer as the default pack's `identity` without a ~1 us call.
        checked(path, "identity", path.to_owned()).map(Some)
    }

    /// The [`Context`] of a `vsync_core` path context (the engine's side of the seam).
    fn context_of(ctx: &vsync_core::PathContext) -> Context {
        Context {
            origin: ctx.origin.clone(),
            destination: ctx.destination.clone(),
            origin_mount: ctx.origin_mount.clone(),
            destination_mount: ctx.destination_mount.clone(),
            kv_version: match ctx.kv_version {
                Some(vsync_core::KvVersion::V1) => 1,
                Some(vsync_core::KvVersion::V2) | None => 2,
            },
            labels: ctx.labels.clone(),
        }
    }

    /// Number of filters and transformers (the bottom identity not counted).
    pub fn len(&self) -> usize {
        self.filters.len() + self.transforms.len()
    }

    /// Whether the stack has no configured plugin (every path maps to itself).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A transformer's output must be a valid mount-relative path.
fn checked(path: &str, plugin: &str, out: String) -> Result<String, StackError> {
    match vsync_core::validate_relative_path(&out) {
        Ok(()) => Ok(out),
        Err(e) => Err(StackError::InvalidOutput {
            path: path.to_owned(),
            plugin: plugin.to_owned(),
            output: out,
            reason: e.to_string(),
        }),
    }
}

// Workers run stacks on their own threads and may share one host.
const _: () = {
    const fn send<T: Send>() {}
    const fn sync<T: Sync>() {}
    send::<Stack>();
    send::<Instance>();
    send::<PluginHost>();
    sync::<PluginHost>();
};

/// The plugin stack is the engine's path mapper: filters, then transformers, then identity.
impl vsync_core::PathMapper for Stack {
    fn map_path(&mut self, path: &str, context: &vsync_core::PathContext) -> Result<Option<String>, vsync_core::MapError> {
        self.map(path, &Stack::context_of(context))
            .map_err(|e| vsync_core::MapError(e.to_string()))
    }
}

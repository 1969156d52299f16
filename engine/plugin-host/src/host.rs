//! The host and its set-up: limits ([`HostConfig`]), the wasmtime engine and its epoch ticker,
//! the compile-cache counters, and [`PluginHost`]'s public face (load a directory or a file,
//! list plugins, instantiate one). How one component is checked and linked is in `load.rs`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tracing::warn;
use wasmtime::{Config, Engine};

use crate::cache::Cache;
use crate::error::HostError;
use crate::instance::Instance;
use crate::load::Loaded;

/// The plugin API this host speaks.
pub const API_VERSION: &str = "0.1.0";
pub(crate) const TRANSFORMER_EXPORT: &str = "vsync:plugin/transformer-api";
pub(crate) const FILTER_EXPORT: &str = "vsync:plugin/filter-api";
/// How often the epoch advances: the granularity of the per-call time limit.
pub(crate) const TICK: Duration = Duration::from_millis(2);

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

/// Advances the engine's epoch every [`TICK`] while a host or any of its instances is alive
/// (instances hold it too: an instance that outlives its host keeps its time limit).
pub(crate) struct Ticker {
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
    pub(crate) engine: Engine,
    pub(crate) cfg: HostConfig,
    pub(crate) plugins: BTreeMap<String, Arc<Loaded>>,
    ticker: Arc<Ticker>,
    pub(crate) cache: Option<Cache>,
    pub(crate) stats: CacheCounters,
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
pub(crate) struct CacheCounters {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) written: AtomicU64,
}

impl CacheCounters {
    pub(crate) fn bump(counter: &AtomicU64) {
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
        let loaded = self.plugins.get(name).ok_or_else(|| self.unknown(name))?;
        Instance::configured(loaded.clone(), &self.engine, self.ticker.clone(), &self.cfg, config_json).map_err(|error| {
            HostError::Configure {
                plugin: name.to_owned(),
                error,
            }
        })
    }

    /// The error for a plugin name nothing was loaded under, listing what was.
    pub(crate) fn unknown(&self, name: &str) -> HostError {
        HostError::UnknownPlugin {
            name: name.to_owned(),
            loaded: self.plugins.keys().cloned().collect::<Vec<_>>().join(", "),
        }
    }
}


//! One configured plugin instance ([`Instance`]): its store and its per-store state (limits, log
//! forwarding), the calls into the guest, and the translation of traps and limit hits into
//! [`CallError`]s. A trapped instance is dropped and replaced before its next call.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use tracing::{debug, error, info, trace, warn};
use wasmtime::{Engine, Store, Trap};

use crate::bindings::filter::Filter as FilterWorld;
use crate::bindings::transformer::Transformer as TransformerWorld;
use crate::bindings::transformer::vsync::plugin::{host as wit_host, types as wit};
use crate::error::{CallError, PluginError};
use crate::host::{HostConfig, PluginKind, TICK, Ticker};
use crate::load::{Loaded, Pre};
use crate::sandbox::{Limits, LogBudget, MAX_LOG_LINE, MAX_OUTPUT, cap_text};

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
    /// Instantiates `loaded` and configures it with `config_json`; the error is a readable
    /// reason (the caller names the plugin).
    pub(crate) fn configured(
        loaded: Arc<Loaded>,
        engine: &Engine,
        ticker: Arc<Ticker>,
        cfg: &HostConfig,
        config_json: &str,
    ) -> Result<Instance, String> {
        let mut instance = Instance {
            loaded,
            engine: engine.clone(),
            _ticker: ticker,
            cfg: cfg.clone(),
            config: config_json.to_owned(),
            live: None,
            ctx_cache: None,
            log: Arc::default(),
        };
        instance.start()?;
        Ok(instance)
    }

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
        if let Some(Trap::Interrupt | Trap::OutOfFuel) = e.downcast_ref::<Trap>() {
            return CallError::Timeout {
                plugin,
                limit: self.cfg.call_timeout,
            };
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

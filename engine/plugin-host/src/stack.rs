//! Stacks ([`Stack`]): a destination's filters, then its transformers in order, then the
//! identity, each result checked to be a valid relative path. A stack is the engine's
//! [`vsync_core::PathMapper`]; its failures become typed [`vsync_core::MapError`]s.

use std::sync::Arc;
use std::time::Instant;

use thiserror::Error;

use crate::error::{CallError, HostError};
use crate::host::{PluginHost, PluginKind};
use crate::instance::{Context, Instance};

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
    observer: Option<Arc<dyn vsync_core::PluginCallObserver>>,
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
            let found = host.kind(name).ok_or_else(|| host.unknown(name))?;
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
    pub fn observe(&mut self, observer: Arc<dyn vsync_core::PluginCallObserver>) {
        self.observer = Some(observer);
    }

    /// Maps a mount-relative origin path: `Ok(None)` when a filter excludes it, otherwise the
    /// first transformer's answer (the identity when none claims it), checked to be a valid
    /// relative path.
    pub fn map(&mut self, path: &str, ctx: &Context) -> Result<Option<String>, StackError> {
        let observer = self.observer.as_deref();
        let call_failed = |error| StackError::Call {
            path: path.to_owned(),
            error,
        };
        for f in &mut self.filters {
            if !observed(observer, f, |f| f.include(path, ctx)).map_err(call_failed)? {
                return Ok(None);
            }
        }
        for t in &mut self.transforms {
            if let Some(out) = observed(observer, t, |t| t.transform(path, ctx)).map_err(call_failed)? {
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

/// Runs one call, reporting its duration and outcome to `observer` when there is one.
fn observed<T>(
    observer: Option<&dyn vsync_core::PluginCallObserver>,
    instance: &mut Instance,
    call: impl FnOnce(&mut Instance) -> Result<T, CallError>,
) -> Result<T, CallError> {
    let started = observer.map(|_| Instant::now());
    let result = call(&mut *instance);
    if let (Some(o), Some(s)) = (observer, started) {
        o.plugin_call(instance.name(), result.is_ok(), s.elapsed());
    }
    result
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
        self.map(path, &Stack::context_of(context)).map_err(vsync_core::MapError::from)
    }
}

/// The engine's typed view of a failed path: which plugin, and which class of failure.
impl From<StackError> for vsync_core::MapError {
    fn from(e: StackError) -> Self {
        use vsync_core::MapError as M;
        let (path, error) = match e {
            StackError::InvalidOutput {
                path,
                plugin,
                output,
                reason,
            } => {
                return M::InvalidOutput {
                    plugin,
                    path,
                    output,
                    reason,
                };
            }
            StackError::Call { path, error } => (path, error),
        };
        match error {
            CallError::Timeout { plugin, limit } => M::TimeExhausted { plugin, path, limit },
            CallError::MemoryExceeded { plugin, limit } => M::MemoryExhausted { plugin, path, limit },
            CallError::OutputTooLong { plugin, length, limit } => M::OutputTooLong {
                plugin,
                path,
                length,
                limit,
            },
            CallError::Trap { plugin, message } => M::Trap { plugin, path, message },
            CallError::Restart { plugin, message } => M::Unavailable { plugin, path, message },
            CallError::Guest { plugin, error } => M::Reported {
                plugin,
                path,
                case: error.case().to_owned(),
                message: error.message().to_owned(),
            },
        }
    }
}

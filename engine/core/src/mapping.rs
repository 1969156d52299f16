//! Where an origin secret goes at a destination: the mount map, then the destination's path
//! filters and transformers behind the [`PathMapper`] seam (the WASM plugin stack implements
//! it; tests use plain closures).
//!
//! The mapper remembers every target it computed in a cycle, because the planner skips keys
//! whose bucket did not change and the cycle's outcome needs the targets it did compute.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::plan::Mapping;
use crate::types::{DestPath, KvVersion, SecretPath};

/// Non-secret facts handed to filters and transformers with each path.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PathContext {
    /// Origin name.
    pub origin: String,
    /// Destination name.
    pub destination: String,
    /// Origin mount (`secret/`).
    pub origin_mount: String,
    /// Destination mount.
    pub destination_mount: String,
    /// KV version of the origin mount.
    pub kv_version: Option<KvVersion>,
    /// Destination labels (`region = "eu"`).
    pub labels: BTreeMap<String, String>,
}

/// Why a path could not be mapped: which plugin failed (and on which mount-relative origin
/// path), and how. The message names both.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MapError {
    /// The call ran past its time limit (the per-call deadline, or fuel).
    #[error("path `{path}`: plugin `{plugin}`: call exceeded its time limit ({limit:?})")]
    TimeExhausted {
        /// Plugin name.
        plugin: String,
        /// The origin path.
        path: String,
        /// The limit.
        limit: Duration,
    },
    /// The plugin's instance hit its memory limit.
    #[error("path `{path}`: plugin `{plugin}`: memory limit exceeded ({limit} bytes)")]
    MemoryExhausted {
        /// Plugin name.
        plugin: String,
        /// The origin path.
        path: String,
        /// The limit in bytes.
        limit: u64,
    },
    /// The plugin trapped (a panic, an unreachable, a forbidden call).
    #[error("path `{path}`: plugin `{plugin}`: trapped: {message}")]
    Trap {
        /// Plugin name.
        plugin: String,
        /// The origin path.
        path: String,
        /// The trap, with the panic message when the plugin reported one.
        message: String,
    },
    /// The plugin could not be restarted after an earlier trap.
    #[error("path `{path}`: plugin `{plugin}`: could not be restarted: {message}")]
    Unavailable {
        /// Plugin name.
        plugin: String,
        /// The origin path.
        path: String,
        /// Why.
        message: String,
    },
    /// The plugin returned its own error.
    #[error("path `{path}`: plugin `{plugin}`: {case}: {message}")]
    Reported {
        /// Plugin name.
        plugin: String,
        /// The origin path.
        path: String,
        /// The error's case: `invalid-config`, `invalid-path` or `failed`.
        case: String,
        /// The plugin's message.
        message: String,
    },
    /// A transformer returned something that is not a valid relative path.
    #[error("path `{path}`: plugin `{plugin}` returned `{output}`, which is not a valid relative path ({reason})")]
    InvalidOutput {
        /// Plugin name.
        plugin: String,
        /// The origin path.
        path: String,
        /// What it returned.
        output: String,
        /// Why it is invalid.
        reason: String,
    },
    /// A transformer returned a path longer than the host accepts.
    #[error("path `{path}`: plugin `{plugin}`: returned a path of {length} bytes, over the limit of {limit}")]
    OutputTooLong {
        /// Plugin name.
        plugin: String,
        /// The origin path.
        path: String,
        /// Its length in bytes.
        length: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// Planning stopped before this path (the cycle was cancelled or ran out of time).
    #[error("planning was cancelled")]
    Cancelled,
    /// A mapper other than the plugin stack failed (test mappers, wrappers).
    #[error("{message}")]
    Other {
        /// What went wrong.
        message: String,
    },
}

impl MapError {
    /// The plugin that failed, if a plugin did.
    pub fn plugin(&self) -> Option<&str> {
        match self {
            MapError::TimeExhausted { plugin, .. }
            | MapError::MemoryExhausted { plugin, .. }
            | MapError::Trap { plugin, .. }
            | MapError::Unavailable { plugin, .. }
            | MapError::Reported { plugin, .. }
            | MapError::InvalidOutput { plugin, .. }
            | MapError::OutputTooLong { plugin, .. } => Some(plugin),
            MapError::Cancelled | MapError::Other { .. } => None,
        }
    }

    /// The failure class, a stable word for logs and metrics: `timeout`, `memory-exceeded`,
    /// `trap`, `unavailable`, `plugin-error`, `invalid-output`, `output-too-long`, `cancelled`,
    /// `other`.
    pub fn class(&self) -> &'static str {
        match self {
            MapError::TimeExhausted { .. } => "timeout",
            MapError::MemoryExhausted { .. } => "memory-exceeded",
            MapError::Trap { .. } => "trap",
            MapError::Unavailable { .. } => "unavailable",
            MapError::Reported { .. } => "plugin-error",
            MapError::InvalidOutput { .. } => "invalid-output",
            MapError::OutputTooLong { .. } => "output-too-long",
            MapError::Cancelled => "cancelled",
            MapError::Other { .. } => "other",
        }
    }
}

/// Rewrites mount-relative origin paths for one destination: `Ok(None)` when a filter excludes
/// the path, otherwise the destination path (relative to the destination mount).
pub trait PathMapper: Send {
    /// Maps one mount-relative path.
    fn map_path(&mut self, path: &str, context: &PathContext) -> Result<Option<String>, MapError>;
}

/// Receives the duration and outcome of every plugin call (metrics); implemented by the
/// engine's telemetry, handed to the plugin stack by the composition root.
pub trait PluginCallObserver: Send + Sync {
    /// One call of `plugin` ended (`ok`: the guest answered without an error or a trap).
    fn plugin_call(&self, plugin: &str, ok: bool, elapsed: std::time::Duration);
}

/// Maps origin keys to destination paths for one destination: mount map, then the optional
/// [`PathMapper`]. Keeps what it computed this cycle.
pub struct DestinationMapper<'a> {
    destination: &'a str,
    labels: &'a BTreeMap<String, String>,
    mounts: &'a BTreeMap<String, String>,
    paths: Option<&'a mut dyn PathMapper>,
    /// Targets computed this cycle.
    pub targets: HashMap<SecretPath, DestPath>,
    /// Keys whose mapping failed, with the reason.
    pub failures: Vec<(SecretPath, MapError)>,
}

impl std::fmt::Debug for DestinationMapper<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DestinationMapper")
            .field("destination", &self.destination)
            .field("mounts", &self.mounts)
            .field("plugins", &self.paths.is_some())
            .finish_non_exhaustive()
    }
}

impl<'a> DestinationMapper<'a> {
    /// A mapper over a normalised mount map (origin mount -> destination mount) and an
    /// optional path mapper (none: paths keep their names).
    pub fn new(
        destination: &'a str,
        labels: &'a BTreeMap<String, String>,
        mounts: &'a BTreeMap<String, String>,
        paths: Option<&'a mut dyn PathMapper>,
    ) -> Self {
        Self {
            destination,
            labels,
            mounts,
            paths,
            targets: HashMap::new(),
            failures: Vec::new(),
        }
    }

    /// Where `key` (of engine version `kind`) goes.
    pub fn map(&mut self, key: &SecretPath, kind: KvVersion) -> Mapping {
        // The planner may ask twice for one key; plugin calls are the expensive part.
        if let Some(known) = self.targets.get(key) {
            return Mapping::To(known.clone());
        }
        let Some(dest_mount) = self.mounts.get(key.mount.as_str()) else {
            return Mapping::OutOfScope;
        };
        let path = match self.paths.as_deref_mut() {
            None => key.path.clone(),
            Some(paths) => {
                let context = PathContext {
                    origin: "origin".into(),
                    destination: self.destination.to_owned(),
                    origin_mount: key.mount.to_string(),
                    destination_mount: dest_mount.clone(),
                    kv_version: Some(kind),
                    labels: self.labels.clone(),
                };
                match paths.map_path(&key.path, &context) {
                    Ok(Some(p)) => p,
                    Ok(None) => return Mapping::OutOfScope,
                    Err(e) => {
                        self.failures.push((key.clone(), e));
                        return Mapping::Failed;
                    }
                }
            }
        };
        let target = DestPath {
            mount: dest_mount.clone(),
            path,
        };
        self.targets.insert(key.clone(), target.clone());
        Mapping::To(target)
    }
}

impl<F> PathMapper for F
where
    F: FnMut(&str, &PathContext) -> Result<Option<String>, MapError> + Send,
{
    fn map_path(&mut self, path: &str, context: &PathContext) -> Result<Option<String>, MapError> {
        self(path, context)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_map_then_paths_and_failures_are_kept() {
        let mounts: BTreeMap<String, String> = [("secret/".to_owned(), "dst/".to_owned())].into();
        let labels = BTreeMap::from([("region".to_owned(), "eu".to_owned())]);
        let mut plugin = |path: &str, ctx: &PathContext| -> Result<Option<String>, MapError> {
            assert_eq!(ctx.labels["region"], "eu");
            assert_eq!(ctx.destination_mount, "dst/");
            match path {
                "skip" => Ok(None),
                "bad" => Err(MapError::Reported {
                    plugin: "x".into(),
                    path: path.into(),
                    case: "failed".into(),
                    message: "boom".into(),
                }),
                p => Ok(Some(format!("eu/{p}"))),
            }
        };
        let mut m = DestinationMapper::new("eu", &labels, &mounts, Some(&mut plugin));
        let k = SecretPath::new("secret/", "app");
        assert_eq!(
            m.map(&k, KvVersion::V2),
            Mapping::To(DestPath { mount: "dst/".into(), path: "eu/app".into() })
        );
        assert_eq!(m.map(&SecretPath::new("secret/", "skip"), KvVersion::V2), Mapping::OutOfScope);
        assert_eq!(m.map(&SecretPath::new("secret/", "bad"), KvVersion::V2), Mapping::Failed);
        assert_eq!(m.map(&SecretPath::new("other/", "app"), KvVersion::V2), Mapping::OutOfScope);
        assert_eq!(m.targets.len(), 1);
        assert_eq!(m.failures.len(), 1);
        let failure = &m.failures[0].1;
        assert_eq!((failure.plugin(), failure.class()), (Some("x"), "plugin-error"));
        assert_eq!(failure.to_string(), "path `bad`: plugin `x`: failed: boom");
    }
}

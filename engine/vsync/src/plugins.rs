//! Wires the plugin host into the engine: which components are loaded (the embedded default
//! pack, `[plugins] dir` or `--plugins DIR`), the per-destination stack of filters and
//! transformers, and how a path is mapped to its destination target.

// Without the host, parts of this module only exist for the feature build.
#![cfg_attr(not(feature = "plugins"), allow(unused_imports, dead_code))]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use tracing::error;
use vsync_config::{Config, Destination};
#[cfg(feature = "plugins")]
use vsync_config::PluginRef;
use vsync_core::plan::Mapping;
use vsync_core::{KvVersion, SecretKey, Target};
#[cfg(feature = "plugins")]
use vsync_plugin_host::{Context as PluginContext, HostConfig, StackSpec};
#[cfg(feature = "plugins")]
pub use vsync_plugin_host::{PluginHost, Stack};

/// Without the `plugins` feature there is no host and no stack (these types have no values).
#[cfg(not(feature = "plugins"))]
#[derive(Debug)]
pub enum PluginHost {}

/// See [`PluginHost`].
#[cfg(not(feature = "plugins"))]
#[derive(Debug)]
pub enum Stack {}

#[cfg(not(feature = "plugins"))]
const NO_HOST: &str = "this vsync was built without the plugin host (cargo feature `plugins`); \
                       transforms, filters and plugin validation are unavailable";

/// Validates a directory of components (`vsync plugin validate`): prints the report, returns
/// whether everything passed.
#[cfg(feature = "plugins")]
pub fn validate_dir(config: Option<&Config>, dir: &Path, json: bool) -> Result<bool> {
    let report = vsync_plugin_host::validate_dir(dir, &host_config(config));
    if json {
        println!("{}", serde_json::to_string_pretty(&report).context("encoding the report")?);
    } else {
        print!("{}", report.human());
    }
    Ok(report.passed())
}

/// See the `plugins` build.
#[cfg(not(feature = "plugins"))]
pub fn validate_dir(_config: Option<&Config>, _dir: &Path, _json: bool) -> Result<bool> {
    bail!(NO_HOST)
}

/// Where compiled components are cached between runs.
#[cfg(feature = "plugins")]
fn cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("vsync").join("components"))
}

/// Host limits from `[plugins]`.
#[cfg(feature = "plugins")]
pub fn host_config(config: Option<&Config>) -> HostConfig {
    let mut cfg = HostConfig {
        cache_dir: cache_dir(),
        ..HostConfig::default()
    };
    if let Some(c) = config {
        cfg.call_timeout = c.plugins.call_timeout;
        cfg.memory_limit = c.plugins.memory_limit;
    }
    cfg
}

/// The host with the default pack plus the extra components of `dir_override` (the
/// `--plugins` flag) or else `[plugins] dir`.
#[cfg(not(feature = "plugins"))]
pub fn host(_config: &Config, _dir_override: Option<&Path>) -> Result<PluginHost> {
    bail!(NO_HOST)
}

/// The host with the default pack plus the extra components of `dir_override` (the
/// `--plugins` flag) or else `[plugins] dir`.
#[cfg(feature = "plugins")]
pub fn host(config: &Config, dir_override: Option<&Path>) -> Result<PluginHost> {
    let mut host = PluginHost::new(host_config(Some(config))).context("starting the plugin host")?;
    if let Some(dir) = dir_override.or(config.plugins.dir.as_deref()) {
        host.load_dir(dir)
            .with_context(|| format!("loading plugins from {}", dir.display()))?;
    }
    Ok(host)
}

#[cfg(feature = "plugins")]
fn to_json(r: &PluginRef) -> Result<serde_json::Value> {
    Ok(match &r.config {
        Some(t) => serde_json::to_value(t).with_context(|| format!("plugin `{}`: config", r.plugin))?,
        None => serde_json::Value::Object(Default::default()),
    })
}

/// Whether a destination uses any plugin (no stack is built otherwise).
pub fn uses_plugins(d: &Destination) -> bool {
    !d.transforms.is_empty() || !d.filters.is_empty()
}

/// Builds a destination's stack (instantiates and configures every plugin it names).
#[cfg(not(feature = "plugins"))]
pub fn stack(host: &PluginHost, _d: &Destination) -> Result<Stack> {
    match *host {}
}

/// Builds a destination's stack (instantiates and configures every plugin it names).
#[cfg(feature = "plugins")]
pub fn stack(host: &PluginHost, d: &Destination) -> Result<Stack> {
    let spec = StackSpec {
        transforms: d.transforms.iter().map(|r| Ok((r.plugin.clone(), to_json(r)?))).collect::<Result<_>>()?,
        filters: d.filters.iter().map(|r| Ok((r.plugin.clone(), to_json(r)?))).collect::<Result<_>>()?,
    };
    Stack::new(host, &spec).with_context(|| format!("destination `{}`: plugin stack", d.name))
}

/// Maps origin keys to destination targets for one destination: mount map, then filters and
/// transformers. Remembers what it computed, for the tombstones written after the cycle.
pub struct Mapper<'a> {
    d: &'a Destination,
    mounts: &'a BTreeMap<String, String>,
    stack: Option<&'a mut Stack>,
    kinds: &'a dyn Fn(&SecretKey) -> KvVersion,
    /// Targets computed this cycle.
    pub targets: HashMap<SecretKey, Target>,
    /// Paths whose mapping failed, with the reason (logged once each).
    pub failures: Vec<(SecretKey, String)>,
}

impl<'a> Mapper<'a> {
    /// A mapper over a mount map and an optional stack.
    pub fn new(
        d: &'a Destination,
        mounts: &'a BTreeMap<String, String>,
        stack: Option<&'a mut Stack>,
        kinds: &'a dyn Fn(&SecretKey) -> KvVersion,
    ) -> Self {
        Self {
            d,
            mounts,
            stack,
            kinds,
            targets: HashMap::new(),
            failures: Vec::new(),
        }
    }

    /// Where `key` goes.
    pub fn map(&mut self, key: &SecretKey) -> Mapping {
        let Some(dest_mount) = self.mounts.get(key.mount.as_str()) else {
            return Mapping::OutOfScope;
        };
        let path = match self.stack.as_deref_mut() {
            None => key.path.clone(),
            #[cfg(not(feature = "plugins"))]
            Some(stack) => match *stack {},
            #[cfg(feature = "plugins")]
            Some(stack) => {
                let ctx = PluginContext {
                    origin: "origin".into(),
                    destination: self.d.name.clone(),
                    origin_mount: key.mount.to_string(),
                    destination_mount: dest_mount.clone(),
                    kv_version: match (self.kinds)(key) {
                        KvVersion::V1 => 1,
                        KvVersion::V2 => 2,
                    },
                    labels: self.d.labels.clone(),
                };
                match stack.map(&key.path, &ctx) {
                    Ok(Some(p)) => p,
                    Ok(None) => return Mapping::OutOfScope,
                    Err(e) => {
                        error!(destination = %self.d.name, secret = %key, error = %e, "mapping the path failed; the secret is left as it is this cycle");
                        self.failures.push((key.clone(), e.to_string()));
                        return Mapping::Failed;
                    }
                }
            }
        };
        let target = Target {
            mount: dest_mount.clone(),
            path,
        };
        self.targets.insert(key.clone(), target.clone());
        Mapping::To(target)
    }
}

/// Refuses a plan in which two origin secrets land on one destination path: `claims` are
/// (target, key) pairs of every secret the destination will hold after the cycle.
pub fn check_collisions<'k>(d: &Destination, claims: impl Iterator<Item = (&'k Target, &'k SecretKey)>) -> Result<()> {
    let mut seen: HashMap<&Target, &SecretKey> = HashMap::new();
    let mut clashes = Vec::new();
    for (target, key) in claims {
        if let Some(other) = seen.insert(target, key)
            && other != key
        {
            clashes.push(format!("`{other}` and `{key}` both map to `{target}`"));
        }
    }
    if clashes.is_empty() {
        return Ok(());
    }
    clashes.sort();
    let shown = clashes.iter().take(10).cloned().collect::<Vec<_>>().join("; ");
    bail!(
        "destination `{}`: {} destination path(s) claimed by more than one origin secret ({shown}{}); \
         nothing was written. Fix the transforms",
        d.name,
        clashes.len(),
        if clashes.len() > 10 { "; ..." } else { "" }
    )
}

//! Wires the plugin host into the composition: which components are loaded (the embedded
//! default pack, `[plugins] dir` or `--plugins DIR`), each destination's stack of filters and
//! transformers (the engine's `PathMapper`, from the `StackConfig` the config converts to),
//! and `vsync plugin validate`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use vsync_config::{DestinationRuntime, PluginLimits};
use vsync_core::{PathMapper, PluginCallObserver};
use vsync_plugin_host::{HostConfig, PluginHost, Stack, StackSpec};

/// Validates a directory of components (`vsync plugin validate`): prints the report, returns
/// whether everything passed.
pub fn validate_dir(limits: Option<&PluginLimits>, dir: &Path, json: bool) -> Result<bool> {
    let report = vsync_plugin_host::validate_dir(dir, &host_config(limits));
    if json {
        println!("{}", serde_json::to_string_pretty(&report).context("encoding the report")?);
    } else {
        print!("{}", report.human());
    }
    Ok(report.passed())
}

/// Where compiled components are cached between runs.
fn cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("vsync").join("components"))
}

/// Host limits from `[plugins]`.
fn host_config(limits: Option<&PluginLimits>) -> HostConfig {
    let mut cfg = HostConfig { cache_dir: cache_dir(), ..HostConfig::default() };
    if let Some(l) = limits {
        cfg.call_timeout = l.call_timeout;
        cfg.memory_limit = l.memory_limit;
    }
    cfg
}

/// The host with the default pack plus the extra components of `dir_override` (the
/// `--plugins` flag) or else `[plugins] dir`.
pub fn host(limits: &PluginLimits, dir_override: Option<&Path>) -> Result<PluginHost> {
    let mut host = PluginHost::new(host_config(Some(limits))).context("starting the plugin host")?;
    if let Some(dir) = dir_override.or(limits.dir.as_deref()) {
        host.load_dir(dir).with_context(|| format!("loading plugins from {}", dir.display()))?;
    }
    Ok(host)
}

/// The plugin stack of each destination that configures one (one host for all of them; every
/// plugin instantiated and configured); `observer` receives every plugin call (metrics).
pub fn mappers(
    limits: &PluginLimits,
    dests: &[&DestinationRuntime],
    dir: Option<&Path>,
    observer: Option<Arc<dyn PluginCallObserver>>,
) -> Result<Vec<Option<Box<dyn PathMapper>>>> {
    if dests.iter().all(|d| d.stack.is_none()) {
        return Ok(dests.iter().map(|_| None).collect());
    }
    let host = host(limits, dir)?;
    let mut out = Vec::new();
    for d in dests {
        let Some(stack) = &d.stack else {
            out.push(None);
            continue;
        };
        let spec = StackSpec { transforms: stack.transforms.clone(), filters: stack.filters.clone() };
        let mut stack = Stack::new(&host, &spec).with_context(|| format!("destination `{}`: plugin stack", d.spec.name))?;
        if let Some(o) = &observer {
            stack.observe(o.clone());
        }
        out.push(Some(Box::new(stack) as Box<dyn PathMapper>));
    }
    Ok(out)
}

//! Wires the plugin host into the composition: which components are loaded (the embedded
//! default pack, `[plugins] dir` or `--plugins DIR`), each destination's stack of filters and
//! transformers (the engine's `PathMapper`), and `vsync plugin validate`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use vsync_config::{Config, Destination, PluginRef};
use vsync_plugin_host::{HostConfig, PluginHost, Stack, StackSpec};

/// Validates a directory of components (`vsync plugin validate`): prints the report, returns
/// whether everything passed.
pub fn validate_dir(config: Option<&Config>, dir: &Path, json: bool) -> Result<bool> {
    let report = vsync_plugin_host::validate_dir(dir, &host_config(config));
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
fn host_config(config: Option<&Config>) -> HostConfig {
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
pub fn host(config: &Config, dir_override: Option<&Path>) -> Result<PluginHost> {
    let mut host = PluginHost::new(host_config(Some(config))).context("starting the plugin host")?;
    if let Some(dir) = dir_override.or(config.plugins.dir.as_deref()) {
        host.load_dir(dir)
            .with_context(|| format!("loading plugins from {}", dir.display()))?;
    }
    Ok(host)
}

fn to_json(r: &PluginRef) -> Result<serde_json::Value> {
    Ok(match &r.config {
        Some(t) => serde_json::to_value(t).with_context(|| format!("plugin `{}`: config", r.plugin))?,
        None => serde_json::Value::Object(Default::default()),
    })
}

/// Builds a destination's stack (instantiates and configures every plugin it names).
pub fn stack(host: &PluginHost, d: &Destination) -> Result<Stack> {
    let spec = StackSpec {
        transforms: d.transforms.iter().map(|r| Ok((r.plugin.clone(), to_json(r)?))).collect::<Result<_>>()?,
        filters: d.filters.iter().map(|r| Ok((r.plugin.clone(), to_json(r)?))).collect::<Result<_>>()?,
    };
    Stack::new(host, &spec).with_context(|| format!("destination `{}`: plugin stack", d.name))
}

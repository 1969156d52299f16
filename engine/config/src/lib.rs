//! `vsync-config`: the `vsync.toml` schema (DESIGN section 6), parsing with errors that name
//! the file, line and key, and semantic validation.
//!
//! Unknown keys are errors (`deny_unknown_fields` everywhere). Durations and sizes are strings
//! with units (`"1m"`, `"50ms"`, `"32MiB"`). This crate describes configuration and builds the
//! runtime specifications (`vsync_core::spec`) the engine takes, so no runtime crate depends
//! on the file's schema.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use sha2::{Digest as _, Sha256};
use thiserror::Error;
pub use vsync_core::{DeletePolicy, VersionsMode};
use vsync_core::{DestinationSpec, OriginSpec, normalize_mount};

/// A configuration problem. Every variant names the file; parse errors also the line and column.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config file {file}: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TOML is malformed, has an unknown key, or a value of the wrong type.
    #[error("{file}:{line}:{column}: {message}")]
    Parse {
        /// The file.
        file: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong, naming the key.
        message: String,
    },
    /// Several values are not acceptable (every one is listed).
    #[error("{} problems:\n{}", .0.len(), .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Many(Vec<ConfigError>),
    /// The TOML is well-formed but a value is not acceptable.
    #[error("{file}: `{key}`: {message}")]
    Invalid {
        /// The file.
        file: PathBuf,
        /// Dotted key path, e.g. `destination[0].mounts`.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// The whole `vsync.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The origin side.
    pub origin: Origin,
    /// Destinations (`[[destination]]`).
    #[serde(default, rename = "destination")]
    pub destinations: Vec<Destination>,
    /// Plugin settings.
    #[serde(default)]
    pub plugins: PluginSettings,
    /// Alerting on fatal errors.
    #[serde(default)]
    pub alert: Option<Alert>,
    /// Metrics and logs.
    #[serde(default)]
    pub telemetry: Telemetry,
}

/// `[origin]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Origin {
    /// Origin Vault.
    pub vault: VaultSettings,
    /// Mounts to replicate (`secret/`).
    pub mounts: Vec<String>,
    /// Scan interval.
    #[serde(default = "default_interval", deserialize_with = "duration")]
    pub interval: Duration,
    /// Per-cycle time limit.
    #[serde(default = "default_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// Requests in flight.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Where the origin's sync info lives.
    pub state: StateSettings,
    /// HMAC key for KV v1 value digests.
    #[serde(default)]
    pub digest_key_file: Option<PathBuf>,
    /// Socket audit device feed address.
    #[serde(default)]
    pub audit_listen: Option<String>,
}

/// Connection settings of one Vault (either side).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultSettings {
    /// `http(s)://host:port`.
    pub address: String,
    /// Inline token (dev only; prefer `token_file` or `token_env`).
    #[serde(default)]
    pub token: Option<String>,
    /// File holding the token.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Environment variable holding the token.
    #[serde(default)]
    pub token_env: Option<String>,
    /// AppRole login.
    #[serde(default)]
    pub approle: Option<AppRole>,
    /// Namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// CA bundle (PEM).
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
    /// Client certificate (PEM).
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// Client key (PEM).
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// Skip TLS verification (warns loudly).
    #[serde(default)]
    pub tls_skip_verify: bool,
}

/// `approle = { role_id, secret_id | secret_id_file | secret_id_env, mount }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppRole {
    /// Role ID.
    pub role_id: String,
    /// Inline secret ID.
    #[serde(default)]
    pub secret_id: Option<String>,
    /// File holding the secret ID.
    #[serde(default)]
    pub secret_id_file: Option<PathBuf>,
    /// Environment variable holding the secret ID.
    #[serde(default)]
    pub secret_id_env: Option<String>,
    /// Auth mount (default `approle`).
    #[serde(default = "default_approle_mount")]
    pub mount: String,
}

/// Where a side's sync info lives.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase", deny_unknown_fields)]
pub enum StateSettings {
    /// Embedded file store (one machine).
    File {
        /// Directory.
        path: PathBuf,
    },
    /// Consul KV.
    Consul {
        /// Consul HTTP address.
        address: String,
        /// Key prefix (default `vsync/`).
        #[serde(default = "default_prefix")]
        prefix: String,
        /// Inline ACL token.
        #[serde(default)]
        token: Option<String>,
        /// File holding the ACL token.
        #[serde(default)]
        token_file: Option<PathBuf>,
        /// Environment variable holding the ACL token.
        #[serde(default)]
        token_env: Option<String>,
        /// Datacenter.
        #[serde(default)]
        datacenter: Option<String>,
        /// CA bundle (PEM).
        #[serde(default)]
        ca_cert: Option<PathBuf>,
        /// Client certificate (PEM).
        #[serde(default)]
        client_cert: Option<PathBuf>,
        /// Client key (PEM).
        #[serde(default)]
        client_key: Option<PathBuf>,
        /// Bucket count (chosen automatically when absent).
        #[serde(default)]
        buckets: Option<u32>,
    },
}

/// `[[destination]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    /// Unique name.
    pub name: String,
    /// Labels handed to plugins (e.g. `region`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Destination Vault.
    pub vault: VaultSettings,
    /// Origin mount -> destination mount.
    pub mounts: BTreeMap<String, String>,
    /// Where this destination's info lives.
    pub state: StateSettings,
    /// Backup ticker.
    #[serde(default = "default_interval", deserialize_with = "duration")]
    pub interval: Duration,
    /// Per-cycle time limit.
    #[serde(default = "default_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// Copy workers.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// `all` or `latest`.
    #[serde(default)]
    pub versions: VersionsMode,
    /// `mirror`, `soft` or `ignore`.
    #[serde(default)]
    pub deletes: DeletePolicy,
    /// Mass-delete guard ratio.
    #[serde(default = "default_ratio")]
    pub max_delete_ratio: f64,
    /// Transformer stack, in order.
    #[serde(default)]
    pub transforms: Vec<PluginRef>,
    /// Filters; all must include a path.
    #[serde(default)]
    pub filters: Vec<PluginRef>,
}

/// `{ plugin = "name", config = { ... } }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginRef {
    /// Plugin name (default pack or `--plugins` dir).
    pub plugin: String,
    /// Plugin configuration, handed to `configure` as JSON.
    #[serde(default)]
    pub config: Option<toml::Table>,
}

/// `[plugins]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSettings {
    /// Directory of extra components.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Per-call time limit.
    #[serde(default = "default_call_timeout", deserialize_with = "duration")]
    pub call_timeout: Duration,
    /// Memory limit per instance, in bytes.
    #[serde(default = "default_memory_limit", deserialize_with = "size")]
    pub memory_limit: u64,
}

impl Default for PluginSettings {
    fn default() -> Self {
        Self {
            dir: None,
            call_timeout: default_call_timeout(),
            memory_limit: default_memory_limit(),
        }
    }
}

/// `[alert]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alert {
    /// URL that receives a JSON POST on fatal errors.
    pub webhook: String,
}

/// `[telemetry]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Telemetry {
    /// `/metrics` and `/healthz` listen address.
    #[serde(default)]
    pub listen: Option<String>,
    /// `json` or `human`.
    #[serde(default)]
    pub log_format: Option<LogFormat>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Human,
}

fn default_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_workers() -> usize {
    4
}
fn default_ratio() -> f64 {
    0.5
}
fn default_prefix() -> String {
    "vsync/".into()
}
fn default_approle_mount() -> String {
    "approle".into()
}
fn default_call_timeout() -> Duration {
    Duration::from_millis(50)
}
fn default_memory_limit() -> u64 {
    32 * 1024 * 1024
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "invalid duration `{text}` ({e}); use a number with a unit, like \"30s\", \"1m\" or \"50ms\""
        ))
    })
}

/// Parses `"32MiB"`, `"512KiB"`, `"1GiB"`, `"1000"` (bytes), also `KB`/`MB`/`GB` (powers of 10).
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

fn size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let text = String::deserialize(d)?;
    parse_size(&text).ok_or_else(|| {
        serde::de::Error::custom(format!("invalid size `{text}`; use a number with a unit, like \"32MiB\""))
    })
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_owned(),
            source,
        })?;
        Self::parse(&text, file)
    }

    /// Parses and validates config text; `file` is used in error messages.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let (line, column) = e
                .span()
                .map(|s| line_col(text, s.start))
                .unwrap_or((1, 1));
            ConfigError::Parse {
                file: file.to_owned(),
                line,
                column,
                message: e.message().trim().to_owned(),
            }
        })?;
        config.validate(file)?;
        Ok(config)
    }

    /// Checks everything the schema cannot, and reports every problem at once.
    fn validate(&self, file: &Path) -> Result<(), ConfigError> {
        let mut problems: Vec<(String, String)> = Vec::new();
        let mut bad = |key: String, message: String| problems.push((key, message));
        if let Err((k, m)) = check_vault(&self.origin.vault, "origin.vault") {
            bad(k, m);
        }
        if self.origin.mounts.is_empty() {
            bad("origin.mounts".into(), "list at least one mount".into());
        }
        let mut origin_mounts: Vec<String> = Vec::new();
        for m in &self.origin.mounts {
            match vsync_core::normalize_mount(m) {
                Err(e) => bad("origin.mounts".into(), format!("mount `{m}`: {e}")),
                Ok(n) if origin_mounts.contains(&n) => bad("origin.mounts".into(), format!("mount `{m}` is listed twice")),
                Ok(n) => {
                    if let Some(other) = origin_mounts.iter().find(|o| n.starts_with(o.as_str()) || o.starts_with(n.as_str())) {
                        bad(
                            "origin.mounts".into(),
                            format!("mounts `{other}` and `{n}` overlap: one is inside the other, so its keys would be scanned twice"),
                        );
                    }
                    origin_mounts.push(n);
                }
            }
        }
        check_workers(&mut bad, "origin.workers", self.origin.workers);
        check_durations(&mut bad, "origin", self.origin.interval, self.origin.timeout);
        if let StateSettings::Consul { buckets: Some(n), .. } = &self.origin.state
            && (*n == 0 || *n > MAX_BUCKETS)
        {
            bad("origin.state.buckets".into(), format!("{n} is out of range (1 to {MAX_BUCKETS})"));
        }
        if let Some(listen) = &self.origin.audit_listen
            && let Err(e) = listen.parse::<std::net::SocketAddr>()
        {
            bad("origin.audit_listen".into(), format!("`{listen}` is not an IP:port address ({e}), e.g. `127.0.0.1:9400`"));
        }
        if self.telemetry.listen.is_some() {
            bad(
                "telemetry.listen".into(),
                "the /metrics and /healthz listener is not built yet; remove the key".into(),
            );
        }
        if self.plugins.call_timeout.is_zero() {
            bad("plugins.call_timeout".into(), "must be longer than 0".into());
        }
        let mut names = Vec::new();
        for (i, d) in self.destinations.iter().enumerate() {
            let at = |k: &str| format!("destination[{i}].{k}");
            let usable = !d.name.is_empty()
                && d.name.len() <= 100
                && d.name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !usable {
                bad(
                    at("name"),
                    format!("`{}` is not a usable name: use 1 to 100 letters, digits, `-`, `_` or `.`", d.name),
                );
            }
            if names.contains(&&d.name) {
                bad(at("name"), format!("destination `{}` is defined twice", d.name));
            }
            names.push(&d.name);
            if let Err((k, m)) = check_vault(&d.vault, &at("vault")) {
                bad(k, m);
            }
            if d.mounts.is_empty() {
                bad(at("mounts"), "map at least one origin mount to a destination mount".into());
            }
            let mut seen_from: Vec<String> = Vec::new();
            for (from, to) in &d.mounts {
                match vsync_core::normalize_mount(from) {
                    Err(e) => bad(at("mounts"), format!("origin mount `{from}`: {e}")),
                    Ok(n) if seen_from.contains(&n) => {
                        bad(at("mounts"), format!("origin mount `{n}` is mapped twice (`{n}` and `{}` are one mount)", n.trim_end_matches('/')))
                    }
                    Ok(n) => {
                        if !origin_mounts.contains(&n) {
                            bad(at("mounts"), format!("origin mount `{from}` is not in origin.mounts ({})", origin_mounts.join(", ")));
                        }
                        seen_from.push(n);
                    }
                }
                if let Err(e) = vsync_core::normalize_mount(to) {
                    bad(at("mounts"), format!("destination mount `{to}`: {e}"));
                }
            }
            check_workers(&mut bad, &at("workers"), d.workers);
            check_durations(&mut bad, &format!("destination[{i}]"), d.interval, d.timeout);
            if !(0.0..=1.0).contains(&d.max_delete_ratio) {
                bad(at("max_delete_ratio"), "must be between 0 and 1".into());
            }
        }
        let mut invalid: Vec<ConfigError> = problems
            .into_iter()
            .map(|(key, message)| ConfigError::Invalid { file: file.to_owned(), key, message })
            .collect();
        match invalid.len() {
            0 => Ok(()),
            1 => Err(invalid.remove(0)),
            _ => Err(ConfigError::Many(invalid)),
        }
    }

    /// The destination called `name`.
    pub fn destination(&self, name: &str) -> Option<&Destination> {
        self.destinations.iter().find(|d| d.name == name)
    }

    /// The origin role's runtime spec (the config was validated, so mounts normalise).
    pub fn origin_spec(&self) -> OriginSpec {
        let o = &self.origin;
        OriginSpec {
            mounts: o.mounts.iter().map(|m| normalize_mount(m).unwrap_or_else(|_| m.clone())).collect(),
            interval: o.interval,
            timeout: o.timeout,
            workers: o.workers,
            buckets: match &o.state {
                StateSettings::Consul { buckets, .. } => *buckets,
                StateSettings::File { .. } => None,
            },
        }
    }
}

impl Destination {
    /// Whether transforms or filters are configured.
    pub fn uses_plugins(&self) -> bool {
        !self.transforms.is_empty() || !self.filters.is_empty()
    }

    /// Hash of what decides where this destination writes (mount map, transforms, filters):
    /// when it changes, every target is re-checked.
    pub fn config_hash(&self) -> String {
        // Debug of these ordered maps is deterministic; this hash only ever meets itself.
        let mut text = format!("{:?}|{:?}|{:?}", self.mounts, self.transforms, self.filters);
        // A switch to `all` re-checks every key (adopting exact ones); `latest` keeps the hash
        // it always had.
        if self.versions == VersionsMode::All {
            text.push_str("|versions=all");
        }
        vsync_core::Digest(Sha256::digest(text.as_bytes()).into()).to_hex()
    }

    /// This destination's runtime spec (the config was validated, so mounts normalise).
    pub fn spec(&self) -> DestinationSpec {
        let norm = |m: &String| normalize_mount(m).unwrap_or_else(|_| m.clone());
        DestinationSpec {
            name: self.name.clone(),
            labels: self.labels.clone(),
            mounts: self.mounts.iter().map(|(from, to)| (norm(from), norm(to))).collect(),
            interval: self.interval,
            timeout: self.timeout,
            workers: self.workers,
            versions: self.versions,
            deletes: self.deletes,
            max_delete_ratio: self.max_delete_ratio,
            config_hash: self.config_hash(),
            uses_plugins: self.uses_plugins(),
        }
    }
}

/// Requests in flight above this are refused (a typo, not a setting).
pub const MAX_WORKERS: usize = 1024;

/// Largest bucket count accepted (the root keeps the bucket list in index parts, so any count
/// stores; more buckets than this only cost reads).
pub const MAX_BUCKETS: u32 = 1 << 16;

fn check_workers(bad: &mut impl FnMut(String, String), key: &str, workers: usize) {
    if workers == 0 || workers > MAX_WORKERS {
        bad(key.to_owned(), format!("{workers} is out of range (1 to {MAX_WORKERS})"));
    }
}

fn check_durations(bad: &mut impl FnMut(String, String), at: &str, interval: Duration, timeout: Duration) {
    if interval.is_zero() {
        bad(format!("{at}.interval"), "must be longer than 0".into());
    }
    if timeout.is_zero() {
        bad(format!("{at}.timeout"), "must be longer than 0".into());
    }
}

fn check_vault(v: &VaultSettings, key: &str) -> Result<(), (String, String)> {
    let sources = [v.token.is_some(), v.token_file.is_some(), v.token_env.is_some(), v.approle.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if sources != 1 {
        return Err((
            key.to_owned(),
            "set exactly one of `token`, `token_file`, `token_env` or `approle`".into(),
        ));
    }
    if !(v.address.starts_with("http://") || v.address.starts_with("https://")) {
        return Err((format!("{key}.address"), format!("`{}` must start with http:// or https://", v.address)));
    }
    if v.client_cert.is_some() != v.client_key.is_some() {
        return Err((key.to_owned(), "`client_cert` and `client_key` go together".into()));
    }
    if let Some(a) = &v.approle {
        let n = [a.secret_id.is_some(), a.secret_id_file.is_some(), a.secret_id_env.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        if n != 1 {
            return Err((
                format!("{key}.approle"),
                "set exactly one of `secret_id`, `secret_id_file` or `secret_id_env`".into(),
            ));
        }
    }
    Ok(())
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(before.len(), |p| before.len() - p - 1) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const GOOD: &str = r#"
[origin]
vault = { address = "http://127.0.0.1:8200", token = "root" }
mounts = ["secret/", "kv1"]
state = { backend = "file", path = "./vsync-state" }

[[destination]]
name = "eu"
labels = { region = "eu" }
vault = { address = "http://127.0.0.1:8300", token_env = "EU_TOKEN" }
mounts = { "secret/" = "secret/", "kv1/" = "kv1/" }
state = { backend = "file", path = "./vsync-state" }
versions = "latest"
deletes = "soft"
interval = "30s"
transforms = [ { plugin = "regex", config = { from = "^a$", to = "b" } } ]

[plugins]
call_timeout = "50ms"
memory_limit = "32MiB"
"#;

    #[test]
    fn parses_the_design_example_shape() {
        let c = Config::parse(GOOD, Path::new("vsync.toml")).unwrap();
        assert_eq!(c.origin.interval, Duration::from_secs(60));
        let d = c.destination("eu").unwrap();
        assert_eq!(d.versions, VersionsMode::Latest);
        assert_eq!(d.deletes, DeletePolicy::Soft);
        assert_eq!(d.interval, Duration::from_secs(30));
        assert_eq!(d.workers, 4);
        assert_eq!(c.plugins.memory_limit, 32 << 20);
        assert_eq!(d.transforms[0].plugin, "regex");
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let bad = GOOD.replace("versions = \"latest\"", "versions = \"latest\"\nworkerz = 3");
        let err = Config::parse(&bad, Path::new("vsync.toml")).unwrap_err().to_string();
        assert!(err.contains("workerz"), "{err}");
        assert!(err.starts_with("vsync.toml:14:"), "{err}");
        let bad = GOOD.replace("token = \"root\"", "token = \"root\", tokn = \"x\"");
        let err = Config::parse(&bad, Path::new("f.toml")).unwrap_err().to_string();
        assert!(err.contains("tokn") && err.starts_with("f.toml:3:"), "{err}");
        let bad = GOOD.replace("backend = \"file\", path", "backend = \"file\", pth = 1, path");
        let err = Config::parse(&bad, Path::new("f.toml")).unwrap_err().to_string();
        assert!(err.contains("pth"), "{err}");
    }

    #[test]
    fn semantic_errors_name_the_key() {
        let cases = [
            (GOOD.replace("token_env = \"EU_TOKEN\"", "token_env = \"E\", token = \"x\""), "destination[0].vault"),
            (GOOD.replace("\"kv1/\" = \"kv1/\"", "\"kv9/\" = \"kv1/\""), "destination[0].mounts"),
            (GOOD.replace("interval = \"30s\"", "interval = \"soon\""), "soon"),
            (GOOD.replace("mounts = [\"secret/\", \"kv1\"]", "mounts = [\"a/../b\"]"), "origin.mounts"),
            (GOOD.replace("versions = \"latest\"", "versions = \"some\""), "some"),
        ];
        for (text, needle) in cases {
            let err = Config::parse(&text, Path::new("vsync.toml")).unwrap_err().to_string();
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }

    #[test]
    fn every_problem_is_reported_at_once_and_new_rules_hold() {
        let bad = GOOD
            .replace("mounts = [\"secret/\", \"kv1\"]", "mounts = [\"secret/\", \"secret/sub/\", \"kv1\"]")
            .replace("name = \"eu\"", "name = \"eu west\"")
            .replace("interval = \"30s\"", "interval = \"0s\"\nworkers = 100000")
            .replace("mounts = { \"secret/\" = \"secret/\", \"kv1/\" = \"kv1/\" }", "mounts = { \"secret/\" = \"secret/\", \"secret\" = \"other/\", \"kv1/\" = \"kv1/\" }");
        let err = Config::parse(&bad, Path::new("vsync.toml")).unwrap_err().to_string();
        for needle in ["overlap", "destination[0].name", "destination[0].interval", "destination[0].workers", "mapped twice"] {
            assert!(err.contains(needle), "{needle}: {err}");
        }
        assert!(err.starts_with("5 problems"), "{err}");
        let listen = format!("{GOOD}\n[telemetry]\nlisten = \"127.0.0.1:9464\"\n");
        let err = Config::parse(&listen, Path::new("vsync.toml")).unwrap_err().to_string();
        assert!(err.contains("telemetry.listen") && err.contains("not built yet"), "{err}");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("32MiB"), Some(32 << 20));
        assert_eq!(parse_size("1000"), Some(1000));
        assert_eq!(parse_size("2GB"), Some(2_000_000_000));
        assert_eq!(parse_size("lots"), None);
    }
}

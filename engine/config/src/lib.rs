//! `vsync-config`: the `vsync.toml` schema (README "Configuration reference"), parsing with errors that name
//! the file, line, column and key, and semantic validation.
//!
//! Loading reports every problem at once, each as `file:line:col: key: message (hint)`:
//!
//! - A TOML syntax error stops everything else (the rest of the document cannot be trusted), so
//!   it is the only problem reported.
//! - Otherwise every unknown key, anywhere (inline tables, `state` tables, each
//!   `[[destination]]`), is reported with the nearest known key as a hint. The known keys are
//!   those of the JSON Schema generated from these types ([`json_schema`], committed as
//!   `engine/config/vsync.schema.json`).
//! - Then the values are read: a value of the wrong type, a bad duration or size, or a missing
//!   required key is reported, but serde stops at the first such error (so a second one shows
//!   up only after the first is fixed). When every value reads, every semantic problem
//!   (overlapping mounts, two token sources, a destination mapping a mount the origin does not
//!   list, ...) is reported.
//!
//! Durations and sizes are strings with units (`"1m"`, `"50ms"`, `"32MiB"`). Relative paths in
//! the file resolve against the file's directory ([`Config::load`]).
//!
//! This crate describes configuration and converts it, in one place ([`Config::runtime`], whose
//! problems are the semantic problems above), into what the runtime takes: the specifications
//! of `vsync_core::spec`, each side's Vault and state-store settings, each destination's plugin
//! stack and its [`config_hash`] (over a canonical encoding). Credentials stay references
//! ([`SecretRef`]: inline, file or environment variable, checked once, read once where used,
//! never printed). No runtime crate depends on the file's schema.

mod diag;
mod hash;
mod runtime;
mod schema;
pub mod secret;
pub mod starter;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};
use thiserror::Error;
pub use vsync_core::{DeletePolicy, VersionsMode};

pub use diag::{KeyPath, Seg};
pub use hash::{CONFIG_HASH_FORMAT, PluginConfig, canonical_json, config_hash};
pub use runtime::{
    AuditSpec, DIGEST_KEY_MIN, DestinationRuntime, MAX_BUCKETS, MAX_WORKERS, OriginRuntime, PluginLimits, Problem, Problems,
    Runtime, StackConfig, StoreSpec, VaultAuth, VaultSpec,
};
pub use secret::{Inline, SecretError, SecretRef, SecretSource, SecretValue};
pub use schema::{DURATION_PATTERN, SIZE_PATTERN, json_schema, json_schema_text};

/// A configuration problem. Every variant names the file; all but `Read` also the line and
/// column.
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
    /// The file is not valid TOML (only this error is reported: the rest cannot be trusted).
    #[error("{file}:{line}:{column}: {message}")]
    Parse {
        /// The file.
        file: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// Several problems (every one is listed, in the order of the file).
    #[error("{} problems:\n{}", .0.len(), .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Many(Vec<ConfigError>),
    /// A key is unknown, or a value has the wrong type or is not acceptable.
    #[error("{file}:{line}:{column}: {key}: {message}{}", hint.as_ref().map(|h| format!(" ({h})")).unwrap_or_default())]
    Invalid {
        /// The file.
        file: PathBuf,
        /// 1-based line of the key (or of the nearest enclosing key when the value was not
        /// written and its default is what is wrong).
        line: usize,
        /// 1-based column.
        column: usize,
        /// Dotted key path, e.g. `destination[0].mounts`.
        key: String,
        /// What is wrong.
        message: String,
        /// How to fix it.
        hint: Option<String>,
    },
}

/// The whole `vsync.toml` (README "Configuration reference").
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "vsync.toml",
    description = "Configuration of vsync: one origin Vault, its mounts, and the destinations it is replicated to."
)]
pub struct Config {
    /// The origin side: the Vault that is read, its mounts, and where its sync info lives.
    pub origin: Origin,
    /// Destinations (`[[destination]]`), each a Vault that receives a copy.
    #[serde(default, rename = "destination")]
    pub destinations: Vec<Destination>,
    /// Plugin settings (`[plugins]`).
    #[serde(default)]
    pub plugins: PluginSettings,
    /// Alerting on fatal errors (`[alert]`).
    #[serde(default)]
    pub alert: Option<Alert>,
    /// Metrics, health and logs (`[telemetry]`).
    #[serde(default)]
    pub telemetry: Telemetry,
}

/// `[origin]`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Origin {
    /// Origin Vault connection and auth.
    pub vault: VaultSettings,
    /// Mounts to replicate, like `["secret/", "kv1/"]`; none may be inside another.
    pub mounts: Vec<String>,
    /// Scan interval.
    #[serde(default = "default_interval", deserialize_with = "duration")]
    #[schemars(schema_with = "schema::duration", extend("default" = "1m"))]
    pub interval: Duration,
    /// Per-cycle time limit.
    #[serde(default = "default_timeout", deserialize_with = "duration")]
    #[schemars(schema_with = "schema::duration", extend("default" = "5m"))]
    pub timeout: Duration,
    /// Requests in flight: `"auto"` (adaptive, the default) or a fixed number (1 to 1024).
    #[serde(default)]
    #[schemars(schema_with = "schema::workers")]
    pub workers: Workers,
    /// Where the origin's sync info lives.
    pub state: StateSettings,
    /// File holding the HMAC key for KV v1 value digests (needed only with KV v1 mounts).
    #[serde(default)]
    pub digest_key_file: Option<PathBuf>,
    /// Socket audit device feed address (`IP:port`): the origin publishes each change at once.
    #[serde(default)]
    pub audit_listen: Option<String>,
    /// Source addresses allowed to connect to `audit_listen`: IP addresses or CIDR ranges,
    /// like `["127.0.0.1", "10.0.4.0/24"]`. Default: loopback only. Required when
    /// `audit_listen` is not a loopback address.
    #[serde(default)]
    pub audit_allow: Option<Vec<String>>,
}

impl Origin {
    /// `audit_allow` parsed (an address is a one-address range); `None` when not set (the
    /// feed then allows loopback only). Entries that do not parse are left out: validation
    /// reports them.
    pub fn audit_allow(&self) -> Option<Vec<ipnet::IpNet>> {
        self.audit_allow.as_ref().map(|list| list.iter().filter_map(|a| parse_net(a)).collect())
    }
}

/// An IP address or a CIDR range.
fn parse_net(text: &str) -> Option<ipnet::IpNet> {
    text.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| text.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
}

/// Connection settings of one Vault (either side).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VaultSettings {
    /// `http(s)://host:port`.
    pub address: String,
    /// Inline token (dev only; prefer `token_file` or `token_env`).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub token: Option<Inline>,
    /// File holding the token.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Environment variable holding the token.
    #[serde(default)]
    pub token_env: Option<String>,
    /// AppRole login.
    #[serde(default)]
    pub approle: Option<AppRole>,
    /// JWT (or Kubernetes) login.
    #[serde(default)]
    pub jwt: Option<Jwt>,
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
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppRole {
    /// Role ID.
    pub role_id: String,
    /// Inline secret ID (dev only).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub secret_id: Option<Inline>,
    /// File holding the secret ID.
    #[serde(default)]
    pub secret_id_file: Option<PathBuf>,
    /// Environment variable holding the secret ID.
    #[serde(default)]
    pub secret_id_env: Option<String>,
    /// Auth mount.
    #[serde(default = "default_approle_mount")]
    pub mount: String,
}

/// `jwt = { role, jwt_file | jwt_env, mount }`: JWT/OIDC auth, and Kubernetes auth with
/// `mount = "kubernetes"` and the service-account token file.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Jwt {
    /// The auth method's role.
    pub role: String,
    /// File holding the JWT; re-read at each login (projected tokens rotate).
    #[serde(default)]
    pub jwt_file: Option<PathBuf>,
    /// Environment variable holding the JWT.
    #[serde(default)]
    pub jwt_env: Option<String>,
    /// Auth mount (default `jwt`).
    #[serde(default = "default_jwt_mount")]
    pub mount: String,
}

/// Where a side's sync info lives: `{ backend = "file", path }` or `{ backend = "consul", ... }`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(tag = "backend", rename_all = "lowercase", deny_unknown_fields)]
pub enum StateSettings {
    /// Embedded file store (one machine).
    File {
        /// Directory (shared by the roles of one machine; each side locks its own file).
        path: PathBuf,
    },
    /// Consul KV (several machines, hot standby).
    Consul {
        /// Consul HTTP address, `http(s)://host:port`.
        address: String,
        /// Key prefix.
        #[serde(default = "default_prefix")]
        prefix: String,
        /// Inline ACL token (dev only).
        #[serde(default)]
        #[schemars(with = "Option<String>")]
        token: Option<Inline>,
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
        /// Bucket count, 1 to 65536 (chosen automatically when absent; origin only).
        #[serde(default)]
        #[schemars(range(min = 1, max = 65536))]
        buckets: Option<u32>,
    },
}

/// `[[destination]]`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    /// Unique name: 1 to 100 letters, digits, `-`, `_` or `.`.
    pub name: String,
    /// Labels handed to plugins (e.g. `region`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Destination Vault connection and auth.
    pub vault: VaultSettings,
    /// Origin mount -> destination mount, like `{ "secret/" = "secret/" }`.
    pub mounts: BTreeMap<String, String>,
    /// Where this destination's sync info lives.
    pub state: StateSettings,
    /// Backup ticker (a destination also follows the origin's published info as it changes).
    #[serde(default = "default_interval", deserialize_with = "duration")]
    #[schemars(schema_with = "schema::duration", extend("default" = "1m"))]
    pub interval: Duration,
    /// Per-cycle time limit.
    #[serde(default = "default_timeout", deserialize_with = "duration")]
    #[schemars(schema_with = "schema::duration", extend("default" = "5m"))]
    pub timeout: Duration,
    /// Requests in flight: `"auto"` (adaptive, the default) or a fixed number (1 to 1024).
    #[serde(default)]
    #[schemars(schema_with = "schema::workers")]
    pub workers: Workers,
    /// `all` (an exact replica of every KV v2 version) or `latest` (the current version only).
    #[serde(default)]
    #[schemars(with = "schema::Versions")]
    pub versions: VersionsMode,
    /// What a delete at the origin does here: `mirror`, `soft` or `ignore`.
    #[serde(default)]
    #[schemars(with = "schema::Deletes")]
    pub deletes: DeletePolicy,
    /// Mass-delete guard: a cycle deleting more than this share of the destination's secrets
    /// (and more than 10) stops unless `--allow-mass-delete` is given.
    #[serde(default = "default_ratio")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_delete_ratio: f64,
    /// Transformer stack, in order: the first that returns a path wins.
    #[serde(default)]
    pub transforms: Vec<PluginRef>,
    /// Filters; all must include a path.
    #[serde(default)]
    pub filters: Vec<PluginRef>,
}

/// `{ plugin = "name", config = { ... } }`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PluginRef {
    /// Plugin name (default pack: `identity`, `regex`, `prefix`, `glob`; or a component of the
    /// plugins directory).
    pub plugin: String,
    /// Plugin configuration, handed to the plugin's `configure` as JSON; the plugin checks it.
    #[serde(default)]
    #[schemars(with = "Option<serde_json::Map<String, serde_json::Value>>")]
    pub config: Option<toml::Table>,
}

/// `[plugins]`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PluginSettings {
    /// Directory of extra components (`--plugins DIR` overrides it).
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Per-call time limit.
    #[serde(default = "default_call_timeout", deserialize_with = "duration")]
    #[schemars(schema_with = "schema::duration", extend("default" = "50ms"))]
    pub call_timeout: Duration,
    /// Memory limit per instance.
    #[serde(default = "default_memory_limit", deserialize_with = "size")]
    #[schemars(schema_with = "schema::size", extend("default" = "32MiB"))]
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
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Alert {
    /// URL that receives a JSON POST on fatal errors.
    pub webhook: String,
}

/// `[telemetry]`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Telemetry {
    /// `/metrics` and `/healthz` listen address, like `127.0.0.1:9464`.
    #[serde(default)]
    pub listen: Option<String>,
    /// `json` or `human` (default: human on a terminal, JSON otherwise; `--log-format`
    /// overrides).
    #[serde(default)]
    pub log_format: Option<LogFormat>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
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
/// `workers`: how many requests a side keeps in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Workers {
    /// Adaptive (`"auto"`, the default): from 1 up to [`vsync_core::AUTO_WORKERS_MAX`] per
    /// Vault side, following latency and back-pressure.
    #[default]
    Auto,
    /// A fixed number (an integer in the file).
    Fixed(usize),
}

impl Workers {
    /// How many tasks a role runs at once: the fixed number, or the adaptive cap (each Vault
    /// side's limiter then decides how many requests go out).
    pub fn tasks(self) -> usize {
        match self {
            Workers::Auto => vsync_core::AUTO_WORKERS_MAX,
            Workers::Fixed(n) => n,
        }
    }

    /// Whether the Vault side adapts its requests in flight.
    pub fn adaptive(self) -> bool {
        self == Workers::Auto
    }
}

impl<'de> Deserialize<'de> for Workers {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = Workers;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"auto\" or a number of requests in flight")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Workers, E> {
                match v {
                    "auto" => Ok(Workers::Auto),
                    other => Err(E::custom(format!("`{other}` is not \"auto\" or a number"))),
                }
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Workers, E> {
                // Out-of-range values are reported by the validation, with the key's range.
                Ok(Workers::Fixed(usize::try_from(v).unwrap_or(0)))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Workers, E> {
                Ok(Workers::Fixed(usize::try_from(v).unwrap_or(usize::MAX)))
            }
        }
        d.deserialize_any(Visit)
    }
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
fn default_jwt_mount() -> String {
    "jwt".into()
}
fn default_call_timeout() -> Duration {
    Duration::from_millis(50)
}
fn default_memory_limit() -> u64 {
    32 * 1024 * 1024
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text)
        .map_err(|e| serde::de::Error::custom(format!("invalid duration `{text}`: {e}")))
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
    parse_size(&text).ok_or_else(|| serde::de::Error::custom(format!("invalid size `{text}`")))
}

/// How to write a value of the key whose schema is `node`.
fn value_hint(root: &serde_json::Value, node: &serde_json::Value) -> Option<String> {
    match node.get("pattern").and_then(serde_json::Value::as_str) {
        Some(DURATION_PATTERN) => {
            Some("use a number with a unit, like \"30s\", \"1m\" or \"50ms\"".into())
        }
        Some(SIZE_PATTERN) => {
            Some("use a number with a unit: B, KiB, MiB, GiB, KB, MB or GB, like \"32MiB\"".into())
        }
        _ => {
            diag::description(root, node).map(|d| format!("expected: {}", d.trim_end_matches('.')))
        }
    }
}

/// serde names Rust types (`usize`, `f64`); the file has TOML types.
fn plain_types(message: &str) -> String {
    let mut m = message.to_owned();
    for (rust, toml) in [
        ("expected usize", "expected an integer"),
        ("expected u32", "expected an integer"),
        ("expected u64", "expected an integer"),
        ("expected f64", "expected a number"),
    ] {
        m = m.replace(rust, toml);
    }
    m
}

impl Config {
    /// Reads, parses and validates a config file, then resolves the relative paths in it
    /// against the file's directory (see [`Config::resolve_paths`]).
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_owned(),
            source,
        })?;
        let mut config = Self::parse(&text, file)?;
        // The directory the file is in, made absolute against the working directory (that is
        // where `--config` itself is relative to).
        let base = std::path::absolute(file)
            .ok()
            .and_then(|f| f.parent().map(Path::to_path_buf))
            .unwrap_or_default();
        config.resolve_paths(&base);
        Ok(config)
    }

    /// Parses and validates config text; `file` is used in error messages. Paths stay as
    /// written.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let mut doc = toml::de::DeTable::parse(text).map_err(|e| {
            let (line, column) = diag::line_col(text, e.span().map_or(0, |s| s.start));
            ConfigError::Parse {
                file: file.to_owned(),
                line,
                column,
                message: e.message().trim().to_owned(),
            }
        })?;
        let whole = doc.span();
        // Unknown keys are reported and taken out, so serde (which denies them) goes on to the
        // values and the semantic checks can run.
        let mut found = diag::unknown_keys(schema::cached(), doc.get_mut());
        let config = match Config::deserialize(toml::de::Deserializer::from(doc.clone())) {
            Ok(config) => {
                for Problem { key, message, hint } in config.validate() {
                    let key = KeyPath::parse(&key);
                    let span = diag::locate(doc.get_ref(), whole.clone(), &key);
                    found.push(diag::Found {
                        span,
                        key,
                        message,
                        hint,
                    });
                }
                Some(config)
            }
            Err(e) => {
                let span = e.span().unwrap_or(whole.clone());
                let key = diag::path_at(doc.get_ref(), span.start);
                let message = plain_types(e.message().trim());
                // A missing key is described by the schema; so is the key of a wrong value.
                let missing = message
                    .strip_prefix("missing field `")
                    .and_then(|m| m.strip_suffix('`'))
                    .map(|field| key.key(field));
                let root = schema::cached();
                let hint = match &missing {
                    Some(field) => diag::schema_at(root, doc.get_ref(), field)
                        .and_then(|node| diag::description(root, node))
                        .map(|d| format!("add `{field}`: {d}")),
                    None => diag::schema_at(root, doc.get_ref(), &key)
                        .and_then(|node| value_hint(root, node)),
                };
                found.push(diag::Found {
                    span,
                    key,
                    message,
                    hint,
                });
                None
            }
        };
        found.sort_by_key(|f| f.span.start);
        let mut errors: Vec<ConfigError> = found
            .into_iter()
            .map(|f| {
                let (line, column) = diag::line_col(text, f.span.start);
                ConfigError::Invalid {
                    file: file.to_owned(),
                    line,
                    column,
                    key: f.key.to_string(),
                    message: f.message,
                    hint: f.hint,
                }
            })
            .collect();
        match (errors.len(), config) {
            (0, Some(config)) => Ok(config),
            (1, _) => Err(errors.remove(0)),
            _ => Err(ConfigError::Many(errors)),
        }
    }

    /// Makes every relative path of the file absolute against `base` (the config file's
    /// directory), so that every consumer sees the path the file meant. Paths given on the
    /// command line (`--config`, `--plugins`) are not in here: they stay relative to the
    /// working directory.
    pub fn resolve_paths(&mut self, base: &Path) {
        self.origin.vault.resolve_paths(base);
        self.origin.state.resolve_paths(base);
        resolve_opt(base, &mut self.origin.digest_key_file);
        for d in &mut self.destinations {
            d.vault.resolve_paths(base);
            d.state.resolve_paths(base);
        }
        resolve_opt(base, &mut self.plugins.dir);
    }

    /// Checks everything the schema cannot, and collects every problem (the converter's).
    fn validate(&self) -> Vec<Problem> {
        self.runtime().err().map(|p| p.0).unwrap_or_default()
    }

    /// The destination called `name`.
    pub fn destination(&self, name: &str) -> Option<&Destination> {
        self.destinations.iter().find(|d| d.name == name)
    }
}

impl VaultSettings {
    /// Makes the file paths absolute against `base` (see [`Config::resolve_paths`]).
    fn resolve_paths(&mut self, base: &Path) {
        for p in [
            &mut self.token_file,
            &mut self.ca_cert,
            &mut self.client_cert,
            &mut self.client_key,
        ] {
            resolve_opt(base, p);
        }
        if let Some(a) = &mut self.approle {
            resolve_opt(base, &mut a.secret_id_file);
        }
        if let Some(j) = &mut self.jwt {
            resolve_opt(base, &mut j.jwt_file);
        }
    }
}

impl StateSettings {
    /// Makes the file paths absolute against `base` (see [`Config::resolve_paths`]).
    fn resolve_paths(&mut self, base: &Path) {
        match self {
            StateSettings::File { path } => resolve(base, path),
            StateSettings::Consul {
                token_file,
                ca_cert,
                client_cert,
                client_key,
                ..
            } => {
                for p in [token_file, ca_cert, client_cert, client_key] {
                    resolve_opt(base, p);
                }
            }
        }
    }
}

fn resolve(base: &Path, path: &mut PathBuf) {
    if path.is_relative() {
        *path = base.join(&*path);
    }
}

fn resolve_opt(base: &Path, path: &mut Option<PathBuf>) {
    if let Some(p) = path {
        resolve(base, p);
    }
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
        assert_eq!(d.workers, Workers::Auto, "adaptive unless a number is given");
        assert_eq!(c.plugins.memory_limit, 32 << 20);
        assert_eq!(d.transforms[0].plugin, "regex");
    }

    #[test]
    fn workers_is_auto_or_a_number_in_range() {
        let with = |w: &str| Config::parse(&GOOD.replace("interval = \"30s\"", &format!("interval = \"30s\"\nworkers = {w}")), Path::new("vsync.toml"));
        let fixed = with("8").unwrap();
        assert_eq!(fixed.destination("eu").unwrap().workers, Workers::Fixed(8));
        assert_eq!(fixed.runtime().unwrap().destination("eu").unwrap().spec.workers, 8);
        let auto = with("\"auto\"").unwrap();
        assert_eq!(auto.runtime().unwrap().destination("eu").unwrap().spec.workers, vsync_core::AUTO_WORKERS_MAX);
        for bad in ["\"fast\"", "0", "100000"] {
            let e = with(bad).unwrap_err().to_string();
            assert!(e.contains("workers"), "{bad}: {e}");
        }
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
        assert!(Config::parse(&listen, Path::new("vsync.toml")).is_ok());
        let listen = format!("{GOOD}\n[telemetry]\nlisten = \"localhost\"\n");
        let err = Config::parse(&listen, Path::new("vsync.toml")).unwrap_err().to_string();
        assert!(err.contains("telemetry.listen") && err.contains("with a port"), "{err}");
    }

    #[test]
    fn semantic_problems_carry_the_line_of_their_key() {
        let bad = GOOD.replace("\"kv1/\" = \"kv1/\"", "\"kv9/\" = \"kv1/\"");
        let err = Config::parse(&bad, Path::new("vsync.toml")).unwrap_err().to_string();
        assert!(err.starts_with("vsync.toml:11:"), "{err}");
        assert!(err.contains("destination[0].mounts.\"kv9/\": origin mount `kv9/` is not in origin.mounts"), "{err}");
        let bad = GOOD.replace("interval = \"30s\"", "interval = \"0s\"");
        let err = Config::parse(&bad, Path::new("vsync.toml")).unwrap_err().to_string();
        assert_eq!(err, "vsync.toml:15:1: destination[0].interval: must be longer than 0 (like \"1m\")");
    }

    #[test]
    fn unknown_keys_type_errors_and_semantic_problems_come_together() {
        // Unknown keys with semantic problems: all of them.
        let bad = GOOD
            .replace("versions = \"latest\"", "versions = \"latest\"\nworkerz = 3")
            .replace("name = \"eu\"", "name = \"eu west\"")
            .replace("call_timeout", "call_timout");
        let Err(ConfigError::Many(all)) = Config::parse(&bad, Path::new("vsync.toml")) else {
            panic!("several problems expected");
        };
        let text: Vec<String> = all.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 3, "{text:#?}");
        assert!(text[0].starts_with("vsync.toml:8:1: destination[0].name: `eu west` is not a usable name"), "{text:#?}");
        assert_eq!(text[1], "vsync.toml:14:1: destination[0].workerz: unknown key (did you mean `workers`?)");
        assert_eq!(text[2], "vsync.toml:20:1: plugins.call_timout: unknown key (did you mean `call_timeout`?)");
        // Unknown keys with a type error: the type error stands for the values.
        let bad = GOOD.replace("versions = \"latest\"", "versions = 3\nworkerz = 3");
        let err = Config::parse(&bad, Path::new("vsync.toml")).unwrap_err().to_string();
        assert!(err.starts_with("2 problems:\nvsync.toml:13:12: destination[0].versions: wanted string or table"), "{err}");
        assert!(err.contains("vsync.toml:14:1: destination[0].workerz: unknown key"), "{err}");
    }

    #[test]
    fn relative_paths_resolve_against_the_config_directory() {
        // Relative to the working directory (the package), as `--config` would be.
        let c = Config::load(Path::new("tests/golden/valid/full.toml")).unwrap();
        let dir = std::path::absolute("tests/golden/valid").unwrap();
        let StateSettings::Consul { token_file, ca_cert, client_cert, client_key, .. } = &c.origin.state else {
            panic!("consul state expected");
        };
        assert_eq!(token_file.as_deref(), Some(dir.join("consul.token").as_path()));
        assert_eq!(ca_cert.as_deref(), Some(dir.join("tls/consul-ca.pem").as_path()));
        assert_eq!(client_cert.as_deref(), Some(dir.join("tls/consul.pem").as_path()));
        assert_eq!(client_key.as_deref(), Some(dir.join("tls/consul.key").as_path()));
        let v = &c.origin.vault;
        assert_eq!(v.ca_cert.as_deref(), Some(dir.join("tls/ca.pem").as_path()));
        assert_eq!(v.client_cert.as_deref(), Some(dir.join("tls/client.pem").as_path()));
        assert_eq!(v.client_key.as_deref(), Some(dir.join("tls/client.key").as_path()));
        let approle = v.approle.as_ref().unwrap();
        assert_eq!(approle.secret_id_file.as_deref(), Some(dir.join("secrets/origin-secret-id").as_path()));
        assert_eq!(c.origin.digest_key_file.as_deref(), Some(dir.join("digest.key").as_path()));
        assert_eq!(c.destinations[0].vault.token_file.as_deref(), Some(dir.join("eu.token").as_path()));
        assert_eq!(c.plugins.dir.as_deref(), Some(dir.join("plugins").as_path()));
        // An absolute path stays as written.
        let StateSettings::File { path } = &c.destinations[1].state else {
            panic!("file state expected");
        };
        assert_eq!(path, Path::new("/var/lib/vsync"));
        // `parse` leaves paths as written; `./x` joins as `<dir>/./x`, the same place.
        let c = Config::parse(GOOD, Path::new("vsync.toml")).unwrap();
        let StateSettings::File { path } = &c.origin.state else { panic!() };
        assert_eq!(path, Path::new("./vsync-state"));
        let mut c = c;
        c.resolve_paths(Path::new("/etc/vsync"));
        let StateSettings::File { path } = &c.origin.state else { panic!() };
        assert_eq!(path, Path::new("/etc/vsync/./vsync-state"));
    }

    #[test]
    fn schema_enums_are_the_words_the_core_accepts() {
        let schema = json_schema();
        let words = |def: &str| -> Vec<serde_json::Value> {
            schema["$defs"][def]["oneOf"].as_array().unwrap().iter().map(|b| b["const"].clone()).collect()
        };
        let versions = words("Versions");
        assert_eq!(versions.len(), 2);
        for w in versions {
            serde_json::from_value::<VersionsMode>(w).unwrap();
        }
        let deletes = words("Deletes");
        assert_eq!(deletes.len(), 3);
        for w in deletes {
            serde_json::from_value::<DeletePolicy>(w).unwrap();
        }
    }

    #[test]
    fn jwt_is_one_token_source_with_one_jwt_source() {
        let jwt = r#"jwt = { role = "vsync", jwt_file = "/var/run/secrets/kubernetes.io/serviceaccount/token", mount = "kubernetes" }"#;
        let ok = GOOD.replace("token_env = \"EU_TOKEN\"", jwt);
        let c = Config::parse(&ok, Path::new("vsync.toml")).unwrap();
        let j = c.destination("eu").unwrap().vault.jwt.clone().unwrap();
        assert_eq!((j.role.as_str(), j.mount.as_str()), ("vsync", "kubernetes"));
        assert!(j.jwt_file.is_some() && j.jwt_env.is_none());
        let default_mount = GOOD.replace("token_env = \"EU_TOKEN\"", r#"jwt = { role = "r", jwt_env = "MY_JWT" }"#);
        let c = Config::parse(&default_mount, Path::new("vsync.toml")).unwrap();
        assert_eq!(c.destination("eu").unwrap().vault.jwt.as_ref().unwrap().mount, "jwt");
        let cases = [
            (GOOD.replace("token_env = \"EU_TOKEN\"", &format!("token_env = \"E\", {jwt}")), "exactly one of `token`"),
            (GOOD.replace("token_env = \"EU_TOKEN\"", r#"jwt = { role = "r" }"#), "destination[0].vault.jwt"),
            (GOOD.replace("token_env = \"EU_TOKEN\"", r#"jwt = { role = "r", jwt_env = "A", jwt_file = "f" }"#), "exactly one of `jwt_file` or `jwt_env`"),
            (GOOD.replace("token_env = \"EU_TOKEN\"", r#"jwt = { role = "r", jwt_env = "A", jwt = "inline" }"#), "destination[0].vault.jwt.jwt: unknown key"),
        ];
        for (text, needle) in cases {
            let err = Config::parse(&text, Path::new("vsync.toml")).unwrap_err().to_string();
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }

    #[test]
    fn two_consul_token_sources_are_an_error_naming_both_keys() {
        let consul = |extra: &str| {
            GOOD.replacen(
                "state = { backend = \"file\", path = \"./vsync-state\" }",
                &format!("state = {{ backend = \"consul\", address = \"http://127.0.0.1:8500\"{extra} }}"),
                1,
            )
        };
        assert!(Config::parse(&consul(", token_file = \"/t\""), Path::new("vsync.toml")).is_ok());
        let err = Config::parse(&consul(", token = \"s3cr3t\", token_env = \"CONSUL_HTTP_TOKEN\""), Path::new("vsync.toml"))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "vsync.toml:5:1: origin.state: `token` and `token_env` are both set; set only one");
        let err = Config::parse(&consul(", client_cert = \"c.pem\""), Path::new("vsync.toml")).unwrap_err().to_string();
        assert!(err.contains("origin.state: `client_cert` and `client_key` go together"), "{err}");
    }

    #[test]
    fn two_vault_token_sources_name_both_and_values_never_show() {
        let bad = GOOD.replace("token = \"root\"", "token = \"root\", token_file = \"/t\"");
        let err = Config::parse(&bad, Path::new("vsync.toml")).unwrap_err().to_string();
        assert!(err.contains("origin.vault: set exactly one of `token`, `token_file`, `token_env`, `approle` or `jwt` (`token` and `token_file` are both set)"), "{err}");
        let c = Config::parse(GOOD, Path::new("vsync.toml")).unwrap();
        let text = format!("{c:?} {:?}", c.runtime().unwrap());
        assert!(!text.contains("\"root\""), "an inline token in a Debug print: {text}");
    }

    #[test]
    fn the_converter_reports_every_problem_at_once_each_naming_its_key() {
        let mut c = Config::parse(GOOD, Path::new("vsync.toml")).unwrap();
        c.origin.vault.token_env = Some("T".into());
        c.origin.mounts.push("a/../b".into());
        c.destinations[0].name = "eu west".into();
        c.destinations[0].vault.address = "vault:8300".into();
        c.destinations[0].state = StateSettings::Consul {
            address: "http://127.0.0.1:8500".into(),
            prefix: "vsync/".into(),
            token: None,
            token_file: Some("/t".into()),
            token_env: Some("C".into()),
            datacenter: None,
            ca_cert: None,
            client_cert: None,
            client_key: None,
            buckets: None,
        };
        c.destinations[0].max_delete_ratio = 2.0;
        c.telemetry.listen = Some("nowhere".into());
        let keys: Vec<String> = c.runtime().unwrap_err().0.into_iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            [
                "origin.mounts[2]",
                "origin.vault",
                "destination[0].name",
                "destination[0].vault.address",
                "destination[0].state",
                "destination[0].max_delete_ratio",
                "telemetry.listen",
            ]
        );
    }

    #[test]
    fn the_runtime_carries_normalised_mounts_credentials_and_stacks() {
        let rt = Config::parse(GOOD, Path::new("vsync.toml")).unwrap().runtime().unwrap();
        assert_eq!(rt.origin.spec.mounts, ["secret/", "kv1/"]);
        let VaultAuth::Token(t) = &rt.origin.vault.auth else { panic!("a token") };
        assert_eq!(t.key(), "origin.vault.token");
        let eu = rt.destination("eu").unwrap();
        let VaultAuth::Token(t) = &eu.vault.auth else { panic!("a token") };
        assert_eq!((t.key(), t.source()), ("destination[0].vault.token_env", &SecretSource::Env("EU_TOKEN".into())));
        let stack = eu.stack.as_ref().unwrap();
        assert_eq!(stack.transforms, [("regex".to_owned(), serde_json::json!({ "from": "^a$", "to": "b" }))]);
        assert!(stack.filters.is_empty());
        assert_eq!(eu.spec.config_hash, config_hash(&eu.spec.mounts, &stack.transforms, &[], VersionsMode::Latest));
        // `secret` and `secret/` are one mount: the same hash.
        let spelled = GOOD.replace("mounts = { \"secret/\" = \"secret/\"", "mounts = { \"secret\" = \"secret\"");
        let other = Config::parse(&spelled, Path::new("vsync.toml")).unwrap().runtime().unwrap();
        assert_eq!(other.destinations[0].spec.config_hash, eu.spec.config_hash);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("32MiB"), Some(32 << 20));
        assert_eq!(parse_size("1000"), Some(1000));
        assert_eq!(parse_size("2GB"), Some(2_000_000_000));
        assert_eq!(parse_size("lots"), None);
    }
}

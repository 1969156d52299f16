//! The one converter from [`Config`] to what the runtime takes: the engine's specs
//! (`vsync_core::spec`), each side's Vault and state-store settings with their credentials as
//! [`SecretRef`]s, each destination's plugin stack as JSON, and the process-wide settings.
//!
//! [`Config::runtime`] checks everything the schema cannot while it converts, and reports
//! every problem at once, each naming its key ([`Problems`]). Loading a file runs it too (its
//! problems then carry the line of their key), so on a loaded config it cannot fail. Nothing
//! is read here: credentials are read where they are used ([`SecretRef::resolve`]), so
//! `vsync validate` runs offline.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;
use vsync_core::{DestinationSpec, OriginSpec, normalize_mount};

use crate::hash::{PluginConfig, config_hash};
use crate::secret::{SecretRef, SecretSource, both_set};
use crate::{Config, Destination, KeyPath, Origin, PluginRef, StateSettings, VaultSettings, Workers};

/// Requests in flight above this are refused (a typo, not a setting).
pub const MAX_WORKERS: usize = 1024;

/// Largest bucket count accepted (the root keeps the bucket list in index parts, so any count
/// stores; more buckets than this only cost reads).
pub const MAX_BUCKETS: u32 = 1 << 16;

/// Everything the runtime takes from the config.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// The origin side.
    pub origin: OriginRuntime,
    /// Every destination, in the order of the file.
    pub destinations: Vec<DestinationRuntime>,
    /// The plugin host's settings.
    pub plugins: PluginLimits,
    /// Webhook that receives a JSON POST on fatal errors.
    pub alert_webhook: Option<String>,
    /// `/metrics` and `/healthz` listen address.
    pub telemetry_listen: Option<SocketAddr>,
}

impl Runtime {
    /// The destination called `name`.
    pub fn destination(&self, name: &str) -> Option<&DestinationRuntime> {
        self.destinations.iter().find(|d| d.spec.name == name)
    }
}

/// The origin side.
#[derive(Debug, Clone)]
pub struct OriginRuntime {
    /// The origin role's spec.
    pub spec: OriginSpec,
    /// Its Vault.
    pub vault: VaultSpec,
    /// Where its sync info lives.
    pub store: StoreSpec,
    /// The KV v1 digest key (`digest_key_file`), read with [`SecretRef::resolve_key`].
    pub digest_key: Option<SecretRef>,
    /// The socket audit device feed, when `audit_listen` is set.
    pub audit: Option<AuditSpec>,
}

impl OriginRuntime {
    /// Reads the KV v1 digest key, if configured: at least [`DIGEST_KEY_MIN`] bytes.
    pub fn read_digest_key(&self) -> Result<Option<Vec<u8>>, crate::SecretError> {
        self.digest_key.as_ref().map(|k| k.resolve_key(DIGEST_KEY_MIN).map(crate::SecretValue::into_bytes)).transpose()
    }
}

/// The least length of the KV v1 digest key, in bytes.
pub const DIGEST_KEY_MIN: usize = 16;

/// `audit_listen` and `audit_allow`.
#[derive(Debug, Clone)]
pub struct AuditSpec {
    /// Listen address.
    pub listen: SocketAddr,
    /// Allowed source ranges; `None`: loopback only.
    pub allow: Option<Vec<ipnet::IpNet>>,
}

/// One destination.
#[derive(Debug, Clone)]
pub struct DestinationRuntime {
    /// The destination role's spec.
    pub spec: DestinationSpec,
    /// Its Vault.
    pub vault: VaultSpec,
    /// Where its sync info lives.
    pub store: StoreSpec,
    /// Its plugin stack; `None` when it configures neither transforms nor filters.
    pub stack: Option<StackConfig>,
}

impl DestinationRuntime {
    /// The side's name in messages: `destination NAME`.
    pub fn side(&self) -> String {
        format!("destination {}", self.spec.name)
    }
}

/// A destination's transformers and filters, in order, each with its `configure` JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct StackConfig {
    /// Transformers: the first that returns a path wins.
    pub transforms: Vec<PluginConfig>,
    /// Filters: all must include a path.
    pub filters: Vec<PluginConfig>,
}

/// `[plugins]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginLimits {
    /// Directory of extra components (`--plugins DIR` overrides it).
    pub dir: Option<PathBuf>,
    /// Per-call time limit.
    pub call_timeout: Duration,
    /// Memory limit per instance, in bytes.
    pub memory_limit: u64,
}

/// A Vault side's connection and login.
#[derive(Debug, Clone)]
pub struct VaultSpec {
    /// `http(s)://host:port`.
    pub address: String,
    /// How the side gets its token.
    pub auth: VaultAuth,
    /// Namespace.
    pub namespace: Option<String>,
    /// CA bundle (PEM).
    pub ca_cert: Option<PathBuf>,
    /// Client certificate and key (PEM).
    pub client_tls: Option<(PathBuf, PathBuf)>,
    /// Skip TLS verification.
    pub tls_skip_verify: bool,
    /// `workers = "auto"`: the side adapts its requests in flight.
    pub adaptive: bool,
}

/// How a Vault side gets its token.
#[derive(Debug, Clone)]
pub enum VaultAuth {
    /// A token (`token`, `token_file` or `token_env`).
    Token(SecretRef),
    /// AppRole login.
    AppRole {
        /// Auth mount.
        mount: String,
        /// Role ID.
        role_id: String,
        /// The secret ID.
        secret_id: SecretRef,
    },
    /// JWT (or Kubernetes) login; the JWT is read again at each login.
    Jwt {
        /// Auth mount.
        mount: String,
        /// The auth method's role.
        role: String,
        /// The JWT (`jwt_file` or `jwt_env`).
        jwt: SecretRef,
    },
}

/// Where a side's sync info lives.
#[derive(Debug, Clone)]
pub enum StoreSpec {
    /// The embedded file store in this directory.
    File {
        /// Directory.
        path: PathBuf,
    },
    /// Consul KV.
    Consul {
        /// `http(s)://host:port`.
        address: String,
        /// Key prefix.
        prefix: String,
        /// ACL token (`token`, `token_file` or `token_env`), if any.
        token: Option<SecretRef>,
        /// Datacenter.
        datacenter: Option<String>,
        /// CA bundle (PEM).
        ca_cert: Option<PathBuf>,
        /// Client certificate and key (PEM).
        client_tls: Option<(PathBuf, PathBuf)>,
    },
}

/// One configuration problem: the key, what is wrong, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, like `destination[0].vault`.
    pub key: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)?;
        match &self.hint {
            Some(h) => write!(f, " ({h})"),
            None => Ok(()),
        }
    }
}

/// Every problem [`Config::runtime`] found, in the order it met them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Error)]
#[error("{} config problem(s):\n{}", .0.len(), .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct Problems(pub Vec<Problem>);

impl Problems {
    fn bad(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem { key: key.into(), message: message.into(), hint: None });
    }

    fn hint(&mut self, key: impl Into<String>, message: impl Into<String>, hint: impl Into<String>) {
        self.0.push(Problem { key: key.into(), message: message.into(), hint: Some(hint.into()) });
    }

    /// `value` when nothing is wrong; every problem otherwise. A part that could not be built
    /// always left a problem; should one not have, that is reported too.
    fn finish<T>(mut self, value: Option<T>) -> Result<T, Problems> {
        match value {
            Some(v) if self.0.is_empty() => Ok(v),
            Some(_) => Err(self),
            None => {
                if self.0.is_empty() {
                    self.bad("(config)", "could not be converted");
                }
                Err(self)
            }
        }
    }
}

impl Config {
    /// Converts the whole config into the runtime's settings, checking every value the schema
    /// cannot; every problem is reported at once.
    pub fn runtime(&self) -> Result<Runtime, Problems> {
        let mut p = Problems::default();
        let origin_mounts = origin_mounts(&self.origin.mounts, &mut p);
        let origin = origin(&self.origin, origin_mounts.clone(), &mut p);
        let mut names: Vec<&str> = Vec::new();
        let mut destinations = Some(Vec::new());
        for (i, d) in self.destinations.iter().enumerate() {
            let converted = destination(i, d, &origin_mounts, &mut p);
            if names.contains(&d.name.as_str()) {
                p.bad(format!("destination[{i}].name"), format!("destination `{}` is defined twice", d.name));
            }
            names.push(&d.name);
            destinations = destinations.zip(converted).map(|(mut all, d)| {
                all.push(d);
                all
            });
        }
        if self.plugins.call_timeout.is_zero() {
            p.hint("plugins.call_timeout", "must be longer than 0", "like \"50ms\"");
        }
        let telemetry_listen = match &self.telemetry.listen {
            None => Some(None),
            Some(listen) => listen.parse::<SocketAddr>().ok().map(Some).or_else(|| {
                p.bad("telemetry.listen", format!("`{listen}` is not an address with a port, like \"127.0.0.1:9464\" or \"[::1]:9464\""));
                None
            }),
        };
        let plugins = PluginLimits {
            dir: self.plugins.dir.clone(),
            call_timeout: self.plugins.call_timeout,
            memory_limit: self.plugins.memory_limit,
        };
        let alert_webhook = self.alert.as_ref().map(|a| a.webhook.clone());
        let all = origin.zip(destinations).zip(telemetry_listen);
        p.finish(all.map(|((origin, destinations), telemetry_listen)| Runtime {
            origin,
            destinations,
            plugins,
            alert_webhook,
            telemetry_listen,
        }))
    }
}

/// `[origin]`; `mounts` are its mounts, checked and normalised.
fn origin(o: &Origin, mounts: Vec<String>, p: &mut Problems) -> Option<OriginRuntime> {
    check_workers(p, "origin.workers", o.workers);
    check_durations(p, "origin", o.interval, o.timeout);
    let buckets = match &o.state {
        StateSettings::Consul { buckets, .. } => *buckets,
        StateSettings::File { .. } => None,
    };
    if let Some(n) = buckets
        && (n == 0 || n > MAX_BUCKETS)
    {
        p.bad("origin.state.buckets", format!("{n} is out of range (1 to {MAX_BUCKETS})"));
    }
    let audit = audit(o, p);
    let vault = vault("origin.vault", &o.vault, o.workers, p);
    let store = store("origin.state", &o.state, p);
    let digest_key = o
        .digest_key_file
        .as_ref()
        .map(|f| SecretRef::new("origin.digest_key_file", SecretSource::File(f.clone())));
    let spec = OriginSpec {
        mounts,
        interval: o.interval,
        timeout: o.timeout,
        workers: o.workers.tasks(),
        buckets,
    };
    let (vault, store, audit) = (vault?, store?, audit?);
    Some(OriginRuntime { spec, vault, store, digest_key, audit })
}

/// `origin.mounts`, normalised: none twice, none inside another.
fn origin_mounts(mounts: &[String], p: &mut Problems) -> Vec<String> {
    if mounts.is_empty() {
        p.hint("origin.mounts", "no mount listed", "list at least one, like [\"secret/\"]");
    }
    let mut seen: Vec<String> = Vec::new();
    for (i, m) in mounts.iter().enumerate() {
        let at = format!("origin.mounts[{i}]");
        match normalize_mount(m) {
            Err(e) => p.bad(at, format!("mount `{m}`: {e}")),
            Ok(n) if seen.contains(&n) => p.bad(at, format!("mount `{m}` is listed twice")),
            Ok(n) => {
                if let Some(other) = seen.iter().find(|o| n.starts_with(o.as_str()) || o.starts_with(n.as_str())) {
                    p.bad(
                        at,
                        format!("mounts `{other}` and `{n}` overlap: one is inside the other, so its keys would be scanned twice"),
                    );
                }
                seen.push(n);
            }
        }
    }
    seen
}

/// `audit_listen` and `audit_allow`: every entry parses, the list is not empty, and a listener
/// that other hosts can reach says who may feed it. `Some(None)` when there is no listener.
fn audit(o: &Origin, p: &mut Problems) -> Option<Option<AuditSpec>> {
    let mut ok = true;
    if let Some(list) = &o.audit_allow {
        if list.is_empty() {
            ok = false;
            p.bad("origin.audit_allow", "is empty, so no audit device could connect; leave it out for loopback only");
        }
        for (i, a) in list.iter().enumerate() {
            if crate::parse_net(a).is_none() {
                ok = false;
                p.bad(format!("origin.audit_allow[{i}]"), format!("`{a}` is not an IP address or a CIDR range, like `10.0.4.7` or `10.0.4.0/24`"));
            }
        }
    }
    let Some(text) = &o.audit_listen else {
        return ok.then_some(None);
    };
    let listen = match text.parse::<SocketAddr>() {
        Ok(l) => l,
        Err(e) => {
            p.bad("origin.audit_listen", format!("`{text}` is not an IP:port address ({e}), e.g. `127.0.0.1:9400`"));
            return None;
        }
    };
    if !listen.ip().is_loopback() && o.audit_allow.is_none() {
        p.bad(
            "origin.audit_listen",
            format!(
                "`{listen}` is reachable from other hosts, and anyone who can connect can forge audit events and force \
                 full origin scans: list the audit device's source addresses in origin.audit_allow (like \
                 `audit_allow = [\"10.0.4.7\"]`), or listen on a loopback address"
            ),
        );
        return None;
    }
    ok.then(|| Some(AuditSpec { listen, allow: o.audit_allow() }))
}

/// One `[[destination]]`; `origin_mounts` are the origin's, normalised.
fn destination(i: usize, d: &Destination, origin_mounts: &[String], p: &mut Problems) -> Option<DestinationRuntime> {
    let at = |k: &str| format!("destination[{i}].{k}");
    let usable = !d.name.is_empty()
        && d.name.len() <= 100
        && d.name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !usable {
        p.bad(at("name"), format!("`{}` is not a usable name: use 1 to 100 letters, digits, `-`, `_` or `.`", d.name));
    }
    let vault = vault(&at("vault"), &d.vault, d.workers, p);
    let store = store(&at("state"), &d.state, p);
    let mounts = destination_mounts(&at("mounts"), &d.mounts, origin_mounts, p);
    if !(0.0..=1.0).contains(&d.max_delete_ratio) {
        p.bad(at("max_delete_ratio"), "must be between 0 and 1");
    }
    check_workers(p, &at("workers"), d.workers);
    check_durations(p, &format!("destination[{i}]"), d.interval, d.timeout);
    let transforms = plugin_configs(&at("transforms"), &d.transforms, p);
    let filters = plugin_configs(&at("filters"), &d.filters, p);
    let (vault, store, transforms, filters) = (vault?, store?, transforms?, filters?);
    let spec = DestinationSpec {
        name: d.name.clone(),
        labels: d.labels.clone(),
        config_hash: config_hash(&mounts, &transforms, &filters, d.versions),
        mounts,
        interval: d.interval,
        timeout: d.timeout,
        workers: d.workers.tasks(),
        versions: d.versions,
        deletes: d.deletes,
        max_delete_ratio: d.max_delete_ratio,
        uses_plugins: d.uses_plugins(),
    };
    let stack = d.uses_plugins().then_some(StackConfig { transforms, filters });
    Some(DestinationRuntime { spec, vault, store, stack })
}

/// A destination's mount map, normalised: every origin mount listed at the origin, none twice.
fn destination_mounts(
    at: &str,
    mounts: &BTreeMap<String, String>,
    origin_mounts: &[String],
    p: &mut Problems,
) -> BTreeMap<String, String> {
    if mounts.is_empty() {
        p.hint(at, "no mount mapped", "map at least one origin mount to a destination mount, like { \"secret/\" = \"secret/\" }");
    }
    let mut out = BTreeMap::new();
    for (from, to) in mounts {
        let key = KeyPath::parse(at).key(from).to_string();
        let from_n = match normalize_mount(from) {
            Err(e) => {
                p.bad(key.clone(), format!("origin mount `{from}`: {e}"));
                None
            }
            Ok(n) if out.contains_key(&n) => {
                let short = n.trim_end_matches('/');
                p.bad(key.clone(), format!("origin mount `{n}` is mapped twice (`{n}` and `{short}` are one mount)"));
                None
            }
            Ok(n) => {
                if !origin_mounts.contains(&n) {
                    p.bad(key.clone(), format!("origin mount `{from}` is not in origin.mounts ({})", origin_mounts.join(", ")));
                }
                Some(n)
            }
        };
        match normalize_mount(to) {
            Err(e) => p.bad(key, format!("destination mount `{to}`: {e}")),
            Ok(to_n) => {
                if let Some(n) = from_n {
                    out.insert(n, to_n);
                }
            }
        }
    }
    out
}

/// A stack's plugins with their `configure` JSON (`{}` without `config`).
fn plugin_configs(at: &str, refs: &[PluginRef], p: &mut Problems) -> Option<Vec<PluginConfig>> {
    let mut out = Some(Vec::new());
    for (j, r) in refs.iter().enumerate() {
        let json = match &r.config {
            None => Some(serde_json::Value::Object(serde_json::Map::new())),
            Some(t) => serde_json::to_value(t)
                .map_err(|e| p.bad(format!("{at}[{j}].config"), format!("plugin `{}`: cannot be handed to it as JSON: {e}", r.plugin)))
                .ok(),
        };
        out = out.zip(json).map(|(mut all, json)| {
            all.push((r.plugin.clone(), json));
            all
        });
    }
    out
}

/// A Vault side (`at` is `origin.vault` or `destination[i].vault`).
fn vault(at: &str, v: &VaultSettings, workers: Workers, p: &mut Problems) -> Option<VaultSpec> {
    if !(v.address.starts_with("http://") || v.address.starts_with("https://")) {
        p.bad(format!("{at}.address"), format!("`{}` must start with http:// or https://", v.address));
    }
    let client_tls = client_tls(at, v.client_cert.as_ref(), v.client_key.as_ref(), p);
    let auth = vault_auth(at, v, p)?;
    Some(VaultSpec {
        address: v.address.clone(),
        auth,
        namespace: v.namespace.clone(),
        ca_cert: v.ca_cert.clone(),
        client_tls: client_tls?,
        tls_skip_verify: v.tls_skip_verify,
        adaptive: workers.adaptive(),
    })
}

/// `client_cert` and `client_key` go together.
fn client_tls(at: &str, cert: Option<&PathBuf>, key: Option<&PathBuf>, p: &mut Problems) -> Option<Option<(PathBuf, PathBuf)>> {
    match (cert, key) {
        (Some(c), Some(k)) => Some(Some((c.clone(), k.clone()))),
        (None, None) => Some(None),
        _ => {
            p.bad(at, "`client_cert` and `client_key` go together");
            None
        }
    }
}

/// "set exactly one of ..." with, when several are set, which.
fn exactly_one(all: &str, set: &[&str]) -> String {
    match set.len() {
        0 | 1 => format!("set exactly one of {all}"),
        _ => format!("set exactly one of {all} ({})", both_set(set)),
    }
}

/// A Vault side's login: exactly one of a token source, `approle` or `jwt`.
fn vault_auth(at: &str, v: &VaultSettings, p: &mut Problems) -> Option<VaultAuth> {
    let methods = [
        ("token", v.token.is_some()),
        ("token_file", v.token_file.is_some()),
        ("token_env", v.token_env.is_some()),
        ("approle", v.approle.is_some()),
        ("jwt", v.jwt.is_some()),
    ];
    let set: Vec<&str> = methods.iter().filter(|(_, s)| *s).map(|(n, _)| *n).collect();
    if set.len() != 1 {
        p.bad(at, exactly_one("`token`, `token_file`, `token_env`, `approle` or `jwt`", &set));
        return None;
    }
    if let Some(a) = &v.approle {
        let at = format!("{at}.approle");
        let sources = SecretRef::sources(["secret_id", "secret_id_file", "secret_id_env"], a.secret_id.as_ref(), a.secret_id_file.as_deref(), a.secret_id_env.as_deref());
        let set: Vec<&str> = sources.iter().filter(|(_, s)| s.is_some()).map(|(n, _)| *n).collect();
        let Ok(Some(secret_id)) = SecretRef::pick(&at, sources) else {
            p.bad(at, exactly_one("`secret_id`, `secret_id_file` or `secret_id_env`", &set));
            return None;
        };
        return Some(VaultAuth::AppRole { mount: a.mount.clone(), role_id: a.role_id.clone(), secret_id });
    }
    if let Some(j) = &v.jwt {
        let at = format!("{at}.jwt");
        if j.role.trim().is_empty() {
            p.bad(format!("{at}.role"), "must not be empty");
        }
        let sources = [
            ("jwt_file", j.jwt_file.clone().map(SecretSource::File)),
            ("jwt_env", j.jwt_env.clone().map(SecretSource::Env)),
        ];
        let set: Vec<&str> = sources.iter().filter(|(_, s)| s.is_some()).map(|(n, _)| *n).collect();
        let Ok(Some(jwt)) = SecretRef::pick(&at, sources) else {
            p.bad(at, exactly_one("`jwt_file` or `jwt_env`", &set));
            return None;
        };
        return (!j.role.trim().is_empty()).then(|| VaultAuth::Jwt { mount: j.mount.clone(), role: j.role.clone(), jwt });
    }
    let sources = SecretRef::sources(["token", "token_file", "token_env"], v.token.as_ref(), v.token_file.as_deref(), v.token_env.as_deref());
    match SecretRef::pick(at, sources) {
        Ok(Some(token)) => Some(VaultAuth::Token(token)),
        // One method is set, and it is a token source.
        Ok(None) | Err(_) => None,
    }
}

/// A side's state store (`at` is `origin.state` or `destination[i].state`).
fn store(at: &str, s: &StateSettings, p: &mut Problems) -> Option<StoreSpec> {
    match s {
        StateSettings::File { path } => Some(StoreSpec::File { path: path.clone() }),
        StateSettings::Consul { address, prefix, token, token_file, token_env, datacenter, ca_cert, client_cert, client_key, buckets: _ } => {
            let token = SecretRef::pick(at, SecretRef::sources(["token", "token_file", "token_env"], token.as_ref(), token_file.as_deref(), token_env.as_deref()))
                .map_err(|(key, message)| p.bad(key, message))
                .ok();
            let client_tls = client_tls(at, client_cert.as_ref(), client_key.as_ref(), p);
            Some(StoreSpec::Consul {
                address: address.clone(),
                prefix: prefix.clone(),
                token: token?,
                datacenter: datacenter.clone(),
                ca_cert: ca_cert.clone(),
                client_tls: client_tls?,
            })
        }
    }
}

fn check_workers(p: &mut Problems, key: &str, workers: Workers) {
    let Workers::Fixed(n) = workers else { return };
    if n == 0 || n > MAX_WORKERS {
        p.hint(key, format!("{n} is out of range"), format!("use 1 to {MAX_WORKERS}, or \"auto\" for adaptive, the default"));
    }
}

fn check_durations(p: &mut Problems, at: &str, interval: Duration, timeout: Duration) {
    if interval.is_zero() {
        p.hint(format!("{at}.interval"), "must be longer than 0", "like \"1m\"");
    }
    if timeout.is_zero() {
        p.hint(format!("{at}.timeout"), "must be longer than 0", "like \"5m\"");
    }
}

impl Destination {
    /// Whether transforms or filters are configured.
    pub fn uses_plugins(&self) -> bool {
        !self.transforms.is_empty() || !self.filters.is_empty()
    }
}


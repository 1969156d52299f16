//! The starter configuration that `vsync init` prints: a commented `vsync.toml` for the given
//! origin and destination addresses.
//!
//! Tokens are never written inline: every Vault reads its token from a file named after its
//! side (`origin.token`, `destination-<name>.token`), beside the config (relative paths resolve
//! against the config file's directory). The text is checked with [`Config::parse`] before it is
//! handed out, so what `vsync init` prints is a config that `vsync validate` accepts as printed.

use std::path::Path;

use thiserror::Error;

use crate::Config;

/// Why a starter config cannot be made from the given arguments.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum StarterError {
    /// A `--destination` argument is not `NAME=URL`.
    #[error("`{0}` is not NAME=URL (like eu=https://vault.eu.example:8200)")]
    NotNameEqualsUrl(String),
    /// A destination name vsync would refuse.
    #[error("destination name `{0}` is not usable: use 1 to 100 letters, digits, `-`, `_` or `.`")]
    BadName(String),
    /// Two destinations with one name.
    #[error("destination `{0}` is given twice")]
    DuplicateName(String),
    /// An address that is not a plain `http(s)://host[:port]` URL.
    #[error("`{address}` is not a Vault address: {why} (like https://vault.example:8200)")]
    BadAddress {
        /// What was given.
        address: String,
        /// What is wrong with it.
        why: String,
    },
    /// A mount vsync would refuse.
    #[error("mount `{mount}`: {why}")]
    BadMount {
        /// What was given.
        mount: String,
        /// What is wrong with it.
        why: String,
    },
    /// No destination was given.
    #[error("give at least one --destination NAME=URL")]
    NoDestination,
    /// The generated text does not validate (a bug in the template, or a combination of
    /// arguments the config refuses, like overlapping mounts).
    #[error("the starter config does not validate: {0}")]
    Invalid(String),
}

/// Checks a Vault address: `http://` or `https://`, a host, an optional port, nothing else
/// (no credentials, path, query or fragment). Returns it without a trailing `/`.
pub fn check_address(address: &str) -> Result<String, StarterError> {
    let bad = |why: &str| StarterError::BadAddress { address: redact(address), why: why.to_owned() };
    let url = url::Url::parse(address).map_err(|e| bad(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("the scheme must be http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("credentials do not belong in the address"));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(bad("only scheme, host and port are allowed"));
    }
    if address.chars().any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '\\') {
        return Err(bad("it holds spaces, quotes or control characters"));
    }
    Ok(address.trim_end_matches('/').to_owned())
}

/// The address with anything before an `@` in its authority (credentials) replaced by `***`,
/// for error messages.
fn redact(address: &str) -> String {
    let (scheme, rest) = address.split_once("://").unwrap_or(("", address));
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let sep = if scheme.is_empty() && !address.contains("://") { "" } else { "://" };
            format!("{scheme}{sep}***{}", &rest[at..])
        }
        None => address.to_owned(),
    }
}

/// Whether vsync accepts `name` as a destination name.
fn usable_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 100 && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Parses a `--destination NAME=URL` argument.
pub fn parse_destination(arg: &str) -> Result<(String, String), StarterError> {
    let (name, address) = arg.split_once('=').ok_or_else(|| StarterError::NotNameEqualsUrl(redact(arg)))?;
    if !usable_name(name) {
        return Err(StarterError::BadName(name.to_owned()));
    }
    Ok((name.to_owned(), check_address(address)?))
}

/// A TOML basic string holding `s`.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The token file of a side, relative to the config's directory.
pub fn token_file(destination: Option<&str>) -> String {
    match destination {
        None => "origin.token".to_owned(),
        Some(name) => format!("destination-{name}.token"),
    }
}

/// The commented starter config for an origin at `origin`, the `destinations` (name, address)
/// and the KV `mounts` (each replicated to the same mount at every destination; `secret/` when
/// empty). Every address must have passed [`check_address`] (this checks again).
pub fn starter_config(origin: &str, destinations: &[(String, String)], mounts: &[String]) -> Result<String, StarterError> {
    let origin = check_address(origin)?;
    if destinations.is_empty() {
        return Err(StarterError::NoDestination);
    }
    let default_mounts = ["secret/".to_owned()];
    let mounts = if mounts.is_empty() { &default_mounts[..] } else { mounts };
    let mut normalized: Vec<String> = Vec::new();
    for m in mounts {
        let n = vsync_core::normalize_mount(m).map_err(|e| StarterError::BadMount { mount: m.clone(), why: e.to_string() })?;
        if !normalized.contains(&n) {
            normalized.push(n);
        }
    }
    let mut seen: Vec<&str> = Vec::new();
    for (name, address) in destinations {
        if !usable_name(name) {
            return Err(StarterError::BadName(name.clone()));
        }
        if seen.contains(&name.as_str()) {
            return Err(StarterError::DuplicateName(name.clone()));
        }
        seen.push(name);
        check_address(address)?;
    }
    let mount_list = normalized.iter().map(|m| quote(m)).collect::<Vec<_>>().join(", ");
    let mount_map = normalized.iter().map(|m| format!("{} = {}", quote(m), quote(m))).collect::<Vec<_>>().join(", ");
    let mut text = format!(
        r#"# vsync starter configuration, printed by `vsync init`.
# Reference: the README's "Configuration" section. Relative paths (token files, state)
# resolve against this file's directory.
#
# Before the first run:
#   1. Put each Vault token in the file named by its `token_file` below, one line, readable
#      by vsync only (chmod 0600). `vsync policy origin` and
#      `vsync policy destination --name NAME` print the least-privilege policy of each token.
#   2. vsync validate    checks this file offline
#   3. vsync check       connectivity, tokens, permissions, mounts and the state store
#   4. vsync run --once  one sync; then `vsync run`, or one process per role
#      (`vsync origin`, `vsync destination --name NAME`).

[origin]
# The Vault secrets are copied from. Instead of token_file: token_env = "VARIABLE",
# approle = {{ role_id = "...", secret_id_file = "..." }} or
# jwt = {{ role = "...", jwt_file = "...", mount = "jwt" }} (Kubernetes: mount = "kubernetes").
vault = {{ address = {origin}, token_file = {origin_token} }}
# KV mounts to replicate (KV v1 or v2). A KV v1 mount also wants
# digest_key_file = "digest.key" (16 random bytes or more) so unchanged values are not re-read.
mounts = [{mount_list}]
interval = "1m"   # time between scans
timeout = "5m"    # time limit of one scan
# Where the sync info lives (digests and versions, never a value or a token): the embedded
# file store for one machine (under systemd: "/var/lib/vsync"), or Consul KV for processes on
# several machines and hot standbys:
# state = {{ backend = "consul", address = "http://127.0.0.1:8500", prefix = "vsync/", token_file = "consul.token" }}
state = {{ backend = "file", path = "./vsync-state" }}
"#,
        origin = quote(&origin),
        origin_token = quote(&token_file(None)),
    );
    for (name, address) in destinations {
        let address = check_address(address)?;
        text.push_str(&format!(
            r#"
[[destination]]
name = {name}
labels = {{ region = {name} }}   # handed to path plugins
vault = {{ address = {address}, token_file = {token} }}
mounts = {{ {mount_map} }}   # origin mount = destination mount
state = {{ backend = "file", path = "./vsync-state" }}
versions = "all"        # an exact replica of every KV v2 version; "latest": the current one only
deletes = "mirror"      # what an origin delete does here: "mirror", "soft" or "ignore"
max_delete_ratio = 0.5  # a cycle deleting more than this share (and more than 10) stops
# transforms = [ {{ plugin = "regex", config = {{ from = "^prod/(?P<rest>.+)$", to = "{{rest}}" }} }} ]
# filters = [ {{ plugin = "glob", config = {{ include = ["**"], exclude = ["tmp/**"] }} }} ]
"#,
            name = quote(name),
            address = quote(&address),
            token = quote(&token_file(Some(name))),
        ));
    }
    text.push_str(
        r#"
# [alert]
# webhook = "https://chat.example/hooks/vsync"   # JSON POST on fatal errors

# [telemetry]
# listen = "127.0.0.1:9464"   # /metrics and /healthz; alerts and a dashboard: examples/monitoring/
"#,
    );
    Config::parse(&text, Path::new("vsync.toml")).map_err(|e| StarterError::Invalid(e.to_string()))?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_plain_http_urls() {
        assert_eq!(check_address("http://vault-a:8200/"), Ok("http://vault-a:8200".to_owned()));
        assert_eq!(check_address("https://[::1]:8200"), Ok("https://[::1]:8200".to_owned()));
        for bad in ["vault-a:8200", "ftp://vault-a", "http://", "http://u:p@vault-a", "http://vault-a/v1", "http://a?x=1", "http://a b"] {
            assert!(matches!(check_address(bad), Err(StarterError::BadAddress { .. })), "{bad}");
        }
    }

    #[test]
    fn destinations_are_name_equals_url() {
        assert_eq!(parse_destination("eu=http://b:8200"), Ok(("eu".into(), "http://b:8200".into())));
        assert_eq!(parse_destination("eu"), Err(StarterError::NotNameEqualsUrl("eu".into())));
        assert_eq!(parse_destination("e u=http://b:8200"), Err(StarterError::BadName("e u".into())));
        assert!(matches!(parse_destination("eu=b:8200"), Err(StarterError::BadAddress { .. })));
        for secret in ["http://tok:en@b:8200", "http://tok:en@", "eu=http://tok:en@b"] {
            let e = check_address(secret).map(|_| ()).or_else(|_| parse_destination(secret).map(|_| ()));
            let text = e.map_or_else(|e| e.to_string(), |()| String::new());
            assert!(!text.is_empty() && !text.contains("tok:en") && text.contains("***@"), "{secret}: {text}");
        }
    }

    #[test]
    fn the_starter_parses_and_names_token_files_only() {
        let dests = vec![("eu".to_owned(), "http://b:8200".to_owned()), ("us.east".to_owned(), "https://c:8200".to_owned())];
        let text = starter_config("http://a:8200", &dests, &["secret".into(), "kv1/".into()]).unwrap_or_default();
        let config = Config::parse(&text, Path::new("x.toml")).map_err(|e| e.to_string());
        assert!(config.is_ok(), "{config:?}\n{text}");
        assert!(!text.lines().any(|l| l.trim_start().starts_with("vault") && l.contains("token =")), "{text}");
        for file in ["origin.token", "destination-eu.token", "destination-us.east.token"] {
            assert!(text.contains(&format!("token_file = \"{file}\"")), "{file}: {text}");
        }
        assert!(text.contains(r#"mounts = { "secret/" = "secret/", "kv1/" = "kv1/" }"#), "{text}");
        assert_eq!(starter_config("http://a", &[], &[]), Err(StarterError::NoDestination));
        let twice = vec![("eu".to_owned(), "http://b".to_owned()), ("eu".to_owned(), "http://c".to_owned())];
        assert_eq!(starter_config("http://a", &twice, &[]), Err(StarterError::DuplicateName("eu".into())));
        assert!(matches!(starter_config("http://a", &dests[..1], &["a/".into(), "a/b".into()]), Err(StarterError::Invalid(_))));
    }
}

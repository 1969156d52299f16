//! Credentials given as "inline | file | environment variable" (`token` | `token_file` |
//! `token_env`, `secret_id` | `secret_id_file` | `secret_id_env`, `jwt_file` | `jwt_env`,
//! `digest_key_file`): one rule, checked once ([`SecretRef::pick`]) and read once
//! ([`SecretRef::resolve`]).
//!
//! Neither the check nor the read ever puts a value in a message: errors name the config key
//! and the file or the variable. [`SecretRef`], [`Inline`] and [`SecretValue`] print
//! `<redacted>` in place of a value, so a `Debug` of the config or of a runtime spec is safe
//! to log.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

/// An inline credential from the file (dev only). Its `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Inline(String);

impl Inline {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself; keep it out of messages and logs.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Inline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where a credential comes from (an inline value prints as `<redacted>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// Written in the config file.
    Inline(Inline),
    /// Read from this file (its path is resolved against the config file's directory).
    File(PathBuf),
    /// Read from this environment variable.
    Env(String),
}

/// One credential of the config: the key that set it and where its value comes from.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretRef {
    key: String,
    source: SecretSource,
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("SecretRef");
        s.field("key", &self.key);
        match &self.source {
            SecretSource::Inline(_) => s.field("inline", &"<redacted>"),
            SecretSource::File(path) => s.field("file", path),
            SecretSource::Env(var) => s.field("env", var),
        };
        s.finish()
    }
}

/// A credential's value, as read. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Vec<u8>);

impl SecretValue {
    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// The value as text (tokens, secret IDs); `None` when it is not UTF-8.
    pub fn text(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    /// The bytes, taken.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Why a credential could not be read. Names the key and the file or variable, never a value.
#[derive(Debug, Error)]
pub enum SecretError {
    /// The file cannot be read.
    #[error("{key}: cannot read {}: {source}", file.display())]
    File {
        /// The config key.
        key: String,
        /// The file.
        file: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The environment variable is not set (or not UTF-8).
    #[error("{key}: environment variable `{var}` is not set")]
    Unset {
        /// The config key.
        key: String,
        /// The variable.
        var: String,
    },
    /// The value is empty (or only white space).
    #[error("{key}: {what} is empty")]
    Empty {
        /// The config key.
        key: String,
        /// What was read: `file <path>`, `environment variable `X``, `the inline value`.
        what: String,
    },
    /// The value is shorter than the use needs.
    #[error("{key}: {what} holds {len} bytes; use at least {min}")]
    Short {
        /// The config key.
        key: String,
        /// What was read.
        what: String,
        /// Its length.
        len: usize,
        /// The least accepted.
        min: usize,
    },
}

/// "`a` and `b` are both set", "`a`, `b` and `c` are all set".
pub(crate) fn both_set(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    match quoted.split_last() {
        Some((last, [one])) => format!("{one} and {last} are both set"),
        Some((last, rest)) => format!("{} and {last} are all set", rest.join(", ")),
        None => String::new(),
    }
}

/// The choice among a credential's keys failed: the problem's key and message.
pub type Choice = (String, String);

impl SecretRef {
    /// A credential set by `key`.
    pub fn new(key: impl Into<String>, source: SecretSource) -> Self {
        Self { key: key.into(), source }
    }

    /// The one check of "inline | file | env": `at` is the enclosing key (`origin.vault`) and
    /// each present field is `(name, source)`. `Ok(None)` when none is set; an error naming `at`
    /// and every key that was set when more than one is.
    pub fn pick(at: &str, present: impl IntoIterator<Item = (&'static str, Option<SecretSource>)>) -> Result<Option<SecretRef>, Choice> {
        let set: Vec<(&str, SecretSource)> = present.into_iter().filter_map(|(name, s)| s.map(|s| (name, s))).collect();
        match <[_; 1]>::try_from(set) {
            Ok([(name, source)]) => Ok(Some(SecretRef::new(format!("{at}.{name}"), source))),
            Err(set) if set.is_empty() => Ok(None),
            Err(set) => {
                let names: Vec<&str> = set.iter().map(|(n, _)| *n).collect();
                Err((at.to_owned(), format!("{}; set only one", both_set(&names))))
            }
        }
    }

    /// The sources of a field triple, for [`SecretRef::pick`].
    pub fn sources<'a>(
        names: [&'static str; 3],
        inline: Option<&'a Inline>,
        file: Option<&'a Path>,
        env: Option<&'a str>,
    ) -> [(&'static str, Option<SecretSource>); 3] {
        [
            (names[0], inline.cloned().map(SecretSource::Inline)),
            (names[1], file.map(|p| SecretSource::File(p.to_owned()))),
            (names[2], env.map(|v| SecretSource::Env(v.to_owned()))),
        ]
    }

    /// The config key that set it, like `destination[0].vault.token_file`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Where the value comes from.
    pub fn source(&self) -> &SecretSource {
        &self.source
    }

    /// What the value is read from, for messages: never the value.
    fn what(&self) -> String {
        match &self.source {
            SecretSource::Inline(_) => "the inline value".into(),
            SecretSource::File(path) => format!("file {}", path.display()),
            SecretSource::Env(var) => format!("environment variable `{var}`"),
        }
    }

    /// Reads a text credential (token, secret ID, JWT): surrounding white space (a file's
    /// trailing newline) is dropped, and an empty value is an error.
    pub fn resolve(&self) -> Result<SecretValue, SecretError> {
        let raw = self.resolve_raw()?;
        let text = String::from_utf8_lossy(raw.bytes());
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(SecretError::Empty { key: self.key.clone(), what: self.what() });
        }
        Ok(SecretValue(trimmed.as_bytes().to_vec()))
    }

    /// Reads a key as raw bytes (nothing trimmed) that must hold at least `min` bytes.
    pub fn resolve_key(&self, min: usize) -> Result<SecretValue, SecretError> {
        let raw = self.resolve_raw()?;
        if raw.0.len() < min {
            return Err(SecretError::Short { key: self.key.clone(), what: self.what(), len: raw.0.len(), min });
        }
        Ok(raw)
    }

    fn resolve_raw(&self) -> Result<SecretValue, SecretError> {
        match &self.source {
            SecretSource::Inline(v) => Ok(SecretValue(v.expose().as_bytes().to_vec())),
            SecretSource::File(path) => std::fs::read(path).map(SecretValue).map_err(|source| SecretError::File {
                key: self.key.clone(),
                file: path.clone(),
                source,
            }),
            SecretSource::Env(var) => std::env::var(var)
                .map(|v| SecretValue(v.into_bytes()))
                .map_err(|_| SecretError::Unset { key: self.key.clone(), var: var.clone() }),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn token(inline: Option<&str>, file: Option<&str>, env: Option<&str>) -> Result<Option<SecretRef>, Choice> {
        let inline = inline.map(Inline::new);
        SecretRef::pick("origin.vault", SecretRef::sources(["token", "token_file", "token_env"], inline.as_ref(), file.map(Path::new), env))
    }

    #[test]
    fn one_source_is_picked_and_two_name_both_keys() {
        assert_eq!(token(None, None, None).unwrap(), None);
        let r = token(None, Some("/t"), None).unwrap().unwrap();
        assert_eq!(r.key(), "origin.vault.token_file");
        assert_eq!(r.source(), &SecretSource::File("/t".into()));
        let (key, message) = token(Some("x"), None, Some("T")).unwrap_err();
        assert_eq!(key, "origin.vault");
        assert_eq!(message, "`token` and `token_env` are both set; set only one");
        assert!(!message.contains('x'));
    }

    #[test]
    fn resolve_names_the_key_and_the_file_or_variable_never_the_value() {
        let dir = std::env::temp_dir().join(format!("vsync-secret-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        let r = SecretRef::new("destination[0].vault.token_file", SecretSource::File(file.clone()));
        let e = r.resolve().unwrap_err().to_string();
        assert!(e.starts_with("destination[0].vault.token_file: cannot read ") && e.contains(&file.display().to_string()), "{e}");
        std::fs::write(&file, "s3cr3t-value\n").unwrap();
        assert_eq!(r.resolve().unwrap().text(), Some("s3cr3t-value"));
        let e = r.resolve_key(64).unwrap_err().to_string();
        assert!(e.contains("holds 13 bytes; use at least 64") && !e.contains("s3cr3t"), "{e}");
        std::fs::write(&file, " \n").unwrap();
        let e = r.resolve().unwrap_err().to_string();
        assert_eq!(e, format!("destination[0].vault.token_file: file {} is empty", file.display()));
        let r = SecretRef::new("origin.state.token_env", SecretSource::Env("VSYNC_TEST_SURELY_UNSET_SECRET".into()));
        let e = r.resolve().unwrap_err().to_string();
        assert_eq!(e, "origin.state.token_env: environment variable `VSYNC_TEST_SURELY_UNSET_SECRET` is not set");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn debug_never_shows_a_value() {
        let r = SecretRef::new("origin.vault.token", SecretSource::Inline(Inline::new("s3cr3t")));
        let text = format!("{r:?} {:?} {:?}", r.resolve().unwrap(), Inline::new("s3cr3t"));
        assert!(!text.contains("s3cr3t"), "{text}");
        assert!(text.contains("origin.vault.token"), "{text}");
    }
}

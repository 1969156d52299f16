//! The host's error types: a plugin's own error value ([`PluginError`]), failures while loading
//! or configuring ([`HostError`]) and failures of one call ([`CallError`]).

use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

use crate::bindings::transformer::vsync::plugin::types as wit;
use crate::host::{FILTER_EXPORT, PluginKind, TRANSFORMER_EXPORT};
use crate::sandbox::{MAX_ERROR_TEXT, cap_text};

/// A plugin's own error value (the WIT `plugin-error`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", content = "message", rename_all = "kebab-case")]
pub enum PluginError {
    /// `configure` rejected its configuration.
    InvalidConfig(String),
    /// The plugin cannot handle this path.
    InvalidPath(String),
    /// Anything else.
    Failed(String),
}

impl PluginError {
    /// The message, without the case.
    pub fn message(&self) -> &str {
        match self {
            PluginError::InvalidConfig(m) | PluginError::InvalidPath(m) | PluginError::Failed(m) => m,
        }
    }

    /// The WIT case name (`invalid-config`, `invalid-path`, `failed`).
    pub fn case(&self) -> &'static str {
        match self {
            PluginError::InvalidConfig(_) => "invalid-config",
            PluginError::InvalidPath(_) => "invalid-path",
            PluginError::Failed(_) => "failed",
        }
    }
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.case(), self.message())
    }
}

impl From<wit::PluginError> for PluginError {
    /// The guest's error, its text cut to [`MAX_ERROR_TEXT`] bytes: it ends up in log lines and
    /// reports, and a plugin must not be able to blow those up.
    fn from(e: wit::PluginError) -> Self {
        let cap = |m| cap_text(m, MAX_ERROR_TEXT);
        match e {
            wit::PluginError::InvalidConfig(m) => PluginError::InvalidConfig(cap(m)),
            wit::PluginError::InvalidPath(m) => PluginError::InvalidPath(cap(m)),
            wit::PluginError::Failed(m) => PluginError::Failed(cap(m)),
        }
    }
}

/// Failures while loading or configuring plugins. Every message names the file or plugin.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum HostError {
    /// Not a WebAssembly component, or one wasmtime cannot compile.
    #[error("plugin file {file}: not a usable WebAssembly component: {reason}")]
    InvalidComponent {
        /// File.
        file: PathBuf,
        /// Parser or compiler message.
        reason: String,
    },
    /// Built against another plugin API version.
    #[error("plugin file {file}: built for plugin API {found}; this vsync supports {expected}")]
    IncompatibleApi {
        /// File.
        file: PathBuf,
        /// Version found.
        found: String,
        /// Version supported.
        expected: &'static str,
    },
    /// Exports neither plugin API.
    #[error("plugin file {file}: exports neither {TRANSFORMER_EXPORT} nor {FILTER_EXPORT} (it exports: {exports})")]
    WrongWorld {
        /// File.
        file: PathBuf,
        /// What it exports.
        exports: String,
    },
    /// Imports a capability plugins may not have.
    #[error("plugin file {file}: imports `{import}`, which plugins may not use (no files, network, clock or environment)")]
    ForbiddenImport {
        /// File.
        file: PathBuf,
        /// The import.
        import: String,
    },
    /// Declares more memories or tables, or bigger ones, than an instance may have.
    #[error("plugin file {file}: exceeds the sandbox's limits: {reason}")]
    ExceedsLimits {
        /// File.
        file: PathBuf,
        /// Which limit, and by how much.
        reason: String,
    },
    /// `configure` failed (or trapped).
    #[error("plugin `{plugin}`: configure failed: {error}")]
    Configure {
        /// Plugin name.
        plugin: String,
        /// Why.
        error: String,
    },
    /// Two plugins with one name.
    #[error("plugin name `{name}` from {file} is already taken by {existing}")]
    NameClash {
        /// Name.
        name: String,
        /// The new file.
        file: PathBuf,
        /// The plugin already loaded.
        existing: String,
    },
    /// No plugin of that name.
    #[error("no plugin named `{name}` (loaded: {loaded})")]
    UnknownPlugin {
        /// Name asked for.
        name: String,
        /// Names loaded.
        loaded: String,
    },
    /// A filter used as a transformer or the other way round.
    #[error("plugin `{plugin}` is a {found}, but is used as a {wanted}")]
    KindMismatch {
        /// Plugin name.
        plugin: String,
        /// Its kind.
        found: PluginKind,
        /// The kind asked for.
        wanted: PluginKind,
    },
    /// A file could not be read.
    #[error("plugin file {path}: {source}")]
    Io {
        /// File or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The engine itself failed.
    #[error("plugin engine: {0}")]
    Engine(String),
}

/// Failures of one call. The engine goes on; the failing path fails alone.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallError {
    /// The call ran past `call_timeout`.
    #[error("plugin `{plugin}`: call exceeded its time limit ({limit:?})")]
    Timeout {
        /// Plugin name.
        plugin: String,
        /// The limit.
        limit: Duration,
    },
    /// The instance hit `memory_limit`.
    #[error("plugin `{plugin}`: memory limit exceeded ({limit} bytes)")]
    MemoryExceeded {
        /// Plugin name.
        plugin: String,
        /// The limit.
        limit: u64,
    },
    /// A transformer returned a path longer than the host accepts.
    #[error("plugin `{plugin}`: returned a path of {length} bytes, over the limit of {limit}")]
    OutputTooLong {
        /// Plugin name.
        plugin: String,
        /// Its length in bytes.
        length: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// The guest trapped (a panic, an unreachable, a forbidden call).
    #[error("plugin `{plugin}`: trapped: {message}")]
    Trap {
        /// Plugin name.
        plugin: String,
        /// The trap, with the panic message when the SDK reported one.
        message: String,
    },
    /// The guest returned its own error.
    #[error("plugin `{plugin}`: {error}")]
    Guest {
        /// Plugin name.
        plugin: String,
        /// The plugin's error.
        error: PluginError,
    },
    /// A fresh instance could not be made after a trap.
    #[error("plugin `{plugin}`: could not be restarted: {message}")]
    Restart {
        /// Plugin name.
        plugin: String,
        /// Why.
        message: String,
    },
}


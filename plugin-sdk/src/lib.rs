//! # vsync-plugin-sdk
//!
//! Write vsync **transformers** (map an origin path to a destination path) and **filters**
//! (decide which origin paths a destination syncs) as WebAssembly components, without touching
//! the generated WIT bindings.
//!
//! Implement [`Transformer`] or [`Filter`], then call [`export_transformer!`] or
//! [`export_filter!`] once. Build with `cargo build --release --target wasm32-wasip2`; the
//! `.wasm` file is the component vsync loads.
//!
//! ```
//! use vsync_plugin_sdk::{Context, PluginError, Transformer};
//!
//! /// Moves `prod/...` under the destination's region label.
//! pub struct Region;
//!
//! impl Transformer for Region {
//!     fn configure(_config: &str) -> Result<Self, PluginError> {
//!         Ok(Region)
//!     }
//!     fn transform(&self, path: &str, ctx: &Context) -> Result<Option<String>, PluginError> {
//!         let Some(rest) = path.strip_prefix("prod/") else { return Ok(None) };
//!         let region = ctx.label("region").ok_or_else(|| PluginError::Failed("no region label".into()))?;
//!         Ok(Some(format!("{region}/{rest}")))
//!     }
//! }
//! // In the plugin crate (a `cdylib`): vsync_plugin_sdk::export_transformer!(Region);
//!
//! // Plain `cargo test` works on the host target:
//! let ctx = vsync_plugin_sdk::testing::context().label("region", "eu").build();
//! let t = Region::configure("{}").unwrap();
//! assert_eq!(t.transform("prod/app/db", &ctx).unwrap().as_deref(), Some("eu/app/db"));
//! ```
//!
//! Plugins see paths and non-secret context, never secret values, and have no capabilities:
//! no files, network, environment or clock. Logging goes to vsync's log ([`log`]).

use serde::de::DeserializeOwned;

#[doc(hidden)]
pub mod __private;
pub mod log;
pub mod testing;

/// The KV engine version of the origin mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvVersion {
    /// KV v1 (unversioned).
    V1,
    /// KV v2 (versioned).
    V2,
}

/// Non-secret facts about the path being mapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    /// Origin name.
    pub origin: String,
    /// Destination name (e.g. `eu`).
    pub destination: String,
    /// Origin mount (e.g. `secret/`).
    pub origin_mount: String,
    /// Destination mount the path is written under.
    pub destination_mount: String,
    /// KV version of the origin mount.
    pub kv_version: KvVersion,
    /// The destination's labels (e.g. `region = "eu"`).
    pub labels: Vec<(String, String)>,
}

impl Context {
    /// The value of label `name`, if the destination has it.
    ///
    /// ```
    /// let ctx = vsync_plugin_sdk::testing::context().label("region", "eu").build();
    /// assert_eq!(ctx.label("region"), Some("eu"));
    /// assert_eq!(ctx.label("zone"), None);
    /// ```
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Why a plugin call failed. vsync reports it with the plugin's name and the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginError {
    /// `configure` rejected its configuration.
    InvalidConfig(String),
    /// This path cannot be handled (the secret fails this cycle; others go on).
    InvalidPath(String),
    /// Anything else.
    Failed(String),
}

impl PluginError {
    /// The message, without the case.
    ///
    /// ```
    /// use vsync_plugin_sdk::PluginError;
    /// assert_eq!(PluginError::Failed("boom".into()).message(), "boom");
    /// ```
    pub fn message(&self) -> &str {
        match self {
            PluginError::InvalidConfig(m) | PluginError::InvalidPath(m) | PluginError::Failed(m) => m,
        }
    }

    /// The WIT case name: `invalid-config`, `invalid-path` or `failed` (what vsync reports and
    /// what a vector's `error` may name).
    ///
    /// ```
    /// use vsync_plugin_sdk::PluginError;
    /// assert_eq!(PluginError::InvalidPath("x".into()).case(), "invalid-path");
    /// ```
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
        match self {
            PluginError::InvalidConfig(m) => write!(f, "invalid config: {m}"),
            PluginError::InvalidPath(m) => write!(f, "invalid path: {m}"),
            PluginError::Failed(m) => write!(f, "failed: {m}"),
        }
    }
}

impl std::error::Error for PluginError {}

/// Deserializes the plugin's `config` JSON into `T`; errors become
/// [`PluginError::InvalidConfig`] naming the field.
///
/// ```
/// #[derive(Debug, serde::Deserialize)]
/// #[serde(deny_unknown_fields)]
/// struct Cfg { from: String }
/// let c: Cfg = vsync_plugin_sdk::config(r#"{"from": "prod/"}"#).unwrap();
/// assert_eq!(c.from, "prod/");
/// let err = vsync_plugin_sdk::config::<Cfg>(r#"{"form": "x"}"#).unwrap_err();
/// assert!(err.to_string().contains("form"));
/// ```
pub fn config<T: DeserializeOwned>(json: &str) -> Result<T, PluginError> {
    serde_json::from_str(json).map_err(|e| PluginError::InvalidConfig(e.to_string()))
}

/// Checks that a transformer's output is a path vsync can write: not empty, no leading or
/// trailing `/`, no empty, `.` or `..` segments. Errors are [`PluginError::InvalidPath`].
/// (vsync checks this too; calling it lets a plugin say *why* a path cannot be mapped.)
///
/// ```
/// use vsync_plugin_sdk::{check_relative_path, PluginError};
/// assert!(check_relative_path("eu/app/db").is_ok());
/// for bad in ["", "/eu/app", "eu/app/", "eu//app", "eu/../app", "./eu"] {
///     assert!(matches!(check_relative_path(bad), Err(PluginError::InvalidPath(_))), "{bad}");
/// }
/// ```
pub fn check_relative_path(path: &str) -> Result<(), PluginError> {
    if path.is_empty() {
        return Err(PluginError::InvalidPath("the mapped path is empty".into()));
    }
    if let Some(seg) = path.split('/').find(|s| s.is_empty() || *s == "." || *s == "..") {
        let what = if seg.is_empty() { "an empty segment (leading, trailing or double `/`)".to_owned() } else { format!("a `{seg}` segment") };
        return Err(PluginError::InvalidPath(format!("the mapped path `{path}` has {what}")));
    }
    Ok(())
}

/// A path transformer. The first transformer of a destination's stack that returns a path wins.
pub trait Transformer: Sized + 'static {
    /// Builds the plugin from its `config` table as JSON (`{}` when the config has none).
    fn configure(config: &str) -> Result<Self, PluginError>;
    /// Maps a mount-relative origin path; `Ok(None)`: not mine, ask the next transformer.
    fn transform(&self, path: &str, ctx: &Context) -> Result<Option<String>, PluginError>;
}

/// A path filter. A path is synced only if every filter of the destination includes it.
pub trait Filter: Sized + 'static {
    /// Builds the plugin from its `config` table as JSON (`{}` when the config has none).
    fn configure(config: &str) -> Result<Self, PluginError>;
    /// Whether the destination syncs this mount-relative origin path.
    fn include(&self, path: &str, ctx: &Context) -> Result<bool, PluginError>;
}

/// Exports a [`Transformer`] as the component's `transformer-api`. Call it once, at the crate
/// root of a `cdylib` crate.
#[macro_export]
macro_rules! export_transformer {
    ($t:ty) => {
        #[doc(hidden)]
        pub struct __VsyncTransformerExport;
        ::std::thread_local! {
            static __VSYNC_PLUGIN: ::std::cell::RefCell<::std::option::Option<$t>> = const { ::std::cell::RefCell::new(None) };
        }
        impl $crate::__private::transformer::exports::vsync::plugin::transformer_api::Guest for __VsyncTransformerExport {
            fn configure(config_json: ::std::string::String) -> ::std::result::Result<(), $crate::__private::transformer::vsync::plugin::types::PluginError> {
                $crate::__private::install_panic_hook();
                let plugin = <$t as $crate::Transformer>::configure(&config_json).map_err($crate::__private::t_error)?;
                __VSYNC_PLUGIN.with(|p| *p.borrow_mut() = Some(plugin));
                Ok(())
            }
            fn transform(
                path: ::std::string::String,
                ctx: $crate::__private::transformer::vsync::plugin::types::Context,
            ) -> ::std::result::Result<::std::option::Option<::std::string::String>, $crate::__private::transformer::vsync::plugin::types::PluginError> {
                let ctx = $crate::__private::t_context(ctx);
                __VSYNC_PLUGIN.with(|p| match &*p.borrow() {
                    Some(plugin) => $crate::Transformer::transform(plugin, &path, &ctx).map_err($crate::__private::t_error),
                    None => Err($crate::__private::t_error($crate::PluginError::Failed("transform called before configure".into()))),
                })
            }
        }
        // Only a wasm build exports (native builds, for unit tests, have nothing to export to).
        #[cfg(target_arch = "wasm32")]
        $crate::__private::transformer::export!(__VsyncTransformerExport with_types_in $crate::__private::transformer);
    };
}

/// Exports a [`Filter`] as the component's `filter-api`. Call it once, at the crate root of a
/// `cdylib` crate.
#[macro_export]
macro_rules! export_filter {
    ($t:ty) => {
        #[doc(hidden)]
        pub struct __VsyncFilterExport;
        ::std::thread_local! {
            static __VSYNC_PLUGIN: ::std::cell::RefCell<::std::option::Option<$t>> = const { ::std::cell::RefCell::new(None) };
        }
        impl $crate::__private::filter::exports::vsync::plugin::filter_api::Guest for __VsyncFilterExport {
            fn configure(config_json: ::std::string::String) -> ::std::result::Result<(), $crate::__private::transformer::vsync::plugin::types::PluginError> {
                $crate::__private::install_panic_hook();
                let plugin = <$t as $crate::Filter>::configure(&config_json).map_err($crate::__private::f_error)?;
                __VSYNC_PLUGIN.with(|p| *p.borrow_mut() = Some(plugin));
                Ok(())
            }
            fn include(
                path: ::std::string::String,
                ctx: $crate::__private::transformer::vsync::plugin::types::Context,
            ) -> ::std::result::Result<bool, $crate::__private::transformer::vsync::plugin::types::PluginError> {
                let ctx = $crate::__private::f_context(ctx);
                __VSYNC_PLUGIN.with(|p| match &*p.borrow() {
                    Some(plugin) => $crate::Filter::include(plugin, &path, &ctx).map_err($crate::__private::f_error),
                    None => Err($crate::__private::f_error($crate::PluginError::Failed("include called before configure".into()))),
                })
            }
        }
        #[cfg(target_arch = "wasm32")]
        $crate::__private::filter::export!(__VsyncFilterExport with_types_in $crate::__private::filter);
    };
}

#[cfg(test)]
mod tests {
    /// The bindings come from the crate's own copy of the contract (so the packaged crate is
    /// self-contained); it must stay byte-for-byte the repository's frozen `wit/plugin@0.1.0`.
    #[test]
    fn vendored_wit_matches_the_repository_contract() {
        let vendored = include_str!("../wit/plugin@0.1.0/plugin.wit");
        let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/../wit/plugin@0.1.0/plugin.wit");
        // Outside the repository (a packaged crate) there is nothing to compare with.
        if let Ok(contract) = std::fs::read_to_string(repo) {
            assert_eq!(vendored, contract, "plugin-sdk/wit/plugin@0.1.0 differs from wit/plugin@0.1.0: copy it again");
        }
    }
}

//! Helpers for unit-testing plugin logic natively with plain `cargo test`.
//!
//! ```
//! use vsync_plugin_sdk::testing::context;
//! let ctx = context().destination("eu").label("region", "eu").build();
//! assert_eq!(ctx.destination, "eu");
//! ```

use crate::{Context, KvVersion};

#[cfg(feature = "vectors")]
pub mod vectors;

/// A [`Context`] builder with test defaults (origin `origin`, destination `test`, mounts
/// `secret/`, KV v2, no labels).
#[derive(Debug, Clone)]
pub struct ContextBuilder(Context);

/// Starts a test context.
pub fn context() -> ContextBuilder {
    ContextBuilder(Context {
        origin: "origin".into(),
        destination: "test".into(),
        origin_mount: "secret/".into(),
        destination_mount: "secret/".into(),
        kv_version: KvVersion::V2,
        labels: Vec::new(),
    })
}

impl ContextBuilder {
    /// Sets the destination name.
    pub fn destination(mut self, name: &str) -> Self {
        self.0.destination = name.into();
        self
    }
    /// Sets the origin and destination mounts.
    pub fn mounts(mut self, origin: &str, destination: &str) -> Self {
        self.0.origin_mount = origin.into();
        self.0.destination_mount = destination.into();
        self
    }
    /// Sets the KV version.
    pub fn kv_version(mut self, v: KvVersion) -> Self {
        self.0.kv_version = v;
        self
    }
    /// Adds a label.
    pub fn label(mut self, name: &str, value: &str) -> Self {
        self.0.labels.push((name.into(), value.into()));
        self
    }
    /// The context.
    pub fn build(self) -> Context {
        self.0
    }
}

//! Generated bindings and the glue the export macros expand to. Not part of the API.

#![allow(missing_docs, unsafe_code, clippy::all)]

use crate::{Context, KvVersion, PluginError};

/// Bindings of the `transformer` world.
pub mod transformer {
    wit_bindgen::generate!({
        path: "wit/plugin@0.1.0",
        world: "transformer",
        pub_export_macro: true,
        default_bindings_module: "vsync_plugin_sdk::__private::transformer",
    });
}

/// Bindings of the `filter` world (sharing the transformer world's imported interfaces).
pub mod filter {
    wit_bindgen::generate!({
        path: "wit/plugin@0.1.0",
        world: "filter",
        pub_export_macro: true,
        default_bindings_module: "vsync_plugin_sdk::__private::filter",
        with: {
            "vsync:plugin/host@0.1.0": super::transformer::vsync::plugin::host,
            "vsync:plugin/types@0.1.0": super::transformer::vsync::plugin::types,
        },
    });
}

use transformer::vsync::plugin::types as wt;

pub fn t_error(e: PluginError) -> wt::PluginError {
    match e {
        PluginError::InvalidConfig(m) => wt::PluginError::InvalidConfig(m),
        PluginError::InvalidPath(m) => wt::PluginError::InvalidPath(m),
        PluginError::Failed(m) => wt::PluginError::Failed(m),
    }
}

pub fn f_error(e: PluginError) -> wt::PluginError {
    t_error(e)
}

pub fn t_context(c: wt::Context) -> Context {
    Context {
        origin: c.origin,
        destination: c.destination,
        origin_mount: c.origin_mount,
        destination_mount: c.destination_mount,
        kv_version: match c.kv_version {
            wt::KvVersion::V1 => KvVersion::V1,
            wt::KvVersion::V2 => KvVersion::V2,
        },
        labels: c.labels,
    }
}

pub fn f_context(c: wt::Context) -> Context {
    t_context(c)
}

/// Reports panics through the host log before the instance traps (a trapped instance tells the
/// host nothing else about why).
pub fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            crate::log::error(&format!("plugin panicked: {info}"));
        }));
    });
}

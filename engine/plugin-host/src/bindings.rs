//! Host-side bindings of `wit/plugin@0.1.0`, one module per world; the filter world reuses the
//! transformer world's `host` and `types` interfaces so one `State` implements them once.

#![allow(missing_docs, missing_debug_implementations)]

pub mod transformer {
    wasmtime::component::bindgen!({
        path: "../../wit/plugin@0.1.0",
        world: "transformer",
    });
}

pub mod filter {
    wasmtime::component::bindgen!({
        path: "../../wit/plugin@0.1.0",
        world: "filter",
        with: {
            "vsync:plugin/host": super::transformer::vsync::plugin::host,
            "vsync:plugin/types": super::transformer::vsync::plugin::types,
        },
    });
}

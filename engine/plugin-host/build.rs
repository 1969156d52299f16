//! Builds the `plugins/` workspace (default pack and test fixtures) for wasm32-wasip2 with a
//! nested cargo, in its own target directory, and copies the default pack into OUT_DIR so the
//! library embeds it (one `vsync` binary works with no plugin directory).

use std::path::{Path, PathBuf};
use std::process::Command;

const DEFAULT_PACK: &[&str] = &["identity", "regex", "prefix", "glob"];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest_dir.join("../..");
    let root = root.canonicalize().unwrap_or(root);
    let plugins = root.join("plugins");
    // Every source the guests are built from; not `plugins/` itself, whose `target/` would keep
    // this script always dirty. Sub-directories are listed so a new plugin is watched too.
    for p in ["plugins/Cargo.toml", "plugins/Cargo.lock", "plugin-sdk/Cargo.toml", "plugin-sdk/src", "plugin-sdk/wit", "wit"] {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }
    if let Ok(entries) = std::fs::read_dir(&plugins) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let skip = name == "target" || name.to_string_lossy().starts_with('.');
            if !skip && entry.path().is_dir() {
                println!("cargo:rerun-if-changed={}", entry.path().display());
            }
        }
    }
    check_wasm_target();
    let target_dir = root.join("target").join("plugins-wasm");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "--locked", "--target", "wasm32-wasip2", "--manifest-path"])
        .arg(plugins.join("Cargo.toml"));
    // The outer build's settings must not leak into the guest build.
    for (key, _) in std::env::vars() {
        if key.starts_with("CARGO_FEATURE_")
            || key.starts_with("CARGO_CFG_")
            || matches!(
                key.as_str(),
                "RUSTFLAGS" | "CARGO_ENCODED_RUSTFLAGS" | "CARGO_BUILD_TARGET" | "RUSTC_WRAPPER" | "RUSTC_WORKSPACE_WRAPPER"
                    | "CARGO_MAKEFLAGS" | "CARGO_PRIMARY_PACKAGE" | "TARGET" | "HOST" | "OPT_LEVEL" | "PROFILE" | "DEBUG"
                    | "RUSTDOCFLAGS" | "CARGO_ENCODED_RUSTDOCFLAGS" | "CARGO_BUILD_RUSTFLAGS" | "CARGO_TARGET_DIR"
                    | "CARGO_BUILD_TARGET_DIR" | "CARGO_BUILD_RUSTC_WRAPPER" | "CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER"
                    | "CARGO_LLVM_COV" | "LLVM_PROFILE_FILE" | "CARGO_INCREMENTAL"
            )
        {
            cmd.env_remove(&key);
        }
    }
    // Set after the scrub above, which removes any inherited value.
    cmd.env("CARGO_TARGET_DIR", &target_dir);
    let status = cmd.status().expect("running cargo for the plugins workspace");
    if !status.success() {
        panic!(
            "building plugins/ for wasm32-wasip2 failed (see above). If the target is missing: \
             rustup target add wasm32-wasip2"
        );
    }
    let built = target_dir.join("wasm32-wasip2").join("release");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("default-pack");
    std::fs::create_dir_all(&out).expect("OUT_DIR/default-pack");
    for name in DEFAULT_PACK {
        copy(&built.join(format!("vsync_plugin_{name}.wasm")), &out.join(format!("{name}.wasm")));
    }
    println!("cargo:rustc-env=VSYNC_PLUGIN_WASM_DIR={}", built.display());
}

/// Fails early, with the fix, when the toolchain has no wasm32-wasip2 standard library.
fn check_wasm_target() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let libdir = Command::new(&rustc)
        .args(["--print", "target-libdir", "--target", "wasm32-wasip2"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if !libdir.is_some_and(|d| d.is_dir()) {
        panic!(
            "the wasm32-wasip2 target is not installed for {rustc}; the default plugin pack \
             cannot be built. Fix: run rustup target add wasm32-wasip2"
        );
    }
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("copying {} to {}: {e}", from.display(), to.display()));
}

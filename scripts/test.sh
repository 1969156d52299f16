#!/usr/bin/env bash
# Runs the whole test suite: unit tests, the Vault client against real OpenBao servers, the
# Consul contract suite (against the in-process emulator; also a real Consul when
# CONSUL_HTTP_ADDR is set), the plugin host against real guest components, the end-to-end
# tests of the vsync binary, and `vsync plugin validate` on the example plugin built with the
# published SDK. Installs what it needs first (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
echo "==> test: cargo test --workspace --locked (starts and stops its own OpenBao servers on 127.0.0.1)"
cargo test --workspace --locked "$@"

echo "==> test: the default plugin pack's own unit tests (native)"
cargo test --manifest-path plugins/Cargo.toml --locked --quiet

echo "==> test: examples/region-transformer built for wasm32-wasip2 and checked by vsync plugin validate"
cargo test --manifest-path examples/region-transformer/Cargo.toml --locked --quiet
cargo build --manifest-path examples/region-transformer/Cargo.toml --locked --release --target wasm32-wasip2 --quiet
pack="$(mktemp -d)"
trap 'rm -rf "$pack"' EXIT
cp examples/region-transformer/target/wasm32-wasip2/release/region_transformer.wasm "$pack/region.wasm"
cp examples/region-transformer/region.vectors.toml "$pack/region.vectors.toml"
cargo run --locked --quiet -p vsync -- plugin validate "$pack"
echo "==> test: all passed"

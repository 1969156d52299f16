#!/usr/bin/env bash
# Runs the whole test suite: unit tests, the Vault client against real OpenBao servers, the
# Consul contract suite (against the in-process emulator; also a real Consul when
# CONSUL_HTTP_ADDR is set), the plugin host against real guest components, the end-to-end
# tests of the vsync binary, and `vsync plugin validate` on the example plugin built with the
# published SDK, and `systemd-analyze verify` on examples/deploy's units where that tool exists
# (the deployment YAML is parsed by vsync-config's tests), and `promtool check rules` and
# `promtool test rules` on examples/monitoring's alert rules (cargo test also runs a real
# Prometheus against vsync). Installs what it needs first (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
echo "==> test: promtool check rules and promtool test rules on examples/monitoring"
command -v promtool >/dev/null || { echo "error: promtool is missing: apt-get install prometheus (Debian)" >&2; exit 1; }
(cd examples/monitoring && promtool check rules alerts.yml && promtool test rules alerts.test.yml)

echo "==> test: cargo test --workspace --locked --features vsync-engine/bao-tests (starts and stops its own OpenBao servers on 127.0.0.1)"
cargo test --workspace --locked --features vsync-engine/bao-tests "$@"

echo "==> test: the default plugin pack's own unit tests (native)"
cargo test --manifest-path plugins/Cargo.toml --locked --quiet

echo "==> test: examples/region-transformer built for wasm32-wasip2 and checked by vsync plugin validate"
cargo test --manifest-path examples/region-transformer/Cargo.toml --locked --quiet
cargo build --manifest-path examples/region-transformer/Cargo.toml --locked --release --target wasm32-wasip2 --quiet
pack="$(mktemp -d)"
trap 'rm -rf "$pack"' EXIT
cp examples/region-transformer/target/wasm32-wasip2/release/region_transformer.wasm "$pack/region.wasm"
cp examples/region-transformer/region.vectors.toml "$pack/region.vectors.toml"
# The binary `cargo test --workspace` built for the e2e tests: `cargo run -p vsync` alone would
# rebuild wasmtime with another feature set (features are unified per build), minutes for nothing.
bin="${CARGO_TARGET_DIR:-$PWD/target}/debug/vsync"
[ -x "$bin" ] || cargo build --locked --quiet -p vsync
"$bin" plugin validate "$pack"
if command -v systemd-analyze >/dev/null; then
  echo "==> test: systemd-analyze verify examples/deploy units (ExecStart pointed at the built binary)"
  units="$(mktemp -d)"
  for u in examples/deploy/vsync.service examples/deploy/vsync-health.service examples/deploy/vsync-health.timer; do
    sed "s#/usr/local/bin/vsync#$bin#g" "$u" >"$units/$(basename "$u")"
  done
  # verify exits 0 on settings it ignores; any output at all is a finding.
  out="$(systemd-analyze verify "$units"/* 2>&1)" || { echo "$out"; exit 1; }
  rm -rf "$units"
  if [ -n "$out" ]; then echo "$out"; exit 1; fi
fi
echo "==> test: all passed"

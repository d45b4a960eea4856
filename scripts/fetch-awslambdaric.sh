#!/usr/bin/env bash
# Installs AWS's official Python runtime interface client (awslambdaric,
# from PyPI) for Debian's python3 (CPython 3.11, x86_64) into DEST, for the
# e2e test that runs it unmodified inside a sandbox. Cached: does nothing
# when DEST already holds it.
# Usage: scripts/fetch-awslambdaric.sh [DEST]
set -euo pipefail
VERSION=4.2.2
DEST="${1:-/root/.cache/nubo/awslambdaric-$VERSION}"
if [ -f "$DEST/.complete" ]; then
  echo "$DEST"
  exit 0
fi
PIP=(python3 -m pip)
"${PIP[@]}" --version >/dev/null 2>&1 || { echo "fetch-awslambdaric: pip is missing (apt-get install python3-pip)" >&2; exit 1; }
rm -rf "$DEST.tmp"
echo "fetch-awslambdaric: installing awslambdaric==$VERSION into $DEST" >&2
# --target installs outside any environment; Debian's pip still asks for this.
PIP_BREAK_SYSTEM_PACKAGES=1 "${PIP[@]}" install --quiet --disable-pip-version-check --target "$DEST.tmp" \
  --only-binary=:all: --python-version 3.11 --platform manylinux2014_x86_64 \
  "awslambdaric==$VERSION" >&2
touch "$DEST.tmp/.complete"
rm -rf "$DEST"
mv "$DEST.tmp" "$DEST"
echo "$DEST"

#!/bin/sh
# Install the official AWS Lambda Python runtime interface client (awslambdaric)
# from PyPI into DEST, for tests/functions/awslambdaric: proof that nubo's
# Runtime API works with a client nobody here wrote.
#
# Wheels only, for the sandbox's interpreter (Debian bookworm's /usr/bin/python3,
# CPython 3.11, x86_64), whatever Python runs pip. The result is cached in
# ~/.cache/nubo/awslambdaric-VERSION and copied from there on later runs.
#
# usage: scripts/fetch-awslambdaric.sh DEST
set -eu

VERSION=4.2.2

if [ $# -ne 1 ]; then
    echo "usage: $0 DEST" >&2
    exit 2
fi
DEST=$1
CACHE=${NUBO_CACHE_DIR:-$HOME/.cache/nubo}/awslambdaric-$VERSION

if [ ! -f "$CACHE/.complete" ]; then
    if command -v pip3 >/dev/null 2>&1; then PIP=pip3
    elif command -v pip >/dev/null 2>&1; then PIP=pip
    else PIP="python3 -m pip"
    fi
    tmp="$CACHE.tmp.$$"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    # --target with a foreign --python-version/--platform requires --only-binary.
    $PIP install --quiet --disable-pip-version-check --root-user-action=ignore --no-compile \
        --target "$tmp" --only-binary=:all: \
        --python-version 3.11 --implementation cp --abi cp311 \
        --platform manylinux2014_x86_64 \
        "awslambdaric==$VERSION"
    touch "$tmp/.complete"
    rm -rf "$CACHE"
    mv "$tmp" "$CACHE"
fi

mkdir -p "$DEST"
cp -R "$CACHE"/. "$DEST"/
rm -f "$DEST/.complete"
echo "awslambdaric $VERSION in $DEST"

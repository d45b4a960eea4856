#!/bin/sh
# Install the official AWS Lambda Python runtime interface client (awslambdaric)
# from PyPI, for tests/functions/awslambdaric: proof that nubo's Runtime API
# works with a client nobody here wrote.
#
# Wheels only, for the sandbox's interpreter (Debian bookworm's /usr/bin/python3,
# CPython 3.11, x86_64), whatever Python runs pip. Installed once into
# ~/.cache/nubo/awslambdaric-VERSION (a `.complete` marker means done).
#
# usage: scripts/fetch-awslambdaric.sh [DEST]
#   without DEST: prints the cache directory holding the packages;
#   with DEST:    copies the packages into DEST and prints DEST.
# stdout carries only that path (tests read it); progress goes to stderr.
set -eu

VERSION=4.2.2
CACHE=${NUBO_CACHE_DIR:-$HOME/.cache/nubo}/awslambdaric-$VERSION

if [ $# -gt 1 ]; then
    echo "usage: $0 [DEST]" >&2
    exit 2
fi

if [ ! -f "$CACHE/.complete" ]; then
    if python3 -m pip --version >/dev/null 2>&1; then PIP="python3 -m pip"
    elif command -v pip3 >/dev/null 2>&1; then PIP=pip3
    else
        echo "fetch-awslambdaric: pip is missing (apt-get install python3-pip)" >&2
        exit 1
    fi
    tmp="$CACHE.tmp.$$"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    echo "fetch-awslambdaric: installing awslambdaric==$VERSION into $CACHE" >&2
    # --target with a foreign --python-version/--platform requires
    # --only-binary; Debian's pip wants the break-system-packages opt-in even
    # though --target touches no environment.
    PIP_BREAK_SYSTEM_PACKAGES=1 $PIP install --quiet --disable-pip-version-check \
        --root-user-action=ignore --no-compile \
        --target "$tmp" --only-binary=:all: \
        --python-version 3.11 --implementation cp --abi cp311 \
        --platform manylinux2014_x86_64 \
        "awslambdaric==$VERSION" >&2
    touch "$tmp/.complete"
    rm -rf "$CACHE"
    mv "$tmp" "$CACHE"
fi

if [ $# -eq 0 ]; then
    echo "$CACHE"
    exit 0
fi
DEST=$1
mkdir -p "$DEST"
cp -R "$CACHE"/. "$DEST"/
rm -f "$DEST/.complete"
echo "$DEST"

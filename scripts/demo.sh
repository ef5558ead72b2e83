#!/usr/bin/env bash
# Quickstart 1: build bootcast, build the demo master image, store it, list the store.
# Installs what it needs (Debian packages, cargo build). Safe to rerun: every step is cached.
# Later: this becomes `bootcast serve` with the demo image (boot services land in a later issue).
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf 'demo.sh: %s\n' "$*" >&2; }
die() { printf 'demo.sh: error: %s\n' "$*" >&2; exit 1; }
. scripts/lib.sh

ensure_packages build-essential pkg-config
ensure_rust
log "building bootcast (release)"
cargo build --release --locked >&2
BOOTCAST=$PWD/target/x86_64-unknown-linux-gnu/release/bootcast
export BOOTCAST_DATA=${BOOTCAST_DATA:-$PWD/bootcast-data}

IMG=$(images/demo/build.sh | tail -n 1)
if "$BOOTCAST" image show demo >/dev/null 2>&1; then
    log "demo image already in $BOOTCAST_DATA"
else
    log "adding $IMG as image 'demo'"
    "$BOOTCAST" image add demo "$IMG"
fi
"$BOOTCAST" image list
log "data directory: $BOOTCAST_DATA (try: $BOOTCAST image show demo; $BOOTCAST store verify)"

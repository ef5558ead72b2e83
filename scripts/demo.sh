#!/usr/bin/env bash
# Quickstart 1: build bootcast, the demo master and the boot environment (each only if
# missing), store the demo master, then run `bootcast serve` with its embedded defaults
# (SQLite and the chunk store in ./bootcast-data, HTTP on :8080, TFTP on :69, DHCP off).
# Extra arguments go to `bootcast serve`, e.g. `--dhcp-interface eth1` to answer PXE clients.
# Installs what it needs (Debian packages, cargo build). Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf 'demo.sh: %s\n' "$*" >&2; }
die() { printf 'demo.sh: error: %s\n' "$*" >&2; exit 1; }
. scripts/lib.sh

# build tools; busybox-static, dpkg and binutils (objcopy) for the boot environment
ensure_packages build-essential pkg-config busybox-static binutils dpkg shim-signed grub-efi-amd64-signed
ensure_rust
log "building bootcast (release, statically linked)"
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
if "$BOOTCAST" bootenv show >/dev/null 2>&1 \
    && [[ ! $BOOTCAST -nt $BOOTCAST_DATA/bootenv/bootenv.json ]]; then
    log "boot environment already built in $BOOTCAST_DATA/bootenv (with this bootcast as its agent)"
else
    log "building the boot environment (Debian kernel + busybox + the bootcast agent)"
    "$BOOTCAST" bootenv build --cache "$PWD/.cache/bootenv"
fi
"$BOOTCAST" image list
log "starting bootcast serve (Ctrl-C stops it); data directory: $BOOTCAST_DATA"
exec "$BOOTCAST" serve "$@"

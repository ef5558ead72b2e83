#!/usr/bin/env bash
# Quickstart 2: the whole test suite. Installs what it needs, then: format check, clippy,
# unit and integration tests (tests needing root or QEMU print SKIP lines when they cannot run).
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf 'test.sh: %s\n' "$*" >&2; }
die() { printf 'test.sh: error: %s\n' "$*" >&2; exit 1; }
. scripts/lib.sh

if [[ $EUID -eq 0 ]] || command -v sudo >/dev/null 2>&1; then
    # Build tools, QEMU/OVMF and dnsmasq (DHCP in tests/bootenv.rs) for the boot tests, and what
    # images/demo/build.sh uses.
    ensure_packages build-essential pkg-config util-linux qemu-system-x86 ovmf ipxe-qemu \
        busybox-static syslinux syslinux-common syslinux-efi mtools dosfstools fdisk \
        e2fsprogs cpio gzip xz-utils zstd iproute2 dnsmasq-base tcpdump tftp-hpa atftp curl
else
    log "not root: skipping package installation (tests that need missing tools print SKIP)"
fi
ensure_rust
log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
log "cargo test"
cargo test --locked --all-targets

#!/usr/bin/env bash
# Boot a bootcast demo image under QEMU (TCG) from its own disk and check that
# it reaches "BOOTCAST-DEMO-OK" on the serial console.
#
# Usage: images/demo/boot-test.sh IMG [bios|uefi]
#
# Boots a temporary copy (the input is never modified), without any network
# device.  Exit 0 only if the serial log contains BOOTCAST-DEMO-OK; prints the
# matching line and the elapsed seconds on stdout.
#
# Environment:
#   BOOT_TEST_TIMEOUT  seconds before QEMU is killed (default 120)
#   BOOT_TEST_LOG      also copy the serial log to this path
set -euo pipefail
export LC_ALL=C

OVMF_CODE=/usr/share/OVMF/OVMF_CODE.fd
OVMF_VARS=/usr/share/OVMF/OVMF_VARS.fd
TIMEOUT=${BOOT_TEST_TIMEOUT:-120}
MARKER=BOOTCAST-DEMO-OK

log() { printf 'boot-test.sh: %s\n' "$*" >&2; }
die() { printf 'boot-test.sh: error: %s\n' "$*" >&2; exit 2; }

if [[ $# -lt 1 || $# -gt 2 || $1 == -h || $1 == --help ]]; then
    echo "Usage: $0 IMG [bios|uefi]" >&2
    exit 2
fi
IMG=$1
MODE=${2:-bios}
[[ -f $IMG ]] || die "no such image: $IMG"
case $MODE in bios|uefi) ;; *) die "mode must be bios or uefi, not '$MODE'" ;; esac
[[ $TIMEOUT =~ ^[0-9]+$ ]] || die "BOOT_TEST_TIMEOUT must be a number of seconds"

# shellcheck source=../../scripts/lib.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../../scripts/lib.sh"
if [[ $MODE == uefi ]]; then
    ensure_packages qemu-system-x86 ovmf
else
    ensure_packages qemu-system-x86
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/bootcast-boot-test.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
DISK=$TMP/disk.img
LOG=$TMP/serial.log
cp --sparse=always "$IMG" "$DISK"
: >"$LOG"

QEMU=(qemu-system-x86_64 -accel tcg -m 512 -display none -monitor none -no-reboot
      -nic none -serial "file:$LOG" -drive "file=$DISK,format=raw,if=virtio")
if [[ $MODE == uefi ]]; then
    [[ -f $OVMF_CODE && -f $OVMF_VARS ]] || die "OVMF firmware not found in /usr/share/OVMF"
    cp "$OVMF_VARS" "$TMP/OVMF_VARS.fd"
    QEMU+=(-machine q35
           -drive "if=pflash,format=raw,unit=0,readonly=on,file=$OVMF_CODE"
           -drive "if=pflash,format=raw,unit=1,file=$TMP/OVMF_VARS.fd")
fi

log "booting $IMG ($MODE, timeout ${TIMEOUT}s)"
start=$(date +%s%N)
rc=0
timeout -k 5 "$TIMEOUT" "${QEMU[@]}" </dev/null >"$TMP/qemu.out" 2>&1 || rc=$?
end=$(date +%s%N)
elapsed=$(awk -v s="$start" -v e="$end" 'BEGIN { printf "%.1f", (e - s) / 1e9 }')

[[ -n ${BOOT_TEST_LOG:-} ]] && cp "$LOG" "$BOOT_TEST_LOG"

line=$(grep -a -m 1 "$MARKER" "$LOG" | tr -d '\r' || true)
if [[ -n $line ]]; then
    tr -d '\r' <"$LOG" | grep -a '^BOOTCAST-DEMO-' | grep -v "$MARKER" >&2 || true
    printf '%s\n' "$line"
    printf 'elapsed %s s (%s)\n' "$elapsed" "$MODE"
    exit 0
fi

if [[ $rc -eq 124 || $rc -eq 137 ]]; then
    log "QEMU timed out after ${TIMEOUT}s"
else
    log "QEMU exited with status $rc"
fi
cat "$TMP/qemu.out" >&2
log "no $MARKER after $elapsed s; last lines of the serial log:"
tr -d '\r' <"$LOG" | tail -n 40 >&2
exit 1

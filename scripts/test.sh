#!/usr/bin/env bash
# Quickstart 2: the whole test suite. Installs what it needs, then: format check, clippy,
# unit and integration tests (tests needing root or QEMU print SKIP lines when they cannot run).
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf 'test.sh: %s\n' "$*" >&2; }
die() { printf 'test.sh: error: %s\n' "$*" >&2; exit 1; }
. scripts/lib.sh

if [[ $EUID -eq 0 ]] || command -v sudo >/dev/null 2>&1; then
    # Build tools, QEMU/OVMF and dnsmasq (DHCP in tests/bootenv.rs) for the boot tests, slapd
    # (tests/staff_access.rs: directory logins), chromium (tests/console.rs), and what
    # images/demo/build.sh uses.
    ensure_packages build-essential pkg-config util-linux qemu-system-x86 ovmf ipxe-qemu \
        busybox-static syslinux syslinux-common syslinux-efi mtools dosfstools fdisk \
        e2fsprogs cpio gzip xz-utils zstd iproute2 dnsmasq-base tcpdump tftp-hpa atftp curl \
        shim-signed grub-efi-amd64-signed ntfs-3g gdisk slapd ldap-utils chromium chromium-driver
else
    log "not root: skipping package installation (tests that need missing tools print SKIP)"
fi
ensure_rust
log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
log "cargo test --no-run: every test target, built once"
cargo test --locked --all-targets --no-run

# The QEMU tests (and relay_push, the longest namespace test) run two binaries at a time, after
# the rest: under TCG each VM keeps a core busy, so two at a time fill the machine's two cores.
# tests/bootenv.rs goes first: the boot environment it builds and checks is the one the others
# boot (tests/common/netlab.rs, SharedSlot).
parallel=(bootenv relay_push pxe_boot reimage_vm relay_vm room_vm zero_touch_vm inventory_vm uefi_vm)
others=()
for f in tests/*.rs; do
    t=$(basename "$f" .rs)
    [[ " ${parallel[*]} " == *" $t "* ]] || others+=(--test "$t")
done
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
log "cargo test: unit tests, examples and the integration tests that run alone"
alone=0
cargo test --locked --lib --bins --examples "${others[@]}" --no-fail-fast 2>&1 |
    tee "$out/alone.txt" || alone=1

log "cargo test: ${parallel[*]}, two at a time (each one's output is shown when it ends)"
targets=()
for t in "${parallel[@]}"; do targets+=(--test "$t"); done
cargo test --locked "${targets[@]}" --no-run --message-format=json 2>/dev/null >"$out/artifacts.json"
exes=()
for t in "${parallel[@]}"; do
    exe=$(sed -n 's/.*"target":{[^}]*"name":"'"$t"'"[^}]*}.*"executable":"\([^"]*\)".*/\1/p' \
        "$out/artifacts.json" | tail -n 1)
    [[ -n $exe ]] || die "no test binary for tests/$t.rs"
    exes+=("$t=$exe")
done
# (set -e would end the subshell at a failing test before its rc is written)
run_one() {
    local rc=0
    "$2" >"$out/$1.log" 2>&1 || rc=$?
    echo "$rc" >"$out/$1.rc"
}
running=0
for e in "${exes[@]}"; do
    run_one "${e%%=*}" "${e#*=}" &
    running=$((running + 1))
    if ((running >= 2)); then
        wait -n || true
        running=$((running - 1))
    fi
done
wait
failed=()
for e in "${exes[@]}"; do
    t=${e%%=*}
    printf '     Running tests/%s.rs (%s)\n' "$t" "${e#*=}"
    cat "$out/$t.log"
    [[ $(cat "$out/$t.rc") == 0 ]] || failed+=("$t")
done
((alone == 0)) || failed+=("cargo test (see above)")
# the whole suite's count, from every binary's "test result:" line
awk '/^test result:/ { for (i = 1; i < NF; i++) { if ($(i + 1) == "passed;") p += $i; if ($(i + 1) == "failed;") f += $i } }
     END { printf "suite: %d passed, %d failed\n", p, f }' "$out"/alone.txt "$out"/*.log
((${#failed[@]} == 0)) || die "failed: ${failed[*]}"

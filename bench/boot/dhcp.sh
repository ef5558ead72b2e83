#!/usr/bin/env bash
# proxyDHCP DISCOVER→OFFER answers per second: bootcast (boot::dhcp::run through
# examples/dhcp_load.rs `serve`) vs dnsmasq (dnsmasq-base, proxy mode), same load client
# (`dhcp_load load`), same namespaces, alternating runs. Root; everything happens in two network
# namespaces joined by a veth (10.99.50.0/24), never on a real interface.
#
#   bench/boot/dhcp.sh [--seconds 5] [--runs 3] [--window 32] [--arch 7]
set -euo pipefail
cd "$(dirname "$0")/../.."
SECONDS_PER_RUN=5 RUNS=3 WINDOW=32 ARCH=7
while (($#)); do
    case $1 in
        --seconds) SECONDS_PER_RUN=$2; shift 2 ;;
        --runs) RUNS=$2; shift 2 ;;
        --window) WINDOW=$2; shift 2 ;;
        --arch) ARCH=$2; shift 2 ;;
        *) echo "usage: $0 [--seconds S] [--runs N] [--window W] [--arch A]" >&2; exit 2 ;;
    esac
done
[[ $EUID -eq 0 ]] || { echo "dhcp.sh: needs root (network namespaces)" >&2; exit 1; }
command -v dnsmasq >/dev/null || { echo "dhcp.sh: needs dnsmasq (Debian dnsmasq-base)" >&2; exit 1; }
cargo build --release --example dhcp_load >&2
LOAD=${DHCP_LOAD:-target/x86_64-unknown-linux-gnu/release/examples/dhcp_load}

S=bcbench-s-$$ C=bcbench-c-$$ PID=
cleanup() {
    [[ -n $PID ]] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
    ip netns del "$S" 2>/dev/null || true
    ip netns del "$C" 2>/dev/null || true
}
trap cleanup EXIT
ip netns add "$S"; ip netns add "$C"
ip -n "$S" link add vs type veth peer name vc netns "$C"
ip -n "$S" addr add 10.99.50.1/24 dev vs
ip -n "$C" addr add 10.99.50.2/24 dev vc
for x in "$S vs" "$C vc"; do set -- $x; ip -n "$1" link set "$2" up; ip -n "$1" link set lo up; done

start_bootcast() {
    ip netns exec "$S" "$LOAD" serve --interface vs --server-ip 10.99.50.1 &
    PID=$!
}
start_dnsmasq() {
    # Proxy mode, one PXE service per architecture family, no per-packet logging (like the
    # bootcast server at its default log level).
    ip netns exec "$S" dnsmasq --no-daemon --port=0 --interface=vs --bind-interfaces --no-ping \
        --leasefile-ro --conf-file=/dev/null --dhcp-range=10.99.50.0,proxy \
        --pxe-service=x86PC,"bios",undionly --pxe-service=X86-64_EFI,"efi",snponly \
        --pxe-service=BC_EFI,"efi",snponly 2>/dev/null &
    PID=$!
}
stop() { kill "$PID"; wait "$PID" 2>/dev/null || true; PID=; }
measure() {
    ip netns exec "$C" "$LOAD" load --interface vc --seconds "$SECONDS_PER_RUN" --window "$WINDOW" \
        --arch "$ARCH" | tee /dev/stderr | awk '{print $2}'
}

declare -a B D
for ((r = 1; r <= RUNS; r++)); do
    start_bootcast; b=$(measure); stop
    start_dnsmasq; d=$(measure); stop
    B+=("$b"); D+=("$d")
    printf 'run %d: bootcast %s answers/s, dnsmasq %s answers/s, ratio %s\n' "$r" "$b" "$d" \
        "$(awk -v b="$b" -v d="$d" 'BEGIN{printf "%.2f", b/d}')"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
mb=$(median "${B[@]}") md=$(median "${D[@]}")
printf 'median: bootcast %s answers/s, dnsmasq %s answers/s, ratio bootcast/dnsmasq %s (arch %s, window %s, %s s per run, %s runs)\n' \
    "$mb" "$md" "$(awk -v b="$mb" -v d="$md" 'BEGIN{printf "%.2f", b/d}')" "$ARCH" "$WINDOW" "$SECONDS_PER_RUN" "$RUNS"

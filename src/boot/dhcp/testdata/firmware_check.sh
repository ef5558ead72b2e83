#!/usr/bin/env bash
# Real firmware against bootcast's proxyDHCP (root; QEMU, OVMF, tcpdump, dnsmasq-base).
# Same lab as capture.sh, but namespace bcap2 (10.99.7.2) runs bootcast's DHCP server in proxy
# mode (examples/dhcp_load.rs serve) beside dnsmasq as the site's full DHCP server. Success:
# the iPXE ROM opens TCP to 10.99.7.2:8080 (the iPXE script URL) and OVMF sends its 4011
# REQUEST and then a TFTP read request for snponly.efi to 10.99.7.2. The pcap and bootcast's log
# (bootcast.log, RUST_LOG=info) are left in $OUT.
# FULL=1: bootcast is the only DHCP server, in full mode (pool 10.99.7.100-250); success is the
# same (OVMF then boots from a plain OFFER/ACK carrying the file, no option 60/43).
# Build first: cargo build --release --example dhcp_load (or set LOAD=path).
set -euo pipefail
LOAD=${LOAD:-$(cd "$(dirname "$0")/../../../.." && pwd)/target/x86_64-unknown-linux-gnu/release/examples/dhcp_load}
OUT=${OUT:-$(mktemp -d)}
cleanup() {
    for p in ${PIDS:-}; do kill "$p" 2>/dev/null || true; done
    ip netns del bcap 2>/dev/null || true
    ip netns del bcap2 2>/dev/null || true
}
trap cleanup EXIT
ip netns add bcap
ip netns add bcap2
ip -n bcap link add br0 type bridge
ip -n bcap addr add 10.99.7.1/24 dev br0
ip -n bcap link set br0 up
ip -n bcap tuntap add tap0 mode tap
ip -n bcap link set tap0 master br0 up
ip -n bcap link add capA type veth peer name capB netns bcap2
ip -n bcap link set capA master br0 up
ip -n bcap2 addr add 10.99.7.2/24 dev capB
ip -n bcap2 link set capB up
ip -n bcap link set lo up
ip netns exec bcap tcpdump -U -i br0 -s 0 -w "$OUT/capture.pcap" 'udp port 67 or udp port 68 or udp port 4011 or udp port 69 or tcp port 8080' &
PIDS="$!"
[[ ${FULL:-0} == 1 ]] || ip netns exec bcap dnsmasq --no-daemon --port=0 --interface=br0 --bind-interfaces --no-ping \
    --dhcp-range=10.99.7.100,10.99.7.150 --leasefile-ro --log-dhcp 2>"$OUT/dnsmasq-full.log" &
PIDS="$PIDS $!"
RUST_LOG=info ip netns exec bcap2 "$LOAD" serve --interface capB --server-ip 10.99.7.2 $([[ ${FULL:-0} == 1 ]] && echo --full) 2>"$OUT/bootcast.log" &
PIDS="$PIDS $!"
# BIOS, e1000 with the iPXE ROM
timeout -k 5 40 ip netns exec bcap qemu-system-x86_64 -accel tcg -m 256 -display none -monitor none \
    -no-reboot -serial "file:$OUT/bios.log" -machine pc,graphics=off \
    -netdev tap,id=n0,ifname=tap0,script=no,downscript=no \
    -device e1000,netdev=n0,mac=52:54:00:99:00:01 -boot n || true
# UEFI (OVMF) with its own PXE client: virtio-net without an option ROM
cp /usr/share/OVMF/OVMF_VARS.fd "$OUT/vars.fd"
timeout -k 5 90 ip netns exec bcap qemu-system-x86_64 -accel tcg -m 512 -display none -monitor none \
    -no-reboot -serial "file:$OUT/uefi.log" -machine q35 \
    -drive if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE.fd \
    -drive if=pflash,format=raw,file="$OUT/vars.fd" \
    -netdev tap,id=n0,ifname=tap0,script=no,downscript=no \
    -device virtio-net-pci,netdev=n0,romfile=,mac=52:54:00:99:00:02 -boot n || true
kill -INT $(echo $PIDS | cut -d" " -f1); wait $(echo $PIDS | cut -d" " -f1) || true
echo "capture in $OUT/capture.pcap"

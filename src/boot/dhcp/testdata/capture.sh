#!/usr/bin/env bash
# Re-captures the firmware DHCP fixtures in this directory (root; QEMU, OVMF, tcpdump, dnsmasq-base).
# Lab: namespace bcap with bridge br0 (10.99.7.1/24, full DHCP by dnsmasq #1) and tap0 for QEMU;
# namespace bcap2 (10.99.7.2, on the bridge through a veth) runs dnsmasq #2 in proxy mode with a
# PXE menu, so UEFI firmware also sends its boot-server REQUEST to port 4011.
# Output: capture.pcap in $OUT (default: a temp dir); extract.py turns it into fixture files.
set -euo pipefail
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
ip netns exec bcap tcpdump -U -i br0 -s 0 -w "$OUT/capture.pcap" 'udp port 67 or udp port 68 or udp port 4011' &
PIDS="$!"
ip netns exec bcap dnsmasq --no-daemon --port=0 --interface=br0 --bind-interfaces --no-ping \
    --dhcp-range=10.99.7.100,10.99.7.150 --leasefile-ro --log-dhcp 2>"$OUT/dnsmasq-full.log" &
PIDS="$PIDS $!"
ip netns exec bcap2 dnsmasq --no-daemon --port=0 --interface=capB --bind-interfaces --no-ping \
    --dhcp-range=10.99.7.0,proxy --leasefile-ro --log-dhcp \
    --pxe-service=x86PC,"bios",undionly --pxe-service=X86-64_EFI,"efi",snponly \
    2>"$OUT/dnsmasq-proxy.log" &
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

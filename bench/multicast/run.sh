#!/usr/bin/env bash
# Room multicast: `bootcast multicast send/receive` vs udpcast (udp-sender/udp-receiver), for
# N = 1, 4, 8 receivers on one bridge in network namespaces, same image, same rate cap, same run.
# bootcast sends the store's compressed chunks; udpcast sends the raw image (that is the point).
# Needs root. See bench/README.md.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BOOTCAST=${BOOTCAST:-$REPO/target/x86_64-unknown-linux-gnu/release/bootcast}
B=${BOOTCAST_CACHE:-$REPO/.cache}/bench-multicast

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { printf 'run.sh: FAIL: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
# shellcheck source=scripts/lib.sh disable=SC1091
. "$REPO/scripts/lib.sh"

usage() {
	cat <<EOF
usage: sudo bench/multicast/run.sh [--size MIB] [--rate RATE] [--counts "1 4 8"] [--no-build] [--no-loss] [--loss-rate RATE] [--only-loss]
  --size MIB     image size in MiB (default 1024)
  --rate RATE    bootcast --max-rate (default 1Gbit); udpcast gets the same as --max-bitrate
  --counts LIST  receiver counts (default "1 4 8")
  --no-loss      skip the loss runs (largest N clean, then with 2 % loss at two receivers)
  --loss-rate R  bootcast --max-rate of the loss runs (default 200Mbit: below what the
                 receivers' CPUs sustain here, so the runs measure loss, not CPU contention)
  --only-loss    only the loss runs (no table)
EOF
}

SIZE_MIB=1024
RATE=1Gbit
COUNTS="1 4 8"
BUILD=1
LOSS=1
LOSS_RATE=200Mbit
ONLY_LOSS=0
while [[ $# -gt 0 ]]; do
	case $1 in
	--size) SIZE_MIB=$2; shift 2 ;;
	--rate) RATE=$2; shift 2 ;;
	--counts) COUNTS=$2; shift 2 ;;
	--no-build) BUILD=0; shift ;;
	--no-loss) LOSS=0; shift ;;
	--loss-rate) LOSS_RATE=$2; shift 2 ;;
	--only-loss) ONLY_LOSS=1; shift ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; die "unknown argument $1" ;;
	esac
done

[[ $EUID -eq 0 ]] || die "needs root (network namespaces, veths, a bridge): run it with sudo"

# udpcast's --max-bitrate takes bits/s with a k/m/g suffix: convert RATE (bootcast's syntax)
UDP_RATE=$(python3 - "$RATE" <<'PY'
import re, sys
m = re.fullmatch(r"([0-9.]+)\s*(gbit|mbit|kbit|bit)?", sys.argv[1].strip().lower())
if not m:
    sys.exit(f"--rate {sys.argv[1]!r}: write it in bits (e.g. 1Gbit, 800Mbit)")
mult = {"gbit": 1e9, "mbit": 1e6, "kbit": 1e3, "bit": 1, None: 1}[m.group(2)]
print(f"{int(float(m.group(1)) * mult / 1e6)}m")
PY
) || die "bad --rate $RATE"
max_n=0
for n in $COUNTS; do ((n > max_n)) && max_n=$n; done
((max_n >= 1 && max_n <= 40)) || die "--counts must be between 1 and 40"

# ---------------------------------------------------------------------------------------------
# tools
ensure_packages udpcast
for t in udp-sender udp-receiver; do command -v "$t" >/dev/null || die "$t not found (Debian package udpcast)"; done
if [[ $BUILD -eq 1 ]]; then
	ensure_rust
	log "cargo build --release"
	(cd "$REPO" && cargo build --release --quiet) || die "cargo build --release failed"
fi
[[ -x $BOOTCAST ]] || die "no bootcast binary at $BOOTCAST"

# ---------------------------------------------------------------------------------------------
# test image: disk-like mix of random (compressed data, binaries), text-like and zero regions,
# deterministic (seeded), made once
mkdir -p "$B"
IMAGE=$B/image-${SIZE_MIB}M.img
if [[ ! -f $IMAGE ]]; then
	log "making $IMAGE ($SIZE_MIB MiB)"
	python3 - "$IMAGE.tmp" "$SIZE_MIB" <<'PY'
import random, sys
path, mib = sys.argv[1], int(sys.argv[2])
rng = random.Random(20261123)
words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 10))).decode()
         for _ in range(5000)]
words += ["the", "of", "and", "to", "in", "is", "usr", "lib", "/etc/", "0x", "=", "{", "}", ";", "\n", "\n\t"]
weights = [1.0 / (i + 1) for i in range(len(words))]  # Zipf-like
MiB = 1 << 20
def text(n):
    out = bytearray()
    while len(out) < n:
        out += " ".join(rng.choices(words, weights, k=20000)).encode()
    return bytes(out[:n])
with open(path, "wb") as f:
    left = mib * MiB
    while left:
        # regions of 1..8 MiB: ~35 % random, ~40 % text-like, ~25 % zeros
        n = min(left, rng.randint(1, 8) * MiB)
        r = rng.random()
        if r < 0.35:
            f.write(rng.randbytes(n))
        elif r < 0.75:
            f.write(text(n))
        else:
            f.write(bytes(n))
        left -= n
PY
	mv "$IMAGE.tmp" "$IMAGE"
fi
SIZE=$(stat -c %s "$IMAGE")
IMG_SHA=$(sha256sum "$IMAGE" | cut -d' ' -f1)

# ---------------------------------------------------------------------------------------------
# scratch, processes, namespaces, cleanup
W=$(mktemp -d "$B/work.XXXXXX")
LOGS=$B/logs
rm -rf "$LOGS"
mkdir -p "$LOGS"
PIDS=()
NSS=()
cleanup() {
	local p n
	# finish even if signalled again or stderr is gone (e.g. `| tail` killed with the group)
	trap '' INT TERM HUP PIPE
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	for n in "${NSS[@]}"; do ip netns del "$n" 2>/dev/null || true; done
	rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP PIPE

cp "$BOOTCAST" "$W/bootcast"
BC=$W/bootcast
log "bootcast: $BOOTCAST ($(date -r "$BOOTCAST" '+%F %T'))"

P=bcmb$$
HUB=$P-hub
SND=$P-snd
newns() { ip netns add "$1"; NSS+=("$1"); ip -n "$1" link set lo up; }
newns "$HUB"
ip -n "$HUB" link add br0 type bridge
ip -n "$HUB" link set br0 type bridge forward_delay 0 mcast_snooping 0
ip -n "$HUB" link set br0 up
attach() { # attach NS ADDR/CIDR: veth eth0 in NS, other end on the hub's br0
	local ns=$1 addr=$2 peer=v${#NSS[@]}
	newns "$ns"
	ip -n "$HUB" link add "$peer" type veth peer name eth0 netns "$ns"
	ip -n "$HUB" link set "$peer" master br0
	ip -n "$HUB" link set "$peer" up
	ip -n "$ns" addr add "$addr" dev eth0
	ip -n "$ns" link set eth0 up
	ip -n "$ns" route add 224.0.0.0/4 dev eth0
}
SRV_IP=10.99.61.1
attach "$SND" "$SRV_IP/24"
RCV=()
for i in $(seq 0 $((max_n - 1))); do
	attach "$P-r$i" "10.99.61.$((10 + i))/24"
	RCV+=("$P-r$i")
done
sleep 1 # let the veths settle (carrier, bridge ports forwarding)
GROUP=239.255.61.7
PORT=47061
UDP_RDV=239.255.61.1
UDP_DATA=239.255.61.2
UDP_PORTBASE=9061

# ---------------------------------------------------------------------------------------------
# bootcast store and server (in the sender's namespace: manifest and HTTP fallback)
D=$W/data
"$BC" --data "$D" image add bench "$IMAGE" --json >"$LOGS/image_add.out" 2>"$LOGS/image_add.err" ||
	die "image add failed: $(tail -5 "$LOGS/image_add.err")"
VER=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["version"])' "$LOGS/image_add.out")
SPEC=bench@$VER
STORED=$(find "$D/store" -type f -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }')
ip netns exec "$SND" "$BC" --data "$D" serve --http "$SRV_IP:8080" --tftp off \
	>"$LOGS/serve.out" 2>"$LOGS/serve.err" &
SRV_PID=$!
PIDS+=("$SRV_PID")
for _ in $(seq 1 150); do
	grep -q '^bootcast: ready' "$LOGS/serve.err" && break
	kill -0 "$SRV_PID" 2>/dev/null || die "bootcast serve exited: $(tail -5 "$LOGS/serve.err")"
	sleep 0.2
done
grep -q '^bootcast: ready' "$LOGS/serve.err" || die "bootcast serve not ready after 30 s"
# receivers send the API token, so over HTTPS with the server's certificate pinned
FPR=$(sed -n 's/^ *certificate \(sha256:[0-9a-f]*\).*/\1/p' "$LOGS/serve.err" | head -1)
[[ -n $FPR ]] || die "no certificate fingerprint in the banner: $(head -20 "$LOGS/serve.err")"
log "image $IMAGE: $SIZE bytes, store $STORED bytes ($SPEC); serve pid $SRV_PID in $SND"

tx_bytes() { ip netns exec "$SND" cat /sys/class/net/eth0/statistics/tx_bytes; }
RES=$B/results.txt
: >"$RES"
put() { printf '%s=%s\n' "$1" "$2" >>"$RES"; }

# session TOOL N [LOSSY TAG]: one timed session to receivers 0..N-1 at $MC_RATE (bootcast: the
# first LOSSY drop 2 % of datagrams in user space; logs and results under TAG); sets S_SECS,
# S_BYTES; verifies outputs
MC_RATE=$RATE
session() {
	local tool=$1 n=$2 lossy=${3:-0} tag=${4:-$1-$2} i rc t0 t1 tx0 tx1 spid out sha drop
	local rpids=()
	rm -f "$W"/out-*
	sync
	tx0=$(tx_bytes)
	t0=$(now)
	if [[ $tool == bootcast ]]; then
		ip netns exec "$SND" "$BC" --data "$D" --json multicast send "$SPEC" --interface eth0 \
			--group "$GROUP" --port "$PORT" --min-receivers "$n" --wait 60 --timeout 600 \
			--max-rate "$MC_RATE" >"$LOGS/$tag-send.out" 2>"$LOGS/$tag-send.err" &
	else
		ip netns exec "$SND" udp-sender --file "$IMAGE" --interface eth0 --nokbd --no-progress \
			--mcast-rdv-address "$UDP_RDV" --mcast-data-address "$UDP_DATA" --portbase "$UDP_PORTBASE" \
			--min-receivers "$n" --max-wait 60 --max-bitrate "$UDP_RATE" \
			>"$LOGS/$tool-$n-send.out" 2>"$LOGS/$tool-$n-send.err" </dev/null &
	fi
	spid=$!
	PIDS+=("$spid")
	for i in $(seq 0 $((n - 1))); do
		if [[ $tool == bootcast ]]; then
			drop=0
			((i < lossy)) && drop=2
			ip netns exec "${RCV[$i]}" "$BC" --json multicast receive --server "https://$SRV_IP:8443" \
				--fingerprint "$FPR" --token-file "$D/api-token" --image "$SPEC" --interface eth0 --group "$GROUP" --port "$PORT" --drop-percent "$drop" \
				--target "$W/out-$i" >"$LOGS/$tag-recv$i.out" 2>"$LOGS/$tag-recv$i.err" &
		else
			ip netns exec "${RCV[$i]}" udp-receiver --file "$W/out-$i" --interface eth0 --nokbd \
				--mcast-rdv-address "$UDP_RDV" --portbase "$UDP_PORTBASE" \
				>"$LOGS/$tool-$n-recv$i.out" 2>"$LOGS/$tool-$n-recv$i.err" </dev/null &
		fi
		rpids+=($!)
		PIDS+=($!)
	done
	rc=0
	for i in "${!rpids[@]}"; do
		wait "${rpids[$i]}" || { rc=$?; log "$tool N=$n: receiver $i exited with $rc"; }
	done
	t1=$(now)
	wait "$spid" || { rc=$?; log "$tool N=$n: sender exited with $rc"; }
	tx1=$(tx_bytes)
	((rc == 0)) || die "$tool N=$n failed; logs in $LOGS/$tag-*"
	S_SECS=$(elapsed "$t0" "$t1")
	S_BYTES=$((tx1 - tx0))
	for i in $(seq 0 $((n - 1))); do
		out=$W/out-$i
		sha=$(sha256sum "$out" | cut -d' ' -f1)
		[[ $sha == "$IMG_SHA" ]] || die "$tool N=$n: receiver $i's output differs from the image (sha256 $sha)"
	done
	rm -f "$W"/out-*
	put "${tag//-/_}_s" "$S_SECS"
	put "${tag//-/_}_bytes" "$S_BYTES"
	log "$tool N=$n: ${S_SECS}s, sender eth0 tx $S_BYTES bytes; $n outputs match the image (sha256)"
}

cat "$IMAGE" >/dev/null # inputs in the page cache
find "$D" -type f -exec cat {} + >/dev/null
put load_start "$(cut -d' ' -f1 /proc/loadavg)"
if ((!ONLY_LOSS)); then
	for n in $COUNTS; do
		session bootcast "$n"
		session udpcast "$n"
	done
fi
# loss: the largest N clean, then with 2 % loss at two receivers, both at LOSS_RATE; each
# receiver's time to a complete target (its report's complete_after) tells whether the lossy
# two slowed the others down
if ((LOSS && max_n >= 4)); then
	MC_RATE=$LOSS_RATE
	session bootcast "$max_n" 0 "bootcast-$max_n-clean"
	session bootcast "$max_n" 2 "bootcast-$max_n-loss"
	MC_RATE=$RATE
fi
put load_end "$(cut -d' ' -f1 /proc/loadavg)"

# ---------------------------------------------------------------------------------------------
# report
python3 - "$RES" "$IMAGE" "$SIZE" "$STORED" "$RATE" "$COUNTS" "$LOGS" "$((LOSS && max_n >= 4 ? max_n : 0))" "$LOSS_RATE" "$ONLY_LOSS" <<'PY'
import json, sys
res, image, size, stored, rate, counts, logs, loss_n, loss_rate, only_loss = sys.argv[1:11]
loss_n = int(loss_n)
if only_loss == "1":
    counts = ""
size, stored = int(size), int(stored)
r = dict(l.rstrip("\n").split("=", 1) for l in open(res))
M = 1e6
print()
print(f"multicast bench: {image}, {size / M:.1f} MB raw, bootcast store {stored / M:.1f} MB "
      f"(compressed chunks, {stored / size:.3f} of raw); rate cap {rate} for both")
print(f"1-min load at start {r['load_start']}, at end {r['load_end']}")
if max(float(r["load_start"]), float(r["load_end"])) > 0.5:
    print("WARNING: machine not idle: timings are noisy")
hdr = ["N", "bootcast s", "udpcast s", "time udpcast/bootcast",
       "bootcast sender MB", "udpcast sender MB", "bytes udpcast/bootcast"]
rows = []
for n in counts.split():
    bs, us = float(r[f"bootcast_{n}_s"]), float(r[f"udpcast_{n}_s"])
    bb, ub = int(r[f"bootcast_{n}_bytes"]), int(r[f"udpcast_{n}_bytes"])
    rows.append([n, f"{bs:.2f}", f"{us:.2f}", f"{us / bs:.2f}", f"{bb / M:.1f}", f"{ub / M:.1f}", f"{ub / bb:.2f}"])
w = [max(len(str(x)) for x in col) for col in zip(hdr, *rows)]
print("  ".join(h.rjust(w[i]) for i, h in enumerate(hdr)))
for row in rows:
    print("  ".join(str(c).rjust(w[i]) for i, c in enumerate(row)))
print("time: sender start until the last receiver exited; sender MB: tx_bytes of the sender "
      "namespace's eth0 (multicast data, control, HTTP from bootcast serve, Ethernet/IP/UDP headers); MB = 10^6 bytes")
for n in counts.split():
    try:
        s = json.load(open(f"{logs}/bootcast-{n}-send.out"))
        bs, us = float(r[f"bootcast_{n}_s"]), float(r[f"udpcast_{n}_s"])
        sent = s['bytes'] / s['compressed']
        print(f"bootcast N={n}: sender report: {s['bytes']} bytes ({sent:.4f} x the compressed image, goal <= 1.05: "
              f"{'met' if sent <= 1.05 else 'missed'}), {s['passes']} passes, "
              f"{s.get('naks', '?')} NAKs, ended {s['ended']}, {s['receivers_done']}/{s['receivers_joined']} done; "
              f"time udpcast/bootcast {us / bs:.2f} (goal >= 1: {'met' if us >= bs else 'missed'})")
    except Exception as e:
        print(f"bootcast N={n}: no sender report ({e})")
if loss_n:
    def times(tag):
        return [json.load(open(f"{logs}/{tag}-recv{i}.out"))["complete_after"] for i in range(loss_n)]
    clean, lossy = times(f"bootcast-{loss_n}-clean"), times(f"bootcast-{loss_n}-loss")
    send = json.load(open(f"{logs}/bootcast-{loss_n}-loss-send.out"))
    others_clean, others_loss = max(clean[2:]), max(lossy[2:])
    print(f"loss, N={loss_n}, bootcast at {loss_rate}: receivers 0 and 1 drop 2 % of datagrams; each receiver's time to a complete target (s): "
          f"clean {' '.join(f'{t:.2f}' for t in clean)}; with loss {' '.join(f'{t:.2f}' for t in lossy)}")
    print(f"  the {loss_n - 2} others: slowest {others_clean:.2f} s clean, {others_loss:.2f} s with loss: "
          f"ratio {others_loss / others_clean:.2f} (issue 7: at most 1.20); lossy two: {max(lossy[:2]):.2f} s; "
          f"sender {send['bytes']} bytes = {send['bytes'] / send['compressed']:.3f} x the compressed image "
          f"in {send['passes']} passes (clean: "
          f"{r[f'bootcast_{loss_n}_clean_bytes']} eth0 bytes)")
PY

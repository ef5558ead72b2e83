#!/usr/bin/env bash
# TFTP bench on loopback: a random 64 MiB file fetched with atftp from bootcast's TFTP server
# (examples/tftp_serve), tftpd-hpa (in.tftpd) and atftpd; best of N runs per case, times and
# ratios printed. See bench/README.md.
#
# tftpd-hpa and atftpd are not installed: their .debs (and libwrap0) are fetched with
# `apt-get download` and unpacked into the cache dir, so no system service is created.
set -euo pipefail

usage() {
	cat <<'EOF2'
usage: bench/boot/tftp.sh [--runs N] [--size MiB]

environment:
  TFTP_SERVE      bootcast TFTP-only binary (default <repo>/target/x86_64-unknown-linux-gnu/
                  release/examples/tftp_serve, built with `cargo build --release --example
                  tftp_serve` if missing)
  BOOTCAST_CACHE  cache dir (default <repo>/.cache); data lives in $BOOTCAST_CACHE/bench-boot
EOF2
}

RUNS=3
SIZE_MIB=64
while [[ $# -gt 0 ]]; do
	case "$1" in
	--runs) RUNS=${2:?--runs needs N}; shift 2 ;;
	--size) SIZE_MIB=${2:?--size needs MiB}; shift 2 ;;
	-h | --help) usage; exit 0 ;;
	*) echo "tftp.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
	esac
done

log() { printf 'tftp.sh: %s\n' "$*" >&2; }
die() { printf 'tftp.sh: error: %s\n' "$*" >&2; exit 1; }

REPO=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../.." && pwd)
CACHE=${BOOTCAST_CACHE:-$REPO/.cache}
B=$CACHE/bench-boot
TFTP_SERVE=${TFTP_SERVE:-$REPO/target/x86_64-unknown-linux-gnu/release/examples/tftp_serve}
ROOT=$B/root
PKGS=$B/pkgs
W=$B/work
FILE=big-${SIZE_MIB}M.bin

command -v atftp >/dev/null || die "atftp (client) not found: apt-get install atftp"
command -v python3 >/dev/null || die "python3 not found"
mkdir -p "$ROOT" "$PKGS" "$W"

if [[ ! -x $TFTP_SERVE ]]; then
	log "building examples/tftp_serve (release)"
	(cd "$REPO" && cargo build --release --example tftp_serve)
fi

# tftpd-hpa, atftpd and libwrap0 unpacked, not installed.
if [[ ! -x $PKGS/x/usr/sbin/in.tftpd || ! -x $PKGS/x/usr/sbin/atftpd ]]; then
	log "apt-get download tftpd-hpa atftpd libwrap0 (unpacked into $PKGS, not installed)"
	(cd "$PKGS" && rm -f ./*.deb && apt-get download tftpd-hpa atftpd libwrap0 >&2 &&
		for d in ./*.deb; do dpkg-deb -x "$d" x; done)
fi
export LD_LIBRARY_PATH=$PKGS/x/usr/lib/x86_64-linux-gnu:$PKGS/x/lib/x86_64-linux-gnu
IN_TFTPD=$PKGS/x/usr/sbin/in.tftpd
ATFTPD=$PKGS/x/usr/sbin/atftpd

if [[ ! -s $ROOT/$FILE ]]; then
	log "writing $SIZE_MIB MiB of random data to $ROOT/$FILE"
	head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom >"$ROOT/$FILE.tmp"
	mv "$ROOT/$FILE.tmp" "$ROOT/$FILE"
fi
echo ready >"$ROOT/ready"
# The C servers drop privileges to nobody: the data must be readable by everyone.
chmod 755 "$ROOT" && chmod 644 "$ROOT"/*
cat "$ROOT/$FILE" >/dev/null # page cache

free_port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

SERVER_PID=
stop_server() {
	if [[ -n $SERVER_PID ]]; then
		kill "$SERVER_PID" 2>/dev/null || true
		wait "$SERVER_PID" 2>/dev/null || true
		SERVER_PID=
	fi
}
trap stop_server EXIT

# start_server NAME PORT: starts one server on 127.0.0.1:PORT, waits until it serves a file.
start_server() {
	local name=$1 port=$2 i
	case $name in
	bootcast) RUST_LOG=warn "$TFTP_SERVE" --listen "127.0.0.1:$port" --root "$ROOT" >"$W/$name.log" 2>&1 & ;;
	tftpd-hpa) "$IN_TFTPD" -L -a "127.0.0.1:$port" -s "$ROOT" -u nobody >"$W/$name.log" 2>&1 & ;;
	atftpd) "$ATFTPD" --daemon --no-fork --port "$port" --bind-address 127.0.0.1 \
		--user nobody --group nogroup --logfile /dev/null --maxthread 100 "$ROOT" >"$W/$name.log" 2>&1 & ;;
	esac
	SERVER_PID=$!
	for i in $(seq 100); do
		rm -f "$W/ready"
		if timeout 1 atftp -g -r ready -l "$W/ready" 127.0.0.1 "$port" >/dev/null 2>&1 &&
			[[ $(cat "$W/ready" 2>/dev/null) == ready ]]; then
			return 0
		fi
		kill -0 "$SERVER_PID" 2>/dev/null || die "$name exited: $(cat "$W/$name.log")"
		sleep 0.1
	done
	die "$name did not answer on port $port"
}

# fetch PORT OPTS...: one timed atftp fetch; prints seconds; checks the bytes.
fetch() {
	local port=$1 t0 t1
	shift
	local opts=()
	for o in "$@"; do opts+=(--option "$o"); done
	rm -f "$W/out"
	t0=$(date +%s.%N)
	atftp -g -r "$FILE" -l "$W/out" "${opts[@]}" 127.0.0.1 "$port" >/dev/null 2>"$W/atftp.err" ||
		die "atftp failed: $(cat "$W/atftp.err")"
	t1=$(date +%s.%N)
	cmp -s "$W/out" "$ROOT/$FILE" || die "fetched file differs from $FILE"
	echo "$t1 - $t0" | bc -l
}

# best SERVER LABEL OPTS...: best of $RUNS; stores the time in BEST[SERVER/LABEL].
declare -A BEST
best() {
	local server=$1 label=$2 port b= t i
	shift 2
	port=$(free_port)
	start_server "$server" "$port"
	for i in $(seq "$RUNS"); do
		t=$(fetch "$port" "$@")
		if [[ -z $b ]] || (($(echo "$t < $b" | bc -l))); then b=$t; fi
	done
	stop_server
	BEST[$server/$label]=$b
	printf '%-10s %-26s best of %d: %6.2f s  %7.1f MiB/s\n' "$server" "$label" "$RUNS" "$b" \
		"$(echo "$SIZE_MIB / $b" | bc -l)" >&2
}

command -v bc >/dev/null || die "bc not found: apt-get install bc"
log "$SIZE_MIB MiB file, atftp client, loopback, best of $RUNS"
WINDOWS=(4 8 16)
for server in bootcast tftpd-hpa atftpd; do
	best "$server" "blksize 1468" "blksize 1468"
	# tftpd-hpa grants no windowsize: its rows would be lock-step again
	[[ $server == tftpd-hpa ]] && continue
	for w in "${WINDOWS[@]}"; do
		best "$server" "blksize 1468 windowsize $w" "blksize 1468" "windowsize $w"
	done
done

ratio() { echo "${BEST[$1]} / ${BEST[$2]}" | bc -l; }
# goal: bootcast's time at most the peer's (ratio <= 1)
goal() { if (($(echo "$1 <= 1" | bc -l))); then echo met; else echo missed; fi; }
printf '\n%-28s %10s %10s %10s\n' "case (${SIZE_MIB} MiB, atftp)" bootcast tftpd-hpa atftpd
printf '%-28s %9.2fs %9.2fs %9.2fs\n' "blksize 1468" "${BEST[bootcast/blksize 1468]}" \
	"${BEST[tftpd-hpa/blksize 1468]}" "${BEST[atftpd/blksize 1468]}"
for w in "${WINDOWS[@]}"; do
	label="blksize 1468 windowsize $w"
	printf '%-28s %9.2fs %10s %9.2fs\n' "$label" "${BEST[bootcast/$label]}" "-" "${BEST[atftpd/$label]}"
done
echo
echo "ratios (time / time; < 1 means bootcast is faster; goal <= 1):"
r=$(ratio 'bootcast/blksize 1468' 'tftpd-hpa/blksize 1468')
printf '  lock-step, bootcast / tftpd-hpa:  %.2f  %s\n' "$r" "$(goal "$r")"
r=$(ratio 'bootcast/blksize 1468' 'atftpd/blksize 1468')
printf '  lock-step, bootcast / atftpd:     %.2f  %s\n' "$r" "$(goal "$r")"
for w in "${WINDOWS[@]}"; do
	r=$(ratio "bootcast/blksize 1468 windowsize $w" "atftpd/blksize 1468 windowsize $w")
	printf '  windowsize %-2s, bootcast / atftpd: %.2f  %s\n' "$w" "$r" "$(goal "$r")"
done

#!/usr/bin/env bash
# bench/wan: a push from the central server to a site relay over a WAN link: 100 Mbit/s
# (tbf on a veth pair between two network namespaces) with 10, 50 and 100 ms of round trip
# added by a delaying TCP proxy (examples/delay_proxy.rs: this kernel has no netem). Relay to
# central is HTTPS with the pinned certificate, as in the field. Prints, per round trip, the
# push's rate over the transfer and counted from `push create`, as fractions of the link.
# Root only; addresses in 10.99.50.0/24; everything it makes is removed at exit.
#
#   bench/wan/run.sh [--size-mb N] [--rtt "10 50 100"] [--rate 100mbit] [--debug]
set -euo pipefail
cd "$(dirname "$0")/../.."
die() { printf 'wan: error: %s\n' "$*" >&2; exit 1; }
size_mb=150 rtts="10 50 100" rate=100mbit profile=release
while (($#)); do
    case $1 in
    --size-mb) size_mb=$2; shift 2 ;;
    --rtt) rtts=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --debug) profile=debug; shift ;;
    *) die "unknown argument $1" ;;
    esac
done
((EUID == 0)) || die "needs root (network namespaces, tc)"
command -v tc >/dev/null || die "needs tc (iproute2)"
if [[ $profile == release ]]; then
    cargo build --release --locked --bin bootcast --example delay_proxy
else
    cargo build --locked --bin bootcast --example delay_proxy
fi
target=target/x86_64-unknown-linux-gnu/$profile
[[ -x $target/bootcast ]] || target=target/$profile
bin=$(realpath "$target/bootcast") proxy_bin=$(realpath "$target/examples/delay_proxy")
link_bps=$(awk -v r="$rate" 'BEGIN { n = r + 0; if (r ~ /gbit/) n *= 1e9; else if (r ~ /mbit/) n *= 1e6; else if (r ~ /kbit/) n *= 1e3; print n / 8 }')

work=$(mktemp -d)
c=bcwan-c-$$ r=bcwan-r-$$
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    ip netns del "$c" 2>/dev/null || true
    ip netns del "$r" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
ip netns add "$c"
ip netns add "$r"
ip -n "$c" link add wc type veth peer name wr netns "$r"
ip -n "$c" addr add 10.99.50.1/24 dev wc
ip -n "$r" addr add 10.99.50.2/24 dev wr
for ns in "$c" "$r"; do ip -n "$ns" link set lo up; done
ip -n "$c" link set wc up
ip -n "$r" link set wr up
ip netns exec "$c" tc qdisc add dev wc root tbf rate "$rate" burst 64kb latency 100ms
ip netns exec "$r" tc qdisc add dev wr root tbf rate "$rate" burst 64kb latency 100ms

central=$work/central
head -c "${size_mb}M" /dev/urandom >"$work/img"
"$bin" --data "$central" --json image add win11 "$work/img" >/dev/null
token=$("$bin" --data "$central" --json site add s1 | sed -n 's/.*"token": *"\([^"]*\)".*/\1/p')
[[ -n $token ]] || die "site add gave no token"
install -m 600 /dev/null "$work/token" && printf '%s\n' "$token" >"$work/token"


# started <NAME> <NS> <LOG> COMMAND...: runs it in the background, waits for `bootcast: ready`
started() {
    local log=$3 ns=$2
    shift 3
    ip netns exec "$ns" "$@" 2>"$log" &
    pids+=($!)
    for _ in $(seq 1 200); do
        grep -q '^bootcast: ready' "$log" && return 0
        sleep 0.1
    done
    cat "$log"
    die "$1 did not start"
}
started central "$c" "$work/central.log" "$bin" --data "$central" serve \
    --http 10.99.50.1:8080 --https 10.99.50.1:8443 --tftp off
fp=$(sed -n 's/^ *certificate \(sha256:[0-9a-f]*\).*/\1/p' "$work/central.log" | head -n 1)
[[ -n $fp ]] || die "no certificate fingerprint in the banner"
metric() { # metric NAME: the relay's value
    ip netns exec "$r" curl -sf http://127.0.0.1:8081/metrics | awk -v n="$1" '$1 == n { print int($2) }'
}
now() { date +%s.%N; }
printf '%-8s %10s %10s %12s %12s %10s %10s\n' "rtt ms" "bytes" "transfer s" "rate MB/s" "from create" "x link" "x create"
for rtt in $rtts; do
    ip netns exec "$r" "$proxy_bin" --listen 127.0.0.1:9443 --to 10.99.50.1:8443 --rtt-ms "$rtt" 2>/dev/null &
    pids+=($!)
    proxy=$!
    relay_data=$work/relay-$rtt
    started relay "$r" "$work/relay-$rtt.log" "$bin" --data "$relay_data" relay \
        --upstream https://127.0.0.1:9443 --upstream-fingerprint "$fp" --site s1 \
        --token-file "$work/token" --http 127.0.0.1:8081 --https off --tftp off
    relay=${pids[-1]}
    for _ in $(seq 1 100); do (($(metric bootcast_relay_heartbeats_total || echo 0) > 0)) && break; sleep 0.1; done
    base=$(metric bootcast_relay_upstream_bytes_total)
    t_create=$(now)
    id=$("$bin" --data "$central" --json push create --image win11 --sites s1 | sed -n 's/.*"id": *\([0-9]*\).*/\1/p' | head -n 1)
    t_first="" t_last="" last=$base
    while :; do
        b=$(metric bootcast_relay_upstream_bytes_total)
        t=$(now)
        [[ -z $t_first && $b -gt $base ]] && t_first=$t
        ((b > last)) && { last=$b; t_last=$t; }
        state=$("$bin" --data "$central" --json push status "$id" | grep -o '"state": *"[a-z]*"' | tail -n 1)
        [[ $state == *done* ]] && break
        awk -v t="$t" -v s="$t_create" 'BEGIN { exit !(t - s > 600) }' && die "push $id not done after 600 s"
        sleep 0.1
    done
    t_done=$(now)
    awk -v b="$((last - base))" -v tf="$t_first" -v tl="$t_last" -v tc="$t_create" -v td="$t_done" -v rtt="$rtt" -v link="$link_bps" 'BEGIN {
        xfer = tl - tf; all = td - tc
        printf "%-8s %10d %10.1f %12.2f %12.1f %10.2f %10.2f\n", rtt, b, xfer, b / xfer / 1e6, all, b / xfer / link, b / all / link }'
    kill "$relay" 2>/dev/null || true
    wait "$relay" 2>/dev/null || true
    "$bin" --data "$central" --json push cancel "$id" >/dev/null 2>&1 || true

    # an agent's restore through a relay that holds nothing (pass-through: every chunk is
    # pulled through as the client asks), over the same link
    started relay "$r" "$work/relay-$rtt-pt.log" "$bin" --data "$relay_data-pt" relay \
        --upstream https://127.0.0.1:9443 --upstream-fingerprint "$fp" --site s1 \
        --token-file "$work/token" --http 127.0.0.1:8081 --https off --tftp off \
        --incomplete upstream
    relay=${pids[-1]}
    t0=$(now)
    ip netns exec "$r" "$bin" --data "$work/client" --json image export win11 "$work/out-$rtt.img" \
        --from http://127.0.0.1:8081 --token-file "$central/api-token" >"$work/export.json"
    t1=$(now)
    cmp -s "$work/img" "$work/out-$rtt.img" || die "the restored image differs from the source"
    rm -f "$work/out-$rtt.img"
    up=$(metric bootcast_relay_upstream_bytes_total)
    awk -v b="$up" -v t0="$t0" -v t1="$t1" -v rtt="$rtt" -v link="$link_bps" 'BEGIN {
        printf "%-8s %10d %10.1f %12.2f %12s %10.2f %10s  (restore through the relay, pass-through)\n", rtt, b, t1 - t0, b / (t1 - t0) / 1e6, "-", b / (t1 - t0) / link, "-" }'
    kill "$relay" "$proxy" 2>/dev/null || true
    wait "$relay" "$proxy" 2>/dev/null || true
done
echo "link: $rate ($(awk -v l="$link_bps" 'BEGIN { printf "%.2f", l / 1e6 }') MB/s), tbf burst 64kb latency 100ms; round trip added by examples/delay_proxy.rs (a delaying TCP proxy in the relay's namespace, between the relay and the link)"

#!/usr/bin/env bash
# bench/fleet-load: one central server with a region's database (40,000 hosts on 94 sites,
# a year of history), its 94 relays heartbeating, and a boot storm of 2,000 PCs booting
# through those relays within 2 minutes (boot script, hello, inventory, then the restore's
# progress every 2 s and done). Prints p50/p99 of each call, the database's writes per
# commit, and the server's CPU time and peak memory. Loopback only.
#
#   bench/fleet-load/run.sh [--hosts N] [--sites N] [--storm N] [--storm-secs S] [--progress N] [--days D] [--debug]
#
# --debug uses the debug build (quick check of the bench itself; figures are not comparable).
set -euo pipefail
cd "$(dirname "$0")/../.."
die() { printf 'fleet-load: error: %s\n' "$*" >&2; exit 1; }
hosts=40000 sites=94 storm=2000 storm_secs=120 progress=10 days=365 profile=release
while (($#)); do
    case $1 in
    --hosts) hosts=$2; shift 2 ;;
    --sites) sites=$2; shift 2 ;;
    --storm) storm=$2; shift 2 ;;
    --storm-secs) storm_secs=$2; shift 2 ;;
    --progress) progress=$2; shift 2 ;;
    --days) days=$2; shift 2 ;;
    --debug) profile=debug; shift ;;
    *) die "unknown argument $1" ;;
    esac
done
if [[ $profile == release ]]; then
    cargo build --release --locked --bin bootcast --example fleet_load
else
    cargo build --locked --bin bootcast --example fleet_load
fi
root=${CARGO_TARGET_DIR:-target}
target=$root/x86_64-unknown-linux-gnu/$profile
[[ -x $target/bootcast ]] || target=$root/$profile
bin=$target/bootcast load=$target/examples/fleet_load
work=$(mktemp -d)
server=""
cleanup() {
    [[ -n $server ]] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
data=$work/data
# the image the storm's tasks name (small: no restore runs)
head -c 4M /dev/urandom >"$work/img"
version=$("$bin" --data "$data" --json image add master "$work/img" | sed -n 's/.*"version": *"\([0-9a-f]*\)".*/\1/p')
[[ -n $version ]] || die "image add gave no version"
"$load" generate --data "$data" --hosts "$hosts" --sites "$sites" --days "$days" --storm "$storm" \
    --image "master@$version" --region "$work/region.json"
# a site operator of the first site (the console's reads are timed as them too)
first_site=$(sed -n 's/.*"name": *"\([^"]*\)".*/\1/p' "$work/region.json" | head -n 1)
printf 'a bench password\n' | "$bin" --data "$data" user add bench-operator --role operator \
    --site "$first_site" --password-stdin >/dev/null
"$bin" --data "$data" --json user token bench-operator | sed -n 's/.*"token": *"\([^"]*\)".*/\1/p' >"$work/operator-token"
port=$((20000 + RANDOM % 20000))
"$bin" --data "$data" serve --http "127.0.0.1:$port" --https off --tftp off 2>"$work/serve.log" &
server=$!
for _ in $(seq 1 100); do
    grep -q '^bootcast: ready' "$work/serve.log" && break
    kill -0 "$server" 2>/dev/null || { cat "$work/serve.log"; die "the server exited"; }
    sleep 0.2
done
grep -q '^bootcast: ready' "$work/serve.log" || die "the server did not start"
ticks=$(getconf CLK_TCK)
cpu() { awk '{ print $14 + $15 }' "/proc/$server/stat"; }
c0=$(cpu) t0=$(date +%s.%N)
rc=0
"$load" run --url "http://127.0.0.1:$port" --region "$work/region.json" --storm-secs "$storm_secs" \
    --progress "$progress" --token-file "$data/api-token" --operator-token-file "$work/operator-token" || rc=$?
c1=$(cpu) t1=$(date +%s.%N)
hwm=$(awk '/^VmHWM/ { print $2 }' "/proc/$server/status")
awk -v c="$((c1 - c0))" -v hz="$ticks" -v t0="$t0" -v t1="$t1" -v hwm="$hwm" 'BEGIN {
    wall = t1 - t0; s = c / hz
    printf "central server: %.1f s of CPU over %.1f s (%.0f %% of one core), peak RSS %.0f MB\n", s, wall, 100 * s / wall, hwm / 1024 }'
errors=$(grep -c -i ' ERROR ' "$work/serve.log" || true)
echo "server log: $errors error line(s)"
((errors == 0)) || grep -i ' ERROR ' "$work/serve.log" | head -5
exit "$rc"

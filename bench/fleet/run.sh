#!/usr/bin/env bash
# Fleet push simulation (no VMs, no network): examples/fleet_sim (its sim.rs) for the monthly
# update and for seeding new sites: per-site completion time, upstream bytes, central egress,
# sites that miss the first night. Then the same two with a smaller central egress, summary
# only, to show when sharing it starts to cost a night. See bench/README.md.
set -euo pipefail

usage() {
	cat <<'EOF2'
usage: bench/fleet/run.sh [options] [-- fleet_sim options]

  --what-if-egress RATE  central egress of the extra summary-only runs (default 2Gbit; "none" to skip)
  -h, --help

Options after `--` go to every fleet_sim run, e.g. `-- --sites 200 --window 21:00-07:00`
(see `fleet_sim --help`: --sites --masters --update-percent --window --central-egress
--min-cap --max-cap --min-rtt-ms --max-rtt-ms --zone --other-zones --start --horizon-days --seed).

environment:
  FLEET_SIM       the example binary (default: built with `cargo build --release --locked
                  --example fleet_sim`, <repo>/target/x86_64-unknown-linux-gnu/release/examples/fleet_sim)
  BOOTCAST_CACHE  cache dir (default <repo>/.cache); JSON results in $BOOTCAST_CACHE/bench-fleet
EOF2
}

WHAT_IF=2Gbit
PASS=()
while [[ $# -gt 0 ]]; do
	case "$1" in
	--what-if-egress) WHAT_IF=${2:?--what-if-egress needs RATE}; shift 2 ;;
	--what-if-egress=*) WHAT_IF=${1#*=}; shift ;;
	-h | --help) usage; exit 0 ;;
	--) shift; PASS=("$@"); break ;;
	*) echo "run.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
	esac
done

REPO=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../.." && pwd)
CACHE=${BOOTCAST_CACHE:-$REPO/.cache}
B=$CACHE/bench-fleet

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { printf 'run.sh: FAIL: %s\n' "$*" >&2; exit 1; }

[[ -d /usr/share/zoneinfo ]] || die "no /usr/share/zoneinfo (apt-get install tzdata)"
if [[ -z ${FLEET_SIM:-} ]]; then
	log "cargo build --release --locked --example fleet_sim"
	(cd "$REPO" && cargo build --release --locked --example fleet_sim) >&2 ||
		die "cargo build --example fleet_sim failed"
	FLEET_SIM=$REPO/target/x86_64-unknown-linux-gnu/release/examples/fleet_sim
fi
[[ -x $FLEET_SIM ]] || die "no fleet_sim binary at $FLEET_SIM"
mkdir -p "$B"

# sim NAME ARGS...: the table on stdout, the JSON of the same run in $B/NAME.json
sim() {
	local name=$1; shift
	"$FLEET_SIM" "$@" "${PASS[@]}" || die "fleet_sim $* failed"
	"$FLEET_SIM" "$@" "${PASS[@]}" --json >"$B/$name.json" || die "fleet_sim $* --json failed"
}

for scenario in update seed; do
	echo "=== scenario $scenario ==="
	sim "$scenario" --scenario "$scenario"
	echo
done

if [[ $WHAT_IF != none ]]; then
	for scenario in update seed; do
		echo "=== scenario $scenario, central egress $WHAT_IF (summary) ==="
		# the last --central-egress wins, so it goes after the passed-through options
		"$FLEET_SIM" --scenario "$scenario" "${PASS[@]}" --central-egress "$WHAT_IF" |
			sed -n '/^central egress:/,$p'
		echo
	done
fi
log "JSON: $B/update.json $B/seed.json"

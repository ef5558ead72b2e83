#!/usr/bin/env bash
# Every speed row of issue 21 in one run, on one build: the store (ingest, export, the v2
# update's bytes), TFTP, HTTP chunk serving and room multicast, each against its peer on the
# same data (see each bench's section in bench/README.md). Needs root (namespaces, loop mounts).
#
#   sudo bench/speed.sh            # logs and results in .cache/bench-speed/<time>/
#
# Run it on a quiet machine: each bench warns when the load was high. Takes about 30 minutes.
set -euo pipefail
REPO=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
cd "$REPO"
out=${BOOTCAST_CACHE:-.cache}/bench-speed/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$out"
echo "bench/speed.sh: logs in $out" >&2
cargo build --release --locked --bin bootcast --example tftp_serve --example http_load >&2
root=${CARGO_TARGET_DIR:-target}
bin=$root/x86_64-unknown-linux-gnu/release
[[ -x $bin/bootcast ]] || bin=$root/release
bin=$(cd "$bin" && pwd)
step() { # NAME COMMAND...
	local name=$1; shift
	echo "bench/speed.sh: $name ($(cut -d' ' -f1-3 /proc/loadavg))" >&2
	"$@" 2>&1 | tee "$out/$name.log"
}
step store env BOOTCAST="$bin/bootcast" bash bench/store/run.sh
cp "${BOOTCAST_CACHE:-.cache}/bench-store/result.json" "$out/store.json"
step tftp env TFTP_SERVE="$bin/examples/tftp_serve" bash bench/boot/tftp.sh
step http bash bench/http/run.sh
step multicast env BOOTCAST="$bin/bootcast" bash bench/multicast/run.sh --no-build
echo "bench/speed.sh: done; logs in $out" >&2

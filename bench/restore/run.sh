#!/usr/bin/env bash
# Restore benchmark: an image restored to a file over loopback HTTP by
#   - bootcast (`image export --from http://...`: the agent's restore path),
#   - casync (`extract` from an HTTP chunk store served by nginx),
#   - curl | zstd -d (the whole image as one zstd -1 file served by nginx),
# on the same image in the same run, best of N each; every output is compared with `cmp`.
# See bench/README.md.
set -euo pipefail

usage() {
	cat <<'EOF'
usage: bench/restore/run.sh [options]

  --runs N          timed runs per tool, best kept (default 3)
  --image FILE      image to restore (default: $BOOTCAST_CACHE/bench-store/v1.img, built by
                    bench/store/run.sh; if missing, a smaller ext4 image is built, see --small)
  --v2 FILE         a later version of the image for the seeded restore (default:
                    $BOOTCAST_CACHE/bench-store/v2.img if it exists; "none" to skip)
  --small           use (and build once) a 512 MiB ext4 image of system files in
                    $BOOTCAST_CACHE/bench-restore/small.img instead of the store bench's image
  --threads N       passed to `bootcast image export --threads`
  --skip-casync     skip the casync rows (e.g. for a quick run)
  -h, --help

environment:
  BOOTCAST        binary to bench (default <repo>/target/x86_64-unknown-linux-gnu/release/bootcast)
  BOOTCAST_CACHE  cache dir (default <repo>/.cache); scratch in $BOOTCAST_CACHE/bench-restore
  NGINX           nginx binary (default: `nginx` on PATH, else Debian's package fetched with
                  `apt-get download` and unpacked under bench-restore/pkgs, never installed)
EOF
}

RUNS=3
IMAGE=""
V2ARG=""
SMALL=0
THREADS=""
SKIP_CS=0
while [[ $# -gt 0 ]]; do
	case "$1" in
	--runs) RUNS=${2:?--runs needs N}; shift 2 ;;
	--runs=*) RUNS=${1#*=}; shift ;;
	--image) IMAGE=${2:?--image needs FILE}; shift 2 ;;
	--image=*) IMAGE=${1#*=}; shift ;;
	--v2) V2ARG=${2:?--v2 needs FILE}; shift 2 ;;
	--v2=*) V2ARG=${1#*=}; shift ;;
	--small) SMALL=1; shift ;;
	--threads) THREADS=${2:?--threads needs N}; shift 2 ;;
	--threads=*) THREADS=${1#*=}; shift ;;
	--skip-casync) SKIP_CS=1; shift ;;
	-h | --help) usage; exit 0 ;;
	*) echo "run.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
	esac
done
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: --runs must be a positive integer" >&2; exit 2; }

REPO=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../.." && pwd)
CACHE=${BOOTCAST_CACHE:-$REPO/.cache}
B=$CACHE/bench-restore
BOOTCAST=${BOOTCAST:-$REPO/target/x86_64-unknown-linux-gnu/release/bootcast}
CHUNK_SIZES=8192:32768:131072 # bootcast's default 8K:32K:128K, for casync

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { printf 'run.sh: FAIL: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
need() { command -v "$1" >/dev/null 2>&1 || die "missing tool: $1 ($2)"; }
store_bytes() { find "$1" -type f -printf '%s\n' | awk '{ s += $1 } END { printf "%d", s }'; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
warm() { cat "$@" >/dev/null; }

need curl curl; need zstd zstd; need python3 python3; need cmp diffutils
[[ $SKIP_CS -eq 1 ]] || need casync "apt-get install casync"
[[ -x $BOOTCAST ]] || die "no bootcast binary at $BOOTCAST (cargo build --release --locked)"
"$BOOTCAST" image export --help 2>/dev/null | grep -q -- '--from' ||
	die "$BOOTCAST has no \`image export --from\` (stale build? cargo build --release --locked)"

mkdir -p "$B"

# ---------------------------------------------------------------------------------------------
# test data: the store bench's image, else a smaller one built the same way (mke2fs -d of real
# system files, fixed UUID and hash seed; no mount)
build_small() { # build_small OUT SIZE_MIB
	need mke2fs e2fsprogs
	local out=$1 size=$2 src=$B/small-src
	rm -rf "$src"
	mkdir -p "$src"
	log "data: copying ~$((size * 6 / 10)) MiB of system files into $src"
	python3 - "$src" $((size * 1024 * 1024 * 6 / 10)) <<'PY'
import os, shutil, stat, sys
dst, budget = sys.argv[1], int(sys.argv[2])
total = 0
for root in ("/usr/bin", "/usr/sbin", "/usr/lib/x86_64-linux-gnu", "/usr/share", "/usr/lib"):
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for fn in sorted(filenames):
            p = os.path.join(dirpath, fn)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if os.path.lexists(dst + p) or not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                continue
            if stat.S_ISREG(st.st_mode) and (st.st_size > (64 << 20) or total + st.st_size > budget):
                continue
            os.makedirs(dst + dirpath, exist_ok=True)
            try:
                if stat.S_ISLNK(st.st_mode):
                    os.symlink(os.readlink(p), dst + p)
                else:
                    shutil.copyfile(p, dst + p)
                    total += st.st_size
            except OSError:
                continue
        if total >= budget - (1 << 20):
            sys.exit(0)
PY
	E2FSPROGS_FAKE_TIME=1717200000 mke2fs -q -F -t ext4 -b 4096 -L bench-restore \
		-U 6f1c2a9e-4b7d-4e55-9a3c-b00ca57e0002 -E hash_seed=3d2f0b6c-8e1a-4c9b-a7f4-5e6d7c8b9a02 \
		-d "$src" "$out.tmp" "${size}M"
	e2fsck -fn "$out.tmp" >/dev/null 2>&1 || die "e2fsck of the small image failed"
	mv "$out.tmp" "$out"
	rm -rf "$src"
}

if [[ -z $IMAGE && $SMALL -eq 0 && -f $CACHE/bench-store/v1.img ]]; then
	IMAGE=$CACHE/bench-store/v1.img
	[[ -z $V2ARG && -f $CACHE/bench-store/v2.img ]] && V2ARG=$CACHE/bench-store/v2.img
elif [[ -z $IMAGE ]]; then
	IMAGE=$B/small.img
	if [[ ! -f $IMAGE ]]; then
		[[ $SMALL -eq 1 ]] || log "data: $CACHE/bench-store/v1.img missing (bench/store/run.sh builds it); building a 512 MiB image"
		build_small "$IMAGE" 512
	fi
fi
[[ -f $IMAGE ]] || die "no image $IMAGE"
V2=""
[[ -n $V2ARG && $V2ARG != none ]] && { [[ -f $V2ARG ]] || die "no v2 image $V2ARG"; V2=$V2ARG; }
SIZE=$(stat -c %s "$IMAGE")
[[ -z $V2 || $(stat -c %s "$V2") -eq $SIZE ]] || die "$V2 and $IMAGE differ in size"
log "image: $IMAGE ($SIZE bytes); v2: ${V2:-none}; runs: $RUNS"

# ---------------------------------------------------------------------------------------------
# nginx (peer HTTP server for casync and curl)
NGINX=${NGINX:-$(command -v nginx || true)}
if [[ -z $NGINX ]]; then
	NGINX=$B/pkgs/usr/sbin/nginx
	if [[ ! -x $NGINX ]]; then
		log "nginx: apt-get download nginx (unpacked in $B/pkgs, not installed)"
		mkdir -p "$B/pkgs/deb"
		(cd "$B/pkgs/deb" && apt-get download nginx >/dev/null 2>&1) || die "apt-get download nginx failed"
		debs=("$B"/pkgs/deb/nginx_*.deb)
		dpkg-deb -x "${debs[0]}" "$B/pkgs"
	fi
fi
"$NGINX" -v >/dev/null 2>&1 || die "nginx at $NGINX does not run"

# ---------------------------------------------------------------------------------------------
# scratch, processes, cleanup
W=$(mktemp -d "$B/work.XXXXXX")
chmod 755 "$W" # nginx workers may run as another user
PIDS=()
cleanup() {
	local p
	for p in "${PIDS[@]}"; do
		kill "$p" 2>/dev/null || true
	done
	for p in "${PIDS[@]}"; do
		wait "$p" 2>/dev/null || true
	done
	rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# snapshot the binary: the one in target/ may be rebuilt while the bench runs
cp "$BOOTCAST" "$W/bootcast"
log "bootcast: $BOOTCAST ($(date -r "$BOOTCAST" '+%F %T'), sha256 $(sha256sum "$BOOTCAST" | cut -c1-16))"
BC=$W/bootcast
RES=$W/results.txt
: >"$RES"
put() { printf '%s=%s\n' "$1" "$2" >>"$RES"; }

# run NAME CMD... : stdout/stderr to $W/logs/NAME.{out,err}; wall seconds in LAST_S
mkdir -p "$W/logs"
LAST_S=""
run() {
	local name=$1; shift
	local t0 t1 rc=0
	t0=$(now)
	"$@" >"$W/logs/$name.out" 2>"$W/logs/$name.err" || rc=$?
	t1=$(now)
	if [[ $rc -ne 0 ]]; then
		{
			echo "run.sh: FAIL: step '$name' exited with status $rc"
			echo "  command: $*"
			echo "  --- stdout ---"; tail -20 "$W/logs/$name.out" | sed 's/^/  /'
			echo "  --- stderr ---"; tail -20 "$W/logs/$name.err" | sed 's/^/  /'
		} >&2
		exit 1
	fi
	LAST_S=$(elapsed "$t0" "$t1")
}

verify() { # verify OUT REF
	cmp "$1" "$2" >/dev/null 2>&1 || {
		cmp "$1" "$2" 2>&1 | head -3 >&2 || true
		die "output $1 differs from $2"
	}
}

json_field() { # json_field FILE FIELD
	python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2" ||
		die "cannot read field '$2' from $1: $(head -c 400 "$1")"
}

wait_http() { # wait_http URL PID LOG: until URL answers (any status), or the process died
	local i
	for i in $(seq 1 150); do
		kill -0 "$2" 2>/dev/null || die "server exited at start: $(tail -5 "$3")"
		curl -s -o /dev/null "$1" && return 0
		sleep 0.2
	done
	die "no answer from $1 after 30 s: $(tail -5 "$3")"
}

metric() { # metric URL NAME: value of an unlabelled Prometheus counter
	curl -sf "$1/metrics" | awk -v n="$2" '$1 == n { printf "%d", $2; f = 1 } END { if (!f) print 0 }'
}

# timed TOOL_KEY RUN OUT CMD...: runs CMD (writing OUT), then a timed `sync OUT`, verifies OUT
# against $REF, stores KEY_rRUN_s and KEY_rRUN_sync_s, removes OUT's directory.
REF=$IMAGE
timed() {
	local key=$1 i=$2 out=$3; shift 3
	run "${key}_r$i" "$@"
	local t=$LAST_S
	run "${key}_r${i}_sync" sync "$out"
	local ts=$LAST_S
	put "${key}_r${i}_s" "$t"
	put "${key}_r${i}_sync_s" "$ts"
	log "$key run $i: ${t}s + sync ${ts}s"
	verify "$out" "$REF"
	rm -rf "$(dirname "$out")"
}

log "warming page cache: $IMAGE ${V2}"
warm "$IMAGE" ${V2:+"$V2"}
put load_start "$(cut -d' ' -f1 /proc/loadavg)"
put uptime_start "$(uptime | sed 's/^ *//')"

# ---------------------------------------------------------------- bootcast: ingest, serve
D=$W/bc-data
run bc_ingest "$BC" --data "$D" image add demo "$IMAGE" --json
V1VER=$(json_field "$W/logs/bc_ingest.out" version)
put bc_ingest_s "$LAST_S"
log "bootcast ingest: ${LAST_S}s (version $V1VER)"
if [[ -n $V2 ]]; then
	run bc_ingest_v2 "$BC" --data "$D" image add demo "$V2" --json
	V2VER=$(json_field "$W/logs/bc_ingest_v2.out" version)
	log "bootcast ingest v2: ${LAST_S}s (version $V2VER)"
fi
put bc_store_bytes "$(store_bytes "$D/store")"
BC_PORT=$(free_port)
BC_URL=http://127.0.0.1:$BC_PORT
"$BC" --data "$D" serve --http "127.0.0.1:$BC_PORT" --tftp off >"$W/logs/bc_serve.out" 2>"$W/logs/bc_serve.err" &
PIDS+=($!)
BC_PID=$!
for _ in $(seq 1 150); do
	grep -q '^bootcast: ready' "$W/logs/bc_serve.err" && break
	kill -0 "$BC_PID" 2>/dev/null || die "bootcast serve exited: $(tail -5 "$W/logs/bc_serve.err")"
	sleep 0.2
done
grep -q '^bootcast: ready' "$W/logs/bc_serve.err" || die "bootcast serve not ready after 30 s"
wait_http "$BC_URL/healthz" "$BC_PID" "$W/logs/bc_serve.err"
# images are private: the export sends the server's API token, as staff would
BOOTCAST_TOKEN=$(cat "$D/api-token")
export BOOTCAST_TOKEN
log "bootcast serve: $BC_URL (pid $BC_PID)"

# ---------------------------------------------------------------- casync store, zstd file, nginx
WWW=$W/www
mkdir -p "$WWW"
if [[ $SKIP_CS -eq 0 ]]; then
	run cs_make casync --store="$WWW/store" --chunk-size="$CHUNK_SIZES" make "$W/x.caibx" "$IMAGE"
	put cs_make_s "$LAST_S"
	log "casync make: ${LAST_S}s"
	put cs_store_bytes "$(store_bytes "$WWW/store")"
fi
run zstd_compress sh -c 'zstd -q -1 -T0 -c "$1" >"$2"' zstd "$IMAGE" "$WWW/image.zst"
put zstd_compress_s "$LAST_S"
put zstd_bytes "$(stat -c %s "$WWW/image.zst")"
log "zstd -1 -T0: ${LAST_S}s"
chmod -R a+rX "$WWW"

NG=$W/nginx
mkdir -p "$NG/tmp"
NG_PORT=$(free_port)
NG_URL=http://127.0.0.1:$NG_PORT
cat >"$NG/nginx.conf" <<EOF
user $(id -un) $(id -gn);
worker_processes auto;
pid $NG/nginx.pid;
error_log $NG/error.log;
events { worker_connections 1024; }
http {
	sendfile on;
	tcp_nopush on;
	access_log off;
	default_type application/octet-stream;
	client_body_temp_path $NG/tmp/body;
	proxy_temp_path $NG/tmp/proxy;
	fastcgi_temp_path $NG/tmp/fastcgi;
	uwsgi_temp_path $NG/tmp/uwsgi;
	scgi_temp_path $NG/tmp/scgi;
	server {
		listen 127.0.0.1:$NG_PORT;
		root $WWW;
	}
}
EOF
"$NGINX" -p "$NG" -c "$NG/nginx.conf" -e "$NG/error.log" -g 'daemon off;' >"$W/logs/nginx.out" 2>"$W/logs/nginx.err" &
PIDS+=($!)
NG_PID=$!
wait_http "$NG_URL/image.zst" "$NG_PID" "$W/logs/nginx.err"
log "nginx: $NG_URL (pid $NG_PID)"

# servers' data in the page cache, as the image is
find "$D" "$WWW" -type f -exec cat {} + >/dev/null

# ---------------------------------------------------------------- timed restores
EXPORT_ARGS=(--json)
[[ -n $THREADS ]] && EXPORT_ARGS+=(--threads "$THREADS")
for i in $(seq 1 "$RUNS"); do
	# one round per run, tools interleaved, so a load spike hits all of them alike
	mkdir -p "$W/out-bc-$i"
	timed bc "$i" "$W/out-bc-$i/out.img" \
		"$BC" image export "demo@$V1VER" "$W/out-bc-$i/out.img" --from "$BC_URL" "${EXPORT_ARGS[@]}"

	if [[ $SKIP_CS -eq 0 ]]; then
		mkdir -p "$W/out-cs-$i"
		timed cs "$i" "$W/out-cs-$i/out.img" \
			casync --store="$NG_URL/store/" --reflink=no --hardlink=no --seed-output=no \
			extract "$W/x.caibx" "$W/out-cs-$i/out.img"
	fi

	mkdir -p "$W/out-zs-$i"
	timed zs "$i" "$W/out-zs-$i/out.img" \
		bash -c 'set -o pipefail; curl -sSf "$1" | zstd -d -q -o "$2"' curlzstd "$NG_URL/image.zst" "$W/out-zs-$i/out.img"
done

if [[ -n $V2 ]]; then
	REF=$V2
	for i in $(seq 1 "$RUNS"); do
		mkdir -p "$W/out-bs-$i"
		cp --sparse=always "$IMAGE" "$W/out-bs-$i/out.img"
		sync "$W/out-bs-$i/out.img"
		warm "$W/out-bs-$i/out.img"
		before=$(metric "$BC_URL" bootcast_chunk_bytes_served_total)
		timed bs "$i" "$W/out-bs-$i/out.img" \
			"$BC" image export "demo@$V2VER" "$W/out-bs-$i/out.img" --seed "$W/out-bs-$i/out.img" \
			--from "$BC_URL" "${EXPORT_ARGS[@]}"
		put "bs_r${i}_served" $(($(metric "$BC_URL" bootcast_chunk_bytes_served_total) - before))
	done
fi
put load_end "$(cut -d' ' -f1 /proc/loadavg)"
put uptime_end "$(uptime | sed 's/^ *//')"

# ---------------------------------------------------------------- report
python3 - "$RES" "$B/result.json" "$IMAGE" "$SIZE" "$RUNS" "$BOOTCAST" "${V2:-}" <<'PY'
import json, sys, time
res_path, out_path, image, size, runs, binary, v2 = sys.argv[1:8]
size, runs = int(size), int(runs)
r = {}
for line in open(res_path):
    k, v = line.rstrip("\n").split("=", 1)
    try:
        r[k] = float(v) if "." in v else int(v)
    except ValueError:
        r[k] = v
M = 1e6
tools = [("bc", "bootcast image export --from (HTTP, batch)"),
         ("cs", "casync extract (HTTP store, nginx)"),
         ("zs", "curl | zstd -d (one .zst, nginx)"),
         ("bs", "bootcast v1->v2 in place (--seed target)")]
best = {}
rows = []
for key, label in tools:
    runs_ = [(r[f"{key}_r{i}_s"], r[f"{key}_r{i}_sync_s"]) for i in range(1, runs + 1) if f"{key}_r{i}_s" in r]
    if not runs_:
        continue
    t, s = min(runs_, key=lambda x: x[0] + x[1])
    best[key] = {"tool_s": t, "sync_s": s, "total_s": t + s,
                 "all_total_s": [round(a + b, 3) for a, b in runs_]}
    rows.append([label, f"{t:.2f}", f"{s:.2f}", f"{t + s:.2f}", f"{size / M / (t + s):.1f}",
                 " ".join(f"{a + b:.2f}" for a, b in runs_)])
hdr = ["restore (to a new file unless noted)", "tool s", "sync s", "total s", "MB/s", f"all {runs} runs, total s"]
w = [max(len(str(x)) for x in col) for col in zip(hdr, *rows)]
fmt = lambda row: "  ".join(str(c).ljust(w[i]) if i == 0 else str(c).rjust(w[i]) for i, c in enumerate(row))
print()
print(f"bootcast restore bench: {image}, {size / M:.1f} MB, best of {runs}, loopback HTTP")
print(f"served: bootcast store {r['bc_store_bytes'] / M:.2f} MB" + (" (v1 + v2)" if v2 else "")
      + (f", casync store {r['cs_store_bytes'] / M:.2f} MB" if "cs_store_bytes" in r else "")
      + f", image.zst {r['zstd_bytes'] / M:.2f} MB")
print(f"load: {r['uptime_start']}  ->  {r['uptime_end']}")
if max(float(r["load_start"]), float(r["load_end"])) > 0.5:
    print(f"WARNING: machine not idle (1-min load {r['load_start']} at start, {r['load_end']} at end): timings are noisy")
print(fmt(hdr)); print("-" * len(fmt(hdr)))
for row in rows:
    print(fmt(row))
print("MB/s = image size / total s (MB = 10^6 bytes); total = tool + a timed `sync OUT` after it "
      "(bootcast fsyncs the image itself, casync and zstd do not).")
if "bs" in best:
    served = [r[f"bs_r{i}_served"] for i in range(1, runs + 1) if f"bs_r{i}_served" in r]
    print(f"seeded v1->v2: chunk bytes served per run (server /metrics): {', '.join(f'{x / M:.2f} MB' for x in served)}")

ratios = {}
print()
print("speedups (peer total s / bootcast total s; > 1: bootcast faster; issue goal vs casync: >= 3):")
for key, name in (("cs", "casync"), ("zs", "curl | zstd -d")):
    if key in best and "bc" in best:
        x = best[key]["total_s"] / best["bc"]["total_s"]
        y = best[key]["tool_s"] / best["bc"]["tool_s"]
        ratios[f"bootcast_vs_{key}"] = x
        ratios[f"bootcast_vs_{key}_nosync"] = y
        print(f"  bootcast vs {name:<16} {x:.2f}x   (without the syncs: {y:.2f}x)")
if "bs" in best and "bc" in best:
    x = best["bc"]["total_s"] / best["bs"]["total_s"]
    ratios["seeded_vs_full"] = x
    print(f"  bootcast seeded v1->v2 vs full restore {x:.2f}x")
json.dump({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "bootcast": binary, "image": image,
           "image_size": size, "v2": v2 or None, "runs": runs, "best": best, "ratios": ratios, "raw": r},
          open(out_path, "w"), indent=1)
print(f"\nwritten {out_path}")
PY

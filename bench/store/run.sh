#!/usr/bin/env bash
# Store benchmark: bootcast ingest/export vs casync vs plain zstd on a realistic
# 2 GiB ext4 image (v1) and a "monthly update" of it (v2, ~5 % of used bytes changed).
# See bench/README.md. Test data is built once into $CACHE/bench-store and reused.
set -euo pipefail

usage() {
	cat <<'EOF'
usage: bench/store/run.sh [options]

  --chunk-sizes MIN:AVG:MAX  chunker sizes for `bootcast store init` (and casync --chunk-size)
  --level N                  zstd level for `bootcast store init`
  --sweep                    only bootcast ingest v1+v2 for chunk sizes {8K:32K:128K,16K:64K:256K,
                             32K:128K:512K} x levels {1,3}
  --skip-bootcast            skip every bootcast step (table shows n/a)
  --skip-casync              skip every casync step
  --rebuild-data             rebuild v1.img/v2.img even if cached
  -h, --help

environment:
  BOOTCAST        binary to bench (default <repo>/target/x86_64-unknown-linux-gnu/release/bootcast)
  BOOTCAST_CACHE  cache dir (default <repo>/.cache); data lives in $BOOTCAST_CACHE/bench-store
  BENCH_FRESH_FS  1 (default, as root): chunk stores go to a freshly made ext4 on a loop
                  device, so no run pays for inodes another run just deleted; 0: use the cache dir
EOF
}

CHUNK_SIZES=""
LEVEL=""
SWEEP=0
SKIP_BC=0
SKIP_CS=0
REBUILD=0
while [[ $# -gt 0 ]]; do
	case "$1" in
	--chunk-sizes) CHUNK_SIZES=${2:?--chunk-sizes needs MIN:AVG:MAX}; shift 2 ;;
	--chunk-sizes=*) CHUNK_SIZES=${1#*=}; shift ;;
	--level) LEVEL=${2:?--level needs N}; shift 2 ;;
	--level=*) LEVEL=${1#*=}; shift ;;
	--sweep) SWEEP=1; shift ;;
	--skip-bootcast) SKIP_BC=1; shift ;;
	--skip-casync) SKIP_CS=1; shift ;;
	--rebuild-data) REBUILD=1; shift ;;
	-h | --help) usage; exit 0 ;;
	*) echo "run.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
	esac
done

REPO=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../.." && pwd)
CACHE=${BOOTCAST_CACHE:-$REPO/.cache}
B=$CACHE/bench-store
BOOTCAST=${BOOTCAST:-$REPO/target/x86_64-unknown-linux-gnu/release/bootcast}
V1=$B/v1.img
V2=$B/v2.img
DATA_JSON=$B/data.json
W=$B/work             # per-run scratch: bootcast data dir, casync store, outputs, logs
IMG_SIZE=2G
SRC_BUDGET=$((1200 * 1024 * 1024)) # bytes of real files in v1 (~1.2 GiB)
FS_UUID=6f1c2a9e-4b7d-4e55-9a3c-b00ca57e0001
HASH_SEED=3d2f0b6c-8e1a-4c9b-a7f4-5e6d7c8b9a01
export E2FSPROGS_FAKE_TIME=1717200000 # 2024-06-01, fixed superblock/inode times where e2fsprogs honours it

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { printf 'run.sh: FAIL: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
need() { command -v "$1" >/dev/null 2>&1 || die "missing tool: $1 ($2)"; }

# chunk sizes "16K:64K:256K" -> "16384:65536:262144" (for casync)
to_bytes() {
	local out="" part n
	IFS=: read -ra parts <<<"$1"
	for part in "${parts[@]}"; do
		case "$part" in
		*[kK]) n=$((${part%?} * 1024)) ;;
		*[mM]) n=$((${part%?} * 1024 * 1024)) ;;
		*) n=$part ;;
		esac
		out+="${out:+:}$n"
	done
	echo "$out"
}

# file bytes of a store (sum of regular-file sizes; directories not counted, see README)
store_bytes() { find "$1" -type f -printf '%s\n' | awk '{ s += $1 } END { printf "%d", s }'; }
du_bytes() { du -sb "$1" | cut -f1; }

# ---------------------------------------------------------------------------------------------
# results: key=value lines in $RES, turned into table + JSON at the end
RES=""
put() { printf '%s=%s\n' "$1" "$2" >>"$RES"; }

# run NAME CMD... : runs CMD with stdout -> $W/NAME.out, stderr -> $W/NAME.err, stores NAME_s
# (wall seconds) in results; on failure prints the command and its output and exits.
LAST_S=""
run() {
	local name=$1; shift
	local t0 t1 rc=0
	t0=$(now)
	"$@" >"$W/$name.out" 2>"$W/$name.err" || rc=$?
	t1=$(now)
	if [[ $rc -ne 0 ]]; then
		{
			echo "run.sh: FAIL: step '$name' exited with status $rc"
			echo "  command: $*"
			echo "  --- stdout ---"; sed 's/^/  /' "$W/$name.out"
			echo "  --- stderr ---"; sed 's/^/  /' "$W/$name.err"
		} >&2
		exit 1
	fi
	LAST_S=$(elapsed "$t0" "$t1")
	put "${name}_s" "$LAST_S"
	log "$name: ${LAST_S}s"
}

verify() { # verify OUT REF
	cmp "$1" "$2" >/dev/null 2>&1 || {
		cmp "$1" "$2" 2>&1 | head -3 >&2 || true
		die "output $1 differs from $2"
	}
	log "verified $(basename "$1") == $(basename "$2")"
}

warm() { cat "$@" >/dev/null; }

json_field() { # json_field FILE FIELD
	python3 -c 'import json,sys; v=json.load(open(sys.argv[1]))[sys.argv[2]]; print(v)' "$1" "$2" ||
		die "cannot read field '$2' from JSON in $1: $(head -c 400 "$1")"
}

# =============================================================================================
# 1. test data
# =============================================================================================

build_src() { # build_src DIR LIST: copy ~1.2 GiB of real system files into DIR
	python3 - "$1" "$2" "$SRC_BUDGET" <<'PY'
import os, stat, sys
dst, listing, budget = sys.argv[1], sys.argv[2], int(sys.argv[3])
# (root, cap in bytes or None). Filled in order until the budget is used up. Symlinks are
# copied as symlinks (never followed), unreadable/special files are skipped.
roots = [("/usr/bin", None), ("/usr/sbin", None), ("/usr/share", 320 << 20),
         ("/usr/lib/x86_64-linux-gnu", None), ("/usr/lib", None), ("/usr/libexec", None),
         ("/usr/share", None), ("/opt", None)]
total, seen = 0, set()
out = open(listing, "w")
def emit(kind, rel, size=0):
    out.write(f"{kind}\t{size}\t{rel}\n")
made_dirs = set()
def mkdirs(rel_dir):
    parts = rel_dir.strip("/").split("/")
    for i in range(1, len(parts) + 1):
        d = "/" + "/".join(parts[:i])
        if d not in made_dirs:
            made_dirs.add(d)
            os.makedirs(dst + d, exist_ok=True)
            os.chmod(dst + d, 0o755)
            emit("d", d)
for root, cap in roots:
    if not os.path.isdir(root) or total >= budget:
        continue
    used = 0
    stop = False
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        linked_dirs = [n for n in dirnames if os.path.islink(os.path.join(dirpath, n))]
        dirnames[:] = [n for n in dirnames if n not in linked_dirs]
        for fn in sorted(filenames + linked_dirs):
            p = os.path.join(dirpath, fn)
            if p in seen:
                continue
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if stat.S_ISLNK(st.st_mode):
                try:
                    target = os.readlink(p)
                except OSError:
                    continue
                seen.add(p)
                mkdirs(dirpath)
                os.symlink(target, dst + p)
                emit("l", p)
                continue
            if not stat.S_ISREG(st.st_mode) or st.st_size > (96 << 20):
                continue
            if total + st.st_size > budget or (cap is not None and used + st.st_size > cap):
                if total >= budget - (1 << 20) or (cap is not None and used >= cap - (1 << 20)):
                    stop = True
                    break
                continue
            try:
                with open(p, "rb") as f:
                    data = f.read()
            except OSError:
                continue
            seen.add(p)
            mkdirs(dirpath)
            with open(dst + p, "wb") as g:
                g.write(data)
            os.chmod(dst + p, stat.S_IMODE(st.st_mode) & 0o7777)
            os.utime(dst + p, ns=(st.st_mtime_ns, st.st_mtime_ns))
            total += len(data); used += len(data)
            emit("f", p, len(data))
        if stop:
            break
out.close()
print(f"copied {total} bytes ({total / 2**30:.3f} GiB)", file=sys.stderr)
PY
}

plan_v2() { # plan_v2 STAGE SRC LIST: choose and stage the v2 changes (see README)
	python3 - "$@" <<'PY'
import glob, json, os, random, re, stat, sys
stage, src, listing = sys.argv[1:4]
rng = random.Random(20240601)
MiB = 1 << 20
BUDGET_INPLACE = 13 * MiB   # bytes overwritten inside existing files, at their blocks
BUDGET_REPLACE = 32 * MiB   # size of files replaced by a new version (rm + write)
BUDGET_ADD = 16 * MiB       # new files (a new "package")
BUDGET_DELETE = 8 * MiB     # files removed
safe = re.compile(r"^[A-Za-z0-9._+/@,=-]+$")

files, dirs, v1_paths = [], set(), set()
for line in open(listing):
    kind, size, path = line.rstrip("\n").split("\t", 2)
    v1_paths.add(path)
    if kind == "d":
        dirs.add(path)
    elif kind == "f":
        files.append((path, int(size)))

def walk(roots, exclude):
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            dirnames.sort()
            for fn in sorted(filenames):
                p = os.path.join(dirpath, fn)
                if p in exclude or not safe.match(p):
                    continue
                try:
                    st = os.lstat(p)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode) and 0 < st.st_size <= 32 * MiB:
                    yield p, st

# --- donor content: real files that are not in v1 (new code/data for rewritten blocks) ---
class Donor:
    roots = ["/usr/lib/llvm-14", "/usr/lib/jvm", "/usr/lib/gcc", "/usr/lib/google-cloud-sdk",
             "/opt", "/usr/include", "/usr/lib", "/usr/share", "/usr/local"]
    def __init__(self, exclude):
        cands = [p for p, st in walk([r for r in self.roots if os.path.isdir(r)], exclude)
                 if st.st_size >= 4096]
        cands = sorted(set(cands))
        rng.shuffle(cands)
        self.cands, self.buf, self.used = iter(cands), b"", set()
    def take(self, n):
        while len(self.buf) < n:
            p = next(self.cands)  # StopIteration = not enough donor data on this machine
            try:
                with open(p, "rb") as f:
                    self.buf += f.read()
                self.used.add(p)
            except OSError:
                pass
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

# --- additions: a new package: real files from a tree absent from v1 ---
add_roots = sorted(glob.glob("/usr/lib/python3.*")) + ["/usr/lib/python3", "/usr/include",
            "/usr/lib/llvm-14", "/usr/share"]
adds, add_total = [], 0
for p, st in walk([r for r in add_roots if os.path.isdir(r)], v1_paths):
    if add_total >= BUDGET_ADD:
        break
    if st.st_size > 4 * MiB:
        continue
    adds.append((p, st.st_size, stat.S_IMODE(st.st_mode)))
    add_total += st.st_size
donor = Donor(v1_paths | {a[0] for a in adds})

# --- choose files for in-place rewrite / replacement / deletion ---
cands = [(p, s) for p, s in files if 64 * 1024 <= s <= 16 * MiB and safe.match(p)]
rng.shuffle(cands)
inplace, replace, delete = [], [], []
t_in = t_rep = t_del = 0
for p, s in cands:
    if t_in < BUDGET_INPLACE:
        spans = []
        for _ in range(rng.randint(1, 3)):
            ln = rng.randint(4096, min(512 * 1024, s // 2))
            off = rng.randrange(0, s - ln)
            spans.append((off, ln))
        spans.sort()
        merged = []
        for off, ln in spans:  # drop overlaps
            if merged and off < merged[-1][0] + merged[-1][1]:
                continue
            merged.append((off, ln))
        inplace.append({"path": p, "size": s, "spans": merged})
        t_in += sum(ln for _, ln in merged)
    elif t_rep < BUDGET_REPLACE:
        replace.append((p, s)); t_rep += s
    elif t_del < BUDGET_DELETE:
        delete.append((p, s)); t_del += s
    else:
        break

os.makedirs(stage, exist_ok=True)
ops = []  # debugfs -w commands

# in-place spans: donor bytes, written at the file's physical blocks by apply_inplace
with open(os.path.join(stage, "inplace.bin"), "wb") as f:
    for e in inplace:
        e["stage"] = []
        for off, ln in e["spans"]:
            e["stage"].append(f.tell())
            f.write(donor.take(ln))
        ops.append(f"sif {e['path']} mtime 20240601120000")
json.dump(inplace, open(os.path.join(stage, "inplace.json"), "w"))
with open(os.path.join(stage, "extents.cmd"), "w") as f:
    for e in inplace:
        f.write(f"ex {e['path']}\n")

# replaced files: a new version of the real file
def new_version(d):
    if rng.random() < 0.25:                       # rebuilt from scratch: all new content
        return donor.take(max(4096, int(len(d) * rng.uniform(0.8, 1.2))))
    out = bytearray(d)
    for _ in range(rng.randint(1, 4)):            # rewritten regions
        ln = rng.randint(4096, max(4096, min(256 * 1024, len(out) // 4)))
        off = rng.randrange(0, max(1, len(out) - ln))
        out[off:off + ln] = donor.take(ln)
    for _ in range(rng.randint(1, 3)):            # small insertions: shift what follows
        pos = rng.randrange(0, len(out) + 1)
        out[pos:pos] = donor.take(rng.randint(16, 512))
    if rng.random() < 0.3:                        # grown at the end
        out += donor.take(rng.randint(1024, 64 * 1024))
    return bytes(out)

rep_new = 0
for i, (p, s) in enumerate(replace):
    with open(src + p, "rb") as f:
        d = f.read()
    nd = new_version(d)
    rep_new += len(nd)
    sp = os.path.join(stage, f"rep{i:05d}")
    with open(sp, "wb") as f:
        f.write(nd)
    os.chmod(sp, os.stat(src + p).st_mode & 0o7777)
    d_, name = p.rsplit("/", 1)
    ops += [f"rm {p}", f"cd {d_ or '/'}", f"write {sp} {name}"]

for p, s in delete:
    ops.append(f"rm {p}")

new_dirs = set()
for i, (p, s, mode) in enumerate(adds):
    parent = p.rsplit("/", 1)[0]
    parts = parent.strip("/").split("/")
    for k in range(1, len(parts) + 1):
        dd = "/" + "/".join(parts[:k])
        if dd not in dirs and dd not in new_dirs:
            new_dirs.add(dd)
            ops.append(f"mkdir {dd}")
    sp = os.path.join(stage, f"add{i:05d}")
    with open(p, "rb") as f, open(sp, "wb") as g:
        g.write(f.read())
    os.chmod(sp, mode)
    ops += [f"cd {parent}", f"write {sp} {p.rsplit('/', 1)[1]}"]

with open(os.path.join(stage, "ops.cmd"), "w") as f:
    f.write("\n".join(ops) + "\n")
summary = {
    "inplace_files": len(inplace), "inplace_bytes": t_in,
    "replaced_files": len(replace), "replaced_old_bytes": t_rep, "replaced_new_bytes": rep_new,
    "added_files": len(adds), "added_dirs": len(new_dirs), "added_bytes": add_total,
    "deleted_files": len(delete), "deleted_bytes": t_del,
    "donor_files": len(donor.used),
}
json.dump(summary, open(os.path.join(stage, "plan.json"), "w"))
print(json.dumps(summary), file=sys.stderr)
PY
}

apply_inplace() { # apply_inplace STAGE IMG EXTENTS_OUT: write the in-place spans at the files' blocks
	python3 - "$@" <<'PY'
import json, os, re, sys
stage, img, ex_out = sys.argv[1:4]
BS = 4096
# `debugfs: ex PATH` output, leaf lines: "lvl/max  i/n  lstart - lend  pstart - pend  len"
leaf = re.compile(r"^\s*(\d+)/\s*(\d+)\s+\d+/\s*\d+\s+(\d+)\s*-\s*(\d+)\s+(\d+)\s*-\s*(\d+)\s+\d+")
bmap, cur = {}, None
for line in open(ex_out):
    if line.startswith("debugfs: ex "):
        cur = line.strip()[len("debugfs: ex "):]
        bmap[cur] = {}
        continue
    m = leaf.match(line)
    if cur is not None and m and m.group(1) == m.group(2):
        l0, l1, p0 = int(m.group(3)), int(m.group(4)), int(m.group(5))
        for k in range(l1 - l0 + 1):
            bmap[cur][l0 + k] = p0 + k
inplace = json.load(open(os.path.join(stage, "inplace.json")))
fd = os.open(img, os.O_RDWR)
src = open(os.path.join(stage, "inplace.bin"), "rb")
patched = skipped = 0
for e in inplace:
    blocks = bmap.get(e["path"])
    if not blocks:
        sys.exit(f"no extents for {e['path']} in {ex_out}")
    for (off, ln), soff in zip(e["spans"], e["stage"]):
        src.seek(soff)
        data = src.read(ln)
        pos = 0
        while pos < ln:                 # split at block boundaries, map to physical blocks
            fo = off + pos
            n = min(ln - pos, BS - fo % BS)
            phys = blocks.get(fo // BS)
            if phys is None:            # hole in a sparse file: leave it
                skipped += n
            else:
                os.pwrite(fd, data[pos:pos + n], phys * BS + fo % BS)
                patched += n
            pos += n
os.fsync(fd)
print(f"patched {patched} bytes in place in {len(inplace)} files ({skipped} bytes fell in holes)",
      file=sys.stderr)
PY
}

diff_blocks() { # diff_blocks V1 V2 OUT_BIN -> JSON on stdout
	python3 - "$@" <<'PY'
import json, sys
a_path, b_path, out_path = sys.argv[1:4]
BS, PIECE = 4096, 8 << 20
changed = regions = 0
prev_changed = False
with open(a_path, "rb") as a, open(b_path, "rb") as b, open(out_path, "wb") as out:
    while True:
        x, y = a.read(PIECE), b.read(PIECE)
        if not x and not y:
            break
        if x == y:
            prev_changed = False
            continue
        for o in range(0, max(len(x), len(y)), BS):
            bx, by = x[o:o + BS], y[o:o + BS]
            if bx != by:
                changed += 1
                if not prev_changed:
                    regions += 1
                prev_changed = True
                out.write(by)
            else:
                prev_changed = False
print(json.dumps({"changed_blocks": changed, "changed_bytes": changed * BS, "changed_regions": regions}))
PY
}

build_data() {
	need mke2fs "e2fsprogs"; need debugfs "e2fsprogs"; need e2fsck "e2fsprogs"; need zstd "zstd"
	local t0 t1 src=$B/src stage=$B/v2-stage
	t0=$(now)
	rm -rf "$src" "$stage" "$V1" "$V2" "$DATA_JSON" "$B/changed.bin"
	mkdir -p "$B"
	log "data: copying ~1.2 GiB of system files into $src"
	build_src "$src" "$B/v1-files.tsv"
	log "data: mke2fs -d -> v1.img ($IMG_SIZE)"
	mke2fs -q -F -t ext4 -b 4096 -L bench-root -U "$FS_UUID" -E "hash_seed=$HASH_SEED" \
		-d "$src" "$V1.tmp" "$IMG_SIZE"
	e2fsck -fn "$V1.tmp" >"$B/e2fsck-v1.log" 2>&1 || die "e2fsck v1: $(tail -5 "$B/e2fsck-v1.log")"
	mv "$V1.tmp" "$V1"

	log "data: planning v2 changes"
	plan_v2 "$stage" "$src" "$B/v1-files.tsv"
	cp --sparse=always "$V1" "$V2.tmp"
	debugfs -f "$stage/extents.cmd" "$V2.tmp" >"$stage/extents.out" 2>"$stage/extents.err"
	apply_inplace "$stage" "$V2.tmp" "$stage/extents.out"
	log "data: debugfs -w ($(wc -l <"$stage/ops.cmd") commands)"
	debugfs -w -f "$stage/ops.cmd" "$V2.tmp" >"$stage/ops.out" 2>"$stage/ops.err"
	# debugfs exits 0 even when a command fails: look for error lines
	if grep -v -e '^debugfs ' -e '^$' "$stage/ops.err" | grep -q .; then
		grep -v -e '^debugfs ' -e '^$' "$stage/ops.err" | head -20 >&2
		die "debugfs reported errors (full log: $stage/ops.err)"
	fi
	local fsck=clean
	if ! e2fsck -fn "$V2.tmp" >"$B/e2fsck-v2.log" 2>&1; then
		log "data: e2fsck -fn v2 not clean, running e2fsck -fy"
		fsck=repaired
		local rc=0
		e2fsck -fy "$V2.tmp" >>"$B/e2fsck-v2.log" 2>&1 || rc=$?
		[[ $rc -le 1 ]] || die "e2fsck -fy v2 failed ($rc): $(tail -5 "$B/e2fsck-v2.log")"
		e2fsck -fn "$V2.tmp" >>"$B/e2fsck-v2.log" 2>&1 || die "v2 still inconsistent after e2fsck -fy"
	fi
	mv "$V2.tmp" "$V2"

	log "data: changed 4 KiB blocks v1 -> v2"
	diff_blocks "$V1" "$V2" "$B/changed.bin" >"$B/diff.json"
	local z1 z3 z19 zimg bc fb used
	z1=$(zstd -1 -c "$B/changed.bin" | wc -c)
	z3=$(zstd -3 -c "$B/changed.bin" | wc -c)
	log "data: zstd -1 -T0 size of v1.img"
	zimg=$(zstd -1 -T0 -c "$V1" | wc -c)
	bc=$(dumpe2fs -h "$V1" 2>/dev/null | awk -F: '/^Block count/ { gsub(/ /, "", $2); print $2 }')
	fb=$(dumpe2fs -h "$V1" 2>/dev/null | awk -F: '/^Free blocks/ { gsub(/ /, "", $2); print $2 }')
	used=$(((bc - fb) * 4096))
	t1=$(now)
	python3 - "$DATA_JSON" "$B/diff.json" "$stage/plan.json" "$V1" "$B/v1-files.tsv" \
		"$z1" "$z3" "$zimg" "$used" "$(elapsed "$t0" "$t1")" "$fsck" <<'PY'
import json, os, sys
out, diff, plan, v1, listing, z1, z3, zimg, used, secs, fsck = sys.argv[1:12]
d = json.load(open(diff))
files = [l.split("\t") for l in open(listing)]
d.update({
    "image_size": os.path.getsize(v1),
    "v1_used_bytes": int(used),
    "v1_file_bytes": sum(int(f[1]) for f in files if f[0] == "f"),
    "v1_files": sum(1 for f in files if f[0] == "f"),
    "changed_zstd1": int(z1), "changed_zstd3": int(z3),
    "v1_zstd1_T0_size": int(zimg),
    "generation_seconds": float(secs),
    "v2_fsck": fsck,
    "plan": json.load(open(plan)),
})
d["changed_pct_of_used"] = 100.0 * d["changed_bytes"] / d["v1_used_bytes"]
d["changed_pct_of_file_bytes"] = 100.0 * d["changed_bytes"] / d["v1_file_bytes"]
json.dump(d, open(out, "w"), indent=1)
PY
	rm -rf "$src" "$stage/"rep* "$stage/"add* "$stage/inplace.bin"
	log "data: done in $(elapsed "$t0" "$t1")s"
}

print_data_summary() {
	python3 - "$DATA_JSON" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); p = d["plan"]
M = 1e6
print(f"data: image {d['image_size']/M:.1f} MB, v1 used {d['v1_used_bytes']/M:.1f} MB "
      f"({d['v1_files']} files, {d['v1_file_bytes']/M:.1f} MB), built in {d['generation_seconds']:.0f}s")
print(f"v2:   {p['inplace_files']} files patched in place ({p['inplace_bytes']/M:.1f} MB), "
      f"{p['replaced_files']} replaced ({p['replaced_old_bytes']/M:.1f} -> {p['replaced_new_bytes']/M:.1f} MB), "
      f"{p['added_files']} added ({p['added_bytes']/M:.1f} MB), {p['deleted_files']} deleted "
      f"({p['deleted_bytes']/M:.1f} MB); e2fsck: {d['v2_fsck']}")
print(f"diff: {d['changed_blocks']} changed 4 KiB blocks = {d['changed_bytes']/M:.1f} MB "
      f"({d['changed_pct_of_used']:.2f} % of used, {d['changed_pct_of_file_bytes']:.2f} % of file bytes) in {d['changed_regions']} regions; "
      f"zstd -1 {d['changed_zstd1']/M:.2f} MB, zstd -3 {d['changed_zstd3']/M:.2f} MB")
PY
}

if [[ $REBUILD -eq 1 || ! -f $DATA_JSON || ! -f $V1 || ! -f $V2 ]]; then
	build_data
else
	log "data: reusing $B (use --rebuild-data to rebuild)"
fi
print_data_summary

# =============================================================================================
# 2. runs
# =============================================================================================
if [[ $SKIP_BC -eq 0 ]]; then
	[[ -x $BOOTCAST ]] || die "bootcast binary not found: $BOOTCAST (build it, set BOOTCAST, or --skip-bootcast)"
	"$BOOTCAST" --help 2>&1 | grep -qw image || die "$BOOTCAST --help does not list 'image'"
fi
if [[ $SKIP_CS -eq 0 ]] && ! command -v casync >/dev/null 2>&1; then
	log "casync missing, installing (apt-get install casync)"
	apt-get install -y casync >/dev/null || die "cannot install casync (or use --skip-casync)"
fi

rm -rf "$W"
mkdir -p "$W"
# Stores live on a fresh ext4 (when root): ext4 skips inodes freed in the last minutes when it
# allocates new ones, so a run right after another's `rm -rf` of 60 000 chunk files is
# measurably slower. Nothing with many files is deleted before the end of the run. Exported
# images (one file each) go to the machine's own disk, as a real export would: a loop device
# would double every write.
FS=$W/fs
mkdir -p "$FS"
if [[ ${BENCH_FRESH_FS:-1} == 1 && $EUID -eq 0 ]] && command -v losetup >/dev/null; then
	truncate -s 16G "$W/fs.img"
	mkfs.ext4 -q -F "$W/fs.img"
	mount -o loop "$W/fs.img" "$FS" || die "cannot loop-mount a scratch ext4 (set BENCH_FRESH_FS=0)"
	trap 'umount "$FS" 2>/dev/null; rm -f "$W/fs.img"' EXIT
	log "scratch file system: fresh ext4 on a loop device at $FS"
else
	log "scratch in $FS (not a fresh file system: timings may include ext4 inode-allocation noise)"
fi
if [[ $SKIP_BC -eq 0 ]]; then
	# snapshot the binary: the one in target/ may be rebuilt while the bench runs
	cp "$BOOTCAST" "$W/bootcast"
	log "bootcast: $BOOTCAST ($(date -r "$BOOTCAST" '+%F %T'), sha256 $(sha256sum "$BOOTCAST" | cut -c1-16))"
	BOOTCAST_SRC=$BOOTCAST
	BOOTCAST=$W/bootcast
fi
RES=$W/results.txt
: >"$RES"
D=$FS/bootcast-data
S=$FS/casync-store
DN=0
log "warming page cache: v1.img v2.img"
warm "$V1" "$V2"
# timings are wall clock on a shared machine: record the 1-minute load around the runs
put load_start "$(cut -d' ' -f1 /proc/loadavg)"

bc_init() { # bc_init CHUNK_SIZES LEVEL: a new, empty data dir; store init if parameters given
	DN=$((DN + 1))
	D=$FS/bootcast-data-$DN
	local args=()
	[[ -n $1 ]] && args+=(--chunk-sizes "$1")
	[[ -n $2 ]] && args+=(--level "$2")
	if [[ ${#args[@]} -gt 0 ]]; then
		run bc_store_init "$BOOTCAST" --data "$D" store init "${args[@]}"
	fi
}

bc_ingest() { # stores bc_* results; leaves $W/bc_ingest_v{1,2}.out (JSON)
	run bc_ingest_v1 "$BOOTCAST" --data "$D" image add demo "$V1" --json
	put bc_store_v1 "$(store_bytes "$D/store")"
	put bc_du_v1 "$(du_bytes "$D")"
	put bc_json_stored_v1 "$(json_field "$W/bc_ingest_v1.out" stored_bytes)"
	put bc_json_new_v1 "$(json_field "$W/bc_ingest_v1.out" new_bytes)"
	run bc_ingest_v2 "$BOOTCAST" --data "$D" image add demo "$V2" --json
	put bc_store_v2 "$(store_bytes "$D/store")"
	put bc_du_v2 "$(du_bytes "$D")"
	put bc_json_stored_v2 "$(json_field "$W/bc_ingest_v2.out" stored_bytes)"
	put bc_json_new_v2 "$(json_field "$W/bc_ingest_v2.out" new_bytes)"
}

if [[ $SWEEP -eq 1 ]]; then
	[[ $SKIP_BC -eq 0 ]] || die "--sweep needs bootcast"
	: >"$W/sweep.txt"
	for cs in 8K:32K:128K 16K:64K:256K 32K:128K:512K; do
		for lv in 1 3; do
			log "sweep: chunk sizes $cs level $lv"
			: >"$RES"
			bc_init "$cs" "$lv"
			bc_ingest
			printf 'cs=%s level=%s %s\n' "$cs" "$lv" "$(tr '\n' ' ' <"$RES")" >>"$W/sweep.txt"
		done
	done
	python3 - "$W/sweep.txt" "$DATA_JSON" "$B/sweep.json" <<'PY'
import json, sys
rows = []
d = json.load(open(sys.argv[2]))
size = d["image_size"]
for line in open(sys.argv[1]):
    kv = dict(x.split("=", 1) for x in line.split())
    rows.append(kv)
M = 1e6
print()
print(f"bootcast ingest sweep (image {size/M:.1f} MB; v2 changed regions: zstd -1 {d['changed_zstd1']/M:.2f} MB)")
hdr = f"{'chunk sizes':<16}{'level':>6}{'v1 s':>9}{'v1 MB/s':>9}{'v2 s':>9}{'v2 MB/s':>9}{'store v1 MB':>13}{'store v2 MB':>13}{'v2 new MB':>11}{'new/zstd1':>11}"
print(hdr); print("-" * len(hdr))
out = []
for r in rows:
    t1, t2 = float(r["bc_ingest_v1_s"]), float(r["bc_ingest_v2_s"])
    new2 = int(r["bc_json_new_v2"])
    print(f"{r['cs']:<16}{r['level']:>6}{t1:>9.2f}{size/M/t1:>9.1f}{t2:>9.2f}{size/M/t2:>9.1f}"
          f"{int(r['bc_store_v1'])/M:>13.2f}{int(r['bc_store_v2'])/M:>13.2f}{new2/M:>11.2f}"
          f"{new2/d['changed_zstd1']:>11.2f}")
    out.append({"chunk_sizes": r["cs"], "level": int(r["level"]),
                "ingest_v1_seconds": t1, "ingest_v2_seconds": t2,
                "ingest_v1_mb_s": size / M / t1, "ingest_v2_mb_s": size / M / t2,
                "store_bytes_v1": int(r["bc_store_v1"]), "store_bytes_v2": int(r["bc_store_v2"]),
                "json_stored_bytes_v2": int(r["bc_json_stored_v2"]),
                "v2_new_bytes": new2})
json.dump({"image_size": size, "changed_zstd1": d["changed_zstd1"], "runs": out},
          open(sys.argv[3], "w"), indent=1)
print(f"\nwritten {sys.argv[3]}")
PY
	exit 0
fi

# ---------------------------------------------------------------- bootcast
if [[ $SKIP_BC -eq 0 ]]; then
	bc_init "$CHUNK_SIZES" "$LEVEL"
	bc_ingest
	v1ver=$(json_field "$W/bc_ingest_v1.out" version)
	v2ver=$(json_field "$W/bc_ingest_v2.out" version)
	find "$D" -type f -exec cat {} + >/dev/null

	run bc_export_v1 "$BOOTCAST" --data "$D" image export "demo@$v1ver" "$W/out.img" --json
	verify "$W/out.img" "$V1"; rm -f "$W/out.img"

	run bc_export_v2_seeded "$BOOTCAST" --data "$D" image export "demo@$v2ver" "$W/out2.img" --seed "$V1"
	verify "$W/out2.img" "$V2"; rm -f "$W/out2.img"

	cp --sparse=always "$V1" "$W/out3.img"
	sync "$W/out3.img"
	warm "$W/out3.img"
	run bc_export_v2_inplace "$BOOTCAST" --data "$D" image export "demo@$v2ver" "$W/out3.img" --seed "$W/out3.img"
	verify "$W/out3.img" "$V2"; rm -f "$W/out3.img"
fi

# ---------------------------------------------------------------- casync
if [[ $SKIP_CS -eq 0 ]]; then
	CS_CHUNK=$(to_bytes "${CHUNK_SIZES:-8K:32K:128K}") # bootcast's default: same granularity
	CS=(casync --store="$S" --chunk-size="$CS_CHUNK")
	CSX=(--reflink=no --hardlink=no)
	rm -rf "$S" "$W"/*.caibx
	# bootcast makes its store and outputs durable (syncfs / fsync) before it reports success;
	# casync does not sync at all, so each casync step is followed by a timed sync of what it
	# wrote (the table shows casync alone and casync+sync).
	run cs_ingest_v1 "${CS[@]}" make "$W/v1.caibx" "$V1"
	run cs_ingest_v1_sync sync -f "$S"
	put cs_store_v1 "$(store_bytes "$S")"
	put cs_du_v1 "$(du_bytes "$S")"
	run cs_ingest_v2 "${CS[@]}" make "$W/v2.caibx" "$V2"
	run cs_ingest_v2_sync sync -f "$S"
	put cs_store_v2 "$(store_bytes "$S")"
	put cs_du_v2 "$(du_bytes "$S")"
	find "$S" -type f -exec cat {} + >/dev/null

	run cs_export_v1 "${CS[@]}" "${CSX[@]}" extract "$W/v1.caibx" "$W/cout.img"
	run cs_export_v1_sync sync "$W/cout.img"
	verify "$W/cout.img" "$V1"; rm -f "$W/cout.img"

	run cs_export_v2_seeded "${CS[@]}" "${CSX[@]}" --seed="$V1" extract "$W/v2.caibx" "$W/cout2.img"
	run cs_export_v2_seeded_sync sync "$W/cout2.img"
	verify "$W/cout2.img" "$V2"; rm -f "$W/cout2.img"

	cp --sparse=always "$V1" "$W/cout3.img"
	sync "$W/cout3.img"
	warm "$W/cout3.img"
	# the existing output is used as seed by default (--seed-output=yes)
	run cs_export_v2_inplace "${CS[@]}" "${CSX[@]}" extract "$W/v2.caibx" "$W/cout3.img"
	run cs_export_v2_inplace_sync sync "$W/cout3.img"
	verify "$W/cout3.img" "$V2"; rm -f "$W/cout3.img"
fi

# ---------------------------------------------------------------- zstd reference
# output size was measured once during data generation (data.json: v1_zstd1_T0_size)
run zstd_v1 sh -c 'zstd -q -1 -T0 -c "$1" >/dev/null' zstd "$V1"
# disk reference: 2 GiB written and fsynced where the exports go
run disk_write_2g dd if=/dev/zero of="$W/dd.bin" bs=1M count=2048 conv=fsync status=none
rm -f "$W/dd.bin"

put load_end "$(cut -d' ' -f1 /proc/loadavg)"

# =============================================================================================
# 3. report
# =============================================================================================
python3 - "$RES" "$DATA_JSON" "$B/result.json" "$CHUNK_SIZES" "$LEVEL" "${BOOTCAST_SRC:-none}" <<'PY'
import json, sys, time
res_path, data_path, out_path, cs, level, binary = sys.argv[1:7]
r = {}
for line in open(res_path):
    k, v = line.rstrip("\n").split("=", 1)
    r[k] = float(v) if "." in v else int(v)
d = json.load(open(data_path))
size = d["image_size"]
M = 1e6
g = lambda k: r.get(k)

rows = []  # (operation, tool, key, store_v1, store_v2, added)
for tool, pfx in (("bootcast", "bc"), ("casync", "cs")):
    added = None
    if g(f"{pfx}_store_v2") is not None:
        added = g(f"{pfx}_store_v2") - g(f"{pfx}_store_v1")
    rows.append(("ingest v1", tool, f"{pfx}_ingest_v1_s", g(f"{pfx}_store_v1"), None, None))
    rows.append(("ingest v2", tool, f"{pfx}_ingest_v2_s", None, g(f"{pfx}_store_v2"), added))
order = ["ingest v1", "ingest v2", "export v1", "export v2 seeded (seed=v1.img)",
         "export v2 in place (target=seed)"]
for tool, pfx in (("bootcast", "bc"), ("casync", "cs")):
    rows.append(("export v1", tool, f"{pfx}_export_v1_s", None, None, None))
    rows.append(("export v2 seeded (seed=v1.img)", tool, f"{pfx}_export_v2_seeded_s", None, None, None))
    rows.append(("export v2 in place (target=seed)", tool, f"{pfx}_export_v2_inplace_s", None, None, None))
# casync+sync: the casync step plus the sync that makes its result as durable as bootcast's
for op, tool, key, s1, s2, add in [x for x in rows if x[1] == "casync"]:
    if g(key) is not None and g(key[:-2] + "_sync_s") is not None:
        r[key[:-2] + "_total_s"] = g(key) + g(key[:-2] + "_sync_s")
    rows.append((op, "casync+sync", key[:-2] + "_total_s", None, None, None))
rows.sort(key=lambda x: (order.index(x[0]), x[1]))
rows.append(("zstd -1 -T0 v1.img", "zstd", "zstd_v1_s", None, None, None))

def mb(x): return "" if x is None else f"{x / M:.2f}"
hdr = ["operation", "tool", "seconds", "MB/s", "store after v1 MB", "store after v2 MB", "added by v2 MB"]
table = []
jrows = []
for op, tool, key, s1, s2, add in rows:
    secs = g(key)
    table.append([op, tool, "n/a" if secs is None else f"{secs:.2f}",
                  "n/a" if secs is None else f"{size / M / secs:.1f}", mb(s1), mb(s2), mb(add)])
    jrows.append({"operation": op, "tool": tool, "seconds": secs,
                  "mb_per_s": None if secs is None else size / M / secs,
                  "store_bytes_after_v1": s1, "store_bytes_after_v2": s2, "bytes_added_by_v2": add})
w = [max(len(str(x)) for x in col) for col in zip(hdr, *table)]
fmt = lambda row: "  ".join(str(c).ljust(w[i]) if i < 2 else str(c).rjust(w[i]) for i, c in enumerate(row))
print()
print(f"bootcast store bench: image {size / M:.1f} MB (2 GiB ext4, {d['v1_used_bytes'] / M:.0f} MB used); "
      f"v1->v2 changed {d['changed_bytes'] / M:.1f} MB ({d['changed_pct_of_used']:.2f} % of used, "
      f"{d['changed_regions']} regions); chunk sizes {cs or 'default'}, level {level or 'default'}")
if max(g("load_start") or 0, g("load_end") or 0) > 0.5:
    print(f"WARNING: machine not idle (1-min load {g('load_start')} at start, {g('load_end')} at end): "
          "timings are noisy")
print(fmt(hdr)); print("-" * len(fmt(hdr)))
for row in table:
    print(fmt(row))
print(f"zstd -1 -T0 output for v1.img: {d['v1_zstd1_T0_size'] / M:.2f} MB; "
      f"changed regions of v2: zstd -1 {d['changed_zstd1'] / M:.2f} MB, zstd -3 {d['changed_zstd3'] / M:.2f} MB")
if g("bc_json_new_v2") is not None:
    print(f"bootcast JSON: v1 stored_bytes {g('bc_json_stored_v1') / M:.2f} MB new_bytes {g('bc_json_new_v1') / M:.2f} MB; "
          f"v2 stored_bytes {g('bc_json_stored_v2') / M:.2f} MB new_bytes {g('bc_json_new_v2') / M:.2f} MB")

ratios = {}
print()
def ratio(name, a, b):
    if a is None or b is None or b == 0:
        print(f"  {name:<50} n/a"); ratios[name] = None; return
    ratios[name] = a / b
    print(f"  {name:<50} {a / b:.2f}")
print("ratios (time ratio < 1: bootcast faster; size ratio < 1: bootcast smaller):")
for label, key in (("ingest v1", "ingest_v1_s"), ("ingest v2", "ingest_v2_s"),
                   ("export v1", "export_v1_s"), ("export v2 seeded", "export_v2_seeded_s"),
                   ("export v2 in place", "export_v2_inplace_s")):
    ratio(f"bootcast/casync time, {label}", g("bc_" + key), g("cs_" + key))
    ratio(f"bootcast/(casync+sync) time, {label}", g("bc_" + key), g("cs_" + key[:-2] + "_total_s"))
print("speedups (casync+sync seconds / bootcast seconds; issue goal: ingest and export >= 3):")
for label, key in (("ingest v1", "ingest_v1_s"), ("export v1", "export_v1_s"),
                   ("export v2 seeded", "export_v2_seeded_s")):
    a, b = g("cs_" + key[:-2] + "_total_s"), g("bc_" + key)
    print(f"  {label:<50} " + ("n/a" if a is None or not b else f"{a / b:.2f}x"))
a, b = g("bc_export_v2_seeded_s"), g("bc_export_v1_s")
if a is not None and b:
    print(f"  {'bootcast seeded export vs full export':<50} {b / a:.2f}x faster")
ratio("bootcast/casync store size after v2", g("bc_store_v2"), g("cs_store_v2"))
bc_add = None if g("bc_store_v2") is None else g("bc_store_v2") - g("bc_store_v1")
cs_add = None if g("cs_store_v2") is None else g("cs_store_v2") - g("cs_store_v1")
ratio("bootcast/casync bytes added by v2", bc_add, cs_add)
ratio("bootcast v2 new_bytes / zstd -1 changed regions", g("bc_json_new_v2"), d["changed_zstd1"])
ratio("bootcast v2 new_bytes / zstd -3 changed regions", g("bc_json_new_v2"), d["changed_zstd3"])
ratio("casync v2 added bytes / zstd -1 changed regions", cs_add, d["changed_zstd1"])

print("goals (issue 21):")
def goal(name, value, want, fmt="{:.2f}"):
    if value is None:
        print(f"  {name:<58} n/a"); return
    print(f"  {name:<58} {fmt.format(value)} (goal >= {want}) {'met' if value >= want else 'missed'}")
def per(a, b):
    return None if a is None or not b else a / b
goal("ingest v1: casync make (+sync) s / bootcast s", per(g("cs_ingest_v1_total_s"), g("bc_ingest_v1_s")), 6)
goal("ingest v1: zstd -1 -T0 s / bootcast s", per(g("zstd_v1_s"), g("bc_ingest_v1_s")), 0.7)
goal("export v1: casync extract (+sync) s / bootcast s", per(g("cs_export_v1_total_s"), g("bc_export_v1_s")), 3)
goal("export v1: dd 2 GiB (fsync) s / bootcast s", per(g("disk_write_2g_s"), g("bc_export_v1_s")), 0.7)
goal("v2: casync added MB / bootcast added MB", per(cs_add, bc_add), 1)
ratios["goal_ingest_vs_casync"] = per(g("cs_ingest_v1_total_s"), g("bc_ingest_v1_s"))
ratios["goal_ingest_vs_zstd"] = per(g("zstd_v1_s"), g("bc_ingest_v1_s"))
ratios["goal_export_vs_casync"] = per(g("cs_export_v1_total_s"), g("bc_export_v1_s"))
ratios["goal_export_vs_disk"] = per(g("disk_write_2g_s"), g("bc_export_v1_s"))
ratios["goal_v2_added_vs_casync"] = per(cs_add, bc_add)

json.dump({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "bootcast": binary,
           "chunk_sizes": cs or None, "level": int(level) if level else None,
           "data": d, "rows": jrows, "ratios": ratios, "raw": r},
          open(out_path, "w"), indent=1)
print(f"\nwritten {out_path}")
PY

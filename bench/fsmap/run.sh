#!/usr/bin/env bash
# Used-block capture benchmark: a Windows-like GPT disk (FAT32 ESP + NTFS C:, free space full of
# old random bytes) captured and restored by
#   - bootcast mapped (`image add`: only the used blocks of NTFS and FAT),
#   - bootcast raw (`image add --raw`: every byte),
#   - partclone.ntfs (Debian's partclone: the used blocks of C: in its own image format),
#   - partclone.ntfs | zstd -1 -T0 (as Clonezilla stores it: partclone + a compressor),
# on the same data in the same run, best of N; every restore is checked (ntfsfix -n, every file
# read back with ntfscat/mcopy against its sha256, `cmp` for the raw one). See bench/README.md.
set -euo pipefail

usage() {
	cat <<'EOF'
usage: bench/fsmap/run.sh [options]

  --runs N          timed runs per tool, best capture and best restore kept (default 1)
  --size-gib N      disk size in GiB (default 4): 1 MiB gap, ESP FAT32 100 MiB, NTFS C: up to
                    1 MiB before the end
  --used-mib N      MiB of files on C: (default 1024): half random (incompressible), half real
                    ELF binaries and text files from /usr (compressible), ~20 files
  --rebuild-data    rebuild the disk even if a cached one of the same --size-gib/--used-mib exists
  --no-drop-caches  do not drop the page cache between steps (default as root: drop it, so every
                    tool reads its input from disk); then inputs are read warm (from the page cache)
  --partclone-args "ARGS"
                    extra arguments for every partclone.ntfs run (default "-f 0": no progress
                    refresh interval; with partclone's default of 2 s it idles up to 2 s at the
                    end of every run waiting for its progress thread; "" for partclone's defaults)
  --keep            keep the scratch directory (outputs, stores, logs; and a failed build's
                    files) instead of deleting each output once checked; at 4 GiB ~18 GiB per run
  --install         install the missing tools with apt-get (as root): partclone ntfs-3g gdisk
                    dosfstools mtools zstd
  -h, --help

environment:
  BOOTCAST        binary to bench (default <repo>/target/x86_64-unknown-linux-gnu/release/bootcast)
  BOOTCAST_CACHE  cache dir (default <repo>/.cache); the disk is built once into
                  $BOOTCAST_CACHE/bench-fsmap/win.img, scratch goes to $BOOTCAST_CACHE/bench-fsmap/work.*

disk use (4 GiB disk): the cached disk (4 GiB) + at most ~8 GiB of scratch at a time (the raw
store and the raw restore), less without random data in free space.
EOF
}

RUNS=1
SIZE_GIB=4
USED_MIB=1024
REBUILD=0
DROP=1
KEEP=0
INSTALL=0
PC_ARGS="-f 0"
while [[ $# -gt 0 ]]; do
	case "$1" in
	--runs) RUNS=${2:?--runs needs N}; shift 2 ;;
	--runs=*) RUNS=${1#*=}; shift ;;
	--size-gib) SIZE_GIB=${2:?--size-gib needs N}; shift 2 ;;
	--size-gib=*) SIZE_GIB=${1#*=}; shift ;;
	--used-mib) USED_MIB=${2:?--used-mib needs N}; shift 2 ;;
	--used-mib=*) USED_MIB=${1#*=}; shift ;;
	--rebuild-data) REBUILD=1; shift ;;
	--no-drop-caches) DROP=0; shift ;;
	--partclone-args) PC_ARGS=${2?--partclone-args needs ARGS}; shift 2 ;;
	--partclone-args=*) PC_ARGS=${1#*=}; shift ;;
	--keep) KEEP=1; shift ;;
	--install) INSTALL=1; shift ;;
	-h | --help) usage; exit 0 ;;
	*) echo "run.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
	esac
done
for v in RUNS SIZE_GIB USED_MIB; do
	[[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: --$(tr 'A-Z_' 'a-z-' <<<"$v") must be a positive integer" >&2; exit 2; }
done

REPO=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../.." && pwd)
CACHE=${BOOTCAST_CACHE:-$REPO/.cache}
B=$CACHE/bench-fsmap
BOOTCAST=${BOOTCAST:-$REPO/target/x86_64-unknown-linux-gnu/release/bootcast}
DISK=$B/win.img
META=$B/win.meta   # shell-sourceable: sizes, layout, what the files are
FILES=$B/win.files # part<TAB>path<TAB>bytes<TAB>sha256 of every file put on the disk
DATA_VERSION=1     # bump when the data generator changes: cached disks are rebuilt

MIB=$((1 << 20))
SIZE=$((SIZE_GIB << 30))
ESP_START=$MIB
ESP_LEN=$((100 * MIB))
C_START=$((ESP_START + ESP_LEN))
C_LEN=$((SIZE - C_START - MIB))
USED=$((USED_MIB * MIB))
((C_LEN >= USED + USED / 8 + 64 * MIB)) ||
	{ echo "run.sh: --used-mib $USED_MIB does not fit on C: of a ${SIZE_GIB} GiB disk" >&2; exit 2; }

export MTOOLS_SKIP_CHECK=1

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { printf 'run.sh: FAIL: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
warm() { cat "$@" >/dev/null; }
store_bytes() { find "$1" -type f -printf '%s\n' | awk '{ s += $1 } END { printf "%d", s }'; }

# ---------------------------------------------------------------------------------------------
# tools
TOOLS=(
	"partclone.ntfs partclone"
	"mkntfs ntfs-3g" "ntfscp ntfs-3g" "ntfscat ntfs-3g" "ntfsfix ntfs-3g"
	"sgdisk gdisk"
	"mkfs.vfat dosfstools" "fsck.vfat dosfstools"
	"mcopy mtools" "mmd mtools"
	"zstd zstd"
	"python3 python3" "cmp diffutils" "sha256sum coreutils" "truncate coreutils" "dd coreutils"
)
missing_pkgs=()
missing_cmds=()
for t in "${TOOLS[@]}"; do
	read -r cmd pkg <<<"$t"
	command -v "$cmd" >/dev/null 2>&1 && continue
	missing_cmds+=("$cmd")
	[[ " ${missing_pkgs[*]} " == *" $pkg "* ]] || missing_pkgs+=("$pkg")
done
if [[ ${#missing_cmds[@]} -gt 0 ]]; then
	if [[ $INSTALL -eq 1 ]]; then
		[[ $EUID -eq 0 ]] || die "--install needs root (apt-get install -y ${missing_pkgs[*]})"
		log "installing: ${missing_pkgs[*]}"
		DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing_pkgs[@]}" >&2 ||
			die "apt-get install -y ${missing_pkgs[*]} failed"
		for c in "${missing_cmds[@]}"; do
			command -v "$c" >/dev/null 2>&1 || die "$c still missing after installing ${missing_pkgs[*]}"
		done
	else
		die "missing tools: ${missing_cmds[*]}; install the Debian packages: apt-get install ${missing_pkgs[*]} (or run with --install as root)"
	fi
fi
HAVE_OPENSSL=0
command -v openssl >/dev/null 2>&1 && HAVE_OPENSSL=1
[[ -x $BOOTCAST ]] || die "no bootcast binary at $BOOTCAST (cargo build --release --locked)"
"$BOOTCAST" image add --help 2>/dev/null | grep -q -- '--raw' ||
	die "$BOOTCAST has no \`image add --raw\` (stale build? cargo build --release --locked)"

if [[ $DROP -eq 1 && $EUID -ne 0 ]]; then
	log "not root: the page cache cannot be dropped; inputs are read warm instead"
	DROP=0
fi

mkdir -p "$B"

# =============================================================================================
# test data: win.img, built once
# =============================================================================================

# prand SEED BYTES: pseudo-random bytes on stdout (AES-CTR keyed by SEED: deterministic and fast;
# /dev/urandom when openssl is missing)
prand() {
	if [[ $HAVE_OPENSSL -eq 1 ]]; then
		{ openssl enc -aes-128-ctr -pass "pass:$1" -nosalt -pbkdf2 -iter 1 </dev/zero 2>/dev/null || true; } |
			head -c "$2"
	else
		head -c "$2" /dev/urandom
	fi
}

prand_file() { # prand_file SEED BYTES FILE
	prand "$1" "$2" >"$3"
	[[ $(stat -c %s "$3") -eq $2 ]] || die "short pseudo-random data in $3"
}

# compressible OUTDIR NAME:KIND:BYTES...: files of real system content from /usr, KIND elf
# (ELF binaries and libraries, as DLLs and EXEs) or text (sources, scripts, docs, data files),
# concatenated; already-compressed files are skipped and no content is used twice (so neither
# tool gains from artificial duplicates). Summary on stderr.
compressible() {
	python3 - "$@" <<'PY'
import base64, hashlib, os, random, stat, sys
out, specs = sys.argv[1], [s.split(":") for s in sys.argv[2:]]
SKIP_EXT = (".gz", ".xz", ".bz2", ".zst", ".lz4", ".lzma", ".7z", ".zip", ".jar", ".whl", ".png",
            ".jpg", ".jpeg", ".gif", ".webp", ".woff", ".woff2", ".mo", ".pyc", ".deb")
MAGIC = (b"\x1f\x8b", b"\xfd7zXZ", b"BZh", b"\x28\xb5\x2f\xfd", b"PK\x03\x04", b"\x89PNG",
         b"\xff\xd8\xff", b"GIF8", b"wOF", b"\x04\x22\x4d\x18", b"\x5d\x00\x00")
ROOTS = {"elf": ["/usr/lib/x86_64-linux-gnu", "/usr/bin", "/usr/sbin", "/usr/libexec", "/usr/lib"],
         "text": ["/usr/share", "/usr/include", "/usr/lib"]}
seen_ino, seen_hash = set(), set()

def printable(head):
    if b"\0" in head:
        return False
    bad = sum(1 for c in head if c < 9 or 13 < c < 32)
    return bad * 100 <= len(head)

def candidates(kind):
    for root in ROOTS[kind]:
        for dp, dns, fns in os.walk(root, followlinks=False):
            dns.sort()
            for fn in sorted(fns):
                p = os.path.join(dp, fn)
                try:
                    st = os.lstat(p)
                except OSError:
                    continue
                if not stat.S_ISREG(st.st_mode) or not 4096 <= st.st_size <= (64 << 20):
                    continue
                if (st.st_dev, st.st_ino) in seen_ino or p.lower().endswith(SKIP_EXT):
                    continue
                try:
                    with open(p, "rb") as f:
                        head = f.read(8192)
                except OSError:
                    continue
                if head.startswith(MAGIC):
                    continue
                if (kind == "elf") != head.startswith(b"\x7fELF"):
                    continue
                if kind == "text" and not printable(head):
                    continue
                seen_ino.add((st.st_dev, st.st_ino))
                yield p

gens = {k: candidates(k) for k in ROOTS}
stats = {"elf": [0, 0], "text": [0, 0], "filler": 0}
filler_rng = random.Random(20241206)
for name, kind, size in specs:
    size = int(size)
    with open(os.path.join(out, name), "wb") as f:
        left = size
        while left > 0:
            p = next(gens[kind], None)
            if p is None:  # this machine has no more: text-like filler (base64 of random)
                n = min(left, 4 << 20)
                data = base64.encodebytes(filler_rng.randbytes(n * 3 // 4 + 3))[:n]
                stats["filler"] += len(data)
            else:
                try:
                    with open(p, "rb") as g:
                        data = g.read()
                except OSError:
                    continue
                h = hashlib.sha1(data).digest()
                if h in seen_hash:
                    continue
                seen_hash.add(h)
                data = data[:left]
                stats[kind][0] += 1
                stats[kind][1] += len(data)
            f.write(data)
            left -= len(data)
M = 1e6
print(f"compressible files: {stats['elf'][0]} ELF files ({stats['elf'][1] / M:.1f} MB), "
      f"{stats['text'][0]} text files ({stats['text'][1] / M:.1f} MB), "
      f"filler (base64 of random) {stats['filler'] / M:.1f} MB", file=sys.stderr)
PY
}

build_data() {
	local T=$B/build.tmp
	rm -rf "$T"
	trap '[[ $KEEP -eq 1 ]] || rm -rf "$B/build.tmp"' EXIT # a failed build leaves no 8 GiB behind
	mkdir -p "$T/src"
	log "data: building a ${SIZE_GIB} GiB Windows-like disk with ${USED_MIB} MiB of files on C: in $T"
	[[ $HAVE_OPENSSL -eq 1 ]] || log "data: no openssl: old data from /dev/urandom (not reproducible)"

	# --- the files: ~20 of different sizes on C: (each half split by these fractions, sum 100, so
	# sizes spread over ~10x; the largest of each half takes the rounding rest), interleaved
	local fracs=(22 17 14 12 10 8 7 5 3 2) rhalf=$((USED / 2)) chalf=$((USED - USED / 2))
	local i f sum names=() kinds=() sizes=() specs=() rsum=0 csum=0
	for i in "${!fracs[@]}"; do
		names+=("$(printf 'media%02d.bin' $((i + 1)))"); kinds+=(random)
		sizes+=($((rhalf * fracs[i] / 100)))
		rsum=$((rsum + rhalf * fracs[i] / 100))
		if ((i % 2 == 0)); then
			names+=("$(printf 'lib%02d.dll' $((i / 2 + 1)))"); kinds+=(elf)
		else
			names+=("$(printf 'doc%02d.txt' $((i / 2 + 1)))"); kinds+=(text)
		fi
		sizes+=($((chalf * fracs[(i + 3) % 10] / 100)))
		csum=$((csum + chalf * fracs[(i + 3) % 10] / 100))
	done
	sizes[0]=$((sizes[0] + rhalf - rsum))   # media01.bin: 22 % of the random half
	sizes[15]=$((sizes[15] + chalf - csum)) # doc04.txt: 22 % of the compressible half
	for i in "${!names[@]}"; do
		[[ ${kinds[i]} == random ]] || specs+=("${names[i]}:${kinds[i]}:${sizes[i]}")
	done
	# real content first (one pass over /usr, no content used twice, the ESP's loader included)
	log "data: reading $((chalf / MIB)) MiB of ELF/text files from /usr"
	compressible "$T/src" bootmgfw.efi:elf:$((1536 << 10)) "${specs[@]}" 2>"$T/compressible.log" ||
		die "reading files from /usr: $(cat "$T/compressible.log")"
	log "data: $(tail -1 "$T/compressible.log")"

	# --- ESP: FAT32 over old random bytes, Windows' boot manager, its BCD and the fallback loader
	prand_file bench-fsmap-esp "$ESP_LEN" "$T/esp.img"
	mkfs.vfat -F 32 -n SYSTEM -i 5A5A0001 -h $((ESP_START / 512)) "$T/esp.img" >"$T/mkfs.vfat.log" 2>&1 ||
		die "mkfs.vfat: $(cat "$T/mkfs.vfat.log")"
	mmd -i "$T/esp.img" ::EFI ::EFI/Microsoft ::EFI/Microsoft/Boot ::EFI/BOOT
	: >"$T/files"
	put_esp() { # put_esp PATH SRC
		mcopy -i "$T/esp.img" "$2" "::$1" || die "mcopy $1"
		sum=$(sha256sum <"$2" | cut -d' ' -f1)
		printf 'esp\t%s\t%s\t%s\n' "$1" "$(stat -c %s "$2")" "$sum" >>"$T/files"
		rm -f "$2"
	}
	put_esp EFI/Microsoft/Boot/bootmgfw.efi "$T/src/bootmgfw.efi"
	prand_file bench-fsmap-bcd $((32 << 10)) "$T/src/BCD"
	put_esp EFI/Microsoft/Boot/BCD "$T/src/BCD"
	prand_file bench-fsmap-bootx64 $((2 * MIB)) "$T/src/BOOTX64.EFI"
	put_esp EFI/BOOT/BOOTX64.EFI "$T/src/BOOTX64.EFI"
	fsck.vfat -n "$T/esp.img" >"$T/fsck.vfat.log" 2>&1 || die "fsck.vfat -n of the new ESP: $(cat "$T/fsck.vfat.log")"

	# --- C: NTFS over old random bytes
	prand_file bench-fsmap-c "$C_LEN" "$T/c.img"
	mkntfs -Q -F -q -s 512 -p $((C_START / 512)) -H 255 -S 63 -L Windows "$T/c.img" >"$T/mkntfs.log" 2>&1 ||
		die "mkntfs: $(cat "$T/mkntfs.log")"
	log "data: writing ${#names[@]} files to C: with ntfscp"
	for i in "${!names[@]}"; do
		f=$T/src/${names[i]}
		[[ ${kinds[i]} == random ]] && prand_file "bench-fsmap-$i" "${sizes[i]}" "$f"
		[[ $(stat -c %s "$f") -eq ${sizes[i]} ]] || die "$f: wrong size"
		ntfscp -q "$T/c.img" "$f" "${names[i]}" || die "ntfscp ${names[i]}"
		sum=$(sha256sum <"$f" | cut -d' ' -f1)
		printf 'c\t%s\t%s\t%s\n' "${names[i]}" "${sizes[i]}" "$sum" >>"$T/files"
		rm -f "$f"
	done
	ntfsfix -n "$T/c.img" >"$T/ntfsfix.log" 2>&1 || die "ntfsfix -n of the new C: $(cat "$T/ntfsfix.log")"

	# --- the disk: GPT, partitions copied in place
	truncate -s "$SIZE" "$T/win.img"
	sgdisk -U 4d1c0f5e-0b1a-4c3e-9f00-be7c4a5f0001 \
		-n "1:$((ESP_START / 512)):$(((ESP_START + ESP_LEN) / 512 - 1))" -t 1:ef00 -c "1:EFI system partition" \
		-u 1:4d1c0f5e-0b1a-4c3e-9f00-be7c4a5f0002 \
		-n "2:$((C_START / 512)):$(((C_START + C_LEN) / 512 - 1))" -t 2:0700 -c "2:Basic data partition" \
		-u 2:4d1c0f5e-0b1a-4c3e-9f00-be7c4a5f0003 \
		"$T/win.img" >"$T/sgdisk.log" 2>&1 || die "sgdisk: $(cat "$T/sgdisk.log")"
	dd if="$T/esp.img" of="$T/win.img" bs=1M seek="$ESP_START" oflag=seek_bytes conv=notrunc status=none
	dd if="$T/c.img" of="$T/win.img" bs=1M seek="$C_START" oflag=seek_bytes conv=notrunc status=none
	rm -f "$T/esp.img" "$T/c.img"
	[[ $(stat -c %s "$T/win.img") -eq $SIZE ]] || die "win.img has the wrong size"

	# --- the check every restore gets, on the source itself first
	verify_disk "$T/win.img" "source disk" "$T/files" "$T"

	cat >"$T/meta" <<EOF
DATA_VERSION=$DATA_VERSION
SIZE_GIB=$SIZE_GIB
USED_MIB=$USED_MIB
SIZE=$SIZE
ESP_START=$ESP_START
ESP_LEN=$ESP_LEN
C_START=$C_START
C_LEN=$C_LEN
RANDOM_BYTES=$rhalf
COMPRESSIBLE_BYTES=$chalf
COMPRESSIBLE_SOURCE="$(tail -1 "$T/compressible.log")"
BUILT="$(date '+%F %T')"
EOF
	rm -f "$DISK" "$META" "$FILES"
	mv "$T/win.img" "$DISK"
	mv "$T/files" "$FILES"
	mv "$T/meta" "$META" # last: its presence means the disk is complete
	rm -rf "$T"
	log "data: $DISK ready"
}

# =============================================================================================
# checks
# =============================================================================================

extract() { # extract SRC START LEN DST: bytes of SRC at START..START+LEN into DST (sparse)
	rm -f "$4"
	dd if="$1" of="$4" bs=1M iflag=skip_bytes,count_bytes skip="$2" count="$3" conv=sparse status=none
	truncate -s "$3" "$4"
}

NOTES=()
# check_ntfs PART LABEL [BACKUP_BOOT_FROM]: `ntfsfix -n` must find PART clean. With
# BACKUP_BOOT_FROM (a disk holding the source C: at C_START): when the only complaint is a
# missing alternate boot sector (partclone does not write the partition's last sector: it is
# past NTFS's last cluster), that sector is copied from the source and the check repeated.
check_ntfs() {
	local part=$1 label=$2 from=${3:-} out rc=0
	out=$(ntfsfix -n "$part" 2>&1) || rc=$?
	if [[ $rc -eq 0 ]] && grep -q 'processed successfully' <<<"$out"; then
		return 0
	fi
	if [[ -n $from ]] && grep -q 'alternate boot sector... BAD' <<<"$out" &&
		! grep -qiE 'MFT.*(fail|corrupt|error)' <<<"$out"; then
		cmp -s <(tail -c 512 "$part") <(head -c 512 /dev/zero) ||
			die "$label: ntfsfix -n: alternate boot sector BAD and not blank:"$'\n'"$out"
		dd if="$from" of="$part" bs=512 skip=$(((C_START + C_LEN) / 512 - 1)) seek=$((C_LEN / 512 - 1)) \
			count=1 conv=notrunc status=none
		rc=0
		out=$(ntfsfix -n "$part" 2>&1) || rc=$?
		if [[ $rc -eq 0 ]] && grep -q 'processed successfully' <<<"$out"; then
			local note="${label% (run *)}: the NTFS backup boot sector (the partition's last 512 bytes) was not restored; ntfsfix -n is clean once it is copied from the source"
			[[ " ${NOTES[*]} " == *"$note"* ]] || NOTES+=("$note")
			log "$label: NOTE: backup boot sector not restored (copied from the source for the check)"
			return 0
		fi
	fi
	die "$label: ntfsfix -n does not find the restored C: clean (status $rc):"$'\n'"$out"
}

# check_files LABEL FILES C_IMG [ESP_IMG]: every file read back equals the source (sha256)
check_files() {
	local label=$1 list=$2 c=$3 esp=${4:-} part name size want got n=0
	while IFS=$'\t' read -r part name size want; do
		if [[ $part == c ]]; then
			got=$(set -o pipefail; ntfscat "$c" "$name" 2>/dev/null | sha256sum | cut -d' ' -f1) ||
				die "$label: ntfscat cannot read c:$name"
		else
			[[ -n $esp ]] || continue
			got=$(set -o pipefail; mcopy -n -i "$esp" "::$name" - 2>/dev/null | sha256sum | cut -d' ' -f1) ||
				die "$label: mcopy cannot read esp:$name"
		fi
		[[ $got == "$want" ]] || die "$label: $part:$name differs from the source (sha256 $got, expected $want)"
		n=$((n + 1))
	done <"$list"
	log "$label: $n files identical to the source"
}

# verify_disk DISK LABEL FILES TMPDIR [SOURCE]: the ESP passes fsck.vfat -n, C: passes ntfsfix -n,
# every file reads back identical; with SOURCE, the first MiB (protective MBR, primary GPT) and
# the last MiB (backup GPT) equal SOURCE's
verify_disk() {
	local disk=$1 label=$2 list=$3 tmp=$4 src=${5:-}
	if [[ -n $src ]]; then
		cmp -s -n "$ESP_START" "$disk" "$src" || die "$label: the first $ESP_START bytes (GPT) differ from the source"
		cmp -s -i $((C_START + C_LEN)) -n $((SIZE - C_START - C_LEN)) "$disk" "$src" ||
			die "$label: the bytes after C: (backup GPT) differ from the source"
	fi
	extract "$disk" "$ESP_START" "$ESP_LEN" "$tmp/chk-esp.img"
	extract "$disk" "$C_START" "$C_LEN" "$tmp/chk-c.img"
	fsck.vfat -n "$tmp/chk-esp.img" >"$tmp/chk-fsck.log" 2>&1 ||
		die "$label: fsck.vfat -n does not find the ESP clean: $(cat "$tmp/chk-fsck.log")"
	check_ntfs "$tmp/chk-c.img" "$label"
	check_files "$label" "$list" "$tmp/chk-c.img" "$tmp/chk-esp.img"
	rm -f "$tmp/chk-esp.img" "$tmp/chk-c.img" "$tmp/chk-fsck.log"
}

# =============================================================================================
# data
# =============================================================================================
if [[ $REBUILD -eq 0 && -f $META && -f $DISK && -f $FILES ]]; then
	# shellcheck disable=SC1090
	cached=$(source "$META"; echo "$DATA_VERSION $SIZE_GIB $USED_MIB")
	if [[ $cached != "$DATA_VERSION $SIZE_GIB $USED_MIB" ]]; then
		log "data: cached disk is (data version, GiB, MiB used) = ($cached), not ($DATA_VERSION $SIZE_GIB $USED_MIB): rebuilding"
		build_data
	else
		log "data: reusing $DISK (--rebuild-data to rebuild)"
	fi
else
	build_data
fi
# shellcheck disable=SC1090
source "$META"
[[ $(stat -c %s "$DISK") -eq $SIZE ]] || die "$DISK: not $SIZE bytes (--rebuild-data)"

# =============================================================================================
# scratch, results
# =============================================================================================
W=$(mktemp -d "$B/work.XXXXXX")
cleanup() {
	if [[ $KEEP -eq 1 ]]; then
		log "scratch kept: $W"
	else
		rm -rf "$W"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$W/logs"

# snapshot the binary: the one in target/ may be rebuilt while the bench runs
cp "$BOOTCAST" "$W/bootcast"
BC=$W/bootcast
log "bootcast: $BOOTCAST ($(date -r "$BOOTCAST" '+%F %T'), sha256 $(sha256sum "$BOOTCAST" | cut -c1-16))"
RES=$W/results.txt
: >"$RES"
put() { printf '%s=%s\n' "$1" "$2" >>"$RES"; }

# run NAME CMD... : stdout/stderr to $W/logs/NAME.{out,err}; wall seconds in LAST_S
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
			echo "  --- stdout ---"; tail -c 2000 "$W/logs/$name.out" | tr '\r' '\n' | tail -20 | sed 's/^/  /'
			echo "  --- stderr ---"; tail -c 2000 "$W/logs/$name.err" | tr '\r' '\n' | tail -20 | sed 's/^/  /'
		} >&2
		exit 1
	fi
	LAST_S=$(elapsed "$t0" "$t1")
	put "${name}_s" "$LAST_S"
	log "$name: ${LAST_S}s"
}

# cold INPUT...: before a timed step, flush what earlier steps wrote and drop the page cache so
# the step reads its input from disk; without --drop (not root, --no-drop-caches) read INPUT warm
cold() {
	sync
	if [[ $DROP -eq 1 ]]; then
		echo 3 >/proc/sys/vm/drop_caches
	else
		local p
		for p in "$@"; do
			if [[ -d $p ]]; then find "$p" -type f -exec cat {} + >/dev/null; else warm "$p"; fi
		done
	fi
}

json_field() { # json_field FILE FIELD
	python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2" ||
		die "cannot read field '$2' from $1: $(head -c 400 "$1")"
}

gone() { [[ $KEEP -eq 1 ]] || rm -rf "$@"; }

read -ra PCA <<<"$PC_ARGS" # partclone's extra arguments, word-split
put pc_args "$PC_ARGS"
put pc_version "$(partclone.ntfs -v 2>&1 | grep -o 'v[0-9][0-9.]*' | head -1 || true)"
put load_start "$(cut -d' ' -f1 /proc/loadavg)"
put uptime_start "$(uptime | sed 's/^ *//')"
log "disk: $DISK ($SIZE bytes; ESP $ESP_LEN at $ESP_START, C: $C_LEN at $C_START); runs: $RUNS; page cache: $([[ $DROP -eq 1 ]] && echo 'dropped before every step' || echo 'inputs read warm')"

# =============================================================================================
# timed runs: one round per run, tools in the same order, every output checked then deleted
# =============================================================================================
for i in $(seq 1 "$RUNS"); do
	R=$W/r$i
	mkdir -p "$R"

	# ------------------------------------------------------------- bootcast mapped
	cold "$DISK"
	run "bcmap_cap_r$i" "$BC" --data "$R/bc-map" image add win "$DISK" --json
	put "bcmap_bytes" "$(json_field "$W/logs/bcmap_cap_r$i.out" stored_bytes)"
	put "bcmap_files_bytes" "$(store_bytes "$R/bc-map/store")"
	cp "$W/logs/bcmap_cap_r$i.out" "$W/bcmap_add.json"
	cold "$R/bc-map"
	run "bcmap_res_r$i" bash -c '"$1" --data "$2" image export win "$3" --json && sync "$3"' \
		export "$BC" "$R/bc-map" "$R/out-map.img"
	[[ $(stat -c %s "$R/out-map.img") -eq $SIZE ]] || die "bootcast mapped: restored disk is not $SIZE bytes"
	verify_disk "$R/out-map.img" "bootcast mapped (run $i)" "$FILES" "$R" "$DISK"
	gone "$R/out-map.img" "$R/bc-map"

	# ------------------------------------------------------------- bootcast raw
	cold "$DISK"
	run "bcraw_cap_r$i" "$BC" --data "$R/bc-raw" image add win "$DISK" --raw --json
	put "bcraw_bytes" "$(json_field "$W/logs/bcraw_cap_r$i.out" stored_bytes)"
	put "bcraw_files_bytes" "$(store_bytes "$R/bc-raw/store")"
	cold "$R/bc-raw"
	run "bcraw_res_r$i" bash -c '"$1" --data "$2" image export win "$3" --json && sync "$3"' \
		export "$BC" "$R/bc-raw" "$R/out-raw.img"
	gone "$R/bc-raw"
	t0=$(now)
	cmp "$DISK" "$R/out-raw.img" >"$W/logs/bcraw_cmp_r$i.log" 2>&1 ||
		die "bootcast raw (run $i): restored disk differs from the source: $(head -3 "$W/logs/bcraw_cmp_r$i.log")"
	log "bootcast raw (run $i): restored disk identical to the source (cmp, $(elapsed "$t0" "$(now)")s)"
	gone "$R/out-raw.img"

	# ------------------------------------------------------------- partclone.ntfs (C: only)
	extract "$DISK" "$C_START" "$C_LEN" "$R/c.img" # the partition, as partclone reads a device
	cold "$R/c.img"
	run "pc_cap_r$i" bash -c 'partclone.ntfs "${@:4}" -c -s "$1" -o "$2" -L "$3" && sync "$2"' \
		clone "$R/c.img" "$R/c.pcl" "$W/logs/pc_cap_r$i.pclog" "${PCA[@]}"
	put "pc_bytes" "$(stat -c %s "$R/c.pcl")"
	grep -a 'Space in use' "$W/logs/pc_cap_r$i.pclog" | head -1 | sed 's/^ *//' >"$W/pc_used.txt" || true
	truncate -s "$C_LEN" "$R/out-pc.img" # the target partition
	cold "$R/c.pcl"
	run "pc_res_r$i" bash -c 'partclone.ntfs "${@:4}" -r -s "$1" -O "$2" -L "$3" && sync "$2"' \
		restore "$R/c.pcl" "$R/out-pc.img" "$W/logs/pc_res_r$i.pclog" "${PCA[@]}"
	gone "$R/c.pcl"
	check_ntfs "$R/out-pc.img" "partclone.ntfs (run $i)" "$DISK"
	check_files "partclone.ntfs (run $i)" "$FILES" "$R/out-pc.img"
	gone "$R/out-pc.img"

	# ------------------------------------------------------------- partclone.ntfs | zstd -1 -T0
	cold "$R/c.img"
	run "pz_cap_r$i" bash -c 'set -o pipefail; partclone.ntfs "${@:4}" -c -s "$1" -o - -L "$3" | zstd -q -1 -T0 >"$2" && sync "$2"' \
		clone "$R/c.img" "$R/c.pcl.zst" "$W/logs/pz_cap_r$i.pclog" "${PCA[@]}"
	put "pz_bytes" "$(stat -c %s "$R/c.pcl.zst")"
	gone "$R/c.img"
	truncate -s "$C_LEN" "$R/out-pz.img"
	cold "$R/c.pcl.zst"
	run "pz_res_r$i" bash -c 'set -o pipefail; zstd -q -dc "$1" | partclone.ntfs "${@:4}" -r -s - -O "$2" -L "$3" && sync "$2"' \
		restore "$R/c.pcl.zst" "$R/out-pz.img" "$W/logs/pz_res_r$i.pclog" "${PCA[@]}"
	gone "$R/c.pcl.zst"
	check_ntfs "$R/out-pz.img" "partclone.ntfs | zstd (run $i)" "$DISK"
	check_files "partclone.ntfs | zstd (run $i)" "$FILES" "$R/out-pz.img"
	gone "$R/out-pz.img" "$R/c.img"
	[[ $KEEP -eq 1 ]] || rmdir "$R" 2>/dev/null || true
done
put load_end "$(cut -d' ' -f1 /proc/loadavg)"
put uptime_end "$(uptime | sed 's/^ *//')"
printf '%s\n' "${NOTES[@]}" >"$W/notes.txt"

# =============================================================================================
# report
# =============================================================================================
python3 - "$RES" "$B/result.json" "$W/bcmap_add.json" "$W/notes.txt" "$W/pc_used.txt" "$META" \
	"$DISK" "$RUNS" "$BOOTCAST" "$DROP" <<'PY'
import json, shlex, sys, time
res_path, out_path, add_json, notes_path, pc_used_path, meta_path, disk, runs, binary, drop = sys.argv[1:11]
runs, drop = int(runs), drop == "1"
r = {}
for line in open(res_path):
    k, v = line.rstrip("\n").split("=", 1)
    try:
        r[k] = float(v) if "." in v else int(v)
    except ValueError:
        r[k] = v
meta = {}
for line in open(meta_path):
    k, v = line.rstrip("\n").split("=", 1)
    meta[k] = shlex.split(v)[0] if v else ""
size, c_len, esp_len = int(meta["SIZE"]), int(meta["C_LEN"]), int(meta["ESP_LEN"])
parts = json.load(open(add_json)).get("partitions", [])
notes = [n for n in open(notes_path).read().splitlines() if n]
pc_used = open(pc_used_path).read().strip()
M, MiB = 1e6, 1 << 20

tools = [("bcmap", "bootcast mapped", f"whole disk ({size / MiB:.0f} MiB)"),
         ("bcraw", "bootcast raw (--raw)", f"whole disk ({size / MiB:.0f} MiB)"),
         ("pc", "partclone.ntfs", f"C: only ({c_len / MiB:.0f} MiB)"),
         ("pz", "partclone.ntfs | zstd -1", f"C: only ({c_len / MiB:.0f} MiB)")]
best = {}
rows = []
for key, label, covers in tools:
    cap = [r[f"{key}_cap_r{i}_s"] for i in range(1, runs + 1)]
    res = [r[f"{key}_res_r{i}_s"] for i in range(1, runs + 1)]
    best[key] = {"capture_s": min(cap), "restore_s": min(res), "stored_bytes": r[f"{key}_bytes"],
                 "all_capture_s": cap, "all_restore_s": res}
    rows.append([label, f"{min(cap):.2f}", f"{r[f'{key}_bytes'] / M:.1f}", f"{min(res):.2f}", covers])

hdr = ["tool", "capture s", "stored MB", "restore s", "covers"]
w = [max(len(str(x)) for x in col) for col in zip(hdr, *rows)]
fmt = lambda row: "  ".join(str(c).ljust(w[i]) if i in (0, 4) else str(c).rjust(w[i])
                            for i, c in enumerate(row)).rstrip()
print()
print(f"bootcast fsmap bench: {disk}")
print(f"  {size / MiB:.0f} MiB GPT disk: ESP FAT32 {esp_len / MiB:.0f} MiB + NTFS C: {c_len / MiB:.0f} MiB, "
      f"free space full of old random bytes; files on C: {int(meta['USED_MIB'])} MiB "
      f"({int(meta['RANDOM_BYTES']) / M:.1f} MB random, {int(meta['COMPRESSIBLE_BYTES']) / M:.1f} MB ELF/text)")
for p in parts:
    used = f"{p['used'] / M:.1f} MB used" if p.get("used") is not None else "raw"
    print(f"  part {p['number']}: {p['fs']:<6} {p['size'] / M:9.1f} MB, {used}"
          f"{', mapped' if p.get('mapped') else ''}{(' (' + p['reason'] + ')') if p.get('reason') else ''}")
print(f"  partclone.ntfs {r.get('pc_version', '')} run with: {r.get('pc_args') or '(no extra arguments)'}"
      + (f"; on C:: {pc_used}" if pc_used else ""))
print(f"  best of {runs}; page cache {'dropped before every capture and restore' if drop else 'NOT dropped: inputs read warm'}")
print(f"load: {r['uptime_start']}  ->  {r['uptime_end']}")
if max(float(r["load_start"]), float(r["load_end"])) > 0.5:
    print(f"WARNING: machine not idle (1-min load {r['load_start']} at start, {r['load_end']} at end): timings are noisy")
print()
print(fmt(hdr)); print("-" * len(fmt(hdr)))
for row in rows:
    print(fmt(row))
print("MB = 10^6 bytes. capture: image file -> store / image file; restore: store / image file -> a new")
print("file (bootcast: the disk, partclone: the partition, sparse, of the right size). Every timed step")
print("includes a `sync` of the file it wrote (bootcast and partclone sync themselves, zstd does not).")
print("bootcast stored = `stored_bytes` of `image add --json` (compressed chunks); partclone = image file.")

def ratio(a, b):
    return a / b if b else float("nan")
m, raw, pz = best["bcmap"], best["bcraw"], best["pz"]
ratios = {
    "stored_mapped_vs_pz": ratio(m["stored_bytes"], pz["stored_bytes"]),
    "capture_mapped_vs_pz": ratio(m["capture_s"], pz["capture_s"]),
    "restore_mapped_vs_pz": ratio(m["restore_s"], pz["restore_s"]),
    "stored_mapped_vs_raw": ratio(m["stored_bytes"], raw["stored_bytes"]),
    "capture_mapped_vs_raw": ratio(m["capture_s"], raw["capture_s"]),
    "restore_mapped_vs_raw": ratio(m["restore_s"], raw["restore_s"]),
}
print()
print("ratios (< 1: bootcast mapped is smaller / faster):")
print(f"  mapped / partclone|zstd:  stored {ratios['stored_mapped_vs_pz']:.2f}   capture time "
      f"{ratios['capture_mapped_vs_pz']:.2f}   restore time {ratios['restore_mapped_vs_pz']:.2f}")
print(f"  mapped / raw:             stored {ratios['stored_mapped_vs_raw']:.2f}   capture time "
      f"{ratios['capture_mapped_vs_raw']:.2f}   restore time {ratios['restore_mapped_vs_raw']:.2f}")
esp = [p for p in parts if p.get("fs", "").startswith("fat")]
esp_used = esp[0]["used"] if esp and esp[0].get("used") is not None else None
print()
print("caveat: the partclone rows cover C: only; bootcast captures the whole disk: the GPT, the ESP"
      + (f" ({esp_used / M:.1f} MB used of {esp_len / M:.1f} MB)" if esp_used is not None else "")
      + " and C:.")
print("  bootcast's stored bytes therefore include the ESP's used blocks, which a partclone-based")
print("  capture would need a partclone.vfat image for (about that many bytes more, before compression).")
for n in notes:
    print(f"note: {n}")
if runs > 1:
    print()
    for key, label, _ in tools:
        print(f"  {label:<26} capture s: {' '.join(f'{x:.2f}' for x in best[key]['all_capture_s'])}"
              f"   restore s: {' '.join(f'{x:.2f}' for x in best[key]['all_restore_s'])}")
json.dump({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "bootcast": binary, "disk": disk,
           "meta": meta, "runs": runs, "page_cache_dropped": drop, "partitions": parts,
           "best": best, "ratios": ratios, "notes": notes, "raw": r},
          open(out_path, "w"), indent=1)
print(f"\nwritten {out_path}")
PY

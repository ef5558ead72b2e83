#!/usr/bin/env bash
# Build the bootcast "demo master": a small raw disk image (MBR, FAT32 boot
# partition with SYSLINUX for BIOS and UEFI, ext4 data partition) that boots a
# Debian kernel plus a busybox initramfs, prints "BOOTCAST-DEMO-OK <version>"
# on ttyS0 and powers off.  See images/README.md.
#
# Usage: images/demo/build.sh [--version V] [--out PATH] [--force] [--refresh-kernel]
#
# Built from files only (no loop devices, no mounts).  The last line on stdout
# is the path of the image; progress goes to stderr.
set -euo pipefail
umask 022
export LC_ALL=C TZ=UTC

SCRIPT=$(readlink -f "${BASH_SOURCE[0]}")
SCRIPT_DIR=$(dirname "$SCRIPT")
REPO=$(cd "$SCRIPT_DIR/../.." && pwd)
CACHE=${BOOTCAST_CACHE:-$REPO/.cache}
DEMO_CACHE=$CACHE/demo

VERSION=v1
OUT=
FORCE=0
SECURE_BOOT=0
REFRESH_KERNEL=0

# Fixed timestamp for every file and file system in the image (2024-01-01 UTC).
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1704067200}

# Disk layout, in 512-byte sectors.
SECTOR=512
P1_START=2048                      # 1 MiB: FAT32 "BOOTCAST" (type 0xef, active)
P1_SECTORS=$((47 * 2048))          # 47 MiB
P2_START=$((P1_START + P1_SECTORS)) # 48 MiB: ext4 "bootcast-demo"
P2_SECTORS=$((32 * 2048))          # 32 MiB
DISK_SECTORS=$((P2_START + P2_SECTORS)) # 80 MiB in total

# Fixed identifiers so that two builds give the same bytes.
DISK_ID=0xb007ca57
FAT_SERIAL=0xB007CA57
EXT4_UUID=b007ca57-de70-4a57-8000-000000000002
EXT4_HASH_SEED=b007ca57-de70-4a57-8000-0000000000a5

# Kernel modules the initramfs loads (dependencies are added automatically):
# virtio/SATA/IDE/NVMe disks and ext4 (a module in Debian's kernel).
MODULES=(virtio_pci virtio_blk virtio_scsi ahci ata_piix sd_mod nvme crc32c_generic ext4)

# Debian packages the build needs.
PACKAGES=(busybox-static syslinux syslinux-common syslinux-efi mtools dosfstools
          fdisk e2fsprogs cpio gzip xz-utils zstd)

log() { printf 'build.sh: %s\n' "$*" >&2; }
die() { printf 'build.sh: error: %s\n' "$*" >&2; exit 1; }

usage() {
    cat <<EOF
Usage: $0 [--version V] [--secure-boot] [--out PATH] [--force] [--refresh-kernel]

  --version V        version string baked into the image (default: v1)
  --secure-boot      the UEFI master that boots with Secure Boot on: GPT, an EFI system
                     partition with Debian's signed shim, GRUB and kernel (no BIOS boot)
  --out PATH         output image (default: \${BOOTCAST_CACHE:-<repo>/.cache}/demo/demo-<V>.img,
                     demo-sb-<V>.img with --secure-boot)
  --force            rebuild even if PATH exists and is newer than this script
  --refresh-kernel   re-resolve linux-image-amd64 instead of reusing the cached kernel

Prints the image path as the last line on stdout.
EOF
}

while (($#)); do
    case $1 in
        --version) [[ $# -ge 2 ]] || die "--version needs a value"; VERSION=$2; shift 2 ;;
        --version=*) VERSION=${1#*=}; shift ;;
        --out) [[ $# -ge 2 ]] || die "--out needs a value"; OUT=$2; shift 2 ;;
        --out=*) OUT=${1#*=}; shift ;;
        --force) FORCE=1; shift ;;
        --secure-boot) SECURE_BOOT=1; shift ;;
        --refresh-kernel) REFRESH_KERNEL=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

[[ $VERSION =~ ^[A-Za-z0-9][A-Za-z0-9._+-]{0,31}$ ]] ||
    die "version must be 1-32 characters of [A-Za-z0-9._+-]: '$VERSION'"
if ((SECURE_BOOT)); then
    OUT=${OUT:-$DEMO_CACHE/demo-sb-$VERSION.img}
    # GPT keeps a backup header and entries in the disk's last 33 sectors
    DISK_SECTORS=$((DISK_SECTORS + 2048))
    MODULES+=(efivarfs)
    PACKAGES+=(shim-signed grub-efi-amd64-signed)
fi
OUT=${OUT:-$DEMO_CACHE/demo-$VERSION.img}
OUT=$(readlink -m "$OUT")

if [[ $FORCE -eq 0 && -f $OUT && $OUT -nt $SCRIPT ]]; then
    log "up to date: $OUT (use --force to rebuild)"
    printf '%s\n' "$OUT"
    exit 0
fi

# ---------------------------------------------------------------- packages --

# shellcheck source=../../scripts/lib.sh
. "$REPO/scripts/lib.sh"

ensure_packages "${PACKAGES[@]}"

BUSYBOX=/bin/busybox
SYSLINUX_MBR=/usr/lib/SYSLINUX/mbr.bin
[[ -f $SYSLINUX_MBR ]] || SYSLINUX_MBR=/usr/lib/syslinux/mbr/mbr.bin
SYSLINUX_EFI=/usr/lib/SYSLINUX.EFI/efi64/syslinux.efi
LDLINUX_E64=/usr/lib/syslinux/modules/efi64/ldlinux.e64
SHIM_SIGNED=/usr/lib/shim/shimx64.efi.signed
GRUB_SIGNED=/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed
if ((SECURE_BOOT)); then
    for f in "$SHIM_SIGNED" "$GRUB_SIGNED"; do
        [[ -f $f ]] || die "missing $f (Debian packages shim-signed, grub-efi-amd64-signed)"
    done
fi
for f in "$BUSYBOX" "$SYSLINUX_MBR" "$SYSLINUX_EFI" "$LDLINUX_E64"; do
    [[ -f $f ]] || die "missing $f"
done
"$BUSYBOX" --list | grep -x insmod >/dev/null || die "$BUSYBOX is not busybox-static's full build"

# ------------------------------------------------------------------ kernel --

mkdir -p "$DEMO_CACHE/debs"
WORK=$(mktemp -d "$DEMO_CACHE/build.XXXXXX")
cleanup() { [[ -n ${BOOTCAST_KEEP_WORK:-} ]] && { log "kept $WORK"; return 0; }; rm -rf "$WORK"; }
trap cleanup EXIT

apt_download() { # apt_download DIR PACKAGE
    local dir=$1 pkg=$2 opts=()
    # As root, apt would warn that _apt cannot write to DIR; download as root.
    [[ $EUID -eq 0 ]] && opts=(-o APT::Sandbox::User=root)
    if ! (cd "$dir" && apt-get "${opts[@]}" -qq download "$pkg" >&2); then
        apt_update
        (cd "$dir" && apt-get "${opts[@]}" -qq download "$pkg" >&2)
    fi
}

# The real kernel package: linux-image-amd64 is a meta package that depends on
# linux-image-<abi>-amd64.  The resolved .deb is kept in the cache and reused
# (so rebuilds are reproducible and work offline) unless --refresh-kernel.
kernel_deb() { # runs in a subshell: $(kernel_deb)
    local debs=$DEMO_CACHE/debs meta name f
    exec 9>"$debs/.lock"
    flock 9 # one download at a time when builds run in parallel
    if [[ $REFRESH_KERNEL -eq 0 && -s $debs/kernel-package ]]; then
        name=$(cat "$debs/kernel-package")
        f=$(find "$debs" -maxdepth 1 -name "${name}_*_amd64.deb" | sort -V | tail -n 1)
        [[ -n $f ]] && { printf '%s\n' "$f"; return 0; }
    fi
    apt_lists_present || apt_update
    rm -f "$debs"/linux-image-amd64_*.deb
    log "resolving linux-image-amd64"
    apt_download "$debs" linux-image-amd64
    meta=$(find "$debs" -maxdepth 1 -name 'linux-image-amd64_*_amd64.deb' | sort -V | tail -n 1)
    [[ -n $meta ]] || die "apt-get download linux-image-amd64 produced no .deb"
    name=$(dpkg-deb -f "$meta" Depends | tr ',|' '[\n*]' | sed 's/^ *//; s/ .*//' |
           grep -E '^linux-image-[0-9].*-amd64(-unsigned)?$' | sed -n 1p)
    [[ -n $name ]] || die "cannot find the kernel package in the Depends of $meta"
    log "downloading $name"
    rm -f "$debs/${name}"_*.deb
    apt_download "$debs" "$name"
    f=$(find "$debs" -maxdepth 1 -name "${name}_*_amd64.deb" | sort -V | tail -n 1)
    [[ -n $f ]] || die "apt-get download $name produced no .deb"
    printf '%s\n' "$name" >"$debs/kernel-package"
    printf '%s\n' "$f"
}

KDEB=$(kernel_deb)
log "kernel package: ${KDEB##*/}"
KROOT=$WORK/kernel
dpkg-deb -x "$KDEB" "$KROOT"
VMLINUZ=$(find "$KROOT/boot" -maxdepth 1 -name 'vmlinuz-*' | sort | sed -n 1p)
[[ -n $VMLINUZ ]] || die "no vmlinuz in $KDEB"
KVER=${VMLINUZ##*/vmlinuz-}
KCONFIG=$KROOT/boot/config-$KVER
MODDIR=$KROOT/lib/modules/$KVER
[[ -d $MODDIR ]] || MODDIR=$KROOT/usr/lib/modules/$KVER
[[ -d $MODDIR ]] || die "no modules directory for $KVER in $KDEB"
log "kernel $KVER, ext4: $(grep -E '^CONFIG_EXT4_FS=' "$KCONFIG" || echo 'not set')"

# ------------------------------------------------------------- initramfs --

INITRD_ROOT=$WORK/initramfs
mkdir -p "$INITRD_ROOT"/{bin,dev,proc,sys,mnt,lib/modules}
cp "$BUSYBOX" "$INITRD_ROOT/bin/busybox"

declare -A KO=() SEEN=()
while IFS= read -r -d '' f; do
    b=${f##*/}
    b=${b%%.ko*}
    KO[${b//-/_}]=$f
done < <(find "$MODDIR/kernel" -name '*.ko*' -print0)

is_builtin() { # is_builtin NAME (normalised)
    [[ -f $MODDIR/modules.builtin ]] &&
        sed 's:.*/::; s/\.ko$//; s/-/_/g' "$MODDIR/modules.builtin" | grep -x "$1" >/dev/null
}

MOD_ORDER=()
add_module() { # add_module NAME: stage NAME.ko and, first, its dependencies
    local n=${1//-/_} src dst deps d
    [[ -n ${SEEN[$n]:-} ]] && return 0
    SEEN[$n]=1
    src=${KO[$n]:-}
    if [[ -z $src ]]; then
        is_builtin "$n" || log "warning: module $n not found in $KVER"
        return 0
    fi
    dst=$INITRD_ROOT/lib/modules/$n.ko
    case $src in
        *.ko) cp "$src" "$dst" ;;
        *.ko.xz) xz -dc "$src" >"$dst" ;;
        *.ko.zst) zstd -qdc "$src" >"$dst" ;;
        *.ko.gz) gzip -dc "$src" >"$dst" ;;
        *) die "unknown module format: $src" ;;
    esac
    deps=$(tr '\0' '\n' <"$dst" | sed -n 's/^depends=//p' | sed -n 1p)
    for d in ${deps//,/ }; do
        add_module "$d"
    done
    MOD_ORDER+=("$n")
}
for m in "${MODULES[@]}"; do
    add_module "$m"
done
printf '%s\n' "${MOD_ORDER[@]}" >"$INITRD_ROOT/lib/modules/order"
log "initramfs modules: ${MOD_ORDER[*]}"

cat >"$INITRD_ROOT/init" <<'INIT'
#!/bin/busybox sh
# bootcast demo init: report, then power off.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null

cmdline=$(cat /proc/cmdline)
version=unknown
for arg in $cmdline; do
    case $arg in bootcast.version=*) version=${arg#*=} ;; esac
done

say() {
    echo "$*" >/dev/console
    case " $cmdline " in
        *" console=ttyS0"*) ;;
        *) [ -c /dev/ttyS0 ] && echo "$*" >/dev/ttyS0 ;;
    esac
}

while read -r m; do
    insmod "/lib/modules/$m.ko" 2>/dev/null
done </lib/modules/order
# UEFI: show Secure Boot's state (the Secure Boot master's initramfs has efivarfs)
sb=/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c
if [ -d /sys/firmware/efi/efivars ] && mount -t efivarfs efivarfs /sys/firmware/efi/efivars 2>/dev/null &&
    [ -r $sb ]; then
    # 4 bytes of attributes, then the value (efivarfs cannot seek: read it all)
    set -- $(od -An -tu1 $sb)
    say "BOOTCAST-DEMO-SECUREBOOT $5"
fi

# Partition 2 (ext4) holds /etc/hostname; never let it stop the marker.
hostname=
data_version=
mounted=
i=0
while [ $i -lt 50 ] && [ -z "$mounted" ]; do
    for dev in /dev/vda2 /dev/sda2 /dev/nvme0n1p2 /dev/hda2; do
        [ -b "$dev" ] || continue
        if mount -t ext4 -o ro "$dev" /mnt 2>/dev/null; then
            mounted=$dev
            [ -r /mnt/etc/hostname ] && read -r hostname </mnt/etc/hostname
            [ -r /mnt/etc/bootcast-demo-version ] && read -r data_version </mnt/etc/bootcast-demo-version
            umount /mnt
            say "bootcast-demo: data partition $dev mounted"
            break
        fi
    done
    [ -n "$mounted" ] && break
    i=$((i + 1))
    sleep 0.1
done

if [ -n "$hostname" ]; then
    hostname "$hostname"
    say "BOOTCAST-DEMO-HOSTNAME $hostname"
else
    say "bootcast-demo: data partition not found or without /etc/hostname"
fi
if [ -n "$data_version" ] && [ "$data_version" != "$version" ]; then
    say "bootcast-demo: warning: data partition version '$data_version' != boot version '$version'"
fi
say "BOOTCAST-DEMO-OK $version"
sync
poweroff -f
INIT
chmod 0755 "$INITRD_ROOT/init"

INITRD=$WORK/initrd.img
find "$INITRD_ROOT" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
(cd "$INITRD_ROOT" && find . -mindepth 1 | sort |
    cpio --quiet -o -H newc -R 0:0 --reproducible) | gzip -n -9 >"$INITRD"
log "initramfs: $(stat -c %s "$INITRD") bytes"

# -------------------------------------------------------------- boot files --

BOOTFILES=$WORK/boot
mkdir -p "$BOOTFILES"
cat >"$BOOTFILES/syslinux.cfg" <<EOF
# bootcast demo master $VERSION (shared by BIOS SYSLINUX and syslinux.efi)
SERIAL 0 115200
PROMPT 0
TIMEOUT 0
DEFAULT demo

LABEL demo
  LINUX /vmlinuz
  INITRD /initrd.img
  APPEND console=tty0 console=ttyS0,115200 no_timer_check panic=10 bootcast.version=$VERSION
EOF
printf '%s\n' "$VERSION" >"$BOOTFILES/bootcast-demo-version"
cp "$VMLINUZ" "$BOOTFILES/vmlinuz"
cp "$INITRD" "$BOOTFILES/initrd.img"
cp "$SYSLINUX_EFI" "$BOOTFILES/BOOTX64.EFI"
cp "$LDLINUX_E64" "$BOOTFILES/ldlinux.e64"
if ((SECURE_BOOT)); then
    # shim (signed for the Microsoft UEFI CA) starts grubx64.efi beside it (signed by Debian),
    # whose configuration is $prefix/grub.cfg with $prefix /EFI/debian on the ESP
    cp "$SHIM_SIGNED" "$BOOTFILES/BOOTX64.EFI"
    cp "$GRUB_SIGNED" "$BOOTFILES/grubx64.efi"
    cat >"$BOOTFILES/grub.cfg" <<EOF
# bootcast demo master $VERSION, Secure Boot flavour
echo "BOOTCAST-DEMO-GRUB $VERSION"
set timeout=0
linux /vmlinuz console=tty0 console=ttyS0,115200 no_timer_check panic=10 bootcast.version=$VERSION
initrd /initrd.img
boot
EOF
fi
touch -d "@$SOURCE_DATE_EPOCH" "$BOOTFILES"/*

# -------------------------------------------------------- data partition --

# Files are written in this order, so every version shares the inodes and
# blocks of the files v1 has; versions other than v1 get one extra file.
DATA=$WORK/data
DATA_FILES=(etc/hostname etc/bootcast-demo-version)
mkdir -p "$DATA/etc"
printf 'demo\n' >"$DATA/etc/hostname"
printf '%s\n' "$VERSION" >"$DATA/etc/bootcast-demo-version"
if [[ $VERSION != v1 ]]; then
    DATA_FILES+=(etc/bootcast-demo-extra)
    printf 'bootcast demo %s: this file is not in v1.\n' "$VERSION" >"$DATA/etc/bootcast-demo-extra"
fi

EXT4=$WORK/p2.ext4
truncate -s $((P2_SECTORS * SECTOR)) "$EXT4"
# mke2fs 1.47.0 ignores SOURCE_DATE_EPOCH; libext2fs honours E2FSPROGS_FAKE_TIME.
export E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH
mke2fs -q -F -t ext4 -b 4096 -L bootcast-demo -U "$EXT4_UUID" \
    -E "hash_seed=$EXT4_HASH_SEED,root_owner=0:0,nodiscard" "$EXT4"
# Populate with debugfs in a fixed order (mke2fs -d follows readdir order),
# then pin owners and timestamps.
{
    echo "mkdir etc"
    for f in "${DATA_FILES[@]}"; do
        echo "write $DATA/$f $f"
    done
    for f in etc "${DATA_FILES[@]}"; do
        echo "set_inode_field $f uid 0"
        echo "set_inode_field $f gid 0"
        for field in atime mtime ctime crtime; do
            echo "set_inode_field $f $field @$SOURCE_DATE_EPOCH"
        done
    done
} >"$WORK/debugfs.cmds"
debugfs -w -f "$WORK/debugfs.cmds" "$EXT4" >/dev/null 2>"$WORK/debugfs.err" ||
    { cat "$WORK/debugfs.err" >&2; die "debugfs failed"; }
if grep -Ev '^(debugfs |$)' "$WORK/debugfs.err" >/dev/null; then
    cat "$WORK/debugfs.err" >&2
    die "debugfs reported errors"
fi
e2fsck -fn "$EXT4" >/dev/null 2>&1 || { e2fsck -fn "$EXT4" >&2 || true; die "ext4 check failed"; }
unset E2FSPROGS_FAKE_TIME

# -------------------------------------------------------------- the disk --

DISK=$WORK/disk.img
truncate -s $((DISK_SECTORS * SECTOR)) "$DISK"
if ((SECURE_BOOT)); then
    sfdisk --quiet --no-reread --no-tell-kernel "$DISK" >&2 <<EOF
label: gpt
label-id: B007CA57-0000-4000-8000-000000000000
unit: sectors

start=$P1_START, size=$P1_SECTORS, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=B007CA57-0000-4000-8000-000000000001, name="EFI system partition"
start=$P2_START, size=$P2_SECTORS, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid=B007CA57-0000-4000-8000-000000000002, name="bootcast-demo"
EOF
else
    sfdisk --quiet --no-reread --no-tell-kernel "$DISK" >&2 <<EOF
label: dos
label-id: $DISK_ID
unit: sectors

start=$P1_START, size=$P1_SECTORS, type=ef, bootable
start=$P2_START, size=$P2_SECTORS, type=83
EOF
    dd if="$SYSLINUX_MBR" of="$DISK" bs=440 count=1 conv=notrunc status=none
fi

# FAT32 on partition 1 via mtools (SOURCE_DATE_EPOCH fixes its timestamps).
P1="$DISK@@$((P1_START * SECTOR))"
export MTOOLS_SKIP_CHECK=1
mformat -i "$P1" -F -T "$P1_SECTORS" -H "$P1_START" -h 64 -s 32 -c 1 \
    -N "${FAT_SERIAL#0x}" -v BOOTCAST ::
mmd -i "$P1" ::/EFI ::/EFI/BOOT
mcopy -i "$P1" -m "$BOOTFILES/vmlinuz" "$BOOTFILES/initrd.img" \
    "$BOOTFILES/bootcast-demo-version" ::/
if ((SECURE_BOOT)); then
    mmd -i "$P1" ::/EFI/debian
    mcopy -i "$P1" -m "$BOOTFILES/BOOTX64.EFI" "$BOOTFILES/grubx64.efi" "$BOOTFILES/grub.cfg" \
        ::/EFI/BOOT/
    mcopy -i "$P1" -m "$BOOTFILES/grubx64.efi" "$BOOTFILES/grub.cfg" ::/EFI/debian/
    mcopy -i "$P1" -m "$BOOTFILES/BOOTX64.EFI" ::/EFI/debian/shimx64.efi
else
    mcopy -i "$P1" -m "$BOOTFILES/BOOTX64.EFI" "$BOOTFILES/ldlinux.e64" \
        "$BOOTFILES/syslinux.cfg" ::/EFI/BOOT/
    # BIOS: boot sector + ldlinux.sys/ldlinux.c32 next to the shared syslinux.cfg.
    syslinux --install --offset $((P1_START * SECTOR)) --directory /EFI/BOOT "$DISK"
fi

# Partition 2: the ext4 file system.
dd if="$EXT4" of="$DISK" bs=1M seek=$((P2_START * SECTOR / 1048576)) conv=notrunc,sparse status=none

# Sanity checks on the finished partitions.
dd if="$DISK" of="$WORK/p1.fat" bs=1M skip=$((P1_START * SECTOR / 1048576)) \
    count=$((P1_SECTORS * SECTOR / 1048576)) status=none
fsck.fat -n "$WORK/p1.fat" >"$WORK/fsck.txt" 2>&1 || { cat "$WORK/fsck.txt" >&2; die "FAT check failed"; }
CHECK=(::/EFI/BOOT/ldlinux.sys ::/EFI/BOOT/ldlinux.c32 ::/EFI/BOOT/BOOTX64.EFI ::/vmlinuz)
((SECURE_BOOT)) && CHECK=(::/EFI/BOOT/BOOTX64.EFI ::/EFI/debian/shimx64.efi ::/EFI/debian/grub.cfg ::/vmlinuz)
for f in "${CHECK[@]}"; do
    mdir -a -i "$P1" "$f" >/dev/null 2>&1 || die "missing $f on the FAT partition"
done
rm -f "$WORK/p1.fat"

mkdir -p "$(dirname "$OUT")"
mv -f "$DISK" "$OUT.tmp.$$"
mv -f "$OUT.tmp.$$" "$OUT"
log "built $OUT ($(stat -c %s "$OUT") bytes, kernel $KVER, version $VERSION)"
printf '%s\n' "$OUT"

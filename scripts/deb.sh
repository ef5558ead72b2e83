#!/usr/bin/env bash
# Builds the Debian package: bootcast_VERSION_amd64.deb with the binary, systemd units for
# `serve` (bootcast.service) and `relay` (bootcast-relay.service), their /etc/default files and
# the README. The services run as the system user `bootcast` (made by postinst) with only
# CAP_NET_BIND_SERVICE and CAP_NET_RAW.
#
#   scripts/deb.sh [--binary PATH] [--out DIR]
#
# Without --binary it builds the release binary (cargo build --release --locked).
set -euo pipefail
cd "$(dirname "$0")/.."
die() { printf 'deb.sh: error: %s\n' "$*" >&2; exit 1; }
binary="" out="target/deb"
while (($#)); do
    case $1 in
    --binary) binary=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) die "unknown argument $1 (usage: scripts/deb.sh [--binary PATH] [--out DIR])" ;;
    esac
done
command -v dpkg-deb >/dev/null || die "dpkg-deb is missing: apt-get install dpkg"
if [[ -z $binary ]]; then
    cargo build --release --locked --bin bootcast
    binary=target/release/bootcast
fi
[[ -x $binary ]] || die "no executable at $binary"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
[[ -n $version ]] || die "no version in Cargo.toml"
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
install -D -m 0755 "$binary" "$root/usr/bin/bootcast"
for unit in bootcast bootcast-relay; do
    install -D -m 0644 "packaging/debian/$unit.service" "$root/lib/systemd/system/$unit.service"
    install -D -m 0644 "packaging/debian/$unit.default" "$root/etc/default/$unit"
done
install -D -m 0644 README.md "$root/usr/share/doc/bootcast/README.md"
install -d "$root/DEBIAN"
for s in postinst prerm postrm; do install -m 0755 "packaging/debian/$s" "$root/DEBIAN/$s"; done
printf '/etc/default/bootcast\n/etc/default/bootcast-relay\n' >"$root/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat >"$root/DEBIAN/control" <<CONTROL
Package: bootcast
Version: $version
Architecture: amd64
Maintainer: bootcast maintainers <maintainers@bootcast.invalid>
Installed-Size: $size
Depends: adduser, systemd
Recommends: ipxe, shim-signed, grub-efi-amd64-signed
Section: admin
Priority: optional
Homepage: https://bootcast.invalid
Description: network-boot imaging and image distribution server
 One binary: proxyDHCP/DHCP, TFTP and HTTP boot services, a content-addressed image
 store, the agent of the boot environment, site relays with scheduled pushes, room
 multicast and an API. The services run as the unprivileged user bootcast.
CONTROL
mkdir -p "$out"
deb="$out/bootcast_${version}_amd64.deb"
dpkg-deb --root-owner-group --build "$root" "$deb" >/dev/null
printf '%s\n' "$deb"

#!/bin/busybox sh
# bootcast boot environment: /init (PID 1). Template kept in src/bootenv/init.sh and
# included in the binary; `bootcast bootenv build` writes it into the initramfs unchanged.
#
# Mounts proc/sys/dev, loads the kernel modules listed in /lib/modules/order (dependencies
# first), brings up the interface whose MAC is bootcast.mac= (else the first one with a
# carrier) with DHCP, then runs `/bin/bootcast agent boot`, which reports to the server and
# powers off or reboots. On any failure: a line starting BOOTCAST-AGENT-ERROR on the
# console, then a shell (never a silent hang, never a kernel panic from init exiting).
/bin/busybox mkdir -p /proc /sys /dev /run /tmp /etc
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
/bin/busybox --install -s /bin
export PATH=/bin:/usr/sbin HOME=/ TERM=linux
exec </dev/console >/dev/console 2>&1

# Lines go to /dev/console and to the other consoles of the kernel command line
# (console=tty0 console=ttyS0,115200: /dev/console is the last one, ttyS0), so that a PC's
# screen and a serial log both see what happens. /sys/class/tty/console/active lists them,
# /dev/console last.
others=
last=
for c in $(cat /sys/class/tty/console/active 2>/dev/null); do
    others="$others $last"
    last=$c
done
out() {
    echo "$*"
    for c in $others; do
        echo "$*" >"/dev/$c" 2>/dev/null
    done
}
relay() { while IFS= read -r line; do out "$line"; done; }
say() { out "bootcast-init: $*"; }

rescue() {
    out "BOOTCAST-AGENT-ERROR $*"
    say "a shell is available on this console; 'reboot -f' or 'poweroff -f' when done"
    while true; do
        setsid cttyhack sh -l || sh
        say "shell exited; starting another"
    done
}

cmdline=$(cat /proc/cmdline)
want_mac=
for arg in $cmdline; do
    case $arg in
        bootcast.mac=*) want_mac=$(echo "${arg#*=}" | tr 'A-F' 'a-f') ;;
    esac
done
say "bootcast boot environment, kernel $(uname -r)"

loaded=0
failed=
while read -r m; do
    [ -n "$m" ] || continue
    if insmod "/lib/modules/$m.ko" 2>/tmp/insmod.err; then
        loaded=$((loaded + 1))
    elif ! grep -q 'File exists' /tmp/insmod.err; then
        failed="$failed $m"
    fi
done </lib/modules/order
say "loaded $loaded modules${failed:+; failed:$failed}"
# UEFI variables (Secure Boot state, BootOrder): efivarfs, a module in Debian's kernel
if [ -d /sys/firmware/efi/efivars ]; then
    mount -t efivarfs efivarfs /sys/firmware/efi/efivars 2>/dev/null ||
        say "efivarfs not mounted: Secure Boot state and BootOrder unknown"
    sb=/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c
    if [ -r $sb ]; then
        # 4 bytes of attributes, then the value (efivarfs cannot seek: read it all)
        set -- $(od -An -tu1 $sb)
        say "UEFI Secure Boot: $5"
    fi
fi

# Wait up to 30 s for the network interface (USB NICs enumerate late): the one with
# MAC $want_mac, or, with no bootcast.mac= or once 10 s passed without it, the first
# non-loopback interface with a carrier.
iface=
tries=0
while [ -z "$iface" ] && [ $tries -lt 300 ]; do
    for d in /sys/class/net/*; do
        n=${d##*/}
        [ "$n" = lo ] && continue
        [ "$(cat "$d/operstate" 2>/dev/null)" = down ] && ip link set "$n" up 2>/dev/null
        if [ -n "$want_mac" ] && [ "$(cat "$d/address")" = "$want_mac" ]; then
            iface=$n
            break
        fi
    done
    if [ -z "$iface" ] && { [ -z "$want_mac" ] || [ $tries -ge 100 ]; }; then
        for d in /sys/class/net/*; do
            n=${d##*/}
            [ "$n" = lo ] && continue
            if [ "$(cat "$d/carrier" 2>/dev/null)" = 1 ]; then
                [ -n "$want_mac" ] && say "no interface has MAC $want_mac; using $n"
                iface=$n
                break
            fi
        done
    fi
    [ -n "$iface" ] && break
    tries=$((tries + 1))
    sleep 0.1
done
ip link set lo up
if [ -z "$iface" ]; then
    ifaces=$(ls /sys/class/net | tr '\n' ' ')
    rescue "no network interface${want_mac:+ with MAC $want_mac} and none with a carrier (interfaces: $ifaces; modules failed:${failed:- none})"
fi
mac=$(cat "/sys/class/net/$iface/address")
say "interface $iface ($mac)"

ip link set "$iface" up
set -o pipefail
if ! udhcpc -i "$iface" -s /etc/udhcpc.script -n -q -t 10 -T 3 -V bootcast-agent 2>&1 | relay; then
    rescue "DHCP on $iface ($mac) got no lease"
fi

# The agent powers off or reboots the machine itself; it writes its lines to all consoles
# (--all-consoles) and drains them before it does.
/bin/bootcast agent boot --interface "$iface" --all-consoles
rescue "the agent exited with status $? (see the lines above)"

#!/bin/sh
# bootcast boot environment: busybox udhcpc event script (udhcpc -s /etc/udhcpc.script).
# Configures the address, the default route and /etc/resolv.conf; records the lease in
# /run/bootcast-lease for the agent and for debugging.
case $1 in
    deconfig)
        ip -4 addr flush dev "$interface"
        ip link set "$interface" up
        ;;
    bound|renew)
        ip -4 addr flush dev "$interface"
        ifconfig "$interface" "$ip" netmask "${subnet:-255.255.255.0}" ${broadcast:+broadcast "$broadcast"}
        for r in $router; do
            ip route replace default via "$r" dev "$interface"
            break
        done
        : >/etc/resolv.conf
        for d in $dns; do
            echo "nameserver $d" >>/etc/resolv.conf
        done
        {
            echo "interface=$interface"
            echo "ip=$ip"
            echo "subnet=$subnet"
            echo "router=$router"
            echo "dns=$dns"
            echo "siaddr=$siaddr"
            echo "serverid=$serverid"
        } >/run/bootcast-lease
        echo "bootcast-init: $interface has $ip/$subnet${router:+ via $router}"
        ;;
esac
exit 0

//! Local network interfaces: their IPv4 addresses, and which one faces a peer. The one place
//! that asks the kernel (getifaddrs); configuration validation, DHCP and multicast call it.

use std::net::Ipv4Addr;

/// The IPv4 address and netmask of a local interface, from getifaddrs.
pub fn interface_ipv4(name: &str) -> Option<(Ipv4Addr, Ipv4Addr)> {
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    for a in addrs {
        if a.interface_name != name {
            continue;
        }
        // an interface has one entry per address family: skip the link-level and IPv6 ones
        let Some(ip) = a
            .address
            .as_ref()
            .and_then(|s| s.as_sockaddr_in())
            .map(|s| s.ip())
        else {
            continue;
        };
        let mask = a
            .netmask
            .as_ref()
            .and_then(|s| s.as_sockaddr_in())
            .map(|m| m.ip())
            .unwrap_or(Ipv4Addr::new(255, 255, 255, 0));
        return Some((ip, mask));
    }
    None
}

/// The local interface whose IPv4 subnet holds `peer` (where a room multicast to it goes out).
pub fn interface_facing(peer: Ipv4Addr) -> Option<String> {
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    for a in addrs {
        let ip = a
            .address
            .as_ref()
            .and_then(|s| s.as_sockaddr_in())
            .map(|s| s.ip());
        let mask = a
            .netmask
            .as_ref()
            .and_then(|s| s.as_sockaddr_in())
            .map(|m| m.ip());
        if let (Some(ip), Some(mask)) = (ip, mask) {
            let m = u32::from(mask);
            if !ip.is_loopback() && u32::from(ip) & m == u32::from(peer) & m {
                return Some(a.interface_name);
            }
        }
    }
    None
}

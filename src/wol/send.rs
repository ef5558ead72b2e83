//! Sending magic packets on a segment: UDP to the broadcast address of the interface facing
//! the hosts, from that interface (bound to the device, so a server with several segments
//! wakes each host on its own).

use std::net::{Ipv4Addr, SocketAddrV4};

use socket2::{Domain, Protocol, Socket, Type};

use super::{magic_packet, Password, PORT};
use crate::mac::Mac;

#[derive(Debug, thiserror::Error)]
pub enum WakeError {
    #[error("interface {0} has no IPv4 address: wake packets go out on the interface facing the hosts (the DHCP interface)")]
    Interface(String),
    #[error("sending wake packets on {interface}: {source}")]
    Io {
        interface: String,
        #[source]
        source: std::io::Error,
    },
}

/// A segment to wake hosts on: an interface and its IPv4 broadcast address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub interface: String,
    pub address: Ipv4Addr,
    pub netmask: Ipv4Addr,
    pub broadcast: Ipv4Addr,
}

impl Segment {
    /// The segment of local interface `interface`.
    pub fn of(interface: &str) -> Result<Segment, WakeError> {
        let (address, mask) = crate::netif::interface_ipv4(interface)
            .ok_or_else(|| WakeError::Interface(interface.to_string()))?;
        Ok(Segment {
            interface: interface.to_string(),
            address,
            netmask: mask,
            broadcast: Ipv4Addr::from(u32::from(address) | !u32::from(mask)),
        })
    }

    /// Whether `ip` is on this segment's subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let m = u32::from(self.netmask);
        u32::from(ip) & m == u32::from(self.address) & m
    }
}

/// The segments (indexes into `segments`) a host last seen at `ip` is woken on: the one whose
/// subnet holds it, else every one (a host never seen by this node's DHCP, or seen elsewhere).
pub fn segments_for(segments: &[Segment], ip: Option<Ipv4Addr>) -> Vec<usize> {
    let on: Vec<usize> = (0..segments.len())
        .filter(|&i| ip.is_some_and(|ip| segments[i].contains(ip)))
        .collect();
    if on.is_empty() {
        (0..segments.len()).collect()
    } else {
        on
    }
}

/// How each host is woken: the packet `repeat` times (a switch port coming up, a NIC
/// between power states can miss one), with the SecureOn password if the NICs want one.
#[derive(Debug, Clone)]
pub struct WakeOptions {
    pub repeat: u32,
    pub password: Option<Password>,
}

impl Default for WakeOptions {
    fn default() -> Self {
        WakeOptions {
            repeat: 3,
            password: None,
        }
    }
}

/// Sends the magic packets of `macs` on `segment`; returns how many datagrams went out.
pub fn send(segment: &Segment, macs: &[Mac], opts: &WakeOptions) -> Result<u64, WakeError> {
    let io = |source| WakeError::Io {
        interface: segment.interface.clone(),
        source,
    };
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(io)?;
    socket.set_broadcast(true).map_err(io)?;
    socket
        .bind_device(Some(segment.interface.as_bytes()))
        .map_err(io)?;
    socket
        .bind(&SocketAddrV4::new(segment.address, 0).into())
        .map_err(io)?;
    let to = SocketAddrV4::new(segment.broadcast, PORT).into();
    let mut sent = 0;
    for _ in 0..opts.repeat.max(1) {
        for &mac in macs {
            socket
                .send_to(&magic_packet(mac, opts.password.as_ref()), &to)
                .map_err(io)?;
            sent += 1;
        }
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_is_woken_on_the_segment_that_saw_it_else_on_all() {
        let seg = |i: &str, a: [u8; 4]| Segment {
            interface: i.into(),
            address: a.into(),
            netmask: Ipv4Addr::new(255, 255, 255, 0),
            broadcast: Ipv4Addr::new(a[0], a[1], a[2], 255),
        };
        let s = [seg("br0", [10, 99, 0, 1]), seg("br1", [10, 99, 1, 1])];
        assert_eq!(segments_for(&s, Some(Ipv4Addr::new(10, 99, 1, 120))), [1]);
        assert_eq!(segments_for(&s, Some(Ipv4Addr::new(10, 99, 0, 120))), [0]);
        assert_eq!(segments_for(&s, Some(Ipv4Addr::new(10, 98, 0, 1))), [0, 1]);
        assert_eq!(segments_for(&s, None), [0, 1]);
    }
}

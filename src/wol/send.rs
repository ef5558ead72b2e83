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
            broadcast: Ipv4Addr::from(u32::from(address) | !u32::from(mask)),
        })
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

//! Room multicast: one sender streams an image's compressed chunks to many receivers at once
//! over IPv4 multicast (issue 7). The protocol is specified in [`proto`].
//!
//! - [`proto`]: the datagram codec (pure).
//! - [`receiver`]: reassembly, verification, NAKs (pure state machine) and its socket loop.
//! - [`sender`]: the carousel, rate control, the session's start and end, its socket loop.

pub mod proto;
pub mod receiver;
pub mod sender;
pub mod sessions;

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use crate::store::StoreError;

/// Why a multicast session could not run.
#[derive(Debug, thiserror::Error)]
pub enum MulticastError {
    #[error("interface {0} has no IPv4 address (multicast needs one to join the group)")]
    Interface(String),
    #[error("{0} is not an IPv4 multicast group (use 239.x.y.z, organisation-local)")]
    Group(Ipv4Addr),
    #[error("multicast socket: {what}: {cause}")]
    Socket {
        what: &'static str,
        cause: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where a session runs: group and port, and the local interface.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub interface: String,
    pub group: Ipv4Addr,
    pub port: u16,
    /// Multicast TTL (1: the datagrams never leave the local network).
    pub ttl: u32,
}

impl Endpoint {
    /// The interface's IPv4 address.
    pub fn local(&self) -> Result<Ipv4Addr, MulticastError> {
        crate::netif::interface_ipv4(&self.interface)
            .map(|(ip, _)| ip)
            .ok_or_else(|| MulticastError::Interface(self.interface.clone()))
    }

    /// A UDP socket bound to the group's port, joined (IGMP) on the interface, sending to the
    /// group through that interface with the TTL; reads time out after `timeout`.
    pub fn socket(&self, loopback: bool, timeout: Duration) -> Result<UdpSocket, MulticastError> {
        if !self.group.is_multicast() {
            return Err(MulticastError::Group(self.group));
        }
        let local = self.local()?;
        let err = |what| move |cause| MulticastError::Socket { what, cause };
        let s =
            Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(err("creating"))?;
        s.set_reuse_address(true).map_err(err("SO_REUSEADDR"))?;
        // large buffers absorb bursts while a chunk is decoded and written; rmem_max caps
        // SO_RCVBUF (208 KiB by default), so force it where allowed (root, as the agent is)
        if nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::RcvBufForce, &RECV_BUFFER)
            .is_err()
        {
            let _ = s.set_recv_buffer_size(RECV_BUFFER);
        }
        let _ = s.set_send_buffer_size(1 << 20);
        s.bind(&SocketAddrV4::new(self.group, self.port).into())
            .map_err(err("binding the group's port"))?;
        s.join_multicast_v4(&self.group, &local)
            .map_err(err("joining the group (IGMP)"))?;
        s.set_multicast_if_v4(&local)
            .map_err(err("IP_MULTICAST_IF"))?;
        s.set_multicast_ttl_v4(self.ttl)
            .map_err(err("IP_MULTICAST_TTL"))?;
        s.set_multicast_loop_v4(loopback)
            .map_err(err("IP_MULTICAST_LOOP"))?;
        s.set_read_timeout(Some(timeout))
            .map_err(err("SO_RCVTIMEO"))?;
        Ok(s.into())
    }

    pub fn destination(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.group, self.port)
    }
}

/// A small deterministic generator (xorshift64*) for jitter, loss injection and session ids.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    /// Seeded from the clock and the process id.
    pub fn from_entropy() -> Rng {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        Rng::new(t ^ ((std::process::id() as u64) << 32))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Receive buffer asked for: 16 MiB holds ~0.13 s of a 1 Gbit/s stream.
const RECV_BUFFER: usize = 16 << 20;

/// One datagram if one is waiting, else `WouldBlock` at once (whatever the socket's timeout).
fn recv_now(socket: &UdpSocket, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    nix::sys::socket::recv(
        socket.as_raw_fd(),
        buf,
        nix::sys::socket::MsgFlags::MSG_DONTWAIT,
    )
    .map_err(std::io::Error::from)
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

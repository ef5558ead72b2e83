//! A DHCP client for the tests that run a DHCP service in a network namespace: the
//! client's socket on its veth end (`vc`) and one request/reply exchange.

use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use bootcast::boot::dhcp::codec::ReplyView;
use socket2::{Domain, Protocol, Socket, Type};

/// Moves the calling thread into network namespace `ns` (`ip netns` name).
pub fn enter(ns: &str) {
    let f = std::fs::File::open(format!("/run/netns/{ns}")).expect("open netns");
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
}

/// A DHCP client's socket on interface `vc` at `addr` (broadcast allowed, 250 ms reads).
pub fn client_socket(addr: SocketAddrV4) -> UdpSocket {
    socket_on(Some("vc"), addr)
}

/// A DHCP client's (or relay agent's) socket at `addr`, on `device` if given (broadcast
/// allowed, 250 ms reads).
pub fn socket_on(device: Option<&str>, addr: SocketAddrV4) -> UdpSocket {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    s.set_reuse_address(true).unwrap();
    s.set_broadcast(true).unwrap();
    if let Some(d) = device {
        s.bind_device(Some(d.as_bytes())).unwrap();
    }
    s.bind(&SocketAddr::V4(addr).into()).unwrap();
    let s: UdpSocket = s.into();
    s.set_read_timeout(Some(Duration::from_millis(250)))
        .unwrap();
    s
}

/// Sends `req` to `to` and waits for a BOOTREPLY with its xid, retransmitting on silence like a
/// DHCP client (the server thread may still be binding its sockets at first).
pub fn exchange(sock: &UdpSocket, req: &[u8], to: SocketAddrV4) -> (ReplyView, SocketAddr) {
    let xid = u32::from_be_bytes([req[4], req[5], req[6], req[7]]);
    let mut buf = [0u8; 1500];
    for _ in 0..40 {
        sock.send_to(req, to).expect("send");
        loop {
            match sock.recv_from(&mut buf) {
                Ok((n, from)) => {
                    if let Some(v) = ReplyView::parse(&buf[..n]) {
                        if v.op == 2 && v.xid == xid {
                            return (v, from);
                        }
                    }
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    break
                }
                Err(e) => panic!("recv: {e}"),
            }
        }
    }
    panic!("no reply to xid {xid:#x} sent to {to}");
}

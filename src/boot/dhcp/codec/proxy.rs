//! proxyDHCP: boot information only, on ports 67 and 4011; addresses come from another DHCP
//! server.

use std::net::{Ipv4Addr, SocketAddrV4};

use dhcproto::v4::{DhcpOption, Flags, MessageType};

use super::*;

pub(super) fn proxy(
    req: &Request<'_>,
    mtype: u8,
    local_port: u16,
    src: SocketAddrV4,
    s: &DhcpSettings,
) -> Result<Reply, NoReply> {
    let class = req.class();
    if class == ClientClass::Other {
        return Err(NoReply::Ignored("proxyDHCP: not a PXEClient/HTTPClient"));
    }
    let reply_type = match (local_port, mtype) {
        (SERVER_PORT, msg::DISCOVER) => msg::OFFER,
        (PXE_PORT, msg::REQUEST) | (PXE_PORT, msg::INFORM) => msg::ACK,
        (SERVER_PORT, _) => {
            return Err(NoReply::Ignored("proxyDHCP: port 67 answers DISCOVER only"))
        }
        _ => {
            return Err(NoReply::Ignored(
                "proxyDHCP: port 4011 answers REQUEST only",
            ))
        }
    };
    let boot = choose_boot(req, s);
    if boot.file().is_none() {
        return Err(NoReply::Unconfigured {
            mac: req.mac,
            arch: req.arch,
        });
    }
    let dest = if reply_type == msg::OFFER {
        if !req.giaddr.is_unspecified() {
            SocketAddrV4::new(req.giaddr, SERVER_PORT)
        } else {
            SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT)
        }
    } else if src.ip().is_unspecified() {
        SocketAddrV4::new(Ipv4Addr::BROADCAST, src.port())
    } else {
        src
    };
    let mut m = base_reply(req);
    let mut flags = req.flags;
    if reply_type == msg::OFFER {
        // The client has no address yet (dnsmasq does the same).
        flags |= 0x8000;
    } else {
        m.set_ciaddr(req.ciaddr);
    }
    m.set_flags(Flags::new(flags));
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(MessageType::from(reply_type)));
    o.insert(DhcpOption::ServerIdentifier(s.server_ip));
    add_boot(&mut m, req, &boot, s, true);
    let bytes = finish(&m, req)?;
    Ok(Reply {
        bytes,
        dest,
        summary: Summary {
            mac: req.mac,
            arch: req.arch,
            reply_type,
            address: None,
            boot,
        },
    })
}

//! Requests built with dhcproto and replies read back: for tests, the load client and
//! hand-made fixtures.

use std::net::Ipv4Addr;

use dhcproto::v4::{Architecture, DhcpOption, Flags, Message, MessageType};
use dhcproto::{Encodable, Encoder};

use super::wire::ip_at;
use super::*;

/// Builds a client request with dhcproto: for tests, the load client and hand-made fixtures.
#[doc(hidden)]
pub fn build_request(b: &RequestBuilder<'_>) -> Vec<u8> {
    let mut m = Message::new_with_id(
        b.xid,
        b.ciaddr,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        b.giaddr,
        &b.mac.0,
    );
    m.set_flags(Flags::new(b.flags));
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(MessageType::from(b.msg_type)));
    if let Some(a) = b.arch {
        o.insert(DhcpOption::ClientSystemArchitecture(Architecture::from(a)));
        o.insert(DhcpOption::ClientNetworkInterface(1, 3, 0));
    }
    if let Some(vc) = b.vendor_class {
        o.insert(DhcpOption::ClassIdentifier(vc.as_bytes().to_vec()));
    }
    if let Some(uc) = b.user_class {
        o.insert(DhcpOption::UserClass(uc.as_bytes().to_vec()));
    }
    if let Some(ip) = b.requested_ip {
        o.insert(DhcpOption::RequestedIpAddress(ip));
    }
    if let Some(ip) = b.server_id {
        o.insert(DhcpOption::ServerIdentifier(ip));
    }
    if let Some(u) = b.uuid {
        o.insert(DhcpOption::ClientMachineIdentifier(u.to_vec()));
    }
    let mut out = Vec::new();
    m.encode(&mut Encoder::new(&mut out))
        .expect("request encodes");
    if let Some(ri) = b.relay_info {
        out.pop();
        out.extend_from_slice(&[82, ri.len() as u8]);
        out.extend_from_slice(ri);
        out.push(255);
    }
    out
}

/// Inputs of [`build_request`].
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct RequestBuilder<'a> {
    pub xid: u32,
    pub mac: Mac,
    pub msg_type: u8,
    pub flags: u16,
    pub ciaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub arch: Option<u16>,
    pub vendor_class: Option<&'a str>,
    pub user_class: Option<&'a str>,
    pub requested_ip: Option<Ipv4Addr>,
    pub server_id: Option<Ipv4Addr>,
    pub uuid: Option<&'a [u8]>,
    pub relay_info: Option<&'a [u8]>,
}

impl<'a> RequestBuilder<'a> {
    /// A DISCOVER from `mac` with nothing else set.
    pub fn discover(xid: u32, mac: Mac) -> RequestBuilder<'a> {
        RequestBuilder {
            xid,
            mac,
            msg_type: msg::DISCOVER,
            flags: 0,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: Ipv4Addr::UNSPECIFIED,
            arch: None,
            vendor_class: None,
            user_class: None,
            requested_ip: None,
            server_id: None,
            uuid: None,
            relay_info: None,
        }
    }
}

/// A decoded reply, for tests and the load client: the fields the acceptance checks look at.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct ReplyView {
    pub op: u8,
    pub xid: u32,
    pub flags: u16,
    pub ciaddr: Ipv4Addr,
    pub yiaddr: Ipv4Addr,
    pub siaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub chaddr: [u8; 6],
    /// The file field up to its first NUL.
    pub file: Vec<u8>,
    /// Raw options in order (code, value); pads and End skipped.
    pub options: Vec<(u8, Vec<u8>)>,
    pub len: usize,
}

impl ReplyView {
    /// Reads a BOOTREPLY (same strictness as [`parse`], without the Ethernet check).
    pub fn parse(b: &[u8]) -> Option<ReplyView> {
        if b.len() < HEADER_LEN || b[236..240] != MAGIC_COOKIE {
            return None;
        }
        let file = b[108..236]
            .split(|&c| c == 0)
            .next()
            .unwrap_or(&[])
            .to_vec();
        let mut options = Vec::new();
        let mut at = HEADER_LEN;
        while at < b.len() {
            match b[at] {
                0 => at += 1,
                255 => break,
                code => {
                    let len = *b.get(at + 1)? as usize;
                    let v = b.get(at + 2..at + 2 + len)?;
                    options.push((code, v.to_vec()));
                    at += 2 + len;
                }
            }
        }
        let mut chaddr = [0; 6];
        chaddr.copy_from_slice(&b[28..34]);
        Some(ReplyView {
            op: b[0],
            xid: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            flags: u16::from_be_bytes([b[10], b[11]]),
            ciaddr: ip_at(b, 12),
            yiaddr: ip_at(b, 16),
            siaddr: ip_at(b, 20),
            giaddr: ip_at(b, 24),
            chaddr,
            file,
            options,
            len: b.len(),
        })
    }

    /// The value of option `code`.
    pub fn opt(&self, code: u8) -> Option<&[u8]> {
        self.options
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| v.as_slice())
    }

    /// Option 53.
    pub fn msg_type(&self) -> Option<u8> {
        self.opt(53).and_then(|v| v.first().copied())
    }
}

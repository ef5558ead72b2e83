//! A BOOTREQUEST read from its bytes: a small total parser (see the module documentation of
//! [`super`] for why not dhcproto's decoder).

use std::net::Ipv4Addr;

use super::*;

/// Why a datagram is not a request we can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("{0} bytes, shorter than the 240-byte BOOTP header with cookie")]
    TooShort(usize),
    #[error("op {0} is not BOOTREQUEST")]
    NotRequest(u8),
    #[error("bad magic cookie {0:02x?}")]
    BadCookie([u8; 4]),
    #[error("hardware type {htype} length {hlen}: only Ethernet is served")]
    NotEthernet { htype: u8, hlen: u8 },
    #[error("client hardware address {0} is all zeros or multicast: not a NIC")]
    BadMac(Mac),
    #[error("option {code} at offset {at} overruns the datagram")]
    OptionOverrun { code: u8, at: usize },
    #[error("option {code} has length {len}, expected {expected}")]
    OptionLength {
        code: u8,
        len: usize,
        expected: &'static str,
    },
}

/// The parts of a BOOTREQUEST the decision uses. Borrowed from the datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    pub xid: u32,
    pub secs: u16,
    pub flags: u16,
    pub hops: u8,
    pub ciaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub mac: Mac,
    /// Option 53, if present.
    pub msg_type: Option<u8>,
    /// Option 50.
    pub requested_ip: Option<Ipv4Addr>,
    /// Option 54.
    pub server_id: Option<Ipv4Addr>,
    /// Option 60.
    pub vendor_class: Option<&'a [u8]>,
    /// Option 77.
    pub user_class: Option<&'a [u8]>,
    /// Option 93 (first entry), else the `Arch:NNNNN` field of a PXEClient/HTTPClient option 60.
    pub arch: Option<u16>,
    /// Option 97 (client UUID), echoed to PXE clients.
    pub uuid: Option<&'a [u8]>,
    /// Option 82, raw, echoed in the reply.
    pub relay_info: Option<&'a [u8]>,
    /// Option 175 present: iPXE's encapsulated options.
    pub ipxe_options: bool,
}

/// Message types (option 53).
pub mod msg {
    pub const DISCOVER: u8 = 1;
    pub const OFFER: u8 = 2;
    pub const REQUEST: u8 = 3;
    pub const DECLINE: u8 = 4;
    pub const ACK: u8 = 5;
    pub const NAK: u8 = 6;
    pub const RELEASE: u8 = 7;
    pub const INFORM: u8 = 8;
}

pub(super) fn ip_at(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

pub(super) fn ip_opt(code: u8, v: &[u8]) -> Result<Ipv4Addr, ParseError> {
    if v.len() != 4 {
        return Err(ParseError::OptionLength {
            code,
            len: v.len(),
            expected: "4",
        });
    }
    Ok(ip_at(v, 0))
}

/// Reads a BOOTREQUEST. Total: any byte string gives `Ok` or `Err`, never a panic.
pub fn parse(b: &[u8]) -> Result<Request<'_>, ParseError> {
    if b.len() < HEADER_LEN {
        return Err(ParseError::TooShort(b.len()));
    }
    if b[0] != 1 {
        return Err(ParseError::NotRequest(b[0]));
    }
    let cookie = [b[236], b[237], b[238], b[239]];
    if cookie != MAGIC_COOKIE {
        return Err(ParseError::BadCookie(cookie));
    }
    let (htype, hlen) = (b[1], b[2]);
    if htype != 1 || hlen != 6 {
        return Err(ParseError::NotEthernet { htype, hlen });
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&b[28..34]);
    // all zeros is how the lease store marks DECLINEd addresses; multicast is no NIC
    if mac == [0; 6] || mac[0] & 1 == 1 {
        return Err(ParseError::BadMac(Mac(mac)));
    }
    let mut r = Request {
        xid: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        secs: u16::from_be_bytes([b[8], b[9]]),
        flags: u16::from_be_bytes([b[10], b[11]]),
        hops: b[3],
        ciaddr: ip_at(b, 12),
        giaddr: ip_at(b, 24),
        mac: Mac(mac),
        msg_type: None,
        requested_ip: None,
        server_id: None,
        vendor_class: None,
        user_class: None,
        arch: None,
        uuid: None,
        relay_info: None,
        ipxe_options: false,
    };
    let mut arch_opt = None;
    let mut at = HEADER_LEN;
    // Options: code, length, value; 0 is a pad byte, 255 the end. A missing End at the very
    // end of the datagram is tolerated (some stacks omit it); an option running past it is not.
    // The first occurrence of an option wins.
    while at < b.len() {
        let code = b[at];
        match code {
            0 => {
                at += 1;
                continue;
            }
            255 => break,
            _ => {}
        }
        let Some(&len) = b.get(at + 1) else {
            return Err(ParseError::OptionOverrun { code, at });
        };
        let start = at + 2;
        let end = start + len as usize;
        let Some(v) = b.get(start..end) else {
            return Err(ParseError::OptionOverrun { code, at });
        };
        match code {
            53 if r.msg_type.is_none() => {
                if v.len() != 1 {
                    return Err(ParseError::OptionLength {
                        code,
                        len: v.len(),
                        expected: "1",
                    });
                }
                r.msg_type = Some(v[0]);
            }
            50 if r.requested_ip.is_none() => r.requested_ip = Some(ip_opt(code, v)?),
            54 if r.server_id.is_none() => r.server_id = Some(ip_opt(code, v)?),
            60 if r.vendor_class.is_none() => r.vendor_class = Some(v),
            77 if r.user_class.is_none() => r.user_class = Some(v),
            93 if arch_opt.is_none() => {
                if v.len() < 2 || v.len() % 2 != 0 {
                    return Err(ParseError::OptionLength {
                        code,
                        len: v.len(),
                        expected: "a positive multiple of 2",
                    });
                }
                arch_opt = Some(u16::from_be_bytes([v[0], v[1]]));
            }
            97 if r.uuid.is_none() => r.uuid = Some(v),
            82 if r.relay_info.is_none() => r.relay_info = Some(v),
            175 => r.ipxe_options = true,
            _ => {}
        }
        at = end;
    }
    r.arch = arch_opt.or_else(|| r.vendor_class.and_then(arch_from_vendor_class));
    Ok(r)
}

/// `PXEClient:Arch:00007:UNDI:003000` → 7.
pub(super) fn arch_from_vendor_class(vc: &[u8]) -> Option<u16> {
    let rest = vc
        .strip_prefix(b"PXEClient:Arch:")
        .or_else(|| vc.strip_prefix(b"HTTPClient:Arch:"))?;
    let digits = rest.get(..5)?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

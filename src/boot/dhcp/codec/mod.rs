//! The DHCP decision, pure: request bytes in, reply bytes and destination out.
//!
//! Requests are parsed by [`parse`], a small total parser of our own (bounds-checked, no
//! panics, strict about the cookie and option lengths): dhcproto's decoder accepts overrunning
//! or mis-sized options silently and has `debug_assert!`s on option lengths, which a fuzzed
//! datagram can trip. Replies are built with dhcproto and then finished here: option 82 echoed
//! verbatim (RFC 3046 §2.2) and the whole padded to the 300-byte BOOTP minimum.
//!
//! Nothing here opens a socket or reads the clock: the caller passes the local port the request
//! came in on, its source address, the settings, the lease store and the time.
//!
//! Files: [`wire`] (parsing a request), [`decide`] (which client, which boot file), `proxy`
//! (proxyDHCP replies), `full` (full mode: leases and address replies), [`testing`] (requests
//! built for tests and the load client, replies read back); the reply builders that both modes
//! share and [`respond`] are here.

mod decide;
mod full;
mod proxy;
pub mod testing;
pub mod wire;

use std::net::{Ipv4Addr, SocketAddrV4};

use dhcproto::v4::{DhcpOption, DhcpOptions, Flags, HType, Message, Opcode};
use dhcproto::{Encodable, Encoder};

use super::{DhcpMode, DhcpSettings, LeaseStore};
use super::{Lease, LeaseError, Mac};
use full::full;
use proxy::proxy;

pub use decide::{choose_boot, Boot, ClientClass};
pub use testing::{build_request, ReplyView, RequestBuilder};
pub use wire::{msg, parse, ParseError, Request};

/// DHCP server port.
pub const SERVER_PORT: u16 = 67;
/// DHCP client port.
pub const CLIENT_PORT: u16 = 68;
/// PXE boot server / proxyDHCP port.
pub const PXE_PORT: u16 = 4011;
/// Replies are padded to this size (RFC 1542 §2.1; some PXE ROMs and the Linux kernel's
/// DHCP client drop shorter ones).
pub const BOOTP_MIN_LEN: usize = 300;
/// Fixed BOOTP header, up to and including the magic cookie.
pub const HEADER_LEN: usize = 240;
/// The DHCP magic cookie (RFC 2131 §3).
pub const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
/// How long an OFFERed address is held for the client that was offered it.
pub const OFFER_HOLD_SECS: u64 = 60;
/// How long a DECLINEd address is kept out of the pool.
pub const DECLINE_HOLD_SECS: u64 = 600;
/// PXE vendor option (43) content: PXE_DISCOVERY_CONTROL (6) = 8 ("a boot file name is in
/// this offer: download it, no menu, no boot server discovery"), then End. What dnsmasq sends
/// when it has no PXE menu.
pub const PXE_VENDOR_OPTS: [u8; 4] = [6, 1, 8, 255];

/// An answer to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The UDP payload, at least [`BOOTP_MIN_LEN`] bytes.
    pub bytes: Vec<u8>,
    /// Where to send it.
    pub dest: SocketAddrV4,
    /// For the log line.
    pub summary: Summary,
}

/// What was answered, for one log line per client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub mac: Mac,
    pub arch: Option<u16>,
    /// Option 53 of the reply.
    pub reply_type: u8,
    /// The address given (full mode OFFER/ACK).
    pub address: Option<Ipv4Addr>,
    pub boot: Boot,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = match self.reply_type {
            msg::OFFER => "OFFER",
            msg::ACK => "ACK",
            msg::NAK => "NAK",
            _ => "?",
        };
        write!(f, "{t} to {}", self.mac)?;
        match self.arch {
            Some(a) => write!(f, " arch {a}")?,
            None => write!(f, " arch -")?,
        }
        if let Some(ip) = self.address {
            write!(f, " address {ip}")?;
        }
        match &self.boot {
            Boot::IpxeScript(u) => write!(f, " iPXE script {u}"),
            Boot::Tftp(x) => write!(f, " TFTP file {x}"),
            Boot::Http(u) => write!(f, " HTTP boot {u}"),
            Boot::Unconfigured(_) => write!(f, " no boot file (architecture not configured)"),
            Boot::Nothing => Ok(()),
        }
    }
}

/// The circuit id (sub-option 1) of a relay agent information option (82, RFC 3046): the
/// switch port the machine is plugged into, as the switch names it (`Gi1/0/7`, `sw2:vlan20:7`).
/// Printable ASCII as is, other bytes in hex; `None` without sub-option 1 or when the option
/// is malformed.
pub fn circuit_id(relay_info: &[u8]) -> Option<String> {
    let mut rest = relay_info;
    while let [code, len, tail @ ..] = rest {
        let len = usize::from(*len);
        if tail.len() < len {
            return None;
        }
        let (value, after) = tail.split_at(len);
        if *code == 1 && !value.is_empty() {
            return Some(if value.iter().all(|b| (0x20..0x7f).contains(b)) {
                String::from_utf8_lossy(value).into_owned()
            } else {
                value.iter().map(|b| format!("{b:02x}")).collect()
            });
        }
        rest = after;
    }
    None
}

/// The address this exchange shows `req`'s machine at, if any: in full mode the address an
/// ACK gave it; in proxy mode the address a REQUEST asks for (option 50) or holds (ciaddr),
/// which the site's DHCP server then confirms. Boot credentials go only to that address.
pub fn observed(mode: DhcpMode, req: &Request<'_>, reply: Option<&Summary>) -> Option<Ipv4Addr> {
    match mode {
        DhcpMode::Full => reply
            .filter(|r| r.reply_type == msg::ACK && r.mac == req.mac)
            .and_then(|r| r.address),
        DhcpMode::Proxy => (req.msg_type == Some(msg::REQUEST))
            .then(|| {
                req.requested_ip
                    .or(Some(req.ciaddr).filter(|a| !a.is_unspecified()))
            })
            .flatten(),
    }
}

/// Why no reply was sent.
#[derive(Debug, thiserror::Error)]
pub enum NoReply {
    /// Unreadable datagram: log at debug, drop.
    #[error("malformed: {0}")]
    Malformed(#[from] ParseError),
    /// A readable request that is not ours to answer.
    #[error("ignored: {0}")]
    Ignored(&'static str),
    /// A PXE/HTTP client whose architecture has no boot file (proxy mode: nothing to say).
    #[error("no boot file configured for architecture {arch:?} of {mac}")]
    Unconfigured { mac: Mac, arch: Option<u16> },
    /// Full mode, no free address.
    #[error("address pool exhausted, no offer for {0}")]
    PoolExhausted(Mac),
    /// A RELEASE or DECLINE was applied (nothing is sent back).
    #[error("{0}")]
    Done(String),
    #[error(transparent)]
    Leases(#[from] LeaseError),
}

/// The whole decision for one datagram.
///
/// - `local_port`: the port it arrived on (67 or 4011).
/// - `src`: its source address and port (proxyDHCP on 4011 answers there).
/// - `now`: unix seconds.
pub fn respond(
    datagram: &[u8],
    local_port: u16,
    src: SocketAddrV4,
    settings: &DhcpSettings,
    leases: &dyn LeaseStore,
    now: u64,
) -> Result<Reply, NoReply> {
    let req = parse(datagram)?;
    let Some(mtype) = req.msg_type else {
        return Err(NoReply::Ignored("BOOTP request without DHCP message type"));
    };
    match settings.mode {
        DhcpMode::Proxy => proxy(&req, mtype, local_port, src, settings),
        DhcpMode::Full => {
            if local_port != SERVER_PORT {
                return Err(NoReply::Ignored("full mode answers on port 67 only"));
            }
            full(&req, mtype, settings, leases, now)
        }
    }
}

/// A BOOTREPLY with the request's xid, flags, giaddr, chaddr.
pub(super) fn base_reply(req: &Request<'_>) -> Message {
    let mut m = Message::new_with_id(
        req.xid,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        req.giaddr,
        &req.mac.0,
    );
    m.set_opcode(Opcode::BootReply)
        .set_htype(HType::Eth)
        .set_flags(Flags::new(req.flags))
        .set_opts(DhcpOptions::new());
    m
}

/// Boot information: siaddr, file, 66/67; proxy replies (and HTTP boot) also 60, 43, 97.
pub(super) fn add_boot(
    m: &mut Message,
    req: &Request<'_>,
    boot: &Boot,
    s: &DhcpSettings,
    proxy: bool,
) {
    let Some(file) = boot.file() else { return };
    m.set_siaddr(s.server_ip);
    // The file field holds 127 bytes plus NUL; a longer URL goes in option 67 only.
    if file.len() < 128 {
        m.set_fname_str(file);
    }
    let o = m.opts_mut();
    if matches!(boot, Boot::Tftp(_)) {
        o.insert(DhcpOption::TFTPServerName(
            s.server_ip.to_string().into_bytes(),
        ));
    }
    o.insert(DhcpOption::BootfileName(file.as_bytes().to_vec()));
    match req.class() {
        ClientClass::Http => {
            // UEFI HTTP boot takes only offers that say HTTPClient.
            o.insert(DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()));
        }
        ClientClass::Pxe if proxy => {
            o.insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
            o.insert(DhcpOption::VendorExtensions(PXE_VENDOR_OPTS.to_vec()));
        }
        // Full mode: a plain DHCP offer with a boot file, which PXE firmware boots directly
        // (with option 60 PXEClient and no menu, UEFI firmware would go asking port 4011).
        _ => {}
    }
    if let (true, Some(uuid)) = (proxy || req.class() != ClientClass::Other, req.uuid) {
        o.insert(DhcpOption::ClientMachineIdentifier(uuid.to_vec()));
    }
}

/// Encodes `m`, appends the relay agent option verbatim, pads to [`BOOTP_MIN_LEN`].
pub(super) fn finish(m: &Message, req: &Request<'_>) -> Result<Vec<u8>, NoReply> {
    let mut out = Vec::with_capacity(512);
    m.encode(&mut Encoder::new(&mut out))
        .map_err(|_| NoReply::Ignored("reply did not encode"))?;
    // dhcproto ends the options with 255; put option 82 before it.
    if out.last() == Some(&255) {
        out.pop();
    }
    if let Some(ri) = req.relay_info {
        out.push(82);
        out.push(ri.len() as u8);
        out.extend_from_slice(ri);
    }
    out.push(255);
    if out.len() < BOOTP_MIN_LEN {
        out.resize(BOOTP_MIN_LEN, 0);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;

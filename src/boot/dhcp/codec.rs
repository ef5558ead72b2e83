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

use std::net::{Ipv4Addr, SocketAddrV4};

use dhcproto::v4::{
    Architecture, DhcpOption, DhcpOptions, Flags, HType, Message, MessageType, Opcode,
};
use dhcproto::{Encodable, Encoder};

use super::{DhcpMode, DhcpSettings, Lease, LeaseError, LeaseStore, Mac};

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

fn ip_at(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

fn ip_opt(code: u8, v: &[u8]) -> Result<Ipv4Addr, ParseError> {
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
fn arch_from_vendor_class(vc: &[u8]) -> Option<u16> {
    let rest = vc
        .strip_prefix(b"PXEClient:Arch:")
        .or_else(|| vc.strip_prefix(b"HTTPClient:Arch:"))?;
    let digits = rest.get(..5)?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// What kind of boot client a request comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientClass {
    /// Option 60 starts with `PXEClient`.
    Pxe,
    /// Option 60 starts with `HTTPClient` (UEFI HTTP boot).
    Http,
    /// Anything else: an ordinary DHCP client.
    Other,
}

impl Request<'_> {
    pub fn class(&self) -> ClientClass {
        match self.vendor_class {
            Some(v) if v.starts_with(b"PXEClient") => ClientClass::Pxe,
            Some(v) if v.starts_with(b"HTTPClient") => ClientClass::Http,
            _ => ClientClass::Other,
        }
    }

    /// iPXE says who it is with user class `iPXE` (raw, or RFC 3004-framed) or option 175.
    pub fn is_ipxe(&self) -> bool {
        self.ipxe_options || matches!(self.user_class, Some(u) if u == b"iPXE" || u == b"\x04iPXE")
    }
}

/// What a client is told to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    /// The iPXE script URL (HTTP): the chain ends here.
    IpxeScript(String),
    /// A file name fetched by TFTP from siaddr.
    Tftp(String),
    /// An HTTP-boot URL (UEFI HTTP boot).
    Http(String),
    /// A boot client whose architecture has no entry in the boot files.
    Unconfigured(Option<u16>),
    /// Not a boot client.
    Nothing,
}

impl Boot {
    fn file(&self) -> Option<&str> {
        match self {
            Boot::IpxeScript(f) | Boot::Tftp(f) | Boot::Http(f) => Some(f),
            Boot::Unconfigured(_) | Boot::Nothing => None,
        }
    }
}

/// Picks the boot file for a request.
pub fn choose_boot(req: &Request<'_>, settings: &DhcpSettings) -> Boot {
    let class = req.class();
    if req.is_ipxe() {
        return Boot::IpxeScript(settings.ipxe_script_url.clone());
    }
    if class == ClientClass::Other {
        return Boot::Nothing;
    }
    let Some(arch) = req.arch else {
        return Boot::Unconfigured(None);
    };
    match settings.boot_files.get(arch) {
        Some(f) if f.starts_with("http://") || f.starts_with("https://") => {
            Boot::Http(f.to_string())
        }
        Some(f) => Boot::Tftp(f.to_string()),
        None => Boot::Unconfigured(Some(arch)),
    }
}

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

fn proxy(
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

/// A BOOTREPLY with the request's xid, flags, giaddr, chaddr.
fn base_reply(req: &Request<'_>) -> Message {
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
fn add_boot(m: &mut Message, req: &Request<'_>, boot: &Boot, s: &DhcpSettings, proxy: bool) {
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
fn finish(m: &Message, req: &Request<'_>) -> Result<Vec<u8>, NoReply> {
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

fn full(
    req: &Request<'_>,
    mtype: u8,
    s: &DhcpSettings,
    leases: &dyn LeaseStore,
    now: u64,
) -> Result<Reply, NoReply> {
    let pool = s
        .pool
        .as_ref()
        .ok_or(NoReply::Ignored("full mode without a pool"))?;
    if !req.giaddr.is_unspecified() && !pool.same_subnet(req.giaddr) {
        return Err(NoReply::Ignored("relayed from a subnet without a pool"));
    }
    let mac = req.mac;
    match mtype {
        msg::DISCOVER => {
            let Some(ip) = pick_address(req, pool, leases, now)? else {
                return Err(NoReply::PoolExhausted(mac));
            };
            // Hold the offered address for this MAC (never shorten a longer lease).
            let held = leases.by_ip(ip)?;
            if !matches!(held, Some(l) if l.mac == mac && l.expires >= now + OFFER_HOLD_SECS) {
                rebind(leases, mac, ip, now + OFFER_HOLD_SECS)?;
            }
            Ok(address_reply(req, msg::OFFER, Some(ip), s, now))
        }
        msg::REQUEST => {
            if let Some(sid) = req.server_id {
                if sid != s.server_ip {
                    // The client took another server's offer: drop our hold.
                    if let Some(l) = leases.by_mac(mac)? {
                        if l.expires <= now + OFFER_HOLD_SECS {
                            leases.release(l.ip)?;
                        }
                    }
                    return Err(NoReply::Ignored("REQUEST for another server"));
                }
            }
            let ip = match (req.requested_ip, req.ciaddr) {
                (Some(ip), _) => ip,
                (None, c) if !c.is_unspecified() => c,
                _ => return Err(NoReply::Ignored("REQUEST without an address")),
            };
            if !pool.contains(ip) {
                return Ok(nak(req, s, "address not in pool"));
            }
            match leases.by_ip(ip)? {
                Some(l) if l.mac != mac && l.expires > now => {
                    Ok(nak(req, s, "address held by another client"))
                }
                _ => {
                    rebind(leases, mac, ip, now + u64::from(pool.lease_secs))?;
                    Ok(address_reply(req, msg::ACK, Some(ip), s, now))
                }
            }
        }
        msg::RELEASE => {
            let ip = req.ciaddr;
            match leases.by_ip(ip)? {
                Some(l) if l.mac == mac => {
                    leases.release(ip)?;
                    Err(NoReply::Done(format!("{mac} released {ip}")))
                }
                _ => Err(NoReply::Ignored(
                    "RELEASE of an address the MAC does not hold",
                )),
            }
        }
        msg::DECLINE => {
            let Some(ip) = req.requested_ip else {
                return Err(NoReply::Ignored("DECLINE without option 50"));
            };
            match leases.by_ip(ip)? {
                Some(l) if l.mac == mac => {
                    leases.upsert(Lease {
                        ip,
                        mac: Mac::DECLINED,
                        expires: now + DECLINE_HOLD_SECS,
                    })?;
                    Err(NoReply::Done(format!(
                        "{mac} declined {ip}: kept out of the pool for {DECLINE_HOLD_SECS} s"
                    )))
                }
                _ => Err(NoReply::Ignored(
                    "DECLINE of an address the MAC does not hold",
                )),
            }
        }
        msg::INFORM => Ok(address_reply(req, msg::ACK, None, s, now)),
        _ => Err(NoReply::Ignored("message type a server does not answer")),
    }
}

/// Binds `ip` to `mac` until `expires`, releasing the MAC's previous address first.
fn rebind(leases: &dyn LeaseStore, mac: Mac, ip: Ipv4Addr, expires: u64) -> Result<(), LeaseError> {
    if let Some(old) = leases.by_mac(mac)? {
        if old.ip != ip {
            leases.release(old.ip)?;
        }
    }
    leases.upsert(Lease { ip, mac, expires })
}

/// Sticky first: the MAC's own (even expired) lease; then the requested address if free; then
/// the first address never used; then the longest-expired one.
fn pick_address(
    req: &Request<'_>,
    pool: &super::PoolSettings,
    leases: &dyn LeaseStore,
    now: u64,
) -> Result<Option<Ipv4Addr>, LeaseError> {
    let mac = req.mac;
    if let Some(l) = leases.by_mac(mac)? {
        if pool.contains(l.ip) {
            return Ok(Some(l.ip));
        }
    }
    if let Some(ip) = req.requested_ip {
        if pool.contains(ip) {
            match leases.by_ip(ip)? {
                None => return Ok(Some(ip)),
                Some(l) if l.expires <= now => return Ok(Some(ip)),
                _ => {}
            }
        }
    }
    let rows = leases.list()?;
    let by_ip: std::collections::HashMap<Ipv4Addr, Lease> =
        rows.iter().map(|l| (l.ip, *l)).collect();
    let mut oldest: Option<Lease> = None;
    for n in u32::from(pool.first)..=u32::from(pool.last) {
        let ip = Ipv4Addr::from(n);
        match by_ip.get(&ip) {
            None => return Ok(Some(ip)),
            Some(l) if l.expires <= now => {
                if oldest.is_none_or(|o| l.expires < o.expires) {
                    oldest = Some(*l);
                }
            }
            Some(_) => {}
        }
    }
    Ok(oldest.map(|l| l.ip))
}

/// RFC 2131 §4.1 destination of a full-mode OFFER/ACK.
fn full_dest(req: &Request<'_>) -> SocketAddrV4 {
    if !req.giaddr.is_unspecified() {
        SocketAddrV4::new(req.giaddr, SERVER_PORT)
    } else if !req.ciaddr.is_unspecified() {
        SocketAddrV4::new(req.ciaddr, CLIENT_PORT)
    } else {
        // Broadcast flag set or not: without raw sockets we cannot unicast to a client that
        // has no address yet (no ARP entry), so broadcast on the interface.
        SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT)
    }
}

fn address_reply(
    req: &Request<'_>,
    reply_type: u8,
    ip: Option<Ipv4Addr>,
    s: &DhcpSettings,
    _now: u64,
) -> Reply {
    let mut m = base_reply(req);
    m.set_ciaddr(req.ciaddr);
    if let Some(ip) = ip {
        m.set_yiaddr(ip);
    }
    let pool = s.pool.as_ref();
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(MessageType::from(reply_type)));
    o.insert(DhcpOption::ServerIdentifier(s.server_ip));
    if let Some(pool) = pool {
        if ip.is_some() {
            let t = pool.lease_secs;
            o.insert(DhcpOption::AddressLeaseTime(t));
            o.insert(DhcpOption::Renewal(t / 2));
            o.insert(DhcpOption::Rebinding(t / 8 * 7));
        }
        o.insert(DhcpOption::SubnetMask(pool.netmask));
        if let Some(r) = pool.router {
            o.insert(DhcpOption::Router(vec![r]));
        }
        if !pool.dns.is_empty() {
            o.insert(DhcpOption::DomainNameServer(pool.dns.clone()));
        }
    }
    let boot = choose_boot(req, s);
    add_boot(&mut m, req, &boot, s, false);
    let bytes = finish(&m, req).unwrap_or_default();
    Reply {
        bytes,
        dest: full_dest(req),
        summary: Summary {
            mac: req.mac,
            arch: req.arch,
            reply_type,
            address: ip,
            boot,
        },
    }
}

fn nak(req: &Request<'_>, s: &DhcpSettings, why: &str) -> Reply {
    let mut m = base_reply(req);
    // RFC 2131 §4.3.2: a relayed NAK goes with the broadcast bit set.
    let mut flags = req.flags;
    if !req.giaddr.is_unspecified() {
        flags |= 0x8000;
    }
    m.set_flags(Flags::new(flags));
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(MessageType::Nak));
    o.insert(DhcpOption::ServerIdentifier(s.server_ip));
    o.insert(DhcpOption::Message(why.to_string()));
    let bytes = finish(&m, req).unwrap_or_default();
    let dest = if req.giaddr.is_unspecified() {
        SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT)
    } else {
        SocketAddrV4::new(req.giaddr, SERVER_PORT)
    };
    Reply {
        bytes,
        dest,
        summary: Summary {
            mac: req.mac,
            arch: req.arch,
            reply_type: msg::NAK,
            address: None,
            boot: Boot::Nothing,
        },
    }
}

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

#[cfg(test)]
mod tests;

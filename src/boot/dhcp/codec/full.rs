//! Full mode: bootcast hands out the addresses (leases: offer, request, decline, release) and
//! the boot information with them.

use std::net::{Ipv4Addr, SocketAddrV4};

use dhcproto::v4::{DhcpOption, Flags, MessageType};

use super::*;

pub(super) fn full(
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
pub(super) fn rebind(
    leases: &dyn LeaseStore,
    mac: Mac,
    ip: Ipv4Addr,
    expires: u64,
) -> Result<(), LeaseError> {
    if let Some(old) = leases.by_mac(mac)? {
        if old.ip != ip {
            leases.release(old.ip)?;
        }
    }
    leases.upsert(Lease { ip, mac, expires })
}

/// Sticky first: the MAC's own (even expired) lease; then the requested address if free; then
/// the first address never used; then the longest-expired one.
pub(super) fn pick_address(
    req: &Request<'_>,
    pool: &crate::boot::dhcp::PoolSettings,
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
pub(super) fn full_dest(req: &Request<'_>) -> SocketAddrV4 {
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

pub(super) fn address_reply(
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

pub(super) fn nak(req: &Request<'_>, s: &DhcpSettings, why: &str) -> Reply {
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

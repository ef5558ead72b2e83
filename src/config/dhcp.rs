//! `[dhcp]`: the validated DHCP settings and their checks (mode, interface, pool).

use std::net::Ipv4Addr;

use crate::boot::dhcp::{BootFiles, DhcpMode, PoolSettings, UefiChain};

use super::validate::parse_ipv4;
use super::*;

#[derive(Debug, Clone)]
pub struct DhcpConfig {
    pub interface: String,
    /// The interface's IPv4 address: the next-server (TFTP, proxyDHCP) of its clients.
    pub address: Ipv4Addr,
    pub mode: DhcpMode,
    /// Full mode only: the address pool, netmask, router and DNS servers given to clients.
    pub pool: Option<PoolSettings>,
    /// Client architecture (option 93) -> boot file: the defaults with the configured
    /// entries over them.
    pub boot_files: BootFiles,
    /// What UEFI x64 clients boot (the defaults of `boot_files`, and UEFI HTTP boot's URL).
    pub uefi_chain: UefiChain,
}

impl RawConfig {
    /// `[dhcp]` and its `[[dhcp.segments]]`: one validated segment per interface served. The
    /// first one's address is the advertised one (unless `advertise` says otherwise).
    pub(super) fn validate_dhcp(
        &self,
        iface_addr: &dyn Fn(&str) -> Option<(Ipv4Addr, Ipv4Addr)>,
        advertise: &mut Option<Ipv4Addr>,
        p: &mut dyn FnMut(String),
    ) -> Vec<DhcpConfig> {
        let mut out: Vec<DhcpConfig> = self
            .validate_segment(&self.dhcp, iface_addr, Some(advertise), p)
            .into_iter()
            .collect();
        for (i, seg) in self.dhcp.segments.iter().enumerate() {
            let mut sp = |m: String| p(format!("dhcp.segments[{i}]: {m}"));
            if !seg.segments.is_empty() {
                sp("a segment holds no segments of its own".into());
            }
            if seg.interface.is_none() {
                sp(
                    "interface is missing: each segment names the interface (VLAN) it serves"
                        .into(),
                );
                continue;
            }
            let first = out.is_empty();
            let v =
                self.validate_segment(seg, iface_addr, first.then_some(&mut *advertise), &mut sp);
            if let Some(v) = v {
                if out.iter().any(|o| o.interface == v.interface) {
                    sp(format!(
                        "interface {:?} is served twice: one segment per interface",
                        v.interface
                    ));
                } else {
                    out.push(v);
                }
            }
        }
        out
    }

    /// One segment; `advertise`: for the first one only (its address is checked against it,
    /// or becomes it).
    fn validate_segment(
        &self,
        d: &RawDhcp,
        iface_addr: &dyn Fn(&str) -> Option<(Ipv4Addr, Ipv4Addr)>,
        advertise: Option<&mut Option<Ipv4Addr>>,
        p: &mut dyn FnMut(String),
    ) -> Option<DhcpConfig> {
        let Some(interface) = d.interface.clone() else {
            let set: Vec<&str> = [
                ("mode", d.mode.is_some()),
                ("range", d.range.is_some()),
                ("netmask", d.netmask.is_some()),
                ("router", d.router.is_some()),
                ("dns", !d.dns.is_empty()),
                ("lease_secs", d.lease_secs.is_some()),
                ("boot_files", !d.boot_files.is_empty()),
                ("uefi_chain", d.uefi_chain.is_some()),
            ]
            .iter()
            .filter(|(_, s)| *s)
            .map(|(k, _)| *k)
            .collect();
            if !set.is_empty() {
                p(format!(
                    "dhcp.{} set but DHCP is off: name the interface to serve with dhcp.interface (--dhcp-interface IFACE)",
                    set.join(", dhcp.")
                ));
            }
            return None;
        };
        let iface = iface_addr(&interface);
        if iface.is_none() {
            p(format!(
                "dhcp.interface (--dhcp-interface): interface {interface:?} does not exist or has no IPv4 address; `ip -4 addr` lists them"
            ));
        }
        if let Some(advertise) = advertise {
            match (*advertise, iface) {
                (None, _) => *advertise = iface.map(|(ip, _)| ip),
                (Some(a), Some((ip, mask))) if a != ip => p(format!(
                    "advertise (--advertise) {a} is not the address of the DHCP interface {interface:?} ({ip}/{}): PXE clients reach TFTP and port 4011 there; drop --advertise or give {ip}",
                    u32::from(mask).leading_ones()
                )),
                _ => {}
            }
        }
        let mode = match d.mode.as_deref() {
            None | Some("proxy") => DhcpMode::Proxy,
            Some("full") => DhcpMode::Full,
            Some(other) => {
                p(format!(
                    "dhcp.mode (--dhcp-mode) = {other:?}: use \"proxy\" (beside the site's DHCP server) or \"full\" (bootcast hands out addresses)"
                ));
                DhcpMode::Proxy
            }
        };
        // Under proxyDHCP, Debian 12's signed GRUB reads its configuration only from the
        // next-server of the site DHCP server's answer, not from bootcast's: the signed chain
        // is the default only where bootcast hands out the addresses
        let uefi_chain = match d.uefi_chain.as_deref() {
            None if mode == DhcpMode::Proxy => UefiChain::Ipxe,
            None => UefiChain::Shim,
            Some(s) => UefiChain::parse(s).unwrap_or_else(|| {
                p(format!("dhcp.uefi_chain = {s:?}: use \"shim\" (the Secure Boot chain, signed: shim, GRUB, the kernel) or \"ipxe\" (the unsigned iPXE; machines with Secure Boot on refuse it)"));
                UefiChain::Ipxe
            }),
        };
        if uefi_chain == UefiChain::Shim {
            let chain =
                crate::boot::signed::SignedChain::locate(self.boot.uefi_binaries.as_deref());
            if let Err(missing) = chain.check() {
                p(format!("dhcp.uefi_chain = \"shim\": {missing}"));
            }
        }
        let mut boot_files = BootFiles::for_chain(uefi_chain);
        for (arch, file) in &d.boot_files {
            match arch.parse::<u16>() {
                Ok(a) if !file.is_empty() => {
                    boot_files.set(a, Some(file));
                }
                Ok(_) => p(format!("dhcp.boot_files.\"{arch}\" is empty")),
                Err(_) => p(format!(
                    "dhcp.boot_files: key {arch:?} is not a client architecture number (RFC 4578 option 93, e.g. \"11\" for arm64 UEFI, \"16\" for UEFI HTTP boot)"
                )),
            }
        }
        let pool = match mode {
            DhcpMode::Proxy => {
                let set: Vec<&str> = [
                    ("range (--dhcp-range)", d.range.is_some()),
                    ("netmask", d.netmask.is_some()),
                    ("router", d.router.is_some()),
                    ("dns", !d.dns.is_empty()),
                    ("lease_secs", d.lease_secs.is_some()),
                ]
                .iter()
                .filter(|(_, s)| *s)
                .map(|(k, _)| *k)
                .collect();
                if !set.is_empty() {
                    p(format!(
                        "dhcp.{} only used with dhcp.mode = \"full\"; in proxy mode the site's DHCP server hands out addresses and network settings",
                        set.join(", dhcp.") + if set.len() == 1 { " is" } else { " are" }
                    ));
                }
                None
            }
            DhcpMode::Full => validate_pool(d, iface, p),
        };
        Some(DhcpConfig {
            address: iface.map_or(Ipv4Addr::UNSPECIFIED, |(ip, _)| ip),
            interface,
            mode,
            pool,
            boot_files,
            uefi_chain,
        })
    }
}

fn validate_pool(
    d: &RawDhcp,
    iface: Option<(Ipv4Addr, Ipv4Addr)>,
    p: &mut dyn FnMut(String),
) -> Option<PoolSettings> {
    let Some(range) = d.range.as_deref() else {
        p("dhcp.mode = \"full\" needs an address pool: dhcp.range = \"FIRST,LAST\" (--dhcp-range FIRST,LAST)".into());
        return None;
    };
    let Some((a, b)) = range.split_once(',') else {
        p(format!(
                "dhcp.range = {range:?}: write two addresses separated by a comma, e.g. 10.99.0.100,10.99.0.200"
            ));
        return None;
    };
    let first = parse_ipv4("dhcp.range (first)", a.trim(), p)?;
    let last = parse_ipv4("dhcp.range (last)", b.trim(), p)?;
    if u32::from(first) > u32::from(last) {
        p(format!(
            "dhcp.range: {first} comes after {last}; write the lower address first"
        ));
        return None;
    }
    let netmask = match &d.netmask {
        Some(s) => parse_ipv4("dhcp.netmask", s, p)?,
        None => match iface {
            Some((_, mask)) => mask,
            None => return None, // already reported
        },
    };
    if u32::from(netmask).leading_ones() + u32::from(netmask).trailing_zeros() != 32 {
        p(format!(
            "dhcp.netmask {netmask} is not a contiguous netmask"
        ));
        return None;
    }
    if let Some((ip, _)) = iface {
        let m = u32::from(netmask);
        for (what, addr) in [("first", first), ("last", last)] {
            if u32::from(addr) & m != u32::from(ip) & m {
                p(format!(
                        "dhcp.range: {what} address {addr} is outside the interface's subnet ({ip} with netmask {netmask})"
                    ));
            }
        }
        if u32::from(first) <= u32::from(ip) && u32::from(ip) <= u32::from(last) {
            p(format!(
                "dhcp.range {first}-{last} contains the server's own address {ip}; move the range"
            ));
        }
    }
    let m = u32::from(netmask);
    let network = u32::from(first) & m;
    let broadcast = network | !m;
    for (what, addr) in [("network", network), ("broadcast", broadcast)] {
        if (u32::from(first)..=u32::from(last)).contains(&addr) {
            p(format!(
                    "dhcp.range {first}-{last} contains the subnet's {what} address {}; start above it / end below it",
                    Ipv4Addr::from(addr)
                ));
        }
    }
    let router = match &d.router {
        Some(s) => Some(parse_ipv4("dhcp.router", s, p)?),
        None => None,
    };
    if let Some(r) = router {
        if (u32::from(first)..=u32::from(last)).contains(&u32::from(r)) {
            p(format!(
                "dhcp.range {first}-{last} contains the router {r}; move the range"
            ));
        }
    }
    let mut dns = Vec::new();
    for s in &d.dns {
        dns.push(parse_ipv4("dhcp.dns", s, p)?);
    }
    let lease_secs = d.lease_secs.unwrap_or(DEFAULT_LEASE_SECS);
    if lease_secs < 60 {
        p(format!(
            "dhcp.lease_secs = {lease_secs}: use at least 60 seconds"
        ));
    }
    Some(PoolSettings {
        first,
        last,
        netmask,
        router,
        dns,
        lease_secs,
    })
}

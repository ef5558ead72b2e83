//! [`RawConfig::validate`]: every value checked once, one problem per mistake.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use super::*;

impl RawConfig {
    /// Checks everything; `iface_addr` looks up an interface's IPv4 address and netmask
    /// (injected so tests need no real interfaces).
    pub fn validate(
        &self,
        iface_addr: &dyn Fn(&str) -> Option<(Ipv4Addr, Ipv4Addr)>,
    ) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let mut p = |s: String| problems.push(s);

        let http = parse_socket(
            "http.listen (--http)",
            self.http.listen.as_deref().unwrap_or(DEFAULT_HTTP),
            &mut p,
        );
        let https = match self.http.tls_listen.as_deref().map(str::trim) {
            Some("off") => None,
            Some(t) => parse_socket("http.tls_listen (--https)", t, &mut p),
            // the HTTP address, port 8443 (an ephemeral port for an ephemeral HTTP port)
            None => http
                .map(|h| SocketAddr::new(h.ip(), if h.port() == 0 { 0 } else { DEFAULT_TLS_PORT })),
        };
        if let (Some(h), Some(t)) = (http, https) {
            if h == t && h.port() != 0 {
                p(format!("http.tls_listen (--https) = {t} is http.listen's address too: give HTTPS its own port (default {DEFAULT_TLS_PORT}), or \"off\""));
            }
        }
        let limits = self.validate_limits(&mut p);
        for c in &self.http.plain_relays {
            if !valid_cidr(c) {
                p(format!(
                    "http.plain_relays: {c:?} is not a subnet like 10.20.0.0/16 or fd99::/64"
                ));
            }
        }
        let tls_files = match (&self.tls.cert, &self.tls.key) {
            (None, None) => None,
            (Some(c), Some(k)) => {
                for (key, f) in [("tls.cert", c), ("tls.key", k)] {
                    if !f.is_file() {
                        p(format!("{key} = {}: no such file; give the PEM file, or remove [tls] to have a self-signed certificate made in DATA/tls", f.display()));
                    }
                }
                Some((c.clone(), k.clone()))
            }
            (Some(_), None) | (None, Some(_)) => {
                p("[tls] needs both cert (the certificate, PEM) and key (its private key, PEM), or neither (a self-signed certificate is made in DATA/tls)".into());
                None
            }
        };
        let tftp_text = self.tftp.listen.as_deref().unwrap_or(DEFAULT_TFTP);
        let tftp_enabled = tftp_text != "off";
        let tftp_listen = parse_socket(
            "tftp.listen (--tftp)",
            if tftp_enabled {
                tftp_text
            } else {
                DEFAULT_TFTP
            },
            &mut p,
        );
        if let Some(root) = &self.tftp.root {
            if !root.is_dir() {
                p(format!(
                    "tftp.root (--tftp-root): {} is not a directory; create it or remove the setting",
                    root.display()
                ));
            }
        }
        let max_transfers = self.tftp.max_transfers.unwrap_or(DEFAULT_MAX_TRANSFERS);
        if max_transfers == 0 {
            p("tftp.max_transfers must be at least 1".into());
        }

        let mut advertise = self
            .advertise
            .as_deref()
            .and_then(|s| parse_ipv4("advertise (--advertise)", s, &mut p));

        let after_register = match self.agent.after_register.as_deref() {
            None | Some("reboot") => AfterRegister::Reboot,
            Some("poweroff") => AfterRegister::Poweroff,
            Some(other) => {
                p(format!(
                    "agent.after_register = {other:?}: use \"reboot\" or \"poweroff\""
                ));
                AfterRegister::Reboot
            }
        };

        let dhcp = self.validate_dhcp(iface_addr, &mut advertise, &mut p);
        let relay = (!self.relay.is_empty())
            .then(|| self.validate_relay(&mut p))
            .flatten();

        let hooks = crate::hooks::validate(&self.hooks, &mut p);
        let glpi_url = match self.glpi.url.as_deref().map(str::trim) {
            None => None,
            Some(u) if u.starts_with("http://") || u.starts_with("https://") => Some(u.to_string()),
            Some(u) => {
                p(format!("glpi.url = {u:?}: write the URL of GLPI's inventory endpoint, e.g. http://glpi.example/front/inventory.php"));
                None
            }
        };

        let boot = self.validate_boot(&mut p);
        let capture_max_bytes = match self.capture.max_bytes.as_deref().map(parse_size) {
            None => DEFAULT_CAPTURE_MAX_BYTES,
            Some(Ok(n)) if n > 0 => n,
            Some(Ok(_)) => {
                p("capture.max_bytes must be more than 0".into());
                DEFAULT_CAPTURE_MAX_BYTES
            }
            Some(Err(e)) => {
                p(format!("capture.max_bytes: {e}"));
                DEFAULT_CAPTURE_MAX_BYTES
            }
        };

        let mut wake = crate::wol::send::WakeOptions::default();
        if let Some(pw) = &self.wake.password {
            match pw.parse() {
                Ok(pw) => wake.password = Some(pw),
                Err(e) => p(format!("wake.password: {e}")),
            }
        }
        match self.wake.repeat {
            Some(n) if (1..=10).contains(&n) => wake.repeat = n,
            Some(n) => p(format!("wake.repeat = {n}: give 1 to 10")),
            None => {}
        }

        let ldap = self.ldap.as_ref().and_then(|l| validate_ldap(l, &mut p));

        if problems.is_empty() {
            Ok(Config {
                advertise,
                http: http.expect("checked"),
                https,
                tls_files,
                limits,
                plain_relays: self.http.plain_relays.clone(),
                tftp: TftpConfig {
                    enabled: tftp_enabled,
                    listen: tftp_listen.expect("checked"),
                    root: self.tftp.root.clone(),
                    max_transfers,
                },
                dhcp,
                after_register,
                relay,
                hooks,
                glpi_url,
                retention_days: Some(self.retention.days.unwrap_or(DEFAULT_RETENTION_DAYS))
                    .filter(|d| *d > 0),
                gc_hours: Some(self.retention.gc_hours.unwrap_or(DEFAULT_GC_HOURS))
                    .filter(|h| *h > 0),
                boot,
                capture_max_bytes,
                wake,
                ldap,
                clock_file: self.clock_file.clone(),
            })
        } else {
            Err(ConfigError { problems })
        }
    }
}

/// `[ldap]` checked: a URL, a bind DN with `{user}`, and at least one group mapped.
fn validate_ldap(
    l: &super::raw::RawLdap,
    p: &mut dyn FnMut(String),
) -> Option<crate::access::ldap::LdapConfig> {
    use crate::access::ldap::{GroupMap, LdapConfig, DEFAULT_GROUP_FILTER};
    let before = std::cell::Cell::new(0u32);
    let mut problem = |m: String| {
        before.set(before.get() + 1);
        p(m)
    };
    let url = l.url.clone().unwrap_or_default();
    if !(url.starts_with("ldap://") || url.starts_with("ldaps://")) {
        problem(format!(
            "ldap.url = {url:?}: write ldap://HOST[:PORT] or ldaps://HOST[:PORT]"
        ));
    }
    let bind_dn = l.bind_dn.clone().unwrap_or_default();
    if !bind_dn.contains("{user}") {
        problem(format!("ldap.bind_dn = {bind_dn:?}: it must contain {{user}}, e.g. \"uid={{user}},ou=people,dc=example,dc=org\" or \"{{user}}@example.org\""));
    }
    if l.map.is_empty() {
        problem("[ldap] maps no group: add [[ldap.map]] group = \"cn=...\", role = \"operator\", sites = [\"...\"]".into());
    }
    let mut map = Vec::new();
    for (i, m) in l.map.iter().enumerate() {
        match m.role.parse::<crate::access::Role>() {
            Ok(role) => {
                if (role == crate::access::Role::Operator) == m.sites.is_empty() {
                    problem(format!("ldap.map[{i}] ({}): an operator group needs sites, and only an operator group takes sites", m.group));
                }
                map.push(GroupMap {
                    group: m.group.clone(),
                    role,
                    sites: m.sites.clone(),
                });
            }
            Err(e) => problem(format!("ldap.map[{i}]: {e}")),
        }
    }
    (before.get() == 0).then(|| LdapConfig {
        url,
        bind_dn,
        group_base: l.group_base.clone(),
        group_filter: l
            .group_filter
            .clone()
            .unwrap_or_else(|| DEFAULT_GROUP_FILTER.to_string()),
        map,
        timeout: std::time::Duration::from_secs(l.timeout.unwrap_or(5).max(1)),
    })
}

impl RawConfig {
    /// `[http]`'s caps and timeouts.
    fn validate_limits(&self, p: &mut dyn FnMut(String)) -> HttpLimits {
        let h = &self.http;
        let d = HttpLimits::default();
        let count = |key: &str, v: Option<usize>, default: usize, p: &mut dyn FnMut(String)| match v
        {
            None => default,
            Some(0) => {
                p(format!("http.{key} = 0: at least 1 (default {default})"));
                default
            }
            Some(n) => n,
        };
        let secs = |key: &str, v: Option<u64>, default: u64, p: &mut dyn FnMut(String)| match v {
            None => std::time::Duration::from_secs(default),
            Some(n) if (1..=86_400).contains(&n) => std::time::Duration::from_secs(n),
            Some(n) => {
                p(format!(
                    "http.{key} = {n}: seconds, from 1 to 86400 (default {default})"
                ));
                std::time::Duration::from_secs(default)
            }
        };
        let limits = HttpLimits {
            max_connections: count("max_connections", h.max_connections, d.max_connections, p),
            max_per_address: count(
                "max_connections_per_address",
                h.max_connections_per_address,
                d.max_per_address,
                p,
            ),
            header_timeout: secs(
                "header_timeout",
                h.header_timeout,
                DEFAULT_HEADER_TIMEOUT_SECS,
                p,
            ),
            idle_timeout: secs("idle_timeout", h.idle_timeout, DEFAULT_IDLE_TIMEOUT_SECS, p),
            chunk_cache: match h.chunk_cache_mb {
                None => d.chunk_cache,
                Some(mb) if mb <= 1 << 20 => mb << 20,
                Some(mb) => {
                    p(format!(
                        "http.chunk_cache_mb = {mb}: MiB, from 0 (none) to 1048576 (default {})",
                        d.chunk_cache >> 20
                    ));
                    d.chunk_cache
                }
            },
        };
        if limits.max_per_address > limits.max_connections {
            p(format!(
                "http.max_connections_per_address = {} is more than http.max_connections = {}: lower it, or raise max_connections",
                limits.max_per_address, limits.max_connections
            ));
        }
        limits
    }

    fn validate_boot(&self, p: &mut dyn FnMut(String)) -> BootConfig {
        let minutes = self
            .boot
            .credential_minutes
            .unwrap_or(DEFAULT_CREDENTIAL_MINUTES);
        if !(1..=24 * 60).contains(&minutes) {
            p(format!("boot.credential_minutes = {minutes}: use 1 to 1440 (default {DEFAULT_CREDENTIAL_MINUTES}; slow firmware needs a few minutes from the boot script to the agent's hello)"));
        }
        for c in &self.boot.trust_without_dhcp {
            if !valid_cidr(c) {
                p(format!(
                    "boot.trust_without_dhcp: {c:?} is not a subnet like 10.20.0.0/16 or fd99::/64"
                ));
            }
        }
        let uefi_local = match self.boot.uefi_local.as_deref() {
            None => Default::default(),
            Some(s) => crate::boot::script::Handoff::parse(s).unwrap_or_else(|| {
                p(format!("boot.uefi_local = {s:?}: use \"chain\" (start the disk's own loader) or \"exit\" (hand back to the firmware)"));
                Default::default()
            }),
        };
        BootConfig {
            credential_secs: i64::from(minutes) * 60,
            trust_without_dhcp: self.boot.trust_without_dhcp.clone(),
            uefi_local,
            uefi: crate::boot::signed::SignedChain::locate(self.boot.uefi_binaries.as_deref()),
        }
    }
}

/// `ADDRESS/LEN` with LEN within the address family's bits.
pub fn valid_cidr(s: &str) -> bool {
    let Some((addr, len)) = s.split_once('/') else {
        return false;
    };
    match (addr.parse::<IpAddr>(), len.parse::<u8>()) {
        (Ok(IpAddr::V4(_)), Ok(l)) => l <= 32,
        (Ok(IpAddr::V6(_)), Ok(l)) => l <= 128,
        _ => false,
    }
}

/// Parses a size: `500G`, `1.5T`, `800M`, `64k` (powers of 1000), `2GiB`, `512MiB` (powers of
/// 1024), a bare number of bytes; a trailing `B` is optional.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || {
        format!("size {s:?} is not understood: write e.g. 500G, 1.5T, 800M (powers of 1000) or 512GiB (powers of 1024)")
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit.strip_suffix('b').unwrap_or(&unit);
    let mult: f64 = match unit {
        "" => 1.0,
        "k" => 1e3,
        "m" => 1e6,
        "g" => 1e9,
        "t" => 1e12,
        "ki" => 1024.0,
        "mi" => 1024.0 * 1024.0,
        "gi" => 1024.0 * 1024.0 * 1024.0,
        "ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad()),
    };
    let bytes = n * mult;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(bad());
    }
    Ok(bytes as u64)
}

fn parse_socket(key: &str, s: &str, p: &mut dyn FnMut(String)) -> Option<SocketAddr> {
    match s.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            p(format!(
                "{key} = {s:?}: write ADDRESS:PORT, e.g. 0.0.0.0:8080 or [::]:8080"
            ));
            None
        }
    }
}

pub(super) fn parse_ipv4(key: &str, s: &str, p: &mut dyn FnMut(String)) -> Option<Ipv4Addr> {
    match s.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) if !a.is_unspecified() && !a.is_broadcast() && !a.is_multicast() => {
            Some(a)
        }
        Ok(_) => {
            p(format!(
                "{key} = {s:?}: need a unicast IPv4 address (PXE firmware speaks IPv4)"
            ));
            None
        }
        Err(_) => {
            p(format!(
                "{key} = {s:?} is not an IPv4 address, e.g. 10.99.0.1"
            ));
            None
        }
    }
}

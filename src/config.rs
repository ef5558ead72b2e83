//! Server configuration: a TOML file plus command-line flags, validated once at start.
//!
//! [`RawConfig`] is what the file holds (every key optional); flags are merged into it by the
//! caller (a flag wins over the file); [`RawConfig::validate`] turns it into a [`Config`] in
//! which every value has been checked, or into one error per problem, each naming the key and
//! the fix. Nothing after start-up parses configuration again.
//!
//! ```toml
//! advertise = "10.99.0.1"        # the address PCs use to reach this server
//!
//! [http]
//! listen = "0.0.0.0:8080"
//!
//! [tftp]
//! listen = "0.0.0.0:69"          # or "off"
//! root = "/srv/tftp"             # extra files, after the embedded iPXE binaries
//! max_transfers = 64
//!
//! [dhcp]                         # off unless `interface` is set
//! interface = "eth1"
//! mode = "proxy"                 # or "full": bootcast hands out addresses
//! range = "10.99.0.100,10.99.0.200"   # full mode
//! netmask = "255.255.255.0"      # full mode; default: the interface's
//! router = "10.99.0.1"           # full mode, optional
//! dns = ["10.99.0.1"]            # full mode, optional
//! lease_secs = 43200
//!
//! [dhcp.boot_files]              # client architecture (option 93) -> TFTP file or URL
//! "11" = "arm64/snponly.efi"
//! "16" = "http://10.99.0.1:8080/ipxe/ipxe.efi"
//!
//! [agent]
//! after_register = "reboot"      # or "poweroff": what a newly registered PC does next
//!
//! [relay]                        # `bootcast relay` only (`serve` refuses these keys)
//! upstream = "http://10.0.0.5:8080"   # the central server, or another relay
//! site = "lycee-nord"
//! token = "..."                  # the site relay token (`bootcast site token NAME` upstream)
//! url = "http://10.99.1.2:8080"  # how the site's machines reach this relay
//! quota = "500G"                 # evict chunks of images not assigned to the site beyond it
//! incomplete = "wait"            # or "upstream": a version not complete here yet
//!
//! [glpi]
//! url = "http://glpi.example/front/inventory.php"   # forward every inventory (native JSON)
//!
//! [[hooks]]                      # any number; see crate::hooks
//! on = ["inventory_changed"]
//! command = ["/usr/local/bin/notify"]
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::boot::dhcp::{BootFiles, DhcpMode, PoolSettings};

pub const DEFAULT_HTTP: &str = "0.0.0.0:8080";
pub const DEFAULT_TFTP: &str = "0.0.0.0:69";
pub const DEFAULT_LEASE_SECS: u32 = 12 * 3600;
pub const DEFAULT_MAX_TRANSFERS: usize = 64;

/// The configuration file as written: every key optional, unknown keys refused.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub advertise: Option<String>,
    #[serde(default)]
    pub http: RawHttp,
    #[serde(default)]
    pub tftp: RawTftp,
    #[serde(default)]
    pub dhcp: RawDhcp,
    #[serde(default)]
    pub agent: RawAgent,
    #[serde(default)]
    pub relay: RawRelay,
    /// `[[hooks]]`: commands and webhooks on events ([`crate::hooks`]).
    #[serde(default)]
    pub hooks: Vec<crate::hooks::RawHook>,
    #[serde(default)]
    pub glpi: RawGlpi,
}

/// `[glpi]`: forward every inventory to a GLPI server (native inventory format).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGlpi {
    /// e.g. `http://glpi.example/front/inventory.php`
    pub url: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    pub listen: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTftp {
    pub listen: Option<String>,
    pub root: Option<PathBuf>,
    pub max_transfers: Option<usize>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDhcp {
    pub interface: Option<String>,
    pub mode: Option<String>,
    pub range: Option<String>,
    pub netmask: Option<String>,
    pub router: Option<String>,
    #[serde(default)]
    pub dns: Vec<String>,
    pub lease_secs: Option<u32>,
    #[serde(default)]
    pub boot_files: BTreeMap<String, String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgent {
    pub after_register: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRelay {
    pub upstream: Option<String>,
    pub site: Option<String>,
    pub token: Option<String>,
    pub url: Option<String>,
    pub quota: Option<String>,
    pub incomplete: Option<String>,
    /// Tests only (`--clock-file`): the scheduler's clock, see [`crate::push::clock::FileClock`].
    #[serde(skip)]
    pub clock_file: Option<PathBuf>,
}

impl RawRelay {
    /// No relay setting at all (`bootcast serve`).
    pub fn is_empty(&self) -> bool {
        self.upstream.is_none()
            && self.site.is_none()
            && self.token.is_none()
            && self.url.is_none()
            && self.quota.is_none()
            && self.incomplete.is_none()
            && self.clock_file.is_none()
    }
}

/// A site relay's settings (`bootcast relay`).
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Base URL of the server above (the central server or another relay), no trailing `/`.
    pub upstream: String,
    pub site: String,
    /// The site relay token.
    pub token: String,
    /// Base URL at which the site's machines reach this relay; `None`: from `advertise` or
    /// the HTTP listen address, once bound.
    pub url: Option<String>,
    /// Compressed bytes of chunks the store may hold before eviction.
    pub quota: Option<u64>,
    pub incomplete: IncompletePolicy,
    pub clock_file: Option<PathBuf>,
}

/// What a relay answers for a version it does not hold completely yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncompletePolicy {
    /// 503: the version arrives with the push.
    Wait,
    /// Pull it through from upstream.
    Upstream,
}

impl IncompletePolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            IncompletePolicy::Wait => "wait",
            IncompletePolicy::Upstream => "upstream",
        }
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

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address PCs use to reach this server; `None` when no DHCP runs and none was given
    /// (boot scripts then use the `Host` header of each request).
    pub advertise: Option<Ipv4Addr>,
    pub http: SocketAddr,
    pub tftp: TftpConfig,
    pub dhcp: Option<DhcpConfig>,
    pub after_register: AfterRegister,
    /// Set for `bootcast relay`: this process is a site relay.
    pub relay: Option<RelayConfig>,
    pub hooks: Vec<crate::hooks::Hook>,
    /// `[glpi] url`: where inventories are forwarded.
    pub glpi_url: Option<String>,
}

#[derive(Debug, Clone)]
pub struct TftpConfig {
    /// `false` with `tftp.listen = "off"` (e.g. a server that only serves HTTP).
    pub enabled: bool,
    pub listen: SocketAddr,
    pub root: Option<PathBuf>,
    pub max_transfers: usize,
}

#[derive(Debug, Clone)]
pub struct DhcpConfig {
    pub interface: String,
    pub mode: DhcpMode,
    /// Full mode only: the address pool, netmask, router and DNS servers given to clients.
    pub pool: Option<PoolSettings>,
    /// Client architecture (option 93) -> boot file: the defaults with the configured
    /// entries over them.
    pub boot_files: BootFiles,
}

/// What a PC does after its first registration boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterRegister {
    Reboot,
    Poweroff,
}

/// Every problem found, one per line.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration:")?;
        for p in &self.problems {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

impl RawConfig {
    /// Reads a TOML file; errors name the file and, for syntax errors, the line.
    pub fn from_file(path: &Path) -> Result<RawConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            problems: vec![format!("cannot read config file {}: {e}", path.display())],
        })?;
        Self::from_toml(&text).map_err(|mut e| {
            for p in &mut e.problems {
                *p = format!("{}: {p}", path.display());
            }
            e
        })
    }

    pub fn from_toml(text: &str) -> Result<RawConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError {
            problems: vec![e.to_string().trim_end().replace('\n', "\n    ")],
        })
    }

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

        if problems.is_empty() {
            Ok(Config {
                advertise,
                http: http.expect("checked"),
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
            })
        } else {
            Err(ConfigError { problems })
        }
    }

    fn validate_relay(&self, p: &mut dyn FnMut(String)) -> Option<RelayConfig> {
        let r = &self.relay;
        let http_url = |key: &str, v: &str, p: &mut dyn FnMut(String)| -> Option<String> {
            let v = v.trim().trim_end_matches('/');
            let rest = v
                .strip_prefix("http://")
                .or_else(|| v.strip_prefix("https://"));
            match rest {
                Some(host) if !host.is_empty() && !host.contains(['/', ' ', '?', '#']) => {
                    Some(v.to_string())
                }
                _ => {
                    p(format!(
                        "{key} = {v:?}: write the base URL, http://HOST:PORT (e.g. http://10.0.0.5:8080)"
                    ));
                    None
                }
            }
        };
        let upstream = match r.upstream.as_deref() {
            Some(u) => http_url("relay.upstream (--upstream)", u, p),
            None => {
                p("relay.upstream (--upstream URL) is missing: the central server (or the relay above this one) as http://HOST:PORT".into());
                None
            }
        };
        let site = match r.site.as_deref() {
            Some(s)
                if !s.is_empty()
                    && s.len() <= 64
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) =>
            {
                Some(s.to_string())
            }
            Some(s) => {
                p(format!("relay.site (--site) = {s:?}: a site name is 1-64 characters from A-Z a-z 0-9 . _ -, as `bootcast site add` made it"));
                None
            }
            None => {
                p("relay.site (--site NAME) is missing: the site this relay serves (`bootcast site list` on the central server)".into());
                None
            }
        };
        let token = match r.token.as_deref() {
            Some(t) if !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()) => {
                Some(t.to_string())
            }
            Some(_) => {
                p("relay.token (--token): the site relay token is printable ASCII without spaces; `bootcast site token NAME` on the central server shows it".into());
                None
            }
            None => {
                p("relay.token (--token TOKEN or BOOTCAST_RELAY_TOKEN) is missing: `bootcast site token NAME` on the central server shows it".into());
                None
            }
        };
        let url = r
            .url
            .as_deref()
            .map(|u| http_url("relay.url (--url)", u, p));
        let quota = r.quota.as_deref().map(|q| match parse_size(q) {
            Ok(n) => Some(n),
            Err(e) => {
                p(format!("relay.quota (--quota): {e}"));
                None
            }
        });
        let incomplete = match r.incomplete.as_deref() {
            None | Some("wait") => IncompletePolicy::Wait,
            Some("upstream") => IncompletePolicy::Upstream,
            Some(other) => {
                p(format!("relay.incomplete (--incomplete) = {other:?}: use \"wait\" (clients get 503 until the push brings the version) or \"upstream\" (pull it through)"));
                IncompletePolicy::Wait
            }
        };
        Some(RelayConfig {
            upstream: upstream?,
            site: site?,
            token: token?,
            url: match url {
                Some(u) => Some(u?),
                None => None,
            },
            quota: match quota {
                Some(q) => Some(q?),
                None => None,
            },
            incomplete,
            clock_file: r.clock_file.clone(),
        })
    }

    fn validate_dhcp(
        &self,
        iface_addr: &dyn Fn(&str) -> Option<(Ipv4Addr, Ipv4Addr)>,
        advertise: &mut Option<Ipv4Addr>,
        p: &mut dyn FnMut(String),
    ) -> Option<DhcpConfig> {
        let d = &self.dhcp;
        let Some(interface) = d.interface.clone() else {
            let set: Vec<&str> = [
                ("mode", d.mode.is_some()),
                ("range", d.range.is_some()),
                ("netmask", d.netmask.is_some()),
                ("router", d.router.is_some()),
                ("dns", !d.dns.is_empty()),
                ("lease_secs", d.lease_secs.is_some()),
                ("boot_files", !d.boot_files.is_empty()),
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
        match (*advertise, iface) {
            (None, _) => *advertise = iface.map(|(ip, _)| ip),
            (Some(a), Some((ip, mask))) if a != ip => p(format!(
                "advertise (--advertise) {a} is not the address of the DHCP interface {interface:?} ({ip}/{}): PXE clients reach TFTP and port 4011 there; drop --advertise or give {ip}",
                u32::from(mask).leading_ones()
            )),
            _ => {}
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
        let mut boot_files = BootFiles::default();
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
            DhcpMode::Full => self.validate_pool(iface, p),
        };
        Some(DhcpConfig {
            interface,
            mode,
            pool,
            boot_files,
        })
    }

    fn validate_pool(
        &self,
        iface: Option<(Ipv4Addr, Ipv4Addr)>,
        p: &mut dyn FnMut(String),
    ) -> Option<PoolSettings> {
        let d = &self.dhcp;
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

fn parse_ipv4(key: &str, s: &str, p: &mut dyn FnMut(String)) -> Option<Ipv4Addr> {
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

/// The IPv4 address and netmask of a local interface, from getifaddrs.
pub fn interface_ipv4(name: &str) -> Option<(Ipv4Addr, Ipv4Addr)> {
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    for a in addrs {
        if a.interface_name != name {
            continue;
        }
        // an interface has one entry per address family: skip the link-level and IPv6 ones
        let Some(ip) = a
            .address
            .as_ref()
            .and_then(|s| s.as_sockaddr_in())
            .map(|s| s.ip())
        else {
            continue;
        };
        let mask = a
            .netmask
            .as_ref()
            .and_then(|s| s.as_sockaddr_in())
            .map(|m| m.ip())
            .unwrap_or(Ipv4Addr::new(255, 255, 255, 0));
        return Some((ip, mask));
    }
    None
}

/// The local interface whose IPv4 subnet holds `peer` (where a room multicast to it goes out).
pub fn interface_facing(peer: Ipv4Addr) -> Option<String> {
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    for a in addrs {
        let ip = a
            .address
            .as_ref()
            .and_then(|s| s.as_sockaddr_in())
            .map(|s| s.ip());
        let mask = a
            .netmask
            .as_ref()
            .and_then(|s| s.as_sockaddr_in())
            .map(|m| m.ip());
        if let (Some(ip), Some(mask)) = (ip, mask) {
            let m = u32::from(mask);
            if !ip.is_loopback() && u32::from(ip) & m == u32::from(peer) & m {
                return Some(a.interface_name);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(name: &str) -> Option<(Ipv4Addr, Ipv4Addr)> {
        (name == "br0").then_some((Ipv4Addr::new(10, 99, 0, 1), Ipv4Addr::new(255, 255, 255, 0)))
    }

    fn problems(toml: &str) -> Vec<String> {
        RawConfig::from_toml(toml)
            .and_then(|r| r.validate(&iface))
            .map(|_| Vec::new())
            .unwrap_or_else(|e| e.problems)
    }

    #[test]
    fn defaults_are_valid_and_dhcp_off() {
        let c = RawConfig::default().validate(&iface).unwrap();
        assert_eq!(c.http.to_string(), DEFAULT_HTTP);
        assert_eq!(c.tftp.listen.to_string(), DEFAULT_TFTP);
        assert!(c.dhcp.is_none());
        assert!(c.advertise.is_none());
        assert_eq!(c.after_register, AfterRegister::Reboot);
    }

    #[test]
    fn full_mode_takes_advertise_and_netmask_from_interface() {
        let c = RawConfig::from_toml(
            "[dhcp]\ninterface='br0'\nmode='full'\nrange='10.99.0.100,10.99.0.200'\n[dhcp.boot_files]\n'16'='http://x/ipxe.efi'\n",
        )
        .unwrap()
        .validate(&iface)
        .unwrap();
        assert_eq!(c.advertise, Some(Ipv4Addr::new(10, 99, 0, 1)));
        let d = c.dhcp.unwrap();
        assert_eq!(d.mode, DhcpMode::Full);
        let pool = d.pool.unwrap();
        assert_eq!(pool.netmask, Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(pool.lease_secs, DEFAULT_LEASE_SECS);
        assert_eq!(d.boot_files.get(16), Some("http://x/ipxe.efi"));
        assert_eq!(d.boot_files.get(0), Some("undionly.kpxe"));
    }

    #[test]
    fn every_problem_is_named_with_its_fix() {
        let ps = problems(
            "advertise='nope'\n[http]\nlisten='8080'\n[dhcp]\ninterface='eth9'\nmode='fast'\n[agent]\nafter_register='sleep'\n",
        );
        assert_eq!(ps.len(), 5, "{ps:#?}");
        assert!(ps[0].contains("http.listen") && ps[0].contains("ADDRESS:PORT"));
        assert!(ps
            .iter()
            .any(|p| p.contains("advertise") && p.contains("IPv4")));
        assert!(ps
            .iter()
            .any(|p| p.contains("eth9") && p.contains("ip -4 addr")));
        assert!(ps
            .iter()
            .any(|p| p.contains("dhcp.mode") && p.contains("full")));
        assert!(ps.iter().any(|p| p.contains("after_register")));
    }

    #[test]
    fn pool_checks() {
        let full = |range: &str| {
            problems(&format!(
                "[dhcp]\ninterface='br0'\nmode='full'\nrange='{range}'\n"
            ))
        };
        assert!(full("10.99.0.100,10.99.0.200").is_empty());
        assert!(full("10.99.0.200,10.99.0.100")[0].contains("lower address first"));
        assert!(full("10.99.1.5,10.99.1.9")[0].contains("outside"));
        assert!(full("10.99.0.1,10.99.0.9")[0].contains("own address"));
        assert!(full("10.99.0.200,10.99.0.255")[0].contains("broadcast address 10.99.0.255"));
        assert!(problems(
            "[dhcp]\ninterface='br0'\nmode='full'\nrange='10.99.0.2,10.99.0.9'\nrouter='10.99.0.5'\n"
        )[0]
        .contains("router 10.99.0.5"));
        assert!(
            problems("advertise='10.99.0.7'\n[dhcp]\ninterface='br0'\n")[0]
                .contains("is not the address of the DHCP interface")
        );
        assert!(full("10.99.0.1")[0].contains("comma"));
        assert!(problems("[dhcp]\ninterface='br0'\nmode='full'\n")[0].contains("--dhcp-range"));
        assert!(problems("[dhcp]\nrange='1.2.3.4,1.2.3.5'\n")[0].contains("--dhcp-interface"));
        assert!(
            problems("[dhcp]\ninterface='br0'\nrange='10.99.0.5,10.99.0.6'\n")[0]
                .contains("only used with")
        );
    }

    #[test]
    fn relay_settings() {
        let c = RawConfig::from_toml(
            "[relay]\nupstream='http://10.0.0.5:8080/'\nsite='lycee-nord'\ntoken='abc'\nquota='1.5G'\nincomplete='upstream'\n",
        )
        .unwrap()
        .validate(&iface)
        .unwrap();
        let r = c.relay.unwrap();
        assert_eq!(r.upstream, "http://10.0.0.5:8080");
        assert_eq!(r.quota, Some(1_500_000_000));
        assert_eq!(r.incomplete, IncompletePolicy::Upstream);
        assert!(RawConfig::default()
            .validate(&iface)
            .unwrap()
            .relay
            .is_none());
        let ps = problems(
            "[relay]\nupstream='10.0.0.5'\nsite='a b'\nquota='lots'\nincomplete='never'\n",
        );
        assert_eq!(ps.len(), 5, "{ps:#?}");
        assert!(ps[0].contains("http://HOST:PORT"));
        assert!(ps.iter().any(|p| p.contains("relay.token")));
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("800MB").unwrap(), 800_000_000);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("-1G").is_err());
    }

    #[test]
    fn unknown_keys_and_syntax_errors_are_refused() {
        assert!(problems("[http]\nlisten_on='x'\n")[0].contains("listen_on"));
        assert!(problems("[http\n")[0].contains("line 1"));
        assert!(
            problems("[dhcp]\ninterface='br0'\n[dhcp.boot_files]\narm='x'\n")[0]
                .contains("option 93")
        );
    }
}

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
//! token = "..."                  # the site relay token (`bootcast site add` printed it upstream)
//! url = "http://10.99.1.2:8080"  # how the site's machines reach this relay
//! quota = "500G"                 # evict chunks of images not assigned to the site beyond it
//! incomplete = "wait"            # or "upstream": a version not complete here yet
//!
//! [boot]
//! credential_minutes = 10        # a boot script's credential is valid this long for the hello
//! trust_without_dhcp = []        # subnets whose PCs get one without a DHCP exchange bootcast saw
//!
//! [capture]
//! max_bytes = "1T"               # new chunk bytes one capture task may store
//!
//! [retention]
//! days = 365                     # prune events, boots, inventories older (0: keep all)
//! gc_hours = 24                  # hours between store collections (0: never)
//!
//! [glpi]
//! url = "http://glpi.example/front/inventory.php"   # forward every inventory (native JSON)
//!
//! [[hooks]]                      # any number; see crate::hooks
//! on = ["inventory_changed"]
//! command = ["/usr/local/bin/notify"]
//!
//! Files: [`raw`] (the file as written), [`validate`] (the checks that make a [`Config`]),
//! [`dhcp`] and [`relay`] (their sections' validated forms and checks).

mod dhcp;
mod raw;
mod relay;
mod validate;

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

pub use dhcp::DhcpConfig;
pub use raw::{RawAgent, RawConfig, RawDhcp, RawGlpi, RawHttp, RawRelay, RawRetention, RawTftp};
pub use relay::{IncompletePolicy, RelayConfig};
pub use validate::parse_size;

pub const DEFAULT_HTTP: &str = "0.0.0.0:8080";
pub const DEFAULT_TFTP: &str = "0.0.0.0:69";
pub const DEFAULT_LEASE_SECS: u32 = 12 * 3600;
pub const DEFAULT_MAX_TRANSFERS: usize = 64;

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
    /// `[retention] days`: history older than this is pruned (`None`: kept forever).
    pub retention_days: Option<u32>,
    /// `[retention] gc_hours`: hours between the server's store collections (`None`: never).
    pub gc_hours: Option<u32>,
    pub boot: BootConfig,
    /// `[capture] max_bytes`: most new chunk bytes one capture task may store.
    pub capture_max_bytes: u64,
}

/// `[capture] max_bytes` when the file does not say (bytes).
pub const DEFAULT_CAPTURE_MAX_BYTES: u64 = 1_000_000_000_000;

/// `[boot]`: who gets a boot credential, and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootConfig {
    /// Seconds a credential stays valid for the agent's hello.
    pub credential_secs: i64,
    /// CIDRs whose machines get a credential without a DHCP exchange seen by bootcast.
    pub trust_without_dhcp: Vec<String>,
}

/// `[boot] credential_minutes` when the file does not say: enough for slow firmware.
pub const DEFAULT_CREDENTIAL_MINUTES: u32 = 10;

impl Default for BootConfig {
    fn default() -> Self {
        BootConfig {
            credential_secs: i64::from(DEFAULT_CREDENTIAL_MINUTES) * 60,
            trust_without_dhcp: Vec::new(),
        }
    }
}

/// `[retention] days` when the file does not say.
pub const DEFAULT_RETENTION_DAYS: u32 = 365;
/// `[retention] gc_hours` when the file does not say.
pub const DEFAULT_GC_HOURS: u32 = 24;

#[derive(Debug, Clone)]
pub struct TftpConfig {
    /// `false` with `tftp.listen = "off"` (e.g. a server that only serves HTTP).
    pub enabled: bool,
    pub listen: SocketAddr,
    pub root: Option<PathBuf>,
    pub max_transfers: usize,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::dhcp::DhcpMode;

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
        assert_eq!(
            (c.retention_days, c.gc_hours),
            (Some(DEFAULT_RETENTION_DAYS), Some(DEFAULT_GC_HOURS))
        );
        let c = RawConfig::from_toml("[retention]\ndays = 0\ngc_hours = 6\n")
            .unwrap()
            .validate(&iface)
            .unwrap();
        assert_eq!((c.retention_days, c.gc_hours), (None, Some(6)));
        assert!(
            !problems("[retention]\nkeep = 3\n").is_empty(),
            "unknown keys refused"
        );
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

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
//! tls_listen = "0.0.0.0:8443"    # HTTPS (default: listen's address, port 8443), or "off"
//! max_connections = 8192         # open at once, every client and listener together
//! max_connections_per_address = 64   # open at once from one source address
//! header_timeout = 15            # seconds to a complete request head (TLS handshake included)
//! idle_timeout = 120             # seconds a keep-alive connection waits for its next request
//! plain_relays = []              # subnets whose relays may speak plain HTTP (upgrades only)
//! chunk_cache_mb = 256           # chunk frames served lately, kept in memory (0: none)
//!
//! [tls]                          # the HTTPS certificate; default: self-signed, DATA/tls/
//! cert = "/etc/bootcast/cert.pem"   # PEM: certificate, then intermediates
//! key = "/etc/bootcast/key.pem"     # PEM: its private key (mode 0600)
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
//! uefi_chain = "shim"            # UEFI x64: the signed chain (default with mode "full"), or "ipxe" (default with "proxy")
//! [dhcp.boot_files]              # client architecture (option 93) -> TFTP file or URL
//! "11" = "arm64/snponly.efi"
//! "16" = "http://10.99.0.1:8080/ipxe/ipxe.efi"
//!
//! [agent]
//! after_register = "reboot"      # or "poweroff": what a newly registered PC does next
//!
//! [relay]                        # `bootcast relay` only (`serve` refuses these keys)
//! upstream = "https://10.0.0.5:8443"  # the central server, or another relay
//! upstream_fingerprint = "sha256:..." # pin upstream's (self-signed) certificate, as its banner prints it
//! upstream_ca = "/etc/bootcast/ca.pem" # or: upstream's certificate chains to this CA (neither: public CAs)
//! upstream_key = "ed25519:..."   # the central server's signing key (`bootcast key show`); else the first one heard is pinned
//! site = "lycee-nord"
//! token = "..."                  # the site relay token (`bootcast site add` printed it upstream)
//! url = "http://10.99.1.2:8080"  # how the site's machines reach this relay
//! quota = "500G"                 # evict chunks of images not assigned to the site beyond it
//! incomplete = "wait"            # or "upstream": a version not complete here yet
//!
//! [boot]
//! credential_minutes = 10        # a boot script's credential is valid this long for the hello
//! trust_without_dhcp = []        # subnets whose PCs get one without a DHCP exchange bootcast saw
//! uefi_local = "chain"           # or "exit": how UEFI PCs leave for their disk (hosts, groups, sites override)
//! uefi_binaries = "/srv/signed"  # signed shimx64.efi + grubx64.efi (default: Debian's shim-signed, grub-efi-amd64-signed)
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
pub use raw::{
    RawAgent, RawConfig, RawDhcp, RawGlpi, RawHttp, RawRelay, RawRetention, RawTftp, RawTls,
};
pub use relay::{IncompletePolicy, RelayConfig};
pub use validate::parse_size;

pub const DEFAULT_HTTP: &str = "0.0.0.0:8080";
pub const DEFAULT_TFTP: &str = "0.0.0.0:69";
pub const DEFAULT_LEASE_SECS: u32 = 12 * 3600;
pub const DEFAULT_MAX_TRANSFERS: usize = 64;
/// The HTTPS port when `[http] tls_listen` does not say.
pub const DEFAULT_TLS_PORT: u16 = 8443;
pub const DEFAULT_MAX_CONNECTIONS: usize = 8192;
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: usize = 64;
pub const DEFAULT_HEADER_TIMEOUT_SECS: u64 = 15;
/// Longer than the 90 s for which bootcast's own clients keep an idle connection: they close
/// first, so a request never meets a connection the server is closing.
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 120;

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address PCs use to reach this server; `None` when no DHCP runs and none was given
    /// (boot scripts then use the `Host` header of each request).
    pub advertise: Option<Ipv4Addr>,
    pub http: SocketAddr,
    /// `[http] tls_listen`: the HTTPS listener (`None`: off).
    pub https: Option<SocketAddr>,
    /// `[tls] cert` and `key`; `None`: the self-signed pair of `DATA/tls`.
    pub tls_files: Option<(PathBuf, PathBuf)>,
    /// Connection caps and timeouts of the HTTP listeners.
    pub limits: HttpLimits,
    /// `[http] plain_relays`: subnets from which the relay protocol is answered over plain
    /// HTTP (relays of a release before HTTPS, while a region upgrades); empty: none.
    pub plain_relays: Vec<String>,
    pub tftp: TftpConfig,
    /// The DHCP segments served (`[dhcp]`, `[[dhcp.segments]]`): none, one, or one per VLAN.
    pub dhcp: Vec<DhcpConfig>,
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
    /// `[wake]`: SecureOn password and repeats of the Wake-on-LAN packets this node sends.
    pub wake: crate::wol::send::WakeOptions,
    /// `[ldap]`: staff logins against the directory.
    pub ldap: Option<crate::access::ldap::LdapConfig>,
    /// Tests only (`--clock-file`): the schedulers' clock (task rules, push windows).
    pub clock_file: Option<PathBuf>,
}

impl Config {
    /// The schedulers' clock: the system's, or the test's clock file.
    pub fn clock(&self) -> std::sync::Arc<dyn crate::push::clock::Clock> {
        match &self.clock_file {
            Some(p) => std::sync::Arc::new(crate::push::clock::FileClock { path: p.clone() }),
            None => std::sync::Arc::new(crate::push::clock::SystemClock),
        }
    }
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
    /// How a UEFI machine with nothing to do leaves for its disk, unless its host, a group
    /// of it or its site says otherwise.
    pub uefi_local: crate::boot::script::Handoff,
    /// The signed binaries of the Secure Boot chain.
    pub uefi: crate::boot::signed::SignedChain,
}

/// `[boot] credential_minutes` when the file does not say: enough for slow firmware.
pub const DEFAULT_CREDENTIAL_MINUTES: u32 = 10;

impl Default for BootConfig {
    fn default() -> Self {
        BootConfig {
            credential_secs: i64::from(DEFAULT_CREDENTIAL_MINUTES) * 60,
            trust_without_dhcp: Vec::new(),
            uefi_local: Default::default(),
            uefi: crate::boot::signed::SignedChain::locate(None),
        }
    }
}

/// `[retention] days` when the file does not say.
pub const DEFAULT_RETENTION_DAYS: u32 = 365;
/// `[retention] gc_hours` when the file does not say.
pub const DEFAULT_GC_HOURS: u32 = 24;

/// `[http] chunk_cache_mb` by default: 256 MiB of chunk frames, a room's restore of a large
/// image.
pub const DEFAULT_CHUNK_CACHE: u64 = 256 << 20;

/// What the HTTP listeners allow (`[http]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections open at once, all listeners together.
    pub max_connections: usize,
    /// Connections open at once from one source address.
    pub max_per_address: usize,
    /// A new connection's time to a complete request head (TLS handshake included); a request
    /// head's time from its first byte.
    pub header_timeout: std::time::Duration,
    /// A keep-alive connection's wait for its next request.
    pub idle_timeout: std::time::Duration,
    /// Bytes of chunk frames served lately kept in memory.
    pub chunk_cache: u64,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_per_address: DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
            header_timeout: std::time::Duration::from_secs(DEFAULT_HEADER_TIMEOUT_SECS),
            idle_timeout: std::time::Duration::from_secs(DEFAULT_IDLE_TIMEOUT_SECS),
            chunk_cache: DEFAULT_CHUNK_CACHE,
        }
    }
}

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

impl AfterRegister {
    pub fn as_str(self) -> &'static str {
        match self {
            AfterRegister::Reboot => "reboot",
            AfterRegister::Poweroff => "poweroff",
        }
    }

    /// The inverse of [`AfterRegister::as_str`].
    pub fn parse(s: &str) -> Option<AfterRegister> {
        [AfterRegister::Reboot, AfterRegister::Poweroff]
            .into_iter()
            .find(|a| a.as_str() == s)
    }
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
        let mask = Ipv4Addr::new(255, 255, 255, 0);
        match name {
            "br0" => Some((Ipv4Addr::new(10, 99, 0, 1), mask)),
            "br1" => Some((Ipv4Addr::new(10, 99, 1, 1), mask)),
            _ => None,
        }
    }

    /// `[[dhcp.segments]]`: one segment per interface, each its own mode and pool, each
    /// checked with its name in the problem.
    #[test]
    fn several_segments_each_with_its_own_settings() {
        let two = "[dhcp]\ninterface='br0'\nmode='full'\nrange='10.99.0.100,10.99.0.150'\n\
                   [[dhcp.segments]]\ninterface='br1'\nmode='full'\nrange='10.99.1.100,10.99.1.150'\nrouter='10.99.1.1'\n";
        let c = RawConfig::from_toml(two).unwrap().validate(&iface).unwrap();
        assert_eq!(c.dhcp.len(), 2);
        assert_eq!(c.advertise, Some(Ipv4Addr::new(10, 99, 0, 1)));
        assert_eq!(
            (c.dhcp[1].interface.as_str(), c.dhcp[1].address),
            ("br1", Ipv4Addr::new(10, 99, 1, 1))
        );
        let pool = c.dhcp[1].pool.clone().unwrap();
        assert_eq!(pool.first, Ipv4Addr::new(10, 99, 1, 100));
        // segments alone (no [dhcp] interface): the first one is advertised
        let c = RawConfig::from_toml("[[dhcp.segments]]\ninterface='br1'\n")
            .unwrap()
            .validate(&iface)
            .unwrap();
        assert_eq!(c.advertise, Some(Ipv4Addr::new(10, 99, 1, 1)));
        let p = problems("[dhcp]\ninterface='br0'\n[[dhcp.segments]]\ninterface='br1'\nmode='full'\nrange='10.99.0.100,10.99.0.150'\n");
        assert!(
            p.iter().any(|p| p.starts_with("dhcp.segments[0]: ")
                && p.contains("outside the interface's subnet")),
            "{p:?}"
        );
        let p = problems("[dhcp]\ninterface='br0'\n[[dhcp.segments]]\nmode='full'\n[[dhcp.segments]]\ninterface='br0'\n");
        assert!(
            p.iter()
                .any(|p| p.contains("dhcp.segments[0]: interface is missing")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|p| p.contains("dhcp.segments[1]: interface \"br0\" is served twice")),
            "{p:?}"
        );
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
        assert!(c.dhcp.is_empty());
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
    fn the_uefi_chain_follows_the_dhcp_mode_and_needs_its_binaries() {
        let signed = tempfile::tempdir().unwrap();
        let dir = signed.path().display();
        let full = format!(
            "[boot]\nuefi_binaries='{dir}'\nuefi_local='exit'\n[dhcp]\ninterface='br0'\nmode='full'\nrange='10.99.0.100,10.99.0.200'\n"
        );
        // the signed chain with full DHCP: its binaries must be there
        let p = problems(&full);
        assert!(
            p.iter()
                .any(|p| p.contains("dhcp.uefi_chain") && p.contains("[boot] uefi_binaries")),
            "{p:?}"
        );
        std::fs::write(signed.path().join("shimx64.efi"), b"MZ").unwrap();
        std::fs::write(signed.path().join("grubx64.efi"), b"MZ").unwrap();
        let c = RawConfig::from_toml(&full)
            .unwrap()
            .validate(&iface)
            .unwrap();
        assert_eq!(c.dhcp[0].uefi_chain, crate::boot::dhcp::UefiChain::Shim);
        assert_eq!(c.boot.uefi_local, crate::boot::script::Handoff::Exit);
        // proxyDHCP keeps iPXE unless told: the signed GRUB would not find this server
        let c = RawConfig::from_toml("[dhcp]\ninterface='br0'\n")
            .unwrap()
            .validate(&iface)
            .unwrap();
        let d = c.dhcp[0].clone();
        assert_eq!(d.uefi_chain, crate::boot::dhcp::UefiChain::Ipxe);
        assert_eq!(d.boot_files.get(7), Some("snponly.efi"));
        assert!(problems("[dhcp]\ninterface='br0'\nuefi_chain='grub'\n")[0].contains("\"shim\""));
        assert!(problems("[boot]\nuefi_local='sanboot'\n")[0].contains("\"exit\""));
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
        let d = c.dhcp[0].clone();
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
    fn https_and_connection_limits() {
        let c = RawConfig::default().validate(&iface).unwrap();
        assert_eq!(c.https.unwrap().to_string(), "0.0.0.0:8443");
        assert_eq!(c.limits, HttpLimits::default());
        assert_eq!(
            (c.limits.max_connections, c.limits.max_per_address),
            (8192, 64)
        );
        assert!(c.tls_files.is_none());
        let c = RawConfig::from_toml(
            "[http]\nlisten='127.0.0.1:0'\nmax_connections=100\nmax_connections_per_address=10\nheader_timeout=5\nidle_timeout=30\n",
        )
        .unwrap()
        .validate(&iface)
        .unwrap();
        assert_eq!(
            c.https.unwrap().to_string(),
            "127.0.0.1:0",
            "an ephemeral HTTP port: HTTPS too"
        );
        assert_eq!(c.limits.max_per_address, 10);
        assert_eq!(c.limits.header_timeout.as_secs(), 5);
        assert_eq!(c.limits.idle_timeout.as_secs(), 30);
        let c = RawConfig::from_toml("[http]\ntls_listen='off'\n")
            .unwrap()
            .validate(&iface)
            .unwrap();
        assert!(c.https.is_none());

        let ps = problems(
            "[http]\nlisten='0.0.0.0:8443'\nmax_connections=0\nheader_timeout=0\nidle_timeout=100000\n[tls]\ncert='/nonexistent.pem'\n",
        );
        assert_eq!(ps.len(), 5, "{ps:#?}");
        assert!(ps
            .iter()
            .any(|p| p.contains("tls_listen") && p.contains("own port")));
        assert!(ps.iter().any(|p| p.contains("max_connections = 0")));
        assert!(ps.iter().any(|p| p.contains("header_timeout = 0")));
        assert!(ps.iter().any(|p| p.contains("idle_timeout = 100000")));
        assert!(ps
            .iter()
            .any(|p| p.contains("both cert") && p.contains("key")));
        let ps = problems("[http]\nchunk_cache_mb=2000000\n");
        assert!(ps[0].contains("http.chunk_cache_mb = 2000000"), "{ps:#?}");
        let ps = problems("[http]\nmax_connections=10\nmax_connections_per_address=20\n");
        assert!(ps[0].contains("more than http.max_connections"), "{ps:#?}");
        let ps = problems("[tls]\ncert='/nonexistent/c.pem'\nkey='/nonexistent/k.pem'\n");
        assert_eq!(ps.len(), 2, "{ps:#?}");
        assert!(ps[0].contains("tls.cert") && ps[0].contains("no such file"));
    }

    #[test]
    fn relay_upstream_tls() {
        let relay = |extra: &str| {
            RawConfig::from_toml(&format!("[relay]\nsite='s'\ntoken='t'\n{extra}"))
                .and_then(|r| r.validate(&iface))
                .map(|c| c.relay.unwrap())
        };
        let fp = crate::tls::Fingerprint::of(b"x");
        let r = relay(&format!(
            "upstream='https://10.0.0.5:8443'\nupstream_fingerprint='{fp}, {fp}'\n"
        ))
        .unwrap();
        match &r.upstream_tls {
            crate::tls::TlsClient::Pinned(p) => assert_eq!(p.fingerprints, vec![fp, fp]),
            other => panic!("{other:?}"),
        }
        assert!(r.plain_upstream_warning().is_none());
        // no pin, no CA: public CAs
        let r = relay("upstream='https://central.example'\n").unwrap();
        assert!(matches!(r.upstream_tls, crate::tls::TlsClient::Roots));
        // plain HTTP to another machine: allowed, with a warning; to this one: quiet
        let r = relay("upstream='http://10.0.0.5:8080'\n").unwrap();
        let w = r.plain_upstream_warning().unwrap();
        assert!(
            w.contains("in clear") && w.contains("--upstream-fingerprint"),
            "{w}"
        );
        for local in [
            "http://127.0.0.1:8080",
            "http://localhost:8080",
            "http://[::1]:8080",
        ] {
            let r = relay(&format!("upstream='{local}'\n")).unwrap();
            assert!(r.plain_upstream_warning().is_none(), "{local}");
        }
        let e = relay(&format!(
            "upstream='http://10.0.0.5:8080'\nupstream_fingerprint='{fp}'\n"
        ))
        .unwrap_err()
        .problems;
        assert!(
            e[0].contains("plain HTTP") && e[0].contains("https://"),
            "{e:#?}"
        );
        let e = relay("upstream='https://x'\nupstream_fingerprint='sha256:12'\n")
            .unwrap_err()
            .problems;
        assert!(
            e[0].contains("upstream_fingerprint") && e[0].contains("64 hex"),
            "{e:#?}"
        );
        let e = relay(&format!(
            "upstream='https://x'\nupstream_fingerprint='{fp}'\nupstream_ca='/nonexistent.pem'\n"
        ))
        .unwrap_err()
        .problems;
        assert_eq!(e.len(), 2, "{e:#?}");
        assert!(e
            .iter()
            .any(|p| p.contains("upstream_ca") && p.contains("/nonexistent.pem")));
        assert!(e.iter().any(|p| p.contains("give one")));
    }

    #[test]
    fn wake_password_and_repeat_are_checked() {
        let c = RawConfig::from_toml("[wake]\npassword = '01:23:45:67:89:ab'\nrepeat = 5\n")
            .unwrap()
            .validate(&iface)
            .unwrap();
        assert_eq!(c.wake.repeat, 5);
        assert_eq!(
            c.wake.password.unwrap().bytes(),
            [0x01, 0x23, 0x45, 0x67, 0x89, 0xab]
        );
        let d = RawConfig::default().validate(&iface).unwrap();
        assert_eq!((d.wake.repeat, d.wake.password), (3, None));
        let p = problems("[wake]\npassword = 'secret'\nrepeat = 0\n");
        assert!(
            p.iter()
                .any(|l| l.contains("wake.password") && l.contains("4 or 6 hex bytes")),
            "{p:?}"
        );
        assert!(p.iter().any(|l| l.contains("wake.repeat = 0")), "{p:?}");
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

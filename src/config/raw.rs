//! The configuration file as written: every key optional, unknown keys refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ConfigError;

/// The configuration file as written: every key optional, unknown keys refused.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub advertise: Option<String>,
    #[serde(default)]
    pub http: RawHttp,
    #[serde(default)]
    pub tls: RawTls,
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
    #[serde(default)]
    pub retention: RawRetention,
    #[serde(default)]
    pub boot: RawBoot,
    #[serde(default)]
    pub capture: RawCapture,
    #[serde(default)]
    pub wake: RawWake,
    /// `[ldap]`: staff logins against the directory.
    #[serde(default)]
    pub ldap: Option<RawLdap>,
    /// Tests only (`--clock-file`): the schedulers' clock, see [`crate::push::clock::FileClock`].
    #[serde(skip)]
    pub clock_file: Option<PathBuf>,
}

/// `[ldap]`: staff log in with their directory account (OpenLDAP, Active Directory); their
/// directory groups give their role and sites (`[[ldap.map]]`).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLdap {
    /// `ldap://dc1.example.org` or `ldaps://dc1.example.org`.
    pub url: Option<String>,
    /// The DN to bind as; `{user}` is the login name: `uid={user},ou=people,dc=example,dc=org`,
    /// or `{user}@example.org` (Active Directory).
    pub bind_dn: Option<String>,
    /// Where groups are searched; none: the user entry's `memberOf` is read.
    pub group_base: Option<String>,
    /// Group search filter (`{dn}`, `{user}`).
    pub group_filter: Option<String>,
    /// Seconds to wait for the directory. Default 5.
    pub timeout: Option<u64>,
    #[serde(default)]
    pub map: Vec<RawLdapMap>,
}

/// `[[ldap.map]]`: members of `group` get `role`, operators the `sites`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLdapMap {
    pub group: String,
    pub role: String,
    #[serde(default)]
    pub sites: Vec<String>,
}

/// `[wake]`: how this node sends Wake-on-LAN packets.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWake {
    /// SecureOn password the site's NICs require: 4 or 6 hex bytes, `01:23:45:67:89:ab`.
    pub password: Option<String>,
    /// Times each host's packet is sent (1-10). Default 3.
    pub repeat: Option<u32>,
}

/// `[capture]`: bounds on what one capture task may store.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCapture {
    /// Most new chunk bytes (compressed, as stored) one capture task may upload: `1T`,
    /// `500G`. Default 1T, more than a fleet PC's disk; an agent that sends more is refused.
    pub max_bytes: Option<String>,
}

/// `[boot]`: the boot credentials handed out in boot-environment scripts.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBoot {
    /// Minutes a boot script's credential stays valid for the agent's hello. Default 10.
    pub credential_minutes: Option<u32>,
    /// Subnets (CIDR) whose machines get a credential, bound to the address their boot script
    /// request came from, without a DHCP exchange seen by bootcast (another DHCP server on
    /// that segment hands out the boot file). Default none: a credential goes only to the
    /// address bootcast's (or a site relay's) DHCP service saw the machine at.
    #[serde(default)]
    pub trust_without_dhcp: Vec<String>,
    /// How a UEFI machine with nothing to do leaves for its disk: "chain" (default) or "exit".
    pub uefi_local: Option<String>,
    /// A directory holding the signed `shimx64.efi` and `grubx64.efi` to serve instead of
    /// Debian's packages'.
    pub uefi_binaries: Option<PathBuf>,
}

/// `[retention]`: how long history is kept, and how often the store is collected.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetention {
    /// Events (and their hook runs), boots and inventories older than this many days are
    /// pruned (each host's newest inventory stays); 0 keeps them forever. Default 365.
    pub days: Option<u32>,
    /// Hours between two `store gc` runs of the server (0: never; `bootcast store gc` by
    /// hand). Default 24.
    pub gc_hours: Option<u32>,
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
    /// The HTTPS listener, `ADDRESS:PORT` or `"off"`; default: `listen`'s address, port 8443.
    pub tls_listen: Option<String>,
    /// Connections open at once, all listeners and clients together (default 8192).
    pub max_connections: Option<usize>,
    /// Connections open at once from one source address (default 64).
    pub max_connections_per_address: Option<usize>,
    /// Seconds a new connection has to send a complete request head (TLS handshake included),
    /// and a request head has from its first byte (default 15).
    pub header_timeout: Option<u64>,
    /// Seconds a keep-alive connection may wait for its next request (default 120).
    pub idle_timeout: Option<u64>,
    /// MiB of chunk frames served lately kept in memory (default 256; 0: none).
    pub chunk_cache_mb: Option<u64>,
    /// Subnets whose relays may use the relay protocol over plain HTTP (default none): relays
    /// of a release before HTTPS, while a region upgrades.
    #[serde(default)]
    pub plain_relays: Vec<String>,
}

/// `[tls]`: the HTTPS listener's certificate; without it, a self-signed one in `DATA/tls`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// PEM: the certificate, then any intermediates.
    pub cert: Option<PathBuf>,
    /// PEM: its private key (mode 0600).
    pub key: Option<PathBuf>,
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
    /// What UEFI x64 PXE clients are given: "shim" (default, the Secure Boot chain) or "ipxe".
    pub uefi_chain: Option<String>,
    /// `[[dhcp.segments]]`: more interfaces (one per VLAN), each with its own settings.
    #[serde(default)]
    pub segments: Vec<RawDhcp>,
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
    /// `sha256:HEX` of upstream's certificate (several: separated by commas, e.g. during a
    /// rotation): an `https://` upstream must present one of them.
    pub upstream_fingerprint: Option<String>,
    /// A PEM file of CA certificates: an `https://` upstream's certificate must chain to one.
    pub upstream_ca: Option<PathBuf>,
    /// The central server's signing key(s), `ed25519:HEX` as `bootcast key show` prints
    /// (several: separated by commas, during a rotation).
    pub upstream_key: Option<String>,
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
            && self.upstream_fingerprint.is_none()
            && self.upstream_ca.is_none()
            && self.upstream_key.is_none()
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
}

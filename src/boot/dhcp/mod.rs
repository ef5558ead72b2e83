//! DHCP: proxyDHCP (PXE spec) beside the site's DHCP server, or full DHCP with an address pool.
//!
//! - [`codec`]: the whole decision, pure: request bytes + where they came from + settings + lease
//!   store + the time in, reply bytes + destination out. No sockets, no clock.
//! - [`server`]: the tokio loop around it ([`run`]): UDP 67 (and 4011 in proxy mode) bound to one
//!   interface only.
//!
//! Which boot file a client gets:
//! - iPXE (option 77 `iPXE` or option 175 present): [`DhcpSettings::ipxe_script_url`] (HTTP), so
//!   the chain firmware PXE → iPXE → script ends.
//! - otherwise by client architecture (option 93, else the `Arch:` field of option 60) through
//!   [`BootFiles`]; a value starting with `http://` or `https://` is an HTTP-boot URL.
//! - an architecture without an entry gets no boot file (proxy mode: no reply at all); the server
//!   logs a warning once per MAC and architecture.
//!
//! Wiring (`bootcast serve`): build a [`DhcpSettings`] from the config, validate it
//! ([`DhcpSettings::validate`], also done by [`run`]), and spawn
//! `run(settings, Arc<dyn LeaseStore>, cancel)`. `run` needs CAP_NET_BIND_SERVICE and
//! CAP_NET_RAW (SO_BINDTODEVICE), i.e. root in practice; it returns `Ok(())` after `cancel`,
//! and `Err` only for bad settings or a port it cannot bind (typically another DHCP server
//! on the host, or a missing interface). The bound interface is resolved when `run` starts: an
//! interface deleted and re-created later is not followed (restart the server).

pub mod codec;
pub mod server;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;

pub use server::{bind_all, run, run_on};

/// proxyDHCP (another server hands out addresses) or full DHCP (bootcast does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DhcpMode {
    /// PXE proxyDHCP: never hands out an address; answers only `PXEClient`/`HTTPClient`
    /// DISCOVERs on port 67 and REQUESTs on port 4011.
    Proxy,
    /// Full DHCP from [`DhcpSettings::pool`], boot information included for PXE clients.
    Full,
}

/// Everything the DHCP server needs. The lead's config maps onto this one to one.
#[derive(Debug, Clone)]
pub struct DhcpSettings {
    /// The network device the sockets are bound to (SO_BINDTODEVICE). Never empty: bootcast
    /// never answers DHCP on "all interfaces".
    pub interface: String,
    pub mode: DhcpMode,
    /// The advertised address: siaddr (next server), option 54, option 66. Must be an address
    /// of `interface` (TFTP and the proxyDHCP port 4011 are reached there).
    pub server_ip: Ipv4Addr,
    /// Client architecture (option 93) → boot file name (TFTP) or URL (HTTP boot).
    pub boot_files: BootFiles,
    /// The file name given to iPXE clients, e.g. `http://10.99.0.1:8080/boot.ipxe`.
    pub ipxe_script_url: String,
    /// Full mode: the address pool. Required in [`DhcpMode::Full`], ignored in proxy mode.
    pub pool: Option<PoolSettings>,
}

/// The address pool of full mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    /// First and last address handed out (inclusive, same subnet as `server_ip`).
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
    /// Option 1.
    pub netmask: Ipv4Addr,
    /// Option 3, if any.
    pub router: Option<Ipv4Addr>,
    /// Option 6 (empty: not sent).
    pub dns: Vec<Ipv4Addr>,
    /// Option 51, seconds. T1/T2 (58/59) are 1/2 and 7/8 of it.
    pub lease_secs: u32,
}

impl PoolSettings {
    /// Whether `ip` is one of the pool's addresses.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let ip = u32::from(ip);
        u32::from(self.first) <= ip && ip <= u32::from(self.last)
    }

    /// Whether `ip` is on the pool's subnet (`first` & `netmask`).
    pub fn same_subnet(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::from(self.netmask);
        u32::from(ip) & mask == u32::from(self.first) & mask
    }
}

/// Client architecture (RFC 4578 option 93, IANA "Processor Architecture Types") → boot file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootFiles {
    pub by_arch: BTreeMap<u16, String>,
}

/// Architecture numbers bootcast knows by name (IANA registry).
pub mod arch {
    /// x86 BIOS.
    pub const BIOS: u16 = 0;
    /// EFI IA32.
    pub const EFI_IA32: u16 = 6;
    /// EFI x86-64 (what OVMF sends).
    pub const EFI_X64: u16 = 7;
    /// EFI x86-64, the number some firmware sends instead of 7.
    pub const EFI_BC: u16 = 9;
    /// EFI arm64.
    pub const EFI_ARM64: u16 = 11;
    /// x86-64 UEFI HTTP boot.
    pub const EFI_X64_HTTP: u16 = 16;
}

/// What UEFI x64 PXE clients are given (`[dhcp] uefi_chain`; the configuration's default
/// depends on the DHCP mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UefiChain {
    /// The Secure Boot chain: shim → GRUB → kernel, all signed ([`crate::boot::signed`]).
    Shim,
    /// The unsigned iPXE (`snponly.efi`): machines with Secure Boot on refuse it.
    Ipxe,
}

impl UefiChain {
    pub fn parse(s: &str) -> Option<UefiChain> {
        match s {
            "shim" => Some(UefiChain::Shim),
            "ipxe" => Some(UefiChain::Ipxe),
            _ => None,
        }
    }
}

impl Default for BootFiles {
    /// [`BootFiles::for_chain`] of the iPXE chain.
    fn default() -> Self {
        BootFiles::for_chain(UefiChain::Ipxe)
    }
}

impl BootFiles {
    /// 0 → `undionly.kpxe`; 7, 9 (UEFI x64) → `shimx64.efi` (or `snponly.efi` for the `ipxe`
    /// chain); 6 (UEFI IA32) → `snponly.efi`; 11 unset (configure it). 16 (UEFI HTTP boot)
    /// wants a URL: the server sets its own `/ipxe/snponly.efi` unless configured (Debian 12's
    /// signed GRUB has no HTTP: after shim over HTTP boot it could read no configuration).
    pub fn for_chain(chain: UefiChain) -> Self {
        let mut by_arch = BTreeMap::new();
        by_arch.insert(
            arch::BIOS,
            crate::boot::ipxe::UNDIONLY_KPXE.name.to_string(),
        );
        let snp = crate::boot::ipxe::SNPONLY_EFI.name.to_string();
        by_arch.insert(arch::EFI_IA32, snp.clone());
        let x64 = match chain {
            UefiChain::Shim => crate::boot::signed::SHIM.to_string(),
            UefiChain::Ipxe => snp,
        };
        for a in [arch::EFI_X64, arch::EFI_BC] {
            by_arch.insert(a, x64.clone());
        }
        BootFiles { by_arch }
    }

    /// The configured file or URL for `arch`.
    pub fn get(&self, arch: u16) -> Option<&str> {
        self.by_arch.get(&arch).map(String::as_str)
    }

    /// Sets (or with `None` removes) the entry for `arch`.
    pub fn set(&mut self, arch: u16, file: Option<&str>) -> &mut Self {
        match file {
            Some(f) => self.by_arch.insert(arch, f.to_string()),
            None => self.by_arch.remove(&arch),
        };
        self
    }
}

pub use crate::mac::Mac;

impl Mac {
    /// The owner recorded for an address a client DECLINEd (in use by someone unknown): such a
    /// row blocks the address until it expires.
    pub const DECLINED: Mac = Mac([0; 6]);
}

/// One address binding of full mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub ip: Ipv4Addr,
    pub mac: Mac,
    /// Unix seconds. An expired lease still says which MAC last held the address (sticky
    /// allocation); it only stops blocking other clients.
    pub expires: u64,
}

/// A lease store failure (the SQLite implementation wraps its error text here).
#[derive(Debug, thiserror::Error)]
#[error("lease store: {0}")]
pub struct LeaseError(pub String);

/// Where full mode keeps its leases. One row per IP address (the key); the codec keeps at most
/// one row per MAC (it releases a MAC's old address before binding it to a new one), except
/// for [`Mac::DECLINED`] rows. Calls are synchronous and short; the codec makes a handful per
/// request.
pub trait LeaseStore: Send + Sync {
    /// The lease held (or last held) by `mac`; with several rows, the one expiring last.
    fn by_mac(&self, mac: Mac) -> Result<Option<Lease>, LeaseError>;
    /// The row for `ip`, if any.
    fn by_ip(&self, ip: Ipv4Addr) -> Result<Option<Lease>, LeaseError>;
    /// Inserts or replaces the row for `lease.ip`.
    fn upsert(&self, lease: Lease) -> Result<(), LeaseError>;
    /// Deletes the row for `ip` (no error if there is none).
    fn release(&self, ip: Ipv4Addr) -> Result<(), LeaseError>;
    /// Every row, in address order.
    fn list(&self) -> Result<Vec<Lease>, LeaseError>;
    /// Notes that `mac` was seen at `ip` at `at` (see [`codec::observed`]), behind the switch
    /// port `circuit` if a DHCP relay agent said so ([`codec::circuit_id`]); by default
    /// nothing is kept.
    fn seen(
        &self,
        mac: Mac,
        ip: Ipv4Addr,
        at: u64,
        circuit: Option<&str>,
    ) -> Result<(), LeaseError> {
        let _ = (mac, ip, at, circuit);
        Ok(())
    }
}

/// In-memory [`LeaseStore`], for tests and benches.
#[derive(Debug, Default)]
pub struct MemoryLeases {
    rows: Mutex<BTreeMap<Ipv4Addr, Lease>>,
}

impl MemoryLeases {
    pub fn new() -> MemoryLeases {
        MemoryLeases::default()
    }

    fn rows(&self) -> std::sync::MutexGuard<'_, BTreeMap<Ipv4Addr, Lease>> {
        // A panic while holding the lock cannot leave the map half-updated (single inserts).
        self.rows.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl LeaseStore for MemoryLeases {
    fn by_mac(&self, mac: Mac) -> Result<Option<Lease>, LeaseError> {
        Ok(self
            .rows()
            .values()
            .filter(|l| l.mac == mac)
            .max_by_key(|l| l.expires)
            .copied())
    }

    fn by_ip(&self, ip: Ipv4Addr) -> Result<Option<Lease>, LeaseError> {
        Ok(self.rows().get(&ip).copied())
    }

    fn upsert(&self, lease: Lease) -> Result<(), LeaseError> {
        self.rows().insert(lease.ip, lease);
        Ok(())
    }

    fn release(&self, ip: Ipv4Addr) -> Result<(), LeaseError> {
        self.rows().remove(&ip);
        Ok(())
    }

    fn list(&self) -> Result<Vec<Lease>, LeaseError> {
        Ok(self.rows().values().copied().collect())
    }
}

/// The [`LeaseStore`] contract, for any implementation's tests (the SQLite one too): give it an
/// empty store; it panics with a message on the first broken rule and leaves the store empty.
#[doc(hidden)]
pub fn check_lease_store(store: &dyn LeaseStore) {
    let ip = |n| Ipv4Addr::new(10, 99, 0, n);
    let a = Mac([2, 0, 0, 0, 0, 0xa]);
    let b = Mac([2, 0, 0, 0, 0, 0xb]);
    assert_eq!(store.list().unwrap(), vec![], "store must start empty");
    assert_eq!(store.by_mac(a).unwrap(), None);
    assert_eq!(store.by_ip(ip(1)).unwrap(), None);
    let l1 = Lease {
        ip: ip(20),
        mac: a,
        expires: 100,
    };
    store.upsert(l1).unwrap();
    assert_eq!(store.by_ip(ip(20)).unwrap(), Some(l1));
    assert_eq!(store.by_mac(a).unwrap(), Some(l1));
    // upsert replaces the row of the same ip (owner and expiry)
    let l1b = Lease {
        ip: ip(20),
        mac: b,
        expires: 200,
    };
    store.upsert(l1b).unwrap();
    assert_eq!(store.by_ip(ip(20)).unwrap(), Some(l1b));
    assert_eq!(store.by_mac(a).unwrap(), None, "old owner no longer found");
    // by_mac with several rows: the one expiring last; list in address order
    let l2 = Lease {
        ip: ip(3),
        mac: b,
        expires: 300,
    };
    let l3 = Lease {
        ip: ip(200),
        mac: Mac::DECLINED,
        expires: 50,
    };
    let l4 = Lease {
        ip: ip(100),
        mac: Mac::DECLINED,
        expires: 60,
    };
    for l in [l2, l3, l4] {
        store.upsert(l).unwrap();
    }
    assert_eq!(store.by_mac(b).unwrap(), Some(l2));
    assert_eq!(store.by_mac(Mac::DECLINED).unwrap(), Some(l4));
    assert_eq!(
        store.list().unwrap(),
        vec![l2, l1b, l4, l3],
        "list in address order"
    );
    // release: gone, and releasing again is no error
    for l in [l1b, l2, l3, l4] {
        store.release(l.ip).unwrap();
        store.release(l.ip).unwrap();
        assert_eq!(store.by_ip(l.ip).unwrap(), None);
    }
    assert_eq!(store.list().unwrap(), vec![]);
}

/// Why the DHCP server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error("DHCP settings: {0}")]
    Settings(String),
    #[error("DHCP: cannot open UDP port {port} on interface {interface}: {source}")]
    Bind {
        port: u16,
        interface: String,
        source: std::io::Error,
    },
}

impl DhcpSettings {
    /// Checks what `run` relies on: an interface name, a pool in full mode that holds at
    /// least one address and sits on one subnet.
    pub fn validate(&self) -> Result<(), DhcpError> {
        let bad = |s: String| Err(DhcpError::Settings(s));
        if self.interface.is_empty() {
            return bad(
                "an interface is required (bootcast never serves DHCP on all interfaces)".into(),
            );
        }
        if self.server_ip.is_unspecified() {
            return bad("server_ip must be an address of the interface".into());
        }
        if self.mode == DhcpMode::Full {
            let Some(pool) = &self.pool else {
                return bad("full DHCP mode needs a pool".into());
            };
            if u32::from(pool.first) > u32::from(pool.last) {
                return bad(format!(
                    "pool first {} is after last {}",
                    pool.first, pool.last
                ));
            }
            if !pool.same_subnet(pool.last) {
                return bad(format!(
                    "pool {}..{} spans more than the subnet of netmask {}",
                    pool.first, pool.last, pool.netmask
                ));
            }
            if pool.lease_secs < 60 {
                return bad(format!("lease time {} s is under 60 s", pool.lease_secs));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_boot_files() {
        let b = BootFiles::for_chain(super::UefiChain::Shim);
        assert_eq!(b.get(0), Some("undionly.kpxe"));
        assert_eq!(b.get(6), Some("snponly.efi"));
        for a in [7, 9] {
            assert_eq!(b.get(a), Some("shimx64.efi"));
        }
        assert_eq!(b.get(11), None);
        assert_eq!(b.get(16), None);
        let ipxe = BootFiles::default();
        for a in [6, 7, 9] {
            assert_eq!(ipxe.get(a), Some("snponly.efi"));
        }
    }

    #[test]
    fn memory_leases_meet_the_contract() {
        check_lease_store(&MemoryLeases::new());
    }

    #[test]
    fn memory_leases_by_mac_takes_latest() {
        let m = MemoryLeases::new();
        let mac = Mac([2, 0, 0, 0, 0, 1]);
        m.upsert(Lease {
            ip: Ipv4Addr::new(10, 99, 0, 10),
            mac,
            expires: 5,
        })
        .unwrap();
        m.upsert(Lease {
            ip: Ipv4Addr::new(10, 99, 0, 11),
            mac,
            expires: 9,
        })
        .unwrap();
        assert_eq!(
            m.by_mac(mac).unwrap().unwrap().ip,
            Ipv4Addr::new(10, 99, 0, 11)
        );
        m.release(Ipv4Addr::new(10, 99, 0, 11)).unwrap();
        assert_eq!(
            m.by_mac(mac).unwrap().unwrap().ip,
            Ipv4Addr::new(10, 99, 0, 10)
        );
        assert_eq!(m.list().unwrap().len(), 1);
        assert_eq!(mac.to_string(), "02:00:00:00:00:01");
    }

    #[test]
    fn settings_validation() {
        let mut s = DhcpSettings {
            interface: String::new(),
            mode: DhcpMode::Proxy,
            server_ip: Ipv4Addr::new(10, 99, 0, 1),
            boot_files: BootFiles::default(),
            ipxe_script_url: "http://10.99.0.1/boot.ipxe".into(),
            pool: None,
        };
        assert!(s.validate().is_err(), "empty interface accepted");
        s.interface = "br0".into();
        s.validate().unwrap();
        s.mode = DhcpMode::Full;
        assert!(s.validate().is_err(), "full mode without pool accepted");
        s.pool = Some(PoolSettings {
            first: Ipv4Addr::new(10, 99, 0, 100),
            last: Ipv4Addr::new(10, 99, 1, 100),
            netmask: Ipv4Addr::new(255, 255, 255, 0),
            router: None,
            dns: vec![],
            lease_secs: 3600,
        });
        assert!(s.validate().is_err(), "pool across subnets accepted");
        s.pool.as_mut().unwrap().last = Ipv4Addr::new(10, 99, 0, 150);
        s.validate().unwrap();
    }
}

//! Hardware inventory (issue 8): what the agent collects on every boot ([`model`],
//! [`collect`] from sysfs, procfs and the SMBIOS tables parsed by [`smbios`]), its GLPI
//! native form ([`glpi`]), and what changed between two boots ([`diff`]).

pub mod collect;
pub mod diff;
pub mod efivars;
pub mod glpi;
pub mod model;
pub mod smbios;

pub use model::Inventory;

/// The GLPI device id of a host: stable per machine (GLPI's form NAME-YYYY-MM-DD-HH-MM-SS,
/// with a fixed date: bootcast has no install date to give).
pub fn glpi_device_id(name: Option<&str>, mac: &crate::mac::Mac) -> String {
    let base = match name {
        Some(n) => n.to_string(),
        None => mac.to_string().replace(':', ""),
    };
    format!("{base}-2000-01-01-00-00-00")
}

/// The `GLPI-Agent-ID` of a host: a UUID derived from its MAC (the same on every boot).
pub fn glpi_agent_id(mac: &crate::mac::Mac) -> String {
    let h = blake3::hash(format!("bootcast glpi agent id {mac}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h.as_bytes()[..16]);
    b[6] = (b[6] & 0x0f) | 0x50; // version 5 layout (name-based)
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    let x = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &x[..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..]
    )
}

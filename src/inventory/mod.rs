//! Hardware inventory (issue 8): what the agent collects on every boot ([`model`],
//! [`collect`] from sysfs, procfs and the SMBIOS tables parsed by [`smbios`]), and its GLPI
//! native form ([`glpi`]).

pub mod collect;
pub mod glpi;
pub mod model;
pub mod smbios;

pub use model::Inventory;

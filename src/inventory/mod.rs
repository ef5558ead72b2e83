//! Hardware inventory (issue 8): what the agent collects on every boot ([`model`],
//! [`collect`] from sysfs, procfs and the SMBIOS tables parsed by [`smbios`]), its GLPI native
//! form ([`glpi`]), and what changed between two boots ([`diff`]).

pub mod model;

pub use model::Inventory;

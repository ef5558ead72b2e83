//! Hardware inventory (issue 8): what the agent collects on every boot ([`model`]), and the
//! SMBIOS tables it reads it from ([`smbios`]).

pub mod model;
pub mod smbios;

pub use model::Inventory;

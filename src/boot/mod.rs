//! Boot services: what a PC's firmware talks to before any OS runs.
//!
//! - [`dhcp`]: proxyDHCP beside the site's DHCP server, or full DHCP on a deployment VLAN.
//! - [`tftp`]: read-only TFTP for the iPXE binaries and a configured root.
//! - [`ipxe`]: the iPXE binaries bootcast ships.

pub mod dhcp;
pub mod ipxe;
pub mod tftp;

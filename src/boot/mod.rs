//! Boot services: what a PC's firmware talks to before any OS runs.
//!
//! - [`dhcp`]: proxyDHCP beside the site's DHCP server, or full DHCP on a deployment VLAN.
//! - [`tftp`]: read-only TFTP for the boot loaders, each machine's GRUB configuration and a
//!   configured root.
//! - [`script`]: what a machine's network boot does next, decided once, rendered by [`ipxe`]
//!   (the iPXE binaries bootcast ships and their scripts) or [`grub`] (the Secure Boot chain's
//!   configurations; its signed binaries: [`signed`]), from [`template`]s.

pub mod dhcp;
pub mod grub;
pub mod ipxe;
pub mod script;
pub mod signed;
pub mod template;
pub mod tftp;

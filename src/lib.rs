//! bootcast: network-boot imaging and image distribution.
//!
//! The library holds every capability; `src/main.rs` is a thin command-line edge over it.
//! - [`store`]: content-addressed chunk store, manifests, ingest, export, verify, gc.
//! - [`boot`]: DHCP, TFTP and the iPXE binaries: how a bare PC reaches bootcast.
//! - [`agent`]: what runs in the boot environment, and its protocol with the server.
//! - [`bootenv`]: builds that boot environment (kernel + initramfs with busybox and the agent).
#![forbid(unsafe_code)]

pub mod agent;
pub mod boot;
pub mod bootenv;
pub mod store;
#[doc(hidden)]
pub mod testkit;

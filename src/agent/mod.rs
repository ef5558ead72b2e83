//! The agent: runs inside the boot environment (initramfs), talks to the server over HTTP.
//!
//! - [`proto`]: the JSON messages exchanged with the server (shared by both sides).
//! - [`boot`]: `bootcast agent boot`, started by the initramfs: hello, then power off or reboot.

pub mod boot;
pub mod proto;
pub mod restore;

//! The agent: runs inside the boot environment (initramfs), talks to the server over HTTP.
//!
//! - [`proto`]: the JSON messages exchanged with the server (shared by both sides).
//! - [`boot`]: `bootcast agent boot`, started by the initramfs: hello, then power off or reboot.
//! - [`restore`]: a reimage task: the image onto the local disk.
//! - [`postdeploy`]: after a restore, the host's name into the restored system.

pub mod boot;
pub mod postdeploy;
pub mod proto;
pub mod restore;

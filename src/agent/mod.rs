//! The agent: runs inside the boot environment (initramfs), talks to the server over HTTP.
//!
//! The JSON messages it exchanges with the server are [`crate::proto::agent`].
//! - [`boot`]: `bootcast agent boot`, started by the initramfs: hello, then the task, then
//!   power off or reboot.
//! - [`restore`]: a reimage task (image from the server onto the local disk).
//! - [`postdeploy`]: after a restore, the host's name into the restored system (Linux; and
//!   Windows' answer file through [`windows`]).
//! - [`grow`]: after a restore onto a larger disk, a partition and its filesystem grown into
//!   the space (the partitions after it moved to the disk's end).
//! - [`capture`]: a capture task (the local disk into a new image version on the server).
//! - [`disk`]: which local disk a task works on; [`task`]: progress, retries, done/failed.

pub mod boot;
pub mod capture;
pub mod disk;
pub mod grow;
pub mod postdeploy;
pub mod restore;
pub mod task;
pub mod windows;

//! The agent: runs inside the boot environment (initramfs), talks to the server over HTTP.
//!
//! - [`proto`]: the JSON messages exchanged with the server (shared by both sides).

pub mod proto;

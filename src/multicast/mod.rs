//! Room multicast: one sender streams an image's compressed chunks to many receivers at once
//! over IPv4 multicast (issue 7). The protocol is specified in [`proto`].
//!
//! - [`proto`]: the datagram codec (pure).
//! - [`receiver`]: reassembly, verification, NAKs (pure state machine) and its socket loop.
//! - [`sender`]: the carousel, rate control, the session's start and end, its socket loop.

pub mod proto;

//! Site relays: a pull-through cache of the store for one site, which prestages pushed image
//! versions inside the site's windows and under its cap, and serves the site's machines.
//!
//! - [`proto`]: messages between a relay and the server above it.
pub mod proto;

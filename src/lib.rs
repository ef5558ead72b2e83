//! bootcast: network-boot imaging and image distribution.
//!
//! The library holds every capability; `src/main.rs` is a thin command-line edge over it.
//! - [`store`]: content-addressed chunk store, manifests, ingest, export, verify, gc.
#![forbid(unsafe_code)]

pub mod store;
#[doc(hidden)]
pub mod testkit;

//! bootcast: network-boot imaging and image distribution.
//!
//! The library holds every capability; `src/main.rs` is a thin command-line edge over it.
//! - [`store`]: content-addressed chunk store, manifests, ingest, export, verify, gc.
//! - [`boot`]: DHCP, TFTP and the iPXE binaries: how a bare PC reaches bootcast.
//! - [`agent`]: what runs in the boot environment, and its protocol with the server.
//! - [`bootenv`]: builds that boot environment (kernel + initramfs with busybox and the agent).
//! - [`http`]: boot scripts, boot environment, agent and staff API over HTTP (axum).
//! - [`fsmap`]: used-block maps of a disk's filesystems (NTFS, FAT, ext, swap): what a capture skips.
//! - [`db`]: hosts, boots, tasks and leases in SQLite.
//! - [`config`]: the server's configuration, validated once at start.
//! - [`proto`]: wire messages shared by several layers (agent ↔ server, relay ↔ server).
//! - [`netif`]: local network interfaces (addresses, the one facing a peer).
//! - [`push`]: nightly pushes to site relays: windows, rate caps, the scheduler's clock.
//! - [`rate`]: bandwidth caps: rate parsing and the token bucket (relay, multicast, pushes).
//! - [`multicast`]: room multicast sessions (sender, receiver, datagram protocol).
//! - [`relay`]: site relays (pull-through cache, prestage, heartbeat).
//! - [`retry`]: the one retry policy (exponential backoff) and its runners.
//! - [`schedule`]: the staff rules for reimage and capture tasks (CLI and API share them).
//! - [`calendar`]: recurring task rules (cron on a site's wall clock) and their runner.
//! - [`server`]: `bootcast serve`, every service in one runtime.
//! - [`metrics`]: the registry of `/metrics` (prometheus-client) and the request latency histogram.
//! - [`sign`]: the central server's ed25519 key; signed versions, task and push orders.
//! - [`tls`]: TLS (rustls, ring): the server's certificate, fingerprints, every client's TLS settings.
//! - [`wol`]: Wake-on-LAN: magic packets, sent on the segment facing the hosts.
//! - [`sys`]: the only `unsafe` code: system calls that `nix` wraps only as unsafe (ioctls).
#![deny(unsafe_code)]

pub mod access;
pub mod agent;
pub mod backup;
pub mod boot;
pub mod bootenv;
pub mod calendar;
pub mod config;
pub mod db;
pub mod fsmap;
pub mod hooks;
pub mod http;
pub mod inventory;
pub mod mac;
pub mod metrics;
pub mod multicast;
pub mod netif;
pub mod proto;
pub mod push;
pub mod rate;
pub mod registration;
pub mod relay;
pub mod retry;
pub mod schedule;
pub mod server;
pub mod sign;
pub mod store;
pub mod sys;
#[doc(hidden)]
pub mod testkit;
pub mod time;
pub mod tls;
pub mod wol;

//! Wire messages that several layers share: the agent's protocol with the server ([`agent`])
//! and a relay's protocol with the server above it ([`relay`]). Both ends (the agent and the
//! HTTP handlers, the relay and the central server) and the database rows that store them use
//! these types, so they sit below all of them and depend only on [`crate::store`] (chunk ids,
//! chunker parameters) and [`crate::inventory`] (the inventory report).

pub mod agent;
pub mod relay;

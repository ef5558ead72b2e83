//! Sessions a server or relay runs for reimage tasks: [`Sessions::ensure`] starts the sender
//! of a session (on its own thread, from the node's store) when an agent of the session says
//! hello and none is running. The first run of a session waits for its receivers (or its
//! wait); an agent that comes after a run ended (a PC switched on late, a restart) starts
//! another run at once, and agents that come while a run is on join it.
//!
//! Group and port follow from the session id ([`address`]): 254 sessions at once get distinct
//! groups in 239.255.77.0/24 (organisation-local scope) and distinct ports from 47101.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::sender::{send, SendOptions, SendReport};
use super::{Endpoint, MulticastError};
use crate::proto::agent::MulticastJoin;
use crate::store::Store;

/// The group and port of session `id`.
pub fn address(id: i64) -> (Ipv4Addr, u16) {
    let slot = (id - 1).rem_euclid(254) as u8 + 1;
    (Ipv4Addr::new(239, 255, 77, slot), 47100 + u16::from(slot))
}

/// What a node runs: which version, how, on which interface.
#[derive(Debug, Clone)]
pub struct Plan {
    pub join: MulticastJoin,
    pub image: String,
    pub version: String,
    /// Where it goes out: the interface facing the agent.
    pub interface: String,
}

/// The sessions running on this node.
#[derive(Default)]
pub struct Sessions {
    running: Mutex<HashSet<i64>>,
    ran: Mutex<HashSet<i64>>,
}

/// What [`Sessions::ensure`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    Started { first: bool },
    AlreadyRunning,
}

impl Sessions {
    pub fn new() -> Arc<Sessions> {
        Arc::new(Sessions::default())
    }

    /// Session ids running now.
    pub fn running(&self) -> Vec<i64> {
        let mut v: Vec<i64> = self.lock_running().iter().copied().collect();
        v.sort_unstable();
        v
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashSet<i64>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes sure a run of `plan`'s session is on: starts the sender on a thread unless one
    /// runs. The version must be complete in `store` (checked before anything starts);
    /// `ended(report)` is called on the sender's thread when the run ends.
    pub fn ensure(
        self: &Arc<Self>,
        plan: &Plan,
        store: Store,
        ended: impl FnOnce(Result<SendReport, String>) + Send + 'static,
    ) -> Result<Ensured, MulticastError> {
        let id = plan.join.session;
        let mut running = self.lock_running();
        if running.contains(&id) {
            return Ok(Ensured::AlreadyRunning);
        }
        let resolved = store.resolve(&format!("{}@{}", plan.image, plan.version))?;
        let endpoint = Endpoint {
            interface: plan.interface.clone(),
            group: plan.join.group,
            port: plan.join.port,
            ttl: 1,
        };
        endpoint.local()?; // the interface has an address: fail here, not on the thread
        let first = self
            .ran
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id);
        let opts = SendOptions {
            // a later run starts at once: its agents are already waiting, others join it
            min_receivers: if first {
                plan.join.receivers as usize
            } else {
                1
            },
            wait: Duration::from_secs(if first {
                u64::from(plan.join.wait_secs)
            } else {
                2
            }),
            max_rate: plan.join.max_rate,
            min_rate: (plan.join.max_rate / 100).max(125_000),
            ..Default::default()
        };
        running.insert(id);
        drop(running);
        let me = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name(format!("multicast-{id}"))
            .spawn(move || {
                let r = send(&store, &resolved.manifest, &endpoint, &opts, &mut |l| {
                    tracing::info!(session = id, "multicast: {l}")
                });
                me.lock_running().remove(&id);
                ended(r.map_err(|e| e.to_string()));
            });
        if let Err(cause) = spawned {
            self.lock_running().remove(&id);
            return Err(MulticastError::Socket {
                what: "starting the sender thread",
                cause,
            });
        }
        Ok(Ensured::Started { first })
    }
}

/// What an agent at `agent` is told to join for `join`'s session of `image@version`: `join`
/// itself once a run is on (started here if needed, on the interface facing the agent; with
/// what [`Sessions::ensure`] did), or `None` (the agent restores over HTTP) when this node
/// cannot run it; the reason is logged. Blocking (reads the manifest).
pub fn offer(
    sessions: &Arc<Sessions>,
    store: Option<Store>,
    join: MulticastJoin,
    image: &str,
    version: &str,
    agent: std::net::IpAddr,
    ended: impl FnOnce(Result<SendReport, String>) + Send + 'static,
) -> Option<(MulticastJoin, Ensured)> {
    let id = join.session;
    let refuse = |why: String| {
        tracing::warn!(session = id, %agent, "multicast session not offered, the agent restores over HTTP: {why}");
        None
    };
    let std::net::IpAddr::V4(v4) = agent else {
        return refuse("the agent has no IPv4 address (multicast sessions are IPv4)".into());
    };
    let Some(interface) = crate::netif::interface_facing(v4) else {
        return refuse(format!("no local interface is on the subnet of {v4}"));
    };
    let Some(store) = store else {
        return refuse("this node has no image store".into());
    };
    let plan = Plan {
        join: join.clone(),
        image: image.to_string(),
        version: version.to_string(),
        interface,
    };
    match sessions.ensure(&plan, store, ended) {
        Ok(e) => {
            if let Ensured::Started { first } = e {
                tracing::info!(session = id, interface = %plan.interface, group = %join.group, port = join.port, first, "multicast session started for {image}@{}", &version[..version.len().min(12)]);
            }
            Some((join, e))
        }
        Err(e) => refuse(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_addresses_are_distinct_for_254_sessions() {
        let all: HashSet<_> = (1..=254).map(address).collect();
        assert_eq!(all.len(), 254);
        assert_eq!(address(1), (Ipv4Addr::new(239, 255, 77, 1), 47101));
        assert_eq!(address(255), address(1));
        assert!(all.iter().all(|(g, _)| g.is_multicast()));
    }
}

//! Messages between a site relay and the server above it (the central server, or another
//! relay that passes them on unchanged).
//!
//! A relay posts a [`Heartbeat`] to `POST /api/v1/relay/heartbeat` with
//! `Authorization: Bearer <site relay token>` (made by `bootcast site add`, shown by
//! `bootcast site token NAME --rotate`; stored hashed) every [`HeartbeatReply::interval`] seconds, and at once when a push
//! changes state. The reply tells it the site's schedule and the pushes it must prestage.
//!
//! Requests a relay passes on for its clients (boot scripts, the agent's reports) carry
//! [`RELAY_TOKEN_HEADER`] and [`RELAY_URL_HEADER`], so the central server writes the relay's
//! address into the boot scripts of that site's machines, and [`FORWARDED_FOR_HEADER`] with
//! the client's address.

use serde::{Deserialize, Serialize};

/// The relay protocol's version. A change that older peers can read (a field with a default)
/// keeps the number; one they cannot raises it. A server serves relays of its own protocol
/// and of the one before ([`OLDEST_PROTOCOL`]: one release apart keeps working, so a region
/// upgrades its central server first, then its relays), and refuses others with a message
/// that names the side to upgrade.
///
/// - 0: relays from before the number (no `protocol` field).
/// - 1: the number; site tokens hashed, read from a file.
/// - 2: signed orders (`key`, `signature`: a relay that pinned the central key refuses
///   unsigned ones, so it needs a server of protocol 2), the order watch
///   (`GET /api/v1/relay/wait`), the DHCP-seen header, HTTPS upstreams. A protocol-1 relay
///   ignores the new fields and keeps working; it speaks plain HTTP, which a server accepts
///   only from the subnets of `[http] plain_relays`. Later, readable by older peers: the site
///   book (`Heartbeat::book`, `HeartbeatReply::book`) and `POST /api/v1/relay/offline-hello`.
pub const PROTOCOL: u32 = 2;

/// The oldest relay protocol a server still serves.
pub const OLDEST_PROTOCOL: u32 = 1;

/// The site relay token of a relay passing a client's request on.
pub const RELAY_TOKEN_HEADER: &str = "x-bootcast-relay-token";
/// The base URL (`http://IP:PORT`) at which that relay's clients reach it.
pub const RELAY_URL_HEADER: &str = "x-bootcast-relay-url";
/// The id of an agent report a relay queued while upstream was down: the central server
/// applies each id once, so a report sent again (its answer lost) is not applied twice.
pub const REPORT_ID_HEADER: &str = "x-bootcast-report-id";
/// The address of the client a relay passes a request on for.
pub const FORWARDED_FOR_HEADER: &str = "x-forwarded-for";
/// The address the relay's DHCP service last saw the machine of a `/boot/MAC.ipxe` request at
/// (absent: it saw none); believed only with a valid relay token. The server above hands a
/// boot credential only to that address (see `db::bootcred`).
pub const DHCP_SEEN_HEADER: &str = "x-bootcast-dhcp-seen";
/// Beside [`DHCP_SEEN_HEADER`]: the switch port (option 82 circuit id) the relay's DHCP service
/// saw the machine behind.
pub const DHCP_CIRCUIT_HEADER: &str = "x-bootcast-dhcp-circuit";
/// On an agent report a relay queued: the boot is one the relay started alone while upstream
/// could not be reached ([`SiteBook`]; its credential and session are the relay's). Believed
/// only with a valid relay token, for a host of that relay's site.
pub const OFFLINE_BOOT_HEADER: &str = "x-bootcast-offline-boot";

/// One image version, by name and full version id (64 hex digits).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct VersionRef {
    pub image: String,
    pub version: String,
}

/// Where a relay is with one push.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PushState {
    /// Not started, or between windows: waiting for the site's window to open.
    Waiting,
    /// Fetching chunks.
    Running,
    /// Staff paused the push.
    Paused,
    /// Every version of the push is complete on the relay.
    Done,
    /// Cannot go on (e.g. a version no longer exists upstream); `detail` says why.
    Failed,
}

impl PushState {
    pub fn as_str(self) -> &'static str {
        match self {
            PushState::Waiting => "waiting",
            PushState::Running => "running",
            PushState::Paused => "paused",
            PushState::Done => "done",
            PushState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<PushState> {
        [
            PushState::Waiting,
            PushState::Running,
            PushState::Paused,
            PushState::Done,
            PushState::Failed,
        ]
        .into_iter()
        .find(|p| p.as_str() == s)
    }
}

/// A relay's progress with one push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushProgress {
    pub push: i64,
    pub state: PushState,
    /// Compressed bytes of the push's chunks this relay holds / needs in all (chunks it held
    /// before the push count as done).
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// Compressed bytes fetched from upstream for this push so far.
    pub fetched: u64,
    /// Bytes per second over the last seconds of fetching (0 when not running).
    pub rate: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// `POST /api/v1/relay/heartbeat`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The relay protocol the relay speaks ([`PROTOCOL`]; 0: a relay from before the number).
    #[serde(default)]
    pub protocol: u32,
    pub site: String,
    /// The base URL at which the site's machines and downstream relays reach this relay.
    pub url: String,
    /// The relay's bootcast version.
    pub version: String,
    /// Compressed bytes of chunks in the relay's store, and its quota (if any).
    pub cache_bytes: u64,
    #[serde(default)]
    pub quota_bytes: Option<u64>,
    /// Versions complete in the relay's store (manifest and every chunk): the only ones the
    /// relay offers its clients without going upstream.
    pub complete: Vec<VersionRef>,
    pub pushes: Vec<PushProgress>,
    /// The revision of the site book the relay holds ([`SiteBook::rev`]; absent: none, or a
    /// relay of protocol 1): the reply carries the book only when it changed since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub book: Option<u64>,
    /// Wake orders of the site book this relay sent (until the book no longer lists them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub woken: Vec<Woken>,
}

/// What a relay needs to serve its site alone while the central server cannot be reached:
/// the site's hosts and their open reimage tasks, each signed by the central server.
///
/// A heartbeat reply carries it only when the site's revision differs from the one the relay
/// holds, and then only the hosts changed since that revision (`full`: every host, the relay
/// replaces what it holds); the open tasks are always all of them (few).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteBook {
    /// The site's revision: raised by any change to one of its hosts or their tasks.
    pub rev: u64,
    /// Every host of the site follows (else: those changed since the relay's revision).
    pub full: bool,
    pub hosts: Vec<SiteHost>,
    /// Open reimage tasks of the site's hosts whose version is fixed.
    pub tasks: Vec<SiteTask>,
    /// What a machine registering does after its hello (`reboot`, `poweroff`).
    pub after_register: String,
    /// Wake-on-LAN orders for the site's hosts not sent yet: the relay sends each at its time
    /// on its DHCP interface and says so in its next heartbeat ([`Heartbeat::woken`]).
    #[serde(default)]
    pub wakes: Vec<WakeOrder>,
}

/// A Wake-on-LAN order (`bootcast host wake`, a task that wakes its host).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WakeOrder {
    pub id: i64,
    pub mac: String,
    /// When to send it (Unix seconds).
    pub at: i64,
    /// The task it wakes the host for, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<i64>,
}

/// A wake order a relay sent, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Woken {
    pub id: i64,
    pub at: i64,
}

/// One host of a site, as its relay keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteHost {
    pub mac: String,
    /// The agent said hello once: a boot without a task boots the local disk.
    pub registered: bool,
}

/// An open reimage task, as the central server would answer its hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteTask {
    pub id: i64,
    pub mac: String,
    pub image: String,
    pub version: String,
    /// Unix seconds before which the task waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<i64>,
    /// The name post-deploy writes into the restored system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The partition post-deploy grows onto a larger disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grow: Option<u32>,
    /// What the machine does once the task is over (absent: reboot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub then: Option<crate::proto::agent::After>,
    /// The central server's signature of the order ([`crate::sign::Statement::Task`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

impl SiteTask {
    /// What the central server signs of this task.
    pub fn statement(&self) -> crate::sign::Statement<'_> {
        crate::sign::Statement::Task {
            task: self.id,
            mac: &self.mac,
            image: &self.image,
            version: &self.version,
        }
    }
}

/// `POST /api/v1/relay/offline-hello` (relay token, report id): an agent's hello that a relay
/// answered alone, passed on when upstream answers again, before that boot's reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfflineHello {
    pub mac: String,
    pub arch: String,
    pub firmware: crate::proto::agent::Firmware,
    pub boot_time: u64,
    /// The task the relay gave the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<i64>,
    /// Unix seconds at which the relay answered it.
    pub at: i64,
}

/// A site's schedule, as the relay applies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteSchedule {
    /// Time zone name (`Europe/Paris`), for the windows.
    pub tz: String,
    /// Transfer windows ([`crate::push::window::Windows`] syntax; `always`).
    pub windows: String,
    /// Bandwidth cap in bytes per second, shared by all of the relay's upstream connections.
    pub rate: Option<u64>,
}

/// A push the relay must carry out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushOrder {
    pub id: i64,
    /// Staff paused it: hold, keep what is fetched.
    pub paused: bool,
    pub versions: Vec<VersionRef>,
    /// Overrides of the site's schedule for this push.
    #[serde(default)]
    pub windows: Option<String>,
    #[serde(default)]
    pub rate: Option<u64>,
    /// Unix seconds, for the status's warning only.
    #[serde(default)]
    pub deadline: Option<i64>,
    /// The central server's signature of [`PushOrder::statement`] (push id, site, versions):
    /// a relay that pinned the central key prestages nothing of an order without a valid one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

impl PushOrder {
    /// What the central server signs of this order for `site` ([`crate::sign`]); the
    /// schedule fields are left out: they change nothing a PC writes.
    pub fn statement<'a>(&'a self, site: &'a str) -> crate::sign::Statement<'a> {
        crate::sign::Statement::Push {
            push: self.id,
            site,
            versions: self
                .versions
                .iter()
                .map(|v| (v.image.as_str(), v.version.as_str()))
                .collect(),
        }
    }
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// The relay protocol the server above speaks ([`PROTOCOL`]; 0: from before the number).
    #[serde(default)]
    pub protocol: u32,
    pub schedule: SiteSchedule,
    /// Open pushes for this site (cancelled ones are left out: the relay drops them).
    pub pushes: Vec<PushOrder>,
    /// Image names assigned to the site: the relay's quota eviction keeps their chunks.
    pub assigned: Vec<String>,
    /// Seconds until the next heartbeat.
    pub interval: u64,
    /// The central server's public key (`ed25519:HEX`), passed on unchanged by relays: a relay
    /// not given `--upstream-key` pins the first one it hears.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The site book, when it changed since the heartbeat's [`Heartbeat::book`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub book: Option<SiteBook>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_round_trips() {
        let hb = Heartbeat {
            protocol: PROTOCOL,
            site: "lycee-nord".into(),
            url: "http://10.99.1.2:8080".into(),
            version: "0.1.0".into(),
            cache_bytes: 5,
            quota_bytes: None,
            complete: vec![VersionRef {
                image: "win11".into(),
                version: "ab".repeat(32),
            }],
            woken: vec![],
            pushes: vec![PushProgress {
                push: 3,
                state: PushState::Running,
                bytes_done: 1,
                bytes_total: 2,
                fetched: 1,
                rate: 9,
                detail: None,
            }],
            book: Some(7),
        };
        let j = serde_json::to_string(&hb).unwrap();
        assert!(j.contains(r#""state":"running""#), "{j}");
        assert_eq!(serde_json::from_str::<Heartbeat>(&j).unwrap(), hb);
        for s in ["waiting", "running", "paused", "done", "failed"] {
            assert_eq!(PushState::parse(s).unwrap().as_str(), s);
        }
    }
}

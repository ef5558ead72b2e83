//! Staff-side task rules, shared by the CLI (`bootcast task ...`) and the API
//! (`/api/v1/tasks`): who a task is for (a host or every host of a group), what image it is
//! about (a reimage's version is resolved now, so a later `image add` does not change a queued
//! task), when it may start (`--at`), and one open task per host unless replaced.

use std::path::Path;

use rusqlite::Connection;
use serde::Deserialize;

use crate::db::{groups, hosts, tasks, DbError, Task, TaskKind, TaskState};
use crate::mac::{BadMac, Mac};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("name the target: either one host (--host MAC, API \"host\") or a group (--group NAME, API \"group\"), not both")]
    Target,
    #[error(transparent)]
    BadMac(#[from] BadMac),
    #[error("no host {0} is known: network-boot it through bootcast once (it registers itself), then retry; `bootcast host list` shows the known hosts")]
    UnknownHost(Mac),
    #[error("no group {0:?}: create it with `bootcast group add {0} MAC...`; `bootcast group list` shows the groups")]
    UnknownGroup(String),
    #[error("invalid group name {0:?}: use 1-64 characters from A-Z a-z 0-9 . _ - , not starting with '.' or '-'")]
    BadGroupName(String),
    #[error("group {0} has no hosts: add some with `bootcast group add {0} MAC...`")]
    EmptyGroup(String),
    #[error("cannot use image {spec:?} for this task: {cause}")]
    Image { spec: String, cause: StoreError },
    #[error("a capture makes a new version of an image: give the image NAME without @VERSION (not {0:?})")]
    CaptureVersion(String),
    #[error("{0} tasks are created by the server itself; ask for a reimage or a capture")]
    Kind(&'static str),
    #[error("{0}")]
    BadTime(String),
    #[error("--at {0} is in the past; leave --at out to start at the host's next network boot")]
    Past(String),
    #[error("host {mac} already has open task {id} ({kind}, {state}); cancel it with `bootcast task cancel {id}` or replace it (--replace, API \"replace\": true)")]
    Busy {
        mac: Mac,
        id: i64,
        kind: &'static str,
        state: &'static str,
    },
    #[error("no task {0}; `bootcast task list --all` shows every task")]
    NoTask(i64),
    #[error(
        "task {id} is already {state}; only pending, booting or running tasks can be cancelled"
    )]
    Closed { id: i64, state: &'static str },
    #[error("multicast is for reimage tasks (a capture reads one disk; an inventory boot moves no image)")]
    MulticastCapture,
    #[error("multicast: {0}")]
    BadMulticast(String),
    #[error("bulk action {0:?}: say reimage, capture, inventory, wake or cancel")]
    BulkAction(String),
    #[error("no host selected (API \"hosts\": [MAC, ...]; command line: --host MAC, --group NAME or --site NAME)")]
    NoSelection,
    #[error("this {action} acts on {n} hosts of {} site(s) ({}): send it again with \"confirm\": {n} (command line: --confirm {n})", sites.len(), sites.join(", "))]
    Unconfirmed {
        action: String,
        n: usize,
        sites: Vec<String>,
    },
    #[error(transparent)]
    Db(#[from] DbError),
}

impl ScheduleError {
    /// The HTTP status this error answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            ScheduleError::UnknownHost(_)
            | ScheduleError::UnknownGroup(_)
            | ScheduleError::NoTask(_) => 404,
            ScheduleError::Image {
                cause:
                    StoreError::UnknownImage(_)
                    | StoreError::UnknownVersion { .. }
                    | StoreError::NoStore(_),
                ..
            } => 404,
            ScheduleError::Busy { .. }
            | ScheduleError::Closed { .. }
            | ScheduleError::Unconfirmed { .. } => 409,
            ScheduleError::Db(_) => 500,
            ScheduleError::Image {
                cause: StoreError::BadName(_) | StoreError::AmbiguousVersion { .. },
                ..
            } => 400,
            ScheduleError::Image { .. } => 500,
            _ => 400,
        }
    }
}

/// A request for new tasks (the body of `POST /api/v1/tasks`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskRequest {
    pub kind: TaskKind,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    /// `NAME[@VERSION]` for a reimage, `NAME` for a capture; none for an inventory boot.
    #[serde(default)]
    pub image: String,
    /// `HH:MM` (the server's local time) or RFC 3339; see [`crate::time::parse_at`].
    #[serde(default)]
    pub at: Option<String>,
    /// Cancel the host's open task instead of refusing.
    #[serde(default)]
    pub replace: bool,
    /// Reimage by room multicast: one session for every task created.
    #[serde(default)]
    pub multicast: Option<MulticastRequest>,
    /// Wake the hosts (Wake-on-LAN) when the task may start, in waves ([`WakeRequest`]).
    #[serde(default)]
    pub wake: Option<WakeRequest>,
    /// What the machines do once the task is over (default: the group's setting, else reboot).
    #[serde(default)]
    pub then: Option<crate::proto::agent::After>,
}

/// Waking hosts by Wake-on-LAN (API `"wake": {...}`, CLI `--wake`): waves of `wave` hosts,
/// `spacing` seconds apart.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WakeRequest {
    #[serde(default = "default_wave")]
    pub wave: u32,
    #[serde(default = "default_spacing")]
    pub spacing: u32,
}

impl Default for WakeRequest {
    fn default() -> Self {
        WakeRequest {
            wave: default_wave(),
            spacing: default_spacing(),
        }
    }
}

/// Hosts woken at once, by default.
pub const WAKE_WAVE: u32 = 20;
/// Seconds between waves, by default.
pub const WAKE_SPACING: u32 = 10;

fn default_wave() -> u32 {
    WAKE_WAVE
}

fn default_spacing() -> u32 {
    WAKE_SPACING
}

impl WakeRequest {
    fn check(&self) -> Result<(), ScheduleError> {
        if self.wave == 0 {
            return Err(ScheduleError::BadTime("--wave must be at least 1".into()));
        }
        Ok(())
    }
}

/// A request's `at`, read in the server's zone ([`crate::time::parse_at`]); a time already
/// past is refused.
fn start_time(at: Option<&str>, now: i64) -> Result<Option<i64>, ScheduleError> {
    let Some(at) = at else {
        return Ok(None);
    };
    let t = crate::time::parse_at(at, now, &crate::time::Zone::local())
        .map_err(ScheduleError::BadTime)?;
    if t < now {
        return Err(ScheduleError::Past(at.to_string()));
    }
    Ok(Some(t))
}

/// Queues Wake-on-LAN orders for the hosts `hosts` or `group` names (every one known), from
/// `at` (default: now) in waves; the node serving each host's segment sends them
/// ([`crate::db::wakes`]).
pub fn wake(
    conn: &mut Connection,
    hosts: &[String],
    group: Option<&str>,
    at: Option<&str>,
    how: &WakeRequest,
    now: i64,
) -> Result<Vec<crate::db::wakes::Wake>, ScheduleError> {
    how.check()?;
    let start = start_time(at, now)?.unwrap_or(now);
    let mut macs = Vec::new();
    match (hosts, group) {
        ([], Some(g)) => macs.extend(targets(conn, None, Some(g))?),
        (hosts, None) if !hosts.is_empty() => {
            for h in hosts {
                macs.extend(targets(conn, Some(h), None)?);
            }
        }
        _ => return Err(ScheduleError::Target),
    }
    let hosts: Vec<(String, Option<i64>)> = macs.iter().map(|m| (m.to_string(), None)).collect();
    Ok(crate::db::wakes::queue(
        conn,
        &hosts,
        start,
        how.wave,
        how.spacing,
        now,
    )?)
}

/// How a room multicast session runs (API `"multicast": {...}`, CLI `--multicast`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MulticastRequest {
    /// Start when this many receivers joined; default: every host the request names.
    #[serde(default)]
    pub min_receivers: Option<u32>,
    /// ...or this many seconds after the first agent's hello, whichever comes first.
    #[serde(default)]
    pub wait_secs: Option<u32>,
    /// Most the sender sends, e.g. `500Mbit` (the default).
    #[serde(default)]
    pub max_rate: Option<String>,
}

/// Default wait for the room before a session starts anyway.
pub const MULTICAST_WAIT_SECS: u32 = 120;
/// Default sending rate of a session.
pub const MULTICAST_MAX_RATE: &str = "500Mbit";

/// The hosts `host` or `group` names (exactly one of them), every one known.
pub fn targets(
    conn: &Connection,
    host: Option<&str>,
    group: Option<&str>,
) -> Result<Vec<Mac>, ScheduleError> {
    match (host, group) {
        (Some(h), None) => {
            let mac: Mac = h.parse()?;
            if hosts::get(conn, mac)?.is_none() {
                return Err(ScheduleError::UnknownHost(mac));
            }
            Ok(vec![mac])
        }
        (None, Some(g)) => {
            if !groups::valid_name(g) {
                return Err(ScheduleError::BadGroupName(g.to_string()));
            }
            if !groups::exists(conn, g)? {
                return Err(ScheduleError::UnknownGroup(g.to_string()));
            }
            let macs = groups::members(conn, g)?;
            if macs.is_empty() {
                return Err(ScheduleError::EmptyGroup(g.to_string()));
            }
            Ok(macs)
        }
        _ => Err(ScheduleError::Target),
    }
}

/// Creates one task per target host, all or none. `data` is the data directory (image store).
pub fn create(
    conn: &mut Connection,
    data: &Path,
    req: &TaskRequest,
    now: i64,
) -> Result<Vec<Task>, ScheduleError> {
    let image_err = |cause| ScheduleError::Image {
        spec: req.image.clone(),
        cause,
    };
    let (image, version) = match req.kind {
        TaskKind::Register => return Err(ScheduleError::Kind("register")),
        TaskKind::Inventory => (String::new(), None),
        TaskKind::Reimage => {
            let v = Store::open(data)
                .and_then(|s| s.resolve(&req.image))
                .map_err(image_err)?;
            (v.name, Some(v.id.to_string()))
        }
        TaskKind::Capture => {
            if req.image.contains('@') {
                return Err(ScheduleError::CaptureVersion(req.image.clone()));
            }
            crate::store::catalog::validate_name(&req.image).map_err(image_err)?;
            (req.image.clone(), None)
        }
    };
    let not_before = start_time(req.at.as_deref(), now)?;
    let tx = conn.savepoint().map_err(|cause| DbError::Query {
        what: "begin",
        cause,
    })?;
    let macs = targets(&tx, req.host.as_deref(), req.group.as_deref())?;
    let session = match (&req.multicast, req.kind, &version) {
        (None, ..) => None,
        (Some(_), TaskKind::Capture | TaskKind::Inventory, _) => {
            return Err(ScheduleError::MulticastCapture)
        }
        (Some(m), _, version) => {
            let max_rate =
                crate::rate::parse_rate(m.max_rate.as_deref().unwrap_or(MULTICAST_MAX_RATE))
                    .map_err(ScheduleError::BadMulticast)?;
            let receivers = m.min_receivers.unwrap_or(macs.len() as u32);
            if receivers == 0 {
                return Err(ScheduleError::BadMulticast(
                    "--min-receivers must be at least 1".into(),
                ));
            }
            Some(
                crate::db::sessions::create(
                    &tx,
                    &crate::db::sessions::NewSession {
                        image: &image,
                        version: version.as_deref().unwrap_or_default(),
                        group: req.group.as_deref(),
                        receivers,
                        wait_secs: m.wait_secs.unwrap_or(MULTICAST_WAIT_SECS),
                        max_rate,
                    },
                    now,
                )?
                .id,
            )
        }
    };
    if let Some(w) = &req.wake {
        w.check()?;
    }
    let mut created = Vec::with_capacity(macs.len());
    for mac in macs {
        if let Some(open) = tasks::open_for(&tx, mac)? {
            if !req.replace {
                return Err(ScheduleError::Busy {
                    mac,
                    id: open.id,
                    kind: open.kind.as_str(),
                    state: open.state.as_str(),
                });
            }
            for t in tasks::list(&tx, Some(mac), false)? {
                tasks::set_state(
                    &tx,
                    mac,
                    t.id,
                    TaskState::Cancelled,
                    Some("replaced by a newer task"),
                    now,
                )?;
            }
        }
        created.push(tasks::create_with(
            &tx,
            mac,
            req.kind,
            &tasks::NewTask {
                image: (!image.is_empty()).then_some(image.as_str()),
                version: version.as_deref(),
                group: req.group.as_deref(),
                not_before,
                multicast: session,
                then: req.then.map(|t| t.as_str()),
            },
            now,
        )?);
    }
    if let Some(w) = &req.wake {
        // each order names its task
        let hosts: Vec<(String, Option<i64>)> = created
            .iter()
            .map(|t| (t.mac.to_string(), Some(t.id)))
            .collect();
        let start = not_before.unwrap_or(now);
        crate::db::wakes::queue(&tx, &hosts, start, w.wave, w.spacing, now)?;
    }
    tx.commit().map_err(|cause| DbError::Query {
        what: "commit",
        cause,
    })?;
    Ok(created)
}

/// What `task cancel` names.
#[derive(Debug, Clone)]
pub enum CancelTarget {
    Id(i64),
    Host(Mac),
    Group(String),
}

/// Cancels the task named, or every open task of a host or of a group's hosts. Returns the
/// tasks cancelled (empty when a host or group had none open).
pub fn cancel(
    conn: &mut Connection,
    target: &CancelTarget,
    now: i64,
) -> Result<Vec<Task>, ScheduleError> {
    let tx = conn.savepoint().map_err(|cause| DbError::Query {
        what: "begin",
        cause,
    })?;
    let open: Vec<Task> = match target {
        CancelTarget::Id(id) => {
            let t = tasks::get(&tx, *id)?.ok_or(ScheduleError::NoTask(*id))?;
            if !t.state.is_open() {
                return Err(ScheduleError::Closed {
                    id: t.id,
                    state: t.state.as_str(),
                });
            }
            vec![t]
        }
        CancelTarget::Host(mac) => {
            let macs = targets(&tx, Some(&mac.to_string()), None)?;
            tasks::list(&tx, Some(macs[0]), false)?
        }
        CancelTarget::Group(g) => {
            let mut all = Vec::new();
            for mac in targets(&tx, None, Some(g))? {
                all.extend(tasks::list(&tx, Some(mac), false)?);
            }
            all
        }
    };
    let mut done = Vec::new();
    for t in open {
        if let Some(t) = tasks::set_state(
            &tx,
            t.mac,
            t.id,
            TaskState::Cancelled,
            Some("cancelled by staff"),
            now,
        )? {
            done.push(t);
        }
    }
    tx.commit().map_err(|cause| DbError::Query {
        what: "commit",
        cause,
    })?;
    Ok(done)
}

/// Most hosts a bulk action takes without `confirm` (a room is 4-20 machines).
pub const BULK_CONFIRM_OVER: usize = 25;

/// One action on a selection of hosts (the body of `POST /api/v1/bulk`, and `bootcast bulk`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bulk {
    /// `reimage`, `capture`, `inventory`, `wake` or `cancel`.
    pub action: String,
    pub hosts: Vec<String>,
    /// Reimage: `NAME[@VERSION]`; capture: `NAME`.
    #[serde(default)]
    pub image: String,
    /// When the tasks may start (`HH:MM` or RFC 3339); default now.
    #[serde(default)]
    pub at: Option<String>,
    /// Wake the hosts when their tasks may start.
    #[serde(default)]
    pub wake: bool,
    /// The number of hosts, repeated: required when the selection is larger than
    /// [`BULK_CONFIRM_OVER`] or spans several sites.
    #[serde(default)]
    pub confirm: Option<usize>,
}

impl Bulk {
    /// The hosts selected, each once, in the order given.
    pub fn macs(&self) -> Result<Vec<Mac>, ScheduleError> {
        if self.hosts.is_empty() {
            return Err(ScheduleError::NoSelection);
        }
        let mut macs: Vec<Mac> = Vec::with_capacity(self.hosts.len());
        for h in &self.hosts {
            let m: Mac = h.parse()?;
            if !macs.contains(&m) {
                macs.push(m);
            }
        }
        Ok(macs)
    }
}

/// What a bulk action did, host by host.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct BulkOutcome {
    /// `{"mac", "tasks"|"wakes"|"cancelled"}` per host done.
    pub done: Vec<serde_json::Value>,
    /// `{"mac", "error"}` per host refused.
    pub failed: Vec<serde_json::Value>,
}

/// Runs `req` host by host (a host's refusal does not stop the others). A selection of more
/// than [`BULK_CONFIRM_OVER`] hosts, or of several sites, is refused
/// ([`ScheduleError::Unconfirmed`]) unless `req.confirm` names its count. Scope checks are the
/// caller's.
pub fn bulk(
    conn: &mut Connection,
    data: &Path,
    req: &Bulk,
    now: i64,
) -> Result<BulkOutcome, ScheduleError> {
    let kind = match req.action.as_str() {
        "reimage" => Some(TaskKind::Reimage),
        "capture" => Some(TaskKind::Capture),
        "inventory" => Some(TaskKind::Inventory),
        "wake" | "cancel" => None,
        a => return Err(ScheduleError::BulkAction(a.to_string())),
    };
    let macs = req.macs()?;
    let mut sites: Vec<String> = Vec::new();
    for m in &macs {
        let site = hosts::get(conn, *m)?
            .and_then(|h| h.site)
            .unwrap_or_else(|| "(no site)".into());
        if !sites.contains(&site) {
            sites.push(site);
        }
    }
    let n = macs.len();
    if (n > BULK_CONFIRM_OVER || sites.len() > 1) && req.confirm != Some(n) {
        return Err(ScheduleError::Unconfirmed {
            action: req.action.clone(),
            n,
            sites,
        });
    }
    let mut out = BulkOutcome::default();
    for m in &macs {
        let mac = m.to_string();
        let outcome: Result<serde_json::Value, ScheduleError> = match kind {
            Some(kind) => create(
                conn,
                data,
                &TaskRequest {
                    kind,
                    host: Some(mac.clone()),
                    group: None,
                    image: req.image.clone(),
                    at: req.at.clone(),
                    replace: false,
                    multicast: None,
                    wake: req.wake.then(Default::default),
                    then: None,
                },
                now,
            )
            .map(|t| serde_json::json!({ "mac": mac, "tasks": t })),
            None if req.action == "wake" => wake(
                conn,
                std::slice::from_ref(&mac),
                None,
                req.at.as_deref(),
                &Default::default(),
                now,
            )
            .map(|w| serde_json::json!({ "mac": mac, "wakes": w })),
            None => cancel(conn, &CancelTarget::Host(*m), now)
                .map(|t| serde_json::json!({ "mac": mac, "cancelled": t })),
        };
        match outcome {
            Ok(v) => out.done.push(v),
            Err(ScheduleError::Db(e)) => return Err(e.into()),
            Err(e) => out
                .failed
                .push(serde_json::json!({ "mac": mac, "error": e.to_string() })),
        }
    }
    Ok(out)
}

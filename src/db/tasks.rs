//! Tasks: what a host does on its next network boot (reimage, capture, ...).
//!
//! A task belongs to one host (MAC). States: `pending` (waiting for the host to boot),
//! `booting` (its boot script carried the task), `running` (the agent reports progress),
//! `done`, `failed` (with the reason in `detail`), `cancelled`. A task may wait for a time
//! (`not_before`): [`due_for`] is what the boot script hands out. A reimage's image version is
//! pinned when the task is created; a capture records the version it made when it is done
//! ([`finish_capture`]). The agent endpoints only ever touch the task of the MAC
//! that asks. The staff rules (one open task per host, groups) are in `crate::schedule`.

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;

use super::{DbError, QueryContext};
use crate::mac::Mac;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    /// Boot the bootcast environment and report (the first issue's only task).
    Register,
    Reimage,
    Capture,
    /// Boot the bootcast environment so that the agent reports the machine's inventory; done
    /// at its hello (calendar rules of kind `inventory`).
    Inventory,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    Pending,
    Booting,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl TaskKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Register => "register",
            TaskKind::Reimage => "reimage",
            TaskKind::Capture => "capture",
            TaskKind::Inventory => "inventory",
        }
    }

    fn parse(s: &str) -> Option<TaskKind> {
        [
            TaskKind::Register,
            TaskKind::Reimage,
            TaskKind::Capture,
            TaskKind::Inventory,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

impl TaskState {
    pub const ALL: [TaskState; 6] = [
        TaskState::Pending,
        TaskState::Booting,
        TaskState::Running,
        TaskState::Done,
        TaskState::Failed,
        TaskState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Booting => "booting",
            TaskState::Running => "running",
            TaskState::Done => "done",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<TaskState> {
        TaskState::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Still to be carried out.
    pub fn is_open(self) -> bool {
        matches!(
            self,
            TaskState::Pending | TaskState::Booting | TaskState::Running
        )
    }
}

/// The agent's last progress report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Progress {
    pub bytes_done: i64,
    pub bytes_total: i64,
    /// `bytes_done / bytes_total` in whole percent (0 when the total is 0).
    pub percent: i64,
    /// Bytes per second, as the agent measured it.
    pub rate: i64,
    /// Seconds left, as the agent estimated it.
    pub eta: Option<i64>,
    #[serde(serialize_with = "crate::time::serialize_rfc3339")]
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Task {
    pub id: i64,
    pub mac: Mac,
    pub kind: TaskKind,
    pub state: TaskState,
    #[serde(serialize_with = "crate::time::serialize_rfc3339")]
    pub created_at: i64,
    #[serde(serialize_with = "crate::time::serialize_rfc3339")]
    pub updated_at: i64,
    /// Why it failed or was cancelled (or what the boot environment said).
    pub detail: Option<String>,
    /// The image to write (reimage) or to create a version of (capture).
    pub image: Option<String>,
    /// Reimage: the version id, resolved when the task was created. Capture: the version id
    /// it made, once done.
    pub version: Option<String>,
    /// The group the task was created for, if any.
    pub group: Option<String>,
    /// Not handed out before this time.
    #[serde(serialize_with = "crate::time::serialize_opt_rfc3339")]
    pub not_before: Option<i64>,
    pub progress: Option<Progress>,
    /// Reimage by room multicast: the session ([`super::sessions`]) it belongs to.
    pub multicast: Option<i64>,
    /// What the machine does once the task is over, as set on the task (`--then`).
    pub then: Option<String>,
}

const COLUMNS: &str = "id, mac, kind, state, created_at, updated_at, detail, image, version, grp, \
    not_before, bytes_done, bytes_total, rate, eta, progress_at, mcast, after_task";

const OPEN: &str = "state IN ('pending','booting','running')";

fn from_row(r: &Row<'_>) -> rusqlite::Result<Task> {
    let conv = |i: usize, e: String| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into())
    };
    let mac: String = r.get(1)?;
    let kind: String = r.get(2)?;
    let state: String = r.get(3)?;
    let progress = match (r.get::<_, Option<i64>>(11)?, r.get::<_, Option<i64>>(12)?) {
        (Some(done), Some(total)) => Some(Progress {
            bytes_done: done,
            bytes_total: total,
            percent: if total > 0 {
                (done.saturating_mul(100) / total).min(100)
            } else {
                0
            },
            rate: r.get::<_, Option<i64>>(13)?.unwrap_or(0),
            eta: r.get(14)?,
            updated_at: r.get::<_, Option<i64>>(15)?.unwrap_or(0),
        }),
        _ => None,
    };
    Ok(Task {
        id: r.get(0)?,
        mac: mac
            .parse()
            .map_err(|e: crate::mac::BadMac| conv(1, e.to_string()))?,
        kind: TaskKind::parse(&kind).ok_or_else(|| conv(2, format!("unknown task kind {kind}")))?,
        state: TaskState::parse(&state)
            .ok_or_else(|| conv(3, format!("unknown task state {state}")))?,
        created_at: r.get(4)?,
        updated_at: r.get(5)?,
        detail: r.get(6)?,
        image: r.get(7)?,
        version: r.get(8)?,
        group: r.get(9)?,
        not_before: r.get(10)?,
        progress,
        multicast: r.get(16)?,
        then: r.get(17)?,
    })
}

/// What a new task is about (all optional: a register task has none of it).
#[derive(Debug, Clone, Default)]
pub struct NewTask<'a> {
    pub image: Option<&'a str>,
    pub version: Option<&'a str>,
    pub group: Option<&'a str>,
    pub not_before: Option<i64>,
    pub multicast: Option<i64>,
    /// `reboot`, `poweroff` or `stay` ([`crate::proto::agent::After`]).
    pub then: Option<&'a str>,
}

/// Creates a pending task for a known host.
pub fn create(conn: &Connection, mac: Mac, kind: TaskKind, now: i64) -> Result<Task, DbError> {
    create_with(conn, mac, kind, &NewTask::default(), now)
}

/// Creates a pending task for a known host, with what it is about.
pub fn create_with(
    conn: &Connection,
    mac: Mac,
    kind: TaskKind,
    new: &NewTask<'_>,
    now: i64,
) -> Result<Task, DbError> {
    conn.execute(
        "INSERT INTO tasks (mac, kind, state, created_at, updated_at, image, version, grp, not_before, mcast, after_task)
         VALUES (?1, ?2, 'pending', ?3, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            mac.to_string(),
            kind.as_str(),
            now,
            new.image,
            new.version,
            new.group,
            new.not_before,
            new.multicast,
            new.then
        ],
    )
    .what("create task")?;
    let id = conn.last_insert_rowid();
    get(conn, id)?.ok_or(DbError::Query {
        what: "read new task",
        cause: rusqlite::Error::QueryReturnedNoRows,
    })
}

pub fn get(conn: &Connection, id: i64) -> Result<Option<Task>, DbError> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM tasks WHERE id = ?1"),
        [id],
        from_row,
    )
    .optional()
    .what("get task")
}

/// The oldest open task of `mac`, if any.
pub fn open_for(conn: &Connection, mac: Mac) -> Result<Option<Task>, DbError> {
    conn.query_row(
        &format!(
            "SELECT {COLUMNS} FROM tasks WHERE mac = ?1 AND state IN ('pending','booting','running')
             ORDER BY id LIMIT 1"
        ),
        [mac.to_string()],
        from_row,
    )
    .optional()
    .what("open task")
}

/// The oldest open task of `mac` that may be handed out at `now` (its `not_before` passed).
pub fn due_for(conn: &Connection, mac: Mac, now: i64) -> Result<Option<Task>, DbError> {
    conn.query_row(
        &format!(
            "SELECT {COLUMNS} FROM tasks WHERE mac = ?1 AND {OPEN}
             AND (not_before IS NULL OR not_before <= ?2) ORDER BY id LIMIT 1"
        ),
        params![mac.to_string(), now],
        from_row,
    )
    .optional()
    .what("due task")
}

/// Tasks, newest first: only open ones unless `all`, only `mac`'s when given.
pub fn list(conn: &Connection, mac: Option<Mac>, all: bool) -> Result<Vec<Task>, DbError> {
    let open = if all { "1" } else { OPEN };
    let mut st = conn
        .prepare(&format!(
            "SELECT {COLUMNS} FROM tasks WHERE {open} AND (?1 IS NULL OR mac = ?1)
             ORDER BY id DESC"
        ))
        .what("list tasks")?;
    let rows = st
        .query_map([mac.map(|m| m.to_string())], from_row)
        .what("list tasks")?;
    rows.collect::<Result<_, _>>().what("list tasks")
}

/// Which tasks a staff listing shows ([`page`]).
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub mac: Option<Mac>,
    /// Tasks made for this group, or of its hosts.
    pub group: Option<String>,
    /// Tasks of hosts of this site.
    pub site: Option<String>,
    /// One state (`pending`, `running`, `failed`...); `None`: the open ones unless `all`.
    pub state: Option<String>,
    pub all: bool,
    /// The caller's sites (an operator): tasks of their hosts only.
    pub scope: Option<Vec<String>>,
    /// Older than this task id (the previous page's `next`).
    pub before: Option<i64>,
    pub limit: u32,
}

/// A page of tasks, newest first, how many match in all, and whether a page follows.
pub fn page(conn: &Connection, f: &TaskFilter) -> Result<(Vec<Task>, u64, bool), DbError> {
    let state = match (&f.state, f.all) {
        (Some(_), _) => "t.state = ?3".to_string(),
        (None, true) => "1".to_string(),
        (None, false) => OPEN.replace("state", "t.state"),
    };
    let scope = f
        .scope
        .as_ref()
        .map(|s| serde_json::to_string(s).expect("names serialise"));
    let filter = format!(
        "{state} AND (?1 IS NULL OR t.mac = ?1) AND (?2 IS NULL OR t.grp = ?2 OR t.mac IN (SELECT mac FROM group_members WHERE grp = ?2))
         AND (?4 IS NULL OR t.mac IN (SELECT mac FROM hosts WHERE site = ?4))
         AND (?5 IS NULL OR t.mac IN (SELECT mac FROM hosts
              WHERE site IN (SELECT value FROM json_each(?5))))"
    );
    let mac = f.mac.map(|m| m.to_string());
    let args = params![mac, f.group, f.state, f.site, scope];
    let total: i64 = conn
        .query_row(
            &format!("SELECT count(*) FROM tasks t WHERE {filter}"),
            args,
            |r| r.get(0),
        )
        .what("count tasks")?;
    let columns = COLUMNS
        .split(',')
        .map(|c| format!("t.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ");
    let mut st = conn
        .prepare(&format!(
            "SELECT {columns} FROM tasks t WHERE {filter} AND (?6 IS NULL OR t.id < ?6)
             ORDER BY t.id DESC LIMIT ?7"
        ))
        .what("page tasks")?;
    let rows = st
        .query_map(
            params![mac, f.group, f.state, f.site, scope, f.before, f.limit + 1],
            from_row,
        )
        .what("page tasks")?;
    let mut tasks: Vec<Task> = rows.collect::<Result<_, _>>().what("page tasks")?;
    let more = tasks.len() > f.limit as usize;
    tasks.truncate(f.limit as usize);
    Ok((tasks, total as u64, more))
}

/// Records the agent's progress on `mac`'s open task `id` and moves it to `running`.
/// Returns the task as updated, or `None` when `mac` has no such open task.
pub fn record_progress(
    conn: &Connection,
    mac: Mac,
    id: i64,
    p: &Progress,
) -> Result<Option<Task>, DbError> {
    let n = conn
        .execute(
            &format!(
                "UPDATE tasks SET state = 'running', bytes_done = ?3, bytes_total = ?4, rate = ?5,
                 eta = ?6, progress_at = ?7, updated_at = ?7
                 WHERE id = ?1 AND mac = ?2 AND {OPEN}"
            ),
            params![
                id,
                mac.to_string(),
                p.bytes_done,
                p.bytes_total,
                p.rate,
                p.eta,
                p.updated_at
            ],
        )
        .what("record progress")?;
    if n == 0 {
        return Ok(None);
    }
    get(conn, id)
}

/// Moves task `id` of host `mac` to `state`; a task of another host is never touched.
/// Returns the task as updated, or `None` when `mac` has no such open task.
pub fn set_state(
    conn: &Connection,
    mac: Mac,
    id: i64,
    state: TaskState,
    detail: Option<&str>,
    now: i64,
) -> Result<Option<Task>, DbError> {
    let n = conn
        .execute(
            "UPDATE tasks SET state = ?3, detail = coalesce(?4, detail), updated_at = ?5
             WHERE id = ?1 AND mac = ?2 AND state IN ('pending','booting','running')",
            params![id, mac.to_string(), state.as_str(), detail, now],
        )
        .what("update task")?;
    if n == 0 {
        return Ok(None);
    }
    get(conn, id)
}

/// Closes `mac`'s open capture task `id` as done, recording the version it made. Returns the
/// task as updated, or `None` when `mac` has no such open capture task.
pub fn finish_capture(
    conn: &Connection,
    mac: Mac,
    id: i64,
    version: &str,
    now: i64,
) -> Result<Option<Task>, DbError> {
    let n = conn
        .execute(
            &format!(
                "UPDATE tasks SET state = 'done', version = ?3, updated_at = ?4
                 WHERE id = ?1 AND mac = ?2 AND kind = 'capture' AND {OPEN}"
            ),
            params![id, mac.to_string(), version, now],
        )
        .what("finish capture")?;
    if n == 0 {
        return Ok(None);
    }
    get(conn, id)
}

/// SQL over a task `t`: what its machine does once it is over: the task's `--then`, else that of
/// the group it was made for, else NULL (reboot). The hello ([`then_of`]) and the site book
/// read it alike.
pub const THEN_SQL: &str =
    "COALESCE(t.after_task, (SELECT g.after_task FROM groups g WHERE g.name = t.grp))";

/// [`THEN_SQL`] of task `t`.
pub fn then_of(conn: &Connection, t: &Task) -> Result<Option<crate::proto::agent::After>, DbError> {
    let set: Option<String> = conn
        .query_row(
            &format!("SELECT {THEN_SQL} FROM tasks t WHERE t.id = ?1"),
            [t.id],
            |r| r.get(0),
        )
        .optional()
        .what("task then")?
        .flatten();
    Ok(set.as_deref().and_then(crate::proto::agent::After::parse))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{hosts, Db};

    #[test]
    fn a_host_only_moves_its_own_tasks() {
        let db = Db::open_in_memory().unwrap();
        let mut c = db.lock();
        let a: Mac = "52:54:00:00:00:0a".parse().unwrap();
        let b: Mac = "52:54:00:00:00:0b".parse().unwrap();
        for m in [a, b] {
            hosts::record_script_boot(&mut c, m, &Default::default(), 1).unwrap();
        }
        let ta = create(&c, a, TaskKind::Reimage, 5).unwrap();
        assert_eq!(ta.state, TaskState::Pending);
        assert_eq!(open_for(&c, a).unwrap().unwrap().id, ta.id);
        assert!(open_for(&c, b).unwrap().is_none());
        // b cannot touch a's task
        assert!(set_state(&c, b, ta.id, TaskState::Done, None, 6)
            .unwrap()
            .is_none());
        assert_eq!(get(&c, ta.id).unwrap().unwrap().state, TaskState::Pending);
        let t = set_state(&c, a, ta.id, TaskState::Failed, Some("disk too small"), 7)
            .unwrap()
            .unwrap();
        assert_eq!(
            (t.state, t.detail.as_deref()),
            (TaskState::Failed, Some("disk too small"))
        );
        // closed tasks stay closed
        assert!(set_state(&c, a, ta.id, TaskState::Running, None, 8)
            .unwrap()
            .is_none());
        assert!(open_for(&c, a).unwrap().is_none());
    }

    #[test]
    fn due_list_and_progress() {
        let db = Db::open_in_memory().unwrap();
        let mut c = db.lock();
        let a: Mac = "52:54:00:00:00:0a".parse().unwrap();
        let b: Mac = "52:54:00:00:00:0b".parse().unwrap();
        for m in [a, b] {
            hosts::record_script_boot(&mut c, m, &Default::default(), 1).unwrap();
        }
        let later = create_with(
            &c,
            a,
            TaskKind::Reimage,
            &NewTask {
                image: Some("win11"),
                version: Some("abcd"),
                group: Some("room-1"),
                not_before: Some(100),
                multicast: None,
                then: None,
            },
            10,
        )
        .unwrap();
        assert_eq!(
            (
                later.image.as_deref(),
                later.version.as_deref(),
                later.group.as_deref()
            ),
            (Some("win11"), Some("abcd"), Some("room-1"))
        );
        // not handed out before its time, but open
        assert!(due_for(&c, a, 99).unwrap().is_none());
        assert_eq!(due_for(&c, a, 100).unwrap().unwrap().id, later.id);
        assert_eq!(open_for(&c, a).unwrap().unwrap().id, later.id);
        let tb = create(&c, b, TaskKind::Capture, 11).unwrap();
        assert_eq!(due_for(&c, b, 0).unwrap().unwrap().id, tb.id);
        // only the host's own open capture task records a version
        assert!(finish_capture(&c, a, tb.id, "v", 12).unwrap().is_none());
        assert!(finish_capture(&c, a, later.id, "v", 12).unwrap().is_none());
        // newest first; by host; closed ones only with `all`
        let ids = |v: Vec<Task>| v.into_iter().map(|t| t.id).collect::<Vec<_>>();
        assert_eq!(ids(list(&c, None, false).unwrap()), [tb.id, later.id]);
        assert_eq!(ids(list(&c, Some(a), false).unwrap()), [later.id]);
        let p = Progress {
            bytes_done: 250,
            bytes_total: 1000,
            percent: 0,
            rate: 50,
            eta: Some(15),
            updated_at: 20,
        };
        // another host's progress touches nothing
        assert!(record_progress(&c, b, later.id, &p).unwrap().is_none());
        let t = record_progress(&c, a, later.id, &p).unwrap().unwrap();
        assert_eq!(t.state, TaskState::Running);
        let got = t.progress.unwrap();
        assert_eq!(
            (got.percent, got.rate, got.eta, got.updated_at),
            (25, 50, Some(15), 20)
        );
        set_state(&c, a, later.id, TaskState::Done, None, 30).unwrap();
        assert!(record_progress(&c, a, later.id, &p).unwrap().is_none());
        assert_eq!(ids(list(&c, None, false).unwrap()), [tb.id]);
        assert_eq!(ids(list(&c, Some(a), true).unwrap()), [later.id]);
        let j = serde_json::to_value(get(&c, later.id).unwrap().unwrap()).unwrap();
        assert_eq!(j["state"], "done");
        assert_eq!(j["not_before"], "1970-01-01T00:01:40Z");
        assert_eq!(j["progress"]["percent"], 25);
        let t = finish_capture(&c, b, tb.id, "abcd", 40).unwrap().unwrap();
        assert_eq!(
            (t.state, t.version.as_deref()),
            (TaskState::Done, Some("abcd"))
        );
        assert!(finish_capture(&c, b, tb.id, "ef01", 41).unwrap().is_none());
    }
}

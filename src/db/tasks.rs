//! Tasks: what a host does on its next network boot (reimage, capture, ...).
//!
//! A task belongs to one host (MAC). States: `pending` (waiting for the host to boot),
//! `booting` (its boot script carried the task), `running`, `done`, `failed`, `cancelled`.
//! The agent endpoints only ever touch the task of the MAC that asks.

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;

use super::{DbError, QueryContext};
use crate::mac::Mac;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    /// Boot the bootcast environment and report (the first issue's only task).
    Register,
    Reimage,
    Capture,
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
        }
    }

    fn parse(s: &str) -> Option<TaskKind> {
        [TaskKind::Register, TaskKind::Reimage, TaskKind::Capture]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

impl TaskState {
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

    fn parse(s: &str) -> Option<TaskState> {
        [
            TaskState::Pending,
            TaskState::Booting,
            TaskState::Running,
            TaskState::Done,
            TaskState::Failed,
            TaskState::Cancelled,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }

    /// Still to be carried out.
    pub fn is_open(self) -> bool {
        matches!(
            self,
            TaskState::Pending | TaskState::Booting | TaskState::Running
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Task {
    pub id: i64,
    pub mac: Mac,
    pub kind: TaskKind,
    pub state: TaskState,
    pub created_at: i64,
    pub updated_at: i64,
    pub detail: Option<String>,
}

const COLUMNS: &str = "id, mac, kind, state, created_at, updated_at, detail";

fn from_row(r: &Row<'_>) -> rusqlite::Result<Task> {
    let conv = |i: usize, e: String| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into())
    };
    let mac: String = r.get(1)?;
    let kind: String = r.get(2)?;
    let state: String = r.get(3)?;
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
    })
}

/// Creates a pending task for a known host.
pub fn create(conn: &Connection, mac: Mac, kind: TaskKind, now: i64) -> Result<Task, DbError> {
    conn.execute(
        "INSERT INTO tasks (mac, kind, state, created_at, updated_at) VALUES (?1, ?2, 'pending', ?3, ?3)",
        params![mac.to_string(), kind.as_str(), now],
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
}

//! Recurring task rules (`bootcast task rule`, [`crate::calendar`]): what to do to a host or a
//! group at each tick of a cron schedule on a time zone's wall clock, and how the last run went
//! (a failed run stays flagged until staff acknowledge it).

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::{DbError, QueryContext};

/// One rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskRule {
    pub id: i64,
    #[serde(serialize_with = "crate::time::serialize_rfc3339")]
    pub created_at: i64,
    /// `reimage`, `capture` or `wake`.
    pub kind: String,
    pub host: Option<String>,
    pub group: Option<String>,
    /// Reimage: NAME (the newest approved version at each run) or NAME@VERSION; capture: NAME.
    pub image: Option<String>,
    pub multicast: bool,
    /// Wake the hosts (Wake-on-LAN) when the run's tasks are made.
    pub wake: bool,
    /// Cron (minute hour day-of-month month day-of-week) on the wall clock of `tz`.
    pub every: String,
    /// A tzdb name (`Europe/Paris`).
    pub tz: String,
    /// The last run (or the rule's creation): the next run is the first tick after it.
    #[serde(serialize_with = "crate::time::serialize_rfc3339")]
    pub last_run: i64,
    /// What the last run did, or why it failed.
    pub last_outcome: Option<String>,
    /// The last run failed and nobody acknowledged it yet (`bootcast task rule ack ID`).
    pub failed: bool,
    /// What the machines do once the rule's tasks are over (`None`: the group's, else reboot).
    pub then: Option<String>,
    /// The next run was made ahead of its hour: the tick it is for, and what was made.
    #[serde(serialize_with = "crate::time::serialize_opt_rfc3339")]
    pub prepared: Option<i64>,
    pub prepared_outcome: Option<String>,
}

const COLUMNS: &str =
    "id, created_at, kind, host, grp, image, multicast, wake, every, tz, last_run, last_outcome, failed, after_task, prepared, prepared_outcome";

fn row(r: &rusqlite::Row) -> rusqlite::Result<TaskRule> {
    Ok(TaskRule {
        id: r.get(0)?,
        created_at: r.get(1)?,
        kind: r.get(2)?,
        host: r.get(3)?,
        group: r.get(4)?,
        image: r.get(5)?,
        multicast: r.get(6)?,
        wake: r.get(7)?,
        every: r.get(8)?,
        tz: r.get(9)?,
        last_run: r.get(10)?,
        last_outcome: r.get(11)?,
        failed: r.get(12)?,
        then: r.get(13)?,
        prepared: r.get(14)?,
        prepared_outcome: r.get(15)?,
    })
}

/// Stores `r` (its id, outcome and flag are ignored); returns the new id.
pub fn create(conn: &Connection, r: &TaskRule) -> Result<i64, DbError> {
    conn.execute(
        "INSERT INTO task_rules (created_at, kind, host, grp, image, multicast, wake, every, tz, last_run, after_task)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            r.created_at,
            r.kind,
            r.host,
            r.group,
            r.image,
            r.multicast,
            r.wake,
            r.every,
            r.tz,
            r.last_run,
            r.then
        ],
    )
    .what("create task rule")?;
    Ok(conn.last_insert_rowid())
}

pub fn list(conn: &Connection) -> Result<Vec<TaskRule>, DbError> {
    let mut st = conn
        .prepare_cached(&format!("SELECT {COLUMNS} FROM task_rules ORDER BY id"))
        .what("list task rules")?;
    let rows = st.query_map([], row).what("list task rules")?;
    rows.collect::<Result<_, _>>().what("list task rules")
}

pub fn get(conn: &Connection, id: i64) -> Result<Option<TaskRule>, DbError> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM task_rules WHERE id = ?1"),
        [id],
        row,
    )
    .optional()
    .what("get task rule")
}

/// Removes rule `id`; false if there was none.
pub fn remove(conn: &Connection, id: i64) -> Result<bool, DbError> {
    Ok(conn
        .execute("DELETE FROM task_rules WHERE id = ?1", [id])
        .what("remove task rule")?
        == 1)
}

/// Records a run at `at`: what it did, or why it failed (then flagged until acknowledged).
pub fn set_run(
    conn: &Connection,
    id: i64,
    at: i64,
    outcome: &str,
    failed: bool,
) -> Result<(), DbError> {
    conn.execute(
        "UPDATE task_rules SET last_run = ?2, last_outcome = ?3, failed = ?4 WHERE id = ?1",
        params![id, at, outcome, failed],
    )
    .what("record task rule run")?;
    Ok(())
}

/// Records that the run at tick `tick` was made ahead: `outcome` says what was made.
pub fn set_prepared(conn: &Connection, id: i64, tick: i64, outcome: &str) -> Result<(), DbError> {
    conn.execute(
        "UPDATE task_rules SET prepared = ?2, prepared_outcome = ?3 WHERE id = ?1",
        params![id, tick, outcome],
    )
    .what("record task rule preparation")?;
    Ok(())
}

/// Tags `tasks` as made by rule `rule`.
pub fn tag_tasks(conn: &Connection, rule: i64, tasks: &[i64]) -> Result<(), DbError> {
    for t in tasks {
        conn.execute(
            "UPDATE tasks SET rule_id = ?1 WHERE id = ?2",
            params![rule, t],
        )
        .what("tag rule task")?;
    }
    Ok(())
}

/// Moves rule `rule`'s tasks that wait for tick `tick` to `version` (and their multicast
/// session); returns how many tasks changed.
pub fn retarget(conn: &Connection, rule: i64, tick: i64, version: &str) -> Result<usize, DbError> {
    conn.execute(
        "UPDATE mcast_sessions SET version = ?3 WHERE id IN (SELECT mcast FROM tasks
            WHERE rule_id = ?1 AND not_before = ?2 AND state = 'pending')",
        params![rule, tick, version],
    )
    .what("retarget rule session")?;
    conn.execute(
        "UPDATE tasks SET version = ?3 WHERE rule_id = ?1 AND not_before = ?2
            AND state = 'pending' AND version IS NOT ?3",
        params![rule, tick, version],
    )
    .what("retarget rule tasks")
}

/// Staff saw rule `id`'s failed run; false if there is no such rule.
pub fn acknowledge(conn: &Connection, id: i64) -> Result<bool, DbError> {
    Ok(conn
        .execute("UPDATE task_rules SET failed = 0 WHERE id = ?1", [id])
        .what("acknowledge task rule")?
        == 1)
}

//! Room multicast sessions (issue 7): one per reimage request with `multicast`, shared by the
//! tasks it created. The session's group address and port follow from its id
//! ([`crate::multicast::sessions::address`]); the node an agent talks to (the server, or the
//! site relay it boots through) runs the sender when the first agent says hello, and again
//! for agents that come after a run ended. Each run's report is kept.

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;

use super::{DbError, QueryContext};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Session {
    pub id: i64,
    pub image: String,
    pub version: String,
    pub group: Option<String>,
    /// The first run starts when this many receivers joined...
    pub receivers: u32,
    /// ...or this many seconds after the first agent's hello.
    pub wait_secs: u32,
    /// Bytes per second.
    pub max_rate: u64,
    #[serde(serialize_with = "crate::time::serialize_rfc3339")]
    pub created_at: i64,
    /// Runs started so far (a later agent starts another).
    pub runs: u32,
    #[serde(serialize_with = "crate::time::serialize_opt_rfc3339")]
    pub last_run_at: Option<i64>,
    /// The sender's report of the last finished run.
    pub last_report: Option<serde_json::Value>,
}

const COLUMNS: &str =
    "id, image, version, grp, receivers, wait_secs, max_rate, created_at, runs, last_run_at, last_report";

fn from_row(r: &Row<'_>) -> rusqlite::Result<Session> {
    let report: Option<String> = r.get(10)?;
    Ok(Session {
        id: r.get(0)?,
        image: r.get(1)?,
        version: r.get(2)?,
        group: r.get(3)?,
        receivers: r.get(4)?,
        wait_secs: r.get(5)?,
        max_rate: r.get::<_, i64>(6)?.max(0) as u64,
        created_at: r.get(7)?,
        runs: r.get(8)?,
        last_run_at: r.get(9)?,
        last_report: report.and_then(|s| serde_json::from_str(&s).ok()),
    })
}

/// What a new session is.
#[derive(Debug, Clone)]
pub struct NewSession<'a> {
    pub image: &'a str,
    pub version: &'a str,
    pub group: Option<&'a str>,
    pub receivers: u32,
    pub wait_secs: u32,
    pub max_rate: u64,
}

pub fn create(conn: &Connection, new: &NewSession<'_>, now: i64) -> Result<Session, DbError> {
    conn.execute(
        "INSERT INTO mcast_sessions (image, version, grp, receivers, wait_secs, max_rate, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            new.image,
            new.version,
            new.group,
            new.receivers,
            new.wait_secs,
            i64::try_from(new.max_rate).unwrap_or(i64::MAX),
            now
        ],
    )
    .what("create multicast session")?;
    Ok(get(conn, conn.last_insert_rowid())?.expect("session just created"))
}

pub fn get(conn: &Connection, id: i64) -> Result<Option<Session>, DbError> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM mcast_sessions WHERE id = ?1"),
        [id],
        from_row,
    )
    .optional()
    .what("get multicast session")
}

/// Newest first.
pub fn list(conn: &Connection, limit: u32) -> Result<Vec<Session>, DbError> {
    let mut st = conn
        .prepare(&format!(
            "SELECT {COLUMNS} FROM mcast_sessions ORDER BY id DESC LIMIT ?1"
        ))
        .what("list multicast sessions")?;
    let rows = st
        .query_map([limit], from_row)
        .what("list multicast sessions")?;
    rows.collect::<Result<_, _>>()
        .what("list multicast sessions")
}

/// A run of session `id` started at `now`.
pub fn run_started(conn: &Connection, id: i64, now: i64) -> Result<(), DbError> {
    conn.execute(
        "UPDATE mcast_sessions SET runs = runs + 1, last_run_at = ?2 WHERE id = ?1",
        params![id, now],
    )
    .what("record multicast run")?;
    Ok(())
}

/// A run of session `id` ended with `report` (the sender's, as JSON).
pub fn run_ended(conn: &Connection, id: i64, report: &serde_json::Value) -> Result<(), DbError> {
    conn.execute(
        "UPDATE mcast_sessions SET last_report = ?2 WHERE id = ?1",
        params![id, report.to_string()],
    )
    .what("record multicast report")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_record_runs_and_reports() {
        let db = crate::db::Db::open_in_memory().unwrap();
        let c = db.lock();
        let s = create(
            &c,
            &NewSession {
                image: "win11",
                version: "ab",
                group: Some("room12"),
                receivers: 8,
                wait_secs: 120,
                max_rate: 50_000_000,
            },
            10,
        )
        .unwrap();
        assert_eq!((s.runs, s.receivers, s.max_rate), (0, 8, 50_000_000));
        run_started(&c, s.id, 20).unwrap();
        run_ended(&c, s.id, &serde_json::json!({"ended": "done"})).unwrap();
        let s = get(&c, s.id).unwrap().unwrap();
        assert_eq!((s.runs, s.last_run_at), (1, Some(20)));
        assert_eq!(s.last_report.unwrap()["ended"], "done");
        assert_eq!(list(&c, 10).unwrap().len(), 1);
    }
}

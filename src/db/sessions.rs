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

/// A session as staff follow it: its receivers, counted from the tasks it was made for.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Followed {
    #[serde(flatten)]
    pub session: Session,
    /// Tasks (machines) the session was made for.
    pub tasks: u32,
    /// Machines not started yet (waiting to boot, or booting).
    pub waiting: u32,
    /// Machines whose agent joined (restoring, done, or failed after it began).
    pub joined: u32,
    pub done: u32,
    /// Machines that joined and then failed or were cancelled.
    pub dropped: u32,
}

/// Sessions newest first, `limit` of them, older than session `before` when given; of the
/// hosts of `sites` only when given (an operator's: a session with a task of one of them).
pub fn followed(
    conn: &Connection,
    sites: Option<&[String]>,
    before: Option<i64>,
    limit: u32,
) -> Result<Vec<Followed>, DbError> {
    let sites = sites.map(|s| serde_json::to_string(s).expect("names serialise"));
    let mut st = conn
        .prepare(&format!(
            "SELECT {COLUMNS},
                (SELECT count(*) FROM tasks t WHERE t.mcast = s.id),
                (SELECT count(*) FROM tasks t WHERE t.mcast = s.id
                    AND t.state IN ('pending', 'booting')),
                (SELECT count(*) FROM tasks t WHERE t.mcast = s.id
                    AND (t.state IN ('running', 'done', 'failed') OR t.progress_at IS NOT NULL)),
                (SELECT count(*) FROM tasks t WHERE t.mcast = s.id AND t.state = 'done'),
                (SELECT count(*) FROM tasks t WHERE t.mcast = s.id AND (t.state = 'failed'
                    OR (t.state = 'cancelled' AND t.progress_at IS NOT NULL)))
             FROM mcast_sessions s
             WHERE (?1 IS NULL OR s.id < ?1)
               AND (?2 IS NULL OR EXISTS (SELECT 1 FROM tasks t JOIN hosts h ON h.mac = t.mac
                    WHERE t.mcast = s.id AND h.site IN (SELECT value FROM json_each(?2))))
             ORDER BY s.id DESC LIMIT ?3"
        ))
        .what("list multicast sessions")?;
    let rows = st
        .query_map(params![before, sites, limit], |r| {
            Ok(Followed {
                session: from_row(r)?,
                tasks: r.get(11)?,
                waiting: r.get(12)?,
                joined: r.get(13)?,
                done: r.get(14)?,
                dropped: r.get(15)?,
            })
        })
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

//! Events (a boot, an inventory, a changed inventory, a reimage done or failed, a push done)
//! and each hook run they started, for the API and the CLI.

use rusqlite::{params, Connection};
use serde::Serialize;

use super::{DbError, QueryContext};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub id: i64,
    #[serde(serialize_with = "crate::time::serialize_rfc3339")]
    pub at: i64,
    pub kind: String,
    pub mac: Option<String>,
    pub data: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HookRun {
    pub id: i64,
    pub event: i64,
    pub hook: String,
    #[serde(serialize_with = "crate::time::serialize_rfc3339")]
    pub started_at: i64,
    #[serde(serialize_with = "crate::time::serialize_opt_rfc3339")]
    pub ended_at: Option<i64>,
    /// `running`, `ok`, `failed`, `timeout`.
    pub outcome: String,
    pub attempts: u32,
    pub detail: Option<String>,
}

pub fn record(
    conn: &Connection,
    kind: &str,
    mac: Option<&str>,
    data: &serde_json::Value,
    now: i64,
) -> Result<i64, DbError> {
    conn.execute(
        "INSERT INTO events (at, kind, mac, data) VALUES (?1, ?2, ?3, ?4)",
        params![now, kind, mac, data.to_string()],
    )
    .what("record event")?;
    Ok(conn.last_insert_rowid())
}

/// Which events ([`list`]): newest first.
#[derive(Debug, Clone, Default)]
pub struct EventFilter<'a> {
    pub mac: Option<&'a str>,
    pub kind: Option<&'a str>,
    /// Events of hosts of these sites only (an operator's scope).
    pub sites: Option<&'a [String]>,
    /// Older than this event id (the previous page's last).
    pub before: Option<i64>,
    pub limit: u32,
}

/// Events, newest first, as `f` says.
pub fn list(conn: &Connection, f: &EventFilter) -> Result<Vec<Event>, DbError> {
    let sites = f
        .sites
        .map(|s| serde_json::to_string(s).expect("names serialise"));
    let mut st = conn
        .prepare(
            "SELECT id, at, kind, mac, data FROM events
             WHERE (?1 IS NULL OR mac = ?1) AND (?2 IS NULL OR kind = ?2)
               AND (?4 IS NULL OR mac IN (SELECT mac FROM hosts
                    WHERE site IN (SELECT value FROM json_each(?4))))
               AND (?5 IS NULL OR id < ?5)
             ORDER BY id DESC LIMIT ?3",
        )
        .what("list events")?;
    let rows = st
        .query_map(params![f.mac, f.kind, f.limit, sites, f.before], |r| {
            let data: String = r.get(4)?;
            Ok(Event {
                id: r.get(0)?,
                at: r.get(1)?,
                kind: r.get(2)?,
                mac: r.get(3)?,
                data: serde_json::from_str(&data).unwrap_or(serde_json::Value::Null),
            })
        })
        .what("list events")?;
    rows.collect::<Result<_, _>>().what("list events")
}

pub fn run_started(conn: &Connection, event: i64, hook: &str, now: i64) -> Result<i64, DbError> {
    conn.execute(
        "INSERT INTO hook_runs (event, hook, started_at) VALUES (?1, ?2, ?3)",
        params![event, hook, now],
    )
    .what("record hook run")?;
    Ok(conn.last_insert_rowid())
}

pub fn run_ended(
    conn: &Connection,
    run: i64,
    outcome: &str,
    attempts: u32,
    detail: &str,
    now: i64,
) -> Result<(), DbError> {
    conn.execute(
        "UPDATE hook_runs SET ended_at = ?2, outcome = ?3, attempts = ?4, detail = ?5 WHERE id = ?1",
        params![run, now, outcome, attempts, detail],
    )
    .what("record hook run")?;
    Ok(())
}

/// Hook runs, newest first.
pub fn runs(conn: &Connection, limit: u32) -> Result<Vec<HookRun>, DbError> {
    let mut st = conn
        .prepare(
            "SELECT id, event, hook, started_at, ended_at, outcome, attempts, detail FROM hook_runs
             ORDER BY id DESC LIMIT ?1",
        )
        .what("list hook runs")?;
    let rows = st
        .query_map([limit], |r| {
            Ok(HookRun {
                id: r.get(0)?,
                event: r.get(1)?,
                hook: r.get(2)?,
                started_at: r.get(3)?,
                ended_at: r.get(4)?,
                outcome: r.get(5)?,
                attempts: r.get(6)?,
                detail: r.get(7)?,
            })
        })
        .what("list hook runs")?;
    rows.collect::<Result<_, _>>().what("list hook runs")
}

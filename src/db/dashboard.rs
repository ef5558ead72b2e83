//! What the console's dashboard shows, in a few aggregate queries (answers in milliseconds at
//! 40,000 hosts and a year of tasks): hosts and tasks counted, the tasks under way with their
//! progress, each site's relay, failures nobody acknowledged.

use std::collections::BTreeMap;

use rusqlite::{params, Connection};
use serde::Serialize;

use super::tasks::Task;
use super::{DbError, QueryContext};

#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Active (not retired) hosts per site (`""`: of no site).
    pub hosts: BTreeMap<String, u64>,
    /// Open tasks by state, and tasks over in the last 24 hours by state.
    pub open: BTreeMap<String, u64>,
    pub last_day: BTreeMap<String, u64>,
    /// Tasks under way (booting, running), newest progress first; at most [`RUNNING_MAX`].
    pub running: Vec<Task>,
    /// Tasks failed in the last 24 hours, newest first; at most [`FAILED_MAX`].
    pub failed: Vec<Task>,
    /// Task rules whose last run failed, not acknowledged: `(id, outcome)`.
    pub failed_rules: Vec<(i64, String)>,
}

pub const RUNNING_MAX: u32 = 200;
pub const FAILED_MAX: u32 = 50;

/// The summary at `now`, of the hosts of `sites` only if given (an operator's scope).
pub fn summary(c: &Connection, sites: Option<&[String]>, now: i64) -> Result<Summary, DbError> {
    let sites = sites.map(|s| serde_json::to_string(s).expect("names serialise"));
    let in_scope = "(?1 IS NULL OR h.site IN (SELECT value FROM json_each(?1)))";
    let mut s = Summary::default();
    let mut st = c
        .prepare(&format!(
            "SELECT coalesce(h.site, ''), count(*) FROM hosts h
             WHERE h.retired_at IS NULL AND {in_scope} GROUP BY h.site"
        ))
        .what("count hosts per site")?;
    for row in st
        .query_map(params![sites], |r| Ok((r.get(0)?, r.get(1)?)))
        .what("count hosts per site")?
    {
        let (site, n): (String, u64) = row.what("count hosts per site")?;
        s.hosts.insert(site, n);
    }
    let count = |sql: &str, out: &mut BTreeMap<String, u64>| -> Result<(), DbError> {
        let mut st = c.prepare(sql).what("count tasks")?;
        for row in st
            .query_map(params![sites, now - 86_400], |r| Ok((r.get(0)?, r.get(1)?)))
            .what("count tasks")?
        {
            let (state, n): (String, u64) = row.what("count tasks")?;
            out.insert(state, n);
        }
        Ok(())
    };
    count(
        &format!(
            "SELECT t.state, count(*) FROM tasks t JOIN hosts h ON h.mac = t.mac
             WHERE t.state IN ('pending','booting','running') AND {in_scope} AND ?2 = ?2
             GROUP BY t.state"
        ),
        &mut s.open,
    )?;
    count(
        &format!(
            "SELECT t.state, count(*) FROM tasks t JOIN hosts h ON h.mac = t.mac
             WHERE t.state IN ('done','failed','cancelled') AND t.updated_at >= ?2 AND {in_scope}
             GROUP BY t.state"
        ),
        &mut s.last_day,
    )?;
    let ids = |sql: &str, limit: u32| -> Result<Vec<i64>, DbError> {
        let mut st = c.prepare(sql).what("list tasks")?;
        let rows = st
            .query_map(params![sites, now - 86_400, limit], |r| r.get(0))
            .what("list tasks")?;
        rows.collect::<Result<_, _>>().what("list tasks")
    };
    for id in ids(
        &format!(
            "SELECT t.id FROM tasks t JOIN hosts h ON h.mac = t.mac
             WHERE t.state IN ('booting','running') AND {in_scope} AND ?2 = ?2
             ORDER BY t.updated_at DESC LIMIT ?3"
        ),
        RUNNING_MAX,
    )? {
        s.running.extend(super::tasks::get(c, id)?);
    }
    for id in ids(
        &format!(
            "SELECT t.id FROM tasks t JOIN hosts h ON h.mac = t.mac
             WHERE t.state = 'failed' AND t.updated_at >= ?2 AND {in_scope}
             ORDER BY t.updated_at DESC LIMIT ?3"
        ),
        FAILED_MAX,
    )? {
        s.failed.extend(super::tasks::get(c, id)?);
    }
    let mut st = c
        .prepare(
            "SELECT id, coalesce(last_outcome, '') FROM task_rules WHERE failed = 1 ORDER BY id",
        )
        .what("list failed rules")?;
    s.failed_rules = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .what("list failed rules")?
        .collect::<Result<_, _>>()
        .what("list failed rules")?;
    Ok(s)
}

//! Hardware inventories, one row per boot that reported one (the history), and the queue of
//! inventories to forward to a GLPI server (it survives restarts: a row leaves the queue only
//! when GLPI accepted it).

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::{DbError, QueryContext};
use crate::inventory::Inventory;
use crate::mac::Mac;

/// One stored inventory.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stored {
    pub id: i64,
    pub mac: Mac,
    #[serde(serialize_with = "crate::time::serialize_rfc3339")]
    pub received_at: i64,
    pub inventory: Inventory,
}

fn parse(id: i64, mac: String, received_at: i64, data: String) -> rusqlite::Result<Stored> {
    let bad = |e: String| {
        rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, e.into())
    };
    Ok(Stored {
        id,
        mac: mac
            .parse()
            .map_err(|e: crate::mac::BadMac| bad(e.to_string()))?,
        received_at,
        inventory: serde_json::from_str(&data).map_err(|e| bad(e.to_string()))?,
    })
}

/// Records `inv` for `mac`; returns the previous inventory of that host, if any.
pub fn record(
    conn: &Connection,
    mac: Mac,
    inv: &Inventory,
    now: i64,
) -> Result<(Stored, Option<Stored>), DbError> {
    let previous = latest(conn, mac)?;
    let data = serde_json::to_string(inv).expect("inventories serialize");
    conn.execute(
        "INSERT INTO inventories (mac, received_at, data) VALUES (?1, ?2, ?3)",
        params![mac.to_string(), now, data],
    )
    .what("record inventory")?;
    let stored = Stored {
        id: conn.last_insert_rowid(),
        mac,
        received_at: now,
        inventory: inv.clone(),
    };
    Ok((stored, previous))
}

/// The newest inventory of `mac`.
pub fn latest(conn: &Connection, mac: Mac) -> Result<Option<Stored>, DbError> {
    conn.query_row(
        "SELECT id, mac, received_at, data FROM inventories WHERE mac = ?1 ORDER BY id DESC LIMIT 1",
        [mac.to_string()],
        |r| parse(r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?),
    )
    .optional()
    .what("latest inventory")
}

/// The inventories of `mac`, newest first.
pub fn history(conn: &Connection, mac: Mac, limit: u32) -> Result<Vec<Stored>, DbError> {
    let mut st = conn
        .prepare(
            "SELECT id, mac, received_at, data FROM inventories WHERE mac = ?1 ORDER BY id DESC LIMIT ?2",
        )
        .what("inventory history")?;
    let rows = st
        .query_map(params![mac.to_string(), limit], |r| {
            parse(r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)
        })
        .what("inventory history")?;
    rows.collect::<Result<_, _>>().what("inventory history")
}

/// One inventory of a host's history and what changed since the one before it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    #[serde(flatten)]
    pub stored: Stored,
    /// From the previous inventory kept (`new_machine` for the first one).
    pub changes: Vec<crate::inventory::diff::Change>,
}

/// The `limit` newest inventories of `mac`, newest first, each with its changes from the one
/// before (the oldest shown is compared with the one before it, when kept).
pub fn history_steps(conn: &Connection, mac: Mac, limit: u32) -> Result<Vec<Step>, DbError> {
    let list = history(conn, mac, limit.saturating_add(1))?;
    let shown = list.len().min(limit as usize);
    Ok((0..shown)
        .map(|k| Step {
            changes: crate::inventory::diff::changes(
                list.get(k + 1).map(|o| &o.inventory),
                &list[k].inventory,
            ),
            stored: list[k].clone(),
        })
        .collect())
}

/// One inventory waiting to be forwarded to GLPI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    pub id: i64,
    pub mac: String,
    pub agent_id: String,
    pub body: String,
    pub attempts: u32,
}

pub fn enqueue(
    conn: &Connection,
    mac: Mac,
    agent_id: &str,
    body: &str,
    now: i64,
) -> Result<(), DbError> {
    conn.execute(
        "INSERT INTO glpi_queue (mac, agent_id, body, created_at, next_at) VALUES (?1, ?2, ?3, ?4, ?4)",
        params![mac.to_string(), agent_id, body, now],
    )
    .what("queue inventory for GLPI")?;
    Ok(())
}

/// Rows due at `now`, oldest first.
pub fn due(conn: &Connection, now: i64, limit: u32) -> Result<Vec<Queued>, DbError> {
    let mut st = conn
        .prepare(
            "SELECT id, mac, agent_id, body, attempts FROM glpi_queue WHERE next_at <= ?1 ORDER BY id LIMIT ?2",
        )
        .what("GLPI queue")?;
    let rows = st
        .query_map(params![now, limit], |r| {
            Ok(Queued {
                id: r.get(0)?,
                mac: r.get(1)?,
                agent_id: r.get(2)?,
                body: r.get(3)?,
                attempts: r.get(4)?,
            })
        })
        .what("GLPI queue")?;
    rows.collect::<Result<_, _>>().what("GLPI queue")
}

/// GLPI accepted row `id`.
pub fn delivered(conn: &Connection, id: i64) -> Result<(), DbError> {
    conn.execute("DELETE FROM glpi_queue WHERE id = ?1", [id])
        .what("GLPI delivered")?;
    Ok(())
}

/// Row `id` failed: try again at `next_at`.
pub fn failed(conn: &Connection, id: i64, next_at: i64, error: &str) -> Result<(), DbError> {
    conn.execute(
        "UPDATE glpi_queue SET attempts = attempts + 1, next_at = ?2, last_error = ?3 WHERE id = ?1",
        params![id, next_at, error],
    )
    .what("GLPI retry")?;
    Ok(())
}

/// Rows waiting (for `/metrics` and the CLI).
pub fn queued(conn: &Connection) -> Result<u64, DbError> {
    conn.query_row("SELECT count(*) FROM glpi_queue", [], |r| r.get(0))
        .what("GLPI queue length")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_glpi_queue_keeps_a_row_until_delivered_and_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bootcast.db");
        let mac: Mac = "52:54:00:00:00:07".parse().unwrap();
        {
            let db = crate::db::Db::open(&path).unwrap();
            let c = db.lock();
            enqueue(&c, mac, "agent-id", "{}", 100).unwrap();
            let due_now = due(&c, 100, 10).unwrap();
            assert_eq!(due_now.len(), 1);
            // GLPI refused: not due again before the backoff
            let next = 100 + crate::inventory::glpi::glpi_backoff(due_now[0].attempts);
            failed(&c, due_now[0].id, next, "HTTP 500").unwrap();
            assert!(due(&c, next - 1, 10).unwrap().is_empty());
        }
        // the server restarts: the row is still there, due at its time, with its attempts
        let db = crate::db::Db::open(&path).unwrap();
        let c = db.lock();
        assert_eq!(queued(&c).unwrap(), 1);
        let later = due(&c, 100 + 30, 10).unwrap();
        assert_eq!((later.len(), later[0].attempts), (1, 1));
        delivered(&c, later[0].id).unwrap();
        assert_eq!(queued(&c).unwrap(), 0);
        // the backoff doubles from 30 s up to an hour
        let b: Vec<i64> = (0..9).map(crate::inventory::glpi::glpi_backoff).collect();
        assert_eq!(b, vec![30, 60, 120, 240, 480, 960, 1920, 3600, 3600]);
    }
}

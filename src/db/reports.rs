//! Agent reports applied once: the ids of reports a site relay queued while its upstream was
//! down ([`crate::proto::relay::REPORT_ID_HEADER`]). A report sent again (its answer was lost
//! on the way back) finds its id here and is not applied twice. Ids older than the retention
//! are pruned with the rest of the history.

use rusqlite::{params, Connection, OptionalExtension};

use super::{DbError, QueryContext};

/// Whether report `id` was applied.
pub fn seen(c: &Connection, id: &str) -> Result<bool, DbError> {
    c.query_row(
        "SELECT 1 FROM report_ids WHERE id = ?1",
        params![id],
        |_| Ok(()),
    )
    .optional()
    .what("report id")
    .map(|r| r.is_some())
}

/// Records that report `id` was applied.
pub fn record(c: &Connection, id: &str, now: i64) -> Result<(), DbError> {
    c.execute(
        "INSERT OR IGNORE INTO report_ids (id, at) VALUES (?1, ?2)",
        params![id, now],
    )
    .what("record report id")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_seen_once_recorded() {
        let db = crate::db::Db::open_in_memory().unwrap();
        let c = db.lock();
        assert!(!seen(&c, "ab12").unwrap());
        record(&c, "ab12", 5).unwrap();
        record(&c, "ab12", 6).unwrap();
        assert!(seen(&c, "ab12").unwrap());
        assert!(!seen(&c, "cd34").unwrap());
    }
}

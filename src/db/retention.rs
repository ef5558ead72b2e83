//! Pruning the history the server keeps: events (their hook runs go with them), boots and
//! inventories older than `[retention] days`. Each host's newest inventory always stays (the
//! next boot's changes are counted against it), and so does everything newer than the cutoff.

use rusqlite::{params, Connection};
use serde::Serialize;

use super::{DbError, QueryContext};

/// Rows removed by one pruning.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Pruned {
    pub events: usize,
    pub boots: usize,
    pub inventories: usize,
}

impl Pruned {
    pub fn total(&self) -> usize {
        self.events + self.boots + self.inventories
    }
}

/// Removes what is older than `before` (Unix seconds), in one transaction.
pub fn prune(conn: &mut Connection, before: i64) -> Result<Pruned, DbError> {
    let tx = conn.savepoint().what("begin")?;
    let events = tx
        .execute("DELETE FROM events WHERE at < ?1", params![before])
        .what("prune events")?;
    let boots = tx
        .execute("DELETE FROM boots WHERE at < ?1", params![before])
        .what("prune boots")?;
    let inventories = tx
        .execute(
            "DELETE FROM inventories WHERE received_at < ?1
             AND id NOT IN (SELECT MAX(id) FROM inventories GROUP BY mac)",
            params![before],
        )
        .what("prune inventories")?;
    tx.execute("DELETE FROM report_ids WHERE at < ?1", params![before])
        .what("prune report ids")?;
    tx.commit().what("commit")?;
    Ok(Pruned {
        events,
        boots,
        inventories,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{events, hosts, inventories, Db};

    #[test]
    fn old_history_goes_the_newest_inventory_of_each_host_stays() {
        let db = Db::open_in_memory().unwrap();
        let mut c = db.lock();
        let (a, b) = (
            "52:54:00:00:00:0a".parse().unwrap(),
            "52:54:00:00:00:0b".parse().unwrap(),
        );
        for (mac, at) in [(a, 100), (a, 900), (b, 150)] {
            hosts::record_script_boot(&mut c, mac, &Default::default(), at).unwrap();
            let inv = crate::inventory::Inventory {
                mac: mac.to_string(),
                ..Default::default()
            };
            inventories::record(&c, mac, &inv, at).unwrap();
            events::record(
                &c,
                "boot",
                Some(&mac.to_string()),
                &serde_json::json!({}),
                at,
            )
            .unwrap();
        }
        let got = prune(&mut c, 500).unwrap();
        // a's old boot, event and inventory go; b's only inventory stays though it is old
        assert_eq!(
            got,
            Pruned {
                events: 2,
                boots: 2,
                inventories: 1
            }
        );
        assert_eq!(inventories::history(&c, a, 10).unwrap().len(), 1);
        assert_eq!(inventories::history(&c, b, 10).unwrap().len(), 1);
        assert_eq!(prune(&mut c, 500).unwrap().total(), 0, "nothing more");
    }
}

//! Wake-on-LAN orders: `bootcast host wake`, and a task's start for a task that wakes its host.
//! The node serving a host's segment sends them at their time: the server for hosts of no site
//! ([`due_here`]), a site's relay for the site's hosts (its site book carries them, and its
//! heartbeat says which it sent: [`mark_sent`]). Each send is an event `wake` (recorded by the
//! caller, through the hooks).

use rusqlite::{params, Connection};

use super::{DbError, QueryContext};

pub use crate::proto::relay::WakeOrder as Wake;

/// Queues wakes of `hosts` (MAC, and the task each is woken for, if any) from `start`: waves of
/// `wave` hosts, each `spacing` seconds after the previous one (so a room of 750 does not draw
/// power and ask DHCP at once). Returns the orders, in the order given.
pub fn queue(
    conn: &Connection,
    hosts: &[(String, Option<i64>)],
    start: i64,
    wave: u32,
    spacing: u32,
    now: i64,
) -> Result<Vec<Wake>, DbError> {
    let mut st = conn
        .prepare_cached("INSERT INTO wakes (mac, at, task, created) VALUES (?1, ?2, ?3, ?4)")
        .what("queue wake")?;
    let mut out = Vec::with_capacity(hosts.len());
    for (i, (mac, task)) in hosts.iter().enumerate() {
        let task = *task;
        let at = start + (i as i64 / i64::from(wave.max(1))) * i64::from(spacing);
        st.execute(params![mac, at, task, now]).what("queue wake")?;
        out.push(Wake {
            id: conn.last_insert_rowid(),
            mac: mac.clone(),
            at,
            task,
        });
    }
    Ok(out)
}

const COLUMNS: &str = "w.id, w.mac, w.at, w.task";

fn row(r: &rusqlite::Row) -> rusqlite::Result<Wake> {
    Ok(Wake {
        id: r.get(0)?,
        mac: r.get(1)?,
        at: r.get(2)?,
        task: r.get(3)?,
    })
}

/// Unsent orders due at `now` for hosts of no site (the server's own segments).
pub fn due_here(conn: &Connection, now: i64) -> Result<Vec<Wake>, DbError> {
    let mut st = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM wakes w JOIN hosts h ON h.mac = w.mac
             WHERE w.sent_at IS NULL AND w.at <= ?1 AND h.site IS NULL ORDER BY w.at, w.id"
        ))
        .what("due wakes")?;
    let rows = st.query_map([now], row).what("due wakes")?;
    rows.collect::<Result<_, _>>().what("due wakes")
}

/// Unsent orders of `site`'s hosts (its site book), due or not.
pub fn of_site(conn: &Connection, site: &str) -> Result<Vec<Wake>, DbError> {
    let mut st = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM wakes w JOIN hosts h ON h.mac = w.mac
             WHERE w.sent_at IS NULL AND h.site = ?1 ORDER BY w.at, w.id"
        ))
        .what("site wakes")?;
    let rows = st.query_map([site], row).what("site wakes")?;
    rows.collect::<Result<_, _>>().what("site wakes")
}

/// Orders were sent (id, when) by `by` (`server`, or a relay's site). Ids already marked, or of
/// another site's hosts when `site` is given, are ignored. Returns the orders marked, each with
/// its send time in `at` (the caller records an event `wake` for each).
pub fn mark_sent(
    conn: &Connection,
    sent: &[(i64, i64)],
    by: &str,
    site: Option<&str>,
) -> Result<Vec<Wake>, DbError> {
    let mut marked = Vec::new();
    for &(id, at) in sent {
        let n = conn
            .execute(
                "UPDATE wakes SET sent_at = ?2, sent_by = ?3
                 WHERE id = ?1 AND sent_at IS NULL
                   AND (?4 IS NULL OR mac IN (SELECT mac FROM hosts WHERE site = ?4))",
                params![id, at, by, site],
            )
            .what("mark wake sent")?;
        if n == 1 {
            let (mac, task): (String, Option<i64>) = conn
                .query_row("SELECT mac, task FROM wakes WHERE id = ?1", [id], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .what("mark wake sent")?;
            marked.push(Wake { id, mac, at, task });
        }
    }
    Ok(marked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;

    #[test]
    fn waves_due_and_sent_once() {
        let db = Db::open_in_memory().unwrap();
        let c = db.lock();
        for m in [
            "52:54:00:00:00:01",
            "52:54:00:00:00:02",
            "52:54:00:00:00:03",
        ] {
            c.execute(
                "INSERT INTO hosts (mac, first_boot, last_boot) VALUES (?1, 0, 0)",
                [m],
            )
            .unwrap();
        }
        let macs: Vec<(String, Option<i64>)> = [
            "52:54:00:00:00:01",
            "52:54:00:00:00:02",
            "52:54:00:00:00:03",
        ]
        .map(|m| (m.to_string(), None))
        .to_vec();
        let w = queue(&c, &macs, 1000, 2, 30, 900).unwrap();
        assert_eq!(
            w.iter().map(|w| w.at).collect::<Vec<_>>(),
            [1000, 1000, 1030]
        );
        assert!(due_here(&c, 999).unwrap().is_empty());
        assert_eq!(due_here(&c, 1000).unwrap().len(), 2);
        let sent: Vec<(i64, i64)> = due_here(&c, 2000)
            .unwrap()
            .iter()
            .map(|w| (w.id, 2000))
            .collect();
        assert_eq!(sent.len(), 3);
        assert_eq!(mark_sent(&c, &sent, "server", None).unwrap().len(), 3);
        assert!(
            mark_sent(&c, &sent, "server", None).unwrap().is_empty(),
            "once"
        );
        assert!(due_here(&c, 3000).unwrap().is_empty());
        // a relay cannot mark orders of hosts not of its site
        let other = queue(&c, &macs[..1], 0, 20, 0, 0).unwrap();
        assert!(mark_sent(&c, &[(other[0].id, 5)], "s1", Some("s1"))
            .unwrap()
            .is_empty());
        assert_eq!(due_here(&c, 3000).unwrap(), other);
    }
}

//! Groups of hosts (a room, a site): named sets of MACs. A host may be in any number of
//! groups; a group exists while it has been created and not removed (it may be empty).

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::{DbError, QueryContext};
use crate::mac::Mac;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Group {
    pub name: String,
    pub hosts: Vec<Mac>,
}

/// A group name: 1..=64 of `A-Z a-z 0-9 . _ -`, not starting with `.` or `-`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// Adds `macs` to group `name`, creating the group if needed. Every MAC must be a known
/// host (the caller checks; an unknown one fails the foreign key). Returns the group.
pub fn add(conn: &mut Connection, name: &str, macs: &[Mac], now: i64) -> Result<Group, DbError> {
    let tx = conn.savepoint().what("begin")?;
    tx.execute(
        "INSERT INTO groups (name, created_at) VALUES (?1, ?2) ON CONFLICT(name) DO NOTHING",
        params![name, now],
    )
    .what("create group")?;
    for m in macs {
        tx.execute(
            "INSERT INTO group_members (grp, mac) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
            params![name, m.to_string()],
        )
        .what("add group member")?;
    }
    tx.commit().what("commit")?;
    Ok(get(conn, name)?.expect("group just created"))
}

/// Removes `macs` from group `name` (the group stays, maybe empty); with no MACs, removes
/// the group itself. Returns whether the group existed.
pub fn remove(conn: &mut Connection, name: &str, macs: &[Mac]) -> Result<bool, DbError> {
    if !exists(conn, name)? {
        return Ok(false);
    }
    if macs.is_empty() {
        conn.execute("DELETE FROM groups WHERE name = ?1", [name])
            .what("remove group")?;
    } else {
        let tx = conn.savepoint().what("begin")?;
        for m in macs {
            tx.execute(
                "DELETE FROM group_members WHERE grp = ?1 AND mac = ?2",
                params![name, m.to_string()],
            )
            .what("remove group member")?;
        }
        tx.commit().what("commit")?;
    }
    Ok(true)
}

pub fn exists(conn: &Connection, name: &str) -> Result<bool, DbError> {
    conn.query_row("SELECT 1 FROM groups WHERE name = ?1", [name], |_| Ok(()))
        .optional()
        .map(|o| o.is_some())
        .what("find group")
}

fn parse_mac(s: String) -> rusqlite::Result<Mac> {
    s.parse().map_err(|e: crate::mac::BadMac| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
    })
}

/// The MACs in group `name`, sorted.
pub fn members(conn: &Connection, name: &str) -> Result<Vec<Mac>, DbError> {
    let mut st = conn
        .prepare("SELECT mac FROM group_members WHERE grp = ?1 ORDER BY mac")
        .what("group members")?;
    let rows = st
        .query_map([name], |r| parse_mac(r.get(0)?))
        .what("group members")?;
    rows.collect::<Result<_, _>>().what("group members")
}

pub fn get(conn: &Connection, name: &str) -> Result<Option<Group>, DbError> {
    if !exists(conn, name)? {
        return Ok(None);
    }
    Ok(Some(Group {
        name: name.to_string(),
        hosts: members(conn, name)?,
    }))
}

/// Every group with its hosts, by name.
pub fn list(conn: &Connection) -> Result<Vec<Group>, DbError> {
    let names: Vec<String> = {
        let mut st = conn
            .prepare("SELECT name FROM groups ORDER BY name")
            .what("list groups")?;
        let rows = st.query_map([], |r| r.get(0)).what("list groups")?;
        rows.collect::<Result<_, _>>().what("list groups")?
    };
    names
        .into_iter()
        .map(|name| {
            let hosts = members(conn, &name)?;
            Ok(Group { name, hosts })
        })
        .collect()
}

/// Which groups a page lists ([`page`]).
#[derive(Debug, Clone, Default)]
pub struct GroupQuery {
    /// This group only.
    pub name: Option<String>,
    /// Groups with a host of this site.
    pub site: Option<String>,
    /// Groups whose hosts are all of these sites (an operator's scope), and not empty.
    pub scope: Option<Vec<String>>,
    /// The page after this name.
    pub after: Option<String>,
    pub limit: u32,
}

/// One page of groups by name, with their hosts; how many match in all; the name the next
/// page starts after (`None`: the last page).
pub fn page(
    conn: &Connection,
    q: &GroupQuery,
) -> Result<(Vec<Group>, u64, Option<String>), DbError> {
    let scope = q
        .scope
        .as_ref()
        .map(|s| serde_json::to_string(s).expect("names serialise"));
    let filter = "(?1 IS NULL OR g.name = ?1)
        AND (?2 IS NULL OR EXISTS (SELECT 1 FROM group_members m JOIN hosts h ON h.mac = m.mac
                                   WHERE m.grp = g.name AND h.site = ?2))
        AND (?3 IS NULL OR (EXISTS (SELECT 1 FROM group_members m WHERE m.grp = g.name)
             AND NOT EXISTS (SELECT 1 FROM group_members m JOIN hosts h ON h.mac = m.mac
                             WHERE m.grp = g.name AND (h.site IS NULL
                                   OR h.site NOT IN (SELECT value FROM json_each(?3))))))";
    let total: i64 = conn
        .query_row(
            &format!("SELECT count(*) FROM groups g WHERE {filter}"),
            params![q.name, q.site, scope],
            |r| r.get(0),
        )
        .what("count groups")?;
    let names: Vec<String> = {
        let mut st = conn
            .prepare(&format!(
                "SELECT g.name FROM groups g WHERE {filter} AND (?4 IS NULL OR g.name > ?4)
                 ORDER BY g.name LIMIT ?5"
            ))
            .what("page groups")?;
        let rows = st
            .query_map(
                params![q.name, q.site, scope, q.after, i64::from(q.limit) + 1],
                |r| r.get(0),
            )
            .what("page groups")?;
        rows.collect::<Result<_, _>>().what("page groups")?
    };
    let more = names.len() > q.limit as usize;
    let groups: Vec<Group> = names
        .into_iter()
        .take(q.limit as usize)
        .map(|name| {
            let hosts = members(conn, &name)?;
            Ok(Group { name, hosts })
        })
        .collect::<Result<_, DbError>>()?;
    let next = more
        .then(|| groups.last().map(|g| g.name.clone()))
        .flatten();
    Ok((groups, total as u64, next))
}

/// The groups `mac` belongs to, by name.
pub fn of_host(conn: &Connection, mac: Mac) -> Result<Vec<String>, DbError> {
    let mut st = conn
        .prepare("SELECT grp FROM group_members WHERE mac = ?1 ORDER BY grp")
        .what("groups of host")?;
    let rows = st
        .query_map([mac.to_string()], |r| r.get(0))
        .what("groups of host")?;
    rows.collect::<Result<_, _>>().what("groups of host")
}

/// Sets what the machines of group `name` do once a task made for the group is over (`None`:
/// reboot); false if there is no such group.
pub fn set_then(
    conn: &Connection,
    name: &str,
    then: Option<crate::proto::agent::After>,
) -> Result<bool, DbError> {
    Ok(conn
        .execute(
            "UPDATE groups SET after_task = ?2 WHERE name = ?1",
            rusqlite::params![name, then.map(|t| t.as_str())],
        )
        .what("set group then")?
        > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{hosts, Db};

    #[test]
    fn groups_hold_known_hosts_a_host_in_several() {
        let db = Db::open_in_memory().unwrap();
        let mut c = db.lock();
        let a: Mac = "52:54:00:00:00:0a".parse().unwrap();
        let b: Mac = "52:54:00:00:00:0b".parse().unwrap();
        let unknown: Mac = "52:54:00:00:00:0c".parse().unwrap();
        for m in [a, b] {
            hosts::record_script_boot(&mut c, m, &Default::default(), 1).unwrap();
        }
        let g = add(&mut c, "room-101", &[b, a], 5).unwrap();
        assert_eq!(g.hosts, vec![a, b]);
        // adding again changes nothing; a host can be in a second group
        add(&mut c, "room-101", &[a], 6).unwrap();
        add(&mut c, "floor-1", &[a], 6).unwrap();
        assert_eq!(of_host(&c, a).unwrap(), ["floor-1", "room-101"]);
        // an unknown host is refused by the database
        assert!(add(&mut c, "room-101", &[unknown], 7).is_err());
        assert_eq!(members(&c, "room-101").unwrap(), vec![a, b]);
        // removing a member keeps the group; removing with no MACs removes the group
        assert!(remove(&mut c, "room-101", &[a]).unwrap());
        assert_eq!(members(&c, "room-101").unwrap(), vec![b]);
        assert!(remove(&mut c, "floor-1", &[]).unwrap());
        assert!(!exists(&c, "floor-1").unwrap());
        assert!(!remove(&mut c, "floor-1", &[]).unwrap());
        let l = list(&c).unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].name, "room-101");
        assert!(valid_name("room-101") && !valid_name("-x") && !valid_name("a b"));
    }
}

//! Full-mode DHCP leases: one row per address, one address per MAC.

use rusqlite::{params, Connection, OptionalExtension};

use super::{DbError, QueryContext};
use crate::mac::Mac;

/// A lease as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow {
    pub ip: std::net::Ipv4Addr,
    pub mac: Mac,
    /// Unix seconds.
    pub expires: i64,
}

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<LeaseRow> {
    let ip: String = r.get(0)?;
    let mac: String = r.get(1)?;
    let conv = |i: usize, e: String| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into())
    };
    Ok(LeaseRow {
        ip: ip
            .parse()
            .map_err(|_| conv(0, format!("bad lease ip {ip}")))?,
        mac: mac
            .parse()
            .map_err(|e: crate::mac::BadMac| conv(1, e.to_string()))?,
        expires: r.get(2)?,
    })
}

pub fn by_mac(conn: &Connection, mac: Mac) -> Result<Option<LeaseRow>, DbError> {
    conn.query_row(
        "SELECT ip, mac, expires FROM leases WHERE mac = ?1",
        [mac.to_string()],
        from_row,
    )
    .optional()
    .what("lease by mac")
}

pub fn by_ip(conn: &Connection, ip: std::net::Ipv4Addr) -> Result<Option<LeaseRow>, DbError> {
    conn.query_row(
        "SELECT ip, mac, expires FROM leases WHERE ip = ?1",
        [ip.to_string()],
        from_row,
    )
    .optional()
    .what("lease by ip")
}

/// Stores `lease`, replacing any lease of the same address or the same MAC.
pub fn upsert(conn: &mut Connection, lease: &LeaseRow) -> Result<(), DbError> {
    let tx = conn.transaction().what("begin")?;
    tx.execute(
        "DELETE FROM leases WHERE ip = ?1 OR mac = ?2",
        params![lease.ip.to_string(), lease.mac.to_string()],
    )
    .what("replace lease")?;
    tx.execute(
        "INSERT INTO leases (ip, mac, expires) VALUES (?1, ?2, ?3)",
        params![lease.ip.to_string(), lease.mac.to_string(), lease.expires],
    )
    .what("insert lease")?;
    tx.commit().what("commit lease")
}

pub fn release(conn: &Connection, ip: std::net::Ipv4Addr) -> Result<(), DbError> {
    conn.execute("DELETE FROM leases WHERE ip = ?1", [ip.to_string()])
        .what("release lease")?;
    Ok(())
}

pub fn list(conn: &Connection) -> Result<Vec<LeaseRow>, DbError> {
    let mut st = conn
        .prepare("SELECT ip, mac, expires FROM leases ORDER BY ip")
        .what("list leases")?;
    let rows = st.query_map([], from_row).what("list leases")?;
    rows.collect::<Result<_, _>>().what("list leases")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;

    #[test]
    fn one_address_per_mac_and_per_ip() {
        let db = Db::open_in_memory().unwrap();
        let mut c = db.lock();
        let a: Mac = "52:54:00:00:00:0a".parse().unwrap();
        let b: Mac = "52:54:00:00:00:0b".parse().unwrap();
        let ip1 = "10.99.0.100".parse().unwrap();
        let ip2 = "10.99.0.101".parse().unwrap();
        upsert(
            &mut c,
            &LeaseRow {
                ip: ip1,
                mac: a,
                expires: 10,
            },
        )
        .unwrap();
        upsert(
            &mut c,
            &LeaseRow {
                ip: ip2,
                mac: a,
                expires: 20,
            },
        )
        .unwrap();
        assert_eq!(by_mac(&c, a).unwrap().unwrap().ip, ip2);
        assert!(by_ip(&c, ip1).unwrap().is_none());
        upsert(
            &mut c,
            &LeaseRow {
                ip: ip2,
                mac: b,
                expires: 30,
            },
        )
        .unwrap();
        assert!(by_mac(&c, a).unwrap().is_none());
        assert_eq!(list(&c).unwrap().len(), 1);
        release(&c, ip2).unwrap();
        assert!(list(&c).unwrap().is_empty());
    }
}

//! Full-mode DHCP leases in SQLite: the [`LeaseStore`] the DHCP server uses, so leases
//! survive restarts. One row per address; the DHCP codec keeps one address per MAC.

use std::net::Ipv4Addr;

use rusqlite::{params, Connection, OptionalExtension};

use super::Db;
use crate::boot::dhcp::{Lease, LeaseError, LeaseStore};
use crate::mac::Mac;

/// Leases in the server's database.
pub struct SqliteLeases {
    db: Db,
}

impl SqliteLeases {
    pub fn new(db: Db) -> SqliteLeases {
        SqliteLeases { db }
    }
}

fn err(e: rusqlite::Error) -> LeaseError {
    LeaseError(e.to_string())
}

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Lease> {
    let ip: String = r.get(0)?;
    let mac: String = r.get(1)?;
    let expires: i64 = r.get(2)?;
    let conv = |i: usize, e: String| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into())
    };
    Ok(Lease {
        ip: ip
            .parse()
            .map_err(|_| conv(0, format!("bad lease address {ip}")))?,
        mac: mac
            .parse()
            .map_err(|e: crate::mac::BadMac| conv(1, e.to_string()))?,
        expires: expires.max(0) as u64,
    })
}

fn query(conn: &Connection, sql: &str, arg: String) -> Result<Option<Lease>, LeaseError> {
    conn.query_row(sql, [arg], from_row).optional().map_err(err)
}

impl LeaseStore for SqliteLeases {
    fn seen(
        &self,
        mac: Mac,
        ip: Ipv4Addr,
        at: u64,
        circuit: Option<&str>,
    ) -> Result<(), LeaseError> {
        super::bootcred::record_seen(
            &self.db.lock(),
            mac,
            ip.into(),
            i64::try_from(at).unwrap_or(i64::MAX),
            circuit,
        )
        .map_err(|e| LeaseError(e.to_string()))
    }

    fn by_mac(&self, mac: Mac) -> Result<Option<Lease>, LeaseError> {
        query(
            &self.db.lock(),
            "SELECT ip, mac, expires FROM leases WHERE mac = ?1 ORDER BY expires DESC LIMIT 1",
            mac.to_string(),
        )
    }

    fn by_ip(&self, ip: Ipv4Addr) -> Result<Option<Lease>, LeaseError> {
        query(
            &self.db.lock(),
            "SELECT ip, mac, expires FROM leases WHERE ip = ?1",
            ip.to_string(),
        )
    }

    fn upsert(&self, lease: Lease) -> Result<(), LeaseError> {
        self.db
            .lock()
            .execute(
                "INSERT INTO leases (ip, mac, expires) VALUES (?1, ?2, ?3)
                 ON CONFLICT(ip) DO UPDATE SET mac = excluded.mac, expires = excluded.expires",
                params![
                    lease.ip.to_string(),
                    lease.mac.to_string(),
                    lease.expires.min(i64::MAX as u64) as i64
                ],
            )
            .map(drop)
            .map_err(err)
    }

    fn release(&self, ip: Ipv4Addr) -> Result<(), LeaseError> {
        self.db
            .lock()
            .execute("DELETE FROM leases WHERE ip = ?1", [ip.to_string()])
            .map(drop)
            .map_err(err)
    }

    fn list(&self) -> Result<Vec<Lease>, LeaseError> {
        let conn = self.db.lock();
        let mut st = conn
            .prepare("SELECT ip, mac, expires FROM leases ORDER BY ip")
            .map_err(err)?;
        let rows = st.query_map([], from_row).map_err(err)?;
        let mut out: Vec<Lease> = rows.collect::<Result<_, _>>().map_err(err)?;
        // text order is not address order (10.0.0.10 < 10.0.0.9)
        out.sort_by_key(|l| u32::from(l.ip));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_survive_reopening_and_keep_declined_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.db");
        let a: Mac = "52:54:00:00:00:0a".parse().unwrap();
        let ip = |s: &str| -> Ipv4Addr { s.parse().unwrap() };
        {
            let l = SqliteLeases::new(Db::open(&path).unwrap());
            l.upsert(Lease {
                ip: ip("10.99.0.10"),
                mac: a,
                expires: 100,
            })
            .unwrap();
            l.upsert(Lease {
                ip: ip("10.99.0.9"),
                mac: Mac::DECLINED,
                expires: 50,
            })
            .unwrap();
            l.upsert(Lease {
                ip: ip("10.99.0.11"),
                mac: Mac::DECLINED,
                expires: 60,
            })
            .unwrap();
            // same address again: replaced, not duplicated
            l.upsert(Lease {
                ip: ip("10.99.0.10"),
                mac: a,
                expires: 200,
            })
            .unwrap();
        }
        let l = SqliteLeases::new(Db::open(&path).unwrap());
        let all = l.list().unwrap();
        assert_eq!(
            all.iter().map(|l| l.ip.to_string()).collect::<Vec<_>>(),
            ["10.99.0.9", "10.99.0.10", "10.99.0.11"]
        );
        assert_eq!(l.by_mac(a).unwrap().unwrap().expires, 200);
        assert_eq!(
            l.by_mac(Mac::DECLINED).unwrap().unwrap().ip,
            ip("10.99.0.11")
        );
        assert_eq!(
            l.by_ip(ip("10.99.0.9")).unwrap().unwrap().mac,
            Mac::DECLINED
        );
        l.release(ip("10.99.0.10")).unwrap();
        assert!(l.by_mac(a).unwrap().is_none());
        assert!(l.by_ip(ip("10.99.0.10")).unwrap().is_none());
    }
}

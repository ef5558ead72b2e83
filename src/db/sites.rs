//! Sites: a place with its own relay (a school, a town hall), its transfer schedule (time
//! zone, windows, bandwidth cap), its subnets, and what its relay last reported.

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;

use super::{DbError, QueryContext};
use crate::proto::relay::{Heartbeat, VersionRef};

/// What to do with a reimage task whose version is not complete on the site's relay yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Incomplete {
    /// Hold the task back (the machine boots its disk) until the relay has the version.
    Wait,
    /// Hand the task out; the relay fetches what it lacks from upstream as the machine asks.
    Upstream,
}

impl Incomplete {
    pub fn as_str(self) -> &'static str {
        match self {
            Incomplete::Wait => "wait",
            Incomplete::Upstream => "upstream",
        }
    }

    pub fn parse(s: &str) -> Option<Incomplete> {
        [Incomplete::Wait, Incomplete::Upstream]
            .into_iter()
            .find(|p| p.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Site {
    pub name: String,
    /// CIDRs whose machines belong to the site (`10.20.0.0/16`).
    pub subnets: Vec<String>,
    /// Time zone name for the windows (`Europe/Paris`).
    pub tz: String,
    pub windows: String,
    /// Bandwidth cap for the relay's pulls, bytes per second.
    pub rate: Option<u64>,
    pub incomplete: Incomplete,
    /// [`token_hash`] of the site's relay token (the token itself is stored nowhere).
    #[serde(skip)]
    pub token_hash: String,
    pub relay: Option<RelayState>,
    /// Image names assigned to the site (by pushes).
    pub images: Vec<String>,
}

/// What the site's relay last said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RelayState {
    pub url: Option<String>,
    pub version: Option<String>,
    #[serde(serialize_with = "crate::time::serialize_rfc3339")]
    pub last_heartbeat: i64,
    pub cache_bytes: Option<u64>,
    pub quota_bytes: Option<u64>,
    pub complete: Vec<VersionRef>,
}

/// A site name: 1..=64 of `A-Z a-z 0-9 . _ -`, not starting with `.` or `-` (as groups).
pub fn valid_name(name: &str) -> bool {
    super::groups::valid_name(name)
}

const COLUMNS: &str = "name, subnets, tz, windows, rate, incomplete, relay_token, relay_url, \
    relay_version, last_heartbeat, cache_bytes, quota_bytes, complete";

fn from_row(r: &Row<'_>) -> rusqlite::Result<Site> {
    let subnets: String = r.get(1)?;
    let incomplete: String = r.get(5)?;
    let complete: String = r.get(12)?;
    let relay = r.get::<_, Option<i64>>(9)?.map(|at| RelayState {
        url: r.get(7).ok().flatten(),
        version: r.get(8).ok().flatten(),
        last_heartbeat: at,
        cache_bytes: r.get::<_, Option<i64>>(10).ok().flatten().map(|v| v as u64),
        quota_bytes: r.get::<_, Option<i64>>(11).ok().flatten().map(|v| v as u64),
        complete: serde_json::from_str(&complete).unwrap_or_default(),
    });
    Ok(Site {
        name: r.get(0)?,
        subnets: subnets
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        tz: r.get(2)?,
        windows: r.get(3)?,
        rate: r.get::<_, Option<i64>>(4)?.map(|v| v as u64),
        incomplete: Incomplete::parse(&incomplete).unwrap_or(Incomplete::Wait),
        token_hash: r.get(6)?,
        relay,
        images: Vec::new(),
    })
}

/// The settings of a new or changed site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteSettings {
    pub subnets: Vec<String>,
    pub tz: String,
    pub windows: String,
    pub rate: Option<u64>,
    pub incomplete: Incomplete,
}

/// How a relay token is stored: `sha256:` and the hex SHA-256 of the token. Tokens are random
/// (24 bytes), so a plain hash is enough: the database alone gives no token a relay would be
/// accepted with.
pub fn token_hash(token: &str) -> String {
    use sha2::{Digest, Sha256};
    format!("sha256:{}", hex::encode(Sha256::digest(token.as_bytes())))
}

/// Replaces the relay tokens stored in clear by databases before tokens were hashed with their
/// hashes (run at every open; a no-op once done).
pub(super) fn hash_plain_tokens(conn: &Connection) -> Result<(), DbError> {
    let plain: Vec<(String, String)> = conn
        .prepare("SELECT name, relay_token FROM sites WHERE relay_token NOT LIKE 'sha256:%'")
        .what("plain tokens")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .what("plain tokens")?
        .collect::<Result<_, _>>()
        .what("plain tokens")?;
    for (name, token) in plain {
        conn.execute(
            "UPDATE sites SET relay_token = ?1 WHERE name = ?2",
            params![token_hash(&token), name],
        )
        .what("hash token")?;
    }
    Ok(())
}

/// Replaces site `name`'s relay token (`site token --rotate`); false if there is no such site.
pub fn set_token(conn: &Connection, name: &str, token: &str) -> Result<bool, DbError> {
    let n = conn
        .execute(
            "UPDATE sites SET relay_token = ?1 WHERE name = ?2",
            params![token_hash(token), name],
        )
        .what("rotate token")?;
    Ok(n == 1)
}

/// Creates site `name` with relay token `token` (stored hashed); false if it exists.
pub fn add(
    conn: &Connection,
    name: &str,
    s: &SiteSettings,
    token: &str,
    now: i64,
) -> Result<bool, DbError> {
    let n = conn
        .execute(
            "INSERT INTO sites (name, subnets, tz, windows, rate, incomplete, relay_token, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT(name) DO NOTHING",
            params![
                name,
                s.subnets.join(","),
                s.tz,
                s.windows,
                s.rate.map(|r| r as i64),
                s.incomplete.as_str(),
                token_hash(token),
                now
            ],
        )
        .what("add site")?;
    Ok(n == 1)
}

/// Changes a site's settings; false if there is no such site.
pub fn update(conn: &Connection, name: &str, s: &SiteSettings) -> Result<bool, DbError> {
    let n = conn
        .execute(
            "UPDATE sites SET subnets = ?2, tz = ?3, windows = ?4, rate = ?5, incomplete = ?6
             WHERE name = ?1",
            params![
                name,
                s.subnets.join(","),
                s.tz,
                s.windows,
                s.rate.map(|r| r as i64),
                s.incomplete.as_str()
            ],
        )
        .what("update site")?;
    Ok(n == 1)
}

pub fn remove(conn: &Connection, name: &str) -> Result<bool, DbError> {
    let n = conn
        .execute("DELETE FROM sites WHERE name = ?1", [name])
        .what("remove site")?;
    Ok(n == 1)
}

fn with_images(conn: &Connection, mut site: Site) -> Result<Site, DbError> {
    let mut st = conn
        .prepare("SELECT image FROM site_images WHERE site = ?1 ORDER BY image")
        .what("site images")?;
    site.images = st
        .query_map([&site.name], |r| r.get(0))
        .what("site images")?
        .collect::<Result<_, _>>()
        .what("site images")?;
    Ok(site)
}

pub fn get(conn: &Connection, name: &str) -> Result<Option<Site>, DbError> {
    let site = conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM sites WHERE name = ?1"),
            [name],
            from_row,
        )
        .optional()
        .what("get site")?;
    site.map(|s| with_images(conn, s)).transpose()
}

pub fn list(conn: &Connection) -> Result<Vec<Site>, DbError> {
    let mut st = conn
        .prepare(&format!("SELECT {COLUMNS} FROM sites ORDER BY name"))
        .what("list sites")?;
    let sites: Vec<Site> = st
        .query_map([], from_row)
        .what("list sites")?
        .collect::<Result<_, _>>()
        .what("list sites")?;
    sites.into_iter().map(|s| with_images(conn, s)).collect()
}

/// The site whose relay token is `token` (looked up by its hash).
pub fn by_token(conn: &Connection, token: &str) -> Result<Option<Site>, DbError> {
    let site = conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM sites WHERE relay_token = ?1"),
            [token_hash(token)],
            from_row,
        )
        .optional()
        .what("site by token")?;
    site.map(|s| with_images(conn, s)).transpose()
}

/// Records a relay's heartbeat: its address, cache, complete versions and push progress.
pub fn record_heartbeat(
    conn: &mut Connection,
    site: &str,
    hb: &Heartbeat,
    now: i64,
) -> Result<(), DbError> {
    let tx = conn.savepoint().what("begin")?;
    tx.execute(
        "UPDATE sites SET relay_url = ?2, relay_version = ?3, last_heartbeat = ?4,
            cache_bytes = ?5, quota_bytes = ?6, complete = ?7 WHERE name = ?1",
        params![
            site,
            hb.url,
            hb.version,
            now,
            hb.cache_bytes as i64,
            hb.quota_bytes.map(|q| q as i64),
            serde_json::to_string(&hb.complete).expect("serialises")
        ],
    )
    .what("record heartbeat")?;
    for p in &hb.pushes {
        tx.execute(
            "UPDATE push_sites SET state = ?3, bytes_done = ?4, bytes_total = ?5, fetched = ?6,
                rate = ?7, detail = ?8, updated_at = ?9 WHERE push = ?1 AND site = ?2",
            params![
                p.push,
                site,
                p.state.as_str(),
                p.bytes_done as i64,
                p.bytes_total as i64,
                p.fetched as i64,
                p.rate as i64,
                p.detail,
                now
            ],
        )
        .what("record push progress")?;
    }
    tx.commit().what("commit")
}

/// The site book of `site` for a relay that holds revision `held` (`None`: none): `None` when
/// that is the current one; else the hosts changed since (all of them when the relay holds
/// none, or a revision this database never reached, e.g. after a restore) and every open
/// reimage task of the site's hosts (from the site's hosts, through the index of open tasks:
/// `CROSS JOIN` and `INDEXED BY` keep SQLite from reading every task ever made instead).
/// Signatures are left to the caller.
pub fn book(
    conn: &Connection,
    site: &str,
    held: Option<u64>,
    after_register: &str,
) -> Result<Option<crate::proto::relay::SiteBook>, DbError> {
    use crate::proto::relay::{SiteBook, SiteHost, SiteTask};
    let rev: i64 = conn
        .query_row("SELECT book_rev FROM sites WHERE name = ?1", [site], |r| {
            r.get(0)
        })
        .what("site book revision")?;
    let rev = rev.max(0) as u64;
    if held == Some(rev) {
        return Ok(None);
    }
    let full = held.is_none_or(|h| h > rev);
    let since = if full { -1 } else { held.unwrap_or(0) as i64 };
    let mut st = conn
        .prepare_cached(
            "SELECT mac, registered_at IS NOT NULL FROM hosts
             WHERE site = ?1 AND book_rev > ?2 ORDER BY mac",
        )
        .what("site book hosts")?;
    let hosts = st
        .query_map(params![site, since], |r| {
            Ok(SiteHost {
                mac: r.get(0)?,
                registered: r.get(1)?,
            })
        })
        .what("site book hosts")?
        .collect::<Result<Vec<_>, _>>()
        .what("site book hosts")?;
    let mut st = conn
        .prepare_cached(&format!(
            "SELECT t.id, t.mac, t.image, t.version, t.not_before,
                    CASE WHEN COALESCE(s.set_hostname, 0) THEN h.name END, s.grow,
                    {}
             FROM hosts h CROSS JOIN tasks t INDEXED BY tasks_open ON t.mac = h.mac
             LEFT JOIN image_settings s ON s.image = t.image
             WHERE h.site = ?1 AND t.state IN ('pending','booting','running')
               AND t.kind = 'reimage' AND t.image IS NOT NULL AND t.version IS NOT NULL
             ORDER BY t.id",
            super::tasks::THEN_SQL
        ))
        .what("site book tasks")?;
    let tasks = st
        .query_map([site], |r| {
            Ok(SiteTask {
                id: r.get(0)?,
                mac: r.get(1)?,
                image: r.get(2)?,
                version: r.get(3)?,
                not_before: r.get(4)?,
                hostname: r.get(5)?,
                grow: r.get(6)?,
                then: r
                    .get::<_, Option<String>>(7)?
                    .as_deref()
                    .and_then(crate::proto::agent::After::parse),
                signature: None,
            })
        })
        .what("site book tasks")?
        .collect::<Result<Vec<_>, _>>()
        .what("site book tasks")?;
    let wakes = super::wakes::of_site(conn, site)?;
    Ok(Some(SiteBook {
        rev,
        full,
        wakes,
        hosts,
        tasks,
        after_register: after_register.to_string(),
    }))
}

/// Binds a host to a site (from the relay it booted through).
pub fn bind_host(conn: &Connection, mac: crate::mac::Mac, site: &str) -> Result<(), DbError> {
    conn.execute(
        "UPDATE hosts SET site = ?2 WHERE mac = ?1",
        params![mac.to_string(), site],
    )
    .what("bind host to site")?;
    Ok(())
}

/// Whether `ip` is in `cidr` (`10.20.0.0/16`, `fd99::/64`); false for a malformed CIDR.
pub fn cidr_contains(cidr: &str, ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    let Some((net, len)) = cidr.split_once('/') else {
        return false;
    };
    let (Ok(net), Ok(len)) = (net.parse::<IpAddr>(), len.parse::<u32>()) else {
        return false;
    };
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) if len <= 32 => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) if len <= 128 => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

/// The site whose subnets hold `ip` (the first by name), for machines that boot directly.
pub fn by_address(conn: &Connection, ip: std::net::IpAddr) -> Result<Option<Site>, DbError> {
    Ok(list(conn)?
        .into_iter()
        .find(|s| s.subnets.iter().any(|c| cidr_contains(c, ip))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        let ip = |s: &str| s.parse().unwrap();
        assert!(cidr_contains("10.20.0.0/16", ip("10.20.3.4")));
        assert!(!cidr_contains("10.20.0.0/16", ip("10.21.0.1")));
        assert!(cidr_contains("0.0.0.0/0", ip("1.2.3.4")));
        assert!(cidr_contains("fd99::/64", ip("fd99::5")));
        assert!(!cidr_contains("fd99::/64", ip("10.20.3.4")));
        assert!(!cidr_contains("10.20.0.0/33", ip("10.20.3.4")));
        assert!(!cidr_contains("nonsense", ip("10.20.3.4")));
    }

    #[test]
    fn a_site_book_carries_only_what_changed_since_the_relays_revision() {
        use crate::db::{hosts, tasks, Db, TaskKind, TaskState};
        let db = Db::open_in_memory().unwrap();
        let mut c = db.lock();
        let settings = SiteSettings {
            subnets: vec![],
            tz: "UTC".into(),
            windows: "always".into(),
            rate: None,
            incomplete: Incomplete::Wait,
        };
        add(&c, "nord", &settings, "tok", 1).unwrap();
        add(&c, "sud", &settings, "tok2", 1).unwrap();
        let facts = hosts::BootFacts {
            firmware: None,
            arch: Some("x86_64"),
            ip: None,
            agent_boot_time: None,
        };
        let macs: Vec<crate::mac::Mac> = (1..=3)
            .map(|i| format!("52:54:00:00:01:0{i}").parse().unwrap())
            .collect();
        for m in &macs {
            hosts::record_script_boot(&mut c, *m, &facts, 2).unwrap();
            bind_host(&c, *m, "nord").unwrap();
        }
        hosts::record_hello(&mut c, macs[0], &facts, 3).unwrap();
        // a relay without a book gets all of it
        let b = book(&c, "nord", None, "reboot").unwrap().unwrap();
        assert!(b.full);
        assert_eq!(b.hosts.len(), 3);
        assert_eq!(b.hosts.iter().filter(|h| h.registered).count(), 1);
        assert!(b.tasks.is_empty());
        // nothing changed: nothing sent
        assert_eq!(book(&c, "nord", Some(b.rev), "reboot").unwrap(), None);
        // a boot that changes nothing the book holds raises nothing
        hosts::record_script_boot(&mut c, macs[1], &facts, 4).unwrap();
        bind_host(&c, macs[1], "nord").unwrap();
        assert_eq!(book(&c, "nord", Some(b.rev), "reboot").unwrap(), None);
        // one registration: that host only
        hosts::record_hello(&mut c, macs[1], &facts, 5).unwrap();
        let d = book(&c, "nord", Some(b.rev), "reboot").unwrap().unwrap();
        assert!(!d.full);
        assert_eq!(d.hosts.len(), 1);
        assert_eq!(d.hosts[0].mac, macs[1].to_string());
        assert!(d.hosts[0].registered);
        // a reimage task: the tasks, no host
        let v = "cd".repeat(32);
        let t = tasks::create_with(
            &c,
            macs[2],
            TaskKind::Reimage,
            &tasks::NewTask {
                image: Some("demo"),
                version: Some(&v),
                group: None,
                not_before: None,
                multicast: None,
                then: None,
            },
            6,
        )
        .unwrap();
        let e = book(&c, "nord", Some(d.rev), "reboot").unwrap().unwrap();
        assert!(e.hosts.is_empty());
        assert_eq!(e.tasks.len(), 1);
        assert_eq!(
            (e.tasks[0].id, e.tasks[0].version.as_str()),
            (t.id, v.as_str())
        );
        // the other site's book did not move
        let sud = book(&c, "sud", None, "reboot").unwrap().unwrap();
        assert!(sud.hosts.is_empty() && sud.tasks.is_empty());
        // the task closes: gone from the next book
        tasks::set_state(&c, macs[2], t.id, TaskState::Done, None, 7).unwrap();
        let f = book(&c, "nord", Some(e.rev), "reboot").unwrap().unwrap();
        assert!(f.tasks.is_empty());
        // a host moving away raises both sites; the new one lists it
        bind_host(&c, macs[0], "sud").unwrap();
        let g = book(&c, "nord", Some(f.rev), "reboot").unwrap().unwrap();
        assert!(g.hosts.is_empty());
        let sud2 = book(&c, "sud", Some(sud.rev), "reboot").unwrap().unwrap();
        assert_eq!(sud2.hosts.len(), 1);
        // a relay ahead of this database (restored from a backup) gets a full book
        let h = book(&c, "nord", Some(g.rev + 100), "reboot")
            .unwrap()
            .unwrap();
        assert!(h.full);
        assert_eq!(h.hosts.len(), 2);
    }
}

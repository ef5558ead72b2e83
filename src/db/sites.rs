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
    let tx = conn.transaction().what("begin")?;
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
}

//! Boot credentials and agent sessions (issue 15, item 1).
//!
//! A boot-environment script carries a **credential** for one boot of one MAC: random, short
//! lived, bound to the address the script was given to (the machine's own: see
//! `http::boot`). The agent's hello exchanges it, from that address, for a **session** that
//! the agent's other requests carry for the rest of that boot. A hello retried from the same
//! address within the credential's lifetime gets the same session (derived from the
//! credential and a per-boot salt that never leaves the database); any other use is refused.
//! The session ends with the task it was made for (the task's own reports then get 409). Only hashes of credentials and sessions
//! are stored, and neither is ever logged.
//!
//! The DHCP services record the address each MAC was seen at ([`record_seen`]): the address a
//! boot script's requester must have to get a credential.

use std::net::IpAddr;

use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};

use super::{DbError, QueryContext};
use crate::mac::Mac;

/// How long a session made for a boot without a task (registration, inventory) lasts.
pub const TASKLESS_SESSION_SECS: i64 = 6 * 3600;

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// Equal hex digests, compared in constant time.
fn same(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// The session a credential is exchanged for: the same for every hello of one boot.
fn session_of(credential: &str, salt: &str) -> String {
    sha256_hex(&format!("bootcast-session\0{salt}\0{credential}"))[..32].to_string()
}

/// Why a credential or a session was refused (said to the caller: it names no secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// No boot-environment boot was started for this MAC (or it was ended).
    NoBoot,
    /// The credential or session does not match this MAC's current boot.
    Mismatch,
    /// The credential's lifetime is over.
    Expired,
    /// The request came from another address than the one the boot was given to.
    WrongAddress,
    /// The boot's task is closed.
    TaskClosed,
}

impl Refused {
    pub fn reason(&self) -> &'static str {
        match self {
            Refused::NoBoot => "the server started no boot-environment boot for this MAC",
            Refused::Mismatch => {
                "the credential or session does not belong to this MAC's current boot"
            }
            Refused::Expired => "this boot's credential expired before the agent's hello",
            Refused::WrongAddress => {
                "the request comes from another address than the one this boot was given to"
            }
            Refused::TaskClosed => "this boot's task is closed",
        }
    }
}

/// A new credential as issued to a boot script.
pub struct Issue<'a> {
    pub mac: Mac,
    /// The credential itself (random; only its hash is stored).
    pub credential: &'a str,
    /// Random; makes the session unguessable from the credential alone.
    pub salt: &'a str,
    /// The address the script was given to.
    pub ip: IpAddr,
    pub task: Option<i64>,
    pub now: i64,
    pub lifetime_secs: i64,
}

/// Records a new credential for `mac`, replacing (and so ending) any earlier boot's
/// credential and session.
pub fn issue(c: &Connection, i: &Issue<'_>) -> Result<(), DbError> {
    c.execute(
        "INSERT OR REPLACE INTO boot_creds (mac, cred_hash, ip, task, issued_at, expires_at, salt, session_hash, session_until)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, NULL)",
        params![
            i.mac.to_string(),
            sha256_hex(i.credential),
            i.ip.to_string(),
            i.task,
            i.now,
            i.now + i.lifetime_secs,
            i.salt,
        ],
    )
    .what("issue boot credential")?;
    Ok(())
}

struct Row {
    cred_hash: String,
    ip: String,
    task: Option<i64>,
    expires_at: i64,
    salt: String,
    session_hash: Option<String>,
    session_until: Option<i64>,
}

fn row(c: &Connection, mac: Mac) -> Result<Option<Row>, DbError> {
    c.query_row(
        "SELECT cred_hash, ip, task, expires_at, salt, session_hash, session_until FROM boot_creds WHERE mac = ?1",
        [mac.to_string()],
        |r| {
            Ok(Row {
                cred_hash: r.get(0)?,
                ip: r.get(1)?,
                task: r.get(2)?,
                expires_at: r.get(3)?,
                salt: r.get(4)?,
                session_hash: r.get(5)?,
                session_until: r.get(6)?,
            })
        },
    )
    .optional()
    .what("read boot credential")
}

fn task_open(c: &Connection, task: Option<i64>) -> Result<bool, DbError> {
    Ok(match task {
        None => true,
        Some(id) => super::tasks::get(c, id)?.is_some_and(|t| t.state.is_open()),
    })
}

/// The hello's exchange: `credential` from `ip` for this boot's session.
pub fn exchange(
    c: &Connection,
    mac: Mac,
    credential: Option<&str>,
    ip: IpAddr,
    now: i64,
) -> Result<Result<String, Refused>, DbError> {
    let Some(r) = row(c, mac)? else {
        return Ok(Err(Refused::NoBoot));
    };
    let Some(credential) = credential else {
        return Ok(Err(Refused::Mismatch));
    };
    if !same(&sha256_hex(credential), &r.cred_hash) {
        return Ok(Err(Refused::Mismatch));
    }
    if r.ip != ip.to_string() {
        return Ok(Err(Refused::WrongAddress));
    }
    if now > r.expires_at {
        return Ok(Err(Refused::Expired));
    }
    if !task_open(c, r.task)? {
        return Ok(Err(Refused::TaskClosed));
    }
    let session = session_of(credential, &r.salt);
    if r.session_hash.is_none() {
        let until = match r.task {
            Some(_) => None,
            None => Some(now + TASKLESS_SESSION_SECS),
        };
        c.execute(
            "UPDATE boot_creds SET session_hash = ?2, session_until = ?3 WHERE mac = ?1",
            params![mac.to_string(), sha256_hex(&session), until],
        )
        .what("start agent session")?;
    }
    Ok(Ok(session))
}

/// The check of every agent request after the hello: `session` from `ip` is this boot's.
/// With `closed_ok` a session whose task is closed still passes (the task reports answer
/// 409 for it, which tells the agent to stop); else it is refused.
pub fn check(
    c: &Connection,
    mac: Mac,
    session: Option<&str>,
    ip: IpAddr,
    now: i64,
    closed_ok: bool,
) -> Result<Result<Option<i64>, Refused>, DbError> {
    let Some(r) = row(c, mac)? else {
        return Ok(Err(Refused::NoBoot));
    };
    let (Some(session), Some(stored)) = (session, &r.session_hash) else {
        return Ok(Err(Refused::Mismatch));
    };
    if !same(&sha256_hex(session), stored) {
        return Ok(Err(Refused::Mismatch));
    }
    if r.ip != ip.to_string() {
        return Ok(Err(Refused::WrongAddress));
    }
    if r.session_until.is_some_and(|u| now > u) {
        return Ok(Err(Refused::Expired));
    }
    if !closed_ok && !task_open(c, r.task)? {
        return Ok(Err(Refused::TaskClosed));
    }
    Ok(Ok(r.task))
}

/// A session another node made (a relay passing on the hello reply records the session it
/// carried, to authenticate the agent's chunk requests itself).
pub fn adopt(
    c: &Connection,
    mac: Mac,
    session: &str,
    ip: IpAddr,
    task: Option<i64>,
    now: i64,
) -> Result<(), DbError> {
    c.execute(
        "INSERT OR REPLACE INTO boot_creds (mac, cred_hash, ip, task, issued_at, expires_at, salt, session_hash, session_until)
         VALUES (?1, '', ?2, ?3, ?4, ?4, '', ?5, ?6)",
        params![
            mac.to_string(),
            ip.to_string(),
            task,
            now,
            sha256_hex(session),
            now + TASKLESS_SESSION_SECS.max(24 * 3600),
        ],
    )
    .what("record agent session")?;
    Ok(())
}

/// An adopted session's check (the relay does not know whether the task is still open: the
/// server above refuses reports of closed tasks; the session lasts at most a day).
pub fn check_adopted(
    c: &Connection,
    mac: Mac,
    session: &str,
    ip: IpAddr,
    now: i64,
) -> Result<bool, DbError> {
    Ok(row(c, mac)?.is_some_and(|r| r.holds(session, ip, now)))
}

impl Row {
    /// `session` from `ip` is this row's, and not expired.
    fn holds(&self, session: &str, ip: IpAddr, now: i64) -> bool {
        self.session_hash
            .as_deref()
            .is_some_and(|s| same(&sha256_hex(session), s))
            && self.ip == ip.to_string()
            && self.session_until.is_none_or(|u| now <= u)
    }

    /// This node issued the credential itself (a relay working alone) rather than adopting a
    /// session another node made ([`adopt`] stores no credential).
    fn issued_here(&self) -> bool {
        !self.cred_hash.is_empty()
    }
}

/// Whether this node issued `mac`'s current credential itself (a relay working alone), rather
/// than adopting a session another node made.
pub fn issued_here(c: &Connection, mac: Mac) -> Result<bool, DbError> {
    Ok(row(c, mac)?.is_some_and(|r| r.issued_here()))
}

/// A session of a boot this node started itself ([`issued_here`]), from `ip`, not expired.
pub fn started_here(
    c: &Connection,
    mac: Mac,
    session: &str,
    ip: IpAddr,
    now: i64,
) -> Result<bool, DbError> {
    Ok(row(c, mac)?.is_some_and(|r| r.issued_here() && r.holds(session, ip, now)))
}

/// Whether a boot-script request from `from` comes from the machine itself: the address a
/// DHCP service saw it at (`seen`), or, when none saw it, an address in a subnet of
/// `trust_without_dhcp`. A request from this host (loopback) is no PC on a site LAN: trusted.
pub fn from_the_machine(seen: Option<IpAddr>, from: IpAddr, trust_without_dhcp: &[String]) -> bool {
    from.is_loopback()
        || match seen {
            Some(ip) => ip == from,
            None => trust_without_dhcp
                .iter()
                .any(|cidr| super::sites::cidr_contains(cidr, from)),
        }
}

/// Records that a DHCP service saw `mac` at `ip` (an address it acknowledged, or one a
/// client asked for in proxy mode), behind switch port `circuit` (option 82) if known.
pub fn record_seen(
    c: &Connection,
    mac: Mac,
    ip: IpAddr,
    now: i64,
    circuit: Option<&str>,
) -> Result<(), DbError> {
    c.execute(
        "INSERT OR REPLACE INTO dhcp_seen (mac, ip, at, circuit) VALUES (?1, ?2, ?3, ?4)",
        params![mac.to_string(), ip.to_string(), now, circuit],
    )
    .what("record DHCP address")?;
    Ok(())
}

/// The address a DHCP service saw `mac` at, at or after `since`, and the switch port (option
/// 82 circuit id) it saw it behind, if a relay agent said.
pub fn seen_behind(
    c: &Connection,
    mac: Mac,
    since: i64,
) -> Result<Option<(IpAddr, Option<String>)>, DbError> {
    let row: Option<(String, Option<String>)> = c
        .query_row(
            "SELECT ip, circuit FROM dhcp_seen WHERE mac = ?1 AND at >= ?2",
            params![mac.to_string(), since],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .what("read DHCP address")?;
    Ok(row.and_then(|(ip, circuit)| Some((ip.parse().ok()?, circuit))))
}

/// The address a DHCP service saw `mac` at, at or after `since`.
pub fn seen(c: &Connection, mac: Mac, since: i64) -> Result<Option<IpAddr>, DbError> {
    Ok(seen_behind(c, mac, since)?.map(|(ip, _)| ip))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 99, 0, 100));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 99, 0, 66));

    fn issued(c: &Connection, mac: Mac, task: Option<i64>) {
        issue(
            c,
            &Issue {
                mac,
                credential: "cred1",
                salt: "salt1",
                ip: A,
                task,
                now: 1000,
                lifetime_secs: 600,
            },
        )
        .unwrap();
    }

    #[test]
    fn a_credential_is_exchanged_once_per_boot_from_its_own_address_only() {
        let db = Db::open_in_memory().unwrap();
        let c = db.lock();
        let mac: Mac = "52:54:00:00:00:01".parse().unwrap();
        assert_eq!(
            exchange(&c, mac, Some("cred1"), A, 1000).unwrap(),
            Err(Refused::NoBoot)
        );
        issued(&c, mac, None);
        // another address, a wrong credential, none, too late: refused
        assert_eq!(
            exchange(&c, mac, Some("cred1"), B, 1001).unwrap(),
            Err(Refused::WrongAddress)
        );
        assert_eq!(
            exchange(&c, mac, Some("cred2"), A, 1001).unwrap(),
            Err(Refused::Mismatch)
        );
        assert_eq!(
            exchange(&c, mac, None, A, 1001).unwrap(),
            Err(Refused::Mismatch)
        );
        assert_eq!(
            exchange(&c, mac, Some("cred1"), A, 1601).unwrap(),
            Err(Refused::Expired)
        );
        // the hello, and its retry, get one session
        let s = exchange(&c, mac, Some("cred1"), A, 1001).unwrap().unwrap();
        let again = exchange(&c, mac, Some("cred1"), A, 1100).unwrap().unwrap();
        assert_eq!(s, again);
        assert_eq!(check(&c, mac, Some(&s), A, 1200, false).unwrap(), Ok(None));
        // the credential is no session, and the session only works from A
        assert_eq!(
            check(&c, mac, Some("cred1"), A, 1200, false).unwrap(),
            Err(Refused::Mismatch)
        );
        assert_eq!(
            check(&c, mac, Some(&s), B, 1200, false).unwrap(),
            Err(Refused::WrongAddress)
        );
        // a taskless session ends after its hours
        assert_eq!(
            check(
                &c,
                mac,
                Some(&s),
                A,
                1001 + TASKLESS_SESSION_SECS + 1,
                false
            )
            .unwrap(),
            Err(Refused::Expired)
        );
        // a new boot replaces the session
        issued(&c, mac, None);
        assert_eq!(
            check(&c, mac, Some(&s), A, 1200, false).unwrap(),
            Err(Refused::Mismatch)
        );
    }

    #[test]
    fn a_session_ends_with_its_task() {
        let db = Db::open_in_memory().unwrap();
        let mut c = db.lock();
        let mac: Mac = "52:54:00:00:00:02".parse().unwrap();
        crate::db::hosts::record_script_boot(
            &mut c,
            mac,
            &crate::db::hosts::BootFacts {
                firmware: None,
                arch: None,
                ip: None,
                agent_boot_time: None,
            },
            1,
        )
        .unwrap();
        c.execute(
            "INSERT INTO tasks (mac, kind, state, created_at, updated_at) VALUES (?1, 'capture', 'booting', 1, 1)",
            [mac.to_string()],
        )
        .unwrap();
        let task = c.last_insert_rowid();
        issued(&c, mac, Some(task));
        let s = exchange(&c, mac, Some("cred1"), A, 1001).unwrap().unwrap();
        assert_eq!(
            check(&c, mac, Some(&s), A, 99_999, false).unwrap(),
            Ok(Some(task))
        );
        c.execute("UPDATE tasks SET state = 'done' WHERE id = ?1", [task])
            .unwrap();
        assert_eq!(
            check(&c, mac, Some(&s), A, 1002, false).unwrap(),
            Err(Refused::TaskClosed)
        );
        // ...except for the task's own reports, which answer 409 (stop) for a closed task
        assert_eq!(
            check(&c, mac, Some(&s), A, 1002, true).unwrap(),
            Ok(Some(task))
        );
        // and a hello with the old credential is refused
        assert_eq!(
            exchange(&c, mac, Some("cred1"), A, 1003).unwrap(),
            Err(Refused::TaskClosed)
        );
    }

    #[test]
    fn dhcp_addresses_are_kept_per_mac_with_their_time() {
        let db = Db::open_in_memory().unwrap();
        let c = db.lock();
        let mac: Mac = "52:54:00:00:00:03".parse().unwrap();
        assert_eq!(seen(&c, mac, 0).unwrap(), None);
        record_seen(&c, mac, A, 100, None).unwrap();
        record_seen(&c, mac, B, 200, Some("Gi1/0/7")).unwrap();
        assert_eq!(
            seen_behind(&c, mac, 150)
                .unwrap()
                .and_then(|s| s.1)
                .as_deref(),
            Some("Gi1/0/7")
        );
        assert_eq!(seen_behind(&c, mac, 250).unwrap(), None);
        assert_eq!(seen(&c, mac, 150).unwrap(), Some(B));
        assert_eq!(seen(&c, mac, 201).unwrap(), None);
    }
}

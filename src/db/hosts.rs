//! Hosts (one row per MAC that ever network-booted) and their boots.

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;

use super::{DbError, QueryContext};
use crate::boot::script::Handoff;
use crate::mac::Mac;
use crate::proto::agent::Firmware;

/// A machine known by the MAC it network-boots from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Host {
    pub mac: Mac,
    /// The name staff gave it (`bootcast host name`); written into the restored system after
    /// a reimage where the image's post-deploy settings allow it.
    pub name: Option<String>,
    /// The site it belongs to (the relay it last booted through).
    pub site: Option<String>,
    /// CPU architecture (`x86_64`, ...), as the agent or iPXE reported it.
    pub arch: Option<String>,
    pub firmware: Option<Firmware>,
    #[serde(serialize_with = "crate::time::serialize_rfc3339")]
    pub first_boot: i64,
    #[serde(serialize_with = "crate::time::serialize_rfc3339")]
    pub last_boot: i64,
    pub last_ip: Option<String>,
    /// Network boots seen (iPXE script requests).
    pub boots: i64,
    /// When the agent first said hello: the host is registered from then on.
    #[serde(serialize_with = "crate::time::serialize_opt_rfc3339")]
    pub registered_at: Option<i64>,
    /// SMBIOS system UUID, vendor, model and serial, as the agent last reported them.
    pub smbios_uuid: Option<String>,
    pub vendor: Option<String>,
    pub model: Option<String>,
    pub serial: Option<String>,
    /// Another machine (or the same one with another NIC) took its place: `replaced_by`.
    #[serde(serialize_with = "crate::time::serialize_opt_rfc3339")]
    pub retired_at: Option<i64>,
    pub replaced_by: Option<String>,
    /// Marked broken by staff (`bootcast host broken`): a new machine of its room may take its
    /// place (a registration rule with `--replace-broken`).
    #[serde(serialize_with = "crate::time::serialize_opt_rfc3339")]
    pub broken_at: Option<i64>,
    /// The registration rule that waits for a staff approval (`bootcast host approve`).
    pub pending_rule: Option<i64>,
    /// The switch port (DHCP option 82 circuit id) it last booted behind.
    pub circuit: Option<String>,
}

impl Host {
    pub fn registered(&self) -> bool {
        self.registered_at.is_some()
    }
}

/// One step of one boot: `ipxe` (the boot script was fetched) or `agent` (the agent said hello).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostBoot {
    #[serde(serialize_with = "crate::time::serialize_rfc3339")]
    pub at: i64,
    pub stage: String,
    pub firmware: Option<Firmware>,
    pub arch: Option<String>,
    pub ip: Option<String>,
}

fn firmware_from(s: Option<String>) -> Option<Firmware> {
    s.and_then(|s| Firmware::parse(&s))
}

const HOST_COLUMNS: &str =
    "mac, arch, firmware, first_boot, last_boot, last_ip, boots, registered_at, name, site, \
     smbios_uuid, vendor, model, serial, retired_at, replaced_by, broken_at, pending_rule, circuit";

fn host_from_row(r: &Row<'_>) -> rusqlite::Result<Host> {
    let mac: String = r.get(0)?;
    Ok(Host {
        mac: mac.parse().map_err(|e: crate::mac::BadMac| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
        })?,
        arch: r.get(1)?,
        firmware: firmware_from(r.get(2)?),
        first_boot: r.get(3)?,
        last_boot: r.get(4)?,
        last_ip: r.get(5)?,
        boots: r.get(6)?,
        registered_at: r.get(7)?,
        name: r.get(8)?,
        site: r.get(9)?,
        smbios_uuid: r.get(10)?,
        vendor: r.get(11)?,
        model: r.get(12)?,
        serial: r.get(13)?,
        retired_at: r.get(14)?,
        replaced_by: r.get(15)?,
        broken_at: r.get(16)?,
        pending_rule: r.get(17)?,
        circuit: r.get(18)?,
    })
}

/// What is known about one boot step.
#[derive(Debug, Clone, Default)]
pub struct BootFacts<'a> {
    pub firmware: Option<Firmware>,
    /// The CPU architecture. From iPXE (`buildarch`: `i386` for undionly.kpxe even on x86-64
    /// machines) it is kept with the boot only; the agent's (`uname -m`) goes to the host.
    pub arch: Option<&'a str>,
    pub ip: Option<&'a str>,
    /// When the agent's kernel started (hello only), Unix seconds.
    pub agent_boot_time: Option<i64>,
}

/// Records that `mac` fetched its boot script: creates the host on its first boot.
pub fn record_script_boot(
    conn: &mut Connection,
    mac: Mac,
    facts: &BootFacts<'_>,
    now: i64,
) -> Result<Host, DbError> {
    record(conn, mac, facts, now, "ipxe", false)
}

/// Records the agent's hello: the host is registered from now on.
pub fn record_hello(
    conn: &mut Connection,
    mac: Mac,
    facts: &BootFacts<'_>,
    now: i64,
) -> Result<Host, DbError> {
    record(conn, mac, facts, now, "agent", true)
}

fn record(
    conn: &mut Connection,
    mac: Mac,
    facts: &BootFacts<'_>,
    now: i64,
    stage: &str,
    hello: bool,
) -> Result<Host, DbError> {
    let tx = conn.savepoint().what("begin")?;
    let m = mac.to_string();
    let fw = facts.firmware.map(Firmware::as_str);
    let host_arch = if hello { facts.arch } else { None };
    tx.execute(
        "INSERT INTO hosts (mac, arch, firmware, first_boot, last_boot, last_ip, boots)
         VALUES (?1, ?2, ?3, ?4, ?4, ?5, 0)
         ON CONFLICT(mac) DO UPDATE SET
            arch = coalesce(excluded.arch, arch),
            firmware = coalesce(excluded.firmware, firmware),
            last_boot = excluded.last_boot,
            last_ip = coalesce(excluded.last_ip, last_ip)",
        params![m, host_arch, fw, now, facts.ip],
    )
    .what("upsert host")?;
    if hello {
        tx.execute(
            "UPDATE hosts SET registered_at = coalesce(registered_at, ?2) WHERE mac = ?1",
            params![m, now],
        )
        .what("register host")?;
    } else {
        tx.execute("UPDATE hosts SET boots = boots + 1 WHERE mac = ?1", [&m])
            .what("count boot")?;
    }
    tx.execute(
        "INSERT INTO boots (mac, at, stage, firmware, arch, ip, agent_boot_time)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            m,
            now,
            stage,
            fw,
            facts.arch,
            facts.ip,
            facts.agent_boot_time
        ],
    )
    .what("insert boot")?;
    let host = tx
        .query_row(
            &format!("SELECT {HOST_COLUMNS} FROM hosts WHERE mac = ?1"),
            [&m],
            host_from_row,
        )
        .what("read host")?;
    tx.commit().what("commit")?;
    Ok(host)
}

pub fn get(conn: &Connection, mac: Mac) -> Result<Option<Host>, DbError> {
    conn.query_row(
        &format!("SELECT {HOST_COLUMNS} FROM hosts WHERE mac = ?1"),
        [mac.to_string()],
        host_from_row,
    )
    .optional()
    .what("get host")
}

/// How `mac` leaves for its disk on UEFI, if set: on the host, else on a group holding it
/// (`exit` if any of its groups says so: it is set for firmware that needs it), else on its
/// site. `None`: the server's `[boot] uefi_local`.
pub fn uefi_local(conn: &Connection, mac: Mac) -> Result<Option<Handoff>, DbError> {
    let m = mac.to_string();
    let found: Option<String> = conn
        .query_row(
            "SELECT COALESCE(h.uefi_local,
                (SELECT MAX(g.uefi_local) FROM group_members gm JOIN groups g ON g.name = gm.grp
                 WHERE gm.mac = h.mac AND g.uefi_local IS NOT NULL),
                (SELECT s.uefi_local FROM sites s WHERE s.name = h.site))
             FROM hosts h WHERE h.mac = ?1",
            [&m],
            |r| r.get(0),
        )
        .optional()
        .what("read uefi_local")?
        .flatten();
    Ok(found.as_deref().and_then(Handoff::parse))
}

/// Sets (`None`: clears, to inherit) how a host, group or site (`table`) leaves for its disk
/// on UEFI. False: no such row.
pub fn set_uefi_local(
    conn: &Connection,
    table: UefiLocalOf,
    key: &str,
    handoff: Option<Handoff>,
) -> Result<bool, DbError> {
    let (sql, what) = match table {
        UefiLocalOf::Host => ("UPDATE hosts SET uefi_local = ?2 WHERE mac = ?1", "host"),
        UefiLocalOf::Group => ("UPDATE groups SET uefi_local = ?2 WHERE name = ?1", "group"),
        UefiLocalOf::Site => ("UPDATE sites SET uefi_local = ?2 WHERE name = ?1", "site"),
    };
    let n = conn
        .execute(sql, rusqlite::params![key, handoff.map(Handoff::as_str)])
        .what(what)?;
    Ok(n > 0)
}

/// What [`set_uefi_local`] sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UefiLocalOf {
    Host,
    Group,
    Site,
}

pub fn list(conn: &Connection) -> Result<Vec<Host>, DbError> {
    let mut st = conn
        .prepare(&format!("SELECT {HOST_COLUMNS} FROM hosts ORDER BY mac"))
        .what("list hosts")?;
    let rows = st.query_map([], host_from_row).what("list hosts")?;
    rows.collect::<Result<_, _>>().what("list hosts")
}

/// Records the SMBIOS identity `mac`'s agent reported.
pub fn set_smbios(
    conn: &Connection,
    mac: Mac,
    s: &crate::proto::agent::Smbios,
) -> Result<(), DbError> {
    conn.execute(
        "UPDATE hosts SET smbios_uuid = ?2, vendor = ?3, model = ?4, serial = ?5 WHERE mac = ?1",
        params![mac.to_string(), s.uuid, s.vendor, s.model, s.serial],
    )
    .what("set smbios")?;
    Ok(())
}

/// The hosts (retired ones too) whose agent reported SMBIOS UUID `uuid`, oldest first.
pub fn with_uuid(conn: &Connection, uuid: &str) -> Result<Vec<Host>, DbError> {
    let mut st = conn
        .prepare(&format!(
            "SELECT {HOST_COLUMNS} FROM hosts WHERE smbios_uuid = ?1 ORDER BY first_boot, mac"
        ))
        .what("hosts by uuid")?;
    let rows = st.query_map([uuid], host_from_row).what("hosts by uuid")?;
    rows.collect::<Result<_, _>>().what("hosts by uuid")
}

/// Marks `mac` broken (or not): a new machine of one of its groups may take its place.
pub fn set_broken(conn: &Connection, mac: Mac, broken: bool, now: i64) -> Result<bool, DbError> {
    let n = conn
        .execute(
            "UPDATE hosts SET broken_at = CASE WHEN ?2 THEN coalesce(broken_at, ?3) END WHERE mac = ?1",
            params![mac.to_string(), broken, now],
        )
        .what("mark broken")?;
    Ok(n > 0)
}

/// Records the switch port (option 82 circuit id) `mac` boots behind.
pub fn set_circuit(conn: &Connection, mac: Mac, circuit: &str) -> Result<(), DbError> {
    conn.execute(
        "UPDATE hosts SET circuit = ?2 WHERE mac = ?1 AND circuit IS NOT ?2",
        params![mac.to_string(), circuit],
    )
    .what("set circuit")?;
    Ok(())
}

/// Sets (or clears) the registration rule waiting for a staff approval for `mac`.
pub fn set_pending_rule(conn: &Connection, mac: Mac, rule: Option<i64>) -> Result<(), DbError> {
    conn.execute(
        "UPDATE hosts SET pending_rule = ?2 WHERE mac = ?1",
        params![mac.to_string(), rule],
    )
    .what("set pending rule")?;
    Ok(())
}

/// Why `host replace` was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReplaceError {
    #[error("no host {0} is known: `bootcast host list` shows the known hosts")]
    NoHost(Mac),
    #[error("{0} and {1} are the same host")]
    Same(Mac, Mac),
    #[error("{0} is retired (replaced by {1}): replace {1} instead")]
    Retired(Mac, String),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// What [`replace`] moved.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Replaced {
    pub name: Option<String>,
    pub site: Option<String>,
    pub groups: Vec<String>,
    /// The old host's open tasks: moved to the new one, or left on the old MAC.
    pub tasks: Vec<i64>,
    pub tasks_moved: bool,
}

/// `new` takes `old`'s place: its name, groups, site, UEFI hand-off setting and, with
/// `move_tasks` (staff's `host replace`), its open tasks with their wake orders; `old` is
/// retired (`replaced_by` = `new`) and no longer broken. Its history (boots, events,
/// inventories) and the tasks not moved stay under its own MAC. Automatic replacements (the
/// same SMBIOS UUID, a rule's broken host) move no task: an agent's SMBIOS values can be
/// forged, and a task may carry a confidential image.
pub fn replace(
    conn: &mut Connection,
    old: Mac,
    new: Mac,
    now: i64,
    move_tasks: bool,
) -> Result<Replaced, ReplaceError> {
    if old == new {
        return Err(ReplaceError::Same(old, new));
    }
    let tx = conn.savepoint().what("begin")?;
    let o = get(&tx, old)?.ok_or(ReplaceError::NoHost(old))?;
    let n = get(&tx, new)?.ok_or(ReplaceError::NoHost(new))?;
    for h in [&o, &n] {
        if let (Some(_), Some(by)) = (h.retired_at, &h.replaced_by) {
            return Err(ReplaceError::Retired(h.mac, by.clone()));
        }
    }
    let (om, nm) = (old.to_string(), new.to_string());
    let groups: Vec<String> = {
        let mut st = tx
            .prepare("SELECT grp FROM group_members WHERE mac = ?1 ORDER BY grp")
            .what("groups of host")?;
        let rows = st.query_map([&om], |r| r.get(0)).what("groups of host")?;
        rows.collect::<Result<_, _>>().what("groups of host")?
    };
    tx.execute(
        "INSERT OR IGNORE INTO group_members (grp, mac) SELECT grp, ?2 FROM group_members WHERE mac = ?1",
        params![om, nm],
    )
    .what("move groups")?;
    tx.execute("DELETE FROM group_members WHERE mac = ?1", [&om])
        .what("move groups")?;
    let tasks: Vec<i64> = {
        let mut st = tx
            .prepare(
                "SELECT id FROM tasks WHERE mac = ?1 AND state IN ('pending','booting','running') ORDER BY id",
            )
            .what("open tasks")?;
        let rows = st.query_map([&om], |r| r.get(0)).what("open tasks")?;
        rows.collect::<Result<_, _>>().what("open tasks")?
    };
    if move_tasks {
        tx.execute(
            "UPDATE tasks SET mac = ?2 WHERE mac = ?1 AND state IN ('pending','booting','running')",
            params![om, nm],
        )
        .what("move tasks")?;
        tx.execute(
            "UPDATE wakes SET mac = ?2 WHERE mac = ?1 AND sent_at IS NULL",
            params![om, nm],
        )
        .what("move wake orders")?;
    }
    // the name is unique: off the old host first
    tx.execute(
        "UPDATE hosts SET name = NULL, retired_at = ?2, replaced_by = ?3, broken_at = NULL,
             pending_rule = NULL
         WHERE mac = ?1",
        params![om, now, nm],
    )
    .what("retire host")?;
    tx.execute(
        "UPDATE hosts SET name = ?2, site = coalesce(?3, site),
             uefi_local = coalesce(?4, uefi_local)
         WHERE mac = ?1",
        params![nm, o.name, o.site, uefi_local_raw(&tx, old)?],
    )
    .what("take the place")?;
    tx.commit().what("commit")?;
    Ok(Replaced {
        name: o.name,
        site: o.site,
        groups,
        tasks_moved: move_tasks,
        tasks,
    })
}

fn uefi_local_raw(conn: &Connection, mac: Mac) -> Result<Option<String>, DbError> {
    conn.query_row(
        "SELECT uefi_local FROM hosts WHERE mac = ?1",
        [mac.to_string()],
        |r| r.get(0),
    )
    .optional()
    .what("uefi_local")
    .map(Option::flatten)
}

/// Which hosts a page lists ([`page`]).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostQuery {
    /// Hosts of this site only.
    #[serde(default)]
    pub site: Option<String>,
    /// Hosts of this group only.
    #[serde(default)]
    pub group: Option<String>,
    /// Text searched (case-insensitively) in the MAC, name, last address, SMBIOS model and
    /// serial.
    #[serde(default)]
    pub q: Option<String>,
    /// Retired hosts too.
    #[serde(default)]
    pub all: bool,
    /// The page after this MAC (the previous page's `next`).
    #[serde(default)]
    pub after: Option<String>,
    /// Hosts per page: [`PAGE_DEFAULT`] unless given, at most [`PAGE_MAX`].
    #[serde(default)]
    pub limit: Option<u32>,
    /// The caller's sites (an operator's scope): hosts of these sites only. Not a query
    /// parameter: set from who asks.
    #[serde(skip)]
    pub scope: Option<Vec<String>>,
}

pub const PAGE_DEFAULT: u32 = 100;
pub const PAGE_MAX: u32 = 1000;

/// One page of hosts in MAC order, how many hosts match in all, and the MAC the next page
/// starts after (`None`: this is the last page).
#[derive(Debug, Clone, Serialize)]
pub struct HostPage {
    pub hosts: Vec<Host>,
    pub total: u64,
    pub next: Option<String>,
}

/// A page of the hosts `q` names, in MAC order (stable: a host added meanwhile shows on the
/// page its MAC falls on).
pub fn page(conn: &Connection, q: &HostQuery) -> Result<HostPage, DbError> {
    let mut wh = vec!["1 = 1".to_string()];
    let mut args: Vec<Box<dyn rusqlite::ToSql>> = Vec::new();
    let arg = |v: String, args: &mut Vec<Box<dyn rusqlite::ToSql>>| {
        args.push(Box::new(v));
        format!("?{}", args.len())
    };
    if !q.all {
        wh.push("h.retired_at IS NULL".into());
    }
    if let Some(s) = &q.site {
        let a = arg(s.clone(), &mut args);
        wh.push(format!("h.site = {a}"));
    }
    if let Some(sites) = &q.scope {
        // as every scoped listing does: the names as one JSON array
        let a = arg(
            serde_json::to_string(sites).expect("names serialise"),
            &mut args,
        );
        wh.push(format!("h.site IN (SELECT value FROM json_each({a}))"));
    }
    if let Some(g) = &q.group {
        let a = arg(g.clone(), &mut args);
        wh.push(format!(
            "h.mac IN (SELECT mac FROM group_members WHERE grp = {a})"
        ));
    }
    let text = q.q.as_deref().map(str::trim).filter(|t| !t.is_empty());
    if let Some(phrase) = text.and_then(trigram_phrase) {
        // three characters or more: the trigram index (migration 23) names the hosts
        let a = arg(phrase, &mut args);
        wh.push(format!(
            "h.mac IN (SELECT i.mac FROM host_search s \
             JOIN host_search_ids i ON i.id = s.rowid WHERE host_search MATCH {a})"
        ));
    } else if let Some(text) = text {
        // one or two characters: too short for trigrams, every host is read
        let a = arg(like_pattern(text), &mut args);
        wh.push(format!(
            "(h.mac LIKE {a} ESCAPE '\\' OR lower(h.name) LIKE {a} ESCAPE '\\' \
             OR h.last_ip LIKE {a} ESCAPE '\\' OR lower(h.model) LIKE {a} ESCAPE '\\' \
             OR lower(h.serial) LIKE {a} ESCAPE '\\')"
        ));
    }
    let filter = wh.join(" AND ");
    let base: Vec<&dyn rusqlite::ToSql> = args.iter().map(|b| b.as_ref()).collect();
    let total: i64 = conn
        .query_row(
            &format!("SELECT count(*) FROM hosts h WHERE {filter}"),
            base.as_slice(),
            |r| r.get(0),
        )
        .what("count hosts")?;
    let limit = q.limit.unwrap_or(PAGE_DEFAULT).clamp(1, PAGE_MAX);
    let after = q.after.clone().unwrap_or_default();
    let n = args.len();
    let sql = format!(
        "SELECT {} FROM hosts h WHERE {filter} AND h.mac > ?{} ORDER BY h.mac LIMIT ?{}",
        HOST_COLUMNS
            .split(',')
            .map(|c| format!("h.{}", c.trim()))
            .collect::<Vec<_>>()
            .join(", "),
        n + 1,
        n + 2
    );
    let mut st = conn.prepare(&sql).what("page hosts")?;
    let fetch = i64::from(limit) + 1;
    let mut all = base.clone();
    all.push(&after);
    all.push(&fetch);
    let mut hosts: Vec<Host> = st
        .query_map(all.as_slice(), host_from_row)
        .what("page hosts")?
        .collect::<Result<_, _>>()
        .what("page hosts")?;
    let next = if hosts.len() > limit as usize {
        hosts.truncate(limit as usize);
        hosts.last().map(|h| h.mac.to_string())
    } else {
        None
    };
    Ok(HostPage {
        hosts,
        total: total as u64,
        next,
    })
}

/// The FTS5 query that finds `text` anywhere in a field of `host_search`,
/// case-insensitively (one quoted phrase: nothing in it is an operator), or `None` when
/// `text` is shorter than the three characters a trigram needs.
fn trigram_phrase(text: &str) -> Option<String> {
    (text.chars().count() >= 3).then(|| format!("\"{}\"", text.replace('"', "\"\"")))
}

/// A `LIKE ... ESCAPE '\\'` pattern that finds `text` anywhere, case-insensitively (compare
/// with `lower(column)`): `%`, `_` and `\\` in it are taken literally.
pub fn like_pattern(text: &str) -> String {
    let escaped = text
        .trim()
        .to_lowercase()
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

/// Why a host name was refused.
#[derive(Debug, thiserror::Error)]
pub enum NameError {
    #[error("invalid host name {0:?}: use 1-63 characters from a-z A-Z 0-9 and '-', not starting or ending with '-' (one DNS label, as Windows and Linux accept)")]
    Invalid(String),
    #[error("host name {name:?} already belongs to {owner}; clear it there first (`bootcast host name {owner} --clear`)")]
    Taken { name: String, owner: Mac },
    #[error("no host {0} is known: network-boot it through bootcast once; `bootcast host list` shows the known hosts")]
    NoHost(Mac),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// A host name is one DNS label (RFC 1123): what `/etc/hostname` and Windows both take.
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Names `mac` (or clears its name with `None`). Names are unique (case-insensitively).
pub fn set_name(conn: &mut Connection, mac: Mac, name: Option<&str>) -> Result<Host, NameError> {
    if let Some(n) = name {
        if !valid_name(n) {
            return Err(NameError::Invalid(n.to_string()));
        }
    }
    let tx = conn.savepoint().what("begin")?;
    if let Some(n) = name {
        let owner: Option<String> = tx
            .query_row(
                "SELECT mac FROM hosts WHERE lower(name) = lower(?1) AND mac != ?2",
                params![n, mac.to_string()],
                |r| r.get(0),
            )
            .optional()
            .what("find host name")?;
        if let Some(o) = owner {
            return Err(NameError::Taken {
                name: n.to_string(),
                owner: o.parse().map_err(|_| NameError::Invalid(o.clone()))?,
            });
        }
    }
    let n = tx
        .execute(
            "UPDATE hosts SET name = ?2 WHERE mac = ?1",
            params![mac.to_string(), name],
        )
        .what("set host name")?;
    if n == 0 {
        return Err(NameError::NoHost(mac));
    }
    let host = tx
        .query_row(
            &format!("SELECT {HOST_COLUMNS} FROM hosts WHERE mac = ?1"),
            [mac.to_string()],
            host_from_row,
        )
        .what("read host")?;
    tx.commit().what("commit")?;
    Ok(host)
}

/// The most recent boots of `mac`, newest first.
pub fn boots(conn: &Connection, mac: Mac, limit: u32) -> Result<Vec<HostBoot>, DbError> {
    let mut st = conn
        .prepare(
            "SELECT at, stage, firmware, arch, ip FROM boots WHERE mac = ?1
             ORDER BY at DESC, id DESC LIMIT ?2",
        )
        .what("list boots")?;
    let rows = st
        .query_map(params![mac.to_string(), limit], |r| {
            Ok(HostBoot {
                at: r.get(0)?,
                stage: r.get(1)?,
                firmware: firmware_from(r.get(2)?),
                arch: r.get(3)?,
                ip: r.get(4)?,
            })
        })
        .what("list boots")?;
    rows.collect::<Result<_, _>>().what("list boots")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;

    #[test]
    fn first_boot_registers_nothing_hello_registers() {
        let db = Db::open_in_memory().unwrap();
        let mac: Mac = "52:54:00:00:00:01".parse().unwrap();
        let mut c = db.lock();
        assert!(get(&c, mac).unwrap().is_none());
        let h = record_script_boot(
            &mut c,
            mac,
            &BootFacts {
                firmware: Some(Firmware::Bios),
                arch: Some("i386"),
                ..Default::default()
            },
            100,
        )
        .unwrap();
        assert_eq!(
            h.arch, None,
            "iPXE's buildarch is not the host's architecture"
        );
        assert_eq!((h.first_boot, h.last_boot, h.boots), (100, 100, 1));
        assert!(!h.registered());
        let h = record_hello(
            &mut c,
            mac,
            &BootFacts {
                firmware: Some(Firmware::Bios),
                arch: Some("x86_64"),
                ip: Some("10.99.0.100"),
                agent_boot_time: Some(120),
            },
            130,
        )
        .unwrap();
        assert_eq!(h.registered_at, Some(130));
        assert_eq!(h.arch.as_deref(), Some("x86_64"));
        assert_eq!((h.first_boot, h.last_boot, h.boots), (100, 130, 1));
        // a later boot keeps what it does not know
        let h = record_script_boot(
            &mut c,
            mac,
            &BootFacts {
                arch: Some("i386"),
                ..Default::default()
            },
            200,
        )
        .unwrap();
        assert_eq!(h.arch.as_deref(), Some("x86_64"));
        assert_eq!(h.firmware, Some(Firmware::Bios));
        assert_eq!(h.last_ip.as_deref(), Some("10.99.0.100"));
        assert_eq!((h.boots, h.registered_at), (2, Some(130)));
        let b = boots(&c, mac, 10).unwrap();
        // newest first
        assert_eq!(
            b.iter()
                .map(|b| (b.at, b.stage.as_str()))
                .collect::<Vec<_>>(),
            [(200, "ipxe"), (130, "agent"), (100, "ipxe")]
        );
        assert_eq!(list(&c).unwrap(), vec![h.clone()]);
        let j = serde_json::to_value(&h).unwrap();
        assert_eq!(j["mac"], "52:54:00:00:00:01");
        assert_eq!(j["first_boot"], "1970-01-01T00:01:40Z");
        assert_eq!(j["firmware"], "bios");
    }

    #[test]
    fn names_are_dns_labels_and_unique() {
        let db = Db::open_in_memory().unwrap();
        let mut c = db.lock();
        let a: Mac = "52:54:00:00:00:01".parse().unwrap();
        let b: Mac = "52:54:00:00:00:02".parse().unwrap();
        assert!(matches!(
            set_name(&mut c, a, Some("pc-01")),
            Err(NameError::NoHost(_))
        ));
        for m in [a, b] {
            record_script_boot(&mut c, m, &BootFacts::default(), 1).unwrap();
        }
        for bad in ["", "-pc", "pc-", "pc_01", "pc.room", "é", &"x".repeat(64)] {
            assert!(
                matches!(set_name(&mut c, a, Some(bad)), Err(NameError::Invalid(_))),
                "{bad:?}"
            );
        }
        assert_eq!(
            set_name(&mut c, a, Some("Room12-PC01"))
                .unwrap()
                .name
                .as_deref(),
            Some("Room12-PC01")
        );
        let e = set_name(&mut c, b, Some("room12-pc01")).unwrap_err();
        assert!(e.to_string().contains("52:54:00:00:00:01"), "{e}");
        // renaming itself is fine; clearing frees the name
        set_name(&mut c, a, Some("room12-pc01")).unwrap();
        assert_eq!(set_name(&mut c, a, None).unwrap().name, None);
        assert_eq!(
            set_name(&mut c, b, Some("room12-pc01"))
                .unwrap()
                .name
                .as_deref(),
            Some("room12-pc01")
        );
        assert_eq!(
            get(&c, b).unwrap().unwrap().name.as_deref(),
            Some("room12-pc01")
        );
    }

    /// The trigram index answers as a scan of every host would, as hosts come, change and
    /// go; short and odd texts included.
    #[test]
    fn text_search_by_index_agrees_with_a_scan() {
        let db = Db::open_in_memory().unwrap();
        let mut c = db.lock();
        let mut macs = Vec::new();
        for n in 0..60u8 {
            let mac: Mac = format!("52:54:00:00:{:02x}:{:02x}", n / 7, n)
                .parse()
                .unwrap();
            record_script_boot(&mut c, mac, &BootFacts::default(), 1).unwrap();
            let name = format!("Salle{}-PC{:02}", n % 4, n);
            set_name(&mut c, mac, Some(&name)).unwrap();
            let model = ["NUC13ANK", "OptiPlex 3000", "ThinkCentre \"M70q\" 100%"][n as usize % 3];
            let smbios = crate::proto::agent::Smbios {
                vendor: Some("Intel".into()),
                model: Some(model.into()),
                serial: Some(format!("SN{n:04}")),
                ..Default::default()
            };
            set_smbios(&c, mac, &smbios).unwrap();
            macs.push(mac);
        }
        // a rename moves the host in the index; a host that goes leaves it
        set_name(&mut c, macs[5], Some("renamed-one")).unwrap();
        c.execute("DELETE FROM hosts WHERE mac = ?1", [macs[6].to_string()])
            .unwrap();
        let scan = |c: &Connection, text: &str| -> Vec<String> {
            let t = text.to_lowercase();
            list(c)
                .unwrap()
                .into_iter()
                .filter(|h| {
                    [
                        Some(h.mac.to_string()),
                        h.name.clone(),
                        h.last_ip.clone(),
                        h.model.clone(),
                        h.serial.clone(),
                    ]
                    .into_iter()
                    .flatten()
                    .any(|f| f.to_lowercase().contains(&t))
                })
                .map(|h| h.mac.to_string())
                .collect()
        };
        for text in [
            "salle2",
            "PC1",
            "pc-",
            "renamed",
            "salle1-pc05",
            ":0a",
            "nuc",
            "\"m70q\"",
            "100%",
            "sn00",
            "5",
            "0:",
            "ZZZ",
            "salle0-pc06",
        ] {
            let want = scan(&c, text);
            let got = page(
                &c,
                &HostQuery {
                    q: Some(text.into()),
                    limit: Some(PAGE_MAX),
                    ..Default::default()
                },
            )
            .unwrap();
            let macs: Vec<String> = got.hosts.iter().map(|h| h.mac.to_string()).collect();
            assert_eq!(macs, want, "{text:?}");
            assert_eq!(got.total, want.len() as u64, "{text:?}");
        }
        assert!(scan(&c, "renamed").len() == 1 && scan(&c, "salle1-pc05").is_empty());
    }
}

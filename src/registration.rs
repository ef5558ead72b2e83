//! What a machine gets at its agent's first hello, with no staff action: identity and
//! zero-touch registration.
//!
//! - **Identity**: a host is known by the MAC it boots from *and* by its SMBIOS system UUID.
//!   A new MAC whose UUID belongs to exactly one known host is that machine with another NIC
//!   (a replaced card, a USB dock): it takes the old host's place ([`hosts::replace`]: name,
//!   groups, site; not its open tasks, since SMBIOS values can be forged and a task may carry
//!   a confidential image) and the old MAC is retired, so the fleet keeps one host. A
//!   UUID that two active hosts report is a conflict, recorded as an event and never merged;
//!   placeholder UUIDs (all zeros, all FF, well-known board defaults, or one that several
//!   hosts report) identify nothing.
//! - **Registration rules** (`bootcast host rule add`): the first rule whose conditions hold
//!   (site, subnet, SMBIOS model and serial patterns) gives a new machine its group (room),
//!   its name (a pattern), and a reimage task with an image, at once or after one staff
//!   approval (`bootcast host approve`: SMBIOS values can be forged). A rule may instead make
//!   the new machine take the place of its room's host marked broken (`host broken`).
//!
//! [`first_hello`] runs inside the hello's database transaction; the caller emits the events.

use std::net::IpAddr;
use std::path::Path;

use rusqlite::Connection;
use serde::Serialize;

use crate::db::hosts::{self, Host, Replaced};
use crate::db::registration_rules::{self, RegistrationRule};
use crate::db::{groups, DbError, TaskKind};
use crate::mac::Mac;
use crate::proto::agent::Smbios;
use crate::schedule::{self, TaskRequest};

#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    #[error("--subnet {0:?} is not a subnet like 10.20.0.0/16 or fd99::/64")]
    Subnet(String),
    #[error(
        "--group {0:?}: use 1-64 characters from A-Z a-z 0-9 . _ - , not starting with '.' or '-'"
    )]
    Group(String),
    #[error("--name {0:?}: a host name pattern gives one DNS label (a-z 0-9 -) with {{n}} (the first free number, two digits), {{serial}} or {{mac}}")]
    Name(String),
    #[error("--replace-broken needs --group: the room whose broken host the new machine replaces")]
    ReplaceNeedsGroup,
    #[error("--approval without --image: there is nothing to approve")]
    ApprovalNeedsImage,
    #[error("no registration rule {0}: `bootcast host rule list` shows them")]
    NoRule(i64),
    #[error("{0} waits for no approval (`bootcast host list` shows the hosts that do)")]
    NothingToApprove(Mac),
    #[error("no host {0} is known: `bootcast host list` shows the known hosts")]
    NoHost(Mac),
    #[error(transparent)]
    Replace(#[from] hosts::ReplaceError),
    #[error(transparent)]
    Schedule(#[from] schedule::ScheduleError),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// What became of a first hello (or of any hello, for identity conflicts).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Outcome {
    /// This MAC is a known machine with another NIC: it took the place of that host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub same_machine: Option<(Mac, Replaced)>,
    /// Other active hosts report the same SMBIOS UUID: nothing was merged.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conflict: Vec<Mac>,
    /// The registration rule that applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<Applied>,
}

impl Outcome {
    /// A task now waits for this machine (the hello answers "reboot" so it boots it).
    pub fn task_waits(&self) -> bool {
        self.rule.as_ref().is_some_and(|a| a.task.is_some())
    }
}

/// What a registration rule gave a new machine.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Applied {
    pub rule: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// It took the place of this broken host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaced: Option<Mac>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<i64>,
    /// The image waits for a staff approval.
    pub waits_approval: bool,
    /// Why part of the rule could not be applied (an unknown image...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// SMBIOS UUIDs that identify no machine: malformed, all zeros, all FF, or a default that
/// many boards ship with.
pub fn placeholder_uuid(uuid: &str) -> bool {
    let hex: String = uuid.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return true;
    }
    let hex = hex.to_ascii_lowercase();
    hex.chars().all(|c| c == '0')
        || hex.chars().all(|c| c == 'f')
        || hex == "03000200040005000006000700080009"
}

/// Runs at every hello of `mac` (`registered_before`: it had said hello before), after the
/// hello was recorded: records its SMBIOS identity; a new MAC of a known machine takes that
/// host's place; else a new machine gets the first registration rule that matches.
pub fn on_hello(
    conn: &mut Connection,
    data: &Path,
    host: &Host,
    registered_before: bool,
    smbios: Option<&Smbios>,
    ip: IpAddr,
    now: i64,
) -> Result<Outcome, RegistrationError> {
    let mut out = Outcome::default();
    let mac = host.mac;
    if let Some(s) = smbios {
        hosts::set_smbios(conn, mac, s)?;
    }
    let uuid = smbios
        .and_then(|s| s.uuid.as_deref())
        .filter(|u| !placeholder_uuid(u))
        .map(str::to_ascii_lowercase);
    if let Some(uuid) = &uuid {
        let others: Vec<Host> = hosts::with_uuid(conn, uuid)?
            .into_iter()
            .filter(|h| h.mac != mac && h.retired_at.is_none() && h.registered())
            .collect();
        match others.as_slice() {
            [] => {}
            [old] if !registered_before => {
                let moved = hosts::replace(conn, old.mac, mac, now, false)?;
                out.same_machine = Some((old.mac, moved));
                return Ok(out);
            }
            // two active MACs (or more) report this UUID: cloned firmware, or a machine
            // booting from a second NIC staff already know; staff decide
            _ => out.conflict = others.iter().map(|h| h.mac).collect(),
        }
    }
    if registered_before || host.retired_at.is_some() {
        return Ok(out);
    }
    let facts = Facts {
        site: host.site.as_deref(),
        circuit: host.circuit.as_deref(),
        ip,
        smbios,
        mac,
    };
    if let Some(rule) = registration_rules::list(conn)?
        .into_iter()
        .find(|r| facts.matches(r))
    {
        out.rule = Some(apply(conn, data, &rule, &facts, now)?);
    }
    Ok(out)
}

/// What a rule's conditions look at.
struct Facts<'a> {
    site: Option<&'a str>,
    /// The switch port it booted behind (DHCP option 82).
    circuit: Option<&'a str>,
    ip: IpAddr,
    smbios: Option<&'a Smbios>,
    mac: Mac,
}

impl Facts<'_> {
    fn matches(&self, r: &RegistrationRule) -> bool {
        let field = |f: fn(&Smbios) -> Option<&String>| self.smbios.and_then(f);
        r.site.as_deref().is_none_or(|s| self.site == Some(s))
            && r.subnet
                .as_deref()
                .is_none_or(|c| crate::db::sites::cidr_contains(c, self.ip.to_canonical()))
            && r.model
                .as_deref()
                .is_none_or(|p| field(|s| s.model.as_ref()).is_some_and(|v| glob(p, v)))
            && r.serial
                .as_deref()
                .is_none_or(|p| field(|s| s.serial.as_ref()).is_some_and(|v| glob(p, v)))
            && r.circuit
                .as_deref()
                .is_none_or(|p| self.circuit.is_some_and(|v| glob(p, v)))
    }
}

fn apply(
    conn: &mut Connection,
    data: &Path,
    r: &RegistrationRule,
    facts: &Facts<'_>,
    now: i64,
) -> Result<Applied, RegistrationError> {
    let mac = facts.mac;
    let mut a = Applied {
        rule: r.id,
        group: r.group.clone(),
        ..Default::default()
    };
    // the room's broken host, if the rule says the new machine replaces it
    let broken = match (&r.group, r.replace_broken) {
        (Some(g), true) => groups::members(conn, g)?
            .into_iter()
            .filter(|m| *m != mac)
            .map(|m| hosts::get(conn, m))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .flatten()
            .find(|h| h.broken_at.is_some() && h.retired_at.is_none()),
        _ => None,
    };
    if let Some(old) = broken {
        let moved = hosts::replace(conn, old.mac, mac, now, false)?;
        a.replaced = Some(old.mac);
        a.name = moved.name;
    } else {
        if let Some(g) = &r.group {
            groups::add(conn, g, &[mac], now)?;
        }
        if let Some(pattern) = &r.name {
            match name_for(conn, pattern, facts) {
                Ok(Some(n)) => {
                    hosts::set_name(conn, mac, Some(&n)).map_err(|e| match e {
                        hosts::NameError::Db(d) => RegistrationError::Db(d),
                        e => RegistrationError::Name(e.to_string()),
                    })?;
                    a.name = Some(n);
                }
                Ok(None) => a.error = Some(format!("no free name for pattern {pattern:?}")),
                Err(e) => a.error = Some(e.to_string()),
            }
        }
    }
    if let Some(image) = &r.image {
        if r.approval {
            hosts::set_pending_rule(conn, mac, Some(r.id))?;
            a.waits_approval = true;
        } else {
            match reimage(conn, data, mac, image, r.then, now) {
                Ok(task) => a.task = Some(task),
                Err(e) => a.error = Some(e.to_string()),
            }
        }
    }
    Ok(a)
}

/// A reimage task for `mac` with `image` (its newest approved version), replacing its open ones.
fn reimage(
    conn: &mut Connection,
    data: &Path,
    mac: Mac,
    image: &str,
    then: Option<crate::proto::agent::After>,
    now: i64,
) -> Result<i64, schedule::ScheduleError> {
    let req = TaskRequest {
        kind: TaskKind::Reimage,
        host: Some(mac.to_string()),
        group: None,
        image: image.to_string(),
        at: None,
        replace: true,
        multicast: None,
        wake: None,
        then,
    };
    let made = schedule::create(conn, data, &req, now)?;
    Ok(made.first().map(|t| t.id).unwrap_or_default())
}

/// The name `pattern` gives: `{serial}` and `{mac}` filled in, `{n}` the first number (two
/// digits) whose name is free; `None` when 1-999 are all taken.
fn name_for(
    conn: &Connection,
    pattern: &str,
    facts: &Facts<'_>,
) -> Result<Option<String>, RegistrationError> {
    let serial: String = facts
        .smbios
        .and_then(|s| s.serial.as_deref())
        .unwrap_or("")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect::<String>()
        .to_ascii_lowercase();
    let mac: String = facts
        .mac
        .to_string()
        .chars()
        .filter(|c| *c != ':')
        .collect();
    let base = pattern.replace("{serial}", &serial).replace("{mac}", &mac);
    if !base.contains("{n}") {
        if !hosts::valid_name(&base) {
            return Err(RegistrationError::Name(base));
        }
        return Ok((!name_taken(conn, &base, facts.mac)?).then_some(base));
    }
    for n in 1..1000 {
        let name = base.replace("{n}", &format!("{n:02}"));
        if !hosts::valid_name(&name) {
            return Err(RegistrationError::Name(pattern.to_string()));
        }
        if !name_taken(conn, &name, facts.mac)? {
            return Ok(Some(name));
        }
    }
    Ok(None)
}

fn name_taken(conn: &Connection, name: &str, mac: Mac) -> Result<bool, DbError> {
    use crate::db::QueryContext;
    use rusqlite::OptionalExtension;
    Ok(conn
        .query_row(
            "SELECT 1 FROM hosts WHERE lower(name) = lower(?1) AND mac != ?2 LIMIT 1",
            rusqlite::params![name, mac.to_string()],
            |_| Ok(()),
        )
        .optional()
        .what("find host name")?
        .is_some())
}

/// `*` (any run) and `?` (one character), case-insensitive.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (
        pattern.to_lowercase().chars().collect(),
        text.to_lowercase().chars().collect(),
    );
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Checks and stores a rule.
pub fn add(
    conn: &Connection,
    r: &RegistrationRule,
    now: i64,
) -> Result<RegistrationRule, RegistrationError> {
    if let Some(c) = &r.subnet {
        let ok = c.split_once('/').is_some_and(|(net, len)| {
            match (net.parse::<IpAddr>(), len.parse::<u32>()) {
                (Ok(IpAddr::V4(_)), Ok(l)) => l <= 32,
                (Ok(IpAddr::V6(_)), Ok(l)) => l <= 128,
                _ => false,
            }
        });
        if !ok {
            return Err(RegistrationError::Subnet(c.clone()));
        }
    }
    if let Some(g) = &r.group {
        if !groups::valid_name(g) {
            return Err(RegistrationError::Group(g.clone()));
        }
    }
    if let Some(n) = &r.name {
        let sample = n
            .replace("{n}", "01")
            .replace("{serial}", "s")
            .replace("{mac}", "525400000001");
        if !hosts::valid_name(&sample) {
            return Err(RegistrationError::Name(n.clone()));
        }
    }
    if r.replace_broken && r.group.is_none() {
        return Err(RegistrationError::ReplaceNeedsGroup);
    }
    if r.approval && r.image.is_none() {
        return Err(RegistrationError::ApprovalNeedsImage);
    }
    let id = registration_rules::create(conn, r, now)?;
    Ok(RegistrationRule { id, ..r.clone() })
}

/// Removes rule `id`.
pub fn remove(conn: &Connection, id: i64) -> Result<(), RegistrationError> {
    if !registration_rules::remove(conn, id)? {
        return Err(RegistrationError::NoRule(id));
    }
    Ok(())
}

/// Staff approve `mac`'s registration: its rule's reimage task is made; returns its id.
pub fn approve(
    conn: &mut Connection,
    data: &Path,
    mac: Mac,
    now: i64,
) -> Result<i64, RegistrationError> {
    let host = hosts::get(conn, mac)?.ok_or(RegistrationError::NoHost(mac))?;
    let rule = host
        .pending_rule
        .ok_or(RegistrationError::NothingToApprove(mac))?;
    let r = registration_rules::get(conn, rule)?.ok_or(RegistrationError::NoRule(rule))?;
    let image = r
        .image
        .as_deref()
        .ok_or(RegistrationError::NothingToApprove(mac))?;
    let task = reimage(conn, data, mac, image, r.then, now)?;
    hosts::set_pending_rule(conn, mac, None)?;
    Ok(task)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;

    const UUID: &str = "6f1c2b3a-0000-4000-8000-0000000000a1";

    fn hello(
        c: &mut Connection,
        mac: &str,
        smbios: Option<&Smbios>,
        ip: &str,
        now: i64,
    ) -> (Host, Outcome) {
        let mac: Mac = mac.parse().unwrap();
        let before = hosts::get(c, mac).unwrap().is_some_and(|h| h.registered());
        let host = hosts::record_hello(c, mac, &Default::default(), now).unwrap();
        let data = tempfile::tempdir().unwrap();
        let out = on_hello(
            c,
            data.path(),
            &host,
            before,
            smbios,
            ip.parse().unwrap(),
            now,
        )
        .unwrap();
        (hosts::get(c, mac).unwrap().unwrap(), out)
    }

    fn smbios(uuid: &str, model: &str, serial: &str) -> Smbios {
        Smbios {
            uuid: Some(uuid.into()),
            vendor: Some("Intel".into()),
            model: Some(model.into()),
            serial: Some(serial.into()),
        }
    }

    #[test]
    fn placeholders_identify_nothing() {
        assert!(placeholder_uuid("00000000-0000-0000-0000-000000000000"));
        assert!(placeholder_uuid("FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF"));
        assert!(placeholder_uuid("03000200-0400-0500-0006-000700080009"));
        assert!(placeholder_uuid("not-a-uuid"));
        assert!(!placeholder_uuid(UUID));
    }

    #[test]
    fn globs() {
        assert!(glob("NUC*", "nuc11TNHi5"));
        assert!(glob("*TNH?5", "NUC11TNHi5"));
        assert!(!glob("NUC1?", "NUC11TNHi5"));
        assert!(glob("*", ""));
    }

    /// A new NIC of a known machine (same UUID) takes its host's place; a second active MAC
    /// with that UUID is a conflict; a placeholder UUID merges nothing.
    #[test]
    fn a_new_mac_of_a_known_machine_stays_one_host() {
        let db = Db::open_in_memory().unwrap();
        let mut c = db.lock();
        let id = smbios(UUID, "NUC11", "G6AB1");
        let (a, _) = hello(&mut c, "52:54:00:99:0c:01", Some(&id), "10.99.0.5", 10);
        hosts::set_name(&mut c, a.mac, Some("r1-pc01")).unwrap();
        groups::add(&mut c, "r1", &[a.mac], 10).unwrap();
        let (b, out) = hello(&mut c, "52:54:00:99:0c:02", Some(&id), "10.99.0.6", 20);
        assert_eq!(out.same_machine.as_ref().unwrap().0, a.mac, "{out:?}");
        assert_eq!(b.name.as_deref(), Some("r1-pc01"));
        assert_eq!(groups::members(&c, "r1").unwrap(), vec![b.mac]);
        let a = hosts::get(&c, a.mac).unwrap().unwrap();
        assert_eq!(a.replaced_by.as_deref(), Some("52:54:00:99:0c:02"));
        assert!(a.retired_at.is_some() && a.name.is_none());
        // a dock: its MAC takes the place in turn; the retired NIC booting again while the
        // dock's MAC is active is a conflict, not a merge
        let (d, out) = hello(&mut c, "52:54:00:99:0c:03", Some(&id), "10.99.0.7", 30);
        assert_eq!(out.same_machine.as_ref().unwrap().0, b.mac, "{out:?}");
        let (b, out) = hello(&mut c, "52:54:00:99:0c:02", Some(&id), "10.99.0.6", 40);
        assert_eq!(out.conflict, vec![d.mac], "{out:?}");
        assert!(b.retired_at.is_some() && out.rule.is_none());
        // all-zero UUIDs on two machines: two hosts
        let zero = smbios("00000000-0000-0000-0000-000000000000", "x", "y");
        hello(&mut c, "52:54:00:99:0c:04", Some(&zero), "10.99.0.8", 50);
        let (_, out) = hello(&mut c, "52:54:00:99:0c:05", Some(&zero), "10.99.0.9", 60);
        assert!(out.same_machine.is_none() && out.conflict.is_empty());
    }

    /// The first matching rule names the machine and puts it in its room; the second machine
    /// gets the next number; a rule on another subnet does not apply; a rule for a broken
    /// host's room makes the new machine take its place.
    #[test]
    fn rules_give_new_machines_their_room_and_name() {
        let db = Db::open_in_memory().unwrap();
        let mut c = db.lock();
        let rule = |subnet: &str, group: &str, name: &str| RegistrationRule {
            subnet: Some(subnet.into()),
            model: Some("NUC*".into()),
            group: Some(group.into()),
            name: Some(name.into()),
            ..Default::default()
        };
        add(&c, &rule("10.99.1.0/24", "admin", "adm-{n}"), 0).unwrap();
        add(&c, &rule("10.99.0.0/24", "r1", "r1-pc{n}"), 0).unwrap();
        let nuc = |u: &str| smbios(u, "NUC11TNHi5", "G6AB1");
        let (a, out) = hello(
            &mut c,
            "52:54:00:99:0d:01",
            Some(&nuc("6f1c2b3a-0000-4000-8000-0000000000b1")),
            "10.99.0.5",
            1,
        );
        assert_eq!(out.rule.as_ref().unwrap().rule, 2, "{out:?}");
        assert_eq!(a.name.as_deref(), Some("r1-pc01"));
        let (b, _) = hello(
            &mut c,
            "52:54:00:99:0d:02",
            Some(&nuc("6f1c2b3a-0000-4000-8000-0000000000b2")),
            "10.99.0.6",
            2,
        );
        assert_eq!(b.name.as_deref(), Some("r1-pc02"));
        // another model: no rule
        let (o, out) = hello(
            &mut c,
            "52:54:00:99:0d:03",
            Some(&smbios(
                "6f1c2b3a-0000-4000-8000-0000000000b3",
                "OptiPlex",
                "X",
            )),
            "10.99.0.7",
            3,
        );
        assert!(out.rule.is_none() && o.name.is_none());
        // a, broken; a rule replacing broken hosts of r1 (before the others)
        c.execute("DELETE FROM registration_rules", []).unwrap();
        add(
            &c,
            &RegistrationRule {
                group: Some("r1".into()),
                replace_broken: true,
                ..Default::default()
            },
            0,
        )
        .unwrap();
        hosts::set_broken(&c, a.mac, true, 5).unwrap();
        let (n, out) = hello(
            &mut c,
            "52:54:00:99:0d:04",
            Some(&nuc("6f1c2b3a-0000-4000-8000-0000000000b4")),
            "10.99.0.8",
            6,
        );
        assert_eq!(out.rule.as_ref().unwrap().replaced, Some(a.mac), "{out:?}");
        assert_eq!(n.name.as_deref(), Some("r1-pc01"));
        let a = hosts::get(&c, a.mac).unwrap().unwrap();
        assert!(a.retired_at.is_some() && a.broken_at.is_none());
        // bad rules
        assert!(matches!(
            add(&c, &rule("10.99.0.0/33", "r1", "x"), 0),
            Err(RegistrationError::Subnet(_))
        ));
        assert!(matches!(
            add(&c, &rule("10.99.0.0/24", "r1", "bad name{n}"), 0),
            Err(RegistrationError::Name(_))
        ));
    }
}

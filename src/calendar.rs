//! The calendar: recurring task rules (`bootcast task rule add`), shared by the CLI and the
//! server's runner. A rule reimages, captures or wakes a host or a group at each tick of a cron
//! schedule on the wall clock of a time zone (the site's, by default): `0 2 * * 1` in
//! `Europe/Paris` is Monday 02:00 in Paris in winter and in summer. A reimage rule naming an
//! image without a version takes, at each run, the newest approved version that the site's
//! relay holds complete (the newest approved one for hosts of no site or of several); its
//! tasks replace the hosts' open ones, and wake the hosts unless the rule says not to.
//!
//! [`run_due`] (the server calls it every 30 s; tests call it with their own clock) makes each
//! run [`AHEAD_SECS`] before its tick, timed for the tick, so that a site relay holds the
//! tasks and wake orders in its site book and runs them at the hour even if its WAN link is
//! down then; at the tick the run is recorded. A run that fails (an unknown image, an emptied
//! group) is recorded with its reason and stays flagged until acknowledged.

use std::path::Path;

use rusqlite::Connection;

use crate::db::task_rules::{self, TaskRule};
use crate::db::{DbError, TaskKind};
use crate::schedule::{self, ScheduleError, TaskRequest, WakeRequest};
use crate::time::Zone;

#[derive(Debug, thiserror::Error)]
pub enum CalendarError {
    #[error("--kind {0:?}: use reimage, capture, wake or inventory")]
    Kind(String),
    #[error("a {0} rule needs --image NAME")]
    NeedImage(&'static str),
    #[error("a wake or inventory rule takes no --image")]
    WakeImage,
    #[error("--every {0}")]
    Cron(String),
    #[error("--tz {0:?} is not a time zone of the tzdb (e.g. Europe/Paris)")]
    Zone(String),
    #[error("this server's time zone has no tzdb name (TZ is a fixed offset or a POSIX rule): give the rule one with --tz, e.g. --tz Europe/Paris")]
    NoZoneName,
    #[error("no task rule {0}: `bootcast task rule list` shows them")]
    NoRule(i64),
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// A new rule, as staff give it.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleRequest {
    pub kind: String,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub multicast: bool,
    /// Do not wake the hosts (default: wake them).
    #[serde(default)]
    pub no_wake: bool,
    pub every: String,
    /// Default: the time zone of the target's site, else this server's.
    #[serde(default)]
    pub tz: Option<String>,
    /// What the machines do once the rule's tasks are over.
    #[serde(default)]
    pub then: Option<crate::proto::agent::After>,
}

/// A rule with when it runs next (`None`: its zone is not in this machine's tzdb).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Listed {
    #[serde(flatten)]
    pub rule: TaskRule,
    #[serde(serialize_with = "crate::time::serialize_opt_rfc3339")]
    pub next_run: Option<i64>,
}

/// Checks and stores a rule; its first run is the first tick after `now`.
pub fn add(conn: &Connection, req: &RuleRequest, now: i64) -> Result<TaskRule, CalendarError> {
    let kind = match req.kind.as_str() {
        "reimage" | "capture" | "wake" | "inventory" => req.kind.clone(),
        k => return Err(CalendarError::Kind(k.into())),
    };
    match (kind.as_str(), &req.image) {
        ("reimage", None) => return Err(CalendarError::NeedImage("reimage")),
        ("capture", None) => return Err(CalendarError::NeedImage("capture")),
        ("wake" | "inventory", Some(_)) => return Err(CalendarError::WakeImage),
        _ => {}
    }
    let macs = schedule::targets(conn, req.host.as_deref(), req.group.as_deref())?;
    let zone = match &req.tz {
        Some(name) => Zone::named(name).ok_or_else(|| CalendarError::Zone(name.clone()))?,
        None => site_zone(conn, &macs)?.unwrap_or_else(Zone::local),
    };
    let tz = zone.name().ok_or(CalendarError::NoZoneName)?.to_string();
    crate::time::next_cron(&req.every, now, &zone).map_err(CalendarError::Cron)?;
    let mut rule = TaskRule {
        id: 0,
        created_at: now,
        kind,
        // the host as targets() read it (a MAC in its canonical spelling)
        host: req.host.as_ref().and(macs.first()).map(|m| m.to_string()),
        group: req.group.clone(),
        image: req.image.clone(),
        multicast: req.multicast,
        wake: !req.no_wake,
        every: req.every.clone(),
        tz,
        last_run: now,
        last_outcome: None,
        failed: false,
        then: req.then.map(|t| t.as_str().to_string()),
        prepared: None,
        prepared_outcome: None,
    };
    rule.id = task_rules::create(conn, &rule)?;
    Ok(rule)
}

/// The zone of the site of the first of `macs` that has one whose zone this machine knows.
fn site_zone(conn: &Connection, macs: &[crate::mac::Mac]) -> Result<Option<Zone>, DbError> {
    for &mac in macs {
        if let Some(site) = crate::db::hosts::get(conn, mac)?.and_then(|h| h.site) {
            if let Some(z) = crate::db::sites::get(conn, &site)?.and_then(|s| Zone::named(&s.tz)) {
                return Ok(Some(z));
            }
        }
    }
    Ok(None)
}

/// When `rule` runs next.
pub fn next_run(rule: &TaskRule) -> Option<i64> {
    let zone = Zone::named(&rule.tz)?;
    crate::time::next_cron(&rule.every, rule.last_run, &zone).ok()
}

/// Every rule with its next run.
pub fn list(conn: &Connection) -> Result<Vec<Listed>, DbError> {
    Ok(task_rules::list(conn)?
        .into_iter()
        .map(|rule| Listed {
            next_run: next_run(&rule),
            rule,
        })
        .collect())
}

/// How long before its hour a rule's run is made: its tasks and wake orders, timed for the
/// hour, reach the site relays' books by then, so a relay whose WAN link is down at that hour
/// still wakes and reimages the room.
pub const AHEAD_SECS: i64 = 12 * 3600;

/// Runs the calendar at `now` (the schedulers' clock):
/// - a rule whose next tick is within [`AHEAD_SECS`] has that run made ahead, timed for the
///   tick (tried again at each call until it works; at the tick, a run not made ahead is made
///   then); a reimage rule made ahead follows its image to the newest version the site's relay
///   holds complete, until the tick;
/// - a rule whose next tick has come runs, once whatever the ticks missed (a server down for a
///   week reimages once, not once per missed Monday).
///
/// Returns (rule, outcome, failed) for each run.
pub fn run_due(
    conn: &mut Connection,
    data: &Path,
    now: i64,
) -> Result<Vec<(i64, String, bool)>, DbError> {
    let mut ran = Vec::new();
    for rule in task_rules::list(conn)? {
        let Some(next) = next_run(&rule) else {
            continue;
        };
        if next <= now {
            let (outcome, failed) = match (&rule.prepared, &rule.prepared_outcome) {
                (Some(t), Some(made)) if *t == next => (
                    format!("{made} (made ahead for {})", crate::time::rfc3339(next)),
                    false,
                ),
                _ => match run_one(conn, data, &rule, now, None) {
                    Ok(did) => (did, false),
                    Err(e) => (e.to_string(), true),
                },
            };
            task_rules::set_run(conn, rule.id, now, &outcome, failed)?;
            ran.push((rule.id, outcome, failed));
        } else if next - now <= AHEAD_SECS {
            if rule.prepared == Some(next) {
                if let Err(e) = follow_image(conn, data, &rule, next) {
                    tracing::warn!(rule = rule.id, "task rule: {e}");
                }
                continue;
            }
            // a task of its hosts under way (booting, running) is not replaced hours ahead:
            // the run is made once it is over, or at the hour
            if rule.kind != "wake" && busy(conn, &rule)? {
                continue;
            }
            match run_one(conn, data, &rule, now, Some(next)) {
                Ok(did) => task_rules::set_prepared(conn, rule.id, next, &did)?,
                Err(e) => tracing::debug!(
                    rule = rule.id,
                    "task rule: its run at {} cannot be made ahead yet: {e}",
                    crate::time::rfc3339(next)
                ),
            }
        }
    }
    Ok(ran)
}

/// Whether a host `rule` targets has a task under way (booting or running).
fn busy(conn: &Connection, rule: &TaskRule) -> Result<bool, DbError> {
    let Ok(macs) = schedule::targets(conn, rule.host.as_deref(), rule.group.as_deref()) else {
        return Ok(false); // the run fails at the hour and says why
    };
    for mac in macs {
        if crate::db::tasks::open_for(conn, mac)?
            .is_some_and(|t| t.state != crate::db::TaskState::Pending)
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// What a reimage rule's image names at `now`: `NAME@VERSION` as given; else, when the
/// targets are hosts of one site whose relay holds a complete approved version, the newest of
/// those; else `NAME` (the newest approved version).
fn image_for(conn: &Connection, data: &Path, rule: &TaskRule) -> Result<String, ScheduleError> {
    let image = rule.image.clone().unwrap_or_default();
    if image.contains('@') {
        return Ok(image);
    }
    let macs = schedule::targets(conn, rule.host.as_deref(), rule.group.as_deref())?;
    let mut sites = std::collections::BTreeSet::new();
    for m in macs {
        sites.insert(crate::db::hosts::get(conn, m)?.and_then(|h| h.site));
    }
    let (1, Some(Some(site))) = (sites.len(), sites.into_iter().next()) else {
        return Ok(image);
    };
    let Some(relay) = crate::db::sites::get(conn, &site)?.and_then(|s| s.relay) else {
        return Ok(image);
    };
    let held = |id: &crate::store::VersionId| {
        relay
            .complete
            .iter()
            .any(|v| v.image == image && v.version == id.to_hex())
    };
    let newest = crate::store::Store::open(data)
        .and_then(|s| s.newest_approved_where(&image, held))
        .map_err(|cause| ScheduleError::Image {
            spec: image.clone(),
            cause,
        })?;
    Ok(match newest {
        Some(v) => format!("{image}@{}", v.id),
        None => image,
    })
}

/// A reimage rule's run made ahead for `tick` moves to the version its image names now (a
/// push that completed at the site since).
fn follow_image(
    conn: &mut Connection,
    data: &Path,
    rule: &TaskRule,
    tick: i64,
) -> Result<(), ScheduleError> {
    if rule.kind != "reimage" {
        return Ok(());
    }
    let spec = image_for(conn, data, rule)?;
    let v = crate::store::Store::open(data)
        .and_then(|s| s.resolve(&spec))
        .map_err(|cause| ScheduleError::Image {
            spec: spec.clone(),
            cause,
        })?;
    let n = task_rules::retarget(conn, rule.id, tick, &v.id.to_string())?;
    if n > 0 {
        tracing::info!(
            rule = rule.id,
            "task rule: its run at {} now reimages with {}@{} ({n} task(s))",
            crate::time::rfc3339(tick),
            v.name,
            v.id
        );
    }
    Ok(())
}

/// Makes `rule`'s run: at once, or timed for `at` (made ahead).
fn run_one(
    conn: &mut Connection,
    data: &Path,
    rule: &TaskRule,
    now: i64,
    at: Option<i64>,
) -> Result<String, ScheduleError> {
    let hosts: Vec<String> = rule.host.iter().cloned().collect();
    let at = at.map(crate::time::rfc3339);
    if rule.kind == "wake" {
        let w = schedule::wake(
            conn,
            &hosts,
            rule.group.as_deref(),
            at.as_deref(),
            &WakeRequest::default(),
            now,
        )?;
        return Ok(format!("{} host(s) to wake", w.len()));
    }
    let req = TaskRequest {
        kind: match rule.kind.as_str() {
            "capture" => TaskKind::Capture,
            "inventory" => TaskKind::Inventory,
            _ => TaskKind::Reimage,
        },
        host: rule.host.clone(),
        group: rule.group.clone(),
        image: if rule.kind == "reimage" {
            image_for(conn, data, rule)?
        } else {
            rule.image.clone().unwrap_or_default()
        },
        at,
        replace: true,
        multicast: rule.multicast.then(Default::default),
        wake: rule.wake.then(WakeRequest::default),
        then: rule
            .then
            .as_deref()
            .and_then(crate::proto::agent::After::parse),
    };
    let made = schedule::create(conn, data, &req, now)?;
    task_rules::tag_tasks(
        conn,
        rule.id,
        &made.iter().map(|t| t.id).collect::<Vec<_>>(),
    )?;
    let ids: Vec<String> = made.iter().map(|t| t.id.to_string()).collect();
    Ok(format!(
        "{} {} task(s): {}",
        made.len(),
        rule.kind,
        ids.join(", ")
    ))
}

/// Removes rule `id`.
pub fn remove(conn: &Connection, id: i64) -> Result<(), CalendarError> {
    if !task_rules::remove(conn, id)? {
        return Err(CalendarError::NoRule(id));
    }
    Ok(())
}

/// Acknowledges rule `id`'s failed run.
pub fn acknowledge(conn: &Connection, id: i64) -> Result<(), CalendarError> {
    if !task_rules::acknowledge(conn, id)? {
        return Err(CalendarError::NoRule(id));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;

    fn utc(s: &str) -> i64 {
        crate::time::parse_rfc3339(s).unwrap()
    }

    /// A wake rule "every Monday 02:00 Europe/Paris" run by a clock stepping 5 minutes at a
    /// time through both clock changes of 2027 (28 March, 31 October): it runs at 02:00 Paris
    /// time each Monday, 01:00 UTC in winter and 00:00 UTC in summer, once each.
    #[test]
    fn monday_0200_in_paris_across_the_2027_clock_changes() {
        let db = Db::open_in_memory().unwrap();
        let mut c = db.lock();
        let mac = "52:54:00:99:08:01";
        c.execute(
            "INSERT INTO hosts (mac, first_boot, last_boot) VALUES (?1, 0, 0)",
            [mac],
        )
        .unwrap();
        let data = tempfile::tempdir().unwrap();
        for (from, to, want) in [
            (
                "2027-03-15T12:00:00Z",
                "2027-04-06T12:00:00Z",
                vec![
                    "2027-03-22T01:00:00Z",
                    "2027-03-29T00:00:00Z",
                    "2027-04-05T00:00:00Z",
                ],
            ),
            (
                "2027-10-18T12:00:00Z",
                "2027-11-09T12:00:00Z",
                vec![
                    "2027-10-25T00:00:00Z",
                    "2027-11-01T01:00:00Z",
                    "2027-11-08T01:00:00Z",
                ],
            ),
        ] {
            let req = RuleRequest {
                kind: "wake".into(),
                host: Some(mac.into()),
                every: "0 2 * * 1".into(),
                tz: Some("Europe/Paris".into()),
                ..Default::default()
            };
            let rule = add(&c, &req, utc(from)).unwrap();
            assert_eq!(next_run(&rule), Some(utc(want[0])), "listed next run");
            let mut runs = Vec::new();
            let mut now = utc(from);
            while now <= utc(to) {
                for (id, outcome, failed) in run_due(&mut c, data.path(), now).unwrap() {
                    assert_eq!(id, rule.id);
                    assert!(!failed, "{outcome}");
                    runs.push(crate::time::rfc3339(now));
                }
                now += 300;
            }
            assert_eq!(runs, want);
            // each run's wake orders were made ahead, timed for the tick, once each
            let mut st = c
                .prepare("SELECT at FROM wakes WHERE mac = ?1 AND at BETWEEN ?2 AND ?3 ORDER BY at")
                .unwrap();
            let made: Vec<String> = st
                .query_map(rusqlite::params![mac, utc(from), utc(to)], |r| {
                    r.get::<_, i64>(0)
                })
                .unwrap()
                .map(|t| crate::time::rfc3339(t.unwrap()))
                .collect();
            assert_eq!(made, want, "wake orders");
            drop(st);
            remove(&c, rule.id).unwrap();
        }
    }

    #[test]
    fn bad_rules_are_refused_and_a_failed_run_stays_until_acknowledged() {
        let db = Db::open_in_memory().unwrap();
        let mut c = db.lock();
        let mac = "52:54:00:99:08:02";
        c.execute(
            "INSERT INTO hosts (mac, first_boot, last_boot) VALUES (?1, 0, 0)",
            [mac],
        )
        .unwrap();
        let base = RuleRequest {
            kind: "reimage".into(),
            host: Some(mac.into()),
            image: Some("win11".into()),
            every: "0 2 * * 1".into(),
            tz: Some("Europe/Paris".into()),
            ..Default::default()
        };
        let refused = |r: RuleRequest| add(&c, &r, 0).unwrap_err().to_string();
        assert!(refused(RuleRequest {
            kind: "dance".into(),
            ..base.clone()
        })
        .contains("reimage, capture, wake or inventory"));
        assert!(refused(RuleRequest {
            image: None,
            ..base.clone()
        })
        .contains("needs --image"));
        assert!(refused(RuleRequest {
            every: "0 25 * * *".into(),
            ..base.clone()
        })
        .contains("not a cron"));
        assert!(refused(RuleRequest {
            tz: Some("Mars/Olympus".into()),
            ..base.clone()
        })
        .contains("tzdb"));
        assert!(refused(RuleRequest {
            host: Some("52:54:00:99:08:03".into()),
            ..base.clone()
        })
        .contains("no host"));
        // no image win11 in this store: the run fails, says why, and stays flagged
        let data = tempfile::tempdir().unwrap();
        let rule = add(&c, &base, utc("2027-01-01T00:00:00Z")).unwrap();
        let ran = run_due(&mut c, data.path(), utc("2027-01-04T01:00:00Z")).unwrap();
        assert_eq!(ran.len(), 1);
        assert!(ran[0].2, "{ran:?}");
        let r = task_rules::get(&c, rule.id).unwrap().unwrap();
        assert!(
            r.failed && r.last_outcome.as_deref().unwrap().contains("win11"),
            "{r:?}"
        );
        acknowledge(&c, rule.id).unwrap();
        assert!(!task_rules::get(&c, rule.id).unwrap().unwrap().failed);
        // a task under way is not replaced hours ahead: the run is made once it is over
        c.execute("DELETE FROM task_rules", []).unwrap();
        c.execute(
            "INSERT INTO tasks (mac, kind, state, created_at, updated_at) VALUES (?1, 'capture', 'running', 0, 0)",
            [mac],
        )
        .unwrap();
        let running = c.last_insert_rowid();
        let inv = add(
            &c,
            &RuleRequest {
                kind: "inventory".into(),
                image: None,
                ..base.clone()
            },
            utc("2027-01-05T00:00:00Z"),
        )
        .unwrap();
        run_due(&mut c, data.path(), utc("2027-01-11T00:00:00Z")).unwrap();
        assert!(task_rules::get(&c, inv.id)
            .unwrap()
            .unwrap()
            .prepared
            .is_none());
        c.execute("UPDATE tasks SET state = 'done' WHERE id = ?1", [running])
            .unwrap();
        // once it is over, the inventory rule makes its inventory task (made ahead, timed for
        // the tick)
        run_due(&mut c, data.path(), utc("2027-01-11T00:00:01Z")).unwrap();
        let t = crate::db::tasks::list(&c, Some(mac.parse().unwrap()), false).unwrap();
        assert_eq!(t.len(), 1, "{t:?}");
        assert_eq!(t[0].kind, TaskKind::Inventory);
        assert_eq!(t[0].not_before, Some(utc("2027-01-11T01:00:00Z")));
        assert!(
            task_rules::get(&c, inv.id).unwrap().unwrap().prepared
                == Some(utc("2027-01-11T01:00:00Z"))
        );
        assert!(add(
            &c,
            &RuleRequest {
                kind: "inventory".into(),
                ..base.clone()
            },
            0
        )
        .unwrap_err()
        .to_string()
        .contains("takes no --image"));
        assert!(matches!(
            acknowledge(&c, 99),
            Err(CalendarError::NoRule(99))
        ));
    }
}

//! Creating pushes: image specs resolved to versions (with the bytes a relay holding none
//! needs), site names checked, and recurring pushes (`--every CRON`) run when due. The CLI
//! and the server's rule ticker share it.

use std::collections::HashSet;

use rusqlite::Connection;

use crate::db::pushes::{self, NewPush, Push, PushVersion, Rule};
use crate::db::{sites, DbError};
use crate::store::Store;
use crate::time::Zone;

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("there are no sites yet: `bootcast site add NAME ...` first")]
    NoSites,
    #[error("no site {0:?}; `bootcast site list` shows them")]
    NoSite(String),
    #[error("--sites names no site: give NAME,NAME or all")]
    EmptySites,
    #[error("--every {0:?} is not a cron expression: give 5 fields, minute hour day-of-month month day-of-week, e.g. \"0 20 * * 1-5\" (weekdays at 20:00 in the rule's --tz)")]
    BadCron(String),
    #[error("--tz {0:?} is not a time zone: give a tzdb name such as Europe/Paris (or UTC)")]
    BadZone(String),
    #[error("this server's time zone has no tzdb name (TZ is a rule or /etc/localtime is not a link into /usr/share/zoneinfo): give --tz, e.g. --tz Europe/Paris")]
    NoZoneName,
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// What a push is made of, before resolution.
#[derive(Debug, Clone)]
pub struct Request {
    /// `NAME` (newest version) or `NAME@VERSION`.
    pub images: Vec<String>,
    /// Site names, or `["all"]`.
    pub sites: Vec<String>,
    pub windows: Option<String>,
    pub rate: Option<u64>,
    pub deadline: Option<i64>,
}

/// The sites `names` stands for (`all`: every site), checked.
pub fn resolve_sites(conn: &Connection, names: &[String]) -> Result<Vec<String>, PlanError> {
    let all = sites::list(conn)?;
    if names.len() == 1 && names[0] == "all" {
        if all.is_empty() {
            return Err(PlanError::NoSites);
        }
        return Ok(all.into_iter().map(|s| s.name).collect());
    }
    let mut out: Vec<String> = Vec::new();
    for n in names {
        if !all.iter().any(|s| &s.name == n) {
            return Err(PlanError::NoSite(n.clone()));
        }
        if !out.contains(n) {
            out.push(n.clone());
        }
    }
    if out.is_empty() {
        return Err(PlanError::EmptySites);
    }
    Ok(out)
}

/// `specs` resolved now, each with the compressed bytes of its distinct chunks.
pub fn resolve_versions(store: &Store, specs: &[String]) -> Result<Vec<PushVersion>, PlanError> {
    let mut out = Vec::new();
    for spec in specs {
        let v = store.resolve(spec)?;
        if crate::store::catalog::awaiting_approval(&v.path) {
            return Err(crate::store::StoreError::AwaitsApproval {
                name: v.name.clone(),
                version: v.id.to_hex(),
            }
            .into());
        }
        let mut seen = HashSet::new();
        let bytes = v
            .manifest
            .chunks()
            .filter(|(_, id, _)| seen.insert(*id))
            .map(|(_, _, c)| u64::from(c))
            .sum();
        out.push(PushVersion {
            image: v.name.clone(),
            version: v.id.to_hex(),
            bytes,
        });
    }
    Ok(out)
}

pub fn create(
    conn: &mut Connection,
    store: &Store,
    req: &Request,
    now: i64,
) -> Result<Push, PlanError> {
    let sites = resolve_sites(conn, &req.sites)?;
    let versions = resolve_versions(store, &req.images)?;
    Ok(pushes::create(
        conn,
        &NewPush {
            versions,
            sites,
            windows: req.windows.clone(),
            rate: req.rate,
            deadline: req.deadline,
        },
        now,
    )?)
}

/// [`crate::time::next_cron`], with this module's error.
pub fn next_tick(every: &str, t: i64, zone: &Zone) -> Result<i64, PlanError> {
    crate::time::next_cron(every, t, zone).map_err(|_| PlanError::BadCron(every.into()))
}

/// The zone a rule's ticks are read in: its own, or `server`'s for a rule made before rules
/// had one; `None` if its zone is not in the tzdb here.
pub fn rule_zone(rule: &Rule, server: &Zone) -> Option<Zone> {
    match &rule.tz {
        Some(name) => Zone::named(name),
        None => Some(server.clone()),
    }
}

/// The zone of a new rule and the name it is stored with (the tzdb's spelling): `tz`
/// checked, else this server's zone.
pub fn rule_tz(tz: Option<&str>) -> Result<(String, Zone), PlanError> {
    let zone = match tz {
        Some(name) => Zone::named(name).ok_or_else(|| PlanError::BadZone(name.into()))?,
        None => Zone::local(),
    };
    let name = zone.name().ok_or(PlanError::NoZoneName)?.to_string();
    Ok((name, zone))
}

/// Runs the rules whose next tick after their last run has come, each in its own zone (`server`
/// for a rule without one): each makes a push when its images' versions differ from its last
/// push's. Returns the pushes made.
pub fn run_due_rules(
    conn: &mut Connection,
    store: &Store,
    now: i64,
    server: &Zone,
) -> Result<Vec<Push>, PlanError> {
    let mut made = Vec::new();
    for rule in pushes::rules(conn)? {
        let Some(zone) = rule_zone(&rule, server) else {
            tracing::warn!(
                rule = rule.id,
                "recurring push: time zone {:?} is not in the tzdb here; the rule waits",
                rule.tz
            );
            continue;
        };
        let Ok(tick) = next_tick(&rule.every, rule.last_run, &zone) else {
            continue;
        };
        if tick > now {
            continue;
        }
        let push = run_rule(conn, store, &rule, now)?;
        pushes::set_rule_run(conn, rule.id, now, push.as_ref().map(|p| p.id))?;
        made.extend(push);
    }
    Ok(made)
}

/// One run of `rule`: a push if the versions changed since its last push.
pub fn run_rule(
    conn: &mut Connection,
    store: &Store,
    rule: &Rule,
    now: i64,
) -> Result<Option<Push>, PlanError> {
    let versions = resolve_versions(store, &rule.images)?;
    if let Some(last) = rule
        .last_push
        .and_then(|id| pushes::get(conn, id).ok().flatten())
    {
        let key = |v: &[PushVersion]| {
            let mut k: Vec<(String, String)> = v
                .iter()
                .map(|v| (v.image.clone(), v.version.clone()))
                .collect();
            k.sort();
            k
        };
        if key(&last.versions) == key(&versions) {
            return Ok(None);
        }
    }
    let req = Request {
        images: rule.images.clone(),
        sites: rule.sites.clone(),
        windows: rule.windows.clone(),
        rate: rule.rate,
        deadline: None,
    };
    create(conn, store, &req, now).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_ticks_in_the_zone() {
        // 2026-11-23 12:00 UTC (a Monday)
        let noon = 1_795_392_000 + 12 * 3600;
        let utc = Zone::utc();
        assert_eq!(
            next_tick("0 20 * * *", noon, &utc).unwrap(),
            noon + 8 * 3600
        );
        assert_eq!(next_tick("*/15 * * * *", noon, &utc).unwrap(), noon + 900);
        // Europe/Paris is UTC+1 in November: 20:00 there is 19:00 UTC
        let paris = Zone::named("Europe/Paris").unwrap();
        assert_eq!(
            next_tick("0 20 * * *", noon, &paris).unwrap(),
            noon + 7 * 3600
        );
        for bad in [
            "nightly",
            "0 20 * *",
            "0 20 * * * Europe/Paris",
            "61 * * * *",
            "",
        ] {
            assert!(
                matches!(next_tick(bad, noon, &utc), Err(PlanError::BadCron(_))),
                "{bad}"
            );
        }
    }

    fn utc(s: &str) -> i64 {
        crate::time::parse_rfc3339(s).unwrap()
    }

    /// The ticks of `every` in `zone` from `from` to `to` as the server's ticker runs them:
    /// every 30 s it runs a rule whose next tick after its last run has come, and the run
    /// becomes its last run.
    fn ticker_runs(every: &str, zone: &Zone, from: &str, to: &str) -> Vec<String> {
        let (mut now, to) = (utc(from), utc(to));
        let (mut last_run, mut runs) = (now, Vec::new());
        while now <= to {
            if next_tick(every, last_run, zone).unwrap() <= now {
                runs.push(crate::time::rfc3339(now));
                last_run = now;
            }
            now += 30;
        }
        runs
    }

    /// Europe/Paris, 2027: on 28 March 02:00 CET (UTC+1) becomes 03:00 CEST (UTC+2), on 31
    /// October 03:00 CEST becomes 02:00 CET.
    #[test]
    fn a_rule_keeps_its_local_time_across_dst_changes() {
        let paris = Zone::named("Europe/Paris").unwrap();
        let next = |t: &str| crate::time::rfc3339(next_tick("0 20 * * *", utc(t), &paris).unwrap());
        // 20:00 local: 19:00Z the day before the clocks go forward, 18:00Z the day of it
        assert_eq!(next("2027-03-27T12:00:00Z"), "2027-03-27T19:00:00Z");
        assert_eq!(next("2027-03-27T19:00:00Z"), "2027-03-28T18:00:00Z");
        assert_eq!(next("2027-03-28T18:00:00Z"), "2027-03-29T18:00:00Z");
        // and back: 18:00Z the day before, 19:00Z the day the clocks go back
        assert_eq!(next("2027-10-30T12:00:00Z"), "2027-10-30T18:00:00Z");
        assert_eq!(next("2027-10-30T18:00:00Z"), "2027-10-31T19:00:00Z");
        assert_eq!(next("2027-10-31T19:00:00Z"), "2027-11-01T19:00:00Z");
        // the server's ticker fires them at those instants
        assert_eq!(
            ticker_runs(
                "0 20 * * *",
                &paris,
                "2027-03-26T21:00:00Z",
                "2027-03-29T12:00:00Z"
            ),
            ["2027-03-27T19:00:00Z", "2027-03-28T18:00:00Z"]
        );
        assert_eq!(
            ticker_runs(
                "0 20 * * *",
                &paris,
                "2027-10-29T21:00:00Z",
                "2027-11-01T12:00:00Z"
            ),
            ["2027-10-30T18:00:00Z", "2027-10-31T19:00:00Z"]
        );
    }

    #[test]
    fn a_rule_at_0230_runs_once_on_the_nights_the_clocks_change() {
        let paris = Zone::named("Europe/Paris").unwrap();
        // 28 March: 02:30 does not exist; it runs at 01:30Z (03:30 CEST, 02:30 read at
        // UTC+1), once; the nights around it at 02:30 local
        assert_eq!(
            ticker_runs(
                "30 2 * * *",
                &paris,
                "2027-03-26T12:00:00Z",
                "2027-03-29T12:00:00Z"
            ),
            [
                "2027-03-27T01:30:00Z",
                "2027-03-28T01:30:00Z",
                "2027-03-29T00:30:00Z"
            ]
        );
        // 31 October: 02:30 comes twice, 00:30Z (CEST) and 01:30Z (CET); it runs at the
        // first only
        assert_eq!(
            ticker_runs(
                "30 2 * * *",
                &paris,
                "2027-10-29T12:00:00Z",
                "2027-11-01T12:00:00Z"
            ),
            [
                "2027-10-30T00:30:00Z",
                "2027-10-31T00:30:00Z",
                "2027-11-01T01:30:00Z"
            ]
        );
        // from between the two 02:30s (a rule made then), the next is the next night's
        assert_eq!(
            next_tick("30 2 * * *", utc("2027-10-31T01:00:00Z"), &paris).unwrap(),
            utc("2027-11-01T01:30:00Z")
        );
        // every 15 minutes through both changes: the skipped hour's ticks fall on the
        // next hour's, and the repeated hour runs once; every instant at most once, in order
        let spring = ticker_runs(
            "*/15 * * * *",
            &paris,
            "2027-03-28T00:00:00Z",
            "2027-03-28T02:00:00Z",
        );
        assert_eq!(
            spring,
            [
                "2027-03-28T00:15:00Z",
                "2027-03-28T00:30:00Z",
                "2027-03-28T00:45:00Z",
                "2027-03-28T01:00:00Z",
                "2027-03-28T01:15:00Z",
                "2027-03-28T01:30:00Z",
                "2027-03-28T01:45:00Z",
                "2027-03-28T02:00:00Z"
            ]
        );
        let autumn = ticker_runs(
            "0 * * * *",
            &paris,
            "2027-10-30T23:30:00Z",
            "2027-10-31T03:30:00Z",
        );
        // 02:00 CEST, then 03:00 and 04:00 CET: the second 02:00 (CET, 01:00Z) does not run
        assert_eq!(
            autumn,
            [
                "2027-10-31T00:00:00Z",
                "2027-10-31T02:00:00Z",
                "2027-10-31T03:00:00Z"
            ]
        );
    }

    #[test]
    fn a_rule_has_its_own_zone() {
        let (name, zone) = rule_tz(Some("europe/paris")).unwrap();
        assert_eq!(
            (name.as_str(), zone.name()),
            ("Europe/Paris", Some("Europe/Paris"))
        );
        assert!(matches!(
            rule_tz(Some("Paris")),
            Err(PlanError::BadZone(z)) if z == "Paris"
        ));
        let e = PlanError::BadZone("Paris".into()).to_string();
        assert!(e.contains("--tz") && e.contains("Europe/Paris"), "{e}");
        let mut rule = Rule {
            id: 1,
            created_at: 0,
            every: "0 20 * * *".into(),
            tz: None,
            images: vec![],
            sites: vec![],
            windows: None,
            rate: None,
            last_run: 0,
            last_push: None,
        };
        let server = Zone::fixed(3600).unwrap();
        assert_eq!(rule_zone(&rule, &server), Some(server.clone()));
        rule.tz = Some("Europe/Paris".into());
        assert_eq!(rule_zone(&rule, &server), Zone::named("Europe/Paris"));
        rule.tz = Some("Nowhere/Atall".into());
        assert_eq!(rule_zone(&rule, &server), None);
    }

    #[test]
    fn a_rule_pushes_only_new_versions() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open_or_create(t.path(), Default::default(), false).unwrap();
        let add = |seed| {
            let data = crate::testkit::random_bytes(200_000, seed);
            crate::store::ingest::ingest(
                &store,
                "win11",
                &data[..],
                "t",
                &Default::default(),
                &|_| {},
            )
            .unwrap()
        };
        add(1);
        let db = crate::db::Db::open_in_memory().unwrap();
        let mut c = db.lock();
        let site = crate::db::sites::SiteSettings {
            subnets: vec![],
            tz: "UTC".into(),
            windows: "always".into(),
            rate: None,
            incomplete: crate::db::sites::Incomplete::Wait,
        };
        crate::db::sites::add(&c, "nord", &site, "tok", 0).unwrap();
        let noon = 1_795_392_000 + 12 * 3600;
        let rule = Rule {
            id: 0,
            created_at: noon,
            every: "0 20 * * *".into(),
            tz: Some("UTC".into()),
            images: vec!["win11".into()],
            sites: vec!["all".into()],
            windows: None,
            rate: None,
            last_run: noon,
            last_push: None,
        };
        pushes::create_rule(&c, &rule).unwrap();
        let utc = Zone::utc();
        // not yet 20:00: nothing; at 20:00, the first push
        assert!(run_due_rules(&mut c, &store, noon + 3600, &utc)
            .unwrap()
            .is_empty());
        let made = run_due_rules(&mut c, &store, noon + 8 * 3600, &utc).unwrap();
        assert_eq!(made.len(), 1);
        // the next evening, no new version: no push; a new version: a push of it
        assert!(run_due_rules(&mut c, &store, noon + 32 * 3600, &utc)
            .unwrap()
            .is_empty());
        let v2 = add(2);
        let made = run_due_rules(&mut c, &store, noon + 56 * 3600, &utc).unwrap();
        assert_eq!(made[0].versions[0].version, v2.version.to_hex());
        assert_eq!(pushes::rules(&c).unwrap()[0].last_push, Some(made[0].id));
    }
}

//! Creating pushes: image specs resolved to versions (with the bytes a relay holding none
//! needs), site names checked, and recurring pushes (`--every CRON`) run when due. The CLI
//! and the server's rule ticker share it.

use std::collections::HashSet;
use std::str::FromStr;

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
    #[error("--every {0:?} is not a cron expression: give 5 fields, minute hour day-of-month month day-of-week, e.g. \"0 20 * * 1-5\" (weekdays at 20:00, server local time)")]
    BadCron(String),
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

/// The next tick of cron `every` strictly after `t`, in `zone` (its offset at `t`).
pub fn next_tick(every: &str, t: i64, zone: &Zone) -> Result<i64, PlanError> {
    let cron = croner::Cron::from_str(every).map_err(|_| PlanError::BadCron(every.into()))?;
    let offset = chrono::FixedOffset::east_opt(zone.offset_at(t) as i32)
        .unwrap_or_else(|| chrono::FixedOffset::east_opt(0).expect("0 is valid"));
    let at = chrono::DateTime::from_timestamp(t, 0)
        .ok_or_else(|| PlanError::BadCron(every.into()))?
        .with_timezone(&offset);
    cron.find_next_occurrence(&at, false)
        .map(|n| n.timestamp())
        .map_err(|_| PlanError::BadCron(every.into()))
}

/// Runs the rules whose next tick after their last run has come: each makes a push when its
/// images' versions differ from its last push's. Returns the pushes made.
pub fn run_due_rules(
    conn: &mut Connection,
    store: &Store,
    now: i64,
    zone: &Zone,
) -> Result<Vec<Push>, PlanError> {
    let mut made = Vec::new();
    for rule in pushes::rules(conn)? {
        let Ok(tick) = next_tick(&rule.every, rule.last_run, zone) else {
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
        assert!(matches!(
            next_tick("nightly", noon, &utc),
            Err(PlanError::BadCron(_))
        ));
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

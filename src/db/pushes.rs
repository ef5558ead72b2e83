//! Pushes: image versions sent to sites' relays, and each site's progress as its relay
//! reports it in heartbeats.

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::{DbError, QueryContext};
use crate::proto::relay::{PushOrder, VersionRef};

/// What staff made of a push. A push whose every site is done shows as `done`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PushStatus {
    Active,
    Paused,
    Cancelled,
    Done,
}

impl PushStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PushStatus::Active => "active",
            PushStatus::Paused => "paused",
            PushStatus::Cancelled => "cancelled",
            PushStatus::Done => "done",
        }
    }

    fn parse(s: &str) -> PushStatus {
        match s {
            "paused" => PushStatus::Paused,
            "cancelled" => PushStatus::Cancelled,
            "done" => PushStatus::Done,
            _ => PushStatus::Active,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PushVersion {
    pub image: String,
    pub version: String,
    /// Compressed bytes of the version's distinct chunks (what a relay holding none needs).
    pub bytes: u64,
}

/// One site's progress with a push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PushSite {
    pub site: String,
    /// `waiting`, `running`, `paused`, `done` or `failed`, as the relay reports it.
    pub state: String,
    pub bytes_done: u64,
    /// What the relay needs in all (unknown until its first report).
    pub bytes_total: Option<u64>,
    /// Bytes the relay fetched from upstream for this push.
    pub fetched: u64,
    pub rate: u64,
    pub detail: Option<String>,
    #[serde(serialize_with = "crate::time::serialize_opt_rfc3339")]
    pub updated_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Push {
    pub id: i64,
    #[serde(serialize_with = "crate::time::serialize_rfc3339")]
    pub created_at: i64,
    pub state: PushStatus,
    /// Overrides of the sites' windows and caps.
    pub windows: Option<String>,
    pub rate: Option<u64>,
    #[serde(serialize_with = "crate::time::serialize_opt_rfc3339")]
    pub deadline: Option<i64>,
    pub versions: Vec<PushVersion>,
    pub sites: Vec<PushSite>,
}

/// What `push create` asks for (validated by the caller).
#[derive(Debug, Clone)]
pub struct NewPush {
    pub versions: Vec<PushVersion>,
    pub sites: Vec<String>,
    pub windows: Option<String>,
    pub rate: Option<u64>,
    pub deadline: Option<i64>,
}

pub fn create(conn: &mut Connection, p: &NewPush, now: i64) -> Result<Push, DbError> {
    let tx = conn.savepoint().what("begin")?;
    tx.execute(
        "INSERT INTO pushes (created_at, state, windows, rate, deadline) VALUES (?1, 'active', ?2, ?3, ?4)",
        params![now, p.windows, p.rate.map(|r| r as i64), p.deadline],
    )
    .what("create push")?;
    let id = tx.last_insert_rowid();
    for v in &p.versions {
        tx.execute(
            "INSERT INTO push_versions (push, image, version, bytes) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT DO NOTHING",
            params![id, v.image, v.version, v.bytes as i64],
        )
        .what("push version")?;
    }
    for s in &p.sites {
        tx.execute(
            "INSERT INTO push_sites (push, site) VALUES (?1, ?2)",
            params![id, s],
        )
        .what("push site")?;
        for v in &p.versions {
            tx.execute(
                "INSERT INTO site_images (site, image) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                params![s, v.image],
            )
            .what("assign image")?;
        }
    }
    tx.commit().what("commit")?;
    Ok(get(conn, id)?.expect("push just created"))
}

pub fn get(conn: &Connection, id: i64) -> Result<Option<Push>, DbError> {
    let row = conn
        .query_row(
            "SELECT id, created_at, state, windows, rate, deadline FROM pushes WHERE id = ?1",
            [id],
            |r| {
                Ok(Push {
                    id: r.get(0)?,
                    created_at: r.get(1)?,
                    state: PushStatus::parse(&r.get::<_, String>(2)?),
                    windows: r.get(3)?,
                    rate: r.get::<_, Option<i64>>(4)?.map(|v| v as u64),
                    deadline: r.get(5)?,
                    versions: Vec::new(),
                    sites: Vec::new(),
                })
            },
        )
        .optional()
        .what("get push")?;
    let Some(mut push) = row else { return Ok(None) };
    let mut st = conn
        .prepare("SELECT image, version, bytes FROM push_versions WHERE push = ?1 ORDER BY image, version")
        .what("push versions")?;
    push.versions = st
        .query_map([id], |r| {
            Ok(PushVersion {
                image: r.get(0)?,
                version: r.get(1)?,
                bytes: r.get::<_, i64>(2)? as u64,
            })
        })
        .what("push versions")?
        .collect::<Result<_, _>>()
        .what("push versions")?;
    let mut st = conn
        .prepare(
            "SELECT site, state, bytes_done, bytes_total, fetched, rate, detail, updated_at
             FROM push_sites WHERE push = ?1 ORDER BY site",
        )
        .what("push sites")?;
    push.sites = st
        .query_map([id], |r| {
            Ok(PushSite {
                site: r.get(0)?,
                state: r.get(1)?,
                bytes_done: r.get::<_, i64>(2)? as u64,
                bytes_total: r.get::<_, Option<i64>>(3)?.map(|v| v as u64),
                fetched: r.get::<_, i64>(4)? as u64,
                rate: r.get::<_, i64>(5)? as u64,
                detail: r.get(6)?,
                updated_at: r.get(7)?,
            })
        })
        .what("push sites")?
        .collect::<Result<_, _>>()
        .what("push sites")?;
    if push.state == PushStatus::Active
        && !push.sites.is_empty()
        && push.sites.iter().all(|s| s.state == "done")
    {
        push.state = PushStatus::Done;
    }
    Ok(Some(push))
}

/// Pushes, newest first; without `all`, only those not cancelled or done.
pub fn list(conn: &Connection, all: bool) -> Result<Vec<Push>, DbError> {
    // (the open ones picked in SQL: a year of weekly pushes is hundreds done, each with a
    // row per site, that an open-only listing would otherwise read in full)
    let mut st = conn
        .prepare("SELECT id FROM pushes WHERE ?1 OR state IN ('active', 'paused') ORDER BY id DESC")
        .what("list pushes")?;
    let ids: Vec<i64> = st
        .query_map([all], |r| r.get(0))
        .what("list pushes")?
        .collect::<Result<_, _>>()
        .what("list pushes")?;
    let mut out = Vec::new();
    for id in ids {
        if let Some(p) = get(conn, id)? {
            if all || matches!(p.state, PushStatus::Active | PushStatus::Paused) {
                out.push(p);
            }
        }
    }
    Ok(out)
}

/// Why a state change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("no push {0}; `bootcast push list --all` shows them")]
    NoPush(i64),
    #[error("push {id} is {state}: it cannot be {action}")]
    Refused {
        id: i64,
        state: &'static str,
        action: &'static str,
    },
    #[error(transparent)]
    Db(#[from] DbError),
}

/// How often a site's push progress is sampled for the night's curve (from its relay's
/// heartbeats).
pub const SAMPLE_EVERY_SECS: i64 = 300;

/// Keeps the progress `site`'s relay reported (`progress`, from a heartbeat) as a sample of the
/// night's curve at `at`: one per push every [`SAMPLE_EVERY_SECS`], and the end once.
pub fn sample_progress(
    conn: &Connection,
    site: &str,
    progress: &[crate::proto::relay::PushProgress],
    at: i64,
) -> Result<(), DbError> {
    for p in progress {
        conn.execute(
            "INSERT OR REPLACE INTO push_samples (push, site, at, bytes_done, bytes_total)
             SELECT ?1, ?2, ?3, ?4, ?5 WHERE EXISTS (SELECT 1 FROM pushes WHERE id = ?1)
               AND NOT EXISTS (SELECT 1 FROM push_samples WHERE push = ?1 AND site = ?2
                   AND ((?4 >= ?5 AND bytes_done = ?4) OR (?4 < ?5 AND at > ?3 - ?6)))",
            params![
                p.push,
                site,
                at,
                p.bytes_done as i64,
                p.bytes_total as i64,
                SAMPLE_EVERY_SECS
            ],
        )
        .what("sample push progress")?;
    }
    Ok(())
}

/// One site's progress over time in a push: `(unix time, bytes done)`, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SiteCurve {
    pub site: String,
    pub bytes_total: u64,
    pub samples: Vec<(i64, u64)>,
}

/// The sampled progress of push `id` at each of its sites (of `sites` only, when given).
pub fn curves(
    conn: &Connection,
    id: i64,
    sites: Option<&[String]>,
) -> Result<Vec<SiteCurve>, DbError> {
    let sites = sites.map(|s| serde_json::to_string(s).expect("names serialise"));
    let mut st = conn
        .prepare(
            "SELECT site, at, bytes_done, bytes_total FROM push_samples WHERE push = ?1
               AND (?2 IS NULL OR site IN (SELECT value FROM json_each(?2)))
             ORDER BY site, at",
        )
        .what("push samples")?;
    let rows = st
        .query_map(params![id, sites], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?.max(0) as u64,
                r.get::<_, i64>(3)?.max(0) as u64,
            ))
        })
        .what("push samples")?;
    let mut out: Vec<SiteCurve> = Vec::new();
    for row in rows {
        let (site, at, done, total) = row.what("push samples")?;
        match out.last_mut() {
            Some(c) if c.site == site => {
                c.bytes_total = total;
                c.samples.push((at, done));
            }
            _ => out.push(SiteCurve {
                site,
                bytes_total: total,
                samples: vec![(at, done)],
            }),
        }
    }
    Ok(out)
}

/// `pause`, `resume` or `cancel` a push.
pub fn change(conn: &Connection, id: i64, to: PushStatus) -> Result<Push, ChangeError> {
    let push = get(conn, id)?.ok_or(ChangeError::NoPush(id))?;
    let (ok, action) = match to {
        PushStatus::Paused => (push.state == PushStatus::Active, "paused"),
        PushStatus::Active => (push.state == PushStatus::Paused, "resumed"),
        PushStatus::Cancelled => (
            matches!(push.state, PushStatus::Active | PushStatus::Paused),
            "cancelled",
        ),
        PushStatus::Done => (false, "marked done"),
    };
    if !ok {
        return Err(ChangeError::Refused {
            id,
            state: push.state.as_str(),
            action,
        });
    }
    conn.execute(
        "UPDATE pushes SET state = ?2 WHERE id = ?1",
        params![id, to.as_str()],
    )
    .what("change push")?;
    Ok(get(conn, id)?.expect("push exists"))
}

/// The open pushes for `site` as orders for its relay (not cancelled; done ones stay listed
/// so a relay that lost its store fetches them again): two queries, whatever the history.
pub fn orders_for(conn: &Connection, site: &str) -> Result<Vec<PushOrder>, DbError> {
    let mut st = conn
        .prepare(
            "SELECT p.id, p.state, p.windows, p.rate, p.deadline
             FROM pushes p JOIN push_sites s ON s.push = p.id
             WHERE s.site = ?1 AND p.state IN ('active', 'paused') ORDER BY p.id",
        )
        .what("push orders")?;
    let mut out: Vec<PushOrder> = st
        .query_map([site], |r| {
            Ok(PushOrder {
                id: r.get(0)?,
                paused: PushStatus::parse(&r.get::<_, String>(1)?) == PushStatus::Paused,
                versions: Vec::new(),
                windows: r.get(2)?,
                rate: r.get::<_, Option<i64>>(3)?.map(|v| v as u64),
                deadline: r.get(4)?,
                signature: None,
            })
        })
        .what("push orders")?
        .collect::<Result<_, _>>()
        .what("push orders")?;
    let mut st = conn
        .prepare(
            "SELECT v.push, v.image, v.version
             FROM push_versions v JOIN push_sites s ON s.push = v.push JOIN pushes p ON p.id = v.push
             WHERE s.site = ?1 AND p.state IN ('active', 'paused')
             ORDER BY v.push, v.image, v.version",
        )
        .what("push order versions")?;
    let rows = st
        .query_map([site], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                VersionRef {
                    image: r.get(1)?,
                    version: r.get(2)?,
                },
            ))
        })
        .what("push order versions")?;
    // both lists are in push order: one pass
    let mut i = 0;
    for row in rows {
        let (push, v) = row.what("push order versions")?;
        while out.get(i).is_some_and(|o| o.id < push) {
            i += 1;
        }
        if let Some(o) = out.get_mut(i).filter(|o| o.id == push) {
            o.versions.push(v);
        }
    }
    Ok(out)
}

/// The pushes among `ids` that are done at every site (a heartbeat's pushes: the cost is
/// theirs, not the history's).
pub fn done_among(conn: &Connection, ids: &[i64]) -> Result<Vec<i64>, DbError> {
    let mut done = Vec::new();
    let mut st = conn
        .prepare(
            "SELECT p.id FROM pushes p
             WHERE p.id = ?1 AND p.state = 'active'
               AND EXISTS (SELECT 1 FROM push_sites s WHERE s.push = p.id)
               AND NOT EXISTS (SELECT 1 FROM push_sites s WHERE s.push = p.id AND s.state != 'done')",
        )
        .what("pushes done")?;
    for id in ids {
        if st.exists([id]).what("pushes done")? {
            done.push(*id);
        }
    }
    Ok(done)
}

/// A recurring push (`push create --every CRON`): at each tick, the newest versions of its
/// images go to its sites if they differ from what it pushed last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rule {
    pub id: i64,
    #[serde(serialize_with = "crate::time::serialize_rfc3339")]
    pub created_at: i64,
    /// Cron expression (minute hour day-of-month month day-of-week), on the wall clock of `tz`.
    pub every: String,
    /// Its time zone, a tzdb name (`Europe/Paris`); `None` for a rule made before rules had
    /// their own: it keeps the server's.
    pub tz: Option<String>,
    /// Image specs (NAME follows the newest version; NAME@VERSION stays).
    pub images: Vec<String>,
    /// Site names, or `["all"]`.
    pub sites: Vec<String>,
    pub windows: Option<String>,
    pub rate: Option<u64>,
    #[serde(serialize_with = "crate::time::serialize_rfc3339")]
    pub last_run: i64,
    pub last_push: Option<i64>,
}

pub fn create_rule(conn: &Connection, r: &Rule) -> Result<i64, DbError> {
    conn.execute(
        "INSERT INTO push_rules (created_at, every, images, sites, windows, rate, last_run, last_push, tz)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            r.created_at,
            r.every,
            serde_json::to_string(&r.images).expect("serialises"),
            serde_json::to_string(&r.sites).expect("serialises"),
            r.windows,
            r.rate.map(|v| v as i64),
            r.last_run,
            r.last_push,
            r.tz
        ],
    )
    .what("create push rule")?;
    Ok(conn.last_insert_rowid())
}

pub fn rules(conn: &Connection) -> Result<Vec<Rule>, DbError> {
    let mut st = conn
        .prepare(
            "SELECT id, created_at, every, images, sites, windows, rate, last_run, last_push, tz
             FROM push_rules ORDER BY id",
        )
        .what("list push rules")?;
    let rows = st
        .query_map([], |r| {
            let images: String = r.get(3)?;
            let sites: String = r.get(4)?;
            Ok(Rule {
                id: r.get(0)?,
                created_at: r.get(1)?,
                every: r.get(2)?,
                images: serde_json::from_str(&images).unwrap_or_default(),
                sites: serde_json::from_str(&sites).unwrap_or_default(),
                windows: r.get(5)?,
                rate: r.get::<_, Option<i64>>(6)?.map(|v| v as u64),
                last_run: r.get(7)?,
                last_push: r.get(8)?,
                tz: r.get(9)?,
            })
        })
        .what("list push rules")?;
    rows.collect::<Result<_, _>>().what("list push rules")
}

pub fn set_rule_run(
    conn: &Connection,
    id: i64,
    last_run: i64,
    last_push: Option<i64>,
) -> Result<(), DbError> {
    conn.execute(
        "UPDATE push_rules SET last_run = ?2, last_push = coalesce(?3, last_push) WHERE id = ?1",
        params![id, last_run, last_push],
    )
    .what("record push rule run")?;
    Ok(())
}

pub fn remove_rule(conn: &Connection, id: i64) -> Result<bool, DbError> {
    let n = conn
        .execute("DELETE FROM push_rules WHERE id = ?1", [id])
        .what("remove push rule")?;
    Ok(n == 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::sites::{self, Incomplete, SiteSettings};
    use crate::db::Db;
    use crate::proto::relay::{Heartbeat, PushProgress, PushState};

    fn settings() -> SiteSettings {
        SiteSettings {
            subnets: vec!["10.99.1.0/24".into()],
            tz: "Europe/Paris".into(),
            windows: "22:00-06:00".into(),
            rate: Some(6_250_000),
            incomplete: Incomplete::Wait,
        }
    }

    #[test]
    fn a_sites_orders_and_the_pushes_its_heartbeat_completes() {
        let db = Db::open_in_memory().unwrap();
        let mut c = db.lock();
        for (s, t) in [("a", "ta"), ("b", "tb")] {
            assert!(sites::add(&c, s, &settings(), t, 1).unwrap());
        }
        let v = |image: &str, d: &str| PushVersion {
            image: image.into(),
            version: d.repeat(32),
            bytes: 10,
        };
        let mut make = |versions: Vec<PushVersion>, sites: &[&str]| {
            create(
                &mut c,
                &NewPush {
                    versions,
                    sites: sites.iter().map(|s| s.to_string()).collect(),
                    windows: None,
                    rate: None,
                    deadline: None,
                },
                5,
            )
            .unwrap()
            .id
        };
        let p1 = make(vec![v("win11", "01"), v("deb", "02")], &["a", "b"]);
        let p2 = make(vec![v("win11", "03")], &["b"]);
        let p3 = make(vec![v("win10", "04")], &["a"]);
        let p4 = make(vec![v("win10", "05")], &["a"]);
        change(&c, p3, PushStatus::Cancelled).unwrap();
        change(&c, p4, PushStatus::Paused).unwrap();
        let a = orders_for(&c, "a").unwrap();
        let got: Vec<(i64, bool, Vec<String>)> = a
            .iter()
            .map(|o| {
                let vs = o
                    .versions
                    .iter()
                    .map(|v| format!("{}@{}", v.image, &v.version[..2]))
                    .collect();
                (o.id, o.paused, vs)
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    p1,
                    false,
                    vec!["deb@02".to_string(), "win11@01".to_string()]
                ),
                (p4, true, vec!["win10@05".to_string()]),
            ]
        );
        assert_eq!(
            orders_for(&c, "b")
                .unwrap()
                .iter()
                .map(|o| o.id)
                .collect::<Vec<_>>(),
            vec![p1, p2]
        );
        // p1 is done only once both sites are
        let done = |c: &Connection, site: &str, id: i64| {
            c.execute(
                "UPDATE push_sites SET state = 'done' WHERE push = ?1 AND site = ?2",
                params![id, site],
            )
            .unwrap();
        };
        done(&c, "a", p1);
        assert_eq!(done_among(&c, &[p1, p2]).unwrap(), Vec::<i64>::new());
        done(&c, "b", p1);
        done(&c, "b", p2);
        assert_eq!(done_among(&c, &[p1, p2, p3]).unwrap(), vec![p1, p2]);
    }

    #[test]
    fn a_push_reaches_its_sites_relays_and_collects_their_progress() {
        let db = Db::open_in_memory().unwrap();
        let mut c = db.lock();
        assert!(sites::add(&c, "nord", &settings(), "tok-n", 1).unwrap());
        assert!(sites::add(&c, "sud", &settings(), "tok-s", 1).unwrap());
        assert!(!sites::add(&c, "sud", &settings(), "tok-x", 1).unwrap());
        let v = PushVersion {
            image: "win11".into(),
            version: "ab".repeat(32),
            bytes: 1000,
        };
        let p = create(
            &mut c,
            &NewPush {
                versions: vec![v.clone()],
                sites: vec!["nord".into()],
                windows: None,
                rate: None,
                deadline: Some(99),
            },
            5,
        )
        .unwrap();
        assert_eq!((p.state, p.sites.len()), (PushStatus::Active, 1));
        assert_eq!(sites::get(&c, "nord").unwrap().unwrap().images, ["win11"]);
        assert!(orders_for(&c, "sud").unwrap().is_empty());
        let o = orders_for(&c, "nord").unwrap();
        assert_eq!(
            (o[0].id, o[0].paused, o[0].deadline),
            (p.id, false, Some(99))
        );
        assert_eq!(o[0].versions[0].image, "win11");

        // the relay's heartbeat lands in the push's status
        let site = sites::by_token(&c, "tok-n").unwrap().unwrap();
        assert_eq!(site.name, "nord");
        let hb = Heartbeat {
            protocol: crate::proto::relay::PROTOCOL,
            site: "nord".into(),
            url: "http://10.99.1.2:8080".into(),
            version: "0.1.0".into(),
            cache_bytes: 10,
            quota_bytes: None,
            complete: vec![],
            woken: vec![],
            pushes: vec![PushProgress {
                push: p.id,
                state: PushState::Running,
                bytes_done: 400,
                bytes_total: 1000,
                fetched: 400,
                rate: 50,
                detail: None,
            }],
            book: None,
        };
        sites::record_heartbeat(&mut c, "nord", &hb, 7).unwrap();
        let got = get(&c, p.id).unwrap().unwrap();
        assert_eq!(
            (
                got.sites[0].state.as_str(),
                got.sites[0].bytes_done,
                got.sites[0].bytes_total
            ),
            ("running", 400, Some(1000))
        );
        let relay = sites::get(&c, "nord").unwrap().unwrap().relay.unwrap();
        assert_eq!(
            (relay.last_heartbeat, relay.url.as_deref()),
            (7, Some("http://10.99.1.2:8080"))
        );
        // the night's curve: a sample per SAMPLE_EVERY_SECS, the end once, whatever the
        // heartbeats in between
        let mut hb = hb;
        sample_progress(&c, "nord", &hb.pushes, 7).unwrap();
        for (at, done) in [(60, 450), (307, 600), (400, 900), (420, 1000), (480, 1000)] {
            hb.pushes[0].bytes_done = done;
            sites::record_heartbeat(&mut c, "nord", &hb, at).unwrap();
            sample_progress(&c, "nord", &hb.pushes, at).unwrap();
        }
        let curve = curves(&c, p.id, None).unwrap();
        assert_eq!(curve.len(), 1);
        assert_eq!(
            (curve[0].site.as_str(), curve[0].bytes_total),
            ("nord", 1000)
        );
        assert_eq!(curve[0].samples, [(7, 400), (307, 600), (420, 1000)]);
        assert!(curves(&c, p.id, Some(&["sud".to_string()]))
            .unwrap()
            .is_empty());

        // pause / resume / cancel rules
        assert_eq!(
            change(&c, p.id, PushStatus::Paused).unwrap().state,
            PushStatus::Paused
        );
        assert!(orders_for(&c, "nord").unwrap()[0].paused);
        assert!(change(&c, p.id, PushStatus::Paused).is_err());
        assert_eq!(
            change(&c, p.id, PushStatus::Active).unwrap().state,
            PushStatus::Active
        );
        // every site done: the push is done, and can no longer be cancelled
        let mut done = hb.clone();
        done.pushes[0].state = PushState::Done;
        sites::record_heartbeat(&mut c, "nord", &done, 8).unwrap();
        assert_eq!(get(&c, p.id).unwrap().unwrap().state, PushStatus::Done);
        assert!(list(&c, false).unwrap().is_empty());
        let e = change(&c, p.id, PushStatus::Cancelled).unwrap_err();
        assert!(e.to_string().contains("is done"), "{e}");
        assert!(matches!(
            change(&c, 77, PushStatus::Paused),
            Err(ChangeError::NoPush(77))
        ));
    }
}

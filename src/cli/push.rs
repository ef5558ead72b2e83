//! `bootcast push ...`: send image versions to sites' relays inside their windows and under
//! their caps, and follow them. They work on `--data DIR` directly, beside a running server;
//! the relays learn of a push at their next heartbeat.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Subcommand;

use bootcast::db::pushes::{self, PushStatus};
use bootcast::db::sites;
use bootcast::push::plan;
use bootcast::push::status::{site_status, SiteStatus};
use bootcast::push::window::Windows;
use bootcast::rate::{format_rate, parse_rate};
use bootcast::store::Store;

use super::open_db;
use super::output::{bytes, utc, Output};

#[derive(Subcommand, Debug)]
pub enum PushCmd {
    /// Push image versions to sites' relays (fetched inside each site's windows, under its cap)
    Create {
        /// NAME (newest version) or NAME@VERSION; repeat for several
        #[arg(long = "image", required = true)]
        images: Vec<String>,
        /// Site names, comma separated, or `all`
        #[arg(long)]
        sites: String,
        /// Windows for this push instead of the sites' own (in each site's time zone)
        #[arg(long)]
        window: Option<String>,
        /// Cap for this push instead of the sites' own (50Mbit, 1Gbit, 5MB)
        #[arg(long)]
        rate: Option<String>,
        /// When it should be everywhere (HH:MM local or RFC 3339); status warns if a site
        /// cannot make it at its cap
        #[arg(long)]
        deadline: Option<String>,
        /// Also again at every tick of this cron expression (on the wall clock of --tz), e.g.
        /// "0 20 * * *": the newest versions of the images, when they changed
        #[arg(long, value_name = "CRON")]
        every: Option<String>,
        /// The time zone of --every, a tzdb name (Europe/Paris); default: this server's
        #[arg(long, value_name = "ZONE", requires = "every")]
        tz: Option<String>,
    },
    /// Recurring pushes (`push create --every`)
    Rules,
    /// Stop a recurring push (its pushes so far stay)
    Unschedule { rule: i64 },
    /// Open pushes (--all: also done and cancelled ones)
    List {
        #[arg(long)]
        all: bool,
    },
    /// Per site: bytes done/total, rate, ETA, deadline warnings (all open pushes, or ID)
    Status { id: Option<i64> },
    /// Hold a push: relays stop after the chunk in flight and keep what they have
    Pause { id: i64 },
    /// Let a paused push go on where it stopped
    Resume { id: i64 },
    /// Cancel a push (what relays fetched stays in their caches)
    Cancel { id: i64 },
}

pub fn run(cmd: PushCmd, data: &Path, out: &Output) -> Result<ExitCode> {
    let db = open_db(data)?;
    let mut c = db.lock();
    let now = bootcast::time::now_unix();
    match cmd {
        PushCmd::Create {
            images,
            sites: names,
            window,
            rate,
            deadline,
            every,
            tz,
        } => {
            let windows = window
                .map(|w| Windows::parse(&w).map(|w| w.to_string()))
                .transpose()
                .map_err(anyhow::Error::msg)?;
            let rate = rate
                .map(|r| parse_rate(&r))
                .transpose()
                .map_err(anyhow::Error::msg)?;
            let deadline = deadline
                .map(|d| {
                    bootcast::time::parse_at(&d, now, &bootcast::time::Zone::local())
                        .map_err(|e| anyhow::anyhow!(e.replace("--at", "--deadline")))
                })
                .transpose()?;
            let site_names: Vec<String> = names
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_string)
                .collect();
            let store = Store::open(data).context("pushes need the image store on this server")?;
            // the rule's zone, checked with its expression before anything is made
            let rule_tz = match &every {
                Some(e) => {
                    let (name, zone) = plan::rule_tz(tz.as_deref())?;
                    plan::next_tick(e, now, &zone)?;
                    Some((name, zone))
                }
                None => None,
            };
            let p = plan::create(
                &mut c,
                &store,
                &plan::Request {
                    images: images.clone(),
                    sites: site_names.clone(),
                    windows: windows.clone(),
                    rate,
                    deadline,
                },
                now,
            )?;
            let rule = match &every {
                Some(e) => Some(pushes::create_rule(
                    &c,
                    &pushes::Rule {
                        id: 0,
                        created_at: now,
                        every: e.clone(),
                        tz: rule_tz.as_ref().map(|(name, _)| name.clone()),
                        images,
                        sites: site_names,
                        windows,
                        rate,
                        last_run: now,
                        last_push: Some(p.id),
                    },
                )?),
                None => None,
            };
            if let (Some(r), Some(e), Some((name, zone))) = (rule, &every, &rule_tz) {
                let next = plan::next_tick(e, now, zone)?;
                eprintln!(
                    "recurring push {r}: again at {} ({} {name}) and each tick of {e:?} in {name} when the versions changed; `bootcast push unschedule {r}` stops it",
                    utc(next),
                    zone.wall_clock(next)
                );
            }
            out.emit(&serde_json::json!({ "push": p }), || {
                format!(
                    "push {} created: {} to {}; relays start at their next heartbeat, inside their windows",
                    p.id,
                    p.versions
                        .iter()
                        .map(|v| format!("{}@{} ({})", v.image, &v.version[..12], bytes(v.bytes)))
                        .collect::<Vec<_>>()
                        .join(", "),
                    p.sites.iter().map(|s| s.site.as_str()).collect::<Vec<_>>().join(", ")
                )
            });
        }
        PushCmd::List { all } => {
            let list = pushes::list(&c, all)?;
            out.emit(&serde_json::json!({ "pushes": list }), || {
                if list.is_empty() {
                    return "no open pushes (--all lists done and cancelled ones)".into();
                }
                let mut s = String::new();
                for p in &list {
                    let done = p.sites.iter().filter(|s| s.state == "done").count();
                    s += &format!(
                        "push {:<4} {:<9} created {}  {} site(s), {} done  {}\n",
                        p.id,
                        p.state.as_str(),
                        utc(p.created_at),
                        p.sites.len(),
                        done,
                        p.versions
                            .iter()
                            .map(|v| format!("{}@{}", v.image, &v.version[..12]))
                            .collect::<Vec<_>>()
                            .join(" ")
                    );
                }
                s
            });
        }
        PushCmd::Status { id } => {
            let list = match id {
                Some(id) => vec![pushes::get(&c, id)?.ok_or_else(|| {
                    anyhow::anyhow!("no push {id}; `bootcast push list --all` shows them")
                })?],
                None => pushes::list(&c, false)?,
            };
            let mut rows: Vec<(i64, &'static str, Vec<SiteStatus>)> = Vec::new();
            for p in &list {
                let mut st = Vec::new();
                for ps in &p.sites {
                    if let Some(site) = sites::get(&c, &ps.site)? {
                        st.push(site_status(p, ps, &site, now));
                    }
                }
                rows.push((p.id, p.state.as_str(), st));
            }
            let json: Vec<_> = rows
                .iter()
                .map(|(id, state, st)| serde_json::json!({ "push": id, "state": state, "sites": st }))
                .collect();
            out.emit(&serde_json::json!({ "pushes": json }), || {
                if rows.is_empty() {
                    return "no open pushes".into();
                }
                let mut s = String::new();
                for (id, state, st) in &rows {
                    s += &format!("push {id} ({state})\n");
                    s += &format!(
                        "  {:<16}  {:<8}  {:>21}  {:>6}  {:>12}  {:>12}  ETA\n",
                        "SITE", "STATE", "DONE / TOTAL", "%", "RATE", "CAP"
                    );
                    for x in st {
                        let pct = if x.bytes_total == 0 {
                            100.0
                        } else {
                            x.bytes_done as f64 * 100.0 / x.bytes_total as f64
                        };
                        s += &format!(
                            "  {:<16}  {:<8}  {:>21}  {:>5.1}%  {:>12}  {:>12}  {}\n",
                            x.site,
                            x.state,
                            format!("{} / {}", bytes(x.bytes_done), bytes(x.bytes_total)),
                            pct,
                            if x.rate > 0 {
                                format_rate(x.rate)
                            } else {
                                "-".into()
                            },
                            x.cap.map(format_rate).unwrap_or_else(|| "none".into()),
                            x.eta.map(utc).unwrap_or_else(|| "unknown".into())
                        );
                        if let Some(w) = &x.warning {
                            s += &format!("    WARNING: {w}\n");
                        }
                        if x.relay_silent_for.is_none() {
                            s += "    (its relay has not reported yet)\n";
                        }
                    }
                }
                s
            });
        }
        PushCmd::Rules => {
            let rules = pushes::rules(&c)?;
            let server = bootcast::time::Zone::local();
            out.emit(&serde_json::json!({ "rules": rules }), || {
                if rules.is_empty() {
                    return "no recurring pushes (push create --every CRON)".into();
                }
                let mut s = String::new();
                for r in &rules {
                    let next = plan::rule_zone(r, &server)
                        .and_then(|z| plan::next_tick(&r.every, now.max(r.last_run), &z).ok());
                    s += &format!(
                        "rule {:<4} every {:?}  tz {}  next {}  images {}  sites {}  last push {}\n",
                        r.id,
                        r.every,
                        r.tz.as_deref().unwrap_or("(the server's)"),
                        next.map(utc).unwrap_or_else(|| "?".into()),
                        r.images.join(","),
                        r.sites.join(","),
                        r.last_push.map_or("-".into(), |p| p.to_string())
                    );
                }
                s
            });
        }
        PushCmd::Unschedule { rule } => {
            if !pushes::remove_rule(&c, rule)? {
                bail!("no recurring push {rule}; `bootcast push rules` lists them");
            }
            out.emit(&serde_json::json!({ "removed": rule }), || {
                format!("recurring push {rule} stopped")
            });
        }
        PushCmd::Pause { id } | PushCmd::Resume { id } | PushCmd::Cancel { id } => {
            let to = match cmd {
                PushCmd::Pause { .. } => PushStatus::Paused,
                PushCmd::Resume { .. } => PushStatus::Active,
                _ => PushStatus::Cancelled,
            };
            let p = pushes::change(&c, id, to)?;
            out.emit(&serde_json::json!({ "push": p }), || {
                format!("push {id} is {}", p.state.as_str())
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

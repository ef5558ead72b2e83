//! `bootcast task ...`: reimage and capture tasks for hosts or groups, their states and
//! progress, cancelling. The rules are the library's (`bootcast::schedule`), shared with the API.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use clap::{ArgGroup, Subcommand};

use bootcast::db::{tasks, Task, TaskKind};
use bootcast::mac::Mac;
use bootcast::proto::agent::After;
use bootcast::schedule::{self, CancelTarget, MulticastRequest, TaskRequest};

use super::open_db;
use super::output::{bytes, utc, Output};

#[derive(Subcommand, Debug)]
pub enum TaskCmd {
    /// Reimage a host, or every host of a group, at its next network boot (one task per host)
    #[command(group(ArgGroup::new("target").required(true).args(["host", "group"])))]
    Reimage {
        #[arg(long)]
        host: Option<String>,
        #[arg(long)]
        group: Option<String>,
        /// NAME[@VERSION]: the version is fixed now (a later `image add` does not change it)
        #[arg(long)]
        image: String,
        /// Not before: HH:MM (this server's local time; today, or tomorrow if already past) or RFC 3339
        #[arg(long)]
        at: Option<String>,
        /// Cancel a host's open task instead of refusing
        #[arg(long)]
        replace: bool,
        /// Reimage the hosts together by room multicast (one stream; stragglers repaired over HTTP)
        #[arg(long)]
        multicast: bool,
        /// Multicast: start when this many hosts joined (default: all the tasks created)
        #[arg(long, requires = "multicast")]
        min_receivers: Option<u32>,
        /// Multicast: ...or this many seconds after the first host's agent said hello
        #[arg(long, requires = "multicast", default_value_t = bootcast::schedule::MULTICAST_WAIT_SECS)]
        wait: u32,
        /// Multicast: most the sender sends, e.g. 500Mbit
        #[arg(long, requires = "multicast", default_value = bootcast::schedule::MULTICAST_MAX_RATE)]
        max_rate: String,
        #[command(flatten)]
        wake: WakeArgs,
        /// Once the task is over: reboot, poweroff or stay (default: the group's `--then`, else reboot)
        #[arg(long, value_parser = parse_then)]
        then: Option<After>,
    },
    /// Capture a host's disk as a new version of image NAME at its next network boot
    Capture {
        #[arg(long)]
        host: String,
        #[arg(long)]
        image: String,
        /// Not before: HH:MM (this server's local time) or RFC 3339
        #[arg(long)]
        at: Option<String>,
        /// Cancel the host's open task instead of refusing
        #[arg(long)]
        replace: bool,
        #[command(flatten)]
        wake: WakeArgs,
        /// Once the task is over: reboot, poweroff or stay (default: the group's `--then`, else reboot)
        #[arg(long, value_parser = parse_then)]
        then: Option<After>,
    },
    /// Open tasks (pending, booting, running), newest first; --all for finished ones too
    List {
        #[arg(long)]
        host: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// Recurring task rules: reimage, capture, wake or inventory-boot a host or a group on a
    /// schedule
    #[command(subcommand)]
    Rule(RuleCmd),
    /// One action on a selection of hosts (each done or refused on its own): more than 25
    /// hosts, or hosts of several sites, needs --confirm with their count
    #[command(group(ArgGroup::new("selection").required(true).multiple(true).args(["host", "group", "site"])))]
    Bulk {
        /// reimage, capture, inventory, wake or cancel
        #[arg(value_parser = ["reimage", "capture", "inventory", "wake", "cancel"])]
        action: String,
        /// A host (repeat for more)
        #[arg(long)]
        host: Vec<String>,
        /// Every host of a group (repeat for more)
        #[arg(long)]
        group: Vec<String>,
        /// Every active host of a site (repeat for more)
        #[arg(long)]
        site: Vec<String>,
        /// reimage: NAME[@VERSION]; capture: NAME
        #[arg(long, default_value = "")]
        image: String,
        /// Not before: HH:MM (this server's local time) or RFC 3339
        #[arg(long)]
        at: Option<String>,
        /// Wake the hosts when their tasks may start
        #[arg(long)]
        wake: bool,
        /// The number of hosts selected, as the refusal names it
        #[arg(long)]
        confirm: Option<usize>,
    },
    /// Cancel task ID, or every open task of a host or of a group's hosts
    #[command(group(ArgGroup::new("which").required(true).args(["id", "host", "group"])))]
    Cancel {
        id: Option<i64>,
        #[arg(long)]
        host: Option<String>,
        #[arg(long)]
        group: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum RuleCmd {
    /// A rule: at each tick of CRON (minute hour day-of-month month day-of-week) on the wall
    /// clock of --tz (default: the site's of the target, else this server's), make a task for
    /// each host (replacing its open one) or wake them
    #[command(group(ArgGroup::new("target").required(true).args(["host", "group"])))]
    Add {
        #[arg(long)]
        host: Option<String>,
        #[arg(long)]
        group: Option<String>,
        /// reimage, capture, wake, or inventory (boot the agent so that it reports the
        /// machine's inventory, then reboot or as --then says)
        #[arg(long, value_parser = ["reimage", "capture", "wake", "inventory"])]
        kind: String,
        /// reimage: NAME (the newest approved version the site's relay holds at each run) or
        /// NAME@VERSION; capture: NAME
        #[arg(long)]
        image: Option<String>,
        /// e.g. "0 2 * * 1": Mondays at 02:00
        #[arg(long)]
        every: String,
        /// A tzdb zone, e.g. Europe/Paris
        #[arg(long)]
        tz: Option<String>,
        /// Reimage by room multicast
        #[arg(long)]
        multicast: bool,
        /// Do not wake the hosts when the tasks are made (default: wake them)
        #[arg(long)]
        no_wake: bool,
        /// Once the tasks are over: reboot, poweroff or stay (default: the group's, else reboot)
        #[arg(long, value_parser = parse_then)]
        then: Option<After>,
    },
    /// Every rule, its next run and how its last run went
    List,
    /// Remove rule ID
    Rm { id: i64 },
    /// Acknowledge rule ID's failed run
    Ack { id: i64 },
}

fn rules(out: &Output, c: &rusqlite::Connection, cmd: RuleCmd, now: i64) -> Result<()> {
    use bootcast::calendar;
    match cmd {
        RuleCmd::Add {
            host,
            group,
            kind,
            image,
            every,
            tz,
            multicast,
            no_wake,
            then,
        } => {
            let req = calendar::RuleRequest {
                then,
                kind,
                host,
                group,
                image,
                multicast,
                no_wake,
                every,
                tz,
            };
            let rule = calendar::add(c, &req, now)?;
            let next = calendar::next_run(&rule);
            out.emit(
                &serde_json::json!({ "rule": calendar::Listed { rule: rule.clone(), next_run: next } }),
                || {
                    format!(
                        "rule {}: {} {} every \"{}\" ({}); next run {}",
                        rule.id,
                        rule.kind,
                        rule.host.as_deref().or(rule.group.as_deref()).unwrap_or(""),
                        rule.every,
                        rule.tz,
                        next.map_or("-".into(), utc)
                    )
                },
            );
        }
        RuleCmd::List => {
            let list = calendar::list(c)?;
            out.emit(&serde_json::json!({ "rules": list }), || {
                if list.is_empty() {
                    return "no task rules (`bootcast task rule add`)".into();
                }
                let mut s = format!(
                    "{:>4}  {:<8} {:<20} {:<12} {:<14} {:<16} {:<20} {}",
                    "ID", "KIND", "TARGET", "IMAGE", "EVERY", "ZONE", "NEXT RUN", "LAST RUN"
                );
                for l in &list {
                    let r = &l.rule;
                    s += &format!(
                        "\n{:>4}  {:<8} {:<20} {:<12} {:<14} {:<16} {:<20} {}{}",
                        r.id,
                        r.kind,
                        r.host.as_deref().or(r.group.as_deref()).unwrap_or(""),
                        r.image.as_deref().unwrap_or("-"),
                        r.every,
                        r.tz,
                        l.next_run.map_or("-".into(), utc),
                        r.last_outcome.as_deref().unwrap_or("not run yet"),
                        if r.failed {
                            "  FAILED (task rule ack)"
                        } else {
                            ""
                        }
                    );
                }
                s
            });
        }
        RuleCmd::Rm { id } => {
            calendar::remove(c, id)?;
            out.emit(&serde_json::json!({ "removed": id }), || {
                format!("rule {id} removed")
            });
        }
        RuleCmd::Ack { id } => {
            calendar::acknowledge(c, id)?;
            out.emit(&serde_json::json!({ "acknowledged": id }), || {
                format!("rule {id}: failed run acknowledged")
            });
        }
    }
    Ok(())
}

/// `--then reboot|poweroff|stay`.
pub fn parse_then(s: &str) -> Result<After, String> {
    After::parse(s).ok_or_else(|| format!("{s:?}: use one of {}", After::NAMES.join(", ")))
}

/// `--wake [--wave N] [--spacing SECS]`.
#[derive(clap::Args, Debug)]
pub struct WakeArgs {
    /// Wake the hosts by Wake-on-LAN when the task may start (--at, else now): the server, or
    /// the relay of the hosts' site, sends the magic packets on their segment
    #[arg(long)]
    pub wake: bool,
    /// Hosts woken at once
    #[arg(long, default_value_t = bootcast::schedule::WAKE_WAVE)]
    pub wave: u32,
    /// Seconds between two waves
    #[arg(long, default_value_t = bootcast::schedule::WAKE_SPACING)]
    pub spacing: u32,
}

impl WakeArgs {
    pub fn request(&self) -> bootcast::schedule::WakeRequest {
        bootcast::schedule::WakeRequest {
            wave: self.wave,
            spacing: self.spacing,
        }
    }
}

fn duration(secs: i64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// One task on one line (for `task list` and `host show`).
pub fn one_line(t: &Task) -> String {
    let image = match (&t.image, &t.version) {
        (Some(i), Some(v)) => format!("{i}@{}", &v[..v.len().min(12)]),
        (Some(i), None) => i.clone(),
        _ => "-".into(),
    };
    let progress = match &t.progress {
        Some(p) => format!(
            "{:>3}% {}/{} {}/s eta {}",
            p.percent,
            bytes(p.bytes_done as u64),
            bytes(p.bytes_total as u64),
            bytes(p.rate as u64),
            p.eta.map(duration).unwrap_or_else(|| "?".into())
        ),
        None => "-".into(),
    };
    let mut s = format!(
        "{:>5}  {}  {:<8} {:<24} {:<9} {}",
        t.id,
        t.mac,
        t.kind.as_str(),
        image,
        t.state.as_str(),
        progress
    );
    if let Some(nb) = t.not_before {
        s += &format!("  not before {}", utc(nb));
    }
    if let Some(m) = t.multicast {
        s += &format!("  multicast session {m}");
    }
    if let Some(g) = &t.group {
        s += &format!("  group {g}");
    }
    if let Some(d) = &t.detail {
        s += &format!("  ({d})");
    }
    s
}

fn table(list: &[Task]) -> String {
    let mut s = format!(
        "{:>5}  {:<17}  {:<8} {:<24} {:<9} PROGRESS\n",
        "ID", "HOST", "KIND", "IMAGE", "STATE"
    );
    for t in list {
        s += &one_line(t);
        s.push('\n');
    }
    s
}

pub fn run(cmd: TaskCmd, data: &Path, out: &Output) -> Result<ExitCode> {
    let db = open_db(data)?;
    let mut c = db.lock();
    let now = bootcast::time::now_unix();
    match cmd {
        TaskCmd::Reimage {
            host,
            group,
            image,
            at,
            replace,
            multicast,
            min_receivers,
            wait,
            max_rate,
            wake,
            then,
        } => {
            let req = TaskRequest {
                kind: TaskKind::Reimage,
                host,
                group,
                image,
                at,
                replace,
                multicast: multicast.then_some(MulticastRequest {
                    min_receivers,
                    wait_secs: Some(wait),
                    max_rate: Some(max_rate),
                }),
                wake: wake.wake.then(|| wake.request()),
                then,
            };
            let created = schedule::create(&mut c, data, &req, now)?;
            out.emit(&serde_json::json!({ "tasks": created }), || table(&created));
        }
        TaskCmd::Capture {
            host,
            image,
            at,
            replace,
            wake,
            then,
        } => {
            let req = TaskRequest {
                kind: TaskKind::Capture,
                host: Some(host),
                group: None,
                image,
                at,
                replace,
                multicast: None,
                wake: wake.wake.then(|| wake.request()),
                then,
            };
            let created = schedule::create(&mut c, data, &req, now)?;
            out.emit(&serde_json::json!({ "tasks": created }), || table(&created));
        }
        TaskCmd::List { host, all } => {
            let mac = host.map(|h| h.parse::<Mac>()).transpose()?;
            let list = tasks::list(&c, mac, all)?;
            out.emit(&serde_json::json!({ "tasks": list }), || {
                if list.is_empty() {
                    if all {
                        "no tasks".into()
                    } else {
                        "no open tasks (--all shows finished ones)".into()
                    }
                } else {
                    table(&list)
                }
            });
        }
        TaskCmd::Rule(cmd) => rules(out, &c, cmd, now)?,
        TaskCmd::Bulk {
            action,
            host,
            group,
            site,
            image,
            at,
            wake,
            confirm,
        } => {
            let mut hosts = host;
            for g in &group {
                if !bootcast::db::groups::exists(&c, g)? {
                    anyhow::bail!(schedule::ScheduleError::UnknownGroup(g.clone()));
                }
                hosts.extend(
                    bootcast::db::groups::members(&c, g)?
                        .iter()
                        .map(Mac::to_string),
                );
            }
            for s in &site {
                let before = hosts.len();
                let mut q = bootcast::db::hosts::HostQuery {
                    site: Some(s.clone()),
                    limit: Some(bootcast::db::hosts::PAGE_MAX),
                    ..Default::default()
                };
                loop {
                    let page = bootcast::db::hosts::page(&c, &q)?;
                    hosts.extend(page.hosts.iter().map(|h| h.mac.to_string()));
                    match page.next {
                        Some(n) => q.after = Some(n),
                        None => break,
                    }
                }
                if hosts.len() == before {
                    anyhow::bail!(
                        "site {s:?} has no active host; `bootcast site list` shows the sites"
                    );
                }
            }
            let req = schedule::Bulk {
                action,
                hosts,
                image,
                at,
                wake,
                confirm,
            };
            let o = schedule::bulk(&mut c, data, &req, now)?;
            out.emit(&o, || {
                let mut lines = vec![format!(
                    "{}: {} done, {} refused",
                    req.action,
                    o.done.len(),
                    o.failed.len()
                )];
                for f in &o.failed {
                    lines.push(format!(
                        "  {}: {}",
                        f["mac"].as_str().unwrap_or(""),
                        f["error"].as_str().unwrap_or("")
                    ));
                }
                lines.join("\n")
            });
            if o.done.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
        TaskCmd::Cancel { id, host, group } => {
            let target = match (id, host, group) {
                (Some(id), None, None) => CancelTarget::Id(id),
                (None, Some(h), None) => CancelTarget::Host(h.parse()?),
                (None, None, Some(g)) => CancelTarget::Group(g),
                _ => anyhow::bail!("name one of: a task ID, --host MAC or --group NAME"),
            };
            let cancelled = schedule::cancel(&mut c, &target, now)?;
            out.emit(&serde_json::json!({ "cancelled": cancelled }), || {
                if cancelled.is_empty() {
                    "no open task to cancel".into()
                } else {
                    table(&cancelled)
                }
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

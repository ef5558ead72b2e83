//! `bootcast inventory show|export|history --host MAC`: the hardware each host reported, and
//! `bootcast events`: boots, inventories, changes, reimages, pushes, and the hook runs they
//! started.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Subcommand, ValueEnum};

use bootcast::db::{events, hosts, inventories};
use bootcast::inventory::glpi;
use bootcast::mac::Mac;

use super::open_db;
use super::output::{utc, Output};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    /// bootcast's own form (every field the agent read)
    Json,
    /// GLPI's native inventory format (what `[glpi] url` forwards)
    Glpi,
}

#[derive(Subcommand, Debug)]
pub enum InventoryCmd {
    /// The newest inventory of a host
    Show {
        #[arg(long)]
        host: String,
        #[arg(long, value_enum, default_value = "json")]
        format: Format,
    },
    /// Write the newest inventory of a host to a file (or stdout), for import elsewhere
    Export {
        #[arg(long)]
        host: String,
        #[arg(long, value_enum, default_value = "glpi")]
        format: Format,
        /// Default: stdout
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Every inventory a host reported, newest first, with what changed
    History {
        #[arg(long)]
        host: String,
    },
}

fn latest(data: &Path, host: &str) -> Result<(Mac, inventories::Stored, Option<String>)> {
    let mac: Mac = host.parse()?;
    let db = open_db(data)?;
    let c = db.lock();
    let stored = inventories::latest(&c, mac)?.with_context(|| {
        format!("no inventory of {mac} yet: it reports one each time it network-boots into the bootcast environment")
    })?;
    let name = hosts::get(&c, mac)?.and_then(|h| h.name);
    Ok((mac, stored, name))
}

fn render(
    format: Format,
    mac: &Mac,
    s: &inventories::Stored,
    name: Option<&str>,
) -> serde_json::Value {
    match format {
        Format::Json => serde_json::to_value(s).expect("JSON"),
        Format::Glpi => glpi::to_glpi(
            &s.inventory,
            &bootcast::inventory::glpi_device_id(name, mac),
        ),
    }
}

pub fn run(cmd: InventoryCmd, data: &Path, out: &Output) -> Result<ExitCode> {
    match cmd {
        InventoryCmd::Show { host, format } => {
            let (mac, s, name) = latest(data, &host)?;
            let v = render(format, &mac, &s, name.as_deref());
            out.emit(&v, || {
                let i = &s.inventory;
                let mut lines = vec![
                    format!("{mac}  reported {}", utc(s.received_at)),
                    format!(
                        "system    {} {} serial {} uuid {}",
                        i.system.vendor.as_deref().unwrap_or("?"),
                        i.system.model.as_deref().unwrap_or("?"),
                        i.system.serial.as_deref().unwrap_or("?"),
                        i.system.uuid.as_deref().unwrap_or("?")
                    ),
                    format!(
                        "firmware  {} {} {} ({})",
                        i.firmware.vendor.as_deref().unwrap_or("?"),
                        i.firmware.version.as_deref().unwrap_or("?"),
                        i.firmware.date.as_deref().unwrap_or("?"),
                        i.firmware.mode.as_deref().unwrap_or("?")
                    ),
                    format!(
                        "memory    {} MiB in {} modules",
                        i.memory_mib(),
                        i.memory.len()
                    ),
                ];
                for c in &i.cpus {
                    lines.push(format!(
                        "cpu       {} ({} cores, {} threads)",
                        c.model.as_deref().unwrap_or("?"),
                        c.cores.map(|n| n.to_string()).unwrap_or("?".into()),
                        c.threads.map(|n| n.to_string()).unwrap_or("?".into())
                    ));
                }
                for d in &i.storage {
                    lines.push(format!(
                        "disk      {} {} {} bytes {} serial {}",
                        d.name,
                        d.kind,
                        d.size_bytes,
                        d.model.as_deref().unwrap_or("?"),
                        d.serial.as_deref().unwrap_or("?")
                    ));
                }
                for n in &i.network {
                    lines.push(format!(
                        "network   {} {} {} link {}",
                        n.name,
                        n.mac,
                        n.driver.as_deref().unwrap_or("?"),
                        if n.link { "up" } else { "down" }
                    ));
                }
                lines.join("\n")
            });
        }
        InventoryCmd::Export {
            host,
            format,
            output,
        } => {
            let (mac, s, name) = latest(data, &host)?;
            let text = serde_json::to_string_pretty(&render(format, &mac, &s, name.as_deref()))?;
            match output {
                Some(p) => {
                    let tmp = p.with_extension("tmp");
                    std::fs::write(&tmp, text + "\n")
                        .with_context(|| format!("writing {}", tmp.display()))?;
                    std::fs::rename(&tmp, &p).with_context(|| {
                        format!("renaming {} to {}", tmp.display(), p.display())
                    })?;
                    out.emit(&serde_json::json!({ "output": p, "host": mac }), || {
                        format!("wrote {}", p.display())
                    });
                }
                None => println!("{text}"),
            }
        }
        InventoryCmd::History { host } => {
            let mac: Mac = host.parse()?;
            let db = open_db(data)?;
            let list = inventories::history_steps(&db.lock(), mac, 1000)?;
            let rows: Vec<serde_json::Value> = list
                .iter()
                .map(|s| {
                    serde_json::json!({
                        "id": s.stored.id,
                        "received_at": bootcast::time::rfc3339(s.stored.received_at),
                        "changes": s.changes,
                    })
                })
                .collect();
            out.emit(&serde_json::json!({ "history": rows }), || {
                if rows.is_empty() {
                    return format!("no inventory of {mac} yet");
                }
                rows.iter()
                    .map(|r| {
                        let c: Vec<String> = r["changes"]
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .map(|c| {
                                        format!(
                                            "{}: {}",
                                            c["what"].as_str().unwrap_or(""),
                                            c["detail"].as_str().unwrap_or("")
                                        )
                                    })
                                    .collect()
                            })
                            .unwrap_or_default();
                        format!(
                            "{:>6}  {}  {}",
                            r["id"],
                            r["received_at"].as_str().unwrap_or(""),
                            if c.is_empty() {
                                "no change".into()
                            } else {
                                c.join("; ")
                            }
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `bootcast events`.
#[derive(clap::Args, Debug)]
pub struct EventsArgs {
    /// Only this host's events
    #[arg(long)]
    host: Option<String>,
    /// Only events of this kind (boot, inventory, inventory_changed, reimage_done, reimage_failed, push_done, wake)
    #[arg(long)]
    kind: Option<String>,
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// The hook runs instead of the events
    #[arg(long)]
    runs: bool,
}

pub fn run_events(args: EventsArgs, data: &Path, out: &Output) -> Result<ExitCode> {
    let db = open_db(data)?;
    let c = db.lock();
    if args.runs {
        let runs = events::runs(&c, args.limit)?;
        out.emit(&serde_json::json!({ "runs": runs }), || {
            runs.iter()
                .map(|r| {
                    format!(
                        "{:>6}  event {:>6}  {:<16} {:<8} {} attempts  {}  {}",
                        r.id,
                        r.event,
                        r.hook,
                        r.outcome,
                        r.attempts,
                        utc(r.started_at),
                        r.detail.as_deref().unwrap_or("")
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        });
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(k) = args.kind.as_deref() {
        if bootcast::hooks::EventKind::parse(k).is_none() {
            anyhow::bail!(
                "--kind {k}: use one of {}",
                bootcast::hooks::EventKind::ALL
                    .map(|k| k.as_str())
                    .join(", ")
            );
        }
    }
    let host = args
        .host
        .map(|h| h.parse::<Mac>())
        .transpose()?
        .map(|m| m.to_string());
    let list = events::list(
        &c,
        &events::EventFilter {
            mac: host.as_deref(),
            kind: args.kind.as_deref(),
            limit: args.limit,
            ..Default::default()
        },
    )?;
    out.emit(&serde_json::json!({ "events": list }), || {
        list.iter()
            .map(|e| {
                format!(
                    "{:>6}  {}  {:<18} {}  {}",
                    e.id,
                    utc(e.at),
                    e.kind,
                    e.mac.as_deref().unwrap_or("-"),
                    e.data
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(ExitCode::SUCCESS)
}

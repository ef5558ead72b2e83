//! `bootcast host ...` and `bootcast group ...`: the hosts the server has seen, and groups of
//! them (a room). They work on `--data DIR` directly, beside a running server.

use super::open_db;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Subcommand;

use bootcast::db::{groups, hosts, tasks};
use bootcast::mac::Mac;

use super::output::{utc, Output};

#[derive(Subcommand, Debug)]
pub enum HostCmd {
    /// Every host that network-booted through bootcast (not those replaced, unless --all)
    List {
        /// Also the retired hosts (replaced by another machine or NIC)
        #[arg(long)]
        all: bool,
    },
    /// One host: its groups, last boots and tasks
    Show { mac: String },
    /// Give a host a name (one DNS label, unique); written into the restored system after a
    /// reimage (see `bootcast image post-deploy`)
    Name {
        mac: String,
        #[arg(required_unless_present = "clear")]
        name: Option<String>,
        /// Remove the host's name
        #[arg(long, conflicts_with = "name")]
        clear: bool,
    },
    /// Wake hosts by Wake-on-LAN: MAC..., or every host of --group; the server (hosts of no
    /// site) or the site's relay sends the magic packets on the hosts' segment, in waves
    #[command(group(clap::ArgGroup::new("who").required(true).args(["macs", "group"])))]
    Wake {
        macs: Vec<String>,
        #[arg(long)]
        group: Option<String>,
        /// When: HH:MM (this server's local time; today, or tomorrow if already past) or RFC
        /// 3339 (default: now)
        #[arg(long)]
        at: Option<String>,
        /// Hosts woken at once
        #[arg(long, default_value_t = bootcast::schedule::WAKE_WAVE)]
        wave: u32,
        /// Seconds between two waves
        #[arg(long, default_value_t = bootcast::schedule::WAKE_SPACING)]
        spacing: u32,
    },
    /// NEW takes OLD's place: name, groups, site and open tasks move to NEW; OLD is retired
    Replace { old: String, new: String },
    /// Mark a host broken (or not, --clear): a new machine of its room takes its place when a
    /// registration rule says --replace-broken
    Broken {
        mac: String,
        #[arg(long)]
        clear: bool,
    },
    /// Approve a new machine's registration rule: its reimage task is made
    Approve { mac: String },
    /// Registration rules: what a new machine gets at its first boot (zero-touch)
    #[command(subcommand)]
    Rule(RegRuleCmd),
    /// Change a host's settings
    Set {
        mac: String,
        /// How the host leaves a network boot for its disk on UEFI: chain (start the disk's
        /// own loader), exit (hand back to the firmware), inherit (its groups', site's, else
        /// the server's `[boot] uefi_local`)
        #[arg(long, value_parser = UEFI_LOCAL)]
        uefi_local: String,
    },
}

// parsed once per process: the size of its largest variant does not matter
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum RegRuleCmd {
    /// A rule: a new machine matching every condition given (none: every new machine) gets
    /// the group, name and image given; rules are tried in order, the first match applies
    Add {
        /// Condition: it booted through this site's relay
        #[arg(long)]
        site: Option<String>,
        /// Condition: its address is in this subnet (10.20.3.0/24)
        #[arg(long)]
        subnet: Option<String>,
        /// Condition: its SMBIOS model matches this pattern (* and ?, any case), e.g. 'NUC11*'
        #[arg(long)]
        model: Option<String>,
        /// Condition: its SMBIOS serial matches this pattern
        #[arg(long)]
        serial: Option<String>,
        /// Condition: the switch port it boots behind (DHCP option 82 circuit id, from the
        /// switch's DHCP relay agent) matches this pattern, e.g. 'Gi1/0/*'
        #[arg(long)]
        circuit: Option<String>,
        /// It joins this group (its room)
        #[arg(long)]
        group: Option<String>,
        /// Its name: {n} is the first free number (two digits), {serial} and {mac} its own,
        /// e.g. r101-pc{n}
        #[arg(long)]
        name: Option<String>,
        /// It is reimaged with this image (its newest approved version) at once
        #[arg(long)]
        image: Option<String>,
        /// ...only after one staff approval (`bootcast host approve MAC`): SMBIOS values can be
        /// forged, so ask it for a confidential image
        #[arg(long, requires = "image")]
        approval: bool,
        /// It takes the place of the group's host marked broken (`bootcast host broken`), name
        /// and all
        #[arg(long, requires = "group")]
        replace_broken: bool,
        /// What it does after the reimage: reboot, poweroff, stay
        #[arg(long, value_parser = ["reboot", "poweroff", "stay"])]
        then: Option<String>,
    },
    /// Every registration rule, in the order they are tried
    List,
    /// Remove rule ID
    Rm { id: i64 },
}

fn run_rule(c: &rusqlite::Connection, cmd: RegRuleCmd, out: &Output) -> Result<()> {
    use bootcast::db::registration_rules::RegistrationRule;
    use bootcast::registration;
    match cmd {
        RegRuleCmd::Add {
            site,
            subnet,
            model,
            serial,
            circuit,
            group,
            name,
            image,
            approval,
            replace_broken,
            then,
        } => {
            let r = RegistrationRule {
                id: 0,
                site,
                subnet,
                model,
                serial,
                circuit,
                group,
                name,
                image,
                approval,
                replace_broken,
                then: then
                    .as_deref()
                    .and_then(bootcast::proto::agent::After::parse),
            };
            let r = registration::add(c, &r, bootcast::time::now_unix())?;
            out.emit(&serde_json::json!({ "rule": r }), || {
                format!("registration rule {}: {}", r.id, describe(&r))
            });
        }
        RegRuleCmd::List => {
            let rules = bootcast::db::registration_rules::list(c)?;
            out.emit(&serde_json::json!({ "rules": rules }), || {
                if rules.is_empty() {
                    return "no registration rules (`bootcast host rule add`): new machines only register".into();
                }
                rules
                    .iter()
                    .map(|r| format!("{:>4}  {}\n", r.id, describe(r)))
                    .collect()
            });
        }
        RegRuleCmd::Rm { id } => {
            registration::remove(c, id)?;
            out.emit(&serde_json::json!({ "removed": id }), || {
                format!("registration rule {id} removed")
            });
        }
    }
    Ok(())
}

/// One line for a registration rule: its conditions, then what it gives.
fn describe(r: &bootcast::db::registration_rules::RegistrationRule) -> String {
    let mut when = Vec::new();
    for (k, v) in [
        ("site", &r.site),
        ("subnet", &r.subnet),
        ("model", &r.model),
        ("serial", &r.serial),
        ("switch port", &r.circuit),
    ] {
        if let Some(v) = v {
            when.push(format!("{k} {v}"));
        }
    }
    let mut gives = Vec::new();
    if r.replace_broken {
        gives.push("the place of its group's broken host".to_string());
    }
    if let Some(g) = &r.group {
        gives.push(format!("group {g}"));
    }
    if let Some(n) = &r.name {
        gives.push(format!("name {n}"));
    }
    if let Some(i) = &r.image {
        gives.push(format!(
            "image {i}{}",
            if r.approval { " once approved" } else { "" }
        ));
    }
    format!(
        "a new machine{} gets {}",
        if when.is_empty() {
            String::new()
        } else {
            format!(" with {}", when.join(", "))
        },
        if gives.is_empty() {
            "nothing more".to_string()
        } else {
            gives.join(", ")
        }
    )
}

/// The values of `--uefi-local`.
pub const UEFI_LOCAL: [&str; 3] = ["chain", "exit", "inherit"];

/// Sets how a host, group or site leaves for its disk on UEFI (`--uefi-local`).
pub fn set_uefi_local(
    c: &rusqlite::Connection,
    of: hosts::UefiLocalOf,
    key: &str,
    value: &str,
    out: &Output,
) -> Result<()> {
    let handoff = bootcast::boot::script::Handoff::parse(value);
    if !hosts::set_uefi_local(c, of, key, handoff)? {
        bail!(
            "no {of:?} {key} is known",
            of = format!("{of:?}").to_lowercase()
        );
    }
    out.emit(
        &serde_json::json!({ "of": format!("{of:?}").to_lowercase(), "name": key, "uefi_local": handoff.map(|h| h.as_str()) }),
        || match handoff {
            Some(h) => format!("{key}: leaves for its disk on UEFI with {}", h.as_str()),
            None => format!("{key}: leaves for its disk on UEFI as it inherits"),
        },
    );
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum GroupCmd {
    /// Put hosts into group NAME (created if needed); a host may be in several groups
    Add {
        name: String,
        #[arg(required = true)]
        macs: Vec<String>,
    },
    /// Take hosts out of group NAME; with no MAC, remove the group itself
    Remove { name: String, macs: Vec<String> },
    /// Every group with its hosts
    List,
    /// Change a group's settings
    #[command(group(clap::ArgGroup::new("setting").required(true).multiple(true).args(["uefi_local", "then"])))]
    Set {
        name: String,
        /// How its hosts leave a network boot for their disk on UEFI: chain, exit, inherit
        #[arg(long, value_parser = UEFI_LOCAL)]
        uefi_local: Option<String>,
        /// What its hosts do once a task made for the group is over: reboot, poweroff, stay
        /// (a task's own --then wins); inherit: reboot
        #[arg(long, value_parser = ["reboot", "poweroff", "stay", "inherit"])]
        then: Option<String>,
    },
}

/// Opens (creating if needed) the database in `data`.
pub fn parse_macs(macs: &[String]) -> Result<Vec<Mac>> {
    Ok(macs
        .iter()
        .map(|m| m.parse())
        .collect::<Result<Vec<Mac>, _>>()?)
}

pub fn run_host(cmd: HostCmd, data: &Path, out: &Output) -> Result<ExitCode> {
    let db = open_db(data)?;
    let mut c = db.lock();
    match cmd {
        HostCmd::Wake {
            macs,
            group,
            at,
            wave,
            spacing,
        } => {
            let how = bootcast::schedule::WakeRequest { wave, spacing };
            let now = bootcast::time::now_unix();
            let queued = bootcast::schedule::wake(
                &mut c,
                &macs,
                group.as_deref(),
                at.as_deref(),
                &how,
                now,
            )?;
            out.emit(&serde_json::json!({ "wakes": queued }), || {
                let first = queued.first().map_or(now, |w| w.at);
                let last = queued.last().map_or(now, |w| w.at);
                format!(
                    "{} host(s) to wake{}, in waves of {wave}; the server (hosts of no site) or the site's relay sends the magic packets; `bootcast events --kind wake` shows them sent",
                    queued.len(),
                    if first <= now && last <= now {
                        " now".to_string()
                    } else {
                        format!(" from {} to {}", utc(first), utc(last))
                    }
                )
            });
        }
        HostCmd::Set { mac, uefi_local } => {
            let mac: Mac = mac.parse()?;
            set_uefi_local(
                &c,
                hosts::UefiLocalOf::Host,
                &mac.to_string(),
                &uefi_local,
                out,
            )?;
        }
        HostCmd::Name { mac, name, .. } => {
            let mac: Mac = mac.parse()?;
            let h = hosts::set_name(&mut c, mac, name.as_deref())?;
            out.emit(&serde_json::json!({ "host": h }), || match &h.name {
                Some(n) => format!("host {mac} is now named {n}"),
                None => format!("host {mac} has no name now"),
            });
        }
        HostCmd::Replace { old, new } => {
            let (old, new): (Mac, Mac) = (old.parse()?, new.parse()?);
            let moved = hosts::replace(&mut c, old, new, bootcast::time::now_unix(), true)?;
            out.emit(
                &serde_json::json!({ "old": old.to_string(), "new": new.to_string(), "moved": moved }),
                || {
                    format!(
                        "{new} took the place of {old} (retired): name {}, groups {}, {} open task(s)",
                        moved.name.as_deref().unwrap_or("-"),
                        if moved.groups.is_empty() { "-".to_string() } else { moved.groups.join(",") },
                        moved.tasks.len()
                    )
                },
            );
        }
        HostCmd::Broken { mac, clear } => {
            let mac: Mac = mac.parse()?;
            if !hosts::set_broken(&c, mac, !clear, bootcast::time::now_unix())? {
                bail!("no host {mac} is known: `bootcast host list` shows the known hosts");
            }
            out.emit(&serde_json::json!({ "mac": mac.to_string(), "broken": !clear }), || {
                if clear {
                    format!("{mac} is no longer marked broken")
                } else {
                    format!("{mac} is marked broken: a new machine of its room takes its place under a registration rule with --replace-broken (or `bootcast host replace {mac} NEW`)")
                }
            });
        }
        HostCmd::Approve { mac } => {
            let mac: Mac = mac.parse()?;
            let task =
                bootcast::registration::approve(&mut c, data, mac, bootcast::time::now_unix())?;
            out.emit(
                &serde_json::json!({ "mac": mac.to_string(), "task": task }),
                || format!("{mac}: registration approved; reimage task {task} made"),
            );
        }
        HostCmd::Rule(cmd) => run_rule(&c, cmd, out)?,
        HostCmd::List { all } => {
            let list: Vec<_> = hosts::list(&c)?
                .into_iter()
                .filter(|h| all || h.retired_at.is_none())
                .collect();
            let mut rows = Vec::new();
            for h in &list {
                rows.push((h.clone(), groups::of_host(&c, h.mac)?));
            }
            let json: Vec<_> = rows
                .iter()
                .map(|(h, g)| {
                    let mut v = serde_json::to_value(h).expect("host serialises");
                    v["groups"] = serde_json::json!(g);
                    v
                })
                .collect();
            out.emit(&serde_json::json!({ "hosts": json }), || {
                if rows.is_empty() {
                    return "no hosts yet: a machine appears here after its first network boot through bootcast".into();
                }
                let mut s = format!(
                    "{:<17}  {:<15}  {:<7}  {:<5}  {:>5}  {:<20}  {:<10}  GROUPS\n",
                    "MAC", "NAME", "ARCH", "FW", "BOOTS", "LAST BOOT", "REGISTERED"
                );
                for (h, g) in &rows {
                    s += &format!(
                        "{:<17}  {:<15}  {:<7}  {:<5}  {:>5}  {:<20}  {:<10}  {}\n",
                        h.mac,
                        h.name.as_deref().unwrap_or("-"),
                        h.arch.as_deref().unwrap_or("-"),
                        h.firmware.map(|f| f.as_str()).unwrap_or("-"),
                        h.boots,
                        utc(h.last_boot),
                        if h.registered() { "yes" } else { "no" },
                        g.join(",")
                    );
                }
                s
            });
        }
        HostCmd::Show { mac } => {
            let mac: Mac = mac.parse()?;
            let Some(h) = hosts::get(&c, mac)? else {
                bail!("no host {mac} is known: network-boot it through bootcast once; `bootcast host list` shows the known hosts");
            };
            let g = groups::of_host(&c, mac)?;
            let boots = hosts::boots(&c, mac, 20)?;
            let t = tasks::list(&c, Some(mac), true)?;
            out.emit(
                &serde_json::json!({ "host": h, "groups": g, "boots": boots, "tasks": t }),
                || {
                    let mut s = format!(
                        "host {}  name {}\n  arch {}  firmware {}  boots {}\n  first boot {}  last boot {}  last ip {}\n  registered {}\n  groups {}\n",
                        h.mac,
                        h.name.as_deref().unwrap_or("-"),
                        h.arch.as_deref().unwrap_or("-"),
                        h.firmware.map(|f| f.as_str()).unwrap_or("-"),
                        h.boots,
                        utc(h.first_boot),
                        utc(h.last_boot),
                        h.last_ip.as_deref().unwrap_or("-"),
                        h.registered_at.map(utc).unwrap_or_else(|| "no".into()),
                        if g.is_empty() { "-".into() } else { g.join(", ") },
                    );
                    s += "tasks:\n";
                    if t.is_empty() {
                        s += "  none\n";
                    }
                    for t in &t {
                        s += &format!("  {}\n", super::task::one_line(t));
                    }
                    s
                },
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run_group(cmd: GroupCmd, data: &Path, out: &Output) -> Result<ExitCode> {
    let db = open_db(data)?;
    let mut c = db.lock();
    let check_name = |name: &str| {
        if !groups::valid_name(name) {
            bail!("invalid group name {name:?}: use 1-64 characters from A-Z a-z 0-9 . _ - , not starting with '.' or '-'");
        }
        Ok(())
    };
    match cmd {
        GroupCmd::Add { name, macs } => {
            check_name(&name)?;
            let macs = parse_macs(&macs)?;
            for m in &macs {
                if hosts::get(&c, *m)?.is_none() {
                    bail!("no host {m} is known: network-boot it through bootcast once (it registers itself), then add it; `bootcast host list` shows the known hosts");
                }
            }
            let g = groups::add(&mut c, &name, &macs, bootcast::time::now_unix())?;
            out.emit(&g, || {
                format!("group {}: {} host(s)", g.name, g.hosts.len())
            });
        }
        GroupCmd::Remove { name, macs } => {
            check_name(&name)?;
            let macs = parse_macs(&macs)?;
            if !groups::remove(&mut c, &name, &macs)? {
                bail!("no group {name:?}; `bootcast group list` shows the groups");
            }
            match groups::get(&c, &name)? {
                Some(g) => out.emit(&serde_json::json!({ "group": g, "removed": false }), || {
                    format!("group {}: {} host(s)", g.name, g.hosts.len())
                }),
                None => out.emit(
                    &serde_json::json!({ "group": { "name": name }, "removed": true }),
                    || format!("group {name} removed"),
                ),
            }
        }
        GroupCmd::Set {
            name,
            uefi_local,
            then,
        } => {
            if let Some(u) = uefi_local {
                set_uefi_local(&c, hosts::UefiLocalOf::Group, &name, &u, out)?;
            }
            if let Some(t) = then {
                let after = bootcast::proto::agent::After::parse(&t);
                if !groups::set_then(&c, &name, after)? {
                    bail!("no group {name:?}: create it with `bootcast group add {name} MAC...`");
                }
                out.emit(
                    &serde_json::json!({ "group": name, "then": after.map(|a| a.as_str()) }),
                    || {
                        format!(
                            "group {name}: once a task made for it is over, its hosts {}",
                            after
                                .unwrap_or(bootcast::proto::agent::After::Reboot)
                                .as_str()
                        )
                    },
                );
            }
        }
        GroupCmd::List => {
            let list = groups::list(&c)?;
            out.emit(&serde_json::json!({ "groups": list }), || {
                if list.is_empty() {
                    return "no groups: create one with `bootcast group add NAME MAC...`".into();
                }
                list.iter()
                    .map(|g| {
                        let macs: Vec<String> = g.hosts.iter().map(|m| m.to_string()).collect();
                        format!(
                            "{}  ({} hosts)  {}\n",
                            g.name,
                            g.hosts.len(),
                            macs.join(" ")
                        )
                    })
                    .collect()
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

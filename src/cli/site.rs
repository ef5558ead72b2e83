//! `bootcast site ...`: sites (a school, a town hall) with their relay's schedule: time zone,
//! transfer windows, bandwidth cap. They work on `--data DIR` directly, beside a running
//! server.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};

use bootcast::db::sites::{self, Incomplete, SiteSettings};
use bootcast::push::window::Windows;
use bootcast::rate::{format_rate, parse_rate};

use super::open_db;
use super::output::{utc, Output};

#[derive(Subcommand, Debug)]
pub enum SiteCmd {
    /// Create a site; prints the token its relay starts with, once (it is stored hashed)
    Add {
        name: String,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Change a site's schedule or subnets (only the options given)
    Set {
        name: String,
        #[command(flatten)]
        settings: SettingsArgs,
        /// How the site's hosts leave a network boot for their disk on UEFI: chain (start the
        /// disk's own loader), exit (hand back to the firmware), inherit (the server's)
        #[arg(long, value_parser = super::host::UEFI_LOCAL)]
        uefi_local: Option<String>,
    },
    /// Every site with its schedule and what its relay last reported
    List,
    /// Make a new relay token for a site (the old one stops working); printed once
    Token {
        name: String,
        /// Replace the token: the only way to see one after `site add` (tokens are stored
        /// hashed); give the new one to the site's relay
        #[arg(long)]
        rotate: bool,
    },
    /// Remove a site (its pushes' progress with it)
    Rm { name: String },
}

#[derive(Args, Debug)]
pub struct SettingsArgs {
    /// Time zone of the windows (a zoneinfo name: Europe/Paris; default UTC)
    #[arg(long)]
    tz: Option<String>,
    /// Transfer windows in the site's local time: 22:00-06:00, several with commas, or always
    #[arg(long)]
    window: Option<String>,
    /// Bandwidth cap of the relay's pulls: 50Mbit, 1Gbit, 5MB (bytes/s); `none` for no cap
    #[arg(long)]
    rate: Option<String>,
    /// The site's subnets (CIDR, comma separated): its machines
    #[arg(long)]
    subnets: Option<String>,
    /// A reimage whose version the relay lacks: wait (default) or upstream (pull through)
    #[arg(long, value_parser = ["wait", "upstream"])]
    incomplete: Option<String>,
}

impl SettingsArgs {
    /// Applies the options given on top of `base`, checking each.
    fn apply(&self, mut s: SiteSettings) -> Result<SiteSettings> {
        if let Some(tz) = &self.tz {
            if bootcast::time::Zone::named(tz).is_none() {
                bail!("unknown time zone {tz:?}: give a zoneinfo name such as Europe/Paris (see /usr/share/zoneinfo)");
            }
            s.tz = tz.clone();
        }
        if let Some(w) = &self.window {
            s.windows = Windows::parse(w).map_err(anyhow::Error::msg)?.to_string();
        }
        if let Some(r) = &self.rate {
            s.rate = if r == "none" {
                None
            } else {
                Some(parse_rate(r).map_err(anyhow::Error::msg)?)
            };
        }
        if let Some(n) = &self.subnets {
            s.subnets = Vec::new();
            for c in n.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                check_cidr(c)?;
                s.subnets.push(c.to_string());
            }
        }
        if let Some(i) = &self.incomplete {
            s.incomplete = Incomplete::parse(i).expect("clap checked");
        }
        Ok(s)
    }
}

fn check_cidr(c: &str) -> Result<()> {
    let ok = c.split_once('/').is_some_and(|(ip, len)| {
        match (ip.parse::<std::net::IpAddr>(), len.parse::<u8>()) {
            (Ok(std::net::IpAddr::V4(_)), Ok(l)) => l <= 32,
            (Ok(std::net::IpAddr::V6(_)), Ok(l)) => l <= 128,
            _ => false,
        }
    });
    if !ok {
        bail!("subnet {c:?} is not a CIDR like 10.20.0.0/16");
    }
    Ok(())
}

fn check_name(name: &str) -> Result<()> {
    if !sites::valid_name(name) {
        bail!("invalid site name {name:?}: use 1-64 characters from A-Z a-z 0-9 . _ - , not starting with '.' or '-'");
    }
    Ok(())
}

pub fn run(cmd: SiteCmd, data: &Path, out: &Output) -> Result<ExitCode> {
    let db = open_db(data)?;
    let c = db.lock();
    let now = bootcast::time::now_unix();
    match cmd {
        SiteCmd::Add { name, settings } => {
            check_name(&name)?;
            let s = settings.apply(SiteSettings {
                subnets: Vec::new(),
                tz: "UTC".into(),
                windows: "always".into(),
                rate: None,
                incomplete: Incomplete::Wait,
            })?;
            let token = bootcast::http::auth::random_hex(24)?;
            if !sites::add(&c, &name, &s, &token, now)? {
                bail!("site {name} exists; change it with `bootcast site set {name} ...`");
            }
            out.emit(
                &serde_json::json!({ "site": name, "token": token }),
                || {
                    format!(
                        "site {name} created ({} {}{})\nits relay token (shown only now; `bootcast site token {name} --rotate` makes a new one): {token}\nthe relay starts with: BOOTCAST_RELAY_TOKEN=<token> bootcast relay --upstream http://THIS-SERVER:8080 --site {name}\n(or --token-file FILE, a file of mode 0600 holding the token)",
                        s.tz,
                        s.windows,
                        s.rate.map(|r| format!(", cap {}", format_rate(r))).unwrap_or_default()
                    )
                },
            );
        }
        SiteCmd::Set {
            name,
            settings,
            uefi_local,
        } => {
            let Some(site) = sites::get(&c, &name)? else {
                bail!("no site {name}; `bootcast site list` shows them");
            };
            if let Some(v) = &uefi_local {
                let of = bootcast::db::hosts::UefiLocalOf::Site;
                bootcast::db::hosts::set_uefi_local(
                    &c,
                    of,
                    &name,
                    bootcast::boot::script::Handoff::parse(v),
                )?;
            }
            let s = settings.apply(SiteSettings {
                subnets: site.subnets,
                tz: site.tz,
                windows: site.windows,
                rate: site.rate,
                incomplete: site.incomplete,
            })?;
            sites::update(&c, &name, &s)?;
            let site = sites::get(&c, &name)?.expect("site exists");
            out.emit(&serde_json::json!({ "site": site }), || {
                format!("site {name} changed")
            });
        }
        SiteCmd::List => {
            let list = sites::list(&c)?;
            out.emit(&serde_json::json!({ "sites": list }), || {
                if list.is_empty() {
                    return "no sites yet: `bootcast site add NAME --tz Europe/Paris --window 22:00-06:00 --rate 50Mbit`".into();
                }
                let mut s = format!(
                    "{:<16}  {:<16}  {:<12}  {:>12}  {:<8}  RELAY\n",
                    "SITE", "TZ", "WINDOWS", "CAP", "VERSIONS"
                );
                for site in &list {
                    let relay = match &site.relay {
                        Some(r) => format!(
                            "{} (last heartbeat {})",
                            r.url.as_deref().unwrap_or("-"),
                            utc(r.last_heartbeat)
                        ),
                        None => "never reported".into(),
                    };
                    s += &format!(
                        "{:<16}  {:<16}  {:<12}  {:>12}  {:<8}  {relay}\n",
                        site.name,
                        site.tz,
                        site.windows,
                        site.rate.map(format_rate).unwrap_or_else(|| "none".into()),
                        site.relay.as_ref().map_or(0, |r| r.complete.len()),
                    );
                }
                s
            });
        }
        SiteCmd::Token { name, rotate } => {
            if sites::get(&c, &name)?.is_none() {
                bail!("no site {name}; `bootcast site list` shows them");
            }
            if !rotate {
                bail!(
                    "relay tokens are stored hashed: site {name}'s cannot be shown again; `bootcast site token {name} --rotate` makes a new one (then give it to the site's relay: its old token stops working at once)"
                );
            }
            let token = bootcast::http::auth::random_hex(24)?;
            sites::set_token(&c, &name, &token)?;
            out.emit(&serde_json::json!({ "site": name, "token": token }), || {
                format!("{token}\n(site {name}'s new relay token; the old one no longer works)")
            });
        }
        SiteCmd::Rm { name } => {
            if !sites::remove(&c, &name)? {
                bail!("no site {name}; `bootcast site list` shows them");
            }
            out.emit(&serde_json::json!({ "removed": name }), || {
                format!("site {name} removed")
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

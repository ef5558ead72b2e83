//! Fleet push simulation (bench/fleet/run.sh): `push::sim` over a fleet of sites with caps
//! spread log-uniformly from 10 Mbit/s to 1 Gbit/s, a night window in each site's own zone
//! and one central server's egress shared by all. Prints one row per site (sorted by
//! completion time) and a summary, or the same as JSON (`--json`). No VMs, no network: the
//! whole run takes milliseconds and is the same every time (seeded).

use std::collections::BTreeMap;

use anyhow::{bail, Context};
mod sim;

use bootcast::push::window::Windows;
use bootcast::rate::{format_rate, parse_rate};
use bootcast::time::{parse_rfc3339, rfc3339, Zone};
use clap::Parser;
use serde_json::json;
use sim::{FleetSpec, Miss, Outcome, Scenario, SiteResult};

#[derive(Parser)]
#[command(
    about = "Simulates a push of new master chunks to a fleet of site relays",
    args_override_self = true
)]
struct Args {
    #[arg(long, default_value_t = 94)]
    sites: usize,
    #[arg(long, default_value_t = 8)]
    masters: usize,
    /// New chunks of the monthly update, % of each master's bytes.
    #[arg(long, default_value_t = 5.0)]
    update_percent: f64,
    /// `update` (every site lacks the update's new chunks) or `seed` (every site is new and
    /// lacks every unique chunk).
    #[arg(long, default_value = "update")]
    scenario: Scenario,
    /// Transfer window, in each site's local time.
    #[arg(long, default_value = "22:00-06:00")]
    window: String,
    /// The central server's egress, shared by all sites.
    #[arg(long, default_value = "10Gbit")]
    central_egress: String,
    #[arg(long, default_value = "10Mbit")]
    min_cap: String,
    #[arg(long, default_value = "1Gbit")]
    max_cap: String,
    /// Round trips to the central server (ms), log-uniform; the longest to the lowest caps.
    #[arg(long, default_value_t = 5)]
    min_rtt_ms: u64,
    #[arg(long, default_value_t = 80)]
    max_rtt_ms: u64,
    /// Zone of the central server and of every site not in --other-zones (a zoneinfo name).
    #[arg(long, default_value = "Europe/Paris")]
    zone: String,
    /// A few sites in other zones: NAME:COUNT,... ("" for none).
    #[arg(
        long,
        default_value = "Indian/Reunion:3,America/Martinique:2,America/Cayenne:1,Pacific/Noumea:1"
    )]
    other_zones: String,
    /// When the push starts: local time in --zone (YYYY-MM-DDTHH:MM) or RFC 3339 with offset.
    #[arg(long, default_value = "2026-11-23T18:00")]
    start: String,
    #[arg(long, default_value_t = 14)]
    horizon_days: i64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
}

fn load_zone(name: &str) -> anyhow::Result<Zone> {
    Zone::named(name)
        .with_context(|| format!("zone {name}: not in the tzdb (a name such as Europe/Paris)"))
}

/// `YYYY-MM-DDTHH:MM[:SS]` local in `zone`, or RFC 3339 with an offset.
fn parse_start(s: &str, zone: &Zone) -> anyhow::Result<i64> {
    if let Some(t) = parse_rfc3339(s) {
        return Ok(t);
    }
    match s
        .trim()
        .parse::<jiff::civil::DateTime>()
        .ok()
        .and_then(|dt| zone.unix(dt))
    {
        Some(t) => Ok(t),
        None => bail!("--start {s:?}: write YYYY-MM-DDTHH:MM (local time in --zone) or RFC 3339"),
    }
}

/// `Mon 2026-11-23 22:00` in `zone`.
fn local(t: i64, zone: &Zone) -> String {
    zone.civil(t).strftime("%a %Y-%m-%d %H:%M").to_string()
}

fn utc_offset(zone: &Zone, t: i64) -> String {
    let o = zone.offset_at(t);
    let sign = if o < 0 { '-' } else { '+' };
    format!("UTC{sign}{:02}:{:02}", o.abs() / 3600, o.abs() % 3600 / 60)
}

/// `9h05` (rounded up to the minute).
fn hours(secs: i64) -> String {
    let m = (secs.max(0) + 59) / 60;
    format!("{}h{:02}", m / 60, m % 60)
}

fn gib(b: u64) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

fn miss_text(m: Miss) -> &'static str {
    match m {
        Miss::CapTooLow => "cap too low for the bytes in one night",
        Miss::SharedEgress => "central egress shared (alone it would fit)",
        Miss::RoundTrip => "round trip holds it below its cap (at its cap it would fit)",
    }
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let window = Windows::parse(&a.window).map_err(anyhow::Error::msg)?;
    let rate = |s: &str| parse_rate(s).map_err(anyhow::Error::msg);
    let zone = load_zone(&a.zone)?;
    let mut other_zones = Vec::new();
    for part in a.other_zones.split(',').filter(|p| !p.trim().is_empty()) {
        let (name, count) = part
            .trim()
            .rsplit_once(':')
            .with_context(|| format!("--other-zones {part:?}: write NAME:COUNT"))?;
        let count: usize = count
            .parse()
            .with_context(|| format!("--other-zones {part:?}: bad count"))?;
        other_zones.push((name.to_string(), load_zone(name)?, count));
    }
    let start = parse_start(&a.start, &zone)?;
    let spec = FleetSpec {
        sites: a.sites,
        masters: a.masters,
        scenario: a.scenario,
        update_percent: a.update_percent,
        window,
        central_egress: rate(&a.central_egress)?,
        min_cap: rate(&a.min_cap)?,
        max_cap: rate(&a.max_cap)?,
        min_rtt_ms: a.min_rtt_ms,
        max_rtt_ms: a.max_rtt_ms,
        zone: (a.zone.clone(), zone.clone()),
        other_zones,
        start,
        horizon: a.horizon_days * 86_400,
        seed: a.seed,
    };
    let fleet = sim::fleet(&spec);
    let out = fleet.sim.run();
    let zones: BTreeMap<&str, &Zone> = fleet
        .sim
        .sites
        .iter()
        .map(|s| (s.zone_name.as_str(), &s.zone))
        .collect();
    let zone_of = |r: &SiteResult| zones[r.zone.as_str()];

    // sorted by completion (not done last), then name
    let mut rows: Vec<&SiteResult> = out.sites.iter().collect();
    rows.sort_by_key(|r| (r.done_at.unwrap_or(i64::MAX), r.name.clone()));

    let all = fleet.catalog.all();
    let unique = fleet.catalog.unique_bytes(&all);
    let listed = fleet.catalog.listed_bytes(&all);
    let update_unique = fleet.update.unique_bytes(&all);
    let missing: Vec<&SiteResult> = out.missing().collect();
    let count = |m: Miss| missing.iter().filter(|r| r.miss == Some(m)).count();
    let not_done = out.sites.iter().filter(|r| r.done_at.is_none()).count();
    let last_done = out.sites.iter().filter_map(|r| r.done_at).max();
    let max_nights = out.sites.iter().filter_map(|r| r.nights).max().unwrap_or(0);

    if a.json {
        let sites: Vec<_> = rows
            .iter()
            .map(|r| {
                let z = zone_of(r);
                json!({
                    "site": r.name,
                    "cap_bytes_per_s": r.cap,
                    "cap": format_rate(r.cap),
                    "rtt_ms": r.rtt_ms,
                    "rate_bytes_per_s": r.rate,
                    "zone": r.zone,
                    "upstream_bytes": r.bytes,
                    "upstream_gib": (gib(r.bytes) * 1000.0).round() / 1000.0,
                    "first_night_opens_local": local(r.first_night_opens, z),
                    "first_night_end_local": local(r.first_night_end, z),
                    "done_at": r.done_at.map(rfc3339),
                    "done_at_local": r.done_at.map(|t| local(t, z)),
                    "alone_done_at_local": r.alone_done_at.map(|t| local(t, z)),
                    "nights": r.nights,
                    "misses_first_night": r.misses_first_night,
                    "miss": r.miss,
                })
            })
            .collect();
        let v = json!({
            "scenario": a.scenario,
            "sites": a.sites,
            "masters": fleet.catalog.masters.iter().enumerate()
                .map(|(m, x)| json!({"name": x.name, "bytes": fleet.catalog.master_bytes(m)}))
                .collect::<Vec<_>>(),
            "listed_bytes": listed,
            "unique_bytes": unique,
            "update_percent": a.update_percent,
            "update_unique_bytes": update_unique,
            "window": spec.window.to_string(),
            "zone": a.zone,
            "start": rfc3339(start),
            "start_local": local(start, &zone),
            "central_egress_bytes_per_s": spec.central_egress,
            "seed": a.seed,
            "rows": sites,
            "summary": {
                "egress_bytes": out.egress_bytes,
                "egress_gib": (gib(out.egress_bytes) * 100.0).round() / 100.0,
                "peak_rate_bytes_per_s": out.peak_rate,
                "peak_rate": format_rate(out.peak_rate),
                "peak_at": rfc3339(out.peak_at),
                "peak_at_local": local(out.peak_at, &zone),
                "peak_sites": out.peak_sites,
                "egress_at_cap_seconds": out.saturated_seconds,
                "missing_first_night": missing.len(),
                "missing_cap_too_low": count(Miss::CapTooLow),
                "missing_shared_egress": count(Miss::SharedEgress),
                "missing_round_trip": count(Miss::RoundTrip),
                "not_done_within_horizon": not_done,
                "last_done_at": last_done.map(rfc3339),
                "max_nights": max_nights,
            },
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }

    let what = match a.scenario {
        Scenario::Update => format!(
            "monthly update, {} % new chunks per master: {:.2} GiB of new unique chunks per site",
            a.update_percent,
            gib(update_unique)
        ),
        Scenario::Seed => format!(
            "new sites holding nothing: {:.2} GiB of unique chunks per site",
            gib(unique)
        ),
    };
    println!("fleet push simulation: scenario {} ({what})", a.scenario);
    let names: Vec<String> = fleet
        .catalog
        .masters
        .iter()
        .enumerate()
        .map(|(m, x)| format!("{} {:.0}", x.name, gib(fleet.catalog.master_bytes(m))))
        .collect();
    println!(
        "masters (GiB compressed): {}; {:.0} GiB listed, {:.0} GiB unique (shared bases once)",
        names.join(", "),
        gib(listed),
        gib(unique)
    );
    println!(
        "{} sites, caps {} .. {} log-uniform (seed {}), round trips {} .. {} ms (the longest to \
         the lowest caps; a relay pulls at most {} KiB per round trip); window {} in each site's \
         local time; central egress {}; push starts {} {}",
        a.sites,
        format_rate(spec.min_cap),
        format_rate(spec.max_cap),
        a.seed,
        spec.min_rtt_ms,
        spec.max_rtt_ms,
        sim::IN_FLIGHT >> 10,
        spec.window,
        format_rate(spec.central_egress),
        local(start, &zone),
        a.zone
    );
    println!();
    let header = format!(
        "{:<8} {:>13} {:>6} {:>13}  {:<18} {:>12}  {:<20} {:>11} {:>6}",
        "site",
        "cap",
        "rtt",
        "rate",
        "zone",
        "upstream GiB",
        "done at (local)",
        "after start",
        "nights"
    );
    println!("{header}");
    println!("{}", "-".repeat(header.len()));
    for r in &rows {
        let done = r
            .done_at
            .map_or_else(|| "not done".to_string(), |t| local(t, zone_of(r)));
        let nights = r.nights.map_or_else(|| "-".to_string(), |n| n.to_string());
        let mark = match r.miss {
            Some(Miss::CapTooLow) => "  MISSES NIGHT (cap)",
            Some(Miss::SharedEgress) => "  MISSES NIGHT (shared egress)",
            Some(Miss::RoundTrip) => "  MISSES NIGHT (round trip)",
            None => "",
        };
        let after = r
            .done_at
            .map_or_else(|| "-".to_string(), |t| hours(t - start));
        println!(
            "{:<8} {:>13} {:>6} {:>13}  {:<18} {:>12.2}  {:<20} {:>11} {:>6}{mark}",
            r.name,
            format_rate(r.cap),
            format!("{}ms", r.rtt_ms),
            format_rate(r.rate),
            r.zone,
            gib(r.bytes),
            done,
            after,
            nights
        );
    }
    println!();
    summary(&out, &a, &spec, &zone, &zones);
    Ok(())
}

/// The lines under the table: egress, sites missing the first night and why, per zone.
fn summary(out: &Outcome, a: &Args, spec: &FleetSpec, zone: &Zone, zones: &BTreeMap<&str, &Zone>) {
    let missing: Vec<&SiteResult> = out.missing().collect();
    let not_done = out.sites.iter().filter(|r| r.done_at.is_none()).count();
    let last_done = out.sites.iter().filter_map(|r| r.done_at).max();
    let max_nights = out.sites.iter().filter_map(|r| r.nights).max().unwrap_or(0);
    let n = out.sites.len();
    println!(
        "central egress: {:.2} GiB ({:.2} TB) in total ({} sites), peak {} at {} {} ({} sites \
         pulling); at its cap of {} for {}",
        gib(out.egress_bytes),
        out.egress_bytes as f64 / 1e12,
        n,
        format_rate(out.peak_rate),
        local(out.peak_at, zone),
        a.zone,
        out.peak_sites,
        format_rate(out.central_egress),
        hours(out.saturated_seconds)
    );
    println!(
        "sites missing the first night: {} of {n}{}",
        missing.len(),
        if not_done > 0 {
            format!(" ({not_done} not done within {} days)", a.horizon_days)
        } else {
            String::new()
        }
    );
    for m in [Miss::CapTooLow, Miss::RoundTrip, Miss::SharedEgress] {
        let these: Vec<&&SiteResult> = missing.iter().filter(|r| r.miss == Some(m)).collect();
        if these.is_empty() {
            continue;
        }
        let max_cap = these.iter().map(|r| r.cap).max().unwrap_or(0);
        let min_cap = these.iter().map(|r| r.cap).min().unwrap_or(0);
        let mut line = format!(
            "  {}: {} (caps {} .. {})",
            miss_text(m),
            these.len(),
            format_rate(min_cap),
            format_rate(max_cap)
        );
        if m == Miss::CapTooLow {
            // the cap each would need to fit its first night alone
            let need = these
                .iter()
                .map(|r| r.bytes.div_ceil(r.first_night_open_seconds.max(1) as u64))
                .max()
                .unwrap_or(0);
            let bytes = these.iter().map(|r| r.bytes).max().unwrap_or(0);
            let hours = these
                .iter()
                .map(|r| r.first_night_open_seconds)
                .min()
                .unwrap_or(0) as f64
                / 3600.0;
            line += &format!(
                "; {:.2} GiB in {hours:.0} h of window needs {} at least",
                gib(bytes),
                format_rate(need)
            );
        }
        println!("{line}");
    }
    if let Some(t) = last_done {
        println!(
            "last site done: {} {}; nights needed at most: {max_nights}",
            local(t, zone),
            a.zone
        );
    }
    println!("per zone (first night, in {} time):", a.zone);
    for (name, z) in zones {
        let here: Vec<&SiteResult> = out.sites.iter().filter(|r| r.zone == *name).collect();
        let Some(first) = here.first() else { continue };
        let last = here.iter().filter_map(|r| r.done_at).max();
        // a window open at the start: its remaining hours count toward the first night
        let early = if spec.window.is_open(out.start, z) {
            let closes = spec.window.next_change(out.start, z).unwrap_or(out.start);
            format!("  (and open from the start until {})", local(closes, zone))
        } else {
            String::new()
        };
        println!(
            "  {:<18} {:>3} sites  {:<9}  night {} .. {}  last done {}  missing {}{early}",
            name,
            here.len(),
            utc_offset(z, out.start),
            local(first.first_night_opens, zone),
            &local(first.first_night_end, zone)[4..],
            last.map_or_else(|| "-".into(), |t| local(t, zone)),
            here.iter().filter(|r| r.misses_first_night).count()
        );
    }
}

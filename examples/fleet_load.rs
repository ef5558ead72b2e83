//! bench/fleet-load's driver (see bench/README.md).
//!
//! `generate` writes a region's central database: sites with their relay tokens, hosts bound
//! to them, a year of boots, events, tasks and weekly pushes to every site, each host's newest
//! inventory, and one open reimage task for each PC of the boot storm.
//!
//! `run` loads a running central server as the region does: every site's relay heartbeats
//! at the interval the server answers (and holds its order watch open), and the storm's PCs
//! boot through their site's relay, spread evenly over the storm's duration: boot script,
//! hello, inventory, then the restore's progress every 2 s and done, each sent with the
//! relay's headers as a relay passes them on. It prints each call's count, errors, p50, p99
//! and maximum, and how many transactions the server's database writes took.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use rusqlite::params;
use serde::{Deserialize, Serialize};

use bootcast::proto::relay::{
    Heartbeat, HeartbeatReply, PushProgress, VersionRef, DHCP_SEEN_HEADER, FORWARDED_FOR_HEADER,
    PROTOCOL, RELAY_TOKEN_HEADER, RELAY_URL_HEADER,
};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write the region's database into DATA (which holds the image the storm's tasks name)
    Generate {
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value_t = 40_000)]
        hosts: usize,
        #[arg(long, default_value_t = 94)]
        sites: usize,
        /// Days of history
        #[arg(long, default_value_t = 365)]
        days: i64,
        /// PCs of the boot storm (each gets an open reimage task)
        #[arg(long, default_value_t = 2000)]
        storm: usize,
        /// NAME@VERSION the storm's tasks reimage (a version in DATA's store)
        #[arg(long)]
        image: String,
        /// Where the sites' tokens and the storm's PCs are written
        #[arg(long)]
        region: PathBuf,
    },
    /// Load the server at URL with the region written by `generate`
    Run {
        #[arg(long)]
        url: String,
        #[arg(long)]
        region: PathBuf,
        /// Seconds over which the storm's PCs start
        #[arg(long, default_value_t = 120)]
        storm_secs: u64,
        /// Progress reports each PC sends (every 2 s) before done
        #[arg(long, default_value_t = 10)]
        progress: u32,
        /// The staff API token: with it, a staff console polls the host list, the pushes
        /// and the newest events every 2 s during the storm
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// A site operator's personal token: the console's reads are timed as them too
        #[arg(long)]
        operator_token_file: Option<PathBuf>,
    },
}

#[derive(Serialize, Deserialize)]
struct Region {
    sites: Vec<SiteInfo>,
    /// (MAC, index of its site)
    storm: Vec<(String, usize)>,
    image: VersionRef,
}

#[derive(Serialize, Deserialize)]
struct SiteInfo {
    name: String,
    token: String,
}

fn mac_of(h: usize) -> String {
    format!(
        "52:54:00:{:02x}:{:02x}:{:02x}",
        (h >> 16) & 0xff,
        (h >> 8) & 0xff,
        h & 0xff
    )
}

const IMAGES: [&str; 8] = [
    "win11-edu",
    "win11-admin",
    "win10-edu",
    "win10-admin",
    "debian12",
    "ubuntu2404",
    "win11-lab",
    "win10-kiosk",
];

#[allow(clippy::too_many_arguments)]
fn generate(
    data: PathBuf,
    hosts: usize,
    sites: usize,
    days: i64,
    storm: usize,
    image: String,
    region: PathBuf,
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let (name, version) = image
        .split_once('@')
        .ok_or_else(|| anyhow::anyhow!("--image NAME@VERSION"))?;
    let db = bootcast::db::Db::open(&bootcast::db::path(&data))?;
    let mut conn = db.lock();
    conn.pragma_update(None, "synchronous", "OFF")?;
    let tx = conn.transaction()?;
    let now = bootcast::time::now_unix();
    let start = now - days * 86_400;
    let mut info = Vec::new();
    for s in 0..sites {
        let name = format!("site{s:03}");
        let token =
            blake3::hash(format!("fleet-load token {s}").as_bytes()).to_hex()[..48].to_string();
        tx.execute(
            "INSERT INTO sites (name, tz, windows, relay_token, created_at) VALUES (?1, 'Europe/Paris', '22:00-06:00', ?2, ?3)",
            params![name, bootcast::db::sites::token_hash(&token), start],
        )?;
        info.push(SiteInfo { name, token });
    }
    // one inventory of this machine, as a template for every host's newest one
    let template =
        bootcast::inventory::collect::collect(std::path::Path::new("/"), &mac_of(0), now);
    let template = serde_json::to_string(&template)?;
    {
        let mut host = tx.prepare(
            "INSERT INTO hosts (mac, arch, firmware, first_boot, last_boot, last_ip, boots, registered_at, site, name)
             VALUES (?1, 'x86_64', 'uefi', ?2, ?3, ?4, ?5, ?2, ?6, ?7)",
        )?;
        let mut boot = tx.prepare(
            "INSERT INTO boots (mac, at, stage, firmware, arch, ip) VALUES (?1, ?2, ?3, 'uefi', 'x86_64', ?4)",
        )?;
        let mut event =
            tx.prepare("INSERT INTO events (at, kind, mac, data) VALUES (?1, ?2, ?3, '{}')")?;
        let mut inventory =
            tx.prepare("INSERT INTO inventories (mac, received_at, data) VALUES (?1, ?2, ?3)")?;
        let mut task = tx.prepare(
            "INSERT INTO tasks (mac, kind, state, created_at, updated_at, image, version)
             VALUES (?1, 'reimage', ?2, ?3, ?3, ?4, ?5)",
        )?;
        for h in 0..hosts {
            let mac = mac_of(h);
            let site = h % sites;
            let ip = format!("10.{}.{}.{}", site, (h / sites) >> 8, (h / sites) & 0xff);
            let weeks = days / 7;
            host.execute(params![
                mac,
                start,
                now - 86_400,
                ip,
                weeks,
                info[site].name,
                format!("pc-{site:03}-{:05}", h / sites)
            ])?;
            for w in 0..weeks {
                let at = start + w * 7 * 86_400 + (h as i64 % 3600);
                boot.execute(params![
                    mac,
                    at,
                    if w % 4 == 0 { "agent" } else { "script" },
                    ip
                ])?;
                if w % 2 == 0 {
                    event.execute(params![
                        at,
                        if w % 4 == 0 { "reimage_done" } else { "boot" },
                        mac
                    ])?;
                }
                if w % 13 == 0 {
                    task.execute(params![
                        mac,
                        "done",
                        at,
                        IMAGES[h % 8],
                        format!("{:064x}", w)
                    ])?;
                }
            }
            inventory.execute(params![
                mac,
                now - 86_400,
                template.replace(&mac_of(0), &mac)
            ])?;
        }
        // the storm's PCs: the first `storm` hosts, spread over every site
        for h in 0..storm.min(hosts) {
            task.execute(params![mac_of(h), "pending", now, name, version])?;
        }
    }
    // a year of weekly pushes of each image to every site, done
    {
        let mut push = tx.prepare("INSERT INTO pushes (created_at, state) VALUES (?1, ?2)")?;
        let mut pv = tx.prepare(
            "INSERT INTO push_versions (push, image, version, bytes) VALUES (?1, ?2, ?3, ?4)",
        )?;
        let mut ps = tx.prepare(
            "INSERT INTO push_sites (push, site, state, bytes_done, bytes_total, updated_at) VALUES (?1, ?2, ?3, ?4, ?4, ?5)",
        )?;
        for w in 0..days / 7 {
            for (i, img) in IMAGES.iter().enumerate() {
                let at = start + w * 7 * 86_400;
                push.execute(params![at, "done"])?;
                let id = tx.last_insert_rowid();
                pv.execute(params![
                    id,
                    img,
                    format!("{:032x}{:032x}", w, i),
                    3_000_000_000i64
                ])?;
                for s in &info {
                    ps.execute(params![id, s.name, "done", 3_000_000_000i64, at + 3600])?;
                }
            }
        }
        // this week's push of the storm's image, open at every site
        push.execute(params![now, "active"])?;
        let id = tx.last_insert_rowid();
        pv.execute(params![id, name, version, 1_000_000i64])?;
        for s in &info {
            ps.execute(params![id, s.name, "waiting", 0, now])?;
        }
    }
    tx.commit()?;
    drop(conn);
    // the storm's PCs get boot scripts for the boot environment; none boots it
    bootcast::testkit::stand_in_bootenv(&data, bootcast::proto::agent::AGENT_PROTOCOL);
    let storm_pcs = (0..storm.min(hosts))
        .map(|h| (mac_of(h), h % sites))
        .collect();
    let r = Region {
        sites: info,
        storm: storm_pcs,
        image: VersionRef {
            image: name.to_string(),
            version: version.to_string(),
        },
    };
    std::fs::write(&region, serde_json::to_vec(&r)?)?;
    let size = std::fs::metadata(bootcast::db::path(&data))?.len();
    println!(
        "generated: {hosts} hosts on {sites} sites, {days} days of history, {} pushes, {storm} storm PCs; database {} MB in {:.1} s",
        (days / 7) as usize * IMAGES.len() + 1,
        size / 1_000_000,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Latencies of one kind of call, and its errors.
#[derive(Default)]
struct Calls {
    ms: Vec<f64>,
    errors: u64,
    first_error: Option<String>,
}

type Stats = Arc<Mutex<BTreeMap<&'static str, Calls>>>;

fn record(stats: &Stats, what: &'static str, t: Instant, outcome: Result<(), String>) {
    let mut s = stats.lock().unwrap();
    let c = s.entry(what).or_default();
    c.ms.push(t.elapsed().as_secs_f64() * 1000.0);
    if let Err(e) = outcome {
        c.errors += 1;
        c.first_error.get_or_insert(e);
    }
}

async fn send(req: reqwest::RequestBuilder) -> Result<(reqwest::StatusCode, Vec<u8>), String> {
    let resp = req.send().await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| e.to_string())?;
    Ok((status, body.to_vec()))
}

fn checked(r: Result<(reqwest::StatusCode, Vec<u8>), String>) -> Result<Vec<u8>, String> {
    match r {
        Ok((s, b)) if s.is_success() => Ok(b),
        Ok((s, b)) => Err(format!("{s}: {}", String::from_utf8_lossy(&b))),
        Err(e) => Err(e),
    }
}

async fn relay_loop(
    client: reqwest::Client,
    url: String,
    site: SiteInfo,
    index: usize,
    image: VersionRef,
    until: Instant,
    stats: Stats,
) {
    let mut pushes: Vec<PushProgress> = Vec::new();
    // the site book's revision held, as a relay keeps it (the first reply carries the whole
    // book, later ones only what changed)
    let mut book: Option<u64> = None;
    let mut first = true;
    while Instant::now() < until {
        let hb = Heartbeat {
            protocol: PROTOCOL,
            site: site.name.clone(),
            url: format!("http://10.{index}.0.2:8080"),
            version: env!("CARGO_PKG_VERSION").to_string(),
            cache_bytes: 40_000_000_000,
            quota_bytes: None,
            complete: vec![image.clone()],
            pushes: pushes.clone(),
            book,
            woken: vec![],
        };
        let t = Instant::now();
        let r = checked(
            send(
                client
                    .post(format!("{url}/api/v1/relay/heartbeat"))
                    .bearer_auth(&site.token)
                    .json(&hb),
            )
            .await,
        );
        let mut interval = 5;
        let outcome = r.and_then(|b| {
            let reply: HeartbeatReply =
                serde_json::from_slice(&b).map_err(|e| format!("heartbeat reply: {e}"))?;
            interval = reply.interval.max(1);
            if let Some(b) = &reply.book {
                book = Some(b.rev);
            }
            // the relay holds every version of its orders: report them done
            pushes = reply
                .pushes
                .iter()
                .map(|o| PushProgress {
                    push: o.id,
                    state: bootcast::proto::relay::PushState::Done,
                    bytes_done: 1_000_000,
                    bytes_total: 1_000_000,
                    fetched: 0,
                    rate: 0,
                    detail: None,
                })
                .collect();
            Ok(())
        });
        // a relay's first heartbeat gets its site's whole book
        let what = match first {
            true => "relay first heartbeat",
            false => "relay heartbeat",
        };
        first = false;
        record(&stats, what, t, outcome);
        tokio::time::sleep(Duration::from_secs(interval)).await;
    }
}

/// The relay's long poll on the push orders (answered when they change, else after 25 s).
async fn wait_loop(client: reqwest::Client, url: String, site: SiteInfo, until: Instant) {
    let mut seen = 0u64;
    while Instant::now() < until {
        let r = client
            .get(format!("{url}/api/v1/relay/wait?seen={seen}"))
            .bearer_auth(&site.token)
            .timeout(Duration::from_secs(40))
            .send()
            .await;
        match r {
            Ok(resp) => {
                if let Ok(v) = resp.json::<serde_json::Value>().await {
                    seen = v["orders"].as_u64().unwrap_or(seen);
                }
            }
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

/// A staff member with the console open: the host list, the pushes and the newest events,
/// every 2 s.
async fn staff_loop(
    client: reqwest::Client,
    url: String,
    token: String,
    until: Instant,
    stats: Stats,
) {
    while Instant::now() < until {
        for (what, path) in [
            ("staff hosts (first page)", "/api/v1/hosts"),
            ("staff host search", "/api/v1/hosts?q=pc1"),
            ("staff dashboard", "/api/v1/dashboard"),
            ("staff pushes", "/api/v1/pushes"),
            ("staff events", "/api/v1/events?limit=100"),
        ] {
            let t = Instant::now();
            let r = checked(send(client.get(format!("{url}{path}")).bearer_auth(&token)).await);
            record(&stats, what, t, r.map(|_| ()));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

fn word_after<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.split_whitespace().find_map(|w| w.strip_prefix(key))
}

async fn pc_boot(
    client: reqwest::Client,
    url: String,
    mac: String,
    site: (String, String),
    index: usize,
    (inventory, progress): (String, u32),
    stats: Stats,
) {
    let ip = format!("10.{index}.1.{}", 1 + mac.len() % 250);
    let (site_token, _) = site;
    let relay_headers = |req: reqwest::RequestBuilder| {
        req.header(RELAY_TOKEN_HEADER, &site_token)
            .header(RELAY_URL_HEADER, format!("http://10.{index}.0.2:8080"))
            .header(FORWARDED_FOR_HEADER, &ip)
            .header(DHCP_SEEN_HEADER, &ip)
    };
    let t = Instant::now();
    let script = checked(
        send(relay_headers(client.get(format!(
            "{url}/boot/{mac}.ipxe?platform=efi&buildarch=x86_64"
        ))))
        .await,
    )
    .map(|b| String::from_utf8_lossy(&b).into_owned());
    let creds = script.as_ref().ok().and_then(|s| {
        let c = word_after(s, "bootcast.credential=")?.to_string();
        let task = word_after(s, "bootcast.task=")?.parse::<i64>().ok()?;
        Some((c, task))
    });
    let outcome = match (&script, &creds) {
        (Err(e), _) => Err(e.clone()),
        (Ok(s), None) => Err(format!("no task and credential in the script: {s}")),
        _ => Ok(()),
    };
    record(&stats, "boot script", t, outcome);
    let Some((credential, task)) = creds else {
        return;
    };
    // an agent's JSON request, as its relay passes it on
    let agent_post = |path: &str, body: &serde_json::Value| {
        relay_headers(client.post(format!("{url}/api/v1/agent/{path}")).json(body))
    };
    let hello = serde_json::json!({"protocol": bootcast::proto::agent::AGENT_PROTOCOL, "mac": mac, "arch": "x86_64", "firmware": "uefi", "boot_time": 1, "credential": credential, "task": task});
    let t = Instant::now();
    let answer = checked(send(agent_post("hello", &hello)).await);
    let session = answer.and_then(|b| {
        let v: serde_json::Value = serde_json::from_slice(&b).map_err(|e| e.to_string())?;
        v["session"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("no session in {v}"))
    });
    record(
        &stats,
        "agent hello",
        t,
        session.as_ref().map(|_| ()).map_err(Clone::clone),
    );
    let Ok(session) = session else { return };
    let body = format!(
        "{{\"mac\":\"{mac}\",\"session\":\"{session}\",\"inventory\":{}}}",
        inventory.replace(&mac_of(0), &mac)
    );
    let t = Instant::now();
    let r = checked(
        send(relay_headers(
            client
                .post(format!("{url}/api/v1/agent/inventory"))
                .header("content-type", "application/json")
                .body(body),
        ))
        .await,
    );
    record(&stats, "agent inventory", t, r.map(|_| ()));
    // the restore: progress every 2 s, then done
    let total = 4u64 << 30;
    for k in 1..=progress {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let body = serde_json::json!({"mac": mac, "session": session, "task": task,
            "bytes_done": total / u64::from(progress + 1) * u64::from(k), "bytes_total": total,
            "rate": 100_000_000});
        let t = Instant::now();
        let r = checked(send(agent_post("progress", &body)).await);
        record(&stats, "agent progress", t, r.map(|_| ()));
    }
    let done = serde_json::json!({"mac": mac, "session": session, "task": task});
    let t = Instant::now();
    let r = checked(send(agent_post("done", &done)).await);
    record(&stats, "agent done", t, r.map(|_| ()));
}

/// A counter of the server's `/metrics` (0 when absent).
async fn metric(client: &reqwest::Client, url: &str, name: &str) -> u64 {
    let Ok(r) = client.get(format!("{url}/metrics")).send().await else {
        return 0;
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn run(
    url: String,
    region: PathBuf,
    (storm_secs, progress): (u64, u32),
    (token_file, operator_token_file): (Option<PathBuf>, Option<PathBuf>),
) -> anyhow::Result<bool> {
    let r: Region = serde_json::from_slice(&std::fs::read(&region)?)?;
    // each relay (and the PCs it passes on) from its own address, 127.0.1.N, as on a real
    // network (the server caps connections per source address); staff from 127.0.2.1
    let client_from = |ip: std::net::Ipv4Addr| {
        reqwest::Client::builder()
            .local_address(std::net::IpAddr::V4(ip))
            .pool_max_idle_per_host(64)
            .timeout(Duration::from_secs(60))
            .build()
    };
    let relay_clients = (0..r.sites.len())
        .map(|i| {
            client_from(std::net::Ipv4Addr::new(
                127,
                0,
                1 + (i / 250) as u8,
                1 + (i % 250) as u8,
            ))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let client = client_from(std::net::Ipv4Addr::new(127, 0, 200, 1))?;
    let stats: Stats = Arc::default();
    let writes0 = metric(&client, &url, "bootcast_db_writes_total").await;
    let commits0 = metric(&client, &url, "bootcast_db_commits_total").await;
    let t0 = Instant::now();
    // the relays heartbeat from before the storm until after it
    let until = t0 + Duration::from_secs(storm_secs + 15 + 2 * u64::from(progress));
    let mut relays = tokio::task::JoinSet::new();
    for (i, s) in r.sites.iter().enumerate() {
        let site = SiteInfo {
            name: s.name.clone(),
            token: s.token.clone(),
        };
        relays.spawn(relay_loop(
            relay_clients[i].clone(),
            url.clone(),
            site,
            i,
            r.image.clone(),
            until,
            stats.clone(),
        ));
        let site = SiteInfo {
            name: s.name.clone(),
            token: s.token.clone(),
        };
        relays.spawn(wait_loop(
            relay_clients[i].clone(),
            url.clone(),
            site,
            until,
        ));
    }
    if let Some(f) = &token_file {
        let token = std::fs::read_to_string(f)?.trim().to_string();
        relays.spawn(staff_loop(
            client.clone(),
            url.clone(),
            token,
            t0 + Duration::from_secs(storm_secs + 3),
            stats.clone(),
        ));
    }
    // let every relay's first heartbeat report the storm's version complete
    tokio::time::sleep(Duration::from_secs(3)).await;
    let template = bootcast::inventory::collect::collect(
        std::path::Path::new("/"),
        &mac_of(0),
        bootcast::time::now_unix(),
    );
    let inventory = serde_json::to_string(&template)?;
    let mut pcs = tokio::task::JoinSet::new();
    let n = r.storm.len().max(1) as f64;
    let storm_start = Instant::now();
    for (k, (mac, site)) in r.storm.iter().enumerate() {
        let at = storm_start + Duration::from_secs_f64(storm_secs as f64 * k as f64 / n);
        tokio::time::sleep_until(at.into()).await;
        let s = &r.sites[*site];
        pcs.spawn(pc_boot(
            relay_clients[*site].clone(),
            url.clone(),
            mac.clone(),
            (s.token.clone(), s.name.clone()),
            *site,
            (inventory.clone(), progress),
            stats.clone(),
        ));
    }
    while pcs.join_next().await.is_some() {}
    let storm_took = storm_start.elapsed();
    relays.abort_all();
    while relays.join_next().await.is_some() {}
    // the console's three heaviest reads, one at a time on the quiet server: the goal is
    // under 100 ms each (issue 20)
    let mut console: Vec<(&'static str, Vec<f64>)> = Vec::new();
    for (who, file) in [("admin", &token_file), ("operator", &operator_token_file)] {
        let Some(f) = file else { continue };
        let token = std::fs::read_to_string(f)?.trim().to_string();
        for (what, path) in [
            ("hosts, first page", "/api/v1/hosts"),
            ("host search", "/api/v1/hosts?q=pc1"),
            ("dashboard", "/api/v1/dashboard"),
        ] {
            let mut ms = Vec::new();
            for _ in 0..200 {
                let t = Instant::now();
                checked(send(client.get(format!("{url}{path}")).bearer_auth(&token)).await)
                    .map_err(|e| anyhow::anyhow!("{who} {path}: {e}"))?;
                ms.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            ms.sort_by(|a, b| a.total_cmp(b));
            console.push((Box::leak(format!("{what} ({who})").into_boxed_str()), ms));
        }
    }
    let writes = metric(&client, &url, "bootcast_db_writes_total").await - writes0;
    let commits = metric(&client, &url, "bootcast_db_commits_total").await - commits0;
    let stats = stats.lock().unwrap();
    println!(
        "{} PCs booted through {} relays and restored in {:.1} s (storm spread over {storm_secs} s, {progress} progress reports each)",
        r.storm.len(),
        r.sites.len(),
        storm_took.as_secs_f64()
    );
    println!(
        "{:<22} {:>7} {:>7} {:>9} {:>9} {:>9}",
        "call", "count", "errors", "p50 ms", "p99 ms", "max ms"
    );
    let mut ok = true;
    for (what, c) in stats.iter() {
        let mut ms = c.ms.clone();
        ms.sort_by(|a, b| a.total_cmp(b));
        println!(
            "{:<22} {:>7} {:>7} {:>9.1} {:>9.1} {:>9.1}",
            what,
            ms.len(),
            c.errors,
            percentile(&ms, 0.5),
            percentile(&ms, 0.99),
            ms.last().copied().unwrap_or(0.0)
        );
        if let Some(e) = &c.first_error {
            println!("  first error: {e}");
            ok = false;
        }
    }
    println!(
        "database: {writes} writes in {commits} transactions ({:.1} writes per commit)",
        writes as f64 / commits.max(1) as f64
    );
    if !console.is_empty() {
        println!("console reads on the quiet server, 200 each, one at a time (goal: p99 < 100 ms)");
        println!(
            "{:<32} {:>9} {:>9} {:>9}  goal",
            "call", "p50 ms", "p99 ms", "max ms"
        );
        for (what, ms) in &console {
            let p99 = percentile(ms, 0.99);
            println!(
                "{:<32} {:>9.1} {:>9.1} {:>9.1}  {}",
                what,
                percentile(ms, 0.5),
                p99,
                ms.last().copied().unwrap_or(0.0),
                if p99 < 100.0 { "met" } else { "MISSED" }
            );
        }
    }
    Ok(ok)
}

fn main() -> anyhow::Result<std::process::ExitCode> {
    match Cli::parse().cmd {
        Cmd::Generate {
            data,
            hosts,
            sites,
            days,
            storm,
            image,
            region,
        } => generate(data, hosts, sites, days, storm, image, region)?,
        Cmd::Run {
            url,
            region,
            storm_secs,
            progress,
            token_file,
            operator_token_file,
        } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            if !rt.block_on(run(
                url,
                region,
                (storm_secs, progress),
                (token_file, operator_token_file),
            ))? {
                return Ok(std::process::ExitCode::FAILURE);
            }
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

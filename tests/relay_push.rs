//! Site relays end to end, in network namespaces: a central server and three relays (the
//! third behind the second) over tbf-shaped links. A push of v1 then v2 moves only what each
//! relay lacks; the cap holds over 30 s; a window closing mid-push pauses it and the next
//! window resumes it; a relay killed (SIGKILL) mid-push resumes; a corrupted chunk upstream
//! is rejected and fetched again once good. Needs root; prints SKIP without.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::netlab::Netns;
use common::{wait_for, Lab, Served, BIN};

fn metric_in(ns: &Netns, url: &str, name: &str) -> u64 {
    common::metric_in(Some(&ns.name), url, name).unwrap_or_else(|| panic!("no {name} at {url}"))
}

/// The central server's view of `site` in push `id`.
fn site_row(central: &Lab, id: i64, site: &str) -> Value {
    let st = central.json(&["push", "status", &id.to_string()]);
    st["pushes"][0]["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["site"] == site)
        .cloned()
        .unwrap_or_else(|| panic!("no {site} in {st}"))
}

/// Compressed bytes of the distinct chunks of `spec` that are not in `have`.
fn lacking(
    store: &bootcast::store::Store,
    spec: &str,
    have: &HashSet<bootcast::store::ChunkId>,
) -> u64 {
    let v = store.resolve(spec).unwrap();
    let mut seen = HashSet::new();
    v.manifest
        .chunks()
        .filter(|(_, id, _)| !have.contains(id) && seen.insert(*id))
        .map(|(_, _, c)| u64::from(c))
        .sum()
}

fn chunk_ids(store: &bootcast::store::Store, spec: &str) -> HashSet<bootcast::store::ChunkId> {
    store
        .resolve(spec)
        .unwrap()
        .manifest
        .chunks()
        .map(|(_, id, _)| id)
        .collect()
}

struct Relay {
    ns: Netns,
    data: std::path::PathBuf,
    /// The upstream's HTTPS URL, and its certificate's fingerprint (from its banner).
    upstream: String,
    fingerprint: String,
    site: String,
    token: String,
    url: String,
    clock: Option<std::path::PathBuf>,
    served: Option<Served>,
}

impl Relay {
    fn start(&mut self) {
        let mut cmd = self.ns.cmd(BIN);
        cmd.arg("--data")
            .arg(&self.data)
            .env_remove("BOOTCAST_DATA")
            .env("BOOTCAST_RELAY_TOKEN", &self.token);
        let mut args = vec![
            "--upstream".to_string(),
            self.upstream.clone(),
            "--upstream-fingerprint".into(),
            self.fingerprint.clone(),
            "--site".into(),
            self.site.clone(),
            "--http".into(),
            "0.0.0.0:8080".into(),
            "--tftp".into(),
            "off".into(),
            "--url".into(),
            self.url.clone(),
        ];
        if let Some(c) = &self.clock {
            args.push("--clock-file".into());
            args.push(c.display().to_string());
        }
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        self.served = Some(Served::start_as(cmd, "relay", &a));
    }

    fn metric(&self, name: &str) -> u64 {
        metric_in(&self.ns, "http://127.0.0.1:8080", name)
    }

    fn kill(&mut self) {
        let mut s = self.served.take().unwrap();
        s.child.kill().unwrap();
        s.child.wait().unwrap();
    }
}

#[test]
fn pushes_reach_three_relays_under_caps_windows_kills_and_corruption() {
    if !common::is_root() {
        common::skip(
            "pushes_reach_three_relays_under_caps_windows_kills_and_corruption",
            "needs root (network namespaces, tc)",
        );
        return;
    }
    let central = Lab::new();
    // v1: 96 MiB, incompressible (so bytes on the wire are image bytes); v2: 2 MiB changed
    let v1 = common::random_bytes(96 << 20, 61);
    let mut v2 = v1.clone();
    v2[(40 << 20)..(42 << 20)].copy_from_slice(&common::random_bytes(2 << 20, 62));
    let a1 = central.add("win11", &central.file("v1.img", &v1));
    let v1_id = a1["version"].as_str().unwrap().to_string();
    drop(v1);

    // central in its own namespace; relays 1 and 2 on 200 Mbit links, relay 3 behind relay 2
    let c = Netns::new("cen");
    let mut cmd = c.cmd(BIN);
    cmd.arg("--data")
        .arg(central.data())
        .env_remove("BOOTCAST_DATA");
    let server = Served::start(cmd, &["--http", "0.0.0.0:8080", "--tftp", "off"]);
    // relays reach it over HTTPS, pinning its self-signed certificate
    let central_fingerprint = server
        .fingerprint
        .clone()
        .expect("the banner's certificate");
    let central_served = || {
        metric_in(
            &c,
            "http://127.0.0.1:8080",
            "bootcast_chunk_bytes_served_total",
        )
    };
    let r_ns: Vec<Netns> = (1..=3).map(|i| Netns::new(&format!("rel{i}"))).collect();
    c.link(
        &r_ns[0],
        ("s1", "10.99.1.1/30"),
        ("up0", "10.99.1.2/30"),
        Some("200mbit"),
    );
    c.link(
        &r_ns[1],
        ("s2", "10.99.2.1/30"),
        ("up0", "10.99.2.2/30"),
        Some("200mbit"),
    );
    r_ns[1].link(
        &r_ns[2],
        ("s3", "10.99.3.1/30"),
        ("up0", "10.99.3.2/30"),
        Some("200mbit"),
    );

    // sites: s1 capped at 16 Mbit (the rate check), s2 open, s3 with a night window and a
    // clock file (UTC; the test moves its clock)
    let token = |out: Value| out["token"].as_str().unwrap().to_string();
    let t1 = token(central.json(&["site", "add", "s1", "--rate", "16Mbit"]));
    let t2 = token(central.json(&["site", "add", "s2"]));
    let t3 = token(central.json(&[
        "site",
        "add",
        "s3",
        "--tz",
        "UTC",
        "--window",
        "22:00-06:00",
        "--rate",
        "24Mbit",
    ]));
    let day = bootcast::time::now_unix() / 86_400 * 86_400;
    let clock = central.path("clock-s3");
    // relay 3's clock: midday, its window is closed until the push starts
    std::fs::write(&clock, format!("{}\n", day + 12 * 3600)).unwrap();

    let mut relays: Vec<Relay> = r_ns
        .into_iter()
        .enumerate()
        .map(|(i, ns)| {
            let n = i + 1;
            Relay {
                ns,
                data: central.path(&format!("relay{n}")),
                // relay 3's upstream is relay 2 (its fingerprint once it has started)
                upstream: format!("https://10.99.{n}.1:8443"),
                fingerprint: central_fingerprint.clone(),
                site: format!("s{n}"),
                token: [&t1, &t2, &t3][i].clone(),
                url: format!("http://10.99.{n}.2:8080"),
                clock: (n == 3).then(|| clock.clone()),
                served: None,
            }
        })
        .collect();
    for i in 0..relays.len() {
        if i == 2 {
            relays[2].fingerprint = relays[1]
                .served
                .as_ref()
                .and_then(|s| s.fingerprint.clone())
                .expect("relay 2's banner names its certificate");
        }
        relays[i].start();
    }
    let store = bootcast::store::Store::open(&central.data()).unwrap();
    let need_v1 = lacking(&store, &format!("win11@{v1_id}"), &HashSet::new());

    // A: v1 to s2 and s3 (behind s2), with a corrupted chunk in the central store
    let victim = central.chunk_files()[7].clone();
    let good = std::fs::read(&victim).unwrap();
    let mut bad = good.clone();
    let n = bad.len();
    bad[n / 2] ^= 0x20;
    std::fs::write(&victim, &bad).unwrap();
    // 05:59:40 UTC from now on: relay 3's window closes in 20 s (96 MiB at 24 Mbit: 34 s)
    std::fs::write(&clock, format!("{}\n", day + 6 * 3600 - 20)).unwrap();
    let pa = central.json(&["push", "create", "--image", "win11", "--sites", "s2,s3"]);
    let ida = pa["push"]["id"].as_i64().unwrap();
    wait_for("relay 2 to reject the corrupted chunk", 120, || {
        (relays[1].metric("bootcast_relay_chunks_rejected_total") > 0).then_some(())
    });
    std::fs::write(&victim, &good).unwrap();
    // relay 3's window closes mid-push: it waits, with part of v1
    let paused_at = wait_for("relay 3 to pause at the window's end", 180, || {
        let row = site_row(&central, ida, "s3");
        let done = row["bytes_done"].as_u64().unwrap();
        (row["state"] == "waiting" && done > 0 && done < need_v1).then_some(done)
    });
    wait_for("s2 to finish v1", 180, || {
        (site_row(&central, ida, "s2")["state"] == "done").then_some(())
    });
    let up2 = relays[1].metric("bootcast_relay_upstream_bytes_total");
    common::say(&format!(
        "s2: v1 upstream {up2} bytes for {need_v1} lacking (with a corrupted chunk rejected {} time(s)); s3 paused at {paused_at} bytes when its window closed",
        relays[1].metric("bootcast_relay_chunks_rejected_total")
    ));
    assert!(up2 * 10 <= need_v1 * 11, "s2: {up2} > 1.1 x {need_v1}");
    // still closed: nothing moves; the next window (22:00) resumes it
    assert_eq!(site_row(&central, ida, "s3")["state"], "waiting");
    std::fs::write(&clock, format!("{}\n", day + 22 * 3600)).unwrap();
    wait_for("s3 to finish v1 in the next window", 180, || {
        (site_row(&central, ida, "s3")["state"] == "done").then_some(())
    });
    let up3 = relays[2].metric("bootcast_relay_upstream_bytes_total");
    common::say(&format!(
        "s3 (behind s2): v1 upstream {up3} bytes for {need_v1} lacking"
    ));
    assert!(up3 * 10 <= need_v1 * 11, "s3: {up3} > 1.1 x {need_v1}");

    // B: v1 to s1 alone, under its 16 Mbit cap; now only s1 fetches from the central server
    let served_before = central_served();
    let pb = central.json(&["push", "create", "--image", "win11", "--sites", "s1"]);
    let idb = pb["push"]["id"].as_i64().unwrap();
    wait_for("relay 1 to fetch", 60, || {
        (relays[0].metric("bootcast_relay_upstream_bytes_total") > 0).then_some(())
    });
    let (b0, t0) = (
        relays[0].metric("bootcast_relay_upstream_bytes_total"),
        Instant::now(),
    );
    std::thread::sleep(Duration::from_secs(30)); // the measurement window, not a synchronisation
    let (b1, dt) = (
        relays[0].metric("bootcast_relay_upstream_bytes_total"),
        t0.elapsed(),
    );
    let rate = (b1 - b0) as f64 / dt.as_secs_f64();
    common::say(&format!(
        "s1: {rate:.0} B/s over {:.1} s against its cap of 2000000 B/s ({:+.1} %)",
        dt.as_secs_f64(),
        (rate / 2e6 - 1.0) * 100.0
    ));
    assert!(
        (rate - 2e6).abs() <= 0.1 * 2e6,
        "relay 1 fetched at {rate:.0} B/s, not within 10 % of its 2000000 B/s cap"
    );
    assert!(
        b1 < need_v1,
        "relay 1 finished before it could be killed mid-push"
    );
    // kill -9 mid-push, start again: it resumes
    relays[0].kill();
    relays[0].start();
    wait_for("s1 to finish v1 after the restart", 180, || {
        (site_row(&central, idb, "s1")["state"] == "done").then_some(())
    });
    let served = central_served() - served_before;
    let extra = served.saturating_sub(need_v1);
    common::say(&format!(
        "s1: killed mid-push and restarted: the central server served {served} bytes for {need_v1} lacking ({extra} extra)"
    ));
    // at most the batch each stream was receiving is fetched again (a batch may pass
    // BATCH_BYTES by its last chunk: 128 KiB, plus zstd framing if it did not compress)
    let streams = bootcast::relay::prestage::STREAMS as u64;
    let batch = bootcast::relay::prestage::BATCH_BYTES + (128 << 10) + 1024;
    assert!(
        extra <= streams * batch,
        "{extra} bytes fetched twice: more than one batch per stream ({streams} x {batch})"
    );

    // C: v2 to all: only the changed chunks travel, to every relay
    let a2 = central.add("win11", &central.file("v2.img", &v2));
    let v2_id = a2["version"].as_str().unwrap().to_string();
    let have = chunk_ids(&store, &format!("win11@{v1_id}"));
    let need_v2 = lacking(&store, &format!("win11@{v2_id}"), &have);
    let before: Vec<u64> = relays
        .iter()
        .map(|r| r.metric("bootcast_relay_upstream_bytes_total"))
        .collect();
    let pc = central.json(&["push", "create", "--image", "win11", "--sites", "all"]);
    let idc = pc["push"]["id"].as_i64().unwrap();
    for s in ["s1", "s2", "s3"] {
        wait_for(&format!("{s} to finish v2"), 300, || {
            (site_row(&central, idc, s)["state"] == "done").then_some(())
        });
    }
    for (r, b) in relays.iter().zip(before) {
        let up = r.metric("bootcast_relay_upstream_bytes_total") - b;
        common::say(&format!(
            "{}: v2 upstream {up} bytes for {need_v2} lacking",
            r.site
        ));
        assert!(
            up * 10 <= need_v2 * 11,
            "{}: {up} > 1.1 x {need_v2}",
            r.site
        );
    }
    // every relay holds both versions complete (their heartbeats say so)
    let sites = central.json(&["site", "list"]);
    for s in sites["sites"].as_array().unwrap() {
        let complete = s["relay"]["complete"].as_array().unwrap();
        assert_eq!(complete.len(), 2, "{s}");
    }
    drop(server);
}

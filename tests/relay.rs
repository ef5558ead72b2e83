//! `bootcast relay` against a real central `bootcast serve` on 127.0.0.1: pull-through (the
//! second fetch costs no upstream byte), coalesced misses, a corrupted chunk upstream
//! rejected and fetched again once good, the incomplete-version policy, prestage of a push
//! inside its window (opened and closed through the relay's clock file), kill -9 mid-push
//! and resume, a relay behind a relay, the quota, and a wrong site token.
//!
//! Waits are on reported state (the relay's `/metrics`, the central `push status`), polled;
//! never a sleep standing in for an event.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::time::Instant;

use bootcast::store::{ChunkId, Store};
use serde_json::{json, Value};

use common::*;

/// Streams a relay's prestage uses (each may lose its chunk in flight to a kill).
const STREAMS: u64 = bootcast::relay::prestage::STREAMS as u64;

fn central(lab: &Lab) -> InProcess {
    InProcess::start(lab)
}

/// A counter or gauge of `/metrics` (0 when not printed yet).
fn metric_at(url: &str, name: &str) -> u64 {
    common::metric_in(None, url, name).unwrap_or(0)
}

const UP: &str = "bootcast_relay_upstream_bytes_total";
const SERVED: &str = "bootcast_chunk_bytes_served_total";

fn push(lab: &Lab, args: &[&str]) -> i64 {
    let mut a = vec!["push", "create"];
    a.extend_from_slice(args);
    lab.json(&a)["push"]["id"].as_i64().unwrap()
}

fn wait_done(lab: &Lab, id: i64, site: &str, secs: u64) {
    wait_for(&format!("push {id} done at {site}"), secs, || {
        (push_row(lab, id, site)["state"] == "done").then_some(())
    });
}

/// Compressed bytes of the distinct chunks of `spec`, and the largest one.
fn need(lab: &Lab, spec: &str) -> (u64, u64) {
    let v = Store::open(&lab.data()).unwrap().resolve(spec).unwrap();
    let mut seen = HashSet::new();
    let mut total = 0;
    let mut max = 0;
    for (_, id, c) in v.manifest.chunks() {
        if seen.insert(id) {
            total += u64::from(c);
            max = max.max(u64::from(c));
        }
    }
    (total, max)
}

fn chunk_ids(lab: &Lab, spec: &str) -> Vec<ChunkId> {
    let v = Store::open(&lab.data()).unwrap().resolve(spec).unwrap();
    let mut seen = HashSet::new();
    v.manifest
        .chunks()
        .map(|(_, id, _)| id)
        .filter(|id| seen.insert(*id))
        .collect()
}

/// Compressed bytes of `ids` held in the store of data directory `data`.
fn held(data: &Path, ids: &[ChunkId]) -> u64 {
    let store = Store::open(data).unwrap();
    ids.iter()
        .filter_map(|id| std::fs::metadata(store.chunk_path(id)).ok())
        .map(|m| m.len())
        .sum()
}

/// A GET: (status, body).
fn get(_lab: &Lab, url: &str, headers: &[(&str, &str)]) -> (u16, Vec<u8>) {
    let (code, _, body) = common::request("GET", url, headers, None);
    (code, body)
}

/// `image export --from` as staff would run it on another machine (`client`), with central's
/// API token (`central`'s data directory holds it): images are private.
fn export(
    client: &Lab,
    central: &Lab,
    spec: &str,
    from: &str,
    target: &str,
) -> std::process::Output {
    let token = bootcast::http::auth::read_token(&central.data())
        .unwrap()
        .expect("central's API token");
    client
        .cmd()
        .env("BOOTCAST_TOKEN", token)
        .args([
            "image",
            "export",
            spec,
            client.path(target).to_str().unwrap(),
            "--from",
            from,
        ])
        .output()
        .expect("run bootcast")
}

#[test]
fn pull_through_serves_verified_chunks_and_the_second_fetch_is_free() {
    let lab = Lab::new();
    fake_bootenv(&lab);
    let image = disk_like(3 << 20, 71);
    lab.add("disk", &lab.file("d.img", &image));
    let c = central(&lab);
    let token = site(&lab, "s1", &[]);
    let r = relay(
        &lab,
        "relay",
        &c.url,
        "s1",
        &token,
        &["--incomplete", "upstream"],
    );
    let (need_bytes, _) = need(&lab, "disk");

    let client = Lab::new();
    let out = export(&client, &lab, "disk", &r.url, "a.img");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        sha256(&std::fs::read(client.path("a.img")).unwrap()),
        sha256(&image)
    );
    let up = metric_at(&r.url, UP);
    let served = metric_at(&c.url, SERVED);
    say(&format!(
        "pull-through: first export {} image bytes, {up} compressed bytes from upstream ({need_bytes} distinct)",
        image.len()
    ));
    assert_eq!(up, need_bytes, "each distinct chunk once from upstream");
    assert_eq!(served, need_bytes, "the central server served exactly that");
    assert_eq!(metric_at(&r.url, "bootcast_relay_chunks_rejected_total"), 0);

    // the second export comes from the relay's store alone
    let out = export(&client, &lab, "disk", &r.url, "b.img");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        sha256(&std::fs::read(client.path("b.img")).unwrap()),
        sha256(&image)
    );
    assert_eq!(
        metric_at(&r.url, UP),
        need_bytes,
        "second fetch: 0 upstream bytes"
    );
    assert_eq!(metric_at(&c.url, SERVED), need_bytes);
    assert!(metric_at(&r.url, SERVED) >= 2 * need_bytes);

    // boot scripts come from the central server, naming the relay
    let (code, chain) = http("GET", &format!("{}/boot.ipxe", r.url), None, None);
    assert_eq!(code, 200, "{chain}");
    assert!(chain.contains(&format!("chain {}/boot/", r.url)), "{chain}");
    let mac = "52:54:00:77:00:01";
    let script = boot_script(&r, mac);
    assert!(
        script.contains(&format!("bootcast.server={}", r.url)),
        "{script}"
    );
    let h = lab.json(&["host", "show", mac]);
    assert_eq!(h["host"]["site"], "s1", "bound to the relay's site: {h}");
    // the agent's hello goes through the relay too
    let hello = serde_json::json!({"protocol": bootcast::proto::agent::AGENT_PROTOCOL, "mac": mac, "arch": "x86_64", "firmware": "bios", "boot_time": 1, "credential": credential_of(&script)});
    let (code, body) = http(
        "POST",
        &format!("{}/api/v1/agent/hello", r.url),
        None,
        Some(&hello.to_string()),
    );
    assert_eq!(code, 200, "{body}");
    // bodies stream through the relay, never buffered whole: one declaring more than a
    // capture upload may carry is refused from its headers
    let (code, answer) = post_declaring(
        &format!("{}/api/v1/agent/capture/chunks", r.url),
        &[],
        70 << 20,
    );
    assert_eq!(code, 413, "{answer}");

    // boot environment and iPXE files through the file cache, Range included
    let initrd = std::fs::read(lab.data().join("bootenv/initrd.img")).unwrap();
    for _ in 0..2 {
        let (code, body) = get(&client, &format!("{}/bootenv/initrd.img", r.url), &[]);
        assert_eq!((code, body.len()), (200, initrd.len()));
        assert_eq!(body, initrd);
    }
    let (code, part) = get(
        &client,
        &format!("{}/bootenv/initrd.img", r.url),
        &[("range", "bytes=10-19")],
    );
    assert_eq!((code, part.len()), (206, 10));
    let kpxe = bootcast::boot::ipxe::UNDIONLY_KPXE.bytes;
    let (code, body) = get(&client, &format!("{}/ipxe/undionly.kpxe", r.url), &[]);
    assert_eq!(code, 200);
    assert_eq!(body, kpxe);
    assert_eq!(
        metric_at(&r.url, "bootcast_relay_file_bytes_total"),
        (initrd.len() + kpxe.len()) as u64,
        "each file fetched from upstream once"
    );
    assert_eq!(
        http("GET", &format!("{}/healthz", r.url), None, None).0,
        200
    );
}

#[test]
fn concurrent_misses_of_one_chunk_share_one_upstream_fetch() {
    let lab = Lab::new();
    lab.add("disk", &lab.file("d.img", &disk_like(1 << 20, 72)));
    let c = central(&lab);
    let token = site(&lab, "s1", &[]);
    // the relay reaches the central server through a gate that holds chunk answers
    let gate = common::Relay::start(
        c.url.trim_start_matches("http://").parse().unwrap(),
        &["/chunks/"],
    );
    let r = relay(&lab, "relay", &gate.url(), "s1", &token, &[]);
    let id = chunk_ids(&lab, "disk")[3];
    let frame = std::fs::read(Store::open(&lab.data()).unwrap().chunk_path(&id)).unwrap();
    // the relay confirms the staff token with central once (then remembers it), before the
    // gate holds its connections (the gate tells chunk connections by their first request)
    let (h, v) = staff(&c);
    let manifest = format!("{}/api/v1/images/disk/latest/manifest", r.url);
    let (code, body) = get(&lab, &manifest, &[(h, &v)]);
    let text = String::from_utf8_lossy(&body);
    assert!(
        code == 503 && text.contains("not complete"),
        "{code} {text}"
    );
    gate.hold_after(0);

    const N: usize = 8;
    let client = Lab::new();
    let url = format!("{}/chunks/{id}", r.url);
    let answers = std::thread::scope(|s| {
        let handles: Vec<_> = (0..N)
            .map(|_| s.spawn(|| get(&client, &url, &[(h, &v)])))
            .collect();
        // every request but the first joins the fetch in flight
        wait_for("the other requests to join the fetch", 60, || {
            (metric_at(&r.url, "bootcast_relay_pulls_coalesced_total") == N as u64 - 1)
                .then_some(())
        });
        gate.release();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    for (code, body) in &answers {
        assert_eq!(*code, 200, "{}", String::from_utf8_lossy(body));
        assert_eq!(body, &frame);
    }
    let served = metric_at(&c.url, SERVED);
    say(&format!(
        "coalescing: {N} concurrent requests for a missing chunk of {} bytes: the central server served {served} bytes",
        frame.len()
    ));
    assert_eq!(served, frame.len() as u64, "one upstream fetch");
    assert_eq!(metric_at(&r.url, UP), frame.len() as u64);
    assert_eq!(metric_at(&r.url, "bootcast_relay_pull_chunks_total"), 1);
}

#[test]
fn a_corrupted_chunk_upstream_is_rejected_counted_and_fetched_again_once_fixed() {
    let lab = Lab::new();
    lab.add("disk", &lab.file("d.img", &disk_like(1 << 20, 73)));
    let c = central(&lab);
    let token = site(&lab, "s1", &[]);
    let r = relay(&lab, "relay", &c.url, "s1", &token, &[]);
    let id = chunk_ids(&lab, "disk")[2];
    let path = Store::open(&lab.data()).unwrap().chunk_path(&id);
    let good = std::fs::read(&path).unwrap();
    let mut bad = good.clone();
    let n = bad.len();
    bad[n / 2] ^= 0x40;
    std::fs::write(&path, &bad).unwrap();

    let client = Lab::new();
    let url = format!("{}/chunks/{id}", r.url);
    let (h, v) = staff(&c);
    let (code, body) = get(&client, &url, &[(h, &v)]);
    let text = String::from_utf8_lossy(&body);
    assert_eq!(code, 502, "{text}");
    assert!(
        text.contains(&id.to_hex()) && text.contains("verification"),
        "{text}"
    );
    let rejected = metric_at(&r.url, "bootcast_relay_chunks_rejected_total");
    assert_eq!(
        rejected,
        bootcast::relay::pull::ATTEMPTS as u64,
        "each fetch counted"
    );
    assert!(
        !Store::open(&lab.path("relay"))
            .unwrap()
            .chunk_path(&id)
            .exists(),
        "a rejected chunk is never stored"
    );

    std::fs::write(&path, &good).unwrap();
    let (code, body) = get(&client, &url, &[(h, &v)]);
    assert_eq!(code, 200);
    assert_eq!(body, good, "the good copy, once upstream is fixed");
    assert_eq!(
        metric_at(&r.url, "bootcast_relay_chunks_rejected_total"),
        rejected
    );
    say(&format!(
        "corrupt chunk upstream: rejected {rejected} times (502 naming it), then fetched good"
    ));
}

#[test]
fn incomplete_versions_wait_or_come_from_upstream() {
    let lab = Lab::new();
    let image = disk_like(2 << 20, 74);
    let added = lab.add("disk", &lab.file("d.img", &image));
    let version = added["version"].as_str().unwrap().to_string();
    let c = central(&lab);
    let tw = site(&lab, "sw", &[]);
    let tu = site(&lab, "su", &[]);
    let w = relay(&lab, "rw", &c.url, "sw", &tw, &[]);
    let u = relay(&lab, "ru", &c.url, "su", &tu, &["--incomplete", "upstream"]);

    // wait: 503 naming the version, for latest and the full id alike
    for v in ["latest", &version] {
        let (code, body) = http(
            "GET",
            &format!("{}/api/v1/images/disk/{v}/manifest", w.url),
            c.token.as_deref(),
            None,
        );
        assert_eq!(code, 503, "{body}");
        assert!(
            body.contains(&format!(
                "version {version} of disk is not complete on relay sw yet; it arrives with the push"
            )),
            "{body}"
        );
    }
    let (code, body) = http(
        "GET",
        &format!("{}/api/v1/images/nope/latest/manifest", w.url),
        c.token.as_deref(),
        None,
    );
    assert_eq!(code, 404, "{body}");
    let client = Lab::new();
    let out = export(&client, &lab, "disk", &w.url, "w.img");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not complete on relay sw"),
        "{}",
        stderr(&out)
    );
    assert_eq!(metric_at(&w.url, UP), 0, "nothing fetched for it");

    // upstream: passed through, chunks pulled through
    let out = export(&client, &lab, "disk", &u.url, "u.img");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        sha256(&std::fs::read(client.path("u.img")).unwrap()),
        sha256(&image)
    );
    assert!(metric_at(&u.url, "bootcast_relay_manifests_pulled_total") >= 1);

    // once pushed, the waiting relay serves it from its own store
    let id = push(&lab, &["--image", "disk", "--sites", "sw"]);
    wait_done(&lab, id, "sw", 60);
    let before = metric_at(&c.url, SERVED);
    let out = export(&client, &lab, "disk", &w.url, "w.img");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        sha256(&std::fs::read(client.path("w.img")).unwrap()),
        sha256(&image)
    );
    assert_eq!(
        metric_at(&c.url, SERVED),
        before,
        "served by the relay alone"
    );
    assert_eq!(metric_at(&w.url, "bootcast_relay_versions_complete"), 1);
}

#[test]
fn prestage_runs_only_while_the_window_is_open() {
    let lab = Lab::new();
    // incompressible, so compressed bytes are image bytes: 3 MiB at 4 Mbit/s is ~6 s of window
    let image = random_bytes(3 << 20, 75);
    lab.add("disk", &lab.file("d.img", &image));
    let (need_bytes, _) = need(&lab, "disk");
    let c = central(&lab);
    let token = site(
        &lab,
        "night",
        &["--tz", "UTC", "--window", "22:00-06:00", "--rate", "4Mbit"],
    );
    let clock = lab.path("clock");
    let day = bootcast::time::now_unix() / 86_400 * 86_400;
    let set_clock = |t: i64| std::fs::write(&clock, format!("{t}\n")).unwrap();
    set_clock(day + 12 * 3600); // midday: closed
    let r = relay(
        &lab,
        "relay",
        &c.url,
        "night",
        &token,
        &["--clock-file", clock.to_str().unwrap()],
    );
    let id = push(&lab, &["--image", "disk", "--sites", "night"]);
    let state = |s: &str| format!("bootcast_relay_push_state{{push=\"{id}\",state=\"{s}\"}}");
    let done_bytes = format!("bootcast_relay_push_bytes_done{{push=\"{id}\"}}");
    wait_for("the relay to wait for its window", 30, || {
        (metric_at(&r.url, &state("waiting")) == 1).then_some(())
    });
    // a heartbeat later, still nothing fetched
    let beats = metric_at(&r.url, "bootcast_relay_heartbeats_total");
    wait_for("a heartbeat", 30, || {
        (metric_at(&r.url, "bootcast_relay_heartbeats_total") > beats).then_some(())
    });
    assert_eq!(metric_at(&r.url, UP), 0, "nothing moves outside the window");

    // 22:00: the window opens; close it (06:00) once a third has arrived
    set_clock(day + 22 * 3600);
    wait_for("a third of the push", 60, || {
        (metric_at(&r.url, &done_bytes) >= need_bytes / 3).then_some(())
    });
    set_clock(day + 30 * 3600);
    wait_for("the relay to stop at the window's end", 30, || {
        (metric_at(&r.url, &state("waiting")) == 1).then_some(())
    });
    let up1 = metric_at(&r.url, UP);
    let done1 = metric_at(&r.url, &done_bytes);
    assert!(up1 < need_bytes, "stopped mid-push: {up1} of {need_bytes}");
    assert_eq!(
        up1, done1,
        "the chunks in flight were kept, none was wasted"
    );
    let row = push_row(&lab, id, "night");
    let beats = metric_at(&r.url, "bootcast_relay_heartbeats_total");
    wait_for("a heartbeat", 30, || {
        (metric_at(&r.url, "bootcast_relay_heartbeats_total") > beats).then_some(())
    });
    assert_eq!(metric_at(&r.url, UP), up1, "nothing moves while closed");
    let row2 = push_row(&lab, id, "night");
    assert_eq!(row2["state"], "waiting", "{row} {row2}");

    // the next night finishes it, fetching only what is missing
    set_clock(day + 46 * 3600);
    let t0 = Instant::now();
    wait_done(&lab, id, "night", 60);
    let took = t0.elapsed().as_secs_f64();
    let up = metric_at(&r.url, UP);
    let rate = (need_bytes - up1) as f64 / took;
    say(&format!(
        "window: stopped at {up1} of {need_bytes} bytes when the window closed; the next window fetched the other {} bytes in {took:.1} s ({rate:.0} B/s, cap 500000 B/s); {up} bytes from upstream in all",
        need_bytes - up1
    ));
    assert_eq!(up, need_bytes, "no chunk fetched twice");
    assert!(rate < 500_000.0 * 1.25, "the cap held: {rate:.0} B/s");
    let (code, _) = http(
        "GET",
        &format!("{}/api/v1/images/disk/latest/manifest", r.url),
        c.token.as_deref(),
        None,
    );
    assert_eq!(code, 200, "complete now");
}

#[test]
fn a_relay_killed_mid_push_resumes_and_refetches_at_most_one_batch_per_stream() {
    let lab = Lab::new();
    // several batches per stream: what a kill wastes is bounded well below the push
    let image = random_bytes(16 << 20, 76);
    lab.add("disk", &lab.file("d.img", &image));
    let (need_bytes, max_chunk) = need(&lab, "disk");
    let ids = chunk_ids(&lab, "disk");
    let c = central(&lab);
    // 32 Mbit/s: the 16 MiB push takes ~4 s
    let token = site(&lab, "s1", &["--rate", "32Mbit"]);
    let mut r = relay(&lab, "relay", &c.url, "s1", &token, &[]);
    // registered: its first heartbeat is behind it, so the push reaches it by the wait route
    wait_for("the relay's first heartbeat", 30, || {
        (metric_at(&r.url, "bootcast_relay_heartbeats_total") > 0).then_some(())
    });
    let created = Instant::now();
    let id = push(&lab, &["--image", "disk", "--sites", "s1"]);
    let t0 = wait_for("the push to start", 30, || {
        (metric_at(&r.url, UP) > 0).then(Instant::now)
    });
    say(&format!(
        "push create -> first chunk bytes at the relay: {:.2} s (heartbeat interval {} s)",
        (t0 - created).as_secs_f64(),
        bootcast::http::relay::HEARTBEAT_INTERVAL
    ));
    let b0 = metric_at(&r.url, UP);
    let b1 = wait_for("a third of the push", 60, || {
        Some(metric_at(&r.url, UP)).filter(|b| *b >= need_bytes / 3)
    });
    let rate = (b1 - b0) as f64 / t0.elapsed().as_secs_f64();
    r.child.kill().unwrap(); // SIGKILL
    r.child.wait().unwrap();
    let served_at_kill = metric_at(&c.url, SERVED);
    let held_at_kill = held(&lab.path("relay"), &ids);
    assert!(held_at_kill < need_bytes, "killed mid-push");

    let r = relay(&lab, "relay", &c.url, "s1", &token, &[]);
    wait_done(&lab, id, "s1", 60);
    let after = metric_at(&r.url, UP);
    let served = metric_at(&c.url, SERVED);
    let extra = served - need_bytes;
    let batch = bootcast::relay::prestage::BATCH_BYTES + max_chunk;
    say(&format!(
        "kill -9: killed at {held_at_kill} of {need_bytes} bytes held ({served_at_kill} served so far, {rate:.0} B/s against a cap of 4000000); after the restart the relay fetched {after} bytes; the central server served {served} in all: {extra} bytes fetched twice (bound: {STREAMS} streams x {batch})"
    ));
    assert_eq!(
        after,
        need_bytes - held_at_kill,
        "the restart fetched only what it lacked"
    );
    assert_eq!(served, served_at_kill + after);
    assert!(
        extra <= STREAMS * batch,
        "{extra} bytes fetched twice: more than one batch per stream"
    );
    assert!(rate < 4_000_000.0 * 1.25, "the cap held: {rate:.0} B/s");
    // the store is whole: an export from the relay verifies every chunk
    let client = Lab::new();
    let before = metric_at(&c.url, SERVED);
    let out = export(&client, &lab, "disk", &r.url, "k.img");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        sha256(&std::fs::read(client.path("k.img")).unwrap()),
        sha256(&image)
    );
    assert_eq!(metric_at(&c.url, SERVED), before);
    // no temp file of the killed relay is left
    let leftovers = walk(&lab.path("relay/store/chunks"))
        .into_iter()
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .count();
    assert_eq!(leftovers, 0);
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_relay_behind_a_relay_prestages_through_it() {
    let lab = Lab::new();
    fake_bootenv(&lab);
    let image = disk_like(3 << 20, 77);
    lab.add("disk", &lab.file("d.img", &image));
    let (need_bytes, _) = need(&lab, "disk");
    let c = central(&lab);
    let ta = site(&lab, "a", &[]);
    let tb = site(&lab, "b", &[]);
    let a = relay(&lab, "ra", &c.url, "a", &ta, &[]);
    let b = relay(&lab, "rb", &a.url, "b", &tb, &[]);
    // b's heartbeat reaches the central server through a; its push runs through a
    let id = push(&lab, &["--image", "disk", "--sites", "b"]);
    wait_done(&lab, id, "b", 60);
    let (up_a, up_b, served) = (
        metric_at(&a.url, UP),
        metric_at(&b.url, UP),
        metric_at(&c.url, SERVED),
    );
    say(&format!(
        "relay behind relay: b fetched {up_b} bytes from a, a {up_a} from the central server, which served {served} ({need_bytes} needed)"
    ));
    assert_eq!((up_a, up_b, served), (need_bytes, need_bytes, need_bytes));
    let sites = lab.json(&["site", "list"]);
    let row = sites["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "b")
        .cloned()
        .unwrap();
    assert!(
        row.to_string().contains(&b.url),
        "the central server knows b: {row}"
    );

    // b's machines get b's address in their scripts, through a
    let mac = "52:54:00:77:00:02";
    let script = boot_script(&b, mac);
    assert!(
        script.contains(&format!("bootcast.server={}", b.url)),
        "{script}"
    );
    assert_eq!(lab.json(&["host", "show", mac])["host"]["site"], "b");
    // b serves it from its own store
    let client = Lab::new();
    let out = export(&client, &lab, "disk", &b.url, "b.img");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        sha256(&std::fs::read(client.path("b.img")).unwrap()),
        sha256(&image)
    );
    assert_eq!(
        (metric_at(&a.url, UP), metric_at(&c.url, SERVED)),
        (need_bytes, need_bytes)
    );
}

#[test]
fn the_quota_evicts_what_no_assigned_image_uses() {
    let lab = Lab::new();
    let kept = random_bytes(1 << 20, 78);
    let other = random_bytes(1 << 20, 79);
    lab.add("kept", &lab.file("k.img", &kept));
    lab.add("other", &lab.file("o.img", &other));
    let (need_kept, _) = need(&lab, "kept");
    let (need_other, _) = need(&lab, "other");
    let c = central(&lab);
    let token = site(&lab, "s1", &[]);
    let quota = (need_kept + need_other / 2).to_string();
    let r = relay(
        &lab,
        "relay",
        &c.url,
        "s1",
        &token,
        &["--quota", &quota, "--incomplete", "upstream"],
    );
    // a client pulls `other` through (not assigned to the site), then `kept` is pushed
    let client = Lab::new();
    assert!(export(&client, &lab, "other", &r.url, "o.img")
        .status
        .success());
    let id = push(&lab, &["--image", "kept", "--sites", "s1"]);
    wait_done(&lab, id, "s1", 60);
    let other_ids = chunk_ids(&lab, "other");
    let kept_ids = chunk_ids(&lab, "kept");
    let evicted = wait_for("the eviction", 30, || {
        Some(metric_at(&r.url, "bootcast_relay_evicted_bytes_total")).filter(|b| *b > 0)
    });
    let cache = metric_at(&r.url, "bootcast_relay_cache_bytes");
    say(&format!(
        "quota {quota}: evicted {evicted} bytes of the unassigned image; the store holds {cache}"
    ));
    assert!(cache <= need_kept + need_other / 2);
    assert_eq!(
        held(&lab.path("relay"), &kept_ids),
        need_kept,
        "the pushed image stays"
    );
    assert!(held(&lab.path("relay"), &other_ids) < need_other);
}

#[test]
fn a_wrong_site_token_is_named_in_the_log() {
    let lab = Lab::new();
    let c = central(&lab);
    site(&lab, "s1", &[]);
    let r = relay(&lab, "relay", &c.url, "s1", "not-the-token", &[]);
    wait_for("the relay to say its token is wrong", 30, || {
        r.log_text()
            .contains(
                "the site token is wrong: `bootcast site token s1 --rotate` on the central server makes a new one",
            )
            .then_some(())
    });
    assert!(metric_at(&r.url, "bootcast_relay_heartbeat_failures_total") >= 1);
    let mut r = r;
    assert!(r.stop().success(), "SIGTERM stops the relay cleanly");
    assert!(
        r.log_text().contains("bootcast: stopped"),
        "{}",
        r.log_text()
    );
}

#[test]
fn a_link_drop_mid_push_is_retried_keeping_what_is_stored() {
    let lab = Lab::new();
    let image = random_bytes(4 << 20, 80);
    lab.add("disk", &lab.file("d.img", &image));
    let (need_bytes, max_chunk) = need(&lab, "disk");
    let c = central(&lab);
    let token = site(&lab, "s1", &["--rate", "16Mbit"]);
    // the relay's link to the central server: a gate whose image connections stop after a
    // third of the push, and which is then cut (refusing new connections) and restored
    let gate = common::Relay::start(
        c.url.trim_start_matches("http://").parse().unwrap(),
        &["/chunks/", "/api/v1/images/"],
    );
    gate.hold_after(need_bytes / 3);
    let r = relay(&lab, "relay", &gate.url(), "s1", &token, &[]);
    let id = push(&lab, &["--image", "disk", "--sites", "s1"]);
    gate.wait_held();
    gate.cut(None);
    let failures = metric_at(&r.url, "bootcast_relay_heartbeat_failures_total");
    wait_for("the relay to see the link down", 60, || {
        (metric_at(&r.url, "bootcast_relay_heartbeat_failures_total") > failures).then_some(())
    });
    let held_down = held(&lab.path("relay"), &chunk_ids(&lab, "disk"));
    assert!(held_down < need_bytes, "the link dropped mid-push");
    gate.cut(Some(c.url.trim_start_matches("http://").parse().unwrap()));
    wait_done(&lab, id, "s1", 120);
    let served = metric_at(&c.url, SERVED);
    let extra = served - need_bytes;
    let batch = bootcast::relay::prestage::BATCH_BYTES + max_chunk;
    say(&format!(
        "link drop: cut with {held_down} of {need_bytes} bytes stored; after it came back the push finished; the central server served {served} ({extra} fetched twice, bound {STREAMS} x {batch})"
    ));
    assert!(extra <= STREAMS * batch, "{extra} bytes fetched twice");
    let client = Lab::new();
    let out = export(&client, &lab, "disk", &r.url, "l.img");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        sha256(&std::fs::read(client.path("l.img")).unwrap()),
        sha256(&image)
    );
}

#[test]
fn a_paused_push_holds_and_resumes() {
    let lab = Lab::new();
    let image = random_bytes(3 << 20, 81);
    lab.add("disk", &lab.file("d.img", &image));
    let (need_bytes, _) = need(&lab, "disk");
    let c = central(&lab);
    // 2 Mbit/s: 12 s for the push, and the pause reaches the relay within a heartbeat (5 s)
    let token = site(&lab, "s1", &["--rate", "2Mbit"]);
    let r = relay(&lab, "relay", &c.url, "s1", &token, &[]);
    let id = push(&lab, &["--image", "disk", "--sites", "s1"]);
    let state = |s: &str| format!("bootcast_relay_push_state{{push=\"{id}\",state=\"{s}\"}}");
    wait_for("the push to run", 30, || {
        (metric_at(&r.url, UP) > 0).then_some(())
    });
    lab.json(&["push", "pause", &id.to_string()]);
    wait_for("the relay to pause", 30, || {
        (metric_at(&r.url, &state("paused")) == 1).then_some(())
    });
    let up = metric_at(&r.url, UP);
    assert!(up < need_bytes, "paused mid-push");
    let beats = metric_at(&r.url, "bootcast_relay_heartbeats_total");
    wait_for("a heartbeat", 30, || {
        (metric_at(&r.url, "bootcast_relay_heartbeats_total") > beats).then_some(())
    });
    assert_eq!(metric_at(&r.url, UP), up, "nothing moves while paused");
    assert_eq!(push_row(&lab, id, "s1")["state"], "paused");
    lab.json(&["push", "resume", &id.to_string()]);
    wait_done(&lab, id, "s1", 60);
    say(&format!(
        "pause: held at {up} of {need_bytes} bytes; resumed and done with {} bytes from upstream",
        metric_at(&r.url, UP)
    ));
    assert_eq!(metric_at(&r.url, UP), need_bytes, "nothing fetched twice");
}

#[test]
fn chunks_cut_short_while_the_relay_was_down_are_fetched_again_before_the_version_counts() {
    let lab = Lab::new();
    let image = random_bytes(3 << 20, 81);
    lab.add("disk", &lab.file("d.img", &image));
    let (need_bytes, _) = need(&lab, "disk");
    let ids = chunk_ids(&lab, "disk");
    let c = central(&lab);
    let token = site(
        &lab,
        "cut",
        &["--tz", "UTC", "--window", "22:00-06:00", "--rate", "50Mbit"],
    );
    let clock = lab.path("clock");
    let day = bootcast::time::now_unix() / 86_400 * 86_400;
    let set_clock = |t: i64| std::fs::write(&clock, format!("{t}\n")).unwrap();
    set_clock(day + 23 * 3600); // the window is open
    let clock_arg = ["--clock-file", clock.to_str().unwrap()];
    let mut r = relay(&lab, "relay", &c.url, "cut", &token, &clock_arg);
    let id = push(&lab, &["--image", "disk", "--sites", "cut"]);
    wait_done(&lab, id, "cut", 60);
    assert_eq!(metric_at(&r.url, "bootcast_relay_versions_complete"), 1);

    // the power goes: the relay dies, and three of its chunk files come back cut short
    r.child.kill().unwrap(); // SIGKILL
    r.child.wait().unwrap();
    set_clock(day + 12 * 3600); // back up at midday: the window is closed
    let store = Store::open(&lab.path("relay")).unwrap();
    let mut cut_bytes = 0;
    for id in ids.iter().step_by(ids.len() / 3).take(3) {
        let path = store.chunk_path(id);
        let len = std::fs::metadata(&path).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len / 3).unwrap();
        cut_bytes += len;
    }
    let r = relay(&lab, "relay", &c.url, "cut", &token, &clock_arg);
    assert!(
        r.log_text().contains("3 chunk file(s) of the wrong size"),
        "{}",
        r.log_text()
    );
    // not complete, not offered from its store, until the chunks are fetched again
    assert_eq!(metric_at(&r.url, "bootcast_relay_versions_complete"), 0);
    let beats = metric_at(&r.url, "bootcast_relay_heartbeats_total");
    wait_for("a heartbeat", 30, || {
        (metric_at(&r.url, "bootcast_relay_heartbeats_total") > beats).then_some(())
    });
    let sites = http(
        "GET",
        &format!("{}/api/v1/sites", c.url),
        c.token.as_deref(),
        None,
    )
    .1;
    let sites: Value = serde_json::from_str(&sites).unwrap();
    assert_eq!(
        sites["sites"][0]["relay"]["complete"],
        serde_json::json!([]),
        "{sites}"
    );
    assert_eq!(
        metric_at(&r.url, UP),
        0,
        "nothing moves while the window is closed"
    );

    // the window opens: exactly the three chunks come again, and the version is whole
    set_clock(day + 23 * 3600);
    wait_for("the version complete again", 60, || {
        (metric_at(&r.url, "bootcast_relay_versions_complete") == 1).then_some(())
    });
    assert_eq!(
        metric_at(&r.url, UP),
        cut_bytes,
        "only the cut chunks were fetched"
    );
    assert_eq!(held(&lab.path("relay"), &ids), need_bytes);
    let client = Lab::new();
    let before = metric_at(&c.url, SERVED);
    let out = export(&client, &lab, "disk", &r.url, "cut.img");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        sha256(&std::fs::read(client.path("cut.img")).unwrap()),
        sha256(&image)
    );
    assert_eq!(
        metric_at(&c.url, SERVED),
        before,
        "served by the relay alone"
    );
    say(&format!(
        "power cut: 3 chunks cut short ({cut_bytes} bytes) found at start; the version was pending until the window opened, then {cut_bytes} bytes fetched again; export byte-identical"
    ));
}

#[test]
fn the_relay_token_comes_from_a_private_file_or_the_environment_never_argv() {
    use std::os::unix::fs::PermissionsExt;
    let lab = Lab::new();
    let file = lab.file("token", b"abc\n");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let base = [
        "relay",
        "--upstream",
        "http://127.0.0.1:9",
        "--site",
        "s",
        "--http",
        "127.0.0.1:0",
        "--tftp",
        "off",
    ];
    let mut a = base.to_vec();
    a.extend(["--token-file", file.to_str().unwrap()]);
    let e = stderr(&lab.run(&a));
    assert!(
        e.contains("can be read by other users") && e.contains("chmod 600"),
        "{e}"
    );
    let mut a = base.to_vec();
    a.extend(["--token", "abc"]);
    let out = lab.run(&a);
    assert!(!out.status.success(), "--token is not an option any more");
    assert!(stderr(&out).contains("--token"), "{}", stderr(&out));
    let out = lab
        .cmd()
        .env_remove("BOOTCAST_RELAY_TOKEN")
        .args(base)
        .output()
        .unwrap();
    let e = stderr(&out);
    assert!(
        e.contains("--token-file FILE or BOOTCAST_RELAY_TOKEN"),
        "{e}"
    );
}

#[test]
fn a_relay_token_header_bypasses_the_wait_policy_only_when_central_knows_the_token() {
    let lab = Lab::new();
    lab.add("disk", &lab.file("d.img", &random_bytes(300_000, 83)));
    let c = central(&lab);
    let token = site(&lab, "s1", &[]);
    let lower = site(&lab, "s2", &[]);
    let r = relay(&lab, "relay", &c.url, "s1", &token, &[]);
    let url = format!("{}/api/v1/images/disk/latest/manifest", r.url);
    // images are private: a PC with no boot session gets nothing
    let (code, body) = get(&lab, &url, &[]);
    assert_eq!(code, 403, "{}", String::from_utf8_lossy(&body));
    // not complete on the relay (no push): even staff wait
    let (h, v) = staff(&c);
    let (code, body) = get(&lab, &url, &[(h, &v)]);
    assert_eq!(code, 503, "{}", String::from_utf8_lossy(&body));
    // a student PC that adds a relay header gets nothing either
    let (code, _) = get(&lab, &url, &[("x-bootcast-relay-token", "made-up")]);
    assert_eq!(code, 403, "a made-up relay token opens nothing");
    // a real lower relay (central confirms its token) gets the manifest to prestage from
    let (code, body) = get(&lab, &url, &[("x-bootcast-relay-token", &lower)]);
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    assert!(bootcast::store::Manifest::decode(&body).is_ok());
    // the check endpoint itself
    let check = format!("{}/api/v1/relay/check", c.url);
    let (code, _, _) = common::request("GET", &check, &[("authorization", "Bearer nope")], None);
    assert_eq!(code, 401);
    let bearer = format!("Bearer {lower}");
    let (code, _, body) = common::request("GET", &check, &[("authorization", &bearer)], None);
    assert_eq!(
        (code, String::from_utf8_lossy(&body).as_ref()),
        (200, r#"{"site":"s2"}"#)
    );
}

/// With its upstream gone (central stopped: connections refused) or silent (a listener that
/// never answers), a relay answers a PC's boot script itself: the local disk, for BIOS and
/// UEFI, with no credential; the same relay passes central's own answer (a task) while it is
/// up.
#[test]
fn a_relay_whose_upstream_is_down_or_silent_sends_its_pcs_to_their_local_disk() {
    const MAC: &str = "52:54:00:44:00:07";
    let lab = Lab::new();
    fake_bootenv(&lab);
    lab.add("disk", &lab.file("d.img", &disk_like(1 << 20, 74)));
    let mut c = central(&lab);
    // (tasks go out whether or not the relay holds their version yet)
    let token = site(&lab, "s1", &["--incomplete", "upstream"]);
    let r = relay(&lab, "relay", &c.url, "s1", &token, &[]);
    register(&c, MAC);
    let script = |relay: &str, platform: &str| {
        let (code, body) = get(
            &lab,
            &format!("{relay}/boot/{MAC}.ipxe?platform={platform}&buildarch=x86_64"),
            &[],
        );
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
        String::from_utf8(body).unwrap()
    };
    // central up: its answer passes through (a reimage task: the boot environment)
    lab.json(&["task", "reimage", "--host", MAC, "--image", "disk"]);
    let up = script(&r.url, "pcbios");
    assert!(up.contains("bootcast.task="), "{up}");
    assert_eq!(metric_at(&r.url, "bootcast_relay_offline_scripts_total"), 0);

    // central stopped: the relay answers alone, the local disk
    c.stop().unwrap();
    let bios = script(&r.url, "pcbios");
    assert!(
        bios.contains("sanboot --no-describe --drive 0x80"),
        "{bios}"
    );
    let uefi = script(&r.url, "efi");
    assert!(
        uefi.contains("booting the local disk") && uefi.contains("exit"),
        "{uefi}"
    );
    for s in [&bios, &uefi] {
        assert!(!s.contains("bootcast.credential"), "{s}");
    }
    assert_eq!(metric_at(&r.url, "bootcast_relay_offline_scripts_total"), 2);

    // an upstream that accepts connections and never answers (a stalled WAN link)
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());
    let r2 = relay(&lab, "relay2", &silent_url, "s1", &token, &[]);
    let t0 = Instant::now();
    let stalled = script(&r2.url, "pcbios");
    say(&format!(
        "relay alone: upstream refused -> local disk at once; upstream silent -> local disk after {:.1} s",
        t0.elapsed().as_secs_f64()
    ));
    assert!(stalled.contains("sanboot"), "{stalled}");
    assert_eq!(
        metric_at(&r2.url, "bootcast_relay_offline_scripts_total"),
        1
    );
    drop(silent);
}

/// The central server started again on `port` (the link is back), once relay `r` has passed
/// its queue on.
fn central_back(lab: &Lab, port: &str, r: &Served) -> Served {
    let c = Served::start(
        lab.cmd(),
        &["--http", &format!("127.0.0.1:{port}"), "--tftp", "off"],
    );
    wait_for("the relay to pass its queue on", 120, || {
        (metric_at(&r.url, "bootcast_relay_reports_queued") == 0).then_some(())
    });
    c
}

/// A restore running when the site's link drops: its progress, done and inventory reports
/// reach the relay, which keeps them (the boot's session, from the PC's address) and answers
/// 202; a report of no boot it passed on is refused. When the central server is back, the
/// relay passes each on once; sent again (as when an answer is lost on the way back), each is
/// recognised by its id and changes nothing (a progress, which carries no id, is refused: its
/// task is done).
#[test]
fn reports_made_while_the_link_is_down_reach_central_once_when_it_is_back() {
    const MAC: &str = "52:54:00:44:00:08";
    let lab = Lab::new();
    fake_bootenv(&lab);
    lab.add("disk", &lab.file("d.img", &disk_like(1 << 20, 75)));
    let token = site(&lab, "s1", &["--incomplete", "upstream"]);
    let mut c = Served::start(lab.cmd(), &["--http", "127.0.0.1:0", "--tftp", "off"]);
    let port = c.url.rsplit(':').next().unwrap().to_string();
    let r = relay(&lab, "relay", &c.url, "s1", &token, &[]);
    register(&c, MAC);
    let task = lab.json(&["task", "reimage", "--host", MAC, "--image", "disk"])["tasks"][0]["id"]
        .as_i64()
        .unwrap();
    // the PC boots through the relay: its script, its hello (the relay learns the session)
    let script = boot_script(&r, MAC);
    let (code, answer) = hello(&r, MAC, &credential_of(&script), Some(task));
    assert_eq!(code, 200, "{answer}");
    let session = session_of(&answer);

    // the link drops (the central server stops) while the restore runs
    c.stop();
    let post = |path: &str, body: Value| {
        let (code, _, out) = common::request(
            "POST",
            &format!("{}/api/v1/agent/{path}", r.url),
            &[("content-type", "application/json")],
            Some(body.to_string().into_bytes()),
        );
        (code, String::from_utf8_lossy(&out).into_owned())
    };
    let progress = |done: u64| {
        json!({"mac": MAC, "session": session, "task": task, "bytes_done": done,
               "bytes_total": 1048576, "rate": 1000})
    };
    // as the agent sends them: its inventory, progress, then done
    let inventory =
        bootcast::inventory::collect::collect(Path::new("/"), MAC, bootcast::time::now_unix());
    let (code, body) = post(
        "inventory",
        json!({"mac": MAC, "session": session, "inventory": inventory}),
    );
    assert_eq!(code, 202, "{body}");
    for done in [1000, 500_000] {
        let (code, body) = post("progress", progress(done));
        assert_eq!(code, 202, "{body}");
    }
    let (code, body) = post(
        "done",
        json!({"mac": MAC, "session": session, "task": task}),
    );
    assert_eq!(code, 202, "{body}");
    // a report of a boot the relay did not pass on: refused, not kept
    let (code, body) = post(
        "done",
        json!({"mac": MAC, "session": "00".repeat(16), "task": task}),
    );
    assert_eq!(code, 502, "{body}");
    // the newer progress replaced the older one
    assert_eq!(metric_at(&r.url, "bootcast_relay_reports_queued"), 3);
    let kept: Vec<Vec<u8>> = std::fs::read_dir(lab.path("relay").join("relay/queue"))
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(kept.len(), 3);

    // the link is back: each report reaches central once
    let _c = central_back(&lab, &port, &r);
    assert_eq!(
        metric_at(&r.url, "bootcast_relay_reports_forwarded_total"),
        3
    );
    let state = || {
        let t = lab.json(&["task", "list", "--all", "--host", MAC]);
        let events = lab.json(&["events", "--host", MAC, "--limit", "1000"]);
        let inventories = lab.json(&["inventory", "history", "--host", MAC]);
        (t["tasks"][0].clone(), events, inventories)
    };
    let (t, events, inventories) = state();
    assert_eq!(t["state"], "done", "{t}");
    assert_eq!(t["progress"]["bytes_done"], 500_000, "{t}");
    assert_eq!(count_events(&events, "reimage_done"), 1, "{events}");
    assert_eq!(count_events(&events, "inventory"), 1, "{events}");
    let n_inventories = inventories.to_string().matches("\"received_at\"").count();
    assert_eq!(n_inventories, 1, "{inventories}");

    // each sent again with its id, as after a lost answer: applied already, nothing changes
    let url = format!("http://127.0.0.1:{port}");
    for k in &kept {
        let q: Value = serde_json::from_slice(k).unwrap();
        let (code, _, body) = common::request(
            "POST",
            &format!("{url}{}", q["path"].as_str().unwrap()),
            &[
                ("content-type", "application/json"),
                ("x-bootcast-relay-token", &token),
                ("x-forwarded-for", q["forwarded_for"].as_str().unwrap()),
                ("x-bootcast-report-id", q["id"].as_str().unwrap()),
            ],
            Some(q["body"].as_str().unwrap().as_bytes().to_vec()),
        );
        let body = String::from_utf8_lossy(&body);
        if q["path"] == "/api/v1/agent/progress" {
            // progress carries no id (applied twice it says the same): the task is done now
            assert_eq!(code, 409, "{body}");
            continue;
        }
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("\"duplicate\":true"), "{body}");
    }
    let (t2, events2, inventories2) = state();
    assert_eq!((t2, events2, inventories2), (t, events, inventories));
    say("relay queue: 3 reports kept while central was down (the newer progress replaced the older), passed on once when it was back; sent again, each was recognised as applied");
}

/// A site alone: with the central server down, its relay runs from its site book. The reimage
/// task it received before the cut boots the boot environment with a credential the relay
/// issued; the real agent says hello to the relay, which answers with the central server's
/// signed order, restores from the relay's store and reports done; the next boot is the local
/// disk. An unknown PC registers. When the central server is back, it records the hello, the
/// reports and the inventories once each, and the hosts belong to the site.
#[test]
fn a_relay_alone_runs_the_task_it_holds_and_central_records_it_once() {
    const MAC: &str = "52:54:00:44:00:09";
    const NEW: &str = "52:54:00:44:00:0a";
    let lab = Lab::new();
    fake_bootenv(&lab);
    let image = disk_like(2 << 20, 76);
    lab.add("disk", &lab.file("d.img", &image));
    let token = site(&lab, "s1", &[]);
    let mut c = Served::start(lab.cmd(), &["--http", "127.0.0.1:0", "--tftp", "off"]);
    let port = c.url.rsplit(':').next().unwrap().to_string();
    let r = relay(&lab, "relay", &c.url, "s1", &token, &[]);
    // the PC is registered through its relay (so it is the site's), the master pushed there
    register(&r, MAC);
    let p = push(&lab, &["--image", "disk", "--sites", "s1"]);
    wait_done(&lab, p, "s1", 120);
    let task = lab.json(&["task", "reimage", "--host", MAC, "--image", "disk"])["tasks"][0]["id"]
        .as_i64()
        .unwrap();
    // the relay's book holds the task, and it keeps the boot environment for it
    wait_for("the relay's site book to hold the task", 60, || {
        (metric_at(&r.url, "bootcast_relay_book_tasks") == 1).then_some(())
    });
    assert_eq!(metric_at(&r.url, "bootcast_relay_book_hosts"), 1);
    let kept = lab.path("relay").join("relay/files/bootenv/initrd.img");
    wait_for("the relay to keep the boot environment", 60, || {
        kept.is_file().then_some(())
    });

    // the link is cut
    c.stop();
    let disk = lab.path("disk.raw");
    std::fs::write(&disk, b"").unwrap();
    let log = agent_boot(&lab, &r, MAC, &disk, "alone");
    assert!(
        log.contains(&format!("BOOTCAST-AGENT-REIMAGE-DONE {MAC}")),
        "{log}\n--- relay:\n{}",
        r.log_text()
    );
    assert_eq!(sha256(&std::fs::read(&disk).unwrap()), sha256(&image));
    // ended here: the next boot is the disk
    let next = boot_script(&r, MAC);
    assert!(next.contains("sanboot"), "{next}");
    // an unknown PC registers alone: the boot environment, then the after-registration action
    let script = boot_script(&r, NEW);
    assert!(!script.contains("bootcast.task="), "{script}");
    let (code, answer) = hello(&r, NEW, &credential_of(&script), None);
    assert_eq!(code, 200, "{answer}");
    assert!(answer.contains("\"action\":\"reboot\""), "{answer}");
    // a hello with a credential the relay never issued is not answered here
    let (code, answer) = hello(&r, NEW, &"00".repeat(16), None);
    assert_eq!(code, 502, "{answer}");
    assert_eq!(metric_at(&r.url, "bootcast_relay_offline_scripts_total"), 3);
    let queued = metric_at(&r.url, "bootcast_relay_reports_queued");
    assert!(queued >= 4, "hellos, progress, done: {queued}");

    // the link is back: central records each once
    let _c = central_back(&lab, &port, &r);
    assert_eq!(
        metric_at(&r.url, "bootcast_relay_reports_forwarded_total"),
        queued
    );
    let t = lab.json(&["task", "list", "--all", "--host", MAC]);
    assert_eq!(t["tasks"][0]["state"], "done", "{t}");
    assert_eq!(
        t["tasks"][0]["progress"]["bytes_total"],
        image.len() as u64,
        "{t}"
    );
    let events = lab.json(&["events", "--host", MAC, "--limit", "1000"]);
    // the registration's hello (through central) and the one the relay answered alone
    assert_eq!(count_events(&events, "boot"), 2, "{events}");
    assert_eq!(count_events(&events, "reimage_done"), 1, "{events}");
    let h = lab.json(&["host", "show", NEW]);
    assert_eq!(h["host"]["site"], "s1", "{h}");
    assert!(h["host"]["registered_at"].is_string(), "{h}");
    let events = lab.json(&["events", "--host", NEW, "--limit", "1000"]);
    assert_eq!(count_events(&events, "boot"), 1, "{events}");
    // the site's book now closes the task: the relay forgets it
    wait_for("the relay's book to drop the closed task", 60, || {
        (metric_at(&r.url, "bootcast_relay_book_tasks") == 0).then_some(())
    });
    assert_eq!(metric_at(&r.url, "bootcast_relay_book_hosts"), 2);
    say(&format!(
        "relay alone: reimage of task {task} ({} bytes) from the relay's store with central down, a PC registered; {queued} queued hellos and reports recorded once when central was back",
        image.len()
    ));
}

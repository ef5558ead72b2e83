//! `bootcast backup` of a running central server, `bootcast restore` onto a fresh data
//! directory (another machine's), and the region carries on against the restored server: the
//! site relay (same token, same pinned signing key) takes a new push, the agent runs the task
//! it was given before the backup, staff use the same API token and certificate.

mod common;

use common::{agent_boot, disk_like, fake_bootenv, register, sha256, site, Lab, Served};

const MAC: &str = "52:54:00:66:00:01";

fn relay_metric(relay: &Served, name: &str) -> u64 {
    common::metric_in(None, &relay.url, name).unwrap_or(0)
}

#[test]
fn a_running_central_is_backed_up_restored_elsewhere_and_the_region_carries_on() {
    let lab = Lab::new();
    fake_bootenv(&lab);
    let v1 = disk_like(4 << 20, 21);
    let mut v2 = v1.clone();
    for (i, b) in v2[1 << 20..(1 << 20) + 300_000].iter_mut().enumerate() {
        *b = (i % 253) as u8 ^ 0x3c;
    }
    lab.add("m", &lab.file("v1.img", &v1));
    let token = site(&lab, "s1", &[]);
    let mut central = Served::start(lab.cmd(), &["--http", "127.0.0.1:0", "--tftp", "off"]);
    let port = central.url.rsplit(':').next().unwrap().to_string();
    let key = lab.json(&["key", "show"])["key"].clone();
    let api_token = lab.json(&["token", "show"])["token"].clone();

    // the site's relay pins the central key it hears first
    let relay = common::relay(&lab, "relay", &central.url, "s1", &token, &[]);
    common::wait_for("the relay's first heartbeat", 60, || {
        (relay_metric(&relay, "bootcast_relay_heartbeats_total") > 0).then_some(())
    });
    register(&central, MAC);

    // a full backup while the server runs
    let dir = lab.path("backup");
    let dir_s = dir.to_str().unwrap();
    let b1 = lab.json(&["backup", dir_s]);
    let chunks_v1 = b1["record"]["chunks"].as_u64().unwrap();
    assert!(chunks_v1 > 0, "{b1}");
    assert_eq!(b1["copied"]["chunks_copied"], chunks_v1, "{b1}");
    assert_eq!(b1["copied"]["chunks_kept"], 0, "{b1}");

    // v2 and a task for the PC, then an incremental backup copies only v2's new chunks
    let a2 = lab.add("m", &lab.file("v2.img", &v2));
    let task = lab.json(&["task", "reimage", "--host", MAC, "--image", "m"]);
    assert_eq!(task["tasks"][0]["version"], a2["version"], "{task}");
    let b2 = lab.json(&["backup", dir_s]);
    common::say(&format!(
        "backup: full {} chunks ({} bytes); incremental after v2: {} copied ({} bytes) for v2's {} new chunks ({} bytes), {} kept",
        chunks_v1,
        b1["record"]["chunk_bytes"],
        b2["copied"]["chunks_copied"],
        b2["copied"]["chunk_bytes_copied"],
        a2["new_chunks"],
        a2["new_bytes"],
        b2["copied"]["chunks_kept"]
    ));
    assert_eq!(b2["copied"]["chunks_copied"], a2["new_chunks"], "{b2}");
    assert_eq!(b2["copied"]["chunk_bytes_copied"], a2["new_bytes"], "{b2}");
    assert_eq!(b2["copied"]["chunks_kept"], chunks_v1, "{b2}");
    assert_eq!(b2["record"]["versions"], 2, "{b2}");

    // the central machine is lost
    central.stop();
    let beats_before = relay_metric(&relay, "bootcast_relay_heartbeats_total");

    // restore on a fresh machine: refused into a directory that already holds a server, or
    // from a directory that is not a finished backup
    let fresh = Lab::new();
    let empty = fresh.path("not-a-backup");
    std::fs::create_dir_all(&empty).unwrap();
    let out = fresh.run(&["restore", empty.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        common::stderr(&out).contains("not a finished bootcast backup"),
        "{}",
        common::stderr(&out)
    );
    assert!(!fresh.data().join("bootcast.db").exists());
    let r = fresh.json(&["restore", dir_s]);
    assert_eq!(r["record"], b2["record"], "{r}");
    let out = fresh.run(&["restore", dir_s]);
    assert!(!out.status.success());
    assert!(
        common::stderr(&out).contains("already holds a central server"),
        "{}",
        common::stderr(&out)
    );

    // the restored server, where the old one listened
    let restored = Served::start(
        fresh.cmd(),
        &["--http", &format!("127.0.0.1:{port}"), "--tftp", "off"],
    );
    assert_eq!(fresh.json(&["key", "show"])["key"], key);
    assert_eq!(fresh.json(&["token", "show"])["token"], api_token);
    assert_eq!(
        restored.fingerprint, central.fingerprint,
        "same certificate"
    );
    let hosts = fresh.json(&["host", "list"]);
    assert!(hosts.to_string().contains(MAC), "{hosts}");

    // the relay carries on with its token and its pinned key: heartbeats, and a new push's
    // signed order is accepted and v2 fetched
    common::wait_for("a heartbeat to the restored server", 120, || {
        (relay_metric(&relay, "bootcast_relay_heartbeats_total") > beats_before).then_some(())
    });
    let p = fresh.json(&["push", "create", "--image", "m", "--sites", "s1"]);
    let id = p["push"]["id"].as_i64().unwrap();
    common::wait_for("the push to the relay to finish", 120, || {
        (common::push_row(&fresh, id, "s1")["state"] == "done").then_some(())
    });
    assert_eq!(
        relay_metric(&relay, "bootcast_relay_orders_refused_total"),
        0
    );

    // the agent carries on: the task given before the backup runs to the end
    let target = fresh.path("disk.raw");
    std::fs::write(&target, b"").unwrap();
    let log = agent_boot(&fresh, &restored, MAC, &target, "1");
    assert!(
        log.contains(&format!("BOOTCAST-AGENT-REIMAGE-DONE {MAC}")),
        "{log}"
    );
    assert_eq!(sha256(&std::fs::read(&target).unwrap()), sha256(&v2));
    let t = fresh.json(&["task", "list", "--all", "--host", MAC]);
    assert_eq!(t["tasks"][0]["state"], "done", "{t}");
}

#[test]
fn a_backup_inside_the_data_directory_or_of_no_server_is_refused() {
    let lab = Lab::new();
    let out = lab.run(&["backup", lab.path("b").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        common::stderr(&out).contains("holds no central server database"),
        "{}",
        common::stderr(&out)
    );
    lab.add("m", &lab.file("v1.img", &disk_like(1 << 20, 3)));
    let inside = lab.data().join("backup");
    let out = lab.run(&["backup", inside.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        common::stderr(&out).contains("must not be inside the data directory"),
        "{}",
        common::stderr(&out)
    );
    assert!(!inside.exists());
}

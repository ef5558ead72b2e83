//! The agent's reimage without a VM: `bootcast agent boot` with a fake /proc and /sys whose
//! kernel command line names a file as the disk (`bootcast.disk=`), against a real
//! `bootcast serve`: task created by the CLI, image written through the verified path, progress
//! and done reported, and a second version moves only what changed.

mod common;

use serde_json::Value;

use common::{
    agent_boot, boot_script, disk_like, fake_agent_root, fake_bootenv, metric, nonce_of, register,
    sha256, task_of, Lab, Relay, Served,
};

const MAC: &str = "52:54:00:77:00:01";

fn task_state(lab: &Lab) -> Value {
    let v = lab.json(&["task", "list", "--all", "--host", MAC]);
    v["tasks"][0].clone()
}

#[test]
fn agent_reimages_v1_then_only_what_changed_for_v2() {
    let lab = Lab::new();
    fake_bootenv(&lab);
    let v1 = disk_like(6 << 20, 11);
    let mut v2 = v1.clone();
    for (i, b) in v2[3 << 20..(3 << 20) + 200_000].iter_mut().enumerate() {
        *b = (i % 251) as u8 ^ 0x5a;
    }
    let a1 = lab.add("m", &lab.file("v1.img", &v1));
    let s = Served::start(lab.cmd(), &["--http", "127.0.0.1:0", "--tftp", "off"]);

    register(&s, MAC);

    // reimage with v1 onto an empty "disk"
    let target = lab.path("disk.raw");
    std::fs::write(&target, b"").unwrap();
    let spec = format!("m@{}", a1["version"].as_str().unwrap());
    lab.json(&["task", "reimage", "--host", MAC, "--image", &spec]);
    let log = agent_boot(&lab, &s, MAC, &target, "1");
    assert!(
        log.contains(&format!("BOOTCAST-AGENT-REIMAGE-DONE {MAC}")),
        "{log}"
    );
    assert_eq!(sha256(&std::fs::read(&target).unwrap()), sha256(&v1));
    let t = task_state(&lab);
    assert_eq!(t["state"], "done", "{t}");
    assert_eq!(t["progress"]["bytes_total"], v1.len() as u64, "{t}");

    // v2: only the changed region crosses the wire
    let a2 = lab.add("m", &lab.file("v2.img", &v2));
    let new_bytes = a2["new_bytes"].as_u64().unwrap();
    assert!(new_bytes > 0);
    let before = metric(&s, "bootcast_chunk_bytes_served_total");
    // plain NAME is the newest version, even one added within the same second as v1
    let t2 = lab.json(&["task", "reimage", "--host", MAC, "--image", "m"]);
    assert_eq!(t2["tasks"][0]["version"], a2["version"], "{t2}");
    let log = agent_boot(&lab, &s, MAC, &target, "2");
    assert!(log.contains("BOOTCAST-AGENT-REIMAGE-DONE"), "{log}");
    assert_eq!(sha256(&std::fs::read(&target).unwrap()), sha256(&v2));
    let served = metric(&s, "bootcast_chunk_bytes_served_total") - before;
    common::say(&format!(
        "agent reimage v1 -> v2: {served} bytes served for {new_bytes} new compressed bytes ({} image)",
        v2.len()
    ));
    assert!(
        served * 10 <= new_bytes * 11,
        "served {served} > 1.1 x {new_bytes}"
    );
    assert_eq!(task_state(&lab)["state"], "done");
    // the host's next boot is its local disk
    assert!(boot_script(&s, MAC).contains("sanboot"));
}

#[test]
fn a_corrupt_chunk_fails_the_task_with_its_name() {
    let lab = Lab::new();
    fake_bootenv(&lab);
    let v1 = disk_like(3 << 20, 12);
    lab.add("m", &lab.file("v1.img", &v1));
    let victim = lab.chunk_files()[0].clone();
    let id = victim.file_name().unwrap().to_string_lossy().to_string();
    let mut bytes = std::fs::read(&victim).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x40;
    std::fs::write(&victim, bytes).unwrap();
    let s = Served::start(lab.cmd(), &["--http", "127.0.0.1:0", "--tftp", "off"]);
    register(&s, MAC);
    lab.json(&["task", "reimage", "--host", MAC, "--image", "m"]);
    let target = lab.path("disk.raw");
    std::fs::write(&target, b"").unwrap();
    let log = agent_boot(&lab, &s, MAC, &target, "1");
    assert!(log.contains("BOOTCAST-AGENT-REIMAGE-FAILED"), "{log}");
    let t = task_state(&lab);
    assert_eq!(t["state"], "failed", "{t}");
    let detail = t["detail"].as_str().unwrap();
    assert!(
        detail.contains(&id) && detail.contains("corrupt"),
        "{detail}"
    );
}

#[test]
fn the_agent_waits_for_an_unreachable_server_and_finishes() {
    use std::io::BufRead;
    use std::sync::atomic::Ordering;
    let lab = Lab::new();
    fake_bootenv(&lab);
    let v1 = disk_like(4 << 20, 13);
    lab.add("m", &lab.file("v1.img", &v1));
    let s = Served::start(lab.cmd(), &["--http", "127.0.0.1:0", "--tftp", "off"]);
    register(&s, MAC);
    lab.json(&["task", "reimage", "--host", MAC, "--image", "m"]);
    let script = boot_script(&s, MAC);
    let task = task_of(&script);

    // the agent reaches the server through the relay; the relay goes down right after the
    // hello, so the restore finds the server unreachable
    let upstream: std::net::SocketAddr = s.url.trim_start_matches("http://").parse().unwrap();
    let relay = Relay::start(upstream);
    let target = lab.path("disk.raw");
    std::fs::write(&target, b"").unwrap();
    let root = lab.path("root");
    fake_agent_root(
        &root,
        MAC,
        &format!(
            "bootcast.server=http://127.0.0.1:{} bootcast.mac={MAC} bootcast.task={task} bootcast.nonce={} bootcast.disk={}",
            relay.port,
            nonce_of(&script),
            target.display()
        ),
    );
    let mut agent = std::process::Command::new(common::BIN)
        .args(["agent", "boot", "--no-act", "--tries", "2", "--root"])
        .arg(&root)
        .stdout(std::process::Stdio::piped()) // the agent's console lines
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(agent.stdout.take().unwrap()).lines();
    let mut log = String::new();
    let mut next = |what: &str, log: &mut String| loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("agent ended before {what:?}:\n{log}"))
            .unwrap();
        log.push_str(&line);
        log.push('\n');
        if line.contains(what) {
            return line;
        }
    };
    next("BOOTCAST-AGENT-HELLO-OK", &mut log);
    relay.down.store(true, Ordering::SeqCst);
    next("server unreachable", &mut log);
    relay.down.store(false, Ordering::SeqCst);
    next("BOOTCAST-AGENT-REIMAGE-DONE", &mut log);
    assert!(agent.wait().unwrap().success(), "{log}");
    assert_eq!(sha256(&std::fs::read(&target).unwrap()), sha256(&v1));
    assert_eq!(task_state(&lab)["state"], "done");
}

//! The agent's reimage without a VM: `bootcast agent boot` with a fake /proc and /sys whose
//! kernel command line names a file as the disk (`bootcast.disk=`), against a real
//! `bootcast serve`: task created by the CLI, image written through the verified path, progress
//! and done reported, and a second version moves only what changed.

mod common;

use serde_json::Value;

use common::{
    agent_boot, boot_script, disk_like, fake_bootenv, metric, number_after, register, sha256,
    Agent, Lab, Relay, Served,
};

const MAC: &str = "52:54:00:77:00:01";

/// The relay holds the connections that fetch the image.
const CHUNKS: &[&str] = &["/chunks/", "/api/v1/images/"];

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
    // nothing unverified reached the disk: every 4 KiB block is still empty or holds the
    // image's own bytes
    let disk = std::fs::read(&target).unwrap();
    let foreign = disk
        .chunks(4096)
        .zip(v1.chunks(4096))
        .filter(|(d, want)| d != want && d.iter().any(|b| *b != 0))
        .count();
    assert_eq!(
        foreign, 0,
        "{foreign} blocks hold bytes that are not the image's"
    );
}

/// Kill -9 of the server mid-restore, the server down for a while, then a new server process
/// on the same data: the agent waits, resumes, keeps every chunk it had written and verified,
/// and the disk is right.
#[test]
fn the_server_killed_mid_restore_comes_back_and_the_agent_resumes() {
    let lab = Lab::new();
    fake_bootenv(&lab);
    // incompressible, so the relay's byte budget maps onto image bytes
    let v1 = common::random_bytes(32 << 20, 13);
    let added = lab.add("m", &lab.file("v1.img", &v1));
    let compressed = added["stored_bytes"].as_u64().unwrap();
    let mut s1 = Served::start(lab.cmd(), &["--http", "127.0.0.1:0", "--tftp", "off"]);
    register(&s1, MAC);
    lab.json(&["task", "reimage", "--host", MAC, "--image", "m"]);

    let relay = Relay::start(
        s1.url.trim_start_matches("http://").parse().unwrap(),
        CHUNKS,
    );
    // 20 MiB: more than the 4 batches (4 MiB of image each) the agent has in flight at once,
    // so at least one batch is complete, written and verified when the server dies
    relay.hold_after(20 << 20);
    let target = lab.path("disk.raw");
    std::fs::write(&target, b"").unwrap();
    let mut agent = Agent::spawn(&lab, &s1, MAC, &relay.url(), &target);
    relay.wait_held();
    let before_kill = relay.chunk_bytes();
    s1.child.kill().unwrap(); // SIGKILL
    s1.child.wait().unwrap();
    relay.cut(None);
    agent.line("server unreachable");
    // a new server process on the same data directory
    let s2 = Served::start(lab.cmd(), &["--http", "127.0.0.1:0", "--tftp", "off"]);
    relay.cut(Some(s2.url.trim_start_matches("http://").parse().unwrap()));
    let done = agent.line("BOOTCAST-AGENT-REIMAGE-DONE");
    let log = agent.finish();
    assert_eq!(
        sha256(&std::fs::read(&target).unwrap()),
        sha256(&v1),
        "{log}"
    );
    assert_eq!(task_state(&lab)["state"], "done");
    // the resumed run kept what the first one verified and fetched only the rest
    let kept = number_after(&done, "kept");
    let fetched = number_after(&done, "fetched");
    let served = metric(&s2, "bootcast_chunk_bytes_served_total");
    common::say(&format!(
        "server killed after {before_kill} of {compressed} compressed bytes: the resumed restore kept {kept} bytes in place, fetched {fetched} (the new server served {served})"
    ));
    assert!(kept > 0, "nothing kept: {done}");
    assert_eq!(kept + fetched, v1.len() as u64, "{done}");
    assert!(
        served < compressed,
        "the new server sent the whole image again"
    );
}

/// A task cancelled while its agent writes: the agent's next progress report gets 409, it
/// stops before the next batch, does not report the task done or failed, and says so.
#[test]
fn a_task_cancelled_mid_restore_stops_its_agent() {
    let lab = Lab::new();
    fake_bootenv(&lab);
    let v1 = common::random_bytes(32 << 20, 14);
    lab.add("m", &lab.file("v1.img", &v1));
    let s = Served::start(lab.cmd(), &["--http", "127.0.0.1:0", "--tftp", "off"]);
    register(&s, MAC);
    lab.json(&["task", "reimage", "--host", MAC, "--image", "m"]);
    let relay = Relay::start(s.url.trim_start_matches("http://").parse().unwrap(), CHUNKS);
    relay.hold_after(8 << 20);
    let target = lab.path("disk.raw");
    std::fs::write(&target, b"").unwrap();
    let mut agent = Agent::spawn(&lab, &s, MAC, &relay.url(), &target);
    relay.wait_held();
    let id = task_state(&lab)["id"].as_i64().unwrap().to_string();
    lab.json(&["task", "cancel", &id]);
    // progress reports pass the relay: the agent learns of the cancel while chunks are held
    agent.line("the server closed task");
    relay.cut(Some(s.url.trim_start_matches("http://").parse().unwrap()));
    agent.line(&format!("BOOTCAST-AGENT-REIMAGE-CANCELLED {MAC}"));
    let log = agent.finish();
    assert!(!log.contains("REIMAGE-DONE"), "{log}");
    let t = task_state(&lab);
    assert_eq!(t["state"], "cancelled", "{t}");
    // it stopped early: far from all of the image was fetched
    assert!(
        relay.chunk_bytes() < (24 << 20),
        "{} bytes fetched after the cancel",
        relay.chunk_bytes()
    );
}

/// A sysprep answer file as Windows System Image Manager writes them (UTF-8, indented), a few
/// KiB: stored in clusters of its own, not inside its MFT record.
fn answer_file(name: &str) -> String {
    let mut xml = String::from(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<unattend xmlns=\"urn:schemas-microsoft-com:unattend\">\n",
    );
    xml.push_str(&format!(
        "    <settings pass=\"specialize\">\n        <component name=\"Microsoft-Windows-Shell-Setup\" processorArchitecture=\"amd64\" publicKeyToken=\"31bf3856ad364e35\" language=\"neutral\" versionScope=\"nonSxS\">\n            <ComputerName>{name}</ComputerName>\n            <TimeZone>Romance Standard Time</TimeZone>\n        </component>\n    </settings>\n"
    ));
    for i in 0..24 {
        xml.push_str(&format!(
            "    <settings pass=\"oobeSystem\">\n        <component name=\"Microsoft-Windows-International-Core-{i}\" processorArchitecture=\"amd64\">\n            <InputLocale>040c:0000040c</InputLocale>\n        </component>\n    </settings>\n"
        ));
    }
    xml.push_str("</unattend>\n");
    xml
}

/// Builds C: with Windows/Panther/unattend.xml (a few KiB, `<ComputerName>MASTER</ComputerName>`)
/// and a small Windows/System32/Sysprep/unattend.xml that lives inside its MFT record, through
/// ntfs-3g's FUSE driver (ntfs-3g has no tool that makes directories).
fn windows_with_answer_files(lab: &Lab) -> Option<common::disks::WindowsDisk> {
    use common::disks::*;
    let t = "windows_gets_the_host_name_in_its_answer_file";
    if !common::is_root() || !std::path::Path::new("/dev/fuse").exists() {
        common::skip(
            t,
            "needs root and /dev/fuse (the ntfs-3g FUSE mount makes the directories)",
        );
        return None;
    }
    if !tools(t, &WINDOWS_TOOLS) || !tools(t, &["ntfs-3g", "ntfsfix"]) {
        return None;
    }
    let w = windows_disk(lab, 160 * MIB, 40 * MIB, 118 * MIB, &[4 * MIB]);
    let c = extract(lab, &w.path, w.layout[1], "c-answer.img");
    let mnt = lab.path("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    sh("ntfs-3g", &[s(&c), s(&mnt)]);
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(mnt.join("Windows/Panther"))?;
        std::fs::create_dir_all(mnt.join("Windows/System32/Sysprep"))?;
        std::fs::write(
            mnt.join("Windows/Panther/unattend.xml"),
            answer_file("MASTER"),
        )?;
        std::fs::write(
            mnt.join("Windows/System32/Sysprep/unattend.xml"),
            "<unattend><ComputerName>MASTER</ComputerName></unattend>",
        )
    };
    let wrote = write();
    sh("umount", &[s(&mnt)]);
    wrote.unwrap();
    use std::os::unix::fs::FileExt;
    let disk = std::fs::OpenOptions::new()
        .write(true)
        .open(&w.path)
        .unwrap();
    disk.write_all_at(&std::fs::read(&c).unwrap(), w.layout[1].0)
        .unwrap();
    Some(w)
}

#[test]
fn windows_gets_the_host_name_in_its_answer_file() {
    let lab = Lab::new();
    let Some(w) = windows_with_answer_files(&lab) else {
        return;
    };
    fake_bootenv(&lab);
    let a = lab.add("win11", &w.path);
    assert_eq!(a["partitions"][1]["fs"], "ntfs", "{a}");
    let s = Served::start(lab.cmd(), &["--http", "127.0.0.1:0", "--tftp", "off"]);
    register(&s, MAC);
    lab.json(&["host", "name", MAC, "room12-pc01"]);
    let target = lab.path("disk.raw");
    std::fs::write(&target, common::disks::random(160 << 20, 77)).unwrap();
    lab.json(&["task", "reimage", "--host", MAC, "--image", "win11"]);
    let log = agent_boot(&lab, &s, MAC, &target, "1");
    assert!(
        log.contains(&format!("BOOTCAST-AGENT-REIMAGE-DONE {MAC}")),
        "{log}"
    );
    assert!(
        log.contains("BOOTCAST-AGENT-WINDOWS-NAME room12-pc01 part2:/Windows/Panther/unattend.xml"),
        "{log}"
    );
    // the answer file inside the MFT record is left alone, and the log says why
    assert!(log.contains("inside the MFT record"), "{log}");

    // the restored C: is clean, its answer file names the host, the rest is the image's
    let c = common::disks::extract(&lab, &target, w.layout[1], "c-out.img");
    let fix = std::process::Command::new("ntfsfix")
        .arg("-n")
        .arg(&c)
        .output()
        .unwrap();
    assert!(
        fix.status.success(),
        "{}",
        String::from_utf8_lossy(&fix.stdout)
    );
    let cat = |f: &str| {
        let out = std::process::Command::new("ntfscat")
            .arg(&c)
            .arg(f)
            .output()
            .unwrap();
        assert!(out.status.success(), "ntfscat {f}");
        String::from_utf8(out.stdout).unwrap()
    };
    let xml = cat("Windows/Panther/unattend.xml");
    assert!(
        xml.contains("<ComputerName>room12-pc01</ComputerName>"),
        "{xml}"
    );
    assert_eq!(xml.len(), answer_file("MASTER").len());
    assert_eq!(
        xml.replace("room12-pc01", "MASTER")
            .split_whitespace()
            .collect::<Vec<_>>(),
        answer_file("MASTER").split_whitespace().collect::<Vec<_>>(),
        "only the name (and whitespace) changed"
    );
    w.assert_files(&lab, &target);
    common::say(&format!(
        "windows answer file: ComputerName room12-pc01 written in place ({} bytes), ntfsfix clean",
        xml.len()
    ));
}

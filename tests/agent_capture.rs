//! The agent's capture without a VM: `bootcast agent boot` with a fake /proc and /sys whose
//! kernel command line names a file as the disk (`bootcast.disk=`), against a real
//! `bootcast serve`: the capture task is created by the CLI, the disk becomes a version whose
//! id is the one `image add` gives the same bytes, a second capture moves only what changed,
//! and the capture endpoints refuse forged chunks and callers without this boot's session.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde_json::Value;

use bootcast::store::{ChunkId, Manifest};
use common::{
    agent_boot, boot_script, credential_of, disk_like, fake_bootenv, http, metric, post_declaring,
    random_bytes, register, request, say, task_of, Agent, InProcess, Lab, Relay,
};

const MAC: &str = "52:54:00:77:00:02";

fn serve(lab: &Lab) -> InProcess {
    InProcess::start(lab)
}

fn task_state(lab: &Lab) -> Value {
    let v = lab.json(&["task", "list", "--all", "--host", MAC]);
    v["tasks"][0].clone()
}

/// The version id `bootcast image add` gives `file` in a fresh data directory of its own.
fn image_add_version(file: &Path) -> String {
    let fresh = Lab::new();
    fresh.add("master", file)["version"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A manifest of the server's store.
fn manifest(lab: &Lab, version: &str) -> Manifest {
    let path = lab
        .data()
        .join("images/master")
        .join(format!("{version}.bcm"));
    Manifest::decode(&std::fs::read(&path).unwrap()).unwrap().0
}

/// ~32 MiB like a disk: text-like data with short zero runs, incompressible data, and a long
/// zero run (free space).
fn master_disk() -> Vec<u8> {
    let mut d = disk_like(24 << 20, 31);
    d.extend(random_bytes(4 << 20, 32));
    d.extend(vec![0u8; 3 << 20]);
    d.extend(disk_like(1 << 20, 33));
    d
}

#[test]
fn capture_gives_image_adds_version_and_a_second_capture_moves_only_what_changed() {
    let lab = Lab::new();
    fake_bootenv(&lab);
    // no image yet: the capture creates the store and the image
    let mut s = serve(&lab);
    register(&s, MAC);

    // (a) the first capture
    let v1 = master_disk();
    let disk = lab.file("disk.raw", &v1);
    let t = lab.json(&["task", "capture", "--host", MAC, "--image", "master"]);
    assert_eq!(t["tasks"][0]["kind"], "capture", "{t}");
    let log = agent_boot(&lab, &s, MAC, &disk, "1");
    let done = log
        .lines()
        .find(|l| l.starts_with("BOOTCAST-AGENT-CAPTURE-DONE"))
        .unwrap_or_else(|| panic!("no capture done line:\n{log}"));
    let words: Vec<&str> = done.split_whitespace().collect();
    assert_eq!(words[1], MAC, "{done}");
    let version1 = words[2].to_string();
    assert_eq!(version1, image_add_version(&disk), "capture vs image add");
    let t = task_state(&lab);
    assert_eq!(t["state"], "done", "{t}");
    assert_eq!(t["version"], version1.as_str(), "{t}");
    assert_eq!(t["progress"]["bytes_total"], v1.len() as u64, "{t}");
    let list = lab.json(&["image", "list"]);
    let listed: Vec<&Value> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["name"] == "master")
        .collect();
    assert_eq!(listed.len(), 1, "{list}");
    assert_eq!(listed[0]["version"], version1.as_str());
    assert_eq!(listed[0]["size"], v1.len() as u64);
    let received1 = metric(&s, "bootcast_capture_bytes_received_total");
    let stored1 = listed[0]["stored_bytes"].as_u64().unwrap();
    say(&format!(
        "agent capture v1: {received1} bytes received for {stored1} compressed bytes stored ({} image, {} zero)",
        v1.len(),
        listed[0]["zero_bytes"]
    ));
    assert!(received1 >= stored1 && received1 * 10 <= stored1 * 11);
    // the exported version is the disk, byte for byte
    assert!(lab.export(&format!("master@{version1}"), "v1.out") == v1);
    // a capture is not `latest` before staff approve it: no task or push takes it
    assert_eq!(listed[0]["approved"], false, "{list}");
    lab.json(&["site", "add", "s1"]);
    let e = common::stderr(&lab.run(&["push", "create", "--image", "master", "--sites", "s1"]));
    assert!(
        e.contains("no approved version") && e.contains("image approve"),
        "{e}"
    );
    let e = common::stderr(&lab.run(&[
        "push",
        "create",
        "--image",
        &format!("master@{version1}"),
        "--sites",
        "s1",
    ]));
    assert!(e.contains("awaits approval"), "{e}");
    let e = common::stderr(&lab.run(&["task", "reimage", "--host", MAC, "--image", "master"]));
    assert!(e.contains("no approved version"), "{e}");
    let a = lab.json(&["image", "approve", &format!("master@{version1}")]);
    assert_eq!(a["approved"], true, "{a}");

    // (b) ~1 MiB changes on the disk; capture again
    let mut v2 = v1.clone();
    v2[9 << 20..(9 << 20) + (1 << 20)].copy_from_slice(&random_bytes(1 << 20, 34));
    std::fs::write(&disk, &v2).unwrap();
    let before = metric(&s, "bootcast_capture_bytes_received_total");
    lab.json(&["task", "capture", "--host", MAC, "--image", "master"]);
    let log = agent_boot(&lab, &s, MAC, &disk, "2");
    let done = log
        .lines()
        .find(|l| l.starts_with("BOOTCAST-AGENT-CAPTURE-DONE"))
        .unwrap_or_else(|| panic!("no capture done line:\n{log}"));
    let version2 = done.split_whitespace().nth(2).unwrap().to_string();
    assert_ne!(version2, version1);
    assert_eq!(version2, image_add_version(&disk), "capture vs image add");
    assert_eq!(task_state(&lab)["version"], version2.as_str());
    let received = metric(&s, "bootcast_capture_bytes_received_total") - before;
    // what the store lacked: the chunks of v2 that v1 does not have, at their stored sizes
    let old: HashSet<ChunkId> = manifest(&lab, &version1)
        .chunks()
        .map(|(_, id, _)| id)
        .collect();
    let lacking: HashMap<ChunkId, u32> = manifest(&lab, &version2)
        .chunks()
        .filter(|(_, id, _)| !old.contains(id))
        .map(|(_, id, c)| (id, c))
        .collect();
    let lacking_bytes: u64 = lacking.values().map(|&c| u64::from(c)).sum();
    say(&format!(
        "agent capture v1 -> v2: {received} bytes received for {lacking_bytes} compressed bytes of {} chunks the store lacked ({} image)",
        lacking.len(),
        v2.len()
    ));
    assert!(lacking_bytes > 0);
    assert!(
        received * 10 <= lacking_bytes * 11,
        "received {received} > 1.1 x {lacking_bytes}"
    );
    assert!(
        done.contains(&format!(
            "uploaded {lacking_bytes} bytes ({} chunks",
            lacking.len()
        )),
        "{done}"
    );
    assert!(lab.export(&format!("master@{version2}"), "v2.out") == v2);
    // v2 waits for approval: `latest` is still v1, and pushes take v1
    let p = lab.json(&["push", "create", "--image", "master", "--sites", "s1"]);
    assert_eq!(
        p["push"]["versions"][0]["version"],
        version1.as_str(),
        "{p}"
    );
    // staff approve v2 through the API (the token is needed)
    let approve = format!("{}/api/v1/images/master/{version2}/approve", s.url);
    assert_eq!(http("POST", &approve, None, None).0, 401);
    let (code, body) = http("POST", &approve, s.token.as_deref(), None);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"approved\":true"), "{body}");
    let p = lab.json(&["push", "create", "--image", "master", "--sites", "s1"]);
    assert_eq!(
        p["push"]["versions"][0]["version"],
        version2.as_str(),
        "{p}"
    );
    assert_eq!(s.stop(), Ok(()));
}

/// POSTs `body` to a capture endpoint with the given headers; returns (status, body).
fn post(_lab: &Lab, url: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    let (code, _, body) = request("POST", url, headers, Some(body.to_vec()));
    (code, String::from_utf8_lossy(&body).into_owned())
}

/// One chunk as an upload frame: id, u32 BE length, zstd frame.
fn frame(id: &ChunkId, compressed: &[u8]) -> Vec<u8> {
    let mut f = id.0.to_vec();
    f.extend((compressed.len() as u32).to_be_bytes());
    f.extend(compressed);
    f
}

/// A served lab with `MAC` registered, booted for a capture task and its agent's hello made:
/// (server, task, session).
fn booted_for_capture(lab: &Lab) -> (InProcess, String, String) {
    fake_bootenv(lab);
    let s = serve(lab);
    register(&s, MAC);
    lab.json(&["task", "capture", "--host", MAC, "--image", "master"]);
    let script = boot_script(&s, MAC);
    let task = task_of(&script);
    let (code, answer) = common::hello(&s, MAC, &credential_of(&script), task.parse().ok());
    assert_eq!(code, 200, "{answer}");
    (s, task, common::session_of(&answer))
}

fn in_store(lab: &Lab, id: &ChunkId) -> bool {
    let hex = id.to_hex();
    lab.data()
        .join("store/chunks")
        .join(&hex[..3])
        .join(&hex)
        .exists()
}

#[test]
fn an_upload_with_a_chunk_that_is_not_its_id_is_refused_and_nothing_is_stored() {
    let lab = Lab::new();
    let (s, task, session) = booted_for_capture(&lab);
    let url = format!("{}/api/v1/agent/capture/chunks", s.url);
    let auth = [
        ("X-Bootcast-Mac", MAC),
        ("X-Bootcast-Session", session.as_str()),
        ("X-Bootcast-Task", task.as_str()),
    ];
    let good = random_bytes(40_000, 41);
    let good_id = ChunkId::of(&good);
    let claimed = random_bytes(40_000, 42);
    let bad_id = ChunkId::of(&claimed);
    // the frame under bad_id holds other bytes
    let forged = zstd::bulk::compress(&random_bytes(40_000, 43), 1).unwrap();
    let mut body = frame(&good_id, &zstd::bulk::compress(&good, 1).unwrap());
    body.extend(frame(&bad_id, &forged));
    let (code, answer) = post(&lab, &url, &auth, &body);
    assert_eq!(code, 400, "{answer}");
    assert!(answer.contains(&bad_id.to_hex()), "{answer}");
    assert!(
        !in_store(&lab, &good_id) && !in_store(&lab, &bad_id),
        "nothing of a refused upload is stored"
    );
    // not a zstd frame at all
    let (code, answer) = post(&lab, &url, &auth, &frame(&good_id, b"not zstd"));
    assert_eq!(code, 400, "{answer}");
    assert!(
        answer.contains(&good_id.to_hex()) && answer.contains("zstd"),
        "{answer}"
    );
    // a body cut short
    let (code, answer) = post(&lab, &url, &auth, &body[..100]);
    assert_eq!(code, 400, "{answer}");
    assert!(!in_store(&lab, &good_id));
    // too large for one request: 413, naming the limit
    let (code, answer) = post_declaring(&url, &auth, (64 << 20) + 1);
    assert_eq!(code, 413, "{answer}");
    assert!(answer.contains("64 MiB"), "{answer}");
    assert_eq!(metric(&s, "bootcast_capture_chunks_stored_total"), 0);
    assert!(metric(&s, "bootcast_capture_chunks_refused_total") >= 2);

    // the good chunk alone is stored, and then answered as present
    let (code, answer) = post(
        &lab,
        &url,
        &auth,
        &frame(&good_id, &zstd::bulk::compress(&good, 1).unwrap()),
    );
    assert_eq!(code, 200, "{answer}");
    assert!(in_store(&lab, &good_id));
    let ask = serde_json::json!({"ids": [good_id.to_hex(), bad_id.to_hex()]}).to_string();
    let (code, answer) = post(
        &lab,
        &format!("{}/api/v1/agent/capture/missing", s.url),
        &auth,
        ask.as_bytes(),
    );
    assert_eq!(code, 200, "{answer}");
    let v: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(v["missing"], serde_json::json!([bad_id.to_hex()]), "{v}");
    assert!(
        v["sizes"][0].as_u64().unwrap() > 0 && v["sizes"][1].is_null(),
        "{v}"
    );

    // gc beside a capture in progress: the uploaded chunk belongs to no version yet, but the
    // capture's session claimed it, so gc keeps it...
    let gc = lab.json(&["store", "gc"]);
    assert!(
        in_store(&lab, &good_id),
        "gc removed a chunk of a running capture: {gc}"
    );
    assert!(gc["kept_for_ingest"].as_u64().unwrap() >= 1, "{gc}");
    // ...until the capture ends (here: cancelled through the API)
    let (code, answer) = http(
        "DELETE",
        &format!("{}/api/v1/tasks/{task}", s.url),
        s.token.as_deref(),
        None,
    );
    assert_eq!(code, 200, "{answer}");
    let gc = lab.json(&["store", "gc"]);
    assert!(!in_store(&lab, &good_id), "{gc}");
}

#[test]
fn capture_endpoints_need_this_boots_session_and_the_hosts_own_capture_task() {
    let lab = Lab::new();
    let (s, task, session) = booted_for_capture(&lab);
    let ask = serde_json::json!({"ids": [ChunkId::of(b"x").to_hex()]}).to_string();
    let wrong = "0".repeat(32);
    for endpoint in ["missing", "chunks", "commit"] {
        let url = format!("{}/api/v1/agent/capture/{endpoint}", s.url);
        let body = ask.as_bytes();
        let (code, answer) = post(
            &lab,
            &url,
            &[("X-Bootcast-Mac", MAC), ("X-Bootcast-Task", task.as_str())],
            body,
        );
        assert_eq!(code, 403, "{endpoint} without a session: {answer}");
        assert!(answer.contains("network-boot"), "{answer}");
        let (code, answer) = post(
            &lab,
            &url,
            &[
                ("X-Bootcast-Mac", MAC),
                ("X-Bootcast-Session", wrong.as_str()),
                ("X-Bootcast-Task", task.as_str()),
            ],
            body,
        );
        assert_eq!(code, 403, "{endpoint} with a wrong session: {answer}");
        // the right session, another task number: not this host's task
        let (code, answer) = post(
            &lab,
            &url,
            &[
                ("X-Bootcast-Mac", MAC),
                ("X-Bootcast-Session", session.as_str()),
                ("X-Bootcast-Task", "999"),
            ],
            body,
        );
        assert_eq!(code, 404, "{endpoint} for another task: {answer}");
    }
    // a cancelled capture: 409, the agent stops
    lab.json(&["task", "cancel", "--host", MAC]);
    let (code, answer) = post(
        &lab,
        &format!("{}/api/v1/agent/capture/missing", s.url),
        &[
            ("X-Bootcast-Mac", MAC),
            ("X-Bootcast-Session", session.as_str()),
            ("X-Bootcast-Task", task.as_str()),
        ],
        ask.as_bytes(),
    );
    assert_eq!(code, 409, "{answer}");
    assert!(answer.contains("cancelled"), "{answer}");
    assert_eq!(metric(&s, "bootcast_capture_bytes_received_total"), 0);
}

#[test]
fn the_capture_waits_for_an_unreachable_server_and_finishes() {
    let lab = Lab::new();
    let (s, task, session) = booted_for_capture(&lab);
    // this image's captures need no approval
    let a = lab.json(&["image", "auto-approve", "master", "on"]);
    assert_eq!(a["auto_approve"], true, "{a}");
    let v1 = disk_like(8 << 20, 61);
    let disk = lab.file("disk.raw", &v1);

    // the agent reaches the server through a relay that holds its first capture request,
    // then goes down: the capture finds the server unreachable
    let upstream: std::net::SocketAddr = s.url.trim_start_matches("http://").parse().unwrap();
    let relay = Relay::start(upstream, &["/api/v1/agent/capture/"]);
    relay.hold_after(0);
    let _ = (task, session); // Agent::spawn boots the host again (a fresh credential)
    let mut agent = Agent::spawn(&lab, &s, MAC, &relay.url(), &disk);
    relay.wait_held();
    relay.cut(None);
    agent.line("server unreachable");
    relay.cut(Some(upstream));
    let done = agent.line("BOOTCAST-AGENT-CAPTURE-DONE");
    let log = agent.finish();
    let version = done.split_whitespace().nth(2).unwrap();
    assert_eq!(version, image_add_version(&disk), "{log}");
    let t = task_state(&lab);
    assert_eq!(
        (&t["state"], &t["version"]),
        (&Value::from("done"), &Value::from(version))
    );
    // auto-approved: the capture is `latest` at once
    let list = lab.json(&["image", "list"]);
    assert_eq!(list[0]["approved"], true, "{list}");
    let shown = lab.json(&["image", "show", "master@latest"]);
    assert!(shown.to_string().contains(version), "{shown}");
    // every chunk was stored once
    let chunks = lab.json(&["image", "list"])[0]["chunks"].as_u64().unwrap();
    assert_eq!(metric(&s, "bootcast_capture_chunks_stored_total"), chunks);
}

#[test]
fn a_capture_that_passes_its_task_quota_is_refused_and_fails_the_task() {
    let lab = Lab::new();
    fake_bootenv(&lab);
    let s = InProcess::start_with(
        &lab.data(),
        "[tftp]\nlisten = \"off\"\n[capture]\nmax_bytes = \"200k\"\n",
    );
    register(&s, MAC);
    // incompressible: far more than 200 kB of new chunks
    let disk = lab.file("disk.raw", &random_bytes(2 << 20, 91));
    lab.json(&["task", "capture", "--host", MAC, "--image", "master"]);
    let log = agent_boot(&lab, &s, MAC, &disk, "quota");
    assert!(log.contains("max_bytes"), "the agent says why: {log}");
    let t = task_state(&lab);
    assert_eq!(t["state"], "failed", "{t}");
    assert!(t["detail"].as_str().unwrap().contains("max_bytes"), "{t}");
    assert!(
        !lab.data().join("images/master").exists(),
        "nothing committed"
    );
}

/// An ext4 filesystem without a partition table, its free space full of old random bytes:
/// the capture maps it as `image add` does; with `bootcast image raw master on`, both keep
/// every byte, and again agree.
#[test]
fn a_mapped_capture_and_a_raw_one_agree_with_image_add() {
    use common::disks::{random, sh, tools};
    if !tools(
        "a_mapped_capture_and_a_raw_one_agree_with_image_add",
        &["mkfs.ext4"],
    ) {
        return;
    }
    let lab = Lab::new();
    fake_bootenv(&lab);
    let root = lab.path("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/data.bin"), random(3 << 20, 41)).unwrap();
    let disk = lab.file("disk.raw", &random(32 << 20, 42));
    let args = ["-q", "-F", "-E", "nodiscard,lazy_itable_init=0", "-d"];
    let mut args: Vec<&str> = args.to_vec();
    args.extend([root.to_str().unwrap(), disk.to_str().unwrap()]);
    sh("mkfs.ext4", &args);
    let s = serve(&lab);
    register(&s, MAC);
    let capture = |n: &str, map: &str| {
        lab.json(&["task", "capture", "--host", MAC, "--image", "master"]);
        let log = agent_boot(&lab, &s, MAC, &disk, n);
        assert!(log.contains(map), "{log}");
        let done = log
            .lines()
            .find(|l| l.starts_with("BOOTCAST-AGENT-CAPTURE-DONE"))
            .unwrap_or_else(|| panic!("no capture done line:\n{log}"))
            .to_string();
        done.split_whitespace().nth(2).unwrap().to_string()
    };
    let unused = |v: &str| manifest(&lab, v).unused_bytes();
    let mapped = capture("1", "BOOTCAST-AGENT-MAP part 0 ext4");
    assert_eq!(
        mapped,
        image_add_version(&disk),
        "mapped capture vs image add"
    );
    assert!(unused(&mapped) > 16 << 20, "most of the disk is free");

    lab.json(&["image", "raw", "master", "on"]);
    let raw = capture("2", "raw (the image is captured raw (bootcast image raw))");
    let fresh = Lab::new();
    let added = fresh.json(&["image", "add", "master", disk.to_str().unwrap(), "--raw"]);
    assert_eq!(
        raw,
        added["version"].as_str().unwrap(),
        "raw capture vs image add --raw"
    );
    assert_eq!(unused(&raw), 0);
    assert_ne!(raw, mapped);
    // `image add` of the image set raw is raw too: one cut for everyone
    let again = lab.json(&["image", "add", "master", disk.to_str().unwrap()]);
    assert_eq!(again["version"].as_str().unwrap(), raw);
    say(&format!(
        "capture of a 32 MiB ext4 disk: mapped {} ({} bytes unused), raw {}",
        &mapped[..12],
        unused(&mapped),
        &raw[..12]
    ));
}

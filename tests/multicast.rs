//! Room multicast end to end, in network namespaces on one bridge: a `bootcast serve` (manifest
//! and HTTP fallback), one `bootcast multicast send`, receivers as processes writing files; and
//! a multicast reimage task for a group, run by the server for eight `agent boot` processes.
//! Needs root; prints SKIP without. Figures (sender bytes / compressed image) are printed.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use serde_json::Value;

use bootcast::multicast::proto::{self, Message};
use bootcast::store::Store;
use common::netlab::Netns;
use common::{is_root, say, skip, Lab, Served, BIN};

const GROUP: &str = "239.99.0.7";
const PORT: &str = "47007";

/// A process killed (by PID) on drop, its stderr lines forwarded to a channel.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    log: Vec<String>,
}

impl Proc {
    fn start(mut cmd: Command) -> Proc {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            child,
            lines,
            log: Vec::new(),
        }
    }

    /// Waits for a stderr line containing `what` (panics if the process ends first).
    fn wait_line(&mut self, what: &str) -> String {
        loop {
            match self.lines.recv() {
                Ok(l) => {
                    self.log.push(l.clone());
                    if l.contains(what) {
                        return l;
                    }
                }
                Err(_) => panic!("process ended before {what:?}:\n{}", self.log.join("\n")),
            }
        }
    }

    /// Waits for the exit, requires success, parses the JSON report on stdout.
    fn report(self) -> Value {
        let out = self.stdout();
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    /// Waits for the exit, requires success, returns stdout (an agent's console).
    fn stdout(mut self) -> String {
        let mut out = String::new();
        std::io::Read::read_to_string(self.child.stdout.as_mut().unwrap(), &mut out).unwrap();
        let status = self.child.wait().unwrap();
        self.log.extend(self.lines.try_iter());
        assert!(
            status.success(),
            "failed ({status}):\n{out}\n{}",
            self.log.join("\n")
        );
        out
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A bridge namespace with the server, a sender namespace and `n` receiver namespaces.
struct Room {
    lab: Lab,
    image: Vec<u8>,
    spec: String,
    // fields drop in order: server first, then the namespaces
    _server: Served,
    sender_ns: Netns,
    receivers: Vec<Netns>,
    hub: Netns,
    /// The server's certificate, as its banner prints it (receivers send the API token over
    /// HTTPS only).
    fingerprint: String,
}

impl Room {
    fn new(n: usize, image: Vec<u8>) -> Room {
        let lab = Lab::new();
        common::fake_bootenv(&lab); // boot scripts for the agents (their tasks, their credentials)
        let src = lab.file("master.img", &image);
        let added = lab.add("room", &src);
        let spec = format!("room@{}", added["version"].as_str().unwrap());
        let hub = Netns::new("mh");
        hub.sh(
            "ip link add br0 type bridge && ip link set br0 type bridge forward_delay 0 mcast_snooping 0 \
             && ip addr add 10.99.0.1/24 dev br0 && ip link set br0 up",
        );
        // the agents have static addresses (no DHCP on this bridge): their boot credentials
        // are bound to the address they ask from, as configured for such a segment
        std::fs::write(
            lab.data().join("bootcast.toml"),
            "[boot]\ntrust_without_dhcp = [\"10.99.0.0/24\"]\n",
        )
        .unwrap();
        let mut cmd = hub.cmd(BIN);
        cmd.arg("--data").arg(lab.data());
        let server = Served::start(cmd, &["--http", "0.0.0.0:8080", "--tftp", "off"]);
        let fingerprint = server
            .fingerprint
            .clone()
            .expect("the banner prints the certificate's fingerprint");
        let sender_ns = hub.attach("ms", "10.99.0.2/24", "fd99::2/64");
        let receivers = (0..n)
            .map(|i| {
                hub.attach(
                    &format!("mr{i}"),
                    &format!("10.99.0.{}/24", 10 + i),
                    &format!("fd99::{:x}/64", 16 + i),
                )
            })
            .collect();
        Room {
            lab,
            image,
            spec,
            _server: server,
            fingerprint,
            sender_ns,
            receivers,
            hub,
        }
    }

    fn sender(&self, min_receivers: usize, rate: &str) -> Proc {
        let mut c = self.sender_ns.cmd(BIN);
        c.arg("--data").arg(self.lab.data()).arg("--json");
        c.args(["multicast", "send", &self.spec, "--interface", "eth0"]);
        c.args([
            "--group",
            GROUP,
            "--port",
            PORT,
            "--wait",
            "60",
            "--timeout",
            "300",
        ]);
        c.args([
            "--max-rate",
            rate,
            "--min-receivers",
            &min_receivers.to_string(),
        ]);
        Proc::start(c)
    }

    fn target(&self, i: usize) -> std::path::PathBuf {
        self.lab.path(&format!("target{i}.img"))
    }

    fn receiver(&self, i: usize, drop_percent: f64) -> Proc {
        let mut c = self.receivers[i].cmd(BIN);
        c.arg("--json");
        c.args(["multicast", "receive", "--server", "https://10.99.0.1:8443"]);
        // images are private: staff's API token (the server's data directory holds it), over
        // HTTPS with the server's certificate pinned
        c.arg("--token-file").arg(self.lab.data().join("api-token"));
        c.args(["--fingerprint", &self.fingerprint]);
        c.args(["--image", &self.spec, "--interface", "eth0"]);
        c.args(["--group", GROUP, "--port", PORT]);
        c.arg("--target").arg(self.target(i));
        c.arg("--drop-percent").arg(drop_percent.to_string());
        Proc::start(c)
    }

    fn assert_identical(&self, i: usize) {
        let got = std::fs::read(self.target(i)).unwrap();
        assert!(got == self.image, "target {i} differs from the image");
    }
}

fn image() -> Vec<u8> {
    let mut img = common::random_bytes(3 << 20, 71);
    img.extend(common::texty_bytes(4 << 20, 72));
    img.extend(vec![0u8; 1 << 20]);
    img.extend(common::random_bytes(1 << 20, 73));
    img
}

fn root(test: &str) -> bool {
    if is_root() {
        true
    } else {
        skip(test, "needs root (network namespaces)");
        false
    }
}

/// One session to receivers `0..n` (those in `lossy` drop 2 % of datagrams); returns the
/// sender's report and the receivers'.
fn session(room: &Room, n: usize, lossy: &[usize]) -> (Value, Vec<Value>) {
    for i in 0..n {
        let _ = std::fs::remove_file(room.target(i));
    }
    let sender = room.sender(n, "80Mbit");
    let receivers: Vec<Proc> = (0..n)
        .map(|i| room.receiver(i, if lossy.contains(&i) { 2.0 } else { 0.0 }))
        .collect();
    let reports: Vec<Value> = receivers.into_iter().map(Proc::report).collect();
    let sent = sender.report();
    for i in 0..n {
        room.assert_identical(i);
    }
    (sent, reports)
}

#[test]
fn one_four_and_eight_receivers_get_identical_targets_for_at_most_1_05_times_the_image() {
    if !root("multicast n receivers") {
        return;
    }
    let room = Room::new(8, image());
    for n in [1, 4, 8] {
        let (sent, got) = session(&room, n, &[]);
        let ratio = sent["bytes"].as_f64().unwrap() / sent["compressed"].as_f64().unwrap();
        say(&format!(
            "multicast N={n}: sender {} bytes in {} datagrams, {} passes; compressed image {} bytes; ratio {ratio:.4}; HTTP fallback chunks {}",
            sent["bytes"],
            sent["datagrams"],
            sent["passes"],
            sent["compressed"],
            got.iter().map(|r| r["chunks_http"].as_u64().unwrap()).sum::<u64>()
        ));
        assert_eq!(sent["ended"], "done", "{sent}");
        assert_eq!(sent["receivers_done"].as_u64().unwrap(), n as u64);
        assert!(ratio <= 1.05, "N={n}: sender sent {ratio:.4} × the image");
    }
}

#[test]
fn with_two_percent_loss_at_two_of_eight_receivers_all_finish() {
    if !root("multicast loss") {
        return;
    }
    let room = Room::new(8, image());
    let (sent, got) = session(&room, 8, &[2, 5]);
    let others = || got.iter().enumerate().filter(|(i, _)| ![2, 5].contains(i));
    say(&format!(
        "multicast loss at 2 of 8: sender {} bytes ({:.3} × image), {} passes, {} NAKs; lossy receivers complete after {:.2}/{:.2} s, others ≤ {:.2} s (timing ratios: bench/multicast)",
        sent["bytes"],
        sent["bytes"].as_f64().unwrap() / sent["compressed"].as_f64().unwrap(),
        sent["passes"],
        sent["naks"],
        got[2]["complete_after"].as_f64().unwrap(),
        got[5]["complete_after"].as_f64().unwrap(),
        others()
            .map(|(_, r)| r["complete_after"].as_f64().unwrap())
            .fold(0.0, f64::max)
    ));
    assert_eq!(sent["ended"], "done", "{sent}");
    assert!(
        sent["passes"].as_u64().unwrap() >= 2,
        "losses were repaired"
    );
    // a lost datagram costs its fragment, not its chunk: before fragment repair the sender
    // sent 1.78-1.84 × the image here (each lossy receiver lacked ~35 % of the chunks)
    let ratio = sent["bytes"].as_f64().unwrap() / sent["compressed"].as_f64().unwrap();
    assert!(
        ratio < 1.25,
        "sender sent {ratio:.3} × the image for 2 % loss at 2 receivers"
    );
    // the six others are not held back: everything in the first pass, nothing asked again
    for (i, r) in others() {
        assert_eq!(r["naks_sent"], 0, "receiver {i}: {r}");
        assert_eq!(r["chunks_multicast"], r["chunks"], "receiver {i}: {r}");
    }
    for i in [2, 5] {
        assert!(got[i]["naks_sent"].as_u64().unwrap() > 0, "{}", got[i]);
    }
}

#[test]
fn a_late_joiner_and_a_killed_and_restarted_receiver_finish() {
    if !root("multicast late and restarted") {
        return;
    }
    let room = Room::new(3, image());
    let mut sender = room.sender(2, "16Mbit");
    let early = room.receiver(0, 0.0);
    let mut victim = room.receiver(1, 0.0);
    victim.wait_line("held 30%");
    victim.kill();
    let restarted = room.receiver(1, 0.0);
    sender.wait_line("pass 1 at 50%");
    let late = room.receiver(2, 0.0);
    let (early, restarted, late) = (early.report(), restarted.report(), late.report());
    let sent = sender.report();
    for i in 0..3 {
        room.assert_identical(i);
    }
    say(&format!(
        "multicast late/restart: sender {} passes, {:.3} × image; restarted found {} chunks in place; late joiner {} by multicast, {} over HTTP",
        sent["passes"],
        sent["bytes"].as_f64().unwrap() / sent["compressed"].as_f64().unwrap(),
        restarted["chunks_in_place"],
        late["chunks_multicast"],
        late["chunks_http"]
    ));
    assert!(restarted["chunks_in_place"].as_u64().unwrap() > 0);
    assert!(late["chunks_multicast"].as_u64().unwrap() > 0, "{late}");
    assert_eq!(early["chunks_http"], 0);
}

#[test]
fn a_spoofed_chunk_sent_to_the_group_never_reaches_a_target() {
    if !root("multicast spoof") {
        return;
    }
    let room = Room::new(2, image());
    let mut sender = room.sender(2, "80Mbit");
    let line = sender.wait_line("session ");
    let session = u32::from_str_radix(
        line.split("session ")
            .nth(1)
            .unwrap()
            .split(':')
            .next()
            .unwrap(),
        16,
    )
    .unwrap();
    let mut first = room.receiver(0, 0.0);
    first.wait_line("joined session");
    // a whole chunk 0 with the right id and length but wrong bytes, from the sender's
    // namespace, before the session starts (it waits for the second receiver)
    let store = Store::open(&room.lab.data()).unwrap();
    let manifest = store.resolve(&room.spec).unwrap().manifest;
    let c = proto::chunk_list(&manifest)[0].clone();
    let ns = format!("/var/run/netns/{}", room.sender_ns.name);
    std::thread::spawn(move || {
        let f = std::fs::File::open(ns).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let s = std::net::UdpSocket::bind("10.99.0.2:0").unwrap();
        s.set_multicast_ttl_v4(1).unwrap();
        let junk = vec![0x5a; c.compressed as usize];
        let step = proto::payload_size(proto::DEFAULT_DATAGRAM);
        let mut buf = Vec::new();
        for (k, piece) in junk.chunks(step).enumerate() {
            let m = Message::Data {
                index: 0,
                offset: (k * step) as u32,
                total: c.compressed,
                tag: proto::tag(&c.id),
                payload: piece,
            };
            proto::encode(session, &m, &mut buf);
            s.send_to(&buf, format!("{GROUP}:{PORT}")).unwrap();
        }
    })
    .join()
    .unwrap();
    let second = room.receiver(1, 0.0);
    let (first, second) = (first.report(), second.report());
    let sent = sender.report();
    room.assert_identical(0);
    room.assert_identical(1);
    say(&format!(
        "multicast spoof: first receiver dropped {} datagrams/chunks; sender ended {}",
        first["dropped"], sent["ended"]
    ));
    assert!(first["dropped"].as_u64().unwrap() >= 1, "{first}");
    assert_eq!(second["dropped"], 0);
}

#[test]
fn a_multicast_reimage_task_for_a_group_restores_eight_agents_from_one_stream() {
    if !root("multicast reimage task") {
        return;
    }
    let n = 8;
    let room = Room::new(n, image());
    let hub = room.hub.name.clone();
    let api = |method: &str, path: &str, body: Option<&str>| {
        common::http_in(
            Some(&hub),
            method,
            &format!("http://10.99.0.1:8080{path}"),
            None,
            body,
        )
    };
    let script_of = |mac: &str| {
        let (code, script) = api("GET", &format!("/boot/{mac}.ipxe?platform=pcbios"), None);
        assert_eq!(code, 200, "{script}");
        script
    };
    let macs: Vec<String> = (0..n)
        .map(|i| format!("52:54:00:99:07:{:02x}", 0x10 + i))
        .collect();
    for mac in &macs {
        let hello = serde_json::json!({"protocol": bootcast::proto::agent::AGENT_PROTOCOL, "mac": mac, "arch": "x86_64", "firmware": "bios", "boot_time": 1, "credential": common::credential_of(&script_of(mac))});
        let (code, body) = api("POST", "/api/v1/agent/hello", Some(&hello.to_string()));
        assert_eq!(code, 200, "{body}");
    }
    let mut args = vec!["group", "add", "room12"];
    args.extend(macs.iter().map(String::as_str));
    room.lab.json(&args);
    let created = room.lab.json(&[
        "task",
        "reimage",
        "--group",
        "room12",
        "--image",
        &room.spec,
        "--multicast",
        "--wait",
        "60",
        "--max-rate",
        "40Mbit",
    ]);
    let session = created["tasks"][0]["multicast"]
        .as_i64()
        .expect("tasks carry their session");
    assert!(created["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["multicast"] == session));

    // eight agents, one per namespace, each writing its own disk file
    let agents: Vec<Proc> = (0..n)
        .map(|i| {
            // each machine asks for its own script, from its own address: the credential is
            // bound to it
            let (code, script) = common::http_in(
                Some(&room.receivers[i].name),
                "GET",
                &format!("http://10.99.0.1:8080/boot/{}.ipxe?platform=pcbios", macs[i]),
                None,
                None,
            );
            assert_eq!(code, 200, "{script}");
            let root = room.lab.path(&format!("agent-root{i}"));
            common::fake_agent_root(
                &root,
                &macs[i],
                &format!(
                    "bootcast.server=http://10.99.0.1:8080 bootcast.mac={} bootcast.task={} bootcast.credential={} bootcast.disk={}",
                    macs[i],
                    common::task_of(&script),
                    common::credential_of(&script),
                    room.target(i).display()
                ),
            );
            let _ = std::fs::remove_file(room.target(i));
            std::fs::write(room.target(i), b"").unwrap();
            let mut c = room.receivers[i].cmd(BIN);
            c.args(["agent", "boot", "--no-act", "--tries", "2", "--root"]).arg(&root);
            Proc::start(c)
        })
        .collect();
    let mut logs = Vec::new();
    for (i, a) in agents.into_iter().enumerate() {
        let console = a.stdout();
        assert!(
            console.contains("BOOTCAST-AGENT-REIMAGE-DONE"),
            "agent {i}:\n{console}"
        );
        logs.push(console);
    }
    for (i, log) in logs.iter().enumerate() {
        room.assert_identical(i);
        let line = log
            .lines()
            .find(|l| l.contains("chunks by multicast"))
            .unwrap_or_else(|| panic!("agent {i} did not restore by multicast:\n{log}"));
        assert!(common::number_after(line, "multicast:") > 0, "{line}");
        assert!(line.contains(" 0 over HTTP"), "agent {i}: {line}");
    }
    // every task done, with progress reported for the whole image
    let tasks = room.lab.json(&["task", "list", "--all"]);
    for t in tasks["tasks"].as_array().unwrap() {
        assert_eq!(t["state"], "done", "{t}");
        assert_eq!(
            t["progress"]["bytes_total"].as_u64(),
            Some(room.image.len() as u64),
            "{t}"
        );
    }
    // the server ran one run for the eight and kept its report
    let report = common::wait_for("the session's report", 60, || {
        let s = room.lab.json(&["multicast", "sessions"]);
        let s = s["sessions"][0].clone();
        s["last_report"].is_object().then_some(s)
    });
    let r = &report["last_report"];
    let ratio = r["bytes"].as_f64().unwrap() / r["compressed"].as_f64().unwrap();
    say(&format!(
        "multicast reimage task, 8 agents: session {session}, {} runs; sender {} bytes for {} compressed ({ratio:.4}), {} passes, {} NAKs, {}/{} receivers done",
        report["runs"], r["bytes"], r["compressed"], r["passes"], r["naks"], r["receivers_done"], r["receivers_joined"]
    ));
    assert_eq!(report["runs"], 1, "{report}");
    assert_eq!(r["ended"], "done", "{r}");
    assert_eq!(r["receivers_done"], n, "{r}");
    assert!(ratio <= 1.05, "{ratio}");
}

//! An unattended night, end to end: a room of two machines on a site relay's segment, off; a
//! task rule "reimage room r1 by multicast every Monday 02:00 Europe/Paris, then power off".
//! Both servers' schedulers read a clock file that says it is Monday 4 January 2027, 01:59:40
//! in Paris. At 02:00 the central server runs the rule; the relay, which serves the room's
//! segment, sends the magic packets (captured on the segment). A stand-in for the NICs'
//! wake logic starts each QEMU VM (TCG, BIOS, virtio, an empty disk) when its packet arrives;
//! both PXE-boot through the relay, receive the master from the relay's multicast session
//! (every chunk by multicast, none over HTTP), verify it, and power off. The rule then shows
//! its next run, a week later. Needs root; prints SKIP without.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bootcast::push::clock::{Clock, FileClock};
use common::netlab::{can_run_vms, Firmware, Netns, Nic, Vm};
use common::region::Region;

const ROOM: [&str; 2] = ["52:54:00:99:0b:01", "52:54:00:99:0b:02"];

fn utc(s: &str) -> i64 {
    bootcast::time::parse_rfc3339(s).unwrap()
}

#[test]
fn a_room_is_woken_reimaged_by_multicast_and_powered_off_by_its_monday_rule() {
    if !can_run_vms("a_room_is_woken_reimaged_by_multicast_and_powered_off_by_its_monday_rule") {
        return;
    }
    let region = Region::start("m");
    let Region {
        central,
        c,
        site,
        server,
        relay,
        image,
        clock,
        ..
    } = &region;
    site.add_tap("tap1");
    // the room: two hosts of the site (first booted through the relay), in group r1
    for mac in ROOM {
        region.register_via_relay(mac);
    }
    central.json(&["group", "add", "r1", ROOM[0], ROOM[1]]);

    // Monday 4 January 2027, 01:59:40 in Paris (UTC+1)
    std::fs::write(clock, utc("2027-01-04T00:59:40Z").to_string()).unwrap();
    let clock = FileClock {
        path: clock.clone(),
    };
    // the stand-in listens on a port of the segment (a namespace plugged into br0)
    let nic = site.attach("mnic", "10.99.0.9/24", "fd99::9/64");
    let wakes = WakeWatch::start(&nic, &clock);
    let rule = serde_json::json!({
        "kind": "reimage", "group": "r1", "image": "demo", "multicast": true,
        "every": "0 2 * * 1", "tz": "Europe/Paris", "then": "poweroff",
    });
    let token = server.token.as_deref().expect("the banner's token");
    let (code, body) = common::http_in(
        Some(&c.name),
        "POST",
        "http://127.0.0.1:8080/api/v1/task-rules",
        Some(token),
        Some(&rule.to_string()),
    );
    assert_eq!(code, 201, "{body}");
    let made: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(made["rule"]["next_run"], "2027-01-04T01:00:00Z", "{made}");
    let relay_http_before = common::metric_in(
        Some(&site.name),
        "http://127.0.0.1:8080",
        "bootcast_chunk_bytes_served_total",
    )
    .unwrap();

    // the relay wakes the room; each VM starts when its magic packet arrives
    let mut vms = Vec::new();
    let end = Instant::now() + Duration::from_secs(180);
    while vms.len() < ROOM.len() {
        let left = end.saturating_duration_since(Instant::now());
        let (mac, at) = wakes.woken.recv_timeout(left).unwrap_or_else(|_| {
            panic!(
                "no magic packet for the room by 02:03 (woken: {:?})\n--- central:\n{}\n--- relay:\n{}",
                vms.iter().map(|(m, _, _)| m).collect::<Vec<_>>(),
                server.log_text(),
                relay.log_text()
            )
        });
        assert!(
            at >= utc("2027-01-04T01:00:00Z"),
            "{mac} was woken before 02:00 Paris: {}",
            bootcast::time::rfc3339(at)
        );
        let n = vms.len();
        let dir = central.path(&format!("vm{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        let disk = dir.join("disk.raw");
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(96 << 20)
            .unwrap();
        let mut vm = Vm::new(Firmware::Bios, Nic::Virtio, &mac, &dir);
        vm.tap = format!("tap{n}");
        vm.timeout = 480; // -no-reboot stays: the rule powers the machines off
        vm.extra = vec![
            "-drive".into(),
            format!("file={},format=raw,if=virtio", disk.display()),
        ];
        let mut cmd = vm.command(site);
        let started = Instant::now();
        let run = std::thread::spawn(move || {
            let out = cmd.output().unwrap();
            (out.status, started.elapsed().as_secs_f64())
        });
        vms.push((mac, (vm, disk), run));
    }

    // both restored by the relay's multicast session and powered off
    let mut results = Vec::new();
    for (mac, vm, run) in vms {
        results.push((mac, vm, run.join().unwrap()));
    }
    let packets = wakes.stop();

    for (mac, (vm, disk), (status, took)) in results {
        let serial = vm.serial();
        let context = || {
            format!(
                "QEMU {status}\n--- serial:\n{serial}\n--- relay:\n{}",
                relay.log_text()
            )
        };
        assert!(
            serial.contains(&format!("BOOTCAST-AGENT-REIMAGE-DONE {mac}")),
            "{}",
            context()
        );
        let line = serial
            .lines()
            .find(|l| l.contains("chunks by multicast"))
            .unwrap_or_else(|| panic!("no multicast summary: {}", context()));
        let (by_mc, over_http) = multicast_counts(line);
        assert!(by_mc > 0 && over_http == 0, "{line}");
        assert!(
            serial.contains("BOOTCAST-AGENT-ACTION poweroff"),
            "{}",
            context()
        );
        assert!(
            status.success() && !serial.contains("BOOTCAST-DEMO-OK"),
            "the machine did not power off after its task: {}",
            context()
        );
        common::assert_restored(image, &disk);
        common::say(&format!(
            "{mac}: woken by {} magic packets, {by_mc} chunks by multicast, 0 over HTTP, powered off after {took:.1} s",
            packets.iter().filter(|m| **m == mac).count()
        ));
    }
    let relay_http = common::metric_in(
        Some(&site.name),
        "http://127.0.0.1:8080",
        "bootcast_chunk_bytes_served_total",
    )
    .unwrap()
        - relay_http_before;
    assert_eq!(relay_http, 0, "chunk bytes served over HTTP by the relay");
    assert!(
        relay.log_text().contains("2 of 2 receivers done"),
        "{}",
        relay.log_text()
    );
    // each MAC woken by the relay: three packets each ([wake] repeat's default)
    for mac in ROOM {
        assert_eq!(
            packets.iter().filter(|m| *m == mac).count(),
            3,
            "{packets:?}"
        );
    }

    // the rule ran once, at 02:00, and shows its next run a week later
    let list = central.json(&["task", "rule", "list"]);
    let r = &list["rules"][0];
    assert_eq!(r["next_run"], "2027-01-11T01:00:00Z", "{list}");
    assert_eq!(r["failed"], false, "{list}");
    let ran = utc(r["last_run"].as_str().unwrap());
    assert!(
        (utc("2027-01-04T01:00:00Z")..utc("2027-01-04T01:01:00Z")).contains(&ran),
        "{list}"
    );
    assert!(
        r["last_outcome"]
            .as_str()
            .unwrap()
            .starts_with("2 reimage task(s)"),
        "{list}"
    );
    // the relay passes the room's reports on: both tasks done at central
    let end = Instant::now() + Duration::from_secs(60);
    for mac in ROOM {
        loop {
            let t = central.json(&["task", "list", "--all", "--host", mac]);
            if t["tasks"][0]["state"] == "done" {
                break;
            }
            assert!(Instant::now() < end, "{mac}'s task: {t}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// `N chunks by multicast, M over HTTP` of the agent's summary line.
fn multicast_counts(line: &str) -> (u64, u64) {
    let words: Vec<&str> = line.split_whitespace().collect();
    let before = |w: &str| -> u64 {
        let i = words.iter().position(|x| *x == w).unwrap();
        words[i - 1].parse().unwrap()
    };
    // "... multicast: N chunks by multicast, M over HTTP, ..."
    let n = words.iter().position(|x| *x == "chunks").unwrap();
    (words[n - 1].parse().unwrap(), before("over"))
}

/// The stand-in for the room's NICs: tcpdump on a port of the segment; each magic packet's MAC
/// is sent on `woken` (once per MAC, with the schedulers' clock when it arrived), and every
/// packet's MAC is kept.
struct WakeWatch {
    dump: Child,
    woken: mpsc::Receiver<(String, i64)>,
    reader: std::thread::JoinHandle<Vec<String>>,
}

impl WakeWatch {
    fn start(nic: &Netns, clock: &FileClock) -> WakeWatch {
        let mut dump = nic
            .cmd("tcpdump")
            .args(["-i", "eth0", "-U", "-n", "-w", "-", "udp port 9"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump (scripts/test.sh installs it)");
        let mut err = BufReader::new(dump.stderr.take().unwrap());
        let mut line = String::new();
        while err.read_line(&mut line).unwrap() > 0 && !line.contains("listening on") {
            line.clear();
        }
        assert!(
            line.contains("listening on"),
            "tcpdump did not start: {line}"
        );
        std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
        let mut out = dump.stdout.take().unwrap();
        let (tx, woken) = mpsc::channel();
        let clock = FileClock {
            path: clock.path.clone(),
        };
        let reader = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut header = [0u8; 24];
            if out.read_exact(&mut header).is_err() {
                return seen;
            }
            let mut rec = [0u8; 16];
            while out.read_exact(&mut rec).is_ok() {
                let len = u32::from_le_bytes(rec[8..12].try_into().unwrap()) as usize;
                let mut f = vec![0u8; len];
                if out.read_exact(&mut f).is_err() {
                    break;
                }
                // Ethernet, IPv4, UDP
                let ip = &f[14..];
                let udp = &ip[usize::from(ip[0] & 0xf) * 4..];
                let Some((mac, _)) = bootcast::wol::parse_magic(&udp[8..]) else {
                    continue;
                };
                let mac = mac.to_string();
                if !seen.contains(&mac) {
                    let _ = tx.send((mac.clone(), clock.now()));
                }
                seen.push(mac);
            }
            seen
        });
        WakeWatch {
            dump,
            woken,
            reader,
        }
    }

    /// Stops the capture: every magic packet's MAC, in order.
    fn stop(mut self) -> Vec<String> {
        let _ = self.dump.kill();
        let _ = self.dump.wait();
        self.reader.join().unwrap()
    }
}

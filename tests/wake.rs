//! Wake-on-LAN from the server: `bootcast host wake` and a task's `--wake` queue orders; the
//! server sends the magic packets on its DHCP interface's segment (a bridge in a network
//! namespace), where a capture on another port of the segment sees them: broadcast to
//! 10.99.0.255, UDP port 9, each host's MAC 16 times and the SecureOn password of `[wake]`,
//! repeated; a group in waves, one host after the other; each send an event `wake`. A site's
//! relay does the same for the site's hosts. Needs root; prints SKIP without.

mod common;

use std::io::BufRead;
use std::process::{Child, Stdio};

use common::netlab::{register_at, serve_full, Netns};
use common::{fake_bootenv, wait_for, Lab};

const A: &str = "52:54:00:99:07:0a";
const B: &str = "52:54:00:99:07:0b";
/// The server (or relay) in its namespace.
const URL: &str = "http://127.0.0.1:8080";

/// Whether wake test `test` can run here (root for namespaces, tcpdump for the captures);
/// prints SKIP when it cannot.
fn can_capture(test: &str) -> bool {
    if !common::is_root() {
        common::skip(test, "needs root (network namespaces)");
        return false;
    }
    if !common::disks::have("tcpdump") {
        common::skip(test, "tcpdump not installed (scripts/test.sh installs it)");
        return false;
    }
    true
}

/// tcpdump on `nic`'s eth0 (a port of the segment) until `count` UDP datagrams to port 9,
/// written to `file`; returns once it listens.
fn capture(nic: &Netns, file: &std::path::Path, count: usize) -> Child {
    let mut child = nic
        .cmd("tcpdump")
        .args(["-i", "eth0", "-U", "-n", "-c", &count.to_string(), "-w"])
        .arg(file)
        .arg("udp port 9")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tcpdump (scripts/test.sh installs it)");
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while err.read_line(&mut line).unwrap() > 0 {
        if line.contains("listening on") {
            // keep draining its stderr so it never blocks on a full pipe
            std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
            return child;
        }
        line.clear();
    }
    let _ = child.kill();
    let status = child.wait();
    panic!("tcpdump did not start ({status:?}): {line}");
}

/// The magic packets of a capture: (Ethernet destination, IPv4 destination, UDP port, MAC,
/// SecureOn password bytes).
type Magic = ([u8; 6], [u8; 4], u16, String, Vec<u8>);

fn magic_packets(file: &std::path::Path) -> Vec<Magic> {
    let b = std::fs::read(file).unwrap();
    assert_eq!(&b[..4], &[0xd4, 0xc3, 0xb2, 0xa1], "a little-endian pcap");
    let mut at = 24;
    let mut out = Vec::new();
    while at + 16 <= b.len() {
        let len = u32::from_le_bytes(b[at + 8..at + 12].try_into().unwrap()) as usize;
        let f = &b[at + 16..at + 16 + len];
        at += 16 + len;
        assert_eq!(&f[12..14], &[0x08, 0x00], "IPv4");
        let ip = &f[14..];
        let ihl = usize::from(ip[0] & 0xf) * 4;
        let udp = &ip[ihl..];
        let (mac, password) = bootcast::wol::parse_magic(&udp[8..]).expect("a magic packet");
        out.push((
            f[..6].try_into().unwrap(),
            ip[16..20].try_into().unwrap(),
            u16::from_be_bytes([udp[2], udp[3]]),
            mac.to_string(),
            password,
        ));
    }
    out
}

/// A central server (HTTP on 8080, TFTP off, then `central_args`) in its namespace and the
/// relay of its new site `lycee` in another (its VLAN `br0`, with `relay_args`), linked by
/// 10.99.`net`.0/30; `before_relay` prepares the site's namespace first (more bridges).
fn relay_site(
    tag: &str,
    net: u8,
    central: &Lab,
    (central_args, relay_args): (&[&str], &[&str]),
    before_relay: impl FnOnce(&Netns),
) -> (Netns, Netns, common::Served, common::Served) {
    let token = central.json(&["site", "add", "lycee"])["token"]
        .as_str()
        .unwrap()
        .to_string();
    let c = Netns::new(&format!("{tag}c"));
    let site = Netns::new(&format!("{tag}s"));
    c.link(
        &site,
        ("s1", &format!("10.99.{net}.1/30")),
        ("up0", &format!("10.99.{net}.2/30")),
        None,
    );
    site.bridge_with_tap();
    before_relay(&site);
    let mut cmd = c.cmd(common::BIN);
    cmd.arg("--data")
        .arg(central.data())
        .env_remove("BOOTCAST_DATA");
    let args = [
        &["--http", "0.0.0.0:8080", "--tftp", "off"][..],
        central_args,
    ]
    .concat();
    let server = common::Served::start(cmd, &args);
    let relay = common::netlab::start_relay(
        &site,
        &central.path("relay"),
        ("lycee", &token),
        &server,
        &format!("10.99.{net}.1"),
        relay_args,
    );
    (c, site, server, relay)
}

/// Waits for the capture to end (its count reached); `log` says what the sender did if not.
fn wait_exit(child: &mut Child, what: &str, log: impl Fn() -> String) {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > end {
            let _ = child.kill();
            panic!("timed out waiting for {what}; the sender's log:\n{}", log());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "{what}: {status}");
}

#[test]
fn the_server_wakes_hosts_on_its_segment() {
    if !can_capture("the_server_wakes_hosts_on_its_segment") {
        return;
    }
    let lab = Lab::new();
    fake_bootenv(&lab);
    lab.add("demo", &lab.file("d.img", &common::disk_like(1 << 20, 7)));
    // NICs that want a SecureOn password; each packet twice
    std::fs::write(
        lab.data().join("bootcast.toml"),
        "[wake]\npassword = \"01:23:45:67:89:ab\"\nrepeat = 2\n",
    )
    .unwrap();
    let secure_on = vec![0x01, 0x23, 0x45, 0x67, 0x89, 0xab];
    let ns = Netns::new("wake");
    ns.bridge_with_tap();
    // a machine's port on the segment: what a NIC in standby sees
    let nic = ns.attach("nic", "10.99.0.50/24", "fd99::50/64");
    let server = serve_full(&ns, &lab);
    register_at(&ns, URL, A);
    register_at(&ns, URL, B);

    // one host, now
    let pcap = lab.path("one.pcap");
    let mut dump = capture(&nic, &pcap, 2);
    let queued = lab.json(&["host", "wake", A]);
    assert_eq!(queued["wakes"].as_array().unwrap().len(), 1, "{queued}");
    wait_exit(&mut dump, "two magic packets for A", || server.log_text());
    let got = magic_packets(&pcap);
    assert_eq!(got.len(), 2);
    for p in &got {
        assert_eq!(
            p,
            &(
                [0xff; 6],
                [10, 99, 0, 255],
                9,
                A.to_string(),
                secure_on.clone()
            ),
            "broadcast on the segment, port 9, A's MAC, the SecureOn password"
        );
    }
    let ev = wait_for("the wake event", 30, || {
        let e = lab.json(&["events", "--kind", "wake", "--host", A]);
        (!e["events"].as_array().unwrap().is_empty()).then_some(e)
    });
    assert_eq!(ev["events"][0]["data"]["by"], "server", "{ev}");

    // a room's reimage that wakes it: waves of one host, 2 s apart, A then B
    lab.json(&["group", "add", "r1", A, B]);
    let pcap = lab.path("room.pcap");
    let mut dump = capture(&nic, &pcap, 4);
    let tasks = lab.json(&[
        "task",
        "reimage",
        "--group",
        "r1",
        "--image",
        "demo",
        "--wake",
        "--wave",
        "1",
        "--spacing",
        "2",
    ]);
    assert_eq!(tasks["tasks"].as_array().unwrap().len(), 2);
    wait_exit(&mut dump, "two magic packets each for A and B", || {
        server.log_text()
    });
    let order: Vec<String> = magic_packets(&pcap).into_iter().map(|p| p.3).collect();
    assert_eq!(order, [A, A, B, B], "A's wave, then B's");
    let ev = wait_for("B's wake event", 30, || {
        let e = lab.json(&["events", "--kind", "wake", "--host", B]);
        (!e["events"].as_array().unwrap().is_empty()).then_some(e)
    });
    let task_b = tasks["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["mac"] == B)
        .unwrap()["id"]
        .clone();
    assert_eq!(ev["events"][0]["data"]["task"], task_b, "{ev}");
    common::say(&format!(
        "wake: 2 magic packets per host ([wake] repeat = 2) with the SecureOn password on br0 (10.99.0.255:9), A then B in waves 2 s apart; events recorded by the server ({} log lines)",
        server.log_text().lines().filter(|l| l.contains("woken")).count()
    ));
}

/// A host of a relay's site is woken by the relay, on the site's segment: the order reaches the
/// relay in its site book, the relay sends the packets on its DHCP interface, and its
/// heartbeat tells central, which records the event (by the site). The central server, with no
/// interface on that segment, sends nothing.
#[test]
fn a_site_relay_wakes_its_hosts_and_central_records_it() {
    const NAME: &str = "a_site_relay_wakes_its_hosts_and_central_records_it";
    if !can_capture(NAME) {
        return;
    }
    let central = Lab::new();
    fake_bootenv(&central);
    let (_c, site, server, relay) = relay_site(
        "wake",
        5,
        &central,
        (&[], &common::netlab::VLAN_SERVICES),
        |_| {},
    );
    let nic = site.attach("nic", "10.99.0.60/24", "fd99::60/64");
    register_at(&site, URL, A);
    let host = central.json(&["host", "show", A]);
    assert_eq!(host["host"]["site"], "lycee", "{host}");

    let pcap = central.path("relay.pcap");
    let mut dump = capture(&nic, &pcap, 3);
    central.json(&["host", "wake", A]);
    let book = central.path("relay").join("relay/book.json");
    wait_exit(&mut dump, "the relay's three magic packets for A", || {
        format!(
            "{}\n--- its site book:\n{}\n--- central:\n{}",
            relay.log_text(),
            std::fs::read_to_string(&book).unwrap_or_default(),
            server.log_text()
        )
    });
    let got = magic_packets(&pcap);
    assert_eq!(got.len(), 3);
    for p in &got {
        assert_eq!(
            p,
            &([0xff; 6], [10, 99, 0, 255], 9, A.to_string(), vec![]),
            "3 packets (the default), no password"
        );
    }
    let ev = wait_for("central's wake event", 60, || {
        let e = central.json(&["events", "--kind", "wake", "--host", A]);
        (!e["events"].as_array().unwrap().is_empty()).then_some(e)
    });
    assert_eq!(ev["events"][0]["data"]["by"], "lycee", "{ev}");
    assert!(
        relay.log_text().contains("woken"),
        "the relay does not say it woke A: {}",
        relay.log_text()
    );
    assert!(
        !server.log_text().contains("woken"),
        "central sent wake packets itself: {}",
        server.log_text()
    );
    common::say("wake: the site relay sent 3 magic packets for A on its segment; central recorded the event by site lycee");
}

/// A DHCP DISCOVER then REQUEST from `mac` on `ns`'s eth0, as a BIOS PXE client: the OFFER
/// and the ACK (each its address, next-server, boot file and router).
fn pxe_lease(
    ns: &Netns,
    mac: &str,
) -> (
    bootcast::boot::dhcp::codec::ReplyView,
    bootcast::boot::dhcp::codec::ReplyView,
) {
    use bootcast::boot::dhcp::codec::{build_request, msg, RequestBuilder};
    use std::net::{Ipv4Addr, SocketAddrV4};
    let name = ns.name.clone();
    let mac: bootcast::mac::Mac = mac.parse().unwrap();
    std::thread::spawn(move || {
        common::dhcp::enter(&name);
        let sock =
            common::dhcp::socket_on(Some("eth0"), SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68));
        let to = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
        let vc = "PXEClient:Arch:00000:UNDI:002001";
        let mut b = RequestBuilder::discover(0x7001, mac);
        b.arch = Some(0);
        b.vendor_class = Some(vc);
        let (offer, _) = common::dhcp::exchange(&sock, &build_request(&b), to);
        b.msg_type = msg::REQUEST;
        b.xid = 0x7002;
        b.requested_ip = Some(offer.yiaddr);
        b.server_id = Some(offer.siaddr);
        let (ack, _) = common::dhcp::exchange(&sock, &build_request(&b), to);
        (offer, ack)
    })
    .join()
    .unwrap()
}

/// A relay serving two segments (`[dhcp]` on br0 and `[[dhcp.segments]]` on br1, two bridges:
/// this kernel has no 802.1Q VLANs), each in full DHCP mode with its own range: a PXE client
/// on each gets an address of its own range, its segment's next-server and router. Then the
/// relay wakes each host on the segment where its DHCP saw it, and only there: a capture on
/// each segment sees its own host's packets (and, on br0, a third host's, woken after).
#[test]
fn a_relay_with_two_segments_answers_pxe_on_each_and_wakes_on_the_right_one() {
    const NAME: &str = "a_relay_with_two_segments_answers_pxe_on_each_and_wakes_on_the_right_one";
    if !can_capture(NAME) {
        return;
    }
    const C: &str = "52:54:00:99:07:0c";
    let central = Lab::new();
    fake_bootenv(&central);
    let toml = central.path("relay.toml");
    std::fs::write(
        &toml,
        "[dhcp]\ninterface = \"br0\"\nmode = \"full\"\nrange = \"10.99.0.100,10.99.0.150\"\n\
         [[dhcp.segments]]\ninterface = \"br1\"\nmode = \"full\"\nrange = \"10.99.1.100,10.99.1.150\"\nrouter = \"10.99.1.1\"\n",
    )
    .unwrap();
    let relay_args = [
        "--http",
        "0.0.0.0:8080",
        "--tftp",
        "0.0.0.0:69",
        "--config",
        toml.to_str().unwrap(),
    ];
    let (_c, site, server, relay) = relay_site("seg", 6, &central, (&[], &relay_args), |site| {
        site.sh(
            "ip link add br1 type bridge && ip link set br1 type bridge forward_delay 0 \
             && ip addr add 10.99.1.1/24 dev br1 && ip link set br1 up",
        )
    });
    let n0 = site.attach_to("br0", "seg0", "10.99.0.60/24", "fd99::60/64");
    let n1 = site.attach_to("br1", "seg1", "10.99.1.60/24", "fd99::61/64");
    assert!(
        relay.log_text().contains("DHCP on br0, DHCP on br1"),
        "{}",
        relay.log_text()
    );

    // PXE on each segment: its own range, next-server and router
    let in_range = |ip: std::net::Ipv4Addr, net: u8| {
        let o = ip.octets();
        o[..3] == [10, 99, net] && (100..=150).contains(&o[3])
    };
    for (ns, mac, net) in [(&n0, A, 0u8), (&n1, B, 1u8)] {
        let (offer, ack) = pxe_lease(ns, mac);
        let server_ip = std::net::Ipv4Addr::new(10, 99, net, 1);
        assert!(in_range(offer.yiaddr, net), "{mac}: {}", offer.yiaddr);
        assert_eq!(offer.siaddr, server_ip, "{mac}: next-server");
        assert_eq!(offer.file, b"undionly.kpxe", "{mac}");
        assert_eq!(ack.yiaddr, offer.yiaddr, "{mac}");
        if net == 1 {
            assert_eq!(ack.opt(3), Some(&[10, 99, 1, 1][..]), "{mac}: router");
        }
        common::say(&format!(
            "two segments: {mac} on br{net} leased {} from its own range, next-server {server_ip}",
            ack.yiaddr
        ));
        register_at(&site, URL, mac);
    }
    // C, seen on br0 too
    pxe_lease(&n0, C);
    register_at(&site, URL, C);

    // A and B: each on its own segment only
    let (p0, p1) = (central.path("seg0.pcap"), central.path("seg1.pcap"));
    let mut d0 = capture(&n0, &p0, 6);
    let mut d1 = capture(&n1, &p1, 3);
    central.json(&["host", "wake", A, B]);
    let logs = || format!("{}\n--- central:\n{}", relay.log_text(), server.log_text());
    wait_exit(&mut d1, "B's three packets on br1", logs);
    // then C (br0): br0's capture ends with A's three packets and C's, none of B's
    central.json(&["host", "wake", C]);
    wait_exit(&mut d0, "A's and C's packets on br0", logs);
    let on0: Vec<String> = magic_packets(&p0).into_iter().map(|p| p.3).collect();
    let on1: Vec<String> = magic_packets(&p1).into_iter().map(|p| p.3).collect();
    assert_eq!(on1, [B, B, B], "br1");
    assert_eq!(on0, [A, A, A, C, C, C], "br0");
    common::say("two segments: the relay woke A and C on br0 only, B on br1 only");
}

/// A weekly rule for a site's host, with the WAN link cut before its hour: the central server
/// made the run ahead (a task and a wake order timed for Monday 02:00 Paris, with the newest
/// version of the image the relay holds complete, not a newer one it lacks; then that newer
/// one once a push brought it to the site), the relay holds them in its site book, and at 02:00 on its clock it wakes the host and gives it the task
/// alone; not before. When the link is back, central has the wake event and the rule's run.
#[test]
fn a_relay_cut_off_before_the_hour_runs_its_rule_alone() {
    const NAME: &str = "a_relay_cut_off_before_the_hour_runs_its_rule_alone";
    if !can_capture(NAME) {
        return;
    }
    let utc = |s: &str| bootcast::time::parse_rfc3339(s).unwrap();
    let central = Lab::new();
    fake_bootenv(&central);
    let v1 = central.add(
        "demo",
        &central.file("v1.img", &common::random_bytes(300_000, 1)),
    )["version"]
        .as_str()
        .unwrap()
        .to_string();
    // Monday 4 January 2027, 01:00 in Paris
    let clock = central.path("clock");
    std::fs::write(&clock, utc("2027-01-04T00:00:00Z").to_string()).unwrap();
    let clock_arg = ["--clock-file", clock.to_str().unwrap()];
    let relay_args = [&common::netlab::VLAN_SERVICES[..], &clock_arg].concat();
    let (c, site, server, relay) =
        relay_site("off", 7, &central, (&clock_arg, &relay_args), |_| {});
    let relay_data = central.path("relay");
    let nic = site.attach("nic", "10.99.0.61/24", "fd99::62/64");
    common::region::push_and_wait(&central);
    // a newer version the site does not hold
    let v2 = central.add(
        "demo",
        &central.file("v2.img", &common::random_bytes(300_000, 2)),
    )["version"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(v1, v2);
    register_at(&site, URL, A);

    let rule = serde_json::json!({
        "kind": "reimage", "host": A, "image": "demo", "every": "0 2 * * 1", "tz": "Europe/Paris",
    });
    let (code, body) = common::http_in(
        Some(&c.name),
        "POST",
        "http://127.0.0.1:8080/api/v1/task-rules",
        server.token.as_deref(),
        Some(&rule.to_string()),
    );
    assert_eq!(code, 201, "{body}");
    // made ahead (within 30 s): the task for 02:00 with v1, and it reaches the relay's book
    let task = wait_for("the rule's run made ahead", 60, || {
        let t = central.json(&["task", "list", "--host", A]);
        t["tasks"].as_array().unwrap().first().cloned()
    });
    assert_eq!(
        task["version"],
        v1.as_str(),
        "the version the site holds: {task}"
    );
    assert_eq!(task["not_before"], "2027-01-04T01:00:00Z", "{task}");
    // v2 reaches the site before the hour: the run made ahead follows it
    common::region::push_and_wait(&central);
    wait_for("the run made ahead to follow v2", 60, || {
        let t = central.json(&["task", "list", "--host", A]);
        (t["tasks"][0]["version"] == v2.as_str()).then_some(())
    });
    let book = relay_data.join("relay/book.json");
    wait_for(
        "the task and the wake order in the relay's book",
        60,
        || {
            let b: serde_json::Value = serde_json::from_slice(&std::fs::read(&book).ok()?).ok()?;
            let kept = relay_data.join("relay/files/bootenv/initrd.img").is_file();
            (kept
                && b.to_string().contains(&format!("\"id\":{}", task["id"]))
                && b.to_string().contains(&v2)
                && b["wakes"].as_array().is_some_and(|w| !w.is_empty()))
            .then_some(())
        },
    );

    // the WAN link goes down; at 01:00 the relay gives A no task yet
    c.sh("ip link set s1 down");
    let script = |label: &str| {
        let (code, s) = common::http_in(
            Some(&site.name),
            "GET",
            &format!("{URL}/boot/{A}.ipxe"),
            None,
            None,
        );
        assert_eq!(code, 200, "{label}: {s}");
        s
    };
    assert!(
        !script("01:00").contains("bootcast.task="),
        "a task before its hour"
    );
    // 01:59:55: the relay wakes A at 02:00, alone
    let pcap = central.path("offline.pcap");
    let mut dump = capture(&nic, &pcap, 3);
    std::fs::write(&clock, utc("2027-01-04T00:59:55Z").to_string()).unwrap();
    wait_exit(&mut dump, "the relay's packets for A at 02:00", || {
        relay.log_text()
    });
    assert!(magic_packets(&pcap).iter().all(|p| p.3 == A));
    let s = script("02:00");
    assert!(
        s.contains(&format!("bootcast.task={}", task["id"])),
        "the relay alone does not give A its task at 02:00: {s}"
    );
    common::say(&format!(
        "offline rule: made ahead with {} (held at the site; {} was newer), moved to {} once pushed; the relay woke A at 02:00 and gave it task {} with its WAN link down",
        &v1[..12],
        &v2[..12],
        &v2[..12],
        task["id"]
    ));

    // the link is back: central has the wake (by the site) and the rule's run
    c.sh("ip link set s1 up");
    wait_for("central's wake event", 120, || {
        let e = central.json(&["events", "--kind", "wake", "--host", A]);
        (e["events"][0]["data"]["by"] == "lycee").then_some(())
    });
    // (central's calendar looks every 30 s)
    let list = wait_for("the rule's run at central", 60, || {
        let l = central.json(&["task", "rule", "list"]);
        l["rules"][0]["last_outcome"].is_string().then_some(l)
    });
    let r = &list["rules"][0];
    assert!(
        r["last_outcome"]
            .as_str()
            .is_some_and(|o| o.contains("made ahead")),
        "{list}"
    );
    assert_eq!(r["next_run"], "2027-01-11T01:00:00Z", "{list}");
}

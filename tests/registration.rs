//! Zero-touch registration and identity, in-process through the real HTTP hello: a new
//! machine matching a registration rule gets its room, its name and a reimage task with no
//! staff command (and the hello tells it to reboot into the task); a rule asking approval
//! waits for `host approve`; the same machine with another NIC (same SMBIOS UUID) stays one
//! host; a retired NIC booting again is an identity conflict; `host replace` and `host broken`
//! move a host's place to a new machine; bad rules are refused with the fix.

mod common;

use serde_json::{json, Value};

use common::netlab::Netns;
use common::{api, boot_script, credential_of, fake_bootenv, InProcess, Lab};

/// A network boot and the agent's hello with an SMBIOS identity: the hello's answer.
fn hello(s: &InProcess, mac: &str, uuid: &str, model: &str, serial: &str) -> Value {
    let script = boot_script(s, mac);
    let smbios = json!({"smbios": {"uuid": uuid, "vendor": "Intel(R) Client Systems", "model": model, "serial": serial}});
    let (code, body) = common::hello_with(s, mac, &credential_of(&script), smbios);
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn host(lab: &Lab, mac: &str) -> Value {
    lab.json(&["host", "show", mac])
}

fn open_tasks(lab: &Lab, mac: &str) -> Vec<Value> {
    lab.json(&["task", "list", "--host", mac])["tasks"]
        .as_array()
        .unwrap()
        .clone()
}

/// Waits until the events of `mac` hold one of `kind` (events are recorded off the request).
fn event(lab: &Lab, mac: &str, kind: &str) -> Value {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let ev = lab.json(&["events", "--host", mac, "--limit", "100"]);
        if let Some(e) = ev["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["kind"] == kind)
        {
            return e.clone();
        }
        assert!(std::time::Instant::now() < end, "no {kind} event: {ev}");
        std::thread::yield_now();
    }
}

const U1: &str = "6f1c2b3a-1111-4000-8000-0000000000c1";
const U2: &str = "6f1c2b3a-2222-4000-8000-0000000000c2";
const U3: &str = "6f1c2b3a-3333-4000-8000-0000000000c3";

#[test]
fn new_machines_get_their_room_name_and_image_and_keep_one_identity() {
    let lab = Lab::new();
    fake_bootenv(&lab);
    lab.add(
        "demo",
        &lab.file("demo.img", &common::random_bytes(200_000, 7)),
    );
    let s = InProcess::start(&lab);

    // the rule: NUCs on the server's subnet join r1, are named r1-pcNN and get demo
    let r = lab.json(&[
        "host",
        "rule",
        "add",
        "--subnet",
        "127.0.0.0/8",
        "--model",
        "NUC11*",
        "--group",
        "r1",
        "--name",
        "r1-pc{n}",
        "--image",
        "demo",
        "--then",
        "poweroff",
    ]);
    assert_eq!(r["rule"]["id"], 1, "{r}");
    // an OptiPlex matches nothing: it only registers
    let (a, b, c, d) = (
        "52:54:00:00:20:0a",
        "52:54:00:00:20:0b",
        "52:54:00:00:20:0c",
        "52:54:00:00:20:0d",
    );
    let other = hello(&s, d, U3, "OptiPlex 7090", "X1");
    assert_ne!(other["action"], "reimage", "{other}");
    assert!(host(&lab, d)["host"]["name"].is_null());

    // a new NUC: room, name and task at once; the hello sends it to reboot into the task
    let answer = hello(&s, a, U1, "NUC11TNHi5", "G6AB1001");
    assert_eq!(answer["action"], "reboot", "{answer}");
    let h = host(&lab, a);
    assert_eq!(h["host"]["name"], "r1-pc01", "{h}");
    assert_eq!(h["host"]["model"], "NUC11TNHi5", "{h}");
    assert_eq!(h["host"]["smbios_uuid"], U1, "{h}");
    assert_eq!(h["groups"], json!(["r1"]), "{h}");
    let t = open_tasks(&lab, a);
    assert_eq!(t.len(), 1, "{t:?}");
    assert_eq!(t[0]["image"], "demo");
    let reg = event(&lab, a, "registered");
    assert_eq!(reg["data"]["rule"], 1, "{reg}");
    // its next boot script runs the task
    assert!(boot_script(&s, a).contains(&format!("bootcast.task={}", t[0]["id"])));

    // the same machine with a new NIC (same UUID): one host, name and room kept; its open task
    // stays on the old MAC (SMBIOS values can be forged: no image follows them)
    let answer = hello(&s, b, U1, "NUC11TNHi5", "G6AB1001");
    assert_ne!(answer["action"], "reimage", "{answer}");
    let hb = host(&lab, b);
    assert_eq!(hb["host"]["name"], "r1-pc01", "{hb}");
    assert_eq!(hb["groups"], json!(["r1"]), "{hb}");
    assert!(open_tasks(&lab, b).is_empty());
    assert_eq!(open_tasks(&lab, a)[0]["id"], t[0]["id"]);
    let ha = host(&lab, a);
    assert_eq!(ha["host"]["replaced_by"], b, "{ha}");
    let listed = lab.json(&["host", "list"]);
    let macs: Vec<&str> = listed["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["mac"].as_str().unwrap())
        .collect();
    assert_eq!(macs, [b, d], "{listed}");
    assert_eq!(
        lab.json(&["host", "list", "--all"])["hosts"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    let moved = event(&lab, b, "host_replaced");
    assert_eq!(moved["data"]["old"], a, "{moved}");
    assert_eq!(moved["data"]["moved"]["tasks_moved"], false, "{moved}");
    // a known machine (it has a task, so its agent runs) reports b's UUID: cloned firmware,
    // a conflict; nothing is merged
    let e = "52:54:00:00:20:0e";
    hello(
        &s,
        e,
        "6f1c2b3a-4444-4000-8000-0000000000c4",
        "OptiPlex 7090",
        "X2",
    );
    lab.json(&["task", "reimage", "--host", e, "--image", "demo"]);
    hello(&s, e, U1, "OptiPlex 7090", "X2");
    let conflict = event(&lab, e, "identity_conflict");
    assert_eq!(conflict["data"]["others"], json!([b]), "{conflict}");
    assert_eq!(host(&lab, b)["host"]["name"], "r1-pc01");
    assert!(host(&lab, e)["host"]["retired_at"].is_null());
    assert!(host(&lab, b)["host"]["retired_at"].is_null());

    // a rule that asks approval first (API): the machine joins r2, no task until approved
    lab.json(&["host", "rule", "rm", "1"]);
    let (code, body) = api(
        &s,
        "POST",
        "/api/v1/registration-rules",
        Some(
            json!({"model": "NUC11*", "group": "r2", "name": "r2-pc{n}", "image": "demo", "approval": true}),
        ),
    );
    assert_eq!(code, 201, "{body}");
    hello(&s, c, U2, "NUC11TNHi5", "G6AB1002");
    let hc = host(&lab, c);
    assert_eq!(hc["host"]["name"], "r2-pc01", "{hc}");
    assert_eq!(hc["host"]["pending_rule"], body["rule"]["id"], "{hc}");
    assert!(open_tasks(&lab, c).is_empty());
    let (code, ok) = api(&s, "POST", &format!("/api/v1/hosts/{c}/approve"), None);
    assert_eq!(code, 200, "{ok}");
    assert_eq!(open_tasks(&lab, c)[0]["id"], ok["task"]);
    assert!(host(&lab, c)["host"]["pending_rule"].is_null());
    let (code, _) = api(&s, "POST", &format!("/api/v1/hosts/{c}/approve"), None);
    assert_eq!(code, 400, "nothing left to approve");

    // host replace: d (the OptiPlex) takes r2-pc01's place and its open task
    let r = lab.json(&["host", "replace", c, d]);
    assert_eq!(r["moved"]["name"], "r2-pc01", "{r}");
    assert_eq!(host(&lab, d)["host"]["name"], "r2-pc01");
    assert_eq!(host(&lab, d)["groups"], json!(["r2"]));
    assert_eq!(open_tasks(&lab, d).len(), 1);
    let (code, body) = api(
        &s,
        "POST",
        &format!("/api/v1/hosts/{d}/replace"),
        Some(json!({"new": "52:54:00:00:20:ff"})),
    );
    assert_eq!(code, 404, "{body}");
    let err = common::stderr(&lab.run(&["host", "replace", c, d]));
    assert!(err.contains("retired"), "{err}");

    // bad rules, refused with the fix
    for (args, want) in [
        (&["--subnet", "10.1.0.0/40"][..], "not a subnet"),
        (&["--name", "pc {n}"][..], "host name pattern"),
        (&["--replace-broken"][..], "--group"),
        (&["--approval"][..], "--image"),
    ] {
        let mut all = vec!["host", "rule", "add"];
        all.extend(args);
        let out = lab.run(&all);
        assert!(!out.status.success(), "{all:?}");
        let err = common::stderr(&out);
        assert!(err.contains(want), "{all:?}: {err}");
    }
}

/// A room's host marked broken: the new machine that boots in the room under a
/// --replace-broken rule takes its name and groups; the broken one is retired.
#[test]
fn a_new_machine_takes_the_place_of_its_rooms_broken_host() {
    let lab = Lab::new();
    fake_bootenv(&lab);
    let s = InProcess::start(&lab);
    let (old, new) = ("52:54:00:00:21:0a", "52:54:00:00:21:0b");
    hello(&s, old, U1, "NUC11TNHi5", "S1");
    lab.json(&["host", "name", old, "r3-pc07"]);
    lab.json(&["group", "add", "r3", old]);
    lab.json(&[
        "host",
        "rule",
        "add",
        "--subnet",
        "127.0.0.0/8",
        "--group",
        "r3",
        "--replace-broken",
    ]);
    lab.json(&["host", "broken", old]);
    hello(&s, new, U2, "NUC11TNHi5", "S2");
    let h = host(&lab, new);
    assert_eq!(h["host"]["name"], "r3-pc07", "{h}");
    assert_eq!(h["groups"], json!(["r3"]), "{h}");
    let o = host(&lab, old);
    assert_eq!(o["host"]["replaced_by"], new, "{o}");
    assert!(o["host"]["broken_at"].is_null(), "{o}");
    let ev = event(&lab, new, "host_replaced");
    assert_eq!(ev["data"]["why"], "broken host of the room", "{ev}");
}

/// curl from `ns`, from local address `ip`: (status, body).
fn curl_from(ns: &Netns, ip: &str, method: &str, url: &str, body: Option<&str>) -> (u16, String) {
    let mut c = ns.cmd("curl");
    c.args([
        "-sS",
        "--interface",
        ip,
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "-X",
        method,
        url,
    ]);
    if let Some(b) = body {
        c.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    let out = c.output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').expect("curl printed a status");
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// A machine behind a switch whose DHCP relay agent adds option 82: `bootcast serve` (full
/// DHCP, in a network namespace) records the circuit id with the address it acknowledged; the
/// machine's boot script request records it on the host, and the registration rule for that
/// switch's ports names it and puts it in its room. Needs root; prints SKIP without.
#[test]
fn the_switch_port_of_dhcp_option_82_picks_the_registration_rule() {
    const NAME: &str = "the_switch_port_of_dhcp_option_82_picks_the_registration_rule";
    if !common::is_root() {
        common::skip(NAME, "needs root (network namespaces)");
        return;
    }
    use bootcast::boot::dhcp::codec::{build_request, msg, RequestBuilder};
    use std::net::{Ipv4Addr, SocketAddrV4};
    let lab = Lab::new();
    fake_bootenv(&lab);
    let ns = Netns::new("o82");
    ns.bridge_with_tap();
    let _server = common::netlab::serve_full(&ns, &lab);
    lab.json(&[
        "host",
        "rule",
        "add",
        "--circuit",
        "Gi1/0/*",
        "--group",
        "r7",
        "--name",
        "r7-pc{n}",
    ]);
    // the switch's relay agent, on the segment at 10.99.0.70
    let sw = ns.attach("o82sw", "10.99.0.70/24", "fd99::70/64");
    let mac = "52:54:00:99:0f:01";
    let m: bootcast::mac::Mac = mac.parse().unwrap();
    let name = sw.name.clone();
    let ip = std::thread::spawn(move || {
        common::dhcp::enter(&name);
        let sock =
            common::dhcp::socket_on(None, SocketAddrV4::new(Ipv4Addr::new(10, 99, 0, 70), 67));
        let ri = [1u8, 7, b'G', b'i', b'1', b'/', b'0', b'/', b'7'];
        let server = SocketAddrV4::new(Ipv4Addr::new(10, 99, 0, 1), 67);
        let mut b = RequestBuilder::discover(0x8201, m);
        b.giaddr = Ipv4Addr::new(10, 99, 0, 70);
        b.relay_info = Some(&ri);
        let (offer, _) = common::dhcp::exchange(&sock, &build_request(&b), server);
        b.msg_type = msg::REQUEST;
        b.xid = 0x8202;
        b.requested_ip = Some(offer.yiaddr);
        b.server_id = Some(Ipv4Addr::new(10, 99, 0, 1));
        let (ack, _) = common::dhcp::exchange(&sock, &build_request(&b), server);
        assert_eq!(ack.msg_type(), Some(msg::ACK));
        assert_eq!(ack.opt(82), Some(&ri[..]), "option 82 echoed");
        ack.yiaddr
    })
    .join()
    .unwrap();
    // the machine at that address: its boot script and its agent's hello
    sw.sh(&format!("ip addr add {ip}/24 dev eth0"));
    let ip = ip.to_string();
    let (code, script) = curl_from(
        &sw,
        &ip,
        "GET",
        &format!("http://10.99.0.1:8080/boot/{mac}.ipxe"),
        None,
    );
    assert_eq!(code, 200, "{script}");
    let hello = json!({
        "protocol": bootcast::proto::agent::AGENT_PROTOCOL, "mac": mac, "arch": "x86_64",
        "firmware": "bios", "boot_time": 1_700_000_000u64, "credential": credential_of(&script),
    });
    let (code, body) = curl_from(
        &sw,
        &ip,
        "POST",
        "http://10.99.0.1:8080/api/v1/agent/hello",
        Some(&hello.to_string()),
    );
    assert_eq!(code, 200, "{body}");
    let h = host(&lab, mac);
    assert_eq!(h["host"]["circuit"], "Gi1/0/7", "{h}");
    assert_eq!(h["host"]["name"], "r7-pc01", "{h}");
    assert_eq!(h["groups"], json!(["r7"]), "{h}");
    common::say("registration: the machine behind switch port Gi1/0/7 (DHCP option 82) got room r7 and the name r7-pc01");
}

/// `GET /api/v1/hosts` answers pages in MAC order with the total and the next page's link:
/// 250 hosts in pages of 100 are each listed once; a group filter and a text search count and
/// page the same way; a bad cursor is refused.
#[test]
fn the_host_list_is_paged_filtered_and_counted() {
    let lab = Lab::new();
    fake_bootenv(&lab);
    let s = InProcess::start(&lab);
    let macs: Vec<String> = (0..250u32)
        .map(|i| format!("52:54:00:98:{:02x}:{:02x}", i / 256, i % 256))
        .collect();
    for m in &macs {
        boot_script(&s, m);
    }
    lab.json(&["host", "name", &macs[7], "Labo-PC07"]);
    let room: Vec<&str> = macs[100..130].iter().map(String::as_str).collect();
    lab.json(&[&["group", "add", "r9"][..], &room].concat());

    // no parameters: the first page and a link to the next
    let (code, first) = api(&s, "GET", "/api/v1/hosts", None);
    assert_eq!(code, 200, "{first}");
    assert_eq!(first["total"], 250);
    assert_eq!(first["hosts"].as_array().unwrap().len(), 100);
    let mut seen = Vec::new();
    let mut page = first;
    loop {
        seen.extend(
            page["hosts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h["mac"].as_str().unwrap().to_string()),
        );
        let Some(next) = page["next"].as_str() else {
            break;
        };
        let (code, p) = api(&s, "GET", next, None);
        assert_eq!(code, 200, "{p}");
        assert_eq!(p["total"], 250);
        page = p;
    }
    assert_eq!(seen, macs, "every host once, in MAC order");

    // a group, in pages of 25
    let (_, g) = api(&s, "GET", "/api/v1/hosts?group=r9&limit=25", None);
    assert_eq!(g["total"], 30, "{g}");
    assert_eq!(g["hosts"].as_array().unwrap().len(), 25);
    assert_eq!(g["hosts"][0]["mac"], macs[100].as_str());
    let next = g["next"].as_str().unwrap();
    assert!(
        next.contains("group=r9") && next.contains("limit=25"),
        "{next}"
    );
    let (_, g2) = api(&s, "GET", next, None);
    assert_eq!(g2["hosts"].as_array().unwrap().len(), 5);
    assert!(g2["next"].is_null());
    // text: a name (any case), a MAC fragment; a '%' matches only itself
    let (_, t) = api(&s, "GET", "/api/v1/hosts?q=labo-pc", None);
    assert_eq!(t["total"], 1, "{t}");
    assert_eq!(t["hosts"][0]["mac"], macs[7].as_str());
    let (_, t) = api(&s, "GET", "/api/v1/hosts?q=98:00:0", None);
    assert_eq!(t["total"], 16, "{t}");
    let (_, t) = api(&s, "GET", "/api/v1/hosts?q=%25", None);
    assert_eq!(t["total"], 0, "{t}");
    let (code, e) = api(&s, "GET", "/api/v1/hosts?after=nonsense", None);
    assert_eq!(code, 400, "{e}");
}

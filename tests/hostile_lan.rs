//! An attacker on the site's LAN segment (its own network namespace and address, plugged into
//! the same bridge as the PC) against `bootcast serve` running full DHCP there: while the PC
//! has an open capture task, the attacker fetches the PC's boot script and tries every agent
//! call for the PC's MAC (hello, capture upload and commit, progress, done, failed, inventory,
//! manifests and chunks), with nothing, with made-up secrets, with forged relay headers, and
//! with the PC's real credential once it has seen it. Every call is refused, nothing is stored
//! and no task moves. The PC (its own namespace, its address from bootcast's DHCP) then captures
//! normally; the capture is not `latest` and no push takes it until staff approve it.
//! Needs root; prints SKIP without.

mod common;

use std::path::Path;

use serde_json::{json, Value};

use common::netlab::{serve_full, Netns};
use common::{credential_of, disk_like, fake_agent_root, fake_bootenv, http_in, task_of, Lab, BIN};

const PC: &str = "52:54:00:99:15:01";
const URL: &str = "http://10.99.0.1:8080";

/// The address bootcast's DHCP service gives `ns`'s `eth0` (busybox udhcpc, one exchange).
fn dhcp(ns: &Netns, dir: &Path) -> String {
    let script = dir.join("udhcpc.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\n[ \"$1\" = bound ] && ip addr add \"$ip/24\" dev \"$interface\" && echo \"BOUND $ip\"\nexit 0\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    ns.sh("ip -4 addr flush dev eth0");
    let out = ns
        .cmd("busybox")
        .args(["udhcpc", "-i", "eth0", "-n", "-q", "-f", "-t", "5", "-s"])
        .arg(&script)
        .output()
        .expect("busybox udhcpc (Debian package busybox-static)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.lines()
        .find_map(|l| l.strip_prefix("BOUND "))
        .unwrap_or_else(|| panic!("no DHCP lease: {text}{}", common::stderr(&out)))
        .trim()
        .to_string()
}

/// The PC's network boot: its DHCP exchange with bootcast, then its own boot script, from its
/// own address: (address, script).
fn pc_boot(pc: &Netns, dir: &Path) -> (String, String) {
    let ip = dhcp(pc, dir);
    let (code, script) = http_in(
        Some(&pc.name),
        "GET",
        &format!("{URL}/boot/{PC}.ipxe"),
        None,
        None,
    );
    assert_eq!(code, 200, "{script}");
    (ip, script)
}

/// A request from inside `ns` with extra headers: (status, body).
fn call(
    ns: &Netns,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, String) {
    let mut c = ns.cmd("curl");
    c.args(["-sS", "-o", "-", "-w", "\n%{http_code}", "-X", method])
        .arg(format!("{URL}{path}"));
    for (k, v) in headers {
        c.arg("-H").arg(format!("{k}: {v}"));
    }
    if let Some(b) = body {
        c.args(["-H", "content-type: application/json", "--data-binary", b]);
    }
    let out = c.output().expect("curl (Debian package curl)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').expect("curl printed a status");
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn task_state(lab: &Lab) -> Value {
    lab.json(&["task", "list", "--all", "--host", PC])["tasks"][0].clone()
}

#[test]
fn an_attacker_on_the_lan_cannot_act_for_a_pc_and_the_pc_still_captures() {
    if !common::is_root() {
        common::skip(
            "an_attacker_on_the_lan_cannot_act_for_a_pc_and_the_pc_still_captures",
            "needs root (network namespaces)",
        );
        return;
    }
    let lab = Lab::new();
    fake_bootenv(&lab);
    let site = Netns::new("hostile");
    site.bridge_with_tap();
    let server = serve_full(&site, &lab);
    let pc = site.attach("pc", "10.99.0.250/24", "fd99::250/64");
    pc.sh(&format!(
        "ip link set eth0 down && ip link set eth0 address {PC} && ip link set eth0 up"
    ));
    let attacker = site.attach("atk", "10.99.0.66/24", "fd99::66/64");

    // the PC's first boot registers it (its address from bootcast's DHCP)
    let (pc_ip, script) = pc_boot(&pc, lab.dir.path());
    let hello = json!({"protocol": bootcast::proto::agent::AGENT_PROTOCOL, "mac": PC, "arch": "x86_64", "firmware": "uefi", "boot_time": 1, "credential": credential_of(&script)});
    let (code, answer) = call(
        &pc,
        "POST",
        "/api/v1/agent/hello",
        &[],
        Some(&hello.to_string()),
    );
    assert_eq!(code, 200, "{answer}");
    lab.json(&["task", "capture", "--host", PC, "--image", "master"]);
    let before = lab.json(&["host", "show", PC]);
    assert_eq!(before["host"]["last_ip"], pc_ip.as_str(), "{before}");
    let pending = task_state(&lab);
    assert_eq!(pending["state"], "pending", "{pending}");
    let task = pending["id"].as_i64().unwrap().to_string();

    // the attacker asks for the PC's boot script: no credential, nothing recorded, no task moved
    let (code, got) = call(&attacker, "GET", &format!("/boot/{PC}.ipxe"), &[], None);
    assert_eq!(code, 200, "{got}");
    assert!(!got.contains("bootcast.credential="), "{got}");
    assert!(got.contains("only to the address"), "{got}");
    // forged relay headers (a made-up token claiming the PC's address) change nothing
    let forged = [
        ("x-bootcast-relay-token", "made-up"),
        ("x-bootcast-relay-url", "http://10.99.0.66:8080"),
        ("x-forwarded-for", pc_ip.as_str()),
        ("x-bootcast-dhcp-seen", "10.99.0.66"),
    ];
    let (_, got) = call(&attacker, "GET", &format!("/boot/{PC}.ipxe"), &forged, None);
    assert!(!got.contains("bootcast.credential="), "{got}");
    assert_eq!(task_state(&lab)["state"], "pending");

    // every agent call for the PC's MAC, with nothing or made-up secrets: refused
    let made_up = "0123456789abcdef0123456789abcdef";
    let refused = |what: &str, (code, body): (u16, String)| {
        assert!(
            code == 403 || code == 401,
            "the attacker's {what} was not refused: {code} {body}"
        );
    };
    for cred in [None, Some(made_up)] {
        let mut h = json!({"protocol": bootcast::proto::agent::AGENT_PROTOCOL, "mac": PC, "arch": "x86_64", "firmware": "uefi", "boot_time": 1, "task": task.parse::<i64>().unwrap()});
        if let Some(c) = cred {
            h["credential"] = c.into();
        }
        refused(
            "hello",
            call(
                &attacker,
                "POST",
                "/api/v1/agent/hello",
                &[],
                Some(&h.to_string()),
            ),
        );
        refused(
            "hello with forged relay headers",
            call(
                &attacker,
                "POST",
                "/api/v1/agent/hello",
                &forged,
                Some(&h.to_string()),
            ),
        );
    }
    let t: i64 = task.parse().unwrap();
    for (path, body) in [
        (
            "progress",
            json!({"mac": PC, "session": made_up, "task": t, "bytes_done": 1, "bytes_total": 2, "rate": 1}),
        ),
        ("done", json!({"mac": PC, "session": made_up, "task": t})),
        (
            "failed",
            json!({"mac": PC, "session": made_up, "task": t, "reason": "forged"}),
        ),
        (
            "inventory",
            json!({"mac": PC, "session": made_up, "inventory": {"mac": PC}}),
        ),
    ] {
        let (code, answer) = call(
            &attacker,
            "POST",
            &format!("/api/v1/agent/{path}"),
            &[],
            Some(&body.to_string()),
        );
        // the inventory's body is refused by its shape (422) or its session (403); neither stores
        assert!(
            matches!(code, 401 | 403 | 422),
            "the attacker's {path}: {code} {answer}"
        );
    }
    let capture_headers = [
        ("x-bootcast-mac", PC),
        ("x-bootcast-session", made_up),
        ("x-bootcast-task", task.as_str()),
    ];
    for endpoint in ["missing", "chunks", "commit"] {
        refused(
            endpoint,
            call(
                &attacker,
                "POST",
                &format!("/api/v1/agent/capture/{endpoint}"),
                &capture_headers,
                Some("{\"ids\":[]}"),
            ),
        );
    }
    for path in [
        "/api/v1/images/master/latest/manifest",
        &format!("/chunks/{}", "ab".repeat(32)),
    ] {
        refused(path, call(&attacker, "GET", path, &capture_headers, None));
        refused(path, call(&attacker, "GET", path, &forged, None));
    }

    // the PC boots for its task: its own script carries the credential...
    let (pc_ip, script) = pc_boot(&pc, lab.dir.path());
    assert_eq!(task_of(&script), task);
    let credential = credential_of(&script);
    // ...which is worth nothing from another address, even to an attacker who saw it
    let stolen = json!({"protocol": bootcast::proto::agent::AGENT_PROTOCOL, "mac": PC, "arch": "x86_64", "firmware": "uefi", "boot_time": 1, "task": t, "credential": credential});
    refused(
        "hello with the PC's own credential",
        call(
            &attacker,
            "POST",
            "/api/v1/agent/hello",
            &[],
            Some(&stolen.to_string()),
        ),
    );

    // nothing the attacker did was stored or changed
    let after = lab.json(&["host", "show", PC]);
    assert_eq!(after["host"]["last_ip"], pc_ip.as_str(), "{after}");
    assert_eq!(
        after["host"]["boots"].as_i64().unwrap(),
        before["host"]["boots"].as_i64().unwrap() + 1,
        "only the PC's own boot script was recorded: {after}"
    );
    assert_eq!(task_state(&lab)["state"], "booting");
    let inventories = lab.json(&["inventory", "history", "--host", PC]);
    assert_eq!(
        inventories["history"],
        json!([]),
        "an inventory was stored for the attacker"
    );
    assert!(
        !lab.data().join("images/master").exists(),
        "a version was committed"
    );

    // the real PC captures normally, from its own namespace and address
    let disk = lab.file("disk.raw", &disk_like(6 << 20, 151));
    let root = lab.path("pc-root");
    fake_agent_root(
        &root,
        PC,
        &format!("console=ttyS0 bootcast.server={URL} bootcast.mac={PC} bootcast.task={task} bootcast.credential={credential} bootcast.disk={}", disk.display()),
    );
    let out = pc
        .cmd(BIN)
        .args(["agent", "boot", "--no-act", "--tries", "2", "--root"])
        .arg(&root)
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        log.contains(&format!("BOOTCAST-AGENT-CAPTURE-DONE {PC}")),
        "{log}\n--- server:\n{}",
        server.log_text()
    );
    assert_eq!(task_state(&lab)["state"], "done");

    // the capture awaits approval: not latest, no push takes it
    let shown = lab.json(&["image", "show", "master"]);
    assert_eq!(shown[0]["approved"], false, "{shown}");
    let out = lab.run(&[
        "image",
        "export",
        "master",
        lab.path("x.img").to_str().unwrap(),
    ]);
    assert!(
        !out.status.success(),
        "latest of an unapproved capture exported"
    );
    lab.json(&["site", "add", "nord", "--subnets", "10.98.0.0/16"]);
    let out = lab.run(&["push", "create", "--image", "master", "--sites", "nord"]);
    let err = common::stderr(&out);
    assert!(!out.status.success() && err.contains("approve"), "{err}");
    let version = shown[0]["version"].as_str().unwrap().to_string();
    lab.json(&["image", "approve", &format!("master@{version}")]);
    let shown = lab.json(&["image", "show", "master@latest"]);
    assert_eq!(shown["version"], version.as_str(), "{shown}");
    common::say(&format!(
        "hostile LAN: the attacker at 10.99.0.66 was refused every call for {PC}; the PC at {pc_ip} captured {}",
        &version[..12]
    ));
    drop(attacker);
    drop(pc);
}

//! Inventories, events and hooks over loopback: a fake agent (hello, then its inventory with
//! the boot's session) against `bootcast serve` configured with a webhook (its signature checked
//! here), a command hook (the event JSON on its stdin), a hook that never ends (killed at its
//! timeout while the boot goes on) and GLPI forwarding to a local stand-in.
//! The VM test (real SMBIOS values through the agent) is tests/inventory_vm.rs.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;

use serde_json::{json, Value};

use common::{boot_script, credential_of, fake_bootenv, http, wait_for, InProcess, Lab};

/// One HTTP request as received: headers (lower-case names) and body.
struct Request {
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A minimal HTTP server on loopback answering every request with 200, handing each request
/// to the channel.
fn receiver() -> (String, mpsc::Receiver<Request>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { break };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            if r.read_line(&mut line).is_err() {
                continue;
            }
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let mut headers = Vec::new();
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                    break;
                }
                if let Some((n, v)) = h.split_once(':') {
                    headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
                }
            }
            let len = headers
                .iter()
                .find(|(n, _)| n == "content-length")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; len];
            let _ = r.read_exact(&mut body);
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            if tx
                .send(Request {
                    path,
                    headers,
                    body,
                })
                .is_err()
            {
                break;
            }
        }
    });
    (url, rx)
}

fn inventory(mac: &str, disk_bytes: u64) -> Value {
    json!({
        "collected_at": 1_763_900_000,
        "mac": mac,
        "system": {"vendor": "Lab", "model": "NUC-T", "serial": "SN-1", "uuid": "4c4c4544-0000-1000-8000-000000000001"},
        "firmware": {"vendor": "SeaBIOS", "version": "1.16", "date": "04/01/2014", "mode": "bios"},
        "memory": [{"slot": "DIMM 0", "size_mib": 512, "kind": "RAM"}],
        "storage": [{"name": "vda", "size_bytes": disk_bytes, "kind": "hdd"}],
        "network": [{"name": "eth0", "mac": mac, "driver": "virtio_net", "link": true}],
    })
}

#[test]
fn inventories_make_events_that_run_hooks_without_holding_the_boot() {
    let lab = Lab::new();
    fake_bootenv(&lab);
    let (hook_url, webhooks) = receiver();
    let (glpi_url, glpi) = receiver();
    let stdin_copy = lab.path("hook-stdin.json");
    let config = lab.file(
        "bootcast.toml",
        format!(
            r#"
[glpi]
url = "{glpi_url}/front/inventory.php"

[[hooks]]
name = "stdin"
on = "inventory_changed"
command = ["sh", "-c", "cat > {stdin}.tmp && mv {stdin}.tmp {stdin}"]

[[hooks]]
name = "never-ends"
on = ["boot", "inventory_changed"]
command = ["sleep", "1000"]
timeout = 1

[[hooks]]
name = "signed"
on = ["inventory", "inventory_changed"]
webhook = "{hook_url}/hook"
secret = "s3cret"
"#,
            stdin = stdin_copy.display()
        )
        .as_bytes(),
    );
    let toml = std::fs::read_to_string(&config).unwrap();
    let server = InProcess::start_with(&lab.data(), &format!("{toml}\n[tftp]\nlisten = \"off\"\n"));
    let mac = "52:54:00:99:08:01";
    let script = boot_script(&server, mac);
    let (code, body) = common::hello(&server, mac, &credential_of(&script), None);
    assert_eq!(code, 200, "{body}");
    let session = common::session_of(&body);
    let post = |inv: Value, session: &str| {
        http(
            "POST",
            &format!("{}/api/v1/agent/inventory", server.url),
            None,
            Some(&json!({"mac": mac, "session": session, "inventory": inv}).to_string()),
        )
    };
    // a wrong session (or the credential, which is no session) is refused and stores nothing
    let (code, _) = post(inventory(mac, 96 << 20), "not-the-session");
    assert_eq!(code, 403);
    let (code, _) = post(inventory(mac, 96 << 20), &credential_of(&script));
    assert_eq!(code, 403);
    // the first inventory: a new machine (the hanging hook runs meanwhile: the answer comes)
    let (code, body) = post(inventory(mac, 96 << 20), &session);
    assert_eq!(code, 200, "{body}");
    let ack: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ack["changes"], json!(["new_machine"]));

    // the webhook: signed with HMAC-SHA256 of the body
    let check = |r: &Request| {
        let sig = r.header("x-bootcast-signature").expect("signature header");
        assert_eq!(
            sig,
            bootcast::hooks::signature(b"s3cret", &r.body),
            "signature"
        );
        serde_json::from_slice::<Value>(&r.body).unwrap()
    };
    let mut got: Vec<Value> = (0..2)
        .map(|_| {
            let r = webhooks
                .recv_timeout(std::time::Duration::from_secs(60))
                .unwrap();
            assert_eq!(r.path, "/hook");
            check(&r)
        })
        .collect();
    got.sort_by_key(|v| v["event"].as_str().unwrap().to_string());
    assert_eq!(got[0]["event"], "inventory");
    assert_eq!(got[1]["event"], "inventory_changed");
    assert_eq!(got[1]["host"], mac);
    assert_eq!(got[1]["data"]["changes"][0]["what"], "new_machine");

    // the command hook got the same event on stdin
    let stdin: Value = wait_for("the command hook's copy of its stdin", 60, || {
        std::fs::read(&stdin_copy)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    });
    assert_eq!(stdin["event"], "inventory_changed");
    assert_eq!(stdin["data"]["disks"][0]["size_bytes"], 96u64 << 20);

    // GLPI got the native inventory with the agent id header
    let g = glpi
        .recv_timeout(std::time::Duration::from_secs(60))
        .unwrap();
    assert_eq!(g.path, "/front/inventory.php");
    assert!(g.header("glpi-agent-id").is_some_and(|v| v.len() == 36));
    let native: Value = serde_json::from_slice(&g.body).unwrap();
    assert!(native["deviceid"]
        .as_str()
        .unwrap()
        .ends_with("-2000-01-01-00-00-00"));

    // the same machine again: no change; then a bigger disk: inventory_changed (disk)
    let (_, body) = post(inventory(mac, 96 << 20), &session);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["changes"],
        json!([])
    );
    let (_, body) = post(inventory(mac, 128 << 20), &session);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["changes"],
        json!(["disk"])
    );
    let changed = lab.json(&["events", "--host", mac, "--kind", "inventory_changed"]);
    let list = changed["events"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{changed}");
    assert_eq!(list[0]["data"]["changes"][0]["what"], "disk");
    let history = lab.json(&["inventory", "history", "--host", mac]);
    assert_eq!(history["history"].as_array().unwrap().len(), 3);

    // the hook that never ends was killed at its timeout, each time; the others ran
    let runs = wait_for("the hanging hook's runs to end", 60, || {
        let r = lab.json(&["events", "--runs"]);
        let hanging: Vec<Value> = r["runs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["hook"] == "never-ends")
            .cloned()
            .collect();
        (hanging.len() == 3 && hanging.iter().all(|r| r["outcome"] != "running")).then_some(r)
    });
    common::say(&format!(
        "hook runs: {}",
        runs["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| format!("{} {} ({})", r["hook"], r["outcome"], r["detail"]))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    for r in runs["runs"].as_array().unwrap() {
        let want = if r["hook"] == "never-ends" {
            "timeout"
        } else {
            "ok"
        };
        assert_eq!(r["outcome"], want, "{r}");
    }
    let boot = lab.json(&["events", "--kind", "boot"]);
    assert_eq!(boot["events"][0]["mac"], mac);
}

//! The central side of sites and pushes, driven through the CLI and the API with a relay's
//! heartbeats sent by hand: the relay gets its schedule and push orders, its progress shows
//! in `push status` (ETA over windows, deadline warning), pause/resume/cancel reach it, and
//! a machine booting through the relay gets the relay's address and keeps its task back
//! until the relay holds the version (policy wait).

mod common;

use serde_json::{json, Value};

use common::{credential_of, fake_bootenv, http, register, request, InProcess, Lab};

const MAC: &str = "52:54:00:66:00:01";

fn heartbeat(s: &InProcess, token: &str, body: &Value) -> (u16, Value) {
    let auth = format!("Bearer {token}");
    let (code, _, body) = request(
        "POST",
        &format!("{}/api/v1/relay/heartbeat", s.url),
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        Some(body.to_string().into_bytes()),
    );
    let body = String::from_utf8_lossy(&body);
    (
        code,
        serde_json::from_str(&body).unwrap_or(json!({ "raw": body })),
    )
}

fn hb(site: &str, push: i64, state: &str, done: u64, total: u64, complete: Value) -> Value {
    json!({
        "protocol": bootcast::proto::relay::PROTOCOL,
        "site": site, "url": "http://10.99.1.2:8080", "version": "test", "cache_bytes": done,
        "complete": complete,
        "pushes": [{"push": push, "state": state, "bytes_done": done, "bytes_total": total,
                    "fetched": done, "rate": 1000}]
    })
}

/// The boot script `MAC` gets through the relay of `token`.
fn relayed_script(s: &InProcess, token: &str) -> String {
    let (_, _, body) = request(
        "GET",
        &format!("{}/boot/{MAC}.ipxe?platform=pcbios", s.url),
        &[
            ("x-bootcast-relay-token", token),
            ("x-bootcast-relay-url", "http://10.99.1.2:8080"),
            ("x-forwarded-for", "10.99.1.50"),
            // the relay's DHCP service saw the machine there
            ("x-bootcast-dhcp-seen", "10.99.1.50"),
        ],
        None,
    );
    String::from_utf8_lossy(&body).into_owned()
}

#[test]
fn sites_pushes_and_relay_heartbeats() {
    let lab = Lab::new();
    fake_bootenv(&lab);
    let added = lab.add(
        "win11",
        &lab.file("v1.img", &common::random_bytes(300_000, 9)),
    );
    let version = added["version"].as_str().unwrap().to_string();
    let s = InProcess::start(&lab);

    // sites: bad input refused with the fix; the token is printed once and by `site token`
    let e = common::stderr(&lab.run(&["site", "add", "x", "--tz", "Mars/Olympus"]));
    assert!(e.contains("unknown time zone"), "{e}");
    let e = common::stderr(&lab.run(&["site", "add", "x", "--window", "22-6"]));
    assert!(e.contains("HH:MM-HH:MM"), "{e}");
    let e = common::stderr(&lab.run(&["site", "add", "x", "--rate", "fast"]));
    assert!(e.contains("50Mbit"), "{e}");
    let nord = lab.json(&[
        "site",
        "add",
        "nord",
        "--tz",
        "Europe/Paris",
        "--window",
        "22:00-06:00",
        "--rate",
        "8kbit",
        "--subnets",
        "10.99.1.0/24",
    ]);
    let first = nord["token"].as_str().unwrap().to_string();
    // tokens are stored hashed: shown once; `--rotate` makes a new one and the old one stops
    let e = common::stderr(&lab.run(&["site", "token", "nord"]));
    assert!(e.contains("stored hashed") && e.contains("--rotate"), "{e}");
    let token = lab.json(&["site", "token", "nord", "--rotate"])["token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(token, first);
    // (read by another process: closing a descriptor of the database in this one would drop
    // the in-process server's SQLite locks)
    for t in [&first, &token] {
        let found = std::process::Command::new("grep")
            .args(["-c", "-F", t])
            .arg(lab.data().join("bootcast.db"))
            .arg(lab.data().join("bootcast.db-wal"))
            .output()
            .unwrap();
        let counts = String::from_utf8_lossy(&found.stdout);
        assert!(
            counts.lines().all(|l| l.ends_with(":0")),
            "a relay token in clear in the database: {counts}"
        );
    }
    assert_eq!(
        heartbeat(&s, &first, &hb("nord", 0, "waiting", 0, 0, json!([]))).0,
        401
    );
    // sud holds the loopback subnet: machines booting directly from there belong to it
    lab.json(&["site", "add", "sud", "--subnets", "127.0.0.0/8"]);
    let e = common::stderr(&lab.run(&["site", "add", "y", "--subnets", "10.0.0.0"]));
    assert!(e.contains("not a CIDR"), "{e}");

    // a push to nord with a deadline in two minutes: 300 KB at 1 kB/s takes 300 s of open
    // window, so it cannot make it at any time of day (with a deadline an hour away it could
    // when the test runs inside the 22:00-06:00 window)
    let e = common::stderr(&lab.run(&["push", "create", "--image", "win11", "--sites", "nowhere"]));
    assert!(e.contains("no site \"nowhere\""), "{e}");
    let deadline = bootcast::time::rfc3339(bootcast::time::now_unix() + 120);
    let p = lab.json(&[
        "push",
        "create",
        "--image",
        "win11",
        "--sites",
        "nord",
        "--deadline",
        &deadline,
    ]);
    let id = p["push"]["id"].as_i64().unwrap();
    assert_eq!(p["push"]["versions"][0]["version"], version.as_str());
    let full = p["push"]["versions"][0]["bytes"].as_u64().unwrap();
    assert!(full > 0);

    // heartbeats: a wrong token, another site's name
    let (code, body) = heartbeat(&s, "nope", &hb("nord", id, "waiting", 0, full, json!([])));
    assert_eq!(code, 401, "{body}");
    let (code, body) = heartbeat(&s, &token, &hb("sud", id, "waiting", 0, full, json!([])));
    assert_eq!(code, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("--site nord"),
        "{body}"
    );
    // the relay learns its schedule and the push
    let (code, reply) = heartbeat(
        &s,
        &token,
        &hb("nord", id, "running", 1000, full, json!([])),
    );
    assert_eq!(code, 200, "{reply}");
    assert_eq!(
        reply["schedule"],
        json!({"tz": "Europe/Paris", "windows": "22:00-06:00", "rate": 1000})
    );
    assert_eq!(reply["pushes"][0]["id"], id);
    assert_eq!(reply["pushes"][0]["paused"], false);
    assert_eq!(
        reply["pushes"][0]["versions"][0],
        json!({"image": "win11", "version": version})
    );
    assert_eq!(reply["assigned"], json!(["win11"]));

    // status: progress, an ETA, the deadline warning (CLI and API agree)
    let st = lab.json(&["push", "status"]);
    let row = &st["pushes"][0]["sites"][0];
    assert_eq!(
        (row["site"].as_str(), row["state"].as_str()),
        (Some("nord"), Some("running")),
        "{st}"
    );
    assert_eq!(row["bytes_done"], 1000);
    assert_eq!(row["bytes_total"], full);
    assert!(row["eta"].is_string(), "{row}");
    assert!(
        row["warning"]
            .as_str()
            .unwrap()
            .contains("cannot meet the deadline"),
        "{row}"
    );
    let (code, api) = http(
        "GET",
        &format!("{}/api/v1/pushes", s.url),
        s.token.as_deref(),
        None,
    );
    assert_eq!(code, 200);
    let api: Value = serde_json::from_str(&api).unwrap();
    assert_eq!(api["pushes"][0]["sites"][0]["bytes_done"], 1000);

    // pause reaches the relay; resume; the relay reports done: the push is done
    lab.json(&["push", "pause", &id.to_string()]);
    let (_, reply) = heartbeat(&s, &token, &hb("nord", id, "paused", 1000, full, json!([])));
    assert_eq!(reply["pushes"][0]["paused"], true);
    let e = common::stderr(&lab.run(&["push", "pause", &id.to_string()]));
    assert!(e.contains("cannot be paused"), "{e}");
    lab.json(&["push", "resume", &id.to_string()]);

    // a machine of the site boots through the relay: scripts name the relay; its reimage
    // waits while the relay lacks the version
    register(&s, MAC);
    lab.json(&["task", "reimage", "--host", MAC, "--image", "win11"]);
    let script = relayed_script(&s, &token);
    assert!(script.contains("sanboot"), "the task should wait: {script}");
    let t = lab.json(&["task", "list", "--host", MAC]);
    assert_eq!(t["tasks"][0]["state"], "pending");
    let complete = json!([{"image": "win11", "version": version}]);
    let (_, reply) = heartbeat(&s, &token, &hb("nord", id, "done", full, full, complete));
    assert_eq!(reply["pushes"].as_array().unwrap().len(), 1);
    let script = relayed_script(&s, &token);
    assert!(
        script.contains("http://10.99.1.2:8080/bootenv/")
            && script.contains("bootcast.server=http://10.99.1.2:8080"),
        "{script}"
    );
    assert!(script.contains("bootcast.task="), "{script}");
    let hosts = lab.json(&["host", "show", MAC]);
    assert_eq!(hosts["host"]["last_ip"], "10.99.1.50", "{hosts}");
    assert_eq!(hosts["host"]["site"], "nord", "{hosts}");
    // a machine booting directly from a site's subnet belongs to that site
    let other = "52:54:00:66:00:02";
    http("GET", &format!("{}/boot/{other}.ipxe", s.url), None, None);
    assert_eq!(lab.json(&["host", "show", other])["host"]["site"], "sud");
    // a direct boot still names the central server
    let (_, direct) = http("GET", &format!("{}/boot/{MAC}.ipxe", s.url), None, None);
    assert!(!direct.contains("10.99.1.2"), "{direct}");
    let _ = credential_of(&direct);

    let st = lab.json(&["push", "list", "--all"]);
    assert_eq!(st["pushes"][0]["state"], "done");
    // cancel of a done push is refused; a new push to `all` covers both sites
    let e = common::stderr(&lab.run(&["push", "cancel", &id.to_string()]));
    assert!(e.contains("is done"), "{e}");
    let p2 = lab.json(&[
        "push", "create", "--image", "win11", "--sites", "all", "--rate", "1Gbit",
    ]);
    assert_eq!(p2["push"]["sites"].as_array().unwrap().len(), 2);
    lab.json(&[
        "push",
        "cancel",
        &p2["push"]["id"].as_i64().unwrap().to_string(),
    ]);
    let (_, reply) = heartbeat(&s, &token, &hb("nord", id, "done", full, full, json!([])));
    assert!(
        reply["pushes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["id"] != p2["push"]["id"]),
        "a cancelled push is no order: {reply}"
    );
    let sites = lab.json(&["site", "list"]);
    assert_eq!(sites["sites"][0]["relay"]["url"], "http://10.99.1.2:8080");

    // a recurring push: pushes now, then at each tick when the versions changed (the
    // server's ticker; its rules are unit-tested in push::plan)
    let e = common::stderr(&lab.run(&[
        "push", "create", "--image", "win11", "--sites", "nord", "--every", "nightly",
    ]));
    assert!(e.contains("cron expression"), "{e}");
    let e = common::stderr(&lab.run(&[
        "push",
        "create",
        "--image",
        "win11",
        "--sites",
        "nord",
        "--every",
        "0 20 * * *",
        "--tz",
        "Paris",
    ]));
    assert!(e.contains("--tz") && e.contains("Europe/Paris"), "{e}");
    // its own zone, with the tzdb's spelling (DST through the year: unit-tested in push::plan)
    let p3 = lab.json(&[
        "push",
        "create",
        "--image",
        "win11",
        "--sites",
        "nord",
        "--every",
        "0 20 * * *",
        "--tz",
        "europe/paris",
    ]);
    let rules = lab.json(&["push", "rules"]);
    assert_eq!(rules["rules"][0]["every"], "0 20 * * *");
    assert_eq!(rules["rules"][0]["tz"], "Europe/Paris");
    assert_eq!(rules["rules"][0]["last_push"], p3["push"]["id"]);
    lab.json(&["push", "unschedule", &rules["rules"][0]["id"].to_string()]);
    assert!(lab.json(&["push", "rules"])["rules"]
        .as_array()
        .unwrap()
        .is_empty());
}

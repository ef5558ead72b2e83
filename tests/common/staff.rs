//! A region's staff data for the console and access tests: two sites with their hosts and
//! rooms, the demo image (one version approved, and with `seed_capture` one awaiting
//! approval), and accounts made with the CLI.

use serde_json::json;

use super::Lab;

pub const PASSWORD: &str = "a long enough password";

/// Hosts of the lycee (in room lycee-r1) and of the college, with the site their relay gave.
pub fn lycee(i: u32) -> String {
    format!("52:54:00:21:01:{i:02x}")
}
pub fn college(i: u32) -> String {
    format!("52:54:00:21:02:{i:02x}")
}

/// The region before the server starts: two sites, 40 hosts each, a room per site, the
/// demo image, an inventory, hosts waiting for approval; staff accounts made with the CLI.
pub fn seed(lab: &Lab) -> u32 {
    let img = lab.file("demo.img", &super::texty_bytes(1 << 20, 7));
    lab.add("demo", &img);
    let db = bootcast::db::Db::open(&bootcast::db::path(&lab.data())).unwrap();
    let mut c = db.lock();
    use bootcast::db::{groups, hosts, registration_rules, sites};
    for (name, net) in [("lycee", "10.99.1.0/24"), ("college", "10.99.2.0/24")] {
        let s = sites::SiteSettings {
            subnets: vec![net.into()],
            tz: "Europe/Paris".into(),
            windows: String::new(),
            rate: None,
            incomplete: sites::Incomplete::Wait,
        };
        assert!(sites::add(&c, name, &s, &format!("relay-token-of-{name}"), 0).unwrap());
    }
    let rule = registration_rules::RegistrationRule {
        site: Some("lycee".into()),
        image: Some("demo".into()),
        approval: true,
        ..Default::default()
    };
    let rule = registration_rules::create(&c, &rule, 0).unwrap();
    for i in 1..=40 {
        for (mac, site) in [(lycee(i), "lycee"), (college(i), "college")] {
            let m = mac.parse().unwrap();
            hosts::record_hello(&mut c, m, &Default::default(), 0).unwrap();
            c.execute("UPDATE hosts SET site = ?2 WHERE mac = ?1", [&mac, site])
                .unwrap();
            if i > 20 {
                hosts::set_pending_rule(&c, m, Some(rule)).unwrap();
            }
        }
    }
    let macs = |f: fn(u32) -> String| (1..=4).map(|i| f(i).parse().unwrap()).collect::<Vec<_>>();
    groups::add(&mut c, "lycee-r1", &macs(lycee), 0).unwrap();
    groups::add(&mut c, "college-r1", &macs(college), 0).unwrap();
    // the lycee's relay reported two minutes ago; the college's never did
    let hb: bootcast::proto::relay::Heartbeat = serde_json::from_value(json!({
        "site": "lycee", "url": "http://10.99.1.1:8080", "version": "0.1.0",
        "cache_bytes": 3u64 << 30, "quota_bytes": 20u64 << 30, "complete": [], "pushes": [],
    }))
    .unwrap();
    sites::record_heartbeat(&mut c, "lycee", &hb, bootcast::time::now_unix() - 120).unwrap();
    let inv: bootcast::inventory::Inventory =
        serde_json::from_value(json!({ "collected_at": 0, "mac": lycee(1) })).unwrap();
    let day = 86400;
    let now = bootcast::time::now_unix();
    bootcast::db::inventories::record(&c, lycee(1).parse().unwrap(), &inv, now - 2 * day).unwrap();
    // a day later, with a memory module more
    let inv: bootcast::inventory::Inventory = serde_json::from_value(json!({
        "collected_at": now - day, "mac": lycee(1),
        "memory": [{ "slot": "DIMM 0", "size_mib": 8192 }],
    }))
    .unwrap();
    bootcast::db::inventories::record(&c, lycee(1).parse().unwrap(), &inv, now - day).unwrap();
    drop(c);
    drop(db);
    rule as u32
}

pub fn add_user(lab: &Lab, name: &str, role: &str, site: Option<&str>) -> String {
    use std::io::Write;
    let mut args = vec!["user", "add", name, "--role", role, "--password-stdin"];
    if let Some(s) = site {
        args.extend(["--site", s]);
    }
    let mut child = lab
        .cmd()
        .args(&args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{PASSWORD}").unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
    lab.json(&["user", "token", name])["token"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A second version of the demo image, held for approval as a capture is: its version id.
pub fn seed_capture(lab: &Lab) -> String {
    let img = lab.file("demo-v2.img", &super::texty_bytes(1 << 20, 8));
    let added = lab.add("demo", &img);
    let hex = added["version"].as_str().unwrap().to_string();
    let store = bootcast::store::Store::open(&lab.data()).unwrap();
    let v = store.resolve(&format!("demo@{hex}")).unwrap();
    store.hold_for_approval("demo", &v.id).unwrap();
    hex
}

/// `POST /api/v1/login` at `url`: (status, the `Set-Cookie` header if any, body).
pub fn login(url: &str, user: &str, password: &str) -> (u16, Option<String>, String) {
    let (code, head, body) = super::request(
        "POST",
        &format!("{url}/api/v1/login"),
        &[("content-type", "application/json")],
        Some(
            json!({ "user": user, "password": password })
                .to_string()
                .into_bytes(),
        ),
    );
    (
        code,
        head.get("set-cookie").cloned(),
        String::from_utf8_lossy(&body).into_owned(),
    )
}

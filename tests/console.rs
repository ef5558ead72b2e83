//! The staff console in a real headless Chromium (Debian's chromium and chromium-driver,
//! driven over WebDriver by fantoccini) against a real `bootcast serve` on loopback:
//!
//! - an operator of the lycee logs in, sees the lycee's hosts and none of the college's (in
//!   the page, and through the API from the same browser session: 403), and reimages a room
//!   at a time; the test's agents report progress and the page shows it change without a
//!   reload;
//! - an admin approves a capture and creates a push; both log out;
//! - the audit trail has each change with its user.
//!
//! Screenshots of each page go to `target/console-screenshots/` (not committed).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::staff::{add_user, college, lycee, seed, seed_capture, PASSWORD};
use common::{skip, Lab, Served};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

/// chromedriver on a loopback port, killed (by PID) when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A browser session and the runtime its WebDriver calls run on.
struct Browser {
    rt: tokio::runtime::Runtime,
    c: Client,
    shots: PathBuf,
    base: String,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // ends the WebDriver session: chromedriver stops the Chromium it started
        let _ = self.rt.block_on(self.c.clone().close());
    }
}

impl Browser {
    fn start(driver: &Driver, base: &str) -> Browser {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1366,1000"],
            }),
        );
        let url = format!("http://127.0.0.1:{}", driver.port);
        let c = rt
            .block_on(
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                    .capabilities(caps)
                    .connect(&url),
            )
            .expect("a Chromium session");
        let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
        std::fs::create_dir_all(&shots).unwrap();
        Browser {
            rt,
            c,
            shots,
            base: base.to_string(),
        }
    }

    fn goto(&self, path: &str) {
        self.rt
            .block_on(self.c.goto(&format!("{}{path}", self.base)))
            .unwrap();
    }

    /// Waits (WebDriver's own polling, 30 s) for an element the page draws.
    fn wait(&self, css: &str) -> fantoccini::elements::Element {
        self.rt
            .block_on(
                self.c
                    .wait()
                    .at_most(std::time::Duration::from_secs(30))
                    .for_element(Locator::Css(css)),
            )
            .unwrap_or_else(|e| panic!("no {css} on the page: {e}\n{}", self.text("body")))
    }

    fn text(&self, css: &str) -> String {
        self.rt
            .block_on(async { self.c.find(Locator::Css(css)).await?.text().await })
            .unwrap_or_default()
    }

    fn type_in(&self, css: &str, text: &str) {
        let e = self.wait(css);
        self.rt.block_on(e.send_keys(text)).unwrap();
    }

    fn click(&self, css: &str) {
        let e = self.wait(css);
        self.rt.block_on(e.click()).unwrap();
    }

    fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.rt.block_on(self.c.execute(script, args)).unwrap()
    }

    /// `fetch` from the page, with the browser's session: the status.
    fn fetch_status(&self, path: &str) -> u64 {
        self.rt
            .block_on(self.c.execute_async(
                "const done = arguments[arguments.length - 1]; fetch(arguments[0], {credentials: 'same-origin'}).then(r => done(r.status), e => done(String(e)));",
                vec![json!(path)],
            ))
            .unwrap()
            .as_u64()
            .unwrap()
    }

    fn shot(&self, name: &str) {
        let png = self.rt.block_on(self.c.screenshot()).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
    }

    /// Waits until `cond` holds on the page (checked by WebDriver, every 200 ms, 30 s).
    fn until(&self, what: &str, cond: &str) {
        for _ in 0..150 {
            if self.js(cond, vec![]) == json!(true) {
                return;
            }
            self.rt.block_on(async {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await
            });
        }
        panic!(
            "{what}: not seen in 30 s; the page says:\n{}",
            self.text("body")
        );
    }

    fn login(&self, user: &str, password: &str) {
        self.goto("/ui/login");
        self.type_in("#user", user);
        self.type_in("#password", password);
        self.click("#login-button");
        self.wait("#me");
    }

    fn logout(&self) {
        self.click("#logout");
        self.wait("#login");
    }
}

fn tools() -> Option<()> {
    for (tool, pkg) in [
        ("/usr/bin/chromium", "chromium"),
        ("/usr/bin/chromedriver", "chromium-driver"),
    ] {
        if !Path::new(tool).exists() {
            skip(
                "console",
                &format!("{tool} is missing (Debian package {pkg})"),
            );
            return None;
        }
    }
    Some(())
}

fn chromedriver() -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("/usr/bin/chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let d = Driver { child, port };
    common::wait_for("chromedriver to listen", 30, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    d
}

#[test]
fn staff_work_in_the_console_each_within_their_sites() {
    let Some(()) = tools() else { return };
    let lab = Lab::new();
    seed(&lab);
    let capture = seed_capture(&lab);
    common::fake_bootenv(&lab);
    add_user(&lab, "op-lycee", "operator", Some("lycee"));
    add_user(&lab, "root-anne", "admin", None);
    let now = bootcast::time::now_unix();
    let clock = lab.path("clock");
    std::fs::write(&clock, now.to_string()).unwrap();
    let s = Served::start(
        lab.cmd(),
        &[
            "--http",
            "127.0.0.1:0",
            "--tftp",
            "off",
            "--clock-file",
            clock.to_str().unwrap(),
        ],
    );
    let driver = chromedriver();
    let b = Browser::start(&driver, &s.url);

    // the operator: the login page, then the dashboard
    b.goto("/ui/hosts");
    b.wait("#login");
    b.shot("01-login");
    b.login("op-lycee", PASSWORD);
    assert!(
        b.text("#me").contains("operator of lycee"),
        "{}",
        b.text("#me")
    );
    b.goto("/ui/hosts");
    b.wait("#hosts");
    assert_eq!(b.text("#total"), "40 hosts");
    let page = b.text("#hosts");
    assert!(
        page.contains(&lycee(1)) && !page.contains(&college(1)),
        "{page}"
    );
    assert_eq!(
        b.text("#tree").matches("college").count(),
        0,
        "{}",
        b.text("#tree")
    );
    b.shot("02-hosts-operator");
    // a search
    b.type_in("#search", &lycee(7));
    b.click("form.inline button");
    b.until("the search's one host", "return document.querySelector('#total') && document.querySelector('#total').textContent === '1 hosts'");
    // through the API, with the same session: the college is refused
    assert_eq!(
        b.fetch_status(&format!("/api/v1/hosts/{}", college(1))),
        403
    );
    assert_eq!(b.fetch_status("/api/v1/hosts?site=college"), 403);
    assert_eq!(b.fetch_status(&format!("/api/v1/hosts/{}", lycee(1))), 200);
    b.goto("/ui");
    b.wait("#sites");
    assert!(b.text("#sites").contains("lycee") && !b.text("#sites").contains("college"));
    b.shot("03-dashboard-operator");

    // reimage the room lycee-r1 at a time, with wake and multicast off
    b.goto("/ui/room/lycee-r1");
    b.wait("#room-task");
    // in an hour, to the minute (what the field takes)
    let hour = (now + 3600) / 60 * 60;
    let at = bootcast::time::rfc3339(hour);
    let local = at.trim_end_matches(":00Z");
    // the datetime-local field is in the browser's zone: the test's Chromium runs in UTC
    b.js(
        "document.querySelector('#room-task input[name=at]').value = arguments[0];
         document.querySelector('#room-task input[name=multicast]').checked = false;",
        vec![json!(local)],
    );
    b.click("#room-task button[type=submit]");
    b.until(
        "the room's four tasks",
        "return document.querySelectorAll('#room .task-state').length === 4",
    );
    assert_eq!(
        b.text("#room").matches("pending").count(),
        4,
        "{}",
        b.text("#room")
    );
    b.shot("04-room-reimage-scheduled");
    // and on a calendar: a rule for the room, made from its page (a day far from any test
    // clock: its run is not made ahead during this test)
    b.js(
        "document.querySelector('#rule-form input[name=every]').value = '30 6 29 2 *';",
        vec![],
    );
    b.click("#rule-form button[type=submit]");
    b.until(
        "the rule made",
        "return document.querySelector('#toast').textContent.includes('rule for lycee-r1')",
    );
    let (_, rules) = common::http(
        "GET",
        &format!("{}/api/v1/task-rules", s.url),
        s.token.as_deref(),
        None,
    );
    let rules: Value = serde_json::from_str(&rules).unwrap();
    let r = &rules["rules"][0];
    assert_eq!(
        (&r["group"], &r["kind"], &r["every"], &r["multicast"]),
        (
            &json!("lycee-r1"),
            &json!("reimage"),
            &json!("30 6 29 2 *"),
            &json!(true)
        ),
        "{rules}"
    );
    let (_, tasks) = common::http(
        "GET",
        &format!("{}/api/v1/tasks", s.url),
        s.token.as_deref(),
        None,
    );
    let tasks: Value = serde_json::from_str(&tasks).unwrap();
    let room: Vec<&Value> = tasks["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["group"] == "lycee-r1")
        .collect();
    assert_eq!(room.len(), 4, "{tasks}");
    for t in &room {
        assert_eq!(
            t["not_before"].as_str(),
            Some(at.as_str()),
            "the time given: {t}"
        );
    }
    let task = room[0]["id"].as_i64().unwrap();
    let mac = room[0]["mac"].as_str().unwrap().to_string();
    b.js("window.bootcastMarker = 'no reload';", vec![]);

    // the hour comes (the schedulers' clock); the machine boots, its agent reports progress
    std::fs::write(&clock, (hour + 30).to_string()).unwrap();
    let script = common::boot_script(&s, &mac);
    assert!(
        script.contains(&format!("bootcast.task={task}")),
        "{script}"
    );
    let (code, answer) = common::hello(&s, &mac, &common::credential_of(&script), Some(task));
    assert_eq!(code, 200, "{answer}");
    let session = common::session_of(&answer);
    let progress = |done: u64| {
        let body = json!({ "mac": mac, "session": session, "task": task, "bytes_done": done, "bytes_total": 1000, "rate": 50, "eta": (1000 - done) / 50 });
        let (code, text) = common::http(
            "POST",
            &format!("{}/api/v1/agent/progress", s.url),
            None,
            Some(&body.to_string()),
        );
        assert_eq!(code, 200, "{text}");
    };
    progress(250);
    let bar = format!("[data-task='{task}'].task-bar");
    b.until(
        "25 % in the room page",
        &format!("const e = document.querySelector(\"{bar}\"); return !!e && e.textContent.includes('25 %')"),
    );
    b.shot("05-room-progress-25");
    progress(750);
    b.until(
        "75 % in the room page",
        &format!("const e = document.querySelector(\"{bar}\"); return !!e && e.textContent.includes('75 %')"),
    );
    assert_eq!(
        b.js("return window.bootcastMarker;", vec![]),
        json!("no reload"),
        "the page changed without a reload"
    );
    assert!(b
        .text(&format!("[data-task='{task}'].task-state"))
        .contains("running"));
    b.shot("06-room-progress-75");
    b.logout();

    // the admin: approve the capture, push it to the lycee
    b.login("root-anne", PASSWORD);
    b.goto("/ui/images");
    b.wait("#images");
    b.shot("07-images-before-approval");
    b.click(&format!("button.approve[data-version='{capture}']"));
    b.until(
        "the capture approved",
        &format!("return !document.querySelector(\"button.approve[data-version='{capture}']\") && document.querySelector('#images') !== null"),
    );
    let (_, images) = common::http(
        "GET",
        &format!("{}/api/v1/images", s.url),
        s.token.as_deref(),
        None,
    );
    let images: Value = serde_json::from_str(&images).unwrap();
    let v = images["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["version"] == capture.as_str())
        .unwrap();
    assert_eq!(v["approved"], true, "{v}");
    b.click("#push input[value=lycee]");
    b.click("#push button[type=submit]");
    b.until(
        "the push listed",
        "return document.querySelector('#pushes') !== null && document.querySelector('#pushes').textContent.includes('lycee')",
    );
    let (_, pushes) = common::http(
        "GET",
        &format!("{}/api/v1/pushes", s.url),
        s.token.as_deref(),
        None,
    );
    let pushes: Value = serde_json::from_str(&pushes).unwrap();
    assert_eq!(pushes["pushes"].as_array().unwrap().len(), 1, "{pushes}");
    assert_eq!(pushes["pushes"][0]["sites"][0]["site"], "lycee");
    b.shot("08-images-push-created");
    // paused from the page, the relays told at once
    b.click(".push-pause");
    b.until(
        "the push paused",
        "return document.querySelector('.push-state') !== null && document.querySelector('.push-state').textContent === 'paused'",
    );
    assert!(
        b.text("#pushes").contains("Resume"),
        "{}",
        b.text("#pushes")
    );
    // the night: the lycee's relay reports its progress every 10 minutes (the clock moves),
    // the push page draws the curve against the deadline-less night
    let push = pushes["pushes"][0]["push"].as_i64().unwrap();
    let total = pushes["pushes"][0]["sites"][0]["bytes_total"]
        .as_u64()
        .unwrap_or(1000)
        .max(1000);
    let mut t = hour + 60;
    for step in 0..=6u64 {
        t += 600;
        std::fs::write(&clock, t.to_string()).unwrap();
        let done = total * step / 6;
        let state = if step == 6 { "done" } else { "running" };
        let body = json!({
            "protocol": bootcast::proto::relay::PROTOCOL,
            "site": "lycee", "url": "http://10.99.1.1:8080", "version": "test",
            "cache_bytes": done, "complete": [],
            "pushes": [{"push": push, "state": state, "bytes_done": done, "bytes_total": total,
                        "fetched": done, "rate": 1000}]
        });
        let (code, _, text) = common::request(
            "POST",
            &format!("{}/api/v1/relay/heartbeat", s.url),
            &[
                ("authorization", "Bearer relay-token-of-lycee"),
                ("content-type", "application/json"),
            ],
            Some(body.to_string().into_bytes()),
        );
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&text));
    }
    b.goto(&format!("/ui/push/{push}"));
    b.wait("#push-chart");
    let points = b.js(
        "return document.querySelector('#push-chart polyline[data-site=lycee]').getAttribute('points').split(' ').length;",
        vec![],
    );
    assert_eq!(
        points,
        json!(7),
        "a sample per 10 minutes, the end included"
    );
    assert!(
        b.text("#push-sites").contains("100 %"),
        "{}",
        b.text("#push-sites")
    );
    b.shot("08b-push-night-curve");
    // a host's hardware changes from one boot's inventory to the next
    b.goto(&format!("/ui/host/{}", lycee(1)));
    b.wait("#inventory-history");
    let changes = b.text("#inventory-history");
    assert!(
        changes.contains("memory: removed [], added [DIMM 0 8192 MiB]"),
        "{changes}"
    );
    b.js(
        "document.querySelector('#inventory-history').scrollIntoView();",
        vec![],
    );
    b.shot("08c-host-hardware-changes");
    // a room reimaged by multicast now: its session and receivers on the Multicast page
    b.goto("/ui/room/college-r1");
    b.wait("#room-task");
    b.js(
        "document.querySelector('#room-task input[name=multicast]').checked = true;",
        vec![],
    );
    b.click("#room-task button[type=submit]");
    b.until(
        "the room's four tasks",
        "return document.querySelectorAll('#room .task-state').length === 4",
    );
    b.goto("/ui/multicast");
    b.wait("#multicast tr[data-session]");
    let row = b.text("#multicast tr[data-session]");
    assert!(row.contains("college-r1") && row.contains("demo@"), "{row}");
    let cells: Vec<String> = b
        .js(
            "return [...document.querySelectorAll('#multicast tr[data-session] td.num')].map((c) => c.textContent);",
            vec![],
        )
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    // runs, receivers, waiting, joined, done, dropped
    assert_eq!(cells, ["0", "4", "4", "0", "0", "0"], "{row}");
    b.shot("08d-multicast-sessions");
    b.goto("/ui");
    b.wait("#sites");
    b.shot("09-dashboard-admin");
    // a bulk action on a whole site's page: the browser asks to confirm the count first
    b.goto("/ui/hosts?site=college");
    b.wait("#hosts");
    b.click("#select-all");
    b.js(
        "document.querySelector('#bulk-action').value = 'wake';",
        vec![],
    );
    b.click("#bulk button[type=submit]");
    let question = b.rt.block_on(async {
        for _ in 0..150 {
            if let Ok(t) = b.c.get_alert_text().await {
                return t;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        panic!("no confirmation asked");
    });
    assert!(question.contains("40 hosts"), "{question}");
    b.rt.block_on(b.c.accept_alert()).unwrap();
    b.until(
        "the bulk wake's report",
        "return document.querySelector('#toast').textContent.includes('wake: 40 done')",
    );
    b.shot("10-bulk-wake-confirmed");
    b.goto("/ui/audit");
    b.wait("#audit");
    b.shot("11-audit");
    b.logout();
    b.shot("12-logged-out");
    assert_eq!(b.fetch_status("/api/v1/me"), 401, "no session after logout");

    // the audit trail: each change, with its user
    let (_, audit) = common::http(
        "GET",
        &format!("{}/api/v1/audit?limit=100", s.url),
        s.token.as_deref(),
        None,
    );
    let audit: Value = serde_json::from_str(&audit).unwrap();
    let lines: Vec<String> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .filter(|e| e["from"] != "cli")
        .map(|e| {
            format!(
                "{} {} {}",
                e["user"].as_str().unwrap(),
                e["action"].as_str().unwrap(),
                e["status"]
            )
        })
        .collect();
    assert_eq!(
        lines,
        [
            "op-lycee login 200".to_string(),
            "op-lycee POST /api/v1/tasks 201".into(),
            "op-lycee POST /api/v1/task-rules 201".into(),
            "op-lycee POST /api/v1/logout 200".into(),
            "root-anne login 200".into(),
            format!("root-anne POST /api/v1/images/demo/{capture}/approve 200"),
            "root-anne POST /api/v1/pushes 201".into(),
            "root-anne POST /api/v1/pushes/1/pause 200".into(),
            "root-anne POST /api/v1/tasks 201".into(),
            "root-anne POST /api/v1/bulk 409".into(),
            "root-anne POST /api/v1/bulk 200".into(),
            "root-anne POST /api/v1/logout 200".into(),
        ],
        "{audit}"
    );
    common::say(&format!("console: screenshots in {}", b.shots.display()));
}

//! A compromised intermediate relay between a site relay and the central server: a real
//! relay (site `mid`) with a valid token, whose store holds a version the central server never
//! published and whose answers the test rewrites on their way down (the tamper proxy in
//! front of it). The site relay (site `lab`, `--upstream-key` pinned to `bootcast key show`)
//! and the agent must refuse a forged manifest, an altered version in a push or reimage
//! order, and an older signed order replayed for a new task; say why; and write nothing.
//! Once the tampering stops, the same push and a reimage go through, byte-identical.
//!
//! ```text
//! agent ── site relay S ── tamper proxy T ── relay M (mid) ── central C
//! agent ───────────────────┘ (the agent's own checks, with no S to catch it first)
//! ```

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use common::*;

const MAC: &str = "52:54:00:5e:00:01";

/// What the tamper proxy does to the answers it passes down.
#[derive(Clone)]
enum Mode {
    Pass,
    /// Every push order in a heartbeat reply names this version instead.
    AlterPush(String),
    /// Every manifest request is answered with these bytes (another version's manifest).
    ForgeManifest(Vec<u8>),
    /// A reimage order in a hello answer names this version instead.
    AlterTask(String),
    /// A reimage order is replaced by this one (an older answer, signed for its own task);
    /// the session stays the new one.
    Replay(Value),
}

/// An HTTP proxy in front of `upstream`, rewriting answers as its mode says; it keeps every
/// reimage answer it passed, by task.
struct Tamper {
    url: String,
    mode: Arc<Mutex<Mode>>,
    answers: Arc<Mutex<HashMap<i64, Value>>>,
}

impl Endpoint for Tamper {
    fn url(&self) -> &str {
        &self.url
    }
    fn token(&self) -> Option<&str> {
        None
    }
}

impl Tamper {
    fn start(upstream: &str) -> Tamper {
        let mode = Arc::new(Mutex::new(Mode::Pass));
        let answers = Arc::new(Mutex::new(HashMap::new()));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (m, a, up) = (mode.clone(), answers.clone(), upstream.to_string());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async move {
                let client = reqwest::Client::new();
                let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
                    let (m, a, up, client) = (m.clone(), a.clone(), up.clone(), client.clone());
                    async move { pass(req, &client, &up, &m, &a).await }
                });
                let l = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(l, app).await.unwrap();
            });
        });
        Tamper { url, mode, answers }
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn answer_of(&self, task: i64) -> Value {
        self.answers.lock().unwrap()[&task].clone()
    }
}

async fn pass(
    req: axum::extract::Request,
    client: &reqwest::Client,
    upstream: &str,
    mode: &Mutex<Mode>,
    answers: &Mutex<HashMap<i64, Value>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let pq = parts
        .uri
        .path_and_query()
        .map_or(path.clone(), |p| p.to_string());
    let body = axum::body::to_bytes(body, 128 << 20).await.unwrap();
    let mut headers = reqwest::header::HeaderMap::new();
    for (n, v) in &parts.headers {
        if !["host", "content-length", "connection"].contains(&n.as_str()) {
            headers.append(n.clone(), v.clone());
        }
    }
    let resp = client
        .request(parts.method, format!("{upstream}{pq}"))
        .headers(headers)
        .body(body)
        .send()
        .await;
    let Ok(resp) = resp else {
        return (axum::http::StatusCode::BAD_GATEWAY, "upstream down").into_response();
    };
    let status = resp.status();
    let mut out = axum::http::HeaderMap::new();
    for (n, v) in resp.headers() {
        if !["content-length", "transfer-encoding", "connection"].contains(&n.as_str()) {
            out.append(n.clone(), v.clone());
        }
    }
    let mut bytes = resp.bytes().await.unwrap().to_vec();
    let mode = mode.lock().unwrap().clone();
    let json = |b: &[u8]| serde_json::from_slice::<Value>(b).ok();
    if status.is_success() && path == "/api/v1/agent/hello" {
        if let Some(mut v) = json(&bytes) {
            if v["action"] == "reimage" {
                let task = v["task"].as_i64().unwrap();
                answers.lock().unwrap().entry(task).or_insert(v.clone());
                match &mode {
                    Mode::AlterTask(to) => v["version"] = to.clone().into(),
                    Mode::Replay(old) => {
                        let session = v["session"].clone();
                        v = old.clone();
                        v["session"] = session;
                    }
                    _ => {}
                }
                bytes = serde_json::to_vec(&v).unwrap();
            }
        }
    }
    match &mode {
        Mode::AlterPush(to) if path == "/api/v1/relay/heartbeat" && status.is_success() => {
            let mut v = json(&bytes).unwrap();
            for o in v["pushes"].as_array_mut().unwrap() {
                for ver in o["versions"].as_array_mut().unwrap() {
                    ver["version"] = to.clone().into();
                }
            }
            bytes = serde_json::to_vec(&v).unwrap();
        }
        Mode::ForgeManifest(forged) if path.ends_with("/manifest") && status.is_success() => {
            bytes = forged.clone();
        }
        _ => {}
    }
    (status, out, bytes).into_response()
}

/// Waits until the central server shows site `site` of push `id` with `detail` containing
/// `what`; returns the row.
fn wait_detail(lab: &Lab, id: i64, site: &str, what: &str) -> Value {
    wait_for(&format!("push {id} at {site}: {what}"), 60, || {
        let row = push_row(lab, id, site);
        row["detail"]
            .as_str()
            .is_some_and(|d| d.contains(what))
            .then_some(row)
    })
}

fn reimage(lab: &Lab, spec: &str) -> i64 {
    lab.json(&["task", "reimage", "--host", MAC, "--image", spec])["tasks"][0]["id"]
        .as_i64()
        .unwrap()
}

fn task_state(lab: &Lab, id: i64) -> Value {
    let v = lab.json(&["task", "list", "--all", "--host", MAC]);
    v["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id)
        .cloned()
        .unwrap()
}

#[test]
fn a_compromised_relay_between_site_and_central_cannot_make_anything_write_an_unpublished_version()
{
    let lab = Lab::new();
    fake_bootenv(&lab);
    let v1_bytes = disk_like(3 << 20, 501);
    let v2_bytes = disk_like(3 << 20, 502);
    let v1 = lab.add("disk", &lab.file("v1.img", &v1_bytes))["version"]
        .as_str()
        .unwrap()
        .to_string();
    let key = lab.json(&["key", "show"])["key"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(key.starts_with("ed25519:"), "{key}");
    let c = InProcess::start(&lab);
    // the reimages need no push first: both sites pass versions they lack through
    let up = ["--incomplete", "upstream"];
    let (t_mid, t_lab) = (site(&lab, "mid", &up), site(&lab, "lab", &up));
    let m = relay(&lab, "rm", &c.url, "mid", &t_mid, &up);
    let t = Tamper::start(&m.url);
    let s = relay(
        &lab,
        "rs",
        &t.url,
        "lab",
        &t_lab,
        &["--upstream-key", &key, "--incomplete", "upstream"],
    );

    // the compromised relay's store gets a version of "disk" central never published
    let forged_bytes = disk_like(3 << 20, 666);
    let out = std::process::Command::new(BIN)
        .arg("--data")
        .arg(lab.path("rm"))
        .args(["--json", "image", "add", "disk"])
        .arg(lab.file("forged.img", &forged_bytes))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let forged: Value = serde_json::from_slice(&out.stdout).unwrap();
    let forged = forged["version"].as_str().unwrap().to_string();
    let forged_manifest = bootcast::store::Store::open(&lab.path("rm"))
        .unwrap()
        .resolve(&format!("disk@{forged}"))
        .unwrap()
        .manifest
        .encode();
    const UP: &str = "bootcast_relay_upstream_bytes_total";
    let up_s = || metric_in(None, &s.url, UP).unwrap_or(0);

    // 1. push: the forged manifest, served for v1, is refused by the site relay
    t.set(Mode::ForgeManifest(forged_manifest.clone()));
    let push = lab.json(&["push", "create", "--image", "disk", "--sites", "lab"])["push"]["id"]
        .as_i64()
        .unwrap();
    let row = wait_detail(&lab, push, "lab", "not");
    say(&format!(
        "forged manifest: site relay says {}",
        row["detail"]
    ));
    assert_eq!(row["state"], "failed", "{row}");
    assert!(
        row["detail"].as_str().unwrap().contains(&forged[..12]),
        "{row}"
    );
    // 2. push: the order altered to name the forged version: refused, nothing fetched
    t.set(Mode::AlterPush(forged.clone()));
    let row = wait_detail(&lab, push, "lab", "signature");
    say(&format!(
        "altered push order: site relay says {}",
        row["detail"]
    ));
    assert_eq!(row["state"], "failed", "{row}");
    assert_eq!(up_s(), 0, "the site relay fetched nothing");
    let s_store = bootcast::store::Store::open(&lab.path("rs")).unwrap();
    assert!(s_store.version_ids().unwrap().is_empty());
    // the same order, untouched, goes through
    t.set(Mode::Pass);
    wait_for("the push done at lab", 90, || {
        (push_row(&lab, push, "lab")["state"] == "done").then_some(())
    });
    assert_eq!(
        s_store.version_ids().unwrap(),
        vec![("disk".to_string(), v1.parse().unwrap())]
    );

    // 3. a reimage to v1 through the site relay, untouched: done; the tamper proxy keeps its
    // signed answer
    let disk = lab.path("pc.raw");
    std::fs::write(&disk, b"").unwrap();
    register(&s, MAC);
    let t1 = reimage(&lab, &format!("disk@{v1}"));
    let log = agent_boot(&lab, &s, MAC, &disk, "t1");
    assert!(log.contains("BOOTCAST-AGENT-REIMAGE-DONE"), "{log}");
    assert_eq!(sha256(&std::fs::read(&disk).unwrap()), sha256(&v1_bytes));
    assert!(
        boot_script(&s, MAC).contains("sanboot"),
        "t1 is done: local disk"
    );
    let old_answer = t.answer_of(t1);

    // v2, published; task t2 for it
    let v2 = lab.add("disk", &lab.file("v2.img", &v2_bytes))["version"]
        .as_str()
        .unwrap()
        .to_string();
    let t2 = reimage(&lab, &format!("disk@{v2}"));
    let refused_before = metric_in(None, &s.url, "bootcast_relay_orders_refused_total").unwrap();
    let unchanged = |what: &str| {
        assert_eq!(
            sha256(&std::fs::read(&disk).unwrap()),
            sha256(&v1_bytes),
            "{what}: the disk was written"
        );
    };
    // 4. through the site relay: the altered order, then t1's order replayed for t2
    t.set(Mode::AlterTask(forged.clone()));
    let log = agent_boot(&lab, &s, MAC, &disk, "s-alter");
    say(&format!(
        "altered reimage order, site relay: {}",
        log.lines().find(|l| l.contains("ERROR")).unwrap_or("")
    ));
    assert!(log.contains("signature does not verify"), "{log}");
    assert!(!log.contains("writing disk@"), "{log}");
    unchanged("altered order through the site relay");
    t.set(Mode::Replay(old_answer.clone()));
    let log = agent_boot(&lab, &s, MAC, &disk, "s-replay");
    assert!(
        log.contains(&format!("is for task {t1}, but this boot is for task {t2}")),
        "{log}"
    );
    unchanged("replayed order through the site relay");
    assert!(
        metric_in(None, &s.url, "bootcast_relay_orders_refused_total").unwrap()
            >= refused_before + 2
    );
    let st = task_state(&lab, t2);
    assert!(
        ["pending", "booting", "running"].contains(&st["state"].as_str().unwrap()),
        "the site relay reported nothing: {st}"
    );

    // 5. the agent's own checks, booting straight through the compromised path (its kernel
    // command line carries central's key, as the node booting it put it there)
    let script = boot_script(&t, MAC);
    assert!(script.contains(&format!("bootcast.key={key}")), "{script}");
    t.set(Mode::AlterTask(forged.clone()));
    let log = agent_boot(&lab, &t, MAC, &disk, "a-alter");
    say(&format!(
        "altered reimage order, agent: {}",
        log.lines().find(|l| l.contains("REFUSED")).unwrap_or("")
    ));
    assert!(log.contains("BOOTCAST-AGENT-REIMAGE-REFUSED"), "{log}");
    assert!(log.contains("signature does not verify"), "{log}");
    unchanged("altered order to the agent");
    let st = task_state(&lab, t2);
    assert_eq!(st["state"], "failed", "{st}");
    assert!(st["detail"].to_string().contains("signature"), "{st}");

    let t3 = reimage(&lab, &format!("disk@{v2}"));
    t.set(Mode::Replay(old_answer));
    let log = agent_boot(&lab, &t, MAC, &disk, "a-replay");
    assert!(log.contains("BOOTCAST-AGENT-REIMAGE-REFUSED"), "{log}");
    assert!(
        log.contains(&format!("is for task {t1}, but this boot is for task {t3}")),
        "{log}"
    );
    unchanged("replayed order to the agent");

    let _t4 = reimage(&lab, &format!("disk@{v2}"));
    t.set(Mode::ForgeManifest(forged_manifest));
    let log = agent_boot(&lab, &t, MAC, &disk, "a-manifest");
    say(&format!(
        "forged manifest, agent: {}",
        log.lines().find(|l| l.contains("FAILED")).unwrap_or("")
    ));
    assert!(log.contains("BOOTCAST-AGENT-REIMAGE-FAILED"), "{log}");
    assert!(log.contains(&format!("sent version {forged}")), "{log}");
    unchanged("forged manifest to the agent");

    // 6. untouched again: v2 through the site relay, byte-identical
    t.set(Mode::Pass);
    let _t5 = reimage(&lab, &format!("disk@{v2}"));
    let log = agent_boot(&lab, &s, MAC, &disk, "t5");
    assert!(log.contains("BOOTCAST-AGENT-REIMAGE-DONE"), "{log}");
    assert_eq!(sha256(&std::fs::read(&disk).unwrap()), sha256(&v2_bytes));
}

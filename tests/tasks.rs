//! Tasks end to end: groups, reimage and capture tasks from the CLI and the API, the boot
//! script handing them out (or holding them back with `--at`), the agent's progress, done and
//! failed reports (session-checked, own task only), and cancelling.

mod common;

use serde_json::{json, Value};

use common::{api, credential_of, fake_bootenv, http, InProcess, Lab};

const A: &str = "52:54:00:00:10:0a";
const B: &str = "52:54:00:00:10:0b";

fn serve(lab: &Lab) -> InProcess {
    InProcess::start(lab)
}

/// Fetches `mac`'s boot script.
fn boot(s: &InProcess, mac: &str) -> String {
    let (code, script) = http(
        "GET",
        &format!("{}/boot/{mac}.ipxe?platform=pcbios", s.url),
        None,
        None,
    );
    assert_eq!(code, 200, "{script}");
    script
}

/// A first network boot and the agent's hello: `mac` is a registered host.
fn register(s: &InProcess, mac: &str) {
    let script = boot(s, mac);
    assert!(script.contains("registering"), "{script}");
    let hello = json!({
        "protocol": bootcast::proto::agent::AGENT_PROTOCOL, "mac": mac, "arch": "x86_64", "firmware": "bios", "boot_time": 1_700_000_000u64,
        "credential": credential_of(&script)
    });
    let (code, body) = http(
        "POST",
        &format!("{}/api/v1/agent/hello", s.url),
        None,
        Some(&hello.to_string()),
    );
    assert_eq!(code, 200, "{body}");
}

/// POSTs an agent report; returns (status, body as JSON).
fn agent(s: &InProcess, what: &str, body: Value) -> (u16, Value) {
    let (code, text) = http(
        "POST",
        &format!("{}/api/v1/agent/{what}", s.url),
        None,
        Some(&body.to_string()),
    );
    (
        code,
        serde_json::from_str(&text).unwrap_or_else(|_| json!({ "raw": text })),
    )
}

/// Runs a command that must fail; returns its stderr.
fn refused(lab: &Lab, args: &[&str]) -> String {
    let out = lab.run(args);
    assert!(!out.status.success(), "{args:?} succeeded");
    common::stderr(&out)
}

fn task_of<'a>(tasks: &'a Value, mac: &str) -> &'a Value {
    tasks
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["mac"] == mac)
        .unwrap_or_else(|| panic!("no task for {mac} in {tasks}"))
}

#[test]
fn group_reimage_boot_progress_done_and_failed() {
    let lab = Lab::new();
    fake_bootenv(&lab);
    let v1 = lab.add(
        "win11",
        &lab.file("v1.img", &common::random_bytes(300_000, 1)),
    )["version"]
        .as_str()
        .unwrap()
        .to_string();
    let s = serve(&lab);
    register(&s, A);
    register(&s, B);

    let g = lab.json(&["group", "add", "room-101", A, B]);
    assert_eq!(g["hosts"], json!([A, B]));
    let (code, groups) = api(&s, "GET", "/api/v1/groups", None);
    assert_eq!(code, 200);
    assert_eq!(groups["groups"][0]["name"], "room-101");
    let hosts = lab.json(&["host", "list"]);
    assert_eq!(hosts["hosts"][0]["groups"], json!(["room-101"]));

    // one task per host of the group, the version pinned now
    let created = lab.json(&["task", "reimage", "--group", "room-101", "--image", "win11"]);
    let tasks = created["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 2);
    for t in tasks {
        assert_eq!(
            (&t["kind"], &t["state"], &t["image"], &t["group"]),
            (
                &json!("reimage"),
                &json!("pending"),
                &json!("win11"),
                &json!("room-101")
            )
        );
        assert_eq!(t["version"], v1.as_str());
    }
    let id_a = task_of(&created["tasks"], A)["id"].as_i64().unwrap();
    let id_b = task_of(&created["tasks"], B)["id"].as_i64().unwrap();
    // a newer version of the image does not change the queued tasks
    lab.add(
        "win11",
        &lab.file("v2.img", &common::random_bytes(300_000, 2)),
    );
    let listed = lab.json(&["task", "list"]);
    assert_eq!(listed["tasks"].as_array().unwrap().len(), 2);
    assert_eq!(task_of(&listed["tasks"], A)["version"], v1.as_str());
    // a second open task for a host is refused, with the way out
    let err = refused(&lab, &["task", "reimage", "--host", A, "--image", "win11"]);
    assert!(
        err.contains(&format!("already has open task {id_a}")) && err.contains("--replace"),
        "{err}"
    );
    let (code, api_tasks) = api(&s, "GET", "/api/v1/tasks", None);
    assert_eq!(code, 200);
    assert_eq!(api_tasks["tasks"].as_array().unwrap().len(), 2);

    // each host's boot script carries its task; it moves to booting
    let script_a = boot(&s, A);
    assert!(
        script_a.contains(&format!("bootcast.task={id_a}")),
        "{script_a}"
    );
    let script_b = boot(&s, B);
    assert!(
        script_b.contains(&format!("bootcast.task={id_b}")),
        "{script_b}"
    );
    // each agent's hello exchanges its boot's credential for a session
    let session = |mac: &str, script: &str, task: i64| {
        let (code, body) = common::hello(&s, mac, &credential_of(script), Some(task));
        assert_eq!(code, 200, "{body}");
        common::session_of(&body)
    };
    let (na, nb) = (session(A, &script_a, id_a), session(B, &script_b, id_b));
    let listed = lab.json(&["task", "list", "--host", A]);
    assert_eq!(listed["tasks"][0]["state"], "booting");

    let progress = |mac: &str, session: &str, task: i64, done: u64| {
        json!({
            "mac": mac, "session": session, "task": task,
            "bytes_done": done, "bytes_total": 1000u64, "rate": 100u64, "eta": 5u64
        })
    };
    // B's session does not work for A; A cannot report B's task; no session, no report
    let (code, body) = agent(&s, "progress", progress(A, &nb, id_a, 100));
    assert_eq!(code, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("network-boot"),
        "{body}"
    );
    let (code, body) = agent(&s, "progress", progress(A, &na, id_b, 100));
    assert_eq!(code, 404, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("bootcast.task="),
        "{body}"
    );
    let (code, _) = agent(&s, "done", json!({ "mac": A, "task": id_a }));
    assert_eq!(code, 422);
    let (code, _) = agent(&s, "progress", progress(A, &na, id_a, 2000));
    assert_eq!(code, 400);
    let listed = lab.json(&["task", "list"]);
    assert_eq!(task_of(&listed["tasks"], A)["state"], "booting");
    assert_eq!(task_of(&listed["tasks"], B)["state"], "booting");

    // A's own progress: running, with percent, rate and ETA shown by CLI and API
    let (code, ack) = agent(&s, "progress", progress(A, &na, id_a, 250));
    assert_eq!(code, 200, "{ack}");
    assert_eq!(ack, json!({ "task": id_a, "state": "running" }));
    let listed = lab.json(&["task", "list"]);
    let p = &task_of(&listed["tasks"], A)["progress"];
    assert_eq!(
        (
            &p["bytes_done"],
            &p["bytes_total"],
            &p["percent"],
            &p["rate"],
            &p["eta"]
        ),
        (
            &json!(250),
            &json!(1000),
            &json!(25),
            &json!(100),
            &json!(5)
        )
    );
    let human = String::from_utf8(lab.run(&["task", "list"]).stdout).unwrap();
    assert!(
        human.contains("running") && human.contains(" 25%"),
        "{human}"
    );
    let (_, api_tasks) = api(&s, "GET", &format!("/api/v1/tasks?host={A}"), None);
    assert_eq!(api_tasks["tasks"][0]["progress"]["percent"], 25);

    // done; a second report about a closed task is a conflict
    let done = json!({ "mac": A, "session": na, "task": id_a });
    let (code, ack) = agent(&s, "done", done.clone());
    assert_eq!((code, &ack["state"]), (200, &json!("done")), "{ack}");
    let (code, body) = agent(&s, "done", done);
    assert_eq!(code, 409);
    assert!(
        body["error"].as_str().unwrap().contains("already done"),
        "{body}"
    );

    // B fails with a reason, kept for staff
    let (code, _) = agent(
        &s,
        "failed",
        json!({ "mac": B, "session": nb, "task": id_b, "reason": "" }),
    );
    assert_eq!(code, 400);
    let (code, ack) = agent(
        &s,
        "failed",
        json!({ "mac": B, "session": nb, "task": id_b, "reason": "disk /dev/sda is 64 GB, image needs 128 GB" }),
    );
    assert_eq!((code, &ack["state"]), (200, &json!("failed")), "{ack}");
    assert_eq!(lab.json(&["task", "list"])["tasks"], json!([]));
    let all = lab.json(&["task", "list", "--all"]);
    assert_eq!(
        task_of(&all["tasks"], B)["detail"],
        "disk /dev/sda is 64 GB, image needs 128 GB"
    );
    let shown = lab.json(&["host", "show", B]);
    assert_eq!(shown["tasks"][0]["state"], "failed");
    assert_eq!(shown["groups"], json!(["room-101"]));

    // nothing open: the local disk
    let script = boot(&s, A);
    assert!(script.contains("sanboot"), "{script}");
}

#[test]
fn at_holds_a_task_back_cancel_replace_capture_and_api_rules() {
    let lab = Lab::new();
    fake_bootenv(&lab);
    lab.add(
        "win11",
        &lab.file("v1.img", &common::random_bytes(200_000, 3)),
    );
    let s = serve(&lab);
    register(&s, A);

    // a task for an hour from now: the host keeps booting its local disk
    let at = bootcast::time::rfc3339(bootcast::time::now_unix() + 3600);
    let t = lab.json(&[
        "task", "reimage", "--host", A, "--image", "win11", "--at", &at,
    ]);
    let id = t["tasks"][0]["id"].as_i64().unwrap();
    assert_eq!(t["tasks"][0]["not_before"], at.as_str());
    let script = boot(&s, A);
    assert!(script.contains("sanboot"), "{script}");
    assert!(!script.contains("bootcast.task="), "{script}");
    assert_eq!(lab.json(&["task", "list"])["tasks"][0]["state"], "pending");

    // cancel through the API; a second cancel is a conflict, an unknown id not found
    let (code, body) = api(&s, "DELETE", &format!("/api/v1/tasks/{id}"), None);
    assert_eq!(
        (code, &body["task"]["state"]),
        (200, &json!("cancelled")),
        "{body}"
    );
    let (code, body) = api(&s, "DELETE", &format!("/api/v1/tasks/{id}"), None);
    assert_eq!(code, 409, "{body}");
    let (code, _) = api(&s, "DELETE", "/api/v1/tasks/999999", None);
    assert_eq!(code, 404);
    let (code, _) = http(
        "DELETE",
        &format!("{}/api/v1/tasks/{id}", s.url),
        None,
        None,
    );
    assert_eq!(code, 401);

    // the API creates tasks under the same rules as the CLI
    let (code, body) = api(
        &s,
        "POST",
        "/api/v1/tasks",
        Some(json!({ "kind": "reimage", "group": "nosuch", "image": "win11" })),
    );
    assert_eq!(code, 404, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("bootcast group add nosuch"),
        "{body}"
    );
    let (code, body) = api(
        &s,
        "POST",
        "/api/v1/tasks",
        Some(json!({ "kind": "reimage", "host": A, "image": "nosuch" })),
    );
    assert_eq!(code, 404, "{body}");
    let (code, body) = api(
        &s,
        "POST",
        "/api/v1/tasks",
        Some(json!({ "kind": "reimage", "host": A, "group": "x", "image": "win11" })),
    );
    assert_eq!(code, 400, "{body}");
    let (code, body) = api(
        &s,
        "POST",
        "/api/v1/tasks",
        Some(json!({ "kind": "register", "host": A, "image": "win11" })),
    );
    assert_eq!(code, 400, "{body}");
    let (code, _) = api(
        &s,
        "POST",
        "/api/v1/tasks",
        Some(json!({ "kind": "reimage", "host": A, "image": "win11", "when": "now" })),
    );
    assert_eq!(code, 422, "unknown fields are refused");
    let (code, _) = http(
        "POST",
        &format!("{}/api/v1/tasks", s.url),
        None,
        Some(&json!({ "kind": "reimage", "host": A, "image": "win11" }).to_string()),
    );
    assert_eq!(code, 401);
    assert_eq!(lab.json(&["task", "list"])["tasks"], json!([]));
    let (code, body) = api(
        &s,
        "POST",
        "/api/v1/tasks",
        Some(json!({ "kind": "reimage", "host": A, "image": "win11" })),
    );
    assert_eq!(code, 201, "{body}");
    let first = body["tasks"][0]["id"].as_i64().unwrap();
    let (code, body) = api(
        &s,
        "POST",
        "/api/v1/tasks",
        Some(json!({ "kind": "capture", "host": A, "image": "golden" })),
    );
    assert_eq!(code, 409, "{body}");
    // --replace: the open task is cancelled, the capture takes its place
    let err = refused(
        &lab,
        &["task", "capture", "--host", A, "--image", "golden@abcd"],
    );
    assert!(err.contains("without @VERSION"), "{err}");
    let cap = lab.json(&[
        "task",
        "capture",
        "--host",
        A,
        "--image",
        "golden",
        "--replace",
    ]);
    let cap_id = cap["tasks"][0]["id"].as_i64().unwrap();
    assert_eq!(
        (
            &cap["tasks"][0]["kind"],
            &cap["tasks"][0]["image"],
            &cap["tasks"][0]["version"]
        ),
        (&json!("capture"), &json!("golden"), &Value::Null)
    );
    let all = lab.json(&["task", "list", "--all", "--host", A]);
    let states: Vec<(i64, String)> = all["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["id"].as_i64().unwrap(),
                t["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            (cap_id, "pending".to_string()),
            (first, "cancelled".to_string()),
            (id, "cancelled".to_string())
        ]
    );
    let script = boot(&s, A);
    assert!(
        script.contains(&format!("bootcast.task={cap_id}")),
        "{script}"
    );

    // cancel by host from the CLI; the boot after that is the local disk
    let c = lab.json(&["task", "cancel", "--host", A]);
    assert_eq!(c["cancelled"][0]["id"], cap_id);
    assert_eq!(
        lab.json(&["task", "cancel", "--host", A])["cancelled"],
        json!([])
    );
    let script = boot(&s, A);
    assert!(script.contains("sanboot"), "{script}");
}

#[test]
fn cli_refuses_unknown_hosts_groups_images_and_times_with_the_fix() {
    let lab = Lab::new();
    lab.add(
        "win11",
        &lab.file("v1.img", &common::random_bytes(100_000, 4)),
    );
    // make A known without a server: the database the server would write
    let db = bootcast::db::Db::open(&lab.data().join("bootcast.db")).unwrap();
    bootcast::db::hosts::record_script_boot(
        &mut db.lock(),
        A.parse().unwrap(),
        &Default::default(),
        1,
    )
    .unwrap();

    let err = refused(&lab, &["task", "reimage", "--host", B, "--image", "win11"]);
    assert!(
        err.contains(&format!("no host {B}")) && err.contains("network-boot"),
        "{err}"
    );
    let err = refused(&lab, &["group", "add", "lab", A, B]);
    assert!(err.contains(&format!("no host {B}")), "{err}");
    let err = refused(
        &lab,
        &["task", "reimage", "--group", "lab", "--image", "win11"],
    );
    assert!(err.contains("bootcast group add lab"), "{err}");
    lab.json(&["group", "add", "lab", A]);
    let err = refused(
        &lab,
        &["task", "reimage", "--group", "lab", "--image", "nosuch"],
    );
    assert!(err.contains("no image named \"nosuch\""), "{err}");
    let err = refused(
        &lab,
        &["task", "reimage", "--group", "lab", "--image", "win11@ffff"],
    );
    assert!(err.contains("bootcast image show win11"), "{err}");
    let err = refused(
        &lab,
        &[
            "task", "reimage", "--host", A, "--image", "win11", "--at", "soon",
        ],
    );
    assert!(err.contains("HH:MM"), "{err}");
    let err = refused(
        &lab,
        &[
            "task",
            "reimage",
            "--host",
            A,
            "--image",
            "win11",
            "--at",
            "2001-01-01T00:00:00Z",
        ],
    );
    assert!(err.contains("in the past"), "{err}");
    let err = refused(&lab, &["task", "reimage", "--image", "win11"]);
    assert!(err.contains("--host") && err.contains("--group"), "{err}");
    let err = refused(&lab, &["task", "cancel", "42"]);
    assert!(err.contains("no task 42"), "{err}");
    // errors as JSON with --json
    let out = lab.run(&["--json", "task", "reimage", "--host", B, "--image", "win11"]);
    assert!(!out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["error"].as_str().unwrap().contains("network-boot"), "{v}");
    // nothing was created by the refusals
    assert_eq!(lab.json(&["task", "list", "--all"])["tasks"], json!([]));
    // group remove: a member, then the group
    let g = lab.json(&["group", "remove", "lab", A]);
    assert_eq!(
        (&g["removed"], &g["group"]["hosts"]),
        (&json!(false), &json!([]))
    );
    assert_eq!(lab.json(&["group", "remove", "lab"])["removed"], true);
    assert_eq!(lab.json(&["group", "list"])["groups"], json!([]));
}

/// The host's name reaches the agent with its reimage task (the post-deploy step), unless the
/// image's post-deploy settings turn it off; names are DNS labels and unique (CLI and API).
#[test]
fn host_names_and_the_images_post_deploy_setting_reach_the_agent() {
    let lab = Lab::new();
    fake_bootenv(&lab);
    lab.add(
        "linux",
        &lab.file("l.img", &common::random_bytes(100_000, 3)),
    );
    let s = serve(&lab);
    register(&s, A);
    register(&s, B);

    // CLI: name A; a bad name or B taking A's name is refused with the fix
    let h = lab.json(&["host", "name", A, "room12-pc01"]);
    assert_eq!(h["host"]["name"], "room12-pc01");
    let e = refused(&lab, &["host", "name", B, "pc_01"]);
    assert!(e.contains("invalid host name") && e.contains("a-z"), "{e}");
    let e = refused(&lab, &["host", "name", B, "ROOM12-PC01"]);
    assert!(e.contains("already belongs to") && e.contains(A), "{e}");
    let e = refused(&lab, &["host", "name", "52:54:00:00:99:99", "x"]);
    assert!(e.contains("no host"), "{e}");
    // API: name B; 409 for a taken name, 400 for a bad one, 401 without the token
    let (code, body) = api(
        &s,
        "PUT",
        &format!("/api/v1/hosts/{B}/name"),
        Some(json!({"name": "room12-pc02"})),
    );
    assert_eq!((code, &body["host"]["name"]), (200, &json!("room12-pc02")));
    let (code, body) = api(
        &s,
        "PUT",
        &format!("/api/v1/hosts/{B}/name"),
        Some(json!({"name": "room12-pc01"})),
    );
    assert_eq!(code, 409, "{body}");
    let (code, _) = api(
        &s,
        "PUT",
        &format!("/api/v1/hosts/{B}/name"),
        Some(json!({"name": "-x"})),
    );
    assert_eq!(code, 400);
    let (code, _) = http(
        "PUT",
        &format!("{}/api/v1/hosts/{B}/name", s.url),
        None,
        Some(r#"{"name":"y"}"#),
    );
    assert_eq!(code, 401);
    let list = lab.json(&["host", "list"]);
    let names: Vec<&Value> = list["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| &h["name"])
        .collect();
    assert_eq!(names, [&json!("room12-pc01"), &json!("room12-pc02")]);

    // the reimage hello carries the name...
    let hello = |mac: &str| {
        let script = boot(&s, mac);
        let task: i64 = script
            .split_whitespace()
            .find_map(|w| w.strip_prefix("bootcast.task="))
            .unwrap_or_else(|| panic!("no task in {script}"))
            .parse()
            .unwrap();
        let (code, reply) = agent(
            &s,
            "hello",
            json!({"protocol": bootcast::proto::agent::AGENT_PROTOCOL, "mac": mac, "arch": "x86_64", "firmware": "bios", "boot_time": 1u64,
                   "task": task, "credential": credential_of(&script)}),
        );
        assert_eq!(code, 200, "{reply}");
        reply
    };
    lab.json(&["task", "reimage", "--host", A, "--image", "linux"]);
    let reply = hello(A);
    assert_eq!(
        (&reply["action"], &reply["hostname"]),
        (&json!("reimage"), &json!("room12-pc01"))
    );
    // ...not when the image's post-deploy setting is off (CLI), and again when on (API)
    let pd = lab.json(&["image", "post-deploy", "linux"]);
    assert_eq!(pd["post_deploy"]["hostname"], true);
    let pd = lab.json(&["image", "post-deploy", "linux", "--hostname", "off"]);
    assert_eq!(pd["post_deploy"]["hostname"], false);
    lab.json(&["task", "reimage", "--host", B, "--image", "linux"]);
    let reply = hello(B);
    assert_eq!(reply["action"], "reimage");
    assert!(reply.get("hostname").is_none(), "{reply}");
    let (code, body) = api(
        &s,
        "PUT",
        "/api/v1/images/linux/post-deploy",
        Some(json!({"hostname": true})),
    );
    assert_eq!(code, 200, "{body}");
    let (_, body) = api(&s, "GET", "/api/v1/images/linux/post-deploy", None);
    assert_eq!(body["post_deploy"]["hostname"], true);
    lab.json(&[
        "task",
        "reimage",
        "--host",
        B,
        "--image",
        "linux",
        "--replace",
    ]);
    assert_eq!(hello(B)["hostname"], "room12-pc02");
    assert!(hello(B).get("grow").is_none(), "grow is off by default");
    // the grow setting reaches the agent with the task (CLI `image set`), and goes off again
    let pd = lab.json(&["image", "set", "linux", "--grow", "2"]);
    assert_eq!(pd["post_deploy"], json!({"hostname": true, "grow": 2}));
    assert_eq!(hello(B)["grow"], 2);
    let out = lab.run(&["image", "set", "linux", "--grow", "0"]);
    assert!(!out.status.success());
    assert!(common::stderr(&out).contains("not a partition number"));
    let (code, body) = api(
        &s,
        "PUT",
        "/api/v1/images/linux/post-deploy",
        Some(json!({"hostname": true, "grow": 200})),
    );
    assert_eq!(code, 400, "{body}");
    lab.json(&["image", "set", "linux", "--grow", "off"]);
    assert!(hello(B).get("grow").is_none());
    // a host without a name gets no name
    lab.json(&["host", "name", B, "--clear"]);
    lab.json(&[
        "task",
        "reimage",
        "--host",
        B,
        "--image",
        "linux",
        "--replace",
    ]);
    assert!(hello(B).get("hostname").is_none());
    // what the machine does once its task is over: reboot by default, the group's setting for
    // the group's tasks, the task's own --then over it
    assert!(hello(B).get("then").is_none(), "reboot by default");
    lab.json(&["group", "add", "r9", A, B]);
    lab.json(&["group", "set", "r9", "--then", "poweroff"]);
    lab.json(&[
        "task",
        "reimage",
        "--group",
        "r9",
        "--image",
        "linux",
        "--replace",
    ]);
    assert_eq!(hello(A)["then"], "poweroff");
    lab.json(&[
        "task",
        "reimage",
        "--host",
        B,
        "--image",
        "linux",
        "--replace",
        "--then",
        "stay",
    ]);
    assert_eq!(hello(B)["then"], "stay");
    let e = refused(
        &lab,
        &[
            "task",
            "reimage",
            "--host",
            B,
            "--image",
            "linux",
            "--replace",
            "--then",
            "dance",
        ],
    );
    assert!(e.contains("reboot, poweroff, stay"), "{e}");
}

/// `bootcast task rule`: a rule is listed with its next run (Monday 02:00 on Paris's wall
/// clock), a bad one is refused with the fix, and rm / ack name unknown rules.
#[test]
fn task_rules_show_their_next_run_and_refuse_bad_input() {
    let lab = Lab::new();
    fake_bootenv(&lab);
    let s = serve(&lab);
    register(&s, A);
    register(&s, B);
    lab.json(&["group", "add", "r1", A, B]);
    let added = lab.json(&[
        "task",
        "rule",
        "add",
        "--group",
        "r1",
        "--kind",
        "wake",
        "--every",
        "0 2 * * 1",
        "--tz",
        "Europe/Paris",
    ]);
    let id = added["rule"]["id"].as_i64().unwrap();
    let list = lab.json(&["task", "rule", "list"]);
    let rule = &list["rules"][0];
    assert_eq!(
        (&rule["id"], &rule["group"], &rule["tz"], &rule["failed"]),
        (
            &json!(id),
            &json!("r1"),
            &json!("Europe/Paris"),
            &json!(false)
        ),
        "{list}"
    );
    let next = bootcast::time::parse_rfc3339(rule["next_run"].as_str().unwrap()).unwrap();
    let paris = bootcast::time::Zone::named("Europe/Paris").unwrap();
    let wall = paris.civil(next);
    assert_eq!(
        (wall.weekday(), wall.hour(), wall.minute()),
        (jiff::civil::Weekday::Monday, 2, 0),
        "next run {next} is {wall} in Paris"
    );
    assert!(next > bootcast::time::now_unix());
    assert!(next - bootcast::time::now_unix() <= 7 * 86400 + 3600);

    let rule_add = |more: &[&str]| {
        let mut args = vec!["task", "rule", "add", "--host", A];
        args.extend_from_slice(more);
        refused(&lab, &args)
    };
    assert!(rule_add(&["--kind", "reimage", "--every", "0 2 * * 1"]).contains("needs --image"));
    assert!(
        rule_add(&["--kind", "wake", "--every", "0 26 * * *"]).contains("not a cron expression")
    );
    let e = rule_add(&[
        "--kind",
        "wake",
        "--every",
        "0 2 * * *",
        "--tz",
        "Nowhere/City",
    ]);
    assert!(e.contains("tzdb"), "{e}");
    assert!(refused(&lab, &["task", "rule", "rm", "999"]).contains("no task rule 999"));
    assert!(refused(&lab, &["task", "rule", "ack", "999"]).contains("no task rule 999"));
    lab.json(&["task", "rule", "rm", &id.to_string()]);
    assert_eq!(lab.json(&["task", "rule", "list"])["rules"], json!([]));

    // the same through the API (staff token)
    let rule =
        json!({"kind": "wake", "group": "r1", "every": "30 7 * * 1-5", "tz": "Europe/Paris"});
    let (code, body) = api(&s, "POST", "/api/v1/task-rules", Some(rule.clone()));
    assert_eq!(code, 201, "{body}");
    let id = body["rule"]["id"].as_i64().unwrap();
    assert!(body["rule"]["next_run"].is_string(), "{body}");
    let (code, body) = api(&s, "GET", "/api/v1/task-rules", None);
    assert_eq!((code, &body["rules"][0]["id"]), (200, &json!(id)), "{body}");
    let mut bad = rule.clone();
    bad["every"] = json!("every morning");
    let (code, body) = api(&s, "POST", "/api/v1/task-rules", Some(bad));
    assert!(
        code == 400 && body["error"].as_str().unwrap().contains("cron"),
        "{body}"
    );
    let mut unknown = rule.clone();
    unknown["group"] = json!("nope");
    assert_eq!(api(&s, "POST", "/api/v1/task-rules", Some(unknown)).0, 404);
    assert_eq!(api(&s, "POST", "/api/v1/task-rules/999/ack", None).0, 404);
    assert_eq!(api(&s, "DELETE", "/api/v1/task-rules/999", None).0, 404);
    let (code, _) = api(&s, "DELETE", &format!("/api/v1/task-rules/{id}"), None);
    assert_eq!(code, 200);
    let (code, _) = http("GET", &format!("{}/api/v1/task-rules", s.url), None, None);
    assert_eq!(code, 401, "staff only");
    // waking hosts through the API: queued for the server (no site) to send
    let (code, body) = api(
        &s,
        "POST",
        "/api/v1/hosts/wake",
        Some(json!({"hosts": [A, B], "wave": 1, "spacing": 5})),
    );
    assert_eq!(code, 201, "{body}");
    let at: Vec<i64> = body["wakes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["at"].as_i64().unwrap())
        .collect();
    assert_eq!(at.len(), 2);
    assert_eq!(at[1] - at[0], 5, "one host per wave, 5 s apart");
    assert_eq!(
        api(
            &s,
            "POST",
            "/api/v1/hosts/wake",
            Some(json!({"group": "nope"}))
        )
        .0,
        404
    );
    assert_eq!(
        api(
            &s,
            "POST",
            "/api/v1/hosts/wake",
            Some(json!({"hosts": [A], "group": "r1"}))
        )
        .0,
        400
    );
}

/// An inventory boot (what a calendar rule of kind `inventory` makes): the host boots the agent
/// for its task, the task is done at the hello, and the machine does what the task says.
#[test]
fn an_inventory_task_boots_the_agent_and_is_done_at_its_hello() {
    let lab = Lab::new();
    fake_bootenv(&lab);
    let s = serve(&lab);
    register(&s, A);
    let (code, made) = api(
        &s,
        "POST",
        "/api/v1/tasks",
        Some(json!({"kind": "inventory", "host": A, "then": "poweroff"})),
    );
    assert_eq!(code, 201, "{made}");
    let id = made["tasks"][0]["id"].as_i64().unwrap();
    assert!(made["tasks"][0]["image"].is_null(), "{made}");
    let script = boot(&s, A);
    assert!(script.contains(&format!("bootcast.task={id}")), "{script}");
    let (code, answer) = common::hello(&s, A, &credential_of(&script), Some(id));
    assert_eq!(code, 200, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["action"], "poweroff", "{answer}");
    let t = lab.json(&["task", "list", "--all", "--host", A]);
    assert_eq!(task_of(&t["tasks"], A)["state"], "done", "{t}");
    // multicast makes no sense for it
    let (code, body) = api(
        &s,
        "POST",
        "/api/v1/tasks",
        Some(json!({"kind": "inventory", "host": A, "multicast": {}})),
    );
    assert_eq!(code, 400, "{body}");
}

//! Every staff route against every role: no login 401, a role the route's rule refuses 403,
//! the others the handler's 2xx; an operator's requests about another site's hosts 403; the
//! audit trail has one entry per change, with its user. In-process server, real HTTP.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use bootcast::access::Need;
use bootcast::http::staff::ROUTES;
use common::{http, request, InProcess, Lab};
use serde_json::{json, Value};

use common::staff::{add_user, college, login, lycee, seed, PASSWORD};

/// The server's API token, as scripts use it (the first admin).
fn admin_api(s: &InProcess, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    common::api(s, method, path, body)
}

fn call(
    s: &InProcess,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: &Option<Value>,
) -> (u16, String) {
    if path == "/api/v1/live" {
        // an event stream does not end: its status and its first event only
        let mut req = reqwest::blocking::Client::new().get(format!("{}{path}", s.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let mut resp = req.send().unwrap();
        let code = resp.status().as_u16();
        let mut first = [0u8; 64];
        let n = match code {
            200 => std::io::Read::read(&mut resp, &mut first).unwrap(),
            _ => 0,
        };
        return (code, String::from_utf8_lossy(&first[..n]).into_owned());
    }
    http(
        method,
        &format!("{}{path}", s.url),
        token,
        body.as_ref().map(|b| b.to_string()).as_deref(),
    )
}

#[test]
fn every_staff_route_answers_each_role_as_its_rule_says() {
    let lab = Lab::new();
    let rule = seed(&lab);
    let tokens: BTreeMap<&str, String> = [
        ("admin", add_user(&lab, "root-anne", "admin", None)),
        (
            "operator",
            add_user(&lab, "op-lycee", "operator", Some("lycee")),
        ),
        ("viewer", add_user(&lab, "helpdesk", "viewer", None)),
    ]
    .into_iter()
    .collect();
    let users = [
        ("admin", "root-anne"),
        ("operator", "op-lycee"),
        ("viewer", "helpdesk"),
    ];
    let s = InProcess::start(&lab);
    let version = {
        let (code, v) = admin_api(&s, "GET", "/api/v1/images", None);
        assert_eq!(code, 200);
        v["images"][0]["versions"][0]["version"]
            .as_str()
            .or_else(|| v["images"][0]["version"].as_str())
            .unwrap_or_else(|| panic!("a version in {v}"))
            .to_string()
    };
    let mut fresh = 0u32;
    let mut next_host = 5u32; // lycee hosts 5-20 are free for replace, 21-40 wait for approval
    let mut next_pending = 21u32;
    let mut changes: Vec<(String, String)> = Vec::new(); // (user, "METHOD path") expected in the trail

    for &(method, route, need) in ROUTES {
        for role in ["admin", "operator", "viewer"] {
            fresh += 1;
            // a path and body that a caller allowed gets a 2xx with
            let (path, body): (String, Option<Value>) = match (method, route) {
                ("GET", "/api/v1/me") => ("/api/v1/me".into(), None),
                ("POST", "/api/v1/logout") => ("/api/v1/logout".into(), None),
                ("POST", "/api/v1/me/password") => (
                    route.into(),
                    Some(json!({ "old_password": PASSWORD, "password": PASSWORD })),
                ),
                ("POST", "/api/v1/me/tokens") => (route.into(), Some(json!({ "label": "t" }))),
                ("GET", "/api/v1/users") | ("GET", "/api/v1/audit") => (route.into(), None),
                ("POST", "/api/v1/users") => (
                    route.into(),
                    Some(
                        json!({ "name": format!("new{fresh}"), "role": "viewer", "password": PASSWORD }),
                    ),
                ),
                ("DELETE", "/api/v1/users/{name}") => {
                    let name = format!("gone{fresh}");
                    let (code, _) = admin_api(
                        &s,
                        "POST",
                        "/api/v1/users",
                        Some(json!({ "name": name, "role": "viewer", "password": PASSWORD })),
                    );
                    assert_eq!(code, 201);
                    changes.push(("admin".into(), "POST /api/v1/users".into()));
                    (format!("/api/v1/users/{name}"), None)
                }
                ("GET", "/api/v1/hosts") => ("/api/v1/hosts?site=lycee".into(), None),
                ("GET", r) if r.starts_with("/api/v1/hosts/{mac}") => {
                    (r.replace("{mac}", &lycee(1)), None)
                }
                ("PUT", "/api/v1/hosts/{mac}/name") => (
                    route.replace("{mac}", &lycee(2)),
                    Some(json!({ "name": format!("l-pc{fresh}") })),
                ),
                ("POST", "/api/v1/hosts/{mac}/replace") => {
                    let (old, new) = (lycee(next_host), lycee(next_host + 1));
                    next_host += 2;
                    (route.replace("{mac}", &old), Some(json!({ "new": new })))
                }
                ("POST", "/api/v1/hosts/{mac}/approve") => {
                    let mac = lycee(next_pending);
                    next_pending += 1;
                    (route.replace("{mac}", &mac), None)
                }
                ("POST", "/api/v1/hosts/wake") => {
                    (route.into(), Some(json!({ "hosts": [lycee(3)] })))
                }
                ("GET", "/api/v1/images") => (route.into(), None),
                ("POST", "/api/v1/images/{name}/{version}/approve") => (
                    route
                        .replace("{name}", "demo")
                        .replace("{version}", &version),
                    None,
                ),
                ("GET", "/api/v1/images/{name}/post-deploy") => {
                    (route.replace("{name}", "demo"), None)
                }
                ("PUT", "/api/v1/images/{name}/post-deploy") => (
                    route.replace("{name}", "demo"),
                    Some(json!({ "hostname": true })),
                ),
                ("POST", "/api/v1/bulk") => (
                    route.into(),
                    Some(json!({ "action": "wake", "hosts": [lycee(3), lycee(4)] })),
                ),
                ("POST", "/api/v1/pushes") => (
                    route.into(),
                    Some(json!({ "images": ["demo"], "sites": ["lycee"] })),
                ),
                // the admin's push, made above (ROUTES lists POST before these)
                ("POST", "/api/v1/pushes/{id}/{action}") => (
                    route.replace("{id}", "1").replace("{action}", "pause"),
                    None,
                ),
                ("GET", "/api/v1/pushes/{id}/progress") => (route.replace("{id}", "1"), None),
                ("GET", _) => (route.into(), None),
                ("POST", "/api/v1/tasks") => (
                    route.into(),
                    Some(
                        json!({ "kind": "reimage", "host": lycee(4), "image": "demo", "replace": true }),
                    ),
                ),
                ("DELETE", "/api/v1/tasks/{id}") => {
                    let (code, t) = admin_api(
                        &s,
                        "POST",
                        "/api/v1/tasks",
                        Some(json!({ "kind": "inventory", "host": lycee(3), "replace": true })),
                    );
                    assert_eq!(code, 201, "{t}");
                    changes.push(("admin".into(), "POST /api/v1/tasks".into()));
                    (format!("/api/v1/tasks/{}", t["tasks"][0]["id"]), None)
                }
                ("POST", "/api/v1/task-rules") => (
                    route.into(),
                    Some(json!({ "kind": "wake", "group": "lycee-r1", "every": "0 2 * * 1" })),
                ),
                ("DELETE", "/api/v1/task-rules/{id}") | ("POST", "/api/v1/task-rules/{id}/ack") => {
                    let (code, r) = admin_api(
                        &s,
                        "POST",
                        "/api/v1/task-rules",
                        Some(json!({ "kind": "wake", "group": "lycee-r1", "every": "0 3 * * 1" })),
                    );
                    assert_eq!(code, 201, "{r}");
                    changes.push(("admin".into(), "POST /api/v1/task-rules".into()));
                    (route.replace("{id}", &r["rule"]["id"].to_string()), None)
                }
                ("POST", "/api/v1/registration-rules") => (
                    route.into(),
                    Some(json!({ "site": "lycee", "group": "lycee-r1" })),
                ),
                ("DELETE", "/api/v1/registration-rules/{id}") => {
                    let (code, r) = admin_api(
                        &s,
                        "POST",
                        "/api/v1/registration-rules",
                        Some(json!({ "site": "lycee", "model": "X*" })),
                    );
                    assert_eq!(code, 201, "{r}");
                    changes.push(("admin".into(), "POST /api/v1/registration-rules".into()));
                    (route.replace("{id}", &r["rule"]["id"].to_string()), None)
                }
                _ => panic!("no case for {method} {route}: add one to this test"),
            };
            let token = &tokens[role];
            // without a login: 401, whatever the role of the route
            if role == "admin" {
                let (code, text) = call(&s, None, method, &path, &body);
                assert_eq!(code, 401, "{method} {path} without a login: {text}");
                let (code, _) = call(&s, Some("bct_0000"), method, &path, &body);
                assert_eq!(code, 401, "{method} {path} with an unknown token");
            }
            let (code, text) = call(&s, Some(token), method, &path, &body);
            let allowed = matches!(
                (role, need),
                ("admin", _) | (_, Need::Read) | ("operator", Need::SiteChange)
            );
            if allowed {
                assert!(
                    (200..300).contains(&code),
                    "{role} {method} {path}: {code} {text}"
                );
            } else {
                assert_eq!(code, 403, "{role} {method} {path}: {text}");
            }
            if method != "GET" {
                let user = users.iter().find(|(r, _)| *r == role).unwrap().1;
                changes.push((user.into(), format!("{method} {path}")));
            }
        }
    }

    // an operator and another site's hosts: 403 on every route that names one
    let op = Some(tokens["operator"].as_str());
    let other = college(1);
    for (method, path, body) in [
        ("GET", format!("/api/v1/hosts/{other}"), None),
        ("GET", format!("/api/v1/hosts/{other}/inventory"), None),
        (
            "GET",
            format!("/api/v1/hosts/{other}/inventory/history"),
            None,
        ),
        ("GET", "/api/v1/hosts?site=college".into(), None),
        (
            "PUT",
            format!("/api/v1/hosts/{other}/name"),
            Some(json!({ "name": "x" })),
        ),
        (
            "POST",
            format!("/api/v1/hosts/{other}/replace"),
            Some(json!({ "new": college(2) })),
        ),
        (
            "POST",
            format!("/api/v1/hosts/{}/approve", college(21)),
            None,
        ),
        (
            "POST",
            "/api/v1/hosts/wake".into(),
            Some(json!({ "hosts": [other] })),
        ),
        (
            "POST",
            "/api/v1/hosts/wake".into(),
            Some(json!({ "group": "college-r1" })),
        ),
        (
            "POST",
            "/api/v1/tasks".into(),
            Some(json!({ "kind": "reimage", "group": "college-r1", "image": "demo" })),
        ),
        (
            "POST",
            "/api/v1/tasks".into(),
            Some(json!({ "kind": "reimage", "host": other, "image": "demo" })),
        ),
        (
            "POST",
            "/api/v1/task-rules".into(),
            Some(json!({ "kind": "wake", "group": "college-r1", "every": "0 2 * * 1" })),
        ),
        (
            "POST",
            "/api/v1/registration-rules".into(),
            Some(json!({ "site": "college", "group": "college-r1" })),
        ),
        (
            "POST",
            "/api/v1/registration-rules".into(),
            Some(json!({ "group": "lycee-r1" })),
        ),
        ("DELETE", format!("/api/v1/registration-rules/{rule}"), None),
    ] {
        let (code, text) = call(&s, op, method, &path, &body);
        // the seed's approval rule is of the lycee: the operator may remove it; the rest is
        // the college's
        if path.ends_with(&format!("/registration-rules/{rule}")) {
            assert_eq!(code, 200, "{method} {path}: {text}");
            changes.push(("op-lycee".into(), format!("{method} {path}")));
            continue;
        }
        assert_eq!(code, 403, "operator {method} {path}: {text}");
        assert!(text.contains("not one of your sites"), "{text}");
        if method != "GET" {
            changes.push(("op-lycee".into(), format!("{method} {path}")));
        }
    }
    // and in the lists: only the lycee
    let get = |path: &str| -> Value {
        let (code, text) = call(&s, op, "GET", path, &None);
        assert_eq!(code, 200, "{path}: {text}");
        serde_json::from_str(&text).unwrap()
    };
    let hosts = get("/api/v1/hosts?limit=1000");
    // 40 lycee hosts, 2 retired by the replacements above (operator's and admin's)
    assert_eq!(hosts["total"], 38, "an operator's host list");
    assert!(hosts["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .all(|h| h["site"] == "lycee"));
    let sites = get("/api/v1/sites");
    assert_eq!(sites["sites"].as_array().unwrap().len(), 1, "{sites}");
    let groups = get("/api/v1/groups");
    let names: Vec<&str> = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["lycee-r1"]);
    assert_eq!(groups["total"], 1);
    assert_eq!(
        call(&s, op, "GET", "/api/v1/groups?site=college", &None).0,
        403
    );
    // the admin's, by site and paged
    let (_, by_site) = admin_api(&s, "GET", "/api/v1/groups?site=college", None);
    assert_eq!(by_site["groups"][0]["name"], "college-r1", "{by_site}");
    assert_eq!(by_site["total"], 1);
    let (_, first) = admin_api(&s, "GET", "/api/v1/groups?limit=1", None);
    assert_eq!(
        (&first["total"], &first["next"]),
        (&json!(2), &json!("college-r1"))
    );
    let (_, second) = admin_api(&s, "GET", "/api/v1/groups?limit=1&after=college-r1", None);
    assert_eq!(second["groups"][0]["name"], "lycee-r1");
    assert_eq!(second["next"], Value::Null);
    let tasks = get("/api/v1/tasks");
    assert!(!tasks["tasks"].as_array().unwrap().is_empty());
    assert!(
        tasks["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["mac"].as_str().unwrap().starts_with("52:54:00:21:01")),
        "{tasks}"
    );
    // multicast sessions: the operator's list has the lycee's, not the college's
    let (code, t) = admin_api(
        &s,
        "POST",
        "/api/v1/tasks",
        Some(json!({ "kind": "reimage", "group": "college-r1", "image": "demo", "multicast": {} })),
    );
    assert_eq!(code, 201, "{t}");
    changes.push(("admin".into(), "POST /api/v1/tasks".into()));
    let (_, all) = admin_api(&s, "GET", "/api/v1/multicast", None);
    let college_session = &all["sessions"][0];
    assert_eq!(college_session["group"], "college-r1", "{all}");
    let n = t["tasks"].as_array().unwrap().len();
    assert_eq!(
        (
            &college_session["tasks"],
            &college_session["waiting"],
            &college_session["joined"],
            &college_session["done"],
            &college_session["dropped"]
        ),
        (&json!(n), &json!(n), &json!(0), &json!(0), &json!(0)),
        "{all}"
    );
    let mine = get("/api/v1/multicast");
    assert!(
        mine["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["group"] != "college-r1"),
        "{mine}"
    );
    // a push's curve: no heartbeat yet, so no samples; an unknown push is a 404
    let curve = get("/api/v1/pushes/1/progress");
    assert_eq!((&curve["push"], &curve["sites"]), (&json!(1), &json!([])));
    assert_eq!(
        call(&s, op, "GET", "/api/v1/pushes/99/progress", &None).0,
        404
    );
    let viewer_hosts = serde_json::from_str::<Value>(
        &call(&s, Some(&tokens["viewer"]), "GET", "/api/v1/hosts", &None).1,
    )
    .unwrap();
    assert_eq!(
        viewer_hosts["total"], 78,
        "a viewer's host list is every site's"
    );

    // the OpenAPI document lists every staff route with its role
    let (_, doc) = admin_api(&s, "GET", "/api/v1/openapi.json", None);
    assert_eq!(doc["openapi"], "3.0.3");
    for &(method, route, need) in ROUTES {
        let op = &doc["paths"][route][method.to_ascii_lowercase()];
        let role = match need {
            Need::Read => "viewer",
            Need::SiteChange => "operator",
            Need::Admin => "admin",
        };
        assert_eq!(op["x-bootcast-role"], role, "{method} {route} in {doc}");
    }

    // what staff watch, in /metrics
    let (code, metrics) = http("GET", &format!("{}/metrics", s.url), None, None);
    assert_eq!(code, 200);
    assert!(
        metrics.contains("bootcast_hosts{site=\"lycee\"} 38"),
        "{metrics}"
    );
    assert!(metrics.contains("bootcast_hosts{site=\"college\"} 40"));
    let pending: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("bootcast_tasks{state=\"pending\"} "))
        .expect("pending tasks in /metrics")
        .parse()
        .unwrap();
    assert!(pending >= 2, "the tasks made above: {pending}");
    // the admin's push above: the lycee's relay still has it all to fetch, the college nothing
    assert!(
        metrics.contains("bootcast_push_bytes_left{site=\"college\"} 0"),
        "{metrics}"
    );
    assert!(!metrics.contains("bootcast_push_bytes_left{site=\"lycee\"} 0\n"));
    assert!(metrics.contains("bootcast_push_bytes_left{site=\"lycee\"} "));

    // the example Grafana dashboard asks only for what /metrics has
    let grafana = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/grafana/bootcast.json"),
    )
    .unwrap();
    let grafana: Value = serde_json::from_str(&grafana).unwrap();
    for p in grafana["panels"].as_array().unwrap() {
        let expr = p["targets"][0]["expr"].as_str().unwrap();
        let name = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .find(|w| w.starts_with("bootcast_"))
            .unwrap();
        // (a family without samples yet still has its TYPE line)
        let family = name.trim_end_matches("_total").trim_end_matches("_bucket");
        assert!(
            metrics.contains(&format!("# TYPE {family} "))
                || metrics.contains(&format!("# TYPE {name} ")),
            "the Grafana panel {} asks for {name}, which /metrics lacks",
            p["title"]
        );
    }

    // the trail: every change above, with its user, in order
    let (code, audit) = admin_api(&s, "GET", "/api/v1/audit?limit=1000", None);
    assert_eq!(code, 200);
    let mut trail: Vec<(String, String)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["from"] != "cli")
        .map(|e| {
            (
                e["user"].as_str().unwrap().to_string(),
                e["action"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    trail.reverse();
    let trail_no_query: Vec<(String, String)> = trail.clone();
    let expected: Vec<(String, String)> = changes
        .iter()
        .map(|(u, a)| (u.clone(), a.split('?').next().unwrap().to_string()))
        .collect();
    assert_eq!(
        trail_no_query, expected,
        "the audit trail is every change, in order, with its user"
    );
    // secrets never reach it
    assert!(
        !audit.to_string().contains(PASSWORD),
        "a password in the trail"
    );
    // the CLI's changes are in it too (user add, user token), by the one who ran them
    let (_, cli) = admin_api(&s, "GET", "/api/v1/audit?q=user%20add&limit=10", None);
    assert_eq!(cli["total"], 3, "{cli}");
    assert!(cli["entries"][0]["user"]
        .as_str()
        .unwrap()
        .starts_with("cli:"));
    // a non-admin reads only their own entries
    let (_, own) = call(&s, op, "GET", "/api/v1/audit?limit=1000", &None);
    let own: Value = serde_json::from_str(&own).unwrap();
    assert!(own["entries"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["user"] == "op-lycee"));
    assert!(own["total"].as_i64().unwrap() > 5);
    // CSV export
    let (code, head, csv) = request(
        "GET",
        &format!("{}/api/v1/audit?format=csv", s.url),
        &[("authorization", &format!("Bearer {}", tokens["admin"]))],
        None,
    );
    assert_eq!(code, 200);
    assert!(head["content-type"].starts_with("text/csv"));
    let csv = String::from_utf8(csv).unwrap();
    assert!(csv.starts_with("id,time,user,from,action,status,detail\r\n"));
    assert_eq!(
        csv.lines().count() as i64,
        audit["total"].as_i64().unwrap() + 1
    );
}

#[test]
fn browser_sessions_need_their_csrf_token_and_end_at_logout() {
    let lab = Lab::new();
    seed(&lab);
    add_user(&lab, "op-lycee", "operator", Some("lycee"));
    let s = InProcess::start(&lab);
    let login = |user: &str, password: &str| login(&s.url, user, password);
    let (code, _, body) = login("op-lycee", "wrong password!");
    assert_eq!(code, 401, "{body}");
    let (code, _, _) = login("nobody", PASSWORD);
    assert_eq!(code, 401);
    let (code, cookie, body) = login("op-lycee", PASSWORD);
    assert_eq!(code, 200, "{body}");
    let cookie = cookie.unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let cookie = cookie.split(';').next().unwrap().to_string();
    let me: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (me["role"].as_str(), me["sites"][0].as_str()),
        (Some("operator"), Some("lycee"))
    );
    let csrf = me["csrf"].as_str().unwrap().to_string();
    let with = |method: &str, path: &str, csrf: Option<&str>, body: Option<Value>| {
        let mut h = vec![
            ("cookie", cookie.as_str()),
            ("content-type", "application/json"),
        ];
        if let Some(c) = csrf {
            h.push(("x-csrf-token", c));
        }
        let (code, _, b) = request(
            method,
            &format!("{}{path}", s.url),
            &h,
            body.map(|b| b.to_string().into_bytes()),
        );
        (code, String::from_utf8_lossy(&b).into_owned())
    };
    assert_eq!(with("GET", "/api/v1/hosts", None, None).0, 200);
    let task = json!({ "kind": "inventory", "host": lycee(1) });
    let (code, text) = with("POST", "/api/v1/tasks", None, Some(task.clone()));
    assert_eq!(code, 403, "{text}");
    assert!(text.contains("x-csrf-token"), "{text}");
    assert_eq!(
        with("POST", "/api/v1/tasks", Some("0000"), Some(task.clone())).0,
        403
    );
    let (code, text) = with("POST", "/api/v1/tasks", Some(&csrf), Some(task));
    assert_eq!(code, 201, "{text}");
    assert_eq!(with("POST", "/api/v1/logout", Some(&csrf), None).0, 200);
    let (code, text) = with("GET", "/api/v1/hosts", None, None);
    assert_eq!(code, 401, "the session is over: {text}");
    // the trail names the login, the refusals and the task
    let (_, audit) = common::api(&s, "GET", "/api/v1/audit?user=op-lycee", None);
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"login") && actions.contains(&"login refused"),
        "{actions:?}"
    );
    assert!(
        actions.contains(&"POST /api/v1/tasks") && actions.contains(&"POST /api/v1/logout"),
        "{actions:?}"
    );
}

/// Guessing passwords: after 5 failures an account waits, even for the right password, and
/// other accounts do not; after 20 failures from one address, every login from it waits.
#[test]
fn failed_logins_make_the_account_then_the_address_wait() {
    use bootcast::http::staff::{LOGIN_FAILURES_PER_ADDRESS, LOGIN_FAILURES_PER_USER};
    let lab = Lab::new();
    seed(&lab);
    add_user(&lab, "op-lycee", "operator", Some("lycee"));
    add_user(&lab, "op-college", "operator", Some("college"));
    let s = InProcess::start(&lab);
    let login = |user: &str, password: &str| login(&s.url, user, password);
    for _ in 0..LOGIN_FAILURES_PER_USER {
        assert_eq!(login("op-lycee", "guess guess guess").0, 401);
    }
    let (code, cookie, body) = login("op-lycee", PASSWORD);
    assert_eq!(code, 429, "{body}");
    assert!(cookie.is_none());
    assert!(
        body.contains("failed logins") && body.contains("user passwd op-lycee"),
        "{body}"
    );
    assert_eq!(login("op-college", PASSWORD).0, 200, "another account");
    // the refused attempts are in the trail (the throttled one as 429)
    let (_, audit) = common::api(&s, "GET", "/api/v1/audit?user=op-lycee", None);
    let statuses: Vec<i64> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["status"].as_i64().unwrap())
        .collect();
    assert_eq!(
        statuses.iter().filter(|c| **c == 401).count() as u32,
        LOGIN_FAILURES_PER_USER
    );
    assert_eq!(statuses[0], 429, "{audit}");
    // names tried one after the other from one address
    for k in LOGIN_FAILURES_PER_USER..LOGIN_FAILURES_PER_ADDRESS {
        assert_eq!(login(&format!("guess{k}"), "x-x-x-x-x").0, 401);
    }
    let (code, _, body) = login("op-college", PASSWORD);
    assert_eq!(code, 429, "{body}");
    assert!(body.contains("from 127.0.0.1"), "{body}");
}

/// A real OpenLDAP (Debian's slapd) in a temporary directory on a loopback port: the people
/// and groups of a region's directory. Killed (by PID) when dropped.
struct Slapd {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Slapd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const BASE: &str = "dc=region,dc=test";

impl Slapd {
    /// `None` (with a SKIP line) when slapd is not installed.
    fn start() -> Option<Slapd> {
        let slapd = ["/usr/sbin/slapd", "/usr/local/sbin/slapd"]
            .into_iter()
            .find(|p| Path::new(p).exists());
        let (Some(slapd), true) = (slapd, Path::new("/usr/sbin/slapadd").exists()) else {
            common::skip(
                "ldap_login",
                "slapd is not installed (Debian packages slapd, ldap-utils)",
            );
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("db")).unwrap();
        let conf = format!(
            "include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
pidfile {d}/slapd.pid
modulepath /usr/lib/ldap
moduleload back_mdb
database mdb
suffix \"{BASE}\"
rootdn \"cn=admin,{BASE}\"
rootpw not-used-by-the-test
directory {d}/db
maxsize 10485760
access to attrs=userPassword by anonymous auth by * none
access to * by users read by * none
",
            d = d.display()
        );
        std::fs::write(d.join("slapd.conf"), conf).unwrap();
        let person = |uid: &str, pw: &str| {
            format!(
                "dn: uid={uid},ou=people,{BASE}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\nsn: {uid}\nuserPassword: {pw}\n\n"
            )
        };
        let group = |cn: &str, members: &[&str]| {
            let mut g =
                format!("dn: cn={cn},ou=groups,{BASE}\nobjectClass: groupOfNames\ncn: {cn}\n");
            for m in members {
                g += &format!("member: uid={m},ou=people,{BASE}\n");
            }
            g + "\n"
        };
        let ldif = format!(
            "dn: {BASE}\nobjectClass: dcObject\nobjectClass: organization\ndc: region\no: Region\n\n\
             dn: ou=people,{BASE}\nobjectClass: organizationalUnit\nou: people\n\n\
             dn: ou=groups,{BASE}\nobjectClass: organizationalUnit\nou: groups\n\n{}{}{}{}",
            person("marie", "marie's directory password"),
            person("paul", "paul's directory password"),
            group("it-lycee", &["marie"]),
            group("students", &["paul"]),
        );
        std::fs::write(d.join("region.ldif"), ldif).unwrap();
        let out = std::process::Command::new("/usr/sbin/slapadd")
            .arg("-f")
            .arg(d.join("slapd.conf"))
            .arg("-l")
            .arg(d.join("region.ldif"))
            .output()
            .unwrap();
        assert!(out.status.success(), "slapadd: {}", common::stderr(&out));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("ldap://127.0.0.1:{port}");
        let child = std::process::Command::new(slapd)
            .arg("-f")
            .arg(d.join("slapd.conf"))
            .args(["-h", &format!("{url}/"), "-d", "0"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let s = Slapd {
            child,
            url,
            _dir: dir,
        };
        common::wait_for("slapd to listen", 30, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        Some(s)
    }
}

#[test]
fn directory_users_log_in_with_the_role_and_sites_of_their_groups() {
    let Some(ldap) = Slapd::start() else { return };
    let lab = Lab::new();
    seed(&lab);
    let config = format!(
        "[tftp]\nlisten = \"off\"\n\
         [ldap]\nurl = \"{}\"\nbind_dn = \"uid={{user}},ou=people,{BASE}\"\ngroup_base = \"ou=groups,{BASE}\"\n\
         [[ldap.map]]\ngroup = \"cn=it-lycee,ou=groups,{BASE}\"\nrole = \"operator\"\nsites = [\"lycee\"]\n\
         [[ldap.map]]\ngroup = \"cn=dsi,ou=groups,{BASE}\"\nrole = \"admin\"\n",
        ldap.url
    );
    let s = InProcess::start_with(&lab.data(), &config);
    let login = |user: &str, password: &str| login(&s.url, user, password);
    // marie, of the lycee's IT group: an operator of the lycee
    let (code, cookie, body) = login("marie", "marie's directory password");
    assert_eq!(code, 200, "{body}");
    let me: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(me["role"], "operator");
    assert_eq!(me["sites"], json!(["lycee"]));
    let cookie = cookie.unwrap().split(';').next().unwrap().to_string();
    let get = |path: &str| {
        let (code, _, b) = request(
            "GET",
            &format!("{}{path}", s.url),
            &[("cookie", &cookie)],
            None,
        );
        (code, String::from_utf8_lossy(&b).into_owned())
    };
    let (code, hosts) = get("/api/v1/hosts?limit=1000");
    assert_eq!(code, 200);
    let hosts: Value = serde_json::from_str(&hosts).unwrap();
    assert_eq!(hosts["total"], 40);
    assert!(hosts["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .all(|h| h["site"] == "lycee"));
    let (code, text) = get(&format!("/api/v1/hosts/{}", college(1)));
    assert_eq!(code, 403, "{text}");
    // a wrong password, an empty one (an anonymous bind to the directory), a user of no
    // mapped group, a user the directory does not know
    let (code, _, body) = login("marie", "not her password");
    assert_eq!(code, 401, "{body}");
    let (code, _, body) = login("marie", "");
    assert_eq!(code, 401, "{body}");
    let (code, cookie, body) = login("paul", "paul's directory password");
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("no directory group"), "{body}");
    assert!(cookie.is_none());
    let (code, _, _) = login("nobody", "whatever password");
    assert_eq!(code, 401);
    // marie is listed as a directory user; the trail has her login and the refusals
    let (_, users) = common::api(&s, "GET", "/api/v1/users", None);
    let marie = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "marie")
        .unwrap()
        .clone();
    assert_eq!(
        (marie["source"].as_str(), marie["role"].as_str()),
        (Some("ldap"), Some("operator"))
    );
    let (_, audit) = common::api(&s, "GET", "/api/v1/audit?limit=100", None);
    let lines: Vec<String> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["user"].as_str().unwrap(),
                e["action"].as_str().unwrap()
            )
        })
        .collect();
    for want in [
        "marie login",
        "marie login refused",
        "paul login refused",
        "nobody login refused",
    ] {
        assert!(lines.iter().any(|l| l == want), "{want} in {lines:?}");
    }
    common::say(&format!(
        "LDAP: marie logged in as operator of lycee through {}",
        ldap.url
    ));
}

#[test]
fn bulk_actions_on_many_hosts_or_several_sites_ask_for_the_count() {
    let lab = Lab::new();
    seed(&lab);
    let op = add_user(&lab, "op-lycee", "operator", Some("lycee"));
    let s = InProcess::start(&lab);
    let bulk = |token: Option<&str>, body: Value| -> (u16, Value) {
        let (code, text) = call(&s, token, "POST", "/api/v1/bulk", &Some(body));
        (code, serde_json::from_str(&text).unwrap())
    };
    let many: Vec<String> = (1..=26).map(lycee).collect();
    // 26 hosts: more than a room; refused until the count is repeated
    let (code, v) = bulk(Some(&op), json!({ "action": "inventory", "hosts": many }));
    assert_eq!(code, 409, "{v}");
    assert_eq!(v["confirm"], 26);
    assert!(
        v["error"].as_str().unwrap().contains("\"confirm\": 26"),
        "{v}"
    );
    let (code, _) = bulk(
        Some(&op),
        json!({ "action": "inventory", "hosts": many, "confirm": 25 }),
    );
    assert_eq!(code, 409, "a wrong count is no confirmation");
    let (code, v) = bulk(
        Some(&op),
        json!({ "action": "inventory", "hosts": many, "confirm": 26 }),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["done"].as_array().unwrap().len(), 26);
    assert_eq!(v["failed"].as_array().unwrap().len(), 0);
    // each host's outcome: a second inventory task is refused per host, not hidden
    let (code, v) = bulk(
        Some(&op),
        json!({ "action": "inventory", "hosts": [lycee(1), lycee(30)] }),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["failed"][0]["mac"], lycee(1));
    assert_eq!(v["done"][0]["mac"], lycee(30));
    // an operator's selection with another site's host: 403, nothing done
    let (code, v) = bulk(
        Some(&op),
        json!({ "action": "cancel", "hosts": [lycee(1), college(1)] }),
    );
    assert_eq!(code, 403, "{v}");
    // two sites (the admin): a confirmation even for two hosts
    let admin = s.token.clone();
    let two = json!({ "action": "wake", "hosts": [lycee(2), college(2)] });
    let (code, v) = bulk(admin.as_deref(), two.clone());
    assert_eq!(code, 409, "{v}");
    assert_eq!(v["sites"], json!(["lycee", "college"]));
    let mut confirmed = two;
    confirmed["confirm"] = json!(2);
    let (code, v) = bulk(admin.as_deref(), confirmed);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["done"].as_array().unwrap().len(), 2);
    // the open tasks, paged: 27, newest first, each once
    let (mut seen, mut path) = (Vec::new(), "/api/v1/tasks?site=lycee&limit=10".to_string());
    loop {
        let (code, text) = call(&s, Some(&op), "GET", &path, &None);
        assert_eq!(code, 200, "{text}");
        let page: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(page["total"], 27, "{page}");
        seen.extend(
            page["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["id"].as_i64().unwrap()),
        );
        match page["next"].as_i64() {
            Some(n) => path = format!("/api/v1/tasks?site=lycee&limit=10&before={n}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 27);
    assert!(
        seen.windows(2).all(|w| w[0] > w[1]),
        "newest first, no repeat: {seen:?}"
    );
    let (code, _) = call(&s, Some(&op), "GET", "/api/v1/tasks?site=college", &None);
    assert_eq!(code, 403);
    let (code, _) = call(&s, Some(&op), "GET", "/api/v1/tasks?state=lost", &None);
    assert_eq!(code, 400);

    // cancel the 26 + 1 inventory tasks
    let mut all: Vec<String> = many.clone();
    all.push(lycee(30));
    let (code, v) = bulk(
        Some(&op),
        json!({ "action": "cancel", "hosts": all, "confirm": 27 }),
    );
    assert_eq!(code, 200, "{v}");
    let cancelled: usize = v["done"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["cancelled"].as_array().unwrap().len())
        .sum();
    assert_eq!(cancelled, 27);
    let (code, v) = bulk(
        Some(&op),
        json!({ "action": "format", "hosts": [lycee(1)] }),
    );
    assert_eq!(code, 400, "{v}");
    // every attempt is in the trail, refused or not, with its user
    let (_, audit) = common::api(&s, "GET", "/api/v1/audit?q=bulk&limit=100", None);
    let statuses: Vec<(String, i64)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|e| {
            (
                e["user"].as_str().unwrap().to_string(),
                e["status"].as_i64().unwrap(),
            )
        })
        .collect();
    let op_ = |c| ("op-lycee".to_string(), c);
    let ad_ = |c| ("admin".to_string(), c);
    assert_eq!(
        statuses,
        [
            op_(409),
            op_(409),
            op_(200),
            op_(200),
            op_(403),
            ad_(409),
            ad_(200),
            op_(200),
            op_(400)
        ]
    );

    // the command line: the same guard, with --confirm N
    let out = lab.run(&["task", "bulk", "wake", "--site", "college"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("40 hosts") && err.contains("--confirm 40"),
        "{err}"
    );
    let v = lab.json(&[
        "task",
        "bulk",
        "wake",
        "--site",
        "college",
        "--confirm",
        "40",
    ]);
    assert_eq!(v["done"].as_array().unwrap().len(), 40, "{v}");
    let v = lab.json(&[
        "task",
        "bulk",
        "inventory",
        "--group",
        "lycee-r1",
        "--host",
        &lycee(30),
    ]);
    assert_eq!(
        (
            v["done"].as_array().unwrap().len(),
            v["failed"].as_array().unwrap().len()
        ),
        (5, 0),
        "{v}"
    );
    let (_, audit) = common::api(&s, "GET", "/api/v1/audit?q=task%20bulk&limit=10", None);
    assert_eq!(audit["total"], 2, "the two changes made: {audit}");
}

//! `/metrics` of the server's router and of a relay's, in-process (no binary, no network):
//! every metric name README lists is served, and each request lands in the latency histogram
//! `bootcast_http_request_duration_seconds{route,method,status}`.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use tower::ServiceExt;

use bootcast::config::{IncompletePolicy, RelayConfig};
use bootcast::db::Db;
use bootcast::http::{chunks::ChunkService, AppState};
use bootcast::relay::Relay;

const README: &str = include_str!("../README.md");

/// The `bootcast_*` names in `text` (a name stops at the first character not in `[a-z0-9_]`).
fn names_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("bootcast_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

/// The names README lists for the server's `/metrics` (its row in the routes table, and the
/// "request counters" it names in a word).
fn readme_server_names() -> BTreeSet<String> {
    let row = README
        .lines()
        .find(|l| l.starts_with("| `GET /metrics` |"))
        .expect("README's row for GET /metrics");
    let mut names = names_in(row);
    assert!(names.len() >= 9, "{names:?}");
    for n in [
        "bootcast_chunk_requests_total",
        "bootcast_chunk_batch_requests_total",
        "bootcast_manifests_served_total",
    ] {
        names.insert(n.to_string());
    }
    names
}

/// The names README lists for a relay (its "Relay metrics" paragraph, the shorthands `_x`
/// written out).
fn readme_relay_names() -> BTreeSet<String> {
    let start = README
        .find("Relay metrics (`GET /metrics` on the relay")
        .expect("README's relay metrics paragraph");
    let para = &README[start..];
    let para = &para[..para.find("\n\n").unwrap_or(para.len())];
    let mut names = names_in(para);
    assert!(names.len() >= 15, "{names:?}");
    for (short, n) in [
        ("`_pulled_total`", "bootcast_relay_manifests_pulled_total"),
        ("`_bytes_total`", "bootcast_relay_push_bytes_total"),
        ("`_fetched_bytes`", "bootcast_relay_push_fetched_bytes"),
        ("`_rate_bytes`", "bootcast_relay_push_rate_bytes"),
    ] {
        assert!(para.contains(short), "README's relay paragraph: {para}");
        names.insert(n.to_string());
    }
    names
}

/// What central reads from its database at each scrape (a relay has none of it).
const FLEET: [&str; 4] = [
    "bootcast_tasks",
    "bootcast_hosts",
    "bootcast_push_bytes_left",
    "bootcast_relay_heartbeat_age_seconds",
];

/// Every sample's metric name in a Prometheus text answer.
fn sample_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l[..l.find(['{', ' ']).unwrap_or(l.len())].to_string())
        .collect()
}

/// Asserts that every name of `want` is served: as a sample, or (a histogram) as its
/// `_bucket`, `_sum` and `_count`.
fn assert_serves(text: &str, want: &BTreeSet<String>) {
    let got = sample_names(text);
    for n in want {
        let histogram = ["_bucket", "_sum", "_count"]
            .iter()
            .all(|s| got.contains(&format!("{n}{s}")));
        assert!(got.contains(n) || histogram, "no {n} in /metrics:\n{text}");
    }
}

/// One request through the router, from loopback with the staff token (images are
/// private): (status, body as text).
async fn get(app: &Router, path: &str) -> (StatusCode, String) {
    let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 40000));
    let req = Request::get(path)
        .header("authorization", "Bearer token")
        .extension(axum::extract::ConnectInfo(peer))
        .body(Body::empty())
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let body = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn state(data: &Path) -> AppState {
    let db = Db::open_in_memory().unwrap();
    AppState::from(bootcast::http::Shared {
        db: db.clone(),
        data: data.to_path_buf(),
        advertise: None,
        http_port: 0,
        after_register: bootcast::config::AfterRegister::Reboot,
        chunks: Arc::new(ChunkService::new(data.to_path_buf())),
        multicast: bootcast::multicast::sessions::Sessions::new(),
        hooks: bootcast::hooks::Hooks::new(Vec::new(), db),
        glpi_url: None,
        boot: Default::default(),
        capture_max_bytes: bootcast::config::DEFAULT_CAPTURE_MAX_BYTES,
        connections: Default::default(),
        signer: Some(Arc::new(bootcast::sign::SigningKey::ephemeral().unwrap())),
        orders: Default::default(),
        ldap: None,
        clock: Arc::new(bootcast::push::clock::SystemClock),
    })
}

/// The value of the sample printed exactly as `series` (name with its labels).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|v| v.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

#[tokio::test]
async fn server_metrics_are_the_readme_names_and_latency_histograms() {
    let dir = tempfile::tempdir().unwrap();
    let st = state(dir.path());
    // a site whose relay reported 90 s ago: the fleet's figures have a sample each
    {
        use bootcast::db::sites;
        let mut c = st.db.lock();
        let settings = sites::SiteSettings {
            subnets: vec!["10.99.3.0/24".into()],
            tz: "UTC".into(),
            windows: String::new(),
            rate: None,
            incomplete: sites::Incomplete::Wait,
        };
        assert!(sites::add(&c, "lycee", &settings, "relay-token", 0).unwrap());
        let hb: bootcast::proto::relay::Heartbeat = serde_json::from_value(serde_json::json!({
            "site": "lycee", "url": "http://10.99.3.1:8080", "version": "0", "cache_bytes": 0,
            "complete": [], "pushes": [],
        }))
        .unwrap();
        let at = bootcast::time::now_unix() - 90;
        sites::record_heartbeat(&mut c, "lycee", &hb, at).unwrap();
    }
    let app = bootcast::http::router(st, "token".into());
    assert_eq!(get(&app, "/healthz").await.0, StatusCode::OK);
    assert_eq!(get(&app, "/healthz").await.0, StatusCode::OK);
    get(&app, &format!("/chunks/{}", "0".repeat(64))).await;
    assert_eq!(get(&app, "/nowhere").await.0, StatusCode::NOT_FOUND);
    let (code, text) = get(&app, "/metrics").await;
    assert_eq!(code, StatusCode::OK, "{text}");

    let mut want = readme_server_names();
    assert!(
        want.contains("bootcast_http_request_duration_seconds"),
        "README lists the latency histogram: {want:?}"
    );
    want.insert("bootcast_http_request_duration_seconds".into());
    assert_serves(&text, &want);
    // counters keep their `_total` names and count
    assert_eq!(value(&text, "bootcast_chunk_requests_total"), Some(1.0));
    assert_eq!(value(&text, "bootcast_captures_open"), Some(0.0));
    assert_eq!(value(&text, "bootcast_hosts{site=\"lycee\"}"), Some(0.0));
    assert_eq!(value(&text, "bootcast_tasks{state=\"pending\"}"), Some(0.0));
    let age = value(
        &text,
        "bootcast_relay_heartbeat_age_seconds{site=\"lycee\"}",
    )
    .unwrap();
    assert!((90.0..3600.0).contains(&age), "{age}");

    let h = "bootcast_http_request_duration_seconds";
    let healthz = r#"route="/healthz",method="GET",status="200""#;
    assert_eq!(value(&text, &format!("{h}_count{{{healthz}}}")), Some(2.0));
    assert_eq!(
        value(&text, &format!("{h}_bucket{{{healthz},le=\"+Inf\"}}")),
        Some(2.0),
        "{text}"
    );
    assert!(value(&text, &format!("{h}_sum{{{healthz}}}")).is_some());
    // the route pattern, not the path: labels stay few
    assert!(
        text.contains(r#"route="/chunks/{id}",method="GET""#),
        "{text}"
    );
    assert!(!text.contains(&"0".repeat(64)), "{text}");
    assert_eq!(
        value(
            &text,
            &format!("{h}_count{{route=\"unmatched\",method=\"GET\",status=\"404\"}}")
        ),
        Some(1.0),
        "{text}"
    );
    // the scrape itself is in the next one
    let (_, again) = get(&app, "/metrics").await;
    assert_eq!(
        value(
            &again,
            &format!("{h}_count{{route=\"/metrics\",method=\"GET\",status=\"200\"}}")
        ),
        Some(1.0),
        "{again}"
    );
}

#[test]
fn relay_metrics_are_the_readme_names_and_latency_histograms() {
    let dir = tempfile::tempdir().unwrap();
    let config = RelayConfig {
        // nothing listens there, and nothing here asks it
        upstream: "http://127.0.0.1:9".into(),
        upstream_tls: bootcast::tls::TlsClient::Roots,
        site: "nord".into(),
        token: "t".into(),
        url: None,
        quota: None,
        incomplete: IncompletePolicy::Wait,
        upstream_key: None,
    };
    // blocking: before the runtime
    let relay = Arc::new(
        Relay::open(
            config,
            dir.path(),
            "http://127.0.0.1:8080".into(),
            Arc::new(bootcast::push::clock::SystemClock),
        )
        .unwrap(),
    );
    relay.apply(
        serde_json::from_value(serde_json::json!({
            "schedule": {"tz": "UTC", "windows": "always", "rate": 1000},
            "pushes": [{"id": 7, "paused": false, "versions": []}],
            "assigned": [],
            "interval": 60,
        }))
        .unwrap(),
    );
    let app = bootcast::relay::routes::router(state(dir.path()), relay.clone());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let text = rt.block_on(async {
        assert_eq!(get(&app, "/healthz").await.0, StatusCode::OK);
        let (code, text) = get(&app, "/metrics").await;
        assert_eq!(code, StatusCode::OK, "{text}");
        text
    });

    let mut want = readme_relay_names();
    want.extend(readme_server_names());
    // the fleet's figures are the central server's
    for n in FLEET {
        want.remove(n);
    }
    assert_serves(&text, &want);
    assert_eq!(
        value(
            &text,
            r#"bootcast_relay_push_state{push="7",state="waiting"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            r#"bootcast_relay_push_state{push="7",state="running"}"#
        ),
        Some(0.0)
    );
    assert_eq!(
        value(&text, r#"bootcast_relay_push_bytes_done{push="7"}"#),
        Some(0.0)
    );
    assert_eq!(value(&text, "bootcast_relay_versions_complete"), Some(0.0));
    assert_eq!(
        value(
            &text,
            r#"bootcast_http_request_duration_seconds_count{route="/healthz",method="GET",status="200"}"#
        ),
        Some(1.0),
        "{text}"
    );

    // a push that closes upstream leaves the per-push gauges
    relay.apply(
        serde_json::from_value(serde_json::json!({
            "schedule": {"tz": "UTC", "windows": "always", "rate": null},
            "pushes": [],
            "assigned": [],
            "interval": 60,
        }))
        .unwrap(),
    );
    let (_, text) = rt.block_on(get(&app, "/metrics"));
    assert!(!text.contains(r#"push="7""#), "{text}");
    relay.stop();
}

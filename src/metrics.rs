//! Metrics through `prometheus-client`: one [`Registry`] per HTTP service (the server's, a
//! relay's, built with its router: several services in one process keep theirs apart), typed
//! counters, gauges and histograms, and the request latency histogram of every route.
//!
//! The components keep their own metric handles (a clone shares the value); the router
//! registers them, and `GET /metrics` encodes the registry in the Prometheus text format
//! (0.0.4). Counters are registered without `_total`: the encoder appends it, so the names
//! printed are `bootcast_..._total` as before.
//!
//! `bootcast_http_request_duration_seconds{route,method,status}`: seconds from the request to
//! the response's head (a streamed body may go on after), by matched route pattern (e.g.
//! `/chunks/{id}`; `unmatched` when no route matched), method and status: the labels stay
//! few whatever clients ask.

use std::sync::atomic::AtomicU64;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::{prometheus_text, EncodeLabelSet};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::registry::Registry;

/// A gauge of whole numbers (bytes, counts, Unix time).
pub type Gauge = prometheus_client::metrics::gauge::Gauge<u64, AtomicU64>;

/// What staff watch on the central server, read from the database at each scrape: tasks by
/// state, hosts, bytes the open pushes still have to bring to each site, and how long ago each
/// site's relay last reported.
#[derive(Clone, Default)]
pub struct FleetMetrics {
    pub tasks: Family<StateLabel, Gauge>,
    pub hosts: Family<SiteLabel, Gauge>,
    pub push_bytes_left: Family<SiteLabel, Gauge>,
    pub heartbeat_age: Family<SiteLabel, Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SiteLabel {
    pub site: String,
}

impl FleetMetrics {
    pub fn register(reg: &mut Registry) -> FleetMetrics {
        let m = FleetMetrics::default();
        reg.register(
            "bootcast_tasks",
            "Tasks by state (open ones, and those over in the last 24 hours)",
            m.tasks.clone(),
        );
        reg.register(
            "bootcast_hosts",
            "Active hosts by site (\"\": of no site)",
            m.hosts.clone(),
        );
        reg.register(
            "bootcast_push_bytes_left",
            "Bytes the open pushes still have to bring to each site's relay",
            m.push_bytes_left.clone(),
        );
        reg.register(
            "bootcast_relay_heartbeat_age_seconds",
            "Seconds since each site's relay last reported (absent: it never did)",
            m.heartbeat_age.clone(),
        );
        m
    }

    /// Sets every gauge to `(tasks by state, hosts by site, bytes left by site, heartbeat
    /// age by site)`; labels no longer present are dropped.
    pub fn set(
        &self,
        tasks: &[(String, u64)],
        hosts: &[(String, u64)],
        left: &[(String, u64)],
        age: &[(String, u64)],
    ) {
        self.tasks.clear();
        for (state, n) in tasks {
            self.tasks
                .get_or_create(&StateLabel {
                    state: state.clone(),
                })
                .set(*n);
        }
        for (fam, rows) in [
            (&self.hosts, hosts),
            (&self.push_bytes_left, left),
            (&self.heartbeat_age, age),
        ] {
            fam.clear();
            for (site, n) in rows {
                fam.get_or_create(&SiteLabel { site: site.clone() }).set(*n);
            }
        }
    }
}

/// The labels of the request latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: &'static str,
    status: u16,
}

fn request_histogram() -> Histogram {
    // 1 ms to about 33 s
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The request latency histogram (cheap to clone: clones share it).
#[derive(Clone)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Histogram, fn() -> Histogram>,
}

impl HttpMetrics {
    /// Makes the histogram and registers it in `reg`.
    pub fn register(reg: &mut Registry) -> HttpMetrics {
        let m = HttpMetrics {
            requests: Family::new_with_constructor(request_histogram),
        };
        reg.register(
            "bootcast_http_request_duration_seconds",
            "Seconds from an HTTP request to its response head, by route pattern, method and status",
            m.requests.clone(),
        );
        m
    }

    fn observe(&self, route: String, method: &Method, status: StatusCode, secs: f64) {
        let labels = RequestLabels {
            route,
            method: method_label(method),
            status: status.as_u16(),
        };
        self.requests.get_or_create(&labels).observe(secs);
    }
}

/// The method as a label: the standard ones, else `other` (a client cannot add labels).
fn method_label(m: &Method) -> &'static str {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
    ];
    KNOWN
        .into_iter()
        .find(|k| *k == m.as_str())
        .unwrap_or("other")
}

/// Middleware (`axum::middleware::from_fn_with_state`, as the router's outermost `layer`):
/// records each request in the latency histogram.
pub async fn track(State(m): State<HttpMetrics>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = req.method().clone();
    let start = Instant::now();
    let res = next.run(req).await;
    m.observe(route, &method, res.status(), start.elapsed().as_secs_f64());
    res
}

/// The label of the connection metrics: which listener (`http`, `https`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    pub listener: &'static str,
}

/// A listener and why (a refusal's cap, a timeout's kind).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerReason {
    pub listener: &'static str,
    pub reason: &'static str,
}

/// The HTTP listeners' connection counters (cheap to clone: clones share them); one set per
/// process, registered in the node's registry.
#[derive(Clone, Default)]
pub struct ConnectionMetrics {
    /// Connections open now.
    pub open: Family<ListenerLabel, Gauge>,
    /// Connections accepted (within the caps).
    pub accepted: Family<ListenerLabel, Counter>,
    /// Connections closed at once: `reason` is `per_address` or `total` (the cap reached).
    pub refused: Family<ListenerReason, Counter>,
    /// Connections closed for a timeout: `header` (no complete request head in time, TLS
    /// handshake included) or `idle` (keep-alive, no next request).
    pub timed_out: Family<ListenerReason, Counter>,
    /// TLS handshakes that failed (not a timeout).
    pub tls_failed: Counter,
}

impl ConnectionMetrics {
    /// Registers the counters in `reg`, every label set at 0 from the start.
    pub fn register(&self, reg: &mut Registry) {
        for listener in ["http", "https"] {
            let _ = self.open.get_or_create(&ListenerLabel { listener });
            let _ = self.accepted.get_or_create(&ListenerLabel { listener });
            for reason in ["per_address", "total"] {
                let _ = self
                    .refused
                    .get_or_create(&ListenerReason { listener, reason });
            }
            for reason in ["header", "idle"] {
                let _ = self
                    .timed_out
                    .get_or_create(&ListenerReason { listener, reason });
            }
        }
        reg.register(
            "bootcast_http_connections_open",
            "HTTP connections open now, by listener",
            self.open.clone(),
        );
        reg.register(
            "bootcast_http_connections_accepted",
            "HTTP connections accepted, by listener",
            self.accepted.clone(),
        );
        reg.register(
            "bootcast_http_connections_refused",
            "HTTP connections closed at once because a cap was reached (reason per_address or total)",
            self.refused.clone(),
        );
        reg.register(
            "bootcast_http_connections_timed_out",
            "HTTP connections closed for a timeout (reason header: no complete request head in time; idle: no next request)",
            self.timed_out.clone(),
        );
        reg.register(
            "bootcast_tls_handshakes_failed",
            "TLS handshakes that failed (other than by the header timeout)",
            self.tls_failed.clone(),
        );
    }
}

/// `reg` as a `GET /metrics` answer (Prometheus text format 0.0.4).
pub fn render(reg: &Registry) -> Response {
    let mut text = String::new();
    match prometheus_text::encode(&mut text, reg) {
        Ok(()) => (
            [(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)],
            text,
        )
            .into_response(),
        Err(e) => {
            tracing::error!("encoding the metrics: {e}");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_keep_their_total_names_and_the_histogram_its_buckets() {
        let mut reg = Registry::default();
        let c = Counter::<u64>::default();
        reg.register("bootcast_test_things", "Things", c.clone());
        let g = Gauge::default();
        reg.register("bootcast_test_level", "Level", g.clone());
        let h = HttpMetrics::register(&mut reg);
        c.inc_by(3);
        g.set(7);
        h.observe("/x/{id}".into(), &Method::GET, StatusCode::OK, 0.003);
        h.observe(
            "/x/{id}".into(),
            &Method::from_bytes(b"BREW").unwrap(),
            StatusCode::METHOD_NOT_ALLOWED,
            0.0,
        );
        let mut text = String::new();
        prometheus_text::encode(&mut text, &reg).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.contains(&"bootcast_test_things_total 3"), "{text}");
        assert!(lines.contains(&"bootcast_test_level 7"), "{text}");
        let bucket = "bootcast_http_request_duration_seconds_bucket{route=\"/x/{id}\",method=\"GET\",status=\"200\",le=\"0.004\"} 1";
        assert!(lines.contains(&bucket), "{text}");
        assert!(
            lines.contains(&"bootcast_http_request_duration_seconds_count{route=\"/x/{id}\",method=\"other\",status=\"405\"} 1"),
            "{text}"
        );
    }
}

//! The relay's HTTP service.
//!
//! | route | answer |
//! |---|---|
//! | `GET /healthz` | `ok` |
//! | `GET /metrics` | the chunk service's counters and the relay's (upstream bytes, rejected chunks, pushes) |
//! | `GET /chunks/{id}`, `POST /chunks/batch` | as the server (same handlers, [`crate::http::chunks`]); what the store lacks is pulled through first ([`super::pull`]) |
//! | `GET /api/v1/images/{name}/{version}/manifest` | a version complete here; otherwise the incomplete policy decides (below) |
//! | `GET /boot.ipxe`, `GET /boot/{file}`, `/api/v1/agent/*` | passed upstream with the relay's headers ([`super::proxy`]) |
//! | `/api/v1/relay/*` | passed upstream unchanged (relays below this one) |
//! | `GET /bootenv/{file}`, `GET /ipxe/{file}` | through the file cache |
//!
//! Manifests: `latest` and version prefixes are resolved upstream (the local copy is used when
//! upstream cannot be reached). A version complete on the relay is served from its store. A
//! version that is not: with `--incomplete wait` (the default) the answer is `503` with
//! `{"error": "version X of IMAGE is not complete on relay SITE yet; it arrives with the push"}`,
//! so a client never starts on a version the relay cannot serve by itself; with
//! `--incomplete upstream` the manifest is passed through and its chunks are pulled through
//! as the client asks for them. A relay below this one (its requests carry a relay token)
//! always gets the manifest: it prestages from this relay.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;

use super::{proxy, Relay};
use crate::config::IncompletePolicy;
use crate::http::error::{ApiError, ApiResult};
use crate::http::{chunks, AppState};
use crate::metrics::{Counter, Gauge, Registry};
use crate::proto::relay::{PushState, RELAY_TOKEN_HEADER};
use crate::store::Manifest;

/// The relay's routes: the chunk service's handlers on `app`, the rest on `relay`.
pub fn router(app: AppState, relay: Arc<Relay>) -> Router {
    let app_uefi = app.boot.uefi.clone();
    let reader = axum::middleware::from_fn_with_state((app.clone(), relay.clone()), require_reader);
    let chunk_routes = Router::new()
        .route("/chunks/batch", post(chunks::batch))
        .route("/chunks/{id}", get(chunks::chunk))
        .route_layer(reader.clone())
        .with_state(app.clone());
    let (scrape, http_metrics) = Scrape::new(&app, &relay);
    let metrics_route = Router::new().route("/metrics", get(metrics)).with_state((
        app.clone(),
        relay.clone(),
        Arc::new(scrape),
    ));
    let both = Router::new()
        .route("/api/v1/images/{name}/{version}/manifest", get(manifest))
        .route_layer(reader)
        .route("/boot.ipxe", get(proxy::forward))
        .route("/boot/{file}", get(proxy::forward))
        .route("/api/v1/agent/{*rest}", any(proxy::forward))
        .route("/api/v1/relay/{*rest}", any(proxy::forward))
        .with_state((app, relay.clone()));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/bootenv/{file}", get(proxy::cached_file))
        .route("/ipxe/{file}", get(proxy::cached_file))
        .route("/grub/{file}", get(crate::http::boot::grub_file))
        .with_state(relay)
        .merge(crate::http::boot::signed_routes(&app_uefi))
        .merge(chunk_routes)
        .merge(both)
        .merge(metrics_route)
        .layer(axum::middleware::from_fn_with_state(
            http_metrics,
            crate::metrics::track,
        ))
}

/// A manifest answer, with the central server's signature of the version (as upstream sent
/// it, or as prestage kept it) when there is one.
fn manifest_response(app: &AppState, id: &str, bytes: Vec<u8>, sig: Option<String>) -> Response {
    app.chunks.metrics.manifests_served.inc();
    let mut resp = (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CACHE_CONTROL, "no-cache".to_string()),
            (
                header::HeaderName::from_static("x-bootcast-version"),
                id.to_string(),
            ),
        ],
        bytes,
    )
        .into_response();
    if let Some(v) = sig.and_then(|s| header::HeaderValue::from_str(&s).ok()) {
        resp.headers_mut().insert(
            header::HeaderName::from_static(crate::sign::SIGNATURE_HEADER),
            v,
        );
    }
    resp
}

/// A version complete in the relay's store: `version` a full id (that one manifest is read),
/// else a prefix or `latest` (resolved among the image's versions here).
async fn local(
    relay: &Arc<Relay>,
    name: &str,
    version: &str,
) -> Option<(String, Vec<u8>, Option<String>)> {
    let r = relay.clone();
    let (name, version) = (name.to_string(), version.to_string());
    tokio::task::spawn_blocking(move || {
        let (id, bytes) = if version.len() == 64 {
            let id: crate::store::VersionId = version.parse().ok()?;
            let m = r.store.load_version(&name, &id).ok()??;
            (id.to_hex(), m.encode())
        } else {
            let v = r.store.resolve(&format!("{name}@{version}")).ok()?;
            (v.id.to_hex(), v.manifest.encode())
        };
        let sig = super::prestage::kept_signature(&r, &name, &id);
        Some((id, bytes, sig))
    })
    .await
    .ok()
    .flatten()
}

/// The relay's images are as private as central's ([`crate::http::chunks::require_reader`]): a
/// manifest or chunk request needs the session of a boot this relay passed the hello answer
/// of (from the same address), or a lower relay's token or the staff's API token (`image
/// export --from`), which central confirms.
async fn require_reader(
    State((app, relay)): State<(AppState, Arc<Relay>)>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> ApiResult {
    use crate::proto::agent::{HEADER_MAC, HEADER_SESSION};
    let h = req.headers();
    let get = |n: &str| {
        h.get(n)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_string())
    };
    let staff = crate::http::auth::bearer(h).map(str::to_string);
    if let Some(t) = get(RELAY_TOKEN_HEADER).or(staff) {
        return match relay.lower_relay(&t).await {
            Ok(true) => Ok(next.run(req).await),
            Ok(false) => Err(ApiError::forbidden(
                "the central server does not know this token (a site relay token or the API token)",
            )),
            Err(e) => Err(ApiError::unavailable(format!(
                "this relay cannot confirm the token with the central server now ({e}); try again"
            ))),
        };
    }
    if let Some((s, mac)) = get(HEADER_SESSION).zip(get(HEADER_MAC).and_then(|m| m.parse().ok())) {
        let (ip, now) = (peer.ip(), crate::time::now_unix());
        if app
            .db
            .read(move |c| crate::db::bootcred::check_adopted(c, mac, &s, ip, now))
            .await?
        {
            return Ok(next.run(req).await);
        }
        return Err(ApiError::forbidden("this session is not one of a boot that this relay passed on (network-boot the machine through this relay again)"));
    }
    tracing::warn!(peer = %peer.ip(), path = %req.uri().path(), "image read refused: no credential");
    Err(ApiError::forbidden(format!("manifests and chunks are private: send this boot's session ({HEADER_MAC} and {HEADER_SESSION}), a lower relay's token ({RELAY_TOKEN_HEADER}) or the API token (Authorization: Bearer)")))
}

/// `GET /api/v1/images/{name}/{version}/manifest` on a relay.
async fn manifest(
    State((app, relay)): State<(AppState, Arc<Relay>)>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    if crate::store::catalog::validate_name(&name).is_err()
        || !(version == "latest" || version.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(ApiError::bad_request(format!(
            "invalid image name {name:?} or version {version:?}"
        )));
    }
    let full = version.len() == 64;
    if full {
        if let Some((id, bytes, sig)) = local(&relay, &name, &version).await {
            return Ok(manifest_response(&app, &id, bytes, sig));
        }
    }
    // Ask upstream which version this is (and whether it exists).
    let url = relay
        .link
        .url(&format!("/api/v1/images/{name}/{version}/manifest"));
    let upstream = relay
        .link
        .client
        .get(&url)
        .timeout(Duration::from_secs(30))
        .send()
        .await;
    let resp = match upstream {
        Ok(r) => r,
        Err(e) => {
            // upstream unreachable: what the relay holds completely is still good
            if !full {
                if let Some((id, bytes, sig)) = local(&relay, &name, &version).await {
                    return Ok(manifest_response(&app, &id, bytes, sig));
                }
            }
            return Err(ApiError::unavailable(format!(
                    "{name}@{version} is not complete on relay {} and its upstream cannot be reached: {e}",
                    relay.config.site
                ),
            ));
        }
    };
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        let msg = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or(body);
        return Err(ApiError::new(status, msg));
    }
    let upstream_sig = resp
        .headers()
        .get(crate::sign::SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| ApiError::bad_gateway(format!("reading {url}: {e}")))?;
    let id = match Manifest::decode(&bytes) {
        Ok((_, id)) => id.to_hex(),
        Err(e) => {
            return Err(ApiError::bad_gateway(format!(
                "the manifest {url} sent is damaged: {e}"
            )))
        }
    };
    if let Some((id, bytes, sig)) = local(&relay, &name, &id).await {
        return Ok(manifest_response(&app, &id, bytes, sig.or(upstream_sig)));
    }
    // a lower relay gets any manifest whatever the policy: only with a token central confirms
    let below = match headers
        .get(RELAY_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        Some(t) => relay.lower_relay(t.trim()).await == Ok(true),
        None => false,
    };
    if relay.config.incomplete == IncompletePolicy::Wait && !below {
        relay.metrics.manifests_refused.inc();
        return Err(ApiError::unavailable(format!(
            "version {id} of {name} is not complete on relay {} yet; it arrives with the push",
            relay.config.site
        )));
    }
    relay.metrics.manifests_pulled.inc();
    Ok(manifest_response(&app, &id, bytes.to_vec(), upstream_sig))
}

/// The labels of `bootcast_relay_push_state`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PushStateLabels {
    push: i64,
    state: &'static str,
}

/// The label of the other per-push gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PushLabel {
    push: i64,
}

/// The relay's registry, and the gauges `/metrics` sets from the relay's state at each scrape.
struct Scrape {
    registry: Registry,
    rate_cap: Gauge,
    versions_complete: Gauge,
    book_hosts: Gauge,
    book_tasks: Gauge,
    push_state: Family<PushStateLabels, Gauge>,
    /// bytes done, bytes total, fetched, rate
    push_bytes: [Family<PushLabel, Gauge>; 4],
    /// One scrape at a time sets the gauges and encodes them.
    lock: std::sync::Mutex<()>,
}

impl Scrape {
    /// The chunk service's metrics, the relay's, and the request latency histogram's.
    fn new(app: &AppState, relay: &Relay) -> (Scrape, crate::metrics::HttpMetrics) {
        let mut reg = Registry::default();
        app.chunks.metrics.register(&mut reg);
        app.db.stats.register(&mut reg);
        app.connections.register(&mut reg);
        let m = &relay.metrics;
        let link = &relay.link;
        let counters: [(&str, &str, &Counter); 14] = [
            (
                "bootcast_relay_upstream_bytes",
                "Compressed chunk bytes received from upstream (prestage and pull-through)",
                &link.upstream_bytes,
            ),
            (
                "bootcast_relay_chunks_rejected",
                "Upstream chunks that failed verification (not stored)",
                &link.rejected,
            ),
            (
                "bootcast_relay_pull_chunks",
                "Chunks fetched from upstream for clients (pull-through)",
                &relay.pull.pulled,
            ),
            (
                "bootcast_relay_pulls_coalesced",
                "Requests for a chunk already being fetched that waited for that fetch",
                &relay.pull.coalesced,
            ),
            (
                "bootcast_relay_file_bytes",
                "Bytes of boot environment and iPXE files fetched from upstream",
                &m.file_bytes,
            ),
            (
                "bootcast_relay_manifests_refused",
                "Manifests of versions not complete here refused (policy wait)",
                &m.manifests_refused,
            ),
            (
                "bootcast_relay_manifests_pulled",
                "Manifests of versions not complete here passed through from upstream",
                &m.manifests_pulled,
            ),
            (
                "bootcast_relay_orders_refused",
                "Reimage orders refused: unsigned, forged (signature), or an older order replayed",
                &m.orders_refused,
            ),
            (
                "bootcast_relay_reports_forwarded",
                "Agent reports queued while upstream was unreachable, then passed on",
                &m.reports_forwarded,
            ),
            (
                "bootcast_relay_offline_scripts",
                "Boot scripts answered by the relay alone (local disk, a task it holds, a registration) while upstream could not be reached",
                &m.offline_scripts,
            ),
            (
                "bootcast_relay_heartbeats",
                "Heartbeats upstream accepted",
                &m.heartbeats,
            ),
            (
                "bootcast_relay_heartbeat_failures",
                "Heartbeats that failed (unreachable or refused)",
                &m.heartbeat_failures,
            ),
            (
                "bootcast_relay_evicted_bytes",
                "Compressed chunk bytes evicted for the quota",
                &m.evicted_bytes,
            ),
            (
                "bootcast_relay_evicted_chunks",
                "Chunks evicted for the quota",
                &m.evicted_chunks,
            ),
        ];
        for (name, help, c) in counters {
            reg.register(name, help, c.clone());
        }
        let s = Scrape {
            registry: Registry::default(),
            rate_cap: Gauge::default(),
            versions_complete: Gauge::default(),
            book_hosts: Gauge::default(),
            book_tasks: Gauge::default(),
            push_state: Family::default(),
            push_bytes: Default::default(),
            lock: Default::default(),
        };
        let gauges: [(&str, &str, &Gauge); 7] = [
            (
                "bootcast_relay_book_hosts",
                "Hosts of the site in the relay's site book (for boots while upstream is down)",
                &s.book_hosts,
            ),
            (
                "bootcast_relay_book_tasks",
                "Open reimage tasks in the relay's site book, which it can start alone",
                &s.book_tasks,
            ),
            (
                "bootcast_relay_reports_queued",
                "Agent reports waiting for upstream (kept while it was unreachable)",
                &m.reports_queued,
            ),
            (
                "bootcast_relay_cache_bytes",
                "Compressed bytes of chunks in the relay's store",
                &link.cache_bytes,
            ),
            (
                "bootcast_relay_rate_cap_bytes",
                "The cap on upstream reads now, bytes per second (0: none)",
                &s.rate_cap,
            ),
            (
                "bootcast_relay_last_heartbeat_seconds",
                "Unix time of the last accepted heartbeat (0: none yet)",
                &m.last_heartbeat,
            ),
            (
                "bootcast_relay_versions_complete",
                "Versions complete in the relay's store",
                &s.versions_complete,
            ),
        ];
        for (name, help, g) in gauges {
            reg.register(name, help, g.clone());
        }
        reg.register(
            "bootcast_relay_push_state",
            "The state of each open push on this relay (1 for its state)",
            s.push_state.clone(),
        );
        let push_gauges = [
            (
                "bootcast_relay_push_bytes_done",
                "Compressed bytes of the push's chunks the relay holds",
            ),
            (
                "bootcast_relay_push_bytes_total",
                "Compressed bytes of all of the push's chunks",
            ),
            (
                "bootcast_relay_push_fetched_bytes",
                "Compressed bytes fetched from upstream for the push since the relay started",
            ),
            (
                "bootcast_relay_push_rate_bytes",
                "Bytes per second fetched for the push over the last seconds",
            ),
        ];
        for ((name, help), f) in push_gauges.into_iter().zip(&s.push_bytes) {
            reg.register(name, help, f.clone());
        }
        let http = crate::metrics::HttpMetrics::register(&mut reg);
        (Scrape { registry: reg, ..s }, http)
    }
}

/// `GET /metrics`: the chunk service's counters, then the relay's.
async fn metrics(
    State((app, relay, scrape)): State<(AppState, Arc<Relay>, Arc<Scrape>)>,
) -> Response {
    let complete = {
        let r = relay.clone();
        tokio::task::spawn_blocking(move || super::heartbeat::complete_versions(&r).len())
            .await
            .unwrap_or(0)
    };
    let pushes = relay.progress();
    let _one = scrape.lock.lock().unwrap_or_else(|p| p.into_inner());
    app.chunks.scrape();
    scrape.rate_cap.set(relay.link.limiter.rate().unwrap_or(0));
    scrape.versions_complete.set(complete as u64);
    {
        let book = relay.book();
        scrape.book_hosts.set(book.hosts.len() as u64);
        scrape.book_tasks.set(book.tasks.len() as u64);
    }
    // pushes no longer open go
    scrape.push_state.clear();
    for f in &scrape.push_bytes {
        f.clear();
    }
    for p in &pushes {
        for s in [
            PushState::Waiting,
            PushState::Running,
            PushState::Paused,
            PushState::Done,
            PushState::Failed,
        ] {
            let labels = PushStateLabels {
                push: p.push,
                state: s.as_str(),
            };
            scrape
                .push_state
                .get_or_create(&labels)
                .set(u64::from(p.state == s));
        }
        let label = PushLabel { push: p.push };
        for (f, v) in scrape
            .push_bytes
            .iter()
            .zip([p.bytes_done, p.bytes_total, p.fetched, p.rate])
        {
            f.get_or_create(&label).set(v);
        }
    }
    crate::metrics::render(&scrape.registry)
}

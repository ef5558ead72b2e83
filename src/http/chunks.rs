//! The chunk service: manifests and chunks for agents, relays and `image export --from`, and
//! `/metrics`.
//!
//! | route | answer |
//! |---|---|
//! | `GET /api/v1/images` (token) | every version: name, id, size, chunks, stored bytes |
//! | `GET /api/v1/images/{name}/{version}/manifest` | the manifest file (version: full id, unique prefix of 4+ hex digits, or `latest`) |
//! | `GET /chunks/{id}` | the stored zstd frame; `ETag: "<id>"`, immutable, Range |
//! | `POST /chunks/batch` | many frames in one response; format in [`crate::store::source`] |
//! | `GET /metrics` | Prometheus text: bytes and chunks served, capture bytes received |
//!
//! On a site relay the service has a [`PullThrough`](crate::store::PullThrough): a chunk the relay's store lacks is
//! fetched from upstream (verified, stored) before it is served, by the same handlers.
//!
//! **Images are private** ([`require_reader`]): a manifest or chunk request must carry a site
//! relay token, a live boot session (an agent: [`HEADER_MAC`] + [`HEADER_SESSION`], from the
//! machine's own address) or the API token (`Authorization: Bearer`, as `image export --from`
//! sends it). A master's unattend file may hold a domain-join secret: a PC on a site LAN that
//! is not being reimaged gets nothing. Listing the images is staff-only. Chunks are never
//! decompressed here: the client verifies each one.

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use tokio::io::AsyncWriteExt;
use tower::ServiceExt;
use tower_http::services::ServeFile;

use super::error::{parse_chunk_id, ApiError, ApiResult};
use super::AppState;
use crate::metrics::{Counter, Gauge, Registry};
use crate::store::source::{BATCH_MAX_BYTES, BATCH_MAX_IDS, MISSING};
use crate::store::{ChunkId, PullThrough, Store, StoreError};

/// Refuses manifest and chunk requests that carry none of a relay token, a boot session or
/// the API token (see the module doc). Every credential is checked before the handler runs;
/// a wrong one is refused, never taken for another kind.
pub async fn require_reader(
    State((st, token)): State<(AppState, Arc<String>)>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    req: Request,
    next: axum::middleware::Next,
) -> ApiResult {
    use crate::proto::agent::{HEADER_MAC, HEADER_SESSION};
    use crate::proto::relay::RELAY_TOKEN_HEADER;
    let h = req.headers();
    if let Some(t) = super::auth::bearer(h) {
        return if super::auth::same_secret(t.as_bytes(), token.as_bytes()) {
            Ok(next.run(req).await)
        } else {
            Err(ApiError::unauthorized(
                "wrong API token (see `bootcast token show` on the server)",
            ))
        };
    }
    let get = |n: &str| {
        h.get(n)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_string())
    };
    let relay_token = get(RELAY_TOKEN_HEADER);
    let session = get(HEADER_SESSION).zip(get(HEADER_MAC).and_then(|m| m.parse().ok()));
    let headers = h.clone();
    let now = crate::time::now_unix();
    let verdict = st
        .db
        .call(move |c| {
            if let Some(t) = relay_token {
                return Ok(match crate::db::sites::by_token(c, &t)? {
                    Some(_) => Ok(()),
                    None => Err("no site has this relay token".to_string()),
                });
            }
            if let Some((s, mac)) = session {
                return Ok(super::api::check_session(
                    c,
                    &headers,
                    peer,
                    mac,
                    Some(&s),
                    (now, false),
                )?
                .map(|_| ())
                .map_err(|(r, _)| r.reason().to_string()));
            }
            Ok(Err("manifests and chunks are private".to_string()))
        })
        .await?;
    match verdict {
        Ok(()) => Ok(next.run(req).await),
        Err(why) => {
            tracing::warn!(peer = %peer.ip(), path = %req.uri().path(), "image read refused: {why}");
            Err(ApiError::forbidden(format!(
                "{why}: send a site relay token ({RELAY_TOKEN_HEADER}), this boot's session ({HEADER_MAC} and {HEADER_SESSION}) or the API token (Authorization: Bearer; `image export --from` reads it from BOOTCAST_TOKEN or --token-file)"
            )))
        }
    }
}

const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// The store as the HTTP service sees it, opened at first use (it may be created after
/// `serve` starts), and the counters `/metrics` shows.
pub struct ChunkService {
    data: PathBuf,
    store: OnceLock<Store>,
    pub metrics: Metrics,
    /// Captures in progress (see [`super::capture`]).
    pub captures: super::capture::Captures,
    /// On a relay: where chunks the store lacks come from.
    pull: Option<Arc<dyn PullThrough>>,
    /// The frames served lately (`[http] chunk_cache_mb`).
    pub frames: super::frames::FrameCache,
}

/// Counters since start, and the gauge of open captures (set at each scrape).
#[derive(Default)]
pub struct Metrics {
    /// Compressed chunk bytes put in responses (`/chunks/{id}` bodies, batch frame payloads).
    pub chunk_bytes_served: Counter,
    pub chunks_served: Counter,
    pub chunks_missing: Counter,
    /// `GET /chunks/{id}` answered from the frames kept in memory.
    pub chunks_from_memory: Counter,
    pub chunk_requests: Counter,
    pub batch_requests: Counter,
    pub manifests_served: Counter,
    /// Bytes of capture upload bodies received (`POST /api/v1/agent/capture/chunks`).
    pub capture_bytes_received: Counter,
    pub capture_uploads: Counter,
    /// Uploaded chunks the store lacked, now stored.
    pub capture_chunks_stored: Counter,
    /// Uploaded chunks that did not match their id (the request was refused).
    pub capture_chunks_refused: Counter,
    captures_open: Gauge,
}

impl ChunkService {
    pub fn new(data: PathBuf) -> ChunkService {
        ChunkService {
            data,
            store: OnceLock::new(),
            metrics: Metrics::default(),
            captures: Default::default(),
            pull: None,
            frames: super::frames::FrameCache::new(crate::config::DEFAULT_CHUNK_CACHE),
        }
    }

    /// Keeps at most `bytes` of frames served lately in memory (0: none).
    pub fn with_frame_cache(mut self, bytes: u64) -> ChunkService {
        self.frames = super::frames::FrameCache::new(bytes);
        self
    }

    /// A relay's service: chunks the store lacks are pulled through `pull` first.
    pub fn with_pull(mut self, pull: Arc<dyn PullThrough>) -> ChunkService {
        self.pull = Some(pull);
        self
    }

    /// Pulls the chunks of `ids` the store lacks (a relay; nothing otherwise); returns those
    /// the upstream lacks too.
    async fn pull_missing(&self, store: &Store, ids: &[ChunkId]) -> ApiResult<Vec<ChunkId>> {
        let Some(pull) = self.pull.clone() else {
            return Ok(Vec::new());
        };
        let paths: Vec<(ChunkId, PathBuf)> =
            ids.iter().map(|id| (*id, store.chunk_path(id))).collect();
        let res = tokio::task::spawn_blocking(move || {
            let lacking: Vec<ChunkId> = paths
                .iter()
                .filter(|(_, p)| !p.exists())
                .map(|(id, _)| *id)
                .collect();
            if lacking.is_empty() {
                return Ok(Vec::new());
            }
            pull.pull(&lacking)
        })
        .await?;
        res.map_err(ApiError::bad_gateway)
    }

    /// The store, created with the default configuration if there is none yet (a capture
    /// may be this server's first image, as an `image add` may be). Blocking (file system).
    pub fn store_or_create(&self) -> ApiResult<Store> {
        if let Some(s) = self.store.get() {
            return Ok(s.clone());
        }
        match Store::open_or_create(&self.data, crate::store::StoreConfig::default(), false) {
            Ok(s) => Ok(self.store.get_or_init(|| s).clone()),
            Err(e) => Err(e.into()),
        }
    }

    /// The store, if there is one (404 naming the fix otherwise). Blocking (file system).
    pub fn store(&self) -> ApiResult<Store> {
        if let Some(s) = self.store.get() {
            return Ok(s.clone());
        }
        match Store::open(&self.data) {
            Ok(s) => Ok(self.store.get_or_init(|| s).clone()),
            Err(StoreError::NoStore(_)) => Err(ApiError::not_found(
                "this server has no image store yet; add an image with `bootcast image add` on the server",
            )),
            Err(e) => Err(e.into()),
        }
    }
}

/// `GET /api/v1/images` (staff): every stored version.
pub async fn list_images(State(st): State<AppState>) -> ApiResult {
    let store = match st.chunks.store() {
        Ok(s) => s,
        // No store yet: no images.
        Err(e) if e.status() == StatusCode::NOT_FOUND => {
            return Ok(Json(serde_json::json!({ "images": [] })).into_response())
        }
        Err(e) => return Err(e),
    };
    let res = tokio::task::spawn_blocking(move || {
        let mut all = Vec::new();
        for name in store.image_names()? {
            all.extend(store.versions(&name)?);
        }
        Ok::<_, StoreError>(crate::store::stats::version_stats(&all, &all))
    })
    .await??;
    Ok(Json(serde_json::json!({ "images": res })).into_response())
}

/// `POST /api/v1/images/{name}/{version}/approve` (staff): a captured version may become
/// `latest` (as `bootcast image approve NAME@VERSION`).
pub async fn approve(
    State(st): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult {
    let store = st.chunks.store()?;
    let v =
        tokio::task::spawn_blocking(move || store.approve(&format!("{name}@{version}"))).await??;
    tracing::info!(image = %v.name, version = %v.id.to_hex(), "version approved through the API");
    Ok(
        Json(serde_json::json!({ "image": v.name, "version": v.id.to_hex(), "approved": true }))
            .into_response(),
    )
}

/// `GET /api/v1/images/{name}/{version}/manifest`: the manifest's canonical encoding.
pub async fn manifest(
    State(st): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult {
    let store = st.chunks.store()?;
    let spec = format!("{name}@{version}");
    let v = tokio::task::spawn_blocking(move || store.resolve(&spec)).await??;
    st.chunks.metrics.manifests_served.inc();
    let mut resp = (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            // `latest` moves, and a version's annotations may be rewritten by a re-add.
            (header::CACHE_CONTROL, "no-cache".to_string()),
            (
                header::HeaderName::from_static("x-bootcast-version"),
                v.id.to_hex(),
            ),
        ],
        v.manifest.encode(),
    )
        .into_response();
    // central vouches for the versions it published (not a capture awaiting approval)
    if let Some(k) = st.signer.as_ref() {
        if !crate::store::catalog::awaiting_approval(&v.path) {
            let sig = k.sign(&crate::sign::Statement::Published {
                image: &v.name,
                version: &v.id.to_hex(),
                created: v.manifest.created,
            });
            resp.headers_mut().insert(
                header::HeaderName::from_static(crate::sign::SIGNATURE_HEADER),
                HeaderValue::from_str(&sig).expect("hex is a valid header"),
            );
        }
    }
    Ok(resp)
}

/// A stored frame read on the async thread, when the page cache holds all of it (a frame
/// is at most a few hundred KiB; opening it is a lookup of cached metadata, as nginx does on
/// its event loop): `(bytes, length)` (`head`: no bytes). `Ok(None)`: part of it is on the
/// disk only; read it on the blocking pool.
fn read_frame(path: &std::path::Path, head: bool) -> io::Result<Option<(Vec<u8>, u64)>> {
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    if head {
        return Ok(Some((Vec::new(), len)));
    }
    let mut buf = vec![0u8; len as usize];
    let mut at = 0;
    while at < buf.len() {
        match crate::sys::read_cached(&file, &mut buf[at..], at as u64)? {
            Some(0) => break, // shorter than its length a moment ago: what is there
            Some(n) => at += n,
            None => return Ok(None),
        }
    }
    buf.truncate(at);
    Ok(Some((buf, at as u64)))
}

/// `GET /chunks/{id}`: the stored frame as-is (`HEAD`: its length), with Range support.
pub async fn chunk(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    req: Request,
) -> ApiResult {
    let m = &st.chunks.metrics;
    m.chunk_requests.inc();
    let id = parse_chunk_id(&id)?;
    let store = st.chunks.store()?;
    let etag = HeaderValue::from_str(&format!("\"{id}\"")).expect("hex is a valid header");
    let mut resp = if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
    {
        StatusCode::NOT_MODIFIED.into_response()
    } else if !headers.contains_key(header::RANGE) {
        // the whole frame (what every client asks): from memory if served lately, else read in
        // one step (from the page cache on this thread, the blocking pool only for the disk)
        let head = req.method() == axum::http::Method::HEAD;
        let read = match st.chunks.frames.get(&id) {
            Some(frame) => {
                m.chunks_from_memory.inc();
                let len = frame.len() as u64;
                Ok((frame, len))
            }
            None => {
                st.chunks.pull_missing(&store, &[id]).await?;
                let path = store.chunk_path(&id);
                let read = match read_frame(&path, head) {
                    Ok(Some(got)) => Ok(got),
                    Ok(None) => tokio::task::spawn_blocking(move || {
                        std::fs::read(&path).map(|b| {
                            let n = b.len() as u64;
                            (b, n)
                        })
                    })
                    .await
                    .map_err(|e| ApiError::internal(format!("reading chunk {id}: {e}")))?,
                    Err(e) => Err(e),
                };
                read.map(|(frame, len)| {
                    let frame = bytes::Bytes::from(frame);
                    if !head {
                        st.chunks.frames.insert(id, frame.clone());
                    }
                    (frame, len)
                })
            }
        };
        match read {
            Ok((frame, len)) => {
                if !head {
                    m.chunk_bytes_served.inc_by(len);
                    m.chunks_served.inc();
                }
                let mut r = Body::from(frame).into_response();
                r.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
                r
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                m.chunks_missing.inc();
                return Err(ApiError::not_found(format!("no chunk {id} on this server")));
            }
            Err(e) => return Err(ApiError::internal(format!("reading chunk {id}: {e}"))),
        }
    } else {
        st.chunks.pull_missing(&store, &[id]).await?;
        let path = store.chunk_path(&id);
        match tokio::fs::metadata(&path).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                m.chunks_missing.inc();
                return Err(ApiError::not_found(format!("no chunk {id} on this server")));
            }
            Err(e) => return Err(ApiError::internal(format!("reading chunk {id}: {e}"))),
        }
        let head = req.method() == axum::http::Method::HEAD;
        let r = match ServeFile::new(path).oneshot(req).await {
            Ok(r) => r.map(Body::new),
            Err(e) => match e {},
        };
        if r.status().is_success() && !head {
            let len = r
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .unwrap_or(0);
            m.chunk_bytes_served.inc_by(len);
            m.chunks_served.inc();
        }
        r
    };
    let ok = resp.status() == StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(header::ETAG, etag);
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE));
    if ok {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/zstd"),
        );
    }
    Ok(resp)
}

/// `POST /chunks/batch`: body = raw 32-byte ids; answer = one frame per id, in order,
/// streamed from disk (see [`crate::store::source`] for the format).
pub async fn batch(State(st): State<AppState>, body: Bytes) -> ApiResult {
    let service = st.chunks.clone();
    service.metrics.batch_requests.inc();
    if !body.len().is_multiple_of(32) {
        return Err(ApiError::bad_request(format!(
            "the body holds {} bytes: a batch is raw 32-byte chunk ids, concatenated",
            body.len()
        )));
    }
    let ids: Vec<ChunkId> = body
        .chunks_exact(32)
        .map(|c| ChunkId(c.try_into().expect("32 bytes")))
        .collect();
    if ids.len() > BATCH_MAX_IDS {
        return Err(ApiError::too_large(format!(
            "{} ids in one batch; at most {BATCH_MAX_IDS} per request: split it",
            ids.len()
        )));
    }
    let store = service.store()?;
    // On a relay: what the store lacks comes from upstream first (one upstream batch);
    // what the upstream lacks too is answered as missing, in-band.
    service.pull_missing(&store, &ids).await?;
    let paths: Vec<PathBuf> = ids.iter().map(|id| store.chunk_path(id)).collect();
    let p = paths.clone();
    let total = tokio::task::spawn_blocking(move || {
        p.iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum::<u64>()
    })
    .await?;
    if total > BATCH_MAX_BYTES {
        return Err(ApiError::too_large(format!(
            "the batch would carry {total} bytes; at most {} MiB per request: ask for fewer ids",
            BATCH_MAX_BYTES >> 20
        )));
    }
    // Frames go through a bounded pipe: a slow client holds at most its size in memory.
    let (mut tx, rx) = tokio::io::duplex(256 << 10);
    tokio::spawn(async move {
        let m = &service.metrics;
        for (id, path) in ids.iter().zip(paths) {
            let mut head = id.0.to_vec();
            let data = match tokio::fs::read(&path).await {
                Ok(d) if d.len() < MISSING as usize => d,
                Ok(_) => {
                    tracing::error!("chunk file {} is too large to serve", path.display());
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    m.chunks_missing.inc();
                    head.extend(MISSING.to_be_bytes());
                    if tx.write_all(&head).await.is_err() {
                        return;
                    }
                    continue;
                }
                Err(e) => {
                    // The client sees a short body and asks again for the rest.
                    tracing::error!("reading chunk {}: {e}", path.display());
                    return;
                }
            };
            head.extend((data.len() as u32).to_be_bytes());
            if tx.write_all(&head).await.is_err() || tx.write_all(&data).await.is_err() {
                return; // the client went away
            }
            m.chunk_bytes_served.inc_by(data.len() as u64);
            m.chunks_served.inc();
        }
        let _ = tx.shutdown().await;
    });
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from_stream(tokio_util::io::ReaderStream::with_capacity(rx, 64 << 10)),
    )
        .into_response())
}

/// `GET /metrics`: the service's registry (see [`super::router`]) in Prometheus text format.
pub async fn metrics(
    State((st, reg, fleet)): State<(AppState, Arc<Registry>, crate::metrics::FleetMetrics)>,
) -> Response {
    st.chunks.scrape();
    let now = crate::time::now_unix();
    match st.db.read(move |c| fleet_figures(c, now)).await {
        Ok((tasks, hosts, left, age)) => fleet.set(&tasks, &hosts, &left, &age),
        Err(e) => tracing::warn!("metrics: cannot read the fleet's figures: {e}"),
    }
    crate::metrics::render(&reg)
}

type Figures = Vec<(String, u64)>;

/// Tasks by state, hosts by site, push bytes left by site, relay heartbeat age by site.
fn fleet_figures(
    c: &rusqlite::Connection,
    now: i64,
) -> Result<(Figures, Figures, Figures, Figures), crate::db::DbError> {
    let s = crate::db::dashboard::summary(c, None, now)?;
    // every state and every site has a sample, 0 included (absent would read as unknown)
    let mut tasks: Figures = crate::db::TaskState::ALL
        .iter()
        .map(|st| {
            let st = st.as_str();
            let n = s.open.get(st).or(s.last_day.get(st)).copied().unwrap_or(0);
            (st.to_string(), n)
        })
        .collect();
    tasks.sort();
    let mut hosts = s.hosts;
    let mut left: std::collections::BTreeMap<String, u64> = Default::default();
    let mut age = Vec::new();
    let open = crate::db::pushes::list(c, false)?;
    for site in crate::db::sites::list(c)? {
        for p in &open {
            for ps in p.sites.iter().filter(|ps| ps.site == site.name) {
                let st = crate::push::status::site_status(p, ps, &site, now);
                *left.entry(site.name.clone()).or_default() +=
                    st.bytes_total.saturating_sub(st.bytes_done);
            }
        }
        left.entry(site.name.clone()).or_default();
        hosts.entry(site.name.clone()).or_default();
        if let Some(r) = &site.relay {
            age.push((site.name.clone(), (now - r.last_heartbeat).max(0) as u64));
        }
    }
    Ok((
        tasks,
        hosts.into_iter().collect(),
        left.into_iter().collect(),
        age,
    ))
}

impl ChunkService {
    /// Sets the gauges `/metrics` computes at each scrape; encode the registry after.
    pub fn scrape(&self) {
        self.metrics.captures_open.set(self.captures.count() as u64);
    }
}

impl Metrics {
    /// Registers the chunk service's metrics in `reg` (counters without `_total`: the
    /// encoder appends it).
    pub fn register(&self, reg: &mut Registry) {
        let counters: [(&str, &str, &Counter); 11] = [
            (
                "bootcast_chunk_bytes_served",
                "Compressed chunk bytes sent (GET /chunks/{id} and POST /chunks/batch)",
                &self.chunk_bytes_served,
            ),
            ("bootcast_chunks_served", "Chunks sent", &self.chunks_served),
            (
                "bootcast_chunks_missing",
                "Chunks asked for that the store lacks",
                &self.chunks_missing,
            ),
            (
                "bootcast_chunk_requests",
                "GET /chunks/{id} requests",
                &self.chunk_requests,
            ),
            (
                "bootcast_chunks_from_memory",
                "GET /chunks/{id} answered from the frames served lately, kept in memory",
                &self.chunks_from_memory,
            ),
            (
                "bootcast_chunk_batch_requests",
                "POST /chunks/batch requests",
                &self.batch_requests,
            ),
            (
                "bootcast_manifests_served",
                "Manifests sent",
                &self.manifests_served,
            ),
            (
                "bootcast_capture_bytes_received",
                "Bytes of capture uploads received (POST /api/v1/agent/capture/chunks bodies)",
                &self.capture_bytes_received,
            ),
            (
                "bootcast_capture_uploads",
                "POST /api/v1/agent/capture/chunks requests that reached the body",
                &self.capture_uploads,
            ),
            (
                "bootcast_capture_chunks_stored",
                "Uploaded chunks the store lacked, verified and stored",
                &self.capture_chunks_stored,
            ),
            (
                "bootcast_capture_chunks_refused",
                "Uploaded chunks that did not match their id",
                &self.capture_chunks_refused,
            ),
        ];
        for (name, help, c) in counters {
            reg.register(name, help, c.clone());
        }
        reg.register(
            "bootcast_captures_open",
            "Captures with a session on this server now",
            self.captures_open.clone(),
        );
    }
}

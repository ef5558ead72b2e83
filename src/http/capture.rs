//! The agent's capture endpoints: a host's disk becomes a new image version in this server's
//! store (wire format in [`crate::proto::agent`]).
//!
//! | route | answer |
//! |---|---|
//! | `POST /api/v1/agent/capture/missing` | `{ids}` → `{missing, sizes}`: which chunks the store lacks |
//! | `POST /api/v1/agent/capture/chunks` | upload frames → `{chunks, stored}`; all verified before any is stored |
//! | `POST /api/v1/agent/capture/commit` | the manifest file → `{task, state: "done", version}` |
//!
//! Every request carries `X-Bootcast-Mac`, `X-Bootcast-Session` and `X-Bootcast-Task`: the
//! boot's session from the hello (403 otherwise), and the task must be that host's own open
//! capture task (404 another's, 409 once closed: the agent stops).
//!
//! **Store writes** go through an ingest [`Session`] kept per capture while it runs: chunks
//! are claimed when asked about and when uploaded (so `store gc` keeps them, see
//! [`crate::store::gc`]), written to temp files and published (synced, renamed) before an
//! upload is answered, and the manifest is written by the session's commit, as `image add`
//! does. A session ends with the commit, when the task is reported failed or cancelled through
//! the API, when a request finds the task closed, or after [`IDLE`] without requests; its
//! chunks are then protected no longer. The agent's next question recreates it, and chunks
//! still in the store are not sent again.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap};
use axum::response::IntoResponse;
use axum::Json;

use super::error::{parse_chunk_id, ApiError, ApiResult};
use super::AppState;
use crate::db::{tasks, Task, TaskKind, TaskState};
use crate::mac::Mac;
use crate::proto::agent::{
    parse_frames, CaptureCommitted, CaptureMissing, CaptureMissingReply, CaptureUploaded,
    HEADER_MAC, HEADER_SESSION, HEADER_TASK, MANIFEST_MAX_BYTES, MISSING_MAX_IDS, UPLOAD_MAX_BYTES,
};
use crate::store::session::Session;
use crate::store::source::Decoder;
use crate::store::{ChunkId, Manifest, Store, StoreError};

/// A capture session unused for this long is dropped.
pub const IDLE: Duration = Duration::from_secs(3600);

/// The capture sessions in progress, by task id.
#[derive(Default)]
pub struct Captures {
    open: Mutex<HashMap<i64, Arc<Capture>>>,
}

/// One capture in progress: its ingest session.
pub struct Capture {
    session: Session,
    /// New chunk bytes (as stored) this capture published so far ([`AppState::capture_max_bytes`]
    /// bounds them).
    stored_bytes: std::sync::atomic::AtomicU64,
    /// Writes and the commit of one capture go one at a time (two requests carrying the same
    /// chunk must not share its temp file).
    writing: Mutex<()>,
    last_used: Mutex<Instant>,
}

impl Captures {
    /// The session of task `task`, begun if there is none; drops sessions idle for [`IDLE`].
    /// Blocking (file system).
    fn session(&self, task: i64, store: &Store) -> Result<Arc<Capture>, StoreError> {
        let now = Instant::now();
        let mut open = self.open.lock().unwrap();
        Self::drop_idle(&mut open, now);
        if let Some(c) = open.get(&task) {
            *c.last_used.lock().unwrap() = now;
            return Ok(c.clone());
        }
        let c = Arc::new(Capture {
            session: Session::begin(store)?,
            stored_bytes: std::sync::atomic::AtomicU64::new(0),
            writing: Mutex::new(()),
            last_used: Mutex::new(now),
        });
        open.insert(task, c.clone());
        Ok(c)
    }

    /// Forgets task `task`'s session (committed, failed or cancelled); its directory goes when
    /// the last request using it ends.
    pub fn end(&self, task: i64) {
        self.open.lock().unwrap().remove(&task);
    }

    /// Captures with a session now (after dropping idle ones).
    pub fn count(&self) -> usize {
        self.sweep();
        self.open.lock().unwrap().len()
    }

    /// Drops the sessions idle for [`IDLE`] (a capture whose agent went away, or whose task
    /// was cancelled from the command line, which does not reach this process).
    pub fn sweep(&self) {
        Self::drop_idle(&mut self.open.lock().unwrap(), Instant::now());
    }

    fn drop_idle(open: &mut HashMap<i64, Arc<Capture>>, now: Instant) {
        open.retain(|_, c| now.duration_since(*c.last_used.lock().unwrap()) < IDLE);
    }
}

/// The host and task a capture request is for, once its headers check out.
struct Caller {
    mac: Mac,
    task: Task,
    image: String,
}

/// Checks a capture request's headers: session (403), the host's own task (404), a capture (400),
/// open (409, unless `closed_ok`).
async fn caller(
    st: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
    what: &'static str,
    closed_ok: bool,
) -> ApiResult<Caller> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let mac: Mac = match get(HEADER_MAC).map(str::parse) {
        Some(Ok(m)) => m,
        Some(Err(e)) => return Err(ApiError::bad_request(e.to_string())),
        None => {
            return Err(ApiError::bad_request(format!("no {HEADER_MAC} header: name the MAC this boot's kernel command line carries (bootcast.mac=)"),
            ))
        }
    };
    let Some(id) = get(HEADER_TASK).and_then(|t| t.parse::<i64>().ok()) else {
        return Err(ApiError::bad_request(format!("no task number in the {HEADER_TASK} header: name the task of bootcast.task= on the kernel command line"),
        ));
    };
    let session = get(HEADER_SESSION).map(str::to_string);
    let headers = headers.clone();
    let now = crate::time::now_unix();
    let res = st
        .db
        .call(move |c| {
            if let Err(refused) =
                super::api::check_session(c, &headers, peer, mac, session.as_deref(), (now, true))?
            {
                return Ok(Err(refused));
            }
            Ok(Ok(tasks::get(c, id)?))
        })
        .await;
    let task = match res {
        Ok(Ok(Some(t))) if t.mac == mac => t,
        Ok(Ok(_)) => {
            return Err(ApiError::not_found(format!("host {mac} has no task {id}; capture only for the task named by bootcast.task= on this boot's kernel command line"),
            ))
        }
        Ok(Err((r, from))) => return Err(super::api::refused(&r, mac, from, what)),
        Err(e) => return Err(e.into()),
    };
    if task.kind != TaskKind::Capture {
        return Err(ApiError::bad_request(format!(
            "task {id} is a {} task, not a capture; the capture endpoints serve capture tasks only",
            task.kind.as_str()
        )));
    }
    if !task.state.is_open() {
        // closed (done, failed, cancelled from the command line): its session is of no use
        st.chunks.captures.end(id);
    }
    if !task.state.is_open() && !closed_ok {
        tracing::warn!(%mac, task = id, "agent {what} refused: task {}", task.state.as_str());
        return Err(ApiError::conflict(format!(
            "task {id} is already {}; stop working on it and reboot",
            task.state.as_str()
        )));
    }
    let Some(image) = task.image.clone() else {
        return Err(ApiError::conflict(format!("capture task {id} names no image; cancel it and create it again with `bootcast task capture --image NAME`"),
        ));
    };
    Ok(Caller { mac, task, image })
}

/// The store, created with the defaults if this server has none yet (as `image add` does).
async fn store(st: &AppState) -> ApiResult<Store> {
    let chunks = st.chunks.clone();
    tokio::task::spawn_blocking(move || chunks.store_or_create()).await?
}

/// Reads a request body of at most `max` bytes; 413 beyond, naming the limit.
async fn read_body(headers: &HeaderMap, body: Body, max: usize, what: &str) -> ApiResult<Bytes> {
    let too_large = |len: String| {
        ApiError::too_large(format!(
                "{what} of {len} bytes; at most {max} bytes ({} MiB) per request: send less per request",
                max >> 20
            ),
        )
    };
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
    {
        if len > max as u64 {
            return Err(too_large(len.to_string()));
        }
    }
    axum::body::to_bytes(body, max).await.map_err(|e| {
        let text = crate::store::source::error_chain(&e);
        if text.contains("length limit") {
            too_large("more than that".into())
        } else {
            ApiError::bad_request(format!("reading the {what}: {text}"))
        }
    })
}

/// `POST /api/v1/agent/capture/missing`: `{ids}` → `{missing, sizes}`. Every id asked about is
/// claimed for the capture first, so gc keeps the chunks the answer says are there.
pub async fn missing(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let who = caller(&st, peer, &headers, "capture/missing", false).await?;
    let req: CaptureMissing = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return Err(ApiError::bad_request(format!(
                "the body must be {{\"ids\": [\"<64 hex digits>\", ...]}}: {e}"
            )))
        }
    };
    if req.ids.len() > MISSING_MAX_IDS {
        return Err(ApiError::too_large(format!(
            "{} ids in one request; at most {MISSING_MAX_IDS}: split it",
            req.ids.len()
        )));
    }
    let ids: Vec<ChunkId> = req
        .ids
        .iter()
        .map(|s| parse_chunk_id(s))
        .collect::<ApiResult<_>>()?;
    let store = store(&st).await?;
    let chunks = st.chunks.clone();
    let task = who.task.id;
    let res = tokio::task::spawn_blocking(move || {
        let capture = chunks.captures.session(task, &store)?;
        let mut sizes = Vec::with_capacity(ids.len());
        for id in &ids {
            capture.session.claim(id)?;
            sizes.push(store.chunk_size(id)?.map(|n| n as u32));
        }
        Ok::<_, StoreError>((ids, sizes))
    })
    .await?;
    let (ids, sizes) = res?;
    Ok(Json(CaptureMissingReply {
        missing: ids
            .iter()
            .zip(&sizes)
            .filter(|(_, s)| s.is_none())
            .map(|(id, _)| id.to_hex())
            .collect(),
        sizes,
    })
    .into_response())
}

/// `POST /api/v1/agent/capture/chunks`: upload frames (format in [`crate::proto::agent`]).
/// Every frame is decompressed and hashed first; one that does not match its id refuses the
/// whole request (400 naming it) and nothing of it is stored. The rest are written, synced
/// and published before the answer.
pub async fn chunks(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let who = caller(&st, peer, &headers, "capture/chunks", false).await?;
    let body = read_body(&headers, body, UPLOAD_MAX_BYTES, "an upload").await?;
    let m = &st.chunks.metrics;
    m.capture_bytes_received.inc_by(body.len() as u64);
    m.capture_uploads.inc();
    let store = store(&st).await?;
    let service = st.chunks.clone();
    let task = who.task.id;
    let mac = who.mac;
    let quota = st.capture_max_bytes;
    let res = tokio::task::spawn_blocking(move || -> ApiResult<CaptureUploaded> {
        let frames = parse_frames(&body).map_err(ApiError::bad_request)?;
        let mut decoder = Decoder::new(store.config().chunker.max as usize);
        for (id, frame) in &frames {
            if let Err(reason) = decoder.decode(id, frame) {
                service
                    .metrics
                    .capture_chunks_refused
                    .inc();
                tracing::warn!(%mac, task, "capture upload refused: chunk {id}: {reason}");
                return Err(ApiError::bad_request(format!("chunk {id} does not match its id: {reason}; nothing of this upload was stored; upload each chunk as the zstd frame of the bytes its id is the BLAKE3 hash of"),
                ));
            }
        }
        let capture = service.captures.session(task, &store)?;
        let _writing = capture.writing.lock().unwrap();
        // the chunks of this upload the store lacks, and their bytes: checked against the
        // task's quota before anything is written
        let mut new = Vec::new();
        let mut seen = HashSet::new();
        let mut new_bytes = 0u64;
        for (id, frame) in &frames {
            capture.session.claim(id)?;
            if seen.insert(*id) && store.chunk_size(id)?.is_none() {
                new_bytes += frame.len() as u64;
                new.push((id, frame));
            }
        }
        let total = capture.stored_bytes.load(std::sync::atomic::Ordering::Relaxed) + new_bytes;
        if total > quota {
            tracing::warn!(%mac, task, "capture upload refused: {total} bytes would pass the task's quota of {quota}");
            return Err(ApiError::too_large(format!("this capture would store {total} bytes of new chunks, more than the {quota} one capture task may ([capture] max_bytes on the server); nothing of this upload was stored")));
        }
        let mut batch = Vec::with_capacity(new.len());
        for (id, frame) in new {
            batch.push((*id, capture.session.write_temp(id, frame)?));
        }
        let stored = batch.len();
        capture.session.publish(&mut batch)?;
        capture
            .stored_bytes
            .fetch_add(new_bytes, std::sync::atomic::Ordering::Relaxed);
        service
            .metrics
            .capture_chunks_stored
            .inc_by(stored as u64);
        Ok(CaptureUploaded {
            chunks: frames.len(),
            stored,
        })
    })
    .await??;
    Ok(Json(res).into_response())
}

/// `POST /api/v1/agent/capture/commit`: the manifest file. Checked (decodes, names the task's
/// image, cut with the store's chunker parameters, every chunk present), stamped with this
/// server's time, written through the session's commit; the task is done with the version.
/// Committing again the version a done task made answers the same (a lost answer is retried).
pub async fn commit(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let who = caller(&st, peer, &headers, "capture/commit", true).await?;
    let body = read_body(&headers, body, MANIFEST_MAX_BYTES, "a manifest").await?;
    let (mut manifest, version) = match Manifest::decode(&body) {
        Ok(m) => m,
        Err(e) => {
            return Err(ApiError::bad_request(format!(
                "the manifest sent is not valid: {e}"
            )))
        }
    };
    let id = who.task.id;
    let done = |version: String| {
        Json(CaptureCommitted {
            task: id,
            state: TaskState::Done.as_str().to_string(),
            version,
        })
        .into_response()
    };
    if !who.task.state.is_open() {
        if who.task.state == TaskState::Done
            && who.task.version.as_deref() == Some(&version.to_hex())
        {
            return Ok(done(version.to_hex()));
        }
        return Err(ApiError::conflict(format!(
            "task {id} is already {}; stop working on it and reboot",
            who.task.state.as_str()
        )));
    }
    if manifest.name != who.image {
        return Err(ApiError::bad_request(format!(
                "the manifest names image {:?}, task {id} captures {:?}; commit under the image of the hello reply",
                manifest.name, who.image
            ),
        ));
    }
    let store = store(&st).await?;
    let want = store.config().chunker;
    if manifest.params != want {
        let p = manifest.params;
        return Err(ApiError::bad_request(format!(
                "the manifest was cut with chunk sizes {}:{}:{} (zero runs from {}), the server's store uses {}:{}:{} (zero runs from {}); cut with the chunker parameters of the hello reply",
                p.min, p.avg, p.max, p.zero_min, want.min, want.avg, want.max, want.zero_min
            ),
        ));
    }
    // The agent's clock may be off (many PCs keep local time in their RTC); `latest` goes by
    // this server's.
    manifest.created = crate::time::now_unix();
    let image = manifest.name.clone();
    let auto = st
        .db
        .call(move |c| crate::db::images::auto_approve(c, &image))
        .await?;
    let service = st.chunks.clone();
    let res = tokio::task::spawn_blocking(move || {
        let capture = service.captures.session(id, &store)?;
        let _writing = capture.writing.lock().unwrap();
        // held for staff approval before its manifest exists, unless the image auto-approves
        // or the same bytes are an approved version already
        let vid = manifest.version_id();
        let path = store.version_path(&manifest.name, &vid);
        let approved_already = path.exists() && !crate::store::catalog::awaiting_approval(&path);
        if !auto && !approved_already {
            store.hold_for_approval(&manifest.name, &vid)?;
        }
        capture.session.commit(&manifest)
    })
    .await;
    let version = match res {
        Ok(Ok(v)) => v,
        Ok(Err(StoreError::ChunkMissing { id: chunk, .. })) => {
            return Err(ApiError::conflict(format!("chunk {chunk} of the manifest is not on the server; upload it (capture/chunks), then commit again"),
            ))
        }
        Ok(Err(e)) => return Err(e.into()),
        Err(e) => return Err(e.into()),
    };
    let mac = who.mac;
    let hex = version.to_hex();
    let v = hex.clone();
    let now = crate::time::now_unix();
    let res = st
        .db
        .call(move |c| tasks::finish_capture(c, mac, id, &v, now))
        .await;
    st.chunks.captures.end(id);
    match res {
        Ok(Some(_)) => {
            tracing::info!(%mac, task = id, image = %who.image, version = %hex, "capture committed");
            Ok(done(hex))
        }
        Ok(None) => Err(ApiError::conflict(format!("task {id} was closed while its version was written ({}@{hex} is stored all the same); stop working on it and reboot", who.image),
        )),
        Err(e) => Err(e.into()),
    }
}

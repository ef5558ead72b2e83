//! What the relay passes upstream: boot scripts and agent reports, requests of relays below,
//! and the boot environment and iPXE files through a small file cache.
//!
//! [`forward`] (`/boot.ipxe`, `/boot/{file}`, `/api/v1/agent/*`) sends the request upstream
//! as it came (method, query, body, content type) with [`RELAY_TOKEN_HEADER`] (the site
//! token), [`RELAY_URL_HEADER`] (this relay's URL) and [`FORWARDED_FOR_HEADER`] (the client's
//! address): the central server writes the relay's URL into that site's boot scripts and
//! records the client's address; a boot script request also carries [`DHCP_SEEN_HEADER`], the
//! address this relay's DHCP service saw that MAC at (the server hands the boot credential
//! only to it), and an agent's hello answer teaches the relay the boot's session (for its own
//! manifest and chunk routes). A request that already carries a relay token comes from a
//! relay below this one, and `/api/v1/relay/*` (a lower relay's heartbeat) is relay business
//! too: those are passed on unchanged, so the server sees the lowest relay.
//!
//! [`cached_file`] (`/bootenv/{file}`, `/ipxe/{file}`): asks upstream for the file's size and
//! date (`HEAD`); the cached copy is served if it matches, else the file is fetched (through
//! the link's token bucket), its size checked, and kept. When upstream cannot be reached the
//! cached copy is served as it is. Range requests are answered from the cached copy.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use axum::response::IntoResponse;
use tokio::io::AsyncWriteExt;
use tower::ServiceExt;
use tower_http::services::ServeFile;

use super::Relay;
use crate::db::bootcred;
use crate::http::error::{ApiError, ApiResult};
use crate::http::AppState;
use crate::proto::relay::{
    DHCP_SEEN_HEADER, FORWARDED_FOR_HEADER, RELAY_TOKEN_HEADER, RELAY_URL_HEADER, REPORT_ID_HEADER,
};

/// Largest request body passed upstream (a capture upload is at most 64 MiB). Bodies are
/// streamed upstream as they arrive, never buffered whole; one that declares more is refused
/// from its headers, one that sends more is cut off.
const MAX_BODY: usize = 65 << 20;

/// Request headers not passed on (hop-by-hop, or set by the client library).
const DROPPED: [&str; 7] = [
    "host",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "upgrade",
    "proxy-connection",
];

/// Passes a request upstream and its answer back.
pub async fn forward(
    State((app, relay)): State<(AppState, Arc<Relay>)>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> ApiResult {
    let (parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or(parts.uri.path(), |p| p.as_str());
    let url = relay.link.url(path);
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(ApiError::too_large(format!(
            "a request body of {} bytes; at most {MAX_BODY} pass through a relay",
            declared.unwrap_or_default()
        )));
    }
    let from_relay = parts.uri.path().starts_with("/api/v1/relay/")
        || parts.headers.contains_key(RELAY_TOKEN_HEADER);
    let is_hello = !from_relay && parts.uri.path() == "/api/v1/agent/hello";
    // an agent's report is read here too (small): kept if upstream cannot be reached
    let is_report = !from_relay
        && parts.method == axum::http::Method::POST
        && super::queue::QUEUED_PATHS.contains(&parts.uri.path());
    let mut report: Option<(axum::body::Bytes, String)> = None;
    // a hello is read here (it is small): its answer is checked against what it asked
    let (body, hello) = if is_hello {
        let bytes = axum::body::to_bytes(body, HELLO_MAX)
            .await
            .map_err(|e| ApiError::bad_request(format!("reading the hello: {e}")))?;
        let hello = serde_json::from_slice::<crate::proto::agent::Hello>(&bytes).ok();
        (reqwest::Body::from(bytes), hello)
    } else if is_report {
        let bytes = axum::body::to_bytes(body, REPORT_MAX)
            .await
            .map_err(|e| ApiError::bad_request(format!("reading the report: {e}")))?;
        let id = crate::http::auth::random_hex(16)
            .map_err(|e| ApiError::internal(format!("cannot read random bytes: {e}")))?;
        report = Some((bytes.clone(), id));
        (reqwest::Body::from(bytes), None)
    } else {
        let body = reqwest::Body::wrap_stream(
            axum::body::Body::new(http_body_util::Limited::new(body, MAX_BODY)).into_data_stream(),
        );
        (body, None)
    };
    let mut headers = HeaderMap::new();
    for (name, value) in &parts.headers {
        if !DROPPED.contains(&name.as_str()) {
            headers.append(name.clone(), value.clone());
        }
    }
    if !from_relay {
        // what only a relay may say, said by a client: dropped
        headers.remove(DHCP_SEEN_HEADER);
        headers.remove(REPORT_ID_HEADER);
        if let Some((_, id)) = &report {
            headers.insert(
                HeaderName::from_static(REPORT_ID_HEADER),
                HeaderValue::from_str(id).expect("hex is a header value"),
            );
        }
        let script = parts.uri.path().strip_prefix("/boot/");
        if let Some(mac) = script.and_then(crate::boot::ipxe::script_mac) {
            let since = crate::time::now_unix() - app.boot.credential_secs;
            if let Some(ip) = app.db.call(move |c| bootcred::seen(c, mac, since)).await? {
                headers.insert(
                    HeaderName::from_static(DHCP_SEEN_HEADER),
                    HeaderValue::from_str(&ip.to_string()).expect("an address is a header value"),
                );
            }
        }
        for (name, value) in [
            (RELAY_TOKEN_HEADER, relay.config.token.clone()),
            (RELAY_URL_HEADER, relay.url.clone()),
            (FORWARDED_FOR_HEADER, peer.ip().to_string()),
        ] {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(HeaderName::from_static(name), v);
            }
        }
    }
    // a PC's own boot script: what it does when upstream does not answer in time
    let host_script = (!from_relay && parts.method == axum::http::Method::GET)
        .then(|| parts.uri.path().strip_prefix("/boot/"))
        .flatten()
        .and_then(crate::boot::ipxe::script_mac);
    let timeout = if host_script.is_some() {
        SCRIPT_TIMEOUT
    } else {
        Duration::from_secs(120)
    };
    let sent = relay
        .link
        .client
        .request(parts.method.clone(), &url)
        .headers(headers)
        .timeout(timeout)
        .body(body)
        .send()
        .await;
    // upstream did not answer (or a relay above says its own upstream does not): a report is
    // kept for later, a boot script answered here
    let down = match &sent {
        Err(e) => Some(e.to_string()),
        Ok(r) if matches!(r.status().as_u16(), 502..=504) => {
            Some(format!("upstream answered {}", r.status()))
        }
        Ok(_) => None,
    };
    if let Some(why) = down {
        if let Some((bytes, id)) = report {
            return queue_report(&app, &relay, parts.uri.path(), bytes, id, peer.ip(), &why).await;
        }
        if let Some(mac) = host_script {
            return Ok(offline_script(&relay, mac, parts.uri.query(), &why).into_response());
        }
    }
    let resp = sent.map_err(|e| {
        tracing::warn!("passing {} {path} upstream: {e}", parts.method);
        ApiError::bad_gateway(format!(
            "the relay cannot reach its upstream {}: {e}",
            relay.link.base
        ))
    })?;
    let status = resp.status();
    let mut out = HeaderMap::new();
    for (name, value) in resp.headers() {
        let n = name.as_str();
        if n == "content-type" || n == "cache-control" || n.starts_with("x-bootcast-") {
            out.append(name.clone(), value.clone());
        }
    }
    let b = resp
        .bytes()
        .await
        .map_err(|e| ApiError::bad_gateway(format!("reading the answer of {url}: {e}")))?;
    let script = !from_relay
        && status.is_success()
        && parts.uri.path().starts_with("/boot/")
        && parts.uri.path().ends_with(".ipxe");
    Ok(match hello {
        Some(h) if status.is_success() => {
            (status, out, on_hello(&app, &relay, &h, b, peer.ip()).await?).into_response()
        }
        // the agent verifies with the keys this relay pinned, whatever upstream wrote
        _ if script => match (relay.keys(), std::str::from_utf8(&b)) {
            (Some(keys), Ok(text)) => {
                (status, out, crate::boot::ipxe::set_key(text, &keys)).into_response()
            }
            _ => (status, out, b).into_response(),
        },
        _ => (status, out, b).into_response(),
    })
}

/// How long a PC's boot script may wait for upstream before the relay answers it alone: the
/// central server answers in milliseconds, and a PC waiting on a dead WAN link should boot its
/// disk in its normal time.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(8);

/// The boot script a relay gives while upstream cannot be reached: the local disk. Nothing is
/// reimaged or registered without the central server's word (a task, a credential), so the
/// safe answer for every machine, known or not, is its own disk; its next boot once the link
/// is back gets whatever central decides.
fn offline_script(
    relay: &Relay,
    mac: crate::mac::Mac,
    query: Option<&str>,
    why: &str,
) -> (axum::http::StatusCode, HeaderMap, String) {
    let uefi = query.is_some_and(|q| q.split('&').any(|kv| kv == "platform=efi"));
    relay.metrics.offline_scripts.inc();
    tracing::warn!(%mac, uefi, "upstream unreachable ({why}): the machine boots its local disk");
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    let script = crate::boot::ipxe::BootScript::LocalDisk { uefi }.render(&relay.url);
    (axum::http::StatusCode::OK, headers, script)
}

/// Largest agent report a relay reads (an inventory is a few KB; the server takes 4 MiB).
const REPORT_MAX: usize = crate::http::inventory::MAX_INVENTORY;

/// An agent report upstream did not take (unreachable): kept in [`super::queue`] if it
/// belongs to a boot whose hello this relay passed on (its session, from the same address),
/// answered `202 Accepted` with what the agent reads (the task and `queued`, or an empty
/// inventory acknowledgement); else refused as before.
async fn queue_report(
    app: &AppState,
    relay: &Arc<Relay>,
    path: &str,
    body: axum::body::Bytes,
    id: String,
    agent: std::net::IpAddr,
    why: &str,
) -> ApiResult {
    #[derive(serde::Deserialize)]
    struct Who {
        mac: String,
        session: String,
        #[serde(default)]
        task: Option<i64>,
    }
    let unreachable = || {
        ApiError::bad_gateway(format!(
            "the relay cannot reach its upstream {}: {why}",
            relay.link.base
        ))
    };
    let Ok(who) = serde_json::from_slice::<Who>(&body) else {
        return Err(unreachable());
    };
    let Ok(mac) = who.mac.parse::<crate::mac::Mac>() else {
        return Err(unreachable());
    };
    let (session, now) = (who.session.clone(), crate::time::now_unix());
    let known = app
        .db
        .call(move |c| bootcred::check_adopted(c, mac, &session, agent, now))
        .await?;
    if !known {
        return Err(unreachable());
    }
    let q = super::queue::Queued {
        id,
        path: path.to_string(),
        forwarded_for: agent.to_string(),
        body: String::from_utf8_lossy(&body).into_owned(),
        queued_at: now,
    };
    let progress_of = (path == "/api/v1/agent/progress")
        .then_some(who.task)
        .flatten()
        .map(|t| (mac.to_string(), t));
    let data = relay.store.data_dir().to_path_buf();
    let kept = tokio::task::spawn_blocking(move || {
        super::queue::push(
            &data,
            &q,
            progress_of.as_ref().map(|(m, t)| (m.as_str(), *t)),
        )
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?;
    match kept {
        Ok(n) => {
            relay.metrics.reports_queued.set(n as u64);
        }
        Err(e) => {
            tracing::error!(%mac, "cannot keep an agent report for later: {e}");
            return Err(unreachable());
        }
    }
    tracing::warn!(%mac, path, "upstream unreachable ({why}): the report is kept and passed on when it answers");
    let answer = if path == "/api/v1/agent/inventory" {
        serde_json::json!({ "id": 0, "changes": [], "queued": true })
    } else {
        serde_json::json!({ "task": who.task.unwrap_or(0), "state": "queued" })
    };
    Ok((axum::http::StatusCode::ACCEPTED, axum::Json(answer)).into_response())
}

/// Largest hello body a relay reads (a hello is a few hundred bytes).
const HELLO_MAX: usize = 64 << 10;

/// A hello answer on its way to an agent of this site. The relay keeps the boot's session
/// (the agent's manifest and chunk requests here carry it). A reimage by room multicast runs
/// here, from this relay's store, on the site's network; if the relay cannot run it (the
/// version is not complete here yet, no interface faces the agent), the reply loses its
/// multicast session and the agent restores over HTTP through the relay.
async fn on_hello(
    app: &AppState,
    relay: &Arc<Relay>,
    hello: &crate::proto::agent::Hello,
    body: axum::body::Bytes,
    agent: std::net::IpAddr,
) -> Result<axum::body::Bytes, ApiError> {
    use crate::proto::agent::{HelloAnswer, HelloReply};
    let Ok(answer) = serde_json::from_slice::<HelloAnswer>(&body) else {
        return Ok(body);
    };
    // a reimage order is passed on only as the central server signed it, for this boot
    if let HelloReply::Reimage {
        task,
        image,
        version,
        signature,
        ..
    } = &answer.reply
    {
        if let Err(why) = relay.check_order(
            (&hello.mac.to_ascii_lowercase(), hello.task),
            (*task, &answer.mac, image, version),
            signature.as_deref(),
        ) {
            relay.metrics.orders_refused.inc();
            tracing::error!(mac = %hello.mac, "{why}");
            return Err(ApiError::bad_gateway(format!(
                "relay {} did not pass the upstream's answer on: {why}",
                relay.config.site
            )));
        }
    }
    let task = match &answer.reply {
        HelloReply::Reimage { task, .. } | HelloReply::Capture { task, .. } => Some(*task),
        _ => None,
    };
    if let Ok(mac) = answer.mac.parse::<crate::mac::Mac>() {
        let (session, now) = (answer.session.clone(), crate::time::now_unix());
        if let Err(e) = app
            .db
            .call(move |c| bootcred::adopt(c, mac, &session, agent, task, now))
            .await
        {
            tracing::error!(%mac, "cannot record the agent's session: {e}");
        }
    }
    let HelloAnswer {
        mac,
        session,
        reply:
            HelloReply::Reimage {
                task,
                image,
                version,
                hostname,
                multicast: Some(join),
                signature,
            },
    } = answer
    else {
        return Ok(body);
    };
    let (sessions, store) = (relay.sessions.clone(), relay.store.clone());
    let (i, v) = (image.clone(), version.clone());
    let offered = tokio::task::spawn_blocking(move || {
        crate::multicast::sessions::offer(&sessions, Some(store), join, &i, &v, agent, |r| match r {
            Ok(r) => tracing::info!(session = %r.session, "multicast run ended: {}, {} of {} receivers done, {} bytes in {} passes", r.ended, r.receivers_done, r.receivers_joined, r.bytes, r.passes),
            Err(e) => tracing::warn!("multicast run failed: {e}"),
        })
        .map(|(join, _)| join)
    })
    .await
    .ok()
    .flatten();
    let answer = HelloAnswer {
        mac,
        session,
        reply: HelloReply::Reimage {
            task,
            image,
            version,
            hostname,
            multicast: offered,
            signature,
        },
    };
    Ok(serde_json::to_vec(&answer).map(Into::into).unwrap_or(body))
}

/// The relay's copies of upstream files, one lock per file so concurrent requests fetch it
/// once.
pub struct FileCache {
    dir: PathBuf,
    locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl FileCache {
    pub fn new(dir: PathBuf) -> FileCache {
        FileCache {
            dir,
            locks: Default::default(),
        }
    }

    fn lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.to_string())
            .or_default()
            .clone()
    }
}

fn valid_file(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// `GET /bootenv/{file}` and `GET /ipxe/{file}` through the file cache.
pub async fn cached_file(
    State(relay): State<Arc<Relay>>,
    Path(file): Path<String>,
    req: Request,
) -> ApiResult {
    let kind = if req.uri().path().starts_with("/bootenv/") {
        "bootenv"
    } else {
        "ipxe"
    };
    if !valid_file(&file) {
        return Err(ApiError::not_found(format!("no file {file:?}")));
    }
    let key = format!("{kind}/{file}");
    let path = relay.files.dir.join(kind).join(&file);
    let meta_path = relay.files.dir.join(kind).join(format!(".{file}.meta"));
    let lock = relay.files.lock(&key);
    let guard = lock.lock().await;
    match refresh(&relay, &key, &path, &meta_path).await {
        Ok(()) => {}
        Err(Refresh::Answer(e)) => {
            let _ = tokio::fs::remove_file(&path).await;
            let _ = tokio::fs::remove_file(&meta_path).await;
            return Err(e);
        }
        Err(Refresh::Unreachable(e)) => {
            if tokio::fs::metadata(&path).await.is_err() {
                return Err(ApiError::bad_gateway(format!(
                    "the relay has no copy of /{key} and cannot reach its upstream: {e}"
                )));
            }
            tracing::warn!("/{key}: upstream unreachable ({e}); serving the cached copy");
        }
    }
    drop(guard);
    match ServeFile::new(path).oneshot(req).await {
        Ok(r) => Ok(r.map(Body::new)),
        Err(e) => match e {},
    }
}

enum Refresh {
    /// Upstream's answer to pass on (e.g. 404).
    Answer(ApiError),
    Unreachable(String),
}

/// Brings the cached copy of `key` up to date with upstream.
async fn refresh(
    relay: &Relay,
    key: &str,
    path: &std::path::Path,
    meta_path: &std::path::Path,
) -> Result<(), Refresh> {
    let url = relay.link.url(&format!("/{key}"));
    let unreachable = |e: reqwest::Error| Refresh::Unreachable(e.to_string());
    let head = relay
        .link
        .client
        .head(&url)
        .timeout(Duration::from_secs(15))
        .send()
        .await
        .map_err(unreachable)?;
    if !head.status().is_success() {
        if head.status().is_server_error() {
            return Err(Refresh::Unreachable(format!(
                "{url} answered {}",
                head.status()
            )));
        }
        return Err(Refresh::Answer(ApiError::new(
            head.status(),
            format!("upstream has no /{key} ({})", head.status()),
        )));
    }
    let size = head
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let stamp = head
        .headers()
        .get(header::LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let meta = format!("{} {stamp}", size.map_or("?".into(), |s| s.to_string()));
    let cached = tokio::fs::metadata(path).await.ok().map(|m| m.len());
    if size.is_some()
        && cached == size
        && tokio::fs::read_to_string(meta_path).await.ok().as_deref() == Some(meta.as_str())
    {
        return Ok(());
    }
    // fetch into a temp file, check the size, then rename
    let mut resp = relay
        .link
        .client
        .get(&url)
        .timeout(Duration::from_secs(3600))
        .send()
        .await
        .map_err(unreachable)?;
    if !resp.status().is_success() {
        return Err(Refresh::Unreachable(format!(
            "{url} answered {}",
            resp.status()
        )));
    }
    let dir = path.parent().expect("a cached file has a directory");
    let io =
        |e: std::io::Error| Refresh::Answer(ApiError::internal(format!("caching /{key}: {e}")));
    tokio::fs::create_dir_all(dir).await.map_err(io)?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_string_lossy()
    ));
    let mut f = tokio::fs::File::create(&tmp).await.map_err(io)?;
    let mut got = 0u64;
    loop {
        let chunk = match resp.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(Refresh::Unreachable(format!("reading {url}: {e}")));
            }
        };
        let wait = relay.link.limiter.reserve(chunk.len() as u64);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        got += chunk.len() as u64;
        relay.metrics.file_bytes.inc_by(chunk.len() as u64);
        f.write_all(&chunk).await.map_err(io)?;
    }
    f.flush().await.map_err(io)?;
    drop(f);
    if size.is_some_and(|s| s != got) {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(Refresh::Unreachable(format!(
            "{url} sent {got} bytes where it announced {}",
            size.unwrap_or(0)
        )));
    }
    tokio::fs::rename(&tmp, path).await.map_err(io)?;
    tokio::fs::write(meta_path, format!("{got} {stamp}"))
        .await
        .map_err(io)?;
    tracing::info!("/{key}: {got} bytes fetched from upstream and cached");
    Ok(())
}

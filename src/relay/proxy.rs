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
//! While upstream does not answer, a boot script (and `/boot.ipxe`) is answered by the relay
//! from its site book ([`super::alone`]); the hello of a boot it started so is answered here,
//! and that boot's reports always go through the queue ([`super::queue`]).
//!
//! [`cached_file`] (`/bootenv/{file}`, `/ipxe/{file}`): asks upstream for the file's size and
//! date (`HEAD`); the cached copy is served if it matches, else the file is fetched (through
//! the link's token bucket), its size checked, and kept. When upstream cannot be reached (or
//! the last heartbeat could not), the cached copy is served as it is. Range requests are
//! answered from the cached copy.

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
    DHCP_SEEN_HEADER, FORWARDED_FOR_HEADER, OFFLINE_BOOT_HEADER, RELAY_TOKEN_HEADER,
    RELAY_URL_HEADER, REPORT_ID_HEADER,
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
        let id = crate::http::auth::random_hex_for_request(16)?;
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
        headers.remove(crate::proto::relay::DHCP_CIRCUIT_HEADER);
        headers.remove(REPORT_ID_HEADER);
        headers.remove(OFFLINE_BOOT_HEADER);
        if let Some((_, id)) = report
            .as_ref()
            .filter(|_| super::queue::applied_once(parts.uri.path()))
        {
            headers.insert(
                HeaderName::from_static(REPORT_ID_HEADER),
                HeaderValue::from_str(id).expect("hex is a header value"),
            );
        }
        let script = parts.uri.path().strip_prefix("/boot/");
        if let Some((mac, _)) = script.and_then(crate::boot::script::script_target) {
            let since = crate::time::now_unix() - app.boot.credential_secs;
            let seen = app
                .db
                .read(move |c| bootcred::seen_behind(c, mac, since))
                .await?;
            if let Some((ip, circuit)) = seen {
                headers.insert(
                    HeaderName::from_static(DHCP_SEEN_HEADER),
                    HeaderValue::from_str(&ip.to_string()).expect("an address is a header value"),
                );
                if let Some(v) = circuit.and_then(|c| HeaderValue::from_str(&c).ok()) {
                    headers.insert(
                        HeaderName::from_static(crate::proto::relay::DHCP_CIRCUIT_HEADER),
                        v,
                    );
                }
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
    // a boot this relay started alone is finished here: its hello answered, its reports queued
    if let Some(h) = &hello {
        if let Some(answer) = hello_alone(&app, &relay, h, peer.ip()).await? {
            return Ok(answer);
        }
    }
    if let Some((bytes, id)) = &report {
        if started_here(&app, bytes, peer.ip()).await? {
            return queue_report(
                &app,
                &relay,
                parts.uri.path(),
                (bytes.clone(), id.clone(), true),
                peer.ip(),
                "a boot this relay started alone",
            )
            .await;
        }
    }
    // a PC's own boot script: what it does when upstream does not answer in time
    let host_script = (!from_relay && parts.method == axum::http::Method::GET)
        .then(|| parts.uri.path().strip_prefix("/boot/"))
        .flatten()
        .and_then(crate::boot::script::script_target);
    let known_down = relay
        .upstream_down
        .load(std::sync::atomic::Ordering::Relaxed);
    let timeout = if host_script.is_some() || parts.uri.path() == "/boot.ipxe" {
        // known to be down (the heartbeat failed): not worth the PC's wait
        if known_down {
            SCRIPT_TIMEOUT_DOWN
        } else {
            SCRIPT_TIMEOUT
        }
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
            return queue_report(
                &app,
                &relay,
                parts.uri.path(),
                (bytes, id, false),
                peer.ip(),
                &why,
            )
            .await;
        }
        if let Some(target) = host_script {
            return offline_script(&app, &relay, target, parts.uri.query(), peer.ip(), &why).await;
        }
        if !from_relay && parts.uri.path() == "/boot.ipxe" {
            return Ok(crate::http::boot::script(crate::boot::ipxe::chain_script(
                &relay.url,
            )));
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
                (status, out, crate::boot::script::set_key(text, &keys)).into_response()
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

/// How long a boot script waits for upstream once the heartbeat found it unreachable (it may
/// be back: then its answer is taken).
const SCRIPT_TIMEOUT_DOWN: Duration = Duration::from_secs(2);

/// The boot script a relay gives alone while upstream cannot be reached ([`super::alone`]): a
/// task it holds (its version complete here) or a registration boots the boot environment
/// with a credential this relay issues, to the address its DHCP service gave the machine;
/// everything else boots the local disk.
async fn offline_script(
    app: &AppState,
    relay: &Arc<Relay>,
    (mac, loader): (crate::mac::Mac, crate::boot::script::Loader),
    query: Option<&str>,
    peer: std::net::IpAddr,
    why: &str,
) -> ApiResult {
    use super::alone::Plan;
    use crate::boot::script::{BootScript, Loader, Secret};
    let uefi = loader == Loader::Grub
        || query.is_some_and(|q| q.split('&').any(|kv| kv == "platform=efi"));
    relay.metrics.offline_scripts.inc();
    // a task's start is judged on the schedulers' clock
    let now = relay.clock.now();
    let plan = {
        let store = relay.store.clone();
        let book = relay.book().clone();
        let m = mac.to_string();
        tokio::task::spawn_blocking(move || {
            let held = store.version_ids().unwrap_or_default();
            super::alone::plan(&book, &m, now, |image, version| {
                held.iter()
                    .any(|(i, v)| i == image && v.to_hex() == version)
            })
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
    };
    let bootenv = ["vmlinuz", "initrd.img"]
        .iter()
        .all(|f| relay.files.dir.join("bootenv").join(f).is_file());
    // the machine's own address, as this relay's DHCP service saw it
    let since = now - app.boot.credential_secs;
    let seen = app.db.read(move |c| bootcred::seen(c, mac, since)).await?;
    let owner = bootcred::from_the_machine(seen, peer, &app.boot.trust_without_dhcp);
    let (reason, task) = match &plan {
        Plan::Task(t) => (
            format!("task {} (reimage), started by the site relay alone", t.id),
            Some(t.id),
        ),
        Plan::Register => (
            "registering this machine, by the site relay alone".to_string(),
            None,
        ),
        Plan::LocalDisk => (String::new(), None),
    };
    let script = if plan == Plan::LocalDisk || !bootenv || !owner {
        if plan != Plan::LocalDisk {
            tracing::warn!(%mac, from = %peer, bootenv, owner, "upstream unreachable: {reason} cannot start (no boot environment kept here, or not the machine's own address): local disk");
        }
        tracing::warn!(%mac, uefi, "upstream unreachable ({why}): the machine boots its local disk");
        BootScript::LocalDisk {
            uefi,
            handoff: app.boot.uefi_local,
        }
        .render(loader, &relay.url)
    } else {
        let random = crate::http::auth::random_hex_for_request;
        let (credential, salt) = (random(16)?, random(16)?);
        let (cred, lifetime) = (credential.clone(), app.boot.credential_secs);
        app.db
            .call(move |c| {
                bootcred::issue(
                    c,
                    &bootcred::Issue {
                        mac,
                        credential: &cred,
                        salt: &salt,
                        ip: peer,
                        task: None,
                        now,
                        lifetime_secs: lifetime,
                    },
                )
            })
            .await?;
        tracing::warn!(%mac, task = ?task, "upstream unreachable ({why}): {reason}");
        let text = BootScript::BootEnv {
            reason,
            task,
            credential: Some(Secret(credential)),
        }
        .render(loader, &relay.url);
        match relay.keys() {
            Some(keys) => crate::boot::script::set_key(&text, &keys),
            None => text,
        }
    };
    Ok(crate::http::boot::script(script))
}

/// Whether a report's session is one of a boot this relay started alone.
async fn started_here(
    app: &AppState,
    body: &axum::body::Bytes,
    agent: std::net::IpAddr,
) -> Result<bool, ApiError> {
    let Ok(who) = serde_json::from_slice::<Who>(body) else {
        return Ok(false);
    };
    let Ok(mac) = who.mac.parse::<crate::mac::Mac>() else {
        return Ok(false);
    };
    let now = crate::time::now_unix();
    Ok(app
        .db
        .read(move |c| bootcred::started_here(c, mac, &who.session, agent, now))
        .await?)
}

/// The hello of a boot this relay started alone (its credential verifies here): answered
/// here, from the site book, and queued for upstream. `None`: not such a boot.
async fn hello_alone(
    app: &AppState,
    relay: &Arc<Relay>,
    hello: &crate::proto::agent::Hello,
    agent: std::net::IpAddr,
) -> Result<Option<axum::response::Response>, ApiError> {
    use crate::proto::agent::{HelloAnswer, HelloReply};
    let Ok(mac) = hello.mac.parse::<crate::mac::Mac>() else {
        return Ok(None);
    };
    if hello.credential.is_none() || hello.protocol != crate::proto::agent::AGENT_PROTOCOL {
        return Ok(None);
    }
    let now = crate::time::now_unix();
    let cred = hello.credential.clone();
    let session = app
        .db
        .call(move |c| {
            if !bootcred::issued_here(c, mac)? {
                return Ok(None);
            }
            Ok(bootcred::exchange(c, mac, cred.as_deref(), agent, now)?.ok())
        })
        .await?;
    let Some(session) = session else {
        return Ok(None);
    };
    let m = mac.to_string();
    let task = hello.task.and_then(|id| {
        relay
            .book()
            .task_for(&m, relay.clock.now())
            .filter(|t| t.id == id)
            .cloned()
    });
    let reply = match &task {
        Some(t) => {
            if let Err(why) = relay.check_order(
                (&m, hello.task),
                (t.id, &t.mac, &t.image, &t.version),
                t.signature.as_deref(),
            ) {
                relay.metrics.orders_refused.inc();
                tracing::error!(%mac, "{why}");
                return Err(ApiError::forbidden(why));
            }
            HelloReply::Reimage {
                task: t.id,
                image: t.image.clone(),
                version: t.version.clone(),
                hostname: t.hostname.clone(),
                grow: t.grow,
                multicast: None,
                signature: t.signature.clone(),
                then: t.then,
            }
        }
        None => match crate::config::AfterRegister::parse(&relay.book().after_register) {
            Some(crate::config::AfterRegister::Poweroff) => HelloReply::Poweroff,
            _ => HelloReply::Reboot,
        },
    };
    // the central server records this hello when it answers again, before the boot's reports
    let record = crate::proto::relay::OfflineHello {
        mac: m.clone(),
        arch: hello.arch.clone(),
        firmware: hello.firmware,
        boot_time: hello.boot_time,
        task: task.as_ref().map(|t| t.id),
        at: now,
    };
    let id = crate::http::auth::random_hex_for_request(16)?;
    let q = super::queue::Queued {
        id,
        path: super::queue::OFFLINE_HELLO_PATH.to_string(),
        forwarded_for: agent.to_string(),
        body: serde_json::to_string(&record).expect("a hello serialises"),
        queued_at: now,
        offline: true,
    };
    keep(relay, q, None).await?;
    tracing::warn!(%mac, task = ?task.as_ref().map(|t| t.id), "agent hello answered by this relay alone: {reply:?}");
    let answer = HelloAnswer {
        mac: m,
        session,
        reply,
    };
    Ok(Some(axum::Json(answer).into_response()))
}

/// Who an agent report is from (every report carries these).
#[derive(serde::Deserialize)]
struct Who {
    mac: String,
    session: String,
    #[serde(default)]
    task: Option<i64>,
}

/// Writes `q` into the queue (blocking pool); the queue's length.
async fn keep(
    relay: &Arc<Relay>,
    q: super::queue::Queued,
    progress_of: Option<(String, i64)>,
) -> Result<usize, ApiError> {
    let data = relay.store.data_dir().to_path_buf();
    let n = tokio::task::spawn_blocking(move || {
        super::queue::push(
            &data,
            &q,
            progress_of.as_ref().map(|(m, t)| (m.as_str(), *t)),
        )
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(|e| ApiError::internal(format!("cannot keep an agent report for later: {e}")))?;
    relay.metrics.reports_queued.set(n as u64);
    Ok(n)
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
    (body, id, offline): (axum::body::Bytes, String, bool),
    agent: std::net::IpAddr,
    why: &str,
) -> ApiResult {
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
        .read(move |c| bootcred::check_adopted(c, mac, &session, agent, now))
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
        offline,
    };
    let progress_of = (path == "/api/v1/agent/progress")
        .then_some(who.task)
        .flatten()
        .map(|t| (mac.to_string(), t));
    if let Err(e) = keep(relay, q, progress_of).await {
        tracing::error!(%mac, "{}", e.message());
        return Err(unreachable());
    }
    if let (true, Some(task), true) = (
        offline,
        who.task,
        path == "/api/v1/agent/done" || path == "/api/v1/agent/failed",
    ) {
        relay.ended_alone(task);
    }
    tracing::warn!(%mac, path, "{why}: the report is kept and passed on when upstream answers");
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
                grow,
                multicast: Some(join),
                signature,
                then,
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
            grow,
            multicast: offered,
            signature,
            then,
        },
    };
    Ok(serde_json::to_vec(&answer).map(Into::into).unwrap_or(body))
}

/// The relay's copies of upstream files, one lock per file so concurrent requests fetch it
/// once.
pub struct FileCache {
    dir: PathBuf,
    locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// When [`keep_bootenv`] last ran.
    kept: std::sync::Mutex<Option<std::time::Instant>>,
}

impl FileCache {
    pub fn new(dir: PathBuf) -> FileCache {
        FileCache {
            dir,
            locks: Default::default(),
            kept: Default::default(),
        }
    }

    /// The cached copy of `kind/file` and its `.meta` (upstream's size and date).
    fn paths(&self, kind: &str, file: &str) -> (PathBuf, PathBuf) {
        let dir = self.dir.join(kind);
        (dir.join(file), dir.join(format!(".{file}.meta")))
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

/// How often [`keep_bootenv`] asks upstream whether the boot environment changed.
const KEEP_EVERY: Duration = Duration::from_secs(600);

/// Keeps the boot environment in the file cache (fetched, or brought up to date), at most
/// every ten minutes: a relay that holds tasks may have to boot it alone.
pub async fn keep_bootenv(relay: &Relay) {
    {
        let mut last = relay.files.kept.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| t.elapsed() < KEEP_EVERY) {
            return;
        }
        *last = Some(std::time::Instant::now());
    }
    for file in ["vmlinuz", "initrd.img"] {
        let key = format!("bootenv/{file}");
        let (path, meta_path) = relay.files.paths("bootenv", file);
        let lock = relay.files.lock(&key);
        let _guard = lock.lock().await;
        let why = match refresh(relay, &key, &path, &meta_path).await {
            Ok(()) => continue,
            Err(Refresh::Answer(e)) => e.message().to_string(),
            Err(Refresh::Unreachable(e)) => e,
        };
        tracing::info!("keeping /{key} for boots alone: {why}; tried again later");
        *relay.files.kept.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
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
    let (path, meta_path) = relay.files.paths(kind, &file);
    let lock = relay.files.lock(&key);
    let guard = lock.lock().await;
    // upstream known to be down (the heartbeat failed) and a copy here: no PC waits for it
    let down = relay
        .upstream_down
        .load(std::sync::atomic::Ordering::Relaxed);
    let refreshed = match down && tokio::fs::metadata(&path).await.is_ok() {
        true => Err(Refresh::Unreachable("the last heartbeat failed".into())),
        false => refresh(&relay, &key, &path, &meta_path).await,
    };
    match refreshed {
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

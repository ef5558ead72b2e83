//! Inventories and events: the agent's report (`POST /api/v1/agent/inventory`, authenticated
//! by the per-boot nonce like every agent request), the staff's reads (`GET
//! /api/v1/hosts/{mac}/inventory[?format=glpi]`, `.../inventory/history`, `GET
//! /api/v1/events`, `GET /api/v1/hooks/runs`) and the GLPI forwarder ([`forward_to_glpi`]).

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::api::check_nonce;
use super::AppState;
use crate::agent::proto::{InventoryAck, InventoryReport};
use crate::db::{events, hosts, inventories, Db};
use crate::hooks::EventKind;
use crate::inventory::{diff, glpi};
use crate::mac::Mac;
use crate::retry::Backoff;

/// Largest inventory accepted (a machine with hundreds of PCI functions is ~200 KiB).
pub const MAX_INVENTORY: usize = 4 << 20;

/// `POST /api/v1/agent/inventory`: stores the inventory (the host's history), emits
/// `inventory` and, when it differs from the previous boot's, `inventory_changed`; queues it
/// for GLPI when `[glpi] url` is set.
pub async fn agent_inventory(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Json(r): Json<InventoryReport>,
) -> Response {
    let mac: Mac = match r.mac.parse() {
        Ok(m) => m,
        Err(e) => return super::error(StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    if r.inventory.mac != r.mac {
        return super::error(
            StatusCode::BAD_REQUEST,
            format!(
                "the inventory is of MAC {:?}, the report of {}: send the boot interface's inventory",
                r.inventory.mac, r.mac
            ),
        )
        .into_response();
    }
    let now = crate::time::now_unix();
    let glpi_url = st.glpi_url.clone();
    let res = st
        .db
        .call(move |c| {
            if let Err(refused) = check_nonce(c, mac, Some(&r.nonce))? {
                return Ok(Err(refused));
            }
            let (stored, previous) = inventories::record(c, mac, &r.inventory, now)?;
            let changes = diff::changes(previous.as_ref().map(|p| &p.inventory), &r.inventory);
            if glpi_url.is_some() {
                let name = hosts::get(c, mac)?.and_then(|h| h.name);
                let deviceid = crate::inventory::glpi_device_id(name.as_deref(), &mac);
                let body = glpi::to_glpi(&r.inventory, &deviceid).to_string();
                inventories::enqueue(c, mac, &crate::inventory::glpi_agent_id(&mac), &body, now)?;
            }
            Ok(Ok((stored, changes)))
        })
        .await;
    let (stored, changes) = match res {
        Ok(Ok(x)) => x,
        Ok(Err(refused)) => return refused.response(mac, peer, "inventory"),
        Err(e) => return super::internal(e).into_response(),
    };
    let summary = serde_json::json!({
        "inventory": stored.id,
        "system": stored.inventory.system,
        "memory_mib": stored.inventory.memory_mib(),
        "disks": stored.inventory.storage.iter().map(|d| serde_json::json!({"name": d.name, "size_bytes": d.size_bytes, "model": d.model, "serial": d.serial})).collect::<Vec<_>>(),
    });
    st.hooks
        .emit(EventKind::Inventory, Some(mac.to_string()), summary.clone());
    if !changes.is_empty() {
        let mut data = summary;
        data["changes"] = serde_json::to_value(&changes).unwrap_or_default();
        st.hooks
            .emit(EventKind::InventoryChanged, Some(mac.to_string()), data);
    }
    tracing::info!(%mac, id = stored.id, changes = changes.len(), "inventory");
    Json(InventoryAck {
        id: stored.id,
        changes: changes.iter().map(|c| c.what.to_string()).collect(),
    })
    .into_response()
}

#[derive(Debug, Deserialize)]
pub struct FormatQuery {
    #[serde(default)]
    format: Option<String>,
}

fn parse_mac(s: &str) -> Result<Mac, Box<Response>> {
    s.parse().map_err(|e: crate::mac::BadMac| {
        Box::new(super::error(StatusCode::BAD_REQUEST, e.to_string()).into_response())
    })
}

/// `GET /api/v1/hosts/{mac}/inventory[?format=json|glpi]`: the newest inventory.
pub async fn host_inventory(
    State(st): State<AppState>,
    Path(mac): Path<String>,
    Query(q): Query<FormatQuery>,
) -> Response {
    let mac = match parse_mac(&mac) {
        Ok(m) => m,
        Err(r) => return *r,
    };
    let glpi_form = match q.format.as_deref() {
        None | Some("json") => false,
        Some("glpi") => true,
        Some(f) => {
            return super::error(
                StatusCode::BAD_REQUEST,
                format!("format={f}: use json or glpi"),
            )
            .into_response()
        }
    };
    let res = st
        .db
        .call(move |c| Ok((inventories::latest(c, mac)?, hosts::get(c, mac)?)))
        .await;
    match res {
        Ok((Some(s), host)) if glpi_form => {
            let id = crate::inventory::glpi_device_id(host.and_then(|h| h.name).as_deref(), &mac);
            Json(glpi::to_glpi(&s.inventory, &id)).into_response()
        }
        Ok((Some(s), _)) => Json(s).into_response(),
        Ok((None, _)) => super::error(
            StatusCode::NOT_FOUND,
            format!("no inventory of {mac} yet: it reports one each time it network-boots into the bootcast environment"),
        )
        .into_response(),
        Err(e) => super::internal(e).into_response(),
    }
}

/// `GET /api/v1/hosts/{mac}/inventory/history`: every stored inventory, newest first.
pub async fn host_inventory_history(
    State(st): State<AppState>,
    Path(mac): Path<String>,
) -> Response {
    let mac = match parse_mac(&mac) {
        Ok(m) => m,
        Err(r) => return *r,
    };
    match st
        .db
        .call(move |c| inventories::history(c, mac, 1000))
        .await
    {
        Ok(list) => Json(serde_json::json!({ "inventories": list })).into_response(),
        Err(e) => super::internal(e).into_response(),
    }
}

#[derive(Debug, Deserialize)]
pub struct EventQuery {
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    limit: Option<u32>,
}

/// `GET /api/v1/events[?host=MAC][&kind=K][&limit=N]`: newest first.
pub async fn list_events(State(st): State<AppState>, Query(q): Query<EventQuery>) -> Response {
    let host = match q.host.as_deref().map(parse_mac).transpose() {
        Ok(m) => m.map(|m| m.to_string()),
        Err(r) => return *r,
    };
    if let Some(k) = q.kind.as_deref().filter(|k| EventKind::parse(k).is_none()) {
        return super::error(
            StatusCode::BAD_REQUEST,
            format!(
                "kind={k}: use one of {}",
                EventKind::ALL.map(|k| k.as_str()).join(", ")
            ),
        )
        .into_response();
    }
    let limit = q.limit.unwrap_or(100).min(10_000);
    match st
        .db
        .call(move |c| events::list(c, host.as_deref(), q.kind.as_deref(), limit))
        .await
    {
        Ok(list) => Json(serde_json::json!({ "events": list })).into_response(),
        Err(e) => super::internal(e).into_response(),
    }
}

/// `GET /api/v1/hooks/runs`: the newest hook runs.
pub async fn hook_runs(State(st): State<AppState>) -> Response {
    match st.db.call(|c| events::runs(c, 1000)).await {
        Ok(list) => Json(serde_json::json!({ "runs": list })).into_response(),
        Err(e) => super::internal(e).into_response(),
    }
}

/// The waits between attempts to forward one inventory: 30 s doubling, at most an hour.
const GLPI_BACKOFF: Backoff = Backoff::new(Duration::from_secs(30), Duration::from_secs(3600));

/// Seconds before attempt `attempts + 1` after a failure: 30 s doubling, at most an hour.
pub fn glpi_backoff(attempts: u32) -> i64 {
    GLPI_BACKOFF.delay(attempts).as_secs() as i64
}

/// Posts queued inventories to GLPI until `cancel`: every 5 s, what is due; a failure waits
/// [`glpi_backoff`]. The queue is in the database, so a restart loses nothing.
pub async fn forward_to_glpi(db: Db, url: String, cancel: CancellationToken) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client");
    loop {
        let now = crate::time::now_unix();
        let due = db.call(move |c| inventories::due(c, now, 50)).await;
        for q in due.unwrap_or_default() {
            let sent = client
                .post(&url)
                .header("content-type", "application/json")
                .header("GLPI-Agent-ID", &q.agent_id)
                .body(q.body.clone())
                .send()
                .await;
            let result = match sent {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(format!("HTTP {}", r.status().as_u16())),
                Err(e) => Err(e.to_string()),
            };
            let (id, attempts) = (q.id, q.attempts);
            let done = db
                .call(move |c| match &result {
                    Ok(()) => inventories::delivered(c, id),
                    Err(e) => inventories::failed(
                        c,
                        id,
                        crate::time::now_unix() + glpi_backoff(attempts),
                        e,
                    ),
                })
                .await;
            if let Err(e) = done {
                tracing::warn!("GLPI queue: {e}");
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

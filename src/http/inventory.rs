//! Inventories and events: the agent's report (`POST /api/v1/agent/inventory`, authenticated
//! by the boot's session like every agent request), the staff's reads (`GET
//! /api/v1/hosts/{mac}/inventory[?format=glpi]`, `.../inventory/history`, `GET
//! /api/v1/events`, `GET /api/v1/hooks/runs`) and the GLPI forwarder ([`forward_to_glpi`]).

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::api::check_session;
use super::error::{parse_mac, ApiError, ApiResult};
use super::AppState;
use crate::access::Principal;
use crate::db::{events, hosts, inventories, Db};
use crate::hooks::EventKind;
use crate::inventory::{diff, glpi};
use crate::proto::agent::{InventoryAck, InventoryReport};

/// Largest inventory accepted (a machine with hundreds of PCI functions is ~200 KiB).
pub const MAX_INVENTORY: usize = 4 << 20;

/// `POST /api/v1/agent/inventory`: stores the inventory (the host's history), emits
/// `inventory` and, when it differs from the previous boot's, `inventory_changed`; queues it
/// for GLPI when `[glpi] url` is set.
pub async fn agent_inventory(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
    Json(r): Json<InventoryReport>,
) -> ApiResult {
    let mac = parse_mac(&r.mac)?;
    if r.inventory.mac != r.mac {
        return Err(ApiError::bad_request(format!(
            "the inventory is of MAC {:?}, the report of {}: send the boot interface's inventory",
            r.inventory.mac, r.mac
        )));
    }
    let now = crate::time::now_unix();
    let glpi_url = st.glpi_url.clone();
    let res = st
        .db
        .call(move |c| {
            if let Err(refused) =
                check_session(c, &headers, peer, mac, Some(&r.session), (now, false))?
            {
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
        .await?;
    let (stored, changes) =
        res.map_err(|(r, from)| super::api::refused(&r, mac, from, "inventory"))?;
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
    Ok(Json(InventoryAck {
        id: stored.id,
        changes: changes.iter().map(|c| c.what.to_string()).collect(),
    })
    .into_response())
}

#[derive(Debug, Deserialize)]
pub struct FormatQuery {
    #[serde(default)]
    format: Option<String>,
}

/// `GET /api/v1/hosts/{mac}/inventory[?format=json|glpi]`: the newest inventory.
pub async fn host_inventory(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(mac): Path<String>,
    Query(q): Query<FormatQuery>,
) -> ApiResult {
    let mac = parse_mac(&mac)?;
    let glpi_form = match q.format.as_deref() {
        None | Some("json") => false,
        Some("glpi") => true,
        Some(f) => {
            return Err(ApiError::bad_request(format!(
                "format={f}: use json or glpi"
            )))
        }
    };
    let res = st
        .db
        .read(move |c| {
            if let Err(e) = super::staff::in_scope(c, &who.scope(), &[mac])? {
                return Ok(Err(e));
            }
            Ok(Ok((inventories::latest(c, mac)?, hosts::get(c, mac)?)))
        })
        .await??;
    match res {
        (Some(s), host) if glpi_form => {
            let id = crate::inventory::glpi_device_id(host.and_then(|h| h.name).as_deref(), &mac);
            Ok(Json(glpi::to_glpi(&s.inventory, &id)).into_response())
        }
        (Some(s), _) => Ok(Json(s).into_response()),
        (None, _) => Err(ApiError::not_found(format!(
            "no inventory of {mac} yet: it reports one each time it network-boots into the bootcast environment"
        ))),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// Inventories shown, newest first (default and most: 1000).
    #[serde(default)]
    limit: Option<u32>,
}

/// `GET /api/v1/hosts/{mac}/inventory/history[?limit=N]`: the stored inventories, newest
/// first, each with `changes` since the one before it (disks, memory, CPUs, network cards,
/// the machine's identity).
pub async fn host_inventory_history(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(mac): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> ApiResult {
    let mac = parse_mac(&mac)?;
    let limit = q.limit.unwrap_or(1000).clamp(1, 1000);
    let list = st
        .db
        .read(move |c| {
            if let Err(e) = super::staff::in_scope(c, &who.scope(), &[mac])? {
                return Ok(Err(e));
            }
            Ok(Ok(inventories::history_steps(c, mac, limit)?))
        })
        .await??;
    Ok(Json(serde_json::json!({ "inventories": list })).into_response())
}

#[derive(Debug, Deserialize)]
pub struct EventQuery {
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    limit: Option<u32>,
    /// The page after this event id (the previous page's `next`).
    #[serde(default)]
    before: Option<i64>,
}

/// `GET /api/v1/events[?host=MAC][&kind=K][&limit=N][&before=ID]`: newest first,
/// `{"events", "next"}` (`next`: the `before` of the next page). An operator sees the events
/// of their sites' hosts.
pub async fn list_events(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Query(q): Query<EventQuery>,
) -> ApiResult {
    let host = q
        .host
        .as_deref()
        .map(parse_mac)
        .transpose()?
        .map(|m| m.to_string());
    if let Some(k) = q.kind.as_deref().filter(|k| EventKind::parse(k).is_none()) {
        return Err(ApiError::bad_request(format!(
            "kind={k}: use one of {}",
            EventKind::ALL.map(|k| k.as_str()).join(", ")
        )));
    }
    let limit = q.limit.unwrap_or(100).min(10_000);
    let list = st
        .db
        .read(move |c| {
            let scope = who.scope();
            let list = events::list(
                c,
                &events::EventFilter {
                    mac: host.as_deref(),
                    kind: q.kind.as_deref(),
                    sites: scope.sites(),
                    before: q.before,
                    limit,
                },
            )?;
            let next = (list.len() as u32 == limit)
                .then(|| list.last().map(|e| e.id))
                .flatten();
            Ok(super::JsonBytes::of(
                &serde_json::json!({ "events": list, "next": next }),
            ))
        })
        .await?;
    Ok(list.into_response())
}

/// `GET /api/v1/hooks/runs`: the newest hook runs.
pub async fn hook_runs(State(st): State<AppState>) -> ApiResult {
    let list = st.db.read(|c| events::runs(c, 1000)).await?;
    Ok(Json(serde_json::json!({ "runs": list })).into_response())
}

/// Posts queued inventories to GLPI until `cancel`: every 5 s, what is due; a failure waits
/// [`glpi_backoff`](crate::inventory::glpi::glpi_backoff). The queue is in the database, so a restart loses nothing.
pub async fn forward_to_glpi(db: Db, url: String, cancel: CancellationToken) {
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(crate::tls::public_client_config())
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
                        crate::time::now_unix() + glpi::glpi_backoff(attempts),
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

//! `/api/v1`: the agent's hello (open) and the staff endpoints (token).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::AppState;
use crate::agent::proto::{Hello, HelloReply};
use crate::config::AfterRegister;
use crate::db::{hosts, tasks};
use crate::mac::Mac;

/// `POST /api/v1/agent/hello`: the agent is up. Records the host (registering it) and says
/// what to do next. Touches nothing but the caller's own host and its own task.
pub async fn agent_hello(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Json(hello): Json<Hello>,
) -> Response {
    let mac: Mac = match hello.mac.parse() {
        Ok(m) => m,
        Err(e) => return super::error(StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    if hello.arch.is_empty()
        || hello.arch.len() > 32
        || !hello
            .arch
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return super::error(
            StatusCode::BAD_REQUEST,
            format!(
                "arch {:?} is not an architecture name like x86_64",
                hello.arch
            ),
        )
        .into_response();
    }
    let ip = peer.ip().to_string();
    let now = crate::time::now_unix();
    let h = hello.clone();
    let res = st
        .db
        .call(move |c| {
            let host = hosts::record_hello(
                c,
                mac,
                &hosts::BootFacts {
                    firmware: Some(h.firmware),
                    arch: Some(&h.arch),
                    ip: Some(&ip),
                },
                now,
            )?;
            // The task named on the kernel command line, only if it is this host's and open.
            let task = match h.task {
                Some(id) => tasks::get(c, id)?.filter(|t| t.mac == mac && t.state.is_open()),
                None => None,
            };
            Ok((host, task))
        })
        .await;
    let (host, task) = match res {
        Ok(x) => x,
        Err(e) => return super::internal(e).into_response(),
    };
    if let (Some(id), None) = (hello.task, &task) {
        tracing::warn!(%mac, task = id, "hello names a task that is not this host's open task; ignored");
    }
    let reply = match st.after_register {
        AfterRegister::Reboot => HelloReply::Reboot,
        AfterRegister::Poweroff => HelloReply::Poweroff,
    };
    tracing::info!(
        %mac,
        arch = %hello.arch,
        firmware = hello.firmware.as_str(),
        peer = %peer.ip(),
        registered = %host.registered_at.map(crate::time::rfc3339).unwrap_or_default(),
        "agent hello; reply {reply:?}"
    );
    Json(reply).into_response()
}

/// `GET /api/v1/hosts`: every host.
pub async fn list_hosts(State(st): State<AppState>) -> Response {
    match st.db.call(|c| hosts::list(c)).await {
        Ok(h) => Json(serde_json::json!({ "hosts": h })).into_response(),
        Err(e) => super::internal(e).into_response(),
    }
}

/// `GET /api/v1/hosts/{mac}`: one host with its recent boots and open task.
pub async fn get_host(State(st): State<AppState>, Path(mac): Path<String>) -> Response {
    let mac: Mac = match mac.parse() {
        Ok(m) => m,
        Err(e) => return super::error(StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let res = st
        .db
        .call(move |c| {
            Ok((
                hosts::get(c, mac)?,
                hosts::boots(c, mac, 20)?,
                tasks::open_for(c, mac)?,
            ))
        })
        .await;
    match res {
        Ok((Some(h), boots, task)) => {
            Json(serde_json::json!({ "host": h, "boots": boots, "task": task })).into_response()
        }
        Ok((None, ..)) => {
            super::error(StatusCode::NOT_FOUND, format!("no host {mac}")).into_response()
        }
        Err(e) => super::internal(e).into_response(),
    }
}

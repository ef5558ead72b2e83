//! `/api/v1`: the agent's hello (open) and the staff endpoints (token).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::AppState;
use crate::agent::proto::{Hello, HelloReply};
use crate::config::AfterRegister;
use crate::db::{hosts, tasks, TaskState};
use crate::mac::Mac;

/// `POST /api/v1/agent/hello`: the agent is up. Records the host (registering it) and says
/// what to do next.
///
/// A MAC is no secret, so the hello must carry the nonce that the server put on the kernel
/// command line of this MAC's last boot-environment script: a machine on the network cannot
/// register, or move the task of, another machine it did not boot as. The task named must be
/// that host's own open task.
pub async fn agent_hello(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Json(hello): Json<Hello>,
) -> Response {
    let mac: Mac = match hello.mac.parse() {
        Ok(m) => m,
        Err(e) => return super::error(StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    if !super::boot::valid_arch(&hello.arch) {
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
            let expected = hosts::boot_nonce(c, mac)?;
            let nonce_ok = matches!((&expected, &h.nonce), (Some(e), Some(n)) if e == n);
            if !nonce_ok {
                return Ok(Err(expected.is_some()));
            }
            let host = hosts::record_hello(
                c,
                mac,
                &hosts::BootFacts {
                    firmware: Some(h.firmware),
                    arch: Some(&h.arch),
                    ip: Some(&ip),
                    agent_boot_time: i64::try_from(h.boot_time).ok(),
                },
                now,
            )?;
            // The task named on the kernel command line, only if it is this host's and open.
            let task = match h.task {
                Some(id) => tasks::get(c, id)?.filter(|t| t.mac == mac && t.state.is_open()),
                None => None,
            };
            if let Some(t) = &task {
                // This agent reports and reboots; it runs no task kind yet. Closing the task
                // (rather than leaving it open) keeps the host from booting it again and again.
                tasks::set_state(
                    c,
                    mac,
                    t.id,
                    TaskState::Failed,
                    Some(&format!(
                        "the agent in this boot environment cannot run {} tasks",
                        t.kind.as_str()
                    )),
                    now,
                )?;
            }
            Ok(Ok((host, task)))
        })
        .await;
    let (host, task) = match res {
        Ok(Ok(x)) => x,
        Ok(Err(known_boot)) => {
            tracing::warn!(%mac, peer = %peer.ip(), "agent hello refused: nonce missing or stale");
            let why = if known_boot {
                "this hello's bootcast.nonce does not match the last boot the server started for this MAC"
            } else {
                "the server started no boot-environment boot for this MAC"
            };
            return super::error(
                StatusCode::FORBIDDEN,
                format!("{why}; network-boot the machine through bootcast again"),
            )
            .into_response();
        }
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

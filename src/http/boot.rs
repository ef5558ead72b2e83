//! What iPXE fetches: the chain script, each host's boot script, the boot environment files
//! and (for UEFI HTTP boot) the iPXE binaries.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tower::ServiceExt;
use tower_http::services::ServeFile;

use super::AppState;
use crate::agent::proto::Firmware;
use crate::boot::ipxe::{self, BootScript};
use crate::db::{hosts, tasks, TaskState};
use crate::mac::Mac;

fn host_header(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::HOST).and_then(|v| v.to_str().ok())
}

fn script(body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// `GET /boot.ipxe`: the file DHCP names for iPXE clients.
pub async fn chain(State(st): State<AppState>, headers: HeaderMap) -> Response {
    script(ipxe::chain_script(&st.base_url(host_header(&headers))))
}

/// `GET /boot/{mac}.ipxe?platform=pcbios|efi&buildarch=...`: this host's script.
///
/// Unknown (or not yet registered) host → boot environment to register; an open task →
/// boot environment with the task id; otherwise → the local disk.
pub async fn host_script(
    State(st): State<AppState>,
    Path(file): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let Some(mac) = file
        .strip_suffix(".ipxe")
        .and_then(|m| m.parse::<Mac>().ok())
    else {
        return super::error(
            StatusCode::NOT_FOUND,
            format!("{file:?}: expected /boot/MAC.ipxe, e.g. /boot/52:54:00:12:34:56.ipxe"),
        )
        .into_response();
    };
    let firmware = match q.get("platform").map(String::as_str) {
        Some("efi") => Some(Firmware::Uefi),
        Some("pcbios") => Some(Firmware::Bios),
        _ => None,
    };
    let arch = q.get("buildarch").cloned();
    let ip = peer.ip().to_string();
    let bootenv_ready =
        st.data.join("bootenv/initrd.img").is_file() && st.data.join("bootenv/vmlinuz").is_file();
    let now = crate::time::now_unix();
    let decided = st
        .db
        .call(move |c| {
            let host = hosts::record_script_boot(
                c,
                mac,
                &hosts::BootFacts {
                    firmware,
                    arch: arch.as_deref(),
                    ip: Some(&ip),
                },
                now,
            )?;
            let task = tasks::open_for(c, mac)?;
            if let Some(t) = &task {
                if t.state == TaskState::Pending && bootenv_ready {
                    tasks::set_state(c, mac, t.id, TaskState::Booting, None, now)?;
                }
            }
            Ok((host, task))
        })
        .await;
    let (host, task) = match decided {
        Ok(x) => x,
        Err(e) => return super::internal(e).into_response(),
    };
    let uefi = firmware.or(host.firmware) == Some(Firmware::Uefi);
    let plan = match (&task, host.registered()) {
        (Some(t), _) => BootScript::BootEnv {
            reason: format!("task {} ({})", t.id, t.kind.as_str()),
            task: Some(t.id),
        },
        (None, false) => BootScript::BootEnv {
            reason: "registering this machine".into(),
            task: None,
        },
        (None, true) => BootScript::LocalDisk { uefi },
    };
    let plan = match plan {
        BootScript::BootEnv { .. } if !bootenv_ready => {
            tracing::warn!(%mac, "cannot boot the boot environment: it is not built; run `bootcast bootenv build`");
            BootScript::Unavailable {
                reason: "the boot environment is not built on the server (run `bootcast bootenv build` there)".into(),
            }
        }
        p => p,
    };
    tracing::info!(%mac, firmware = ?firmware, peer = %peer.ip(), "boot script: {plan:?}");
    script(plan.render(&st.base_url(host_header(&headers))))
}

/// `GET /bootenv/vmlinuz`, `GET /bootenv/initrd.img` (with Range support).
pub async fn bootenv_file(
    State(st): State<AppState>,
    Path(file): Path<String>,
    req: Request,
) -> Response {
    if file != "vmlinuz" && file != "initrd.img" {
        return super::error(
            StatusCode::NOT_FOUND,
            "the boot environment has vmlinuz and initrd.img",
        )
        .into_response();
    }
    let path = st.data.join("bootenv").join(&file);
    if !path.is_file() {
        return super::error(
            StatusCode::NOT_FOUND,
            "the boot environment is not built; run `bootcast bootenv build` on the server",
        )
        .into_response();
    }
    match ServeFile::new(path).oneshot(req).await {
        Ok(r) => r.map(Body::new),
        Err(e) => match e {},
    }
}

/// `GET /ipxe/{name}`: the embedded iPXE binaries over HTTP (UEFI HTTP boot).
pub async fn ipxe_binary(Path(file): Path<String>) -> Response {
    match ipxe::find(&file) {
        Some(b) => (
            [(header::CONTENT_TYPE, "application/octet-stream")],
            b.bytes,
        )
            .into_response(),
        None => {
            super::error(StatusCode::NOT_FOUND, format!("no iPXE binary {file:?}")).into_response()
        }
    }
}

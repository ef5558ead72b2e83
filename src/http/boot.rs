//! What boot loaders fetch: iPXE's chain script, each host's boot script (for iPXE or the
//! Secure Boot chain's GRUB), the boot environment files, and (for UEFI HTTP boot, and TFTP
//! through [`crate::boot::tftp`]) the iPXE binaries and the signed shim and GRUB.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use tower::ServiceExt;
use tower_http::services::ServeFile;

use super::error::{ApiError, ApiResult};
use super::relay::{Origin, Relayed};
use super::AppState;
use crate::boot::ipxe;
use crate::boot::script::{self, BootScript, Loader, Secret};
use crate::db::{bootcred, hosts, tasks, TaskState};
use crate::proto::agent::Firmware;

fn host_header(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::HOST).and_then(|v| v.to_str().ok())
}

/// A boot script answer: plain text, never cached.
pub fn script(body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// The base URL a client should use: its site relay's when the request came through one
/// (with a valid site token), else this server's.
async fn client_base(st: &AppState, headers: &HeaderMap) -> String {
    if let Some(r) = Relayed::from_headers(headers) {
        let url = r.url.clone();
        if let Ok(Some(_)) = st.db.call(move |c| r.site(c)).await {
            return url;
        }
        tracing::warn!("a request carried relay headers with an unknown site token; answering as for a direct client");
    }
    st.base_url(host_header(headers))
}

/// `GET /boot.ipxe`: the file DHCP names for iPXE clients.
pub async fn chain(State(st): State<AppState>, headers: HeaderMap) -> Response {
    script(ipxe::chain_script(&client_base(&st, &headers).await))
}

/// `GET /boot/{mac}.ipxe?platform=pcbios|efi&buildarch=...`: this host's iPXE script;
/// `GET /boot/{mac}.grub`: the same decision as the GRUB configuration of the Secure Boot chain
/// (which asks for it over TFTP as `grub/grub.cfg-MAC`).
///
/// Unknown (or not yet registered) host → boot environment to register; an open task →
/// boot environment with the task id; otherwise → the local disk.
pub async fn host_script(
    State(st): State<AppState>,
    Path(file): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> ApiResult {
    let Some((mac, loader)) = script::script_target(&file) else {
        return Err(ApiError::not_found(format!(
            "{file:?}: expected /boot/MAC.ipxe or /boot/MAC.grub, e.g. /boot/52:54:00:12:34:56.ipxe"
        )));
    };
    let firmware = match (loader, q.get("platform").map(String::as_str)) {
        (Loader::Grub, _) | (_, Some("efi")) => Some(Firmware::Uefi),
        (_, Some("pcbios")) => Some(Firmware::Bios),
        _ => None,
    };
    // iPXE's buildarch (i386, x86_64, arm64): kept with the boot record only
    let arch = match loader {
        Loader::Grub => Some("x86_64".to_string()),
        Loader::Ipxe => q
            .get("buildarch")
            .filter(|a| crate::proto::agent::valid_arch(a))
            .cloned(),
    };
    let base = client_base(&st, &headers).await;
    let bootenv = crate::bootenv::load(&st.data);
    // only a boot environment whose agent speaks this server's agent protocol is handed out
    let bootenv_ready = matches!(&bootenv, Ok(Some(info)) if info.usable(crate::proto::agent::AGENT_PROTOCOL).is_ok());
    let random = super::auth::random_hex_for_request;
    let (credential, salt) = (random(16)?, random(16)?);
    let boot = st.boot.clone();
    let default_handoff = st.boot.uefi_local;
    let (now, sched_now) = (crate::time::now_unix(), st.clock.now());
    let decided = st
        .db
        .call(move |c| {
            let origin = Origin::of(c, &headers, peer)?;
            // The machine's own address: the one bootcast's DHCP service (or the verified
            // relay's) saw this MAC at during this boot's exchange.
            // ...and the switch port it is behind (DHCP option 82), for registration rules
            let (seen, circuit) = match &origin.relayed {
                Some(r) => (r.dhcp_seen, r.dhcp_circuit.clone()),
                None => bootcred::seen_behind(c, mac, now - boot.credential_secs)?
                    .map_or((None, None), |(ip, circuit)| (Some(ip), circuit)),
            };
            let owner = bootcred::from_the_machine(seen, origin.ip, &boot.trust_without_dhcp);
            let known = hosts::get(c, mac)?;
            // a task's start is judged on the schedulers' clock
            let open_task = tasks::due_for(c, mac, sched_now)?;
            if !owner && (open_task.is_some() || known.as_ref().is_none_or(|h| !h.registered())) {
                // Not the machine itself: nothing is recorded, no task moves, no credential.
                let why = match seen {
                    Some(_) => "this script is given only to the address bootcast's DHCP service gave this machine",
                    None => "bootcast saw no DHCP exchange of this machine; boot it on a segment where bootcast (or its site relay) runs DHCP or proxyDHCP, or list its subnet in [boot] trust_without_dhcp",
                };
                tracing::warn!(%mac, from = %origin.ip, dhcp = ?seen, "boot script refused: the request does not come from the machine's own address");
                return Ok(BootScript::Unavailable { reason: why.to_string() });
            }
            let ip = origin.ip.to_string();
            let host = hosts::record_script_boot(
                c,
                mac,
                &hosts::BootFacts {
                    firmware,
                    arch: arch.as_deref(),
                    ip: Some(&ip),
                    agent_boot_time: None,
                },
                now,
            )?;
            // booted through a site relay: the host belongs to that site; else its address
            // may be in a site's subnets
            let site = origin.site;
            let bound = match &site {
                Some(s) => Some(s.name.clone()),
                None => crate::db::sites::by_address(c, origin.ip)?.map(|s| s.name),
            };
            if let Some(name) = &bound {
                crate::db::sites::bind_host(c, mac, name)?;
            }
            if let Some(circuit) = circuit.filter(|_| owner) {
                hosts::set_circuit(c, mac, &circuit)?;
            }
            // a task scheduled for later (`--at`) waits: local disk (or registration) until then
            let task = open_task;
            // a reimage whose version the site's relay does not hold yet waits too (policy
            // `wait`), so the relay never has to offer an incomplete version
            let task = task.filter(|t| match (&site, &t.version) {
                (Some(s), Some(v)) if t.kind == crate::db::TaskKind::Reimage
                    && s.incomplete == crate::db::sites::Incomplete::Wait =>
                {
                    let held = s.relay.as_ref().is_some_and(|r| {
                        r.complete.iter().any(|c| Some(&c.image) == t.image.as_ref() && &c.version == v)
                    });
                    if !held {
                        tracing::info!(%mac, task = t.id, site = %s.name, "task waits: its version is not complete on the site's relay yet");
                    }
                    held
                }
                _ => true,
            });
            let uefi = firmware.or(host.firmware) == Some(Firmware::Uefi);
            let credential = Some(Secret(credential));
            let plan = match (&task, host.registered()) {
                (Some(t), _) => BootScript::BootEnv {
                    reason: format!("task {} ({})", t.id, t.kind.as_str()),
                    task: Some(t.id),
                    credential,
                },
                (None, false) => BootScript::BootEnv {
                    reason: "registering this machine".into(),
                    task: None,
                    credential,
                },
                (None, true) => BootScript::LocalDisk {
                    uefi,
                    handoff: hosts::uefi_local(c, mac)?.unwrap_or(default_handoff),
                },
            };
            if let BootScript::BootEnv { task, credential: Some(Secret(cred)), .. } = &plan {
                if bootenv_ready {
                    // this boot's credential, for the agent's hello from this address only
                    bootcred::issue(
                        c,
                        &bootcred::Issue {
                            mac,
                            credential: cred,
                            salt: &salt,
                            ip: origin.ip,
                            task: *task,
                            now,
                            lifetime_secs: boot.credential_secs,
                        },
                    )?;
                    if let Some(t) = *task {
                        tasks::set_state(c, mac, t, TaskState::Booting, None, now)?;
                    }
                }
            }
            Ok(plan)
        })
        .await?;
    let plan = match decided {
        BootScript::BootEnv { .. } if !bootenv_ready => {
            let why = match bootenv {
                Err(e) => format!("the boot environment on the server is damaged ({e}): run `bootcast bootenv build` there"),
                Ok(Some(info)) => info.usable(crate::proto::agent::AGENT_PROTOCOL).err().unwrap_or_default(),
                Ok(None) => "the boot environment is not built on the server: run `bootcast bootenv build` there".to_string(),
            };
            tracing::warn!(%mac, "cannot boot the boot environment: {why}");
            BootScript::Unavailable { reason: why }
        }
        p => p,
    };
    tracing::info!(%mac, firmware = ?firmware, ?loader, peer = %peer.ip(), "boot script: {plan:?}");
    let text = plan.render(loader, &base);
    Ok(script(match &st.signer {
        Some(k) => script::set_key(&text, &crate::sign::Keys::new(vec![k.public()])),
        None => text,
    }))
}

/// `GET /bootenv/vmlinuz`, `GET /bootenv/initrd.img` (with Range support).
pub async fn bootenv_file(
    State(st): State<AppState>,
    Path(file): Path<String>,
    req: Request,
) -> ApiResult {
    if file != "vmlinuz" && file != "initrd.img" {
        return Err(ApiError::not_found(
            "the boot environment has vmlinuz and initrd.img",
        ));
    }
    match crate::bootenv::load(&st.data) {
        Ok(Some(_)) => {}
        Ok(None) => {
            return Err(ApiError::not_found(
                "the boot environment is not built; run `bootcast bootenv build` on the server",
            ))
        }
        Err(e) => {
            return Err(ApiError::unavailable(format!(
                "the boot environment is damaged ({e}); run `bootcast bootenv build` on the server"
            )))
        }
    }
    let path = st.data.join("bootenv").join(&file);
    match ServeFile::new(path).oneshot(req).await {
        Ok(r) => Ok(r.map(Body::new)),
        Err(e) => match e {},
    }
}

/// `GET /grub/grub.cfg`: the first file the Secure Boot chain's GRUB reads (over TFTP).
pub async fn grub_file(Path(file): Path<String>) -> ApiResult {
    match file.as_str() {
        "grub.cfg" => Ok(script(crate::boot::grub::BOOTSTRAP.to_string())),
        _ => Err(ApiError::not_found(format!(
            "no GRUB file {file:?}: GRUB reads grub.cfg, then its machine's /boot/MAC.grub"
        ))),
    }
}

/// The route of [`signed_binary`], for the central server's and a relay's routers.
pub fn signed_routes<S>(chain: &crate::boot::signed::SignedChain) -> axum::Router<S> {
    axum::Router::new()
        .route("/uefi/{file}", axum::routing::get(signed_binary))
        .with_state(chain.clone())
}

/// `GET /uefi/shimx64.efi`, `GET /uefi/grubx64.efi`: the signed binaries of the Secure Boot
/// chain (UEFI HTTP boot, and TFTP). Missing: 404 naming the package to install.
pub async fn signed_binary(
    State(chain): State<crate::boot::signed::SignedChain>,
    Path(file): Path<String>,
    req: Request,
) -> ApiResult {
    let path = match chain.file(&file) {
        None => {
            return Err(ApiError::not_found(format!(
                "no UEFI binary {file:?}: the Secure Boot chain is shimx64.efi and grubx64.efi"
            )))
        }
        Some(Err(missing)) => {
            tracing::warn!("a UEFI client asked for a signed binary that is missing: {missing}");
            return Err(ApiError::not_found(missing.to_string()));
        }
        Some(Ok(path)) => path,
    };
    match ServeFile::new(path).oneshot(req).await {
        Ok(r) => Ok(r.map(Body::new)),
        Err(e) => match e {},
    }
}

/// `GET /ipxe/{name}`: the embedded iPXE binaries over HTTP (UEFI HTTP boot).
pub async fn ipxe_binary(Path(file): Path<String>) -> ApiResult {
    let b =
        ipxe::find(&file).ok_or_else(|| ApiError::not_found(format!("no iPXE binary {file:?}")))?;
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        b.bytes,
    )
        .into_response())
}

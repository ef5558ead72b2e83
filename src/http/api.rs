//! `/api/v1`: the agent's endpoints (hello, task progress/done/failed; authenticated by the
//! boot credential and session of [`bootcred`]; the capture endpoints are in [`super::capture`]) and the staff endpoints
//! (token): hosts, groups, tasks.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use rusqlite::Connection;
use serde::Deserialize;

use super::error::{parse_mac, ApiError, ApiResult};
use super::staff::{in_scope, targets_in_scope, task_rule_in_scope};
use super::AppState;
use crate::access::Principal;
use crate::config::AfterRegister;
use crate::db::images::{self, PostDeploy};
use crate::db::{bootcred, groups, hosts, tasks, DbError, TaskKind, TaskState};
use crate::mac::Mac;
use crate::proto::agent::{
    Hello, HelloAnswer, HelloReply, TaskAck, TaskDone, TaskFailed, TaskProgress,
};
use crate::schedule::{self, CancelTarget, ScheduleError, TaskRequest};

/// An agent request refused by [`bootcred`]: the answer names no secret.
pub(super) fn refused(r: &bootcred::Refused, mac: Mac, from: IpAddr, what: &str) -> ApiError {
    tracing::warn!(%mac, %from, "agent {what} refused: {}", r.reason());
    ApiError::forbidden(format!(
        "{}; network-boot the machine through bootcast again",
        r.reason()
    ))
}

/// The one check of every agent request after the hello: `session` must be the one this
/// MAC's hello got, from the address the boot was given to, while its task is open (with
/// `closed_ok`, also after: the task's reports answer 409 then). Returns the boot's task.
pub(super) fn check_session(
    c: &Connection,
    headers: &axum::http::HeaderMap,
    peer: SocketAddr,
    mac: Mac,
    session: Option<&str>,
    (now, closed_ok): (i64, bool),
) -> Result<Result<Option<i64>, (bootcred::Refused, IpAddr)>, DbError> {
    let origin = super::relay::Origin::of(c, headers, peer)?;
    let from = origin.ip;
    if headers.contains_key(crate::proto::relay::OFFLINE_BOOT_HEADER) {
        // a boot the site's relay started alone (its credential, its session): the relay
        // vouches for it, for a host of its own site only
        let of_site = match &origin.site {
            Some(site) => hosts::get(c, mac)?.and_then(|h| h.site) == Some(site.name.clone()),
            None => false,
        };
        return Ok(match of_site {
            true => Ok(None),
            false => Err((bootcred::Refused::NoBoot, from)),
        });
    }
    Ok(bootcred::check(c, mac, session, from, now, closed_ok)?.map_err(|r| (r, from)))
}

/// What the hello's database step decided.
struct Hellod {
    host: hosts::Host,
    /// The task this agent runs now, if any.
    task: Option<tasks::Task>,
    /// The name post-deploy writes, the partition it grows, what follows the task.
    hostname: Option<String>,
    grow: Option<u32>,
    then: Option<crate::proto::agent::After>,
    multicast: Option<crate::db::sessions::Session>,
    session: String,
    agent_ip: IpAddr,
    relayed: bool,
    /// What identity and registration rules did.
    joined: crate::registration::Outcome,
    /// An inventory boot's task was done: what the machine does next.
    inventory_then: Option<Option<crate::proto::agent::After>>,
}

/// `POST /api/v1/agent/hello`: the agent is up. Records the host (registering it) and says
/// what to do next.
///
/// A MAC is no secret, so the hello must carry the credential that the server put on the
/// kernel command line of this MAC's boot-environment script, from the address that script was
/// given to, within its lifetime: a machine on the network cannot register, or move the task
/// of, another machine. The answer carries the session the agent's other requests use. The
/// task named must be that host's own open task.
pub async fn agent_hello(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
    Json(hello): Json<Hello>,
) -> ApiResult {
    let mac = parse_mac(&hello.mac)?;
    use crate::proto::agent::AGENT_PROTOCOL;
    if hello.protocol < AGENT_PROTOCOL {
        tracing::warn!(%mac, protocol = hello.protocol, "hello refused: a boot environment from an older bootcast");
        return Err(ApiError::bad_request(format!(
            "this boot environment's agent speaks agent protocol {}, this server {AGENT_PROTOCOL}: it is from an older bootcast; rebuild it on the central server (`bootcast bootenv build`, bootcast {}); relays take the new one from upstream",
            hello.protocol,
            env!("CARGO_PKG_VERSION")
        )));
    }
    if hello.protocol > AGENT_PROTOCOL {
        tracing::warn!(%mac, protocol = hello.protocol, "hello refused: a boot environment from a newer bootcast");
        return Err(ApiError::bad_request(format!(
            "this boot environment's agent speaks agent protocol {}, this server only {AGENT_PROTOCOL}: upgrade the server it says hello to (bootcast {} here), or rebuild the boot environment with this server's bootcast",
            hello.protocol,
            env!("CARGO_PKG_VERSION")
        )));
    }
    super::error::check_arch(&hello.arch)?;
    let now = crate::time::now_unix();
    st.chunks.captures.sweep();
    let h = hello.clone();
    let data = st.data.clone();
    let res = st
        .db
        .call(move |c| {
            // through a site relay: the machine's own address from the verified relay's header
            let origin = super::relay::Origin::of(c, &headers, peer)?;
            let (agent_ip, relayed) = (origin.ip, origin.relayed.is_some());
            let session = match bootcred::exchange(c, mac, h.credential.as_deref(), agent_ip, now)?
            {
                Ok(s) => s,
                Err(r) => return Ok(Err((r, agent_ip))),
            };
            let ip = agent_ip.to_string();
            let registered_before = hosts::get(c, mac)?.is_some_and(|h| h.registered());
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
            // identity (SMBIOS UUID) and registration rules; a failure there is logged, and
            // the hello goes on as a plain registration
            let joined = match crate::registration::on_hello(
                c,
                &data,
                &host,
                registered_before,
                h.smbios.as_ref(),
                agent_ip,
                now,
            ) {
                Ok(o) => o,
                Err(e) => {
                    tracing::error!(%mac, "registration rules: {e}");
                    Default::default()
                }
            };
            let host = hosts::get(c, mac)?.unwrap_or(host);
            // The task named on the kernel command line, only if it is this host's and open.
            let task = match h.task {
                Some(id) => tasks::get(c, id)?.filter(|t| t.mac == mac && t.state.is_open()),
                None => None,
            };
            let runnable = task.as_ref().is_some_and(|t| match t.kind {
                TaskKind::Reimage => t.image.is_some() && t.version.is_some(),
                TaskKind::Capture => t.image.is_some(),
                TaskKind::Register | TaskKind::Inventory => false,
            });
            // an inventory boot's work is this hello (the agent reports its inventory next);
            // then the machine does what the task says (default: reboot)
            let inventory_then = match task.as_ref().filter(|t| t.kind == TaskKind::Inventory) {
                Some(t) => {
                    tasks::set_state(
                        c,
                        mac,
                        t.id,
                        TaskState::Done,
                        Some("the agent booted and reports the inventory"),
                        now,
                    )?;
                    Some(crate::db::tasks::then_of(c, t)?)
                }
                None => None,
            };
            if let Some(t) = task
                .as_ref()
                .filter(|t| !runnable && t.kind != TaskKind::Inventory)
            {
                // This agent runs reimage and capture tasks only. Closing the task (rather
                // than leaving it open) keeps the host from booting it again and again.
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
            // the task this agent will run, if any, and the name to give the restored system
            let task = task.filter(|_| runnable);
            let post_deploy = match &task {
                Some(t) => images::post_deploy(c, t.image.as_deref().unwrap_or(""))?,
                None => Default::default(),
            };
            let hostname = host.name.clone().filter(|_| post_deploy.hostname);
            let grow = post_deploy.grow;
            let then = match &task {
                Some(t) => crate::db::tasks::then_of(c, t)?,
                None => None,
            };
            // the task's room multicast session, if any (not the agent's session)
            let multicast = match task.as_ref().and_then(|t| t.multicast) {
                Some(id) => crate::db::sessions::get(c, id)?,
                None => None,
            };
            Ok(Ok(Hellod {
                host,
                task,
                hostname,
                grow,
                then,
                multicast,
                session,
                agent_ip,
                relayed,
                joined,
                inventory_then,
            }))
        })
        .await?;
    let Hellod {
        host,
        task,
        hostname,
        grow,
        then,
        multicast,
        session,
        agent_ip,
        relayed,
        joined,
        inventory_then,
    } = res.map_err(|(r, from)| refused(&r, mac, from, "hello"))?;
    emit_registration(&st.hooks, mac, &joined);
    if let (Some(id), None) = (hello.task, &task) {
        tracing::warn!(%mac, task = id, "hello names no task this agent can run for this host (closed, another host's, or neither a reimage nor a capture)");
    }
    let idle = match st.after_register {
        // an inventory boot: as its task says
        _ if inventory_then.is_some() => match inventory_then.flatten() {
            Some(crate::proto::agent::After::Poweroff) => HelloReply::Poweroff,
            _ => HelloReply::Reboot,
        },
        // a task was just made for it (a registration rule, its other NIC's): boot it now
        _ if joined.task_waits() => HelloReply::Reboot,
        AfterRegister::Reboot => HelloReply::Reboot,
        AfterRegister::Poweroff => HelloReply::Poweroff,
    };
    let reply = match &task {
        Some(t) if t.kind == TaskKind::Capture => {
            // The agent cuts with the store's parameters, so the store must exist: a capture
            // may be this server's first image.
            let chunks = st.chunks.clone();
            let store = match tokio::task::spawn_blocking(move || chunks.store_or_create()).await {
                Ok(Ok(s)) => Ok(s),
                Ok(Err(e)) => Err(e.message().to_string()),
                Err(e) => Err(e.to_string()),
            };
            match store {
                Ok(store) => {
                    let image = t.image.clone().unwrap_or_default();
                    let name = image.clone();
                    let raw = st
                        .db
                        .call(move |c| crate::db::images::raw(c, &name))
                        .await?;
                    HelloReply::Capture {
                        task: t.id,
                        image,
                        chunker: store.config().chunker,
                        zstd_level: store.config().zstd_level,
                        raw,
                        then,
                    }
                }
                Err(e) => {
                    let (id, reason) = (t.id, format!("the server's image store cannot be used: {e}; fix it, then create the capture task again"));
                    tracing::error!(%mac, task = id, "{reason}");
                    let now = crate::time::now_unix();
                    st.db
                        .call(move |c| {
                            tasks::set_state(c, mac, id, TaskState::Failed, Some(&reason), now)
                        })
                        .await?;
                    idle
                }
            }
        }
        Some(t) => {
            let (image, version) = (
                t.image.clone().unwrap_or_default(),
                t.version.clone().unwrap_or_default(),
            );
            // central vouches for this order: this task, this machine, this version
            let signature = st.signer.as_ref().map(|k| {
                k.sign(&crate::sign::Statement::Task {
                    task: t.id,
                    mac: &mac.to_string(),
                    image: &image,
                    version: &version,
                })
            });
            HelloReply::Reimage {
                task: t.id,
                image,
                version,
                hostname,
                grow,
                multicast: match multicast {
                    Some(sess) => offer_multicast(&st, sess, relayed, agent_ip).await,
                    None => None,
                },
                signature,
                then,
            }
        }
        None => idle,
    };
    st.hooks.emit(
        crate::hooks::EventKind::Boot,
        Some(mac.to_string()),
        serde_json::json!({
            "ip": agent_ip.to_string(),
            "arch": hello.arch,
            "firmware": hello.firmware.as_str(),
            "registered": host.registered_at.is_some(),
            "task": task.as_ref().map(|t| t.id),
        }),
    );
    tracing::info!(
        %mac,
        arch = %hello.arch,
        firmware = hello.firmware.as_str(),
        peer = %peer.ip(),
        registered = %host.registered_at.map(crate::time::rfc3339).unwrap_or_default(),
        "agent hello; reply {reply:?}"
    );
    Ok(Json(HelloAnswer {
        mac: mac.to_string(),
        session,
        reply,
    })
    .into_response())
}

/// The events of what identity and registration rules did at a hello.
fn emit_registration(hooks: &crate::hooks::Hooks, mac: Mac, o: &crate::registration::Outcome) {
    use crate::hooks::EventKind;
    if let Some((old, moved)) = &o.same_machine {
        tracing::info!(%mac, %old, left = ?moved.tasks, "same machine (SMBIOS UUID), another NIC: it takes its host's place (its open tasks stay on the old MAC: `bootcast host replace` moves them)");
        hooks.emit(
            EventKind::HostReplaced,
            Some(mac.to_string()),
            serde_json::json!({ "old": old.to_string(), "why": "same SMBIOS UUID", "moved": moved }),
        );
    }
    if !o.conflict.is_empty() {
        let others: Vec<String> = o.conflict.iter().map(|m| m.to_string()).collect();
        tracing::warn!(%mac, ?others, "identity conflict: the same SMBIOS UUID on active hosts; nothing merged (`bootcast host replace` if it is one machine)");
        hooks.emit(
            EventKind::IdentityConflict,
            Some(mac.to_string()),
            serde_json::json!({ "others": others }),
        );
    }
    if let Some(a) = &o.rule {
        tracing::info!(%mac, rule = a.rule, "registration rule applied: {a:?}");
        if let Some(old) = a.replaced {
            hooks.emit(
                EventKind::HostReplaced,
                Some(mac.to_string()),
                serde_json::json!({ "old": old.to_string(), "why": "broken host of the room", "rule": a.rule }),
            );
        }
        hooks.emit(
            EventKind::Registered,
            Some(mac.to_string()),
            serde_json::to_value(a).unwrap_or_default(),
        );
    }
}

/// The multicast session to join for a reimage task of session `sess`. Through a site relay
/// the relay runs the sender (it starts it when it passes this reply on); else this server
/// does, on the interface facing the agent. `None`: restore over HTTP.
async fn offer_multicast(
    st: &AppState,
    sess: crate::db::sessions::Session,
    relayed: bool,
    agent: std::net::IpAddr,
) -> Option<crate::proto::agent::MulticastJoin> {
    use crate::multicast::sessions::Ensured;
    let (group, port) = crate::multicast::sessions::address(sess.id);
    let join = crate::proto::agent::MulticastJoin {
        session: sess.id,
        group,
        port,
        receivers: sess.receivers,
        wait_secs: sess.wait_secs,
        max_rate: sess.max_rate,
    };
    if relayed {
        return Some(join);
    }
    let (sessions, chunks, db) = (st.multicast.clone(), st.chunks.clone(), st.db.clone());
    let id = sess.id;
    let offered = tokio::task::spawn_blocking(move || {
        let db2 = db.clone();
        let offered = crate::multicast::sessions::offer(
            &sessions,
            chunks.store().ok(),
            join,
            &sess.image,
            &sess.version,
            agent,
            move |report| {
                let report = match report {
                    Ok(r) => serde_json::to_value(r).unwrap_or_default(),
                    Err(e) => serde_json::json!({ "error": e }),
                };
                let c = db2.lock();
                if let Err(e) = crate::db::sessions::run_ended(&c, id, &report) {
                    tracing::warn!(session = id, "recording the multicast report: {e}");
                }
            },
        );
        if let Some((_, Ensured::Started { .. })) = offered {
            let c = db.lock();
            if let Err(e) = crate::db::sessions::run_started(&c, id, crate::time::now_unix()) {
                tracing::warn!(session = id, "recording the multicast run: {e}");
            }
        }
        offered.map(|(join, _)| join)
    })
    .await;
    offered.ok().flatten()
}

/// `GET /api/v1/hosts[?site=&group=&q=&all=true&limit=&after=MAC]`: a page of hosts in MAC
/// order, `{"hosts", "total", "next"}`; an operator's, of their sites only.
pub async fn list_hosts(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    axum::extract::Query(mut q): axum::extract::Query<hosts::HostQuery>,
) -> ApiResult {
    if let Some(a) = &q.after {
        parse_mac(a)?;
    }
    let scope = who.scope();
    super::staff::site_in_scope(&scope, q.site.as_deref())?;
    q.scope = scope.sites().map(<[String]>::to_vec);
    let body = st
        .db
        .read(move |c| {
            let page = hosts::page(c, &q)?;
            // the next page's link: these parameters, after this page's last MAC
            let next = page.next.as_ref().map(|after| {
                let mut link = form_urlencoded::Serializer::new(String::new());
                for (k, v) in [
                    ("site", q.site.as_deref()),
                    ("group", q.group.as_deref()),
                    ("q", q.q.as_deref()),
                    ("all", q.all.then_some("true")),
                    ("limit", q.limit.map(|l| l.to_string()).as_deref()),
                    ("after", Some(after.as_str())),
                ] {
                    if let Some(v) = v {
                        link.append_pair(k, v);
                    }
                }
                format!("/api/v1/hosts?{}", link.finish())
            });
            Ok(super::JsonBytes::of(&serde_json::json!({
                "hosts": page.hosts,
                "total": page.total,
                "next": next,
            })))
        })
        .await?;
    Ok(body.into_response())
}

/// Applies an agent report that carries a report id ([`REPORT_ID_HEADER`]: one a site relay
/// queued while its upstream was down) at most once: an id already applied is answered 200
/// `{"duplicate": true}` without touching anything; a report applied now (2xx) records its id.
pub async fn once_per_report(
    State(st): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> ApiResult {
    use crate::proto::relay::REPORT_ID_HEADER;
    let Some(id) = req
        .headers()
        .get(REPORT_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
    else {
        return Ok(next.run(req).await);
    };
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::bad_request(format!(
            "{REPORT_ID_HEADER}: up to 64 hex digits"
        )));
    }
    let i = id.clone();
    if st.db.read(move |c| crate::db::reports::seen(c, &i)).await? {
        tracing::info!(report = %id, "a queued report sent again: already applied");
        return Ok(Json(serde_json::json!({ "duplicate": true, "id": 0, "changes": [], "task": 0, "state": "duplicate" }))
            .into_response());
    }
    let resp = next.run(req).await;
    if resp.status().is_success() {
        let now = crate::time::now_unix();
        st.db
            .call(move |c| crate::db::reports::record(c, &id, now))
            .await?;
    }
    Ok(resp)
}

/// `GET /api/v1/hosts/{mac}`: one host with its recent boots and open task.
pub async fn get_host(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(mac): Path<String>,
) -> ApiResult {
    let mac = parse_mac(&mac)?;
    let res = st
        .db
        .read(move |c| {
            if let Err(e) = in_scope(c, &who.scope(), &[mac])? {
                return Ok(Err(e));
            }
            Ok(Ok((
                hosts::get(c, mac)?,
                hosts::boots(c, mac, 20)?,
                tasks::open_for(c, mac)?,
            )))
        })
        .await??;
    match res {
        (Some(h), boots, task) => Ok(Json(
            serde_json::json!({ "host": h, "boots": boots, "task": task }),
        )
        .into_response()),
        (None, ..) => Err(ApiError::not_found(format!("no host {mac}"))),
    }
}

/// `PUT /api/v1/hosts/{mac}/name` with `{"name": "room12-pc01"}` (or `null` to clear it).
pub async fn set_host_name(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(mac): Path<String>,
    Json(body): Json<HostName>,
) -> ApiResult {
    let mac = parse_mac(&mac)?;
    let res = st
        .db
        .call(move |c| {
            if let Err(e) = in_scope(c, &who.scope(), &[mac])? {
                return Ok(Err(e));
            }
            Ok(Ok(hosts::set_name(c, mac, body.name.as_deref())))
        })
        .await??;
    match res {
        Ok(h) => Ok(Json(serde_json::json!({ "host": h })).into_response()),
        Err(hosts::NameError::Db(e)) => Err(e.into()),
        Err(e @ hosts::NameError::NoHost(_)) => Err(ApiError::not_found(e.to_string())),
        Err(e @ hosts::NameError::Taken { .. }) => Err(ApiError::conflict(e.to_string())),
        Err(e) => Err(ApiError::bad_request(e.to_string())),
    }
}

#[derive(Debug, Deserialize)]
pub struct HostName {
    name: Option<String>,
}

/// `GET /api/v1/images/{name}/post-deploy`: the image's post-deploy settings.
pub async fn get_post_deploy(State(st): State<AppState>, Path(name): Path<String>) -> ApiResult {
    let n = name.clone();
    let pd = st.db.read(move |c| images::post_deploy(c, &n)).await?;
    Ok(Json(serde_json::json!({ "image": name, "post_deploy": pd })).into_response())
}

/// `PUT /api/v1/images/{name}/post-deploy` with `{"hostname": true|false, "grow": N|null}`.
pub async fn set_post_deploy(
    State(st): State<AppState>,
    Path(name): Path<String>,
    Json(pd): Json<PostDeploy>,
) -> ApiResult {
    crate::store::catalog::validate_name(&name)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    if let Some(n) = pd.grow.filter(|n| !(1..=128).contains(n)) {
        return Err(ApiError::bad_request(format!(
            "grow {n} is not a partition number (1-128, as Linux numbers them), or null for off"
        )));
    }
    let n = name.clone();
    st.db
        .call(move |c| images::set_post_deploy(c, &n, pd))
        .await?;
    Ok(Json(serde_json::json!({ "image": name, "post_deploy": pd })).into_response())
}

/// What an agent reports about its task.
enum Report {
    Progress(tasks::Progress),
    Done,
    Failed(String),
}

/// The shared path of the agent's task reports: session, then the task must be the caller's
/// own open task.
async fn agent_report(
    st: AppState,
    (peer, headers): (SocketAddr, axum::http::HeaderMap),
    mac: &str,
    session: String,
    id: i64,
    report: Report,
) -> ApiResult {
    let mac = parse_mac(mac)?;
    let what = match report {
        Report::Progress(_) => "progress",
        Report::Done => "done",
        Report::Failed(_) => "failed",
    };
    let closing = !matches!(report, Report::Progress(_));
    let now = crate::time::now_unix();
    let res = st
        .db
        .call(move |c| {
            if let Err(refused) = check_session(c, &headers, peer, mac, Some(&session), (now, true))? {
                return Ok(Err(Err(refused)));
            }
            let task = match tasks::get(c, id)? {
                Some(t) if t.mac == mac => t,
                _ => return Ok(Err(Ok(ApiError::not_found(format!(
                    "host {mac} has no task {id}; report only the task named by bootcast.task= on this boot's kernel command line"
                ))))),
            };
            if !task.state.is_open() {
                return Ok(Err(Ok(ApiError::conflict(format!(
                    "task {id} is already {}; stop working on it and reboot",
                    task.state.as_str()
                )))));
            }
            let updated = match report {
                Report::Progress(p) => tasks::record_progress(c, mac, id, &tasks::Progress { updated_at: now, ..p })?,
                Report::Done => tasks::set_state(c, mac, id, TaskState::Done, None, now)?,
                Report::Failed(reason) => {
                    tasks::set_state(c, mac, id, TaskState::Failed, Some(&reason), now)?
                }
            };
            Ok(Ok(updated.expect("open task of this host, checked in this call")))
        })
        .await?;
    match res {
        Ok(t) => {
            if closing {
                // a capture's session (if any) protects its chunks no longer
                st.chunks.captures.end(t.id);
            }
            if closing && t.kind == TaskKind::Reimage {
                let kind = if t.state == TaskState::Done {
                    crate::hooks::EventKind::ReimageDone
                } else {
                    crate::hooks::EventKind::ReimageFailed
                };
                st.hooks.emit(
                    kind,
                    Some(mac.to_string()),
                    serde_json::json!({
                        "task": t.id,
                        "image": t.image,
                        "version": t.version,
                        "group": t.group,
                        "reason": t.detail,
                    }),
                );
            }
            tracing::info!(%mac, task = t.id, state = t.state.as_str(), "agent {what}");
            Ok(Json(TaskAck {
                task: t.id,
                state: t.state.as_str().to_string(),
            })
            .into_response())
        }
        Err(Err((r, from))) => Err(refused(&r, mac, from, what)),
        Err(Ok(refused)) => {
            tracing::warn!(%mac, task = id, "agent {what} refused: {}", refused.message());
            Err(refused)
        }
    }
}

fn to_i64(v: u64, field: &str) -> Result<i64, String> {
    i64::try_from(v).map_err(|_| format!("{field} {v} is too large"))
}

/// `POST /api/v1/agent/progress`: `{mac, session, task, bytes_done, bytes_total, rate, eta?}`.
pub async fn agent_progress(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
    Json(p): Json<TaskProgress>,
) -> ApiResult {
    if p.bytes_done > p.bytes_total {
        return Err(ApiError::bad_request(format!(
            "bytes_done {} is more than bytes_total {}",
            p.bytes_done, p.bytes_total
        )));
    }
    let progress = (|| {
        Ok::<_, String>(tasks::Progress {
            bytes_done: to_i64(p.bytes_done, "bytes_done")?,
            bytes_total: to_i64(p.bytes_total, "bytes_total")?,
            percent: 0,
            rate: to_i64(p.rate, "rate")?,
            eta: p.eta.map(|e| to_i64(e, "eta")).transpose()?,
            updated_at: 0,
        })
    })()
    .map_err(ApiError::bad_request)?;
    agent_report(
        st,
        (peer, headers),
        &p.mac,
        p.session,
        p.task,
        Report::Progress(progress),
    )
    .await
}

/// `POST /api/v1/agent/done`: `{mac, session, task}`.
pub async fn agent_done(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
    Json(d): Json<TaskDone>,
) -> ApiResult {
    agent_report(st, (peer, headers), &d.mac, d.session, d.task, Report::Done).await
}

/// `POST /api/v1/agent/failed`: `{mac, session, task, reason}`.
pub async fn agent_failed(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
    Json(f): Json<TaskFailed>,
) -> ApiResult {
    let reason: String = f
        .reason
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if reason.is_empty() || reason.chars().count() > 2000 {
        return Err(ApiError::bad_request(
            "reason must say what went wrong, in 1 to 2000 characters",
        ));
    }
    agent_report(
        st,
        (peer, headers),
        &f.mac,
        f.session,
        f.task,
        Report::Failed(reason),
    )
    .await
}

impl From<ScheduleError> for ApiError {
    fn from(e: ScheduleError) -> ApiError {
        if let ScheduleError::Db(e) = e {
            return e.into();
        }
        let status =
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError::new(status, e.to_string())
    }
}

/// `GET /api/v1/tasks` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskQuery {
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    site: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    all: bool,
    #[serde(default)]
    before: Option<i64>,
    #[serde(default)]
    limit: Option<u32>,
}

/// `GET /api/v1/tasks[?host=MAC][&group=G][&site=S][&state=ST][&all=true][&limit=N][&before=ID]`:
/// a page of tasks, newest first (open ones unless `all` or a `state`), `{"tasks", "total",
/// "next"}`; an operator's, of their sites' hosts only.
pub async fn list_tasks(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    axum::extract::Query(q): axum::extract::Query<TaskQuery>,
) -> ApiResult {
    let mac = q.host.as_deref().map(parse_mac).transpose()?;
    if let Some(s) = q.state.as_deref().filter(|s| TaskState::parse(s).is_none()) {
        return Err(ApiError::bad_request(format!(
            "state={s}: say one of {}",
            TaskState::ALL.map(TaskState::as_str).join(", ")
        )));
    }
    let scope = who.scope();
    super::staff::site_in_scope(&scope, q.site.as_deref())?;
    let limit = q
        .limit
        .unwrap_or(hosts::PAGE_DEFAULT)
        .clamp(1, hosts::PAGE_MAX);
    let filter = tasks::TaskFilter {
        mac,
        group: q.group,
        site: q.site,
        state: q.state,
        all: q.all,
        scope: scope.sites().map(<[String]>::to_vec),
        before: q.before,
        limit,
    };
    let body = st
        .db
        .read(move |c| {
            let (t, total, more) = tasks::page(c, &filter)?;
            let next = more.then(|| t.last().map(|t| t.id)).flatten();
            Ok(super::JsonBytes::of(&serde_json::json!({
                "tasks": t, "total": total, "next": next,
            })))
        })
        .await?;
    Ok(body.into_response())
}

/// `POST /api/v1/tasks` with a [`TaskRequest`]: 201 `{"tasks": [...]}` (one per host).
pub async fn create_tasks(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Json(req): Json<TaskRequest>,
) -> ApiResult {
    let data = st.data.clone();
    let now = crate::time::now_unix();
    let t = st
        .db
        .call(move |c| {
            let (host, group) = (req.host.as_deref(), req.group.as_deref());
            if let Err(e) = targets_in_scope(c, &who.scope(), host, group)? {
                return Ok(Err(e));
            }
            Ok(Ok(schedule::create(c, &data, &req, now)))
        })
        .await???;
    tracing::info!(tasks = t.len(), "tasks created through the API");
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "tasks": t }))).into_response())
}

/// `DELETE /api/v1/tasks/{id}`: cancels an open task → `{"task": ...}`.
pub async fn cancel_task(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
) -> ApiResult {
    let now = crate::time::now_unix();
    let mut t = st
        .db
        .call(move |c| {
            if let Some(task) = tasks::get(c, id)? {
                if let Err(e) = in_scope(c, &who.scope(), &[task.mac])? {
                    return Ok(Err(e));
                }
            }
            Ok(Ok(schedule::cancel(c, &CancelTarget::Id(id), now)))
        })
        .await???;
    if t.len() != 1 {
        return Err(ScheduleError::NoTask(id).into());
    }
    st.chunks.captures.end(id);
    Ok(Json(serde_json::json!({ "task": t.pop() })).into_response())
}

/// `POST /api/v1/hosts/wake` with `{"hosts": [MAC...]} | {"group": NAME}`, `at?`, `wave?`,
/// `spacing?`: queues Wake-on-LAN orders → 201 `{"wakes": [...]}` (see [`schedule::wake`]).
pub async fn wake_hosts(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Json(req): Json<WakeHosts>,
) -> ApiResult {
    let now = crate::time::now_unix();
    let how = schedule::WakeRequest {
        wave: req.wave.unwrap_or(schedule::WAKE_WAVE),
        spacing: req.spacing.unwrap_or(schedule::WAKE_SPACING),
    };
    let w = st
        .db
        .call(move |c| {
            let scope = who.scope();
            if let Err(e) = targets_in_scope(c, &scope, None, req.group.as_deref())? {
                return Ok(Err(e));
            }
            for h in &req.hosts {
                if let Err(e) = targets_in_scope(c, &scope, Some(h), None)? {
                    return Ok(Err(e));
                }
            }
            Ok(Ok(schedule::wake(
                c,
                &req.hosts,
                req.group.as_deref(),
                req.at.as_deref(),
                &how,
                now,
            )))
        })
        .await???;
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "wakes": w }))).into_response())
}

/// The body of `POST /api/v1/hosts/wake`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WakeHosts {
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    at: Option<String>,
    #[serde(default)]
    wave: Option<u32>,
    #[serde(default)]
    spacing: Option<u32>,
}

impl From<crate::calendar::CalendarError> for ApiError {
    fn from(e: crate::calendar::CalendarError) -> ApiError {
        use crate::calendar::CalendarError;
        match e {
            CalendarError::Schedule(e) => e.into(),
            CalendarError::Db(e) => e.into(),
            CalendarError::NoRule(_) => ApiError::new(StatusCode::NOT_FOUND, e.to_string()),
            e => ApiError::bad_request(e.to_string()),
        }
    }
}

impl From<crate::registration::RegistrationError> for ApiError {
    fn from(e: crate::registration::RegistrationError) -> ApiError {
        use crate::db::hosts::ReplaceError;
        use crate::registration::RegistrationError as E;
        match e {
            E::Schedule(e) => e.into(),
            E::Db(e) => e.into(),
            E::Replace(ReplaceError::Db(e)) => e.into(),
            E::NoRule(_) | E::NoHost(_) | E::Replace(ReplaceError::NoHost(_)) => {
                ApiError::new(StatusCode::NOT_FOUND, e.to_string())
            }
            e => ApiError::bad_request(e.to_string()),
        }
    }
}

/// `GET /api/v1/registration-rules`: the rules, in the order they are tried.
pub async fn list_registration_rules(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
) -> ApiResult {
    let mut r = st.db.read(crate::db::registration_rules::list).await?;
    let scope = who.scope();
    r.retain(|rule| scope.allows(rule.site.as_deref()));
    Ok(Json(serde_json::json!({ "rules": r })).into_response())
}

/// `POST /api/v1/registration-rules` with a [`crate::db::registration_rules::RegistrationRule`]
/// → 201 `{"rule": ...}`.
pub async fn create_registration_rule(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Json(req): Json<crate::db::registration_rules::RegistrationRule>,
) -> ApiResult {
    if !who.scope().allows(req.site.as_deref()) {
        return Err(super::staff::out_of_scope(format!(
            "a registration rule of {} (an operator's rules name one of their sites: \"site\")",
            req.site.as_deref().unwrap_or("every site")
        )));
    }
    let now = crate::time::now_unix();
    let rule = st
        .db
        .call(move |c| Ok(crate::registration::add(c, &req, now)))
        .await??;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "rule": rule })),
    )
        .into_response())
}

/// `DELETE /api/v1/registration-rules/{id}`.
pub async fn remove_registration_rule(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
) -> ApiResult {
    st.db
        .call(move |c| {
            let rule = crate::db::registration_rules::get(c, id)?;
            if let Some(site) = rule
                .filter(|r| !who.scope().allows(r.site.as_deref()))
                .map(|r| r.site)
            {
                return Ok(Err(super::staff::out_of_scope(format!(
                    "registration rule {id} (of {})",
                    site.as_deref().unwrap_or("every site")
                ))));
            }
            Ok(Ok(crate::registration::remove(c, id)))
        })
        .await???;
    Ok(Json(serde_json::json!({ "removed": id })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplaceBody {
    /// The machine that takes the place.
    pub new: String,
}

/// `POST /api/v1/hosts/{mac}/replace` `{"new": MAC}`: the new machine takes this host's place.
pub async fn replace_host(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(mac): Path<String>,
    Json(body): Json<ReplaceBody>,
) -> ApiResult {
    let (old, new) = (parse_mac(&mac)?, parse_mac(&body.new)?);
    let now = crate::time::now_unix();
    let moved = st
        .db
        .call(move |c| {
            if let Err(e) = in_scope(c, &who.scope(), &[old, new])? {
                return Ok(Err(e));
            }
            Ok(Ok(crate::db::hosts::replace(c, old, new, now, true)
                .map_err(crate::registration::RegistrationError::from)))
        })
        .await???;
    st.hooks.emit(
        crate::hooks::EventKind::HostReplaced,
        Some(new.to_string()),
        serde_json::json!({ "old": old.to_string(), "why": "staff", "moved": moved }),
    );
    Ok(
        Json(serde_json::json!({ "old": old.to_string(), "new": new.to_string(), "moved": moved }))
            .into_response(),
    )
}

/// `POST /api/v1/hosts/{mac}/approve`: the host's registration rule's reimage task is made.
pub async fn approve_host(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(mac): Path<String>,
) -> ApiResult {
    let mac = parse_mac(&mac)?;
    let (data, now) = (st.data.clone(), crate::time::now_unix());
    let task = st
        .db
        .call(move |c| {
            if let Err(e) = in_scope(c, &who.scope(), &[mac])? {
                return Ok(Err(e));
            }
            Ok(Ok(crate::registration::approve(c, &data, mac, now)))
        })
        .await???;
    Ok(Json(serde_json::json!({ "mac": mac.to_string(), "task": task })).into_response())
}

/// `GET /api/v1/task-rules`: every recurring task rule with its next run.
pub async fn list_task_rules(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
) -> ApiResult {
    let r = st
        .db
        .read(move |c| {
            let mut kept = Vec::new();
            for l in crate::calendar::list(c)? {
                let (h, g) = (l.rule.host.as_deref(), l.rule.group.as_deref());
                if targets_in_scope(c, &who.scope(), h, g)?.is_ok() {
                    kept.push(l);
                }
            }
            Ok(kept)
        })
        .await?;
    Ok(Json(serde_json::json!({ "rules": r })).into_response())
}

/// `POST /api/v1/task-rules` with a [`crate::calendar::RuleRequest`] → 201 `{"rule": ...}`.
pub async fn create_task_rule(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Json(req): Json<crate::calendar::RuleRequest>,
) -> ApiResult {
    let now = st.clock.now();
    let rule = st
        .db
        .call(move |c| {
            let (host, group) = (req.host.as_deref(), req.group.as_deref());
            if let Err(e) = targets_in_scope(c, &who.scope(), host, group)? {
                return Ok(Err(e));
            }
            Ok(Ok(crate::calendar::add(c, &req, now)))
        })
        .await???;
    let next_run = crate::calendar::next_run(&rule);
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "rule": crate::calendar::Listed { rule, next_run } })),
    )
        .into_response())
}

/// `DELETE /api/v1/task-rules/{id}`.
pub async fn remove_task_rule(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
) -> ApiResult {
    st.db
        .call(move |c| {
            if let Err(e) = task_rule_in_scope(c, &who.scope(), id)? {
                return Ok(Err(e));
            }
            Ok(Ok(crate::calendar::remove(c, id)))
        })
        .await???;
    Ok(Json(serde_json::json!({ "removed": id })).into_response())
}

/// `POST /api/v1/task-rules/{id}/ack`: the failed run was seen.
pub async fn ack_task_rule(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
) -> ApiResult {
    st.db
        .call(move |c| {
            if let Err(e) = task_rule_in_scope(c, &who.scope(), id)? {
                return Ok(Err(e));
            }
            Ok(Ok(crate::calendar::acknowledge(c, id)))
        })
        .await???;
    Ok(Json(serde_json::json!({ "acknowledged": id })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupQuery {
    /// This group only.
    #[serde(default)]
    name: Option<String>,
    /// Groups with a host of this site.
    #[serde(default)]
    site: Option<String>,
    /// The page after this group name (the previous page's `next`).
    #[serde(default)]
    after: Option<String>,
    /// Groups per page (default 100, at most 1000).
    #[serde(default)]
    limit: Option<u32>,
}

/// `GET /api/v1/groups[?name=NAME][&site=S][&after=NAME][&limit=N]`: a page of groups by
/// name with their hosts, `{"groups", "total", "next"}`; an operator's, of their sites (every
/// host of the group is).
pub async fn list_groups(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    axum::extract::Query(q): axum::extract::Query<GroupQuery>,
) -> ApiResult {
    let scope = who.scope();
    super::staff::site_in_scope(&scope, q.site.as_deref())?;
    let query = groups::GroupQuery {
        name: q.name,
        site: q.site,
        scope: scope.sites().map(<[String]>::to_vec),
        after: q.after,
        limit: q.limit.unwrap_or(100).clamp(1, 1000),
    };
    let (g, total, next) = st.db.read(move |c| groups::page(c, &query)).await?;
    Ok(Json(serde_json::json!({ "groups": g, "total": total, "next": next })).into_response())
}

/// `POST /api/v1/bulk`: one action on a selection of hosts ([`schedule::bulk`]). Answers
/// each host's outcome, `{"done": [{"mac", "tasks"|"wakes"|"cancelled"}], "failed": [{"mac",
/// "error"}]}`: 200 if any host's action was done, else 400. A selection of more than
/// [`schedule::BULK_CONFIRM_OVER`] hosts, or of hosts of several sites, is refused with 409
/// (`{"confirm": N, "sites": [...]}`) until the request says `"confirm": N`.
pub async fn bulk(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Json(req): Json<schedule::Bulk>,
) -> ApiResult {
    let macs = req.macs()?;
    let (data, now) = (st.data.clone(), crate::time::now_unix());
    let out = st
        .db
        .call(move |c| {
            if let Err(e) = in_scope(c, &who.scope(), &macs)? {
                return Ok(Err(e));
            }
            Ok(schedule::bulk(c, &data, &req, now)
                .map(|o| (o.done, o.failed))
                .map_err(|e| {
                    let detail = match &e {
                        ScheduleError::Unconfirmed { n, sites, .. } => {
                            Some(serde_json::json!({ "confirm": n, "sites": sites }))
                        }
                        _ => None,
                    };
                    match (ApiError::from(e), detail) {
                        (api, Some(d)) => api.with_detail(d),
                        (api, None) => api,
                    }
                }))
        })
        .await??;
    let (done, failed) = out;
    let status = if done.is_empty() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(serde_json::json!({ "done": done, "failed": failed })),
    )
        .into_response())
}

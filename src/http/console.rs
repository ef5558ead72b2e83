//! The staff console: pages under `/ui` (one HTML shell, embedded in the binary, that a small
//! embedded script fills from the staff API: so the console sees exactly what the API lets
//! the user see), the dashboard's summary (`GET /api/v1/dashboard`), live updates by
//! server-sent events (`GET /api/v1/live`), and push creation (`POST /api/v1/pushes`).
//!
//! A page without a session redirects to `/ui/login`. Pages need no role of their own: every
//! datum and action on them goes through an API route, checked in [`super::staff`].

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Json};
use serde::Deserialize;

use super::error::{ApiError, ApiResult};
use super::AppState;
use crate::access::{Principal, Role};
use crate::db::{dashboard, pushes, sites, tasks};

const SHELL: &str = include_str!("console/shell.html");
const SCRIPT: &str = include_str!("console/console.js");
const STYLE: &str = include_str!("console/console.css");

/// The pages (`/ui/NAME`); the script draws each.
pub const PAGES: &[&str] = &[
    "",
    "hosts",
    "host",
    "room",
    "images",
    "push",
    "multicast",
    "tasks",
    "rules",
    "audit",
    "users",
];

/// `GET /api/v1/dashboard`: hosts and tasks counted, tasks under way, the caller's sites with
/// their relay and pushes, failures to acknowledge.
pub async fn dashboard(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
) -> ApiResult {
    let now = crate::time::now_unix();
    let body = st
        .db
        .read(move |c| {
            let scope = who.scope();
            let mut summary = dashboard::summary(c, scope.sites(), now)?;
            let mut rules = Vec::new();
            for (id, outcome) in std::mem::take(&mut summary.failed_rules) {
                if super::staff::task_rule_in_scope(c, &scope, id)?.is_ok() {
                    rules.push((id, outcome));
                }
            }
            summary.failed_rules = rules;
            let open = pushes::list(c, false)?;
            let mut out = Vec::new();
            for site in sites::list(c)? {
                if !scope.allows(Some(&site.name)) {
                    continue;
                }
                let mut site_pushes = Vec::new();
                for p in &open {
                    for ps in p.sites.iter().filter(|ps| ps.site == site.name) {
                        let mut s = serde_json::to_value(crate::push::status::site_status(
                            p, ps, &site, now,
                        ))
                        .expect("a status serialises");
                        s["push"] = p.id.into();
                        s["images"] = p
                            .versions
                            .iter()
                            .map(|v| v.image.clone())
                            .collect::<Vec<_>>()
                            .into();
                        s["deadline"] = p.deadline.map(crate::time::rfc3339).into();
                        site_pushes.push(s);
                    }
                }
                let heartbeat_age = site.relay.as_ref().map(|r| now - r.last_heartbeat);
                out.push(serde_json::json!({
                    "name": site.name,
                    "hosts": summary.hosts.get(&site.name).copied().unwrap_or(0),
                    "relay": site.relay,
                    "heartbeat_age": heartbeat_age,
                    "pushes": site_pushes,
                }));
            }
            Ok(super::JsonBytes::of(&serde_json::json!({
                "summary": summary,
                "sites": out,
                "now": crate::time::rfc3339(now),
            })))
        })
        .await?;
    Ok(body.into_response())
}

/// The open tasks the caller may see, as the live stream sends them (the caller's sites
/// picked in SQL: this runs every second for each open console page).
fn open_tasks(
    c: &rusqlite::Connection,
    who: &Principal,
) -> Result<Vec<tasks::Task>, crate::db::DbError> {
    let filter = tasks::TaskFilter {
        scope: who.scope().sites().map(<[String]>::to_vec),
        limit: LIVE_MAX,
        ..Default::default()
    };
    Ok(tasks::page(c, &filter)?.0)
}

/// Most open tasks one live event carries.
const LIVE_MAX: u32 = 100_000;

/// `GET /api/v1/live`: server-sent events. `tasks`: the open tasks (state, progress) each
/// time they change (checked every second), plus the tasks that closed since. A comment
/// every 3 s keeps proxies from closing the stream and frees the connection (it counts
/// against `[http] max_per_address`) within seconds of the page being left: a write is how
/// the server learns the browser went away.
pub async fn live(State(st): State<AppState>, Extension(who): Extension<Principal>) -> Response {
    let stream = futures_util::stream::unfold(
        (st, who, String::new(), Vec::<i64>::new(), true),
        |(st, who, last, ids, first)| async move {
            let mut wait = !first;
            loop {
                if wait {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                wait = true;
                let w = who.clone();
                let before = ids.clone();
                let snap = st
                    .db
                    .read(move |c| {
                        let open = open_tasks(c, &w)?;
                        // tasks that were open at the last event and are not now: their end
                        let mut closed = Vec::new();
                        for id in before {
                            if !open.iter().any(|t| t.id == id) {
                                closed.extend(tasks::get(c, id)?);
                            }
                        }
                        Ok((open, closed))
                    })
                    .await;
                let Ok((open, closed)) = snap else { continue };
                let data = serde_json::json!({ "open": open, "closed": closed }).to_string();
                let key = serde_json::to_string(&open).unwrap_or_default();
                if key != last || !closed.is_empty() {
                    let ids: Vec<i64> = open.iter().map(|t| t.id).collect();
                    let ev = Event::default().event("tasks").data(data);
                    return Some((Ok::<_, Infallible>(ev), (st, who, key, ids, false)));
                }
            }
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(3)))
        .into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionQuery {
    /// Sessions older than this id (the previous page's `next`).
    #[serde(default)]
    before: Option<i64>,
    /// Sessions per page (default 50, at most 500).
    #[serde(default)]
    limit: Option<u32>,
}

/// `GET /api/v1/multicast[?before=ID&limit=N]`: room multicast sessions, newest first, each
/// with its receivers counted from its tasks (waiting, joined, done, dropped) and its
/// sender's last report when this server ran it; `next` pages on. An operator sees the
/// sessions of their sites' hosts.
pub async fn multicast_sessions(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    axum::extract::Query(q): axum::extract::Query<SessionQuery>,
) -> ApiResult {
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let list = st
        .db
        .read(move |c| {
            let scope = who.scope();
            crate::db::sessions::followed(c, scope.sites(), q.before, limit + 1)
        })
        .await?;
    let mut list = list;
    let next = (list.len() > limit as usize).then(|| {
        list.truncate(limit as usize);
        list.last().map(|s| s.session.id)
    });
    Ok(Json(serde_json::json!({ "sessions": list, "next": next.flatten() })).into_response())
}

/// `GET /api/v1/pushes/{id}/progress`: each site's progress over time in push `id` (samples
/// of its relay's heartbeats, every few minutes), and the push's deadline: the night's
/// curve. An operator gets their sites' curves.
pub async fn push_progress(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
) -> ApiResult {
    let got = st
        .db
        .read(move |c| {
            let Some(p) = pushes::get(c, id)? else {
                return Ok(None);
            };
            let scope = who.scope();
            Ok(Some((p, pushes::curves(c, id, scope.sites())?)))
        })
        .await?;
    let Some((p, curves)) = got else {
        return Err(ApiError::not_found(format!(
            "no push {id}: `GET /api/v1/pushes` lists the open ones"
        )));
    };
    Ok(Json(serde_json::json!({
        "push": p.id,
        "created_at": p.created_at,
        "deadline": p.deadline,
        "state": p.state,
        "now": st.clock.now(),
        "sites": curves,
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPush {
    /// `NAME` (newest approved version) or `NAME@VERSION`.
    pub images: Vec<String>,
    /// Site names, or `["all"]`.
    pub sites: Vec<String>,
    #[serde(default)]
    pub window: Option<String>,
    /// `50Mbit`, `1Gbit`, `5MB`.
    #[serde(default)]
    pub rate: Option<String>,
    /// `HH:MM` (this server's time) or RFC 3339.
    #[serde(default)]
    pub deadline: Option<String>,
}

/// `POST /api/v1/pushes` (admin) → 201 `{"push"}`: versions to sites' relays, as
/// `bootcast push create`.
pub async fn create_push(State(st): State<AppState>, Json(req): Json<NewPush>) -> ApiResult {
    use crate::push::plan;
    let now = crate::time::now_unix();
    let windows = req
        .window
        .as_deref()
        .map(|w| crate::push::window::Windows::parse(w).map(|w| w.to_string()))
        .transpose()
        .map_err(ApiError::bad_request)?;
    let rate = req
        .rate
        .as_deref()
        .map(crate::rate::parse_rate)
        .transpose()
        .map_err(ApiError::bad_request)?;
    let deadline = req
        .deadline
        .as_deref()
        .map(|d| crate::time::parse_at(d, now, &crate::time::Zone::local()))
        .transpose()
        .map_err(ApiError::bad_request)?;
    let store = st.chunks.store()?;
    let plan_req = plan::Request {
        images: req.images,
        sites: req.sites,
        windows,
        rate,
        deadline,
    };
    let p = st
        .db
        .call(move |c| {
            Ok(
                plan::create(c, &store, &plan_req, now).map_err(|e| match e {
                    plan::PlanError::Db(e) => ApiError::from(e),
                    plan::PlanError::Store(e) => ApiError::from(e),
                    e => ApiError::bad_request(e.to_string()),
                }),
            )
        })
        .await??;
    st.orders.bump();
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "push": p }))).into_response())
}

/// `POST /api/v1/pushes/{id}/{action}` (admin; `pause`, `resume` or `cancel`) → `{"push"}`, as
/// `bootcast push pause|resume|cancel`; the relays hear of it at once. 404: no such push; 409:
/// its state refuses it (a done push cannot be paused).
pub async fn change_push(
    State(st): State<AppState>,
    Path((id, action)): Path<(i64, String)>,
) -> ApiResult {
    use pushes::{ChangeError, PushStatus};
    let to = match action.as_str() {
        "pause" => PushStatus::Paused,
        "resume" => PushStatus::Active,
        "cancel" => PushStatus::Cancelled,
        a => {
            return Err(ApiError::bad_request(format!(
                "{a:?}: say pause, resume or cancel"
            )))
        }
    };
    let p = st
        .db
        .call(move |c| Ok(pushes::change(c, id, to)))
        .await?
        .map_err(|e| match e {
            ChangeError::NoPush(_) => ApiError::not_found(e.to_string()),
            ChangeError::Refused { .. } => ApiError::conflict(e.to_string()),
            ChangeError::Db(e) => ApiError::from(e),
        })?;
    st.orders.bump();
    Ok(Json(serde_json::json!({ "push": p })).into_response())
}

/// `GET /ui`, `/ui/{page}`, `/ui/{page}/{arg}`: the shell for that page, or the login page.
pub async fn page(
    State(st): State<AppState>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    let rest = uri.path().strip_prefix("/ui").unwrap_or("");
    let mut parts = rest.trim_matches('/').splitn(2, '/');
    let name = parts.next().unwrap_or("").to_string();
    let arg = parts.next().unwrap_or("").to_string();
    if name == "login" {
        return html(SHELL, "login", "", &serde_json::Value::Null, "");
    }
    if !PAGES.contains(&name.as_str()) {
        return (StatusCode::NOT_FOUND, "no such console page\n").into_response();
    }
    let Ok(Some((who, csrf))) = super::staff::session_principal(&st, &headers).await else {
        let next = form_urlencoded::byte_serialize(uri.to_string().as_bytes()).collect::<String>();
        return Redirect::to(&format!("/ui/login?next={next}")).into_response();
    };
    let me = serde_json::json!({
        "user": who.user,
        "role": who.role,
        "sites": who.sites,
        "admin": who.role == Role::Admin,
        "operator": who.role >= Role::Operator,
    });
    html(
        SHELL,
        if name.is_empty() { "dashboard" } else { &name },
        &arg,
        &me,
        &csrf,
    )
}

fn html(shell: &str, page: &str, arg: &str, me: &serde_json::Value, csrf: &str) -> Response {
    let body = render(shell, page, arg, me, csrf);
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
            ),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        body,
    )
        .into_response()
}

/// The shell with the page's name and argument, the user (JSON) and the session's CSRF token
/// in place, each HTML-escaped.
fn render(shell: &str, page: &str, arg: &str, me: &serde_json::Value, csrf: &str) -> String {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
            .replace('\'', "&#39;")
    };
    let me = me.to_string();
    // one pass over the shell: what is put in is never read again as a placeholder
    let mut out = String::with_capacity(shell.len() + 256);
    let mut rest = shell;
    while let Some(i) = rest.find("{{") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(j) = after.find("}}") else {
            out.push_str(&rest[i..]);
            rest = "";
            break;
        };
        match &after[..j] {
            "page" => out.push_str(&esc(page)),
            "arg" => out.push_str(&esc(arg)),
            "me" => out.push_str(&esc(&me)),
            "csrf" => out.push_str(&esc(csrf)),
            "version" => out.push_str(env!("CARGO_PKG_VERSION")),
            other => {
                out.push_str("{{");
                out.push_str(other);
                out.push_str("}}");
            }
        }
        rest = &after[j + 2..];
    }
    out.push_str(rest);
    out
}

/// `GET /ui/assets/{file}`: the console's script and style sheet.
pub async fn asset(Path(file): Path<String>) -> Response {
    let (ty, body) = match file.as_str() {
        "console.js" => ("text/javascript; charset=utf-8", SCRIPT),
        "console.css" => ("text/css; charset=utf-8", STYLE),
        _ => return (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, ty),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shell_escapes_what_it_is_given() {
        let r = render(
            "<p>{{page}} {{arg}} {{me}} {{csrf}}</p>",
            "host",
            "<script>{{csrf}}",
            &serde_json::json!({ "user": "a\"b" }),
            "c",
        );
        assert_eq!(
            r,
            "<p>host &lt;script&gt;{{csrf}} {&quot;user&quot;:&quot;a\\&quot;b&quot;} c</p>"
        );
    }
}

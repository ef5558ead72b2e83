//! Who is calling the staff API and console, and whether they may: the one place every staff
//! route is checked ([`authenticate`], with the [`ROUTES`] table), the audit trail of every
//! change, logins (local accounts, the directory), sessions, personal tokens, and the checks of
//! an operator's sites ([`in_scope`]) that handlers run inside their own transaction.
//!
//! A caller is one of: the server's API token (`DATA/api-token`, the first admin's, for
//! scripts), a personal token (`Authorization: Bearer bct_...`), or a browser session (cookie
//! [`SESSION_COOKIE`], `HttpOnly; SameSite=Strict`), whose changes must carry the session's
//! CSRF token in [`CSRF_HEADER`].

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, MatchedPath, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use rusqlite::Connection;
use serde::Deserialize;

use super::auth::{bearer, random_hex_for_request, same_secret};
pub use super::auth::{session_cookie, LOGIN_PATH, SESSION_COOKIE};
use super::error::{ApiError, ApiResult};
use super::AppState;
use crate::access::{self, Need, Principal, Role, Scope, Via};
use crate::db::{hosts, staff, DbError};
use crate::mac::Mac;

/// The header a session's changes carry its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a session lasts: a working day.
pub const SESSION_SECS: i64 = 10 * 3600;
/// Most bytes of a request body kept in the audit trail.
const AUDIT_DETAIL_MAX: usize = 2000;

/// Every staff route and what it needs. A route missing here is refused to everyone (403),
/// and `tests/staff_access.rs` checks each one with every role.
pub const ROUTES: &[(&str, &str, Need)] = &[
    ("GET", "/api/v1/me", Need::Read),
    ("POST", "/api/v1/logout", Need::Read),
    ("POST", "/api/v1/me/password", Need::Read),
    ("POST", "/api/v1/me/tokens", Need::Read),
    ("GET", "/api/v1/users", Need::Admin),
    ("POST", "/api/v1/users", Need::Admin),
    ("DELETE", "/api/v1/users/{name}", Need::Admin),
    ("GET", "/api/v1/audit", Need::Read),
    ("GET", "/api/v1/hosts", Need::Read),
    ("GET", "/api/v1/hosts/{mac}", Need::Read),
    ("PUT", "/api/v1/hosts/{mac}/name", Need::SiteChange),
    ("GET", "/api/v1/hosts/{mac}/inventory", Need::Read),
    ("GET", "/api/v1/hosts/{mac}/inventory/history", Need::Read),
    ("POST", "/api/v1/hosts/{mac}/replace", Need::SiteChange),
    ("POST", "/api/v1/hosts/{mac}/approve", Need::SiteChange),
    ("POST", "/api/v1/hosts/wake", Need::SiteChange),
    ("POST", "/api/v1/bulk", Need::SiteChange),
    ("GET", "/api/v1/images", Need::Read),
    (
        "POST",
        "/api/v1/images/{name}/{version}/approve",
        Need::Admin,
    ),
    ("GET", "/api/v1/images/{name}/post-deploy", Need::Read),
    ("PUT", "/api/v1/images/{name}/post-deploy", Need::Admin),
    ("GET", "/api/v1/tasks", Need::Read),
    ("POST", "/api/v1/tasks", Need::SiteChange),
    ("DELETE", "/api/v1/tasks/{id}", Need::SiteChange),
    ("GET", "/api/v1/groups", Need::Read),
    ("GET", "/api/v1/task-rules", Need::Read),
    ("POST", "/api/v1/task-rules", Need::SiteChange),
    ("DELETE", "/api/v1/task-rules/{id}", Need::SiteChange),
    ("POST", "/api/v1/task-rules/{id}/ack", Need::SiteChange),
    ("GET", "/api/v1/registration-rules", Need::Read),
    ("POST", "/api/v1/registration-rules", Need::SiteChange),
    (
        "DELETE",
        "/api/v1/registration-rules/{id}",
        Need::SiteChange,
    ),
    ("GET", "/api/v1/events", Need::Read),
    ("GET", "/api/v1/hooks/runs", Need::Read),
    ("GET", "/api/v1/sites", Need::Read),
    ("GET", "/api/v1/pushes", Need::Read),
    ("POST", "/api/v1/pushes", Need::Admin),
    ("POST", "/api/v1/pushes/{id}/{action}", Need::Admin),
    ("GET", "/api/v1/pushes/{id}/progress", Need::Read),
    ("GET", "/api/v1/multicast", Need::Read),
    ("GET", "/api/v1/dashboard", Need::Read),
    ("GET", "/api/v1/live", Need::Read),
    ("GET", "/api/v1/openapi.json", Need::Read),
];

/// `GET /api/v1/openapi.json`: an OpenAPI 3.0 document of the staff API, generated from
/// [`ROUTES`] (so it lists exactly the routes served and the role each needs: the extension
/// `x-bootcast-role`). Bodies and answers are described in the README's API table, not here.
pub async fn openapi() -> Response {
    Json(openapi_document()).into_response()
}

/// The document [`openapi`] serves.
pub fn openapi_document() -> serde_json::Value {
    let mut paths = serde_json::Map::new();
    for (method, route, need) in ROUTES {
        let role = match need {
            Need::Read => "viewer",
            Need::SiteChange => "operator",
            Need::Admin => "admin",
        };
        let params: Vec<serde_json::Value> = route
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| serde_json::json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        let mut responses = serde_json::json!({
            "200": { "description": "done (201 when something was created)" },
            "401": { "description": "no login, or an unknown token or session" },
            "403": { "description": "the role or the sites of the caller do not allow it" },
        });
        if *method != "GET" {
            responses["201"] = serde_json::json!({ "description": "created" });
        }
        let op = serde_json::json!({
            "summary": format!("{method} {route}"),
            "x-bootcast-role": role,
            "parameters": params,
            "security": [{ "bearer": [] }, { "session": [] }],
            "responses": responses,
        });
        let entry = paths
            .entry(route.to_string())
            .or_insert_with(|| serde_json::json!({}));
        entry[method.to_ascii_lowercase()] = op;
    }
    serde_json::json!({
        "openapi": "3.0.3",
        "info": {
            "title": "bootcast staff API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Routes, methods and the role each needs (x-bootcast-role: viewer < operator < admin; an operator only for their sites). Changes from a console session carry the x-csrf-token header.",
        },
        "components": { "securitySchemes": {
            "bearer": { "type": "http", "scheme": "bearer", "description": "the server's API token or a personal token (bct_...)" },
            "session": { "type": "apiKey", "in": "cookie", "name": SESSION_COOKIE },
        }},
        "paths": paths,
    })
}

/// What [`ROUTES`] says of a route (`None`: not a staff route: refused).
pub fn need_of(method: &Method, route: &str) -> Option<Need> {
    ROUTES
        .iter()
        .find(|(m, r, _)| *m == method.as_str() && *r == route)
        .map(|(_, _, n)| *n)
}

/// The middleware's state: the app and the server's API token.
#[derive(Clone)]
pub struct StaffAuth {
    pub app: AppState,
    pub server_token: Arc<String>,
}

/// Who the request's credential belongs to (`Ok(None)` for no credential at all), and the
/// refusal of a session's change without its CSRF token.
async fn principal(
    auth: &StaffAuth,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Option<(Principal, Option<ApiError>)>, ApiError> {
    if let Some(t) = bearer(headers) {
        if same_secret(t.as_bytes(), auth.server_token.as_bytes()) {
            return Ok(Some((Principal::server_token(), None)));
        }
        if t.starts_with(access::TOKEN_PREFIX) {
            let hash = access::secret_hash(t);
            let user = auth
                .app
                .db
                .read(move |c| staff::token_user(c, &hash))
                .await?;
            if let Some(u) = user {
                let who = Principal {
                    user: u.name,
                    role: u.role,
                    sites: u.sites,
                    via: Via::Token,
                };
                return Ok(Some((who, None)));
            }
        }
        return Err(ApiError::unauthorized(
            "unknown API token: use the server's (`bootcast token show`) or a personal one (`bootcast user token NAME`)",
        ));
    }
    if session_cookie(headers).is_some() {
        let Some((who, token)) = session_principal(&auth.app, headers).await? else {
            return Err(ApiError::unauthorized("your session is over: log in again"));
        };
        let mut csrf = None;
        if !matches!(*method, Method::GET | Method::HEAD) {
            let sent = headers
                .get(CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !same_secret(sent.as_bytes(), token.as_bytes()) {
                csrf = Some(ApiError::forbidden(format!(
                    "a change from a browser session must carry its {CSRF_HEADER} header (reload the page)"
                )));
            }
        }
        return Ok(Some((who, csrf)));
    }
    Ok(None)
}

/// The staff member of the request's session cookie, and the session's CSRF token (`None`: no
/// cookie, or a session that is over).
pub async fn session_principal(
    app: &AppState,
    headers: &HeaderMap,
) -> Result<Option<(Principal, String)>, ApiError> {
    let Some(cookie) = session_cookie(headers) else {
        return Ok(None);
    };
    let (hash, now) = (access::secret_hash(cookie), crate::time::now_unix());
    let s = app.db.read(move |c| staff::session(c, &hash, now)).await?;
    Ok(s.map(|s| {
        let who = Principal {
            user: s.user,
            role: s.role,
            sites: s.sites,
            via: Via::Session,
        };
        (who, s.csrf)
    }))
}

/// 403 when `site` (a list's `?site=` filter) is not one of the caller's.
pub fn site_in_scope(scope: &Scope, site: Option<&str>) -> Result<(), ApiError> {
    match site {
        Some(s) if !scope.allows(Some(s)) => Err(out_of_scope(format!("site {s}"))),
        _ => Ok(()),
    }
}

/// Middleware of every staff route: who calls (401 if nobody), whether their role may (403,
/// by [`ROUTES`]), then the handler with the [`Principal`] in its extensions; a change
/// (anything but GET) is written to the audit trail with its answer's status.
pub async fn authenticate(State(auth): State<StaffAuth>, req: Request, next: Next) -> Response {
    match authorise(&auth, req, next).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn authorise(auth: &StaffAuth, req: Request, next: Next) -> ApiResult {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_default();
    let (method, headers) = (req.method().clone(), req.headers().clone());
    let (who, csrf) = principal(auth, &method, &headers).await?.ok_or_else(|| {
        ApiError::unauthorized(
            "this endpoint needs a login: `Authorization: Bearer TOKEN` (`bootcast token show`, `bootcast user token NAME`) or a console session",
        )
    })?;
    let refusal = csrf.or(match need_of(req.method(), &route) {
        None => Some(ApiError::forbidden(format!(
            "{} {route} has no access rule: refused to everyone",
            req.method()
        ))),
        Some(need) if !who.may(need) => Some(ApiError::forbidden(format!(
            "{} is {} {}: {} {route} needs {}",
            who.user,
            match who.role {
                Role::Admin => "an",
                _ => "a",
            },
            who.role,
            req.method(),
            match need {
                Need::Admin => "the admin role",
                Need::SiteChange => "the operator or admin role",
                Need::Read => "a login",
            }
        ))),
        Some(_) => None,
    });
    let read = matches!(*req.method(), Method::GET | Method::HEAD);
    if read {
        if let Some(e) = refusal {
            return Err(e);
        }
        let mut req = req;
        req.extensions_mut().insert(who);
        return Ok(next.run(req).await);
    }
    // a change: keep its body for the trail
    let from = peer(&req);
    let action = format!("{} {}", req.method(), req.uri().path());
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, 4 << 20)
        .await
        .map_err(|e| ApiError::too_large(format!("request body: {e}")))?;
    let detail = audit_detail(&bytes);
    // a change refused is in the trail too, with its 403
    let resp = match refusal {
        Some(e) => e.into_response(),
        None => {
            let mut req = Request::from_parts(parts, axum::body::Body::from(bytes));
            req.extensions_mut().insert(who.clone());
            next.run(req).await
        }
    };
    record(
        &auth.app,
        staff::AuditEntry {
            id: 0,
            at: crate::time::now_unix(),
            user: who.user,
            from,
            action,
            detail,
            status: Some(resp.status().as_u16()),
        },
    )
    .await;
    Ok(resp)
}

/// Writes an audit entry; a failure is logged (the change itself is done).
pub async fn record(app: &AppState, e: staff::AuditEntry) {
    let what = e.action.clone();
    if let Err(err) = app.db.call(move |c| staff::audit(c, &e)).await {
        tracing::error!("cannot record {what} in the audit trail: {err}");
    }
}

fn peer(req: &Request) -> Option<String> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_canonical().to_string())
}

/// A body as the trail keeps it: JSON with every `password`/`token` field masked, else the
/// text; cut at [`AUDIT_DETAIL_MAX`] bytes.
pub fn audit_detail(body: &[u8]) -> Option<String> {
    if body.is_empty() {
        return None;
    }
    let text = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(mut v) => {
            mask_secrets(&mut v);
            v.to_string()
        }
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    };
    let mut end = text.len().min(AUDIT_DETAIL_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Some(text[..end].to_string())
}

fn mask_secrets(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m.iter_mut() {
                let k = k.to_ascii_lowercase();
                if k.contains("password") || k.contains("token") || k.contains("secret") {
                    *v = serde_json::Value::String("***".into());
                } else {
                    mask_secrets(v);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(mask_secrets),
        _ => {}
    }
}

/// 403 for what lies outside the caller's sites.
pub fn out_of_scope(what: String) -> ApiError {
    ApiError::forbidden(format!("{what}: not one of your sites"))
}

/// Are these hosts all of the caller's sites? Run inside the handler's transaction. Unknown
/// hosts pass (the handler answers 404).
pub fn in_scope(
    c: &Connection,
    scope: &Scope,
    macs: &[Mac],
) -> Result<Result<(), ApiError>, DbError> {
    if matches!(scope, Scope::All) {
        return Ok(Ok(()));
    }
    for mac in macs {
        if let Some(h) = hosts::get(c, *mac)? {
            if !scope.allows(h.site.as_deref()) {
                return Ok(Err(out_of_scope(format!(
                    "host {mac} is of {}",
                    h.site.as_deref().unwrap_or("no site")
                ))));
            }
        }
    }
    Ok(Ok(()))
}

/// Are the hosts a task or rule targets (one host, or a group's) of the caller's sites? A
/// group must have hosts, all of them in scope.
pub fn targets_in_scope(
    c: &Connection,
    scope: &Scope,
    host: Option<&str>,
    group: Option<&str>,
) -> Result<Result<(), ApiError>, DbError> {
    if matches!(scope, Scope::All) {
        return Ok(Ok(()));
    }
    let macs = match (host, group) {
        (Some(h), _) => match h.parse::<Mac>() {
            Ok(m) => vec![m],
            Err(_) => return Ok(Ok(())),
        },
        (None, Some(g)) => {
            let members = crate::db::groups::members(c, g)?;
            if members.is_empty() {
                return Ok(Err(out_of_scope(format!("group {g} has no host"))));
            }
            members
        }
        (None, None) => return Ok(Ok(())),
    };
    in_scope(c, scope, &macs)
}

/// Is the task rule `id`'s target of the caller's sites? (No such rule: the handler's 404.)
pub fn task_rule_in_scope(
    c: &Connection,
    scope: &Scope,
    id: i64,
) -> Result<Result<(), ApiError>, DbError> {
    match crate::db::task_rules::get(c, id)? {
        Some(r) => targets_in_scope(c, scope, r.host.as_deref(), r.group.as_deref()),
        None => Ok(Ok(())),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    pub user: String,
    pub password: String,
}

/// `POST /api/v1/login` `{"user", "password"}`: a local account, else the directory
/// (`[ldap]`). Sets the session cookie; answers `{"user", "role", "sites", "csrf"}`.
/// Every attempt is in the audit trail.
pub async fn login(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    transport: Option<Extension<super::listen::Transport>>,
    Json(body): Json<Login>,
) -> ApiResult {
    let now = crate::time::now_unix();
    let from = peer.ip().to_canonical().to_string();
    let name = body.user.trim().to_string();
    let outcome = match throttled(&st, &name, &from, now).await {
        Some(e) => Err(e),
        None => check_login(&st, &name, &body.password, now).await,
    };
    let (granted, how) = match outcome {
        Ok(g) => g,
        Err(e) => {
            record(
                &st,
                staff::AuditEntry {
                    id: 0,
                    at: now,
                    user: if access::valid_user_name(&name) {
                        name
                    } else {
                        "?".into()
                    },
                    from: Some(from),
                    action: "login refused".into(),
                    detail: Some(e.message().to_string()),
                    status: Some(e.status().as_u16()),
                },
            )
            .await;
            return Err(e);
        }
    };
    let secret = random_hex_for_request(32)?;
    let csrf = random_hex_for_request(16)?;
    let session = staff::Session {
        user: name.clone(),
        role: granted.0,
        sites: granted.1.clone(),
        csrf: csrf.clone(),
        expires: now + SESSION_SECS,
    };
    let (hash, f) = (access::secret_hash(&secret), from.clone());
    st.db
        .call(move |c| {
            staff::open_session(c, &hash, &session, now, Some(&f))?;
            staff::touch_login(c, &session.user, now)
        })
        .await?;
    record(
        &st,
        staff::AuditEntry {
            id: 0,
            at: now,
            user: name.clone(),
            from: Some(from),
            action: "login".into(),
            detail: Some(format!("{how}: {} {}", granted.0, granted.1.join(","))),
            status: Some(200),
        },
    )
    .await;
    let tls = transport.is_some_and(|t| t.0 == super::listen::Transport::Tls);
    let cookie = format!(
        "{SESSION_COOKIE}={secret}; Path=/; HttpOnly; SameSite=Strict; Max-Age={SESSION_SECS}{}",
        if tls { "; Secure" } else { "" }
    );
    let mut resp = Json(serde_json::json!({
        "user": name, "role": granted.0, "sites": granted.1, "csrf": csrf,
    }))
    .into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).map_err(|e| ApiError::internal(e.to_string()))?,
    );
    Ok(resp)
}

/// Failed logins (wrong password, unknown user) that make an account wait
/// [`LOGIN_PAUSE_SECS`]: against one account, and from one address (a student PC trying
/// names).
pub const LOGIN_FAILURES_PER_USER: u32 = 5;
pub const LOGIN_FAILURES_PER_ADDRESS: u32 = 20;
pub const LOGIN_PAUSE_SECS: i64 = 900;

/// A refusal (429) when `name` or `from` failed to log in too often lately (counted from the
/// trail, so a restart forgets nothing). The password is not even checked then.
async fn throttled(st: &AppState, name: &str, from: &str, now: i64) -> Option<ApiError> {
    let (user, addr) = (name.to_string(), from.to_string());
    let since = now - LOGIN_PAUSE_SECS;
    let (by_user, by_addr) = match st
        .db
        .read(move |c| staff::failed_logins(c, &user, &addr, since))
        .await
    {
        Ok(n) => n,
        Err(e) => return Some(e.into()),
    };
    let mins = LOGIN_PAUSE_SECS / 60;
    if by_user >= LOGIN_FAILURES_PER_USER {
        return Some(ApiError::too_many(format!(
            "{by_user} failed logins as {name:?} in the last {mins} minutes: wait, or have an admin set a new password (`bootcast user passwd {name}`)"
        )));
    }
    if by_addr >= LOGIN_FAILURES_PER_ADDRESS {
        return Some(ApiError::too_many(format!(
            "{by_addr} failed logins from {from} in the last {mins} minutes: wait before trying again"
        )));
    }
    None
}

/// The role and sites a login grants, and how it was checked (`local`, `ldap`).
async fn check_login(
    st: &AppState,
    name: &str,
    password: &str,
    now: i64,
) -> Result<((Role, Vec<String>), &'static str), ApiError> {
    let wrong = || ApiError::unauthorized("wrong user name or password");
    if !access::valid_user_name(name) || password.is_empty() {
        return Err(wrong());
    }
    let n = name.to_string();
    let (hash, user) = st
        .db
        .read(move |c| Ok((staff::password_hash(c, &n)?, staff::get(c, &n)?)))
        .await?;
    if let (Some(hash), Some(user)) = (hash, &user) {
        let p = password.to_string();
        let ok = tokio::task::spawn_blocking(move || access::check_password(&p, &hash))
            .await
            .unwrap_or(false);
        return match ok {
            true => Ok(((user.role, user.sites.clone()), "local")),
            false => Err(wrong()),
        };
    }
    if user.as_ref().is_some_and(|u| u.source == "local") {
        return Err(wrong());
    }
    let Some(ldap) = &st.ldap else {
        return Err(wrong());
    };
    use access::ldap::LdapError;
    match access::ldap::login(ldap, name, password).await {
        Ok(g) => {
            let (n, role, sites) = (name.to_string(), g.role, g.sites.clone());
            st.db
                .call(move |c| staff::upsert_directory(c, &n, role, &sites, now))
                .await?;
            Ok(((g.role, g.sites), "ldap"))
        }
        Err(LdapError::WrongPassword) => Err(wrong()),
        Err(e @ LdapError::NoGroup { .. }) => Err(ApiError::forbidden(e.to_string())),
        Err(e) => Err(ApiError::unavailable(e.to_string())),
    }
}

/// `POST /api/v1/logout`: ends this session.
pub async fn logout(State(st): State<AppState>, headers: HeaderMap) -> ApiResult {
    if let Some(cookie) = session_cookie(&headers) {
        let hash = access::secret_hash(cookie);
        st.db.call(move |c| staff::close_session(c, &hash)).await?;
    }
    let mut resp = Json(serde_json::json!({ "logged_out": true })).into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("bootcast_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    Ok(resp)
}

/// `GET /api/v1/me`: who the caller is.
pub async fn me(Extension(who): Extension<Principal>) -> ApiResult {
    Ok(Json(serde_json::json!(who)).into_response())
}

/// `GET /api/v1/users`.
pub async fn list_users(State(st): State<AppState>) -> ApiResult {
    let u = st.db.read(staff::list).await?;
    Ok(Json(serde_json::json!({ "users": u })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub name: String,
    pub role: Role,
    #[serde(default)]
    pub sites: Vec<String>,
    pub password: String,
}

/// Why an account cannot be made as asked.
pub fn check_new_user(name: &str, role: Role, sites: &[String]) -> Result<(), String> {
    if !access::valid_user_name(name) {
        return Err(format!(
            "invalid user name {name:?}: 1-64 of a-z A-Z 0-9 . _ @ -"
        ));
    }
    match (role, sites.is_empty()) {
        (Role::Operator, true) => Err("an operator needs at least one site (--site NAME)".into()),
        (Role::Admin | Role::Viewer, false) => Err(format!(
            "sites are for operators; an {role} sees every site"
        )),
        _ => Ok(()),
    }
}

/// `POST /api/v1/users` `{"name", "role", "sites", "password"}` → 201.
pub async fn create_user(State(st): State<AppState>, Json(u): Json<NewUser>) -> ApiResult {
    check_new_user(&u.name, u.role, &u.sites).map_err(ApiError::bad_request)?;
    let p = u.password.clone();
    let hash = tokio::task::spawn_blocking(move || access::hash_password(&p))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let now = crate::time::now_unix();
    let n = u.name.clone();
    let (added, user) = st
        .db
        .call(move |c| {
            let added = staff::add(c, &u.name, u.role, &u.sites, &hash, now)?;
            Ok((added, staff::get(c, &u.name)?))
        })
        .await?;
    if !added {
        return Err(ApiError::conflict(format!("a user {n} exists already")));
    }
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "user": user })),
    )
        .into_response())
}

/// `DELETE /api/v1/users/{name}`: the account, its tokens and sessions.
pub async fn remove_user(State(st): State<AppState>, Path(name): Path<String>) -> ApiResult {
    let n = name.clone();
    if !st.db.call(move |c| staff::remove(c, &n)).await? {
        return Err(ApiError::not_found(format!("no user {name}")));
    }
    Ok(Json(serde_json::json!({ "removed": name })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPassword {
    pub old_password: String,
    pub password: String,
}

/// `POST /api/v1/me/password` `{"old_password", "password"}`: a local account's own new password
/// (its other sessions end).
pub async fn change_password(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Json(b): Json<NewPassword>,
) -> ApiResult {
    let n = who.user.clone();
    let Some(hash) = st.db.read(move |c| staff::password_hash(c, &n)).await? else {
        return Err(ApiError::bad_request(format!(
            "{} has no password here (the server's token, or a directory account: change it in the directory)",
            who.user
        )));
    };
    let (old, new) = (b.old_password.clone(), b.password.clone());
    let new_hash = tokio::task::spawn_blocking(move || {
        if !access::check_password(&old, &hash) {
            return Err(ApiError::forbidden("the old password is wrong"));
        }
        access::hash_password(&new).map_err(|e| ApiError::bad_request(e.to_string()))
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    let n = who.user.clone();
    st.db
        .call(move |c| staff::set_password(c, &n, &new_hash))
        .await?;
    Ok(Json(serde_json::json!({ "user": who.user })).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    #[serde(default)]
    pub label: Option<String>,
}

/// A new personal token: `bct_` and 256 random bits; only its hash is kept.
pub fn new_token() -> std::io::Result<String> {
    Ok(format!(
        "{}{}",
        access::TOKEN_PREFIX,
        super::auth::random_hex(32)?
    ))
}

/// `POST /api/v1/me/tokens` `{"label"?}` → 201 `{"token"}`, shown once: a personal API token
/// with the caller's role and sites.
pub async fn create_token(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    body: Option<Json<NewToken>>,
) -> ApiResult {
    if who.via == Via::ServerToken {
        return Err(ApiError::bad_request(
            "the server's token is not an account: make a user (`bootcast user add`), then its token",
        ));
    }
    let label = body.and_then(|b| b.0.label);
    let token = new_token().map_err(|e| ApiError::internal(e.to_string()))?;
    let (hash, now, user) = (
        access::secret_hash(&token),
        crate::time::now_unix(),
        who.user.clone(),
    );
    let id = st
        .db
        .call(move |c| staff::add_token(c, &user, &hash, label.as_deref(), now))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "id": id, "user": who.user, "token": token })),
    )
        .into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub q: Option<String>,
    #[serde(default)]
    pub before: Option<i64>,
    #[serde(default)]
    pub limit: Option<u32>,
    /// `csv`: the whole selection as CSV (newest first).
    #[serde(default)]
    pub format: Option<String>,
}

/// `GET /api/v1/audit[?user=&q=&before=ID&limit=][&format=csv]`: the trail, newest first,
/// `{"entries", "total", "next"}`. Admins see everyone's; others their own.
pub async fn list_audit(
    State(st): State<AppState>,
    Extension(who): Extension<Principal>,
    Query(p): Query<AuditParams>,
) -> ApiResult {
    let csv = match p.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(f) => {
            return Err(ApiError::bad_request(format!(
                "format {f:?}: say json or csv"
            )))
        }
    };
    let user = match who.role {
        Role::Admin => p.user.clone(),
        _ => Some(who.user.clone()),
    };
    let limit = if csv {
        u32::MAX
    } else {
        p.limit.unwrap_or(100).clamp(1, 1000)
    };
    let q = staff::AuditQuery {
        user,
        q: p.q.clone(),
        before: p.before,
        since: None,
        limit,
    };
    let (entries, total) = st.db.read(move |c| staff::audit_page(c, &q)).await?;
    if csv {
        return Ok((
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"bootcast-audit.csv\"",
                ),
            ],
            audit_csv(&entries),
        )
            .into_response());
    }
    let next = (entries.len() as u32 == limit && (entries.len() as i64) < total)
        .then(|| entries.last().map(|e| e.id))
        .flatten();
    Ok(
        Json(serde_json::json!({ "entries": entries, "total": total, "next": next }))
            .into_response(),
    )
}

/// The trail as CSV (RFC 4180): `id,time,user,from,action,status,detail`, times in UTC.
pub fn audit_csv(entries: &[staff::AuditEntry]) -> String {
    fn field(s: &str) -> String {
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    }
    let mut out = String::from("id,time,user,from,action,status,detail\r\n");
    for e in entries {
        let row = [
            e.id.to_string(),
            crate::time::rfc3339(e.at),
            e.user.clone(),
            e.from.clone().unwrap_or_default(),
            e.action.clone(),
            e.status.map(|s| s.to_string()).unwrap_or_default(),
            e.detail.clone().unwrap_or_default(),
        ];
        out.push_str(&row.iter().map(|f| field(f)).collect::<Vec<_>>().join(","));
        out.push_str("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked_in_the_trail_and_csv_is_quoted() {
        let d = audit_detail(br#"{"name":"ana","password":"hunter22hunter","x":{"token":"t"}}"#)
            .unwrap();
        assert!(
            !d.contains("hunter") && d.contains("ana") && d.contains("***"),
            "{d}"
        );
        assert_eq!(audit_detail(b""), None);
        assert_eq!(audit_detail(&[b'a'; 5000]).unwrap().len(), AUDIT_DETAIL_MAX);
        let csv = audit_csv(&[staff::AuditEntry {
            id: 1,
            at: 0,
            user: "ana".into(),
            from: None,
            action: "POST /api/v1/tasks".into(),
            detail: Some("{\"a\":\"b,c\"}".into()),
            status: Some(201),
        }]);
        assert_eq!(
            csv,
            "id,time,user,from,action,status,detail\r\n1,1970-01-01T00:00:00Z,ana,,POST /api/v1/tasks,201,\"{\"\"a\"\":\"\"b,c\"\"}\"\r\n"
        );
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            "a=1; bootcast_session=abc; b=2".parse().unwrap(),
        );
        assert_eq!(session_cookie(&h), Some("abc"));
        assert_eq!(session_cookie(&HeaderMap::new()), None);
        assert_eq!(
            need_of(&Method::POST, "/api/v1/tasks"),
            Some(Need::SiteChange)
        );
        assert_eq!(need_of(&Method::POST, "/api/v1/nothing"), None);
        assert!(check_new_user("ana", Role::Operator, &[]).is_err());
        assert!(check_new_user("ana", Role::Viewer, &["x".into()]).is_err());
        assert!(check_new_user("ana", Role::Operator, &["x".into()]).is_ok());
    }
}

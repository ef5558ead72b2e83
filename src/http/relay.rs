//! The central side of site relays: `POST /api/v1/relay/heartbeat` (a relay reports and gets
//! its site's schedule and pushes), and recognising requests a relay passes on for its
//! site's machines (boot scripts then name the relay, not this server).

use std::net::{IpAddr, SocketAddr};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::Json;
use rusqlite::Connection;

use super::auth::bearer;
use super::error::{ApiError, ApiResult};
use super::AppState;
use crate::db::{pushes, sites, DbError};
use crate::proto::relay::{
    Heartbeat, HeartbeatReply, SiteSchedule, DHCP_SEEN_HEADER, FORWARDED_FOR_HEADER,
    OLDEST_PROTOCOL, PROTOCOL, RELAY_TOKEN_HEADER, RELAY_URL_HEADER,
};

/// Seconds between a relay's heartbeats.
pub const HEARTBEAT_INTERVAL: u64 = 5;

/// `POST /api/v1/relay/heartbeat` with `Authorization: Bearer <site relay token>`.
pub async fn heartbeat(
    State(st): State<AppState>,
    headers: HeaderMap,
    Json(hb): Json<Heartbeat>,
) -> ApiResult {
    let Some(token) = bearer(&headers).map(str::to_string) else {
        return Err(ApiError::unauthorized("a relay authenticates with its site's token: Authorization: Bearer TOKEN (`bootcast site add` printed it; `bootcast site token NAME --rotate` on the central server makes a new one)",
        ));
    };
    let (now, sampled_at) = (crate::time::now_unix(), st.clock.now());
    let site_name = hb.site.clone();
    let after_register = st.after_register.as_str();
    let (hb_protocol, held) = (hb.protocol, hb.book);
    let res = st
        .db
        .call(move |c| {
            let Some(site) = sites::by_token(c, &token)? else {
                return Ok(Err(ApiError::unauthorized("no site has this relay token; `bootcast site token NAME --rotate` on the central server makes a new one",
                )));
            };
            if site.name != hb.site {
                return Ok(Err(ApiError::forbidden(format!(
                    "this token is site {:?}'s, not {:?}: start the relay with --site {}",
                    site.name, hb.site, site.name
                ))));
            }
            if hb.protocol < OLDEST_PROTOCOL {
                return Ok(Err(ApiError::bad_request(format!(
                    "this relay speaks relay protocol {}, older than this server serves ({OLDEST_PROTOCOL} to {PROTOCOL}): upgrade the relay to bootcast {} (the central server's release)",
                    hb.protocol,
                    env!("CARGO_PKG_VERSION")
                ))));
            }
            if hb.protocol > PROTOCOL {
                return Ok(Err(ApiError::bad_request(format!(
                    "this relay speaks relay protocol {}, this server only {PROTOCOL}: upgrade the server above it (bootcast {} here)",
                    hb.protocol,
                    env!("CARGO_PKG_VERSION")
                ))));
            }
            // pushes this heartbeat makes done everywhere: among those it reports only
            let reported: Vec<i64> = hb.pushes.iter().map(|p| p.push).collect();
            let done_before = pushes::done_among(c, &reported)?;
            sites::record_heartbeat(c, &site.name, &hb, now)?;
            // the night's curve, on the schedulers' clock (that of push windows)
            pushes::sample_progress(c, &site.name, &hb.pushes, sampled_at)?;
            let woken: Vec<(i64, i64)> = hb.woken.iter().map(|w| (w.id, w.at)).collect();
            let woken = crate::db::wakes::mark_sent(c, &woken, &site.name, Some(&site.name))?;
            let newly_done: Vec<i64> = pushes::done_among(c, &reported)?
                .into_iter()
                .filter(|id| !done_before.contains(id))
                .collect();
            let site = sites::get(c, &site.name)?.expect("site exists");
            Ok(Ok((newly_done, woken, HeartbeatReply {
                protocol: PROTOCOL,
                schedule: SiteSchedule {
                    tz: site.tz.clone(),
                    windows: site.windows.clone(),
                    rate: site.rate,
                },
                pushes: pushes::orders_for(c, &site.name)?,
                assigned: site.images.clone(),
                interval: HEARTBEAT_INTERVAL,
                key: None,
                book: None,
            })))
        })
        .await?;
    let (newly_done, woken, mut reply) = res?;
    for w in woken {
        st.hooks.emit(
            crate::hooks::EventKind::Wake,
            Some(w.mac),
            serde_json::json!({ "by": site_name, "task": w.task, "wake": w.id, "sent_at": crate::time::rfc3339(w.at) }),
        );
    }
    // what the relay needs to work alone, when it changed since its copy (on a reader: the
    // writer is not held for it)
    if hb_protocol >= 2 {
        let name = site_name.clone();
        reply.book = st
            .db
            .read(move |c| sites::book(c, &name, held, after_register))
            .await?;
    }
    // central vouches for each order: this push, this site, these versions
    if let Some(k) = &st.signer {
        reply.key = Some(k.public().to_string());
        for o in &mut reply.pushes {
            o.signature = Some(k.sign(&o.statement(&site_name)));
        }
        for t in reply.book.iter_mut().flat_map(|b| b.tasks.iter_mut()) {
            t.signature = Some(k.sign(&t.statement()));
        }
    }
    for id in newly_done {
        st.hooks.emit(
            crate::hooks::EventKind::PushDone,
            None,
            serde_json::json!({ "push": id }),
        );
    }
    Ok(Json(reply).into_response())
}

/// A counter of changes to the push orders (a push made, paused, resumed, cancelled), which
/// relays wait on (`GET /api/v1/relay/wait`) so that a new push starts at once rather than at
/// their next heartbeat. The server bumps it when it sees the orders change
/// ([`orders_fingerprint`], polled: `bootcast push create` writes the database from another
/// process).
#[derive(Clone)]
pub struct OrdersWatch(std::sync::Arc<tokio::sync::watch::Sender<u64>>);

impl Default for OrdersWatch {
    fn default() -> OrdersWatch {
        OrdersWatch(std::sync::Arc::new(tokio::sync::watch::Sender::new(0)))
    }
}

impl OrdersWatch {
    pub fn bump(&self) {
        self.0.send_modify(|n| *n += 1);
    }

    pub fn current(&self) -> u64 {
        *self.0.borrow()
    }

    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.subscribe()
    }
}

/// What changes when any push order changes: the newest push, and the open ones with their
/// states (one query over the pushes table).
pub fn orders_fingerprint(c: &rusqlite::Connection) -> Result<(i64, i64, i64), rusqlite::Error> {
    c.query_row(
        "SELECT COALESCE(MAX(id), 0),
                COALESCE(SUM(CASE WHEN state IN ('active', 'paused') THEN id ELSE 0 END), 0),
                COALESCE(SUM(CASE WHEN state = 'paused' THEN id ELSE 0 END), 0)
         FROM pushes",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
}

/// Longest a `GET /api/v1/relay/wait` is held before it answers unchanged.
const WAIT_HOLD: std::time::Duration = std::time::Duration::from_secs(25);

#[derive(serde::Deserialize)]
pub struct WaitQuery {
    #[serde(default)]
    seen: Option<u64>,
}

/// `GET /api/v1/relay/wait?seen=N` with `Authorization: Bearer <site relay token>`: answers
/// `{"orders": M}` as soon as the orders' change counter is not `N` (at once if it already
/// differs), else after 25 s with `N`. A relay heartbeats when M differs from what it saw.
pub async fn wait(
    State(st): State<AppState>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<WaitQuery>,
) -> ApiResult {
    let Some(token) = bearer(&headers).map(str::to_string) else {
        return Err(ApiError::unauthorized(
            "a relay authenticates with its site's token: Authorization: Bearer TOKEN",
        ));
    };
    if st
        .db
        .call(move |c| sites::by_token(c, &token))
        .await?
        .is_none()
    {
        return Err(ApiError::unauthorized(
            "no site has this relay token; `bootcast site token NAME --rotate` on the central server makes a new one",
        ));
    }
    let mut rx = st.orders.subscribe();
    let seen = q.seen.unwrap_or(u64::MAX);
    if *rx.borrow_and_update() == seen {
        let _ = tokio::time::timeout(WAIT_HOLD, rx.changed()).await;
    }
    let now = *rx.borrow();
    Ok(Json(serde_json::json!({ "orders": now })).into_response())
}

/// `GET /api/v1/relay/check` with `Authorization: Bearer <token>`: `{"site": NAME}` when a
/// site has this relay token, `{"staff": true}` for the API token, 401 otherwise. A relay asks
/// it (through the relays above it) before it trusts a lower relay's token header or a staff
/// member's `image export --from` it.
pub async fn check_token(
    State((st, api_token)): State<(AppState, std::sync::Arc<String>)>,
    headers: HeaderMap,
) -> ApiResult {
    let Some(token) = bearer(&headers).map(str::to_string) else {
        return Err(ApiError::unauthorized(
            "give the relay token to check: Authorization: Bearer TOKEN",
        ));
    };
    if super::auth::same_secret(token.as_bytes(), api_token.as_bytes()) {
        return Ok(Json(serde_json::json!({ "staff": true })).into_response());
    }
    match st.db.call(move |c| sites::by_token(c, &token)).await? {
        Some(site) => Ok(Json(serde_json::json!({ "site": site.name })).into_response()),
        None => Err(ApiError::unauthorized("no site has this relay token")),
    }
}

/// `POST /api/v1/relay/offline-hello` (a relay's token headers, a report id): an agent's hello
/// the relay answered alone while this server could not be reached (see
/// `relay::alone`), passed on before that boot's reports. Recorded as the hello would have
/// been: the host registered and bound to the relay's site, the task it was given booting,
/// one `boot` event.
pub async fn offline_hello(
    State(st): State<AppState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(h): Json<crate::proto::relay::OfflineHello>,
) -> ApiResult {
    use crate::db::{hosts, tasks, TaskState};
    let mac = super::error::parse_mac(&h.mac)?;
    super::error::check_arch(&h.arch)?;
    let now = crate::time::now_unix();
    let at = h.at.min(now);
    let hello = h.clone();
    let res = st
        .db
        .call(move |c| {
            let origin = Origin::of(c, &headers, peer)?;
            let Some(site) = origin.site else {
                return Ok(Err(ApiError::unauthorized(
                    "only a site relay passes on the hellos it answered alone (its relay token headers)",
                )));
            };
            if let Some(other) = hosts::get(c, mac)?.and_then(|h| h.site).filter(|s| *s != site.name) {
                return Ok(Err(ApiError::forbidden(format!(
                    "host {mac} belongs to site {other}, not to {}: its relay did not start this boot",
                    site.name
                ))));
            }
            let ip = origin.ip.to_string();
            hosts::record_hello(
                c,
                mac,
                &hosts::BootFacts {
                    firmware: Some(hello.firmware),
                    arch: Some(&hello.arch),
                    ip: Some(&ip),
                    agent_boot_time: i64::try_from(hello.boot_time).ok(),
                },
                at,
            )?;
            sites::bind_host(c, mac, &site.name)?;
            let task = match hello.task {
                Some(id) => tasks::get(c, id)?.filter(|t| t.mac == mac && t.state.is_open()),
                None => None,
            };
            if let Some(t) = task.as_ref().filter(|t| t.state == TaskState::Pending) {
                tasks::set_state(c, mac, t.id, TaskState::Booting, None, now)?;
            }
            Ok(Ok((task.map(|t| t.id), origin.ip, site.name)))
        })
        .await?;
    let (task, ip, site) = res?;
    if let (Some(id), None) = (h.task, task) {
        tracing::warn!(%mac, task = id, "an offline hello names a task no longer open for this host");
    }
    st.hooks.emit(
        crate::hooks::EventKind::Boot,
        Some(mac.to_string()),
        serde_json::json!({
            "ip": ip.to_string(),
            "arch": h.arch,
            "firmware": h.firmware.as_str(),
            "registered": true,
            "task": task,
            "offline": site,
        }),
    );
    tracing::info!(%mac, %site, task = ?task, "agent hello answered by the site relay alone, now recorded");
    Ok(Json(serde_json::json!({ "task": task })).into_response())
}

/// A request a site relay passes on for one of its machines, as the relay's headers say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relayed {
    pub token: String,
    /// The relay's base URL for its clients.
    pub url: String,
    /// The machine's address (else the relay's).
    pub client: Option<IpAddr>,
    /// The address the relay's DHCP service saw the machine at.
    pub dhcp_seen: Option<IpAddr>,
    /// The switch port (option 82 circuit id) it saw the machine behind.
    pub dhcp_circuit: Option<String>,
}

impl Relayed {
    /// The relay headers of a request; `None` when it came directly (or the headers are
    /// malformed: then the request is treated as direct).
    pub fn from_headers(headers: &HeaderMap) -> Option<Relayed> {
        let get = |h: &str| headers.get(h).and_then(|v| v.to_str().ok()).map(str::trim);
        let token = get(RELAY_TOKEN_HEADER)?;
        let url = get(RELAY_URL_HEADER)?;
        let hostport = url.strip_prefix("http://")?.trim_end_matches('/');
        if hostport.is_empty()
            || !hostport
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        {
            return None;
        }
        Some(Relayed {
            token: token.to_string(),
            url: format!("http://{hostport}"),
            client: get(FORWARDED_FOR_HEADER)
                .and_then(|v| v.split(',').next())
                .and_then(|v| v.trim().parse().ok()),
            dhcp_seen: get(DHCP_SEEN_HEADER).and_then(|v| v.parse().ok()),
            dhcp_circuit: get(crate::proto::relay::DHCP_CIRCUIT_HEADER)
                .filter(|v| !v.is_empty() && v.len() <= 128)
                .map(str::to_string),
        })
    }

    /// The site this relay serves, if its token is right.
    pub fn site(&self, c: &Connection) -> Result<Option<sites::Site>, DbError> {
        sites::by_token(c, &self.token)
    }
}

/// Where a request comes from, once its relay headers are checked.
pub struct Origin {
    /// The machine's address: a token-verified relay's `x-forwarded-for`, else the peer's.
    pub ip: IpAddr,
    /// The relay's site, when the headers carry a valid relay token.
    pub site: Option<sites::Site>,
    /// The verified relay's headers.
    pub relayed: Option<Relayed>,
}

impl Origin {
    /// Checks `headers`' relay token: a request with relay headers whose token no site has is
    /// treated as coming from its peer, whatever address it claims.
    pub fn of(c: &Connection, headers: &HeaderMap, peer: SocketAddr) -> Result<Origin, DbError> {
        if let Some(r) = Relayed::from_headers(headers) {
            if let Some(site) = r.site(c)? {
                return Ok(Origin {
                    ip: r.client.unwrap_or(peer.ip()),
                    site: Some(site),
                    relayed: Some(r),
                });
            }
            tracing::warn!(peer = %peer.ip(), "a request carried relay headers with a token no site has; treated as coming from its peer");
        }
        Ok(Origin {
            ip: peer.ip(),
            site: None,
            relayed: None,
        })
    }
}

/// `GET /api/v1/sites` (staff): every site (an operator's: theirs) with its schedule and relay
/// state.
pub async fn list_sites(
    State(st): State<AppState>,
    axum::Extension(who): axum::Extension<crate::access::Principal>,
) -> ApiResult {
    let mut list = st.db.read(sites::list).await?;
    let scope = who.scope();
    list.retain(|s| scope.allows(Some(&s.name)));
    Ok(Json(serde_json::json!({ "sites": list })).into_response())
}

/// `GET /api/v1/pushes` (staff): open pushes with each site's status (as `push status`).
pub async fn push_status(State(st): State<AppState>) -> ApiResult {
    let now = crate::time::now_unix();
    let res = st
        .db
        .read(move |c| {
            let mut out = Vec::new();
            for p in pushes::list(c, false)? {
                let mut rows = Vec::new();
                for ps in &p.sites {
                    if let Some(site) = sites::get(c, &ps.site)? {
                        rows.push(crate::push::status::site_status(&p, ps, &site, now));
                    }
                }
                out.push(serde_json::json!({ "push": p.id, "state": p.state, "versions": p.versions, "sites": rows }));
            }
            Ok(super::JsonBytes::field("pushes", &out))
        })
        .await;
    match res {
        Ok(body) => Ok(body.into_response()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(Relayed::from_headers(&h), None);
        h.insert(RELAY_TOKEN_HEADER, "tok".parse().unwrap());
        h.insert(RELAY_URL_HEADER, "http://10.99.1.2:8080/".parse().unwrap());
        h.insert(
            FORWARDED_FOR_HEADER,
            "10.99.1.50, 10.99.0.2".parse().unwrap(),
        );
        let r = Relayed::from_headers(&h).unwrap();
        assert_eq!(r.url, "http://10.99.1.2:8080");
        assert_eq!(r.client, Some("10.99.1.50".parse().unwrap()));
        // a URL that could inject script text is not taken
        h.insert(RELAY_URL_HEADER, "http://x y/".parse().unwrap());
        assert_eq!(Relayed::from_headers(&h), None);
        h.insert(RELAY_URL_HEADER, "ftp://10.0.0.1".parse().unwrap());
        assert_eq!(Relayed::from_headers(&h), None);
    }
}

//! The HTTP service (axum): boot scripts and boot environment for PCs, the agent's endpoints,
//! and the staff API.
//!
//! | route | who | auth |
//! |---|---|---|
//! | `GET /healthz` | monitoring | none |
//! | `GET /boot.ipxe` | iPXE, right after DHCP | none |
//! | `GET /boot/{mac}.ipxe` | iPXE: this host's script | none |
//! | `GET /bootenv/{vmlinuz,initrd.img}` | iPXE: the boot environment | none |
//! | `GET /ipxe/{name}` | UEFI HTTP boot: the iPXE binaries | none |
//! | `POST /api/v1/agent/hello` | the agent | the boot credential, from the address it was given to (see `db::bootcred`); answers the boot's session |
//! | `POST /api/v1/agent/{progress,done,failed,inventory}` | the agent: its task | the boot's session, from the same address; only the caller's own open task |
//! | `POST /api/v1/agent/capture/{missing,chunks,commit}` | the agent: a capture (see [`capture`]) | the boot's session in headers; only the caller's own open capture task |
//! | `GET /api/v1/hosts`, `GET /api/v1/hosts/{mac}` | staff | `Authorization: Bearer TOKEN` |
//! | `GET /api/v1/images`, `POST /api/v1/images/{name}/{version}/approve` | staff | token |
//! | `GET /api/v1/images/{name}/{version}/manifest` | agents, relays, `image export --from` | a relay token, a boot session or the API token (see [`chunks`]) |
//! | `GET /chunks/{id}`, `POST /chunks/batch` | agents, relays, `image export --from` | the same |
//! | `GET /metrics` | monitoring (Prometheus) | none |
//! | `POST /api/v1/relay/heartbeat` | site relays (see [`relay`]) | the site's relay token |
//! | `GET /api/v1/relay/check` | a relay checking a lower relay's token | that token |
//! | `GET /api/v1/relay/wait?seen=N` | site relays: held until the push orders change (25 s at most) | the site's relay token |
//! | `GET /api/v1/sites`, `GET /api/v1/pushes` | staff: sites, pushes with per-site status | token |
//! | `GET /api/v1/tasks`, `POST /api/v1/tasks`, `DELETE /api/v1/tasks/{id}`, `GET /api/v1/groups` | staff | token |
//! | `POST /api/v1/hosts/wake`, `GET`/`POST /api/v1/task-rules`, `DELETE /api/v1/task-rules/{id}`, `POST /api/v1/task-rules/{id}/ack` | staff | token |
//! | `GET`/`POST /api/v1/registration-rules`, `DELETE /api/v1/registration-rules/{id}`, `POST /api/v1/hosts/{mac}/replace`, `POST /api/v1/hosts/{mac}/approve` | staff | token |
//!
//! Both listeners ([`listen`]: plain HTTP and HTTPS) serve this router; on plain HTTP a request
//! that carries a token (staff, relay) is refused unless it comes from loopback
//! ([`listen::require_tls`], applied by the server around every route).

pub mod api;
pub mod auth;
pub mod boot;
pub mod capture;
pub mod chunks;
pub mod console;
pub mod error;
pub mod frames;
pub mod inventory;
pub mod listen;
pub mod relay;
pub mod staff;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use axum::routing::{get, post, put};
use axum::Router;

use crate::config::AfterRegister;
use crate::db::Db;

/// Everything the handlers share, behind one reference count: axum clones the state for every
/// request at every layer, so a clone is one atomic increment (`Deref` gives the fields).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl From<Shared> for AppState {
    fn from(shared: Shared) -> AppState {
        AppState(Arc::new(shared))
    }
}

/// What [`AppState`] holds.
pub struct Shared {
    pub db: Db,
    /// The data directory (boot environment under `bootenv/`).
    pub data: PathBuf,
    /// Address PCs use to reach this server; else the request's `Host` header is used.
    pub advertise: Option<Ipv4Addr>,
    /// Port the HTTP service listens on (for URLs built from `advertise`).
    pub http_port: u16,
    pub after_register: AfterRegister,
    /// The chunk store as served, and the counters of `/metrics`.
    pub chunks: Arc<chunks::ChunkService>,
    /// Room multicast sessions this node runs.
    pub multicast: Arc<crate::multicast::sessions::Sessions>,
    /// Events and the hooks they run.
    pub hooks: crate::hooks::Hooks,
    /// `[glpi] url`: inventories are queued for it.
    pub glpi_url: Option<String>,
    /// `[boot]`: who gets a boot credential, for how long.
    pub boot: crate::config::BootConfig,
    /// `[capture] max_bytes`: most new chunk bytes one capture task may store.
    pub capture_max_bytes: u64,
    /// The HTTP listeners' connection counters (`/metrics`).
    pub connections: crate::metrics::ConnectionMetrics,
    /// The central server's signing key ([`crate::sign`]); `None` on a relay, which passes
    /// the central server's signatures on.
    pub signer: Option<Arc<crate::sign::SigningKey>>,
    /// Bumped when push orders change: relays waiting on `GET /api/v1/relay/wait` heartbeat.
    pub orders: relay::OrdersWatch,
    /// The schedulers' clock (task rules): the system's, or a test's.
    pub clock: Arc<dyn crate::push::clock::Clock>,
    /// `[ldap]`: staff logins against the directory (`None`: local accounts only).
    pub ldap: Option<Arc<crate::access::ldap::LdapConfig>>,
}

impl AppState {
    /// The server's base URL as this client should use it.
    pub fn base_url(&self, host_header: Option<&str>) -> String {
        base_url(self.advertise, self.http_port, host_header)
    }
}

/// The base URL PCs use: the advertised address, else the `Host` a request came with, else
/// loopback.
pub fn base_url(advertise: Option<Ipv4Addr>, port: u16, host_header: Option<&str>) -> String {
    match (advertise, host_header) {
        (Some(ip), _) => format!("http://{}", SocketAddr::from((ip, port))),
        (None, Some(h)) if valid_host(h) => format!("http://{h}"),
        (None, _) => format!("http://127.0.0.1:{port}"),
    }
}

/// A `Host` header we are willing to echo into a boot script.
fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
}

/// A JSON answer serialised where it was built: on the blocking pool, inside the database
/// read that made it. A listing of 40,000 hosts is about 10 MB of JSON; serialised on a
/// runtime worker it would hold that worker, and every request queued behind it, for a few
/// hundred milliseconds.
pub struct JsonBytes(Vec<u8>);

impl JsonBytes {
    pub fn of<T: serde::Serialize>(value: &T) -> JsonBytes {
        JsonBytes(serde_json::to_vec(value).expect("an answer serialises"))
    }

    /// `{"name": value}`, serialised straight from `value` (no `serde_json::Value` tree,
    /// which costs several times the JSON's size in memory).
    pub fn field<T: serde::Serialize>(name: &str, value: &T) -> JsonBytes {
        JsonBytes::of(&std::collections::BTreeMap::from([(name, value)]))
    }
}

impl axum::response::IntoResponse for JsonBytes {
    fn into_response(self) -> axum::response::Response {
        (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            self.0,
        )
            .into_response()
    }
}

/// The router with all routes; `token` guards the staff API. Each router has its own
/// metrics registry (`/metrics`): the chunk service's counters and the request latency
/// histogram every route records.
pub fn router(state: AppState, token: String) -> Router {
    let token = Arc::new(token);
    let mut registry = crate::metrics::Registry::default();
    state.chunks.metrics.register(&mut registry);
    state.db.stats.register(&mut registry);
    state.connections.register(&mut registry);
    let http_metrics = crate::metrics::HttpMetrics::register(&mut registry);
    let fleet = crate::metrics::FleetMetrics::register(&mut registry);
    let metrics = Router::new()
        .route("/metrics", get(chunks::metrics))
        .with_state((state.clone(), Arc::new(registry), fleet));
    let staff = Router::new()
        .route("/api/v1/hosts", get(api::list_hosts))
        .route("/api/v1/hosts/{mac}", get(api::get_host))
        .route("/api/v1/hosts/{mac}/name", put(api::set_host_name))
        .route(
            "/api/v1/images/{name}/post-deploy",
            get(api::get_post_deploy).put(api::set_post_deploy),
        )
        .route("/api/v1/images", get(chunks::list_images))
        .route(
            "/api/v1/images/{name}/{version}/approve",
            post(chunks::approve),
        )
        .route(
            "/api/v1/tasks",
            get(api::list_tasks).post(api::create_tasks),
        )
        .route(
            "/api/v1/tasks/{id}",
            axum::routing::delete(api::cancel_task),
        )
        .route("/api/v1/groups", get(api::list_groups))
        .route("/api/v1/hosts/wake", post(api::wake_hosts))
        .route("/api/v1/bulk", post(api::bulk))
        .route(
            "/api/v1/task-rules",
            get(api::list_task_rules).post(api::create_task_rule),
        )
        .route(
            "/api/v1/task-rules/{id}",
            axum::routing::delete(api::remove_task_rule),
        )
        .route("/api/v1/task-rules/{id}/ack", post(api::ack_task_rule))
        .route(
            "/api/v1/registration-rules",
            get(api::list_registration_rules).post(api::create_registration_rule),
        )
        .route(
            "/api/v1/registration-rules/{id}",
            axum::routing::delete(api::remove_registration_rule),
        )
        .route("/api/v1/hosts/{mac}/replace", post(api::replace_host))
        .route("/api/v1/hosts/{mac}/approve", post(api::approve_host))
        .route(
            "/api/v1/hosts/{mac}/inventory",
            get(inventory::host_inventory),
        )
        .route(
            "/api/v1/hosts/{mac}/inventory/history",
            get(inventory::host_inventory_history),
        )
        .route("/api/v1/events", get(inventory::list_events))
        .route("/api/v1/hooks/runs", get(inventory::hook_runs))
        .route("/api/v1/sites", get(relay::list_sites))
        .route(
            "/api/v1/pushes",
            get(relay::push_status).post(console::create_push),
        )
        .route("/api/v1/pushes/{id}/progress", get(console::push_progress))
        .route("/api/v1/pushes/{id}/{action}", post(console::change_push))
        .route("/api/v1/multicast", get(console::multicast_sessions))
        .route("/api/v1/me", get(staff::me))
        .route("/api/v1/logout", post(staff::logout))
        .route("/api/v1/me/password", post(staff::change_password))
        .route("/api/v1/me/tokens", post(staff::create_token))
        .route(
            "/api/v1/users",
            get(staff::list_users).post(staff::create_user),
        )
        .route(
            "/api/v1/users/{name}",
            axum::routing::delete(staff::remove_user),
        )
        .route("/api/v1/audit", get(staff::list_audit))
        .route("/api/v1/dashboard", get(console::dashboard))
        .route("/api/v1/live", get(console::live))
        .route("/api/v1/openapi.json", get(staff::openapi))
        .route_layer(axum::middleware::from_fn_with_state(
            staff::StaffAuth {
                app: state.clone(),
                server_token: token.clone(),
            },
            staff::authenticate,
        ));
    let check = Router::new()
        .route("/api/v1/relay/check", get(relay::check_token))
        .with_state((state.clone(), token.clone()));
    // what an agent reports, applied once per report id (a relay's queued reports)
    let reports = Router::new()
        .route("/api/v1/agent/progress", post(api::agent_progress))
        .route("/api/v1/agent/done", post(api::agent_done))
        .route("/api/v1/relay/offline-hello", post(relay::offline_hello))
        .route("/api/v1/agent/failed", post(api::agent_failed))
        .route(
            "/api/v1/agent/inventory",
            post(inventory::agent_inventory).layer(axum::extract::DefaultBodyLimit::max(
                inventory::MAX_INVENTORY,
            )),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            api::once_per_report,
        ));
    let images = Router::new()
        .route(
            "/api/v1/images/{name}/{version}/manifest",
            get(chunks::manifest),
        )
        .route("/chunks/batch", post(chunks::batch))
        .route("/chunks/{id}", get(chunks::chunk))
        .route_layer(axum::middleware::from_fn_with_state(
            (state.clone(), token),
            chunks::require_reader,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/boot.ipxe", get(boot::chain))
        .route("/boot/{file}", get(boot::host_script))
        .route("/bootenv/{file}", get(boot::bootenv_file))
        .route("/ipxe/{file}", get(boot::ipxe_binary))
        .route("/grub/{file}", get(boot::grub_file))
        .route("/api/v1/agent/hello", post(api::agent_hello))
        .route(staff::LOGIN_PATH, post(staff::login))
        .route("/ui", get(console::page))
        .route("/ui/", get(console::page))
        .route("/ui/assets/{file}", get(console::asset))
        .route("/ui/{*rest}", get(console::page))
        .route("/api/v1/relay/heartbeat", post(relay::heartbeat))
        .route("/api/v1/relay/wait", get(relay::wait))
        .merge(reports)
        .route("/api/v1/agent/capture/missing", post(capture::missing))
        .route("/api/v1/agent/capture/chunks", post(capture::chunks))
        .route("/api/v1/agent/capture/commit", post(capture::commit))
        .merge(staff)
        .merge(images)
        .merge(boot::signed_routes(&state.boot.uefi))
        .with_state(state)
        .merge(check)
        .merge(metrics)
        .layer(axum::middleware::from_fn_with_state(
            http_metrics,
            crate::metrics::track,
        ))
}

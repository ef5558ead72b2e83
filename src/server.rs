//! `bootcast serve` and `bootcast relay`: every service in one tokio runtime.
//!
//! [`Server::bind`] opens the database, the API token and every socket, so that all start-up
//! errors (a port in use, a missing permission) surface before anything runs; [`Server::run`]
//! then runs the services in a `JoinSet` until the cancellation token fires (SIGINT/SIGTERM
//! in the CLI) or one service fails, and shuts the others down gracefully.
//!
//! With [`Config::relay`] set the server is a site relay ([`crate::relay`]): the same DHCP and
//! TFTP services, the relay's HTTP routes instead of the server's (no staff API, no API
//! token), and two more services: the heartbeat loop and the prestage worker.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::boot::dhcp::{DhcpMode, DhcpSettings};
use crate::config::{Config, DhcpConfig};
use crate::db::Db;
use crate::http::{self, AppState};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot bind {service} to {addr}: {cause}{hint}")]
    Bind {
        service: &'static str,
        addr: SocketAddr,
        cause: std::io::Error,
        hint: &'static str,
    },
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    #[error(transparent)]
    Token(#[from] http::auth::TokenError),
    #[error("cannot create the data directory {path}: {cause}")]
    DataDir {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{cause}{hint}")]
    Dhcp {
        cause: crate::boot::dhcp::DhcpError,
        hint: &'static str,
    },
    #[error("{service} failed: {cause}")]
    Service {
        service: &'static str,
        cause: String,
    },
    #[error(transparent)]
    Relay(#[from] crate::relay::RelayError),
    #[error("the relay's URL: HTTP listens on {0}, which is no address clients can use; give --url http://IP:PORT (how the site's machines reach this relay) or --advertise IP")]
    RelayUrl(SocketAddr),
    #[error("HTTPS: {0}")]
    Tls(crate::tls::TlsError),
    #[error("the signing key: {0}")]
    Sign(#[from] crate::sign::SignError),
}

/// What a running server listens on, for the banner and for tests.
#[derive(Debug, Clone)]
pub struct Listening {
    pub http: SocketAddr,
    /// The HTTPS listener and its certificate (`None`: HTTPS off).
    pub https: Option<HttpsInfo>,
    pub tftp: Option<SocketAddr>,
    pub dhcp: Option<String>,
    /// The API token, when it was created by this start (print it once).
    pub new_token: Option<String>,
    pub base_url: String,
    /// Why PCs cannot boot the boot environment now (`None`: it is ready).
    pub bootenv: Option<String>,
    /// True when boot scripts use the address each request came to (no `advertise`).
    pub base_from_request: bool,
    /// A relay: the URL its clients reach it at.
    pub relay_url: Option<String>,
    /// The central server's signing key (`None` on a relay), and whether this start made it.
    pub signing_key: Option<(crate::sign::PublicKey, bool)>,
}

/// The HTTPS listener as the banner shows it.
#[derive(Debug, Clone)]
pub struct HttpsInfo {
    pub addr: SocketAddr,
    /// `https://HOST:PORT` when the host clients use is known (advertised, the relay's URL,
    /// a specific listen address).
    pub url: Option<String>,
    /// `sha256:HEX` of the certificate: what relays pin (`--upstream-fingerprint`).
    pub fingerprint: String,
    pub cert: PathBuf,
    /// Made by bootcast (self-signed) rather than configured (`[tls] cert`).
    pub self_signed: bool,
    /// Made at this start.
    pub created: bool,
}

pub struct Server {
    config: Config,
    data: PathBuf,
    db: Db,
    token: String,
    http: tokio::net::TcpListener,
    https: Option<(tokio::net::TcpListener, Arc<rustls::ServerConfig>)>,
    tftp: Option<tokio::net::UdpSocket>,
    /// One per DHCP segment (interface).
    dhcp: Vec<(DhcpSettings, Vec<(u16, tokio::net::UdpSocket)>)>,
    listening: Listening,
    relay: Option<Arc<crate::relay::Relay>>,
    signer: Option<Arc<crate::sign::SigningKey>>,
}

fn bind_hint(e: &std::io::Error, port: u16) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied if port < 1024 => {
            " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
        }
        std::io::ErrorKind::AddrInUse => {
            " (another program listens there: stop it or choose another address with the flag)"
        }
        std::io::ErrorKind::AddrNotAvailable => " (no local interface has that address)",
        _ => "",
    }
}

/// The HTTP listeners and the TFTP socket a server runs on. [`Sockets::bind`] binds them as the
/// configuration says; a caller that binds its own (a test on `127.0.0.1:0`, a socket handed
/// over by a service manager) builds this directly.
pub struct Sockets {
    pub http: tokio::net::TcpListener,
    /// `None`: no HTTPS service.
    pub https: Option<tokio::net::TcpListener>,
    /// `None`: no TFTP service.
    pub tftp: Option<tokio::net::UdpSocket>,
}

impl Sockets {
    /// Binds `config.http` and, when TFTP is on, `config.tftp.listen`; errors name the
    /// address and the likely fix.
    pub async fn bind(config: &Config) -> Result<Sockets, ServeError> {
        let http = tokio::net::TcpListener::bind(config.http)
            .await
            .map_err(|cause| ServeError::Bind {
                service: "HTTP",
                addr: config.http,
                hint: bind_hint(&cause, config.http.port()),
                cause,
            })?;
        let https = match config.https {
            None => None,
            Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|cause| {
                ServeError::Bind {
                    service: "HTTPS",
                    addr,
                    hint: bind_hint(&cause, addr.port()),
                    cause,
                }
            })?),
        };
        let tftp = match config.tftp.enabled {
            false => None,
            true => Some(
                tokio::net::UdpSocket::bind(config.tftp.listen)
                    .await
                    .map_err(|cause| ServeError::Bind {
                        service: "TFTP",
                        addr: config.tftp.listen,
                        hint: bind_hint(&cause, config.tftp.listen.port()),
                        cause,
                    })?,
            ),
        };
        Ok(Sockets { http, https, tftp })
    }

    /// Sockets the caller bound itself, as std sockets (made non-blocking here), without
    /// HTTPS ([`Sockets::with_https`] adds it). Call it inside the runtime the server will
    /// run on.
    pub fn from_std(
        http: std::net::TcpListener,
        tftp: Option<std::net::UdpSocket>,
    ) -> std::io::Result<Sockets> {
        http.set_nonblocking(true)?;
        let tftp = match tftp {
            Some(t) => {
                t.set_nonblocking(true)?;
                Some(tokio::net::UdpSocket::from_std(t)?)
            }
            None => None,
        };
        Ok(Sockets {
            http: tokio::net::TcpListener::from_std(http)?,
            https: None,
            tftp,
        })
    }

    /// With an HTTPS listener the caller bound itself (made non-blocking here).
    pub fn with_https(mut self, https: std::net::TcpListener) -> std::io::Result<Sockets> {
        https.set_nonblocking(true)?;
        self.https = Some(tokio::net::TcpListener::from_std(https)?);
        Ok(self)
    }
}

impl Server {
    /// Binds the configured sockets and opens everything the services need; nothing runs
    /// yet ([`Sockets::bind`], then [`Server::new`]).
    pub async fn bind(config: Config, data: &Path) -> Result<Server, ServeError> {
        let sockets = Sockets::bind(&config).await?;
        Server::new(config, data, sockets).await
    }

    /// Opens the database, the API token, the relay state and DHCP's sockets, for a server
    /// that will run on `sockets`; nothing runs yet.
    pub async fn new(config: Config, data: &Path, sockets: Sockets) -> Result<Server, ServeError> {
        std::fs::create_dir_all(data).map_err(|cause| ServeError::DataDir {
            path: data.to_path_buf(),
            cause,
        })?;
        let db = Db::open(&crate::db::path(data))?;
        // a relay has no staff API, hence no API token
        let (token, created) = match config.relay {
            None => http::auth::load_or_create_token(data)?,
            Some(_) => (String::new(), false),
        };
        // the central server vouches for versions and orders; a relay passes them on
        let signer = match config.relay {
            None => Some(crate::sign::SigningKey::load_or_create(data)?),
            Some(_) => None,
        };
        http::listen::raise_open_files_limit(&config.limits);
        let Sockets { http, https, tftp } = sockets;
        let http_addr = http.local_addr().expect("bound socket has an address");
        let tftp_addr = tftp.as_ref().map(|s| s.local_addr().expect("bound"));
        let state_base = http::base_url(config.advertise, http_addr.port(), None);
        let relay = match &config.relay {
            None => None,
            Some(rc) => {
                let url = match (&rc.url, config.advertise) {
                    (Some(u), _) => u.clone(),
                    (None, Some(_)) => state_base.clone(),
                    (None, None) if !http_addr.ip().is_unspecified() => {
                        format!("http://{http_addr}")
                    }
                    (None, None) => return Err(ServeError::RelayUrl(http_addr)),
                };
                let (rc, dir, clock) = (rc.clone(), data.to_path_buf(), config.clock());
                let r = tokio::task::spawn_blocking(move || {
                    crate::relay::Relay::open(rc, &dir, url, clock)
                })
                .await
                .map_err(|e| ServeError::Service {
                    service: "relay",
                    cause: e.to_string(),
                })??;
                Some(Arc::new(r))
            }
        };
        let state_base = match &relay {
            Some(r) => r.url.clone(),
            None => state_base,
        };
        let mut dhcp = Vec::new();
        for d in &config.dhcp {
            {
                // each segment's clients reach TFTP and proxyDHCP at its interface's address
                let settings = dhcp_settings(d, d.address, &state_base);
                if d.mode == crate::boot::dhcp::DhcpMode::Proxy
                    && d.uefi_chain == crate::boot::dhcp::UefiChain::Shim
                {
                    tracing::warn!("dhcp.uefi_chain = \"shim\" with proxyDHCP: Debian 12's signed GRUB asks for its configuration only the next-server of the site DHCP server's answer; set next-server (siaddr) to this server's address there, or UEFI PCs stop at a grub> prompt");
                }
                let sockets = crate::boot::dhcp::bind_all(&settings).map_err(|cause| {
                    let hint = match &cause {
                        crate::boot::dhcp::DhcpError::Bind { source, .. } => match source.kind() {
                            std::io::ErrorKind::PermissionDenied => {
                                " (DHCP needs root, or the capabilities CAP_NET_BIND_SERVICE and CAP_NET_RAW)"
                            }
                            std::io::ErrorKind::AddrInUse => {
                                " (another DHCP server runs on this machine; `ss -ulpn 'sport = :67'` names it: stop it, or run bootcast on another machine)"
                            }
                            _ => "",
                        },
                        _ => "",
                    };
                    ServeError::Dhcp { cause, hint }
                })?;
                dhcp.push((settings, sockets));
            }
        }
        let (https, https_info) = match https {
            None => (None, None),
            Some(listener) => {
                let addr = listener.local_addr().expect("bound socket has an address");
                let host = https_host(
                    config.advertise,
                    relay.as_ref().map(|r| r.url.as_str()),
                    addr,
                );
                let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
                for ip in [http_addr.ip(), addr.ip()] {
                    if !ip.is_unspecified() {
                        names.push(ip.to_string());
                    }
                }
                names.extend(host.clone());
                names.sort_unstable();
                names.dedup();
                let files = config
                    .tls_files
                    .as_ref()
                    .map(|(c, k)| (c.as_path(), k.as_path()));
                let cert = crate::tls::server_cert(files, data, &names).map_err(ServeError::Tls)?;
                let info = HttpsInfo {
                    addr,
                    url: host.map(|h| match h.parse::<std::net::Ipv6Addr>() {
                        Ok(_) => format!("https://[{h}]:{}", addr.port()),
                        Err(_) => format!("https://{h}:{}", addr.port()),
                    }),
                    fingerprint: cert.fingerprint.to_string(),
                    cert: cert.cert_path.clone(),
                    self_signed: cert.self_signed,
                    created: cert.created,
                };
                (Some((listener, cert.config)), Some(info))
            }
        };
        let bootenv = crate::bootenv::load(data);
        let listening = Listening {
            http: http_addr,
            https: https_info,
            tftp: tftp_addr,
            dhcp: (!config.dhcp.is_empty()).then(|| {
                config
                    .dhcp
                    .iter()
                    .map(|d| {
                        format!(
                            "{} on {}",
                            match d.mode {
                                DhcpMode::Proxy => "proxyDHCP",
                                DhcpMode::Full => "DHCP",
                            },
                            d.interface
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            }),
            new_token: created.then(|| token.clone()),
            base_from_request: config.advertise.is_none() && relay.is_none(),
            base_url: state_base,
            relay_url: relay.as_ref().map(|r| r.url.clone()),
            signing_key: signer.as_ref().map(|(k, made)| (k.public(), *made)),
            bootenv: match bootenv {
                Ok(Some(info)) => info.usable(crate::proto::agent::AGENT_PROTOCOL).err().map(|why| format!("{why}; until then PCs boot their disks instead of registering or running tasks")),
                Ok(None) => Some("no boot environment yet; PCs cannot register until `bootcast bootenv build` has run".into()),
                Err(e) => Some(format!("the boot environment is damaged ({e}); run `bootcast bootenv build`")),
            },
        };
        Ok(Server {
            config,
            data: data.to_path_buf(),
            db,
            token,
            http,
            https,
            tftp,
            dhcp,
            listening,
            relay,
            signer: signer.map(|(k, _)| Arc::new(k)),
        })
    }

    pub fn listening(&self) -> &Listening {
        &self.listening
    }

    /// The staff API token (empty on a relay, which has no staff API).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Runs until `cancel` fires or a service fails; then stops the others and waits.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), ServeError> {
        let hooks = crate::hooks::Hooks::new(self.config.hooks.clone(), self.db.clone());
        let state = AppState::from(crate::http::Shared {
            db: self.db.clone(),
            data: self.data.clone(),
            advertise: self.config.advertise,
            http_port: self.listening.http.port(),
            after_register: self.config.after_register,
            chunks: Arc::new({
                let service = http::chunks::ChunkService::new(self.data.clone())
                    .with_frame_cache(self.config.limits.chunk_cache);
                match &self.relay {
                    None => service,
                    Some(r) => {
                        service.with_pull(r.pull.clone() as Arc<dyn crate::store::PullThrough>)
                    }
                }
            }),
            multicast: match &self.relay {
                None => crate::multicast::sessions::Sessions::new(),
                Some(r) => r.sessions.clone(),
            },
            hooks: hooks.clone(),
            glpi_url: self.config.glpi_url.clone(),
            boot: self.config.boot.clone(),
            capture_max_bytes: self.config.capture_max_bytes,
            connections: crate::metrics::ConnectionMetrics::default(),
            signer: self.signer.clone(),
            orders: Default::default(),
            clock: self.config.clock(),
            ldap: self.config.ldap.clone().map(Arc::new),
        });
        let orders = state.orders.clone();
        let connections =
            http::listen::Connections::new(self.config.limits, state.connections.clone());
        let mut set: JoinSet<(&'static str, Result<(), String>)> = JoinSet::new();

        let app = match &self.relay {
            None => http::router(state, self.token.clone()),
            Some(r) => crate::relay::routes::router(state, r.clone()),
        }
        // tokens only over HTTPS (or from this machine): one decision for every route
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(http::listen::PlainPolicy {
                https_url: self.listening.https.as_ref().map(|h| {
                    h.url
                        .clone()
                        .unwrap_or_else(|| format!("https://THIS-SERVER:{}", h.addr.port()))
                }),
                plain_relays: self.config.plain_relays.clone(),
            }),
            http::listen::require_tls,
        ));
        if !self.config.plain_relays.is_empty() {
            tracing::warn!(
                subnets = ?self.config.plain_relays,
                "the relay protocol is answered over plain HTTP from these subnets ([http] plain_relays): their relays' tokens cross the network in clear; remove the key once every relay there speaks HTTPS"
            );
        }
        if self.relay.is_none() {
            // relays waiting on /api/v1/relay/wait learn of a new push at once; pushes are
            // made by other processes (`bootcast push create`) too, hence a poll
            let (db, c) = (self.db.clone(), cancel.clone());
            set.spawn(async move {
                let mut last = None;
                let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = c.cancelled() => return ("push orders watch", Ok(())),
                    }
                    let now = db
                        .read(|c| Ok(http::relay::orders_fingerprint(c).ok()))
                        .await
                        .ok()
                        .flatten();
                    if now.is_some() && last.is_some() && now != last {
                        orders.bump();
                    }
                    if now.is_some() {
                        last = now;
                    }
                }
            });
        }
        if let Some(relay) = &self.relay {
            let (r, c) = (relay.clone(), cancel.clone());
            set.spawn(async move { ("relay heartbeat", crate::relay::heartbeat::run(r, c).await) });
            let (r, c) = (relay.clone(), cancel.clone());
            set.spawn(async move { ("relay report queue", crate::relay::queue::run(r, c).await) });
            let (r, c) = (relay.clone(), cancel.clone());
            set.spawn(async move {
                (
                    "relay order watch",
                    crate::relay::heartbeat::watch(r, c).await,
                )
            });
            // The prestage worker is a thread that may sit in a blocking read of a stalled
            // link: at shutdown it is not waited for (what it stored stays; the rest is
            // fetched again after the restart).
            let (r, c) = (relay.clone(), cancel.clone());
            let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
            std::thread::Builder::new()
                .name("prestage".into())
                .spawn(move || {
                    crate::relay::prestage::run(r, c);
                    let _ = done_tx.send(());
                })
                .map_err(|e| ServeError::Service {
                    service: "relay prestage",
                    cause: e.to_string(),
                })?;
            let (c, r) = (cancel.clone(), relay.clone());
            set.spawn(async move {
                tokio::select! {
                    _ = done_rx => {}
                    _ = c.cancelled() => r.stop(),
                }
                ("relay prestage", Ok(()))
            });
        }
        // Wake-on-LAN orders, sent at their time on the DHCP interface: the relay's from its site
        // book, the central server's for hosts of no site
        if !self.config.dhcp.is_empty() {
            let opts = self.config.wake.clone();
            let (ifaces, db, relay, c) = (
                self.config
                    .dhcp
                    .iter()
                    .map(|d| d.interface.clone())
                    .collect(),
                self.db.clone(),
                self.relay.clone(),
                cancel.clone(),
            );
            let (hooks, clock) = (hooks.clone(), self.config.clock());
            set.spawn(async move {
                (
                    "wake-on-LAN",
                    wake_orders((ifaces, opts), clock, db, relay, hooks, c).await,
                )
            });
        }
        // WAL checkpoints off the writer's path: no request waits for the sync
        if self.db.checkpoint_in_background().is_ok() {
            let (db, c) = (self.db.clone(), cancel.clone());
            set.spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = c.cancelled() => return ("database checkpoints", Ok(())),
                    }
                    let db = db.clone();
                    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || db.checkpoint()).await {
                        tracing::warn!("database checkpoint: {e}");
                    }
                }
            });
        }
        // TFTP answers the Secure Boot chain's names through the same routes
        let tftp_http = app.clone();
        let (c, a, conns) = (cancel.clone(), app.clone(), connections.clone());
        let listener = self.http;
        set.spawn(async move {
            http::listen::serve(listener, None, a, conns, c).await;
            ("HTTP", Ok(()))
        });
        if let Some((listener, tls)) = self.https {
            let (c, a, conns) = (cancel.clone(), app, connections);
            set.spawn(async move {
                http::listen::serve(listener, Some(tls), a, conns, c).await;
                ("HTTPS", Ok(()))
            });
        }

        if let Some(sock) = self.tftp {
            let settings = crate::boot::tftp::TftpSettings {
                root: self.config.tftp.root.clone(),
                max_transfers: self.config.tftp.max_transfers,
                http: Some(tftp_http),
                ..Default::default()
            };
            let c = cancel.clone();
            set.spawn(async move {
                let r = crate::boot::tftp::run(sock, settings, c)
                    .await
                    .map_err(|e| e.to_string());
                ("TFTP", r)
            });
        }

        let leases = Arc::new(crate::db::leases::SqliteLeases::new(self.db.clone()));
        for (settings, sockets) in self.dhcp {
            let (leases, c) = (leases.clone(), cancel.clone());
            set.spawn(async move {
                let r = crate::boot::dhcp::run_on(settings, sockets, leases, c)
                    .await
                    .map_err(|e| e.to_string());
                ("DHCP", r)
            });
        }

        // inventories to GLPI (`[glpi] url`), from the queue in the database
        if let Some(url) = self.config.glpi_url.clone() {
            let (db, c) = (self.db.clone(), cancel.clone());
            set.spawn(async move {
                crate::http::inventory::forward_to_glpi(db, url, c).await;
                ("GLPI forwarding", Ok(()))
            });
        }

        // history pruning (`[retention] days`): at start, then every hour; store gc
        // (`[retention] gc_hours`): every gc_hours, the first one gc_hours after start (a gc
        // holds back every commit while it runs: not at every restart)
        if self.relay.is_none()
            && (self.config.retention_days.is_some() || self.config.gc_hours.is_some())
        {
            let (db, data, c) = (self.db.clone(), self.data.clone(), cancel.clone());
            let (days, gc_hours) = (self.config.retention_days, self.config.gc_hours);
            set.spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
                let mut hours = 0u32;
                loop {
                    tokio::select! {
                        _ = c.cancelled() => break,
                        _ = tick.tick() => {}
                    }
                    if let Some(days) = days {
                        prune_history(&db, days).await;
                    }
                    if gc_hours.is_some_and(|every| hours > 0 && hours.is_multiple_of(every)) {
                        collect_store(data.clone()).await;
                    }
                    hours = hours.wrapping_add(1);
                }
                ("retention", Ok(()))
            });
        }

        // recurring pushes (`push create --every`): checked every 30 s
        if self.relay.is_none() {
            let (db, data, c) = (self.db.clone(), self.data.clone(), cancel.clone());
            let clock = self.config.clock();
            set.spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(30));
                loop {
                    tokio::select! {
                        _ = c.cancelled() => break,
                        _ = tick.tick() => {}
                    }
                    let (db, data) = (db.clone(), data.clone());
                    let (db2, data2, now) = (db.clone(), data.clone(), clock.now());
                    let ran = tokio::task::spawn_blocking(move || {
                        let Ok(store) = crate::store::Store::open(&data) else {
                            return Ok(Vec::new());
                        };
                        crate::push::plan::run_due_rules(
                            &mut db.lock(),
                            &store,
                            now,
                            &crate::time::Zone::local(),
                        )
                    })
                    .await;
                    match ran {
                        Ok(Ok(made)) => {
                            for p in made {
                                tracing::info!(push = p.id, "recurring push: new versions pushed");
                            }
                        }
                        Ok(Err(e)) => tracing::warn!("recurring pushes: {e}"),
                        Err(e) => tracing::warn!("recurring pushes: {e}"),
                    }
                    // the calendar's task rules (`task rule add`)
                    let ran = tokio::task::spawn_blocking(move || {
                        crate::calendar::run_due(&mut db2.lock(), &data2, now)
                    })
                    .await;
                    match ran {
                        Ok(Ok(runs)) => {
                            for (rule, outcome, failed) in runs {
                                if failed {
                                    tracing::warn!(rule, "task rule run failed: {outcome} (`bootcast task rule ack {rule}` once seen)");
                                } else {
                                    tracing::info!(rule, "task rule ran: {outcome}");
                                }
                            }
                        }
                        Ok(Err(e)) => tracing::warn!("task rules: {e}"),
                        Err(e) => tracing::warn!("task rules: {e}"),
                    }
                }
                ("push and task rules", Ok(()))
            });
        }

        let mut first_error = None;
        while let Some(joined) = set.join_next().await {
            let (service, result) = match joined {
                Ok(x) => x,
                Err(e) => ("a service", Err(format!("panicked: {e}"))),
            };
            if let Err(cause) = result {
                tracing::error!("{service} failed: {cause}; stopping the other services");
                first_error.get_or_insert(ServeError::Service { service, cause });
            } else if !cancel.is_cancelled() {
                tracing::error!("{service} stopped unexpectedly; stopping the other services");
                first_error.get_or_insert(ServeError::Service {
                    service,
                    cause: "stopped unexpectedly".into(),
                });
            }
            cancel.cancel();
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Sends the wake orders due, every second, on the DHCP segments (`interfaces`): a relay those
/// of its site book (then its heartbeat tells central), the central server those of hosts of
/// no site (marked sent, an event each). Each host is woken on the segment where this node's
/// DHCP last saw it, else on every segment. A failure is logged when it changes, and the
/// orders wait.
async fn wake_orders(
    (interfaces, opts): (Vec<String>, crate::wol::send::WakeOptions),
    clock: Arc<dyn crate::push::clock::Clock>,
    db: Db,
    relay: Option<Arc<crate::relay::Relay>>,
    hooks: crate::hooks::Hooks,
    cancel: CancellationToken,
) -> Result<(), String> {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut last_error = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        // an order's time is judged on the schedulers' clock (a test's clock file)
        let now = clock.now();
        let due = match &relay {
            Some(r) => r.book().due_wakes(now),
            None => match db.read(move |c| crate::db::wakes::due_here(c, now)).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!("wake orders: {e}");
                    continue;
                }
            },
        };
        if due.is_empty() {
            continue;
        }
        let macs: Vec<crate::mac::Mac> = due.iter().filter_map(|w| w.mac.parse().ok()).collect();
        // where this node's DHCP last saw each host
        let m = macs.clone();
        let seen: Vec<Option<std::net::Ipv4Addr>> = db
            .read(move |c| {
                m.iter()
                    .map(|&mac| {
                        Ok(match crate::db::bootcred::seen(c, mac, 0)? {
                            Some(std::net::IpAddr::V4(ip)) => Some(ip),
                            _ => None,
                        })
                    })
                    .collect()
            })
            .await
            .unwrap_or_else(|_| vec![None; macs.len()]);
        let (ifaces, opts) = (interfaces.clone(), opts.clone());
        let sent = tokio::task::spawn_blocking(move || {
            use crate::wol::send::{segments_for, send, Segment};
            let segments = ifaces
                .iter()
                .map(|i| Segment::of(i))
                .collect::<Result<Vec<_>, _>>()?;
            let mut on: Vec<Vec<crate::mac::Mac>> = vec![Vec::new(); segments.len()];
            let mut names = Vec::new();
            for (mac, ip) in macs.iter().zip(&seen) {
                let which = segments_for(&segments, *ip);
                names.push(
                    which
                        .iter()
                        .map(|&i| format!("{} on {}", segments[i].broadcast, segments[i].interface))
                        .collect::<Vec<_>>()
                        .join(", "),
                );
                for i in which {
                    on[i].push(*mac);
                }
            }
            for (segment, macs) in segments.iter().zip(&on) {
                if !macs.is_empty() {
                    send(segment, macs, &opts)?;
                }
            }
            Ok::<_, crate::wol::send::WakeError>(names)
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
        let names = match sent {
            Ok(s) => s,
            Err(e) => {
                if last_error.as_ref() != Some(&e) {
                    tracing::warn!("wake orders wait: {e}");
                    last_error = Some(e);
                }
                continue;
            }
        };
        last_error = None;
        for (w, to) in due.iter().zip(&names) {
            tracing::info!(mac = %w.mac, task = ?w.task, "woken: magic packets to {to}");
        }
        let sent: Vec<(i64, i64)> = due.iter().map(|w| (w.id, now)).collect();
        match &relay {
            Some(r) => {
                r.woke(&sent);
            }
            None => {
                match db
                    .call(move |c| crate::db::wakes::mark_sent(c, &sent, "server", None))
                    .await
                {
                    Ok(marked) => {
                        for w in marked {
                            hooks.emit(
                                crate::hooks::EventKind::Wake,
                                Some(w.mac),
                                serde_json::json!({ "by": "server", "task": w.task, "wake": w.id }),
                            );
                        }
                    }
                    Err(e) => tracing::warn!("wake orders sent, not recorded: {e}"),
                }
            }
        }
    }
}

/// The host clients reach the HTTPS listener `addr` at: the advertised address, the relay's
/// URL's host, or the listen address itself when it is a specific one.
fn https_host(
    advertise: Option<std::net::Ipv4Addr>,
    relay_url: Option<&str>,
    addr: SocketAddr,
) -> Option<String> {
    if let Some(ip) = advertise {
        return Some(ip.to_string());
    }
    if let Some(url) = relay_url {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .unwrap_or(url);
        let hostport = rest.split('/').next().unwrap_or(rest);
        let host = match hostport.rsplit_once(':') {
            Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => hostport,
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if !host.is_empty() {
            return Some(host.to_string());
        }
    }
    (!addr.ip().is_unspecified()).then(|| addr.ip().to_string())
}

/// Prunes the history older than `days` days, logging what went.
async fn prune_history(db: &Db, days: u32) {
    let before = crate::time::now_unix() - i64::from(days) * 86_400;
    match db
        .call(move |c| crate::db::retention::prune(c, before))
        .await
    {
        Ok(p) if p.total() > 0 => tracing::info!(
            events = p.events,
            boots = p.boots,
            inventories = p.inventories,
            "pruned history older than {days} days"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!("pruning history: {e}"),
    }
}

/// One `store gc` of the store in `data`, if there is a store.
async fn collect_store(data: PathBuf) {
    let r = tokio::task::spawn_blocking(move || match crate::store::Store::open(&data) {
        Ok(store) => crate::store::gc::gc(&store).map(Some),
        Err(_) => Ok(None), // no store yet
    })
    .await;
    match r {
        Ok(Ok(Some(report))) => tracing::info!("store gc: {report:?}"),
        Ok(Ok(None)) => {}
        Ok(Err(e)) => tracing::warn!("store gc: {e}"),
        Err(e) => tracing::warn!("store gc: {e}"),
    }
}

/// The DHCP server's settings from the validated configuration.
///
/// `base` is this node's URL as its clients reach it: iPXE gets `BASE/boot.ipxe`, and UEFI
/// HTTP boot clients (unless configured) `BASE/ipxe/snponly.efi`, whatever the chain: under HTTP
/// boot the signed chain's GRUB (Debian 12's, without HTTP) finds no configuration (probed:
/// it stops at `grub>`), so HTTP boot needs Secure Boot off.
fn dhcp_settings(d: &DhcpConfig, server_ip: std::net::Ipv4Addr, base: &str) -> DhcpSettings {
    let mut boot_files = d.boot_files.clone();
    let http = crate::boot::dhcp::arch::EFI_X64_HTTP;
    if boot_files.get(http).is_none() {
        let snp = crate::boot::ipxe::SNPONLY_EFI.name;
        boot_files.set(http, Some(&format!("{base}/ipxe/{snp}")));
    }
    DhcpSettings {
        interface: d.interface.clone(),
        mode: d.mode,
        server_ip,
        boot_files,
        ipxe_script_url: format!("{base}/boot.ipxe"),
        pool: d.pool.clone(),
    }
}

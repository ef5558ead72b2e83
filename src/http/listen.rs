//! The HTTP listeners: one accept loop (hyper-util) for the plain and the TLS listener, of the
//! central server and of relays alike.
//!
//! - **Caps.** Connections are counted per source address and in all, across the listeners
//!   of the process ([`Connections`], `[http] max_connections_per_address` and
//!   `max_connections`). A connection beyond a cap is closed at once, counted
//!   (`bootcast_http_connections_refused_total{listener,reason}`) and logged at most once per
//!   [`REFUSAL_LOG_EVERY`] (a flood of refusals is one line, with how many).
//! - **Timeouts.** A new connection must deliver a complete request head within
//!   `header_timeout` of its accept (the TLS handshake included); a keep-alive connection
//!   waiting for its next request is closed after `idle_timeout`, or `header_timeout` after
//!   the first byte of that next request if its head is still not complete. A connection with
//!   a request in flight (its response body still being sent, however long) is never timed
//!   out. Counted in `bootcast_http_connections_timed_out_total{listener,reason}`.
//! - **What handlers see.** Every request carries `axum::extract::ConnectInfo<SocketAddr>`
//!   (the peer) and the [`Transport`] it came in on, as request extensions.
//! - **Plain HTTP carries no secrets.** [`require_tls`], the one middleware that decides:
//!   on the plain listener, the staff API (any `Authorization` header) and the relay protocol
//!   (`/api/v1/relay/*`, or any request with a relay token header) are refused with 403 and
//!   the HTTPS URL, unless the peer is on this machine (loopback: the local CLI, tests).
//!   Firmware's requests (boot scripts, boot files, iPXE, chunks, manifests, the agent's
//!   reports) stay on plain HTTP.
//! - **Shutdown.** When the server's token is cancelled the listener stops accepting, every
//!   connection finishes its request in flight (idle ones close at once), and after
//!   [`SHUTDOWN_GRACE`] the rest are closed.
//!
//! [`raise_open_files_limit`] lifts the process's open-file soft limit to its hard limit at
//! start, and says so when even that is below the connection cap.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::config::HttpLimits;
use crate::metrics::{ConnectionMetrics, ListenerLabel, ListenerReason};
use crate::proto::relay::RELAY_TOKEN_HEADER;

use super::error::ApiError;

/// At most one log line of refused connections this often.
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);
/// How long a stopping server lets connections finish their requests.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The listener a request came in on (a request extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Plain,
    Tls,
}

impl Transport {
    /// The `listener` label of the connection metrics.
    pub fn label(self) -> &'static str {
        match self {
            Transport::Plain => "http",
            Transport::Tls => "https",
        }
    }
}

/// The connections open in this process, per source address and in all, against the caps.
pub struct Connections {
    limits: HttpLimits,
    metrics: ConnectionMetrics,
    open: Mutex<Open>,
    refusals: Mutex<Refusals>,
}

#[derive(Default)]
struct Open {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

#[derive(Default)]
struct Refusals {
    last_report: Option<Instant>,
    unreported: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Connections {
    pub fn new(limits: HttpLimits, metrics: ConnectionMetrics) -> Arc<Connections> {
        Arc::new(Connections {
            limits,
            metrics,
            open: Mutex::default(),
            refusals: Mutex::default(),
        })
    }

    pub fn limits(&self) -> &HttpLimits {
        &self.limits
    }

    /// Connections open now from `ip` (all listeners).
    pub fn open_from(&self, ip: IpAddr) -> usize {
        lock(&self.open)
            .per_address
            .get(&ip.to_canonical())
            .copied()
            .unwrap_or(0)
    }

    /// A place for a new connection from `ip`, or `None` (counted and logged) when a cap is
    /// reached.
    fn admit(self: &Arc<Self>, ip: IpAddr, transport: Transport) -> Option<Slot> {
        let ip = ip.to_canonical();
        let refused = {
            let mut open = lock(&self.open);
            if open.total >= self.limits.max_connections {
                Some("total")
            } else {
                let n = open.per_address.entry(ip).or_insert(0);
                if *n >= self.limits.max_per_address {
                    Some("per_address")
                } else {
                    *n += 1;
                    open.total += 1;
                    None
                }
            }
        };
        let listener = transport.label();
        if let Some(reason) = refused {
            self.metrics
                .refused
                .get_or_create(&ListenerReason { listener, reason })
                .inc();
            self.report_refusal(ip, reason);
            return None;
        }
        self.metrics
            .accepted
            .get_or_create(&ListenerLabel { listener })
            .inc();
        self.metrics
            .open
            .get_or_create(&ListenerLabel { listener })
            .inc();
        Some(Slot {
            conns: self.clone(),
            ip,
            transport,
        })
    }

    fn report_refusal(&self, ip: IpAddr, reason: &str) {
        let mut r = lock(&self.refusals);
        r.unreported += 1;
        let now = Instant::now();
        if r.last_report
            .is_some_and(|t| now.duration_since(t) < REFUSAL_LOG_EVERY)
        {
            return;
        }
        let cap = match reason {
            "total" => format!(
                "{} connections are open (http.max_connections)",
                self.limits.max_connections
            ),
            _ => format!(
                "{ip} has {} connections open (http.max_connections_per_address)",
                self.limits.max_per_address
            ),
        };
        tracing::warn!(
            "HTTP: {} connection(s) refused{}, the last from {ip}: {cap}; bootcast_http_connections_refused_total counts every one",
            r.unreported,
            match r.last_report {
                Some(t) => format!(" in the last {} s", now.duration_since(t).as_secs()),
                None => String::new(),
            }
        );
        r.last_report = Some(now);
        r.unreported = 0;
    }

    fn timed_out(&self, transport: Transport, reason: &'static str) {
        self.metrics
            .timed_out
            .get_or_create(&ListenerReason {
                listener: transport.label(),
                reason,
            })
            .inc();
    }
}

/// One admitted connection's place under the caps, given back when it is dropped.
struct Slot {
    conns: Arc<Connections>,
    ip: IpAddr,
    transport: Transport,
}

impl Drop for Slot {
    fn drop(&mut self) {
        {
            let mut open = lock(&self.conns.open);
            open.total = open.total.saturating_sub(1);
            if let Some(n) = open.per_address.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    open.per_address.remove(&self.ip);
                }
            }
        }
        self.conns
            .metrics
            .open
            .get_or_create(&ListenerLabel {
                listener: self.transport.label(),
            })
            .dec();
    }
}

/// Raises the open-file soft limit to the hard limit; warns when that is still below what
/// `limits` may keep open.
pub fn raise_open_files_limit(limits: &HttpLimits) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!("cannot read the open-file limit: {e}");
            return;
        }
    };
    let mut now = soft;
    if soft < hard {
        // an unlimited hard limit is bounded by the kernel's nr_open
        let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(1 << 20);
        let want = hard.min(nr_open);
        match setrlimit(Resource::RLIMIT_NOFILE, want, hard) {
            Ok(()) => now = want,
            Err(e) => tracing::warn!("cannot raise the open-file limit from {soft} to {want}: {e}"),
        }
    }
    // beside the connections: the store, the database, the upstream link
    let need = limits.max_connections as u64 + 256;
    if now < need {
        tracing::warn!(
            "the open-file limit is {now}: fewer than http.max_connections = {} connections can be open; raise the hard limit to {need} or more (LimitNOFILE= in the systemd unit, `ulimit -Hn`) or lower http.max_connections",
            limits.max_connections
        );
    }
}

/// Serves `app` on `listener` (TLS with `tls`) until `cancel` fires, then shuts down
/// gracefully (see the module doc).
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: Router,
    conns: Arc<Connections>,
    cancel: CancellationToken,
) {
    let transport = match tls {
        Some(_) => Transport::Tls,
        None => Transport::Plain,
    };
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // the timeouts are this module's, the same whatever the protocol (no HTTP/2 pings either:
    // a ping's answer would count as the start of a request head)
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(Some(64));
    let builder = Arc::new(builder);
    let tracker = TaskTracker::new();
    let kill = CancellationToken::new();
    let mut last_accept_error: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                if is_connection_error(&e) {
                    continue;
                }
                // out of file descriptors or memory: the others' requests go on; retry soon
                if last_accept_error.is_none_or(|t| t.elapsed() >= REFUSAL_LOG_EVERY) {
                    tracing::error!(
                        "HTTP ({}): cannot accept connections: {e}",
                        transport.label()
                    );
                    last_accept_error = Some(Instant::now());
                }
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        let Some(slot) = conns.admit(peer.ip(), transport) else {
            drop(stream); // closed at once
            continue;
        };
        let conn = Conn {
            peer,
            transport,
            builder: builder.clone(),
            app: app.clone(),
            conns: conns.clone(),
            cancel: cancel.clone(),
            kill: kill.clone(),
            activity: Arc::new(Activity::new()),
        };
        let acceptor = acceptor.clone();
        tracker.spawn(async move {
            conn.run(stream, acceptor).await;
            drop(slot);
        });
    }
    drop(listener);
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::info!(
            "HTTP ({}): closing {} connection(s) still busy after {} s",
            transport.label(),
            tracker.len(),
            SHUTDOWN_GRACE.as_secs()
        );
        kill.cancel();
        tracker.wait().await;
    }
}

/// Errors of one connection that `accept` reports (the listener itself is fine).
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    )
}

/// One accepted connection.
struct Conn {
    peer: SocketAddr,
    transport: Transport,
    builder: Arc<auto::Builder<TokioExecutor>>,
    app: Router,
    conns: Arc<Connections>,
    cancel: CancellationToken,
    /// Closes the connection whatever it is doing (shutdown grace over).
    kill: CancellationToken,
    activity: Arc<Activity>,
}

impl Conn {
    async fn run(self, stream: TcpStream, acceptor: Option<tokio_rustls::TlsAcceptor>) {
        let _ = stream.set_nodelay(true);
        let Some(acceptor) = acceptor else {
            return self.drive(stream).await;
        };
        let deadline = tokio::time::Instant::from_std(
            self.activity.idle_since() + self.conns.limits.header_timeout,
        );
        let handshake = tokio::select! {
            h = tokio::time::timeout_at(deadline, acceptor.accept(stream)) => h,
            _ = self.cancel.cancelled() => return,
        };
        match handshake {
            Ok(Ok(tls)) => self.drive(tls).await,
            Ok(Err(e)) => {
                self.conns.metrics.tls_failed.inc();
                tracing::debug!("TLS handshake with {}: {e}", self.peer);
            }
            Err(_) => self.conns.timed_out(self.transport, "header"),
        }
    }

    /// Serves HTTP on `io` until the client closes, a timeout, or the shutdown.
    async fn drive<S>(self, io: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (peer, transport, app, activity) = (
            self.peer,
            self.transport,
            self.app.clone(),
            self.activity.clone(),
        );
        let service = tower::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            req.extensions_mut().insert(transport);
            let busy = Busy::new(activity.clone());
            let app = app.clone();
            async move {
                let res = match tower::ServiceExt::oneshot(app, req).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                };
                // the request counts as in flight until its body is sent (or dropped)
                Ok::<_, Infallible>(res.map(move |body| {
                    axum::body::Body::new(http_body_util::BodyExt::map_frame(body, move |f| {
                        let _in_flight = &busy;
                        f
                    }))
                }))
            }
        });
        let watched = Watched {
            inner: io,
            activity: self.activity.clone(),
        };
        let conn = self
            .builder
            .serve_connection(TokioIo::new(watched), TowerToHyperService::new(service));
        tokio::pin!(conn);
        let limits = self.conns.limits;
        let mut shutting_down = false;
        loop {
            let deadline = self.activity.deadline(&limits);
            let changed = self.activity.changed.notified();
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!("HTTP connection from {}: {e}", self.peer);
                    }
                    return;
                }
                _ = changed => {}
                _ = sleep_until(deadline.map(|(at, _)| at)) => {
                    if let Some((at, why)) = self.activity.deadline(&limits) {
                        if at <= Instant::now() {
                            self.conns.timed_out(transport, why);
                            return; // dropping the connection closes it
                        }
                    }
                }
                _ = self.cancel.cancelled(), if !shutting_down => {
                    conn.as_mut().graceful_shutdown();
                    shutting_down = true;
                }
                _ = self.kill.cancelled() => return,
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

/// What a connection is doing, for its timeouts.
struct Activity {
    /// Requests in flight (their response bodies not yet sent).
    busy: AtomicU32,
    /// A byte came while idle: the next request head has begun.
    head_begun: AtomicBool,
    times: Mutex<Times>,
    /// Wakes the connection's task: `busy` or `head_begun` changed.
    changed: tokio::sync::Notify,
}

struct Times {
    /// The accept, or the end of the last response.
    idle_since: Instant,
    /// The first byte of the request head awaited.
    head_since: Option<Instant>,
    /// Requests answered.
    served: u64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            busy: AtomicU32::new(0),
            head_begun: AtomicBool::new(false),
            times: Mutex::new(Times {
                idle_since: Instant::now(),
                head_since: None,
                served: 0,
            }),
            changed: tokio::sync::Notify::new(),
        }
    }

    fn idle_since(&self) -> Instant {
        lock(&self.times).idle_since
    }

    /// When the connection times out as things stand, and why; `None` while a request is in
    /// flight.
    fn deadline(&self, limits: &HttpLimits) -> Option<(Instant, &'static str)> {
        if self.busy.load(Ordering::Acquire) > 0 {
            return None;
        }
        let t = lock(&self.times);
        let mut due = match t.served {
            0 => (t.idle_since + limits.header_timeout, "header"),
            _ => (t.idle_since + limits.idle_timeout, "idle"),
        };
        if let Some(h) = t.head_since {
            let head_due = h + limits.header_timeout;
            if head_due < due.0 {
                due = (head_due, "header");
            }
        }
        Some(due)
    }

    /// Bytes arrived.
    fn read_some(&self) {
        if self.busy.load(Ordering::Acquire) == 0 && !self.head_begun.swap(true, Ordering::AcqRel) {
            lock(&self.times).head_since = Some(Instant::now());
            self.changed.notify_one();
        }
    }
}

/// A request in flight, until dropped (with its response body).
struct Busy(Arc<Activity>);

impl Busy {
    fn new(a: Arc<Activity>) -> Busy {
        a.busy.fetch_add(1, Ordering::AcqRel);
        a.changed.notify_one();
        Busy(a)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let a = &self.0;
        if a.busy.fetch_sub(1, Ordering::AcqRel) == 1 {
            let mut t = lock(&a.times);
            t.idle_since = Instant::now();
            t.head_since = None;
            t.served += 1;
            a.head_begun.store(false, Ordering::Release);
        }
        a.changed.notify_one();
    }
}

/// The connection's byte stream, noting when bytes arrive.
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read_some();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// What the plain listener answers, and where to send the rest.
#[derive(Debug, Clone, Default)]
pub struct PlainPolicy {
    /// This node's HTTPS URL (`None`: HTTPS is off).
    pub https_url: Option<String>,
    /// `[http] plain_relays`: subnets whose relays may speak the relay protocol over plain
    /// HTTP (relays of a release before HTTPS, during an upgrade).
    pub plain_relays: Vec<String>,
}

/// Why a request may not be answered on `transport`, if it may not: on plain HTTP, from
/// another machine, a request that carries a staff token (`Authorization`) or belongs to the
/// relay protocol (`/api/v1/relay/*`, a relay token header), unless the relay protocol comes
/// from a subnet of `policy.plain_relays`.
pub fn plain_refusal(
    transport: Transport,
    peer: Option<IpAddr>,
    path: &str,
    headers: &HeaderMap,
    policy: &PlainPolicy,
) -> Option<String> {
    if transport == Transport::Tls || peer.is_some_and(|ip| ip.to_canonical().is_loopback()) {
        return None;
    }
    let relay_protocol =
        path.starts_with("/api/v1/relay/") || headers.contains_key(RELAY_TOKEN_HEADER);
    let what = if relay_protocol {
        let allowed = peer.is_some_and(|ip| {
            let ip = ip.to_canonical();
            policy
                .plain_relays
                .iter()
                .any(|c| crate::db::sites::cidr_contains(c, ip))
        });
        // (a staff token is never accepted in clear, even beside a relay's)
        if allowed
            && (path.starts_with("/api/v1/relay/") || !headers.contains_key(header::AUTHORIZATION))
        {
            return None;
        }
        "the relay protocol"
    } else if headers.contains_key(header::AUTHORIZATION)
        || super::auth::session_cookie(headers).is_some()
        || path == super::auth::LOGIN_PATH
    {
        "the staff API"
    } else if path == "/ui" || path.starts_with("/ui/") {
        "the staff console"
    } else {
        return None;
    };
    Some(match policy.https_url.as_deref() {
        Some(url) => format!(
            "{what} is not served over plain HTTP, where its token or password would cross the network in clear: use {url} (the certificate's fingerprint is in the server's start banner)"
        ),
        None => format!(
            "{what} is not served over plain HTTP, where its token or password would cross the network in clear, and HTTPS is off here ([http] tls_listen = \"off\"): turn HTTPS on, or use it from the server's own machine"
        ),
    })
}

/// Middleware (the node's outermost layer): refuses with 403 what [`plain_refusal`] refuses.
/// State: this node's HTTPS URL, if HTTPS is on.
pub async fn require_tls(
    State(policy): State<Arc<PlainPolicy>>,
    req: Request,
    next: Next,
) -> Response {
    let transport = req
        .extensions()
        .get::<Transport>()
        .copied()
        .unwrap_or(Transport::Plain);
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    match plain_refusal(transport, peer, req.uri().path(), req.headers(), &policy) {
        Some(why) => {
            tracing::debug!(?peer, "refused on plain HTTP: {why}");
            ApiError::forbidden(why).into_response()
        }
        None => next.run(req).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_on_plain_http_from_another_machine_are_refused_naming_https() {
        let https = &PlainPolicy {
            https_url: Some("https://10.99.0.1:8443".into()),
            plain_relays: vec![],
        };
        let lan: Option<IpAddr> = Some("10.99.0.5".parse().unwrap());
        let mut staff = HeaderMap::new();
        staff.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        let mut relayed = HeaderMap::new();
        relayed.insert(RELAY_TOKEN_HEADER, "tok".parse().unwrap());
        let none = HeaderMap::new();

        let why = plain_refusal(Transport::Plain, lan, "/api/v1/hosts", &staff, https).unwrap();
        assert!(
            why.contains("staff API") && why.contains("https://10.99.0.1:8443"),
            "{why}"
        );
        let why = plain_refusal(
            Transport::Plain,
            lan,
            "/api/v1/relay/heartbeat",
            &none,
            https,
        )
        .unwrap();
        assert!(why.contains("relay protocol"), "{why}");
        // a relay token on any route is relay business
        let why = plain_refusal(Transport::Plain, lan, "/boot/x.ipxe", &relayed, https).unwrap();
        assert!(why.contains("relay protocol"), "{why}");
        let off = plain_refusal(
            Transport::Plain,
            lan,
            "/api/v1/hosts",
            &staff,
            &PlainPolicy::default(),
        )
        .unwrap();
        assert!(off.contains("tls_listen"), "{off}");

        // what firmware and agents fetch stays on plain HTTP
        for path in [
            "/boot/52:54:00:00:00:01.ipxe",
            "/bootenv/vmlinuz",
            "/chunks/batch",
            "/api/v1/agent/hello",
            "/api/v1/images/win11/latest/manifest",
        ] {
            assert_eq!(
                plain_refusal(Transport::Plain, lan, path, &none, https),
                None
            );
        }
        // over TLS, or from this machine (IPv4, IPv6, IPv4-mapped), all is served
        assert_eq!(
            plain_refusal(Transport::Tls, lan, "/api/v1/hosts", &staff, https),
            None
        );
        for local in ["127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1"] {
            let ip: IpAddr = local.parse().unwrap();
            assert_eq!(
                plain_refusal(Transport::Plain, Some(ip), "/api/v1/hosts", &staff, https),
                None,
                "{local}"
            );
        }
        // no peer known: not loopback
        assert!(plain_refusal(Transport::Plain, None, "/api/v1/hosts", &staff, https).is_some());
    }

    #[test]
    fn relays_of_a_listed_subnet_speak_plain_http_and_staff_tokens_never_do() {
        let policy = PlainPolicy {
            https_url: Some("https://10.99.0.1:8443".into()),
            plain_relays: vec!["10.99.7.0/24".into()],
        };
        let old_relay: Option<IpAddr> = Some("10.99.7.2".parse().unwrap());
        let elsewhere: Option<IpAddr> = Some("10.99.8.2".parse().unwrap());
        let mut bearer = HeaderMap::new();
        bearer.insert(header::AUTHORIZATION, "Bearer site-token".parse().unwrap());
        let mut relayed = HeaderMap::new();
        relayed.insert(RELAY_TOKEN_HEADER, "tok".parse().unwrap());
        let hb = "/api/v1/relay/heartbeat";
        assert_eq!(
            plain_refusal(Transport::Plain, old_relay, hb, &bearer, &policy),
            None
        );
        for path in [
            "/chunks/batch",
            "/api/v1/images/w/latest/manifest",
            "/boot/x.ipxe",
        ] {
            assert_eq!(
                plain_refusal(Transport::Plain, old_relay, path, &relayed, &policy),
                None
            );
        }
        // from another subnet: refused as before
        assert!(plain_refusal(Transport::Plain, elsewhere, hb, &bearer, &policy).is_some());
        // a staff token from the listed subnet: still refused
        let why = plain_refusal(
            Transport::Plain,
            old_relay,
            "/api/v1/hosts",
            &bearer,
            &policy,
        );
        assert!(why.is_some_and(|w| w.contains("staff API")));
        let mut both = relayed.clone();
        both.insert(header::AUTHORIZATION, "Bearer staff".parse().unwrap());
        assert!(
            plain_refusal(Transport::Plain, old_relay, "/api/v1/hosts", &both, &policy).is_some()
        );
    }

    #[test]
    fn caps_count_per_address_and_in_all() {
        let limits = HttpLimits {
            max_connections: 3,
            max_per_address: 2,
            ..HttpLimits::default()
        };
        let c = Connections::new(limits, ConnectionMetrics::default());
        let a: IpAddr = "10.99.0.5".parse().unwrap();
        let b: IpAddr = "10.99.0.6".parse().unwrap();
        let a1 = c.admit(a, Transport::Plain).unwrap();
        let a2 = c.admit(a, Transport::Tls).unwrap();
        assert!(c.admit(a, Transport::Plain).is_none(), "per address");
        let b1 = c.admit(b, Transport::Plain).unwrap();
        assert!(c.admit(b, Transport::Plain).is_none(), "in all");
        drop(a1);
        assert_eq!(c.open_from(a), 1);
        let _b2 = c.admit(b, Transport::Plain).unwrap();
        drop((a2, b1));
        assert_eq!(c.open_from(a), 0);
        let refused = c
            .metrics
            .refused
            .get_or_create(&ListenerReason {
                listener: "http",
                reason: "per_address",
            })
            .get();
        assert_eq!(refused, 1);
        // IPv4-mapped addresses are their IPv4 address
        let mapped: IpAddr = "::ffff:10.99.0.6".parse().unwrap();
        assert_eq!(c.open_from(mapped), 1);
    }
}

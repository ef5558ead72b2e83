//! Site relays: a pull-through cache of the store for one site, which prestages pushed image
//! versions inside the site's windows and under its cap, and serves the site's machines.
//!
//! `bootcast relay --upstream URL --site NAME --token TOKEN` is `bootcast serve` in relay mode
//! ([`crate::config::RelayConfig`]): the same DHCP and TFTP services, and an HTTP service
//! ([`routes`]) that answers chunks and complete manifests from the relay's own store, pulls
//! what it lacks from upstream, and passes boot scripts and the agent's reports upstream. A
//! relay's upstream is the central server or another relay (relays chain).
//!
//! - [`crate::proto::relay`]: messages between a relay and the server above it.
//! - [`upstream`]: the relay's link upstream: one HTTP source whose reads all go through one
//!   token bucket, and the counters of what crossed it.
//! - [`pull`]: pull-through: fetch, verify and store what a client asks for and the store
//!   lacks; concurrent misses of one chunk share one upstream fetch.
//! - [`prestage`]: the push worker: fetches the chunks of pushed versions the relay lacks, only
//!   inside the windows, and writes a version's manifest once it is complete.
//! - [`heartbeat`]: registers with upstream, reports progress, applies schedule and orders.
//! - [`proxy`]: boot scripts and agent reports passed upstream with the relay's headers; the
//!   boot environment and iPXE files through a small file cache.
//! - [`recover`]: the start-up check: chunk files cut short (a power cut) are removed and their
//!   versions are pending again.
//! - [`alone`]: the site book, and what the relay answers alone while upstream is down.
//! - [`queue`]: agent reports kept while upstream is down, passed on once.
//! - [`evict`]: the quota: chunks no assigned image uses go first, oldest first.
//! - [`routes`]: the relay's HTTP routes, manifests and `/metrics`.
//!
//! State on disk, beside the store (`DATA/store`, `DATA/images`: complete versions only):
//! ```text
//! DATA/relay.lock                 held by the running relay (one per data directory)
//! DATA/relay/pending/NAME@ID.bcm  manifests of versions being prestaged (not yet complete)
//! DATA/relay/files/{bootenv,ipxe}/ the file cache, with a .meta beside each file
//! DATA/relay/book.json            the site book (hosts, open tasks) for working alone
//! DATA/relay/queue/               reports kept for upstream
//! ```

pub mod alone;
pub mod evict;
pub mod heartbeat;
pub mod prestage;
pub mod proxy;
pub mod pull;
pub mod queue;
pub mod recover;
pub mod routes;
pub mod upstream;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::config::RelayConfig;
use crate::metrics::{Counter, Gauge};
use crate::proto::relay::{HeartbeatReply, PushOrder, PushProgress, PushState, VersionRef};
use crate::push::clock::Clock;
use crate::push::window::Windows;
use crate::store::{Store, StoreError};
use crate::time::Zone;

/// Why a relay cannot start.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("another bootcast relay runs on {0}: one relay per data directory (stop it, or give this one its own --data)")]
    Locked(PathBuf),
    #[error("the central server's signing key: {0}")]
    Keys(String),
    #[error("{what} {path}: {cause}")]
    Io {
        what: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },
}

/// Counters of `/metrics` (besides the chunk service's; registered by [`routes::router`]).
#[derive(Default)]
pub struct RelayMetrics {
    pub heartbeats: Counter,
    pub heartbeat_failures: Counter,
    /// Unix time of the last accepted heartbeat (0: none yet).
    pub last_heartbeat: Gauge,
    pub evicted_chunks: Counter,
    pub evicted_bytes: Counter,
    /// Bytes of boot environment and iPXE files fetched from upstream.
    pub file_bytes: Counter,
    /// Manifests of incomplete versions refused (policy `wait`) / pulled through.
    pub manifests_refused: Counter,
    pub manifests_pulled: Counter,
    /// Reimage orders (hello answers) refused: unsigned, forged, or replayed.
    pub orders_refused: Counter,
    /// Boot scripts answered by the relay alone (local disk): upstream unreachable.
    pub offline_scripts: Counter,
    /// Agent reports kept while upstream is unreachable ([`queue`]), and those passed on.
    pub reports_queued: Gauge,
    pub reports_forwarded: Counter,
}

/// What the last heartbeat reply said, as the relay applies it.
pub struct SiteState {
    pub reply: Option<HeartbeatReply>,
    pub zone: Zone,
    pub windows: Windows,
    /// Bumped when the pushes or the schedule change: prestage re-plans.
    pub generation: u64,
    /// Orders of the last reply refused (their signature does not verify), with why: never
    /// run, reported failed.
    pub refused: Vec<(i64, String)>,
}

/// One push as the relay carries it out.
#[derive(Debug, Clone)]
pub struct PushStatus {
    pub progress: PushProgress,
    /// (when, fetched) over the last seconds, for the rate.
    samples: std::collections::VecDeque<(std::time::Instant, u64)>,
}

impl PushStatus {
    fn new(push: i64) -> PushStatus {
        PushStatus {
            progress: PushProgress {
                push,
                state: PushState::Waiting,
                bytes_done: 0,
                bytes_total: 0,
                fetched: 0,
                rate: 0,
                detail: None,
            },
            samples: Default::default(),
        }
    }

    /// The progress with its rate over the last 5 s (0 unless running).
    pub fn snapshot(&self) -> PushProgress {
        let mut p = self.progress.clone();
        p.rate = match (self.samples.front(), self.samples.back()) {
            (Some(a), Some(b)) if p.state == PushState::Running && b.0 > a.0 => {
                ((b.1 - a.1) as f64 / (b.0 - a.0).as_secs_f64()) as u64
            }
            _ => 0,
        };
        p
    }

    fn sample(&mut self) {
        let now = std::time::Instant::now();
        self.samples.push_back((now, self.progress.fetched));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t).as_secs_f64() > 5.0)
        {
            self.samples.pop_front();
        }
    }
}

/// A running relay: its settings, store, link upstream and the state its services share.
pub struct Relay {
    pub config: RelayConfig,
    /// The base URL the site's machines reach this relay at.
    pub url: String,
    pub store: Store,
    pub link: Arc<upstream::Link>,
    pub pull: Arc<pull::Puller>,
    pub files: proxy::FileCache,
    pub clock: Arc<dyn Clock>,
    pub metrics: RelayMetrics,
    /// Room multicast sessions this relay runs for agents of its site.
    pub sessions: Arc<crate::multicast::sessions::Sessions>,
    site: Mutex<SiteState>,
    /// Signalled with `site` when orders change or the relay stops.
    changed: Condvar,
    pushes: Mutex<BTreeMap<i64, PushStatus>>,
    /// Versions the start-up check found damaged: prestage fetches them again
    /// ([`recover::repair_order`]), then this is emptied.
    repairs: Mutex<Vec<VersionRef>>,
    /// Lower relays' tokens the central server confirmed, by hash, and when.
    lower: Mutex<HashMap<String, std::time::Instant>>,
    /// Wakes the heartbeat loop: a push changed state.
    pub heartbeat_now: tokio::sync::Notify,
    /// The central server's keys this relay verifies orders with (`None`: none pinned yet).
    keys: Mutex<Option<crate::sign::Keys>>,
    /// Per machine, the highest task whose signed order this relay passed on: an older
    /// order is a replay ([`Relay::check_order`]). Kept in `DATA/relay/orders.json`.
    passed: Mutex<HashMap<String, i64>>,
    /// The site book ([`alone`]): what the relay answers alone while upstream is down.
    book: Mutex<alone::Book>,
    /// The last heartbeat could not reach upstream: a boot script waits for it only briefly.
    pub upstream_down: std::sync::atomic::AtomicBool,
    _lock: File,
}

impl Relay {
    /// Opens (or creates) the relay's store and takes its data directory. Blocking: call it
    /// outside async tasks (it makes the blocking HTTP client).
    pub fn open(
        config: RelayConfig,
        data: &Path,
        url: String,
        clock: Arc<dyn Clock>,
    ) -> Result<Relay, RelayError> {
        let io = |what, path: &Path| {
            let path = path.to_path_buf();
            move |cause| RelayError::Io { what, path, cause }
        };
        let lock_path = data.join("relay.lock");
        let lock = File::create(&lock_path).map_err(io("creating", &lock_path))?;
        if lock.try_lock().is_err() {
            return Err(RelayError::Locked(data.to_path_buf()));
        }
        let store = Store::open_or_create(data, crate::store::StoreConfig::default(), false)?;
        for dir in [pending_dir(data), data.join("relay/files")] {
            std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        }
        pull::remove_temp_files(&store)?;
        let link = Arc::new(upstream::Link::new(&config, &url)?);
        // one listing at start; from then on the relay counts what it stores and evicts
        let mut chunks = store.list_chunks()?;
        let recovered = recover::check_store(&store, &pending_dir(data), &mut chunks)?;
        if !recovered.removed.is_empty() {
            tracing::warn!(
                "{} chunk file(s) of the wrong size (cut short by a power cut?) removed; pending again, fetched with the next push window: {}",
                recovered.removed.len(),
                if recovered.demoted.is_empty() {
                    "no complete version".to_string()
                } else {
                    recovered
                        .demoted
                        .iter()
                        .map(|v| format!("{}@{}", v.image, v.version))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            );
        }
        let keys = crate::sign::pinned(data, config.upstream_key.as_ref())
            .map_err(|e| RelayError::Keys(e.to_string()))?;
        let passed = std::fs::read(data.join(ORDERS_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let held: u64 = chunks.iter().map(|(_, n)| n).sum();
        link.cache_bytes.set(held);
        let pull = Arc::new(pull::Puller::new(store.clone(), link.clone()));
        Ok(Relay {
            files: proxy::FileCache::new(data.join("relay/files")),
            url,
            store,
            link,
            pull,
            clock,
            metrics: RelayMetrics::default(),
            sessions: crate::multicast::sessions::Sessions::new(),
            site: Mutex::new(SiteState {
                reply: None,
                zone: Zone::utc(),
                windows: Windows::always(),
                generation: 0,
                refused: Vec::new(),
            }),
            changed: Condvar::new(),
            pushes: Mutex::new(BTreeMap::new()),
            repairs: Mutex::new(recovered.demoted),
            lower: Mutex::new(HashMap::new()),
            heartbeat_now: tokio::sync::Notify::new(),
            keys: Mutex::new(keys),
            passed: Mutex::new(passed),
            book: Mutex::new(alone::Book::load(data)),
            upstream_down: Default::default(),
            config,
            _lock: lock,
        })
    }

    /// The site book this relay holds.
    pub fn book(&self) -> MutexGuard<'_, alone::Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes that this relay ended task `id` alone (its done or failed is queued).
    pub fn ended_alone(&self, id: i64) {
        let mut book = self.book();
        if book.ended.insert(id) {
            if let Err(e) = book.save(self.store.data_dir()) {
                tracing::error!("keeping the site book: {e}");
            }
        }
    }

    pub fn site(&self) -> MutexGuard<'_, SiteState> {
        self.site.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pushes(&self) -> MutexGuard<'_, BTreeMap<i64, PushStatus>> {
        self.pushes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The central server's keys this relay verifies with (`None`: none pinned yet).
    pub fn keys(&self) -> Option<crate::sign::Keys> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Pins `key` (the heartbeat reply's) if this relay has no key yet; says so once.
    fn pin_first(&self, key: Option<&str>) {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        let Some(key) = key else { return };
        match keys.as_ref() {
            None => match crate::sign::Keys::parse(key) {
                Ok(k) if !k.is_empty() => {
                    if let Err(e) = crate::sign::pin(self.store.data_dir(), &k) {
                        tracing::error!("keeping the upstream's signing key: {e}");
                    }
                    tracing::warn!("pinned the central server's signing key {k} as first heard from upstream (compare it with `bootcast key show` on the central server, or start the relay with --upstream-key)");
                    *keys = Some(k);
                }
                _ => tracing::error!("the upstream sent {key:?} as its signing key: not a key"),
            },
            Some(k) if !k.to_string().split(',').any(|p| p == key) => {
                tracing::error!("the upstream says its signing key is {key}; this relay pinned {k}: orders it signs are refused (after a rotation, add the new key with --upstream-key)");
            }
            Some(_) => {}
        }
    }

    /// Checks a reimage order (a hello answer) before this relay passes it to an agent: signed
    /// by the central server, for the machine and the task the hello named, and not older than
    /// one already passed for that machine. `hello` is the agent's (MAC, task).
    pub fn check_order(
        &self,
        hello: (&str, Option<i64>),
        order: (i64, &str, &str, &str),
        signature: Option<&str>,
    ) -> Result<(), String> {
        let (task, mac, image, version) = order;
        let what = format!("the reimage order for task {task} ({image}@{version})");
        let Some(keys) = self.keys() else {
            return Ok(()); // nothing pinned: nothing to verify with (warned at start)
        };
        let st = crate::sign::Statement::Task {
            task,
            mac,
            image,
            version,
        };
        keys.verify(&st, signature)
            .map_err(|e| format!("{what} is refused: {e}"))?;
        if mac != hello.0 {
            return Err(format!("{what} is for {mac}, not for {}: refused", hello.0));
        }
        if hello.1 != Some(task) {
            return Err(match hello.1 {
                Some(t) => format!("{what} is for task {task}, but this boot is for task {t}: an old order replayed, refused"),
                None => format!("{what} answers a boot that named no task: refused"),
            });
        }
        let mut passed = self.passed.lock().unwrap_or_else(|p| p.into_inner());
        match passed.get(mac) {
            Some(&last) if last > task => Err(format!(
                "{what} is older than task {last}, already passed for {mac}: an old order replayed, refused"
            )),
            Some(&last) if last == task => Ok(()),
            _ => {
                passed.insert(mac.to_string(), task);
                let path = self.store.data_dir().join(ORDERS_FILE);
                let bytes = serde_json::to_vec(&*passed).expect("a map of numbers");
                if let Err(e) = crate::store::durable::write_atomic(&path, &bytes) {
                    tracing::error!("keeping the orders passed: {e}");
                }
                Ok(())
            }
        }
    }

    /// Applies a heartbeat reply: schedule, orders, assigned images. Orders whose signature
    /// does not verify against the pinned key are set aside, never run, and reported failed.
    pub fn apply(&self, mut reply: HeartbeatReply) {
        self.pin_first(reply.key.as_deref());
        if let Some(new) = reply.book.take() {
            let keys = self.keys();
            let mut book = self.book();
            let refused = book.apply(new, |t| match &keys {
                Some(k) => k
                    .verify(&t.statement(), t.signature.as_deref())
                    .map_err(|e| e.to_string()),
                None => Ok(()),
            });
            for why in refused {
                tracing::error!("site book: {why}; this relay never starts it alone");
            }
            if let Err(e) = book.save(self.store.data_dir()) {
                tracing::error!("keeping the site book: {e}");
            }
        }
        let mut refused = Vec::new();
        if let Some(keys) = self.keys() {
            reply.pushes.retain(|o| {
                match keys.verify(&o.statement(&self.config.site), o.signature.as_deref()) {
                    Ok(()) => true,
                    Err(e) => {
                        let why = format!(
                            "push order {} is refused: {e}; nothing of it is fetched",
                            o.id
                        );
                        tracing::error!("{why}");
                        refused.push((o.id, why));
                        false
                    }
                }
            });
        }
        let zone = Zone::named(&reply.schedule.tz);
        if zone.is_none() {
            tracing::error!(
                "the site's schedule names time zone {:?}, unknown here (the Debian package tzdata installs the zones); keeping the previous zone",
                reply.schedule.tz
            );
        }
        let windows = match Windows::parse(&reply.schedule.windows) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::error!("the site's schedule: {e}; keeping the previous windows");
                None
            }
        };
        let mut site = self.site();
        let changed = site
            .reply
            .as_ref()
            .is_none_or(|old| old.pushes != reply.pushes || old.schedule != reply.schedule);
        if let Some(z) = zone {
            site.zone = z;
        }
        if let Some(w) = windows {
            site.windows = w;
        }
        if changed {
            site.generation += 1;
            tracing::info!(
                "schedule: windows {} ({}), cap {}; {} open push(es)",
                site.windows,
                reply.schedule.tz,
                reply
                    .schedule
                    .rate
                    .map_or("none".to_string(), crate::rate::format_rate),
                reply.pushes.len()
            );
        }
        site.reply = Some(reply);
        let refused_changed = site.refused != refused;
        site.refused = refused;
        drop(site);
        if changed {
            self.changed.notify_all();
        }
        if refused_changed {
            self.heartbeat_now.notify_one();
        }
    }

    /// Wake orders of the site book were sent (id, when): kept in the book (a restart does not
    /// send them again) and told to central by the next heartbeat, now.
    pub fn woke(&self, sent: &[(i64, i64)]) {
        let mut book = self.book();
        book.woken.extend(sent.iter().copied());
        if let Err(e) = book.save(self.store.data_dir()) {
            tracing::error!("keeping the site book: {e}");
        }
        drop(book);
        self.heartbeat_now.notify_one();
    }

    /// Orders and generation now (no orders before the first heartbeat reply).
    pub fn orders(&self) -> (Vec<PushOrder>, u64) {
        let site = self.site();
        let pushes = site
            .reply
            .as_ref()
            .map(|r| r.pushes.clone())
            .unwrap_or_default();
        (pushes, site.generation)
    }

    /// Whether `token` (a lower relay's `x-bootcast-relay-token`, or a staff API token) is a
    /// site's relay token or the API token, as the central server says (asked through the
    /// relays above; a yes is remembered for ten minutes, a no not at all). A header alone
    /// changes nothing: an unknown or wrong token is an ordinary client. `Err` when central
    /// could not answer (unreachable, slow, or failing): that is not a no.
    pub async fn lower_relay(&self, token: &str) -> Result<bool, String> {
        const KEEP: std::time::Duration = std::time::Duration::from_secs(600);
        let key = crate::db::sites::token_hash(token);
        let now = std::time::Instant::now();
        {
            let mut known = self.lower.lock().unwrap_or_else(|p| p.into_inner());
            known.retain(|_, at| now.duration_since(*at) < KEEP);
            if known.contains_key(&key) {
                return Ok(true);
            }
        }
        let url = self.link.url("/api/v1/relay/check");
        let ask = || {
            self.link
                .client
                .get(&url)
                .bearer_auth(token)
                .timeout(std::time::Duration::from_secs(30))
                .send()
        };
        // a pooled connection the far end closed meanwhile fails at once: ask again, once, on
        // a new one (a question with no side effect)
        let resp = match ask().await {
            Err(e) if e.is_request() || e.is_connect() => ask().await,
            r => r,
        }
        .map_err(|e| format!("asking {url}: {e}"))?;
        let status = resp.status();
        if status.is_server_error() {
            return Err(format!("{url} answered {status}"));
        }
        let ok = status.is_success();
        if ok {
            self.lower
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key, now);
        }
        Ok(ok)
    }

    /// The orders prestage runs: central's, and the relay's own repair order if the start-up
    /// check left one (once the site's schedule is known: it runs inside the site's windows).
    pub fn work(&self) -> (Vec<PushOrder>, u64) {
        let (mut orders, generation) = self.orders();
        if self.site().reply.is_some() {
            let repairs = self.repairs.lock().unwrap_or_else(|p| p.into_inner());
            orders.extend(recover::repair_order(&repairs));
        }
        (orders, generation)
    }

    /// The repair order is done: every version it names is complete again.
    pub fn repaired(&self) {
        self.repairs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// The site's cap (bytes/s), if any.
    pub fn site_rate(&self) -> Option<u64> {
        self.site().reply.as_ref().and_then(|r| r.schedule.rate)
    }

    /// Image names assigned to the site (`None` before the first reply).
    pub fn assigned(&self) -> Option<Vec<String>> {
        self.site().reply.as_ref().map(|r| r.assigned.clone())
    }

    pub fn generation(&self) -> u64 {
        self.site().generation
    }

    /// Waits until the orders change (generation other than `seen`), `cancel` is set (see
    /// [`Relay::stop`]) or `timeout` passes.
    pub fn wait_change(&self, seen: u64, timeout: std::time::Duration) {
        let site = self.site();
        if site.generation != seen {
            return;
        }
        let _ = self
            .changed
            .wait_timeout(site, timeout)
            .unwrap_or_else(|p| p.into_inner());
    }

    /// Wakes whatever waits in [`Relay::wait_change`] (the relay stops).
    pub fn stop(&self) {
        let mut site = self.site();
        site.generation += 1;
        drop(site);
        self.changed.notify_all();
    }

    /// Every push's progress, for the heartbeat and `/metrics`; pushes in the orders that
    /// prestage has not looked at yet are `waiting`.
    pub fn progress(&self) -> Vec<PushProgress> {
        let (orders, _) = self.orders();
        let refused = self.site().refused.clone();
        let pushes = self.pushes();
        let mut out: Vec<PushProgress> = orders
            .iter()
            .map(|o| match pushes.get(&o.id) {
                Some(s) => s.snapshot(),
                None => PushStatus::new(o.id).snapshot(),
            })
            .collect();
        out.extend(refused.into_iter().map(|(id, why)| {
            let mut p = PushStatus::new(id).snapshot();
            p.state = PushState::Failed;
            p.detail = Some(why);
            p
        }));
        out
    }

    /// Updates a push's progress; a change of state wakes the heartbeat.
    pub fn update_push(&self, push: i64, f: impl FnOnce(&mut PushProgress)) {
        let mut pushes = self.pushes();
        let s = pushes.entry(push).or_insert_with(|| PushStatus::new(push));
        let before = (s.progress.state, s.progress.detail.clone());
        f(&mut s.progress);
        s.sample();
        let changed = before != (s.progress.state, s.progress.detail.clone());
        drop(pushes);
        if changed {
            self.heartbeat_now.notify_one();
        }
    }

    /// The state prestage last gave push `push`.
    pub fn push_state(&self, push: i64) -> Option<PushState> {
        self.pushes().get(&push).map(|s| s.progress.state)
    }

    /// Forgets pushes no longer in the orders (cancelled or closed upstream).
    pub fn retain_pushes(&self, open: &[i64]) {
        self.pushes().retain(|id, _| open.contains(id));
    }

    /// Compressed bytes received from upstream: chunks (`bootcast_relay_upstream_bytes_total`).
    pub fn upstream_bytes(&self) -> u64 {
        self.link.upstream_bytes.get()
    }
}

/// Per machine, the highest task whose order the relay passed on ([`Relay::check_order`]).
const ORDERS_FILE: &str = "relay/orders.json";

/// Where manifests of versions being prestaged wait until the version is complete.
pub fn pending_dir(data: &Path) -> PathBuf {
    data.join("relay/pending")
}

/// The readable manifests in `dir` (the pending directory); a missing directory, or a file
/// that cannot be read or decoded, is skipped (prestage fetches such a manifest again).
pub fn pending_manifests(dir: &Path) -> Vec<crate::store::Manifest> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|b| crate::store::Manifest::decode(&b).ok().map(|(m, _)| m))
        .collect()
}

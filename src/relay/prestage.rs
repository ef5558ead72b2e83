//! The push worker: brings the versions of the site's open pushes into the relay's store
//! before anyone asks for them, inside the site's windows and under its cap.
//!
//! One thread runs the open, unpaused pushes one at a time (by id). For a push:
//! 1. each version's manifest: the local one if the version is complete, else the pending
//!    copy (`DATA/relay/pending/`), else fetched from upstream and kept there;
//! 2. the push's chunks (distinct, over all its versions): those in the store count as done
//!    (`bytes_done`, compressed), the rest are fetched by [`STREAMS`] streams sharing a
//!    queue, each chunk verified and visible in the store as soon as it arrives
//!    ([`super::pull::fetch_verified`]). A stream asks for a batch of chunks per request
//!    (`POST /chunks/batch`, up to [`BATCH_BYTES`] compressed): with [`STREAMS`] streams,
//!    about 2 MiB are in flight, which covers the bandwidth-delay product of a 100 Mbit link
//!    at 160 ms of round trip (a 1 Gbit one at 16 ms), so the cap is filled at WAN latency;
//!    a kill wastes at most the batch each stream was receiving;
//! 3. once every chunk of a version is in the store, `syncfs`, then its manifest is written:
//!    the version is complete, listed in the heartbeat and offered to clients.
//!
//! Windows: the site's (or the push's own) windows in the site's zone, on the injected clock,
//! are checked before each batch and after every chunk; when a window closes mid-batch the
//! stream stops after the chunk in flight, and the push waits for the next window. The cap:
//! the push's rate (or the site's) is set on the link's one token bucket, which every upstream
//! connection of the relay reads through.
//!
//! Resume: nothing but the store records progress, so a restart (even after `kill -9`), a
//! window that opens again or a link that comes back all start from what the store holds;
//! each stream loses at most the rest of the batch it was receiving. A link that drops (upstream down,
//! connection cut) is retried with backoff (1 s doubling to 30 s), keeping what is stored; a
//! version that is gone upstream, or a chunk that keeps failing verification, fails the push
//! (`failed`, with the reason) and it is tried again 30 s later.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::push::window::Windows;
use crate::retry::Backoff;
use crate::store::source::BATCH_MAX_IDS;
use crate::store::{durable, ChunkId, Manifest, StoreError, VersionId};
use crate::time::Zone;

use super::pull::FetchError;
use super::Relay;
use crate::proto::relay::{PushOrder, PushState, VersionRef};

/// Upstream connections a push uses at once (each loses at most its batch in flight to a
/// kill).
pub const STREAMS: usize = 8;
/// Compressed bytes one stream asks for per request (the last chunk may pass it): what a kill
/// can waste per stream.
pub const BATCH_BYTES: u64 = 256 << 10;
/// Wait after a failure (a version gone upstream, a chunk that keeps failing verification).
const FAILED_RETRY: Duration = Duration::from_secs(30);
/// The waits while upstream cannot be reached: 1 s doubling, at most 30 s.
const UNREACHABLE_RETRY: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
/// How often the worker looks at the clock while it waits.
const TICK: Duration = Duration::from_millis(500);

/// How one run of a push ended.
enum Outcome {
    Done,
    WindowClosed,
    /// The orders changed, or the relay stops.
    Interrupted,
    Unreachable(String),
    Failed(String),
}

/// Runs until `cancel` fires.
pub fn run(relay: Arc<Relay>, cancel: CancellationToken) {
    // per push: not before, and the failures so far (for the backoff)
    let mut retry_at: HashMap<i64, (Instant, u32)> = HashMap::new();
    while !cancel.is_cancelled() {
        let (orders, generation) = relay.work();
        let open: Vec<i64> = orders.iter().map(|o| o.id).collect();
        relay.retain_pushes(&open);
        retry_at.retain(|id, _| open.contains(id));
        if let Err(e) = drop_stale_pending(&relay, &orders) {
            tracing::warn!("prestage: {e}");
        }
        let mut ran = false;
        for order in &orders {
            if cancel.is_cancelled() || relay.generation() != generation {
                break;
            }
            if order.paused {
                relay.update_push(order.id, |p| {
                    p.state = PushState::Paused;
                    p.detail = None;
                });
                continue;
            }
            if retry_at
                .get(&order.id)
                .is_some_and(|(at, _)| Instant::now() < *at)
            {
                continue;
            }
            let (windows, zone, rate) = match schedule(&relay, order) {
                Ok(s) => s,
                Err(e) => {
                    relay.update_push(order.id, |p| {
                        p.state = PushState::Failed;
                        p.detail = Some(e);
                    });
                    continue;
                }
            };
            if already_done(&relay, order) {
                if order.id == super::recover::REPAIR {
                    relay.repaired(); // a push fetched them meanwhile
                }
                continue;
            }
            if !windows.is_open(relay.clock.now(), &zone) {
                relay.update_push(order.id, |p| {
                    if p.state != PushState::Waiting {
                        tracing::info!("push {}: the window is closed; waiting", order.id);
                    }
                    p.state = PushState::Waiting;
                    p.detail = None;
                });
                continue;
            }
            ran = true;
            relay.link.limiter.set(rate.or(relay.site_rate()));
            let outcome = run_push(&relay, order, &windows, &zone, generation, &cancel);
            relay.link.limiter.set(relay.site_rate());
            match outcome {
                Outcome::Done if order.id == super::recover::REPAIR => {
                    retry_at.remove(&order.id);
                    relay.repaired();
                    tracing::info!(
                        "the versions the start-up check found damaged are complete again"
                    );
                }
                Outcome::Done => {
                    retry_at.remove(&order.id);
                    tracing::info!("push {}: every version is complete here", order.id);
                    relay.update_push(order.id, |p| {
                        p.state = PushState::Done;
                        p.detail = None;
                    });
                }
                Outcome::WindowClosed => {
                    tracing::info!("push {}: the window closed; waiting for the next", order.id);
                    relay.update_push(order.id, |p| {
                        p.state = PushState::Waiting;
                        p.detail = None;
                    });
                }
                Outcome::Interrupted => {}
                Outcome::Unreachable(e) => {
                    let failures = retry_at.get(&order.id).map_or(0, |(_, n)| *n);
                    let wait = UNREACHABLE_RETRY.delay(failures);
                    tracing::warn!(
                        "push {}: upstream unreachable ({e}); keeping what is stored, retrying in {}s",
                        order.id,
                        wait.as_secs()
                    );
                    retry_at.insert(
                        order.id,
                        (Instant::now() + wait, failures.saturating_add(1)),
                    );
                    relay.update_push(order.id, |p| {
                        p.detail = Some(format!("upstream unreachable, retrying: {e}"));
                    });
                }
                Outcome::Failed(e) => {
                    tracing::error!(
                        "push {}: {e}; trying again in {}s",
                        order.id,
                        FAILED_RETRY.as_secs()
                    );
                    // the link failing next waits the longest, as after many failures
                    retry_at.insert(order.id, (Instant::now() + FAILED_RETRY, u32::MAX));
                    relay.update_push(order.id, |p| {
                        p.state = PushState::Failed;
                        p.detail = Some(e);
                    });
                }
            }
        }
        if !ran {
            relay.wait_change(generation, TICK);
        }
    }
}

/// The push's windows, the site's zone and the push's own cap (if any).
fn schedule(relay: &Relay, order: &PushOrder) -> Result<(Windows, Zone, Option<u64>), String> {
    let site = relay.site();
    let windows = match &order.windows {
        Some(w) => Windows::parse(w)?,
        None => site.windows.clone(),
    };
    Ok((windows, site.zone.clone(), order.rate))
}

fn version_id(v: &VersionRef) -> Option<VersionId> {
    (v.version.len() == 64)
        .then(|| v.version.parse().ok())
        .flatten()
}

/// The manifest of `v` if it is complete here (that one file read).
fn local_manifest(relay: &Relay, v: &VersionRef) -> Option<Manifest> {
    relay
        .store
        .load_version(&v.image, &version_id(v)?)
        .ok()
        .flatten()
}

/// True (and the push marked done, with its totals) when every version is complete here.
/// A push already marked done costs one `stat` per version.
fn already_done(relay: &Relay, order: &PushOrder) -> bool {
    let all_there = order
        .versions
        .iter()
        .all(|v| version_id(v).is_some_and(|id| relay.store.version_path(&v.image, &id).exists()));
    if !all_there {
        return false;
    }
    if relay.push_state(order.id) == Some(PushState::Done) {
        return true;
    }
    let mut total = 0;
    let mut seen = HashSet::new();
    for v in &order.versions {
        let Some(m) = local_manifest(relay, v) else {
            return false;
        };
        for (_, id, c) in m.chunks() {
            if seen.insert(id) {
                total += u64::from(c);
            }
        }
    }
    relay.update_push(order.id, |p| {
        p.state = PushState::Done;
        p.detail = None;
        p.bytes_total = total;
        p.bytes_done = total;
    });
    true
}

fn pending_path(relay: &Relay, v: &VersionRef) -> std::path::PathBuf {
    super::pending_dir(relay.store.data_dir()).join(format!("{}@{}.bcm", v.image, v.version))
}

/// Where the central server's signature of a version is kept (`DATA/relay/signatures/`).
fn signature_path(relay: &Relay, image: &str, version: &str) -> std::path::PathBuf {
    relay
        .store
        .data_dir()
        .join("relay/signatures")
        .join(format!("{image}@{version}.sig"))
}

/// The central server's signature of `image@version` as prestage kept it (`None`: a version
/// prestaged before signatures, or by a relay without a key).
pub fn kept_signature(relay: &Relay, image: &str, version: &str) -> Option<String> {
    std::fs::read_to_string(signature_path(relay, image, version))
        .ok()
        .map(|s| s.trim().to_string())
}

/// The manifest of a version not complete here: the pending copy, else from upstream (then
/// kept as the pending copy).
fn pending_manifest(relay: &Relay, v: &VersionRef) -> Result<Manifest, Outcome> {
    crate::store::catalog::validate_name(&v.image)
        .map_err(|e| Outcome::Failed(format!("push names {}: {e}", v.image)))?;
    if version_id(v).is_none() {
        return Err(Outcome::Failed(format!(
            "push names version {:?} of {}: not a full version id",
            v.version, v.image
        )));
    }
    let path = pending_path(relay, v);
    if let Ok(bytes) = std::fs::read(&path) {
        match Manifest::decode(&bytes) {
            Ok((m, id)) if id.to_hex() == v.version => return Ok(m),
            _ => {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    let spec = format!("{}@{}", v.image, v.version);
    let (m, id, sig) = relay
        .link
        .source
        .manifest_signed(&spec)
        .map_err(|e| match e {
            StoreError::Unreachable { .. } => Outcome::Unreachable(e.to_string()),
            e => Outcome::Failed(format!(
                "version {} of {} cannot be had from upstream: {e}",
                v.version, v.image
            )),
        })?;
    if id.to_hex() != v.version {
        return Err(Outcome::Failed(format!(
            "upstream sent version {id} for {spec}"
        )));
    }
    // the central server published this version: its signature, kept and passed on
    if let Some(keys) = relay.keys() {
        let st = crate::sign::Statement::Published {
            image: &v.image,
            version: &v.version,
            created: m.created,
        };
        keys.verify(&st, sig.as_deref()).map_err(|e| {
            Outcome::Failed(format!(
                "the manifest of {spec} is refused: {e}; nothing of it is fetched"
            ))
        })?;
    }
    if let Some(sig) = &sig {
        let sp = signature_path(relay, &v.image, &v.version);
        durable::create_dir_durable(sp.parent().expect("in a directory"))
            .and_then(|()| durable::write_atomic(&sp, sig.as_bytes()))
            .map_err(|e| Outcome::Failed(format!("keeping the signature of {spec}: {e}")))?;
    }
    durable::write_atomic(&path, &m.encode())
        .map_err(|e| Outcome::Failed(format!("keeping the manifest of {spec}: {e}")))?;
    Ok(m)
}

/// Removes pending manifests of versions no open push names.
fn drop_stale_pending(relay: &Relay, orders: &[PushOrder]) -> std::io::Result<()> {
    if relay.assigned().is_none() {
        return Ok(()); // no orders known yet
    }
    let wanted: HashSet<String> = orders
        .iter()
        .flat_map(|o| o.versions.iter())
        .map(|v| format!("{}@{}.bcm", v.image, v.version))
        .collect();
    for entry in std::fs::read_dir(super::pending_dir(relay.store.data_dir()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !wanted.contains(&name) {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// Whether a stream must stop, and why (the first reason wins).
#[derive(Default)]
struct Stop {
    flag: AtomicBool,
    why: Mutex<Option<Outcome>>,
}

impl Stop {
    fn set(&self, o: Outcome) {
        let mut w = self.why.lock().unwrap_or_else(|p| p.into_inner());
        if w.is_none() {
            *w = Some(o);
        }
        self.flag.store(true, Ordering::Relaxed);
    }

    fn is_set(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }
}

/// One run of a push while its window is open.
fn run_push(
    relay: &Relay,
    order: &PushOrder,
    windows: &Windows,
    zone: &Zone,
    generation: u64,
    cancel: &CancellationToken,
) -> Outcome {
    relay.update_push(order.id, |p| {
        if p.state != PushState::Running {
            tracing::info!("push {}: the window is open; fetching", order.id);
        }
        p.state = PushState::Running;
        p.detail = None;
    });
    // 1. manifests
    let mut versions: Vec<(VersionRef, Manifest, bool)> = Vec::new();
    for v in &order.versions {
        match local_manifest(relay, v) {
            Some(m) => versions.push((v.clone(), m, true)),
            None => match pending_manifest(relay, v) {
                Ok(m) => versions.push((v.clone(), m, false)),
                Err(o) => return o,
            },
        }
    }
    // 2. chunks: distinct, in the order the versions name them
    let mut seen = HashSet::new();
    let mut total = 0u64;
    let mut done = 0u64;
    let mut lacking: Vec<(ChunkId, u64)> = Vec::new();
    for (_, m, _) in &versions {
        for (_, id, c) in m.chunks() {
            if !seen.insert(id) {
                continue;
            }
            let c = u64::from(c);
            total += c;
            if relay.store.chunk_path(&id).exists() {
                done += c;
            } else {
                lacking.push((id, c));
            }
        }
    }
    relay.update_push(order.id, |p| {
        p.bytes_total = total;
        p.bytes_done = done;
    });
    let open = || windows.is_open(relay.clock.now(), zone);
    let stop = Stop::default();
    let check = |stop: &Stop| {
        if cancel.is_cancelled() || relay.generation() != generation {
            stop.set(Outcome::Interrupted);
        } else if !open() {
            stop.set(Outcome::WindowClosed);
        }
        stop.is_set()
    };
    if !lacking.is_empty() {
        let queue: Mutex<VecDeque<(ChunkId, u64)>> = Mutex::new(lacking.iter().copied().collect());
        std::thread::scope(|s| {
            for _ in 0..STREAMS {
                s.spawn(|| loop {
                    if check(&stop) {
                        return;
                    }
                    let batch: Vec<ChunkId> = {
                        let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
                        let mut bytes = 0;
                        let mut batch = Vec::new();
                        while bytes < BATCH_BYTES && batch.len() < BATCH_MAX_IDS {
                            let Some((id, c)) = q.pop_front() else { break };
                            bytes += c;
                            batch.push(id);
                        }
                        batch
                    };
                    if batch.is_empty() {
                        return;
                    }
                    // through the relay's one in-flight table: a chunk a client is pulling
                    // through right now is waited for, not fetched twice
                    let r = relay.pull.fetch(&batch, &mut |_, len| {
                        relay.update_push(order.id, |p| {
                            p.bytes_done += len;
                            p.fetched += len;
                        });
                        if check(&stop) {
                            ControlFlow::Break(())
                        } else {
                            ControlFlow::Continue(())
                        }
                    });
                    if let Ok(f) = &r {
                        let by_others: u64 = f.by_others.iter().map(|(_, len)| len).sum();
                        relay.update_push(order.id, |p| p.bytes_done += by_others);
                    }
                    match r {
                        Ok(f) if !f.missing.is_empty() => {
                            stop.set(Outcome::Failed(format!(
                                "upstream lacks chunk {} of the push's versions; run `bootcast store verify` there",
                                f.missing[0]
                            )));
                        }
                        Ok(_) => {}
                        Err(FetchError::Unreachable(e)) => stop.set(Outcome::Unreachable(e)),
                        Err(e) => stop.set(Outcome::Failed(e.to_string())),
                    }
                });
            }
        });
    }
    if let Some(o) = stop.why.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return o;
    }
    // 3. versions whose chunks are all here become complete
    if let Err(e) = durable::sync_filesystem(&relay.store.data_dir().join("store")) {
        return Outcome::Failed(e.to_string());
    }
    for (v, m, complete) in &versions {
        if *complete {
            continue;
        }
        if let Some((_, id, _)) = m
            .chunks()
            .find(|(_, id, _)| !relay.store.chunk_path(id).exists())
        {
            // evicted or lost meanwhile: the next run fetches it
            return Outcome::Failed(format!(
                "chunk {id} of {}@{} went missing from the store",
                v.image, v.version
            ));
        }
        if let Err(e) = relay.store.write_manifest(m) {
            return Outcome::Failed(format!("writing the manifest of {}: {e}", v.image));
        }
        let _ = std::fs::remove_file(pending_path(relay, v));
        tracing::info!("version {} of {} is complete here", v.version, v.image);
    }
    Outcome::Done
}

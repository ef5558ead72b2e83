//! Pull-through: a chunk the relay's store lacks is fetched from upstream, verified, stored
//! and then served; concurrent misses of one chunk share one upstream fetch.
//!
//! [`fetch_verified`] is the one way chunks enter a relay's store (prestage uses it too): each
//! frame is decompressed and its BLAKE3 checked against the id asked for; a frame that does
//! not match is rejected (counted in `bootcast_relay_chunks_rejected_total`, never stored) and
//! asked for again, at most [`ATTEMPTS`] times in all, then the error names the chunk. A
//! verified frame is written to a temp file beside its final name and renamed into place at
//! once, without fsync: the store is a cache, every read rehashes, and a kill loses at most
//! the chunk in flight. (Only a version's manifest is written durably, after a `syncfs`; see
//! [`super::prestage`].)
//!
//! Coalescing: [`Puller`] keeps one in-flight entry per chunk being fetched, for the prestage
//! and pull-through alike; a request that finds its chunk in flight waits for that fetch's
//! outcome instead of asking upstream again (`bootcast_relay_pulls_coalesced_total` counts
//! them), and fetches it itself if that fetch stopped first.

use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use crate::metrics::Counter;
use crate::store::source::Decoder;
use crate::store::PullThrough;
use crate::store::{ChunkId, Store, StoreError};

use super::upstream::Link;

/// Fetches of one chunk before its rejection becomes an error.
pub const ATTEMPTS: u32 = 3;

/// Largest plain chunk accepted (the chunker's largest maximum).
const MAX_CHUNK: usize = 16 << 20;

/// Why chunks could not be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    #[error("chunk {id} from {url} failed verification {ATTEMPTS} times ({reason}); run `bootcast store verify` upstream to list the affected versions")]
    Corrupt {
        id: ChunkId,
        url: String,
        reason: String,
    },
    /// Upstream down or the link cut: worth trying again later.
    #[error("{0}")]
    Unreachable(String),
    #[error("{0}")]
    Other(String),
}

/// What a [`fetch_verified`] did.
#[derive(Debug, Default)]
pub struct Fetched {
    /// Chunks the upstream lacks.
    pub missing: Vec<ChunkId>,
    /// `on_stored` stopped it.
    pub stopped: bool,
}

/// Fetches `ids` from upstream in one batch request (more if frames are rejected or the
/// connection breaks), verifies and stores each frame as it arrives, and calls `on_stored`
/// with each stored chunk's id and compressed size; `on_stored` may stop the transfer (the
/// chunk in flight is the last).
pub fn fetch_verified(
    link: &Link,
    store: &Store,
    ids: &[ChunkId],
    on_stored: &mut dyn FnMut(ChunkId, u64) -> ControlFlow<()>,
) -> Result<Fetched, FetchError> {
    DECODER.with_borrow_mut(|decoder| {
        let decoder = decoder.get_or_insert_with(|| Decoder::new(MAX_CHUNK));
        fetch_with(link, store, decoder, ids, on_stored)
    })
}

thread_local! {
    /// One decompressor per thread, reused from chunk to chunk.
    static DECODER: std::cell::RefCell<Option<Decoder>> = const { std::cell::RefCell::new(None) };
}

fn fetch_with(
    link: &Link,
    store: &Store,
    decoder: &mut Decoder,
    ids: &[ChunkId],
    on_stored: &mut dyn FnMut(ChunkId, u64) -> ControlFlow<()>,
) -> Result<Fetched, FetchError> {
    let mut out = Fetched::default();
    let mut pending: Vec<ChunkId> = ids.to_vec();
    let mut attempts: HashMap<ChunkId, (u32, String)> = HashMap::new();
    while !pending.is_empty() {
        let mut rejected: Vec<ChunkId> = Vec::new();
        let mut seen = 0usize;
        let mut failed: Option<FetchError> = None;
        let r = link.source.fetch_each(&pending, &mut |id, frame| {
            seen += 1;
            let len = frame.len() as u64;
            link.upstream_bytes.inc_by(len);
            match store_frame(store, decoder, id, &frame) {
                Ok(()) => {
                    link.cache_bytes.inc_by(len);
                    let flow = on_stored(id, len);
                    out.stopped = flow.is_break();
                    flow
                }
                Err(Stored::Corrupt(reason)) => {
                    link.rejected.inc();
                    tracing::warn!("chunk {id} from {}: {reason}; rejected", link.base);
                    let a = attempts.entry(id).or_insert((0, String::new()));
                    a.0 += 1;
                    a.1 = reason;
                    rejected.push(id);
                    ControlFlow::Continue(())
                }
                Err(Stored::Io(e)) => {
                    failed = Some(FetchError::Other(format!("storing chunk {id}: {e}")));
                    ControlFlow::Break(())
                }
            }
        });
        if let Some(e) = failed {
            return Err(e);
        }
        if out.stopped {
            return Ok(out);
        }
        let mut next: Vec<ChunkId> = Vec::new();
        match r {
            Ok(_) => {}
            Err(StoreError::RemoteChunkMissing { id, .. }) => {
                // frames come in order: the missing one follows the `seen` delivered
                out.missing.push(id);
                next.extend(pending.iter().skip(seen + 1));
            }
            Err(e @ StoreError::Unreachable { .. }) => {
                return Err(FetchError::Unreachable(e.to_string()))
            }
            Err(e) => return Err(FetchError::Other(e.to_string())),
        }
        for id in rejected {
            let (n, reason) = &attempts[&id];
            if *n >= ATTEMPTS {
                return Err(FetchError::Corrupt {
                    id,
                    url: link.url(&format!("/chunks/{id}")),
                    reason: reason.clone(),
                });
            }
            next.push(id);
        }
        pending = next;
    }
    Ok(out)
}

enum Stored {
    Corrupt(String),
    Io(StoreError),
}

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Prefix of the relay's temp chunk files (`.relay-PID-SEQ.ID`), removed at start.
const TEMP_PREFIX: &str = ".relay-";

/// Verifies `frame` as chunk `id` and puts it in the store (temp file, rename).
fn store_frame(
    store: &Store,
    decoder: &mut Decoder,
    id: ChunkId,
    frame: &[u8],
) -> Result<(), Stored> {
    decoder.decode(&id, frame).map_err(Stored::Corrupt)?;
    let dest = store.chunk_path(&id);
    let dir = dest.parent().expect("a chunk path has a parent");
    let tmp = dir.join(format!(
        "{TEMP_PREFIX}{}-{}.{id}",
        std::process::id(),
        TEMP_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let io = |what: &'static str, path: &std::path::Path| {
        let path = path.to_path_buf();
        move |cause| Stored::Io(StoreError::Io { what, path, cause })
    };
    let write = |tmp: &std::path::Path| std::fs::write(tmp, frame);
    match write(&tmp) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(io("creating chunk directory", dir))?;
            write(&tmp)
        }
        r => r,
    }
    .map_err(io("writing chunk file", &tmp))?;
    std::fs::rename(&tmp, &dest).map_err(|cause| {
        let _ = std::fs::remove_file(&tmp);
        Stored::Io(StoreError::Io {
            what: "publishing chunk",
            path: dest.clone(),
            cause,
        })
    })
}

/// Removes temp chunk files a killed relay left.
pub fn remove_temp_files(store: &Store) -> Result<usize, StoreError> {
    let mut removed = 0;
    store.for_each_chunk_entry(|entry| {
        if entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(TEMP_PREFIX))
            && std::fs::remove_file(entry.path()).is_ok()
        {
            removed += 1;
        }
        Ok(())
    })?;
    Ok(removed)
}

/// How one chunk's fetch ended, for the requests that waited for it.
#[derive(Clone, Debug)]
enum Settled {
    /// In the store.
    Stored,
    /// Upstream lacks it.
    Lacking,
    /// Its fetcher stopped before it (a prestage whose window closed or whose orders
    /// changed): a waiter fetches it itself.
    Abandoned,
    /// The fetch failed: a waiter fails the same way (an unreachable upstream stays
    /// "unreachable", so a prestage waits for the link rather than failing its push).
    Failed(FetchError),
}

/// One chunk being fetched: its outcome once known.
#[derive(Default)]
struct Flight {
    outcome: Mutex<Option<Settled>>,
    done: Condvar,
}

impl Flight {
    fn finish(&self, outcome: Settled) {
        *self.outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome);
        self.done.notify_all();
    }

    fn wait(&self) -> Settled {
        let mut g = self.outcome.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(o) = g.as_ref() {
                return o.clone();
            }
            g = self.done.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// What [`Puller::fetch`] did.
#[derive(Debug, Default)]
pub struct Pulled {
    /// Chunks upstream lacks.
    pub missing: Vec<ChunkId>,
    /// Chunks another fetch brought (or the store already held), with their sizes: in the
    /// store now, not fetched by this call.
    pub by_others: Vec<(ChunkId, u64)>,
    /// `on_stored` stopped it.
    pub stopped: bool,
}

/// Every fetch from upstream into the relay's store: pull-through for clients and the
/// prestage. One in-flight entry per chunk: a request that finds its chunk being fetched
/// (by a client's request or the prestage) waits for that fetch instead of asking upstream
/// again, so a chunk crosses the WAN once however many ask for it at the same time.
pub struct Puller {
    store: Store,
    link: Arc<Link>,
    inflight: Mutex<HashMap<ChunkId, Arc<Flight>>>,
    /// Requests for a chunk already being fetched that waited for that fetch.
    pub coalesced: Counter,
    /// Chunks fetched and stored for clients.
    pub pulled: Counter,
}

impl Puller {
    pub fn new(store: Store, link: Arc<Link>) -> Puller {
        Puller {
            store,
            link,
            inflight: Mutex::new(HashMap::new()),
            coalesced: Counter::default(),
            pulled: Counter::default(),
        }
    }

    /// Brings `ids` into the store for a client; returns those upstream lacks. Blocking.
    pub fn pull_ids(&self, ids: &[ChunkId]) -> Result<Vec<ChunkId>, String> {
        let r = self.fetch(ids, &mut |_, _| {
            self.pulled.inc();
            ControlFlow::Continue(())
        });
        r.map(|p| p.missing).map_err(|e| e.to_string())
    }

    /// Brings `ids` into the store: the chunks nobody is fetching are fetched here (one batch
    /// request), calling `on_stored` for each as it is stored (it may stop the transfer);
    /// chunks in flight elsewhere are waited for. Blocking.
    pub fn fetch(
        &self,
        ids: &[ChunkId],
        on_stored: &mut dyn FnMut(ChunkId, u64) -> ControlFlow<()>,
    ) -> Result<Pulled, FetchError> {
        let mut out = Pulled::default();
        let mut todo: Vec<ChunkId> = {
            let mut seen = HashSet::new();
            ids.iter().copied().filter(|id| seen.insert(*id)).collect()
        };
        // a waiter becomes the fetcher of what its fetcher abandoned: bounded rounds
        for _ in 0..=ATTEMPTS {
            if todo.is_empty() {
                return Ok(out);
            }
            let (lead, follow) = self.claim(&todo, &mut out);
            let mut failure = None;
            if !lead.is_empty() {
                let res = fetch_verified(&self.link, &self.store, &lead, on_stored);
                let lacking: HashSet<ChunkId> = match &res {
                    Ok(f) => f.missing.iter().copied().collect(),
                    Err(_) => HashSet::new(),
                };
                self.settle(&lead, &lacking, res.as_ref().err());
                out.missing
                    .extend(lead.iter().filter(|id| lacking.contains(id)));
                match res {
                    Ok(f) if f.stopped => {
                        out.stopped = true;
                        return Ok(out);
                    }
                    Ok(_) => {}
                    Err(e) => failure = Some(e),
                }
            }
            let mut again = Vec::new();
            for (id, flight) in follow {
                match flight.wait() {
                    Settled::Stored => {
                        let len = self.store.chunk_size(&id).ok().flatten().unwrap_or(0);
                        out.by_others.push((id, len));
                    }
                    Settled::Lacking => out.missing.push(id),
                    Settled::Abandoned => again.push(id),
                    Settled::Failed(e) => {
                        failure.get_or_insert(e);
                    }
                }
            }
            if let Some(e) = failure {
                return Err(e);
            }
            todo = again;
        }
        Err(FetchError::Other(format!(
            "chunk {} could not be had from {}: its fetches kept being abandoned",
            todo[0], self.link.base
        )))
    }

    /// Splits `ids` into those this caller fetches (now in flight, led by it) and those in
    /// flight elsewhere; those already stored go to `out.by_others`.
    fn claim(
        &self,
        ids: &[ChunkId],
        out: &mut Pulled,
    ) -> (Vec<ChunkId>, Vec<(ChunkId, Arc<Flight>)>) {
        let mut lead = Vec::new();
        let mut follow = Vec::new();
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        for id in ids {
            if let Some(f) = inflight.get(id) {
                self.coalesced.inc();
                follow.push((*id, f.clone()));
            } else if let Ok(Some(len)) = self.store.chunk_size(id) {
                // a fetcher stores its chunk before it leaves `inflight`: checked under the
                // lock, a chunk is either in flight or settled
                out.by_others.push((*id, len));
            } else {
                inflight.insert(*id, Arc::new(Flight::default()));
                lead.push(*id);
            }
        }
        (lead, follow)
    }

    /// Ends the flights of `lead` and wakes their waiters.
    fn settle(&self, lead: &[ChunkId], lacking: &HashSet<ChunkId>, error: Option<&FetchError>) {
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        for id in lead {
            let outcome = if lacking.contains(id) {
                Settled::Lacking
            } else if self.store.chunk_path(id).exists() {
                Settled::Stored
            } else if let Some(e) = error {
                Settled::Failed(e.clone())
            } else {
                Settled::Abandoned
            };
            if let Some(f) = inflight.remove(id) {
                f.finish(outcome);
            }
        }
    }
}

impl PullThrough for Puller {
    fn pull(&self, ids: &[ChunkId]) -> Result<Vec<ChunkId>, String> {
        self.pull_ids(ids)
    }
}

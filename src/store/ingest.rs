//! Ingest: source bytes → zero runs and chunks → hash + compress in parallel → store → manifest.
//!
//! One thread reads and cuts (the chunker), `threads` workers hash, look up, compress and write,
//! and the calling thread puts results back in order, publishes batches and commits. Channels
//! are bounded, so memory stays near `(2 × threads + 4) × max chunk` plus the read buffer.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use super::catalog::validate_name;
use super::chunker::{is_zero, Chunker, Piece};
use super::error::{IoContext, Result, StoreError};
use super::id::{ChunkId, VersionId};
use super::manifest::{ExtentKind, ExtentList, Manifest};
use super::session::Session;
use super::Store;

#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// zstd level; `None` takes the store's default.
    pub level: Option<i32>,
    pub threads: usize,
    /// Publish new chunks after this many compressed bytes (a crash keeps what was published).
    pub batch_bytes: u64,
}

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions {
            level: None,
            threads: default_threads(),
            batch_bytes: 64 << 20,
        }
    }
}

pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct IngestReport {
    pub name: String,
    pub version: VersionId,
    /// Image size in bytes.
    pub size: u64,
    /// Compressed bytes of all distinct chunks this version uses.
    pub stored_bytes: u64,
    /// Compressed bytes this ingest added to the store.
    pub new_bytes: u64,
    pub chunks: usize,
    pub new_chunks: usize,
    pub zero_bytes: u64,
}

/// What a worker learned about one piece.
enum Done {
    Zero {
        len: u64,
    },
    Chunk {
        len: u64,
        id: ChunkId,
        /// Set when this worker wrote the chunk: its temp file and compressed size.
        written: Option<(PathBuf, u32)>,
    },
}

#[derive(Clone, Copy)]
enum Known {
    /// Another worker is compressing it; its size is filled in before commit.
    InFlight,
    Stored(u32),
    New(u32),
}

/// Reads `src` to the end and stores it as a new version of image `name`.
pub fn ingest<R: Read + Send>(
    store: &Store,
    name: &str,
    src: R,
    source_label: &str,
    opts: &IngestOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<IngestReport> {
    validate_name(name)?;
    let level = opts.level.unwrap_or(store.config().zstd_level);
    let params = store.config().chunker;
    let threads = opts.threads.max(1);
    let session = Session::begin(store)?;
    let known: Mutex<HashMap<ChunkId, Known>> = Mutex::new(HashMap::new());
    let abort = AtomicBool::new(false);

    // Pieces travel in batches (about 1 MiB) so the threads hand over work rarely.
    let (job_tx, job_rx) = mpsc::sync_channel::<(u64, Vec<Piece>)>(threads * 2);
    let job_rx = Mutex::new(job_rx);
    let (done_tx, done_rx) = mpsc::sync_channel::<Result<(u64, Vec<Done>)>>(threads * 2 + 2);

    let mut extents = ExtentList::default();
    let mut batch: Vec<(ChunkId, PathBuf)> = Vec::new();
    let mut batch_bytes = 0u64;
    let mut first_error: Option<StoreError> = None;

    std::thread::scope(|scope| {
        // Chunker: the only reader of the source.
        let tx = done_tx.clone();
        let abort_ref = &abort;
        scope.spawn(move || {
            // Reads stop as soon as the ingest fails, even inside a long zero run.
            let src = CancelOnAbort {
                inner: src,
                abort: abort_ref,
            };
            let mut chunker = Chunker::new(src, params);
            let mut batch_no = 0u64;
            let (mut batch, mut batch_len) = (Vec::new(), 0usize);
            while !abort_ref.load(Ordering::Relaxed) {
                let piece = match chunker.next_piece() {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.send(Err(e).ctx("reading source", source_label));
                        break;
                    }
                };
                let end = piece.is_none();
                // Zero runs count too, so pieces never wait behind a long run of zeros.
                batch_len += match &piece {
                    Some(Piece::Data { bytes, .. }) => bytes.len(),
                    Some(Piece::Zero { len, .. }) => *len as usize,
                    None => 0,
                };
                batch.extend(piece);
                if (end && !batch.is_empty()) || batch_len >= 1 << 20 || batch.len() >= 32 {
                    if job_tx.send((batch_no, std::mem::take(&mut batch))).is_err() {
                        break;
                    }
                    batch_no += 1;
                    batch_len = 0;
                }
                if end {
                    break;
                }
            }
        });
        for _ in 0..threads {
            let tx = done_tx.clone();
            let (job_rx, known, session, abort) = (&job_rx, &known, &session, &abort);
            scope.spawn(move || {
                let mut zstd = zstd::bulk::Compressor::new(level).expect("zstd level checked");
                // After an abort, keep draining so the chunker never blocks on a full channel.
                loop {
                    let job = job_rx.lock().unwrap().recv();
                    let Ok((batch_no, pieces)) = job else { break };
                    if abort.load(Ordering::Relaxed) {
                        continue;
                    }
                    let result: Result<Vec<Done>> = pieces
                        .into_iter()
                        .map(|piece| process(piece, store, session, known, &mut zstd))
                        .collect();
                    let failed = result.is_err();
                    if tx.send(result.map(|d| (batch_no, d))).is_err() || failed {
                        abort.store(true, Ordering::Relaxed);
                    }
                }
            });
        }
        drop(done_tx);

        // Publisher: makes batches durable and renames them into place while the pipeline
        // goes on, so the disk flush overlaps hashing and compression.
        let (publish_tx, publish_rx) = mpsc::sync_channel::<Vec<(ChunkId, PathBuf)>>(1);
        let session_ref = &session;
        let abort_pub = &abort;
        let publisher = scope.spawn(move || -> Result<()> {
            for mut batch in publish_rx.iter() {
                if let Err(e) = session_ref.publish(&mut batch) {
                    abort_pub.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
            Ok(())
        });

        // Collector: put results back in order; publish in batches.
        let mut pending: BTreeMap<u64, Vec<Done>> = BTreeMap::new();
        let mut next = 0u64;
        for result in done_rx.iter() {
            let (batch_no, done) = match result {
                Ok(v) => v,
                Err(e) => {
                    abort.store(true, Ordering::Relaxed);
                    first_error.get_or_insert(e);
                    continue;
                }
            };
            pending.insert(batch_no, done);
            while let Some(dones) = pending.remove(&next) {
                next += 1;
                for done in dones {
                    match done {
                        Done::Zero { len } => {
                            extents.push_zero(len);
                            progress(len);
                        }
                        Done::Chunk { len, id, written } => {
                            extents.push_chunk(len, id, 0);
                            progress(len);
                            if let Some((tmp, compressed)) = written {
                                batch_bytes += u64::from(compressed);
                                batch.push((id, tmp));
                            }
                        }
                    }
                }
            }
            if batch_bytes >= opts.batch_bytes && first_error.is_none() {
                // Hand the batch to the publisher; if it failed, its error ends the ingest.
                if publish_tx.send(std::mem::take(&mut batch)).is_err() {
                    abort.store(true, Ordering::Relaxed);
                }
                batch_bytes = 0;
            }
        }
        drop(publish_tx);
        if let Err(e) = publisher.join().expect("publisher thread") {
            abort.store(true, Ordering::Relaxed);
            first_error.get_or_insert(e);
        }
    });
    if let Some(e) = first_error {
        return Err(e);
    }
    session.publish(&mut batch)?;

    // Fill in compressed sizes and totals.
    let known = known.into_inner().unwrap();
    let size = extents.size();
    let mut extents = extents.into_extents();
    let (mut stored_bytes, mut new_bytes, mut new_chunks) = (0u64, 0u64, 0usize);
    for state in known.values() {
        match *state {
            Known::Stored(n) => stored_bytes += u64::from(n),
            Known::New(n) => {
                stored_bytes += u64::from(n);
                new_bytes += u64::from(n);
                new_chunks += 1;
            }
            Known::InFlight => unreachable!("every worker finished"),
        }
    }
    let mut zero_bytes = 0;
    for e in extents.iter_mut() {
        match &mut e.kind {
            ExtentKind::Chunk { id, compressed } => {
                *compressed = match known[id] {
                    Known::Stored(n) | Known::New(n) => n,
                    Known::InFlight => unreachable!(),
                }
            }
            ExtentKind::Zero => zero_bytes += e.len,
        }
    }
    let manifest = Manifest {
        name: name.to_string(),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64),
        params,
        size,
        extents,
    };
    let version = session.commit(&manifest)?;
    Ok(IngestReport {
        name: name.to_string(),
        version,
        size,
        stored_bytes,
        new_bytes,
        chunks: known.len(),
        new_chunks,
        zero_bytes,
    })
}

struct CancelOnAbort<'a, R> {
    inner: R,
    abort: &'a AtomicBool,
}

impl<R: Read> Read for CancelOnAbort<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.abort.load(Ordering::Relaxed) {
            return Err(std::io::Error::other(
                "ingest cancelled after an earlier error",
            ));
        }
        self.inner.read(buf)
    }
}

fn process(
    piece: Piece,
    store: &Store,
    session: &Session,
    known: &Mutex<HashMap<ChunkId, Known>>,
    zstd: &mut zstd::bulk::Compressor,
) -> Result<Done> {
    let bytes = match piece {
        Piece::Zero { len, .. } => return Ok(Done::Zero { len }),
        Piece::Data { bytes, .. } => bytes,
    };
    let len = bytes.len() as u64;
    if is_zero(&bytes) {
        return Ok(Done::Zero { len });
    }
    let id = ChunkId::of(&bytes);
    {
        let mut known = known.lock().unwrap();
        if known.contains_key(&id) {
            return Ok(Done::Chunk {
                len,
                id,
                written: None,
            });
        }
        known.insert(id, Known::InFlight);
    }
    session.claim(&id)?;
    if let Some(stored) = store.chunk_size(&id)? {
        known
            .lock()
            .unwrap()
            .insert(id, Known::Stored(stored as u32));
        return Ok(Done::Chunk {
            len,
            id,
            written: None,
        });
    }
    let compressed = zstd
        .compress(&bytes)
        .map_err(|e| StoreError::Target(format!("zstd compression failed: {e}")))?;
    let tmp = session.write_temp(&id, &compressed)?;
    known
        .lock()
        .unwrap()
        .insert(id, Known::New(compressed.len() as u32));
    Ok(Done::Chunk {
        len,
        id,
        written: Some((tmp, compressed.len() as u32)),
    })
}

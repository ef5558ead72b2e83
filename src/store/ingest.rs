//! Ingest: source bytes → zero runs and chunks → hash + compress in parallel → a sink → manifest.
//!
//! One thread reads and cuts (the chunker), `threads` workers hash, look up, compress and write,
//! and the calling thread puts results back in order, publishes batches and commits. Channels
//! are bounded, so memory stays near `(3 × threads + 2)` batches of pieces plus the read buffer
//! (a batch is about 1 MiB for the local store).
//!
//! Where chunks go is a [`ChunkSink`]: the local store ([`LocalSink`], `bootcast image add`) or
//! a server (the agent's capture, `crate::agent::capture`). Whatever the sink, the cut, the
//! hashing and the compression are this one pipeline, so the same bytes give the same manifest
//! and the same version id. A sink is asked about a worker's whole batch of chunk ids at once
//! (one round trip per batch for a server) and is handed only the chunks it lacks.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use super::catalog::validate_name;
use super::chunker::{is_zero, Chunker, ChunkerParams, Piece};
use super::error::{IoContext, Result, StoreError};
use super::id::{ChunkId, VersionId};
use super::manifest::{ExtentKind, ExtentList, Manifest};
use super::session::Session;
use super::Store;
use crate::fsmap::{DiskMap, PartReport};

/// Where an ingest puts its chunks and its manifest.
///
/// The pipeline calls [`lookup`](Self::lookup) and [`put`](Self::put) from its worker threads,
/// [`publish`](Self::publish) from its publisher thread and [`commit`](Self::commit) once at
/// the end, after every chunk was published.
pub trait ChunkSink: Sync {
    /// What a chunk written but not yet published leaves for [`publish`](Self::publish)
    /// (the local store: its temp file).
    type Written: Send;

    /// The chunker parameters chunks are cut with (they decide chunk and version ids).
    fn params(&self) -> ChunkerParams;

    /// The zstd level new chunks are compressed at unless the caller names one.
    fn default_level(&self) -> i32;

    /// How the chunker groups pieces for one worker: (bytes, pieces). One batch is one
    /// [`lookup`](Self::lookup) and at most one [`put`](Self::put).
    fn batch_size(&self) -> (usize, usize) {
        (1 << 20, 32)
    }

    /// For each of `ids` (distinct, and new to this ingest), in order: its compressed size if
    /// the sink already holds it, else `None`. A chunk reported held must stay until
    /// [`commit`](Self::commit) (the local store claims it in its session first).
    fn lookup(&self, ids: &[ChunkId]) -> Result<Vec<Option<u32>>>;

    /// Stores chunks the sink lacks, as compressed zstd frames. Returns, per chunk, what
    /// [`publish`](Self::publish) needs.
    fn put(&self, chunks: &[(ChunkId, Vec<u8>)]) -> Result<Vec<Self::Written>>;

    /// Makes a batch of written chunks durable and visible; empties `batch`.
    fn publish(&self, batch: &mut Vec<(ChunkId, Self::Written)>) -> Result<()>;

    /// Writes the manifest: the version becomes visible. Returns its id.
    fn commit(&self, manifest: &Manifest) -> Result<VersionId>;
}

/// The local store as a sink: claims in an ingest [`Session`], temp files published in batches.
pub struct LocalSink {
    store: Store,
    session: Session,
}

impl LocalSink {
    pub fn begin(store: &Store) -> Result<LocalSink> {
        Ok(LocalSink {
            store: store.clone(),
            session: Session::begin(store)?,
        })
    }
}

impl ChunkSink for LocalSink {
    type Written = PathBuf;

    fn params(&self) -> ChunkerParams {
        self.store.config().chunker
    }

    fn default_level(&self) -> i32 {
        self.store.config().zstd_level
    }

    fn lookup(&self, ids: &[ChunkId]) -> Result<Vec<Option<u32>>> {
        // Claimed before looking: gc keeps what a live session claimed.
        self.session.claim_all(ids)?;
        ids.iter()
            .map(|id| Ok(self.store.chunk_size(id)?.map(|n| n as u32)))
            .collect()
    }

    fn put(&self, chunks: &[(ChunkId, Vec<u8>)]) -> Result<Vec<PathBuf>> {
        chunks
            .iter()
            .map(|(id, compressed)| self.session.write_temp(id, compressed))
            .collect()
    }

    fn publish(&self, batch: &mut Vec<(ChunkId, PathBuf)>) -> Result<()> {
        self.session.publish(batch)
    }

    fn commit(&self, manifest: &Manifest) -> Result<VersionId> {
        self.session.commit(manifest)
    }
}

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
    /// Bytes no filesystem uses: not read, not stored.
    pub unused_bytes: u64,
}

/// What a worker learned about one piece.
enum Done<W> {
    Zero {
        len: u64,
    },
    Unused {
        len: u64,
    },
    Chunk {
        len: u64,
        id: ChunkId,
        /// Set when this worker wrote the chunk: what publishing needs, and its compressed size.
        written: Option<(W, u32)>,
    },
}

#[derive(Clone, Copy)]
enum Known {
    /// Another worker is compressing it; its size is filled in before commit.
    InFlight,
    Stored(u32),
    New(u32),
}

/// Reads `src` to the end and stores it as a new version of image `name` in the local store.
pub fn ingest<R: Read + Send>(
    store: &Store,
    name: &str,
    src: R,
    source_label: &str,
    opts: &IngestOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<IngestReport> {
    validate_name(name)?;
    let sink = LocalSink::begin(store)?;
    ingest_to(&sink, name, src, source_label, opts, progress)
}

/// Reads `src` to the end, cuts, hashes and compresses it, hands the chunks `sink` lacks to
/// `sink`, and commits the manifest of a new version of image `name` there. Every byte is
/// captured (a raw image).
pub fn ingest_to<S: ChunkSink, R: Read + Send>(
    sink: &S,
    name: &str,
    src: R,
    source_label: &str,
    opts: &IngestOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<IngestReport> {
    run(
        sink,
        name,
        src,
        &[],
        Vec::new(),
        source_label,
        opts,
        progress,
    )
}

/// Stores disk `disk` as a new version of image `name` in the local store, skipping what `map`
/// says no filesystem uses.
pub fn ingest_disk<D: Read + Seek + Send>(
    store: &Store,
    name: &str,
    disk: D,
    map: &DiskMap,
    source_label: &str,
    opts: &IngestOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<IngestReport> {
    validate_name(name)?;
    let sink = LocalSink::begin(store)?;
    ingest_disk_to(&sink, name, disk, map, source_label, opts, progress)
}

/// [`ingest_to`] for a disk and its map ([`crate::fsmap::map_disk`]): the unused runs are
/// never read (the disk is seeked over them) and become unused extents of the manifest, which
/// also carries the map's partition report.
pub fn ingest_disk_to<S: ChunkSink, D: Read + Seek + Send>(
    sink: &S,
    name: &str,
    disk: D,
    map: &DiskMap,
    source_label: &str,
    opts: &IngestOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<IngestReport> {
    let used = UsedOnly {
        disk,
        pos: 0,
        unused: &map.unused,
        next: 0,
    };
    let partitions = map.partitions.clone();
    run(
        sink,
        name,
        used,
        &map.unused,
        partitions,
        source_label,
        opts,
        progress,
    )
}

/// Reads the used bytes of a disk only, in order, seeking over the unused runs.
struct UsedOnly<'a, D> {
    disk: D,
    pos: u64,
    unused: &'a [Range<u64>],
    next: usize,
}

impl<D: Read + Seek> Read for UsedOnly<'_, D> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while let Some(run) = self.unused.get(self.next) {
            if self.pos < run.start {
                break;
            }
            self.pos = self.disk.seek(SeekFrom::Start(run.end))?;
            self.next += 1;
        }
        let room = self
            .unused
            .get(self.next)
            .map_or(buf.len() as u64, |r| r.start - self.pos);
        let n = buf.len().min(room as usize);
        let n = self.disk.read(&mut buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// The pipeline: `src` yields the used bytes only; `unused` (sorted disk ranges) says where the
/// runs it skipped were.
#[allow(clippy::too_many_arguments)]
fn run<S: ChunkSink, R: Read + Send>(
    sink: &S,
    name: &str,
    src: R,
    unused: &[Range<u64>],
    partitions: Vec<PartReport>,
    source_label: &str,
    opts: &IngestOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<IngestReport> {
    validate_name(name)?;
    let level = opts.level.unwrap_or(sink.default_level());
    let params = sink.params();
    let (batch_max_bytes, batch_max_pieces) = sink.batch_size();
    let threads = opts.threads.max(1);
    let known: Mutex<HashMap<ChunkId, Known>> = Mutex::new(HashMap::new());
    let abort = AtomicBool::new(false);

    // Pieces travel in batches (the sink's batch size) so the threads hand over work rarely.
    let (job_tx, job_rx) = mpsc::sync_channel::<(u64, Vec<Cut>)>(threads * 2);
    let job_rx = Mutex::new(job_rx);
    let (done_tx, done_rx) =
        mpsc::sync_channel::<Result<(u64, Vec<Done<S::Written>>)>>(threads * 2 + 2);

    let mut extents = ExtentList::default();
    let mut batch: Vec<(ChunkId, S::Written)> = Vec::new();
    let mut batch_bytes = 0u64;
    let mut first_error: Option<StoreError> = None;

    std::thread::scope(|scope| {
        // Chunker: the only reader of the source.
        let tx = done_tx.clone();
        let abort_ref = &abort;
        scope.spawn(move || {
            // Reads stop as soon as the ingest fails, even inside a long zero run.
            let mut src = CancelOnAbort {
                inner: src,
                abort: abort_ref,
            };
            let mut batcher = Batcher {
                tx: &job_tx,
                batch_no: 0,
                batch: Vec::new(),
                len: 0,
                max: (batch_max_bytes, batch_max_pieces),
            };
            // Used segments are cut one by one (the chunker starts afresh after each unused
            // run); the source yields only their bytes.
            let mut pos = 0u64;
            for run in unused.iter().map(Some).chain([None]) {
                let want = run.map(|r| r.start - pos);
                let segment = (&mut src).take(want.unwrap_or(u64::MAX));
                let mut chunker = Chunker::new(segment, params);
                let mut got = 0u64;
                loop {
                    if abort_ref.load(Ordering::Relaxed) {
                        return;
                    }
                    match chunker.next_piece() {
                        Ok(Some(piece)) => {
                            got += match &piece {
                                Piece::Data { bytes, .. } => bytes.len() as u64,
                                Piece::Zero { len, .. } => *len,
                            };
                            if !batcher.push(Cut::Piece(piece)) {
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            let _ = tx.send(Err(e).ctx("reading source", source_label));
                            return;
                        }
                    }
                }
                let Some(run) = run else { break };
                if Some(got) != want {
                    let _ = tx.send(Err(StoreError::Target(format!(
                        "{source_label} ended at byte {}, its map goes on to {}",
                        pos + got,
                        run.end
                    ))));
                    return;
                }
                if !batcher.push(Cut::Unused(run.end - run.start)) {
                    return;
                }
                pos = run.end;
            }
            batcher.flush();
        });
        for _ in 0..threads {
            let tx = done_tx.clone();
            let (job_rx, known, abort) = (&job_rx, &known, &abort);
            scope.spawn(move || {
                let mut zstd = zstd::bulk::Compressor::new(level).expect("zstd level checked");
                // After an abort, keep draining so the chunker never blocks on a full channel.
                loop {
                    let job = job_rx.lock().unwrap().recv();
                    let Ok((batch_no, pieces)) = job else { break };
                    if abort.load(Ordering::Relaxed) {
                        continue;
                    }
                    let result = process(pieces, sink, known, &mut zstd);
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
        let (publish_tx, publish_rx) = mpsc::sync_channel::<Vec<(ChunkId, S::Written)>>(1);
        let abort_pub = &abort;
        let publisher = scope.spawn(move || -> Result<()> {
            for mut batch in publish_rx.iter() {
                if let Err(e) = sink.publish(&mut batch) {
                    abort_pub.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
            Ok(())
        });

        // Collector: put results back in order; publish in batches.
        let mut pending: BTreeMap<u64, Vec<Done<S::Written>>> = BTreeMap::new();
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
                        Done::Unused { len } => {
                            extents.push_unused(len);
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
    sink.publish(&mut batch)?;

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
    let (mut zero_bytes, mut unused_bytes) = (0, 0);
    for e in extents.iter_mut() {
        match &mut e.kind {
            ExtentKind::Chunk { id, compressed } => {
                *compressed = match known[id] {
                    Known::Stored(n) | Known::New(n) => n,
                    Known::InFlight => unreachable!(),
                }
            }
            ExtentKind::Zero => zero_bytes += e.len,
            ExtentKind::Unused => unused_bytes += e.len,
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
        partitions,
    };
    let version = sink.commit(&manifest)?;
    Ok(IngestReport {
        name: name.to_string(),
        version,
        size,
        stored_bytes,
        new_bytes,
        chunks: known.len(),
        new_chunks,
        zero_bytes,
        unused_bytes,
    })
}

/// What the chunker thread hands the workers: a piece of a used segment, or an unused run.
enum Cut {
    Piece(Piece),
    Unused(u64),
}

/// Groups cuts into worker batches (the sink's batch size), numbered in order.
struct Batcher<'a> {
    tx: &'a mpsc::SyncSender<(u64, Vec<Cut>)>,
    batch_no: u64,
    batch: Vec<Cut>,
    len: usize,
    max: (usize, usize),
}

impl Batcher<'_> {
    /// Adds a cut; false when the workers are gone (the ingest failed).
    fn push(&mut self, cut: Cut) -> bool {
        // Zero and unused runs count too, so pieces never wait behind a long run.
        self.len += match &cut {
            Cut::Piece(Piece::Data { bytes, .. }) => bytes.len(),
            Cut::Piece(Piece::Zero { len, .. }) | Cut::Unused(len) => *len as usize,
        };
        self.batch.push(cut);
        if self.len >= self.max.0 || self.batch.len() >= self.max.1 {
            return self.flush();
        }
        true
    }

    fn flush(&mut self) -> bool {
        if self.batch.is_empty() {
            return true;
        }
        self.len = 0;
        let batch = std::mem::take(&mut self.batch);
        self.batch_no += 1;
        self.tx.send((self.batch_no - 1, batch)).is_ok()
    }
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

/// One worker batch: hash every piece, ask the sink once about the chunks new to this ingest,
/// compress and hand it those it lacks. Results come back in the pieces' order.
fn process<S: ChunkSink>(
    pieces: Vec<Cut>,
    sink: &S,
    known: &Mutex<HashMap<ChunkId, Known>>,
    zstd: &mut zstd::bulk::Compressor,
) -> Result<Vec<Done<S::Written>>> {
    // (len, id, bytes if this worker is the first to meet the chunk in this ingest)
    let mut chunks: Vec<(u64, ChunkId, Option<Vec<u8>>)> = Vec::with_capacity(pieces.len());
    // per piece, in order: its result when it is not a chunk (None: the next chunk)
    let mut order: Vec<Option<Done<S::Written>>> = Vec::with_capacity(pieces.len());
    for piece in pieces {
        let bytes = match piece {
            Cut::Piece(Piece::Zero { len, .. }) => {
                order.push(Some(Done::Zero { len }));
                continue;
            }
            Cut::Unused(len) => {
                order.push(Some(Done::Unused { len }));
                continue;
            }
            Cut::Piece(Piece::Data { bytes, .. }) => bytes,
        };
        let len = bytes.len() as u64;
        if is_zero(&bytes) {
            order.push(Some(Done::Zero { len }));
            continue;
        }
        let id = ChunkId::of(&bytes);
        let first = match known.lock().unwrap().entry(id) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(Known::InFlight);
                true
            }
        };
        order.push(None);
        chunks.push((len, id, first.then_some(bytes)));
    }

    // The chunks this worker met first: does the sink hold them?
    let fresh: Vec<usize> = (0..chunks.len())
        .filter(|&i| chunks[i].2.is_some())
        .collect();
    let ids: Vec<ChunkId> = fresh.iter().map(|&i| chunks[i].1).collect();
    let held = sink.lookup(&ids)?;
    if held.len() != ids.len() {
        return Err(StoreError::Target(format!(
            "the chunk sink answered about {} chunks where {} were asked",
            held.len(),
            ids.len()
        )));
    }
    let mut new: Vec<(ChunkId, Vec<u8>)> = Vec::new();
    let mut new_at: Vec<usize> = Vec::new();
    for (&i, held) in fresh.iter().zip(held) {
        let id = chunks[i].1;
        match held {
            Some(size) => {
                known.lock().unwrap().insert(id, Known::Stored(size));
            }
            None => {
                let bytes = chunks[i].2.as_ref().expect("fresh chunks keep their bytes");
                let compressed = zstd
                    .compress(bytes)
                    .map_err(|e| StoreError::Target(format!("zstd compression failed: {e}")))?;
                new.push((id, compressed));
                new_at.push(i);
            }
        }
    }
    let mut written: Vec<Option<(S::Written, u32)>> = (0..chunks.len()).map(|_| None).collect();
    if !new.is_empty() {
        let sizes: Vec<u32> = new.iter().map(|(_, c)| c.len() as u32).collect();
        let receipts = sink.put(&new)?;
        if receipts.len() != new.len() {
            return Err(StoreError::Target(format!(
                "the chunk sink stored {} chunks where {} were given",
                receipts.len(),
                new.len()
            )));
        }
        let mut known = known.lock().unwrap();
        for ((i, receipt), size) in new_at.into_iter().zip(receipts).zip(sizes) {
            known.insert(chunks[i].1, Known::New(size));
            written[i] = Some((receipt, size));
        }
    }

    let mut written = written.into_iter();
    let mut chunks = chunks.into_iter();
    Ok(order
        .into_iter()
        .map(|slot| match slot {
            Some(done) => done,
            None => {
                let (len, id, _) = chunks.next().expect("one chunk per data piece");
                Done::Chunk {
                    len,
                    id,
                    written: written.next().expect("one slot per chunk"),
                }
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreConfig;
    use crate::testkit::random_bytes;

    /// A sink that is not the store: chunks and the manifest in memory, every call counted.
    #[derive(Default)]
    struct MemorySink {
        chunks: Mutex<HashMap<ChunkId, Vec<u8>>>,
        manifest: Mutex<Option<Manifest>>,
        lookups: Mutex<Vec<usize>>,
        level: i32,
    }

    impl ChunkSink for MemorySink {
        type Written = ();
        fn params(&self) -> ChunkerParams {
            ChunkerParams::default()
        }
        fn default_level(&self) -> i32 {
            self.level
        }
        fn batch_size(&self) -> (usize, usize) {
            (8 << 20, 256)
        }
        fn lookup(&self, ids: &[ChunkId]) -> Result<Vec<Option<u32>>> {
            self.lookups.lock().unwrap().push(ids.len());
            let chunks = self.chunks.lock().unwrap();
            Ok(ids
                .iter()
                .map(|id| chunks.get(id).map(|c| c.len() as u32))
                .collect())
        }
        fn put(&self, chunks: &[(ChunkId, Vec<u8>)]) -> Result<Vec<()>> {
            let mut held = self.chunks.lock().unwrap();
            for (id, c) in chunks {
                assert!(held.insert(*id, c.clone()).is_none(), "{id} put twice");
            }
            Ok(vec![(); chunks.len()])
        }
        fn publish(&self, batch: &mut Vec<(ChunkId, ())>) -> Result<()> {
            batch.clear();
            Ok(())
        }
        fn commit(&self, manifest: &Manifest) -> Result<VersionId> {
            *self.manifest.lock().unwrap() = Some(manifest.clone());
            Ok(manifest.version_id())
        }
    }

    /// Data, a repeat of it, a long zero run and a zero tail: every kind of piece.
    fn sample() -> Vec<u8> {
        let mut v = random_bytes(3 << 20, 7);
        v.extend(vec![0u8; 1 << 20]);
        v.extend(random_bytes(1 << 20, 7)); // chunks seen before in this ingest
        v.extend(random_bytes(700_000, 8));
        v.extend(vec![0u8; 100_000]);
        v
    }

    #[test]
    fn a_sink_other_than_the_store_gets_the_same_manifest() {
        let data = sample();
        let t = tempfile::tempdir().unwrap();
        let store = Store::open_or_create(t.path(), StoreConfig::default(), false).unwrap();
        let opts = IngestOptions {
            threads: 3,
            ..IngestOptions::default()
        };
        let local = ingest(&store, "m", &data[..], "sample", &opts, &|_| {}).unwrap();
        let stored = store.resolve("m").unwrap().manifest;

        let sink = MemorySink {
            level: store.config().zstd_level,
            ..MemorySink::default()
        };
        let read = std::sync::atomic::AtomicU64::new(0);
        let remote = ingest_to(&sink, "m", &data[..], "sample", &opts, &|n| {
            read.fetch_add(n, Ordering::Relaxed);
        })
        .unwrap();
        assert_eq!(read.into_inner(), data.len() as u64);
        assert_eq!(remote.version, local.version);
        let m = sink.manifest.lock().unwrap().clone().unwrap();
        // same extents, same compressed sizes (same level); only the creation time may differ
        assert_eq!(m.extents, stored.extents);
        assert_eq!((m.size, m.params), (stored.size, stored.params));
        assert_eq!(
            (
                remote.chunks,
                remote.new_chunks,
                remote.new_bytes,
                remote.zero_bytes
            ),
            (
                local.chunks,
                local.new_chunks,
                local.new_bytes,
                local.zero_bytes
            )
        );
        // the sink got every chunk once, as frames that decode to their ids
        let chunks = sink.chunks.lock().unwrap();
        assert_eq!(chunks.len(), remote.chunks);
        let mut d = crate::store::source::Decoder::new(128 << 10);
        for (id, frame) in chunks.iter() {
            d.decode(id, frame).unwrap();
        }
        // a worker batch is one lookup of up to the sink's batch size
        assert!(sink.lookups.lock().unwrap().iter().all(|&n| n <= 256));
    }

    #[test]
    fn a_sink_is_handed_only_what_it_lacks() {
        let data = sample();
        let sink = MemorySink {
            level: 1,
            ..MemorySink::default()
        };
        let opts = IngestOptions::default();
        let first = ingest_to(&sink, "m", &data[..], "sample", &opts, &|_| {}).unwrap();
        // MemorySink::put panics on a chunk it already holds
        let again = ingest_to(&sink, "m", &data[..], "sample", &opts, &|_| {}).unwrap();
        assert_eq!(again.version, first.version);
        assert_eq!((again.new_chunks, again.new_bytes), (0, 0));
        assert_eq!(again.stored_bytes, first.stored_bytes);
    }
}

//! Export: manifest → for each extent, the cheapest verified source → target.
//!
//! For a chunk at offset O, in this order:
//! 1. the target itself, if it is one of the seeds and already holds the chunk at O (no write);
//! 2. any other seed holding the chunk at O (read, hash, write);
//! 3. the [`ChunkSource`] (the local store, or a server over HTTP): fetched a batch at a time,
//!    decompressed, hashed, written.
//!
//! Every source passes through [`VerifiedChunk`], so a byte reaches the target only after its
//! chunk's hash matched. Zero runs become holes in regular files (punched if the target had data)
//! and zeroed ranges on block devices. Unused runs (no filesystem uses them) are not written: the
//! target keeps its bytes there, or they are discarded when asked
//! ([`ExportOptions::discard_unused`]).

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};

use nix::fcntl::{fallocate, FallocateFlags};

use super::error::{IoContext, Result, StoreError};
use super::id::ChunkId;
use super::manifest::{Extent, ExtentKind, Manifest};
use super::source::{ChunkSource, Decoder};
use super::verified::{VerifiedChunk, VerifiedRun};

#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// Files or devices that may already hold chunks at the image's offsets (e.g. the previous
    /// version on this disk, or the target itself).
    pub seeds: Vec<PathBuf>,
    pub threads: usize,
    /// Set by the caller to stop the export between batches ([`StoreError::Cancelled`]);
    /// what is written stays written and verified.
    pub cancel: Option<std::sync::Arc<AtomicBool>>,
    /// Discard (TRIM) the target's unused runs instead of leaving their bytes alone.
    pub discard_unused: bool,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ExportReport {
    pub size: u64,
    /// Bytes of chunks fetched from the chunk source (uncompressed) and their compressed size
    /// (what crossed the network for a remote source).
    pub fetched: u64,
    pub fetched_compressed: u64,
    /// Bytes copied from a seed other than the target.
    pub from_seed: u64,
    /// Bytes the target already held: nothing written.
    pub in_place: u64,
    pub zero: u64,
    /// Bytes no filesystem uses: not written.
    pub unused: u64,
}

/// Bytes written between early writeback requests.
const FLUSH_EVERY: u64 = 128 << 20;

struct Seed {
    path: PathBuf,
    file: File,
    len: u64,
}

#[derive(Default)]
struct Counters {
    fetched: AtomicU64,
    fetched_compressed: AtomicU64,
    from_seed: AtomicU64,
    in_place: AtomicU64,
    zero: AtomicU64,
    unused: AtomicU64,
}

/// Writes `manifest`'s image to `target`, taking what seeds lack from `source`.
pub fn export(
    source: &dyn ChunkSource,
    manifest: &Manifest,
    target: &Path,
    opts: &ExportOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<ExportReport> {
    let existing = std::fs::metadata(target).ok();
    // Seeds; the target counts as "in place" when it is one of them.
    let mut seeds = Vec::new();
    let mut in_place = false;
    for path in &opts.seeds {
        let meta = std::fs::metadata(path).ctx("opening seed", path)?;
        if let Some(t) = &existing {
            if meta.dev() == t.dev() && meta.ino() == t.ino() {
                in_place = true;
                continue;
            }
        }
        let mut file = File::open(path).ctx("opening seed", path)?;
        let len = file.seek(SeekFrom::End(0)).ctx("sizing seed", path)?;
        seeds.push(Seed {
            path: path.clone(),
            file,
            len,
        });
    }

    let out = Target::open(target, manifest.size, in_place)?;
    let (file, punch_zero) = (&out.file, out.punch_zero);

    let counters = Counters::default();
    let next = AtomicUsize::new(0);
    let abort = AtomicBool::new(false);
    let first_error: Mutex<Option<StoreError>> = Mutex::new(None);
    let fail = |e: StoreError| {
        abort.store(true, Ordering::Relaxed);
        first_error.lock().unwrap().get_or_insert(e);
    };
    let threads = opts.threads.max(1);
    // Workers read, decompress and verify; one writer applies every change to the target, so
    // the workers never contend for the target's inode lock.
    let (write_tx, write_rx) = mpsc::sync_channel::<Write>(threads * 4);
    let batches = batches(&manifest.extents, source.batch_size());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let write_tx = write_tx.clone();
            let (seeds, counters, next, abort, fail) = (&seeds, &counters, &next, &abort, &fail);
            let batches = &batches;
            scope.spawn(move || {
                let worker = Worker {
                    source,
                    manifest,
                    target: (file, target, in_place),
                    seeds,
                    counters,
                    punch_zero,
                    discard_unused: opts.discard_unused,
                };
                let mut decoder = Decoder::new(manifest.params.max as usize);
                let mut buf = Vec::new();
                let send = |w: Write| !abort.load(Ordering::Relaxed) && write_tx.send(w).is_ok();
                while !abort.load(Ordering::Relaxed) {
                    if opts
                        .cancel
                        .as_ref()
                        .is_some_and(|c| c.load(Ordering::Relaxed))
                    {
                        fail(StoreError::Cancelled);
                        return;
                    }
                    let Some(range) = batches.get(next.fetch_add(1, Ordering::Relaxed)) else {
                        break;
                    };
                    match worker.batch(range.clone(), &mut decoder, &mut buf, &send) {
                        Ok(true) => {}
                        Ok(false) => return,
                        Err(e) => {
                            fail(e);
                            return;
                        }
                    }
                }
            });
        }
        drop(write_tx);
        // Start writeback early, beside the writer, so the final fsync has little left to do.
        // Its first error fails the export: the kernel reports a write-back error once.
        let (flush_tx, flush_rx) = mpsc::sync_channel::<()>(1);
        let (file_ref, fail_ref) = (file, &fail);
        scope.spawn(move || {
            for () in flush_rx.iter() {
                if let Err(cause) = file_ref.sync_data() {
                    fail_ref(StoreError::Io {
                        what: "flushing",
                        path: target.to_path_buf(),
                        cause,
                    });
                    break;
                }
            }
        });
        let mut unflushed = 0u64;
        for write in write_rx.iter() {
            if abort.load(Ordering::Relaxed) {
                continue;
            }
            let (len, result) = match write {
                Write::Nothing { len } => (len, Ok(())),
                Write::Zero { offset, len } => (len, out.zero(offset, len)),
                Write::Discard { offset, len } => (len, out.discard(offset, len)),
                Write::Run(run) => (run.bytes().len() as u64, out.write_run(&run)),
                Write::Chunk(_) => unreachable!("workers send chunks as runs"),
            };
            match result {
                Ok(()) => progress(len),
                Err(e) => fail(e),
            }
            unflushed += len;
            if unflushed >= FLUSH_EVERY {
                unflushed = 0;
                let _ = flush_tx.try_send(());
            }
        }
        drop(flush_tx);
    });
    if let Some(e) = first_error.into_inner().unwrap() {
        return Err(e);
    }
    out.sync()?;
    Ok(ExportReport {
        size: manifest.size,
        fetched: counters.fetched.into_inner(),
        fetched_compressed: counters.fetched_compressed.into_inner(),
        from_seed: counters.from_seed.into_inner(),
        in_place: counters.in_place.into_inner(),
        zero: counters.zero.into_inner(),
        unused: counters.unused.into_inner(),
    })
}

/// An open export target: the only code that writes image bytes to a file or disk. Export
/// drives it for whole images; a multicast receiver calls it for each chunk it verified.
pub struct Target {
    file: File,
    path: PathBuf,
    punch_zero: bool,
}

impl Target {
    /// Opens (or creates) `target` for an image of `size` bytes. A regular file is sized to
    /// `size`, and emptied first unless `in_place` (the target is its own seed, so the chunks
    /// it holds are kept); a block device must hold `size` bytes.
    pub fn open(target: &Path, size: u64, in_place: bool) -> Result<Target> {
        let existing = std::fs::metadata(target).ok();
        let is_block = existing
            .as_ref()
            .is_some_and(|m| m.file_type().is_block_device());
        if let Some(m) = &existing {
            if !(is_block || m.is_file()) {
                return Err(StoreError::Target(format!(
                    "export target {} is neither a regular file nor a block device",
                    target.display()
                )));
            }
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(!is_block)
            .truncate(false)
            .open(target)
            .ctx("opening export target", target)?;
        if is_block {
            let dev_size = file.seek(SeekFrom::End(0)).ctx("sizing", target)?;
            if dev_size < size {
                return Err(StoreError::Target(format!(
                    "target device {} holds {dev_size} bytes but the image needs {size}; choose a larger disk",
                    target.display(),
                )));
            }
        } else {
            if !in_place {
                // Fresh content: old bytes must not survive in zero runs.
                file.set_len(0).ctx("truncating", target)?;
            }
            file.set_len(size).ctx("sizing", target)?;
        }
        Ok(Target {
            file,
            path: target.to_path_buf(),
            punch_zero: is_block || in_place,
        })
    }

    /// Writes a run of verified chunks.
    pub fn write_run(&self, run: &VerifiedRun) -> Result<()> {
        self.file
            .write_all_at(run.bytes(), run.offset())
            .ctx("writing to export target", &self.path)
    }

    /// Writes one verified chunk at `offset`.
    pub fn write_chunk(&self, offset: u64, chunk: &VerifiedChunk) -> Result<()> {
        let mut run = VerifiedRun::new(offset);
        run.push(chunk);
        self.write_run(&run)
    }

    /// Makes a zero run read as zeros (nothing to do on a fresh file: it reads as zeros).
    pub fn zero(&self, offset: u64, len: u64) -> Result<()> {
        if !self.punch_zero {
            return Ok(());
        }
        zero_range(&self.file, offset, len).ctx("zeroing a range of", &self.path)
    }

    /// Discards an unused run: a hole in a file, a discard on a device that supports it; where
    /// neither is possible the bytes stay (they are unused, so either is correct).
    pub fn discard(&self, offset: u64, len: u64) -> Result<()> {
        let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        match fallocate(&self.file, flags, offset as i64, len as i64) {
            Ok(()) | Err(nix::errno::Errno::EOPNOTSUPP | nix::errno::Errno::EINVAL) => Ok(()),
            Err(e) => Err(io::Error::from(e)).ctx("discarding a range of", &self.path),
        }
    }

    /// Whether the target already holds chunk `id` (`len` bytes) at `offset`.
    pub fn holds(&self, offset: u64, len: u64, id: ChunkId) -> Result<bool> {
        let mut buf = Vec::new();
        Ok(
            read_chunk_at(&self.file, offset, len as usize, &mut buf, id)
                .ctx("reading", &self.path)?
                .is_some(),
        )
    }

    /// Flushes everything written to stable storage.
    pub fn sync(&self) -> Result<()> {
        self.file.sync_all().ctx("syncing", &self.path)
    }
}

/// One change to the target, decided by a worker and applied by the writer.
enum Write {
    /// The target already holds these bytes.
    Nothing {
        len: u64,
    },
    Zero {
        offset: u64,
        len: u64,
    },
    /// An unused run the caller asked to discard.
    Discard {
        offset: u64,
        len: u64,
    },
    /// A verified chunk, from a worker's plan; workers pass them on as runs.
    Chunk(VerifiedChunk),
    Run(VerifiedRun),
}

/// What a worker needs to turn a batch of extents into writes.
struct Worker<'a> {
    source: &'a dyn ChunkSource,
    manifest: &'a Manifest,
    /// The open target, its path, and whether it is one of the seeds.
    target: (&'a File, &'a Path, bool),
    seeds: &'a [Seed],
    counters: &'a Counters,
    punch_zero: bool,
    discard_unused: bool,
}

impl Worker<'_> {
    /// Plans the extents of `range` and sends their writes in order. Chunks no seed holds are
    /// fetched from the source in one call, then decoded and verified one by one. `Ok(false)`:
    /// the writer is gone. On `Err`, nothing of this batch from the failing chunk on is sent.
    fn batch(
        &self,
        range: std::ops::Range<usize>,
        decoder: &mut Decoder,
        buf: &mut Vec<u8>,
        send: &dyn Fn(Write) -> bool,
    ) -> Result<bool> {
        let extents = &self.manifest.extents[range];
        // Pass 1: zero runs, the target itself, the other seeds.
        let mut plans = Vec::with_capacity(extents.len());
        let mut wanted: Vec<ChunkId> = Vec::new();
        for extent in extents {
            let plan = self.plan_local(extent, buf)?;
            if plan.is_none() {
                let id = extent.chunk_id().expect("only chunks are fetched");
                if !wanted.contains(&id) {
                    wanted.push(id);
                }
            }
            plans.push(plan);
        }
        // Pass 2: the rest from the source, in one call.
        let fetched = if wanted.is_empty() {
            Vec::new()
        } else {
            self.source.fetch(&wanted)?
        };
        // Consecutive chunks form one run (extents are contiguous); anything else ends it.
        let mut run = VerifiedRun::new(0);
        for (extent, plan) in extents.iter().zip(plans) {
            let write = match plan {
                Some(w) => w,
                None => Write::Chunk(self.decode(extent, &fetched, decoder)?),
            };
            match write {
                Write::Chunk(chunk) => {
                    if run.is_empty() {
                        run = VerifiedRun::new(extent.offset);
                    }
                    run.push(&chunk);
                }
                other => {
                    let done = std::mem::replace(&mut run, VerifiedRun::new(0));
                    if (!done.is_empty() && !send(Write::Run(done))) || !send(other) {
                        return Ok(false);
                    }
                }
            }
        }
        Ok(run.is_empty() || send(Write::Run(run)))
    }

    /// The fetched chunk of `extent`, decompressed and verified.
    fn decode(
        &self,
        extent: &Extent,
        fetched: &[(ChunkId, Vec<u8>)],
        decoder: &mut Decoder,
    ) -> Result<VerifiedChunk> {
        let id = extent.chunk_id().expect("only chunks are fetched");
        let Some((_, compressed)) = fetched.iter().find(|(got, _)| *got == id) else {
            return Err(self
                .source
                .corrupt(id, "the source did not return it".into()));
        };
        let chunk = decoder
            .decode(&id, compressed)
            .map_err(|reason| self.source.corrupt(id, reason))?;
        if chunk.bytes().len() as u64 != extent.len {
            return Err(self.source.corrupt(
                id,
                format!(
                    "holds {} bytes, manifest says {}",
                    chunk.bytes().len(),
                    extent.len
                ),
            ));
        }
        self.counters
            .fetched
            .fetch_add(extent.len, Ordering::Relaxed);
        self.counters
            .fetched_compressed
            .fetch_add(compressed.len() as u64, Ordering::Relaxed);
        Ok(chunk)
    }

    /// A zero run's write, or a chunk the target or a seed already holds; `None`: fetch it.
    fn plan_local(&self, extent: &Extent, buf: &mut Vec<u8>) -> Result<Option<Write>> {
        let (file, path, in_place) = self.target;
        let (offset, len) = (extent.offset, extent.len as usize);
        let id = match extent.kind {
            ExtentKind::Zero => {
                self.counters.zero.fetch_add(extent.len, Ordering::Relaxed);
                return Ok(Some(if self.punch_zero {
                    Write::Zero {
                        offset,
                        len: extent.len,
                    }
                } else {
                    Write::Nothing { len: extent.len }
                }));
            }
            ExtentKind::Unused => {
                self.counters
                    .unused
                    .fetch_add(extent.len, Ordering::Relaxed);
                return Ok(Some(if self.discard_unused {
                    Write::Discard {
                        offset,
                        len: extent.len,
                    }
                } else {
                    Write::Nothing { len: extent.len }
                }));
            }
            ExtentKind::Chunk { id, .. } => id,
        };
        if in_place {
            if let Some(chunk) = read_chunk_at(file, offset, len, buf, id).ctx("reading", path)? {
                *buf = chunk.into_bytes();
                self.counters
                    .in_place
                    .fetch_add(extent.len, Ordering::Relaxed);
                return Ok(Some(Write::Nothing { len: extent.len }));
            }
        }
        for seed in self.seeds {
            if seed.len < offset + extent.len {
                continue;
            }
            let found =
                read_chunk_at(&seed.file, offset, len, buf, id).ctx("reading seed", &seed.path)?;
            if let Some(chunk) = found {
                self.counters
                    .from_seed
                    .fetch_add(extent.len, Ordering::Relaxed);
                return Ok(Some(Write::Chunk(chunk)));
            }
        }
        Ok(None)
    }
}

/// Consecutive extents handed to one worker at a time: up to `max_bytes` of image or
/// `max_extents` extents.
fn batches(
    extents: &[Extent],
    (max_bytes, max_extents): (u64, usize),
) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0u64);
    for (i, e) in extents.iter().enumerate() {
        bytes += e.len;
        if bytes >= max_bytes || i + 1 - start >= max_extents {
            out.push(start..i + 1);
            start = i + 1;
            bytes = 0;
        }
    }
    if start < extents.len() {
        out.push(start..extents.len());
    }
    out
}

/// Reads `len` bytes at `off` and returns them if they are chunk `id`. `buf` lends its
/// allocation and gets it back on a mismatch.
fn read_chunk_at(
    file: &File,
    off: u64,
    len: usize,
    buf: &mut Vec<u8>,
    id: ChunkId,
) -> io::Result<Option<VerifiedChunk>> {
    let mut data = std::mem::take(buf);
    data.resize(len, 0);
    match file.read_exact_at(&mut data, off) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            *buf = data;
            return Ok(None);
        }
        Err(e) => return Err(e),
    }
    match VerifiedChunk::verify(id, data) {
        Ok(chunk) => Ok(Some(chunk)),
        Err((_, data)) => {
            *buf = data;
            Ok(None)
        }
    }
}

/// Makes `len` bytes at `off` read as zeros: punch a hole, or write zeros where that is refused.
fn zero_range(file: &File, off: u64, len: u64) -> io::Result<()> {
    let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
    match fallocate(file, flags, off as i64, len as i64) {
        Ok(()) => return Ok(()),
        // Not supported, or (block devices) a range not aligned to the sector size.
        Err(nix::errno::Errno::EOPNOTSUPP | nix::errno::Errno::EINVAL) => {}
        Err(e) => return Err(e.into()),
    }
    let zeros = vec![0u8; 1 << 20];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], off + done)?;
        done += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ingest::{ingest, IngestOptions};
    use crate::store::{Store, StoreConfig};

    #[test]
    fn a_cancelled_export_stops_before_writing() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open_or_create(t.path(), StoreConfig::default(), false).unwrap();
        let data = crate::testkit::random_bytes(2 << 20, 5);
        let r = ingest(
            &store,
            "m",
            &data[..],
            "test",
            &IngestOptions::default(),
            &|_| {},
        )
        .unwrap();
        let manifest = store
            .resolve(&format!("m@{}", r.version.to_hex()))
            .unwrap()
            .manifest;
        let target = t.path().join("out.img");
        let cancel = std::sync::Arc::new(AtomicBool::new(true));
        let opts = ExportOptions {
            threads: 2,
            cancel: Some(cancel.clone()),
            ..Default::default()
        };
        let e = export(&store, &manifest, &target, &opts, &|_| {}).unwrap_err();
        assert!(matches!(e, StoreError::Cancelled), "{e}");
        let written = std::fs::read(&target).unwrap();
        assert!(
            written.iter().all(|b| *b == 0),
            "a cancelled export wrote data"
        );
        // not cancelled: the same call writes the image
        cancel.store(false, Ordering::Relaxed);
        export(&store, &manifest, &target, &opts, &|_| {}).unwrap();
        assert!(std::fs::read(&target).unwrap() == data);
    }
}

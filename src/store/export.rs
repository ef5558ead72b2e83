//! Export: manifest → for each extent, the cheapest verified source → target.
//!
//! For a chunk at offset O, in this order:
//! 1. the target itself, if it is one of the seeds and already holds the chunk at O (no write);
//! 2. any other seed holding the chunk at O (read, hash, write);
//! 3. the store (read, decompress, hash, write).
//!
//! Every source passes through [`VerifiedChunk`], so a byte reaches the target only after its
//! chunk's hash matched. Zero runs become holes in regular files (punched if the target had data)
//! and zeroed ranges on block devices.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use nix::fcntl::{fallocate, FallocateFlags};

use super::error::{IoContext, Result, StoreError};
use super::manifest::{ExtentKind, Manifest};
use super::verified::VerifiedChunk;
use super::Store;

#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// Files or devices that may already hold chunks at the image's offsets (e.g. the previous
    /// version on this disk, or the target itself).
    pub seeds: Vec<PathBuf>,
    pub threads: usize,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ExportReport {
    pub size: u64,
    /// Bytes of chunks fetched from the store (uncompressed) and their compressed size.
    pub from_store: u64,
    pub from_store_compressed: u64,
    /// Bytes copied from a seed other than the target.
    pub from_seed: u64,
    /// Bytes the target already held: nothing written.
    pub in_place: u64,
    pub zero: u64,
}

struct Seed {
    file: File,
    len: u64,
}

#[derive(Default)]
struct Counters {
    from_store: AtomicU64,
    from_store_compressed: AtomicU64,
    from_seed: AtomicU64,
    in_place: AtomicU64,
    zero: AtomicU64,
}

pub fn export(
    store: &Store,
    manifest: &Manifest,
    target: &Path,
    opts: &ExportOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<ExportReport> {
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
        seeds.push(Seed { file, len });
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
        if dev_size < manifest.size {
            return Err(StoreError::Target(format!(
                "target device {} holds {dev_size} bytes but the image needs {}; choose a larger disk",
                target.display(),
                manifest.size
            )));
        }
    } else {
        if !in_place {
            // Fresh content: old bytes must not survive in zero runs.
            file.set_len(0).ctx("truncating", target)?;
        }
        file.set_len(manifest.size).ctx("sizing", target)?;
    }
    let punch_zero = is_block || in_place;

    let counters = Counters::default();
    let next = AtomicUsize::new(0);
    let abort = AtomicBool::new(false);
    let first_error: Mutex<Option<StoreError>> = Mutex::new(None);
    let threads = opts.threads.max(1);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let mut reader = store.reader();
                let mut buf = Vec::new();
                while !abort.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(extent) = manifest.extents.get(i) else {
                        break;
                    };
                    let step = (|| -> Result<()> {
                        match extent.kind {
                            ExtentKind::Zero => {
                                if punch_zero {
                                    zero_range(&file, extent.offset, extent.len)
                                        .ctx("zeroing a range of", target)?;
                                }
                                counters.zero.fetch_add(extent.len, Ordering::Relaxed);
                            }
                            ExtentKind::Chunk { id, .. } => {
                                let (off, len) = (extent.offset, extent.len as usize);
                                if in_place
                                    && read_matches(&file, off, len, &mut buf, &id)
                                        .ctx("reading", target)?
                                {
                                    counters.in_place.fetch_add(len as u64, Ordering::Relaxed);
                                    return Ok(());
                                }
                                for seed in &seeds {
                                    if seed.len >= off + len as u64
                                        && read_matches(&seed.file, off, len, &mut buf, &id)
                                            .ctx("reading seed for", target)?
                                    {
                                        let chunk =
                                            VerifiedChunk::verify(id, std::mem::take(&mut buf))
                                                .expect("hash matched just above");
                                        write_chunk(&file, off, &chunk, target)?;
                                        buf = chunk.into_bytes();
                                        counters.from_seed.fetch_add(len as u64, Ordering::Relaxed);
                                        return Ok(());
                                    }
                                }
                                let compressed = store.read_compressed(&id)?;
                                let chunk = reader.decode(&id, &compressed)?;
                                if chunk.bytes().len() != len {
                                    return Err(StoreError::ChunkCorrupt {
                                        id,
                                        path: store.chunk_path(&id),
                                        reason: format!(
                                            "holds {} bytes, manifest says {len}",
                                            chunk.bytes().len()
                                        ),
                                    });
                                }
                                write_chunk(&file, off, &chunk, target)?;
                                counters.from_store.fetch_add(len as u64, Ordering::Relaxed);
                                counters
                                    .from_store_compressed
                                    .fetch_add(compressed.len() as u64, Ordering::Relaxed);
                            }
                        }
                        Ok(())
                    })();
                    match step {
                        Ok(()) => progress(extent.len),
                        Err(e) => {
                            abort.store(true, Ordering::Relaxed);
                            first_error.lock().unwrap().get_or_insert(e);
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().unwrap() {
        return Err(e);
    }
    file.sync_all().ctx("syncing", target)?;
    Ok(ExportReport {
        size: manifest.size,
        from_store: counters.from_store.into_inner(),
        from_store_compressed: counters.from_store_compressed.into_inner(),
        from_seed: counters.from_seed.into_inner(),
        in_place: counters.in_place.into_inner(),
        zero: counters.zero.into_inner(),
    })
}

/// Reads `len` bytes at `off` into `buf` and tells whether they are chunk `id`.
fn read_matches(
    file: &File,
    off: u64,
    len: usize,
    buf: &mut Vec<u8>,
    id: &super::id::ChunkId,
) -> io::Result<bool> {
    buf.resize(len, 0);
    match file.read_exact_at(buf, off) {
        Ok(()) => Ok(super::id::ChunkId::of(buf) == *id),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

fn write_chunk(file: &File, off: u64, chunk: &VerifiedChunk, target: &Path) -> Result<()> {
    file.write_all_at(chunk.bytes(), off)
        .ctx("writing to export target", target)
}

/// Makes `len` bytes at `off` read as zeros: punch a hole, or write zeros where that is refused.
fn zero_range(file: &File, off: u64, len: u64) -> io::Result<()> {
    let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
    match fallocate(file, flags, off as i64, len as i64) {
        Ok(()) => return Ok(()),
        Err(nix::errno::Errno::EOPNOTSUPP) => {}
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

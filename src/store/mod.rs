//! Content-addressed image store.
//!
//! Layout of a data directory (see README "Concepts"):
//! ```text
//! DATA/store/config.json          chunker parameters and default zstd level (fixed at creation)
//! DATA/store/chunks/abc/<id>      one zstd frame per chunk, named by BLAKE3 of its plain bytes,
//!                                 fanned out over 4096 directories by the first 3 hex digits
//! DATA/store/chunks/abc/.<sid>.<id>  a chunk an ingest has written but not yet published
//! DATA/store/sessions/<sid>/      one per running ingest: lock, ids (chunks it uses)
//! DATA/store/trash/               chunks a running gc is about to delete
//! DATA/store/gc.lock              gc holds it exclusively; a commit holds it shared
//! DATA/images/<name>/<ver>.bcm    one manifest per image version (see [`manifest`])
//! ```
//! A version is visible once its manifest file exists, and the manifest is written only after
//! every chunk it names is durable.

pub mod catalog;
pub mod chunker;
pub mod durable;
pub mod error;
pub mod export;
pub mod gc;
mod gclock;
pub mod id;
pub mod ingest;
pub mod manifest;
pub mod session;
pub mod source;
pub mod stats;
pub mod verified;
pub mod verify;

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

pub use chunker::ChunkerParams;
pub use error::{Result, StoreError};
pub use id::{ChunkId, VersionId};
pub use manifest::{Extent, ExtentKind, Manifest};
pub use verified::VerifiedChunk;

use error::IoContext;

/// zstd level used when neither the store config nor the command names one (see bench/README.md).
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoreConfig {
    pub format: u32,
    pub chunker: ChunkerParams,
    pub zstd_level: i32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            format: 1,
            chunker: ChunkerParams::default(),
            zstd_level: DEFAULT_ZSTD_LEVEL,
        }
    }
}

pub fn validate_level(level: i32) -> std::result::Result<i32, String> {
    if (1..=19).contains(&level) {
        Ok(level)
    } else {
        Err(format!("zstd level {level} out of range 1..=19"))
    }
}

#[derive(Debug, Clone)]
pub struct Store {
    data: PathBuf,
    config: StoreConfig,
}

impl Store {
    /// Opens an existing store.
    pub fn open(data: &Path) -> Result<Store> {
        let path = data.join("store/config.json");
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NoStore(data.to_path_buf()))
            }
            Err(e) => return Err(e).ctx("reading", path),
        };
        let config: StoreConfig = serde_json::from_str(&text).map_err(|e| StoreError::Config {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if config.format != 1 {
            return Err(StoreError::Config {
                path,
                reason: format!(
                    "store format {} is not one this bootcast knows (it reads format 1)",
                    config.format
                ),
            });
        }
        config
            .chunker
            .validate()
            .map_err(|reason| StoreError::Config {
                path: path.clone(),
                reason,
            })?;
        Ok(Store {
            data: data.to_path_buf(),
            config,
        })
    }

    /// Opens the store, creating it with `config` if there is none. An existing store keeps its
    /// own configuration; `Err` if `require` is set and differs from it.
    pub fn open_or_create(data: &Path, config: StoreConfig, require: bool) -> Result<Store> {
        match Store::open(data) {
            Ok(store) => {
                if require && store.config != config {
                    return Err(StoreError::Config {
                        path: store.config_path(),
                        reason: format!(
                            "the store already exists with chunk sizes {}:{}:{} and level {}; chunk sizes are fixed when a store is created (use a new --data directory to try others)",
                            store.config.chunker.min, store.config.chunker.avg, store.config.chunker.max, store.config.zstd_level
                        ),
                    });
                }
                Ok(store)
            }
            Err(StoreError::NoStore(_)) => {
                let store = Store {
                    data: data.to_path_buf(),
                    config,
                };
                for dir in [store.chunks_dir(), store.sessions_dir(), store.images_dir()] {
                    durable::create_dir_durable(&dir)?;
                }
                let json = serde_json::to_vec_pretty(&config).expect("config serialises");
                durable::write_atomic(&store.config_path(), &json)?;
                Ok(store)
            }
            Err(e) => Err(e),
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }
    fn config_path(&self) -> PathBuf {
        self.data.join("store/config.json")
    }
    pub(crate) fn chunks_dir(&self) -> PathBuf {
        self.data.join("store/chunks")
    }
    pub(crate) fn sessions_dir(&self) -> PathBuf {
        self.data.join("store/sessions")
    }
    pub(crate) fn trash_dir(&self) -> PathBuf {
        self.data.join("store/trash")
    }
    pub(crate) fn gc_lock_path(&self) -> PathBuf {
        self.data.join("store/gc.lock")
    }
    pub(crate) fn images_dir(&self) -> PathBuf {
        self.data.join("images")
    }

    /// Holds off gc while the returned lock is held (a backup copying chunks takes it);
    /// ingest commits still run. Waits for a gc that runs now.
    pub fn hold_off_gc(&self) -> Result<File> {
        gclock::shared_gc_lock(self)
    }

    pub fn chunk_path(&self, id: &ChunkId) -> PathBuf {
        let hex = id.to_hex();
        self.chunks_dir().join(&hex[..3]).join(hex)
    }

    /// Compressed size of a stored chunk, or `None` if the store lacks it.
    pub fn chunk_size(&self, id: &ChunkId) -> Result<Option<u64>> {
        let path = self.chunk_path(id);
        match fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).ctx("checking chunk", path),
        }
    }

    /// The stored (compressed) bytes of a chunk, unchecked: for serving as-is.
    pub fn read_compressed(&self, id: &ChunkId) -> Result<Vec<u8>> {
        let path = self.chunk_path(id);
        let mut buf = Vec::new();
        match File::open(&path) {
            Ok(mut f) => f.read_to_end(&mut buf).ctx("reading chunk", &path)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::ChunkMissing { id: *id, path })
            }
            Err(e) => return Err(e).ctx("opening chunk", path),
        };
        Ok(buf)
    }

    /// Calls `visit` for every entry of every fan-out directory under `chunks/` (stray
    /// non-directories there are ignored).
    pub(crate) fn for_each_chunk_entry(
        &self,
        mut visit: impl FnMut(&fs::DirEntry) -> Result<()>,
    ) -> Result<()> {
        let root = self.chunks_dir();
        let dirs = match fs::read_dir(&root) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).ctx("listing", root),
        };
        for dir in dirs {
            let dir = dir.ctx("listing", &root)?;
            if !dir.file_type().ctx("listing", dir.path())?.is_dir() {
                continue;
            }
            let dir = dir.path();
            for entry in fs::read_dir(&dir).ctx("listing", &dir)? {
                visit(&entry.ctx("listing", &dir)?)?;
            }
        }
        Ok(())
    }

    /// Every chunk file present, with its compressed size.
    pub fn list_chunks(&self) -> Result<Vec<(ChunkId, u64)>> {
        let mut out = Vec::new();
        self.for_each_chunk_entry(|entry| {
            // Only a chunk's own name in its own fan-out directory is a chunk: that is the
            // path every reader opens.
            let id = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<ChunkId>().ok())
                .filter(|id| self.chunk_path(id) == entry.path());
            if let Some(id) = id {
                let len = entry.metadata().ctx("reading size of", entry.path())?.len();
                out.push((id, len));
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// A reader that decompresses and verifies chunks; keep one per thread.
    pub fn reader(&self) -> ChunkReader<'_> {
        ChunkReader {
            store: self,
            decoder: source::Decoder::new(self.config.chunker.max as usize),
        }
    }
}

/// Reads chunks from the store and returns them only once their hash checks.
pub struct ChunkReader<'s> {
    store: &'s Store,
    decoder: source::Decoder,
}

impl ChunkReader<'_> {
    pub fn get(&mut self, id: &ChunkId) -> Result<VerifiedChunk> {
        let compressed = self.store.read_compressed(id)?;
        self.decode(id, &compressed)
    }

    /// Decompresses `compressed` and checks it is chunk `id`.
    pub fn decode(&mut self, id: &ChunkId, compressed: &[u8]) -> Result<VerifiedChunk> {
        use source::ChunkSource;
        self.decoder
            .decode(id, compressed)
            .map_err(|reason| self.store.corrupt(*id, reason))
    }
}

/// Where a store gets the chunks it lacks when a client asks for them: a site relay's
/// pull-through from upstream (`crate::relay::pull`); the chunk service calls it before
/// serving.
pub trait PullThrough: Send + Sync {
    /// Brings every chunk of `ids` into the store (blocking); returns those the upstream
    /// lacks too, or why they could not be had (the message names the chunk).
    fn pull(&self, ids: &[ChunkId]) -> std::result::Result<Vec<ChunkId>, String>;
}

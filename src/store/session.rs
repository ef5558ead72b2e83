//! An ingest session: how new chunks become durable and how a running ingest and `gc` stay out of
//! each other's way.
//!
//! Protocol (see also [`super::gc`]):
//! 1. A session is a directory `store/sessions/<sid>/` whose `lock` file the ingest holds
//!    exclusively (flock) for its whole life; a session whose lock can be taken is dead.
//! 2. Before the ingest looks whether the store has chunk X, it appends X to the session's `ids`
//!    file ("claims" it). gc never deletes a claimed chunk of a live session.
//! 3. New chunks are written, compressed, to temp files `.<sid>.<id>` beside their final names,
//!    without fsync. A batch is published by one `syncfs` (contents durable) and then a rename of
//!    each file to its final name, so a file under a chunk's name always holds complete bytes.
//! 4. Commit: `syncfs` again (renames durable), then the manifest is written atomically while the
//!    gc lock is held shared, so no gc is midway between moving chunks to trash and back. The
//!    manifest records each chunk's compressed size as stored.
//!
//! A session may outlive one call: the server keeps one per capture in progress (chunks arrive
//! over many requests), so its claims protect uploaded chunks from gc until the capture commits
//! or the session is dropped.
//!
//! A crash at any point leaves only unreferenced chunks, temp files of a dead session and its
//! directory, all removed by the next gc; no manifest ever names a chunk that is not durable.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use super::durable;
use super::error::{IoContext, Result};
use super::gclock::shared_gc_lock;
use super::id::{ChunkId, VersionId};
use super::manifest::Manifest;
use super::Store;

pub struct Session {
    store: Store,
    sid: String,
    dir: PathBuf,
    ids: Mutex<File>,
    /// Temp chunk files written and not yet published; removed if the session fails.
    unpublished: Mutex<Vec<PathBuf>>,
    /// Chunks this session published, with their compressed sizes: in place until commit
    /// (claimed, so no gc removes them), so commit need not look at them again.
    published: Mutex<std::collections::HashMap<ChunkId, u32>>,
    /// Sizes of the temp chunks written, until they are published.
    written: Mutex<std::collections::HashMap<ChunkId, u32>>,
    /// The chunks directory, open for `syncfs`.
    chunks_fd: File,
    _lock: File,
}

impl Session {
    pub fn begin(store: &Store) -> Result<Session> {
        let sessions = store.sessions_dir();
        durable::create_dir_durable(&sessions)?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let sid = format!("{}-{:x}", std::process::id(), nanos);
        let fresh = sessions.join(format!(".new-{sid}"));
        fs::create_dir(&fresh).ctx("creating session", &fresh)?;
        let lock = File::create(fresh.join("lock")).ctx("creating session lock in", &fresh)?;
        lock.lock().ctx("locking session", &fresh)?;
        let dir = sessions.join(&sid);
        fs::rename(&fresh, &dir).ctx("starting session", &dir)?;
        let ids = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("ids"))
            .ctx("creating session id list in", &dir)?;
        Ok(Session {
            store: store.clone(),
            sid,
            dir,
            ids: Mutex::new(ids),
            unpublished: Mutex::new(Vec::new()),
            published: Mutex::new(std::collections::HashMap::new()),
            written: Mutex::new(std::collections::HashMap::new()),
            chunks_fd: File::open(store.chunks_dir()).ctx("opening", store.chunks_dir())?,
            _lock: lock,
        })
    }

    /// Records that this ingest uses chunk `id`; call before checking whether the store has it.
    pub fn claim(&self, id: &ChunkId) -> Result<()> {
        self.claim_all(std::slice::from_ref(id))
    }

    /// [`claim`](Self::claim) for many chunks in one write.
    pub fn claim_all(&self, ids: &[ChunkId]) -> Result<()> {
        let bytes: Vec<u8> = ids.iter().flat_map(|id| id.0).collect();
        let mut f = self.ids.lock().unwrap();
        f.write_all(&bytes)
            .ctx("recording chunk claim in", &self.dir)
    }

    /// Writes a new chunk's compressed bytes to a temp file `.<sid>.<id>` beside its final
    /// name, so concurrent writers spread over the fan-out directories and publishing is a
    /// rename within one directory. Readers ignore dot names; gc removes those of dead sessions.
    pub fn write_temp(&self, id: &ChunkId, compressed: &[u8]) -> Result<PathBuf> {
        let dest = self.store.chunk_path(id);
        let parent = dest.parent().unwrap();
        let path = parent.join(format!(".{}.{}", self.sid, id.to_hex()));
        let mut f = match File::create(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir_all(parent).ctx("creating chunk directory", parent)?;
                File::create(&path)
            }
            other => other,
        }
        .ctx("creating chunk file", &path)?;
        self.unpublished.lock().unwrap().push(path.clone());
        f.write_all(compressed).ctx("writing chunk file", &path)?;
        if let Ok(n) = u32::try_from(compressed.len()) {
            self.written.lock().unwrap().insert(*id, n);
        }
        Ok(path)
    }

    /// Makes a batch of temp chunks durable and moves them to their final names.
    pub fn publish(&self, batch: &mut Vec<(ChunkId, PathBuf)>) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        self.sync()?;
        let mut published = Vec::with_capacity(batch.len());
        for (id, tmp) in batch.drain(..) {
            let dest = self.store.chunk_path(&id);
            fs::rename(&tmp, &dest).ctx("publishing chunk", &dest)?;
            published.push(id);
        }
        let mut written = self.written.lock().unwrap();
        let sizes: Vec<(ChunkId, u32)> = published
            .into_iter()
            .filter_map(|id| written.remove(&id).map(|n| (id, n)))
            .collect();
        drop(written);
        self.published.lock().unwrap().extend(sizes);
        Ok(())
    }

    /// Makes everything durable and writes the manifest: the version becomes visible. Every
    /// chunk it names must be in the store; the compressed sizes recorded are those stored.
    /// The session stays usable (a server's capture session is shared by its requests).
    pub fn commit(&self, manifest: &Manifest) -> Result<VersionId> {
        let _gc = shared_gc_lock(&self.store)?;
        // No gc runs now. One that failed or was killed may have left chunks in trash: put
        // them back, then make sure every chunk the manifest names is in place.
        super::gclock::restore_all_trash(&self.store)?;
        // what this session published is in place (claimed); the rest is looked at
        let mut sizes = self.published.lock().unwrap().clone();
        for (_, id, _) in manifest.chunks() {
            if let std::collections::hash_map::Entry::Vacant(slot) = sizes.entry(id) {
                match self.store.chunk_size(&id)? {
                    Some(n) => slot.insert(u32::try_from(n).unwrap_or(u32::MAX)),
                    None => {
                        return Err(super::StoreError::ChunkMissing {
                            id,
                            path: self.store.chunk_path(&id),
                        })
                    }
                };
            }
        }
        let sized;
        let manifest = if manifest.chunks().all(|(_, id, c)| sizes[&id] == c) {
            manifest
        } else {
            let mut m = manifest.clone();
            for e in m.extents.iter_mut() {
                if let super::ExtentKind::Chunk { id, compressed } = &mut e.kind {
                    *compressed = sizes[id];
                }
            }
            sized = m;
            &sized
        };
        // One flush makes the published renames and any restore durable.
        self.sync()?;
        let version = self.store.write_manifest(manifest)?;
        self.unpublished.lock().unwrap().clear();
        Ok(version)
    }

    /// `syncfs` of the file system that holds the chunks, through the one descriptor this
    /// session keeps, so a write-back error is reported to it.
    fn sync(&self) -> Result<()> {
        nix::unistd::syncfs(&self.chunks_fd)
            .map_err(std::io::Error::from)
            .ctx("syncing file system of", self.store.chunks_dir())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // After a failure: drop temp chunks (published ones are gone from these paths already).
        for path in self.unpublished.get_mut().unwrap().drain(..) {
            let _ = fs::remove_file(path);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The session id in a temp chunk file name `.<sid>.<id>`, if it is one.
pub(crate) fn temp_file_session(name: &str) -> Option<&str> {
    let rest = name.strip_prefix('.')?;
    let (sid, id) = rest.rsplit_once('.')?;
    (id.len() == 64).then_some(sid)
}

//! `store verify`: rehash every chunk in parallel and check every manifest.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use super::error::{Result, StoreError};
use super::id::{ChunkId, VersionId};
use super::Store;

#[derive(Debug, Clone, serde::Serialize)]
pub struct BadChunk {
    pub id: ChunkId,
    pub reason: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct AffectedVersion {
    pub name: String,
    pub version: VersionId,
    pub corrupt: Vec<ChunkId>,
    pub missing: Vec<ChunkId>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BadManifest {
    pub path: PathBuf,
    pub reason: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct VerifyReport {
    pub chunks_checked: usize,
    pub bytes_checked: u64,
    pub versions_checked: usize,
    pub corrupt: Vec<BadChunk>,
    pub missing: Vec<ChunkId>,
    pub bad_manifests: Vec<BadManifest>,
    pub affected: Vec<AffectedVersion>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.corrupt.is_empty() && self.missing.is_empty() && self.bad_manifests.is_empty()
    }
}

pub fn verify(
    store: &Store,
    threads: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<VerifyReport> {
    let chunks = store.list_chunks()?;
    let next = AtomicUsize::new(0);
    let corrupt: Mutex<Vec<BadChunk>> = Mutex::new(Vec::new());
    let vanished: Mutex<Vec<ChunkId>> = Mutex::new(Vec::new());
    let failure: Mutex<Option<StoreError>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| {
                let mut reader = store.reader();
                while let Some((id, len)) = chunks.get(next.fetch_add(1, Ordering::Relaxed)) {
                    match reader.get(id) {
                        Ok(_) => {}
                        Err(StoreError::ChunkCorrupt { reason, .. }) => {
                            corrupt.lock().unwrap().push(BadChunk { id: *id, reason })
                        }
                        // Gone since listing (a concurrent gc): missing if a manifest needs it.
                        Err(StoreError::ChunkMissing { .. }) => vanished.lock().unwrap().push(*id),
                        Err(e) => {
                            failure.lock().unwrap().get_or_insert(e);
                        }
                    }
                    progress(*len);
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().unwrap() {
        return Err(e);
    }
    let mut corrupt = corrupt.into_inner().unwrap();
    corrupt.sort_by_key(|c| c.id);
    let vanished: HashSet<ChunkId> = vanished.into_inner().unwrap().into_iter().collect();
    let present: HashSet<ChunkId> = chunks
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| !vanished.contains(id))
        .collect();
    let bad_ids: HashSet<ChunkId> = corrupt.iter().map(|c| c.id).collect();

    let mut missing_all = BTreeMap::new();
    let mut bad_manifests = Vec::new();
    let mut affected = Vec::new();
    let files = store.all_version_files()?;
    let versions_checked = files.len();
    for file in files {
        let manifest = match file.manifest {
            Ok(m) => m,
            Err(e) => {
                bad_manifests.push(BadManifest {
                    path: file.path,
                    reason: e.to_string(),
                });
                continue;
            }
        };
        let mut seen = HashSet::new();
        let (mut bad, mut missing) = (Vec::new(), Vec::new());
        for (_, id, _) in manifest.chunks() {
            if !seen.insert(id) {
                continue;
            }
            if bad_ids.contains(&id) {
                bad.push(id);
            } else if !present.contains(&id) {
                missing.push(id);
                missing_all.insert(id, ());
            }
        }
        if !bad.is_empty() || !missing.is_empty() {
            affected.push(AffectedVersion {
                name: file.name,
                version: file.id,
                corrupt: bad,
                missing,
            });
        }
    }
    Ok(VerifyReport {
        chunks_checked: chunks.len(),
        bytes_checked: chunks.iter().map(|(_, l)| l).sum(),
        versions_checked,
        corrupt,
        missing: missing_all.into_keys().collect(),
        bad_manifests,
        affected,
    })
}

//! The relay's quota (`--quota`): when the chunks in its store take more compressed bytes
//! than the quota, chunks that no version of an image assigned to the site uses are removed,
//! oldest first (by the time they were stored), until the store fits.
//!
//! Never evicted: chunks of any local version of an assigned image, and chunks of the
//! versions of open pushes (complete here, or being prestaged: their pending manifests). A
//! complete version of an unassigned image loses its manifest before its first chunk goes,
//! so the relay never lists or offers a version it no longer holds entirely. If the kept
//! chunks alone exceed the quota, the store stays above it and a warning says so.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use crate::store::{ChunkId, Manifest, Store, StoreError};

use super::Relay;

/// What an eviction did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Evicted {
    pub chunks: u64,
    pub bytes: u64,
    /// Versions (`NAME@ID`) whose manifest was removed because a chunk of theirs went.
    pub versions: Vec<String>,
    /// Compressed bytes in the store afterwards.
    pub cache_bytes: u64,
}

/// Evicts down to the relay's quota, if it has one and an assignment list is known.
pub fn run(relay: &Relay) -> Result<Option<Evicted>, StoreError> {
    let (Some(quota), Some(assigned)) = (relay.config.quota, relay.assigned()) else {
        return Ok(None);
    };
    if relay.link.cache_bytes.get() <= quota {
        return Ok(None); // no listing while the count says the store fits
    }
    let (orders, _) = relay.orders();
    let mut keep_versions: HashSet<(String, String)> = HashSet::new();
    for o in &orders {
        for v in &o.versions {
            keep_versions.insert((v.image.clone(), v.version.clone()));
        }
    }
    let pending = super::pending_manifests(&super::pending_dir(relay.store.data_dir()));
    let r = evict(&relay.store, quota, &assigned, &keep_versions, &pending)?;
    if r.chunks > 0 {
        relay.metrics.evicted_chunks.inc_by(r.chunks);
        relay.metrics.evicted_bytes.inc_by(r.bytes);
        tracing::info!(
            "quota: evicted {} chunk(s), {} bytes{}; the store holds {} bytes",
            r.chunks,
            r.bytes,
            if r.versions.is_empty() {
                String::new()
            } else {
                format!(
                    " (versions no longer complete here: {})",
                    r.versions.join(", ")
                )
            },
            r.cache_bytes
        );
    }
    if r.cache_bytes > quota {
        tracing::warn!(
            "quota: the store holds {} bytes, more than the quota of {quota}, all of them chunks of assigned images or open pushes; raise --quota",
            r.cache_bytes
        );
    }
    relay.link.cache_bytes.set(r.cache_bytes);
    Ok(Some(r))
}

/// Removes chunks outside `assigned` images, `keep` versions (image, id) and `pending`
/// manifests, oldest first, until the store holds at most `quota` compressed bytes.
pub fn evict(
    store: &Store,
    quota: u64,
    assigned: &[String],
    keep: &HashSet<(String, String)>,
    pending: &[Manifest],
) -> Result<Evicted, StoreError> {
    let chunks = store.list_chunks()?;
    let mut out = Evicted {
        cache_bytes: chunks.iter().map(|(_, n)| n).sum(),
        ..Default::default()
    };
    if out.cache_bytes <= quota {
        return Ok(out);
    }
    let mut kept: HashSet<ChunkId> = HashSet::new();
    for m in pending {
        kept.extend(m.chunks().map(|(_, id, _)| id));
    }
    // chunk -> versions of unassigned images that use it (removed before it)
    let mut users: HashMap<ChunkId, Vec<(String, PathBuf)>> = HashMap::new();
    for f in store.all_version_files()? {
        let spec = format!("{}@{}", f.name, f.id);
        let Ok(m) = f.manifest else { continue };
        let protected =
            assigned.contains(&f.name) || keep.contains(&(f.name.clone(), f.id.to_hex()));
        for (_, id, _) in m.chunks() {
            if protected {
                kept.insert(id);
            } else {
                users
                    .entry(id)
                    .or_default()
                    .push((spec.clone(), f.path.clone()));
            }
        }
    }
    let mut candidates: Vec<(std::time::SystemTime, ChunkId, u64)> = chunks
        .into_iter()
        .filter(|(id, _)| !kept.contains(id))
        .filter_map(|(id, n)| {
            let t = std::fs::metadata(store.chunk_path(&id))
                .and_then(|m| m.modified())
                .ok()?;
            Some((t, id, n))
        })
        .collect();
    candidates.sort();
    let mut gone_versions: HashSet<PathBuf> = HashSet::new();
    for (_, id, n) in candidates {
        if out.cache_bytes <= quota {
            break;
        }
        for (spec, path) in users.get(&id).into_iter().flatten() {
            if gone_versions.insert(path.clone()) {
                match std::fs::remove_file(path) {
                    Ok(()) => out.versions.push(spec.clone()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(cause) => {
                        return Err(StoreError::Io {
                            what: "removing manifest",
                            path: path.clone(),
                            cause,
                        })
                    }
                }
            }
        }
        let path = store.chunk_path(&id);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                out.chunks += 1;
                out.bytes += n;
                out.cache_bytes -= n;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => out.cache_bytes -= n,
            Err(cause) => {
                return Err(StoreError::Io {
                    what: "evicting chunk",
                    path,
                    cause,
                })
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ingest::{ingest, IngestOptions};

    fn add(store: &Store, name: &str, seed: u64) -> Manifest {
        let data = crate::testkit::random_bytes(600 << 10, seed);
        let r = ingest(
            store,
            name,
            &data[..],
            "test",
            &IngestOptions::default(),
            &|_| {},
        )
        .unwrap();
        store
            .resolve(&format!("{name}@{}", r.version))
            .unwrap()
            .manifest
    }

    #[test]
    fn evicts_unassigned_oldest_first_and_drops_their_versions() {
        let t = tempfile::tempdir().unwrap();
        let store =
            Store::open_or_create(t.path(), crate::store::StoreConfig::default(), false).unwrap();
        let keep = add(&store, "keep", 1);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let old = add(&store, "old", 2);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let newer = add(&store, "newer", 3);
        let size = |m: &Manifest| m.chunks().map(|(_, _, c)| u64::from(c)).sum::<u64>();
        let total = size(&keep) + size(&old) + size(&newer);
        // room for everything but `old`: `old` goes (its chunks are the oldest unassigned)
        let quota = total - size(&old);
        let r = evict(&store, quota, &["keep".into()], &HashSet::new(), &[]).unwrap();
        assert_eq!(r.bytes, size(&old));
        assert_eq!(r.cache_bytes, quota);
        assert_eq!(r.versions.len(), 1);
        assert!(r.versions[0].starts_with("old@"));
        assert!(store.resolve("old").is_err(), "its manifest went first");
        assert!(store.resolve("newer").is_ok());
        for (_, id, _) in keep.chunks() {
            assert!(store.chunk_path(&id).exists());
        }
        // a pending manifest protects its chunks, even beyond the quota
        let r = evict(
            &store,
            1,
            &["keep".into()],
            &HashSet::new(),
            std::slice::from_ref(&newer),
        )
        .unwrap();
        assert_eq!(r.chunks, 0);
        assert!(r.cache_bytes > 1);
        assert!(store.resolve("newer").is_ok());
    }
}

//! The relay's start-up check of its store, for the power cut: prestage renames each verified
//! chunk into place as it arrives and syncs the file system only before it writes a version's
//! manifest, so a chunk stored shortly before the power went can come back shorter than it
//! was (its name on disk, its data not). Such a chunk must not count as held.
//!
//! Every manifest the relay has (complete versions in the store, pending ones of open pushes)
//! says how many compressed bytes each of its chunks takes. At start, before anything is
//! served, a chunk file of another size is removed, and a complete version that so loses a
//! chunk goes back to pending (its manifest moves to `DATA/relay/pending/`): the relay does not
//! list it as complete, nor serve it from its own store, until prestage has fetched the chunk
//! again. The check stats each chunk file once (the listing the relay makes at start anyway)
//! and reads only manifests.

use std::collections::HashMap;
use std::path::Path;

use crate::proto::relay::{PushOrder, VersionRef};
use crate::store::{ChunkId, Manifest, Store, StoreError, VersionId};

/// The id of the relay's own repair order: central's push ids start at 1.
pub const REPAIR: i64 = 0;

/// The order prestage runs for versions the check demoted (inside the site's windows, at its
/// cap, as a push): they were complete here, so the relay fetches them again by itself, even
/// when the push that brought them has ended. It is the relay's own: never reported upstream.
pub fn repair_order(versions: &[VersionRef]) -> Option<PushOrder> {
    (!versions.is_empty()).then(|| PushOrder {
        signature: None,
        id: REPAIR,
        paused: false,
        versions: versions.to_vec(),
        windows: None,
        rate: None,
        deadline: None,
    })
}

/// What the check found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Chunk files removed: their size was not the one their manifests give.
    pub removed: Vec<ChunkId>,
    /// Complete versions that lost a chunk and are pending again.
    pub demoted: Vec<VersionRef>,
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |cause| StoreError::Io { what, path, cause }
}

/// Checks `listed` (every chunk of `store` with its file size) against the manifests of the
/// store's versions and of `pending` (the pending manifests' directory); returns what it
/// removed and demoted, and leaves `listed` as the store now is.
pub fn check_store(
    store: &Store,
    pending: &Path,
    listed: &mut Vec<(ChunkId, u64)>,
) -> Result<Recovered, StoreError> {
    let mut manifests: Vec<(Option<(String, VersionId)>, Manifest)> = Vec::new();
    for (name, id) in store.version_ids()? {
        if let Some(m) = store.load_version(&name, &id)? {
            manifests.push((Some((name, id)), m));
        }
    }
    manifests.extend(
        super::pending_manifests(pending)
            .into_iter()
            .map(|m| (None, m)),
    );
    let mut expected: HashMap<ChunkId, u64> = HashMap::new();
    for (_, m) in &manifests {
        for (_, id, size) in m.chunks() {
            expected.insert(id, u64::from(size));
        }
    }
    let mut out = Recovered::default();
    listed.retain(|(id, size)| match expected.get(id) {
        Some(want) if want != size => {
            out.removed.push(*id);
            false
        }
        _ => true,
    });
    for id in &out.removed {
        let path = store.chunk_path(id);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io("removing a damaged chunk", &path)(e))
            }
            _ => {}
        }
    }
    let held: HashMap<ChunkId, u64> = listed.iter().copied().collect();
    for (version, m) in &manifests {
        let Some((name, id)) = version else { continue };
        if m.chunks().all(|(_, c, _)| held.contains_key(&c)) {
            continue;
        }
        std::fs::create_dir_all(pending).map_err(io("creating", pending))?;
        let to = pending.join(format!("{name}@{id}.bcm"));
        crate::store::durable::write_atomic(&to, &m.encode())?;
        let from = store.version_path(name, id);
        std::fs::remove_file(&from).map_err(io("removing manifest", &from))?;
        out.demoted.push(VersionRef {
            image: name.clone(),
            version: id.to_hex(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ingest::{ingest, IngestOptions};

    #[test]
    fn a_short_chunk_is_removed_and_its_version_is_pending_again() {
        let t = tempfile::tempdir().unwrap();
        let store =
            Store::open_or_create(t.path(), crate::store::StoreConfig::default(), false).unwrap();
        let data = crate::testkit::random_bytes(3 << 20, 7);
        let r = ingest(
            &store,
            "disk",
            &data[..],
            "d",
            &IngestOptions::default(),
            &|_| {},
        )
        .unwrap();
        let other = crate::testkit::random_bytes(1 << 20, 8);
        ingest(
            &store,
            "other",
            &other[..],
            "o",
            &IngestOptions::default(),
            &|_| {},
        )
        .unwrap();
        let m = store.load_version("disk", &r.version).unwrap().unwrap();
        let (_, victim, size) = m.chunks().nth(2).unwrap();
        let path = store.chunk_path(&victim);
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(u64::from(size) / 2).unwrap();
        drop(f);

        let pending = t.path().join("relay/pending");
        let mut listed = store.list_chunks().unwrap();
        let before = listed.len();
        let got = check_store(&store, &pending, &mut listed).unwrap();
        assert_eq!(got.removed, vec![victim]);
        assert_eq!(
            got.demoted,
            vec![VersionRef {
                image: "disk".into(),
                version: r.version.to_hex()
            }]
        );
        let order = repair_order(&got.demoted).unwrap();
        assert_eq!((order.id, order.versions.len()), (REPAIR, 1));
        assert!(repair_order(&[]).is_none());
        assert_eq!(listed.len(), before - 1);
        assert!(!path.exists());
        // the damaged version is no longer complete; its manifest waits in pending
        let ids: Vec<String> = store
            .version_ids()
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(ids, ["other"]);
        let kept = std::fs::read(pending.join(format!("disk@{}.bcm", r.version))).unwrap();
        assert_eq!(Manifest::decode(&kept).unwrap().1, r.version);

        // a second start finds nothing more to do
        let again = check_store(&store, &pending, &mut listed).unwrap();
        assert_eq!(again, Recovered::default());
    }
}

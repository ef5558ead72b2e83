//! `store gc`: delete chunks no manifest uses, safely beside running ingests.
//!
//! With the gc lock held exclusively (one gc at a time; commits wait):
//! 1. put back anything an interrupted gc left in `trash/`;
//! 2. R = chunks named by any manifest (a damaged manifest stops gc: it might need anything);
//! 3. move every chunk outside R to `trash/` (it is now invisible to ingests);
//! 4. P = chunks claimed by live sessions, read *after* step 3 (dead sessions are removed);
//! 5. move trashed chunks in P back, delete the rest.
//!
//! Why it is safe: an ingest claims a chunk before it checks the store for it. If it saw the
//! chunk, the claim predates the move to trash, so step 4 sees it and step 5 restores it before
//! the ingest can commit (commits wait for the lock). If it did not see it, it writes its own copy.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::time::{Duration, SystemTime};

use super::durable;
use super::error::{IoContext, Result, StoreError};
use super::gclock::{exclusive_gc_lock, restore_all_trash};
use super::id::ChunkId;
use super::session::temp_file_session;
use super::Store;

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GcReport {
    pub kept_chunks: usize,
    pub removed_chunks: usize,
    pub removed_bytes: u64,
    /// Chunks kept only because a running ingest claimed them.
    pub kept_for_ingest: usize,
    pub dead_sessions_removed: usize,
    /// Temp chunk files of ingests that died before publishing them.
    pub dead_temp_files_removed: usize,
}

pub fn gc(store: &Store) -> Result<GcReport> {
    let _lock = exclusive_gc_lock(store)?;
    durable::create_dir_durable(&store.trash_dir())?;
    restore_all_trash(store)?;
    // Whatever fails after chunks went to trash, put them back before the lock is released
    // (a gc killed outright is covered by the next gc and by the check in every commit).
    collect(store).inspect_err(|_| {
        let _ = restore_all_trash(store);
    })
}

fn collect(store: &Store) -> Result<GcReport> {
    let trash = store.trash_dir();

    let mut referenced = HashSet::new();
    for file in store.all_version_files()? {
        let manifest = file.manifest.map_err(|e| {
            StoreError::Target(format!(
                "gc refused: {e}. A damaged manifest might need any chunk; remove or repair it first"
            ))
        })?;
        referenced.extend(manifest.chunks().map(|(_, id, _)| id));
    }

    let mut report = GcReport::default();
    let mut trashed = Vec::new();
    for (id, len) in store.list_chunks()? {
        if referenced.contains(&id) {
            report.kept_chunks += 1;
            continue;
        }
        let from = store.chunk_path(&id);
        match fs::rename(&from, trash.join(id.to_hex())) {
            Ok(()) => trashed.push((id, len)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).ctx("moving to trash", from),
        }
    }

    let (claimed, dead) = live_claims(store)?;
    report.dead_sessions_removed = dead;
    report.dead_temp_files_removed = remove_dead_temp_files(store)?;
    for (id, len) in trashed {
        let in_trash = trash.join(id.to_hex());
        if claimed.contains(&id) {
            fs::rename(&in_trash, store.chunk_path(&id)).ctx("restoring from trash", &in_trash)?;
            report.kept_for_ingest += 1;
            report.kept_chunks += 1;
        } else {
            fs::remove_file(&in_trash).ctx("deleting", &in_trash)?;
            report.removed_chunks += 1;
            report.removed_bytes += len;
        }
    }
    durable::sync_filesystem(&store.chunks_dir())?;
    Ok(report)
}

/// Removes `.<sid>.<id>` temp files whose session directory is gone. A session's directory
/// exists before it writes its first temp file, and [`live_claims`] has just removed the
/// directories of dead sessions.
fn remove_dead_temp_files(store: &Store) -> Result<usize> {
    let mut alive: HashMap<String, bool> = HashMap::new();
    let mut removed = 0;
    store.for_each_chunk_entry(|entry| {
        let name = entry.file_name();
        let Some(sid) = name.to_str().and_then(temp_file_session) else {
            return Ok(());
        };
        let live = *alive
            .entry(sid.to_string())
            .or_insert_with(|| store.sessions_dir().join(sid).is_dir());
        if !live {
            match fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).ctx("removing", entry.path()),
            }
        }
        Ok(())
    })?;
    Ok(removed)
}

/// True when the process whose pid starts session id `sid` (`<pid>-<nanos>`) no longer exists.
fn process_gone(sid: &str) -> bool {
    let Some(pid) = sid.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
        return false;
    };
    pid > 0
        && matches!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
            Err(nix::errno::Errno::ESRCH)
        )
}

/// Chunks claimed by live sessions; removes dead sessions (their lock is free).
fn live_claims(store: &Store) -> Result<(HashSet<ChunkId>, usize)> {
    let dir = store.sessions_dir();
    let mut claimed = HashSet::new();
    let mut dead = 0;
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((claimed, 0)),
        Err(e) => return Err(e).ctx("listing", dir),
    };
    for entry in entries {
        let path = entry.ctx("listing", &dir)?.path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if let Some(sid) = name.strip_prefix(".new-") {
            // A session being born has claimed nothing yet. Its name starts with the pid of
            // the ingest: clear it when that process is gone (killed mid-birth), or when it is
            // old (the pid was reused, or belongs to another pid namespace).
            let old = fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_some_and(|age| age > Duration::from_secs(3600));
            if old || process_gone(sid) {
                fs::remove_dir_all(&path).ctx("removing dead session", &path)?;
                dead += 1;
            }
            continue;
        }
        // A live session always has its lock file (it is created before the directory gets its
        // name), so a missing one means a dead session that was half removed.
        let lock = match fs::File::open(path.join("lock")) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).ctx("checking session lock", &path),
        };
        if lock.as_ref().is_none_or(|l| l.try_lock().is_ok()) {
            // Its ingest is gone: drop its temp chunks and claims.
            fs::remove_dir_all(&path).ctx("removing dead session", &path)?;
            dead += 1;
            continue;
        }
        let ids = match fs::read(path.join("ids")) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).ctx("reading claims of", path),
        };
        for raw in ids.chunks_exact(32) {
            claimed.insert(ChunkId(raw.try_into().unwrap()));
        }
    }
    Ok((claimed, dead))
}

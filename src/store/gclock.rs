//! The gc lock and the trash: what an ingest commit and `gc` share (see [`super::session`]
//! for the protocol). gc holds the lock exclusively for its whole run and moves chunks it is
//! about to delete into `trash/`; a commit holds it shared and first puts back whatever a gc
//! that failed or was killed left in the trash.

use std::fs::{self, File, OpenOptions};
use std::io;

use super::error::{IoContext, Result};
use super::id::ChunkId;
use super::Store;

fn open_gc_lock(store: &Store) -> Result<File> {
    let path = store.gc_lock_path();
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .ctx("opening", path)
}

/// Held by a commit: waits for a running gc to finish.
pub(crate) fn shared_gc_lock(store: &Store) -> Result<File> {
    let f = open_gc_lock(store)?;
    f.lock_shared()
        .ctx("waiting for gc lock", store.gc_lock_path())?;
    Ok(f)
}

/// Held by gc for its whole run.
pub(crate) fn exclusive_gc_lock(store: &Store) -> Result<File> {
    let f = open_gc_lock(store)?;
    f.lock().ctx("waiting for gc lock", store.gc_lock_path())?;
    Ok(f)
}

/// Moves every chunk in `trash/` back into place.
pub(crate) fn restore_all_trash(store: &Store) -> Result<()> {
    let trash = store.trash_dir();
    let entries = match fs::read_dir(&trash) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).ctx("listing", trash),
    };
    for entry in entries {
        let path = entry.ctx("listing", &trash)?.path();
        let Some(id) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<ChunkId>().ok())
        else {
            continue;
        };
        let dest = store.chunk_path(&id);
        fs::create_dir_all(dest.parent().unwrap()).ctx("creating", dest.parent().unwrap())?;
        match fs::rename(&path, &dest) {
            // Another commit restored it first.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            other => other.ctx("restoring from trash", &path)?,
        }
    }
    Ok(())
}

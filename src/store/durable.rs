//! Durable file-system steps: atomic replace, directory sync, whole-file-system sync.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use super::error::{IoContext, Result};

/// Makes a directory's entries (creations, renames, removals) durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx("syncing directory", dir)
}

/// Flushes every dirty page and metadata change of the file system holding `path`.
///
/// One `syncfs` makes a whole batch of chunk files durable, instead of one `fsync` per chunk.
pub fn sync_filesystem(path: &Path) -> Result<()> {
    let f = File::open(path).ctx("opening for sync", path)?;
    nix::unistd::syncfs(&f)
        .map_err(std::io::Error::from)
        .ctx("syncing file system of", path)
}

/// Writes `bytes` to `path` atomically: temp file in the same directory, fsync, rename, dir fsync.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().expect("atomic write target has a parent");
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".tmp-{}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        path.file_name().unwrap().to_string_lossy()
    ));
    let result = (|| {
        let mut f = File::create(&tmp).ctx("creating", &tmp)?;
        f.write_all(bytes).ctx("writing", &tmp)?;
        f.sync_all().ctx("syncing", &tmp)?;
        fs::rename(&tmp, path).ctx("renaming into place", path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Creates `dir` (and parents) and syncs the parent so the new entry survives a crash.
pub fn create_dir_durable(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).ctx("creating directory", dir)?;
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

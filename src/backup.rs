//! `bootcast backup DIR` and `bootcast restore DIR`: a central server's state, copied while it
//! runs, and put back on a fresh data directory.
//!
//! A backup directory is a data directory of its own, plus `backup.json`:
//! - `bootcast.db`: an online snapshot of the database (SQLite's `VACUUM INTO`, one read
//!   transaction: consistent, and writers are not held up in WAL mode);
//! - the secrets and configuration: `api-token`, `signing.key` (and retired keys), `tls/`,
//!   `bootcast.toml`, `store/config.json`, copied with their modes;
//! - `images/` (every version's manifest, held and signature files), mirrored;
//! - `store/chunks/`: exactly the chunks those manifests name. Chunks are content-addressed
//!   and never change, so a chunk already in the backup is not copied again (an incremental
//!   backup of a store that grew by one version copies that version's new chunks only), and
//!   chunks no manifest names any more are removed;
//! - `bootenv/` (the built boot environment), mirrored.
//!
//! Order makes it consistent without stopping the server: the database first, then the
//! manifests, then their chunks (an ingest writes chunks before its manifest, so a copied
//! manifest's chunks are already on disk), all under the store's shared gc lock (no gc removes
//! a chunk meanwhile). `backup.json` is removed when a backup starts and written last, after a
//! file-system sync: a directory without it is an unfinished backup, and `restore` refuses it.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::store::{durable, ChunkId, Store, StoreError};

/// The record of a finished backup.
pub const RECORD: &str = "backup.json";
/// The files (relative to the data directory) that hold secrets and configuration.
const SINGLE_FILES: &[&str] = &[
    crate::sign::KEY_FILE,
    "api-token",
    "bootcast.toml",
    "tls/cert.pem",
    "tls/key.pem",
    "store/config.json",
];
/// Trees mirrored file by file.
const TREES: &[&str] = &["images", "bootenv"];

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{data} holds no central server database (bootcast.db): give the server's data directory with --data")]
    NoDatabase { data: PathBuf },
    #[error(
        "the backup directory {dir} must not be inside the data directory {data}, nor hold it"
    )]
    Nested { dir: PathBuf, data: PathBuf },
    #[error("{data} already holds a central server ({what}): restore into a new, empty data directory (e.g. --data /var/lib/bootcast.new), then move it into place")]
    NotEmpty { data: PathBuf, what: String },
    #[error("{dir} is not a finished bootcast backup (no {RECORD}: the backup did not complete, or this is another directory); run `bootcast backup` again")]
    Unfinished { dir: PathBuf },
    #[error("{path}: {what}: {cause}")]
    Io {
        what: &'static str,
        path: PathBuf,
        cause: io::Error,
    },
    #[error("database snapshot into {path}: {cause}")]
    Snapshot {
        path: PathBuf,
        cause: rusqlite::Error,
    },
    #[error("{record}: {cause}")]
    Record {
        record: PathBuf,
        cause: serde_json::Error,
    },
    #[error("the backup is damaged: {missing} chunk(s) that its manifests name are missing (first: {first}); take a new backup")]
    MissingChunks { missing: u64, first: ChunkId },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
}

type Result<T> = std::result::Result<T, BackupError>;

trait Ctx<T> {
    fn ctx(self, what: &'static str, path: &Path) -> Result<T>;
}

impl<T> Ctx<T> for io::Result<T> {
    fn ctx(self, what: &'static str, path: &Path) -> Result<T> {
        self.map_err(|cause| BackupError::Io {
            what,
            path: path.to_path_buf(),
            cause,
        })
    }
}

/// What `backup.json` says, and what a backup or restore did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    /// The bootcast release that wrote the backup.
    pub bootcast: String,
    /// RFC 3339, UTC.
    pub created: String,
    /// The database's schema version (migrations applied).
    pub schema_version: i64,
    /// Image versions (manifests).
    pub versions: u64,
    /// Chunks the backup holds, and their compressed bytes.
    pub chunks: u64,
    pub chunk_bytes: u64,
}

/// What one run did, beside the record.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Copied {
    /// Chunks copied by this run, and their bytes.
    pub chunks_copied: u64,
    pub chunk_bytes_copied: u64,
    /// Chunks already there (an earlier backup into the same directory).
    pub chunks_kept: u64,
    /// Chunks removed from the backup: no manifest names them any more.
    pub chunks_removed: u64,
    /// Other files copied (database, secrets, manifests, boot environment).
    pub files_copied: u64,
}

/// Progress of the chunk copy: (done, total).
pub type Progress<'a> = &'a dyn Fn(u64, u64);

/// Backs up the central server whose data directory is `data` into `dir` (made if needed; a
/// directory that holds an earlier backup is brought up to date, copying only new chunks).
pub fn backup(data: &Path, dir: &Path, progress: Progress) -> Result<(Record, Copied)> {
    check_apart(data, dir)?;
    let db_path = crate::db::path(data);
    if !db_path.is_file() {
        return Err(BackupError::NoDatabase {
            data: data.to_path_buf(),
        });
    }
    fs::create_dir_all(dir).ctx("creating the backup directory", dir)?;
    // Unfinished from now until the record is written again.
    remove_if_present(&dir.join(RECORD))?;
    let mut copied = Copied::default();

    let live = Store::open(data)?;
    let _gc = live.hold_off_gc()?;

    // 1. the database
    let schema_version = snapshot_db(&db_path, &crate::db::path(dir))?;
    copied.files_copied += 1;

    // 2. secrets and configuration, then the manifests (and the boot environment)
    copied.files_copied += copy_files(data, dir)?;

    // 4. the chunks the copied manifests name
    let copy = Store::open(dir)?;
    let wanted = named_chunks(&copy)?;
    let total = wanted.len() as u64;
    let mut chunk_bytes = 0;
    for (done, id) in wanted.iter().enumerate() {
        let (from, to) = (live.chunk_path(id), copy.chunk_path(id));
        let len = fs::metadata(&from)
            .ctx("reading a chunk the manifests name", &from)?
            .len();
        chunk_bytes += len;
        if fs::metadata(&to).map(|m| m.len() == len).unwrap_or(false) {
            copied.chunks_kept += 1;
        } else {
            copy_file(&from, &to)?;
            copied.chunks_copied += 1;
            copied.chunk_bytes_copied += len;
        }
        if done % 1024 == 1023 {
            progress(done as u64 + 1, total);
        }
    }
    progress(total, total);
    for (id, _) in copy.list_chunks()? {
        if !wanted.contains(&id) {
            let path = copy.chunk_path(&id);
            fs::remove_file(&path).ctx("removing a chunk no manifest names", &path)?;
            copied.chunks_removed += 1;
        }
    }

    durable::sync_filesystem(dir)?;
    let record = Record {
        bootcast: env!("CARGO_PKG_VERSION").to_string(),
        created: crate::time::rfc3339(crate::time::now_unix()),
        schema_version,
        versions: copy.version_ids()?.len() as u64,
        chunks: total,
        chunk_bytes,
    };
    write_record(dir, &record)?;
    Ok((record, copied))
}

/// Restores the backup in `dir` into `data`, which must not hold a central server yet; the
/// database is then opened (migrations run when the backup is from an older release) and
/// every chunk the manifests name is checked present with its size.
pub fn restore(dir: &Path, data: &Path, progress: Progress) -> Result<(Record, Copied)> {
    let record = read_record(dir)?;
    check_apart(data, dir)?;
    for what in ["bootcast.db", "store/config.json", "images"] {
        if data.join(what).exists() {
            return Err(BackupError::NotEmpty {
                data: data.to_path_buf(),
                what: what.to_string(),
            });
        }
    }
    fs::create_dir_all(data).ctx("creating the data directory", data)?;
    let mut copied = Copied::default();
    copied.files_copied += copy_files(dir, data)?;
    copy_file(&crate::db::path(dir), &crate::db::path(data))?;
    copied.files_copied += 1;
    let (from, to) = (Store::open(dir)?, Store::open(data)?);
    let wanted = named_chunks(&from)?;
    let total = wanted.len() as u64;
    let mut missing = (0, None);
    for (done, id) in wanted.iter().enumerate() {
        let src = from.chunk_path(id);
        match fs::metadata(&src) {
            Ok(m) => {
                copy_file(&src, &to.chunk_path(id))?;
                copied.chunks_copied += 1;
                copied.chunk_bytes_copied += m.len();
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                missing.0 += 1;
                missing.1.get_or_insert(*id);
            }
            Err(e) => return Err(e).ctx("reading a chunk of the backup", &src),
        }
        if done % 1024 == 1023 {
            progress(done as u64 + 1, total);
        }
    }
    progress(total, total);
    if let (n, Some(first)) = missing {
        return Err(BackupError::MissingChunks { missing: n, first });
    }
    durable::sync_filesystem(data)?;
    // Opening runs the migrations of a backup from an older release and checks the file.
    crate::db::Db::open(&crate::db::path(data))?;
    Ok((record, copied))
}

/// Reads `DIR/backup.json`.
pub fn read_record(dir: &Path) -> Result<Record> {
    let path = dir.join(RECORD);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(BackupError::Unfinished {
                dir: dir.to_path_buf(),
            })
        }
        Err(e) => return Err(e).ctx("reading", &path),
    };
    serde_json::from_slice(&bytes).map_err(|cause| BackupError::Record {
        record: path,
        cause,
    })
}

fn write_record(dir: &Path, record: &Record) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(record).expect("a record serialises");
    durable::write_atomic(&dir.join(RECORD), &bytes)?;
    Ok(())
}

/// Neither directory may hold the other (a backup inside the data directory would back up
/// itself).
fn check_apart(data: &Path, dir: &Path) -> Result<()> {
    let abs = |p: &Path| {
        fs::canonicalize(p).unwrap_or_else(|_| {
            std::env::current_dir()
                .map(|c| c.join(p))
                .unwrap_or_else(|_| p.to_path_buf())
        })
    };
    let (a, b) = (abs(data), abs(dir));
    if a.starts_with(&b) || b.starts_with(&a) {
        return Err(BackupError::Nested {
            dir: dir.to_path_buf(),
            data: data.to_path_buf(),
        });
    }
    Ok(())
}

/// An online, consistent copy of the database at `from` into `to`; its schema version.
fn snapshot_db(from: &Path, to: &Path) -> Result<i64> {
    use rusqlite::{Connection, OpenFlags};
    let snap = |cause| BackupError::Snapshot {
        path: to.to_path_buf(),
        cause,
    };
    let tmp = to.with_extension("db.partial");
    remove_if_present(&tmp)?;
    let conn = Connection::open_with_flags(
        from,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(snap)?;
    conn.busy_timeout(std::time::Duration::from_secs(30))
        .map_err(snap)?;
    let tmp_str = tmp.to_str().ok_or_else(|| BackupError::Io {
        what: "the backup path must be UTF-8",
        path: tmp.clone(),
        cause: io::Error::from(io::ErrorKind::InvalidInput),
    })?;
    conn.execute("VACUUM INTO ?1", [tmp_str]).map_err(snap)?;
    drop(conn);
    let schema = Connection::open_with_flags(&tmp, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .and_then(|c| c.pragma_query_value(None, "user_version", |r| r.get(0)))
        .map_err(snap)?;
    fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .ctx("syncing", &tmp)?;
    fs::rename(&tmp, to).ctx("renaming into place", to)?;
    set_private(to)?;
    Ok(schema)
}

/// Copies the secrets and configuration ([`SINGLE_FILES`], retired signing keys) and mirrors
/// the [`TREES`] from one data directory to the other; the number of files copied.
fn copy_files(from: &Path, to: &Path) -> Result<u64> {
    let mut n = 0;
    for rel in SINGLE_FILES
        .iter()
        .map(PathBuf::from)
        .chain(retired_keys(from)?)
    {
        if copy_if_changed(&from.join(&rel), &to.join(&rel))? {
            n += 1;
        }
    }
    for tree in TREES {
        n += mirror(&from.join(tree), &to.join(tree))?;
    }
    Ok(n)
}

/// `signing.key.retired-*` in `dir`, relative.
fn retired_keys(dir: &Path) -> Result<Vec<PathBuf>> {
    let prefix = format!("{}.retired-", crate::sign::KEY_FILE);
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).ctx("listing", dir),
    };
    let mut out = Vec::new();
    for e in entries {
        let name = e.ctx("listing", dir)?.file_name();
        if name.to_string_lossy().starts_with(&prefix) {
            out.push(PathBuf::from(name));
        }
    }
    out.sort();
    Ok(out)
}

/// Every chunk the manifests of `store` name; a damaged manifest is an error naming its file.
fn named_chunks(store: &Store) -> Result<Vec<ChunkId>> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for file in store.all_version_files()? {
        for (_, id, _) in file.manifest?.chunks() {
            if seen.insert(id) {
                out.push(id);
            }
        }
    }
    Ok(out)
}

/// Makes `to` a copy of the tree `from` (files whose size or modification time differ are
/// copied, files `from` no longer has are removed); the number of files copied. A missing
/// `from` empties `to`.
fn mirror(from: &Path, to: &Path) -> Result<u64> {
    let mut copied = 0;
    let mut present = HashSet::new();
    if from.is_dir() {
        walk(from, &mut |path| {
            let rel = path
                .strip_prefix(from)
                .expect("walked under from")
                .to_path_buf();
            let dest = to.join(&rel);
            let (a, b) = (
                fs::metadata(path).ctx("reading", path)?,
                fs::metadata(&dest),
            );
            let same =
                b.is_ok_and(|b| b.len() == a.len() && b.modified().ok() == a.modified().ok());
            if !same {
                copy_file(path, &dest)?;
                copied += 1;
            }
            present.insert(rel);
            Ok(())
        })?;
    }
    if to.is_dir() {
        let mut stale = Vec::new();
        walk(to, &mut |path| {
            let rel = path.strip_prefix(to).expect("walked under to");
            if !present.contains(rel) {
                stale.push(path.to_path_buf());
            }
            Ok(())
        })?;
        for path in stale {
            fs::remove_file(&path).ctx("removing a file the source no longer has", &path)?;
        }
    }
    Ok(copied)
}

/// Calls `visit` for every regular file under `dir` (symlinks are followed only at the top).
fn walk(dir: &Path, visit: &mut dyn FnMut(&Path) -> Result<()>) -> Result<()> {
    for entry in fs::read_dir(dir).ctx("listing", dir)? {
        let entry = entry.ctx("listing", dir)?;
        let kind = entry.file_type().ctx("reading", &entry.path())?;
        if kind.is_dir() {
            walk(&entry.path(), visit)?;
        } else if kind.is_file() {
            visit(&entry.path())?;
        }
    }
    Ok(())
}

/// Copies `from` to `to` if `from` exists and `to` differs in size or contents; true if
/// copied.
fn copy_if_changed(from: &Path, to: &Path) -> Result<bool> {
    let new = match fs::read(from) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).ctx("reading", from),
    };
    if fs::read(to).is_ok_and(|old| old == new) {
        return Ok(false);
    }
    copy_file(from, to)?;
    Ok(true)
}

/// Copies a file through a temporary name (permissions and modification time kept), so a
/// reader never sees half of it.
fn copy_file(from: &Path, to: &Path) -> Result<()> {
    let dir = to.parent().expect("a file has a parent");
    fs::create_dir_all(dir).ctx("creating", dir)?;
    let tmp = dir.join(format!(
        ".partial-{}",
        to.file_name().expect("a file name").to_string_lossy()
    ));
    fs::copy(from, &tmp).ctx("copying", from)?;
    if let Ok(t) = fs::metadata(from).and_then(|m| m.modified()) {
        let _ = fs::File::options()
            .write(true)
            .open(&tmp)
            .and_then(|f| f.set_modified(t));
    }
    fs::rename(&tmp, to).ctx("renaming into place", to)?;
    Ok(())
}

fn set_private(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).ctx("setting mode 0600 on", path)
}

fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e).ctx("removing", path),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_is_mirrored_and_a_second_run_copies_nothing() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        fs::create_dir_all(a.join("x/y")).unwrap();
        fs::write(a.join("x/y/one"), b"1").unwrap();
        fs::write(a.join("two"), b"22").unwrap();
        assert_eq!(mirror(&a, &b).unwrap(), 2);
        assert_eq!(fs::read(b.join("x/y/one")).unwrap(), b"1");
        assert_eq!(mirror(&a, &b).unwrap(), 0, "nothing changed");
        fs::remove_file(a.join("two")).unwrap();
        fs::write(a.join("x/y/one"), b"111").unwrap();
        assert_eq!(mirror(&a, &b).unwrap(), 1);
        assert!(!b.join("two").exists(), "a file gone from the source goes");
        assert_eq!(fs::read(b.join("x/y/one")).unwrap(), b"111");
    }

    #[test]
    fn directories_inside_each_other_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let data = t.path().join("data");
        fs::create_dir_all(&data).unwrap();
        assert!(matches!(
            check_apart(&data, &data.join("backup")),
            Err(BackupError::Nested { .. })
        ));
        assert!(matches!(
            check_apart(&data.join("sub"), &data),
            Err(BackupError::Nested { .. })
        ));
        check_apart(&data, &t.path().join("elsewhere")).unwrap();
    }

    #[test]
    fn a_directory_without_its_record_is_unfinished() {
        let t = tempfile::tempdir().unwrap();
        let e = read_record(t.path()).unwrap_err();
        assert!(matches!(e, BackupError::Unfinished { .. }), "{e}");
        assert!(e.to_string().contains("run `bootcast backup` again"), "{e}");
    }
}

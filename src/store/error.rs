use std::io;
use std::path::PathBuf;

use super::id::ChunkId;
use super::manifest::ManifestError;

/// Everything the store can refuse, each naming the object and, where there is one, the fix.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no bootcast store at {0} (create one with `bootcast image add`, or point --data / BOOTCAST_DATA at an existing one)")]
    NoStore(PathBuf),
    #[error("{what} {path}: {cause}")]
    Io {
        what: &'static str,
        path: PathBuf,
        // Shown in the message and not a `source()`, so an error chain prints it once.
        cause: io::Error,
    },
    #[error("chunk {id} is corrupt ({path}): {reason}; run `bootcast store verify` to list the affected versions")]
    ChunkCorrupt {
        id: ChunkId,
        path: PathBuf,
        reason: String,
    },
    #[error("chunk {id} is missing from the store ({path}); run `bootcast store verify` to list the affected versions")]
    ChunkMissing { id: ChunkId, path: PathBuf },
    #[error("manifest {path} is damaged: {cause}; remove that version with `bootcast image rm` or restore the file")]
    ManifestCorrupt { path: PathBuf, cause: ManifestError },
    #[error("invalid image name {0:?}: use 1-64 characters from A-Z a-z 0-9 . _ - , not starting with '.' or '-'")]
    BadName(String),
    #[error("no image named {0:?} (see `bootcast image list`)")]
    UnknownImage(String),
    #[error("image {name} has no version {version:?} (see `bootcast image show {name}`)")]
    UnknownVersion { name: String, version: String },
    #[error("image {name} has no approved version yet: its captures wait for `bootcast image approve {name}@VERSION` (`bootcast image list` shows them)")]
    NotApproved { name: String },
    #[error("{name}@{version} is a capture that awaits approval: `bootcast image approve {name}@{version}` first (a push takes approved versions only)")]
    AwaitsApproval { name: String, version: String },
    #[error("version prefix {version:?} of image {name} is ambiguous; give more hex digits")]
    AmbiguousVersion { name: String, version: String },
    #[error("store config {path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("{0}")]
    Target(String),
    #[error("chunk {id} served by {url} is corrupt: {reason}; nothing of it was written; run `bootcast store verify` on that server to list the affected versions")]
    RemoteChunkCorrupt {
        id: ChunkId,
        url: String,
        reason: String,
    },
    #[error("chunk {id} is missing on the server ({url}); run `bootcast store verify` on that server to list the affected versions")]
    RemoteChunkMissing { id: ChunkId, url: String },
    #[error("fetching {url}: {reason}")]
    Fetch { url: String, reason: String },
    /// The server could not be reached (or the connection broke) after the retries: worth
    /// trying again later, unlike [`StoreError::Fetch`] (a refusal or a protocol error).
    #[error("fetching {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// The caller asked the export to stop ([`crate::store::export::ExportOptions::cancel`]).
    #[error("stopped: the work was cancelled")]
    Cancelled,
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Attaches what was being done and to which path to an I/O error.
pub(crate) trait IoContext<T> {
    fn ctx(self, what: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, what: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|cause| StoreError::Io {
            what,
            path: path.into(),
            cause,
        })
    }
}

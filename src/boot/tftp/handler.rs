//! Opening a read request: checks the name, holds one transfer slot, and finds the bytes: the
//! embedded iPXE binaries from memory, the Secure Boot chain from the node's HTTP service, other
//! files from the root. An open does no data I/O: the name checks run in memory; a root file is
//! resolved, opened and `fstat`ed (a few metadata syscalls, needed for `tsize`) on tokio's
//! blocking pool with a time limit; the data is read later, in 128 KiB pieces on the blocking
//! pool, as the transfer sends blocks. Opens run side by side (one task per request).

use std::fs::File;
use std::future::Future;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::name::{normalize, NameRefused};
use crate::boot::ipxe;

/// How much of a root file one blocking read fetches.
const READ_CHUNK: usize = 128 * 1024;
/// How long an open (resolve, open, fstat) of a root file may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the node's HTTP service may take to answer a name it serves (a relay waits up to
/// 8 s for upstream before it answers a boot script alone).
const HTTP_TIMEOUT: Duration = Duration::from_secs(12);

/// The TFTP root: its canonical path, and a descriptor that `openat2` resolves beneath.
#[derive(Debug)]
pub(crate) struct Root {
    path: PathBuf,
    fd: OwnedFd,
}

impl Root {
    pub(crate) fn open(path: &Path) -> io::Result<Root> {
        let path = std::fs::canonicalize(path)?;
        let dir = File::open(&path)?;
        if !dir.metadata()?.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                "not a directory",
            ));
        }
        Ok(Root {
            path,
            fd: dir.into(),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Opens `name` (already normalised) for reading: resolves symlinks, refuses anything
    /// outside the root or not a regular file. Returns the file and its size.
    fn open_file(&self, name: &str) -> Result<(File, u64), Refusal> {
        let canon = std::fs::canonicalize(self.path.join(name)).map_err(Refusal::from_io)?;
        let rel = match canon.strip_prefix(&self.path) {
            Ok(rel) if !rel.as_os_str().is_empty() => rel,
            Ok(_) => return Err(Refusal::NotRegular),
            Err(_) => return Err(Refusal::Escapes(canon)),
        };
        // `canon` holds no symlink; opening it beneath the root without following any closes
        // the window in which a component could be swapped for a link after the check.
        // O_NONBLOCK: a FIFO must not block the open (it is refused just below).
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
        let file = match nix::fcntl::openat2(&self.fd, rel, how) {
            Ok(fd) => File::from(fd),
            Err(Errno::ENOSYS) => {
                // Linux < 5.6: no openat2; O_NOFOLLOW at least guards the last component.
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NOCTTY | OFlag::O_NONBLOCK).bits())
                    .open(&canon)
                    .map_err(Refusal::from_io)?
            }
            Err(Errno::ELOOP | Errno::EXDEV) => return Err(Refusal::Escapes(canon)),
            Err(e) => return Err(Refusal::from_io(e.into())),
        };
        let meta = file.metadata().map_err(Refusal::Io)?;
        if !meta.is_file() {
            return Err(Refusal::NotRegular);
        }
        Ok((file, meta.len()))
    }
}

/// Why a request is not served.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("{0}")]
    Name(#[from] NameRefused),
    #[error("write requests are not served (read-only server)")]
    Write,
    #[error("too many transfers in progress (limit {0})")]
    Busy(usize),
    #[error("file not found")]
    NotFound,
    #[error("resolves outside the TFTP root, to {}", .0.display())]
    Escapes(PathBuf),
    #[error("not a regular file")]
    NotRegular,
    #[error("open took longer than {OPEN_TIMEOUT:?}")]
    OpenTimeout,
    #[error("{0}")]
    Io(io::Error),
}

impl Refusal {
    fn from_io(e: io::Error) -> Refusal {
        match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => Refusal::NotFound,
            _ => Refusal::Io(e),
        }
    }

    /// The ERROR the client gets (code, message): short, and never the server's paths.
    fn packet(&self) -> (u16, &'static str) {
        use super::packet::{ACCESS_VIOLATION, FILE_NOT_FOUND, NOT_DEFINED};
        match self {
            Refusal::Name(_) | Refusal::Write | Refusal::Escapes(_) | Refusal::NotRegular => {
                (ACCESS_VIOLATION, "Access violation")
            }
            Refusal::NotFound => (FILE_NOT_FOUND, "File not found"),
            Refusal::Busy(_) => (NOT_DEFINED, "server busy, try again later"),
            Refusal::OpenTimeout => (NOT_DEFINED, "open timed out"),
            Refusal::Io(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                (ACCESS_VIOLATION, "Access violation")
            }
            Refusal::Io(_) => (NOT_DEFINED, "cannot read file"),
        }
    }
}

/// Serves read requests from the embedded iPXE binaries, then the root.
pub(crate) struct BootHandler {
    pub(crate) root: Option<Arc<Root>>,
    pub(crate) slots: Arc<Semaphore>,
    pub(crate) max_transfers: usize,
    pub(crate) rt: Handle,
    /// The node's own HTTP service, for the names [`super::name::http_path`] maps.
    pub(crate) http: Option<axum::Router>,
}

impl BootHandler {
    /// Opens the file `raw` names for `client`, or the ERROR to answer (logged).
    pub(crate) async fn read(
        &self,
        client: &SocketAddr,
        raw: &str,
    ) -> Result<Transfer, (u16, &'static str)> {
        self.open(client, raw)
            .await
            .map_err(|why| self.refuse(client, raw, why))
    }

    /// The ERROR to a write request (logged).
    pub(crate) fn write(&self, client: &SocketAddr, raw: &str) -> (u16, &'static str) {
        self.refuse(client, raw, Refusal::Write)
    }

    fn refuse(&self, client: &SocketAddr, name: &str, why: Refusal) -> (u16, &'static str) {
        // Firmware probes for files that may not exist (config per MAC...): not a warning.
        if matches!(why, Refusal::NotFound) {
            info!(client = %client, file = name, reason = %why, "tftp: request refused");
        } else {
            warn!(client = %client, file = name, reason = %why, "tftp: request refused");
        }
        why.packet()
    }

    async fn open(&self, client: &SocketAddr, raw: &str) -> Result<Transfer, Refusal> {
        let name = normalize(raw)?;
        let permit = Arc::clone(&self.slots)
            .try_acquire_owned()
            .map_err(|_| Refusal::Busy(self.max_transfers))?;
        if let Some(bin) = ipxe::find(&name) {
            return Ok(Transfer::new(name, Source::Memory(bin.bytes), permit));
        }
        if let (Some(router), Some(path)) = (&self.http, super::name::http_path(&name)) {
            let fetch = http_get(router.clone(), *client, &path);
            let (body, size) = match tokio::time::timeout(HTTP_TIMEOUT, fetch).await {
                Err(_) => return Err(Refusal::OpenTimeout),
                Ok(r) => r?,
            };
            let mut t = Transfer::new(name, Source::Stream(body), permit);
            t.size = size;
            return Ok(t);
        }
        let Some(root) = self.root.clone() else {
            return Err(Refusal::NotFound);
        };
        let rel = name.clone();
        let job = self.rt.spawn_blocking(move || root.open_file(&rel));
        let (file, size) = match tokio::time::timeout(OPEN_TIMEOUT, job).await {
            Err(_) => return Err(Refusal::OpenTimeout),
            Ok(Err(join)) => return Err(Refusal::Io(io::Error::other(join))),
            Ok(Ok(opened)) => opened?,
        };
        let source = Source::File(FileReader {
            state: FileState::Idle(Some(file.take(size))),
            buf: Vec::new(),
            pos: 0,
            rt: self.rt.clone(),
        });
        let mut t = Transfer::new(name, source, permit);
        t.size = size;
        Ok(t)
    }
}

enum Source {
    Memory(&'static [u8]),
    File(FileReader),
    /// An answer of the node's HTTP service, read as it comes.
    Stream(Box<dyn futures_io::AsyncRead + Send + Unpin>),
}

/// `GET path` through the node's own HTTP service, as if `client` asked it: the body as a
/// reader and its length (0 if not given).
async fn http_get(
    router: axum::Router,
    client: SocketAddr,
    path: &str,
) -> Result<(Box<dyn futures_io::AsyncRead + Send + Unpin>, u64), Refusal> {
    use futures_util::TryStreamExt;
    use http_body_util::BodyExt;
    use tokio_util::compat::TokioAsyncReadCompatExt;
    use tower::ServiceExt;
    let mut req = axum::http::Request::get(path)
        .header("x-bootcast-via", "tftp")
        .body(axum::body::Body::empty())
        .map_err(|e| Refusal::Io(io::Error::other(e)))?;
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(client));
    let res = match router.oneshot(req).await {
        Ok(r) => r,
        Err(e) => match e {},
    };
    let status = res.status();
    if status == axum::http::StatusCode::NOT_FOUND {
        return Err(Refusal::NotFound);
    }
    if !status.is_success() {
        let body = res.into_body().collect().await.map(|b| b.to_bytes());
        let text = body
            .as_deref()
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        return Err(Refusal::Io(io::Error::other(format!(
            "HTTP {status} for {path}: {}",
            text.trim()
        ))));
    }
    let size = res
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let stream = TryStreamExt::map_err(res.into_body().into_data_stream(), io::Error::other);
    let reader = tokio_util::io::StreamReader::new(stream).compat();
    Ok((Box::new(reader), size))
}

/// An opened file as a transfer reads it. Holds a transfer slot until dropped.
pub(crate) struct Transfer {
    pub(crate) name: String,
    source: Source,
    /// Bytes in all, when known (0: not known, or empty).
    pub(crate) size: u64,
    read: u64,
    _slot: OwnedSemaphorePermit,
}

impl Transfer {
    fn new(name: String, source: Source, slot: OwnedSemaphorePermit) -> Self {
        let size = match &source {
            Source::Memory(b) => b.len() as u64,
            Source::File(_) | Source::Stream(_) => 0,
        };
        Transfer {
            name,
            source,
            size,
            read: 0,
            _slot: slot,
        }
    }
}

impl futures_io::AsyncRead for Transfer {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let n = match &mut this.source {
            Source::Memory(bytes) => {
                let start = (this.read as usize).min(bytes.len());
                let n = buf.len().min(bytes.len() - start);
                buf[..n].copy_from_slice(&bytes[start..start + n]);
                n
            }
            Source::File(f) => ready!(f.poll_read(cx, buf))?,
            Source::Stream(r) => ready!(Pin::new(r).poll_read(cx, buf))?,
        };
        this.read += n as u64;
        Poll::Ready(Ok(n))
    }
}

/// Reads a root file in [`READ_CHUNK`] pieces on tokio's blocking pool.
struct FileReader {
    state: FileState,
    buf: Vec<u8>,
    pos: usize,
    rt: Handle,
}

type ReadJob = JoinHandle<(io::Take<File>, io::Result<Vec<u8>>)>;

enum FileState {
    /// `None` only while a read job owns the file, or after an error.
    Idle(Option<io::Take<File>>),
    Reading(ReadJob),
    Eof,
}

impl FileReader {
    fn poll_read(&mut self, cx: &mut Context<'_>, out: &mut [u8]) -> Poll<io::Result<usize>> {
        loop {
            if self.pos < self.buf.len() {
                let n = out.len().min(self.buf.len() - self.pos);
                out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
                self.pos += n;
                return Poll::Ready(Ok(n));
            }
            match &mut self.state {
                FileState::Eof => return Poll::Ready(Ok(0)),
                FileState::Idle(file) => {
                    let Some(mut file) = file.take() else {
                        return Poll::Ready(Err(io::Error::other("earlier read failed")));
                    };
                    let mut buf = std::mem::take(&mut self.buf);
                    self.state = FileState::Reading(self.rt.spawn_blocking(move || {
                        buf.clear();
                        let res = (&mut file)
                            .take(READ_CHUNK as u64)
                            .read_to_end(&mut buf)
                            .map(|_| buf);
                        (file, res)
                    }));
                }
                FileState::Reading(job) => {
                    let (file, res) = ready!(Pin::new(job).poll(cx)).map_err(io::Error::other)?;
                    self.pos = 0;
                    match res {
                        Ok(buf) if buf.is_empty() => self.state = FileState::Eof,
                        Ok(buf) => {
                            self.buf = buf;
                            self.state = FileState::Idle(Some(file));
                        }
                        Err(e) => {
                            self.state = FileState::Idle(None);
                            return Poll::Ready(Err(e));
                        }
                    }
                }
            }
        }
    }
}

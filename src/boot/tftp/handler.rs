//! The async-tftp [`Handler`]: checks every request, serves the embedded iPXE binaries from
//! memory and other files from the root, and holds one transfer slot per open request.
//!
//! async-tftp calls `read_req_open` with its handler behind a mutex, so every open of every
//! client waits for the one before it. Here an open does no data I/O: the name checks run in
//! memory; a root file is resolved, opened and `fstat`ed (a few metadata syscalls, needed for
//! `tsize`) on tokio's blocking pool with a time limit; the data is read later, in 128 KiB
//! pieces on the blocking pool, as async-tftp asks for blocks.

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

use async_tftp::packet;
use async_tftp::server::Handler;
use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

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

    /// The ERROR packet the client gets: short, and never the server's paths.
    fn packet(&self) -> packet::Error {
        match self {
            Refusal::Name(_) | Refusal::Write | Refusal::Escapes(_) | Refusal::NotRegular => {
                packet::Error::PermissionDenied
            }
            Refusal::NotFound => packet::Error::FileNotFound,
            Refusal::Busy(_) => packet::Error::Msg("server busy, try again later".into()),
            Refusal::OpenTimeout => packet::Error::Msg("open timed out".into()),
            Refusal::Io(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                packet::Error::PermissionDenied
            }
            Refusal::Io(_) => packet::Error::Msg("cannot read file".into()),
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
    fn refuse(&self, client: &SocketAddr, name: &str, why: Refusal) -> packet::Error {
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
            return Ok(Transfer::new(
                *client,
                name,
                Source::Memory(bin.bytes),
                permit,
            ));
        }
        if let (Some(router), Some(path)) = (&self.http, super::name::http_path(&name)) {
            let fetch = http_get(router.clone(), *client, &path);
            let (body, size) = match tokio::time::timeout(HTTP_TIMEOUT, fetch).await {
                Err(_) => return Err(Refusal::OpenTimeout),
                Ok(r) => r?,
            };
            let mut t = Transfer::new(*client, name, Source::Stream(body), permit);
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
        let mut t = Transfer::new(*client, name, source, permit);
        t.size = size;
        Ok(t)
    }
}

impl Handler for BootHandler {
    type Reader = Transfer;
    type Writer = NoWriter;

    async fn read_req_open(
        &mut self,
        client: &SocketAddr,
        path: &Path,
    ) -> Result<(Transfer, Option<u64>), packet::Error> {
        // async-tftp parsed the name as UTF-8, so this is the name the client sent.
        let raw = path.to_string_lossy();
        match self.open(client, &raw).await {
            Ok(t) => {
                debug!(client = %client, file = %t.name, size = t.size, "tftp: transfer starts");
                // No tsize for an empty file: curl (7.88) aborts on "tsize 0" in an OACK, and
                // the option is the server's to drop (RFC 2347).
                let size = (t.size > 0).then_some(t.size);
                Ok((t, size))
            }
            Err(why) => Err(self.refuse(client, &raw, why)),
        }
    }

    async fn write_req_open(
        &mut self,
        client: &SocketAddr,
        path: &Path,
        _size: Option<u64>,
    ) -> Result<NoWriter, packet::Error> {
        Err(self.refuse(client, &path.to_string_lossy(), Refusal::Write))
    }
}

/// The writer type of a handler that never accepts a write.
pub(crate) enum NoWriter {}

impl futures_io::AsyncWrite for NoWriter {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<io::Result<usize>> {
        match *self {}
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        match *self {}
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        match *self {}
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

/// One transfer as async-tftp reads it. Holds a transfer slot until async-tftp drops it (the
/// transfer finished, failed, or ran out of retries) and then logs one line.
pub(crate) struct Transfer {
    client: SocketAddr,
    name: String,
    source: Source,
    size: u64,
    /// Bytes handed to async-tftp.
    read: u64,
    /// The first read's length: async-tftp reads one block at a time, so this is the block
    /// size it negotiated.
    blksize: Option<usize>,
    eof: bool,
    failed: bool,
    _slot: OwnedSemaphorePermit,
}

impl Transfer {
    fn new(client: SocketAddr, name: String, source: Source, slot: OwnedSemaphorePermit) -> Self {
        let size = match &source {
            Source::Memory(b) => b.len() as u64,
            Source::File(_) | Source::Stream(_) => 0,
        };
        Transfer {
            client,
            name,
            source,
            size,
            read: 0,
            blksize: None,
            eof: false,
            failed: false,
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
        this.blksize.get_or_insert(buf.len());
        let res = match &mut this.source {
            Source::Memory(bytes) => {
                let start = (this.read as usize).min(bytes.len());
                let n = buf.len().min(bytes.len() - start);
                buf[..n].copy_from_slice(&bytes[start..start + n]);
                Ok(n)
            }
            Source::File(f) => ready!(f.poll_read(cx, buf)),
            Source::Stream(r) => ready!(Pin::new(r).poll_read(cx, buf)),
        };
        match &res {
            Ok(0) if !buf.is_empty() => this.eof = true,
            Ok(n) => this.read += *n as u64,
            Err(e) => {
                warn!(client = %this.client, file = %this.name, error = %e, "tftp: read failed");
                this.failed = true;
            }
        }
        Poll::Ready(res)
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        // async-tftp reads ahead of the client's ACKs (a block, or a window), so "read to the
        // end" means every byte was sent at least once; the last ACK is not visible here.
        let complete = self.eof && !self.failed && self.read == self.size;
        info!(
            client = %self.client,
            file = %self.name,
            bytes = self.read,
            size = self.size,
            blksize = ?self.blksize,
            complete,
            "tftp: transfer ended"
        );
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

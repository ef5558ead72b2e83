//! Read-only TFTP server (async-tftp underneath) for the iPXE binaries and a configured root.
//!
//! # What is served
//! 1. The embedded iPXE binaries ([`crate::boot::ipxe`]) by their names (`undionly.kpxe`,
//!    `snponly.efi`, `ipxe.efi`), from memory, whatever the root holds.
//! 2. The Secure Boot chain ([`name::http_path`]): `shimx64.efi`, `grubx64.efi`,
//!    `grub/grub.cfg`, each machine's `grub/grub.cfg-MAC` and `bootenv/*`, answered by the
//!    node's own HTTP service ([`TftpSettings::http`]) as if the TFTP client had asked it: a
//!    machine's configuration is its boot script, decided as for iPXE, and its credential is
//!    bound to the address the request came from. The answer streams as it is read.
//!    async-tftp opens one request at a time, so a slow answer (a relay waiting for upstream,
//!    at most 8 s) holds the next opens back; one taking over 12 s is refused.
//! 3. Regular files under [`TftpSettings::root`], if set.
//!
//! # Names
//! Firmware and iPXE ask for relative names (`undionly.kpxe`). One leading `/` is dropped, so
//! `/undionly.kpxe` is the same file (as with `in.tftpd -s`): every name is relative to the
//! root, never the host's `/`. Refused with an access-violation ERROR (and a `warn` log line
//! naming the client): a name still absolute after that (`//etc/passwd`), any `..`
//! component, a backslash, NUL or any control character, an empty name, a name that resolves
//! (through symlinks) outside the root, anything not a regular file. Symlinks that stay inside
//! the root are followed. Write requests are refused the same way. Names that do not exist get
//! "file not found".
//!
//! # Protocol
//! RFC 1350 with the options blksize (RFC 2348, capped at [`TftpSettings::max_block_size`]),
//! tsize and timeout (RFC 2349) and windowsize (RFC 7440); netascii is served as octet. No
//! tsize is offered for an empty file (curl aborts on `tsize 0`). Block
//! numbers wrap from 65535 to 0, so files past 32 MiB at blksize 512 work with clients that
//! wrap the same way (tftp-hpa, atftp and curl do: tests/tftp.rs).
//!
//! # Limits
//! At most [`TftpSettings::max_transfers`] transfers at once; past that a request gets an ERROR
//! ("server busy"), not silence. A block is sent at most `1 + max_retries` times, waiting
//! [`TftpSettings::timeout`] (or the client's `timeout` option) for its ACK; then the transfer
//! ends and frees its slot. async-tftp ignores ERROR packets from clients (upstream issue #18):
//! a client that aborts (OVMF sends ERROR 8 after the OACK of its `tsize` probe) keeps its slot
//! until those retries run out, about `(1 + max_retries) × timeout`. Malformed datagrams are
//! dropped silently by async-tftp; they never stop the server.
//!
//! # Logs
//! `warn` for each refusal (client, name, reason; `info` for a name that does not exist);
//! `info` once per transfer when it ends (client, file, bytes read, size, block size,
//! complete). async-tftp does not show a handler
//! the options of a request, so windowsize/timeout do not appear in that line.

mod handler;
pub mod name;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_tftp::server::TftpServerBuilder;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::info;

use handler::{BootHandler, Root};

/// What the TFTP server serves and how hard it tries.
#[derive(Debug, Clone)]
pub struct TftpSettings {
    /// Directory served after the embedded iPXE binaries; `None`: only those.
    pub root: Option<PathBuf>,
    /// Transfers in progress at once; a request past this gets an ERROR. At least 1.
    pub max_transfers: usize,
    /// Wait for an ACK before sending again, unless the client asks for another `timeout`.
    pub timeout: Duration,
    /// Times a block (or window) is sent again before the transfer is given up.
    pub max_retries: u32,
    /// Largest blksize granted (a client asking more gets this). 1468 fills a 1500-byte MTU.
    pub max_block_size: u16,
    /// The node's own HTTP service: it answers the names of the Secure Boot chain
    /// ([`name::http_path`]) as `GET`s from the TFTP client's address. `None`: not served.
    pub http: Option<axum::Router>,
}

impl Default for TftpSettings {
    fn default() -> Self {
        TftpSettings {
            root: None,
            max_transfers: 64,
            timeout: Duration::from_secs(1),
            max_retries: 5,
            max_block_size: 1468,
            http: None,
        }
    }
}

/// Why the TFTP server could not start, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum TftpError {
    #[error("TFTP root {}: {source}", path.display())]
    Root {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("TFTP settings: {0}")]
    Settings(&'static str),
    #[error("TFTP server must run inside a tokio runtime")]
    NoRuntime,
    #[error("TFTP socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("TFTP server setup: {0}")]
    Setup(#[source] async_tftp::Error),
    #[error("TFTP server on {addr} stopped: {source}")]
    Stopped {
        addr: SocketAddr,
        #[source]
        source: async_tftp::Error,
    },
}

/// Serves TFTP on `socket` (bound by the caller, e.g. to `0.0.0.0:69`) until `cancel` fires;
/// cancelling drops every transfer in progress. Must run inside a tokio runtime.
///
/// Each transfer gets its own socket bound to the listening socket's IP (port 0), as TFTP wants;
/// with a wildcard listener the kernel picks the reply's source address by routing.
/// Returns `Ok(())` when cancelled, an error if setup fails or the socket fails.
pub async fn run(
    socket: tokio::net::UdpSocket,
    settings: TftpSettings,
    cancel: CancellationToken,
) -> Result<(), TftpError> {
    if settings.max_transfers == 0 {
        return Err(TftpError::Settings("max_transfers must be at least 1"));
    }
    if settings.max_block_size < 8 {
        return Err(TftpError::Settings("max_block_size must be at least 8"));
    }
    let rt = tokio::runtime::Handle::try_current().map_err(|_| TftpError::NoRuntime)?;
    let root = match &settings.root {
        None => None,
        Some(path) => Some(Arc::new(Root::open(path).map_err(|source| {
            TftpError::Root {
                path: path.clone(),
                source,
            }
        })?)),
    };
    let addr = socket.local_addr().map_err(TftpError::Socket)?;
    let socket = socket.into_std().map_err(TftpError::Socket)?;
    let handler = BootHandler {
        root: root.clone(),
        slots: Arc::new(Semaphore::new(settings.max_transfers)),
        max_transfers: settings.max_transfers,
        rt,
        http: settings.http.clone(),
    };
    let server = TftpServerBuilder::with_handler(handler)
        .std_socket(socket)
        .map_err(TftpError::Setup)?
        .timeout(settings.timeout)
        .max_send_retries(settings.max_retries)
        .block_size_limit(settings.max_block_size)
        .build()
        .await
        .map_err(TftpError::Setup)?;
    info!(
        %addr,
        root = ?root.as_ref().map(|r| r.path()),
        max_transfers = settings.max_transfers,
        "tftp: serving"
    );
    tokio::select! {
        res = server.serve() => res.map_err(|source| TftpError::Stopped { addr, source }),
        () = cancel.cancelled() => {
            info!(%addr, "tftp: stopped");
            Ok(())
        }
    }
}

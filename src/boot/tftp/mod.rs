//! Read-only TFTP server for the iPXE binaries, the Secure Boot chain and a configured root.
//!
//! # What is served
//! 1. The embedded iPXE binaries ([`crate::boot::ipxe`]) by their names (`undionly.kpxe`,
//!    `snponly.efi`, `ipxe.efi`), from memory, whatever the root holds.
//! 2. The Secure Boot chain ([`name::http_path`]): `shimx64.efi`, `grubx64.efi`,
//!    `grub/grub.cfg`, each machine's `grub/grub.cfg-MAC` and `bootenv/*`, answered by the
//!    node's own HTTP service ([`TftpSettings::http`]) as if the TFTP client had asked it: a
//!    machine's configuration is its boot script, decided as for iPXE, and its credential is
//!    bound to the address the request came from. The answer streams as it is read; one
//!    taking over 12 s is refused. Requests are opened side by side: a slow answer holds
//!    back no other request.
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
//! # Protocol ([`packet`], [`transfer`])
//! RFC 1350 with the options blksize (RFC 2348, capped at [`TftpSettings::max_block_size`]),
//! tsize and timeout (RFC 2349) and windowsize (RFC 7440, at most
//! [`transfer::MAX_WINDOW`]). Modes: `octet`, and `netascii` converted on the wire (LF → CR LF,
//! CR → CR NUL; no tsize offered, the wire size differs); `mail` and unknown modes get ERROR 4.
//! No tsize is offered for an empty file (curl aborts on `tsize 0`). Block numbers wrap from
//! 65535 to 0, so files past 32 MiB at blksize 512 work with clients that wrap the same way
//! (tftp-hpa, atftp and curl do: tests/tftp.rs). Each transfer has its own socket (transfer
//! ID); a datagram to it from another address gets ERROR 5 and the transfer goes on. An ERROR
//! from the client ends its transfer at once (OVMF sends ERROR 8 after the OACK of its
//! `tsize` probe). A malformed request gets ERROR 4 naming what is wrong; other garbage on
//! the server port is dropped.
//!
//! # Limits
//! At most [`TftpSettings::max_transfers`] transfers at once; past that a request gets an ERROR
//! ("server busy"), not silence. A block (or window) is sent at most `1 + max_retries` times,
//! waiting [`TftpSettings::timeout`] (or the client's `timeout` option) for its ACK; then the
//! transfer ends with an ERROR and frees its slot. In lock-step a duplicate ACK is never
//! answered (the Sorcerer's Apprentice bug); with a window, an ACK of the block before it
//! sends the window again at once.
//!
//! # Logs
//! `warn` for each refusal (client, name, reason; `info` for a name that does not exist);
//! `info` once per transfer when it ends (client, file, mode, bytes, size, blksize,
//! windowsize, DATA sent and resent, how it ended).

mod handler;
pub mod name;
pub mod packet;
pub mod transfer;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use packet::{Mode, Packet};

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
    #[error("TFTP server on {addr} stopped: {source}")]
    Stopped {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
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
    let server = Arc::new(Server {
        handler: BootHandler {
            root: root.clone(),
            slots: Arc::new(Semaphore::new(settings.max_transfers)),
            max_transfers: settings.max_transfers,
            rt,
            http: settings.http.clone(),
        },
        settings,
        ip: addr.ip(),
    });
    info!(
        %addr,
        root = ?root.as_ref().map(|r| r.path()),
        max_transfers = server.settings.max_transfers,
        "tftp: serving"
    );
    // every request's task, dropped (so aborted) with this function
    let mut tasks = tokio::task::JoinSet::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        let (len, client) = tokio::select! {
            () = cancel.cancelled() => {
                info!(%addr, "tftp: stopped");
                return Ok(());
            }
            got = socket.recv_from(&mut buf) => match got {
                Ok(got) => got,
                // an ICMP error of an earlier send, or a datagram larger than the buffer
                Err(e) if is_transient(&e) => continue,
                Err(source) => return Err(TftpError::Stopped { addr, source }),
            },
            // reap finished requests as they end
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        let request = match packet::parse(&buf[..len]) {
            Ok(Packet::Read(r)) => Ok((r, false)),
            Ok(Packet::Write(r)) => Ok((r, true)),
            // a request that cannot be read: answered, so the client learns why
            Err(e) if len >= 2 && matches!(u16::from_be_bytes([buf[0], buf[1]]), 1 | 2) => Err(e),
            Ok(other) => {
                debug!(%client, packet = ?other, "tftp: not a request, dropped");
                continue;
            }
            Err(e) => {
                debug!(%client, error = %e, "tftp: malformed datagram dropped");
                continue;
            }
        };
        let server = Arc::clone(&server);
        tasks.spawn(async move { server.answer(client, request).await });
    }
}

/// Errors of `recv_from` on a UDP socket that say nothing about the socket itself.
fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionReset | HostUnreachable | NetworkUnreachable | Interrupted
    ) || e.raw_os_error() == Some(nix::libc::EMSGSIZE)
}

struct Server {
    handler: BootHandler,
    settings: TftpSettings,
    /// The listening address: each transfer's socket is bound to it (port 0).
    ip: std::net::IpAddr,
}

impl Server {
    /// Answers one request from its own socket: the transfer, or an ERROR.
    async fn answer(
        &self,
        client: SocketAddr,
        request: Result<(packet::Request, bool), packet::Malformed>,
    ) {
        let sock = match UdpSocket::bind(SocketAddr::new(self.ip, 0)).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%client, error = %e, "tftp: no socket for a transfer");
                return;
            }
        };
        let refuse = |code: u16, message: &str| {
            let p = packet::error(code, message);
            let sock = &sock;
            async move {
                let _ = sock.send_to(&p, client).await;
            }
        };
        let (req, write) = match request {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(%client, reason = %e, "tftp: request refused");
                return refuse(
                    packet::ILLEGAL_OPERATION,
                    &format!("malformed request: {e}"),
                )
                .await;
            }
        };
        let name = String::from_utf8_lossy(&req.filename).into_owned();
        match &req.mode {
            Mode::Octet | Mode::Netascii => {}
            Mode::Mail => {
                tracing::warn!(%client, file = %name, reason = "mail mode", "tftp: request refused");
                return refuse(packet::ILLEGAL_OPERATION, "mail mode is not supported").await;
            }
            Mode::Other(m) => {
                tracing::warn!(%client, file = %name, reason = %format!("unknown mode {m:?}"), "tftp: request refused");
                return refuse(
                    packet::ILLEGAL_OPERATION,
                    &format!("unknown mode {m:?}: use octet or netascii"),
                )
                .await;
            }
        }
        if write {
            let (code, message) = self.handler.write(&client, &name);
            return refuse(code, message).await;
        }
        let file = match self.handler.read(&client, &name).await {
            Ok(t) => t,
            Err((code, message)) => return refuse(code, message).await,
        };
        let (file_name, size) = (file.name.clone(), file.size);
        let n = transfer::negotiate(
            &req.options,
            &req.mode,
            Some(size),
            self.settings.max_block_size,
            self.settings.timeout,
        );
        debug!(%client, file = %file_name, size, "tftp: transfer starts");
        let r = transfer::send(
            &sock,
            client,
            file,
            &req.mode,
            &n,
            self.settings.max_retries,
        )
        .await;
        info!(
            %client,
            file = %file_name,
            mode = if req.mode == Mode::Netascii { "netascii" } else { "octet" },
            bytes = r.bytes,
            size,
            blksize = n.blksize,
            windowsize = n.windowsize,
            sent = r.sent,
            resent = r.resent,
            strangers = r.strangers,
            complete = r.ended == transfer::Ended::Complete,
            ended = ?r.ended,
            "tftp: transfer ended"
        );
    }
}

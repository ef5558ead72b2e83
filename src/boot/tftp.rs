//! Read-only TFTP server. Work in progress (stub until the TFTP branch lands).

use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

pub struct TftpSettings {
    pub root: Option<PathBuf>,
    pub max_transfers: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("TFTP is not built yet")]
pub struct TftpError;

pub async fn run(
    _socket: tokio::net::UdpSocket,
    _settings: TftpSettings,
    cancel: CancellationToken,
) -> Result<(), TftpError> {
    cancel.cancelled().await;
    Ok(())
}

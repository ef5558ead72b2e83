//! Runs only bootcast's TFTP server, for the TFTP bench (`bench/boot/tftp.sh`) and manual tests.
//! Not the product's entry point (that is `bootcast serve`).
//!
//! ```sh
//! cargo run --release --example tftp_serve -- --listen 127.0.0.1:6969 --root /srv/tftp
//! ```
//! Prints `listening on ADDR` on stdout once the socket is bound (useful with port 0), logs to
//! stderr (`RUST_LOG`, default `info`), stops on SIGINT/SIGTERM.
#![forbid(unsafe_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use bootcast::boot::tftp::{self, TftpSettings};
use clap::Parser;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:6969")]
    listen: SocketAddr,
    /// Directory served after the embedded iPXE binaries.
    #[arg(long)]
    root: Option<PathBuf>,
    #[arg(long, default_value_t = TftpSettings::default().max_transfers)]
    max_transfers: usize,
    /// Retransmission timeout in milliseconds.
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
    #[arg(long, default_value_t = TftpSettings::default().max_retries)]
    max_retries: u32,
    #[arg(long, default_value_t = TftpSettings::default().max_block_size)]
    max_block_size: u16,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let socket = tokio::net::UdpSocket::bind(args.listen)
        .await
        .with_context(|| format!("bind {}", args.listen))?;
    let addr = socket.local_addr()?;
    println!("listening on {addr}");
    std::io::stdout().flush()?;
    let settings = TftpSettings {
        root: args.root,
        max_transfers: args.max_transfers,
        timeout: Duration::from_millis(args.timeout_ms),
        max_retries: args.max_retries,
        max_block_size: args.max_block_size,
        http: None,
    };
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        stop.cancel();
    });
    tftp::run(socket, settings, cancel).await?;
    Ok(())
}

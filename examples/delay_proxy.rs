//! A TCP proxy that adds latency, for bench/wan (this machine's kernel has no netem): every
//! byte read from one side is written to the other `--rtt-ms / 2` later, in each direction,
//! so a request/response pair takes `--rtt-ms` longer, as over a WAN link. Bytes are relayed
//! in order, as they arrive; each direction holds at most `--buffer` bytes in flight (then it
//! stops reading, so the sender's TCP window closes as it would on a long link).
//!
//!   delay_proxy --listen 127.0.0.1:9443 --to 10.99.50.1:8443 --rtt-ms 50

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, Notify, Semaphore};
use tokio::time::Instant;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    listen: SocketAddr,
    #[arg(long)]
    to: SocketAddr,
    /// Round-trip time added (half in each direction)
    #[arg(long)]
    rtt_ms: u64,
    /// Bytes one direction holds at most
    #[arg(long, default_value_t = 8 << 20)]
    buffer: usize,
}

/// Pieces read and not yet written, each with the instant it may be written.
type Queue = Arc<Mutex<VecDeque<(Instant, Vec<u8>)>>>;

/// One direction: reads `from`, writes each piece to `to` once its delay has passed.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
    buffer: usize,
) {
    let queue: Queue = Arc::default();
    let ready = Arc::new(Notify::new());
    let room = Arc::new(Semaphore::new(buffer));
    let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (queue, ready, room, closed) =
            (queue.clone(), ready.clone(), room.clone(), closed.clone());
        tokio::spawn(async move {
            loop {
                let next = queue.lock().await.pop_front();
                match next {
                    Some((at, bytes)) => {
                        tokio::time::sleep_until(at).await;
                        if to.write_all(&bytes).await.is_err() {
                            return;
                        }
                        room.add_permits(bytes.len());
                    }
                    None if closed.load(std::sync::atomic::Ordering::Acquire) => {
                        let _ = to.shutdown().await;
                        return;
                    }
                    None => ready.notified().await,
                }
            }
        })
    };
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let Ok(permit) = room.acquire_many(n as u32).await else {
            break;
        };
        permit.forget();
        queue
            .lock()
            .await
            .push_back((Instant::now() + delay, buf[..n].to_vec()));
        ready.notify_one();
    }
    closed.store(true, std::sync::atomic::Ordering::Release);
    ready.notify_one();
    let _ = writer.await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(args.listen).await?;
    let delay = Duration::from_millis(args.rtt_ms) / 2;
    eprintln!(
        "delay_proxy: {} -> {} with {} ms of round trip",
        args.listen, args.to, args.rtt_ms
    );
    loop {
        let (client, _) = listener.accept().await?;
        let to = args.to;
        let buffer = args.buffer;
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(to).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::join!(pipe(cr, sw, delay, buffer), pipe(sr, cw, delay, buffer));
        });
    }
}

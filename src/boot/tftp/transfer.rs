//! One read transfer on its own socket (its transfer ID): options negotiated (RFC 2347-2349,
//! 7440), blocks sent in lock-step or in windows, resent on timeout, and ended at once by the
//! client's ERROR. A datagram from anyone else gets ERROR 5 and the transfer goes on.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::AsyncReadExt;
use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::handler::Transfer;
use super::packet::{self, Mode, NetasciiEncoder, Packet};

/// Largest windowsize granted: 64 blocks of 1468 bytes is 92 KiB in flight, more than a
/// boot file's client needs on a LAN.
pub const MAX_WINDOW: u16 = 64;
/// Largest blksize RFC 2348 allows.
const MAX_BLKSIZE: u64 = 65_464;

/// What the server granted of a request's options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub blksize: usize,
    pub windowsize: u16,
    pub timeout: Duration,
    /// The options answered in the OACK, in the order asked (empty: no OACK, DATA 1 at once).
    pub oack: Vec<(&'static str, String)>,
}

/// Grants what the server supports of `options`: blksize up to `max_blksize`, tsize (octet
/// mode, a known non-empty size: curl aborts on `tsize 0`), timeout of 1-255 s, windowsize
/// up to [`MAX_WINDOW`]. Values out of range and unknown options are left out of the OACK
/// (RFC 2347: the server's to drop), so the defaults apply.
pub fn negotiate(
    options: &[(String, String)],
    mode: &Mode,
    size: Option<u64>,
    max_blksize: u16,
    timeout: Duration,
) -> Negotiated {
    let mut n = Negotiated {
        blksize: 512,
        windowsize: 1,
        timeout,
        oack: Vec::new(),
    };
    for (name, value) in options {
        let v: Option<u64> = value.trim().parse().ok();
        match (name.as_str(), v) {
            ("blksize", Some(b)) if (8..=MAX_BLKSIZE).contains(&b) => {
                n.blksize = b.min(u64::from(max_blksize)) as usize;
                n.oack.push(("blksize", n.blksize.to_string()));
            }
            ("tsize", Some(_)) if *mode == Mode::Octet => {
                if let Some(s) = size.filter(|s| *s > 0) {
                    n.oack.push(("tsize", s.to_string()));
                }
            }
            ("timeout", Some(t)) if (1..=255).contains(&t) => {
                n.timeout = Duration::from_secs(t);
                n.oack.push(("timeout", t.to_string()));
            }
            ("windowsize", Some(w)) if (1..=65_535).contains(&w) => {
                n.windowsize = (w as u16).min(MAX_WINDOW);
                n.oack.push(("windowsize", n.windowsize.to_string()));
            }
            _ => {}
        }
    }
    n
}

/// How a transfer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// Every block was acknowledged.
    Complete,
    /// The client sent an ERROR (e.g. OVMF's ERROR 8 after the OACK of its size probe).
    ClientError { code: u16, message: String },
    /// A block (or window) went unacknowledged `1 + retries` times.
    TimedOut,
    /// Reading the file failed (the client got an ERROR).
    ReadFailed(String),
    /// The socket failed.
    Socket(String),
}

/// What a transfer did, for its log line.
#[derive(Debug, Clone)]
pub struct Report {
    pub ended: Ended,
    /// File bytes in the blocks the client acknowledged (wire bytes in netascii).
    pub bytes: u64,
    /// DATA packets sent, first sends and resends.
    pub sent: u64,
    pub resent: u64,
    /// Datagrams from other transfer IDs, answered with ERROR 5.
    pub strangers: u64,
}

/// The blocks of a file as they go on the wire.
struct Blocks {
    source: Transfer,
    netascii: Option<NetasciiEncoder>,
    /// Converted bytes not yet in a block, from `start`.
    pending: Vec<u8>,
    start: usize,
    raw: Vec<u8>,
    eof: bool,
}

impl Blocks {
    /// The DATA packet of the next block, numbered `number`: `blksize` bytes of data, fewer
    /// for the last one (possibly none).
    async fn next(&mut self, blksize: usize, number: u16) -> std::io::Result<Vec<u8>> {
        while self.pending.len() - self.start < blksize && !self.eof {
            if self.start > 0 {
                self.pending.drain(..self.start);
                self.start = 0;
            }
            let want = blksize.max(64 * 1024);
            self.raw.resize(want, 0);
            let n = self.source.read(&mut self.raw).await?;
            if n == 0 {
                self.eof = true;
            } else if let Some(enc) = &mut self.netascii {
                enc.encode(&self.raw[..n], &mut self.pending);
            } else {
                self.pending.extend_from_slice(&self.raw[..n]);
            }
        }
        let take = blksize.min(self.pending.len() - self.start);
        let mut packet = Vec::with_capacity(4 + take);
        packet.extend_from_slice(&packet::data_header(number));
        packet.extend_from_slice(&self.pending[self.start..self.start + take]);
        self.start += take;
        Ok(packet)
    }
}

/// Sends `source` to `client` from `sock` as `n` says; `retries`: resends of a block or window
/// before giving up.
pub(crate) async fn send(
    sock: &UdpSocket,
    client: SocketAddr,
    source: Transfer,
    mode: &Mode,
    n: &Negotiated,
    retries: u32,
) -> Report {
    let mut r = Report {
        ended: Ended::Complete,
        bytes: 0,
        sent: 0,
        resent: 0,
        strangers: 0,
    };
    let mut blocks = Blocks {
        source,
        netascii: (*mode == Mode::Netascii).then_some(NetasciiEncoder),
        pending: Vec::new(),
        start: 0,
        raw: Vec::new(),
        eof: false,
    };
    let mut buf = vec![0u8; 65_536];
    let fail = |e: std::io::Error| Ended::Socket(e.to_string());

    // the blocks: `window` holds those not yet acknowledged, the oldest numbered `first`
    // (1-based, not wrapped: the wire number is its low 16 bits); all of it is sent each time
    // the window moves or times out. An OACK is "block 0": alone in the first window, and
    // acknowledged by ACK 0 before any DATA goes.
    let window_size = usize::from(n.windowsize.max(1));
    let mut window: std::collections::VecDeque<(usize, Vec<u8>)> = Default::default();
    let mut first: u64 = 1;
    if !n.oack.is_empty() {
        window.push_back((0, packet::option_ack(&n.oack)));
        first = 0;
    }
    let mut last: Option<u64> = None;
    let mut highest_sent = 0;
    let mut tries = 0;
    let mut gso = true;
    loop {
        while window.len() < window_size && last.is_none() && first > 0 {
            let idx = first + window.len() as u64;
            match blocks.next(n.blksize, idx as u16).await {
                Ok(p) => {
                    let len = p.len() - 4;
                    if len < n.blksize {
                        last = Some(idx);
                    }
                    window.push_back((len, p));
                }
                Err(e) => {
                    let _ = sock
                        .send_to(
                            &packet::error(packet::NOT_DEFINED, "cannot read file"),
                            client,
                        )
                        .await;
                    r.ended = Ended::ReadFailed(e.to_string());
                    return r;
                }
            }
        }
        let packets: Vec<&[u8]> = window.iter().map(|(_, p)| p.as_slice()).collect();
        if let Err(e) = send_all(sock, client, &packets, &mut gso).await {
            r.ended = fail(e);
            return r;
        }
        for k in 0..window.len() {
            let idx = first + k as u64;
            if idx == 0 {
                continue; // the OACK
            }
            r.sent += 1;
            if idx <= highest_sent {
                r.resent += 1;
            }
            highest_sent = highest_sent.max(idx);
        }
        // the client's answer
        loop {
            match wait(sock, client, &mut buf, n.timeout, &mut r).await {
                Heard::Ack(a) => {
                    match (0..window.len()).find(|k| (first + *k as u64) as u16 == a) {
                        Some(k) => {
                            for _ in 0..=k {
                                let (len, _) = window.pop_front().expect("in the window");
                                r.bytes += len as u64;
                            }
                            first += k as u64 + 1;
                            tries = 0;
                            if last.is_some_and(|l| first > l) {
                                return r;
                            }
                            // what followed in the window was dropped by the client (RFC
                            // 7440): it goes again with the new blocks
                            break;
                        }
                        // the block before the window: the window's first block was lost
                        None if window_size > 1 && first > 1 && (first - 1) as u16 == a => break,
                        // an older ACK: never answered (in lock-step, answering duplicates
                        // is the Sorcerer's Apprentice bug, every block sent twice from then)
                        None => {}
                    }
                }
                Heard::Nothing => {}
                Heard::Error(code, message) => {
                    r.ended = Ended::ClientError { code, message };
                    return r;
                }
                Heard::Failed(e) => {
                    r.ended = e;
                    return r;
                }
                Heard::TimedOut => {
                    tries += 1;
                    if tries > retries {
                        give_up(sock, client, &mut r).await;
                        return r;
                    }
                    break;
                }
            }
        }
    }
}

/// Most bytes one segmented send carries (a UDP datagram's limit, before segmentation).
const GSO_MAX_BYTES: usize = 65_000;
/// Most segments the kernel takes in one send (UDP_MAX_SEGMENTS).
const GSO_MAX_SEGMENTS: usize = 64;

/// Sends `packets` to `client` in order: a window of equal packets (the last may be shorter)
/// as few segmented sends (UDP GSO: one system call for up to 64 datagrams); one send each
/// when there is one packet, or the kernel refuses segmentation (`gso` is then cleared for
/// the rest of the transfer).
async fn send_all(
    sock: &UdpSocket,
    client: SocketAddr,
    packets: &[&[u8]],
    gso: &mut bool,
) -> std::io::Result<()> {
    let seg = packets.first().map_or(0, |p| p.len());
    let uniform = packets.len() > 1
        && packets[..packets.len() - 1].iter().all(|p| p.len() == seg)
        && packets[packets.len() - 1].len() <= seg;
    if *gso && uniform {
        let per_send = (GSO_MAX_BYTES / seg.max(1)).clamp(1, GSO_MAX_SEGMENTS);
        let mut sent = 0;
        while sent < packets.len() {
            let batch = &packets[sent..(sent + per_send).min(packets.len())];
            match send_segmented(sock, client, batch, seg).await {
                Ok(()) => sent += batch.len(),
                Err(e) if !is_gso_refusal(&e) => return Err(e),
                Err(_) => {
                    *gso = false;
                    break;
                }
            }
        }
        if sent == packets.len() {
            return Ok(());
        }
        for p in &packets[sent..] {
            sock.send_to(p, client).await?;
        }
        return Ok(());
    }
    for p in packets {
        sock.send_to(p, client).await?;
    }
    Ok(())
}

/// One `sendmsg` of `batch` with UDP_SEGMENT = `seg`: the kernel cuts it into datagrams.
async fn send_segmented(
    sock: &UdpSocket,
    client: SocketAddr,
    batch: &[&[u8]],
    seg: usize,
) -> std::io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, SockaddrStorage};
    use std::os::fd::AsRawFd;
    let iov: Vec<std::io::IoSlice<'_>> = batch.iter().map(|p| std::io::IoSlice::new(p)).collect();
    let size =
        u16::try_from(seg).map_err(|_| std::io::Error::from_raw_os_error(nix::libc::EINVAL))?;
    let cmsg = [ControlMessage::UdpGsoSegments(&size)];
    let addr = SockaddrStorage::from(client);
    loop {
        sock.writable().await?;
        match sock.try_io(tokio::io::Interest::WRITABLE, || {
            sendmsg(
                sock.as_raw_fd(),
                &iov,
                &cmsg,
                MsgFlags::empty(),
                Some(&addr),
            )
            .map_err(std::io::Error::from)
        }) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The kernel or the device does not segment UDP (old kernel, no UDP_SEGMENT, a device
/// without checksum offload): send one datagram at a time instead.
fn is_gso_refusal(e: &std::io::Error) -> bool {
    use nix::libc::{EINVAL, EIO, ENOPROTOOPT, EOPNOTSUPP};
    matches!(
        e.raw_os_error(),
        Some(EINVAL | EIO | ENOPROTOOPT | EOPNOTSUPP)
    )
}

async fn give_up(sock: &UdpSocket, client: SocketAddr, r: &mut Report) {
    let _ = sock
        .send_to(
            &packet::error(packet::NOT_DEFINED, "timed out waiting for ACK"),
            client,
        )
        .await;
    r.ended = Ended::TimedOut;
}

enum Heard {
    Ack(u16),
    Error(u16, String),
    /// A datagram that changes nothing (a stranger's, answered; a duplicate; garbage).
    Nothing,
    TimedOut,
    Failed(Ended),
}

/// The next datagram from `client` within `timeout`; a stranger's gets ERROR 5.
async fn wait(
    sock: &UdpSocket,
    client: SocketAddr,
    buf: &mut [u8],
    timeout: Duration,
    r: &mut Report,
) -> Heard {
    let deadline = Instant::now() + timeout;
    loop {
        let (len, from) = match tokio::time::timeout_at(deadline, sock.recv_from(buf)).await {
            Err(_) => return Heard::TimedOut,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                // the client's port is closed (ICMP): it is gone
                return Heard::Failed(Ended::Socket("client port unreachable".into()));
            }
            Ok(Err(e)) => return Heard::Failed(Ended::Socket(e.to_string())),
            Ok(Ok(got)) => got,
        };
        if from != client {
            r.strangers += 1;
            let _ = sock
                .send_to(
                    &packet::error(packet::UNKNOWN_TID, "unknown transfer ID"),
                    from,
                )
                .await;
            continue;
        }
        return match packet::parse(&buf[..len]) {
            Ok(Packet::Ack(a)) => Heard::Ack(a),
            Ok(Packet::Error { code, message }) => Heard::Error(code, message),
            _ => Heard::Nothing,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(o: &[(&str, &str)]) -> Vec<(String, String)> {
        o.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn options_granted_within_limits() {
        let t = Duration::from_secs(1);
        let n = negotiate(
            &opts(&[
                ("blksize", "9000"),
                ("tsize", "0"),
                ("timeout", "3"),
                ("windowsize", "500"),
            ]),
            &Mode::Octet,
            Some(1234),
            1468,
            t,
        );
        assert_eq!((n.blksize, n.windowsize), (1468, MAX_WINDOW));
        assert_eq!(n.timeout, Duration::from_secs(3));
        assert_eq!(
            n.oack,
            vec![
                ("blksize", "1468".to_string()),
                ("tsize", "1234".into()),
                ("timeout", "3".into()),
                ("windowsize", "64".into())
            ]
        );
        // out of range, unknown, empty file, netascii's tsize: left out
        let n = negotiate(
            &opts(&[
                ("blksize", "7"),
                ("timeout", "0"),
                ("windowsize", "0"),
                ("multicast", ""),
                ("tsize", "0"),
            ]),
            &Mode::Octet,
            Some(0),
            1468,
            t,
        );
        assert_eq!((n.blksize, n.windowsize, n.timeout), (512, 1, t));
        assert!(n.oack.is_empty(), "{:?}", n.oack);
        let n = negotiate(&opts(&[("tsize", "0")]), &Mode::Netascii, Some(9), 1468, t);
        assert!(n.oack.is_empty());
    }
}

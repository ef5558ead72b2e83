//! The HTTP listeners' limits, in-process on loopback: a relay holding 2,000 idle
//! connections from 40 loopback addresses still carries a whole PXE boot's HTTP part
//! (registration, boot environment, a reimage by the real agent) for another address, and
//! closes a connection beyond the per-address cap at once; the header and idle timeouts
//! close silent, half-sent and idle connections (plain and TLS), never one whose response is
//! still being sent. The figures (connections, the process's RSS) are printed, not asserted.
//!
//! Waits are on reported state (`/metrics`, EOF on a socket), polled or blocking; the only
//! sleep is the slow client's, which makes a response outlast the timeouts.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::time::Duration;

use common::*;

/// The process's resident set, KiB (`VmRSS`).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// A TCP connection to `to` from `from` (any port): 127.0.0.0/8 is all loopback.
fn connect_from(from: Ipv4Addr, to: SocketAddr) -> TcpStream {
    connect_with(from, to, None)
}

/// [`connect_from`] with a receive buffer of `rcvbuf` bytes (a small window).
fn connect_with(from: Ipv4Addr, to: SocketAddr, rcvbuf: Option<usize>) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    if let Some(n) = rcvbuf {
        s.set_recv_buffer_size(n).unwrap();
    }
    s.bind(&SocketAddr::V4(SocketAddrV4::new(from, 0)).into())
        .unwrap();
    s.connect(&to.into())
        .unwrap_or_else(|e| panic!("connect {from} -> {to}: {e}"));
    s.into()
}

fn addr_of(url: &str) -> SocketAddr {
    url.split_once("://").unwrap().1.parse().unwrap()
}

/// Whether the server closed `s` (EOF or reset), waiting at most `secs` for it.
fn closed_by_server(s: &mut TcpStream, secs: u64) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(secs))).unwrap();
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(0) => true,
        Err(e) if e.kind() == ErrorKind::ConnectionReset => true,
        _ => false,
    }
}

/// Still open: nothing to read, no EOF.
fn still_open(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut b = [0u8; 1];
    let open = matches!((&*s).read(&mut b), Err(e) if e.kind() == ErrorKind::WouldBlock);
    s.set_nonblocking(false).unwrap();
    open
}

fn gauge(url: &str, series: &str) -> u64 {
    metric_in(None, url, series).unwrap_or(0)
}

const OPEN: &str = "bootcast_http_connections_open{listener=\"http\"}";
const MAC: &str = "52:54:00:15:00:01";

#[test]
fn a_pxe_boot_through_a_relay_completes_beside_2000_idle_connections() {
    let lab = Lab::new();
    fake_bootenv(&lab);
    let image = disk_like(3 << 20, 15);
    lab.add("disk", &lab.file("d.img", &image));
    let central = InProcess::start(&lab);
    let token = lab.json(&["site", "add", "s1", "--incomplete", "upstream"])["token"]
        .as_str()
        .unwrap()
        .to_string();
    // timeouts far beyond the test's length: every idle connection stays open
    let relay = InProcess::start_with(
        &lab.path("relay"),
        &format!(
            "[tftp]\nlisten = \"off\"\n[http]\nheader_timeout = 3600\nidle_timeout = 3600\n[relay]\nupstream = \"{}\"\nupstream_fingerprint = \"{}\"\nsite = \"s1\"\ntoken = \"{token}\"\nincomplete = \"upstream\"\n",
            central.https_url, central.fingerprint
        ),
    );
    let to = addr_of(&relay.url);
    let cap = bootcast::config::DEFAULT_MAX_CONNECTIONS_PER_ADDRESS;

    let rss_before = rss_kib();
    const N: usize = 2000;
    const ADDRESSES: usize = 40;
    let idle: Vec<TcpStream> = (0..N)
        .map(|i| connect_from(Ipv4Addr::new(127, 0, 0, 2 + (i % ADDRESSES) as u8), to))
        .collect();
    assert!(N / ADDRESSES < cap, "each address stays under the cap");
    let open = wait_for("the relay to hold 2000 connections", 120, || {
        let n = gauge(&relay.url, OPEN);
        (n >= N as u64).then_some(n)
    });
    let rss_after = rss_kib();
    say(&format!(
        "limits: {open} connections open on the relay (2000 idle from {ADDRESSES} addresses); test process RSS {rss_before} KiB before, {rss_after} KiB after ({:.1} KiB per connection, both ends and the relay in this process)",
        (rss_after.saturating_sub(rss_before)) as f64 / N as f64
    ));

    // the HTTP part of a PXE boot through the relay, from 127.0.0.1
    let (code, chain) = http("GET", &format!("{}/boot.ipxe", relay.url), None, None);
    assert_eq!(code, 200, "{chain}");
    register(&relay, MAC);
    for (file, want) in [("vmlinuz", "vmlinuz"), ("initrd.img", "initrd.img")] {
        let (code, _, body) = request("GET", &format!("{}/bootenv/{file}", relay.url), &[], None);
        assert_eq!(code, 200);
        let local = std::fs::read(lab.data().join("bootenv").join(want)).unwrap();
        assert_eq!(body, local, "{file} through the relay");
    }
    lab.json(&["task", "reimage", "--host", MAC, "--image", "disk"]);
    let target = lab.path("disk.raw");
    std::fs::write(&target, b"").unwrap();
    let log = agent_boot(&lab, &relay, MAC, &target, "1");
    assert_eq!(
        sha256(&std::fs::read(&target).unwrap()),
        sha256(&image),
        "{log}"
    );
    let task = &lab.json(&["task", "list", "--all", "--host", MAC])["tasks"][0];
    assert_eq!(task["state"], "done", "{task}");

    // every idle connection is still open, on both ends
    assert!(idle.iter().all(still_open), "an idle connection was closed");
    assert!(gauge(&relay.url, OPEN) >= N as u64);

    // one address up to its cap; one more is closed by the relay at once
    let from = Ipv4Addr::new(127, 0, 0, 2);
    let have = idle
        .iter()
        .filter(|s| s.local_addr().unwrap().ip() == from)
        .count();
    let top: Vec<TcpStream> = (have..cap).map(|_| connect_from(from, to)).collect();
    let mut over = connect_from(from, to);
    assert!(
        closed_by_server(&mut over, 60),
        "connection {} from {from} was not refused",
        cap + 1
    );
    assert!(
        top.iter().all(still_open),
        "the connections within the cap stay"
    );
    let refused = gauge(
        &relay.url,
        "bootcast_http_connections_refused_total{listener=\"http\",reason=\"per_address\"}",
    );
    assert_eq!(refused, 1, "counted once");
    say(&format!(
        "limits: PXE boot (script, boot environment, {} byte reimage) through the relay done beside {N} idle connections; connection {} from {from} refused",
        image.len(),
        cap + 1
    ));
}

#[test]
fn silent_half_sent_and_idle_connections_are_closed_but_not_a_slow_download() {
    let lab = Lab::new();
    // incompressible: a batch of every chunk is ~16 MiB on the wire, several times what the
    // socket buffers hold, so its sending outlasts the timeouts below for a slow reader
    let image = random_bytes(16 << 20, 16);
    lab.add("big", &lab.file("big.img", &image));
    let s = InProcess::start_with(
        &lab.data(),
        "[tftp]\nlisten = \"off\"\n[http]\nheader_timeout = 1\nidle_timeout = 2\n",
    );
    let plain = addr_of(&s.url);
    let tls = addr_of(&s.https_url);
    let local = Ipv4Addr::new(127, 0, 0, 9);

    // nothing sent
    let mut silent = connect_from(local, plain);
    assert!(
        closed_by_server(&mut silent, 60),
        "a silent connection stays"
    );
    // a request head that never ends
    let mut half = connect_from(local, plain);
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    assert!(closed_by_server(&mut half, 60), "a half-sent head stays");
    // no TLS handshake
    let mut no_hello = connect_from(local, tls);
    assert!(
        closed_by_server(&mut no_hello, 60),
        "a silent TLS connection stays"
    );
    // a served keep-alive connection, then nothing
    let mut kept = connect_from(local, plain);
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    while !answer.ends_with(b"\r\n\r\nok\n") {
        let mut b = [0u8; 512];
        let n = kept.read(&mut b).unwrap();
        assert!(n > 0, "closed before the answer");
        answer.extend_from_slice(&b[..n]);
    }
    let head = String::from_utf8_lossy(&answer).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(closed_by_server(&mut kept, 60), "an idle keep-alive stays");

    let timed_out = |listener: &str, reason: &str| {
        gauge(
            &s.url,
            &format!("bootcast_http_connections_timed_out_total{{listener=\"{listener}\",reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(timed_out("http", "header"), 2);
    assert_eq!(timed_out("https", "header"), 1);
    assert!(timed_out("http", "idle") >= 1);

    // a response still being sent is not cut, however long it takes
    let ids: Vec<u8> = {
        let store = bootcast::store::Store::open(&lab.data()).unwrap();
        let v = store.resolve("big").unwrap();
        let mut seen = std::collections::HashSet::new();
        v.manifest
            .chunks()
            .map(|(_, id, _)| id)
            .filter(|id| seen.insert(*id))
            .flat_map(|id| id.0)
            .collect()
    };
    let mut slow = connect_with(local, plain, Some(64 << 10));
    slow.write_all(
        format!(
            "POST /chunks/batch HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            s.token.as_deref().unwrap(),
            ids.len()
        )
        .as_bytes(),
    )
    .unwrap();
    slow.write_all(&ids).unwrap();
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    slow.set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    loop {
        let n = slow.read(&mut buf).expect("the download goes on");
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        // a slow client: at most about 4 MB/s
        std::thread::sleep(Duration::from_millis(15));
    }
    let took = started.elapsed();
    let text_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&got[..text_end]).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // the body is every frame: id, length, frame, per chunk
    let body = &got[text_end..];
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_vec()
    };
    let mut at = 0;
    let mut frames = 0;
    while at + 36 <= body.len() {
        let len = u32::from_be_bytes(body[at + 32..at + 36].try_into().unwrap()) as usize;
        assert_ne!(len, u32::MAX as usize, "every chunk is there");
        at += 36 + len;
        frames += 1;
    }
    assert_eq!(at, body.len(), "the body ends after its last frame");
    assert_eq!(frames, ids.len() / 32, "every frame arrived");
    say(&format!(
        "limits: a {} byte response read slowly over {:.1} s (header timeout 1 s, idle 2 s) arrived whole",
        body.len(),
        took.as_secs_f64()
    ));
}

/// The body of a `Transfer-Encoding: chunked` message (what arrived of it, if cut short).
fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(
            std::str::from_utf8(&b[..line_end])
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .trim(),
            16,
        )
        .unwrap();
        b = &b[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[..size.min(b.len())]);
        if b.len() < size + 2 {
            return out;
        }
        b = &b[size + 2..];
    }
}

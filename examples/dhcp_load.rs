//! DHCP bench helper (bench/boot/dhcp.sh): `serve` runs only bootcast's DHCP server
//! (`boot::dhcp::run`, proxy mode unless `--full`), `load` is a small closed-loop load client
//! that keeps `--window` PXE DISCOVERs in flight from distinct MACs and counts the OFFERs.
//! Run both inside network namespaces, never on a real interface.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bootcast::boot::dhcp::codec::{build_request, msg, ReplyView, RequestBuilder};
use bootcast::boot::dhcp::{BootFiles, DhcpMode, DhcpSettings, Mac, MemoryLeases, PoolSettings};
use clap::{Parser, Subcommand};
use socket2::{Domain, Protocol, Socket, Type};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run bootcast's DHCP server until SIGINT/SIGTERM.
    Serve {
        #[arg(long)]
        interface: String,
        #[arg(long)]
        server_ip: Ipv4Addr,
        /// Full DHCP with a pool of .100-.250 of the server's /24 instead of proxyDHCP.
        #[arg(long)]
        full: bool,
    },
    /// Send DISCOVERs, count answers, print "answers/s N".
    Load {
        #[arg(long)]
        interface: String,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        #[arg(long, default_value_t = 32)]
        window: usize,
        /// Client architecture put in option 93 / 60.
        #[arg(long, default_value_t = 7)]
        arch: u16,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Args::parse().cmd {
        Cmd::Serve {
            interface,
            server_ip,
            full,
        } => serve(interface, server_ip, full),
        Cmd::Load {
            interface,
            seconds,
            window,
            arch,
        } => load(&interface, seconds, window, arch),
    }
}

fn serve(interface: String, server_ip: Ipv4Addr, full: bool) -> anyhow::Result<()> {
    let o = server_ip.octets();
    let settings = DhcpSettings {
        interface,
        mode: if full {
            DhcpMode::Full
        } else {
            DhcpMode::Proxy
        },
        server_ip,
        boot_files: BootFiles::default(),
        ipxe_script_url: format!("http://{server_ip}:8080/boot.ipxe"),
        pool: Some(PoolSettings {
            first: Ipv4Addr::new(o[0], o[1], o[2], 100),
            last: Ipv4Addr::new(o[0], o[1], o[2], 250),
            netmask: Ipv4Addr::new(255, 255, 255, 0),
            router: None,
            dns: vec![],
            lease_secs: 3600,
        }),
    };
    // One thread, like dnsmasq.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            c.cancel();
        });
        bootcast::boot::dhcp::run(settings, Arc::new(MemoryLeases::new()), cancel).await
    })?;
    Ok(())
}

fn load(interface: &str, seconds: f64, window: usize, arch: u16) -> anyhow::Result<()> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    s.bind_device(Some(interface.as_bytes()))?;
    s.set_recv_buffer_size(4 << 20)?;
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 68)).into())?;
    let sock: UdpSocket = s.into();
    sock.set_read_timeout(Some(Duration::from_millis(2)))?;
    let to = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
    let vc = format!("PXEClient:Arch:{arch:05}:UNDI:003000");
    let lost_after = Duration::from_millis(250);

    // Warm-up: wait (bounded) until the server answers at all.
    let mut xid: u32 = 0x1000_0000;
    let mut buf = [0u8; 1500];
    let request = |xid: u32| {
        let m = xid.to_be_bytes();
        let mut b = RequestBuilder::discover(xid, Mac([0x02, 0xbc, m[0], m[1], m[2], m[3]]));
        b.arch = Some(arch);
        b.vendor_class = Some(&vc);
        b.msg_type = msg::DISCOVER;
        build_request(&b)
    };
    let warm = Instant::now();
    'warm: loop {
        anyhow::ensure!(
            warm.elapsed() < Duration::from_secs(10),
            "no answer from a DHCP server"
        );
        xid += 1;
        sock.send_to(&request(xid), to)?;
        let until = Instant::now() + Duration::from_millis(100);
        while Instant::now() < until {
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                if ReplyView::parse(&buf[..n]).is_some_and(|v| v.op == 2 && v.xid == xid) {
                    break 'warm;
                }
            }
        }
    }

    let mut inflight: HashMap<u32, Instant> = HashMap::new();
    let (mut sent, mut answered, mut lost) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    let mut last_sweep = start;
    while Instant::now() < end {
        while inflight.len() < window {
            xid = xid.wrapping_add(1);
            sock.send_to(&request(xid), to)?;
            inflight.insert(xid, Instant::now());
            sent += 1;
        }
        match sock.recv_from(&mut buf) {
            Ok((n, _)) => {
                if let Some(v) = ReplyView::parse(&buf[..n]) {
                    if v.op == 2
                        && v.msg_type() == Some(msg::OFFER)
                        && inflight.remove(&v.xid).is_some()
                    {
                        answered += 1;
                    }
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => return Err(e.into()),
        }
        let now = Instant::now();
        if now - last_sweep > Duration::from_millis(50) {
            let before = inflight.len();
            inflight.retain(|_, t| now - *t < lost_after);
            lost += (before - inflight.len()) as u64;
            last_sweep = now;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "answers/s {:.0} sent {sent} answered {answered} lost {lost} seconds {secs:.2} window {window}",
        answered as f64 / secs
    );
    Ok(())
}

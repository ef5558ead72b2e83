//! `boot::dhcp::run` on one end of a veth pair, clients on the other, each end in a network
//! namespace the test creates (root only; prints `SKIP` otherwise). The server runs in-process on
//! a thread that entered the server namespace (setns), the clients on the test thread inside the
//! client namespace. Covers: proxy mode (OFFER on 67 broadcast to 68, ACK on 4011 to the
//! source port for both OVMF's :4011 and iPXE's :68), full mode (DISCOVER/OFFER, REQUEST/ACK,
//! lease stored), relayed requests answered unicast to giaddr:67 with option 82, and a burst of
//! malformed datagrams after which the server still answers and `run` ends only on cancel.

mod common;
use common::dhcp::{client_socket, enter, exchange};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::thread::JoinHandle;

use bootcast::boot::dhcp::codec::{self, build_request, msg, RequestBuilder};
use bootcast::boot::dhcp::{
    BootFiles, DhcpError, DhcpMode, DhcpSettings, LeaseStore, Mac, MemoryLeases, PoolSettings,
};
use tokio_util::sync::CancellationToken;

const OVMF_DISCOVER: &[u8] = include_bytes!("../src/boot/dhcp/testdata/ovmf_discover.bin");
const OVMF_REQUEST_4011: &[u8] = include_bytes!("../src/boot/dhcp/testdata/ovmf_request_4011.bin");
const BIOS_IPXE_REQUEST_4011: &[u8] =
    include_bytes!("../src/boot/dhcp/testdata/bios_ipxe_request_4011.bin");
const SCRIPT: &str = "http://10.99.0.1:8080/boot.ipxe";

fn skip_unless_root(test: &str) -> bool {
    if !nix::unistd::geteuid().is_root() {
        common::say(&format!("SKIP: {test}: needs root"));
        return true;
    }
    if Command::new("ip").arg("-V").output().is_err() {
        common::say(&format!("SKIP: {test}: needs iproute2 (ip)"));
        return true;
    }
    false
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A namespace pair joined by a veth: `srv` (10.99.N.1/24 on `vs`) and `cli` (10.99.N.2/24 on
/// `vc`). Dropping it deletes both namespaces.
struct Lab {
    srv: String,
    cli: String,
    net: u8,
}

impl Lab {
    fn new(tag: &str, net: u8) -> Lab {
        let pid = std::process::id();
        let lab = Lab {
            srv: format!("bcdhcp-s-{tag}-{pid}"),
            cli: format!("bcdhcp-c-{tag}-{pid}"),
            net,
        };
        ip(&["netns", "add", &lab.srv]);
        ip(&["netns", "add", &lab.cli]);
        ip(&[
            "-n", &lab.srv, "link", "add", "vs", "type", "veth", "peer", "name", "vc", "netns",
            &lab.cli,
        ]);
        ip(&[
            "-n",
            &lab.srv,
            "addr",
            "add",
            &format!("10.99.{net}.1/24"),
            "dev",
            "vs",
        ]);
        ip(&[
            "-n",
            &lab.cli,
            "addr",
            "add",
            &format!("10.99.{net}.2/24"),
            "dev",
            "vc",
        ]);
        for (ns, dev) in [(&lab.srv, "vs"), (&lab.cli, "vc")] {
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        lab
    }

    fn server_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 99, self.net, 1)
    }

    fn client_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 99, self.net, 2)
    }

    /// Starts `run` on a thread inside the server namespace.
    fn start_server(
        &self,
        settings: DhcpSettings,
        leases: Arc<dyn LeaseStore>,
        cancel: CancellationToken,
    ) -> JoinHandle<Result<(), DhcpError>> {
        let ns = self.srv.clone();
        std::thread::spawn(move || {
            enter(&ns);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(bootcast::boot::dhcp::run(settings, leases, cancel))
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.srv, &self.cli] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

fn settings(lab: &Lab, mode: DhcpMode) -> DhcpSettings {
    let n = lab.net;
    DhcpSettings {
        interface: "vs".into(),
        mode,
        server_ip: lab.server_ip(),
        boot_files: BootFiles::default(),
        ipxe_script_url: SCRIPT.into(),
        pool: Some(PoolSettings {
            first: Ipv4Addr::new(10, 99, n, 100),
            last: Ipv4Addr::new(10, 99, n, 110),
            netmask: Ipv4Addr::new(255, 255, 255, 0),
            router: None,
            dns: vec![],
            lease_secs: 600,
        }),
    }
}

/// Truncated, bad-cookie, overrunning and random datagrams to every server port.
fn malformed_burst(sock: &UdpSocket, server: Ipv4Addr) {
    let mut seed = 0x5eed_u64;
    let mut next = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as usize
    };
    for i in 0..600 {
        let mut d = OVMF_DISCOVER.to_vec();
        match i % 4 {
            0 => d.truncate(next() % d.len()),
            1 => d[236] ^= 0xff,
            2 => {
                let at = 240 + next() % (d.len() - 240);
                d[at] = 0xff - (next() % 8) as u8;
                d.truncate(at + 2);
            }
            _ => d = (0..next() % 600).map(|_| next() as u8).collect(),
        }
        for to in [
            SocketAddrV4::new(Ipv4Addr::BROADCAST, codec::SERVER_PORT),
            SocketAddrV4::new(server, codec::SERVER_PORT),
            SocketAddrV4::new(server, codec::PXE_PORT),
        ] {
            sock.send_to(&d, to).expect("send malformed");
        }
    }
}

fn pxe_discover(xid: u32, mac: Mac, arch: u16) -> Vec<u8> {
    let vc = format!("PXEClient:Arch:{arch:05}:UNDI:002001");
    let mut b = RequestBuilder::discover(xid, mac);
    b.arch = Some(arch);
    b.vendor_class = Some(&vc);
    build_request(&b)
}

#[test]
fn proxy_mode_in_netns() {
    if skip_unless_root("proxy_mode_in_netns") {
        return;
    }
    let lab = Lab::new("proxy", 41);
    let cancel = CancellationToken::new();
    let leases = Arc::new(MemoryLeases::new());
    let server = lab.start_server(
        settings(&lab, DhcpMode::Proxy),
        leases.clone(),
        cancel.clone(),
    );
    enter(&lab.cli);
    let sip = lab.server_ip();
    let bcast67 = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
    let c68 = client_socket(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68));

    // OVMF DISCOVER (captured) → OFFER broadcast to :68, from the server's port 67
    let (v, from) = exchange(&c68, OVMF_DISCOVER, bcast67);
    assert_eq!(from, SocketAddr::from((sip, 67)));
    assert_eq!(v.msg_type(), Some(msg::OFFER));
    assert_eq!((v.yiaddr, v.siaddr), (Ipv4Addr::UNSPECIFIED, sip));
    assert_eq!(v.file, b"snponly.efi");
    assert_eq!(v.opt(60), Some(&b"PXEClient"[..]));
    assert_eq!(v.opt(43), Some(&codec::PXE_VENDOR_OPTS[..]));
    assert!(v.len >= codec::BOOTP_MIN_LEN);

    malformed_burst(&c68, sip);

    // OVMF asks port 4011 from port 4011: the ACK comes back to 4011
    let c4011 = client_socket(SocketAddrV4::new(lab.client_ip(), 4011));
    let (v, from) = exchange(&c4011, OVMF_REQUEST_4011, SocketAddrV4::new(sip, 4011));
    assert_eq!(from, SocketAddr::from((sip, 4011)));
    assert_eq!(
        (v.msg_type(), v.file.as_slice()),
        (Some(msg::ACK), &b"snponly.efi"[..])
    );

    // iPXE asks port 4011 from port 68: the ACK comes back to 68, with the script
    let (v, from) = exchange(&c68, BIOS_IPXE_REQUEST_4011, SocketAddrV4::new(sip, 4011));
    assert_eq!(from, SocketAddr::from((sip, 4011)));
    assert_eq!(
        (v.msg_type(), v.file.as_slice()),
        (Some(msg::ACK), SCRIPT.as_bytes())
    );

    // a relayed DISCOVER is answered unicast to giaddr:67 with option 82
    let relay = client_socket(SocketAddrV4::new(lab.client_ip(), 67));
    let ri = [1u8, 2, 0xca, 0xfe];
    let vc = "PXEClient:Arch:00000:UNDI:002001";
    let mut b = RequestBuilder::discover(0xabc, Mac([2, 0, 0, 0, 0, 7]));
    b.giaddr = lab.client_ip();
    b.arch = Some(0);
    b.vendor_class = Some(vc);
    b.relay_info = Some(&ri);
    let (v, _) = exchange(&relay, &build_request(&b), SocketAddrV4::new(sip, 67));
    assert_eq!(
        (v.giaddr, v.file.as_slice()),
        (lab.client_ip(), &b"undionly.kpxe"[..])
    );
    assert_eq!(v.opt(82), Some(&ri[..]));

    // still answering after all that
    let (v, _) = exchange(
        &c68,
        &pxe_discover(0x5151, Mac([2, 0, 0, 0, 0, 9]), 9),
        bcast67,
    );
    assert_eq!(
        (v.msg_type(), v.file.as_slice()),
        (Some(msg::OFFER), &b"snponly.efi"[..])
    );
    assert!(
        leases.list().unwrap().is_empty(),
        "proxy mode stores no leases"
    );

    assert!(!server.is_finished(), "run ended before cancel");
    cancel.cancel();
    server
        .join()
        .expect("server thread")
        .expect("run returns Ok on cancel");
}

#[test]
fn full_mode_in_netns() {
    if skip_unless_root("full_mode_in_netns") {
        return;
    }
    let lab = Lab::new("full", 42);
    let cancel = CancellationToken::new();
    let leases = Arc::new(MemoryLeases::new());
    let server = lab.start_server(
        settings(&lab, DhcpMode::Full),
        leases.clone(),
        cancel.clone(),
    );
    enter(&lab.cli);
    let sip = lab.server_ip();
    let n = lab.net;
    let bcast67 = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
    let c68 = client_socket(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68));
    let mac1 = Mac([2, 0, 0, 0, 1, 1]);

    let (v, from) = exchange(&c68, &pxe_discover(0x100, mac1, 7), bcast67);
    assert_eq!(from, SocketAddr::from((sip, 67)));
    let first = Ipv4Addr::new(10, 99, n, 100);
    assert_eq!(
        (v.msg_type(), v.yiaddr, v.siaddr),
        (Some(msg::OFFER), first, sip)
    );
    assert_eq!(v.file, b"snponly.efi");

    let mut b = RequestBuilder::discover(0x101, mac1);
    b.msg_type = msg::REQUEST;
    b.requested_ip = Some(first);
    b.server_id = Some(sip);
    let (v, _) = exchange(&c68, &build_request(&b), bcast67);
    assert_eq!((v.msg_type(), v.yiaddr), (Some(msg::ACK), first));
    assert_eq!(v.opt(51), Some(&600u32.to_be_bytes()[..]));
    let lease = leases.by_mac(mac1).unwrap().expect("lease stored");
    assert_eq!(lease.ip, first);

    malformed_burst(&c68, sip);

    // another client, after the burst (some burst datagrams are still valid DISCOVERs that
    // hold an address, so only "a different pool address" is certain)
    let pool = settings(&lab, DhcpMode::Full).pool.unwrap();
    let mac2 = Mac([2, 0, 0, 0, 2, 2]);
    let (v, _) = exchange(
        &c68,
        &build_request(&RequestBuilder::discover(0x200, mac2)),
        bcast67,
    );
    assert_eq!(v.msg_type(), Some(msg::OFFER));
    assert!(pool.contains(v.yiaddr) && v.yiaddr != first, "{}", v.yiaddr);
    let second = v.yiaddr;
    assert_eq!(
        leases.by_ip(second).unwrap().unwrap().mac,
        mac2,
        "offer held for mac2"
    );

    // relayed: unicast to giaddr:67, option 82 echoed
    let relay = client_socket(SocketAddrV4::new(lab.client_ip(), 67));
    let ri = [2u8, 3, 1, 2, 3];
    let mut b = RequestBuilder::discover(0x300, Mac([2, 0, 0, 0, 3, 3]));
    b.giaddr = lab.client_ip();
    b.relay_info = Some(&ri);
    let (v, from) = exchange(&relay, &build_request(&b), SocketAddrV4::new(sip, 67));
    assert_eq!(from, SocketAddr::from((sip, 67)));
    assert_eq!(
        (v.msg_type(), v.giaddr),
        (Some(msg::OFFER), lab.client_ip())
    );
    assert!(pool.contains(v.yiaddr) && v.yiaddr != first && v.yiaddr != second);
    assert_eq!(v.opt(82), Some(&ri[..]));

    assert!(!server.is_finished(), "run ended before cancel");
    cancel.cancel();
    server
        .join()
        .expect("server thread")
        .expect("run returns Ok on cancel");
}

//! Codec tests on captured firmware packets (see `../testdata/README.md`) and on requests built
//! with dhcproto for the architectures no firmware was at hand for (9, 11, 16).

use std::net::{Ipv4Addr, SocketAddrV4};

use rand::{Rng, SeedableRng};

use super::*;
use crate::boot::dhcp::{BootFiles, DhcpMode, DhcpSettings, MemoryLeases, PoolSettings};

const BIOS_IPXE_DISCOVER: &[u8] = include_bytes!("../testdata/bios_ipxe_discover.bin");
const BIOS_IPXE_REQUEST: &[u8] = include_bytes!("../testdata/bios_ipxe_request.bin");
const BIOS_IPXE_REQUEST_4011: &[u8] = include_bytes!("../testdata/bios_ipxe_request_4011.bin");
const OVMF_DISCOVER: &[u8] = include_bytes!("../testdata/ovmf_discover.bin");
const OVMF_REQUEST_4011: &[u8] = include_bytes!("../testdata/ovmf_request_4011.bin");

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const SCRIPT: &str = "http://10.99.0.1:8080/boot.ipxe";
const ARM64_FILE: &str = "ipxe-arm64.efi";
const HTTP_BOOT_URL: &str = "http://10.99.0.1:8080/ipxe/snponly.efi";
const NOW: u64 = 1_800_000_000;

fn settings(mode: DhcpMode) -> DhcpSettings {
    let mut boot_files = BootFiles::default();
    boot_files
        .set(11, Some(ARM64_FILE))
        .set(16, Some(HTTP_BOOT_URL));
    DhcpSettings {
        interface: "test0".into(),
        mode,
        server_ip: SERVER,
        boot_files,
        ipxe_script_url: SCRIPT.into(),
        pool: Some(PoolSettings {
            first: Ipv4Addr::new(10, 99, 0, 100),
            last: Ipv4Addr::new(10, 99, 0, 102),
            netmask: Ipv4Addr::new(255, 255, 255, 0),
            router: Some(Ipv4Addr::new(10, 99, 0, 254)),
            dns: vec![Ipv4Addr::new(10, 99, 0, 53)],
            lease_secs: 3600,
        }),
    }
}

fn client68() -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, CLIENT_PORT)
}

fn bcast68() -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT)
}

fn mac(n: u8) -> Mac {
    Mac([0x52, 0x54, 0, 0x99, 0x10, n])
}

/// A PXE request as firmware of architecture `arch` sends it.
fn pxe(xid: u32, m: Mac, msg_type: u8, arch: u16) -> Vec<u8> {
    let vc = format!("PXEClient:Arch:{arch:05}:UNDI:003016");
    let mut b = RequestBuilder::discover(xid, m);
    b.msg_type = msg_type;
    b.arch = Some(arch);
    b.vendor_class = Some(&vc);
    b.uuid = Some(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]);
    build_request(&b)
}

/// A UEFI HTTP-boot DISCOVER (arch 16, vendor class HTTPClient).
fn http_boot(xid: u32, m: Mac) -> Vec<u8> {
    let mut b = RequestBuilder::discover(xid, m);
    b.arch = Some(16);
    b.vendor_class = Some("HTTPClient:Arch:00016:UNDI:003001");
    build_request(&b)
}

fn view(r: &Reply) -> ReplyView {
    ReplyView::parse(&r.bytes).expect("reply parses")
}

fn proxy_ok(bytes: &[u8], port: u16, src: SocketAddrV4) -> Reply {
    let s = settings(DhcpMode::Proxy);
    respond(bytes, port, src, &s, &MemoryLeases::new(), NOW).expect("a reply")
}

/// Checks every field a proxyDHCP reply must get right.
#[allow(clippy::too_many_arguments)]
fn check_proxy(
    r: &Reply,
    req: &[u8],
    reply_type: u8,
    dest: SocketAddrV4,
    file: &str,
    class: &[u8],
    tftp: bool,
) -> ReplyView {
    let q = parse(req).unwrap();
    let v = view(r);
    assert_eq!(v.op, 2, "op BOOTREPLY");
    assert_eq!(v.xid, q.xid, "xid echoed");
    assert_eq!(v.chaddr, q.mac.0, "chaddr echoed");
    assert_eq!(
        v.yiaddr,
        Ipv4Addr::UNSPECIFIED,
        "proxyDHCP never gives an address"
    );
    assert_eq!(v.siaddr, SERVER, "siaddr is the boot server");
    assert_eq!(v.giaddr, q.giaddr, "giaddr echoed");
    if reply_type == msg::OFFER {
        assert_ne!(
            v.flags & 0x8000,
            0,
            "OFFER goes out with the broadcast flag"
        );
    }
    assert_eq!(v.file, file.as_bytes(), "file field");
    assert_eq!(v.msg_type(), Some(reply_type), "option 53");
    assert_eq!(v.opt(54), Some(&SERVER.octets()[..]), "option 54");
    assert_eq!(v.opt(60), Some(class), "option 60");
    assert_eq!(v.opt(67), Some(file.as_bytes()), "option 67");
    if tftp {
        assert_eq!(v.opt(66), Some(&b"10.99.0.1"[..]), "option 66");
    } else {
        assert_eq!(v.opt(66), None, "no TFTP server name for HTTP");
    }
    if class == b"PXEClient" {
        assert_eq!(
            v.opt(43),
            Some(&PXE_VENDOR_OPTS[..]),
            "option 43: discovery control 8"
        );
    } else {
        assert_eq!(v.opt(43), None, "no PXE vendor options for HTTPClient");
    }
    assert_eq!(v.opt(97), q.uuid, "option 97 echoed");
    assert_eq!(v.opt(51), None, "no lease time in proxyDHCP");
    assert!(
        r.bytes.len() >= BOOTP_MIN_LEN,
        "{} bytes < 300",
        r.bytes.len()
    );
    assert_eq!(r.dest, dest, "destination");
    v
}

#[test]
fn captured_fixtures_parse() {
    let b = parse(BIOS_IPXE_DISCOVER).unwrap();
    assert_eq!(b.msg_type, Some(msg::DISCOVER));
    assert_eq!(b.arch, Some(0));
    assert_eq!(b.mac, Mac([0x52, 0x54, 0, 0x99, 0, 1]));
    assert_eq!(b.class(), ClientClass::Pxe);
    assert_eq!(
        b.vendor_class,
        Some(&b"PXEClient:Arch:00000:UNDI:002001"[..])
    );
    assert_eq!(b.user_class, Some(&b"iPXE"[..]));
    assert!(b.ipxe_options, "iPXE ROM sends option 175");
    assert!(b.is_ipxe());

    let o = parse(OVMF_DISCOVER).unwrap();
    assert_eq!(o.msg_type, Some(msg::DISCOVER));
    assert_eq!(o.arch, Some(7));
    assert_eq!(
        o.vendor_class,
        Some(&b"PXEClient:Arch:00007:UNDI:003000"[..])
    );
    assert!(!o.is_ipxe());
    assert_eq!(o.uuid.map(<[u8]>::len), Some(17));

    let r = parse(OVMF_REQUEST_4011).unwrap();
    assert_eq!(r.msg_type, Some(msg::REQUEST));
    assert_eq!(r.arch, Some(7));
    assert!(
        !r.ciaddr.is_unspecified(),
        "OVMF's 4011 request carries its address"
    );

    let i = parse(BIOS_IPXE_REQUEST_4011).unwrap();
    assert_eq!(i.msg_type, Some(msg::REQUEST));
    assert_eq!(i.vendor_class, Some(&b"PXEClient"[..]));
    assert!(i.is_ipxe());
}

#[test]
fn proxy_bios_ipxe_rom_gets_the_script() {
    let r = proxy_ok(BIOS_IPXE_DISCOVER, SERVER_PORT, client68());
    check_proxy(
        &r,
        BIOS_IPXE_DISCOVER,
        msg::OFFER,
        bcast68(),
        SCRIPT,
        b"PXEClient",
        false,
    );
    assert_eq!(r.summary.boot, Boot::IpxeScript(SCRIPT.into()));
    assert_eq!(r.summary.arch, Some(0));
}

#[test]
fn proxy_arch0_pxe_rom_gets_undionly() {
    let req = pxe(0x1234_5678, mac(1), msg::DISCOVER, 0);
    let r = proxy_ok(&req, SERVER_PORT, client68());
    check_proxy(
        &r,
        &req,
        msg::OFFER,
        bcast68(),
        "undionly.kpxe",
        b"PXEClient",
        true,
    );
}

#[test]
fn proxy_ovmf_arch7_gets_snponly_then_ack_on_4011() {
    let r = proxy_ok(OVMF_DISCOVER, SERVER_PORT, client68());
    check_proxy(
        &r,
        OVMF_DISCOVER,
        msg::OFFER,
        bcast68(),
        "snponly.efi",
        b"PXEClient",
        true,
    );

    // OVMF asks the boot server on 4011 from port 4011: answered there.
    let q = parse(OVMF_REQUEST_4011).unwrap();
    let src = SocketAddrV4::new(q.ciaddr, PXE_PORT);
    let r = proxy_ok(OVMF_REQUEST_4011, PXE_PORT, src);
    let v = check_proxy(
        &r,
        OVMF_REQUEST_4011,
        msg::ACK,
        src,
        "snponly.efi",
        b"PXEClient",
        true,
    );
    assert_eq!(v.ciaddr, q.ciaddr, "ciaddr echoed in the ACK");
}

#[test]
fn proxy_ipxe_request_on_4011_from_port_68() {
    let src = SocketAddrV4::new(Ipv4Addr::new(10, 99, 7, 100), CLIENT_PORT);
    let r = proxy_ok(BIOS_IPXE_REQUEST_4011, PXE_PORT, src);
    check_proxy(
        &r,
        BIOS_IPXE_REQUEST_4011,
        msg::ACK,
        src,
        SCRIPT,
        b"PXEClient",
        false,
    );
}

#[test]
fn proxy_arch9_arch11_arch16() {
    let req = pxe(9, mac(9), msg::DISCOVER, 9);
    let r = proxy_ok(&req, SERVER_PORT, client68());
    check_proxy(
        &r,
        &req,
        msg::OFFER,
        bcast68(),
        "snponly.efi",
        b"PXEClient",
        true,
    );

    let req = pxe(11, mac(11), msg::DISCOVER, 11);
    let r = proxy_ok(&req, SERVER_PORT, client68());
    check_proxy(
        &r,
        &req,
        msg::OFFER,
        bcast68(),
        ARM64_FILE,
        b"PXEClient",
        true,
    );

    let req = http_boot(16, mac(16));
    let r = proxy_ok(&req, SERVER_PORT, client68());
    check_proxy(
        &r,
        &req,
        msg::OFFER,
        bcast68(),
        HTTP_BOOT_URL,
        b"HTTPClient",
        false,
    );
    assert_eq!(r.summary.boot, Boot::Http(HTTP_BOOT_URL.into()));
}

#[test]
fn proxy_unconfigured_arch_is_not_answered() {
    let mut s = settings(DhcpMode::Proxy);
    s.boot_files.set(11, None).set(16, None);
    let l = MemoryLeases::new();
    for req in [pxe(1, mac(11), msg::DISCOVER, 11), http_boot(2, mac(16))] {
        match respond(&req, SERVER_PORT, client68(), &s, &l, NOW) {
            Err(NoReply::Unconfigured { arch, .. }) => {
                assert!(arch == Some(11) || arch == Some(16))
            }
            other => panic!("expected Unconfigured, got {other:?}"),
        }
    }
}

#[test]
fn proxy_ignores_what_is_not_its_business() {
    let s = settings(DhcpMode::Proxy);
    let l = MemoryLeases::new();
    // an ordinary client
    let plain = build_request(&RequestBuilder::discover(1, mac(1)));
    assert!(matches!(
        respond(&plain, SERVER_PORT, client68(), &s, &l, NOW),
        Err(NoReply::Ignored(_))
    ));
    // a PXE REQUEST on 67 belongs to the real DHCP server
    assert!(matches!(
        respond(BIOS_IPXE_REQUEST, SERVER_PORT, client68(), &s, &l, NOW),
        Err(NoReply::Ignored(_))
    ));
    // a DISCOVER on 4011
    assert!(matches!(
        respond(OVMF_DISCOVER, PXE_PORT, client68(), &s, &l, NOW),
        Err(NoReply::Ignored(_))
    ));
    assert!(
        l.list().unwrap().is_empty(),
        "proxy mode never writes leases"
    );
}

#[test]
fn proxy_relayed_discover_goes_back_to_the_relay_with_option_82() {
    let relay = Ipv4Addr::new(10, 99, 5, 1);
    let ri = [1u8, 4, b'p', b'o', b'r', b't', 2, 2, 0xab, 0xcd];
    let vc = "PXEClient:Arch:00007:UNDI:003000";
    let mut b = RequestBuilder::discover(77, mac(7));
    b.giaddr = relay;
    b.arch = Some(7);
    b.vendor_class = Some(vc);
    b.relay_info = Some(&ri);
    let req = build_request(&b);
    let src = SocketAddrV4::new(relay, SERVER_PORT);
    let r = proxy_ok(&req, SERVER_PORT, src);
    let v = check_proxy(
        &r,
        &req,
        msg::OFFER,
        SocketAddrV4::new(relay, SERVER_PORT),
        "snponly.efi",
        b"PXEClient",
        true,
    );
    assert_eq!(v.giaddr, relay);
    assert_eq!(v.opt(82), Some(&ri[..]), "option 82 echoed verbatim");
    assert_eq!(
        v.options.last().map(|o| o.0),
        Some(82),
        "option 82 is the last option"
    );
}

#[test]
fn replies_are_padded_and_end_with_end_option() {
    let mut b = RequestBuilder::discover(1, mac(1));
    b.arch = Some(7);
    b.vendor_class = Some("PXEClient:Arch:00007:UNDI:003000");
    let r = proxy_ok(&build_request(&b), SERVER_PORT, client68());
    assert_eq!(
        r.bytes.len(),
        BOOTP_MIN_LEN,
        "short reply padded to exactly 300"
    );
    let end = r.bytes[HEADER_LEN..]
        .iter()
        .rposition(|&b| b == 255)
        .unwrap();
    assert!(r.bytes[HEADER_LEN + end + 1..].iter().all(|&b| b == 0));
    // A long URL overflows the file field: option 67 only, still valid.
    let mut s = settings(DhcpMode::Proxy);
    s.ipxe_script_url = format!("http://10.99.0.1:8080/{}", "x".repeat(150));
    let r = respond(
        BIOS_IPXE_DISCOVER,
        SERVER_PORT,
        client68(),
        &s,
        &MemoryLeases::new(),
        NOW,
    )
    .unwrap();
    let v = view(&r);
    assert!(v.file.is_empty());
    assert_eq!(v.opt(67), Some(s.ipxe_script_url.as_bytes()));
}

#[test]
fn parse_rejects_malformed() {
    assert_eq!(parse(&OVMF_DISCOVER[..239]), Err(ParseError::TooShort(239)));
    let mut bad = OVMF_DISCOVER.to_vec();
    bad[236] = 0;
    assert!(matches!(parse(&bad), Err(ParseError::BadCookie(_))));
    let mut reply = OVMF_DISCOVER.to_vec();
    reply[0] = 2;
    assert_eq!(parse(&reply), Err(ParseError::NotRequest(2)));
    // Overrun: the first option claims 200 bytes.
    let mut over = OVMF_DISCOVER[..250].to_vec();
    over[241] = 200;
    assert!(matches!(
        parse(&over),
        Err(ParseError::OptionOverrun { .. })
    ));
    // Length byte cut off.
    let mut cut = OVMF_DISCOVER[..241].to_vec();
    cut[240] = 60;
    assert!(matches!(
        parse(&cut),
        Err(ParseError::OptionOverrun { code: 60, .. })
    ));
    // Option 53 of the wrong size.
    let mut b = OVMF_DISCOVER[..240].to_vec();
    b.extend_from_slice(&[53, 2, 1, 1, 255]);
    assert!(matches!(
        parse(&b),
        Err(ParseError::OptionLength { code: 53, .. })
    ));
    // Missing End at the very end is tolerated.
    let mut b = OVMF_DISCOVER[..240].to_vec();
    b.extend_from_slice(&[53, 1, 1]);
    assert_eq!(parse(&b).unwrap().msg_type, Some(1));
}

// ---- full mode ----

fn full_settings() -> DhcpSettings {
    settings(DhcpMode::Full)
}

fn full(req: &[u8], l: &MemoryLeases, now: u64) -> Result<Reply, NoReply> {
    respond(req, SERVER_PORT, client68(), &full_settings(), l, now)
}

fn request_for(xid: u32, m: Mac, ip: Ipv4Addr, server: Option<Ipv4Addr>) -> Vec<u8> {
    let mut b = RequestBuilder::discover(xid, m);
    b.msg_type = msg::REQUEST;
    b.requested_ip = Some(ip);
    b.server_id = server;
    build_request(&b)
}

const P0: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 100);
const P1: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 101);
const P2: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 102);

#[test]
fn full_discover_request_ack_fields() {
    let l = MemoryLeases::new();
    let d = build_request(&RequestBuilder::discover(5, mac(1)));
    let r = full(&d, &l, NOW).unwrap();
    let v = view(&r);
    assert_eq!((v.op, v.xid, v.msg_type()), (2, 5, Some(msg::OFFER)));
    assert_eq!(v.yiaddr, P0);
    assert_eq!(
        v.siaddr,
        Ipv4Addr::UNSPECIFIED,
        "no boot server for a plain client"
    );
    assert!(v.file.is_empty());
    assert_eq!(v.opt(54), Some(&SERVER.octets()[..]));
    assert_eq!(v.opt(1), Some(&[255, 255, 255, 0][..]));
    assert_eq!(v.opt(3), Some(&[10, 99, 0, 254][..]));
    assert_eq!(v.opt(6), Some(&[10, 99, 0, 53][..]));
    assert_eq!(v.opt(51), Some(&3600u32.to_be_bytes()[..]));
    assert_eq!(v.opt(58), Some(&1800u32.to_be_bytes()[..]));
    assert_eq!(v.opt(59), Some(&3150u32.to_be_bytes()[..]));
    assert_eq!(v.opt(60), None);
    assert!(r.bytes.len() >= BOOTP_MIN_LEN);
    assert_eq!(r.dest, bcast68());
    let held = l.by_ip(P0).unwrap().unwrap();
    assert_eq!(
        (held.mac, held.expires),
        (mac(1), NOW + OFFER_HOLD_SECS),
        "offer held"
    );

    let r = full(&request_for(6, mac(1), P0, Some(SERVER)), &l, NOW + 1).unwrap();
    let v = view(&r);
    assert_eq!((v.xid, v.msg_type(), v.yiaddr), (6, Some(msg::ACK), P0));
    assert_eq!(
        l.by_ip(P0).unwrap().unwrap().expires,
        NOW + 1 + 3600,
        "lease stored"
    );

    // a second client gets the next address
    let r = full(
        &build_request(&RequestBuilder::discover(7, mac(2))),
        &l,
        NOW + 2,
    )
    .unwrap();
    assert_eq!(view(&r).yiaddr, P1);
}

#[test]
fn full_leases_are_sticky_and_owned() {
    let l = MemoryLeases::new();
    let ack = |m, ip, now| full(&request_for(1, m, ip, Some(SERVER)), &l, now);
    assert_eq!(
        view(&ack(mac(1), P0, NOW).unwrap()).msg_type(),
        Some(msg::ACK)
    );
    // another MAC may not take it
    let r = ack(mac(2), P0, NOW + 5).unwrap();
    assert_eq!(view(&r).msg_type(), Some(msg::NAK));
    assert_eq!(view(&r).yiaddr, Ipv4Addr::UNSPECIFIED);
    assert_eq!(r.dest, bcast68());
    assert_eq!(
        l.by_ip(P0).unwrap().unwrap().mac,
        mac(1),
        "lease untouched by the NAK"
    );
    // after expiry the same MAC still gets its old address (sticky) ...
    let later = NOW + 10_000;
    let d1 = build_request(&RequestBuilder::discover(2, mac(1)));
    assert_eq!(view(&full(&d1, &l, later).unwrap()).yiaddr, P0);
    // ... and moving a MAC to another address frees the old one
    assert_eq!(
        view(&ack(mac(1), P2, later).unwrap()).msg_type(),
        Some(msg::ACK)
    );
    assert_eq!(l.by_ip(P0).unwrap(), None);
    assert_eq!(l.by_mac(mac(1)).unwrap().unwrap().ip, P2);
    // out-of-pool INIT-REBOOT is NAKed
    let r = full(
        &request_for(3, mac(3), Ipv4Addr::new(10, 99, 0, 7), None),
        &l,
        later,
    )
    .unwrap();
    assert_eq!(view(&r).msg_type(), Some(msg::NAK));
}

#[test]
fn full_request_for_another_server_drops_the_hold() {
    let l = MemoryLeases::new();
    full(
        &build_request(&RequestBuilder::discover(1, mac(1))),
        &l,
        NOW,
    )
    .unwrap();
    assert!(l.by_ip(P0).unwrap().is_some());
    let other = Some(Ipv4Addr::new(10, 99, 0, 2));
    assert!(matches!(
        full(&request_for(1, mac(1), P0, other), &l, NOW),
        Err(NoReply::Ignored(_))
    ));
    assert_eq!(l.by_ip(P0).unwrap(), None, "offer hold released");
}

#[test]
fn full_release_decline_inform_and_exhaustion() {
    let l = MemoryLeases::new();
    for (i, ip) in [P0, P1, P2].into_iter().enumerate() {
        let r = full(&request_for(1, mac(i as u8), ip, Some(SERVER)), &l, NOW).unwrap();
        assert_eq!(view(&r).msg_type(), Some(msg::ACK));
    }
    let d = build_request(&RequestBuilder::discover(9, mac(9)));
    assert!(matches!(full(&d, &l, NOW), Err(NoReply::PoolExhausted(_))));

    // RELEASE by someone else: ignored; by the holder: freed
    let mut rel = RequestBuilder::discover(2, mac(5));
    rel.msg_type = msg::RELEASE;
    rel.ciaddr = P1;
    assert!(matches!(
        full(&build_request(&rel), &l, NOW),
        Err(NoReply::Ignored(_))
    ));
    rel.mac = mac(1);
    assert!(matches!(
        full(&build_request(&rel), &l, NOW),
        Err(NoReply::Done(_))
    ));
    assert_eq!(l.by_ip(P1).unwrap(), None);
    assert_eq!(
        view(&full(&d, &l, NOW).unwrap()).yiaddr,
        P1,
        "released address reused"
    );

    // DECLINE: the address is blocked, not offered
    let mut dec = RequestBuilder::discover(3, mac(9));
    dec.msg_type = msg::DECLINE;
    dec.requested_ip = Some(P1);
    assert!(matches!(
        full(&build_request(&dec), &l, NOW),
        Err(NoReply::Done(_))
    ));
    assert_eq!(l.by_ip(P1).unwrap().unwrap().mac, Mac::DECLINED);
    let d10 = build_request(&RequestBuilder::discover(4, mac(10)));
    assert!(matches!(
        full(&d10, &l, NOW),
        Err(NoReply::PoolExhausted(_))
    ));
    assert_eq!(
        view(&full(&d10, &l, NOW + DECLINE_HOLD_SECS).unwrap()).yiaddr,
        P1
    );

    // INFORM: configuration, no address, unicast to ciaddr
    let mut inf = RequestBuilder::discover(5, mac(20));
    inf.msg_type = msg::INFORM;
    inf.ciaddr = Ipv4Addr::new(10, 99, 0, 30);
    let r = full(&build_request(&inf), &l, NOW).unwrap();
    let v = view(&r);
    assert_eq!(
        (v.msg_type(), v.yiaddr, v.ciaddr),
        (Some(msg::ACK), Ipv4Addr::UNSPECIFIED, inf.ciaddr)
    );
    assert_eq!(v.opt(51), None, "no lease time in an INFORM ACK");
    assert_eq!(r.dest, SocketAddrV4::new(inf.ciaddr, CLIENT_PORT));
}

#[test]
fn full_mode_boot_files_per_arch_and_ipxe() {
    for (arch, file) in [
        (0, "undionly.kpxe"),
        (7, "snponly.efi"),
        (9, "snponly.efi"),
        (11, ARM64_FILE),
    ] {
        let l = MemoryLeases::new();
        let r = full(
            &pxe(arch.into(), mac(arch), msg::DISCOVER, arch.into()),
            &l,
            NOW,
        )
        .unwrap();
        let v = view(&r);
        assert_eq!(v.yiaddr, P0, "arch {arch}");
        assert_eq!(v.siaddr, SERVER, "arch {arch}");
        assert_eq!(v.file, file.as_bytes(), "arch {arch}");
        assert_eq!(v.opt(67), Some(file.as_bytes()));
        assert_eq!(v.opt(66), Some(&b"10.99.0.1"[..]));
        assert_eq!(
            v.opt(60),
            None,
            "plain DHCP offer with a boot file: no PXEClient"
        );
        assert_eq!(v.opt(43), None);
        assert!(v.opt(97).is_some(), "UUID echoed to PXE clients");
    }
    let l = MemoryLeases::new();
    let r = full(&http_boot(1, mac(16)), &l, NOW).unwrap();
    let v = view(&r);
    assert_eq!(
        (v.yiaddr, v.file.as_slice()),
        (P0, HTTP_BOOT_URL.as_bytes())
    );
    assert_eq!(v.opt(60), Some(&b"HTTPClient"[..]));

    let l = MemoryLeases::new();
    let r = full(BIOS_IPXE_DISCOVER, &l, NOW).unwrap();
    let v = view(&r);
    assert_eq!((v.yiaddr, v.file.as_slice()), (P0, SCRIPT.as_bytes()));
    // The captured REQUEST selects the capture lab's DHCP server (10.99.7.1): not us.
    assert!(matches!(
        full(BIOS_IPXE_REQUEST, &l, NOW),
        Err(NoReply::Ignored(_))
    ));

    // unconfigured arch: an address still, but no boot file, flagged for the warning
    let mut s = full_settings();
    s.boot_files.set(11, None);
    let r = respond(
        &pxe(1, mac(1), msg::DISCOVER, 11),
        SERVER_PORT,
        client68(),
        &s,
        &l,
        NOW,
    )
    .unwrap();
    assert_eq!(r.summary.boot, Boot::Unconfigured(Some(11)));
    assert!(view(&r).file.is_empty());
}

#[test]
fn full_relayed_requests_go_back_through_the_relay() {
    let l = MemoryLeases::new();
    let relay = Ipv4Addr::new(10, 99, 0, 250);
    let ri = [1u8, 3, b'e', b't', b'h'];
    let mut b = RequestBuilder::discover(11, mac(1));
    b.giaddr = relay;
    b.relay_info = Some(&ri);
    let r = full(&build_request(&b), &l, NOW).unwrap();
    assert_eq!(r.dest, SocketAddrV4::new(relay, SERVER_PORT));
    let v = view(&r);
    assert_eq!((v.giaddr, v.yiaddr), (relay, P0));
    assert_eq!(v.opt(82), Some(&ri[..]));
    // a relay on a subnet without a pool: not answered
    b.giaddr = Ipv4Addr::new(192, 168, 1, 1);
    assert!(matches!(
        full(&build_request(&b), &l, NOW),
        Err(NoReply::Ignored(_))
    ));
    // a relayed NAK gets the broadcast bit
    let mut q = RequestBuilder::discover(12, mac(2));
    q.msg_type = msg::REQUEST;
    q.requested_ip = Some(P0);
    q.giaddr = relay;
    let r = full(&build_request(&q), &l, NOW).unwrap();
    assert_eq!(view(&r).msg_type(), Some(msg::NAK));
    assert_ne!(view(&r).flags & 0x8000, 0);
    assert_eq!(r.dest, SocketAddrV4::new(relay, SERVER_PORT));
}

// ---- robustness ----

fn seeds() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = [
        BIOS_IPXE_DISCOVER,
        BIOS_IPXE_REQUEST,
        BIOS_IPXE_REQUEST_4011,
        OVMF_DISCOVER,
        OVMF_REQUEST_4011,
    ]
    .iter()
    .map(|b| b.to_vec())
    .collect();
    v.push(pxe(1, mac(1), msg::DISCOVER, 9));
    v.push(pxe(2, mac(2), msg::REQUEST, 11));
    v.push(http_boot(3, mac(3)));
    v.push(request_for(4, mac(4), P0, Some(SERVER)));
    v
}

/// Random mutations of the fixtures and random bytes through every mode and port: never a
/// panic, and the lease store stays consistent (every row inside the pool).
#[test]
fn fuzz_never_panics() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xb007_ca57);
    let proxy_s = settings(DhcpMode::Proxy);
    let full_s = full_settings();
    let leases = MemoryLeases::new();
    let seeds = seeds();
    let (mut answered, mut malformed) = (0u32, 0u32);
    for i in 0..60_000u32 {
        let mut b = seeds[rng.gen_range(0..seeds.len())].clone();
        match i % 6 {
            0 => {
                let n = rng.gen_range(0..=b.len());
                b.truncate(n); // truncation
            }
            1 => {
                for _ in 0..rng.gen_range(1..8) {
                    let at = rng.gen_range(0..b.len());
                    b[at] = rng.gen(); // byte flips anywhere
                }
            }
            2 => {
                // corrupt bytes in the options area: lengths that overrun, bogus codes
                for _ in 0..rng.gen_range(1..4) {
                    let at = rng.gen_range(HEADER_LEN.min(b.len() - 1)..b.len());
                    b[at] = rng.gen();
                }
            }
            3 => {
                let len = rng.gen_range(0..700);
                b = (0..len).map(|_| rng.gen()).collect(); // random bytes
            }
            4 => {
                // a valid header + cookie followed by random options
                b.truncate(HEADER_LEN);
                let extra = rng.gen_range(0..300);
                b.extend((0..extra).map(|_| rng.gen::<u8>()));
            }
            _ => {
                b[236..240].copy_from_slice(&rng.gen::<[u8; 4]>()); // bad cookie
            }
        }
        let src = SocketAddrV4::new(Ipv4Addr::new(10, 99, 0, rng.gen()), rng.gen());
        for (s, port) in [
            (&proxy_s, SERVER_PORT),
            (&proxy_s, PXE_PORT),
            (&full_s, SERVER_PORT),
        ] {
            match respond(&b, port, src, s, &leases, NOW + u64::from(i)) {
                Ok(r) => {
                    answered += 1;
                    assert!(r.bytes.len() >= BOOTP_MIN_LEN);
                    assert!(ReplyView::parse(&r.bytes).is_some(), "reply must re-parse");
                }
                Err(NoReply::Malformed(_)) => malformed += 1,
                Err(_) => {}
            }
        }
    }
    for l in leases.list().unwrap() {
        assert!(
            full_s.pool.as_ref().unwrap().contains(l.ip),
            "lease outside the pool: {l:?}"
        );
    }
    // The mutations must exercise both sides: some still answered, many rejected.
    assert!(
        answered > 1000,
        "only {answered} answers: mutations too destructive"
    );
    assert!(
        malformed > 10_000,
        "only {malformed} rejections: mutations too mild"
    );
}

// ---- the address an exchange shows a client at ----

#[test]
fn observed_is_the_acked_address_in_full_mode_and_the_requested_one_in_proxy_mode() {
    use super::observed;
    let l = MemoryLeases::new();
    // full mode: only an ACK's address counts, not what a REQUEST asks for
    let d = build_request(&RequestBuilder::discover(7, mac(2)));
    let offer = full(&d, &l, NOW).unwrap();
    let parsed = parse(&d).unwrap();
    assert_eq!(
        observed(DhcpMode::Full, &parsed, Some(&offer.summary)),
        None
    );
    let q = request_for(8, mac(2), P0, Some(SERVER));
    let ack = full(&q, &l, NOW).unwrap();
    assert_eq!(view(&ack).msg_type(), Some(msg::ACK));
    let parsed = parse(&q).unwrap();
    assert_eq!(
        observed(DhcpMode::Full, &parsed, Some(&ack.summary)),
        Some(P0)
    );
    // a forged REQUEST for someone else's address gets a NAK: nothing observed
    let forged = request_for(9, mac(3), P0, Some(SERVER));
    let nak = full(&forged, &l, NOW).unwrap();
    assert_eq!(view(&nak).msg_type(), Some(msg::NAK));
    let parsed = parse(&forged).unwrap();
    assert_eq!(observed(DhcpMode::Full, &parsed, Some(&nak.summary)), None);
    // proxy mode: the address a REQUEST names (option 50, else ciaddr); a DISCOVER names none
    let parsed = parse(&q).unwrap();
    assert_eq!(observed(DhcpMode::Proxy, &parsed, None), Some(P0));
    let mut b = RequestBuilder::discover(10, mac(4));
    b.msg_type = msg::REQUEST;
    b.ciaddr = P1;
    let renew = build_request(&b);
    assert_eq!(
        observed(DhcpMode::Proxy, &parse(&renew).unwrap(), None),
        Some(P1)
    );
    assert_eq!(observed(DhcpMode::Proxy, &parse(&d).unwrap(), None), None);
}

#[test]
fn circuit_ids_of_relay_agent_information() {
    // sub-option 2 (remote id) first, then 1 (circuit id)
    let ri = [
        2u8, 3, 9, 9, 9, 1, 7, b'G', b'i', b'1', b'/', b'0', b'/', b'7',
    ];
    assert_eq!(circuit_id(&ri).as_deref(), Some("Gi1/0/7"));
    // binary circuit ids (VLAN + port, as many switches send them) in hex
    assert_eq!(
        circuit_id(&[1, 4, 0, 20, 0, 7]).as_deref(),
        Some("00140007")
    );
    // none, truncated, empty
    assert_eq!(circuit_id(&[2, 1, 5]), None);
    assert_eq!(circuit_id(&[1, 9, 1, 2]), None);
    assert_eq!(circuit_id(&[1, 0]), None);
    assert_eq!(circuit_id(&[]), None);
}

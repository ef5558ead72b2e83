//! TFTP server against real clients (tftp-hpa's `tftp`, `atftp`, `curl`) and a raw UDP client,
//! on 127.0.0.1 with ephemeral ports. The server runs in-process (`bootcast::boot::tftp::run`).
//! Needs the Debian packages tftp-hpa, atftp and curl (scripts/test.sh installs them); a
//! missing client fails the test with the package to install.

use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bootcast::boot::ipxe;
use bootcast::boot::tftp::{self, TftpSettings};
use rand::{RngCore, SeedableRng};
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------- server and files

/// Everything the server logged, for the tests that check refusals are logged.
fn logs() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = Arc::clone(&buf);
        let _ = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || LogWriter(Arc::clone(&writer)))
            .try_init();
        buf
    })
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Log lines that mention `needle`.
fn log_lines_with(needle: &str) -> Vec<String> {
    let buf = logs().lock().unwrap();
    String::from_utf8_lossy(&buf)
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

struct Server {
    addr: SocketAddr,
    root: tempfile::TempDir,
    cancel: CancellationToken,
    rt: tokio::runtime::Runtime,
    task: Option<tokio::task::JoinHandle<Result<(), tftp::TftpError>>>,
}

impl Server {
    fn start(edit: impl FnOnce(&mut TftpSettings)) -> Server {
        logs();
        let root = tempfile::tempdir().expect("temp dir");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let mut settings = TftpSettings {
            root: Some(root.path().to_path_buf()),
            ..TftpSettings::default()
        };
        edit(&mut settings);
        let cancel = CancellationToken::new();
        let socket = rt
            .block_on(tokio::net::UdpSocket::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = socket.local_addr().unwrap();
        let task = rt.spawn(tftp::run(socket, settings, cancel.clone()));
        Server {
            addr,
            root,
            cancel,
            rt,
            task: Some(task),
        }
    }

    /// Writes `bytes` as `name` under the root and returns them.
    fn file(&self, name: &str, bytes: Vec<u8>) -> Vec<u8> {
        let path = self.root.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &bytes).unwrap();
        bytes
    }

    fn port(&self) -> String {
        self.addr.port().to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let res = self.rt.block_on(task).expect("server task panicked");
            if !std::thread::panicking() {
                res.expect("server stopped with an error");
            }
        }
    }
}

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

// ---------------------------------------------------------------- real clients

fn tool(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` not found: install the Debian package {package} (scripts/test.sh does)"
            )
        })
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// tftp-hpa's client: blksize 512, no options. Its exit status is 0 even when the server
/// sends an ERROR, so callers look at stderr and the output file.
fn tftp_hpa(s: &Server, remote: &str, local: &Path) -> Output {
    run(Command::new(tool("tftp", "tftp-hpa"))
        .args(["-m", "binary", "127.0.0.1", &s.port(), "-c", "get", remote])
        .arg(local))
}

/// tftp-hpa prints the server's ERROR ("Error code 2: ...") on stdout.
fn hpa_output(r: &Output) -> String {
    String::from_utf8_lossy(&r.stdout).into_owned() + &String::from_utf8_lossy(&r.stderr)
}

fn atftp(s: &Server, remote: &str, local: &Path, opts: &[&str]) -> Output {
    let mut c = Command::new(tool("atftp", "atftp"));
    c.args(["-g", "-r", remote, "-l"]).arg(local);
    for o in opts {
        c.args(["--option", o]);
    }
    run(c.args(["127.0.0.1", &s.port()]))
}

/// curl asks tsize (and blksize if given). `remote` is put in the URL as is (`--path-as-is`).
fn curl(s: &Server, remote: &str, local: &Path, blksize: Option<u16>) -> Output {
    let mut c = Command::new(tool("curl", "curl"));
    c.args(["-sS", "--path-as-is", "-o"]).arg(local);
    if let Some(b) = blksize {
        c.args(["--tftp-blksize", &b.to_string()]);
    }
    run(c.arg(format!("tftp://{}/{remote}", s.addr)))
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn assert_fetched(what: &str, out: &Output, local: &Path, want: &[u8]) {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let got = read(local);
    assert!(
        got == want,
        "{what}: got {} bytes, want {} (or different content)",
        got.len(),
        want.len()
    );
}

/// The output file after a refused request: absent or empty, never a byte of content.
fn assert_nothing_written(what: &str, local: &Path) {
    if let Ok(m) = std::fs::metadata(local) {
        assert_eq!(m.len(), 0, "{what}: {} bytes written", m.len());
    }
}

// ---------------------------------------------------------------- raw client

const RRQ: u16 = 1;
const WRQ: u16 = 2;
const DATA: u16 = 3;
const ACK: u16 = 4;
const ERROR: u16 = 5;
const OACK: u16 = 6;

struct Raw {
    sock: UdpSocket,
    server: SocketAddr,
}

impl Raw {
    fn new(server: SocketAddr) -> Raw {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        // Only a bound on how long a broken server can hang the test, never a measurement.
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        Raw { sock, server }
    }

    fn port(&self) -> u16 {
        self.sock.local_addr().unwrap().port()
    }

    fn request(&self, op: u16, name: &[u8], opts: &[(&str, &str)]) {
        self.request_mode(op, name, "octet", opts)
    }

    fn request_mode(&self, op: u16, name: &[u8], mode: &str, opts: &[(&str, &str)]) {
        let mut p = op.to_be_bytes().to_vec();
        p.extend_from_slice(name);
        p.push(0);
        p.extend_from_slice(mode.as_bytes());
        p.push(0);
        for (k, v) in opts {
            p.extend_from_slice(k.as_bytes());
            p.push(0);
            p.extend_from_slice(v.as_bytes());
            p.push(0);
        }
        self.sock.send_to(&p, self.server).unwrap();
    }

    /// The next datagram: (opcode, the rest, sender).
    fn recv(&self) -> (u16, Vec<u8>, SocketAddr) {
        let mut buf = vec![0u8; 70_000];
        let (n, from) = self
            .sock
            .recv_from(&mut buf)
            .expect("no answer from the TFTP server");
        assert!(n >= 2, "runt datagram from the server: {:?}", &buf[..n]);
        (
            u16::from_be_bytes([buf[0], buf[1]]),
            buf[2..n].to_vec(),
            from,
        )
    }

    fn ack(&self, to: SocketAddr, block: u16) {
        let mut p = ACK.to_be_bytes().to_vec();
        p.extend_from_slice(&block.to_be_bytes());
        self.sock.send_to(&p, to).unwrap();
    }

    /// Expects an ERROR; returns its code and message.
    fn expect_error(&self) -> (u16, String) {
        let (op, rest, _) = self.recv();
        assert_eq!(op, ERROR, "expected ERROR, got opcode {op}: {rest:?}");
        let code = u16::from_be_bytes([rest[0], rest[1]]);
        let msg = String::from_utf8_lossy(&rest[2..])
            .trim_end_matches('\0')
            .to_owned();
        (code, msg)
    }
}

fn parse_oack(rest: &[u8]) -> Vec<(String, String)> {
    let fields: Vec<String> = rest
        .split(|b| *b == 0)
        .filter(|f| !f.is_empty())
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect();
    fields
        .chunks(2)
        .map(|kv| (kv[0].clone(), kv[1].clone()))
        .collect()
}

/// A whole read transfer with `window` blocks per ACK: returns the bytes and every DATA block
/// number in the order received. Asserts the numbering as it goes.
fn raw_fetch(
    raw: &Raw,
    name: &str,
    opts: &[(&str, &str)],
    blksize: usize,
    window: usize,
) -> (Vec<u8>, Vec<u16>) {
    raw.request(RRQ, name.as_bytes(), opts);
    let (mut op, mut rest, peer) = raw.recv();
    if op == OACK {
        raw.ack(peer, 0);
        (op, rest, _) = raw.recv();
    }
    let mut data = Vec::new();
    let mut blocks = Vec::new();
    let mut expect: u16 = 1;
    let mut in_window = 0;
    loop {
        assert_eq!(op, DATA, "expected DATA, got opcode {op}: {rest:?}");
        let block = u16::from_be_bytes([rest[0], rest[1]]);
        assert_eq!(block, expect, "block number after {} blocks", blocks.len());
        blocks.push(block);
        let payload = &rest[2..];
        assert!(payload.len() <= blksize, "DATA larger than blksize");
        data.extend_from_slice(payload);
        in_window += 1;
        let last = payload.len() < blksize;
        if last || in_window == window {
            raw.ack(peer, block);
            in_window = 0;
        }
        if last {
            return (data, blocks);
        }
        expect = expect.wrapping_add(1);
        (op, rest, _) = raw.recv();
    }
}

// ---------------------------------------------------------------- tests

/// 0, 1, 511, 512, 513 bytes (and multiples of 1468 and a window) with every client.
#[test]
fn sizes_around_block_boundaries_with_every_client() {
    let s = Server::start(|_| {});
    let out = tempfile::tempdir().unwrap();
    let sizes = [
        0usize,
        1,
        511,
        512,
        513,
        1467,
        1468,
        1469,
        1468 * 8,
        1468 * 8 + 1,
        100_000,
    ];
    for (i, &len) in sizes.iter().enumerate() {
        let name = format!("f{len}");
        let want = s.file(&name, random(len, i as u64));
        let o = out.path().join(format!("{name}.hpa"));
        assert_fetched(
            &format!("tftp-hpa {name}"),
            &tftp_hpa(&s, &name, &o),
            &o,
            &want,
        );
        let o = out.path().join(format!("{name}.atftp"));
        let r = atftp(&s, &name, &o, &["blksize 1468", "windowsize 8"]);
        assert_fetched(&format!("atftp w8 {name}"), &r, &o, &want);
        let o = out.path().join(format!("{name}.atftp512"));
        assert_fetched(
            &format!("atftp {name}"),
            &atftp(&s, &name, &o, &[]),
            &o,
            &want,
        );
        let o = out.path().join(format!("{name}.curl"));
        let r = curl(&s, &name, &o, Some(1468));
        assert_fetched(&format!("curl 1468 {name}"), &r, &o, &want);
        let o = out.path().join(format!("{name}.curl512"));
        assert_fetched(
            &format!("curl {name}"),
            &curl(&s, &name, &o, None),
            &o,
            &want,
        );
    }
}

/// The embedded iPXE binaries, byte for byte, even when the root has a file of the same name.
#[test]
fn embedded_ipxe_binaries_served_from_memory() {
    let s = Server::start(|_| {});
    s.file("undionly.kpxe", b"decoy".to_vec());
    let out = tempfile::tempdir().unwrap();
    for bin in ipxe::ALL {
        let o = out.path().join(format!("{}.curl", bin.name));
        // iPXE asks blksize 1432 and tsize.
        let r = curl(&s, bin.name, &o, Some(1432));
        assert_fetched(&format!("curl {}", bin.name), &r, &o, bin.bytes);
        let o = out.path().join(format!("{}.hpa", bin.name));
        assert_fetched(
            &format!("tftp-hpa {}", bin.name),
            &tftp_hpa(&s, bin.name, &o),
            &o,
            bin.bytes,
        );
        // One leading '/' names the same file.
        let o = out.path().join(format!("{}.slash", bin.name));
        let r = atftp(
            &s,
            &format!("/{}", bin.name),
            &o,
            &["blksize 1468", "windowsize 4"],
        );
        assert_fetched(&format!("atftp /{}", bin.name), &r, &o, bin.bytes);
    }
    // Without a root the binaries are still there; anything else is not found.
    let bare = Server::start(|t| t.root = None);
    let o = out.path().join("bare");
    let r = curl(&bare, "snponly.efi", &o, Some(1468));
    assert_fetched("no root: snponly.efi", &r, &o, ipxe::SNPONLY_EFI.bytes);
    let raw = Raw::new(bare.addr);
    raw.request(RRQ, b"pxelinux.0", &[]);
    assert_eq!(raw.expect_error().0, 1, "file not found");
}

/// Options as bootcast negotiates them: blksize (capped), tsize, timeout,
/// windowsize, and what OVMF asks.
#[test]
fn options_are_acknowledged() {
    let s = Server::start(|_| {});
    let want = s.file("img", random(3 * 1024 * 1024 + 7, 7));
    let size = want.len().to_string();

    let raw = Raw::new(s.addr);
    let opts = [
        ("blksize", "1468"),
        ("tsize", "0"),
        ("timeout", "3"),
        ("windowsize", "8"),
    ];
    let (got, blocks) = raw_fetch(&raw, "img", &opts, 1468, 8);
    assert!(got == want, "windowsize 8 transfer differs");
    assert_eq!(blocks.len(), want.len() / 1468 + 1);

    // The OACK itself.
    let raw = Raw::new(s.addr);
    raw.request(RRQ, b"img", &opts);
    let (op, rest, _) = raw.recv();
    assert_eq!(op, OACK);
    let mut oack = parse_oack(&rest);
    oack.sort();
    let mut expected: Vec<(String, String)> = [
        ("blksize", "1468"),
        ("timeout", "3"),
        ("tsize", size.as_str()),
        ("windowsize", "8"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    expected.sort();
    assert_eq!(oack, expected);

    // A blksize above the limit is granted at the limit.
    let raw = Raw::new(s.addr);
    raw.request(RRQ, b"img", &[("blksize", "9000")]);
    let (op, rest, _) = raw.recv();
    assert_eq!(op, OACK);
    assert_eq!(parse_oack(&rest), vec![("blksize".into(), "1468".into())]);

    // OVMF: tsize probe, ERROR 8 after the OACK, then the real request from another port.
    let probe = Raw::new(s.addr);
    probe.request(
        RRQ,
        b"img",
        &[("tsize", "0"), ("blksize", "1468"), ("windowsize", "4")],
    );
    let (op, rest, peer) = probe.recv();
    assert_eq!(op, OACK);
    assert!(parse_oack(&rest).contains(&("tsize".into(), size.clone())));
    let mut err = ERROR.to_be_bytes().to_vec();
    err.extend_from_slice(&8u16.to_be_bytes());
    err.extend_from_slice(b"tsize probe\0");
    probe.sock.send_to(&err, peer).unwrap();
    let again = Raw::new(s.addr);
    let (got, _) = raw_fetch(
        &again,
        "img",
        &[("blksize", "1468"), ("windowsize", "4")],
        1468,
        4,
    );
    assert!(got == want, "OVMF-style second request differs");

    // Real clients at blksize 1468 and windowsize 8.
    let out = tempfile::tempdir().unwrap();
    let o = out.path().join("atftp");
    let r = atftp(&s, "img", &o, &["blksize 1468", "windowsize 8"]);
    assert_fetched("atftp blksize 1468 windowsize 8", &r, &o, &want);
    let o = out.path().join("curl");
    assert_fetched(
        "curl blksize 1468",
        &curl(&s, "img", &o, Some(1468)),
        &o,
        &want,
    );
}

/// More than 65,535 blocks at blksize 512: block numbers go 65535, 0, 1... (checked on the
/// wire by the raw client, with windows of 7 so one window straddles the wrap) and every real
/// client agrees (same bytes out).
#[test]
fn block_numbers_wrap_past_65535() {
    let s = Server::start(|_| {});
    let blocks = 65_536 + 70;
    let want = Arc::new(s.file("wrap", random(blocks * 512 + 100, 65_536)));

    let out = tempfile::tempdir().unwrap();
    let outs: Vec<(&str, PathBuf)> = ["tftp-hpa", "curl", "atftp", "atftp-w8"]
        .iter()
        .map(|c| (*c, out.path().join(c)))
        .collect();
    let clients: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = outs
            .iter()
            .map(|(client, o)| {
                let s = &s;
                scope.spawn(move || match *client {
                    "tftp-hpa" => tftp_hpa(s, "wrap", o),
                    "curl" => curl(s, "wrap", o, Some(512)),
                    "atftp" => atftp(s, "wrap", o, &[]),
                    _ => atftp(s, "wrap", o, &["windowsize 8"]),
                })
            })
            .collect();
        let raw = Raw::new(s.addr);
        let (got, numbers) = raw_fetch(&raw, "wrap", &[("windowsize", "7")], 512, 7);
        assert!(
            got == *want,
            "raw client: {} bytes, want {}",
            got.len(),
            want.len()
        );
        assert_eq!(numbers.len(), blocks + 1);
        assert_eq!(numbers[65_534], 65_535);
        assert_eq!(numbers[65_535], 0, "the block after 65535 is 0");
        assert_eq!(numbers[65_536], 1);
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for ((client, o), r) in outs.iter().zip(&clients) {
        assert_fetched(&format!("{client} past the wrap"), r, o, &want);
    }
}

/// `..`, absolute, backslash, symlink-out, directory, FIFO and missing names: every client gets
/// an error and writes nothing; the raw client sees the ERROR code; each refusal is logged with
/// the client's address.
#[test]
fn traversal_absolute_and_backslash_names_refused() {
    let s = Server::start(|_| {});
    let f1 = s.file("f1", b"inside".to_vec());
    s.file("sub/f2", b"deeper".to_vec());
    std::os::unix::fs::symlink("/etc/passwd", s.root.path().join("out")).unwrap();
    std::os::unix::fs::symlink(
        "../../../../../../../../../..",
        s.root.path().join("sub/up"),
    )
    .unwrap();
    std::os::unix::fs::symlink("f1", s.root.path().join("in")).unwrap();
    nix::unistd::mkfifo(&s.root.path().join("fifo"), nix::sys::stat::Mode::S_IRUSR).unwrap();
    // A file outside the root, right next to it: what `../` would reach.
    let secret_dir = tempfile::tempdir().unwrap();
    std::fs::write(secret_dir.path().join("secret"), b"secret").unwrap();
    let secret = secret_dir.path().join("secret");
    let rel_secret = format!("../../../../../..{}", secret.to_str().unwrap());

    // (name, TFTP error code, reason in the log)
    let refused: Vec<(String, u16, &str)> = vec![
        ("../f1".into(), 2, "'..' component"),
        (rel_secret.clone(), 2, "'..' component"),
        ("sub/../../f1".into(), 2, "'..' component"),
        // One leading '/' is dropped: this names <root>/tmp/.../secret, which does not exist.
        (secret.display().to_string(), 1, "file not found"),
        ("//etc/passwd".into(), 2, "absolute path"),
        (format!("/{}", secret.display()), 2, "absolute path"),
        ("..\\f1".into(), 2, "backslash"),
        ("sub\\f2".into(), 2, "backslash"),
        ("out".into(), 2, "outside the TFTP root"),
        ("sub/up/etc/passwd".into(), 2, "outside the TFTP root"),
        ("sub".into(), 2, "not a regular file"),
        ("fifo".into(), 2, "not a regular file"),
        ("missing".into(), 1, "file not found"),
    ];
    let out = tempfile::tempdir().unwrap();
    for (i, (name, code, reason)) in refused.iter().enumerate() {
        let raw = Raw::new(s.addr);
        raw.request(RRQ, name.as_bytes(), &[("tsize", "0"), ("blksize", "1468")]);
        let (got, msg) = raw.expect_error();
        assert_eq!(got, *code, "{name:?}: ERROR {got} {msg}");
        let logged = log_lines_with(&format!("client=127.0.0.1:{} ", raw.port()));
        assert!(
            logged
                .iter()
                .any(|l| l.contains("request refused") && l.contains(reason)),
            "{name:?}: refusal not logged with {reason:?}: {logged:?}"
        );

        let o = out.path().join(format!("{i}.hpa"));
        let r = tftp_hpa(&s, name, &o);
        let err = hpa_output(&r);
        assert!(err.contains("Error code"), "tftp-hpa {name:?}: {err}");
        assert_nothing_written(&format!("tftp-hpa {name:?}"), &o);

        let o = out.path().join(format!("{i}.atftp"));
        let r = atftp(&s, name, &o, &["blksize 1468"]);
        assert!(!r.status.success(), "atftp {name:?} succeeded");
        assert_nothing_written(&format!("atftp {name:?}"), &o);

        // curl turns a backslash in a URL into '/', so it would ask for another name.
        if !name.contains('\\') {
            let o = out.path().join(format!("{i}.curl"));
            let r = curl(&s, name, &o, Some(1468));
            assert!(!r.status.success(), "curl {name:?} succeeded");
            assert_nothing_written(&format!("curl {name:?}"), &o);
        }
    }
    // Control characters and an empty name (raw client only: no client sends these).
    for name in [&b"f1\x01"[..], b"f\x1b[2J", b"", b"/"] {
        let raw = Raw::new(s.addr);
        raw.request(RRQ, name, &[]);
        assert_eq!(raw.expect_error().0, 2, "{name:?}");
    }
    // What stays inside the root is served: a symlink to a file in it, a leading '/'.
    for name in ["in", "/f1", "./f1"] {
        let raw = Raw::new(s.addr);
        let (got, _) = raw_fetch(&raw, name, &[], 512, 1);
        assert_eq!(got, f1, "{name:?}");
    }
}

/// Write requests get an access-violation ERROR and nothing appears in the root.
#[test]
fn write_requests_refused() {
    let s = Server::start(|_| {});
    s.file("f1", b"original".to_vec());
    let before = list(s.root.path());

    let raw = Raw::new(s.addr);
    raw.request(WRQ, b"new", &[("blksize", "1468"), ("tsize", "6")]);
    assert_eq!(raw.expect_error().0, 2);
    let logged = log_lines_with(&format!("client=127.0.0.1:{} ", raw.port()));
    assert!(
        logged
            .iter()
            .any(|l| l.contains("write requests are not served")),
        "WRQ refusal not logged: {logged:?}"
    );

    let src = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(src.path(), b"overwrite").unwrap();
    for target in ["f1", "new"] {
        let r = run(Command::new(tool("tftp", "tftp-hpa"))
            .args(["-m", "binary", "127.0.0.1", &s.port(), "-c", "put"])
            .arg(src.path())
            .arg(target));
        let err = hpa_output(&r);
        assert!(err.contains("Error code 2"), "tftp-hpa put {target}: {err}");
        let r = run(Command::new(tool("atftp", "atftp"))
            .args(["-p", "-r", target, "-l"])
            .arg(src.path())
            .args(["127.0.0.1", &s.port()]));
        assert!(!r.status.success(), "atftp put {target} succeeded");
        let r = run(Command::new(tool("curl", "curl"))
            .args(["-sS", "-T"])
            .arg(src.path())
            .arg(format!("tftp://{}/{target}", s.addr)));
        assert!(!r.status.success(), "curl upload {target} succeeded");
    }
    assert_eq!(list(s.root.path()), before, "the root changed");
    assert_eq!(
        std::fs::read(s.root.path().join("f1")).unwrap(),
        b"original"
    );
}

fn list(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

/// Garbage of every kind on the server port, then normal transfers still work.
#[test]
fn malformed_burst_then_normal_transfer() {
    let s = Server::start(|_| {});
    let want = s.file("after", random(70_000, 3));
    let mut garbage: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        vec![0, 1],                                        // RRQ, nothing else
        vec![0, 0, b'x', 0],                               // opcode 0
        vec![0, 7, b'x', 0, b'o', 0],                      // opcode 7
        vec![0xff, 0xff, 1, 2, 3],                         // opcode 65535
        b"\x00\x01no-nul-anywhere".to_vec(),               // filename without NUL
        b"\x00\x01after\x00".to_vec(),                     // no mode
        b"\x00\x01after\x00octet".to_vec(),                // mode without NUL
        b"\x00\x01after\x00bogus\x00".to_vec(),            // unknown mode
        b"\x00\x01\xff\xfe\x00octet\x00".to_vec(),         // filename not UTF-8
        b"\x00\x01after\x00octet\x00blksize\x00".to_vec(), // option without value
        b"\x00\x01after\x00octet\x00blksize".to_vec(),     // option name without NUL
        b"\x00\x03\x00\x01data".to_vec(),                  // DATA to the server port
        b"\x00\x04\x00\x01".to_vec(),                      // ACK to the server port
        b"\x00\x05\x00\x01oops\x00".to_vec(),              // ERROR to the server port
        b"\x00\x06blksize\x00512\x00".to_vec(),            // OACK to the server port
        vec![0x41; 65_000],                                // larger than any buffer
    ];
    // Huge option list: thousands of options, in one datagram of 60 KB.
    let mut huge = b"\x00\x01after\x00octet\x00".to_vec();
    for i in 0..3000 {
        huge.extend_from_slice(format!("opt{i}\0{}\0", "9".repeat(10)).as_bytes());
    }
    garbage.push(huge);
    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    for len in [3usize, 17, 100, 511, 1500, 4095, 4096, 4097] {
        let mut g = vec![0u8; len];
        rng.fill_bytes(&mut g);
        g[0] = 0; // opcodes 1..=6 and others, random rest
        g[1] = (len % 9) as u8;
        garbage.push(g);
    }
    let blaster = UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..20 {
        for g in &garbage {
            blaster.send_to(g, s.addr).unwrap();
        }
    }
    let out = tempfile::tempdir().unwrap();
    let o = out.path().join("curl");
    assert_fetched(
        "curl after the burst",
        &curl(&s, "after", &o, Some(1468)),
        &o,
        &want,
    );
    let o = out.path().join("hpa");
    assert_fetched(
        "tftp-hpa after the burst",
        &tftp_hpa(&s, "after", &o),
        &o,
        &want,
    );
    let raw = Raw::new(s.addr);
    let (got, _) = raw_fetch(&raw, "after", &[], 512, 1);
    assert!(got == want);
}

/// Past `max_transfers` a request gets an ERROR at once; a client that stops answering holds
/// its slot for exactly 1 + max_retries sends of its block, then gets an ERROR and the slot
/// is free again.
#[test]
fn transfers_are_bounded() {
    let s = Server::start(|t| {
        t.max_transfers = 2;
        t.max_retries = 2;
        t.timeout = Duration::from_millis(100);
    });
    s.file("f", random(5000, 5));
    // Two clients that take their first block and never ACK.
    let a = Raw::new(s.addr);
    let b = Raw::new(s.addr);
    for r in [&a, &b] {
        r.request(RRQ, b"f", &[]);
        let (op, rest, _) = r.recv();
        assert_eq!((op, &rest[..2]), (DATA, &[0u8, 1][..]));
    }
    let c = Raw::new(s.addr);
    c.request(RRQ, b"f", &[]);
    let (code, msg) = c.expect_error();
    assert_eq!((code, msg.as_str()), (0, "server busy, try again later"));
    let logged = log_lines_with(&format!("client=127.0.0.1:{} ", c.port()));
    assert!(
        logged.iter().any(|l| l.contains("too many transfers")),
        "{logged:?}"
    );

    // `a` gets DATA 1 twice more (max_retries = 2), then an ERROR: the transfer is over.
    let mut resent = 0;
    let (code, _) = loop {
        let (op, rest, _) = a.recv();
        match op {
            DATA => {
                assert_eq!(&rest[..2], &[0, 1]);
                resent += 1;
            }
            ERROR => break (u16::from_be_bytes([rest[0], rest[1]]), ()),
            _ => panic!("unexpected opcode {op}"),
        }
    };
    assert_eq!(resent, 2, "retransmissions of an unanswered block");
    assert_eq!(code, 0);
    // The slot is released once the transfer's task ends, just after that ERROR; a new
    // request may still race it, so a busy answer is retried (bounded).
    for attempt in 0.. {
        let d = Raw::new(s.addr);
        d.request(RRQ, b"f", &[]);
        let (op, _, _) = d.recv();
        if op == DATA {
            break;
        }
        assert!(attempt < 1000, "slot never freed");
    }
}

// ---------------------------------------------------------------- conformance

/// netascii (RFC 1350, 764): LF goes as CR LF and a bare CR as CR NUL, whatever the pieces
/// the file is read in; tftp-hpa's ascii mode turns it back into the file; no tsize is
/// offered (the wire size is not the file's).
#[test]
fn netascii_is_converted_on_the_wire() {
    let s = Server::start(|_| {});
    let mut text = Vec::new();
    for i in 0..3000 {
        text.extend_from_slice(format!("line {i}\n").as_bytes());
        if i % 7 == 0 {
            text.extend_from_slice(b"dos line\r\n");
        }
        if i % 11 == 0 {
            text.extend_from_slice(b"bare\rcr ");
        }
    }
    text.extend_from_slice(b"ends in cr\r");
    let text = s.file("notes.txt", text);
    let mut wire = Vec::new();
    for &c in &text {
        match c {
            b'\n' => wire.extend_from_slice(b"\r\n"),
            b'\r' => wire.extend_from_slice(b"\r\0"),
            c => wire.push(c),
        }
    }
    // the raw client sees the wire form, in lock-step and in windows, with no tsize
    for (opts, blksize, window) in [
        (vec![], 512, 1),
        (
            vec![("blksize", "1468"), ("windowsize", "8"), ("tsize", "0")],
            1468,
            8,
        ),
    ] {
        let raw = Raw::new(s.addr);
        raw.request_mode(RRQ, b"notes.txt", "netascii", &opts);
        let (mut op, mut rest, peer) = raw.recv();
        if op == OACK {
            let oack = parse_oack(&rest);
            assert!(
                oack.iter().all(|(k, _)| k != "tsize"),
                "tsize offered in netascii: {oack:?}"
            );
            raw.ack(peer, 0);
            (op, rest, _) = raw.recv();
        }
        let mut got = Vec::new();
        let mut in_window = 0;
        loop {
            assert_eq!(op, DATA);
            let block = u16::from_be_bytes([rest[0], rest[1]]);
            got.extend_from_slice(&rest[2..]);
            in_window += 1;
            let last = rest.len() - 2 < blksize;
            if last || in_window == window {
                raw.ack(peer, block);
                in_window = 0;
            }
            if last {
                break;
            }
            (op, rest, _) = raw.recv();
        }
        assert!(got == wire, "netascii wire form ({opts:?})");
    }
    // tftp-hpa in ascii mode: the file again
    let out = tempfile::tempdir().unwrap();
    let o = out.path().join("hpa.txt");
    let r = run(Command::new(tool("tftp", "tftp-hpa"))
        .args([
            "-m",
            "netascii",
            "127.0.0.1",
            &s.port(),
            "-c",
            "get",
            "notes.txt",
        ])
        .arg(&o));
    assert_fetched("tftp-hpa netascii", &r, &o, &text);
    // curl asks netascii with ;mode=netascii and keeps the wire form
    let o = out.path().join("curl.txt");
    let r = curl(&s, "notes.txt;mode=netascii", &o, None);
    assert_fetched("curl ;mode=netascii", &r, &o, &wire);
    // octet is untouched
    let o = out.path().join("curl.bin");
    assert_fetched("curl octet", &curl(&s, "notes.txt", &o, None), &o, &text);
}

/// `mail` (RFC 1350's obsolete mode) and modes nobody defined get ERROR 4 at once, from the
/// transfer's own port, and are logged.
#[test]
fn mail_and_unknown_modes_are_refused() {
    let s = Server::start(|_| {});
    s.file("f", b"content".to_vec());
    for mode in ["mail", "MAIL", "bogus", "binary", ""] {
        let raw = Raw::new(s.addr);
        raw.request_mode(RRQ, b"f", mode, &[]);
        let (op, rest, from) = raw.recv();
        assert_eq!(op, ERROR, "mode {mode:?}: opcode {op}");
        assert_eq!(u16::from_be_bytes([rest[0], rest[1]]), 4, "mode {mode:?}");
        assert_ne!(from, s.addr, "an answer comes from the transfer's port");
        let logged = log_lines_with(&format!("client=127.0.0.1:{} ", raw.port()));
        assert!(
            logged.iter().any(|l| l.contains("request refused")),
            "{mode:?}: {logged:?}"
        );
    }
    // a request that cannot be read is answered too
    let raw = Raw::new(s.addr);
    raw.sock.send_to(b"\x00\x01f\x00", s.addr).unwrap();
    let (code, msg) = raw.expect_error();
    assert_eq!(code, 4);
    assert!(msg.contains("mode"), "{msg}");
}

/// A datagram to a transfer's port from another address gets ERROR 5; the transfer goes on
/// and completes (RFC 1350 section 4).
#[test]
fn a_strangers_packet_gets_error_5_and_the_transfer_goes_on() {
    let s = Server::start(|_| {});
    let want = s.file("f", random(512 * 5 + 9, 11));
    let raw = Raw::new(s.addr);
    raw.request(RRQ, b"f", &[]);
    let (op, rest, peer) = raw.recv();
    assert_eq!((op, &rest[..2]), (DATA, &[0u8, 1][..]));
    let mut got = rest[2..].to_vec();
    // the stranger acknowledges block 1, and sends an ERROR: neither is the client's
    let stranger = Raw::new(s.addr);
    stranger.ack(peer, 1);
    let (code, msg) = stranger.expect_error();
    assert_eq!((code, msg.as_str()), (5, "unknown transfer ID"));
    let mut err = ERROR.to_be_bytes().to_vec();
    err.extend_from_slice(&0u16.to_be_bytes());
    err.extend_from_slice(b"go away\0");
    stranger.sock.send_to(&err, peer).unwrap();
    assert_eq!(stranger.expect_error().0, 5);
    // the client goes on
    let mut block = 1u16;
    loop {
        raw.ack(peer, block);
        let (op, rest, from) = raw.recv();
        assert_eq!((op, from), (DATA, peer));
        block += 1;
        assert_eq!(u16::from_be_bytes([rest[0], rest[1]]), block);
        got.extend_from_slice(&rest[2..]);
        if rest.len() - 2 < 512 {
            raw.ack(peer, block);
            break;
        }
    }
    assert!(got == want);
    let ended = ended_line(&raw);
    assert!(
        ended.contains("strangers=2") && ended.contains("complete=true"),
        "{ended}"
    );
}

/// An ERROR from the client ends its transfer at once and frees its slot: OVMF's tsize probe
/// (ERROR 8 after the OACK), then the real request, with one transfer allowed at a time.
#[test]
fn a_clients_error_ends_its_transfer_at_once() {
    let s = Server::start(|t| t.max_transfers = 1);
    let want = s.file("img", random(100_000, 13));
    let probe = Raw::new(s.addr);
    probe.request(RRQ, b"img", &[("tsize", "0"), ("blksize", "1468")]);
    let (op, rest, peer) = probe.recv();
    assert_eq!(op, OACK);
    assert!(parse_oack(&rest).contains(&("tsize".into(), want.len().to_string())));
    let mut err = ERROR.to_be_bytes().to_vec();
    err.extend_from_slice(&8u16.to_be_bytes());
    err.extend_from_slice(b"tsize probe\0");
    probe.sock.send_to(&err, peer).unwrap();
    // the transfer's end is logged: by the client's ERROR, nothing sent again
    let ended = ended_line(&probe);
    assert!(
        ended.contains("ClientError { code: 8")
            && ended.contains("sent=0")
            && ended.contains("resent=0"),
        "{ended}"
    );
    // its slot is free: the next request is served, not "busy"
    let again = Raw::new(s.addr);
    let (got, _) = raw_fetch(&again, "img", &[("blksize", "1468")], 1468, 1);
    assert!(got == want);
}

/// Lock-step: a duplicate ACK is not answered (the Sorcerer's Apprentice bug would send every
/// block twice from then on). Windows: an ACK inside the window sends the window again from
/// the block after it; an ACK of the block before the window sends it again at once.
#[test]
fn duplicate_and_partial_acks() {
    let s = Server::start(|_| {});
    s.file("f", random(512 * 40, 17));
    let raw = Raw::new(s.addr);
    raw.request(RRQ, b"f", &[]);
    let (_, _, peer) = raw.recv();
    raw.ack(peer, 1);
    raw.ack(peer, 1);
    let (op, rest, _) = raw.recv();
    assert_eq!((op, &rest[..2]), (DATA, &[0u8, 2][..]));
    raw.ack(peer, 2);
    let (op, rest, _) = raw.recv();
    assert_eq!(
        (op, &rest[..2]),
        (DATA, &[0u8, 3][..]),
        "DATA 2 again after the duplicate ACK 1"
    );

    let numbers = |raw: &Raw, n: usize| -> Vec<u16> {
        (0..n)
            .map(|_| {
                let (op, rest, _) = raw.recv();
                assert_eq!(op, DATA);
                u16::from_be_bytes([rest[0], rest[1]])
            })
            .collect()
    };
    let raw = Raw::new(s.addr);
    raw.request(RRQ, b"f", &[("windowsize", "4")]);
    let (op, _, peer) = raw.recv();
    assert_eq!(op, OACK);
    raw.ack(peer, 0);
    assert_eq!(numbers(&raw, 4), [1, 2, 3, 4]);
    raw.ack(peer, 2); // 3 was lost: the client drops 4 and acknowledges 2
    assert_eq!(numbers(&raw, 4), [3, 4, 5, 6]);
    raw.ack(peer, 2); // 3 lost again
    assert_eq!(numbers(&raw, 4), [3, 4, 5, 6]);
    raw.ack(peer, 6);
    assert_eq!(numbers(&raw, 4), [7, 8, 9, 10]);
}

/// The log line of the end of `raw`'s transfer, once the server wrote it (the transfer's task
/// ends just after the client's last datagram; waited for, within 10 s).
fn ended_line(raw: &Raw) -> String {
    let needle = format!("client=127.0.0.1:{} ", raw.port());
    for _ in 0..2000 {
        if let Some(l) = log_lines_with(&needle)
            .into_iter()
            .find(|l| l.contains("transfer ended"))
        {
            return l;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("the transfer of client port {} never ended", raw.port());
}

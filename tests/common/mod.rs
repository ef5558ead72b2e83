//! Helpers shared by the integration tests: a throw-away data directory and the real binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

pub const BIN: &str = env!("CARGO_BIN_EXE_bootcast");

/// A temporary work area with a bootcast data directory inside.
pub struct Lab {
    pub dir: tempfile::TempDir,
}

impl Lab {
    pub fn new() -> Lab {
        Lab {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// A staff machine of `server`'s: a data directory of its own holding only the server's
    /// API token (as `image export --from` finds it), once the server made one.
    pub fn client_of(server: &Lab) -> Lab {
        let client = Lab::new();
        std::fs::create_dir_all(client.data()).unwrap();
        let from = server.data().join("api-token");
        if from.exists() {
            let to = client.data().join("api-token");
            std::fs::copy(&from, &to).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        client
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn data(&self) -> PathBuf {
        self.path("data")
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--data").arg(self.data()).env_remove("BOOTCAST_DATA");
        c
    }

    /// Runs bootcast with `args`; returns the output whatever the exit status.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run bootcast")
    }

    /// Runs bootcast with `--json`, requires success, parses stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self
            .cmd()
            .arg("--json")
            .args(args)
            .output()
            .expect("run bootcast");
        assert!(
            out.status.success(),
            "bootcast {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON on stdout")
    }

    /// Writes `bytes` to a file in the lab and returns its path.
    pub fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    pub fn add(&self, name: &str, source: &Path) -> serde_json::Value {
        self.json(&["image", "add", name, source.to_str().unwrap()])
    }

    /// Exports `spec` to a new file and returns its bytes.
    pub fn export(&self, spec: &str, target: &str) -> Vec<u8> {
        let t = self.path(target);
        self.json(&["image", "export", spec, t.to_str().unwrap()]);
        std::fs::read(t).unwrap()
    }

    /// Chunks claimed so far by running ingests (each claims every distinct chunk it meets,
    /// new or already stored, before it looks the chunk up).
    pub fn claims(&self) -> usize {
        std::fs::read_dir(self.data().join("store/sessions"))
            .map(|d| {
                d.filter_map(|e| std::fs::metadata(e.ok()?.path().join("ids")).ok())
                    .map(|m| m.len() as usize / 32)
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Published chunk files in the store.
    pub fn chunk_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let root = self.data().join("store/chunks");
        if let Ok(dirs) = std::fs::read_dir(root) {
            for d in dirs {
                for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
                    let path = f.unwrap().path();
                    // Dot names are an ingest's temp files, not yet published chunks.
                    if !path.file_name().unwrap().to_string_lossy().starts_with('.') {
                        out.push(path);
                    }
                }
            }
        }
        out.sort();
        out
    }
}

pub fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub use bootcast::testkit::random_bytes;

/// Compressible pseudo-text: words drawn from a small vocabulary (like files on a disk).
pub fn texty_bytes(len: usize, seed: u64) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "boot",
        "image",
        "chunk",
        "relay",
        "site",
        "kernel",
        "initrd",
        "disk",
        "version",
        "the",
        "of",
        "and",
        "store",
        "manifest",
        "multicast",
        "room",
        "\n",
        "0x1f",
        "usr/lib",
        "::",
    ];
    let noise = random_bytes(len / 3 + 16, seed);
    let mut out = Vec::with_capacity(len + 16);
    let mut i = 0;
    while out.len() < len {
        out.extend_from_slice(WORDS[noise[i] as usize % WORDS.len()].as_bytes());
        out.push(b' ');
        i = (i + 1) % noise.len();
    }
    out.truncate(len);
    out
}

/// A disk-like image: data regions separated by zero runs.
pub fn disk_like(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut s = seed;
    while out.len() < len {
        s += 1;
        let data = (random_bytes(8, s)[0] as usize + 1) * 16 * 1024;
        out.extend(texty_bytes(data.min(len - out.len()), s));
        let zeros = (random_bytes(8, s + 1000)[0] as usize % 64) * 4096;
        out.extend(std::iter::repeat_n(0u8, zeros.min(len - out.len())));
    }
    out
}

/// True when running as root (tests that need it print SKIP otherwise).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A `bootcast serve` process; stopped with SIGTERM (then SIGKILL) on drop.
pub struct Served {
    pub child: std::process::Child,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// The API token from the banner (first start) or `token show`.
    pub token: Option<String>,
    /// `https://127.0.0.1:PORT` (for a wildcard listener) or the HTTPS address the banner
    /// names; `None`: HTTPS off.
    pub https_url: Option<String>,
    /// The HTTPS certificate's `sha256:HEX`, from the banner.
    pub fingerprint: Option<String>,
    /// Banner and log lines read so far.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Served {
    /// Starts `bootcast --data DATA serve ARGS` and waits for its `bootcast: ready` line.
    /// Panics with the server's output if it exits first.
    pub fn start(cmd: Command, args: &[&str]) -> Served {
        Served::start_as(cmd, "serve", args)
    }

    /// [`Served::start`] for another server command (`relay`).
    pub fn start_as(mut cmd: Command, command: &str, args: &[&str]) -> Served {
        use std::io::BufRead;
        cmd.arg(command)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("spawn bootcast serve");
        let stderr = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let l = log.clone();
        std::thread::spawn(move || {
            let mut ready = false;
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                l.lock().unwrap().push(line.clone());
                if !ready && line == "bootcast: ready" {
                    ready = true;
                    let _ = tx.send(());
                }
            }
        });
        // the reader thread drops `tx` at EOF, so this returns when the server exits early
        if rx.recv().is_err() {
            let status = child.wait().unwrap();
            panic!(
                "bootcast serve exited ({status}) before it was ready:\n{}",
                log.lock().unwrap().join("\n")
            );
        }
        let lines = log.lock().unwrap().clone();
        let listen = |prefix: &str| {
            lines
                .iter()
                .find_map(|l| l.trim().strip_prefix(prefix))
                .and_then(|l| l.split_whitespace().next())
                .filter(|a| *a != "off")
                .map(|a| a.replace("0.0.0.0", "127.0.0.1"))
        };
        let http = listen("HTTP ").expect("banner names the HTTP address");
        let https_url = listen("HTTPS ").map(|a| format!("https://{a}"));
        let fingerprint = lines.iter().find_map(|l| {
            l.trim()
                .strip_prefix("certificate ")
                .and_then(|l| l.split_whitespace().next())
                .map(str::to_string)
        });
        let token = lines.iter().find_map(|l| {
            l.split_once("prints it again): ")
                .map(|(_, t)| t.trim().to_string())
        });
        Served {
            child,
            url: format!("http://{http}"),
            token,
            https_url,
            fingerprint,
            log,
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().expect("wait for bootcast serve")
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A server that a test talks to over HTTP: its base URL and staff token.
pub trait Endpoint {
    fn url(&self) -> &str;
    fn token(&self) -> Option<&str>;
}

impl Endpoint for Served {
    fn url(&self) -> &str {
        &self.url
    }
    fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }
}

/// `bootcast serve` inside the test process, on a listener the test bound on 127.0.0.1 (no
/// banner to parse, no child process): the real [`bootcast::server::Server`] with the
/// configuration a TOML text gives, in a runtime thread of its own. Dropping it cancels the
/// server and waits for its services to stop. The test must not open the server's database
/// file itself while it runs (read it through the CLI or the API): SQLite's locks are POSIX
/// locks, which the process loses on any descriptor's close of that file.
pub struct InProcess {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// `https://127.0.0.1:PORT`
    pub https_url: String,
    /// The HTTPS certificate's `sha256:HEX` (self-signed, in the data directory).
    pub fingerprint: String,
    /// The staff API token.
    pub token: Option<String>,
    cancel: tokio_util::sync::CancellationToken,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl Endpoint for InProcess {
    fn url(&self) -> &str {
        &self.url
    }
    fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }
}

/// `Authorization: Bearer` with `s`'s API token, as staff send it (images are private; a
/// relay asks central to confirm it).
pub fn staff(s: &InProcess) -> (&'static str, String) {
    (
        "authorization",
        format!("Bearer {}", s.token.as_deref().unwrap()),
    )
}

impl InProcess {
    /// HTTP only (TFTP off), over the lab's data directory.
    pub fn start(lab: &Lab) -> InProcess {
        InProcess::start_with(&lab.data(), "[tftp]\nlisten = \"off\"\n")
    }

    /// With the configuration file `toml` (its `[http] listen` and `tls_listen` are replaced
    /// by the test's own listeners on 127.0.0.1:0).
    pub fn start_with(data: &Path, toml: &str) -> InProcess {
        use bootcast::config::RawConfig;
        let config = RawConfig::from_toml(toml)
            .and_then(|r| r.validate(&bootcast::netif::interface_ipv4))
            .unwrap_or_else(|e| panic!("test configuration: {e}"));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let tls_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let https_url = format!("https://{}", tls_listener.local_addr().unwrap());
        let cancel = tokio_util::sync::CancellationToken::new();
        let (tx, rx) = std::sync::mpsc::channel();
        let (c, data) = (cancel.clone(), data.to_path_buf());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async move {
                let started = async {
                    let sockets = bootcast::server::Sockets::from_std(listener, None)
                        .and_then(|s| s.with_https(tls_listener))
                        .map_err(|e| e.to_string())?;
                    bootcast::server::Server::new(config, &data, sockets)
                        .await
                        .map_err(|e| e.to_string())
                }
                .await;
                match started {
                    Ok(server) => {
                        let fingerprint = server
                            .listening()
                            .https
                            .as_ref()
                            .map(|h| h.fingerprint.clone())
                            .unwrap_or_default();
                        let _ = tx.send(Ok((server.token().to_string(), fingerprint)));
                        server.run(c).await.map_err(|e| e.to_string())
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.clone()));
                        Err(e)
                    }
                }
            })
        });
        let (token, fingerprint) = rx
            .recv()
            .expect("the server thread answers")
            .unwrap_or_else(|e| panic!("the in-process server did not start: {e}"));
        InProcess {
            url,
            https_url,
            fingerprint,
            token: Some(token).filter(|t| !t.is_empty()),
            cancel,
            thread: Some(thread),
        }
    }

    /// Stops the server; its services' outcome.
    pub fn stop(&mut self) -> Result<(), String> {
        self.cancel.cancel();
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err("the server thread panicked".into())),
            None => Ok(()),
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// One HTTP request with reqwest: (status, response headers with lower-case names, body).
pub fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> (u16, std::collections::BTreeMap<String, String>, Vec<u8>) {
    static CLIENT: std::sync::OnceLock<reqwest::blocking::Client> = std::sync::OnceLock::new();
    let client = CLIENT.get_or_init(|| {
        reqwest::blocking::Client::builder()
            .timeout(std::time::Duration::from_secs(300))
            .build()
            .expect("reqwest client")
    });
    let mut req = client.request(method.parse().expect("an HTTP method"), url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.body(b);
    }
    let resp = req.send().unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let head = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = resp.bytes().expect("read the body").to_vec();
    (status, head, body)
}

/// A blocking HTTP client that trusts exactly the certificate `fingerprint` (`sha256:HEX`),
/// as a pinning relay does.
pub fn pinned_client(fingerprint: &str) -> reqwest::blocking::Client {
    use bootcast::tls::{client_config, Fingerprint, Naming, Pins, TlsClient};
    let pins = TlsClient::Pinned(Pins {
        fingerprints: vec![Fingerprint::parse(fingerprint).expect("a fingerprint")],
    });
    reqwest::blocking::Client::builder()
        .use_preconfigured_tls(client_config(&pins, Naming::EXPORT).unwrap())
        .timeout(std::time::Duration::from_secs(300))
        .build()
        .expect("reqwest client")
}

/// A POST that declares a body of `len` bytes and sends none: the server must refuse it from
/// its headers alone (413). A client that sent the body could see the connection closed
/// under it instead of the answer, whichever came first. Returns (status, body).
pub fn post_declaring(url: &str, headers: &[(&str, &str)], len: usize) -> (u16, String) {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut c = std::net::TcpStream::connect(host).unwrap();
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {len}\r\n"
    );
    for (k, v) in headers {
        req += &format!("{k}: {v}\r\n");
    }
    c.write_all(format!("{req}\r\n").as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = c.read_to_end(&mut answer); // the server closes after its answer
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, body.to_string())
}

/// An HTTP request: returns (status, body).
pub fn http(method: &str, url: &str, token: Option<&str>, json: Option<&str>) -> (u16, String) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = Vec::new();
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    if json.is_some() {
        headers.push(("content-type", "application/json"));
    }
    let (code, _, body) = request(method, url, &headers, json.map(|j| j.as_bytes().to_vec()));
    (code, String::from_utf8_lossy(&body).into_owned())
}

/// A staff API call on the in-process server `s` (its token): (status, body as JSON, or
/// `{"raw": text}` when it is not JSON).
pub fn api(
    s: &InProcess,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let (code, text) = http(
        method,
        &format!("{}{path}", s.url),
        s.token.as_deref(),
        body.map(|b| b.to_string()).as_deref(),
    );
    (
        code,
        serde_json::from_str(&text).unwrap_or_else(|_| serde_json::json!({ "raw": text })),
    )
}

/// [`http`] from inside network namespace `ns` (curl run there), or from here.
pub fn http_in(
    ns: Option<&str>,
    method: &str,
    url: &str,
    token: Option<&str>,
    json: Option<&str>,
) -> (u16, String) {
    let Some(ns) = ns else {
        return http(method, url, token, json);
    };
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, "curl"]);
    c.args(["-sS", "-o", "-", "-w", "\n%{http_code}", "-X", method, url]);
    if let Some(t) = token {
        c.arg("-H").arg(format!("Authorization: Bearer {t}"));
    }
    if let Some(body) = json {
        c.args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
        ]);
    }
    let out = c.output().expect("run curl (Debian package curl)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').expect("curl printed a status");
    (
        code.trim()
            .parse()
            .unwrap_or_else(|_| panic!("curl failed: {}", stderr(&out))),
        body.to_string(),
    )
}

/// Builds the boot environment into the lab's data directory (reusing the cached Debian
/// kernel package when there is one).
pub fn bootenv_build(lab: &Lab) -> Output {
    let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/bootenv");
    lab.run(&["bootenv", "build", "--cache", cache.to_str().unwrap()])
}
/// A stand-in boot environment: two files and the record `bootenv::load` checks.
/// How many of `events` (an `events --json` answer) are of `kind`.
pub fn count_events(events: &serde_json::Value, kind: &str) -> usize {
    events["events"]
        .as_array()
        .map_or(0, |a| a.iter().filter(|e| e["kind"] == kind).count())
}

pub fn fake_bootenv(lab: &Lab) {
    bootcast::testkit::stand_in_bootenv(&lab.data(), bootcast::proto::agent::AGENT_PROTOCOL);
}

pub mod dhcp;
pub mod disks;
pub mod netlab;
pub mod region;
pub mod staff;

/// An export that met a corrupt chunk: it failed, its error names the chunk, and none of the
/// chunk's range of the target was written (still zero).
pub fn assert_corrupt_refused(
    out: &Output,
    id_hex: &str,
    target: &Path,
    range: std::ops::Range<usize>,
) {
    assert!(
        !out.status.success(),
        "an export of a corrupt chunk must fail"
    );
    let err = stderr(out);
    assert!(err.contains(id_hex) && err.contains("corrupt"), "{err}");
    let written = std::fs::read(target).unwrap();
    assert!(
        written[range].iter().all(|&b| b == 0),
        "bytes of the corrupt chunk reached the target"
    );
}

/// The `bootcast.credential=` of a boot-environment script.
pub fn credential_of(script: &str) -> String {
    let n = script
        .split_whitespace()
        .find_map(|w| w.strip_prefix("bootcast.credential="))
        .unwrap_or_else(|| panic!("no credential in {script}"));
    assert_eq!(n.len(), 32, "a credential is 128 bits in hex");
    n.to_string()
}

/// Prints a line on the real stderr, past the test harness's output capture, so that SKIP
/// lines and measured figures show in every run, passing or not.
pub fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// `say("SKIP: TEST: WHY")`.
pub fn skip(test: &str, why: &str) {
    say(&format!("SKIP: {test}: {why}"));
}

/// Builds (or finds in the cache) the demo master `version` with images/demo/build.sh; its
/// path. Needs the Debian packages build.sh installs (root for apt-get).
pub fn demo_image(version: &str) -> PathBuf {
    demo_master(&["--version", version])
}

/// [`demo_image`] with build.sh's arguments `args` (`--secure-boot --version v2`).
pub fn demo_master(args: &[&str]) -> PathBuf {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(repo.join("images/demo/build.sh"))
        .args(args)
        .output()
        .expect("run images/demo/build.sh");
    assert!(
        out.status.success(),
        "images/demo/build.sh {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).lines().last().unwrap())
}

/// What `disk` lacks of version `spec` (`IMAGE@VERSION`): the compressed bytes of its chunks
/// not found at their offsets on the disk (what a restore onto it must receive).
pub fn lacked_bytes(lab: &Lab, spec: &str, disk: &[u8]) -> u64 {
    let store = bootcast::store::Store::open(&lab.data()).unwrap();
    let v = store.resolve(spec).unwrap();
    v.manifest
        .chunks()
        .filter(|(e, id, _)| {
            let range = e.offset as usize..(e.offset + e.len) as usize;
            bootcast::store::id::ChunkId::of(&disk[range]) != *id
        })
        .map(|(_, _, compressed)| u64::from(compressed))
        .sum()
}

/// `debugfs -R 'cat FILE' FS`: a file of an ext filesystem (FS: an image, or `IMG?offset=N`)
/// without mounting it; empty if it is not there.
pub fn debugfs_cat(fs: &str, file: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", &format!("cat {file}")])
        .arg(fs)
        .output()
        .expect("run debugfs (e2fsprogs)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The boot script the server gives `mac` (BIOS).
pub fn boot_script(s: &impl Endpoint, mac: &str) -> String {
    let (code, script) = http(
        "GET",
        &format!("{}/boot/{mac}.ipxe?platform=pcbios", s.url()),
        None,
        None,
    );
    assert_eq!(code, 200, "{script}");
    script
}

/// The host's first network boot and the agent's hello: `mac` is registered.
pub fn register(s: &impl Endpoint, mac: &str) {
    let script = boot_script(s, mac);
    let (code, body) = hello(s, mac, &credential_of(&script), None);
    assert_eq!(code, 200, "{body}");
}

/// The agent's hello for `mac` with `credential` (and the task of its script): (status, body).
pub fn hello(s: &impl Endpoint, mac: &str, credential: &str, task: Option<i64>) -> (u16, String) {
    let mut extra = serde_json::json!({});
    if let Some(t) = task {
        extra["task"] = t.into();
    }
    hello_with(s, mac, credential, extra)
}

/// [`hello`] with the fields of `extra` (an object: `task`, `smbios`...) added to the hello.
pub fn hello_with(
    s: &impl Endpoint,
    mac: &str,
    credential: &str,
    extra: serde_json::Value,
) -> (u16, String) {
    let mut hello = serde_json::json!({"protocol": bootcast::proto::agent::AGENT_PROTOCOL, "mac": mac, "arch": "x86_64", "firmware": "bios", "boot_time": 1, "credential": credential});
    if let (Some(h), Some(e)) = (hello.as_object_mut(), extra.as_object()) {
        h.extend(e.clone());
    }
    http(
        "POST",
        &format!("{}/api/v1/agent/hello", s.url()),
        None,
        Some(&hello.to_string()),
    )
}

/// The session of a hello's answer.
pub fn session_of(answer: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(answer).unwrap_or_else(|e| panic!("hello answer {answer}: {e}"));
    v["session"]
        .as_str()
        .unwrap_or_else(|| panic!("no session in {answer}"))
        .to_string()
}

/// The ` bootcast.key=...` of a boot script (the keys its agent verifies orders with), or
/// nothing.
pub fn key_arg(script: &str) -> String {
    script
        .split_whitespace()
        .find(|w| w.starts_with("bootcast.key="))
        .map(|w| format!(" {w}"))
        .unwrap_or_default()
}

/// The `bootcast.task=` of a boot script.
pub fn task_of(script: &str) -> String {
    script
        .split_whitespace()
        .find_map(|w| w.strip_prefix("bootcast.task="))
        .unwrap_or_else(|| panic!("no task in {script}"))
        .to_string()
}

/// A fake root for `agent boot --root`: the kernel command line the boot script would give.
pub fn fake_agent_root(dir: &Path, mac: &str, cmdline: &str) {
    std::fs::create_dir_all(dir.join("proc")).unwrap();
    std::fs::create_dir_all(dir.join("sys/class/net/eth0")).unwrap();
    std::fs::create_dir_all(dir.join("sys/block")).unwrap();
    std::fs::write(dir.join("proc/cmdline"), cmdline).unwrap();
    std::fs::write(dir.join("proc/stat"), "cpu 1\nbtime 1763900000\n").unwrap();
    std::fs::write(dir.join("proc/mounts"), "").unwrap();
    std::fs::write(dir.join("sys/class/net/eth0/address"), format!("{mac}\n")).unwrap();
}

/// A counter or gauge of `URL/metrics` (`name` with its labels, as printed), fetched from
/// inside network namespace `ns` if given; `None` if the server does not print it.
pub fn metric_in(ns: Option<&str>, url: &str, name: &str) -> Option<u64> {
    let (code, text) = http_in(ns, "GET", &format!("{url}/metrics"), None, None);
    assert_eq!(code, 200, "{text}");
    text.lines().find_map(|l| match l.split_once(' ') {
        Some((n, v)) if n == name => v.trim().parse::<f64>().ok().map(|v| v as u64),
        _ => None,
    })
}

/// A counter of the server's `/metrics` (it must be there).
pub fn metric(s: &impl Endpoint, name: &str) -> u64 {
    metric_in(None, s.url(), name).unwrap_or_else(|| panic!("no {name} in {}/metrics", s.url()))
}

/// Polls `cond` every 100 ms until it gives a value; panics naming `what` after `secs`.
pub fn wait_for<T>(what: &str, secs: u64, mut cond: impl FnMut() -> Option<T>) -> T {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(
            std::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// One boot of the agent for `mac`'s current task, with `disk` as its disk
/// (`bootcast.disk=`); returns the agent's stdout+stderr.
pub fn agent_boot(lab: &Lab, s: &impl Endpoint, mac: &str, disk: &Path, tag: &str) -> String {
    let script = boot_script(s, mac);
    let task = task_of(&script);
    let root = lab.path(&format!("root-{tag}"));
    fake_agent_root(
        &root,
        mac,
        &format!(
            "console=ttyS0 bootcast.server={} bootcast.mac={mac} bootcast.task={task} bootcast.credential={} bootcast.disk={}{}",
            s.url(),
            credential_of(&script),
            disk.display(),
            key_arg(&script)
        ),
    );
    let out = std::process::Command::new(BIN)
        .args(["agent", "boot", "--no-act", "--tries", "2", "--root"])
        .arg(&root)
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A TCP relay between the agent and the server, under the test's control. It forwards
/// everything, except that after [`Relay::hold_after`] the *chunk* connections (those whose
/// first request is for a manifest or chunks, not the agent's reports) stop passing server
/// bytes once the budget is spent: the agent is then mid-restore, deterministically.
/// [`Relay::cut`] closes every connection made so far and points new ones at another
/// upstream, or refuses them (accepts and closes at once, as a host whose server is down).
pub struct Relay {
    pub port: u16,
    state: std::sync::Arc<(std::sync::Mutex<RelayState>, std::sync::Condvar)>,
}

struct RelayState {
    upstream: Option<std::net::SocketAddr>,
    /// Chunk bytes that may still pass; `None`: no limit.
    budget: Option<u64>,
    /// A chunk connection is waiting for budget.
    holding: bool,
    /// Bumped by `cut`: connections of an older generation close.
    generation: u64,
    /// Server-to-agent bytes on chunk connections, in total.
    chunk_bytes: u64,
}

impl Relay {
    /// A relay to `upstream`; `held` are the request path prefixes whose connections
    /// [`Relay::hold_after`] limits (e.g. `/chunks/`).
    pub fn start(upstream: std::net::SocketAddr, held: &'static [&'static str]) -> Relay {
        use std::io::{Read, Write};
        use std::net::{Shutdown, TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = std::sync::Arc::new((
            std::sync::Mutex::new(RelayState {
                upstream: Some(upstream),
                budget: None,
                holding: false,
                generation: 0,
                chunk_bytes: 0,
            }),
            std::sync::Condvar::new(),
        ));
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut client) = conn else { continue };
                let (upstream, generation) = {
                    let g = st.0.lock().unwrap();
                    (g.upstream, g.generation)
                };
                let Some(server) = upstream.and_then(|u| TcpStream::connect(u).ok()) else {
                    drop(client);
                    continue;
                };
                // the first request line says what kind of connection this is
                let mut first = vec![0u8; 64];
                let n = client.read(&mut first).unwrap_or(0);
                first.truncate(n);
                let head = String::from_utf8_lossy(&first).to_string();
                let chunky = head
                    .split_whitespace()
                    .nth(1)
                    .is_some_and(|path| held.iter().any(|p| path.starts_with(p)));
                let mut s1 = server.try_clone().unwrap();
                if s1.write_all(&first).is_err() {
                    continue;
                }
                let mut c1 = client.try_clone().unwrap();
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c1, &mut s1);
                    let _ = s1.shutdown(Shutdown::Write);
                });
                let st = st.clone();
                std::thread::spawn(move || {
                    let (mut server, mut client) = (server, client);
                    let mut buf = vec![0u8; 16 << 10];
                    'conn: loop {
                        let n = match server.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let mut sent = 0;
                        while sent < n {
                            let take = {
                                let (lock, cv) = &*st;
                                let mut g = lock.lock().unwrap();
                                loop {
                                    if g.generation != generation {
                                        break 'conn;
                                    }
                                    match (chunky, g.budget) {
                                        (true, Some(0)) => {
                                            g.holding = true;
                                            cv.notify_all();
                                            g = cv.wait(g).unwrap();
                                        }
                                        (true, Some(b)) => {
                                            let t = (n - sent).min(b as usize);
                                            g.budget = Some(b - t as u64);
                                            break t;
                                        }
                                        _ => break n - sent,
                                    }
                                }
                            };
                            if client.write_all(&buf[sent..sent + take]).is_err() {
                                break 'conn;
                            }
                            if chunky {
                                st.0.lock().unwrap().chunk_bytes += take as u64;
                            }
                            sent += take;
                        }
                    }
                    let _ = client.shutdown(Shutdown::Both);
                    let _ = server.shutdown(Shutdown::Both);
                });
            }
        });
        Relay { port, state }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// From now on, at most `bytes` more server bytes on chunk connections, then they wait.
    pub fn hold_after(&self, bytes: u64) {
        self.state.0.lock().unwrap().budget = Some(bytes);
    }

    /// Lifts the budget: held connections go on (none is closed).
    pub fn release(&self) {
        let (lock, cv) = &*self.state;
        let mut g = lock.lock().unwrap();
        g.budget = None;
        g.holding = false;
        cv.notify_all();
    }

    /// Waits until a chunk connection waits for budget.
    pub fn wait_held(&self) {
        let (lock, cv) = &*self.state;
        let mut g = lock.lock().unwrap();
        while !g.holding {
            g = cv.wait(g).unwrap();
        }
    }

    /// Closes every connection so far; new ones go to `upstream` (refused if `None`), without
    /// a budget.
    pub fn cut(&self, upstream: Option<std::net::SocketAddr>) {
        let (lock, cv) = &*self.state;
        let mut g = lock.lock().unwrap();
        g.generation += 1;
        g.budget = None;
        g.holding = false;
        g.upstream = upstream;
        cv.notify_all();
    }

    pub fn chunk_bytes(&self) -> u64 {
        self.state.0.lock().unwrap().chunk_bytes
    }
}

/// `agent boot` as a child process, its console lines read as they come.
pub struct Agent {
    child: std::process::Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
    log: String,
}

impl Agent {
    /// `agent boot` for the host's current task, reaching the server at `server`.
    pub fn spawn(lab: &Lab, s: &impl Endpoint, mac: &str, server: &str, target: &Path) -> Agent {
        use std::io::BufRead;
        let script = boot_script(s, mac);
        let root = lab.path("root");
        fake_agent_root(
            &root,
            mac,
            &format!(
                "bootcast.server={server} bootcast.mac={mac} bootcast.task={} bootcast.credential={} bootcast.disk={}{}",
                task_of(&script),
                credential_of(&script),
                target.display(),
                key_arg(&script)
            ),
        );
        let mut child = std::process::Command::new(BIN)
            .args(["agent", "boot", "--no-act", "--tries", "2", "--root"])
            .arg(&root)
            .stdout(std::process::Stdio::piped()) // the agent's console lines
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        Agent {
            child,
            lines,
            log: String::new(),
        }
    }

    /// Reads console lines up to the first containing `what`; returns it.
    pub fn line(&mut self, what: &str) -> String {
        loop {
            let line = self
                .lines
                .next()
                .unwrap_or_else(|| panic!("agent ended before {what:?}:\n{}", self.log))
                .unwrap();
            self.log.push_str(&line);
            self.log.push('\n');
            if line.contains(what) {
                return line;
            }
        }
    }

    pub fn finish(mut self) -> String {
        for l in self.lines.by_ref() {
            self.log.push_str(&l.unwrap());
            self.log.push('\n');
        }
        assert!(self.child.wait().unwrap().success(), "{}", self.log);
        self.log
    }
}

/// The number after `word` in `line` (`... kept 123 in place ...`).
pub fn number_after(line: &str, word: &str) -> u64 {
    let mut w = line.split_whitespace();
    w.find(|x| *x == word)
        .and_then(|_| w.next())
        .and_then(|n| n.trim_start_matches('(').parse().ok())
        .unwrap_or_else(|| panic!("no number after {word:?} in {line:?}"))
}

/// `bootcast site add NAME ARGS...`: the site's relay token.
pub fn site(lab: &Lab, name: &str, args: &[&str]) -> String {
    let mut a = vec!["site", "add", name];
    a.extend_from_slice(args);
    lab.json(&a)["token"].as_str().unwrap().to_string()
}

/// A relay with its data in `lab`/`dir`, on a free port.
pub fn relay(
    lab: &Lab,
    dir: &str,
    upstream: &str,
    site: &str,
    token: &str,
    extra: &[&str],
) -> Served {
    use std::os::unix::fs::PermissionsExt;
    // the token from a file of mode 0600, never on the command line
    let token_file = lab.path(&format!("{dir}.token"));
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("--data")
        .arg(lab.path(dir))
        .env_remove("BOOTCAST_DATA")
        .env_remove("BOOTCAST_RELAY_TOKEN");
    let mut args = vec![
        "--upstream",
        upstream,
        "--site",
        site,
        "--token-file",
        token_file.to_str().unwrap(),
        "--http",
        "127.0.0.1:0",
        "--tftp",
        "off",
    ];
    args.extend_from_slice(extra);
    Served::start_as(cmd, "relay", &args)
}

/// The central view of `site` in push `id` (`push status --json`).
pub fn push_row(lab: &Lab, id: i64, site: &str) -> serde_json::Value {
    let st = lab.json(&["push", "status", &id.to_string()]);
    st["pushes"][0]["sites"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["site"] == site))
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

/// The checker of a filesystem the mapper names, run read-only on a partition image file.
pub fn fs_checker(fs: &str, part: &Path) -> Option<Output> {
    let p = part.to_str().unwrap();
    let (cmd, args): (&str, Vec<&str>) = match fs {
        "fat12" | "fat16" | "fat32" => ("fsck.vfat", vec!["-n", p]),
        "ext2" | "ext3" | "ext4" => ("e2fsck", vec!["-fn", p]),
        "ntfs" => ("ntfsfix", vec!["-n", p]),
        _ => return None,
    };
    Some(
        Command::new(cmd)
            .args(&args)
            .output()
            .unwrap_or_else(|e| panic!("run {cmd}: {e}")),
    )
}

/// The map `image add` makes of the disk image `image`.
pub fn used_ranges(image: &Path) -> bootcast::fsmap::DiskMap {
    let mut src = std::fs::File::open(image).unwrap();
    let size = src.metadata().unwrap().len();
    bootcast::fsmap::map_disk(&mut src, size).unwrap()
}

/// The ranges a restore of `image` onto disk `got` may leave different from the image: the
/// map's unused runs and, when the disk is larger than a GPT image, the GPT headers (the backup
/// table moved to the disk's end: the primary header's backup LBA changes, the old backup
/// header is cleared). In that case the disk's GPT must pass `sgdisk -v`.
pub fn restore_holes(
    image: &Path,
    want: &[u8],
    got: &[u8],
    what: &str,
) -> bootcast::fsmap::DiskMap {
    let mut map = used_ranges(image);
    let gpt = want.len() >= 1024 && &want[512..520] == b"EFI PART";
    if gpt && got.len() > want.len() {
        let end = want.len() as u64;
        let mut holes = map.unused.clone();
        holes.push(512..1024);
        holes.push(end - 512..end);
        map.unused = bootcast::fsmap::normalize(holes);
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), got).unwrap();
        let v = Command::new("sgdisk").arg("-v").arg(f.path()).output();
        if let Ok(v) = v {
            let text = String::from_utf8_lossy(&v.stdout);
            assert!(
                text.contains("No problems found"),
                "{what}: sgdisk -v:\n{text}"
            );
        }
    }
    map
}

/// The first byte of `range` outside `map`'s unused runs where `want` and `got` differ.
pub fn first_used_difference(
    map: &bootcast::fsmap::DiskMap,
    want: &[u8],
    got: &[u8],
    range: std::ops::Range<u64>,
) -> Option<u64> {
    let mut at = range.start;
    let holes = map
        .unused
        .iter()
        .cloned()
        .chain(std::iter::once(range.end..range.end));
    for hole in holes {
        let end = hole.start.clamp(at, range.end);
        let (a, b) = (
            &want[at as usize..end as usize],
            &got[at as usize..end as usize],
        );
        if a != b {
            return Some(at + a.iter().zip(b).position(|(x, y)| x != y).unwrap() as u64);
        }
        at = at.max(hole.end.min(range.end));
        if at >= range.end {
            break;
        }
    }
    None
}

/// What "restored correctly" means, for an image file and the disk it was restored to.
///
/// A raw image (no unused run): byte-identical. A mapped image: every byte outside the unused
/// runs identical (partition table, boot code, every used block), and every mapped filesystem
/// passes its checker on the target. (Files are compared by each test, with the filesystem's
/// own tools.) Returns the image's map.
pub fn assert_restored(image: &Path, target: &Path) -> bootcast::fsmap::DiskMap {
    assert_restored_bytes(
        image,
        &std::fs::read(target).unwrap(),
        &target.display().to_string(),
    )
}

/// [`assert_restored`] for the bytes `got` of a disk (`what` names it in messages).
pub fn assert_restored_bytes(image: &Path, got: &[u8], what: &str) -> bootcast::fsmap::DiskMap {
    let want = std::fs::read(image).unwrap();
    let map = restore_holes(image, &want, got, what);
    assert!(got.len() >= want.len(), "{what} is smaller than the image");
    if let Some(at) = first_used_difference(&map, &want, got, 0..want.len() as u64) {
        panic!(
            "{what} differs from {} at byte {at}, which a filesystem uses (or no filesystem covers)",
            image.display()
        );
    }
    let dir = tempfile::tempdir().unwrap();
    for p in map.partitions.iter().filter(|p| p.mapped) {
        let part = dir.path().join(format!("part{}", p.number));
        std::fs::write(&part, &got[p.start as usize..(p.start + p.size) as usize]).unwrap();
        if let Some(out) = fs_checker(&p.fs, &part) {
            assert!(
                out.status.success(),
                "partition {} ({}) of {what} does not pass its checker:\n{}{}",
                p.number,
                p.fs,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::fs::remove_file(&part).unwrap();
    }
    map
}

//! HTTPS between relays and the central server, on 127.0.0.1: a relay that pins the central
//! server's self-signed certificate heartbeats and pulls manifests and chunks through it; a
//! wrong pin is refused with a message that says what the server presented and what to pin;
//! a recording TCP forwarder between relay and central sees the site token over plain HTTP
//! (the control) and never over HTTPS; `image export --from https://` pins too; the staff API
//! answers over HTTPS, and over plain HTTP from this machine. (The refusal of tokens on plain
//! HTTP from other machines is decided by `bootcast::http::listen::plain_refusal`, unit-tested
//! with a LAN peer there: every address here is loopback.)
//!
//! Waits are on reported state (`/metrics`, the relay's log), polled; no sleeps.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use common::*;

const HEARTBEATS: &str = "bootcast_relay_heartbeats_total";
const FAILURES: &str = "bootcast_relay_heartbeat_failures_total";

/// `bootcast site add NAME`: its relay token.
fn site(lab: &Lab, name: &str) -> String {
    lab.json(&["site", "add", name])["token"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A relay in this process for site `site`, pulling through from `upstream`; `tls`: more
/// `[relay]` keys (the pin).
fn relay(data: &Path, upstream: &str, site: &str, token: &str, tls: &str) -> InProcess {
    InProcess::start_with(
        data,
        &format!(
            "[tftp]\nlisten = \"off\"\n[relay]\nupstream = \"{upstream}\"\nsite = \"{site}\"\ntoken = \"{token}\"\nincomplete = \"upstream\"\n{tls}"
        ),
    )
}

fn metric_at(url: &str, name: &str) -> u64 {
    metric_in(None, url, name).unwrap_or(0)
}

fn wait_heartbeats(relay: &InProcess, n: u64) {
    wait_for(&format!("{n} heartbeat(s) of {}", relay.url), 60, || {
        (metric_at(&relay.url, HEARTBEATS) >= n).then_some(())
    });
}

/// A fingerprint no certificate has.
const WRONG: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

#[test]
fn a_relay_pinning_the_central_certificate_heartbeats_and_pulls_over_https() {
    let lab = Lab::new();
    let image = disk_like(2 << 20, 5);
    lab.add("disk", &lab.file("d.img", &image));
    let central = InProcess::start(&lab);
    assert!(central.fingerprint.starts_with("sha256:"));
    let token = site(&lab, "s1");
    let r = relay(
        &lab.path("relay"),
        &central.https_url,
        "s1",
        &token,
        &format!("upstream_fingerprint = \"{}\"\n", central.fingerprint),
    );
    wait_heartbeats(&r, 1);
    let sites = lab.json(&["site", "list"]);
    assert!(
        sites.to_string().contains(&r.url),
        "central recorded the relay's heartbeat: {sites}"
    );

    // the manifest and the chunks come from central over HTTPS, through the relay (a staff
    // machine with the API token: images are private)
    let client = Lab::client_of(&lab);
    let target = client.path("out.img");
    let out = client.run(&[
        "image",
        "export",
        "disk",
        target.to_str().unwrap(),
        "--from",
        &r.url,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(sha256(&std::fs::read(&target).unwrap()), sha256(&image));
    let up = metric_at(&r.url, "bootcast_relay_upstream_bytes_total");
    let served = metric_at(&central.url, "bootcast_chunk_bytes_served_total");
    assert!(up > 0, "chunks crossed the HTTPS link");
    assert_eq!(up, served, "every chunk byte the relay got, central sent");
    assert!(
        metric_at(
            &central.url,
            "bootcast_http_connections_accepted_total{listener=\"https\"}"
        ) > 0,
        "the relay came in on the HTTPS listener"
    );
    say(&format!(
        "tls: relay pinned {} and pulled {up} compressed bytes over HTTPS",
        central.fingerprint
    ));

    // image export --from https:// pins the same way
    let pinned = client.path("pinned.img");
    let out = client.run(&[
        "image",
        "export",
        "disk",
        pinned.to_str().unwrap(),
        "--from",
        &central.https_url,
        "--fingerprint",
        &central.fingerprint,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(sha256(&std::fs::read(&pinned).unwrap()), sha256(&image));
    let out = client.run(&[
        "image",
        "export",
        "disk",
        client.path("wrong.img").to_str().unwrap(),
        "--from",
        &central.https_url,
        "--fingerprint",
        WRONG,
    ]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!(
            "the server presented certificate {}, expected {WRONG}; if the server's certificate changed, pin the new one with --fingerprint {}",
            central.fingerprint, central.fingerprint
        )),
        "{err}"
    );
    // no pin: a self-signed certificate is not trusted, and the message says how to pin it
    let out = client.run(&[
        "image",
        "export",
        "disk",
        client.path("unpinned.img").to_str().unwrap(),
        "--from",
        &central.https_url,
    ]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!(
            "pin it with --fingerprint {}",
            central.fingerprint
        )),
        "{err}"
    );
}

#[test]
fn a_wrong_fingerprint_is_refused_naming_what_was_presented_and_what_to_pin() {
    let lab = Lab::new();
    let central = InProcess::start(&lab);
    let token = site(&lab, "s1");
    let token_file = lab.path("relay.token");
    std::fs::write(&token_file, &token).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let mut cmd = Command::new(BIN);
    cmd.arg("--data")
        .arg(lab.path("relay"))
        .env_remove("BOOTCAST_DATA")
        .env_remove("BOOTCAST_RELAY_TOKEN");
    let r = Served::start_as(
        cmd,
        "relay",
        &[
            "--upstream",
            &central.https_url,
            "--upstream-fingerprint",
            WRONG,
            "--site",
            "s1",
            "--token-file",
            token_file.to_str().unwrap(),
            "--http",
            "127.0.0.1:0",
            "--tftp",
            "off",
        ],
    );
    let want = format!(
        "upstream presented certificate {fp}, expected {WRONG}; if the server's certificate changed, pin the new one with --upstream-fingerprint {fp}",
        fp = central.fingerprint
    );
    let line = wait_for("the relay's heartbeat error", 60, || {
        r.log_text()
            .lines()
            .find(|l| l.contains(&want))
            .map(str::to_string)
    });
    assert!(line.contains("ERROR"), "logged as an error: {line}");
    assert!(metric_at(&r.url, FAILURES) >= 1);
    assert_eq!(metric_at(&r.url, HEARTBEATS), 0, "no heartbeat got through");
    assert!(
        r.log_text()
            .contains(&format!("certificate pinned: {WRONG}")),
        "the banner names the pin: {}",
        r.log_text()
    );
}

/// A TCP forwarder to `upstream` that records every byte that crosses it, both ways.
struct Recorder {
    addr: SocketAddr,
    bytes: Arc<Mutex<Vec<u8>>>,
    _rt: tokio::runtime::Runtime,
}

impl Recorder {
    fn start(upstream: SocketAddr) -> Recorder {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let rec = bytes.clone();
        rt.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                for (mut from, mut to) in [
                    (
                        Box::new(cr) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
                        Box::new(sw) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
                    ),
                    (Box::new(sr) as _, Box::new(cw) as _),
                ] {
                    let rec = rec.clone();
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 16 << 10];
                        loop {
                            let n = match from.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            rec.lock().unwrap().extend_from_slice(&buf[..n]);
                            if to.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown().await;
                    });
                }
            }
        });
        Recorder {
            addr,
            bytes,
            _rt: rt,
        }
    }

    fn recorded(&self) -> Vec<u8> {
        self.bytes.lock().unwrap().clone()
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn addr_of(url: &str) -> SocketAddr {
    url.split_once("://").unwrap().1.parse().unwrap()
}

#[test]
fn a_captured_heartbeat_shows_the_site_token_over_plain_http_and_never_over_https() {
    let lab = Lab::new();
    let central = InProcess::start(&lab);
    let token = site(&lab, "s1");
    assert!(token.len() >= 32, "{token}");

    // the control: the same relay setup over plain HTTP, so the check below can fail
    let plain = Recorder::start(addr_of(&central.url));
    let r = relay(
        &lab.path("plain"),
        &format!("http://{}", plain.addr),
        "s1",
        &token,
        "",
    );
    wait_heartbeats(&r, 1);
    drop(r);
    let seen = plain.recorded();
    assert!(
        contains(&seen, token.as_bytes()),
        "plain HTTP carries the token in clear ({} bytes recorded)",
        seen.len()
    );

    let tls = Recorder::start(addr_of(&central.https_url));
    let r = relay(
        &lab.path("tls"),
        &format!("https://{}", tls.addr),
        "s1",
        &token,
        &format!("upstream_fingerprint = \"{}\"\n", central.fingerprint),
    );
    wait_heartbeats(&r, 2);
    drop(r);
    let seen = tls.recorded();
    assert!(
        seen.len() > 1000,
        "a handshake and heartbeats crossed: {} bytes",
        seen.len()
    );
    assert_eq!(seen[0], 0x16, "the first byte is a TLS handshake record");
    assert!(
        !contains(&seen, token.as_bytes()),
        "the token crossed the HTTPS link in clear"
    );
    assert!(
        !contains(&seen, b"heartbeat"),
        "nothing of the request in clear"
    );
    say(&format!(
        "tls: {} bytes of HTTPS heartbeats recorded, no token in them; plain HTTP showed it",
        seen.len()
    ));
}

#[test]
fn the_staff_api_answers_over_https_and_over_plain_http_from_this_machine() {
    let lab = Lab::new();
    let central = InProcess::start(&lab);
    let token = central.token.clone().unwrap();
    // plain HTTP from loopback (the local CLI, scripts on the server)
    let (code, body) = http(
        "GET",
        &format!("{}/api/v1/hosts", central.url),
        Some(&token),
        None,
    );
    assert_eq!(code, 200, "{body}");
    // HTTPS, pinned
    let client = pinned_client(&central.fingerprint);
    let get = |auth: Option<&str>| {
        let mut req = client.get(format!("{}/api/v1/hosts", central.https_url));
        if let Some(t) = auth {
            req = req.bearer_auth(t);
        }
        let resp = req.send().unwrap();
        (resp.status().as_u16(), resp.text().unwrap())
    };
    let (code, body) = get(Some(&token));
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("hosts"), "{body}");
    let (code, _) = get(Some("wrong"));
    assert_eq!(code, 401, "HTTPS is no way around the token");
    // boot scripts are served over HTTPS too (one router)
    let resp = client
        .get(format!("{}/healthz", central.https_url))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}

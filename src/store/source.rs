//! Where export gets the chunks a target and its seeds lack: a [`ChunkSource`].
//!
//! A source hands out *compressed* frames, a batch at a time (one HTTP request per batch for
//! [`HttpSource`]); export decompresses and verifies every frame through
//! [`VerifiedChunk`](super::VerifiedChunk) before anything is written, whatever the source.
//!
//! ## The batch wire format (`POST /chunks/batch`)
//! Request body: the raw 32-byte chunk ids, concatenated (`application/octet-stream`), at most
//! [`BATCH_MAX_IDS`] ids. Response body, one frame per requested id, in request order:
//! ```text
//! id       32 bytes   the requested id
//! length   u32 BE     bytes that follow; 0xFFFFFFFF = the server lacks this chunk (nothing follows)
//! bytes    length     the stored zstd frame, as on disk (the server never decompresses)
//! ```

use std::io::Read;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use super::error::{Result, StoreError};
use super::id::{ChunkId, VersionId};
use super::manifest::Manifest;
use super::verified::VerifiedChunk;
use super::Store;
use crate::retry::Backoff;

/// Most ids one `POST /chunks/batch` may name.
pub const BATCH_MAX_IDS: usize = 4096;
/// Most compressed bytes one batch response may carry.
pub const BATCH_MAX_BYTES: u64 = 64 << 20;
/// The frame length that says "this chunk is missing".
pub const MISSING: u32 = u32::MAX;

/// A place compressed chunks come from.
pub trait ChunkSource: Sync {
    /// The stored (compressed, unverified) frames of `ids`, in the order asked. A chunk the
    /// source lacks is an error naming it.
    fn fetch(&self, ids: &[ChunkId]) -> Result<Vec<(ChunkId, Vec<u8>)>>;

    /// The error for a chunk from this source that did not decompress or verify.
    fn corrupt(&self, id: ChunkId, reason: String) -> StoreError;

    /// How much of the image one export worker plans at a time: (bytes, extents). Each batch
    /// is at most one [`fetch`](Self::fetch); a worker holds about twice `bytes` in memory.
    fn batch_size(&self) -> (u64, usize) {
        (1 << 20, 64)
    }
}

impl ChunkSource for Store {
    fn fetch(&self, ids: &[ChunkId]) -> Result<Vec<(ChunkId, Vec<u8>)>> {
        ids.iter()
            .map(|id| Ok((*id, self.read_compressed(id)?)))
            .collect()
    }

    fn corrupt(&self, id: ChunkId, reason: String) -> StoreError {
        StoreError::ChunkCorrupt {
            id,
            path: self.chunk_path(&id),
            reason,
        }
    }
}

/// Decompresses frames and checks their hash; keep one per thread.
pub struct Decoder {
    zstd: zstd::bulk::Decompressor<'static>,
    cap: usize,
}

impl Decoder {
    /// `cap`: the largest chunk expected (the chunker's max); larger frames are refused.
    pub fn new(cap: usize) -> Decoder {
        Decoder {
            zstd: zstd::bulk::Decompressor::new().expect("zstd decompressor"),
            cap,
        }
    }

    /// The chunk `id` from its compressed frame, or why not.
    pub fn decode(
        &mut self,
        id: &ChunkId,
        compressed: &[u8],
    ) -> std::result::Result<VerifiedChunk, String> {
        // the buffer is the size the frame declares (bounded by the cap), not the cap
        let want = match zstd::zstd_safe::get_frame_content_size(compressed) {
            Ok(Some(n)) if n > self.cap as u64 => {
                return Err(format!(
                    "the frame declares {n} bytes, more than a chunk can be ({})",
                    self.cap
                ))
            }
            Ok(Some(n)) => n as usize,
            _ => self.cap,
        };
        let data = self
            .zstd
            .decompress(compressed, want)
            .map_err(|e| format!("not a valid zstd frame ({e})"))?;
        VerifiedChunk::verify(*id, data).map_err(|(m, _)| format!("content hashes to {}", m.actual))
    }
}

/// Chunks and manifests from a bootcast server over HTTP (`/chunks/batch`,
/// `/api/v1/images/{name}/{version}/manifest`); no token needed.
///
/// It uses reqwest's blocking client, like export's worker threads: call it from plain
/// threads (or `spawn_blocking`), not from inside an async task.
///
/// A site relay makes one per upstream ([`HttpSource::with_options`]): its requests carry the
/// relay's headers, and every byte of a batch body is read through its [`Throttle`] (the
/// relay's one token bucket), so the cap holds for all of its connections together.
pub struct HttpSource {
    base: String,
    client: reqwest::blocking::Client,
    /// Attempts per request on connection errors and 5xx answers (waits: [`SEND_BACKOFF`]).
    attempts: u32,
    throttle: Option<Arc<dyn Throttle>>,
}

/// The waits between attempts of one request: 250 ms doubling.
const SEND_BACKOFF: Backoff = Backoff::new(Duration::from_millis(250), Duration::MAX);

/// Paces the reading of batch bodies: called with the size of every read, before the next.
pub trait Throttle: Send + Sync {
    /// `n` bytes were just read; blocks as long as the cap requires.
    fn take(&self, n: u64);
}

/// A body read in steps of at most 16 KiB, each paid to the throttle.
struct Throttled<'t, R> {
    inner: R,
    throttle: Option<&'t dyn Throttle>,
}

impl<R: Read> Read for Throttled<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let Some(t) = self.throttle else {
            return self.inner.read(buf);
        };
        let cap = buf.len().min(16 << 10);
        let n = self.inner.read(&mut buf[..cap])?;
        t.take(n as u64);
        Ok(n)
    }
}

/// Largest frame accepted from a server (a chunk is at most a few hundred KiB compressed).
const MAX_FRAME: u32 = 16 << 20;

impl HttpSource {
    /// A source for the server at `base_url` (e.g. `http://10.0.0.5:8080`; an `https://`
    /// server's certificate is checked against the public CAs). Connections are kept alive
    /// between batches.
    pub fn new(base_url: &str) -> Result<HttpSource> {
        HttpSource::with_tls(base_url, &crate::tls::TlsClient::Roots)
    }

    /// [`HttpSource::new`] with an `https://` server's certificate checked as `tls` says
    /// (`image export --from --fingerprint`).
    pub fn with_tls(base_url: &str, tls: &crate::tls::TlsClient) -> Result<HttpSource> {
        HttpSource::with_credential(base_url, tls, &[])
    }

    /// [`HttpSource::with_tls`] whose requests all carry `headers` (a credential: images are
    /// private).
    pub fn with_credential(
        base_url: &str,
        tls: &crate::tls::TlsClient,
        headers: &[(&'static str, String)],
    ) -> Result<HttpSource> {
        let config = crate::tls::client_config(tls, crate::tls::Naming::EXPORT).map_err(|e| {
            StoreError::Fetch {
                url: base_url.to_string(),
                reason: e.to_string(),
            }
        })?;
        HttpSource::with_options(base_url, config, headers, None)
    }

    /// A source whose connections use the TLS configuration `tls` (for `https://`), whose
    /// requests all carry `headers`, and whose batch bodies are read through `throttle`.
    pub fn with_options(
        base_url: &str,
        tls: rustls::ClientConfig,
        headers: &[(&'static str, String)],
        throttle: Option<Arc<dyn Throttle>>,
    ) -> Result<HttpSource> {
        let base = base_url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(StoreError::Fetch {
                url: base,
                reason: "not an http:// or https:// URL; give the server as https://HOST:8443 or http://HOST:8080".into(),
            });
        }
        let bad = |reason: String| StoreError::Fetch {
            url: base.clone(),
            reason,
        };
        let mut defaults = reqwest::header::HeaderMap::new();
        for (name, value) in headers {
            let v = reqwest::header::HeaderValue::from_str(value)
                .map_err(|_| bad(format!("header {name}: {value:?} is not a valid value")))?;
            defaults.insert(*name, v);
        }
        let client = reqwest::blocking::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(300))
            .pool_idle_timeout(Duration::from_secs(90))
            .default_headers(defaults)
            .build()
            .map_err(|e| bad(format!("cannot make an HTTP client: {e}")))?;
        Ok(HttpSource {
            base,
            client,
            attempts: 4,
            throttle,
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The HTTP client (keep-alive connections shared with [`send`](Self::send)).
    pub(crate) fn client(&self) -> &reqwest::blocking::Client {
        &self.client
    }

    /// Sends a request (built anew per attempt), retrying connection errors and 5xx answers
    /// with backoff; a 4xx is returned at once with the server's message.
    pub(crate) fn send(
        &self,
        url: &str,
        build: impl Fn() -> reqwest::blocking::RequestBuilder,
    ) -> Result<reqwest::blocking::Response> {
        let message = |r: reqwest::blocking::Response| {
            let status = r.status();
            let body = r.text().unwrap_or_default();
            let msg = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or(body);
            if msg.is_empty() {
                format!("server answered {status}")
            } else {
                format!("server answered {status}: {msg}")
            }
        };
        // Err((worth another attempt, why))
        let (res, _) = SEND_BACKOFF.tries(self.attempts).run(
            |_| match build().send() {
                Ok(r) if r.status().is_success() => Ok(r),
                // e.g. a relay's 503 for a version it does not hold yet: say why
                Ok(r) if r.status().is_server_error() => Err((true, message(r))),
                Ok(r) => Err((false, message(r))),
                // a certificate refused will be refused again: say why, at once
                Err(e) => match crate::tls::explain(&e) {
                    Some(why) => Err((false, why)),
                    None => Err((true, error_chain(&e))),
                },
            },
            |(again, _), _| *again,
        );
        match res {
            Ok(r) => Ok(r),
            Err((false, reason)) => Err(StoreError::Fetch {
                url: url.to_string(),
                reason,
            }),
            Err((true, last)) => Err(StoreError::Unreachable {
                url: url.to_string(),
                reason: format!(
                    "{last} (after {} attempts; check that `bootcast serve` runs there and is reachable)",
                    self.attempts
                ),
            }),
        }
    }

    /// The manifest of `NAME[@VERSION]` (version: full id, unique prefix or `latest`; none =
    /// latest), decoded and checked, with its version id.
    pub fn manifest(&self, spec: &str) -> Result<(Manifest, VersionId)> {
        self.manifest_signed(spec).map(|(m, id, _)| (m, id))
    }

    /// [`HttpSource::manifest`], with the central server's signature of the version as it
    /// came (`x-bootcast-signature`, see [`crate::sign`]), for the caller to verify.
    pub fn manifest_signed(&self, spec: &str) -> Result<(Manifest, VersionId, Option<String>)> {
        let (name, version) = super::catalog::split_spec(spec);
        super::catalog::validate_name(name)?;
        let version = version.unwrap_or("latest");
        if !(version == "latest" || version.chars().all(|c| c.is_ascii_hexdigit())) {
            return Err(StoreError::UnknownVersion {
                name: name.to_string(),
                version: version.to_string(),
            });
        }
        let url = format!("{}/api/v1/images/{name}/{version}/manifest", self.base);
        let resp = self.send(&url, || self.client.get(&url))?;
        let signature = resp
            .headers()
            .get(crate::sign::SIGNATURE_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = resp.bytes().map_err(|e| StoreError::Fetch {
            url: url.clone(),
            reason: error_chain(&e),
        })?;
        let (manifest, id) = Manifest::decode(&bytes).map_err(|cause| StoreError::Fetch {
            url: url.clone(),
            reason: format!("the manifest served is damaged: {cause}"),
        })?;
        if version != "latest" && !id.to_hex().starts_with(&version.to_ascii_lowercase()) {
            return Err(StoreError::Fetch {
                url,
                reason: format!("the server sent version {id}, not {version}"),
            });
        }
        Ok((manifest, id, signature))
    }
}

/// An error with its causes, on one line (a cause whose text is already there once is not
/// repeated).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !s.contains(&text) {
            s += &format!(": {text}");
        }
        cause = c.source();
    }
    s
}

impl HttpSource {
    /// Fetches `ids` in batches and hands each frame (unverified) to `on_frame` as soon as it
    /// is read, in order; `on_frame` may stop the transfer after any frame
    /// (`ControlFlow::Break`: the connection is dropped, nothing more is read). Returns how
    /// many frames were handed over. A connection lost mid-body is asked again for the rest,
    /// a bounded number of times; a chunk the server lacks ends it with
    /// [`StoreError::RemoteChunkMissing`] after the frames before it.
    pub fn fetch_each(
        &self,
        ids: &[ChunkId],
        on_frame: &mut dyn FnMut(ChunkId, Vec<u8>) -> ControlFlow<()>,
    ) -> Result<usize> {
        let url = format!("{}/chunks/batch", self.base);
        let mut done = 0;
        let mut failures = 0;
        while done < ids.len() {
            let rest = &ids[done..];
            let n = rest.len().min(BATCH_MAX_IDS);
            let body: Vec<u8> = rest[..n].iter().flat_map(|id| id.0).collect();
            let resp = self.send(&url, || {
                self.client
                    .post(&url)
                    .header("content-type", "application/octet-stream")
                    .body(body.clone())
            })?;
            let reader = Throttled {
                inner: resp,
                throttle: self.throttle.as_deref(),
            };
            let before = done;
            let mut stopped = false;
            let r = read_frames(reader, &rest[..n], &mut |id, data| {
                done += 1;
                let flow = on_frame(id, data);
                stopped = flow.is_break();
                flow
            });
            if stopped {
                return Ok(done);
            }
            match r {
                Ok(()) => {}
                Err(FrameError::Missing(id)) => {
                    return Err(StoreError::RemoteChunkMissing {
                        id,
                        url: format!("{}/chunks/{id}", self.base),
                    })
                }
                Err(FrameError::Protocol(reason)) => {
                    return Err(StoreError::Fetch { url, reason });
                }
                Err(FrameError::Io(e)) => {
                    failures += if done > before { 0 } else { 1 };
                    if failures >= self.attempts {
                        return Err(StoreError::Unreachable {
                            url,
                            reason: format!("reading the response: {e}"),
                        });
                    }
                }
            }
        }
        Ok(done)
    }
}

impl ChunkSource for HttpSource {
    fn fetch(&self, ids: &[ChunkId]) -> Result<Vec<(ChunkId, Vec<u8>)>> {
        let mut out: Vec<(ChunkId, Vec<u8>)> = Vec::with_capacity(ids.len());
        self.fetch_each(ids, &mut |id, data| {
            out.push((id, data));
            ControlFlow::Continue(())
        })?;
        Ok(out)
    }

    /// Larger batches than the local store: each worker has one request in flight, so
    /// throughput per worker is about one batch per round trip.
    fn batch_size(&self) -> (u64, usize) {
        (4 << 20, 256)
    }

    fn corrupt(&self, id: ChunkId, reason: String) -> StoreError {
        StoreError::RemoteChunkCorrupt {
            id,
            url: format!("{}/chunks/{id}", self.base),
            reason,
        }
    }
}

enum FrameError {
    Missing(ChunkId),
    Protocol(String),
    Io(std::io::Error),
}

/// Reads one batch response, checking each frame names the id asked for in order, and hands
/// each frame to `on_frame` (which may stop the reading).
fn read_frames(
    mut body: impl Read,
    ids: &[ChunkId],
    on_frame: &mut dyn FnMut(ChunkId, Vec<u8>) -> ControlFlow<()>,
) -> std::result::Result<(), FrameError> {
    for want in ids {
        let mut head = [0u8; 36];
        body.read_exact(&mut head).map_err(FrameError::Io)?;
        let got = ChunkId(head[..32].try_into().unwrap());
        if got != *want {
            return Err(FrameError::Protocol(format!(
                "frame for chunk {got} where {want} was expected (not a bootcast server?)"
            )));
        }
        let len = u32::from_be_bytes(head[32..].try_into().unwrap());
        if len == MISSING {
            return Err(FrameError::Missing(got));
        }
        if len > MAX_FRAME {
            return Err(FrameError::Protocol(format!(
                "chunk {got} is {len} bytes compressed, more than any chunk can be"
            )));
        }
        let mut data = vec![0u8; len as usize];
        body.read_exact(&mut data).map_err(FrameError::Io)?;
        if on_frame(got, data).is_break() {
            return Ok(());
        }
    }
    let mut extra = [0u8; 1];
    match body.read(&mut extra) {
        Ok(0) => Ok(()),
        Ok(_) => Err(FrameError::Protocol(
            "bytes after the last frame of a batch".into(),
        )),
        Err(e) => Err(FrameError::Io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(id: ChunkId, data: Option<&[u8]>) -> Vec<u8> {
        let mut f = id.0.to_vec();
        match data {
            Some(d) => {
                f.extend((d.len() as u32).to_be_bytes());
                f.extend(d);
            }
            None => f.extend(MISSING.to_be_bytes()),
        }
        f
    }

    type Frames = Vec<(ChunkId, Vec<u8>)>;

    /// Reads a batch body, collecting its frames.
    fn collect(body: &[u8], ids: &[ChunkId]) -> (std::result::Result<(), FrameError>, Frames) {
        let mut out = Vec::new();
        let r = read_frames(body, ids, &mut |id, data| {
            out.push((id, data));
            ControlFlow::Continue(())
        });
        (r, out)
    }

    #[test]
    fn frames_are_read_in_order_and_checked() {
        let (a, b) = (ChunkId::of(b"a"), ChunkId::of(b"b"));
        let mut body = frame(a, Some(b"xx"));
        body.extend(frame(b, Some(b"")));
        let (r, out) = collect(&body, &[a, b]);
        assert!(r.is_ok());
        assert_eq!(out, vec![(a, b"xx".to_vec()), (b, vec![])]);

        assert!(matches!(
            collect(&body, &[b, a]).0,
            Err(FrameError::Protocol(_))
        ));
        let missing = frame(a, None);
        assert!(matches!(
            collect(&missing, &[a]).0,
            Err(FrameError::Missing(id)) if id == a
        ));
        // truncated body: an I/O error (retried by the caller), frames before it kept
        let (r, out) = collect(&body[..body.len() - 30], &[a, b]);
        assert!(matches!(r, Err(FrameError::Io(_))));
        assert_eq!(out.len(), 1);
        let mut extra = frame(a, Some(b"x"));
        extra.push(0);
        assert!(matches!(
            collect(&extra, &[a]).0,
            Err(FrameError::Protocol(_))
        ));
        // the callback stops the reading after a frame
        let mut seen = 0;
        let r = read_frames(&body[..], &[a, b], &mut |_, _| {
            seen += 1;
            ControlFlow::Break(())
        });
        assert!(r.is_ok());
        assert_eq!(seen, 1);
    }

    #[test]
    fn decoder_refuses_what_does_not_hash() {
        let plain = b"some chunk bytes".to_vec();
        let id = ChunkId::of(&plain);
        let frame = zstd::bulk::compress(&plain, 1).unwrap();
        let mut d = Decoder::new(1 << 20);
        assert_eq!(d.decode(&id, &frame).unwrap().bytes(), &plain[..]);
        let other = ChunkId::of(b"other");
        assert!(d.decode(&other, &frame).unwrap_err().contains("hashes to"));
        assert!(d.decode(&id, b"junk").unwrap_err().contains("zstd"));
        let big = zstd::bulk::compress(&[0u8; 2 << 20], 1).unwrap();
        assert!(d.decode(&id, &big).unwrap_err().contains("declares"));
    }

    /// A one-shot HTTP responder on 127.0.0.1: answers the n-th connection with `answers[n]`
    /// (status line, body), closing each; returns its URL and the count of requests read.
    fn responder(
        answers: Vec<(&'static str, Vec<u8>)>,
    ) -> (String, std::thread::JoinHandle<usize>) {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            let mut served = 0;
            for (status, body) in answers {
                let (mut conn, _) = listener.accept().unwrap();
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                    if line == "\r\n" || line.is_empty() {
                        break;
                    }
                }
                let mut req = vec![0u8; len];
                reader.read_exact(&mut req).unwrap();
                served += 1;
                let head = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                conn.write_all(head.as_bytes()).unwrap();
                conn.write_all(&body).unwrap();
            }
            served
        });
        (url, handle)
    }

    #[test]
    fn server_errors_are_retried_and_client_errors_are_not() {
        let id = ChunkId::of(b"plain");
        let (url, server) = responder(vec![
            ("503 Service Unavailable", b"busy".to_vec()),
            ("200 OK", frame(id, Some(b"zz"))),
        ]);
        let source = HttpSource::new(&url).unwrap();
        let got = source.fetch(&[id]).unwrap();
        assert_eq!(got, vec![(id, b"zz".to_vec())]);
        assert_eq!(server.join().unwrap(), 2, "the 503 was retried once");

        let (url, server) = responder(vec![(
            "413 Payload Too Large",
            br#"{"error": "at most 4096 ids"}"#.to_vec(),
        )]);
        let e = HttpSource::new(&url).unwrap().fetch(&[id]).unwrap_err();
        assert!(e.to_string().contains("at most 4096 ids"), "{e}");
        assert_eq!(server.join().unwrap(), 1, "a 4xx is not retried");

        let (url, server) = responder(vec![("200 OK", frame(id, None))]);
        let e = HttpSource::new(&url).unwrap().fetch(&[id]).unwrap_err();
        assert!(
            matches!(e, StoreError::RemoteChunkMissing { id: got, .. } if got == id),
            "{e}"
        );
        server.join().unwrap();
    }

    #[test]
    fn every_body_byte_goes_through_the_throttle() {
        struct Count(std::sync::atomic::AtomicU64);
        impl Throttle for Count {
            fn take(&self, n: u64) {
                self.0.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let (a, b) = (ChunkId::of(b"a"), ChunkId::of(b"b"));
        let mut body = frame(a, Some(&[1u8; 40_000]));
        body.extend(frame(b, Some(b"bb")));
        let len = body.len() as u64;
        let (url, server) = responder(vec![("200 OK", body)]);
        let count = Arc::new(Count(Default::default()));
        let source = HttpSource::with_options(
            &url,
            crate::tls::public_client_config(),
            &[("x-test", "1".into())],
            Some(count.clone() as Arc<dyn Throttle>),
        )
        .unwrap();
        let mut ids = Vec::new();
        let n = source
            .fetch_each(&[a, b], &mut |id, _| {
                ids.push(id);
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!((n, ids), (2, vec![a, b]));
        assert_eq!(count.0.load(std::sync::atomic::Ordering::Relaxed), len);
        server.join().unwrap();
    }
}

//! The agent's capture: read the local disk whole and make it a new version of an image on the
//! server, moving only the chunks the server lacks.
//!
//! The disk (see [`super::disk`]; any size) is mapped ([`crate::fsmap::map_disk`]: only what its
//! filesystems use is read) and read through the store's one ingest pipeline
//! ([`crate::store::ingest::ingest_disk_to`]) with the server's chunker parameters and zstd level
//! from the hello reply, so it is cut, hashed and compressed exactly as `bootcast image add` of
//! the same bytes on the server would: same chunks, same manifest, same version id. The
//! pipeline's sink is the server ([`RemoteSink`]): each worker batch of chunk ids (up to 256)
//! is one `capture/missing` question, the chunks missing go up compressed in uploads of at
//! most [`UPLOAD_BYTES`], and the manifest is committed last (wire format in
//! [`crate::proto::agent`]); the commit closes the task as done with its version.
//!
//! Progress (bytes read of the disk's size) goes to the server every 2 s. While the server is
//! unreachable the agent tries again (up to 10 min), reading the disk again: the server
//! answers "missing" from its store, so chunks already uploaded are not sent again. Any other
//! failure is reported as `failed` with its reason.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use super::task::{self, Failure, Reporter, RunError, TaskRef};
use crate::fsmap::{map_disk, DiskMap};
use crate::proto::agent::{
    push_frame, CaptureCommitted, CaptureMissing, CaptureMissingReply, CaptureUploaded, HEADER_MAC,
    HEADER_SESSION, HEADER_TASK, MISSING_MAX_IDS,
};
use crate::store::error::{Result, StoreError};
use crate::store::ingest::{ingest_disk_to, ChunkSink, IngestOptions, IngestReport};
use crate::store::source::HttpSource;
use crate::store::{ChunkId, ChunkerParams, Manifest, VersionId};

/// Largest upload request the agent sends (the server takes up to
/// [`crate::proto::agent::UPLOAD_MAX_BYTES`]).
pub const UPLOAD_BYTES: usize = 4 << 20;

/// What the server asked for, and who asks.
#[derive(Debug, Clone)]
pub struct Job {
    /// The task, and what proves it is this boot's (server, mac, session).
    pub task: TaskRef,
    pub image: String,
    /// The server store's chunker parameters and zstd level (from the hello reply).
    pub chunker: ChunkerParams,
    pub zstd_level: i32,
    /// `bootcast.disk=` from the kernel command line.
    pub disk: Option<PathBuf>,
    /// Capture every byte (`bootcast image raw NAME on`), not only what filesystems use.
    pub raw: bool,
}

/// Runs the capture; returns the ingest report (its `version` is the new version) or the
/// reason it failed (already reported as `failed` when the server could be reached). A
/// successful capture needs no `done`: its commit closed the task.
pub fn run(
    job: &Job,
    sys: &Path,
    proc: &Path,
    log: &mut dyn FnMut(&str),
) -> std::result::Result<IngestReport, RunError> {
    let client = task::client().map_err(RunError::Failed)?;
    let me = &job.task;
    let result =
        task::retry_while_unreachable(log, "not sending again what the server has", |log| {
            capture(job, me, sys, proc, &client, log)
        });
    task::report(&client, me, &result, false, log);
    result
}

/// A disk (block device or file) opened for reading, and its size.
fn open_disk(path: &Path) -> std::result::Result<(File, u64), String> {
    let mut f = File::open(path).map_err(|e| {
        format!(
            "cannot open the disk {} for reading: {e}; name the disk to capture with bootcast.disk=/dev/NAME",
            path.display()
        )
    })?;
    let size = f
        .seek(SeekFrom::End(0))
        .and_then(|n| f.seek(SeekFrom::Start(0)).map(|_| n))
        .map_err(|e| format!("cannot tell the size of {}: {e}", path.display()))?;
    Ok((f, size))
}

fn capture(
    job: &Job,
    me: &TaskRef,
    sys: &Path,
    proc: &Path,
    client: &reqwest::blocking::Client,
    log: &mut dyn FnMut(&str),
) -> std::result::Result<IngestReport, Failure> {
    let disk = super::disk::pick(job.disk.as_deref(), sys, proc, 0).map_err(Failure::Other)?;
    let (mut file, size) = open_disk(&disk).map_err(Failure::Other)?;
    log(&format!(
        "bootcast-agent: capturing {} ({size} bytes) as a new version of {}",
        disk.display(),
        job.image
    ));
    // the same mapper as `bootcast image add`, so the same disk gives the same version
    let map = if job.raw {
        DiskMap::raw(size, "the image is captured raw (bootcast image raw)")
    } else {
        map_disk(&mut file, size)
            .map_err(|e| Failure::Other(format!("reading {}: {e}", disk.display())))?
    };
    for p in &map.partitions {
        log(&format!(
            "BOOTCAST-AGENT-MAP part {} {} {} bytes: {}",
            p.number,
            p.fs,
            p.size,
            match (&p.used, &p.reason) {
                (Some(used), _) if p.mapped => format!("mapped, {used} bytes used"),
                (_, Some(why)) => format!("raw ({why})"),
                _ => "raw".into(),
            }
        ));
    }
    let sink = RemoteSink::new(job)?;
    task::check_open(client, me, size)?;
    let reporter = Reporter::start(client, me, size);
    let done = reporter.done.clone();
    let opts = IngestOptions {
        level: Some(job.zstd_level),
        threads: crate::store::ingest::default_threads().min(4),
        ..IngestOptions::default()
    };
    let label = disk.display().to_string();
    let result = ingest_disk_to(&sink, &job.image, file, &map, &label, &opts, &|n| {
        done.fetch_add(n, Ordering::Relaxed);
    });
    reporter.finish();
    result.map_err(|e| match Failure::from(e) {
        Failure::Unreachable(e) => Failure::Unreachable(e),
        Failure::Cancelled => Failure::Cancelled,
        // the capture endpoints refuse a closed task (409): was it cancelled?
        Failure::Other(_)
            if matches!(task::check_open(client, me, size), Err(Failure::Cancelled)) =>
        {
            Failure::Cancelled
        }
        Failure::Other(e) => Failure::Other(format!(
            "capturing {} into {}: {e}",
            disk.display(),
            job.image
        )),
    })
}

/// The server as an ingest's [`ChunkSink`]: the capture endpoints, with the task's headers.
/// Requests are retried on connection errors and 5xx answers (then the error is
/// [`StoreError::Unreachable`]); a 4xx is an error with the server's message.
pub struct RemoteSink {
    http: HttpSource,
    mac: String,
    session: String,
    task: String,
    params: ChunkerParams,
    level: i32,
}

impl RemoteSink {
    pub fn new(job: &Job) -> Result<RemoteSink> {
        Ok(RemoteSink {
            http: job.task.source()?,
            mac: job.task.mac.clone(),
            session: job.task.session.clone(),
            task: job.task.task.to_string(),
            params: job.chunker,
            level: job.zstd_level,
        })
    }

    fn url(&self, what: &str) -> String {
        format!("{}/api/v1/agent/capture/{what}", self.http.base_url())
    }

    /// POSTs `body` to `capture/WHAT` and decodes the JSON answer.
    fn post<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<T> {
        let url = self.url(what);
        let resp = self.http.send(&url, || {
            self.http
                .client()
                .post(&url)
                .header(HEADER_MAC, &self.mac)
                .header(HEADER_SESSION, &self.session)
                .header(HEADER_TASK, &self.task)
                .header("content-type", content_type)
                .body(body.clone())
        })?;
        resp.json::<T>().map_err(|e| StoreError::Fetch {
            url,
            reason: format!("the answer is not what a bootcast server sends: {e}"),
        })
    }
}

impl ChunkSink for RemoteSink {
    type Written = ();

    fn params(&self) -> ChunkerParams {
        self.params
    }

    fn default_level(&self) -> i32 {
        self.level
    }

    /// 8 MiB / 256 pieces: one `missing` question of up to 256 ids and an upload or two per
    /// worker batch.
    fn batch_size(&self) -> (usize, usize) {
        (8 << 20, 256)
    }

    fn lookup(&self, ids: &[ChunkId]) -> Result<Vec<Option<u32>>> {
        let mut sizes = Vec::with_capacity(ids.len());
        for part in ids.chunks(MISSING_MAX_IDS) {
            let body = serde_json::to_vec(&CaptureMissing {
                ids: part.iter().map(ChunkId::to_hex).collect(),
            })
            .expect("serialises");
            let reply: CaptureMissingReply = self.post("missing", "application/json", body)?;
            if reply.sizes.len() != part.len() {
                return Err(StoreError::Fetch {
                    url: self.url("missing"),
                    reason: format!(
                        "the server answered about {} chunks where {} were asked",
                        reply.sizes.len(),
                        part.len()
                    ),
                });
            }
            sizes.extend(reply.sizes);
        }
        Ok(sizes)
    }

    fn put(&self, chunks: &[(ChunkId, Vec<u8>)]) -> Result<Vec<()>> {
        let mut rest = chunks;
        while !rest.is_empty() {
            // at least one chunk per request, then as many as fit in UPLOAD_BYTES
            let mut body = Vec::new();
            let mut n = 0;
            for (id, frame) in rest {
                if n > 0 && body.len() + 36 + frame.len() > UPLOAD_BYTES {
                    break;
                }
                push_frame(&mut body, id, frame);
                n += 1;
            }
            let reply: CaptureUploaded = self.post("chunks", "application/octet-stream", body)?;
            if reply.chunks != n {
                return Err(StoreError::Fetch {
                    url: self.url("chunks"),
                    reason: format!(
                        "the server took {} chunks of an upload of {n}",
                        reply.chunks
                    ),
                });
            }
            rest = &rest[n..];
        }
        Ok(vec![(); chunks.len()])
    }

    /// Uploads are durable on the server when answered: nothing left to publish.
    fn publish(&self, batch: &mut Vec<(ChunkId, ())>) -> Result<()> {
        batch.clear();
        Ok(())
    }

    fn commit(&self, manifest: &Manifest) -> Result<VersionId> {
        let reply: CaptureCommitted =
            self.post("commit", "application/octet-stream", manifest.encode())?;
        let ours = manifest.version_id();
        match reply.version.parse::<VersionId>() {
            Ok(v) if v == ours => Ok(v),
            _ => Err(StoreError::Fetch {
                url: self.url("commit"),
                reason: format!(
                    "the server committed version {:?}, not {ours}",
                    reply.version
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{hosts, tasks, Db, TaskKind, TaskState};
    use crate::http::{self, chunks::ChunkService, AppState};
    use crate::store::ingest::{ingest, ingest_to};
    use crate::store::{Store, StoreConfig};
    use crate::testkit::random_bytes;
    use std::sync::Arc;

    const MAC: &str = "52:54:00:77:00:03";
    /// The real router on 127.0.0.1 in a thread of its own, over `data`, with `MAC` booted for
    /// capture task into image `m`: (server URL, task id, database, the boot's session).
    fn server(data: &Path) -> (String, i64, Db, String) {
        let db = Db::open_in_memory().unwrap();
        let mac = MAC.parse().unwrap();
        let task = {
            let mut c = db.lock();
            hosts::record_script_boot(&mut c, mac, &Default::default(), 1).unwrap();
            let new = tasks::NewTask {
                image: Some("m"),
                ..Default::default()
            };
            tasks::create_with(&c, mac, TaskKind::Capture, &new, 1)
                .unwrap()
                .id
        };
        // this boot's credential, exchanged as the hello does
        let session = {
            use crate::db::bootcred;
            let c = db.lock();
            let (ip, now) = ("127.0.0.1".parse().unwrap(), crate::time::now_unix());
            bootcred::issue(
                &c,
                &bootcred::Issue {
                    mac,
                    credential: "c0ffee",
                    salt: "5a17",
                    ip,
                    task: Some(task),
                    now,
                    lifetime_secs: 600,
                },
            )
            .unwrap();
            bootcred::exchange(&c, mac, Some("c0ffee"), ip, now)
                .unwrap()
                .unwrap()
        };
        let state = AppState::from(crate::http::Shared {
            db: db.clone(),
            data: data.to_path_buf(),
            advertise: None,
            http_port: 0,
            after_register: crate::config::AfterRegister::Reboot,
            chunks: Arc::new(ChunkService::new(data.to_path_buf())),
            multicast: crate::multicast::sessions::Sessions::new(),
            hooks: crate::hooks::Hooks::new(Vec::new(), db.clone()),
            glpi_url: None,
            boot: Default::default(),
            capture_max_bytes: crate::config::DEFAULT_CAPTURE_MAX_BYTES,
            connections: Default::default(),
            signer: Some(Arc::new(crate::sign::SigningKey::ephemeral().unwrap())),
            clock: Arc::new(crate::push::clock::SystemClock),
            ldap: None,
            orders: Default::default(),
        });
        let app = http::router(state, "token".into());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(
                    l,
                    app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
                )
                .await
                .unwrap();
            });
        });
        (url, task, db, session)
    }

    fn job(url: &str, task: i64, session: &str) -> Job {
        Job {
            task: TaskRef {
                server: url.to_string(),
                mac: MAC.into(),
                session: session.into(),
                task,
            },
            image: "m".into(),
            chunker: ChunkerParams::default(),
            zstd_level: 1,
            disk: None,
            raw: false,
        }
    }

    #[test]
    fn the_remote_sink_makes_the_version_a_local_ingest_makes() {
        let mut data = random_bytes(5 << 20, 51);
        data.extend(vec![0u8; 1 << 20]);
        data.extend(random_bytes(300_000, 52));

        let local = tempfile::tempdir().unwrap();
        let store = Store::open_or_create(local.path(), StoreConfig::default(), false).unwrap();
        let opts = IngestOptions {
            threads: 2,
            ..IngestOptions::default()
        };
        let want = ingest(&store, "m", &data[..], "data", &opts, &|_| {}).unwrap();

        let remote = tempfile::tempdir().unwrap();
        let (url, task, db, session) = server(remote.path());
        let sink = RemoteSink::new(&job(&url, task, &session)).unwrap();
        let got = ingest_to(&sink, "m", &data[..], "data", &opts, &|_| {}).unwrap();
        assert_eq!(got.version, want.version);
        assert_eq!(
            (got.chunks, got.new_chunks, got.new_bytes),
            (want.chunks, want.new_chunks, want.new_bytes)
        );
        // the server's version: same extents and sizes as the local one, listed in its store
        // (held for approval: named by its id, it is not `latest` yet)
        let remote_store = Store::open(remote.path()).unwrap();
        assert!(
            remote_store.resolve("m").is_err(),
            "a capture is not latest"
        );
        let on_server = remote_store
            .resolve(&format!("m@{}", want.version))
            .unwrap();
        assert_eq!(on_server.id, want.version);
        assert_eq!(
            on_server.manifest.extents,
            store.resolve("m").unwrap().manifest.extents
        );
        let t = tasks::get(&db.lock(), task).unwrap().unwrap();
        assert_eq!(t.state, TaskState::Done);
        assert_eq!(t.version, Some(want.version.to_hex()));

        // committing the same version again answers the same (a lost answer is retried)...
        let manifest = on_server.manifest.clone();
        assert_eq!(sink.commit(&manifest).unwrap(), want.version);
        // ...but the closed task takes nothing more
        let e = sink.lookup(&[ChunkId::of(b"x")]).unwrap_err();
        assert!(e.to_string().contains("already done"), "{e}");
    }

    #[test]
    fn the_remote_sink_sends_nothing_the_server_has() {
        let data = random_bytes(3 << 20, 53);
        let remote = tempfile::tempdir().unwrap();
        let (url, task, _db, session) = server(remote.path());
        // the server already has these bytes as another image
        let store = Store::open_or_create(remote.path(), StoreConfig::default(), false).unwrap();
        ingest(
            &store,
            "other",
            &data[..],
            "data",
            &IngestOptions::default(),
            &|_| {},
        )
        .unwrap();
        let sink = RemoteSink::new(&job(&url, task, &session)).unwrap();
        let got = ingest_to(
            &sink,
            "m",
            &data[..],
            "data",
            &IngestOptions::default(),
            &|_| {},
        )
        .unwrap();
        assert_eq!((got.new_chunks, got.new_bytes), (0, 0));
        assert!(got.stored_bytes > 0, "sizes come from the server's answer");
    }

    #[test]
    fn a_wrong_session_is_refused_and_not_retried() {
        let remote = tempfile::tempdir().unwrap();
        let (url, task, _db, _) = server(remote.path());
        let sink = RemoteSink::new(&job(&url, task, "wrong")).unwrap();
        let e = sink.lookup(&[ChunkId::of(b"x")]).unwrap_err();
        assert!(matches!(e, StoreError::Fetch { .. }), "{e}");
        assert!(e.to_string().contains("403"), "{e}");
    }
}

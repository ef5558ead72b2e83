//! What every task the agent runs shares: who it reports as, progress to the server at least
//! every 2 s, retries while the server is unreachable, and the final `done` / `failed`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::proto::agent::{TaskDone, TaskFailed, TaskProgress};
use crate::retry::Backoff;
use crate::store::error::StoreError;

/// The task the agent works on, and what proves it is this boot's (mac + session).
#[derive(Debug, Clone)]
pub struct TaskRef {
    /// Server base URL (`http://IP:PORT`).
    pub server: String,
    pub mac: String,
    pub session: String,
    pub task: i64,
}

impl TaskRef {
    /// `SERVER/api/v1/agent/PATH`.
    pub fn url(&self, path: &str) -> String {
        format!("{}/api/v1/agent/{path}", self.server.trim_end_matches('/'))
    }

    /// The headers that let this boot read manifests and chunks (images are private): its
    /// MAC and session.
    pub fn credential_headers(&self) -> Vec<(&'static str, String)> {
        use crate::proto::agent::{HEADER_MAC, HEADER_SESSION};
        vec![
            (HEADER_MAC, self.mac.clone()),
            (HEADER_SESSION, self.session.clone()),
        ]
    }

    /// The server's manifests and chunks as this boot may read them.
    pub fn source(&self) -> Result<crate::store::source::HttpSource, StoreError> {
        crate::store::source::HttpSource::with_credential(
            &self.server,
            &crate::tls::TlsClient::Roots,
            &self.credential_headers(),
        )
    }
}

/// How long the agent keeps trying while the server is unreachable.
pub const UNREACHABLE_FOR: Duration = Duration::from_secs(600);
/// The waits between those attempts: 1 s doubling, at most 10 s.
const UNREACHABLE_RETRY: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));

/// Why one attempt at a task failed.
pub enum Failure {
    /// The server could not be reached: worth another attempt.
    Unreachable(String),
    /// The task is closed on the server (cancelled or replaced): stop.
    Cancelled,
    Other(String),
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Failure {
        match e {
            StoreError::Unreachable { .. } => Failure::Unreachable(e.to_string()),
            StoreError::Cancelled => Failure::Cancelled,
            e => Failure::Other(e.to_string()),
        }
    }
}

/// Why a task did not finish.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    /// Staff closed the task (cancelled or replaced it); the server answered 409.
    #[error("the task was cancelled on the server; stopped, keeping what was written")]
    Cancelled,
    /// Reported to the server as the task's failure reason (when it could be reached).
    #[error("{0}")]
    Failed(String),
}

/// Before work starts (and after every interruption): is the task still open? A first
/// progress report of 0 bytes; the server answers 409 for a closed task.
pub fn check_open(
    client: &reqwest::blocking::Client,
    task: &TaskRef,
    total: u64,
) -> Result<(), Failure> {
    let p = TaskProgress {
        mac: task.mac.clone(),
        session: task.session.clone(),
        task: task.task,
        bytes_done: 0,
        bytes_total: total,
        rate: 0,
        eta: None,
    };
    match client.post(task.url("progress")).json(&p).send() {
        Ok(r) if r.status() == reqwest::StatusCode::CONFLICT => Err(Failure::Cancelled),
        Ok(_) => Ok(()),
        Err(e) => Err(Failure::Unreachable(format!(
            "{}: {e}",
            task.url("progress")
        ))),
    }
}

/// The blocking HTTP client the task reports go through.
pub fn client() -> Result<reqwest::blocking::Client, String> {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(15))
        .no_proxy()
        .build()
        .map_err(|e| format!("HTTP client: {e}"))
}

/// Runs `attempt` until it succeeds, fails for a reason other than an unreachable server, or
/// the server stayed unreachable for [`UNREACHABLE_FOR`]; waits 1 s doubling to 10 s between
/// attempts. `keeping` says what a new attempt does not redo (for the log line).
pub fn retry_while_unreachable<T>(
    log: &mut dyn FnMut(&str),
    keeping: &str,
    mut attempt: impl FnMut(&mut dyn FnMut(&str)) -> Result<T, Failure>,
) -> Result<T, RunError> {
    let give_up = Instant::now() + UNREACHABLE_FOR;
    // both the attempts and the retry's log line write to `log`
    let log = std::cell::RefCell::new(log);
    let (result, _) = UNREACHABLE_RETRY.run(
        |_| attempt(&mut **log.borrow_mut()),
        |e, f| match (e, f.next) {
            (Failure::Unreachable(e), Some(wait)) if Instant::now() < give_up => {
                (log.borrow_mut())(&format!(
                    "bootcast-agent: server unreachable ({e}); trying again in {} s, {keeping}",
                    wait.as_secs()
                ));
                true
            }
            _ => false,
        },
    );
    let log = log.into_inner();
    match result {
        Ok(r) => Ok(r),
        Err(Failure::Unreachable(e)) | Err(Failure::Other(e)) => Err(RunError::Failed(e)),
        Err(Failure::Cancelled) => {
            log("bootcast-agent: the server says the task is closed (cancelled); stopping");
            Err(RunError::Cancelled)
        }
    }
}

/// Posts [`TaskProgress`] every 2 s from its own thread until [`finish`](Self::finish)ed.
/// When the server answers 409 (the task was closed), it sets [`cancel`](Self::cancel) and
/// stops reporting.
pub struct Reporter {
    /// Bytes done so far: add to it as work gets done.
    pub done: Arc<AtomicU64>,
    /// Set once the server said the task is closed: the work should stop.
    pub cancel: Arc<AtomicBool>,
    finished: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Reporter {
    pub fn start(client: &reqwest::blocking::Client, task: &TaskRef, total: u64) -> Reporter {
        let done = Arc::new(AtomicU64::new(0));
        let finished = Arc::new(AtomicBool::new(false));
        let cancel = Arc::new(AtomicBool::new(false));
        let thread = {
            let (done, finished, client) = (done.clone(), finished.clone(), client.clone());
            let cancel = cancel.clone();
            let url = task.url("progress");
            let (mac, session, task) = (task.mac.clone(), task.session.clone(), task.task);
            std::thread::spawn(move || {
                let start = Instant::now();
                while !finished.load(Ordering::Relaxed) {
                    let d = done.load(Ordering::Relaxed);
                    let secs = start.elapsed().as_secs_f64().max(0.001);
                    let rate = (d as f64 / secs) as u64;
                    let eta = (rate > 0).then(|| total.saturating_sub(d) / rate);
                    let sent = client
                        .post(&url)
                        .json(&TaskProgress {
                            mac: mac.clone(),
                            session: session.clone(),
                            task,
                            bytes_done: d.min(total),
                            bytes_total: total,
                            rate,
                            eta,
                        })
                        .send();
                    if sent.is_ok_and(|r| r.status() == reqwest::StatusCode::CONFLICT) {
                        // (this thread has no console handle; stdout is /dev/console)
                        println!(
                            "bootcast-agent: the server closed task {task} (cancelled); stopping after the work in flight"
                        );
                        cancel.store(true, Ordering::Relaxed);
                        break;
                    }
                    for _ in 0..20 {
                        if finished.load(Ordering::Relaxed) {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            })
        };
        Reporter {
            done,
            cancel,
            finished,
            thread: Some(thread),
        }
    }

    /// Stops the reports and waits for the thread.
    pub fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.finished.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Posts `done` (`result` Ok, when `done` is set) or `failed` with the reason; nothing for a
/// cancelled task (the server closed it). A report that cannot be sent is logged.
pub fn report<T>(
    client: &reqwest::blocking::Client,
    task: &TaskRef,
    result: &Result<T, RunError>,
    done: bool,
    log: &mut dyn FnMut(&str),
) {
    let post = |path: &str, body: serde_json::Value| {
        client
            .post(task.url(path))
            .json(&body)
            .send()
            .map_err(|e| e.to_string())
            .and_then(|r| {
                if r.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("HTTP {}", r.status()))
                }
            })
    };
    let sent = match result {
        Ok(_) if !done => return,
        Err(RunError::Cancelled) => return,
        Ok(_) => post(
            "done",
            serde_json::to_value(TaskDone {
                mac: task.mac.clone(),
                session: task.session.clone(),
                task: task.task,
            })
            .expect("serialises"),
        ),
        Err(RunError::Failed(reason)) => post(
            "failed",
            serde_json::to_value(TaskFailed {
                mac: task.mac.clone(),
                session: task.session.clone(),
                task: task.task,
                reason: reason.chars().take(2000).collect(),
            })
            .expect("serialises"),
        ),
    };
    if let Err(e) = sent {
        log(&format!(
            "bootcast-agent: could not report the result to the server: {e}"
        ));
    }
}

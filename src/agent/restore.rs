//! The agent's reimage: choose the local disk, write the image from the server through the
//! store's one verified write path ([`crate::store::export::export`] with an
//! [`HttpSource`]), report progress at least every 2 s, then done or failed.
//!
//! The disk is its own seed: every chunk already at its offset is read, hashed and kept, so a
//! reimage with a newer version of the same master moves only what changed, and a restore
//! that was interrupted (power, network, server) resumes without rewriting verified chunks.
//!
//! Disk policy: `bootcast.disk=/dev/NAME` on the kernel command line, else the first disk (by
//! name) in `/sys/block` that is not removable, read-only, a loop/ram/zram/optical device or
//! mounted, and is at least as large as the image. A smaller disk is refused.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::proto::{TaskDone, TaskFailed, TaskProgress};
use crate::store::error::StoreError;
use crate::store::export::{export, ExportOptions, ExportReport};
use crate::store::source::{ChunkSource, HttpSource};

/// What the server asked for, and who asks.
#[derive(Debug, Clone)]
pub struct Job {
    pub server: String,
    pub mac: String,
    pub nonce: String,
    pub task: i64,
    pub image: String,
    pub version: String,
    /// `bootcast.disk=` from the kernel command line.
    pub disk: Option<PathBuf>,
    /// Post-deploy: the name to write into the restored system ([`super::postdeploy`]).
    pub hostname: Option<String>,
}

/// Device names that are never an imaging target.
fn skipped(name: &str) -> bool {
    ["loop", "ram", "zram", "sr", "fd", "dm-", "md", "nbd"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// The target disk for an image of `need` bytes (see the module doc for the policy).
pub fn choose_disk(sys: &Path, proc: &Path, need: u64) -> Result<PathBuf, String> {
    let mounts = std::fs::read_to_string(proc.join("mounts")).unwrap_or_default();
    let mut names: Vec<String> = std::fs::read_dir(sys.join("block"))
        .map_err(|e| format!("cannot list {}: {e}", sys.join("block").display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !skipped(n))
        .collect();
    names.sort();
    let mut seen = Vec::new();
    for name in names {
        let attr = |f: &str| {
            std::fs::read_to_string(sys.join("block").join(&name).join(f))
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        let bytes = attr("size").parse::<u64>().unwrap_or(0) * 512;
        let why = if attr("removable") == "1" {
            Some("removable")
        } else if attr("ro") == "1" {
            Some("read-only")
        } else if mounts
            .lines()
            .any(|l| l.starts_with(&format!("/dev/{name}")))
        {
            Some("mounted")
        } else if bytes < need {
            Some("too small")
        } else {
            None
        };
        match why {
            None => return Ok(PathBuf::from("/dev").join(&name)),
            Some(w) => seen.push(format!("{name} ({bytes} bytes, {w})")),
        }
    }
    Err(format!(
        "no disk can take this image ({need} bytes): {}",
        if seen.is_empty() {
            "no disks found (is the disk driver in the boot environment?)".to_string()
        } else {
            seen.join(", ")
        }
    ))
}

/// Why a reimage did not finish.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    /// Staff closed the task (cancelled or replaced it); the server answered 409.
    #[error("the task was cancelled on the server; stopped, keeping what was written")]
    Cancelled,
    /// Reported to the server as the task's failure reason (when it could be reached).
    #[error("{0}")]
    Failed(String),
}

/// Runs the reimage; reports to the server; returns the export report or why it stopped (a
/// failure is reported as `failed` when the server can be reached; a cancelled task is left
/// as the server has it).
pub fn run(
    job: &Job,
    sys: &Path,
    proc: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<ExportReport, RunError> {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(15))
        .no_proxy()
        .build()
        .map_err(|e| RunError::Failed(format!("HTTP client: {e}")))?;
    // While the server is unreachable (restarting, network down), try again: the disk is its
    // own seed, so every chunk already written and verified is kept, not fetched again.
    let mut wait = Duration::from_secs(1);
    let give_up = Instant::now() + UNREACHABLE_FOR;
    let result = loop {
        match restore(job, sys, proc, &client, log) {
            Err(Failure::Unreachable(e)) if Instant::now() < give_up => {
                log(&format!(
                    "bootcast-agent: server unreachable ({e}); trying again in {} s, keeping what is written",
                    wait.as_secs()
                ));
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_secs(10));
            }
            Err(Failure::Unreachable(e)) | Err(Failure::Other(e)) => break Err(e),
            Err(Failure::Cancelled) => {
                log("bootcast-agent: the server says the task is closed (cancelled); stopping");
                return Err(RunError::Cancelled);
            }
            Ok(r) => break Ok(r),
        }
    };
    // Post-deploy, before the task is reported done: the restored system becomes this host's.
    let result = result.and_then(|(report, target)| {
        if let Some(name) = &job.hostname {
            match super::postdeploy::set_hostname(&target, sys, name, log) {
                Ok(super::postdeploy::HostnameOutcome::Skipped { why }) => log(&format!(
                    "bootcast-agent: post-deploy: host name {name} not written: {why}"
                )),
                Ok(super::postdeploy::HostnameOutcome::Written { .. }) => {}
                Err(e) => {
                    return Err(format!(
                        "the image was written and verified, but writing the host name {name} into it failed: {e}"
                    ))
                }
            }
        }
        Ok(report)
    });
    let post = |path: &str, body: serde_json::Value| {
        client
            .post(format!(
                "{}/api/v1/agent/{path}",
                job.server.trim_end_matches('/')
            ))
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
    let sent = match &result {
        Ok(_) => post(
            "done",
            serde_json::to_value(TaskDone {
                mac: job.mac.clone(),
                nonce: job.nonce.clone(),
                task: job.task,
            })
            .expect("serialises"),
        ),
        Err(reason) => post(
            "failed",
            serde_json::to_value(TaskFailed {
                mac: job.mac.clone(),
                nonce: job.nonce.clone(),
                task: job.task,
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
    result.map_err(RunError::Failed)
}

/// Posts a progress report; `Ok(false)` when the server answers 409 (the task is closed).
fn post_progress(
    client: &reqwest::blocking::Client,
    url: &str,
    p: &TaskProgress,
) -> Result<bool, reqwest::Error> {
    let r = client.post(url).json(p).send()?;
    Ok(r.status() != reqwest::StatusCode::CONFLICT)
}

/// How long the agent keeps trying while the server is unreachable.
const UNREACHABLE_FOR: Duration = Duration::from_secs(600);

enum Failure {
    /// The server could not be reached: worth another attempt.
    Unreachable(String),
    /// The task is closed on the server.
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

fn restore(
    job: &Job,
    sys: &Path,
    proc: &Path,
    client: &reqwest::blocking::Client,
    log: &mut dyn FnMut(&str),
) -> Result<(ExportReport, PathBuf), Failure> {
    let source = HttpSource::new(&job.server)?;
    let (manifest, version) = source.manifest(&format!("{}@{}", job.image, job.version))?;
    let target = match &job.disk {
        Some(d) => d.clone(),
        None => choose_disk(sys, proc, manifest.size).map_err(Failure::Other)?,
    };
    log(&format!(
        "bootcast-agent: writing {}@{} ({} bytes) to {}",
        job.image,
        &version.to_hex()[..12],
        manifest.size,
        target.display()
    ));
    let url = format!("{}/api/v1/agent/progress", job.server.trim_end_matches('/'));
    let first = TaskProgress {
        mac: job.mac.clone(),
        nonce: job.nonce.clone(),
        task: job.task,
        bytes_done: 0,
        bytes_total: manifest.size,
        rate: 0,
        eta: None,
    };
    // Before writing (and after every interruption): is the task still open?
    match post_progress(client, &url, &first) {
        Ok(true) => {}
        Ok(false) => return Err(Failure::Cancelled),
        Err(e) => return Err(Failure::Unreachable(format!("{url}: {e}"))),
    }
    let done = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(AtomicBool::new(false));
    let cancel = Arc::new(AtomicBool::new(false));
    // Progress to the server every 2 s, from its own thread; a 409 answer stops the export.
    let reporter = {
        let done = done.clone();
        let finished = finished.clone();
        let cancel = cancel.clone();
        let client = client.clone();
        let total = manifest.size;
        std::thread::spawn(move || {
            let start = Instant::now();
            while !finished.load(Ordering::Relaxed) {
                let d = done.load(Ordering::Relaxed);
                let secs = start.elapsed().as_secs_f64().max(0.001);
                let rate = (d as f64 / secs) as u64;
                let eta = (rate > 0).then(|| total.saturating_sub(d) / rate);
                let p = TaskProgress {
                    bytes_done: d.min(total),
                    rate,
                    eta,
                    ..first.clone()
                };
                if let Ok(false) = post_progress(&client, &url, &p) {
                    // (this thread has no console handle; stdout is /dev/console)
                    println!(
                        "bootcast-agent: the server closed task {} (cancelled); stopping after the chunks in flight",
                        p.task
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
    let opts = ExportOptions {
        seeds: vec![target.clone()],
        threads: 4,
        cancel: Some(cancel),
    };
    let src: &dyn ChunkSource = &source;
    let result = export(src, &manifest, &target, &opts, &|n| {
        done.fetch_add(n, Ordering::Relaxed);
    });
    finished.store(true, Ordering::Relaxed);
    let _ = reporter.join();
    result
        .map(|r| (r, target.clone()))
        .map_err(|e| match Failure::from(e) {
            Failure::Unreachable(e) => Failure::Unreachable(e),
            Failure::Cancelled => Failure::Cancelled,
            Failure::Other(e) => Failure::Other(format!(
                "writing {} to {}: {e}",
                job.image,
                target.display()
            )),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(sys: &Path, name: &str, sectors: u64, removable: bool, ro: bool) {
        let d = sys.join("block").join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("size"), format!("{sectors}\n")).unwrap();
        std::fs::write(d.join("removable"), if removable { "1\n" } else { "0\n" }).unwrap();
        std::fs::write(d.join("ro"), if ro { "1\n" } else { "0\n" }).unwrap();
    }

    #[test]
    fn disk_policy() {
        let t = tempfile::tempdir().unwrap();
        let (sys, proc) = (t.path().join("sys"), t.path().join("proc"));
        std::fs::create_dir_all(&proc).unwrap();
        disk(&sys, "loop0", 1 << 30, false, false);
        disk(&sys, "sda", 1 << 20, true, false); // USB stick
        disk(&sys, "sdb", 1 << 20, false, true);
        disk(&sys, "vda", 1000, false, false); // 512000 bytes: too small
        disk(&sys, "vdb", 1 << 20, false, false);
        disk(&sys, "vdc", 1 << 20, false, false);
        std::fs::write(proc.join("mounts"), "/dev/vdb1 /mnt ext4 rw 0 0\n").unwrap();
        assert_eq!(
            choose_disk(&sys, &proc, 1 << 20).unwrap(),
            PathBuf::from("/dev/vdc")
        );
        let e = choose_disk(&sys, &proc, 1 << 40).unwrap_err();
        for part in [
            "sda",
            "removable",
            "read-only",
            "vda",
            "too small",
            "vdb",
            "mounted",
        ] {
            assert!(e.contains(part), "{e}");
        }
        assert!(!e.contains("loop0"));
    }
}

//! The agent's reimage: choose the local disk, write the image from the server through the
//! store's one verified write path ([`crate::store::export::export`] with an
//! [`HttpSource`]), report progress at least every 2 s, then done or failed.
//!
//! The disk is its own seed: every chunk already at its offset is read, hashed and kept, so a
//! reimage with a newer version of the same master moves only what changed, and a restore
//! that was interrupted (power, network, server) resumes without rewriting verified chunks.
//!
//! The disk: see [`super::disk`] (the image must fit; a smaller disk is refused).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

pub use super::task::RunError;
use super::task::{self, Failure, Reporter, TaskRef};
use crate::multicast::receiver::{receive, ReceiveOptions};
use crate::multicast::{Endpoint, MulticastError};
use crate::proto::agent::MulticastJoin;
use crate::store::export::{export, ExportOptions, ExportReport};
use crate::store::source::ChunkSource;

/// What the server asked for, and who asks.
#[derive(Debug, Clone)]
pub struct Job {
    /// The task, and what proves it is this boot's (server, mac, session).
    pub task: TaskRef,
    pub image: String,
    pub version: String,
    /// `bootcast.disk=` from the kernel command line.
    pub disk: Option<PathBuf>,
    /// Post-deploy: the name to write into the restored system ([`super::postdeploy`]).
    pub hostname: Option<String>,
    /// Post-deploy: on a disk larger than the image, grow this partition ([`super::grow`]).
    pub grow: Option<u32>,
    /// Receive the chunks from this room multicast session (the rest over HTTP).
    pub multicast: Option<MulticastJoin>,
    /// The central server's keys (`bootcast.key=`): a manifest signed otherwise is refused.
    pub keys: Option<crate::sign::Keys>,
}

/// Runs the reimage and the post-deploy steps; reports to the server; returns the export
/// report or why it stopped (a failure is reported as `failed` when the server can be
/// reached; a cancelled task is left as the server has it).
pub fn run(
    job: &Job,
    sys: &Path,
    proc: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<ExportReport, RunError> {
    let client = task::client().map_err(RunError::Failed)?;
    let me = &job.task;
    // While the server is unreachable (restarting, network down), try again: the disk is its
    // own seed, so every chunk already written and verified is kept, not fetched again.
    let result = task::retry_while_unreachable(log, "keeping what is written", |log| {
        restore(job, me, sys, proc, &client, log)
    });
    // Post-deploy, before the task is reported done: the restored system becomes this host's.
    let result = result.and_then(|(report, target)| {
        // a GPT image on a larger disk: its backup table goes to the disk's end
        match std::fs::OpenOptions::new().read(true).write(true).open(&target) {
            Ok(f) => match crate::fsmap::table::move_backup_gpt_to_end(&f) {
                Ok(Some(lba)) => log(&format!(
                    "BOOTCAST-AGENT-GPT-BACKUP {lba} (the disk is larger than the image: the backup GPT now ends it)"
                )),
                Ok(None) => {}
                Err(e) => log(&format!(
                    "bootcast-agent: post-deploy: warning: the backup GPT was not moved to the disk's end: {e}"
                )),
            },
            Err(e) => log(&format!(
                "bootcast-agent: post-deploy: warning: {} not reopened: {e}",
                target.display()
            )),
        }
        if let Some(number) = job.grow {
            match super::grow::grow(&target, sys, number, log) {
                Ok(super::grow::GrowOutcome::Skipped { why }) => log(&format!(
                    "bootcast-agent: post-deploy: partition {number} not grown: {why}"
                )),
                Ok(super::grow::GrowOutcome::Grown { .. }) => {}
                Err(e) => {
                    return Err(RunError::Failed(format!(
                        "the image was written and verified, but growing partition {number} onto the larger disk failed: {e}"
                    )))
                }
            }
        }
        if let Some(name) = &job.hostname {
            match super::postdeploy::set_hostname(&target, sys, name, log) {
                Ok(super::postdeploy::HostnameOutcome::Skipped { why }) => log(&format!(
                    "bootcast-agent: post-deploy: host name {name} not written: {why}"
                )),
                Ok(super::postdeploy::HostnameOutcome::Written { .. }) => {}
                Err(e) => {
                    return Err(RunError::Failed(format!(
                        "the image was written and verified, but writing the host name {name} into it failed: {e}"
                    )))
                }
            }
        }
        // on UEFI the restored disk must carry a loader on its EFI system partition
        if sys.join("firmware/efi").is_dir() {
            match super::postdeploy::esp_loader(&target, sys, log) {
                Ok(Some(l)) => log(&format!("BOOTCAST-AGENT-ESP-OK {l}")),
                Ok(None) => log(
                    "bootcast-agent: post-deploy: warning: no EFI loader on the restored disk (no FAT partition holding \\EFI\\BOOT\\BOOTX64.EFI, Windows' boot manager or a distribution's shim/GRUB): this UEFI machine will not boot it; was the image captured from a BIOS machine?",
                ),
                Err(e) => log(&format!(
                    "bootcast-agent: post-deploy: warning: the EFI system partition was not checked: {e}"
                )),
            }
        }
        Ok(report)
    });
    task::report(&client, me, &result, true, log);
    result
}

fn restore(
    job: &Job,
    me: &TaskRef,
    sys: &Path,
    proc: &Path,
    client: &reqwest::blocking::Client,
    log: &mut dyn FnMut(&str),
) -> Result<(ExportReport, PathBuf), Failure> {
    let source = job.task.source()?;
    let (manifest, version, signature) =
        source.manifest_signed(&format!("{}@{}", job.image, job.version))?;
    if let (Some(keys), Some(sig)) = (&job.keys, &signature) {
        // the order named this version (verified before); the manifest's own signature, when
        // the node passed it on, must be central's too
        let st = crate::sign::Statement::Published {
            image: &job.image,
            version: &version.to_hex(),
            created: manifest.created,
        };
        keys.verify(&st, Some(sig)).map_err(|e| {
            Failure::Other(format!(
                "the manifest of {}@{} is refused: {e}; nothing was written",
                job.image,
                version.short()
            ))
        })?;
    }
    let target =
        super::disk::pick(job.disk.as_deref(), sys, proc, manifest.size).map_err(Failure::Other)?;
    log(&format!(
        "bootcast-agent: writing {}@{} ({} bytes) to {}",
        job.image,
        &version.to_hex()[..12],
        manifest.size,
        target.display()
    ));
    task::check_open(client, me, manifest.size)?;
    // Progress to the server every 2 s, from its own thread; a closed task stops the export.
    let reporter = Reporter::start(client, me, manifest.size);
    let by_http = || {
        let opts = ExportOptions {
            seeds: vec![target.clone()],
            threads: 4,
            cancel: Some(reporter.cancel.clone()),
            discard_unused: false,
        };
        let src: &dyn ChunkSource = &source;
        let done = reporter.done.clone();
        export(src, &manifest, &target, &opts, &|n| {
            done.fetch_add(n, Ordering::Relaxed);
        })
    };
    let result = match &job.multicast {
        None => by_http(),
        Some(join) => {
            let spec = format!("{}@{}", job.image, version.to_hex());
            match by_multicast(job, join, &spec, sys, &target, &reporter, log) {
                // the socket could not be set up: the same verified write path over HTTP,
                // keeping every chunk already on the disk
                Err(MulticastError::Store(e)) => Err(e),
                Err(e) => {
                    log(&format!(
                        "bootcast-agent: multicast session {} not joined ({e}); restoring over HTTP",
                        join.session
                    ));
                    reporter.done.store(0, Ordering::Relaxed);
                    by_http()
                }
                Ok(r) => Ok(ExportReport {
                    size: manifest.size,
                    fetched: r.bytes_written,
                    fetched_compressed: r.bytes_received,
                    from_seed: 0,
                    in_place: r.bytes_in_place,
                    zero: r.bytes_zero,
                    unused: manifest.unused_bytes(),
                }),
            }
        }
    };
    // the server closed the task while chunks were in flight: their refusal (a closed task's
    // session reads no chunks) is the cancellation, not a failure
    let cancelled = reporter.cancel.load(Ordering::Relaxed);
    reporter.finish();
    result
        .map(|r| (r, target.clone()))
        .map_err(|e| match Failure::from(e) {
            _ if cancelled => Failure::Cancelled,
            Failure::Unreachable(e) => Failure::Unreachable(e),
            Failure::Cancelled => Failure::Cancelled,
            Failure::Other(e) => Failure::Other(format!(
                "writing {} to {}: {e}",
                job.image,
                target.display()
            )),
        })
}

/// Receives the image from the room multicast session `join` on the interface with this
/// boot's MAC, writing `target` through the same verified path (chunks the stream does not
/// bring come over HTTP from the same server).
fn by_multicast(
    job: &Job,
    join: &MulticastJoin,
    spec: &str,
    sys: &Path,
    target: &Path,
    reporter: &Reporter,
    log: &mut dyn FnMut(&str),
) -> Result<crate::multicast::receiver::ReceiveReport, MulticastError> {
    let interface = interface_with_mac(sys, &job.task.mac)
        .ok_or_else(|| MulticastError::Interface(format!("(none with MAC {})", job.task.mac)))?;
    log(&format!(
        "bootcast-agent: joining multicast session {} ({}:{}) on {interface}",
        join.session, join.group, join.port
    ));
    let endpoint = Endpoint {
        interface,
        group: join.group,
        port: join.port,
        ttl: 1,
    };
    let opts = ReceiveOptions {
        progress: Some(reporter.done.clone()),
        cancel: Some(reporter.cancel.clone()),
        headers: job.task.credential_headers(),
        ..ReceiveOptions::new(&job.task.server, spec)
    };
    let r = receive(&endpoint, &opts, target, &mut |l| {
        log(&format!("bootcast-agent: multicast: {l}"))
    })?;
    log(&format!(
        "bootcast-agent: multicast: {} chunks by multicast, {} over HTTP{}, {} in place; {} datagrams dropped, {} NAKs sent",
        r.chunks_multicast,
        r.chunks_http,
        r.fell_back.as_deref().map(|w| format!(" ({w})")).unwrap_or_default(),
        r.chunks_in_place,
        r.dropped,
        r.naks_sent
    ));
    Ok(r)
}

/// The network interface whose address is `mac` (from `sys/class/net/*/address`).
fn interface_with_mac(sys: &Path, mac: &str) -> Option<String> {
    std::fs::read_dir(sys.join("class/net"))
        .ok()?
        .flatten()
        .find_map(|e| {
            let addr = std::fs::read_to_string(e.path().join("address")).ok()?;
            addr.trim()
                .eq_ignore_ascii_case(mac)
                .then(|| e.file_name().to_string_lossy().into_owned())
        })
}

//! `bootcast backup DIR` and `bootcast restore DIR` ([`bootcast::backup`]).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use bootcast::backup::{Copied, Record};

use super::output::Output;

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// The backup directory (made if needed; one that holds an earlier backup is brought up
    /// to date, copying only new chunks)
    pub dir: PathBuf,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// A directory `bootcast backup` wrote
    pub dir: PathBuf,
}

fn report(out: &Output, verb: &str, dir: &Path, record: &Record, copied: &Copied) {
    out.emit(
        &serde_json::json!({ "dir": dir, "record": record, "copied": copied }),
        || {
            format!(
                "{verb} {}: database schema {}, {} version(s), {} chunk(s) ({} bytes); this run copied {} chunk(s) ({} bytes) and {} other file(s), kept {}, removed {}",
                dir.display(),
                record.schema_version,
                record.versions,
                record.chunks,
                record.chunk_bytes,
                copied.chunks_copied,
                copied.chunk_bytes_copied,
                copied.files_copied,
                copied.chunks_kept,
                copied.chunks_removed,
            )
        },
    );
}

fn progress(out: &Output) -> impl Fn(u64, u64) {
    let json = out.json;
    move |done, total| {
        if !json && total > 0 {
            eprintln!("chunks: {done}/{total}");
        }
    }
}

pub fn run_backup(args: BackupArgs, data: &Path, out: &Output) -> Result<ExitCode> {
    let (record, copied) = bootcast::backup::backup(data, &args.dir, &progress(out))
        .with_context(|| format!("backing up {} into {}", data.display(), args.dir.display()))?;
    report(out, "backup", &args.dir, &record, &copied);
    Ok(ExitCode::SUCCESS)
}

pub fn run_restore(args: RestoreArgs, data: &Path, out: &Output) -> Result<ExitCode> {
    let (record, copied) = bootcast::backup::restore(&args.dir, data, &progress(out))
        .with_context(|| format!("restoring {} into {}", args.dir.display(), data.display()))?;
    report(out, "restored from", &args.dir, &record, &copied);
    if !out.json {
        println!(
            "start the server on it: bootcast --data {} serve (relays and boot environments carry on: same keys, tokens and certificate)",
            data.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

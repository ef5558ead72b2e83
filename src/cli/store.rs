//! `bootcast store ...`

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

use bootcast::store::gc::gc;
use bootcast::store::ingest::default_threads;
use bootcast::store::verify::verify;
use bootcast::store::{validate_level, ChunkerParams, Store, StoreConfig};

use super::output::{bytes, Output};

#[derive(Subcommand, Debug)]
pub enum StoreCmd {
    /// Create an empty store with chosen chunk sizes and zstd level (optional: `image add`
    /// creates one with the defaults)
    Init {
        /// MIN:AVG:MAX chunk sizes, e.g. 8K:32K:128K
        #[arg(long, value_parser = ChunkerParams::parse_sizes)]
        chunk_sizes: Option<ChunkerParams>,
        /// Default zstd level for new chunks
        #[arg(long, value_parser = |s: &str| validate_level(s.parse().map_err(|_| format!("{s:?} is not a number"))?))]
        level: Option<i32>,
    },
    /// Rehash every chunk and check every manifest; exit 1 if anything is damaged or missing
    Verify {
        #[arg(long, default_value_t = default_threads())]
        threads: usize,
    },
    /// Delete chunks that no image version uses (safe while ingests run)
    Gc,
}

pub fn run(cmd: StoreCmd, data: &Path, out: &Output) -> Result<ExitCode> {
    match cmd {
        StoreCmd::Init { chunk_sizes, level } => {
            let mut config = StoreConfig::default();
            if let Some(p) = chunk_sizes {
                config.chunker = p;
            }
            if let Some(l) = level {
                config.zstd_level = l;
            }
            let store = Store::open_or_create(data, config, true)?;
            out.emit(store.config(), || {
                let c = store.config();
                format!(
                    "store at {}: chunks {}:{}:{} bytes, zero runs from {} bytes, zstd level {}",
                    data.display(),
                    c.chunker.min,
                    c.chunker.avg,
                    c.chunker.max,
                    c.chunker.zero_min,
                    c.zstd_level
                )
            });
            Ok(ExitCode::SUCCESS)
        }
        StoreCmd::Verify { threads } => {
            let store = Store::open(data)?;
            let bar = out.progress(None, "verify");
            let report = verify(&store, threads, &|n| bar.inc(n))?;
            bar.finish_and_clear();
            out.emit(&report, || {
                let mut s = format!(
                    "checked {} chunks ({}) and {} versions\n",
                    report.chunks_checked,
                    bytes(report.bytes_checked),
                    report.versions_checked
                );
                for c in &report.corrupt {
                    s += &format!("CORRUPT chunk {}: {}\n", c.id, c.reason);
                }
                for id in &report.missing {
                    s += &format!("MISSING chunk {id}\n");
                }
                for m in &report.bad_manifests {
                    s += &format!("DAMAGED manifest {}: {}\n", m.path.display(), m.reason);
                }
                for a in &report.affected {
                    s += &format!(
                        "AFFECTED {}@{}: {} corrupt, {} missing chunks\n",
                        a.name,
                        a.version,
                        a.corrupt.len(),
                        a.missing.len()
                    );
                }
                s += if report.is_clean() {
                    "store is clean"
                } else {
                    "store has damage: re-add the affected versions from their source, or remove them"
                };
                s
            });
            Ok(if report.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        StoreCmd::Gc => {
            let store = Store::open(data)?;
            let report = gc(&store)?;
            out.emit(&report, || {
                format!(
                    "removed {} chunks ({}), kept {} ({} for running ingests), cleared {} dead sessions",
                    report.removed_chunks,
                    bytes(report.removed_bytes),
                    report.kept_chunks,
                    report.kept_for_ingest,
                    report.dead_sessions_removed
                )
            })
            ;
            Ok(ExitCode::SUCCESS)
        }
    }
}

//! `bootcast image ...`

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;

use bootcast::fsmap::{map_disk, DiskMap, PartReport};
use bootcast::store::catalog::split_spec;
use bootcast::store::export::{export, ExportOptions};
use bootcast::store::ingest::{default_threads, ingest, ingest_disk, IngestOptions};
use bootcast::store::source::{ChunkSource, HttpSource};
use bootcast::store::stats::{version_stats, VersionStats};
use bootcast::store::{validate_level, Store, StoreConfig, StoreError};

use super::output::{bytes, utc, Output};

#[derive(Subcommand, Debug)]
pub enum ImageCmd {
    /// Store a disk image (file, block device, or - for stdin) as a new version of NAME
    Add {
        name: String,
        source: PathBuf,
        /// zstd level for new chunks (default: the store's, 1)
        #[arg(long, value_parser = parse_level)]
        level: Option<i32>,
        /// Hashing/compression threads (default: all cores)
        #[arg(long, default_value_t = default_threads())]
        threads: usize,
        /// Publish new chunks every N compressed bytes (crash-recovery granularity)
        #[arg(long, default_value_t = 64 << 20, hide = true)]
        batch_bytes: u64,
        /// Capture every byte, even what no filesystem uses (default: only the used blocks of
        /// NTFS, FAT, ext2/3/4 and swap; other partitions are raw anyway); also the default of
        /// an image set with `bootcast image raw NAME on`
        #[arg(long)]
        raw: bool,
    },
    /// List every image version with its size and stored bytes
    List,
    /// Sizes, chunks, sharing, dedup and compression of NAME (all versions) or NAME@VERSION
    Show { spec: String },
    /// Write NAME[@VERSION] to a file or block device, reusing chunks found in seeds
    Export {
        spec: String,
        target: PathBuf,
        /// A file or device that may already hold chunks at the same offsets (repeatable;
        /// the target itself is allowed and then unchanged chunks are not rewritten)
        #[arg(long = "seed")]
        seeds: Vec<PathBuf>,
        #[arg(long, default_value_t = default_threads())]
        threads: usize,
        /// Discard (TRIM, or punch holes in a file) the ranges no filesystem of the image uses,
        /// instead of leaving the target's bytes there as they are
        #[arg(long)]
        discard_unused: bool,
        /// Read the manifest and chunks from a bootcast server (http://HOST:8080, or
        /// https://HOST:8443) instead of the local store; no --data store is needed then
        #[arg(long, value_name = "URL")]
        from: Option<String>,
        /// With --from: a file holding the server's API token (images are private) [default:
        /// BOOTCAST_TOKEN, else the token of the local --data directory]
        #[arg(long, value_name = "FILE", requires = "from")]
        token_file: Option<PathBuf>,
        /// With an https:// --from: the server's certificate fingerprint, as its start banner
        /// prints it (its self-signed certificate); several separated by commas
        #[arg(
            long,
            value_name = "sha256:HEX",
            requires = "from",
            conflicts_with = "ca"
        )]
        fingerprint: Option<String>,
        /// With an https:// --from: a PEM file of the CA that issued the server's certificate
        /// [default: public CAs and the system's]
        #[arg(long, value_name = "FILE", requires = "from")]
        ca: Option<PathBuf>,
    },
    /// Remove NAME (every version) or NAME@VERSION; chunks are freed by `store gc`
    Rm { spec: String },
    /// Approve a captured version: it may become `latest` (tasks, pushes and recurring rules
    /// naming the image take it); captures wait for this unless the image auto-approves
    Approve { spec: String },
    /// Show or change whether captures of NAME become `latest` without approval (default off)
    AutoApprove {
        name: String,
        #[arg(value_parser = ["on", "off"])]
        set: Option<String>,
    },
    /// Show or change whether NAME is captured raw, every byte, by `image add` and capture
    /// tasks alike (default off: only what the filesystems use)
    Raw {
        name: String,
        #[arg(value_parser = ["on", "off"])]
        set: Option<String>,
    },
    /// Show or change what the agent does to the restored system after writing NAME
    #[command(visible_alias = "set")]
    PostDeploy {
        name: String,
        /// Write the host's name (`bootcast host name`) into the restored system: Windows'
        /// sysprep answer file, /etc/hostname of a Linux root on ext2/3/4 (default: on)
        #[arg(long, value_parser = ["on", "off"])]
        hostname: Option<String>,
        /// On a disk larger than the image, grow partition N and its filesystem (NTFS,
        /// ext2/3/4) to fill the disk, moving the partitions after it to the disk's end (GPT
        /// disks); `off` (the default) leaves the extra space unused
        #[arg(long, value_name = "N|off", value_parser = parse_grow)]
        grow: Option<Grow>,
    },
}

/// `--grow N|off`.
#[derive(Debug, Clone, Copy)]
pub struct Grow(Option<u32>);

fn parse_grow(s: &str) -> Result<Grow, String> {
    match s {
        "off" => Ok(Grow(None)),
        _ => match s.parse::<u32>() {
            Ok(n) if (1..=128).contains(&n) => Ok(Grow(Some(n))),
            _ => Err(format!(
                "{s:?} is not a partition number (1-128, as Linux numbers them: 3 for sda3) or off"
            )),
        },
    }
}

fn parse_level(s: &str) -> Result<i32, String> {
    validate_level(s.parse().map_err(|_| format!("{s:?} is not a number"))?)
}

pub fn run(cmd: ImageCmd, data: &Path, out: &Output) -> Result<ExitCode> {
    match cmd {
        ImageCmd::Add {
            name,
            source,
            level,
            threads,
            batch_bytes,
            raw,
        } => add(data, out, &name, &source, level, threads, batch_bytes, raw),
        ImageCmd::List => list(data, out),
        ImageCmd::Show { spec } => show(data, out, &spec),
        ImageCmd::Export {
            spec,
            target,
            seeds,
            threads,
            discard_unused,
            from,
            token_file,
            fingerprint,
            ca,
        } => {
            let from = match from {
                Some(url) => Some((
                    url,
                    super::staff_token(data, token_file.as_deref())?,
                    super::client_tls(fingerprint.as_deref(), ca.as_deref())?,
                )),
                None => None,
            };
            let from = from
                .as_ref()
                .map(|(u, token, tls)| (u.as_str(), token.as_str(), tls));
            let opts = ExportOptions {
                seeds,
                threads,
                cancel: None,
                discard_unused,
            };
            export_cmd(data, out, &spec, &target, opts, from)
        }
        ImageCmd::PostDeploy {
            name,
            hostname,
            grow,
        } => post_deploy(data, out, &name, hostname, grow),
        ImageCmd::Approve { spec } => approve(data, out, &spec),
        ImageCmd::AutoApprove { name, set } => auto_approve(data, out, &name, set),
        ImageCmd::Raw { name, set } => raw_setting(data, out, &name, set),
        ImageCmd::Rm { spec } => rm(data, out, &spec),
    }
}

/// A source to ingest: stdin (a stream, raw), or a file or block device with its size.
enum Source {
    Stream(io::Stdin),
    Disk(File, u64),
}

fn open_source(path: &Path) -> Result<Source> {
    if path == Path::new("-") {
        return Ok(Source::Stream(io::stdin()));
    }
    let mut file = File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => {
            anyhow::anyhow!("source {} does not exist", path.display())
        }
        io::ErrorKind::PermissionDenied => anyhow::anyhow!(
            "source {} is not readable (permission denied; run as root for block devices)",
            path.display()
        ),
        _ => anyhow::Error::new(e).context(format!("opening source {}", path.display())),
    })?;
    if file.metadata()?.is_dir() {
        anyhow::bail!("source {} is a directory, not a disk image", path.display());
    }
    let size = file
        .seek(SeekFrom::End(0))
        .and_then(|n| file.seek(SeekFrom::Start(0)).map(|_| n))
        .with_context(|| format!("source {} is not seekable", path.display()))?;
    Ok(Source::Disk(file, size))
}

#[allow(clippy::too_many_arguments)]
fn add(
    data: &Path,
    out: &Output,
    name: &str,
    source: &Path,
    level: Option<i32>,
    threads: usize,
    batch_bytes: u64,
    raw: bool,
) -> Result<ExitCode> {
    bootcast::store::catalog::validate_name(name)?;
    let source_kind = open_source(source)?;
    let store = Store::open_or_create(data, StoreConfig::default(), false)?;
    let opts = IngestOptions {
        level,
        threads,
        batch_bytes,
    };
    let label = source.display().to_string();
    let (report, partitions) = match source_kind {
        Source::Stream(stdin) => {
            let bar = out.progress(None, "ingest");
            let r = ingest(&store, name, stdin, &label, &opts, &|n| bar.inc(n))?;
            bar.finish_and_clear();
            let size = r.size;
            (
                r,
                DiskMap::raw(size, "read from a stream (stdin)").partitions,
            )
        }
        Source::Disk(mut file, size) => {
            let set_raw = raw_image(data, name)?;
            let map = if raw || set_raw {
                DiskMap::raw(
                    size,
                    if raw {
                        "--raw"
                    } else {
                        "the image is captured raw (bootcast image raw)"
                    },
                )
            } else {
                map_disk(&mut file, size).with_context(|| format!("reading {label}"))?
            };
            let bar = out.progress(Some(size), "ingest");
            let r = ingest_disk(&store, name, file, &map, &label, &opts, &|n| bar.inc(n))?;
            bar.finish_and_clear();
            (r, map.partitions)
        }
    };
    // staff adding these bytes approves them, should a capture have made the same version
    store.approve(&format!("{name}@{}", report.version))?;
    #[derive(serde::Serialize)]
    struct AddJson<'a> {
        name: &'a str,
        version: String,
        size: u64,
        stored_bytes: u64,
        new_bytes: u64,
        chunks: usize,
        new_chunks: usize,
        zero_bytes: u64,
        unused_bytes: u64,
        partitions: &'a [PartReport],
    }
    let json = AddJson {
        name: &report.name,
        version: report.version.to_hex(),
        size: report.size,
        stored_bytes: report.stored_bytes,
        new_bytes: report.new_bytes,
        chunks: report.chunks,
        new_chunks: report.new_chunks,
        zero_bytes: report.zero_bytes,
        unused_bytes: report.unused_bytes,
        partitions: &partitions,
    };
    out.emit(&json, || {
        format!(
            "{}@{}\n  size {}, {} chunks ({} new), stored {}, new {}, zero runs {}, unused {}\n{}",
            report.name,
            report.version,
            bytes(report.size),
            report.chunks,
            report.new_chunks,
            bytes(report.stored_bytes),
            bytes(report.new_bytes),
            bytes(report.zero_bytes),
            bytes(report.unused_bytes),
            partition_lines(&partitions)
        )
    });
    Ok(ExitCode::SUCCESS)
}

/// Whether image `name` is set to raw captures; false when there is no database yet.
fn raw_image(data: &Path, name: &str) -> Result<bool> {
    if !bootcast::db::path(data).exists() {
        return Ok(false);
    }
    let db = super::open_db(data)?;
    let c = db.lock();
    Ok(bootcast::db::images::raw(&c, name)?)
}

/// One line per partition: number, filesystem, size, used, mapped or raw and why.
fn partition_lines(parts: &[PartReport]) -> String {
    let mut s = String::new();
    for p in parts {
        let what = match (&p.used, p.mapped, &p.reason) {
            (Some(used), true, _) => format!("{} used, mapped", bytes(*used)),
            (_, _, Some(why)) => format!("raw: {why}"),
            _ => "raw".to_string(),
        };
        let number = if p.number == 0 {
            "disk".to_string()
        } else {
            format!("part {}", p.number)
        };
        s.push_str(&format!(
            "  {number:<8} {:<9} {:>10}  {what}\n",
            p.fs,
            bytes(p.size)
        ));
    }
    s.trim_end().to_string()
}

fn all_versions(store: &Store) -> Result<Vec<bootcast::store::catalog::Version>> {
    let mut all = Vec::new();
    for name in store.image_names()? {
        all.extend(store.versions(&name)?);
    }
    Ok(all)
}

fn list(data: &Path, out: &Output) -> Result<ExitCode> {
    let store = Store::open(data)?;
    let all = all_versions(&store)?;
    let stats = version_stats(&all, &all);
    out.emit(&stats, || {
        if stats.is_empty() {
            return "no images yet: add one with `bootcast image add NAME FILE`".into();
        }
        let mut s = format!(
            "{:<20} {:<12} {:<20} {:>10} {:>8} {:>10} {:>10}\n",
            "NAME", "VERSION", "CREATED", "SIZE", "CHUNKS", "STORED", "SHARED"
        );
        let held = stats.iter().filter(|v| !v.approved).count();
        for v in &stats {
            s += &format!(
                "{:<20} {:<12} {:<20} {:>10} {:>8} {:>10} {:>10}{}\n",
                v.name,
                v.version.short(),
                utc(v.created),
                bytes(v.size),
                v.chunks,
                bytes(v.stored_bytes),
                bytes(v.shared_bytes),
                if v.approved {
                    ""
                } else {
                    "  awaiting approval"
                }
            );
        }
        if held > 0 {
            s += &format!(
                "{held} capture(s) await approval: `bootcast image approve NAME@VERSION`\n"
            );
        }
        s
    });
    Ok(ExitCode::SUCCESS)
}

fn show(data: &Path, out: &Output, spec: &str) -> Result<ExitCode> {
    let store = Store::open(data)?;
    let all = all_versions(&store)?;
    let chosen = match split_spec(spec) {
        (_, Some(_)) => vec![store.resolve(spec)?],
        (name, None) => {
            let v = store.versions(name)?;
            if v.is_empty() {
                return Err(StoreError::UnknownImage(name.to_string()).into());
            }
            v
        }
    };
    let stats = version_stats(&chosen, &all);
    let human = || stats.iter().map(describe).collect::<Vec<_>>().join("\n");
    if split_spec(spec).1.is_some() {
        out.emit(&stats[0], human);
    } else {
        out.emit(&stats, human);
    }
    Ok(ExitCode::SUCCESS)
}

fn describe(v: &VersionStats) -> String {
    let mut s = format!(
        "{}@{}\n  created      {}\n  size         {} ({} in chunks, {} zero runs, {} unused)\n  chunks       {} distinct, {} plain, {} stored\n  shared       {} of its stored bytes are used by other versions too\n  dedup        {:.2}x   compression {:.2}x\n",
        v.name,
        v.version,
        utc(v.created),
        bytes(v.size),
        bytes(v.data_bytes),
        bytes(v.zero_bytes),
        bytes(v.unused_bytes),
        v.chunks,
        bytes(v.plain_bytes),
        bytes(v.stored_bytes),
        bytes(v.shared_bytes),
        v.dedup_ratio,
        v.compression_ratio
    );
    if !v.partitions.is_empty() {
        s.push_str("  partitions\n");
        s.push_str(&partition_lines(&v.partitions));
        s.push('\n');
    }
    s
}

fn export_cmd(
    data: &Path,
    out: &Output,
    spec: &str,
    target: &Path,
    opts: ExportOptions,
    from: Option<(&str, &str, &bootcast::tls::TlsClient)>,
) -> Result<ExitCode> {
    let (from, token, tls) = (from.map(|f| f.0), from.map(|f| f.1), from.map(|f| f.2));
    // The chunk source and the manifest: the local store, or a server.
    let from_url = from;
    let (source, name, id, manifest): (Box<dyn ChunkSource>, _, _, _) = match from {
        None => {
            let store = Store::open(data)?;
            let v = store.resolve(spec)?;
            (Box::new(store), v.name, v.id, v.manifest)
        }
        Some(url) => {
            let tls = tls.cloned().unwrap_or(bootcast::tls::TlsClient::Roots);
            if url.starts_with("http://") && !matches!(tls, bootcast::tls::TlsClient::Roots) {
                anyhow::bail!("--fingerprint and --ca check an https:// server's certificate; {url} is plain HTTP: give the server's HTTPS URL (https://HOST:8443)");
            }
            let http = HttpSource::with_credential(
                url,
                &tls,
                &[(
                    "authorization",
                    format!("Bearer {}", token.unwrap_or_default()),
                )],
            )?;
            let (manifest, id) = http.manifest(spec)?;
            (Box::new(http), manifest.name.clone(), id, manifest)
        }
    };
    let bar = out.progress(Some(manifest.size), "export");
    let report = export(source.as_ref(), &manifest, target, &opts, &|n| bar.inc(n))
        .with_context(|| format!("exporting {}@{} to {}", name, id.short(), target.display()))?;
    // a GPT image on a larger device: its backup table goes to the device's end
    let dev = File::options().read(true).write(true).open(target)?;
    if let Some(lba) = bootcast::fsmap::table::move_backup_gpt_to_end(&dev)
        .map_err(|e| anyhow::anyhow!("{}: {e}", target.display()))?
    {
        eprintln!(
            "{} is larger than the image: its backup GPT moved to sector {lba}, the device's end",
            target.display()
        );
    }
    bar.finish_and_clear();
    #[derive(serde::Serialize)]
    struct ExportJson<'a> {
        name: &'a str,
        version: String,
        target: &'a Path,
        /// The server chunks came from, if not the local store.
        from: Option<&'a str>,
        #[serde(flatten)]
        report: &'a bootcast::store::export::ExportReport,
    }
    out.emit(
        &ExportJson {
            name: &name,
            version: id.to_hex(),
            target,
            from: from_url,
            report: &report,
        },
        || {
            format!(
                "wrote {}@{} to {}\n  {} fetched from {} ({} compressed), {} from seeds, {} already in place, {} zero",
                name,
                id.short(),
                target.display(),
                bytes(report.fetched),
                from_url.unwrap_or("the store"),
                bytes(report.fetched_compressed),
                bytes(report.from_seed),
                bytes(report.in_place),
                bytes(report.zero)
            )
        },
    );
    Ok(ExitCode::SUCCESS)
}

fn rm(data: &Path, out: &Output, spec: &str) -> Result<ExitCode> {
    let store = Store::open(data)?;
    let removed = store.remove(spec)?;
    let ids: Vec<String> = removed
        .iter()
        .map(|f| format!("{}@{}", f.name, f.id))
        .collect();
    out.emit(&serde_json::json!({ "removed": ids }), || {
        let mut s: String = ids.iter().map(|i| format!("removed {i}\n")).collect();
        s += "run `bootcast store gc` to free chunks no other version uses";
        s
    });
    Ok(ExitCode::SUCCESS)
}

/// `image post-deploy NAME [--hostname on|off]`: settings in the server's database.
fn post_deploy(
    data: &Path,
    out: &Output,
    name: &str,
    hostname: Option<String>,
    grow: Option<Grow>,
) -> Result<ExitCode> {
    use bootcast::db::images;
    bootcast::store::catalog::validate_name(name)?;
    let db = super::open_db(data)?;
    let c = db.lock();
    let mut pd = images::post_deploy(&c, name)?;
    if let Some(h) = &hostname {
        pd.hostname = h == "on";
    }
    if let Some(Grow(g)) = grow {
        pd.grow = g;
    }
    if hostname.is_some() || grow.is_some() {
        images::set_post_deploy(&c, name, pd)?;
    }
    out.emit(
        &serde_json::json!({ "image": name, "post_deploy": pd }),
        || {
            format!(
                "image {name}, after a restore:\n  hostname {}  (the host's name into Windows' answer file and a Linux root's /etc/hostname)\n  grow     {}",
                if pd.hostname { "on " } else { "off" },
                match pd.grow {
                    Some(n) => format!("{n:<3}  (on a larger disk, partition {n} and its filesystem fill it; the partitions after it move to the end)"),
                    None => "off  (on a larger disk, the extra space stays unused)".to_string(),
                }
            )
        },
    );
    Ok(ExitCode::SUCCESS)
}

/// `image approve NAME@VERSION`.
fn approve(data: &Path, out: &Output, spec: &str) -> Result<ExitCode> {
    let store = Store::open(data)?;
    let v = store.approve(spec)?;
    out.emit(
        &serde_json::json!({ "image": v.name, "version": v.id.to_hex(), "approved": true }),
        || format!("{}@{} approved", v.name, v.id.short()),
    );
    Ok(ExitCode::SUCCESS)
}

/// A per-image on/off setting in the server's database (`image raw`, `image auto-approve`):
/// set it to `set` if given, then print it under `key`, in words from `say`.
#[allow(clippy::too_many_arguments)]
fn image_switch(
    data: &Path,
    out: &Output,
    name: &str,
    set: Option<String>,
    key: &str,
    get: fn(&rusqlite::Connection, &str) -> Result<bool, bootcast::db::DbError>,
    put: fn(&rusqlite::Connection, &str, bool) -> Result<(), bootcast::db::DbError>,
    say: fn(bool) -> &'static str,
) -> Result<ExitCode> {
    bootcast::store::catalog::validate_name(name)?;
    let db = super::open_db(data)?;
    let c = db.lock();
    if let Some(v) = set {
        put(&c, name, v == "on")?;
    }
    let on = get(&c, name)?;
    out.emit(&serde_json::json!({ "image": name, key: on }), || {
        format!("image {name}: {}", say(on))
    });
    Ok(ExitCode::SUCCESS)
}

/// `image raw NAME [on|off]`.
fn raw_setting(data: &Path, out: &Output, name: &str, set: Option<String>) -> Result<ExitCode> {
    use bootcast::db::images;
    image_switch(
        data,
        out,
        name,
        set,
        "raw",
        images::raw,
        images::set_raw,
        |on| {
            if on {
                "captured raw, every byte (raw on)"
            } else {
                "only what its filesystems use is captured (raw off)"
            }
        },
    )
}

/// `image auto-approve NAME [on|off]`.
fn auto_approve(data: &Path, out: &Output, name: &str, set: Option<String>) -> Result<ExitCode> {
    use bootcast::db::images;
    image_switch(
        data,
        out,
        name,
        set,
        "auto_approve",
        images::auto_approve,
        images::set_auto_approve,
        |on| {
            if on {
                "captures become latest at once (auto-approve on)"
            } else {
                "captures wait for `bootcast image approve` (auto-approve off)"
            }
        },
    )
}

//! [`build`]: kernel, modules, busybox and the agent into `DATA/bootenv` (see the module
//! documentation of [`super`] for the layout and the atomic commit).

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use super::inputs::*;
use super::kernel::*;
use super::modules::*;
use super::record::{BootEnvInfo, FileInfo};
use super::*;

/// How to build; `BuildOptions::default()` builds the standard boot environment.
pub struct BuildOptions {
    /// Use this kernel package instead of resolving `linux-image-amd64` with apt.
    pub kernel_deb: Option<PathBuf>,
    /// Where downloaded kernel packages are kept (default `DATA/bootenv/cache`).
    pub cache_dir: Option<PathBuf>,
    /// Resolve and download the kernel again even if the cache has one.
    pub refresh_kernel: bool,
    /// The agent binary (default: the running executable).
    pub agent: Option<PathBuf>,
    /// Busybox binary (default `/bin/busybox`, package busybox-static).
    pub busybox: PathBuf,
    /// Modules to add to [`DEFAULT_MODULES`].
    pub extra_modules: Vec<String>,
    /// zstd level for the initramfs.
    pub zstd_level: i32,
    /// Progress messages for slow steps.
    pub progress: Box<dyn Fn(&str) + Send + Sync>,
    /// The agent protocol the agent speaks (recorded in `bootenv.json`; the caller knows it:
    /// the boot environment knows nothing of the agent's messages).
    pub agent_protocol: u32,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            kernel_deb: None,
            cache_dir: None,
            refresh_kernel: false,
            agent: None,
            busybox: PathBuf::from("/bin/busybox"),
            extra_modules: Vec::new(),
            zstd_level: 19,
            progress: Box::new(|_| {}),
            agent_protocol: 0,
        }
    }
}

/// Builds the boot environment into `DATA/bootenv` (see the module documentation).
pub fn build(data_dir: &Path, opts: &BuildOptions) -> Result<BootEnvInfo> {
    let progress = &opts.progress;
    let out_dir = dir(data_dir);
    fs::create_dir_all(&out_dir).ctx(|| format!("create {}", out_dir.display()))?;
    let lock_path = out_dir.join(".lock");
    let lock_file = File::create(&lock_path).ctx(|| format!("create {}", lock_path.display()))?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| {
            BootEnvError::Input(format!(
                "another `bootcast bootenv build` is running on {} ({e})",
                out_dir.display()
            ))
        })?;
    // Leftovers of interrupted builds (we hold the lock: nobody else is building).
    for entry in fs::read_dir(&out_dir).ctx(|| format!("list {}", out_dir.display()))? {
        let entry = entry.ctx(|| format!("list {}", out_dir.display()))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("tmp-") {
            let _ = fs::remove_dir_all(entry.path());
        } else if name.starts_with('.') && name.ends_with(".tmp") {
            let _ = fs::remove_file(entry.path());
        }
    }

    // Inputs first: cheap checks fail before the slow steps.
    let busybox = read_busybox(&opts.busybox)?;
    let tools = read_tools()?;
    for (tool, package) in &tools.missing {
        progress(&format!(
            "warning: {tool} is not on this machine (Debian package {package}): the agent will not grow filesystems it needs for (`bootcast image post-deploy --grow`)"
        ));
    }
    let (agent, agent_stripped) = read_agent(opts.agent.as_deref(), &out_dir, progress)?;
    let bootcast_version = match &opts.agent {
        None => env!("CARGO_PKG_VERSION").to_string(),
        Some(p) => agent_version(p).unwrap_or_else(|| "unknown".into()),
    };

    let deb = match &opts.kernel_deb {
        Some(p) => {
            if !p.is_file() {
                return Err(BootEnvError::Input(format!(
                    "kernel package {} does not exist",
                    p.display()
                )));
            }
            p.clone()
        }
        None => {
            let cache = opts
                .cache_dir
                .clone()
                .unwrap_or_else(|| out_dir.join("cache"));
            kernel_deb_from_apt(&cache, opts.refresh_kernel, progress)?
        }
    };
    let work = TempDir::new(out_dir.join(format!("tmp-{}", std::process::id())))?;
    progress(&format!("unpacking {}", deb.display()));
    run_tool(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&work.0),
        "dpkg-deb",
        "install package dpkg, or build on Debian",
    )?;
    let kernel = find_kernel(&work.0, &deb)?;
    progress(&format!("kernel {}", kernel.version));

    let mut wanted: Vec<String> = DEFAULT_MODULES.iter().map(|s| s.to_string()).collect();
    wanted.extend(opts.extra_modules.iter().map(|m| m.replace('-', "_")));
    let mods = resolve_modules(&kernel.modules_dir, &wanted)?;
    progress(&format!(
        "{} modules ({} requested{}{})",
        mods.order.len(),
        wanted.len(),
        if mods.builtin.is_empty() {
            String::new()
        } else {
            format!(", built in: {}", mods.builtin.join(" "))
        },
        if mods.missing.is_empty() {
            String::new()
        } else {
            format!(", not in this kernel: {}", mods.missing.join(" "))
        }
    ));

    // The archive.
    let mut w = cpio::Writer::new(Vec::new());
    let cp = |e: io::Error| BootEnvError::Io {
        context: "write the initramfs archive".into(),
        source: e,
    };
    let mut dirs: std::collections::BTreeSet<&str> = [
        "bin",
        "dev",
        "etc",
        "lib",
        "lib/modules",
        "proc",
        "run",
        "sys",
        "tmp",
    ]
    .into();
    dirs.extend(tools.files.keys().flat_map(|p| parents(p)));
    for d in dirs {
        w.dir(d, 0o755).map_err(cp)?;
    }
    w.char_dev("dev/console", 0o600, 5, 1).map_err(cp)?;
    w.file("init", 0o755, INIT_SCRIPT.as_bytes()).map_err(cp)?;
    w.file("etc/udhcpc.script", 0o755, UDHCPC_SCRIPT.as_bytes())
        .map_err(cp)?;
    w.file(
        "etc/bootcast-bootenv",
        0o644,
        format!("kernel={}\nbootcast={bootcast_version}\n", kernel.version).as_bytes(),
    )
    .map_err(cp)?;
    w.file("bin/busybox", 0o755, &busybox.bytes).map_err(cp)?;
    w.file("bin/bootcast", 0o755, &agent).map_err(cp)?;
    for (path, (bytes, mode)) in &tools.files {
        w.file(path, *mode, bytes).map_err(cp)?;
    }
    // Scripts' `#!/bin/sh` works even before /init installs the applet links.
    w.symlink("bin/sh", "busybox").map_err(cp)?;
    for (name, bytes) in &mods.files {
        w.file(&format!("lib/modules/{name}.ko"), 0o644, bytes)
            .map_err(cp)?;
    }
    let mut order = mods.order.join("\n");
    order.push('\n');
    w.file("lib/modules/order", 0o644, order.as_bytes())
        .map_err(cp)?;
    let archive = w.finish().map_err(cp)?;

    let zstd_ok = kernel
        .config
        .lines()
        .any(|l| l.trim() == "CONFIG_RD_ZSTD=y");
    progress(&format!(
        "compressing the initramfs ({} uncompressed, {})",
        archive.len(),
        if zstd_ok { "zstd" } else { "gzip" }
    ));
    let (initrd, compression) = if zstd_ok {
        let mut enc =
            zstd::Encoder::new(Vec::new(), opts.zstd_level).ctx(|| "zstd encoder".to_string())?;
        enc.write_all(&archive).ctx(|| "zstd".to_string())?;
        (enc.finish().ctx(|| "zstd".to_string())?, "zstd")
    } else {
        (gzip(&archive)?, "gzip")
    };
    drop(archive);

    let vmlinuz = fs::read(&kernel.vmlinuz).ctx(|| format!("read {}", kernel.vmlinuz.display()))?;
    let file_info = |b: &[u8]| FileInfo {
        size: b.len() as u64,
        blake3: blake3::hash(b).to_hex().to_string(),
    };
    let info = BootEnvInfo {
        kernel_version: kernel.version.clone(),
        kernel_package: deb
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        vmlinuz: file_info(&vmlinuz),
        initrd: file_info(&initrd),
        initrd_compression: compression.into(),
        modules: mods.order.clone(),
        modules_builtin: mods.builtin.clone(),
        modules_missing: mods.missing.clone(),
        agent_size: agent.len() as u64,
        agent_stripped,
        busybox: busybox.version,
        built_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        bootcast_version,
        agent_protocol: opts.agent_protocol,
        tools: tools.found.clone(),
    };

    // Commit: temp files, then drop the old record, rename, write the new record.
    let tmp_vmlinuz = out_dir.join(".vmlinuz.tmp");
    let tmp_initrd = out_dir.join(".initrd.img.tmp");
    let tmp_info = out_dir.join(".bootenv.json.tmp");
    write_synced(&tmp_vmlinuz, &vmlinuz)?;
    write_synced(&tmp_initrd, &initrd)?;
    let mut json = serde_json::to_vec_pretty(&info).expect("info serialises");
    json.push(b'\n');
    write_synced(&tmp_info, &json)?;
    let info_file = info_path(data_dir);
    match fs::remove_file(&info_file) {
        Ok(()) => sync_dir(&out_dir)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).ctx(|| format!("remove {}", info_file.display())),
    }
    for (from, to) in [
        (&tmp_vmlinuz, vmlinuz_path(data_dir)),
        (&tmp_initrd, initrd_path(data_dir)),
    ] {
        fs::rename(from, &to).ctx(|| format!("rename {} to {}", from.display(), to.display()))?;
    }
    sync_dir(&out_dir)?;
    fs::rename(&tmp_info, &info_file).ctx(|| format!("rename to {}", info_file.display()))?;
    sync_dir(&out_dir)?;
    Ok(info)
}

/// gzip at the best level, as `gzip -n -9` (no name, no time stamp).
pub(super) fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(data).ctx(|| "gzip".to_string())?;
    enc.finish().ctx(|| "gzip".to_string())
}

pub(super) fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).ctx(|| format!("create {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .ctx(|| format!("write {}", path.display()))
}

pub(super) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx(|| format!("sync {}", dir.display()))
}

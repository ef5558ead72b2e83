//! The boot environment: the Linux kernel and initramfs that a network-booted machine runs,
//! so that the bootcast agent can talk to the server.
//!
//! [`build`] writes, under the data directory:
//! - `bootenv/vmlinuz`: the kernel of a Debian `linux-image-*` package;
//! - `bootenv/initrd.img`: a cpio "newc" archive, zstd-compressed when the kernel's config has
//!   `CONFIG_RD_ZSTD=y` (Debian 12's 6.1 kernel does), else gzip (`gzip` from PATH);
//! - `bootenv/bootenv.json`: [`BootEnvInfo`] (versions, sizes, BLAKE3 hashes, modules).
//!
//! **Atomicity.** Both images are written to temporary files and synced; then `bootenv.json`
//! is removed, the images are renamed into place, and a new `bootenv.json` is written (temp +
//! rename) and the directory synced. `bootenv.json` is the commit record: a crash at any point
//! leaves either the previous complete boot environment or none ([`load`] returns `None`), and
//! [`load`] also checks the sizes it records against the files. One build at a time (a lock
//! on `bootenv/.lock`).
//!
//! **Kernel.** `--kernel-deb PATH`, or by default the package that the Debian metapackage
//! `linux-image-amd64` depends on, fetched with `apt-get download` into a cache directory
//! (default `DATA/bootenv/cache`), reused on later builds unless `refresh_kernel`. The package is
//! unpacked with `dpkg-deb -x` into a temporary directory under `DATA/bootenv`.
//!
//! **Initramfs contents.**
//! - `/init`: busybox shell script ([`INIT_SCRIPT`], `src/bootenv/init.sh`), and
//!   `/etc/udhcpc.script` ([`UDHCPC_SCRIPT`]);
//! - `/bin/busybox`: the host's `/bin/busybox` from Debian's `busybox-static` (must be static);
//!   `/bin/sh` links to it; `/init` installs the other applet links at boot;
//! - `/bin/bootcast`: the agent, by default the running binary (it must be statically linked,
//!   as `.cargo/config.toml` builds it), with debug info stripped by `objcopy` when available;
//! - `/lib/modules/NAME.ko` and `/lib/modules/order`: [`DEFAULT_MODULES`] plus their
//!   dependencies (`depends=` of each module's `.modinfo`: the Debian package carries no
//!   `modules.dep`, depmod makes it at install time), dependencies first. Modules built into
//!   the kernel (`modules.builtin`) are skipped. Debian 12 ships modules uncompressed; `.ko.xz`,
//!   `.ko.zst` and `.ko.gz` are decompressed at build time (busybox `insmod` loads plain ELF);
//! - `/dev/console` (5:1), so that `/init` has a console before it mounts devtmpfs;
//!   `/etc/bootcast-bootenv` (kernel and bootcast versions).
//!
//! **At boot**, `/init` expects on the kernel command line `bootcast.server=http://HOST:PORT`
//! (the agent's server) and normally `bootcast.mac=MAC` (the boot interface); see
//! [`crate::agent::boot`].

mod cpio;
pub mod elf;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// `/init` of the initramfs.
pub const INIT_SCRIPT: &str = include_str!("init.sh");
/// `/etc/udhcpc.script` of the initramfs (`udhcpc -s`).
pub const UDHCPC_SCRIPT: &str = include_str!("udhcpc.sh");

/// Modules put in the initramfs (with their dependencies), loaded in this order.
///
/// Network (the fleet's PCs and virtual machines): Intel e1000 (QEMU's default), e1000e (most
/// Intel desktop NICs), igb, igc (2.5 GbE), ixgbe (10 GbE); Realtek r8169; Broadcom tg3;
/// virtio-net over virtio-pci; USB adapters (xHCI/EHCI hosts, CDC Ethernet, Realtek r8152,
/// ASIX AX88179). Not bnx2: it needs non-free firmware files, which are not included.
/// Disks, for imaging: ahci, nvme, virtio_blk, virtio_scsi, sd_mod, usb-storage.
/// Filesystems, for the post-deploy steps: ext4 (also mounts ext2/ext3) and crc32c for its
/// metadata checksums (ext4 only asks for it at mount time, which no modprobe would answer).
pub const DEFAULT_MODULES: &[&str] = &[
    "e1000",
    "e1000e",
    "igb",
    "igc",
    "ixgbe",
    "r8169",
    "tg3",
    "virtio_pci",
    "virtio_net",
    "xhci_pci",
    "ehci_pci",
    "cdc_ether",
    "r8152",
    "ax88179_178a",
    "ahci",
    "nvme",
    "virtio_blk",
    "virtio_scsi",
    "sd_mod",
    "usb_storage",
    "crc32c_generic",
    "ext4",
];

/// Busybox applets `/init` and the udhcpc script use.
const APPLETS: &[&str] = &[
    "sh", "mount", "insmod", "udhcpc", "ip", "ifconfig", "cat", "tr", "grep", "sleep", "ls",
    "setsid", "cttyhack", "uname", "mkdir",
];

#[derive(Debug, thiserror::Error)]
pub enum BootEnvError {
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Tool(String),
    #[error("{0}")]
    Input(String),
    #[error("boot environment in {dir} is inconsistent: {why} (run `bootcast bootenv build`)")]
    Inconsistent { dir: PathBuf, why: String },
}

pub type Result<T> = std::result::Result<T, BootEnvError>;

trait Context<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| BootEnvError::Io {
            context: what(),
            source,
        })
    }
}

/// One file of the boot environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    pub size: u64,
    pub blake3: String,
}

/// `DATA/bootenv/bootenv.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootEnvInfo {
    /// Kernel release (`uname -r` in the boot environment), e.g. `6.1.0-56-amd64`.
    pub kernel_version: String,
    /// File name of the kernel package it came from.
    pub kernel_package: String,
    pub vmlinuz: FileInfo,
    pub initrd: FileInfo,
    /// `zstd` or `gzip`.
    pub initrd_compression: String,
    /// Modules in the initramfs, in load order.
    pub modules: Vec<String>,
    /// Requested modules built into the kernel (nothing to load).
    pub modules_builtin: Vec<String>,
    /// Requested modules this kernel does not have.
    pub modules_missing: Vec<String>,
    /// Size of `/bin/bootcast` in the initramfs, and whether debug info was stripped.
    pub agent_size: u64,
    pub agent_stripped: bool,
    /// First line of `busybox --help`.
    pub busybox: String,
    /// Seconds since the Unix epoch.
    pub built_at: u64,
    /// Version of the bootcast that built it (the agent's version, unless `--agent`).
    pub bootcast_version: String,
}

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
        }
    }
}

pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("bootenv")
}

pub fn vmlinuz_path(data_dir: &Path) -> PathBuf {
    dir(data_dir).join("vmlinuz")
}

pub fn initrd_path(data_dir: &Path) -> PathBuf {
    dir(data_dir).join("initrd.img")
}

fn info_path(data_dir: &Path) -> PathBuf {
    dir(data_dir).join("bootenv.json")
}

/// The boot environment built in `data_dir`, `None` if there is none (never built, or a build
/// did not finish). An error if `bootenv.json` is unreadable or does not match the files.
pub fn load(data_dir: &Path) -> Result<Option<BootEnvInfo>> {
    let path = info_path(data_dir);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).ctx(|| format!("read {}", path.display())),
    };
    let bad = |why: String| BootEnvError::Inconsistent {
        dir: dir(data_dir),
        why,
    };
    let info: BootEnvInfo =
        serde_json::from_str(&text).map_err(|e| bad(format!("bootenv.json: {e}")))?;
    for (p, f) in [
        (vmlinuz_path(data_dir), &info.vmlinuz),
        (initrd_path(data_dir), &info.initrd),
    ] {
        let len = fs::metadata(&p)
            .map_err(|e| bad(format!("{}: {e}", p.display())))?
            .len();
        if len != f.size {
            return Err(bad(format!(
                "{} has {len} bytes, bootenv.json says {}",
                p.display(),
                f.size
            )));
        }
    }
    Ok(Some(info))
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
    for d in [
        "bin",
        "dev",
        "etc",
        "lib",
        "lib/modules",
        "proc",
        "run",
        "sys",
        "tmp",
    ] {
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

// ------------------------------------------------------------------------------------ inputs

struct Busybox {
    bytes: Vec<u8>,
    version: String,
}

fn read_busybox(path: &Path) -> Result<Busybox> {
    let bytes = fs::read(path).map_err(|e| {
        BootEnvError::Input(format!(
            "cannot read {} ({e}): install Debian package busybox-static",
            path.display()
        ))
    })?;
    match elf::has_interpreter(&bytes) {
        Ok(false) => {}
        Ok(true) => {
            return Err(BootEnvError::Input(format!(
            "{} is dynamically linked: install Debian package busybox-static (it replaces busybox)",
            path.display()
        )))
        }
        Err(e) => {
            return Err(BootEnvError::Input(format!(
                "{}: {e}: install Debian package busybox-static",
                path.display()
            )))
        }
    }
    let out = Command::new(path)
        .arg("--list")
        .output()
        .ctx(|| format!("run {} --list", path.display()))?;
    let list = String::from_utf8_lossy(&out.stdout);
    let have: BTreeSet<&str> = list.lines().collect();
    let missing: Vec<&str> = APPLETS
        .iter()
        .copied()
        .filter(|a| !have.contains(a))
        .collect();
    if !missing.is_empty() {
        return Err(BootEnvError::Input(format!(
            "{} lacks applets {}: install Debian package busybox-static",
            path.display(),
            missing.join(" ")
        )));
    }
    let help = Command::new(path).arg("--help").output();
    let version = help
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_default();
    Ok(Busybox { bytes, version })
}

/// The agent's bytes (stripped of debug info when `objcopy` is available) and whether they
/// were stripped.
fn read_agent(
    path: Option<&Path>,
    tmp_dir: &Path,
    progress: &dyn Fn(&str),
) -> Result<(Vec<u8>, bool)> {
    let path = path.unwrap_or(Path::new("/proc/self/exe"));
    let bytes = fs::read(path).ctx(|| format!("read the agent {}", path.display()))?;
    let how = "build it with the repository's .cargo/config.toml (static glibc: \
               target/x86_64-unknown-linux-gnu/release/bootcast) and run that, or pass --agent PATH";
    match elf::has_interpreter(&bytes) {
        Ok(false) => {}
        Ok(true) => {
            return Err(BootEnvError::Input(format!(
                "the agent {} is dynamically linked and cannot run in the initramfs: {how}",
                path.display()
            )))
        }
        Err(e) => {
            return Err(BootEnvError::Input(format!(
                "the agent {}: {e}: {how}",
                path.display()
            )))
        }
    }
    let Some(objcopy) = which("objcopy") else {
        progress(
            "note: objcopy not found (package binutils): the agent is copied with its debug info",
        );
        return Ok((bytes, false));
    };
    let tmp_in = tmp_dir.join(".agent-in.tmp");
    let tmp_out = tmp_dir.join(".agent-out.tmp");
    fs::write(&tmp_in, &bytes).ctx(|| format!("write {}", tmp_in.display()))?;
    let status = Command::new(objcopy)
        .arg("--strip-debug")
        .arg(&tmp_in)
        .arg(&tmp_out)
        .status();
    let _ = fs::remove_file(&tmp_in);
    let stripped = match status {
        Ok(s) if s.success() => fs::read(&tmp_out).ok(),
        _ => None,
    };
    let _ = fs::remove_file(&tmp_out);
    match stripped {
        Some(s) => {
            progress(&format!(
                "agent: {} bytes, {} without debug info",
                bytes.len(),
                s.len()
            ));
            Ok((s, true))
        }
        None => {
            progress("note: objcopy --strip-debug failed: the agent is copied with its debug info");
            Ok((bytes, false))
        }
    }
}

fn agent_version(path: &Path) -> Option<String> {
    let out = Command::new(path).arg("--version").output().ok()?;
    let s = String::from_utf8_lossy(&out.stdout);
    s.split_whitespace().nth(1).map(str::to_string)
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

fn run_tool(cmd: &mut Command, tool: &str, fix: &str) -> Result<Vec<u8>> {
    if which(tool).is_none() {
        return Err(BootEnvError::Tool(format!("{tool} not found: {fix}")));
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| BootEnvError::Tool(format!("cannot run {tool} ({e}): {fix}")))?;
    if !out.status.success() {
        return Err(BootEnvError::Tool(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out.stdout)
}

// ------------------------------------------------------------------------------------ kernel

/// The kernel package `linux-image-amd64` currently depends on, from `cache` or downloaded.
fn kernel_deb_from_apt(cache: &Path, refresh: bool, progress: &dyn Fn(&str)) -> Result<PathBuf> {
    fs::create_dir_all(cache).ctx(|| format!("create {}", cache.display()))?;
    let lock_path = cache.join(".lock");
    let lock_file = File::create(&lock_path).ctx(|| format!("create {}", lock_path.display()))?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive).map_err(
        |(_, e)| BootEnvError::Io {
            context: format!("lock {}", lock_path.display()),
            source: e.into(),
        },
    )?;
    let name_file = cache.join("kernel-package");
    if !refresh {
        if let Ok(name) = fs::read_to_string(&name_file) {
            if let Some(deb) = newest_deb(cache, name.trim())? {
                progress(&format!("kernel package from the cache: {}", deb.display()));
                return Ok(deb);
            }
        }
    }
    let fix = "pass --kernel-deb PATH to a Debian linux-image-*-amd64 .deb";
    if which("apt-get").is_none() {
        return Err(BootEnvError::Tool(format!("apt-get not found: {fix}")));
    }
    // Each download goes to an empty directory first, so the new .deb is the only one there;
    // it then replaces the cached versions of the same package.
    let download = |pkg: &str| -> Result<PathBuf> {
        progress(&format!("apt-get download {pkg}"));
        let tmp = TempDir::new(cache.join(".download"))?;
        let mut cmd = Command::new("apt-get");
        if nix::unistd::geteuid().is_root() {
            // As root, apt would download as _apt, who cannot write to the cache.
            cmd.args(["-o", "APT::Sandbox::User=root"]);
        }
        cmd.args(["-qq", "download", pkg]).current_dir(&tmp.0);
        run_tool(&mut cmd, "apt-get", fix).map_err(|e| {
            BootEnvError::Tool(format!(
                "{e}\n(is the package list current? run `apt-get update` as root, or {fix})"
            ))
        })?;
        let new = newest_deb(&tmp.0, pkg)?.ok_or_else(|| {
            BootEnvError::Tool(format!("apt-get download {pkg} produced no .deb"))
        })?;
        while let Some(old) = newest_deb(cache, pkg)? {
            fs::remove_file(&old).ctx(|| format!("remove {}", old.display()))?;
        }
        let dest = cache.join(new.file_name().expect("a file name"));
        fs::rename(&new, &dest).ctx(|| format!("move {} to {}", new.display(), dest.display()))?;
        Ok(dest)
    };
    let meta = download("linux-image-amd64")?;
    let depends = run_tool(
        Command::new("dpkg-deb").arg("-f").arg(&meta).arg("Depends"),
        "dpkg-deb",
        fix,
    )?;
    let depends = String::from_utf8_lossy(&depends);
    let name = depends
        .split([',', '|'])
        .map(|d| d.split_whitespace().next().unwrap_or(""))
        .find(|d| d.starts_with("linux-image-") && d.contains('.') && d.ends_with("-amd64"))
        .ok_or_else(|| {
            BootEnvError::Tool(format!(
                "no kernel package in the Depends of {}: {depends}",
                meta.display()
            ))
        })?
        .to_string();
    let deb = download(&name)?;
    fs::write(&name_file, format!("{name}\n")).ctx(|| format!("write {}", name_file.display()))?;
    Ok(deb)
}

/// A `PKG_*.deb` in `dir` (the cache holds one version per package).
fn newest_deb(dir: &Path, pkg: &str) -> Result<Option<PathBuf>> {
    let prefix = format!("{pkg}_");
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .ctx(|| format!("list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(OsStr::to_str)
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
        .collect();
    found.sort();
    Ok(found.pop())
}

struct Kernel {
    version: String,
    vmlinuz: PathBuf,
    config: String,
    modules_dir: PathBuf,
}

fn find_kernel(root: &Path, deb: &Path) -> Result<Kernel> {
    let boot = root.join("boot");
    let mut versions: Vec<String> = fs::read_dir(&boot)
        .map_err(|e| {
            BootEnvError::Input(format!("{}: no /boot in the package ({e})", deb.display()))
        })?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("vmlinuz-"))
                .map(str::to_string)
        })
        .collect();
    versions.sort();
    let version = versions.pop().ok_or_else(|| {
        BootEnvError::Input(format!(
            "{}: no boot/vmlinuz-* (is it a linux-image package?)",
            deb.display()
        ))
    })?;
    let config_path = boot.join(format!("config-{version}"));
    let config =
        fs::read_to_string(&config_path).ctx(|| format!("read {}", config_path.display()))?;
    let modules_dir = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|d| root.join(d).join(&version))
        .find(|d| d.is_dir())
        .ok_or_else(|| {
            BootEnvError::Input(format!("{}: no modules for {version}", deb.display()))
        })?;
    Ok(Kernel {
        vmlinuz: boot.join(format!("vmlinuz-{version}")),
        version,
        config,
        modules_dir,
    })
}

struct Modules {
    /// Load order, dependencies first.
    order: Vec<String>,
    files: BTreeMap<String, Vec<u8>>,
    builtin: Vec<String>,
    missing: Vec<String>,
}

fn normalise(file_name: &str) -> Option<String> {
    let stem = file_name.split_once(".ko").map(|(s, _)| s)?;
    Some(stem.replace('-', "_"))
}

fn resolve_modules(modules_dir: &Path, wanted: &[String]) -> Result<Modules> {
    let mut index = BTreeMap::new();
    let mut stack = vec![modules_dir.join("kernel")];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).ctx(|| format!("list {}", d.display()))? {
            let e = e.ctx(|| format!("list {}", d.display()))?;
            let p = e.path();
            if e.file_type()
                .ctx(|| format!("stat {}", p.display()))?
                .is_dir()
            {
                stack.push(p);
            } else if let Some(n) = e.file_name().to_str().and_then(normalise) {
                index.insert(n, p);
            }
        }
    }
    let builtin: BTreeSet<String> = fs::read_to_string(modules_dir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.rsplit('/').next().and_then(normalise))
        .collect();
    let mut m = Modules {
        order: Vec::new(),
        files: BTreeMap::new(),
        builtin: Vec::new(),
        missing: Vec::new(),
    };
    let mut seen = BTreeSet::new();
    for w in wanted {
        add_module(w, true, &index, &builtin, &mut seen, &mut m)?;
    }
    Ok(m)
}

fn add_module(
    name: &str,
    requested: bool,
    index: &BTreeMap<String, PathBuf>,
    builtin: &BTreeSet<String>,
    seen: &mut BTreeSet<String>,
    m: &mut Modules,
) -> Result<()> {
    if !seen.insert(name.to_string()) {
        return Ok(());
    }
    let Some(path) = index.get(name) else {
        if builtin.contains(name) {
            if requested {
                m.builtin.push(name.into());
            }
        } else if requested {
            m.missing.push(name.into());
        } else {
            return Err(BootEnvError::Input(format!(
                "module {name} (a dependency) is neither a module nor built in"
            )));
        }
        return Ok(());
    };
    let bytes = read_module(path)?;
    let deps = elf::module_depends(&bytes)
        .map_err(|e| BootEnvError::Input(format!("{}: {e}", path.display())))?;
    for d in deps {
        add_module(&d, false, index, builtin, seen, m)?;
    }
    m.order.push(name.into());
    m.files.insert(name.into(), bytes);
    Ok(())
}

/// A module's ELF bytes, decompressed if the package compressed it.
fn read_module(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let raw = fs::read(path).ctx(|| format!("read {}", path.display()))?;
    if name.ends_with(".ko") {
        Ok(raw)
    } else if name.ends_with(".ko.zst") {
        zstd::decode_all(&raw[..]).ctx(|| format!("zstd -d {}", path.display()))
    } else if name.ends_with(".ko.xz") {
        run_tool(
            Command::new("xz").arg("-dc").arg(path),
            "xz",
            "install package xz-utils",
        )
    } else if name.ends_with(".ko.gz") {
        run_tool(
            Command::new("gzip").arg("-dc").arg(path),
            "gzip",
            "install package gzip",
        )
    } else {
        Err(BootEnvError::Input(format!(
            "{}: unknown module compression",
            path.display()
        )))
    }
}

// ------------------------------------------------------------------------------------ output

fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    if which("gzip").is_none() {
        return Err(BootEnvError::Tool(
            "gzip not found (the kernel has no zstd initramfs support): install package gzip"
                .into(),
        ));
    }
    let mut child = Command::new("gzip")
        .args(["-n", "-9", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .ctx(|| "run gzip".to_string())?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        stdout.read_to_end(&mut v).map(|_| v)
    });
    stdin.write_all(data).ctx(|| "write to gzip".to_string())?;
    drop(stdin);
    let out = reader
        .join()
        .expect("gzip reader thread")
        .ctx(|| "read from gzip".to_string())?;
    let status = child.wait().ctx(|| "wait for gzip".to_string())?;
    if !status.success() {
        return Err(BootEnvError::Tool(format!("gzip failed: {status}")));
    }
    Ok(out)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).ctx(|| format!("create {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .ctx(|| format!("write {}", path.display()))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx(|| format!("sync {}", dir.display()))
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(path: PathBuf) -> Result<TempDir> {
        let _ = fs::remove_dir_all(&path);
        fs::create_dir(&path).ctx(|| format!("create {}", path.display()))?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_normalise() {
        assert_eq!(normalise("virtio_net.ko").as_deref(), Some("virtio_net"));
        assert_eq!(
            normalise("ax88179_178a.ko.xz").as_deref(),
            Some("ax88179_178a")
        );
        assert_eq!(normalise("usb-storage.ko").as_deref(), Some("usb_storage"));
        assert_eq!(normalise("modules.order"), None);
    }

    #[test]
    fn load_is_none_without_a_build_and_checks_sizes() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(load(t.path()).unwrap(), None);
        let d = dir(t.path());
        fs::create_dir_all(&d).unwrap();
        fs::write(vmlinuz_path(t.path()), b"kernel").unwrap();
        fs::write(initrd_path(t.path()), b"initrd").unwrap();
        let f = |size| FileInfo {
            size,
            blake3: String::new(),
        };
        let mut info = BootEnvInfo {
            kernel_version: "6.1.0-56-amd64".into(),
            kernel_package: "linux-image.deb".into(),
            vmlinuz: f(6),
            initrd: f(6),
            initrd_compression: "zstd".into(),
            modules: vec![],
            modules_builtin: vec![],
            modules_missing: vec![],
            agent_size: 0,
            agent_stripped: false,
            busybox: String::new(),
            built_at: 0,
            bootcast_version: "0".into(),
        };
        fs::write(info_path(t.path()), serde_json::to_vec(&info).unwrap()).unwrap();
        assert_eq!(load(t.path()).unwrap(), Some(info.clone()));
        info.initrd = f(7);
        fs::write(info_path(t.path()), serde_json::to_vec(&info).unwrap()).unwrap();
        let err = load(t.path()).unwrap_err();
        assert!(matches!(err, BootEnvError::Inconsistent { .. }), "{err}");
    }

    #[test]
    fn missing_busybox_names_the_package() {
        let err = read_busybox(Path::new("/nonexistent/busybox"))
            .err()
            .unwrap();
        assert!(err.to_string().contains("busybox-static"), "{err}");
    }

    #[test]
    fn a_dynamic_agent_is_refused_with_the_fix() {
        if !Path::new("/usr/bin/env").exists() {
            println!("SKIP: a_dynamic_agent_is_refused_with_the_fix: no /usr/bin/env");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let err = read_agent(Some(Path::new("/usr/bin/env")), t.path(), &|_| {})
            .err()
            .unwrap();
        let msg = err.to_string();
        assert!(
            msg.contains("dynamically linked") && msg.contains("--agent"),
            "{msg}"
        );
    }
}

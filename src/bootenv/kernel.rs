//! The kernel package: `linux-image-amd64`'s dependency fetched with apt (cached), or a given
//! `.deb`, unpacked; its vmlinuz, config and modules directory.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::inputs::{run_tool, which};
use super::*;

/// The kernel package `linux-image-amd64` currently depends on, from `cache` or downloaded.
pub(super) fn kernel_deb_from_apt(
    cache: &Path,
    refresh: bool,
    progress: &dyn Fn(&str),
) -> Result<PathBuf> {
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
pub(super) fn newest_deb(dir: &Path, pkg: &str) -> Result<Option<PathBuf>> {
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

pub(super) struct Kernel {
    pub(super) version: String,
    pub(super) vmlinuz: PathBuf,
    pub(super) config: String,
    pub(super) modules_dir: PathBuf,
}

pub(super) fn find_kernel(root: &Path, deb: &Path) -> Result<Kernel> {
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

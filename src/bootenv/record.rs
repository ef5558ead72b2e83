//! `DATA/bootenv/bootenv.json`, the commit record of a build, and [`load`], which trusts it
//! only when the files match it.

use std::fs;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{dir, info_path, initrd_path, vmlinuz_path, BootEnvError, Context, Result};

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
    /// The agent protocol its agent speaks (that of the bootcast that built it; absent, 0:
    /// built before the number was recorded). A server hands out only a boot environment of
    /// its own agent protocol ([`BootEnvInfo::usable`]).
    #[serde(default)]
    pub agent_protocol: u32,
    /// The filesystem tools in `/usr/sbin` (with their libraries) that the agent runs to grow
    /// a filesystem after a restore: `ntfsresize`, `e2fsck`, `resize2fs` when the build host
    /// has them.
    #[serde(default)]
    pub tools: Vec<String>,
}

impl BootEnvInfo {
    /// Whether a server that speaks agent protocol `speaks` can boot PCs into it: `Err` says
    /// why not and what to run.
    pub fn usable(&self, speaks: u32) -> std::result::Result<(), String> {
        if self.agent_protocol == speaks {
            return Ok(());
        }
        Err(format!(
            "the boot environment was built by bootcast {} (agent protocol {}), this server speaks agent protocol {speaks}: rebuild it with `bootcast bootenv build` (bootcast {})",
            self.bootcast_version,
            self.agent_protocol,
            env!("CARGO_PKG_VERSION")
        ))
    }
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

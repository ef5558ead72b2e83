//! The build's inputs besides the kernel: busybox and the agent binary, and running tools.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::*;

pub(super) struct Busybox {
    pub(super) bytes: Vec<u8>,
    pub(super) version: String,
}

pub(super) fn read_busybox(path: &Path) -> Result<Busybox> {
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
pub(super) fn read_agent(
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

pub(super) fn agent_version(path: &Path) -> Option<String> {
    let out = Command::new(path).arg("--version").output().ok()?;
    let s = String::from_utf8_lossy(&out.stdout);
    s.split_whitespace().nth(1).map(str::to_string)
}

pub(super) fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

pub(super) fn run_tool(cmd: &mut Command, tool: &str, fix: &str) -> Result<Vec<u8>> {
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

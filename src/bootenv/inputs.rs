//! The build's inputs besides the kernel: busybox, the agent binary, the filesystem tools the
//! agent runs after a restore, and running tools.

use std::collections::{BTreeMap, BTreeSet};
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

/// Programs the agent runs to grow a filesystem after a restore ([`crate::agent::grow`]), and
/// the Debian package each comes from. They are the build host's dynamically linked binaries,
/// copied with the libraries `ldd` names, at the same paths.
pub const GROW_TOOLS: [(&str, &str); 3] = [
    ("ntfsresize", "ntfs-3g"),
    ("e2fsck", "e2fsprogs"),
    ("resize2fs", "e2fsprogs"),
];

/// The tools found, as archive files (path without the leading `/`, bytes, mode).
pub(super) struct Tools {
    pub(super) files: BTreeMap<String, (Vec<u8>, u32)>,
    pub(super) found: Vec<String>,
    /// Tools not on this machine, with the package to install.
    pub(super) missing: Vec<(String, String)>,
}

/// Where a tool is on the build host: `PATH`, then the sbin directories (not on a user's path).
fn find_tool(tool: &str) -> Option<PathBuf> {
    which(tool).or_else(|| {
        ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.is_file())
    })
}

/// The libraries `ldd` lists: `name => /path (0x..)` and the loader's `/path (0x..)`; the vDSO
/// (no path) is skipped; `Err` names a library `ldd` did not find.
pub(super) fn ldd_paths(out: &str) -> std::result::Result<Vec<PathBuf>, String> {
    let mut paths = Vec::new();
    for l in out.lines().map(str::trim) {
        let path = match l.split_once("=>") {
            Some((name, right)) if right.trim().starts_with("not found") => {
                return Err(format!("library {} not found", name.trim()))
            }
            Some((_, right)) => right.split_whitespace().next(),
            None => l.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            paths.push(PathBuf::from(p));
        }
    }
    Ok(paths)
}

/// The grow tools of this machine, with their libraries.
pub(super) fn read_tools() -> Result<Tools> {
    let mut tools = Tools {
        files: BTreeMap::new(),
        found: Vec::new(),
        missing: Vec::new(),
    };
    for (tool, package) in GROW_TOOLS {
        let Some(path) = find_tool(tool) else {
            tools.missing.push((tool.into(), package.into()));
            continue;
        };
        let fix = format!("install Debian package {package}, or remove it to build without {tool}");
        let bytes = fs::read(&path).ctx(|| format!("read {}", path.display()))?;
        let dynamic = super::elf::has_interpreter(&bytes)
            .map_err(|e| BootEnvError::Input(format!("{}: {e}: {fix}", path.display())))?;
        let listed = if dynamic {
            run_tool(
                Command::new("ldd").arg(&path),
                "ldd",
                "install Debian package libc-bin",
            )?
        } else {
            Vec::new()
        };
        let libs = ldd_paths(&String::from_utf8_lossy(&listed))
            .map_err(|e| BootEnvError::Input(format!("{}: {e}: {fix}", path.display())))?;
        for lib in libs {
            let key = lib.to_string_lossy().trim_start_matches('/').to_string();
            if let std::collections::btree_map::Entry::Vacant(e) = tools.files.entry(key) {
                let b =
                    fs::read(&lib).ctx(|| format!("read {} (needed by {tool})", lib.display()))?;
                e.insert((b, 0o755));
            }
        }
        tools
            .files
            .insert(format!("usr/sbin/{tool}"), (bytes, 0o755));
        tools.found.push(tool.to_string());
    }
    Ok(tools)
}

/// Every directory above `path` (`a/b/c` gives `a`, `a/b`).
pub(super) fn parents(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').map(move |(i, _)| &path[..i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_lines_give_library_paths() {
        let out = "\tlinux-vdso.so.1 (0x00007f0dbd8a9000)
\tlibntfs-3g.so.89 => /lib/x86_64-linux-gnu/libntfs-3g.so.89 (0x00007f0dbd82f000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0dbd64d000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f0dbd8ab000)
\tlibgone.so.1 => not found
";
        assert_eq!(
            ldd_paths(out).unwrap_err(),
            "library libgone.so.1 not found"
        );
        let out = out.replace("\tlibgone.so.1 => not found\n", "");
        assert_eq!(
            ldd_paths(&out).unwrap(),
            [
                "/lib/x86_64-linux-gnu/libntfs-3g.so.89",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        assert_eq!(
            parents("usr/sbin/e2fsck").collect::<Vec<_>>(),
            ["usr", "usr/sbin"]
        );
    }
}

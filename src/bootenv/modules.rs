//! Kernel modules for the initramfs: the requested ones and their dependencies (from each
//! module's `.modinfo`), dependencies first, decompressed to plain ELF.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::inputs::run_tool;
use super::*;

pub(super) struct Modules {
    /// Load order, dependencies first.
    pub(super) order: Vec<String>,
    pub(super) files: BTreeMap<String, Vec<u8>>,
    pub(super) builtin: Vec<String>,
    pub(super) missing: Vec<String>,
}

pub(super) fn normalise(file_name: &str) -> Option<String> {
    let stem = file_name.split_once(".ko").map(|(s, _)| s)?;
    Some(stem.replace('-', "_"))
}

pub(super) fn resolve_modules(modules_dir: &Path, wanted: &[String]) -> Result<Modules> {
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

pub(super) fn add_module(
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
pub(super) fn read_module(path: &Path) -> Result<Vec<u8>> {
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
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .ctx(|| format!("gunzip {}", path.display()))?;
        Ok(out)
    } else {
        Err(BootEnvError::Input(format!(
            "{}: unknown module compression",
            path.display()
        )))
    }
}

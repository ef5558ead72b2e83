//! Which local disk a task works on, for reimage and capture alike.
//!
//! Policy: `bootcast.disk=/dev/NAME` on the kernel command line, else the first disk (by name)
//! in `/sys/block` that is not removable, read-only, empty (no medium), a loop/ram/zram/optical
//! device or mounted, and holds at least the bytes needed (a reimage: the image size; a
//! capture: any size). A refusal lists every disk seen and why it was passed over.

use std::path::{Path, PathBuf};

/// Device names that are never an imaging target.
fn skipped(name: &str) -> bool {
    ["loop", "ram", "zram", "sr", "fd", "dm-", "md", "nbd"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// The disk named on the kernel command line (`bootcast.disk=`), else [`choose_disk`].
pub fn pick(named: Option<&Path>, sys: &Path, proc: &Path, need: u64) -> Result<PathBuf, String> {
    match named {
        Some(d) => Ok(d.to_path_buf()),
        None => choose_disk(sys, proc, need),
    }
}

/// The first disk that may hold `need` bytes (see the module doc for the policy).
pub fn choose_disk(sys: &Path, proc: &Path, need: u64) -> Result<PathBuf, String> {
    let mounts = std::fs::read_to_string(proc.join("mounts")).unwrap_or_default();
    let mut names: Vec<String> = std::fs::read_dir(sys.join("block"))
        .map_err(|e| format!("cannot list {}: {e}", sys.join("block").display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !skipped(n))
        .collect();
    names.sort();
    let mut seen = Vec::new();
    for name in names {
        let attr = |f: &str| {
            std::fs::read_to_string(sys.join("block").join(&name).join(f))
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        let bytes = attr("size").parse::<u64>().unwrap_or(0) * 512;
        let why = if attr("removable") == "1" {
            Some("removable")
        } else if attr("ro") == "1" {
            Some("read-only")
        } else if bytes == 0 {
            Some("empty")
        } else if mounts
            .lines()
            .any(|l| l.starts_with(&format!("/dev/{name}")))
        {
            Some("mounted")
        } else if bytes < need {
            Some("too small")
        } else {
            None
        };
        match why {
            None => return Ok(PathBuf::from("/dev").join(&name)),
            Some(w) => seen.push(format!("{name} ({bytes} bytes, {w})")),
        }
    }
    let what = if need > 0 {
        format!("no disk can take this image ({need} bytes)")
    } else {
        "no disk to capture".to_string()
    };
    Err(format!(
        "{what}: {}; name one with bootcast.disk=/dev/NAME on the kernel command line",
        if seen.is_empty() {
            "no disks found (is the disk driver in the boot environment?)".to_string()
        } else {
            seen.join(", ")
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(sys: &Path, name: &str, sectors: u64, removable: bool, ro: bool) {
        let d = sys.join("block").join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("size"), format!("{sectors}\n")).unwrap();
        std::fs::write(d.join("removable"), if removable { "1\n" } else { "0\n" }).unwrap();
        std::fs::write(d.join("ro"), if ro { "1\n" } else { "0\n" }).unwrap();
    }

    #[test]
    fn disk_policy() {
        let t = tempfile::tempdir().unwrap();
        let (sys, proc) = (t.path().join("sys"), t.path().join("proc"));
        std::fs::create_dir_all(&proc).unwrap();
        disk(&sys, "loop0", 1 << 30, false, false);
        disk(&sys, "sda", 1 << 20, true, false); // USB stick
        disk(&sys, "sdb", 1 << 20, false, true);
        disk(&sys, "vda", 1000, false, false); // 512000 bytes: too small
        disk(&sys, "vdb", 1 << 20, false, false);
        disk(&sys, "vdc", 1 << 20, false, false);
        std::fs::write(proc.join("mounts"), "/dev/vdb1 /mnt ext4 rw 0 0\n").unwrap();
        assert_eq!(
            choose_disk(&sys, &proc, 1 << 20).unwrap(),
            PathBuf::from("/dev/vdc")
        );
        let e = choose_disk(&sys, &proc, 1 << 40).unwrap_err();
        for part in [
            "sda",
            "removable",
            "read-only",
            "vda",
            "too small",
            "vdb",
            "mounted",
            "bootcast.disk=",
        ] {
            assert!(e.contains(part), "{e}");
        }
        assert!(!e.contains("loop0"));
        // a capture needs no particular size: the first usable disk, however small
        assert_eq!(
            choose_disk(&sys, &proc, 0).unwrap(),
            PathBuf::from("/dev/vda")
        );
        // the kernel command line wins
        assert_eq!(
            pick(Some(Path::new("/dev/sdb")), &sys, &proc, 0).unwrap(),
            PathBuf::from("/dev/sdb")
        );
    }

    #[test]
    fn an_empty_disk_is_never_chosen() {
        let t = tempfile::tempdir().unwrap();
        let (sys, proc) = (t.path().join("sys"), t.path().join("proc"));
        disk(&sys, "sda", 0, false, false); // a card reader without a card
        let e = choose_disk(&sys, &proc, 0).unwrap_err();
        assert!(
            e.contains("no disk to capture") && e.contains("sda (0 bytes, empty)"),
            "{e}"
        );
    }
}

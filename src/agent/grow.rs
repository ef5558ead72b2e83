//! Growing a partition after a restore onto a larger disk (`bootcast image post-deploy NAME
//! --grow N`, off by default).
//!
//! On a GPT disk larger than the image (its backup table already moved to the disk's end), the
//! partitions after N move to the disk's end, keeping their order and gaps (Windows 11 puts
//! its recovery partition after C:), partition N grows into the space freed
//! ([`crate::fsmap::table::grow_gpt`]), the kernel reads the new table, and the filesystem in N
//! grows to fill it with its own tool from the boot environment (built from the server's
//! Debian packages, see [`crate::bootenv`]):
//! - NTFS: `ntfsresize --force` (ntfs-3g). It schedules Windows' `chkdsk` for the next boot,
//!   as every NTFS resize does;
//! - ext2/3/4: `e2fsck -f -p`, then `resize2fs` (e2fsprogs).
//!
//! Anything else (FAT, swap, BitLocker, LVM, an unknown type) is not grown, and the step says
//! so. MBR disks are not grown. The agent prints `BOOTCAST-AGENT-GROW`.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::postdeploy::{
    device_numbers, is_ext, partition_node, partitions, read_superblock, Partition,
};

/// What the grow step did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum GrowOutcome {
    /// Partition `number` grew from `old_size` to `new_size` bytes; the partitions in `moved`
    /// went to the disk's end; `filesystem` says what grew inside (`ntfs`, `ext`).
    Grown {
        number: u32,
        old_size: u64,
        new_size: u64,
        moved: Vec<u32>,
        filesystem: String,
    },
    /// Nothing done, and why (the disk is not larger than the image, not a block device).
    Skipped { why: String },
}

/// An NTFS boot sector names itself at byte 3.
fn is_ntfs(first: &[u8]) -> bool {
    first.len() >= 11 && &first[3..11] == b"NTFS    "
}

/// Grows partition `number` of block device `disk` and its filesystem (see the module doc).
pub fn grow(
    disk: &Path,
    sys: &Path,
    number: u32,
    log: &mut dyn FnMut(&str),
) -> Result<GrowOutcome, String> {
    let Some((major, minor)) = device_numbers(disk)? else {
        return Ok(GrowOutcome::Skipped {
            why: format!(
                "{} is not a block device (partitions are grown on disks only)",
                disk.display()
            ),
        });
    };
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .map_err(|e| format!("opening {}: {e}", disk.display()))?;
    crate::fsmap::table::move_backup_gpt_to_end(&f)?;
    let plan = crate::fsmap::table::grow_gpt(&f, number, &mut |m| {
        log(&format!(
            "bootcast-agent: post-deploy: moving partition {} ({} bytes) from byte {} to byte {}",
            m.number, m.size, m.from, m.to
        ))
    })?;
    let Some(plan) = plan else {
        return Ok(GrowOutcome::Skipped {
            why: format!(
                "less than 1 MiB is free after the last partition of {}: nothing to grow into",
                disk.display()
            ),
        });
    };
    crate::sys::reread_partitions(&f).map_err(|e| {
        format!(
            "the partition table of {} was grown, but the kernel did not re-read it (BLKRRPART: {e}); the filesystem was not grown",
            disk.display()
        )
    })?;
    drop(f);
    let part = partitions(&sys.join(format!("dev/block/{major}:{minor}")))?
        .into_iter()
        .find(|p| p.number == number)
        .ok_or_else(|| {
            format!(
                "the kernel shows no partition {number} on {} after the grow",
                disk.display()
            )
        })?;
    let filesystem = grow_filesystem(&part, log)?;
    // The tool wrote through the partition's device, which has its own page cache: what the
    // whole disk's cache holds of that partition (read during the restore) is stale now, and
    // the host-name step reads the whole disk next.
    if let Ok(f) = std::fs::File::open(disk) {
        use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
        let _ = f.sync_all();
        let _ = posix_fadvise(&f, 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED);
    }
    let moved: Vec<u32> = plan.moves.iter().map(|m| m.number).collect();
    log(&format!(
        "BOOTCAST-AGENT-GROW part {number} {filesystem}: {} -> {} bytes; moved to the disk's end: {moved:?}",
        plan.old_size, plan.new_size
    ));
    Ok(GrowOutcome::Grown {
        number,
        old_size: plan.old_size,
        new_size: plan.new_size,
        moved,
        filesystem,
    })
}

/// Grows the filesystem on `part` to the partition's size; returns what it was.
fn grow_filesystem(part: &Partition, log: &mut dyn FnMut(&str)) -> Result<String, String> {
    let work = std::env::temp_dir().join(format!("bootcast-grow-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| format!("creating {}: {e}", work.display()))?;
    let result = partition_node(&work, part, true)
        .map_err(|e| format!("making a device node for {}: {e}", part.name))
        .and_then(|node| fill(&node, log));
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// Grows the filesystem on block device `node` (a partition, or a whole device holding one
/// filesystem) to the device's size with its own tool; returns what it was (`ntfs`, `ext`),
/// or says it was left alone (neither).
pub fn fill(node: &Path, log: &mut dyn FnMut(&str)) -> Result<String, String> {
    let first = read_superblock(node).map_err(|e| format!("reading {}: {e}", node.display()))?;
    if is_ntfs(&first) {
        let args = ["--force", "--no-progress-bar"];
        run("ntfsresize", "ntfs-3g", &args, node, &[0], log)?;
        Ok("ntfs".to_string())
    } else if is_ext(&first) {
        // exit 1: errors corrected; resize2fs wants a checked filesystem
        run("e2fsck", "e2fsprogs", &["-f", "-p"], node, &[0, 1], log)?;
        run("resize2fs", "e2fsprogs", &[], node, &[0], log)?;
        Ok("ext".to_string())
    } else {
        log(&format!(
            "bootcast-agent: post-deploy: warning: {} grew, but it holds no NTFS or ext2/3/4 filesystem: its filesystem keeps its size",
            node.display()
        ));
        Ok("not grown (neither NTFS nor ext2/3/4)".to_string())
    }
}

/// Where `tool` is: the boot environment's `/usr/sbin`, or the path.
fn find(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Runs `tool ARGS NODE`; an exit code outside `ok` is an error quoting its output.
fn run(
    tool: &str,
    package: &str,
    args: &[&str],
    node: &Path,
    ok: &[i32],
    log: &mut dyn FnMut(&str),
) -> Result<(), String> {
    let path = find(tool).ok_or_else(|| {
        format!(
            "the boot environment has no {tool}: install Debian package {package} on the server and rebuild it (`bootcast bootenv build`); the partition grew, its filesystem did not"
        )
    })?;
    log(&format!(
        "bootcast-agent: post-deploy: {tool} {} {}",
        args.join(" "),
        node.display()
    ));
    let out = Command::new(&path)
        .args(args)
        .arg(node)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {}: {e}", path.display()))?;
    let code = out.status.code().unwrap_or(-1);
    if ok.contains(&code) {
        return Ok(());
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let tail: Vec<&str> = text.lines().rev().take(8).collect();
    Err(format!(
        "{tool} failed ({}): {}",
        out.status,
        tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filesystems_are_told_by_their_first_sectors() {
        let mut b = [0u8; 2048];
        assert!(!is_ntfs(&b) && !is_ext(&b));
        b[3..11].copy_from_slice(b"NTFS    ");
        assert!(is_ntfs(&b));
        b[3..11].copy_from_slice(b"MSDOS5.0");
        assert!(!is_ntfs(&b));
    }
}

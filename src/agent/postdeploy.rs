//! Post-deploy: after the image is on the disk and before the reboot, the agent makes the
//! restored system this host's.
//!
//! Supported today: **the host name on Linux**. For every partition of the disk (MBR or GPT,
//! as the kernel reads them after `BLKRRPART`; or the whole disk if it holds a filesystem
//! without a partition table) holding an ext2/ext3/ext4 filesystem whose
//! `/etc` has `hostname` or `os-release` (a Linux root), the agent mounts it (the kernel's
//! ext4 driver, with `noexec,nosuid,nodev,noatime`), replaces `/etc/hostname` with the host's
//! name (a new file renamed over the old one, so a symlink in the image is replaced, never
//! followed), points the `127.0.1.1` line of `/etc/hosts` at the new name if there is one
//! (Debian and Ubuntu keep it), and unmounts.
//!
//! **Windows**: the name goes into the sysprep answer file's `<ComputerName>` (see
//! [`super::windows`]), on block devices and disk image files alike.
//!
//! Not supported (the restored system keeps the image's name): Windows images without an
//! answer file (or not sysprepped), the domain join (unattend or GPO), Linux roots on btrfs,
//! XFS, LVM or LUKS. A disk with neither is not an error: the step reports what it skipped.
//!
//! Partitions are reached through device nodes the agent makes itself from sysfs
//! (`/sys/dev/block/MAJ:MIN/<partition>/dev`), so it does not wait for devtmpfs.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// What the host-name step did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum HostnameOutcome {
    /// Written into these partitions (kernel names, e.g. `vda2`).
    Written { partitions: Vec<String> },
    /// Nothing to do here, and why (no Linux root on ext2/3/4, not a block device).
    Skipped { why: String },
}

/// A partition of the disk, from sysfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// Kernel name (`vda2`, `nvme0n1p2`).
    pub name: String,
    /// Its number in the partition table (0: a whole disk without one).
    pub number: u32,
    pub major: u64,
    pub minor: u64,
}

/// Writes `name` into every Windows answer file ([`super::windows`], on a disk or a disk image
/// file) and every Linux root filesystem (block devices only) on `disk` (see the module doc).
pub fn set_hostname(
    disk: &Path,
    sys: &Path,
    name: &str,
    log: &mut dyn FnMut(&str),
) -> Result<HostnameOutcome, String> {
    let mut written = match super::windows::check_name(name) {
        Ok(()) => super::windows::set_computer_name(disk, name, log)?,
        Err(why) => {
            log(&format!(
                "bootcast-agent: post-deploy: the name is not written into Windows answer files: {why}"
            ));
            Vec::new()
        }
    };
    match linux_hostname(disk, sys, name, log)? {
        HostnameOutcome::Written { partitions } => written.extend(partitions),
        HostnameOutcome::Skipped { why } if written.is_empty() => {
            return Ok(HostnameOutcome::Skipped { why })
        }
        HostnameOutcome::Skipped { .. } => {}
    }
    Ok(HostnameOutcome::Written {
        partitions: written,
    })
}

/// Writes `name` into every Linux root filesystem on block device `disk`.
fn linux_hostname(
    disk: &Path,
    sys: &Path,
    name: &str,
    log: &mut dyn FnMut(&str),
) -> Result<HostnameOutcome, String> {
    let Some((major, minor)) = device_numbers(disk)? else {
        return Ok(HostnameOutcome::Skipped {
            why: format!(
                "{} is not a block device (the host name is written on disks only)",
                disk.display()
            ),
        });
    };
    // What the export wrote must be on the disk before partitions are read through their own
    // device nodes (each has its own page cache).
    let f = OpenOptions::new()
        .read(true)
        .open(disk)
        .map_err(|e| format!("opening {}: {e}", disk.display()))?;
    f.sync_all()
        .map_err(|e| format!("flushing {}: {e}", disk.display()))?;
    let parts = if read_superblock(disk).is_ok_and(|sb| is_ext(&sb)) {
        // A filesystem on the whole disk: no partition table.
        vec![Partition {
            name: disk_name(disk),
            number: 0,
            major,
            minor,
        }]
    } else {
        // The kernel must see the partition table just written.
        crate::sys::reread_partitions(&f).map_err(|e| {
            format!(
                "re-reading the partition table of {} (BLKRRPART): {e}",
                disk.display()
            )
        })?;
        partitions(&sys.join(format!("dev/block/{major}:{minor}")))?
    };
    drop(f);
    if parts.is_empty() {
        return Ok(HostnameOutcome::Skipped {
            why: format!(
                "{} has no partitions the kernel recognises, and no filesystem on the whole disk",
                disk.display()
            ),
        });
    }
    let work = std::env::temp_dir().join(format!("bootcast-postdeploy-{}", std::process::id()));
    fs::create_dir_all(&work).map_err(|e| format!("creating {}: {e}", work.display()))?;
    let result = (|| -> Result<Vec<String>, String> {
        let mut written = Vec::new();
        for p in &parts {
            let node = partition_node(&work, p, true)
                .map_err(|e| format!("making a device node for {}: {e}", p.name))?;
            let is_ext = read_superblock(&node)
                .map(|sb| is_ext(&sb))
                .unwrap_or(false);
            if is_ext && name_partition(&work, &node, name, log)? {
                log(&format!(
                    "bootcast-agent: post-deploy: host name {name} written to /etc/hostname on {}",
                    p.name
                ));
                written.push(p.name.clone());
            }
        }
        Ok(written)
    })();
    let _ = fs::remove_dir_all(&work);
    let written = result?;
    Ok(if written.is_empty() {
        HostnameOutcome::Skipped {
            why: format!(
                "no Linux root filesystem (ext2/3/4 with /etc/hostname or /etc/os-release) on {}",
                disk.display()
            ),
        }
    } else {
        HostnameOutcome::Written {
            partitions: written,
        }
    })
}

/// The first loader of [`crate::boot::grub::LOADERS`] found on a FAT partition of `disk` (an
/// EFI system partition, mounted read-only), as `PARTITION:/EFI/...`; `None`: none found. Run
/// after a restore on UEFI: a disk without one will not boot there.
pub fn esp_loader(
    disk: &Path,
    sys: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<Option<String>, String> {
    use nix::mount::{mount, umount, MsFlags};
    let Some((major, minor)) = device_numbers(disk)? else {
        return Err(format!("{} is not a block device", disk.display()));
    };
    let f = fs::File::open(disk).map_err(|e| format!("opening {}: {e}", disk.display()))?;
    // the partition table just written, as the kernel sees it (EBUSY: already in use, and so
    // already known)
    if let Err(e) = crate::sys::reread_partitions(&f) {
        if e != nix::Error::EBUSY {
            return Err(format!(
                "re-reading the partition table of {}: {e}",
                disk.display()
            ));
        }
    }
    drop(f);
    let parts = partitions(&sys.join(format!("dev/block/{major}:{minor}")))?;
    let work = std::env::temp_dir().join(format!("bootcast-esp-{}", std::process::id()));
    fs::create_dir_all(&work).map_err(|e| format!("creating {}: {e}", work.display()))?;
    let mnt = work.join("mnt");
    let _ = fs::create_dir_all(&mnt);
    let mut found = None;
    for p in &parts {
        let node = match partition_node(&work, p, false) {
            Ok(node) => node,
            Err(e) => {
                log(&format!("bootcast-agent: post-deploy: {}: {e}", p.name));
                continue;
            }
        };
        if !read_superblock(&node).is_ok_and(|sb| is_fat(&sb)) {
            continue;
        }
        let flags =
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        if let Err(e) = mount(Some(&node), &mnt, Some("vfat"), flags, None::<&str>) {
            log(&format!(
                "bootcast-agent: post-deploy: cannot mount {} as FAT ({e}); not checked",
                p.name
            ));
            continue;
        }
        // FAT names are found whatever their case
        found = crate::boot::grub::LOADERS
            .iter()
            .find(|l| mnt.join(l.trim_start_matches('/')).is_file())
            .map(|l| format!("{}:{l}", p.name));
        let _ = umount(&mnt);
        if found.is_some() {
            break;
        }
    }
    let _ = fs::remove_dir_all(&work);
    Ok(found)
}

/// `disk`'s major and minor device numbers; `None`: it is not a block device.
pub(super) fn device_numbers(disk: &Path) -> Result<Option<(u64, u64)>, String> {
    let meta = fs::metadata(disk).map_err(|e| format!("{}: {e}", disk.display()))?;
    if !meta.file_type().is_block_device() {
        return Ok(None);
    }
    let dev = meta.rdev();
    Ok(Some((
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev),
    )))
}

/// A device node for partition `p` in `work` (the agent's own, whatever /dev holds), readable,
/// and writable when `write`.
pub(super) fn partition_node(work: &Path, p: &Partition, write: bool) -> nix::Result<PathBuf> {
    use nix::sys::stat::Mode;
    let node = work.join(&p.name);
    let _ = fs::remove_file(&node);
    let mode = if write {
        Mode::S_IRUSR | Mode::S_IWUSR
    } else {
        Mode::S_IRUSR
    };
    nix::sys::stat::mknod(
        &node,
        nix::sys::stat::SFlag::S_IFBLK,
        mode,
        nix::sys::stat::makedev(p.major, p.minor),
    )?;
    Ok(node)
}

/// A FAT boot sector: the 0x55AA signature and "FAT" where FAT12/16 or FAT32 name their type.
pub fn is_fat(first: &[u8]) -> bool {
    first.len() >= 512
        && first[510] == 0x55
        && first[511] == 0xaa
        && (first[0x36..0x39] == *b"FAT" || first[0x52..0x55] == *b"FAT")
}

/// `/dev/vda` → `vda` (through symlinks such as /dev/disk/by-id/...).
fn disk_name(disk: &Path) -> String {
    let real = fs::canonicalize(disk).unwrap_or_else(|_| disk.to_path_buf());
    real.file_name().map_or_else(
        || real.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// Mounts the ext filesystem on `node`, names it if it is a Linux root; true if it was.
fn name_partition(
    work: &Path,
    node: &Path,
    name: &str,
    log: &mut dyn FnMut(&str),
) -> Result<bool, String> {
    use nix::mount::{mount, umount, MsFlags};
    let mnt = work.join("mnt");
    fs::create_dir_all(&mnt).map_err(|e| format!("creating {}: {e}", mnt.display()))?;
    let flags = MsFlags::MS_NOEXEC | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOATIME;
    if let Err(e) = mount(Some(node), &mnt, Some("ext4"), flags, None::<&str>) {
        // Not fatal: e.g. an ext4 feature this kernel lacks, or a damaged data partition.
        log(&format!(
            "bootcast-agent: post-deploy: cannot mount {} as ext4 ({e}); skipped",
            node.display()
        ));
        return Ok(false);
    }
    let result = write_name(&mnt, name);
    let unmounted = umount(&mnt).map_err(|e| format!("unmounting {}: {e}", node.display()));
    let named = result?;
    unmounted?;
    Ok(named)
}

/// In the root filesystem mounted at `root`: if it is a Linux root, replaces `etc/hostname`
/// with `name` and points `etc/hosts`' `127.0.1.1` line at it. False if it is no Linux root.
pub fn write_name(root: &Path, name: &str) -> Result<bool, String> {
    let etc = root.join("etc");
    // `etc` itself must be a directory, not a symlink (which could lead out of the mount).
    match fs::symlink_metadata(&etc) {
        Ok(m) if m.is_dir() => {}
        _ => return Ok(false),
    }
    let exists = |f: &str| fs::symlink_metadata(etc.join(f)).is_ok();
    if !exists("hostname") && !exists("os-release") {
        return Ok(false);
    }
    replace_file(&etc, "hostname", format!("{name}\n").as_bytes())?;
    // /etc/hosts only if it is a regular file (never through a symlink).
    if fs::symlink_metadata(etc.join("hosts")).is_ok_and(|m| m.is_file()) {
        let old = fs::read_to_string(etc.join("hosts"))
            .map_err(|e| format!("reading {}: {e}", etc.join("hosts").display()))?;
        if let Some(new) = edit_hosts(&old, name) {
            replace_file(&etc, "hosts", new.as_bytes())?;
        }
    }
    Ok(true)
}

/// Writes `dir/name` as a new file renamed over the old one (keeping the old mode if any).
fn replace_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), String> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.bootcast"));
    let mode = fs::symlink_metadata(&path)
        .ok()
        .filter(|m| m.is_file())
        .map_or(0o644, |m| m.permissions().mode() & 0o7777);
    let _ = fs::remove_file(&tmp);
    let io = |e: std::io::Error| format!("writing {}: {e}", path.display());
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, &path).map_err(io)?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io)
}

/// `hosts` with its `127.0.1.1` line naming `name` (Debian's convention), or `None` when it
/// has no such line or it already does.
pub fn edit_hosts(hosts: &str, name: &str) -> Option<String> {
    let mut seen = false;
    let mut changed = false;
    let mut out = String::with_capacity(hosts.len() + name.len());
    for line in hosts.split_inclusive('\n') {
        let body = line.trim_end_matches(['\n', '\r']);
        if !seen && body.split_whitespace().next() == Some("127.0.1.1") {
            // only the first such line
            seen = true;
            let new = format!("127.0.1.1\t{name}");
            changed = body != new;
            out.push_str(&new);
            out.push_str(&line[body.len()..]);
        } else {
            out.push_str(line);
        }
    }
    changed.then_some(out)
}

/// Reads the first 2 KiB of `dev` (boot block + primary superblock of an ext filesystem).
pub(super) fn read_superblock(dev: &Path) -> std::io::Result<[u8; 2048]> {
    let mut f = File::open(dev)?;
    f.seek(SeekFrom::Start(0))?;
    let mut b = [0u8; 2048];
    f.read_exact(&mut b)?;
    Ok(b)
}

/// An ext2/3/4 superblock: magic 0xEF53 at byte 0x38 of the superblock at offset 1024.
pub fn is_ext(first_2k: &[u8]) -> bool {
    first_2k.len() >= 1024 + 0x3a && first_2k[1024 + 0x38] == 0x53 && first_2k[1024 + 0x39] == 0xef
}

/// The partitions of the disk whose sysfs directory is `disk_dir`
/// (`/sys/dev/block/MAJ:MIN`): subdirectories with a `partition` file, by partition number.
pub fn partitions(disk_dir: &Path) -> Result<Vec<Partition>, String> {
    let entries =
        fs::read_dir(disk_dir).map_err(|e| format!("listing {}: {e}", disk_dir.display()))?;
    let mut parts = Vec::new();
    for e in entries.flatten() {
        let dir: PathBuf = e.path();
        let Ok(number) = fs::read_to_string(dir.join("partition")) else {
            continue;
        };
        let Ok(dev) = fs::read_to_string(dir.join("dev")) else {
            continue;
        };
        let Some((maj, min)) = dev.trim().split_once(':') else {
            continue;
        };
        let (Ok(major), Ok(minor), Ok(n)) =
            (maj.parse(), min.parse(), number.trim().parse::<u32>())
        else {
            continue;
        };
        parts.push(Partition {
            name: e.file_name().to_string_lossy().into_owned(),
            number: n,
            major,
            minor,
        });
    }
    parts.sort_by_key(|p| p.number);
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_line_follows_the_name() {
        let h = "127.0.0.1\tlocalhost\n127.0.1.1\tdemo\n\n::1 localhost ip6-localhost\n";
        assert_eq!(
            edit_hosts(h, "room12-pc01").unwrap(),
            "127.0.0.1\tlocalhost\n127.0.1.1\troom12-pc01\n\n::1 localhost ip6-localhost\n"
        );
        // already right, or no such line: nothing to write
        assert_eq!(edit_hosts("127.0.1.1\tpc\n", "pc"), None);
        assert_eq!(edit_hosts("127.0.0.1 localhost\n", "pc"), None);
        // no final newline, CRLF kept
        assert_eq!(
            edit_hosts("127.0.1.1 a.example a", "pc").unwrap(),
            "127.0.1.1\tpc"
        );
        assert_eq!(
            edit_hosts("127.0.1.1 a\r\n", "pc").unwrap(),
            "127.0.1.1\tpc\r\n"
        );
    }

    #[test]
    fn writes_only_into_a_linux_root_and_never_through_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        // no /etc: not a Linux root
        fs::create_dir_all(&root).unwrap();
        assert!(!write_name(&root, "pc01").unwrap());
        // /etc without hostname or os-release: not one either
        fs::create_dir_all(root.join("etc")).unwrap();
        assert!(!write_name(&root, "pc01").unwrap());
        // a symlinked hostname is replaced, its target untouched
        let outside = t.path().join("outside");
        fs::write(&outside, "keep\n").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("etc/hostname")).unwrap();
        fs::write(root.join("etc/hosts"), "127.0.1.1\tdemo\n").unwrap();
        assert!(write_name(&root, "pc01").unwrap());
        assert_eq!(fs::read_to_string(&outside).unwrap(), "keep\n");
        assert!(fs::symlink_metadata(root.join("etc/hostname"))
            .unwrap()
            .is_file());
        assert_eq!(
            fs::read_to_string(root.join("etc/hostname")).unwrap(),
            "pc01\n"
        );
        assert_eq!(
            fs::read_to_string(root.join("etc/hosts")).unwrap(),
            "127.0.1.1\tpc01\n"
        );
        assert_eq!(
            fs::read_dir(root.join("etc")).unwrap().count(),
            2,
            "no temp file left"
        );
        // an /etc that is a symlink is never entered
        let other = t.path().join("other");
        fs::create_dir_all(other.join("realetc")).unwrap();
        fs::write(other.join("realetc/hostname"), "x\n").unwrap();
        std::os::unix::fs::symlink(other.join("realetc"), other.join("etc")).unwrap();
        assert!(!write_name(&other, "pc01").unwrap());
        assert_eq!(
            fs::read_to_string(other.join("realetc/hostname")).unwrap(),
            "x\n"
        );
    }

    #[test]
    fn fat_boot_sectors_are_told_apart() {
        let mut s = vec![0u8; 2048];
        assert!(!super::is_fat(&s));
        s[510] = 0x55;
        s[511] = 0xaa;
        s[0x52..0x57].copy_from_slice(b"FAT32");
        assert!(super::is_fat(&s));
        s[0x52..0x57].copy_from_slice(b"NTFS ");
        assert!(!super::is_fat(&s));
        s[0x36..0x3b].copy_from_slice(b"FAT16");
        assert!(super::is_fat(&s));
    }

    #[test]
    fn ext_magic() {
        let mut b = [0u8; 2048];
        assert!(!is_ext(&b));
        b[1024 + 0x38] = 0x53;
        b[1024 + 0x39] = 0xef;
        assert!(is_ext(&b));
        assert!(!is_ext(&b[..1024]));
    }

    #[test]
    fn partitions_from_sysfs_by_number() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("252:0");
        for (name, n, dev) in [
            ("vda10", 10, "252:10"),
            ("vda2", 2, "252:2"),
            ("vda1", 1, "252:1"),
        ] {
            fs::create_dir_all(d.join(name)).unwrap();
            fs::write(d.join(name).join("partition"), format!("{n}\n")).unwrap();
            fs::write(d.join(name).join("dev"), format!("{dev}\n")).unwrap();
        }
        // not partitions: queue/, holders/, a file
        fs::create_dir_all(d.join("queue")).unwrap();
        fs::write(d.join("size"), "1000\n").unwrap();
        let p = partitions(&d).unwrap();
        assert_eq!(
            p.iter()
                .map(|p| (p.name.as_str(), p.number, p.minor))
                .collect::<Vec<_>>(),
            [("vda1", 1, 1), ("vda2", 2, 2), ("vda10", 10, 10)]
        );
        assert_eq!(p[0].major, 252);
    }
}

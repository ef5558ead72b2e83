//! Disk images with real filesystems, made without root and without Windows: partition images
//! full of random bytes (the old data a reference PC's free space holds), formatted with
//! dosfstools / ntfs-3g / e2fsprogs, filled with files, and copied into a GPT disk image.

use std::path::{Path, PathBuf};
use std::process::Command;

use rand::{RngCore, SeedableRng};

use super::Lab;

pub const MIB: u64 = 1 << 20;

pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// True when every tool is there; else a SKIP line naming what is missing.
pub fn tools(test: &str, cmds: &[&str]) -> bool {
    let missing: Vec<&str> = cmds.iter().copied().filter(|c| !have(c)).collect();
    if missing.is_empty() {
        return true;
    }
    super::skip(
        test,
        &format!(
            "{} not installed (scripts/test.sh installs them as root)",
            missing.join(", ")
        ),
    );
    false
}

pub fn random(len: u64, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len as usize];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// Runs `cmd`, requires success, returns its stdout.
pub fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A partition image of `len` bytes full of random bytes (old data a filesystem will not see).
pub fn old_data(lab: &Lab, name: &str, len: u64, seed: u64) -> PathBuf {
    lab.file(name, &random(len, seed))
}

/// Writes a disk image `name` of `size` bytes (zeros) with a GPT of `parts` (sgdisk type code,
/// partition image) from 1 MiB on, each copied in place; returns (disk, [(start, len)]).
pub fn gpt_disk(
    lab: &Lab,
    name: &str,
    size: u64,
    parts: &[(&str, &Path)],
) -> (PathBuf, Vec<(u64, u64)>) {
    let d = lab.path(name);
    std::fs::File::create(&d).unwrap().set_len(size).unwrap();
    let mut args = vec![];
    let mut start = MIB;
    let mut layout = vec![];
    for (i, (code, part)) in parts.iter().enumerate() {
        let len = std::fs::metadata(part).unwrap().len();
        let n = i + 1;
        args.push(format!("-n{n}:{}:{}", start / 512, (start + len) / 512 - 1));
        args.push(format!("-t{n}:{code}"));
        layout.push((start, len));
        start += len;
    }
    args.push(s(&d).to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    sh("sgdisk", &args);
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(&d).unwrap();
    for ((start, _), (_, part)) in layout.iter().zip(parts) {
        f.write_all_at(&std::fs::read(part).unwrap(), *start)
            .unwrap();
    }
    (d, layout)
}

/// The bytes of `disk` at `(start, len)` written to a file of their own (a partition image).
pub fn extract(lab: &Lab, disk: &Path, (start, len): (u64, u64), name: &str) -> PathBuf {
    let bytes = std::fs::read(disk).unwrap();
    lab.file(name, &bytes[start as usize..(start + len) as usize])
}

/// The tools [`windows_disk`] needs.
pub const WINDOWS_TOOLS: [&str; 8] = [
    "sgdisk",
    "mkfs.vfat",
    "mmd",
    "mcopy",
    "fsck.vfat",
    "mkntfs",
    "ntfscp",
    "ntfscat",
];

/// A Windows-like GPT disk: a FAT32 ESP (Windows' boot manager and the fallback loader) and an
/// NTFS C: holding files of the given sizes, free space full of old random bytes; with
/// [`windows_disk_with_recovery`], an NTFS recovery partition after C: as Windows 11 has.
pub struct WindowsDisk {
    pub path: PathBuf,
    /// (start, len) of the ESP, of C: and of the recovery partition if any
    pub layout: Vec<(u64, u64)>,
    /// (partition: "esp", "c" or "recovery", path inside it, bytes)
    pub files: Vec<(&'static str, String, Vec<u8>)>,
}

impl WindowsDisk {
    pub fn file_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.2.len() as u64).sum()
    }

    /// Every file of the image, read back from `disk` (a restore of it) with mtools and
    /// ntfs-3g: panics naming the first that differs.
    pub fn assert_files(&self, lab: &Lab, disk: &Path) {
        self.assert_files_at(lab, disk, &self.layout)
    }

    /// [`WindowsDisk::assert_files`] on a disk whose partitions are at `layout` (grown, moved).
    pub fn assert_files_at(&self, lab: &Lab, disk: &Path, layout: &[(u64, u64)]) {
        let esp = extract(lab, disk, layout[0], "esp-out.img");
        let c = extract(lab, disk, layout[1], "c-out.img");
        let recovery = layout
            .get(2)
            .map(|&at| extract(lab, disk, at, "recovery-out.img"));
        for (fs, name, bytes) in &self.files {
            let got = if *fs == "esp" {
                let out = lab.path("out.bin");
                sh(
                    "mcopy",
                    &["-n", "-i", s(&esp), &format!("::{name}"), s(&out)],
                );
                std::fs::read(&out).unwrap()
            } else {
                let part = if *fs == "c" {
                    &c
                } else {
                    recovery.as_ref().unwrap()
                };
                // -f: a grown NTFS is marked for chkdsk at its next Windows boot
                let out = Command::new("ntfscat")
                    .arg("-f")
                    .arg(part)
                    .arg(name)
                    .output()
                    .unwrap();
                assert!(out.status.success(), "ntfscat {name}");
                out.stdout
            };
            assert!(got == *bytes, "{fs}:{name} differs after the restore");
        }
    }
}

/// Builds a [`WindowsDisk`] of `size` bytes: ESP of `esp` bytes, C: of `c` bytes holding files
/// of `sizes` bytes.
pub fn windows_disk(lab: &Lab, size: u64, esp: u64, c: u64, sizes: &[u64]) -> WindowsDisk {
    windows_disk_with_recovery(lab, size, esp, c, sizes, 0)
}

/// [`windows_disk`] with, when `recovery` is not 0, a recovery partition of `recovery` bytes
/// after C: (NTFS, type Windows RE, holding a `winre.wim` of 2 MiB).
pub fn windows_disk_with_recovery(
    lab: &Lab,
    size: u64,
    esp: u64,
    c: u64,
    sizes: &[u64],
    recovery: u64,
) -> WindowsDisk {
    let esp_img = old_data(lab, "esp.img", esp, 1);
    sh("mkfs.vfat", &["-F", "32", "-n", "SYSTEM", s(&esp_img)]);
    let mut files: Vec<(&str, String, Vec<u8>)> = vec![
        (
            "esp",
            "EFI/Microsoft/Boot/bootmgfw.efi".into(),
            random(1536 << 10, 10),
        ),
        ("esp", "EFI/BOOT/BOOTX64.EFI".into(), random(2 * MIB, 11)),
    ];
    sh(
        "mmd",
        &[
            "-i",
            s(&esp_img),
            "::EFI",
            "::EFI/Microsoft",
            "::EFI/Microsoft/Boot",
            "::EFI/BOOT",
        ],
    );
    let c_img = old_data(lab, "c.img", c, 2);
    sh("mkntfs", &["-Q", "-F", "-q", "-L", "Windows", s(&c_img)]);
    for (i, &len) in sizes.iter().enumerate() {
        files.push(("c", format!("file{i}.bin"), random(len, 20 + i as u64)));
    }
    let r_img = old_data(lab, "recovery.img", recovery.max(MIB), 3);
    if recovery > 0 {
        sh("mkntfs", &["-Q", "-F", "-q", "-L", "Recovery", s(&r_img)]);
        files.push(("recovery", "winre.wim".into(), random(2 * MIB, 30)));
    }
    for (fs, name, bytes) in &files {
        let src = lab.file("src.bin", bytes);
        match *fs {
            "esp" => sh("mcopy", &["-i", s(&esp_img), s(&src), &format!("::{name}")]),
            "c" => sh("ntfscp", &["-q", s(&c_img), s(&src), name]),
            _ => sh("ntfscp", &["-q", s(&r_img), s(&src), name]),
        };
    }
    let mut parts = vec![("ef00", esp_img.as_path()), ("0700", c_img.as_path())];
    if recovery > 0 {
        parts.push(("2700", r_img.as_path()));
    }
    let (path, layout) = gpt_disk(lab, "windows.img", size, &parts);
    for p in [esp_img, c_img, r_img] {
        std::fs::remove_file(p).unwrap();
    }
    WindowsDisk {
        path,
        layout,
        files,
    }
}

/// `sgdisk -i N`: (first, last) sector of partition N of `disk`.
pub fn sectors(disk: &Path, n: u32) -> (u64, u64) {
    let out = sh("sgdisk", &["-i", &n.to_string(), s(disk)]);
    let field = |name: &str| -> u64 {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("sgdisk -i {n}: no {name}\n{out}"))
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    (field("First sector:"), field("Last sector:"))
}

/// Where a grown restore of a [`windows_disk_with_recovery`] put C: and the recovery
/// partition (start, len in bytes), and the NTFS volume size of C:.
pub struct Grown {
    pub c: (u64, u64),
    pub recovery: (u64, u64),
    pub volume: u64,
}

/// `disk` holds `w` restored with `--grow 2` onto a larger disk: `sgdisk -v` clean; the ESP
/// and C: start where they did; the recovery partition kept its size and ends within 1 MiB of
/// the disk's last usable sector, C: running up to it; its used bytes are the image's; C:'s
/// NTFS fills C: (`ntfsinfo`) and passes `ntfsfix -n`; every file reads back identical.
pub fn assert_grown(lab: &Lab, w: &WindowsDisk, disk: &Path) -> Grown {
    let verify = sh("sgdisk", &["-v", s(disk)]);
    assert!(verify.contains("No problems found"), "sgdisk -v: {verify}");
    let size = std::fs::metadata(disk).unwrap().len();
    let (c_first, c_last) = sectors(disk, 2);
    let (r_first, r_last) = sectors(disk, 3);
    let last_usable = size / 512 - 34;
    assert!(
        last_usable - r_last < 2048,
        "the recovery partition ends at sector {r_last}, not within 1 MiB of {last_usable}"
    );
    assert_eq!(
        c_last + 1,
        r_first,
        "C: ends where the recovery partition starts"
    );
    assert_eq!((r_last - r_first + 1) * 512, w.layout[2].1, "recovery size");
    assert_eq!(c_first * 512, w.layout[1].0, "C: starts where it did");
    assert_eq!(
        sectors(disk, 1).0 * 512,
        w.layout[0].0,
        "the ESP starts where it did"
    );
    let c = (c_first * 512, (c_last - c_first + 1) * 512);
    let recovery = (r_first * 512, w.layout[2].1);

    // the image's used bytes: in the ESP in place, in the recovery partition at its new place
    let want = std::fs::read(&w.path).unwrap();
    let got = std::fs::read(disk).unwrap();
    let map = super::used_ranges(&w.path);
    let (esp_at, esp_len) = w.layout[0];
    if let Some(at) = super::first_used_difference(&map, &want, &got, esp_at..esp_at + esp_len) {
        panic!("ESP byte {at} differs from the image");
    }
    let (old_at, len) = w.layout[2];
    let mut moved_back = want.clone();
    moved_back[old_at as usize..(old_at + len) as usize]
        .copy_from_slice(&got[recovery.0 as usize..(recovery.0 + len) as usize]);
    if let Some(at) = super::first_used_difference(&map, &want, &moved_back, old_at..old_at + len) {
        panic!(
            "recovery partition byte {} (moved to byte {}) differs from the image",
            at - old_at,
            recovery.0
        );
    }

    let c_img = extract(lab, disk, c, "c-grown.img");
    let info = sh("ntfsinfo", &["-m", "-f", s(&c_img)]);
    let field = |name: &str| -> u64 {
        info.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .unwrap_or_else(|| panic!("ntfsinfo: no {name}\n{info}"))
            .trim()
            .parse()
            .unwrap()
    };
    let volume = field("Volume Size in Clusters:") * field("Cluster Size:");
    assert!(
        volume <= c.1 && volume + 2 * 4096 >= c.1,
        "the NTFS volume of C: is {volume} bytes in a partition of {}",
        c.1
    );
    sh("ntfsfix", &["-n", s(&c_img)]);
    w.assert_files_at(lab, disk, &[w.layout[0], c, recovery]);
    Grown {
        c,
        recovery,
        volume,
    }
}

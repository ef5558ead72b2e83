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
/// NTFS C: holding files of the given sizes, free space full of old random bytes.
pub struct WindowsDisk {
    pub path: PathBuf,
    /// (start, len) of the ESP and of C:
    pub layout: Vec<(u64, u64)>,
    /// (partition: "esp" or "c", path inside it, bytes)
    pub files: Vec<(&'static str, String, Vec<u8>)>,
}

impl WindowsDisk {
    pub fn file_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.2.len() as u64).sum()
    }

    /// Every file of the image, read back from `disk` (a restore of it) with mtools and
    /// ntfs-3g: panics naming the first that differs.
    pub fn assert_files(&self, lab: &Lab, disk: &Path) {
        let esp = extract(lab, disk, self.layout[0], "esp-out.img");
        let c = extract(lab, disk, self.layout[1], "c-out.img");
        for (fs, name, bytes) in &self.files {
            let got = if *fs == "esp" {
                let out = lab.path("out.bin");
                sh(
                    "mcopy",
                    &["-n", "-i", s(&esp), &format!("::{name}"), s(&out)],
                );
                std::fs::read(&out).unwrap()
            } else {
                let out = Command::new("ntfscat").arg(&c).arg(name).output().unwrap();
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
    for (fs, name, bytes) in &files {
        let src = lab.file("src.bin", bytes);
        if *fs == "esp" {
            sh("mcopy", &["-i", s(&esp_img), s(&src), &format!("::{name}")]);
        } else {
            sh("ntfscp", &["-q", s(&c_img), s(&src), name]);
        }
    }
    let (path, layout) = gpt_disk(
        lab,
        "windows.img",
        size,
        &[("ef00", &esp_img), ("0700", &c_img)],
    );
    for p in [esp_img, c_img] {
        std::fs::remove_file(p).unwrap();
    }
    WindowsDisk {
        path,
        layout,
        files,
    }
}

//! Used-block maps, end to end through `bootcast image add` / `image export`: a Windows-like GPT
//! disk (FAT32 ESP + NTFS, made with dosfstools and ntfs-3g, no Windows needed) and a Linux one
//! (ext4), whose free space holds random bytes as a reference PC's does. Only what the files use
//! is stored; the export, written over a disk full of other random bytes (left alone where no
//! filesystem looks), passes every filesystem's checker and gives every file back. Partitions
//! that cannot be mapped safely (BitLocker, unknown, NTFS dirty or hibernated) are captured raw
//! with the reason shown.
//!
//! No root needed: filesystems are made in image files and copied into the disk image.

mod common;

use std::path::Path;

use common::disks::*;
use common::*;

#[test]
fn a_windows_disk_stores_only_what_its_files_use_and_restores_over_old_bytes() {
    let t = "a_windows_disk_stores_only_what_its_files_use_and_restores_over_old_bytes";
    if !tools(t, &WINDOWS_TOOLS) || !tools(t, &["ntfsfix"]) {
        return;
    }
    let lab = Lab::new();
    let w = windows_disk(
        &lab,
        512 * MIB,
        64 * MIB,
        446 * MIB,
        &[20 * MIB, 10 * MIB, 5 * MIB, 37 << 10],
    );
    let (d, file_bytes) = (&w.path, w.file_bytes());
    let mapped = lab.json(&["image", "add", "win11", s(d)]);
    let raw = lab.json(&["image", "add", "win11-raw", s(d), "--raw"]);
    let stored = mapped["stored_bytes"].as_u64().unwrap();
    say(&format!(
        "windows disk 512 MiB, files {file_bytes} bytes: mapped stores {stored} bytes ({:.3} x the files), raw stores {} ({:.1} x); unused {}",
        stored as f64 / file_bytes as f64,
        raw["stored_bytes"],
        raw["stored_bytes"].as_u64().unwrap() as f64 / stored as f64,
        mapped["unused_bytes"]
    ));
    assert!(
        stored as f64 <= 1.15 * file_bytes as f64,
        "stored {stored} bytes for {file_bytes} bytes of files: {mapped}"
    );
    let parts = mapped["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 2, "{mapped}");
    assert_eq!(parts[0]["fs"], "fat32", "{mapped}");
    assert_eq!(parts[1]["fs"], "ntfs", "{mapped}");
    assert!(parts.iter().all(|p| p["mapped"] == true), "{mapped}");
    // a raw capture keeps every byte, and the id it always had
    assert_eq!(raw["unused_bytes"], 0);
    assert_ne!(raw["version"], mapped["version"]);

    // Restore over a disk full of other old data: the unused runs keep it.
    let target = lab.file("target.img", &random(512 * MIB, 3));
    let before = std::fs::read(&target).unwrap();
    let spec = format!("win11@{}", mapped["version"].as_str().unwrap());
    let r = lab.json(&["image", "export", &spec, s(&target), "--seed", s(&target)]);
    assert_eq!(r["unused"], mapped["unused_bytes"], "{r}");
    let map = assert_restored(d, &target);
    let after = std::fs::read(&target).unwrap();
    let first = map.unused.first().expect("an unused run").clone();
    assert_eq!(
        after[first.start as usize..first.end as usize],
        before[first.start as usize..first.end as usize],
        "an unused run was written"
    );
    w.assert_files(&lab, &target);

    // `image show` tells per partition what was stored and how
    let show = lab.run(&["image", "show", &spec]);
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(
        text.contains("part 2") && text.contains("ntfs") && text.contains("mapped"),
        "{text}"
    );
}

#[test]
fn an_ext4_disk_stores_only_what_its_files_use() {
    let t = "an_ext4_disk_stores_only_what_its_files_use";
    if !tools(t, &["sgdisk", "mkfs.ext4", "e2fsck", "debugfs"]) {
        return;
    }
    let lab = Lab::new();
    let root = lab.path("root");
    std::fs::create_dir_all(root.join("etc/app")).unwrap();
    let files = [
        ("big.bin", random(12 * MIB, 30)),
        ("etc/app/medium.bin", random(3 * MIB, 31)),
        ("etc/hostname", b"reference-pc\n".to_vec()),
    ];
    for (name, bytes) in &files {
        std::fs::write(root.join(name), bytes).unwrap();
    }
    let file_bytes: u64 = files.iter().map(|f| f.1.len() as u64).sum();
    let p = old_data(&lab, "root.img", 200 * MIB, 4);
    // inode tables and journal written now, as a system in use has them (not left to the kernel)
    sh(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-E",
            "nodiscard,lazy_itable_init=0,lazy_journal_init=0",
            "-d",
            s(&root),
            s(&p),
        ],
    );
    let (d, layout) = gpt_disk(&lab, "disk.img", 256 * MIB, &[("8300", &p)]);
    let a = lab.json(&["image", "add", "linux", s(&d)]);
    let stored = a["stored_bytes"].as_u64().unwrap();
    say(&format!(
        "ext4 disk 256 MiB, files {file_bytes} bytes: stored {stored} ({:.3} x)",
        stored as f64 / file_bytes as f64
    ));
    assert!(stored as f64 <= 1.15 * file_bytes as f64, "{a}");
    assert_eq!(a["partitions"][0]["fs"], "ext4", "{a}");

    let target = lab.file("target.img", &random(256 * MIB, 5));
    let spec = format!("linux@{}", a["version"].as_str().unwrap());
    lab.json(&["image", "export", &spec, s(&target), "--seed", s(&target)]);
    assert_restored(&d, &target);
    let out = extract(&lab, &target, layout[0], "root-out.img");
    for (name, bytes) in &files {
        let dump = lab.path("dump.bin");
        sh(
            "debugfs",
            &["-R", &format!("dump /{name} {}", s(&dump)), s(&out)],
        );
        assert!(std::fs::read(&dump).unwrap() == *bytes, "{name} differs");
    }
}

/// Sets the dirty flag in `$Volume` of the NTFS image `img` (as Windows leaves it after a
/// crash), in MFT record 3 and its copy in `$MFTMirr`, found by walking the record's attributes
/// (not with the crate the mapper uses); checked with ntfs-3g's own ntfsinfo.
fn mark_dirty(img: &Path) {
    let mut b = std::fs::read(img).unwrap();
    let le = |b: &[u8], at: usize, n: usize| {
        let mut v = [0u8; 8];
        v[..n].copy_from_slice(&b[at..at + n]);
        u64::from_le_bytes(v) as usize
    };
    let cluster = le(&b, 0x0B, 2) * le(&b, 0x0D, 1);
    let (mft, mirror) = (le(&b, 0x30, 8) * cluster, le(&b, 0x38, 8) * cluster);
    let record = mft + 3 * 1024;
    assert_eq!(&b[record..record + 4], b"FILE");
    let mut attr = record + le(&b, record + 0x14, 2);
    let flags = loop {
        let (kind, len) = (le(&b, attr, 4), le(&b, attr + 4, 4));
        assert_ne!(kind, 0xFFFF_FFFF, "$Volume has no volume information");
        if kind == 0x70 {
            // resident value; flags: u16 after 8 reserved bytes and the version
            break attr + le(&b, attr + 0x14, 2) + 10;
        }
        attr += len;
    };
    assert!(
        flags % 512 < 510,
        "the flags would sit under an update sequence fixup"
    );
    b[flags] |= 1;
    b[flags - mft + mirror] |= 1;
    std::fs::write(img, &b).unwrap();
    let info = sh("ntfsinfo", &["-m", "-f", s(img)]);
    assert!(info.contains("Volume Flags: 0x0001"), "{info}");
}

#[test]
fn partitions_that_cannot_be_mapped_safely_are_captured_raw_with_the_reason() {
    let t = "partitions_that_cannot_be_mapped_safely_are_captured_raw_with_the_reason";
    if !tools(t, &["sgdisk", "mkntfs", "ntfscp", "ntfsinfo"]) {
        return;
    }
    let lab = Lab::new();
    let mut bitlocker = random(16 * MIB, 6);
    bitlocker[3..11].copy_from_slice(b"-FVE-FS-");
    let bitlocker = lab.file("bl.img", &bitlocker);
    let unknown = old_data(&lab, "unknown.img", 16 * MIB, 7);
    let dirty = old_data(&lab, "dirty.img", 32 * MIB, 8);
    sh("mkntfs", &["-Q", "-F", "-q", s(&dirty)]);
    mark_dirty(&dirty);
    let hibernated = old_data(&lab, "hib.img", 32 * MIB, 9);
    sh("mkntfs", &["-Q", "-F", "-q", s(&hibernated)]);
    let mut hiberfil = b"HIBR".to_vec();
    hiberfil.extend(random(64 << 10, 12));
    let src = lab.file("hiberfil.sys", &hiberfil);
    sh("ntfscp", &["-q", s(&hibernated), s(&src), "hiberfil.sys"]);
    let (d, _) = gpt_disk(
        &lab,
        "disk.img",
        100 * MIB,
        &[
            ("0700", &bitlocker),
            ("8300", &unknown),
            ("0700", &dirty),
            ("0700", &hibernated),
        ],
    );
    let a = lab.json(&["image", "add", "odd", s(&d)]);
    let parts = a["partitions"].as_array().unwrap();
    let reasons: Vec<String> = parts
        .iter()
        .map(|p| {
            assert_eq!(p["mapped"], false, "{p}");
            p["reason"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    say(&format!("raw partitions: {reasons:?}"));
    assert_eq!(parts[0]["fs"], "bitlocker");
    assert!(reasons[0].contains("BitLocker"), "{}", reasons[0]);
    assert!(reasons[1].contains("no known filesystem"), "{}", reasons[1]);
    assert!(reasons[2].contains("dirty"), "{}", reasons[2]);
    assert!(reasons[3].contains("hibernated"), "{}", reasons[3]);
    // every byte of them is kept: nothing unused, and the export is the disk
    assert_eq!(a["unused_bytes"], 0, "{a}");
    let spec = format!("odd@{}", a["version"].as_str().unwrap());
    let out = lab.export(&spec, "out.img");
    assert!(
        out == std::fs::read(&d).unwrap(),
        "a raw image restores byte for byte"
    );
    let show = lab.run(&["image", "show", &spec]);
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(text.contains("raw: NTFS is marked dirty"), "{text}");
}

#[test]
fn a_gpt_image_on_a_larger_disk_gets_its_backup_table_at_the_disk_end() {
    let t = "a_gpt_image_on_a_larger_disk_gets_its_backup_table_at_the_disk_end";
    if !tools(t, &["sgdisk", "mkfs.vfat"]) {
        return;
    }
    let lab = Lab::new();
    let esp = old_data(&lab, "esp.img", 40 * MIB, 13);
    sh("mkfs.vfat", &["-F", "32", s(&esp)]);
    let (d, _) = gpt_disk(&lab, "disk.img", 64 * MIB, &[("ef00", &esp)]);
    // the image written to a disk twice its size, as a restore does
    let big = lab.path("big.img");
    std::fs::copy(&d, &big).unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&big)
        .unwrap();
    f.set_len(128 * MIB).unwrap();
    let before = std::process::Command::new("sgdisk")
        .arg("-v")
        .arg(&big)
        .output()
        .unwrap();
    let before = String::from_utf8_lossy(&before.stdout).to_string();
    assert!(
        !before.contains("No problems found"),
        "the moved image should need fixing:\n{before}"
    );
    let lba = bootcast::fsmap::table::move_backup_gpt_to_end(&f).unwrap();
    assert_eq!(lba, Some(128 * MIB / 512 - 1));
    let after = sh("sgdisk", &["-v", s(&big)]);
    assert!(after.contains("No problems found"), "{after}");
    // the partition is where it was, and nothing else to do a second time
    assert!(sh("sgdisk", &["-i", "1", s(&big)]).contains("First sector: 2048"));
    assert_eq!(
        bootcast::fsmap::table::move_backup_gpt_to_end(&f).unwrap(),
        None
    );
}

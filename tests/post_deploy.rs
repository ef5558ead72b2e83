//! Post-deploy on a real block device: the demo master on a loop device (with partition
//! scanning), `bootcast agent post-deploy` writes the host name into its ext4 root, and
//! `debugfs` / `e2fsck` on the image file afterwards see the new name in a clean filesystem.
//! Needs root (loop devices, mount); prints SKIP without.

mod common;

use std::process::Command;

use common::{demo_image, stderr, Lab, BIN};

/// Partition 2 (ext4) of the demo master starts at 48 MiB (images/README.md).
const P2_OFFSET: u64 = 48 << 20;

/// A loop device over a file, detached on drop.
struct Loop(String);

impl Loop {
    fn attach(file: &std::path::Path, args: &[&str]) -> Loop {
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .args(args)
            .arg(file)
            .output()
            .expect("run losetup (util-linux)");
        assert!(out.status.success(), "losetup: {}", stderr(&out));
        Loop(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// A file of the demo master's ext4 partition in image `img`.
fn debugfs_cat(img: &std::path::Path, file: &str) -> String {
    common::debugfs_cat(&format!("{}?offset={P2_OFFSET}", img.display()), file)
}

#[test]
fn host_name_goes_into_the_ext4_root_of_a_restored_disk() {
    if !common::is_root() {
        common::skip(
            "host_name_goes_into_the_ext4_root_of_a_restored_disk",
            "needs root (loop devices, mount)",
        );
        return;
    }
    let lab = Lab::new();
    let img = lab.path("disk.img");
    std::fs::copy(demo_image("v1"), &img).unwrap();
    assert_eq!(debugfs_cat(&img, "etc/hostname"), "demo\n");

    let post_deploy = |dev: &str, name: &str| {
        let out = Command::new(BIN)
            .args(["--json", "agent", "post-deploy", "--disk", dev])
            .args(["--hostname", name])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let short = |dev: &Loop| dev.0.trim_start_matches("/dev/").to_string();

    // The whole disk with its partition table, where the kernel reads partition tables (the
    // boot environment's Debian kernel does; some minimal kernels have no partition parsers).
    let dev = Loop::attach(&img, &["--partscan"]);
    let part2 = format!("/sys/block/{0}/{0}p2", short(&dev));
    if std::path::Path::new(&part2).exists() {
        let r = post_deploy(&dev.0, "room12-pc00");
        // partition 1 (FAT) is looked at and left alone
        assert_eq!(
            r,
            serde_json::json!({"result": "written", "partitions": [format!("{}p2", short(&dev))]})
        );
        drop(dev);
        assert_eq!(debugfs_cat(&img, "etc/hostname"), "room12-pc00\n");
    } else {
        drop(dev);
        common::say("post_deploy: this kernel reads no partition tables on loop devices; the partitioned disk is covered by tests/reimage_vm.rs (Debian kernel)");
    }
    // Partition 2 alone, as a disk holding a filesystem without a partition table.
    let dev = Loop::attach(
        &img,
        &[
            "--offset",
            &P2_OFFSET.to_string(),
            "--sizelimit",
            &(32u64 << 20).to_string(),
        ],
    );
    let r = post_deploy(&dev.0, "room12-pc01");
    assert_eq!(
        r,
        serde_json::json!({"result": "written", "partitions": [short(&dev)]})
    );
    drop(dev);

    assert_eq!(debugfs_cat(&img, "etc/hostname"), "room12-pc01\n");
    // the other files are untouched, the filesystem is clean
    assert_eq!(debugfs_cat(&img, "etc/bootcast-demo-version"), "v1\n");
    let p2 = lab.path("p2.ext4");
    let copy = Command::new("dd")
        .arg(format!("if={}", img.display()))
        .arg(format!("of={}", p2.display()))
        .args(["bs=1M", "skip=48", "count=32", "status=none"])
        .status()
        .unwrap();
    assert!(copy.success());
    let fsck = Command::new("e2fsck").arg("-fn").arg(&p2).output().unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck after post-deploy: {}{}",
        String::from_utf8_lossy(&fsck.stdout),
        stderr(&fsck)
    );

    // a regular file is skipped with the reason, and nothing changes
    let before = std::fs::read(&img).unwrap();
    let out = Command::new(BIN)
        .args(["--json", "agent", "post-deploy", "--disk"])
        .arg(&img)
        .args(["--hostname", "other"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["result"], "skipped");
    assert!(
        r["why"].as_str().unwrap().contains("not a block device"),
        "{r}"
    );
    assert!(std::fs::read(&img).unwrap() == before);

    // a bad name is refused before anything is touched
    let out = Command::new(BIN)
        .args([
            "agent",
            "post-deploy",
            "--disk",
            "/dev/null",
            "--hostname",
            "a_b",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("invalid host name"),
        "{}",
        stderr(&out)
    );
}

/// Restore onto a disk twice the image's size with `--grow 2` (the agent's grow step, run by
/// `bootcast agent post-deploy` on a loop device): C: (NTFS) fills the disk, the recovery
/// partition after it moves to the disk's end byte for byte, the GPT is valid (`sgdisk -v`),
/// ntfs-3g sees the grown volume, and every file reads back identical.
#[test]
fn grow_fills_a_larger_disk_and_moves_the_recovery_partition_to_its_end() {
    const NAME: &str = "grow_fills_a_larger_disk_and_moves_the_recovery_partition_to_its_end";
    if !common::is_root() {
        common::skip(NAME, "needs root (loop devices)");
        return;
    }
    let mut tools = common::disks::WINDOWS_TOOLS.to_vec();
    tools.extend(["ntfsresize", "ntfsinfo"]);
    if !common::disks::tools(NAME, &tools) {
        return;
    }
    const MIB: u64 = 1 << 20;
    let lab = Lab::new();
    let w = common::disks::windows_disk_with_recovery(
        &lab,
        96 * MIB,
        40 * MIB,
        40 * MIB,
        &[6 * MIB, 3 * MIB],
        8 * MIB,
    );
    lab.add("win", &w.path);
    let disk = lab.path("restored.img");
    lab.json(&["image", "export", "win", disk.to_str().unwrap()]);
    let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    f.set_len(192 * MIB).unwrap();
    drop(f);
    let before = std::fs::read(&disk).unwrap();

    let dev = Loop::attach(&disk, &["--partscan"]);
    let short = dev.0.trim_start_matches("/dev/").to_string();
    if std::path::Path::new(&format!("/sys/block/{short}/{short}p2")).exists() {
        let out = Command::new(BIN)
            .args([
                "--json",
                "agent",
                "post-deploy",
                "--disk",
                &dev.0,
                "--grow",
                "2",
            ])
            .output()
            .unwrap();
        drop(dev);
        assert!(out.status.success(), "{}", stderr(&out));
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(r["grow"]["result"], "grown", "{r}");
        assert_eq!(r["grow"]["filesystem"], "ntfs", "{r}");
        assert_eq!(r["grow"]["moved"], serde_json::json!([3]), "{r}");
    } else {
        // The agent's step needs the kernel's partitions; here its two halves run apart: the
        // table (library) on the file, ntfsresize on a loop device over the grown C:. The
        // agent's own run is in tests/reimage_vm.rs (Debian kernel).
        drop(dev);
        common::say("post_deploy: this kernel reads no partition tables on loop devices: the grown table through the library, ntfsresize on a loop device over C:");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&disk)
            .unwrap();
        bootcast::fsmap::table::move_backup_gpt_to_end(&f).unwrap();
        let plan = bootcast::fsmap::table::grow_gpt(&f, 2, &mut |_| {})
            .unwrap()
            .unwrap();
        drop(f);
        assert_eq!(plan.moves.iter().map(|m| m.number).collect::<Vec<_>>(), [3]);
        let (first, last) = common::disks::sectors(&disk, 2);
        let c = Loop::attach(
            &disk,
            &[
                "--offset",
                &(first * 512).to_string(),
                "--sizelimit",
                &((last - first + 1) * 512).to_string(),
            ],
        );
        common::disks::sh("ntfsresize", &["--force", "--no-progress-bar", &c.0]);
    }

    let g = common::disks::assert_grown(&lab, &w, &disk);
    // moved byte for byte, free space included
    let grown = std::fs::read(&disk).unwrap();
    let (old_at, len) = w.layout[2];
    let new_at = g.recovery.0;
    assert!(
        grown[new_at as usize..(new_at + len) as usize]
            == before[old_at as usize..(old_at + len) as usize],
        "the recovery partition's bytes changed in the move"
    );
    assert!(g.c.1 >= 140 * MIB, "C: is {} bytes", g.c.1);
    common::say(&format!(
        "grow: C: {} -> {} bytes (NTFS volume {}), recovery moved from byte {old_at} to {new_at}; sgdisk -v clean; files identical",
        w.layout[1].1, g.c.1, g.volume
    ));
}

/// The grow step's filesystem half on a device larger than its ext4 filesystem (a loop device
/// over the whole file): e2fsck and resize2fs fill the device, the filesystem stays clean and
/// its files identical. (The partition half with NTFS is above and in tests/reimage_vm.rs.)
#[test]
fn grow_fills_an_ext4_filesystem_to_its_device() {
    const NAME: &str = "grow_fills_an_ext4_filesystem_to_its_device";
    if !common::is_root() {
        common::skip(NAME, "needs root (loop devices)");
        return;
    }
    if !common::disks::tools(NAME, &["mkfs.ext4", "e2fsck", "resize2fs", "debugfs"]) {
        return;
    }
    let lab = Lab::new();
    let fs = lab.file("root.ext4", &common::disks::random(32 << 20, 5));
    let files = lab.path("files");
    std::fs::create_dir_all(files.join("etc")).unwrap();
    let data = common::disks::random(3 << 20, 6);
    std::fs::write(files.join("etc/data.bin"), &data).unwrap();
    common::disks::sh(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-d",
            files.to_str().unwrap(),
            fs.to_str().unwrap(),
        ],
    );
    let f = std::fs::OpenOptions::new().write(true).open(&fs).unwrap();
    f.set_len(64 << 20).unwrap();
    drop(f);
    let dev = Loop::attach(&fs, &[]);
    let mut log = Vec::new();
    let what = bootcast::agent::grow::fill(std::path::Path::new(&dev.0), &mut |l: &str| {
        log.push(l.to_string())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", log.join("\n")));
    drop(dev);
    assert_eq!(what, "ext");
    let fsck = Command::new("e2fsck").arg("-fn").arg(&fs).output().unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    let stats = common::disks::sh("dumpe2fs", &["-h", fs.to_str().unwrap()]);
    let field = |name: &str| -> u64 {
        stats
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let bytes = field("Block count:") * field("Block size:");
    assert_eq!(bytes, 64 << 20, "the filesystem fills its 64 MiB device");
    let out = Command::new("debugfs")
        .args(["-R", "cat etc/data.bin"])
        .arg(&fs)
        .output()
        .unwrap();
    assert!(out.stdout == data, "etc/data.bin differs after the grow");
    common::say(
        "grow: ext4 32 MiB -> 64 MiB (e2fsck -f -p, resize2fs), e2fsck -fn clean, file identical",
    );
}

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

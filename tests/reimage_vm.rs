//! Reimage end to end: a QEMU VM (TCG, BIOS, virtio) with an empty disk PXE-boots through
//! bootcast (full DHCP mode, in a network namespace), the agent restores the demo master onto
//! its disk, reboots, the next network boot hands it to its local disk, and the demo master
//! prints `BOOTCAST-DEMO-OK` and the host name the post-deploy step wrote into its ext4 root.
//! The test then compares the disk's bytes with the image (outside the filesystem the host
//! name changed). Then v2 moves only the chunks the disk lacks, and a capture task reads the
//! VM's disk, by then a Windows-like one (FAT32 ESP + NTFS with old bytes in its free space),
//! into a version whose id equals `image add` of the disk file on the host: the agent maps
//! the disk as `image add` does.
//! Needs root; prints SKIP without.

mod common;

use std::process::Command;
use std::time::Instant;

use common::disks::{windows_disk_with_recovery, WINDOWS_TOOLS};
use common::netlab::{
    chunk_bytes_served, copy_bootenv, have_qemu, register_at, serve_full, site_dhcp, Firmware,
    Netns, Nic, Vm,
};
use common::{demo_image, lacked_bytes, Lab, Served};

/// Registers `mac` (as its first boot would) and queues a reimage with the demo master.
fn register_and_queue(ns: &Netns, lab: &Lab, mac: &str) {
    register_at(ns, "http://127.0.0.1:8080", mac);
    lab.json(&["task", "reimage", "--host", mac, "--image", "demo"]);
}

#[test]
fn vm_reimages_its_empty_disk_and_boots_the_master() {
    if !common::is_root() {
        common::skip(
            "vm_reimages_its_empty_disk_and_boots_the_master",
            "needs root (network namespaces, tap devices)",
        );
        return;
    }
    assert!(
        have_qemu(),
        "QEMU and OVMF are needed: apt-get install qemu-system-x86 ovmf ipxe-qemu"
    );
    let image = demo_image("v1");
    let lab = Lab::new();
    lab.add("demo", &image);
    copy_bootenv(&lab.data());

    let mut ns = Netns::new("reimg");
    ns.bridge_with_tap();
    let c = site_dhcp(&ns, "br0", lab.dir.path(), false);
    ns.spawn(c);
    let server = serve_full(&ns, &lab);
    let mac = "52:54:00:99:01:01";
    // the host is known (as after its registration boot), then staff queue a reimage
    register_and_queue(&ns, &lab, mac);
    // post-deploy: the restored Linux gets the host's name
    lab.json(&["host", "name", mac, "room12-pc01"]);

    // an empty disk, larger than the image
    let disk = lab.path("disk.raw");
    let f = std::fs::File::create(&disk).unwrap();
    f.set_len(96 << 20).unwrap();
    drop(f);
    let mut vm = Vm::new(Firmware::Bios, Nic::Virtio, mac, lab.dir.path());
    vm.no_reboot = false; // restore, reboot, boot the disk; the demo master powers off
    vm.timeout = 420;
    vm.extra = vec![
        "-drive".into(),
        format!("file={},format=raw,if=virtio", disk.display()),
    ];
    let (took, written) = boot_vm(&vm, &ns, &server, mac, "v1");
    common::say(&format!(
        "VM reimage with the demo master v1 (80 MiB) and boot from disk: {took:.1} s"
    ));
    check_disk(&lab, &written, &image, "v1");
    let t = lab.json(&["task", "list", "--all", "--host", mac]);
    assert_eq!(t["tasks"][0]["state"], "done", "{t}");

    // v2 of the master onto the same disk: only what changed crosses the wire
    let image2 = demo_image("v2");
    let added = lab.add("demo", &image2);
    // What the disk lacks of v2: its chunks not found at their offsets on the disk as v1 and
    // the host-name step left it (the compressed bytes the server must send).
    let lacked = lacked_bytes(
        &lab,
        &format!("demo@{}", added["version"].as_str().unwrap()),
        &std::fs::read(vm.dir.join("disk.raw")).unwrap(),
    );
    let before = chunk_bytes_served(&ns);
    lab.json(&["task", "reimage", "--host", mac, "--image", "demo"]);
    let (took, written) = boot_vm(&vm, &ns, &server, mac, "v2");
    let moved = chunk_bytes_served(&ns) - before;
    common::say(&format!(
        "VM reimage v1 -> v2 and boot: {took:.1} s; {moved} bytes served for {lacked} compressed bytes of chunks the disk lacked"
    ));
    check_disk(&lab, &written, &image2, "v2");

    // capture the VM's disk: the new version's id is the one `image add` of the disk file on
    // the host gives (QEMU ends at the agent's reboot, so the disk is what was captured). The
    // disk is now a Windows-like one (FAT32 ESP + NTFS, free space full of old bytes), so the
    // agent maps it as `image add` does.
    let mut tools = WINDOWS_TOOLS.to_vec();
    tools.extend(["ntfsresize", "ntfsinfo", "ntfsfix"]);
    let windows =
        common::disks::tools("reimage_vm (Windows-like capture and grow)", &tools).then(|| {
            let w = windows_disk_with_recovery(
                &lab,
                96 << 20,
                40 << 20,
                46 << 20,
                &[8 << 20, 3 << 20],
                8 << 20,
            );
            std::fs::copy(&w.path, vm.dir.join("disk.raw")).unwrap();
            w
        });
    lab.json(&["task", "capture", "--host", mac, "--image", "captured"]);
    let _ = std::fs::remove_file(vm.serial_log());
    vm.no_reboot = true;
    let started = Instant::now();
    let out = vm.command(&ns).output().unwrap();
    let took = started.elapsed().as_secs_f64();
    let serial = vm.serial();
    let done = serial
        .lines()
        .find(|l| l.contains(&format!("BOOTCAST-AGENT-CAPTURE-DONE {mac}")))
        .unwrap_or_else(|| {
            panic!(
                "no capture: QEMU {}\n{}\n--- server:\n{}",
                out.status,
                serial,
                server.log_text()
            )
        })
        .to_string();
    let captured = done.split_whitespace().nth(2).unwrap().to_string();
    let added = lab.add("on-host", &vm.dir.join("disk.raw"));
    common::say(&format!(
        "VM capture of its 96 MiB disk: {took:.1} s; version {} = image add's {}",
        &captured[..12],
        &added["version"].as_str().unwrap()[..12]
    ));
    assert_eq!(added["version"], captured.as_str(), "{done}");
    if windows.is_some() {
        let parts = added["partitions"].as_array().unwrap();
        let fs: Vec<_> = parts.iter().map(|p| (&p["fs"], &p["mapped"])).collect();
        assert_eq!(
            fs,
            [
                (&serde_json::json!("fat32"), &serde_json::json!(true)),
                (&serde_json::json!("ntfs"), &serde_json::json!(true)),
                (&serde_json::json!("ntfs"), &serde_json::json!(true))
            ],
            "{added}"
        );
        assert!(
            serial.contains("BOOTCAST-AGENT-MAP part 2 ntfs"),
            "the agent does not say how it mapped the disk:\n{serial}"
        );
    }
    let t = lab.json(&["task", "list", "--all", "--host", mac]);
    assert_eq!(
        (&t["tasks"][0]["kind"], &t["tasks"][0]["state"]),
        (&serde_json::json!("capture"), &serde_json::json!("done")),
        "{t}"
    );
    assert!(moved * 10 <= lacked * 11, "served {moved} > 1.1 x {lacked}");

    // The Windows-like master onto an empty disk twice its size, with `--grow 2`: C: fills the
    // disk, the recovery partition after it goes to the disk's end (the boot environment's
    // ntfsresize, from the server's ntfs-3g).
    if let Some(w) = windows {
        lab.json(&["image", "set", "on-host", "--grow", "2"]);
        let disk = vm.dir.join("disk.raw");
        std::fs::remove_file(&disk).unwrap();
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(192 << 20)
            .unwrap();
        lab.json(&["task", "reimage", "--host", mac, "--image", "on-host"]);
        let _ = std::fs::remove_file(vm.serial_log());
        let started = Instant::now();
        let out = vm.command(&ns).output().unwrap();
        let took = started.elapsed().as_secs_f64();
        let serial = vm.serial();
        let grow = serial
            .lines()
            .find(|l| l.contains("BOOTCAST-AGENT-GROW part 2 ntfs"))
            .unwrap_or_else(|| {
                panic!(
                    "no grow: QEMU {}\n{}\n--- server:\n{}",
                    out.status,
                    serial,
                    server.log_text()
                )
            })
            .to_string();
        assert!(
            serial.contains(&format!("BOOTCAST-AGENT-REIMAGE-DONE {mac}")),
            "{serial}"
        );
        let g = common::disks::assert_grown(&lab, &w, &disk);
        common::say(&format!(
            "VM reimage of the 96 MiB Windows-like master onto a 192 MiB disk with --grow 2: {took:.1} s; C: {} -> {} bytes (NTFS volume {}), recovery at byte {}; sgdisk -v clean, files identical ({})",
            w.layout[1].1, g.c.1, g.volume, g.recovery.0, grow.trim()
        ));
        let t = lab.json(&["task", "list", "--all", "--host", mac]);
        assert_eq!(t["tasks"][0]["state"], "done", "{t}");
    }
}

/// Boots the VM until the demo master powers it off; checks the agent and the master's
/// markers; returns the time taken and the disk's bytes.
fn boot_vm(vm: &Vm, ns: &Netns, server: &Served, mac: &str, version: &str) -> (f64, Vec<u8>) {
    let _ = std::fs::remove_file(vm.serial_log());
    let started = Instant::now();
    let out = vm.command(ns).output().unwrap();
    let took = started.elapsed().as_secs_f64();
    let serial = vm.serial();
    let context = || {
        let tail: Vec<&str> = serial.lines().rev().take(60).collect();
        format!(
            "QEMU: {}\n{}\n--- serial (tail, newest first):\n{}\n--- server:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            tail.join("\n"),
            server.log_text()
        )
    };
    assert!(out.status.success(), "{}", context());
    assert!(
        serial.contains(&format!("BOOTCAST-AGENT-REIMAGE-DONE {mac}")),
        "{}",
        context()
    );
    assert!(
        serial.contains(&format!("BOOTCAST-DEMO-OK {version}")),
        "the restored disk did not boot {version}: {}",
        context()
    );
    // the post-deploy step named the restored system; the master reads /etc/hostname
    assert!(
        serial.contains("BOOTCAST-DEMO-HOSTNAME room12-pc01"),
        "the restored system does not carry the host's name: {}",
        context()
    );
    let disk = vm.dir.join("disk.raw");
    (took, std::fs::read(disk).unwrap())
}

/// Partition 2 of the demo master (ext4, 32 MiB at 48 MiB), where the host name goes.
const P2: std::ops::Range<usize> = (48 << 20)..(80 << 20);

/// The disk holds `image`, by the rule of mapped images: outside the ext4 partition, every
/// byte a filesystem uses (or no filesystem covers) is the image's; inside it, a clean
/// filesystem with the image's files and the host name, and only a few used blocks changed (the
/// name's inode, directory, data, bitmaps and journal blocks).
fn check_disk(lab: &Lab, disk: &[u8], image: &std::path::Path, version: &str) {
    let want = std::fs::read(image).unwrap();
    assert!(disk.len() >= want.len(), "disk smaller than the image");
    let map = common::restore_holes(image, &want, disk, version);
    if let Some(at) = common::first_used_difference(&map, &want, disk, 0..P2.start as u64) {
        panic!("disk byte {at}, before the ext4 partition, differs from {version}");
    }
    let p2_used = |i: usize| {
        let at = (P2.start + i * 4096) as u64;
        common::first_used_difference(&map, &want, disk, at..at + 4096).is_some()
    };
    let changed = (0..P2.len() / 4096).filter(|&i| p2_used(i)).count();
    assert!(
        changed <= 64,
        "{changed} of 8192 blocks of the ext4 partition differ from {version}: more than the host name"
    );
    let p2 = lab.path("p2.ext4");
    std::fs::write(&p2, &disk[P2]).unwrap();
    let fsck = Command::new("e2fsck").arg("-fn").arg(&p2).output().unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    let cat = |f: &str| common::debugfs_cat(p2.to_str().unwrap(), f);
    assert_eq!(cat("etc/hostname"), "room12-pc01\n");
    assert_eq!(cat("etc/bootcast-demo-version"), format!("{version}\n"));
    common::say(&format!(
        "reimage_vm: {version}: disk equals the image in every used byte outside the ext4 partition; {changed} of its 8192 used blocks changed by the host name"
    ));
}

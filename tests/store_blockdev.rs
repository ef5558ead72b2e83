//! Block devices as the source of `image add` and the target of `image export` (loop devices;
//! needs root, prints SKIP otherwise).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// A loop device over a file, detached on drop.
struct Loop(PathBuf);

impl Loop {
    fn attach(file: &Path, sector_size: u32) -> Option<Loop> {
        let out = Command::new("losetup")
            .args([
                "--find",
                "--show",
                "--sector-size",
                &sector_size.to_string(),
            ])
            .arg(file)
            .output()
            .ok()?;
        out.status.success().then(|| {
            Loop(PathBuf::from(
                String::from_utf8_lossy(&out.stdout).trim().to_string(),
            ))
        })
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

#[test]
fn add_from_and_export_to_block_devices() {
    if !is_root() {
        common::say("SKIP add_from_and_export_to_block_devices: needs root for loop devices");
        return;
    }
    let lab = Lab::new();
    // Ends in a zero run whose length is not a multiple of any sector size.
    let mut img = disk_like(12 << 20, 31);
    img.extend(random_bytes(1 << 20, 33));
    img.extend(vec![0u8; 70_144]); // 512-aligned (loop devices round down to sectors), not 4096
    let file = lab.file("disk.img", &img);
    let Some(src) = Loop::attach(&file, 512) else {
        common::say(
            "SKIP add_from_and_export_to_block_devices: losetup cannot attach a loop device here",
        );
        return;
    };
    // The same bytes from the device and from the file give the same version.
    let from_dev = lab.add("dev", &src.0);
    let from_file = lab.add("file", &file);
    assert_eq!(from_dev["version"], from_file["version"]);
    assert_eq!(from_dev["size"], img.len() as u64);

    // Export onto a 4Kn device that holds other data: it must end up as the image, zero runs
    // too, including the last one, which does not end on a sector boundary.
    let target_file = lab.file("target.img", &texty_bytes(16 << 20, 32));
    let target = Loop::attach(&target_file, 4096).expect("second loop device");
    let t = target.0.to_str().unwrap();
    let r = lab.json(&["image", "export", "dev", t]);
    assert_eq!(r["size"], img.len() as u64);
    let written = std::fs::read(&target_file).unwrap();
    assert_eq!(sha256(&written[..img.len()]), sha256(&img));

    // A device smaller than the image is refused before anything is written.
    let small_file = lab.file("small.img", &vec![0x77; 4 << 20]);
    let small = Loop::attach(&small_file, 512).expect("third loop device");
    let out = lab.run(&["image", "export", "dev", small.0.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!(
            "the image needs {}; choose a larger disk",
            img.len()
        )),
        "{}",
        stderr(&out)
    );
    assert!(std::fs::read(&small_file)
        .unwrap()
        .iter()
        .all(|&b| b == 0x77));
}

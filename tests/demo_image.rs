//! The demo master goes through the store and still boots: build it (images/demo/build.sh),
//! add v1 and v2, export v2 seeded from v1, and boot the exported disk under BIOS and UEFI.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn build(version: &str) -> Option<PathBuf> {
    let out = Command::new(repo().join("images/demo/build.sh"))
        .args(["--version", version])
        .output()
        .expect("run build.sh");
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if !is_root() && err.contains("need root") {
            return None;
        }
        panic!("images/demo/build.sh --version {version} failed:\n{err}");
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    Some(PathBuf::from(
        stdout.lines().last().expect("path on stdout"),
    ))
}

fn boot(img: &Path, mode: &str) -> String {
    let start = Instant::now();
    let out = Command::new(repo().join("images/demo/boot-test.sh"))
        .arg(img)
        .arg(mode)
        .output()
        .expect("run boot-test.sh");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{mode} boot of {} failed:\n{stdout}\n{}",
        img.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    common::say(&format!(
        "{mode} boot: {:.1} s",
        start.elapsed().as_secs_f64()
    ));
    stdout
}

#[test]
fn demo_master_round_trips_and_boots() {
    if !have("qemu-system-x86_64") {
        common::say("SKIP demo_master_round_trips_and_boots: qemu-system-x86_64 not installed (scripts/test.sh installs it as root)");
        return;
    }
    let (Some(v1), Some(v2)) = (build("v1"), build("v2")) else {
        common::say("SKIP demo_master_round_trips_and_boots: build.sh needs packages and root to install them");
        return;
    };
    let lab = Lab::new();
    let a = lab.add("demo", &v1);
    let b = lab.add("demo", &v2);
    let new = b["new_bytes"].as_u64().unwrap();
    common::say(&format!(
        "demo v1 stored {} bytes; v2 added {new} bytes",
        a["stored_bytes"]
    ));
    assert!(
        new < a["stored_bytes"].as_u64().unwrap() / 20,
        "v2 should add little: {b}"
    );

    // Export v2 over a copy of v1, as a reimage of a disk that holds v1 would.
    let target = lab.path("disk.img");
    std::fs::copy(&v1, &target).unwrap();
    let t = target.to_str().unwrap();
    let spec = format!("demo@{}", b["version"].as_str().unwrap());
    let r = lab.json(&["image", "export", &spec, t, "--seed", t]);
    common::say(&format!("export v2 over v1: {r}"));
    // v2's used bytes over v1's: what v1 used and v2 does not may remain
    assert_restored(&v2, &target);
    for mode in ["bios", "uefi"] {
        let out = boot(&target, mode);
        assert!(out.contains("BOOTCAST-DEMO-OK v2"), "{mode}: {out}");
    }
}

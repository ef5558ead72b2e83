//! `image add` killed with SIGKILL at random moments: the store stays clean, no partial version
//! appears, and a rerun completes.

mod common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand::{Rng, SeedableRng};

/// Chunks the running ingest has claimed so far (it claims every distinct chunk it meets,
/// new or already stored), plus chunk files: grows as an ingest makes progress.
fn progress_marker(lab: &Lab) -> usize {
    lab.chunk_files().len() + lab.claims()
}

/// Waits until the child has made `target` progress (or exited); polls the store directory.
fn wait_for_progress(lab: &Lab, child: &mut Child, target: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while progress_marker(lab) < target {
        if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
            return;
        }
        std::thread::yield_now();
    }
}

#[test]
fn kill_minus_nine_at_random_moments() {
    let lab = Lab::new();
    let images: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| (format!("img{i}"), disk_like(24 << 20, 100 + i)))
        .collect();
    for (name, bytes) in &images {
        lab.file(name, bytes);
    }
    let seed = std::env::var("BOOTCAST_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    common::say(&format!("seed {seed} (set BOOTCAST_TEST_SEED to replay)"));
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (mut killed, mut finished) = (0, 0);
    for round in 0..24 {
        let (name, bytes) = &images[rng.gen_range(0..images.len())];
        let before = progress_marker(&lab);
        let mut child = lab
            .cmd()
            .args(["image", "add", name, lab.path(name).to_str().unwrap()])
            .args(["--batch-bytes", "200000"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Kill right away, or after a random amount of visible progress.
        if rng.gen_bool(0.8) {
            let target = before + rng.gen_range(0..300);
            wait_for_progress(&lab, &mut child, target);
        }
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
        let status = child.wait().unwrap();
        if status.success() {
            finished += 1;
        } else {
            killed += 1;
        }

        // Killed while the store was being created: there is no store yet, and the next
        // `image add` creates it. Otherwise the store verifies clean and every listed version
        // is complete and correct.
        if !lab.data().join("store/config.json").exists() {
            continue;
        }
        let out = lab.run(&["--json", "store", "verify"]);
        assert!(
            out.status.success(),
            "round {round}: verify failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            stderr(&out)
        );
        let list = lab.json(&["image", "list"]);
        for v in list.as_array().unwrap() {
            let vname = v["name"].as_str().unwrap();
            let (_, expected) = images.iter().find(|(n, _)| n == vname).unwrap();
            assert_eq!(
                v["size"],
                expected.len() as u64,
                "round {round}: partial version listed"
            );
        }
        // Every few rounds, a full rerun completes and exports exactly.
        if round % 6 == 5 {
            let added = lab.add(name, &lab.path(name));
            let spec = format!("{name}@{}", added["version"].as_str().unwrap());
            assert_eq!(
                sha256(&lab.export(&spec, "check.out")),
                sha256(bytes),
                "round {round}"
            );
        }
    }
    common::say(&format!(
        "{killed} ingests killed mid-way, {finished} finished before the kill"
    ));
    assert!(
        killed >= 12,
        "too few rounds were actually interrupted ({killed})"
    );
    // gc clears what the killed ingests left behind (how many temp chunk files a kill leaves
    // depends on its moment: gc removes exactly those); the store still verifies.
    let temp_files = || -> usize {
        std::fs::read_dir(lab.data().join("store/chunks"))
            .unwrap()
            .map(|d| {
                std::fs::read_dir(d.unwrap().path())
                    .unwrap()
                    .filter(|f| {
                        f.as_ref()
                            .unwrap()
                            .file_name()
                            .to_string_lossy()
                            .starts_with('.')
                    })
                    .count()
            })
            .sum()
    };
    let left_by_kills = temp_files();
    let gc = lab.json(&["store", "gc"]);
    common::say(&format!(
        "gc after crashes: {gc} ({left_by_kills} temp chunk files were left)"
    ));
    assert!(lab.run(&["store", "verify"]).status.success());
    let sessions = std::fs::read_dir(lab.data().join("store/sessions"))
        .unwrap()
        .count();
    assert_eq!(sessions, 0, "dead sessions removed by gc");
    assert_eq!(
        gc["dead_temp_files_removed"].as_u64().unwrap(),
        left_by_kills as u64,
        "{gc}"
    );
    assert_eq!(
        temp_files(),
        0,
        "temp chunk files of killed ingests removed by gc"
    );
}

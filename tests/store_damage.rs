//! Damage is found and named; bad input gives a clear error and leaves the store consistent.

mod common;

use bootcast::store::Store;
use common::*;

/// Flips one byte of a stored chunk file.
fn flip_byte(path: &std::path::Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = at.min(bytes.len() - 1);
    bytes[at] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn corrupt_chunk_is_named_and_never_exported() {
    let lab = Lab::new();
    let v1 = disk_like(8 << 20, 21);
    let mut v2 = v1.clone();
    v2[7 << 20..(7 << 20) + 1000].fill(0x5A);
    let a = lab.add("lab", &lab.file("v1.img", &v1));
    let b = lab.add("lab", &lab.file("v2.img", &v2));

    // Pick the third chunk of v1 (also used by v2) and damage its stored file.
    let store = Store::open(&lab.data()).unwrap();
    let version = store
        .resolve(&format!("lab@{}", &a["version"].as_str().unwrap()[..12]))
        .unwrap();
    let (extent, id, _) = version.manifest.chunks().nth(2).unwrap();
    let (offset, len) = (extent.offset as usize, extent.len as usize);
    flip_byte(&store.chunk_path(&id), 20);

    // verify: exit 1, names the chunk and both versions.
    let out = lab.run(&["--json", "store", "verify"]);
    assert_eq!(out.status.code(), Some(1), "verify must fail");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["corrupt"][0]["id"], id.to_hex());
    let affected: Vec<&str> = report["affected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["version"].as_str().unwrap())
        .collect();
    assert!(affected.contains(&a["version"].as_str().unwrap()));
    assert!(affected.contains(&b["version"].as_str().unwrap()));
    let human = lab.run(&["store", "verify"]);
    assert!(String::from_utf8_lossy(&human.stdout).contains(&format!("CORRUPT chunk {id}")));

    // export: fails naming the chunk; its range of the target was never written.
    let target = lab.path("out.img");
    let out = lab.run(&[
        "image",
        "export",
        "lab",
        target.to_str().unwrap(),
        "--threads",
        "1",
    ]);
    common::assert_corrupt_refused(&out, &id.to_hex(), &target, offset..offset + len);
}

#[test]
fn missing_chunk_is_named() {
    let lab = Lab::new();
    let added = lab.add("m", &lab.file("m.img", &disk_like(4 << 20, 5)));
    let victim = lab.chunk_files()[0].clone();
    std::fs::remove_file(&victim).unwrap();
    let out = lab.run(&["--json", "store", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let name = victim.file_name().unwrap().to_str().unwrap();
    assert_eq!(report["missing"][0], name);
    assert_eq!(report["affected"][0]["version"], added["version"]);
    let out = lab.run(&["image", "export", "m", lab.path("o").to_str().unwrap()]);
    assert!(stderr(&out).contains("missing"), "{}", stderr(&out));
}

#[test]
fn corrupt_manifest_is_reported_and_blocks_gc() {
    let lab = Lab::new();
    let added = lab.add("c", &lab.file("c.img", &disk_like(2 << 20, 8)));
    let path = lab.data().join(format!(
        "images/c/{}.bcm",
        added["version"].as_str().unwrap()
    ));
    flip_byte(&path, 100);
    let out = lab.run(&["image", "show", "c"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("damaged"), "{}", stderr(&out));
    let out = lab.run(&["--json", "store", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["bad_manifests"].as_array().unwrap().len(), 1);
    let before = lab.chunk_files().len();
    let out = lab.run(&["store", "gc"]);
    assert!(
        !out.status.success(),
        "gc must refuse with a damaged manifest"
    );
    assert_eq!(lab.chunk_files().len(), before);
    // The damaged version can still be removed by name.
    let v = added["version"].as_str().unwrap();
    let out = lab.run(&["image", "rm", &format!("c@{}", &v[..12])]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn bad_input_gives_clear_errors_and_changes_nothing() {
    let lab = Lab::new();
    let good = lab.add("good", &lab.file("g.img", &disk_like(2 << 20, 9)));
    let chunks_before = lab.chunk_files();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "image".into(),
                "add".into(),
                "x".into(),
                lab.path("nope.img").display().to_string(),
            ],
            "does not exist",
        ),
        (
            vec![
                "image".into(),
                "add".into(),
                "x".into(),
                lab.dir.path().display().to_string(),
            ],
            "is a directory",
        ),
        (
            vec![
                "image".into(),
                "add".into(),
                "bad/name".into(),
                lab.path("g.img").display().to_string(),
            ],
            "invalid image name",
        ),
        (
            vec!["image".into(), "show".into(), "nosuch".into()],
            "no image named",
        ),
        (
            vec!["image".into(), "show".into(), "good@deadbeef".into()],
            "has no version",
        ),
        (
            vec![
                "image".into(),
                "export".into(),
                "nosuch".into(),
                lab.path("o").display().to_string(),
            ],
            "no image named",
        ),
        (
            vec!["image".into(), "rm".into(), "good@ffff0000".into()],
            "has no version",
        ),
        (
            vec![
                "store".into(),
                "init".into(),
                "--chunk-sizes".into(),
                "16K:64K:256K".into(),
            ],
            "fixed when a store is created",
        ),
    ];
    for (args, needle) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = lab.run(&args);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
        // --json also gives a machine-readable error.
        let out = lab.cmd().arg("--json").args(&args).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(v["error"].as_str().unwrap().contains(needle));
    }
    let out = Lab::new().run(&["image", "list"]);
    assert!(
        stderr(&out).contains("no bootcast store"),
        "{}",
        stderr(&out)
    );
    assert_eq!(lab.chunk_files(), chunks_before);
    let list = lab.json(&["image", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["version"], good["version"]);
    assert!(lab.run(&["store", "verify"]).status.success());
}

/// A file system that fills up mid-ingest: clear error, no version, store still verifies.
#[test]
fn full_disk_leaves_store_consistent() {
    if !is_root() {
        common::say("SKIP full_disk_leaves_store_consistent: needs root to mount a small tmpfs");
        return;
    }
    let lab = Lab::new();
    let mnt = lab.path("small");
    std::fs::create_dir(&mnt).unwrap();
    let status = std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=6m",
            "bootcast-test",
            mnt.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(status.success(), "mount tmpfs");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    let data = mnt.join("data");
    let run = |args: &[&str]| {
        std::process::Command::new(BIN)
            .arg("--data")
            .arg(&data)
            .args(args)
            .output()
            .unwrap()
    };
    let small = lab.file("small.img", &disk_like(1 << 20, 1));
    assert!(run(&["image", "add", "small", small.to_str().unwrap()])
        .status
        .success());
    let big = lab.file("big.img", &random_bytes(16 << 20, 2));
    let out = run(&["image", "add", "big", big.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("No space left"), "{}", stderr(&out));
    let out = run(&["--json", "image", "list"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        list.as_array().unwrap().len(),
        1,
        "no partial version listed"
    );
    assert!(run(&["store", "verify"]).status.success());
    let sessions = std::fs::read_dir(data.join("store/sessions"))
        .unwrap()
        .count();
    assert_eq!(sessions, 0, "the failed session cleaned up after itself");
    assert!(run(&["store", "gc"]).status.success());
}

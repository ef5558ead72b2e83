//! Images go in and come back byte for byte, through the real CLI.

mod common;

use common::*;

#[test]
fn edge_cases_round_trip() {
    let lab = Lab::new();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("one-byte", vec![0x42]),
        ("one-zero-byte", vec![0]),
        ("odd-size", texty_bytes(1_000_003, 1)),
        ("all-zeros", vec![0u8; 10 << 20]),
        ("random", random_bytes(8 << 20, 2)),
        ("disk-like", disk_like(12 << 20, 3)),
    ];
    for (name, bytes) in &cases {
        let src = lab.file(&format!("{name}.img"), bytes);
        let added = lab.add(name, &src);
        assert_eq!(added["size"], bytes.len() as u64, "{name}");
        let back = lab.export(name, &format!("{name}.out"));
        assert_eq!(sha256(&back), sha256(bytes), "{name} differs after export");
    }
    // All-zero images store nothing.
    let zeros = lab.json(&["image", "show", "all-zeros@latest"]);
    assert_eq!(zeros["stored_bytes"], 0);
    assert_eq!(zeros["zero_bytes"], 10 << 20);
    // Random data does not compress: stored within 1 % of its size.
    let random = lab.json(&["image", "show", "random@latest"]);
    assert!(random["stored_bytes"].as_u64().unwrap() < (8 << 20) * 101 / 100);
    let out = lab.run(&["store", "verify"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn add_reports_json_and_dedups_across_names() {
    let lab = Lab::new();
    let src = lab.file("a.img", &disk_like(6 << 20, 7));
    let first = lab.add("one", &src);
    for key in ["name", "version", "size", "stored_bytes", "new_bytes"] {
        assert!(first.get(key).is_some(), "missing {key} in {first}");
    }
    assert_eq!(first["name"], "one");
    assert_eq!(first["new_bytes"], first["stored_bytes"]);
    assert!(first["new_bytes"].as_u64().unwrap() > 0);
    // The same bytes under another name, and from stdin: same version id, nothing new.
    let second = lab.add("two", &src);
    assert_eq!(second["version"], first["version"]);
    assert_eq!(second["new_bytes"], 0);
    let piped = lab
        .cmd()
        .args(["--json", "image", "add", "three", "-"])
        .stdin(std::fs::File::open(&src).unwrap())
        .output()
        .unwrap();
    assert!(piped.status.success(), "{}", stderr(&piped));
    let piped: serde_json::Value = serde_json::from_slice(&piped.stdout).unwrap();
    assert_eq!(piped["version"], first["version"]);
    let list = lab.json(&["image", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 3);
    let show = lab.json(&["image", "show", "one@latest"]);
    assert_eq!(
        show["shared_bytes"], show["stored_bytes"],
        "all chunks shared"
    );
}

/// v2 differs from v1 in a few places; exporting v2 with v1 as a seed takes unchanged chunks
/// from the seed, and exporting over a copy of v1 rewrites only what changed.
#[test]
fn seeded_and_in_place_export() {
    let lab = Lab::new();
    let v1 = disk_like(16 << 20, 11);
    let mut v2 = v1.clone();
    v2[3_000_000..3_050_000].copy_from_slice(&texty_bytes(50_000, 99));
    v2[9_000_000..9_000_100].fill(0xAB);
    // A data region of v1 becomes zeros in v2: must read back as zeros after in-place export.
    v2[12 << 20..(12 << 20) + (256 << 10)].fill(0);
    let p1 = lab.file("v1.img", &v1);
    let p2 = lab.file("v2.img", &v2);
    lab.add("os", &p1);
    let added = lab.add("os", &p2);
    let v2id = added["version"].as_str().unwrap().to_string();
    let spec = format!("os@{}", &v2id[..12]);

    let seeded = lab.path("seeded.img");
    let r = lab.json(&[
        "image",
        "export",
        &spec,
        seeded.to_str().unwrap(),
        "--seed",
        p1.to_str().unwrap(),
    ]);
    assert_eq!(sha256(&std::fs::read(&seeded).unwrap()), sha256(&v2));
    let from_seed = r["from_seed"].as_u64().unwrap();
    let fetched = r["fetched"].as_u64().unwrap();
    assert!(from_seed > 12 << 20, "most bytes come from the seed: {r}");
    assert!(fetched < 1 << 20, "only changed chunks from the store: {r}");

    let target = lab.file("target.img", &v1);
    let t = target.to_str().unwrap();
    let r = lab.json(&["image", "export", &spec, t, "--seed", t]);
    assert_eq!(sha256(&std::fs::read(&target).unwrap()), sha256(&v2));
    assert!(r["in_place"].as_u64().unwrap() > 12 << 20, "{r}");
    assert!(r["fetched"].as_u64().unwrap() < 1 << 20, "{r}");
}

#[test]
fn zero_runs_become_holes() {
    use std::os::unix::fs::MetadataExt;
    let lab = Lab::new();
    let mut img = texty_bytes(1 << 20, 5);
    img.extend(vec![0u8; 32 << 20]);
    img.extend(texty_bytes(1 << 20, 6));
    let src = lab.file("sparse.img", &img);
    lab.add("sparse", &src);
    let out = lab.path("out.img");
    lab.json(&["image", "export", "sparse", out.to_str().unwrap()]);
    let meta = std::fs::metadata(&out).unwrap();
    assert_eq!(meta.len(), img.len() as u64);
    assert!(
        meta.blocks() * 512 < 8 << 20,
        "32 MiB of zeros should be a hole, file uses {} bytes",
        meta.blocks() * 512
    );
    assert_eq!(sha256(&std::fs::read(&out).unwrap()), sha256(&img));
}

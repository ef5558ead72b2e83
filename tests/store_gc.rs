//! `image rm` + `store gc` free exactly the unshared chunks; gc beside a running ingest removes
//! none of the ingest's chunks.

mod common;

use std::io::Write;
use std::process::Stdio;

use common::*;

#[test]
fn rm_and_gc_free_exactly_the_unshared_chunks() {
    let shared = disk_like(6 << 20, 1);
    let only_a = texty_bytes(3 << 20, 2);
    let only_b = texty_bytes(3 << 20, 3);
    let a: Vec<u8> = [shared.clone(), only_a].concat();
    let b: Vec<u8> = [shared, only_b].concat();

    // Reference: a store that only ever held B.
    let reference = Lab::new();
    reference.add("b", &reference.file("b.img", &b));
    let b_chunks: Vec<_> = reference
        .chunk_files()
        .iter()
        .map(|p| p.file_name().unwrap().to_owned())
        .collect();

    let lab = Lab::new();
    lab.add("a", &lab.file("a.img", &a));
    lab.add("b", &lab.file("b.img", &b));
    let before = lab.chunk_files().len();
    lab.json(&["image", "rm", "a"]);
    // rm alone frees nothing.
    assert_eq!(lab.chunk_files().len(), before);
    let gc = lab.json(&["store", "gc"]);
    let after: Vec<_> = lab
        .chunk_files()
        .iter()
        .map(|p| p.file_name().unwrap().to_owned())
        .collect();
    assert_eq!(after, b_chunks, "exactly B's chunks remain");
    assert_eq!(gc["removed_chunks"], (before - after.len()) as u64);
    assert!(gc["removed_chunks"].as_u64().unwrap() > 0);
    assert_eq!(sha256(&lab.export("b", "b.out")), sha256(&b));
    // A second gc has nothing left to do.
    assert_eq!(lab.json(&["store", "gc"])["removed_chunks"], 0);
}

#[test]
fn gc_during_ingest_keeps_its_chunks() {
    let lab = Lab::new();
    // Chunks of an image that is then removed: unreferenced, but the next ingest reuses them.
    let old = disk_like(4 << 20, 10);
    lab.add("old", &lab.file("old.img", &old));
    let old_chunks = lab.chunk_files().len();
    lab.json(&["image", "rm", "old"]);

    let fresh = texty_bytes(6 << 20, 11);
    let tail = texty_bytes(2 << 20, 12);
    let full: Vec<u8> = [old.clone(), fresh.clone(), tail.clone()].concat();

    let mut child = lab
        .cmd()
        .args([
            "--json",
            "image",
            "add",
            "new",
            "-",
            "--batch-bytes",
            "100000",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&old).unwrap();
    stdin.write_all(&fresh).unwrap();
    stdin.flush().unwrap();

    // Wait until the ingest has claimed the reused chunks and published some new ones.
    let sessions = lab.data().join("store/sessions");
    let claims = || -> usize {
        std::fs::read_dir(&sessions)
            .unwrap()
            .filter_map(|e| std::fs::metadata(e.ok()?.path().join("ids")).ok())
            .map(|m| m.len() as usize / 32)
            .sum()
    };
    while !(claims() > old_chunks + 20 && lab.chunk_files().len() > old_chunks + 10) {
        assert!(child.try_wait().unwrap().is_none(), "ingest ended early");
        std::thread::yield_now();
    }

    let gc = lab.json(&["store", "gc"]);
    println!("gc during ingest: {gc}");
    assert!(
        gc["kept_for_ingest"].as_u64().unwrap() >= old_chunks as u64,
        "{gc}"
    );

    stdin.write_all(&tail).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let added: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(added["size"], full.len() as u64);
    assert!(
        lab.run(&["store", "verify"]).status.success(),
        "a chunk of the ingest was deleted"
    );
    assert_eq!(sha256(&lab.export("new", "new.out")), sha256(&full));
}

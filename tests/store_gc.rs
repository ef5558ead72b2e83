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
    while !(lab.claims() > old_chunks + 20 && lab.chunk_files().len() > old_chunks + 10) {
        assert!(child.try_wait().unwrap().is_none(), "ingest ended early");
        std::thread::yield_now();
    }

    let gc = lab.json(&["store", "gc"]);
    common::say(&format!("gc during ingest: {gc}"));
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

/// A gc that fails after moving chunks to trash puts them back.
#[test]
fn failed_gc_restores_its_trash() {
    let lab = Lab::new();
    let img = disk_like(4 << 20, 40);
    lab.add("a", &lab.file("a.img", &img));
    lab.json(&["image", "rm", "a"]);
    let before = lab.chunk_files();
    // A live session (its lock held by this test) whose claim list cannot be read.
    let fake = lab.data().join("store/sessions/fake");
    std::fs::create_dir_all(fake.join("ids")).unwrap();
    let lock = std::fs::File::create(fake.join("lock")).unwrap();
    lock.lock().unwrap();
    let out = lab.run(&["store", "gc"]);
    assert!(
        !out.status.success(),
        "gc must fail on an unreadable claim list"
    );
    assert!(stderr(&out).contains("reading claims"), "{}", stderr(&out));
    assert_eq!(lab.chunk_files(), before, "every trashed chunk is back");
    let trash = std::fs::read_dir(lab.data().join("store/trash"))
        .unwrap()
        .count();
    assert_eq!(trash, 0);
}

/// A gc killed between trashing and restoring leaves chunks in trash. An ingest that found
/// those chunks in the store before they moved must not commit a version that names missing
/// chunks: its commit puts them back.
#[test]
fn commit_restores_chunks_a_killed_gc_left_in_trash() {
    let lab = Lab::new();
    let img = disk_like(4 << 20, 41);
    lab.add("a", &lab.file("a.img", &img));
    lab.json(&["image", "rm", "a"]);
    let stored = lab.chunk_files();
    let tail = texty_bytes(1 << 20, 44);

    let mut child = lab
        .cmd()
        .args(["--json", "image", "add", "b", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&img).unwrap();
    stdin.flush().unwrap();
    // Wait until the ingest has claimed (and so looked up) half of the stored chunks; the
    // rest may wait for more input (the chunker's lookahead, a batch not yet full).
    let hang_guard = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while lab.claims() < stored.len() / 2 {
        assert!(child.try_wait().unwrap().is_none(), "ingest ended early");
        assert!(
            std::time::Instant::now() < hang_guard,
            "ingest made no progress"
        );
        std::thread::yield_now();
    }
    // Now a gc moves them to trash and dies before it can put them back.
    let trash = lab.data().join("store/trash");
    std::fs::create_dir_all(&trash).unwrap();
    for f in &stored {
        std::fs::rename(f, trash.join(f.file_name().unwrap())).unwrap();
    }
    stdin.write_all(&tail).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        std::fs::read_dir(&trash).unwrap().count(),
        0,
        "the commit emptied the trash"
    );
    assert!(lab.run(&["store", "verify"]).status.success());
    let full = [img, tail].concat();
    assert_eq!(sha256(&lab.export("b", "b.out")), sha256(&full));
}

/// An ingest that fails stops reading its source, even in a long run of zeros.
#[test]
fn failed_ingest_stops_reading() {
    let lab = Lab::new();
    lab.add("seed", &lab.file("s.img", &texty_bytes(1 << 20, 42)));
    // Make every fan-out directory a file: the first new chunk cannot be written.
    let chunks = lab.data().join("store/chunks");
    std::fs::remove_dir_all(&chunks).unwrap();
    std::fs::create_dir(&chunks).unwrap();
    for i in 0..4096 {
        std::fs::write(chunks.join(format!("{i:03x}")), b"x").unwrap();
    }
    let mut child = lab
        .cmd()
        .args(["image", "add", "big", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let total: u64 = 8 << 30;
    let mut sent = 0u64;
    let data = random_bytes(64 << 10, 43);
    let zeros = vec![0u8; 1 << 20];
    if stdin.write_all(&data).is_ok() {
        sent += data.len() as u64;
        while sent < total && stdin.write_all(&zeros).is_ok() {
            sent += zeros.len() as u64;
        }
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Not a directory"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    common::say(&format!(
        "the failed ingest took {sent} of {total} bytes before it stopped reading"
    ));
    assert!(
        sent < total,
        "the failed ingest read all {total} bytes of its source"
    );
}

//! Used-block maps against real filesystems made by the real tools (no root needed).
//!
//! For FAT12/16/32 (`mkfs.vfat`, files put with `mcopy`/`mmd`) and ext2/3/4 in several layouts
//! (`mkfs.ext2/3/4 -d DIR`, one more file with `debugfs -w -R write`): map the image, then, in
//! a copy, overwrite every byte the map calls unused with random bytes. The filesystem checker
//! must still find the copy clean (`fsck.vfat -n`, `e2fsck -fn`) and every file must read back
//! identical (`mcopy`, `debugfs -R dump`): what a capture skips really was free. The used amount
//! must also be exactly what the tools count (`fsck.vfat -v` clusters, `dumpe2fs -h` blocks).
//!
//! A missing tool prints a line starting with `SKIP:` and the test returns.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bootcast::fsmap::{ext, fat, MapError, ReadAt, Used};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

/// The path of a tool: on PATH, or in the sbin directories a non-root PATH often lacks.
fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The tools, each the first found of its alternatives; None (after a `SKIP:` line) when one
/// is missing.
fn tools<const N: usize>(test: &str, wanted: [&[&str]; N]) -> Option<[PathBuf; N]> {
    let mut out = Vec::with_capacity(N);
    for alts in wanted {
        match alts.iter().find_map(|n| find_tool(n)) {
            Some(p) => out.push(p),
            None => {
                println!("SKIP: {test}: {} not found", alts.join(" or "));
                return None;
            }
        }
    }
    out.try_into().ok()
}

fn run_out(tool: &Path, args: &[&OsStr]) -> Output {
    Command::new(tool)
        .args(args)
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", tool.display()))
}

/// Runs a tool that must succeed; its stdout.
fn run(tool: &Path, args: &[&OsStr]) -> String {
    let o = run_out(tool, args);
    assert!(
        o.status.success(),
        "{} {:?} failed ({}):\n{}\n{}",
        tool.display(),
        args,
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

macro_rules! args {
    ($($a:expr),* $(,)?) => { &[$(AsRef::<OsStr>::as_ref(&$a)),*] };
}

/// Files of random content (relative path, bytes), a few MiB in all, with subdirectories.
fn random_files(rng: &mut StdRng) -> Vec<(String, Vec<u8>)> {
    let mut f = |name: &str, len: usize| {
        let mut v = vec![0u8; len];
        rng.fill_bytes(&mut v);
        (name.to_string(), v)
    };
    vec![
        f("a.bin", 3 << 20),
        f("b.bin", 777_777),
        f("tiny.txt", 1),
        f("empty.bin", 0),
        f("sub/c.bin", 1_500_000),
        f("sub/d.bin", 12_345),
        f("sub/deeper/e.bin", 200_001),
    ]
}

fn dirs_of(files: &[(String, Vec<u8>)]) -> Vec<String> {
    let mut d: Vec<String> = files
        .iter()
        .filter_map(|(n, _)| Path::new(n).parent())
        .flat_map(|p| p.ancestors().map(|a| a.to_string_lossy().into_owned()))
        .filter(|s| !s.is_empty())
        .collect();
    d.sort();
    d.dedup();
    d
}

fn write_tree(root: &Path, files: &[(String, Vec<u8>)]) {
    for (name, data) in files {
        let p = root.join(name);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    }
}

fn check_ranges(u: &Used, size: u64) {
    u.check(size)
        .unwrap_or_else(|e| panic!("{e}: {:?}", u.used));
}

fn used_bytes_in(u: &Used, window: Range<u64>) -> u64 {
    u.used
        .iter()
        .map(|r| {
            r.end
                .min(window.end)
                .saturating_sub(r.start.max(window.start))
        })
        .sum()
}

fn unused(u: &Used, size: u64) -> Vec<Range<u64>> {
    let mut out = Vec::new();
    let mut at = 0;
    for r in &u.used {
        if r.start > at {
            out.push(at..r.start);
        }
        at = r.end;
    }
    if at < size {
        out.push(at..size);
    }
    out
}

/// Copies `src` to `dst` and fills every unused range of the copy with random bytes; the bytes
/// filled.
fn fill_unused(src: &Path, dst: &Path, u: &Used, size: u64, rng: &mut StdRng) -> u64 {
    fs::copy(src, dst).unwrap();
    let f = OpenOptions::new().write(true).open(dst).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut filled = 0;
    for r in unused(u, size) {
        let mut at = r.start;
        while at < r.end {
            let n = (r.end - at).min(buf.len() as u64) as usize;
            rng.fill_bytes(&mut buf[..n]);
            f.write_all_at(&buf[..n], at).unwrap();
            at += n as u64;
        }
        filled += r.end - r.start;
    }
    f.sync_all().unwrap();
    filled
}

fn map_image(img: &Path, f: fn(&mut dyn ReadAt, u64) -> Result<Used, MapError>) -> (Used, u64) {
    let mut file = File::open(img).unwrap();
    let size = file.metadata().unwrap().len();
    let u = f(&mut file, size).unwrap_or_else(|e| panic!("mapping {}: {e}", img.display()));
    check_ranges(&u, size);
    (u, size)
}

fn new_image(path: &Path, mib: u64) {
    File::create(path).unwrap().set_len(mib << 20).unwrap();
}

// ---------------------------------------------------------------------------------------------
// FAT

fn fat_case(test: &str, bits: u32, mib: u64, extra: &[&str]) {
    let Some([mkfs, mcopy, mmd, fsck]) = tools(
        test,
        [
            &["mkfs.vfat", "mkfs.fat"],
            &["mcopy"],
            &["mmd"],
            &["fsck.vfat", "fsck.fat"],
        ],
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("fat.img");
    new_image(&img, mib);
    let mut a: Vec<&OsStr> = vec!["-F".as_ref()];
    let bits_s = bits.to_string();
    a.push(bits_s.as_ref());
    a.extend(extra.iter().map(OsStr::new));
    a.push(img.as_os_str());
    run(&mkfs, &a);

    let mut rng = StdRng::seed_from_u64(0xFA7 + bits as u64);
    let files = random_files(&mut rng);
    let src = tmp.path().join("src");
    write_tree(&src, &files);
    for d in dirs_of(&files) {
        run(&mmd, args!["-i", img, format!("::/{d}")]);
    }
    for (name, _) in &files {
        run(
            &mcopy,
            args!["-i", img, src.join(name), format!("::/{name}")],
        );
    }
    run(&fsck, args!["-n", img]);

    let (u, size) = map_image(&img, fat::map);
    let mut boot = [0u8; 512];
    File::open(&img)
        .unwrap()
        .read_exact_at(&mut boot, 0)
        .unwrap();
    let g = fat::parse_boot_sector(&boot).unwrap();
    assert!(fat::detect(&boot) && !ext::detect(&boot));
    assert_eq!(u.fs, format!("fat{bits}"));
    assert_eq!(u.block, g.cluster_bytes());

    // used clusters == what fsck.fat counts
    let used_clusters = used_bytes_in(&u, g.data_offset()..g.data_end()) / g.cluster_bytes();
    let report = run(&fsck, args!["-n", "-v", img]);
    let line = report
        .lines()
        .find(|l| l.contains(" files, ") && l.ends_with(" clusters"))
        .unwrap_or_else(|| panic!("no cluster summary in fsck output:\n{report}"));
    let counts = line.rsplit(' ').nth(1).unwrap();
    let (fsck_used, fsck_total) = counts.split_once('/').unwrap();
    assert_eq!(
        fsck_total.parse::<u64>().unwrap(),
        g.cluster_count,
        "{line}"
    );
    assert_eq!(fsck_used.parse::<u64>().unwrap(), used_clusters, "{line}");
    // everything outside the clusters is used
    assert_eq!(used_bytes_in(&u, 0..g.data_offset()), g.data_offset());
    assert_eq!(used_bytes_in(&u, g.data_end()..size), size - g.data_end());

    let filled = tmp.path().join("filled.img");
    let n = fill_unused(&img, &filled, &u, size, &mut rng);
    assert!(n > size / 2, "only {n} of {size} bytes unused");
    run(&fsck, args!["-n", filled]);
    let out = tmp.path().join("out");
    for (name, data) in &files {
        let _ = fs::remove_file(&out);
        run(&mcopy, args!["-n", "-i", filled, format!("::/{name}"), out]);
        assert!(fs::read(&out).unwrap() == *data, "{name} differs");
    }
    println!(
        "{test}: {} clusters of {} bytes, {used_clusters} used; {n} unused bytes filled",
        g.cluster_count,
        g.cluster_bytes()
    );
}

#[test]
fn fat12() {
    fat_case("fat12", 12, 16, &[]);
}

#[test]
fn fat16() {
    fat_case("fat16", 16, 64, &["-n", "ESP16"]);
}

#[test]
fn fat32() {
    fat_case("fat32", 32, 64, &["-s", "1"]);
}

#[test]
fn fat32_larger_clusters() {
    fat_case("fat32_larger_clusters", 32, 300, &["-s", "4"]);
}

// ---------------------------------------------------------------------------------------------
// ext

fn dumpe2fs_field(report: &str, field: &str) -> u64 {
    report
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {field} in dumpe2fs output:\n{report}"))
        .trim()
        .parse()
        .unwrap()
}

fn ext_case(test: &str, mkfs_name: &str, args: &[&str], mib: u64, want_fs: &str) {
    let Some([mkfs, debugfs, e2fsck, dumpe2fs]) = tools(
        test,
        [&[mkfs_name], &["debugfs"], &["e2fsck"], &["dumpe2fs"]],
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("ext.img");
    new_image(&img, mib);
    let mut rng = StdRng::seed_from_u64(0xE47 + mib + args.len() as u64);
    let mut files = random_files(&mut rng);
    let src = tmp.path().join("src");
    write_tree(&src, &files);
    let mut a: Vec<&OsStr> = vec!["-q".as_ref(), "-F".as_ref()];
    a.extend(args.iter().map(OsStr::new));
    a.extend([OsStr::new("-d"), src.as_os_str(), img.as_os_str()]);
    run(&mkfs, &a);
    // one more file, written by libext2fs's allocator after mkfs
    let late = tmp.path().join("late.bin");
    let mut data = vec![0u8; 2_100_000 + rng.gen_range(0..4096)];
    rng.fill_bytes(&mut data);
    fs::write(&late, &data).unwrap();
    run(
        &debugfs,
        args![
            "-w",
            "-R",
            format!("write {} late.bin", late.display()),
            img
        ],
    );
    files.push(("late.bin".into(), data));
    run(&e2fsck, args!["-fn", img]);

    let (u, size) = map_image(&img, ext::map);
    let mut head = vec![0u8; 4096];
    File::open(&img)
        .unwrap()
        .read_exact_at(&mut head, 0)
        .unwrap();
    assert!(ext::detect(&head) && !fat::detect(&head));
    let sb = ext::Superblock::parse(&head[1024..2048]).unwrap();
    assert_eq!(u.fs, want_fs);

    let report = run(&dumpe2fs, args!["-h", img]);
    let bs = dumpe2fs_field(&report, "Block size");
    let count = dumpe2fs_field(&report, "Block count");
    let free = dumpe2fs_field(&report, "Free blocks");
    assert_eq!(u.block, bs);
    assert_eq!(sb.blocks_count, count);
    let fs_bytes = count * bs;
    assert_eq!(
        used_bytes_in(&u, 0..fs_bytes),
        (count - free) * bs,
        "used bytes vs dumpe2fs ({count} blocks, {free} free)"
    );
    assert_eq!(used_bytes_in(&u, fs_bytes..size), size - fs_bytes);

    let filled = tmp.path().join("filled.img");
    let n = fill_unused(&img, &filled, &u, size, &mut rng);
    assert!(n > size / 3, "only {n} of {size} bytes unused");
    let o = run_out(&e2fsck, args!["-fn", filled]);
    assert!(
        o.status.success(),
        "e2fsck after filling the free space:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let out = tmp.path().join("out");
    for (name, data) in &files {
        let _ = fs::remove_file(&out);
        run(
            &debugfs,
            args!["-R", format!("dump /{name} {}", out.display()), filled],
        );
        assert!(fs::read(&out).unwrap() == *data, "{name} differs");
    }
    let uninit = run(&dumpe2fs, args![filled])
        .lines()
        .filter(|l| l.starts_with("Group ") && l.contains("BLOCK_UNINIT"))
        .count();
    println!(
        "{test}: {count} blocks of {bs} bytes, {} groups ({uninit} BLOCK_UNINIT), {} free; \
         {n} unused bytes filled",
        sb.group_count(),
        free
    );
}

#[test]
fn ext2() {
    ext_case("ext2", "mkfs.ext2", &[], 64, "ext2");
}

#[test]
fn ext3() {
    ext_case("ext3", "mkfs.ext3", &[], 64, "ext3");
}

#[test]
fn ext4_default() {
    ext_case("ext4_default", "mkfs.ext4", &["-T", "default"], 200, "ext4");
}

#[test]
fn ext4_many_groups() {
    ext_case(
        "ext4_many_groups",
        "mkfs.ext4",
        &["-T", "default", "-g", "4096"],
        100,
        "ext4",
    );
}

#[test]
fn ext4_no_flex_bg() {
    ext_case(
        "ext4_no_flex_bg",
        "mkfs.ext4",
        &["-T", "default", "-O", "^flex_bg", "-g", "4096"],
        100,
        "ext4",
    );
}

#[test]
fn ext4_64bit() {
    ext_case(
        "ext4_64bit",
        "mkfs.ext4",
        &["-T", "default", "-O", "64bit", "-g", "4096"],
        100,
        "ext4",
    );
}

#[test]
fn ext4_32bit_descriptors() {
    ext_case(
        "ext4_32bit_descriptors",
        "mkfs.ext4",
        &["-T", "default", "-O", "^64bit", "-g", "4096"],
        100,
        "ext4",
    );
}

#[test]
fn ext4_1k_blocks() {
    ext_case("ext4_1k_blocks", "mkfs.ext4", &["-b", "1024"], 64, "ext4");
}

#[test]
fn ext4_uninit_bg_crc16() {
    ext_case(
        "ext4_uninit_bg_crc16",
        "mkfs.ext4",
        &[
            "-T",
            "default",
            "-O",
            "^metadata_csum,uninit_bg",
            "-g",
            "4096",
        ],
        100,
        "ext4",
    );
}

#[test]
fn ext4_sparse_super2() {
    ext_case(
        "ext4_sparse_super2",
        "mkfs.ext4",
        &["-T", "default", "-O", "sparse_super2", "-g", "4096"],
        100,
        "ext4",
    );
}

// ---------------------------------------------------------------------------------------------
// damage made with the real tools: captured raw

fn unsafe_reason(img: &Path, f: fn(&mut dyn ReadAt, u64) -> Result<Used, MapError>) -> String {
    let mut file = File::open(img).unwrap();
    let size = file.metadata().unwrap().len();
    match f(&mut file, size) {
        Err(MapError::Unsafe(m)) => m,
        other => panic!("expected Unsafe, got {other:?}"),
    }
}

#[test]
fn ext4_not_clean_or_damaged_is_unsafe() {
    let test = "ext4_not_clean_or_damaged_is_unsafe";
    let Some([mkfs, debugfs]) = tools(test, [&["mkfs.ext4"], &["debugfs"]]) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("ext.img");
    new_image(&img, 64);
    run(&mkfs, args!["-q", "-F", "-T", "default", "-g", "4096", img]);
    run(&debugfs, args!["-w", "-R", "ssv state 0", img]);
    let m = unsafe_reason(&img, ext::map);
    assert!(m.contains("not cleanly unmounted"), "{m}");
    run(&debugfs, args!["-w", "-R", "ssv state 1", img]);
    run(&debugfs, args!["-w", "-R", "feature needs_recovery", img]);
    let m = unsafe_reason(&img, ext::map);
    assert!(m.contains("journal needs recovery"), "{m}");
    run(&debugfs, args!["-w", "-R", "feature ^needs_recovery", img]);
    // a descriptor edited without its checksum
    run(
        &debugfs,
        args!["-w", "-R", "set_bg 0 free_blocks_count 7", img],
    );
    let m = unsafe_reason(&img, ext::map);
    assert!(m.contains("group 0: descriptor checksum"), "{m}");
    // the same with the checksum resealed: the free count disagrees with the bitmap
    run(&debugfs, args!["-w", "-R", "set_bg 0 checksum calc", img]);
    let m = unsafe_reason(&img, ext::map);
    assert!(
        m.contains("group 0: the bitmap counts") && m.contains("the descriptor says 7"),
        "{m}"
    );
}

#[test]
fn fat_copies_differing_is_unsafe() {
    let test = "fat_copies_differing_is_unsafe";
    let Some([mkfs, mcopy]) = tools(test, [&["mkfs.vfat", "mkfs.fat"], &["mcopy"]]) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("fat.img");
    new_image(&img, 64);
    run(&mkfs, args!["-F", "16", img]);
    let small = tmp.path().join("x.bin");
    fs::write(&small, vec![7u8; 100_000]).unwrap();
    run(&mcopy, args!["-i", img, small, "::/x.bin"]);
    let mut boot = [0u8; 512];
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    f.read_exact_at(&mut boot, 0).unwrap();
    let g = fat::parse_boot_sector(&boot).unwrap();
    // cluster 1000 allocated in FAT 1 only
    let at = g.fat_offset(1) + 1000 * 2;
    f.write_all_at(&[0xFF, 0xFF], at).unwrap();
    f.sync_all().unwrap();
    let m = unsafe_reason(&img, fat::map);
    assert!(
        m.contains("FAT 1 differs from FAT 0") && m.contains("cluster 1000"),
        "{m}"
    );
}

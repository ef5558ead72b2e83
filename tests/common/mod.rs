//! Helpers shared by the integration tests: a throw-away data directory and the real binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

pub const BIN: &str = env!("CARGO_BIN_EXE_bootcast");

/// A temporary work area with a bootcast data directory inside.
pub struct Lab {
    pub dir: tempfile::TempDir,
}

impl Lab {
    pub fn new() -> Lab {
        Lab {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn data(&self) -> PathBuf {
        self.path("data")
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--data").arg(self.data()).env_remove("BOOTCAST_DATA");
        c
    }

    /// Runs bootcast with `args`; returns the output whatever the exit status.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run bootcast")
    }

    /// Runs bootcast with `--json`, requires success, parses stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self
            .cmd()
            .arg("--json")
            .args(args)
            .output()
            .expect("run bootcast");
        assert!(
            out.status.success(),
            "bootcast {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON on stdout")
    }

    /// Writes `bytes` to a file in the lab and returns its path.
    pub fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    pub fn add(&self, name: &str, source: &Path) -> serde_json::Value {
        self.json(&["image", "add", name, source.to_str().unwrap()])
    }

    /// Exports `spec` to a new file and returns its bytes.
    pub fn export(&self, spec: &str, target: &str) -> Vec<u8> {
        let t = self.path(target);
        self.json(&["image", "export", spec, t.to_str().unwrap()]);
        std::fs::read(t).unwrap()
    }

    /// Chunks claimed so far by running ingests (each claims every distinct chunk it meets,
    /// new or already stored, before it looks the chunk up).
    pub fn claims(&self) -> usize {
        std::fs::read_dir(self.data().join("store/sessions"))
            .map(|d| {
                d.filter_map(|e| std::fs::metadata(e.ok()?.path().join("ids")).ok())
                    .map(|m| m.len() as usize / 32)
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Published chunk files in the store.
    pub fn chunk_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let root = self.data().join("store/chunks");
        if let Ok(dirs) = std::fs::read_dir(root) {
            for d in dirs {
                for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
                    let path = f.unwrap().path();
                    // Dot names are an ingest's temp files, not yet published chunks.
                    if !path.file_name().unwrap().to_string_lossy().starts_with('.') {
                        out.push(path);
                    }
                }
            }
        }
        out.sort();
        out
    }
}

pub fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub use bootcast::testkit::random_bytes;

/// Compressible pseudo-text: words drawn from a small vocabulary (like files on a disk).
pub fn texty_bytes(len: usize, seed: u64) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "boot",
        "image",
        "chunk",
        "relay",
        "site",
        "kernel",
        "initrd",
        "disk",
        "version",
        "the",
        "of",
        "and",
        "store",
        "manifest",
        "multicast",
        "room",
        "\n",
        "0x1f",
        "usr/lib",
        "::",
    ];
    let noise = random_bytes(len / 3 + 16, seed);
    let mut out = Vec::with_capacity(len + 16);
    let mut i = 0;
    while out.len() < len {
        out.extend_from_slice(WORDS[noise[i] as usize % WORDS.len()].as_bytes());
        out.push(b' ');
        i = (i + 1) % noise.len();
    }
    out.truncate(len);
    out
}

/// A disk-like image: data regions separated by zero runs.
pub fn disk_like(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut s = seed;
    while out.len() < len {
        s += 1;
        let data = (random_bytes(8, s)[0] as usize + 1) * 16 * 1024;
        out.extend(texty_bytes(data.min(len - out.len()), s));
        let zeros = (random_bytes(8, s + 1000)[0] as usize % 64) * 4096;
        out.extend(std::iter::repeat_n(0u8, zeros.min(len - out.len())));
    }
    out
}

/// True when running as root (tests that need it print SKIP otherwise).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

//! Deterministic test data shared by unit and integration tests (not a public API).

/// Pseudo-random bytes from splitmix64: fixed forever, so golden values never depend on a crate.
pub fn random_bytes(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A stand-in boot environment in `DATA/bootenv` (a tiny kernel and initrd with a valid
/// record): the server hands out boot scripts for it, nothing boots it. For tests and benches
/// whose PCs are simulated; `agent_protocol` is the one it says its agent speaks (the
/// server's, `proto::agent::AGENT_PROTOCOL`, for one it hands out).
pub fn stand_in_bootenv(data: &std::path::Path, agent_protocol: u32) {
    use crate::bootenv::{BootEnvInfo, FileInfo};
    let d = data.join("bootenv");
    std::fs::create_dir_all(&d).expect("create DATA/bootenv");
    let kernel = b"kernel bytes".to_vec();
    let initrd = vec![7u8; 100_000];
    std::fs::write(d.join("vmlinuz"), &kernel).expect("write vmlinuz");
    std::fs::write(d.join("initrd.img"), &initrd).expect("write initrd.img");
    let file = |b: &[u8]| FileInfo {
        size: b.len() as u64,
        blake3: blake3::hash(b).to_hex().to_string(),
    };
    let info = BootEnvInfo {
        kernel_version: "test".into(),
        kernel_package: "none".into(),
        vmlinuz: file(&kernel),
        initrd: file(&initrd),
        initrd_compression: "none".into(),
        modules: vec![],
        modules_builtin: vec![],
        modules_missing: vec![],
        agent_size: 0,
        agent_stripped: false,
        busybox: String::new(),
        built_at: 0,
        bootcast_version: "test".into(),
        agent_protocol,
        tools: vec![],
    };
    std::fs::write(
        d.join("bootenv.json"),
        serde_json::to_vec(&info).expect("a record serialises"),
    )
    .expect("write bootenv.json");
}

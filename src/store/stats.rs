//! Per-version figures for `image list` and `image show`.

use std::collections::{HashMap, HashSet};

use super::catalog::Version;
use super::id::{ChunkId, VersionId};

#[derive(Debug, Clone, serde::Serialize)]
pub struct VersionStats {
    pub name: String,
    pub version: VersionId,
    pub created: i64,
    /// Image size in bytes.
    pub size: u64,
    /// Bytes covered by chunks (the rest are zero and unused runs).
    pub data_bytes: u64,
    pub zero_bytes: u64,
    /// Bytes no filesystem uses (not stored, not written on restore).
    pub unused_bytes: u64,
    /// Distinct chunks, and their plain and compressed sizes.
    pub chunks: usize,
    pub plain_bytes: u64,
    pub stored_bytes: u64,
    /// Compressed bytes of this version's chunks that other versions use too.
    pub shared_bytes: u64,
    /// data_bytes / plain_bytes: repeats inside the image.
    pub dedup_ratio: f64,
    /// plain_bytes / stored_bytes.
    pub compression_ratio: f64,
    /// False for a capture that awaits staff approval (`bootcast image approve`): it is not
    /// `latest` until then.
    pub approved: bool,
    /// Per partition: filesystem, size, used, mapped or raw and why (empty for versions stored
    /// before maps existed).
    pub partitions: Vec<crate::fsmap::PartReport>,
}

/// Figures for each of `versions`, sharing measured against all of `universe` (every version
/// in the store).
pub fn version_stats(versions: &[Version], universe: &[Version]) -> Vec<VersionStats> {
    let mut users: HashMap<ChunkId, usize> = HashMap::new();
    for v in universe {
        let distinct: HashSet<ChunkId> = v.manifest.chunks().map(|(_, id, _)| id).collect();
        for id in distinct {
            *users.entry(id).or_default() += 1;
        }
    }
    versions
        .iter()
        .map(|v| {
            let m = &v.manifest;
            let mut seen = HashSet::new();
            let (mut data, mut plain, mut stored, mut shared) = (0u64, 0u64, 0u64, 0u64);
            for (e, id, compressed) in m.chunks() {
                data += e.len;
                if seen.insert(id) {
                    plain += e.len;
                    stored += u64::from(compressed);
                    if users.get(&id).copied().unwrap_or(0) > 1 {
                        shared += u64::from(compressed);
                    }
                }
            }
            let unused = m.unused_bytes();
            let div = |a: u64, b: u64| if b == 0 { 1.0 } else { a as f64 / b as f64 };
            VersionStats {
                name: v.name.clone(),
                version: v.id,
                created: m.created,
                size: m.size,
                data_bytes: data,
                zero_bytes: m.size - data - unused,
                unused_bytes: unused,
                chunks: seen.len(),
                plain_bytes: plain,
                stored_bytes: stored,
                shared_bytes: shared,
                dedup_ratio: div(data, plain),
                compression_ratio: div(plain, stored),
                approved: !super::catalog::awaiting_approval(&v.path),
                partitions: m.partitions.clone(),
            }
        })
        .collect()
}

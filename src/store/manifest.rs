//! Image version manifests and their binary encoding.
//!
//! A manifest lists, in order, the extents that rebuild one image version: each extent is either
//! a run of zero bytes, one chunk of the store, or a run no filesystem uses (see
//! [`crate::fsmap`]: never read, never stored, never written on restore). It is stored as one file, all integers
//! little-endian:
//!
//! ```text
//! content (its BLAKE3 is the version id)
//!   magic        8 bytes  "BCMANI01"
//!   chunk_min    u32      \
//!   chunk_avg    u32       | chunker parameters the extents were cut with
//!   chunk_max    u32       |
//!   zero_min     u32      /
//!   size         u64      image size in bytes
//!   count        u64      number of extents
//!   count times:
//!     kind       u8       0 = zero run, 1 = chunk, 2 = unused (by the filesystems)
//!     offset     u64      first byte of the extent in the image
//!     length     u64      bytes
//!     id         32 bytes BLAKE3 of the chunk's uncompressed bytes (kind 1 only)
//! annotations (not part of the version id)
//!   magic        8 bytes  "BCANNO01"
//!   name_len     u16, then the image name in UTF-8
//!   created      i64      creation time, seconds since the Unix epoch (UTC)
//!   for each chunk extent, in order: compressed size u32
//!   optional: magic "BCPART01", length u32, the partitions' map report as JSON
//! trailer
//!   blake3       32 bytes BLAKE3 of everything before it (detects a damaged file)
//! ```
//!
//! The content part is canonical: extents are contiguous from offset 0 and cover `size` exactly,
//! lengths are non-zero and no two zero runs (nor two unused runs) are adjacent. Decoding rejects
//! anything else. The version id therefore depends only on the image's bytes, its map of unused
//! runs and the chunker parameters: the same disk added twice, under any name, at any time, with
//! any zstd level, gets the same id. A disk captured raw has no unused runs, so its manifest (and
//! id) is what it was before maps existed.

use super::chunker::ChunkerParams;
use super::id::{ChunkId, VersionId};
use crate::fsmap::PartReport;

const CONTENT_MAGIC: &[u8; 8] = b"BCMANI01";
const ANNOTATION_MAGIC: &[u8; 8] = b"BCANNO01";
const PARTITIONS_MAGIC: &[u8; 8] = b"BCPART01";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentKind {
    Zero,
    /// No filesystem uses these bytes: a restore leaves the target's bytes there alone.
    Unused,
    Chunk {
        id: ChunkId,
        compressed: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
    pub kind: ExtentKind,
}

impl Extent {
    pub fn chunk_id(&self) -> Option<ChunkId> {
        match self.kind {
            ExtentKind::Chunk { id, .. } => Some(id),
            ExtentKind::Zero | ExtentKind::Unused => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub name: String,
    pub created: i64,
    pub params: ChunkerParams,
    pub size: u64,
    pub extents: Vec<Extent>,
    /// What the mapper found per partition (annotation: not part of the version id). Empty for
    /// versions stored before maps existed.
    pub partitions: Vec<PartReport>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("manifest is truncated")]
    Truncated,
    #[error("not a bootcast manifest (bad magic)")]
    BadMagic,
    #[error("manifest checksum mismatch: the file is damaged")]
    Checksum,
    #[error("manifest is not canonical: {0}")]
    NotCanonical(String),
    #[error("image name is not valid UTF-8")]
    BadName,
}

/// Appends extents in order, merging adjacent zero runs, so the result is canonical.
#[derive(Debug, Default)]
pub struct ExtentList {
    extents: Vec<Extent>,
    end: u64,
}

impl ExtentList {
    pub fn push_zero(&mut self, len: u64) {
        self.push_run(ExtentKind::Zero, len);
    }

    pub fn push_unused(&mut self, len: u64) {
        self.push_run(ExtentKind::Unused, len);
    }

    /// A zero or unused run, merged into the last extent when it is a run of the same kind.
    fn push_run(&mut self, kind: ExtentKind, len: u64) {
        if len == 0 {
            return;
        }
        self.end += len;
        if let Some(last) = self.extents.last_mut() {
            if last.kind == kind {
                last.len += len;
                return;
            }
        }
        self.extents.push(Extent {
            offset: self.end - len,
            len,
            kind,
        });
    }

    pub fn push_chunk(&mut self, len: u64, id: ChunkId, compressed: u32) {
        self.extents.push(Extent {
            offset: self.end,
            len,
            kind: ExtentKind::Chunk { id, compressed },
        });
        self.end += len;
    }

    pub fn size(&self) -> u64 {
        self.end
    }

    pub fn into_extents(self) -> Vec<Extent> {
        self.extents
    }
}

impl Manifest {
    /// The canonical content encoding whose BLAKE3 is the version id.
    fn encode_content(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(48 + self.extents.len() * 49);
        out.extend_from_slice(CONTENT_MAGIC);
        for v in [
            self.params.min,
            self.params.avg,
            self.params.max,
            self.params.zero_min,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&(self.extents.len() as u64).to_le_bytes());
        for e in &self.extents {
            match e.kind {
                ExtentKind::Zero => out.push(0),
                ExtentKind::Chunk { .. } => out.push(1),
                ExtentKind::Unused => out.push(2),
            }
            out.extend_from_slice(&e.offset.to_le_bytes());
            out.extend_from_slice(&e.len.to_le_bytes());
            if let ExtentKind::Chunk { id, .. } = e.kind {
                out.extend_from_slice(&id.0);
            }
        }
        out
    }

    pub fn version_id(&self) -> VersionId {
        VersionId(*blake3::hash(&self.encode_content()).as_bytes())
    }

    /// The whole file: content, annotations, trailer.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.encode_content();
        out.extend_from_slice(ANNOTATION_MAGIC);
        let name = self.name.as_bytes();
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(&self.created.to_le_bytes());
        for e in &self.extents {
            if let ExtentKind::Chunk { compressed, .. } = e.kind {
                out.extend_from_slice(&compressed.to_le_bytes());
            }
        }
        if !self.partitions.is_empty() {
            let json = serde_json::to_vec(&self.partitions).expect("reports serialize");
            out.extend_from_slice(PARTITIONS_MAGIC);
            out.extend_from_slice(&(json.len() as u32).to_le_bytes());
            out.extend_from_slice(&json);
        }
        let sum = blake3::hash(&out);
        out.extend_from_slice(sum.as_bytes());
        out
    }

    /// Decodes and checks a manifest file; returns it with its version id.
    pub fn decode(bytes: &[u8]) -> Result<(Manifest, VersionId), ManifestError> {
        if bytes.len() < 32 {
            return Err(ManifestError::Truncated);
        }
        let (body, trailer) = bytes.split_at(bytes.len() - 32);
        if blake3::hash(body).as_bytes() != trailer {
            return if bytes.starts_with(CONTENT_MAGIC) {
                Err(ManifestError::Checksum)
            } else {
                Err(ManifestError::BadMagic)
            };
        }
        let mut r = Reader { buf: body, pos: 0 };
        if r.take(8)? != CONTENT_MAGIC {
            return Err(ManifestError::BadMagic);
        }
        let params = ChunkerParams {
            min: r.u32()?,
            avg: r.u32()?,
            max: r.u32()?,
            zero_min: r.u32()?,
        };
        params
            .validate()
            .map_err(|why| ManifestError::NotCanonical(format!("chunker parameters: {why}")))?;
        let size = r.u64()?;
        let count = r.u64()?;
        // Each extent takes at least 17 bytes: refuse counts the file cannot hold.
        if count > (body.len() as u64) / 17 {
            return Err(ManifestError::Truncated);
        }
        let mut extents = Vec::with_capacity(count as usize);
        let mut end = 0u64;
        let mut prev: Option<u8> = None;
        for i in 0..count {
            let kind = r.u8()?;
            let offset = r.u64()?;
            let len = r.u64()?;
            let bad = |why: &str| ManifestError::NotCanonical(format!("extent {i}: {why}"));
            if offset != end {
                return Err(bad("not contiguous"));
            }
            if len == 0 {
                return Err(bad("empty"));
            }
            let kind = match kind {
                0 | 2 if prev == Some(kind) => return Err(bad("adjacent runs of one kind")),
                0 => ExtentKind::Zero,
                2 => ExtentKind::Unused,
                1 if len > u64::from(params.max) => return Err(bad("chunk longer than max")),
                1 => {
                    let mut id = [0u8; 32];
                    id.copy_from_slice(r.take(32)?);
                    ExtentKind::Chunk {
                        id: ChunkId(id),
                        compressed: 0,
                    }
                }
                _ => return Err(bad("unknown kind")),
            };
            prev = Some(match kind {
                ExtentKind::Zero => 0,
                ExtentKind::Chunk { .. } => 1,
                ExtentKind::Unused => 2,
            });
            end = end.checked_add(len).ok_or_else(|| bad("overflow"))?;
            extents.push(Extent { offset, len, kind });
        }
        if end != size {
            return Err(ManifestError::NotCanonical(format!(
                "extents cover {end} bytes, size says {size}"
            )));
        }
        let content_len = r.pos;
        if r.take(8)? != ANNOTATION_MAGIC {
            return Err(ManifestError::BadMagic);
        }
        let name_len = r.u16()? as usize;
        let name = std::str::from_utf8(r.take(name_len)?)
            .map_err(|_| ManifestError::BadName)?
            .to_string();
        let created = r.u64()? as i64;
        for e in extents.iter_mut() {
            if let ExtentKind::Chunk { compressed, .. } = &mut e.kind {
                *compressed = r.u32()?;
            }
        }
        let mut partitions = Vec::new();
        if r.pos != body.len() {
            if r.take(8)? != PARTITIONS_MAGIC {
                return Err(ManifestError::NotCanonical("trailing bytes".into()));
            }
            let len = r.u32()? as usize;
            partitions = serde_json::from_slice(r.take(len)?).map_err(|e| {
                ManifestError::NotCanonical(format!("the partition report does not read: {e}"))
            })?;
        }
        if r.pos != body.len() {
            return Err(ManifestError::NotCanonical("trailing bytes".into()));
        }
        let version = VersionId(*blake3::hash(&body[..content_len]).as_bytes());
        Ok((
            Manifest {
                name,
                created,
                params,
                size,
                extents,
                partitions,
            },
            version,
        ))
    }

    /// Bytes no filesystem uses (the unused runs): not stored, not written on restore.
    pub fn unused_bytes(&self) -> u64 {
        self.extents
            .iter()
            .filter(|e| e.kind == ExtentKind::Unused)
            .map(|e| e.len)
            .sum()
    }

    /// Chunk extents, in image order.
    pub fn chunks(&self) -> impl Iterator<Item = (&Extent, ChunkId, u32)> {
        self.extents.iter().filter_map(|e| match e.kind {
            ExtentKind::Chunk { id, compressed } => Some((e, id, compressed)),
            ExtentKind::Zero | ExtentKind::Unused => None,
        })
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ManifestError> {
        let end = self.pos.checked_add(n).ok_or(ManifestError::Truncated)?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or(ManifestError::Truncated)?;
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, ManifestError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, ManifestError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32, ManifestError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, ManifestError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOLDEN_RAW_ID: &str = "ea455124541ef5f7794659d4b3c5a6c27aeca95bd2aff7c7d12ddb737e139dfe";

    fn sample() -> Manifest {
        let mut l = ExtentList::default();
        l.push_chunk(100, ChunkId::of(b"a"), 40);
        l.push_zero(4096);
        l.push_zero(4096);
        l.push_chunk(7, ChunkId::of(b"b"), 9);
        Manifest {
            name: "win11".into(),
            created: 1_700_000_000,
            params: ChunkerParams::default(),
            size: l.size(),
            extents: l.into_extents(),
            partitions: Vec::new(),
        }
    }

    /// A mapped disk's manifest: unused runs and a partition report.
    fn mapped() -> Manifest {
        let mut l = ExtentList::default();
        l.push_chunk(100, ChunkId::of(b"a"), 40);
        l.push_unused(1 << 20);
        l.push_unused(1 << 20);
        l.push_zero(4096);
        l.push_unused(8192);
        l.push_chunk(7, ChunkId::of(b"b"), 9);
        Manifest {
            partitions: vec![PartReport {
                number: 1,
                start: 0,
                size: l.size(),
                fs: "ntfs".into(),
                used: Some(107),
                mapped: true,
                reason: None,
            }],
            size: l.size(),
            extents: l.into_extents(),
            ..sample()
        }
    }

    #[test]
    fn unused_runs_and_the_partition_report_round_trip() {
        let m = mapped();
        assert_eq!(m.extents.len(), 5, "adjacent unused runs merge");
        let (back, id) = Manifest::decode(&m.encode()).unwrap();
        assert_eq!(back, m);
        assert_eq!(id, m.version_id());
        assert_eq!(back.chunks().count(), 2, "unused runs hold no chunk");
    }

    #[test]
    fn the_map_is_part_of_the_id_the_report_is_not() {
        let a = mapped();
        let mut b = mapped();
        b.partitions[0].reason = Some("other".into());
        assert_eq!(a.version_id(), b.version_id());
        // the same bytes with a zero run where the map said unused: another version
        let mut c = mapped();
        c.extents[1].kind = ExtentKind::Zero;
        assert_ne!(a.version_id(), c.version_id());
    }

    #[test]
    fn a_raw_image_keeps_the_id_it_had_before_maps() {
        // sample() has no unused run: its encoding, unchanged since the first release, is pinned
        assert_eq!(
            sample().version_id().to_hex(),
            GOLDEN_RAW_ID,
            "the encoding of raw manifests changed: every stored version id would change"
        );
    }

    #[test]
    fn adjacent_unused_runs_are_not_canonical() {
        let mut m = mapped();
        // split the merged unused run in two
        let e = m.extents[1];
        m.extents[1].len = 4096;
        m.extents.insert(
            2,
            Extent {
                offset: e.offset + 4096,
                len: e.len - 4096,
                kind: ExtentKind::Unused,
            },
        );
        let err = Manifest::decode(&m.encode()).unwrap_err();
        assert!(matches!(err, ManifestError::NotCanonical(_)), "{err}");
    }

    #[test]
    fn round_trip_and_merge() {
        let m = sample();
        assert_eq!(m.extents.len(), 3, "adjacent zero runs merge");
        let (back, id) = Manifest::decode(&m.encode()).unwrap();
        assert_eq!(back, m);
        assert_eq!(id, m.version_id());
    }

    #[test]
    fn id_ignores_annotations() {
        let a = sample();
        let mut b = sample();
        b.name = "other".into();
        b.created = 5;
        if let ExtentKind::Chunk { compressed, .. } = &mut b.extents[0].kind {
            *compressed = 77;
        }
        assert_eq!(a.version_id(), b.version_id());
        let mut c = sample();
        c.params.avg = 64 * 1024;
        assert_ne!(a.version_id(), c.version_id());
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let bytes = mapped().encode();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(Manifest::decode(&bad).is_err(), "flip at byte {i} accepted");
        }
        for n in 0..bytes.len() {
            assert!(
                Manifest::decode(&bytes[..n]).is_err(),
                "truncation to {n} accepted"
            );
        }
    }
}

//! Used-block maps: which bytes of a disk its filesystems use.
//!
//! [`map_disk`] reads a disk's partition table (GPT or MBR) and, for each partition, the
//! filesystem's own allocation map: NTFS (`$Bitmap`), FAT12/16/32 (the FAT), ext2/3/4 (the block
//! group bitmaps) and Linux swap (only its header is used). What no filesystem uses becomes
//! *unused* ranges of the disk, which an ingest never reads, never stores and a restore never
//! writes. Everything else — the partition table, boot code, gaps between partitions, every used
//! block, every partition whose filesystem is unknown or cannot be read safely — is captured
//! byte for byte.
//!
//! Safety first: a filesystem is mapped only when its map can be trusted. BitLocker, an unknown
//! type, NTFS marked dirty or hibernated, a damaged bitmap: the partition is captured raw and
//! its [`PartReport`] says why. The parsers ([`fat`], [`ext`], [`swap`]) are I/O-free over byte
//! slices; the drivers read through [`ReadAt`].

pub mod ext;
pub mod fat;
pub mod ntfs;
pub mod swap;
pub mod table;

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;

/// Reads bytes at absolute offsets (`read_exact` semantics: a short read is an error).
pub trait ReadAt {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

impl ReadAt for std::fs::File {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

impl ReadAt for [u8] {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|o| self.get(o..o.checked_add(buf.len())?))
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// What a filesystem uses inside its partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Used {
    /// Short name: "ntfs", "fat12", "fat16", "fat32", "ext2", "ext3", "ext4", "swap".
    pub fs: &'static str,
    /// The allocation unit (cluster or block) in bytes.
    pub block: u64,
    /// Used byte ranges relative to the partition's first byte: sorted, disjoint, not adjacent,
    /// within the partition.
    pub used: Vec<Range<u64>>,
}

impl Used {
    /// The ranges are sorted, disjoint, not adjacent, non-empty and inside `size` bytes.
    pub fn check(&self, size: u64) -> Result<(), String> {
        check_ranges(&self.used, size)
    }
}

/// Why a filesystem is not mapped: captured raw, with this reason shown to staff.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// The filesystem cannot be read safely (damaged, dirty, encrypted, unsupported feature).
    #[error("{0}")]
    Unsafe(String),
    #[error("reading the disk: {0}")]
    Io(#[from] io::Error),
}

/// A partition window over a disk: offsets relative to the partition, bounded by its size.
pub struct Window<'a> {
    pub disk: &'a mut dyn ReadAt,
    pub start: u64,
    pub size: u64,
}

impl ReadAt for Window<'_> {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.size) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "read of {} bytes at {offset} passes the end of the partition ({} bytes)",
                    buf.len(),
                    self.size
                ),
            ));
        }
        self.disk.read_at(self.start + offset, buf)
    }
}

/// A [`ReadAt`] seen as a read-only `Read + Seek` device of `size` bytes (writes fail).
pub struct Device<'a> {
    pub dev: &'a mut dyn ReadAt,
    pub pos: u64,
    pub size: u64,
}

impl<'a> Device<'a> {
    pub fn new(dev: &'a mut dyn ReadAt, size: u64) -> Device<'a> {
        Device { dev, pos: 0, size }
    }
}

impl std::fmt::Debug for Device<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Device({} bytes at {})", self.size, self.pos)
    }
}

impl Read for Device<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.size.saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.dev.read_at(self.pos, &mut buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Device<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = pos.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad seek"))?;
        Ok(self.pos)
    }
}

impl Write for Device<'_> {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the mapper only reads",
        ))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Turns a bitmap (bit i of byte i/8, least significant first = unit i used) into byte ranges
/// of used units, `unit` bytes each, for the first `units` units; merged and sorted.
pub fn bitmap_ranges(bitmap: &[u8], units: u64, unit: u64, base: u64) -> Vec<Range<u64>> {
    let mut out: Vec<Range<u64>> = Vec::new();
    let mut i = 0u64;
    let units = units.min(bitmap.len() as u64 * 8);
    while i < units {
        let byte = bitmap[(i / 8) as usize];
        // whole bytes at once when aligned
        if i.is_multiple_of(8) && i + 8 <= units && (byte == 0 || byte == 0xff) {
            if byte == 0xff {
                push_range(&mut out, base + i * unit..base + (i + 8) * unit);
            }
            i += 8;
            continue;
        }
        if byte >> (i % 8) & 1 == 1 {
            push_range(&mut out, base + i * unit..base + (i + 1) * unit);
        }
        i += 1;
    }
    out
}

/// Appends `r` to sorted ranges, merging it with the last one when they touch or overlap.
pub fn push_range(out: &mut Vec<Range<u64>>, r: Range<u64>) {
    if r.is_empty() {
        return;
    }
    if let Some(last) = out.last_mut() {
        if r.start <= last.end {
            last.end = last.end.max(r.end);
            return;
        }
    }
    out.push(r);
}

/// Sorts and merges arbitrary ranges.
pub fn normalize(mut ranges: Vec<Range<u64>>) -> Vec<Range<u64>> {
    ranges.retain(|r| !r.is_empty());
    ranges.sort_by_key(|r| r.start);
    let mut out = Vec::with_capacity(ranges.len());
    for r in ranges {
        push_range(&mut out, r);
    }
    out
}

/// Unused runs shorter than this are captured anyway: a map of countless tiny holes would cost
/// more in manifest entries and chunk cuts than the bytes it saves.
pub const MIN_UNUSED: u64 = 64 << 10;
/// Unused ranges start and end on this boundary (rounded inwards), so every write a restore
/// makes is whole 4 KiB sectors.
pub const ALIGN: u64 = 4096;
/// Bytes read from each partition's start to recognise its filesystem.
const HEAD: usize = 64 << 10;

/// What the mapper found in one partition (or in a disk without a partition table).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartReport {
    /// Partition number (1-based; 0 = the whole disk, when it has no partition table).
    pub number: u32,
    pub start: u64,
    pub size: u64,
    /// "ntfs", "fat32", "ext4", "swap", "bitlocker", or "unknown".
    pub fs: String,
    /// Bytes the filesystem uses (mapped partitions only).
    pub used: Option<u64>,
    /// True when only the used bytes are captured.
    pub mapped: bool,
    /// Why the partition is captured raw.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
}

/// A whole disk's map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskMap {
    pub table: table::TableKind,
    pub partitions: Vec<PartReport>,
    /// Disk byte ranges no filesystem uses: sorted, disjoint, each at least [`MIN_UNUSED`] and
    /// aligned to [`ALIGN`].
    pub unused: Vec<Range<u64>>,
}

impl DiskMap {
    /// The map of a disk captured raw: every byte, with `reason` (e.g. "--raw").
    pub fn raw(size: u64, reason: &str) -> DiskMap {
        DiskMap {
            table: table::TableKind::None,
            partitions: vec![PartReport {
                number: 0,
                start: 0,
                size,
                fs: "unknown".into(),
                used: None,
                mapped: false,
                reason: Some(reason.into()),
            }],
            unused: Vec::new(),
        }
    }
}

/// Maps a disk of `size` bytes: its partition table, then each partition's filesystem.
///
/// Never fails on what the disk holds (a table or filesystem that does not read is captured raw,
/// and its report says why); only an I/O error of the disk itself is an error.
pub fn map_disk(disk: &mut dyn ReadAt, size: u64) -> io::Result<DiskMap> {
    let mut mbr = [0u8; 512];
    if size < 512 {
        return Ok(DiskMap::raw(size, "smaller than one sector"));
    }
    disk.read_at(0, &mut mbr)?;
    let (kind, parts) = match table::read(disk, size, &mbr) {
        Ok(t) => t,
        Err(why) => return Ok(DiskMap::raw(size, &format!("partition table: {why}"))),
    };
    let parts = if kind == table::TableKind::None {
        // a filesystem without a table (a partition image), or nothing known
        vec![table::Partition {
            number: 0,
            start: 0,
            size,
            kind: String::new(),
        }]
    } else {
        parts
    };
    let mut partitions = Vec::new();
    let mut unused = Vec::new();
    for p in &parts {
        let (report, used) = map_partition(disk, p)?;
        if let Some(used) = used {
            // the partition's free ranges, in disk offsets
            let mut at = 0u64;
            for r in used.iter().chain(std::iter::once(&(p.size..p.size))) {
                add_unused(&mut unused, p.start + at, p.start + r.start);
                at = r.end;
            }
        }
        partitions.push(report);
    }
    Ok(DiskMap {
        table: kind,
        partitions,
        unused,
    })
}

/// Records `start..end` as unused once aligned inwards, if still long enough.
fn add_unused(out: &mut Vec<Range<u64>>, start: u64, end: u64) {
    let start = start.div_ceil(ALIGN) * ALIGN;
    let end = end / ALIGN * ALIGN;
    if end > start && end - start >= MIN_UNUSED {
        out.push(start..end);
    }
}

/// One partition's report and, when mapped, its used ranges (partition offsets).
fn map_partition(
    disk: &mut dyn ReadAt,
    p: &table::Partition,
) -> io::Result<(PartReport, Option<Vec<Range<u64>>>)> {
    let mut report = PartReport {
        number: p.number,
        start: p.start,
        size: p.size,
        fs: "unknown".into(),
        used: None,
        mapped: false,
        reason: None,
    };
    let mut head = vec![0u8; HEAD.min(p.size as usize)];
    disk.read_at(p.start, &mut head)?;
    let mut win = Window {
        disk,
        start: p.start,
        size: p.size,
    };
    let result = if ntfs::is_bitlocker(&head) {
        report.fs = "bitlocker".into();
        Err(MapError::Unsafe(
            "BitLocker-encrypted: its blocks cannot be told apart".into(),
        ))
    } else if ntfs::detect(&head) {
        report.fs = "ntfs".into();
        ntfs::map(&mut win, p.size)
    } else if ext::detect(&head) {
        report.fs = "ext".into();
        ext::map(&mut win, p.size)
    } else if fat::detect(&head) {
        report.fs = "fat".into();
        fat::map(&mut win, p.size)
    } else if swap::detect(&head) {
        report.fs = "swap".into();
        swap::map(&mut win, p.size)
    } else {
        let what = if p.kind.is_empty() {
            "no known filesystem".to_string()
        } else {
            format!("no known filesystem (partition type {})", p.kind)
        };
        Err(MapError::Unsafe(what))
    };
    match result {
        Ok(used) => {
            report.fs = used.fs.into();
            if let Err(why) = used.check(p.size) {
                // a parser's mistake must not lose data: refuse the map
                report.reason = Some(format!("the {} map is not usable: {why}", used.fs));
                return Ok((report, None));
            }
            report.used = Some(used.used.iter().map(|r| r.end - r.start).sum());
            report.mapped = true;
            Ok((report, Some(used.used)))
        }
        Err(MapError::Unsafe(why)) => {
            report.reason = Some(why);
            Ok((report, None))
        }
        Err(MapError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
            report.reason = Some(format!("the filesystem points past its partition: {e}"));
            Ok((report, None))
        }
        Err(MapError::Io(e)) => Err(e),
    }
}

/// Ranges sorted, disjoint, non-empty and inside `size`.
fn check_ranges(ranges: &[Range<u64>], size: u64) -> Result<(), String> {
    let mut end = 0u64;
    for (i, r) in ranges.iter().enumerate() {
        if r.is_empty() || (i > 0 && r.start <= end) || r.end > size {
            return Err(format!(
                "range {i} ({r:?}) is empty, out of order or past {size}"
            ));
        }
        end = r.end;
    }
    Ok(())
}

/// What the parsers' unit tests share.
#[cfg(test)]
pub(crate) mod testing {
    use super::{MapError, Used};

    /// The reason of an `Unsafe` result; panics on anything else.
    pub fn unsafe_reason(r: Result<Used, MapError>) -> String {
        match r {
            Err(MapError::Unsafe(m)) => m,
            other => panic!("expected Unsafe, got {other:?}"),
        }
    }

    /// Panics unless the ranges are well-formed ([`Used::check`]).
    pub fn check_ranges(u: &Used, size: u64) {
        u.check(size)
            .unwrap_or_else(|e| panic!("{e}: {:?}", u.used));
    }
}

//! FAT12/16/32 (EFI system partitions, USB sticks): the used clusters from the FAT itself.
//!
//! Used = the reserved sectors (boot sector, FSInfo, backup boot sector), every FAT copy, the
//! fixed root directory (FAT12/16), every cluster whose FAT entry is not 0 (free) — chains,
//! end-of-chain and bad-cluster markers alike — and every sector after the last cluster up to
//! the partition's end (captured raw: a few sectors at most on a well-formed volume).
//!
//! Parsing is I/O-free ([`parse_boot_sector`], [`used_clusters`]); [`map`] reads through a
//! [`ReadAt`]. Anything the map cannot vouch for is [`MapError::Unsafe`] (captured raw): an
//! invalid BPB, a volume larger than its partition, an entry pointing past the last cluster,
//! FAT copies that differ, a volume marked dirty.

use std::ops::Range;

use super::{normalize, push_range, MapError, ReadAt, Used};

/// The largest FAT this reader loads (bytes of one copy covering the volume's clusters).
pub const MAX_FAT_BYTES: u64 = 256 << 20;

/// FAT type, by cluster count (Microsoft's rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FatType {
    Fat12,
    Fat16,
    Fat32,
}

impl FatType {
    /// "fat12", "fat16" or "fat32".
    pub fn name(self) -> &'static str {
        match self {
            FatType::Fat12 => "fat12",
            FatType::Fat16 => "fat16",
            FatType::Fat32 => "fat32",
        }
    }

    /// Bits of one FAT entry.
    pub fn entry_bits(self) -> u64 {
        match self {
            FatType::Fat12 => 12,
            FatType::Fat16 => 16,
            FatType::Fat32 => 32,
        }
    }

    /// The first value that is no next-cluster pointer: the bad-cluster marker; values from here
    /// up are bad or end-of-chain.
    fn bad_marker(self) -> u32 {
        match self {
            FatType::Fat12 => 0xFF7,
            FatType::Fat16 => 0xFFF7,
            FatType::Fat32 => 0x0FFF_FFF7,
        }
    }
}

/// The layout a FAT boot sector (BPB) describes. Sector numbers are relative to the volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Geometry {
    pub fat_type: FatType,
    pub bytes_per_sector: u64,
    pub sectors_per_cluster: u64,
    pub reserved_sectors: u64,
    pub num_fats: u64,
    pub root_entries: u64,
    /// Sectors of the volume (BPB_TotSec16, or BPB_TotSec32 when that is 0).
    pub total_sectors: u64,
    /// Sectors of one FAT copy.
    pub fat_sectors: u64,
    /// Sectors of the fixed root directory (0 on FAT32).
    pub root_dir_sectors: u64,
    /// The first sector of cluster 2.
    pub first_data_sector: u64,
    /// Data clusters (numbered 2 ..= cluster_count + 1), as the BPB's sizes give them, capped
    /// at what the FAT can address.
    pub cluster_count: u64,
    /// FAT32 BPB_ExtFlags bit 7: only one FAT is active (no mirroring).
    pub mirroring_disabled: bool,
    /// FAT32 BPB_ExtFlags bits 0-3: the active FAT when mirroring is disabled.
    pub active_fat: u64,
    /// FAT32 BPB_RootClus (0 on FAT12/16).
    pub root_cluster: u64,
    /// The boot sector's "dirty" state bit (set by Linux while mounted), read only when the
    /// extended boot signature (0x28/0x29) says the byte is meaningful.
    pub dirty: bool,
}

impl Geometry {
    /// Bytes of one cluster.
    pub fn cluster_bytes(&self) -> u64 {
        self.bytes_per_sector * self.sectors_per_cluster
    }

    /// Bytes of the volume.
    pub fn volume_bytes(&self) -> u64 {
        self.total_sectors * self.bytes_per_sector
    }

    /// Byte offset of FAT copy `i` (0-based).
    pub fn fat_offset(&self, i: u64) -> u64 {
        (self.reserved_sectors + i * self.fat_sectors) * self.bytes_per_sector
    }

    /// Bytes of one FAT copy that hold the entries 0 ..= cluster_count + 1.
    pub fn fat_entry_bytes(&self) -> u64 {
        ((self.cluster_count + 2) * self.fat_type.entry_bits()).div_ceil(8)
    }

    /// Byte offset of cluster 2 (the end of the reserved area, the FATs and the root directory).
    pub fn data_offset(&self) -> u64 {
        self.first_data_sector * self.bytes_per_sector
    }

    /// Byte offset of the first byte after the last cluster.
    pub fn data_end(&self) -> u64 {
        self.data_offset() + self.cluster_count * self.cluster_bytes()
    }

    /// Byte offset of cluster `n` (2 ..= cluster_count + 1).
    pub fn cluster_offset(&self, n: u64) -> u64 {
        self.data_offset() + (n - 2) * self.cluster_bytes()
    }
}

fn le16(b: &[u8], at: usize) -> u64 {
    match b.get(at..at + 2) {
        Some(s) => u16::from_le_bytes([s[0], s[1]]) as u64,
        None => 0,
    }
}

fn le32(b: &[u8], at: usize) -> u64 {
    match b.get(at..at + 4) {
        Some(s) => u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as u64,
        None => 0,
    }
}

/// Parses and validates a FAT boot sector (the first 512 bytes of the volume at least).
///
/// Checks: the jump instruction and the 0x55AA signature, no NTFS/exFAT OEM name, bytes per
/// sector a power of two in 512..=4096, sectors per cluster a power of two up to 128, at least
/// one reserved sector and one FAT, a valid media byte, FAT12/16 with a root directory and a
/// 16-bit FAT size, FAT32 with neither, areas that fit in the volume, at least one cluster, and
/// (FAT32) a root cluster inside the volume. The cluster count is capped at what the FAT can
/// address (as Linux does); the FAT type comes from the uncapped count.
pub fn parse_boot_sector(b: &[u8]) -> Result<Geometry, String> {
    if b.len() < 512 {
        return Err(format!(
            "the boot sector is {} bytes, less than 512",
            b.len()
        ));
    }
    if b[510] != 0x55 || b[511] != 0xAA {
        return Err("no 0x55AA boot signature at byte 510".into());
    }
    if !((b[0] == 0xEB && b[2] == 0x90) || b[0] == 0xE9) {
        return Err(format!(
            "no jump instruction at byte 0 ({:02x} {:02x} {:02x})",
            b[0], b[1], b[2]
        ));
    }
    match &b[3..11] {
        b"NTFS    " => return Err("OEM name \"NTFS\": an NTFS volume".into()),
        b"EXFAT   " => return Err("OEM name \"EXFAT\": an exFAT volume".into()),
        _ => {}
    }
    let bps = le16(b, 11);
    if !(512..=4096).contains(&bps) || !bps.is_power_of_two() {
        return Err(format!(
            "bytes per sector {bps} (must be a power of two from 512 to 4096)"
        ));
    }
    let spc = b[13] as u64;
    if spc == 0 || !spc.is_power_of_two() {
        return Err(format!(
            "sectors per cluster {spc} (must be a power of two)"
        ));
    }
    let reserved = le16(b, 14);
    if reserved == 0 {
        return Err("0 reserved sectors (the boot sector is one)".into());
    }
    let num_fats = b[16] as u64;
    if num_fats == 0 {
        return Err("0 FATs".into());
    }
    let root_entries = le16(b, 17);
    let tot16 = le16(b, 19);
    let media = b[21];
    if media != 0xF0 && media < 0xF8 {
        return Err(format!("invalid media byte {media:#04x}"));
    }
    let fatsz16 = le16(b, 22);
    let tot32 = le32(b, 32);
    let fatsz32 = le32(b, 36);
    let total_sectors = if tot16 != 0 { tot16 } else { tot32 };
    if total_sectors == 0 {
        return Err("0 total sectors".into());
    }
    let fat_sectors = if fatsz16 != 0 { fatsz16 } else { fatsz32 };
    if fat_sectors == 0 {
        return Err("FAT size 0".into());
    }
    // All fields are at most 32 bits: these products fit u64 easily.
    let root_dir_sectors = (root_entries * 32).div_ceil(bps);
    let meta = reserved + num_fats * fat_sectors + root_dir_sectors;
    let data_sectors = total_sectors
        .checked_sub(meta)
        .filter(|&d| d > 0)
        .ok_or_else(|| {
            format!(
            "the reserved sectors, FATs and root directory ({meta} sectors) fill the whole volume \
             ({total_sectors} sectors)"
        )
        })?;
    let bpb_clusters = data_sectors / spc;
    if bpb_clusters == 0 {
        return Err("no data cluster".into());
    }
    let fat_type = if bpb_clusters < 4085 {
        FatType::Fat12
    } else if bpb_clusters < 65525 {
        FatType::Fat16
    } else {
        FatType::Fat32
    };
    let name = fat_type.name();
    let (mirroring_disabled, active_fat, root_cluster, state_at) = if fat_type == FatType::Fat32 {
        if root_entries != 0 {
            return Err(format!(
                "{bpb_clusters} clusters make it FAT32, but it has a fixed root directory of \
                 {root_entries} entries"
            ));
        }
        if fatsz16 != 0 {
            return Err(format!(
                "{bpb_clusters} clusters make it FAT32, but its FAT size is a 16-bit one"
            ));
        }
        let ext_flags = le16(b, 40);
        (ext_flags & 0x80 != 0, ext_flags & 0x0F, le32(b, 44), 64)
    } else {
        if root_entries == 0 {
            return Err(format!(
                "{bpb_clusters} clusters make it {name}, but it has no root directory entries"
            ));
        }
        if fatsz16 == 0 {
            return Err(format!(
                "{bpb_clusters} clusters make it {name}, but its 16-bit FAT size is 0"
            ));
        }
        (false, 0, 0, 36)
    };
    // byte state_at + 2 is the extended boot signature; state_at + 1 the state (BS_Reserved1)
    let dirty = matches!(b[state_at + 2], 0x28 | 0x29) && b[state_at + 1] & 1 != 0;
    if mirroring_disabled && active_fat >= num_fats {
        return Err(format!(
            "the active FAT is number {active_fat} of {num_fats}"
        ));
    }
    // Cap the clusters at what one FAT copy can address (as Linux does).
    let addressable = fat_sectors * bps * 8 / fat_type.entry_bits();
    let cluster_count = bpb_clusters.min(addressable.saturating_sub(2));
    if cluster_count == 0 {
        return Err("the FAT cannot address a single cluster".into());
    }
    if fat_type == FatType::Fat32 && !(2..cluster_count + 2).contains(&root_cluster) {
        return Err(format!(
            "the root directory cluster {root_cluster} is not one of the clusters 2..={}",
            cluster_count + 1
        ));
    }
    Ok(Geometry {
        fat_type,
        bytes_per_sector: bps,
        sectors_per_cluster: spc,
        reserved_sectors: reserved,
        num_fats,
        root_entries,
        total_sectors,
        fat_sectors,
        root_dir_sectors,
        first_data_sector: meta,
        cluster_count,
        mirroring_disabled,
        active_fat,
        root_cluster,
        dirty,
    })
}

/// True when the partition's first bytes (at least its first 4096) hold a FAT boot sector: a
/// jump, the 0x55AA signature, a sane BPB, and not NTFS or exFAT.
pub fn detect(head: &[u8]) -> bool {
    parse_boot_sector(head).is_ok()
}

/// The FAT entry of cluster `n` in `fat` (None when `fat` is too short).
pub fn entry(fat: &[u8], fat_type: FatType, n: u64) -> Option<u32> {
    match fat_type {
        FatType::Fat12 => {
            let at = usize::try_from(n.checked_mul(3)? / 2).ok()?;
            let pair = fat.get(at..at.checked_add(2)?)?;
            let v = u16::from_le_bytes([pair[0], pair[1]]);
            Some(if n.is_multiple_of(2) {
                v & 0xFFF
            } else {
                v >> 4
            } as u32)
        }
        FatType::Fat16 => {
            let at = usize::try_from(n.checked_mul(2)?).ok()?;
            let s = fat.get(at..at.checked_add(2)?)?;
            Some(u16::from_le_bytes([s[0], s[1]]) as u32)
        }
        FatType::Fat32 => {
            let at = usize::try_from(n.checked_mul(4)?).ok()?;
            let s = fat.get(at..at.checked_add(4)?)?;
            Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]) & 0x0FFF_FFFF)
        }
    }
}

/// The used clusters of one FAT copy: ranges of cluster numbers (2 ..= cluster_count + 1)
/// whose entry is not 0, sorted and merged.
///
/// An entry is used when it is not 0: a next-cluster pointer (which must be a cluster of the
/// volume), a bad-cluster marker or an end-of-chain marker. An entry of 1 (a reserved value) or
/// one pointing past the last cluster is an error naming the cluster.
pub fn used_clusters(fat: &[u8], geom: &Geometry) -> Result<Vec<Range<u64>>, String> {
    let t = geom.fat_type;
    let last = geom.cluster_count + 1;
    let bad = t.bad_marker();
    let mut out: Vec<Range<u64>> = Vec::new();
    for n in 2..=last {
        let v = entry(fat, t, n).ok_or_else(|| {
            format!(
                "the FAT ({} bytes) ends before the entry of cluster {n}",
                fat.len()
            )
        })?;
        if v == 0 {
            continue;
        }
        if v < bad && (v < 2 || v as u64 > last) {
            return Err(format!(
                "the FAT entry of cluster {n} is {v:#x}, which is no cluster of this volume \
                 (2..={last}): the FAT is damaged"
            ));
        }
        push_range(&mut out, n..n + 1);
    }
    Ok(out)
}

/// The FAT16/FAT32 "clean shutdown" bit of entry 1 (Windows clears it while the volume is in
/// use). FAT12 has none: always clean.
fn entry1_clean(fat: &[u8], t: FatType) -> bool {
    match (t, entry(fat, t, 1)) {
        (FatType::Fat16, Some(v)) => v & 0x8000 != 0,
        (FatType::Fat32, Some(v)) => v & 0x0800_0000 != 0,
        _ => true,
    }
}

/// Reads `len` bytes at `offset` in pieces of at most 1 MiB, handing each piece to `f`.
fn read_chunks(
    dev: &mut dyn ReadAt,
    offset: u64,
    len: u64,
    mut f: impl FnMut(u64, &[u8]) -> Result<(), MapError>,
) -> Result<(), MapError> {
    const CHUNK: u64 = 1 << 20;
    let mut buf = vec![0u8; len.min(CHUNK) as usize];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(CHUNK) as usize;
        dev.read_at(offset + done, &mut buf[..n])?;
        f(done, &buf[..n])?;
        done += n as u64;
    }
    Ok(())
}

/// The used ranges of the FAT volume in a partition of `size` bytes read through `dev`
/// (partition-relative offsets).
pub fn map(dev: &mut dyn ReadAt, size: u64) -> Result<Used, MapError> {
    let unsafe_ = |m: String| MapError::Unsafe(m);
    if size < 512 {
        return Err(unsafe_(format!(
            "FAT: the partition ({size} bytes) is smaller than a boot sector"
        )));
    }
    let mut boot = [0u8; 512];
    dev.read_at(0, &mut boot)?;
    let g = parse_boot_sector(&boot).map_err(|m| unsafe_(format!("FAT boot sector: {m}")))?;
    let name = g.fat_type.name();
    if g.volume_bytes() > size {
        return Err(unsafe_(format!(
            "{name}: the volume ({} bytes) is larger than its partition ({size} bytes)",
            g.volume_bytes()
        )));
    }
    if g.dirty {
        return Err(unsafe_(format!(
            "{name} is marked dirty (not cleanly unmounted): run fsck.fat"
        )));
    }
    let fat_len = g.fat_entry_bytes();
    if fat_len > MAX_FAT_BYTES {
        return Err(unsafe_(format!(
            "{name}: the FAT is {} MiB, more than the {} MiB this reader loads",
            fat_len >> 20,
            MAX_FAT_BYTES >> 20
        )));
    }
    // The FAT every driver reads: FAT 0, or the active one when mirroring is disabled.
    let first = if g.mirroring_disabled {
        g.active_fat
    } else {
        0
    };
    let mut fat = vec![0u8; fat_len as usize];
    dev.read_at(g.fat_offset(first), &mut fat)?;
    let mut clusters =
        used_clusters(&fat, &g).map_err(|m| unsafe_(format!("{name} FAT {first}: {m}")))?;
    if !entry1_clean(&fat, g.fat_type) {
        return Err(unsafe_(format!(
            "{name} is marked dirty in FAT entry 1 (not cleanly unmounted): run fsck.fat"
        )));
    }
    // Entries 0 and 1 (media byte, clean-shutdown bit) are not compared: from entry 2 on.
    let skip = 2 * g.fat_type.entry_bits() / 8;
    for i in (0..g.num_fats).filter(|&i| i != first) {
        if g.mirroring_disabled {
            // Only the active FAT counts, but a driver ignoring the flag could read any:
            // the union of them all is used.
            let mut other = vec![0u8; fat_len as usize];
            dev.read_at(g.fat_offset(i), &mut other)?;
            let more =
                used_clusters(&other, &g).map_err(|m| unsafe_(format!("{name} FAT {i}: {m}")))?;
            clusters.extend(more);
            clusters = normalize(clusters);
            continue;
        }
        read_chunks(dev, g.fat_offset(i), fat_len, |at, piece| {
            let lo = at as usize;
            let want = &fat[lo..lo + piece.len()];
            if let Some(k) =
                (0..piece.len()).find(|&k| lo + k >= skip as usize && piece[k] != want[k])
            {
                let byte = (lo + k) as u64;
                let cluster = byte * 8 / g.fat_type.entry_bits();
                return Err(unsafe_(format!(
                    "{name}: FAT {i} differs from FAT {first} at byte {byte} (the entry of \
                     cluster {cluster}): the FAT copies disagree (run fsck.fat)"
                )));
            }
            Ok(())
        })?;
    }
    if g.fat_type == FatType::Fat32 && entry(&fat, g.fat_type, g.root_cluster) == Some(0) {
        return Err(unsafe_(format!(
            "{name}: the root directory's cluster {} is free in the FAT: the FAT is damaged",
            g.root_cluster
        )));
    }
    let mut used = Vec::with_capacity(clusters.len() + 2);
    push_range(&mut used, 0..g.data_offset());
    for c in &clusters {
        push_range(
            &mut used,
            g.cluster_offset(c.start)..g.cluster_offset(c.end),
        );
    }
    push_range(&mut used, g.data_end()..size);
    Ok(Used {
        fs: name,
        block: g.cluster_bytes(),
        used,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsmap::testing::{check_ranges, unsafe_reason};
    use proptest::prelude::*;
    use std::io;

    /// An image whose first `head.len()` bytes are stored; zeros up to `size`.
    struct Img {
        head: Vec<u8>,
        size: u64,
    }

    impl ReadAt for Img {
        fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
            let end = offset
                .checked_add(buf.len() as u64)
                .filter(|&e| e <= self.size)
                .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "past the end"))?;
            buf.fill(0);
            let h = self.head.len() as u64;
            if offset < h {
                let n = (end.min(h) - offset) as usize;
                buf[..n].copy_from_slice(&self.head[offset as usize..offset as usize + n]);
            }
            Ok(())
        }
    }

    struct Spec {
        bps: u16,
        spc: u8,
        reserved: u16,
        fats: u8,
        root_entries: u16,
        clusters: u64,
        fat32: bool,
    }

    const FAT12: Spec = Spec {
        bps: 512,
        spc: 4,
        reserved: 1,
        fats: 2,
        root_entries: 224,
        clusters: 1000,
        fat32: false,
    };
    const FAT16: Spec = Spec {
        bps: 512,
        spc: 1,
        reserved: 4,
        fats: 2,
        root_entries: 512,
        clusters: 5000,
        fat32: false,
    };
    const FAT32: Spec = Spec {
        bps: 512,
        spc: 1,
        reserved: 32,
        fats: 2,
        root_entries: 0,
        clusters: 70000,
        fat32: true,
    };

    /// A boot sector + FATs (+ root directory) of the spec; `extra` sectors after the last
    /// cluster. Returns the image (metadata only; data clusters read as zeros) and its size.
    fn build(s: &Spec, extra: u64) -> Img {
        let bps = s.bps as u64;
        let bits = if s.fat32 {
            32
        } else if s.clusters < 4085 {
            12
        } else {
            16
        };
        let fat_sectors = ((s.clusters + 2) * bits).div_ceil(8).div_ceil(bps);
        let root_sectors = (s.root_entries as u64 * 32).div_ceil(bps);
        let meta = s.reserved as u64 + s.fats as u64 * fat_sectors + root_sectors;
        let total = meta + s.clusters * s.spc as u64 + extra;
        let mut b = vec![0u8; (meta * bps) as usize];
        b[0] = 0xEB;
        b[1] = 0x3C;
        b[2] = 0x90;
        b[3..11].copy_from_slice(b"mkfs.fat");
        b[11..13].copy_from_slice(&s.bps.to_le_bytes());
        b[13] = s.spc;
        b[14..16].copy_from_slice(&s.reserved.to_le_bytes());
        b[16] = s.fats;
        b[17..19].copy_from_slice(&s.root_entries.to_le_bytes());
        if total < 0x10000 && !s.fat32 {
            b[19..21].copy_from_slice(&(total as u16).to_le_bytes());
        } else {
            b[32..36].copy_from_slice(&(total as u32).to_le_bytes());
        }
        b[21] = 0xF8;
        if s.fat32 {
            b[36..40].copy_from_slice(&(fat_sectors as u32).to_le_bytes());
            b[44..48].copy_from_slice(&2u32.to_le_bytes());
            b[66] = 0x29;
        } else {
            b[22..24].copy_from_slice(&(fat_sectors as u16).to_le_bytes());
            b[38] = 0x29;
        }
        b[510] = 0x55;
        b[511] = 0xAA;
        let mut img = Img {
            head: b,
            size: total * bps,
        };
        let t = parse_boot_sector(&img.head).unwrap().fat_type;
        set_all(&mut img, t, 0, 0x0FFF_FFF8);
        set_all(&mut img, t, 1, 0x0FFF_FFFF);
        if s.fat32 {
            set_all(&mut img, t, 2, 0x0FFF_FFFF); // root directory
        }
        img
    }

    fn set(img: &mut Img, t: FatType, fat: u64, n: u64, v: u32) {
        let g = parse_boot_sector(&img.head).unwrap();
        let base = g.fat_offset(fat) as usize;
        let b = &mut img.head;
        match t {
            FatType::Fat12 => {
                let at = base + (n * 3 / 2) as usize;
                let old = u16::from_le_bytes([b[at], b[at + 1]]);
                let v = (v & 0xFFF) as u16;
                let new = if n.is_multiple_of(2) {
                    (old & 0xF000) | v
                } else {
                    (old & 0x000F) | (v << 4)
                };
                b[at..at + 2].copy_from_slice(&new.to_le_bytes());
            }
            FatType::Fat16 => {
                let at = base + (n * 2) as usize;
                b[at..at + 2].copy_from_slice(&(v as u16).to_le_bytes());
            }
            FatType::Fat32 => {
                let at = base + (n * 4) as usize;
                b[at..at + 4].copy_from_slice(&v.to_le_bytes());
            }
        }
    }

    fn set_all(img: &mut Img, t: FatType, n: u64, v: u32) {
        let fats = img.head[16] as u64;
        for f in 0..fats {
            set(img, t, f, n, v);
        }
    }

    fn eoc(t: FatType) -> u32 {
        match t {
            FatType::Fat12 => 0xFFF,
            FatType::Fat16 => 0xFFFF,
            FatType::Fat32 => 0x0FFF_FFFF,
        }
    }

    /// Allocates a chain of clusters `start..start+len` in every FAT.
    fn chain(img: &mut Img, start: u64, len: u64) {
        let t = parse_boot_sector(&img.head).unwrap().fat_type;
        for n in start..start + len {
            let v = if n + 1 == start + len {
                eoc(t)
            } else {
                (n + 1) as u32
            };
            set_all(img, t, n, v);
        }
    }

    fn map_img(img: &mut Img) -> Result<Used, MapError> {
        let size = img.size;
        map(img, size)
    }

    /// What a boot sector edit should be refused for, and the edit.
    type BpbCase = (&'static str, Box<dyn Fn(&mut Vec<u8>)>);

    #[test]
    fn fat_types_by_cluster_count() {
        for (spec, name) in [(FAT12, "fat12"), (FAT16, "fat16"), (FAT32, "fat32")] {
            let img = build(&spec, 0);
            let g = parse_boot_sector(&img.head).unwrap();
            assert_eq!(g.fat_type.name(), name);
            assert_eq!(g.cluster_count, spec.clusters);
            assert!(detect(&img.head));
        }
    }

    #[test]
    fn boundaries_of_the_microsoft_rule() {
        for (clusters, t) in [
            (4084, FatType::Fat12),
            (4085, FatType::Fat16),
            (65524, FatType::Fat16),
            (65525, FatType::Fat32),
        ] {
            let spec = Spec {
                clusters,
                fat32: t == FatType::Fat32,
                root_entries: if t == FatType::Fat32 { 0 } else { 512 },
                ..FAT16
            };
            let img = build(&spec, 0);
            assert_eq!(
                parse_boot_sector(&img.head).unwrap().fat_type,
                t,
                "{clusters}"
            );
        }
    }

    #[test]
    fn fat16_map_is_metadata_plus_allocated_clusters() {
        let mut img = build(&FAT16, 0);
        chain(&mut img, 2, 10);
        chain(&mut img, 100, 1);
        chain(&mut img, 4999, 3); // up to the last cluster, 5001
                                  // the partition is 3 sectors larger than the volume: they are captured raw
        img.size += 3 * 512;
        let g = parse_boot_sector(&img.head).unwrap();
        let u = map_img(&mut img).unwrap();
        assert_eq!(u.fs, "fat16");
        assert_eq!(u.block, 512);
        check_ranges(&u, img.size);
        let data = g.data_offset();
        assert_eq!(g.data_end() + 3 * 512, img.size);
        assert_eq!(
            u.used,
            vec![
                0..data + 10 * 512,
                g.cluster_offset(100)..g.cluster_offset(101),
                g.cluster_offset(4999)..img.size,
            ]
        );
        // a free last cluster leaves a gap before the tail
        set_all(&mut img, FatType::Fat16, 5001, 0);
        set_all(&mut img, FatType::Fat16, 5000, 0xFFFF);
        let u = map_img(&mut img).unwrap();
        assert_eq!(
            u.used[2..],
            [
                g.cluster_offset(4999)..g.cluster_offset(5001),
                g.data_end()..img.size
            ]
        );
    }

    #[test]
    fn tail_sectors_smaller_than_a_cluster_are_used() {
        // FAT12 with 4-sector clusters: 3 extra sectors make no cluster
        let mut img = build(&FAT12, 3);
        let g = parse_boot_sector(&img.head).unwrap();
        assert_eq!(g.cluster_count, 1000);
        assert_eq!(g.data_end() + 3 * 512, img.size);
        let u = map_img(&mut img).unwrap();
        assert_eq!(u.used, vec![0..g.data_offset(), g.data_end()..img.size]);
    }

    #[test]
    fn fat12_odd_and_even_entries() {
        let mut img = build(&FAT12, 0);
        chain(&mut img, 3, 1);
        chain(&mut img, 6, 3);
        let g = parse_boot_sector(&img.head).unwrap();
        let u = map_img(&mut img).unwrap();
        assert_eq!(u.fs, "fat12");
        assert_eq!(u.block, 2048);
        assert_eq!(
            u.used,
            vec![
                0..g.data_offset(),
                g.cluster_offset(3)..g.cluster_offset(4),
                g.cluster_offset(6)..g.cluster_offset(9),
            ]
        );
        assert_eq!(g.data_end(), img.size);
    }

    #[test]
    fn fat32_root_and_bad_clusters_are_used() {
        let mut img = build(&FAT32, 0);
        chain(&mut img, 10, 5);
        set_all(&mut img, FatType::Fat32, 20, 0x0FFF_FFF7); // bad cluster
        set_all(&mut img, FatType::Fat32, 30, 0xF000_0000 | 31); // high bits are reserved
        set_all(&mut img, FatType::Fat32, 31, 0x0FFF_FFF8);
        let g = parse_boot_sector(&img.head).unwrap();
        let u = map_img(&mut img).unwrap();
        assert_eq!(u.fs, "fat32");
        assert_eq!(
            u.used,
            vec![
                0..g.cluster_offset(3),
                g.cluster_offset(10)..g.cluster_offset(15),
                g.cluster_offset(20)..g.cluster_offset(21),
                g.cluster_offset(30)..g.cluster_offset(32),
            ]
        );
    }

    #[test]
    fn entry_past_the_last_cluster_is_unsafe() {
        for spec in [FAT12, FAT16, FAT32] {
            let mut img = build(&spec, 0);
            let t = parse_boot_sector(&img.head).unwrap().fat_type;
            set_all(&mut img, t, 5, (spec.clusters + 2) as u32);
            let m = unsafe_reason(map_img(&mut img));
            assert!(m.contains("cluster 5") && m.contains("damaged"), "{m}");
            // a reserved value (1) too
            let mut img = build(&spec, 0);
            set_all(&mut img, t, 7, 1);
            let m = unsafe_reason(map_img(&mut img));
            assert!(m.contains("cluster 7"), "{m}");
        }
    }

    #[test]
    fn differing_fat_copies_are_unsafe() {
        let mut img = build(&FAT16, 0);
        chain(&mut img, 2, 4);
        set(&mut img, FatType::Fat16, 1, 50, 0xFFFF);
        let m = unsafe_reason(map_img(&mut img));
        assert!(
            m.contains("FAT 1 differs from FAT 0") && m.contains("cluster 50"),
            "{m}"
        );
        // entry 1 (clean-shutdown bit) may differ
        let mut img = build(&FAT16, 0);
        set(&mut img, FatType::Fat16, 1, 1, 0xFFF0);
        assert!(map_img(&mut img).is_ok());
    }

    #[test]
    fn fat32_without_mirroring_uses_the_union() {
        let mut img = build(&FAT32, 0);
        img.head[40] = 0x81; // mirroring off, FAT 1 active
        set(&mut img, FatType::Fat32, 0, 40, 0x0FFF_FFFF);
        set(&mut img, FatType::Fat32, 1, 50, 0x0FFF_FFFF);
        let g = parse_boot_sector(&img.head).unwrap();
        let u = map_img(&mut img).unwrap();
        assert_eq!(
            u.used,
            vec![
                0..g.cluster_offset(3),
                g.cluster_offset(40)..g.cluster_offset(41),
                g.cluster_offset(50)..g.cluster_offset(51),
            ]
        );
        img.head[40] = 0x82; // active FAT 2 of 2
        assert!(unsafe_reason(map_img(&mut img)).contains("active FAT"));
    }

    #[test]
    fn dirty_volumes_are_unsafe() {
        let mut img = build(&FAT32, 0);
        img.head[65] = 1;
        assert!(unsafe_reason(map_img(&mut img)).contains("dirty"));
        let mut img = build(&FAT16, 0);
        img.head[37] = 1;
        assert!(unsafe_reason(map_img(&mut img)).contains("dirty"));
        let mut img = build(&FAT16, 0);
        set_all(&mut img, FatType::Fat16, 1, 0x7FFF);
        assert!(unsafe_reason(map_img(&mut img)).contains("dirty"));
    }

    #[test]
    fn fat32_free_root_cluster_is_unsafe() {
        let mut img = build(&FAT32, 0);
        set_all(&mut img, FatType::Fat32, 2, 0);
        assert!(unsafe_reason(map_img(&mut img)).contains("root directory"));
    }

    #[test]
    fn invalid_bpbs() {
        let base = build(&FAT16, 0).head;
        let cases: Vec<BpbCase> = vec![
            (
                "bytes per sector",
                Box::new(|b| b[11..13].copy_from_slice(&768u16.to_le_bytes())),
            ),
            (
                "bytes per sector",
                Box::new(|b| b[11..13].copy_from_slice(&8192u16.to_le_bytes())),
            ),
            ("sectors per cluster", Box::new(|b| b[13] = 3)),
            ("sectors per cluster", Box::new(|b| b[13] = 0)),
            ("0 FATs", Box::new(|b| b[16] = 0)),
            ("reserved", Box::new(|b| b[14..16].fill(0))),
            ("signature", Box::new(|b| b[510] = 0)),
            ("jump", Box::new(|b| b[0] = 0)),
            ("NTFS", Box::new(|b| b[3..11].copy_from_slice(b"NTFS    "))),
            ("exFAT", Box::new(|b| b[3..11].copy_from_slice(b"EXFAT   "))),
            ("media", Box::new(|b| b[21] = 0x12)),
            ("total sectors", Box::new(|b| b[19..21].fill(0))),
            (
                "FAT size 0",
                Box::new(|b| {
                    b[22..24].fill(0);
                    b[36..40].fill(0)
                }),
            ),
            ("root directory", Box::new(|b| b[17..19].fill(0))),
            (
                "fill the whole volume",
                Box::new(|b| b[19..21].copy_from_slice(&10u16.to_le_bytes())),
            ),
        ];
        for (want, f) in cases {
            let mut b = base.clone();
            f(&mut b);
            let e = parse_boot_sector(&b).unwrap_err();
            assert!(e.contains(want), "{want}: {e}");
            assert!(!detect(&b));
        }
        assert!(parse_boot_sector(&base[..300]).is_err());
    }

    #[test]
    fn volume_larger_than_partition_is_unsafe() {
        let mut img = build(&FAT16, 0);
        let size = img.size - 512;
        img.size = size;
        let m = unsafe_reason(map(&mut img, size));
        assert!(m.contains("larger than its partition"), "{m}");
        let mut tiny = Img {
            head: vec![],
            size: 100,
        };
        assert!(unsafe_reason(map(&mut tiny, 100)).contains("smaller"));
    }

    #[test]
    fn truncated_device_is_an_io_error_not_a_panic() {
        let mut img = build(&FAT16, 0);
        let size = img.size;
        img.size = 2048; // the device ends before the FAT does, the caller's size says otherwise
        assert!(matches!(map(&mut img, size), Err(MapError::Io(_))));
    }

    #[test]
    fn fat_smaller_than_the_clusters_caps_them() {
        let mut img = build(&FAT16, 0);
        // 10 more sectors of data than the FAT can address: they become the raw tail
        let g0 = parse_boot_sector(&img.head).unwrap();
        let addressable = g0.fat_sectors * 512 / 2 - 2;
        let total = g0.first_data_sector + addressable + 10;
        img.head[19..21].copy_from_slice(&(total as u16).to_le_bytes());
        img.size = total * 512;
        let g = parse_boot_sector(&img.head).unwrap();
        assert_eq!(g.cluster_count, addressable);
        let u = map_img(&mut img).unwrap();
        assert_eq!(u.used.last().unwrap().end, img.size);
        assert!(u.used.last().unwrap().start <= g.data_end());
    }

    fn check_ok_or_unsafe(img: &mut Img) {
        let size = img.size;
        match map(img, size) {
            Ok(u) => check_ranges(&u, size),
            Err(MapError::Unsafe(m)) => assert!(!m.is_empty()),
            Err(MapError::Io(_)) => {}
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn arbitrary_bytes_never_panic(
            mut head in proptest::collection::vec(any::<u8>(), 0..4096),
            size in 0u64..(1 << 24),
            sig in any::<bool>(),
        ) {
            if sig && head.len() >= 512 {
                head[0] = 0xEB;
                head[2] = 0x90;
                head[510] = 0x55;
                head[511] = 0xAA;
                head[11..13].copy_from_slice(&512u16.to_le_bytes());
                head[13] = 1 << (head[13] % 8);
                head[16] = 1 + head[16] % 2;
                head[21] = 0xF8;
            }
            let _ = detect(&head);
            let mut img = Img { head, size };
            check_ok_or_unsafe(&mut img);
        }

        #[test]
        fn mutated_images_never_panic(
            which in 0usize..3,
            muts in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..12),
            bpb_muts in proptest::collection::vec((0usize..90, any::<u8>()), 0..4),
            size_delta in -1024i64..4096,
        ) {
            let spec = [FAT12, FAT16, FAT32].into_iter().nth(which).unwrap();
            let mut img = build(&spec, 2);
            chain(&mut img, 2, 7);
            let len = img.head.len();
            for (i, v) in muts {
                img.head[i.index(len)] = v;
            }
            for (i, v) in bpb_muts {
                img.head[i] = v;
            }
            img.size = img.size.saturating_add_signed(size_delta);
            check_ok_or_unsafe(&mut img);
        }

        #[test]
        fn random_allocations_map_exactly(
            which in 0usize..3,
            alloc in proptest::collection::btree_set(2u64..1000, 0..60),
            extra in 0u64..5,
        ) {
            let spec = [FAT12, FAT16, FAT32].into_iter().nth(which).unwrap();
            let mut img = build(&spec, extra);
            let g = parse_boot_sector(&img.head).unwrap();
            for &n in &alloc {
                set_all(&mut img, g.fat_type, n, eoc(g.fat_type));
            }
            let u = map_img(&mut img).unwrap();
            check_ranges(&u, img.size);
            let mut want = Vec::new();
            push_range(&mut want, 0..g.data_offset());
            if g.fat_type == FatType::Fat32 {
                push_range(&mut want, g.cluster_offset(2)..g.cluster_offset(3));
            }
            for &n in &alloc {
                push_range(&mut want, g.cluster_offset(n)..g.cluster_offset(n + 1));
            }
            push_range(&mut want, g.data_end()..img.size);
            prop_assert_eq!(u.used, want);
        }
    }
}

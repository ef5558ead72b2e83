//! ext2/3/4: the used blocks from the block groups' bitmaps.
//!
//! Used = the bits set in every group's block bitmap (counting only the blocks inside that
//! group), the area before the first data block and the superblock, every piece of group
//! metadata (superblock and descriptor backups with the reserved descriptor blocks, block and
//! inode bitmaps, inode tables, of every group, wherever they lie), and the blocks after the
//! filesystem's end up to the partition's end (captured raw).
//!
//! A group flagged BLOCK_UNINIT (honoured only with gdt_csum or metadata_csum, as the kernel
//! does) has no bitmap on disk: its used blocks are what ext4_init_block_bitmap would mark, the
//! superblock/descriptor backup, and, to be safe with flex_bg, the bitmaps and inode tables of
//! any group that lie inside it.
//!
//! Parsing is I/O-free ([`Superblock::parse`], [`parse_group_descs`], [`group_used`]); [`map`]
//! reads through a [`ReadAt`]. Whatever the map cannot vouch for is [`MapError::Unsafe`]
//! (captured raw): a bad superblock, a filesystem not cleanly unmounted or needing journal
//! recovery, a feature this reader does not know, a bad checksum, metadata outside the
//! filesystem, a bitmap whose free count disagrees with its descriptor.

use std::ops::Range;

use super::{bitmap_ranges, normalize, push_range, MapError, ReadAt, Used};

/// Byte offset of the primary superblock.
pub const SUPERBLOCK_OFFSET: u64 = 1024;
/// s_magic.
pub const MAGIC: u16 = 0xEF53;
/// The largest group descriptor table this reader loads.
pub const MAX_GDT_BYTES: u64 = 64 << 20;
/// Bytes read at once when consecutive groups' bitmaps are consecutive blocks (flex_bg).
const MAX_RUN_BYTES: u64 = 8 << 20;

/// Feature bits (s_feature_compat, s_feature_incompat, s_feature_ro_compat).
pub mod feature {
    pub const COMPAT_HAS_JOURNAL: u32 = 0x4;
    pub const COMPAT_RESIZE_INODE: u32 = 0x10;
    pub const COMPAT_LAZY_BG: u32 = 0x40;
    pub const COMPAT_SPARSE_SUPER2: u32 = 0x200;

    pub const INCOMPAT_COMPRESSION: u32 = 0x1;
    pub const INCOMPAT_FILETYPE: u32 = 0x2;
    pub const INCOMPAT_RECOVER: u32 = 0x4;
    pub const INCOMPAT_JOURNAL_DEV: u32 = 0x8;
    pub const INCOMPAT_META_BG: u32 = 0x10;
    pub const INCOMPAT_EXTENTS: u32 = 0x40;
    pub const INCOMPAT_64BIT: u32 = 0x80;
    pub const INCOMPAT_MMP: u32 = 0x100;
    pub const INCOMPAT_FLEX_BG: u32 = 0x200;
    pub const INCOMPAT_EA_INODE: u32 = 0x400;
    pub const INCOMPAT_DIRDATA: u32 = 0x1000;
    pub const INCOMPAT_CSUM_SEED: u32 = 0x2000;
    pub const INCOMPAT_LARGEDIR: u32 = 0x4000;
    pub const INCOMPAT_INLINE_DATA: u32 = 0x8000;
    pub const INCOMPAT_ENCRYPT: u32 = 0x10000;
    pub const INCOMPAT_CASEFOLD: u32 = 0x20000;
    /// The incompatible features whose blocks the bitmaps describe as usual.
    pub const INCOMPAT_SUPPORTED: u32 = INCOMPAT_FILETYPE
        | INCOMPAT_EXTENTS
        | INCOMPAT_64BIT
        | INCOMPAT_MMP
        | INCOMPAT_FLEX_BG
        | INCOMPAT_EA_INODE
        | INCOMPAT_DIRDATA
        | INCOMPAT_CSUM_SEED
        | INCOMPAT_LARGEDIR
        | INCOMPAT_INLINE_DATA
        | INCOMPAT_ENCRYPT
        | INCOMPAT_CASEFOLD;

    pub const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
    pub const RO_COMPAT_LARGE_FILE: u32 = 0x2;
    pub const RO_COMPAT_BTREE_DIR: u32 = 0x4;
    pub const RO_COMPAT_HUGE_FILE: u32 = 0x8;
    pub const RO_COMPAT_GDT_CSUM: u32 = 0x10;
    pub const RO_COMPAT_DIR_NLINK: u32 = 0x20;
    pub const RO_COMPAT_EXTRA_ISIZE: u32 = 0x40;
    pub const RO_COMPAT_HAS_SNAPSHOT: u32 = 0x80;
    pub const RO_COMPAT_QUOTA: u32 = 0x100;
    pub const RO_COMPAT_BIGALLOC: u32 = 0x200;
    pub const RO_COMPAT_METADATA_CSUM: u32 = 0x400;
    pub const RO_COMPAT_REPLICA: u32 = 0x800;
    pub const RO_COMPAT_READONLY: u32 = 0x1000;
    pub const RO_COMPAT_PROJECT: u32 = 0x2000;
    pub const RO_COMPAT_SHARED_BLOCKS: u32 = 0x4000;
    pub const RO_COMPAT_VERITY: u32 = 0x8000;
    pub const RO_COMPAT_ORPHAN_PRESENT: u32 = 0x10000;
    /// The read-only-compatible features whose blocks the bitmaps describe as usual.
    pub const RO_COMPAT_SUPPORTED: u32 = RO_COMPAT_SPARSE_SUPER
        | RO_COMPAT_LARGE_FILE
        | RO_COMPAT_BTREE_DIR
        | RO_COMPAT_HUGE_FILE
        | RO_COMPAT_GDT_CSUM
        | RO_COMPAT_DIR_NLINK
        | RO_COMPAT_EXTRA_ISIZE
        | RO_COMPAT_QUOTA
        | RO_COMPAT_METADATA_CSUM
        | RO_COMPAT_READONLY
        | RO_COMPAT_PROJECT
        | RO_COMPAT_SHARED_BLOCKS
        | RO_COMPAT_VERITY
        | RO_COMPAT_ORPHAN_PRESENT;
}
use feature::*;

/// bg_flags: the group's inode bitmap and table are not initialized (no effect on blocks).
pub const BG_INODE_UNINIT: u16 = 0x1;
/// bg_flags: the group's block bitmap is not initialized on disk (EXT4_BG_BLOCK_UNINIT is
/// 0x2; 0x1 is INODE_UNINIT, which the real-filesystem tests catch if confused).
pub const BG_BLOCK_UNINIT: u16 = 0x2;

fn le16(b: &[u8], at: usize) -> u16 {
    match b.get(at..at + 2) {
        Some(s) => u16::from_le_bytes([s[0], s[1]]),
        None => 0,
    }
}

fn le32(b: &[u8], at: usize) -> u32 {
    match b.get(at..at + 4) {
        Some(s) => u32::from_le_bytes([s[0], s[1], s[2], s[3]]),
        None => 0,
    }
}

const fn crc32c_table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

const fn crc16_table() -> [u16; 256] {
    let mut t = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u16;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xA001
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

static CRC32C: [u32; 256] = crc32c_table();
static CRC16: [u16; 256] = crc16_table();

/// CRC32c (Castagnoli) as ext4 uses it: from `crc`, no final inversion.
pub fn crc32c(mut crc: u32, data: &[u8]) -> u32 {
    for &b in data {
        crc = CRC32C[((crc ^ b as u32) & 0xFF) as usize] ^ (crc >> 8);
    }
    crc
}

/// CRC16 (poly 0x8005, reflected) as the kernel's crc16(): the gdt_csum descriptor checksum.
pub fn crc16(mut crc: u16, data: &[u8]) -> u16 {
    for &b in data {
        crc = (crc >> 8) ^ CRC16[((crc ^ b as u16) & 0xFF) as usize];
    }
    crc
}

/// The fields of an ext2/3/4 superblock this reader uses, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub inodes_count: u32,
    /// s_blocks_count_lo, with s_blocks_count_hi when 64bit.
    pub blocks_count: u64,
    /// s_free_blocks_count (lo, with hi when 64bit): a hint the kernel updates lazily.
    pub free_blocks_count: u64,
    pub first_data_block: u64,
    /// 1024 << s_log_block_size.
    pub block_size: u64,
    pub blocks_per_group: u64,
    pub inodes_per_group: u64,
    pub state: u16,
    pub rev_level: u32,
    /// s_inode_size (128 for revision 0).
    pub inode_size: u64,
    pub feature_compat: u32,
    pub feature_incompat: u32,
    pub feature_ro_compat: u32,
    pub uuid: [u8; 16],
    pub reserved_gdt_blocks: u64,
    /// Bytes of one group descriptor: 32, or s_desc_size with 64bit.
    pub desc_size: u64,
    /// s_backup_bgs: the groups holding backups with sparse_super2.
    pub backup_bgs: [u32; 2],
    /// The seed of metadata checksums: s_checksum_seed with csum_seed, else crc32c(uuid).
    pub csum_seed: u32,
}

impl Superblock {
    /// Parses and validates the 1024 bytes of a superblock (the partition's bytes 1024..2048).
    ///
    /// Checks the magic, the block size (1 to 64 KiB), the revision (0 or 1), the inode size,
    /// the first data block (1 for 1 KiB blocks, else 0), the block and inode counts per group,
    /// the descriptor size, the inode count against the groups, no cluster size different from
    /// the block size without bigalloc, and with metadata_csum the superblock's checksum. The
    /// state and features are checked by [`Superblock::check`].
    pub fn parse(raw: &[u8]) -> Result<Superblock, String> {
        if raw.len() < 1024 {
            return Err(format!(
                "the superblock is {} bytes, less than 1024",
                raw.len()
            ));
        }
        let magic = le16(raw, 56);
        if magic != MAGIC {
            return Err(format!("bad magic {magic:#06x} (ext has {MAGIC:#06x})"));
        }
        let log_bs = le32(raw, 24);
        if log_bs > 6 {
            return Err(format!(
                "block size 1024 << {log_bs} (this reader accepts up to 64 KiB)"
            ));
        }
        let block_size = 1024u64 << log_bs;
        let rev_level = le32(raw, 76);
        if rev_level > 1 {
            return Err(format!("revision {rev_level} (known: 0 and 1)"));
        }
        let (inode_size, compat, incompat, ro_compat) = if rev_level == 0 {
            (128, 0, 0, 0)
        } else {
            (
                le16(raw, 88) as u64,
                le32(raw, 92),
                le32(raw, 96),
                le32(raw, 100),
            )
        };
        if inode_size < 128 || !inode_size.is_power_of_two() || inode_size > block_size {
            return Err(format!(
                "inode size {inode_size} (must be a power of two from 128 to the block size)"
            ));
        }
        let bit64 = incompat & INCOMPAT_64BIT != 0;
        if ro_compat & RO_COMPAT_BIGALLOC == 0 && le32(raw, 28) != log_bs {
            return Err(format!(
                "cluster size 1024 << {} differs from the block size {block_size} without bigalloc",
                le32(raw, 28)
            ));
        }
        let first_data_block = le32(raw, 20) as u64;
        let want_first = u64::from(block_size == 1024);
        if first_data_block != want_first {
            return Err(format!(
                "first data block {first_data_block} (with {block_size}-byte blocks it is \
                 {want_first})"
            ));
        }
        let mut blocks_count = le32(raw, 4) as u64;
        let mut free_blocks_count = le32(raw, 12) as u64;
        if bit64 {
            blocks_count |= (le32(raw, 336) as u64) << 32;
            free_blocks_count |= (le32(raw, 344) as u64) << 32;
        }
        if blocks_count <= first_data_block {
            return Err(format!("block count {blocks_count}"));
        }
        let blocks_per_group = le32(raw, 32) as u64;
        if !(8..=8 * block_size).contains(&blocks_per_group) {
            return Err(format!(
                "{blocks_per_group} blocks per group (must be 8 to {})",
                8 * block_size
            ));
        }
        let inodes_per_group = le32(raw, 40) as u64;
        if !(1..=8 * block_size).contains(&inodes_per_group) {
            return Err(format!(
                "{inodes_per_group} inodes per group (must be 1 to {})",
                8 * block_size
            ));
        }
        let desc_size = if bit64 {
            let d = le16(raw, 254) as u64;
            if !(64..=1024).contains(&d) || !d.is_power_of_two() || d > block_size {
                return Err(format!(
                    "group descriptor size {d} (64bit needs a power of two from 64 to 1024)"
                ));
            }
            d
        } else {
            32
        };
        let groups = (blocks_count - first_data_block).div_ceil(blocks_per_group);
        let inodes_count = le32(raw, 0);
        if groups.checked_mul(inodes_per_group) != Some(inodes_count as u64) {
            return Err(format!(
                "{inodes_count} inodes, but {groups} groups of {inodes_per_group} inodes"
            ));
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&raw[104..120]);
        if ro_compat & RO_COMPAT_METADATA_CSUM != 0 {
            if raw[0x175] != 1 {
                return Err(format!(
                    "checksum type {} (metadata_csum knows 1, crc32c)",
                    raw[0x175]
                ));
            }
            let want = le32(raw, 0x3FC);
            let got = crc32c(!0, &raw[..0x3FC]);
            if want != got {
                return Err(format!(
                    "superblock checksum {want:#010x}, computed {got:#010x}: the superblock is \
                     damaged"
                ));
            }
        }
        let csum_seed = if incompat & INCOMPAT_CSUM_SEED != 0 {
            le32(raw, 0x270)
        } else {
            crc32c(!0, &uuid)
        };
        Ok(Superblock {
            inodes_count,
            blocks_count,
            free_blocks_count,
            first_data_block,
            block_size,
            blocks_per_group,
            inodes_per_group,
            state: le16(raw, 58),
            rev_level,
            inode_size,
            feature_compat: compat,
            feature_incompat: incompat,
            feature_ro_compat: ro_compat,
            uuid,
            reserved_gdt_blocks: le16(raw, 206) as u64,
            desc_size,
            backup_bgs: [le32(raw, 0x24C), le32(raw, 0x250)],
            csum_seed,
        })
    }

    /// "ext4" with any ext4-only feature (extents, 64bit, flex_bg, huge_file, dir_nlink,
    /// extra_isize, metadata_csum, gdt_csum), else "ext3" with a journal, else "ext2".
    pub fn fs_name(&self) -> &'static str {
        let ext4_incompat = INCOMPAT_EXTENTS | INCOMPAT_64BIT | INCOMPAT_FLEX_BG;
        let ext4_ro = RO_COMPAT_HUGE_FILE
            | RO_COMPAT_DIR_NLINK
            | RO_COMPAT_EXTRA_ISIZE
            | RO_COMPAT_METADATA_CSUM
            | RO_COMPAT_GDT_CSUM;
        if self.feature_incompat & ext4_incompat != 0 || self.feature_ro_compat & ext4_ro != 0 {
            "ext4"
        } else if self.feature_compat & COMPAT_HAS_JOURNAL != 0 {
            "ext3"
        } else {
            "ext2"
        }
    }

    /// Whether the filesystem can be mapped safely: cleanly unmounted, no journal to replay,
    /// only features whose blocks the bitmaps describe as usual.
    pub fn check(&self) -> Result<(), String> {
        let name = self.fs_name();
        if self.state & 1 == 0 {
            return Err(format!("{name} was not cleanly unmounted (needs e2fsck)"));
        }
        if self.state & 2 != 0 {
            return Err(format!("{name} has recorded errors (needs e2fsck)"));
        }
        if self.state & !3 != 0 {
            return Err(format!(
                "{name} state {:#06x} is not a clean one (needs e2fsck)",
                self.state
            ));
        }
        let inc = self.feature_incompat;
        if inc & INCOMPAT_RECOVER != 0 {
            return Err(format!(
                "{name} journal needs recovery (mount it once or run e2fsck)"
            ));
        }
        if inc & INCOMPAT_JOURNAL_DEV != 0 {
            return Err(format!(
                "{name}: this is an external journal device, not a filesystem"
            ));
        }
        if inc & INCOMPAT_META_BG != 0 {
            return Err(format!(
                "{name}: meta_bg is not supported (its group descriptors are placed differently)"
            ));
        }
        if inc & INCOMPAT_COMPRESSION != 0 {
            return Err(format!("{name}: the compression feature is not supported"));
        }
        let unknown = inc & !INCOMPAT_SUPPORTED;
        if unknown != 0 {
            return Err(format!(
                "{name}: unsupported incompatible feature bits {unknown:#x}"
            ));
        }
        let ro = self.feature_ro_compat;
        if ro & RO_COMPAT_BIGALLOC != 0 {
            return Err(format!(
                "{name}: bigalloc is not supported (its bitmaps count clusters)"
            ));
        }
        let unknown = ro & !RO_COMPAT_SUPPORTED;
        if unknown != 0 {
            return Err(format!(
                "{name}: unsupported read-only feature bits {unknown:#x}"
            ));
        }
        if self.feature_compat & COMPAT_LAZY_BG != 0 {
            return Err(format!("{name}: lazy_bg is not supported"));
        }
        Ok(())
    }

    /// Number of block groups.
    pub fn group_count(&self) -> u64 {
        (self.blocks_count - self.first_data_block).div_ceil(self.blocks_per_group)
    }

    /// The blocks of group `g`.
    pub fn group_blocks(&self, g: u64) -> Range<u64> {
        let start = self
            .first_data_block
            .saturating_add(g.saturating_mul(self.blocks_per_group))
            .min(self.blocks_count);
        start
            ..start
                .saturating_add(self.blocks_per_group)
                .min(self.blocks_count)
    }

    /// Blocks of the group descriptor table.
    pub fn gdt_blocks(&self) -> u64 {
        (self.group_count() * self.desc_size).div_ceil(self.block_size)
    }

    /// Blocks of one group's inode table.
    pub fn inode_table_blocks(&self) -> u64 {
        (self.inodes_per_group * self.inode_size).div_ceil(self.block_size)
    }

    /// The first block of the group descriptor table (after the superblock's block).
    pub fn gdt_start(&self) -> u64 {
        self.first_data_block + 1
    }

    /// Whether group `g` holds a superblock and descriptor backup (ext4_bg_has_super).
    pub fn has_super(&self, g: u64) -> bool {
        if g == 0 {
            return true;
        }
        if self.feature_compat & COMPAT_SPARSE_SUPER2 != 0 {
            return self.backup_bgs.iter().any(|&b| b as u64 == g);
        }
        if g <= 1 || self.feature_ro_compat & RO_COMPAT_SPARSE_SUPER == 0 {
            return true;
        }
        if g.is_multiple_of(2) {
            return false;
        }
        [3u64, 5, 7].iter().any(|&p| {
            let mut x = p;
            while x < g {
                match x.checked_mul(p) {
                    Some(y) => x = y,
                    None => return false,
                }
            }
            x == g
        })
    }

    /// Whether descriptors carry a checksum (gdt_csum or metadata_csum): then BLOCK_UNINIT is
    /// honoured.
    pub fn has_group_csum(&self) -> bool {
        self.feature_ro_compat & (RO_COMPAT_GDT_CSUM | RO_COMPAT_METADATA_CSUM) != 0
    }

    fn metadata_csum(&self) -> bool {
        self.feature_ro_compat & RO_COMPAT_METADATA_CSUM != 0
    }
}

/// True when the partition's first bytes (at least its first 4096) hold an ext2/3/4
/// superblock: the magic 0xEF53 at byte 1080 and a block size this reader knows.
pub fn detect(head: &[u8]) -> bool {
    let sb = SUPERBLOCK_OFFSET as usize;
    head.len() >= sb + 1024 && le16(head, sb + 56) == MAGIC && le32(head, sb + 24) <= 6
}

/// One group descriptor, the fields this reader uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDesc {
    pub block_bitmap: u64,
    pub inode_bitmap: u64,
    pub inode_table: u64,
    pub free_blocks: u64,
    pub flags: u16,
    /// bg_block_bitmap_csum (lo, with hi when the descriptor has it).
    pub block_bitmap_csum: u32,
    pub checksum: u16,
}

impl GroupDesc {
    /// Parses one descriptor of `sb.desc_size` bytes (the high halves with 64bit).
    pub fn parse(raw: &[u8], sb: &Superblock) -> Result<GroupDesc, String> {
        let size = sb.desc_size as usize;
        let raw = raw
            .get(..size)
            .ok_or_else(|| format!("a group descriptor is {size} bytes, {} given", raw.len()))?;
        let wide = size >= 64;
        let hi32 = |at: usize| {
            if wide {
                (le32(raw, at) as u64) << 32
            } else {
                0
            }
        };
        let hi16 = |at: usize| {
            if wide {
                (le16(raw, at) as u64) << 16
            } else {
                0
            }
        };
        Ok(GroupDesc {
            block_bitmap: le32(raw, 0) as u64 | hi32(0x20),
            inode_bitmap: le32(raw, 4) as u64 | hi32(0x24),
            inode_table: le32(raw, 8) as u64 | hi32(0x28),
            free_blocks: le16(raw, 12) as u64 | hi16(0x2C),
            flags: le16(raw, 18),
            block_bitmap_csum: le16(raw, 0x18) as u32 | (hi16(0x38) as u32),
            checksum: le16(raw, 0x1E),
        })
    }

    /// Whether the block bitmap is not on disk (BLOCK_UNINIT, honoured with group checksums).
    pub fn block_uninit(&self, sb: &Superblock) -> bool {
        sb.has_group_csum() && self.flags & BG_BLOCK_UNINIT != 0
    }
}

/// The checksum descriptor `raw` of group `g` should carry (ext4_group_desc_csum), or None
/// when the filesystem has no descriptor checksums.
pub fn desc_checksum(sb: &Superblock, g: u32, raw: &[u8]) -> Option<u16> {
    let size = (sb.desc_size as usize).min(raw.len());
    let raw = &raw[..size];
    let head = raw.get(..0x1E)?;
    let tail = raw.get(0x20..).unwrap_or(&[]);
    if sb.metadata_csum() {
        let mut c = crc32c(sb.csum_seed, &g.to_le_bytes());
        c = crc32c(c, head);
        c = crc32c(c, &[0, 0]);
        c = crc32c(c, tail);
        Some((c & 0xFFFF) as u16)
    } else if sb.feature_ro_compat & RO_COMPAT_GDT_CSUM != 0 {
        let mut c = crc16(!0, &sb.uuid);
        c = crc16(c, &g.to_le_bytes());
        c = crc16(c, head);
        if sb.feature_incompat & INCOMPAT_64BIT != 0 {
            c = crc16(c, tail);
        }
        Some(c)
    } else {
        None
    }
}

/// The checksum of a group's block bitmap with metadata_csum (the bytes of
/// blocks_per_group / 8, 16 bits with 32-byte descriptors), or None without metadata_csum.
pub fn bitmap_checksum(sb: &Superblock, bitmap: &[u8]) -> Option<u32> {
    if !sb.metadata_csum() {
        return None;
    }
    let n = ((sb.blocks_per_group / 8) as usize).min(bitmap.len());
    let c = crc32c(sb.csum_seed, &bitmap[..n]);
    Some(if sb.desc_size >= 0x3A { c } else { c & 0xFFFF })
}

/// Parses the group descriptor table (`gdt` holds at least `group_count * desc_size` bytes)
/// and validates every descriptor: its checksum (gdt_csum / metadata_csum), its bitmaps and
/// inode table inside the filesystem (inside the group without flex_bg) and clear of the
/// superblock and descriptors, its free count no larger than the group.
pub fn parse_group_descs(gdt: &[u8], sb: &Superblock) -> Result<Vec<GroupDesc>, String> {
    let name = sb.fs_name();
    let groups = sb.group_count();
    let ds = sb.desc_size as usize;
    let need = usize::try_from(groups)
        .ok()
        .and_then(|g| g.checked_mul(ds))
        .filter(|&n| n <= gdt.len());
    if need.is_none() {
        return Err(format!(
            "{name}: the group descriptor table holds {} bytes, {groups} descriptors of {ds} \
             need more",
            gdt.len()
        ));
    }
    let flex = sb.feature_incompat & INCOMPAT_FLEX_BG != 0;
    let low = sb.gdt_start() + sb.gdt_blocks();
    let itb = sb.inode_table_blocks();
    let mut out = Vec::with_capacity(groups as usize);
    for (g, raw) in gdt.chunks_exact(ds).take(groups as usize).enumerate() {
        let d = GroupDesc::parse(raw, sb)?;
        if let Some(want) = desc_checksum(sb, g as u32, raw) {
            if want != d.checksum {
                return Err(format!(
                    "{name} group {g}: descriptor checksum {:#06x}, computed {want:#06x}: the \
                     descriptor is damaged",
                    d.checksum
                ));
            }
        }
        let range = sb.group_blocks(g as u64);
        let allowed = if flex {
            low..sb.blocks_count
        } else {
            range.start.max(low)..range.end
        };
        for (what, start, len) in [
            ("block bitmap", d.block_bitmap, 1),
            ("inode bitmap", d.inode_bitmap, 1),
            ("inode table", d.inode_table, itb),
        ] {
            let end = start.checked_add(len);
            if start < allowed.start || end.is_none_or(|e| e > allowed.end) {
                return Err(format!(
                    "{name} group {g}: the {what} at block {start} ({len} blocks) lies outside \
                     blocks {}..{} where it must be",
                    allowed.start, allowed.end
                ));
            }
        }
        let n = range.end - range.start;
        if d.free_blocks > n {
            return Err(format!(
                "{name} group {g}: the descriptor counts {} free blocks in a group of {n}",
                d.free_blocks
            ));
        }
        out.push(d);
    }
    Ok(out)
}

/// The metadata blocks of the filesystem, sorted and merged: the superblock and descriptor
/// table (and, with `reserved`, the reserved descriptor blocks) in every group holding a
/// backup, and every group's block bitmap, inode bitmap and inode table.
pub fn metadata_blocks(sb: &Superblock, descs: &[GroupDesc], reserved: bool) -> Vec<Range<u64>> {
    let mut out = Vec::with_capacity(descs.len() * 3 + 1);
    let backup = 1 + sb.gdt_blocks() + if reserved { sb.reserved_gdt_blocks } else { 0 };
    for g in 0..sb.group_count() {
        if sb.has_super(g) {
            let r = sb.group_blocks(g);
            out.push(r.start..r.start.saturating_add(backup).min(r.end));
        }
    }
    let itb = sb.inode_table_blocks();
    for d in descs {
        out.push(d.block_bitmap..d.block_bitmap.saturating_add(1));
        out.push(d.inode_bitmap..d.inode_bitmap.saturating_add(1));
        out.push(d.inode_table..d.inode_table.saturating_add(itb));
    }
    normalize(out)
}

/// The blocks of `meta` (sorted, merged) inside `range`.
fn meta_in<'a>(
    meta: &'a [Range<u64>],
    range: &Range<u64>,
) -> impl Iterator<Item = Range<u64>> + 'a {
    let first = meta.partition_point(|m| m.end <= range.start);
    let (start, end) = (range.start, range.end);
    meta[first..]
        .iter()
        .take_while(move |m| m.start < end)
        .map(move |m| m.start.max(start)..m.end.min(end))
        .filter(|m| !m.is_empty())
}

fn bit(bitmap: &[u8], i: u64) -> bool {
    bitmap
        .get((i / 8) as usize)
        .is_some_and(|b| b >> (i % 8) & 1 == 1)
}

/// The used byte ranges of initialized group `g` from its block `bitmap` (at least
/// ceil(blocks_per_group / 8) bytes), after checking it: its checksum (metadata_csum), its free
/// bits (only for the blocks inside the group) against the descriptor's free count, and the
/// metadata blocks `required` (sorted, merged) inside the group all marked used.
pub fn group_used(
    sb: &Superblock,
    g: u64,
    desc: &GroupDesc,
    bitmap: &[u8],
    required: &[Range<u64>],
) -> Result<Vec<Range<u64>>, String> {
    let name = sb.fs_name();
    let range = sb.group_blocks(g);
    let n = range.end - range.start;
    if (bitmap.len() as u64) * 8 < n {
        return Err(format!(
            "{name} group {g}: the bitmap holds {} bits for {n} blocks",
            bitmap.len() * 8
        ));
    }
    if let Some(want) = bitmap_checksum(sb, bitmap) {
        if want != desc.block_bitmap_csum {
            return Err(format!(
                "{name} group {g}: block bitmap checksum {:#x}, computed {want:#x}: the bitmap \
                 is damaged",
                desc.block_bitmap_csum
            ));
        }
    }
    let whole = (n / 8) as usize;
    let mut set: u64 = bitmap[..whole].iter().map(|b| b.count_ones() as u64).sum();
    for i in (whole as u64 * 8)..n {
        set += bit(bitmap, i) as u64;
    }
    let free = n - set;
    if free != desc.free_blocks {
        return Err(format!(
            "{name} group {g}: the bitmap counts {free} free blocks, the descriptor says {}: \
             the bitmap may be damaged",
            desc.free_blocks
        ));
    }
    for m in meta_in(required, &range) {
        if let Some(b) = m.clone().find(|&b| !bit(bitmap, b - range.start)) {
            return Err(format!(
                "{name} group {g}: block {b} holds filesystem metadata but is free in the \
                 bitmap: the bitmap is damaged"
            ));
        }
    }
    let bs = sb.block_size;
    Ok(bitmap_ranges(bitmap, n, bs, range.start * bs))
}

/// Checks a BLOCK_UNINIT group: its descriptor may not count fewer free blocks than the
/// metadata `meta` (sorted, merged) inside the group leaves, or blocks were allocated there.
pub fn check_uninit_group(
    sb: &Superblock,
    g: u64,
    desc: &GroupDesc,
    meta: &[Range<u64>],
) -> Result<(), String> {
    let range = sb.group_blocks(g);
    let n = range.end - range.start;
    let meta_n: u64 = meta_in(meta, &range).map(|m| m.end - m.start).sum();
    if desc.free_blocks < n.saturating_sub(meta_n) {
        return Err(format!(
            "{} group {g}: marked BLOCK_UNINIT, but its descriptor counts {} free blocks of \
             {n} where metadata leaves {}: blocks may be in use",
            sb.fs_name(),
            desc.free_blocks,
            n.saturating_sub(meta_n)
        ));
    }
    Ok(())
}

/// The used ranges of the ext2/3/4 filesystem in a partition of `size` bytes read through
/// `dev` (partition-relative offsets).
pub fn map(dev: &mut dyn ReadAt, size: u64) -> Result<Used, MapError> {
    let unsafe_ = MapError::Unsafe;
    if size < SUPERBLOCK_OFFSET + 1024 {
        return Err(unsafe_(format!(
            "ext: the partition ({size} bytes) is too small for a superblock"
        )));
    }
    let mut raw = vec![0u8; 1024];
    dev.read_at(SUPERBLOCK_OFFSET, &mut raw)?;
    let sb = Superblock::parse(&raw).map_err(|m| unsafe_(format!("ext superblock: {m}")))?;
    sb.check().map_err(unsafe_)?;
    let name = sb.fs_name();
    let bs = sb.block_size;
    let fs_bytes = sb
        .blocks_count
        .checked_mul(bs)
        .filter(|&b| b <= size)
        .ok_or_else(|| {
            unsafe_(format!(
                "{name}: {} blocks of {bs} bytes are more than the partition's {size} bytes",
                sb.blocks_count
            ))
        })?;
    let groups = sb.group_count();
    let gdt_len = groups * sb.desc_size;
    if gdt_len > MAX_GDT_BYTES {
        return Err(unsafe_(format!(
            "{name}: {groups} groups: the descriptor table ({} MiB) is larger than the {} MiB \
             this reader loads",
            gdt_len >> 20,
            MAX_GDT_BYTES >> 20
        )));
    }
    let gdt_at = sb.gdt_start() * bs;
    if gdt_at + gdt_len > fs_bytes {
        return Err(unsafe_(format!(
            "{name}: the group descriptor table passes the filesystem's end"
        )));
    }
    let mut gdt = vec![0u8; gdt_len as usize];
    dev.read_at(gdt_at, &mut gdt)?;
    let descs = parse_group_descs(&gdt, &sb).map_err(unsafe_)?;
    drop(gdt);
    let resize = sb.feature_compat & COMPAT_RESIZE_INODE != 0;
    let required = metadata_blocks(&sb, &descs, resize);
    let meta = metadata_blocks(&sb, &descs, true);

    let mut used: Vec<Range<u64>> = Vec::new();
    // the boot area, the superblock, and anything before the first data block
    used.push(0..(SUPERBLOCK_OFFSET + 1024).max(sb.first_data_block * bs));
    used.extend(meta.iter().map(|m| m.start * bs..m.end * bs));
    used.push(fs_bytes..size);

    let bitmap_len = sb.blocks_per_group.div_ceil(8) as usize;
    let max_run = (MAX_RUN_BYTES / bs).max(1);
    let mut g = 0u64;
    while g < groups {
        let d = &descs[g as usize];
        if d.block_uninit(&sb) {
            check_uninit_group(&sb, g, d, &meta).map_err(unsafe_)?;
            g += 1;
            continue;
        }
        // a run of initialized groups whose bitmaps are consecutive blocks: one read
        let mut run = 1u64;
        while g + run < groups
            && run < max_run
            && !descs[(g + run) as usize].block_uninit(&sb)
            && descs[(g + run) as usize].block_bitmap == d.block_bitmap + run
        {
            run += 1;
        }
        let mut buf = vec![0u8; (run * bs) as usize];
        dev.read_at(d.block_bitmap * bs, &mut buf)?;
        for (k, block) in buf.chunks_exact(bs as usize).enumerate() {
            let gk = g + k as u64;
            let r = group_used(
                &sb,
                gk,
                &descs[gk as usize],
                &block[..bitmap_len],
                &required,
            )
            .map_err(unsafe_)?;
            used.extend(r);
        }
        g += run;
    }
    let used = normalize(used);
    let mut out = Vec::with_capacity(used.len());
    for r in used {
        push_range(&mut out, r.start.min(size)..r.end.min(size));
    }
    Ok(Used {
        fs: name,
        block: bs,
        used: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsmap::testing::{check_ranges, unsafe_reason};
    use proptest::prelude::*;
    use std::io;

    struct Img {
        bytes: Vec<u8>,
    }

    impl ReadAt for Img {
        fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
            self.bytes.as_mut_slice().read_at(offset, buf)
        }
    }

    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    enum Csum {
        None,
        Gdt,
        Meta,
    }

    #[derive(Clone, Debug)]
    struct Opts {
        bs: u64,
        groups: u64,
        bpg: u64,
        last_short: u64,
        ipg: u64,
        isize: u64,
        flex: bool,
        csum: Csum,
        bit64: bool,
        reserved_gdt: u64,
        /// groups flagged BLOCK_UNINIT (they get no data)
        uninit: Vec<u64>,
        /// allocated data blocks (runs of absolute block numbers)
        data: Vec<Range<u64>>,
        /// partition bytes after the filesystem
        extra: u64,
    }

    fn ext2() -> Opts {
        Opts {
            bs: 1024,
            groups: 4,
            bpg: 256,
            last_short: 56,
            ipg: 32,
            isize: 128,
            flex: false,
            csum: Csum::None,
            bit64: false,
            reserved_gdt: 2,
            uninit: vec![],
            data: vec![40..50, 250..300, 600..610, 900..969],
            extra: 0,
        }
    }

    fn ext4() -> Opts {
        Opts {
            flex: true,
            csum: Csum::Meta,
            bit64: true,
            isize: 256,
            uninit: vec![1, 3],
            data: vec![100..140, 600..700],
            ..ext2()
        }
    }

    struct Built {
        img: Img,
        size: u64,
        /// every block the builder marked used
        used_blocks: Vec<bool>,
        sb: Superblock,
        descs_at: u64,
    }

    fn put16(b: &mut [u8], at: usize, v: u64) {
        b[at..at + 2].copy_from_slice(&(v as u16).to_le_bytes());
    }
    fn put32(b: &mut [u8], at: usize, v: u64) {
        b[at..at + 4].copy_from_slice(&(v as u32).to_le_bytes());
    }

    fn superblock(o: &Opts) -> Vec<u8> {
        let fdb = u64::from(o.bs == 1024);
        let blocks = fdb + o.groups * o.bpg - o.last_short;
        let mut s = vec![0u8; 1024];
        put32(&mut s, 0, o.groups * o.ipg);
        put32(&mut s, 4, blocks);
        put32(&mut s, 20, fdb);
        let log = (o.bs / 1024).trailing_zeros() as u64;
        put32(&mut s, 24, log);
        put32(&mut s, 28, log);
        put32(&mut s, 32, o.bpg);
        put32(&mut s, 36, o.bpg);
        put32(&mut s, 40, o.ipg);
        put16(&mut s, 56, MAGIC as u64);
        put16(&mut s, 58, 1);
        put32(&mut s, 76, 1);
        put16(&mut s, 88, o.isize);
        let compat = if o.reserved_gdt > 0 {
            COMPAT_RESIZE_INODE
        } else {
            0
        };
        let mut incompat = INCOMPAT_FILETYPE;
        if o.flex {
            incompat |= INCOMPAT_FLEX_BG;
        }
        if o.bit64 {
            incompat |= INCOMPAT_64BIT;
            put16(&mut s, 254, 64);
        }
        let mut ro = RO_COMPAT_SPARSE_SUPER;
        match o.csum {
            Csum::None => {}
            Csum::Gdt => ro |= RO_COMPAT_GDT_CSUM,
            Csum::Meta => ro |= RO_COMPAT_METADATA_CSUM,
        }
        put32(&mut s, 92, compat as u64);
        put32(&mut s, 96, incompat as u64);
        put32(&mut s, 100, ro as u64);
        for (i, b) in s[104..120].iter_mut().enumerate() {
            *b = 0x10 + i as u8;
        }
        put16(&mut s, 206, o.reserved_gdt);
        s[0x175] = 1;
        seal(&mut s);
        s
    }

    /// Recomputes the superblock checksum (metadata_csum).
    fn seal(s: &mut [u8]) {
        let c = crc32c(!0, &s[..0x3FC]);
        put32(s, 0x3FC, c as u64);
    }

    fn build(o: &Opts) -> Built {
        let sbraw = superblock(o);
        let sb = Superblock::parse(&sbraw).unwrap();
        let bs = o.bs;
        let groups = sb.group_count();
        assert_eq!(groups, o.groups);
        let blocks = sb.blocks_count;
        let gdtb = sb.gdt_blocks();
        let itb = sb.inode_table_blocks();
        let mut used = vec![false; blocks as usize];
        let mark = |used: &mut Vec<bool>, r: Range<u64>| {
            for b in r {
                used[b as usize] = true;
            }
        };
        mark(&mut used, 0..sb.first_data_block);
        // sb/gdt backups
        for g in 0..groups {
            if sb.has_super(g) {
                let s = sb.group_blocks(g).start;
                mark(&mut used, s..s + 1 + gdtb + o.reserved_gdt);
            }
        }
        // metadata placement
        let mut locs = vec![];
        let g0 = sb.group_blocks(0).start + 1 + gdtb + o.reserved_gdt;
        for g in 0..groups {
            let (bb, ib, it) = if o.flex {
                (g0 + g, g0 + groups + g, g0 + 2 * groups + g * itb)
            } else {
                let s = sb.group_blocks(g).start;
                let c = if sb.has_super(g) {
                    s + 1 + gdtb + o.reserved_gdt
                } else {
                    s
                };
                (c, c + 1, c + 2)
            };
            mark(&mut used, bb..bb + 1);
            mark(&mut used, ib..ib + 1);
            mark(&mut used, it..it + itb);
            locs.push((bb, ib, it));
        }
        for r in &o.data {
            mark(&mut used, r.clone());
        }
        let size = blocks * bs + o.extra;
        let mut bytes = vec![0u8; size as usize];
        bytes[1024..2048].copy_from_slice(&sbraw);
        let ds = sb.desc_size as usize;
        let descs_at = sb.gdt_start() * bs;
        for g in 0..groups {
            let r = sb.group_blocks(g);
            let n = r.end - r.start;
            let (bb, ib, it) = locs[g as usize];
            let uninit = o.uninit.contains(&g);
            let mut bitmap = vec![0u8; bs as usize];
            if uninit {
                bitmap.fill(0xA5); // garbage: never read
                for b in r.clone() {
                    assert!(
                        !o.data.iter().any(|d| d.contains(&b)),
                        "data in uninit group {g}"
                    );
                }
            } else {
                for i in 0..bs * 8 {
                    if i >= n || used[(r.start + i) as usize] {
                        bitmap[(i / 8) as usize] |= 1 << (i % 8);
                    }
                }
            }
            let free = n - (r.clone()).filter(|&b| used[b as usize]).count() as u64;
            let at = (bb * bs) as usize;
            bytes[at..at + bs as usize].copy_from_slice(&bitmap);
            let mut d = vec![0u8; ds];
            put32(&mut d, 0, bb);
            put32(&mut d, 4, ib);
            put32(&mut d, 8, it);
            put16(&mut d, 12, free);
            // as mke2fs: inode tables zeroed (0x4), groups past 0 without inodes INODE_UNINIT
            let mut flags = 0x4 | if g > 0 { BG_INODE_UNINIT } else { 0 };
            if uninit {
                flags |= BG_BLOCK_UNINIT;
            }
            put16(&mut d, 18, flags as u64);
            if let Some(c) = bitmap_checksum(&sb, &bitmap) {
                put16(&mut d, 0x18, c as u64);
                if ds >= 64 {
                    put16(&mut d, 0x38, (c >> 16) as u64);
                }
            }
            if let Some(c) = desc_checksum(&sb, g as u32, &d) {
                put16(&mut d, 0x1E, c as u64);
            }
            let at = descs_at as usize + g as usize * ds;
            bytes[at..at + ds].copy_from_slice(&d);
        }
        Built {
            img: Img { bytes },
            size,
            used_blocks: used,
            sb,
            descs_at,
        }
    }

    fn expected(b: &Built) -> Vec<Range<u64>> {
        let bs = b.sb.block_size;
        let mut want = Vec::new();
        push_range(&mut want, 0..2048);
        for (i, &u) in b.used_blocks.iter().enumerate() {
            if u {
                push_range(&mut want, i as u64 * bs..(i as u64 + 1) * bs);
            }
        }
        push_range(&mut want, b.sb.blocks_count * bs..b.size);
        normalize(want)
    }

    fn run(b: &mut Built) -> Result<Used, MapError> {
        let size = b.size;
        map(&mut b.img, size)
    }

    /// What a superblock edit should be refused for, and the edit.
    type SbCase = (&'static str, Box<dyn Fn(&mut [u8])>);

    /// Edits descriptor `g` with `f`, then reseals its checksum.
    fn edit_desc(b: &mut Built, g: usize, f: impl FnOnce(&mut [u8])) {
        let ds = b.sb.desc_size as usize;
        let at = b.descs_at as usize + g * ds;
        let d = &mut b.img.bytes[at..at + ds];
        f(d);
        if let Some(c) = desc_checksum(&b.sb, g as u32, d) {
            put16(d, 0x1E, c as u64);
        }
    }

    fn desc(b: &Built, g: usize) -> GroupDesc {
        let ds = b.sb.desc_size as usize;
        let at = b.descs_at as usize + g * ds;
        GroupDesc::parse(&b.img.bytes[at..at + ds], &b.sb).unwrap()
    }

    /// Edits the superblock with `f`, then reseals its checksum.
    fn edit_sb(b: &mut Built, f: impl FnOnce(&mut [u8])) {
        let s = &mut b.img.bytes[1024..2048];
        f(s);
        seal(s);
    }

    #[test]
    fn ext2_map_matches_the_bitmaps() {
        let mut b = build(&Opts {
            extra: 3000,
            ..ext2()
        });
        let u = run(&mut b).unwrap();
        assert_eq!(u.fs, "ext2");
        assert_eq!(u.block, 1024);
        check_ranges(&u, b.size);
        assert_eq!(u.used, expected(&b));
        assert_eq!(u.used.last().unwrap().end, b.size);
    }

    #[test]
    fn ext4_flex_uninit_metadata_csum() {
        for o in [
            ext4(),
            Opts {
                csum: Csum::Gdt,
                bit64: false,
                ..ext4()
            },
            Opts {
                csum: Csum::Meta,
                bit64: false,
                ..ext4()
            },
            Opts {
                csum: Csum::Gdt,
                bit64: true,
                ..ext4()
            },
            Opts {
                bs: 4096,
                bpg: 1024,
                last_short: 100,
                ipg: 64,
                data: vec![300..400, 2100..2200],
                ..ext4()
            },
        ] {
            let mut b = build(&o);
            let u = run(&mut b).unwrap_or_else(|e| panic!("{o:?}: {e}"));
            assert_eq!(u.fs, "ext4");
            assert_eq!(u.block, o.bs);
            check_ranges(&u, b.size);
            assert_eq!(u.used, expected(&b), "{o:?}");
        }
    }

    #[test]
    fn fs_names() {
        let b = build(&ext2());
        assert_eq!(b.sb.fs_name(), "ext2");
        let mut s = superblock(&ext2());
        put32(
            &mut s,
            92,
            (COMPAT_HAS_JOURNAL | COMPAT_RESIZE_INODE) as u64,
        );
        assert_eq!(Superblock::parse(&s).unwrap().fs_name(), "ext3");
        put32(&mut s, 96, (INCOMPAT_FILETYPE | INCOMPAT_EXTENTS) as u64);
        assert_eq!(Superblock::parse(&s).unwrap().fs_name(), "ext4");
        assert_eq!(build(&ext4()).sb.fs_name(), "ext4");
    }

    #[test]
    fn has_super_sparse() {
        let sb = build(&ext2()).sb;
        let yes: Vec<u64> = (0..400).filter(|&g| sb.has_super(g)).collect();
        assert_eq!(yes, vec![0, 1, 3, 5, 7, 9, 25, 27, 49, 81, 125, 243, 343]);
        let mut s = superblock(&ext2());
        put32(&mut s, 100, 0); // no sparse_super: every group
        assert!(Superblock::parse(&s).unwrap().has_super(6));
        put32(&mut s, 92, COMPAT_SPARSE_SUPER2 as u64);
        put32(&mut s, 0x24C, 2);
        put32(&mut s, 0x250, 3);
        let sb = Superblock::parse(&s).unwrap();
        let yes: Vec<u64> = (0..10).filter(|&g| sb.has_super(g)).collect();
        assert_eq!(yes, vec![0, 2, 3]);
        assert!(!sb.has_super(u64::MAX));
    }

    #[test]
    fn crc_reference_values() {
        // CRC-32C check value: crc32c("123456789") with the usual pre/post inversion
        assert_eq!(!crc32c(!0, b"123456789"), 0xE306_9283);
        // CRC-16/ARC check value (the kernel's crc16, initial 0)
        assert_eq!(crc16(0, b"123456789"), 0xBB3D);
    }

    #[test]
    fn dirty_journal_and_features_are_unsafe() {
        let cases: Vec<SbCase> = vec![
            ("not cleanly unmounted", Box::new(|s| put16(s, 58, 0))),
            ("recorded errors", Box::new(|s| put16(s, 58, 3))),
            ("journal needs recovery", Box::new(|s| s[96] |= 0x4)),
            ("external journal", Box::new(|s| s[96] |= 0x8)),
            ("meta_bg is not supported", Box::new(|s| s[96] |= 0x10)),
            ("compression", Box::new(|s| s[96] |= 0x1)),
            ("0x40000", Box::new(|s| s[98] |= 0x4)),
            ("bigalloc", Box::new(|s| s[101] |= 0x2)),
            ("0x20000", Box::new(|s| s[102] |= 0x2)),
            ("lazy_bg", Box::new(|s| s[92] |= 0x40)),
        ];
        for o in [ext2(), ext4()] {
            for (want, f) in &cases {
                let mut b = build(&o);
                edit_sb(&mut b, f);
                let m = unsafe_reason(run(&mut b));
                assert!(m.contains(want), "{want}: {m}");
            }
        }
    }

    #[test]
    fn bad_superblocks() {
        let cases: Vec<SbCase> = vec![
            ("magic", Box::new(|s| put16(s, 56, 0x1234))),
            ("block size", Box::new(|s| put32(s, 24, 7))),
            ("revision", Box::new(|s| put32(s, 76, 2))),
            ("inode size", Box::new(|s| put16(s, 88, 100))),
            ("first data block", Box::new(|s| put32(s, 20, 0))),
            ("blocks per group", Box::new(|s| put32(s, 32, 0))),
            ("blocks per group", Box::new(|s| put32(s, 32, 8193))),
            ("inodes per group", Box::new(|s| put32(s, 40, 0))),
            ("inodes", Box::new(|s| put32(s, 0, 5))),
            ("block count", Box::new(|s| put32(s, 4, 1))),
            ("cluster size", Box::new(|s| put32(s, 28, 2))),
        ];
        for (want, f) in cases {
            let mut b = build(&ext2());
            edit_sb(&mut b, f);
            let m = unsafe_reason(run(&mut b));
            assert!(m.contains(want), "{want}: {m}");
        }
        // 64bit: descriptor size
        let mut b = build(&ext4());
        edit_sb(&mut b, |s| put16(s, 254, 48));
        assert!(unsafe_reason(run(&mut b)).contains("descriptor size"));
        // metadata_csum: a damaged superblock
        let mut b = build(&ext4());
        b.img.bytes[1024 + 300] ^= 1;
        assert!(unsafe_reason(run(&mut b)).contains("superblock checksum"));
    }

    #[test]
    fn free_count_mismatch_is_unsafe() {
        for o in [ext2(), ext4()] {
            let mut b = build(&o);
            let free = desc(&b, 2).free_blocks;
            edit_desc(&mut b, 2, |d| put16(d, 12, free - 1));
            let m = unsafe_reason(run(&mut b));
            assert!(
                m.contains(&format!(
                    "group 2: the bitmap counts {free} free blocks, the descriptor says {}",
                    free - 1
                )),
                "{m}"
            );
        }
        // more free than the group has
        let mut b = build(&ext2());
        edit_desc(&mut b, 1, |d| put16(d, 12, 300));
        assert!(unsafe_reason(run(&mut b)).contains("free blocks in a group of 256"));
    }

    #[test]
    fn bitmap_bits_past_the_group_end_are_ignored() {
        // the last group's padding bits set (as mkfs does) or clear: the same map
        let mut b = build(&ext2());
        let want = expected(&b);
        let d = desc(&b, 3);
        let at = (d.block_bitmap * 1024) as usize;
        let n = (b.sb.group_blocks(3).end - b.sb.group_blocks(3).start) as usize;
        for byte in &mut b.img.bytes[at + n.div_ceil(8)..at + 1024] {
            *byte = 0;
        }
        assert_eq!(run(&mut b).unwrap().used, want);
    }

    #[test]
    fn damaged_bitmaps_are_unsafe() {
        // metadata_csum: a flipped bit
        let mut b = build(&ext4());
        let d = desc(&b, 0);
        b.img.bytes[(d.block_bitmap * 1024 + 20) as usize] ^= 0x10;
        assert!(unsafe_reason(run(&mut b)).contains("bitmap checksum"));
        // no checksums: the inode table shown free (free count adjusted to match)
        let mut b = build(&ext2());
        let d = desc(&b, 1);
        let start = b.sb.group_blocks(1).start;
        let i = d.inode_table - start;
        b.img.bytes[(d.block_bitmap * 1024 + i / 8) as usize] &= !(1 << (i % 8));
        edit_desc(&mut b, 1, |raw| put16(raw, 12, d.free_blocks + 1));
        let m = unsafe_reason(run(&mut b));
        assert!(m.contains("group 1") && m.contains("metadata"), "{m}");
    }

    #[test]
    fn damaged_descriptors_are_unsafe() {
        for o in [
            ext4(),
            Opts {
                csum: Csum::Gdt,
                ..ext4()
            },
        ] {
            let mut b = build(&o);
            let at = b.descs_at as usize + 2 * b.sb.desc_size as usize + 12;
            b.img.bytes[at] ^= 1;
            let m = unsafe_reason(run(&mut b));
            assert!(m.contains("group 2: descriptor checksum"), "{m}");
        }
        // bitmap or inode table outside the filesystem / the group
        for (field, v) in [(0usize, 5000u64), (4, 970), (8, 960), (0, 1), (8, 300)] {
            let mut b = build(&ext2());
            edit_desc(&mut b, 0, |d| put32(d, field, v));
            let m = unsafe_reason(run(&mut b));
            assert!(m.contains("group 0") && m.contains("outside"), "{m}");
        }
        // flex_bg: anywhere in the filesystem, but not past its end
        let mut b = build(&ext4());
        edit_desc(&mut b, 3, |d| put32(d, 0, 969));
        assert!(unsafe_reason(run(&mut b)).contains("outside"));
    }

    #[test]
    fn uninit_groups() {
        // an uninit group whose descriptor says blocks were allocated
        let mut b = build(&ext4());
        let free = desc(&b, 3).free_blocks;
        edit_desc(&mut b, 3, |d| put16(d, 12, free - 5));
        let m = unsafe_reason(run(&mut b));
        assert!(m.contains("group 3") && m.contains("BLOCK_UNINIT"), "{m}");
        // without group checksums the flag means nothing: the bitmap is read
        let mut b = build(&ext2());
        let want = expected(&b);
        edit_desc(&mut b, 2, |d| put16(d, 18, BG_BLOCK_UNINIT as u64));
        assert_eq!(run(&mut b).unwrap().used, want);
        // an uninit group holding another group's inode table: used
        let o = ext4();
        let mut b = build(&o);
        let it = b.sb.group_blocks(3).start + 10;
        let itb = b.sb.inode_table_blocks();
        edit_desc(&mut b, 1, |d| put32(d, 8, it));
        let u = run(&mut b).unwrap();
        let bs = 1024;
        assert!(u
            .used
            .iter()
            .any(|r| r.start <= it * bs && (it + itb) * bs <= r.end));
    }

    #[test]
    fn only_block_uninit_skips_the_bitmap() {
        // the kernel's values: INODE_UNINIT 0x1, BLOCK_UNINIT 0x2, INODE_ZEROED 0x4
        let b = build(&ext4());
        let mut raw = vec![0u8; 64];
        for (flags, want) in [
            (0x1u16, false),
            (0x2, true),
            (0x4, false),
            (0x5, false),
            (0x7, true),
        ] {
            raw[18..20].copy_from_slice(&flags.to_le_bytes());
            let d = GroupDesc::parse(&raw, &b.sb).unwrap();
            assert_eq!(d.block_uninit(&b.sb), want, "flags {flags:#x}");
        }
        // without group checksums, never
        let sb = build(&ext2()).sb;
        raw[18..20].copy_from_slice(&2u16.to_le_bytes());
        assert!(!GroupDesc::parse(&raw, &sb).unwrap().block_uninit(&sb));
    }

    #[test]
    fn partition_and_device_limits() {
        let mut b = build(&ext2());
        let size = b.size - 1024;
        let m = unsafe_reason(map(&mut b.img, size));
        assert!(m.contains("more than the partition"), "{m}");
        let m = unsafe_reason(map(&mut b.img, 1500));
        assert!(m.contains("too small"), "{m}");
        // the device shorter than the caller says: an I/O error
        let size = b.size;
        b.img.bytes.truncate(3000);
        assert!(matches!(map(&mut b.img, size), Err(MapError::Io(_))));
    }

    #[test]
    fn detection() {
        let b = build(&ext2());
        assert!(detect(&b.img.bytes[..4096]));
        assert!(!detect(&b.img.bytes[..2000]));
        let mut h = b.img.bytes[..4096].to_vec();
        h[1080] = 0;
        assert!(!detect(&h));
        assert!(!detect(&[0u8; 4096]));
    }

    fn ok_or_unsafe(img: &mut Img, size: u64) {
        match map(img, size) {
            Ok(u) => check_ranges(&u, size),
            Err(MapError::Unsafe(m)) => assert!(!m.is_empty()),
            Err(MapError::Io(_)) => {}
        }
    }

    fn variant(i: usize) -> Opts {
        match i {
            0 => ext2(),
            1 => ext4(),
            2 => Opts {
                csum: Csum::Gdt,
                bit64: false,
                ..ext4()
            },
            _ => Opts {
                flex: true,
                uninit: vec![],
                ..ext2()
            },
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn arbitrary_bytes_never_panic(
            mut bytes in proptest::collection::vec(any::<u8>(), 0..8192),
            magic in any::<bool>(),
            size in 0u64..(1 << 20),
        ) {
            if magic && bytes.len() >= 2048 {
                bytes[1080] = 0x53;
                bytes[1081] = 0xEF;
                let log = bytes[1048] & 3;
                bytes[1048..1052].copy_from_slice(&[log, 0, 0, 0]); // log block size
                bytes[1052..1056].copy_from_slice(&[log, 0, 0, 0]); // log cluster size
                bytes[1044..1048].copy_from_slice(&[u8::from(log == 0), 0, 0, 0]);
                bytes[1100..1104].copy_from_slice(&[1, 0, 0, 0]); // revision 1
                bytes[1082..1084].copy_from_slice(&[1, 0]); // state: clean
            }
            let _ = detect(&bytes);
            ok_or_unsafe(&mut Img { bytes }, size);
        }

        #[test]
        fn mutated_images_never_panic(
            which in 0usize..4,
            muts in proptest::collection::vec((0usize..6144, any::<u8>()), 1..10),
            wide in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            size_delta in -600i64..3000,
        ) {
            let mut b = build(&variant(which));
            for (i, v) in muts {
                b.img.bytes[i] = v;
            }
            let len = b.img.bytes.len();
            for (i, v) in wide {
                b.img.bytes[i.index(len)] = v;
            }
            let size = b.size.saturating_add_signed(size_delta);
            ok_or_unsafe(&mut b.img, size);
        }

        /// With metadata_csum and 64-byte descriptors (32-bit bitmap checksums), any damage
        /// to a bitmap is caught: the map never shows an allocated block as unused.
        #[test]
        fn damaged_bitmaps_never_lose_blocks(
            muts in proptest::collection::vec((0usize..8, 0usize..1024, 1u8..=255), 1..4),
        ) {
            let mut b = build(&ext4());
            let want = expected(&b);
            for (g, at, x) in muts {
                let d = desc(&b, g % 4);
                b.img.bytes[(d.block_bitmap * 1024) as usize + at] ^= x;
            }
            let size = b.size;
            if let Ok(u) = map(&mut b.img, size) {
                for r in &want {
                    prop_assert!(
                        u.used.iter().any(|x| x.start <= r.start && r.end <= x.end),
                        "{:?} lost", r
                    );
                }
            }
        }
    }
}

//! The partition table: GPT (the `gpt` crate) or MBR with its logical partitions.

use super::{Device, ReadAt};

/// One partition, in bytes from the disk's first byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1-based, as Linux numbers them (MBR logical partitions from 5).
    pub number: u32,
    pub start: u64,
    pub size: u64,
    /// GPT type GUID, or the MBR type byte as `0x07`.
    pub kind: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TableKind {
    Gpt,
    Mbr,
    /// No partition table: the disk may hold one filesystem.
    None,
}

/// Reads the partition table of a disk of `size` bytes whose first sector is `mbr`.
///
/// A protective MBR (type 0xEE) means GPT; a GPT that does not read (neither header valid) is
/// an error, so the caller captures the disk raw rather than guess from the MBR.
pub fn read(
    dev: &mut dyn ReadAt,
    size: u64,
    mbr: &[u8; 512],
) -> Result<(TableKind, Vec<Partition>), String> {
    if mbr[510..512] != [0x55, 0xAA] {
        return Ok((TableKind::None, Vec::new()));
    }
    let types: Vec<u8> = (0..4).map(|i| mbr[446 + 16 * i + 4]).collect();
    if types.contains(&0xEE) {
        return gpt(dev, size).map(|p| (TableKind::Gpt, p));
    }
    // A boot sector with a BPB (a filesystem without a table) also ends in 55 AA: an MBR's
    // entries have a boot flag of 0x00 or 0x80 and at least one used entry.
    let flags_ok = (0..4).all(|i| matches!(mbr[446 + 16 * i], 0x00 | 0x80));
    if !flags_ok || types.iter().all(|&t| t == 0) {
        return Ok((TableKind::None, Vec::new()));
    }
    mbr_parts(dev, size).map(|p| (TableKind::Mbr, p))
}

fn gpt(dev: &mut dyn ReadAt, size: u64) -> Result<Vec<Partition>, String> {
    gpt_sane(dev, size)?;
    let device = Device::new(dev, size);
    let disk = gpt::GptConfig::new()
        .writable(false)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .only_valid_headers(false)
        .open_from_device(device)
        .map_err(|e| format!("the GPT does not read: {e}"))?;
    let mut out = Vec::new();
    for (&number, p) in disk.partitions() {
        if !p.is_used() {
            continue;
        }
        let start = p.first_lba.checked_mul(512);
        let len = p
            .last_lba
            .checked_sub(p.first_lba)
            .and_then(|n| n.checked_add(1));
        let (Some(start), Some(len)) = (start, len.and_then(|n| n.checked_mul(512))) else {
            return Err(format!("GPT partition {number} has impossible bounds"));
        };
        if start.checked_add(len).is_none_or(|end| end > size) {
            return Err(format!(
                "GPT partition {number} ends past the end of the disk ({size} bytes)"
            ));
        }
        out.push(Partition {
            number,
            start,
            size: len,
            kind: p.part_type_guid.guid.to_string().to_uppercase(),
        });
    }
    Ok(out)
}

/// Most partition entries a GPT may declare before the mapper gives up (the usual is 128).
const GPT_MAX_ENTRIES: u32 = 4096;

/// Checks both headers' table geometry before the `gpt` crate allocates for it.
fn gpt_sane(dev: &mut dyn ReadAt, size: u64) -> Result<(), String> {
    if size < 1024 {
        return Err("the disk is too small for a GPT".into());
    }
    for at in [512, size / 512 * 512 - 512] {
        let mut h = [0u8; 92];
        dev.read_at(at, &mut h).map_err(|e| e.to_string())?;
        if &h[..8] != b"EFI PART" {
            continue;
        }
        let count = u32::from_le_bytes(h[80..84].try_into().unwrap());
        let entry = u32::from_le_bytes(h[84..88].try_into().unwrap());
        if count > GPT_MAX_ENTRIES || !(128..=4096).contains(&entry) || !entry.is_power_of_two() {
            return Err(format!(
                "the GPT header at byte {at} declares {count} entries of {entry} bytes: not a table the mapper trusts"
            ));
        }
    }
    Ok(())
}

/// MBR primary entries and the logical partitions of an extended one.
///
/// By hand rather than with `mbrman`: its EBR walk adds sector numbers in `u32` unchecked, which
/// a damaged chain overflows (a panic in a debug build); here every sum is checked and the chain
/// is bounded.
fn mbr_parts(dev: &mut dyn ReadAt, size: u64) -> Result<Vec<Partition>, String> {
    let mut sector = [0u8; 512];
    dev.read_at(0, &mut sector).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut extended = None;
    for (i, e) in mbr_entries(&sector).into_iter().enumerate() {
        match e {
            Some(e) if is_extended(e.kind) => extended = Some(e),
            Some(e) => out.push(part(i as u32 + 1, 0, e, size)?),
            None => {}
        }
    }
    if let Some(ext) = extended {
        let mut ebr = 0u64; // relative to the extended partition
        for n in 0..MBR_MAX_LOGICAL {
            let at = (u64::from(ext.lba) + ebr) * 512;
            if at + 512 > size {
                return Err(format!("an EBR at byte {at} lies past the end of the disk"));
            }
            dev.read_at(at, &mut sector).map_err(|e| e.to_string())?;
            if sector[510..512] != [0x55, 0xAA] {
                if n == 0 {
                    break; // an empty extended partition
                }
                return Err(format!("the EBR at byte {at} has no 55 AA signature"));
            }
            let [first, next, ..] = mbr_entries(&sector);
            if let Some(e) = first {
                out.push(part(5 + n, u64::from(ext.lba) + ebr, e, size)?);
            }
            match next {
                Some(next) if u64::from(next.lba) > ebr => ebr = u64::from(next.lba),
                Some(_) => return Err("the chain of EBRs loops".into()),
                None => break,
            }
        }
    }
    Ok(out)
}

/// Most logical partitions the mapper follows.
const MBR_MAX_LOGICAL: u32 = 128;

#[derive(Debug, Clone, Copy)]
struct MbrEntry {
    kind: u8,
    lba: u32,
    sectors: u32,
}

fn is_extended(kind: u8) -> bool {
    matches!(kind, 0x05 | 0x0F | 0x85)
}

/// The four entries of an MBR or EBR sector (unused ones as `None`).
fn mbr_entries(sector: &[u8; 512]) -> [Option<MbrEntry>; 4] {
    std::array::from_fn(|i| {
        let e = &sector[446 + 16 * i..462 + 16 * i];
        let kind = e[4];
        let lba = u32::from_le_bytes(e[8..12].try_into().unwrap());
        let sectors = u32::from_le_bytes(e[12..16].try_into().unwrap());
        (kind != 0 && sectors != 0).then_some(MbrEntry { kind, lba, sectors })
    })
}

fn part(number: u32, base: u64, e: MbrEntry, size: u64) -> Result<Partition, String> {
    let start = (base + u64::from(e.lba)) * 512;
    let len = u64::from(e.sectors) * 512;
    if start + len > size {
        return Err(format!(
            "MBR partition {number} ends past the end of the disk ({size} bytes)"
        ));
    }
    Ok(Partition {
        number,
        start,
        size: len,
        kind: format!("0x{:02X}", e.kind),
    })
}

/// After an image with a GPT was written to a larger disk: moves the backup GPT (header and
/// entries) to the disk's real end and lets the primary header say so (backup LBA, last usable
/// LBA), as `sgdisk -e` does; the stale backup header left inside the disk is zeroed. Returns
/// the new backup LBA, or `None` when there is nothing to do (no GPT, or it already ends the
/// disk). Partitions are not moved or grown.
pub fn move_backup_gpt_to_end(disk: &std::fs::File) -> Result<Option<u64>, String> {
    use std::io::{Seek, SeekFrom};
    use std::os::unix::fs::FileExt;
    let mut dev = disk.try_clone().map_err(|e| e.to_string())?;
    let size = dev.seek(SeekFrom::End(0)).map_err(|e| e.to_string())?;
    let mut h = [0u8; 92];
    if size < 1024 || disk.read_exact_at(&mut h, 512).is_err() || &h[..8] != b"EFI PART" {
        return Ok(None);
    }
    let old = u64::from_le_bytes(h[32..40].try_into().unwrap());
    let last = size / 512 - 1;
    if old == last {
        return Ok(None);
    }
    if old > last {
        return Err(format!(
            "the GPT says the disk ends at sector {old}, the disk has {} sectors",
            last + 1
        ));
    }
    let mut reader = disk.try_clone().map_err(|e| e.to_string())?;
    gpt_sane(&mut reader, size)?;
    let mut gpt = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .only_valid_headers(false)
        .open_from_device(dev)
        .map_err(|e| format!("the GPT does not read: {e}"))?;
    let parts = gpt.partitions().clone();
    gpt.update_partitions(parts)
        .map_err(|e| format!("the GPT cannot be rewritten: {e}"))?;
    gpt.write_inplace()
        .map_err(|e| format!("writing the GPT: {e}"))?;
    disk.write_all_at(&[0u8; 512], old * 512)
        .map_err(|e| format!("clearing the old backup GPT header: {e}"))?;
    disk.sync_all().map_err(|e| e.to_string())?;
    Ok(Some(last))
}

/// Growing partition `number` of a GPT disk into the free space at its end: the partitions
/// after it keep their order and gaps and move to the disk's end, by the same whole number of
/// MiB (so their alignment stays); the partition grows by it. Bytes from the disk's start.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GrowPlan {
    pub number: u32,
    pub start: u64,
    pub old_size: u64,
    pub new_size: u64,
    /// The partitions after it, highest first (the order they are copied in).
    pub moves: Vec<PartMove>,
}

/// A partition moved towards the disk's end.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PartMove {
    pub number: u32,
    pub from: u64,
    pub to: u64,
    pub size: u64,
}

/// Sectors per MiB: the unit partitions move by.
const MIB_SECTORS: u64 = 2048;

/// The plan for growing partition `number` among `parts` (number, first LBA, last LBA; 512-byte
/// sectors) up to `last_usable`; `None` when less than 1 MiB is free after the last partition.
pub fn plan_grow(
    parts: &[(u32, u64, u64)],
    number: u32,
    last_usable: u64,
) -> Result<Option<GrowPlan>, String> {
    let &(_, first, last) = parts
        .iter()
        .find(|p| p.0 == number)
        .ok_or_else(|| format!("the disk has no partition {number}"))?;
    let mut sorted = parts.to_vec();
    sorted.sort_by_key(|p| p.1);
    if let Some(w) = sorted.windows(2).find(|w| w[1].1 <= w[0].2) {
        return Err(format!(
            "partitions {} and {} overlap: the table is not grown",
            w[0].0, w[1].0
        ));
    }
    let end = sorted.iter().map(|p| p.2).max().unwrap_or(0);
    if end > last_usable {
        return Err(format!(
            "a partition ends at sector {end}, past the last usable sector {last_usable}"
        ));
    }
    let delta = (last_usable - end) / MIB_SECTORS * MIB_SECTORS;
    if delta == 0 {
        return Ok(None);
    }
    let moves = sorted
        .iter()
        .rev()
        .filter(|p| p.1 > last)
        .map(|&(n, f, l)| PartMove {
            number: n,
            from: f * 512,
            to: (f + delta) * 512,
            size: (l - f + 1) * 512,
        })
        .collect();
    Ok(Some(GrowPlan {
        number,
        start: first * 512,
        old_size: (last - first + 1) * 512,
        new_size: (last - first + 1 + delta) * 512,
        moves,
    }))
}

/// Grows partition `number` of the GPT on `disk` ([`plan_grow`]): copies each partition after
/// it to its new place (from its end backwards, so a move that overlaps itself is safe), then
/// writes the table (both copies). The backup GPT must already end the disk
/// ([`move_backup_gpt_to_end`]). The filesystem inside is not touched: its tool grows it.
///
/// Not crash-safe: power lost during the copy leaves the moved partitions half written (the
/// table still names their old places); restore the image again.
pub fn grow_gpt(
    disk: &std::fs::File,
    number: u32,
    progress: &mut dyn FnMut(&PartMove),
) -> Result<Option<GrowPlan>, String> {
    use std::io::{Seek, SeekFrom};
    use std::os::unix::fs::FileExt;
    let mut dev = disk.try_clone().map_err(|e| e.to_string())?;
    let size = dev.seek(SeekFrom::End(0)).map_err(|e| e.to_string())?;
    let mut first = [0u8; 512];
    disk.read_exact_at(&mut first, 0)
        .map_err(|e| format!("reading the first sector: {e}"))?;
    let mut reader = disk.try_clone().map_err(|e| e.to_string())?;
    match read(&mut reader, size, &first)? {
        (TableKind::Gpt, _) => {}
        (kind, _) => {
            return Err(format!(
                "partitions are grown on GPT disks only; this disk has {}",
                match kind {
                    TableKind::Mbr => "an MBR",
                    _ => "no partition table",
                }
            ))
        }
    }
    let mut gpt = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .only_valid_headers(true)
        .open_from_device(dev)
        .map_err(|e| format!("the GPT does not read: {e}"))?;
    let header = gpt.primary_header().map_err(|e| e.to_string())?;
    if header.backup_lba != size / 512 - 1 {
        return Err(format!(
            "the backup GPT is at sector {}, not at the disk's end ({}): move it first",
            header.backup_lba,
            size / 512 - 1
        ));
    }
    let last_usable = header.last_usable;
    let mut parts = gpt.partitions().clone();
    let triples: Vec<(u32, u64, u64)> = parts
        .iter()
        .filter(|(_, p)| p.is_used())
        .map(|(&n, p)| (n, p.first_lba, p.last_lba))
        .collect();
    let Some(plan) = plan_grow(&triples, number, last_usable)? else {
        return Ok(None);
    };
    const BLOCK: u64 = 4 << 20;
    let mut buf = vec![0u8; BLOCK as usize];
    for m in &plan.moves {
        progress(m);
        let mut left = m.size;
        while left > 0 {
            let n = left.min(BLOCK);
            left -= n;
            let b = &mut buf[..n as usize];
            disk.read_exact_at(b, m.from + left).map_err(|e| {
                format!(
                    "reading partition {} at byte {}: {e}",
                    m.number,
                    m.from + left
                )
            })?;
            disk.write_all_at(b, m.to + left).map_err(|e| {
                format!(
                    "writing partition {} at byte {}: {e}",
                    m.number,
                    m.to + left
                )
            })?;
        }
    }
    disk.sync_all()
        .map_err(|e| format!("flushing the moved partitions: {e}"))?;
    let delta = (plan.new_size - plan.old_size) / 512;
    for (n, p) in parts.iter_mut() {
        if *n == number {
            p.last_lba += delta;
        } else if plan.moves.iter().any(|m| m.number == *n) {
            p.first_lba += delta;
            p.last_lba += delta;
        }
    }
    gpt.update_partitions(parts)
        .map_err(|e| format!("the grown GPT cannot be made: {e}"))?;
    gpt.write_inplace()
        .map_err(|e| format!("writing the grown GPT: {e}"))?;
    disk.sync_all().map_err(|e| e.to_string())?;
    Ok(Some(plan))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_partition_grows_and_the_ones_after_it_move_to_the_end() {
        // ESP 1-100 MiB, C: 100-1000 MiB, recovery 1000-1500 MiB on a disk twice as large
        let mib = MIB_SECTORS;
        let parts = [
            (1, mib, 100 * mib - 1),
            (3, 1000 * mib, 1500 * mib - 1),
            (2, 100 * mib, 1000 * mib - 1),
        ];
        let last_usable = 3000 * mib - 34;
        let p = plan_grow(&parts, 2, last_usable).unwrap().unwrap();
        // 1499 MiB free after the recovery partition, less the backup table: 1499 whole MiB
        assert_eq!(p.new_size - p.old_size, 1499 << 20);
        assert_eq!(
            p.moves,
            [PartMove {
                number: 3,
                from: 1000 << 20,
                to: 2499 << 20,
                size: 500 << 20
            }]
        );
        assert_eq!(p.moves[0].to + p.moves[0].size, 2999 << 20);
        assert_eq!(p.start + p.new_size, p.moves[0].to);
        // the last partition grows in place; the first one moves the two after it, highest first
        let last = plan_grow(&parts, 3, last_usable).unwrap().unwrap();
        assert!(last.moves.is_empty());
        let esp = plan_grow(&parts, 1, last_usable).unwrap().unwrap();
        assert_eq!(
            esp.moves.iter().map(|m| m.number).collect::<Vec<_>>(),
            [3, 2]
        );
        // no whole MiB free: nothing to do
        assert_eq!(plan_grow(&parts, 2, 1500 * mib + 100).unwrap(), None);
    }

    #[test]
    fn a_bad_table_is_not_grown() {
        let parts = [(1, 2048, 4095), (2, 4000, 9000)];
        assert!(plan_grow(&parts, 1, 100_000)
            .unwrap_err()
            .contains("overlap"));
        assert!(plan_grow(&parts[..1], 7, 100_000)
            .unwrap_err()
            .contains("no partition 7"));
        assert!(plan_grow(&parts[..1], 1, 3000)
            .unwrap_err()
            .contains("past"));
    }
}

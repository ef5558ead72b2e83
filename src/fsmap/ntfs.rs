//! NTFS: the cluster bitmap (`$Bitmap`, MFT record 6), read with the `ntfs` crate.
//!
//! Mapped only when Windows left the volume in a state whose bitmap is the truth: not marked
//! dirty in `$Volume` (an unclean shutdown or a pending chkdsk), not hibernated (`hiberfil.sys`
//! starting with `hibr`: Fast Startup or hibernation keeps part of the volume's state in memory
//! of the sleeping system), and a bitmap that covers every cluster and marks the boot sector and
//! the MFT used. BitLocker volumes (`-FVE-FS-`) are never parsed.

use ntfs::indexes::NtfsFileNameIndex;
use ntfs::structured_values::NtfsVolumeFlags;
use ntfs::{Ntfs, NtfsFile, NtfsReadSeek};

use super::{bitmap_ranges, push_range, Device, MapError, ReadAt, Used};

/// The largest bitmap read (4 PiB of 4 KiB clusters would need 128 GiB: refuse well before).
const BITMAP_MAX: u64 = 1 << 30;

pub fn detect(head: &[u8]) -> bool {
    head.get(3..11) == Some(b"NTFS    ")
}

/// A BitLocker-encrypted volume (its boot sector's OEM id).
pub fn is_bitlocker(head: &[u8]) -> bool {
    head.get(3..11) == Some(b"-FVE-FS-")
}

fn unsafe_(what: &str) -> impl Fn(ntfs::NtfsError) -> MapError + '_ {
    move |e| MapError::Unsafe(format!("{what}: {e}"))
}

pub fn map(dev: &mut dyn ReadAt, size: u64) -> Result<Used, MapError> {
    let mut fs = Device::new(dev, size);
    let mut ntfs = Ntfs::new(&mut fs).map_err(unsafe_("the NTFS boot sector does not read"))?;
    if ntfs.size() > size {
        return Err(MapError::Unsafe(format!(
            "NTFS says it holds {} bytes, the partition has {size}",
            ntfs.size()
        )));
    }
    let cluster = u64::from(ntfs.cluster_size());
    let clusters = ntfs.size() / cluster;

    let info = ntfs
        .volume_info(&mut fs)
        .map_err(unsafe_("$Volume does not read"))?;
    if info.flags().contains(NtfsVolumeFlags::IS_DIRTY) {
        return Err(MapError::Unsafe(
            "NTFS is marked dirty (Windows did not shut down cleanly, or chkdsk is pending): \
             start Windows and shut it down fully, then capture again"
                .into(),
        ));
    }

    ntfs.read_upcase_table(&mut fs)
        .map_err(unsafe_("$UpCase does not read"))?;
    if hibernated(&ntfs, &mut fs)? {
        return Err(MapError::Unsafe(
            "Windows is hibernated (Fast Startup or hibernation: hiberfil.sys holds a \
             resumable system): shut it down with `shutdown /s /t 0` or turn Fast Startup off \
             (`powercfg /h off`), then capture again"
                .into(),
        ));
    }

    let bitmap = read_bitmap(&ntfs, &mut fs, clusters)?;
    let mft = ntfs.mft_position().value().map_or(0, |p| p.get());
    for (what, at) in [("boot sector", 0u64), ("MFT", mft)] {
        let c = at / cluster;
        if bitmap
            .get((c / 8) as usize)
            .is_none_or(|b| b >> (c % 8) & 1 == 0)
        {
            return Err(MapError::Unsafe(format!(
                "the NTFS bitmap marks the {what} (cluster {c}) free: the bitmap is damaged \
                 (run chkdsk)"
            )));
        }
    }
    let mut used = bitmap_ranges(&bitmap, clusters, cluster, 0);
    // the backup boot sector, after the last cluster
    push_range(&mut used, clusters * cluster..size);
    Ok(Used {
        fs: "ntfs",
        block: cluster,
        used,
    })
}

/// True when `hiberfil.sys` in the root directory starts with `hibr` (any case).
fn hibernated(ntfs: &Ntfs, fs: &mut Device<'_>) -> Result<bool, MapError> {
    let bad = unsafe_("hiberfil.sys does not read");
    let Some(file) = find_file(ntfs, fs, &["hiberfil.sys"]).map_err(&bad)? else {
        return Ok(false);
    };
    let Some(data) = file.data(fs, "") else {
        return Ok(false);
    };
    let attr = data.map_err(&bad)?;
    let attr = attr.to_attribute().map_err(&bad)?;
    let mut value = attr.value(fs).map_err(&bad)?;
    if value.len() < 4 {
        return Ok(false);
    }
    let mut magic = [0u8; 4];
    value.read_exact(fs, &mut magic).map_err(&bad)?;
    Ok(magic.eq_ignore_ascii_case(b"hibr"))
}

/// The file at `path` from the root directory (names compared case-insensitively, as Windows
/// does; needs [`Ntfs::read_upcase_table`] first), if there.
pub fn find_file<'n>(
    ntfs: &'n Ntfs,
    fs: &mut Device<'_>,
    path: &[&str],
) -> Result<Option<NtfsFile<'n>>, ntfs::NtfsError> {
    let mut dir = ntfs.root_directory(fs)?;
    for (i, part) in path.iter().enumerate() {
        let index = dir.directory_index(fs)?;
        let mut finder = index.finder();
        let Some(entry) = NtfsFileNameIndex::find(&mut finder, ntfs, fs, part) else {
            return Ok(None);
        };
        let file = entry?.to_file(ntfs, fs)?;
        if i + 1 < path.len() && !file.is_directory() {
            return Ok(None);
        }
        dir = file;
    }
    Ok(Some(dir))
}

fn read_bitmap(ntfs: &Ntfs, fs: &mut Device<'_>, clusters: u64) -> Result<Vec<u8>, MapError> {
    let need = clusters.div_ceil(8);
    if need > BITMAP_MAX {
        return Err(MapError::Unsafe(format!(
            "NTFS has {clusters} clusters: a bitmap larger than the mapper reads"
        )));
    }
    let file = ntfs
        .file(fs, 6)
        .map_err(unsafe_("$Bitmap (MFT record 6) does not read"))?;
    let item = file
        .data(fs, "")
        .ok_or_else(|| MapError::Unsafe("$Bitmap has no data".into()))?
        .map_err(unsafe_("$Bitmap does not read"))?;
    let attr = item
        .to_attribute()
        .map_err(unsafe_("$Bitmap does not read"))?;
    let mut value = attr.value(fs).map_err(unsafe_("$Bitmap does not read"))?;
    if value.len() < need {
        return Err(MapError::Unsafe(format!(
            "the NTFS bitmap holds {} bytes, {clusters} clusters need {need}: the bitmap is damaged",
            value.len()
        )));
    }
    let mut bitmap = vec![0u8; need as usize];
    value
        .read_exact(fs, &mut bitmap)
        .map_err(unsafe_("$Bitmap does not read"))?;
    Ok(bitmap)
}

//! System calls that `nix` only offers as `unsafe` (ioctls without a safe wrapper). This is
//! the crate's only module allowed `unsafe`; each call is wrapped in a safe function here.
#![allow(unsafe_code)]

use std::os::fd::AsRawFd;

// BLKRRPART = _IO(0x12, 95): re-read the partition table of a whole-disk block device.
nix::ioctl_none!(blkrrpart, 0x12, 95);

/// Asks the kernel to re-read `disk`'s partition table, so partitions just written appear
/// as block devices. Fails with `EBUSY` while a partition of the disk is in use, `ENOTTY` /
/// `EINVAL` when `disk` is not a whole-disk block device.
pub fn reread_partitions(disk: &impl AsRawFd) -> nix::Result<()> {
    // SAFETY: BLKRRPART takes no argument; the descriptor stays open for the whole call.
    unsafe { blkrrpart(disk.as_raw_fd()) }.map(drop)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_regular_file_is_not_a_disk() {
        let f = tempfile::tempfile().unwrap();
        let e = super::reread_partitions(&f).unwrap_err();
        assert!(matches!(e, nix::Error::ENOTTY | nix::Error::EINVAL), "{e}");
    }
}

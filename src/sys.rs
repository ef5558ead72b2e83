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

// FS_IOC_GETFLAGS / FS_IOC_SETFLAGS = _IOR/_IOW('f', 1/2, long): a file's attribute flags.
nix::ioctl_read!(fs_ioc_getflags, b'f', 1, nix::libc::c_long);
nix::ioctl_write_ptr!(fs_ioc_setflags, b'f', 2, nix::libc::c_long);
/// FS_IMMUTABLE_FL (`chattr +i`).
const FS_IMMUTABLE_FL: nix::libc::c_long = 0x10;

/// Sets or clears the immutable attribute of `file` (efivarfs sets it on the firmware's own
/// variables, so that a stray write cannot brick a machine); returns whether it was set before.
pub fn set_immutable(file: &impl AsRawFd, on: bool) -> nix::Result<bool> {
    let mut flags: nix::libc::c_long = 0;
    // SAFETY: the kernel writes at most a long into `flags`, which lives through the call.
    unsafe { fs_ioc_getflags(file.as_raw_fd(), &mut flags) }?;
    let was = flags & FS_IMMUTABLE_FL != 0;
    if was != on {
        let new = if on {
            flags | FS_IMMUTABLE_FL
        } else {
            flags & !FS_IMMUTABLE_FL
        };
        // SAFETY: the kernel reads the flags from `new`, which lives through the call.
        unsafe { fs_ioc_setflags(file.as_raw_fd(), &new) }?;
    }
    Ok(was)
}

/// Reads into `buf` from `file` at `offset` only what the page cache holds (`preadv2` with
/// `RWF_NOWAIT`): `Ok(None)` when reading would wait for the disk (or the file system cannot
/// say), so that an async caller reads on a blocking thread instead.
pub fn read_cached(
    file: &impl AsRawFd,
    buf: &mut [u8],
    offset: u64,
) -> std::io::Result<Option<usize>> {
    use nix::libc;
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let offset = libc::off_t::try_from(offset)
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `iov` points into `buf`, valid and writable for `buf.len()` bytes through the
    // call; the descriptor stays open for the whole call.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset, libc::RWF_NOWAIT) };
    if n >= 0 {
        return Ok(Some(n as usize));
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN | libc::EOPNOTSUPP) => Ok(None),
        _ => Err(e),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_regular_file_is_not_a_disk() {
        let f = tempfile::tempfile().unwrap();
        let e = super::reread_partitions(&f).unwrap_err();
        assert!(matches!(e, nix::Error::ENOTTY | nix::Error::EINVAL), "{e}");
    }

    #[test]
    fn immutable_flags_read_or_say_why_not() {
        let f = tempfile::tempfile().unwrap();
        // a file system without attribute flags says so; one with them has none set here
        match super::set_immutable(&f, false) {
            Ok(was) => assert!(!was),
            Err(e) => assert!(
                matches!(e, nix::Error::ENOTTY | nix::Error::EOPNOTSUPP),
                "{e}"
            ),
        }
    }

    /// A file just written is in the page cache: read whole, at any offset, without waiting.
    #[test]
    fn cached_bytes_are_read_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let f = std::fs::File::open(&p).unwrap();
        let mut buf = vec![0u8; 1000];
        // a file system without RWF_NOWAIT says None: the caller reads elsewhere
        let Some(n) = super::read_cached(&f, &mut buf, 5000).unwrap() else {
            return;
        };
        assert_eq!(n, 1000);
        assert_eq!(buf, data[5000..6000]);
        assert_eq!(super::read_cached(&f, &mut buf, 200_000).unwrap(), Some(0));
    }
}

//! The boot environment: the Linux kernel and initramfs that a network-booted machine runs,
//! so that the bootcast agent can talk to the server.
//!
//! [`build`] writes, under the data directory:
//! - `bootenv/vmlinuz`: the kernel of a Debian `linux-image-*` package;
//! - `bootenv/initrd.img`: a cpio "newc" archive, zstd-compressed when the kernel's config has
//!   `CONFIG_RD_ZSTD=y` (Debian 12's 6.1 kernel does), else gzip;
//! - `bootenv/bootenv.json`: [`BootEnvInfo`] (versions, sizes, BLAKE3 hashes, modules).
//!
//! **Atomicity.** Both images are written to temporary files and synced; then `bootenv.json`
//! is removed, the images are renamed into place, and a new `bootenv.json` is written (temp +
//! rename) and the directory synced. `bootenv.json` is the commit record: a crash at any point
//! leaves either the previous complete boot environment or none ([`load`] returns `None`), and
//! [`load`] also checks the sizes it records against the files. One build at a time (a lock
//! on `bootenv/.lock`).
//!
//! **Kernel.** `--kernel-deb PATH`, or by default the package that the Debian metapackage
//! `linux-image-amd64` depends on, fetched with `apt-get download` into a cache directory
//! (default `DATA/bootenv/cache`), reused on later builds unless `refresh_kernel`. The package is
//! unpacked with `dpkg-deb -x` into a temporary directory under `DATA/bootenv`.
//!
//! **Initramfs contents.**
//! - `/init`: busybox shell script ([`INIT_SCRIPT`], `src/bootenv/init.sh`), and
//!   `/etc/udhcpc.script` ([`UDHCPC_SCRIPT`]);
//! - `/bin/busybox`: the host's `/bin/busybox` from Debian's `busybox-static` (must be static);
//!   `/bin/sh` links to it; `/init` installs the other applet links at boot;
//! - `/bin/bootcast`: the agent, by default the running binary (it must be statically linked,
//!   as `.cargo/config.toml` builds it), with debug info stripped by `objcopy` when available;
//! - `/lib/modules/NAME.ko` and `/lib/modules/order`: [`DEFAULT_MODULES`] plus their
//!   dependencies (`depends=` of each module's `.modinfo`: the Debian package carries no
//!   `modules.dep`, depmod makes it at install time), dependencies first. Modules built into
//!   the kernel (`modules.builtin`) are skipped. Debian 12 ships modules uncompressed; `.ko.xz`,
//!   `.ko.zst` and `.ko.gz` are decompressed at build time (busybox `insmod` loads plain ELF);
//! - `/usr/sbin/ntfsresize`, `/usr/sbin/e2fsck`, `/usr/sbin/resize2fs` (`GROW_TOOLS`), those
//!   the build host has: its dynamically linked Debian binaries, with every library `ldd`
//!   names copied at the same path (`/lib/x86_64-linux-gnu/...`, `/lib64/ld-linux-x86-64.so.2`),
//!   so a Debian 12 server builds a boot environment that can grow NTFS and ext4 after a
//!   restore ([`crate::agent::grow`]);
//! - `/dev/console` (5:1), so that `/init` has a console before it mounts devtmpfs;
//!   `/etc/bootcast-bootenv` (kernel and bootcast versions).
//!
//! **At boot**, `/init` expects on the kernel command line `bootcast.server=http://HOST:PORT`
//! (the agent's server) and normally `bootcast.mac=MAC` (the boot interface); see
//! [`crate::agent::boot`].

//!
//! Files: [`record`] (`bootenv.json` and [`load`]), [`build`](mod@build) (the build and its
//! output), `inputs` (busybox, the agent), `kernel` (the kernel package), `modules` (the
//! modules and their dependencies), `cpio` (the archive format), [`elf`].

mod build;
mod cpio;
pub mod elf;
mod inputs;
mod kernel;
mod modules;
pub mod record;

pub use build::{build, BuildOptions};
pub use record::{load, BootEnvInfo, FileInfo};

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// `/init` of the initramfs.
pub const INIT_SCRIPT: &str = include_str!("init.sh");
/// `/etc/udhcpc.script` of the initramfs (`udhcpc -s`).
pub const UDHCPC_SCRIPT: &str = include_str!("udhcpc.sh");

/// Modules put in the initramfs (with their dependencies), loaded in this order.
///
/// Network (the fleet's PCs and virtual machines): Intel e1000 (QEMU's default), e1000e (most
/// Intel desktop NICs), igb, igc (2.5 GbE), ixgbe (10 GbE); Realtek r8169; Broadcom tg3;
/// virtio-net over virtio-pci; USB adapters (xHCI/EHCI hosts, CDC Ethernet, Realtek r8152,
/// ASIX AX88179). Not bnx2: it needs non-free firmware files, which are not included.
/// Disks, for imaging: ahci, nvme, virtio_blk, virtio_scsi, sd_mod, usb-storage.
/// Filesystems, for the post-deploy steps: ext4 (also mounts ext2/ext3) and crc32c for its
/// metadata checksums (ext4 only asks for it at mount time, which no modprobe would answer);
/// vfat with its default code page and character set, to check a restored EFI system
/// partition. UEFI: efivarfs (Secure Boot state, BootOrder), mounted by `/init`.
pub const DEFAULT_MODULES: &[&str] = &[
    "e1000",
    "e1000e",
    "igb",
    "igc",
    "ixgbe",
    "r8169",
    "tg3",
    "virtio_pci",
    "virtio_net",
    "xhci_pci",
    "ehci_pci",
    "cdc_ether",
    "r8152",
    "ax88179_178a",
    "ahci",
    "nvme",
    "virtio_blk",
    "virtio_scsi",
    "sd_mod",
    "usb_storage",
    "crc32c_generic",
    "ext4",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "efivarfs",
];

/// Busybox applets `/init` and the udhcpc script use.
const APPLETS: &[&str] = &[
    "sh", "mount", "insmod", "udhcpc", "ip", "ifconfig", "cat", "tr", "grep", "sleep", "ls",
    "setsid", "cttyhack", "uname", "mkdir", "od",
];

#[derive(Debug, thiserror::Error)]
pub enum BootEnvError {
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Tool(String),
    #[error("{0}")]
    Input(String),
    #[error("boot environment in {dir} is inconsistent: {why} (run `bootcast bootenv build`)")]
    Inconsistent { dir: PathBuf, why: String },
}

pub type Result<T> = std::result::Result<T, BootEnvError>;

pub(crate) trait Context<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| BootEnvError::Io {
            context: what(),
            source,
        })
    }
}

pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("bootenv")
}

pub fn vmlinuz_path(data_dir: &Path) -> PathBuf {
    dir(data_dir).join("vmlinuz")
}

pub fn initrd_path(data_dir: &Path) -> PathBuf {
    dir(data_dir).join("initrd.img")
}

pub(crate) fn info_path(data_dir: &Path) -> PathBuf {
    dir(data_dir).join("bootenv.json")
}

/// A directory removed on drop.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new(path: PathBuf) -> Result<TempDir> {
        let _ = fs::remove_dir_all(&path);
        fs::create_dir(&path).ctx(|| format!("create {}", path.display()))?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::inputs::*;
    use super::modules::*;
    use super::*;
    use std::fs;

    #[test]
    fn module_names_normalise() {
        assert_eq!(normalise("virtio_net.ko").as_deref(), Some("virtio_net"));
        assert_eq!(
            normalise("ax88179_178a.ko.xz").as_deref(),
            Some("ax88179_178a")
        );
        assert_eq!(normalise("usb-storage.ko").as_deref(), Some("usb_storage"));
        assert_eq!(normalise("modules.order"), None);
    }

    #[test]
    fn load_is_none_without_a_build_and_checks_sizes() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(load(t.path()).unwrap(), None);
        let d = dir(t.path());
        fs::create_dir_all(&d).unwrap();
        fs::write(vmlinuz_path(t.path()), b"kernel").unwrap();
        fs::write(initrd_path(t.path()), b"initrd").unwrap();
        let f = |size| FileInfo {
            size,
            blake3: String::new(),
        };
        let mut info = BootEnvInfo {
            kernel_version: "6.1.0-56-amd64".into(),
            kernel_package: "linux-image.deb".into(),
            vmlinuz: f(6),
            initrd: f(6),
            initrd_compression: "zstd".into(),
            modules: vec![],
            modules_builtin: vec![],
            modules_missing: vec![],
            agent_size: 0,
            agent_stripped: false,
            busybox: String::new(),
            built_at: 0,
            bootcast_version: "0".into(),
            agent_protocol: 1,
            tools: vec![],
        };
        fs::write(info_path(t.path()), serde_json::to_vec(&info).unwrap()).unwrap();
        assert_eq!(load(t.path()).unwrap(), Some(info.clone()));
        info.initrd = f(7);
        fs::write(info_path(t.path()), serde_json::to_vec(&info).unwrap()).unwrap();
        let err = load(t.path()).unwrap_err();
        assert!(matches!(err, BootEnvError::Inconsistent { .. }), "{err}");
    }

    #[test]
    fn missing_busybox_names_the_package() {
        let err = read_busybox(Path::new("/nonexistent/busybox"))
            .err()
            .unwrap();
        assert!(err.to_string().contains("busybox-static"), "{err}");
    }

    #[test]
    fn a_dynamic_agent_is_refused_with_the_fix() {
        if !Path::new("/usr/bin/env").exists() {
            println!("SKIP: a_dynamic_agent_is_refused_with_the_fix: no /usr/bin/env");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let err = read_agent(Some(Path::new("/usr/bin/env")), t.path(), &|_| {})
            .err()
            .unwrap();
        let msg = err.to_string();
        assert!(
            msg.contains("dynamically linked") && msg.contains("--agent"),
            "{msg}"
        );
    }
}

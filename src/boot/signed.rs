//! The signed binaries of the Secure Boot chain, as Debian ships them: shim (package
//! `shim-signed`, signed for the Microsoft UEFI CA) and GRUB's network image (package
//! `grub-efi-amd64-signed`, signed by Debian, which shim trusts). They are found at run time
//! in the packages' files (or in a directory given by `[boot] uefi_binaries`), never copied
//! into this repository; `grub/README.md` says where they come from and how they stay valid.
//!
//! The chain: firmware PXE → (DHCP boot file) `shimx64.efi` → shim loads `grubx64.efi` from
//! the same TFTP directory → GRUB reads `grub/grub.cfg` ([`super::grub`]) → the boot
//! environment's kernel (Debian's `linux-image-amd64`, signed) and initramfs, or the local
//! disk's own loader.

use std::path::{Path, PathBuf};

/// The first binary of the chain: the DHCP boot file of UEFI x64 clients.
pub const SHIM: &str = "shimx64.efi";
/// What shim loads next, from beside itself.
pub const GRUB: &str = "grubx64.efi";

/// Where Debian 12's packages put each binary, and the package's name.
const DEBIAN: [(&str, &str, &str); 2] = [
    (SHIM, "/usr/lib/shim/shimx64.efi.signed", "shim-signed"),
    (
        GRUB,
        "/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed",
        "grub-efi-amd64-signed",
    ),
];

/// A binary of the chain is missing.
#[derive(Debug, thiserror::Error)]
#[error("{name}: {path} is missing ({cause}); {fix}", path = path.display())]
pub struct Missing {
    pub name: &'static str,
    pub path: PathBuf,
    pub cause: std::io::Error,
    pub fix: String,
}

/// The files served as `shimx64.efi` and `grubx64.efi`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedChain {
    pub shim: PathBuf,
    pub grub: PathBuf,
}

impl SignedChain {
    /// The binaries in `dir` (`shimx64.efi`, `grubx64.efi`), or by default Debian's packages'.
    pub fn locate(dir: Option<&Path>) -> SignedChain {
        match dir {
            Some(d) => SignedChain {
                shim: d.join(SHIM),
                grub: d.join(GRUB),
            },
            None => SignedChain {
                shim: DEBIAN[0].1.into(),
                grub: DEBIAN[1].1.into(),
            },
        }
    }

    /// The file served as `name` (`shimx64.efi` or `grubx64.efi`), if it is one of the chain's,
    /// or why it is missing.
    pub fn file(&self, name: &str) -> Option<Result<&Path, Missing>> {
        let (name, path) = match name {
            SHIM => (SHIM, &self.shim),
            GRUB => (GRUB, &self.grub),
            _ => return None,
        };
        let found = match std::fs::metadata(path) {
            Ok(m) if m.is_file() => Ok(path.as_path()),
            Ok(_) => Err(std::io::Error::other("not a regular file")),
            Err(e) => Err(e),
        };
        Some(found.map_err(|cause| Missing {
            name,
            path: path.clone(),
            cause,
            fix: fix_for(name, path),
        }))
    }

    /// Both binaries are there, or the first one missing, with the package that provides it.
    pub fn check(&self) -> Result<(), Missing> {
        for name in [SHIM, GRUB] {
            self.file(name).expect("a name of the chain")?;
        }
        Ok(())
    }
}

/// What to do when `name` is missing at `path`.
fn fix_for(name: &str, path: &Path) -> String {
    match DEBIAN.iter().find(|(n, p, _)| *n == name && Path::new(p) == path) {
        Some((_, _, pkg)) => format!(
            "install Debian's {pkg} (apt-get install shim-signed grub-efi-amd64-signed), or give UEFI clients the unsigned iPXE chain with dhcp.uefi_chain = \"ipxe\" (machines with Secure Boot on refuse it)"
        ),
        None => format!(
            "put the signed {name} in that directory ([boot] uefi_binaries), or remove the setting to use Debian's shim-signed and grub-efi-amd64-signed"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::SignedChain;

    #[test]
    fn a_missing_binary_names_its_package_or_the_setting() {
        let none = tempfile::tempdir().unwrap();
        let e = SignedChain::locate(Some(none.path())).check().unwrap_err();
        assert_eq!(e.name, "shimx64.efi");
        assert!(e.to_string().contains("[boot] uefi_binaries"), "{e}");
        let debian = SignedChain::locate(None);
        assert!(debian.file("../grubx64.efi").is_none());
        let fix = super::fix_for("shimx64.efi", &debian.shim);
        assert!(fix.contains("apt-get install shim-signed"), "{fix}");
        std::fs::write(none.path().join("shimx64.efi"), b"MZ shim").unwrap();
        let e = SignedChain::locate(Some(none.path())).check().unwrap_err();
        assert_eq!(e.name, "grubx64.efi");
        std::fs::create_dir(none.path().join("grubx64.efi")).unwrap();
        let e = SignedChain::locate(Some(none.path())).check().unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        std::fs::remove_dir(none.path().join("grubx64.efi")).unwrap();
        std::fs::write(none.path().join("grubx64.efi"), b"MZ grub").unwrap();
        let chain = SignedChain::locate(Some(none.path()));
        chain.check().unwrap();
        assert_eq!(
            chain.file("grubx64.efi").unwrap().unwrap(),
            none.path().join("grubx64.efi")
        );
    }
}

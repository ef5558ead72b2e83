//! iPXE: the binaries bootcast serves, embedded from `ipxe/` (Debian's `ipxe` package; see
//! `ipxe/README.md` for provenance and licence), and the boot scripts rendered from the
//! templates in `ipxe/*.ipxe`.
//!
//! The chain: firmware PXE → (DHCP) → `undionly.kpxe` / `snponly.efi` over TFTP → iPXE does
//! DHCP again, is recognised, and gets `BASE/boot.ipxe` ([`chain_script`]) → that script asks
//! `BASE/boot/MAC.ipxe`, whose answer depends on the host's state in the database
//! ([`BootScript`], rendered here by [`render`]).

use super::template::{fill, plain_text, url_text};

/// An iPXE binary served over TFTP (and HTTP).
#[derive(Debug, Clone, Copy)]
pub struct IpxeBinary {
    pub name: &'static str,
    pub bytes: &'static [u8],
}

/// BIOS PXE: chain-loads through the NIC's UNDI driver.
pub const UNDIONLY_KPXE: IpxeBinary = IpxeBinary {
    name: "undionly.kpxe",
    bytes: include_bytes!("../../ipxe/undionly.kpxe"),
};
/// UEFI: uses the firmware's network driver (SNP); the safe default.
pub const SNPONLY_EFI: IpxeBinary = IpxeBinary {
    name: "snponly.efi",
    bytes: include_bytes!("../../ipxe/snponly.efi"),
};
/// UEFI: iPXE with its own NIC drivers, for firmware whose SNP is broken.
pub const IPXE_EFI: IpxeBinary = IpxeBinary {
    name: "ipxe.efi",
    bytes: include_bytes!("../../ipxe/ipxe.efi"),
};

/// Every embedded binary, looked up by file name.
pub const ALL: [IpxeBinary; 3] = [UNDIONLY_KPXE, SNPONLY_EFI, IPXE_EFI];

/// The embedded binary called `name`, if any.
pub fn find(name: &str) -> Option<IpxeBinary> {
    ALL.into_iter().find(|b| b.name == name)
}

const CHAIN: &str = include_str!("../../ipxe/chain.ipxe");
const BOOTENV: &str = include_str!("../../ipxe/bootenv.ipxe");
const LOCAL_BIOS: &str = include_str!("../../ipxe/local-bios.ipxe");
const LOCAL_UEFI: &str = include_str!("../../ipxe/local-uefi.ipxe");
const UNAVAILABLE: &str = include_str!("../../ipxe/unavailable.ipxe");

/// The script DHCP hands to iPXE (`BASE/boot.ipxe`): it asks for this MAC's own script.
pub fn chain_script(base: &str) -> String {
    fill(CHAIN, &[("base", &url_text(base))])
}

/// The script that boots the boot environment with `cmdline` (made safe by the caller).
pub(super) fn bootenv(base: &str, reason: &str, cmdline: &str) -> String {
    fill(
        BOOTENV,
        &[
            ("base", &url_text(base)),
            ("reason", &plain_text(reason)),
            ("cmdline", cmdline),
        ],
    )
}

/// The script that boots the local disk: BIOS `sanboot`, UEFI back to the firmware.
pub(super) fn local(uefi: bool) -> String {
    match uefi {
        false => LOCAL_BIOS.to_string(),
        true => LOCAL_UEFI.to_string(),
    }
}

/// The script that says why the machine cannot be booted now.
pub(super) fn unavailable(reason: &str) -> String {
    fill(UNAVAILABLE, &[("reason", &plain_text(reason))])
}

#[cfg(test)]
mod tests {
    #[test]
    fn binaries_are_embedded() {
        for b in super::ALL {
            assert!(b.bytes.len() > 50_000, "{} looks truncated", b.name);
        }
        // PE files start with "MZ"
        assert_eq!(&super::SNPONLY_EFI.bytes[..2], b"MZ");
        assert!(super::find("undionly.kpxe").is_some());
        assert!(super::find("../undionly.kpxe").is_none());
    }
}

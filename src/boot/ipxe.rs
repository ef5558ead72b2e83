//! The iPXE binaries bootcast serves, embedded from `ipxe/` (Debian's `ipxe` package; see
//! `ipxe/README.md` for provenance and licence).

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

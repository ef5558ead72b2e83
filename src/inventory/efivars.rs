//! The UEFI boot variables (UEFI 2.10 §3.3): `BootOrder`, `BootCurrent` and each `Boot####`
//! load option, read from efivarfs (`/sys/firmware/efi/efivars/NAME-GUID`: 4 bytes of
//! attributes, then the value). Parsing here is pure; the agent writes `BootOrder` back
//! (`agent::boot`) so that a machine that booted from the network stays on network boot.

use std::io;
use std::path::{Path, PathBuf};

/// EFI_GLOBAL_VARIABLE: the vendor GUID of the boot variables.
pub const GLOBAL: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";

/// The efivarfs file of global variable `name`, sysfs being mounted at `sys` (`/sys`).
pub fn path(sys: &Path, name: &str) -> PathBuf {
    sys.join("firmware/efi/efivars")
        .join(format!("{name}-{GLOBAL}"))
}

/// A variable's attributes and value.
pub fn read(sys: &Path, name: &str) -> io::Result<(u32, Vec<u8>)> {
    let b = std::fs::read(path(sys, name))?;
    if b.len() < 4 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{name}: {} bytes, shorter than its attributes", b.len()),
        ));
    }
    let attrs = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    Ok((attrs, b[4..].to_vec()))
}

/// A list of UINT16 (BootOrder; BootCurrent is a list of one).
pub fn u16s(data: &[u8]) -> Vec<u16> {
    data.chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

/// The bytes of a list of UINT16.
pub fn u16_bytes(list: &[u16]) -> Vec<u8> {
    list.iter().flat_map(|n| n.to_le_bytes()).collect()
}

/// `Boot####`'s name: four upper-case hex digits.
pub fn boot_name(n: u16) -> String {
    format!("Boot{n:04X}")
}

/// What a load option says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOption {
    pub description: String,
    /// Its device path holds a MAC address or a URI node: a network boot (PXE, HTTP).
    pub network: bool,
}

/// Parses an EFI_LOAD_OPTION: UINT32 attributes, UINT16 length of the device path list, the
/// description (UCS-2, NUL-terminated), the device path list. `None`: malformed.
pub fn load_option(data: &[u8]) -> Option<LoadOption> {
    let path_len = usize::from(u16::from_le_bytes([*data.get(4)?, *data.get(5)?]));
    let rest = data.get(6..)?;
    let units = u16s(rest);
    let end = units.iter().position(|&u| u == 0)?;
    let description = String::from_utf16_lossy(&units[..end]);
    let paths = rest.get((end + 1) * 2..)?.get(..path_len)?;
    let mut network = false;
    let mut at = 0;
    // device path nodes: type, subtype, UINT16 length (4 at least); type 0x7f ends
    while at + 4 <= paths.len() {
        let (kind, sub) = (paths[at], paths[at + 1]);
        let len = usize::from(u16::from_le_bytes([paths[at + 2], paths[at + 3]]));
        if kind == 0x7f || len < 4 {
            break;
        }
        // messaging (3): MAC address (11), URI (24)
        if kind == 0x03 && (sub == 0x0b || sub == 0x18) {
            network = true;
        }
        at += len;
    }
    Some(LoadOption {
        description,
        network,
    })
}

/// `order` with `current` moved first, if it is in it and not first already.
pub fn moved_first(order: &[u16], current: u16) -> Option<Vec<u16>> {
    let at = order.iter().position(|&n| n == current)?;
    if at == 0 {
        return None;
    }
    let mut out = Vec::with_capacity(order.len());
    out.push(current);
    out.extend(order.iter().copied().filter(|&n| n != current));
    Some(out)
}

#[cfg(test)]
pub(crate) mod tests {
    /// An EFI_LOAD_OPTION with `desc` and the given device path nodes.
    pub(crate) fn option(desc: &str, nodes: &[(u8, u8, &[u8])]) -> Vec<u8> {
        let mut path = Vec::new();
        for (t, s, body) in nodes {
            path.extend([*t, *s]);
            path.extend(((body.len() + 4) as u16).to_le_bytes());
            path.extend(*body);
        }
        path.extend([0x7f, 0xff, 4, 0]);
        let mut b = 1u32.to_le_bytes().to_vec();
        b.extend((path.len() as u16).to_le_bytes());
        for u in desc.encode_utf16().chain([0]) {
            b.extend(u.to_le_bytes());
        }
        b.extend(path);
        b
    }

    #[test]
    fn load_options_say_whether_they_boot_from_the_network() {
        let pci = (0x01, 0x01, &[0u8, 3][..]);
        let mac = (0x03, 0x0b, &[0x52u8, 0x54, 0, 0x12, 0x34, 0x56][..]);
        let pxe = option(
            "UEFI PXEv4 (MAC:525400123456)",
            &[pci, mac, (0x03, 0x0c, &[0; 23])],
        );
        let o = super::load_option(&pxe).unwrap();
        assert_eq!(o.description, "UEFI PXEv4 (MAC:525400123456)");
        assert!(o.network);
        let disk = option("UEFI Misc Device", &[pci, (0x03, 0x17, &[1, 0, 0, 0])]);
        let d = super::load_option(&disk).unwrap();
        assert!(!d.network, "{d:?}");
        // damaged: cut anywhere, never a panic
        for n in 0..pxe.len() {
            let _ = super::load_option(&pxe[..n]);
        }
        assert_eq!(super::load_option(&pxe[..5]), None);
    }

    #[test]
    fn the_current_entry_goes_first_once() {
        assert_eq!(super::moved_first(&[1, 3, 2], 3), Some(vec![3, 1, 2]));
        assert_eq!(super::moved_first(&[3, 1, 2], 3), None);
        assert_eq!(super::moved_first(&[1, 2], 7), None);
        assert_eq!(
            super::u16s(&super::u16_bytes(&[0x1001, 2])),
            vec![0x1001, 2]
        );
        assert_eq!(super::boot_name(0x1a), "Boot001A");
    }
}

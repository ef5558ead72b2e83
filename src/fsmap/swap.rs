//! Linux swap: only its header page is used; what the pages held is not kept across a restore.
//!
//! The signature is the last 10 bytes of the first page (4 KiB on x86-64): `SWAPSPACE2` for a
//! swap area, one of the hibernation signatures when a hibernated system's image is stored
//! there — that one is captured raw, since it is the running state of a machine.

use super::{MapError, ReadAt, Used};

/// The page size of x86-64, where the signature sits.
const PAGE: usize = 4096;
const SWAP: &[u8] = b"SWAPSPACE2";
const HIBERNATION: [&[u8]; 4] = [
    b"S1SUSPEND\0",
    b"S2SUSPEND\0",
    b"ULSUSPEND\0",
    b"LINHIB0001",
];

/// The signature's bytes, if `head` holds the first page.
fn signature(head: &[u8]) -> Option<&[u8]> {
    head.get(PAGE - 10..PAGE)
}

pub fn detect(head: &[u8]) -> bool {
    signature(head).is_some_and(|s| s == SWAP || HIBERNATION.contains(&s))
}

/// The used ranges of a swap area whose first page is `head`: the header page only.
pub fn parse(head: &[u8], size: u64) -> Result<Used, MapError> {
    match signature(head) {
        Some(s) if s == SWAP => Ok(Used {
            fs: "swap",
            block: PAGE as u64,
            used: std::iter::once(0..(PAGE as u64).min(size)).collect(),
        }),
        Some(s) if HIBERNATION.contains(&s) => Err(MapError::Unsafe(
            "the swap area holds a hibernation image (a suspended Linux); captured raw".into(),
        )),
        _ => Err(MapError::Unsafe("no swap signature".into())),
    }
}

pub fn map(dev: &mut dyn ReadAt, size: u64) -> Result<Used, MapError> {
    let mut head = vec![0u8; PAGE];
    dev.read_at(0, &mut head)?;
    parse(&head, size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(sig: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; PAGE];
        p[PAGE - 10..].copy_from_slice(sig);
        p
    }

    #[test]
    fn a_swap_area_uses_its_header_page_only() {
        let used = parse(&page(SWAP), 1 << 30).unwrap();
        assert_eq!(used.used, std::iter::once(0..4096).collect::<Vec<_>>());
        assert!(detect(&page(SWAP)));
    }

    #[test]
    fn a_hibernation_image_is_not_mapped() {
        let head = page(b"S1SUSPEND\0");
        assert!(detect(&head));
        let err = parse(&head, 1 << 30).unwrap_err().to_string();
        assert!(err.contains("hibernation"), "{err}");
    }

    #[test]
    fn short_or_foreign_heads_are_not_swap() {
        assert!(!detect(&[0u8; 100]));
        assert!(!detect(&page(b"SWAP-SPACE")));
        assert!(parse(&[0u8; 100], 4096).is_err());
    }
}

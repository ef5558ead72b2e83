//! GRUB configurations for the Secure Boot chain (firmware → shim → GRUB → kernel, see
//! [`super::signed`]), rendered from the templates in `grub/*.cfg`.
//!
//! Debian's signed network GRUB reads `grub/grub.cfg` over TFTP from the server that gave it
//! ([`BOOTSTRAP`]); that file asks for `grub/grub.cfg-MAC`, which the TFTP server answers with
//! this machine's boot script (`super::script`) rendered here. The signed GRUB has no HTTP, so the
//! boot environment's kernel and initramfs come over TFTP too (`bootenv/vmlinuz`,
//! `bootenv/initrd.img`).

use super::template::{fill, plain_text};

/// `grub/grub.cfg`: the same for every machine.
pub const BOOTSTRAP: &str = include_str!("../../grub/grub.cfg");

const BOOTENV: &str = include_str!("../../grub/bootenv.cfg");
const LOCAL_CHAIN: &str = include_str!("../../grub/local-chain.cfg");
const LOCAL_EXIT: &str = include_str!("../../grub/local-exit.cfg");
const UNAVAILABLE: &str = include_str!("../../grub/unavailable.cfg");

/// The loaders the `chain` hand-off looks for on the local disks' EFI system partitions, in
/// this order: Windows' boot manager, the distributions' shims (signed for the Microsoft UEFI
/// CA, so they start under Secure Boot), their GRUBs (for machines with Secure Boot off), then
/// the removable-media path every installer writes. The first found that starts wins.
pub const LOADERS: &[&str] = &[
    "/EFI/Microsoft/Boot/bootmgfw.efi",
    "/EFI/debian/shimx64.efi",
    "/EFI/ubuntu/shimx64.efi",
    "/EFI/fedora/shimx64.efi",
    "/EFI/redhat/shimx64.efi",
    "/EFI/rocky/shimx64.efi",
    "/EFI/almalinux/shimx64.efi",
    "/EFI/opensuse/shim.efi",
    "/EFI/debian/grubx64.efi",
    "/EFI/ubuntu/grubx64.efi",
    "/EFI/BOOT/BOOTX64.EFI",
];

/// The configuration that boots the boot environment with `cmdline` (made safe by the
/// caller) over TFTP.
pub(super) fn bootenv(reason: &str, cmdline: &str) -> String {
    fill(
        BOOTENV,
        &[("reason", &plain_text(reason)), ("cmdline", cmdline)],
    )
}

/// The configuration that leaves for the local disk: its ESP's loader (`chain`), or the
/// firmware.
pub(super) fn local(chain: bool) -> String {
    match chain {
        true => fill(LOCAL_CHAIN, &[("loaders", &LOADERS.join(" "))]),
        false => LOCAL_EXIT.to_string(),
    }
}

/// The configuration that says why the machine cannot be booted now.
pub(super) fn unavailable(reason: &str) -> String {
    fill(UNAVAILABLE, &[("reason", &plain_text(reason))])
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_bootstrap_asks_for_this_machines_own_configuration_over_tftp() {
        assert!(super::BOOTSTRAP
            .contains("\nconfigfile (tftp,$net_default_server)/grub/grub.cfg-$net_default_mac\n"));
    }
}

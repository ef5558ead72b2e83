//! GRUB configurations for the Secure Boot chain (firmware → shim → GRUB → kernel, see
//! [`super::signed`]), rendered from the templates in `grub/*.cfg`.
//!
//! Debian's signed network GRUB reads `grub/grub.cfg` over TFTP from the server that gave it
//! ([`BOOTSTRAP`]); that file asks for `grub/grub.cfg-MAC`, which the TFTP server answers with
//! this machine's [`BootScript`] rendered by [`render`]. The signed GRUB has no HTTP, so the
//! boot environment's kernel and initramfs come over TFTP too (`bootenv/vmlinuz`,
//! `bootenv/initrd.img`).

use super::script::{fill, plain_text, BootScript, Handoff};

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

/// The GRUB rendering of `script` ([`BootScript::render`]). GRUB only runs on UEFI here.
pub(super) fn render(script: &BootScript, base: &str) -> String {
    match script {
        BootScript::BootEnv {
            reason,
            task,
            credential,
        } => {
            let cmdline = BootScript::cmdline(base, "$net_default_mac", *task, credential.as_ref());
            fill(
                BOOTENV,
                &[("reason", &plain_text(reason)), ("cmdline", &cmdline)],
            )
        }
        BootScript::LocalDisk {
            handoff: Handoff::Chain,
            ..
        } => fill(LOCAL_CHAIN, &[("loaders", &LOADERS.join(" "))]),
        BootScript::LocalDisk {
            handoff: Handoff::Exit,
            ..
        } => LOCAL_EXIT.to_string(),
        BootScript::Unavailable { reason } => fill(UNAVAILABLE, &[("reason", &plain_text(reason))]),
    }
}

#[cfg(test)]
mod tests {
    use super::super::script::{BootScript, Handoff, Loader, Secret};

    #[test]
    fn the_bootstrap_asks_for_this_machines_own_configuration_over_tftp() {
        assert!(super::BOOTSTRAP
            .contains("\nconfigfile (tftp,$net_default_server)/grub/grub.cfg-$net_default_mac\n"));
    }

    #[test]
    fn configurations_render_without_placeholders_and_nothing_smuggled() {
        let base = "http://10.99.0.1:8080";
        let env = BootScript::BootEnv {
            reason: "task 7 (reimage)".into(),
            task: Some(7),
            credential: Some(Secret("00ff".into())),
        }
        .render(Loader::Grub, base);
        assert!(env.contains("\nif linux (tftp,$net_default_server)/bootenv/vmlinuz console="));
        assert!(
            env.contains("\n  if initrd (tftp,$net_default_server)/bootenv/initrd.img ; then\n")
        );
        assert!(
            env.contains("echo \"bootcast: task 7 (reimage)\"\n"),
            "{env}"
        );
        let chain = BootScript::LocalDisk {
            uefi: true,
            handoff: Handoff::Chain,
        }
        .render(Loader::Grub, base);
        let order = chain.find("/EFI/Microsoft/Boot/bootmgfw.efi /EFI/debian/shimx64.efi");
        let last = chain.find(" /EFI/BOOT/BOOTX64.EFI ; do\n");
        assert!(order.is_some() && last > order, "{chain}");
        assert!(chain.contains("chainloader ($bootcast_esp)$bootcast_loader\n"));
        let exit = BootScript::LocalDisk {
            uefi: true,
            handoff: Handoff::Exit,
        }
        .render(Loader::Grub, base);
        assert!(
            exit.ends_with("\nexit\n") && !exit.contains("chainloader"),
            "{exit}"
        );
        let un = BootScript::Unavailable {
            reason: "x\"; linux (tftp)/evil $y \\\n{{reason}} #".into(),
        }
        .render(Loader::Grub, base);
        let echo = un
            .lines()
            .find(|l| l.starts_with("echo \"bootcast: x"))
            .unwrap();
        // one quoted string, with nothing GRUB would read as a command, variable or escape
        let inner = echo
            .strip_prefix("echo \"")
            .unwrap()
            .strip_suffix('"')
            .unwrap();
        assert!(
            !inner.contains(['"', ';', '$', '\\', '#', '{', '}', '\n']),
            "{echo}"
        );
        assert!(!un.contains("\nlinux"), "{un}");
        for s in [env, chain, exit, un] {
            assert!(!s.contains("{{"), "{s}");
        }
    }
}

//! iPXE: the binaries bootcast serves, embedded from `ipxe/` (Debian's `ipxe` package; see
//! `ipxe/README.md` for provenance and licence), and the boot scripts rendered from the
//! templates in `ipxe/*.ipxe`.
//!
//! The chain: firmware PXE → (DHCP) → `undionly.kpxe` / `snponly.efi` over TFTP → iPXE does
//! DHCP again, is recognised, and gets `BASE/boot.ipxe` ([`chain_script`]) → that script asks
//! `BASE/boot/MAC.ipxe`, whose answer depends on the host's state in the database
//! ([`BootScript`], rendered here by [`render`]).

use super::script::{fill, plain_text, url_text, BootScript};

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

/// The iPXE rendering of `script` ([`BootScript::render`]).
pub(super) fn render(script: &BootScript, base: &str) -> String {
    match script {
        BootScript::BootEnv {
            reason,
            task,
            credential,
        } => {
            let cmdline = BootScript::cmdline(base, "${netX/mac}", *task, credential.as_ref());
            fill(
                BOOTENV,
                &[
                    ("base", &url_text(base)),
                    ("reason", &plain_text(reason)),
                    ("cmdline", &cmdline),
                ],
            )
        }
        BootScript::LocalDisk { uefi: false, .. } => LOCAL_BIOS.to_string(),
        // iPXE cannot start a loader from a local disk's ESP: back to the firmware, whatever
        // the hand-off (the Secure Boot chain's GRUB does; see super::grub)
        BootScript::LocalDisk { uefi: true, .. } => LOCAL_UEFI.to_string(),
        BootScript::Unavailable { reason } => fill(UNAVAILABLE, &[("reason", &plain_text(reason))]),
    }
}

#[cfg(test)]
mod tests {
    use super::super::script::{Handoff, Loader, Secret};
    use super::BootScript;

    #[test]
    fn scripts_render_without_placeholders() {
        let base = "http://10.99.0.1:8080";
        let chain = super::chain_script(base);
        assert!(chain.starts_with("#!ipxe\n"));
        assert!(chain
            .contains("chain http://10.99.0.1:8080/boot/${netX/mac}.ipxe?platform=${platform}"));
        let env = BootScript::BootEnv {
            reason: "registering".into(),
            task: Some(42),
            credential: Some(Secret("00ff".into())),
        }
        .render(Loader::Ipxe, base);
        assert!(
            env.contains(" bootcast.credential=00ff || goto failed\n"),
            "{env}"
        );
        let plan = BootScript::BootEnv {
            reason: "registering".into(),
            task: None,
            credential: Some(Secret("00ff".into())),
        };
        assert!(!format!("{plan:?}").contains("00ff"), "{plan:?}");
        assert!(env.contains("kernel http://10.99.0.1:8080/bootenv/vmlinuz initrd=initrd.img "));
        assert!(env.contains(
            " bootcast.server=http://10.99.0.1:8080 bootcast.mac=${netX/mac} bootcast.task=42"
        ));
        assert!(env.contains("initrd http://10.99.0.1:8080/bootenv/initrd.img"));
        assert!(BootScript::LocalDisk {
            uefi: false,
            handoff: Handoff::Chain
        }
        .render(Loader::Ipxe, base)
        .contains("sanboot --no-describe --drive 0x80"));
        assert!(BootScript::LocalDisk {
            uefi: true,
            handoff: Handoff::Chain
        }
        .render(Loader::Ipxe, base)
        .contains("\nexit 1"));
        let un = BootScript::Unavailable {
            reason: "x\nchain http://evil ${y} && chain http://e2 || shell {{base}} #".into(),
        }
        .render(Loader::Ipxe, base);
        assert!(!un.contains("\nchain"), "{un}");
        assert!(!un.contains("${y}"));
        let echo = un
            .lines()
            .find(|l| l.starts_with("echo bootcast: x"))
            .unwrap();
        assert!(
            !echo.contains("&&")
                && !echo.contains("||")
                && !echo.contains('#')
                && !echo.contains('$'),
            "{echo}"
        );
        assert!(!un.contains("{{") && !un.contains(base), "{un}");
        // a base URL cannot smuggle commands either
        let c = super::chain_script("http://h:1 && shell");
        assert!(c.contains("chain http://h:1shell/boot/"), "{c}");
        for s in [chain, env, un] {
            assert!(s.starts_with("#!ipxe\n"));
            assert!(!s.contains("{{"), "{s}");
        }
    }

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

//! iPXE: the binaries bootcast serves, embedded from `ipxe/` (Debian's `ipxe` package; see
//! `ipxe/README.md` for provenance and licence), and the boot scripts rendered from the
//! templates in `ipxe/*.ipxe`.
//!
//! The chain: firmware PXE → (DHCP) → `undionly.kpxe` / `snponly.efi` over TFTP → iPXE does
//! DHCP again, is recognised, and gets `BASE/boot.ipxe` ([`chain_script`]) → that script asks
//! `BASE/boot/MAC.ipxe`, whose answer depends on the host's state in the database
//! ([`BootScript`]).

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

/// What a host's `GET /boot/{mac}.ipxe` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootScript {
    /// Boot the bootcast boot environment (registration, or a task when `task` is set).
    /// `credential` (this boot's, see `db::bootcred`) goes on the kernel command line; the
    /// agent's hello exchanges it for its session. `None`: the script was asked for by
    /// another address than the machine's own, so it carries none (the agent's hello will be
    /// refused, and says so).
    BootEnv {
        reason: String,
        task: Option<i64>,
        credential: Option<Secret>,
    },
    /// Nothing to do: boot the local disk.
    LocalDisk { uefi: bool },
    /// The server cannot boot the host now (e.g. no boot environment built).
    Unavailable { reason: String },
}

/// The MAC a host script's file name names (`MAC.ipxe`, the last part of `/boot/MAC.ipxe`), in
/// any of the forms iPXE sends: `:`-, `-`-separated, or with the colons written `%3A` (as they
/// arrive on the wire, before a router decodes the path).
pub fn script_mac(file: &str) -> Option<crate::mac::Mac> {
    let m = file.strip_suffix(".ipxe")?;
    m.replace("%3A", ":").replace("%3a", ":").parse().ok()
}

/// A secret that never shows in logs: `Debug` prints `<secret>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

const CHAIN: &str = include_str!("../../ipxe/chain.ipxe");
const BOOTENV: &str = include_str!("../../ipxe/bootenv.ipxe");
const LOCAL_BIOS: &str = include_str!("../../ipxe/local-bios.ipxe");
const LOCAL_UEFI: &str = include_str!("../../ipxe/local-uefi.ipxe");
const UNAVAILABLE: &str = include_str!("../../ipxe/unavailable.ipxe");

/// The script DHCP hands to iPXE (`BASE/boot.ipxe`): it asks for this MAC's own script.
pub fn chain_script(base: &str) -> String {
    render(CHAIN, &[("base", &url_text(base))])
}

impl BootScript {
    /// Renders the script; `base` is the server URL as the client reaches it
    /// (`http://10.99.0.1:8080`).
    pub fn render(&self, base: &str) -> String {
        let base = url_text(base);
        match self {
            BootScript::BootEnv {
                reason,
                task,
                credential,
            } => {
                let mut cmdline = format!(
                    "console=ttyS0,115200n8 console=tty0 bootcast.server={base} bootcast.mac=${{netX/mac}}"
                );
                if let Some(t) = task {
                    cmdline.push_str(&format!(" bootcast.task={t}"));
                }
                if let Some(Secret(c)) = credential {
                    let c: String = c.chars().filter(char::is_ascii_hexdigit).collect();
                    cmdline.push_str(&format!(" bootcast.credential={c}"));
                }
                render(
                    BOOTENV,
                    &[
                        ("base", &base),
                        ("reason", &plain_text(reason)),
                        ("cmdline", &cmdline),
                    ],
                )
            }
            BootScript::LocalDisk { uefi: false } => LOCAL_BIOS.to_string(),
            BootScript::LocalDisk { uefi: true } => LOCAL_UEFI.to_string(),
            BootScript::Unavailable { reason } => {
                render(UNAVAILABLE, &[("reason", &plain_text(reason))])
            }
        }
    }
}

/// `script` with `bootcast.key=KEYS` on its kernel line (replacing any there): the keys the
/// agent verifies its orders with ([`crate::sign`]), given by the node that serves the script
/// (the central server its own; a relay the keys it pinned, whatever the script said). A
/// script without a kernel line comes back unchanged.
pub fn set_key(script: &str, keys: &crate::sign::Keys) -> String {
    let keys = keys.to_string();
    let mut out = String::with_capacity(script.len() + keys.len() + 16);
    for line in script.split_inclusive('\n') {
        if !line.starts_with("kernel ") || !line.contains(" bootcast.server=") {
            out.push_str(line);
            continue;
        }
        let (body, nl) = line.strip_suffix('\n').map_or((line, ""), |b| (b, "\n"));
        let words: Vec<&str> = body
            .split(' ')
            .filter(|w| !w.starts_with("bootcast.key="))
            .collect();
        for (i, w) in words.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            out.push_str(w);
            if w.starts_with("bootcast.server=") && !keys.is_empty() {
                out.push_str(" bootcast.key=");
                out.push_str(&keys);
            }
        }
        out.push_str(nl);
    }
    out
}

/// Text safe inside an iPXE `echo`: letters, digits and a few punctuation marks; anything
/// iPXE would interpret (`$`, `&&`, `||`, `#`, quotes, newlines) becomes a space.
fn plain_text(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || " .,:()/_-`'".contains(c) {
                c
            } else {
                ' '
            }
        })
        .collect()
}

/// A URL safe in a script: only URL characters (no spaces, `$`, `&`, `|`, quotes).
fn url_text(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || ":/.-_[]%".contains(*c))
        .collect()
}

/// Replaces each `{{name}}` in one pass over the template, so a value can never introduce a
/// placeholder of its own. Values must already be safe (see [`plain_text`], [`url_text`]).
fn render(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len() + 256);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find("}}") {
            Some(end) => {
                let name = &after[..end];
                match vars.iter().find(|(n, _)| *n == name) {
                    Some((_, v)) => out.push_str(v),
                    None => panic!("template placeholder {{{{{name}}}}} has no value"),
                }
                rest = &after[end + 2..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::BootScript;

    #[test]
    fn script_file_names_name_their_mac_in_every_form_ipxe_sends() {
        let mac = "52:54:00:99:04:01".parse().ok();
        for f in [
            "52%3A54%3A00%3A99%3A04%3A01.ipxe",
            "52%3a54%3a00%3a99%3a04%3a01.ipxe",
            "52:54:00:99:04:01.ipxe",
            "52-54-00-99-04-01.ipxe",
        ] {
            assert_eq!(super::script_mac(f), mac, "{f}");
        }
        assert_eq!(super::script_mac("52:54:00:99:04:01"), None);
        assert_eq!(super::script_mac("nonsense.ipxe"), None);
    }

    #[test]
    fn the_key_on_the_kernel_line_is_the_serving_nodes() {
        let script = BootScript::BootEnv {
            reason: "task 1".into(),
            task: Some(1),
            credential: None,
        }
        .render("http://10.99.0.1:8080");
        let k1 = crate::sign::SigningKey::ephemeral().unwrap().public();
        let k2 = crate::sign::SigningKey::ephemeral().unwrap().public();
        let one = super::set_key(&script, &crate::sign::Keys::new(vec![k1]));
        assert!(
            one.contains(&format!(
                "bootcast.server=http://10.99.0.1:8080 bootcast.key={k1} "
            )),
            "{one}"
        );
        // a relay puts its own pinned keys in place of whatever came from upstream
        let two = super::set_key(&one, &crate::sign::Keys::new(vec![k2]));
        assert!(two.contains(&format!("bootcast.key={k2} ")), "{two}");
        assert!(!two.contains(&k1.to_string()), "{two}");
        assert_eq!(two.lines().count(), script.lines().count());
        let local = BootScript::LocalDisk { uefi: true }.render("http://x");
        assert_eq!(
            super::set_key(&local, &crate::sign::Keys::new(vec![k1])),
            local
        );
    }

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
            credential: Some(super::Secret("00ff".into())),
        }
        .render(base);
        assert!(
            env.contains(" bootcast.credential=00ff || goto failed\n"),
            "{env}"
        );
        let plan = BootScript::BootEnv {
            reason: "registering".into(),
            task: None,
            credential: Some(super::Secret("00ff".into())),
        };
        assert!(!format!("{plan:?}").contains("00ff"), "{plan:?}");
        assert!(env.contains("kernel http://10.99.0.1:8080/bootenv/vmlinuz initrd=initrd.img "));
        assert!(env.contains(
            " bootcast.server=http://10.99.0.1:8080 bootcast.mac=${netX/mac} bootcast.task=42"
        ));
        assert!(env.contains("initrd http://10.99.0.1:8080/bootenv/initrd.img"));
        assert!(BootScript::LocalDisk { uefi: false }
            .render(base)
            .contains("sanboot --no-describe --drive 0x80"));
        assert!(BootScript::LocalDisk { uefi: true }
            .render(base)
            .contains("\nexit 1"));
        let un = BootScript::Unavailable {
            reason: "x\nchain http://evil ${y} && chain http://e2 || shell {{base}} #".into(),
        }
        .render(base);
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

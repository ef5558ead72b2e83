//! What a machine's network boot does next, decided once and rendered for the boot loader that
//! asked.
//!
//! The decision ([`BootScript`]) is made by the central server (`http::boot::host_script`) or
//! by a site relay alone (`relay::proxy`); it never depends on the loader. The loader is named
//! by the file asked for ([`script_target`]):
//! - `/boot/MAC.ipxe`: iPXE (BIOS, and UEFI with the `ipxe` chain), rendered by
//!   [`super::ipxe`];
//! - `/boot/MAC.grub`: the signed GRUB of the Secure Boot chain (shim → GRUB), which reads it
//!   over TFTP as `grub/grub.cfg-MAC`, rendered by [`super::grub`].
//!
//! Both renderings carry the same kernel command line: the server, the MAC, the task, this
//! boot's credential and (set by the node that serves it, [`set_key`]) the keys the agent
//! verifies its orders with.

use crate::mac::Mac;

/// What a host's `GET /boot/MAC.ipxe` (or `.grub`) answers.
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
    LocalDisk { uefi: bool, handoff: Handoff },
    /// The server cannot boot the host now (e.g. no boot environment built).
    Unavailable { reason: String },
}

/// The boot loader a script is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loader {
    /// iPXE (`MAC.ipxe`).
    Ipxe,
    /// GRUB, the signed network image of the Secure Boot chain (`MAC.grub`).
    Grub,
}

/// How a UEFI machine leaves the network boot for its own disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Handoff {
    /// Find the disk's EFI system partition and start its loader (Windows boot manager, a
    /// distribution's shim or GRUB, then the removable-media path `\EFI\BOOT\BOOTX64.EFI`),
    /// without waiting on the firmware's other boot entries. The default.
    #[default]
    Chain,
    /// Hand back to the firmware, which tries its next boot entry: for firmware whose
    /// loaders misbehave when started from a network boot.
    Exit,
}

impl Handoff {
    pub fn as_str(self) -> &'static str {
        match self {
            Handoff::Chain => "chain",
            Handoff::Exit => "exit",
        }
    }

    pub fn parse(s: &str) -> Option<Handoff> {
        match s {
            "chain" => Some(Handoff::Chain),
            "exit" => Some(Handoff::Exit),
            _ => None,
        }
    }
}

/// The MAC and loader a script file name names (`MAC.ipxe` or `MAC.grub`, the last part of
/// `/boot/MAC.ipxe`), the MAC in any of the forms iPXE and GRUB send: `:`-, `-`-separated, or
/// with the colons written `%3A` (as they arrive on the wire, before a router decodes the path).
pub fn script_target(file: &str) -> Option<(Mac, Loader)> {
    let (m, loader) = match file.strip_suffix(".ipxe") {
        Some(m) => (m, Loader::Ipxe),
        None => (file.strip_suffix(".grub")?, Loader::Grub),
    };
    let mac = m.replace("%3A", ":").replace("%3a", ":").parse().ok()?;
    Some((mac, loader))
}

/// A secret that never shows in logs: `Debug` prints `<secret>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

impl BootScript {
    /// Renders the script for `loader`; `base` is the server URL as the client reaches it
    /// (`http://10.99.0.1:8080`).
    pub fn render(&self, loader: Loader, base: &str) -> String {
        use super::{grub, ipxe};
        let mac = match loader {
            Loader::Ipxe => "${netX/mac}",
            Loader::Grub => "$net_default_mac",
        };
        match (self, loader) {
            (
                BootScript::BootEnv {
                    reason,
                    task,
                    credential,
                },
                _,
            ) => {
                let cmdline = BootScript::cmdline(base, mac, *task, credential.as_ref());
                match loader {
                    Loader::Ipxe => ipxe::bootenv(base, reason, &cmdline),
                    Loader::Grub => grub::bootenv(reason, &cmdline),
                }
            }
            // iPXE cannot start a loader from a local disk's ESP: on UEFI it hands back to
            // the firmware, whatever the hand-off (the Secure Boot chain's GRUB can)
            (BootScript::LocalDisk { uefi, .. }, Loader::Ipxe) => ipxe::local(*uefi),
            (BootScript::LocalDisk { handoff, .. }, Loader::Grub) => {
                grub::local(*handoff == Handoff::Chain)
            }
            (BootScript::Unavailable { reason }, Loader::Ipxe) => ipxe::unavailable(reason),
            (BootScript::Unavailable { reason }, Loader::Grub) => grub::unavailable(reason),
        }
    }

    /// The kernel command line of the boot environment, `mac` being how the loader names the
    /// boot interface's MAC (`${netX/mac}` in iPXE, `$net_default_mac` in GRUB).
    fn cmdline(base: &str, mac: &str, task: Option<i64>, cred: Option<&Secret>) -> String {
        let mut cmdline = format!(
            "console=ttyS0,115200n8 console=tty0 bootcast.server={} bootcast.mac={mac}",
            super::template::url_text(base)
        );
        if let Some(t) = task {
            cmdline.push_str(&format!(" bootcast.task={t}"));
        }
        if let Some(Secret(c)) = cred {
            let c: String = c.chars().filter(char::is_ascii_hexdigit).collect();
            cmdline.push_str(&format!(" bootcast.credential={c}"));
        }
        cmdline
    }
}

/// `script` with `bootcast.key=KEYS` on its kernel command line (replacing any there): the keys
/// the agent verifies its orders with ([`crate::sign`]), given by the node that serves the
/// script (the central server its own; a relay the keys it pinned, whatever the script said).
/// The kernel line is the one holding ` bootcast.server=` (iPXE's `kernel`, GRUB's `linux`);
/// no other line can (a reason shown in a script never holds a `=`). A script without one comes
/// back unchanged.
pub fn set_key(script: &str, keys: &crate::sign::Keys) -> String {
    let keys = keys.to_string();
    let mut out = String::with_capacity(script.len() + keys.len() + 16);
    for line in script.split_inclusive('\n') {
        if !line.contains(" bootcast.server=") {
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

#[cfg(test)]
mod tests {
    use super::{BootScript, Handoff, Loader, Secret};

    #[test]
    fn script_file_names_name_their_mac_and_loader_in_every_form_sent() {
        let mac = "52:54:00:99:04:01".parse().unwrap();
        for f in [
            "52%3A54%3A00%3A99%3A04%3A01.ipxe",
            "52%3a54%3a00%3a99%3a04%3a01.ipxe",
            "52:54:00:99:04:01.ipxe",
            "52-54-00-99-04-01.ipxe",
        ] {
            assert_eq!(super::script_target(f), Some((mac, Loader::Ipxe)), "{f}");
        }
        assert_eq!(
            super::script_target("52:54:00:99:04:01.grub"),
            Some((mac, Loader::Grub))
        );
        assert_eq!(super::script_target("52:54:00:99:04:01"), None);
        assert_eq!(super::script_target("52:54:00:99:04:01.cfg"), None);
        assert_eq!(super::script_target("nonsense.ipxe"), None);
    }

    #[test]
    fn the_key_on_the_kernel_line_is_the_serving_nodes_in_both_renderings() {
        for loader in [Loader::Ipxe, Loader::Grub] {
            let script = BootScript::BootEnv {
                reason: "task 1".into(),
                task: Some(1),
                credential: None,
            }
            .render(loader, "http://10.99.0.1:8080");
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
            let local = BootScript::LocalDisk {
                uefi: true,
                handoff: Handoff::Chain,
            }
            .render(loader, "http://x");
            assert_eq!(
                super::set_key(&local, &crate::sign::Keys::new(vec![k1])),
                local
            );
        }
    }

    #[test]
    fn both_renderings_carry_the_same_command_line() {
        let plan = BootScript::BootEnv {
            reason: "registering".into(),
            task: Some(42),
            credential: Some(Secret("00ff".into())),
        };
        assert!(!format!("{plan:?}").contains("00ff"), "{plan:?}");
        let ipxe = plan.render(Loader::Ipxe, "http://10.99.0.1:8080");
        let grub = plan.render(Loader::Grub, "http://10.99.0.1:8080");
        let tail = " bootcast.server=http://10.99.0.1:8080 bootcast.mac=";
        let args = |s: &str, mac: &str| {
            let i = s.find(tail).expect(s);
            let rest = &s[i + tail.len()..];
            assert!(rest.starts_with(mac), "{s}");
            rest[mac.len()..].lines().next().unwrap().to_string()
        };
        let i = args(&ipxe, "${netX/mac}");
        let g = args(&grub, "$net_default_mac");
        assert!(
            i.starts_with(" bootcast.task=42 bootcast.credential=00ff"),
            "{i}"
        );
        assert!(
            g.starts_with(" bootcast.task=42 bootcast.credential=00ff"),
            "{g}"
        );
    }

    #[test]
    fn ipxe_scripts_render_without_placeholders() {
        let base = "http://10.99.0.1:8080";
        let chain = crate::boot::ipxe::chain_script(base);
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
        let c = crate::boot::ipxe::chain_script("http://h:1 && shell");
        assert!(c.contains("chain http://h:1shell/boot/"), "{c}");
        for s in [chain, env, un] {
            assert!(s.starts_with("#!ipxe\n"));
            assert!(!s.contains("{{"), "{s}");
        }
    }

    #[test]
    fn grub_configurations_render_without_placeholders_and_nothing_smuggled() {
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

//! What a TFTP file name may be, decided before the file system is touched.
//!
//! Rules (documented in [`super`]):
//! - one leading `/` is dropped: `/undionly.kpxe` and `undionly.kpxe` are the same file, both
//!   relative to the TFTP root (as `in.tftpd -s` does); a name still absolute after that
//!   (`//etc/passwd`) is refused;
//! - `.` and empty components are dropped (`a/./b`, `a//b` mean `a/b`);
//! - refused: an empty name, any `..` component, any backslash, NUL or other control character.
//!
//! Symlinks are the file system's business: [`super::handler`] resolves the name and refuses
//! anything that ends up outside the root.

/// Why a requested name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameRefused {
    #[error("empty file name")]
    Empty,
    #[error("absolute path")]
    Absolute,
    #[error("backslash in file name")]
    Backslash,
    #[error("NUL or control character in file name")]
    Control,
    #[error("'..' component in file name")]
    DotDot,
}

/// The normalised relative name (`a/b/c`, no leading `/`), or why `name` is refused.
pub fn normalize(name: &str) -> Result<String, NameRefused> {
    if name.contains('\\') {
        return Err(NameRefused::Backslash);
    }
    if name.chars().any(char::is_control) {
        return Err(NameRefused::Control);
    }
    let rest = name.strip_prefix('/').unwrap_or(name);
    if rest.starts_with('/') {
        return Err(NameRefused::Absolute);
    }
    let mut parts = Vec::new();
    for part in rest.split('/') {
        match part {
            ".." => return Err(NameRefused::DotDot),
            "" | "." => {}
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(NameRefused::Empty);
    }
    Ok(parts.join("/"))
}

/// The path of the node's own HTTP service that answers a (normalised) TFTP name, for the
/// names of the Secure Boot chain: its signed binaries, GRUB's configuration (the first file,
/// then each machine's, `grub/grub.cfg-MAC`, which is that machine's boot script rendered for
/// GRUB) and the boot environment, which the signed GRUB can only fetch over TFTP.
pub fn http_path(name: &str) -> Option<String> {
    match name {
        "shimx64.efi" | "grubx64.efi" => Some(format!("/uefi/{name}")),
        "grub/grub.cfg" | "bootenv/vmlinuz" | "bootenv/initrd.img" => Some(format!("/{name}")),
        _ => {
            let mac = name.strip_prefix("grub/grub.cfg-")?;
            let plain = !mac.is_empty()
                && mac.len() <= 32
                && mac
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'-');
            plain.then(|| format!("/boot/{mac}.grub"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{normalize, NameRefused::*};

    #[test]
    fn names_of_the_secure_boot_chain_map_to_the_http_service() {
        use super::http_path;
        assert_eq!(http_path("shimx64.efi").unwrap(), "/uefi/shimx64.efi");
        assert_eq!(http_path("grub/grub.cfg").unwrap(), "/grub/grub.cfg");
        assert_eq!(
            http_path("grub/grub.cfg-52:54:00:ab:cd:ef").unwrap(),
            "/boot/52:54:00:ab:cd:ef.grub"
        );
        assert_eq!(
            http_path("bootenv/initrd.img").unwrap(),
            "/bootenv/initrd.img"
        );
        for other in [
            "grub/grub.cfg-",
            "grub/grub.cfg-52:54?x=1",
            "grub/grub.cfg-a/b",
            "grub/x86_64-efi/command.lst",
            "bootenv/bootenv.json",
            "undionly.kpxe",
        ] {
            assert_eq!(http_path(other), None, "{other}");
        }
    }

    #[test]
    fn accepted_names() {
        assert_eq!(normalize("undionly.kpxe").unwrap(), "undionly.kpxe");
        assert_eq!(normalize("/undionly.kpxe").unwrap(), "undionly.kpxe");
        assert_eq!(
            normalize("efi/x64/grubx64.efi").unwrap(),
            "efi/x64/grubx64.efi"
        );
        assert_eq!(normalize("a/./b//c/").unwrap(), "a/b/c");
        assert_eq!(normalize("..foo/bar..").unwrap(), "..foo/bar..");
    }

    #[test]
    fn refused_names() {
        assert_eq!(normalize(""), Err(Empty));
        assert_eq!(normalize("/"), Err(Empty));
        assert_eq!(normalize("./."), Err(Empty));
        assert_eq!(normalize("//etc/passwd"), Err(Absolute));
        assert_eq!(normalize("../etc/passwd"), Err(DotDot));
        assert_eq!(normalize("a/../../b"), Err(DotDot));
        assert_eq!(normalize("/.."), Err(DotDot));
        assert_eq!(normalize("a/.."), Err(DotDot));
        assert_eq!(normalize("..\\windows"), Err(Backslash));
        assert_eq!(normalize("a\\b"), Err(Backslash));
        assert_eq!(normalize("a\0b"), Err(Control));
        assert_eq!(normalize("a\nb"), Err(Control));
        assert_eq!(normalize("a\x7fb"), Err(Control));
    }
}

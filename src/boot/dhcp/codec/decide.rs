//! Which kind of boot client a request comes from, and the boot file it is told to load.

use super::*;

/// What kind of boot client a request comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientClass {
    /// Option 60 starts with `PXEClient`.
    Pxe,
    /// Option 60 starts with `HTTPClient` (UEFI HTTP boot).
    Http,
    /// Anything else: an ordinary DHCP client.
    Other,
}

impl Request<'_> {
    pub fn class(&self) -> ClientClass {
        match self.vendor_class {
            Some(v) if v.starts_with(b"PXEClient") => ClientClass::Pxe,
            Some(v) if v.starts_with(b"HTTPClient") => ClientClass::Http,
            _ => ClientClass::Other,
        }
    }

    /// iPXE says who it is with user class `iPXE` (raw, or RFC 3004-framed) or option 175.
    pub fn is_ipxe(&self) -> bool {
        self.ipxe_options || matches!(self.user_class, Some(u) if u == b"iPXE" || u == b"\x04iPXE")
    }
}

/// What a client is told to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    /// The iPXE script URL (HTTP): the chain ends here.
    IpxeScript(String),
    /// A file name fetched by TFTP from siaddr.
    Tftp(String),
    /// An HTTP-boot URL (UEFI HTTP boot).
    Http(String),
    /// A boot client whose architecture has no entry in the boot files.
    Unconfigured(Option<u16>),
    /// Not a boot client.
    Nothing,
}

impl Boot {
    pub(super) fn file(&self) -> Option<&str> {
        match self {
            Boot::IpxeScript(f) | Boot::Tftp(f) | Boot::Http(f) => Some(f),
            Boot::Unconfigured(_) | Boot::Nothing => None,
        }
    }
}

/// Picks the boot file for a request.
pub fn choose_boot(req: &Request<'_>, settings: &DhcpSettings) -> Boot {
    let class = req.class();
    if req.is_ipxe() {
        return Boot::IpxeScript(settings.ipxe_script_url.clone());
    }
    if class == ClientClass::Other {
        return Boot::Nothing;
    }
    let Some(arch) = req.arch else {
        return Boot::Unconfigured(None);
    };
    match settings.boot_files.get(arch) {
        Some(f) if f.starts_with("http://") || f.starts_with("https://") => {
            Boot::Http(f.to_string())
        }
        Some(f) => Boot::Tftp(f.to_string()),
        None => Boot::Unconfigured(Some(arch)),
    }
}

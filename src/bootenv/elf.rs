//! Just enough ELF64 (little-endian) reading for the boot environment: is a program statically
//! linked (no `PT_INTERP`), and what does a kernel module's `.modinfo` section say.

/// Why a file could not be read as ELF64.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ElfError {
    #[error("not an ELF file")]
    NotElf,
    #[error("not a 64-bit little-endian ELF file")]
    Unsupported,
    #[error("truncated or malformed ELF ({0})")]
    Malformed(&'static str),
}

fn u16_at(b: &[u8], off: usize) -> Result<u16, ElfError> {
    b.get(off..off + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or(ElfError::Malformed("header"))
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, ElfError> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")))
        .ok_or(ElfError::Malformed("header"))
}

fn u64_at(b: &[u8], off: usize) -> Result<u64, ElfError> {
    b.get(off..off + 8)
        .map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
        .ok_or(ElfError::Malformed("header"))
}

fn usize_at(b: &[u8], off: usize) -> Result<usize, ElfError> {
    usize::try_from(u64_at(b, off)?).map_err(|_| ElfError::Malformed("offset"))
}

fn check_header(b: &[u8]) -> Result<(), ElfError> {
    if b.len() < 4 || &b[..4] != b"\x7fELF" {
        return Err(ElfError::NotElf);
    }
    if b.len() < 64 {
        return Err(ElfError::Malformed("header"));
    }
    // EI_CLASS = ELFCLASS64, EI_DATA = ELFDATA2LSB.
    if b[4] != 2 || b[5] != 1 {
        return Err(ElfError::Unsupported);
    }
    Ok(())
}

/// Whether the ELF file in `head` (at least its first few KiB: the header and program
/// headers) names a program interpreter, i.e. is dynamically linked.
pub fn has_interpreter(head: &[u8]) -> Result<bool, ElfError> {
    check_header(head)?;
    let phoff = usize_at(head, 0x20)?;
    let phentsize = usize::from(u16_at(head, 0x36)?);
    let phnum = usize::from(u16_at(head, 0x38)?);
    for i in 0..phnum {
        let p = phoff + i * phentsize;
        const PT_INTERP: u32 = 3;
        if u32_at(head, p)? == PT_INTERP {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The contents of the section called `name`, if the file has one.
pub fn section<'a>(b: &'a [u8], name: &str) -> Result<Option<&'a [u8]>, ElfError> {
    check_header(b)?;
    let shoff = usize_at(b, 0x28)?;
    let shentsize = usize::from(u16_at(b, 0x3a)?);
    let shnum = usize::from(u16_at(b, 0x3c)?);
    let shstrndx = usize::from(u16_at(b, 0x3e)?);
    if shoff == 0 || shnum == 0 {
        return Ok(None);
    }
    let header = |i: usize| -> Result<(u32, usize, usize), ElfError> {
        let h = shoff + i * shentsize;
        Ok((
            u32_at(b, h)?,
            usize_at(b, h + 0x18)?,
            usize_at(b, h + 0x20)?,
        ))
    };
    let bytes = |off: usize, size: usize| {
        off.checked_add(size)
            .and_then(|end| b.get(off..end))
            .ok_or(ElfError::Malformed("section bounds"))
    };
    let (_, stroff, strsize) = header(shstrndx)?;
    let strtab = bytes(stroff, strsize)?;
    for i in 0..shnum {
        let (name_off, off, size) = header(i)?;
        let Some(rest) = strtab.get(name_off as usize..) else {
            continue;
        };
        let end = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
        if &rest[..end] == name.as_bytes() {
            return bytes(off, size).map(Some);
        }
    }
    Ok(None)
}

/// The modules a kernel module depends on (`depends=` in its `.modinfo`), names normalised
/// with `_` for `-`.
pub fn module_depends(ko: &[u8]) -> Result<Vec<String>, ElfError> {
    let Some(info) = section(ko, ".modinfo")? else {
        return Ok(Vec::new());
    };
    for field in info.split(|&c| c == 0) {
        if let Some(v) = field.strip_prefix(b"depends=") {
            return Ok(String::from_utf8_lossy(v)
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| s.replace('-', "_"))
                .collect());
        }
    }
    Ok(Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_non_elf() {
        assert_eq!(has_interpreter(b"#!/bin/sh\n"), Err(ElfError::NotElf));
        assert_eq!(
            has_interpreter(b"\x7fELF\x01\x01\x01"),
            Err(ElfError::Malformed("header"))
        );
    }

    #[test]
    fn the_test_binary_is_static_like_bootcast() {
        // .cargo/config.toml links every target binary with crt-static.
        let head = std::fs::read("/proc/self/exe").unwrap();
        assert_eq!(has_interpreter(&head), Ok(false));
        assert!(section(&head, ".text").unwrap().is_some());
        assert!(section(&head, ".no-such-section").unwrap().is_none());
    }

    #[test]
    fn a_dynamic_program_has_an_interpreter() {
        // Debian's coreutils are dynamically linked.
        let Ok(b) = std::fs::read("/usr/bin/env") else {
            println!("SKIP: a_dynamic_program_has_an_interpreter: no /usr/bin/env");
            return;
        };
        assert_eq!(has_interpreter(&b), Ok(true));
    }
}

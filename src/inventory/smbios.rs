//! SMBIOS (DMI) tables, parsed without I/O: the bytes of `/sys/firmware/dmi/tables/DMI`, and
//! of `smbios_entry_point` for the version (`_SM_` 2.x, `_SM3_` 3.x, or a bare legacy `_DMI_`).
//!
//! Read: type 0 (firmware), 1 (system), 2 (baseboard), 3 (chassis), 4 (processors) and 17
//! (memory devices). Every read is bounds-checked: a truncated or garbled table gives what
//! could be read and [`Smbios::warnings`] for the rest, never a panic. Strings are trimmed, and
//! the placeholders firmware writers leave ("Not Specified", "To Be Filled By O.E.M.",
//! "Default string", "None", empty) are `None`.

use super::model::{Baseboard, Chassis, Firmware, MemoryModule, System};

/// What the SMBIOS tables say, in the inventory's own types.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Smbios {
    /// `(major, minor)` from the entry point; `None` when it was missing or unreadable.
    pub version: Option<(u8, u8)>,
    /// Vendor, version and date only (the boot mode is not in SMBIOS).
    pub firmware: Firmware,
    pub system: System,
    pub baseboard: Baseboard,
    pub chassis: Chassis,
    /// Populated processor sockets, in table order.
    pub processors: Vec<Processor>,
    /// Memory devices with a module in them, in table order.
    pub memory: Vec<MemoryModule>,
    /// What was skipped or could not be read.
    pub warnings: Vec<String>,
}

/// One populated processor socket (SMBIOS type 4).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Processor {
    /// Socket designation (`CPU 0`, `U3E1`).
    pub socket: Option<String>,
    pub manufacturer: Option<String>,
    /// The processor version string (often the model name).
    pub version: Option<String>,
    /// Current speed in MHz (0 in the table: unknown).
    pub current_speed_mhz: Option<u32>,
    pub max_speed_mhz: Option<u32>,
    /// Cores in the package (SMBIOS 2.5+; 3.0+ for more than 254).
    pub cores: Option<u32>,
    /// Threads in the package (SMBIOS 2.5+; 3.0+ for more than 254).
    pub threads: Option<u32>,
}

/// The entry point's content: the version, the table's length, and for 2.x the number of
/// structures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryPoint {
    pub major: u8,
    pub minor: u8,
    /// The table's length (3.x: its maximum length), which the kernel's `DMI` file has.
    pub table_len: u32,
    /// Number of structures (2.x and legacy entry points only).
    pub structures: Option<u16>,
}

/// Placeholders that firmware writers leave in strings they did not fill in.
const PLACEHOLDERS: &[&str] = &[
    "not specified",
    "to be filled by o.e.m.",
    "default string",
    "none",
];

/// Parses the entry point (`smbios_entry_point`): `_SM3_` (3.x), `_SM_` (2.x) or a legacy
/// `_DMI_`. A checksum that does not add up is an error too: the version could be anything.
pub fn parse_entry_point(bytes: &[u8]) -> Result<EntryPoint, String> {
    let sum = |b: &[u8]| b.iter().fold(0u8, |a, &x| a.wrapping_add(x));
    if bytes.starts_with(b"_SM3_") {
        let len = usize::from(*bytes.get(6).ok_or("_SM3_ entry point cut short")?);
        if len < 0x18 || bytes.len() < len {
            return Err(format!(
                "_SM3_ entry point cut short ({} bytes, says {len})",
                bytes.len()
            ));
        }
        if sum(&bytes[..len]) != 0 {
            return Err("_SM3_ entry point checksum is wrong".into());
        }
        Ok(EntryPoint {
            major: bytes[7],
            minor: bytes[8],
            table_len: u32::from_le_bytes([bytes[0x0c], bytes[0x0d], bytes[0x0e], bytes[0x0f]]),
            structures: None,
        })
    } else if bytes.starts_with(b"_SM_") {
        let len = usize::from(*bytes.get(5).ok_or("_SM_ entry point cut short")?);
        if len < 0x1f || bytes.len() < len {
            return Err(format!(
                "_SM_ entry point cut short ({} bytes, says {len})",
                bytes.len()
            ));
        }
        if sum(&bytes[..len]) != 0 || &bytes[0x10..0x15] != b"_DMI_" {
            return Err("_SM_ entry point checksum or _DMI_ anchor is wrong".into());
        }
        Ok(EntryPoint {
            major: bytes[6],
            minor: bytes[7],
            table_len: u32::from(u16::from_le_bytes([bytes[0x16], bytes[0x17]])),
            structures: Some(u16::from_le_bytes([bytes[0x1c], bytes[0x1d]])),
        })
    } else if bytes.starts_with(b"_DMI_") {
        if bytes.len() < 0x0f {
            return Err("_DMI_ entry point cut short".into());
        }
        if sum(&bytes[..0x0f]) != 0 {
            return Err("_DMI_ entry point checksum is wrong".into());
        }
        let bcd = bytes[0x0e];
        Ok(EntryPoint {
            major: bcd >> 4,
            minor: bcd & 0x0f,
            table_len: u32::from(u16::from_le_bytes([bytes[0x06], bytes[0x07]])),
            structures: Some(u16::from_le_bytes([bytes[0x0c], bytes[0x0d]])),
        })
    } else if bytes.is_empty() {
        Err("the entry point is missing or empty".into())
    } else {
        Err("no _SM3_, _SM_ or _DMI_ anchor at the start of the entry point".into())
    }
}

/// One structure of the table: its formatted area (header included) and its strings.
struct Structure<'a> {
    kind: u8,
    handle: u16,
    data: &'a [u8],
    strings: Vec<&'a [u8]>,
}

impl Structure<'_> {
    fn byte(&self, off: usize) -> Option<u8> {
        self.data.get(off).copied()
    }

    fn word(&self, off: usize) -> Option<u16> {
        let b = self.data.get(off..off + 2)?;
        Some(u16::from_le_bytes([b[0], b[1]]))
    }

    fn dword(&self, off: usize) -> Option<u32> {
        let b = self.data.get(off..off + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// The string whose 1-based number is at `off`, cleaned by [`clean`].
    fn string(&self, off: usize) -> Option<String> {
        let n = usize::from(self.byte(off)?);
        let raw = self.strings.get(n.checked_sub(1)?)?;
        clean(&String::from_utf8_lossy(raw))
    }
}

/// Trims `s`; empty strings and firmware placeholders (any case) are `None`.
pub fn clean(s: &str) -> Option<String> {
    let t = s.trim_matches(|c: char| c.is_whitespace() || c.is_control());
    if t.is_empty() || PLACEHOLDERS.iter().any(|p| t.eq_ignore_ascii_case(p)) {
        None
    } else {
        Some(t.to_string())
    }
}

/// Splits the table into structures, stopping at the end-of-table structure (type 127), at
/// `limit` structures, or at the first one that does not fit (with a warning).
fn structures<'a>(
    table: &'a [u8],
    limit: Option<u16>,
    warnings: &mut Vec<String>,
) -> Vec<Structure<'a>> {
    let mut out = Vec::new();
    let mut off = 0usize;
    while off < table.len() {
        if limit.is_some_and(|l| out.len() >= usize::from(l)) {
            break;
        }
        let Some(header) = table.get(off..off + 4) else {
            warnings.push(format!(
                "SMBIOS table ends inside a structure header at byte {off}"
            ));
            break;
        };
        let (kind, len) = (header[0], usize::from(header[1]));
        let handle = u16::from_le_bytes([header[2], header[3]]);
        if len < 4 {
            warnings.push(format!(
                "SMBIOS structure type {kind} at byte {off} claims a length of {len}: rest of the table skipped"
            ));
            break;
        }
        let Some(data) = table.get(off..off + len) else {
            warnings.push(format!(
                "SMBIOS structure type {kind} at byte {off} runs past the end of the table: skipped"
            ));
            break;
        };
        // The string set ends with two NULs (just two when there are no strings).
        let rest = &table[off + len..];
        let Some(end) = rest.windows(2).position(|w| w == [0, 0]) else {
            warnings.push(format!(
                "SMBIOS structure type {kind} at byte {off}: its strings are not terminated: skipped"
            ));
            break;
        };
        let strings = if end == 0 {
            Vec::new()
        } else {
            rest[..end].split(|&b| b == 0).collect()
        };
        out.push(Structure {
            kind,
            handle,
            data,
            strings,
        });
        off += len + end + 2;
        if kind == 127 {
            break;
        }
    }
    out
}

/// Parses the SMBIOS structure table `table` (the `DMI` file), with the version taken from
/// `entry_point` (the `smbios_entry_point` file; an empty slice when there is none: the UUID is
/// then read in the 2.6+ byte order, with a warning). Never fails: what it cannot read is in
/// [`Smbios::warnings`].
pub fn parse(entry_point: &[u8], table: &[u8]) -> Smbios {
    let mut s = Smbios::default();
    let ep = match parse_entry_point(entry_point) {
        Ok(ep) => {
            s.version = Some((ep.major, ep.minor));
            Some(ep)
        }
        Err(e) => {
            s.warnings.push(format!(
                "SMBIOS entry point: {e}; version unknown, UUID read in the SMBIOS 2.6+ byte order"
            ));
            None
        }
    };
    if table.is_empty() {
        s.warnings.push("the SMBIOS table is empty".into());
        return s;
    }
    let mut warnings = Vec::new();
    if let Some(ep) = ep.filter(|ep| (table.len() as u64) < u64::from(ep.table_len)) {
        warnings.push(format!(
            "the SMBIOS table has {} bytes where the entry point says {}: cut short",
            table.len(),
            ep.table_len
        ));
    }
    let limit = ep.and_then(|e| e.structures).filter(|&n| n > 0);
    let list = structures(table, limit, &mut warnings);
    let (mut seen0, mut seen1, mut seen2, mut seen3) = (false, false, false, false);
    for st in &list {
        match st.kind {
            0 if !seen0 => {
                seen0 = true;
                s.firmware = firmware(st);
            }
            1 if !seen1 => {
                seen1 = true;
                s.system = system(st, s.version);
            }
            2 if !seen2 => {
                seen2 = true;
                s.baseboard = baseboard(st);
            }
            3 if !seen3 => {
                seen3 = true;
                s.chassis = chassis(st);
            }
            4 => {
                if let Some(p) = processor(st) {
                    s.processors.push(p);
                }
            }
            17 => match memory_device(st) {
                Ok(Some(m)) => s.memory.push(m),
                Ok(None) => {}
                Err(e) => warnings.push(e),
            },
            _ => {}
        }
    }
    s.warnings.extend(warnings);
    s
}

/// Type 0: vendor (0x04), version (0x05), release date (0x08).
fn firmware(st: &Structure) -> Firmware {
    Firmware {
        vendor: st.string(0x04),
        version: st.string(0x05),
        date: st.string(0x08),
        ..Default::default()
    }
}

/// Type 1: vendor, product, version, serial (0x04-0x07), UUID (0x08, 2.1+), SKU (0x19) and
/// family (0x1a) (2.4+).
fn system(st: &Structure, version: Option<(u8, u8)>) -> System {
    System {
        vendor: st.string(0x04),
        model: st.string(0x05),
        version: st.string(0x06),
        serial: st.string(0x07),
        uuid: st
            .data
            .get(0x08..0x18)
            .and_then(|b| uuid(b, version.is_none_or(|v| v >= (2, 6)))),
        sku: st.string(0x19),
        family: st.string(0x1a),
    }
}

/// Formats the 16 UUID bytes lower-case and dashed; `little_endian` (SMBIOS 2.6+) stores the
/// first three fields little-endian. All-0x00 ("not settable") and all-0xFF ("not present")
/// are `None`.
pub fn uuid(b: &[u8], little_endian: bool) -> Option<String> {
    if b.len() != 16 || b.iter().all(|&x| x == 0) || b.iter().all(|&x| x == 0xff) {
        return None;
    }
    let mut o: [u8; 16] = b.try_into().ok()?;
    if little_endian {
        o[0..4].reverse();
        o[4..6].reverse();
        o[6..8].reverse();
    }
    let h = hex::encode(o);
    Some(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

/// Type 2: vendor, product, version, serial (0x04-0x07).
fn baseboard(st: &Structure) -> Baseboard {
    Baseboard {
        vendor: st.string(0x04),
        model: st.string(0x05),
        version: st.string(0x06),
        serial: st.string(0x07),
    }
}

/// Type 3: vendor (0x04), type (0x05, low 7 bits), serial (0x07), asset tag (0x08).
fn chassis(st: &Structure) -> Chassis {
    Chassis {
        vendor: st.string(0x04),
        kind: st
            .byte(0x05)
            .and_then(|t| chassis_type_name(t & 0x7f))
            .map(str::to_string),
        serial: st.string(0x07),
        asset_tag: st.string(0x08),
    }
}

/// The SMBIOS name of a chassis type (bit 7, the lock, already cleared); `None` for 2
/// ("Unknown") and for values the specification does not define.
pub fn chassis_type_name(t: u8) -> Option<&'static str> {
    const NAMES: [&str; 0x25] = [
        "",
        "Other",
        "",
        "Desktop",
        "Low Profile Desktop",
        "Pizza Box",
        "Mini Tower",
        "Tower",
        "Portable",
        "Laptop",
        "Notebook",
        "Hand Held",
        "Docking Station",
        "All In One",
        "Sub Notebook",
        "Space-saving",
        "Lunch Box",
        "Main Server Chassis",
        "Expansion Chassis",
        "Sub Chassis",
        "Bus Expansion Chassis",
        "Peripheral Chassis",
        "RAID Chassis",
        "Rack Mount Chassis",
        "Sealed-case PC",
        "Multi-system",
        "CompactPCI",
        "AdvancedTCA",
        "Blade",
        "Blade Enclosing",
        "Tablet",
        "Convertible",
        "Detachable",
        "IoT Gateway",
        "Embedded PC",
        "Mini PC",
        "Stick PC",
    ];
    NAMES.get(usize::from(t)).copied().filter(|n| !n.is_empty())
}

/// Type 4, when the socket is populated (status 0x18, bit 6): socket (0x04), manufacturer
/// (0x07), version (0x10), max and current speed (0x14, 0x16), core and thread counts (0x23,
/// 0x25; 0x2a and 0x2e when those say 0xff).
fn processor(st: &Structure) -> Option<Processor> {
    if st.byte(0x18).is_some_and(|status| status & 0x40 == 0) {
        return None;
    }
    let speed = |off| st.word(off).filter(|&v| v != 0).map(u32::from);
    let count = |off, off2| match st.byte(off) {
        Some(0) | None => None,
        Some(0xff) => st
            .word(off2)
            .filter(|&v| v != 0 && v != 0xffff)
            .map(u32::from)
            .or(Some(0xff)),
        Some(n) => Some(u32::from(n)),
    };
    Some(Processor {
        socket: st.string(0x04),
        manufacturer: st.string(0x07),
        version: st.string(0x10),
        max_speed_mhz: speed(0x14),
        current_speed_mhz: speed(0x16),
        cores: count(0x23, 0x2a),
        threads: count(0x25, 0x2e),
    })
}

/// Type 17. `Ok(None)` for an empty slot (size 0); an error (a warning for the caller) for a
/// structure too short to hold a size. Size: 0xffff unknown (kept, 0 MiB, with no error: the
/// module is there), bit 15 set for KiB units (rounded down to MiB), 0x7fff for the extended
/// size at 0x1c (MiB). Speed: the configured speed (0x20) when there is one, else the speed
/// (0x15); 0xffff in either means the 3.3+ extended field (0x58, 0x54).
fn memory_device(st: &Structure) -> Result<Option<MemoryModule>, String> {
    let size = st.word(0x0c).ok_or_else(|| {
        format!(
            "SMBIOS memory device 0x{:04x}: structure too short ({} bytes) to hold its size: skipped",
            st.handle,
            st.data.len()
        )
    })?;
    let size_mib = match size {
        0 => return Ok(None),
        0xffff => 0,
        0x7fff => match st.dword(0x1c) {
            Some(ext) => u64::from(ext & 0x7fff_ffff),
            None => {
                return Err(format!(
                    "SMBIOS memory device 0x{:04x}: size in the extended field, which the structure does not have: skipped",
                    st.handle
                ))
            }
        },
        s if s & 0x8000 != 0 => u64::from(s & 0x7fff) / 1024,
        s => u64::from(s),
    };
    let speed = |off, ext_off| match st.word(off) {
        None | Some(0) => None,
        Some(0xffff) => st
            .dword(ext_off)
            .map(|v| v & 0x7fff_ffff)
            .filter(|&v| v != 0),
        Some(v) => Some(u32::from(v)),
    };
    Ok(Some(MemoryModule {
        slot: st.string(0x10),
        size_mib,
        kind: st.byte(0x12).and_then(memory_type_name).map(str::to_string),
        speed_mts: speed(0x20, 0x58).or_else(|| speed(0x15, 0x54)),
        vendor: st.string(0x17),
        serial: st.string(0x18),
        part_number: st.string(0x1a),
    }))
}

/// The SMBIOS name of a memory type (type 17, offset 0x12); `None` for 2 ("Unknown") and for
/// values the specification does not define.
pub fn memory_type_name(t: u8) -> Option<&'static str> {
    const NAMES: [&str; 0x25] = [
        "",
        "Other",
        "",
        "DRAM",
        "EDRAM",
        "VRAM",
        "SRAM",
        "RAM",
        "ROM",
        "Flash",
        "EEPROM",
        "FEPROM",
        "EPROM",
        "CDRAM",
        "3DRAM",
        "SDRAM",
        "SGRAM",
        "RDRAM",
        "DDR",
        "DDR2",
        "DDR2 FB-DIMM",
        "",
        "",
        "",
        "DDR3",
        "FBD2",
        "DDR4",
        "LPDDR",
        "LPDDR2",
        "LPDDR3",
        "LPDDR4",
        "Logical non-volatile device",
        "HBM",
        "HBM2",
        "DDR5",
        "LPDDR5",
        "HBM3",
    ];
    NAMES.get(usize::from(t)).copied().filter(|n| !n.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};

    /// One structure under construction: a formatted area and its strings.
    struct St {
        data: Vec<u8>,
        strings: Vec<String>,
    }

    impl St {
        fn new(kind: u8, len: u8) -> St {
            let mut data = vec![0u8; usize::from(len)];
            data[0] = kind;
            data[1] = len;
            St {
                data,
                strings: Vec::new(),
            }
        }
        fn b(mut self, off: usize, v: u8) -> St {
            self.data[off] = v;
            self
        }
        fn w(mut self, off: usize, v: u16) -> St {
            self.data[off..off + 2].copy_from_slice(&v.to_le_bytes());
            self
        }
        fn d(mut self, off: usize, v: u32) -> St {
            self.data[off..off + 4].copy_from_slice(&v.to_le_bytes());
            self
        }
        fn raw(mut self, off: usize, v: &[u8]) -> St {
            self.data[off..off + v.len()].copy_from_slice(v);
            self
        }
        /// Adds `text` to the strings and stores its number at `off`.
        fn s(mut self, off: usize, text: &str) -> St {
            self.strings.push(text.to_string());
            self.data[off] = self.strings.len() as u8;
            self
        }
    }

    /// Lays structures out as a table (handles numbered in order), ending with type 127.
    fn table(sts: Vec<St>) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, mut st) in sts.into_iter().chain([St::new(127, 4)]).enumerate() {
            st.data[2..4].copy_from_slice(&(i as u16).to_le_bytes());
            out.extend_from_slice(&st.data);
            if st.strings.is_empty() {
                out.push(0);
            }
            for s in &st.strings {
                out.extend_from_slice(s.as_bytes());
                out.push(0);
            }
            out.push(0);
        }
        out
    }

    fn fix_checksum(b: &mut [u8], at: usize) {
        b[at] = 0;
        b[at] = 0u8.wrapping_sub(b.iter().fold(0u8, |a, &x| a.wrapping_add(x)));
    }

    /// A 3.x (`_SM3_`) entry point.
    fn ep3(major: u8, minor: u8, table_len: u32) -> Vec<u8> {
        let mut e = vec![0u8; 0x18];
        e[..5].copy_from_slice(b"_SM3_");
        e[6] = 0x18;
        e[7] = major;
        e[8] = minor;
        e[0x0a] = 1;
        e[0x0c..0x10].copy_from_slice(&table_len.to_le_bytes());
        fix_checksum(&mut e, 5);
        e
    }

    /// A 2.x (`_SM_`) entry point.
    fn ep2(major: u8, minor: u8, structures: u16) -> Vec<u8> {
        let mut e = vec![0u8; 0x1f];
        e[..4].copy_from_slice(b"_SM_");
        e[5] = 0x1f;
        e[6] = major;
        e[7] = minor;
        e[0x10..0x15].copy_from_slice(b"_DMI_");
        e[0x1c..0x1e].copy_from_slice(&structures.to_le_bytes());
        fix_checksum(&mut e[0x10..0x1f], 5);
        fix_checksum(&mut e, 4);
        e
    }

    const UUID_BYTES: [u8; 16] = [
        0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee,
        0xff,
    ];

    fn synthetic() -> Vec<St> {
        vec![
            St::new(0, 0x1a)
                .s(0x04, "American Megatrends Inc.")
                .s(0x05, " 1.2.3  ")
                .s(0x08, "07/15/2021"),
            St::new(1, 0x1b)
                .s(0x04, "Dell Inc.")
                .s(0x05, "OptiPlex 7090")
                .s(0x06, "Not Specified")
                .s(0x07, "ABC1234")
                .raw(0x08, &UUID_BYTES)
                .s(0x19, "0A5B")
                .s(0x1a, "To Be Filled By O.E.M."),
            St::new(2, 0x0f)
                .s(0x04, "Dell Inc.")
                .s(0x05, "0X8DXD")
                .s(0x06, "A00")
                .s(0x07, "/ABC1234/CNFCW0012345/"),
            // Bit 7 (the lock) set on Desktop (3); the asset tag is a placeholder.
            St::new(3, 0x16)
                .s(0x04, "Dell Inc.")
                .b(0x05, 0x83)
                .s(0x07, "CH-99")
                .s(0x08, "Default string"),
            // A populated socket, an empty one, and one with more than 254 cores (3.0 fields).
            St::new(4, 0x30)
                .s(0x04, "CPU 1")
                .s(0x07, "Intel(R) Corporation")
                .s(0x10, "Intel(R) Core(TM) i7-11700 @ 2.50GHz")
                .w(0x14, 4900)
                .w(0x16, 2500)
                .b(0x18, 0x41)
                .b(0x23, 8)
                .b(0x25, 16),
            St::new(4, 0x30).s(0x04, "CPU 2").b(0x18, 0x00),
            St::new(4, 0x30)
                .s(0x04, "CPU 3")
                .b(0x18, 0x41)
                .b(0x23, 0xff)
                .b(0x25, 0xff)
                .w(0x2a, 300)
                .w(0x2e, 600),
            // An empty slot.
            St::new(17, 0x28).w(0x0c, 0).s(0x10, "DIMM 0").b(0x12, 0x02),
            // 16 GiB in the extended size field, DDR4, configured speed below the rated one.
            St::new(17, 0x28)
                .w(0x0c, 0x7fff)
                .s(0x10, "ChannelA-DIMM1")
                .b(0x12, 0x1a)
                .w(0x15, 3200)
                .s(0x17, "Samsung")
                .s(0x18, "12345678")
                .s(0x1a, "M378A2G43AB3-CWE   ")
                .d(0x1c, 16384)
                .w(0x20, 2933),
            // 16384 KB (bit 15), DDR3, no configured speed: the speed is used.
            St::new(17, 0x22)
                .w(0x0c, 0x8000 | 16384)
                .s(0x10, "Bank 2")
                .b(0x12, 0x18)
                .w(0x15, 1600)
                .s(0x17, "None"),
            // 8 GiB LPDDR5 whose speed is only in the 3.3 extended field.
            St::new(17, 0x5c)
                .w(0x0c, 8192)
                .s(0x10, "Onboard")
                .b(0x12, 0x23)
                .w(0x15, 0xffff)
                .d(0x54, 8533)
                .w(0x20, 0xffff)
                .d(0x58, 6400),
            // Size unknown: kept, 0 MiB.
            St::new(17, 0x15)
                .w(0x0c, 0xffff)
                .s(0x10, "DIMM 3")
                .b(0x12, 0x22),
            // A type this parser does not read.
            St::new(200, 0x08).s(0x04, "OEM"),
        ]
    }

    fn mm(slot: &str, size_mib: u64, kind: &str, speed: Option<u32>) -> MemoryModule {
        MemoryModule {
            slot: Some(slot.into()),
            size_mib,
            kind: Some(kind.into()),
            speed_mts: speed,
            ..Default::default()
        }
    }

    #[test]
    fn synthetic_table_reads_every_field() {
        let t = table(synthetic());
        let s = parse(&ep3(3, 3, t.len() as u32), &t);
        let expected = Smbios {
            version: Some((3, 3)),
            firmware: Firmware {
                vendor: Some("American Megatrends Inc.".into()),
                version: Some("1.2.3".into()),
                date: Some("07/15/2021".into()),
                ..Default::default()
            },
            system: System {
                vendor: Some("Dell Inc.".into()),
                model: Some("OptiPlex 7090".into()),
                version: None,
                serial: Some("ABC1234".into()),
                uuid: Some("33221100-5544-7766-8899-aabbccddeeff".into()),
                sku: Some("0A5B".into()),
                family: None,
            },
            baseboard: Baseboard {
                vendor: Some("Dell Inc.".into()),
                model: Some("0X8DXD".into()),
                version: Some("A00".into()),
                serial: Some("/ABC1234/CNFCW0012345/".into()),
            },
            chassis: Chassis {
                vendor: Some("Dell Inc.".into()),
                kind: Some("Desktop".into()),
                serial: Some("CH-99".into()),
                asset_tag: None,
            },
            processors: vec![
                Processor {
                    socket: Some("CPU 1".into()),
                    manufacturer: Some("Intel(R) Corporation".into()),
                    version: Some("Intel(R) Core(TM) i7-11700 @ 2.50GHz".into()),
                    current_speed_mhz: Some(2500),
                    max_speed_mhz: Some(4900),
                    cores: Some(8),
                    threads: Some(16),
                },
                Processor {
                    socket: Some("CPU 3".into()),
                    cores: Some(300),
                    threads: Some(600),
                    ..Default::default()
                },
            ],
            memory: vec![
                MemoryModule {
                    vendor: Some("Samsung".into()),
                    serial: Some("12345678".into()),
                    part_number: Some("M378A2G43AB3-CWE".into()),
                    ..mm("ChannelA-DIMM1", 16384, "DDR4", Some(2933))
                },
                mm("Bank 2", 16, "DDR3", Some(1600)),
                mm("Onboard", 8192, "LPDDR5", Some(6400)),
                mm("DIMM 3", 0, "DDR5", None),
            ],
            warnings: vec![],
        };
        assert_eq!(s, expected);
    }

    #[test]
    fn uuid_byte_order_follows_the_version() {
        let t = table(vec![St::new(1, 0x19).raw(0x08, &UUID_BYTES)]);
        let old = parse(&ep2(2, 4, 2), &t);
        assert_eq!(
            old.system.uuid.as_deref(),
            Some("00112233-4455-6677-8899-aabbccddeeff")
        );
        assert_eq!(old.version, Some((2, 4)));
        assert!(old.warnings.is_empty(), "{:?}", old.warnings);
        let new = parse(&ep2(2, 6, 2), &t);
        assert_eq!(
            new.system.uuid.as_deref(),
            Some("33221100-5544-7766-8899-aabbccddeeff")
        );
        // Without an entry point: 2.6+ order, and a warning.
        let none = parse(&[], &t);
        assert_eq!(none.system.uuid, new.system.uuid);
        assert_eq!(none.version, None);
        assert_eq!(none.warnings.len(), 1, "{:?}", none.warnings);
        for blank in [[0u8; 16], [0xff; 16]] {
            let t = table(vec![St::new(1, 0x19).raw(0x08, &blank)]);
            assert_eq!(parse(&ep3(3, 0, 0), &t).system.uuid, None);
        }
    }

    #[test]
    fn entry_points_are_checked() {
        assert_eq!(
            parse_entry_point(&ep3(3, 5, 100)),
            Ok(EntryPoint {
                major: 3,
                minor: 5,
                table_len: 100,
                structures: None
            })
        );
        assert_eq!(
            parse_entry_point(&ep2(2, 8, 10)),
            Ok(EntryPoint {
                major: 2,
                minor: 8,
                table_len: 0,
                structures: Some(10)
            })
        );
        let mut bad = ep3(3, 5, 100);
        bad[7] = 4;
        assert!(parse_entry_point(&bad).unwrap_err().contains("checksum"));
        assert!(parse_entry_point(&ep2(2, 8, 10)[..20]).is_err());
        assert!(parse_entry_point(b"garbage").is_err());
        assert!(parse_entry_point(&[]).is_err());
    }

    #[test]
    fn strings_are_cleaned() {
        assert_eq!(clean("  Lenovo \n"), Some("Lenovo".into()));
        for p in [
            "",
            "   ",
            "Not Specified",
            "to be filled by o.e.m.",
            "Default string",
            "None",
        ] {
            assert_eq!(clean(p), None, "{p:?}");
        }
        // A string number past the string set, and the 2-NUL empty set.
        let t = table(vec![St::new(2, 0x08).b(0x04, 3), St::new(0, 0x12)]);
        let s = parse(&ep3(3, 0, 0), &t);
        assert_eq!(s.baseboard, Baseboard::default());
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    }

    #[test]
    fn the_structure_count_of_a_2x_entry_point_ends_the_table() {
        let mut t = table(vec![St::new(0, 0x12).s(0x04, "first")]);
        // Not type 127-terminated for the purpose of the test: garbage after the 1 structure.
        t.truncate(t.len() - 6);
        t.extend_from_slice(&[3, 2, 0, 0]);
        let s = parse(&ep2(2, 8, 1), &t);
        assert_eq!(s.firmware.vendor.as_deref(), Some("first"));
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        // Without the count, the garbage is reported.
        let s = parse(&ep3(3, 0, 0), &t);
        assert_eq!(s.firmware.vendor.as_deref(), Some("first"));
        assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
    }

    #[test]
    fn random_and_truncated_tables_never_panic() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        let good = table(synthetic());
        let ep = ep3(3, 3, good.len() as u32);
        let mut runs = 0;
        // Every prefix of the table and of the entry point.
        for n in 0..=good.len() {
            let s = parse(&ep, &good[..n]);
            if n < good.len() {
                assert!(!s.warnings.is_empty(), "cut at {n}: no warning");
            }
            runs += 1;
        }
        for n in 0..=ep.len() {
            parse(&ep[..n], &good);
            runs += 1;
        }
        // The fixtures, cut anywhere.
        for dir in fixture_dirs() {
            let (e, t) = read_fixture(&dir);
            for n in 0..=t.len() {
                parse(&e, &t[..n]);
                runs += 1;
            }
        }
        // The table with a few bytes changed at random (lengths and string numbers included).
        for _ in 0..3000 {
            let mut t = good.clone();
            for _ in 0..rng.gen_range(1..8) {
                let i = rng.gen_range(0..t.len());
                t[i] = rng.gen();
            }
            if rng.gen_bool(0.3) {
                t.truncate(rng.gen_range(0..t.len()));
            }
            parse(&ep, &t);
            runs += 1;
        }
        // Pure noise, in both files.
        for _ in 0..2000 {
            let t: Vec<u8> = (0..rng.gen_range(0..400)).map(|_| rng.gen()).collect();
            let mut e: Vec<u8> = (0..rng.gen_range(0..40)).map(|_| rng.gen()).collect();
            if rng.gen_bool(0.5) && e.len() >= 5 {
                e[..5].copy_from_slice(if rng.gen() { b"_SM3_" } else { b"_SM_\0" });
            }
            parse(&e, &t);
            runs += 1;
        }
        assert!(runs > 5000);
    }

    fn fixture_root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smbios")
    }

    fn fixture_dirs() -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixture_root())
            .expect("tests/fixtures/smbios is missing")
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        dirs
    }

    fn read_fixture(dir: &Path) -> (Vec<u8>, Vec<u8>) {
        let read = |f: &str| {
            std::fs::read(dir.join(f)).unwrap_or_else(|e| panic!("{}/{f}: {e}", dir.display()))
        };
        (read("smbios_entry_point"), read("DMI"))
    }

    /// `dmidecode` output as (type, key → value) per structure.
    fn dmidecode(text: &str) -> Vec<(u8, HashMap<String, String>)> {
        let mut out: Vec<(u8, HashMap<String, String>)> = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("Handle ") {
                let kind = rest
                    .split("DMI type ")
                    .nth(1)
                    .and_then(|t| t.split(',').next())
                    .and_then(|t| t.trim().parse().ok())
                    .unwrap_or_else(|| panic!("bad dmidecode line {line:?}"));
                out.push((kind, HashMap::new()));
            } else if let (Some(kv), Some(last)) = (line.strip_prefix('\t'), out.last_mut()) {
                if let Some((k, v)) = kv.split_once(": ") {
                    if !k.starts_with('\t') {
                        last.1.insert(k.to_string(), v.to_string());
                    }
                }
            }
        }
        out
    }

    /// A dmidecode value as this parser gives it: dmidecode's words for "nothing" are `None`.
    fn dmi_str(v: Option<&String>) -> Option<String> {
        let v = v?;
        if ["Not Settable", "Not Present", "Unknown", "Not Provided"].contains(&v.as_str())
            || v.starts_with("<OUT OF SPEC")
        {
            return None;
        }
        clean(v)
    }

    /// "2000 MHz", "2666 MT/s", "8" as a number; anything else `None`.
    fn dmi_num(v: Option<&String>) -> Option<u32> {
        v?.split_whitespace().next()?.parse().ok()
    }

    /// "16 GB", "512 MB", "16384 kB" in MiB; `None` for an empty slot.
    fn dmi_size(v: &str) -> Option<u64> {
        let (n, unit) = v.split_once(' ')?;
        let n: u64 = n.parse().ok()?;
        match unit {
            "TB" => Some(n << 20),
            "GB" => Some(n << 10),
            "MB" => Some(n),
            "kB" => Some(n / 1024),
            _ => None,
        }
    }

    /// What dmidecode says about the fixture in `dir`, in this parser's terms.
    fn expected_from_dmidecode(dir: &Path) -> Smbios {
        let text = std::fs::read_to_string(dir.join("dmidecode.txt"))
            .unwrap_or_else(|e| panic!("{}/dmidecode.txt: {e}", dir.display()));
        let mut s = Smbios::default();
        let version = text
            .lines()
            .find_map(|l| l.strip_prefix("SMBIOS ")?.strip_suffix(" present."))
            .expect("no \"SMBIOS x.y present.\" line");
        let mut parts = version.split('.').map(|p| p.parse::<u8>().unwrap());
        s.version = Some((parts.next().unwrap(), parts.next().unwrap()));
        let (mut seen0, mut seen1, mut seen2, mut seen3) = (false, false, false, false);
        for (kind, f) in dmidecode(&text) {
            let g = |k: &str| dmi_str(f.get(k));
            match kind {
                0 if !seen0 => {
                    seen0 = true;
                    s.firmware.vendor = g("Vendor");
                    s.firmware.version = g("Version");
                    s.firmware.date = g("Release Date");
                }
                1 if !seen1 => {
                    seen1 = true;
                    s.system = System {
                        vendor: g("Manufacturer"),
                        model: g("Product Name"),
                        version: g("Version"),
                        serial: g("Serial Number"),
                        uuid: g("UUID").map(|u| u.to_ascii_lowercase()),
                        sku: g("SKU Number"),
                        family: g("Family"),
                    };
                }
                2 if !seen2 => {
                    seen2 = true;
                    s.baseboard = Baseboard {
                        vendor: g("Manufacturer"),
                        model: g("Product Name"),
                        version: g("Version"),
                        serial: g("Serial Number"),
                    };
                }
                3 if !seen3 => {
                    seen3 = true;
                    s.chassis = Chassis {
                        vendor: g("Manufacturer"),
                        kind: g("Type"),
                        serial: g("Serial Number"),
                        asset_tag: g("Asset Tag"),
                    };
                }
                4 if g("Status").is_some_and(|st| st.starts_with("Populated")) => {
                    s.processors.push(Processor {
                        socket: g("Socket Designation"),
                        manufacturer: g("Manufacturer"),
                        version: g("Version"),
                        current_speed_mhz: dmi_num(f.get("Current Speed")),
                        max_speed_mhz: dmi_num(f.get("Max Speed")),
                        cores: dmi_num(f.get("Core Count")),
                        threads: dmi_num(f.get("Thread Count")),
                    });
                }
                17 => {
                    let size = f.get("Size").expect("type 17 without Size");
                    if size == "No Module Installed" {
                        continue;
                    }
                    let configured = f
                        .get("Configured Memory Speed")
                        .or(f.get("Configured Clock Speed"));
                    s.memory.push(MemoryModule {
                        slot: g("Locator"),
                        size_mib: dmi_size(size).unwrap_or(0),
                        kind: g("Type"),
                        speed_mts: dmi_num(configured).or(dmi_num(f.get("Speed"))),
                        vendor: g("Manufacturer"),
                        serial: g("Serial Number"),
                        part_number: g("Part Number"),
                    });
                }
                _ => {}
            }
        }
        s
    }

    #[test]
    fn fixtures_read_as_dmidecode_reads_them() {
        let dirs = fixture_dirs();
        assert!(
            !dirs.is_empty(),
            "no fixture under {}",
            fixture_root().display()
        );
        for dir in dirs {
            let (e, t) = read_fixture(&dir);
            let got = parse(&e, &t);
            assert!(
                got.warnings.is_empty(),
                "{}: {:?}",
                dir.display(),
                got.warnings
            );
            assert_eq!(got, expected_from_dmidecode(&dir), "{}", dir.display());
        }
    }

    #[test]
    fn qemu_seabios_fixture() {
        let (e, t) = read_fixture(&fixture_root().join("qemu-pc-seabios"));
        let s = parse(&e, &t);
        assert_eq!(s.version, Some((2, 8)));
        assert_eq!(s.firmware.vendor.as_deref(), Some("SeaBIOS"));
        assert_eq!(
            s.firmware.version.as_deref(),
            Some("1.16.2-debian-1.16.2-1")
        );
        assert_eq!(s.firmware.date.as_deref(), Some("04/01/2014"));
        assert_eq!(
            s.system,
            System {
                vendor: Some("Bootcast Lab".into()),
                model: Some("PXE Test PC".into()),
                version: Some("1.0".into()),
                serial: Some("BC-SYS-0001".into()),
                uuid: Some("3f2a9c1e-7b4d-4e8a-9c6f-0123456789ab".into()),
                sku: Some("BC-SKU-1".into()),
                family: Some("Lab".into()),
            }
        );
        assert_eq!(s.baseboard.model.as_deref(), Some("Test Board"));
        assert_eq!(s.baseboard.serial.as_deref(), Some("BC-MB-0001"));
        assert_eq!(s.chassis.kind.as_deref(), Some("Other"));
        assert_eq!(s.chassis.asset_tag.as_deref(), Some("ASSET-42"));
        assert_eq!(s.processors.len(), 1);
        assert_eq!(s.processors[0].current_speed_mhz, Some(2000));
        assert_eq!(
            (s.processors[0].cores, s.processors[0].threads),
            (Some(2), Some(4))
        );
        assert_eq!(
            s.memory,
            vec![MemoryModule {
                slot: Some("DIMM 0".into()),
                size_mib: 2048,
                kind: Some("RAM".into()),
                speed_mts: Some(2666),
                vendor: Some("Samsung".into()),
                serial: Some("S123456".into()),
                part_number: Some("M378A1K43CB2-CTD".into()),
            }]
        );
    }

    #[test]
    fn qemu_ovmf_fixture() {
        let (e, t) = read_fixture(&fixture_root().join("qemu-q35-ovmf"));
        let s = parse(&e, &t);
        assert_eq!(s.version, Some((3, 0)));
        // Type 0 comes last in this table.
        assert_eq!(
            s.firmware.vendor.as_deref(),
            Some("EFI Development Kit II / OVMF")
        );
        assert_eq!(s.system.vendor.as_deref(), Some("QEMU"));
        assert_eq!(
            s.system.model.as_deref(),
            Some("Standard PC (Q35 + ICH9, 2009)")
        );
        assert_eq!(s.system.uuid, None, "all-zero UUID");
        assert_eq!(s.system.serial, None);
        assert_eq!(s.baseboard, Baseboard::default(), "no type 2");
        assert_eq!(s.memory.len(), 1);
        assert_eq!(s.memory[0].size_mib, 4096);
        assert_eq!(s.memory[0].slot.as_deref(), Some("ChannelA-DIMM 0"));
        assert_eq!(s.memory[0].speed_mts, Some(3200));
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    }
}

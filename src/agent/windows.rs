//! Post-deploy for Windows: the host's name as the sysprep answer file's `ComputerName`.
//!
//! A sysprepped Windows image reads `Windows/Panther/unattend.xml` (and
//! `Windows/System32/Sysprep/unattend.xml`) at its first start; the `<ComputerName>` of its
//! `specialize` pass names the PC. For every NTFS partition of the restored disk holding one of
//! those files with a `<ComputerName>` element, the agent puts the host's name there.
//!
//! How, without a read-write NTFS driver (Debian's kernel has no ntfs3, and the boot environment
//! carries no FUSE driver): the file keeps its exact size — the new name replaces the old, and
//! the difference is taken from or given to the whitespace between XML elements, which no
//! reader gives meaning to — and its new bytes are written over its own clusters, located with
//! the `ntfs` crate (read-only) from its data runs. No NTFS metadata changes (size, runs,
//! timestamps, bitmap), so the volume stays as consistent as the image was. A file the method
//! cannot change safely (resident in the MFT, compressed, encrypted, sparse, not UTF-8, no room
//! in its whitespace) is left alone and the reason is logged.
//!
//! Not done here: the domain join (unattend's `UnattendedJoin` or GPO), product keys, a name for
//! an image that was not sysprepped (set it in the image with an answer file).

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use ntfs::attribute_value::NtfsAttributeValue;
use ntfs::{Ntfs, NtfsAttributeFlags};

use crate::fsmap::{table, Device, Window};

/// Where sysprep answer files live, from the volume's root.
pub const ANSWER_FILES: [&[&str]; 2] = [
    &["Windows", "Panther", "unattend.xml"],
    &["Windows", "System32", "Sysprep", "unattend.xml"],
];

/// The largest answer file edited (they are a few KiB).
const MAX_ANSWER_FILE: u64 = 1 << 20;

/// Checks a name against Windows' rules for a computer (NetBIOS) name.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 15 {
        return Err(format!(
            "{name:?} has {} characters: a Windows computer name has 1 to 15",
            name.len()
        ));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(format!(
            "{name:?}: a Windows computer name holds only letters, digits and '-'"
        ));
    }
    if name.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{name:?}: a Windows computer name cannot be digits only"
        ));
    }
    Ok(())
}

/// The answer file `xml` with every `<ComputerName>` set to `name`, the same length as `xml`;
/// `Ok(None)` when it has no `<ComputerName>` element.
pub fn rename(xml: &[u8], name: &str) -> Result<Option<Vec<u8>>, String> {
    if xml.starts_with(&[0xFF, 0xFE]) || xml.starts_with(&[0xFE, 0xFF]) {
        return Err("the answer file is UTF-16; only UTF-8 answer files are edited".into());
    }
    const OPEN: &[u8] = b"<ComputerName>";
    const CLOSE: &[u8] = b"</ComputerName>";
    let mut out = Vec::with_capacity(xml.len() + 64);
    let mut rest = xml;
    let mut found = false;
    while let Some(i) = find(rest, OPEN) {
        let value = &rest[i + OPEN.len()..];
        let end = find(value, CLOSE)
            .ok_or("a <ComputerName> element is not closed: the answer file is damaged")?;
        if value[..end].contains(&b'<') {
            return Err("a <ComputerName> element holds markup: not edited".into());
        }
        out.extend_from_slice(&rest[..i + OPEN.len()]);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(CLOSE);
        rest = &value[end + CLOSE.len()..];
        found = true;
    }
    if !found {
        return Ok(None);
    }
    out.extend_from_slice(rest);
    fit(out, xml.len()).map(Some)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Brings `xml` to `len` bytes through the whitespace between elements (`>` … `<`): spaces
/// added after the last element, or runs of it shortened (each keeps one character).
fn fit(mut xml: Vec<u8>, len: usize) -> Result<Vec<u8>, String> {
    if xml.len() <= len {
        // pad after the last `>` (before any trailing whitespace)
        let at = xml
            .iter()
            .rposition(|&b| b == b'>')
            .map_or(xml.len(), |i| i + 1);
        let pad = len - xml.len();
        xml.splice(at..at, std::iter::repeat_n(b' ', pad));
        return Ok(xml);
    }
    let mut excess = xml.len() - len;
    let mut out = Vec::with_capacity(len);
    let mut i = 0;
    while i < xml.len() {
        let b = xml[i];
        out.push(b);
        i += 1;
        if b != b'>' || excess == 0 {
            continue;
        }
        let run = xml[i..]
            .iter()
            .take_while(|c| c.is_ascii_whitespace())
            .count();
        if run > 1 && xml.get(i + run) == Some(&b'<') {
            let cut = (run - 1).min(excess);
            out.extend_from_slice(&xml[i..i + run - cut]);
            excess -= cut;
            i += run;
        }
    }
    if excess > 0 {
        return Err(format!(
            "the answer file has too little whitespace between its elements to take a name \
             {excess} bytes longer"
        ));
    }
    Ok(out)
}

/// Writes `name` into the answer files of every NTFS partition of `disk`; returns what was
/// written (`part2:/Windows/Panther/unattend.xml`). Answer files that cannot be edited safely
/// are logged and left alone.
pub fn set_computer_name(
    disk: &Path,
    name: &str,
    log: &mut dyn FnMut(&str),
) -> Result<Vec<String>, String> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .map_err(|e| format!("opening {}: {e}", disk.display()))?;
    let size = file
        .seek(SeekFrom::End(0))
        .map_err(|e| format!("sizing {}: {e}", disk.display()))?;
    let mut mbr = [0u8; 512];
    if size < 512 {
        return Ok(Vec::new());
    }
    file.read_exact_at(&mut mbr, 0)
        .map_err(|e| format!("reading {}: {e}", disk.display()))?;
    let parts = match table::read(&mut file, size, &mbr) {
        Ok((_, parts)) => parts,
        Err(why) => {
            log(&format!(
                "bootcast-agent: post-deploy: Windows name not written: {why}"
            ));
            return Ok(Vec::new());
        }
    };
    let mut written = Vec::new();
    for p in parts {
        let mut head = [0u8; 512];
        file.read_exact_at(&mut head, p.start)
            .map_err(|e| format!("reading {}: {e}", disk.display()))?;
        if !crate::fsmap::ntfs::detect(&head) {
            continue;
        }
        for path in ANSWER_FILES {
            let shown = format!("part{}:/{}", p.number, path.join("/"));
            match edit_answer_file(&mut file, p.start, p.size, path, name) {
                Ok(Edit::Written) => {
                    log(&format!(
                        "BOOTCAST-AGENT-WINDOWS-NAME {name} {shown}"
                    ));
                    written.push(shown);
                }
                Ok(Edit::Absent) => {}
                Ok(Edit::NoComputerName) => log(&format!(
                    "bootcast-agent: post-deploy: {shown} has no <ComputerName>: Windows picks its own name"
                )),
                Err(why) => log(&format!(
                    "bootcast-agent: post-deploy: warning: {shown} not changed: {why}"
                )),
            }
        }
    }
    file.sync_all()
        .map_err(|e| format!("flushing {}: {e}", disk.display()))?;
    Ok(written)
}

enum Edit {
    Written,
    Absent,
    NoComputerName,
}

/// Finds `path` on the NTFS at `start` and rewrites its `<ComputerName>` in place.
fn edit_answer_file(
    disk: &mut File,
    start: u64,
    size: u64,
    path: &[&str],
    name: &str,
) -> Result<Edit, String> {
    let mut reader = disk.try_clone().map_err(|e| e.to_string())?;
    let mut win = Window {
        disk: &mut reader,
        start,
        size,
    };
    let mut fs = Device::new(&mut win, size);
    let ntfs_err = |e: ntfs::NtfsError| e.to_string();
    let mut ntfs = Ntfs::new(&mut fs).map_err(ntfs_err)?;
    ntfs.read_upcase_table(&mut fs).map_err(ntfs_err)?;
    let Some(file) = crate::fsmap::ntfs::find_file(&ntfs, &mut fs, path).map_err(ntfs_err)? else {
        return Ok(Edit::Absent);
    };
    let item = file
        .data(&mut fs, "")
        .ok_or("the file has no data")?
        .map_err(ntfs_err)?;
    let attr = item.to_attribute().map_err(ntfs_err)?;
    let flags = attr.flags();
    for (flag, what) in [
        (NtfsAttributeFlags::COMPRESSED, "compressed"),
        (NtfsAttributeFlags::ENCRYPTED, "encrypted"),
        (NtfsAttributeFlags::SPARSE, "sparse"),
    ] {
        if flags.contains(flag) {
            return Err(format!("the file is {what} on NTFS"));
        }
    }
    let value = attr.value(&mut fs).map_err(ntfs_err)?;
    let len = value.len();
    if len > MAX_ANSWER_FILE {
        return Err(format!("the file holds {len} bytes: not an answer file"));
    }
    // where each byte of the file lies on the volume: (volume offset, bytes)
    let runs: Vec<(u64, u64)> = match &value {
        NtfsAttributeValue::NonResident(v) => v
            .data_runs()
            .map(|r| {
                let r = r.map_err(ntfs_err)?;
                let at = r
                    .data_position()
                    .value()
                    .ok_or("the file has a sparse run")?;
                Ok((at.get(), r.allocated_size()))
            })
            .collect::<Result<_, String>>()?,
        _ => {
            return Err(
                "the file is small enough to live inside the MFT record: not edited in place"
                    .into(),
            )
        }
    };
    let mut xml = vec![0u8; len as usize];
    let mut value = value;
    ntfs::NtfsReadSeek::read_exact(&mut value, &mut fs, &mut xml).map_err(ntfs_err)?;
    let Some(new) = rename(&xml, name)? else {
        return Ok(Edit::NoComputerName);
    };
    debug_assert_eq!(new.len(), xml.len());
    // write over the file's own clusters, run by run
    let mut done = 0usize;
    for (at, run_len) in runs {
        if done == new.len() {
            break;
        }
        let n = (run_len as usize).min(new.len() - done);
        if at + n as u64 > size {
            return Err("a data run lies past the end of the partition".into());
        }
        disk.write_all_at(&new[done..done + n], start + at)
            .map_err(|e| format!("writing: {e}"))?;
        done += n;
    }
    if done != new.len() {
        return Err("the file's data runs are shorter than the file: not edited".into());
    }
    disk.flush().map_err(|e| e.to_string())?;
    Ok(Edit::Written)
}

#[cfg(test)]
mod tests {
    use super::*;

    const XML: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<unattend xmlns="urn:schemas-microsoft-com:unattend">
    <settings pass="specialize">
        <component name="Microsoft-Windows-Shell-Setup" processorArchitecture="amd64">
            <ComputerName>MASTER-01</ComputerName>
            <TimeZone>Romance Standard Time</TimeZone>
        </component>
    </settings>
</unattend>
"#;

    #[test]
    fn the_name_changes_and_the_size_does_not() {
        for name in ["PC1", "MASTER-02", "room12-pc01-abc"] {
            let out = rename(XML.as_bytes(), name).unwrap().unwrap();
            assert_eq!(out.len(), XML.len(), "{name}");
            let text = String::from_utf8(out).unwrap();
            assert!(
                text.contains(&format!("<ComputerName>{name}</ComputerName>")),
                "{text}"
            );
            assert!(text.contains("<TimeZone>Romance Standard Time</TimeZone>"));
            assert!(text.trim_end().ends_with("</unattend>"), "{text}");
        }
    }

    #[test]
    fn every_computer_name_element_is_set() {
        let two = XML.replace(
            "<TimeZone>",
            "<ComputerName>*</ComputerName>\n            <TimeZone>",
        );
        let out = String::from_utf8(rename(two.as_bytes(), "PC7").unwrap().unwrap()).unwrap();
        assert_eq!(out.matches("<ComputerName>PC7</ComputerName>").count(), 2);
        assert_eq!(out.len(), two.len());
    }

    #[test]
    fn files_it_cannot_edit_safely_are_refused() {
        assert_eq!(rename(b"<unattend/>", "PC1").unwrap(), None);
        let tight = "<a><ComputerName>X</ComputerName></a>";
        let err = rename(tight.as_bytes(), "LONGER-NAME").unwrap_err();
        assert!(err.contains("whitespace"), "{err}");
        assert!(rename(b"<ComputerName>X", "PC1").is_err());
        assert!(rename(&[0xFF, 0xFE, b'<', 0], "PC1").is_err());
    }

    #[test]
    fn windows_names_follow_windows_rules() {
        assert!(check_name("room12-pc01").is_ok());
        assert!(check_name("a-name-of-16-chr").is_err());
        assert!(check_name("pc_1").is_err());
        assert!(check_name("12345").is_err());
        assert!(check_name("").is_err());
    }
}

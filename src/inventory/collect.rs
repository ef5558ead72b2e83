//! Collects the [`Inventory`] of the machine the agent runs on, from files only: the SMBIOS
//! tables, `/proc/cpuinfo` and sysfs, all read under a root directory (`/` on a machine, a
//! fake tree in tests). A piece that cannot be read adds a warning; the rest is still
//! collected.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use super::model::{Cpu, Disk, Inventory, NetInterface, PciDevice};
use super::smbios::{self, Processor};

/// The EFI variable that says whether Secure Boot is on.
const SECURE_BOOT_VAR: &str =
    "sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c";

/// Block devices that are not disks: loop, RAM, compressed RAM, optical, floppy,
/// device-mapper, software RAID, network block devices.
const NOT_DISKS: &[&str] = &["loop", "ram", "zram", "sr", "fd", "dm-", "md", "nbd"];

/// Collects the inventory of the machine whose `/proc` and `/sys` are under `root`. `mac` is the
/// boot interface's MAC (kept in the inventory lower-case, and used to keep a virtual interface
/// that carries it); `now` is the collection time (seconds since the Unix epoch). Never fails:
/// what could not be read is in [`Inventory::warnings`].
pub fn collect(root: &Path, mac: &str, now: i64) -> Inventory {
    let mac = mac.trim().to_ascii_lowercase();
    let mut inv = Inventory {
        collected_at: now,
        mac: mac.clone(),
        ..Default::default()
    };
    let mut w = Vec::new();

    let tables = read_smbios(root, &mut w);
    let mut processors = Vec::new();
    if let Some(t) = tables {
        inv.firmware = t.firmware;
        inv.system = t.system;
        inv.baseboard = t.baseboard;
        inv.chassis = t.chassis;
        inv.memory = t.memory;
        processors = t.processors;
        w.extend(t.warnings);
    }
    let efi = root.join("sys/firmware/efi");
    if efi.is_dir() {
        inv.firmware.mode = Some("uefi".into());
        inv.firmware.secure_boot = secure_boot(root, &mut w);
        boot_entries(root, &mut inv.firmware, &mut w);
    } else {
        inv.firmware.mode = Some("bios".into());
    }
    inv.cpus = cpus(root, &processors, &mut w);
    inv.storage = disks(root, &mut w);
    inv.network = interfaces(root, &mac, &mut w);
    inv.pci = pci_devices(root, &mut w);
    inv.warnings = w;
    inv
}

/// The interface holding the default route in `proc/net/route` (`proc`: procfs' mount point).
pub fn default_route_interface(proc: &Path) -> Option<String> {
    let routes = fs::read_to_string(proc.join("net/route")).ok()?;
    // Iface Destination Gateway ...: the default route has destination 00000000.
    routes
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 1 && f[1] == "00000000")
        .map(|f| f[0].to_string())
}

/// The MAC (lower case) of the interface holding the default route in `root/proc/net/route`;
/// `None` when there is no default route or its interface has no readable address.
pub fn default_route_mac(root: &Path) -> Option<String> {
    let iface = default_route_interface(&root.join("proc"))?;
    let mac = read_str(&root.join("sys/class/net").join(iface).join("address"))?;
    Some(mac.to_ascii_lowercase())
}

/// The file at `path`, trimmed; `None` if unreadable or empty.
fn read_str(path: &Path) -> Option<String> {
    let s = fs::read(path).ok()?;
    let s = String::from_utf8_lossy(&s);
    let t = s.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    (!t.is_empty()).then(|| t.to_string())
}

/// The last component of the symbolic link at `path` (`.../drivers/e1000e` → `e1000e`).
fn link_name(path: &Path) -> Option<String> {
    let target = fs::read_link(path).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}

/// A sysfs hex id (`0x8086`, `0x020000`) without its `0x`, lower case.
fn hex_id(path: &Path) -> Option<String> {
    let s = read_str(path)?;
    let s = s.strip_prefix("0x").unwrap_or(&s).to_ascii_lowercase();
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit())).then_some(s)
}

/// The names in directory `dir`, sorted; a warning and nothing when it cannot be listed.
fn list_dir(dir: &Path, what: &str, w: &mut Vec<String>) -> Vec<String> {
    match fs::read_dir(dir) {
        Ok(rd) => {
            let mut names: Vec<String> = rd
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        }
        Err(e) => {
            w.push(format!("{what}: cannot list {}: {e}", dir.display()));
            Vec::new()
        }
    }
}

/// The machine's SMBIOS system (type 1) record, for the agent's hello; `None` without a
/// readable table.
pub fn system(root: &Path) -> Option<super::model::System> {
    Some(read_smbios(root, &mut Vec::new())?.system)
}

/// Parses the SMBIOS tables under `root/sys/firmware/dmi/tables`; `None` (and a warning)
/// when the table cannot be read.
fn read_smbios(root: &Path, w: &mut Vec<String>) -> Option<smbios::Smbios> {
    let dir = root.join("sys/firmware/dmi/tables");
    let table = match fs::read(dir.join("DMI")) {
        Ok(t) => t,
        Err(e) => {
            w.push(format!(
                "no SMBIOS table ({}: {e}): firmware, system, chassis, baseboard and memory \
                 modules unknown (a VM without SMBIOS, or a non-x86 machine without DMI)",
                dir.join("DMI").display()
            ));
            return None;
        }
    };
    // A missing entry point is reported by the parser (as empty).
    let ep = fs::read(dir.join("smbios_entry_point")).unwrap_or_default();
    Some(smbios::parse(&ep, &table))
}

/// Secure Boot from its EFI variable: 4 attribute bytes, then the value (1: on).
/// BootCurrent, BootOrder and the entries it names, from efivarfs.
fn boot_entries(root: &Path, fw: &mut super::model::Firmware, w: &mut Vec<String>) {
    use super::efivars;
    let sys = root.join("sys");
    match efivars::read(&sys, "BootCurrent") {
        Ok((_, d)) => fw.boot_current = efivars::u16s(&d).first().map(|n| format!("{n:04X}")),
        Err(e) => w.push(format!("BootCurrent: {e}")),
    }
    let order = match efivars::read(&sys, "BootOrder") {
        Ok((_, d)) => efivars::u16s(&d),
        Err(e) => {
            w.push(format!("BootOrder: {e}"));
            return;
        }
    };
    fw.boot_order = order.iter().map(|n| format!("{n:04X}")).collect();
    for n in order {
        let name = efivars::boot_name(n);
        match efivars::read(&sys, &name).map(|(_, d)| efivars::load_option(&d)) {
            Ok(Some(o)) => fw.boot_entries.push(super::model::BootEntry {
                id: format!("{n:04X}"),
                description: o.description,
                network: o.network,
            }),
            Ok(None) => w.push(format!("{name}: not a valid load option")),
            Err(e) => w.push(format!("{name}: {e}")),
        }
    }
}

fn secure_boot(root: &Path, w: &mut Vec<String>) -> Option<bool> {
    let path = root.join(SECURE_BOOT_VAR);
    match fs::read(&path) {
        Ok(b) if b.len() >= 5 => Some(b[4] == 1),
        Ok(b) => {
            w.push(format!(
                "{}: {} bytes, expected 5: Secure Boot state unknown",
                path.display(),
                b.len()
            ));
            None
        }
        Err(e) => {
            w.push(format!(
                "{}: {e}: Secure Boot state unknown (is efivarfs mounted?)",
                path.display()
            ));
            None
        }
    }
}

/// One CPU package being gathered from `/proc/cpuinfo`.
#[derive(Default)]
struct Package {
    vendor: Option<String>,
    model: Option<String>,
    cpu_cores: Option<u32>,
    siblings: Option<u32>,
    core_ids: std::collections::BTreeSet<String>,
    logical: u32,
    mhz: Option<f64>,
}

/// One [`Cpu`] per physical package of `root/proc/cpuinfo` (`physical id`; all in one when
/// absent): vendor (`vendor_id`), model (`model name`), cores (`cpu cores`, else the distinct
/// `core id`s), threads (`siblings`, else the logical CPUs). The speed is the current speed of
/// the matching SMBIOS processor (same order) when it has one, else `cpu MHz`; SMBIOS counts
/// fill in counts that cpuinfo lacks.
fn cpus(root: &Path, smbios: &[Processor], w: &mut Vec<String>) -> Vec<Cpu> {
    let path = root.join("proc/cpuinfo");
    let text = match fs::read(&path) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) => {
            w.push(format!("{}: {e}: CPUs unknown", path.display()));
            return Vec::new();
        }
    };
    let mut packages: BTreeMap<u32, Package> = BTreeMap::new();
    for block in text.split("\n\n") {
        let fields: BTreeMap<&str, &str> = block
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim(), v.trim()))
            .collect();
        if !fields.contains_key("processor") {
            continue;
        }
        let id = fields
            .get("physical id")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let p = packages.entry(id).or_default();
        p.logical += 1;
        let text = |k: &str| fields.get(k).and_then(|v| smbios::clean(v));
        let num = |k: &str| fields.get(k).and_then(|v| v.parse::<u32>().ok());
        p.vendor = p.vendor.take().or_else(|| text("vendor_id"));
        p.model = p.model.take().or_else(|| text("model name"));
        p.cpu_cores = p.cpu_cores.or_else(|| num("cpu cores"));
        p.siblings = p.siblings.or_else(|| num("siblings"));
        p.mhz = p
            .mhz
            .or_else(|| fields.get("cpu MHz").and_then(|v| v.parse().ok()));
        if let Some(c) = fields.get("core id") {
            p.core_ids.insert(c.to_string());
        }
    }
    if packages.is_empty() {
        w.push(format!("{}: no processor listed", path.display()));
    }
    packages
        .into_values()
        .enumerate()
        .map(|(i, p)| {
            let sm = smbios.get(i);
            let cores = p
                .cpu_cores
                .or_else(|| (!p.core_ids.is_empty()).then_some(p.core_ids.len() as u32))
                .or_else(|| sm.and_then(|s| s.cores));
            let threads = p.siblings.or(Some(p.logical).filter(|&n| n > 0));
            let speed_mhz = sm
                .and_then(|s| s.current_speed_mhz)
                .or_else(|| p.mhz.filter(|m| *m >= 1.0).map(|m| m.round() as u32));
            Cpu {
                vendor: p.vendor,
                model: p.model.or_else(|| sm.and_then(|s| s.version.clone())),
                cores,
                threads,
                speed_mhz,
            }
        })
        .collect()
}

/// Whole disks in `root/sys/block`, less loop, RAM, optical, floppy, device-mapper, RAID and
/// network block devices.
fn disks(root: &Path, w: &mut Vec<String>) -> Vec<Disk> {
    let dir = root.join("sys/block");
    let mut out = Vec::new();
    for name in list_dir(&dir, "disks", w) {
        if NOT_DISKS.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let d = dir.join(&name);
        let size_bytes = match read_str(&d.join("size")).map(|s| s.parse::<u64>()) {
            Some(Ok(sectors)) => sectors.saturating_mul(512),
            _ => {
                w.push(format!(
                    "disk {name}: {} unreadable: size unknown",
                    d.join("size").display()
                ));
                0
            }
        };
        let dev = d.join("device");
        let serial = read_str(&dev.join("serial"))
            .or_else(|| read_str(&d.join("serial")))
            .or_else(|| vpd_serial(&dev.join("vpd_pg80")))
            .or_else(|| read_str(&dev.join("wwid")));
        let kind = if name.starts_with("nvme") {
            "nvme"
        } else {
            match read_str(&d.join("queue/rotational")).as_deref() {
                Some("1") => "hdd",
                Some("0") => "ssd",
                _ => "unknown",
            }
        };
        out.push(Disk {
            model: read_str(&dev.join("model")),
            serial,
            size_bytes,
            kind: kind.into(),
            firmware: read_str(&dev.join("firmware_rev")).or_else(|| read_str(&dev.join("rev"))),
            name,
        });
    }
    out
}

/// The unit serial number from a SCSI VPD page 0x80 file (a 4-byte header whose last byte is
/// the length, then the serial), as SATA and SAS disks have it.
fn vpd_serial(path: &Path) -> Option<String> {
    let b = fs::read(path).ok()?;
    if b.len() < 4 || b[1] != 0x80 {
        return None;
    }
    let len = usize::from(b[3]);
    let s = b.get(4..4 + len).unwrap_or(&b[4..]);
    smbios::clean(&String::from_utf8_lossy(s))
}

/// Interfaces in `root/sys/class/net` other than `lo` that sit on a device (a `device` link),
/// or carry the boot MAC `mac` (a virtual interface in a test). The driver is that of the
/// device; the PCI id that of the PCI function (`subsystem` is `pci`) that is the device or
/// its parent.
fn interfaces(root: &Path, mac: &str, w: &mut Vec<String>) -> Vec<NetInterface> {
    let dir = root.join("sys/class/net");
    let mut out = Vec::new();
    for name in list_dir(&dir, "network", w) {
        if name == "lo" {
            continue;
        }
        let d = dir.join(&name);
        let dev = d.join("device");
        let has_device = fs::symlink_metadata(&dev).is_ok();
        let address = read_str(&d.join("address"))
            .unwrap_or_default()
            .to_ascii_lowercase();
        if !has_device && (mac.is_empty() || address != mac) {
            continue;
        }
        // The PCI function is the device itself, or its parent for a virtio NIC (whose own
        // vendor and device files hold virtio ids); a USB NIC has none.
        let pci_id = [dev.clone(), dev.join("..")]
            .into_iter()
            .find(|p| link_name(&p.join("subsystem")).as_deref() == Some("pci"))
            .and_then(
                |p| match (hex_id(&p.join("vendor")), hex_id(&p.join("device"))) {
                    (Some(v), Some(d)) => Some(format!("{v}:{d}")),
                    _ => None,
                },
            );
        out.push(NetInterface {
            mac: address,
            driver: link_name(&dev.join("driver")),
            speed_mbps: read_str(&d.join("speed"))
                .and_then(|s| s.parse::<i64>().ok())
                .and_then(|s| u32::try_from(s).ok()),
            link: read_str(&d.join("carrier")).as_deref() == Some("1"),
            pci_id,
            is_virtual: !has_device,
            name,
        });
    }
    out
}

/// PCI functions in `root/sys/bus/pci/devices`.
fn pci_devices(root: &Path, w: &mut Vec<String>) -> Vec<PciDevice> {
    let dir = root.join("sys/bus/pci/devices");
    if !dir.exists() {
        // No PCI bus (some VMs, some ARM boards): nothing to report, nothing wrong.
        return Vec::new();
    }
    let mut out = Vec::new();
    for slot in list_dir(&dir, "PCI", w) {
        let d = dir.join(&slot);
        let (Some(vendor_id), Some(device_id)) =
            (hex_id(&d.join("vendor")), hex_id(&d.join("device")))
        else {
            w.push(format!(
                "PCI {slot}: vendor or device id unreadable in {}: skipped",
                d.display()
            ));
            continue;
        };
        out.push(PciDevice {
            vendor_id,
            device_id,
            class: hex_id(&d.join("class")).unwrap_or_default(),
            driver: link_name(&d.join("driver")),
            slot,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A fake root: files and links are made under a temporary directory.
    struct Tree(tempfile::TempDir);

    impl Tree {
        fn new() -> Tree {
            Tree(tempfile::tempdir().unwrap())
        }
        fn root(&self) -> &Path {
            self.0.path()
        }
        fn put(&self, rel: &str, content: impl AsRef<[u8]>) -> &Tree {
            let p = self.root().join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, content).unwrap();
            self
        }
        fn dir(&self, rel: &str) -> &Tree {
            fs::create_dir_all(self.root().join(rel)).unwrap();
            self
        }
        /// A symbolic link at `rel` to `target` (which need not exist).
        fn link(&self, rel: &str, target: &str) -> &Tree {
            let p = self.root().join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(target, p).unwrap();
            self
        }
    }

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/smbios")
            .join(name)
    }

    fn cpuinfo_block(cpu: u32, package: u32, core: u32, mhz: &str) -> String {
        format!(
            "processor\t: {cpu}\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Gold 6130 CPU @ 2.10GHz\n\
             cpu MHz\t\t: {mhz}\nphysical id\t: {package}\nsiblings\t: 4\ncore id\t\t: {core}\ncpu cores\t: 2\n\n"
        )
    }

    /// Two packages of 2 cores and 4 threads each.
    fn two_packages() -> String {
        let mut s = String::new();
        for cpu in 0..8 {
            let mhz = if cpu < 4 { "2100.000" } else { "1999.501" };
            s += &cpuinfo_block(cpu, cpu / 4, (cpu % 4) / 2, mhz);
        }
        s
    }

    #[test]
    fn smbios_tables_fill_firmware_system_chassis_baseboard_memory() {
        let t = Tree::new();
        for f in ["DMI", "smbios_entry_point"] {
            t.put(
                &format!("sys/firmware/dmi/tables/{f}"),
                fs::read(fixture("qemu-pc-seabios").join(f)).unwrap(),
            );
        }
        t.put("proc/cpuinfo", two_packages());
        let inv = collect(t.root(), "52:54:00:AA:BB:CC", 1_700_000_000);
        assert_eq!(inv.collected_at, 1_700_000_000);
        assert_eq!(inv.mac, "52:54:00:aa:bb:cc");
        assert_eq!(inv.firmware.vendor.as_deref(), Some("SeaBIOS"));
        assert_eq!(inv.firmware.mode.as_deref(), Some("bios"));
        assert_eq!(inv.firmware.secure_boot, None);
        assert_eq!(inv.system.vendor.as_deref(), Some("Bootcast Lab"));
        assert_eq!(
            inv.system.uuid.as_deref(),
            Some("3f2a9c1e-7b4d-4e8a-9c6f-0123456789ab")
        );
        assert_eq!(inv.baseboard.model.as_deref(), Some("Test Board"));
        assert_eq!(inv.chassis.asset_tag.as_deref(), Some("ASSET-42"));
        assert_eq!(inv.memory_mib(), 2048);
        assert_eq!(
            inv.memory[0].part_number.as_deref(),
            Some("M378A1K43CB2-CTD")
        );
        // The one SMBIOS processor gives the first package its speed; the second has cpu MHz.
        assert_eq!(inv.cpus.len(), 2);
        assert_eq!(inv.cpus[0].speed_mhz, Some(2000));
        assert_eq!(inv.cpus[1].speed_mhz, Some(2000), "1999.501 rounded");
    }

    #[test]
    fn cpuinfo_gives_one_cpu_per_package() {
        let t = Tree::new();
        t.put("proc/cpuinfo", two_packages());
        let inv = collect(t.root(), "", 0);
        let cpu = Cpu {
            vendor: Some("GenuineIntel".into()),
            model: Some("Intel(R) Xeon(R) Gold 6130 CPU @ 2.10GHz".into()),
            cores: Some(2),
            threads: Some(4),
            speed_mhz: Some(2100),
        };
        assert_eq!(
            inv.cpus,
            vec![
                cpu.clone(),
                Cpu {
                    speed_mhz: Some(2000),
                    ..cpu
                }
            ]
        );
    }

    #[test]
    fn cpuinfo_without_package_fields_is_one_package() {
        // As on many ARM boards: no vendor_id, model name, physical id, cpu cores or siblings.
        let t = Tree::new();
        t.put(
            "proc/cpuinfo",
            "processor\t: 0\nBogoMIPS\t: 108.00\nCPU part\t: 0xd08\n\n\
             processor\t: 1\nBogoMIPS\t: 108.00\nCPU part\t: 0xd08\n\nHardware\t: BCM2835\n",
        );
        let inv = collect(t.root(), "", 0);
        assert_eq!(
            inv.cpus,
            vec![Cpu {
                threads: Some(2),
                ..Default::default()
            }]
        );
        // Core ids without cpu cores count the cores.
        let t = Tree::new();
        let mut info = String::new();
        for cpu in 0..4 {
            info += &format!(
                "processor : {cpu}\ncore id : {}\ncpu MHz : 800.0\n\n",
                cpu / 2
            );
        }
        t.put("proc/cpuinfo", info);
        let inv = collect(t.root(), "", 0);
        assert_eq!(inv.cpus.len(), 1);
        assert_eq!(
            (
                inv.cpus[0].cores,
                inv.cpus[0].threads,
                inv.cpus[0].speed_mhz
            ),
            (Some(2), Some(4), Some(800))
        );
    }

    #[test]
    fn disks_are_whole_disks_with_their_identity() {
        let t = Tree::new();
        // A SATA hard disk: serial in VPD page 0x80, firmware in rev.
        t.put("sys/block/sda/size", "1953525168\n")
            .put("sys/block/sda/queue/rotational", "1\n")
            .put("sys/block/sda/device/model", "WDC WD10EZEX-08W\n")
            .put("sys/block/sda/device/rev", "1A01\n")
            .put(
                "sys/block/sda/device/wwid",
                "t10.ATA     WDC WD10EZEX-08W  WD-WCC6Y0123456\n",
            )
            .put(
                "sys/block/sda/device/vpd_pg80",
                [&[0u8, 0x80, 0, 20][..], b"     WD-WCC6Y0123456"].concat(),
            );
        // An SSD with nothing but a wwid for a serial.
        t.put("sys/block/sdb/size", "1000215216")
            .put("sys/block/sdb/queue/rotational", "0")
            .put("sys/block/sdb/device/model", "Samsung SSD 870")
            .put("sys/block/sdb/device/wwid", "  naa.5002538e40a1b2c3  \n");
        // NVMe: serial, model and firmware_rev on the controller.
        t.put("sys/block/nvme0n1/size", "1000215216")
            .put("sys/block/nvme0n1/queue/rotational", "0")
            .put(
                "sys/block/nvme0n1/device/model",
                "Samsung SSD 980 PRO 1TB             ",
            )
            .put("sys/block/nvme0n1/device/serial", "S5GXNX0T123456  ")
            .put("sys/block/nvme0n1/device/firmware_rev", "5B2QGXA7");
        // virtio: the serial is on the block device itself; rotational unreadable.
        t.put("sys/block/vda/size", "41943040")
            .put("sys/block/vda/serial", "vm-disk-1");
        for skipped in [
            "loop0", "ram0", "zram0", "sr0", "fd0", "dm-0", "md127", "nbd0",
        ] {
            t.put(&format!("sys/block/{skipped}/size"), "100");
        }
        let inv = collect(t.root(), "", 0);
        assert_eq!(
            inv.storage,
            vec![
                Disk {
                    name: "nvme0n1".into(),
                    model: Some("Samsung SSD 980 PRO 1TB".into()),
                    serial: Some("S5GXNX0T123456".into()),
                    size_bytes: 1000215216 * 512,
                    kind: "nvme".into(),
                    firmware: Some("5B2QGXA7".into()),
                },
                Disk {
                    name: "sda".into(),
                    model: Some("WDC WD10EZEX-08W".into()),
                    serial: Some("WD-WCC6Y0123456".into()),
                    size_bytes: 1953525168 * 512,
                    kind: "hdd".into(),
                    firmware: Some("1A01".into()),
                },
                Disk {
                    name: "sdb".into(),
                    model: Some("Samsung SSD 870".into()),
                    serial: Some("naa.5002538e40a1b2c3".into()),
                    size_bytes: 1000215216 * 512,
                    kind: "ssd".into(),
                    firmware: None,
                },
                Disk {
                    name: "vda".into(),
                    model: None,
                    serial: Some("vm-disk-1".into()),
                    size_bytes: 41943040 * 512,
                    kind: "unknown".into(),
                    firmware: None,
                },
            ]
        );
    }

    #[test]
    fn a_disk_without_a_size_is_kept_with_a_warning() {
        let t = Tree::new();
        t.dir("sys/block/sdc");
        let inv = collect(t.root(), "", 0);
        assert_eq!(inv.storage.len(), 1);
        assert_eq!(inv.storage[0].size_bytes, 0);
        assert!(
            inv.warnings.iter().any(|w| w.starts_with("disk sdc:")),
            "{:?}",
            inv.warnings
        );
    }

    #[test]
    fn network_keeps_devices_and_the_boot_mac() {
        let t = Tree::new();
        let pci = "sys/devices/pci0000:00/0000:00:1f.6";
        t.put(&format!("{pci}/vendor"), "0x8086\n")
            .put(&format!("{pci}/device"), "0x15BB\n")
            .link(&format!("{pci}/driver"), "../../../bus/pci/drivers/e1000e")
            .link(&format!("{pci}/subsystem"), "../../../bus/pci");
        // virtio: the PCI function is the parent of the device, which has virtio ids.
        let virtio = "sys/devices/pci0000:00/0000:00:03.0";
        t.put(&format!("{virtio}/vendor"), "0x1af4\n")
            .put(&format!("{virtio}/device"), "0x1041\n")
            .link(&format!("{virtio}/subsystem"), "../../../bus/pci")
            .put(&format!("{virtio}/virtio0/vendor"), "0x1af4\n")
            .put(&format!("{virtio}/virtio0/device"), "0x0001\n")
            .link(
                &format!("{virtio}/virtio0/subsystem"),
                "../../../../bus/virtio",
            )
            .link(
                &format!("{virtio}/virtio0/driver"),
                "../../../../bus/virtio/drivers/virtio_net",
            );
        t.link(
            "sys/class/net/eth0/device",
            "../../../devices/pci0000:00/0000:00:03.0/virtio0",
        )
        .put("sys/class/net/eth0/address", "52:54:00:12:34:56\n")
        .put("sys/class/net/eth0/carrier", "1\n");
        t.link(
            "sys/class/net/eno1/device",
            "../../../devices/pci0000:00/0000:00:1f.6",
        )
        .put("sys/class/net/eno1/address", "A4:BB:6D:01:02:03\n")
        .put("sys/class/net/eno1/speed", "1000\n")
        .put("sys/class/net/eno1/carrier", "1\n");
        // A USB adapter with the link down: speed -1, no PCI ids.
        let usb = "sys/devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0";
        t.link(
            &format!("{usb}/driver"),
            "../../../../../../bus/usb/drivers/r8152",
        )
        .link(&format!("{usb}/subsystem"), "../../../../../../bus/usb")
        .put(&format!("{usb}/../vendor"), "0x0bda\n")
        .put(&format!("{usb}/../device"), "0x8153\n");
        t.link(
            "sys/class/net/enx00e04c680001/device",
            "../../../devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0",
        )
        .put("sys/class/net/enx00e04c680001/address", "00:e0:4c:68:00:01")
        .put("sys/class/net/enx00e04c680001/speed", "-1")
        .put("sys/class/net/enx00e04c680001/carrier", "0");
        // Virtual: the one with the boot MAC is kept, the others are not.
        t.put("sys/class/net/veth0/address", "02:00:00:00:00:01\n")
            .put("sys/class/net/veth0/carrier", "1\n")
            .put("sys/class/net/br0/address", "02:00:00:00:00:02\n")
            .put("sys/class/net/lo/address", "00:00:00:00:00:00\n");
        let inv = collect(t.root(), "02:00:00:00:00:01", 0);
        assert_eq!(
            inv.network,
            vec![
                NetInterface {
                    name: "eno1".into(),
                    mac: "a4:bb:6d:01:02:03".into(),
                    driver: Some("e1000e".into()),
                    speed_mbps: Some(1000),
                    link: true,
                    pci_id: Some("8086:15bb".into()),
                    is_virtual: false,
                },
                NetInterface {
                    name: "enx00e04c680001".into(),
                    mac: "00:e0:4c:68:00:01".into(),
                    driver: Some("r8152".into()),
                    speed_mbps: None,
                    link: false,
                    pci_id: None,
                    is_virtual: false,
                },
                NetInterface {
                    name: "eth0".into(),
                    mac: "52:54:00:12:34:56".into(),
                    driver: Some("virtio_net".into()),
                    speed_mbps: None,
                    link: true,
                    pci_id: Some("1af4:1041".into()),
                    is_virtual: false,
                },
                NetInterface {
                    name: "veth0".into(),
                    mac: "02:00:00:00:00:01".into(),
                    driver: None,
                    speed_mbps: None,
                    link: true,
                    pci_id: None,
                    is_virtual: true,
                },
            ]
        );
        // Without a boot MAC, no virtual interface at all.
        let inv = collect(t.root(), "", 0);
        assert_eq!(inv.network.len(), 3);
    }

    #[test]
    fn pci_devices_are_listed_by_slot() {
        let t = Tree::new();
        let dev = |slot: &str, vendor: &str, device: &str, class: &str| {
            let d = format!("sys/bus/pci/devices/{slot}");
            t.put(&format!("{d}/vendor"), vendor)
                .put(&format!("{d}/device"), device)
                .put(&format!("{d}/class"), class);
        };
        dev("0000:00:1f.6", "0x8086\n", "0x15bb\n", "0x020000\n");
        dev("0000:00:00.0", "0x8086\n", "0x3e34\n", "0x060000\n");
        t.link(
            "sys/bus/pci/devices/0000:00:1f.6/driver",
            "../../../bus/pci/drivers/e1000e",
        );
        t.put("sys/bus/pci/devices/0000:00:02.0/class", "0x030000");
        let inv = collect(t.root(), "", 0);
        assert_eq!(
            inv.pci,
            vec![
                PciDevice {
                    slot: "0000:00:00.0".into(),
                    vendor_id: "8086".into(),
                    device_id: "3e34".into(),
                    class: "060000".into(),
                    driver: None,
                },
                PciDevice {
                    slot: "0000:00:1f.6".into(),
                    vendor_id: "8086".into(),
                    device_id: "15bb".into(),
                    class: "020000".into(),
                    driver: Some("e1000e".into()),
                },
            ]
        );
        assert!(
            inv.warnings
                .iter()
                .any(|w| w.starts_with("PCI 0000:00:02.0")),
            "{:?}",
            inv.warnings
        );
    }

    #[test]
    fn uefi_boot_entries_in_boot_order() {
        use super::super::efivars::{path, u16_bytes};
        let t = Tree::new();
        t.put(SECURE_BOOT_VAR, [6, 0, 0, 0, 1]);
        let var = |name: &str, data: Vec<u8>| {
            let mut b = 7u32.to_le_bytes().to_vec();
            b.extend(data);
            let p = path(Path::new("sys"), name);
            t.put(p.to_str().unwrap(), b);
        };
        var("BootCurrent", u16_bytes(&[2]));
        var("BootOrder", u16_bytes(&[1, 2]));
        let mac = (0x03u8, 0x0bu8, &[0x52u8, 0x54, 0, 1, 2, 3][..]);
        var(
            "Boot0001",
            super::super::efivars::tests::option("Windows Boot Manager", &[(4, 1, &[0; 38])]),
        );
        var(
            "Boot0002",
            super::super::efivars::tests::option("UEFI PXEv4", &[mac]),
        );
        let inv = collect(t.root(), "", 0);
        let fw = &inv.firmware;
        assert_eq!(fw.boot_current.as_deref(), Some("0002"));
        assert_eq!(fw.boot_order, ["0001", "0002"]);
        assert_eq!(fw.boot_entries.len(), 2);
        assert_eq!(fw.boot_entries[0].description, "Windows Boot Manager");
        assert!(!fw.boot_entries[0].network && fw.boot_entries[1].network);
    }

    #[test]
    fn firmware_mode_and_secure_boot() {
        let on = Tree::new();
        on.put(SECURE_BOOT_VAR, [6, 0, 0, 0, 1]);
        let inv = collect(on.root(), "", 0);
        assert_eq!(inv.firmware.mode.as_deref(), Some("uefi"));
        assert_eq!(inv.firmware.secure_boot, Some(true));

        let off = Tree::new();
        off.put(SECURE_BOOT_VAR, [6, 0, 0, 0, 0]);
        assert_eq!(collect(off.root(), "", 0).firmware.secure_boot, Some(false));

        // UEFI, efivarfs not mounted: unknown, with a warning.
        let unknown = Tree::new();
        unknown.dir("sys/firmware/efi/efivars");
        let inv = collect(unknown.root(), "", 0);
        assert_eq!(inv.firmware.mode.as_deref(), Some("uefi"));
        assert_eq!(inv.firmware.secure_boot, None);
        assert!(
            inv.warnings.iter().any(|w| w.contains("Secure Boot")),
            "{:?}",
            inv.warnings
        );

        let bios = Tree::new();
        let inv = collect(bios.root(), "", 0);
        assert_eq!(inv.firmware.mode.as_deref(), Some("bios"));
        assert_eq!(inv.firmware.secure_boot, None);
    }

    #[test]
    fn an_empty_root_gives_warnings_not_failures() {
        let t = Tree::new();
        let inv = collect(t.root(), "aa:bb:cc:dd:ee:ff", 5);
        assert_eq!(inv.mac, "aa:bb:cc:dd:ee:ff");
        assert!(inv.cpus.is_empty() && inv.storage.is_empty() && inv.network.is_empty());
        for piece in ["SMBIOS", "cpuinfo", "disks", "network"] {
            assert!(
                inv.warnings.iter().any(|w| w.contains(piece)),
                "no warning about {piece}: {:?}",
                inv.warnings
            );
        }
        // A garbled table is parsed as far as it goes, with warnings, and the rest collected.
        t.put("sys/firmware/dmi/tables/DMI", [0u8, 0x40, 0, 0, 1, 2, 3])
            .put("proc/cpuinfo", two_packages());
        let inv = collect(t.root(), "", 5);
        assert_eq!(inv.cpus.len(), 2);
        assert!(inv.warnings.iter().any(|w| w.contains("entry point")));
        assert!(inv.warnings.iter().any(|w| w.contains("past the end")));
    }

    #[test]
    fn default_route_mac_reads_proc_net_route() {
        let t = Tree::new();
        assert_eq!(default_route_mac(t.root()), None);
        t.put(
            "proc/net/route",
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n\
             eth1\t0063A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\n\
             eth0\t00000000\t0163A8C0\t0003\t0\t0\t0\t00000000\n",
        );
        assert_eq!(default_route_mac(t.root()), None, "no address file");
        t.put("sys/class/net/eth0/address", "52:54:00:12:34:56\n");
        assert_eq!(
            default_route_mac(t.root()).as_deref(),
            Some("52:54:00:12:34:56")
        );
    }

    #[test]
    fn collects_this_machine() {
        let inv = collect(Path::new("/"), "", 0);
        assert!(!inv.cpus.is_empty(), "no CPU found: {:?}", inv.warnings);
        assert!(inv.firmware.mode.is_some());
        for w in &inv.warnings {
            eprintln!("warning: {w}");
        }
        eprintln!("{}", serde_json::to_string_pretty(&inv).unwrap());
    }
}

//! What the agent reports about a machine on every boot. Every field that the hardware may not
//! tell is an `Option` (or an empty list): a value is only ever what was read, never a guess.

use serde::{Deserialize, Serialize};

/// One machine's hardware, as collected by [`super::collect`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    /// When it was collected, seconds since the Unix epoch (UTC).
    pub collected_at: i64,
    /// MAC of the interface the machine network-booted from (lower case, colons).
    pub mac: String,
    #[serde(default)]
    pub system: System,
    #[serde(default)]
    pub firmware: Firmware,
    #[serde(default)]
    pub chassis: Chassis,
    #[serde(default)]
    pub baseboard: Baseboard,
    #[serde(default)]
    pub cpus: Vec<Cpu>,
    #[serde(default)]
    pub memory: Vec<MemoryModule>,
    #[serde(default)]
    pub storage: Vec<Disk>,
    #[serde(default)]
    pub network: Vec<NetInterface>,
    #[serde(default)]
    pub pci: Vec<PciDevice>,
    /// Problems met while collecting (a table that did not parse, a file not readable): the
    /// rest of the inventory is still good.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// SMBIOS type 1.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct System {
    pub vendor: Option<String>,
    pub model: Option<String>,
    pub version: Option<String>,
    pub serial: Option<String>,
    /// Lower-case, dashed, in the byte order SMBIOS 2.6+ defines.
    pub uuid: Option<String>,
    pub sku: Option<String>,
    pub family: Option<String>,
}

/// SMBIOS type 0, and how the machine booted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Firmware {
    pub vendor: Option<String>,
    pub version: Option<String>,
    /// As the table has it (`MM/DD/YYYY`).
    pub date: Option<String>,
    /// `bios` or `uefi`.
    pub mode: Option<String>,
    /// UEFI Secure Boot on (None: BIOS, or the variable could not be read).
    pub secure_boot: Option<bool>,
    /// UEFI: the boot entry this boot came from (`0003`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_current: Option<String>,
    /// UEFI: BootOrder, as the agent left it (the network entry it booted from first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub boot_order: Vec<String>,
    /// UEFI: the boot entries named in BootOrder.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub boot_entries: Vec<BootEntry>,
}

/// One UEFI boot entry (`Boot####`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootEntry {
    /// `0003`
    pub id: String,
    pub description: String,
    /// It boots from the network (PXE or HTTP).
    pub network: bool,
}

/// SMBIOS type 3.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chassis {
    pub vendor: Option<String>,
    /// The type as SMBIOS names it (`Desktop`, `Mini PC`, `Notebook`, ...).
    pub kind: Option<String>,
    pub serial: Option<String>,
    pub asset_tag: Option<String>,
}

/// SMBIOS type 2.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Baseboard {
    pub vendor: Option<String>,
    pub model: Option<String>,
    pub version: Option<String>,
    pub serial: Option<String>,
}

/// One CPU package (from /proc/cpuinfo, speed from SMBIOS type 4 when present).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cpu {
    pub vendor: Option<String>,
    pub model: Option<String>,
    pub cores: Option<u32>,
    pub threads: Option<u32>,
    pub speed_mhz: Option<u32>,
}

/// One memory device with a module in it (SMBIOS type 17; empty slots are left out).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryModule {
    /// Device locator (`DIMM 0`, `ChannelA-DIMM0`).
    pub slot: Option<String>,
    pub size_mib: u64,
    /// `DDR4`, `LPDDR5`, ...
    pub kind: Option<String>,
    pub speed_mts: Option<u32>,
    pub vendor: Option<String>,
    pub serial: Option<String>,
    pub part_number: Option<String>,
}

/// One whole disk (from /sys/block; partitions, loop, ram and optical devices left out).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    /// Kernel name (`sda`, `nvme0n1`, `vda`).
    pub name: String,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub size_bytes: u64,
    /// `nvme`, `ssd` or `hdd` (rotational), `unknown`.
    pub kind: String,
    pub firmware: Option<String>,
}

/// One network interface with a hardware address (loopback left out, and virtual ones unless
/// they carry the boot MAC).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetInterface {
    pub name: String,
    pub mac: String,
    pub driver: Option<String>,
    /// Mbit/s, when the link is up and the driver tells.
    pub speed_mbps: Option<u32>,
    pub link: bool,
    /// `vvvv:dddd` of the PCI function behind it.
    pub pci_id: Option<String>,
    /// No device behind it (a bridge, a veth, a tap): kept because it carries the boot MAC.
    #[serde(default)]
    pub is_virtual: bool,
}

/// One PCI function (from /sys/bus/pci/devices).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciDevice {
    /// `0000:00:1f.2`
    pub slot: String,
    /// 4 hex digits each.
    pub vendor_id: String,
    pub device_id: String,
    /// 6 hex digits (class, subclass, prog-if).
    pub class: String,
    pub driver: Option<String>,
}

impl Inventory {
    /// Total memory in MiB (sum of the modules).
    pub fn memory_mib(&self) -> u64 {
        self.memory.iter().map(|m| m.size_mib).sum()
    }
}

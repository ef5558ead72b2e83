//! The GLPI native inventory format (the JSON a GLPI agent posts to a GLPI server), made from an
//! [`Inventory`]. Field names and formats follow GLPI's `inventory.schema.json`; a value the
//! inventory does not have is left out, never sent as `null`.
//!
//! What the schema names differently from a first guess: a disk's serial is `serial`, an
//! interface's MAC is `mac`, its `status` is lower-case (`up`, `down`), and a controller has
//! `vendorid` and `productid` rather than one `pciid`.

use serde_json::{json, Map, Value};

use super::model::Inventory;

/// The GLPI native inventory of `inv`, as a GLPI agent with id `deviceid` would post it: a
/// `Computer`, action `inventory`, with `hardware`, `bios`, `cpus`, `memories`, `storages`,
/// `networks` and `controllers` (PCI functions) in `content`.
pub fn to_glpi(inv: &Inventory, deviceid: &str) -> Value {
    let mut content = Map::new();
    content.insert(
        "versionclient".into(),
        json!(format!("bootcast-{}", env!("CARGO_PKG_VERSION"))),
    );

    let mut hardware = Obj::default();
    hardware.str(
        "uuid",
        inv.system.uuid.as_ref().map(|u| u.to_ascii_uppercase()),
    );
    let memory = inv.memory_mib();
    hardware.put("memory", (memory > 0).then(|| json!(memory)));
    hardware.str("chassis_type", inv.chassis.kind.clone());
    content.insert("hardware".into(), hardware.into());

    let mut bios = Obj::default();
    bios.str("bdate", inv.firmware.date.as_deref().and_then(iso_date));
    bios.str("bmanufacturer", inv.firmware.vendor.clone());
    bios.str("bversion", inv.firmware.version.clone());
    bios.str("smanufacturer", inv.system.vendor.clone());
    bios.str("smodel", inv.system.model.clone());
    bios.str("ssn", inv.system.serial.clone());
    bios.str("skunumber", inv.system.sku.clone());
    bios.str("mmanufacturer", inv.baseboard.vendor.clone());
    bios.str("mmodel", inv.baseboard.model.clone());
    bios.str("msn", inv.baseboard.serial.clone());
    bios.str("assettag", inv.chassis.asset_tag.clone());
    bios.str("enclosureserial", inv.chassis.serial.clone());
    let secure_boot = match (inv.firmware.secure_boot, inv.firmware.mode.as_deref()) {
        (Some(true), _) => Some("enabled"),
        (Some(false), _) => Some("disabled"),
        (None, Some("bios")) => Some("unsupported"),
        (None, _) => None,
    };
    bios.str("secure_boot", secure_boot.map(str::to_string));
    content.insert("bios".into(), bios.into());

    let cpus = inv.cpus.iter().map(|c| {
        let mut o = Obj::default();
        o.str("name", c.model.clone());
        o.str("manufacturer", c.vendor.as_deref().map(cpu_manufacturer));
        o.put("core", c.cores.map(|n| json!(n)));
        o.put("corecount", c.cores.map(|n| json!(n)));
        // GLPI's `thread` is threads per core.
        let per_core = match (c.threads, c.cores) {
            (Some(t), Some(n)) if n > 0 && t % n == 0 => Some(t / n),
            _ => None,
        };
        o.put("thread", per_core.map(|n| json!(n)));
        o.put("speed", c.speed_mhz.map(|n| json!(n)));
        Value::from(o)
    });
    content.insert("cpus".into(), Value::Array(cpus.collect()));

    let memories = inv.memory.iter().enumerate().map(|(i, m)| {
        let mut o = Obj::default();
        o.put("capacity", Some(json!(m.size_mib)));
        o.str("caption", m.slot.clone());
        o.str("description", m.slot.clone());
        o.str("type", m.kind.clone());
        o.str("speed", m.speed_mts.map(|s| s.to_string()));
        o.str("manufacturer", m.vendor.clone());
        o.str("serialnumber", m.serial.clone());
        o.str("model", m.part_number.clone());
        o.put("numslots", Some(json!(i + 1)));
        Value::from(o)
    });
    content.insert("memories".into(), Value::Array(memories.collect()));

    let storages = inv.storage.iter().map(|d| {
        let mut o = Obj::default();
        o.str("name", Some(d.name.clone()));
        o.str("model", d.model.clone());
        o.str("serial", d.serial.clone());
        // GLPI's MB are decimal (a 250 GB disk is 250059 MB).
        o.put("disksize", Some(json!(d.size_bytes / 1_000_000)));
        o.str("type", Some("disk".into()));
        let (description, interface) = match d.kind.as_str() {
            "nvme" => (Some("NVMe SSD"), Some("NVME")),
            "ssd" => (Some("SSD"), None),
            "hdd" => (Some("HDD"), None),
            _ => (None, None),
        };
        o.str("description", description.map(str::to_string));
        o.str("interface", interface.map(str::to_string));
        o.str("firmware", d.firmware.clone());
        Value::from(o)
    });
    content.insert("storages".into(), Value::Array(storages.collect()));

    let networks = inv.network.iter().map(|n| {
        let mut o = Obj::default();
        o.str("description", Some(n.name.clone()));
        o.str("mac", (!n.mac.is_empty()).then(|| n.mac.clone()));
        o.str("driver", n.driver.clone());
        o.str("speed", n.speed_mbps.map(|s| s.to_string()));
        o.str("status", Some(if n.link { "up" } else { "down" }.into()));
        o.str("pciid", n.pci_id.clone());
        o.put("virtualdev", Some(json!(n.is_virtual)));
        Value::from(o)
    });
    content.insert("networks".into(), Value::Array(networks.collect()));

    let controllers = inv.pci.iter().map(|p| {
        let kind = pci_class_name(&p.class);
        let name = format!(
            "{} {}:{}",
            kind.unwrap_or("PCI device"),
            p.vendor_id,
            p.device_id
        );
        let mut o = Obj::default();
        o.str("name", Some(name.clone()));
        o.str("caption", Some(name));
        o.str("type", kind.map(str::to_string));
        o.str("vendorid", Some(p.vendor_id.clone()));
        o.str("productid", Some(p.device_id.clone()));
        o.str("pciclass", p.class.get(..4).map(str::to_string));
        // As lspci shows it: the domain only when it is not 0000.
        let slot = p.slot.strip_prefix("0000:").unwrap_or(&p.slot);
        o.str("pcislot", Some(slot.to_string()));
        o.str("driver", p.driver.clone());
        Value::from(o)
    });
    content.insert("controllers".into(), Value::Array(controllers.collect()));

    json!({
        "deviceid": deviceid,
        "itemtype": "Computer",
        "action": "inventory",
        "content": content,
    })
}

/// A JSON object that leaves out the values it is not given.
#[derive(Default)]
struct Obj(Map<String, Value>);

impl Obj {
    fn put(&mut self, key: &str, v: Option<Value>) {
        if let Some(v) = v {
            self.0.insert(key.to_string(), v);
        }
    }

    fn str(&mut self, key: &str, v: Option<String>) {
        self.put(key, v.map(Value::String));
    }
}

impl From<Obj> for Value {
    fn from(o: Obj) -> Value {
        Value::Object(o.0)
    }
}

/// An SMBIOS date (`MM/DD/YYYY`) as GLPI wants it (`YYYY-MM-DD`); a date already in that form
/// is kept. `None` for anything else (a two-digit year, garbage).
pub fn iso_date(s: &str) -> Option<String> {
    let num = |p: &str, len: usize| {
        (p.len() == len && p.bytes().all(|b| b.is_ascii_digit()))
            .then(|| p.parse::<u32>().ok())
            .flatten()
    };
    let (y, m, d) = match s.trim().split(['/', '-']).collect::<Vec<_>>()[..] {
        [m, d, y] if y.len() == 4 => (num(y, 4)?, num(m, 2)?, num(d, 2)?),
        [y, m, d] if y.len() == 4 => (num(y, 4)?, num(m, 2)?, num(d, 2)?),
        _ => return None,
    };
    ((1..=12).contains(&m) && (1..=31).contains(&d)).then(|| format!("{y:04}-{m:02}-{d:02}"))
}

/// The manufacturer GLPI agents report for a `/proc/cpuinfo` vendor id.
fn cpu_manufacturer(vendor_id: &str) -> String {
    match vendor_id {
        "GenuineIntel" => "Intel".into(),
        "AuthenticAMD" => "AMD".into(),
        "HygonGenuine" => "Hygon".into(),
        "CentaurHauls" => "VIA".into(),
        other => other.into(),
    }
}

/// The PCI class name (as `lspci` prints it) of a 6-hex-digit class code: by class and
/// subclass when known, else by class alone.
pub fn pci_class_name(class: &str) -> Option<&'static str> {
    let sub = match class.get(..4)? {
        "0000" => "Non-VGA unclassified device",
        "0001" => "VGA compatible unclassified device",
        "0100" => "SCSI storage controller",
        "0101" => "IDE interface",
        "0102" => "Floppy disk controller",
        "0104" => "RAID bus controller",
        "0105" => "ATA controller",
        "0106" => "SATA controller",
        "0107" => "Serial Attached SCSI controller",
        "0108" => "Non-Volatile memory controller",
        "0200" => "Ethernet controller",
        "0207" => "Infiniband controller",
        "0280" => "Network controller",
        "0300" => "VGA compatible controller",
        "0302" => "3D controller",
        "0380" => "Display controller",
        "0401" => "Multimedia audio controller",
        "0403" => "Audio device",
        "0500" => "RAM memory",
        "0600" => "Host bridge",
        "0601" => "ISA bridge",
        "0604" => "PCI bridge",
        "0680" => "Bridge",
        "0700" => "Serial controller",
        "0780" => "Communication controller",
        "0805" => "SD Host controller",
        "0880" => "System peripheral",
        "0c03" => "USB controller",
        "0c05" => "SMBus",
        "0c80" => "Serial bus controller",
        "0d11" => "Bluetooth",
        "0d80" => "Network controller",
        "1180" => "Signal processing controller",
        "1200" => "Processing accelerators",
        _ => "",
    };
    if !sub.is_empty() {
        return Some(sub);
    }
    Some(match class.get(..2)? {
        "00" => "Unclassified device",
        "01" => "Mass storage controller",
        "02" => "Network controller",
        "03" => "Display controller",
        "04" => "Multimedia controller",
        "05" => "Memory controller",
        "06" => "Bridge",
        "07" => "Communication controller",
        "08" => "Generic system peripheral",
        "09" => "Input device controller",
        "0a" => "Docking station",
        "0b" => "Processor",
        "0c" => "Serial bus controller",
        "0d" => "Wireless controller",
        "0e" => "Intelligent controller",
        "0f" => "Satellite communications controller",
        "10" => "Encryption controller",
        "11" => "Signal processing controller",
        "12" => "Processing accelerators",
        "13" => "Non-Essential Instrumentation",
        _ => return None,
    })
}

/// The waits between attempts to forward one inventory to GLPI: 30 s doubling, at most an
/// hour (the queue in the database keeps each inventory's attempts and next time).
const GLPI_BACKOFF: crate::retry::Backoff = crate::retry::Backoff::new(
    std::time::Duration::from_secs(30),
    std::time::Duration::from_secs(3600),
);

/// Seconds before attempt `attempts + 1` after a failure: 30 s doubling, at most an hour.
pub fn glpi_backoff(attempts: u32) -> i64 {
    GLPI_BACKOFF.delay(attempts).as_secs() as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::model::*;
    use std::path::{Path, PathBuf};

    fn schema_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/glpi/inventory.schema.json")
    }

    /// GLPI's schema (vendored, MIT: tests/fixtures/glpi); a test that needs it fails, rather
    /// than passes, when it is not there.
    fn schema() -> Value {
        let path = schema_path();
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "GLPI inventory schema not found at {} ({e}): these tests validate against it; \
                 restore tests/fixtures/glpi/inventory.schema.json (git checkout)",
                path.display()
            )
        });
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()))
    }

    /// Validates `doc` against the schema, and checks that every key it has in an object the
    /// schema describes is one the schema names (the schema itself allows unknown keys inside
    /// `content`, which GLPI would silently ignore).
    fn assert_valid(doc: &Value) {
        let schema = schema();
        let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
        let errors: Vec<String> = validator
            .iter_errors(doc)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "not valid GLPI inventory: {errors:#?}\n{doc:#}"
        );
        known_keys(&schema, doc, "");
    }

    fn known_keys(schema: &Value, doc: &Value, at: &str) {
        match doc {
            Value::Object(map) => {
                let Some(props) = schema.get("properties").and_then(Value::as_object) else {
                    return;
                };
                for (k, v) in map {
                    let sub = props
                        .get(k)
                        .unwrap_or_else(|| panic!("{at}/{k} is not in the GLPI schema"));
                    known_keys(sub, v, &format!("{at}/{k}"));
                }
            }
            Value::Array(items) => {
                if let Some(item_schema) = schema.get("items") {
                    for (i, v) in items.iter().enumerate() {
                        known_keys(item_schema, v, &format!("{at}/{i}"));
                    }
                }
            }
            _ => {}
        }
    }

    fn rich() -> Inventory {
        Inventory {
            collected_at: 1_700_000_000,
            mac: "a4:bb:6d:01:02:03".into(),
            system: System {
                vendor: Some("Dell Inc.".into()),
                model: Some("OptiPlex 7090".into()),
                version: Some("1.0".into()),
                serial: Some("ABC1234".into()),
                uuid: Some("4c4c4544-0042-3410-8051-b2c04f4a3332".into()),
                sku: Some("0A5B".into()),
                family: Some("OptiPlex".into()),
            },
            firmware: Firmware {
                vendor: Some("Dell Inc.".into()),
                version: Some("2.14.0".into()),
                date: Some("07/15/2021".into()),
                mode: Some("uefi".into()),
                secure_boot: Some(true),
                ..Default::default()
            },
            chassis: Chassis {
                vendor: Some("Dell Inc.".into()),
                kind: Some("Mini PC".into()),
                serial: Some("ABC1234".into()),
                asset_tag: Some("ROOM12-07".into()),
            },
            baseboard: Baseboard {
                vendor: Some("Dell Inc.".into()),
                model: Some("0X8DXD".into()),
                version: Some("A00".into()),
                serial: Some("/ABC1234/CNFCW0012345/".into()),
            },
            cpus: vec![Cpu {
                vendor: Some("GenuineIntel".into()),
                model: Some("11th Gen Intel(R) Core(TM) i7-11700 @ 2.50GHz".into()),
                cores: Some(8),
                threads: Some(16),
                speed_mhz: Some(2500),
            }],
            memory: vec![
                MemoryModule {
                    slot: Some("DIMM1".into()),
                    size_mib: 16384,
                    kind: Some("DDR4".into()),
                    speed_mts: Some(3200),
                    vendor: Some("Samsung".into()),
                    serial: Some("12345678".into()),
                    part_number: Some("M378A2G43AB3-CWE".into()),
                },
                MemoryModule {
                    slot: Some("DIMM2".into()),
                    size_mib: 8192,
                    ..Default::default()
                },
            ],
            storage: vec![
                Disk {
                    name: "nvme0n1".into(),
                    model: Some("PM9A1 NVMe Samsung 512GB".into()),
                    serial: Some("S5GXNX0T123456".into()),
                    size_bytes: 512_110_190_592,
                    kind: "nvme".into(),
                    firmware: Some("5B2QGXA7".into()),
                },
                Disk {
                    name: "sda".into(),
                    size_bytes: 0,
                    kind: "unknown".into(),
                    ..Default::default()
                },
            ],
            network: vec![
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
                    name: "veth0".into(),
                    mac: "02:00:00:00:00:01".into(),
                    is_virtual: true,
                    ..Default::default()
                },
            ],
            pci: vec![
                PciDevice {
                    slot: "0000:00:1f.6".into(),
                    vendor_id: "8086".into(),
                    device_id: "15bb".into(),
                    class: "020000".into(),
                    driver: Some("e1000e".into()),
                },
                PciDevice {
                    slot: "0001:03:00.0".into(),
                    vendor_id: "1234".into(),
                    device_id: "5678".into(),
                    class: "ff0000".into(),
                    driver: None,
                },
            ],
            warnings: vec!["something".into()],
        }
    }

    #[test]
    fn a_rich_inventory_is_valid_and_mapped() {
        let doc = to_glpi(&rich(), "optiplex-2023-11-14-22-13-20");
        assert_valid(&doc);
        assert_eq!(doc["deviceid"], "optiplex-2023-11-14-22-13-20");
        assert_eq!(doc["itemtype"], "Computer");
        assert_eq!(doc["action"], "inventory");
        let c = &doc["content"];
        assert_eq!(
            c["versionclient"],
            format!("bootcast-{}", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(
            c["hardware"],
            json!({"uuid": "4C4C4544-0042-3410-8051-B2C04F4A3332", "memory": 24576, "chassis_type": "Mini PC"})
        );
        assert_eq!(
            c["bios"],
            json!({
                "bdate": "2021-07-15", "bmanufacturer": "Dell Inc.", "bversion": "2.14.0",
                "smanufacturer": "Dell Inc.", "smodel": "OptiPlex 7090", "ssn": "ABC1234",
                "skunumber": "0A5B", "mmanufacturer": "Dell Inc.", "mmodel": "0X8DXD",
                "msn": "/ABC1234/CNFCW0012345/", "assettag": "ROOM12-07",
                "enclosureserial": "ABC1234", "secure_boot": "enabled"
            })
        );
        assert_eq!(
            c["cpus"],
            json!([{"name": "11th Gen Intel(R) Core(TM) i7-11700 @ 2.50GHz", "manufacturer": "Intel",
                    "core": 8, "corecount": 8, "thread": 2, "speed": 2500}])
        );
        assert_eq!(
            c["memories"],
            json!([
                {"capacity": 16384, "caption": "DIMM1", "description": "DIMM1", "type": "DDR4",
                 "speed": "3200", "manufacturer": "Samsung", "serialnumber": "12345678",
                 "model": "M378A2G43AB3-CWE", "numslots": 1},
                {"capacity": 8192, "caption": "DIMM2", "description": "DIMM2", "numslots": 2}
            ])
        );
        assert_eq!(
            c["storages"],
            json!([
                {"name": "nvme0n1", "model": "PM9A1 NVMe Samsung 512GB", "serial": "S5GXNX0T123456",
                 "disksize": 512110, "type": "disk", "description": "NVMe SSD", "interface": "NVME",
                 "firmware": "5B2QGXA7"},
                {"name": "sda", "disksize": 0, "type": "disk"}
            ])
        );
        assert_eq!(
            c["networks"],
            json!([
                {"description": "eno1", "mac": "a4:bb:6d:01:02:03", "driver": "e1000e",
                 "speed": "1000", "status": "up", "pciid": "8086:15bb", "virtualdev": false},
                {"description": "veth0", "mac": "02:00:00:00:00:01", "status": "down", "virtualdev": true}
            ])
        );
        assert_eq!(
            c["controllers"],
            json!([
                {"name": "Ethernet controller 8086:15bb", "caption": "Ethernet controller 8086:15bb",
                 "type": "Ethernet controller", "vendorid": "8086", "productid": "15bb",
                 "pciclass": "0200", "pcislot": "00:1f.6", "driver": "e1000e"},
                {"name": "PCI device 1234:5678", "caption": "PCI device 1234:5678",
                 "vendorid": "1234", "productid": "5678", "pciclass": "ff00", "pcislot": "0001:03:00.0"}
            ])
        );
        assert!(!doc.to_string().contains("null"), "no null anywhere: {doc}");
    }

    #[test]
    fn an_empty_inventory_is_valid() {
        let doc = to_glpi(&Inventory::default(), "");
        assert_valid(&doc);
        assert_eq!(doc["content"]["hardware"], json!({}));
        assert_eq!(doc["content"]["bios"], json!({}));
        assert_eq!(doc["content"]["cpus"], json!([]));
        assert!(!doc.to_string().contains("null"), "{doc}");
    }

    #[test]
    fn this_machine_is_valid() {
        let inv = crate::inventory::collect::collect(Path::new("/"), "", 0);
        assert_valid(&to_glpi(&inv, "this-machine"));
    }

    #[test]
    fn a_wrong_document_is_caught() {
        // The validation itself works: a bad status and a bad date are rejected.
        let mut doc = to_glpi(&rich(), "x");
        doc["content"]["networks"][0]["status"] = json!("Up");
        doc["content"]["bios"]["bdate"] = json!("07/15/2021");
        let schema = schema();
        let validator = jsonschema::validator_for(&schema).unwrap();
        assert_eq!(validator.iter_errors(&doc).count(), 2);
    }

    #[test]
    fn dates_become_iso() {
        assert_eq!(iso_date("07/15/2021").as_deref(), Some("2021-07-15"));
        assert_eq!(iso_date("2021-07-15").as_deref(), Some("2021-07-15"));
        for bad in [
            "07/15/21",
            "13/01/2021",
            "",
            "July 2021",
            "0x/15/2021",
            "07/15/20211",
        ] {
            assert_eq!(iso_date(bad), None, "{bad:?}");
        }
        let mut inv = Inventory::default();
        inv.firmware.date = Some("04/01/14".into());
        inv.firmware.mode = Some("bios".into());
        let doc = to_glpi(&inv, "x");
        assert_eq!(
            doc["content"]["bios"],
            json!({"secure_boot": "unsupported"})
        );
    }

    #[test]
    fn pci_class_names() {
        assert_eq!(pci_class_name("020000"), Some("Ethernet controller"));
        assert_eq!(pci_class_name("0c0330"), Some("USB controller"));
        assert_eq!(pci_class_name("0c0999"), Some("Serial bus controller"));
        assert_eq!(pci_class_name("ff0000"), None);
        assert_eq!(pci_class_name("0"), None);
    }
}

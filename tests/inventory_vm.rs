//! Inventory end to end: a QEMU VM (TCG, BIOS, virtio NIC, an NVMe disk as mini-PCs have)
//! started with known SMBIOS values network-boots through bootcast (in a network namespace)
//! for the first time; its agent reports the inventory; the stored inventory has the SMBIOS
//! values, the VM's MAC and its NVMe disk (size, serial), and the GLPI export validates
//! against GLPI's JSON schema. The same VM then boots with a bigger NVMe disk for a reimage:
//! `inventory_changed` names the disk, and the master is restored onto `/dev/nvme0n1`.
//! Needs root; prints SKIP without.

mod common;

use serde_json::Value;

use common::netlab::{
    copy_bootenv, have_qemu, nvme_disk, serve_full, site_dhcp, Firmware, Netns, Nic, Vm,
};
use common::{demo_image, Lab, Served};

const MAC: &str = "52:54:00:99:08:42";
const UUID: &str = "6a1f3c2e-8d4b-4f7a-9e21-0c5d7b3a9f10";
const NVME_SERIAL: &str = "NVME-0042";

/// Boots the VM once (it ends at the agent's reboot) with a disk of `disk_mib`; returns the
/// serial console.
fn boot(
    vm: &mut Vm,
    ns: &Netns,
    server: &Served,
    lab: &Lab,
    disk_mib: u64,
    marker: &str,
) -> String {
    let disk = lab.path(&format!("disk-{disk_mib}.raw"));
    let f = std::fs::File::create(&disk).unwrap();
    f.set_len(disk_mib << 20).unwrap();
    drop(f);
    vm.extra = vec![
        "-smbios".into(),
        format!("type=1,manufacturer=Bootcast Lab,product=NUC-Test 7,version=rev-B,serial=SN-0042,uuid={UUID},sku=SKU-9,family=MiniPC"),
        "-smbios".into(),
        "type=0,vendor=LabBIOS,version=2.7.1,date=03/14/2025".into(),
    ];
    // an NVMe disk, as a mini-PC has
    vm.extra.extend(nvme_disk(&disk, NVME_SERIAL, None));
    let _ = std::fs::remove_file(vm.serial_log());
    let out = vm.command(ns).output().unwrap();
    let serial = vm.serial();
    assert!(
        serial.contains(marker),
        "no {marker:?}: QEMU {}\n{}\n--- serial:\n{}\n--- server:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        serial,
        server.log_text()
    );
    serial
}

#[test]
fn a_vm_reports_its_smbios_values_and_a_bigger_disk_is_a_change() {
    if !common::is_root() {
        common::skip(
            "a_vm_reports_its_smbios_values_and_a_bigger_disk_is_a_change",
            "needs root (network namespaces, tap devices)",
        );
        return;
    }
    assert!(
        have_qemu(),
        "QEMU and OVMF are needed: apt-get install qemu-system-x86 ovmf ipxe-qemu"
    );
    let lab = Lab::new();
    let image = demo_image("v1");
    lab.add("demo", &image);
    copy_bootenv(&lab.data());
    let mut ns = Netns::new("inv");
    ns.bridge_with_tap();
    let c = site_dhcp(&ns, "br0", lab.dir.path(), false);
    ns.spawn(c);
    let server = serve_full(&ns, &lab);
    let mut vm = Vm::new(Firmware::Bios, Nic::Virtio, MAC, lab.dir.path());
    vm.timeout = 300;

    // first boot: a new machine registers; its agent reports the inventory, then reboots
    let t = std::time::Instant::now();
    let serial = boot(
        &mut vm,
        &ns,
        &server,
        &lab,
        96,
        &format!("BOOTCAST-AGENT-INVENTORY-OK {MAC}"),
    );
    common::say(&format!(
        "inventory VM, first boot: {:.1} s; {}",
        t.elapsed().as_secs_f64(),
        serial
            .lines()
            .find(|l| l.contains("BOOTCAST-AGENT-INVENTORY-OK"))
            .unwrap_or("")
            .trim()
    ));
    let shown = lab.json(&["inventory", "show", "--host", MAC]);
    let inv = &shown["inventory"];
    assert_eq!(inv["mac"], MAC);
    assert_eq!(inv["system"]["vendor"], "Bootcast Lab", "{inv}");
    assert_eq!(inv["system"]["model"], "NUC-Test 7");
    assert_eq!(inv["system"]["version"], "rev-B");
    assert_eq!(inv["system"]["serial"], "SN-0042");
    assert_eq!(inv["system"]["uuid"], UUID);
    assert_eq!(inv["system"]["sku"], "SKU-9");
    assert_eq!(inv["system"]["family"], "MiniPC");
    assert_eq!(inv["firmware"]["vendor"], "LabBIOS");
    assert_eq!(inv["firmware"]["version"], "2.7.1");
    assert_eq!(inv["firmware"]["date"], "03/14/2025");
    assert_eq!(inv["firmware"]["mode"], "bios");
    let disks = inv["storage"].as_array().unwrap();
    assert!(
        disks.iter().any(|d| d["size_bytes"] == 96u64 << 20
            && d["name"] == "nvme0n1"
            && d["kind"] == "nvme"
            && d["serial"] == NVME_SERIAL),
        "no 96 MiB NVMe disk {NVME_SERIAL} in {disks:?}"
    );
    assert!(
        inv["network"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["mac"] == MAC),
        "the boot NIC is not in {}",
        inv["network"]
    );
    assert!(
        inv["memory"].as_array().is_some_and(|m| !m.is_empty()),
        "{inv}"
    );
    assert!(
        inv["cpus"].as_array().is_some_and(|c| !c.is_empty()),
        "{inv}"
    );

    // the GLPI export validates against GLPI's schema
    let out = lab.path("glpi.json");
    lab.json(&[
        "inventory",
        "export",
        "--host",
        MAC,
        "--format",
        "glpi",
        "--output",
        out.to_str().unwrap(),
    ]);
    let native: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let schema_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/glpi/inventory.schema.json");
    let schema: Value = serde_json::from_slice(
        &std::fs::read(&schema_path)
            .unwrap_or_else(|e| panic!("GLPI schema {}: {e}", schema_path.display())),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).expect("the GLPI schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(&native)
        .map(|e| e.to_string())
        .collect();
    assert!(
        errors.is_empty(),
        "GLPI export invalid: {errors:?}\n{native}"
    );
    assert_eq!(native["content"]["bios"]["ssn"], "SN-0042", "{native}");
    let events = lab.json(&["events", "--host", MAC]);
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"boot") && kinds.contains(&"inventory_changed"),
        "{kinds:?}"
    );

    // the same VM with a bigger disk, booted for a reimage: the inventory changed
    lab.json(&["task", "reimage", "--host", MAC, "--image", "demo"]);
    let t = std::time::Instant::now();
    let serial = boot(
        &mut vm,
        &ns,
        &server,
        &lab,
        128,
        &format!("BOOTCAST-AGENT-INVENTORY-OK {MAC}"),
    );
    let changed = lab.json(&["events", "--host", MAC, "--kind", "inventory_changed"]);
    let newest = &changed["events"][0]["data"]["changes"];
    common::say(&format!(
        "inventory VM, second boot with a 128 MiB disk: {:.1} s; inventory_changed: {newest}",
        t.elapsed().as_secs_f64()
    ));
    assert_eq!(changed["events"].as_array().unwrap().len(), 2, "{changed}");
    assert_eq!(newest[0]["what"], "disk", "{newest}");
    assert!(
        newest[0]["detail"].as_str().unwrap().contains("134217728"),
        "{newest}"
    );
    // the reimage wrote the master onto the NVMe namespace
    assert!(
        serial.contains(&format!("BOOTCAST-AGENT-REIMAGE-DONE {MAC}")),
        "{serial}"
    );
    assert!(serial.contains("/dev/nvme0n1"), "{serial}");
    common::assert_restored(&image, &lab.path("disk-128.raw"));
}

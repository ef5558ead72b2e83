//! Zero-touch, identity and replacement with real machines: QEMU VMs (TCG, BIOS, virtio, SMBIOS
//! type 1 values of a mini-PC) on a deployment VLAN served by `bootcast serve` (full DHCP, in
//! a network namespace).
//!
//! 1. A registration rule for the VLAN's subnet and the NUC model. An unknown VM with an empty
//!    disk boots: with no staff command it joins room r1, is named r1-pc01, is reimaged with
//!    the demo master and boots it; the master prints the name post-deploy wrote.
//! 2. The same VM with another NIC (another MAC, the same SMBIOS UUID) boots: it stays one
//!    host (the new MAC takes the old one's place: name, room), and boots its disk.
//! 3. A spare of another model registers (no rule for it); `host replace` gives it the
//!    first VM's place; reimaged, it boots with the name r1-pc01 written into its disk.
//!
//! Needs root; prints SKIP without.

mod common;

use std::time::Instant;

use common::netlab::{can_run_vms, copy_bootenv, serve_full, site_dhcp, Firmware, Netns, Nic, Vm};
use common::{demo_image, Lab, Served};

const NUC_UUID: &str = "6f1c2b3a-5555-4000-8000-00000000e001";
const SPARE_UUID: &str = "6f1c2b3a-6666-4000-8000-00000000e002";

/// A VM with `mac` and SMBIOS `(uuid, model, serial)`, booting `disk` after the network.
fn vm(lab: &Lab, name: &str, mac: &str, smbios: (&str, &str, &str), disk: &std::path::Path) -> Vm {
    let dir = lab.path(name);
    std::fs::create_dir_all(&dir).unwrap();
    let mut vm = Vm::new(Firmware::Bios, Nic::Virtio, mac, &dir);
    vm.timeout = 420;
    let (uuid, model, serial) = smbios;
    vm.extra = vec![
        "-smbios".into(),
        format!("type=1,manufacturer=Intel(R) Client Systems,product={model},serial={serial},uuid={uuid}"),
        "-drive".into(),
        format!("file={},format=raw,if=virtio", disk.display()),
    ];
    vm
}

/// Runs `vm` until QEMU ends (the demo master powers off; with -no-reboot, the first
/// reboot); returns the serial log and the seconds taken; `want` must be in the log.
fn run(vm: &Vm, ns: &Netns, server: &Served, want: &[&str]) -> (String, f64) {
    let _ = std::fs::remove_file(vm.serial_log());
    let started = Instant::now();
    let out = vm.command(ns).output().unwrap();
    let took = started.elapsed().as_secs_f64();
    let serial = vm.serial();
    for w in want {
        assert!(
            serial.contains(w),
            "no {w:?}: QEMU {}\n--- serial:\n{serial}\n--- server:\n{}",
            out.status,
            server.log_text()
        );
    }
    (serial, took)
}

fn empty_disk(lab: &Lab, name: &str) -> std::path::PathBuf {
    let disk = lab.path(name);
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(96 << 20)
        .unwrap();
    disk
}

#[test]
fn a_spare_sets_itself_up_keeps_its_identity_and_takes_a_place() {
    if !can_run_vms("a_spare_sets_itself_up_keeps_its_identity_and_takes_a_place") {
        return;
    }
    let image = demo_image("v1");
    let lab = Lab::new();
    lab.add("demo", &image);
    copy_bootenv(&lab.data());
    let mut ns = Netns::new("zt");
    ns.bridge_with_tap();
    let c = site_dhcp(&ns, "br0", lab.dir.path(), false);
    ns.spawn(c);
    let server = serve_full(&ns, &lab);

    // 1. the rule, then nothing but the machine
    lab.json(&[
        "host",
        "rule",
        "add",
        "--subnet",
        "10.99.0.0/24",
        "--model",
        "NUC11*",
        "--group",
        "r1",
        "--name",
        "r1-pc{n}",
        "--image",
        "demo",
    ]);
    let (a, b, spare) = (
        "52:54:00:99:0e:01",
        "52:54:00:99:0e:02",
        "52:54:00:99:0e:03",
    );
    let disk = empty_disk(&lab, "nuc.raw");
    let mut nuc = vm(&lab, "nuc", a, (NUC_UUID, "NUC11TNHi5", "G6AB1001"), &disk);
    nuc.no_reboot = false; // register, reboot, reimage, reboot, boot the master
    let (_, took) = run(
        &nuc,
        &ns,
        &server,
        &[
            &format!("BOOTCAST-AGENT-REIMAGE-DONE {a}"),
            "BOOTCAST-DEMO-OK v1",
            "BOOTCAST-DEMO-HOSTNAME r1-pc01",
        ],
    );
    let h = lab.json(&["host", "show", a]);
    assert_eq!(h["host"]["name"], "r1-pc01", "{h}");
    assert_eq!(h["groups"], serde_json::json!(["r1"]), "{h}");
    assert_eq!(h["host"]["model"], "NUC11TNHi5", "{h}");
    assert!(
        h["host"]["smbios_uuid"]
            .as_str()
            .is_some_and(|u| u.eq_ignore_ascii_case(NUC_UUID)),
        "{h}"
    );
    let events = lab.json(&["events", "--host", a, "--limit", "100"]);
    assert_eq!(common::count_events(&events, "registered"), 1, "{events}");
    common::say(&format!(
        "zero_touch_vm: an unknown NUC joined r1 as r1-pc01, was reimaged and booted the master, with no staff command: {took:.1} s"
    ));

    // 2. the same machine with another NIC: one host
    nuc.mac = b.into();
    let (_, took) = run(
        &nuc,
        &ns,
        &server,
        &["BOOTCAST-DEMO-OK v1", "BOOTCAST-DEMO-HOSTNAME r1-pc01"],
    );
    let listed = lab.json(&["host", "list"]);
    let hosts = listed["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 1, "{listed}");
    assert_eq!(hosts[0]["mac"], b, "{listed}");
    assert_eq!(hosts[0]["name"], "r1-pc01", "{listed}");
    assert_eq!(hosts[0]["groups"], serde_json::json!(["r1"]), "{listed}");
    assert_eq!(lab.json(&["host", "show", a])["host"]["replaced_by"], b);
    common::say(&format!(
        "zero_touch_vm: the same NUC with a new NIC stayed one host ({b} took {a}'s place) and booted its disk: {took:.1} s"
    ));

    // 3. a spare of another model registers, then takes the NUC's place
    let spare_disk = empty_disk(&lab, "spare.raw");
    let mut sp = vm(
        &lab,
        "spare",
        spare,
        (SPARE_UUID, "OptiPlex 3000", "SPARE01"),
        &spare_disk,
    );
    sp.no_reboot = true; // the registration's reboot ends QEMU
    run(
        &sp,
        &ns,
        &server,
        &[&format!("BOOTCAST-AGENT-HELLO-OK {spare}")],
    );
    let s = lab.json(&["host", "show", spare]);
    assert!(s["host"]["name"].is_null(), "no rule for this model: {s}");
    let r = lab.json(&["host", "replace", b, spare]);
    assert_eq!(r["moved"]["name"], "r1-pc01", "{r}");
    lab.json(&["task", "reimage", "--host", spare, "--image", "demo"]);
    sp.no_reboot = false;
    let (_, took) = run(
        &sp,
        &ns,
        &server,
        &[
            &format!("BOOTCAST-AGENT-REIMAGE-DONE {spare}"),
            "BOOTCAST-DEMO-HOSTNAME r1-pc01",
        ],
    );
    let s = lab.json(&["host", "show", spare]);
    assert_eq!(s["groups"], serde_json::json!(["r1"]), "{s}");
    assert_eq!(lab.json(&["host", "show", b])["host"]["replaced_by"], spare);
    common::say(&format!(
        "zero_touch_vm: the spare took r1-pc01's place (name written by post-deploy, room r1): {took:.1} s"
    ));
}

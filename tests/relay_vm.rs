//! A machine of a relay's site is reimaged from the relay: in network namespaces, a central
//! server and a site relay (full DHCP, TFTP and HTTP on the site's VLAN); the demo master is
//! pushed to the relay first; then a QEMU VM (TCG, BIOS, virtio) with an empty disk
//! PXE-boots through the relay, restores the master from the relay's store, and boots it.
//! The central server serves not one chunk byte during the restore. A second VM does the same
//! with the relay's WAN link cut (the relay alone, from its site book), then boots its disk
//! through the relay; central records it all once the link is back. Needs root; prints SKIP
//! without.

mod common;

use std::time::{Duration, Instant};

use common::netlab::{can_run_vms, Firmware, Netns, Nic, Vm};
use common::region::Region;
use common::{Lab, Served};

fn metric_in(ns: &Netns, url: &str, name: &str) -> u64 {
    common::metric_in(Some(&ns.name), url, name).unwrap_or_else(|| panic!("no {name} at {url}"))
}

#[test]
fn a_site_machine_is_reimaged_from_its_relay_without_central_chunk_bytes() {
    if !can_run_vms("a_site_machine_is_reimaged_from_its_relay_without_central_chunk_bytes") {
        return;
    }
    let region = Region::start("v");
    let Region {
        central,
        c,
        site,
        server,
        relay,
        image,
        ..
    } = &region;
    // the master reached the relay first (a push); staff queue the reimage
    let mac = "52:54:00:99:04:01";
    region.register_at_central(mac);
    central.json(&["task", "reimage", "--host", mac, "--image", "demo"]);

    let before = metric_in(
        c,
        "http://127.0.0.1:8080",
        "bootcast_chunk_bytes_served_total",
    );
    let relay_served_before = metric_in(
        site,
        "http://127.0.0.1:8080",
        "bootcast_chunk_bytes_served_total",
    );
    let (serial, took, disk) = reimage_vm(central, site, mac, &[relay, server]);
    let central_chunks = metric_in(
        c,
        "http://127.0.0.1:8080",
        "bootcast_chunk_bytes_served_total",
    ) - before;
    let relay_chunks = metric_in(
        site,
        "http://127.0.0.1:8080",
        "bootcast_chunk_bytes_served_total",
    ) - relay_served_before;
    common::say(&format!(
        "VM reimaged from its site relay: {took:.1} s; chunk bytes served by the relay {relay_chunks}, by the central server {central_chunks}"
    ));
    assert_eq!(
        central_chunks, 0,
        "the central server served chunks during the restore"
    );
    assert!(relay_chunks > 0);
    // the host has no name: nothing changes inside the ext4 partition either
    common::assert_restored(image, &disk);
    let t = central.json(&["task", "list", "--all", "--host", mac]);
    assert_eq!(t["tasks"][0]["state"], "done", "{t}");
    let h = central.json(&["host", "show", mac]);
    assert_eq!(h["host"]["site"], "lycee", "{h}");
    assert!(serial.contains("BOOTCAST-DEMO-OK v1"));
}

/// The site's WAN link is cut after the relay received a reimage task (its site book): the
/// VM PXE-boots through the relay alone, restores the master from the relay's store (the
/// relay answers its hello with the central server's signed order), reboots, and boots its
/// local disk through the relay. When the link comes back, the central server has the hello,
/// the reports and the events once each.
#[test]
fn a_site_whose_link_is_down_reimages_and_boots_through_its_relay_alone() {
    if !can_run_vms("a_site_whose_link_is_down_reimages_and_boots_through_its_relay_alone") {
        return;
    }
    let region = Region::start("a");
    let Region {
        central,
        c,
        site,
        server,
        relay,
        relay_data,
        image,
        ..
    } = &region;
    let mac = "52:54:00:99:05:01";
    // registered through the relay (from the relay's namespace): a host of the site
    region.register_via_relay(mac);
    let task = central.json(&["task", "reimage", "--host", mac, "--image", "demo"])["tasks"][0]
        ["id"]
        .as_i64()
        .unwrap();
    let relay_url = "http://127.0.0.1:8080";
    let end = Instant::now() + Duration::from_secs(60);
    while metric_in(site, relay_url, "bootcast_relay_book_tasks") != 1
        || !relay_data.join("relay/files/bootenv/initrd.img").is_file()
    {
        assert!(
            Instant::now() < end,
            "the relay did not take the task into its site book (or keep the boot environment): {}",
            relay.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // the WAN link goes down
    c.sh("ip link set s1 down");
    let (serial, took, disk) = reimage_vm(central, site, mac, &[relay, server]);
    let offline = metric_in(site, relay_url, "bootcast_relay_offline_scripts_total");
    let queued = metric_in(site, relay_url, "bootcast_relay_reports_queued");
    common::say(&format!(
        "VM reimaged and booted through its relay with the WAN link down: {took:.1} s; {offline} boot scripts answered alone, {queued} reports kept"
    ));
    // the task's script and the local disk's after it, both by the relay alone
    assert!(offline >= 2, "{offline}\n{serial}");
    assert!(queued >= 2, "the hello and done at least: {queued}");
    common::assert_restored(image, &disk);
    let t = central.json(&["task", "list", "--all", "--host", mac]);
    assert_ne!(
        t["tasks"][0]["state"], "done",
        "central heard of it with the link down? {t}"
    );

    // the link is back: everything reaches central, once
    c.sh("ip link set s1 up");
    let end = Instant::now() + Duration::from_secs(120);
    while metric_in(site, relay_url, "bootcast_relay_reports_queued") != 0 {
        assert!(
            Instant::now() < end,
            "the relay did not pass its queue on: {}",
            relay.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        metric_in(site, relay_url, "bootcast_relay_reports_forwarded_total"),
        queued
    );
    let t = central.json(&["task", "list", "--all", "--host", mac]);
    assert_eq!(t["tasks"][0]["id"], task, "{t}");
    assert_eq!(t["tasks"][0]["state"], "done", "{t}");
    let events = central.json(&["events", "--host", mac, "--limit", "1000"]);
    // the registration's hello, and the one the relay answered alone
    assert_eq!(common::count_events(&events, "boot"), 2, "{events}");
    assert_eq!(common::count_events(&events, "reimage_done"), 1, "{events}");
}

/// Boots a VM (BIOS, virtio, an empty 96 MiB disk) on the site's VLAN until the demo master it
/// is given powers it off: (serial, seconds, disk). `logs` are printed when it fails.
fn reimage_vm(
    central: &Lab,
    site: &Netns,
    mac: &str,
    logs: &[&Served],
) -> (String, f64, std::path::PathBuf) {
    let disk = central.path(&format!("disk-{}.raw", mac.replace(':', "")));
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(96 << 20)
        .unwrap();
    let mut vm = Vm::new(Firmware::Bios, Nic::Virtio, mac, central.dir.path());
    vm.no_reboot = false; // restore, reboot, boot the disk; the demo master powers off
    vm.timeout = 420;
    vm.extra = vec![
        "-drive".into(),
        format!("file={},format=raw,if=virtio", disk.display()),
    ];
    let started = Instant::now();
    let out = vm.command(site).output().unwrap();
    let took = started.elapsed().as_secs_f64();
    let serial = vm.serial();
    let context = || {
        let mut s = format!("QEMU {}\n--- serial:\n{serial}", out.status);
        for l in logs {
            s += &format!("\n--- log:\n{}", l.log_text());
        }
        s
    };
    assert!(
        serial.contains(&format!("BOOTCAST-AGENT-REIMAGE-DONE {mac}")),
        "{}",
        context()
    );
    assert!(serial.contains("BOOTCAST-DEMO-OK v1"), "{}", context());
    assert!(
        serial.contains("bootcast.server=http://10.99.0.1:8080")
            || serial.contains("-> http://10.99.0.1:8080"),
        "the agent did not talk to the relay: {}",
        context()
    );
    (serial, took, disk)
}

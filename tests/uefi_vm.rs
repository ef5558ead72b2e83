//! UEFI mini-PCs as they ship: QEMU (TCG, q35) with OVMF in Secure Boot mode and Microsoft's
//! keys enrolled (Debian's `OVMF_CODE_4M.ms.fd` + `OVMF_VARS_4M.ms.fd`) and an NVMe disk.
//!
//! 1. proxyDHCP beside the site's DHCP server (which gives bootcast's address as next-server,
//!    as Debian 12's signed GRUB needs: README "Network boot"): an empty PC network-boots
//!    through the signed chain (shim → GRUB → kernel), registers (the guest says Secure Boot
//!    is on), is reimaged
//!    with the Secure Boot demo master, and its next network boot hands it to its own disk's
//!    loader: the master prints `BOOTCAST-DEMO-OK v1` with Secure Boot on, and the disk equals
//!    the image. Then v2 moves only what the disk lacks, and a capture of the NVMe disk gives
//!    the version `image add` of it gives.
//! 2. Full DHCP, a PC whose firmware tries its disk first (as Windows leaves BootOrder) and
//!    whose disk holds an unsigned loader: the firmware refuses it, the PC network-boots, and
//!    the agent puts the network entry first (read back from the VM's variable store after it
//!    powered off); on its next boot, GRUB's hand-off to that unsigned loader is refused too.
//!
//! (UEFI with Secure Boot off, on the `ipxe` chain with proxyDHCP and on the signed chain with
//! full DHCP, each mode's default, is in the PXE matrix of tests/pxe_boot.rs.)
//!
//! Needs root; prints SKIP without.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use common::netlab::{
    chunk_bytes_served, copy_bootenv, have_qemu, nvme_disk, serve_full, site_dhcp, Firmware, Netns,
    Nic, Vm, VLAN_SERVICES,
};
use common::{lacked_bytes, Lab, Served};

/// What one run of a VM showed.
struct Run {
    serial: String,
    /// When each watched marker first appeared on the serial console.
    seen: HashMap<&'static str, Instant>,
    /// QEMU's status when it ended by itself (`None`: stopped at the `stop` marker).
    exited: Option<ExitStatus>,
}

/// Runs `vm` until QEMU ends (or `stop` shows on its serial console, then QEMU is stopped),
/// noting when each of `watch` first appears.
fn run(vm: &Vm, ns: &Netns, watch: &[&'static str], stop: Option<&str>) -> Run {
    let _ = std::fs::remove_file(vm.serial_log());
    let mut qemu = vm.command(ns).spawn().expect("start QEMU");
    let mut seen = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(u64::from(vm.timeout) + 10);
    let exited = loop {
        let status = qemu.try_wait().unwrap();
        let serial = vm.serial();
        for m in watch {
            if !seen.contains_key(m) && serial.contains(m) {
                seen.insert(*m, Instant::now());
            }
        }
        if status.is_some() {
            break status;
        }
        if stop.is_some_and(|s| serial.contains(s)) || Instant::now() > deadline {
            let _ = Command::new("kill")
                .args(["-TERM", &qemu.id().to_string()])
                .status();
            let _ = qemu.wait();
            break None;
        }
        // the console is a file QEMU appends to: look again shortly
        std::thread::sleep(Duration::from_millis(100));
    };
    Run {
        serial: vm.serial(),
        seen,
        exited,
    }
}

fn context(run: &Run, server: &Served) -> String {
    let tail: Vec<&str> = run.serial.lines().rev().take(60).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    format!(
        "QEMU: {:?}\n--- serial (tail):\n{}\n--- server:\n{}",
        run.exited,
        tail.join("\n"),
        server.log_text()
    )
}

/// Where `marker` first is in `text` (panics naming it when absent).
fn at(text: &str, marker: &str, ctx: &dyn Fn() -> String) -> usize {
    text.find(marker)
        .unwrap_or_else(|| panic!("no {marker:?} on the console:\n{}", ctx()))
}

/// The UEFI variables of an OVMF variable store (authenticated format, as Debian's 4M files):
/// the newest live value of each variable, by name.
fn ovmf_variables(store: &Path) -> HashMap<String, Vec<u8>> {
    let b = std::fs::read(store).unwrap();
    let mut vars = HashMap::new();
    let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap()) as usize;
    let mut i = 0;
    // AUTHENTICATED_VARIABLE_HEADER: StartId 0x55AA, State, Reserved, Attributes,
    // MonotonicCount, TimeStamp, PubKeyIndex, NameSize, DataSize, VendorGuid (60 bytes)
    while i + 60 <= b.len() {
        if b[i] != 0xaa || b[i + 1] != 0x55 || b[i + 2] != 0x3f {
            i += 4;
            continue;
        }
        let (name_len, data_len) = (u32_at(i + 36), u32_at(i + 40));
        let end = i + 60 + name_len + data_len;
        if name_len == 0 || name_len % 2 != 0 || end > b.len() {
            i += 4;
            continue;
        }
        let units: Vec<u16> = b[i + 60..i + 60 + name_len]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        vars.insert(
            String::from_utf16_lossy(&units),
            b[i + 60 + name_len..end].to_vec(),
        );
        i = (end + 3) & !3;
    }
    vars
}

/// A segment in a new namespace with the boot environment in place, newly registered PCs
/// powering off (so that the test queues their task before their next boot), and either
/// bootcast as its only DHCP server (the signed chain is the default there) or, `proxy`,
/// bootcast as proxyDHCP on the signed chain beside the site's DHCP server (dnsmasq,
/// 10.99.0.2), which gives bootcast's address as next-server, as README asks for it (the
/// site's returned with the namespace: it must live as long).
fn segment(tag: &str, proxy: bool) -> (Lab, Netns, Option<Netns>, Served) {
    let lab = Lab::new();
    copy_bootenv(&lab.data());
    let chain = if proxy {
        "[dhcp]\nuefi_chain = \"shim\"\n"
    } else {
        ""
    };
    std::fs::write(
        lab.data().join("bootcast.toml"),
        format!("[agent]\nafter_register = \"poweroff\"\n{chain}"),
    )
    .unwrap();
    let mut ns = Netns::new(tag);
    ns.bridge_with_tap();
    if !proxy {
        let c = site_dhcp(&ns, "br0", lab.dir.path(), false);
        ns.spawn(c);
        let server = serve_full(&ns, &lab);
        return (lab, ns, None, server);
    }
    let mut site = ns.attach("site", "10.99.0.2/24", "fd99::2/64");
    let mut c = site_dhcp(&site, "eth0", lab.dir.path(), true);
    c.arg("--dhcp-boot=shimx64.efi,bootcast,10.99.0.1");
    site.spawn(c);
    let mut cmd = ns.cmd(common::BIN);
    cmd.arg("--data")
        .arg(lab.data())
        .env_remove("BOOTCAST_DATA");
    let server = Served::start(cmd, &VLAN_SERVICES);
    (lab, ns, Some(site), server)
}

fn empty_disk(path: &Path, bytes: u64) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(bytes).unwrap();
}

fn prerequisites(test: &str) -> bool {
    if !common::is_root() {
        common::skip(test, "needs root (network namespaces, tap devices)");
        return false;
    }
    assert!(
        have_qemu() && Path::new("/usr/share/OVMF/OVMF_CODE_4M.ms.fd").exists(),
        "QEMU and OVMF are needed: apt-get install qemu-system-x86 ovmf"
    );
    true
}

/// One reimage of the Secure Boot PC with `version`, through to its disk's own boot.
fn reimage(vm: &Vm, ns: &Netns, server: &Served, lab: &Lab, mac: &str, version: &str) -> Run {
    lab.json(&["task", "reimage", "--host", mac, "--image", "demo-sb"]);
    let ok: &'static str = if version == "v1" {
        "BOOTCAST-DEMO-OK v1"
    } else {
        "BOOTCAST-DEMO-OK v2"
    };
    let grub: &'static str = if version == "v1" {
        "BOOTCAST-DEMO-GRUB v1"
    } else {
        "BOOTCAST-DEMO-GRUB v2"
    };
    let local = "bootcast: booting the local disk";
    let r = run(
        vm,
        ns,
        &["BOOTCAST-AGENT-REIMAGE-DONE", local, grub, ok],
        None,
    );
    let s = &r.serial;
    let ctx = || context(&r, server);
    // the order of events: restored and checked; rebooted; the network boot hands the PC to
    // its disk's loader (the distribution's shim, before the removable path), which boots
    // the master with Secure Boot still on
    let done = at(s, &format!("BOOTCAST-AGENT-REIMAGE-DONE {mac}"), &ctx);
    let esp = at(
        s,
        "BOOTCAST-AGENT-ESP-OK nvme0n1p1:/EFI/debian/shimx64.efi",
        &ctx,
    );
    let handoff = at(s, local, &ctx);
    let chained = at(
        s,
        "bootcast: starting (hd0,gpt1)/EFI/debian/shimx64.efi",
        &ctx,
    );
    let own = at(s, grub, &ctx);
    let secure = at(s, "BOOTCAST-DEMO-SECUREBOOT 1", &ctx);
    let booted = at(s, ok, &ctx);
    assert!(
        esp < done
            && done < handoff
            && handoff < chained
            && chained < own
            && own < secure
            && secure < booted,
        "events out of order: {:?}\n{}",
        [esp, done, handoff, chained, own, secure, booted],
        ctx()
    );
    assert!(r.exited.is_some_and(|e| e.success()), "{}", ctx());
    let handed = r.seen[grub].duration_since(r.seen[local]).as_secs_f64();
    common::say(&format!(
        "uefi_vm: {version}: from the local-disk answer to the disk loader's first output: {handed:.1} s (goal: under 10 s)"
    ));
    r
}

#[test]
fn a_secure_boot_nvme_pc_registers_is_reimaged_and_boots_its_own_disk() {
    let name = "a_secure_boot_nvme_pc_registers_is_reimaged_and_boots_its_own_disk";
    if !prerequisites(name) {
        return;
    }
    let image = common::demo_master(&["--secure-boot", "--version", "v1"]);
    let (lab, ns, _site, server) = segment("sb", true);
    lab.add("demo-sb", &image);

    let mac = "52:54:00:99:17:01";
    let disk = lab.path("nvme.raw");
    empty_disk(&disk, std::fs::metadata(&image).unwrap().len());
    let mut vm = Vm::new(Firmware::Uefi, Nic::Virtio, mac, lab.dir.path());
    vm.secure_boot = true;
    vm.keep_vars = true;
    vm.timeout = 420;
    // OVMF connects only the devices in QEMU's boot order: the disk is in it, after the NIC
    vm.extra = nvme_disk(&disk, "NVME-SB-01", Some(2));

    // 1: an unknown PC registers through the signed chain
    let t = Instant::now();
    let r = run(&vm, &ns, &[], None);
    let ctx = || context(&r, &server);
    at(&r.serial, "EFI stub: UEFI Secure Boot is enabled", &ctx);
    at(&r.serial, "UEFI Secure Boot: 1", &ctx);
    at(
        &r.serial,
        &format!("BOOTCAST-AGENT-INVENTORY-OK {mac}"),
        &ctx,
    );
    let log = server.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("boot script") && l.contains(mac) && l.contains("Grub")),
        "the PC's decision was not rendered for GRUB:\n{log}"
    );
    let inv = lab.json(&["inventory", "show", "--host", mac]);
    let fw = &inv["inventory"]["firmware"];
    assert_eq!(
        (&fw["mode"], &fw["secure_boot"]),
        (&serde_json::json!("uefi"), &serde_json::json!(true)),
        "{inv}"
    );
    let current = fw["boot_current"].as_str().expect("BootCurrent reported");
    assert_eq!(fw["boot_order"][0], current, "{fw}");
    assert!(
        inv["inventory"]["storage"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["name"] == "nvme0n1" && d["serial"] == "NVME-SB-01"),
        "{inv}"
    );
    common::say(&format!(
        "uefi_vm: Secure Boot PC registered through shim -> GRUB -> kernel: {:.1} s; BootOrder {}",
        t.elapsed().as_secs_f64(),
        fw["boot_order"]
    ));

    // 2: reimaged with the Secure Boot master; its own disk boots it with Secure Boot on
    vm.no_reboot = false;
    reimage(&vm, &ns, &server, &lab, mac, "v1");
    let got = std::fs::read(&disk).unwrap();
    common::assert_restored_bytes(&image, &got, "the NVMe disk");

    // 3: v2 onto the same disk: only what the disk lacks is sent
    let image2 = common::demo_master(&["--secure-boot", "--version", "v2"]);
    let added = lab.add("demo-sb", &image2);
    let lacked = lacked_bytes(
        &lab,
        &format!("demo-sb@{}", added["version"].as_str().unwrap()),
        &got,
    );
    let before = chunk_bytes_served(&ns);
    reimage(&vm, &ns, &server, &lab, mac, "v2");
    let moved = chunk_bytes_served(&ns) - before;
    common::say(&format!(
        "uefi_vm: v1 -> v2: {moved} bytes served for {lacked} compressed bytes of chunks the disk lacked"
    ));
    common::assert_restored(&image2, &disk);
    assert!(moved * 10 <= lacked * 11, "served {moved} > 1.1 x {lacked}");

    // 4: a capture from the NVMe disk gives the version `image add` of the disk file gives
    lab.json(&["task", "capture", "--host", mac, "--image", "captured"]);
    vm.no_reboot = true;
    let r = run(&vm, &ns, &[], None);
    let ctx = || context(&r, &server);
    let done = at(
        &r.serial,
        &format!("BOOTCAST-AGENT-CAPTURE-DONE {mac}"),
        &ctx,
    );
    let captured = r.serial[done..]
        .split_whitespace()
        .nth(2)
        .unwrap()
        .to_string();
    let added = lab.add("on-host", &disk);
    assert_eq!(added["version"], captured.as_str(), "{}", ctx());
    common::say(&format!(
        "uefi_vm: capture of the NVMe disk: version {} = image add's",
        &captured[..12]
    ));
}

/// A 34 MiB GPT disk whose EFI system partition holds an unsigned loader (Debian's iPXE) as
/// `\EFI\BOOT\BOOTX64.EFI`.
fn unsigned_loader_disk(path: &Path) {
    empty_disk(path, 34 << 20);
    let sh = |c: &mut Command| {
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{c:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let mut sfdisk = Command::new("sfdisk");
    sfdisk
        .args(["--quiet", "--no-reread", "--no-tell-kernel"])
        .arg(path)
        .stdin(std::process::Stdio::piped());
    let mut child = sfdisk.spawn().unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            b"label: gpt\nstart=2048, size=65536, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\n",
        )
        .unwrap();
    assert!(child.wait().unwrap().success());
    let part = format!("{}@@{}", path.display(), 2048 * 512);
    let loader = Path::new(env!("CARGO_MANIFEST_DIR")).join("ipxe/snponly.efi");
    sh(Command::new("mformat").env("MTOOLS_SKIP_CHECK", "1").args([
        "-i", &part, "-T", "65536", "-h", "64", "-s", "32", "-v", "UNSIGNED", "::",
    ]));
    sh(Command::new("mmd").env("MTOOLS_SKIP_CHECK", "1").args([
        "-i",
        &part,
        "::/EFI",
        "::/EFI/BOOT",
    ]));
    sh(Command::new("mcopy")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-i", &part])
        .arg(&loader)
        .arg("::/EFI/BOOT/BOOTX64.EFI"));
}

#[test]
fn a_pc_whose_disk_comes_first_is_put_back_on_network_boot_and_unsigned_loaders_are_refused() {
    let name =
        "a_pc_whose_disk_comes_first_is_put_back_on_network_boot_and_unsigned_loaders_are_refused";
    if !prerequisites(name) {
        return;
    }
    let (lab, ns, _site, server) = segment("sbo", false);

    let mac = "52:54:00:99:17:02";
    let disk = lab.path("nvme.raw");
    unsigned_loader_disk(&disk);
    let mut vm = Vm::new(Firmware::Uefi, Nic::Virtio, mac, lab.dir.path());
    vm.secure_boot = true;
    vm.keep_vars = true;
    vm.timeout = 300;
    // the firmware tries the disk first, as Windows leaves BootOrder
    vm.nic_bootindex = 2;
    vm.extra = nvme_disk(&disk, "NVME-SB-02", Some(1));

    // 1: the disk's unsigned loader is refused by the firmware; the PC boots from the network,
    // registers, and its agent puts the network entry first
    let r = run(&vm, &ns, &[], None);
    let ctx = || context(&r, &server);
    let moved = at(
        &r.serial,
        "BOOTCAST-AGENT-BOOTORDER network entry first",
        &ctx,
    );
    assert!(r.exited.is_some(), "{}", ctx());
    let line = r.serial[moved..].lines().next().unwrap().trim().to_string();
    // read back from the variable store the firmware keeps, after the PC powered off
    let vars = ovmf_variables(&vm.vars());
    let order = bootcast::inventory::efivars::u16s(&vars["BootOrder"]);
    let first = bootcast::inventory::efivars::boot_name(order[0]);
    let option = bootcast::inventory::efivars::load_option(&vars[&first])
        .unwrap_or_else(|| panic!("{first} is not a load option"));
    assert!(
        option.network,
        "BootOrder {order:04X?} starts with {first} {option:?}, not the network entry; {line}"
    );
    common::say(&format!(
        "uefi_vm: disk-first PC: {line}; the variable store says BootOrder {order:04X?}, {first} = {:?}",
        option.description
    ));

    // 2: registered, nothing to do: GRUB hands it to its disk's loader, which is unsigned:
    // refused under Secure Boot (iPXE never starts)
    let starting = "bootcast: starting (hd0,gpt1)/EFI/BOOT/BOOTX64.EFI";
    let refused = "bootcast: (hd0,gpt1)/EFI/BOOT/BOOTX64.EFI did not start";
    let r = run(&vm, &ns, &[], Some(refused));
    let ctx = || context(&r, &server);
    let s = at(&r.serial, starting, &ctx);
    let e = at(&r.serial, refused, &ctx);
    let between = &r.serial[s..e];
    assert!(
        !between.contains("iPXE initialising"),
        "the unsigned loader ran:\n{}",
        ctx()
    );
    common::say(&format!(
        "uefi_vm: an unsigned loader chained under Secure Boot: {}",
        between
            .lines()
            .skip(1)
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" | ")
    ));
}

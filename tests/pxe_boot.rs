//! End to end network boot: QEMU VMs (TCG) with nothing but firmware boot through bootcast
//! into the agent, which registers; checked through the staff API.
//!
//! Matrix: BIOS + e1000, BIOS + virtio-net, UEFI (OVMF, its own PXE client) + virtio-net,
//! each with bootcast as proxyDHCP beside a site DHCP server (dnsmasq, addresses only) and
//! as the only DHCP server (full mode). UEFI boots the unsigned iPXE with proxyDHCP and the
//! signed chain (shim → GRUB → kernel, Secure Boot off here) with full DHCP: each mode's
//! default. Needs root (network namespaces); prints SKIP without.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::netlab::{
    copy_bootenv, have_qemu, shared_bootenv, site_dhcp, Firmware, Netns, Nic, Vm, FULL_DHCP,
    VLAN_SERVICES,
};
use common::{http_in, Lab, Served, BIN};

#[derive(Debug, Clone, Copy)]
struct Case {
    firmware: Firmware,
    nic: Nic,
    full: bool,
    n: u8,
}

impl Case {
    fn label(&self) -> String {
        format!(
            "{:<4} {:<6} {}",
            match self.firmware {
                Firmware::Bios => "BIOS",
                Firmware::Uefi => "UEFI",
            },
            match self.nic {
                Nic::E1000 => "e1000",
                Nic::Virtio => "virtio",
            },
            if self.full { "full DHCP" } else { "proxyDHCP" }
        )
    }
}

fn boot(case: Case) -> Result<Duration, String> {
    let lab = Lab::new();
    copy_bootenv(&lab.data());
    let mut ns = Netns::new("pxe");
    ns.bridge_with_tap();
    // The site's DHCP server: addresses (proxy mode) and IPv6 RAs (always, so iPXE does not
    // wait for them).
    let mut site = None;
    if case.full {
        let c = site_dhcp(&ns, "br0", lab.dir.path(), false);
        ns.spawn(c);
    } else {
        let mut dh = ns.attach("site", "10.99.0.2/24", "fd99::2/64");
        let c = site_dhcp(&dh, "eth0", lab.dir.path(), true);
        dh.spawn(c);
        site = Some(dh);
    }
    let mut cmd = ns.cmd(BIN);
    cmd.arg("--data")
        .arg(lab.data())
        .env_remove("BOOTCAST_DATA");
    // full DHCP, or proxyDHCP beside the site's own server (the default mode)
    let mut args = VLAN_SERVICES.to_vec();
    if case.full {
        args.extend(FULL_DHCP);
    }
    let mut server = Served::start(cmd, &args);
    let token = server.token.clone().unwrap();

    let mac = format!("52:54:00:99:00:{:02x}", case.n);
    // The VM reboots after registering (no -no-reboot): its second network boot must get the
    // local-disk script. The test stops the VM once the server has served that script.
    let mut vm = Vm::new(case.firmware, case.nic, &mac, lab.dir.path());
    vm.no_reboot = false;
    let started = Instant::now();
    let mut qemu = vm.command(&ns).spawn().map_err(|e| e.to_string())?;
    let second_boot = "boot script: LocalDisk";
    let mut took = None;
    let deadline = Instant::now() + Duration::from_secs(u64::from(vm.timeout));
    let exited = loop {
        if let Some(status) = qemu.try_wait().map_err(|e| e.to_string())? {
            break Some(status);
        }
        let log = server.log_text();
        if took.is_none()
            && vm
                .serial()
                .contains(&format!("BOOTCAST-AGENT-HELLO-OK {mac}"))
        {
            took = Some(started.elapsed());
        }
        if log
            .lines()
            .any(|l| l.contains(second_boot) && l.contains(&mac))
        {
            break None;
        }
        if Instant::now() > deadline {
            break None;
        }
        // a condition wait on the VM's progress (serial log, server log), not a timing guess
        std::thread::sleep(Duration::from_millis(250));
    };
    // stop QEMU: SIGTERM to `timeout`, which passes it on to QEMU
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &qemu.id().to_string()])
        .status();
    let out = qemu.wait_with_output().map_err(|e| e.to_string())?;
    let serial = vm.serial();
    let fail = |why: String| {
        let tail: Vec<&str> = serial.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "{}: {why}\n--- QEMU stderr:\n{}\n--- serial (tail):\n{}\n--- server log:\n{}",
            case.label(),
            String::from_utf8_lossy(&out.stderr),
            tail.join("\n"),
            server.log_text()
        )
    };
    if let Some(status) = exited {
        return Err(fail(format!("QEMU ended early with {status}")));
    }
    let Some(took) = took else {
        return Err(fail("the agent never said hello".into()));
    };
    if !server
        .log_text()
        .lines()
        .any(|l| l.contains(second_boot) && l.contains(&mac))
    {
        return Err(fail(
            "the registered VM's next boot did not get the local-disk script".into(),
        ));
    }
    let (code, body) = http_in(
        Some(&ns.name),
        "GET",
        &format!("http://127.0.0.1:8080/api/v1/hosts/{mac}"),
        Some(&token),
        None,
    );
    if code != 200 {
        return Err(fail(format!("GET host: {code} {body}")));
    }
    let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    let host = &v["host"];
    let want_fw = match case.firmware {
        Firmware::Bios => "bios",
        Firmware::Uefi => "uefi",
    };
    if host["mac"] != mac.as_str()
        || host["arch"] != "x86_64"
        || host["firmware"] != want_fw
        || !host["registered_at"].is_string()
        || host["boots"] != 2
    {
        return Err(fail(format!("host record is wrong: {host}")));
    }
    let log = server.log.clone();
    let stopped = server.stop();
    if !stopped.success() {
        return Err(format!(
            "{}: server exit {stopped}\n{}",
            case.label(),
            log.lock().unwrap().join("\n")
        ));
    }
    drop(site);
    Ok(took)
}

#[test]
fn pxe_boot_matrix() {
    if !common::is_root() {
        common::say("SKIP: pxe_boot_matrix: needs root (network namespaces, tap devices)");
        return;
    }
    assert!(
        have_qemu(),
        "QEMU and OVMF are needed: apt-get install qemu-system-x86 ovmf ipxe-qemu"
    );
    shared_bootenv();
    let mut cases = Vec::new();
    let mut n = 1;
    for (firmware, nic) in [
        (Firmware::Bios, Nic::E1000),
        (Firmware::Bios, Nic::Virtio),
        (Firmware::Uefi, Nic::Virtio),
    ] {
        for full in [false, true] {
            cases.push(Case {
                firmware,
                nic,
                full,
                n,
            });
            n += 1;
        }
    }
    if let Ok(only) = std::env::var("PXE_ONLY") {
        // e.g. PXE_ONLY="uefi full": every word must appear in the case's label
        let words: Vec<String> = only.split_whitespace().map(str::to_lowercase).collect();
        cases.retain(|c| {
            let l = c.label().to_lowercase();
            words.iter().all(|w| l.contains(w.as_str()))
        });
        assert!(!cases.is_empty(), "PXE_ONLY={only:?} matches no case");
    }
    // two VMs at a time: one per core
    let queue = Arc::new(Mutex::new(cases.clone()));
    let results = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let q = queue.clone();
            let r = results.clone();
            std::thread::spawn(move || loop {
                let Some(case) = q.lock().unwrap().pop() else {
                    break;
                };
                let res = boot(case);
                r.lock().unwrap().push((case.n, case.label(), res));
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let mut results = results.lock().unwrap().clone();
    results.sort_by_key(|r| r.0);
    let mut report = String::from(
        "PXE boot to agent hello (QEMU TCG, power-on to registered; then its next boot gets the local disk):\n",
    );
    let mut failures = Vec::new();
    for (_, label, res) in &results {
        match res {
            Ok(d) => report.push_str(&format!("  {label}: {:5.1} s  ok\n", d.as_secs_f64())),
            Err(e) => {
                report.push_str(&format!("  {label}: FAILED\n"));
                failures.push(e.clone());
            }
        }
    }
    common::say(report.trim_end());
    assert_eq!(results.len(), cases.len());
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

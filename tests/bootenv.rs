//! The boot environment builds and boots: `bootcast bootenv build` into a temporary data
//! directory, the initramfs holds what it should, and a QEMU machine booted straight into it
//! (`-kernel`/`-initrd`) gets a DHCP lease, says hello to a stub server, and powers off when
//! told to — under BIOS with e1000 and virtio-net, and under UEFI (OVMF) with virtio-net.
//!
//! The machines run in a network namespace made by the test (bridge 10.99.0.1/24 + tap0,
//! dnsmasq for DHCP), removed afterwards. A last machine has no network at all: /init must
//! report BOOTCAST-AGENT-ERROR and leave a shell that works. Needs root, qemu-system-x86, dnsmasq-base, ovmf,
//! busybox-static, cpio (scripts/test.sh installs them); prints SKIP otherwise. The kernel
//! package is downloaded once into `<repo>/.cache/bootenv` and reused.

mod common;

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use bootcast::proto::agent::{Firmware, Hello};
use common::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn sh(cmd: &mut Command) {
    let out = cmd.output().expect("run command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace with br0 (10.99.0.1/24) and tap0 on it; removed on drop, after the
/// processes started in it are killed.
struct Netns {
    name: String,
    children: Vec<Child>,
}

impl Netns {
    fn new() -> Netns {
        let name = format!("bcbootenv{}", std::process::id());
        sh(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns {
            name,
            children: Vec::new(),
        };
        for args in [
            "link set lo up",
            "link add br0 type bridge",
            "addr add 10.99.0.1/24 dev br0",
            "link set br0 up",
            "tuntap add tap0 mode tap",
            "link set tap0 master br0",
            "link set tap0 up",
        ] {
            sh(Command::new("ip")
                .args(["-n", &ns.name])
                .args(args.split(' ')));
        }
        ns
    }

    fn exec(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// A TCP listener on 10.99.0.1 inside the namespace: a thread enters it just to bind.
    fn listen(&self) -> TcpListener {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let f = File::open(&path).expect("open netns");
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            TcpListener::bind("10.99.0.1:0").expect("bind in netns")
        })
        .join()
        .expect("bind thread")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// What the stub saw: request line, body, when.
struct Request {
    line: String,
    body: String,
    at: Instant,
}

/// Answers the inventory with an acknowledgement and every other POST with a hello answer
/// saying `poweroff` (with a session, as the server's), and reports each request on the
/// channel.
fn stub_server(l: TcpListener) -> mpsc::Receiver<Request> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            let mut len = 0usize;
            if r.read_line(&mut line).is_err() {
                continue;
            }
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            if r.read_exact(&mut body).is_err() {
                continue;
            }
            let _ = tx.send(Request {
                line: line.trim().to_string(),
                body: String::from_utf8_lossy(&body).into_owned(),
                at: Instant::now(),
            });
            let reply = if line.starts_with("POST /api/v1/agent/inventory ") {
                r#"{"id":1,"changes":["new_machine"]}"#
            } else {
                r#"{"mac":"52:54:00:99:00:00","session":"5e55","action":"poweroff"}"#
            };
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
                reply.len()
            );
        }
    });
    rx
}

struct Case {
    name: &'static str,
    uefi: bool,
    nic: &'static str,
    mac: &'static str,
}

fn boot(
    lab: &Lab,
    ns: &Netns,
    port: u16,
    rx: &mpsc::Receiver<Request>,
    case: &Case,
) -> Result<(), String> {
    let data = lab.data();
    let serial = lab.path(&format!("serial-{}.log", case.name));
    let append = format!(
        "console=ttyS0 panic=-1 bootcast.server=http://10.99.0.1:{port} bootcast.mac={}",
        case.mac
    );
    let mut qemu = ns.exec("qemu-system-x86_64");
    qemu.args([
        "-accel", "tcg", "-m", "512", "-display", "none", "-monitor", "none",
    ])
    .arg("-no-reboot")
    .arg("-serial")
    .arg(format!("file:{}", serial.display()))
    .arg("-kernel")
    .arg(data.join("bootenv/vmlinuz"))
    .arg("-initrd")
    .arg(data.join("bootenv/initrd.img"))
    .args(["-append", &append])
    .args([
        "-netdev",
        "tap,id=n0,ifname=tap0,script=no,downscript=no",
        "-device",
        &format!("{},netdev=n0,mac={},romfile=", case.nic, case.mac),
    ]);
    if case.uefi {
        let vars = lab.path(&format!("vars-{}.fd", case.name));
        fs::copy("/usr/share/OVMF/OVMF_VARS.fd", &vars).expect("copy OVMF_VARS.fd");
        qemu.args(["-machine", "q35"])
            .args([
                "-drive",
                "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE.fd",
            ])
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,file={}", vars.display()));
    } else {
        qemu.args(["-machine", "pc"]);
    }
    let mut cmd = Command::new("timeout");
    cmd.args(["-k", "5", "240"])
        .arg(qemu.get_program())
        .args(qemu.get_args())
        .stdin(Stdio::null());
    let start = Instant::now();
    let out = cmd.output().expect("run qemu");
    let took = start.elapsed();
    let log = fs::read_to_string(&serial).unwrap_or_default();
    let fail = |why: String| {
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        Err(format!(
            "{}: {why}\nqemu: {}\n--- serial (last 40 lines) ---\n{}",
            case.name,
            String::from_utf8_lossy(&out.stderr).trim(),
            tail.join("\n")
        ))
    };
    if let Some(l) = log.lines().find(|l| l.contains("BOOTCAST-AGENT-ERROR")) {
        return fail(format!("the boot environment reported an error: {l}"));
    }
    if !out.status.success() {
        return fail(format!(
            "qemu did not power off in time or failed ({})",
            out.status
        ));
    }
    let (requests, inventories): (Vec<Request>, Vec<Request>) = rx
        .try_iter()
        .partition(|r| r.line == "POST /api/v1/agent/hello HTTP/1.1");
    let Some(last) = requests.last() else {
        return fail("no hello reached the stub server".into());
    };
    for r in &inventories {
        if r.line != "POST /api/v1/agent/inventory HTTP/1.1" {
            return fail(format!("unexpected request {:?}", r.line));
        }
    }
    // after the hello, the agent reports this machine's inventory, once
    let [inv] = &inventories[..] else {
        return fail(format!("{} inventory reports, want 1", inventories.len()));
    };
    let report: serde_json::Value = serde_json::from_str(&inv.body)
        .map_err(|e| format!("{}: bad inventory {:?}: {e}", case.name, inv.body))?;
    let want_mode = if case.uefi { "uefi" } else { "bios" };
    let nic_found = report["inventory"]["network"]
        .as_array()
        .is_some_and(|n| n.iter().any(|n| n["mac"] == case.mac));
    if report["mac"] != case.mac
        || report["inventory"]["firmware"]["mode"] != want_mode
        || !nic_found
    {
        return fail(format!(
            "inventory {report}: want mac {}, firmware mode {want_mode}, the boot NIC listed",
            case.mac
        ));
    }
    if !log.contains(&format!("BOOTCAST-AGENT-INVENTORY-OK {}", case.mac)) {
        return fail("no BOOTCAST-AGENT-INVENTORY-OK line".into());
    }
    let hello: Hello = serde_json::from_str(&last.body)
        .map_err(|e| format!("{}: bad hello {:?}: {e}", case.name, last.body))?;
    let want_fw = if case.uefi {
        Firmware::Uefi
    } else {
        Firmware::Bios
    };
    if hello.mac != case.mac || hello.arch != "x86_64" || hello.firmware != want_fw {
        return fail(format!(
            "hello {hello:?}: want mac {}, x86_64, {want_fw:?}",
            case.mac
        ));
    }
    if hello.boot_time == 0 {
        return fail("boot_time 0".into());
    }
    if !log.contains(&format!("BOOTCAST-AGENT-HELLO-OK {}", case.mac)) {
        return fail("no BOOTCAST-AGENT-HELLO-OK line".into());
    }
    if !log.contains("reboot: Power down") {
        return fail("qemu exited but the kernel did not power down".into());
    }
    common::say(&format!(
        "{}: hello after {:.1} s ({} request(s)), powered off after {:.1} s",
        case.name,
        last.at.duration_since(start).as_secs_f64(),
        requests.len(),
        took.as_secs_f64()
    ));
    Ok(())
}

/// Without a network, /init reports BOOTCAST-AGENT-ERROR and leaves a working shell on the
/// console: the test types a command into it (QEMU's serial on stdio) and powers off.
fn rescue_shell(lab: &Lab) -> Result<(), String> {
    let data = lab.data();
    let start = Instant::now();
    let mut child = Command::new("timeout")
        .args(["-k", "5", "240", "qemu-system-x86_64"])
        .args([
            "-accel", "tcg", "-m", "512", "-display", "none", "-monitor", "none",
        ])
        .args([
            "-no-reboot",
            "-machine",
            "pc",
            "-nic",
            "none",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(data.join("bootenv/vmlinuz"))
        .arg("-initrd")
        .arg(data.join("bootenv/initrd.img"))
        .args(["-append", "console=ttyS0 panic=-1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run qemu");
    let mut stdin = child.stdin.take().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut seen = Vec::new();
    let mut error_line = None;
    let mut typed = false;
    let mut ran = false;
    for line in stdout.lines() {
        let Ok(line) = line else { break };
        if line.contains("BOOTCAST-AGENT-ERROR") && error_line.is_none() {
            error_line = Some(line.clone());
        }
        if line.contains("a shell is available") && !typed {
            // Arithmetic, so that the echo of the typed line cannot pass for its output.
            let _ = stdin.write_all(b"echo RESCUE-$((6 * 7)); poweroff -f\n");
            let _ = stdin.flush();
            typed = true;
        }
        if line.contains("RESCUE-42") {
            ran = true;
        }
        seen.push(line);
    }
    let status = child.wait().expect("wait qemu");
    let tail = seen[seen.len().saturating_sub(30)..].join("\n");
    match error_line {
        Some(l) if l.contains("no network interface") => {}
        other => return Err(format!("no-network: error line {other:?}\n{tail}")),
    }
    if !ran || !status.success() {
        return Err(format!(
            "no-network: the rescue shell did not run the command and power off ({status})\n{tail}"
        ));
    }
    println!(
        "no-network: error reported, rescue shell used, powered off after {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// File names in a zstd-compressed newc initramfs, listed by GNU cpio.
fn list_initramfs(path: &Path) -> Vec<String> {
    let bytes = zstd::decode_all(File::open(path).unwrap()).expect("initrd.img is zstd");
    let mut child = Command::new("cpio")
        .args(["-it", "--quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run cpio");
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&bytes));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().expect("feed cpio");
    assert!(out.status.success(), "cpio -it failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn bootenv_builds_and_boots_under_bios_and_uefi() {
    if !is_root() {
        common::say("SKIP: bootenv_builds_and_boots_under_bios_and_uefi: needs root");
        return;
    }
    for tool in [
        "qemu-system-x86_64",
        "dnsmasq",
        "cpio",
        "dpkg-deb",
        "busybox",
    ] {
        if !have(tool) {
            common::say(&format!(
                "SKIP: bootenv_builds_and_boots_under_bios_and_uefi: {tool} not installed (scripts/test.sh installs it)"
            ));
            return;
        }
    }
    let lab = Lab::new();
    // held while this test builds: VM tests starting meanwhile wait for this build
    let slot = common::netlab::SharedSlot::lock();
    let cache = repo().join(".cache/bootenv");
    let start = Instant::now();
    let info = lab.json(&["bootenv", "build", "--cache", cache.to_str().unwrap()]);
    common::say(&format!(
        "bootenv build: {:.1} s, kernel {}, initrd.img {} bytes ({}), agent {} bytes",
        start.elapsed().as_secs_f64(),
        info["kernel_version"],
        info["initrd"]["size"],
        info["initrd_compression"],
        info["agent_size"]
    ));
    assert_eq!(info["agent_stripped"], true, "objcopy is in binutils");
    // What `bootenv show` reads back is what `build` reported.
    assert_eq!(lab.json(&["bootenv", "show"]), info);
    // A rebuild that fails (not a kernel package) leaves the previous one whole, and no litter.
    let bogus = lab.file("bogus.deb", b"not a deb");
    let out = lab.run(&["bootenv", "build", "--kernel-deb", bogus.to_str().unwrap()]);
    assert!(!out.status.success(), "a bogus kernel package must fail");
    assert_eq!(lab.json(&["bootenv", "show"]), info);
    let mut left: Vec<String> = fs::read_dir(lab.data().join("bootenv"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, [".lock", "bootenv.json", "initrd.img", "vmlinuz"]);
    // this build is the suite's: the VM tests waiting for the slot boot it instead of
    // building theirs
    slot.publish(&lab.data().join("bootenv"));
    drop(slot);

    let names = list_initramfs(&lab.data().join("bootenv/initrd.img"));
    for want in [
        "init",
        "bin/busybox",
        "bin/bootcast",
        "bin/sh",
        "dev/console",
        "etc/udhcpc.script",
        "lib/modules/order",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
    // the grow tools of this machine, with their libraries (tests/reimage_vm.rs runs them)
    let tools: Vec<&str> = info["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    for (tool, package) in [
        ("ntfsresize", "ntfs-3g"),
        ("e2fsck", "e2fsprogs"),
        ("resize2fs", "e2fsprogs"),
    ] {
        if have(tool) || Path::new("/usr/sbin").join(tool).is_file() {
            assert!(tools.contains(&tool), "{tool} not in {tools:?}");
            let f = format!("usr/sbin/{tool}");
            assert!(names.contains(&f), "{f} not in the initramfs");
        } else {
            common::say(&format!(
                "bootenv: {tool} is not on this machine (package {package}): not bundled"
            ));
        }
    }
    if !tools.is_empty() {
        for lib in [
            "lib64/ld-linux-x86-64.so.2",
            "lib/x86_64-linux-gnu/libc.so.6",
        ] {
            assert!(names.iter().any(|n| n == lib), "{lib} not in the initramfs");
        }
    }
    let modules: Vec<&str> = info["modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    for m in [
        "e1000",
        "virtio_net",
        "virtio_pci",
        "e1000e",
        "r8169",
        "ahci",
        "nvme",
        "ext4",
        "jbd2",
    ] {
        assert!(modules.contains(&m), "{m} not in {modules:?}");
    }
    for m in &modules {
        let f = format!("lib/modules/{m}.ko");
        assert!(names.contains(&f), "{f} not in the initramfs");
    }
    // Dependencies come before the modules that need them.
    let pos = |m: &str| modules.iter().position(|x| *x == m).unwrap();
    assert!(pos("virtio") < pos("virtio_net") && pos("failover") < pos("net_failover"));
    assert!(pos("jbd2") < pos("ext4") && pos("mbcache") < pos("ext4"));

    let mut ns = Netns::new();
    let leases = lab.path("dnsmasq.leases");
    let dnsmasq_log = File::create(lab.path("dnsmasq.log")).unwrap();
    let child = ns
        .exec("dnsmasq")
        .args([
            "--no-daemon",
            "--conf-file=/dev/null",
            "--port=0",
            "--interface=br0",
            "--bind-interfaces",
            "--dhcp-range=10.99.0.100,10.99.0.150,255.255.255.0,1h",
            "--no-ping",
            "--user=root",
        ])
        .arg(format!("--dhcp-leasefile={}", leases.display()))
        .arg(format!("--pid-file={}", lab.path("dnsmasq.pid").display()))
        .stdout(Stdio::null())
        .stderr(dnsmasq_log)
        .spawn()
        .expect("run dnsmasq");
    ns.children.push(child);
    let listener = ns.listen();
    let port = listener.local_addr().unwrap().port();
    let rx = stub_server(listener);

    let cases = [
        Case {
            name: "bios-e1000",
            uefi: false,
            nic: "e1000",
            mac: "52:54:00:99:00:01",
        },
        Case {
            name: "bios-virtio",
            uefi: false,
            nic: "virtio-net-pci",
            mac: "52:54:00:99:00:02",
        },
        Case {
            name: "uefi-virtio",
            uefi: true,
            nic: "virtio-net-pci",
            mac: "52:54:00:99:00:03",
        },
    ];
    let mut failures = Vec::new();
    for case in &cases {
        if let Err(e) = boot(&lab, &ns, port, &rx, case) {
            failures.push(e);
        }
    }
    if let Err(e) = rescue_shell(&lab) {
        failures.push(e);
    }
    if !failures.is_empty() {
        let log = fs::read_to_string(lab.path("dnsmasq.log")).unwrap_or_default();
        panic!(
            "{} of {} boots failed:\n{}\n--- dnsmasq ---\n{log}",
            failures.len(),
            cases.len() + 1,
            failures.join("\n\n")
        );
    }
}

#[test]
fn bootenv_errors_name_the_fix() {
    let lab = Lab::new();
    let out = lab.run(&["bootenv", "show"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("bootcast bootenv build"));

    let out = lab.run(&["bootenv", "build", "--busybox", "/nonexistent/busybox"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("busybox-static"), "{err}");

    let static_busybox = fs::read("/bin/busybox")
        .is_ok_and(|b| bootcast::bootenv::elf::has_interpreter(&b) == Ok(false));
    if static_busybox {
        let out = lab.run(&["bootenv", "build", "--kernel-deb", "/nonexistent.deb"]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("/nonexistent.deb"), "{err}");
    }
    // Nothing half-built looks complete.
    assert!(lab.run(&["bootenv", "show"]).status.code() == Some(1));
}

//! Network namespaces and QEMU VMs for the boot tests. Everything a test creates here is
//! removed on drop: processes it started (by PID), then the namespaces (and with them their
//! bridges, taps and veths). Addresses are in 10.99.0.0/16 and fd99::/64 only.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

static SEQ: AtomicUsize = AtomicUsize::new(0);

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace owned by the test.
pub struct Netns {
    pub name: String,
    children: Vec<Child>,
}

impl Netns {
    /// A new namespace `bc<pid>-<tag><n>` with loopback up.
    pub fn new(tag: &str) -> Netns {
        let name = format!(
            "bc{}-{tag}{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns {
            name,
            children: Vec::new(),
        };
        ns.sh("ip link set lo up");
        ns
    }

    /// A command that runs `program` inside the namespace.
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs a shell command line inside the namespace; panics on failure.
    pub fn sh(&self, line: &str) {
        run(self.cmd("sh").args(["-c", line]));
    }

    /// Starts a long-running process inside the namespace, killed (by PID) on drop.
    pub fn spawn(&mut self, mut cmd: Command) -> u32 {
        let child = cmd.spawn().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        let pid = child.id();
        self.children.push(child);
        pid
    }

    /// Makes `br0` (10.99.0.1/24, fd99::1/64) with a tap `tap0` on it, for one VM.
    pub fn bridge_with_tap(&self) {
        self.sh(
            "ip link add br0 type bridge && ip link set br0 type bridge forward_delay 0 \
             && ip addr add 10.99.0.1/24 dev br0 && ip -6 addr add fd99::1/64 dev br0 nodad \
             && ip link set br0 up \
             && ip tuntap add tap0 mode tap && ip link set tap0 master br0 && ip link set tap0 up",
        );
    }

    /// Adds a tap `name` on `br0`, for one more VM ([`Vm::tap`]).
    pub fn add_tap(&self, name: &str) {
        self.sh(&format!(
            "ip tuntap add {name} mode tap && ip link set {name} master br0 && ip link set {name} up"
        ));
    }

    /// Plugs a new namespace into this one's `br0` through a veth, with `addr` (CIDR) and
    /// `addr6` on its end (`eth0`).
    pub fn attach(&self, tag: &str, addr: &str, addr6: &str) -> Netns {
        self.attach_to("br0", tag, addr, addr6)
    }

    /// [`Netns::attach`] to bridge `bridge` of this namespace.
    pub fn attach_to(&self, bridge: &str, tag: &str, addr: &str, addr6: &str) -> Netns {
        let other = Netns::new(tag);
        let peer = format!("v{}", SEQ.fetch_add(1, Ordering::SeqCst));
        self.sh(&format!(
            "ip link add {peer} type veth peer name eth0 netns {} && ip link set {peer} master {bridge} && ip link set {peer} up",
            other.name
        ));
        other.sh(&format!(
            "ip addr add {addr} dev eth0 && ip -6 addr add {addr6} dev eth0 nodad && ip link set eth0 up"
        ));
        other
    }
}

impl Netns {
    /// A point-to-point veth link from this namespace (`here`, address `addr`) to `other`
    /// (`there`, address `peer_addr`); CIDRs in 10.99.0.0/16. With `rate` (tc syntax, e.g.
    /// `100mbit`), both ends are shaped with tbf, as a WAN link is.
    pub fn link(
        &self,
        other: &Netns,
        (here, addr): (&str, &str),
        (there, peer_addr): (&str, &str),
        rate: Option<&str>,
    ) {
        self.sh(&format!(
            "ip link add {here} type veth peer name {there} netns {} && ip addr add {addr} dev {here} && ip link set {here} up",
            other.name
        ));
        other.sh(&format!(
            "ip addr add {peer_addr} dev {there} && ip link set {there} up"
        ));
        if let Some(r) = rate {
            self.sh(&format!(
                "tc qdisc add dev {here} root tbf rate {r} burst 64kb latency 100ms"
            ));
            other.sh(&format!(
                "tc qdisc add dev {there} root tbf rate {r} burst 64kb latency 100ms"
            ));
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for c in &mut self.children {
            if let Ok(None) = c.try_wait() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// dnsmasq (package dnsmasq-base) as the site's own DHCP server: addresses only, plus IPv6
/// router advertisements so iPXE does not wait for them. Runs in the foreground.
pub fn site_dhcp(ns: &Netns, iface: &str, dir: &Path, dhcpv4: bool) -> Command {
    let mut c = ns.cmd("dnsmasq");
    c.args([
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--port=0",
        "--bind-interfaces",
        "--no-ping",
        "--log-dhcp",
        "--enable-ra",
        "--dhcp-range=fd99::,ra-only,64",
    ])
    .arg(format!("--interface={iface}"))
    .arg(format!("--dhcp-leasefile={}", dir.join("leases").display()))
    .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()))
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    if dhcpv4 {
        c.arg("--dhcp-range=10.99.0.100,10.99.0.150,255.255.255.0,1h");
    }
    c
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    Bios,
    Uefi,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nic {
    E1000,
    Virtio,
}

/// A QEMU (TCG) VM that network-boots from a tap (`tap0`) of a namespace.
pub struct Vm {
    pub firmware: Firmware,
    pub nic: Nic,
    pub mac: String,
    /// The namespace's tap its NIC is plugged into.
    pub tap: String,
    pub dir: PathBuf,
    /// Seconds before QEMU is killed.
    pub timeout: u32,
    /// Extra QEMU arguments (disks, SMBIOS values).
    pub extra: Vec<String>,
    /// Keep `-no-reboot` (a reboot ends QEMU).
    pub no_reboot: bool,
    /// UEFI: OVMF with Secure Boot enforced and Microsoft's keys enrolled, as on a shop PC.
    pub secure_boot: bool,
    /// UEFI: keep the variable store (BootOrder...) from one run to the next.
    pub keep_vars: bool,
    /// The NIC's place in QEMU's boot order (1: first).
    pub nic_bootindex: u32,
}

impl Vm {
    pub fn new(firmware: Firmware, nic: Nic, mac: &str, dir: &Path) -> Vm {
        Vm {
            firmware,
            nic,
            mac: mac.into(),
            tap: "tap0".into(),
            dir: dir.into(),
            timeout: 300,
            extra: Vec::new(),
            no_reboot: true,
            secure_boot: false,
            keep_vars: false,
            nic_bootindex: 1,
        }
    }

    /// The UEFI variable store of this VM.
    pub fn vars(&self) -> PathBuf {
        self.dir.join("OVMF_VARS.fd")
    }

    pub fn serial_log(&self) -> PathBuf {
        self.dir.join("serial.log")
    }

    /// The QEMU command line, run inside `ns` under `timeout`.
    pub fn command(&self, ns: &Netns) -> Command {
        let mut c = ns.cmd("timeout");
        c.args(["-k", "5", &self.timeout.to_string(), "qemu-system-x86_64"]);
        c.args([
            "-accel", "tcg", "-m", "512", "-display", "none", "-monitor", "none",
        ]);
        if self.no_reboot {
            c.arg("-no-reboot");
        }
        c.arg("-serial")
            .arg(format!("file:{}", self.serial_log().display()));
        c.arg("-netdev").arg(format!(
            "tap,id=n0,ifname={},script=no,downscript=no",
            self.tap
        ));
        let nic = match (self.firmware, self.nic) {
            // the iPXE virtio ROM only matches the modern device id
            (Firmware::Bios, Nic::Virtio) => {
                format!(
                    "virtio-net-pci,netdev=n0,mac={},disable-legacy=on,bootindex={}",
                    self.mac, self.nic_bootindex
                )
            }
            (Firmware::Bios, Nic::E1000) => format!(
                "e1000,netdev=n0,mac={},bootindex={}",
                self.mac, self.nic_bootindex
            ),
            // no option ROM: OVMF's own PXE client (DHCP + TFTP) does the first stage
            (Firmware::Uefi, Nic::Virtio) => {
                format!(
                    "virtio-net-pci,netdev=n0,mac={},romfile=,bootindex={}",
                    self.mac, self.nic_bootindex
                )
            }
            (Firmware::Uefi, Nic::E1000) => format!(
                "e1000,netdev=n0,mac={},bootindex={}",
                self.mac, self.nic_bootindex
            ),
        };
        c.arg("-device").arg(nic);
        match self.firmware {
            Firmware::Bios => {
                c.args(["-machine", "pc,graphics=off", "-boot", "n"]);
            }
            Firmware::Uefi => {
                let vars = self.vars();
                let (code, fresh) = match self.secure_boot {
                    true => (
                        "/usr/share/OVMF/OVMF_CODE_4M.ms.fd",
                        "/usr/share/OVMF/OVMF_VARS_4M.ms.fd",
                    ),
                    false => (
                        "/usr/share/OVMF/OVMF_CODE.fd",
                        "/usr/share/OVMF/OVMF_VARS.fd",
                    ),
                };
                if !(self.keep_vars && vars.exists()) {
                    std::fs::copy(fresh, &vars).expect("OVMF (package ovmf)");
                }
                if self.secure_boot {
                    // Secure Boot needs SMM, and the variable store only writable from it
                    c.args(["-machine", "q35,smm=on"]);
                    c.args(["-global", "driver=cfi.pflash01,property=secure,value=on"]);
                } else {
                    c.args(["-machine", "q35"]);
                }
                c.arg("-drive").arg(format!(
                    "if=pflash,format=raw,unit=0,readonly=on,file={code}"
                ));
                c.arg("-drive").arg(format!(
                    "if=pflash,format=raw,unit=1,file={}",
                    vars.display()
                ));
            }
        }
        c.args(&self.extra);
        c.stdout(Stdio::null()).stderr(Stdio::piped());
        c
    }

    pub fn serial(&self) -> String {
        std::fs::read_to_string(self.serial_log()).unwrap_or_default()
    }
}

/// Whether VM test `test` can run here: root is needed (else a SKIP line), and then QEMU and
/// OVMF must be installed (a failure saying how, not a skip).
pub fn can_run_vms(test: &str) -> bool {
    if !super::is_root() {
        super::skip(test, "needs root (network namespaces, tap devices)");
        return false;
    }
    assert!(
        have_qemu(),
        "QEMU and OVMF are needed: apt-get install qemu-system-x86 ovmf ipxe-qemu"
    );
    true
}

/// True when QEMU and the firmware files the VM tests need are present.
pub fn have_qemu() -> bool {
    Path::new("/usr/bin/qemu-system-x86_64").exists()
        && Path::new("/usr/share/OVMF/OVMF_CODE.fd").exists()
}

/// The suite's shared boot environment: `.cache/bootenv-shared/<key>`, the key being the BLAKE3
/// hash of the bootcast binary under test (the agent inside the initramfs), held locked while
/// this value lives (a file lock: other test processes wait).
pub struct SharedSlot {
    dir: PathBuf,
    key: String,
    _lock: std::fs::File,
}

impl SharedSlot {
    /// Waits for the lock; an entry of an older binary is removed.
    pub fn lock() -> SharedSlot {
        let bin = std::fs::read(super::BIN).expect("read the bootcast binary");
        let key = blake3::hash(&bin).to_hex()[..16].to_string();
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/bootenv-shared");
        std::fs::create_dir_all(&root).unwrap();
        let lock = std::fs::File::create(root.join(".lock")).unwrap();
        lock.lock().expect("lock .cache/bootenv-shared");
        let dir = root.join(&key);
        if !dir.join("ready").exists() {
            // older binaries' builds go: one entry is all the suite needs
            for old in std::fs::read_dir(&root).unwrap().flatten() {
                if old.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = std::fs::remove_dir_all(old.path());
                }
            }
            std::fs::create_dir_all(dir.join("bootenv")).unwrap();
        }
        SharedSlot {
            dir,
            key,
            _lock: lock,
        }
    }

    fn ready(&self) -> bool {
        self.dir.join("ready").exists()
    }

    /// Makes the boot environment in `built` the suite's shared one (moved when `take`, else
    /// copied), unless there is one already.
    fn fill(&self, built: &Path, take: bool) {
        if self.ready() {
            return;
        }
        for f in ["vmlinuz", "initrd.img", "bootenv.json"] {
            let (from, to) = (built.join(f), self.dir.join("bootenv").join(f));
            if take {
                std::fs::rename(from, to).unwrap();
            } else {
                std::fs::copy(from, to).unwrap();
            }
        }
        std::fs::write(self.dir.join("ready"), &self.key).unwrap();
    }

    /// Offers a boot environment that a test built and checked (tests/bootenv.rs, which
    /// holds the slot while it builds) as the suite's: the VM tests that wait for the slot
    /// then boot it instead of building another.
    pub fn publish(&self, built: &Path) {
        self.fill(built, false);
    }
}

/// One boot environment for the whole suite, built once with the real CLI (`bootcast bootenv
/// build`) and reused by every VM test binary, and every test process when tests run in
/// parallel, until the bootcast binary changes. Concurrent first users wait on a file lock; a
/// build that failed half-way leaves no `ready` marker and is redone.
pub fn shared_bootenv() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let slot = SharedSlot::lock();
        if slot.ready() {
            super::say(&format!(
                "bootenv: the suite's shared build .cache/bootenv-shared/{}",
                slot.key
            ));
        } else {
            let lab = super::Lab {
                dir: tempfile::tempdir_in(&slot.dir).unwrap(),
            };
            let t = std::time::Instant::now();
            let out = super::bootenv_build(&lab);
            assert!(
                out.status.success(),
                "bootenv build failed: {}",
                super::stderr(&out)
            );
            slot.fill(&lab.data().join("bootenv"), true);
            super::say(&format!(
                "bootenv built in {:.1}s (shared by the suite: .cache/bootenv-shared/{})",
                t.elapsed().as_secs_f64(),
                slot.key
            ));
        }
        slot.dir.join("bootenv")
    })
}

/// Copies the shared boot environment into `data/bootenv`.
pub fn copy_bootenv(data: &Path) {
    let dst = data.join("bootenv");
    std::fs::create_dir_all(&dst).unwrap();
    for f in ["vmlinuz", "initrd.img", "bootenv.json"] {
        std::fs::copy(shared_bootenv().join(f), dst.join(f)).unwrap();
    }
}

/// The deployment VLAN's services of a server or relay on `br0` (10.99.0.1): DHCP (proxy,
/// unless [`FULL_DHCP`] follows), TFTP, HTTP on port 8080.
pub const VLAN_SERVICES: [&str; 8] = [
    "--http",
    "0.0.0.0:8080",
    "--tftp",
    "0.0.0.0:69",
    "--advertise",
    "10.99.0.1",
    "--dhcp-interface",
    "br0",
];

/// With [`VLAN_SERVICES`]: the VLAN's only DHCP server (10.99.0.100-150).
pub const FULL_DHCP: [&str; 4] = [
    "--dhcp-mode",
    "full",
    "--dhcp-range",
    "10.99.0.100,10.99.0.150",
];

/// QEMU arguments for `disk` (raw) as an NVMe disk with `serial`, at `bootindex` in QEMU's boot
/// order if given (OVMF connects only the devices in that order when there is one).
pub fn nvme_disk(disk: &Path, serial: &str, bootindex: Option<u32>) -> Vec<String> {
    let index = bootindex
        .map(|i| format!(",bootindex={i}"))
        .unwrap_or_default();
    vec![
        "-drive".into(),
        format!("file={},format=raw,if=none,id=nvm", disk.display()),
        "-device".into(),
        format!("nvme,drive=nvm,serial={serial}{index}"),
    ]
}

/// `bootcast_chunk_bytes_served_total` of the server on port 8080 in `ns`.
pub fn chunk_bytes_served(ns: &Netns) -> u64 {
    let (_, text) = super::http_in(
        Some(&ns.name),
        "GET",
        "http://127.0.0.1:8080/metrics",
        None,
        None,
    );
    text.lines()
        .find_map(|l| l.strip_prefix("bootcast_chunk_bytes_served_total "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// `bootcast serve` in `ns` as the deployment VLAN's only DHCP server (full mode on `br0`,
/// 10.99.0.1, TFTP and HTTP on port 8080).
pub fn serve_full(ns: &Netns, lab: &super::Lab) -> super::Served {
    let mut cmd = ns.cmd(super::BIN);
    cmd.arg("--data")
        .arg(lab.data())
        .env_remove("BOOTCAST_DATA");
    super::Served::start(cmd, &[&VLAN_SERVICES[..], &FULL_DHCP[..]].concat())
}

/// A machine's first network boot and its agent's hello, sent from namespace `ns` to the
/// server or relay at `url`: `mac` becomes a known host (of the relay's site through a relay).
pub fn register_at(ns: &Netns, url: &str, mac: &str) {
    let (_, script) = super::http_in(
        Some(&ns.name),
        "GET",
        &format!("{url}/boot/{mac}.ipxe"),
        None,
        None,
    );
    let hello = serde_json::json!({"protocol": bootcast::proto::agent::AGENT_PROTOCOL, "mac": mac, "arch": "x86_64", "firmware": "bios", "boot_time": 1, "credential": super::credential_of(&script)});
    let (code, body) = super::http_in(
        Some(&ns.name),
        "POST",
        &format!("{url}/api/v1/agent/hello"),
        None,
        Some(&hello.to_string()),
    );
    assert_eq!(code, 200, "{body}");
}

/// A site relay for `site` in namespace `ns` (data in `data`), reaching the central `server`
/// at `upstream_ip` over HTTPS with its certificate pinned; clients reach it as
/// `http://10.99.0.1:8080`; `services` are its VLAN flags ([`VLAN_SERVICES`], [`FULL_DHCP`]).
pub fn start_relay(
    ns: &Netns,
    data: &Path,
    (site, token): (&str, &str),
    server: &super::Served,
    upstream_ip: &str,
    services: &[&str],
) -> super::Served {
    let fingerprint = server
        .fingerprint
        .clone()
        .expect("the banner's certificate");
    let upstream = format!("https://{upstream_ip}:8443");
    let mut cmd = ns.cmd(super::BIN);
    cmd.arg("--data")
        .arg(data)
        .env_remove("BOOTCAST_DATA")
        .env("BOOTCAST_RELAY_TOKEN", token);
    let mut args = vec![
        "--upstream",
        &upstream,
        "--upstream-fingerprint",
        &fingerprint,
        "--site",
        site,
        "--url",
        "http://10.99.0.1:8080",
    ];
    args.extend(services);
    super::Served::start_as(cmd, "relay", &args)
}

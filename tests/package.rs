//! The Debian package (scripts/deb.sh): it installs with dpkg, its unit files pass
//! `systemd-analyze verify`, and the service's command, started as the unit starts it (the
//! unprivileged user `bootcast`, only the unit's capabilities, no new privileges), binds
//! DHCP/TFTP and answers a PXE client in a network namespace; without the capabilities it
//! cannot. Root only (it installs the package on this machine and purges it at the end);
//! prints SKIP otherwise.

mod common;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::process::Command;

use bootcast::boot::dhcp::codec::msg;
use common::dhcp::{client_socket, enter, exchange};
use common::netlab::Netns;
use common::{Served, BIN};

const OVMF_DISCOVER: &[u8] = include_bytes!("../src/boot/dhcp/testdata/ovmf_discover.bin");
const UNIT: &str = "/lib/systemd/system/bootcast.service";
const RELAY_UNIT: &str = "/lib/systemd/system/bootcast-relay.service";

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Purges the package and removes the test's data directory on drop.
struct Installed {
    data: std::path::PathBuf,
}

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "bootcast"]).output();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// The value of `key=` in the unit's [Service] section.
fn unit_value(unit: &str, key: &str) -> String {
    unit.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in the unit"))
        .trim()
        .to_string()
}

/// `--flag=-all,+cap_a,+cap_b` for setpriv from the unit's `CAP_A CAP_B`.
fn caps_arg(caps: &str) -> String {
    let list: Vec<String> = caps
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    format!("-all,{}", list.join(","))
}

/// The capability mask (/proc/PID/status hex) of the unit's `CAP_A CAP_B`.
fn caps_mask(caps: &str) -> u64 {
    caps.split_whitespace()
        .map(|c| match c {
            "CAP_NET_BIND_SERVICE" => 1u64 << 10,
            "CAP_NET_RAW" => 1 << 13,
            other => panic!("the test does not know {other}"),
        })
        .sum()
}

fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

fn skip_reason() -> Option<String> {
    if !common::is_root() {
        return Some("needs root (it installs the package)".into());
    }
    for tool in [
        "dpkg-deb",
        "dpkg",
        "systemd-analyze",
        "setpriv",
        "ip",
        "adduser",
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!("needs {tool}"));
        }
    }
    let installed = Command::new("dpkg-query")
        .args(["-W", "-f", "${Status}", "bootcast"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("installed"));
    if installed {
        return Some("a bootcast package is already installed on this machine".into());
    }
    None
}

#[test]
fn the_deb_installs_and_its_unit_serves_pxe_as_an_unprivileged_user() {
    if let Some(why) = skip_reason() {
        common::skip(
            "the_deb_installs_and_its_unit_serves_pxe_as_an_unprivileged_user",
            &why,
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let deb = run(Command::new(root.join("scripts/deb.sh"))
        .args(["--binary", BIN, "--out"])
        .arg(tmp.path()));
    let deb = deb.trim();
    let contents = run(Command::new("dpkg-deb").args(["--contents", deb]));
    for f in [
        "./usr/bin/bootcast",
        "./lib/systemd/system/bootcast.service",
        "./lib/systemd/system/bootcast-relay.service",
        "./etc/default/bootcast",
    ] {
        assert!(contents.contains(f), "{f} not in the package:\n{contents}");
    }

    let data = Path::new("/var/lib").join(format!("bootcast-pkgtest-{}", std::process::id()));
    let _installed = Installed { data: data.clone() };
    run(Command::new("dpkg").args(["-i", deb]));
    let passwd = run(Command::new("getent").args(["passwd", "bootcast"]));
    let uid: u32 = passwd.split(':').nth(2).unwrap().parse().unwrap();
    assert_ne!(uid, 0, "the service user is not root");
    let analyze = Command::new("systemd-analyze")
        .args(["verify", UNIT, RELAY_UNIT])
        .output()
        .unwrap();
    assert!(
        analyze.status.success(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&analyze.stderr)
    );

    // the unit's user, capabilities and command
    let unit = std::fs::read_to_string(UNIT).unwrap();
    let user = unit_value(&unit, "User");
    let caps = unit_value(&unit, "AmbientCapabilities");
    assert_eq!(unit_value(&unit, "CapabilityBoundingSet"), caps);
    assert_eq!(unit_value(&unit, "NoNewPrivileges"), "yes");
    let exec = unit_value(&unit, "ExecStart");
    let mut words = exec.split_whitespace();
    let program = words.next().unwrap().to_string();
    assert_eq!(program, "/usr/bin/bootcast");
    assert_eq!(words.next(), Some("serve"));
    std::fs::create_dir_all(&data).unwrap();
    run(Command::new("chown")
        .arg(format!("{user}:{user}"))
        .arg(&data));

    let srv = Netns::new("pkgs");
    let cli = Netns::new("pkgc");
    srv.link(&cli, ("vs", "10.99.61.1/24"), ("vc", "10.99.61.2/24"), None);
    let as_unit = |caps: Option<&str>| {
        let mut c = srv.cmd("setpriv");
        c.args([
            &format!("--reuid={user}"),
            &format!("--regid={user}"),
            "--init-groups",
            "--no-new-privs",
        ]);
        match caps {
            Some(caps) => c.args([
                format!("--inh-caps={}", caps_arg(caps)),
                format!("--ambient-caps={}", caps_arg(caps)),
                format!("--bounding-set={}", caps_arg(caps)),
            ]),
            None => c.args(["--inh-caps=-all", "--bounding-set=-all"]),
        };
        c.args([
            "env",
            &format!("BOOTCAST_DATA={}", data.display()),
            &program,
        ]);
        c
    };
    let args = [
        "--dhcp-interface",
        "vs",
        "--http",
        "10.99.61.1:8080",
        "--https",
        "off",
    ];

    // without the unit's capabilities the ports are refused, and the error says so
    let out = as_unit(None).arg("serve").args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "served without capabilities: {err}");
    assert!(err.contains("ermission denied"), "{err}");

    // as the unit runs it: ready, as that user, with exactly the unit's capabilities
    let served = Served::start_as(as_unit(Some(&caps)), "serve", &args);
    let pid = served.child.id();
    let uids = status_field(pid, "Uid");
    assert!(
        uids.split_whitespace().all(|u| u == uid.to_string()),
        "Uid: {uids}"
    );
    for field in ["CapEff", "CapPrm", "CapBnd", "CapAmb"] {
        let v = u64::from_str_radix(&status_field(pid, field), 16).unwrap();
        assert_eq!(v, caps_mask(&caps), "{field} {v:#x}");
    }
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");

    // a PXE client (OVMF's captured DISCOVER) on the segment gets the proxyDHCP offer
    let ns = cli.name.clone();
    let (v, from) = std::thread::spawn(move || {
        enter(&ns);
        let c68 = client_socket(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68));
        exchange(
            &c68,
            OVMF_DISCOVER,
            SocketAddrV4::new(Ipv4Addr::BROADCAST, 67),
        )
    })
    .join()
    .unwrap();
    assert_eq!(from, SocketAddr::from(([10, 99, 61, 1], 67)));
    assert_eq!(v.msg_type(), Some(msg::OFFER));
    assert_eq!(v.opt(60), Some(&b"PXEClient"[..]));
    assert!(!v.file.is_empty(), "the offer names a boot file");
    // the boot script over HTTP from the client's segment
    let script = run(cli.cmd("curl").args([
        "-sf",
        "http://10.99.61.1:8080/boot/52:54:00:61:00:02.ipxe?platform=pcbios",
    ]));
    assert!(script.starts_with("#!ipxe"), "{script}");
    common::say(&format!(
        "package: {deb} installed; {} and {} verified; serve as {user} (uid {uid}) with {caps}: proxyDHCP offer {:?}",
        UNIT,
        RELAY_UNIT,
        String::from_utf8_lossy(&v.file)
    ));
    drop(served);
}

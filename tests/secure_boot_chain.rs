//! The Secure Boot chain's files over TFTP, on loopback, from `bootcast serve` (no root): the
//! signed binaries, GRUB's first file, and each machine's configuration, which is its boot
//! script (the same decision as iPXE's, with its credential and the server's key) rendered for
//! GRUB; the local-disk hand-off and its per-host override; a missing binary named with the
//! setting to fix. Uses curl's TFTP client (package curl).

mod common;

use std::path::Path;
use std::process::Command;

use common::{http, Lab, Served, BIN};

/// `tftp://ADDR/NAME` with curl: the bytes, or `None` when the server refused it.
fn tftp(addr: &str, name: &str, dir: &Path) -> Option<Vec<u8>> {
    let out = dir.join("fetched");
    let _ = std::fs::remove_file(&out);
    let status = Command::new("curl")
        .args(["-s", "--max-time", "20", "-o"])
        .arg(&out)
        .arg(format!("tftp://{addr}/{name}"))
        .status()
        .expect("curl (package curl)");
    status.success().then(|| std::fs::read(&out).unwrap())
}

#[test]
fn grub_reads_each_machines_decision_over_tftp_with_its_credential() {
    let lab = Lab::new();
    common::fake_bootenv(&lab);
    let signed = lab.path("signed");
    std::fs::create_dir_all(&signed).unwrap();
    std::fs::write(signed.join("shimx64.efi"), b"MZ a stand-in shim").unwrap();
    std::fs::write(signed.join("grubx64.efi"), b"MZ a stand-in GRUB").unwrap();
    std::fs::write(
        lab.data().join("bootcast.toml"),
        format!(
            "[boot]\ntrust_without_dhcp = [\"127.0.0.0/8\"]\nuefi_binaries = \"{}\"\n",
            signed.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("--data")
        .arg(lab.data())
        .env_remove("BOOTCAST_DATA");
    let server = Served::start(
        cmd,
        &[
            "--http",
            "127.0.0.1:0",
            "--https",
            "off",
            "--tftp",
            "127.0.0.1:0",
        ],
    );
    let addr = server
        .log_text()
        .lines()
        .find_map(|l| l.trim().strip_prefix("TFTP").map(|r| r.trim().to_string()))
        .and_then(|r| r.split_whitespace().next().map(str::to_string))
        .expect("the banner names the TFTP address");
    let dir = lab.dir.path();
    let token = server.token.clone().unwrap();

    // the binaries, and GRUB's first file
    assert_eq!(
        tftp(&addr, "shimx64.efi", dir).unwrap(),
        b"MZ a stand-in shim"
    );
    assert_eq!(
        tftp(&addr, "grubx64.efi", dir).unwrap(),
        b"MZ a stand-in GRUB"
    );
    assert_eq!(
        tftp(&addr, "grub/grub.cfg", dir).unwrap(),
        bootcast::boot::grub::BOOTSTRAP.as_bytes()
    );
    let kernel = std::fs::read(lab.data().join("bootenv/vmlinuz")).unwrap();
    assert_eq!(tftp(&addr, "bootenv/vmlinuz", dir).unwrap(), kernel);

    // an unknown machine: the boot environment, with its credential and the server's key
    let mac = "52:54:00:99:17:aa";
    let cfg =
        String::from_utf8(tftp(&addr, &format!("grub/grub.cfg-{mac}"), dir).unwrap()).unwrap();
    assert!(
        cfg.contains("if linux (tftp,$net_default_server)/bootenv/vmlinuz ")
            && cfg.contains(" bootcast.mac=$net_default_mac")
            && cfg.contains(" bootcast.key="),
        "{cfg}"
    );
    let credential = common::credential_of(&cfg);
    let (code, host) = http(
        "GET",
        &format!("{}/api/v1/hosts/{mac}", server.url),
        Some(&token),
        None,
    );
    assert_eq!(code, 200, "{host}");
    let host: serde_json::Value = serde_json::from_str(&host).unwrap();
    // the boot is recorded as a UEFI x86-64 one (the host's own arch comes with the hello)
    assert_eq!(
        (&host["host"]["firmware"], &host["boots"][0]["arch"]),
        (&serde_json::json!("uefi"), &serde_json::json!("x86_64")),
        "{host}"
    );
    // the agent's hello takes that credential: the machine is registered
    let hello = serde_json::json!({"protocol": bootcast::proto::agent::AGENT_PROTOCOL, "mac": mac, "arch": "x86_64", "firmware": "uefi", "boot_time": 1, "credential": credential});
    let (code, answer) = http(
        "POST",
        &format!("{}/api/v1/agent/hello", server.url),
        None,
        Some(&hello.to_string()),
    );
    assert_eq!(code, 200, "{answer}");

    // registered, nothing to do: the disk's own loader, unless the host says `exit`
    let local = |dir: &Path| {
        String::from_utf8(tftp(&addr, &format!("grub/grub.cfg-{mac}"), dir).unwrap()).unwrap()
    };
    let chain = local(dir);
    assert!(
        chain.contains("chainloader ($bootcast_esp)$bootcast_loader") && !chain.contains("linux "),
        "{chain}"
    );
    let set = |v: &str| {
        let out = Command::new(BIN)
            .arg("--data")
            .arg(lab.data())
            .args(["host", "set", mac, "--uefi-local", v])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", common::stderr(&out));
    };
    set("exit");
    let exit = local(dir);
    assert!(
        !exit.contains("chainloader") && exit.ends_with("\nexit\n"),
        "{exit}"
    );
    set("inherit");
    assert_eq!(local(dir), chain);

    // a missing binary: not served, and HTTP names what to fix
    std::fs::remove_file(signed.join("grubx64.efi")).unwrap();
    assert_eq!(tftp(&addr, "grubx64.efi", dir), None);
    let (code, body) = http(
        "GET",
        &format!("{}/uefi/grubx64.efi", server.url),
        None,
        None,
    );
    assert_eq!(code, 404);
    assert!(body.contains("[boot] uefi_binaries"), "{body}");
    // names GRUB probes for that bootcast does not have: not found, not an error
    assert_eq!(tftp(&addr, "grub/x86_64-efi/command.lst", dir), None);
    assert!(
        !server.log_text().contains("panicked"),
        "{}",
        server.log_text()
    );
}

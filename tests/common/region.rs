//! A region in network namespaces: a central server and one site relay, for the VM tests of
//! relays (tests/relay_vm.rs, tests/room_vm.rs).
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::netlab::{
    copy_bootenv, register_at, site_dhcp, start_relay, Netns, FULL_DHCP, VLAN_SERVICES,
};
use super::{demo_image, Lab, Served, BIN};

/// A central server and a site relay in network namespaces: central <- 100 Mbit -> relay
/// (HTTPS, the central certificate pinned); the relay runs full DHCP, TFTP and HTTP on the
/// site's VLAN (`br0` with a VM tap `tap0`). The demo master is added and pushed to the site
/// (the relay holds it when this returns), the boot environment copied in. Both servers'
/// schedulers read the clock file `clock` (the system clock while it does not exist).
pub struct Region {
    pub central: Lab,
    pub c: Netns,
    pub site: Netns,
    pub server: Served,
    pub relay: Served,
    pub relay_data: PathBuf,
    /// The demo master's disk image.
    pub image: PathBuf,
    /// The schedulers' clock file (`--clock-file`) of both servers.
    pub clock: PathBuf,
}

impl Region {
    pub fn start(tag: &str) -> Region {
        let central = Lab::new();
        let image = demo_image("v1");
        central.add("demo", &image);
        copy_bootenv(&central.data());
        let token = central.json(&["site", "add", "lycee"])["token"]
            .as_str()
            .unwrap()
            .to_string();
        let clock = central.path("clock");
        let clock_arg = clock.to_str().unwrap();

        // central <- 100 Mbit -> relay; the relay's VLAN is br0 with the VM's tap
        let c = Netns::new(&format!("{tag}cen"));
        let mut site = Netns::new(&format!("{tag}site"));
        c.link(
            &site,
            ("s1", "10.99.4.1/30"),
            ("up0", "10.99.4.2/30"),
            Some("100mbit"),
        );
        site.bridge_with_tap();
        let ra = site_dhcp(&site, "br0", central.dir.path(), false); // IPv6 RAs only
        site.spawn(ra);
        let mut cmd = c.cmd(BIN);
        cmd.arg("--data")
            .arg(central.data())
            .env_remove("BOOTCAST_DATA");
        let server = Served::start(
            cmd,
            &[
                "--http",
                "0.0.0.0:8080",
                "--tftp",
                "off",
                "--clock-file",
                clock_arg,
            ],
        );
        // the relay reaches central over HTTPS, pinning its self-signed certificate (the banner's)
        let relay_data = central.path("relay");
        let relay = start_relay(
            &site,
            &relay_data,
            ("lycee", &token),
            &server,
            "10.99.4.1",
            &[
                &VLAN_SERVICES[..],
                &FULL_DHCP[..],
                &["--clock-file", clock_arg],
            ]
            .concat(),
        );
        push_and_wait(&central);
        Region {
            central,
            c,
            site,
            server,
            relay,
            relay_data,
            image,
            clock,
        }
    }

    /// The host's first network boot and hello, through the relay (from its own namespace):
    /// a host of the site.
    pub fn register_via_relay(&self, mac: &str) {
        register_at(&self.site, "http://127.0.0.1:8080", mac);
    }

    /// The host's first network boot and hello, sent to the central server in its namespace.
    pub fn register_at_central(&self, mac: &str) {
        register_at(&self.c, "http://127.0.0.1:8080", mac);
    }
}

/// Pushes the demo master to the site and waits until the relay holds it.
pub fn push_and_wait(central: &Lab) {
    let p = central.json(&["push", "create", "--image", "demo", "--sites", "lycee"]);
    let id = p["push"]["id"].as_i64().unwrap().to_string();
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        let st = central.json(&["push", "status", &id]);
        if st["pushes"][0]["sites"][0]["state"] == "done" {
            break;
        }
        assert!(Instant::now() < end, "the push did not finish: {st}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

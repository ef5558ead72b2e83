//! What changed between two boots' inventories of one host: the events `inventory_changed`
//! carries. Only hardware that staff care about is compared (disks, memory, the machine's
//! identity, CPUs, network cards); volatile values (link state, speed) are not.

use std::collections::BTreeSet;

use serde::Serialize;

use super::Inventory;

/// One change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// `new_machine`, `system`, `disk`, `memory`, `cpu`, `network`.
    pub what: &'static str,
    /// In words, with the old and new values.
    pub detail: String,
}

fn disks(inv: &Inventory) -> BTreeSet<String> {
    inv.storage
        .iter()
        .map(|d| {
            format!(
                "{} {} {} bytes{}",
                d.name,
                d.model.as_deref().unwrap_or("?"),
                d.size_bytes,
                d.serial
                    .as_deref()
                    .map(|s| format!(" serial {s}"))
                    .unwrap_or_default()
            )
        })
        .collect()
}

fn modules(inv: &Inventory) -> BTreeSet<String> {
    inv.memory
        .iter()
        .map(|m| {
            format!(
                "{} {} MiB{}",
                m.slot.as_deref().unwrap_or("?"),
                m.size_mib,
                m.serial
                    .as_deref()
                    .map(|s| format!(" serial {s}"))
                    .unwrap_or_default()
            )
        })
        .collect()
}

fn cpus(inv: &Inventory) -> BTreeSet<String> {
    inv.cpus
        .iter()
        .map(|c| c.model.clone().unwrap_or_default())
        .collect()
}

fn nics(inv: &Inventory) -> BTreeSet<String> {
    inv.network.iter().map(|n| n.mac.clone()).collect()
}

fn set_change(
    what: &'static str,
    old: BTreeSet<String>,
    new: BTreeSet<String>,
    out: &mut Vec<Change>,
) {
    if old == new {
        return;
    }
    let gone: Vec<_> = old.difference(&new).cloned().collect();
    let came: Vec<_> = new.difference(&old).cloned().collect();
    out.push(Change {
        what,
        detail: format!("removed [{}], added [{}]", gone.join("; "), came.join("; ")),
    });
}

/// The changes from `old` (the host's previous inventory, if any) to `new`.
pub fn changes(old: Option<&Inventory>, new: &Inventory) -> Vec<Change> {
    let Some(old) = old else {
        return vec![Change {
            what: "new_machine",
            detail: "first inventory of this host".into(),
        }];
    };
    let mut out = Vec::new();
    let id = |i: &Inventory| {
        (
            i.system.serial.clone(),
            i.system.uuid.clone(),
            i.system.model.clone(),
        )
    };
    if id(old) != id(new) {
        let show = |i: &Inventory| {
            format!(
                "{} {} serial {} uuid {}",
                i.system.vendor.as_deref().unwrap_or("?"),
                i.system.model.as_deref().unwrap_or("?"),
                i.system.serial.as_deref().unwrap_or("?"),
                i.system.uuid.as_deref().unwrap_or("?")
            )
        };
        out.push(Change {
            what: "system",
            detail: format!("was {}, now {}", show(old), show(new)),
        });
    }
    set_change("disk", disks(old), disks(new), &mut out);
    set_change("memory", modules(old), modules(new), &mut out);
    set_change("cpu", cpus(old), cpus(new), &mut out);
    set_change("network", nics(old), nics(new), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::model::{Disk, MemoryModule, NetInterface};

    fn machine() -> Inventory {
        let mut i = Inventory::default();
        i.system.serial = Some("S1".into());
        i.storage.push(Disk {
            name: "sda".into(),
            size_bytes: 96 << 20,
            kind: "ssd".into(),
            ..Default::default()
        });
        i.memory.push(MemoryModule {
            slot: Some("DIMM 0".into()),
            size_mib: 512,
            ..Default::default()
        });
        i.network.push(NetInterface {
            name: "eth0".into(),
            mac: "52:54:00:00:00:01".into(),
            link: true,
            ..Default::default()
        });
        i
    }

    #[test]
    fn first_boot_is_a_new_machine_and_the_same_machine_is_no_change() {
        let m = machine();
        assert_eq!(changes(None, &m)[0].what, "new_machine");
        let mut again = m.clone();
        again.collected_at += 3600;
        again.network[0].link = false; // volatile
        assert!(changes(Some(&m), &again).is_empty());
    }

    #[test]
    fn a_bigger_disk_and_more_memory_are_two_changes() {
        let m = machine();
        let mut n = m.clone();
        n.storage[0].size_bytes = 128 << 20;
        n.memory[0].size_mib = 1024;
        let c = changes(Some(&m), &n);
        let what: Vec<_> = c.iter().map(|c| c.what).collect();
        assert_eq!(what, vec!["disk", "memory"]);
        assert!(c[0].detail.contains("100663296") && c[0].detail.contains("134217728"));
    }

    #[test]
    fn another_serial_is_another_system() {
        let m = machine();
        let mut n = m.clone();
        n.system.serial = Some("S2".into());
        assert_eq!(changes(Some(&m), &n)[0].what, "system");
    }
}

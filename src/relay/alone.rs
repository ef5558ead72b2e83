//! A site relay working alone: what it answers for its site's machines while the central
//! server cannot be reached.
//!
//! Each heartbeat reply may carry the site book ([`SiteBook`]): the site's hosts, and their
//! open reimage tasks as the central server signed them. The relay keeps it in
//! `DATA/relay/book.json` (a restart while the link is down keeps it too) and sends its
//! revision back with every heartbeat, so the reply carries only what changed.
//!
//! While upstream does not answer a machine's boot script, [`plan`] decides from the book:
//! - a task the relay holds, whose version is complete in its store and is due: the boot
//!   environment, with a boot credential this relay issues (to the address its DHCP service
//!   gave the machine, as the central server would); the agent's hello is then answered here
//!   (`proxy::hello_alone`) with the central server's signed order, and the restore runs from the
//!   relay's store;
//! - a machine the site does not know (never registered): the boot environment to register;
//!   the hello is answered with the central server's after-registration action;
//! - anything else, a registered machine or a task whose version is not here: the local disk.
//!
//! A boot started here is finished here: its hello ([`crate::proto::relay::OfflineHello`]) and
//! its reports go through the report queue ([`super::queue`]), even once the link is back, and
//! the central server applies each once. A task whose done (or failed) is queued is not
//! started again by this relay; the next book drops it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::proto::relay::{SiteBook, SiteTask, WakeOrder, Woken};

/// The book's file, under the data directory.
const FILE: &str = "relay/book.json";

/// The site book as this relay holds it, and the tasks it ended alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Book {
    /// The revision held (`None`: no book yet).
    pub rev: Option<u64>,
    /// MAC → registered.
    pub hosts: BTreeMap<String, bool>,
    pub tasks: Vec<SiteTask>,
    pub after_register: String,
    /// Tasks whose end (done, failed) this relay queued: never started again.
    #[serde(default)]
    pub ended: BTreeSet<i64>,
    /// Wake orders for the site's hosts not sent as far as central knows.
    #[serde(default)]
    pub wakes: Vec<WakeOrder>,
    /// Orders this relay sent (id → when), told to central with every heartbeat until the book
    /// no longer lists them.
    #[serde(default)]
    pub woken: BTreeMap<i64, i64>,
}

fn path(data: &Path) -> PathBuf {
    data.join(FILE)
}

impl Book {
    /// The book kept in `data` (an unreadable one is logged and left: the next heartbeat
    /// sends a full one).
    pub fn load(data: &Path) -> Book {
        match std::fs::read(path(data)) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!(
                    "{}: {e}; the next heartbeat brings the site book again",
                    path(data).display()
                );
                Book::default()
            }),
            Err(_) => Book::default(),
        }
    }

    pub fn save(&self, data: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(self).expect("a book serialises");
        let path = path(data);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        crate::store::durable::write_atomic(&path, &bytes).map_err(std::io::Error::other)
    }

    /// Applies a heartbeat reply's book; `verify` checks a task's signature (an order that
    /// fails it is left out, with why).
    pub fn apply(
        &mut self,
        new: SiteBook,
        verify: impl Fn(&SiteTask) -> Result<(), String>,
    ) -> Vec<String> {
        let mut refused = Vec::new();
        if new.full {
            self.hosts.clear();
        }
        for h in new.hosts {
            self.hosts.insert(h.mac, h.registered);
        }
        self.tasks = new
            .tasks
            .into_iter()
            .filter(|t| match verify(t) {
                Ok(()) => true,
                Err(e) => {
                    refused.push(format!("task {} for {}: {e}", t.id, t.mac));
                    false
                }
            })
            .collect();
        // what central closed is forgotten
        let open: BTreeSet<i64> = self.tasks.iter().map(|t| t.id).collect();
        self.ended.retain(|id| open.contains(id));
        self.after_register = new.after_register;
        self.rev = Some(new.rev);
        // an order central no longer lists was acknowledged (or cancelled): forgotten
        let listed: BTreeSet<i64> = new.wakes.iter().map(|w| w.id).collect();
        self.woken.retain(|id, _| listed.contains(id));
        self.wakes = new.wakes;
        refused
    }

    /// Wake orders due at `now` and not sent yet by this relay.
    pub fn due_wakes(&self, now: i64) -> Vec<WakeOrder> {
        self.wakes
            .iter()
            .filter(|w| w.at <= now && !self.woken.contains_key(&w.id))
            .cloned()
            .collect()
    }

    /// What the heartbeat tells central this relay sent.
    pub fn woken(&self) -> Vec<Woken> {
        self.woken
            .iter()
            .map(|(&id, &at)| Woken { id, at })
            .collect()
    }

    /// The task this relay may start alone for `mac` at `now`, due and not ended here.
    pub fn task_for(&self, mac: &str, now: i64) -> Option<&SiteTask> {
        self.tasks
            .iter()
            .filter(|t| t.mac == mac && !self.ended.contains(&t.id))
            .find(|t| t.not_before.is_none_or(|nb| nb <= now))
    }
}

/// What a machine boots while upstream does not answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    LocalDisk,
    /// The boot environment for this task (its version is complete here).
    Task(SiteTask),
    /// The boot environment to register an unknown machine.
    Register,
}

/// The decision of the module doc; `held` says whether a version is complete in the store.
pub fn plan(book: &Book, mac: &str, now: i64, held: impl Fn(&str, &str) -> bool) -> Plan {
    if let Some(t) = book.task_for(mac, now) {
        if held(&t.image, &t.version) {
            return Plan::Task(t.clone());
        }
        return Plan::LocalDisk;
    }
    match book.hosts.get(mac) {
        Some(true) => Plan::LocalDisk,
        // no book at all: nothing is known, nothing is started
        _ if book.rev.is_none() => Plan::LocalDisk,
        _ => Plan::Register,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::relay::SiteHost;

    fn task(id: i64, mac: &str) -> SiteTask {
        SiteTask {
            id,
            mac: mac.into(),
            image: "demo".into(),
            version: "ab".repeat(32),
            not_before: None,
            hostname: None,
            grow: None,
            then: None,
            signature: Some("sig".into()),
        }
    }

    fn host(mac: &str, registered: bool) -> SiteHost {
        SiteHost {
            mac: mac.into(),
            registered,
        }
    }

    #[test]
    fn a_book_merges_deltas_and_plans_each_boot() {
        let (a, b, c) = (
            "52:54:00:00:00:0a",
            "52:54:00:00:00:0b",
            "52:54:00:00:00:0c",
        );
        let mut book = Book::default();
        // no book yet: every machine boots its disk
        assert_eq!(plan(&book, a, 10, |_, _| true), Plan::LocalDisk);
        let refused = book.apply(
            SiteBook {
                wakes: vec![],
                rev: 5,
                full: true,
                hosts: vec![host(a, true), host(b, true)],
                tasks: vec![task(1, a), task(2, b)],
                after_register: "reboot".into(),
            },
            |t| match t.id {
                2 => Err("forged".into()),
                _ => Ok(()),
            },
        );
        assert_eq!(refused, ["task 2 for 52:54:00:00:00:0b: forged"]);
        assert_eq!(plan(&book, a, 10, |_, _| true), Plan::Task(task(1, a)));
        // the version is not here: the disk
        assert_eq!(plan(&book, a, 10, |_, _| false), Plan::LocalDisk);
        // the forged order is not run
        assert_eq!(plan(&book, b, 10, |_, _| true), Plan::LocalDisk);
        assert_eq!(plan(&book, c, 10, |_, _| true), Plan::Register);
        // a delta adds c; a ended here is not started again
        book.ended.insert(1);
        book.apply(
            SiteBook {
                wakes: vec![],
                rev: 6,
                full: false,
                hosts: vec![host(c, true)],
                tasks: vec![task(1, a)],
                after_register: "reboot".into(),
            },
            |_| Ok(()),
        );
        assert_eq!(book.hosts.len(), 3);
        assert_eq!(plan(&book, a, 10, |_, _| true), Plan::LocalDisk);
        assert_eq!(plan(&book, c, 10, |_, _| true), Plan::LocalDisk);
        // central closed task 1: forgotten; a full book replaces the hosts
        let mut later = task(3, a);
        later.not_before = Some(100);
        book.apply(
            SiteBook {
                wakes: vec![],
                rev: 9,
                full: true,
                hosts: vec![host(a, true)],
                tasks: vec![later.clone()],
                after_register: "poweroff".into(),
            },
            |_| Ok(()),
        );
        assert!(book.ended.is_empty());
        assert_eq!(book.hosts.len(), 1);
        assert_eq!(plan(&book, a, 99, |_, _| true), Plan::LocalDisk);
        assert_eq!(plan(&book, a, 100, |_, _| true), Plan::Task(later));
        // kept across a restart
        let d = tempfile::tempdir().unwrap();
        book.save(d.path()).unwrap();
        assert_eq!(Book::load(d.path()), book);
    }
}

//! The server's database: SQLite (rusqlite, bundled) in `DATA/bootcast.db`.
//!
//! One connection behind a mutex; every query is short, so async callers use
//! [`Db::call`] (a blocking-pool hop) and never hold the lock across an await. The schema
//! evolves by numbered migrations ([`MIGRATIONS`]); `PRAGMA user_version` records how many
//! ran. A database written by a newer bootcast is refused rather than misread.
//!
//! Query groups: [`hosts`] (hosts and their boots), [`tasks`] (what a host should do on its
//! next network boot), [`groups`] (hosts in named groups, e.g. a room), [`images`] (per-image
//! settings such as the post-deploy steps), [`sites`] (sites, their schedule and relay),
//! [`pushes`] (image versions pushed to sites, and each site's progress), [`leases`] (full-mode DHCP leases, the DHCP server's `LeaseStore`).

pub mod bootcred;
pub mod dashboard;
pub mod events;
pub mod groups;
pub mod hosts;
pub mod images;
pub mod inventories;
pub mod leases;
pub mod pushes;
pub mod registration_rules;
pub mod reports;
pub mod retention;
pub mod sessions;
pub mod sites;
pub mod staff;
pub mod task_rules;
pub mod tasks;
pub mod wakes;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::Connection;

pub use hosts::{Host, HostBoot};
pub use tasks::{Progress, Task, TaskKind, TaskState};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot open database {path}: {cause}")]
    Open {
        path: PathBuf,
        cause: rusqlite::Error,
    },
    #[error("database {path} has schema version {found}, newer than this bootcast knows ({known}); run the newer bootcast or restore a backup")]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("database migration {step} failed: {cause}")]
    Migrate { step: usize, cause: rusqlite::Error },
    #[error("database query failed ({what}): {cause}")]
    Query {
        what: &'static str,
        cause: rusqlite::Error,
    },
    #[error("database task failed: {0}")]
    Join(String),
    #[error("database commit failed (the write is lost; try again): {0}")]
    Commit(String),
}

pub(crate) trait QueryContext<T> {
    fn what(self, what: &'static str) -> Result<T, DbError>;
}

impl<T> QueryContext<T> for Result<T, rusqlite::Error> {
    fn what(self, what: &'static str) -> Result<T, DbError> {
        self.map_err(|cause| DbError::Query { what, cause })
    }
}

/// Schema migrations, applied in order; never edit one that has shipped, add a new one.
pub const MIGRATIONS: &[&str] = &[
    // 1: hosts, their boots, tasks, DHCP leases
    "CREATE TABLE hosts (
        mac TEXT PRIMARY KEY,
        arch TEXT,
        firmware TEXT,
        first_boot INTEGER NOT NULL,
        last_boot INTEGER NOT NULL,
        last_ip TEXT,
        boots INTEGER NOT NULL DEFAULT 0,
        registered_at INTEGER,
        boot_nonce TEXT
    );
    CREATE TABLE boots (
        id INTEGER PRIMARY KEY,
        mac TEXT NOT NULL REFERENCES hosts(mac) ON DELETE CASCADE,
        at INTEGER NOT NULL,
        stage TEXT NOT NULL,
        firmware TEXT,
        arch TEXT,
        ip TEXT,
        agent_boot_time INTEGER,
        detail TEXT
    );
    CREATE INDEX boots_mac_at ON boots(mac, at);
    CREATE TABLE tasks (
        id INTEGER PRIMARY KEY,
        mac TEXT NOT NULL REFERENCES hosts(mac) ON DELETE CASCADE,
        kind TEXT NOT NULL,
        state TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        detail TEXT
    );
    CREATE INDEX tasks_mac_state ON tasks(mac, state);
    CREATE TABLE leases (
        ip TEXT PRIMARY KEY,
        mac TEXT NOT NULL,
        expires INTEGER NOT NULL
    );
    CREATE INDEX leases_mac ON leases(mac);",
    // 2: host groups (a host may be in any number of groups); what a task is about (image,
    // version pinned at creation, group it came from, not before), the agent's progress
    "CREATE TABLE groups (
        name TEXT PRIMARY KEY,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE group_members (
        grp TEXT NOT NULL REFERENCES groups(name) ON DELETE CASCADE,
        mac TEXT NOT NULL REFERENCES hosts(mac) ON DELETE CASCADE,
        PRIMARY KEY (grp, mac)
    );
    CREATE INDEX group_members_mac ON group_members(mac);
    ALTER TABLE tasks ADD COLUMN image TEXT;
    ALTER TABLE tasks ADD COLUMN version TEXT;
    ALTER TABLE tasks ADD COLUMN grp TEXT;
    ALTER TABLE tasks ADD COLUMN not_before INTEGER;
    ALTER TABLE tasks ADD COLUMN bytes_done INTEGER;
    ALTER TABLE tasks ADD COLUMN bytes_total INTEGER;
    ALTER TABLE tasks ADD COLUMN rate INTEGER;
    ALTER TABLE tasks ADD COLUMN eta INTEGER;
    ALTER TABLE tasks ADD COLUMN progress_at INTEGER;",
    // 3: host names (unique when set); per-image post-deploy settings
    "ALTER TABLE hosts ADD COLUMN name TEXT;
    CREATE UNIQUE INDEX hosts_name ON hosts(name) WHERE name IS NOT NULL;
    CREATE TABLE image_settings (
        image TEXT PRIMARY KEY,
        set_hostname INTEGER NOT NULL
    );",
    // 4: sites (schedule, relay token, what the relay last reported), hosts bound to sites,
    // pushes of image versions to sites and each site's progress
    "CREATE TABLE sites (
        name TEXT PRIMARY KEY,
        subnets TEXT NOT NULL DEFAULT '',
        tz TEXT NOT NULL DEFAULT 'UTC',
        windows TEXT NOT NULL DEFAULT 'always',
        rate INTEGER,
        incomplete TEXT NOT NULL DEFAULT 'wait',
        relay_token TEXT NOT NULL UNIQUE,
        relay_url TEXT,
        relay_version TEXT,
        last_heartbeat INTEGER,
        cache_bytes INTEGER,
        quota_bytes INTEGER,
        complete TEXT NOT NULL DEFAULT '[]',
        created_at INTEGER NOT NULL
    );
    ALTER TABLE hosts ADD COLUMN site TEXT;
    CREATE TABLE pushes (
        id INTEGER PRIMARY KEY,
        created_at INTEGER NOT NULL,
        state TEXT NOT NULL,
        windows TEXT,
        rate INTEGER,
        deadline INTEGER
    );
    CREATE TABLE push_versions (
        push INTEGER NOT NULL REFERENCES pushes(id) ON DELETE CASCADE,
        image TEXT NOT NULL,
        version TEXT NOT NULL,
        bytes INTEGER NOT NULL,
        PRIMARY KEY (push, image, version)
    );
    CREATE TABLE push_sites (
        push INTEGER NOT NULL REFERENCES pushes(id) ON DELETE CASCADE,
        site TEXT NOT NULL REFERENCES sites(name) ON DELETE CASCADE,
        state TEXT NOT NULL DEFAULT 'waiting',
        bytes_done INTEGER NOT NULL DEFAULT 0,
        bytes_total INTEGER,
        fetched INTEGER NOT NULL DEFAULT 0,
        rate INTEGER NOT NULL DEFAULT 0,
        detail TEXT,
        updated_at INTEGER,
        PRIMARY KEY (push, site)
    );
    CREATE TABLE site_images (
        site TEXT NOT NULL REFERENCES sites(name) ON DELETE CASCADE,
        image TEXT NOT NULL,
        PRIMARY KEY (site, image)
    );
    CREATE TABLE push_rules (
        id INTEGER PRIMARY KEY,
        created_at INTEGER NOT NULL,
        every TEXT NOT NULL,
        images TEXT NOT NULL,
        sites TEXT NOT NULL,
        windows TEXT,
        rate INTEGER,
        last_run INTEGER NOT NULL,
        last_push INTEGER
    );",
    // 5: room multicast sessions; a reimage task may belong to one
    "CREATE TABLE mcast_sessions (
        id INTEGER PRIMARY KEY,
        image TEXT NOT NULL,
        version TEXT NOT NULL,
        grp TEXT,
        receivers INTEGER NOT NULL,
        wait_secs INTEGER NOT NULL,
        max_rate INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        runs INTEGER NOT NULL DEFAULT 0,
        last_run_at INTEGER,
        last_report TEXT
    );
    ALTER TABLE tasks ADD COLUMN mcast INTEGER REFERENCES mcast_sessions(id);",
    // 6: hardware inventories (every boot's), events, hook runs, the GLPI forwarding queue
    "CREATE TABLE inventories (
        id INTEGER PRIMARY KEY,
        mac TEXT NOT NULL,
        received_at INTEGER NOT NULL,
        data TEXT NOT NULL
    );
    CREATE INDEX inventories_by_mac ON inventories(mac, id);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        at INTEGER NOT NULL,
        kind TEXT NOT NULL,
        mac TEXT,
        data TEXT NOT NULL
    );
    CREATE INDEX events_by_mac ON events(mac, id);
    CREATE TABLE hook_runs (
        id INTEGER PRIMARY KEY,
        event INTEGER NOT NULL REFERENCES events(id) ON DELETE CASCADE,
        hook TEXT NOT NULL,
        started_at INTEGER NOT NULL,
        ended_at INTEGER,
        outcome TEXT NOT NULL DEFAULT 'running',
        attempts INTEGER NOT NULL DEFAULT 0,
        detail TEXT
    );
    CREATE TABLE glpi_queue (
        id INTEGER PRIMARY KEY,
        mac TEXT NOT NULL,
        agent_id TEXT NOT NULL,
        body TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_at INTEGER NOT NULL,
        last_error TEXT
    );",
    // 7: a recurring push's own time zone (a tzdb name); NULL for rules made before it, which
    // keep the server's zone
    "ALTER TABLE push_rules ADD COLUMN tz TEXT;",
    // 8: an image whose captures need no staff approval before they become `latest`
    "ALTER TABLE image_settings ADD COLUMN auto_approve INTEGER NOT NULL DEFAULT 0;",
    // 9: boot credentials and agent sessions (one boot per MAC; hashes only), and the address
    // each MAC was last seen at by a DHCP service; hosts.boot_nonce is no longer used
    "CREATE TABLE boot_creds (
        mac TEXT PRIMARY KEY,
        cred_hash TEXT NOT NULL,
        ip TEXT NOT NULL,
        task INTEGER,
        issued_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        salt TEXT NOT NULL,
        session_hash TEXT,
        session_until INTEGER
    );
    CREATE TABLE dhcp_seen (
        mac TEXT PRIMARY KEY,
        ip TEXT NOT NULL,
        at INTEGER NOT NULL
    );
    UPDATE hosts SET boot_nonce = NULL;",
    // 10: a site's pushes without a scan of every push's sites (each heartbeat asks)
    "CREATE INDEX push_sites_by_site ON push_sites(site, push);",
    // 11: agent reports a site relay queued while its upstream was down, applied once
    "CREATE TABLE report_ids (
        id TEXT PRIMARY KEY,
        at INTEGER NOT NULL
    );",
    // 12: the site book a relay keeps to work alone (`sites::book`): a site's revision, raised
    // by triggers on any change to its hosts (site, registration, name) and their tasks, and each
    // host's revision of its last change, so a heartbeat carries only the hosts changed since;
    // both of a site's queries read small indexes (a covering one of its hosts, one of the
    // open tasks) rather than a page per host of a 40,000-host table
    "ALTER TABLE sites ADD COLUMN book_rev INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE hosts ADD COLUMN book_rev INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX hosts_by_site_rev ON hosts(site, book_rev, mac, registered_at);
    CREATE INDEX tasks_open ON tasks(mac) WHERE state IN ('pending','booting','running');
    CREATE TRIGGER book_host_changed AFTER UPDATE OF site, registered_at, name ON hosts
    WHEN old.site IS NOT new.site OR old.registered_at IS NOT new.registered_at
        OR old.name IS NOT new.name
    BEGIN
        UPDATE sites SET book_rev = book_rev + 1 WHERE name IN (old.site, new.site);
        UPDATE hosts SET book_rev = (SELECT book_rev FROM sites WHERE name = new.site)
            WHERE mac = new.mac AND new.site IS NOT NULL;
    END;
    CREATE TRIGGER book_task_added AFTER INSERT ON tasks
    BEGIN
        UPDATE sites SET book_rev = book_rev + 1
            WHERE name = (SELECT site FROM hosts WHERE mac = new.mac);
    END;
    CREATE TRIGGER book_task_changed AFTER UPDATE OF state, not_before, version ON tasks
    WHEN old.state IS NOT new.state OR old.not_before IS NOT new.not_before
        OR old.version IS NOT new.version
    BEGIN
        UPDATE sites SET book_rev = book_rev + 1
            WHERE name = (SELECT site FROM hosts WHERE mac = new.mac);
    END;
    CREATE TRIGGER book_task_removed AFTER DELETE ON tasks
    BEGIN
        UPDATE sites SET book_rev = book_rev + 1
            WHERE name = (SELECT site FROM hosts WHERE mac = old.mac);
    END;",
    // 13: how a UEFI machine with nothing to do leaves for its disk ("chain" or "exit"), set
    // on a host, a group or a site (NULL: inherit; `hosts::uefi_local`)
    "ALTER TABLE hosts ADD COLUMN uefi_local TEXT;
    ALTER TABLE groups ADD COLUMN uefi_local TEXT;
    ALTER TABLE sites ADD COLUMN uefi_local TEXT;",
    // 14: images whose captures and `image add`s keep every byte (`bootcast image raw`)
    "ALTER TABLE image_settings ADD COLUMN raw INTEGER NOT NULL DEFAULT 0;",
    // 15: the partition a restore grows onto a larger disk (`bootcast image post-deploy
    // --grow`; NULL: none)
    "ALTER TABLE image_settings ADD COLUMN grow INTEGER;",
    // 16: Wake-on-LAN orders (`wakes`): sent at `at` by the node serving the host's segment
    // (the server for hosts of no site, else the site's relay, through its site book)
    "CREATE TABLE wakes (
        id INTEGER PRIMARY KEY,
        mac TEXT NOT NULL REFERENCES hosts(mac) ON DELETE CASCADE,
        at INTEGER NOT NULL,
        task INTEGER,
        created INTEGER NOT NULL,
        sent_at INTEGER,
        sent_by TEXT
    );
    CREATE INDEX wakes_unsent ON wakes(at) WHERE sent_at IS NULL;
    CREATE TRIGGER book_wake_added AFTER INSERT ON wakes
    BEGIN
        UPDATE sites SET book_rev = book_rev + 1
            WHERE name = (SELECT site FROM hosts WHERE mac = new.mac);
    END;
    CREATE TRIGGER book_wake_sent AFTER UPDATE OF sent_at ON wakes
    WHEN old.sent_at IS NOT new.sent_at
    BEGIN
        UPDATE sites SET book_rev = book_rev + 1
            WHERE name = (SELECT site FROM hosts WHERE mac = new.mac);
    END;",
    // 17: recurring task rules (`bootcast task rule`): a cron schedule on a time zone's wall
    // clock, what to do to a host or a group, and how the last run went
    "CREATE TABLE task_rules (
        id INTEGER PRIMARY KEY,
        created_at INTEGER NOT NULL,
        kind TEXT NOT NULL,
        host TEXT,
        grp TEXT,
        image TEXT,
        multicast INTEGER NOT NULL DEFAULT 0,
        wake INTEGER NOT NULL DEFAULT 1,
        every TEXT NOT NULL,
        tz TEXT NOT NULL,
        last_run INTEGER NOT NULL,
        last_outcome TEXT,
        failed INTEGER NOT NULL DEFAULT 0,
        after_task TEXT
    );",
    // 18: what a machine does once its task is over (`--then`: reboot, poweroff, stay), set
    // on a task, or on a group for the tasks made for it (NULL: the group's, else reboot)
    "ALTER TABLE tasks ADD COLUMN after_task TEXT;
    ALTER TABLE groups ADD COLUMN after_task TEXT;",
    // 19: a machine's identity beyond its MAC (SMBIOS system UUID, vendor, model, serial, as
    // its agent reports them); hosts retired by `host replace` (or by the same machine coming
    // back with another NIC), marked broken, or waiting for a staff approval of their
    // registration rule; the registration rules (zero-touch: what a new machine gets)
    "ALTER TABLE hosts ADD COLUMN smbios_uuid TEXT;
    ALTER TABLE hosts ADD COLUMN vendor TEXT;
    ALTER TABLE hosts ADD COLUMN model TEXT;
    ALTER TABLE hosts ADD COLUMN serial TEXT;
    ALTER TABLE hosts ADD COLUMN retired_at INTEGER;
    ALTER TABLE hosts ADD COLUMN replaced_by TEXT;
    ALTER TABLE hosts ADD COLUMN broken_at INTEGER;
    ALTER TABLE hosts ADD COLUMN pending_rule INTEGER;
    CREATE INDEX hosts_by_uuid ON hosts(smbios_uuid) WHERE smbios_uuid IS NOT NULL;
    CREATE TABLE registration_rules (
        id INTEGER PRIMARY KEY,
        created_at INTEGER NOT NULL,
        site TEXT,
        subnet TEXT,
        model TEXT,
        serial TEXT,
        grp TEXT,
        name_pattern TEXT,
        image TEXT,
        approval INTEGER NOT NULL DEFAULT 0,
        replace_broken INTEGER NOT NULL DEFAULT 0,
        after_task TEXT
    );
    CREATE TRIGGER book_task_moved AFTER UPDATE OF mac ON tasks
    WHEN old.mac IS NOT new.mac
    BEGIN
        UPDATE sites SET book_rev = book_rev + 1
            WHERE name IN (SELECT site FROM hosts WHERE mac IN (old.mac, new.mac));
    END;
    CREATE TRIGGER book_host_retired AFTER UPDATE OF retired_at ON hosts
    WHEN old.retired_at IS NOT new.retired_at
    BEGIN
        UPDATE sites SET book_rev = book_rev + 1 WHERE name = new.site;
    END;",
    // 20: a task rule's next run made ahead of its hour (tasks and wake orders timed for it,
    // so a site's relay holds them even if its WAN link is down at that hour): the tick it was
    // made for and what was made; the tasks a rule made
    "ALTER TABLE task_rules ADD COLUMN prepared INTEGER;
    ALTER TABLE task_rules ADD COLUMN prepared_outcome TEXT;
    ALTER TABLE tasks ADD COLUMN rule_id INTEGER;",
    // 21: the switch port (DHCP option 82 circuit id) a machine was last seen behind, and
    // registration rules that match on it
    "ALTER TABLE dhcp_seen ADD COLUMN circuit TEXT;
    ALTER TABLE hosts ADD COLUMN circuit TEXT;
    ALTER TABLE registration_rules ADD COLUMN circuit TEXT;",
    // 22: staff: accounts (local, or from the directory at their login), personal API
    // tokens and browser sessions (stored as SHA-256 of the secret), and the audit trail
    "CREATE TABLE users (
        name TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        sites TEXT NOT NULL DEFAULT '',
        password TEXT,
        source TEXT NOT NULL DEFAULT 'local',
        created INTEGER NOT NULL,
        last_login INTEGER
    );
    CREATE TABLE user_tokens (
        id INTEGER PRIMARY KEY,
        user TEXT NOT NULL,
        hash TEXT NOT NULL UNIQUE,
        label TEXT,
        created INTEGER NOT NULL,
        last_used INTEGER
    );
    CREATE INDEX user_tokens_user ON user_tokens(user);
    CREATE TABLE staff_sessions (
        hash TEXT PRIMARY KEY,
        user TEXT NOT NULL,
        role TEXT NOT NULL,
        sites TEXT NOT NULL,
        csrf TEXT NOT NULL,
        created INTEGER NOT NULL,
        expires INTEGER NOT NULL,
        from_addr TEXT
    );
    CREATE INDEX staff_sessions_user ON staff_sessions(user);
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at INTEGER NOT NULL,
        user TEXT NOT NULL,
        from_addr TEXT,
        action TEXT NOT NULL,
        detail TEXT,
        status INTEGER
    );
    CREATE INDEX audit_at ON audit(at);
    CREATE INDEX audit_user ON audit(user, at);
    CREATE INDEX tasks_by_state ON tasks(state, updated_at);
    CREATE INDEX hosts_active_by_site ON hosts(site) WHERE retired_at IS NULL;",
    // 23: a trigram index of the host fields staff search (MAC, name, address, model,
    // serial), kept by triggers; multicast sessions' tasks by session; samples of
    // each site's push progress (the night's curve). Its rows are keyed by host_search_ids, not by the hosts'
    // implicit rowids, which a VACUUM (and a backup's VACUUM INTO) may renumber.
    "CREATE TABLE host_search_ids (
        id INTEGER PRIMARY KEY,
        mac TEXT NOT NULL UNIQUE
    );
    CREATE VIRTUAL TABLE host_search USING fts5(
        mac, name, last_ip, model, serial, tokenize = 'trigram'
    );
    INSERT INTO host_search_ids(mac) SELECT mac FROM hosts ORDER BY mac;
    INSERT INTO host_search(rowid, mac, name, last_ip, model, serial)
        SELECT i.id, h.mac, h.name, h.last_ip, h.model, h.serial
        FROM hosts h JOIN host_search_ids i ON i.mac = h.mac;
    CREATE TRIGGER host_search_insert AFTER INSERT ON hosts BEGIN
        INSERT INTO host_search_ids(mac) VALUES (new.mac);
        INSERT INTO host_search(rowid, mac, name, last_ip, model, serial)
            VALUES ((SELECT id FROM host_search_ids WHERE mac = new.mac),
                    new.mac, new.name, new.last_ip, new.model, new.serial);
    END;
    CREATE TRIGGER host_search_update AFTER UPDATE OF name, last_ip, model, serial ON hosts
    WHEN old.name IS NOT new.name OR old.last_ip IS NOT new.last_ip
        OR old.model IS NOT new.model OR old.serial IS NOT new.serial
    BEGIN
        DELETE FROM host_search
            WHERE rowid = (SELECT id FROM host_search_ids WHERE mac = new.mac);
        INSERT INTO host_search(rowid, mac, name, last_ip, model, serial)
            VALUES ((SELECT id FROM host_search_ids WHERE mac = new.mac),
                    new.mac, new.name, new.last_ip, new.model, new.serial);
    END;
    CREATE TRIGGER host_search_delete AFTER DELETE ON hosts BEGIN
        DELETE FROM host_search
            WHERE rowid = (SELECT id FROM host_search_ids WHERE mac = old.mac);
        DELETE FROM host_search_ids WHERE mac = old.mac;
    END;
    CREATE INDEX tasks_by_mcast ON tasks(mcast) WHERE mcast IS NOT NULL;
    CREATE TABLE push_samples (
        push INTEGER NOT NULL REFERENCES pushes(id) ON DELETE CASCADE,
        site TEXT NOT NULL,
        at INTEGER NOT NULL,
        bytes_done INTEGER NOT NULL,
        bytes_total INTEGER NOT NULL,
        PRIMARY KEY (push, site, at)
    ) WITHOUT ROWID;",
];

/// Reader connections a file database keeps beside its writer.
const READERS: usize = 4;

/// A handle to the database; cheap to clone.
///
/// One writer connection (every change goes through it, one transaction at a time, as
/// SQLite allows) and, for a file database, a pool of [`READERS`] read-only connections: in
/// WAL mode a reader sees the last committed state and neither waits for the writer nor
/// holds it up, so a staff listing of 40,000 hosts does not stall the boots being recorded.
#[derive(Clone)]
pub struct Db {
    conn: Arc<Mutex<Connection>>,
    /// Writes of [`Db::call`] waiting for the writer: whoever takes the writer next runs all
    /// of them in one transaction (group commit).
    pending: Arc<Mutex<Vec<Job>>>,
    /// Writes run / transactions committed for them (`/metrics`).
    pub stats: Arc<WriteStats>,
    /// A file database's path and its readers, opened at the first read or checkpoint (a CLI
    /// command that only writes opens none); `None`: in memory.
    readers: Option<Arc<(PathBuf, std::sync::OnceLock<Readers>)>>,
}

/// One write of [`Db::call`]: runs on the writer, says whether it succeeded (else its changes
/// are rolled back), and hands back what to do once the transaction is over (answer the
/// caller with its result, or with the commit's error).
type Job = Box<dyn FnOnce(&mut Connection) -> (bool, Answer) + Send>;
type Answer = Box<dyn FnOnce(Option<&str>) + Send>;

/// Counters of the grouped writer.
#[derive(Default)]
pub struct WriteStats {
    /// Writes run through [`Db::call`].
    pub writes: crate::metrics::Counter,
    /// Transactions they were committed in (fewer than writes when writes came together).
    pub commits: crate::metrics::Counter,
}

impl WriteStats {
    /// Registers the counters in `reg`.
    pub fn register(&self, reg: &mut crate::metrics::Registry) {
        reg.register(
            "bootcast_db_writes",
            "Database writes of requests (reports, heartbeats, boots), run through the grouped writer",
            self.writes.clone(),
        );
        reg.register(
            "bootcast_db_commits",
            "Transactions those writes were committed in (writes that came together share one)",
            self.commits.clone(),
        );
    }
}

/// Most writes one transaction takes: a longer batch would keep a reader's view (and the WAL)
/// growing for nothing.
const MAX_BATCH: usize = 256;

/// The read-only connections, handed out round-robin (a busy one is skipped), and the
/// connection that checkpoints the WAL.
struct Readers {
    conns: Vec<Mutex<Connection>>,
    next: std::sync::atomic::AtomicUsize,
    checkpointer: Mutex<Connection>,
}

impl Readers {
    fn open(path: &Path) -> Result<Readers, DbError> {
        use rusqlite::OpenFlags;
        let open_err = |cause| DbError::Open {
            path: path.to_path_buf(),
            cause,
        };
        let mut conns = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let c = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(open_err)?;
            c.busy_timeout(std::time::Duration::from_secs(10))
                .map_err(open_err)?;
            c.pragma_update(None, "query_only", "ON")
                .map_err(open_err)?;
            conns.push(Mutex::new(c));
        }
        let checkpointer = Connection::open(path).map_err(open_err)?;
        checkpointer
            .busy_timeout(std::time::Duration::from_secs(10))
            .map_err(open_err)?;
        Ok(Readers {
            conns,
            next: std::sync::atomic::AtomicUsize::new(0),
            checkpointer: Mutex::new(checkpointer),
        })
    }

    fn get(&self) -> MutexGuard<'_, Connection> {
        let n = self.conns.len();
        let first = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for i in 0..n {
            if let Ok(g) = self.conns[(first + i) % n].try_lock() {
                return g;
            }
        }
        self.conns[first % n]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

impl Db {
    /// Opens (creating if needed) `path` and runs pending migrations.
    pub fn open(path: &Path) -> Result<Db, DbError> {
        let open_err = |cause| DbError::Open {
            path: path.to_path_buf(),
            cause,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(open_err)?;
        let mut db = Self::init(conn, path)?;
        db.readers = Some(Arc::new((path.to_path_buf(), std::sync::OnceLock::new())));
        Ok(db)
    }

    /// The readers of a file database, opened now if this is the first use.
    fn readers(&self) -> Result<Option<&Readers>, DbError> {
        let Some(lazy) = &self.readers else {
            return Ok(None);
        };
        let (path, once) = &**lazy;
        if once.get().is_none() {
            // two first uses at once both open; the one that loses drops its connections
            let _ = once.set(Readers::open(path)?);
        }
        Ok(once.get())
    }

    /// Moves the WAL's committed pages into the database file from a connection of its own
    /// (`PRAGMA wal_checkpoint(PASSIVE)`: it waits for no reader or writer, and no writer
    /// waits for it). A long-running server calls it every second after
    /// [`Db::checkpoint_in_background`]; without it, the writer checkpoints when the WAL
    /// passes 1000 pages, inside whichever commit crosses it, and that request waits for the
    /// file system's sync (and every other write behind it). An in-memory database has no WAL.
    pub fn checkpoint(&self) -> Result<(), DbError> {
        if let Some(r) = self.readers()? {
            r.checkpointer
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                .what("checkpoint")?;
        }
        Ok(())
    }

    /// From now on commits do not checkpoint the WAL themselves: the caller runs
    /// [`Db::checkpoint`] regularly (the server does, every second).
    pub fn checkpoint_in_background(&self) -> Result<(), DbError> {
        self.lock()
            .pragma_update(None, "wal_autocheckpoint", 0)
            .what("wal_autocheckpoint")
    }

    /// A private in-memory database (tests); reads go through the one connection.
    pub fn open_in_memory() -> Result<Db, DbError> {
        let conn = Connection::open_in_memory().map_err(|cause| DbError::Open {
            path: ":memory:".into(),
            cause,
        })?;
        Self::init(conn, Path::new(":memory:"))
    }

    fn init(mut conn: Connection, path: &Path) -> Result<Db, DbError> {
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(|cause| DbError::Open {
                path: path.to_path_buf(),
                cause,
            })?;
        let found: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|cause| DbError::Open {
                path: path.to_path_buf(),
                cause,
            })?;
        let known = MIGRATIONS.len() as i64;
        if found > known {
            return Err(DbError::TooNew {
                path: path.to_path_buf(),
                found,
                known,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            let step = i + 1;
            let tx = conn
                .transaction()
                .map_err(|cause| DbError::Migrate { step, cause })?;
            tx.execute_batch(sql)
                .and_then(|_| tx.pragma_update(None, "user_version", step as i64))
                .and_then(|_| tx.commit())
                .map_err(|cause| DbError::Migrate { step, cause })?;
        }
        sites::hash_plain_tokens(&conn)?;
        Ok(Db {
            conn: Arc::new(Mutex::new(conn)),
            pending: Default::default(),
            stats: Default::default(),
            readers: None,
        })
    }

    /// The writer connection, for synchronous callers (CLI, tests, the blocking pool).
    pub fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (transactions
        // roll back on drop), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the blocking pool with the writer connection (async callers): every
    /// change, and reads that must see the writer's own uncommitted state.
    ///
    /// Writes that arrive together are committed together: `f` joins the queue of writes
    /// waiting for the writer, and whoever takes the writer next runs the whole queue (at
    /// most [`MAX_BATCH`]) in one transaction, each write in a savepoint of its own: a write
    /// that fails (or panics) is rolled back alone, and every caller gets its own result once
    /// the transaction is committed. A storm of progress reports, heartbeats and boots costs
    /// one commit per batch instead of one per request. `f` may open transactions of its own
    /// only as savepoints (`Connection::savepoint`).
    pub async fn call<T, F>(&self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, DbError> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel::<Result<T, DbError>>();
        let job: Job = Box::new(move |c| {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(c))).unwrap_or_else(
                |p| {
                    let why = p
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    Err(DbError::Join(format!("a database write panicked: {why}")))
                },
            );
            let ok = r.is_ok();
            let answer: Answer = Box::new(move |commit_failed| {
                let _ = tx.send(match commit_failed {
                    Some(e) if ok => Err(DbError::Commit(e.to_string())),
                    _ => r,
                });
            });
            (ok, answer)
        });
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(job);
        let db = self.clone();
        tokio::task::spawn_blocking(move || db.run_pending())
            .await
            .map_err(|e| DbError::Join(e.to_string()))?;
        rx.await
            .map_err(|_| DbError::Join("the database write was dropped".into()))?
    }

    /// Takes the writer and runs the writes waiting for it (see [`Db::call`]); nothing when
    /// another thread already ran them.
    fn run_pending(&self) {
        let mut conn = self.lock();
        loop {
            let jobs: Vec<Job> = {
                let mut q = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                let n = q.len().min(MAX_BATCH);
                q.drain(..n).collect()
            };
            if jobs.is_empty() {
                return;
            }
            self.stats.writes.inc_by(jobs.len() as u64);
            // alone, or no batch can begin (a transaction left open; the database busy past
            // its timeout): each write as it is, in its own transaction
            if jobs.len() == 1
                || !conn.is_autocommit()
                || conn.execute_batch("BEGIN IMMEDIATE").is_err()
            {
                self.stats.commits.inc_by(jobs.len() as u64);
                for job in jobs {
                    let (_, answer) = job(&mut conn);
                    answer(None);
                }
                continue;
            }
            self.stats.commits.inc();
            let mut answers: Vec<Answer> = Vec::with_capacity(jobs.len());
            for job in jobs {
                if conn.is_autocommit() {
                    // SQLite rolled the whole batch back (disk full, I/O error): the writes so
                    // far are lost; the rest go on in a new transaction
                    let lost = std::mem::take(&mut answers);
                    tracing::error!("a batch of {} writes was rolled back by SQLite", lost.len());
                    for answer in lost {
                        answer(Some("rolled back by SQLite (disk full or I/O error?)"));
                    }
                    let _ = conn.execute_batch("BEGIN IMMEDIATE");
                }
                let saved = conn.execute_batch("SAVEPOINT w");
                let (ok, answer) = job(&mut conn);
                if saved.is_ok() && !conn.is_autocommit() {
                    let end = if ok {
                        "RELEASE w"
                    } else {
                        "ROLLBACK TO w; RELEASE w"
                    };
                    if let Err(e) = conn.execute_batch(end) {
                        tracing::error!("ending a write's savepoint: {e}");
                    }
                }
                answers.push(answer);
            }
            let failed = conn.execute_batch("COMMIT").err().map(|e| {
                tracing::error!("committing a batch of {} writes: {e}", answers.len());
                let _ = conn.execute_batch("ROLLBACK");
                e.to_string()
            });
            for answer in answers {
                answer(failed.as_deref());
            }
        }
    }

    /// Runs `f` on the blocking pool with a read-only connection: it sees the last committed
    /// state and does not wait for the writer (an in-memory database has no readers: `f`
    /// gets the writer). A write from `f` fails (`query_only`).
    pub async fn read<T, F>(&self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, DbError> + Send + 'static,
    {
        let db = self.clone();
        tokio::task::spawn_blocking(move || match db.readers()? {
            Some(r) => f(&r.get()),
            None => f(&db.lock()),
        })
        .await
        .map_err(|e| DbError::Join(e.to_string()))?
    }

    /// The schema version (number of migrations applied).
    pub fn schema_version(&self) -> Result<i64, DbError> {
        self.lock()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .what("schema version")
    }
}

/// `DATA/bootcast.db`.
pub fn path(data: &Path) -> PathBuf {
    data.join("bootcast.db")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes that arrive while the writer is busy are committed in one transaction; one that
    /// fails or panics is rolled back alone and its caller gets the error, the others commit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[allow(clippy::await_holding_lock)] // the writer is held on purpose while writes queue
    async fn writes_that_arrive_together_share_one_commit_and_fail_alone() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("x.db")).unwrap();
        db.call(|c| {
            c.execute_batch("CREATE TABLE t (n INTEGER PRIMARY KEY)")
                .what("create")
        })
        .await
        .unwrap();
        let (writes, commits) = (db.stats.writes.get(), db.stats.commits.get());
        // the writer is busy (held here) while 50 writes arrive
        let held = db.lock();
        let mut calls = Vec::new();
        for n in 0..50i64 {
            let db = db.clone();
            calls.push(tokio::spawn(async move {
                db.call(move |c| {
                    c.execute("INSERT INTO t (n) VALUES (?1)", [n])
                        .what("insert")?;
                    match n {
                        // a write that fails after a change: its change goes too
                        7 => c
                            .execute("INSERT INTO nowhere (n) VALUES (0)", [])
                            .what("again"),
                        13 => panic!("write 13 panics"),
                        _ => Ok(1),
                    }
                })
                .await
            }));
        }
        while db.pending.lock().unwrap().len() < 50 {
            tokio::task::yield_now().await;
        }
        drop(held);
        let mut failed = Vec::new();
        for (n, call) in calls.into_iter().enumerate() {
            if let Err(e) = call.await.unwrap() {
                failed.push((n, e.to_string()));
            }
        }
        assert_eq!(failed.len(), 2, "{failed:?}");
        assert_eq!(failed[0].0, 7);
        assert!(failed[0].1.contains("again"), "{failed:?}");
        assert_eq!(failed[1].0, 13);
        assert!(failed[1].1.contains("write 13 panics"), "{failed:?}");
        let rows: Vec<i64> = db
            .read(|c| {
                let mut st = c.prepare("SELECT n FROM t ORDER BY n").what("select")?;
                let rows = st.query_map([], |r| r.get(0)).what("select")?;
                rows.collect::<Result<_, _>>().what("select")
            })
            .await
            .unwrap();
        let want: Vec<i64> = (0..50).filter(|n| *n != 7 && *n != 13).collect();
        assert_eq!(rows, want);
        assert_eq!(db.stats.writes.get() - writes, 50);
        assert_eq!(db.stats.commits.get() - commits, 1);
    }

    #[test]
    fn migrations_run_once_and_newer_schemas_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.db");
        let db = Db::open(&p).unwrap();
        assert_eq!(db.schema_version().unwrap(), MIGRATIONS.len() as i64);
        drop(db);
        // reopening does not rerun migrations (they would fail: tables exist)
        let db = Db::open(&p).unwrap();
        db.lock().pragma_update(None, "user_version", 99).unwrap();
        drop(db);
        let e = Db::open(&p).err().unwrap();
        assert!(e.to_string().contains("newer than this bootcast"), "{e}");
    }

    #[test]
    fn readers_see_committed_state_while_a_write_is_open_and_cannot_write() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("x.db")).unwrap();
        db.lock()
            .execute(
                "INSERT INTO groups (name, created_at) VALUES ('committed', 1)",
                [],
            )
            .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        async fn names(db: Db) -> Result<Vec<String>, DbError> {
            db.read(|c| {
                let mut st = c.prepare("SELECT name FROM groups ORDER BY name").unwrap();
                let rows = st.query_map([], |r| r.get::<_, String>(0)).unwrap();
                Ok(rows.map(Result::unwrap).collect::<Vec<String>>())
            })
            .await
        }
        // the writer is held, inside an open transaction with an uncommitted row
        let mut writer = db.lock();
        let tx = writer.transaction().unwrap();
        tx.execute(
            "INSERT INTO groups (name, created_at) VALUES ('uncommitted', 2)",
            [],
        )
        .unwrap();
        let (send, got) = std::sync::mpsc::channel();
        let reader = db.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let _ = send.send(rt.block_on(names(reader)));
        });
        // (a reader that waited for the writer would never answer while the test holds it)
        let seen = got
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("a read while the writer is held answers")
            .unwrap();
        assert_eq!(seen, vec!["committed".to_string()]);
        tx.commit().unwrap();
        drop(writer);
        let seen = rt.block_on(names(db.clone())).unwrap();
        assert_eq!(
            seen,
            vec!["committed".to_string(), "uncommitted".to_string()]
        );
        // a reader cannot write
        let e = rt
            .block_on(db.read(|c| {
                c.execute("DELETE FROM groups", [])
                    .what("delete through a reader")
            }))
            .unwrap_err();
        assert!(
            e.to_string().contains("readonly") || e.to_string().contains("read"),
            "{e}"
        );
    }

    #[test]
    fn a_version_1_database_keeps_its_tasks_through_migration_2() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v1.db");
        {
            let c = Connection::open(&p).unwrap();
            c.execute_batch(MIGRATIONS[0]).unwrap();
            c.pragma_update(None, "user_version", 1).unwrap();
            c.execute_batch(
                "INSERT INTO hosts (mac, first_boot, last_boot) VALUES ('52:54:00:00:00:01', 1, 1);
                 INSERT INTO tasks (mac, kind, state, created_at, updated_at)
                 VALUES ('52:54:00:00:00:01', 'reimage', 'pending', 2, 2);",
            )
            .unwrap();
        }
        let db = Db::open(&p).unwrap();
        assert_eq!(db.schema_version().unwrap(), MIGRATIONS.len() as i64);
        let c = db.lock();
        let t = tasks::list(&c, None, true).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!((t[0].state, t[0].created_at), (TaskState::Pending, 2));
        assert_eq!((t[0].image.as_deref(), t[0].not_before), (None, None));
        assert!(t[0].progress.is_none());
        assert!(groups::list(&c).unwrap().is_empty());
    }

    #[test]
    fn a_rule_made_before_migration_7_keeps_the_servers_zone() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v6.db");
        {
            let c = Connection::open(&p).unwrap();
            for sql in &MIGRATIONS[..6] {
                c.execute_batch(sql).unwrap();
            }
            c.pragma_update(None, "user_version", 6).unwrap();
            c.execute_batch(
                "INSERT INTO push_rules (created_at, every, images, sites, last_run)
                 VALUES (1, '0 20 * * *', '[\"win11\"]', '[\"all\"]', 1);",
            )
            .unwrap();
        }
        let db = Db::open(&p).unwrap();
        let c = db.lock();
        let r = pushes::rules(&c).unwrap();
        assert_eq!(
            (r[0].every.as_str(), r[0].tz.as_deref()),
            ("0 20 * * *", None)
        );
        let mut rule = r[0].clone();
        rule.tz = Some("Europe/Paris".into());
        pushes::create_rule(&c, &rule).unwrap();
        assert_eq!(
            pushes::rules(&c).unwrap()[1].tz.as_deref(),
            Some("Europe/Paris")
        );
    }
}

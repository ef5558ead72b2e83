//! `bootcast agent boot`: the first thing the agent does in the boot environment.
//!
//! Started by the initramfs `/init` once the network is up (see [`crate::bootenv`]), it
//! - reads `/proc/cmdline` ([`KernelArgs`]): the server is `bootcast.server=URL` (required;
//!   an IP address, as the static agent has no DNS resolver it can count on), the boot MAC
//!   `bootcast.mac=MAC`, the task `bootcast.task=N`;
//! - describes the machine: the MAC is `bootcast.mac`, else the address of the interface `/init`
//!   configured (`--interface`), else that of the default route's interface; firmware is UEFI
//!   when `/sys/firmware/efi` exists, else BIOS; arch is `uname -m`; boot time is `btime` from
//!   `/proc/stat`;
//! - posts a [`Hello`] to `SERVER/api/v1/agent/hello`, retrying with exponential backoff
//!   (default 10 tries, 1 s doubling to at most 10 s, 10 s per request) on connection errors
//!   and non-2xx answers; prints `BOOTCAST-AGENT-HELLO-OK <mac>` on the console;
//! - runs the task the reply names: a reimage ([`super::restore`]) or a capture
//!   ([`super::capture`]), printing `BOOTCAST-AGENT-{REIMAGE,CAPTURE}-{DONE,FAILED} ...`;
//! - performs the [`HelloReply`]: prints `BOOTCAST-AGENT-ACTION <action>`, waits until the
//!   consoles have sent their output (`tcdrain`), syncs, and calls `reboot(2)` itself (power
//!   off or restart).
//!
//! Its lines go to stdout (`/dev/console` under `/init`) and, with `all_consoles`, also to the
//! other consoles in `/sys/class/tty/console/active` (e.g. the screen `tty0` when `ttyS0` is
//! `/dev/console`). The agent runs as root, a child of `/init`, so
//!   it has the capability; if the call fails, the agent exits with an error and `/init` prints
//!   `BOOTCAST-AGENT-ERROR` and opens a shell.
//!
//! Everything host-specific is in [`BootConfig`] so that tests run it against a fake procfs /
//! sysfs and a local HTTP stub, with `act: false`.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::proto::agent::{After, Firmware, Hello, HelloAnswer, HelloReply, KernelArgs};
use crate::retry::Backoff;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("no bootcast.server= on the kernel command line ({0})")]
    NoServer(String),
    #[error("cannot determine the MAC address: {0}")]
    NoMac(String),
    #[error("read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Parse(String),
    #[error("hello to {url} failed after {tries} tries: {last}")]
    Hello {
        url: String,
        tries: u32,
        last: String,
    },
    #[error("{action} failed")]
    Act {
        action: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("HTTP client: {0}")]
    Client(String),
}

pub type Result<T> = std::result::Result<T, AgentError>;

/// Where the agent looks, and how it behaves. `BootConfig::default()` is the real thing.
#[derive(Debug, Clone)]
pub struct BootConfig {
    /// procfs mount point (`/proc`).
    pub proc: PathBuf,
    /// sysfs mount point (`/sys`).
    pub sys: PathBuf,
    /// Server base URL, overriding `bootcast.server=`.
    pub server: Option<String>,
    /// The interface `/init` configured.
    pub interface: Option<String>,
    /// Hello attempts before giving up.
    pub tries: u32,
    /// First retry delay; doubles up to `max_backoff` ([`Backoff`]).
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Perform the reply (sync + reboot(2)); false: only return it.
    pub act: bool,
    /// Also write to the consoles other than `/dev/console` (device nodes under `dev`).
    pub all_consoles: bool,
    /// devtmpfs mount point (`/dev`).
    pub dev: PathBuf,
}

impl Default for BootConfig {
    fn default() -> Self {
        BootConfig {
            proc: "/proc".into(),
            sys: "/sys".into(),
            server: None,
            interface: None,
            tries: 10,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
            timeout: Duration::from_secs(10),
            act: true,
            all_consoles: false,
            dev: "/dev".into(),
        }
    }
}

/// Where the agent's lines go: stdout, plus the other kernel consoles with `all_consoles`.
pub struct Console {
    others: Vec<File>,
}

impl Console {
    pub fn open(cfg: &BootConfig) -> Console {
        let mut others = Vec::new();
        if cfg.all_consoles {
            let active =
                fs::read_to_string(cfg.sys.join("class/tty/console/active")).unwrap_or_default();
            let names: Vec<&str> = active.split_whitespace().collect();
            // The last one is /dev/console, which is stdout.
            for name in names.iter().take(names.len().saturating_sub(1)) {
                if let Ok(f) = OpenOptions::new().write(true).open(cfg.dev.join(name)) {
                    others.push(f);
                }
            }
        }
        Console { others }
    }

    pub fn line(&mut self, text: &str) {
        println!("{text}");
        for f in &mut self.others {
            let _ = writeln!(f, "{text}");
        }
    }

    /// Waits until terminals have transmitted what was written (before a power off).
    pub fn drain(&mut self) {
        let _ = std::io::stdout().flush();
        let _ = nix::sys::termios::tcdrain(std::io::stdout());
        for f in &self.others {
            let _ = nix::sys::termios::tcdrain(f);
        }
    }
}

fn read(path: PathBuf) -> Result<String> {
    fs::read_to_string(&path).map_err(|source| AgentError::Read { path, source })
}

/// The server URL, the [`Hello`] this machine sends, and the kernel command line's
/// `bootcast.*` words it came from.
pub fn describe(cfg: &BootConfig) -> Result<(String, Hello, KernelArgs)> {
    let cmdline = read(cfg.proc.join("cmdline"))?;
    let args = KernelArgs::parse(&cmdline);
    let server = cfg
        .server
        .clone()
        .or(args.server.clone())
        .ok_or_else(|| AgentError::NoServer(cmdline.trim().to_string()))?;
    let mac = match &args.mac {
        Some(m) => m.clone(),
        None => interface_mac(cfg)?,
    };
    let firmware = if cfg.sys.join("firmware/efi").exists() {
        Firmware::Uefi
    } else {
        Firmware::Bios
    };
    let stat = read(cfg.proc.join("stat"))?;
    let boot_time = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| AgentError::Parse("no btime in /proc/stat".into()))?;
    let arch = nix::sys::utsname::uname()
        .map(|u| u.machine().to_string_lossy().into_owned())
        .unwrap_or_else(|_| std::env::consts::ARCH.to_string());
    Ok((
        server.trim_end_matches('/').to_string(),
        Hello {
            protocol: crate::proto::agent::AGENT_PROTOCOL,
            mac,
            arch,
            firmware,
            boot_time,
            task: args.task,
            credential: args.credential.clone(),
            smbios: smbios_identity(cfg),
        },
        args,
    ))
}

/// The machine's SMBIOS identity for the hello (`None`: no table, or nothing in it).
fn smbios_identity(cfg: &BootConfig) -> Option<crate::proto::agent::Smbios> {
    let s = crate::inventory::collect::system(cfg.sys.parent().unwrap_or(&cfg.sys))?;
    let id = crate::proto::agent::Smbios {
        uuid: s.uuid,
        vendor: s.vendor,
        model: s.model,
        serial: s.serial,
    };
    (id != Default::default()).then_some(id)
}

/// MAC of `--interface`, else of the interface holding the default route.
fn interface_mac(cfg: &BootConfig) -> Result<String> {
    let iface = match &cfg.interface {
        Some(i) => i.clone(),
        None => crate::inventory::collect::default_route_interface(&cfg.proc).ok_or_else(|| {
            AgentError::NoMac(
                "no bootcast.mac= on the kernel command line, no --interface and no default route"
                    .into(),
            )
        })?,
    };
    let mac = read(cfg.sys.join("class/net").join(&iface).join("address"))?;
    Ok(mac.trim().to_ascii_lowercase())
}

/// Posts `hello` to `server` until it answers 2xx with a reply, at most `cfg.tries` times.
pub async fn post_hello(
    cfg: &BootConfig,
    server: &str,
    hello: &Hello,
    console: &mut Console,
) -> Result<HelloAnswer> {
    let url = format!("{server}/api/v1/agent/hello");
    let client = reqwest::Client::builder()
        .timeout(cfg.timeout)
        .no_proxy()
        .build()
        .map_err(|e| AgentError::Client(e.to_string()))?;
    let tries = cfg.tries.max(1);
    let backoff = Backoff::new(cfg.backoff, cfg.max_backoff).tries(tries);
    let (result, made) = backoff
        .run_async(
            |_| async {
                let resp = client
                    .post(&url)
                    .json(hello)
                    .send()
                    .await
                    .map_err(|e| (false, chain(&e)))?;
                let status = resp.status();
                if !status.is_success() {
                    let body = resp.text().await.unwrap_or_default();
                    // a 4xx will not change on retry (bad MAC, stale credential): give up at once
                    return Err((
                        status.is_client_error(),
                        format!("HTTP {status}: {}", body.trim()),
                    ));
                }
                resp.json::<HelloAnswer>()
                    .await
                    .map_err(|e| (false, format!("bad reply: {}", chain(&e))))
            },
            |(permanent, e), f| {
                console.line(&format!(
                    "bootcast-agent: hello attempt {} of {tries} to {url}: {e}",
                    f.attempt
                ));
                !permanent
            },
        )
        .await;
    result.map_err(|(_, last)| AgentError::Hello {
        url: url.clone(),
        tries: made,
        last,
    })
}

/// Collects this machine's inventory ([`crate::inventory::collect`]) and posts it with the
/// boot's session. A failure is logged on the console; the boot goes on.
pub async fn send_inventory(
    cfg: &BootConfig,
    server: &str,
    (hello, session): (&Hello, &str),
    console: &mut Console,
) {
    let root = cfg.sys.parent().unwrap_or(Path::new("/")).to_path_buf();
    let mac = hello.mac.clone();
    let now = crate::time::now_unix();
    let inventory = crate::inventory::collect::collect(&root, &mac, now);
    for w in &inventory.warnings {
        console.line(&format!("bootcast-agent: inventory: {w}"));
    }
    let report = crate::proto::agent::InventoryReport {
        mac: hello.mac.clone(),
        session: session.to_string(),
        inventory,
    };
    let sent = async {
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .no_proxy()
            .build()
            .map_err(|e| e.to_string())?;
        let resp = client
            .post(format!("{server}/api/v1/agent/inventory"))
            .json(&report)
            .send()
            .await
            .map_err(|e| chain(&e))?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(format!("HTTP {status}: {}", body.trim()));
        }
        resp.json::<crate::proto::agent::InventoryAck>()
            .await
            .map_err(|e| format!("bad reply: {}", chain(&e)))
    }
    .await;
    match sent {
        Ok(ack) => console.line(&format!(
            "BOOTCAST-AGENT-INVENTORY-OK {} {} disks, {} MiB memory; changes: {}",
            hello.mac,
            report.inventory.storage.len(),
            report.inventory.memory_mib(),
            if ack.changes.is_empty() {
                "none".to_string()
            } else {
                ack.changes.join(",")
            }
        )),
        Err(e) => console.line(&format!(
            "bootcast-agent: inventory not sent (the boot goes on): {e}"
        )),
    }
}

/// An error with its causes (reqwest's own message leaves out why a connection failed).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cause = c.source();
    }
    s
}

/// Checks a reimage order before anything is written: with the central server's keys on
/// the kernel command line (`bootcast.key=`, from the node that booted this machine), the
/// order must carry their signature over this task, this MAC, this image and version, and be
/// for the task this boot is for (an older signed order, replayed, is refused). Without keys
/// (a server from before signatures) the order is taken as it is, with a console warning.
/// Returns the keys, for the manifest's own check.
fn verify_order(
    args: &KernelArgs,
    hello: &Hello,
    reply: &HelloReply,
) -> std::result::Result<Option<crate::sign::Keys>, String> {
    let HelloReply::Reimage {
        task,
        image,
        version,
        signature,
        ..
    } = reply
    else {
        return Ok(None);
    };
    let what = format!("the reimage order for task {task} ({image}@{version})");
    let Some(key) = &args.key else {
        return Ok(None);
    };
    let keys = crate::sign::Keys::parse(key)
        .map_err(|e| format!("bootcast.key on the kernel command line: {e}"))?;
    let st = crate::sign::Statement::Task {
        task: *task,
        mac: &hello.mac,
        image,
        version,
    };
    keys.verify(&st, signature.as_deref())
        .map_err(|e| format!("{what} is refused: {e}; nothing was written"))?;
    match args.task {
        Some(t) if t == *task => Ok(Some(keys)),
        Some(t) => Err(format!(
            "{what} is for task {task}, but this boot is for task {t}: an old order replayed; refused, nothing was written"
        )),
        None => Err(format!(
            "{what} answers a boot that named no task; refused, nothing was written"
        )),
    }
}

/// What happened, for the caller (only returned when `cfg.act` is false or the action is done
/// by a test).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub server: String,
    pub hello: Hello,
    pub reply: HelloReply,
}

/// The whole `agent boot`: describe, hello, act. With `cfg.act` it does not return on success.
pub fn run(cfg: &BootConfig) -> Result<Outcome> {
    let mut console = Console::open(cfg);
    let (server, hello, args) = match describe(cfg) {
        Ok(v) => v,
        Err(e) => {
            console.line(&format!("BOOTCAST-AGENT-ERROR {}", chain(&e)));
            return Err(e);
        }
    };
    console.line(&format!(
        "bootcast-agent: {} {} {} boot_time {} -> {server}",
        hello.mac,
        hello.arch,
        hello.firmware.as_str(),
        hello.boot_time
    ));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| AgentError::Client(format!("tokio runtime: {e}")))?;
    let HelloAnswer { session, reply, .. } =
        match rt.block_on(post_hello(cfg, &server, &hello, &mut console)) {
            Ok(r) => r,
            Err(e) => {
                console.line(&format!("BOOTCAST-AGENT-ERROR {}", chain(&e)));
                return Err(e);
            }
        };
    console.line(&format!("BOOTCAST-AGENT-HELLO-OK {}", hello.mac));
    if hello.firmware == Firmware::Uefi {
        let ids = |l: &[u16]| {
            l.iter()
                .map(|n| format!("{n:04X}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        match network_first(&cfg.sys) {
            Ok(Some((before, after))) => console.line(&format!(
                "BOOTCAST-AGENT-BOOTORDER network entry first: {} (was {})",
                ids(&after),
                ids(&before)
            )),
            Ok(None) => console.line("bootcast-agent: BootOrder: the network entry is first"),
            Err(e) => console.line(&format!("bootcast-agent: BootOrder not changed: {e}")),
        }
    }
    // the hardware inventory, on every boot; it never holds the boot up
    rt.block_on(send_inventory(
        cfg,
        &server,
        (&hello, &session),
        &mut console,
    ));
    // who reports on a task: this boot's MAC and session, to the server it said hello to
    let task_ref = |task: i64| super::task::TaskRef {
        server: server.clone(),
        mac: hello.mac.clone(),
        session: session.clone(),
        task,
    };
    match &reply {
        HelloReply::Reimage {
            task,
            image,
            version,
            hostname,
            grow,
            multicast,
            signature: _,
            ..
        } => match verify_order(&args, &hello, &reply) {
            Err(why) => {
                console.line(&format!("BOOTCAST-AGENT-REIMAGE-REFUSED {why}"));
                // the task this boot is for fails, saying why; nothing is written
                drop(rt);
                if let (Some(t), Ok(client)) = (args.task, super::task::client()) {
                    let failed: std::result::Result<(), super::task::RunError> =
                        Err(super::task::RunError::Failed(why));
                    let mut log = |l: &str| console.line(l);
                    super::task::report(&client, &task_ref(t), &failed, false, &mut log);
                }
            }
            Ok(keys) => {
                let job = super::restore::Job {
                    keys,
                    task: task_ref(*task),
                    image: image.clone(),
                    version: version.clone(),
                    disk: args.disk.map(PathBuf::from),
                    hostname: hostname.clone(),
                    grow: *grow,
                    multicast: multicast.clone(),
                };
                console.line(&format!(
                    "bootcast-agent: task {task}: reimage with {image}"
                ));
                // the restore uses blocking HTTP: run it off the hello's runtime
                drop(rt);
                let mut log = |l: &str| console.line(l);
                match super::restore::run(&job, &cfg.sys, &cfg.proc, &mut log) {
                    Ok(r) => console.line(&format!(
                        "BOOTCAST-AGENT-REIMAGE-DONE {} fetched {} bytes ({} compressed), kept {} in place, {} zero",
                        hello.mac, r.fetched, r.fetched_compressed, r.in_place, r.zero
                    )),
                    Err(super::restore::RunError::Cancelled) => {
                        console.line(&format!("BOOTCAST-AGENT-REIMAGE-CANCELLED {}", hello.mac))
                    }
                    Err(e) => console.line(&format!("BOOTCAST-AGENT-REIMAGE-FAILED {e}")),
                }
            }
        },
        HelloReply::Capture {
            task,
            image,
            chunker,
            zstd_level,
            raw,
            ..
        } => {
            let job = super::capture::Job {
                task: task_ref(*task),
                image: image.clone(),
                chunker: *chunker,
                zstd_level: *zstd_level,
                disk: args.disk.map(PathBuf::from),
                raw: *raw,
            };
            console.line(&format!(
                "bootcast-agent: task {task}: capture into {image}"
            ));
            // the capture uses blocking HTTP: run it off the hello's runtime
            drop(rt);
            let mut log = |l: &str| console.line(l);
            match super::capture::run(&job, &cfg.sys, &cfg.proc, &mut log) {
                Ok(r) => console.line(&format!(
                    "BOOTCAST-AGENT-CAPTURE-DONE {} {} uploaded {} bytes ({} chunks of {})",
                    hello.mac, r.version, r.new_bytes, r.new_chunks, r.chunks
                )),
                Err(super::task::RunError::Cancelled) => {
                    console.line(&format!("BOOTCAST-AGENT-CAPTURE-CANCELLED {}", hello.mac))
                }
                Err(e) => console.line(&format!("BOOTCAST-AGENT-CAPTURE-FAILED {e}")),
            }
        }
        HelloReply::Poweroff | HelloReply::Reboot => {}
    }
    let after = after(&reply);
    console.line(&format!("BOOTCAST-AGENT-ACTION {}", after.as_str()));
    if after == After::Stay {
        console.line("bootcast-agent: the task asked the machine to stay on (--then stay): leaving it to the console");
        return Ok(Outcome {
            server,
            hello,
            reply,
        });
    }
    if cfg.act {
        console.drain();
        if let Err(e) = perform(&reply) {
            console.line(&format!("BOOTCAST-AGENT-ERROR {}", chain(&e)));
            return Err(e);
        }
    }
    Ok(Outcome {
        server,
        hello,
        reply,
    })
}

/// What the machine does after `reply`: as told, or once its task is over what the task says
/// (`--then`; reboot by default).
pub fn after(reply: &HelloReply) -> After {
    match reply {
        HelloReply::Poweroff => After::Poweroff,
        HelloReply::Reboot => After::Reboot,
        HelloReply::Reimage { then, .. } | HelloReply::Capture { then, .. } => {
            then.unwrap_or(After::Reboot)
        }
    }
}

/// Syncs and powers off or restarts the machine, as [`after`] says (never returns on success;
/// `stay` returns at once).
pub fn perform(reply: &HelloReply) -> Result<()> {
    use nix::sys::reboot::{reboot, RebootMode};
    let (mode, action) = match after(reply) {
        After::Poweroff => (RebootMode::RB_POWER_OFF, "poweroff"),
        After::Reboot => (RebootMode::RB_AUTOBOOT, "reboot"),
        After::Stay => return Ok(()),
    };
    nix::unistd::sync();
    match reboot(mode) {
        Err(source) => Err(AgentError::Act { action, source }),
        Ok(never) => match never {},
    }
}

/// BootOrder before and after [`network_first`] changed it.
pub type Reordered = (Vec<u16>, Vec<u16>);

/// At every network boot on UEFI: puts the entry this boot came from (`BootCurrent`, when it
/// is a network entry) first in `BootOrder`, so the machine asks bootcast again at its next
/// boot even after Windows (setup, updates) put its own boot manager first. Returns the order
/// before and after when it changed it; `None` when the network entry was first already.
pub fn network_first(sys: &Path) -> std::result::Result<Option<Reordered>, String> {
    use crate::inventory::efivars;
    let (_, current) =
        efivars::read(sys, "BootCurrent").map_err(|e| format!("BootCurrent: {e}"))?;
    let Some(&current) = efivars::u16s(&current).first() else {
        return Err("BootCurrent is empty".into());
    };
    let entry = efivars::boot_name(current);
    let (_, option) = efivars::read(sys, &entry).map_err(|e| format!("{entry}: {e}"))?;
    match efivars::load_option(&option) {
        Some(o) if o.network => {}
        Some(o) => {
            return Err(format!(
                "this boot came from {entry} ({:?}), which is not a network entry: BootOrder left alone",
                o.description
            ))
        }
        None => return Err(format!("{entry} is not a valid load option")),
    }
    let (attrs, order) = efivars::read(sys, "BootOrder").map_err(|e| format!("BootOrder: {e}"))?;
    let before = efivars::u16s(&order);
    let Some(after) = efivars::moved_first(&before, current) else {
        return Ok(None);
    };
    let path = efivars::path(sys, "BootOrder");
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("{what} {}: {e}", path.display());
    // efivarfs keeps the firmware's variables immutable: cleared for this one write, then set
    let ro = File::open(&path).map_err(|e| fail("opening", &e))?;
    let was = match crate::sys::set_immutable(&ro, false) {
        Ok(was) => was,
        Err(nix::Error::ENOTTY | nix::Error::EOPNOTSUPP) => false,
        Err(e) => return Err(fail("clearing the immutable flag of", &e)),
    };
    let mut value = attrs.to_le_bytes().to_vec();
    value.extend(efivars::u16_bytes(&after));
    // one write(2): efivarfs sets the variable from exactly what one write gives it
    let written = OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|mut f| f.write(&value));
    if was {
        let _ = crate::sys::set_immutable(&ro, true);
    }
    match written {
        Ok(n) if n == value.len() => Ok(Some((before, after))),
        Ok(n) => Err(format!(
            "{}: {n} of {} bytes written",
            path.display(),
            value.len()
        )),
        Err(e) => Err(fail("writing", &e)),
    }
}

/// For the CLI: `BootConfig` paths relative to a root (tests use a fake one).
pub fn config_with_root(root: &Path) -> BootConfig {
    BootConfig {
        proc: root.join("proc"),
        sys: root.join("sys"),
        ..BootConfig::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::mpsc;

    #[test]
    fn a_task_says_what_the_machine_does_once_it_is_over() {
        let capture = |then| HelloReply::Capture {
            task: 1,
            image: "win11".into(),
            chunker: Default::default(),
            zstd_level: 1,
            raw: false,
            then,
        };
        assert_eq!(after(&capture(None)), After::Reboot);
        assert_eq!(after(&capture(Some(After::Poweroff))), After::Poweroff);
        assert_eq!(after(&capture(Some(After::Stay))), After::Stay);
        assert_eq!(after(&HelloReply::Poweroff), After::Poweroff);
        assert_eq!(after(&HelloReply::Reboot), After::Reboot);
        // `stay` does nothing: the machine is left to its console
        assert!(perform(&capture(Some(After::Stay))).is_ok());
    }

    fn fake_root(cmdline: &str, efi: bool) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let p = t.path();
        fs::create_dir_all(p.join("proc/net")).unwrap();
        fs::create_dir_all(p.join("sys/class/net/eth1")).unwrap();
        fs::write(p.join("proc/cmdline"), cmdline).unwrap();
        fs::write(
            p.join("proc/stat"),
            "cpu  1 2 3\nintr 5\nctxt 9\nbtime 1763900000\nprocesses 12\n",
        )
        .unwrap();
        fs::write(
            p.join("proc/net/route"),
            "Iface\tDestination\tGateway\tFlags\n\
             eth1\t0000630A\t00000000\t0001\n\
             eth1\t00000000\t0100630A\t0003\n",
        )
        .unwrap();
        fs::write(p.join("sys/class/net/eth1/address"), "52:54:00:12:34:AB\n").unwrap();
        if efi {
            fs::create_dir_all(p.join("sys/firmware/efi")).unwrap();
        }
        t
    }

    #[test]
    fn the_network_entry_this_boot_came_from_goes_first_in_boot_order() {
        use crate::inventory::efivars::{self, tests::option};
        let t = fake_root("", true);
        let sys = t.path().join("sys");
        let var = |name: &str, data: &[u8]| {
            let p = efivars::path(&sys, name);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            let mut b = 7u32.to_le_bytes().to_vec();
            b.extend(data);
            fs::write(p, b).unwrap();
        };
        let mac = (0x03u8, 0x0bu8, &[0x52u8, 0x54, 0, 1, 2, 3][..]);
        var(
            "Boot0001",
            &option("Windows Boot Manager", &[(4, 1, &[0; 38])]),
        );
        var("Boot0004", &option("UEFI PXEv4", &[mac]));
        var("BootOrder", &efivars::u16_bytes(&[1, 4]));
        // booted from the disk's entry: nothing is touched
        var("BootCurrent", &efivars::u16_bytes(&[1]));
        let e = network_first(&sys).unwrap_err();
        assert!(e.contains("not a network entry"), "{e}");
        // booted from the network while Windows' entry is first: the network entry goes first
        var("BootCurrent", &efivars::u16_bytes(&[4]));
        assert_eq!(network_first(&sys).unwrap(), Some((vec![1, 4], vec![4, 1])));
        let (attrs, order) = efivars::read(&sys, "BootOrder").unwrap();
        assert_eq!((attrs, efivars::u16s(&order)), (7, vec![4, 1]));
        // and once first, it stays
        assert_eq!(network_first(&sys).unwrap(), None);
    }

    /// An HTTP stub answering `replies` in turn; sends each request body on the channel.
    fn stub(replies: Vec<(u16, &'static str)>) -> (String, mpsc::Receiver<String>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for (code, body) in replies {
                let (s, _) = l.accept().unwrap();
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut len = 0;
                let mut first = String::new();
                r.read_line(&mut first).unwrap();
                loop {
                    let mut h = String::new();
                    r.read_line(&mut h).unwrap();
                    if h.trim().is_empty() {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                }
                let mut b = vec![0; len];
                r.read_exact(&mut b).unwrap();
                tx.send(format!("{}{}", first.trim(), String::from_utf8(b).unwrap()))
                    .unwrap();
                let mut s = s;
                write!(
                    s,
                    "HTTP/1.1 {code} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
                .unwrap();
            }
        });
        (url, rx)
    }

    fn quick(root: &Path) -> BootConfig {
        BootConfig {
            backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
            act: false,
            ..config_with_root(root)
        }
    }

    #[test]
    fn describes_from_cmdline_and_sysfs() {
        let r = fake_root(
            "console=ttyS0 bootcast.server=http://10.99.0.1:8080/ bootcast.mac=52:54:00:AA:BB:CC bootcast.task=3",
            true,
        );
        let (server, h, _) = describe(&quick(r.path())).unwrap();
        assert_eq!(server, "http://10.99.0.1:8080");
        assert_eq!(h.mac, "52:54:00:aa:bb:cc");
        assert_eq!(h.firmware, Firmware::Uefi);
        assert_eq!(h.boot_time, 1_763_900_000);
        assert_eq!(h.task, Some(3));
        assert_eq!(h.arch, std::env::consts::ARCH);
    }

    #[test]
    fn mac_falls_back_to_the_interface_then_the_default_route() {
        let r = fake_root("bootcast.server=http://s", false);
        let mut cfg = quick(r.path());
        let (_, h, _) = describe(&cfg).unwrap();
        assert_eq!(
            (h.mac.as_str(), h.firmware),
            ("52:54:00:12:34:ab", Firmware::Bios)
        );
        cfg.interface = Some("eth9".into());
        assert!(matches!(describe(&cfg), Err(AgentError::Read { .. })));
    }

    #[test]
    fn all_consoles_writes_to_the_ones_besides_dev_console() {
        let r = fake_root("bootcast.server=http://s", false);
        let p = r.path();
        fs::create_dir_all(p.join("sys/class/tty/console")).unwrap();
        fs::write(p.join("sys/class/tty/console/active"), "tty0 ttyS0\n").unwrap();
        fs::create_dir_all(p.join("dev")).unwrap();
        fs::write(p.join("dev/tty0"), "").unwrap();
        fs::write(p.join("dev/ttyS0"), "").unwrap();
        let cfg = BootConfig {
            all_consoles: true,
            dev: p.join("dev"),
            ..quick(p)
        };
        let mut c = Console::open(&cfg);
        c.line("BOOTCAST-TEST");
        c.drain();
        assert_eq!(
            fs::read_to_string(p.join("dev/tty0")).unwrap(),
            "BOOTCAST-TEST\n"
        );
        // ttyS0 is /dev/console, that is stdout.
        assert_eq!(fs::read_to_string(p.join("dev/ttyS0")).unwrap(), "");
    }

    #[test]
    fn no_server_is_a_clear_error() {
        let r = fake_root("quiet bootcast.mac=52:54:00:aa:bb:cc", false);
        let err = describe(&quick(r.path())).unwrap_err();
        assert!(err.to_string().contains("bootcast.server="), "{err}");
    }

    #[test]
    fn hello_retries_until_the_server_answers() {
        let (url, rx) = stub(vec![
            (503, "{}"),
            (200, r#"{"unexpected":1}"#),
            (
                200,
                r#"{"mac":"52:54:00:aa:bb:cc","session":"5e55","action":"reboot"}"#,
            ),
        ]);
        let r = fake_root(
            &format!("bootcast.server={url} bootcast.mac=52:54:00:aa:bb:cc"),
            false,
        );
        let out = run(&quick(r.path())).unwrap();
        assert_eq!(out.reply, HelloReply::Reboot);
        let bodies: Vec<String> = rx.iter().take(3).collect();
        assert!(bodies[0].starts_with("POST /api/v1/agent/hello HTTP/1.1"));
        let json = &bodies[2][bodies[2].find('{').unwrap()..];
        let sent: Hello = serde_json::from_str(json).unwrap();
        assert_eq!(sent, out.hello);
        assert_eq!(sent.firmware, Firmware::Bios);
    }

    #[test]
    fn hello_gives_up_after_the_tries() {
        let (url, _rx) = stub(vec![(500, "no"), (500, "no")]);
        let r = fake_root(
            &format!("bootcast.server={url} bootcast.mac=52:54:00:aa:bb:cc"),
            false,
        );
        let cfg = BootConfig {
            tries: 2,
            ..quick(r.path())
        };
        let err = run(&cfg).unwrap_err();
        match err {
            AgentError::Hello { tries, last, .. } => {
                assert_eq!(tries, 2);
                assert!(last.contains("500"), "{last}");
            }
            e => panic!("unexpected {e}"),
        }
    }
}

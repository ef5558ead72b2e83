//! Messages between the agent (in the boot environment) and the server.
//!
//! The agent learns where the server is from the kernel command line that the iPXE script
//! set (see [`KernelArgs`]), then posts a [`Hello`] to `POST /api/v1/agent/hello` and does what
//! the [`HelloReply`] says.
//!
//! ## Credentials
//! The kernel command line carries this boot's credential (`bootcast.credential=`): valid for
//! one hello (and its retries) from the address the boot script was given to, for a few
//! minutes. The hello's answer ([`HelloAnswer`]) carries the session every later request of
//! this boot names (the `session` field, or the [`HEADER_SESSION`] header), from the same
//! address, until the task ends; manifests and chunks need it too ([`HEADER_SESSION`] with
//! [`HEADER_MAC`]).
//!
//! ## Capture
//! A [`HelloReply::Capture`] carries the server store's chunker parameters and zstd level, so
//! the agent cuts its disk exactly as `bootcast image add` on the server would (the version id
//! depends on the bytes and the chunker parameters only; the level decides the stored frames).
//! Then, authenticated by the headers [`HEADER_MAC`], [`HEADER_SESSION`] and [`HEADER_TASK`]
//! (the boot's session; only the host's own open capture task):
//! - `POST /api/v1/agent/capture/missing`: [`CaptureMissing`] → [`CaptureMissingReply`]: which
//!   chunks the server lacks (at most [`MISSING_MAX_IDS`] ids per request);
//! - `POST /api/v1/agent/capture/chunks`: the chunks it lacks, as zstd frames in the upload
//!   format below (at most [`UPLOAD_MAX_BYTES`] per request) → [`CaptureUploaded`]; every
//!   frame is decompressed and hashed before anything of the request is stored;
//! - `POST /api/v1/agent/capture/commit`: the manifest file ([`crate::store::manifest`]) →
//!   [`CaptureCommitted`]; the version is written and the task is done.
//!
//! Upload body (`application/octet-stream`), per chunk, concatenated (the framing of
//! `POST /chunks/batch` answers, see [`crate::store::source`]):
//! ```text
//! id       32 bytes   BLAKE3 of the chunk's plain bytes
//! length   u32 BE     bytes of the frame that follows
//! frame    length     the chunk compressed as one zstd frame
//! ```

use serde::{Deserialize, Serialize};

use crate::store::{ChunkId, ChunkerParams};

/// Firmware the machine booted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    Bios,
    Uefi,
}

impl Firmware {
    pub fn as_str(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        }
    }

    /// The inverse of [`Firmware::as_str`].
    pub fn parse(s: &str) -> Option<Firmware> {
        [Firmware::Bios, Firmware::Uefi]
            .into_iter()
            .find(|f| f.as_str() == s)
    }
}

/// The agent protocol: what a boot environment's agent and the server it says hello to
/// exchange.
///
/// - 0: boot environments from before the number: a per-boot `nonce` on the kernel command
///   line, sent in the hello and every report.
/// - 1: a boot credential (`bootcast.credential=`) exchanged at hello for a session; signed
///   reimage orders (`bootcast.key=`).
///
/// A server refuses a hello of another protocol with a message naming what to rebuild or
/// upgrade: the boot environment is built on the central server (`bootcast bootenv build`,
/// from the server's own binary) and relays take it from upstream, so after an upgrade of the
/// central server only a boot environment not rebuilt meets a server of another protocol.
pub const AGENT_PROTOCOL: u32 = 1;

/// An architecture name as iPXE or `uname -m` print it.
pub fn valid_arch(a: &str) -> bool {
    !a.is_empty() && a.len() <= 32 && a.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// `POST /api/v1/agent/hello`: the agent is up and says who it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The agent protocol it speaks ([`AGENT_PROTOCOL`]; absent: 0).
    #[serde(default)]
    pub protocol: u32,
    /// MAC of the interface the machine network-booted from, lower case, colon separated.
    pub mac: String,
    /// CPU architecture as `uname -m` prints it (`x86_64`, `aarch64`).
    pub arch: String,
    pub firmware: Firmware,
    /// When the agent's kernel started, seconds since the Unix epoch (UTC).
    pub boot_time: u64,
    /// The task id from the kernel command line, if the server booted it for a task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<i64>,
    /// The credential from the kernel command line: proves that this hello comes from the
    /// boot the server started for this MAC (the MAC alone is no secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// The machine's SMBIOS system identity (absent: no SMBIOS table, or an older agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smbios: Option<Smbios>,
}

/// SMBIOS type 1 (system) as the agent read it: what identifies the machine whatever NIC it
/// boots from, and what registration rules match on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Smbios {
    /// Lower case, dashed (SMBIOS 2.6+ byte order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
}

/// The answer to a hello: this boot's session, and what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloAnswer {
    /// The MAC the hello was for (a relay passing the answer on keeps the session under it).
    pub mac: String,
    /// Every later request of this boot carries it (see the module doc).
    pub session: String,
    #[serde(flatten)]
    pub reply: HelloReply,
}

/// What the machine does once its task is over (`--then`): reboot (the default: the next boot
/// script hands it to its disk), power off, or stay on in the boot environment (a shell on the
/// console, for a technician).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum After {
    Reboot,
    Poweroff,
    Stay,
}

impl After {
    pub const NAMES: [&'static str; 3] = ["reboot", "poweroff", "stay"];

    pub fn as_str(self) -> &'static str {
        match self {
            After::Reboot => "reboot",
            After::Poweroff => "poweroff",
            After::Stay => "stay",
        }
    }

    pub fn parse(s: &str) -> Option<After> {
        [After::Reboot, After::Poweroff, After::Stay]
            .into_iter()
            .find(|a| a.as_str() == s)
    }
}

/// What the agent does next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum HelloReply {
    /// Power the machine off.
    Poweroff,
    /// Reboot (the next boot script decides what the machine boots).
    Reboot,
    /// Write image `image` at version `version` (a full id) to the local disk for task
    /// `task`, reporting progress, then done or failed; then reboot.
    Reimage {
        task: i64,
        image: String,
        version: String,
        /// Post-deploy: the host's name, to write into the restored system where the agent
        /// knows how (see [`crate::agent::postdeploy`]); absent when the host has no name or
        /// the image's settings turn the step off.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hostname: Option<String>,
        /// Post-deploy: on a disk larger than the image, grow this partition and its
        /// filesystem (see [`crate::agent::grow`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        grow: Option<u32>,
        /// Reimage by room multicast: receive the chunks from this session, the rest (and
        /// everything, if the session cannot be joined) over HTTP.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        multicast: Option<MulticastJoin>,
        /// The central server's signature of this order ([`crate::sign::Statement::Task`]:
        /// task, MAC, image, version); the agent writes nothing without a valid one when it
        /// has the key (`bootcast.key=`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signature: Option<String>,
        /// What the machine does once the task is over (absent: reboot).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        then: Option<After>,
    },
    /// Read the local disk into a new version of image `image` on the server for task `task`
    /// (see the module doc), reporting progress, then failed if it cannot; then reboot.
    Capture {
        task: i64,
        image: String,
        /// The server store's chunker parameters: cut the disk with these.
        chunker: ChunkerParams,
        /// The server store's zstd level: compress new chunks at this level.
        zstd_level: i32,
        /// Capture every byte, not only what the filesystems use (`bootcast image raw`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        raw: bool,
        /// What the machine does once the task is over (absent: reboot).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        then: Option<After>,
    },
}

/// A room multicast session to join ([`crate::multicast`]); the node that answered the hello
/// (the server, or the site relay the machine boots through) runs its sender.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MulticastJoin {
    pub session: i64,
    pub group: std::net::Ipv4Addr,
    pub port: u16,
    /// How the sender runs (a relay passing the reply on starts the sender with these): the
    /// first run starts when `receivers` joined or `wait_secs` after the first hello.
    pub receivers: u32,
    pub wait_secs: u32,
    /// Bytes per second.
    pub max_rate: u64,
}

/// `POST /api/v1/agent/inventory`: the machine's hardware, on every boot (after the hello, with
/// the session of the hello's answer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InventoryReport {
    pub mac: String,
    pub session: String,
    pub inventory: crate::inventory::Inventory,
}

/// What the server made of an inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryAck {
    pub id: i64,
    /// What changed since the previous boot (`new_machine` on the first).
    pub changes: Vec<String>,
}

/// Header naming the agent's MAC on the capture endpoints.
pub const HEADER_MAC: &str = "x-bootcast-mac";
/// Header carrying the boot's session on the capture endpoints, manifests and chunks.
pub const HEADER_SESSION: &str = "x-bootcast-session";
/// Header naming the task on the capture endpoints.
pub const HEADER_TASK: &str = "x-bootcast-task";

/// Most ids one `capture/missing` request may ask about.
pub const MISSING_MAX_IDS: usize = 4096;
/// Most bytes one `capture/chunks` request may carry.
pub const UPLOAD_MAX_BYTES: usize = 64 << 20;
/// Most bytes of a manifest a `capture/commit` request may carry: 53 bytes per chunk, so
/// about 650 GB of non-zero data at 32 KiB chunks.
pub const MANIFEST_MAX_BYTES: usize = 1 << 30;

/// `POST /api/v1/agent/capture/missing`: which of these chunks does the server lack?
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureMissing {
    /// Chunk ids, 64 hex digits each.
    pub ids: Vec<String>,
}

/// The answer to [`CaptureMissing`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureMissingReply {
    /// The ids the server lacks, in the order asked: upload these.
    pub missing: Vec<String>,
    /// Per id asked, in order: its compressed size on the server, `null` where it lacks it.
    pub sizes: Vec<Option<u32>>,
}

/// The answer to a `capture/chunks` upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureUploaded {
    /// Chunks received and verified.
    pub chunks: usize,
    /// Of those, chunks the store did not hold yet (now stored and durable).
    pub stored: usize,
}

/// The answer to a `capture/commit`: the task is done and made `version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureCommitted {
    pub task: i64,
    pub state: String,
    /// The new version's id (64 hex digits).
    pub version: String,
}

/// Largest frame an upload may hold (a chunk is at most a few hundred KiB compressed).
const MAX_FRAME: u32 = 16 << 20;

/// Appends one chunk to an upload body.
pub fn push_frame(body: &mut Vec<u8>, id: &ChunkId, frame: &[u8]) {
    body.extend_from_slice(&id.0);
    body.extend_from_slice(&(frame.len() as u32).to_be_bytes());
    body.extend_from_slice(frame);
}

/// Splits an upload body into (id, frame) pairs; `Err` says what is wrong with it.
pub fn parse_frames(body: &[u8]) -> Result<Vec<(ChunkId, &[u8])>, String> {
    let mut out = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        if rest.len() < 36 {
            return Err(format!(
                "the upload ends inside the header of chunk {} (36 bytes: id and length)",
                out.len() + 1
            ));
        }
        let id = ChunkId(rest[..32].try_into().expect("32 bytes"));
        let len = u32::from_be_bytes(rest[32..36].try_into().expect("4 bytes"));
        if len > MAX_FRAME {
            return Err(format!(
                "chunk {id} claims a {len}-byte frame, more than any chunk can be"
            ));
        }
        let end = 36 + len as usize;
        if rest.len() < end {
            return Err(format!(
                "the upload ends inside the frame of chunk {id} ({len} bytes announced, {} there)",
                rest.len() - 36
            ));
        }
        out.push((id, &rest[36..end]));
        rest = &rest[end..];
    }
    Ok(out)
}

/// `POST /api/v1/agent/progress`: how far the agent is with its task; at least every 2 s while
/// it works. The first report moves the task from `booting` to `running`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskProgress {
    pub mac: String,
    /// The session the hello's answer gave.
    pub session: String,
    /// The task id from the kernel command line.
    pub task: i64,
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// Bytes per second, measured by the agent.
    pub rate: u64,
    /// Seconds left, if the agent can tell.
    #[serde(default)]
    pub eta: Option<u64>,
}

/// `POST /api/v1/agent/done`: the task finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskDone {
    pub mac: String,
    pub session: String,
    pub task: i64,
}

/// `POST /api/v1/agent/failed`: the task cannot be finished, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFailed {
    pub mac: String,
    pub session: String,
    pub task: i64,
    /// What went wrong, for staff (up to 2000 characters).
    pub reason: String,
}

/// The server's answer to a progress, done or failed report: the task's state now. A 409
/// answer (`{"error": ...}`) means the task is closed (e.g. cancelled): stop working on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskAck {
    pub task: i64,
    pub state: String,
}

/// The `bootcast.*` parameters the iPXE script puts on the kernel command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelArgs {
    /// `bootcast.server=http://IP:PORT`: base URL of the server that booted this machine.
    pub server: Option<String>,
    /// `bootcast.mac=aa:bb:..`: MAC of the interface iPXE booted from.
    pub mac: Option<String>,
    /// `bootcast.task=N`: the task this boot is for.
    pub task: Option<i64>,
    /// `bootcast.credential=HEX`: this boot's credential, for the hello.
    pub credential: Option<String>,
    /// `bootcast.disk=/dev/NAME`: the disk to image, instead of the automatic choice.
    pub disk: Option<String>,
    /// `bootcast.key=ed25519:HEX[,...]`: the central server's keys, from the node that booted
    /// this machine; orders are verified against them.
    pub key: Option<String>,
}

impl KernelArgs {
    /// Parses `/proc/cmdline`; unknown words are ignored.
    pub fn parse(cmdline: &str) -> KernelArgs {
        let mut args = KernelArgs::default();
        for word in cmdline.split_ascii_whitespace() {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            match key {
                "bootcast.server" => args.server = Some(value.to_string()),
                "bootcast.mac" => args.mac = Some(value.to_ascii_lowercase()),
                "bootcast.task" => args.task = value.parse().ok(),
                "bootcast.credential" => args.credential = Some(value.to_string()),
                "bootcast.disk" => args.disk = Some(value.to_string()),
                "bootcast.key" => args.key = Some(value.to_string()),
                _ => {}
            }
        }
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_args_parse() {
        let a = KernelArgs::parse(
            "console=ttyS0 bootcast.server=http://10.99.0.1:8080 bootcast.mac=52:54:00:AA:BB:CC bootcast.task=7 initrd=initrd.img\n",
        );
        assert_eq!(a.server.as_deref(), Some("http://10.99.0.1:8080"));
        assert_eq!(a.mac.as_deref(), Some("52:54:00:aa:bb:cc"));
        assert_eq!(a.task, Some(7));
        assert_eq!(KernelArgs::parse("quiet"), KernelArgs::default());
    }

    #[test]
    fn upload_frames_round_trip_and_refuse_truncation() {
        let (a, b) = (ChunkId::of(b"a"), ChunkId::of(b"b"));
        let mut body = Vec::new();
        push_frame(&mut body, &a, b"frame-a");
        push_frame(&mut body, &b, b"");
        let got = parse_frames(&body).unwrap();
        assert_eq!(got, vec![(a, &b"frame-a"[..]), (b, &b""[..])]);
        assert_eq!(parse_frames(&[]).unwrap(), vec![]);
        for cut in [1, 35, 40] {
            assert!(parse_frames(&body[..cut]).is_err(), "cut at {cut}");
        }
        let mut huge = a.0.to_vec();
        huge.extend(u32::MAX.to_be_bytes());
        assert!(parse_frames(&huge)
            .unwrap_err()
            .contains("more than any chunk"));
    }

    #[test]
    fn capture_reply_json() {
        let r = HelloReply::Capture {
            task: 4,
            image: "win11".into(),
            chunker: ChunkerParams::default(),
            zstd_level: 1,
            raw: false,
            then: None,
        };
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["action"], "capture");
        assert_eq!(j["chunker"]["avg"], 32768);
        assert!(
            j.get("then").is_none(),
            "absent: reboot, as older agents do"
        );
        assert_eq!(serde_json::from_value::<HelloReply>(j).unwrap(), r);
        let r = HelloReply::Capture {
            task: 4,
            image: "win11".into(),
            chunker: ChunkerParams::default(),
            zstd_level: 1,
            raw: false,
            then: Some(After::Poweroff),
        };
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["then"], "poweroff");
        assert_eq!(serde_json::from_value::<HelloReply>(j).unwrap(), r);
    }

    #[test]
    fn hello_reply_json() {
        let r: HelloReply = serde_json::from_str(r#"{"action":"poweroff"}"#).unwrap();
        assert_eq!(r, HelloReply::Poweroff);
        let h = Hello {
            protocol: AGENT_PROTOCOL,
            mac: "52:54:00:aa:bb:cc".into(),
            arch: "x86_64".into(),
            firmware: Firmware::Uefi,
            boot_time: 1,
            task: None,
            credential: None,
            smbios: None,
        };
        let j = serde_json::to_value(&h).unwrap();
        assert_eq!(j["firmware"], "uefi");
        assert!(j.get("task").is_none());
        // the session sits beside the action, and both read back
        let a = HelloAnswer {
            mac: "52:54:00:aa:bb:cc".into(),
            session: "5e55".into(),
            reply: HelloReply::Reboot,
        };
        let j = serde_json::to_value(&a).unwrap();
        assert_eq!(
            (&j["session"], &j["action"]),
            (&"5e55".into(), &"reboot".into())
        );
        assert_eq!(serde_json::from_value::<HelloAnswer>(j).unwrap(), a);
    }
}

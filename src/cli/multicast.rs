//! `bootcast multicast send|receive`: a room multicast session by hand (on demand, tests,
//! benchmarks); `bootcast multicast sessions`: the sessions reimage tasks made
//! (`bootcast task reimage --group G --multicast`), which the server or relay runs itself.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Subcommand;

use bootcast::multicast::receiver::{receive, ReceiveOptions};
use bootcast::multicast::sender::{send, SendOptions};
use bootcast::multicast::{proto, Endpoint};
use bootcast::rate::parse_rate;
use bootcast::store::Store;

use super::output::Output;

#[derive(Subcommand, Debug)]
pub enum MulticastCmd {
    /// Stream NAME[@VERSION] from the local store to a multicast group
    Send {
        /// The image version to send
        spec: String,
        /// The interface the room's network is on (IP_MULTICAST_IF)
        #[arg(long)]
        interface: String,
        /// The session's IPv4 multicast group (e.g. 239.255.42.1)
        #[arg(long)]
        group: Ipv4Addr,
        /// The session's UDP port
        #[arg(long)]
        port: u16,
        /// Start when this many receivers joined...
        #[arg(long, default_value_t = 1)]
        min_receivers: usize,
        /// ...or after this many seconds
        #[arg(long, default_value_t = 60)]
        wait: u64,
        /// Highest sending rate (50Mbit, 1Gbit, 5MB)
        #[arg(long, default_value = "100Mbit", value_parser = parse_rate)]
        max_rate: u64,
        /// The rate never goes below this under NAK pressure
        #[arg(long, default_value = "1Mbit", value_parser = parse_rate)]
        min_rate: u64,
        /// End the session after this many seconds (receivers finish over HTTP)
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
        /// Largest datagram (UDP payload bytes)
        #[arg(long, default_value_t = proto::DEFAULT_DATAGRAM)]
        datagram: usize,
        /// IP TTL of the datagrams (1: the room's network only)
        #[arg(long, default_value_t = 1)]
        ttl: u32,
    },
    /// Receive NAME@VERSION from a session and write it to a file or block device
    Receive {
        /// The server running the session (manifest, and the HTTP fallback)
        #[arg(long)]
        server: String,
        /// A file holding the server's API token (images are private) [default:
        /// BOOTCAST_TOKEN, else the token of the local --data directory]
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// With an https:// --server: its certificate fingerprint, as its start banner prints it
        #[arg(long, value_name = "sha256:HEX", conflicts_with = "ca")]
        fingerprint: Option<String>,
        /// With an https:// --server: a PEM file of the CA that issued its certificate
        #[arg(long, value_name = "FILE")]
        ca: Option<PathBuf>,
        /// NAME@VERSION (the session's)
        #[arg(long)]
        image: String,
        /// The file or block device to write
        #[arg(long)]
        target: PathBuf,
        /// The interface to join the group on (IGMP)
        #[arg(long)]
        interface: String,
        /// The session's IPv4 multicast group
        #[arg(long)]
        group: Ipv4Addr,
        /// The session's UDP port
        #[arg(long)]
        port: u16,
        /// Finish over HTTP after this many seconds without a datagram from the sender
        #[arg(long, default_value_t = 10)]
        idle_timeout: u64,
        /// Finish over HTTP when still lacking chunks after this pass
        #[arg(long, default_value_t = 20)]
        max_passes: u32,
        /// Test hook: drop this share of received datagrams (percent, deterministic)
        #[arg(long, default_value_t = 0.0, hide = true)]
        drop_percent: f64,
    },
    /// Sessions of multicast reimage tasks, newest first, with their last run's report
    Sessions {
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
}

pub fn run(cmd: MulticastCmd, data: &Path, out: &Output) -> Result<ExitCode> {
    let say = |line: &str| eprintln!("bootcast-multicast: {line}");
    match cmd {
        MulticastCmd::Sessions { limit } => {
            let db = super::open_db(data)?;
            let list = bootcast::db::sessions::list(&db.lock(), limit)?;
            out.emit(&serde_json::json!({ "sessions": list }), || {
                if list.is_empty() {
                    return "no multicast sessions (bootcast task reimage --group G --image I --multicast)".into();
                }
                list.iter()
                    .map(|s| {
                        let (group, port) = bootcast::multicast::sessions::address(s.id);
                        let last = match &s.last_report {
                            Some(r) => format!(
                                "last run: {}, {}/{} receivers done, {} bytes in {} passes ({:.3} × the image)",
                                r["ended"].as_str().unwrap_or("?"),
                                r["receivers_done"],
                                r["receivers_joined"],
                                r["bytes"],
                                r["passes"],
                                r["bytes"].as_f64().unwrap_or(0.0) / r["compressed"].as_f64().unwrap_or(1.0).max(1.0)
                            ),
                            None => "no run ended yet".into(),
                        };
                        format!(
                            "{:>4}  {}@{}  {}  {group}:{port}  {} receivers / {} s  {}/s  {} runs  {last}",
                            s.id,
                            s.image,
                            &s.version[..s.version.len().min(12)],
                            s.group.as_deref().unwrap_or("-"),
                            s.receivers,
                            s.wait_secs,
                            bootcast::rate::format_rate(s.max_rate),
                            s.runs
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
            Ok(ExitCode::SUCCESS)
        }
        MulticastCmd::Send {
            spec,
            interface,
            group,
            port,
            min_receivers,
            wait,
            max_rate,
            min_rate,
            timeout,
            datagram,
            ttl,
        } => {
            let store = Store::open(data)?;
            let resolved = store.resolve(&spec)?;
            let endpoint = Endpoint {
                interface,
                group,
                port,
                ttl,
            };
            let opts = SendOptions {
                min_receivers,
                wait: Duration::from_secs(wait),
                max_rate,
                min_rate,
                timeout: Duration::from_secs(timeout),
                datagram,
                ..Default::default()
            };
            let r = send(&store, &resolved.manifest, &endpoint, &opts, &mut |l| {
                say(l)
            })
            .context("multicast session")?;
            out.emit(&r, || {
                format!(
                    "sent {} bytes in {} datagrams over {} passes ({:.3} × the compressed image, {} bytes); {} of {} receivers done ({})",
                    r.bytes,
                    r.datagrams,
                    r.passes,
                    r.bytes as f64 / r.compressed.max(1) as f64,
                    r.compressed,
                    r.receivers_done,
                    r.receivers_joined,
                    r.ended
                )
            });
            Ok(ExitCode::SUCCESS)
        }
        MulticastCmd::Receive {
            server,
            token_file,
            fingerprint,
            ca,
            image,
            target,
            interface,
            group,
            port,
            idle_timeout,
            max_passes,
            drop_percent,
        } => {
            let endpoint = Endpoint {
                interface,
                group,
                port,
                ttl: 1,
            };
            let opts = ReceiveOptions {
                idle_timeout: Duration::from_secs(idle_timeout),
                max_passes,
                drop_percent,
                headers: vec![(
                    "authorization",
                    format!(
                        "Bearer {}",
                        super::staff_token(data, token_file.as_deref())?
                    ),
                )],
                tls: super::client_tls(fingerprint.as_deref(), ca.as_deref())?,
                ..ReceiveOptions::new(&server, &image)
            };
            let r =
                receive(&endpoint, &opts, &target, &mut |l| say(l)).context("multicast receive")?;
            out.emit(&r, || {
                format!(
                    "received {} bytes in {} datagrams; wrote {} bytes ({} chunks by multicast, {} over HTTP, {} already there); {} datagrams dropped",
                    r.bytes_received,
                    r.datagrams,
                    r.bytes_written,
                    r.chunks_multicast,
                    r.chunks_http,
                    r.chunks_in_place,
                    r.dropped
                )
            });
            Ok(ExitCode::SUCCESS)
        }
    }
}

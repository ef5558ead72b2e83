//! `bootcast agent ...`: commands the boot environment runs.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Subcommand, ValueEnum};

use bootcast::agent::boot;

use super::output::Output;

#[derive(Subcommand, Debug)]
pub enum AgentCmd {
    /// Say hello to the server named by bootcast.server= on the kernel command line, run the
    /// reimage or capture task it answers with, then power off or reboot. Run by the
    /// initramfs /init.
    Boot {
        /// The network interface /init configured (its MAC is used without bootcast.mac=)
        #[arg(long)]
        interface: Option<String>,
        /// Server base URL, instead of bootcast.server= (e.g. http://10.99.0.1:8080)
        #[arg(long)]
        server: Option<String>,
        /// Print the answer instead of powering off or rebooting
        #[arg(long)]
        no_act: bool,
        /// Also write to the kernel's other consoles (tty0 and ttyS0 both), as /init does
        #[arg(long)]
        all_consoles: bool,
        /// Hello attempts before giving up
        #[arg(long, default_value_t = 10)]
        tries: u32,
        /// Read proc/ and sys/ under this directory instead of / (for tests)
        #[arg(long, hide = true, default_value = "/")]
        root: PathBuf,
    },
    /// Run the post-deploy steps on a restored disk, as a reimage does: grow partition N onto
    /// a larger disk, then write NAME into Windows' answer files and /etc/hostname of every
    /// Linux root filesystem on ext2/3/4 (root; partitions are mounted)
    PostDeploy {
        /// The whole disk (block device), e.g. /dev/sdb or /dev/loop0 (losetup --partscan)
        #[arg(long)]
        disk: PathBuf,
        #[arg(long)]
        hostname: Option<String>,
        /// Grow partition N and its filesystem (NTFS, ext2/3/4) to fill the disk, moving the
        /// partitions after it to the disk's end (GPT)
        #[arg(long, value_name = "N")]
        grow: Option<u32>,
    },
    /// Collect this machine's hardware inventory (SMBIOS tables, /proc/cpuinfo, sysfs) and
    /// print it as JSON: bootcast's own form, or GLPI's native inventory. Parts that cannot be
    /// read are listed as warnings (in the JSON, or on stderr for GLPI), never an error.
    Inventory {
        /// json: bootcast's inventory; glpi: GLPI native inventory (deviceid
        /// bootcast-<mac without colons>)
        #[arg(long, value_enum, default_value_t = InventoryFormat::Json)]
        format: InventoryFormat,
        /// Read proc/ and sys/ under this directory instead of /
        #[arg(long, default_value = "/")]
        root: PathBuf,
        /// MAC of the boot interface [default: that of the default route's interface, else
        /// none]
        #[arg(long)]
        mac: Option<String>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum InventoryFormat {
    Json,
    Glpi,
}

pub fn run(cmd: AgentCmd, out: &Output) -> Result<ExitCode> {
    match cmd {
        AgentCmd::Inventory { format, root, mac } => {
            inventory(format, &root, mac.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
        AgentCmd::PostDeploy {
            disk,
            hostname,
            grow,
        } => post_deploy(out, &disk, hostname.as_deref(), grow),
        AgentCmd::Boot {
            interface,
            server,
            no_act,
            all_consoles,
            tries,
            root,
        } => {
            let cfg = boot::BootConfig {
                server,
                interface,
                tries,
                act: !no_act,
                all_consoles,
                ..boot::config_with_root(&root)
            };
            match boot::run(&cfg) {
                Ok(o) => {
                    out.emit(&o.reply, String::new);
                    Ok(ExitCode::SUCCESS)
                }
                // run() printed the BOOTCAST-AGENT-ERROR line on the consoles.
                Err(e) => Err(e.into()),
            }
        }
    }
}

/// `bootcast agent inventory`: collects under `root` and prints the JSON on stdout.
fn inventory(format: InventoryFormat, root: &std::path::Path, mac: Option<&str>) -> Result<()> {
    use bootcast::inventory::{collect, glpi};
    if !root.is_dir() {
        anyhow::bail!(
            "--root {}: not a directory: give the directory that holds proc/ and sys/ (/ on a running machine)",
            root.display()
        );
    }
    let mac = match mac {
        Some(m) => m
            .parse::<bootcast::mac::Mac>()
            .with_context(|| format!("--mac {m:?}"))?
            .to_string(),
        None => collect::default_route_mac(root).unwrap_or_default(),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let inv = collect::collect(root, &mac, now);
    let text = match format {
        InventoryFormat::Json => serde_json::to_string_pretty(&inv),
        InventoryFormat::Glpi => {
            for w in &inv.warnings {
                eprintln!("warning: {w}");
            }
            let deviceid = if mac.is_empty() {
                "bootcast-unknown".to_string()
            } else {
                format!("bootcast-{}", mac.replace(':', ""))
            };
            serde_json::to_string_pretty(&glpi::to_glpi(&inv, &deviceid))
        }
    };
    println!("{}", text.context("inventory to JSON")?);
    Ok(())
}

/// `agent post-deploy`: the grow step, then the host name step, as a reimage runs them. The
/// JSON is the host-name outcome when only `--hostname` is given (as before `--grow`), else
/// `{"grow": ..., "hostname": ...}`.
fn post_deploy(
    out: &Output,
    disk: &std::path::Path,
    hostname: Option<&str>,
    grow: Option<u32>,
) -> Result<ExitCode> {
    use bootcast::agent::grow::GrowOutcome;
    use bootcast::agent::postdeploy::HostnameOutcome;
    if hostname.is_none() && grow.is_none() {
        anyhow::bail!("nothing to do: give --hostname NAME, --grow N, or both");
    }
    if let Some(h) = hostname {
        if !bootcast::db::hosts::valid_name(h) {
            anyhow::bail!("invalid host name {h:?}: use 1-63 characters from a-z A-Z 0-9 and '-', not starting or ending with '-'");
        }
    }
    let sys = std::path::Path::new("/sys");
    let mut log = |l: &str| eprintln!("{l}");
    let grown = match grow {
        Some(n) => Some(
            bootcast::agent::grow::grow(disk, sys, n, &mut log).map_err(|e| {
                anyhow::anyhow!(
                    "post-deploy on {}: growing partition {n}: {e}",
                    disk.display()
                )
            })?,
        ),
        None => None,
    };
    let named = match hostname {
        Some(h) => Some(
            bootcast::agent::postdeploy::set_hostname(disk, sys, h, &mut log)
                .map_err(|e| anyhow::anyhow!("post-deploy on {}: {e}", disk.display()))?,
        ),
        None => None,
    };
    let json = match (&grown, &named) {
        (None, Some(n)) => serde_json::to_value(n)?,
        _ => serde_json::json!({ "grow": grown, "hostname": named }),
    };
    out.emit(&json, || {
        let mut lines = Vec::new();
        match &grown {
            Some(GrowOutcome::Grown {
                number,
                old_size,
                new_size,
                moved,
                filesystem,
            }) => lines.push(format!(
                "partition {number} grown from {old_size} to {new_size} bytes ({filesystem}); moved to the disk's end: {moved:?}"
            )),
            Some(GrowOutcome::Skipped { why }) => lines.push(format!("not grown: {why}")),
            None => {}
        }
        match (&named, hostname) {
            (Some(HostnameOutcome::Written { partitions }), Some(h)) => {
                lines.push(format!("host name {h} written on {}", partitions.join(", ")))
            }
            (Some(HostnameOutcome::Skipped { why }), _) => {
                lines.push(format!("host name not written: {why}"))
            }
            _ => {}
        }
        lines.join("\n")
    });
    Ok(ExitCode::SUCCESS)
}

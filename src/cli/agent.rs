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
    /// Run the post-deploy steps on a restored disk, as a reimage does: write NAME into
    /// /etc/hostname of every Linux root filesystem on ext2/3/4 (root; partitions are mounted)
    PostDeploy {
        /// The whole disk (block device), e.g. /dev/sdb or /dev/loop0 (losetup --partscan)
        #[arg(long)]
        disk: PathBuf,
        #[arg(long)]
        hostname: String,
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
        AgentCmd::PostDeploy { disk, hostname } => {
            if !bootcast::db::hosts::valid_name(&hostname) {
                anyhow::bail!("invalid host name {hostname:?}: use 1-63 characters from a-z A-Z 0-9 and '-', not starting or ending with '-'");
            }
            let mut log = |l: &str| eprintln!("{l}");
            let outcome = bootcast::agent::postdeploy::set_hostname(
                &disk,
                std::path::Path::new("/sys"),
                &hostname,
                &mut log,
            )
            .map_err(|e| anyhow::anyhow!("post-deploy on {}: {e}", disk.display()))?;
            out.emit(&outcome, || match &outcome {
                bootcast::agent::postdeploy::HostnameOutcome::Written { partitions } => {
                    format!("host name {hostname} written on {}", partitions.join(", "))
                }
                bootcast::agent::postdeploy::HostnameOutcome::Skipped { why } => {
                    format!("host name not written: {why}")
                }
            });
            Ok(ExitCode::SUCCESS)
        }
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

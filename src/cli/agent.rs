//! `bootcast agent ...`: commands the boot environment runs.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

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
}

pub fn run(cmd: AgentCmd, out: &Output) -> Result<ExitCode> {
    match cmd {
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

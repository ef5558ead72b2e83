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
}

pub fn run(cmd: AgentCmd, out: &Output) -> Result<ExitCode> {
    match cmd {
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

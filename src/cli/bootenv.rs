//! `bootcast bootenv ...`

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;

use bootcast::bootenv::{self, BootEnvInfo, BuildOptions};

use super::output::{bytes, utc, Output};

#[derive(Subcommand, Debug)]
pub enum BootenvCmd {
    /// Build DATA/bootenv/{vmlinuz,initrd.img,bootenv.json}: a Debian kernel and an initramfs
    /// with busybox-static and this bootcast as the agent
    Build {
        /// Kernel package to use (default: what linux-image-amd64 depends on, via apt-get)
        #[arg(long, value_name = "PATH")]
        kernel_deb: Option<PathBuf>,
        /// Where downloaded kernel packages are kept and reused (default: DATA/bootenv/cache)
        #[arg(long, value_name = "DIR")]
        cache: Option<PathBuf>,
        /// Resolve and download linux-image-amd64 again even if the cache has a kernel
        #[arg(long)]
        refresh_kernel: bool,
        /// Agent binary (default: this executable; must be statically linked)
        #[arg(long, value_name = "PATH")]
        agent: Option<PathBuf>,
        /// Busybox binary (must be static: Debian package busybox-static)
        #[arg(long, value_name = "PATH", default_value = "/bin/busybox")]
        busybox: PathBuf,
        /// More kernel modules to include and load (dependencies are added)
        #[arg(long = "module", value_name = "NAME")]
        modules: Vec<String>,
        /// zstd level for the initramfs
        #[arg(long, default_value_t = 19, value_parser = clap::value_parser!(i32).range(1..=22))]
        zstd_level: i32,
    },
    /// Show the boot environment built in the data directory
    Show,
}

pub fn run(cmd: BootenvCmd, data: &Path, out: &Output) -> Result<ExitCode> {
    match cmd {
        BootenvCmd::Build {
            kernel_deb,
            cache,
            refresh_kernel,
            agent,
            busybox,
            modules,
            zstd_level,
        } => {
            let opts = BuildOptions {
                kernel_deb,
                cache_dir: cache,
                refresh_kernel,
                agent,
                busybox,
                extra_modules: modules,
                zstd_level,
                progress: Box::new(|m| eprintln!("bootenv: {m}")),
                // (an agent given with --agent is taken to be of this release)
                agent_protocol: bootcast::proto::agent::AGENT_PROTOCOL,
            };
            let info = bootenv::build(data, &opts).context("bootenv build")?;
            out.emit(&info, || human(data, &info));
            Ok(ExitCode::SUCCESS)
        }
        BootenvCmd::Show => match bootenv::load(data)? {
            Some(info) => {
                out.emit(&info, || human(data, &info));
                Ok(ExitCode::SUCCESS)
            }
            None => {
                let dir = bootenv::dir(data);
                out.emit(&serde_json::Value::Null, || {
                    format!(
                        "no boot environment in {}: run `bootcast bootenv build`",
                        dir.display()
                    )
                });
                Ok(ExitCode::FAILURE)
            }
        },
    }
}

fn human(data: &Path, i: &BootEnvInfo) -> String {
    let stale = match i.usable(bootcast::proto::agent::AGENT_PROTOCOL) {
        Ok(()) => String::new(),
        Err(why) => format!("\nNOT USABLE  {why}"),
    };
    format!(
        "boot environment in {dir}\n\
         kernel      {kv} ({pkg}), vmlinuz {vs}\n\
         initrd.img  {is} ({comp}), agent {agent}{strip}, {bb}\n\
         modules     {nm}: {mods}{missing}\n\
         built       {at} by bootcast {ver}",
        dir = bootenv::dir(data).display(),
        kv = i.kernel_version,
        pkg = i.kernel_package,
        vs = bytes(i.vmlinuz.size),
        is = bytes(i.initrd.size),
        comp = i.initrd_compression,
        agent = bytes(i.agent_size),
        strip = if i.agent_stripped {
            ""
        } else {
            " (with debug info)"
        },
        bb = i.busybox,
        nm = i.modules.len(),
        mods = i.modules.join(" "),
        missing = if i.modules_missing.is_empty() {
            String::new()
        } else {
            format!("; not in this kernel: {}", i.modules_missing.join(" "))
        },
        at = utc(i.built_at as i64),
        ver = i.bootcast_version,
    ) + &stale
}

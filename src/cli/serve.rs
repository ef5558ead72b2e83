//! `bootcast serve`: boot services, HTTP and API in one process.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use tokio_util::sync::CancellationToken;

use bootcast::config::RawConfig;
use bootcast::netif::interface_ipv4;
use bootcast::server::Server;

use super::output::Output;

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    boot: BootArgs,
}

/// The flags `serve` and `relay` share: configuration file, HTTP, TFTP and DHCP.
#[derive(Args, Debug)]
pub struct BootArgs {
    /// TOML configuration file (default: DATA/bootcast.toml if it exists); flags win over it
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Tests: the schedulers' clock from this file (Unix seconds)
    #[arg(long, value_name = "PATH", hide = true)]
    clock_file: Option<PathBuf>,
    /// HTTP listen address [default: 0.0.0.0:8080]
    #[arg(long, value_name = "ADDR:PORT")]
    http: Option<String>,
    /// HTTPS listen address (staff API, relay protocol, and everything else), or "off"
    /// [default: the HTTP address, port 8443]
    #[arg(long, value_name = "ADDR:PORT")]
    https: Option<String>,
    /// TFTP listen address, or "off" [default: 0.0.0.0:69]
    #[arg(long, value_name = "ADDR:PORT")]
    tftp: Option<String>,
    /// Extra files served over TFTP, after the embedded iPXE binaries
    #[arg(long, value_name = "DIR")]
    tftp_root: Option<PathBuf>,
    /// The IPv4 address PCs use to reach this server [default: the DHCP interface's]
    #[arg(long, value_name = "IP")]
    advertise: Option<String>,
    /// Serve DHCP on this interface only (DHCP stays off unless an interface is named)
    #[arg(long, value_name = "IFACE")]
    dhcp_interface: Option<String>,
    /// proxy: answer PXE clients beside the site's DHCP server; full: hand out addresses too
    #[arg(long, value_name = "proxy|full")]
    dhcp_mode: Option<String>,
    /// Address pool for full mode
    #[arg(long, value_name = "FIRST,LAST")]
    dhcp_range: Option<String>,
    /// What UEFI x64 PXE clients boot: shim (the signed Secure Boot chain) or ipxe
    /// [default: shim]
    #[arg(long, value_name = "shim|ipxe")]
    uefi_chain: Option<String>,
}

impl BootArgs {
    /// The configuration file (if any) with these flags over it.
    pub fn raw_config(&self, data: &Path) -> Result<RawConfig> {
        let file = match &self.config {
            Some(p) => Some(p.clone()),
            None => Some(data.join("bootcast.toml")).filter(|p| p.is_file()),
        };
        let mut raw = match &file {
            Some(p) => RawConfig::from_file(p)?,
            None => RawConfig::default(),
        };
        let set = |dst: &mut Option<String>, src: &Option<String>| {
            if src.is_some() {
                dst.clone_from(src);
            }
        };
        set(&mut raw.http.listen, &self.http);
        set(&mut raw.http.tls_listen, &self.https);
        set(&mut raw.tftp.listen, &self.tftp);
        set(&mut raw.advertise, &self.advertise);
        set(&mut raw.dhcp.interface, &self.dhcp_interface);
        set(&mut raw.dhcp.mode, &self.dhcp_mode);
        set(&mut raw.dhcp.range, &self.dhcp_range);
        set(&mut raw.dhcp.uefi_chain, &self.uefi_chain);
        if self.clock_file.is_some() {
            raw.clock_file.clone_from(&self.clock_file);
        }
        if self.tftp_root.is_some() {
            raw.tftp.root.clone_from(&self.tftp_root);
        }
        Ok(raw)
    }
}

pub fn run(args: ServeArgs, data: &Path, out: &Output) -> Result<ExitCode> {
    init_logging();
    let raw = args.boot.raw_config(data)?;
    if !raw.relay.is_empty() {
        anyhow::bail!(
            "the configuration has a [relay] section: those settings are for `bootcast relay`; remove it to run `bootcast serve`"
        );
    }
    let config = raw.validate(&lookup)?;
    let rt = tokio::runtime::Runtime::new().context("cannot start the tokio runtime")?;
    rt.block_on(async move {
        let server = Server::bind(config, data).await?;
        banner(server.listening(), data);
        if out.json {
            let l = server.listening();
            out.emit(
                &serde_json::json!({
                    "http": l.http, "tftp": l.tftp, "dhcp": l.dhcp, "base_url": l.base_url,
                    "base_from_request": l.base_from_request, "bootenv_problem": l.bootenv,
                    "new_token": l.new_token, "https": https_json(l),
                    "signing_key": l.signing_key.as_ref().map(|(k, _)| k.to_string()),
                }),
                String::new,
            );
        }
        let cancel = on_signals();
        server.run(cancel).await?;
        eprintln!("bootcast: stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// Looks up an interface's IPv4 address and netmask, for validation.
pub fn lookup(name: &str) -> Option<(Ipv4Addr, Ipv4Addr)> {
    interface_ipv4(name)
}

/// A token cancelled by SIGINT or SIGTERM (call inside the runtime).
pub fn on_signals() -> CancellationToken {
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        let which = tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
            _ = c.cancelled() => return,
        };
        tracing::info!("{which}: shutting down");
        c.cancel();
    });
    cancel
}

pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BOOTCAST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// `--json`'s `https`: address, URL, fingerprint, certificate file (null when off).
pub fn https_json(l: &bootcast::server::Listening) -> serde_json::Value {
    match &l.https {
        None => serde_json::Value::Null,
        Some(h) => serde_json::json!({
            "listen": h.addr, "url": h.url, "fingerprint": h.fingerprint,
            "cert": h.cert, "self_signed": h.self_signed,
        }),
    }
}

/// The banner lines for HTTPS: where, the certificate, and the flag a relay pins it with.
pub fn https_lines(l: &bootcast::server::Listening) -> Vec<String> {
    let Some(h) = &l.https else {
        return vec!["  HTTPS  off (staff API and relay protocol only from this machine)".into()];
    };
    let url = h
        .url
        .clone()
        .unwrap_or_else(|| format!("https://SERVER:{}", h.addr.port()));
    vec![
        format!("  HTTPS  {}  ({url}: staff API, relay protocol)", h.addr),
        format!(
            "  certificate {}  {} ({})",
            h.fingerprint,
            h.cert.display(),
            match (h.self_signed, h.created) {
                (true, true) => "self-signed, made now",
                (true, false) => "self-signed",
                (false, _) => "[tls] cert",
            }
        ),
        format!(
            "  relays pin it with: --upstream {url} --upstream-fingerprint {}",
            h.fingerprint
        ),
    ]
}

/// The banner lines for TFTP and DHCP.
pub fn boot_lines(l: &bootcast::server::Listening) -> Vec<String> {
    vec![
        match l.tftp {
            Some(a) => format!("  TFTP   {a}  (iPXE binaries)"),
            None => "  TFTP   off".into(),
        },
        match &l.dhcp {
            Some(d) => format!("  DHCP   {d}"),
            None => "  DHCP   off (name an interface with --dhcp-interface to answer PXE clients)"
                .into(),
        },
    ]
}

fn banner(l: &bootcast::server::Listening, data: &Path) {
    let mut lines = vec![
        format!(
            "bootcast {} serving from {}",
            env!("CARGO_PKG_VERSION"),
            data.display()
        ),
        if l.base_from_request {
            format!(
                "  HTTP   {}  (boot scripts name the address each request came to; --advertise IP fixes one)",
                l.http
            )
        } else {
            format!("  HTTP   {}  (PCs reach it as {})", l.http, l.base_url)
        },
    ];
    lines.extend(https_lines(l));
    lines.extend(boot_lines(l));
    if let Some(why) = &l.bootenv {
        lines.push(format!("  note: {why}"));
    }
    match &l.new_token {
        Some(t) => lines.push(format!(
            "  API token (shown once; `bootcast token show` prints it again): {t}"
        )),
        None => lines.push("  API token: `bootcast token show`".into()),
    }
    if let Some((key, made)) = &l.signing_key {
        lines.push(format!(
            "  signing key {key}{}  (relays pin it with --upstream-key {key}; `bootcast key show`)",
            if *made { ", made now" } else { "" }
        ));
    }
    lines.push("bootcast: ready".into());
    eprintln!("{}", lines.join("\n"));
}

//! `bootcast relay`: a site relay (pull-through cache, prestage of pushes, heartbeat) with the
//! same boot services as `serve`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use bootcast::server::Server;

use super::output::Output;
use super::serve::{
    boot_lines, https_json, https_lines, init_logging, lookup, on_signals, BootArgs,
};

#[derive(Args, Debug)]
pub struct RelayArgs {
    /// The server above: the central server, or another relay (its HTTPS URL,
    /// https://HOST:8443)
    #[arg(long, value_name = "URL")]
    upstream: Option<String>,
    /// The upstream's certificate fingerprint, as its start banner prints it (a self-signed
    /// certificate); several separated by commas (e.g. while it is being replaced)
    #[arg(long, value_name = "sha256:HEX")]
    upstream_fingerprint: Option<String>,
    /// A PEM file of the CA that issued the upstream's certificate [default: without a
    /// fingerprint either, public CAs and the system's]
    #[arg(long, value_name = "FILE")]
    upstream_ca: Option<PathBuf>,
    /// The central server's signing key, as `bootcast key show` prints it (several separated
    /// by commas, during a rotation): orders and versions not signed by it are refused
    /// [default: the first key heard from upstream, kept in DATA/relay/upstream.key]
    #[arg(long, value_name = "ed25519:HEX")]
    upstream_key: Option<String>,
    /// The site this relay serves (`bootcast site add` on the central server)
    #[arg(long, value_name = "NAME")]
    site: Option<String>,
    /// A file holding the site relay token (`bootcast site add` or `site token NAME --rotate`
    /// on the central server print it), readable by its owner only; else the token comes from
    /// the environment (BOOTCAST_RELAY_TOKEN) or the configuration file. Never on the command
    /// line, where every user of the machine can read it.
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// How the site's machines reach this relay [default: http://ADVERTISE:PORT, or the HTTP address]
    #[arg(long, value_name = "http://IP:PORT")]
    url: Option<String>,
    /// Most compressed chunk bytes to keep; beyond it, chunks of images not assigned to the site go, oldest first (e.g. 500G)
    #[arg(long, value_name = "SIZE")]
    quota: Option<String>,
    /// A version not complete here yet: wait (clients get 503 until the push brings it) or upstream (pull it through) [default: wait]
    #[arg(long, value_name = "wait|upstream")]
    incomplete: Option<String>,
    #[command(flatten)]
    boot: BootArgs,
}

pub fn run(args: RelayArgs, data: &Path, out: &Output) -> Result<ExitCode> {
    init_logging();
    let mut raw = args.boot.raw_config(data)?;
    let set = |dst: &mut Option<String>, src: &Option<String>| {
        if src.is_some() {
            dst.clone_from(src);
        }
    };
    let r = &mut raw.relay;
    set(&mut r.upstream, &args.upstream);
    set(&mut r.upstream_fingerprint, &args.upstream_fingerprint);
    if args.upstream_ca.is_some() {
        r.upstream_ca.clone_from(&args.upstream_ca);
    }
    set(&mut r.upstream_key, &args.upstream_key);
    set(&mut r.site, &args.site);
    if let Some(t) = relay_token(args.token_file.as_deref())? {
        r.token = Some(t);
    }
    set(&mut r.url, &args.url);
    set(&mut r.quota, &args.quota);
    set(&mut r.incomplete, &args.incomplete);
    let mut config = raw.validate(&lookup)?;
    let relay = match config.relay.take() {
        Some(r) => r,
        None => anyhow::bail!(
            "a relay needs --upstream URL, --site NAME and its site's token (--token-file FILE or BOOTCAST_RELAY_TOKEN), or a [relay] section in the configuration file"
        ),
    };
    config.relay = Some(relay.clone());
    let rt = tokio::runtime::Runtime::new().context("cannot start the tokio runtime")?;
    rt.block_on(async move {
        let server = Server::bind(config, data).await?;
        let l = server.listening();
        let mut lines = vec![
            format!(
                "bootcast {} relay for site {} from {}",
                env!("CARGO_PKG_VERSION"),
                relay.site,
                data.display()
            ),
            format!(
                "  upstream  {}  ({})",
                relay.upstream,
                match &relay.upstream_tls {
                    _ if relay.upstream.starts_with("http://") => "plain HTTP".to_string(),
                    bootcast::tls::TlsClient::Pinned(p) => format!(
                        "certificate pinned: {}",
                        p.fingerprints
                            .iter()
                            .map(|f| f.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    bootcast::tls::TlsClient::Ca { path, .. } =>
                        format!("certificate from the CA of {}", path.display()),
                    bootcast::tls::TlsClient::Roots =>
                        "certificate from a public CA or the system's".to_string(),
                }
            ),
            format!(
                "  HTTP   {}  (clients reach it as {})",
                l.http,
                l.relay_url.as_deref().unwrap_or("?")
            ),
        ];
        if let Some(w) = relay.plain_upstream_warning() {
            tracing::warn!("{w}");
            lines.push(format!("  WARNING: {w}"));
        }
        lines.extend(https_lines(l));
        lines.extend(boot_lines(l));
        lines.push(format!(
            "  incomplete versions: {}",
            match relay.incomplete {
                bootcast::config::IncompletePolicy::Wait =>
                    "wait (clients get 503 until the push brings them)",
                bootcast::config::IncompletePolicy::Upstream => "pulled through from upstream",
            }
        ));
        lines.push(format!(
            "  quota  {}",
            relay
                .quota
                .map_or("none".to_string(), |q| format!("{q} bytes"))
        ));
        lines.push("bootcast: ready".into());
        eprintln!("{}", lines.join("\n"));
        if out.json {
            out.emit(
                &serde_json::json!({
                    "http": l.http, "tftp": l.tftp, "dhcp": l.dhcp, "url": l.relay_url,
                    "site": relay.site, "upstream": relay.upstream, "https": https_json(l),
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

/// The relay token from `--token-file` (refused when others may read the file), else from
/// `BOOTCAST_RELAY_TOKEN`; `None` leaves the configuration file's.
fn relay_token(file: Option<&Path>) -> Result<Option<String>> {
    use std::os::unix::fs::PermissionsExt;
    let Some(path) = file else {
        return Ok(std::env::var("BOOTCAST_RELAY_TOKEN")
            .ok()
            .map(|t| t.trim().to_string()));
    };
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read the relay token file {}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        anyhow::bail!(
            "the relay token file {} can be read by other users (mode {mode:o}): run `chmod 600 {}`",
            path.display(),
            path.display()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the relay token file {}", path.display()))?;
    Ok(Some(text.trim().to_string()))
}

//! Command-line interface: one file per command group.

mod agent;
mod backup;
mod bootenv;
mod host;
mod image;
mod inventory;
mod key;
mod multicast;
mod output;
mod push;
mod relay;
mod serve;
mod site;
mod store;
mod task;
mod token;
mod user;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "bootcast",
    version,
    about = "Network-boot imaging and image distribution"
)]
pub struct Cli {
    /// Data directory (store, manifests, database)
    #[arg(
        long,
        global = true,
        env = "BOOTCAST_DATA",
        default_value = "./bootcast-data"
    )]
    pub data: PathBuf,
    /// Machine-readable JSON on stdout
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// What runs in the boot environment (started by its /init, not by hand)
    #[command(subcommand)]
    Agent(agent::AgentCmd),
    /// Back up the central server while it runs (database, keys, tokens, configuration,
    /// manifests; chunks copied incrementally) into DIR
    Backup(backup::BackupArgs),
    /// Restore a backup into a new, empty data directory (--data)
    Restore(backup::RestoreArgs),
    /// Build and show the boot environment (kernel + initramfs with the agent)
    #[command(subcommand)]
    Bootenv(bootenv::BootenvCmd),
    /// Groups of hosts (a room): add, remove, list
    #[command(subcommand)]
    Group(host::GroupCmd),
    /// The hosts that network-booted through bootcast
    #[command(subcommand)]
    Host(host::HostCmd),
    /// Add, list, show, export and remove disk images
    #[command(subcommand)]
    Image(image::ImageCmd),
    /// The hardware inventory each host reported: show, export (GLPI), history
    #[command(subcommand)]
    Inventory(inventory::InventoryCmd),
    /// Events (boots, inventories, changes, reimages, pushes) and the hook runs they started
    Events(inventory::EventsArgs),
    /// Room multicast sessions by hand: send an image to a group, receive it
    #[command(subcommand)]
    Multicast(multicast::MulticastCmd),
    /// Push image versions to sites' relays at night: create, list, status, pause, resume, cancel
    #[command(subcommand)]
    Push(push::PushCmd),
    /// Sites and their relays' schedule (time zone, windows, bandwidth cap)
    #[command(subcommand)]
    Site(site::SiteCmd),
    /// Create, verify and garbage-collect the chunk store
    #[command(subcommand)]
    Store(store::StoreCmd),
    /// Run a site relay: boot services and a pull-through cache fed by nightly pushes
    Relay(Box<relay::RelayArgs>),
    /// Run the boot services (DHCP, TFTP), HTTP and the API
    Serve(serve::ServeArgs),
    /// Reimage and capture tasks: create, list (states, progress), cancel
    #[command(subcommand)]
    Task(task::TaskCmd),
    /// The staff API token
    #[command(subcommand)]
    Token(token::TokenCmd),
    /// The central server's signing key (versions and orders): show, rotate
    #[command(subcommand)]
    Key(key::KeyCmd),
    /// Staff accounts of the console and API: add, list, rm, passwd, token
    #[command(subcommand)]
    User(user::UserCmd),
    /// Who changed what (console, API, command line): the newest entries, or CSV
    Audit(user::AuditArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let out = output::Output { json: cli.json };
    let data = cli.data.clone();
    let code = dispatch(cli, &out)?;
    if code == ExitCode::SUCCESS && changes_something(&subcommand_names()) {
        let args: Vec<String> = std::env::args().skip(1).collect();
        user::audit_command(&data, &args);
    }
    Ok(code)
}

/// The subcommands as typed (`["host", "rule", "add"]`).
fn subcommand_names() -> Vec<String> {
    use clap::CommandFactory;
    let Ok(m) = Cli::command().try_get_matches_from(std::env::args_os()) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    let mut cur = &m;
    while let Some((name, sub)) = cur.subcommand() {
        names.push(name.to_string());
        cur = sub;
    }
    names
}

/// Does this command change the server's state (and so go to the audit trail)? Reads,
/// daemons and the boot environment's agent do not.
fn changes_something(names: &[String]) -> bool {
    const NEVER: [&str; 8] = [
        "agent", "serve", "relay", "events", "audit", "token", "backup", "bootenv",
    ];
    const READS: [&str; 8] = [
        "list", "show", "status", "export", "history", "verify", "diff", "runs",
    ];
    match names.first() {
        None => false,
        Some(group) if NEVER.contains(&group.as_str()) => false,
        Some(_) => !names.iter().any(|v| READS.contains(&v.as_str())),
    }
}

fn dispatch(cli: Cli, out: &output::Output) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Agent(cmd) => agent::run(cmd, out),
        Command::Backup(args) => backup::run_backup(args, &cli.data, out),
        Command::Restore(args) => backup::run_restore(args, &cli.data, out),
        Command::Bootenv(cmd) => bootenv::run(cmd, &cli.data, out),
        Command::Group(cmd) => host::run_group(cmd, &cli.data, out),
        Command::Host(cmd) => host::run_host(cmd, &cli.data, out),
        Command::Task(cmd) => task::run(cmd, &cli.data, out),
        Command::Image(cmd) => image::run(cmd, &cli.data, out),
        Command::Inventory(cmd) => inventory::run(cmd, &cli.data, out),
        Command::Events(args) => inventory::run_events(args, &cli.data, out),
        Command::Multicast(cmd) => multicast::run(cmd, &cli.data, out),
        Command::Store(cmd) => store::run(cmd, &cli.data, out),
        Command::Push(cmd) => push::run(cmd, &cli.data, out),
        Command::Relay(args) => relay::run(*args, &cli.data, out),
        Command::Site(cmd) => site::run(cmd, &cli.data, out),
        Command::Serve(args) => serve::run(args, &cli.data, out),
        Command::Token(cmd) => token::run(cmd, &cli.data, out),
        Command::Key(cmd) => key::run(cmd, &cli.data, out),
        Command::User(cmd) => user::run(cmd, &cli.data, out),
        Command::Audit(args) => user::run_audit(args, &cli.data, out),
    }
}

/// The data directory's database, the directory created if it does not exist yet.
pub fn open_db(data: &std::path::Path) -> anyhow::Result<bootcast::db::Db> {
    use anyhow::Context;
    std::fs::create_dir_all(data)
        .with_context(|| format!("cannot create the data directory {}", data.display()))?;
    Ok(bootcast::db::Db::open(&bootcast::db::path(data))?)
}

/// The API token a staff command sends to a server (`image export --from`, `multicast
/// receive`; images are private): `--token-file`, else `BOOTCAST_TOKEN`, else the token of the
/// local data directory (a server on this machine).
pub fn staff_token(
    data: &std::path::Path,
    file: Option<&std::path::Path>,
) -> anyhow::Result<String> {
    use anyhow::Context;
    if let Some(f) = file {
        let t = std::fs::read_to_string(f)
            .with_context(|| format!("reading the API token from {}", f.display()))?;
        return Ok(t.trim().to_string());
    }
    if let Ok(t) = std::env::var("BOOTCAST_TOKEN") {
        return Ok(t.trim().to_string());
    }
    match bootcast::http::auth::read_token(data)? {
        Some(t) => Ok(t),
        None => anyhow::bail!("images are private: give the server's API token with --token-file FILE or BOOTCAST_TOKEN (`bootcast token show` on the server prints it)"),
    }
}

/// How `--from https://...` checks the server's certificate: `--fingerprint`, `--ca`, or
/// the public CAs.
pub fn client_tls(
    fingerprint: Option<&str>,
    ca: Option<&std::path::Path>,
) -> anyhow::Result<bootcast::tls::TlsClient> {
    use bootcast::tls::{Fingerprint, Pins, TlsClient};
    if let Some(list) = fingerprint {
        let fingerprints = list
            .split(',')
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .map(Fingerprint::parse)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("--fingerprint: {e}"))?;
        anyhow::ensure!(
            !fingerprints.is_empty(),
            "--fingerprint: give sha256:HEX, as the server's start banner prints it"
        );
        return Ok(TlsClient::Pinned(Pins { fingerprints }));
    }
    if let Some(path) = ca {
        let roots = bootcast::tls::load_ca(path).map_err(|e| anyhow::anyhow!("--ca: {e}"))?;
        return Ok(TlsClient::Ca {
            path: path.to_path_buf(),
            roots,
        });
    }
    Ok(TlsClient::Roots)
}

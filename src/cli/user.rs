//! `bootcast user add|list|rm|passwd|token` (staff accounts of the console and API) and
//! `bootcast audit` (who changed what).

use std::io::BufRead;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};

use bootcast::access::{self, Role};
use bootcast::db::staff;
use bootcast::http::staff::{audit_csv, check_new_user, new_token};

use super::output::{utc, Output};

#[derive(Subcommand, Debug)]
pub enum UserCmd {
    /// Add a local account (the password is asked for, or read from stdin)
    Add {
        name: String,
        /// admin (everything), operator (their sites), viewer (read-only)
        #[arg(long)]
        role: Role,
        /// An operator's site (repeat for several)
        #[arg(long = "site")]
        sites: Vec<String>,
        /// Read the password from the first line of stdin (scripts)
        #[arg(long)]
        password_stdin: bool,
    },
    /// List the accounts (local, and directory users who logged in)
    List,
    /// Remove an account with its tokens and sessions
    Rm { name: String },
    /// Set a local account's password (its sessions end)
    Passwd {
        name: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Make a personal API token for an account (printed once; only its hash is kept), or
    /// revoke the account's tokens
    Token {
        name: String,
        #[arg(long)]
        label: Option<String>,
        /// Revoke every token of the account instead
        #[arg(long)]
        revoke: bool,
    },
}

/// `bootcast audit`.
#[derive(Args, Debug)]
pub struct AuditArgs {
    /// Only this user's entries
    #[arg(long)]
    user: Option<String>,
    /// Only entries whose action or detail contains this text
    #[arg(long)]
    grep: Option<String>,
    /// Newest N entries
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// Every matching entry as CSV (the --limit is ignored)
    #[arg(long)]
    csv: bool,
}

/// The password: the first line of stdin, or asked twice on the terminal without echo.
fn read_password(from_stdin: bool) -> Result<String> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        return Ok(line.trim_end_matches(['\n', '\r']).to_string());
    }
    let first = ask("Password: ")?;
    let again = ask("Again: ")?;
    if first != again {
        bail!("the two passwords differ; nothing changed");
    }
    Ok(first)
}

/// Reads a line from the terminal with echo off.
fn ask(prompt: &str) -> Result<String> {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    use std::io::Write;
    let stdin = std::io::stdin();
    let old = tcgetattr(&stdin)
        .context("no terminal to ask the password on: give it on stdin with --password-stdin")?;
    let mut quiet = old.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    eprint!("{prompt}");
    std::io::stderr().flush()?;
    tcsetattr(&stdin, SetArg::TCSANOW, &quiet)?;
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    tcsetattr(&stdin, SetArg::TCSANOW, &old)?;
    eprintln!();
    read?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

pub fn run(cmd: UserCmd, data: &Path, out: &Output) -> Result<ExitCode> {
    let db = super::open_db(data)?;
    let now = bootcast::time::now_unix();
    match cmd {
        UserCmd::Add {
            name,
            role,
            sites,
            password_stdin,
        } => {
            check_new_user(&name, role, &sites).map_err(anyhow::Error::msg)?;
            if staff::get(&db.lock(), &name)?.is_some() {
                bail!("a user {name} exists already (`bootcast user passwd {name}` sets its password)");
            }
            let hash = access::hash_password(&read_password(password_stdin)?)?;
            let c = db.lock();
            if !staff::add(&c, &name, role, &sites, &hash, now)? {
                bail!("a user {name} exists already");
            }
            let u = staff::get(&c, &name)?;
            out.emit(&serde_json::json!({ "user": u }), || {
                format!(
                    "user {name} added: {role}{}; they log in at the console (/ui) or make a token with `bootcast user token {name}`",
                    if sites.is_empty() { String::new() } else { format!(" of {}", sites.join(", ")) }
                )
            });
        }
        UserCmd::List => {
            let users = staff::list(&db.lock())?;
            out.emit(&serde_json::json!({ "users": users }), || {
                let mut s = format!(
                    "{:<24} {:<9} {:<6} {:<20} {:<7} SITES\n",
                    "NAME", "ROLE", "FROM", "LAST LOGIN", "TOKENS"
                );
                for u in &users {
                    s.push_str(&format!(
                        "{:<24} {:<9} {:<6} {:<20} {:<7} {}\n",
                        u.name,
                        u.role,
                        u.source,
                        u.last_login.map(utc).unwrap_or_else(|| "never".into()),
                        u.tokens,
                        u.sites.join(",")
                    ));
                }
                if users.is_empty() {
                    s.push_str("(no user: add one with `bootcast user add NAME --role admin`)\n");
                }
                s
            });
        }
        UserCmd::Rm { name } => {
            if !staff::remove(&db.lock(), &name)? {
                bail!("no user {name} (`bootcast user list`)");
            }
            out.emit(&serde_json::json!({ "removed": name }), || {
                format!("user {name} removed, with its tokens and sessions")
            });
        }
        UserCmd::Passwd {
            name,
            password_stdin,
        } => {
            if staff::password_hash(&db.lock(), &name)?.is_none() {
                bail!("no local account {name} (directory users change their password in the directory)");
            }
            let hash = access::hash_password(&read_password(password_stdin)?)?;
            staff::set_password(&db.lock(), &name, &hash)?;
            out.emit(&serde_json::json!({ "user": name }), || {
                format!("password of {name} set; their sessions ended")
            });
        }
        UserCmd::Token {
            name,
            label,
            revoke,
        } => {
            if staff::get(&db.lock(), &name)?.is_none() {
                bail!("no user {name} (`bootcast user list`)");
            }
            if revoke {
                let n = staff::revoke_tokens(&db.lock(), &name, None)?;
                out.emit(&serde_json::json!({ "user": name, "revoked": n }), || {
                    format!("{n} token(s) of {name} revoked")
                });
            } else {
                let token = new_token()?;
                let id = staff::add_token(
                    &db.lock(),
                    &name,
                    &access::secret_hash(&token),
                    label.as_deref(),
                    now,
                )?;
                out.emit(
                    &serde_json::json!({ "user": name, "id": id, "token": token }),
                    || format!("{token}\n(shown once: `Authorization: Bearer {token}`; revoke with `bootcast user token {name} --revoke`)"),
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run_audit(args: AuditArgs, data: &Path, out: &Output) -> Result<ExitCode> {
    let db = super::open_db(data)?;
    let q = staff::AuditQuery {
        user: args.user,
        q: args.grep,
        before: None,
        since: None,
        limit: if args.csv { u32::MAX } else { args.limit },
    };
    let (entries, total) = staff::audit_page(&db.lock(), &q)?;
    if args.csv {
        print!("{}", audit_csv(&entries));
        return Ok(ExitCode::SUCCESS);
    }
    out.emit(
        &serde_json::json!({ "entries": entries, "total": total }),
        || {
            let mut s = String::new();
            for e in entries.iter().rev() {
                s.push_str(&format!(
                    "{}  {:<16} {:<15} {} {}{}\n",
                    utc(e.at),
                    e.user,
                    e.from.as_deref().unwrap_or("-"),
                    e.status
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "ok".into()),
                    e.action,
                    e.detail
                        .as_deref()
                        .map(|d| format!("  {d}"))
                        .unwrap_or_default()
                ));
            }
            s.push_str(&format!("({} of {total} entries)\n", entries.len()));
            s
        },
    );
    Ok(ExitCode::SUCCESS)
}

/// Records a CLI command that changed something in the audit trail: the user who ran it
/// (`cli:` and `SUDO_USER`, else `USER`), from `cli`, the command line with secrets masked.
pub fn audit_command(data: &Path, args: &[String]) {
    let who = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| format!("uid{}", nix::unistd::getuid()));
    let mut masked = Vec::with_capacity(args.len());
    let mut hide = false;
    for a in args {
        masked.push(if hide { "***".to_string() } else { a.clone() });
        hide = a.contains("password") || a.contains("token") || a.contains("secret");
        hide = hide
            && !a.contains('=')
            && a.starts_with("--")
            && !a.ends_with("-stdin")
            && !a.ends_with("-file");
    }
    let e = staff::AuditEntry {
        id: 0,
        at: bootcast::time::now_unix(),
        user: format!("cli:{who}"),
        from: Some("cli".into()),
        action: format!("cli: bootcast {}", masked.join(" ")),
        detail: None,
        status: None,
    };
    let path = bootcast::db::path(data);
    if !path.exists() {
        return;
    }
    match bootcast::db::Db::open(&path) {
        Ok(db) => {
            if let Err(err) = staff::audit(&db.lock(), &e) {
                tracing::warn!("cannot record the command in the audit trail: {err}");
            }
        }
        Err(err) => tracing::warn!("cannot record the command in the audit trail: {err}"),
    }
}

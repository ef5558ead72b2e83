//! Hooks: site automation run on events (issue 8). Configured as
//!
//! ```toml
//! [[hooks]]
//! name = "cmdb"                       # optional; default: hook-N
//! on = ["inventory_changed"]          # or one name; see [`EventKind`]
//! command = ["/usr/local/bin/cmdb-update", "--from-bootcast"]
//! timeout = 30                        # seconds (default 30); then the process group is killed
//! env = { CMDB_URL = "http://cmdb" }  # added to the environment
//!
//! [[hooks]]
//! on = "reimage_failed"
//! webhook = "https://chat.example/hooks/abc"
//! secret = "..."                      # HMAC-SHA256 key of the signature header
//! retries = 3                         # default 3 (1 s, 2 s, 4 s apart)
//! ```
//!
//! Every event becomes a JSON document ([`Event::payload`]): `{"id", "event", "at", "host",
//! "data"}`. A command gets it on stdin (and `BOOTCAST_EVENT`, `BOOTCAST_HOST` in its
//! environment); a webhook gets it as the body of a POST with `X-Bootcast-Event` and
//! `X-Bootcast-Signature: sha256=<hex HMAC-SHA256 of the body with the secret>`.
//!
//! [`Hooks::emit`] never waits: the event is recorded and each hook runs on its own task, so a
//! failing or hanging hook never holds up a boot or another hook. Each run (outcome, attempts,
//! exit status or HTTP status) is recorded (`GET /api/v1/hooks/runs`, `bootcast events`).

use std::collections::BTreeMap;
use std::time::Duration;

use hmac::{Hmac, Mac as _};
use serde::Deserialize;
use sha2::Sha256;

use crate::db::Db;
use crate::retry::Backoff;

/// The waits between a webhook's attempts: 1 s doubling, at most 64 s.
const WEBHOOK_BACKOFF: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(64));

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A machine's agent said hello.
    Boot,
    /// A machine reported its inventory.
    Inventory,
    /// ...and it differs from the previous boot's (or it is a new machine).
    InventoryChanged,
    ReimageDone,
    ReimageFailed,
    /// A push reached every site.
    PushDone,
    /// Wake-on-LAN packets were sent for a host (by the server, or a site's relay).
    Wake,
    /// A registration rule gave a new machine its room, name or image (or asks approval).
    Registered,
    /// A host took another's place (`host replace`, a broken host's room, or the same
    /// machine with another NIC).
    HostReplaced,
    /// Two active hosts report the same SMBIOS UUID: nothing was merged.
    IdentityConflict,
}

impl EventKind {
    pub const ALL: [EventKind; 10] = [
        EventKind::Boot,
        EventKind::Inventory,
        EventKind::InventoryChanged,
        EventKind::ReimageDone,
        EventKind::ReimageFailed,
        EventKind::PushDone,
        EventKind::Wake,
        EventKind::Registered,
        EventKind::HostReplaced,
        EventKind::IdentityConflict,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Boot => "boot",
            EventKind::Inventory => "inventory",
            EventKind::InventoryChanged => "inventory_changed",
            EventKind::ReimageDone => "reimage_done",
            EventKind::ReimageFailed => "reimage_failed",
            EventKind::PushDone => "push_done",
            EventKind::Wake => "wake",
            EventKind::Registered => "registered",
            EventKind::HostReplaced => "host_replaced",
            EventKind::IdentityConflict => "identity_conflict",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// `on = "x"` or `on = ["x", "y"]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// A `[[hooks]]` table as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHook {
    pub name: Option<String>,
    pub on: OneOrMany,
    pub command: Option<Vec<String>>,
    pub webhook: Option<String>,
    pub secret: Option<String>,
    pub timeout: Option<u64>,
    pub retries: Option<u32>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Command {
        argv: Vec<String>,
        env: BTreeMap<String, String>,
    },
    Webhook {
        url: String,
        secret: Option<String>,
    },
}

/// A checked hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub name: String,
    pub on: Vec<EventKind>,
    pub action: Action,
    pub timeout: Duration,
    pub retries: u32,
}

/// Checks the `[[hooks]]` tables; one problem per mistake, naming the hook and the fix.
pub fn validate(raw: &[RawHook], p: &mut dyn FnMut(String)) -> Vec<Hook> {
    let mut out = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let name = r.name.clone().unwrap_or_else(|| format!("hook-{}", i + 1));
        let key = format!("hooks[{i}] ({name})");
        let names = match &r.on {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        };
        let mut on = Vec::new();
        for n in &names {
            match EventKind::parse(n) {
                Some(k) => on.push(k),
                None => p(format!(
                    "{key}: on = {n:?} is no event; use one of {}",
                    EventKind::ALL.map(|k| k.as_str()).join(", ")
                )),
            }
        }
        if names.is_empty() {
            p(format!("{key}: on = [] names no event"));
        }
        let action = match (&r.command, &r.webhook) {
            (Some(argv), None) if !argv.is_empty() && !argv[0].is_empty() => {
                if r.secret.is_some() {
                    p(format!(
                        "{key}: secret is for webhooks; a command gets the event on stdin"
                    ));
                }
                Some(Action::Command {
                    argv: argv.clone(),
                    env: r.env.clone(),
                })
            }
            (None, Some(url)) if url.starts_with("http://") || url.starts_with("https://") => {
                Some(Action::Webhook {
                    url: url.clone(),
                    secret: r.secret.clone(),
                })
            }
            (None, Some(url)) => {
                p(format!(
                    "{key}: webhook = {url:?} is not an http:// or https:// URL"
                ));
                None
            }
            (Some(_), Some(_)) => {
                p(format!("{key}: give either command or webhook, not both"));
                None
            }
            (Some(_), None) => {
                p(format!("{key}: command = [] is empty; give the program and its arguments, e.g. [\"/usr/local/bin/x\", \"--y\"]"));
                None
            }
            (None, None) => {
                p(format!(
                    "{key}: give command = [\"program\", \"arg\"...] or webhook = \"URL\""
                ));
                None
            }
        };
        let timeout = r.timeout.unwrap_or(30);
        if timeout == 0 {
            p(format!("{key}: timeout must be at least 1 second"));
        }
        if let Some(action) = action {
            out.push(Hook {
                name,
                on,
                action,
                timeout: Duration::from_secs(timeout.max(1)),
                retries: r.retries.unwrap_or(3),
            });
        }
    }
    out
}

/// One event, as hooks get it.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: i64,
    pub kind: EventKind,
    pub at: i64,
    pub mac: Option<String>,
    pub data: serde_json::Value,
}

impl Event {
    /// The JSON document a hook gets.
    pub fn payload(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "event": self.kind.as_str(),
            "at": crate::time::rfc3339(self.at),
            "host": self.mac,
            "data": self.data,
        })
    }
}

/// `sha256=<hex>`: HMAC-SHA256 of `body` with `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The hooks of a server, and where events and runs are recorded.
#[derive(Clone)]
pub struct Hooks {
    hooks: std::sync::Arc<Vec<Hook>>,
    db: Db,
    client: reqwest::Client,
}

impl Hooks {
    pub fn new(hooks: Vec<Hook>, db: Db) -> Hooks {
        Hooks {
            hooks: std::sync::Arc::new(hooks),
            db,
            client: reqwest::Client::builder()
                .use_preconfigured_tls(crate::tls::public_client_config())
                .timeout(Duration::from_secs(30))
                .build()
                .expect("HTTP client"),
        }
    }

    /// Records the event and starts the hooks that want it, each on its own task; returns at
    /// once (call it from within the tokio runtime).
    pub fn emit(&self, kind: EventKind, mac: Option<String>, data: serde_json::Value) {
        let me = self.clone();
        tokio::spawn(async move {
            let now = crate::time::now_unix();
            let (m, d) = (mac.clone(), data.clone());
            let id = match me
                .db
                .call(move |c| crate::db::events::record(c, kind.as_str(), m.as_deref(), &d, now))
                .await
            {
                Ok(id) => id,
                Err(e) => {
                    tracing::warn!("recording event {}: {e}", kind.as_str());
                    return;
                }
            };
            let event = Event {
                id,
                kind,
                at: now,
                mac,
                data,
            };
            for hook in me.hooks.iter().filter(|h| h.on.contains(&kind)) {
                let (me, hook, event) = (me.clone(), hook.clone(), event.clone());
                tokio::spawn(async move { me.run(&hook, &event).await });
            }
        });
    }

    async fn run(&self, hook: &Hook, event: &Event) {
        let (eid, name) = (event.id, hook.name.clone());
        let started = crate::time::now_unix();
        let run = self
            .db
            .call(move |c| crate::db::events::run_started(c, eid, &name, started))
            .await;
        let (outcome, attempts, detail) = match &hook.action {
            Action::Command { argv, env } => run_command(argv, env, hook.timeout, event).await,
            Action::Webhook { url, secret } => {
                self.post(url, secret.as_deref(), hook.retries, event).await
            }
        };
        tracing::info!(
            hook = %hook.name,
            event = event.kind.as_str(),
            outcome,
            attempts,
            "hook run: {detail}"
        );
        if let Ok(run) = run {
            let ended = crate::time::now_unix();
            let _ = self
                .db
                .call(move |c| {
                    crate::db::events::run_ended(c, run, outcome, attempts, &detail, ended)
                })
                .await;
        }
    }

    async fn post(
        &self,
        url: &str,
        secret: Option<&str>,
        retries: u32,
        event: &Event,
    ) -> (&'static str, u32, String) {
        let body = serde_json::to_vec(&event.payload()).expect("JSON");
        let (res, attempts) = WEBHOOK_BACKOFF
            .tries(retries.saturating_add(1))
            .run_async(
                |_| {
                    let mut req = self
                        .client
                        .post(url)
                        .header("content-type", "application/json")
                        .header("x-bootcast-event", event.kind.as_str())
                        .body(body.clone());
                    if let Some(s) = secret {
                        req = req.header("x-bootcast-signature", signature(s.as_bytes(), &body));
                    }
                    async move {
                        match req.send().await {
                            Ok(r) if r.status().is_success() => Ok(r.status().as_u16()),
                            Ok(r) => Err(format!("HTTP {}", r.status().as_u16())),
                            Err(e) => Err(e.to_string()),
                        }
                    }
                },
                |_, _| true,
            )
            .await;
        match res {
            Ok(status) => ("ok", attempts, format!("HTTP {status}")),
            Err(last) => ("failed", attempts, last),
        }
    }
}

/// Runs a command hook: the event on stdin, killed (its whole process group) at `timeout`.
async fn run_command(
    argv: &[String],
    env: &BTreeMap<String, String>,
    timeout: Duration,
    event: &Event,
) -> (&'static str, u32, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .envs(env)
        .env("BOOTCAST_EVENT", event.kind.as_str())
        .env("BOOTCAST_HOST", event.mac.as_deref().unwrap_or(""))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return ("failed", 1, format!("cannot start {}: {e}", argv[0])),
    };
    let pid = child.id();
    let body = serde_json::to_vec(&event.payload()).expect("JSON");
    let mut stdin = child.stdin.take();
    let mut stderr = child.stderr.take();
    let work = async {
        if let Some(s) = stdin.as_mut() {
            // a hook that does not read its stdin is no failure
            let _ = s.write_all(&body).await;
        }
        drop(stdin.take());
        let mut err = Vec::new();
        if let Some(e) = stderr.as_mut() {
            let _ = e.read_to_end(&mut err).await;
            let keep = err.len().saturating_sub(2048);
            err.drain(..keep);
        }
        (child.wait().await, err)
    };
    match tokio::time::timeout(timeout, work).await {
        Ok((Ok(status), err)) => {
            let err = String::from_utf8_lossy(&err).trim().to_string();
            let tail = if err.is_empty() {
                String::new()
            } else {
                format!(": {err}")
            };
            if status.success() {
                ("ok", 1, format!("exit 0{tail}"))
            } else {
                ("failed", 1, format!("{status}{tail}"))
            }
        }
        Ok((Err(e), _)) => ("failed", 1, format!("waiting for {}: {e}", argv[0])),
        Err(_) => {
            if let Some(pid) = pid {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            (
                "timeout",
                1,
                format!("killed after {} s", timeout.as_secs()),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(toml_text: &str) -> Vec<RawHook> {
        #[derive(Deserialize)]
        struct F {
            hooks: Vec<RawHook>,
        }
        toml::from_str::<F>(toml_text).unwrap().hooks
    }

    #[test]
    fn hooks_are_checked_with_one_message_per_mistake() {
        let mut problems = Vec::new();
        let hooks = validate(
            &raw(r#"
                [[hooks]]
                on = ["inventory_changed", "boot"]
                command = ["/bin/cat"]
                [[hooks]]
                name = "chat"
                on = "reimage_failed"
                webhook = "http://10.99.0.9/x"
                secret = "k"
                [[hooks]]
                on = "rebooted"
                command = []
                [[hooks]]
                on = "boot"
                webhook = "ftp://x"
            "#),
            &mut |s| problems.push(s),
        );
        assert_eq!(hooks.len(), 2);
        assert_eq!(hooks[0].name, "hook-1");
        assert_eq!(
            hooks[0].on,
            vec![EventKind::InventoryChanged, EventKind::Boot]
        );
        assert_eq!(hooks[1].timeout, Duration::from_secs(30));
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("\"rebooted\" is no event"));
        assert!(problems[1].contains("command = [] is empty"));
        assert!(problems[2].contains("not an http"));
    }

    #[test]
    fn the_signature_is_hmac_sha256() {
        // RFC 4231 test case 2
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}

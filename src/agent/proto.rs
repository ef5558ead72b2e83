//! Messages between the agent (in the boot environment) and the server.
//!
//! The agent learns where the server is from the kernel command line that the iPXE script
//! set (see [`KernelArgs`]), then posts a [`Hello`] to `POST /api/v1/agent/hello` and does what
//! the [`HelloReply`] says.

use serde::{Deserialize, Serialize};

/// Firmware the machine booted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    Bios,
    Uefi,
}

impl Firmware {
    pub fn as_str(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        }
    }

    /// The inverse of [`Firmware::as_str`].
    pub fn parse(s: &str) -> Option<Firmware> {
        [Firmware::Bios, Firmware::Uefi]
            .into_iter()
            .find(|f| f.as_str() == s)
    }
}

/// `POST /api/v1/agent/hello`: the agent is up and says who it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// MAC of the interface the machine network-booted from, lower case, colon separated.
    pub mac: String,
    /// CPU architecture as `uname -m` prints it (`x86_64`, `aarch64`).
    pub arch: String,
    pub firmware: Firmware,
    /// When the agent's kernel started, seconds since the Unix epoch (UTC).
    pub boot_time: u64,
    /// The task id from the kernel command line, if the server booted it for a task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<i64>,
    /// The per-boot nonce from the kernel command line: proves that this hello comes from the
    /// boot the server started for this MAC (the MAC alone is no secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
}

/// What the agent does next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum HelloReply {
    /// Power the machine off.
    Poweroff,
    /// Reboot (the next boot script decides what the machine boots).
    Reboot,
    /// Write image `image` at version `version` (a full id) to the local disk for task
    /// `task`, reporting progress, then done or failed; then reboot.
    Reimage {
        task: i64,
        image: String,
        version: String,
        /// Post-deploy: the host's name, to write into the restored system where the agent
        /// knows how (see [`crate::agent::postdeploy`]); absent when the host has no name or
        /// the image's settings turn the step off.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hostname: Option<String>,
    },
}

/// `POST /api/v1/agent/progress`: how far the agent is with its task; at least every 2 s while
/// it works. The first report moves the task from `booting` to `running`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskProgress {
    pub mac: String,
    /// The per-boot nonce from the kernel command line (as in [`Hello`]).
    pub nonce: String,
    /// The task id from the kernel command line.
    pub task: i64,
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// Bytes per second, measured by the agent.
    pub rate: u64,
    /// Seconds left, if the agent can tell.
    #[serde(default)]
    pub eta: Option<u64>,
}

/// `POST /api/v1/agent/done`: the task finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskDone {
    pub mac: String,
    pub nonce: String,
    pub task: i64,
}

/// `POST /api/v1/agent/failed`: the task cannot be finished, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFailed {
    pub mac: String,
    pub nonce: String,
    pub task: i64,
    /// What went wrong, for staff (up to 2000 characters).
    pub reason: String,
}

/// The server's answer to a progress, done or failed report: the task's state now. A 409
/// answer (`{"error": ...}`) means the task is closed (e.g. cancelled): stop working on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskAck {
    pub task: i64,
    pub state: String,
}

/// The `bootcast.*` parameters the iPXE script puts on the kernel command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelArgs {
    /// `bootcast.server=http://IP:PORT`: base URL of the server that booted this machine.
    pub server: Option<String>,
    /// `bootcast.mac=aa:bb:..`: MAC of the interface iPXE booted from.
    pub mac: Option<String>,
    /// `bootcast.task=N`: the task this boot is for.
    pub task: Option<i64>,
    /// `bootcast.nonce=HEX`: the per-boot nonce the server put in this boot's script.
    pub nonce: Option<String>,
    /// `bootcast.disk=/dev/NAME`: the disk to image, instead of the automatic choice.
    pub disk: Option<String>,
}

impl KernelArgs {
    /// Parses `/proc/cmdline`; unknown words are ignored.
    pub fn parse(cmdline: &str) -> KernelArgs {
        let mut args = KernelArgs::default();
        for word in cmdline.split_ascii_whitespace() {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            match key {
                "bootcast.server" => args.server = Some(value.to_string()),
                "bootcast.mac" => args.mac = Some(value.to_ascii_lowercase()),
                "bootcast.task" => args.task = value.parse().ok(),
                "bootcast.nonce" => args.nonce = Some(value.to_string()),
                "bootcast.disk" => args.disk = Some(value.to_string()),
                _ => {}
            }
        }
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_args_parse() {
        let a = KernelArgs::parse(
            "console=ttyS0 bootcast.server=http://10.99.0.1:8080 bootcast.mac=52:54:00:AA:BB:CC bootcast.task=7 initrd=initrd.img\n",
        );
        assert_eq!(a.server.as_deref(), Some("http://10.99.0.1:8080"));
        assert_eq!(a.mac.as_deref(), Some("52:54:00:aa:bb:cc"));
        assert_eq!(a.task, Some(7));
        assert_eq!(KernelArgs::parse("quiet"), KernelArgs::default());
    }

    #[test]
    fn hello_reply_json() {
        let r: HelloReply = serde_json::from_str(r#"{"action":"poweroff"}"#).unwrap();
        assert_eq!(r, HelloReply::Poweroff);
        let h = Hello {
            mac: "52:54:00:aa:bb:cc".into(),
            arch: "x86_64".into(),
            firmware: Firmware::Uefi,
            boot_time: 1,
            task: None,
            nonce: None,
        };
        let j = serde_json::to_value(&h).unwrap();
        assert_eq!(j["firmware"], "uefi");
        assert!(j.get("task").is_none());
    }
}

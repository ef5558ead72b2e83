//! Agent reports kept while upstream cannot be reached, and passed on once when it can.
//!
//! A site's WAN link goes down while a PC of the site restores from the relay: the restore
//! goes on (the relay holds the version), but its progress, done, failed and inventory reports
//! cannot reach the central server. [`super::proxy::forward`] then keeps each report here, if
//! it belongs to a boot whose hello answer this relay passed on (the session, from the same
//! address), and answers the agent `202 Accepted`; a progress report replaces the one before it
//! for the same task. [`run`] passes the queue on, oldest first, as soon as upstream answers,
//! each (but progress, see [`applied_once`]) with the id it was given when it first arrived
//! ([`REPORT_ID_HEADER`]): the central
//! server applies a report id once, so a report whose answer was lost on the way back (the
//! link cut after central applied it) is not applied twice when it is sent again.
//!
//! One file per report in `DATA/relay/queue/` (JSON, written atomically), named by the time it
//! was queued, so a restart keeps the queue and its order; a progress report's name also
//! carries its task, so the one it replaces is found by name, without reading the queue.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::Relay;
use crate::proto::relay::{
    FORWARDED_FOR_HEADER, OFFLINE_BOOT_HEADER, RELAY_TOKEN_HEADER, RELAY_URL_HEADER,
    REPORT_ID_HEADER,
};

/// The agent report paths a relay queues while upstream is down.
pub const QUEUED_PATHS: [&str; 4] = [
    "/api/v1/agent/progress",
    "/api/v1/agent/done",
    "/api/v1/agent/failed",
    "/api/v1/agent/inventory",
];

/// One report waiting for upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queued {
    /// The id central applies once.
    pub id: String,
    /// `/api/v1/agent/done`, ...
    pub path: String,
    /// The agent's address (the relay passes it on as it would have).
    pub forwarded_for: String,
    /// The agent's JSON body, as it sent it.
    pub body: String,
    /// Unix seconds.
    pub queued_at: i64,
    /// From a boot this relay started alone ([`super::alone`]): sent with
    /// [`OFFLINE_BOOT_HEADER`] (the relay vouches for the session).
    #[serde(default)]
    pub offline: bool,
}

/// Whether a report on `path` is applied once by its id ([`REPORT_ID_HEADER`]). A progress
/// report is not: applied twice it says the same, so the central server keeps no id for the
/// reports a restore sends every two seconds.
pub fn applied_once(path: &str) -> bool {
    path != "/api/v1/agent/progress"
}

/// Where a hello this relay answered alone is passed on.
pub const OFFLINE_HELLO_PATH: &str = "/api/v1/relay/offline-hello";

/// The queue's directory.
pub fn dir(data: &Path) -> PathBuf {
    data.join("relay/queue")
}

/// Keeps `q`; `progress_of` (MAC, task) for a progress report, which replaces the queued one
/// of its task. The number of reports queued now.
pub fn push(data: &Path, q: &Queued, progress_of: Option<(&str, i64)>) -> std::io::Result<usize> {
    let dir = dir(data);
    std::fs::create_dir_all(&dir)?;
    // `-p<MAC>x<task>-` in a progress report's name; `-r-` for the others
    let tag = match progress_of {
        Some((mac, task)) => format!("-p{}x{task}-", mac.replace(':', "")),
        None => "-r-".to_string(),
    };
    let mut queued = 0;
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        match name {
            Some(n) if progress_of.is_some() && n.contains(&tag) => {
                let _ = std::fs::remove_file(&path);
            }
            Some(n) if n.ends_with(".json") => queued += 1,
            _ => {}
        }
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let path = dir.join(format!("{nanos:024}{tag}{}.json", q.id));
    let bytes = serde_json::to_vec(q).expect("a queued report serialises");
    crate::store::durable::write_atomic(&path, &bytes).map_err(std::io::Error::other)?;
    Ok(queued + 1)
}

/// The queued reports, oldest first (unreadable files are skipped and logged).
pub fn list(data: &Path) -> Vec<(PathBuf, Queued)> {
    let Ok(entries) = std::fs::read_dir(dir(data)) else {
        return Vec::new();
    };
    let mut out: Vec<(PathBuf, Queued)> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .filter_map(
            |p| match std::fs::read(&p).map(|b| serde_json::from_slice(&b)) {
                Ok(Ok(q)) => Some((p, q)),
                _ => {
                    tracing::warn!(path = %p.display(), "an unreadable queued report is skipped");
                    None
                }
            },
        )
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// How often the queue is tried while it is not empty.
const TICK: Duration = Duration::from_secs(2);

/// Passes the queue upstream, oldest first, whenever it is not empty and upstream answers.
/// Runs until `cancel` fires.
pub async fn run(relay: Arc<Relay>, cancel: CancellationToken) -> Result<(), String> {
    let data = relay.store.data_dir().to_path_buf();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = cancel.cancelled() => return Ok(()),
        }
        let queued = {
            let d = data.clone();
            tokio::task::spawn_blocking(move || list(&d))
                .await
                .unwrap_or_default()
        };
        relay.metrics.reports_queued.set(queued.len() as u64);
        for (path, q) in queued {
            match send(&relay, &q).await {
                Ok(status) => {
                    if !(200..300).contains(&status) {
                        // refused for good (e.g. the task was cancelled meanwhile): not retried
                        tracing::warn!(path = %q.path, status, "a queued report was refused upstream; dropped");
                    }
                    let _ = tokio::fs::remove_file(&path).await;
                    relay.metrics.reports_forwarded.inc();
                    relay.metrics.reports_queued.dec();
                }
                Err(e) => {
                    tracing::debug!("queued reports wait for upstream: {e}");
                    break;
                }
            }
        }
    }
}

/// Sends one queued report: the status upstream answered, or why it could not be asked (also
/// for answers that mean "try later": 408, 429, 5xx).
async fn send(relay: &Relay, q: &Queued) -> Result<u16, String> {
    let mut req = relay.link.client.post(relay.link.url(&q.path));
    if q.offline {
        req = req.header(OFFLINE_BOOT_HEADER, "1");
    }
    if applied_once(&q.path) {
        req = req.header(REPORT_ID_HEADER, &q.id);
    }
    let r = req
        .header("content-type", "application/json")
        .header(RELAY_TOKEN_HEADER, &relay.config.token)
        .header(RELAY_URL_HEADER, &relay.url)
        .header(FORWARDED_FOR_HEADER, &q.forwarded_for)
        .timeout(Duration::from_secs(30))
        .body(q.body.clone())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    if status == 408 || status == 429 || status >= 500 {
        return Err(format!("upstream answered {status}"));
    }
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(id: &str, path: &str) -> Queued {
        Queued {
            id: id.into(),
            path: path.into(),
            forwarded_for: "10.99.0.5".into(),
            body: "{}".into(),
            queued_at: 1,
            offline: false,
        }
    }

    #[test]
    fn the_queue_keeps_its_order_and_the_latest_progress_of_a_task() {
        let d = tempfile::tempdir().unwrap();
        let progress = "/api/v1/agent/progress";
        let (m1, m2) = ("52:54:00:00:00:01", "52:54:00:00:00:02");
        assert_eq!(push(d.path(), &q("a", progress), Some((m1, 1))).unwrap(), 1);
        assert_eq!(push(d.path(), &q("b", progress), Some((m2, 2))).unwrap(), 2);
        // task 1's newer progress replaces its older one; task 11 is another task
        assert_eq!(push(d.path(), &q("c", progress), Some((m1, 1))).unwrap(), 2);
        assert_eq!(
            push(d.path(), &q("e", progress), Some((m1, 11))).unwrap(),
            3
        );
        assert_eq!(
            push(d.path(), &q("d", "/api/v1/agent/done"), None).unwrap(),
            4
        );
        let ids: Vec<String> = list(d.path()).into_iter().map(|(_, q)| q.id).collect();
        assert_eq!(ids, ["b", "c", "e", "d"]);
        // a damaged file is skipped, the rest stays
        std::fs::write(dir(d.path()).join("0-x.json"), b"{not json").unwrap();
        assert_eq!(list(d.path()).len(), 4);
    }
}

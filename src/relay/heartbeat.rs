//! The heartbeat loop: registers the relay with the server above and keeps it informed.
//!
//! Every `interval` seconds of the last reply (and soon after a push changes state) the relay
//! posts a [`Heartbeat`] to `UPSTREAM/api/v1/relay/heartbeat` with
//! `Authorization: Bearer SITE_TOKEN`: its URL, cache size and quota, the versions complete in
//! its store and each push's progress. The reply's schedule (zone, windows, cap), push orders
//! and assigned images are applied at once ([`Relay::apply`]); eviction runs after each reply
//! when a quota is set. While upstream cannot be reached, the last reply stays in force and
//! the relay retries (1 s doubling to 30 s); errors are logged when they change. An upstream
//! certificate that does not match the pin (or that no CA vouches for) is logged as an error
//! that names the fingerprint presented and the flag that pins it.
//!
//! Beside it, [`watch`] holds a `GET /api/v1/relay/wait` open upstream and wakes the heartbeat
//! as soon as the push orders change.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Relay;
use crate::proto::relay::{Heartbeat, HeartbeatReply, VersionRef};
use crate::retry::Backoff;

/// The waits while upstream cannot be reached: 1 s doubling, at most 30 s.
const RETRY: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));

/// The heartbeat as of now (blocking: reads the version files).
pub fn heartbeat(relay: &Relay) -> Heartbeat {
    let cache_bytes = relay.link.cache_bytes.get();
    // one lock of the book (a second one in the same expression would wait for the first)
    let (book, woken) = {
        let b = relay.book();
        (b.rev, b.woken())
    };
    Heartbeat {
        protocol: crate::proto::relay::PROTOCOL,
        site: relay.config.site.clone(),
        url: relay.url.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        cache_bytes,
        quota_bytes: relay.config.quota,
        complete: complete_versions(relay),
        pushes: relay.progress(),
        book,
        woken,
    }
}

/// Versions whose manifest is in the store: the relay writes one only once every chunk is
/// (the files are listed, not read).
pub fn complete_versions(relay: &Relay) -> Vec<VersionRef> {
    match relay.store.version_ids() {
        Ok(ids) => ids
            .into_iter()
            .map(|(image, id)| VersionRef {
                image,
                version: id.to_hex(),
            })
            .collect(),
        Err(e) => {
            tracing::warn!("listing the relay's versions: {e}");
            Vec::new()
        }
    }
}

enum Failure {
    /// Worth logging every time it changes.
    Refused(String),
    Unreachable(String),
}

/// One heartbeat: the reply's interval on success.
async fn beat(relay: &Arc<Relay>) -> Result<u64, Failure> {
    let r = relay.clone();
    let hb = tokio::task::spawn_blocking(move || heartbeat(&r))
        .await
        .map_err(|e| Failure::Refused(format!("internal error: {e}")))?;
    let url = relay.link.url("/api/v1/relay/heartbeat");
    let resp = relay
        .link
        .client
        .post(&url)
        .bearer_auth(&relay.config.token)
        .timeout(Duration::from_secs(20))
        .json(&hb)
        .send()
        .await
        .map_err(|e| match crate::tls::explain(&e) {
            // a certificate refused is a setting to fix, not an outage
            Some(why) => Failure::Refused(format!("heartbeat to {url} refused: {why}")),
            None => Failure::Unreachable(format!("cannot reach {url}: {}", chain(&e))),
        })?;
    let status = resp.status();
    if status.is_success() {
        let reply: HeartbeatReply = resp.json().await.map_err(|e| {
            Failure::Refused(format!(
                "{url} answered something that is not a heartbeat reply ({e}); is the upstream a bootcast server of the same version?"
            ))
        })?;
        let interval = reply.interval.clamp(1, 3600);
        let r = relay.clone();
        tokio::task::spawn_blocking(move || r.apply(reply))
            .await
            .map_err(|e| Failure::Refused(format!("internal error: {e}")))?;
        return Ok(interval);
    }
    let body = resp.text().await.unwrap_or_default();
    let msg = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or(body);
    let site = &relay.config.site;
    Err(match status.as_u16() {
        401 | 403 => Failure::Refused(format!(
            "heartbeat refused ({status}): the site token is wrong: `bootcast site token {site} --rotate` on the central server makes a new one ({msg})"
        )),
        404 => Failure::Refused(format!(
            "heartbeat refused ({status}): {msg} (is site {site} known upstream? `bootcast site list` on the central server)"
        )),
        s if s >= 500 => Failure::Unreachable(format!("{url} answered {status}: {msg}")),
        _ => Failure::Refused(format!("{url} answered {status}: {msg}")),
    })
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let t = c.to_string();
        if !s.contains(&t) {
            s += &format!(": {t}");
        }
        cause = c.source();
    }
    s
}

/// Waits on upstream's `GET /api/v1/relay/wait` (held until the push orders change) and
/// wakes the heartbeat when they do, so a new push starts within a second of `push create`
/// rather than at the next heartbeat. An upstream without the route (an older release) is
/// left to the heartbeat's interval. Runs until `cancel` fires.
pub async fn watch(relay: Arc<Relay>, cancel: CancellationToken) -> Result<(), String> {
    let url = relay.link.url("/api/v1/relay/wait");
    let mut seen: Option<u64> = None;
    let mut failures = 0u32;
    loop {
        let mut req = relay
            .link
            .client
            .get(&url)
            .bearer_auth(&relay.config.token)
            .timeout(Duration::from_secs(60));
        if let Some(n) = seen {
            req = req.query(&[("seen", n)]);
        }
        let answer = tokio::select! {
            r = req.send() => r,
            _ = cancel.cancelled() => return Ok(()),
        };
        let orders = match answer {
            Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => {
                tracing::info!("the upstream has no /api/v1/relay/wait (an older release): new pushes start at the next heartbeat");
                return Ok(());
            }
            Ok(r) if r.status().is_success() => r
                .json::<serde_json::Value>()
                .await
                .ok()
                .and_then(|v| v["orders"].as_u64()),
            _ => None,
        };
        match orders {
            Some(n) => {
                failures = 0;
                if seen.is_some_and(|s| s != n) {
                    relay.heartbeat_now.notify_one();
                }
                seen = Some(n);
            }
            None => {
                // the heartbeat reports the outage; this waits and tries again
                let wait = RETRY.delay(failures);
                failures = failures.saturating_add(1);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = cancel.cancelled() => return Ok(()),
                }
            }
        }
    }
}

/// Runs until `cancel` fires.
pub async fn run(relay: Arc<Relay>, cancel: CancellationToken) -> Result<(), String> {
    // heartbeats failed in a row
    let mut failures = 0u32;
    let mut last_error: Option<String> = None;
    let mut connected = false;
    loop {
        let wait = match beat(&relay).await {
            Ok(interval) => {
                relay.metrics.heartbeats.inc();
                relay
                    .metrics
                    .last_heartbeat
                    .set(crate::time::now_unix() as u64);
                if !connected || last_error.is_some() {
                    tracing::info!(
                        "heartbeat: site {} registered with {}",
                        relay.config.site,
                        relay.link.base
                    );
                }
                connected = true;
                last_error = None;
                relay
                    .upstream_down
                    .store(false, std::sync::atomic::Ordering::Relaxed);
                if !relay.book().tasks.is_empty() {
                    // a reimage may have to start here alone: the boot environment is kept
                    let r = relay.clone();
                    tokio::spawn(async move { super::proxy::keep_bootenv(&r).await });
                }
                failures = 0;
                if relay.config.quota.is_some() {
                    let r = relay.clone();
                    match tokio::task::spawn_blocking(move || super::evict::run(&r)).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => tracing::error!("eviction: {e}"),
                        Err(e) => tracing::error!("eviction: internal error: {e}"),
                    }
                }
                Duration::from_secs(interval)
            }
            Err(f) => {
                relay.metrics.heartbeat_failures.inc();
                let (msg, refused) = match f {
                    Failure::Refused(m) => (m, true),
                    Failure::Unreachable(m) => (m, false),
                };
                relay
                    .upstream_down
                    .store(!refused, std::sync::atomic::Ordering::Relaxed);
                if last_error.as_deref() != Some(&msg) {
                    if refused {
                        tracing::error!("{msg}");
                    } else {
                        tracing::warn!(
                            "heartbeat: {msg}; retrying (the last schedule stays in force)"
                        );
                    }
                }
                last_error = Some(msg);
                let wait = RETRY.delay(failures);
                failures = failures.saturating_add(1);
                wait
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = relay.heartbeat_now.notified() => {
                // a push changed state: tell upstream soon, once for a burst of changes
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            _ = cancel.cancelled() => return Ok(()),
        }
    }
}

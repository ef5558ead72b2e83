//! A push's status per site, for `bootcast push status` and `GET /api/v1/pushes`: bytes done
//! and total, rate, when it will be done counting only the site's open windows, and a warning
//! when the deadline cannot be met at the cap. CLI and API share it.

use serde::Serialize;

use super::window::Windows;
use crate::db::pushes::{Push, PushSite};
use crate::db::sites::Site;
use crate::time::Zone;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SiteStatus {
    pub site: String,
    pub state: String,
    pub bytes_done: u64,
    /// What the relay needs (its report), else the push's versions in full.
    pub bytes_total: u64,
    pub fetched: u64,
    /// Bytes/s as the relay measured (0 when not fetching).
    pub rate: u64,
    /// The cap that applies (push override, else the site's), bytes/s.
    pub cap: Option<u64>,
    pub windows: String,
    pub tz: String,
    /// When the rest will be there, at the current rate while fetching, else at the cap,
    /// counting open window time only; unknown without a rate or a cap.
    #[serde(serialize_with = "crate::time::serialize_opt_rfc3339")]
    pub eta: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    /// Seconds since the relay last reported, if it ever did.
    pub relay_silent_for: Option<i64>,
    pub detail: Option<String>,
}

/// The status of `push` at `site` at time `now`.
pub fn site_status(push: &Push, ps: &PushSite, site: &Site, now: i64) -> SiteStatus {
    let full: u64 = push.versions.iter().map(|v| v.bytes).sum();
    let total = ps.bytes_total.unwrap_or(full);
    let remaining = total.saturating_sub(ps.bytes_done);
    let windows_text = push.windows.clone().unwrap_or_else(|| site.windows.clone());
    let windows = Windows::parse(&windows_text).unwrap_or_default();
    let zone = Zone::named(&site.tz).unwrap_or_else(Zone::utc);
    let cap = push.rate.or(site.rate);
    let rate = if ps.state == "running" && ps.rate > 0 {
        Some(ps.rate)
    } else {
        cap
    };
    let done = ps.state == "done";
    let eta = if done {
        ps.updated_at
    } else {
        rate.and_then(|r| windows.finish_time(now, remaining, r, &zone))
    };
    let warning = match (push.deadline, done) {
        (Some(deadline), false) => {
            let at_cap = cap.and_then(|c| windows.finish_time(now, remaining, c, &zone));
            match at_cap {
                Some(t) if t <= deadline => None,
                Some(t) => Some(format!(
                    "cannot meet the deadline {} at the cap: {} left needs until {} in the windows {windows_text} ({})",
                    crate::time::rfc3339(deadline),
                    human(remaining),
                    crate::time::rfc3339(t),
                    site.tz
                )),
                None if cap.is_none() => None,
                None => Some(format!(
                    "cannot meet the deadline {}: {} left does not fit in a year of windows",
                    crate::time::rfc3339(deadline),
                    human(remaining)
                )),
            }
        }
        _ => None,
    };
    SiteStatus {
        site: site.name.clone(),
        state: ps.state.clone(),
        bytes_done: ps.bytes_done,
        bytes_total: total,
        fetched: ps.fetched,
        rate: ps.rate,
        cap,
        windows: windows_text,
        tz: site.tz.clone(),
        eta,
        warning,
        relay_silent_for: site.relay.as_ref().map(|r| now - r.last_heartbeat),
        detail: ps.detail.clone(),
    }
}

fn human(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::pushes::{PushStatus, PushVersion};
    use crate::db::sites::Incomplete;

    fn site(rate: Option<u64>) -> Site {
        Site {
            name: "nord".into(),
            subnets: vec![],
            tz: "UTC".into(),
            windows: "22:00-06:00".into(),
            rate,
            incomplete: Incomplete::Wait,
            token_hash: String::new(),
            relay: None,
            images: vec![],
        }
    }

    fn push(deadline: Option<i64>) -> Push {
        Push {
            id: 1,
            created_at: 0,
            state: PushStatus::Active,
            windows: None,
            rate: None,
            deadline,
            versions: vec![PushVersion {
                image: "win11".into(),
                version: "ab".repeat(32),
                bytes: 8 * 3600 * 1000,
            }],
            sites: vec![],
        }
    }

    fn waiting() -> PushSite {
        PushSite {
            site: "nord".into(),
            state: "waiting".into(),
            bytes_done: 0,
            bytes_total: None,
            fetched: 0,
            rate: 0,
            detail: None,
            updated_at: None,
        }
    }

    /// 2026-11-23 12:00 UTC.
    const NOON: i64 = 1_795_392_000 + 12 * 3600;

    #[test]
    fn eta_counts_windows_and_the_deadline_warns() {
        // 8 h of work at the cap: exactly tonight's window, done at 06:00 tomorrow
        let s = site(Some(1000));
        let st = site_status(&push(None), &waiting(), &s, NOON);
        assert_eq!(st.eta, Some(NOON + 18 * 3600));
        assert_eq!(st.bytes_total, 8 * 3600 * 1000);
        assert!(st.warning.is_none());
        // a deadline at 05:00 tomorrow cannot be met at the cap
        let st = site_status(&push(Some(NOON + 17 * 3600)), &waiting(), &s, NOON);
        let w = st.warning.unwrap();
        assert!(
            w.contains("cannot meet the deadline") && w.contains("22:00-06:00"),
            "{w}"
        );
        // no cap, no rate: no ETA, no warning
        let st = site_status(&push(Some(NOON + 17 * 3600)), &waiting(), &site(None), NOON);
        assert_eq!((st.eta, st.warning), (None, None));
        // a running relay's own rate counts; the relay's total replaces the push's
        let mut ps = waiting();
        ps.state = "running".into();
        ps.rate = 2000;
        ps.bytes_total = Some(4000);
        ps.bytes_done = 2000;
        let st = site_status(&push(None), &ps, &s, NOON + 10 * 3600);
        assert_eq!(st.eta, Some(NOON + 10 * 3600 + 1));
    }
}

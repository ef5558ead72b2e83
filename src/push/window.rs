//! Transfer windows: the hours of the day, in a site's time zone, when a relay may pull.
//!
//! Written `HH:MM-HH:MM[,HH:MM-HH:MM...]`; a window whose end is not after its start runs
//! past midnight (`22:00-06:00`); `always` (or an empty list) never closes. Pure: every
//! question takes the Unix time and the [`Zone`], so tests and the fleet simulation run
//! days in microseconds.

use crate::time::Zone;

/// One daily window: `[start, end)` in seconds after local midnight; `end <= start` crosses
/// midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: i64,
    end: i64,
}

impl Span {
    fn contains(&self, sec_of_day: i64) -> bool {
        if self.end > self.start {
            (self.start..self.end).contains(&sec_of_day)
        } else {
            sec_of_day >= self.start || sec_of_day < self.end
        }
    }
}

/// A site's transfer windows.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Windows {
    spans: Vec<Span>,
}

impl Windows {
    /// Always open.
    pub fn always() -> Windows {
        Windows::default()
    }

    pub fn is_always(&self) -> bool {
        self.spans.is_empty()
    }

    /// Parses `22:00-06:00`, `12:00-13:30,22:00-06:00` or `always`.
    pub fn parse(s: &str) -> Result<Windows, String> {
        let s = s.trim();
        if s.is_empty() || s.eq_ignore_ascii_case("always") {
            return Ok(Windows::always());
        }
        let bad = |part: &str, why: &str| {
            format!("window {part:?} {why}: write HH:MM-HH:MM in the site's local time (22:00-06:00 runs past midnight), several separated by commas, or `always`")
        };
        let hm = |t: &str, part: &str| -> Result<i64, String> {
            let (h, m) = t
                .trim()
                .split_once(':')
                .ok_or_else(|| bad(part, "is not HH:MM-HH:MM"))?;
            let h: i64 = h.parse().map_err(|_| bad(part, "has a bad hour"))?;
            let m: i64 = m.parse().map_err(|_| bad(part, "has a bad minute"))?;
            if !(0..=24).contains(&h) || !(0..60).contains(&m) || (h == 24 && m != 0) {
                return Err(bad(part, "is out of range"));
            }
            Ok(h * 3600 + m * 60)
        };
        let mut spans = Vec::new();
        for part in s.split(',') {
            let (a, b) = part
                .split_once('-')
                .ok_or_else(|| bad(part, "is not HH:MM-HH:MM"))?;
            let (start, end) = (hm(a, part)?, hm(b, part)?);
            if start == end % 86_400 && start == end {
                return Err(bad(
                    part,
                    "is empty (start equals end); use `always` for all day",
                ));
            }
            spans.push(Span {
                start: start % 86_400,
                end: end % 86_400,
            });
        }
        Ok(Windows { spans })
    }

    /// Whether a transfer may run at Unix time `t` in `zone`.
    pub fn is_open(&self, t: i64, zone: &Zone) -> bool {
        if self.spans.is_empty() {
            return true;
        }
        let local = (t + zone.offset_at(t)).rem_euclid(86_400);
        self.spans.iter().any(|s| s.contains(local))
    }

    /// The next moment at or after `t` when the state changes (open → closed or back), at
    /// minute resolution (windows start and end on minutes); `None` if always open.
    pub fn next_change(&self, t: i64, zone: &Zone) -> Option<i64> {
        if self.spans.is_empty() {
            return None;
        }
        let now = self.is_open(t, zone);
        // step to the next whole minute, then minute by minute (at most two days)
        let mut m = t - t.rem_euclid(60) + 60;
        for _ in 0..2 * 24 * 60 {
            if self.is_open(m, zone) != now {
                return Some(m);
            }
            m += 60;
        }
        None
    }

    /// Seconds of open window in `[from, to)`.
    pub fn open_seconds(&self, from: i64, to: i64, zone: &Zone) -> i64 {
        if to <= from {
            return 0;
        }
        if self.spans.is_empty() {
            return to - from;
        }
        let mut total = 0;
        let mut t = from;
        while t < to {
            let next = self.next_change(t, zone).unwrap_or(to).min(to);
            if self.is_open(t, zone) {
                total += next - t;
            }
            t = next;
        }
        total
    }

    /// When `bytes` will have moved at `rate` bytes/s starting at `t`, counting open time
    /// only; `None` if the rate is 0 or it takes more than a year.
    pub fn finish_time(&self, t: i64, bytes: u64, rate: u64, zone: &Zone) -> Option<i64> {
        if bytes == 0 {
            return Some(t);
        }
        if rate == 0 {
            return None;
        }
        let mut need = bytes.div_ceil(rate) as i64;
        let mut now = t;
        let limit = t + 366 * 86_400;
        while now < limit {
            let next = self.next_change(now, zone).unwrap_or(i64::MAX);
            if self.is_open(now, zone) {
                if now + need <= next {
                    return Some(now + need);
                }
                need -= next - now;
            }
            now = next;
        }
        None
    }
}

impl std::fmt::Display for Windows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.spans.is_empty() {
            return f.write_str("always");
        }
        let hm = |s: i64| format!("{:02}:{:02}", s / 3600, s % 3600 / 60);
        let parts: Vec<String> = self
            .spans
            .iter()
            // start == end only for 00:00-24:00 (all day)
            .map(|s| {
                let end = if s.end == s.start {
                    s.end + 86_400
                } else {
                    s.end
                };
                format!("{}-{}", hm(s.start), hm(end))
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-23 00:00:00 UTC.
    const MIDNIGHT: i64 = 1_795_392_000;

    fn at(h: i64, m: i64) -> i64 {
        MIDNIGHT + h * 3600 + m * 60
    }

    #[test]
    fn parses_and_prints() {
        for s in [
            "22:00-06:00",
            "12:00-13:30,22:00-06:00",
            "always",
            "00:00-24:00",
        ] {
            let w = Windows::parse(s).unwrap();
            let again = Windows::parse(&w.to_string()).unwrap();
            assert_eq!(w, again, "{s}");
        }
        assert_eq!(
            Windows::parse("22:00-06:00").unwrap().to_string(),
            "22:00-06:00"
        );
        for bad in [
            "22-06",
            "25:00-06:00",
            "22:00",
            "22:00-22:00",
            "aa:00-01:00",
            "22:61-23:00",
        ] {
            let e = Windows::parse(bad).unwrap_err();
            assert!(e.contains("HH:MM-HH:MM"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_night_window_crosses_midnight() {
        let w = Windows::parse("22:00-06:00").unwrap();
        let z = Zone::utc();
        assert!(!w.is_open(at(21, 59), &z));
        assert!(w.is_open(at(22, 0), &z));
        assert!(w.is_open(at(23, 59), &z));
        assert!(w.is_open(at(24 + 5, 59), &z));
        assert!(!w.is_open(at(24 + 6, 0), &z));
        assert_eq!(w.next_change(at(12, 0), &z), Some(at(22, 0)));
        assert_eq!(w.next_change(at(23, 0), &z), Some(at(24 + 6, 0)));
        assert_eq!(w.open_seconds(at(0, 0), at(24, 0), &z), 8 * 3600);
        assert_eq!(Windows::always().next_change(0, &z), None);
    }

    #[test]
    fn zones_shift_the_window() {
        // Europe/Paris is UTC+1 in November: 22:00 local is 21:00 UTC
        let z = Zone::named("Europe/Paris").unwrap();
        let w = Windows::parse("22:00-06:00").unwrap();
        assert!(!w.is_open(at(20, 59), &z));
        assert!(w.is_open(at(21, 0), &z));
        assert!(!w.is_open(at(24 + 5, 0), &z));
    }

    #[test]
    fn finish_time_counts_open_time_only() {
        let w = Windows::parse("22:00-06:00").unwrap();
        let z = Zone::utc();
        // 10 hours of work at 1 byte/s from noon: 8 h the first night, 2 h the next
        let done = w.finish_time(at(12, 0), 10 * 3600, 1, &z).unwrap();
        assert_eq!(done, at(24 + 22 + 2, 0));
        assert_eq!(w.finish_time(at(12, 0), 0, 1, &z), Some(at(12, 0)));
        assert_eq!(w.finish_time(at(12, 0), 1, 0, &z), None);
        assert_eq!(
            Windows::always().finish_time(at(12, 0), 3600, 1, &z),
            Some(at(13, 0))
        );
    }
}

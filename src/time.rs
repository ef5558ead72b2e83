//! Wall-clock helpers: Unix seconds and their UTC text form.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, now.
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `YYYY-MM-DDTHH:MM:SSZ` (RFC 3339, UTC) for seconds since the Unix epoch.
pub fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (H. Hinnant), proleptic Gregorian calendar.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days-from-civil).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn num(s: &str) -> Option<i64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses RFC 3339 `YYYY-MM-DDTHH:MM[:SS[.frac]](Z|±HH:MM)` (a space may replace the `T`)
/// into Unix seconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let s = s.trim();
    let (date, rest) = s.split_at_checked(10)?;
    let rest = rest.strip_prefix(['T', 't', ' '])?;
    let mut d = date.split('-');
    let (y, mo, da) = (num(d.next()?)?, num(d.next()?)?, num(d.next()?)?);
    if d.next().is_some() || !(1..=12).contains(&mo) || !(1..=31).contains(&da) {
        return None;
    }
    let (time, offset) = if let Some(t) = rest.strip_suffix(['Z', 'z']) {
        (t, 0)
    } else {
        let i = rest.rfind(['+', '-'])?;
        let (t, off) = rest.split_at(i);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (oh, om) = off[1..].split_once(':')?;
        let (oh, om) = (num(oh)?, num(om)?);
        if oh > 23 || om > 59 {
            return None;
        }
        (t, sign * (oh * 3600 + om * 60))
    };
    let time = time.split('.').next()?;
    let mut t = time.split(':');
    let (h, mi) = (num(t.next()?)?, num(t.next()?)?);
    let sec = match t.next() {
        Some(x) => num(x)?,
        None => 0,
    };
    if t.next().is_some() || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    Some(days_from_civil(y, mo, da) * 86_400 + h * 3600 + mi * 60 + sec - offset)
}

/// A task's `--at`: RFC 3339 (`2026-11-24T06:30:00Z`, `2026-11-24T07:30:00+01:00`), or
/// `HH:MM` in **UTC** (the time bootcast shows everywhere): today's if it is still ahead of
/// `now`, else tomorrow's. Returns Unix seconds.
pub fn parse_at(s: &str, now: i64) -> Result<i64, String> {
    let bad = || {
        format!(
            "--at {s:?} is not a time: write HH:MM (UTC, today or else tomorrow) or RFC 3339 \
             like 2026-11-24T06:30:00Z or 2026-11-24T07:30:00+01:00"
        )
    };
    if let Some((h, m)) = s
        .trim()
        .split_once(':')
        .filter(|(h, m)| h.len() <= 2 && m.len() == 2)
    {
        let (h, m) = (num(h).ok_or_else(bad)?, num(m).ok_or_else(bad)?);
        if h > 23 || m > 59 {
            return Err(bad());
        }
        let today = now.div_euclid(86_400) * 86_400 + h * 3600 + m * 60;
        return Ok(if today > now { today } else { today + 86_400 });
    }
    parse_rfc3339(s).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_and_offsets_apply() {
        for t in [0, 951_782_400, 1_700_000_000, 1_795_000_000] {
            assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t));
        }
        assert_eq!(
            parse_rfc3339("2023-11-14T23:13:20+01:00"),
            Some(1_700_000_000)
        );
        assert_eq!(
            parse_rfc3339("2023-11-14 22:13:20.123Z"),
            Some(1_700_000_000)
        );
        assert_eq!(parse_rfc3339("2023-11-14T22:13Z"), Some(1_700_000_000 - 20));
        for bad in [
            "2023-11-14",
            "2023-13-01T00:00Z",
            "2023-11-14T25:00Z",
            "x",
            "",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn at_hh_mm_is_today_or_tomorrow_utc() {
        let now = 1_700_000_000; // 2023-11-14 22:13:20Z
        assert_eq!(
            rfc3339(parse_at("23:00", now).unwrap()),
            "2023-11-14T23:00:00Z"
        );
        assert_eq!(
            rfc3339(parse_at("6:30", now).unwrap()),
            "2023-11-15T06:30:00Z"
        );
        assert_eq!(
            rfc3339(parse_at("22:13", now).unwrap()),
            "2023-11-15T22:13:00Z"
        );
        assert!(parse_at("24:00", now).unwrap_err().contains("HH:MM"));
        assert!(parse_at("tomorrow", now).is_err());
    }
}

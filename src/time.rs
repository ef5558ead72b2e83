//! Wall-clock time: Unix seconds, their RFC 3339 text, and time zones, all through `jiff`
//! (its zones come from the system's tzdb, /usr/share/zoneinfo, or where there is none from
//! the copy of the tzdb built into the binary).

use jiff::civil::DateTime;
use jiff::tz::{Offset, TimeZone};
use jiff::Timestamp;

/// Seconds since the Unix epoch, now.
pub fn now_unix() -> i64 {
    Timestamp::now().as_second()
}

/// `secs` as a jiff timestamp, clamped to the range jiff represents (years -9999 to 9999).
fn timestamp(secs: i64) -> Timestamp {
    Timestamp::from_second(secs).unwrap_or(if secs < 0 {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    })
}

/// serde `serialize_with`: Unix seconds as an RFC 3339 string (how the API shows times).
pub fn serialize_rfc3339<S: serde::Serializer>(t: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*t))
}

/// [`serialize_rfc3339`] for an optional time (`null` when absent).
pub fn serialize_opt_rfc3339<S: serde::Serializer>(
    t: &Option<i64>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => serialize_rfc3339(t, s),
        None => s.serialize_none(),
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` (RFC 3339, UTC) for seconds since the Unix epoch.
pub fn rfc3339(secs: i64) -> String {
    format!("{:.0}", timestamp(secs))
}

/// Parses RFC 3339 `YYYY-MM-DDTHH:MM[:SS[.frac]](Z|±HH:MM)` (a space may replace the `T`)
/// into Unix seconds (a fraction is dropped).
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    s.trim().parse::<Timestamp>().ok().map(|t| t.as_second())
}

/// A time zone: its UTC offsets through history and its rules for the years ahead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone(TimeZone);

impl Zone {
    pub fn utc() -> Zone {
        Zone(TimeZone::UTC)
    }

    /// The server's zone: `TZ` (`Europe/Paris`, a TZif path or a POSIX rule), else
    /// `/etc/localtime`; UTC when neither gives one.
    pub fn local() -> Zone {
        Zone(TimeZone::system())
    }

    /// The zone `name` of the tzdb (`Europe/Paris`, `UTC`; any case); `None` if there is none.
    pub fn named(name: &str) -> Option<Zone> {
        TimeZone::get(name).ok().map(Zone)
    }

    /// A zone that is `seconds` east of UTC all year; `None` past ±25:59:59.
    pub fn fixed(seconds: i32) -> Option<Zone> {
        Offset::from_seconds(seconds)
            .ok()
            .map(|o| Zone(TimeZone::fixed(o)))
    }

    /// Its tzdb name (`Europe/Paris`), if it has one (a fixed offset or a POSIX `TZ` rule
    /// has none).
    pub fn name(&self) -> Option<&str> {
        self.0.iana_name()
    }

    /// The jiff time zone, for the civil-time arithmetic this module does not wrap.
    pub fn tz(&self) -> &TimeZone {
        &self.0
    }

    /// The UTC offset (seconds east) at Unix time `t`.
    pub fn offset_at(&self, t: i64) -> i64 {
        i64::from(self.0.to_offset(timestamp(t)).seconds())
    }

    /// The wall-clock time here at Unix time `t`.
    pub fn civil(&self, t: i64) -> DateTime {
        self.0.to_datetime(timestamp(t))
    }

    /// The Unix time of the wall-clock time `dt` here. Where the clocks change it is the
    /// "compatible" reading (RFC 5545, Temporal): a time the clocks skip when they go forward
    /// is read with the offset before the change (02:30 when 02:00 becomes 03:00 is the
    /// instant the clocks show 03:30), and a time they show twice when they go back is its
    /// first occurrence (the one with the offset before the change).
    pub fn unix(&self, dt: DateTime) -> Option<i64> {
        self.0
            .to_ambiguous_timestamp(dt)
            .compatible()
            .ok()
            .map(|t| t.as_second())
    }

    /// `YYYY-MM-DD HH:MM` on this zone's wall clock at Unix time `t`.
    pub fn wall_clock(&self, t: i64) -> String {
        self.civil(t).strftime("%Y-%m-%d %H:%M").to_string()
    }
}

/// The next tick of cron `every` (minute hour day-of-month month day-of-week) strictly after
/// Unix time `t`, on the wall clock of `zone`:
/// `0 20 * * *` is 20:00 there in winter and in summer. Where the clocks change, each
/// matching wall-clock time is read as [`Zone::unix`] reads it and counts once: a time the
/// clocks skip (02:30 when 02:00 becomes 03:00) runs at the instant it would have been with
/// the offset before the change (the clocks show 03:30), and a time the clocks show twice
/// (02:30 when 03:00 becomes 02:00) runs at its first occurrence only.
pub fn next_cron(every: &str, t: i64, zone: &Zone) -> Result<i64, String> {
    let bad = || {
        format!("{every:?} is not a cron expression (minute hour day-of-month month day-of-week, e.g. \"0 2 * * 1\")")
    };
    if every.split_ascii_whitespace().count() != 5 {
        return Err(bad());
    }
    // cronexpr walks the matching wall-clock times, read in UTC (no clock changes there, so
    // each wall-clock minute comes exactly once); each is then placed in `zone`
    let wall = cronexpr::parse_crontab(&format!("{every} UTC")).map_err(|_| bad())?;
    let from = zone
        .civil(t)
        .to_zoned(jiff::tz::TimeZone::UTC)
        .map_err(|_| bad())?
        .timestamp();
    let ticks = wall
        .iter_after(cronexpr::MakeTimestamp(from))
        .map_err(|_| bad())?;
    // a wall-clock time that is not after `t` is skipped: when `t` is in an hour the clocks
    // repeat, the times whose first occurrence has passed (a clock change repeats no more
    // than a few hours of minutes: the bound)
    for tick in ticks.take(24 * 60) {
        let civil = tick.map_err(|_| bad())?.datetime();
        if let Some(at) = zone.unix(civil).filter(|&at| at > t) {
            return Ok(at);
        }
    }
    Err(bad())
}

fn num(s: &str) -> Option<i8> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A task's `--at`: RFC 3339 with its offset (`2026-11-24T06:30:00Z`,
/// `2026-11-24T07:30:00+01:00`), or `HH:MM` in `zone` (the server's local time): today's if
/// it is still ahead of `now`, else tomorrow's (read as [`Zone::unix`] reads it on the nights
/// the clocks change). Returns Unix seconds.
pub fn parse_at(s: &str, now: i64, zone: &Zone) -> Result<i64, String> {
    let bad = || {
        format!(
            "--at {s:?} is not a time: write HH:MM (the server's local time, today or else \
             tomorrow) or RFC 3339 like 2026-11-24T06:30:00Z or 2026-11-24T07:30:00+01:00"
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
        let mut day = zone.civil(now).date();
        for _ in 0..2 {
            match zone.unix(day.at(h, m, 0, 0)) {
                Some(t) if t > now => return Ok(t),
                _ => day = day.tomorrow().map_err(|_| bad())?,
            }
        }
        return Err(bad());
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
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
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
            "2023-11-14T22:13:20",
            "x",
            "",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
        // out of jiff's range: clamped, no panic
        assert_eq!(rfc3339(i64::MAX), "9999-12-30T22:00:00Z");
        assert_eq!(rfc3339(i64::MIN), "-009999-01-02T01:59:59Z");
    }

    #[test]
    fn at_hh_mm_is_today_or_tomorrow_utc() {
        let now = 1_700_000_000; // 2023-11-14 22:13:20Z
        let parse_at = |s, now| parse_at(s, now, &Zone::utc());
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

    #[test]
    fn zones_come_from_the_tzdb() {
        let paris = Zone::named("europe/paris").unwrap();
        assert_eq!(paris.name(), Some("Europe/Paris"));
        let winter = parse_rfc3339("2026-01-15T12:00:00Z").unwrap();
        let summer = parse_rfc3339("2026-07-15T12:00:00Z").unwrap();
        assert_eq!(
            (paris.offset_at(winter), paris.offset_at(summer)),
            (3600, 7200)
        );
        // past 2037, where zoneinfo files stop listing transitions: the zone's rule goes on
        let later = parse_rfc3339("2050-07-15T12:00:00Z").unwrap();
        assert_eq!(paris.offset_at(later), 7200);
        assert_eq!(
            rfc3339(parse_at("06:30", summer, &paris).unwrap()),
            "2026-07-16T04:30:00Z"
        );
        assert_eq!(paris.wall_clock(summer), "2026-07-15 14:00");
        for bad in ["Mars/Olympus", "../../etc/passwd", "/etc/localtime", ""] {
            assert_eq!(Zone::named(bad), None, "{bad}");
        }
        assert_eq!(Zone::named("UTC").unwrap().offset_at(summer), 0);
        let east = Zone::fixed(4 * 3600).unwrap();
        assert_eq!((east.offset_at(summer), east.name()), (14_400, None));
        assert_eq!(
            rfc3339(parse_at("10:00", summer, &east).unwrap()),
            "2026-07-16T06:00:00Z"
        );
        assert_eq!(Zone::fixed(26 * 3600), None);
    }

    /// Europe/Paris, 2027: on 28 March 02:00 CET (UTC+1) becomes 03:00 CEST (UTC+2); on 31
    /// October 03:00 CEST becomes 02:00 CET.
    #[test]
    fn wall_clock_times_where_the_clocks_change() {
        let paris = Zone::named("Europe/Paris").unwrap();
        let at = |mo, d, h, m| {
            rfc3339(
                paris
                    .unix(jiff::civil::date(2027, mo, d).at(h, m, 0, 0))
                    .unwrap(),
            )
        };
        // 02:30 is skipped in March: it reads as 03:30 CEST, the same instant
        assert_eq!(at(3, 28, 2, 30), "2027-03-28T01:30:00Z");
        assert_eq!(at(3, 28, 3, 30), "2027-03-28T01:30:00Z");
        assert_eq!(at(3, 28, 1, 30), "2027-03-28T00:30:00Z");
        // 02:30 comes twice in October (00:30Z CEST, 01:30Z CET): the first
        assert_eq!(at(10, 31, 2, 30), "2027-10-31T00:30:00Z");
        let second = parse_rfc3339("2027-10-31T01:30:00Z").unwrap();
        assert_eq!(paris.wall_clock(second), "2027-10-31 02:30");
        assert_eq!(at(10, 31, 3, 30), "2027-10-31T02:30:00Z");
        // --at HH:MM on those nights
        let eve = parse_rfc3339("2027-03-27T12:00:00Z").unwrap();
        assert_eq!(
            rfc3339(parse_at("02:30", eve, &paris).unwrap()),
            "2027-03-28T01:30:00Z"
        );
        let eve = parse_rfc3339("2027-10-30T12:00:00Z").unwrap();
        assert_eq!(
            rfc3339(parse_at("02:30", eve, &paris).unwrap()),
            "2027-10-31T00:30:00Z"
        );
        // between the two 02:30s, the next is the next night's
        let between = parse_rfc3339("2027-10-31T01:00:00Z").unwrap();
        assert_eq!(
            rfc3339(parse_at("02:30", between, &paris).unwrap()),
            "2027-11-01T01:30:00Z"
        );
    }
}

//! Wall-clock helpers: Unix seconds and their UTC text form.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, now.
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
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

/// A time zone's UTC offsets, read from a TZif file (the zoneinfo format): its transitions
/// only. Debian's zoneinfo files list transitions up to 2037; later times keep the last offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    /// (transition time, UTC offset in seconds from then on), in time order.
    transitions: Vec<(i64, i64)>,
    /// The offset before the first transition.
    initial: i64,
}

impl Zone {
    pub fn utc() -> Zone {
        Zone {
            transitions: Vec::new(),
            initial: 0,
        }
    }

    /// The server's zone: `TZ` naming a zoneinfo file (`Europe/Paris`, `:Europe/Paris` or a
    /// path), else `/etc/localtime`; UTC when neither can be read.
    pub fn local() -> Zone {
        let path = match std::env::var("TZ") {
            Ok(tz) if !tz.is_empty() => {
                let tz = tz.trim_start_matches(':');
                if tz.starts_with('/') {
                    std::path::PathBuf::from(tz)
                } else {
                    std::path::Path::new("/usr/share/zoneinfo").join(tz)
                }
            }
            _ => "/etc/localtime".into(),
        };
        std::fs::read(path)
            .ok()
            .and_then(|b| Zone::parse(&b))
            .unwrap_or_else(Zone::utc)
    }

    /// The zone `name` (`Europe/Paris`, `UTC`) from /usr/share/zoneinfo; `None` if there is
    /// no such zone (or the name could leave the zoneinfo directory).
    pub fn named(name: &str) -> Option<Zone> {
        if name.eq_ignore_ascii_case("utc") {
            return Some(Zone::utc());
        }
        let ok = !name.is_empty()
            && !name.starts_with('/')
            && name
                .split('/')
                .all(|p| !p.is_empty() && p != "." && p != "..")
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/_-+".contains(&b));
        if !ok {
            return None;
        }
        std::fs::read(std::path::Path::new("/usr/share/zoneinfo").join(name))
            .ok()
            .and_then(|b| Zone::parse(&b))
    }

    /// Parses a TZif file (version 1, or the 64-bit block of versions 2+).
    pub fn parse(b: &[u8]) -> Option<Zone> {
        fn be(b: &[u8], at: usize, n: usize) -> Option<i64> {
            let s = b.get(at..at + n)?;
            Some(match n {
                4 => i64::from(i32::from_be_bytes(s.try_into().ok()?)),
                _ => i64::from_be_bytes(s.try_into().ok()?),
            })
        }
        fn block(b: &[u8], at: usize, tsize: usize) -> Option<(Zone, usize)> {
            if b.get(at..at + 4)? != b"TZif" {
                return None;
            }
            let count = |i: usize| be(b, at + 20 + 4 * i, 4).map(|v| v as usize);
            let (isut, isstd, leap, timecnt, typecnt, chars) = (
                count(0)?,
                count(1)?,
                count(2)?,
                count(3)?,
                count(4)?,
                count(5)?,
            );
            if typecnt == 0 {
                return None;
            }
            let times = at + 44;
            let idx = times + timecnt * tsize;
            let types = idx + timecnt;
            let end = types + typecnt * 6 + chars + leap * (tsize + 4) + isstd + isut;
            let utoff = |t: usize| be(b, types + 6 * t, 4);
            let mut transitions = Vec::with_capacity(timecnt);
            for i in 0..timecnt {
                let ty = *b.get(idx + i)? as usize;
                if ty >= typecnt {
                    return None;
                }
                transitions.push((be(b, times + i * tsize, tsize)?, utoff(ty)?));
            }
            // before the first transition: the first standard-time type (RFC 8536 3.2)
            let initial = (0..typecnt)
                .find(|&t| b.get(types + 6 * t + 4) == Some(&0))
                .map_or_else(|| utoff(0), utoff)?;
            Some((
                Zone {
                    transitions,
                    initial,
                },
                end,
            ))
        }
        let (v1, end) = block(b, 0, 4)?;
        if *b.get(4)? >= b'2' {
            if let Some((v2, _)) = block(b, end, 8) {
                return Some(v2);
            }
        }
        Some(v1)
    }

    /// The UTC offset (seconds east) at Unix time `t`.
    pub fn offset_at(&self, t: i64) -> i64 {
        match self.transitions.partition_point(|&(at, _)| at <= t) {
            0 => self.initial,
            n => self.transitions[n - 1].1,
        }
    }
}

/// A task's `--at`: RFC 3339 with its offset (`2026-11-24T06:30:00Z`,
/// `2026-11-24T07:30:00+01:00`), or `HH:MM` in `zone` (the server's local time): today's if
/// it is still ahead of `now`, else tomorrow's. Returns Unix seconds.
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
        let local_now = now + zone.offset_at(now);
        let mut local = local_now.div_euclid(86_400) * 86_400 + h * 3600 + m * 60;
        if local <= local_now {
            local += 86_400;
        }
        // the offset in force at that local time (one refinement covers a DST change between)
        let guess = local - zone.offset_at(now);
        return Ok(local - zone.offset_at(guess));
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

    /// A TZif v1 file: offset 0 (standard) until t=1_000_000, then +3600 (DST).
    fn tzif_v1() -> Vec<u8> {
        let mut b = b"TZif".to_vec();
        b.extend([0u8; 16]);
        for n in [0u32, 0, 0, 1, 2, 4] {
            b.extend(n.to_be_bytes());
        }
        b.extend(1_000_000i32.to_be_bytes());
        b.push(1);
        b.extend(0i32.to_be_bytes());
        b.extend([0, 0]);
        b.extend(3600i32.to_be_bytes());
        b.extend([1, 0]);
        b.extend(b"UTC\0");
        b
    }

    #[test]
    fn zone_offsets_from_tzif() {
        let z = Zone::parse(&tzif_v1()).unwrap();
        assert_eq!((z.offset_at(999_999), z.offset_at(1_000_000)), (0, 3600));
        assert_eq!(Zone::parse(b"TZif"), None);
        assert_eq!(
            Zone::parse(b"not a zone file at all, no no no no no no no"),
            None
        );
        // HH:MM in that zone: 10:00 local is 09:00Z once DST applies
        let now = 2_000_000; // 1970-01-24T03:33:20Z, 04:33:20 local
        assert_eq!(
            rfc3339(parse_at("10:00", now, &z).unwrap()),
            "1970-01-24T09:00:00Z"
        );
        assert_eq!(
            rfc3339(parse_at("04:00", now, &z).unwrap()),
            "1970-01-25T03:00:00Z"
        );
        // a real zoneinfo file (version 2+, 64-bit block), when the system has tzdata
        match std::fs::read("/usr/share/zoneinfo/Europe/Paris") {
            Ok(b) => {
                let paris = Zone::parse(&b).unwrap();
                let winter = parse_rfc3339("2026-01-15T12:00:00Z").unwrap();
                let summer = parse_rfc3339("2026-07-15T12:00:00Z").unwrap();
                assert_eq!(
                    (paris.offset_at(winter), paris.offset_at(summer)),
                    (3600, 7200)
                );
                assert_eq!(
                    rfc3339(parse_at("06:30", summer, &paris).unwrap()),
                    "2026-07-16T04:30:00Z"
                );
            }
            Err(e) => eprintln!("SKIP: zone_offsets_from_tzif (Europe/Paris): {e}"),
        }
    }
}

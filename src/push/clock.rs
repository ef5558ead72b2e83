//! The scheduler's clock, injectable: the system clock, or (tests) a clock file holding the
//! Unix time to pretend it is, from which time runs on at the real pace. A test writes
//! `05:59:50` of some day into the file and sees a 22:00-06:00 window close ten seconds later.

use std::path::PathBuf;
use std::time::SystemTime;

pub trait Clock: Send + Sync {
    /// Unix seconds.
    fn now(&self) -> i64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        crate::time::now_unix()
    }
}

/// Reads `path` at every call: one integer (Unix seconds, the time it was at the file's last
/// modification); the clock advances from there with the real time since that modification.
/// An unreadable file reads as the system clock, so a test cannot stop the scheduler dead.
pub struct FileClock {
    pub path: PathBuf,
}

impl Clock for FileClock {
    fn now(&self) -> i64 {
        let read = || -> Option<i64> {
            let text = std::fs::read_to_string(&self.path).ok()?;
            let base: i64 = text.trim().parse().ok()?;
            let modified = std::fs::metadata(&self.path).ok()?.modified().ok()?;
            let since = SystemTime::now()
                .duration_since(modified)
                .map_or(0, |d| d.as_secs() as i64);
            Some(base + since)
        };
        read().unwrap_or_else(crate::time::now_unix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_file_sets_the_time() {
        let t = tempfile::tempdir().unwrap();
        let c = FileClock {
            path: t.path().join("clock"),
        };
        // no file: the system clock
        assert!((c.now() - crate::time::now_unix()).abs() <= 1);
        std::fs::write(&c.path, "1000000000\n").unwrap();
        let n = c.now();
        assert!((1_000_000_000..1_000_000_002).contains(&n), "{n}");
    }
}

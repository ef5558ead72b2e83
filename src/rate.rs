//! Bandwidth caps: parsing `50Mbit` and friends, and a token bucket shared by every
//! connection of a relay's prestage, so the cap holds for the link, not per stream.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Parses a rate into bytes per second: `50Mbit`, `1Gbit`, `800kbit`, `10Mbps` (bits, SI) or
/// `5MB`, `5MiB` (bytes; with an optional `/s`). A bare number is bytes per second.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || {
        format!("rate {s:?} is not understood: write e.g. 50Mbit, 1Gbit, 800kbit (bits per second) or 5MB, 5MiB (bytes per second)")
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "bit" | "bps" => 1.0 / 8.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "kbit" | "kbps" => 1e3 / 8.0,
        "mbit" | "mbps" => 1e6 / 8.0,
        "gbit" | "gbps" => 1e9 / 8.0,
        _ => return Err(bad()),
    };
    let bytes = n * mult;
    if !(bytes.is_finite() && bytes >= 1.0) {
        return Err(format!("rate {s:?} is below 1 byte per second"));
    }
    Ok(bytes as u64)
}

/// `6250000` → `50 Mbit/s`.
pub fn format_rate(bytes_per_sec: u64) -> String {
    let bits = bytes_per_sec as f64 * 8.0;
    if bits >= 1e9 {
        format!("{:.3} Gbit/s", bits / 1e9)
    } else if bits >= 1e6 {
        format!("{:.1} Mbit/s", bits / 1e6)
    } else {
        format!("{:.0} kbit/s", bits / 1e3)
    }
}

/// A token bucket: `rate` bytes per second, holding at most `burst` bytes of credit. Pure
/// (the caller passes the time), so the fleet simulation and tests drive it.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    /// Seconds (any origin) at the last update.
    at: f64,
}

impl Bucket {
    /// Starts empty at time `now` (seconds): no burst at start-up or after a pause.
    pub fn new(rate: u64, burst: u64, now: f64) -> Bucket {
        Bucket {
            rate: rate.max(1) as f64,
            burst: burst.max(1) as f64,
            tokens: 0.0,
            at: now,
        }
    }

    pub fn rate(&self) -> u64 {
        self.rate as u64
    }

    fn refill(&mut self, now: f64) {
        if now > self.at {
            self.tokens = (self.tokens + (now - self.at) * self.rate).min(self.burst);
            self.at = now;
        }
    }

    /// Takes `n` bytes at time `now`; returns how long the caller must wait before sending
    /// them (zero if the credit covered them). Debt is allowed, so a caller asking for more
    /// than the burst still gets through at the rate.
    pub fn take(&mut self, n: u64, now: f64) -> Duration {
        self.refill(now);
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }

    /// Forgets credit and debt (a window opened again, the cap changed).
    pub fn reset(&mut self, rate: u64, now: f64) {
        self.rate = rate.max(1) as f64;
        self.tokens = 0.0;
        self.at = now;
    }

    /// Changes the rate, keeping credit and debt (a rate adjusted under load, not a new cap).
    pub fn reset_rate_keep_credit(&mut self, rate: u64) {
        self.rate = rate.max(1) as f64;
    }

    /// Changes the most credit the bucket holds.
    pub fn set_burst(&mut self, burst: u64) {
        self.burst = burst.max(1) as f64;
        self.tokens = self.tokens.min(self.burst);
    }
}

/// The burst of a [`SharedBucket`] at `rate`: 250 ms of it, at least 64 KiB.
fn burst_for(rate: u64) -> u64 {
    (rate / 4).max(64 << 10)
}

/// A [`Bucket`] shared by threads, on the monotonic clock.
pub struct SharedBucket {
    origin: Instant,
    bucket: Mutex<Bucket>,
}

impl SharedBucket {
    /// `rate` bytes/s with 250 ms of burst (at least 64 KiB, so one chunk passes at a time).
    pub fn new(rate: u64) -> SharedBucket {
        SharedBucket {
            origin: Instant::now(),
            bucket: Mutex::new(Bucket::new(rate, burst_for(rate), 0.0)),
        }
    }

    fn now(&self) -> f64 {
        self.origin.elapsed().as_secs_f64()
    }

    /// Blocks until `n` bytes may pass.
    pub fn acquire(&self, n: u64) {
        let wait = self.reserve(n);
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }

    /// Takes `n` bytes now and returns how long the caller must wait before they pass (for
    /// callers that wait their own way, e.g. an async task).
    pub fn reserve(&self, n: u64) -> Duration {
        let now = self.now();
        self.bucket
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(n, now)
    }

    /// A new cap (and the burst that goes with it); credit and debt are forgotten.
    pub fn set_rate(&self, rate: u64) {
        let now = self.now();
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        b.reset(rate, now);
        b.set_burst(burst_for(rate));
    }

    pub fn rate(&self) -> u64 {
        self.bucket.lock().unwrap_or_else(|p| p.into_inner()).rate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_in_bits_and_bytes() {
        assert_eq!(parse_rate("50Mbit").unwrap(), 6_250_000);
        assert_eq!(parse_rate("1Gbit").unwrap(), 125_000_000);
        assert_eq!(parse_rate("800kbit").unwrap(), 100_000);
        assert_eq!(parse_rate("10 Mbps").unwrap(), 1_250_000);
        assert_eq!(parse_rate("5MB/s").unwrap(), 5_000_000);
        assert_eq!(parse_rate("5MiB").unwrap(), 5 << 20);
        assert_eq!(parse_rate("2.5Mbit").unwrap(), 312_500);
        assert_eq!(parse_rate("1000").unwrap(), 1000);
        for bad in ["", "fast", "10 parsecs", "0Mbit", "-5Mbit"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
        assert_eq!(format_rate(6_250_000), "50.0 Mbit/s");
    }

    #[test]
    fn the_bucket_holds_the_rate_over_time() {
        // 1000 B/s, 100 B burst; a sender taking 50 B whenever allowed, for 60 s of clock
        let mut b = Bucket::new(1000, 100, 0.0);
        let mut now = 0.0;
        let mut sent = 0u64;
        while now < 60.0 {
            let wait = b.take(50, now);
            now += wait.as_secs_f64();
            sent += 50;
        }
        let rate = sent as f64 / now;
        assert!((rate - 1000.0).abs() < 10.0, "{rate}");
        // idle credit is capped at the burst
        let mut b = Bucket::new(1000, 100, 0.0);
        assert_eq!(b.take(100, 1000.0), Duration::ZERO);
        assert!(b.take(100, 1000.0) > Duration::ZERO);
        // a big take goes through, then waits its time
        let mut b = Bucket::new(1000, 100, 0.0);
        assert_eq!(b.take(5000, 0.0), Duration::from_secs(5));
    }
}

//! One retry policy for the crate: exponential backoff ([`Backoff`]: a first delay multiplied
//! by `factor` after each failure, at most `max`, for at most `tries` attempts) and the
//! runners that retry what their predicate calls retryable, blocking ([`Backoff::run`]) or
//! async ([`Backoff::run_async`]). Loops that keep their own schedule (the relay's heartbeat
//! and prestage, the GLPI queue's next attempt time) ask [`Backoff::delay`] for the wait.
//!
//! Uses no other module of the crate.

use std::future::Future;
use std::time::Duration;

/// How long to wait between attempts, and how many to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The wait after the first failure.
    pub first: Duration,
    /// Each further failure multiplies the wait by this.
    pub factor: u32,
    /// The longest wait.
    pub max: Duration,
    /// Attempts in all, the first included (`u32::MAX`: no limit; 0 counts as 1).
    pub tries: u32,
}

/// A failed attempt, as the runners show it to their predicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failed {
    /// Its number, from 1.
    pub attempt: u32,
    /// The wait before the next attempt if the predicate asks for one; `None`: that was the
    /// last try.
    pub next: Option<Duration>,
}

impl Backoff {
    /// Doubling from `first` up to `max`, no limit on tries.
    pub const fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            factor: 2,
            max,
            tries: u32::MAX,
        }
    }

    /// The same waits, at most `tries` attempts.
    pub const fn tries(self, tries: u32) -> Backoff {
        Backoff { tries, ..self }
    }

    /// The wait after `failures + 1` failures in a row: `delay(0)` is `first`, then
    /// `first · factor^failures`, at most `max` (saturating, whatever `failures`).
    pub fn delay(&self, failures: u32) -> Duration {
        let d = match self.factor.checked_pow(failures) {
            Some(m) => self.first.saturating_mul(m),
            None if self.first.is_zero() => Duration::ZERO,
            None => Duration::MAX,
        };
        d.min(self.max)
    }

    fn failed(&self, attempt: u32) -> Failed {
        Failed {
            attempt,
            next: (attempt < self.tries.max(1)).then(|| self.delay(attempt - 1)),
        }
    }

    /// Runs `op(attempt)` (attempts numbered from 1) until it succeeds, fails with an error
    /// that `retry` does not want tried again, or the tries are spent; sleeps (blocking) the
    /// backoff between attempts. `retry` sees every failure, the last one too (there
    /// `next` is `None` and its answer does not matter): the place to log it. Returns the
    /// last result and the attempts made.
    pub fn run<T, E>(
        &self,
        mut op: impl FnMut(u32) -> Result<T, E>,
        mut retry: impl FnMut(&E, &Failed) -> bool,
    ) -> (Result<T, E>, u32) {
        let mut attempt = 1;
        loop {
            let e = match op(attempt) {
                Ok(v) => return (Ok(v), attempt),
                Err(e) => e,
            };
            let f = self.failed(attempt);
            let again = retry(&e, &f);
            match f.next {
                Some(wait) if again => std::thread::sleep(wait),
                _ => return (Err(e), attempt),
            }
            attempt += 1;
        }
    }

    /// [`run`](Self::run) for async attempts: the waits are `tokio::time::sleep`.
    pub async fn run_async<T, E, F: Future<Output = Result<T, E>>>(
        &self,
        mut op: impl FnMut(u32) -> F,
        mut retry: impl FnMut(&E, &Failed) -> bool,
    ) -> (Result<T, E>, u32) {
        let mut attempt = 1;
        loop {
            let e = match op(attempt).await {
                Ok(v) => return (Ok(v), attempt),
                Err(e) => e,
            };
            let f = self.failed(attempt);
            let again = retry(&e, &f);
            match f.next {
                Some(wait) if again => tokio::time::sleep(wait).await,
                _ => return (Err(e), attempt),
            }
            attempt += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn delays_grow_by_the_factor_up_to_the_max() {
        let b = Backoff::new(Duration::from_secs(30), Duration::from_secs(3600));
        let d: Vec<u64> = (0..9).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(d, [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]);
        // no overflow, however many failures
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(3600));
        let unbounded = Backoff::new(Duration::from_millis(250), Duration::MAX);
        assert_eq!(unbounded.delay(2), Duration::from_secs(1));
        assert_eq!(unbounded.delay(200), Duration::MAX);
        let b3 = Backoff {
            factor: 3,
            ..Backoff::new(MS, 100 * MS)
        };
        assert_eq!(b3.delay(2), 9 * MS);
    }

    #[test]
    fn run_retries_until_success_and_tells_each_failure() {
        let b = Backoff::new(MS, 2 * MS).tries(5);
        let mut seen = Vec::new();
        let (r, n) = b.run(
            |a| if a < 3 { Err(a) } else { Ok("done") },
            |e, f| {
                seen.push((*e, f.attempt, f.next));
                true
            },
        );
        assert_eq!((r, n), (Ok("done"), 3));
        assert_eq!(seen, [(1, 1, Some(MS)), (2, 2, Some(2 * MS))]);
    }

    #[test]
    fn run_stops_at_the_last_try_or_an_error_not_retried() {
        let b = Backoff::new(MS, MS).tries(3);
        let mut last = None;
        let (r, n) = b.run(Err::<(), u32>, |_, f| {
            last = Some(*f);
            true
        });
        assert_eq!((r, n), (Err(3), 3));
        assert_eq!(
            last,
            Some(Failed {
                attempt: 3,
                next: None
            })
        );
        let (r, n) = b.run(Err::<(), u32>, |e, _| *e < 2);
        assert_eq!((r, n), (Err(2), 2));
        // no tries still makes one attempt
        let (r, n) = b.tries(0).run(Err::<(), u32>, |_, _| true);
        assert_eq!((r, n), (Err(1), 1));
    }

    #[tokio::test]
    async fn run_async_waits_between_attempts() {
        let b = Backoff::new(20 * MS, 20 * MS).tries(3);
        let start = std::time::Instant::now();
        let (r, n) = b
            .run_async(
                |a| async move {
                    if a < 3 {
                        Err(())
                    } else {
                        Ok(a)
                    }
                },
                |_, _| true,
            )
            .await;
        assert_eq!((r, n), (Ok(3), 3));
        assert!(start.elapsed() >= 40 * MS);
    }
}

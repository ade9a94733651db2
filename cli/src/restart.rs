//! When to restart a crashed process: the kubelet's CrashLoopBackOff, as a pure value over an
//! injected clock (`Instant`s passed in), so its numbers are unit-tested without waiting.
//!
//! The kubelet waits 10 s, 20 s, 40 s … capped at 5 min, and resets the delay once a container
//! has run for 10 min. Local mode is interactive, so it starts lower and forgives sooner: 1 s,
//! 2 s, 4 s … capped at 5 min, reset after a stable minute ([`Policy::default`]).

use std::time::{Duration, Instant};

/// Back-off numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The wait before the first restart of a crash series.
    pub initial: Duration,
    /// The longest wait.
    pub max: Duration,
    /// A process that ran this long before exiting starts a new series (delay back to `initial`).
    pub stable: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(300),
            stable: Duration::from_secs(60),
        }
    }
}

impl Policy {
    /// The wait before restart number `n` of a series (0-based): `initial * 2^n`, capped.
    pub fn delay(&self, n: u32) -> Duration {
        self.initial
            .checked_mul(2u32.saturating_pow(n))
            .map_or(self.max, |d| d.min(self.max))
    }
}

/// The restart history of one supervised process.
#[derive(Clone, Debug)]
pub struct Restarts {
    policy: Policy,
    /// Restarts since the process was first started (what the table shows).
    total: u32,
    /// Exits in the current series (since the last stable run).
    series: u32,
    started_at: Instant,
}

impl Restarts {
    /// A process started at `now`.
    pub fn new(policy: Policy, now: Instant) -> Self {
        Self {
            policy,
            total: 0,
            series: 0,
            started_at: now,
        }
    }

    /// The process exited at `now`: how long to wait before starting it again.
    pub fn exited(&mut self, now: Instant) -> Duration {
        if now.saturating_duration_since(self.started_at) >= self.policy.stable {
            self.series = 0;
        }
        let delay = self.policy.delay(self.series);
        self.series = self.series.saturating_add(1);
        delay
    }

    /// The process was started again at `now`.
    pub fn restarted(&mut self, now: Instant) {
        self.total = self.total.saturating_add(1);
        self.started_at = now;
    }

    pub fn total(&self) -> u32 {
        self.total
    }

    /// Exits since the last stable run.
    pub fn series(&self) -> u32 {
        self.series
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn delays_double_from_one_second_and_stop_at_five_minutes() {
        let p = Policy::default();
        let got: Vec<u64> = (0..12).map(|n| p.delay(n).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(p.delay(u32::MAX), S(300), "no overflow");
    }

    #[test]
    fn a_crash_loop_backs_off_and_a_stable_minute_resets_it() {
        let t0 = Instant::now();
        let mut r = Restarts::new(Policy::default(), t0);
        let mut now = t0;
        let mut delays = Vec::new();
        for _ in 0..4 {
            // Crashes right after each start.
            now += S(0);
            let d = r.exited(now);
            delays.push(d.as_secs());
            now += d;
            r.restarted(now);
        }
        assert_eq!(delays, [1, 2, 4, 8]);
        assert_eq!((r.total(), r.series()), (4, 4));
        // Runs 59 s: still the same series.
        now += S(59);
        assert_eq!(r.exited(now), S(16));
        now += S(16);
        r.restarted(now);
        // Runs a full minute: the next crash starts over at 1 s; the total keeps counting.
        now += S(60);
        assert_eq!(r.exited(now), S(1));
        assert_eq!((r.total(), r.series()), (5, 1));
    }
}

//! Retry delays, the one implementation: exponential in the number of failed calls, capped,
//! with jitter so that the tasks that failed together (a StackStorm restart fails hundreds at
//! once) do not all come back in the same instant ([`Backoff::delay`]), or without it where
//! one loop retries alone ([`Backoff::ceiling`]).

use std::time::Duration;

/// Exponential backoff with "equal jitter": half the delay is fixed, half is random.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The delay after `failures` failed calls (1 = the first failure): `base · 2^(failures-1)`
    /// capped at `max`, then a random point in its upper half.
    pub fn delay(&self, failures: u32) -> Duration {
        jitter(self.ceiling(failures))
    }

    /// The delay before jitter.
    pub fn ceiling(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(30);
        self.base.saturating_mul(1u32 << exp).min(self.max)
    }
}

/// A random point in `[d/2, d]`.
pub fn jitter(d: Duration) -> Duration {
    let half = d / 2;
    let extra = fastrand::u64(0..=half.as_millis() as u64);
    half + Duration::from_millis(extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_jitters_within_the_upper_half() {
        let b = Backoff {
            base: Duration::from_millis(500),
            max: Duration::from_secs(10),
        };
        let ceilings: Vec<u64> = (1..=7).map(|n| b.ceiling(n).as_millis() as u64).collect();
        assert_eq!(ceilings, [500, 1000, 2000, 4000, 8000, 10_000, 10_000]);
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(10));
        for n in 1..=7 {
            for _ in 0..50 {
                let d = b.delay(n);
                assert!(d >= b.ceiling(n) / 2 && d <= b.ceiling(n), "{d:?} for {n}");
            }
        }
    }
}

//! Per-source rate limit at ingest: one token bucket per event `source` in this process, so one
//! noisy producer gets 429 with `Retry-After` while the others keep being accepted.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most sources tracked at once; beyond it, buckets that are full again are forgotten first.
const MAX_SOURCES: usize = 100_000;

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets by source.
pub struct Limiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// A source over its rate: who, and when to try again.
#[derive(Debug, Clone, PartialEq)]
pub struct Over {
    pub source: String,
    pub retry_after: Duration,
}

impl Limiter {
    /// `rate` events per second per source (0 or less: no limit), bursts of `burst` (0: one
    /// second's worth).
    pub fn new(rate: f64, burst: u32) -> Option<Limiter> {
        if rate.is_nan() || rate <= 0.0 {
            return None;
        }
        let burst = if burst == 0 {
            rate.ceil().max(1.0)
        } else {
            f64::from(burst)
        };
        Some(Limiter {
            rate,
            burst,
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Takes `n` tokens from each source's bucket, all or none: when any source has too few, no
    /// bucket is touched and the first such source is named.
    pub fn take(&self, wanted: &BTreeMap<&str, usize>, now: Instant) -> Result<(), Over> {
        let mut buckets = match self.buckets.lock() {
            Ok(b) => b,
            Err(poisoned) => poisoned.into_inner(),
        };
        if buckets.len() > MAX_SOURCES {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst
            });
        }
        for (source, n) in wanted {
            let n = *n as f64;
            let have = buckets.get(*source).map_or(self.burst, |b| {
                (b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * self.rate)
                    .min(self.burst)
            });
            if have < n {
                // More than a burst can never pass at once: ask for a full bucket.
                let missing = n.min(self.burst) - have;
                let secs = (missing / self.rate).max(0.0).ceil().max(1.0);
                return Err(Over {
                    source: (*source).to_owned(),
                    retry_after: Duration::from_secs_f64(secs.min(86_400.0)),
                });
            }
        }
        for (source, n) in wanted {
            let b = buckets.entry((*source).to_owned()).or_insert(Bucket {
                tokens: self.burst,
                at: now,
            });
            let have = (b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * self.rate)
                .min(self.burst);
            b.tokens = have - *n as f64;
            b.at = now;
        }
        Ok(())
    }

    /// The burst size, for error messages.
    pub fn burst(&self) -> f64 {
        self.burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_source_over_its_rate_does_not_touch_the_others() {
        let l = Limiter::new(10.0, 20).expect("limiter");
        let t = Instant::now();
        let a = BTreeMap::from([("a", 20)]);
        assert!(l.take(&a, t).is_ok());
        let over = l.take(&BTreeMap::from([("a", 5)]), t).unwrap_err();
        assert_eq!(over.source, "a");
        assert_eq!(over.retry_after, Duration::from_secs(1));
        assert!(l.take(&BTreeMap::from([("b", 20)]), t).is_ok());
        // All or none: b is empty now, so a+b fails and a keeps its (refilled) tokens.
        let t2 = t + Duration::from_secs(1);
        assert!(l.take(&BTreeMap::from([("a", 10), ("b", 11)]), t2).is_err());
        assert!(l.take(&BTreeMap::from([("a", 10)]), t2).is_ok());
        assert!(Limiter::new(0.0, 5).is_none());
    }
}

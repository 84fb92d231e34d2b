//! What a rendered `throttle` means in bucket terms, and where its bucket lives in Redis. Pure
//! (no I/O), so the arithmetic and the key layout are tested without a server.
//!
//! A bucket holds `capacity` tokens; an admitted task holds one for `horizon`, so at most
//! `capacity` tasks are admitted in any window of `horizon`:
//!
//! - `mode: rate` — capacity = `limit + burst`, horizon = `per × (limit + burst) / limit`. With
//!   no burst that is exactly "at most `limit` per any `per`"; a burst lets `limit + burst` tasks
//!   through at once while the long-run rate stays `limit` per `per`.
//! - `mode: once_within` — capacity 1, horizon `per`: the first task fires, the rest are
//!   suppressed until `per` has passed since it fired (Event-Driven Ansible's `once_within`).
//!
//! Keys (one hash slot per bucket, so Redis Cluster can run the script):
//!
//! ```text
//! whale:throttle:{<bucket>}:log                 sorted set: task digest → ms its token was taken
//! whale:throttle:{<bucket>}:task:<task digest>  string: 'a' | 't<retry_after_ms>' (the decision)
//! ```
//!
//! `<bucket>` is 32 hex chars of SHA-256 over (rule, rendered key), so a key that renders empty,
//! huge or full of odd characters still makes a short, safe Redis key.

use whale_kernel::records::{Throttle, ThrottleMode};

/// Prefix of every key this stage writes.
pub const KEY_PREFIX: &str = "whale:throttle";
/// Longest period honoured; longer ones are clamped (keeps Redis numbers exact and keys finite).
pub const MAX_PERIOD_MS: u64 = 366 * 24 * 3600 * 1000;
/// Most tokens in one bucket; the log holds one entry per token taken, so this bounds its size.
pub const MAX_CAPACITY: u64 = 1_000_000;
/// A decision is remembered at least this long: past the consumer's ack wait (30 s) plus
/// redelivery delays, so a task redelivered after a crash gets its first answer back. An
/// admission is remembered for the whole horizon too (at most `capacity` of them per horizon).
pub const MARKER_TTL_MIN_MS: u64 = 2 * 60 * 1000;
/// A refusal is remembered at most this long: refusals can be many (a flood on one key), and
/// past this a redelivery is beyond JetStream's duplicate window anyway.
pub const MARKER_TTL_MAX_MS: u64 = 10 * 60 * 1000;

/// One question for Redis: may this task take a token from this bucket?
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub log_key: String,
    pub marker_key: String,
    /// The task's entry in the log (digest of the task id).
    pub member: String,
    pub capacity: u64,
    pub horizon_ms: u64,
    /// How long an admission is remembered: max(horizon, [`MARKER_TTL_MIN_MS`]).
    pub admitted_ttl_ms: u64,
    /// How long a refusal is remembered: horizon within [`MARKER_TTL_MIN_MS`, `MARKER_TTL_MAX_MS`].
    pub throttled_ttl_ms: u64,
}

/// What to do with a task's throttle before asking anyone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Ask Redis.
    Ask(Request),
    /// `per` is zero: nothing to limit.
    Admit,
    /// `limit` is zero in rate mode: never admitted.
    Throttle { retry_after_ms: u64 },
}

/// The bucket id of (rule, rendered key): 32 hex chars, also the Redis Cluster hash tag.
pub fn bucket(rule: &str, key: &str) -> String {
    whale_kernel::digest(&["whale-throttle", rule, key])[..32].to_owned()
}

/// Turns a task's throttle into a [`Plan`].
pub fn plan(rule: &str, t: &Throttle, task_id: &str) -> Plan {
    let per = t.per_ms.min(MAX_PERIOD_MS);
    if per == 0 {
        return Plan::Admit;
    }
    let (capacity, horizon) = match t.mode {
        ThrottleMode::OnceWithin => (1, per),
        ThrottleMode::Rate if t.limit == 0 => {
            return Plan::Throttle {
                retry_after_ms: per,
            }
        }
        ThrottleMode::Rate => {
            let capacity = t.limit.saturating_add(t.burst).min(MAX_CAPACITY);
            let limit = t.limit.min(capacity);
            // per × capacity / limit, rounded up, in u128 so it cannot overflow.
            let h = (per as u128 * capacity as u128).div_ceil(limit as u128);
            (capacity, h.min(MAX_PERIOD_MS as u128) as u64)
        }
    };
    let b = bucket(rule, &t.key);
    let member = whale_kernel::digest(&[task_id])[..32].to_owned();
    Plan::Ask(Request {
        log_key: format!("{KEY_PREFIX}:{{{b}}}:log"),
        marker_key: format!("{KEY_PREFIX}:{{{b}}}:task:{member}"),
        member,
        capacity,
        horizon_ms: horizon,
        admitted_ttl_ms: horizon.max(MARKER_TTL_MIN_MS),
        throttled_ttl_ms: horizon.clamp(MARKER_TTL_MIN_MS, MARKER_TTL_MAX_MS),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(key: &str, limit: u64, per_ms: u64, burst: u64, mode: ThrottleMode) -> Throttle {
        Throttle {
            key: key.into(),
            limit,
            per_ms,
            burst,
            mode,
            fail_open: false,
        }
    }

    fn ask(p: Plan) -> Request {
        match p {
            Plan::Ask(r) => r,
            other => panic!("expected a Redis question, got {other:?}"),
        }
    }

    #[test]
    fn rate_burst_and_once_within_in_bucket_terms() {
        let r = ask(plan(
            "r",
            &throttle("k", 100, 10_000, 0, ThrottleMode::Rate),
            "t-1",
        ));
        assert_eq!((r.capacity, r.horizon_ms), (100, 10_000));
        // A burst of 50 on 100 per 10 s: 150 at once, refilled so that the rate stays 100/10 s.
        let r = ask(plan(
            "r",
            &throttle("k", 100, 10_000, 50, ThrottleMode::Rate),
            "t-1",
        ));
        assert_eq!((r.capacity, r.horizon_ms), (150, 15_000));
        let r = ask(plan(
            "r",
            &throttle("k", 7, 60_000, 3, ThrottleMode::OnceWithin),
            "t-1",
        ));
        assert_eq!((r.capacity, r.horizon_ms), (1, 60_000));
        assert_eq!(r.admitted_ttl_ms, MARKER_TTL_MIN_MS);
        assert_eq!(r.throttled_ttl_ms, MARKER_TTL_MIN_MS);
        assert_eq!(
            plan("r", &throttle("k", 5, 0, 0, ThrottleMode::Rate), "t"),
            Plan::Admit
        );
        assert_eq!(
            plan("r", &throttle("k", 0, 5_000, 0, ThrottleMode::Rate), "t"),
            Plan::Throttle {
                retry_after_ms: 5_000
            }
        );
    }

    #[test]
    fn extreme_numbers_are_clamped_not_overflowed() {
        let r = ask(plan(
            "r",
            &throttle("k", 1, u64::MAX, u64::MAX, ThrottleMode::Rate),
            "t",
        ));
        assert_eq!(r.capacity, MAX_CAPACITY);
        assert_eq!(r.horizon_ms, MAX_PERIOD_MS);
        assert_eq!(r.admitted_ttl_ms, MAX_PERIOD_MS);
        assert_eq!(r.throttled_ttl_ms, MARKER_TTL_MAX_MS);
        let r = ask(plan(
            "r",
            &throttle("k", u64::MAX, 1, 0, ThrottleMode::Rate),
            "t",
        ));
        assert_eq!((r.capacity, r.horizon_ms), (MAX_CAPACITY, 1));
    }

    #[test]
    fn keys_are_short_safe_and_share_one_hash_slot() {
        let huge = "x".repeat(1 << 20);
        for key in ["", huge.as_str(), "a b\n\0\u{fffd}\u{1F433}{}", "{tag}"] {
            let r = ask(plan(
                "rule",
                &throttle(key, 1, 1_000, 0, ThrottleMode::Rate),
                "t-1",
            ));
            for k in [&r.log_key, &r.marker_key] {
                assert!(k.len() < 120, "{k}");
                assert!(k.bytes().all(|b| b.is_ascii_graphic()), "{k}");
            }
            let tag = |k: &str| k[k.find('{').unwrap()..=k.find('}').unwrap()].to_owned();
            assert_eq!(tag(&r.log_key), tag(&r.marker_key));
        }
        // Buckets are per (rule, key): neither part can bleed into the other.
        assert_ne!(bucket("ab", "c"), bucket("a", "bc"));
        assert_ne!(bucket("r", ""), bucket("r", " "));
    }
}

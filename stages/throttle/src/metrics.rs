//! The throttle's counters, in the kernel's shared registry: the stage-wide
//! `whale_stage_events_total{stage="throttle", kind}` every stage reports, the per-rule
//! `whale_throttle_decisions_total{rule, decision}` operators alert on, and a Redis up/down gauge.

use std::sync::LazyLock;

use prometheus::{IntCounterVec, IntGaugeVec};
use whale_kernel::metrics;

/// `whale_throttle_decisions_total{rule, decision}`.
pub static DECISIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics::counter_vec(
        "whale_throttle_decisions_total",
        "Throttle decisions per rule: admitted, throttled, waiting_for_redis, fail_open, unthrottled",
        &["rule", "decision"],
    )
});

/// `whale_throttle_redis_up`: 1 while the last Redis call answered, 0 during an outage.
pub static REDIS_UP: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    metrics::gauge_vec(
        "whale_throttle_redis_up",
        "1 while Redis answers the throttle, 0 while it is unreachable",
        &[],
    )
});

/// `whale_throttle_redis_redirects_total{kind}`: Redis Cluster `MOVED`/`ASK` answers whale
/// followed to the node they name, and `TRYAGAIN` answers (a bucket's keys split between two
/// nodes while its slot moves: the task waits and is asked again).
pub static REDIRECTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics::counter_vec(
        "whale_throttle_redis_redirects_total",
        "Redis Cluster answers met while slots move: moved and ask (followed), tryagain (the task waits)",
        &["kind"],
    )
});

/// Counts `n` requests that met a `kind` answer (`moved`, `ask`, `tryagain`).
pub fn redirected(kind: &str, n: usize) {
    REDIRECTS.with_label_values(&[kind]).inc_by(n as u64);
}

/// What happened to one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Took a token (or was let through by a repeated decision that had).
    Admitted,
    /// Over the limit: recorded on `whale.pipe.throttled`.
    Throttled,
    /// Redis unreachable: sent back to wait.
    WaitingForRedis,
    /// Redis unreachable and the rule says `fail_open`: admitted without a decision.
    FailOpen,
    /// No throttle on the task.
    Unthrottled,
    /// A redelivered task got its earlier decision back (also counted as admitted/throttled).
    Repeated,
    /// The task record could not be read or routed.
    Malformed,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Admitted => "admitted",
            Kind::Throttled => "throttled",
            Kind::WaitingForRedis => "waiting_for_redis",
            Kind::FailOpen => "fail_open",
            Kind::Unthrottled => "unthrottled",
            Kind::Repeated => "repeated",
            Kind::Malformed => "malformed",
        }
    }
}

/// Counts one task, stage-wide and for its rule.
pub fn count(rule: &str, kind: Kind) {
    metrics::STAGE_EVENTS
        .with_label_values(&["throttle", kind.label()])
        .inc();
    DECISIONS.with_label_values(&[rule, kind.label()]).inc();
}

/// Records whether Redis answers.
pub fn redis_up(up: bool) {
    REDIS_UP.with_label_values(&[] as &[&str]).set(up as i64);
}

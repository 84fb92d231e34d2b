//! Prometheus metrics. Every stage reports the same base telemetry from the worker loop (messages
//! by outcome, outputs, batch time), under the same names; stages add their own counters here so
//! that `/metrics` is one registry.

use std::sync::LazyLock;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The process-wide registry served on `/metrics`.
pub static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

fn register<C: prometheus::core::Collector + Clone + 'static>(c: C) -> C {
    // Registering twice only happens if a name is reused by mistake; keep the first.
    let _ = REGISTRY.register(Box::new(c.clone()));
    c
}

/// Counter vector in the shared registry.
pub fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
}

/// Gauge vector in the shared registry.
pub fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
}

/// `whale_stage_messages_total{stage, outcome}`: outcome is ack, retry, term, malformed or
/// publish_failed.
pub static STAGE_MESSAGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "whale_stage_messages_total",
        "Messages handled by a stage, by outcome (ack, retry, term, malformed, publish_failed)",
        &["stage", "outcome"],
    )
});

/// `whale_stage_outputs_total{stage}`: records published by a stage.
pub static STAGE_OUTPUTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "whale_stage_outputs_total",
        "Records a stage published downstream",
        &["stage"],
    )
});

/// `whale_stage_events_total{stage, kind}`: stage-specific counts (rejected, matched, throttled…).
pub static STAGE_EVENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "whale_stage_events_total",
        "Stage-specific decisions (accepted, rejected, matched, type_mismatch, throttled, ...)",
        &["stage", "kind"],
    )
});

/// `whale_stage_batch_seconds{stage}`: time to handle, publish and ack one batch.
pub static STAGE_BATCH_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register(
        HistogramVec::new(
            HistogramOpts::new(
                "whale_stage_batch_seconds",
                "Time to handle, publish and ack one batch",
            )
            .buckets(vec![0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
            &["stage"],
        )
        .expect("valid metric"),
    )
});

/// `whale_panics_total{where}`: panics caught and contained, by where they happened: `stage`
/// (a stage's message handling; the label `stage` names it) or `http` (one request).
pub static PANICS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "whale_panics_total",
        "Panics caught and contained (the process kept running), by where (stage, http) and stage",
        &["where", "stage"],
    )
});

/// Histogram vector in the shared registry.
pub fn histogram_vec(name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> HistogramVec {
    register(
        HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
            .expect("valid metric"),
    )
}

/// `whale_consumer_pending_messages{stage, consumer}`: messages in the stream not yet delivered
/// to the stage's consumer (its lag).
pub static CONSUMER_PENDING: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "whale_consumer_pending_messages",
        "Messages not yet delivered to the stage's durable consumer (lag), read from NATS every 10 s",
        &["stage", "consumer"],
    )
});

/// `whale_consumer_ack_pending_messages{stage, consumer}`: delivered, not yet acked.
pub static CONSUMER_ACK_PENDING: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "whale_consumer_ack_pending_messages",
        "Messages delivered to the stage's consumer and not yet acked",
        &["stage", "consumer"],
    )
});

/// `whale_consumer_redelivered_messages{stage, consumer}`: delivered more than once, not yet acked.
pub static CONSUMER_REDELIVERED: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "whale_consumer_redelivered_messages",
        "Messages the stage's consumer delivered more than once and that are not yet acked",
        &["stage", "consumer"],
    )
});

/// Records one read of a consumer's info.
pub fn consumer_info(
    stage: &str,
    consumer: &str,
    pending: u64,
    ack_pending: u64,
    redelivered: u64,
) {
    let labels = [stage, consumer];
    CONSUMER_PENDING
        .with_label_values(&labels)
        .set(pending as i64);
    CONSUMER_ACK_PENDING
        .with_label_values(&labels)
        .set(ack_pending as i64);
    CONSUMER_REDELIVERED
        .with_label_values(&labels)
        .set(redelivered as i64);
}

/// `whale_rules_info{version}`: 1 for the rule-set version this process's match/render workers
/// use (the last that compiled); the previous version's series is removed on a change.
pub static RULES_INFO: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "whale_rules_info",
        "1 for the rule-set version in force in this process (the last applied set that compiled)",
        &["version"],
    )
});

/// Records the rule-set version now in force.
pub fn rule_set_in_force(version: &str) {
    RULES_INFO.reset();
    RULES_INFO.with_label_values(&[version]).set(1);
}

/// `whale_approvals_pending`: tasks waiting for a person's decision.
pub static APPROVALS_PENDING: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "whale_approvals_pending",
        "Tasks waiting for an approval decision (read from whale_state every 15 s by approve workers)",
        &[],
    )
});

/// `whale_approvals_oldest_pending_age_seconds`: how long the oldest pending approval waits.
pub static APPROVALS_OLDEST_AGE: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "whale_approvals_oldest_pending_age_seconds",
        "Seconds the oldest pending approval has waited (0 when none waits)",
        &[],
    )
});

/// Records one read of the approval queue.
pub fn approvals(pending: u64, oldest_age_seconds: u64) {
    APPROVALS_PENDING
        .with_label_values(&[] as &[&str])
        .set(pending as i64);
    APPROVALS_OLDEST_AGE
        .with_label_values(&[] as &[&str])
        .set(oldest_age_seconds as i64);
}

/// The text exposition of every metric.
pub fn render() -> String {
    let mut buf = Vec::new();
    let _ = TextEncoder::new().encode(&REGISTRY.gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

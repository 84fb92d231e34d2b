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

/// The text exposition of every metric.
pub fn render() -> String {
    let mut buf = Vec::new();
    let _ = TextEncoder::new().encode(&REGISTRY.gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

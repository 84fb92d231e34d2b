//! Dispatch's own counters, beside the base telemetry every stage gets from the worker loop:
//! what happened to each task (`whale_stage_events_total{stage="dispatch", kind}`) and, per
//! cluster, executions created, failed calls and breaker / drain state.

use std::sync::LazyLock;

use prometheus::{HistogramVec, IntCounterVec, IntGaugeVec};
use whale_kernel::metrics::{counter_vec, gauge_vec, histogram_vec, STAGE_EVENTS};

/// What happened to one task.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// A new execution was created.
    Created,
    /// A claimed task's execution was found by trace tag (a worker died after the POST).
    Reconciled,
    /// A finished task was redelivered; its record was published again.
    Republished,
    /// Went to the dead letter.
    DeadLetter,
    /// Waits for a drained or failing cluster.
    Waiting,
    /// Went to a failover cluster (or `default` for an unknown route).
    Rerouted,
    /// A StackStorm call failed and will be retried.
    Retried,
    /// Not a task record.
    Malformed,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Created => "created",
            Kind::Reconciled => "reconciled",
            Kind::Republished => "republished",
            Kind::DeadLetter => "dead_letter",
            Kind::Waiting => "waiting",
            Kind::Rerouted => "rerouted",
            Kind::Retried => "retried",
            Kind::Malformed => "malformed",
        }
    }
}

pub fn count(kind: Kind) {
    STAGE_EVENTS
        .with_label_values(&["dispatch", kind.label()])
        .inc();
}

static EXECUTIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "whale_dispatch_executions_total",
        "StackStorm executions created, by cluster",
        &["cluster"],
    )
});

static CALL_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "whale_dispatch_call_errors_total",
        "Failed StackStorm calls, by cluster and kind (server, timeout, connection, auth, refused, decode)",
        &["cluster", "kind"],
    )
});

static BREAKER_OPEN: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "whale_dispatch_breaker_open",
        "1 while this worker's circuit breaker for the cluster is open",
        &["cluster"],
    )
});

static DRAINED: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "whale_dispatch_drained",
        "1 while the cluster is drained (whale clusters drain)",
        &["cluster"],
    )
});

pub fn execution_created(cluster: &str) {
    EXECUTIONS.with_label_values(&[cluster]).inc();
}

pub fn call_error(cluster: &str, kind: &str) {
    CALL_ERRORS.with_label_values(&[cluster, kind]).inc();
}

pub fn breaker_open(cluster: &str, open: bool) {
    BREAKER_OPEN.with_label_values(&[cluster]).set(open as i64);
}

pub fn drained(cluster: &str, drained: bool) {
    DRAINED.with_label_values(&[cluster]).set(drained as i64);
}

static DEAD_LETTERS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "whale_dead_letters_total",
        "Tasks dead-lettered (never to be retried on their own), by cluster",
        &["cluster"],
    )
});

static INGEST_TO_DISPATCH: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram_vec(
        "whale_ingest_to_dispatch_seconds",
        "Time from an event's receipt at ingest to the StackStorm POST that created its execution, by cluster",
        &["cluster"],
        vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
        ],
    )
});

/// Counts one task gone to the dead letter.
pub fn dead_letter(cluster: &str) {
    DEAD_LETTERS.with_label_values(&[cluster]).inc();
}

/// Observes one event's ingest → POST latency.
pub fn ingest_to_dispatch(cluster: &str, seconds: f64) {
    INGEST_TO_DISPATCH
        .with_label_values(&[cluster])
        .observe(seconds);
}

/// Creates the per-cluster series at zero (a configured cluster is in `/metrics` before its
/// first execution or failure, so rates and alerts see it). `with_label_values` creates a
/// series at 0 and leaves one that exists as it is.
pub fn known_cluster(cluster: &str) {
    EXECUTIONS.with_label_values(&[cluster]);
    DEAD_LETTERS.with_label_values(&[cluster]);
    INGEST_TO_DISPATCH.with_label_values(&[cluster]);
    BREAKER_OPEN.with_label_values(&[cluster]);
    DRAINED.with_label_values(&[cluster]);
    for kind in CALL_ERROR_KINDS {
        CALL_ERRORS.with_label_values(&[cluster, kind]);
    }
}

/// Every `kind` of `whale_dispatch_call_errors_total` (`clusters::verdict` labels).
const CALL_ERROR_KINDS: [&str; 6] = [
    "server",
    "timeout",
    "connection",
    "auth",
    "refused",
    "decode",
];

//! The feedback stage's own counters, beside the base telemetry every stage gets from the
//! worker loop.

use std::sync::LazyLock;

use prometheus::IntCounterVec;
use whale_kernel::metrics::counter_vec;

/// `whale_feedback_results_total{cluster, status}`: executions that reached a terminal status.
pub static RESULTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "whale_feedback_results_total",
        "Executions followed to a terminal status",
        &["cluster", "status"],
    )
});

/// `whale_feedback_looks_total{cluster, how}`: looks at a running execution, `stream` (free,
/// covered by the event stream) or `get` (a REST call).
pub static LOOKS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "whale_feedback_looks_total",
        "Looks at running executions, by how they were answered",
        &["cluster", "how"],
    )
});

/// `whale_feedback_stream_connects_total{cluster}`.
pub static STREAM_CONNECTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "whale_feedback_stream_connects_total",
        "Connections to StackStorm's event stream",
        &["cluster"],
    )
});

/// `whale_notifications_total{channel, status}`: sent, retry, failed, unknown.
pub static NOTIFICATIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "whale_notifications_total",
        "Notification posts by channel and outcome",
        &["channel", "status"],
    )
});

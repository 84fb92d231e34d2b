//! Validate's counters for alerting: accepted events per event type (the "no events from a
//! source" alert) and rejections per reason class (the "rejection spike" alert). Labels are
//! bounded: types without a schema count as `other`, reasons are a fixed set of classes.

use std::sync::LazyLock;

use prometheus::IntCounterVec;
use whale_kernel::metrics::counter_vec;

use crate::{Rejection, HOOK_TYPE_PREFIX};

/// `whale_events_accepted_total{event_type}`.
pub static ACCEPTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "whale_events_accepted_total",
        "Events validate accepted, by event type (types without a schema count as other)",
        &["event_type"],
    )
});

/// `whale_rejections_total{reason}`.
pub static REJECTIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "whale_rejections_total",
        "Events validate rejected, by reason: parse, envelope, unknown_type, schema, hook",
        &["reason"],
    )
});

/// Every reason class [`reason`] returns.
pub const REASONS: [&str; 5] = ["parse", "envelope", "unknown_type", "schema", "hook"];

/// Creates every reason's series at 0, so rates and alerts see them before a first rejection.
pub fn init() {
    for r in REASONS {
        REJECTIONS.with_label_values(&[r]);
    }
}

/// The reason class of a rejection: `hook` (a webhook payload that became nothing), `parse`
/// (not JSON, or over a size/depth limit before it parsed), `unknown_type` (no schema),
/// `schema` (the detail fails its schema), otherwise `envelope` (a bad id, type, time, ...).
pub fn reason(rej: &Rejection) -> &'static str {
    if rej
        .event_type
        .as_deref()
        .is_some_and(|t| t.starts_with(HOOK_TYPE_PREFIX))
        && rej.event.is_none()
    {
        "hook"
    } else if rej.event.is_none() {
        "parse"
    } else if rej.reasons.iter().any(|r| r.pointer.starts_with("/detail")) {
        "schema"
    } else if rej
        .reasons
        .iter()
        .any(|r| r.message.starts_with("no schema for event type"))
    {
        "unknown_type"
    } else {
        "envelope"
    }
}

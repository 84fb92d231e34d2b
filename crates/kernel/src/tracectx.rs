//! W3C trace context and the ingest time, carried from each input message to its outputs by the
//! worker loop, so a trace (and the end-to-end latency) follows an event through every stage
//! without a stage handling headers. At ingest (`whale.in.*`) a missing `traceparent` is
//! started: its trace id is derived from the event id, so a redelivered message gets the same
//! one, and `Whale-Received` is set to the time the ingest stream stored the message.
//!
//! Spans: each stage's handling of one message is a span (`<stage> handle`, with a `<stage>
//! publish` child) whose id is a digest of the trace id, the stage and the message's
//! `Nats-Msg-Id`, so the kernel (which writes the outputs' `traceparent`) and a stage's own
//! sub-spans ([`child`]: StackStorm POST, Redis decision, notification) name the same parent
//! without passing state, and a redelivery repeats the same ids. Spans are exported over OTLP
//! only when `OTEL_EXPORTER_OTLP_*` configures it (`telemetry::init`); otherwise nothing is built.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _,
};
use opentelemetry::{global, Context, KeyValue};
use sha2::{Digest, Sha256};

use crate::publish::Output;
use crate::subjects::{self, HDR_EVENT_ID, HDR_RECEIVED, HDR_TRACEPARENT};
use crate::worker::Delivery;

/// True while spans are exported (set once by `telemetry::init`).
static EXPORTING: AtomicBool = AtomicBool::new(false);

pub(crate) fn set_exporting(on: bool) {
    EXPORTING.store(on, Ordering::Relaxed);
}

/// The trace flags of the `traceparent`s whale makes: `01` (sampled) while whale exports
/// spans, `00` when it records nothing. Besides being what W3C trace context says, this keeps
/// nats-server fast: for every message whose `traceparent` is sampled, nats-server (2.11+)
/// lifts all its headers into a map to look for message tracing, which cost the pipeline
/// ~10% of nats-server's CPU when export was off (docs/operations.md, "Whole pipeline").
fn flags() -> &'static str {
    if EXPORTING.load(Ordering::Relaxed) {
        "01"
    } else {
        "00"
    }
}

/// True for a well-formed W3C `traceparent` (version 00, non-zero ids, lowercase hex).
/// Checked on every message a stage handles, so without allocating.
pub fn valid(tp: &str) -> bool {
    let b = tp.as_bytes();
    let hex = |s: &[u8]| {
        s.iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    };
    // 00-<32 hex trace id>-<16 hex span id>-<2 hex flags>
    b.len() == 55
        && &b[..3] == b"00-"
        && b[35] == b'-'
        && b[52] == b'-'
        && hex(&b[3..35])
        && b[3..35].iter().any(|b| *b != b'0')
        && hex(&b[36..52])
        && b[36..52].iter().any(|b| *b != b'0')
        && hex(&b[53..])
}

/// The trace id of a valid `traceparent`.
pub fn trace_id(tp: &str) -> Option<&str> {
    valid(tp).then(|| &tp[3..35])
}

/// The trace id of an event that arrived without trace context: a digest of its event id.
fn started_trace(event_id: &str) -> String {
    nonzero(hex::encode(&Sha256::digest(event_id.as_bytes())[..16]))
}

/// The `traceparent` of an event that arrived without one: trace id and span id are digests of
/// the event id; sampled while spans are exported.
pub fn started(event_id: &str) -> String {
    let span = nonzero(hex::encode(
        &Sha256::digest(format!("{event_id}/ingest"))[..8],
    ));
    format!("00-{}-{span}-{}", started_trace(event_id), flags())
}

/// All-zero ids are invalid; a digest that gives one is as good as impossible, but be exact.
fn nonzero(mut id: String) -> String {
    if id.bytes().all(|b| b == b'0') {
        let n = id.len();
        id.replace_range(n - 1..n, "1");
    }
    id
}

/// The input's `traceparent` when it is valid.
pub fn of(d: &Delivery) -> Option<&str> {
    d.header(HDR_TRACEPARENT).filter(|t| valid(t))
}

/// When the event was received at ingest (unix milliseconds), as carried on `d`.
pub fn received_ms(d: &Delivery) -> Option<i64> {
    d.header(HDR_RECEIVED).and_then(|v| v.parse().ok())
}

/// Where one stage's handling of one message sits in its trace.
#[derive(Debug, Clone, PartialEq)]
pub struct Position {
    pub trace: String,
    /// The upstream span (None: the trace starts here, at ingest).
    pub parent: Option<String>,
    /// This stage's handle span.
    pub span: String,
}

impl Position {
    /// The `traceparent` outputs carry: this stage's handle span as their parent.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-{}", self.trace, self.span, flags())
    }
}

/// The position of `stage` handling `d`: from the input's `traceparent`, or at ingest a trace
/// started from `event_id`; None when the message carries no trace context.
pub fn position(d: &Delivery, stage: &str, event_id: Option<&str>) -> Option<Position> {
    let (trace, parent) = match of(d) {
        Some(tp) => (tp[3..35].to_owned(), Some(tp[36..52].to_owned())),
        None if subjects::ingest_type(&d.subject).is_some() => {
            let id = event_id.filter(|s| !s.is_empty())?;
            (started_trace(id), None)
        }
        None => return None,
    };
    let seq;
    let msg = match d.header("Nats-Msg-Id") {
        Some(id) => id,
        None => {
            seq = d.stream_seq.to_string();
            &seq
        }
    };
    // The digest of "{trace}/{stage}/{msg}", fed in pieces (no string built per message).
    let digest = Sha256::new()
        .chain_update(&trace)
        .chain_update("/")
        .chain_update(stage)
        .chain_update("/")
        .chain_update(msg)
        .finalize();
    let span = nonzero(hex::encode(&digest[..8]));
    Some(Position {
        trace,
        parent,
        span,
    })
}

/// Adds to `out` the trace context and ingest time of its input `d` handled by `stage` (what
/// the output does not set itself): `traceparent` names `stage`'s handle span. At ingest
/// subjects they are started when the input has none.
pub fn carry(d: &Delivery, stage: &str, out: &mut Output) {
    let has = |out: &Output, name: &str| {
        out.headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case(name))
    };
    let at_ingest = subjects::ingest_type(&d.subject).is_some();
    if !has(out, HDR_TRACEPARENT) {
        let event_id = out
            .headers
            .iter()
            .find(|(k, _)| *k == HDR_EVENT_ID)
            .map(|(_, id)| id.clone());
        if let Some(p) = position(d, stage, event_id.as_deref()) {
            out.headers.push((HDR_TRACEPARENT, p.traceparent()));
        }
    }
    if !has(out, HDR_RECEIVED) {
        let received = match received_ms(d) {
            Some(ms) => Some(ms),
            None if at_ingest => Some((d.published.unix_timestamp_nanos() / 1_000_000) as i64),
            None => None,
        };
        if let Some(ms) = received {
            out.headers.push((HDR_RECEIVED, ms.to_string()));
        }
    }
}

/// An exported span, ended when dropped (a no-op value when export is off).
pub struct Span(Option<global::BoxedSpan>);

impl Span {
    /// A span that records nothing.
    pub fn none() -> Span {
        Span(None)
    }

    /// Sets an attribute.
    pub fn set(&mut self, key: &'static str, value: impl Into<opentelemetry::Value>) {
        if let Some(s) = &mut self.0 {
            s.set_attribute(KeyValue::new(key, value));
        }
    }

    /// Marks the span failed with `message`.
    pub fn error(&mut self, message: impl Into<String>) {
        if let Some(s) = &mut self.0 {
            s.set_status(opentelemetry::trace::Status::error(message.into()));
        }
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some(s) = &mut self.0 {
            s.end();
        }
    }
}

fn start(
    name: String,
    trace: &str,
    parent: Option<&str>,
    span_id: Option<&str>,
    kind: SpanKind,
    at: Option<SystemTime>,
    attributes: Vec<KeyValue>,
) -> Span {
    let (Ok(trace_id), Some(span_id)) = (
        TraceId::from_hex(trace),
        span_id.map(SpanId::from_hex).transpose().ok(),
    ) else {
        return Span::none();
    };
    let tracer = global::tracer("whale");
    let mut builder = tracer
        .span_builder(name)
        .with_kind(kind)
        .with_attributes(attributes);
    if let Some(id) = span_id {
        builder = builder.with_span_id(id);
    }
    if let Some(at) = at {
        builder = builder.with_start_time(at);
    }
    let cx = match parent.map(SpanId::from_hex) {
        Some(Ok(p)) => Context::new().with_remote_span_context(SpanContext::new(
            trace_id,
            p,
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        )),
        _ => {
            builder = builder.with_trace_id(trace_id);
            Context::new()
        }
    };
    Span(Some(builder.start_with_context(&tracer, &cx)))
}

fn attributes(d: &Delivery, stage: &str, event_id: &str) -> Vec<KeyValue> {
    vec![
        KeyValue::new("whale.stage", stage.to_owned()),
        KeyValue::new("whale.event_id", event_id.to_owned()),
        KeyValue::new("whale.attempt", d.attempt),
        KeyValue::new("messaging.system", "nats"),
        KeyValue::new("messaging.destination.name", d.subject.clone()),
    ]
}

/// `stage`'s handle span for `d`, started at `at` (the worker loop's, once the outcome is
/// known), and its publish child started now.
pub(crate) fn handle_spans(
    d: &Delivery,
    stage: &str,
    event_id: Option<&str>,
    at: SystemTime,
) -> (Span, Span) {
    if !EXPORTING.load(Ordering::Relaxed) {
        return (Span::none(), Span::none());
    }
    let Some(p) = position(d, stage, event_id) else {
        return (Span::none(), Span::none());
    };
    let id = event_id.unwrap_or(d.event_id());
    let handle = start(
        format!("{stage} handle"),
        &p.trace,
        p.parent.as_deref(),
        Some(&p.span),
        SpanKind::Consumer,
        Some(at),
        attributes(d, stage, id),
    );
    let publish = start(
        format!("{stage} publish"),
        &p.trace,
        Some(&p.span),
        None,
        SpanKind::Producer,
        None,
        vec![KeyValue::new("whale.stage", stage.to_owned())],
    );
    (handle, publish)
}

/// A span `name` under `stage`'s handle span for `d` (dispatch's StackStorm POST, throttle's
/// Redis decision, feedback's notification); ends when dropped.
pub fn child(d: &Delivery, stage: &str, name: &str) -> Span {
    if !EXPORTING.load(Ordering::Relaxed) {
        return Span::none();
    }
    let Some(p) = position(d, stage, None) else {
        return Span::none();
    };
    start(
        format!("{stage} {name}"),
        &p.trace,
        Some(&p.span),
        None,
        SpanKind::Client,
        None,
        attributes(d, stage, d.event_id()),
    )
}

/// HTTP ingest of events sent with the caller's `traceparent`: a span under the caller's, and
/// the `traceparent` the events carry on (the span's, or the caller's when export is off).
pub fn ingest(caller: &str, route: &str, events: usize) -> (Span, String) {
    if !EXPORTING.load(Ordering::Relaxed) || !valid(caller) {
        return (Span::none(), caller.to_owned());
    }
    let span = start(
        format!("ingest {route}"),
        &caller[3..35],
        Some(&caller[36..52]),
        None,
        SpanKind::Server,
        None,
        vec![KeyValue::new("whale.events", events as i64)],
    );
    let tp = match &span.0 {
        Some(s) => {
            let sc = s.span_context();
            format!("00-{}-{}-01", sc.trace_id(), sc.span_id())
        }
        None => caller.to_owned(),
    };
    (span, tp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(subject: &str, headers: &[(&str, &str)]) -> Delivery {
        Delivery::new(
            subject,
            bytes::Bytes::new(),
            headers,
            1,
            7,
            time::OffsetDateTime::UNIX_EPOCH,
        )
    }

    #[test]
    fn traceparents_are_checked_and_started_deterministically() {
        assert!(valid(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(!valid(
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01"
        ));
        assert!(!valid(
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"
        ));
        assert!(!valid(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(!valid("garbage"));
        let a = started("01JEVENT");
        assert!(valid(&a), "{a}");
        assert_eq!(a, started("01JEVENT"));
        assert_ne!(trace_id(&a), trace_id(&started("01JOTHER")));
        // Not sampled while whale exports no spans (no test here turns export on).
        assert!(a.ends_with("-00"), "{a}");
    }

    #[test]
    fn outputs_name_the_stage_span_as_parent_and_keep_the_trace() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let d = delivery(
            "whale.events.vm.disk_usage",
            &[("traceparent", tp), ("Nats-Msg-Id", "ev1")],
        );
        let p = position(&d, "match", None).unwrap();
        assert_eq!(p.trace, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(p.parent.as_deref(), Some("00f067aa0ba902b7"));
        assert_eq!(p, position(&d, "match", None).unwrap(), "deterministic");
        assert_ne!(p.span, position(&d, "index", None).unwrap().span);
        let mut out = Output::new("whale.pipe.matched".into(), "m1".into(), "{}");
        carry(&d, "match", &mut out);
        assert!(out.headers.contains(&(HDR_TRACEPARENT, p.traceparent())));
        assert!(
            p.traceparent().ends_with("-00"),
            "export is off: not sampled"
        );
        // At ingest without context: a trace started from the event id, no parent.
        let raw = delivery("whale.in.vm.disk_usage", &[]);
        let mut out = Output::new("whale.events.vm.disk_usage".into(), "e9".into(), "{}")
            .header(HDR_EVENT_ID, "e9");
        carry(&raw, "validate", &mut out);
        let got = out
            .headers
            .iter()
            .find(|(k, _)| *k == HDR_TRACEPARENT)
            .unwrap();
        assert_eq!(trace_id(&got.1), trace_id(&started("e9")));
        assert!(out
            .headers
            .iter()
            .any(|(k, v)| *k == HDR_RECEIVED && v == "0"));
        // Elsewhere without context: nothing invented.
        let plain = delivery("whale.pipe.decision", &[]);
        let mut out = Output::new("x".into(), "y".into(), "{}");
        carry(&plain, "approve", &mut out);
        assert!(out.headers.is_empty());
    }
}

//! W3C trace context and the ingest time, carried from each input message to its outputs by the
//! worker loop, so a trace (and the end-to-end latency) follows an event through every stage
//! without a stage handling headers. At ingest (`whale.in.*`) a missing `traceparent` is
//! started: its trace id is derived from the event id, so a redelivered message gets the same
//! one, and `Whale-Received` is set to the time the ingest stream stored the message.

use sha2::{Digest, Sha256};

use crate::publish::Output;
use crate::subjects::{self, HDR_EVENT_ID, HDR_RECEIVED, HDR_TRACEPARENT};
use crate::worker::Delivery;

/// True for a well-formed W3C `traceparent` (version 00, non-zero ids, lowercase hex).
pub fn valid(tp: &str) -> bool {
    let parts: Vec<&str> = tp.split('-').collect();
    let hex_len = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    parts.len() == 4
        && parts[0] == "00"
        && hex_len(parts[1], 32)
        && parts[1].bytes().any(|b| b != b'0')
        && hex_len(parts[2], 16)
        && parts[2].bytes().any(|b| b != b'0')
        && hex_len(parts[3], 2)
}

/// The trace id of a valid `traceparent`.
pub fn trace_id(tp: &str) -> Option<&str> {
    valid(tp).then(|| &tp[3..35])
}

/// A sampled `traceparent` for an event that arrived without one: trace id and span id are
/// digests of the event id.
pub fn started(event_id: &str) -> String {
    let h = Sha256::digest(event_id.as_bytes());
    let mut trace = hex::encode(&h[..16]);
    let mut span = hex::encode(&h[16..24]);
    // All-zero ids are invalid; a digest that gives one is as good as impossible, but be exact.
    if trace.bytes().all(|b| b == b'0') {
        trace.replace_range(31..32, "1");
    }
    if span.bytes().all(|b| b == b'0') {
        span.replace_range(15..16, "1");
    }
    format!("00-{trace}-{span}-01")
}

/// The input's `traceparent` when it is valid.
pub fn of(d: &Delivery) -> Option<&str> {
    d.header(HDR_TRACEPARENT).filter(|t| valid(t))
}

/// When the event was received at ingest (unix milliseconds), as carried on `d`.
pub fn received_ms(d: &Delivery) -> Option<i64> {
    d.header(HDR_RECEIVED).and_then(|v| v.parse().ok())
}

/// Adds to `out` the trace context and ingest time of its input `d` (what the output does not
/// set itself). At ingest subjects they are started when the input has none.
pub fn carry(d: &Delivery, out: &mut Output) {
    let has = |out: &Output, name: &str| out.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
    let at_ingest = subjects::ingest_type(&d.subject).is_some();
    if !has(out, HDR_TRACEPARENT) {
        let tp = match of(d) {
            Some(tp) => Some(tp.to_owned()),
            None if at_ingest => out
                .headers
                .iter()
                .find(|(k, _)| *k == HDR_EVENT_ID)
                .map(|(_, id)| started(id)),
            None => None,
        };
        if let Some(tp) = tp {
            out.headers.push((HDR_TRACEPARENT, tp));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_are_checked_and_started_deterministically() {
        assert!(valid("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        assert!(!valid("00-00000000000000000000000000000000-00f067aa0ba902b7-01"));
        assert!(!valid("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"));
        assert!(!valid("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        assert!(!valid("garbage"));
        let a = started("01JEVENT");
        assert!(valid(&a), "{a}");
        assert_eq!(a, started("01JEVENT"));
        assert_ne!(trace_id(&a), trace_id(&started("01JOTHER")));
    }
}

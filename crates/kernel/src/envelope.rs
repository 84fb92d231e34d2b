//! The event envelope (docs/contract.md "Event envelope"): parsing raw bytes safely, CloudEvents
//! 1.0 mapping, decoding a `detail` sent as a JSON string, assigning missing ids and times, and the
//! size/depth limits. HTTP ingest, `whale publish` and the validate stage all normalize through
//! this one module, so an event means the same thing whichever way it arrived.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// A normalized, accepted event: what `whale.events.<event_type>` carries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Envelope {
    pub id: String,
    pub event_type: String,
    pub source: String,
    /// RFC 3339, UTC.
    pub time: String,
    pub detail: Value,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Why an event was refused: a JSON pointer into the event (empty for the whole event) and a
/// message that says what is wrong and, where it helps, what to do.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Reason {
    pub pointer: String,
    pub message: String,
}

impl Reason {
    pub fn new(pointer: impl Into<String>, message: impl Into<String>) -> Self {
        Reason {
            pointer: pointer.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.pointer.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.pointer, self.message)
        }
    }
}

/// Limits applied to every event before anything else looks at it.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted event, in bytes (default 1 MiB).
    pub max_bytes: usize,
    /// Deepest accepted nesting of arrays/objects (default 64; serde_json stops at 128 anyway).
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 1024 * 1024,
            max_depth: 64,
        }
    }
}

/// What to fill in when the producer left something out.
#[derive(Debug, Clone)]
pub struct Defaults<'a> {
    /// The type named by the subject (`whale.in.<type>`) or the `--type` flag.
    pub event_type: Option<&'a str>,
    /// The id to assign when the event has none (a fresh ULID at ingest; a deterministic one in
    /// the validate stage so that a redelivered message gets the same id).
    pub id: String,
    /// The time to assign when the event has none.
    pub time: OffsetDateTime,
    /// The source to assign when the event has none.
    pub source: &'a str,
}

impl<'a> Defaults<'a> {
    /// Defaults for a producer-side ingest (HTTP, CLI): fresh ULID, now.
    pub fn fresh(event_type: Option<&'a str>, source: &'a str) -> Self {
        Defaults {
            event_type,
            id: ulid::Ulid::new().to_string(),
            time: OffsetDateTime::now_utc(),
            source,
        }
    }
}

/// A deterministic ULID for an event that arrived without id: the same stream message always
/// yields the same id, so redelivery cannot create a second accepted event.
pub fn deterministic_id(published: OffsetDateTime, stream_seq: u64) -> String {
    let ms = (published.unix_timestamp_nanos() / 1_000_000).max(0) as u64;
    ulid::Ulid::from_parts(ms, (0x57_4841_4c45_u128 << 64) | stream_seq as u128).to_string()
}

const TOP_LEVEL: [&str; 6] = ["id", "event_type", "source", "time", "detail", "labels"];
const MAX_ID_LEN: usize = 256;
const MAX_TYPE_LEN: usize = 128;

/// Event types are NATS-subject-safe tokens separated by dots: `vm.disk_usage`, `alertmanager.alert`.
pub fn is_valid_event_type(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= MAX_TYPE_LEN
        && t.split('.').all(|tok| {
            !tok.is_empty()
                && tok
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
}

/// Size, UTF-8, JSON syntax, depth and duplicate-key checks on raw bytes (the pointer names the
/// offending place). Never panics, whatever the input.
pub fn parse_bytes(raw: &[u8], limits: &Limits) -> Result<Value, Reason> {
    if raw.len() > limits.max_bytes {
        return Err(Reason::new(
            "",
            format!(
                "event is {} bytes; the limit is {} bytes (events.max_bytes / WHALE_MAX_EVENT_BYTES)",
                raw.len(),
                limits.max_bytes
            ),
        ));
    }
    if let Err(e) = std::str::from_utf8(raw) {
        return Err(Reason::new(
            "",
            format!(
                "event is not valid UTF-8 (invalid byte at offset {})",
                e.valid_up_to()
            ),
        ));
    }
    strict::parse(raw, limits.max_depth, "")
}

/// Nesting depth of a JSON value (a scalar is 0). Iterative, so it cannot overflow the stack.
pub fn depth(v: &Value) -> usize {
    let mut max = 0;
    let mut stack = vec![(v, 0usize)];
    while let Some((v, d)) = stack.pop() {
        match v {
            Value::Array(a) => {
                max = max.max(d + 1);
                stack.extend(a.iter().map(|x| (x, d + 1)));
            }
            Value::Object(o) => {
                max = max.max(d + 1);
                stack.extend(o.values().map(|x| (x, d + 1)));
            }
            _ => {}
        }
    }
    max
}

/// How [`normalize_with`] treats a `detail` that is a JSON string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StringDetail {
    /// A producer's event: a string detail is JSON text to decode (with the same size, depth and
    /// duplicate-key limits as the event itself).
    Decode,
    /// An envelope whale already normalized (its ingest publishes carry [`HDR_NORMALIZED`]): a
    /// string detail is the value itself (CloudEvents text data) and is never decoded again.
    Keep,
}

/// Header on the ingest publishes of HTTP and `whale publish`: the payload is an envelope whale
/// already normalized, so validate must not decode a string `detail` a second time.
pub const HDR_NORMALIZED: &str = "Whale-Normalized";

/// [`normalize_with`] with the default limits, decoding a string detail.
pub fn normalize(value: Value, defaults: &Defaults<'_>) -> Result<Envelope, Vec<Reason>> {
    normalize_with(value, defaults, &Limits::default(), StringDetail::Decode)
}

/// Turns a parsed JSON value (whale envelope or structured CloudEvent) into an [`Envelope`],
/// filling in what is missing from `defaults`. Returns every problem found, not just the first.
pub fn normalize_with(
    value: Value,
    defaults: &Defaults<'_>,
    limits: &Limits,
    string_detail: StringDetail,
) -> Result<Envelope, Vec<Reason>> {
    let Value::Object(mut obj) = value else {
        return Err(vec![Reason::new(
            "",
            format!(
                "an event must be a JSON object, got {}",
                crate::json_type(&value)
            ),
        )]);
    };
    if obj.contains_key("specversion") {
        obj = from_cloudevent(obj)?;
    }
    let mut reasons = Vec::new();
    for key in obj.keys() {
        if !TOP_LEVEL.contains(&key.as_str()) {
            reasons.push(Reason::new(
                format!("/{}", escape_pointer(key)),
                format!(
                    "unknown top-level field {key:?}; an event has {} — put payload fields under \"detail\"",
                    TOP_LEVEL.join(", ")
                ),
            ));
        }
    }
    let event_type = match obj.remove("event_type") {
        Some(Value::String(t)) => Some(t),
        None | Some(Value::Null) => defaults.event_type.map(str::to_owned),
        Some(other) => {
            reasons.push(Reason::new(
                "/event_type",
                format!("must be a string, got {}", crate::json_type(&other)),
            ));
            None
        }
    };
    let event_type = match event_type {
        Some(t) if is_valid_event_type(&t) => {
            if let Some(expected) = defaults.event_type {
                if expected != t {
                    reasons.push(Reason::new(
                        "/event_type",
                        format!("{t:?} does not match the type {expected:?} it was published as (subject whale.in.{expected})"),
                    ));
                }
            }
            t
        }
        Some(t) => {
            reasons.push(Reason::new(
                "/event_type",
                format!("{t:?} is not a valid event type: use dot-separated tokens of letters, digits, '_' and '-' (at most {MAX_TYPE_LEN} characters), e.g. vm.disk_usage"),
            ));
            String::new()
        }
        None if reasons.iter().any(|r| r.pointer == "/event_type") => String::new(),
        None => {
            reasons.push(Reason::new(
                "/event_type",
                "missing: every event needs an event_type (or publish it to whale.in.<event_type>)",
            ));
            String::new()
        }
    };
    let id = match obj.remove("id") {
        None | Some(Value::Null) => defaults.id.clone(),
        Some(Value::String(s)) if valid_id(&s) => s,
        Some(Value::String(_)) => {
            reasons.push(Reason::new(
                "/id",
                format!(
                    "must be 1 to {MAX_ID_LEN} characters without whitespace or control characters"
                ),
            ));
            String::new()
        }
        Some(other) => {
            reasons.push(Reason::new(
                "/id",
                format!("must be a string, got {}", crate::json_type(&other)),
            ));
            String::new()
        }
    };
    let source = match obj.remove("source") {
        None | Some(Value::Null) => defaults.source.to_owned(),
        Some(Value::String(s)) if !s.is_empty() => s,
        Some(other) => {
            reasons.push(Reason::new(
                "/source",
                format!(
                    "must be a non-empty string, got {}",
                    crate::json_type(&other)
                ),
            ));
            String::new()
        }
    };
    let time = match obj.remove("time") {
        None | Some(Value::Null) => format_time(defaults.time),
        Some(Value::String(s)) => match OffsetDateTime::parse(&s, &Rfc3339) {
            Ok(t) => format_time(t),
            Err(_) => {
                reasons.push(Reason::new(
                    "/time",
                    format!("{s:?} is not an RFC 3339 time (e.g. 2026-11-28T01:00:00Z)"),
                ));
                String::new()
            }
        },
        Some(other) => {
            reasons.push(Reason::new(
                "/time",
                format!(
                    "must be an RFC 3339 string, got {}",
                    crate::json_type(&other)
                ),
            ));
            String::new()
        }
    };
    let detail = match obj.remove("detail") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(Value::String(s)) if string_detail == StringDetail::Keep => Value::String(s),
        Some(Value::String(s)) => match decode_detail(&s, limits) {
            Ok(v) => v,
            Err(r) => {
                reasons.push(r);
                Value::Null
            }
        },
        Some(v) => v,
    };
    let labels = match obj.remove("labels") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(m)) => {
            let mut labels = BTreeMap::new();
            for (k, v) in m {
                match v {
                    Value::String(s) => {
                        labels.insert(k, s);
                    }
                    other => reasons.push(Reason::new(
                        format!("/labels/{}", escape_pointer(&k)),
                        format!(
                            "label values must be strings, got {}",
                            crate::json_type(&other)
                        ),
                    )),
                }
            }
            labels
        }
        Some(other) => {
            reasons.push(Reason::new(
                "/labels",
                format!(
                    "must be an object of strings, got {}",
                    crate::json_type(&other)
                ),
            ));
            BTreeMap::new()
        }
    };
    if !reasons.is_empty() {
        return Err(reasons);
    }
    Ok(Envelope {
        id,
        event_type,
        source,
        time,
        detail,
        labels,
    })
}

/// Decodes a `detail` sent as a JSON string with the limits of the event it sits in: at most
/// `max_bytes`, nested at most `max_depth - 1` levels (the detail is one level inside the event),
/// no duplicate keys. Pointers start with `/detail`.
fn decode_detail(s: &str, limits: &Limits) -> Result<Value, Reason> {
    if s.len() > limits.max_bytes {
        return Err(Reason::new(
            "/detail",
            format!(
                "the string detail is {} bytes; the limit is {} bytes (events.max_bytes)",
                s.len(),
                limits.max_bytes
            ),
        ));
    }
    strict::parse(s.as_bytes(), limits.max_depth.saturating_sub(1), "/detail").map_err(|r| {
        if r.message.starts_with("malformed JSON") {
            Reason::new(
                r.pointer,
                format!("is a string but not JSON ({}); send detail as a JSON object or a JSON-encoded string", r.message),
            )
        } else {
            Reason::new(r.pointer, format!("(decoded from the string detail) {}", r.message))
        }
    })
}

/// Maps a structured CloudEvent (1.0) onto whale's field names: `type` → `event_type`, `data` →
/// `detail`; `id`, `source`, `time` kept; string extension attributes become labels.
fn from_cloudevent(mut ce: Map<String, Value>) -> Result<Map<String, Value>, Vec<Reason>> {
    match ce.remove("specversion") {
        Some(Value::String(v)) if v == "1.0" => {}
        other => {
            return Err(vec![Reason::new(
                "/specversion",
                format!(
                    "only CloudEvents 1.0 is supported, got {}",
                    other.map(|v| v.to_string()).unwrap_or_default()
                ),
            )])
        }
    }
    let mut out = Map::new();
    let mut labels = Map::new();
    let content_type = ce.remove("datacontenttype");
    for (k, v) in ce {
        match k.as_str() {
            "type" => {
                out.insert("event_type".into(), v);
            }
            "data" => {
                // Non-JSON content types carry text. `normalize` decodes a string detail as
                // JSON, so pass text through as its JSON encoding: it decodes back to the text.
                let is_json = content_type
                    .as_ref()
                    .and_then(Value::as_str)
                    .is_none_or(|ct| ct.contains("json"));
                let v = match v {
                    Value::String(s) if !is_json => Value::String(s).to_string().into(),
                    v => v,
                };
                out.insert("detail".into(), v);
            }
            "data_base64" => {
                return Err(vec![Reason::new(
                    "/data_base64",
                    "binary CloudEvent data is not supported; send JSON data",
                )])
            }
            "id" | "source" | "time" => {
                out.insert(k, v);
            }
            "dataschema" | "subject" => {
                if let Value::String(s) = v {
                    labels.insert(format!("ce_{k}"), Value::String(s));
                }
            }
            _ => {
                labels.insert(k, v);
            }
        }
    }
    if !labels.is_empty() {
        out.insert("labels".into(), Value::Object(labels));
    }
    Ok(out)
}

/// Builds a structured CloudEvent value from binary-mode HTTP headers (`ce-*`) and the body.
pub fn cloudevent_from_binary<'h>(
    headers: impl Iterator<Item = (&'h str, &'h str)>,
    content_type: Option<&str>,
    body: &[u8],
    limits: &Limits,
) -> Result<Value, Reason> {
    let mut ce = Map::new();
    for (name, value) in headers {
        if let Some(attr) = name.to_ascii_lowercase().strip_prefix("ce-") {
            ce.insert(attr.to_owned(), Value::String(value.to_owned()));
        }
    }
    if let Some(ct) = content_type {
        ce.insert("datacontenttype".into(), Value::String(ct.to_owned()));
    }
    let data = match content_type {
        Some(ct) if !ct.contains("json") => {
            let text = std::str::from_utf8(body)
                .map_err(|_| Reason::new("/data", "binary-mode data is not valid UTF-8 text"))?;
            Value::String(text.to_owned())
        }
        _ if body.is_empty() => Value::Null,
        _ => parse_bytes(body, limits).map_err(|r| Reason::new("/data", r.message))?,
    };
    if !data.is_null() {
        ce.insert("data".into(), data);
    }
    Ok(Value::Object(ce))
}

/// Whether `s` is an acceptable event id (1 to 256 characters, no whitespace or control).
pub fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// RFC 3339 in UTC.
pub fn format_time(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

pub(crate) fn escape_pointer(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

mod strict;

#[cfg(test)]
mod tests;

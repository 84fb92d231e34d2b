//! The document both backends store, and how every message the index stage reads becomes one.
//! Accepted events, rejections and pipeline records (known kinds and ones added later) all map to
//! the same shape: a few known top-level fields taken from the record wherever they are (top
//! level, under `task`, under `event`, or from the `Whale-*` headers), the record's arbitrary
//! object under `detail`, and the full record kept as it arrived. A message that is not JSON
//! becomes an `unparsed` document with its raw text, never an error.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use whale_kernel::{subjects, Delivery};

use crate::time::format_ms;

/// Longest raw text kept for a message that is not JSON.
const RAW_KEEP: usize = 64 * 1024;
/// Longest free text indexed per document.
const TEXT_KEEP: usize = 64 * 1024;
/// Longest `index_error` kept.
const ERROR_KEEP: usize = 512;

/// One stored document.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Doc {
    /// Deterministic: `<kind>:<Nats-Msg-Id>` (or `<kind>:seq:<stream sequence>`), so a redelivered
    /// message overwrites its document instead of adding a second one.
    pub id: String,
    /// `event`, `rejected`, a pipeline record kind (`matched`, `task`, `throttled`, ...),
    /// `audit` (a record of the audit trail, `whale_kernel::audit`), or `unparsed`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<String>,
    /// The NATS subject the record came from.
    pub subject: String,
    /// The event's time (events), when it was received (rejections), or when the record was
    /// published (pipeline records). RFC 3339, milliseconds, UTC.
    #[serde(with = "rfc3339")]
    pub time: OffsetDateTime,
    /// When the message was stored on NATS: orders a trace, picks the daily index, ages out.
    #[serde(with = "rfc3339")]
    pub seen: OffsetDateTime,
    /// The event's `detail` (events, rejections) or the record itself (pipeline records, without
    /// the embedded event). Always an object; searchable as `detail.<path>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Value>,
    /// The record as it arrived (`{"raw": ...}` for a message that is not JSON).
    pub record: Value,
    /// Set when the backend refused the document as built and it was stored without `detail` and
    /// `labels`; says why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_error: Option<String>,
}

pub(crate) mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::format_description::well_known::Rfc3339;
    use time::OffsetDateTime;

    pub fn serialize<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::time::format_ms(*t))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
        let s = String::deserialize(d)?;
        OffsetDateTime::parse(&s, &Rfc3339).map_err(serde::de::Error::custom)
    }
}

impl Doc {
    /// Builds the document for one message. Never fails: what cannot be read is kept raw.
    pub fn from_delivery(d: &Delivery) -> Doc {
        let seen = crate::time::truncate_ms(d.published);
        let kind = kind_of(&d.subject);
        let value: Option<Value> = serde_json::from_slice(&d.payload)
            .ok()
            .filter(Value::is_object);
        let Some(record) = value else {
            return Doc::unparsed(d, seen);
        };
        let msg_id = d.header("Nats-Msg-Id").filter(|s| !s.is_empty());
        let id = match msg_id {
            Some(m) => format!("{kind}:{m}"),
            None => format!("{kind}:seq:{}", d.stream_seq),
        };
        let mut doc = Doc {
            id,
            kind: kind.to_owned(),
            event_id: None,
            event_type: None,
            source: None,
            rule: None,
            task_id: None,
            cluster: None,
            status: None,
            execution_id: None,
            subject: d.subject.clone(),
            time: seen,
            seen,
            detail: None,
            labels: None,
            record,
            index_error: None,
        };
        match kind {
            "event" => {
                doc.event_id = lookup(&doc.record, "id", &[]);
                doc.time = time_of(&doc.record, "time").unwrap_or(seen);
                doc.event_type = lookup(&doc.record, "event_type", &[]);
                doc.source = lookup(&doc.record, "source", &[]);
            }
            "rejected" => {
                doc.event_id = lookup(&doc.record, "id", &[]);
                doc.time = time_of(&doc.record, "received").unwrap_or(seen);
                doc.event_type = lookup(&doc.record, "event_type", &["event"]);
                doc.source = lookup(&doc.record, "source", &["event"]);
            }
            _ => {
                doc.event_id = lookup(&doc.record, "event_id", &["task", "event"]);
                doc.event_type = lookup(&doc.record, "event_type", &["task", "event"]);
                doc.source = lookup(&doc.record, "source", &["event"]);
            }
        }
        doc.derive_objects();
        for (field, name) in [
            (&mut doc.rule, "rule"),
            (&mut doc.task_id, "task_id"),
            (&mut doc.cluster, "cluster"),
            (&mut doc.status, "status"),
            (&mut doc.execution_id, "execution_id"),
        ] {
            *field = lookup(&doc.record, name, &["task", "execution", "result"]);
        }
        if kind == "audit" {
            // An audit record: when it was done, and its outcome as the status.
            doc.time = time_of(&doc.record, "at").unwrap_or(seen);
            doc.status = lookup(&doc.record, "outcome", &[]);
        }
        let header = |h: &str| d.header(h).filter(|s| !s.is_empty()).map(str::to_owned);
        doc.event_id = doc.event_id.or_else(|| header(subjects::HDR_EVENT_ID));
        doc.rule = doc.rule.or_else(|| header(subjects::HDR_RULE));
        doc.task_id = doc.task_id.or_else(|| header(subjects::HDR_TASK_ID));
        doc
    }

    /// [`Doc::from_delivery`] for the index stage: a message that is not JSON is counted
    /// (`whale_stage_events_total{stage="index",kind="unparsed"}`).
    pub(crate) fn of(d: &Delivery) -> Doc {
        let doc = Doc::from_delivery(d);
        if doc.kind == "unparsed" {
            crate::stage::count("unparsed", 1);
        }
        doc
    }

    fn unparsed(d: &Delivery, seen: OffsetDateTime) -> Doc {
        let keep = &d.payload[..d.payload.len().min(RAW_KEEP)];
        let header = |h: &str| d.header(h).filter(|s| !s.is_empty()).map(str::to_owned);
        Doc {
            id: format!("unparsed:{}:{}", kind_of(&d.subject), d.stream_seq),
            kind: "unparsed".into(),
            event_id: header(subjects::HDR_EVENT_ID),
            event_type: None,
            source: None,
            rule: header(subjects::HDR_RULE),
            task_id: header(subjects::HDR_TASK_ID),
            cluster: None,
            status: None,
            execution_id: None,
            subject: d.subject.clone(),
            time: seen,
            seen,
            detail: None,
            labels: None,
            record: serde_json::json!({
                "raw": String::from_utf8_lossy(keep),
                "raw_truncated": d.payload.len() > RAW_KEEP,
            }),
            index_error: None,
        }
    }

    /// Sets `detail` and `labels` from `record` as [`Doc::from_delivery`] does for this kind: the
    /// event's (events, rejections: under `event`), or the record without its embedded `event`
    /// (pipeline records; no labels). A store may keep `record` alone and derive them again.
    pub fn derive_objects(&mut self) {
        let r = &self.record;
        (self.detail, self.labels) = match self.kind.as_str() {
            "event" => (object(r.get("detail")), object(r.get("labels"))),
            "rejected" => {
                let ev = r.get("event");
                (
                    object(ev.and_then(|e| e.get("detail"))),
                    object(ev.and_then(|e| e.get("labels"))),
                )
            }
            _ => {
                let mut rest = r.as_object().cloned().unwrap_or_default();
                rest.remove("event");
                (Some(Value::Object(rest)), None)
            }
        };
    }

    /// Whether `detail` and `labels` are what [`Doc::derive_objects`] makes of `record` (checked
    /// without building them): then a store need not keep them beside `record`.
    pub fn objects_derived(&self) -> bool {
        fn nonempty(v: Option<&Value>) -> Option<&Value> {
            v.filter(|x| x.as_object().is_some_and(|m| !m.is_empty()))
        }
        let r = &self.record;
        match self.kind.as_str() {
            "event" => {
                self.detail.as_ref() == nonempty(r.get("detail"))
                    && self.labels.as_ref() == nonempty(r.get("labels"))
            }
            "rejected" => {
                let ev = r.get("event");
                self.detail.as_ref() == nonempty(ev.and_then(|e| e.get("detail")))
                    && self.labels.as_ref() == nonempty(ev.and_then(|e| e.get("labels")))
            }
            _ => match (&self.detail, r.as_object(), &self.labels) {
                (Some(Value::Object(d)), Some(r), None) => {
                    d.len() + usize::from(r.contains_key("event")) == r.len()
                        && d.iter().all(|(k, v)| k != "event" && r.get(k) == Some(v))
                }
                (Some(Value::Object(d)), None, None) => d.is_empty(),
                _ => false,
            },
        }
    }

    /// The same document without its searchable objects, for a backend that refused it.
    pub fn degraded(&self, why: &str) -> Doc {
        let mut why = why.to_owned();
        if why.len() > ERROR_KEEP {
            let mut cut = ERROR_KEEP;
            while !why.is_char_boundary(cut) {
                cut -= 1;
            }
            why.truncate(cut);
        }
        Doc {
            detail: None,
            labels: None,
            index_error: Some(why),
            ..self.clone()
        }
    }

    /// Every string of the record and the known fields, for free-text search (capped). The known
    /// fields come first; a string of the record equal to one of them is not repeated (most are
    /// taken from the record: the same words, indexed once).
    pub fn text(&self) -> String {
        let mut out = String::new();
        let known: Vec<&str> = [
            &self.event_id,
            &self.event_type,
            &self.source,
            &self.rule,
            &self.task_id,
            &self.cluster,
            &self.status,
            &self.execution_id,
        ]
        .into_iter()
        .flatten()
        .map(String::as_str)
        .collect();
        for s in &known {
            push_text(&mut out, s);
        }
        strings(&self.record, &mut |s| {
            if !known.contains(&s) {
                push_text(&mut out, s)
            }
        });
        if let Some(e) = &self.index_error {
            push_text(&mut out, e);
        }
        out
    }

    /// The numeric leaves of `detail` and `labels` as `num` keys ([`crate::query::num_key`]).
    pub fn nums(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (root, v) in [("detail", &self.detail), ("labels", &self.labels)] {
            if let Some(v) = v {
                let mut path = root.to_owned();
                numbers(v, &mut path, &mut out);
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// The value of a known keyword field by its query name.
    pub fn keyword(&self, name: &str) -> Option<&str> {
        match name {
            "kind" => Some(&self.kind),
            "id" => Some(&self.id),
            "subject" => Some(&self.subject),
            "event_id" => self.event_id.as_deref(),
            "event_type" => self.event_type.as_deref(),
            "source" => self.source.as_deref(),
            "rule" => self.rule.as_deref(),
            "task_id" => self.task_id.as_deref(),
            "cluster" => self.cluster.as_deref(),
            "status" => self.status.as_deref(),
            "execution_id" => self.execution_id.as_deref(),
            "index_error" => self.index_error.as_deref(),
            _ => None,
        }
    }

    /// `time` as written in documents.
    pub fn time_str(&self) -> String {
        format_ms(self.time)
    }
}

/// The document kind of a subject.
pub fn kind_of(subject: &str) -> &str {
    let after = |p: &str| subject.strip_prefix(p).and_then(|r| r.strip_prefix('.'));
    if after(subjects::EVENTS_PREFIX).is_some() {
        "event"
    } else if after(subjects::REJECTED_PREFIX).is_some() {
        "rejected"
    } else if after(subjects::AUDIT_PREFIX).is_some() {
        "audit"
    } else if let Some(rest) = after(subjects::PIPE_PREFIX) {
        let token = rest.split('.').next().unwrap_or("");
        if token.is_empty() {
            "record"
        } else {
            token
        }
    } else {
        "record"
    }
}

/// A string field at the top level of the record, else under the first of `under` that has it.
/// Numbers and booleans are taken as their text.
fn lookup(record: &Value, name: &str, under: &[&str]) -> Option<String> {
    let as_str = |v: &Value| match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    record.get(name).and_then(as_str).or_else(|| {
        under
            .iter()
            .find_map(|u| record.get(u).and_then(|o| o.get(name)).and_then(as_str))
    })
}

fn time_of(record: &Value, name: &str) -> Option<OffsetDateTime> {
    let s = record.get(name)?.as_str()?;
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| crate::time::truncate_ms(t.to_offset(time::UtcOffset::UTC)))
}

fn object(v: Option<&Value>) -> Option<Value> {
    match v {
        Some(Value::Object(m)) if !m.is_empty() => Some(Value::Object(m.clone())),
        _ => None,
    }
}

fn push_text(out: &mut String, s: &str) {
    if out.len() >= TEXT_KEEP {
        return;
    }
    let room = TEXT_KEEP - out.len();
    let mut cut = s.len().min(room);
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    if !out.is_empty() {
        out.push('\n');
    }
    out.push_str(&s[..cut]);
}

fn strings(v: &Value, f: &mut dyn FnMut(&str)) {
    match v {
        Value::String(s) => f(s),
        Value::Array(a) => a.iter().for_each(|x| strings(x, f)),
        Value::Object(m) => m.values().for_each(|x| strings(x, f)),
        _ => {}
    }
}

fn numbers(v: &Value, path: &mut String, out: &mut Vec<String>) {
    match v {
        Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|f| f.is_finite()) {
                out.push(crate::query::num_key(path, f));
            }
        }
        Value::Array(a) => a.iter().for_each(|x| numbers(x, path, out)),
        Value::Object(m) => {
            for (k, x) in m {
                let len = path.len();
                path.push('.');
                path.push_str(k);
                numbers(x, path, out);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

/// `detail` as the embedded index stores it: every leaf as its JSON text (numbers, booleans),
/// nulls dropped, so values match exactly as OpenSearch's `flat_object` (which keeps every leaf as
/// a keyword) does.
pub fn stringify_leaves(v: &Value) -> Value {
    match v {
        Value::Number(n) => Value::String(n.to_string()),
        Value::Bool(b) => Value::String(b.to_string()),
        Value::Array(a) => Value::Array(
            a.iter()
                .filter(|x| !x.is_null())
                .map(stringify_leaves)
                .collect(),
        ),
        Value::Object(m) => {
            let mut out = Map::with_capacity(m.len());
            for (k, x) in m {
                if !x.is_null() {
                    out.insert(k.clone(), stringify_leaves(x));
                }
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use serde_json::json;
    use time::macros::datetime;

    fn delivery(subject: &str, payload: &[u8], headers: &[(&str, &str)]) -> Delivery {
        Delivery::new(
            subject,
            Bytes::copy_from_slice(payload),
            headers,
            1,
            42,
            datetime!(2026-11-28 01:00:05.123456 UTC),
        )
    }

    #[test]
    fn accepted_event() {
        let ev = json!({"id": "e1", "event_type": "vm.disk_usage", "source": "prom", "time": "2026-11-28T01:00:00Z",
                        "detail": {"host": "web-12", "usage_pct": 93, "tags": ["a", {"n": 1.5}]}, "labels": {"biz": "trade"}});
        let d = delivery(
            "whale.events.vm.disk_usage",
            &serde_json::to_vec(&ev).unwrap(),
            &[("Nats-Msg-Id", "e1")],
        );
        let doc = Doc::from_delivery(&d);
        assert_eq!(doc.id, "event:e1");
        assert_eq!(doc.kind, "event");
        assert_eq!(doc.event_id.as_deref(), Some("e1"));
        assert_eq!(doc.event_type.as_deref(), Some("vm.disk_usage"));
        assert_eq!(doc.time, datetime!(2026-11-28 01:00:00 UTC));
        assert_eq!(format_ms(doc.seen), "2026-11-28T01:00:05.123Z");
        assert_eq!(doc.detail.as_ref().unwrap()["host"], "web-12");
        assert_eq!(doc.labels.as_ref().unwrap()["biz"], "trade");
        assert_eq!(
            doc.nums(),
            vec![
                crate::query::num_key("detail.tags.n", 1.5),
                crate::query::num_key("detail.usage_pct", 93.0)
            ]
        );
        assert!(doc.text().contains("web-12") && doc.text().contains("trade"));
        // The known fields taken from the record are indexed once, first.
        assert!(doc.text().starts_with("e1\nvm.disk_usage\nprom\n"));
        assert_eq!(doc.text().matches("vm.disk_usage").count(), 1);
        assert_eq!(doc.text().matches("prom").count(), 1);
        let back: Doc = serde_json::from_str(&serde_json::to_string(&doc).unwrap()).unwrap();
        assert_eq!(back, doc);
    }

    #[test]
    fn rejection_pipe_records_and_garbage() {
        let rej = json!({"id": "e2", "event_type": "vm.disk_usage", "received": "2026-11-28T01:00:01Z",
                         "reasons": [{"pointer": "/detail/usage_pct", "message": "\"high\" is not of type \"integer\""}],
                         "event": {"id": "e2", "event_type": "vm.disk_usage", "source": "x", "detail": {"usage_pct": "high"}}});
        let d = delivery(
            "whale.rejected.vm.disk_usage",
            &serde_json::to_vec(&rej).unwrap(),
            &[("Nats-Msg-Id", "rej:e2"), ("Whale-Event-Id", "e2")],
        );
        let doc = Doc::from_delivery(&d);
        assert_eq!(
            (doc.id.as_str(), doc.kind.as_str()),
            ("rejected:rej:e2", "rejected")
        );
        assert_eq!(doc.detail.as_ref().unwrap()["usage_pct"], "high");
        assert!(doc.text().contains("not of type"));

        let thr = json!({"task": {"task_id": "t-1", "event_id": "e3", "rule": "disk", "cluster": "east", "event_type": "vm.disk_usage",
                                  "parameters": {"host": "web-1"}}, "retry_after_ms": 500, "reason": "over limit"});
        let d = delivery(
            "whale.pipe.throttled",
            &serde_json::to_vec(&thr).unwrap(),
            &[("Nats-Msg-Id", "thr:t-1")],
        );
        let doc = Doc::from_delivery(&d);
        assert_eq!(doc.kind, "throttled");
        assert_eq!(doc.event_id.as_deref(), Some("e3"));
        assert_eq!(doc.task_id.as_deref(), Some("t-1"));
        assert_eq!(doc.cluster.as_deref(), Some("east"));
        assert_eq!(doc.rule.as_deref(), Some("disk"));
        assert_eq!(doc.detail.as_ref().unwrap()["reason"], "over limit");

        let adm = delivery(
            "whale.pipe.admitted.east",
            b"{\"task_id\":\"t-9\"}",
            &[("Whale-Event-Id", "e9")],
        );
        let doc = Doc::from_delivery(&adm);
        assert_eq!(
            (doc.kind.as_str(), doc.id.as_str()),
            ("admitted", "admitted:seq:42")
        );
        assert_eq!(doc.event_id.as_deref(), Some("e9"));

        let bad = delivery(
            "whale.pipe.result",
            b"\xff\xfe not json",
            &[("Whale-Event-Id", "e4")],
        );
        let doc = Doc::from_delivery(&bad);
        assert_eq!(doc.kind, "unparsed");
        assert_eq!(doc.event_id.as_deref(), Some("e4"));
        assert!(doc.record["raw"].as_str().unwrap().contains("not json"));
    }

    #[test]
    fn stringified_leaves_match_flat_object() {
        let v = json!({"a": 1, "b": {"c": true, "d": null, "e": [2.5, "x"]}});
        assert_eq!(
            stringify_leaves(&v),
            json!({"a": "1", "b": {"c": "true", "e": ["2.5", "x"]}})
        );
    }
}

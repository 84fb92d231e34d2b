//! The embedded index's schema and how a [`Doc`] becomes a tantivy document. Known top-level fields
//! are explicit keyword fields; `detail` and `labels` are JSON fields (any keys, no schema, leaves
//! stored as their text like OpenSearch's `flat_object`); `num` holds the numeric leaves encoded for
//! numeric ranges; `text` is the free text; `doc` stores the document ([`stored`]): `record`
//! once, without the copies of it that `detail` and `labels` are.

use tantivy::schema::{
    DateOptions, DateTimePrecision, Field, IndexRecordOption, JsonObjectOptions, Schema,
    TextFieldIndexing, TextOptions, INDEXED, STORED, STRING,
};
use tantivy::{DateTime, TantivyDocument};

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use tantivy::schema::OwnedValue;
use time::OffsetDateTime;

use crate::doc::{rfc3339, Doc};
use crate::query::KEYWORDS;

/// Field handles, looked up once.
#[derive(Clone)]
pub struct Fields {
    /// Keyword fields in [`KEYWORDS`] order.
    pub keywords: Vec<Field>,
    pub time: Field,
    pub seen: Field,
    pub detail: Field,
    pub labels: Field,
    pub num: Field,
    pub text: Field,
    pub doc: Field,
}

impl Fields {
    pub fn schema() -> Schema {
        let mut b = Schema::builder();
        for k in KEYWORDS {
            b.add_text_field(k, STRING);
        }
        let date = DateOptions::from(INDEXED)
            .set_fast()
            .set_precision(DateTimePrecision::Milliseconds);
        b.add_date_field("time", date.clone());
        b.add_date_field("seen", date);
        let json = JsonObjectOptions::default()
            .set_indexing_options(
                TextFieldIndexing::default()
                    .set_tokenizer("raw")
                    .set_index_option(IndexRecordOption::Basic),
            )
            .set_expand_dots_enabled();
        b.add_json_field("detail", json.clone());
        b.add_json_field("labels", json);
        b.add_text_field("num", STRING);
        // Free text with the CJK-aware tokenizer (an index made before it keeps `default`).
        b.add_text_field(
            "text",
            TextOptions::default().set_indexing_options(
                TextFieldIndexing::default()
                    .set_tokenizer(super::tokenizer::NAME)
                    .set_index_option(IndexRecordOption::WithFreqsAndPositions),
            ),
        );
        b.add_text_field("doc", TextOptions::default() | STORED);
        b.build()
    }

    pub fn new(schema: Schema) -> tantivy::Result<Fields> {
        let get = |n: &str| schema.get_field(n);
        Ok(Fields {
            keywords: KEYWORDS.iter().map(|k| get(k)).collect::<Result<_, _>>()?,
            time: get("time")?,
            seen: get("seen")?,
            detail: get("detail")?,
            labels: get("labels")?,
            num: get("num")?,
            text: get("text")?,
            doc: get("doc")?,
        })
    }

    pub fn keyword(&self, name: &str) -> Option<Field> {
        KEYWORDS
            .iter()
            .position(|k| *k == name)
            .map(|i| self.keywords[i])
    }

    /// The tantivy document for `doc`.
    pub fn to_tantivy(&self, doc: &Doc) -> TantivyDocument {
        self.tantivy_doc(doc, stored(doc))
    }

    /// The tantivy document for `doc` with `stored` in the `doc` field.
    pub(crate) fn tantivy_doc(&self, doc: &Doc, stored: String) -> TantivyDocument {
        let text = doc.text();
        // Room for everything added below (tantivy's default is 1 KiB: most documents outgrew it).
        let mut t = TantivyDocument::with_capacity(text.len() + stored.len() + 1024);
        for (i, k) in KEYWORDS.iter().enumerate() {
            if let Some(v) = doc.keyword(k) {
                t.add_text(self.keywords[i], v);
            }
        }
        t.add_date(self.time, date(doc.time));
        t.add_date(self.seen, date(doc.seen));
        for (field, v) in [(self.detail, &doc.detail), (self.labels, &doc.labels)] {
            if let Some(v @ Json::Object(_)) = v {
                t.add_field_value(field, &flat(v));
            }
        }
        for n in doc.nums() {
            t.add_text(self.num, n);
        }
        t.add_text(self.text, text);
        t.add_text(self.doc, stored);
        t
    }
}

/// `detail` or `labels` as the JSON field indexes it, built in one pass: every leaf as its JSON
/// text (numbers, booleans; like OpenSearch's `flat_object`), nulls dropped
/// ([`crate::doc::stringify_leaves`]), and a string that reads as an RFC 3339 time as a date, as
/// tantivy's own conversion from JSON does (so an index keeps the terms it always had).
fn flat(v: &Json) -> OwnedValue {
    match v {
        Json::Null => OwnedValue::Null,
        Json::Bool(b) => OwnedValue::Str(b.to_string()),
        Json::Number(n) => OwnedValue::Str(n.to_string()),
        Json::String(s) => match s.as_bytes().first() {
            Some(b) if b.is_ascii_digit() => {
                OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                    .ok()
                    .and_then(|t| DateTime::try_from_utc(t.to_offset(time::UtcOffset::UTC)))
                    .map_or_else(|| OwnedValue::Str(s.clone()), OwnedValue::Date)
            }
            _ => OwnedValue::Str(s.clone()),
        },
        Json::Array(a) => OwnedValue::Array(a.iter().filter(|x| !x.is_null()).map(flat).collect()),
        Json::Object(m) => OwnedValue::Object(
            m.iter()
                .filter(|(_, x)| !x.is_null())
                .map(|(k, x)| (k.clone(), flat(x)))
                .collect(),
        ),
    }
}

/// What the `doc` field stores: the document's fields with `record` once. `detail` and `labels`
/// are copies of parts of `record` ([`Doc::derive_objects`]) and are left out when they are
/// exactly that (`"derived": true`), else kept as they are. An index written before this keeps
/// whole documents (`serde_json::to_string(&doc)`, no `derived`); [`read_stored`] reads both.
/// Written with borrowed strings (`S = &str`, `J = &Json`), read owned (`String`, `Json`).
#[derive(Serialize, Deserialize)]
struct Stored<S, J> {
    id: S,
    kind: S,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    event_id: Option<S>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    event_type: Option<S>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    source: Option<S>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rule: Option<S>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    task_id: Option<S>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cluster: Option<S>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<S>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    execution_id: Option<S>,
    subject: S,
    #[serde(with = "rfc3339")]
    time: OffsetDateTime,
    #[serde(with = "rfc3339")]
    seen: OffsetDateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    detail: Option<J>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    labels: Option<J>,
    record: J,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    index_error: Option<S>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    derived: bool,
}

/// The text the `doc` field stores for `doc` ([`Stored`]).
pub fn stored(doc: &Doc) -> String {
    let derived = doc.objects_derived();
    let s: Stored<&str, &Json> = Stored {
        id: &doc.id,
        kind: &doc.kind,
        event_id: doc.event_id.as_deref(),
        event_type: doc.event_type.as_deref(),
        source: doc.source.as_deref(),
        rule: doc.rule.as_deref(),
        task_id: doc.task_id.as_deref(),
        cluster: doc.cluster.as_deref(),
        status: doc.status.as_deref(),
        execution_id: doc.execution_id.as_deref(),
        subject: &doc.subject,
        time: doc.time,
        seen: doc.seen,
        detail: doc.detail.as_ref().filter(|_| !derived),
        labels: doc.labels.as_ref().filter(|_| !derived),
        record: &doc.record,
        index_error: doc.index_error.as_deref(),
        derived,
    };
    serde_json::to_string(&s).unwrap_or_default()
}

/// The document stored as `text` ([`stored`], or a whole document as an earlier whale stored it).
pub fn read_stored(text: &str) -> Result<Doc, serde_json::Error> {
    let s: Stored<String, Json> = serde_json::from_str(text)?;
    let mut doc = Doc {
        id: s.id,
        kind: s.kind,
        event_id: s.event_id,
        event_type: s.event_type,
        source: s.source,
        rule: s.rule,
        task_id: s.task_id,
        cluster: s.cluster,
        status: s.status,
        execution_id: s.execution_id,
        subject: s.subject,
        time: s.time,
        seen: s.seen,
        detail: s.detail,
        labels: s.labels,
        record: s.record,
        index_error: s.index_error,
    };
    if s.derived {
        doc.derive_objects();
    }
    Ok(doc)
}

/// A tantivy date at millisecond precision. Tantivy keeps nanoseconds in an i64 (years 1677 to
/// 2262): times outside are clamped to its ends rather than overflowing (found by fuzzing).
pub fn date(t: time::OffsetDateTime) -> DateTime {
    const MAX_MS: i64 = i64::MAX / 1_000_000;
    DateTime::from_timestamp_millis(crate::time::epoch_ms(t).clamp(-MAX_MS, MAX_MS))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::macros::datetime;
    use whale_kernel::Delivery;

    fn doc(subject: &str, payload: &[u8]) -> Doc {
        Doc::from_delivery(&Delivery::new(
            subject,
            payload.to_vec(),
            &[("Nats-Msg-Id", "m-1"), ("Whale-Event-Id", "e-1")],
            1,
            7,
            datetime!(2026-11-28 01:00:05.123 UTC),
        ))
    }

    /// Every kind of document reads back exactly as it was stored, in the form stored now and in
    /// the form an earlier whale stored (the whole document); `detail` and `labels` are left out
    /// exactly when they are the copies of `record` that the reader derives again.
    #[test]
    fn stored_documents_read_back_unchanged_in_both_forms() {
        let ev = json!({"id": "e-1", "event_type": "vm.disk_usage", "source": "prom",
            "time": "2026-11-28T01:00:00Z", "detail": {"host": "web-1", "pct": 93.5, "n": null,
            "at": "2026-11-28T00:59:00Z", "tags": ["a", {"x": true}]}, "labels": {"biz": "trade"}});
        let no_labels =
            json!({"id": "e-2", "event_type": "app.log", "source": "s", "detail": {"m": "x"}});
        let empty = json!({"id": "e-3", "event_type": "app.log", "source": "s", "detail": {}});
        let rejected = json!({"id": "e-4", "received": "2026-11-28T01:00:01Z", "reasons": ["bad"],
            "event": {"id": "e-4", "event_type": "vm.disk_usage", "detail": {"pct": "high"}, "labels": {"a": "b"}}});
        let task = json!({"task": {"task_id": "t-1", "rule": "r", "cluster": "east"},
            "event": {"id": "e-1", "detail": {"host": "web-1"}}, "retry_after_ms": 5});
        let audit = json!({"at": "2026-11-28T01:00:02Z", "who": "alice", "outcome": "ok"});
        let bytes = |v: &Json| serde_json::to_vec(v).unwrap();
        let mut changed = doc("whale.events.vm.disk_usage", &bytes(&ev));
        changed.detail = Some(json!({"host": "other"}));
        let mut no_detail = doc("whale.pipe.matched", &bytes(&task));
        no_detail.detail = None;
        let cases = [
            (doc("whale.events.vm.disk_usage", &bytes(&ev)), true),
            (doc("whale.events.app.log", &bytes(&no_labels)), true),
            (doc("whale.events.app.log", &bytes(&empty)), true),
            (doc("whale.rejected.vm.disk_usage", &bytes(&rejected)), true),
            (doc("whale.pipe.throttled", &bytes(&task)), true),
            (doc("whale.audit.rules", &bytes(&audit)), true),
            (doc("whale.pipe.result", b"\xff not json"), false),
            (
                doc("whale.events.vm.disk_usage", &bytes(&ev)).degraded("too many fields"),
                false,
            ),
            (doc("whale.pipe.unparsed", &bytes(&task)), true),
            (changed, false),
            (no_detail, false),
        ];
        for (d, derived) in cases {
            assert_eq!(d.objects_derived(), derived, "{}", d.id);
            let text = stored(&d);
            assert_eq!(text.contains("\"derived\":true"), derived, "{text}");
            assert_eq!(read_stored(&text).unwrap(), d, "{text}");
            let before = serde_json::to_string(&d).unwrap();
            assert_eq!(read_stored(&before).unwrap(), d, "{before}");
            if derived && d.detail.is_some() {
                assert!(text.len() < before.len(), "{text}");
            }
        }
    }

    /// The one-pass conversion indexes the same values as stringifying the leaves and handing the
    /// result to tantivy's own conversion (dates included).
    #[test]
    fn flat_is_tantivys_conversion_of_the_stringified_leaves() {
        let v = json!({"a": 1, "b": {"c": true, "d": null, "e": [2.5, "x", null, -3]},
            "t": "2026-11-28T01:00:00Z", "u": "2026-13-99", "w": "12 monkeys", "z": "", "big": 18446744073709551615u64});
        let Json::Object(m) = crate::doc::stringify_leaves(&v) else {
            panic!()
        };
        assert_eq!(flat(&v), OwnedValue::from(m));
    }
}

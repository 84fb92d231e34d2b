//! The embedded index's schema and how a [`Doc`] becomes a tantivy document. Known top-level fields
//! are explicit keyword fields; `detail` and `labels` are JSON fields (any keys, no schema, leaves
//! stored as their text like OpenSearch's `flat_object`); `num` holds the numeric leaves encoded for
//! numeric ranges; `text` is the free text; `doc` stores the whole document.

use tantivy::schema::{
    DateOptions, DateTimePrecision, Field, IndexRecordOption, JsonObjectOptions, Schema,
    TextFieldIndexing, TextOptions, INDEXED, STORED, STRING,
};
use tantivy::{DateTime, TantivyDocument};

use crate::doc::{stringify_leaves, Doc};
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
        let mut t = TantivyDocument::new();
        for (i, k) in KEYWORDS.iter().enumerate() {
            if let Some(v) = doc.keyword(k) {
                t.add_text(self.keywords[i], v);
            }
        }
        t.add_date(self.time, date(doc.time));
        t.add_date(self.seen, date(doc.seen));
        for (field, v) in [(self.detail, &doc.detail), (self.labels, &doc.labels)] {
            if let Some(serde_json::Value::Object(m)) = v.as_ref().map(stringify_leaves) {
                t.add_field_value(field, &tantivy::schema::OwnedValue::from(m));
            }
        }
        for n in doc.nums() {
            t.add_text(self.num, n);
        }
        t.add_text(self.text, doc.text());
        t.add_text(self.doc, serde_json::to_string(doc).unwrap_or_default());
        t
    }
}

/// A tantivy date at millisecond precision. Tantivy keeps nanoseconds in an i64 (years 1677 to
/// 2262): times outside are clamped to its ends rather than overflowing (found by fuzzing).
pub fn date(t: time::OffsetDateTime) -> DateTime {
    const MAX_MS: i64 = i64::MAX / 1_000_000;
    DateTime::from_timestamp_millis(crate::time::epoch_ms(t).clamp(-MAX_MS, MAX_MS))
}

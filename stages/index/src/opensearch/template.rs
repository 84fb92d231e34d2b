//! What whale installs in OpenSearch before it writes: a component template with the mapping and
//! analysis (known fields explicit, `detail`/`labels` as `flat_object`, root `dynamic: strict`),
//! composed by an index template for the daily indices `<prefix>-YYYY.MM.DD`. Being composable
//! templates (`_component_template` + `_index_template`), operators can add their own component
//! (replicas, ILM-free tiering, ...) without editing whale's.

use serde_json::{json, Value};

use crate::query::KEYWORDS;

/// The analyzer of `text`: split on anything that is not a letter or a digit (the char filter
/// turns every other run into a space, so the standard tokenizer only splits between words and
/// between scripts), overlapping bigrams for Chinese/Japanese/Korean runs (`cjk_bigram`, from the
/// analysis-common module), lowercase, drop tokens over 40 characters — what the embedded index's
/// `whale_text` tokenizer does (`embedded/tokenizer.rs`), so free text matches the same words on
/// both backends. Templates apply when an index is created: a daily index made before this
/// analyzer keeps the old one until retention deletes it (docs/search.md "Upgrading").
pub fn component(prefix: &str) -> Value {
    let mut props = serde_json::Map::new();
    for k in KEYWORDS {
        props.insert(k.into(), json!({"type": "keyword"}));
    }
    props.insert(
        "index_error".into(),
        json!({"type": "keyword", "ignore_above": 1024}),
    );
    let date = json!({"type": "date", "format": "strict_date_optional_time||epoch_millis"});
    props.insert("time".into(), date.clone());
    props.insert("seen".into(), date);
    props.insert("detail".into(), json!({"type": "flat_object"}));
    props.insert("labels".into(), json!({"type": "flat_object"}));
    props.insert("num".into(), json!({"type": "keyword"}));
    props.insert(
        "text".into(),
        json!({"type": "text", "analyzer": "whale_text"}),
    );
    // The record as it arrived: kept in _source, never indexed (searchable through text/detail).
    props.insert("record".into(), json!({"type": "object", "enabled": false}));
    json!({
        "template": {
            "settings": {
                "index": {"number_of_shards": 1, "refresh_interval": "1s"},
                "analysis": {
                    "char_filter": {"whale_separators": {"type": "pattern_replace", "pattern": "[^\\p{L}\\p{N}]+", "replacement": " "}},
                    "filter": {
                        "whale_long": {"type": "length", "max": 40},
                        "whale_cjk": {"type": "cjk_bigram", "ignored_scripts": [], "output_unigrams": false}
                    },
                    "analyzer": {"whale_text": {
                        "type": "custom",
                        "char_filter": ["whale_separators"],
                        "tokenizer": "standard",
                        "filter": ["whale_cjk", "lowercase", "whale_long"]
                    }}
                }
            },
            "mappings": {
                "dynamic": "strict",
                // Derived fields are indexed, not kept: the document reads back as whale wrote it.
                "_source": {"excludes": ["text", "num"]},
                "properties": Value::Object(props)
            }
        },
        "_meta": {"managed_by": "whale", "description": format!("mappings of {prefix}-* (whale index stage)")}
    })
}

/// The index template composing [`component`] for `<prefix>-*`.
pub fn index_template(prefix: &str) -> Value {
    json!({
        "index_patterns": [format!("{prefix}-*")],
        "composed_of": [component_name(prefix)],
        "priority": 200,
        "_meta": {"managed_by": "whale"}
    })
}

pub fn component_name(prefix: &str) -> String {
    format!("{prefix}-mappings")
}

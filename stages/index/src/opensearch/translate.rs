//! The query AST ([`crate::query`]) as OpenSearch query DSL, clause by clause, mirroring the
//! embedded translation: keyword and `flat_object` values exact, numbers through `num`, free text
//! through the `text` field analyzed like tantivy's default tokenizer.

use std::ops::Bound;

use serde_json::{json, Map, Value};

use crate::backend::Error;
use crate::query::{
    clauses, depth, num_key, num_key_bounds, parse_number, Field, Pred, Query, MAX_TREE_DEPTH,
};

/// OpenSearch's default `indices.query.bool.max_clause_count`: the most leaf queries (and words
/// of phrases) it takes in one search; beyond it, it fails the search.
pub const OPENSEARCH_MAX_CLAUSES: usize = 1024;

/// The query DSL of `q`. Refuses (before any recursion) a tree deeper than [`MAX_TREE_DEPTH`]
/// and a query with more clauses than OpenSearch accepts, so that such a query is a clear 400
/// here rather than a failed search there.
pub fn query(q: &Query) -> Result<Value, Error> {
    let d = depth(q);
    if d > MAX_TREE_DEPTH {
        return Err(Error::Invalid(format!(
            "the query tree is {d} levels deep, more than the {MAX_TREE_DEPTH} a search takes: flatten it"
        )));
    }
    let n = clauses(q);
    if n > OPENSEARCH_MAX_CLAUSES {
        return Err(Error::Invalid(format!(
            "the query has {n} clauses, more than OpenSearch takes ({OPENSEARCH_MAX_CLAUSES}, \
             indices.query.bool.max_clause_count): use fewer terms"
        )));
    }
    node(q)
}

fn node(q: &Query) -> Result<Value, Error> {
    Ok(match q {
        Query::All => json!({"match_all": {}}),
        Query::And(items) => {
            let (mut filter, mut must_not) = (Vec::new(), Vec::new());
            for item in items {
                match item {
                    Query::Not(x) => must_not.push(node(x)?),
                    x => filter.push(node(x)?),
                }
            }
            if filter.is_empty() {
                filter.push(json!({"match_all": {}}));
            }
            json!({"bool": {"filter": filter, "must_not": must_not}})
        }
        Query::Or(items) => json!({"bool": {
            "should": items.iter().map(node).collect::<Result<Vec<_>, _>>()?,
            "minimum_should_match": 1
        }}),
        Query::Not(x) => json!({"bool": {"filter": [{"match_all": {}}], "must_not": [node(x)?]}}),
        Query::Clause(field, pred) => clause(field, pred)?,
    })
}

fn clause(field: &Field, pred: &Pred) -> Result<Value, Error> {
    Ok(match field {
        Field::Text => match pred {
            Pred::Term(v) | Pred::Phrase(v) => json!({"match_phrase": {"text": {"query": v}}}),
            Pred::Wildcard(w) => json!({"wildcard": {"text": {"value": w.to_lowercase()}}}),
            Pred::Exists => json!({"match_all": {}}),
            _ => return Err(invalid(field, pred)),
        },
        Field::Keyword(k) => match pred {
            Pred::Term(v) | Pred::Phrase(v) => json!({"term": {*k: v}}),
            Pred::Wildcard(w) => json!({"wildcard": {*k: {"value": w}}}),
            Pred::Exists => json!({"exists": {"field": k}}),
            Pred::StrRange(lo, hi) => range(k, lo, hi, |s| json!(s)),
            _ => return Err(invalid(field, pred)),
        },
        Field::Date(name) => match pred {
            Pred::TimeRange(lo, hi) => range(name, lo, hi, |t| json!(crate::time::epoch_ms(*t))),
            Pred::Exists => json!({"match_all": {}}),
            _ => return Err(invalid(field, pred)),
        },
        Field::Flat { root, path } if path.is_empty() => match pred {
            Pred::Term(v) | Pred::Phrase(v) => json!({"term": {*root: v}}),
            Pred::Wildcard(w) => json!({"wildcard": {*root: {"value": w}}}),
            Pred::Exists => json!({"exists": {"field": root}}),
            _ => return Err(invalid(field, pred)),
        },
        Field::Flat { root, path } => {
            let full = format!("{root}.{path}");
            match pred {
                Pred::Term(v) | Pred::Phrase(v) => {
                    let exact = json!({"term": {&full: v}});
                    match parse_number(v) {
                        Some(n) => {
                            json!({"bool": {"should": [exact, {"term": {"num": num_key(&full, n)}}], "minimum_should_match": 1}})
                        }
                        None => exact,
                    }
                }
                Pred::Wildcard(w) => json!({"wildcard": {&full: {"value": w}}}),
                // `exists` on a flat_object path finds values and objects below it, but not a leaf
                // inside an array of objects; a wildcard finds leaves: together, both kinds.
                Pred::Exists => json!({"bool": {"should": [
                    {"exists": {"field": &full}},
                    {"wildcard": {&full: {"value": "*"}}}
                ], "minimum_should_match": 1}}),
                Pred::StrRange(lo, hi) => {
                    // flat_object ranges need both ends: the smallest and a past-the-end string.
                    let lo = match lo {
                        Bound::Unbounded => Bound::Included(String::new()),
                        b => b.clone(),
                    };
                    let hi = match hi {
                        Bound::Unbounded => Bound::Included("\u{10ffff}".repeat(4)),
                        b => b.clone(),
                    };
                    range(&full, &lo, &hi, |s| json!(s))
                }
                Pred::NumRange(lo, hi) => {
                    let (min, end) = num_key_bounds(&full);
                    let lo = match lo {
                        Bound::Unbounded => Bound::Included(min),
                        b => map(b, |n| num_key(&full, *n)),
                    };
                    let hi = match hi {
                        Bound::Unbounded => Bound::Excluded(end),
                        b => map(b, |n| num_key(&full, *n)),
                    };
                    range("num", &lo, &hi, |s| json!(s))
                }
                Pred::TimeRange(..) => return Err(invalid(field, pred)),
            }
        }
    })
}

fn range<T>(field: &str, lo: &Bound<T>, hi: &Bound<T>, v: impl Fn(&T) -> Value) -> Value {
    let mut r = Map::new();
    match lo {
        Bound::Included(x) => {
            r.insert("gte".into(), v(x));
        }
        Bound::Excluded(x) => {
            r.insert("gt".into(), v(x));
        }
        Bound::Unbounded => {}
    }
    match hi {
        Bound::Included(x) => {
            r.insert("lte".into(), v(x));
        }
        Bound::Excluded(x) => {
            r.insert("lt".into(), v(x));
        }
        Bound::Unbounded => {}
    }
    if r.is_empty() {
        return json!({"exists": {"field": field}});
    }
    json!({"range": {field: Value::Object(r)}})
}

fn map<T, U>(b: &Bound<T>, f: impl Fn(&T) -> U) -> Bound<U> {
    match b {
        Bound::Included(v) => Bound::Included(f(v)),
        Bound::Excluded(v) => Bound::Excluded(f(v)),
        Bound::Unbounded => Bound::Unbounded,
    }
}

fn invalid(field: &Field, pred: &Pred) -> Error {
    Error::Invalid(format!("{} does not support {pred:?}", field.name()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_use_num_and_strings_use_flat_object() {
        let q = crate::query::parse("detail.usage_pct:[90 TO *] AND detail.host:web-12").unwrap();
        let v = query(&q).unwrap();
        let s = v.to_string();
        assert!(s.contains("\"range\":{\"num\""), "{s}");
        assert!(s.contains("\"term\":{\"detail.host\":\"web-12\"}"), "{s}");
    }
}

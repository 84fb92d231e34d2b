//! The query AST ([`crate::query`]) as tantivy queries, clause by clause, mirroring what the
//! OpenSearch translation does so that both backends return the same documents.

use std::ops::Bound;

use tantivy::query::{
    AllQuery, BooleanQuery, EmptyQuery, InvertedIndexRangeQuery, Occur, PhraseQuery,
    Query as TQuery, RangeQuery, RegexQuery, TermQuery,
};
use tantivy::schema::{Field as TField, IndexRecordOption, Type};
use tantivy::{Index, Term};

use super::schema::{date, Fields};
use crate::backend::Error;
use crate::query::{
    depth, num_key, num_key_bounds, parse_number, Field, Pred, Query, MAX_TREE_DEPTH,
};

type Q = Box<dyn TQuery>;

pub struct Translator<'a> {
    pub fields: &'a Fields,
    pub index: &'a Index,
}

impl Translator<'_> {
    /// The tantivy query of `q`; a tree deeper than [`MAX_TREE_DEPTH`] is refused before any
    /// recursion (the parser never builds one; this guards queries built in code).
    pub fn query(&self, q: &Query) -> Result<Q, Error> {
        let d = depth(q);
        if d > MAX_TREE_DEPTH {
            return Err(Error::Invalid(format!(
                "the query tree is {d} levels deep, more than the {MAX_TREE_DEPTH} a search takes: flatten it"
            )));
        }
        self.node(q)
    }

    fn node(&self, q: &Query) -> Result<Q, Error> {
        Ok(match q {
            Query::All => Box::new(AllQuery),
            Query::And(items) => {
                let mut clauses = Vec::with_capacity(items.len() + 1);
                let mut positive = false;
                for item in items {
                    match item {
                        Query::Not(x) => clauses.push((Occur::MustNot, self.node(x)?)),
                        x => {
                            positive = true;
                            clauses.push((Occur::Must, self.node(x)?));
                        }
                    }
                }
                if !positive {
                    clauses.push((Occur::Must, Box::new(AllQuery)));
                }
                Box::new(BooleanQuery::new(clauses))
            }
            Query::Or(items) => Box::new(BooleanQuery::new(
                items
                    .iter()
                    .map(|x| Ok((Occur::Should, self.node(x)?)))
                    .collect::<Result<_, Error>>()?,
            )),
            Query::Not(x) => Box::new(BooleanQuery::new(vec![
                (Occur::Must, Box::new(AllQuery) as Q),
                (Occur::MustNot, self.node(x)?),
            ])),
            Query::Clause(field, pred) => self.clause(field, pred)?,
        })
    }

    fn clause(&self, field: &Field, pred: &Pred) -> Result<Q, Error> {
        let f = self.fields;
        match field {
            Field::Text => self.text(pred),
            Field::Keyword(k) => {
                let tf = f
                    .keyword(k)
                    .ok_or_else(|| Error::Invalid(format!("no field {k}")))?;
                Ok(match pred {
                    Pred::Term(v) | Pred::Phrase(v) => term(Term::from_field_text(tf, v)),
                    Pred::Wildcard(w) => regex(&wildcard_regex(w), tf)?,
                    Pred::Exists => regex("(?s).*", tf)?,
                    Pred::StrRange(lo, hi) => {
                        let t = |s: &String| Term::from_field_text(tf, s);
                        let (lo, hi) = (map(lo, t), map(hi, t));
                        if lo == Bound::Unbounded && hi == Bound::Unbounded {
                            regex("(?s).*", tf)?
                        } else {
                            Box::new(InvertedIndexRangeQuery::new(lo, hi))
                        }
                    }
                    Pred::NumRange(..) | Pred::TimeRange(..) => return Err(invalid(field, pred)),
                })
            }
            Field::Date(name) => {
                let tf = if *name == "seen" { f.seen } else { f.time };
                Ok(match pred {
                    Pred::TimeRange(lo, hi) => {
                        let t = |v: &time::OffsetDateTime| Term::from_field_date(tf, date(*v));
                        let (lo, hi) = (map(lo, t), map(hi, t));
                        if lo == Bound::Unbounded && hi == Bound::Unbounded {
                            Box::new(AllQuery)
                        } else {
                            Box::new(RangeQuery::new(lo, hi))
                        }
                    }
                    Pred::Exists => Box::new(AllQuery),
                    _ => return Err(invalid(field, pred)),
                })
            }
            Field::Flat { root, path } => {
                let tf = if *root == "labels" {
                    f.labels
                } else {
                    f.detail
                };
                if path.is_empty() {
                    return Ok(match pred {
                        Pred::Term(v) | Pred::Phrase(v) => {
                            regex(&format!("(?s)[^\\x00]*\\x00s{}", escape(v)), tf)?
                        }
                        Pred::Wildcard(w) => {
                            regex(&format!("(?s)[^\\x00]*\\x00s{}", wildcard_regex(w)), tf)?
                        }
                        Pred::Exists => regex("(?s).*", tf)?,
                        _ => return Err(invalid(field, pred)),
                    });
                }
                let full = format!("{root}.{path}");
                let json = |v: &str| {
                    let mut t = Term::from_field_json_path(tf, path, true);
                    t.append_type_and_str(v);
                    t
                };
                let path_re = path
                    .split('.')
                    .map(escape)
                    .collect::<Vec<_>>()
                    .join("\\x01");
                Ok(match pred {
                    Pred::Term(v) | Pred::Phrase(v) => {
                        let exact = term(json(v));
                        match parse_number(v) {
                            Some(n) => Box::new(BooleanQuery::new(vec![
                                (Occur::Should, exact),
                                (
                                    Occur::Should,
                                    term(Term::from_field_text(f.num, &num_key(&full, n))),
                                ),
                            ])),
                            None => exact,
                        }
                    }
                    Pred::Wildcard(w) => {
                        regex(&format!("(?s){path_re}\\x00s{}", wildcard_regex(w)), tf)?
                    }
                    Pred::Exists => regex(&format!("(?s){path_re}[\\x00\\x01].*"), tf)?,
                    Pred::StrRange(lo, hi) => {
                        let lo = match lo {
                            Bound::Unbounded => Bound::Included(json("")),
                            b => map(b, |s| json(s)),
                        };
                        let hi = match hi {
                            Bound::Unbounded => {
                                // Past every string of this path: the type code after 's'.
                                let mut t = Term::from_field_json_path(tf, path, true);
                                t.append_bytes(&[Type::Str.to_code() + 1]);
                                Bound::Excluded(t)
                            }
                            b => map(b, |s| json(s)),
                        };
                        Box::new(InvertedIndexRangeQuery::new(lo, hi))
                    }
                    Pred::NumRange(lo, hi) => {
                        let (min, end) = num_key_bounds(&full);
                        let k = |n: &f64| Term::from_field_text(f.num, &num_key(&full, *n));
                        let lo = match lo {
                            Bound::Unbounded => Bound::Included(Term::from_field_text(f.num, &min)),
                            b => map(b, k),
                        };
                        let hi = match hi {
                            Bound::Unbounded => Bound::Excluded(Term::from_field_text(f.num, &end)),
                            b => map(b, k),
                        };
                        Box::new(InvertedIndexRangeQuery::new(lo, hi))
                    }
                    Pred::TimeRange(..) => return Err(invalid(field, pred)),
                })
            }
        }
    }

    fn text(&self, pred: &Pred) -> Result<Q, Error> {
        let tf = self.fields.text;
        match pred {
            Pred::Term(v) | Pred::Phrase(v) => {
                let mut analyzer = self
                    .index
                    .tokenizer_for_field(tf)
                    .map_err(|e| Error::Other(e.to_string()))?;
                let mut tokens = Vec::new();
                let mut stream = analyzer.token_stream(v);
                while let Some(t) = stream.next() {
                    tokens.push((t.position, Term::from_field_text(tf, &t.text)));
                }
                Ok(match tokens.len() {
                    0 => Box::new(EmptyQuery),
                    1 => term(tokens.remove(0).1),
                    // not tantivy's own scorer under a NOT: see `phrase`
                    _ => Box::new(super::phrase::Phrase(PhraseQuery::new_with_offset(tokens))),
                })
            }
            Pred::Wildcard(w) => regex(&wildcard_regex(&w.to_lowercase()), tf),
            Pred::Exists => Ok(Box::new(AllQuery)),
            other => Err(invalid(&Field::Text, other)),
        }
    }
}

fn term(t: Term) -> Q {
    Box::new(TermQuery::new(t, IndexRecordOption::Basic))
}

fn regex(pattern: &str, field: TField) -> Result<Q, Error> {
    RegexQuery::from_pattern(pattern, field)
        .map(|q| Box::new(q) as Q)
        .map_err(|e| Error::Invalid(format!("cannot search for that pattern: {e}")))
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

/// Escapes every regex metacharacter.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `*` → any run, `?` → any one character, the rest literal.
fn wildcard_regex(w: &str) -> String {
    let mut out = String::from("(?s)");
    for c in w.chars() {
        match c {
            '*' => out.push_str(".*"),
            '?' => out.push('.'),
            c => out.push_str(&escape(&c.to_string())),
        }
    }
    out
}

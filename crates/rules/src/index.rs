//! The equality index of the rules of one event type, so that matching an event does not
//! evaluate the rules whose equality test it fails: with 10,000 rules on one type that differ by
//! `app == appK`, an event meets the one rule of its app instead of all 10,000.
//!
//! Each rule picks at most one *anchor*: a top-level `when` step (one that must pass for the
//! rule to match) of the form `{path: <event path>, eq: c}` or `{path: <event path>, in: [c,
//! ...]}` where every constant is a string, a boolean or `null`, or `{path: <event path>,
//! starts_with: p}` with `p` not empty. For those values the evaluator's equality is plain
//! equality of the same JSON type (numbers, arrays and objects are never anchors: `1` equals
//! `1.0` and the index would have to reproduce that), and `starts_with` passes exactly for the
//! strings whose first `p.len()` bytes are `p`, so "the event's value is one of the anchor's
//! constants (or has its prefix)" is exactly "the anchor step passes": a rule missing from the
//! candidates of an event cannot match it. Prefixes are looked up once per distinct prefix
//! length of the path. Of its possible anchors a rule takes an equality before a prefix (a
//! prefix such as `web-` may be shared by every value), then the one shared with the fewest
//! other rules of the type (`app == appK` rather than `env == prod`). Rules with `for_each` are never indexed (whether their expression yields
//! too many elements is reported per event), nor are rules without an anchor: they are
//! evaluated for every event, as before.
//!
//! The candidates of an event are evaluated in load order, by the same code as the linear
//! path, so the matches and their order are unchanged. Only the counters differ: type
//! mismatches and jq errors of rules the index skipped are not counted.

use crate::eval::Cx;
use crate::ops::Op;
use crate::rule::CompiledRule;
use crate::step::Step;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use whale_expr::path::{Lookup, SimplePath};

/// Types with fewer listening rules than this are evaluated linearly (the index would cost
/// about as much as it saves).
pub(crate) const INDEX_MIN_RULES: usize = 8;

/// A constant an anchor compares with, as the index stores it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Key<'a> {
    Null,
    Bool(bool),
    Str(&'a str),
    /// `starts_with`: any string with this (non-empty) prefix.
    Prefix(&'a str),
}

fn key(v: &Value) -> Option<Key<'_>> {
    match v {
        Value::Null => Some(Key::Null),
        Value::Bool(b) => Some(Key::Bool(*b)),
        Value::String(s) => Some(Key::Str(s)),
        _ => None,
    }
}

/// The rules anchored on one path, by the constant their anchor accepts (positions in the
/// type's rule list, ascending).
struct PathIndex {
    id: u32,
    path: SimplePath,
    strs: HashMap<Box<str>, Vec<u32>>,
    null: Vec<u32>,
    bools: [Vec<u32>; 2],
    prefixes: HashMap<Box<str>, Vec<u32>>,
    /// The distinct lengths (bytes) of `prefixes`, ascending.
    prefix_lens: Vec<usize>,
}

impl PathIndex {
    fn bucket(&mut self, k: Key<'_>) -> &mut Vec<u32> {
        match k {
            Key::Null => &mut self.null,
            Key::Bool(b) => &mut self.bools[b as usize],
            Key::Str(s) => self.strs.entry(s.into()).or_default(),
            Key::Prefix(p) => {
                if let Err(at) = self.prefix_lens.binary_search(&p.len()) {
                    self.prefix_lens.insert(at, p.len());
                }
                self.prefixes.entry(p.into()).or_default()
            }
        }
    }

    /// Append the rules whose anchor accepts `v`; how many lists were appended.
    fn get(&self, v: &Value, out: &mut Vec<u32>) -> usize {
        let exact: &[u32] = match v {
            Value::Null => &self.null,
            Value::Bool(b) => &self.bools[*b as usize],
            Value::String(s) => self.strs.get(s.as_str()).map_or(&[], Vec::as_slice),
            _ => &[],
        };
        out.extend_from_slice(exact);
        let mut lists = usize::from(!exact.is_empty());
        if let Value::String(s) = v {
            for len in self.prefix_lens.iter().take_while(|l| **l <= s.len()) {
                // a cut inside a character is no prefix of a string
                let hits = s.get(..*len).and_then(|p| self.prefixes.get(p));
                if let Some(hits) = hits {
                    out.extend_from_slice(hits);
                    lists += 1;
                }
            }
        }
        lists
    }
}

/// The index of the rules of one event type.
pub(crate) struct Index {
    paths: Vec<PathIndex>,
    /// Rules without an anchor, evaluated for every event.
    linear: Vec<u32>,
}

/// The possible anchors of a rule: (path id, path, constants).
fn anchors(rule: &CompiledRule) -> Vec<(u32, &SimplePath, Vec<Key<'_>>)> {
    if rule.for_each.is_some() {
        return Vec::new();
    }
    rule.steps
        .iter()
        .filter_map(|s| match s {
            Step::Cmp {
                path,
                item: false,
                id,
                op,
                ..
            } => {
                let keys: Option<Vec<Key<'_>>> = match op {
                    Op::Eq(v) => key(v).map(|k| vec![k]),
                    Op::In(vs) if !vs.is_empty() => vs.iter().map(key).collect(),
                    Op::StartsWith(p) if !p.is_empty() => Some(vec![Key::Prefix(p)]),
                    _ => None,
                };
                keys.map(|keys| {
                    // `in: [a, b, a]`: each constant once, so a rule is a candidate once
                    let mut unique = Vec::with_capacity(keys.len());
                    for k in keys {
                        if !unique.contains(&k) {
                            unique.push(k);
                        }
                    }
                    (*id, path, unique)
                })
            }
            _ => None,
        })
        .collect()
}

impl Index {
    /// Index `rules` (one type's listening rules, in load order); `None` when it would not pay.
    pub(crate) fn build(rules: &[Arc<CompiledRule>]) -> Option<Index> {
        if rules.len() < INDEX_MIN_RULES {
            return None;
        }
        let all: Vec<_> = rules.iter().map(|r| anchors(r)).collect();
        // how many rules accept each (path, constant): a rule anchors where it shares least
        let mut freq: HashMap<(u32, Key<'_>), usize> = HashMap::new();
        for (id, _, keys) in all.iter().flatten() {
            for k in keys {
                *freq.entry((*id, *k)).or_default() += 1;
            }
        }
        let mut index = Index {
            paths: Vec::new(),
            linear: Vec::new(),
        };
        for (pos, cands) in all.iter().enumerate() {
            // an equality before a prefix (`web-` may be the prefix of every host), then the
            // constants shared with the fewest rules
            let best = cands.iter().min_by_key(|(id, _, keys)| {
                let prefix = keys.iter().any(|k| matches!(k, Key::Prefix(_)));
                let shared: usize = keys.iter().map(|k| freq[&(*id, *k)]).sum();
                (prefix, shared)
            });
            let Some((id, path, keys)) = best else {
                index.linear.push(pos as u32);
                continue;
            };
            let at = match index.paths.iter().position(|p| p.id == *id) {
                Some(at) => at,
                None => {
                    index.paths.push(PathIndex {
                        id: *id,
                        path: (*path).clone(),
                        strs: HashMap::new(),
                        null: Vec::new(),
                        bools: [Vec::new(), Vec::new()],
                        prefixes: HashMap::new(),
                        prefix_lens: Vec::new(),
                    });
                    index.paths.len() - 1
                }
            };
            for k in keys {
                index.paths[at].bucket(*k).push(pos as u32);
            }
        }
        if index.paths.is_empty() {
            return None;
        }
        Some(index)
    }

    /// The positions of the rules that may match the event of `cx`, ascending (load order):
    /// the unindexed ones and those whose anchor accepts the event's value.
    pub(crate) fn candidates(&self, cx: &mut Cx<'_>, out: &mut Vec<u32>) {
        out.clear();
        out.extend_from_slice(&self.linear);
        let mut sources = usize::from(!self.linear.is_empty());
        for p in &self.paths {
            if let Lookup::Found(v) = cx.lookup(p.id, &p.path) {
                sources += p.get(v, out);
            }
        }
        if sources > 1 {
            out.sort_unstable();
        }
    }
}

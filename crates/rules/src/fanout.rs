//! Rule fan-out: a rule with `for_each: <jq>` runs once per output of the expression, the
//! output bound as `$item` in its steps and templates. This module computes the elements of one
//! event (bounded), evaluates the rule on each, and gives every element a stable key so that the
//! task made from it has a deterministic id.

use crate::rule::{CompiledRule, Evaluation};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::fmt;
use whale_expr::{EvalError, Input};

/// The default most elements one event may fan out to (`rules.max_for_each_items`).
pub const DEFAULT_MAX_ITEMS: usize = 100;

/// One element of a fan-out and what the rule's `when` made of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Element {
    /// 0-based position among the outputs of `for_each`.
    pub index: usize,
    /// The element (`$item`).
    pub item: Value,
    /// The `when` steps evaluated with `$item` bound.
    pub evaluation: Evaluation,
}

/// `for_each` could not give the elements of an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForEachError {
    /// The rule's name.
    pub rule: String,
    /// How many elements the expression yielded, when the error is that there are too many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<usize>,
    /// What went wrong and what to do.
    pub reason: String,
}

impl ForEachError {
    /// The event has more elements than allowed: the rule must not fire at all (no partial,
    /// silent truncation) and the refusal must be recorded.
    pub fn is_over_limit(&self) -> bool {
        self.count.is_some()
    }
}

impl fmt::Display for ForEachError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rule {:?}: for_each: {}", self.rule, self.reason)
    }
}

impl std::error::Error for ForEachError {}

impl CompiledRule {
    /// The `for_each` expression as written, if the rule fans out.
    pub fn for_each(&self) -> Option<&str> {
        self.for_each_src.as_deref()
    }

    /// The elements of `input` (every output of `for_each`), at most `max`. More than `max`
    /// is an error naming the count; a jq error is an error too (the match stage counts it
    /// like a failing `jq:` step). A rule without `for_each` has no elements (`Ok(None)`).
    pub fn items(&self, input: &Input, max: usize) -> Result<Option<Vec<Value>>, ForEachError> {
        let Some(expr) = &self.for_each else {
            return Ok(None);
        };
        let err = |count, reason| ForEachError {
            rule: self.name.clone(),
            count,
            reason,
        };
        let src = self.for_each_src.as_deref().unwrap_or_default();
        match expr.run(input) {
            Ok(items) if items.len() > max => Err(err(
                Some(items.len()),
                format!(
                    "`{src}` yields {} elements, over the limit of {max} per event \
                     (rules.max_for_each_items): the rule did not fire for any of them; \
                     narrow the expression (e.g. select(...)) or raise the limit",
                    items.len()
                ),
            )),
            Ok(items) => Ok(Some(items)),
            Err(EvalError::TooManyOutputs(n)) => Err(err(
                Some(n + 1),
                format!(
                    "`{src}` yields more than {n} elements, over the limit of {max} per event \
                     (rules.max_for_each_items): the rule did not fire for any of them"
                ),
            )),
            Err(e) => Err(err(None, format!("`{src}` failed: {e}"))),
        }
    }

    /// Every element of `input` with the rule evaluated on it (`$item` bound). `Ok(None)` for
    /// a rule without `for_each`.
    pub fn elements(
        &self,
        input: &Input,
        max: usize,
    ) -> Result<Option<Vec<Element>>, ForEachError> {
        let Some(items) = self.items(input, max)? else {
            return Ok(None);
        };
        Ok(Some(
            items
                .into_iter()
                .enumerate()
                .map(|(index, item)| {
                    let evaluation = self.evaluate(&bind(input, &item));
                    Element {
                        index,
                        item,
                        evaluation,
                    }
                })
                .collect(),
        ))
    }
}

/// `input` with `item` bound as `$item`.
pub fn bind(input: &Input, item: &Value) -> Input {
    Input::new(input.value().clone()).with_item(item.clone())
}

/// A stable key of an element: 32 hex digits of SHA-256 over its canonical JSON (object keys
/// sorted), so the same element gives the same key whatever the key order or its position in
/// the event. Task ids of fanned-out tasks are derived from it.
pub fn item_key(item: &Value) -> String {
    let mut h = Sha256::new();
    canonical(item, &mut h);
    hex::encode(h.finalize())[..32].to_owned()
}

fn canonical(v: &Value, h: &mut Sha256) {
    // iterative: items come out of jq within the depth limit, but keep the stack flat anyway
    enum Part<'a> {
        Value(&'a Value),
        Key(&'a str),
        Text(&'static str),
    }
    let mut stack = vec![Part::Value(v)];
    while let Some(p) = stack.pop() {
        match p {
            Part::Text(t) => h.update(t.as_bytes()),
            Part::Key(k) => h.update(Value::from(k).to_string().as_bytes()),
            Part::Value(Value::Array(a)) => {
                h.update(b"[");
                stack.push(Part::Text("]"));
                for (i, x) in a.iter().enumerate().rev() {
                    stack.push(Part::Value(x));
                    if i > 0 {
                        stack.push(Part::Text(","));
                    }
                }
            }
            Part::Value(Value::Object(o)) => {
                h.update(b"{");
                stack.push(Part::Text("}"));
                let mut keys: Vec<(&String, &Value)> = o.iter().collect();
                keys.sort_by(|a, b| a.0.cmp(b.0));
                for (i, (k, x)) in keys.into_iter().enumerate().rev() {
                    stack.push(Part::Value(x));
                    stack.push(Part::Text(":"));
                    stack.push(Part::Key(k));
                    if i > 0 {
                        stack.push(Part::Text(","));
                    }
                }
            }
            Part::Value(other) => h.update(other.to_string().as_bytes()),
        }
    }
}

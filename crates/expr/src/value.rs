//! Conversions between `serde_json::Value` (what the rest of whale uses) and jaq's `Val`, and
//! [`Input`], an event converted once and shared by every filter that looks at it.
//!
//! The conversion back from `Val` is where outputs are bounded: jaq values share subtrees, so a
//! small program can build a value whose JSON text is astronomically large; the conversion
//! counts bytes and depth as it goes and stops at the limit.

use crate::{EvalError, Limits};
use jaq_json::{Map, Num, Rc, Val};
use serde_json::{Number, Value};
use std::sync::OnceLock;

/// An event (or any JSON value) ready to be given to filters: the JSON value, and its jaq form,
/// built on first use and then shared by every filter that runs on it.
///
/// An input may carry an item: the element a rule's `for_each` produced, bound as `$item` in
/// every filter run on it (`null` when there is none).
pub struct Input {
    value: Value,
    val: OnceLock<Result<Val, EvalError>>,
    depth_ok: OnceLock<bool>,
    item: Option<(Value, Val)>,
}

impl Input {
    /// Wrap a value. Cheap: the jaq form is built the first time a filter needs it.
    pub fn new(value: Value) -> Self {
        Input {
            value,
            val: OnceLock::new(),
            depth_ok: OnceLock::new(),
            item: None,
        }
    }

    /// The same input with `item` bound as `$item` (a `for_each` element). The item comes out
    /// of a filter run, so it is already within the output depth and size limits.
    pub fn with_item(mut self, item: Value) -> Self {
        let val = to_val(&item);
        self.item = Some((item, val));
        self
    }

    /// The bound item, if any.
    pub fn item(&self) -> Option<&Value> {
        self.item.as_ref().map(|(v, _)| v)
    }

    /// The jaq value of `$item` (`null` when none is bound).
    pub(crate) fn item_val(&self) -> Val {
        self.item
            .as_ref()
            .map(|(_, v)| v.clone())
            .unwrap_or(Val::Null)
    }

    /// The JSON value.
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// Give the JSON value back.
    pub fn into_value(self) -> Value {
        self.value
    }

    /// The jaq form, or an error if the value is nested too deeply.
    pub(crate) fn val(&self) -> Result<&Val, EvalError> {
        let limit = Limits::default().max_value_depth;
        self.val
            .get_or_init(|| {
                to_val_depth(&self.value, limit).ok_or(EvalError::TooDeep {
                    what: "input",
                    limit,
                })
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}

impl Input {
    /// Fail if the value is nested deeper than the limit (checked once, without recursion).
    pub(crate) fn check_depth(&self) -> Result<(), EvalError> {
        let limit = Limits::default().max_value_depth;
        let ok = *self
            .depth_ok
            .get_or_init(|| depth_within(&self.value, limit));
        if ok {
            Ok(())
        } else {
            Err(EvalError::TooDeep {
                what: "input",
                limit,
            })
        }
    }
}

fn depth_within(v: &Value, limit: usize) -> bool {
    let mut stack = vec![(v, 0usize)];
    while let Some((v, d)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(a) => Box::new(a.iter()),
            Value::Object(o) => Box::new(o.values()),
            _ => continue,
        };
        if d >= limit {
            return false;
        }
        stack.extend(children.map(|c| (c, d + 1)));
    }
    true
}

/// Check a natively computed output against the size and depth limits, without recursion.
pub(crate) fn check_output(v: &Value, limits: &Limits) -> Result<(), EvalError> {
    let mut bytes = 0usize;
    let mut stack = vec![(v, 0usize)];
    while let Some((v, d)) = stack.pop() {
        if d > limits.max_value_depth {
            return Err(EvalError::TooDeep {
                what: "output",
                limit: limits.max_value_depth,
            });
        }
        bytes += match v {
            Value::Null | Value::Bool(_) => 5,
            Value::Number(_) => 8,
            Value::String(s) => s.len() + 2,
            Value::Array(a) => {
                stack.extend(a.iter().map(|c| (c, d + 1)));
                2 + a.len()
            }
            Value::Object(o) => {
                stack.extend(o.values().map(|c| (c, d + 1)));
                2 + o.keys().map(|k| k.len() + 4).sum::<usize>()
            }
        };
        if bytes > limits.max_output_bytes {
            return Err(EvalError::OutputTooLarge(limits.max_output_bytes));
        }
    }
    Ok(())
}

impl From<Value> for Input {
    fn from(value: Value) -> Self {
        Input::new(value)
    }
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Input")
            .field(&self.value)
            .field(&self.item())
            .finish()
    }
}

/// Convert a value known to be shallow enough (parsed by serde_json, which stops at 128 levels).
pub(crate) fn to_val(v: &Value) -> Val {
    to_val_depth(v, usize::MAX).unwrap_or_default()
}

fn to_val_depth(v: &Value, depth: usize) -> Option<Val> {
    Some(match v {
        Value::Null => Val::Null,
        Value::Bool(b) => Val::Bool(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64().and_then(|i| isize::try_from(i).ok()) {
                Val::Num(Num::Int(i))
            } else if let Some(u) = n.as_u64() {
                Val::Num(Num::from_integral(u))
            } else {
                Val::Num(Num::Float(n.as_f64().unwrap_or(f64::NAN)))
            }
        }
        Value::String(s) => Val::utf8_str(s.clone()),
        Value::Array(a) => {
            let depth = depth.checked_sub(1)?;
            let items = a
                .iter()
                .map(|x| to_val_depth(x, depth))
                .collect::<Option<Vec<_>>>()?;
            Val::Arr(Rc::new(items))
        }
        Value::Object(o) => {
            let depth = depth.checked_sub(1)?;
            let mut map = Map::with_capacity_and_hasher(o.len(), Default::default());
            for (k, x) in o {
                map.insert(Val::utf8_str(k.clone()), to_val_depth(x, depth)?);
            }
            Val::obj(map)
        }
    })
}

/// Converts outputs back to JSON within a byte and a depth budget.
pub(crate) struct Output {
    bytes_left: usize,
    max_bytes: usize,
    max_depth: usize,
}

impl Output {
    pub(crate) fn new(limits: &Limits) -> Self {
        Output {
            bytes_left: limits.max_output_bytes,
            max_bytes: limits.max_output_bytes,
            max_depth: limits.max_value_depth,
        }
    }

    fn spend(&mut self, n: usize) -> Result<(), EvalError> {
        self.bytes_left = self
            .bytes_left
            .checked_sub(n)
            .ok_or(EvalError::OutputTooLarge(self.max_bytes))?;
        Ok(())
    }

    pub(crate) fn convert(&mut self, v: &Val) -> Result<Value, EvalError> {
        self.convert_at(v, 0)
    }

    fn convert_at(&mut self, v: &Val, depth: usize) -> Result<Value, EvalError> {
        if depth > self.max_depth {
            return Err(EvalError::TooDeep {
                what: "output",
                limit: self.max_depth,
            });
        }
        Ok(match v {
            Val::Null => {
                self.spend(4)?;
                Value::Null
            }
            Val::Bool(b) => {
                self.spend(5)?;
                Value::Bool(*b)
            }
            Val::Num(n) => {
                self.spend(8)?;
                num_to_json(n)
            }
            Val::TStr(b) | Val::BStr(b) => {
                self.spend(b.len() + 2)?;
                Value::String(String::from_utf8_lossy(b).into_owned())
            }
            Val::Arr(a) => {
                self.spend(2)?;
                let mut out = Vec::with_capacity(a.len().min(1024));
                for x in a.iter() {
                    self.spend(1)?;
                    out.push(self.convert_at(x, depth + 1)?);
                }
                Value::Array(out)
            }
            Val::Obj(o) => {
                self.spend(2)?;
                let mut out = serde_json::Map::new();
                for (k, x) in o.iter() {
                    let key = match k {
                        Val::TStr(b) | Val::BStr(b) => String::from_utf8_lossy(b).into_owned(),
                        other => {
                            return Err(EvalError::Jq(format!(
                                "object key {} is not a string",
                                crate::filter::bounded_display(other)
                            )))
                        }
                    };
                    self.spend(key.len() + 4)?;
                    let x = self.convert_at(x, depth + 1)?;
                    out.insert(key, x);
                }
                Value::Object(out)
            }
        })
    }
}

fn num_to_json(n: &Num) -> Value {
    let float = |f: f64| {
        if f.is_nan() {
            Value::Null
        } else {
            // jq prints infinities as the largest finite doubles
            Value::Number(Number::from_f64(f.clamp(f64::MIN, f64::MAX)).unwrap_or(0.into()))
        }
    };
    match n {
        Num::Int(i) => Value::Number((*i as i64).into()),
        Num::Float(f) => float(*f),
        Num::BigInt(b) => {
            if let Ok(i) = i64::try_from(&**b) {
                Value::Number(i.into())
            } else if let Ok(u) = u64::try_from(&**b) {
                Value::Number(u.into())
            } else {
                float(b.to_string().parse().unwrap_or(f64::NAN))
            }
        }
        Num::Dec(s) => {
            if let Ok(i) = s.parse::<i64>() {
                Value::Number(i.into())
            } else {
                float(s.parse().unwrap_or(f64::NAN))
            }
        }
    }
}

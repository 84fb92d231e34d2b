//! The comparison operators of `{path, <op>: value}` steps, compiled once (regexes, CIDRs,
//! lower-cased strings) and applied natively to `serde_json` values.
//!
//! Semantics: a missing field fails every operator except `exists`/`not_exists`; numbers
//! compare as numbers (`1 == 1.0`); a value of another type than the operand (a number against
//! a string, `"90"` against `90`) fails and is reported as a type mismatch.

use ipnet::IpNet;
use serde_json::{Number, Value};
use std::cmp::Ordering;
use std::net::IpAddr;

/// Every operator name, for error messages and documentation.
pub const OPERATORS: &[&str] = &[
    "eq",
    "ne",
    "gt",
    "ge",
    "lt",
    "le",
    "in",
    "not_in",
    "contains",
    "not_contains",
    "starts_with",
    "prefix",
    "ends_with",
    "suffix",
    "regex",
    "iregex",
    "exists",
    "not_exists",
    "numeric",
    "range",
    "between",
    "anything_but",
    "cidr",
    "equals_ignore_case",
    "wildcard",
];

/// Result of applying an operator to a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Pass,
    Fail,
    /// The field is missing (only `exists`/`not_exists` can pass on a missing field).
    Missing,
    /// The value has another type than the operator needs.
    Mismatch,
}

#[derive(Debug)]
pub(crate) enum Op {
    Eq(Value),
    Ne(Value),
    Order(Ordering, bool, Value),
    In(Vec<Value>),
    NotIn(Vec<Value>),
    Contains(Value),
    NotContains(Value),
    StartsWith(String),
    EndsWith(String),
    Regex(regex::Regex),
    Exists(bool),
    Numeric(Vec<(Ordering, bool, Number)>),
    AnythingBut(Vec<Value>),
    AnythingButPrefix(String),
    AnythingButSuffix(String),
    Cidr(Vec<IpNet>),
    EqualsIgnoreCase(String),
    Wildcard(regex::Regex),
}

fn outcome(b: bool) -> Outcome {
    if b {
        Outcome::Pass
    } else {
        Outcome::Fail
    }
}

fn kind(v: &Value) -> u8 {
    match v {
        Value::Null => 0,
        Value::Bool(_) => 1,
        Value::Number(_) => 2,
        Value::String(_) => 3,
        Value::Array(_) => 4,
        Value::Object(_) => 5,
    }
}

/// The JSON type name of a value ("a number", "a string", ...).
pub(crate) fn type_name(v: &Value) -> &'static str {
    [
        "null",
        "a boolean",
        "a number",
        "a string",
        "an array",
        "an object",
    ][kind(v) as usize]
}

pub(crate) fn num_cmp(a: &Number, b: &Number) -> Option<Ordering> {
    match (a.as_i64(), b.as_i64(), a.as_u64(), b.as_u64()) {
        (Some(x), Some(y), ..) => Some(x.cmp(&y)),
        (_, _, Some(x), Some(y)) => Some(x.cmp(&y)),
        _ => a.as_f64()?.partial_cmp(&b.as_f64()?),
    }
}

/// JSON equality with numbers compared as numbers.
pub(crate) fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => num_cmp(x, y) == Some(Ordering::Equal),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        (a, b) => a == b,
    }
}

fn ordering(op: &str) -> Option<(Ordering, bool)> {
    Some(match op {
        ">" | "gt" => (Ordering::Greater, false),
        ">=" | "ge" => (Ordering::Greater, true),
        "<" | "lt" => (Ordering::Less, false),
        "<=" | "le" => (Ordering::Less, true),
        "=" | "==" => (Ordering::Equal, true),
        _ => return None,
    })
}

fn holds(cmp: Option<Ordering>, want: Ordering, or_equal: bool) -> bool {
    cmp == Some(want) || (or_equal && cmp == Some(Ordering::Equal))
}

fn string(op: &str, v: &Value) -> Result<String, String> {
    v.as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("`{op}` needs a string, not {}", type_name(v)))
}

fn list(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(items) => items.clone(),
        v => vec![v.clone()],
    }
}

fn regex(op: &str, pattern: &str, case_insensitive: bool) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(pattern)
        .case_insensitive(case_insensitive)
        .size_limit(1 << 20)
        .dfa_size_limit(1 << 20)
        .build()
        .map_err(|e| format!("`{op}`: invalid regular expression {pattern:?}: {e}"))
}

fn cidr(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| {
            format!("`cidr`: {s:?} is not an IP network (write e.g. 10.0.0.0/8 or 2001:db8::/32)")
        })
}

impl Op {
    /// Compile operator `op` with operand `v`; `op` must be one of [`OPERATORS`].
    pub(crate) fn compile(op: &str, v: &Value) -> Result<Op, String> {
        let number = |v: &Value| match v {
            Value::Number(n) => Ok(n.clone()),
            v => Err(format!(
                "`{op}` bounds must be numbers, not {}",
                type_name(v)
            )),
        };
        Ok(match op {
            "eq" => Op::Eq(v.clone()),
            "ne" => Op::Ne(v.clone()),
            "gt" | "ge" | "lt" | "le" => {
                if !matches!(v, Value::Number(_) | Value::String(_)) {
                    return Err(format!(
                        "`{op}` needs a number or a string, not {}",
                        type_name(v)
                    ));
                }
                let (ord, eq) = ordering(op).expect("known operator");
                Op::Order(ord, eq, v.clone())
            }
            "in" | "not_in" => {
                let Value::Array(items) = v else {
                    return Err(format!("`{op}` needs a list of values"));
                };
                if op == "in" {
                    Op::In(items.clone())
                } else {
                    Op::NotIn(items.clone())
                }
            }
            "contains" => Op::Contains(v.clone()),
            "not_contains" => Op::NotContains(v.clone()),
            "starts_with" | "prefix" => Op::StartsWith(string(op, v)?),
            "ends_with" | "suffix" => Op::EndsWith(string(op, v)?),
            "regex" => Op::Regex(regex(op, &string(op, v)?, false)?),
            "iregex" => Op::Regex(regex(op, &string(op, v)?, true)?),
            "exists" | "not_exists" => {
                let Value::Bool(b) = v else {
                    return Err(format!("`{op}` needs true or false"));
                };
                Op::Exists(*b == (op == "exists"))
            }
            "numeric" | "range" => {
                let items = v.as_array().filter(|a| !a.is_empty() && a.len() % 2 == 0).ok_or_else(|| {
                    format!("`{op}` needs pairs of comparison and number, e.g. [\">=\", 0, \"<\", 100]")
                })?;
                let mut conds = Vec::new();
                for pair in items.chunks(2) {
                    let (ord, eq) = pair[0].as_str().and_then(ordering).ok_or_else(|| {
                        format!(
                            "`{op}`: {} is not one of \">\", \">=\", \"<\", \"<=\", \"=\"",
                            pair[0]
                        )
                    })?;
                    conds.push((ord, eq, number(&pair[1])?));
                }
                Op::Numeric(conds)
            }
            "between" => match v.as_array().map(Vec::as_slice) {
                Some([lo, hi]) => {
                    let (lo, hi) = (number(lo)?, number(hi)?);
                    if num_cmp(&lo, &hi) == Some(Ordering::Greater) {
                        return Err(format!(
                            "`between`: lower bound {lo} is greater than upper bound {hi}"
                        ));
                    }
                    Op::Numeric(vec![
                        (Ordering::Greater, true, lo),
                        (Ordering::Less, true, hi),
                    ])
                }
                _ => return Err("`between` needs [low, high] (both inclusive)".into()),
            },
            "anything_but" => match v {
                Value::Object(o) if o.len() == 1 && o.contains_key("prefix") => {
                    Op::AnythingButPrefix(string("anything_but.prefix", &o["prefix"])?)
                }
                Value::Object(o) if o.len() == 1 && o.contains_key("suffix") => {
                    Op::AnythingButSuffix(string("anything_but.suffix", &o["suffix"])?)
                }
                Value::Object(_) => {
                    return Err(
                        "`anything_but` takes a value, a list, {prefix: ...} or {suffix: ...}"
                            .into(),
                    )
                }
                v => Op::AnythingBut(list(v)),
            },
            "cidr" => {
                let nets = list(v)
                    .iter()
                    .map(|n| string(op, n).and_then(|s| cidr(&s)))
                    .collect::<Result<_, _>>()?;
                Op::Cidr(nets)
            }
            "equals_ignore_case" => Op::EqualsIgnoreCase(string(op, v)?.to_lowercase()),
            "wildcard" => {
                let pattern = string(op, v)?;
                let parts: Vec<String> = pattern.split('*').map(regex::escape).collect();
                Op::Wildcard(regex(op, &format!("^(?s:{})$", parts.join(".*")), false)?)
            }
            _ => {
                return Err(format!(
                    "unknown operator {op:?} (expected one of {})",
                    OPERATORS.join(", ")
                ))
            }
        })
    }

    /// Apply to the value at the step's path (`None` when the field is missing).
    pub(crate) fn apply(&self, v: Option<&Value>) -> Outcome {
        if let Op::Exists(want) = self {
            return outcome(v.is_some() == *want);
        }
        let Some(v) = v else { return Outcome::Missing };
        let same = |x: &Value| kind(x) == kind(v);
        match self {
            Op::Exists(_) => unreachable!("handled above"),
            Op::Eq(x) | Op::Ne(x) if !same(x) => Outcome::Mismatch,
            Op::Eq(x) => outcome(json_eq(v, x)),
            Op::Ne(x) => outcome(!json_eq(v, x)),
            Op::Order(ord, eq, x) => match (v, x) {
                (Value::Number(a), Value::Number(b)) => outcome(holds(num_cmp(a, b), *ord, *eq)),
                (Value::String(a), Value::String(b)) => {
                    outcome(holds(Some(a.as_str().cmp(b)), *ord, *eq))
                }
                _ => Outcome::Mismatch,
            },
            Op::In(xs) | Op::NotIn(xs) | Op::AnythingBut(xs) if !xs.iter().any(same) => {
                Outcome::Mismatch
            }
            Op::In(xs) => outcome(xs.iter().any(|x| json_eq(v, x))),
            Op::NotIn(xs) | Op::AnythingBut(xs) => outcome(!xs.iter().any(|x| json_eq(v, x))),
            Op::Contains(x) | Op::NotContains(x) => {
                let found = match (v, x) {
                    (Value::String(s), Value::String(sub)) => s.contains(sub.as_str()),
                    (Value::Array(items), x) => items.iter().any(|i| json_eq(i, x)),
                    _ => return Outcome::Mismatch,
                };
                outcome(found == matches!(self, Op::Contains(_)))
            }
            Op::Numeric(conds) => match v {
                Value::Number(n) => {
                    outcome(conds.iter().all(|(o, e, b)| holds(num_cmp(n, b), *o, *e)))
                }
                _ => Outcome::Mismatch,
            },
            Op::StartsWith(_)
            | Op::EndsWith(_)
            | Op::Regex(_)
            | Op::AnythingButPrefix(_)
            | Op::AnythingButSuffix(_)
            | Op::Cidr(_)
            | Op::EqualsIgnoreCase(_)
            | Op::Wildcard(_) => match v.as_str() {
                Some(s) => self.apply_str(s),
                None => Outcome::Mismatch,
            },
        }
    }

    fn apply_str(&self, s: &str) -> Outcome {
        match self {
            Op::StartsWith(p) => outcome(s.starts_with(p.as_str())),
            Op::EndsWith(p) => outcome(s.ends_with(p.as_str())),
            Op::AnythingButPrefix(p) => outcome(!s.starts_with(p.as_str())),
            Op::AnythingButSuffix(p) => outcome(!s.ends_with(p.as_str())),
            Op::Regex(re) | Op::Wildcard(re) => outcome(re.is_match(s)),
            Op::EqualsIgnoreCase(x) => outcome(s.to_lowercase() == *x),
            Op::Cidr(nets) => match s.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    let ip = ip.to_canonical(); // ::ffff:10.0.0.1 is 10.0.0.1
                    outcome(nets.iter().any(|n| n.contains(&ip)))
                }
                Err(_) => Outcome::Mismatch,
            },
            _ => Outcome::Mismatch,
        }
    }
}

//! The feature pipeline: `when` steps compiled from their YAML form, evaluated on an event
//! (fast, counting type mismatches and jq errors), and explained when they fail ("why not").

use crate::eval::{Cx, Paths};
use crate::ops::{type_name, Op, Outcome, OPERATORS};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use whale_expr::path::{Lookup, SimplePath};
use whale_expr::{Compiler, Expr, Input};

pub(crate) enum Step {
    Cmp {
        path: SimplePath,
        /// The path is under `$item` (the `for_each` element), not the event.
        item: bool,
        id: u32,
        op: Op,
        op_name: String,
        desc: String,
    },
    Jq {
        expr: Expr,
        desc: String,
    },
    Any(Vec<Step>, String),
    All(Vec<Step>, String),
    Not(Box<Step>, String),
}

/// Counters of one evaluation, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Comparisons that failed because the value had another type than the operand.
    pub type_mismatches: u32,
    /// `jq:` predicates that raised an error (counted as false).
    pub jq_errors: u32,
}

/// The step that made a rule not match, and what it saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepFailure {
    /// The step, e.g. `.detail.usage_pct gt 90` or `jq: .detail.mounts | any(...)`.
    pub step: String,
    /// Position of the step: `[1]` is the second step of `when`; `[3, 0]` is the first step
    /// inside a group that is the fourth step.
    pub index: Vec<usize>,
    /// The value at the step's path (or the predicate's first output); `None` when missing.
    pub saw: Option<Value>,
    /// Why the step failed.
    pub reason: String,
}

/// A step that does not compile: what is wrong, and text to find its line with.
pub(crate) struct StepError {
    pub message: String,
    pub needle: String,
}

fn shape_error(at: &str, v: &Value) -> StepError {
    StepError {
        message: format!(
            "{at}: a step is {{path: .a.b, <operator>: value}}, {{jq: 'predicate'}}, \
             {{any: [steps]}}, {{all: [steps]}} or {{not: step}}; got {}",
            crate::rule::short_json(v)
        ),
        needle: String::new(),
    }
}

fn join_descs(kw: &str, steps: &[Step]) -> String {
    let mut s: String = steps.iter().map(Step::desc).collect::<Vec<_>>().join(", ");
    if s.len() > 160 {
        let cut = (0..=160)
            .rev()
            .find(|i| s.is_char_boundary(*i))
            .unwrap_or(0);
        s.truncate(cut);
        s.push('…');
    }
    format!("{kw}: [{s}]")
}

impl Step {
    pub(crate) fn compile(
        v: &Value,
        c: &mut Compiler,
        paths: &mut Paths,
        at: &str,
    ) -> Result<Step, StepError> {
        let Value::Object(map) = v else {
            return Err(shape_error(at, v));
        };
        let only = |key: &str| -> Result<&Value, StepError> {
            if map.len() != 1 {
                let others: Vec<&str> = map
                    .keys()
                    .map(String::as_str)
                    .filter(|k| *k != key)
                    .collect();
                return Err(StepError {
                    message: format!(
                        "{at}: `{key}` cannot be combined with {}",
                        others.join(", ")
                    ),
                    needle: key.to_owned(),
                });
            }
            Ok(&map[key])
        };
        let group = |key: &str,
                     v: &Value,
                     c: &mut Compiler,
                     paths: &mut Paths|
         -> Result<Vec<Step>, StepError> {
            let items = match v {
                Value::Array(items) if !items.is_empty() => items.as_slice(),
                Value::Object(_) if key == "not" => std::slice::from_ref(v),
                _ => {
                    return Err(StepError {
                        message: format!("{at}: `{key}` needs a non-empty list of steps"),
                        needle: format!("{key}:"),
                    })
                }
            };
            let at = |i| format!("{at}.{key}[{i}]");
            items
                .iter()
                .enumerate()
                .map(|(i, s)| Step::compile(s, c, paths, &at(i)))
                .collect()
        };
        if map.contains_key("jq") {
            let src = only("jq")?.as_str().ok_or_else(|| StepError {
                message: format!("{at}: `jq` needs a string"),
                needle: "jq:".into(),
            })?;
            let expr = c.expr(src).map_err(|e| StepError {
                message: format!("{at}: jq: {e}"),
                needle: src.trim().to_owned(),
            })?;
            return Ok(Step::Jq {
                expr,
                desc: format!("jq: {}", src.trim()),
            });
        }
        for key in ["any", "all"] {
            if map.contains_key(key) {
                let steps = group(key, only(key)?, c, paths)?;
                let desc = join_descs(key, &steps);
                return Ok(if key == "any" {
                    Step::Any(steps, desc)
                } else {
                    Step::All(steps, desc)
                });
            }
        }
        if map.contains_key("not") {
            let mut steps = group("not", only("not")?, c, paths)?;
            let inner = if steps.len() == 1 {
                steps.remove(0)
            } else {
                let desc = join_descs("all", &steps);
                Step::All(steps, desc)
            };
            let desc = format!("not: {}", inner.desc());
            return Ok(Step::Not(Box::new(inner), desc));
        }
        let Some(path_v) = map.get("path") else {
            return Err(shape_error(at, v));
        };
        let path_src = path_v.as_str().unwrap_or_default();
        // `$item.labels.instance`: a path into the `for_each` element
        let (item, rel) = match path_src.trim().strip_prefix(whale_expr::ITEM_VAR) {
            Some("") => (true, ".".to_owned()),
            Some(rest) if rest.starts_with('.') => (true, rest.to_owned()),
            Some(rest) if rest.starts_with('[') => (true, format!(".{rest}")),
            _ => (false, path_src.to_owned()),
        };
        let path = SimplePath::parse(&rel).ok_or_else(|| StepError {
            message: format!(
                "{at}: `path` must be a simple path such as .detail.host, .labels[\"odd key\"], \
                 .items[0].name or $item.labels.instance (got {}); use `jq:` for anything else",
                crate::rule::short_json(path_v)
            ),
            needle: path_src.to_owned(),
        })?;
        let ops: Vec<(&String, &Value)> = map.iter().filter(|(k, _)| *k != "path").collect();
        let [(op_name, operand)] = ops[..] else {
            let names: Vec<&str> = ops.iter().map(|(k, _)| k.as_str()).collect();
            return Err(StepError {
                message: format!(
                    "{at}: a path step needs exactly one operator, found {} ({}); expected one of {}",
                    names.len(),
                    names.join(", "),
                    OPERATORS.join(", ")
                ),
                needle: path_src.to_owned(),
            });
        };
        let op = Op::compile(op_name, operand).map_err(|message| StepError {
            message: format!("{at}: {message}"),
            needle: format!("{op_name}:"),
        })?;
        let shown = if item {
            path_src.trim().to_owned()
        } else {
            path.to_string()
        };
        let desc = format!("{shown} {op_name} {}", show_operand(operand));
        Ok(Step::Cmp {
            id: paths.id(&path),
            item,
            path,
            op,
            op_name: op_name.clone(),
            desc,
        })
    }

    pub(crate) fn desc(&self) -> &str {
        match self {
            Step::Cmp { desc, .. } | Step::Jq { desc, .. } => desc,
            Step::Any(_, d) | Step::All(_, d) | Step::Not(_, d) => d,
        }
    }

    /// Evaluate, counting type mismatches and jq errors.
    pub(crate) fn eval(&self, cx: &mut Cx<'_>) -> bool {
        match self {
            Step::Cmp {
                path, id, op, item, ..
            } => {
                let lookup = if *item {
                    item_lookup(cx.input, path)
                } else {
                    cx.lookup(*id, path)
                };
                let v = match lookup {
                    Lookup::Found(v) => Some(v),
                    Lookup::Missing | Lookup::Mismatch => None,
                };
                match op.apply(v) {
                    Outcome::Pass => true,
                    Outcome::Fail | Outcome::Missing => false,
                    Outcome::Mismatch => {
                        cx.counts.type_mismatches += 1;
                        false
                    }
                }
            }
            Step::Jq { expr, .. } => expr.test(cx.input).unwrap_or_else(|_| {
                cx.counts.jq_errors += 1;
                false
            }),
            Step::Any(steps, _) => steps.iter().any(|s| s.eval(cx)),
            Step::All(steps, _) => steps.iter().all(|s| s.eval(cx)),
            Step::Not(inner, _) => !inner.eval(cx),
        }
    }

    /// Why this step fails on `input` (`None` if it passes). `index` is this step's position.
    pub(crate) fn explain(&self, input: &Input, index: &mut Vec<usize>) -> Option<StepFailure> {
        let fail = |step: &str, saw: Option<Value>, reason: String, index: &Vec<usize>| {
            Some(StepFailure {
                step: step.to_owned(),
                index: index.clone(),
                saw,
                reason,
            })
        };
        match self {
            Step::Cmp {
                path,
                op,
                op_name,
                desc,
                item,
                ..
            } => {
                let lookup = if *item {
                    item_lookup(input, path)
                } else {
                    path.lookup(input.value())
                };
                let v = match lookup {
                    Lookup::Found(v) => Some(v),
                    _ => None,
                };
                let reason = match op.apply(v) {
                    Outcome::Pass => return None,
                    Outcome::Fail => "the comparison is false".to_owned(),
                    Outcome::Missing if lookup == Lookup::Mismatch => {
                        "the path does not exist (a value along it is not an object or array)"
                            .to_owned()
                    }
                    Outcome::Missing => "the field is missing".to_owned(),
                    Outcome::Mismatch => {
                        format!(
                            "type mismatch: `{op_name}` does not apply to {}",
                            type_name(v?)
                        )
                    }
                };
                fail(desc, v.cloned(), reason, index)
            }
            Step::Jq { expr, desc } => match expr.test(input) {
                Ok(true) => None,
                Ok(false) => {
                    let first = expr.run(input).ok().and_then(|v| v.into_iter().next());
                    let reason = match &first {
                        None => "the predicate yields no value",
                        Some(_) => "the predicate is false",
                    };
                    fail(desc, first, reason.to_owned(), index)
                }
                Err(e) => fail(desc, None, format!("the predicate failed: {e}"), index),
            },
            Step::All(steps, _) => steps.iter().enumerate().find_map(|(i, s)| {
                index.push(i);
                let f = s.explain(input, index);
                index.pop();
                f
            }),
            Step::Any(steps, desc) => {
                if steps.iter().any(|s| s.eval(&mut Cx::new(input))) {
                    return None;
                }
                let first = steps.first().and_then(|s| s.explain(input, &mut vec![0]));
                let detail = first
                    .map(|f| format!(" (first: {}: {})", f.step, f.reason))
                    .unwrap_or_default();
                fail(
                    desc,
                    None,
                    format!("none of the {} alternatives matched{detail}", steps.len()),
                    index,
                )
            }
            Step::Not(inner, desc) => {
                if !inner.eval(&mut Cx::new(input)) {
                    return None;
                }
                fail(desc, None, "the negated step matched".to_owned(), index)
            }
        }
    }
}

/// A path looked up in the input's `$item` (missing when the input has none).
fn item_lookup<'a>(input: &'a Input, path: &SimplePath) -> Lookup<'a> {
    match input.item() {
        Some(v) => path.lookup(v),
        None => Lookup::Missing,
    }
}

/// An operand as shown in a step description: strings in quotes, others as compact JSON.
fn show_operand(v: &Value) -> String {
    match v {
        Value::String(s) => format!("\"{s}\""),
        v => crate::rule::short_json(v),
    }
}

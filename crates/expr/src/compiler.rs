//! [`Compiler`] compiles expressions and templates for a whole rule set, compiling each distinct
//! jq source once; [`Expr`] is one expression, evaluated natively when it is a simple path (or
//! `path // literal`) and by jaq otherwise.

use crate::path::{Lookup, SimplePath};
use crate::{EvalError, ExprError, Filter, Input, Limits, Template, TemplateError, TemplateValue};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

/// Compiles expressions, sharing one compiled filter between identical sources.
#[derive(Debug, Default)]
pub struct Compiler {
    limits: Limits,
    cache: HashMap<String, Arc<Filter>>,
    compiled: usize,
}

impl Compiler {
    /// A compiler with default limits.
    pub fn new() -> Self {
        Self::default()
    }

    /// A compiler with the given limits.
    pub fn with_limits(limits: Limits) -> Self {
        Compiler {
            limits,
            ..Self::default()
        }
    }

    /// Compile a jq filter, or return the one compiled earlier from the same source.
    pub fn filter(&mut self, src: &str) -> Result<Arc<Filter>, ExprError> {
        if let Some(f) = self.cache.get(src) {
            return Ok(f.clone());
        }
        let f = Arc::new(Filter::compile_with(src, &self.limits)?);
        self.compiled += 1;
        self.cache.insert(src.to_owned(), f.clone());
        Ok(f)
    }

    /// Compile an expression: natively evaluated when it is a simple path, jq otherwise.
    pub fn expr(&mut self, src: &str) -> Result<Expr, ExprError> {
        let src = src.trim();
        let kind = if let Some(p) = SimplePath::parse(src) {
            ExprKind::Path(p)
        } else if let Some((p, default)) = path_or_literal(src) {
            ExprKind::PathOr(p, default)
        } else {
            ExprKind::Jq(self.filter(src)?)
        };
        Ok(Expr {
            src: src.to_owned(),
            kind,
        })
    }

    /// Compile a `{{ }}` template string.
    pub fn template(&mut self, s: &str) -> Result<Template, ExprError> {
        Template::compile_in(s, self)
    }

    /// Compile every string inside a JSON value as a template.
    pub fn template_value(&mut self, v: &Value) -> Result<TemplateValue, TemplateError> {
        TemplateValue::compile_in(v, self)
    }

    /// How many distinct jq filters were compiled (sources seen twice count once).
    pub fn filters_compiled(&self) -> usize {
        self.compiled
    }
}

/// `.a.b // <JSON literal>`
fn path_or_literal(src: &str) -> Option<(SimplePath, Value)> {
    let (left, right) = src.split_once("//")?;
    let path = SimplePath::parse(left)?;
    let right = right.trim();
    if right.starts_with('=') {
        return None; // `//=`
    }
    let default: Value = serde_json::from_str(right).ok()?;
    Some((path, default))
}

/// One compiled expression.
#[derive(Debug, Clone)]
pub struct Expr {
    src: String,
    kind: ExprKind,
}

#[derive(Debug, Clone)]
enum ExprKind {
    Path(SimplePath),
    PathOr(SimplePath, Value),
    Jq(Arc<Filter>),
}

impl Expr {
    /// Compile one expression on its own (see [`Compiler::expr`] to share compiled filters).
    pub fn compile(src: &str) -> Result<Expr, ExprError> {
        Compiler::new().expr(src)
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.src
    }

    /// True if evaluated without jaq.
    pub fn is_native(&self) -> bool {
        !matches!(self.kind, ExprKind::Jq(_))
    }

    /// All outputs, with jq's semantics.
    pub fn run(&self, input: &Input) -> Result<Vec<Value>, EvalError> {
        match &self.kind {
            ExprKind::Path(p) => p
                .eval_jq(input.value())
                .map(|v| vec![v])
                .map_err(EvalError::Jq),
            ExprKind::PathOr(p, default) => match p.lookup(input.value()) {
                Lookup::Found(v) if !matches!(v, Value::Null | Value::Bool(false)) => {
                    Ok(vec![v.clone()])
                }
                // as in jaq, an error on the left of `//` is an error
                Lookup::Mismatch => p
                    .eval_jq(input.value())
                    .map(|v| vec![v])
                    .map_err(EvalError::Jq),
                _ => Ok(vec![default.clone()]),
            },
            ExprKind::Jq(f) => f.run(input),
        }
    }

    /// As a predicate: true iff the first output is neither `false` nor `null`.
    pub fn test(&self, input: &Input) -> Result<bool, EvalError> {
        match &self.kind {
            ExprKind::Jq(f) => f.test(input),
            _ => Ok(self
                .run(input)?
                .first()
                .is_some_and(|v| !matches!(v, Value::Null | Value::Bool(false)))),
        }
    }
}

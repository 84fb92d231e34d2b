//! `{{ jq }}` templates. A string that is exactly one `{{ expr }}` (whitespace around allowed)
//! renders to the JSON value of `expr` with its type; text mixed with templates renders to a
//! string (strings inserted raw, other values as compact JSON); a string without `{{` is a
//! literal. [`crate::TemplateValue`] applies this to every string inside a JSON/YAML
//! structure.

use crate::{Compiler, EvalError, Expr, ExprError, Input};
use serde_json::Value;
use std::fmt;

/// A compiled template string.
#[derive(Debug, Clone)]
pub struct Template {
    src: String,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    Literal(String),
    Single(Expr),
    Mixed(Vec<Piece>),
}

#[derive(Debug, Clone)]
enum Piece {
    Text(String),
    Expr(Expr),
}

/// Why a template could not be rendered for an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderError {
    /// Where the template sits inside a [`crate::TemplateValue`] (`host`, `items[2]`); empty for a
    /// lone template.
    pub path: String,
    /// The expression that failed, as written between `{{ }}`.
    pub expr: String,
    /// What went wrong.
    pub reason: String,
}

impl fmt::Display for RenderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        write!(f, "{{{{ {} }}}} {}", self.expr, self.reason)
    }
}

impl std::error::Error for RenderError {}

/// Byte offset of the `}}` that closes an expression starting at `s[0]`, skipping braces and
/// strings of the jq code in between.
fn find_close(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut stack: Vec<u8> = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if stack.last() == Some(&b'"') {
            match c {
                b'\\' if b.get(i + 1) == Some(&b'(') => {
                    stack.push(b'(');
                    i += 1;
                }
                b'\\' => i += 1,
                b'"' => {
                    stack.pop();
                }
                _ => {}
            }
        } else {
            match c {
                b'"' | b'{' | b'(' => stack.push(c),
                b')' if stack.last() == Some(&b'(') => {
                    stack.pop();
                }
                b'}' if stack.is_empty() && b.get(i + 1) == Some(&b'}') => return Some(i),
                b'}' if stack.last() == Some(&b'{') => {
                    stack.pop();
                }
                _ => {}
            }
        }
        i += 1;
    }
    None
}

impl Template {
    /// Compile a template on its own (see [`Compiler::template`] to share compiled filters).
    pub fn compile(s: &str) -> Result<Template, ExprError> {
        Self::compile_in(s, &mut Compiler::new())
    }

    pub(crate) fn compile_in(s: &str, c: &mut Compiler) -> Result<Template, ExprError> {
        let mut pieces = Vec::new();
        let mut rest = s;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 2..];
            let close = find_close(after).ok_or_else(|| {
                ExprError::new(format!(
                    "`{{{{` at byte {} is never closed with `}}}}`",
                    s.len() - rest.len() + open
                ))
            })?;
            let code = after[..close].trim();
            if code.is_empty() {
                return Err(ExprError::new("empty `{{ }}` expression"));
            }
            let expr = c.expr(code).map_err(|e| ExprError {
                message: format!("in {{{{ {code} }}}}: {}", e.message),
                position: e.position,
            })?;
            pieces.push(Piece::Expr(expr));
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_owned()));
        }
        let exprs = pieces
            .iter()
            .filter(|p| matches!(p, Piece::Expr(_)))
            .count();
        let blank = |p: &Piece| matches!(p, Piece::Text(t) if t.trim().is_empty());
        let kind = if exprs == 0 {
            Kind::Literal(s.to_owned())
        } else if exprs == 1
            && pieces
                .iter()
                .all(|p| matches!(p, Piece::Expr(_)) || blank(p))
        {
            match pieces.into_iter().find(|p| matches!(p, Piece::Expr(_))) {
                Some(Piece::Expr(e)) => Kind::Single(e),
                _ => unreachable!("one expression was counted"),
            }
        } else {
            Kind::Mixed(pieces)
        };
        Ok(Template {
            src: s.to_owned(),
            kind,
        })
    }

    /// The template as written.
    pub fn source(&self) -> &str {
        &self.src
    }

    /// True if the template has no `{{ }}` part.
    pub fn is_literal(&self) -> bool {
        matches!(self.kind, Kind::Literal(_))
    }

    /// Render for `input`: a lone expression keeps its JSON type; anything else is a string.
    pub fn render(&self, input: &Input) -> Result<Value, RenderError> {
        match &self.kind {
            Kind::Literal(s) => Ok(Value::String(s.clone())),
            Kind::Single(e) => one_value(e, input),
            Kind::Mixed(pieces) => {
                let mut out = String::new();
                for piece in pieces {
                    match piece {
                        Piece::Text(t) => out.push_str(t),
                        Piece::Expr(e) => match one_value(e, input)? {
                            Value::String(s) => out.push_str(&s),
                            v => out.push_str(&v.to_string()),
                        },
                    }
                }
                Ok(Value::String(out))
            }
        }
    }

    /// Render to a string: strings as they are, other values as compact JSON.
    pub fn render_string(&self, input: &Input) -> Result<String, RenderError> {
        Ok(match self.render(input)? {
            Value::String(s) => s,
            v => v.to_string(),
        })
    }
}

fn one_value(e: &Expr, input: &Input) -> Result<Value, RenderError> {
    let fail = |reason: String| RenderError {
        path: String::new(),
        expr: e.source().to_owned(),
        reason,
    };
    match e.run(input) {
        Err(EvalError::TooManyOutputs(n)) => Err(fail(format!(
            "yields more than {n} values; wrap it in [ ] to get an array"
        ))),
        Err(err) => Err(fail(format!("failed: {err}"))),
        Ok(mut values) => match values.len() {
            1 => Ok(values.pop().unwrap_or_default()),
            0 => Err(fail("yields no value".into())),
            n => Err(fail(format!(
                "yields {n} values; wrap it in [ ] to get an array"
            ))),
        },
    }
}

//! [`TemplateValue`]: a JSON/YAML structure whose strings are templates (rule `params`).
//! Objects and arrays are walked; a structure without templates collapses to one literal.

use crate::template::RenderError;
use crate::{Compiler, ExprError, Input, Template};
use serde_json::Value;
use std::fmt;

/// A template inside a [`TemplateValue`] that does not compile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    /// Where the template sits (`host`, `items[2]`); empty for the root.
    pub path: String,
    /// What is wrong with it.
    pub error: ExprError,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.error)
        } else {
            write!(f, "{}: {}", self.path, self.error)
        }
    }
}

impl std::error::Error for TemplateError {}

/// A JSON value whose strings are templates; objects and arrays are walked, other literals
/// pass through.
#[derive(Debug, Clone)]
pub enum TemplateValue {
    /// A value without any template inside: rendered as is.
    Literal(Value),
    /// A string with `{{ }}`.
    Template(Template),
    /// An array with templates inside.
    Array(Vec<TemplateValue>),
    /// An object with templates inside (keys are literal).
    Object(Vec<(String, TemplateValue)>),
}

impl TemplateValue {
    /// Compile every string inside `v` as a template.
    pub fn compile(v: &Value) -> Result<TemplateValue, TemplateError> {
        Self::compile_in(v, &mut Compiler::new())
    }

    pub(crate) fn compile_in(v: &Value, c: &mut Compiler) -> Result<TemplateValue, TemplateError> {
        compile_at(v, c, &mut String::new())
    }

    /// True if nothing inside is a template.
    pub fn is_literal(&self) -> bool {
        matches!(self, TemplateValue::Literal(_))
    }

    /// Render the whole structure.
    pub fn render(&self, input: &Input) -> Result<Value, RenderError> {
        render_at(self, input, &mut String::new())
    }
}

fn push_key(path: &mut String, key: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(key);
}

fn compile_at(
    v: &Value,
    c: &mut Compiler,
    path: &mut String,
) -> Result<TemplateValue, TemplateError> {
    let t = match v {
        Value::String(s) if s.contains("{{") => {
            let t = Template::compile_in(s, c).map_err(|error| TemplateError {
                path: path.clone(),
                error,
            })?;
            TemplateValue::Template(t)
        }
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, x) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                out.push(compile_at(x, c, path)?);
                path.truncate(len);
            }
            TemplateValue::Array(out)
        }
        Value::Object(map) => {
            let mut out = Vec::with_capacity(map.len());
            for (k, x) in map {
                let len = path.len();
                push_key(path, k);
                out.push((k.clone(), compile_at(x, c, path)?));
                path.truncate(len);
            }
            TemplateValue::Object(out)
        }
        v => TemplateValue::Literal(v.clone()),
    };
    // a structure without templates inside collapses to one literal
    Ok(match t {
        TemplateValue::Array(items) if items.iter().all(TemplateValue::is_literal) => {
            TemplateValue::Literal(v.clone())
        }
        TemplateValue::Object(items) if items.iter().all(|(_, x)| x.is_literal()) => {
            TemplateValue::Literal(v.clone())
        }
        t => t,
    })
}

fn render_at(t: &TemplateValue, input: &Input, path: &mut String) -> Result<Value, RenderError> {
    Ok(match t {
        TemplateValue::Literal(v) => v.clone(),
        TemplateValue::Template(t) => t.render(input).map_err(|e| RenderError {
            path: path.clone(),
            ..e
        })?,
        TemplateValue::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, x) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                out.push(render_at(x, input, path)?);
                path.truncate(len);
            }
            Value::Array(out)
        }
        TemplateValue::Object(items) => {
            let mut out = serde_json::Map::new();
            for (k, x) in items {
                let len = path.len();
                push_key(path, k);
                out.insert(k.clone(), render_at(x, input, path)?);
                path.truncate(len);
            }
            Value::Object(out)
        }
    })
}

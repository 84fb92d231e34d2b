//! The generic adapter: a jq program from `whale.toml` maps any JSON body (Zabbix media types,
//! Kubernetes event exporters, GitLab/GitHub hooks) to envelopes. It runs on the rule engine's
//! jq with its safety gates (no recursion or unbounded loops, a work budget, a time limit), with
//! a larger budget than a rule predicate since it reads a whole request body.

use axum::http::StatusCode;
use serde_json::Value;
use whale_expr::{Filter, Input, Limits};

use super::{Hook, HookError, Raw};

/// The jq limits of a hook mapping: the rule defaults (program size, time limit
/// `rules.eval_time_limit`, 1,000 outputs) with a work budget and output size for bodies of a
/// few MiB.
fn limits() -> Limits {
    Limits {
        fuel: 20_000_000,
        max_output_bytes: 16 << 20,
        ..Limits::default()
    }
}

pub(crate) fn compile(src: &str) -> Result<Filter, whale_expr::ExprError> {
    Filter::compile_with(src, &limits())
}

/// Runs the mapping; each output is an envelope or an array of envelopes.
pub(crate) fn run(filter: &Filter, hook: &Hook, body: Value) -> Result<Vec<Raw>, HookError> {
    let outputs = filter.run(&Input::new(body)).map_err(|e| {
        HookError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "hook {:?}: its jq mapping failed on this body: {e}",
                hook.name
            ),
            vec![],
        )
    })?;
    let mut out = Vec::new();
    for (i, v) in outputs.into_iter().enumerate() {
        match v {
            Value::Array(items) => {
                out.extend(items.into_iter().enumerate().map(|(j, value)| Raw {
                    at: format!("output {i}[{j}]"),
                    value,
                }))
            }
            value => out.push(Raw {
                at: format!("output {i}"),
                value,
            }),
        }
        if out.len() > hook.max_items {
            return Err(hook.too_many(out.len()));
        }
    }
    Ok(out)
}

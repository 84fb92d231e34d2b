//! Parameter validation with StackStorm's rules and messages: the action's parameters over its
//! runner's, no unknown names, required ones present (or defaulted), JSON types as declared,
//! immutable ones not overridden.

use crate::actions::{ActionSpec, ParamSpec};
use crate::runners::runner_param_map;
use crate::util::py_repr;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The effective schema: runner parameters, overridden field by field by the action's.
fn schema(action: &ActionSpec) -> BTreeMap<String, ParamSpec> {
    let mut out: BTreeMap<String, ParamSpec> = runner_param_map(&action.runner_type)
        .into_iter()
        .filter_map(|(k, v)| Some((k, serde_json::from_value(v).ok()?)))
        .collect();
    for (name, p) in &action.parameters {
        let merged = match out.remove(name) {
            Some(r) => ParamSpec {
                kind: p.kind.clone().or(r.kind),
                default: p.default.clone().or(r.default),
                ..p.clone()
            },
            None => p.clone(),
        };
        out.insert(name.clone(), merged);
    }
    out
}

/// Checks `params` as StackStorm would before creating an execution; the error is the
/// `faultstring` StackStorm would answer with (HTTP 400).
pub fn validate(params: &Map<String, Value>, action: &ActionSpec) -> Result<(), String> {
    let schema = schema(action);
    for (name, p) in &schema {
        if p.required && p.default.is_none() && !params.contains_key(name) {
            return Err(format!("'{name}' is a required property"));
        }
    }
    let unknown: Vec<String> = params
        .keys()
        .filter(|k| !schema.contains_key(*k))
        .map(|k| py_repr(&Value::String(k.clone())))
        .collect();
    match unknown.len() {
        0 => {}
        1 => {
            return Err(format!(
                "Additional properties are not allowed ({} was unexpected)",
                unknown[0]
            ))
        }
        _ => {
            return Err(format!(
                "Additional properties are not allowed ({} were unexpected)",
                unknown.join(", ")
            ))
        }
    }
    for (name, value) in params {
        let Some(p) = schema.get(name) else { continue };
        if let Some(kind) = &p.kind {
            if !type_matches(kind, value) {
                return Err(format!("{} is not of type '{kind}'", py_repr(value)));
            }
        }
        if let Some(choices) = &p.choices {
            if !choices.contains(value) {
                return Err(format!(
                    "{} is not one of {}",
                    py_repr(value),
                    py_repr(&Value::Array(choices.clone()))
                ));
            }
        }
    }
    let overridden: Vec<String> = params
        .keys()
        .filter(|k| schema.get(*k).is_some_and(|p| p.immutable))
        .map(|k| py_repr(&Value::String(k.clone())))
        .collect();
    if !overridden.is_empty() {
        return Err(format!(
            "Override of immutable parameter(s) [{}] is unsupported.",
            overridden.join(", ")
        ));
    }
    Ok(())
}

/// JSON Schema draft 4 type check (an integral float is not an `integer`).
fn type_matches(kind: &str, v: &Value) -> bool {
    match kind {
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "object" => v.is_object(),
        "array" => v.is_array(),
        "null" => v.is_null(),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn action() -> ActionSpec {
        let mut a = ActionSpec::any("ops.clean");
        a.parameters = serde_json::from_value(json!({
            "host": {"type": "string", "required": true},
            "count": {"type": "integer"},
            "mode": {"type": "string", "default": "fast", "immutable": true},
        }))
        .unwrap();
        a
    }

    fn check(p: Value) -> Result<(), String> {
        validate(p.as_object().unwrap(), &action())
    }

    #[test]
    fn stackstorm_messages() {
        assert_eq!(
            check(json!({"host": "a", "count": 2, "timeout": 5})),
            Ok(())
        );
        assert_eq!(
            check(json!({})),
            Err("'host' is a required property".into())
        );
        assert_eq!(
            check(json!({"host": "a", "bogus": 1})),
            Err("Additional properties are not allowed ('bogus' was unexpected)".into())
        );
        assert_eq!(
            check(json!({"host": "a", "count": "two"})),
            Err("'two' is not of type 'integer'".into())
        );
        assert_eq!(
            check(json!({"host": "a", "mode": "slow"})),
            Err("Override of immutable parameter(s) ['mode'] is unsupported.".into())
        );
    }
}

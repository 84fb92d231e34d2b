//! Checking and compiling one parsed rule: names, event types, steps, templates, throttle and
//! approval settings. Every problem is reported with the line it is on where it can be found.

use crate::eval::Paths;
use crate::parse::{Lines, Located};
use crate::render::Approval;
use crate::rule::{short_json, CompiledRule, Throttle};
use crate::step::Step;
use crate::RuleError;
use serde_json::Value;
use std::time::Duration;
use whale_expr::{Compiler, TemplateValue};

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

fn valid_action(s: &str) -> bool {
    s.split_once('.').is_some_and(|(pack, action)| {
        !pack.is_empty()
            && !action.is_empty()
            && valid_name(pack)
            && valid_name(action)
            && !pack.contains('.')
    })
}

/// The first field of a rule that mentions `$item` (a rule without `for_each` must not: the
/// variable would always be null there).
fn uses_item<'a>(
    when: &'a [Value],
    params: Option<&'a Value>,
    route: &'a Option<String>,
    throttle: &'a Option<crate::parse::RawThrottle>,
) -> Option<&'static str> {
    let mut strings: Vec<(&'static str, &str)> = Vec::new();
    strings.extend(route.as_deref().map(|s| ("route", s)));
    strings.extend(
        throttle
            .as_ref()
            .and_then(|t| t.key.as_deref())
            .map(|s| ("throttle.key", s)),
    );
    let mut nested = Vec::new();
    let mut stack: Vec<(&'static str, &Value)> = when.iter().map(|v| ("when", v)).collect();
    stack.extend(params.map(|v| ("params", v)));
    while let Some((field, v)) = stack.pop() {
        match v {
            Value::String(s) => nested.push((field, s.as_str())),
            Value::Array(a) => stack.extend(a.iter().map(|x| (field, x))),
            Value::Object(o) => stack.extend(o.values().map(|x| (field, x))),
            _ => {}
        }
    }
    strings
        .into_iter()
        .chain(nested)
        .find(|(_, s)| mentions_item(s))
        .map(|(f, _)| f)
}

/// `$item` as a whole variable name (not `$items`).
fn mentions_item(s: &str) -> bool {
    s.match_indices(whale_expr::ITEM_VAR).any(|(at, m)| {
        !s[at + m.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
    })
}

/// Compile one parsed rule; every problem found is returned.
pub(crate) fn compile_rule(
    loc: Located,
    file: &str,
    text: &Lines<'_>,
    c: &mut Compiler,
    paths: &mut Paths,
) -> Result<CompiledRule, Vec<RuleError>> {
    let Located { rule: raw, line } = loc;
    let mut errors = Vec::new();
    let mut error = |needle: &str, message: String| {
        // step errors are searched for from the `when:` line on (looked up only for an error:
        // a search per rule made large files compile in quadratic time)
        let from = if message.starts_with("when[") {
            line.and_then(|l| text.find(l, "when:")).or(line)
        } else {
            line
        };
        let at = from.and_then(|l| text.find(l, needle)).or(from);
        errors.push(RuleError {
            file: file.to_owned(),
            line: at,
            rule: Some(raw.name.clone()),
            message,
        });
    };
    if !valid_name(&raw.name) {
        error(
            "name:",
            "`name` must be 1 to 128 characters of A-Z a-z 0-9 _ . -".into(),
        );
    }
    let on = raw.on.into_vec();
    if on.is_empty() {
        error("on:", "`on` needs at least one event type".into());
    }
    for t in &on {
        if t.trim().is_empty() || t.chars().any(char::is_whitespace) {
            error(
                "on:",
                format!("event type {t:?} is empty or contains whitespace"),
            );
        } else if let Err(e) = t
            .contains(['*', '?', '[', ']', '{', '}', '\\'])
            .then(|| globset::Glob::new(t))
            .transpose()
        {
            error(
                t,
                format!("event type pattern {t:?} is not a valid glob: {e}"),
            );
        }
    }
    let for_each = raw.for_each.as_deref().and_then(|src| match c.expr(src) {
        Ok(e) => Some(e),
        Err(e) => {
            error(src.trim(), format!("for_each: {e}"));
            None
        }
    });
    if raw.for_each.is_none() {
        if let Some(field) = uses_item(&raw.when, raw.params.as_ref(), &raw.route, &raw.throttle) {
            error(
                whale_expr::ITEM_VAR,
                format!(
                    "{field}: `{}` is only bound in a rule with `for_each` (add e.g. \
                     `for_each: .detail.alerts[]`)",
                    whale_expr::ITEM_VAR
                ),
            );
        }
    }
    let mut steps = Vec::new();
    for (i, v) in raw.when.iter().enumerate() {
        match Step::compile(v, c, paths, &format!("when[{i}]")) {
            Ok(s) => steps.push(s),
            Err(e) => error(&e.needle, e.message),
        }
    }
    if !valid_action(&raw.action) {
        error(
            "action:",
            format!(
                "`action` must be a StackStorm action ref `pack.action`, got {:?}",
                raw.action
            ),
        );
    }
    let params = match raw.params {
        None => TemplateValue::Literal(Value::Object(Default::default())),
        Some(p @ Value::Object(_)) => c.template_value(&p).unwrap_or_else(|e| {
            let needle = e
                .path
                .rsplit(['.', '['])
                .next()
                .unwrap_or("params")
                .to_owned();
            error(&needle, format!("params.{}: {}", e.path, e.error));
            TemplateValue::Literal(Value::Null)
        }),
        Some(v) => {
            error(
                "params:",
                format!(
                    "`params` must be a mapping of parameter names to values, got {}",
                    short_json(&v)
                ),
            );
            TemplateValue::Literal(Value::Null)
        }
    };
    let mut template =
        |src: &str, field: &str, error: &mut dyn FnMut(&str, String)| match c.template(src) {
            Ok(t) => Some(t),
            Err(e) => {
                error(src, format!("{field}: {e}"));
                None
            }
        };
    let throttle = raw.throttle.map(|t| {
        if t.limit == 0 {
            error("limit:", "`throttle.limit` must be at least 1".into());
        }
        let per = t.per.to_duration().unwrap_or_else(|e| {
            error("per:", format!("throttle.per: {e}"));
            Duration::ZERO
        });
        if per.is_zero() {
            error("per:", "`throttle.per` must be longer than zero".into());
        }
        let key = t
            .key
            .as_deref()
            .and_then(|k| template(k, "throttle.key", &mut error));
        Throttle {
            key,
            limit: t.limit,
            per,
            burst: t.burst,
            mode: t.mode,
            fail_open: t.fail_open,
        }
    });
    let route = raw
        .route
        .as_deref()
        .and_then(|r| template(r, "route", &mut error));
    let approval = raw.approval.map(|a| Approval {
        required: a.required,
        timeout: a.timeout.and_then(|t| {
            t.to_duration()
                .map_err(|e| error("timeout:", format!("approval.timeout: {e}")))
                .ok()
        }),
        channel: a.channel,
    });
    for n in &raw.notify {
        if n.trim().is_empty() {
            error("notify:", "`notify` entries must be channel names".into());
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(CompiledRule {
        name: raw.name,
        description: raw.description,
        enabled: raw.enabled,
        on,
        for_each,
        for_each_src: raw.for_each.map(|s| s.trim().to_owned()),
        steps,
        action: raw.action,
        params,
        throttle,
        route,
        approval,
        notify: raw.notify,
        result_event: raw.result_event,
        file: file.to_owned(),
        line,
    })
}

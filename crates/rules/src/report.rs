//! Offline rule testing (`whale rules test DIR --events F.ndjson`): for each event and each rule
//! listening to its type, whether it matched and, if not, which step failed and the value it
//! saw; for matches, the rendered task. Serializable for `--json`, and a terminal format.

use crate::render::{RenderError, RenderedTask};
use crate::step::StepFailure;
use crate::{CompiledRule, ForEachError, RuleSet};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt::Write as _;
use whale_expr::Input;

/// What the rule set does with one event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventReport {
    /// 0-based position of the event in the input.
    pub index: usize,
    /// The event's `id`, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The event's `event_type`, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    /// One entry per rule listening to the event type, in load order.
    pub rules: Vec<RuleReport>,
    /// Set when the input is not an event envelope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What one rule does with one event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleReport {
    /// The rule's name.
    pub rule: String,
    /// Every step passed.
    pub matched: bool,
    /// For a non-match: the step that failed and what it saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<StepFailure>,
    /// For a match: the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<RenderedTask>,
    /// For a match whose task could not be rendered: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub render_error: Option<RenderError>,
    /// Comparisons that failed on a type mismatch.
    pub type_mismatches: u32,
    /// `jq:` predicates that raised an error.
    pub jq_errors: u32,
    /// For a rule with `for_each`: the expression as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_each: Option<String>,
    /// For a rule with `for_each`: every element and its outcome (`matched` above is true when
    /// one element matched).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub elements: Vec<ElementReport>,
    /// For a rule with `for_each`: the expression failed or yielded too many elements.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_each_error: Option<ForEachError>,
}

/// What one rule does with one element of its `for_each`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ElementReport {
    /// 0-based position among the outputs of `for_each`.
    pub index: usize,
    /// The element (`$item`).
    pub item: Value,
    /// Every step passed with this element.
    pub matched: bool,
    /// For a non-match: the step that failed and what it saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<StepFailure>,
    /// For a match: the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<RenderedTask>,
    /// For a match whose task could not be rendered: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub render_error: Option<RenderError>,
}

impl EventReport {
    /// Rules (or elements) that matched but could not be rendered, and `for_each`
    /// expressions over the element limit: what the pipeline would record as failures.
    /// `whale rules test` exits non-zero when any report has one.
    pub fn failures(&self) -> usize {
        self.rules
            .iter()
            .map(|r| {
                usize::from(r.render_error.is_some())
                    + usize::from(r.for_each_error.as_ref().is_some_and(|e| e.is_over_limit()))
                    + r.elements
                        .iter()
                        .filter(|e| e.render_error.is_some())
                        .count()
            })
            .sum()
    }
}

/// Evaluate every event against the rules listening to its type.
pub fn test_events(set: &RuleSet, events: &[Value]) -> Vec<EventReport> {
    test_events_with(set, events, crate::DEFAULT_MAX_ITEMS)
}

/// [`test_events`] with a bound on the elements of one `for_each`.
pub fn test_events_with(set: &RuleSet, events: &[Value], max_items: usize) -> Vec<EventReport> {
    events
        .iter()
        .enumerate()
        .map(|(index, event)| test_event(set, index, event, max_items))
        .collect()
}

fn render(rule: &CompiledRule, input: &Input) -> (Option<RenderedTask>, Option<RenderError>) {
    match rule.render(input) {
        Ok(t) => (Some(t), None),
        Err(e) => (None, Some(e)),
    }
}

fn fan_out(rule: &CompiledRule, input: &Input, max_items: usize) -> RuleReport {
    let mut report = RuleReport {
        rule: rule.name().to_owned(),
        matched: false,
        failed: None,
        task: None,
        render_error: None,
        type_mismatches: 0,
        jq_errors: 0,
        for_each: rule.for_each().map(str::to_owned),
        elements: Vec::new(),
        for_each_error: None,
    };
    let elements = match rule.elements(input, max_items) {
        Ok(e) => e.unwrap_or_default(),
        Err(e) => {
            report.for_each_error = Some(e);
            return report;
        }
    };
    for el in elements {
        let eval = el.evaluation;
        report.type_mismatches += eval.type_mismatches;
        report.jq_errors += eval.jq_errors;
        report.matched |= eval.matched;
        let (task, render_error) = if eval.matched {
            render(rule, &crate::bind(input, &el.item))
        } else {
            (None, None)
        };
        report.elements.push(ElementReport {
            index: el.index,
            item: el.item,
            matched: eval.matched,
            failed: eval.failed,
            task,
            render_error,
        });
    }
    report
}

fn test_event(set: &RuleSet, index: usize, event: &Value, max_items: usize) -> EventReport {
    let id = event.get("id").and_then(Value::as_str).map(str::to_owned);
    let Some(event_type) = event
        .get("event_type")
        .and_then(Value::as_str)
        .map(str::to_owned)
    else {
        return EventReport {
            index,
            id,
            event_type: None,
            rules: Vec::new(),
            error: Some("not an event envelope: no string \"event_type\"".into()),
        };
    };
    let input = Input::new(event.clone());
    let rules = set
        .rules_for(&event_type)
        .iter()
        .map(|rule| {
            if rule.for_each().is_some() {
                return fan_out(rule, &input, max_items);
            }
            let eval = rule.evaluate(&input);
            let (task, render_error) = if eval.matched {
                render(rule, &input)
            } else {
                (None, None)
            };
            RuleReport {
                rule: rule.name().to_owned(),
                matched: eval.matched,
                failed: eval.failed,
                task,
                render_error,
                type_mismatches: eval.type_mismatches,
                jq_errors: eval.jq_errors,
                for_each: None,
                elements: Vec::new(),
                for_each_error: None,
            }
        })
        .collect();
    EventReport {
        index,
        id,
        event_type: Some(event_type),
        rules,
        error: None,
    }
}

fn cut(s: String, max: usize) -> String {
    if s.chars().count() <= max {
        return s;
    }
    s.chars().take(max - 1).collect::<String>() + "…"
}

/// A terminal rendering of the reports, e.g.
///
/// ```text
/// event #1 01JDX3Q5M7 vm.disk_usage
///   ✔ disk-full-cleanup → ops.clean_disk {"host":"web-12",...} throttle key=shop_web-12 route=trade
///   ✘ disk-warn: step 2 .detail.usage_pct gt 95: saw 93 (the comparison is false)
/// ```
pub fn format_human(reports: &[EventReport]) -> String {
    let mut out = String::new();
    for r in reports {
        let _ = write!(out, "event #{}", r.index + 1);
        if let Some(id) = &r.id {
            let _ = write!(out, " {id}");
        }
        if let Some(t) = &r.event_type {
            let _ = write!(out, " {t}");
        }
        if let Some(e) = &r.error {
            let _ = writeln!(out, ": {e}");
            continue;
        }
        if r.rules.is_empty() {
            out.push_str(": no rule listens to this event type\n");
            continue;
        }
        out.push('\n');
        for rule in &r.rules {
            if let Some(fe) = &rule.for_each {
                format_fan_out(&mut out, rule, fe);
                continue;
            }
            let _ = match (&rule.task, &rule.render_error, &rule.failed) {
                (Some(task), ..) => writeln!(out, "  ✔ {} → {}", rule.rule, task_line(task)),
                (None, Some(e), _) => writeln!(
                    out,
                    "  ! {}: matched, but {}: {}",
                    rule.rule, e.field, e.reason
                ),
                (None, None, Some(f)) => writeln!(out, "  ✘ {}: {}", rule.rule, why_not(f)),
                (None, None, None) => writeln!(out, "  ✘ {}", rule.rule),
            };
            if rule.type_mismatches + rule.jq_errors > 0 {
                let _ = writeln!(
                    out,
                    "      ({} type mismatches, {} jq errors)",
                    rule.type_mismatches, rule.jq_errors
                );
            }
        }
    }
    out
}

/// `step 2 .detail.usage_pct gt 95: saw 93 (the comparison is false)`
fn why_not(f: &StepFailure) -> String {
    let step: Vec<String> = f.index.iter().map(|i| (i + 1).to_string()).collect();
    let saw = match &f.saw {
        Some(v) => format!("saw {}", cut(v.to_string(), 80)),
        None => "saw nothing".into(),
    };
    format!("step {} {}: {saw} ({})", step.join("."), f.step, f.reason)
}

/// A rule with `for_each`: one line for the rule, one per element.
fn format_fan_out(out: &mut String, rule: &RuleReport, fe: &str) {
    if let Some(e) = &rule.for_each_error {
        let mark = if e.is_over_limit() { "!" } else { "✘" };
        let _ = writeln!(out, "  {mark} {}: for_each {}", rule.rule, e.reason);
        return;
    }
    let n = rule.elements.len();
    let mark = if rule.matched { "✔" } else { "✘" };
    let _ = writeln!(
        out,
        "  {mark} {}: for_each {fe} → {n} element{}",
        rule.rule,
        if n == 1 { "" } else { "s" }
    );
    for el in &rule.elements {
        let item = cut(el.item.to_string(), 100);
        let _ = match (&el.task, &el.render_error, &el.failed) {
            (Some(task), ..) => {
                writeln!(out, "      [{}] ✔ {item} → {}", el.index, task_line(task))
            }
            (None, Some(e), _) => writeln!(
                out,
                "      [{}] ! {item}: matched, but {}: {}",
                el.index, e.field, e.reason
            ),
            (None, None, Some(f)) => {
                writeln!(out, "      [{}] ✘ {item}: {}", el.index, why_not(f))
            }
            (None, None, None) => writeln!(out, "      [{}] ✘ {item}", el.index),
        };
    }
}

fn task_line(t: &RenderedTask) -> String {
    let mut s = format!("{} {}", t.action, cut(t.parameters.to_string(), 120));
    if let Some(th) = &t.throttle {
        let _ = write!(
            s,
            " throttle key={} ({} per {})",
            th.key,
            th.limit,
            humantime::format_duration(th.per)
        );
    }
    if let Some(route) = &t.route {
        let _ = write!(s, " route={route}");
    }
    if let Some(a) = t.approval.as_ref().filter(|a| a.required) {
        let _ = write!(
            s,
            " approval={}",
            a.channel.as_deref().unwrap_or("required")
        );
    }
    if !t.notify.is_empty() {
        let _ = write!(s, " notify={}", t.notify.join(","));
    }
    s
}

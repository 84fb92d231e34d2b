//! [`CompiledRule`]: a rule checked and compiled once (steps, templates, regexes), then
//! evaluated and rendered for any number of events.

use crate::eval::Cx;
use crate::render::{Approval, RenderError, RenderedTask, RenderedThrottle, ThrottleMode};
use crate::step::{Counts, Step, StepFailure};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;
use whale_expr::{Input, Template, TemplateValue};

/// A compiled rule.
pub struct CompiledRule {
    pub(crate) name: String,
    pub(crate) description: Option<String>,
    pub(crate) enabled: bool,
    pub(crate) on: Vec<String>,
    pub(crate) for_each: Option<whale_expr::Expr>,
    pub(crate) for_each_src: Option<String>,
    pub(crate) steps: Vec<Step>,
    pub(crate) action: String,
    pub(crate) params: TemplateValue,
    pub(crate) throttle: Option<Throttle>,
    pub(crate) route: Option<Template>,
    pub(crate) approval: Option<Approval>,
    pub(crate) notify: Vec<String>,
    pub(crate) result_event: bool,
    pub(crate) file: String,
    pub(crate) line: Option<usize>,
}

pub(crate) struct Throttle {
    pub(crate) key: Option<Template>,
    pub(crate) limit: u64,
    pub(crate) per: Duration,
    pub(crate) burst: u64,
    pub(crate) mode: ThrottleMode,
    pub(crate) fail_open: bool,
}

/// The result of evaluating a rule's `when` steps on an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Every step passed.
    pub matched: bool,
    /// The first step that failed, and what it saw.
    pub failed: Option<StepFailure>,
    /// Comparisons that failed on a type mismatch (count them in a metric).
    pub type_mismatches: u32,
    /// `jq:` predicates that raised an error (counted as false).
    pub jq_errors: u32,
}

impl std::fmt::Debug for CompiledRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledRule")
            .field("name", &self.name)
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

impl CompiledRule {
    /// The rule's unique name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The human description, if any.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }
    /// Disabled rules are loaded and checked but never listen to events.
    pub fn enabled(&self) -> bool {
        self.enabled
    }
    /// The event types (exact or glob) the rule listens to.
    pub fn event_types(&self) -> &[String] {
        &self.on
    }
    /// The StackStorm action ref.
    pub fn action(&self) -> &str {
        &self.action
    }
    /// The file the rule was loaded from.
    pub fn file(&self) -> &str {
        &self.file
    }
    /// The line of the rule's `name` in its file.
    pub fn line(&self) -> Option<usize> {
        self.line
    }
    /// Number of top-level `when` steps.
    pub fn step_count(&self) -> usize {
        self.steps.len()
    }

    /// The hot path: do all steps pass? Returns the counters too. Allocates nothing for
    /// path steps. (To match many rules against one event, [`crate::RuleSet::match_event`]
    /// shares path lookups between them.)
    pub fn matches(&self, input: &Input) -> (bool, Counts) {
        let mut cx = Cx::new(input);
        let matched = self.matches_in(&mut cx);
        (matched, cx.counts)
    }

    pub(crate) fn matches_in(&self, cx: &mut Cx<'_>) -> bool {
        self.steps.iter().all(|s| s.eval(cx))
    }

    /// Evaluate and, if the rule does not match, explain which step failed and what it saw.
    pub fn evaluate(&self, input: &Input) -> Evaluation {
        let mut cx = Cx::new(input);
        for (i, step) in self.steps.iter().enumerate() {
            if !step.eval(&mut cx) {
                let counts = cx.counts;
                let failed = step.explain(input, &mut vec![i]).or_else(|| {
                    Some(StepFailure {
                        step: step.desc().to_owned(),
                        index: vec![i],
                        saw: None,
                        reason: "the step failed".into(),
                    })
                });
                return Evaluation {
                    matched: false,
                    failed,
                    type_mismatches: counts.type_mismatches,
                    jq_errors: counts.jq_errors,
                };
            }
        }
        let counts = cx.counts;
        Evaluation {
            matched: true,
            failed: None,
            type_mismatches: counts.type_mismatches,
            jq_errors: counts.jq_errors,
        }
    }

    /// Render the task for `input` (call it for events that matched).
    pub fn render(&self, input: &Input) -> Result<RenderedTask, RenderError> {
        let err = |field: String, reason: String| RenderError {
            rule: self.name.clone(),
            field,
            reason,
        };
        let parameters = self.params.render(input).map_err(|e| {
            let field = if e.path.is_empty() {
                "params".into()
            } else {
                format!("params.{}", e.path)
            };
            err(field, format!("{{{{ {} }}}} {}", e.expr, e.reason))
        })?;
        let one = |t: &Template, field: &str| {
            t.render_string(input)
                .map_err(|e| err(field.into(), format!("{{{{ {} }}}} {}", e.expr, e.reason)))
        };
        let throttle = match &self.throttle {
            None => None,
            Some(t) => Some(RenderedThrottle {
                key: match &t.key {
                    Some(k) => one(k, "throttle.key")?,
                    None => self.name.clone(),
                },
                limit: t.limit,
                per: t.per,
                burst: t.burst,
                mode: t.mode,
                fail_open: t.fail_open,
            }),
        };
        let route = match &self.route {
            None => None,
            Some(r) => match r
                .render(input)
                .map_err(|e| err("route".into(), format!("{{{{ {} }}}} {}", e.expr, e.reason)))?
            {
                Value::String(s) => Some(s),
                v => {
                    return Err(err(
                        "route".into(),
                        format!("must render to a string, got {}", short_json(&v)),
                    ))
                }
            },
        };
        Ok(RenderedTask {
            rule: self.name.clone(),
            action: self.action.clone(),
            parameters,
            throttle,
            route,
            approval: self.approval.clone(),
            notify: self.notify.clone(),
            result_event: self.result_event,
        })
    }
}

/// Compact JSON, cut at 120 characters, for messages.
pub(crate) fn short_json(v: &Value) -> String {
    let mut s = v.to_string();
    if s.chars().count() > 120 {
        s = s.chars().take(119).collect::<String>() + "…";
    }
    s
}

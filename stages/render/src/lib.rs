//! render stage: a matched rule's templates — parameters, throttle key, route — rendered from
//! the event into a task for the throttle stage. Failures become `whale.pipe.render_failed`
//! records (rule, field, reason) for the index and `whale trace`, never silent drops.

use async_trait::async_trait;
use whale_kernel::kv::Live;
use whale_kernel::metrics::STAGE_EVENTS;
use whale_kernel::records::{self, Matched, RenderFailed, Task};
use whale_kernel::{Delivery, Outcome, Stage};
use whale_rules::RuleSet;

/// Cluster used when a rule has no route.
pub const DEFAULT_CLUSTER: &str = "default";
/// How long a task waits for a person when the rule names no timeout.
pub const DEFAULT_APPROVAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30 * 60);

pub struct Render {
    pub rules: Live<RuleSet>,
}

impl Render {
    /// Renders one match under `set` (pure; used by the stage and by `whale rules test`).
    pub fn render(set: &RuleSet, m: &Matched) -> Result<Task, Box<RenderFailed>> {
        let failed = |field: &str, reason: String| {
            Box::new(RenderFailed {
                event_id: m.event_id.clone(),
                rule: m.rule.clone(),
                rule_version: m.rule_version.clone(),
                field: field.to_owned(),
                reason,
                item_index: m
                    .item
                    .as_ref()
                    .map(|i| u32::try_from(i.index).unwrap_or(u32::MAX)),
            })
        };
        let Some(rule) = set.get(&m.rule) else {
            return Err(failed(
                "rule",
                format!(
                    "rule {:?} is not in the active rule set {} (removed after the match?)",
                    m.rule,
                    set.version()
                ),
            ));
        };
        let value = serde_json::to_value(&m.event).map_err(|e| failed("event", e.to_string()))?;
        let mut input = whale_expr::Input::new(value);
        if let Some(item) = &m.item {
            input = input.with_item(item.value.clone());
        }
        let t = rule
            .render(&input)
            .map_err(|e| failed(&e.field, e.reason))?;
        Ok(Task {
            task_id: Self::task_id(m),
            event_id: m.event_id.clone(),
            event_type: m.event.event_type.clone(),
            rule: m.rule.clone(),
            rule_version: m.rule_version.clone(),
            action: t.action,
            parameters: t.parameters,
            throttle: t.throttle.map(|th| records::Throttle {
                key: th.key,
                limit: th.limit,
                per_ms: th.per.as_millis() as u64,
                burst: th.burst,
                mode: match th.mode {
                    whale_rules::ThrottleMode::Rate => records::ThrottleMode::Rate,
                    whale_rules::ThrottleMode::OnceWithin => records::ThrottleMode::OnceWithin,
                },
                fail_open: th.fail_open,
            }),
            cluster: t
                .route
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| DEFAULT_CLUSTER.to_owned()),
            approval: t
                .approval
                .filter(|a| a.required)
                .map(|a| records::Approval {
                    timeout_ms: a.timeout.unwrap_or(DEFAULT_APPROVAL_TIMEOUT).as_millis() as u64,
                    channel: a.channel,
                }),
            notify: t.notify,
            result_event: t.result_event,
            replay: m.replay.clone(),
            created: time::OffsetDateTime::now_utc(),
            item: m.item.clone(),
            labels: m.event.labels.clone(),
        })
    }

    /// The task id of a match: from (event, rule), and for a `for_each` element also from a
    /// content hash of the element, so a redelivered or re-matched event gives the same ids.
    pub fn task_id(m: &Matched) -> String {
        match &m.item {
            None => records::task_id(&m.event_id, &m.rule),
            Some(item) => {
                records::item_task_id(&m.event_id, &m.rule, &whale_rules::item_key(&item.value))
            }
        }
    }
}

#[async_trait]
impl Stage for Render {
    fn name(&self) -> &'static str {
        "render"
    }

    async fn handle(&self, d: &Delivery) -> Outcome {
        let m: Matched = match d.decode("match record") {
            Ok(m) => m,
            Err(malformed) => {
                STAGE_EVENTS
                    .with_label_values(&["render", "unreadable"])
                    .inc();
                return malformed;
            }
        };
        let Some(set) = self.rules.current() else {
            return Outcome::Retry {
                delay: std::time::Duration::from_secs(2),
                reason: "no rule set loaded yet".into(),
            };
        };
        let task_id = Self::task_id(&m);
        let out = match Self::render(&set, &m) {
            Ok(task) => {
                STAGE_EVENTS
                    .with_label_values(&["render", "rendered"])
                    .inc();
                task.output()
            }
            Err(f) => {
                STAGE_EVENTS.with_label_values(&["render", "failed"]).inc();
                tracing::info!(parent: &d.span("render"), field = %f.field, "render failed: {}", f.reason);
                f.output(&task_id)
            }
        };
        Outcome::Ack(vec![out])
    }
}

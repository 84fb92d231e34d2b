//! What a finished execution becomes: the result record (`whale.pipe.result`, msg id
//! `res:<task_id>`), the `whale.execution_finished` event when the rule asks for it (so rules
//! can chain on results), and one notification request per channel of the rule's `notify`.
//! Every output has a msg id derived from the task id, so handling a result twice records it
//! once.

use serde_json::{json, Map, Value};
use time::OffsetDateTime;
use whale_kernel::envelope::{format_time, Envelope};
use whale_kernel::records::{
    self, Dispatched, ExecStatus, ExecutionResult, Link, NotifyKind, NotifyRequest,
    CHAIN_DEPTH_LABEL,
};
use whale_kernel::subjects::{self, HDR_EVENT_ID, HDR_RULE, HDR_TASK_ID};
use whale_kernel::Output;
use whale_st2::Execution;

use crate::notify::Channels;

/// Event type of the result event.
pub const FINISHED_TYPE: &str = "whale.execution_finished";

/// Longest string kept from a result field, and the most kept of a result without known fields.
const FIELD_MAX: usize = 2048;
const WHOLE_MAX: usize = 4096;

/// The result record of `d`'s execution, finished as `e`.
pub fn record(d: &Dispatched, e: &Execution) -> ExecutionResult {
    let elapsed = e.elapsed_seconds.or_else(|| {
        let (s, f) = (e.start_time()?, e.end_time()?);
        Some((f - s).as_seconds_f64())
    });
    ExecutionResult {
        task: d.task.clone(),
        cluster: d.cluster.clone(),
        execution_id: d.execution_id.clone(),
        status: e
            .status()
            .map_or(ExecStatus::Abandoned, |s| ExecStatus::parse(s.as_str())),
        elapsed_seconds: elapsed,
        summary: summary(e.result.as_ref()),
        web_url: e.web_url.clone().or_else(|| d.web_url.clone()),
        finished: e
            .end_time()
            .unwrap_or_else(OffsetDateTime::now_utc)
            .to_offset(time::UtcOffset::UTC),
    }
}

/// A bounded summary of StackStorm's `result`: the fields people read (stdout, stderr, return
/// code, error, ...) each cut to 2 KiB, or, for other shapes, the JSON cut to 4 KiB.
pub fn summary(result: Option<&Value>) -> Value {
    const KEYS: [&str; 9] = [
        "return_code",
        "succeeded",
        "failed",
        "stdout",
        "stderr",
        "error",
        "message",
        "output",
        "errors",
    ];
    let Some(r) = result else { return Value::Null };
    if let Value::Object(m) = r {
        let mut out = Map::new();
        for k in KEYS {
            if let Some(v) = m.get(k) {
                out.insert(k.to_owned(), bound(v, FIELD_MAX));
            }
        }
        if !out.is_empty() {
            return Value::Object(out);
        }
    }
    bound(r, WHOLE_MAX)
}

fn bound(v: &Value, max: usize) -> Value {
    match v {
        Value::String(s) => Value::String(cut(s, max)),
        other => {
            let text = other.to_string();
            if text.len() <= max {
                other.clone()
            } else {
                Value::String(cut(&text, max))
            }
        }
    }
}

/// `s` cut to at most `max` bytes on a character boundary, marked with `…` when cut.
pub fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Every output of a finished execution.
/// A result event whose chain depth is over `max_chain_depth` goes to
/// `whale.rejected.whale.execution_finished` (indexed, traceable, never matched) instead of
/// back into the rules.
pub fn outputs(
    d: &Dispatched,
    rec: &ExecutionResult,
    channels: &Channels,
    max_chain_depth: u32,
) -> Vec<Output> {
    let task = &d.task;
    let mut out = vec![rec.output()];
    if task.result_event {
        let ev = finished_event(rec);
        let depth = chain_depth(&ev.labels);
        let o = if depth > max_chain_depth {
            whale_kernel::metrics::STAGE_EVENTS
                .with_label_values(&["feedback", "chain_stopped"])
                .inc();
            let rejection = json!({
                "id": ev.id,
                "event_type": FINISHED_TYPE,
                "received": format_time(OffsetDateTime::now_utc()),
                "reasons": [{
                    "pointer": format!("/labels/{CHAIN_DEPTH_LABEL}"),
                    "message": format!(
                        "chain depth {depth} is over the limit of {max_chain_depth} (rules.max_chain_depth): \
                         this result of rule {:?} is recorded but not fed back to the rules \
                         (a rule firing on its own results?)",
                        task.rule
                    ),
                }],
                "event": ev,
            });
            Output::json(
                subjects::rejected(Some(FINISHED_TYPE)),
                format!("rej:{}", ev.id),
                &rejection,
            )
        } else {
            Output::json(subjects::ingest(FINISHED_TYPE), ev.id.clone(), &ev)
        };
        out.push(
            o.header(HDR_EVENT_ID, ev.id.clone())
                .header(HDR_RULE, task.rule.clone())
                .header(HDR_TASK_ID, task.task_id.clone()),
        );
    }
    let input = template_input(rec);
    for channel in &task.notify {
        let req = NotifyRequest {
            id: records::msg_id::notify(NotifyKind::Result, &task.task_id, channel),
            channel: channel.clone(),
            kind: NotifyKind::Result,
            task_id: task.task_id.clone(),
            event_id: task.event_id.clone(),
            rule: task.rule.clone(),
            text: channels.result_text(channel, &input),
            links: rec
                .web_url
                .iter()
                .map(|u| Link {
                    label: "open in StackStorm".into(),
                    url: u.clone(),
                })
                .collect(),
            record: json!({"kind": "result", "channel": channel, "event": input["event"], "result": input["result"], "task": input["task"]}),
            created: OffsetDateTime::now_utc(),
        };
        out.push(req.output());
    }
    out
}

/// `whale.execution_finished`: the event rules see when an execution ends. Its id derives from
/// the task id, so a redelivered result cannot make a second event.
///
/// It keeps the labels of the event the task came from (so routing and tenancy labels follow a
/// chain) and carries the chain depth: the origin's depth plus one, in the label
/// [`CHAIN_DEPTH_LABEL`] and in `detail.chain_depth`. `whale_replay_rule` is not carried: a
/// replay of one rule must not keep other rules from acting on its results.
pub fn finished_event(rec: &ExecutionResult) -> Envelope {
    let t = &rec.task;
    let depth = chain_depth(&t.labels) + 1;
    let mut labels = t.labels.clone();
    labels.remove("whale_replay_rule");
    labels.insert(CHAIN_DEPTH_LABEL.into(), depth.to_string());
    Envelope {
        id: format!("fin-{}", t.task_id),
        event_type: FINISHED_TYPE.into(),
        source: "whale/feedback".into(),
        time: format_time(rec.finished),
        detail: json!({
            "task_id": t.task_id,
            "rule": t.rule,
            "event_id": t.event_id,
            "event_type": t.event_type,
            "action": t.action,
            "cluster": rec.cluster,
            "execution_id": rec.execution_id,
            "status": rec.status,
            "succeeded": rec.status == ExecStatus::Succeeded,
            "elapsed_seconds": rec.elapsed_seconds,
            "web_url": rec.web_url,
            "summary": rec.summary,
            "finished": format_time(rec.finished),
            "chain_depth": depth,
        }),
        labels,
    }
}

/// The chain depth an event's labels carry (0 without the label or when it is not a number).
pub fn chain_depth(labels: &std::collections::BTreeMap<String, String>) -> u32 {
    labels
        .get(CHAIN_DEPTH_LABEL)
        .and_then(|d| d.parse().ok())
        .unwrap_or(0)
}

/// What message templates see: `{event, task, result}`. The event is what whale carries with
/// the task (its id and type); the rendered parameters are under `.task.parameters`.
pub fn template_input(rec: &ExecutionResult) -> Value {
    let mut result = serde_json::to_value(rec).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut result {
        m.remove("task");
    }
    json!({
        "event": {"id": rec.task.event_id, "event_type": rec.task.event_type},
        "task": rec.task,
        "result": result,
    })
}

/// The message when a channel has no template.
pub fn default_text(input: &Value) -> String {
    let s = |p: &str| {
        input
            .pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned()
    };
    let status = s("/result/status");
    let mark = match status.as_str() {
        "succeeded" => "✅",
        "canceled" => "⏹",
        _ => "❌",
    };
    let elapsed = input
        .pointer("/result/elapsed_seconds")
        .and_then(Value::as_f64)
        .map(|e| format!(" in {e:.1}s"))
        .unwrap_or_default();
    let mut text = format!(
        "{mark} **{}** {status}{elapsed}\n> action `{}` on cluster `{}`, execution `{}`\n> event `{}` ({}), task `{}`",
        s("/task/rule"),
        s("/task/action"),
        s("/result/cluster"),
        s("/result/execution_id"),
        s("/event/id"),
        s("/event/event_type"),
        s("/task/task_id"),
    );
    let summary = input.pointer("/result/summary");
    let detail = summary
        .and_then(|v| {
            v.get("error")
                .or_else(|| v.get("stderr"))
                .filter(|_| status != "succeeded")
        })
        .or_else(|| summary.and_then(|v| v.get("stdout")))
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|t| !t.is_empty());
    if let Some(d) = detail {
        text.push_str(&format!("\n```\n{}\n```", cut(d, 600)));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_are_bounded_and_keep_known_fields() {
        let big = "x".repeat(10_000);
        let s = summary(Some(&json!({"stdout": big, "return_code": 0, "other": 1})));
        assert_eq!(s["return_code"], 0);
        assert!(s["stdout"].as_str().unwrap().len() <= FIELD_MAX + 3);
        assert!(s.get("other").is_none());
        let s = summary(Some(&json!({"freed": vec![1; 5000]})));
        assert!(s.as_str().unwrap().len() <= WHOLE_MAX + 3);
        assert_eq!(cut("héllo", 4), "h…");
    }

    /// A result record written before tasks carried labels and elements (no `item`, no
    /// `labels`): it still decodes, and its result event starts a chain at depth 1.
    fn old_record() -> ExecutionResult {
        serde_json::from_value(json!({
            "task": {
                "task_id": "t-1", "event_id": "e-1", "event_type": "vm.disk_usage",
                "rule": "r", "rule_version": "v", "action": "ops.x", "parameters": {},
                "cluster": "default", "result_event": true, "created": "2026-01-01T00:00:00Z"
            },
            "cluster": "default", "execution_id": "x-1", "status": "succeeded",
            "finished": "2026-01-01T00:00:01Z"
        }))
        .unwrap()
    }

    #[test]
    fn result_events_keep_the_labels_and_count_the_chain() {
        let mut rec = old_record();
        let ev = finished_event(&rec);
        assert_eq!(ev.labels.len(), 1);
        assert_eq!(ev.labels[CHAIN_DEPTH_LABEL], "1");
        assert_eq!(ev.detail["chain_depth"], 1);
        rec.task.labels = [
            ("biz", "trade"),
            (CHAIN_DEPTH_LABEL, "2"),
            ("whale_replay_rule", "r"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let ev = finished_event(&rec);
        assert_eq!(ev.labels["biz"], "trade");
        assert_eq!(ev.labels[CHAIN_DEPTH_LABEL], "3");
        assert!(!ev.labels.contains_key("whale_replay_rule"));
        assert_eq!(chain_depth(&ev.labels), 3);
    }

    #[test]
    fn message_templates_see_the_element_of_a_fanned_out_task() {
        use whale_kernel::config::{ChannelConfig, ChannelKind, Config, Secret};
        let mut cfg = Config::default();
        cfg.channels.insert(
            "ops".into(),
            ChannelConfig {
                kind: ChannelKind::Webhook,
                url: None,
                url_env: None,
                key_env: None,
                template: Some("{{ $item.labels.instance }}: {{ .result.status }}".into()),
                endpoint: Some(Secret::new("http://127.0.0.1:9/hook")),
                bearer: None,
            },
        );
        let channels = Channels::from_config(&cfg).unwrap();
        let mut rec = old_record();
        rec.task.item = Some(whale_kernel::records::Item {
            index: 1,
            value: json!({"labels": {"instance": "web-2:9100"}}),
        });
        let text = channels.result_text("ops", &template_input(&rec));
        assert_eq!(text, "web-2:9100: succeeded");
    }
}

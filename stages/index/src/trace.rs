//! One event's story (`whale trace EVENT_ID`): every document the index holds for the event id —
//! and for the tasks it led to — in the order things happened, each step with a one-line summary
//! and the lines that explain it (why rejected, which parameters, which throttle key, which
//! cluster and execution). The CLI prints it for people or as JSON.

use serde::Serialize;
use serde_json::Value;

use crate::backend::{Backend, Error, Order, Search};
use crate::doc::Doc;
use crate::query::{Field, Pred, Query};

/// Most documents a trace reads.
const TRACE_LIMIT: usize = 10_000;
/// Most task ids looked up in one search (well under OpenSearch's 1024 clauses).
const TASKS_PER_SEARCH: usize = 200;

/// One event's story.
#[derive(Debug, Clone, Serialize)]
pub struct Trace {
    pub event_id: String,
    /// `accepted`, `rejected`, or `unknown` (the index holds nothing about this event).
    pub outcome: String,
    /// The event as accepted, or as it was when rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<Value>,
    /// What happened, in order.
    pub steps: Vec<Step>,
    /// Rules that listened to the event's type but did not match, and why. The index does not
    /// know this (nothing is published for a rule that does not match): it is filled by
    /// evaluating the rule set against `event` with the rules crate — see `src/cli/trace.rs`.
    pub not_matched: Vec<NotMatched>,
    /// The rule-set version `not_matched` was evaluated with (filled with it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule_version: Option<String>,
    /// Why that version: recorded on the match, in force when the event was accepted, or the
    /// active one when neither is known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule_version_from: Option<String>,
}

/// A rule that listened to the event's type and did not match.
#[derive(Debug, Clone, Serialize)]
pub struct NotMatched {
    pub rule: String,
    /// Which condition failed and why.
    pub reason: String,
}

/// One record of the story.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub kind: String,
    /// When it was stored on NATS (the order of the story).
    pub seen: String,
    pub time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// One line for people.
    pub summary: String,
    /// Further lines: reasons, parameters, throttle key, ...
    pub details: Vec<String>,
    /// The record as it arrived.
    pub record: Value,
}

/// Reads the story of `event_id` from `backend`.
pub async fn trace(backend: &dyn Backend, event_id: &str) -> Result<Trace, Error> {
    let by = |field: &'static str, values: Vec<String>| {
        let mut s = Search::new(Query::Or(
            values
                .into_iter()
                .map(|v| Query::Clause(Field::Keyword(field), Pred::Phrase(v)))
                .collect(),
        ));
        s.limit = TRACE_LIMIT;
        s.order = Order::SeenFirst;
        s
    };
    let mut docs = backend
        .search(&by("event_id", vec![event_id.to_owned()]))
        .await?
        .hits;
    // Records that name only the task (none should, but a stage may) still belong to the story.
    let mut tasks: Vec<String> = docs.iter().filter_map(|d| d.task_id.clone()).collect();
    tasks.sort();
    tasks.dedup();
    // In groups, so that no search goes over a backend's clause limit however many tasks.
    for group in tasks.chunks(TASKS_PER_SEARCH) {
        for d in backend.search(&by("task_id", group.to_vec())).await?.hits {
            if !docs.iter().any(|x| x.id == d.id) {
                docs.push(d);
            }
        }
    }
    Ok(assemble(event_id, docs))
}

/// Orders documents into a story (pure; [`trace`] fetches them).
pub fn assemble(event_id: &str, mut docs: Vec<Doc>) -> Trace {
    docs.sort_by(|a, b| {
        a.seen
            .cmp(&b.seen)
            .then(rank(&a.kind).cmp(&rank(&b.kind)))
            .then_with(|| a.id.cmp(&b.id))
    });
    let accepted = docs.iter().find(|d| d.kind == "event");
    let rejected = docs.iter().find(|d| d.kind == "rejected");
    let (outcome, event) = match (accepted, rejected) {
        (Some(a), _) => ("accepted", Some(a.record.clone())),
        (None, Some(r)) => (
            "rejected",
            r.record.get("event").cloned().filter(|e| !e.is_null()),
        ),
        (None, None) => ("unknown", None),
    };
    Trace {
        event_id: event_id.to_owned(),
        outcome: outcome.into(),
        event,
        steps: docs.iter().map(step).collect(),
        not_matched: Vec::new(),
        rule_version: None,
        rule_version_from: None,
    }
}

/// Tie-break for records stored in the same millisecond: pipeline order.
fn rank(kind: &str) -> u8 {
    match kind {
        "event" | "rejected" => 0,
        "matched" => 1,
        "render_failed" | "task" => 2,
        "admitted" | "throttled" => 3,
        "approval" => 4,
        "decision" => 5,
        "dispatched" | "dead_letter" => 6,
        "result" => 7,
        "unparsed" => 9,
        _ => 8,
    }
}

fn get<'a>(r: &'a Value, key: &str) -> Option<&'a Value> {
    r.get(key).filter(|v| !v.is_null()).or_else(|| {
        r.get("task")
            .and_then(|t| t.get(key))
            .filter(|v| !v.is_null())
    })
}

fn s(r: &Value, key: &str) -> String {
    match get(r, key) {
        Some(Value::String(x)) => x.clone(),
        Some(v) => v.to_string(),
        None => "?".into(),
    }
}

/// Compact JSON, cut to `max` characters.
pub fn compact(v: &Value, max: usize) -> String {
    let s = v.to_string();
    if s.chars().count() <= max {
        s
    } else {
        let cut: String = s.chars().take(max).collect();
        format!("{cut}…")
    }
}

/// The step of one document: kind, summary line, explaining lines.
pub fn step(d: &Doc) -> Step {
    let r = &d.record;
    let mut details = Vec::new();
    let summary = match d.kind.as_str() {
        "event" => {
            if let Some(detail) = r.get("detail") {
                details.push(format!("detail: {}", compact(detail, 400)));
            }
            if let Some(l) = r
                .get("labels")
                .filter(|l| l.as_object().is_some_and(|m| !m.is_empty()))
            {
                details.push(format!("labels: {}", compact(l, 200)));
            }
            format!(
                "accepted: {} from {}, event time {}",
                s(r, "event_type"),
                s(r, "source"),
                s(r, "time")
            )
        }
        "rejected" => {
            for reason in r
                .get("reasons")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let pointer = reason.get("pointer").and_then(Value::as_str).unwrap_or("");
                let msg = reason.get("message").and_then(Value::as_str).unwrap_or("");
                details.push(format!(
                    "{}: {msg}",
                    if pointer.is_empty() {
                        "(event)"
                    } else {
                        pointer
                    }
                ));
            }
            if let Some(raw) = r.get("raw").and_then(Value::as_str) {
                details.push(format!("raw: {}", compact(&Value::String(raw.into()), 200)));
            }
            let n = r
                .get("reasons")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            format!("rejected ({n} reason{})", if n == 1 { "" } else { "s" })
        }
        "matched" => {
            if let Some(rp) = get(r, "replay") {
                details.push(format!("replay run {rp}"));
            }
            if let Some(item) = get(r, "item") {
                details.push(format!("$item: {}", compact(&item["value"], 300)));
            }
            match get(r, "item").and_then(|i| i.get("index")) {
                Some(i) => format!(
                    "matched rule {} for element {i} of its for_each (rule set {})",
                    s(r, "rule"),
                    s(r, "rule_version")
                ),
                None => format!(
                    "matched rule {} (rule set {})",
                    s(r, "rule"),
                    s(r, "rule_version")
                ),
            }
        }
        "render_failed" => match get(r, "item_index") {
            Some(i) => format!(
                "rule {}: element {i}: rendering {} failed: {}",
                s(r, "rule"),
                s(r, "field"),
                s(r, "reason")
            ),
            None => format!(
                "rule {}: rendering {} failed: {}",
                s(r, "rule"),
                s(r, "field"),
                s(r, "reason")
            ),
        },
        "task" => {
            task_details(r, &mut details);
            format!(
                "task {}: {} on cluster {}",
                s(r, "task_id"),
                s(r, "action"),
                s(r, "cluster")
            )
        }
        "admitted" => format!("admitted by the throttle for cluster {}", s(r, "cluster")),
        "throttled" => {
            task_details(r, &mut details);
            format!(
                "throttled: {} (next token in {} ms)",
                s(r, "reason"),
                s(r, "retry_after_ms")
            )
        }
        "dispatched" => format!(
            "dispatched to cluster {}: execution {}",
            d.cluster.as_deref().unwrap_or("?"),
            d.execution_id.as_deref().unwrap_or("?")
        ),
        "dead_letter" => {
            if let Some(f) = get(r, "faultstring") {
                details.push(format!("StackStorm said: {}", compact(f, 300)));
            }
            format!(
                "dead letter on cluster {} after {} attempt(s): {}",
                s(r, "cluster"),
                s(r, "attempts"),
                s(r, "reason")
            )
        }
        "audit" => {
            if let Some(reason) = r.get("reason").and_then(Value::as_str) {
                details.push(format!("reason: {reason}"));
            }
            if let (Some(b), Some(a)) = (r.get("before"), r.get("after")) {
                details.push(format!(
                    "before {} → after {}",
                    compact(b, 300),
                    compact(a, 300)
                ));
            }
            if let Some(x) = r.get("details") {
                details.push(compact(x, 300));
            }
            if let Some(e) = r.get("error").and_then(Value::as_str) {
                details.push(format!("error: {e}"));
            }
            format!(
                "audit: {} {} {} {} via {} from {}: {}",
                s(r, "who"),
                s(r, "action"),
                r.get("target").map_or("?".into(), |t| s(t, "kind")),
                r.get("target").map_or("?".into(), |t| s(t, "id")),
                s(r, "via"),
                s(r, "from"),
                s(r, "outcome")
            )
        }
        "unparsed" => {
            details.push(format!("raw: {}", compact(&r["raw"], 200)));
            format!("unreadable record on {}", d.subject)
        }
        kind => {
            details.push(compact(d.detail.as_ref().unwrap_or(r), 400));
            match (&d.status, kind) {
                (Some(st), "result") => format!("result: {st}"),
                (Some(st), "decision") => format!("approval decision: {st}"),
                (_, "approval") => "waiting for approval".to_string(),
                (Some(st), k) => format!("{k}: {st}"),
                (None, k) => k.to_string(),
            }
        }
    };
    if let Some(e) = &d.index_error {
        details.push(format!("(stored without detail: {e})"));
    }
    Step {
        kind: d.kind.clone(),
        seen: crate::time::format_ms(d.seen),
        time: d.time_str(),
        rule: d.rule.clone(),
        task_id: d.task_id.clone(),
        cluster: d.cluster.clone(),
        execution_id: d.execution_id.clone(),
        status: d.status.clone(),
        summary,
        details,
        record: d.record.clone(),
    }
}

fn task_details(r: &Value, details: &mut Vec<String>) {
    if let Some(p) = get(r, "parameters") {
        details.push(format!("parameters: {}", compact(p, 400)));
    }
    if let Some(t) = get(r, "throttle") {
        details.push(format!(
            "throttle key {} ({} per {} ms, burst {})",
            s(t, "key"),
            s(t, "limit"),
            s(t, "per_ms"),
            s(t, "burst")
        ));
    }
    if let Some(a) = get(r, "approval") {
        details.push(format!("needs approval: {}", compact(a, 200)));
    }
}

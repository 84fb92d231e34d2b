//! The documents StackStorm sends and receives, typed loosely on purpose: StackStorm drops
//! every falsy field from an execution, so everything but `id` is optional, and unknown fields
//! are ignored so a newer StackStorm does not break an older whale.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;

/// An execution status. Unknown values from a newer StackStorm are kept as `Other`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum Status {
    Requested,
    Scheduled,
    Delayed,
    Running,
    Succeeded,
    Failed,
    Timeout,
    Abandoned,
    Canceling,
    Canceled,
    Pending,
    Pausing,
    Paused,
    Resuming,
    Other(String),
}

impl Status {
    /// The wire spelling.
    pub fn as_str(&self) -> &str {
        match self {
            Status::Requested => "requested",
            Status::Scheduled => "scheduled",
            Status::Delayed => "delayed",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Timeout => "timeout",
            Status::Abandoned => "abandoned",
            Status::Canceling => "canceling",
            Status::Canceled => "canceled",
            Status::Pending => "pending",
            Status::Pausing => "pausing",
            Status::Paused => "paused",
            Status::Resuming => "resuming",
            Status::Other(s) => s,
        }
    }

    /// StackStorm's completed states: succeeded, failed, timeout, canceled, abandoned.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Status::Succeeded
                | Status::Failed
                | Status::Timeout
                | Status::Canceled
                | Status::Abandoned
        )
    }

    /// The failure subset of the terminal states: failed, timeout, abandoned.
    pub fn is_failure(&self) -> bool {
        matches!(self, Status::Failed | Status::Timeout | Status::Abandoned)
    }
}

impl From<String> for Status {
    fn from(s: String) -> Self {
        match s.as_str() {
            "requested" => Status::Requested,
            "scheduled" => Status::Scheduled,
            "delayed" => Status::Delayed,
            "running" => Status::Running,
            "succeeded" => Status::Succeeded,
            "failed" => Status::Failed,
            "timeout" => Status::Timeout,
            "abandoned" => Status::Abandoned,
            "canceling" => Status::Canceling,
            "canceled" => Status::Canceled,
            "pending" => Status::Pending,
            "pausing" => Status::Pausing,
            "paused" => Status::Paused,
            "resuming" => Status::Resuming,
            _ => Status::Other(s),
        }
    }
}

impl From<Status> for String {
    fn from(s: Status) -> Self {
        s.as_str().to_owned()
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The part of the embedded Action document a client usually needs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ActionInfo {
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pack: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner_type: Option<String>,
}

/// One `{timestamp, status}` transition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    #[serde(default)]
    pub timestamp: Option<String>,
    #[serde(default)]
    pub status: Option<Status>,
}

/// A StackStorm execution (`ActionExecutionAPI`). Timestamps stay strings as sent
/// (`2026-01-02T03:04:05.123456Z`); see [`Execution::start_time`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Execution {
    pub id: String,
    pub status: Option<Status>,
    pub action: Option<ActionInfo>,
    pub runner: Option<Value>,
    pub liveaction: Option<Value>,
    pub parameters: Option<Map<String, Value>>,
    pub context: Option<Value>,
    pub result: Option<Value>,
    pub start_timestamp: Option<String>,
    pub end_timestamp: Option<String>,
    pub elapsed_seconds: Option<f64>,
    pub web_url: Option<String>,
    pub parent: Option<String>,
    pub children: Option<Vec<String>>,
    pub log: Option<Vec<LogEntry>>,
    pub rule: Option<Value>,
    pub trigger: Option<Value>,
    pub trigger_instance: Option<Value>,
    pub delay: Option<u64>,
}

impl Execution {
    /// The status, if StackStorm sent one.
    pub fn status(&self) -> Option<&Status> {
        self.status.as_ref()
    }

    /// True once the execution reached a completed state.
    pub fn is_terminal(&self) -> bool {
        self.status.as_ref().is_some_and(Status::is_terminal)
    }

    /// `action.ref`.
    pub fn action_ref(&self) -> Option<&str> {
        self.action.as_ref()?.r#ref.as_deref()
    }

    /// `context.trace_context.trace_tag`.
    pub fn trace_tag(&self) -> Option<&str> {
        self.context
            .as_ref()?
            .pointer("/trace_context/trace_tag")?
            .as_str()
    }

    /// `start_timestamp` parsed.
    pub fn start_time(&self) -> Option<time::OffsetDateTime> {
        crate::timefmt::parse(self.start_timestamp.as_deref()?)
    }

    /// `end_timestamp` parsed.
    pub fn end_time(&self) -> Option<time::OffsetDateTime> {
        crate::timefmt::parse(self.end_timestamp.as_deref()?)
    }
}

/// The body of `POST /api/v1/executions`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ExecutionRequest {
    /// Action ref, `pack.name`.
    pub action: String,
    /// Action parameters (a JSON object; `null` sends `{}`).
    pub parameters: Value,
    /// Merged into the execution's context; whale puts `whale` and `trace_context` here.
    pub context: Value,
}

impl ExecutionRequest {
    /// The context whale sends: `{"whale": {event_id, rule, task_id}, "trace_context": {"trace_tag": task_id}}`.
    pub fn whale_context(event_id: &str, rule: &str, task_id: &str) -> Value {
        serde_json::json!({
            "whale": {"event_id": event_id, "rule": rule, "task_id": task_id},
            "trace_context": {"trace_tag": task_id},
        })
    }

    /// [`Self::whale_context`] plus the W3C trace context of the event, when it has one:
    /// `whale.traceparent`, so StackStorm's side of the work can be joined to whale's trace.
    pub fn whale_context_traced(
        event_id: &str,
        rule: &str,
        task_id: &str,
        traceparent: Option<&str>,
    ) -> Value {
        let mut context = Self::whale_context(event_id, rule, task_id);
        if let (Some(tp), Some(whale)) = (traceparent, context.get_mut("whale")) {
            whale["traceparent"] = Value::String(tp.to_owned());
        }
        context
    }
}

/// One server-sent event: `event: <name>` and its JSON `data`.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamEvent {
    /// `<exchange>__<routing_key>`, e.g. `st2.execution__update`.
    pub event: String,
    /// The decoded JSON payload (a string when the data was not JSON).
    pub data: Value,
}

impl StreamEvent {
    /// The execution carried by `st2.execution__*` events.
    pub fn execution(&self) -> Option<Execution> {
        if !self.event.starts_with("st2.execution__") {
            return None;
        }
        serde_json::from_value(self.data.clone()).ok()
    }
}

/// One entry of a trace's `action_executions`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct TraceComponent {
    pub object_id: String,
    #[serde(rename = "ref")]
    pub r#ref: Option<String>,
    pub updated_at: Option<String>,
}

/// A trace (`GET /api/v1/traces`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Trace {
    pub id: String,
    pub trace_tag: Option<String>,
    pub start_timestamp: Option<String>,
    pub action_executions: Vec<TraceComponent>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_id_is_required_and_unknown_fields_are_ignored() {
        let e: Execution = serde_json::from_value(json!({"id": "x"})).unwrap();
        assert_eq!(
            (e.id.as_str(), e.status.is_none(), e.is_terminal()),
            ("x", true, false)
        );
        assert!(serde_json::from_value::<Execution>(json!({"status": "running"})).is_err());

        let e: Execution = serde_json::from_value(json!({
            "id": "y", "status": "brand_new_status", "some_future_field": {"a": 1},
            "action": {"ref": "a.b", "runner_type": "orquesta", "output_schema": {}},
            "log": [{"timestamp": "2026-01-02T03:04:05.123456Z", "status": "requested", "x": 1}],
            "context": {"trace_context": {"trace_tag": "t"}}, "children": null,
        }))
        .unwrap();
        assert_eq!(e.status, Some(Status::Other("brand_new_status".into())));
        assert_eq!((e.action_ref(), e.trace_tag()), (Some("a.b"), Some("t")));
        assert_eq!(e.log.unwrap()[0].status, Some(Status::Requested));
    }

    #[test]
    fn terminal_states_are_stackstorms() {
        let terminal: Vec<_> = [
            "succeeded",
            "failed",
            "timeout",
            "canceled",
            "abandoned",
            "paused",
            "pending",
            "canceling",
        ]
        .into_iter()
        .map(|s| Status::from(s.to_owned()).is_terminal())
        .collect();
        assert_eq!(
            terminal,
            [true, true, true, true, true, false, false, false]
        );
        assert_eq!(
            serde_json::to_value(Status::Paused).unwrap(),
            json!("paused")
        );
    }
}

//! One execution record and how it looks on the wire: the Execution document of
//! `ActionExecutionAPI` (falsy fields dropped, `action` and `runner` as whole documents), its
//! output chunks, and the result each runner would produce.

use crate::actions::ActionSpec;
use crate::runners::runner_doc;
use crate::util::{drop_falsy, fmt_ts};
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use tokio::sync::Notify;

/// StackStorm's completed states.
pub const TERMINAL: &[&str] = &["succeeded", "failed", "timeout", "canceled", "abandoned"];

pub fn is_terminal(status: &str) -> bool {
    TERMINAL.contains(&status)
}

/// Time spent in `running`, which stops while paused.
#[derive(Debug, Default)]
pub struct RunClock {
    pub since: Option<Instant>,
    pub done: Duration,
    pub lines_sent: usize,
}

impl RunClock {
    pub fn elapsed(&self, now: Instant) -> Duration {
        self.done + self.since.map_or(Duration::ZERO, |s| now - s)
    }

    pub fn stop(&mut self, now: Instant) {
        self.done = self.elapsed(now);
        self.since = None;
    }
}

#[derive(Debug)]
pub struct Exec {
    pub id: String,
    pub liveaction_id: String,
    pub action: ActionSpec,
    pub status: String,
    pub params: Map<String, Value>,
    pub context: Map<String, Value>,
    pub result: Value,
    pub start: OffsetDateTime,
    pub end: Option<OffsetDateTime>,
    pub log: Vec<(OffsetDateTime, String)>,
    pub parent: Option<String>,
    pub children: Vec<String>,
    pub output: Vec<Value>,
    pub delay_ms: u64,
    /// When the status last changed (drives the automatic steps).
    pub phase_at: Instant,
    pub clock: RunClock,
    pub notify: Arc<Notify>,
}

impl Exec {
    /// The Execution document.
    pub fn doc(&self, webui: &str) -> Value {
        let runner = runner_doc(&self.action.runner_type).unwrap_or_default();
        let log: Vec<Value> = self
            .log
            .iter()
            .map(|(t, s)| json!({"timestamp": fmt_ts(*t), "status": s}))
            .collect();
        let elapsed = self
            .end
            .map(|e| ((e - self.start).as_seconds_f64() * 1e6).round() / 1e6);
        let doc = json!({
            "id": self.id,
            "action": self.action.doc(),
            "runner": runner,
            "liveaction": {
                "id": self.liveaction_id,
                "action": self.action.r#ref,
                "action_is_workflow": self.action.is_workflow(),
                "callback": {},
                "runner_info": {"hostname": "st2-emulator", "pid": std::process::id()},
                "parameters": self.params,
            },
            "status": self.status,
            "start_timestamp": fmt_ts(self.start),
            "end_timestamp": self.end.map(fmt_ts),
            "elapsed_seconds": elapsed,
            "web_url": format!("{}/#/history/{}/general", webui.trim_end_matches('/'), self.id),
            "parameters": self.params,
            "context": self.context,
            "result": self.result,
            "parent": self.parent,
            "children": self.children,
            "log": log,
            "delay": self.delay_ms,
        });
        match doc {
            Value::Object(m) => Value::Object(drop_falsy(m)),
            other => other,
        }
    }

    /// Output lines still to stream, each with its offset into the run.
    pub fn output_lines(&self) -> Vec<(Duration, String)> {
        let lines: Vec<&str> = self.action.outcome.output.split_inclusive('\n').collect();
        let total = Duration::from_millis(self.action.outcome.duration_ms);
        let n = lines.len() as u32;
        lines
            .iter()
            .enumerate()
            .map(|(k, l)| (total * (k as u32 + 1) / (n + 1), (*l).to_owned()))
            .collect()
    }

    /// One `st2.execution.output__create` document.
    pub fn output_doc(&self, data: &str) -> Value {
        json!({
            "id": crate::util::object_id(),
            "execution_id": self.id,
            "action_ref": self.action.r#ref,
            "runner_ref": self.action.runner_type,
            "timestamp": fmt_ts(OffsetDateTime::now_utc()),
            "output_type": "stdout",
            "data": data,
        })
    }

    /// The result this action's runner reports for its scripted outcome.
    pub fn outcome_result(&self) -> Value {
        let o = &self.action.outcome;
        if let Some(r) = &o.result {
            return r.clone();
        }
        let ok = o.status == "succeeded";
        let stdout = o.output.trim_end_matches('\n');
        let timeout_msg = format!(
            "Action failed to complete in {} seconds",
            o.duration_ms.div_ceil(1000)
        );
        match self.action.runner_type.as_str() {
            "orquesta" | "action-chain" if ok => json!({"output": {}}),
            "orquesta" | "action-chain" => json!({
                "errors": [{"type": "error", "message": format!("Execution {}.", o.status)}],
                "output": null,
            }),
            "python-script" => json!({
                "result": null, "exit_code": if ok {0} else {1}, "stdout": stdout, "stderr": "",
            }),
            "http-request" => json!({
                "status_code": if ok {200} else {500}, "body": stdout, "parsed": false, "headers": {},
            }),
            _ if o.status == "timeout" => json!({
                "failed": true, "succeeded": false, "return_code": -9,
                "stdout": stdout, "stderr": "", "error": timeout_msg,
            }),
            _ => json!({
                "failed": !ok, "succeeded": ok, "return_code": if ok {0} else {1},
                "stdout": stdout, "stderr": "",
            }),
        }
    }
}

//! The records stages hand each other on `whale.pipe.*`. They live in the kernel (not in a stage)
//! so that stages depend only on the kernel, never on each other, and the index can read them
//! all. Every record carries the event id, and the rule and task id where they exist.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use crate::subjects::Pipe;

/// match → render: an event matched a rule.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Matched {
    pub event_id: String,
    pub rule: String,
    /// Version (content hash) of the rule set that matched.
    pub rule_version: String,
    /// The accepted event, so render needs no lookup.
    pub event: crate::Envelope,
    /// Set when the event was re-injected by `whale replay` (the replay run id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<String>,
    /// For a rule with `for_each`: the element this match is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<Item>,
}

/// One element of a rule's `for_each`: the value bound as `$item`, and its position among the
/// outputs of the expression.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Item {
    pub index: usize,
    pub value: Value,
}

/// How a task is rate limited (rendered from the rule's `throttle`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Throttle {
    /// Rendered key; the bucket is per (rule, key).
    pub key: String,
    /// Tasks allowed per period.
    pub limit: u64,
    /// Period in milliseconds.
    pub per_ms: u64,
    /// Extra tasks allowed at once above the steady rate.
    #[serde(default)]
    pub burst: u64,
    #[serde(default)]
    pub mode: ThrottleMode,
    /// Admit tasks when Redis is unreachable (default: wait).
    #[serde(default)]
    pub fail_open: bool,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ThrottleMode {
    /// Token bucket: `limit` per `per` (+ burst).
    #[default]
    Rate,
    /// Debounce: the first task per key in a window fires, the rest are suppressed.
    OnceWithin,
}

/// Approval gate settings (rendered from the rule's `approval`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Approval {
    pub timeout_ms: u64,
    pub channel: Option<String>,
}

/// render → throttle → dispatch: one StackStorm execution to create.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Task {
    /// Deterministic: the same (event, rule) always yields the same task id, so a redelivery
    /// anywhere upstream can never create a second execution.
    pub task_id: String,
    pub event_id: String,
    pub event_type: String,
    pub rule: String,
    pub rule_version: String,
    /// StackStorm action ref `pack.name`.
    pub action: String,
    pub parameters: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle: Option<Throttle>,
    /// Target StackStorm cluster name.
    pub cluster: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<String>,
    /// Publish `whale.in.whale.execution_finished` when the execution ends.
    #[serde(default)]
    pub result_event: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<String>,
    /// When the task was rendered (RFC 3339, as `envelope::format_time` writes it).
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    /// For a rule with `for_each`: the element the task is for (`$item`, also bound in
    /// notification templates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<Item>,
    /// The labels of the event the task came from; the result event carries them on (with
    /// the chain depth, `CHAIN_DEPTH_LABEL`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// The label of a `whale.execution_finished` event that counts how many executions led to it
/// (1 for the result of a task fired by an ordinary event); `rules.max_chain_depth` bounds it.
pub const CHAIN_DEPTH_LABEL: &str = "whale_chain_depth";

/// The deterministic task id of (event, rule).
pub fn task_id(event_id: &str, rule: &str) -> String {
    format!("t-{}", &crate::digest(&[event_id, rule])[..32])
}

/// The deterministic task id of one `for_each` element of (event, rule): `item_key` is a
/// content hash of the element (`whale_rules::item_key`), not its position, so the same
/// element always gives the same task id, whatever order the elements come in.
pub fn item_task_id(event_id: &str, rule: &str, item_key: &str) -> String {
    format!("t-{}", &crate::digest(&[event_id, rule, item_key])[..32])
}

/// render failure: the rule matched but its templates could not be rendered.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenderFailed {
    pub event_id: String,
    pub rule: String,
    pub rule_version: String,
    /// Which field failed: `params.host`, `throttle.key`, `route`, `for_each`, ...
    pub field: String,
    pub reason: String,
    /// For a rule with `for_each`: the element whose task failed (its position).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item_index: Option<u32>,
}

/// throttle: a task over its limit (recorded, not lost).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Throttled {
    pub task: Task,
    /// Milliseconds until the next token frees up.
    pub retry_after_ms: u64,
    pub reason: String,
}

/// dispatch: a task that will not be executed, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetter {
    pub task: Task,
    pub cluster: String,
    pub reason: String,
    /// StackStorm's `faultstring` when it refused the execution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub faultstring: Option<String>,
    pub attempts: u64,
}

/// dispatch → feedback: StackStorm accepted the task as an execution.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Dispatched {
    pub task: Task,
    /// The cluster that really got it (may differ from `task.cluster` after failover).
    pub cluster: String,
    pub execution_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_url: Option<String>,
    /// When the execution was created: StackStorm's own `start_timestamp` text, kept as it
    /// came (StackStorm writes six fractional digits; a parsed time would re-encode shorter).
    pub created: String,
}

/// feedback: an execution reached a terminal status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecutionResult {
    pub task: Task,
    pub cluster: String,
    pub execution_id: String,
    /// succeeded, failed, timeout, canceled or abandoned (any other StackStorm status is kept
    /// as it came).
    pub status: ExecStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elapsed_seconds: Option<f64>,
    /// A bounded summary of StackStorm's `result` (stdout/stderr/error, cut to a few KiB).
    #[serde(default)]
    pub summary: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_url: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub finished: OffsetDateTime,
}

/// The terminal status of an execution, spelled as StackStorm spells it. A status this
/// version does not know (a newer StackStorm's) is kept as [`ExecStatus::Other`] and written
/// back as it came, never refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecStatus {
    Succeeded,
    Failed,
    Timeout,
    Canceled,
    /// The execution was lost (StackStorm's own `abandoned`, or whale gave up following it).
    Abandoned,
    /// Any other status, as StackStorm spelled it.
    #[serde(untagged)]
    Other(String),
}

impl ExecStatus {
    /// The wire spelling (`succeeded`, ..., or the unknown status as it came).
    pub fn as_str(&self) -> &str {
        match self {
            ExecStatus::Succeeded => "succeeded",
            ExecStatus::Failed => "failed",
            ExecStatus::Timeout => "timeout",
            ExecStatus::Canceled => "canceled",
            ExecStatus::Abandoned => "abandoned",
            ExecStatus::Other(s) => s,
        }
    }

    /// The status spelled `s` (an unknown spelling becomes `Other`).
    pub fn parse(s: &str) -> ExecStatus {
        match s {
            "succeeded" => ExecStatus::Succeeded,
            "failed" => ExecStatus::Failed,
            "timeout" => ExecStatus::Timeout,
            "canceled" => ExecStatus::Canceled,
            "abandoned" => ExecStatus::Abandoned,
            other => ExecStatus::Other(other.to_owned()),
        }
    }
}

impl std::fmt::Display for ExecStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A link in a notification (approve, deny, the execution page), rendered in each channel's
/// own syntax.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Link {
    pub label: String,
    pub url: String,
}

/// feedback / approval gate → notify: one message for one channel. `id` is unique per
/// (purpose, task, channel); it is the msg id and the key of the sent-marker, so a message is
/// posted at most once whatever is redelivered.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NotifyRequest {
    /// `res:<task_id>:<channel>` (a result) or `apv:<task_id>:<channel>` (an approval request).
    pub id: String,
    pub channel: String,
    /// `result` or `approval`.
    pub kind: NotifyKind,
    pub task_id: String,
    pub event_id: String,
    pub rule: String,
    /// The rendered message (markdown).
    pub text: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<Link>,
    /// What a generic JSON webhook receives.
    pub record: Value,
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
}

/// What a notification is about (spelled `result` / `approval` on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyKind {
    /// An execution's result (feedback).
    Result,
    /// A request for a person's approval (approval gate).
    Approval,
}

/// notify: what became of one [`NotifyRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Notified {
    pub id: String,
    pub channel: String,
    pub kind: NotifyKind,
    pub task_id: String,
    pub event_id: String,
    pub rule: String,
    pub status: NotifyStatus,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// What became of a notification (spelled `sent` / `failed` / `unknown` on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyStatus {
    /// The channel took it.
    Sent,
    /// Gave up after retries, or the channel is not configured.
    Failed,
    /// A worker stopped mid-post and the post was not repeated, to avoid a duplicate.
    Unknown,
}

impl NotifyStatus {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyStatus::Sent => "sent",
            NotifyStatus::Failed => "failed",
            NotifyStatus::Unknown => "unknown",
        }
    }
}

/// approval gate: a person (or the timeout) decided about a held task.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Decision {
    pub task: Task,
    /// `approved`, `denied` or `expired` (never `pending`).
    pub decision: ApprovalState,
    /// Who decided: a user name, `link via <channel>`, or `whale` for a timeout.
    pub by: String,
    /// `link`, `cli`, `http` or `timeout`.
    pub via: Via,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub decided: OffsetDateTime,
}

/// Where a held task stands (`pending`, `approved`, `denied`, `expired` on the wire): the
/// state of an approval in `whale_state`, and, decided, the `decision` of its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalState {
    Pending,
    Approved,
    Denied,
    /// Nobody decided before the timeout.
    Expired,
}

impl ApprovalState {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalState::Pending => "pending",
            ApprovalState::Approved => "approved",
            ApprovalState::Denied => "denied",
            ApprovalState::Expired => "expired",
        }
    }

    /// The state spelled `s`, if any.
    pub fn parse(s: &str) -> Option<ApprovalState> {
        match s {
            "pending" => Some(ApprovalState::Pending),
            "approved" => Some(ApprovalState::Approved),
            "denied" => Some(ApprovalState::Denied),
            "expired" => Some(ApprovalState::Expired),
            _ => None,
        }
    }
}

impl std::fmt::Display for ApprovalState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a decision was made (the audit actor's `via`): `link`, `cli`, `http`, `timeout`; any
/// other spelling is kept as it came.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// A signed link in a notification.
    Link,
    /// `whale approvals approve|deny`.
    Cli,
    /// `/v1/approvals` or the console.
    Http,
    /// The approval timed out.
    Timeout,
    /// Any other spelling, as it came.
    #[serde(untagged)]
    Other(String),
}

impl Via {
    /// The wire spelling.
    pub fn as_str(&self) -> &str {
        match self {
            Via::Link => "link",
            Via::Cli => "cli",
            Via::Http => "http",
            Via::Timeout => "timeout",
            Via::Other(s) => s,
        }
    }

    /// The way spelled `s` (an unknown spelling becomes `Other`).
    pub fn parse(s: &str) -> Via {
        match s {
            "link" => Via::Link,
            "cli" => Via::Cli,
            "http" => Via::Http,
            "timeout" => Via::Timeout,
            other => Via::Other(other.to_owned()),
        }
    }
}

impl std::fmt::Display for Via {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Adds the event id, rule and task id headers of `task` to a record about it.
pub fn tagged(out: crate::Output, task: &Task) -> crate::Output {
    use crate::subjects::{HDR_EVENT_ID, HDR_RULE, HDR_TASK_ID};
    out.header(HDR_EVENT_ID, task.event_id.clone())
        .header(HDR_RULE, task.rule.clone())
        .header(HDR_TASK_ID, task.task_id.clone())
}

/// The `Nats-Msg-Id` of each record kind, spelled only here: a prefix per kind and the id of
/// what it is about, so a redelivered input re-publishes the same id and JetStream drops the
/// copy (ARCHITECTURE.md, "Every output has a deterministic `Nats-Msg-Id`").
pub mod msg_id {
    /// render → throttle: `task:<task id>`.
    pub fn task(task_id: &str) -> String {
        format!("task:{task_id}")
    }
    /// render: `rf:<task id>`.
    pub fn render_failed(task_id: &str) -> String {
        format!("rf:{task_id}")
    }
    /// throttle / approval gate → dispatch: `adm:<task id>`.
    pub fn admitted(task_id: &str) -> String {
        format!("adm:{task_id}")
    }
    /// A dead-letter retry re-admits the task under a new id per retry:
    /// `adm-retry:<task id>:<retry>`.
    pub fn admitted_retry(task_id: &str, retry: u64) -> String {
        format!("adm-retry:{task_id}:{retry}")
    }
    /// throttle → approval gate: `apv:<task id>`.
    pub fn approval(task_id: &str) -> String {
        format!("apv:{task_id}")
    }
    /// The approval gate's timer: `wait:<task id>`.
    pub fn approval_wait(task_id: &str) -> String {
        format!("wait:{task_id}")
    }
    /// throttle: `thr:<task id>`.
    pub fn throttled(task_id: &str) -> String {
        format!("thr:{task_id}")
    }
    /// approval gate: `dec:<task id>`.
    pub fn decision(task_id: &str) -> String {
        format!("dec:{task_id}")
    }
    /// dispatch → feedback: `dsp:<task id>`.
    pub fn dispatched(task_id: &str) -> String {
        format!("dsp:{task_id}")
    }
    /// dispatch / throttle / approval gate: `dl:<task id>` (one dead letter per task).
    pub fn dead_letter(task_id: &str) -> String {
        format!("dl:{task_id}")
    }
    /// feedback: `res:<task id>`.
    pub fn result(task_id: &str) -> String {
        format!("res:{task_id}")
    }
    /// A notification: `<res|apv>:<task id>:<channel>` (also the key of its sent-marker).
    pub fn notify(kind: super::NotifyKind, task_id: &str, channel: &str) -> String {
        let prefix = match kind {
            super::NotifyKind::Approval => "apv",
            super::NotifyKind::Result => "res",
        };
        format!("{prefix}:{task_id}:{channel}")
    }
    /// What became of a notification: `ntd:<request id>`.
    pub fn notified(request_id: &str) -> String {
        format!("ntd:{request_id}")
    }
}

impl Task {
    /// render → throttle: this task on `whale.pipe.task`.
    pub fn output(&self) -> crate::Output {
        let out = crate::Output::json(Pipe::Task.subject(), msg_id::task(&self.task_id), self);
        tagged(out, self)
    }

    /// The task let on to dispatch, on its cluster's `whale.pipe.admitted.<cluster>`.
    /// (An approved task still carries its `approval`: this is where the gate lets it on.)
    pub fn admitted(&self) -> crate::Output {
        let subject = Pipe::Admitted.subject_with(&self.cluster);
        let out = crate::Output::json(subject, msg_id::admitted(&self.task_id), self);
        tagged(out, self)
    }

    /// The task (as `payload`, the bytes it came in) let on: to the approval gate when it
    /// needs a person, else to dispatch on its cluster's subject.
    pub fn passed_on(&self, payload: bytes::Bytes) -> crate::Output {
        let (subject, id) = match self.approval {
            Some(_) => (Pipe::Approval.subject(), msg_id::approval(&self.task_id)),
            None => (
                Pipe::Admitted.subject_with(&self.cluster),
                msg_id::admitted(&self.task_id),
            ),
        };
        tagged(crate::Output::new(subject, id, payload), self)
    }
}

impl RenderFailed {
    /// render: the failure of the task `task_id` would have had, on `whale.pipe.render_failed`.
    pub fn output(&self, task_id: &str) -> crate::Output {
        use crate::subjects::{HDR_EVENT_ID, HDR_RULE, HDR_TASK_ID};
        crate::Output::json(
            Pipe::RenderFailed.subject(),
            msg_id::render_failed(task_id),
            self,
        )
        .header(HDR_EVENT_ID, self.event_id.clone())
        .header(HDR_RULE, self.rule.clone())
        .header(HDR_TASK_ID, task_id.to_owned())
    }
}

impl Throttled {
    /// throttle: on `whale.pipe.throttled`.
    pub fn output(&self) -> crate::Output {
        let id = msg_id::throttled(&self.task.task_id);
        tagged(
            crate::Output::json(Pipe::Throttled.subject(), id, self),
            &self.task,
        )
    }
}

impl DeadLetter {
    /// On `whale.pipe.dead_letter`.
    pub fn output(&self) -> crate::Output {
        let id = msg_id::dead_letter(&self.task.task_id);
        tagged(
            crate::Output::json(Pipe::DeadLetter.subject(), id, self),
            &self.task,
        )
    }
}

impl Dispatched {
    /// dispatch → feedback: on `whale.pipe.dispatched`.
    pub fn output(&self) -> crate::Output {
        let id = msg_id::dispatched(&self.task.task_id);
        tagged(
            crate::Output::json(Pipe::Dispatched.subject(), id, self),
            &self.task,
        )
    }
}

impl ExecutionResult {
    /// feedback: on `whale.pipe.result`.
    pub fn output(&self) -> crate::Output {
        let id = msg_id::result(&self.task.task_id);
        tagged(
            crate::Output::json(Pipe::Result.subject(), id, self),
            &self.task,
        )
    }
}

impl Decision {
    /// approval gate: on `whale.pipe.decision`.
    pub fn output(&self) -> crate::Output {
        let id = msg_id::decision(&self.task.task_id);
        tagged(
            crate::Output::json(Pipe::Decision.subject(), id, self),
            &self.task,
        )
    }
}

impl NotifyRequest {
    /// feedback / approval gate → notify: on `whale.pipe.notify`, msg id = its `id`.
    pub fn output(&self) -> crate::Output {
        use crate::subjects::{HDR_EVENT_ID, HDR_RULE, HDR_TASK_ID};
        crate::Output::json(Pipe::Notify.subject(), self.id.clone(), self)
            .header(HDR_EVENT_ID, self.event_id.clone())
            .header(HDR_RULE, self.rule.clone())
            .header(HDR_TASK_ID, self.task_id.clone())
    }
}

impl Notified {
    /// notify: on `whale.pipe.notified`.
    pub fn output(&self) -> crate::Output {
        use crate::subjects::{HDR_EVENT_ID, HDR_RULE, HDR_TASK_ID};
        crate::Output::json(Pipe::Notified.subject(), msg_id::notified(&self.id), self)
            .header(HDR_EVENT_ID, self.event_id.clone())
            .header(HDR_RULE, self.rule.clone())
            .header(HDR_TASK_ID, self.task_id.clone())
    }
}

/// The dead letter for a task whose cluster cannot be a subject token (publishing it to
/// `whale.pipe.admitted.<cluster>` would fail forever), or None when the cluster is fine.
/// Every stage that admits tasks checks this first.
pub fn unroutable(task: &Task) -> Option<crate::Output> {
    if crate::subjects::is_token(&task.cluster) {
        return None;
    }
    let rec = DeadLetter {
        task: task.clone(),
        cluster: task.cluster.clone(),
        reason: format!(
            "cluster {:?} is not a valid cluster name (letters, digits, '-' and '_'; no dots, spaces or wildcards)",
            task.cluster
        ),
        faultstring: None,
        attempts: 0,
    };
    Some(rec.output())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records written before the states were enums still decode, and encode the same again:
    /// nothing on the wire changed.
    #[test]
    fn records_written_with_string_states_still_decode() {
        let old_request = r#"{"id":"res:t-1:ops","channel":"ops","kind":"result","task_id":"t-1","event_id":"e-1","rule":"r","text":"done","record":{},"created":"2026-01-01T00:00:00Z"}"#;
        let req: NotifyRequest = serde_json::from_str(old_request).unwrap();
        assert_eq!(req.kind, NotifyKind::Result);
        assert_eq!(serde_json::to_string(&req).unwrap(), old_request);
        let old_notified = r#"{"id":"apv:t-1:ops","channel":"ops","kind":"approval","task_id":"t-1","event_id":"e-1","rule":"r","status":"sent","attempts":1,"at":"2026-01-01T00:00:00Z"}"#;
        let n: Notified = serde_json::from_str(old_notified).unwrap();
        assert_eq!(n.kind, NotifyKind::Approval);
        assert_eq!(serde_json::to_string(&n).unwrap(), old_notified);
        assert!(serde_json::from_str::<NotifyRequest>(
            &old_request.replace("\"result\"", "\"other\"")
        )
        .is_err());
        assert_eq!(msg_id::notify(req.kind, "t-1", "ops"), req.id);
        assert_eq!(msg_id::notify(n.kind, "t-1", "ops"), n.id);
    }

    /// Records as the string-typed code wrote them (copied from a `deploy/local.sh` run's
    /// WHALE_PIPE stream: a task, a result, a notification and its outcome; the decision in the
    /// shape the approval gate wrote, with `format_time`'s nanoseconds) decode into the enums
    /// and times and encode to the same bytes.
    #[test]
    fn records_written_with_string_states_and_times_round_trip_byte_for_byte() {
        fn same<T: serde::de::DeserializeOwned + Serialize>(old: &str) -> T {
            let rec: T = serde_json::from_str(old).unwrap();
            assert_eq!(serde_json::to_string(&rec).unwrap(), old);
            rec
        }
        let task = r#"{"task_id":"t-17cbdb1c70b466ff88217ca5f4be8165","event_id":"01M8T8R31CT9NCT9VQYWNFDB4M","event_type":"dmesg.error","rule":"dmesg-error-show-and-clear","rule_version":"a31d858bfa28","action":"ops.dmesg_show_and_clear","parameters":{"code":"1","host":"web-12","lines":["EXT4-fs error (device sda1): ext4_find_entry"]},"throttle":{"key":"web-12","limit":1,"per_ms":300000,"burst":0,"mode":"rate","fail_open":false},"cluster":"default","notify":["oncall"],"result_event":false,"created":"2026-12-02T02:18:43.12182317Z"}"#;
        let t: Task = same(task);
        assert_eq!(t.created.nanosecond(), 121_823_170);
        let result = r#"{"task":{"task_id":"t-21e78dc4a242ab3655b61f65183c00e0","event_id":"01M8T8R2Z4AC8K6Z6QN293DE90","event_type":"alertmanager.alert","rule":"alertmanager-host-disk-full","rule_version":"a31d858bfa28","action":"ops.clean_disk","parameters":{"host":"web-12","messages":["Disk almost full on web-12"],"note":"alert {}:{alertname=\"HostDiskFull\"}"},"throttle":{"key":"web-12:9100","limit":3,"per_ms":3600000,"burst":1,"mode":"rate","fail_open":false},"cluster":"default","result_event":false,"created":"2026-12-02T02:18:43.058157989Z"},"cluster":"default","execution_id":"6b0f80034c68df8d33000000","status":"succeeded","elapsed_seconds":0.124308,"summary":{"failed":false,"return_code":0,"stderr":"","stdout":"","succeeded":true},"web_url":"http://127.0.0.1:9101/#/history/6b0f80034c68df8d33000000/general","finished":"2026-12-02T02:18:43.193453Z"}"#;
        let r: ExecutionResult = same(result);
        assert_eq!(r.status, ExecStatus::Succeeded);
        // A status this version does not know is kept, not refused.
        let newer = result.replace("\"succeeded\",\"elapsed", "\"frozen\",\"elapsed");
        let r: ExecutionResult = same(&newer);
        assert_eq!(r.status, ExecStatus::Other("frozen".into()));
        for s in ["failed", "timeout", "canceled", "abandoned"] {
            let r: ExecutionResult =
                same(&result.replace("\"succeeded\",\"elapsed", &format!("\"{s}\",\"elapsed")));
            assert_eq!(r.status, ExecStatus::parse(s));
            assert!(!matches!(r.status, ExecStatus::Other(_)), "{s}");
        }
        let request = r#"{"id":"res:t-17cbdb1c70b466ff88217ca5f4be8165:oncall","channel":"oncall","kind":"result","task_id":"t-17cbdb1c70b466ff88217ca5f4be8165","event_id":"01M8T8R31CT9NCT9VQYWNFDB4M","rule":"dmesg-error-show-and-clear","text":"done","links":[{"label":"open in StackStorm","url":"http://127.0.0.1:9101/#/history/6b0f80034c68df8d33000003/general"}],"record":{"kind":"result"},"created":"2026-12-02T02:18:43.64507309Z"}"#;
        same::<NotifyRequest>(request);
        let notified = r#"{"id":"res:t-17cbdb1c70b466ff88217ca5f4be8165:oncall","channel":"oncall","kind":"result","task_id":"t-17cbdb1c70b466ff88217ca5f4be8165","event_id":"01M8T8R31CT9NCT9VQYWNFDB4M","rule":"dmesg-error-show-and-clear","status":"failed","attempts":0,"error":"channel \"oncall\" is not configured: add [channels.oncall] to whale.toml","at":"2026-12-02T02:18:43.646788939Z"}"#;
        let n: Notified = same(notified);
        assert_eq!(n.status, NotifyStatus::Failed);
        for s in ["sent", "unknown"] {
            same::<Notified>(&notified.replace("\"failed\"", &format!("\"{s}\"")));
        }
        assert!(
            serde_json::from_str::<Notified>(&notified.replace("\"failed\"", "\"x\"")).is_err()
        );
        let decision = format!(
            r#"{{"task":{task},"decision":"approved","by":"alice","via":"cli","reason":"ok","decided":"2026-12-02T02:19:03.1442383Z"}}"#
        );
        let d: Decision = same(&decision);
        assert_eq!((d.decision, d.via), (ApprovalState::Approved, Via::Cli));
        for (state, via) in [
            ("denied", "link"),
            ("expired", "timeout"),
            ("approved", "http"),
        ] {
            let old = decision
                .replace("\"approved\"", &format!("\"{state}\""))
                .replace("\"cli\"", &format!("\"{via}\""));
            let d: Decision = same(&old);
            assert_eq!(d.decision.as_str(), state);
            assert_eq!(d.via, Via::parse(via));
            assert!(!matches!(d.via, Via::Other(_)));
        }
        let d: Decision = same(&decision.replace("\"cli\"", "\"console\""));
        assert_eq!(d.via, Via::Other("console".into()));
        // Whole seconds and a whole-second time: no fraction written, as before.
        let whole = decision.replace("02:19:03.1442383Z", "02:19:03Z");
        let d: Decision = same(&whole);
        assert_eq!(
            crate::envelope::format_time(d.decided),
            "2026-12-02T02:19:03Z"
        );
    }
}

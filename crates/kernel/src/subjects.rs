//! Every NATS name whale uses — subjects, streams, consumers, KV buckets — spelled here and only
//! here, so the topology can be read (and changed) in one place.
//!
//! Public (a contract with producers and consumers, docs/contract.md "Subject map"):
//! `whale.in.<event_type>`, `whale.events.<event_type>`, `whale.rejected.<event_type>`. Everything
//! else is internal.

/// Prefix producers publish to: `whale.in.<event_type>`.
pub const INGEST_PREFIX: &str = "whale.in";
/// Accepted, normalized events: `whale.events.<event_type>` (the replay source).
pub const EVENTS_PREFIX: &str = "whale.events";
/// Rejected events with machine-readable reasons: `whale.rejected.<event_type>`.
pub const REJECTED_PREFIX: &str = "whale.rejected";
/// Internal pipeline records between stages: `whale.pipe.<kind>[.<more>]`.
pub const PIPE_PREFIX: &str = "whale.pipe";
/// Audit records of decisions and changes: `whale.audit.<area>.<verb>` (`crate::audit`).
pub const AUDIT_PREFIX: &str = "whale.audit";

/// Stream holding ingested, not yet validated events (work queue).
pub const STREAM_INGEST: &str = "WHALE_INGEST";
/// Stream holding accepted events and rejections, kept for the retention period (replay history).
pub const STREAM_EVENTS: &str = "WHALE_EVENTS";
/// Stream holding every inter-stage record (matches, tasks, decisions, executions, results).
pub const STREAM_PIPE: &str = "WHALE_PIPE";
/// Stream holding the audit trail (`audit.retention`, default 400 days; never drops a record).
pub const STREAM_AUDIT: &str = "WHALE_AUDIT";

/// KV bucket of event-type JSON Schemas, key = event type.
pub const KV_SCHEMAS: &str = "whale_schemas";
/// KV bucket of the active rule set.
pub const KV_RULES: &str = "whale_rules";
/// KV bucket of dispatch claims (task id → claim / execution id). Max age: `state.claims`.
pub const KV_CLAIMS: &str = "whale_claims";
/// KV bucket of operator state: drained clusters (kept forever), approvals (until their timeout
/// plus `nats.pipe_retention`), execution index and notification markers (max age:
/// `state.executions`).
pub const KV_STATE: &str = "whale_state";

/// Key prefixes in [`KV_STATE`] that never expire (written with `Nats-TTL: never`); `whale
/// setup` pins the ones an older version wrote before it gives the bucket a max age.
pub const STATE_PERMANENT: [&str; 1] = ["drain."];

/// Every KV bucket `whale setup` creates.
pub const KV_BUCKETS: [&str; 4] = [KV_SCHEMAS, KV_RULES, KV_CLAIMS, KV_STATE];

/// `whale.in.<event_type>`.
pub fn ingest(event_type: &str) -> String {
    format!("{INGEST_PREFIX}.{event_type}")
}

/// `whale.events.<event_type>`.
pub fn events(event_type: &str) -> String {
    format!("{EVENTS_PREFIX}.{event_type}")
}

/// `whale.rejected.<event_type>`; types that are not subject-safe land on `whale.rejected._invalid`.
pub fn rejected(event_type: Option<&str>) -> String {
    match event_type {
        Some(t) if crate::envelope::is_valid_event_type(t) => format!("{REJECTED_PREFIX}.{t}"),
        _ => format!("{REJECTED_PREFIX}._invalid"),
    }
}

/// The event type a `whale.in.<event_type>` subject carries, if it is one.
pub fn ingest_type(subject: &str) -> Option<&str> {
    subject
        .strip_prefix(INGEST_PREFIX)
        .and_then(|s| s.strip_prefix('.'))
        .filter(|s| !s.is_empty())
}

/// `whale.audit.<action>` (`approval.approve`, `exec.retry`, ...).
pub fn audit(action: &str) -> String {
    format!("{AUDIT_PREFIX}.{action}")
}

/// Wildcard over all subjects with `prefix`.
pub fn all(prefix: &str) -> String {
    format!("{prefix}.>")
}

/// Internal record kinds on `whale.pipe.<kind>`. One enum so that a typo is a compile error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pipe {
    /// match → render: one per (event, matching rule).
    Matched,
    /// render → throttle: a rendered task.
    Task,
    /// render failures (for index and trace).
    RenderFailed,
    /// throttle → approval gate / dispatch: admitted task, `whale.pipe.admitted.<cluster>`.
    Admitted,
    /// throttled tasks (auditable).
    Throttled,
    /// tasks waiting for a person.
    Approval,
    /// approval decisions.
    Decision,
    /// dispatch → feedback: an execution was created.
    Dispatched,
    /// tasks that cannot be dispatched, with the reason.
    DeadLetter,
    /// feedback: terminal result of an execution.
    Result,
    /// feedback / approval gate → notify: one message for one channel.
    Notify,
    /// notify: what became of one message (sent, failed, unknown).
    Notified,
}

impl Pipe {
    /// Every record kind, for setup and the index stage.
    pub const ALL: [Pipe; 12] = [
        Pipe::Matched,
        Pipe::Task,
        Pipe::RenderFailed,
        Pipe::Admitted,
        Pipe::Throttled,
        Pipe::Approval,
        Pipe::Decision,
        Pipe::Dispatched,
        Pipe::DeadLetter,
        Pipe::Result,
        Pipe::Notify,
        Pipe::Notified,
    ];

    /// The token after `whale.pipe.`.
    pub fn token(self) -> &'static str {
        match self {
            Pipe::Matched => "matched",
            Pipe::Task => "task",
            Pipe::RenderFailed => "render_failed",
            Pipe::Admitted => "admitted",
            Pipe::Throttled => "throttled",
            Pipe::Approval => "approval",
            Pipe::Decision => "decision",
            Pipe::Dispatched => "dispatched",
            Pipe::DeadLetter => "dead_letter",
            Pipe::Result => "result",
            Pipe::Notify => "notify",
            Pipe::Notified => "notified",
        }
    }

    /// `whale.pipe.<kind>`.
    pub fn subject(self) -> String {
        format!("{PIPE_PREFIX}.{}", self.token())
    }

    /// `whale.pipe.<kind>.<suffix>` (e.g. admitted per cluster).
    pub fn subject_with(self, suffix: &str) -> String {
        format!("{PIPE_PREFIX}.{}.{suffix}", self.token())
    }

    /// Filter matching this kind with or without a suffix.
    pub fn filter(self) -> String {
        match self {
            Pipe::Admitted => format!("{PIPE_PREFIX}.{}.>", self.token()),
            _ => self.subject(),
        }
    }
}

/// Where a stage reads from: stream, durable consumer name and filter subjects.
#[derive(Debug, Clone)]
pub struct Input {
    pub stream: &'static str,
    pub consumer: &'static str,
    /// The subjects the stage handles.
    pub filters: Vec<String>,
    /// The consumer reads the whole stream, and the worker loop acks what is outside `filters`
    /// without handing it to the stage. For a stage that wants nearly all of a stream of many
    /// subjects: nats-server finds the next message of a consumer filtered by a wildcard by
    /// matching every subject of the stream, per message (profiled under `whale-bench pipeline`:
    /// ~12% of nats-server's CPU for `match`, whose stream also holds the rare rejections),
    /// while a consumer without filters reads the stream in order.
    pub whole_stream: bool,
}

impl Input {
    /// Whether the stage handles a message on `subject` ([`Input::filters`]).
    pub fn wants(&self, subject: &str) -> bool {
        self.filters.iter().any(|f| filter_matches(f, subject))
    }
}

/// Whether `subject` matches the NATS filter `filter` (`*` one token, `>` one or more at the end).
pub fn filter_matches(filter: &str, subject: &str) -> bool {
    let mut s = subject.split('.');
    for f in filter.split('.') {
        match (f, s.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (f, Some(t)) if f == t => {}
            _ => return false,
        }
    }
    s.next().is_none()
}

/// What the ordered consumers of a stage that keeps its own place in `consumer`'s input are
/// named with (`<consumer>_own_<id>`; async-nats adds `_<n>` when it recreates one): the worker
/// loop names them, `whale status` finds them.
pub fn own_reader_prefix(consumer: &str) -> String {
    format!("{consumer}{OWN_READER}")
}

/// What separates the input's consumer name from the reader's id in [`own_reader_prefix`].
pub const OWN_READER: &str = "_own_";

/// The inputs of each stage, by stage name (empty for a stage without a JetStream worker):
/// the one table of who reads what. `whale setup` creates these consumers, `whale status`
/// reports them, `whale run` starts one worker loop per input; the stage table
/// (`src/registry.rs`) is checked against [`STAGES`] and this by its tests.
pub fn stage_inputs(stage: &str) -> Vec<Input> {
    let input = |stream, consumer, filters| Input {
        stream,
        consumer,
        filters,
        whole_stream: false,
    };
    match stage {
        "validate" => vec![input(STREAM_INGEST, "validate", vec![all(INGEST_PREFIX)])],
        "index" => vec![
            input(
                STREAM_EVENTS,
                "index-events",
                vec![all(EVENTS_PREFIX), all(REJECTED_PREFIX)],
            ),
            input(STREAM_PIPE, "index-pipe", vec![all(PIPE_PREFIX)]),
            input(STREAM_AUDIT, "index-audit", vec![all(AUDIT_PREFIX)]),
        ],
        // The whole stream (events and the rare rejections), the rejections acked unread.
        "match" => vec![Input {
            whole_stream: true,
            ..input(STREAM_EVENTS, "match", vec![all(EVENTS_PREFIX)])
        }],
        "render" => vec![input(STREAM_PIPE, "render", vec![Pipe::Matched.filter()])],
        "throttle" => vec![input(STREAM_PIPE, "throttle", vec![Pipe::Task.filter()])],
        "approve" => vec![input(
            STREAM_PIPE,
            "approve",
            vec![
                Pipe::Approval.filter(),
                approval_wait(),
                Pipe::Decision.filter(),
            ],
        )],
        "dispatch" => vec![input(
            STREAM_PIPE,
            "dispatch",
            vec![Pipe::Admitted.filter()],
        )],
        "feedback" => vec![
            input(STREAM_PIPE, "feedback", vec![Pipe::Dispatched.filter()]),
            input(STREAM_PIPE, "feedback-notify", vec![Pipe::Notify.filter()]),
        ],
        _ => Vec::new(),
    }
}

/// `whale.pipe.approval.wait`: one per pending approval, redelivered until it is decided or
/// times out (the approval gate's durable timer).
pub fn approval_wait() -> String {
    Pipe::Approval.subject_with("wait")
}

/// Header carrying the event id on every message, so one event can be followed through stages.
pub const HDR_EVENT_ID: &str = "Whale-Event-Id";
/// Header carrying the rule name where one exists.
pub const HDR_RULE: &str = "Whale-Rule";
/// Header carrying the task id where one exists.
pub const HDR_TASK_ID: &str = "Whale-Task-Id";
/// W3C trace context, carried from every input to its outputs (`kernel::tracectx`).
pub const HDR_TRACEPARENT: &str = "traceparent";
/// When the event was received at ingest (unix milliseconds), carried like the trace context;
/// dispatch observes the end-to-end latency with it.
pub const HDR_RECEIVED: &str = "Whale-Received";

/// Every stage with a JetStream input (those [`stage_inputs`] knows), in the order `whale
/// setup` and `whale status` list them.
pub const STAGES: [&str; 8] = [
    "validate", "index", "match", "render", "throttle", "approve", "dispatch", "feedback",
];

/// Whether `s` can be one subject token (a cluster name in `whale.pipe.admitted.<cluster>`).
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && !s
            .chars()
            .any(|c| matches!(c, '.' | '*' | '>') || c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_subjects_token_by_token() {
        for (f, s, want) in [
            ("whale.events.>", "whale.events.disk", true),
            ("whale.events.>", "whale.events.disk.full", true),
            ("whale.events.>", "whale.events", false),
            ("whale.events.>", "whale.eventsx.disk", false),
            ("whale.events.>", "whale.rejected.disk", false),
            ("whale.*.disk", "whale.events.disk", true),
            ("whale.*.disk", "whale.events.disk.x", false),
            ("whale.pipe.task", "whale.pipe.task", true),
            ("whale.pipe.task", "whale.pipe.tasks", false),
            ("whale.pipe.task", "whale.pipe", false),
        ] {
            assert_eq!(filter_matches(f, s), want, "{f} {s}");
        }
    }
}

//! The audit trail: every decision and change people make through whale — approvals, execution
//! actions, rule and schema changes, cluster drains, replays — becomes one [`Record`] (who, what,
//! on what, when, from where, the outcome, before/after) on the `WHALE_AUDIT` stream
//! (`whale.audit.<action>`), kept `audit.retention` (default 400 days) and indexed as documents
//! of kind `audit` (so `whale trace` shows them). It lives in the kernel so that every surface
//! (HTTP handlers, approval links, the CLI) writes it the same way, through [`record`].
//!
//! The protocol every action follows: [`check`] before acting — while records cannot be written
//! (no stream: `whale setup` not run; stream full; NATS unreachable) the action is refused and
//! nothing happens (HTTP 503) — then act, then [`record`]. If that write still fails after its
//! retries, the action has happened but is not recorded: the caller reports it as an error
//! (HTTP 500 `"audit": "missing"`, CLI exit 1) and the record is logged in full at error level.
//! A success is never reported without its record.
//!
//! Records never hold secrets: tokens and keys are not part of any action; parameters are kept
//! (operators see them in approvals and executions anyway). [`list`] reads the trail back, newest
//! first, for `whale audit` and `GET /v1/audit`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::auth::Principal;
use crate::config::Config;
use crate::http::{error, with_retry_after};
use crate::nats::Nats;
use crate::subjects::{self, HDR_EVENT_ID, HDR_TASK_ID, STREAM_AUDIT};

/// What was done. The name (`as_str`) is the record's `action` and the last tokens of its
/// subject, `whale.audit.<area>.<verb>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    ApprovalApprove,
    ApprovalDeny,
    ExecRetry,
    ExecPause,
    ExecResume,
    ExecCancel,
    RulesApply,
    SchemasApply,
    ClusterDrain,
    ClusterUndrain,
    /// `whale replay` re-injecting events.
    ReplayRun,
    /// `whale replay --dry-run` (a backtest: reads history, changes nothing).
    ReplayDryRun,
    /// `whale dead-letters retry` / `POST /v1/dead-letters/{id}/retry`.
    DeadLetterRetry,
    /// `whale rules rollback` / `POST /v1/rules/rollback`: an earlier version active again.
    RulesRollback,
    /// A console sign-in, accepted or refused (who: the principal, or `unknown token`).
    ConsoleSignIn,
    /// A console sign-out.
    ConsoleSignOut,
}

impl Action {
    pub const ALL: [Action; 16] = [
        Action::ApprovalApprove,
        Action::ApprovalDeny,
        Action::ExecRetry,
        Action::ExecPause,
        Action::ExecResume,
        Action::ExecCancel,
        Action::RulesApply,
        Action::SchemasApply,
        Action::ClusterDrain,
        Action::ClusterUndrain,
        Action::ReplayRun,
        Action::ReplayDryRun,
        Action::DeadLetterRetry,
        Action::RulesRollback,
        Action::ConsoleSignIn,
        Action::ConsoleSignOut,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::ApprovalApprove => "approval.approve",
            Action::ApprovalDeny => "approval.deny",
            Action::ExecRetry => "exec.retry",
            Action::ExecPause => "exec.pause",
            Action::ExecResume => "exec.resume",
            Action::ExecCancel => "exec.cancel",
            Action::RulesApply => "rules.apply",
            Action::SchemasApply => "schemas.apply",
            Action::ClusterDrain => "cluster.drain",
            Action::ClusterUndrain => "cluster.undrain",
            Action::ReplayRun => "replay.run",
            Action::ReplayDryRun => "replay.dry_run",
            Action::DeadLetterRetry => "dead_letter.retry",
            Action::RulesRollback => "rules.rollback",
            Action::ConsoleSignIn => "console.sign_in",
            Action::ConsoleSignOut => "console.sign_out",
        }
    }
}

/// How the action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Done.
    Ok,
    /// Not done, by whale's rules (unknown id, already decided, not an execution whale created).
    Refused,
    /// Tried and failed (StackStorm refused, NATS trouble).
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
        }
    }
}

/// What the action was about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    /// `task`, `execution`, `rules`, `schemas`, `cluster` or `events` (a replay's range).
    pub kind: String,
    /// The task id, execution id, rule-set version, schema types, cluster name, replay range.
    pub id: String,
}

impl Target {
    pub fn new(kind: &str, id: impl Into<String>) -> Target {
        Target {
            kind: kind.to_owned(),
            id: id.into(),
        }
    }
}

/// Who acts and from where.
#[derive(Debug, Clone, PartialEq)]
pub struct Actor {
    /// The principal's name (the API token's name), `link:<channel>` for an approval link, or
    /// the user running the CLI.
    pub who: String,
    /// The principal's role (HTTP with auth configured).
    pub role: Option<String>,
    /// `http`, `link` or `cli`.
    pub via: String,
    /// The peer address of the HTTP request (`unknown` when the server does not know it), or
    /// `user@host` for the CLI.
    pub from: String,
}

impl Actor {
    /// An HTTP caller: the principal the auth layer put in the request, and its peer address.
    pub fn http(p: &Principal, addr: Option<SocketAddr>) -> Actor {
        Actor {
            who: p.name.clone(),
            role: p.role.map(|r| r.as_str().to_owned()),
            via: "http".into(),
            from: addr.map_or_else(|| "unknown".into(), |a| a.to_string()),
        }
    }

    /// The CLI: `who` if given (e.g. `whale approvals approve --by`), else the OS user; from
    /// `user@host` (the OS user, whatever `who` says).
    pub fn cli(who: Option<&str>) -> Actor {
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_else(|_| "unknown".into());
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "unknown".into());
        Actor {
            who: who.map_or_else(|| user.clone(), str::to_owned),
            role: None,
            via: "cli".into(),
            from: format!("{user}@{host}"),
        }
    }
}

/// The caller of an HTTP handler as an [`Actor`]: the [`Principal`] the auth layer put in the
/// request (anonymous without it) and the peer address (`whale run` serves with connect info).
pub struct Caller(pub Actor);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let p = parts
            .extensions
            .get::<Principal>()
            .cloned()
            .unwrap_or_else(Principal::anonymous);
        // The client the auth layer resolved (a trusted proxy's `X-Forwarded-For`), else the
        // TCP peer with its port.
        let peer = parts
            .extensions
            .get::<ConnectInfo<crate::auth::Peer>>()
            .map(|c| c.0 .0);
        let client = parts
            .extensions
            .get::<crate::auth::ClientAddr>()
            .map(|c| c.0);
        let addr = match (client, peer) {
            (Some(ip), Some(peer)) if ip != peer.ip() => Some(SocketAddr::new(ip, 0)),
            (Some(ip), None) => Some(SocketAddr::new(ip, 0)),
            (_, peer) => peer,
        };
        Ok(Caller(Actor::http(&p, addr)))
    }
}

/// One audit record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Unique; its `Nats-Msg-Id` is `audit:<id>`. Derived from the action's natural id where it
    /// has one (the task of an approval, the new execution of a retry, the KV revision of a rules
    /// apply or drain, the run of a replay), so a repeated write of the same action is stored once.
    pub id: String,
    /// When (RFC 3339, UTC).
    pub at: String,
    pub who: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// `http`, `link` or `cli`.
    pub via: String,
    /// Peer address (HTTP) or `user@host` (CLI).
    pub from: String,
    /// `approval.approve`, `exec.retry`, ... ([`Action`]).
    pub action: String,
    pub target: Target,
    pub outcome: Outcome,
    /// Why it was refused or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The reason the person gave (approvals).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What changed, before and after: a retry's changed parameters, a rules apply's versions,
    /// a schemas apply's versions per type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Value>,
    /// Anything else worth keeping (a retry's new execution id, a replay's range and counts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
    /// The event, task, rule, execution and cluster concerned, where known (for search and
    /// `whale trace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
}

impl Record {
    /// A successful `action` by `actor` on `target`, now, with a fresh id.
    pub fn new(actor: &Actor, action: Action, target: Target) -> Record {
        Record {
            id: ulid::Ulid::new().to_string(),
            at: crate::envelope::format_time(OffsetDateTime::now_utc()),
            who: actor.who.clone(),
            role: actor.role.clone(),
            via: actor.via.clone(),
            from: actor.from.clone(),
            action: action.as_str().to_owned(),
            target,
            outcome: Outcome::Ok,
            error: None,
            reason: None,
            before: None,
            after: None,
            details: None,
            event_id: None,
            task_id: None,
            rule: None,
            execution_id: None,
            cluster: None,
        }
    }

    /// Takes the action's natural id (`<action>:<natural>`) as the record id.
    pub fn natural_id(mut self, natural: &str) -> Record {
        self.id = format!("{}:{natural}", self.action);
        self
    }

    /// The outcome, with the error when it is not `ok`.
    pub fn outcome(mut self, outcome: Outcome, error: Option<String>) -> Record {
        self.outcome = outcome;
        self.error = error;
        self
    }

    /// Sets the event, task, rule and cluster of a task record.
    pub fn task(mut self, t: &crate::records::Task) -> Record {
        self.event_id = Some(t.event_id.clone());
        self.task_id = Some(t.task_id.clone());
        self.rule = Some(t.rule.clone());
        self.cluster = Some(t.cluster.clone());
        self
    }

    pub fn before_after(mut self, before: Value, after: Value) -> Record {
        self.before = Some(before);
        self.after = Some(after);
        self
    }

    pub fn details(mut self, details: Value) -> Record {
        self.details = Some(details);
        self
    }
}

/// Why an action cannot be audited now (so it must not happen).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

/// Room the stream must have left for an action to go ahead.
const HEADROOM: u64 = 1 << 20;

/// Whether records can be written now: the stream exists and has room. Call it before acting;
/// an error means "do not act" (the message says why and what to do).
pub async fn check(nats: &Nats) -> Result<(), Unavailable> {
    let st = nats.js.get_stream(STREAM_AUDIT).await.map_err(|e| {
        Unavailable(format!(
            "the audit trail is unavailable (stream {STREAM_AUDIT}: {e}); nothing was done: run `whale setup` (it creates the stream) and check NATS"
        ))
    })?;
    let info = st.cached_info();
    let max = info.config.max_bytes;
    if max > 0 && info.state.bytes + HEADROOM > max as u64 {
        return Err(Unavailable(format!(
            "the audit trail is full ({} of {max} bytes in {STREAM_AUDIT}, audit.max_bytes); nothing was done: records are never dropped, so raise audit.max_bytes or shorten audit.retention and run `whale setup`",
            info.state.bytes
        )));
    }
    Ok(())
}

/// Writes `rec` to `whale.audit.<action>` (msg id `audit:<id>`), retrying a few times with the
/// same id. On failure the record is logged in full at error level and an error returned: the
/// caller must report that the action is not recorded.
pub async fn record(nats: &Nats, rec: &Record) -> anyhow::Result<()> {
    let payload = serde_json::to_vec(rec)?;
    let subject = subjects::audit(&rec.action);
    let msg_id = format!("audit:{}", rec.id);
    let mut last = String::new();
    for attempt in 0..3u64 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(250 * attempt)).await;
        }
        let mut h = async_nats::HeaderMap::new();
        h.insert("Nats-Msg-Id", msg_id.as_str());
        if let Some(e) = &rec.event_id {
            h.insert(HDR_EVENT_ID, e.as_str());
        }
        if let Some(t) = &rec.task_id {
            h.insert(HDR_TASK_ID, t.as_str());
        }
        let sent = nats
            .js
            .publish_with_headers(subject.clone(), h, payload.clone().into())
            .await;
        match sent {
            Ok(ack) => match ack.await {
                Ok(_) => {
                    tracing::info!(who = %rec.who, action = %rec.action, target = %rec.target.id, outcome = rec.outcome.as_str(), "audit");
                    return Ok(());
                }
                Err(e) => last = e.to_string(),
            },
            Err(e) => last = e.to_string(),
        }
    }
    tracing::error!(
        record = %String::from_utf8_lossy(&payload),
        "AUDIT RECORD NOT WRITTEN to {STREAM_AUDIT}: {last}"
    );
    anyhow::bail!(
        "the audit record could not be written to {STREAM_AUDIT} ({last}); it is in whale's log"
    )
}

/// Which records [`list`] returns.
#[derive(Debug, Clone)]
pub struct Filter {
    /// Only records stored at or after this time (default: the whole trail).
    pub since: Option<OffsetDateTime>,
    /// Only this principal.
    pub who: Option<String>,
    /// Only this action (`exec.retry`) or area (`exec`).
    pub action: Option<String>,
    /// At most this many, the newest.
    pub limit: usize,
}

impl Filter {
    pub fn matches(&self, r: &Record) -> bool {
        self.who.as_ref().is_none_or(|w| &r.who == w)
            && self.action.as_ref().is_none_or(|a| {
                r.action == *a
                    || r.action
                        .strip_prefix(a.as_str())
                        .is_some_and(|rest| rest.starts_with('.'))
            })
    }
}

/// Default number of records listed.
pub const DEFAULT_LIMIT: usize = 50;

/// The records of the trail that pass `f`, newest first.
pub async fn list(nats: &Nats, f: &Filter) -> anyhow::Result<Vec<Record>> {
    let from = f.since.unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let to = OffsetDateTime::now_utc() + time::Duration::minutes(1);
    let mut keep: VecDeque<Record> = VecDeque::new();
    let mut unreadable = 0u64;
    crate::history::read(
        nats,
        STREAM_AUDIT,
        &subjects::all(subjects::AUDIT_PREFIX),
        from,
        to,
        |d| match serde_json::from_slice::<Record>(&d.payload) {
            Ok(r) if f.matches(&r) => {
                keep.push_back(r);
                if keep.len() > f.limit {
                    keep.pop_front();
                }
            }
            Ok(_) => {}
            Err(_) => unreadable += 1,
        },
    )
    .await?;
    if unreadable > 0 {
        tracing::warn!(
            unreadable,
            "{STREAM_AUDIT} holds messages that are not audit records"
        );
    }
    Ok(keep.into_iter().rev().collect())
}

/// `GET /v1/audit?since=&who=&action=&limit=`: the records, newest first, as a JSON array.
/// `since` is RFC 3339 or an age (`24h`); `limit` defaults to 50, at most `audit.max_list`.
pub fn router(nats: Nats, cfg: Arc<Config>) -> Router {
    Router::new()
        .route("/v1/audit", get(http_list))
        .with_state((nats, cfg))
}

#[derive(Deserialize)]
struct Params {
    since: Option<String>,
    who: Option<String>,
    action: Option<String>,
    limit: Option<usize>,
}

/// Builds a [`Filter`] from user input within `audit.max_list`; the error says what to fix.
pub fn make_filter(
    since: Option<&str>,
    who: Option<String>,
    action: Option<String>,
    limit: Option<usize>,
    cfg: &Config,
) -> Result<Filter, String> {
    let since = since
        .map(crate::history::parse_time_arg)
        .transpose()
        .map_err(|e| format!("since: {e}"))?;
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > cfg.audit.max_list {
        return Err(format!(
            "limit {limit} is outside 1..={} (audit.max_list): ask for fewer, or narrow with since/who/action",
            cfg.audit.max_list
        ));
    }
    Ok(Filter {
        since,
        who: who.filter(|w| !w.is_empty()),
        action: action.filter(|a| !a.is_empty()),
        limit,
    })
}

async fn http_list(
    State((nats, cfg)): State<(Nats, Arc<Config>)>,
    Query(p): Query<Params>,
) -> Response {
    let f = match make_filter(p.since.as_deref(), p.who, p.action, p.limit, &cfg) {
        Ok(f) => f,
        Err(msg) => return error(StatusCode::BAD_REQUEST, msg, json!({})),
    };
    match list(&nats, &f).await {
        Ok(records) => Json(records).into_response(),
        Err(e) => {
            tracing::warn!("audit list: {e:#}");
            with_retry_after(
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("cannot read the audit trail: {e:#}"),
                    json!({}),
                ),
                5,
            )
        }
    }
}

/// The HTTP answer when [`check`] refuses an action: 503, nothing was done.
pub fn unavailable_response(e: &Unavailable) -> Response {
    tracing::warn!("action refused: {e}");
    with_retry_after(
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            e.to_string(),
            json!({"audit": "unavailable"}),
        ),
        5,
    )
}

/// The HTTP answer when an action happened but its record could not be written: 500 saying so,
/// with what was done (`result`).
pub fn missing_response(what: &str, err: &anyhow::Error, result: Value) -> Response {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("{what} was done, but its audit record is missing: {err:#}"),
        json!({"audit": "missing", "result": result}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_who_and_action_or_area() {
        let actor = Actor {
            who: "alice".into(),
            role: Some("operator".into()),
            via: "http".into(),
            from: "127.0.0.1:1".into(),
        };
        let r = Record::new(&actor, Action::ExecRetry, Target::new("execution", "e1"));
        let f = |who: Option<&str>, action: Option<&str>| Filter {
            since: None,
            who: who.map(Into::into),
            action: action.map(Into::into),
            limit: 10,
        };
        assert!(f(None, None).matches(&r));
        assert!(f(Some("alice"), Some("exec")).matches(&r));
        assert!(f(None, Some("exec.retry")).matches(&r));
        assert!(!f(None, Some("exec.re")).matches(&r));
        assert!(!f(None, Some("ex")).matches(&r));
        assert!(!f(Some("bob"), None).matches(&r));
        let n = r.clone().natural_id("e2");
        assert_eq!(n.id, "exec.retry:e2");
        let json = serde_json::to_value(&n).unwrap();
        assert_eq!(json["outcome"], "ok");
        assert_eq!(json["target"], json!({"kind": "execution", "id": "e1"}));
        let back: Record = serde_json::from_value(json).unwrap();
        assert_eq!(back, n);
    }

    #[test]
    fn actions_are_subject_tokens() {
        for a in Action::ALL {
            assert!(
                a.as_str().split('.').all(crate::subjects::is_token),
                "{a:?}"
            );
            assert_eq!(a.as_str().split('.').count(), 2);
        }
    }
}

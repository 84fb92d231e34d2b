//! Pending approvals in KV `whale_state` (`approval.<task_id>`), and the one way a decision is
//! made: a compare-and-set from `pending`, so two clicks, a click and a CLI call, or a decision
//! and the timeout can never both win. The winner publishes the decision record
//! (`whale.pipe.decision`, msg id `dec:<task_id>`); the gate's timer republishes it from KV if
//! that publish was lost, and only a decision record admits a task. Every attempt is an audit
//! record (`whale_kernel::audit`), and none is made while the audit trail cannot take one.
//!
//! Every write carries a lifetime (per-message TTL): the time left until the approval times out
//! plus `nats.pipe_retention`, so the key outlives every message that could look for it (the
//! request, the timer, the decision) and then goes by itself.

use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use whale_kernel::audit::{self, Actor, Outcome, Target};
use whale_kernel::keys;
use whale_kernel::kv::{Bucket, Step, Ttl};
use whale_kernel::records::{ApprovalState, Decision, Task, Via};
use whale_kernel::subjects;
use whale_kernel::{Config, Nats, Output};

/// One held task and what became of it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Approval {
    pub task: Task,
    /// `pending`, `approved`, `denied` or `expired`.
    pub state: ApprovalState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub requested: OffsetDateTime,
    /// When the approval times out (RFC 3339, and unix seconds).
    #[serde(with = "time::serde::rfc3339")]
    pub expires: OffsetDateTime,
    pub expires_unix: i64,
    /// Links stop working at this time (unix seconds; never after `expires_unix`).
    pub link_expires_unix: i64,
    /// Signed into the links: links of another approval of the same task do not verify.
    pub nonce: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_via: Option<Via>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub decided: Option<OffsetDateTime>,
}

/// Default wait when a task reaches the gate without approval settings.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

impl Approval {
    /// A new pending approval for `task`, requested now.
    pub fn new(task: Task, link_ttl: Option<Duration>) -> Approval {
        let now = OffsetDateTime::now_utc();
        let (timeout, channel) = match &task.approval {
            Some(a) => (Duration::from_millis(a.timeout_ms), a.channel.clone()),
            None => (DEFAULT_TIMEOUT, None),
        };
        let expires = now + timeout;
        let link_expires = link_ttl.map(|t| now + t).unwrap_or(expires).min(expires);
        Approval {
            task,
            state: ApprovalState::Pending,
            channel,
            requested: now,
            expires,
            expires_unix: expires.unix_timestamp(),
            link_expires_unix: link_expires.unix_timestamp(),
            nonce: ulid::Ulid::new().to_string(),
            decided_by: None,
            decided_via: None,
            reason: None,
            decided: None,
        }
    }

    /// When the approval was requested (unix seconds): its timeout before it expires.
    pub fn requested_unix(&self) -> i64 {
        let timeout = match &self.task.approval {
            Some(a) => Duration::from_millis(a.timeout_ms),
            None => DEFAULT_TIMEOUT,
        };
        self.expires_unix - timeout.as_secs() as i64
    }

    pub fn is_pending(&self) -> bool {
        self.state == ApprovalState::Pending
    }

    /// The decision record of a decided approval.
    pub fn decision(&self) -> Decision {
        Decision {
            task: self.task.clone(),
            decision: self.state,
            by: self.decided_by.clone().unwrap_or_default(),
            via: self
                .decided_via
                .clone()
                .unwrap_or_else(|| Via::Other(String::new())),
            reason: self.reason.clone(),
            decided: self.decided.unwrap_or(self.requested),
        }
    }

    /// The decision record as an output (msg id `dec:<task_id>`).
    pub fn decision_output(&self) -> Output {
        self.decision().output()
    }
}

/// The KV key of a task's approval (ids outside KV's alphabet are hashed).
pub fn key(task_id: &str) -> String {
    keys::approval(task_id)
}

/// The approvals in `whale_state`, with how long each is kept past its timeout.
#[derive(Clone)]
pub struct Approvals {
    kv: Bucket,
    margin: Duration,
}

impl Approvals {
    /// The lifetime of a write of `a`: until its timeout, plus the margin.
    fn ttl(&self, a: &Approval) -> Ttl {
        let left = (a.expires_unix - OffsetDateTime::now_utc().unix_timestamp()).max(0);
        Ttl::For(Duration::from_secs(left as u64) + self.margin)
    }
}

/// The bucket.
pub async fn bucket(nats: &Nats, cfg: &Config) -> anyhow::Result<Approvals> {
    Ok(Approvals {
        kv: Bucket::open(nats, subjects::KV_STATE).await?,
        margin: cfg.approval_margin(),
    })
}

/// The approval and its revision.
pub async fn read(kv: &Approvals, task_id: &str) -> anyhow::Result<Option<(Approval, u64)>> {
    match kv.kv.entry(&key(task_id)).await? {
        Some(e) => Ok(Some((parse(task_id, &e.value)?, e.revision))),
        None => Ok(None),
    }
}

fn parse(task_id: &str, value: &[u8]) -> anyhow::Result<Approval> {
    serde_json::from_slice(value)
        .map_err(|err| anyhow::anyhow!("approval {task_id} is unreadable: {err}"))
}

/// The approval as a KV value.
fn to_value(a: &Approval) -> bytes::Bytes {
    serde_json::to_vec(a).expect("approvals serialize").into()
}

/// The approval of `task`, created pending if there is none yet.
pub async fn open(
    kv: &Approvals,
    task: &Task,
    link_ttl: Option<Duration>,
) -> anyhow::Result<Approval> {
    kv.kv
        .modify(&key(&task.task_id), |current| match current {
            Some(v) => Step::Keep(parse(&task.task_id, v)),
            None => {
                let a = Approval::new(task.clone(), link_ttl);
                Step::Write {
                    value: to_value(&a),
                    ttl: kv.ttl(&a),
                    then: Ok(a),
                }
            }
        })
        .await?
}

/// Every approval, pending first, then newest first.
pub async fn list(kv: &Approvals) -> anyhow::Result<Vec<Approval>> {
    let keys = kv.kv.keys(keys::APPROVAL).await?;
    let mut out: Vec<Approval> = futures::stream::iter(keys)
        .map(|k| async move {
            match kv.kv.get(&k).await {
                Ok(Some(v)) => serde_json::from_slice::<Approval>(&v).ok(),
                _ => None,
            }
        })
        .buffer_unordered(32)
        .filter_map(|a| async move { a })
        .collect()
        .await;
    out.sort_by(|a, b| {
        b.is_pending()
            .cmp(&a.is_pending())
            .then_with(|| b.requested.cmp(&a.requested))
    });
    Ok(out)
}

/// A decision about one approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Approve,
    Deny,
}

impl Verdict {
    pub fn parse(s: &str) -> Option<Verdict> {
        match s {
            "approve" | "approved" => Some(Verdict::Approve),
            "deny" | "denied" => Some(Verdict::Deny),
            _ => None,
        }
    }
    pub fn action(self) -> &'static str {
        match self {
            Verdict::Approve => "approve",
            Verdict::Deny => "deny",
        }
    }
    fn state(self) -> ApprovalState {
        match self {
            Verdict::Approve => ApprovalState::Approved,
            Verdict::Deny => ApprovalState::Denied,
        }
    }
}

/// Why a decision was not taken.
#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    #[error("no approval {0:?} (see `whale approvals list`)")]
    NotFound(String),
    /// Someone (or the timeout) decided first.
    #[error(
        "approval {} was already {} by {} at {}",
        .0.task.task_id,
        .0.state,
        .0.decided_by.as_deref().unwrap_or("?"),
        .0.decided.map(format_time).unwrap_or_else(|| "?".into())
    )]
    AlreadyDecided(Box<Approval>),
    /// The approval timed out (the gate records it as expired).
    #[error("approval {} timed out at {}", .0.task.task_id, format_time(.0.expires))]
    TimedOut(Box<Approval>),
    /// Reading or writing the approval failed (the error itself, causes kept).
    #[error(transparent)]
    Internal(anyhow::Error),
    /// The audit trail cannot take a record now: nothing was decided.
    #[error(transparent)]
    AuditUnavailable(audit::Unavailable),
    /// Decided, but its audit record could not be written (the decision stands).
    #[error("approval {} was {}, but its audit record is missing", .0.task.task_id, .0.state)]
    AuditMissing(Box<Approval>, #[source] anyhow::Error),
}

/// RFC 3339 in UTC, as the approval is stored.
pub fn format_time(t: OffsetDateTime) -> String {
    whale_kernel::envelope::format_time(t)
}

/// Makes a decision, once, as `actor` (its `who` is recorded as `by`, its `via` as `via`):
/// checks that the audit trail can take a record (else nothing is decided), compare-and-set
/// from pending, publishes the decision record, then writes the audit record — also of a
/// refused attempt (unknown, already decided, timed out).
pub async fn decide(
    nats: &Nats,
    kv: &Approvals,
    task_id: &str,
    verdict: Verdict,
    actor: &Actor,
    reason: Option<String>,
) -> Result<Approval, DecideError> {
    audit::check(nats)
        .await
        .map_err(DecideError::AuditUnavailable)?;
    let r = decide_once(
        nats,
        kv,
        task_id,
        verdict,
        &actor.who,
        &actor.via,
        reason.clone(),
    )
    .await;
    let action = match verdict {
        Verdict::Approve => audit::Action::ApprovalApprove,
        Verdict::Deny => audit::Action::ApprovalDeny,
    };
    let mut rec = audit::Record::new(actor, action, Target::new("task", task_id));
    rec = match &r {
        Ok(a) => rec.task(&a.task).natural_id(&a.task.task_id),
        Err(DecideError::Internal(e)) => rec.outcome(Outcome::Failed, Some(format!("{e:#}"))),
        Err(e @ (DecideError::AlreadyDecided(a) | DecideError::TimedOut(a))) => rec
            .task(&a.task)
            .outcome(Outcome::Refused, Some(e.to_string())),
        Err(e) => rec.outcome(Outcome::Refused, Some(e.to_string())),
    };
    rec.reason = reason.filter(|r| !r.is_empty());
    match (audit::record(nats, &rec).await, r) {
        (Err(err), Ok(a)) => Err(DecideError::AuditMissing(Box::new(a), err)),
        // A refusal changed nothing: its answer stands (the missing record is logged).
        (_, r) => r,
    }
}

async fn decide_once(
    nats: &Nats,
    kv: &Approvals,
    task_id: &str,
    verdict: Verdict,
    by: &str,
    via: &str,
    reason: Option<String>,
) -> Result<Approval, DecideError> {
    let internal = DecideError::Internal;
    let decided = kv
        .kv
        .modify(&key(task_id), |current| {
            let Some(v) = current else {
                return Step::Keep(Err(DecideError::NotFound(task_id.to_owned())));
            };
            let a = match parse(task_id, v) {
                Ok(a) => a,
                Err(e) => return Step::Keep(Err(internal(e))),
            };
            if !a.is_pending() {
                return Step::Keep(Err(DecideError::AlreadyDecided(Box::new(a))));
            }
            let now = OffsetDateTime::now_utc();
            if now.unix_timestamp() >= a.expires_unix {
                return Step::Keep(Err(DecideError::TimedOut(Box::new(a))));
            }
            let mut next = a;
            next.state = verdict.state();
            next.decided_by = Some(by.to_owned());
            next.decided_via = Some(Via::parse(via));
            next.reason = reason.clone().filter(|r| !r.is_empty());
            next.decided = Some(now);
            Step::Write {
                value: to_value(&next),
                ttl: kv.ttl(&next),
                then: Ok(next),
            }
        })
        .await
        .map_err(|e| internal(e.into()))??;
    tracing::info!(task_id, decision = %decided.state, by, via, "approval decided");
    if let Err(e) = nats.publish(decided.decision_output()).await {
        // Recorded in KV: the gate's timer republishes the decision within 30 s.
        tracing::warn!(
            task_id,
            "decision recorded but not yet published ({e:#}); the gate will publish it"
        );
    }
    Ok(decided)
}

/// Marks a pending approval expired (the timeout); returns the approval as it now stands.
pub async fn expire(kv: &Approvals, task_id: &str) -> anyhow::Result<Option<Approval>> {
    kv.kv
        .modify(&key(task_id), |current| {
            let a = match current.map(|v| parse(task_id, v)) {
                None => return Step::Keep(Ok(None)),
                Some(Err(e)) => return Step::Keep(Err(e)),
                Some(Ok(a)) => a,
            };
            if !a.is_pending() {
                return Step::Keep(Ok(Some(a)));
            }
            let mut next = a;
            next.state = ApprovalState::Expired;
            next.decided_by = Some("whale".into());
            next.decided_via = Some(Via::Timeout);
            next.decided = Some(OffsetDateTime::now_utc());
            Step::Write {
                value: to_value(&next),
                ttl: kv.ttl(&next),
                then: Ok(Some(next)),
            }
        })
        .await?
}

//! Dead letters, for an operator: list them, show one, and re-drive one once its cause is fixed
//! (`whale dead-letters`, `/v1/dead-letters`). A dead letter is a `whale.pipe.dead_letter` record
//! in `WHALE_PIPE` (kept `nats.pipe_retention`); its state comes from the task's claim.
//!
//! A retry keeps the task id, so it can never double-execute: it turns a `dead` claim back into
//! an *interrupted* one (pending, no lease) with a compare-and-set, and re-publishes the task to
//! `whale.pipe.admitted.<cluster>`. Dispatch then treats it as any interrupted attempt: it asks
//! the cluster for an execution tagged with the task id before creating one, and the claim lets
//! only one worker create it. A task whose claim says it was executed is refused (409); any
//! number of retries of a task not yet executed still make at most one execution. Every retry
//! is an audit record (`whale_kernel::audit`); none is done while the trail cannot take one.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::Serialize;
use serde_json::json;
use whale_kernel::audit::{self, Actor, Outcome, Record, Target};
use whale_kernel::kv::{Bucket, Ttl};
use whale_kernel::records::{self, DeadLetter};
use whale_kernel::subjects::{self, Pipe};
use whale_kernel::{envelope, history, Nats, Output, Window};

use crate::claim::{self, Claim, ClaimError, Claims};

/// Key prefix of retry markers in `whale_state` (lifetime: the bucket's max age).
pub const RETRY_PREFIX: &str = whale_kernel::keys::DEAD_LETTER_RETRY;

/// Why a dead-letter call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
    /// The audit trail cannot take a record now: nothing was done.
    #[error(transparent)]
    AuditUnavailable(audit::Unavailable),
    /// Retried, but its audit record could not be written.
    #[error("task {} was retried, but its audit record is missing: {err}", entry.task_id)]
    AuditMissing { entry: Box<Entry>, err: String },
}

impl Error {
    pub fn http_status(&self) -> u16 {
        match self {
            Error::NotFound(_) => 404,
            Error::Conflict(_) => 409,
            Error::Internal(_) | Error::AuditMissing { .. } => 500,
            Error::AuditUnavailable(_) => 503,
        }
    }
}

/// The value of `dead-letter-retry.<task>`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RetryMark {
    /// How many times an operator retried the task.
    pub retries: u64,
    pub by: String,
    /// RFC 3339, the last retry.
    pub at: String,
    /// The claim revision the last retry wrote (0: the task had no claim).
    #[serde(default)]
    pub claim_revision: u64,
}

/// One dead letter and where its task stands now.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub task_id: String,
    pub rule: String,
    pub event_id: String,
    pub action: String,
    pub cluster: String,
    /// `dead` (waiting for an operator), `retried` (re-driven, not executed yet) or `executed`.
    pub state: &'static str,
    pub reason: String,
    /// RFC 3339: when the dead letter was recorded.
    pub dead_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryMark>,
}

/// [`Entry`] with the whole record and the claim, for `show`.
#[derive(Debug, Clone, Serialize)]
pub struct Detail {
    #[serde(flatten)]
    pub entry: Entry,
    pub record: DeadLetter,
    pub claim: Option<Claim>,
}

#[derive(Clone)]
pub struct DeadLetters {
    nats: Nats,
    claims: Claims,
    state: Bucket,
}

impl DeadLetters {
    pub async fn new(nats: &Nats) -> anyhow::Result<DeadLetters> {
        Ok(DeadLetters {
            nats: nats.clone(),
            claims: Claims::open(nats).await?,
            state: Bucket::open(nats, subjects::KV_STATE).await?,
        })
    }

    /// Every dead letter `WHALE_PIPE` still holds (the latest per task), oldest first.
    async fn records(&self) -> anyhow::Result<Vec<(DeadLetter, time::OffsetDateTime)>> {
        let mut by_task: BTreeMap<String, (DeadLetter, time::OffsetDateTime)> = BTreeMap::new();
        let mut bad = 0u64;
        history::read(
            &self.nats,
            subjects::STREAM_PIPE,
            &Pipe::DeadLetter.subject(),
            time::OffsetDateTime::UNIX_EPOCH,
            time::OffsetDateTime::now_utc() + time::Duration::minutes(1),
            |d| match serde_json::from_slice::<DeadLetter>(&d.payload) {
                Ok(r) => {
                    by_task.insert(r.task.task_id.clone(), (r, d.published));
                }
                Err(_) => bad += 1,
            },
        )
        .await?;
        if bad > 0 {
            tracing::warn!("{bad} dead-letter records are not readable and are not listed");
        }
        let mut v: Vec<_> = by_task.into_values().collect();
        v.sort_by_key(|(_, t)| *t);
        Ok(v)
    }

    async fn mark(&self, task_id: &str) -> anyhow::Result<Option<RetryMark>> {
        let v = self
            .state
            .get(&whale_kernel::keys::dead_letter_retry(task_id))
            .await
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", subjects::KV_STATE))?;
        Ok(v.and_then(|b| serde_json::from_slice(&b).ok()))
    }

    async fn claim(&self, task_id: &str) -> anyhow::Result<Option<(Claim, u64)>> {
        let Some(key) = claim::key(task_id) else {
            return Ok(None);
        };
        Ok(self.claims.get(&key).await?)
    }

    async fn entry(&self, rec: &DeadLetter, at: time::OffsetDateTime) -> anyhow::Result<Entry> {
        let t = &rec.task;
        let claim = self.claim(&t.task_id).await?;
        let retry = self.mark(&t.task_id).await?;
        let mut reason = rec.reason.clone();
        let mut execution_id = None;
        let state = match (&claim, &retry) {
            (
                Some((
                    Claim::Created {
                        execution_id: e, ..
                    },
                    _,
                )),
                _,
            ) => {
                execution_id = Some(e.clone());
                "executed"
            }
            (Some((Claim::Dead { reason: r, .. }, rev)), Some(m)) if *rev > m.claim_revision => {
                // Dead again after the last retry: its newest reason.
                reason = r.clone();
                "dead"
            }
            (_, Some(_)) => "retried",
            _ => "dead",
        };
        Ok(Entry {
            task_id: t.task_id.clone(),
            rule: t.rule.clone(),
            event_id: t.event_id.clone(),
            action: t.action.clone(),
            cluster: rec.cluster.clone(),
            state,
            reason,
            dead_at: envelope::format_time(at),
            execution_id,
            retry,
        })
    }

    /// Dead letters; without `all`, only those waiting for an operator (state `dead`).
    pub async fn list(&self, all: bool) -> Result<Vec<Entry>, Error> {
        let mut out = Vec::new();
        for (rec, at) in self.records().await? {
            let e = self.entry(&rec, at).await?;
            if all || e.state == "dead" {
                out.push(e);
            }
        }
        Ok(out)
    }

    async fn find(&self, task_id: &str) -> Result<(DeadLetter, time::OffsetDateTime), Error> {
        self.records()
            .await?
            .into_iter()
            .find(|(r, _)| r.task.task_id == task_id)
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "no dead letter for task {task_id:?} in {} (dead letters are kept there for nats.pipe_retention; \
                     older ones are in the index: `whale events search 'kind:dead_letter'`)",
                    subjects::STREAM_PIPE
                ))
            })
    }

    pub async fn show(&self, task_id: &str) -> Result<Detail, Error> {
        let (record, at) = self.find(task_id).await?;
        let entry = self.entry(&record, at).await?;
        let claim = self.claim(task_id).await?.map(|(c, _)| c);
        Ok(Detail {
            entry,
            record,
            claim,
        })
    }

    /// Re-drives the task (same task id) to its cluster; `who` is recorded.
    /// Re-drives a dead letter (see [`DeadLetters::retry_once`]) as `actor`, audited: nothing is
    /// done while the audit trail cannot take a record; every attempt is recorded (done, refused
    /// or failed), a done one under the natural id `<task>:<retry number>`.
    pub async fn retry(&self, task_id: &str, actor: &Actor) -> Result<Entry, Error> {
        audit::check(&self.nats)
            .await
            .map_err(Error::AuditUnavailable)?;
        let r = self.retry_once(task_id, &actor.who).await;
        let mut rec = Record::new(
            actor,
            audit::Action::DeadLetterRetry,
            Target::new("task", task_id),
        );
        rec.task_id = Some(task_id.to_owned());
        rec = match &r {
            Ok(e) => {
                let n = e.retry.as_ref().map_or(1, |m| m.retries);
                rec.event_id = Some(e.event_id.clone());
                rec.rule = Some(e.rule.clone());
                rec.cluster = Some(e.cluster.clone());
                rec.natural_id(&format!("{task_id}:{n}"))
                    .details(json!({"retry": n}))
            }
            Err(e @ (Error::NotFound(_) | Error::Conflict(_))) => {
                rec.outcome(Outcome::Refused, Some(e.to_string()))
            }
            Err(e) => rec.outcome(Outcome::Failed, Some(e.to_string())),
        };
        match (audit::record(&self.nats, &rec).await, r) {
            (Err(err), Ok(entry)) => Err(Error::AuditMissing {
                entry: Box::new(entry),
                err: format!("{err:#}"),
            }),
            (_, r) => r,
        }
    }

    async fn retry_once(&self, task_id: &str, who: &str) -> Result<Entry, Error> {
        let (rec, at) = self.find(task_id).await?;
        let task = &rec.task;
        if !subjects::is_token(&task.cluster) {
            return Err(Error::Conflict(format!(
                "task {task_id} names cluster {:?}, which cannot be a subject: it cannot be retried (fix the rule's route and let the event fire again)",
                task.cluster
            )));
        }
        let key = claim::key(task_id).ok_or_else(|| {
            Error::Conflict(format!(
                "task id {task_id:?} cannot be claimed: it cannot be retried"
            ))
        })?;
        let prev = self.mark(task_id).await?;
        let now = envelope::format_time(time::OffsetDateTime::now_utc());
        let claim_revision = match self.claims.get(&key).await.map_err(anyhow::Error::from)? {
            Some((Claim::Created { execution_id, .. }, _)) => {
                return Err(Error::Conflict(format!(
                    "task {task_id} was already executed (execution {execution_id}): not retried"
                )))
            }
            Some((
                Claim::Dead {
                    cluster, reason, ..
                },
                rev,
            )) => {
                // Interrupted, not dead: dispatch asks `cluster` by trace tag before any POST.
                let interrupted = Claim::Pending {
                    cluster,
                    owner: String::new(),
                    lease_until_ms: 0,
                    errors: 0,
                    last_error: Some(format!("retried by {who} at {now}; was dead: {reason}")),
                };
                match self.claims.update(&key, &interrupted, rev).await {
                    Ok(r) => r,
                    Err(ClaimError::Conflict) => {
                        return Err(Error::Conflict(format!(
                            "task {task_id}'s claim changed while retrying it (another retry or a worker): look again"
                        )))
                    }
                    Err(e) => return Err(anyhow::Error::from(e).into()),
                }
            }
            // Pending (retried already, or interrupted) or no claim (never reached a cluster):
            // dispatch's claim decides; re-publishing is safe.
            Some((_, rev)) => rev,
            None => 0,
        };
        let mark = RetryMark {
            retries: prev.as_ref().map_or(0, |m| m.retries) + 1,
            by: who.to_owned(),
            at: now,
            claim_revision,
        };
        self.state
            .put(
                &whale_kernel::keys::dead_letter_retry(task_id),
                Bytes::from(serde_json::to_vec(&mark).map_err(anyhow::Error::from)?),
                Ttl::Bucket,
            )
            .await
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", subjects::KV_STATE))?;
        // A fresh msg id per retry (JetStream would drop a copy of the original admission).
        let out = Output::json(
            Pipe::Admitted.subject_with(&task.cluster),
            records::msg_id::admitted_retry(task_id, mark.retries),
            task,
        );
        let mut w: Window<()> = Window::on(&self.nats, 1);
        let mut results = w.send((), records::tagged(out, task)).await;
        results.extend(w.drain().await);
        if let Some((_, Err(e))) = results.into_iter().find(|(_, r)| r.is_err()) {
            return Err(anyhow::anyhow!(
                "the task could not be re-published to {}: {e} (its claim was reset; retry again)",
                Pipe::Admitted.subject_with(&task.cluster)
            )
            .into());
        }
        tracing::info!(task = %task_id, who, retries = mark.retries, "dead letter retried");
        Ok(self.entry(&rec, at).await?)
    }
}

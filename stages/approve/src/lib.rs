//! The approval gate: a rule with `approval: {required: true, timeout, channel}` holds its task
//! here, after throttle, until a person approves or denies it — with a signed, expiring,
//! single-use link sent to the channel, `whale approvals approve|deny`, or `/v1/approvals` — or
//! the timeout expires it. Approve → the task goes on to dispatch (`whale.pipe.admitted.<cluster>`,
//! msg id `adm:<task_id>`, so it is dispatched once); deny or timeout → recorded, not dispatched.
//!
//! The gate's consumer reads three subjects:
//! - `whale.pipe.approval` (from throttle): store the pending approval in KV, send the channel
//!   its message (a notification request), start the timer;
//! - `whale.pipe.approval.wait` (the timer): one message per approval, redelivered (nak with
//!   delay) until the approval is decided or times out, so a timeout fires even across restarts
//!   and a decision whose record was lost is published again from KV;
//! - `whale.pipe.decision`: an `approved` decision admits the task.
//!
//! [`store`] holds the KV state and the single compare-and-set decision; [`link`] signs links;
//! [`http`] serves them and the API.

pub mod http;
pub mod link;
mod message;
mod page;
pub mod store;

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use whale_kernel::records::{self, ApprovalState, Decision, Task};
use whale_kernel::subjects::{self, Pipe};
use whale_kernel::{Config, Delivery, Nats, Outcome, Output, Secret};

/// The timer's message: which approval to look at.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Wait {
    pub task_id: String,
    pub expires: String,
}

/// How often a pending approval's timer looks at it (bounds how long a lost decision record
/// stays unpublished).
const WAIT_STEP: Duration = Duration::from_secs(30);

/// Link settings shared by the stage and the HTTP routes.
#[derive(Clone)]
pub struct Links {
    pub secret: Option<Secret>,
    pub base: String,
    pub ttl: Option<Duration>,
}

impl Links {
    /// The link settings; refuses a weak or placeholder secret (see [`link::check_secret`]), so
    /// `whale run` with the approve stage does not start with links anyone could forge.
    pub fn from_config(cfg: &Config) -> anyhow::Result<Links> {
        if let Some(secret) = &cfg.approvals.secret {
            let var = cfg
                .approvals
                .secret_env
                .as_deref()
                .unwrap_or("WHALE_APPROVAL_SECRET");
            link::check_secret(var, secret)?;
        }
        let base = cfg.approvals.public_url.clone().unwrap_or_else(|| {
            let scheme = if cfg.http.tls_cert_file.is_some() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{}", cfg.http.addr)
        });
        Ok(Links {
            secret: cfg.approvals.secret.clone(),
            base,
            ttl: cfg.approvals.link_ttl,
        })
    }
}

/// The stage.
pub struct Approve {
    kv: store::Approvals,
    links: Links,
}

impl Approve {
    pub async fn build(nats: &Nats, cfg: &Config) -> anyhow::Result<Approve> {
        let links = Links::from_config(cfg)?;
        if links.secret.is_none() {
            tracing::warn!("WHALE_APPROVAL_SECRET is not set: approval messages carry no links (decide with `whale approvals` or /v1/approvals)");
        }
        let kv = store::bucket(nats, cfg).await?;
        tokio::spawn(watch_queue(kv.clone()));
        Ok(Approve { kv, links })
    }

    async fn request(&self, d: &Delivery) -> Outcome {
        let task: Task = match d.decode("task record") {
            Ok(t) => t,
            Err(malformed) => return malformed,
        };
        let a = match store::open(&self.kv, &task, self.links.ttl).await {
            Ok(a) => a,
            Err(e) => return kv_down(e),
        };
        let mut out = Vec::new();
        if let Some(channel) = &a.channel {
            out.push(message::request(&a, channel, &self.links));
        }
        let wait = Wait {
            task_id: task.task_id.clone(),
            expires: store::format_time(a.expires),
        };
        out.push(headers(
            Output::json(
                subjects::approval_wait(),
                records::msg_id::approval_wait(&task.task_id),
                &wait,
            ),
            &task,
        ));
        Outcome::Ack(out)
    }

    async fn wait(&self, d: &Delivery) -> Outcome {
        let w: Wait = match d.decode("approval timer") {
            Ok(w) => w,
            Err(malformed) => return malformed,
        };
        let a = match store::read(&self.kv, &w.task_id).await {
            Ok(Some((a, _))) => a,
            Ok(None) => {
                tracing::warn!(task_id = %w.task_id, "approval timer for an approval that is not there");
                return Outcome::Ack(vec![]);
            }
            Err(e) => return kv_down(e),
        };
        if a.is_pending() {
            let left = a.expires_unix - OffsetDateTime::now_utc().unix_timestamp();
            if left > 0 {
                let delay = Duration::from_secs(left as u64).min(WAIT_STEP);
                return Outcome::Retry {
                    delay,
                    reason: "waiting for a decision".into(),
                };
            }
            return match store::expire(&self.kv, &w.task_id).await {
                Ok(Some(a)) => {
                    tracing::info!(task_id = %w.task_id, state = %a.state, "approval timed out");
                    Outcome::Ack(vec![a.decision_output()])
                }
                Ok(None) => Outcome::Ack(vec![]),
                Err(e) => kv_down(e),
            };
        }
        // Decided: (re)publish the decision; the msg id makes a second copy a no-op.
        Outcome::Ack(vec![a.decision_output()])
    }

    async fn decision(&self, d: &Delivery) -> Outcome {
        let dec: Decision = match d.decode("decision record") {
            Ok(x) => x,
            Err(malformed) => return malformed,
        };
        if dec.decision != ApprovalState::Approved {
            return Outcome::Ack(vec![]);
        }
        // Only what KV says was approved goes on (a stray record cannot admit a task).
        match store::read(&self.kv, &dec.task.task_id).await {
            Ok(Some((a, _))) if a.state == ApprovalState::Approved => {}
            Ok(other) => {
                let state = other.map_or("missing", |(a, _)| a.state.as_str());
                tracing::warn!(task_id = %dec.task.task_id, %state, "an approved decision that KV does not confirm; not admitted");
                return Outcome::Ack(vec![]);
            }
            Err(e) => return kv_down(e),
        }
        let task = dec.task;
        if let Some(dead) = records::unroutable(&task) {
            return Outcome::Ack(vec![dead]);
        }
        Outcome::Ack(vec![task.admitted()])
    }
}

#[async_trait]
impl whale_kernel::Stage for Approve {
    fn name(&self) -> &'static str {
        "approve"
    }

    async fn handle(&self, d: &Delivery) -> Outcome {
        if d.subject == subjects::approval_wait() {
            self.wait(d).await
        } else if d.subject == Pipe::Decision.subject() {
            self.decision(d).await
        } else {
            self.request(d).await
        }
    }
}

fn headers(out: Output, task: &Task) -> Output {
    records::tagged(out, task)
}

fn kv_down(e: anyhow::Error) -> Outcome {
    Outcome::Retry {
        delay: Duration::from_secs(2),
        reason: format!("KV unavailable: {e:#}"),
    }
}

/// How often the approval queue is read for `/metrics`.
const QUEUE_EVERY: std::time::Duration = std::time::Duration::from_secs(15);

/// Reads the pending approvals every [`QUEUE_EVERY`] into `whale_approvals_pending` and
/// `whale_approvals_oldest_pending_age_seconds` (a failed read keeps the last values).
async fn watch_queue(kv: store::Approvals) {
    let mut every = tokio::time::interval(QUEUE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Ok(all) = store::list(&kv).await else {
            continue;
        };
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let pending: Vec<&store::Approval> = all.iter().filter(|a| a.is_pending()).collect();
        let oldest = pending
            .iter()
            .map(|a| now - a.requested_unix())
            .max()
            .unwrap_or(0)
            .max(0);
        whale_kernel::metrics::approvals(pending.len() as u64, oldest as u64);
    }
}

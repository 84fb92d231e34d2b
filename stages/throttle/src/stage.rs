//! The [`Stage`] itself: reads a batch of tasks, lets unthrottled ones through, asks Redis about
//! the rest in one pipeline, and turns each answer into records and an outcome. While Redis is
//! unreachable, tasks wait (nak with delay, redelivered) unless their rule says `fail_open`; the
//! outage is logged when it starts and when it ends, not once per task.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use whale_kernel::failpoint::KillAfter;
use whale_kernel::records::{self, Task, Throttle, ThrottleMode, Throttled};
use whale_kernel::subjects::HDR_RULE;
use whale_kernel::{Config, Delivery, Outcome, Output, Secret, Stage};

use crate::limiter::{self, Limiter};
use crate::metrics::{self, Kind};
use crate::policy::{self, Plan, Request};

/// How long a task waits before it is redelivered while Redis is unreachable.
pub const REDIS_RETRY: Duration = Duration::from_secs(2);

/// Test hook, never set in production: after this many Redis decisions the process kills itself
/// with SIGKILL before publishing or acking them — a crash exactly between the decision and the
/// ack, which the integration tests use to prove decisions are idempotent per task.
pub const KILL_AFTER_ENV: &str = "WHALE_THROTTLE_TEST_KILL_AFTER";

/// The throttle stage.
pub struct ThrottleStage {
    limiter: Limiter,
    outage: Outage,
    kill_after: KillAfter,
}

impl ThrottleStage {
    /// A stage using the Redis at `redis_url`. Does not connect yet (see [`Limiter::new`]).
    pub fn new(redis_url: &Secret) -> Result<ThrottleStage, limiter::Setup> {
        Ok(ThrottleStage {
            limiter: Limiter::new(redis_url)?,
            outage: Outage::default(),
            kill_after: KillAfter::never(KILL_AFTER_ENV),
        })
    }

    /// The stage `whale run --stages throttle` runs: `redis.url` from the configuration.
    pub fn from_config(cfg: &Config) -> Result<ThrottleStage, limiter::Setup> {
        Ok(ThrottleStage {
            limiter: Limiter::from_config(&cfg.redis)?,
            outage: Outage::default(),
            kill_after: KillAfter::from_env(KILL_AFTER_ENV)?,
        })
    }

    /// The limiter, for tools and benchmarks that ask Redis directly.
    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }

    fn failpoint(&self, n: usize) {
        self.kill_after
            .count(n as u64, "decisions, before publishing or acking them");
    }
}

/// A task that needs an answer from Redis.
struct Ask {
    index: usize,
    task: Task,
    payload: Bytes,
}

#[async_trait]
impl Stage for ThrottleStage {
    fn name(&self) -> &'static str {
        "throttle"
    }

    async fn handle(&self, msg: &Delivery) -> Outcome {
        let mut out = self.handle_batch(std::slice::from_ref(msg)).await;
        out.pop().unwrap_or(Outcome::Retry {
            delay: REDIS_RETRY,
            reason: "no outcome".into(),
        })
    }

    async fn handle_batch(&self, batch: &[Delivery]) -> Vec<Outcome> {
        let mut outcomes: Vec<Option<Outcome>> = batch.iter().map(|_| None).collect();
        let mut asks = Vec::new();
        let mut reqs: Vec<Request> = Vec::new();
        for (index, d) in batch.iter().enumerate() {
            let (task, payload) = match read_task(d) {
                Ok(t) => t,
                Err(reason) => {
                    metrics::count(d.header(HDR_RULE).unwrap_or(""), Kind::Malformed);
                    outcomes[index] = Some(Outcome::Malformed { reason });
                    continue;
                }
            };
            if let Some(dead) = unroutable(&task) {
                metrics::count(&task.rule, Kind::Malformed);
                outcomes[index] = Some(Outcome::Ack(vec![dead]));
                continue;
            }
            let Some(t) = &task.throttle else {
                metrics::count(&task.rule, Kind::Unthrottled);
                outcomes[index] = Some(Outcome::Ack(vec![admit(&task, &payload)]));
                continue;
            };
            match policy::plan(&task.rule, t, &task.task_id) {
                Plan::Admit => {
                    metrics::count(&task.rule, Kind::Admitted);
                    outcomes[index] = Some(Outcome::Ack(vec![admit(&task, &payload)]));
                }
                Plan::Throttle { retry_after_ms } => {
                    metrics::count(&task.rule, Kind::Throttled);
                    let reason = format!(
                        "rule {} has limit 0: its tasks are never admitted",
                        task.rule
                    );
                    outcomes[index] =
                        Some(Outcome::Ack(vec![throttled(task, retry_after_ms, reason)]));
                }
                Plan::Ask(req) => {
                    reqs.push(req);
                    asks.push(Ask {
                        index,
                        task,
                        payload,
                    });
                }
            }
        }
        if !asks.is_empty() {
            let spans: Vec<_> = asks
                .iter()
                .map(|a| {
                    whale_kernel::tracectx::child(&batch[a.index], "throttle", "redis decision")
                })
                .collect();
            let decisions = self.limiter.decide(&reqs).await;
            drop(spans);
            self.outage.observe(&decisions);
            self.failpoint(decisions.iter().filter(|d| d.is_ok()).count());
            for (ask, decision) in asks.into_iter().zip(decisions) {
                let index = ask.index;
                outcomes[index] = Some(conclude(ask, decision));
            }
        }
        outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or(Outcome::Retry {
                    delay: REDIS_RETRY,
                    reason: "no decision".into(),
                })
            })
            .collect()
    }
}

/// The outcome of one task once Redis answered (or could not).
fn conclude(ask: Ask, decision: Result<limiter::Decision, limiter::Error>) -> Outcome {
    let Ask { task, payload, .. } = ask;
    match decision {
        Ok(d) => {
            if d.repeated {
                metrics::count(&task.rule, Kind::Repeated);
            }
            if d.admitted {
                metrics::count(&task.rule, Kind::Admitted);
                Outcome::Ack(vec![admit(&task, &payload)])
            } else {
                metrics::count(&task.rule, Kind::Throttled);
                let reason = over_limit(&task);
                Outcome::Ack(vec![throttled(task, d.retry_after_ms, reason)])
            }
        }
        Err(_) if task.throttle.as_ref().is_some_and(|t| t.fail_open) => {
            metrics::count(&task.rule, Kind::FailOpen);
            Outcome::Ack(vec![admit(&task, &payload)])
        }
        Err(e) => {
            metrics::count(&task.rule, Kind::WaitingForRedis);
            Outcome::Retry {
                delay: REDIS_RETRY,
                reason: e.to_string(),
            }
        }
    }
}

/// Reads a task record. A payload that is not UTF-8 is read with the bad bytes replaced (U+FFFD)
/// rather than refused, so a key with odd bytes still gets a bucket and a decision.
fn read_task(d: &Delivery) -> Result<(Task, Bytes), String> {
    match serde_json::from_slice::<Task>(&d.payload) {
        Ok(t) => Ok((t, d.payload.clone())),
        Err(e) if std::str::from_utf8(&d.payload).is_ok() => Err(format!("not a task record: {e}")),
        Err(_) => {
            let text = String::from_utf8_lossy(&d.payload).into_owned();
            let t = serde_json::from_str::<Task>(&text)
                .map_err(|e| format!("not a task record: {e}"))?;
            Ok((t, Bytes::from(text)))
        }
    }
}

/// The record that lets a task on: to the approval gate when it needs a person, else to
/// dispatch on its cluster's subject.
fn admit(task: &Task, payload: &Bytes) -> Output {
    task.passed_on(payload.clone())
}

fn throttled(task: Task, retry_after_ms: u64, reason: String) -> Output {
    Throttled {
        task,
        retry_after_ms,
        reason,
    }
    .output()
}

/// A task bound for dispatch whose cluster cannot be a subject token is dead-lettered here,
/// before it takes a token (publishing it would fail forever).
fn unroutable(task: &Task) -> Option<Output> {
    if task.approval.is_some() {
        return None;
    }
    records::unroutable(task)
}

/// Why a task was throttled, for `whale trace`.
fn over_limit(task: &Task) -> String {
    let Some(t) = &task.throttle else {
        return String::new();
    };
    let per = humantime::format_duration(Duration::from_millis(t.per_ms));
    match t.mode {
        ThrottleMode::OnceWithin => format!(
            "rule {}: once within {per} per key, and key {} already fired",
            task.rule,
            show_key(t)
        ),
        ThrottleMode::Rate if t.burst > 0 => format!(
            "rule {}: over {} per {per} (burst {}) for key {}",
            task.rule,
            t.limit,
            t.burst,
            show_key(t)
        ),
        ThrottleMode::Rate => format!(
            "rule {}: over {} per {per} for key {}",
            task.rule,
            t.limit,
            show_key(t)
        ),
    }
}

/// The key as shown in a reason: quoted, escaped, cut at 64 characters.
fn show_key(t: &Throttle) -> String {
    const MAX: usize = 64;
    let n = t.key.chars().count();
    if n <= MAX {
        format!("{:?}", t.key)
    } else {
        let head: String = t.key.chars().take(MAX).collect();
        format!("{head:?}… ({n} characters)")
    }
}

/// Redis availability as seen by this process: logged when an outage starts and when it ends.
#[derive(Default)]
struct Outage {
    since: Mutex<Option<Instant>>,
}

impl Outage {
    fn observe(&self, decisions: &[Result<limiter::Decision, limiter::Error>]) {
        let first_err = decisions.iter().find_map(|d| d.as_ref().err());
        let answered = decisions.iter().any(|d| d.is_ok());
        let mut since = self.since.lock().unwrap_or_else(|p| p.into_inner());
        match (answered, first_err) {
            (false, Some(e)) => {
                metrics::redis_up(false);
                if since.is_none() {
                    *since = Some(Instant::now());
                    tracing::warn!(
                        "{e}; throttled tasks wait and are retried every {}s (rules with fail_open are admitted) until it answers",
                        REDIS_RETRY.as_secs()
                    );
                }
            }
            _ => {
                metrics::redis_up(true);
                if let Some(t) = since.take() {
                    tracing::info!(
                        "Redis answers again after {:.1}s; throttle decisions resumed",
                        t.elapsed().as_secs_f64()
                    );
                }
            }
        }
    }
}

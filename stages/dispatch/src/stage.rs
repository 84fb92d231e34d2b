//! The dispatch [`Stage`]: one admitted task from route to claim, POST and record, following the
//! claim protocol of [`crate::claim`]. A batch runs concurrently (each task is an HTTP round
//! trip), bounded by `dispatch.concurrency` and by each cluster's `max_concurrent`.
//!
//! Outcomes: a `Dispatched` record (ack); a dead letter (ack) for a task StackStorm refused (4xx,
//! with its `faultstring`), one that failed `max_attempts` times, or one whose cluster is unknown;
//! a retry with backoff after a 5xx, timeout or connection error; a retry after `wait_retry`
//! while no cluster can take the task (drained, breaker open), until `max_wait`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use tracing::Instrument;
use whale_kernel::backoff::{jitter, Backoff};
use whale_kernel::config::DispatchConfig;
use whale_kernel::failpoint::KillAfter;
use whale_kernel::records::{DeadLetter, Dispatched, Task};
use whale_kernel::{Config, Delivery, Nats, Outcome, Output, Stage};
use whale_st2::{ExecutionRequest, St2Error};

use crate::claim::{self, Claim, ClaimError, Claims};
use crate::clusters::{verdict, Cluster, Clusters, Route, Verdict};
use crate::metrics::{self, Kind};

/// Test hook, never set in production: after this many executions created, the process kills
/// itself (SIGKILL) before recording the execution id or acking — the crash the claim protocol
/// exists for. The integration tests use it to prove the restart finds the execution instead of
/// creating a second one.
pub const KILL_AFTER_ENV: &str = "WHALE_DISPATCH_TEST_KILL_AFTER";

/// Delay before a task is looked at again after the claims bucket did not answer.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// The dispatch stage.
pub struct Dispatch {
    clusters: Clusters,
    claims: Claims,
    cfg: DispatchConfig,
    backoff: Backoff,
    /// How long a pending claim protects its POST: twice the request timeout.
    lease: Duration,
    /// How long a claim lives (`state.claims`): an older task may have lost its claim.
    claims_lifetime: Duration,
    /// This worker's id, the prefix of every claim owner token it writes.
    worker: String,
    attempts: AtomicU64,
    kill_after: KillAfter,
}

/// The message being handled.
struct Job<'a> {
    d: &'a Delivery,
    task: Task,
    key: String,
}

impl Dispatch {
    /// Clients for the configured clusters, the drain watch and the claims bucket. Refuses to
    /// start without any cluster: every task would be dead-lettered.
    pub async fn start(nats: &Nats, cfg: &Config) -> anyhow::Result<Dispatch> {
        let worker = ulid::Ulid::new().to_string();
        let mut clusters = Clusters::from_config(cfg, &worker)?;
        if clusters.names().next().is_none() {
            anyhow::bail!("no StackStorm cluster is configured: set WHALE_ST2_URL (and WHALE_ST2_API_KEY) for the `default` cluster, or add [clusters.<name>] to whale.toml");
        }
        clusters.watch(nats).await?;
        for name in clusters.names() {
            metrics::known_cluster(name);
        }
        let claims = Claims::open(nats).await?;
        let d = cfg.dispatch.clone();
        Ok(Dispatch {
            clusters,
            claims,
            backoff: Backoff {
                base: d.backoff_base,
                max: d.backoff_max,
            },
            lease: d.request_timeout * 2,
            claims_lifetime: cfg.claims_lifetime(),
            cfg: d,
            worker,
            attempts: AtomicU64::new(0),
            kill_after: KillAfter::from_env(KILL_AFTER_ENV)?,
        })
    }

    /// The clusters this worker routes over.
    pub fn clusters(&self) -> &Clusters {
        &self.clusters
    }

    /// A token unique to one attempt of this worker.
    fn owner(&self) -> String {
        format!(
            "{}-{}",
            self.worker,
            self.attempts.fetch_add(1, Ordering::Relaxed)
        )
    }

    fn pending(
        &self,
        cluster: &str,
        owner: &str,
        errors: u32,
        last_error: Option<String>,
    ) -> Claim {
        Claim::Pending {
            cluster: cluster.to_owned(),
            owner: owner.to_owned(),
            lease_until_ms: claim::now_ms() + self.lease.as_millis() as u64,
            errors,
            last_error,
        }
    }

    async fn one(&self, d: &Delivery) -> Outcome {
        let task: Task = match d.decode("task record") {
            Ok(t) => t,
            Err(malformed) => {
                metrics::count(Kind::Malformed);
                return malformed;
            }
        };
        let Some(key) = claim::key(&task.task_id) else {
            let reason = format!(
                "task id {:?} cannot be claimed (letters, digits, '-', '_' and '=' only)",
                task.task_id
            );
            let cluster = task.cluster.clone();
            return self
                .dead(
                    &Job {
                        d,
                        task,
                        key: String::new(),
                    },
                    &cluster,
                    reason,
                    None,
                    0,
                    false,
                )
                .await;
        };
        let job = Job { d, task, key };
        let route = self.clusters.route(&job.task.cluster).await;
        let mut mine = None;
        if let Route::To { cluster, .. } = &route {
            if claim::may_have_expired(job.task.created, self.claims_lifetime) {
                // Older than a claim lives: "no claim" no longer proves it never ran. Claim it
                // as interrupted, so that the cluster is asked by trace tag before any POST.
                let unknown = Claim::Pending {
                    cluster: cluster.clone(),
                    owner: String::new(),
                    lease_until_ms: 0,
                    errors: 0,
                    last_error: Some(
                        "older than a claim lives (state.claims): reconciled by trace tag first"
                            .into(),
                    ),
                };
                match self.claims.create(&job.key, &unknown).await {
                    Ok(_) | Err(ClaimError::Conflict) => {}
                    Err(e) => return store_retry(e),
                }
            }
        }
        if let Route::To { cluster, rerouted } = &route {
            let c = self.cluster(cluster);
            let slot = c.permit().await;
            let owner = self.owner();
            match self
                .claims
                .create(&job.key, &self.pending(cluster, &owner, 0, None))
                .await
            {
                Ok(rev) => {
                    if *rerouted {
                        metrics::count(Kind::Rerouted);
                    }
                    let out = self.create(&job, c, &owner, 0, rev).await;
                    drop(slot);
                    return out;
                }
                Err(ClaimError::Conflict) => mine = Some(owner),
                Err(e) => return store_retry(e),
            }
        }
        match self.claims.get(&job.key).await {
            Err(e) => store_retry(e),
            Ok(Some((claim, rev))) => self.resume(&job, claim, rev, mine.as_deref()).await,
            Ok(None) => match route {
                Route::To { .. } => Outcome::Retry {
                    delay: Duration::from_millis(100),
                    reason: "the claim was deleted while being read".into(),
                },
                Route::Wait { reason } => self.wait(&job, reason).await,
                Route::Dead { reason } => {
                    let cluster = job.task.cluster.clone();
                    self.dead(&job, &cluster, reason, None, 0, false).await
                }
            },
        }
    }

    fn cluster(&self, name: &str) -> &Arc<Cluster> {
        self.clusters
            .get(name)
            .expect("routes name configured clusters")
    }

    /// A task that was claimed before (a redelivery, or another worker's copy).
    async fn resume(&self, job: &Job<'_>, claim: Claim, rev: u64, mine: Option<&str>) -> Outcome {
        if let Some(left) = claim.leased_by_other(mine.unwrap_or(""), claim::now_ms()) {
            return Outcome::Retry {
                delay: left + jitter(Duration::from_millis(400)),
                reason:
                    "another worker is creating this task's execution; waiting for its lease to end"
                        .into(),
            };
        }
        let (cluster, errors, last_error) = match claim {
            Claim::Created {
                cluster,
                execution_id,
                web_url,
                created,
            } => {
                metrics::count(Kind::Republished);
                return ack(dispatched(
                    &job.task,
                    cluster,
                    execution_id,
                    web_url,
                    created,
                ));
            }
            Claim::Dead {
                cluster,
                reason,
                faultstring,
                attempts,
            } => {
                metrics::count(Kind::DeadLetter);
                return ack(dead_letter(
                    &job.task,
                    cluster,
                    reason,
                    faultstring,
                    attempts,
                ));
            }
            Claim::Pending {
                cluster,
                errors,
                last_error,
                ..
            } => (cluster, errors, last_error),
        };
        // Claimed on `cluster` without an execution id: the POST may have gone through there.
        let Some(c) = self.clusters.get(&cluster) else {
            let reason = format!("the task was claimed on cluster {cluster:?}, which is no longer configured; it may have been created there, so it is not created anywhere else");
            return self
                .dead(job, &cluster, reason, None, u64::from(errors), true)
                .await;
        };
        if let Err(why) = self.clusters.healthy(c).await {
            let reason = format!("the task was claimed on {cluster}, which must be asked whether it exists before it is created anywhere: {why}");
            return self.wait(job, reason).await;
        }
        let owner = self.owner();
        let slot = c.permit().await;
        let taken = self.pending(&cluster, &owner, errors, last_error.clone());
        let mut rev = match self.claims.update(&job.key, &taken, rev).await {
            Ok(r) => r,
            Err(e) => return store_retry(e),
        };
        match c.st2.find_by_trace_tag(&job.task.task_id).await {
            Ok(Some(exec)) => {
                self.clusters.succeeded(c);
                metrics::count(Kind::Reconciled);
                tracing::info!(cluster = %c.name, execution = %exec.id, "execution found by trace tag after an interrupted attempt; not creating another");
                let created = exec
                    .start_timestamp
                    .clone()
                    .unwrap_or_else(crate::state::now_rfc3339);
                return self.record(job, c, exec.id, exec.web_url, created).await;
            }
            Ok(None) => self.clusters.succeeded(c),
            Err(e) => return self.failed(job, c, &e, errors, &owner, rev, true).await,
        }
        drop(slot);
        // StackStorm has none: the task is free to go wherever it would go now.
        match self.clusters.route(&job.task.cluster).await {
            Route::To {
                cluster: target,
                rerouted,
            } => {
                let t = self.cluster(&target);
                let _slot = t.permit().await;
                let fresh = self.pending(&target, &owner, errors, last_error);
                rev = match self.claims.update(&job.key, &fresh, rev).await {
                    Ok(r) => r,
                    Err(e) => return store_retry(e),
                };
                if rerouted {
                    metrics::count(Kind::Rerouted);
                }
                self.create(job, t, &owner, errors, rev).await
            }
            Route::Wait { reason } => {
                let released = Claim::Pending {
                    cluster,
                    owner,
                    lease_until_ms: 0,
                    errors,
                    last_error,
                };
                let _ = self.claims.update(&job.key, &released, rev).await;
                self.wait(job, reason).await
            }
            Route::Dead { reason } => {
                let cluster = job.task.cluster.clone();
                self.dead(job, &cluster, reason, None, u64::from(errors), true)
                    .await
            }
        }
    }

    /// POSTs the execution (the claim at `rev` is ours and leased).
    async fn create(
        &self,
        job: &Job<'_>,
        c: &Cluster,
        owner: &str,
        errors: u32,
        rev: u64,
    ) -> Outcome {
        let t = &job.task;
        let req = ExecutionRequest {
            action: t.action.clone(),
            parameters: t.parameters.clone(),
            context: ExecutionRequest::whale_context_traced(
                &t.event_id,
                &t.rule,
                &t.task_id,
                whale_kernel::tracectx::position(job.d, "dispatch", None)
                    .map(|p| p.traceparent())
                    .as_deref(),
            ),
        };
        let mut span = whale_kernel::tracectx::child(job.d, "dispatch", "stackstorm POST");
        span.set("whale.cluster", c.name.clone());
        span.set("whale.task_id", t.task_id.clone());
        let created = c.st2.create_execution(&req).await;
        if let Err(e) = &created {
            span.error(e.to_string());
        }
        drop(span);
        match created {
            Ok(exec) => {
                self.clusters.succeeded(c);
                metrics::execution_created(&c.name);
                metrics::count(Kind::Created);
                if let Some(ms) = whale_kernel::tracectx::received_ms(job.d) {
                    let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
                    metrics::ingest_to_dispatch(&c.name, (now as i64 - ms).max(0) as f64 / 1000.0);
                }
                self.failpoint();
                let created = exec
                    .start_timestamp
                    .clone()
                    .unwrap_or_else(crate::state::now_rfc3339);
                self.record(job, c, exec.id, exec.web_url, created).await
            }
            Err(e) => self.failed(job, c, &e, errors, owner, rev, false).await,
        }
    }

    /// Records the execution id in the claim and emits the `Dispatched` record.
    async fn record(
        &self,
        job: &Job<'_>,
        c: &Cluster,
        execution_id: String,
        web_url: Option<String>,
        created: String,
    ) -> Outcome {
        let done = Claim::Created {
            cluster: c.name.clone(),
            execution_id: execution_id.clone(),
            web_url: web_url.clone(),
            created: created.clone(),
        };
        if let Err(e) = self.claims.put(&job.key, &done).await {
            // Not fatal: if this message is redelivered, the lookup by trace tag finds it.
            tracing::warn!(cluster = %c.name, execution = %execution_id, "execution created but not recorded in its claim: {e}");
        }
        ack(dispatched(
            &job.task,
            c.name.clone(),
            execution_id,
            web_url,
            created,
        ))
    }

    /// A StackStorm call failed: dead letter when it is final, else count it and retry.
    #[allow(clippy::too_many_arguments)]
    async fn failed(
        &self,
        job: &Job<'_>,
        c: &Cluster,
        err: &St2Error,
        errors: u32,
        owner: &str,
        rev: u64,
        lookup: bool,
    ) -> Outcome {
        self.clusters.failed(c, err);
        let errors = errors.saturating_add(1);
        let (v, _) = verdict(err);
        if v == Verdict::Terminal && !lookup {
            let fault = err.faultstring().map(str::to_owned);
            let reason = format!("StackStorm cluster {} refused the execution: {err}", c.name);
            return self
                .dead(job, &c.name, reason, fault, u64::from(errors), true)
                .await;
        }
        let text = err.to_string();
        if errors >= self.cfg.max_attempts {
            let maybe = match lookup {
                true => " (an execution may exist there from an interrupted attempt)",
                false => "",
            };
            let reason = format!(
                "gave up after {errors} failed attempts on cluster {}{maybe}; last error: {text}",
                c.name
            );
            return self
                .dead(
                    job,
                    &c.name,
                    reason,
                    err.faultstring().map(str::to_owned),
                    u64::from(errors),
                    true,
                )
                .await;
        }
        // Release the lease (a redelivery need not wait for it) and count the failure.
        let released = Claim::Pending {
            cluster: c.name.clone(),
            owner: owner.to_owned(),
            lease_until_ms: 0,
            errors,
            last_error: Some(text.clone()),
        };
        if let Err(e) = self.claims.update(&job.key, &released, rev).await {
            tracing::debug!("cannot release the claim: {e}");
        }
        metrics::count(Kind::Retried);
        Outcome::Retry {
            delay: self.backoff.delay(errors),
            reason: text,
        }
    }

    /// No cluster takes the task now: retry later, or give up after `max_wait`.
    async fn wait(&self, job: &Job<'_>, reason: String) -> Outcome {
        let waited = time::OffsetDateTime::now_utc() - job.d.published;
        if waited > self.cfg.max_wait {
            let reason = format!(
                "waited more than {} for a cluster: {reason}",
                humanize(self.cfg.max_wait)
            );
            let cluster = job.task.cluster.clone();
            return self.dead(job, &cluster, reason, None, 0, false).await;
        }
        metrics::count(Kind::Waiting);
        Outcome::Retry {
            delay: jitter(self.cfg.wait_retry),
            reason,
        }
    }

    /// Dead-letters the task; with `record`, also marks its claim so a redelivery repeats this.
    async fn dead(
        &self,
        job: &Job<'_>,
        cluster: &str,
        reason: String,
        faultstring: Option<String>,
        attempts: u64,
        record: bool,
    ) -> Outcome {
        metrics::count(Kind::DeadLetter);
        // A cluster name not configured (an unknown route) is counted as `unknown`: labels
        // stay bounded.
        metrics::dead_letter(if self.clusters.names().any(|n| n == cluster) {
            cluster
        } else {
            "unknown"
        });
        tracing::warn!(cluster, task = %job.task.task_id, "dead letter: {reason}");
        if record {
            let dead = Claim::Dead {
                cluster: cluster.to_owned(),
                reason: reason.clone(),
                faultstring: faultstring.clone(),
                attempts,
            };
            if let Err(e) = self.claims.put(&job.key, &dead).await {
                tracing::debug!("cannot mark the claim dead: {e}");
            }
        }
        ack(dead_letter(
            &job.task,
            cluster.to_owned(),
            reason,
            faultstring,
            attempts,
        ))
    }

    fn failpoint(&self) {
        self.kill_after
            .count(1, "executions, before recording or acking them");
    }
}

#[async_trait]
impl Stage for Dispatch {
    fn name(&self) -> &'static str {
        "dispatch"
    }

    async fn handle(&self, msg: &Delivery) -> Outcome {
        self.one(msg).instrument(msg.span("dispatch")).await
    }

    /// Every task of the batch at once (in order of outcomes), at most `concurrency` in flight.
    async fn handle_batch(&self, batch: &[Delivery]) -> Vec<Outcome> {
        let tasks: Vec<_> = batch.iter().map(|d| self.handle(d)).collect();
        futures::stream::iter(tasks)
            .buffered(self.cfg.concurrency)
            .collect()
            .await
    }
}

fn store_retry(e: ClaimError) -> Outcome {
    match e {
        ClaimError::Conflict => Outcome::Retry {
            delay: jitter(Duration::from_millis(500)),
            reason: "another worker changed this task's claim; looking again".into(),
        },
        e => Outcome::Retry {
            delay: STORE_RETRY,
            reason: e.chain(),
        },
    }
}

fn ack(out: Output) -> Outcome {
    Outcome::Ack(vec![out])
}

/// The record for feedback; msg id `dsp:<task id>`, so a re-publication is dropped.
fn dispatched(
    task: &Task,
    cluster: String,
    execution_id: String,
    web_url: Option<String>,
    created: String,
) -> Output {
    Dispatched {
        task: task.clone(),
        cluster,
        execution_id,
        web_url,
        created,
    }
    .output()
}

/// A dead letter; msg id `dl:<task id>` (the same id throttle uses: one dead letter per task).
fn dead_letter(
    task: &Task,
    cluster: String,
    reason: String,
    faultstring: Option<String>,
    attempts: u64,
) -> Output {
    DeadLetter {
        task: task.clone(),
        cluster,
        reason,
        faultstring,
        attempts,
    }
    .output()
}

fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

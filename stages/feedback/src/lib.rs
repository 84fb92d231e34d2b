//! The feedback stage: closes the loop after dispatch. It follows each StackStorm execution to
//! its terminal status (succeeded, failed, timeout, canceled, abandoned), records the result on
//! `whale.pipe.result`, publishes `whale.in.whale.execution_finished` when the rule asks for
//! result events, and notifies the rule's chat channels. It also serves task management
//! (`whale exec`, `/v1/executions`) from whale's own record of each execution.
//!
//! Durability: a `Dispatched` message stays un-acked while its execution runs — each look ends
//! in a nak with a delay, and JetStream redelivers it — so what is followed lives in JetStream,
//! not in memory, and a restarted worker simply picks the messages up again. The result is
//! published with msg id `res:<task_id>` before the message is acked.
//!
//! - [`follow`]: the per-cluster follower (event stream, re-list after reconnect, GET fallback)
//! - [`result`]: the result record, result event and notification requests
//! - [`notify`]: posting to WeCom, Slack and generic webhooks, at most once, with retries
//! - [`execs`]: whale's execution index in KV; [`manage`]: task management; [`http`]: its API

pub mod clusters;
pub mod execs;
pub mod follow;
pub mod http;
pub mod manage;
mod metrics;
pub mod notify;
pub mod result;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use whale_kernel::config::FeedbackConfig;
use whale_kernel::kv::Bucket;
use whale_kernel::records::Dispatched;
use whale_kernel::subjects::Pipe;
use whale_kernel::{Config, Delivery, Nats, Outcome, Stage};

use crate::follow::{Follower, Look};

/// After this many deliveries answered "not found" by StackStorm, an execution is given up
/// and recorded as `abandoned`.
const GONE_AFTER: i64 = 5;

/// The stage.
pub struct Feedback {
    followers: BTreeMap<String, Arc<Follower>>,
    channels: Arc<notify::Channels>,
    sender: notify::Sender,
    kv: Bucket,
    cfg: FeedbackConfig,
    /// `rules.max_chain_depth`: result events deeper than this are recorded, not fed back.
    max_chain_depth: u32,
}

impl Feedback {
    /// Builds the stage from the configuration: a follower per cluster, the channels.
    pub async fn build(nats: &Nats, cfg: &Config) -> anyhow::Result<Feedback> {
        let clusters = clusters::Clusters::from_config(cfg)?;
        let followers = clusters
            .iter()
            .map(|(name, c)| {
                (
                    name.clone(),
                    Follower::new(name, c.clone(), cfg.feedback.stream),
                )
            })
            .collect();
        let channels = Arc::new(notify::Channels::from_config(cfg)?);
        let kv = execs::store(nats).await?;
        let sender = notify::Sender::new(channels.clone(), kv.clone(), cfg.feedback.clone())?;
        Ok(Feedback {
            followers,
            channels,
            sender,
            kv,
            cfg: cfg.feedback.clone(),
            max_chain_depth: cfg.rules.max_chain_depth,
        })
    }

    async fn follow(&self, d: &Delivery) -> Outcome {
        let disp: Dispatched = match d.decode("dispatched record") {
            Ok(x) => x,
            Err(malformed) => return malformed,
        };
        let Some(follower) = self.followers.get(&disp.cluster) else {
            tracing::error!(parent: &d.span("feedback"), cluster = %disp.cluster, "execution on a cluster this worker does not know: add it to whale.toml [clusters]");
            return Outcome::Retry {
                delay: Duration::from_secs(30),
                reason: format!("unknown cluster {}", disp.cluster),
            };
        };
        // Index the execution for task management (a second time in case the first write
        // failed and was retried).
        if d.attempt <= 2 {
            if let Err(e) = execs::put(&self.kv, &execs::ExecRecord::from_dispatched(&disp)).await {
                return Outcome::Retry {
                    delay: Duration::from_secs(2),
                    reason: format!("KV unavailable: {e}"),
                };
            }
        }
        let exec = match follower.look(&disp.execution_id, &disp.created).await {
            Ok(Look::Finished(e)) => *e,
            Ok(Look::Running) => {
                return Outcome::Retry {
                    delay: self.next_look(d.attempt),
                    reason: "running".into(),
                }
            }
            Err(e) if e.status() == Some(404) && d.attempt >= GONE_AFTER => {
                tracing::warn!(parent: &d.span("feedback"), "StackStorm no longer knows execution {}; recorded as abandoned", disp.execution_id);
                whale_st2::Execution {
                    id: disp.execution_id.clone(),
                    status: Some(whale_st2::Status::Abandoned),
                    result: Some(
                        serde_json::json!({"error": format!("StackStorm cluster {} does not know execution {} (404)", disp.cluster, disp.execution_id)}),
                    ),
                    ..Default::default()
                }
            }
            Err(e) => {
                tracing::info!(parent: &d.span("feedback"), "cannot look at execution {}: {e}", disp.execution_id);
                return Outcome::Retry {
                    delay: self.next_look(d.attempt),
                    reason: e.to_string(),
                };
            }
        };
        let rec = result::record(&disp, &exec);
        metrics::RESULTS
            .with_label_values(&[&disp.cluster, rec.status.as_str()])
            .inc();
        let mut index = execs::ExecRecord::from_dispatched(&disp);
        index.status = rec.status.to_string();
        index.web_url = rec.web_url.clone();
        index.finished = Some(whale_kernel::envelope::format_time(rec.finished));
        index.elapsed_seconds = rec.elapsed_seconds;
        if let Err(e) = execs::put(&self.kv, &index).await {
            return Outcome::Retry {
                delay: Duration::from_secs(2),
                reason: format!("KV unavailable: {e}"),
            };
        }
        Outcome::Ack(result::outputs(
            &disp,
            &rec,
            &self.channels,
            self.max_chain_depth,
        ))
    }

    /// The wait before the next look at a running execution: doubling from `poll_min` to
    /// `poll_max` with the number of looks.
    fn next_look(&self, attempt: i64) -> Duration {
        let exp = 2u32.saturating_pow(attempt.clamp(1, 17) as u32 - 1);
        (self.cfg.poll_min * exp).min(self.cfg.poll_max)
    }
}

#[async_trait]
impl Stage for Feedback {
    fn name(&self) -> &'static str {
        "feedback"
    }

    async fn handle(&self, d: &Delivery) -> Outcome {
        if d.subject == Pipe::Notify.subject() {
            self.sender.handle(d).await
        } else {
            self.follow(d).await
        }
    }

    /// Looks and posts run concurrently (bounded by `feedback.concurrency`), in order.
    async fn handle_batch(&self, batch: &[Delivery]) -> Vec<Outcome> {
        let looks: Vec<_> = batch.iter().map(|d| self.handle(d)).collect();
        futures::stream::iter(looks)
            .buffered(self.cfg.concurrency)
            .collect()
            .await
    }
}

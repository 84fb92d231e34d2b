//! The index stage: every batch of events, rejections and pipeline records is handed to the
//! backend in one call, which builds their documents (the embedded index in its writer thread). The embedded index keeps its own place in the streams
//! (its commits record the last sequence read in order; the loop reads from
//! [`Stage::position`] and acks nothing); with OpenSearch each message is acked only once its
//! document is stored ([`Outcome::AckWhen`]). When
//! the backend cannot take them, the messages are nak'ed with a growing delay (redelivered later;
//! nothing lost), and a redelivered message overwrites its own document (nothing doubled). It
//! also ages out what is older than the accepted-event retention.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;
use whale_kernel::metrics::STAGE_EVENTS;
use whale_kernel::subjects::Input;
use whale_kernel::{worker, Delivery, Durable, Outcome, Stage};

use crate::backend::{Backend, Error};

/// How often retention runs.
const EXPIRE_EVERY: Duration = Duration::from_secs(3600);

/// Batches between "handled" and "acked" per input (each waits for the commit that holds it).
const OVERLAP: usize = 40;

/// How long a batch waits to fill (measured under `whale-bench pipeline` at 2k events/s, session
/// 13). Without it a trickle made batches of a few messages, [`OVERLAP`] of them were used up
/// within a fraction of the second before the commit, and the loop stalled; when the commit
/// freed them, the backlog came in one burst of parsing that delayed every other stage in the
/// process (p99 ingest→POST 46–52 ms; 59 of the 60 slowest events of a run sent within 90 ms
/// after a commit). With it: 18–43 ms, median 24, and less CPU and memory (fewer, larger
/// batches). Searches see a document at most this much later.
const LINGER: Duration = Duration::from_millis(50);

/// The index stage.
pub struct Index {
    pub backend: Arc<dyn Backend>,
    /// The backend failed last time: log the outage once, not once per batch.
    down: AtomicBool,
}

impl Index {
    pub fn new(backend: Arc<dyn Backend>) -> Index {
        Index {
            backend,
            down: AtomicBool::new(false),
        }
    }

    /// Starts the retention loop: deletes what was seen more than `retention` ago, now and then
    /// every hour, until the process ends.
    pub fn spawn_retention(&self, retention: Duration) -> tokio::task::JoinHandle<()> {
        let backend = self.backend.clone();
        tokio::spawn(async move {
            loop {
                let cutoff = OffsetDateTime::now_utc() - retention;
                match backend.expire(cutoff).await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(backend = backend.name(), removed = n, "index retention")
                    }
                    Err(e) => tracing::warn!(
                        backend = backend.name(),
                        "index retention failed (will try again): {e}"
                    ),
                }
                tokio::time::sleep(EXPIRE_EVERY).await;
            }
        })
    }
}

/// Redelivery delay after `attempt` failed deliveries: 1 s doubling to 30 s.
pub fn backoff(attempt: i64) -> Duration {
    let exp = attempt.clamp(1, 6) - 1;
    Duration::from_secs((1u64 << exp).min(30))
}

pub(crate) fn count(kind: &str, n: usize) {
    if n > 0 {
        STAGE_EVENTS
            .with_label_values(&["index", kind])
            .inc_by(n as u64);
    }
}

#[async_trait]
impl Stage for Index {
    fn name(&self) -> &'static str {
        "index"
    }

    /// A commit has a fixed cost, and a batch is done only after its commit, so the loop keeps
    /// many batches awaiting their commit: 40 of 512, about the consumer's 20,000 unacked
    /// messages (the embedded index commits at 10,000 documents or every second). A batch waits up to
    /// [`LINGER`] to fill, so the [`OVERLAP`] batches last past that commit at any rate.
    fn options(&self) -> worker::Options {
        worker::Options {
            overlap: OVERLAP,
            linger: LINGER,
            own_position: self.backend.keeps_position(),
            ..Default::default()
        }
    }

    /// The subject prefixes of `input` (`whale.events.>` → `whale.events`), as the backend
    /// records them.
    async fn position(&self, input: &Input) -> anyhow::Result<worker::Position> {
        let prefixes: Vec<String> = input
            .filters
            .iter()
            .map(|f| f.trim_end_matches(".>").to_owned())
            .collect();
        Ok(self.backend.position(&prefixes).await?)
    }

    async fn handle(&self, d: &Delivery) -> Outcome {
        self.handle_batch(std::slice::from_ref(d))
            .await
            .pop()
            .unwrap_or(Outcome::Ack(vec![]))
    }

    async fn handle_batch(&self, batch: &[Delivery]) -> Vec<Outcome> {
        let attempt = batch.iter().map(|d| d.attempt).max().unwrap_or(1);
        match self.backend.submit_messages(batch).await {
            Ok((report, committed)) => {
                if self.down.swap(false, Ordering::Relaxed) {
                    tracing::info!(
                        backend = self.backend.name(),
                        "index backend is back: catching up"
                    );
                }
                let stored = batch.len() - report.retry.len() - report.dropped.len();
                count("degraded", report.degraded.len());
                count("dropped", report.dropped.len());
                let delay = backoff(attempt);
                let durable = Durable::new(async move {
                    match committed.await {
                        Ok(()) => {
                            count("indexed", stored);
                            Ok(())
                        }
                        Err(e) => {
                            count("retried", stored);
                            Err((delay, e.to_string()))
                        }
                    }
                });
                let mut out: Vec<Outcome> = (0..batch.len())
                    .map(|_| Outcome::AckWhen(durable.clone()))
                    .collect();
                for (i, why) in report.retry {
                    out[i] = Outcome::Retry {
                        delay: backoff(batch[i].attempt),
                        reason: why,
                    };
                }
                out
            }
            Err(e) => {
                let delay = backoff(attempt);
                let first = !self.down.swap(true, Ordering::Relaxed);
                let name = self.backend.name();
                match &e {
                    Error::Unavailable(_) if first => tracing::warn!(
                        backend = name,
                        "cannot store records ({e}); they wait in NATS and are retried with backoff until it is back"
                    ),
                    Error::Unavailable(_) => {
                        tracing::debug!(backend = name, "cannot store {} records, retrying in {delay:?}: {e}", batch.len())
                    }
                    _ => tracing::error!(backend = name, "cannot store {} records, retrying in {delay:?}: {e}", batch.len()),
                }
                count("retried", batch.len());
                let reason = e.to_string();
                batch
                    .iter()
                    .map(|_| Outcome::Retry {
                        delay,
                        reason: reason.clone(),
                    })
                    .collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch that does not fill waits [`LINGER`], so the loop makes at most one per
    /// [`LINGER`]; the [`OVERLAP`] batches in flight must outlast the longest wait for a commit
    /// (the embedded index's [`crate::embedded::COMMIT_EVERY`]), with room to spare, or the
    /// loop stalls before each commit and bursts after it.
    #[test]
    fn the_batches_in_flight_outlast_a_commit_interval() {
        let lasts = LINGER * OVERLAP as u32;
        assert!(
            lasts >= crate::embedded::COMMIT_EVERY * 2,
            "{OVERLAP} batches of {LINGER:?} last {lasts:?}"
        );
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(5), Duration::from_secs(16));
        assert_eq!(backoff(50), Duration::from_secs(30));
    }
}

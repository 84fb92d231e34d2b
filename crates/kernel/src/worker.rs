//! The one JetStream worker loop every stage runs: pull a batch from the stage's durable
//! consumer, hand it to the stage, publish the stage's outputs (deterministic msg ids, bounded
//! window of pending acks; the next batch is handled while earlier ones await their acks), then
//! end each input as exactly one of ack, nak-with-delay or term.
//! A crash anywhere means redelivery; dedup by msg id means no double records. Stages never see
//! NATS: they get [`Delivery`] values and return [`Outcome`]s.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, AckKind};
use async_trait::async_trait;
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::health::Health;
use crate::metrics;
use crate::nats::Nats;
use crate::publish::{Output, Window};
use crate::subjects::{self, Input};

/// One input message as a stage sees it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub subject: String,
    pub payload: Bytes,
    pub headers: Vec<(String, String)>,
    /// 1 on first delivery.
    pub attempt: i64,
    pub stream_seq: u64,
    pub published: OffsetDateTime,
}

impl Delivery {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The event id this message belongs to (header set by every whale publisher).
    pub fn event_id(&self) -> &str {
        self.header(subjects::HDR_EVENT_ID).unwrap_or("")
    }

    /// A span for per-message logs: stage, event id, rule, attempt.
    pub fn span(&self, stage: &'static str) -> tracing::Span {
        tracing::info_span!(
            "msg",
            stage,
            event_id = self.event_id(),
            rule = self.header(subjects::HDR_RULE).unwrap_or(""),
            attempt = self.attempt
        )
    }

    pub(crate) fn from_message(m: &jetstream::Message) -> Delivery {
        let (attempt, stream_seq, published) = match m.info() {
            Ok(i) => (i.delivered, i.stream_sequence, i.published),
            Err(_) => (1, 0, OffsetDateTime::now_utc()),
        };
        let headers = m
            .headers
            .as_ref()
            .map(|h| {
                h.iter()
                    .flat_map(|(k, vs)| vs.iter().map(move |v| (k.to_string(), v.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        Delivery {
            subject: m.subject.to_string(),
            payload: m.payload.clone(),
            headers,
            attempt,
            stream_seq,
            published,
        }
    }
}

/// How a stage ends one message.
#[derive(Debug)]
pub enum Outcome {
    /// Publish these records, then ack.
    Ack(Vec<Output>),
    /// Not now: nak with this delay so it is redelivered (a dependency is down).
    Retry { delay: Duration, reason: String },
    /// Never: terminate the message (it would fail forever). Use rarely; prefer publishing a
    /// record that says why (a rejection, a dead letter) and acking.
    Term { reason: String },
}

/// A stage: a named, stateless-between-messages handler.
#[async_trait]
pub trait Stage: Send + Sync + 'static {
    /// The stage's name (`validate`, `match`, ...), used in metrics, logs and health.
    fn name(&self) -> &'static str;

    /// Handles one message.
    async fn handle(&self, msg: &Delivery) -> Outcome;

    /// How the worker loop feeds this stage (batch size, batches in flight). Override when a
    /// stage's cost is per batch rather than per message (the index commits once per group).
    fn options(&self) -> Options {
        Options::default()
    }

    /// Handles a batch; returns one outcome per message, in order. Override to pipeline I/O.
    async fn handle_batch(&self, batch: &[Delivery]) -> Vec<Outcome> {
        let mut out = Vec::with_capacity(batch.len());
        for d in batch {
            out.push(self.handle(d).await);
        }
        out
    }
}

/// Tuning of the loop.
#[derive(Debug, Clone)]
pub struct Options {
    /// Messages pulled per batch.
    pub batch: usize,
    /// Pending publish acks allowed at once.
    pub window: usize,
    /// Delay before redelivery when publishing a message's outputs failed.
    pub publish_retry: Duration,
    /// Batches allowed between "handled" and "acked" at once (1 = no overlap).
    pub overlap: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            batch: 512,
            window: 2048,
            publish_retry: Duration::from_secs(1),
            overlap: 3,
        }
    }
}

/// Runs `stage` on `input` until `shutdown` turns true; then finishes the batch in hand, naks
/// what was prefetched (so another worker takes it at once) and returns.
pub async fn run(
    nats: Nats,
    stage: Arc<dyn Stage>,
    input: Input,
    opts: Options,
    health: Health,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let name = stage.name();
    let consumer: jetstream::consumer::PullConsumer = nats
        .js
        .get_stream(input.stream)
        .await
        .with_context(|| crate::setup::not_set_up(&format!("stream {}", input.stream)))?
        .get_consumer(input.consumer)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "{}: {e}",
                crate::setup::not_set_up(&format!("consumer {}", input.consumer))
            )
        })?;
    let in_flight = Arc::new(tokio::sync::Semaphore::new(opts.overlap.max(1)));
    let mut finishing = tokio::task::JoinSet::new();
    let outage = Arc::new(std::sync::Mutex::new(PublishOutage::default()));
    'connect: loop {
        if *shutdown.borrow() {
            break;
        }
        let messages = match consumer
            .stream()
            .max_messages_per_batch(opts.batch)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
        {
            Ok(m) => m,
            Err(e) => {
                health.set_error(
                    input.consumer,
                    format!("cannot pull from {}: {e}", input.consumer),
                );
                tracing::warn!(stage = name, "cannot pull: {e}; retrying in 1s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        health.set_running(input.consumer);
        let mut chunks = messages.ready_chunks(opts.batch);
        loop {
            let chunk = tokio::select! {
                _ = shutdown.changed() => {
                    // Give back what was prefetched so another worker takes it now.
                    while let Some(Some(rest)) = chunks.next().now_or_never() {
                        for m in rest.into_iter().flatten() {
                            let _ = m.ack_with(AckKind::Nak(None)).await;
                        }
                    }
                    break 'connect;
                }
                c = chunks.next() => c,
            };
            let Some(chunk) = chunk else {
                continue 'connect;
            };
            let mut msgs = Vec::with_capacity(chunk.len());
            for m in chunk {
                match m {
                    Ok(m) => msgs.push(m),
                    Err(e) => tracing::debug!(stage = name, "pull stream: {e}"),
                }
            }
            if msgs.is_empty() {
                continue;
            }
            // At most `opts.overlap` batches between "handled" and "acked": the next batch is
            // handled while earlier ones wait for their publish acks.
            let permit = in_flight
                .clone()
                .acquire_owned()
                .await
                .expect("semaphore never closed");
            let batch = handle(&*stage, msgs, &nats, &opts, outage.clone()).await;
            finishing.spawn(async move {
                finish(batch).await;
                drop(permit);
            });
            while finishing.try_join_next().is_some() {}
        }
    }
    // Every handled batch is acked (or nak'ed) before the worker reports stopped.
    while finishing.join_next().await.is_some() {}
    health.set_stopped(input.consumer);
    Ok(())
}

/// First half of a batch: the stage handles it and its outputs are sent (acks still pending in
/// the batch's own window). The second half, [`finish`], runs as its own task, so the next
/// batch is handled while this one's publish acks come back.
async fn handle(
    stage: &dyn Stage,
    msgs: Vec<jetstream::Message>,
    nats: &Nats,
    opts: &Options,
    outage: Arc<std::sync::Mutex<PublishOutage>>,
) -> Batch {
    let name = stage.name();
    let started = Instant::now();
    let deliveries: Vec<Delivery> = msgs.iter().map(Delivery::from_message).collect();
    let mut outcomes = stage.handle_batch(&deliveries).await;
    debug_assert_eq!(outcomes.len(), msgs.len());
    let mut window: Window<usize> =
        Window::new(nats.js.clone(), opts.window).fail_fast_on_disconnect(nats);
    let mut failed = vec![false; msgs.len()];
    let mut errors = PublishErrors::default();
    let mut outputs = 0u64;
    for (i, outcome) in outcomes.iter_mut().enumerate() {
        if let Outcome::Ack(outs) = outcome {
            for out in outs.drain(..) {
                outputs += 1;
                for (idx, r) in window.send(i, out).await {
                    errors.note(&mut failed, idx, r);
                }
            }
        }
    }
    metrics::STAGE_OUTPUTS
        .with_label_values(&[name])
        .inc_by(outputs);
    Batch {
        name,
        started,
        msgs,
        deliveries,
        outcomes,
        window,
        failed,
        errors,
        outputs,
        outage,
        publish_retry: opts.publish_retry,
    }
}

/// A handled batch whose publishes may still be awaiting their acks.
struct Batch {
    name: &'static str,
    started: Instant,
    msgs: Vec<jetstream::Message>,
    deliveries: Vec<Delivery>,
    outcomes: Vec<Outcome>,
    window: Window<usize>,
    failed: Vec<bool>,
    errors: PublishErrors,
    outputs: u64,
    outage: Arc<std::sync::Mutex<PublishOutage>>,
    publish_retry: Duration,
}

/// Second half of a batch: waits for its publish acks, then ends every input as exactly one of
/// ack, nak-with-delay or term. An input is acked only after all its outputs are stored.
async fn finish(mut b: Batch) {
    let name = b.name;
    for (idx, r) in b.window.drain().await {
        b.errors.note(&mut b.failed, idx, r);
    }
    {
        let mut outage = b.outage.lock().unwrap();
        match b.errors.first.take() {
            Some(first) => outage.failed(name, b.errors.count, first, b.publish_retry),
            None if b.outputs > 0 => outage.ok(name),
            None => {}
        }
    }
    for ((m, outcome), (d, failed)) in b
        .msgs
        .iter()
        .zip(b.outcomes)
        .zip(b.deliveries.iter().zip(b.failed))
    {
        let (kind, label) = match outcome {
            Outcome::Ack(_) if failed => (AckKind::Nak(Some(b.publish_retry)), "publish_failed"),
            Outcome::Ack(_) => (AckKind::Ack, "ack"),
            Outcome::Retry { delay, reason } => {
                tracing::debug!(parent: &d.span(name), "retry in {delay:?}: {reason}");
                (AckKind::Nak(Some(delay)), "retry")
            }
            Outcome::Term { reason } => {
                tracing::warn!(parent: &d.span(name), "terminated: {reason}");
                (AckKind::Term, "term")
            }
        };
        if let Err(e) = m.ack_with(kind).await {
            tracing::warn!(
                stage = name,
                "ack failed (message will be redelivered): {e}"
            );
        }
        metrics::STAGE_MESSAGES
            .with_label_values(&[name, label])
            .inc();
    }
    metrics::STAGE_BATCH_SECONDS
        .with_label_values(&[name])
        .observe(b.started.elapsed().as_secs_f64());
}

/// The publish failures of one batch: how many, and the first error.
#[derive(Default)]
struct PublishErrors {
    count: u64,
    first: Option<String>,
}

impl PublishErrors {
    fn note(&mut self, failed: &mut [bool], idx: usize, r: Result<bool, String>) {
        if let Err(e) = r {
            failed[idx] = true;
            self.count += 1;
            self.first.get_or_insert(e);
        }
    }
}

/// Publish failures of one worker loop, logged when they start and when they end rather than
/// once per record: while a stream elects a new leader (a node was lost) every publish fails
/// the same way for a few seconds, and the inputs are simply redelivered.
#[derive(Default)]
struct PublishOutage {
    since: Option<(Instant, u64)>,
}

impl PublishOutage {
    fn failed(&mut self, stage: &'static str, n: u64, first: String, retry: Duration) {
        match &mut self.since {
            Some((_, count)) => *count += n,
            None => {
                tracing::warn!(
                    stage,
                    "publish failed: {first}; inputs are redelivered every {retry:?} until it works"
                );
                self.since = Some((Instant::now(), n));
            }
        }
    }

    fn ok(&mut self, stage: &'static str) {
        if let Some((since, count)) = self.since.take() {
            tracing::info!(
                stage,
                "publishing works again after {:.1?} ({count} records retried)",
                since.elapsed()
            );
        }
    }
}

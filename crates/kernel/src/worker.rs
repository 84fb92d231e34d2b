//! The one JetStream worker loop every stage runs: pull a batch from the stage's durable
//! consumer, hand it to the stage, publish the stage's outputs (deterministic msg ids, bounded
//! window of pending acks; the next batch is handled while earlier ones await their acks), then
//! end each input as exactly one of ack, nak-with-delay or term.
//! A crash anywhere means redelivery; dedup by msg id means no double records. Stages never see
//! NATS: they get [`Delivery`] values and return [`Outcome`]s.
//!
//! Every message the worker holds (received, being handled, awaiting its outputs' publish acks)
//! longer than a third of the consumer's ack wait gets an in-progress ack every third of it
//! (a message acked sooner gets none), so a slow batch is never redelivered while it is worked
//! on, and the ack wait can be short: a crashed worker's messages go to another one after it
//! (5s by default). A panic while a stage handles a batch
//! is caught: the batch is handled again one message at a time, and each message that panics
//! again is counted (`whale_panics_total`) and nak'ed with a growing delay (never terminated: a
//! panic is a bug in whale, not in the message, and the message waits for the fixed version).
//!
//! A stage that keeps its own place in its inputs ([`Options::own_position`]: the embedded
//! index, whose commits record the last stream sequence they hold) is read another way: in
//! stream order from [`Stage::position`] through an ordered consumer, with no ack at all (one
//! ack per message was a third of the acks of the pipeline). What would be a nak there (a failed
//! commit) makes the loop stop, wait the delay, ask the stage for its position again and read
//! on from there; the stage must not have stored anything after the failure meanwhile.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, AckKind};
use async_nats::Subject;
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
    /// The message's headers, moved out of it rather than copied (a copy per message showed in
    /// the pipeline's profile); read them with [`Delivery::header`] / [`Delivery::headers`].
    headers: Option<async_nats::HeaderMap>,
    /// 1 on first delivery.
    pub attempt: i64,
    pub stream_seq: u64,
    pub published: OffsetDateTime,
}

impl Delivery {
    /// A delivery built by hand (tests, tools that read records outside the worker loop).
    pub fn new(
        subject: impl Into<String>,
        payload: impl Into<Bytes>,
        headers: &[(&str, &str)],
        attempt: i64,
        stream_seq: u64,
        published: OffsetDateTime,
    ) -> Delivery {
        let headers = (!headers.is_empty()).then(|| {
            let mut map = async_nats::HeaderMap::new();
            for (k, v) in headers {
                map.append(*k, *v);
            }
            map
        });
        Delivery {
            subject: subject.into(),
            payload: payload.into(),
            headers,
            attempt,
            stream_seq,
            published,
        }
    }

    /// The first value of header `name` (names compare without case, as NATS headers do).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Every header as (name, value), a name once per value.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers.iter().flat_map(|h| {
            h.iter().flat_map(|(k, vs)| {
                let k: &str = k.as_ref();
                vs.iter().map(move |v| (k, v.as_str()))
            })
        })
    }

    /// The event id this message belongs to (header set by every whale publisher).
    pub fn event_id(&self) -> &str {
        self.header(subjects::HDR_EVENT_ID).unwrap_or("")
    }

    /// Reads the payload as a `T` record (`what` names it in the reason: "task", "dispatched
    /// record"). A payload that is not one is [`Outcome::Malformed`]: the one policy for bad
    /// records on internal subjects (ARCHITECTURE.md, "Malformed input").
    pub fn decode<T: serde::de::DeserializeOwned>(&self, what: &str) -> Result<T, Outcome> {
        serde_json::from_slice(&self.payload).map_err(|e| Outcome::Malformed {
            reason: format!("not a {what}: {e}"),
        })
    }

    /// A span for per-message logs: stage, event id, trace id, rule, attempt.
    pub fn span(&self, stage: &'static str) -> tracing::Span {
        tracing::info_span!(
            "msg",
            stage,
            event_id = self.event_id(),
            trace_id = crate::tracectx::of(self)
                .and_then(crate::tracectx::trace_id)
                .unwrap_or(""),
            rule = self.header(subjects::HDR_RULE).unwrap_or(""),
            attempt = self.attempt
        )
    }

    /// Takes the payload and headers out of `m` (acking needs only its reply subject).
    pub(crate) fn from_message(m: &mut jetstream::Message) -> Delivery {
        let (attempt, stream_seq, published) = match m.info() {
            Ok(i) => (i.delivered, i.stream_sequence, i.published),
            Err(_) => (1, 0, OffsetDateTime::now_utc()),
        };
        Delivery {
            subject: m.subject.as_str().to_owned(),
            payload: std::mem::take(&mut m.message.payload),
            headers: m.message.headers.take(),
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
    /// Not a record this stage reads (bad JSON, missing fields): acked, never retried, logged
    /// with its subject and stream sequence and counted as outcome `malformed` in
    /// `whale_stage_messages_total`. The message itself stays in its stream (and in the index):
    /// nothing is lost, and redelivering it could never help. [`Delivery::decode`] gives it.
    Malformed { reason: String },
    /// Ack once `Durable` resolves `Ok` (nak with its delay on `Err`). For a stage that stores
    /// its inputs itself and makes them durable in groups larger than a batch (the embedded
    /// index commits on time or size): the loop goes on with the next batches meanwhile, and
    /// the message is kept alive and unacked until its store says it is committed.
    AckWhen(Durable),
}

/// A stage's promise that some messages will be durable: resolves `Ok` once they are, or
/// `Err((delay, reason))` when they are not (the messages are nak'ed with `delay`). Cheap to
/// clone: every message of one commit shares it.
#[derive(Clone)]
pub struct Durable(
    futures::future::Shared<futures::future::BoxFuture<'static, Result<(), (Duration, String)>>>,
);

impl Durable {
    pub fn new(
        f: impl std::future::Future<Output = Result<(), (Duration, String)>> + Send + 'static,
    ) -> Durable {
        Durable(f.boxed().shared())
    }

    /// Waits until the messages are durable (or are not).
    pub async fn wait(self) -> Result<(), (Duration, String)> {
        self.0.await
    }
}

impl std::fmt::Debug for Durable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Durable")
    }
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

    /// Where to read `input` from, for a stage with [`Options::own_position`]: asked when the
    /// loop starts and again after a failure, so it must answer with what is durable now (and
    /// forget anything it took in since). Others never see it.
    async fn position(&self, _input: &Input) -> anyhow::Result<Position> {
        Ok(Position::At(1))
    }
}

/// Where a stage that keeps its own place reads an input from ([`Stage::position`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// From this stream sequence on (1: the whole stream).
    At(u64),
    /// Just after what the input's durable consumer has acked (a place kept by an earlier whale
    /// that acked each message); `At(otherwise)` when that consumer does not exist.
    AfterAcked { otherwise: u64 },
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
    /// How long a batch may wait to fill once its first message is in (0: take what has
    /// arrived and go). For stages that ack on a commit rather than per message (the index):
    /// a trickle then makes fewer, larger batches instead of one per message or two, so the
    /// `overlap` batches in flight last until the commit that frees them, and the loop never
    /// stalls and then handles the backlog in one burst (which delayed every other stage of
    /// the process; docs/operations.md, session 13).
    pub linger: Duration,
    /// The stage keeps its own place in each input: the loop reads from [`Stage::position`] in
    /// stream order, acks nothing, and `whale run` starts one loop per input whatever its
    /// `--concurrency` (two would each read everything).
    pub own_position: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            batch: 512,
            window: 2048,
            publish_retry: Duration::from_secs(1),
            overlap: 3,
            linger: Duration::ZERO,
            own_position: false,
        }
    }
}

/// Runs `stage` on `input` until `shutdown` turns true; then finishes the batch in hand, naks
/// what was prefetched (so another worker takes it at once; a stage with its own place reads it
/// again from there next time) and returns.
pub async fn run(
    nats: Nats,
    stage: Arc<dyn Stage>,
    input: Input,
    opts: Options,
    health: Health,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let name = stage.name();
    let stream = nats
        .js
        .get_stream(input.stream)
        .await
        .with_context(|| crate::setup::not_set_up(&format!("stream {}", input.stream)))?;
    // The stage's panic series exists at 0 from the start (alerts see it before a first panic).
    metrics::PANICS.with_label_values(&["stage", name]);
    if !opts.own_position {
        let consumer: jetstream::consumer::PullConsumer =
            stream.get_consumer(input.consumer).await.map_err(|e| {
                anyhow::anyhow!(
                    "{}: {e}",
                    crate::setup::not_set_up(&format!("consumer {}", input.consumer))
                )
            })?;
        let ack_wait = consumer.cached_info().config.ack_wait;
        let _lag = AbortOnDrop(tokio::spawn(watch_consumer(
            consumer.clone(),
            name,
            input.consumer,
        )));
        let source = Source::Shared {
            consumer: Box::new(consumer),
            ack_wait,
        };
        read_until(&nats, &stage, &input, &opts, &health, &mut shutdown, source).await;
    } else {
        loop {
            let opened = match own_start(&stream, &*stage, &input).await {
                Ok(start) => ordered(&nats, &stream, &input, start)
                    .await
                    .map(|m| (start, m)),
                Err(e) => Err(e),
            };
            let (start, messages) = match opened {
                Ok(o) => o,
                Err(e) => {
                    health.set_error(input.consumer, format!("{e:#}"));
                    tracing::warn!(
                        stage = name,
                        "cannot read {} from its position: {e:#}; retrying in 1s",
                        input.consumer
                    );
                    if stopped_within(&mut shutdown, Duration::from_secs(1)).await {
                        break;
                    }
                    continue;
                }
            };
            health.set_running(input.consumer);
            tracing::debug!(
                stage = name,
                consumer = input.consumer,
                start,
                "reading in stream order"
            );
            let source = Source::Own {
                messages: Box::new(messages),
                start,
            };
            match read_until(&nats, &stage, &input, &opts, &health, &mut shutdown, source).await {
                None => break,
                Some((delay, reason)) => {
                    tracing::warn!(
                        stage = name,
                        "{}: {reason}; reading again from the last durable position in {delay:?}",
                        input.consumer
                    );
                    if stopped_within(&mut shutdown, delay).await {
                        break;
                    }
                }
            }
        }
    }
    health.set_stopped(input.consumer);
    Ok(())
}

/// Waits `delay` unless `shutdown` turns true first; returns whether it did.
async fn stopped_within(shutdown: &mut watch::Receiver<bool>, delay: Duration) -> bool {
    if *shutdown.borrow() {
        return true;
    }
    tokio::select! {
        _ = shutdown.changed() => true,
        _ = tokio::time::sleep(delay) => *shutdown.borrow(),
    }
}

/// The first stream sequence to read for a stage that keeps its own place.
async fn own_start(
    stream: &jetstream::stream::Stream,
    stage: &dyn Stage,
    input: &Input,
) -> anyhow::Result<u64> {
    Ok(match stage.position(input).await? {
        Position::At(seq) => seq.max(1),
        Position::AfterAcked { otherwise } => match stream.consumer_info(input.consumer).await {
            Ok(info) => {
                let at = info.ack_floor.stream_sequence + 1;
                tracing::info!(
                    consumer = input.consumer,
                    at,
                    "going on from where the durable consumer's acks end (a place an earlier whale kept)"
                );
                at
            }
            Err(_) => otherwise.max(1),
        },
    })
}

/// An ordered consumer on `input` from stream sequence `start`: ephemeral, in memory, no acks;
/// it recreates itself from the last sequence it gave when it misses one (a nats-server restart).
async fn ordered(
    nats: &Nats,
    stream: &jetstream::stream::Stream,
    input: &Input,
    start: u64,
) -> anyhow::Result<jetstream::consumer::pull::Ordered> {
    // Without filters when they are the stream's own subjects or the input reads its whole
    // stream (nats-server reads such a consumer's stream in order without matching; see
    // setup::input_filters).
    let filter_subjects = crate::setup::input_filters(input, &stream.cached_info().config.subjects);
    // Unique per loop: the server's names of ordered consumers are this plus `_<n>`.
    let inbox = nats.client.new_inbox();
    let id = inbox.rsplit('.').next().unwrap_or("0");
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            name: Some(format!(
                "{}{id}",
                subjects::own_reader_prefix(input.consumer)
            )),
            description: Some(format!("whale stage {} (own position)", input.consumer)),
            filter_subjects,
            deliver_policy: if start <= 1 {
                jetstream::consumer::DeliverPolicy::All
            } else {
                jetstream::consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                }
            },
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("cannot create a consumer on {}: {e}", input.stream))?;
    consumer
        .messages()
        .await
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", input.stream))
}

/// Where a loop's messages come from.
enum Source {
    /// The input's durable consumer, shared by every copy of the stage; each message acked.
    Shared {
        consumer: Box<jetstream::consumer::PullConsumer>,
        ack_wait: Duration,
    },
    /// An ordered consumer from the stage's own position; nothing acked.
    Own {
        messages: Box<jetstream::consumer::pull::Ordered>,
        start: u64,
    },
}

/// One reading of `input`: until `shutdown` (returns `None`) or, for a stage that keeps its own
/// place, until a message could not be stored (returns the delay and why; every batch taken is
/// finished first).
async fn read_until(
    nats: &Nats,
    stage: &Arc<dyn Stage>,
    input: &Input,
    opts: &Options,
    health: &Health,
    shutdown: &mut watch::Receiver<bool>,
    source: Source,
) -> Option<(Duration, String)> {
    let name = stage.name();
    let own = matches!(source, Source::Own { .. });
    let in_flight = Arc::new(tokio::sync::Semaphore::new(opts.overlap.max(1)));
    let mut finishing = tokio::task::JoinSet::new();
    let outage = Arc::new(std::sync::Mutex::new(PublishOutage::default()));
    // Every message from delivery to its final ack is kept alive by one ticker per loop. The
    // loop holds at most `batch * (overlap + 1)` messages: the batches awaiting their acks and
    // the next one.
    let batch = opts.batch.max(1);
    let held = Arc::new(Held::new(batch * (opts.overlap.max(1) + 1), !own));
    // Set by the first batch of an own-position loop that could not be stored.
    let (again_tx, mut again_rx) = watch::channel(None::<(Duration, String)>);
    let again_tx = Arc::new(again_tx);
    // The reader pulls only as many messages as the loop has room for and puts each under the
    // ticker as it arrives, so no delivered message waits unprotected in a buffer.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (reader, _ticker) = match source {
        Source::Shared { consumer, ack_wait } => (
            AbortOnDrop(tokio::spawn(read(
                *consumer,
                tx,
                held.clone(),
                batch,
                health.clone(),
                input.consumer,
                name,
            ))),
            Some(AbortOnDrop(tokio::spawn(keep_alive(
                nats.client.clone(),
                held.clone(),
                progress_interval(ack_wait),
            )))),
        ),
        Source::Own { messages, start } => (
            AbortOnDrop(tokio::spawn(read_own(
                *messages,
                start,
                tx,
                held.clone(),
                health.clone(),
                input.consumer,
                name,
            ))),
            None,
        ),
    };
    let mut reader = Some(reader);
    let mut again = None;
    loop {
        let first = if *shutdown.borrow() {
            None
        } else {
            tokio::select! {
                _ = shutdown.changed() => None,
                _ = again_rx.changed() => None,
                m = rx.recv() => m,
            }
        };
        let Some(first) = first else {
            // Stopping: give back what was pulled but not handled, so another worker takes it
            // at once (an own-position loop reads it again from its position).
            drop(reader.take());
            while let Ok((key, m)) = rx.try_recv() {
                if !own {
                    let _ = m.ack_with(AckKind::Nak(None)).await;
                }
                held.release(&[key]);
            }
            if own && !*shutdown.borrow() {
                again = again_rx.borrow().clone();
            }
            break;
        };
        let mut msgs = vec![first];
        while msgs.len() < batch {
            match rx.try_recv() {
                Ok(m) => msgs.push(m),
                Err(_) => break,
            }
        }
        if !opts.linger.is_zero() {
            let until = tokio::time::Instant::now() + opts.linger;
            while msgs.len() < batch {
                match tokio::time::timeout_at(until, rx.recv()).await {
                    Ok(Some(m)) => msgs.push(m),
                    _ => break,
                }
            }
        }
        // At most `opts.overlap` batches between "handled" and "acked": the next batch is
        // handled while earlier ones wait for their publish acks.
        let permit = in_flight
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore never closed");
        let handled = handle(
            &**stage,
            msgs,
            nats,
            opts,
            outage.clone(),
            held.clone(),
            Reading { input, own },
        )
        .await;
        let again_tx = own.then(|| again_tx.clone());
        finishing.spawn(async move {
            finish(handled, again_tx.as_deref()).await;
            drop(permit);
        });
        while finishing.try_join_next().is_some() {}
    }
    // Every handled batch is acked (or nak'ed) before the worker reports stopped.
    while finishing.join_next().await.is_some() {}
    if own && again.is_none() && !*shutdown.borrow() {
        // The reader ended on its own (the connection closed).
        again = Some((Duration::from_secs(1), "the ordered consumer ended".into()));
    }
    again
}

/// How often the consumer's pending / ack-pending / redelivered counts are read for
/// `/metrics` (`whale_consumer_*_messages`).
const CONSUMER_INFO_EVERY: Duration = Duration::from_secs(10);

/// Reads the stage consumer's info every [`CONSUMER_INFO_EVERY`] into the consumer gauges, so
/// lag is in `/metrics` without anyone else asking NATS. A failed read keeps the last values
/// (the worker's health already says when NATS is unreachable).
async fn watch_consumer(
    consumer: jetstream::consumer::PullConsumer,
    stage: &'static str,
    name: &'static str,
) {
    let mut every = tokio::time::interval(CONSUMER_INFO_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if let Ok(info) = consumer.get_info().await {
            metrics::consumer_info(
                stage,
                name,
                info.num_pending,
                info.num_ack_pending as u64,
                info.num_redelivered as u64,
            );
        }
    }
}

/// What a batch was read from: the input, and whether the loop keeps its own place in it.
#[derive(Clone, Copy)]
struct Reading<'a> {
    input: &'a Input,
    own: bool,
}

/// First half of a batch: the stage handles it and its outputs are sent (acks still pending in
/// the batch's own window). The second half, [`finish`], runs as its own task, so the next
/// batch is handled while this one's publish acks come back.
async fn handle(
    stage: &dyn Stage,
    msgs: Vec<(u64, jetstream::Message)>,
    nats: &Nats,
    opts: &Options,
    outage: Arc<std::sync::Mutex<PublishOutage>>,
    held: Arc<Held>,
    from: Reading<'_>,
) -> Batch {
    let name = stage.name();
    let started = Instant::now();
    let (keys, mut msgs): (Vec<u64>, Vec<jetstream::Message>) = msgs.into_iter().unzip();
    let release = Release { held, keys };
    let mut deliveries: Vec<Delivery> = msgs.iter_mut().map(Delivery::from_message).collect();
    let handled_at = std::time::SystemTime::now();
    let mut outcomes = handle_wanted(stage, &deliveries, from).await;
    let mut window: Window<usize> = Window::on(nats, opts.window).fail_fast_on_disconnect(nats);
    let mut failed = vec![false; msgs.len()];
    let mut errors = PublishErrors::default();
    let mut outputs = 0u64;
    for (i, outcome) in outcomes.iter_mut().enumerate() {
        if let Outcome::Ack(outs) = outcome {
            let d = &deliveries[i];
            let event_id = outs.iter().find_map(|o| {
                o.headers
                    .iter()
                    .find(|(k, _)| *k == subjects::HDR_EVENT_ID)
                    .map(|(_, v)| v.clone())
            });
            let _spans = crate::tracectx::handle_spans(d, name, event_id.as_deref(), handled_at);
            for mut out in outs.drain(..) {
                crate::tracectx::carry(d, name, &mut out);
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
    // Acking needs only the reply subject (the messages gave their payloads and headers to
    // the deliveries). A payload is cut from the connection's read buffer and keeps that whole
    // buffer alive, with every other message read into it: the index's batches wait up to
    // seconds for their commit, so they held tens of MB of buffers, and the connection read
    // into fresh memory (page faults) instead of reusing what it had read.
    for d in &mut deliveries {
        d.payload = Bytes::new();
        d.headers = None;
    }
    Batch {
        name,
        started,
        _release: release,
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

/// The outcome of each delivery: a message outside the stage's filters (read with the whole
/// stream, [`Input::whole_stream`]) is acked without reaching the stage; the stage handles the rest.
async fn handle_wanted(
    stage: &dyn Stage,
    deliveries: &[Delivery],
    from: Reading<'_>,
) -> Vec<Outcome> {
    if !from.input.whole_stream {
        return handle_contained(stage, deliveries, from.own).await;
    }
    let wanted: Vec<bool> = deliveries
        .iter()
        .map(|d| from.input.wants(&d.subject))
        .collect();
    if wanted.iter().all(|w| *w) {
        return handle_contained(stage, deliveries, from.own).await;
    }
    let mine: Vec<Delivery> = deliveries
        .iter()
        .zip(&wanted)
        .filter(|(_, w)| **w)
        .map(|(d, _)| d.clone())
        .collect();
    let mut handled = handle_contained(stage, &mine, from.own).await.into_iter();
    wanted
        .iter()
        .map(|w| match w {
            // One outcome per delivery (`handle_contained`); were one missing, the message is
            // redelivered, never acked unhandled.
            true => handled.next().unwrap_or_else(|| Outcome::Retry {
                delay: Duration::from_secs(1),
                reason: "the stage gave no outcome for this message".into(),
            }),
            false => Outcome::Ack(Vec::new()),
        })
        .collect()
}

/// Runs `stage.handle_batch`, containing panics: after a panic the batch is handled again one
/// message at a time, so only the messages that panic themselves are held back. Always returns
/// one outcome per delivery.
async fn handle_contained(stage: &dyn Stage, deliveries: &[Delivery], own: bool) -> Vec<Outcome> {
    let name = stage.name();
    // A stage may compute for a long time without yielding (rules run jq inline). Yield once
    // first, so that a task this one woke (the NATS connection, with the previous batch's
    // publishes) runs now instead of waiting, unstealable, in this thread's next-task slot.
    tokio::task::yield_now().await;
    match AssertUnwindSafe(stage.handle_batch(deliveries))
        .catch_unwind()
        .await
    {
        Ok(outcomes) if outcomes.len() == deliveries.len() => return outcomes,
        Ok(outcomes) => {
            // A stage bug; handle one by one rather than leaving messages unanswered.
            tracing::error!(
                stage = name,
                "handle_batch returned {} outcomes for {} messages; handling them one by one",
                outcomes.len(),
                deliveries.len()
            );
        }
        Err(panic) => {
            metrics::PANICS.with_label_values(&["stage", name]).inc();
            tracing::error!(
                stage = name,
                "panic while handling a batch of {}: {}; handling its messages one by one",
                deliveries.len(),
                panic_message(&*panic)
            );
            if deliveries.len() == 1 {
                return vec![after_panic(&deliveries[0], name, &*panic, own)];
            }
        }
    }
    let mut out = Vec::with_capacity(deliveries.len());
    for d in deliveries {
        let one = AssertUnwindSafe(stage.handle_batch(std::slice::from_ref(d)))
            .catch_unwind()
            .await;
        out.push(match one {
            Ok(mut v) if v.len() == 1 => v.remove(0),
            Ok(v) => Outcome::Retry {
                delay: panic_delay(d.attempt),
                reason: format!("stage returned {} outcomes for one message", v.len()),
            },
            Err(panic) => {
                metrics::PANICS.with_label_values(&["stage", name]).inc();
                after_panic(d, name, &*panic, own)
            }
        });
    }
    out
}

/// What a message whose handling panicked gets: a nak with a delay that grows with its
/// delivery count (1s, 2s, 4s, ... at most 5 min). Never a term: the message is kept until a
/// fixed whale handles it. A stage that keeps its own place reads in stream order, where
/// waiting for the message would stop the whole input: it is passed over (it stays in its
/// stream), counted and logged as an error.
fn after_panic(
    d: &Delivery,
    stage: &'static str,
    panic: &(dyn std::any::Any + Send),
    own: bool,
) -> Outcome {
    if own {
        let reason = format!(
            "stage {stage} panicked on this message: {}; passed over (it stays in its stream; \
             see whale_panics_total; report it as a bug)",
            panic_message(panic)
        );
        tracing::error!(parent: &d.span(stage), subject = %d.subject, stream_seq = d.stream_seq, "{reason}");
        return Outcome::Term { reason };
    }
    let delay = panic_delay(d.attempt);
    let reason = format!(
        "stage {stage} panicked on this message: {}; redelivered in {delay:?} \
         (see whale_panics_total; report it as a bug)",
        panic_message(panic)
    );
    tracing::error!(parent: &d.span(stage), subject = %d.subject, stream_seq = d.stream_seq, "{reason}");
    Outcome::Retry { delay, reason }
}

/// Delay before a message that panicked is delivered again.
pub(crate) fn panic_delay(attempt: i64) -> Duration {
    let exp = u32::try_from(attempt.saturating_sub(1).clamp(0, 16)).unwrap_or(16);
    Duration::from_secs(1u64 << exp).min(Duration::from_secs(300))
}

/// The text of a panic payload (`panic!("...")` gives a `&str` or a `String`).
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

/// How often held messages get an in-progress ack: a third of the ack wait (at least 100 ms).
pub(crate) fn progress_interval(ack_wait: Duration) -> Duration {
    (ack_wait / 3).max(Duration::from_millis(100))
}

/// The messages a worker loop holds (delivered, not yet finally acked), by a key of the loop's
/// own; the value is the reply subject an ack goes to.
struct Held {
    next: AtomicU64,
    /// Reply subject and when the message arrived.
    map: Mutex<HashMap<u64, (Subject, Instant), KeyHash>>,
    /// One permit per message the loop may still take (released with the message).
    room: tokio::sync::Semaphore,
    /// Whether messages need in-progress acks (not when nothing is acked).
    track: bool,
}

impl Held {
    fn new(capacity: usize, track: bool) -> Held {
        Held {
            next: AtomicU64::new(0),
            map: Mutex::new(HashMap::default()),
            room: tokio::sync::Semaphore::new(capacity),
            track,
        }
    }

    /// Puts a message under the keep-alive ticker; returns its key.
    fn add(&self, m: &jetstream::Message) -> u64 {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        if let (true, Some(reply)) = (self.track, &m.reply) {
            self.lock().insert(key, (reply.clone(), Instant::now()));
        }
        key
    }

    /// Takes messages off the ticker and gives their room back.
    fn release(&self, keys: &[u64]) {
        let mut map = self.lock();
        for k in keys {
            map.remove(k);
        }
        self.room.add_permits(keys.len());
    }

    /// The reply subjects of the messages held at least `age`: a message acked sooner never
    /// needs an in-progress ack, so a fast pipeline sends none.
    fn replies_older_than(&self, age: Duration) -> Vec<Subject> {
        self.lock()
            .values()
            .filter(|(_, since)| since.elapsed() >= age)
            .map(|(reply, _)| reply.clone())
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (Subject, Instant), KeyHash>> {
        // The map stays consistent whatever panicked while it was locked.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Hashes [`Held`]'s keys, which are the loop's own sequence numbers (never chosen by anyone
/// else), with one multiplication instead of SipHash: a look-up per message showed in the
/// pipeline's profile.
type KeyHash = std::hash::BuildHasherDefault<SeqHasher>;

#[derive(Default)]
struct SeqHasher(u64);

impl std::hash::Hasher for SeqHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing: spreads sequential keys over the high bits hashbrown uses.
        self.0 = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// Removes a batch's messages from [`Held`] when dropped: after the final acks, or when the
/// batch is dropped in any other way (a panic), so the ticker never keeps a message alive that
/// nobody works on.
struct Release {
    held: Arc<Held>,
    keys: Vec<u64>,
}

impl Drop for Release {
    fn drop(&mut self) {
        self.held.release(&self.keys);
    }
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Every `every`, sends an in-progress ack (`+WPI`) for each message held at least that long.
async fn keep_alive(client: async_nats::Client, held: Arc<Held>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        // A message arrived just after a tick is first kept alive at most two ticks (two thirds
        // of the ack wait) after its delivery; then every tick.
        for reply in held.replies_older_than(every) {
            if let Err(e) = client.publish(reply, Bytes::from(AckKind::Progress)).await {
                tracing::debug!("in-progress ack not sent: {e}");
            }
        }
    }
}

/// Pulls batches of at most `batch` messages, never more than the loop has room for, and hands
/// each message on with its key as soon as it arrives. Ends when the loop stops listening.
async fn read(
    consumer: jetstream::consumer::PullConsumer,
    tx: tokio::sync::mpsc::UnboundedSender<(u64, jetstream::Message)>,
    held: Arc<Held>,
    batch: usize,
    health: Health,
    consumer_name: &'static str,
    stage: &'static str,
) {
    loop {
        // Wait for room for a useful pull (a quarter batch), then take what else is free.
        let Ok(first) = held.room.acquire_many((batch / 4).max(1) as u32).await else {
            return;
        };
        first.forget();
        let mut want = (batch / 4).max(1);
        while want < batch {
            match held.room.try_acquire() {
                Ok(p) => {
                    p.forget();
                    want += 1;
                }
                Err(_) => break,
            }
        }
        let pulled = consumer
            .batch()
            .max_messages(want)
            .expires(Duration::from_secs(5))
            .messages()
            .await;
        let mut messages = match pulled {
            Ok(m) => m,
            Err(e) => {
                held.room.add_permits(want);
                health.set_error(
                    consumer_name,
                    format!("cannot pull from {consumer_name}: {e}"),
                );
                tracing::warn!(stage, "cannot pull: {e}; retrying in 1s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        health.set_running(consumer_name);
        let mut got = 0;
        while let Some(m) = messages.next().await {
            match m {
                Ok(m) => {
                    got += 1;
                    let key = held.add(&m);
                    if let Err(back) = tx.send((key, m)) {
                        // The loop stopped: give the message back at once.
                        let (key, m) = back.0;
                        let _ = m.ack_with(AckKind::Nak(None)).await;
                        held.release(&[key]);
                        return;
                    }
                }
                Err(e) => tracing::debug!(stage, "pull: {e}"),
            }
        }
        // Room asked for but not filled.
        held.room.add_permits(want.saturating_sub(got));
    }
}

/// Hands on each message of an own-position reading as it arrives, one per unit of room the
/// loop has, and keeps the input's lag gauge (`whale_consumer_pending_messages`) from what each
/// message says is left. Ends when the loop stops listening or the consumer ends.
async fn read_own(
    mut messages: jetstream::consumer::pull::Ordered,
    start: u64,
    tx: tokio::sync::mpsc::UnboundedSender<(u64, jetstream::Message)>,
    held: Arc<Held>,
    health: Health,
    consumer_name: &'static str,
    stage: &'static str,
) {
    let mut healthy = true;
    let mut reported: Option<(u64, Instant)> = None;
    loop {
        let Ok(room) = held.room.acquire().await else {
            return;
        };
        room.forget();
        let m = match messages.next().await {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                held.room.add_permits(1);
                healthy = false;
                health.set_error(consumer_name, format!("cannot read {consumer_name}: {e}"));
                tracing::warn!(stage, "cannot read in order: {e}; retrying in 1s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            None => return,
        };
        if !healthy {
            health.set_running(consumer_name);
            healthy = true;
        }
        let (seq, pending) = m
            .info()
            .map_or((start, 0), |i| (i.stream_sequence, i.pending));
        if seq < start {
            // An ordered consumer recreated before its first message starts from the stream's
            // beginning: what lies before the position is stored already.
            held.room.add_permits(1);
            continue;
        }
        let due = match reported {
            None => true,
            Some((p, at)) => {
                p != pending && (pending == 0 || at.elapsed() >= Duration::from_secs(1))
            }
        };
        if due {
            metrics::consumer_info(stage, consumer_name, pending, 0, 0);
            reported = Some((pending, Instant::now()));
        }
        let key = held.add(&m);
        if tx.send((key, m)).is_err() {
            held.release(&[key]);
            return;
        }
    }
}

/// A handled batch whose publishes may still be awaiting their acks.
struct Batch {
    name: &'static str,
    started: Instant,
    /// Takes the batch's messages off the keep-alive ticker when the batch is done (or dropped).
    _release: Release,
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
/// With `again` (a stage that keeps its own place), nothing is acked: what would be a nak
/// is sent there instead, and the loop reads again from the stage's position after its delay.
async fn finish(mut b: Batch, again: Option<&watch::Sender<Option<(Duration, String)>>>) {
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
    // Counted per batch: a label look-up per message showed in the pipeline's profile.
    let mut counted: Vec<(&'static str, u64)> = Vec::with_capacity(2);
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
            Outcome::Malformed { reason } => {
                tracing::warn!(
                    parent: &d.span(name),
                    subject = %d.subject,
                    stream_seq = d.stream_seq,
                    "malformed record, acked (it stays in its stream): {reason}"
                );
                (AckKind::Ack, "malformed")
            }
            // Every message of a commit shares one future: the first wait takes it, the rest
            // find it resolved.
            Outcome::AckWhen(durable) => match durable.wait().await {
                Ok(()) => (AckKind::Ack, "ack"),
                Err((delay, reason)) => {
                    tracing::debug!(parent: &d.span(name), "retry in {delay:?}: {reason}");
                    (AckKind::Nak(Some(delay)), "retry")
                }
            },
        };
        if let Some(again) = again {
            if let AckKind::Nak(delay) = kind {
                let reason = match &label {
                    &"publish_failed" => "publishing outputs failed".to_owned(),
                    _ => format!("message {} not stored", d.stream_seq),
                };
                again.send_if_modified(|a| {
                    let first = a.is_none();
                    if first {
                        *a = Some((delay.unwrap_or(b.publish_retry), reason));
                    }
                    first
                });
            }
        } else if let Err(e) = m.ack_with(kind).await {
            tracing::warn!(
                stage = name,
                "ack failed (message will be redelivered): {e}"
            );
        }
        match counted.iter_mut().find(|(l, _)| *l == label) {
            Some((_, n)) => *n += 1,
            None => counted.push((label, 1)),
        }
    }
    for (label, n) in counted {
        metrics::STAGE_MESSAGES
            .with_label_values(&[name, label])
            .inc_by(n);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_message_waits_longer_each_time_up_to_five_minutes() {
        let delays: Vec<u64> = (1..=12).map(|a| panic_delay(a).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(panic_delay(0), Duration::from_secs(1));
        assert_eq!(panic_delay(i64::MAX), Duration::from_secs(300));
    }

    #[test]
    fn progress_acks_come_every_third_of_the_ack_wait() {
        assert_eq!(
            progress_interval(Duration::from_secs(5)),
            Duration::from_secs(5) / 3
        );
        assert_eq!(
            progress_interval(Duration::from_millis(30)),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn held_messages_give_their_room_back() {
        let held = Held::new(4, true);
        assert_eq!(held.room.available_permits(), 4);
        held.room.try_acquire_many(3).unwrap().forget();
        held.release(&[1, 2]);
        assert_eq!(held.room.available_permits(), 3);
        assert!(held.replies_older_than(Duration::ZERO).is_empty());
    }

    #[test]
    fn panic_messages_are_read_from_str_and_string_payloads() {
        let p: Box<dyn std::any::Any + Send> = Box::new("static");
        assert_eq!(panic_message(&*p), "static");
        let p: Box<dyn std::any::Any + Send> = Box::new(String::from("owned"));
        assert_eq!(panic_message(&*p), "owned");
        let p: Box<dyn std::any::Any + Send> = Box::new(42);
        assert_eq!(panic_message(&*p), "(no message)");
    }
}

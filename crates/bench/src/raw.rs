//! The raw JetStream reference every bench figure is printed beside, and the bench's own view of
//! the server (messages per subject, operations done). Neither is a stage, so the bench reads
//! the server with a plain async-nats client of its own; records are published through the
//! kernel's `Window`, the path every stage's outputs take.

use std::time::Instant;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, stream};
use futures::{StreamExt, TryStreamExt};
use serde_json::{json, Value};
use whale_kernel::{subjects, Nats, Output, Window};

/// The bench's own connection to the server under test.
pub struct Raw {
    client: async_nats::Client,
    js: jetstream::Context,
}

impl Raw {
    pub async fn connect(url: &str) -> anyhow::Result<Raw> {
        let client = async_nats::ConnectOptions::new()
            .name("whale-bench reference")
            .client_capacity(65_536)
            .connect(url)
            .await
            .with_context(|| format!("bench: cannot connect to {url}"))?;
        let js = jetstream::new(client.clone());
        Ok(Raw { client, js })
    }

    pub fn server_version(&self) -> String {
        self.client.server_info().version
    }

    /// Raw publish (window 1024, with msg ids as whale publishes, through the kernel's
    /// `Window`), pull consume+ack (a durable consumer, as the shared stages read) on a stream
    /// that keeps its messages and on a work queue, and in-order consume without acks (an
    /// ordered consumer, as the embedded index reads), in messages/s, on scratch streams.
    pub async fn rates(&self, nats: &Nats, payloads: &[Vec<u8>]) -> anyhow::Result<Rates> {
        // Untimed first: whichever stream was filled first in a measurement was filled 8–13%
        // slower than the same payloads a moment later (a server warming up), while the pipeline
        // publishes to a server that has been running.
        let _ = self
            .scratch(
                nats,
                "BENCH_RAW_WARM",
                stream::RetentionPolicy::Limits,
                payloads,
            )
            .await?;
        let _ = self.js.delete_stream("BENCH_RAW_WARM").await;
        let (st, publish) = self
            .scratch(nats, "BENCH_RAW", stream::RetentionPolicy::Limits, payloads)
            .await?;
        let consume_ack = consume_acked(&st, payloads.len()).await?;
        let c = st
            .create_consumer(consumer::pull::OrderedConfig {
                name: Some("bench_ordered".into()),
                ..Default::default()
            })
            .await?;
        let t = Instant::now();
        let got = read(c.messages().await?, payloads.len(), false).await?;
        let consume_ordered = got as f64 / t.elapsed().as_secs_f64();
        let _ = self.js.delete_stream("BENCH_RAW").await;
        // As validate reads WHALE_INGEST: on a work queue each ack also removes the message,
        // work nats-server does not do for an ack on a stream that keeps its messages.
        let (st, _) = self
            .scratch(
                nats,
                "BENCH_RAW_QUEUE",
                stream::RetentionPolicy::WorkQueue,
                payloads,
            )
            .await?;
        let consume_ack_queue = consume_acked(&st, payloads.len()).await?;
        let _ = self.js.delete_stream("BENCH_RAW_QUEUE").await;
        Ok(Rates {
            publish,
            consume_ack,
            consume_ack_queue,
            consume_ordered,
        })
    }

    /// A new stream `name` (`retention`) holding `payloads`, and the rate they were published at.
    async fn scratch(
        &self,
        nats: &Nats,
        name: &str,
        retention: stream::RetentionPolicy,
        payloads: &[Vec<u8>],
    ) -> anyhow::Result<(stream::Stream, f64)> {
        let _ = self.js.delete_stream(name).await;
        let subject = format!("bench.{}", name.to_lowercase());
        let st = self
            .js
            .create_stream(stream::Config {
                name: name.into(),
                subjects: vec![subject.clone()],
                retention,
                ..Default::default()
            })
            .await?;
        let t = Instant::now();
        let mut w: Window<()> = Window::on(nats, 1024);
        for (i, p) in payloads.iter().enumerate() {
            w.send(
                (),
                Output::new(subject.clone(), format!("raw-{i}"), p.clone()),
            )
            .await;
        }
        w.drain().await;
        Ok((st, payloads.len() as f64 / t.elapsed().as_secs_f64()))
    }

    /// Messages per subject under `filter` in `stream`, summed.
    pub async fn subject_count(&self, stream: &str, filter: &str) -> anyhow::Result<u64> {
        let info: Value = self
            .js
            .request(
                format!("STREAM.INFO.{stream}"),
                &json!({ "subjects_filter": filter }),
            )
            .await
            .map_err(|e| anyhow::anyhow!("stream info {stream}: {e}"))?;
        Ok(info["state"]["subjects"]
            .as_object()
            .map(|m| m.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0))
    }

    /// JetStream publishes (stream sequences) and consumer deliveries over whale's streams,
    /// deliveries split by whether they are acked (durable consumers) or not (ordered consumers:
    /// the embedded index's own readers).
    pub async fn ops(&self) -> anyhow::Result<Ops> {
        let mut ops = Ops::default();
        for name in [
            subjects::STREAM_INGEST,
            subjects::STREAM_EVENTS,
            subjects::STREAM_PIPE,
        ] {
            let mut st = self.js.get_stream(name).await?;
            let info = st.info().await?;
            ops.publishes += info.state.last_sequence;
            let queue = info.config.retention == stream::RetentionPolicy::WorkQueue;
            let consumers: Vec<_> = st.consumers().try_collect().await?;
            for c in &consumers {
                let n = c.delivered.consumer_sequence;
                match c.config.ack_policy {
                    consumer::AckPolicy::None => ops.unacked += n,
                    _ if queue => ops.acked_queue += n,
                    _ => ops.acked += n,
                }
            }
        }
        Ok(ops)
    }
}

/// Raw JetStream rates on the server under test, in messages/s.
#[derive(Debug, Clone, Copy)]
pub struct Rates {
    pub publish: f64,
    /// Pull consume with an ack per message (a durable consumer) on a stream that keeps its
    /// messages (WHALE_EVENTS, WHALE_PIPE).
    pub consume_ack: f64,
    /// The same on a work-queue stream, where each ack removes the message (WHALE_INGEST).
    pub consume_ack_queue: f64,
    /// In-order consume with no ack (an ordered consumer).
    pub consume_ordered: f64,
}

/// JetStream operations counted on the server.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ops {
    pub publishes: u64,
    /// Deliveries of consumers that are acked, on streams that keep their messages.
    pub acked: u64,
    /// Deliveries of consumers that are acked, on work-queue streams (each ack removes one).
    pub acked_queue: u64,
    /// Deliveries of consumers with no acks.
    pub unacked: u64,
}

/// Pull consume+ack of `n` messages from `st` through a new durable consumer, in messages/s.
async fn consume_acked(st: &stream::Stream, n: usize) -> anyhow::Result<f64> {
    let c: consumer::PullConsumer = st
        .create_consumer(consumer::pull::Config {
            durable_name: Some("bench".into()),
            max_ack_pending: 20_000,
            ..Default::default()
        })
        .await?;
    let t = Instant::now();
    let msgs = c.stream().max_messages_per_batch(512).messages().await?;
    let got = read(msgs, n, true).await?;
    Ok(got as f64 / t.elapsed().as_secs_f64())
}

/// Reads up to `n` messages from `msgs` (acking each when `ack`); the number read.
async fn read<E: std::fmt::Display>(
    mut msgs: impl futures::Stream<Item = Result<jetstream::Message, E>> + Unpin,
    n: usize,
    ack: bool,
) -> anyhow::Result<usize> {
    let mut got = 0;
    while got < n {
        match msgs.next().await {
            Some(Ok(m)) => {
                if ack {
                    m.ack().await.map_err(anyhow::Error::from_boxed)?;
                }
                got += 1;
            }
            Some(Err(e)) => tracing::debug!("bench consume: {e}"),
            None => break,
        }
    }
    Ok(got)
}

/// The raw JetStream reference of a run, measured before the stages run and after them on the
/// same server (the machine's load can change within a run): each measurement's rates and bound,
/// and the mean rates and bound a run is judged by.
pub struct Reference {
    /// The mean of both measurements.
    pub rates: Rates,
    pub bound: f64,
    pub before: Value,
    pub after: Value,
}

impl Reference {
    /// `bound_of` gives the events/s the run's JetStream operations allow at some rates.
    pub fn of(before: Rates, after: Rates, bound_of: impl Fn(Rates) -> f64) -> Self {
        let one = |r: Rates| {
            json!({
                "raw_publish_per_s": r.publish.round(),
                "raw_consume_ack_per_s": r.consume_ack.round(),
                "raw_consume_ack_queue_per_s": r.consume_ack_queue.round(),
                "raw_consume_ordered_per_s": r.consume_ordered.round(),
                "jetstream_bound_per_s": bound_of(r).round(),
            })
        };
        let mean = |f: fn(&Rates) -> f64| (f(&before) + f(&after)) / 2.0;
        Reference {
            rates: Rates {
                publish: mean(|r| r.publish),
                consume_ack: mean(|r| r.consume_ack),
                consume_ack_queue: mean(|r| r.consume_ack_queue),
                consume_ordered: mean(|r| r.consume_ordered),
            },
            bound: (bound_of(before) + bound_of(after)) / 2.0,
            before: one(before),
            after: one(after),
        }
    }
}

impl Raw {
    /// Deletes a durable consumer (`whale setup` creates it again, delivering from the start).
    pub async fn delete_consumer(&self, stream: &str, consumer: &str) -> anyhow::Result<()> {
        let st = self.js.get_stream(stream).await?;
        st.delete_consumer(consumer)
            .await
            .map_err(|e| anyhow::anyhow!("cannot delete consumer {consumer}: {e}"))?;
        Ok(())
    }

    /// Messages the consumers of `inputs` have not finished (pending + awaiting ack).
    pub async fn backlog(&self, inputs: &[subjects::Input]) -> anyhow::Result<u64> {
        let mut left = 0;
        for input in inputs {
            let st = self.js.get_stream(input.stream).await?;
            let info = st
                .consumer_info(input.consumer)
                .await
                .map_err(|e| anyhow::anyhow!("consumer {}: {e}", input.consumer))?;
            left += info.num_pending + info.num_ack_pending as u64;
        }
        Ok(left)
    }
}

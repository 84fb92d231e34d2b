//! The raw JetStream reference every bench figure is printed beside, and the bench's own view of
//! the server (messages per subject, operations done). Neither is a stage, so the bench reads
//! the server with a plain async-nats client of its own; records are published through the
//! kernel's `Window`, the path every stage's outputs take.

use std::time::Instant;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, stream};
use futures::{StreamExt, TryStreamExt};
use serde_json::{json, Value};
use time::OffsetDateTime;
use whale_kernel::{subjects, tracectx, Delivery, Nats, Output, Window};

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
    /// ordered consumer, as the embedded index reads), in messages/s, on scratch streams. Each
    /// is measured with the messages whale moves there ([`Sample`]): records (the stream that
    /// keeps its messages, as WHALE_EVENTS and WHALE_PIPE do) and ingest messages (the work
    /// queue, as WHALE_INGEST).
    pub async fn rates(&self, nats: &Nats, sample: &Sample) -> anyhow::Result<Rates> {
        // Untimed first: whichever stream was filled first in a measurement was filled 8–13%
        // slower than the same payloads a moment later (a server warming up), while the pipeline
        // publishes to a server that has been running.
        let _ = self
            .scratch(
                nats,
                "BENCH_RAW_WARM",
                stream::RetentionPolicy::Limits,
                &sample.ingest,
            )
            .await?;
        let _ = self.js.delete_stream("BENCH_RAW_WARM").await;
        let n = sample.records.len();
        let (st, publish_record) = self
            .scratch(
                nats,
                "BENCH_RAW",
                stream::RetentionPolicy::Limits,
                &sample.records,
            )
            .await?;
        let consume_ack = consume_acked(&st, n).await?;
        let c = st
            .create_consumer(consumer::pull::OrderedConfig {
                name: Some("bench_ordered".into()),
                ..Default::default()
            })
            .await?;
        let t = Instant::now();
        let got = read(c.messages().await?, n, false).await?;
        let consume_ordered = got as f64 / t.elapsed().as_secs_f64();
        let _ = self.js.delete_stream("BENCH_RAW").await;
        // As validate reads WHALE_INGEST: on a work queue each ack also removes the message,
        // work nats-server does not do for an ack on a stream that keeps its messages.
        let (st, publish) = self
            .scratch(
                nats,
                "BENCH_RAW_QUEUE",
                stream::RetentionPolicy::WorkQueue,
                &sample.ingest,
            )
            .await?;
        let consume_ack_queue = consume_acked(&st, sample.ingest.len()).await?;
        let _ = self.js.delete_stream("BENCH_RAW_QUEUE").await;
        Ok(Rates {
            publish,
            publish_record,
            consume_ack,
            consume_ack_queue,
            consume_ordered,
        })
    }

    /// A new stream `name` (`retention`) holding `messages` (their payloads, msg ids and
    /// headers, on the stream's own subject), and the rate they were published at.
    async fn scratch(
        &self,
        nats: &Nats,
        name: &str,
        retention: stream::RetentionPolicy,
        messages: &[Output],
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
        for m in messages {
            let out = Output {
                subject: subject.clone(),
                ..m.clone()
            };
            w.send((), out).await;
        }
        w.drain().await;
        Ok((st, messages.len() as f64 / t.elapsed().as_secs_f64()))
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
            if name == subjects::STREAM_INGEST {
                ops.ingest_publishes += info.state.last_sequence;
            }
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

/// The messages a reference moves, as whale moves them. Each event as a producer publishes it to
/// `whale.in.<type>` (its payload, its id as msg id: what WHALE_INGEST holds), and as the record
/// validate publishes for it to `whale.events.<type>`: the normalized envelope with the headers
/// every record carries (event id, trace context, ingest time; docs/contract.md), as
/// WHALE_EVENTS holds it. In the pipeline bench an ingest message is a 213 B payload with one
/// header; its record is stored in 503 B (a 267 B payload and four headers), and JetStream and
/// its client move records measurably slower (docs/operations.md, "Session 21").
pub struct Sample {
    pub ingest: Vec<Output>,
    pub records: Vec<Output>,
}

impl Sample {
    /// The sample of `events` (each with `id` and `event_type`).
    pub fn of(events: impl IntoIterator<Item = Value>) -> anyhow::Result<Sample> {
        Self::at(events, OffsetDateTime::now_utc())
    }

    /// The sample of `events` as if published at `now`: each record is what the validate stage
    /// makes of its ingest message (`Validate::judge`, `whale_validate::accepted`) with the
    /// headers the worker loop adds (`tracectx::carry`).
    fn at(events: impl IntoIterator<Item = Value>, now: OffsetDateTime) -> anyhow::Result<Sample> {
        let validate = validator();
        let (mut ingest, mut records) = (Vec::new(), Vec::new());
        for (i, ev) in events.into_iter().enumerate() {
            let ty = ev["event_type"].as_str().unwrap_or_default().to_owned();
            let id = ev["id"].as_str().unwrap_or_default().to_owned();
            let payload = serde_json::to_vec(&ev)?;
            let d = Delivery::new(
                subjects::ingest(&ty),
                payload.clone(),
                &[("Nats-Msg-Id", &id)],
                1,
                i as u64 + 1,
                now,
            );
            let ev = validate
                .judge(&d)
                .map_err(|r| anyhow::anyhow!("bench event {id} is not valid: {:?}", r.reasons))?;
            let mut record = whale_validate::accepted(&ev);
            tracectx::carry(&d, "validate", &mut record);
            ingest.push(Output::new(d.subject.clone(), id, payload));
            records.push(record);
        }
        Ok(Sample { ingest, records })
    }

    /// Mean payload bytes of the ingest messages.
    pub fn avg_ingest_bytes(&self) -> usize {
        let n = self.ingest.len().max(1);
        self.ingest.iter().map(|o| o.payload.len()).sum::<usize>() / n
    }
}

/// The validate stage as the reference runs it: default limits, any event type (no schemas).
fn validator() -> whale_validate::Validate {
    whale_validate::Validate {
        registry: Default::default(),
        limits: Default::default(),
        allow_unknown_types: true,
        hooks: Default::default(),
    }
}

/// Raw JetStream rates on the server under test, in messages/s.
#[derive(Debug, Clone, Copy)]
pub struct Rates {
    /// Publish of ingest messages (as producers publish to WHALE_INGEST).
    pub publish: f64,
    /// Publish of records (as the stages publish to WHALE_EVENTS and WHALE_PIPE).
    pub publish_record: f64,
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
    /// Publishes on every stream ...
    pub publishes: u64,
    /// ... of which on WHALE_INGEST (ingest messages; the rest are records).
    pub ingest_publishes: u64,
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
                "raw_publish_record_per_s": r.publish_record.round(),
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
                publish_record: mean(|r| r.publish_record),
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

#[cfg(test)]
mod tests {
    use super::*;
    use whale_kernel::{Outcome, Stage as _};

    /// The reference's records are the messages the validate stage publishes for the same
    /// ingest messages: subject, msg id, payload and every header, as the worker loop sends them.
    #[tokio::test]
    async fn records_are_what_validate_publishes() {
        let now = OffsetDateTime::now_utc();
        let events: Vec<Value> = (0..3)
            .map(|i| {
                json!({"id": format!("bench-{i}"), "event_type": "bench.t001", "source": "whale-bench",
                    "detail": {"host": "web-1", "usage_pct": 50 + i}, "labels": {"team": "bench"}})
            })
            .collect();
        let sample = Sample::at(events.clone(), now).unwrap();
        let validate = validator();
        for (i, ev) in events.iter().enumerate() {
            let payload = serde_json::to_vec(ev).unwrap();
            let id = format!("bench-{i}");
            assert_eq!(sample.ingest[i].payload, payload);
            assert_eq!(sample.ingest[i].msg_id, id);
            let d = Delivery::new(
                "whale.in.bench.t001",
                payload,
                &[("Nats-Msg-Id", &id)],
                1,
                i as u64 + 1,
                now,
            );
            let Outcome::Ack(mut outs) = validate.handle(&d).await else {
                panic!("validate did not accept {ev}");
            };
            let mut out = outs.remove(0);
            tracectx::carry(&d, "validate", &mut out);
            let rec = &sample.records[i];
            assert_eq!(
                (&rec.subject, &rec.msg_id, &rec.payload),
                (&out.subject, &out.msg_id, &out.payload)
            );
            let (mut a, mut b) = (rec.headers.clone(), out.headers.clone());
            a.sort();
            b.sort();
            assert_eq!(a, b);
            let names: Vec<&str> = a.iter().map(|(k, _)| *k).collect();
            assert_eq!(
                names,
                [
                    subjects::HDR_EVENT_ID,
                    subjects::HDR_RECEIVED,
                    "traceparent"
                ]
            );
            // The envelope adds what the producer left out (the time here).
            assert!(rec.payload.len() > sample.ingest[i].payload.len());
        }
    }
}

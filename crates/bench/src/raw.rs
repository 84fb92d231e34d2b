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
    /// `Window`) and pull consume+ack rates, in messages/s, on a scratch stream.
    pub async fn rates(&self, nats: &Nats, payloads: &[Vec<u8>]) -> anyhow::Result<(f64, f64)> {
        let js = &self.js;
        let _ = js.delete_stream("BENCH_RAW").await;
        let st = js
            .create_stream(stream::Config {
                name: "BENCH_RAW".into(),
                subjects: vec!["bench.raw".into()],
                ..Default::default()
            })
            .await?;
        let t = Instant::now();
        let mut w: Window<()> = Window::on(nats, 1024);
        for (i, p) in payloads.iter().enumerate() {
            w.send(
                (),
                Output::new("bench.raw".into(), format!("raw-{i}"), p.clone()),
            )
            .await;
        }
        w.drain().await;
        let publish = payloads.len() as f64 / t.elapsed().as_secs_f64();
        let c: consumer::PullConsumer = st
            .create_consumer(consumer::pull::Config {
                durable_name: Some("bench".into()),
                max_ack_pending: 20_000,
                ..Default::default()
            })
            .await?;
        let t = Instant::now();
        let mut msgs = c.stream().max_messages_per_batch(512).messages().await?;
        let mut got = 0;
        while got < payloads.len() {
            match msgs.next().await {
                Some(Ok(m)) => {
                    m.ack().await.map_err(anyhow::Error::from_boxed)?;
                    got += 1;
                }
                Some(Err(e)) => tracing::debug!("bench consume: {e}"),
                None => break,
            }
        }
        let consume = got as f64 / t.elapsed().as_secs_f64();
        let _ = js.delete_stream("BENCH_RAW").await;
        Ok((publish, consume))
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

    /// Total JetStream publishes (stream sequences) and consumer deliveries, over whale's
    /// streams.
    pub async fn ops(&self) -> anyhow::Result<(u64, u64)> {
        let mut publishes = 0;
        let mut consumes = 0;
        for name in [
            subjects::STREAM_INGEST,
            subjects::STREAM_EVENTS,
            subjects::STREAM_PIPE,
        ] {
            let mut st = self.js.get_stream(name).await?;
            publishes += st.info().await?.state.last_sequence;
            let consumers: Vec<_> = st.consumers().try_collect().await?;
            consumes += consumers
                .iter()
                .map(|c| c.delivered.consumer_sequence)
                .sum::<u64>();
        }
        Ok((publishes, consumes))
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

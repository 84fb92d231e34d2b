//! `whale status`: the server, the streams, and per stage its consumer's backlog (pending,
//! ack-pending, redelivered) — what an operator looks at first when something lags.
//! The embedded index keeps its own place and reads through ordered consumers
//! (`<consumer>_own_<id>`, see `worker.rs`): its rows show those, not the durable consumers
//! `whale setup` makes for the OpenSearch backend.

use serde::Serialize;

use crate::nats::Nats;
use crate::setup;
use crate::subjects;

#[derive(Debug, Serialize)]
pub struct Status {
    pub server_version: String,
    pub server_name: String,
    pub streams: Vec<StreamStatus>,
    pub consumers: Vec<ConsumerStatus>,
}

#[derive(Debug, Serialize)]
pub struct StreamStatus {
    pub name: String,
    pub messages: u64,
    pub bytes: u64,
    pub consumers: usize,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ConsumerStatus {
    pub stage: String,
    pub stream: String,
    pub consumer: String,
    /// Messages not yet delivered to the stage.
    pub pending: u64,
    /// Delivered, not yet acked.
    pub ack_pending: usize,
    /// Delivered more than once.
    pub redelivered: usize,
    /// Pull requests waiting (≈ workers idle on this consumer).
    pub waiting: usize,
    /// The stage keeps its own place (the embedded index): these figures are its reading's,
    /// in stream order without acks.
    pub own_position: bool,
    pub error: Option<String>,
}

impl ConsumerStatus {
    /// The row of `input` before its figures are read.
    fn empty(stage: &str, input: &subjects::Input, own_position: bool) -> ConsumerStatus {
        ConsumerStatus {
            stage: stage.to_owned(),
            stream: input.stream.to_owned(),
            consumer: input.consumer.to_owned(),
            pending: 0,
            ack_pending: 0,
            redelivered: 0,
            waiting: 0,
            own_position,
            error: None,
        }
    }
}

pub async fn status(nats: &Nats, cfg: &crate::Config) -> anyhow::Result<Status> {
    let info = nats.client.server_info();
    let mut streams = Vec::new();
    for want in setup::streams(cfg) {
        let st = match nats.js.get_stream(&want.name).await {
            Ok(mut s) => match s.info().await {
                Ok(i) => StreamStatus {
                    name: want.name.clone(),
                    messages: i.state.messages,
                    bytes: i.state.bytes,
                    consumers: i.state.consumer_count,
                    error: None,
                },
                Err(e) => missing(&want.name, e.to_string()),
            },
            Err(_) => missing(&want.name, setup::not_set_up("stream")),
        };
        streams.push(st);
    }
    let mut consumers = Vec::new();
    let embedded = cfg.index.opensearch_url.is_none();
    for stage in subjects::STAGES {
        for input in subjects::stage_inputs(stage) {
            if stage == "index" && embedded {
                consumers.push(own_reading(nats, stage, &input).await);
                continue;
            }
            let mut c = ConsumerStatus::empty(stage, &input, false);
            match nats.js.get_stream(input.stream).await {
                Ok(s) => match s.consumer_info(input.consumer).await {
                    Ok(i) => {
                        c.pending = i.num_pending;
                        c.ack_pending = i.num_ack_pending;
                        c.redelivered = i.num_redelivered;
                        c.waiting = i.num_waiting;
                    }
                    Err(_) => c.error = Some(setup::not_set_up("consumer")),
                },
                Err(_) => c.error = Some(setup::not_set_up("stream")),
            }
            consumers.push(c);
        }
    }
    Ok(Status {
        server_version: info.version,
        server_name: info.server_name,
        streams,
        consumers,
    })
}

/// The reading of a stage that keeps its own place: the ordered consumer of `input` furthest
/// ahead (one stopped by a crash lingers for 30 s; two live ones are two indexes), or an
/// error when none reads.
async fn own_reading(nats: &Nats, stage: &str, input: &subjects::Input) -> ConsumerStatus {
    let mut c = ConsumerStatus::empty(stage, input, true);
    let prefix = subjects::own_reader_prefix(input.consumer);
    match nats.consumers(input.stream).await {
        Ok(all) => match all
            .into_iter()
            .filter(|i| i.name.starts_with(&prefix))
            .min_by_key(|i| i.num_pending)
        {
            Some(i) => {
                c.pending = i.num_pending;
                c.waiting = i.num_waiting;
            }
            None => {
                c.error = Some(
                    "no index worker is reading (the embedded index keeps its own place; start `whale run --stages index`)"
                        .into(),
                )
            }
        },
        Err(e) => c.error = Some(format!("{e:#}")),
    }
    c
}

fn missing(name: &str, error: String) -> StreamStatus {
    StreamStatus {
        name: name.to_owned(),
        messages: 0,
        bytes: 0,
        consumers: 0,
        error: Some(error),
    }
}

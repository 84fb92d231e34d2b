//! Publishing to JetStream through a bounded window of pending acks: every record goes out with a
//! deterministic `Nats-Msg-Id` (so a redelivered input cannot create a second record), and acks
//! are awaited together rather than one round trip at a time.

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};

use async_nats::header::HeaderName;
use async_nats::jetstream::{self, context::PublishAckFuture};
use async_nats::HeaderMap;
use tokio::sync::watch;

use crate::nats::Nats;

/// A record to publish.
#[derive(Debug, Clone)]
pub struct Output {
    pub subject: String,
    /// Deterministic id; JetStream drops a second message with the same id (duplicate window).
    pub msg_id: String,
    pub payload: Bytes,
    pub headers: Vec<(&'static str, String)>,
}

impl Output {
    pub fn new(subject: String, msg_id: String, payload: impl Into<Bytes>) -> Self {
        Output {
            subject,
            msg_id,
            payload: payload.into(),
            headers: Vec::new(),
        }
    }

    /// A JSON record.
    pub fn json<T: serde::Serialize>(subject: String, msg_id: String, value: &T) -> Self {
        let payload = serde_json::to_vec(value).expect("records serialize");
        Self::new(subject, msg_id, payload)
    }

    /// Adds a header (event id, rule, task id: see `subjects::HDR_*`).
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// The message to send. Header names are static and the values are moved, not copied: this
    /// runs once per record published, and its allocations showed in the pipeline's profile.
    pub(crate) fn into_publish(self) -> (String, jetstream::message::PublishMessage) {
        let mut headers = HeaderMap::new();
        headers.insert(HeaderName::from_static("Nats-Msg-Id"), self.msg_id);
        for (k, v) in self.headers {
            headers.insert(HeaderName::from_static(k), v);
        }
        (
            self.subject,
            jetstream::message::PublishMessage::build()
                .payload(self.payload)
                .headers(headers),
        )
    }
}

impl Nats {
    /// Publishes one record outside the worker loop (an HTTP handler, a timer) with its own
    /// `Nats-Msg-Id` and headers, and waits for JetStream's ack.
    pub async fn publish(&self, out: Output) -> anyhow::Result<()> {
        self.publish_new(out).await.map(drop)
    }

    /// As [`Nats::publish`]; says whether JetStream stored the record (`true`) or dropped it as
    /// a duplicate of one already stored with the same msg id (`false`).
    pub async fn publish_new(&self, out: Output) -> anyhow::Result<bool> {
        let (subject, msg) = out.into_publish();
        let ack = self.js.send_publish(subject, msg).await?.await?;
        Ok(!ack.duplicate)
    }
}

/// Counts of a publishing run.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct PublishStats {
    pub published: u64,
    pub duplicates: u64,
    pub failed: u64,
}

type Pending<T> = BoxFuture<'static, (T, Result<jetstream::publish::PublishAck, String>)>;

/// A window of pending publish acks. `T` tags each publish (e.g. the input message index) so the
/// caller learns which ones failed.
pub struct Window<T> {
    js: jetstream::Context,
    disconnects: Option<watch::Receiver<u64>>,
    limit: usize,
    pending: FuturesUnordered<Pending<T>>,
    pub stats: PublishStats,
}

impl<T: Send + 'static> Window<T> {
    fn new(js: jetstream::Context, limit: usize) -> Self {
        Window {
            js,
            disconnects: None,
            limit: limit.max(1),
            pending: FuturesUnordered::new(),
            stats: PublishStats::default(),
        }
    }

    /// A window of at most `limit` pending acks publishing on `nats`.
    pub fn on(nats: &Nats, limit: usize) -> Self {
        Self::new(nats.js.clone(), limit)
    }

    /// Fails the publishes awaiting their ack as soon as `nats` loses its connection, instead of
    /// after the JetStream timeout: the server that was to answer is gone (killed node), so the
    /// ack can never come, and the caller can retry at once. A publish that did land before is
    /// harmless to repeat (same msg id, deduplicated).
    pub fn fail_fast_on_disconnect(mut self, nats: &Nats) -> Self {
        self.disconnects = Some(nats.disconnects.clone());
        self
    }

    /// Sends one record; waits only when the window is full. Returns the results that completed
    /// while making room.
    pub async fn send(&mut self, tag: T, out: Output) -> Vec<(T, Result<bool, String>)> {
        let mut done = Vec::new();
        while self.pending.len() >= self.limit {
            if let Some(r) = self.next().await {
                done.push(r);
            }
        }
        let (subject, publish) = out.into_publish();
        match self.js.send_publish(subject, publish).await {
            Ok(ack) => self.pending.push(wrap(tag, ack, self.disconnects.clone())),
            Err(e) => {
                self.stats.failed += 1;
                done.push((tag, Err(e.to_string())));
            }
        }
        done
    }

    /// Waits for every pending ack.
    pub async fn drain(&mut self) -> Vec<(T, Result<bool, String>)> {
        let mut done = Vec::new();
        while let Some(r) = self.next().await {
            done.push(r);
        }
        done
    }

    /// Number of publishes awaiting their ack.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// `Ok(true)` = stored, `Ok(false)` = duplicate (already stored earlier), `Err` = failed.
    async fn next(&mut self) -> Option<(T, Result<bool, String>)> {
        let (tag, r) = self.pending.next().await?;
        let r = match r {
            Ok(ack) if ack.duplicate => {
                self.stats.duplicates += 1;
                Ok(false)
            }
            Ok(_) => {
                self.stats.published += 1;
                Ok(true)
            }
            Err(e) => {
                self.stats.failed += 1;
                Err(e)
            }
        };
        Some((tag, r))
    }
}

/// The ack of one publish; with `disconnects`, an error as soon as the connection the publish
/// went out on is lost (counted from now, when it was sent).
fn wrap<T: Send + 'static>(
    tag: T,
    ack: PublishAckFuture,
    mut disconnects: Option<watch::Receiver<u64>>,
) -> Pending<T> {
    if let Some(d) = &mut disconnects {
        d.mark_unchanged();
    }
    Box::pin(async move {
        let lost = async {
            // A dropped sender (client gone) never counts as a lost connection.
            let moved = match &mut disconnects {
                Some(d) => d.changed().await.is_ok(),
                None => false,
            };
            if !moved {
                std::future::pending::<()>().await;
            }
        };
        let r = tokio::select! {
            r = ack => r.map_err(|e| e.to_string()),
            () = lost => Err("connection to the server lost before the ack arrived".to_owned()),
        };
        (tag, r)
    })
}

//! Notifications: posting one message to one channel (WeCom group robot, Slack incoming
//! webhook, generic JSON webhook), with retries, without ever blocking the pipeline.
//!
//! Requests arrive as records on `whale.pipe.notify` (from this stage's results and from the
//! approval gate) and are consumed by their own durable consumer, so a failing channel only
//! delays its own messages: a failed post is redelivered after a backoff (nak with delay), and
//! after `feedback.notify_attempts` it is recorded as `failed` on `whale.pipe.notified`.
//!
//! # At most once
//!
//! A webhook has no idempotency key (WeCom, Slack), so a post that may have landed cannot be
//! retried without risking a duplicate. Before posting, the worker creates a marker
//! `notified.<hash of request id>` = `sending` in KV (an atomic create or a compare-and-set, so
//! two workers never post the same request); after the answer it becomes `sent`, `retry`
//! (the receiver said no, or no connection could be made: nothing landed, post again later) or
//! `failed`. A marker still `sending` after the post timeout means a worker died mid-post: the
//! post may or may not have landed, and it is **not** repeated; it is recorded as `unknown`.
//! That is the trade-off: a chat message is for people, who read a duplicate "disk cleaned"
//! or a second pair of approval links as a second event, while the one window where a message
//! can be lost is one HTTP round trip of a worker killed during it — and it is recorded, not
//! silent. A post that timed out is treated the same way (it may have landed).
//!
//! Markers live for `state.executions` after their last write (the max age of `whale_state`),
//! which is never below `nats.pipe_retention`: every copy of a request is gone from the stream
//! before its marker is.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use time::OffsetDateTime;
use whale_expr::{Input, Template};
use whale_kernel::backoff::Backoff;
use whale_kernel::config::{ChannelKind, FeedbackConfig};
use whale_kernel::kv::{Bucket, Step, Ttl};
use whale_kernel::records::{Notified, NotifyRequest, NotifyStatus};
use whale_kernel::{Config, Delivery, Outcome, Output, Secret};

use crate::metrics::NOTIFICATIONS;
use crate::result::{cut, default_text};

/// WeCom refuses markdown content over 4096 bytes.
const WECOM_MAX: usize = 4000;

/// The configured channels, templates compiled.
pub struct Channels {
    map: BTreeMap<String, Channel>,
}

struct Channel {
    kind: ChannelKind,
    endpoint: Secret,
    bearer: Option<Secret>,
    template: Option<Template>,
}

impl Channels {
    /// Compiles every channel's template; a template that does not compile is refused here,
    /// with the channel's name, before any message needs it.
    pub fn from_config(cfg: &Config) -> anyhow::Result<Channels> {
        let mut map = BTreeMap::new();
        for (name, c) in &cfg.channels {
            let template = match &c.template {
                Some(t) => Some(Template::compile(t).map_err(|e| {
                    anyhow::anyhow!("channel {name:?}: the message template does not compile: {e}")
                })?),
                None => None,
            };
            let endpoint = c
                .endpoint
                .clone()
                .ok_or_else(|| anyhow::anyhow!("channel {name:?} has no url"))?;
            map.insert(
                name.clone(),
                Channel {
                    kind: c.kind,
                    endpoint,
                    bearer: c.bearer.clone(),
                    template,
                },
            );
        }
        Ok(Channels { map })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// A result message for `channel`: its template over `input` (`$item` bound to the task's
    /// `for_each` element, if any), or the default message (also
    /// when the template fails on this input, with the reason appended).
    pub fn result_text(&self, channel: &str, input: &Value) -> String {
        let Some(t) = self.map.get(channel).and_then(|c| c.template.as_ref()) else {
            return default_text(input);
        };
        // a task of a `for_each` rule: its element is `$item` here too
        let mut bound = Input::new(input.clone());
        if let Some(item) = input.pointer("/task/item/value") {
            bound = bound.with_item(item.clone());
        }
        match t.render_string(&bound) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(
                    channel,
                    "message template failed, sending the default message: {e}"
                );
                format!(
                    "{}\n(template failed: {})",
                    default_text(input),
                    cut(&e.to_string(), 300)
                )
            }
        }
    }
}

/// The sent-marker of a request.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Marker {
    state: State,
    attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// When the state was set (unix seconds).
    at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum State {
    Sending,
    Retry,
    Sent,
    Failed,
    Unknown,
}

impl State {
    fn label(self) -> &'static str {
        match self {
            State::Sending => "sending",
            State::Retry => "retry",
            State::Sent => "sent",
            State::Failed => "failed",
            State::Unknown => "unknown",
        }
    }

    /// What the `Notified` record says of a marker in this state (only final states reach it;
    /// `sending`/`retry` would be a post whose outcome nobody knows).
    fn status(self) -> NotifyStatus {
        match self {
            State::Sent => NotifyStatus::Sent,
            State::Failed => NotifyStatus::Failed,
            State::Unknown | State::Sending | State::Retry => NotifyStatus::Unknown,
        }
    }
}

fn marker_key(id: &str) -> String {
    whale_kernel::keys::notified(id)
}

/// What claiming a post found.
enum Begin {
    /// Ours to post: this is attempt n.
    Post(u32),
    /// Nothing to post: the answer to the message.
    Done(Outcome),
    /// A worker stopped while posting: recorded `unknown` (never posted again).
    GaveUp(Marker),
}

fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// Why a post did not go through.
struct PostError {
    /// Nothing landed (refused, no connection): posting again is safe.
    retry: bool,
    /// The post may have landed (timeout while waiting for the answer).
    ambiguous: bool,
    message: String,
}

/// Posts requests; one per worker loop, shared by the messages of a batch.
pub struct Sender {
    pub(crate) channels: std::sync::Arc<Channels>,
    pub(crate) http: reqwest::Client,
    pub(crate) kv: Bucket,
    pub(crate) cfg: FeedbackConfig,
}

impl Sender {
    pub fn new(
        channels: std::sync::Arc<Channels>,
        kv: Bucket,
        cfg: FeedbackConfig,
    ) -> anyhow::Result<Sender> {
        let http = reqwest::Client::builder()
            .timeout(cfg.notify_timeout)
            .connect_timeout(cfg.notify_timeout.min(Duration::from_secs(5)))
            .build()?;
        Ok(Sender {
            channels,
            http,
            kv,
            cfg,
        })
    }

    /// Handles one `whale.pipe.notify` message.
    pub async fn handle(&self, d: &Delivery) -> Outcome {
        let req: NotifyRequest = match d.decode("notification request") {
            Ok(r) => r,
            Err(malformed) => return malformed,
        };
        let Some(channel) = self.channels.map.get(&req.channel) else {
            let err = format!(
                "channel {:?} is not configured: add [channels.{}] to whale.toml",
                req.channel, req.channel
            );
            NOTIFICATIONS
                .with_label_values(&[&req.channel, "failed"])
                .inc();
            return Outcome::Ack(vec![notified(&req, NotifyStatus::Failed, 0, Some(err))]);
        };
        let key = marker_key(&req.id);
        let lease = self.cfg.notify_timeout.as_secs() as i64 + 5;
        // Claim the post: create the marker, or move it from `retry` to `sending`.
        let begin = self
            .kv
            .modify(&key, |current| {
                let Some(value) = current else {
                    let m = Marker {
                        state: State::Sending,
                        attempts: 1,
                        error: None,
                        at: now(),
                    };
                    return Step::Write {
                        value: to_bytes(&m),
                        ttl: Ttl::Bucket,
                        then: Begin::Post(1),
                    };
                };
                let Ok(m) = serde_json::from_slice::<Marker>(value) else {
                    return Step::Keep(Begin::Done(Outcome::Ack(vec![notified(
                        &req,
                        NotifyStatus::Failed,
                        0,
                        Some("unreadable sent-marker".into()),
                    )])));
                };
                match m.state {
                    State::Sent | State::Failed | State::Unknown => {
                        Step::Keep(Begin::Done(Outcome::Ack(vec![notified(
                            &req,
                            m.state.status(),
                            m.attempts,
                            m.error,
                        )])))
                    }
                    // Another worker is posting it right now.
                    State::Sending if now() - m.at < lease => {
                        Step::Keep(Begin::Done(Outcome::Retry {
                            delay: Duration::from_secs(lease as u64),
                            reason: "being posted by another worker".into(),
                        }))
                    }
                    State::Sending => {
                        let m = Marker {
                            state: State::Unknown,
                            attempts: m.attempts,
                            error: Some("a worker stopped while posting; not posted again, to avoid a duplicate".into()),
                            at: now(),
                        };
                        Step::Write {
                            value: to_bytes(&m),
                            ttl: Ttl::Bucket,
                            then: Begin::GaveUp(m),
                        }
                    }
                    State::Retry => {
                        let next = Marker {
                            state: State::Sending,
                            attempts: m.attempts + 1,
                            error: None,
                            at: now(),
                        };
                        Step::Write {
                            value: to_bytes(&next),
                            ttl: Ttl::Bucket,
                            then: Begin::Post(next.attempts),
                        }
                    }
                }
            })
            .await;
        let attempts = match begin {
            Ok(Begin::Post(n)) => n,
            Ok(Begin::Done(outcome)) => return outcome,
            Ok(Begin::GaveUp(m)) => {
                NOTIFICATIONS
                    .with_label_values(&[&req.channel, "unknown"])
                    .inc();
                return Outcome::Ack(vec![notified(
                    &req,
                    NotifyStatus::Unknown,
                    m.attempts,
                    m.error,
                )]);
            }
            Err(e) => return kv_down(e),
        };
        let mut span = whale_kernel::tracectx::child(d, "feedback", "notification");
        span.set("whale.channel", req.channel.clone());
        let result = self.post(channel, &req).await;
        if let Err(e) = &result {
            span.error(e.message.clone());
        }
        drop(span);
        let (state, error) = match result {
            Ok(()) => (State::Sent, None),
            Err(e) if e.ambiguous => (State::Unknown, Some(e.message)),
            Err(e) if e.retry && attempts < self.cfg.notify_attempts => {
                (State::Retry, Some(e.message))
            }
            Err(e) => (State::Failed, Some(e.message)),
        };
        NOTIFICATIONS
            .with_label_values(&[&req.channel, state.label()])
            .inc();
        let m = Marker {
            state,
            attempts,
            error: error.clone(),
            at: now(),
        };
        if let Err(e) = self.kv.put(&key, to_bytes(&m), Ttl::Bucket).await {
            // The marker stays `sending`: a later delivery records `unknown`, never posts twice.
            tracing::warn!(channel = %req.channel, "cannot record the post's outcome: {e}");
        }
        match state {
            State::Retry => {
                let delay = Backoff {
                    base: self.cfg.notify_backoff,
                    max: self.cfg.notify_backoff_max,
                }
                .ceiling(attempts);
                tracing::info!(channel = %req.channel, attempts, "post failed, retrying in {delay:?}: {}", error.as_deref().unwrap_or(""));
                Outcome::Retry {
                    delay,
                    reason: error.unwrap_or_default(),
                }
            }
            _ => {
                if state != State::Sent {
                    tracing::warn!(channel = %req.channel, id = %req.id, "notification {}: {}", state.label(), error.as_deref().unwrap_or(""));
                }
                Outcome::Ack(vec![notified(&req, state.status(), attempts, error)])
            }
        }
    }

    /// One post in the channel's format. Errors never carry the URL (it holds the key).
    async fn post(&self, ch: &Channel, req: &NotifyRequest) -> Result<(), PostError> {
        let body = payload(ch.kind, req);
        let mut rb = self.http.post(ch.endpoint.expose()).json(&body);
        if ch.kind == ChannelKind::Webhook {
            rb = rb.header("Idempotency-Key", req.id.as_str());
            if let Some(b) = &ch.bearer {
                rb = rb.bearer_auth(b.expose());
            }
        }
        let resp = rb.send().await.map_err(transport)?;
        let status = resp.status();
        // The answer's status came back, so the post landed: a broken body changes nothing.
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            let code = status.as_u16();
            return Err(PostError {
                retry: code >= 500 || code == 408 || code == 429,
                ambiguous: false,
                message: format!("http {code}: {}", cut(text.trim(), 300)),
            });
        }
        if ch.kind == ChannelKind::Wecom {
            // WeCom answers 200 with {"errcode": N, "errmsg": ...}; 0 is success.
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let code = v.get("errcode").and_then(Value::as_i64).unwrap_or(0);
            if code != 0 {
                let msg = v.get("errmsg").and_then(Value::as_str).unwrap_or("");
                return Err(PostError {
                    // -1 system busy, 45009 over the robot's rate limit.
                    retry: code == -1 || code == 45009,
                    ambiguous: false,
                    message: format!("wecom errcode {code}: {}", cut(msg, 300)),
                });
            }
        }
        Ok(())
    }
}

fn transport(e: reqwest::Error) -> PostError {
    let ambiguous = e.is_timeout() && !e.is_connect();
    let retry = !ambiguous;
    PostError {
        retry,
        ambiguous,
        message: e.without_url().to_string(),
    }
}

/// The body each kind of channel expects.
pub fn payload(kind: ChannelKind, req: &NotifyRequest) -> Value {
    match kind {
        ChannelKind::Wecom => {
            let links: Vec<String> = req
                .links
                .iter()
                .map(|l| format!("[{}]({})", l.label, l.url))
                .collect();
            let mut content = req.text.clone();
            if !links.is_empty() {
                content = format!(
                    "{}\n{}",
                    cut(&content, WECOM_MAX - 200 * links.len()),
                    links.join(" · ")
                );
            }
            json!({"msgtype": "markdown", "markdown": {"content": cut(&content, WECOM_MAX)}})
        }
        ChannelKind::Slack => {
            let mut text = req.text.clone();
            let links: Vec<String> = req
                .links
                .iter()
                .map(|l| format!("<{}|{}>", l.url, l.label))
                .collect();
            if !links.is_empty() {
                text = format!("{text}\n{}", links.join(" · "));
            }
            json!({ "text": text })
        }
        ChannelKind::Webhook => {
            let mut rec = req.record.clone();
            if let Value::Object(m) = &mut rec {
                m.insert("id".into(), json!(req.id));
                m.insert("text".into(), json!(req.text));
                if !req.links.is_empty() {
                    m.insert("links".into(), json!(req.links));
                }
            }
            rec
        }
    }
}

fn to_bytes(m: &Marker) -> bytes::Bytes {
    serde_json::to_vec(m).expect("marker serializes").into()
}

fn kv_down(e: impl std::fmt::Display) -> Outcome {
    Outcome::Retry {
        delay: Duration::from_secs(2),
        reason: format!("KV unavailable: {e}"),
    }
}

fn notified(
    req: &NotifyRequest,
    status: NotifyStatus,
    attempts: u32,
    error: Option<String>,
) -> Output {
    let rec = Notified {
        id: req.id.clone(),
        channel: req.channel.clone(),
        kind: req.kind,
        task_id: req.task_id.clone(),
        event_id: req.event_id.clone(),
        rule: req.rule.clone(),
        status,
        attempts,
        error,
        at: OffsetDateTime::now_utc(),
    };
    rec.output()
}

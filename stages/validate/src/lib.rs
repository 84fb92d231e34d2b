//! validate stage: turns raw ingested messages (`whale.in.<type>`) into accepted events
//! (`whale.events.<type>`, deduplicated by event id) or rejections (`whale.rejected.<type>`,
//! with every reason as a JSON pointer and a message). Also home of ingest (HTTP and CLI
//! publishing) and the schema registry, since both speak the envelope.

pub mod hooks;
pub mod ingest;
pub mod metrics;
pub mod schemas;

use async_trait::async_trait;
use serde::Serialize;
use serde_json::Value;
use whale_kernel::envelope::{self, Defaults, Limits, Reason, StringDetail};
use whale_kernel::metrics::STAGE_EVENTS;
use whale_kernel::{subjects, Delivery, Envelope, Outcome, Output, Stage};

pub use schemas::Registry;

/// What `whale.rejected.<type>` carries.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Rejection {
    /// The event id: the producer's, the one ingest assigned, or the deterministic one validate
    /// assigns (so every rejection can be traced). `None` only in records written before.
    pub id: Option<String>,
    pub event_type: Option<String>,
    /// When whale received it (RFC 3339).
    pub received: String,
    pub reasons: Vec<Reason>,
    /// The event as parsed, when it was JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<Value>,
    /// The raw bytes (lossy UTF-8, at most 64 KiB) when it was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
    #[serde(default)]
    pub raw_truncated: bool,
}

const RAW_KEEP: usize = 64 * 1024;

/// The validate stage.
pub struct Validate {
    pub registry: Registry,
    pub limits: Limits,
    pub allow_unknown_types: bool,
    /// Webhook adapters for raw payloads published to `whale.in.hook.<name>`.
    pub hooks: std::sync::Arc<hooks::Hooks>,
}

/// Raw webhook payloads published to `whale.in.hook.<name>` go through hook `<name>`'s adapter
/// here (the NATS form of `POST /v1/hooks/<name>`); `hook.*` is therefore not an event type.
pub const HOOK_TYPE_PREFIX: &str = "hook.";

/// Why a producer's envelope may not carry `event_type`: `hook.*` names the raw payloads of
/// webhook adapters (`whale.in.hook.<name>`), so such an envelope would be read as a payload of
/// hook `<name>` (and would pass round a hook's `tokens`). Checked at HTTP/CLI ingest and on the
/// output of every adapter.
pub fn reserved_type(event_type: &str) -> Option<Reason> {
    let name = event_type.strip_prefix(HOOK_TYPE_PREFIX)?;
    Some(Reason::new(
        "/event_type",
        format!(
            "event type {event_type:?} is reserved for webhook payloads: post the payload to POST /v1/hooks/{name} (or publish it raw to whale.in.{event_type})"
        ),
    ))
}

impl Validate {
    /// Judges one raw message: `Ok(accepted)` or `Err(rejection)`. Pure apart from the registry.
    pub fn judge(&self, d: &Delivery) -> Result<Envelope, Box<Rejection>> {
        let subject_type = subjects::ingest_type(&d.subject);
        let received = envelope::format_time(d.published);
        let reject =
            |reasons: Vec<Reason>, event: Option<Value>, id: Option<String>, t: Option<String>| {
                let (raw, raw_truncated) = match &event {
                    Some(_) => (None, false),
                    None => {
                        let keep = &d.payload[..d.payload.len().min(RAW_KEEP)];
                        (
                            Some(String::from_utf8_lossy(keep).into_owned()),
                            d.payload.len() > RAW_KEEP,
                        )
                    }
                };
                Box::new(Rejection {
                    id,
                    event_type: t.or(subject_type.map(str::to_owned)),
                    received: received.clone(),
                    reasons,
                    event,
                    raw,
                    raw_truncated,
                })
            };
        // The id this event was given: by the producer, by whale's ingest (header), or the
        // deterministic one assigned here. Every rejection carries it, so `whale trace <id>`
        // finds the event whatever went wrong.
        let assigned = envelope::deterministic_id(d.published, d.stream_seq);
        let given_id = |value: Option<&Value>| -> String {
            value
                .and_then(|v| v.get("id"))
                .and_then(Value::as_str)
                .filter(|s| envelope::valid_id(s))
                .or_else(|| {
                    d.header(subjects::HDR_EVENT_ID)
                        .filter(|s| envelope::valid_id(s))
                })
                .unwrap_or(assigned.as_str())
                .to_owned()
        };
        let value = envelope::parse_bytes(&d.payload, &self.limits).map_err(|r| {
            // Lenient look for the producer's id (serde_json keeps the last duplicate key and
            // stops at 128 levels, so this cannot recurse deeply either).
            let lenient: Option<Value> = serde_json::from_slice(&d.payload).ok();
            reject(vec![r], None, Some(given_id(lenient.as_ref())), None)
        })?;
        let defaults = Defaults {
            event_type: subject_type,
            id: assigned.clone(),
            time: d.published,
            source: "nats",
        };
        // Envelopes whale's own ingest normalized are not decoded again: a string detail there
        // is CloudEvents text data, not JSON to decode.
        let string_detail = if d.header(envelope::HDR_NORMALIZED).is_some() {
            StringDetail::Keep
        } else {
            StringDetail::Decode
        };
        let ev = envelope::normalize_with(value, &defaults, &self.limits, string_detail).map_err(
            |reasons| {
                // Rare path: parse again rather than clone every event up front.
                let value: Option<Value> = serde_json::from_slice(&d.payload).ok();
                let id = given_id(value.as_ref());
                reject(reasons, value, Some(id), None)
            },
        )?;
        self.check_schema(ev, &received)
    }

    /// The schema check of a normalized event: the event, or its rejection.
    pub fn check_schema(&self, ev: Envelope, received: &str) -> Result<Envelope, Box<Rejection>> {
        let reject = |reasons: Vec<Reason>, ev: &Envelope| {
            Box::new(Rejection {
                id: Some(ev.id.clone()),
                event_type: Some(ev.event_type.clone()),
                received: received.to_owned(),
                reasons,
                event: serde_json::to_value(ev).ok(),
                raw: None,
                raw_truncated: false,
            })
        };
        match self.registry.get(&ev.event_type) {
            Some(schema) => {
                let reasons: Vec<Reason> = schema
                    .validator
                    .iter_errors(&ev.detail)
                    .map(|e| Reason::new(format!("/detail{}", e.instance_path()), e.to_string()))
                    .collect();
                if !reasons.is_empty() {
                    return Err(reject(reasons, &ev));
                }
            }
            None if self.allow_unknown_types => {}
            None => {
                let reason = Reason::new(
                    "/event_type",
                    format!(
                        "no schema for event type {:?}: add schemas/{}.json and run `whale schemas apply schemas`, or set events.allow_unknown_types",
                        ev.event_type, ev.event_type
                    ),
                );
                return Err(reject(vec![reason], &ev));
            }
        }
        Ok(ev)
    }
}

#[async_trait]
impl Stage for Validate {
    fn name(&self) -> &'static str {
        "validate"
    }

    async fn handle(&self, d: &Delivery) -> Outcome {
        if let Some(name) =
            subjects::ingest_type(&d.subject).and_then(|t| t.strip_prefix(HOOK_TYPE_PREFIX))
        {
            let outs = self
                .from_hook(name, d)
                .into_iter()
                .map(|r| output(r, d, &self.registry))
                .collect();
            return Outcome::Ack(outs);
        }
        Outcome::Ack(vec![output(self.judge(d), d, &self.registry)])
    }
}

impl Validate {
    /// A raw payload on `whale.in.hook.<name>`: the hook's events, each judged by its schema,
    /// or one rejection (type `hook.<name>`) saying why the payload became nothing.
    pub fn from_hook(&self, name: &str, d: &Delivery) -> Vec<Result<Envelope, Box<Rejection>>> {
        let received = envelope::format_time(d.published);
        let whole = |reasons: Vec<Reason>| {
            let keep = &d.payload[..d.payload.len().min(RAW_KEEP)];
            vec![Err(Box::new(Rejection {
                id: Some(envelope::deterministic_id(d.published, d.stream_seq)),
                event_type: Some(format!("{HOOK_TYPE_PREFIX}{name}")),
                received: received.clone(),
                reasons,
                event: None,
                raw: Some(String::from_utf8_lossy(keep).into_owned()),
                raw_truncated: d.payload.len() > RAW_KEEP,
            }))]
        };
        let Some(hook) = self.hooks.get(name) else {
            return whole(vec![Reason::new(
                "",
                format!(
                    "no hook named {name:?} (subject {}): whale has {}; add it as [[hooks]] in whale.toml",
                    d.subject,
                    self.hooks.names().join(", ")
                ),
            )]);
        };
        match hook.convert(&d.payload, &self.limits, d.published) {
            Ok(evs) => evs
                .into_iter()
                .map(|ev| self.check_schema(ev, &received))
                .collect(),
            Err(e) => {
                let mut reasons = vec![Reason::new("", e.message)];
                reasons.extend(e.reasons);
                whole(reasons)
            }
        }
    }
}

/// The record of an accepted event on `whale.events.<type>` (the worker loop adds the trace
/// context and ingest time, `kernel::tracectx::carry`). The bench's raw reference publishes
/// these too, so it moves the messages validate does.
pub fn accepted(ev: &Envelope) -> Output {
    Output::json(subjects::events(&ev.event_type), ev.id.clone(), ev)
        .header(subjects::HDR_EVENT_ID, ev.id.clone())
}

/// The message for a judged event: accepted on `whale.events.<type>`, or its rejection.
fn output(judged: Result<Envelope, Box<Rejection>>, d: &Delivery, registry: &Registry) -> Output {
    match judged {
        Ok(ev) => {
            STAGE_EVENTS
                .with_label_values(&["validate", "accepted"])
                .inc();
            // Label values stay bounded: a type without a schema (allowed by
            // events.allow_unknown_types) is counted as `other`.
            let type_label = if registry.get(&ev.event_type).is_some() {
                ev.event_type.as_str()
            } else {
                "other"
            };
            metrics::ACCEPTED.with_label_values(&[type_label]).inc();
            accepted(&ev)
        }
        Err(rej) => {
            STAGE_EVENTS
                .with_label_values(&["validate", "rejected"])
                .inc();
            metrics::REJECTIONS
                .with_label_values(&[metrics::reason(&rej)])
                .inc();
            let msg_id = match &rej.id {
                Some(id) => format!("rej:{id}"),
                None => format!("rej:seq:{}", d.stream_seq),
            };
            let subject = subjects::rejected(rej.event_type.as_deref());
            let mut out = Output::json(subject, msg_id, &rej);
            if let Some(id) = &rej.id {
                out = out.header(subjects::HDR_EVENT_ID, id.clone());
            }
            tracing::debug!(parent: &d.span("validate"), reasons = ?rej.reasons, "rejected");
            out
        }
    }
}

//! Ingest: getting events onto `whale.in.<event_type>` from HTTP (`POST /v1/events`: one event,
//! a JSON array, NDJSON, CloudEvents structured and binary mode) and from `whale publish`. Both
//! normalize through the kernel's envelope first, so a bad event is refused to its sender with
//! reasons instead of travelling; ids are assigned here so the ingest publish is deduplicated.
//! Every request has a bounded cost (body size, events per body, size of the error answer, a
//! per-source rate) and every answer says what whale knows: stored, refused, or unknown.

mod rate;
pub mod split;

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Semaphore;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::Request;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::json;
use whale_kernel::auth::{self, Principal};
use whale_kernel::envelope::{self, Defaults, Limits, Reason, StringDetail, HDR_NORMALIZED};
use whale_kernel::http::{body_refused, body_rejection, error, with_retry_after};
use whale_kernel::{subjects, Config, Envelope, Nats, Output, Window};

use crate::hooks::Hooks;

pub use rate::{Limiter, Over};
pub use split::{split, Form, SplitError};

/// Seconds a producer is asked to wait when the ingest stream is full.
pub const FULL_RETRY_AFTER_SECS: u64 = 30;
/// Seconds a producer is asked to wait when NATS is unreachable or did not confirm.
pub const UNAVAILABLE_RETRY_AFTER_SECS: u64 = 5;

/// Per-event refusal in a 400/413 answer.
#[derive(Debug, Serialize)]
pub struct Refused {
    pub index: usize,
    pub reasons: Vec<Reason>,
}

/// The refusals of one request: the first `keep` in full, and how many there were.
#[derive(Debug)]
pub struct Refusals {
    pub first: Vec<Refused>,
    pub total: usize,
    pub too_large: bool,
    keep: usize,
}

impl Refusals {
    pub fn new(keep: usize) -> Self {
        Refusals {
            first: Vec::new(),
            total: 0,
            too_large: false,
            keep,
        }
    }

    fn add(&mut self, index: usize, reasons: Vec<Reason>) {
        self.total += 1;
        if self.first.len() < self.keep {
            self.first.push(Refused { index, reasons });
        }
    }

    /// The 400 (or 413 when an event is over the size limit) answer.
    pub fn answer(self) -> Response {
        let code = if self.too_large {
            StatusCode::PAYLOAD_TOO_LARGE
        } else {
            StatusCode::BAD_REQUEST
        };
        let listed = if self.total > self.first.len() {
            format!(" (the first {} are listed)", self.first.len())
        } else {
            String::new()
        };
        error(
            code,
            format!(
                "{} event(s) refused{listed}; nothing was accepted",
                self.total
            ),
            json!({ "refused": self.first, "refused_total": self.total }),
        )
    }
}

/// Events ready to publish, in body order: normalized and serialized (the parsed values are
/// dropped as soon as each event is serialized, so memory stays near the size of the body).
#[derive(Debug, Default)]
pub struct Ready {
    pub ids: Vec<String>,
    pub sources: Vec<String>,
    pub outputs: Vec<Output>,
}

impl Ready {
    fn push(&mut self, ev: &Envelope) {
        self.ids.push(ev.id.clone());
        self.sources.push(ev.source.clone());
        self.outputs.push(ingest_output(ev));
    }
}

/// Parses and normalizes one raw event as a producer sent it (size, UTF-8, depth, duplicate
/// keys, envelope, string detail decoded with the same limits).
pub fn prepare_one(
    raw: &[u8],
    limits: &Limits,
    event_type: Option<&str>,
    source: &str,
) -> Result<Envelope, Vec<Reason>> {
    let v = envelope::parse_bytes(raw, limits).map_err(|r| vec![r])?;
    let ev = envelope::normalize_with(
        v,
        &Defaults::fresh(event_type, source),
        limits,
        StringDetail::Decode,
    )?;
    match crate::reserved_type(&ev.event_type) {
        Some(r) => Err(vec![r]),
        None => Ok(ev),
    }
}

fn too_large(bytes: usize, limits: &Limits) -> Vec<Reason> {
    vec![Reason::new(
        "",
        format!(
            "event is {bytes} bytes; the limit is {} bytes (events.max_bytes / WHALE_MAX_EVENT_BYTES)",
            limits.max_bytes
        ),
    )]
}

/// Prepares the events at `spans` of `body`; all or nothing. Over-size events are refused on
/// their raw length, before parsing.
pub fn prepare(
    body: &[u8],
    spans: &[Range<usize>],
    limits: &Limits,
    keep: usize,
) -> Result<Ready, Refusals> {
    let mut ready = Ready::default();
    let mut refused = Refusals::new(keep);
    for (index, span) in spans.iter().enumerate() {
        let raw = &body[span.clone()];
        let r = if raw.len() > limits.max_bytes {
            refused.too_large = true;
            Err(too_large(raw.len(), limits))
        } else {
            prepare_one(raw, limits, None, "http")
        };
        match r {
            Ok(ev) if refused.total == 0 => ready.push(&ev),
            Ok(_) => {}
            Err(reasons) => {
                if refused.total == 0 {
                    ready = Ready::default();
                }
                refused.add(index, reasons);
            }
        }
    }
    if refused.total == 0 {
        Ok(ready)
    } else {
        Err(refused)
    }
}

/// The ingest message for an event: `whale.in.<type>`, msg id = event id; marked normalized so
/// validate does not decode a string detail (CloudEvents text data) a second time.
pub fn ingest_output(ev: &Envelope) -> Output {
    Output::json(subjects::ingest(&ev.event_type), ev.id.clone(), ev)
        .header(subjects::HDR_EVENT_ID, ev.id.clone())
        .header(HDR_NORMALIZED, "1")
}

/// True when a publish error is JetStream refusing a message because the stream is at its size
/// or count cap (discard new): known not stored, try again later.
pub fn is_stream_full(err: &str) -> bool {
    err.contains("maximum bytes exceeded") || err.contains("maximum messages exceeded")
}

/// What happened to each publish of a batch.
#[derive(Debug, Default)]
pub struct Outcomes {
    pub stored: usize,
    pub duplicates: usize,
    /// Refused by a full stream: known not stored.
    pub full: Vec<usize>,
    /// No confirmation (timeout, connection lost): maybe stored, maybe not.
    pub unknown: Vec<usize>,
}

fn note(o: &mut Outcomes, (i, r): (usize, Result<bool, String>)) {
    match r {
        Ok(true) => o.stored += 1,
        Ok(false) => o.duplicates += 1,
        Err(e) if is_stream_full(&e) => o.full.push(i),
        Err(e) => {
            tracing::warn!("ingest publish not confirmed: {e}");
            o.unknown.push(i);
        }
    }
}

/// Publishes every output and sorts the answers.
pub async fn publish_all(nats: &Nats, outputs: Vec<Output>) -> Outcomes {
    let mut w: Window<usize> = Window::on(nats, 1024).fail_fast_on_disconnect(nats);
    let mut o = Outcomes::default();
    for (i, out) in outputs.into_iter().enumerate() {
        for r in w.send(i, out).await {
            note(&mut o, r);
        }
    }
    for r in w.drain().await {
        note(&mut o, r);
    }
    o.full.sort_unstable();
    o.unknown.sort_unstable();
    o
}

#[derive(Clone)]
struct Ingest {
    nats: Nats,
    cfg: Arc<Config>,
    limiter: Option<Arc<Limiter>>,
    hooks: Arc<Hooks>,
}

/// `POST /v1/events` and `POST /v1/hooks/{name}`; fails when a `[[hooks]]` entry is invalid.
pub fn router(nats: Nats, cfg: Arc<Config>) -> anyhow::Result<Router> {
    let hooks = Arc::new(Hooks::from_config(&cfg)?);
    let limit = cfg.http.max_body_bytes;
    let limiter = Limiter::new(cfg.http.rate_per_source, cfg.http.burst_per_source).map(Arc::new);
    // Requests beyond the permits wait here, before their body is read: memory is bounded by the
    // permits, not by how many clients send at once.
    let permits = Arc::new(Semaphore::new(cfg.http.max_concurrent_ingest.max(1)));
    Ok(Router::new()
        .route("/v1/events", post(post_events))
        .route("/v1/hooks/{name}", post(post_hook))
        .layer(DefaultBodyLimit::max(limit))
        .route_layer(middleware::from_fn(move |req: Request, next: Next| {
            let permits = permits.clone();
            async move {
                let _permit = permits.acquire_owned().await;
                next.run(req).await
            }
        }))
        .with_state(Ingest {
            nats,
            cfg,
            limiter,
            hooks,
        }))
}

async fn post_events(
    State(st): State<Ingest>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(rej) => return body_rejection(rej, st.cfg.http.max_body_bytes),
    };
    let limits = st.cfg.events.limits();
    let keep = st.cfg.http.max_refusals;
    let ready = if headers.contains_key("ce-specversion") {
        binary_mode(&headers, &body, &limits, keep)
    } else {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
            .to_ascii_lowercase();
        let form = if content_type.starts_with("application/x-ndjson")
            || content_type.starts_with("application/jsonl")
        {
            Form::Lines
        } else {
            Form::Auto
        };
        let max_items = st.cfg.http.max_items;
        let spans = match split(&body, form, max_items) {
            Ok(s) => s,
            Err(SplitError::TooMany { limit }) => {
                return body_refused(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the body holds more than {limit} events (http.max_items): send at most {limit} per request"),
                )
            }
            Err(SplitError::Malformed { offset, message }) => {
                return body_refused(
                    StatusCode::BAD_REQUEST,
                    format!("malformed JSON at byte {offset} of the body: {message}"),
                )
            }
        };
        if spans.is_empty() {
            return body_refused(StatusCode::BAD_REQUEST, "the body holds no events");
        }
        prepare(&body, &spans, &limits, keep)
    };
    drop(body);
    let mut ready = match ready {
        Ok(r) => r,
        Err(refused) => return refused.answer(),
    };
    let _span = with_trace_context(&headers, &mut ready);
    publish_ready(&st, ready, json!({})).await
}

/// The caller's W3C `traceparent` (when valid) on every event of the request, under an ingest
/// span (ended when the returned value drops), so the caller's trace goes on through the
/// pipeline; without one, validate starts a trace per event.
fn with_trace_context(headers: &HeaderMap, ready: &mut Ready) -> whale_kernel::tracectx::Span {
    let Some(caller) = headers
        .get(subjects::HDR_TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .filter(|v| whale_kernel::tracectx::valid(v))
    else {
        return whale_kernel::tracectx::Span::none();
    };
    let (span, tp) = whale_kernel::tracectx::ingest(caller, "POST /v1/events", ready.outputs.len());
    for out in &mut ready.outputs {
        out.headers.push((subjects::HDR_TRACEPARENT, tp.clone()));
    }
    span
}

/// Rate limit, publish and answer for events ready to go (`extra` is merged into the 202
/// answer).
async fn publish_ready(st: &Ingest, ready: Ready, extra: serde_json::Value) -> Response {
    if let Some(limiter) = &st.limiter {
        let mut wanted: BTreeMap<&str, usize> = BTreeMap::new();
        for s in &ready.sources {
            *wanted.entry(s.as_str()).or_default() += 1;
        }
        if let Err(over) = limiter.take(&wanted, Instant::now()) {
            let secs = over.retry_after.as_secs().max(1);
            return with_retry_after(
                error(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "source {:?} is over its rate of {} events/s (bursts of {}; http.rate_per_source): nothing was accepted, send again after {secs} s",
                        over.source, st.cfg.http.rate_per_source, limiter.burst()
                    ),
                    json!({ "source": over.source }),
                ),
                secs,
            );
        }
    }
    if !st.nats.is_connected() {
        return with_retry_after(
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "NATS is unreachable: nothing was sent and nothing stored; send the events again later",
                json!({ "status": "not stored" }),
            ),
            UNAVAILABLE_RETRY_AFTER_SECS,
        );
    }
    let Ready { ids, outputs, .. } = ready;
    let n = ids.len();
    let o = publish_all(&st.nats, outputs).await;
    let pick = |idx: &[usize]| idx.iter().map(|i| ids[*i].as_str()).collect::<Vec<_>>();
    let window = st.cfg.nats.duplicate_window.as_secs();
    if !o.unknown.is_empty() {
        return with_retry_after(
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "storage unknown for {} of {n} events: NATS did not confirm them, they may be stored later or never. Send them again with these ids (set \"id\" on each event) within {window} s (nats.duplicate_window): an id is stored once, so resending cannot create a second event",
                    o.unknown.len()
                ),
                json!({
                    "status": "storage unknown",
                    "stored": o.stored,
                    "duplicates": o.duplicates,
                    "ids": ids,
                    "unknown_ids": pick(&o.unknown),
                    "not_stored_ids": pick(&o.full),
                }),
            ),
            UNAVAILABLE_RETRY_AFTER_SECS,
        );
    }
    if !o.full.is_empty() {
        return with_retry_after(
            error(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "{} of {n} events were not stored: stream {} is full (nats.ingest_max_bytes); send them again with these ids after {FULL_RETRY_AFTER_SECS} s (the others are stored and a resend of them is deduplicated)",
                    o.full.len(),
                    subjects::STREAM_INGEST
                ),
                json!({
                    "status": "not stored",
                    "stored": o.stored,
                    "duplicates": o.duplicates,
                    "ids": ids,
                    "not_stored_ids": pick(&o.full),
                }),
            ),
            FULL_RETRY_AFTER_SECS,
        );
    }
    let mut answer = json!({ "accepted": n, "duplicates": o.duplicates, "ids": ids });
    if let (Some(a), serde_json::Value::Object(x)) = (answer.as_object_mut(), extra) {
        a.extend(x);
    }
    (StatusCode::ACCEPTED, Json(answer)).into_response()
}

/// `POST /v1/hooks/{name}`: the hook's adapter turns the body into envelopes (all or nothing),
/// which then go the way of `POST /v1/events`.
async fn post_hook(
    State(st): State<Ingest>,
    Path(name): Path<String>,
    who: Option<axum::Extension<Principal>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Some(hook) = st.hooks.get(&name) else {
        return error(
            StatusCode::NOT_FOUND,
            format!(
                "no hook named {name:?}: whale has {} (add others as [[hooks]] in whale.toml, see docs/sources.md)",
                st.hooks.names().join(", ")
            ),
            json!({ "hooks": st.hooks.names() }),
        );
    };
    let principal = auth::principal(who);
    let who = principal.role.map(|_| principal.name.as_str());
    if !hook.allows(who) {
        return error(
            StatusCode::FORBIDDEN,
            format!(
                "token {:?} may not post to hook {name:?}: it takes tokens {:?} (tokens in its [[hooks]] entry)",
                principal.name, hook.tokens
            ),
            json!({ "hook": name }),
        );
    }
    let body = match body {
        Ok(b) => b,
        Err(rej) => return body_rejection(rej, st.cfg.http.max_body_bytes),
    };
    let limits = st.cfg.events.limits();
    let hooks = st.hooks.clone();
    let converted = tokio::task::spawn_blocking(move || {
        hooks
            .get(&name)
            .map(|h| h.convert(&body, &limits, time::OffsetDateTime::now_utc()))
    })
    .await;
    let events = match converted {
        Ok(Some(Ok(evs))) => evs,
        Ok(Some(Err(e))) => {
            whale_kernel::metrics::STAGE_EVENTS
                .with_label_values(&["ingest", "hook_refused"])
                .inc();
            return error(
                e.status,
                e.message.clone(),
                json!({ "hook": hook.name, "reasons": e.reasons }),
            );
        }
        Ok(None) | Err(_) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "hook {:?} failed on this body; nothing was accepted",
                    hook.name
                ),
                json!({ "hook": hook.name }),
            )
        }
    };
    whale_kernel::metrics::STAGE_EVENTS
        .with_label_values(&["ingest", "hook_events"])
        .inc_by(events.len() as u64);
    if events.is_empty() {
        return (
            StatusCode::OK,
            Json(json!({ "accepted": 0, "duplicates": 0, "ids": [], "hook": hook.name })),
        )
            .into_response();
    }
    let mut ready = Ready::default();
    for ev in &events {
        ready.push(ev);
    }
    drop(events);
    publish_ready(&st, ready, json!({ "hook": hook.name })).await
}

/// CloudEvents binary mode: attributes in `ce-*` headers, the body is the data.
fn binary_mode(
    headers: &HeaderMap,
    body: &[u8],
    limits: &Limits,
    keep: usize,
) -> Result<Ready, Refusals> {
    let mut refused = Refusals::new(keep);
    if body.len() > limits.max_bytes {
        refused.too_large = true;
        refused.add(0, too_large(body.len(), limits));
        return Err(refused);
    }
    let hs = headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)));
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let r = envelope::cloudevent_from_binary(hs, ct, body, limits)
        .map_err(|r| vec![r])
        .and_then(|v| {
            envelope::normalize_with(
                v,
                &Defaults::fresh(None, "http"),
                limits,
                StringDetail::Decode,
            )
        });
    match r {
        Ok(ev) => {
            let mut ready = Ready::default();
            ready.push(&ev);
            Ok(ready)
        }
        Err(reasons) => {
            refused.add(0, reasons);
            Err(refused)
        }
    }
}

#[cfg(test)]
mod tests;

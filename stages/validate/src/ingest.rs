//! Ingest: getting events onto `whale.in.<event_type>` from HTTP (`POST /v1/events`: one event,
//! a JSON array, NDJSON, CloudEvents structured and binary mode) and from `whale publish`. Both
//! normalize through the kernel's envelope first, so a bad event is refused to its sender with
//! reasons instead of travelling; ids are assigned here so the ingest publish is deduplicated.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{json, Value};
use whale_kernel::envelope::{self, Defaults, Limits, Reason};
use whale_kernel::http::{check_bearer, error};
use whale_kernel::{subjects, Config, Envelope, Nats, Output, PublishStats, Window};

/// One event of a request body, with its raw size.
struct Raw {
    value: Result<Value, Reason>,
    bytes: usize,
}

/// Per-event refusal in a 400/413 answer.
#[derive(Debug, Serialize)]
pub struct Refused {
    pub index: usize,
    pub reasons: Vec<Reason>,
}

/// Normalizes a list of parsed events; all or nothing.
pub fn normalize_all(
    values: Vec<(Result<Value, Reason>, usize)>,
    limits: &Limits,
    event_type: Option<&str>,
    source: &str,
) -> Result<Vec<Envelope>, (StatusCode, Vec<Refused>)> {
    let mut ok = Vec::with_capacity(values.len());
    let mut refused = Vec::new();
    let mut too_large = false;
    for (index, (v, bytes)) in values.into_iter().enumerate() {
        if bytes > limits.max_bytes {
            too_large = true;
            refused.push(Refused {
                index,
                reasons: vec![Reason::new(
                    "",
                    format!(
                        "event is {bytes} bytes; the limit is {} bytes",
                        limits.max_bytes
                    ),
                )],
            });
            continue;
        }
        let r = v.map_err(|r| vec![r]).and_then(|v| {
            if envelope::depth(&v) > limits.max_depth {
                return Err(vec![Reason::new(
                    "",
                    format!("event nests deeper than {} levels", limits.max_depth),
                )]);
            }
            envelope::normalize(v, &Defaults::fresh(event_type, source))
        });
        match r {
            Ok(e) => ok.push(e),
            Err(reasons) => refused.push(Refused { index, reasons }),
        }
    }
    if refused.is_empty() {
        Ok(ok)
    } else if too_large {
        Err((StatusCode::PAYLOAD_TOO_LARGE, refused))
    } else {
        Err((StatusCode::BAD_REQUEST, refused))
    }
}

/// The ingest message for an event: `whale.in.<type>`, msg id = event id.
pub fn ingest_output(ev: &Envelope) -> Output {
    Output::json(subjects::ingest(&ev.event_type), ev.id.clone(), ev)
        .header(subjects::HDR_EVENT_ID, ev.id.clone())
}

/// Publishes events through a window; returns counts (duplicates = ids already ingested).
pub async fn publish_all(nats: &Nats, events: &[Envelope]) -> PublishStats {
    let mut w: Window<()> = Window::new(nats.js.clone(), 1024);
    for ev in events {
        w.send((), ingest_output(ev)).await;
    }
    w.drain().await;
    w.stats
}

#[derive(Clone)]
struct Ingest {
    nats: Nats,
    cfg: Arc<Config>,
}

/// `POST /v1/events`.
pub fn router(nats: Nats, cfg: Arc<Config>) -> Router {
    let limit = cfg.http.max_body_bytes;
    Router::new()
        .route("/v1/events", post(post_events))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(Ingest { nats, cfg })
}

async fn post_events(State(st): State<Ingest>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = check_bearer(&headers, st.cfg.http.token.as_ref()) {
        return r;
    }
    let limits = st.cfg.events.limits();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_ascii_lowercase();
    let raws = match split_body(&headers, &content_type, &body, &limits) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    if raws.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "the body holds no events",
            json!({}),
        );
    }
    let values = raws.into_iter().map(|r| (r.value, r.bytes)).collect();
    let events = match normalize_all(values, &limits, None, "http") {
        Ok(e) => e,
        Err((code, refused)) => {
            return error(
                code,
                format!("{} event(s) refused; nothing was accepted", refused.len()),
                json!({ "refused": refused }),
            );
        }
    };
    let stats = publish_all(&st.nats, &events).await;
    if stats.failed > 0 {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{} of {} events could not be stored (NATS unavailable); send them again — ids make it safe", stats.failed, events.len()),
            json!({ "ids": events.iter().map(|e| &e.id).collect::<Vec<_>>() }),
        );
    }
    let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    (
        StatusCode::ACCEPTED,
        Json(json!({ "accepted": ids.len(), "duplicates": stats.duplicates, "ids": ids })),
    )
        .into_response()
}

/// Splits a request body into events according to its form (the error is the 400 to send).
#[allow(clippy::result_large_err)]
fn split_body(
    headers: &HeaderMap,
    content_type: &str,
    body: &[u8],
    limits: &Limits,
) -> Result<Vec<Raw>, Response> {
    let whole = |value| {
        vec![Raw {
            value,
            bytes: body.len(),
        }]
    };
    // CloudEvents binary mode: attributes in ce-* headers, the body is the data.
    if headers.contains_key("ce-specversion") {
        let hs = headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)));
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        return Ok(whole(envelope::cloudevent_from_binary(
            hs, ct, body, limits,
        )));
    }
    if content_type.starts_with("application/x-ndjson")
        || content_type.starts_with("application/jsonl")
    {
        return Ok(ndjson(body, limits));
    }
    if body.len() > limits.max_bytes && !content_type.contains("batch") {
        // Could be an array of small events: only refuse outright what is one object.
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'[') {
            return Ok(whole(Ok(Value::Null)));
        }
    }
    let parse_limits = Limits {
        max_bytes: usize::MAX,
        ..*limits
    };
    match envelope::parse_bytes(body, &parse_limits) {
        Ok(Value::Array(items)) => Ok(items
            .into_iter()
            .map(|v| {
                let bytes = serde_json::to_vec(&v).map(|b| b.len()).unwrap_or(0);
                Raw {
                    value: Ok(v),
                    bytes,
                }
            })
            .collect()),
        Ok(v) => Ok(whole(Ok(v))),
        // Several JSON documents, one per line, without the NDJSON content type.
        Err(_) if body.contains(&b'\n') && ndjson(body, limits).iter().all(|r| r.value.is_ok()) => {
            Ok(ndjson(body, limits))
        }
        Err(r) => Err(error(StatusCode::BAD_REQUEST, r.message, json!({}))),
    }
}

fn ndjson(body: &[u8], limits: &Limits) -> Vec<Raw> {
    let parse_limits = Limits {
        max_bytes: usize::MAX,
        ..*limits
    };
    body.split(|b| *b == b'\n')
        .filter(|l| l.iter().any(|b| !b.is_ascii_whitespace()))
        .map(|l| Raw {
            value: envelope::parse_bytes(l, &parse_limits),
            bytes: l.len(),
        })
        .collect()
}

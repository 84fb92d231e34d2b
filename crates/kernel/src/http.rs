//! The HTTP server every `whale run` process serves: `/metrics`, `/healthz`, `/readyz`, plus the
//! routes of the stages it runs (ingest, approvals, ...). Errors become JSON responses here, at
//! the boundary; internals are logged, not leaked.

use std::net::SocketAddr;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::sync::watch;

use crate::config::Secret;
use crate::health::Health;
use crate::nats::Nats;

#[derive(Clone)]
struct Base {
    health: Health,
    nats: Option<Nats>,
}

/// `/metrics`, `/healthz`, `/readyz`.
pub fn base_router(health: Health, nats: Option<Nats>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .with_state(Base { health, nats })
}

async fn metrics() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(),
    )
        .into_response()
}

async fn readyz(State(b): State<Base>) -> Response {
    let nats_ok = b
        .nats
        .as_ref()
        .is_none_or(|n| n.client.connection_state() == async_nats::connection::State::Connected);
    let ready = nats_ok && b.health.ready();
    let body = json!({
        "ready": ready,
        "nats": if nats_ok { "connected" } else { "disconnected" },
        "stages": b.health.snapshot(),
    });
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// A JSON error response `{"error": msg, ...extra}`.
pub fn error(code: StatusCode, msg: impl Into<String>, extra: serde_json::Value) -> Response {
    let mut body = json!({ "error": msg.into() });
    if let (Some(b), serde_json::Value::Object(extra)) = (body.as_object_mut(), extra) {
        b.extend(extra);
    }
    (code, Json(body)).into_response()
}

/// The answer for a request body refused as a whole (too large, too many events, not JSON): the
/// same shape as per-event refusals, one refusal without an index whose pointer is the whole
/// body: `{"error", "refused": [{"reasons": [{"pointer": "", "message"}]}], "refused_total": 1}`.
pub fn body_refused(code: StatusCode, msg: impl Into<String>) -> Response {
    let msg = msg.into();
    error(
        code,
        msg.clone(),
        json!({
            "refused": [{ "reasons": [{ "pointer": "", "message": msg }] }],
            "refused_total": 1,
        }),
    )
}

/// The JSON answer for a body the server would not read (over `http.max_body_bytes`: 413;
/// broken transfer: 400), instead of axum's plain-text one.
pub fn body_rejection(rej: axum::extract::rejection::BytesRejection, limit: usize) -> Response {
    let code = rej.status();
    if code == StatusCode::PAYLOAD_TOO_LARGE {
        body_refused(
            code,
            format!("the request body is larger than {limit} bytes (http.max_body_bytes): send fewer events per request"),
        )
    } else {
        body_refused(
            code,
            format!("cannot read the request body: {}", rej.body_text()),
        )
    }
}

/// Adds `Retry-After: <secs>` (429 and 503 answers).
pub fn with_retry_after(mut resp: Response, secs: u64) -> Response {
    if let Ok(v) = header::HeaderValue::from_str(&secs.max(1).to_string()) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

/// Checks `Authorization: Bearer <token>` when a token is configured. The error is the response
/// to send, as axum handlers return them.
#[allow(clippy::result_large_err)]
pub fn check_bearer(headers: &HeaderMap, token: Option<&Secret>) -> Result<(), Response> {
    let Some(token) = token else { return Ok(()) };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if constant_time_eq(g.as_bytes(), token.expose().as_bytes()) => Ok(()),
        _ => Err(error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token: send `Authorization: Bearer <WHALE_HTTP_TOKEN>`",
            json!({}),
        )),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Serves `router` on `addr` until `shutdown` turns true. Returns the bound address at once
/// (port 0 picks a free one) and the serving task.
pub async fn serve(
    addr: &str,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} (WHALE_HTTP_ADDR): is another process using it?")
    })?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let stop = async move {
            let _ = shutdown.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!("http server: {e}");
        }
    });
    Ok((local, task))
}

//! The HTTP server every `whale run` process serves: `/metrics`, `/healthz`, `/readyz`, plus the
//! routes of the stages it runs (ingest, approvals, ...). Errors become JSON responses here, at
//! the boundary; internals are logged, not leaked. [`harden`] wraps every route: a panicking
//! handler answers a JSON 500 (and is counted) instead of dropping the connection, and a request
//! slower than `http.request_timeout` answers a JSON 503.

use std::any::Any;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Json;
/// The router type every stage's HTTP routes come in (merged by `whale run`).
pub use axum::Router;
use serde_json::json;
use tokio::sync::watch;

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
    let (dependencies, deps_ok) = b.health.check_dependencies().await;
    let ready = nats_ok && deps_ok && b.health.ready();
    let body = json!({
        "ready": ready,
        "nats": if nats_ok { "connected" } else { "disconnected" },
        "dependencies": dependencies,
        "stages": b.health.snapshot(),
    });
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// Wraps every route of `router` (call it last, after every merge): panics in a handler become a
/// JSON 500 counted in `whale_panics_total{where="http"}`, and a request that takes longer than
/// `timeout` is stopped and answered with a JSON 503.
pub fn harden(router: Router, timeout: Duration) -> Router {
    router
        .layer(axum::middleware::from_fn_with_state(timeout, time_limit))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
}

async fn time_limit(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => {
            tracing::warn!(
                path,
                "request stopped after {limit:?} (http.request_timeout)"
            );
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the request took longer than {}s (http.request_timeout) and was stopped: \
                     try again later or ask for less",
                    limit.as_secs_f64()
                ),
                json!({ "limit": "http.request_timeout", "limit_seconds": limit.as_secs_f64() }),
            )
        }
    }
}

fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    crate::metrics::PANICS
        .with_label_values(&["http", ""])
        .inc();
    tracing::error!(
        "panic while handling a request: {}",
        crate::worker::panic_message(&*panic)
    );
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal error while handling the request (a bug in whale; it is logged and counted in \
         whale_panics_total): try again, and report it if it persists",
        json!({}),
    )
}

/// The media type of a request (`Content-Type` without parameters, lower case; empty when
/// absent): what the auth layer and the handlers compare, so they never disagree on a body's type.
pub fn media_type(headers: &axum::http::HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
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

/// Reads the JSON body of an operator API call (approvals, executions) within `[api]`
/// `max_body_bytes` and `max_depth`: never more than the limit is read, and the answer names
/// the limit (413 too large, 400 not JSON or too deep). An empty body is `None`.
#[allow(clippy::result_large_err)]
pub async fn json_body(
    body: axum::body::Body,
    limits: &crate::config::ApiConfig,
) -> Result<Option<serde_json::Value>, Response> {
    let max = limits.max_body_bytes;
    let bytes = axum::body::to_bytes(body, max).await.map_err(|_| {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is over {max} bytes, the limit of this API (api.max_body_bytes)"),
            json!({"limit": "api.max_body_bytes", "max": max}),
        )
    })?;
    if bytes.is_empty() {
        return Ok(None);
    }
    let too_deep = || {
        error(
            StatusCode::BAD_REQUEST,
            format!(
                "the body nests deeper than {} levels, the limit of this API (api.max_depth)",
                limits.max_depth
            ),
            json!({"limit": "api.max_depth", "max": limits.max_depth}),
        )
    };
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
        if e.to_string().contains("recursion limit") {
            too_deep()
        } else {
            error(
                StatusCode::BAD_REQUEST,
                format!("the body is not JSON: {e}"),
                json!({}),
            )
        }
    })?;
    if crate::envelope::depth(&value) > limits.max_depth {
        return Err(too_deep());
    }
    Ok(Some(value))
}

/// Serves `router` on `addr` until `shutdown` turns true. Returns the bound address at once
/// (port 0 picks a free one) and the serving task.
pub async fn serve(
    addr: &str,
    router: Router,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} (WHALE_HTTP_ADDR): is another process using it?")
    })?;
    let local = listener.local_addr()?;
    Ok((local, spawn_server(listener, router, shutdown, "http")))
}

/// Serves `router` on `listener` until `shutdown` turns true, with the peer address as connect
/// info: the auth layer resolves the client (trusted proxies) from it and audit records keep it
/// as "from" (`crate::audit::Caller`). Plain TCP here, TLS in [`crate::tls::serve`].
pub(crate) fn spawn_server<L>(
    listener: L,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
    what: &'static str,
) -> tokio::task::JoinHandle<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
    for<'a> crate::auth::Peer:
        axum::extract::connect_info::Connected<axum::serve::IncomingStream<'a, L>>,
{
    tokio::spawn(async move {
        let stop = async move {
            let _ = shutdown.wait_for(|s| *s).await;
        };
        let app = router.into_make_service_with_connect_info::<crate::auth::Peer>();
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!("{what} server: {e}");
        }
    })
}

impl
    axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>>
    for crate::auth::Peer
{
    fn connect_info(s: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        crate::auth::Peer(*s.remote_addr())
    }
}

//! `/v1/executions`: task management over HTTP, the same calls as `whale exec`.
//!
//! - `GET /v1/executions?rule=R&status=S` → whale's records, newest first
//! - `GET /v1/executions/{id}` → `{record, execution}` (StackStorm's current view)
//! - `GET /v1/executions/{id}/logs` → the execution's output, `text/plain`
//! - `POST /v1/executions/{id}/{retry|pause|resume|cancel}` → `{record, execution}`; `retry`
//!   takes an optional JSON body `{"parameters": {...}}` merged over the original ones
//!
//! `id` is a whale task id or a StackStorm execution id. StackStorm's refusals answer with its
//! status (4xx) and `faultstring`. Access is checked by the auth layer (`whale_kernel::auth`):
//! reads need `viewer`, actions `operator`; every action is an audit record with the caller's
//! principal as who (`whale_kernel::audit`: 503 and nothing done while the trail cannot take one).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use whale_kernel::audit::{self, Caller};
use whale_kernel::http::{error, json_body};
use whale_kernel::{Config, Nats};

use crate::manage::{Action, Error, Manager};

#[derive(Clone)]
struct St {
    manager: Manager,
    cfg: Arc<Config>,
}

/// The router, merged into whale's HTTP server by `whale run`.
pub async fn router(nats: &Nats, cfg: Arc<Config>) -> anyhow::Result<Router> {
    let manager = Manager::new(nats, &cfg).await?;
    Ok(Router::new()
        .route("/v1/executions", get(list))
        .route("/v1/executions/{id}", get(one))
        .route("/v1/executions/{id}/logs", get(logs))
        .route("/v1/executions/{id}/{action}", post(act))
        .with_state(St { manager, cfg }))
}

#[derive(Deserialize)]
struct ListQuery {
    rule: Option<String>,
    status: Option<String>,
}

fn fail(e: Error) -> Response {
    let code = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_GATEWAY);
    match &e {
        Error::AuditUnavailable(u) => return audit::unavailable_response(u),
        Error::AuditMissing { found, err } => {
            return audit::missing_response(
                "the execution action",
                &anyhow::anyhow!(err.clone()),
                serde_json::to_value(found).unwrap_or_default(),
            )
        }
        _ => {}
    }
    if let Error::Internal(err) = &e {
        if whale_kernel::kv::is_unavailable(err) {
            tracing::warn!("executions API: NATS unavailable: {err:#}");
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "executions are unavailable: whale cannot reach NATS; nothing was changed, try again shortly",
                json!({}),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
            return r;
        }
        tracing::error!("executions API: {err:#}");
        return error(code, "internal error (see whale's log)", json!({}));
    }
    let extra = match e.faultstring() {
        Some(f) => json!({ "faultstring": f }),
        None => json!({}),
    };
    error(code, e.to_string(), extra)
}

async fn list(State(st): State<St>, Query(q): Query<ListQuery>) -> Response {
    match st
        .manager
        .list(q.rule.as_deref(), q.status.as_deref())
        .await
    {
        Ok(v) => Json(v).into_response(),
        Err(e) => fail(e),
    }
}

async fn one(State(st): State<St>, Path(id): Path<String>) -> Response {
    match st.manager.get(&id).await {
        Ok(f) => Json(f).into_response(),
        Err(e) => fail(e),
    }
}

async fn logs(State(st): State<St>, Path(id): Path<String>) -> Response {
    match st.manager.logs(&id).await {
        Ok((_, text)) => {
            ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
        }
        Err(e) => fail(e),
    }
}

async fn act(
    State(st): State<St>,
    Caller(who): Caller,
    Path((id, action)): Path<(String, String)>,
    body: Body,
) -> Response {
    let Some(action) = Action::parse(&action) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("unknown action {action:?}: use retry, pause, resume or cancel"),
            json!({}),
        );
    };
    let params = match json_body(body, &st.cfg.api).await {
        Ok(v) => v
            .and_then(|v| v.get("parameters").cloned())
            .unwrap_or(Value::Null),
        Err(r) => return r,
    };
    // Admin (and a server with no auth configured) may act on any execution; others only on
    // executions whale created.
    let any = who.role.as_deref().is_none_or(|r| r == "admin");
    match st.manager.act(&id, action, params, &who, any).await {
        Ok(f) => Json(f).into_response(),
        Err(e) => fail(e),
    }
}

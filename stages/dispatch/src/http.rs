//! `/v1/dead-letters`: the same calls as `whale dead-letters`, served by `whale run` with the
//! dispatch stage, under the same roles as execution actions (reads `viewer`, retry `operator`;
//! checked by the auth layer, `whale_kernel::auth::POLICIES`); a retry is an audit record with
//! the caller's principal as who (503 and nothing done while the trail cannot take one).
//!
//! - `GET /v1/dead-letters[?all=true]` → entries waiting for an operator (all: with retried and
//!   executed ones)
//! - `GET /v1/dead-letters/{task_id}` → the entry, the dead-letter record and the claim
//! - `POST /v1/dead-letters/{task_id}/retry` → the entry after the retry; 409 when the task was
//!   executed already

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use whale_kernel::audit::{self, Caller};
use whale_kernel::http::{error, json_body};
use whale_kernel::{Config, Nats};

use crate::dead_letters::{DeadLetters, Error};

#[derive(Clone)]
struct St {
    dl: DeadLetters,
    cfg: Arc<Config>,
}

/// The router, merged into whale's HTTP server by `whale run` with the dispatch stage.
pub async fn router(nats: &Nats, cfg: Arc<Config>) -> anyhow::Result<Router> {
    let dl = DeadLetters::new(nats).await?;
    Ok(Router::new()
        .route("/v1/dead-letters", get(list))
        .route("/v1/dead-letters/{id}", get(one))
        .route("/v1/dead-letters/{id}/retry", post(retry))
        .with_state(St { dl, cfg }))
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    all: bool,
}

fn fail(e: Error) -> Response {
    let code = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match &e {
        Error::AuditUnavailable(u) => return audit::unavailable_response(u),
        Error::AuditMissing { entry, err } => {
            return audit::missing_response(
                "the dead-letter retry",
                &anyhow::anyhow!(err.clone()),
                serde_json::to_value(entry).unwrap_or_default(),
            )
        }
        _ => {}
    }
    if let Error::Internal(err) = &e {
        if whale_kernel::kv::is_unavailable(err) {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "dead letters are unavailable: whale cannot reach NATS; nothing was changed, try again shortly",
                json!({}),
            );
        }
        tracing::error!("dead-letters API: {err:#}");
        return error(code, "internal error (see whale's log)", json!({}));
    }
    error(code, e.to_string(), json!({}))
}

async fn list(State(st): State<St>, Query(q): Query<ListQuery>) -> Response {
    match st.dl.list(q.all).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => fail(e),
    }
}

async fn one(State(st): State<St>, Path(id): Path<String>) -> Response {
    match st.dl.show(&id).await {
        Ok(d) => Json(d).into_response(),
        Err(e) => fail(e),
    }
}

async fn retry(
    State(st): State<St>,
    Caller(actor): Caller,
    Path(id): Path<String>,
    body: Body,
) -> Response {
    // No body needed; one that is there must be JSON within the API's limits.
    if let Err(r) = json_body(body, &st.cfg.api).await {
        return r;
    }
    match st.dl.retry(&id, &actor).await {
        Ok(e) => Json(e).into_response(),
        Err(e) => fail(e),
    }
}

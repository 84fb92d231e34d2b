//! Read-only resources the CLI and clients look up: `/` (version), actions, runner types, and
//! traces (how a client finds an execution by trace tag).

use crate::executions::{paging, Q};
use crate::runners::{runner_doc, RUNNERS};
use crate::state::{lock, Emu};
use crate::util::{ApiError, ApiResult};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::sync::Arc;

/// `GET /api/v1/`.
pub async fn info() -> Json<Value> {
    Json(json!({"version": "3.9.0", "docs_url": "https://docs.stackstorm.com/3.9/"}))
}

fn not_found_ref(r: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("Resource with a reference or id \"{r}\" not found"),
    )
}

/// `GET /actions` (optionally `?pack=`).
pub async fn actions(State(emu): State<Arc<Emu>>, Query(q): Q) -> Json<Value> {
    let actions = emu.actions.read().unwrap_or_else(|p| p.into_inner());
    let docs = actions
        .values()
        .filter(|a| q.get("pack").is_none_or(|p| a.pack() == p))
        .map(|a| a.doc())
        .collect();
    Json(Value::Array(docs))
}

/// `GET /actions/{ref_or_id}`.
pub async fn action(State(emu): State<Arc<Emu>>, Path(r): Path<String>) -> ApiResult<Json<Value>> {
    if let Some(a) = emu.action(&r) {
        return Ok(Json(a.doc()));
    }
    let actions = emu.actions.read().unwrap_or_else(|p| p.into_inner());
    actions
        .values()
        .map(|a| a.doc())
        .find(|d| d["id"] == r.as_str())
        .map(Json)
        .ok_or_else(|| not_found_ref(&r))
}

/// `GET /runnertypes?name=`.
pub async fn runnertypes(Query(q): Q) -> Json<Value> {
    let docs = RUNNERS
        .iter()
        .filter(|r| q.get("name").is_none_or(|n| n == *r))
        .filter_map(|r| runner_doc(r))
        .collect();
    Json(Value::Array(docs))
}

/// `GET /runnertypes/{name_or_id}`.
pub async fn runnertype(Path(name): Path<String>) -> ApiResult<Json<Value>> {
    RUNNERS
        .iter()
        .filter_map(|r| runner_doc(r))
        .find(|d| d["name"] == name.as_str() || d["id"] == name.as_str())
        .map(Json)
        .ok_or_else(|| {
            let msg = format!("Unable to identify resource with name_or_id \"{name}\".");
            ApiError::new(StatusCode::NOT_FOUND, msg)
        })
}

/// `GET /traces?trace_tag=&execution=` (newest first unless `sort_asc`), paged.
pub async fn traces(State(emu): State<Arc<Emu>>, Query(q): Q) -> ApiResult<Response> {
    let (limit, offset) = paging(&q)?;
    let store = lock(&emu.store);
    let mut hits: Vec<_> = store
        .traces
        .iter()
        .filter(|t| q.get("trace_tag").is_none_or(|tag| t.tag == *tag))
        .filter(|t| {
            q.get("execution")
                .is_none_or(|e| t.executions.iter().any(|(id, _, _)| id == e))
        })
        .collect();
    let ascending = q
        .get("sort_asc")
        .is_some_and(|v| v == "True" || v == "true");
    hits.sort_by(|a, b| match ascending {
        true => a.start.cmp(&b.start).then(a.id.cmp(&b.id)),
        false => b.start.cmp(&a.start).then(b.id.cmp(&a.id)),
    });
    let total = hits.len();
    let page: Vec<Value> = hits
        .into_iter()
        .skip(offset)
        .take(limit.unwrap_or(usize::MAX))
        .map(|t| t.doc())
        .collect();
    drop(store);
    let mut resp = Json(Value::Array(page)).into_response();
    resp.headers_mut().insert("x-total-count", total.into());
    Ok(resp)
}

/// `GET /traces/{id}`.
pub async fn trace(State(emu): State<Arc<Emu>>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let store = lock(&emu.store);
    store
        .traces
        .iter()
        .find(|t| t.id == id)
        .map(|t| Json(t.doc()))
        .ok_or_else(|| ApiError::not_found_id(&id))
}

//! `/_emulator/...`: test controls that StackStorm does not have, no auth needed.
//!
//! - `GET /_emulator/stats` → `{executions_created, by_action: {ref: n}, by_status: {..}, requests,
//!   open_streams}` (`requests` counts API, auth and stream requests, faulted ones included).
//! - `GET|POST|DELETE /_emulator/faults`: see [`crate::faults`].
//! - `POST /_emulator/actions`: one action (as in the actions file) or a list; adds or replaces.
//! - `POST /_emulator/executions/{id}/finish` `{"status": "failed", "result": {...}}`: force a
//!   terminal status now.
//! - `POST /_emulator/stream/disconnect`: end every open stream (clients must reconnect).

use crate::actions::ActionSpec;
use crate::execution::is_terminal;
use crate::operations::set_direct;
use crate::state::{lock, Emu};
use crate::util::{ApiError, ApiResult};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub fn routes() -> Router<Arc<Emu>> {
    Router::new()
        .route("/_emulator/stats", get(stats))
        .route(
            "/_emulator/faults",
            get(faults).post(add_faults).delete(clear_faults),
        )
        .route("/_emulator/actions", post(add_actions))
        .route("/_emulator/executions/{id}/finish", post(finish))
        .route("/_emulator/stream/disconnect", post(disconnect))
}

async fn stats(State(emu): State<Arc<Emu>>) -> Json<Value> {
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    for ex in lock(&emu.store).execs.values() {
        *by_status.entry(ex.status.clone()).or_default() += 1;
    }
    Json(json!({
        "executions_created": emu.stats.created.load(Ordering::Relaxed),
        "by_action": *lock(&emu.stats.by_action),
        "by_status": by_status,
        "requests": emu.stats.requests.load(Ordering::Relaxed),
        "open_streams": emu.events.receiver_count(),
    }))
}

async fn faults(State(emu): State<Arc<Emu>>) -> Json<Value> {
    Json(emu.faults.describe())
}

async fn add_faults(
    State(emu): State<Arc<Emu>>,
    Json(body): Json<Value>,
) -> ApiResult<Json<Value>> {
    emu.faults.apply(&body).map_err(ApiError::bad_request)?;
    Ok(Json(emu.faults.describe()))
}

async fn clear_faults(State(emu): State<Arc<Emu>>) -> Json<Value> {
    emu.faults.clear();
    Json(emu.faults.describe())
}

async fn add_actions(
    State(emu): State<Arc<Emu>>,
    Json(body): Json<Value>,
) -> ApiResult<Json<Value>> {
    let list = match body {
        Value::Array(a) => a,
        one => vec![one],
    };
    let mut specs = Vec::new();
    for v in list {
        let spec: ActionSpec =
            serde_json::from_value(v).map_err(|e| ApiError::bad_request(e.to_string()))?;
        spec.check()
            .map_err(|e| ApiError::bad_request(format!("{}: {e}", spec.r#ref)))?;
        specs.push(spec);
    }
    let mut actions = emu.actions.write().unwrap_or_else(|p| p.into_inner());
    let refs: Vec<String> = specs.iter().map(|s| s.r#ref.clone()).collect();
    for s in specs {
        actions.insert(s.r#ref.clone(), s);
    }
    Ok(Json(json!({ "actions": refs })))
}

async fn finish(
    State(emu): State<Arc<Emu>>,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> ApiResult<Json<Value>> {
    let status = body
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or("succeeded")
        .to_owned();
    if !is_terminal(&status) {
        return Err(ApiError::bad_request(format!(
            "{status:?} is not a terminal status"
        )));
    }
    emu.with_exec(&id, |ex| {
        if is_terminal(&ex.status) {
            let msg = format!("execution is already {}", ex.status);
            return Err(ApiError::new(StatusCode::CONFLICT, msg));
        }
        let result = body
            .get("result")
            .cloned()
            .or_else(|| Some(ex.outcome_result()));
        set_direct(&emu, ex, &status, result);
        Ok(Json(ex.doc(&emu.cfg.webui_url)))
    })
}

async fn disconnect(State(emu): State<Arc<Emu>>) -> Json<Value> {
    let open = emu.disconnect.receiver_count();
    emu.disconnect.send_modify(|n| *n += 1);
    Json(json!({ "disconnected": open }))
}

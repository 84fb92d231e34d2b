//! What can be done to an existing execution: cancel (with StackStorm's 200 + `faultstring`
//! refusal), pause/resume and direct status updates via PUT, re-run, and reading its output.

use crate::auth::Requester;
use crate::execution::{is_terminal, Exec};
use crate::executions::{object_body, Q};
use crate::state::{lock, CreateReq, Emu};
use crate::util::{ApiError, ApiResult};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use bytes::Bytes;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Instant;

const CANCELABLE: &[&str] = &[
    "requested",
    "scheduled",
    "delayed",
    "running",
    "pausing",
    "paused",
    "resuming",
];

const STATUSES: &[&str] = &[
    "requested",
    "scheduled",
    "delayed",
    "running",
    "succeeded",
    "failed",
    "timeout",
    "abandoned",
    "canceling",
    "canceled",
    "pending",
    "pausing",
    "paused",
    "resuming",
];

/// `request_cancellation`: running (or a workflow child) goes to canceling, the rest to canceled.
fn cancel_exec(emu: &Emu, ex: &mut Exec, user: &str) {
    ex.result = json!({"message": "Action canceled by user.", "user": user});
    ex.context.insert("cancelled_by".into(), json!(user));
    if ex.status == "running" || ex.parent.is_some() {
        ex.clock.stop(Instant::now());
        emu.set_status(ex, "canceling");
    } else {
        emu.set_status(ex, "canceled");
    }
}

/// `DELETE /executions/{id}`.
pub async fn cancel(
    State(emu): State<Arc<Emu>>,
    Extension(Requester(user)): Extension<Requester>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    emu.with_exec(&id, |ex| {
        if ex.status == "canceled" {
            return Ok(Json(ex.doc(&emu.cfg.webui_url)));
        }
        if !CANCELABLE.contains(&ex.status.as_str()) {
            let fault = format!("Action cannot be canceled. State = {}.", ex.status);
            return Ok(Json(json!({ "faultstring": fault })));
        }
        cancel_exec(&emu, ex, &user);
        Ok(Json(ex.doc(&emu.cfg.webui_url)))
    })
}

fn failed_update(msg: String) -> ApiError {
    ApiError::bad_request(format!("Failed updating execution. {msg}"))
}

/// `PUT /executions/{id}` `{"status": ..., "result": ...}`.
pub async fn update(
    State(emu): State<Arc<Emu>>,
    Extension(Requester(user)): Extension<Requester>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let body = object_body(&body)?;
    if let Some(k) = body.keys().find(|k| *k != "status" && *k != "result") {
        return Err(ApiError::bad_request(format!(
            "Additional properties are not allowed ('{k}' was unexpected)"
        )));
    }
    let status = body
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if !STATUSES.contains(&status.as_str()) {
        return Err(ApiError::bad_request(format!(
            "'{status}' is not a valid status"
        )));
    }
    let result = body.get("result").cloned();
    emu.with_exec(&id, |ex| {
        if is_terminal(&ex.status) {
            return Err(ApiError::bad_request("Execution is already in completed state."));
        }
        let lid = ex.liveaction_id.clone();
        let runner = ex.action.runner_type.clone();
        let unsupported = |verb: &str| {
            failed_update(format!(
                "Unable to {verb} liveaction \"{lid}\" because it is not supported by the \"{runner}\" runner."
            ))
        };
        match (ex.status.as_str(), status.as_str()) {
            ("canceling", "canceled") | ("pausing", "paused") => set_direct(&emu, ex, &status, result),
            (_, "canceling" | "canceled") => cancel_exec(&emu, ex, &user),
            (_, "pausing" | "paused") => {
                if !ex.action.is_workflow() {
                    return Err(unsupported("pause"));
                }
                if ex.status != "pausing" && ex.status != "paused" {
                    if ex.status != "running" {
                        return Err(failed_update(format!(
                            "Unable to pause liveaction \"{lid}\" because it is not in a running state."
                        )));
                    }
                    ex.clock.stop(Instant::now());
                    ex.context.insert("paused_by".into(), json!(user));
                    emu.set_status(ex, "pausing");
                }
            }
            (_, "resuming") => {
                if !ex.action.is_workflow() {
                    return Err(unsupported("resume"));
                }
                if ex.status != "running" && ex.status != "resuming" {
                    if ex.status != "paused" {
                        return Err(failed_update(format!(
                            "Unable to resume liveaction \"{lid}\" because it is in \"{}\" state and not in \"paused\" state.",
                            ex.status
                        )));
                    }
                    ex.context.insert("resumed_by".into(), json!(user));
                    emu.set_status(ex, "resuming");
                }
            }
            _ => set_direct(&emu, ex, &status, result),
        }
        Ok(Json(ex.doc(&emu.cfg.webui_url)))
    })
}

/// A plain status (and result) update, as runners and external systems do.
pub fn set_direct(emu: &Emu, ex: &mut Exec, status: &str, result: Option<Value>) {
    if let Some(r) = result {
        ex.result = r;
    }
    if status == "running" && ex.clock.since.is_none() {
        ex.clock.since = Some(Instant::now());
    } else if status != "running" {
        ex.clock.stop(Instant::now());
    }
    emu.set_status(ex, status);
}

/// `POST /executions/{id}/re_run` `{parameters, tasks, reset, user, delay}` → 201.
pub async fn re_run(
    State(emu): State<Arc<Emu>>,
    Extension(Requester(requester)): Extension<Requester>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let body = object_body(&body)?;
    let parameters = match body.get("parameters") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => {
            return Err(ApiError::bad_request(
                "The parameters needs to be a dictionary.",
            ))
        }
    };
    let strings = |k: &str| -> Vec<String> {
        body.get(k)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (tasks, reset) = (strings("tasks"), strings("reset"));
    if (!tasks.is_empty() || !reset.is_empty()) && !parameters.is_empty() {
        return Err(ApiError::bad_request(
            "Parameters override is not supported when re-running task(s) for a workflow.",
        ));
    }
    if reset.iter().any(|r| !tasks.contains(r)) {
        return Err(ApiError::bad_request(
            "List of tasks to reset does not match the tasks to rerun.",
        ));
    }
    let id = emu.resolve_id(&id)?;
    let (action_ref, runner, mut params) = emu.with_exec(&id, |ex| {
        Ok((
            ex.action.r#ref.clone(),
            ex.action.runner_type.clone(),
            ex.params.clone(),
        ))
    })?;
    if !tasks.is_empty() && runner != "orquesta" {
        return Err(ApiError::bad_request(
            "Task option is only supported for Orquesta workflows.",
        ));
    }
    params.extend(parameters);
    let mut rerun = json!({ "ref": id });
    if !tasks.is_empty() {
        rerun["tasks"] = json!(tasks);
    }
    if !reset.is_empty() {
        rerun["reset"] = json!(reset);
    }
    let mut context = Map::new();
    context.insert("re-run".into(), rerun);
    let trace = lock(&emu.store)
        .traces
        .iter()
        .find(|t| t.executions.iter().any(|(e, _, _)| *e == id))
        .map(|t| t.id.clone());
    if let Some(t) = trace {
        context.insert("trace_context".into(), json!({ "id_": t }));
    }
    let user = body
        .get("user")
        .and_then(Value::as_str)
        .map_or(requester, str::to_owned);
    let delay_ms = body.get("delay").and_then(Value::as_u64).unwrap_or(0);
    let req = CreateReq {
        action_ref,
        params,
        context,
        user,
        delay_ms,
    };
    Ok((StatusCode::CREATED, Json(emu.create(req)?)))
}

/// `GET /executions/{id}/output?output_type=all|stdout|stderr`: stored output as text.
pub async fn output(
    State(emu): State<Arc<Emu>>,
    Path(id): Path<String>,
    Query(q): Q,
) -> ApiResult<impl IntoResponse> {
    let kind = q.get("output_type").map(String::as_str).unwrap_or("all");
    let text = emu.with_exec(&id, |ex| {
        Ok(ex
            .output
            .iter()
            .filter(|o| kind == "all" || o["output_type"] == kind)
            .filter_map(|o| o["data"].as_str())
            .collect::<String>())
    })?;
    Ok(([(header::CONTENT_TYPE, "text/plain")], text))
}

/// `GET /executions/{id}/result`: the raw result JSON.
pub async fn result(
    State(emu): State<Arc<Emu>>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let r = emu.with_exec(&id, |ex| Ok(ex.result.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "text/json")], r))
}

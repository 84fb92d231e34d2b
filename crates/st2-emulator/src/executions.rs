//! `/executions`: create, get one, list with StackStorm's filters, sorting and paging.

use crate::auth::Requester;
use crate::execution::Exec;
use crate::state::{lock, CreateReq, Emu};
use crate::util::{parse_ts, project, ApiError, ApiResult};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::Arc;

pub type Q = Query<HashMap<String, String>>;

/// A comma-separated query value as a list (StackStorm's array encoding).
pub fn list_param<'a>(q: &'a HashMap<String, String>, k: &str) -> Vec<&'a str> {
    q.get(k)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// Parses a JSON object body, 400 otherwise.
pub fn object_body(body: &Bytes) -> ApiResult<Map<String, Value>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(ApiError::bad_request(format!(
            "{} is not of type 'object'",
            crate::util::py_repr(&other)
        ))),
        Err(e) => Err(ApiError::bad_request(format!(
            "Failed to parse request body: {e}"
        ))),
    }
}

fn optional_object(body: &Map<String, Value>, key: &str) -> ApiResult<Map<String, Value>> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m.clone()),
        Some(v) => Err(ApiError::bad_request(format!(
            "{} is not of type 'object'",
            crate::util::py_repr(v)
        ))),
    }
}

/// `POST /executions`.
pub async fn create(
    State(emu): State<Arc<Emu>>,
    Extension(Requester(requester)): Extension<Requester>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let body = object_body(&body)?;
    let action_ref = match body.get("action") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err(ApiError::bad_request("'action' is a required property")),
    };
    let params = optional_object(&body, "parameters")?;
    let mut context = optional_object(&body, "context")?;
    if let Some(h) = headers.get("st2-context").and_then(|v| v.to_str().ok()) {
        match serde_json::from_str(h) {
            Ok(Value::Object(extra)) => context.extend(extra),
            _ => {
                return Err(ApiError::bad_request(
                    "Unable to convert st2-context from the headers into JSON.",
                ))
            }
        }
    }
    // RBAC is off in the emulator, so every user is an admin and may run as another user.
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

/// Attributes the server always returns on a single GET (for secret masking).
const MANDATORY: &[&str] = &[
    "action.parameters",
    "action.output_schema",
    "runner.runner_parameters",
    "runner.output_key",
    "parameters",
    "action.pack",
    "action.uid",
    "context",
    "id",
];

const EXCLUDABLE: &[&str] = &["result", "trigger_instance", "status"];

/// Applies include/exclude_attributes to a document.
fn shape(mut doc: Value, q: &HashMap<String, String>, mandatory: &[&str]) -> ApiResult<Value> {
    let include = list_param(q, "include_attributes");
    let exclude = list_param(q, "exclude_attributes");
    if !include.is_empty() && !exclude.is_empty() {
        return Err(ApiError::bad_request(
            "exclude.*_attributes and include.*_attributes arguments are mutually exclusive. \
             You need to provide either one or another, but not both.",
        ));
    }
    if let Some(bad) = exclude.iter().find(|e| !EXCLUDABLE.contains(e)) {
        return Err(ApiError::bad_request(format!(
            "Invalid or unsupported exclude attribute specified: {bad}"
        )));
    }
    if let Some(obj) = doc.as_object_mut() {
        for e in &exclude {
            obj.remove(*e);
        }
    }
    if let Some(max) = q
        .get("max_result_size")
        .and_then(|m| m.parse::<usize>().ok())
    {
        let size = doc.get("result").map_or(0, |r| r.to_string().len());
        if size > max {
            doc.as_object_mut().map(|o| o.remove("result"));
        }
    }
    if include.is_empty() {
        return Ok(doc);
    }
    let mut paths = include;
    paths.extend_from_slice(mandatory);
    Ok(project(&doc, &paths))
}

/// `GET /executions/{id}` (`last` allowed).
pub async fn get_one(
    State(emu): State<Arc<Emu>>,
    Path(id): Path<String>,
    Query(q): Q,
) -> ApiResult<Json<Value>> {
    let doc = emu.with_exec(&id, |ex| Ok(ex.doc(&emu.cfg.webui_url)))?;
    Ok(Json(shape(doc, &q, MANDATORY)?))
}

/// `GET /executions/{id}/children`: workflow children (the emulator's workflows have none).
pub async fn children(
    State(emu): State<Arc<Emu>>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let ids = emu.with_exec(&id, |ex| Ok(ex.children.clone()))?;
    let store = lock(&emu.store);
    let docs = ids
        .iter()
        .filter_map(|c| store.execs.get(c))
        .map(|c| c.doc(&emu.cfg.webui_url))
        .collect();
    Ok(Json(Value::Array(docs)))
}

/// Parses `limit`/`offset` as StackStorm does (RBAC off: everyone is admin, so `-1` and
/// values over 100 are allowed). `None` limit means all.
pub fn paging(q: &HashMap<String, String>) -> ApiResult<(Option<usize>, usize)> {
    let limit = match q.get("limit").map(|l| l.parse::<i64>()) {
        None => Some(100),
        Some(Ok(-1)) => None,
        Some(Ok(0)) => {
            return Err(ApiError::bad_request(
                "Limit, \"0\" specified, must be a positive number or -1 for full result set.",
            ))
        }
        Some(Ok(n)) if n < 0 => {
            return Err(ApiError::bad_request(format!(
                "Limit, \"{n}\" specified, must be a positive number."
            )))
        }
        Some(Ok(n)) => Some(n as usize),
        Some(Err(_)) => return Err(ApiError::bad_request("Limit must be an integer")),
    };
    let offset = q.get("offset").and_then(|o| o.parse().ok()).unwrap_or(0);
    Ok((limit, offset))
}

fn matches(ex: &Exec, q: &HashMap<String, String>) -> bool {
    let eq = |k: &str, v: Option<&str>| q.get(k).is_none_or(|want| Some(want.as_str()) == v);
    let user = ex.context.get("user").and_then(Value::as_str);
    let parent_ok = match q.get("parent").map(String::as_str) {
        None => true,
        Some("null") => ex.parent.is_none(),
        Some(p) => ex.parent.as_deref() == Some(p),
    };
    let ts = |k: &str| q.get(k).map(|v| parse_ts(v));
    let after = ts("timestamp_gt").is_none_or(|t| t.is_some_and(|t| ex.start > t));
    let before = ts("timestamp_lt").is_none_or(|t| t.is_some_and(|t| ex.start < t));
    eq("action", Some(&ex.action.r#ref))
        && eq("status", Some(&ex.status))
        && eq("user", user)
        && eq("runner", Some(&ex.action.runner_type))
        && eq("liveaction", Some(&ex.liveaction_id))
        && eq("rule", None)
        && eq("trigger_instance", None)
        && parent_ok
        && after
        && before
}

/// `GET /executions`: filters are exact matches; newest first unless `sort_asc`/`timestamp_gt`.
pub async fn list(State(emu): State<Arc<Emu>>, Query(q): Q) -> ApiResult<Response> {
    let (limit, offset) = paging(&q)?;
    let truthy = |k: &str| q.contains_key(k);
    let ascending = !(truthy("timestamp_lt") || truthy("sort_desc"))
        && (truthy("timestamp_gt") || truthy("sort_asc"));
    let store = lock(&emu.store);
    let mut hits: Vec<&Exec> = store
        .order
        .iter()
        .filter_map(|id| store.execs.get(id))
        .filter(|ex| matches(ex, &q))
        .collect();
    hits.sort_by(|a, b| {
        let by_time = if ascending {
            a.start.cmp(&b.start)
        } else {
            b.start.cmp(&a.start)
        };
        by_time.then_with(|| a.action.r#ref.cmp(&b.action.r#ref))
    });
    let total = hits.len();
    let page: Vec<Value> = hits
        .into_iter()
        .skip(offset)
        .take(limit.unwrap_or(usize::MAX))
        .map(|ex| shape(ex.doc(&emu.cfg.webui_url), &q, &["id"]))
        .collect::<ApiResult<_>>()?;
    drop(store);
    let mut resp = Json(Value::Array(page)).into_response();
    let h = resp.headers_mut();
    h.insert("x-total-count", total.into());
    if let Some(l) = limit {
        h.insert("x-limit", l.into());
    }
    Ok(resp)
}

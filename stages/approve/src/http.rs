//! `/v1/approvals`: the links people click in chat, and the API behind `whale approvals`.
//!
//! - `GET /v1/approvals[?state=pending|approved|denied|expired]` → approvals, pending first
//! - `GET /v1/approvals/{id}` → one approval
//! - `GET|POST /v1/approvals/{id}/{approve|deny}?exp=..&sig=..` → a signed link: decides and
//!   answers a small HTML page (no bearer token: the signature is the credential). Refusals:
//!   403 bad signature (tampered), 410 link expired or approval timed out, 409 already decided
//!   (a reused link), 404 unknown, 503 links disabled (no `WHALE_APPROVAL_SECRET`)
//! - `POST /v1/approvals/{id}/{approve|deny}` with JSON `{"reason": .., "by": ..}` (optional) →
//!   decides as an API client; `POST /v1/approvals` with `{"id", "decision": "approve"|"deny",
//!   "reason"}` does the same. These need the `operator` role (auth layer, `whale_kernel::auth`);
//!   the decision records the caller's principal as `by` (a `by` in the body is ignored).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use time::OffsetDateTime;
use whale_kernel::auth::{principal, Principal};
use whale_kernel::http::{error, json_body};
use whale_kernel::{Config, Nats};

use crate::link::{self, LinkError};
use crate::store::{self, DecideError, Verdict};
use crate::Links;

#[derive(Clone)]
struct St {
    nats: Nats,
    kv: store::Approvals,
    cfg: Arc<Config>,
    links: Links,
}

/// The router, merged into whale's HTTP server by `whale run`.
pub async fn router(nats: &Nats, cfg: Arc<Config>) -> anyhow::Result<axum::Router> {
    let kv = store::bucket(nats, &cfg).await?;
    let links = Links::from_config(&cfg);
    Ok(Router::new()
        .route("/v1/approvals", get(list).post(post_decision))
        .route("/v1/approvals/{id}", get(one))
        .route("/v1/approvals/{id}/{action}", get(by_link).post(by_post))
        .with_state(St {
            nats: nats.clone(),
            kv,
            cfg,
            links,
        }))
}

#[derive(Deserialize)]
struct ListQuery {
    state: Option<String>,
}

async fn list(State(st): State<St>, Query(q): Query<ListQuery>) -> Response {
    match store::list(&st.kv).await {
        Ok(all) => Json(
            all.into_iter()
                .filter(|a| q.state.as_ref().is_none_or(|s| &a.state == s))
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) => internal(e),
    }
}

async fn one(State(st): State<St>, Path(id): Path<String>) -> Response {
    match store::read(&st.kv, &id).await {
        Ok(Some((a, _))) => Json(a).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            DecideError::NotFound(id).to_string(),
            json!({}),
        ),
        Err(e) => internal(e),
    }
}

#[derive(Deserialize)]
struct LinkQuery {
    exp: Option<i64>,
    sig: Option<String>,
}

/// Who clicked: the channel's link. Identity headers (`X-Forwarded-User`, `Remote-User`) are
/// not trusted: any client can send them.
fn clicker(_headers: &HeaderMap, channel: Option<&str>) -> String {
    format!("link via {}", channel.unwrap_or("chat"))
}

async fn by_link(
    State(st): State<St>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    Query(q): Query<LinkQuery>,
) -> Response {
    let (code, msg) = link_decision(&st, &headers, &id, &action, &q).await;
    let title = if code.is_success() {
        "Done"
    } else {
        "Not done"
    };
    let page = format!(
        "<!doctype html><meta charset=utf-8><title>whale: {title}</title><body style=\"font-family:sans-serif;max-width:40em;margin:3em auto\"><h2>{title}</h2><p>{}</p></body>",
        escape(&msg)
    );
    (code, Html(page)).into_response()
}

async fn by_post(
    State(st): State<St>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    Query(q): Query<LinkQuery>,
    who: Option<Extension<Principal>>,
    body: Body,
) -> Response {
    if q.sig.is_some() {
        let (code, msg) = link_decision(&st, &headers, &id, &action, &q).await;
        let key = if code.is_success() {
            "message"
        } else {
            "error"
        };
        let mut body = serde_json::Map::new();
        body.insert(key.into(), Value::String(msg));
        return (code, Json(Value::Object(body))).into_response();
    }
    let body = match json_body(body, &st.cfg.api).await {
        Ok(v) => v.unwrap_or_else(|| json!({})),
        Err(r) => return r,
    };
    api_decision(&st, &principal(who), &id, &action, &body).await
}

async fn post_decision(
    State(st): State<St>,
    who: Option<Extension<Principal>>,
    body: Body,
) -> Response {
    let body = match json_body(body, &st.cfg.api).await {
        Ok(v) => v.unwrap_or(Value::Null),
        Err(r) => return r,
    };
    let (Some(id), Some(decision)) = (body["id"].as_str(), body["decision"].as_str()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "send {\"id\": TASK_ID, \"decision\": \"approve\"|\"deny\", \"reason\": ...}",
            json!({}),
        );
    };
    api_decision(&st, &principal(who), id, decision, &body).await
}

async fn api_decision(st: &St, who: &Principal, id: &str, action: &str, body: &Value) -> Response {
    let Some(verdict) = Verdict::parse(action) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("unknown decision {action:?}: use approve or deny"),
            json!({}),
        );
    };
    // The authenticated principal decides; a `by` in the body is ignored.
    let by = who.name.clone();
    let reason = body["reason"].as_str().map(str::to_owned);
    match store::decide(&st.nats, &st.kv, id, verdict, &by, "http", reason).await {
        Ok(a) => Json(a).into_response(),
        Err(e) => {
            if let DecideError::Internal(err) = e {
                return internal(err);
            }
            error(decide_status(&e), e.to_string(), json!({}))
        }
    }
}

fn decide_status(e: &DecideError) -> StatusCode {
    match e {
        DecideError::NotFound(_) => StatusCode::NOT_FOUND,
        DecideError::AlreadyDecided(_) => StatusCode::CONFLICT,
        DecideError::TimedOut(_) => StatusCode::GONE,
        DecideError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Checks a link (signature, then expiry, then state) and decides.
async fn link_decision(
    st: &St,
    headers: &HeaderMap,
    id: &str,
    action: &str,
    q: &LinkQuery,
) -> (StatusCode, String) {
    let Some(secret) = &st.links.secret else {
        return (StatusCode::SERVICE_UNAVAILABLE, "approval links are disabled on this server (no WHALE_APPROVAL_SECRET); use `whale approvals`".into());
    };
    let Some(verdict) = Verdict::parse(action).filter(|v| v.action() == action) else {
        return (
            StatusCode::NOT_FOUND,
            format!("unknown decision {action:?}"),
        );
    };
    let (Some(exp), Some(sig)) = (q.exp, q.sig.as_deref()) else {
        return (StatusCode::FORBIDDEN, "this link is not signed".into());
    };
    let a = match store::read(&st.kv, id).await {
        Ok(Some((a, _))) => a,
        Ok(None) => return (StatusCode::NOT_FOUND, format!("no approval {id}")),
        Err(e) => {
            let (code, msg) = failure(&e);
            return (code, msg.into());
        }
    };
    let now = OffsetDateTime::now_utc().unix_timestamp();
    match link::verify(secret, id, action, exp, &a.nonce, sig, now) {
        Ok(()) => {}
        Err(LinkError::BadSignature) => {
            tracing::warn!(
                task_id = id,
                action,
                "approval link with a bad signature refused"
            );
            return (
                StatusCode::FORBIDDEN,
                "this link is not valid (bad signature)".into(),
            );
        }
        Err(LinkError::Expired) => {
            return (
                StatusCode::GONE,
                "this link has expired; use `whale approvals` if the approval is still pending"
                    .into(),
            )
        }
    }
    let by = clicker(headers, a.channel.as_deref());
    match store::decide(&st.nats, &st.kv, id, verdict, &by, "link", None).await {
        Ok(a) => {
            let t = &a.task;
            let what = if a.state == "approved" {
                format!(
                    "Approved: {} will run on cluster {} (rule {}, task {}).",
                    t.action, t.cluster, t.rule, t.task_id
                )
            } else {
                format!(
                    "Denied: {} will not run (rule {}, task {}).",
                    t.action, t.rule, t.task_id
                )
            };
            (StatusCode::OK, what)
        }
        Err(DecideError::Internal(e)) => {
            let (code, msg) = failure(&e);
            (code, msg.into())
        }
        Err(e) => (decide_status(&e), e.to_string()),
    }
}

/// NATS trouble is 503 (try again: nothing was decided), anything else 500.
fn internal(e: anyhow::Error) -> Response {
    let (code, msg) = failure(&e);
    let mut r = error(code, msg, json!({}));
    if code == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
    }
    r
}

/// The status and message for an error of the store; logs it.
fn failure(e: &anyhow::Error) -> (StatusCode, &'static str) {
    if whale_kernel::kv::is_unavailable(e) {
        tracing::warn!("approvals API: NATS unavailable: {e:#}");
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "approvals are unavailable: whale cannot reach NATS; nothing was decided, try again shortly",
        )
    } else {
        tracing::error!("approvals API: {e:#}");
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error (see whale's log)",
        )
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

//! `/v1/approvals`: the links people click in chat, and the API behind `whale approvals`.
//!
//! - `GET /v1/approvals[?state=pending|approved|denied|expired]` → approvals, pending first
//! - `GET /v1/approvals/{id}` → one approval
//! - `GET|HEAD /v1/approvals/{id}/{approve|deny}?exp=..&sig=..` → a signed link: checks it and
//!   answers a confirmation page ([`crate::page`]) whose form POSTs the token (`exp`, `sig`,
//!   form-encoded) back; it decides nothing, so link previews and mail scanners are harmless.
//! - `POST /v1/approvals/{id}/{approve|deny}` form-encoded (or `?exp=..&sig=..`) → decides once
//!   (no bearer token: the signature is the credential; a foreign `Origin` is refused). Refusals,
//!   as HTML pages: 403 bad signature or foreign origin, 410 link expired, approval timed out or
//!   already decided (a used link), 404 unknown, 503 links disabled (no `WHALE_APPROVAL_SECRET`)
//! - `POST /v1/approvals/{id}/{approve|deny}` with JSON `{"reason": .., "by": ..}` (optional) →
//!   decides as an API client; `POST /v1/approvals` with `{"id", "decision": "approve"|"deny",
//!   "reason"}` does the same. These need the `operator` role (auth layer, `whale_kernel::auth`);
//!   the decision records the caller's principal as `by` (a `by` in the body is ignored).
//!
//! Every decision (and refused attempt) is an audit record (`whale_kernel::audit`): 503 and
//! nothing decided while the audit trail cannot take one; 500 `"audit": "missing"` when the
//! decision was made but its record could not be written.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use time::OffsetDateTime;
use whale_kernel::audit::{self, Actor, Caller};
use whale_kernel::http::{error, json_body, media_type};
use whale_kernel::records::ApprovalState;
use whale_kernel::{Config, Nats};

use crate::link::{self, LinkError};
use crate::page;
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
    let links = Links::from_config(&cfg)?;
    let kv = store::bucket(nats, &cfg).await?;
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
                .filter(|a| q.state.as_ref().is_none_or(|s| a.state.as_str() == s))
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

/// A link's signed token: in the link's query (GET, HEAD) or the confirmation form (POST).
/// Kept as text so a mangled value is a refusal page, not a bare 400.
#[derive(Deserialize, Default)]
struct LinkToken {
    exp: Option<String>,
    sig: Option<String>,
}

/// Who decided through a link: the link's holder, named by the channel it was sent to. A name
/// the client sends (form field, `X-Forwarded-User`) is not trusted here: an authenticated
/// principal, when the router's auth layer provides one, is the only better answer.
fn link_decider(channel: Option<&str>) -> String {
    format!("link:{}", channel.unwrap_or("chat"))
}

/// `GET|HEAD` of a link: checks it and shows what it would decide, with a button that POSTs the
/// token back. Decides nothing, so a chat unfurler or a mail scanner previewing it is harmless.
async fn by_link(
    State(st): State<St>,
    Path((id, action)): Path<(String, String)>,
    Query(q): Query<LinkToken>,
) -> Response {
    match check_link(&st, &id, &action, &q).await {
        Ok(checked) => page::confirm(&checked.approval, &action, checked.exp, &checked.sig),
        Err((code, msg)) => page::refused(code, &msg),
    }
}

/// `POST /v1/approvals/{id}/{action}`: a link's confirmation form (form-encoded, or the token in
/// the query), else the API call (JSON, bearer token).
async fn by_post(
    State(st): State<St>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    Query(q): Query<LinkToken>,
    Caller(who): Caller,
    body: Body,
) -> Response {
    let form = media_type(&headers) == "application/x-www-form-urlencoded";
    if form {
        let token = match axum::body::to_bytes(body, st.cfg.api.max_body_bytes).await {
            Ok(b) => serde_urlencoded::from_bytes::<LinkToken>(&b).unwrap_or_default(),
            Err(_) => {
                return page::refused(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!(
                    "the form is larger than api.max_body_bytes ({} bytes); open the link again",
                    st.cfg.api.max_body_bytes
                ),
                )
            }
        };
        let (code, msg) = link_decision(&st, &headers, &who, &id, &action, &token).await;
        return if code.is_success() {
            page::done(&msg)
        } else {
            page::refused(code, &msg)
        };
    }
    if q.sig.is_some() {
        let (code, msg) = link_decision(&st, &headers, &who, &id, &action, &q).await;
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
    api_decision(&st, &who, &id, &action, &body).await
}

async fn post_decision(State(st): State<St>, Caller(who): Caller, body: Body) -> Response {
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
    api_decision(&st, &who, id, decision, &body).await
}

async fn api_decision(st: &St, who: &Actor, id: &str, action: &str, body: &Value) -> Response {
    let Some(verdict) = Verdict::parse(action) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("unknown decision {action:?}: use approve or deny"),
            json!({}),
        );
    };
    // The authenticated principal decides; a `by` in the body is ignored.
    let reason = body["reason"].as_str().map(str::to_owned);
    match store::decide(&st.nats, &st.kv, id, verdict, who, reason).await {
        Ok(a) => Json(a).into_response(),
        Err(DecideError::Internal(err)) => internal(err),
        Err(DecideError::AuditUnavailable(e)) => audit::unavailable_response(&e),
        Err(DecideError::AuditMissing(a, err)) => audit::missing_response(
            "the decision",
            &err,
            serde_json::to_value(&a).unwrap_or_default(),
        ),
        Err(e) => error(decide_status(&e), e.to_string(), json!({})),
    }
}

fn decide_status(e: &DecideError) -> StatusCode {
    match e {
        DecideError::NotFound(_) => StatusCode::NOT_FOUND,
        DecideError::AlreadyDecided(_) => StatusCode::CONFLICT,
        DecideError::TimedOut(_) => StatusCode::GONE,
        DecideError::Internal(_) | DecideError::AuditMissing(..) => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
        DecideError::AuditUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// A link that verified and whose approval is still pending.
struct Checked {
    approval: store::Approval,
    verdict: Verdict,
    exp: i64,
    sig: String,
}

/// Checks a link: signature, then expiry, then that its approval still waits. Refusals: 503
/// links disabled, 404 unknown, 403 unsigned or bad signature, 410 expired or already decided.
async fn check_link(
    st: &St,
    id: &str,
    action: &str,
    t: &LinkToken,
) -> Result<Checked, (StatusCode, String)> {
    let Some(secret) = &st.links.secret else {
        return Err((StatusCode::SERVICE_UNAVAILABLE, "approval links are disabled on this server (no WHALE_APPROVAL_SECRET); use `whale approvals`".into()));
    };
    let Some(verdict) = Verdict::parse(action).filter(|v| v.action() == action) else {
        return Err((
            StatusCode::NOT_FOUND,
            format!("unknown decision {action:?}"),
        ));
    };
    let exp = t.exp.as_deref().and_then(|e| e.parse::<i64>().ok());
    let (Some(exp), Some(sig)) = (exp, t.sig.as_deref()) else {
        return Err((StatusCode::FORBIDDEN, "this link is not signed".into()));
    };
    let a = match store::read(&st.kv, id).await {
        Ok(Some((a, _))) => a,
        Ok(None) => return Err((StatusCode::NOT_FOUND, format!("no approval {id}"))),
        Err(e) => {
            let (code, msg) = failure(&e);
            return Err((code, msg.into()));
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
            return Err((
                StatusCode::FORBIDDEN,
                "this link is not valid (bad signature)".into(),
            ));
        }
        Err(LinkError::Expired) => {
            return Err((
                StatusCode::GONE,
                "this link has expired; use `whale approvals` if the approval is still pending"
                    .into(),
            ))
        }
    }
    if !a.is_pending() {
        return Err((StatusCode::GONE, used(&a)));
    }
    Ok(Checked {
        approval: a,
        verdict,
        exp,
        sig: sig.to_owned(),
    })
}

/// Why a link of a decided approval does nothing.
fn used(a: &store::Approval) -> String {
    let by = a
        .decided_by
        .as_deref()
        .map(|b| format!(" by {b}"))
        .unwrap_or_default();
    let when = a
        .decided
        .map(|d| format!(" at {}", store::format_time(d)))
        .unwrap_or_default();
    format!(
        "this link is used: task {} was already {}{by}{when}; nothing was changed",
        a.task.task_id, a.state
    )
}

/// The origin (`scheme://host[:port]`, default port dropped, lower case) of a URL.
fn origin_of(url: &str) -> String {
    let url = url.trim().to_ascii_lowercase();
    let (scheme, rest) = url.split_once("://").unwrap_or(("http", url.as_str()));
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = match scheme {
        "http" => host.strip_suffix(":80").unwrap_or(host),
        "https" => host.strip_suffix(":443").unwrap_or(host),
        _ => host,
    };
    format!("{scheme}://{host}")
}

/// A link POST sent from another site's page is refused. `Origin: null` is what a browser sends
/// for the confirmation form itself (its page has `Referrer-Policy: no-referrer`), so it passes;
/// the signed token, which only the link's holder has, is what makes the POST safe.
fn foreign_origin(st: &St, headers: &HeaderMap) -> Option<String> {
    let origin = headers.get(header::ORIGIN)?;
    let origin = origin.to_str().unwrap_or("(not text)").trim();
    if origin == "null" || origin_of(origin) == origin_of(&st.links.base) {
        return None;
    }
    Some(origin.chars().take(200).collect())
}

/// Checks a link's token (from the form or the query) and decides.
async fn link_decision(
    st: &St,
    headers: &HeaderMap,
    caller: &Actor,
    id: &str,
    action: &str,
    t: &LinkToken,
) -> (StatusCode, String) {
    if let Some(origin) = foreign_origin(st, headers) {
        tracing::warn!(
            task_id = id,
            action,
            origin,
            "approval link POST from another site refused"
        );
        return (
            StatusCode::FORBIDDEN,
            format!(
                "this form was sent from another site ({origin}), not from {}; open the link from the chat message again",
                origin_of(&st.links.base)
            ),
        );
    }
    let c = match check_link(st, id, action, t).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    // The link's holder decides, from the caller's address (the auth layer names it `link`).
    let actor = Actor {
        who: link_decider(c.approval.channel.as_deref()),
        role: None,
        via: "link".into(),
        from: caller.from.clone(),
    };
    match store::decide(&st.nats, &st.kv, id, c.verdict, &actor, None).await {
        Ok(a) => {
            let t = &a.task;
            let what = if a.state == ApprovalState::Approved {
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
        Err(DecideError::AlreadyDecided(a)) => (StatusCode::GONE, used(&a)),
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

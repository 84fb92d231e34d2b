//! StackStorm's authentication: `X-Auth-Token` / `St2-Api-Key` headers (or `?x-auth-token=`,
//! `?st2-api-key=`, cookie `auth-token`), first found wins; and `POST /auth/v1/tokens`, which
//! trades HTTP Basic credentials for a token.

use crate::state::{lock, Emu, Token};
use crate::util::{fmt_ts, object_id, ApiError, ApiResult};
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use bytes::Bytes;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use time::OffsetDateTime;

/// The authenticated user, for `context.user` and `cancelled_by`.
#[derive(Debug, Clone)]
pub struct Requester(pub String);

const MISSING: &str = "Unauthorized - One of Token or API key required.";

/// Middleware for every API and stream route.
pub async fn require_auth(State(emu): State<Arc<Emu>>, mut req: Request, next: Next) -> Response {
    let query = Query::<HashMap<String, String>>::try_from_uri(req.uri())
        .map(|q| q.0)
        .unwrap_or_default();
    match authenticate(&emu, req.headers(), &query) {
        Ok(user) => {
            req.extensions_mut().insert(Requester(user));
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

fn cookie_token(headers: &HeaderMap) -> Option<String> {
    let cookies = headers.get("cookie")?.to_str().ok()?;
    cookies.split(';').find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        (k == "auth-token").then(|| v.to_owned())
    })
}

fn authenticate(
    emu: &Emu,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> ApiResult<String> {
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, m);
    let found = header("x-auth-token")
        .map(|t| (true, t))
        .or_else(|| header("st2-api-key").map(|k| (false, k)))
        .or_else(|| query.get("x-auth-token").map(|t| (true, t.clone())))
        .or_else(|| query.get("st2-api-key").map(|k| (false, k.clone())))
        .or_else(|| cookie_token(headers).map(|t| (true, t)));
    match found {
        None if emu.cfg.no_auth => Ok("stanley".into()),
        None => Err(unauthorized(MISSING)),
        Some((true, token)) => {
            let tokens = lock(&emu.tokens);
            let t = tokens.get(&token).ok_or_else(|| unauthorized(MISSING))?;
            if t.expiry <= OffsetDateTime::now_utc() {
                return Err(unauthorized("Unauthorized - Token has expired."));
            }
            Ok(t.user.clone())
        }
        Some((false, key)) => match &emu.cfg.api_key {
            Some(k) if *k != key => Err(unauthorized(MISSING)),
            _ if key.is_empty() => Err(unauthorized(MISSING)),
            _ => Ok("st2admin".into()),
        },
    }
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get("authorization")?.to_str().ok()?;
    let (scheme, b64) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

/// `POST /auth/v1/tokens`: Basic auth, optional `{"ttl": seconds}`, 201 with the token.
pub async fn create_token(
    State(emu): State<Arc<Emu>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let bad_creds = || ApiError::new(StatusCode::UNAUTHORIZED, "Invalid or missing credentials");
    let (user, password) = basic_credentials(&headers).ok_or_else(bad_creds)?;
    let allowed = match emu.users.get(&user) {
        Some(p) => *p == password,
        None => emu.cfg.api_key.is_none(),
    };
    if !allowed || user.is_empty() {
        return Err(bad_creds());
    }
    let req: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(&body)
            .map_err(|_| ApiError::bad_request("Request body is not valid JSON"))?
    };
    let max = emu.cfg.token_ttl;
    let ttl = match req.get("ttl") {
        None | Some(Value::Null) => max,
        Some(v) => match v.as_i64() {
            Some(n) if n >= 1 && n as u64 <= max => n as u64,
            Some(n) if n >= 1 => {
                return Err(ApiError::bad_request(format!(
                    "TTL specified {n} is greater than max allowed {max}."
                )))
            }
            _ => {
                return Err(ApiError::bad_request(format!(
                    "{v} is less than the minimum of 1"
                )))
            }
        },
    };
    let token = format!("{}{}", object_id(), &object_id()[8..16]);
    let expiry = OffsetDateTime::now_utc() + time::Duration::seconds(ttl as i64);
    lock(&emu.tokens).insert(
        token.clone(),
        Token {
            user: user.clone(),
            expiry,
        },
    );
    let doc = json!({
        "id": object_id(), "user": user, "token": token,
        "expiry": fmt_ts(expiry), "metadata": {},
    });
    Ok((StatusCode::CREATED, Json(doc)))
}

/// `POST /auth/v1/tokens/validate` `{"token": ...}` → `{"valid": bool}`.
pub async fn validate_token(State(emu): State<Arc<Emu>>, Json(body): Json<Value>) -> Json<Value> {
    let token = body
        .get("token")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let valid = lock(&emu.tokens)
        .get(token)
        .is_some_and(|t| t.expiry > OffsetDateTime::now_utc());
    Json(json!({ "valid": valid }))
}

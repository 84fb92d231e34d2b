//! The rule-set versions as an API, for the console and scripts, and the rollback both
//! `whale rules rollback` and `POST /v1/rules/rollback` make (audited the same way). Served by
//! every `whale run`, whatever its stages (the set lives in KV, not in a stage):
//!
//! - `GET /v1/rules` → the active version's manifest and its files (viewer)
//! - `GET /v1/rules/history[?limit=N]` → every apply and rollback, newest first (viewer)
//! - `GET /v1/rules/diff?a=A&b=B[&file=PATH]` → unified diff per changed file (viewer; a
//!   version may be `active`)
//! - `POST /v1/rules/rollback` `{"version": "..."}` → that version active again (admin)

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use whale_kernel::audit::{self, Action, Actor, Caller, Record, Target};
use whale_kernel::http::{error, json_body, with_retry_after};
use whale_kernel::{Config, Nats};

use crate::rules_store::{self, Entry, FileDiff, Provenance};

/// Why a rollback did not happen (or happened without its record).
#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    #[error("unknown rule-set version {0:?}: `whale rules history` lists the versions")]
    Unknown(String),
    #[error("version {version} no longer compiles, nothing was changed: {errors}")]
    Refused { version: String, errors: String },
    #[error(transparent)]
    AuditUnavailable(audit::Unavailable),
    #[error("the rollback to {} was done, but its audit record is missing: {err:#}", .entry.version)]
    AuditMissing {
        entry: Box<Entry>,
        err: anyhow::Error,
    },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl RollbackError {
    /// The HTTP status the route and the console answer with.
    pub fn status(&self) -> StatusCode {
        match self {
            RollbackError::Unknown(_) => StatusCode::NOT_FOUND,
            RollbackError::Refused { .. } => StatusCode::CONFLICT,
            RollbackError::AuditUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            RollbackError::AuditMissing { .. } | RollbackError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }
}

/// What a rollback did.
#[derive(Debug)]
pub struct RolledBack {
    pub entry: Entry,
    /// False when the version was already active (nothing written, nothing audited).
    pub changed: bool,
}

/// Makes `version` the active set again: checks that the audit trail can take a record, reads
/// and compiles the version (a set this whale cannot compile is refused), stores it as the
/// active one (one put, as an apply) with `actor` as who, and records `rules.rollback`.
pub async fn rollback(
    nats: &Nats,
    version: &str,
    actor: &Actor,
) -> Result<RolledBack, RollbackError> {
    let Some(target) = rules_store::version_entry(nats, version).await? else {
        return Err(RollbackError::Unknown(version.to_owned()));
    };
    let before = rules_store::active_entry(nats).await?;
    if let Some(b) = before.as_ref().filter(|b| b.version == target.version) {
        return Ok(RolledBack {
            entry: b.clone(),
            changed: false,
        });
    }
    audit::check(nats)
        .await
        .map_err(RollbackError::AuditUnavailable)?;
    let git = target.provenance.git.clone();
    let stored = rules_store::load(
        &whale_kernel::kv::Bucket::open(nats, whale_kernel::subjects::KV_RULES).await?,
        target,
    )
    .await?;
    let set =
        match tokio::task::spawn_blocking(move || whale_rules::RuleSet::compile(&stored.sources))
            .await
            .map_err(anyhow::Error::from)?
        {
            Ok(set) => set,
            Err(e) => {
                return Err(RollbackError::Refused {
                    version: version.to_owned(),
                    errors: e.to_string(),
                })
            }
        };
    let provenance = Provenance {
        by: Some(actor.who.clone()),
        via: Some(actor.via.clone()),
        dir: None,
        git,
    };
    let (entry, revision) = rules_store::apply(nats, &set, provenance, "rollback").await?;
    let rec = Record::new(
        actor,
        Action::RulesRollback,
        Target::new("rules", set.version()),
    )
    .natural_id(&revision.to_string())
    .before_after(
        json!({"version": before.map(|b| b.version)}),
        json!({"version": set.version(), "rules": set.len()}),
    );
    if let Err(err) = audit::record(nats, &rec).await {
        return Err(RollbackError::AuditMissing {
            entry: Box::new(entry),
            err,
        });
    }
    Ok(RolledBack {
        entry,
        changed: true,
    })
}

/// The diff between two versions (`active` accepted), refused past `max_bytes` of diff text.
pub async fn diff(
    nats: &Nats,
    a: &str,
    b: &str,
    file: Option<&str>,
    max_bytes: usize,
) -> Result<Vec<FileDiff>, (StatusCode, String)> {
    let load = |v: String| async move {
        match rules_store::version(nats, &v).await {
            Ok(Some(s)) => Ok(s),
            Ok(None) => Err((
                StatusCode::NOT_FOUND,
                format!("unknown rule-set version {v:?}: `whale rules history` lists the versions"),
            )),
            Err(e) => Err(internal(&e)),
        }
    };
    let (a, b) = (load(a.to_owned()).await?, load(b.to_owned()).await?);
    let files = rules_store::diff(&a, &b, file);
    let size: usize = files.iter().map(|f| f.diff.len()).sum();
    if size > max_bytes {
        return Err((
            StatusCode::BAD_REQUEST,
            format!(
                "the diff is {size} bytes, over the limit of {max_bytes} (rules.max_diff_bytes): ask for one file (`file`)"
            ),
        ));
    }
    Ok(files)
}

fn internal(e: &anyhow::Error) -> (StatusCode, String) {
    if whale_kernel::kv::is_unavailable(e) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "rule sets are unavailable: whale cannot reach NATS; try again shortly".into(),
        )
    } else {
        tracing::error!("rules API: {e:#}");
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot read the rule sets: {e:#}"),
        )
    }
}

fn fail((code, msg): (StatusCode, String)) -> Response {
    let resp = error(code, msg, json!({}));
    if code == StatusCode::SERVICE_UNAVAILABLE {
        with_retry_after(resp, 5)
    } else {
        resp
    }
}

/// Checks a history `limit` against `rules.max_history`.
pub fn history_limit(limit: Option<usize>, cfg: &Config) -> Result<usize, String> {
    let limit = limit.unwrap_or(50);
    if limit == 0 || limit > cfg.rules.max_history {
        return Err(format!(
            "limit {limit} is outside 1..={} (rules.max_history)",
            cfg.rules.max_history
        ));
    }
    Ok(limit)
}

/// The manifest with the file paths, as `GET /v1/rules` and `whale rules show --json` give it.
pub async fn active_json(nats: &Nats) -> anyhow::Result<Option<Value>> {
    let Some(entry) = rules_store::active_entry(nats).await? else {
        return Ok(None);
    };
    let b = whale_kernel::kv::Bucket::open(nats, whale_kernel::subjects::KV_RULES).await?;
    let mut out = serde_json::to_value(&entry)?;
    let stored = rules_store::load(&b, entry).await?;
    out["files"] = json!(stored.sources.iter().map(|s| &s.path).collect::<Vec<_>>());
    Ok(Some(out))
}

type St = (Nats, Arc<Config>);

/// The router, merged into every `whale run`.
pub fn router(nats: Nats, cfg: Arc<Config>) -> Router {
    Router::new()
        .route("/v1/rules", get(http_active))
        .route("/v1/rules/history", get(http_history))
        .route("/v1/rules/diff", get(http_diff))
        .route("/v1/rules/rollback", post(http_rollback))
        .with_state((nats, cfg))
}

async fn http_active(State((nats, _)): State<St>) -> Response {
    match active_json(&nats).await {
        Ok(Some(v)) => Json(v).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            "no rule set applied yet: `whale rules apply <dir>`",
            json!({}),
        ),
        Err(e) => fail(internal(&e)),
    }
}

#[derive(Deserialize)]
struct HistoryQuery {
    limit: Option<usize>,
}

async fn http_history(State((nats, cfg)): State<St>, Query(q): Query<HistoryQuery>) -> Response {
    let limit = match history_limit(q.limit, &cfg) {
        Ok(l) => l,
        Err(msg) => return error(StatusCode::BAD_REQUEST, msg, json!({})),
    };
    match rules_store::history(&nats, limit).await {
        Ok(h) => Json(h).into_response(),
        Err(e) => fail(internal(&e)),
    }
}

#[derive(Deserialize)]
struct DiffQuery {
    a: Option<String>,
    b: Option<String>,
    file: Option<String>,
}

async fn http_diff(State((nats, cfg)): State<St>, Query(q): Query<DiffQuery>) -> Response {
    let (Some(a), Some(b)) = (q.a, q.b) else {
        return error(
            StatusCode::BAD_REQUEST,
            "give the two versions: ?a=<version>&b=<version> (`active` names the active one)",
            json!({}),
        );
    };
    match diff(&nats, &a, &b, q.file.as_deref(), cfg.rules.max_diff_bytes).await {
        Ok(files) => Json(json!({"a": a, "b": b, "files": files})).into_response(),
        Err(e) => fail(e),
    }
}

async fn http_rollback(
    State((nats, cfg)): State<St>,
    Caller(actor): Caller,
    body: Body,
) -> Response {
    let body = match json_body(body, &cfg.api).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(version) = body
        .as_ref()
        .and_then(|b| b.get("version"))
        .and_then(Value::as_str)
        .map(str::to_owned)
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "the body must name the version: {\"version\": \"<version>\"}",
            json!({}),
        );
    };
    match rollback(&nats, &version, &actor).await {
        Ok(r) => Json(json!({"changed": r.changed, "active": r.entry})).into_response(),
        Err(RollbackError::AuditUnavailable(u)) => audit::unavailable_response(&u),
        Err(RollbackError::AuditMissing { entry, err }) => audit::missing_response(
            "the rollback",
            &err,
            serde_json::to_value(&entry).unwrap_or_default(),
        ),
        Err(e @ RollbackError::Unknown(_)) => {
            error(StatusCode::NOT_FOUND, e.to_string(), json!({}))
        }
        Err(e @ RollbackError::Refused { .. }) => {
            error(StatusCode::CONFLICT, e.to_string(), json!({}))
        }
        Err(RollbackError::Internal(e)) => fail(internal(&e)),
    }
}

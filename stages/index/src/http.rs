//! `GET /v1/events?q=&from=&to=&limit=&kind=`: the search of `whale events search` over HTTP,
//! served by a `whale run` that runs the index stage. Answers `{"total": N, "hits": [doc, ...]}`;
//! a bad query is a 400 that says where it is wrong, an unreachable backend a 503.

use std::sync::Arc;

use axum::extract::{Query as Params, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use whale_kernel::config::IndexConfig;
use whale_kernel::http::error;
use whale_kernel::Config;

use crate::backend::{Backend, Error, Search};
use crate::query::Limits;

/// Default number of hits.
pub const DEFAULT_LIMIT: usize = 20;

#[derive(Clone)]
struct App {
    cfg: Arc<Config>,
    backend: Arc<dyn Backend>,
}

/// The search route, for `whale_kernel::http::serve` to merge.
pub fn router(cfg: Arc<Config>, backend: Arc<dyn Backend>) -> Router {
    Router::new()
        .route("/v1/events", get(search))
        .with_state(App { cfg, backend })
}

#[derive(Debug, Deserialize)]
struct SearchParams {
    #[serde(default)]
    q: String,
    from: Option<String>,
    to: Option<String>,
    limit: Option<usize>,
    /// Comma list of document kinds, or `all` (default: event,rejected).
    kind: Option<String>,
}

/// Document kinds a search covers when none are named: events and rejections.
pub const DEFAULT_KINDS: [&str; 2] = ["event", "rejected"];

/// `event,rejected` / `all` / `task,throttled` → kinds (empty = all).
pub fn parse_kinds(s: Option<&str>) -> Vec<String> {
    match s.map(str::trim) {
        None | Some("") => DEFAULT_KINDS.iter().map(|k| k.to_string()).collect(),
        Some("all") | Some("*") => Vec::new(),
        Some(list) => list
            .split(',')
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty())
            .collect(),
    }
}

/// Builds a [`Search`] from the user's strings within the `[index]` limits (query length, depth,
/// clauses, `limit`); the error says what to fix and names the limit.
pub fn make_search(
    q: &str,
    from: Option<&str>,
    to: Option<&str>,
    limit: Option<usize>,
    kinds: Option<&str>,
    cfg: &IndexConfig,
) -> Result<Search, String> {
    let limits = Limits::from_config(cfg);
    let query = crate::query::parse_with(q, time::OffsetDateTime::now_utc(), &limits)
        .map_err(|e| e.explain(q))?;
    let mut s = Search::new(query);
    s.from = from
        .map(crate::time::parse_time)
        .transpose()
        .map_err(|e| format!("--from: {e}"))?;
    s.to = to
        .map(crate::time::parse_time)
        .transpose()
        .map_err(|e| format!("--to: {e}"))?;
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if limit > cfg.search_max_limit {
        return Err(format!(
            "limit {limit} is more than one search returns, {} (index.search_max_limit): \
             ask for fewer hits, or narrow the search with from/to",
            cfg.search_max_limit
        ));
    }
    s.limit = limit;
    s.kinds = parse_kinds(kinds);
    // The kinds become clauses too: check the query as the backend will get it.
    limits
        .check_clauses(&s.effective_query())
        .map_err(|e| format!("query error: {}", e.msg))?;
    Ok(s)
}

async fn search(State(app): State<App>, Params(p): Params<SearchParams>) -> Response {
    let s = match make_search(
        &p.q,
        p.from.as_deref(),
        p.to.as_deref(),
        p.limit,
        p.kind.as_deref(),
        &app.cfg.index,
    ) {
        Ok(s) => s,
        Err(msg) => return error(StatusCode::BAD_REQUEST, msg, json!({})),
    };
    match app.backend.search(&s).await {
        Ok(hits) => Json(hits).into_response(),
        Err(Error::Invalid(m)) => error(StatusCode::BAD_REQUEST, m, json!({})),
        Err(e @ Error::Unavailable(_)) => {
            tracing::warn!("search: {e}");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the index backend is unavailable; try again shortly",
                json!({}),
            )
        }
        Err(e) => {
            tracing::error!("search: {e}");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "search failed; see the server log",
                json!({}),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn searches_are_bounded_by_the_index_config() {
        let cfg = IndexConfig::default();
        let ok = make_search("kind:event", None, None, Some(10_000), None, &cfg).unwrap();
        assert_eq!(ok.limit, 10_000);
        let e = make_search("*", None, None, Some(10_001), None, &cfg).unwrap_err();
        assert!(e.contains("index.search_max_limit"), "{e}");
        let kinds = vec!["event"; 300].join(",");
        let e = make_search("*", None, None, None, Some(&kinds), &cfg).unwrap_err();
        assert!(e.contains("index.query_max_clauses"), "{e}");
        let e = make_search(&"(".repeat(400), None, None, None, None, &cfg).unwrap_err();
        assert!(e.contains("index.query_max_depth"), "{e}");
        // The error shows only a window of a long query.
        assert!(e.len() < 600, "{e}");
        let small = IndexConfig {
            query_max_bytes: 10,
            ..IndexConfig::default()
        };
        let e = make_search("kind:event OR x", None, None, None, None, &small).unwrap_err();
        assert!(e.contains("index.query_max_bytes"), "{e}");
    }
}

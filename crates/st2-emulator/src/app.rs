//! The HTTP surface in one place: which paths exist under which prefixes (`/api/v1`, `/auth/v1`,
//! `/stream/v1`, and the unprefixed `/v1` forms the services accept), where auth applies, and
//! the outer layer that strips one trailing slash, counts requests and injects faults.

use crate::state::Emu;
use crate::util::ApiError;
use crate::{admin, auth, executions, operations, resources, stream};
use axum::extract::{Request, State};
use axum::http::{StatusCode, Uri};
use axum::middleware::{from_fn, from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::sync::atomic::Ordering;
use std::sync::Arc;

fn api(prefix: &str) -> Router<Arc<Emu>> {
    let p = |s: &str| format!("{prefix}{s}");
    Router::new()
        .route(&p(""), get(resources::info))
        .route(
            &p("/executions"),
            get(executions::list).post(executions::create),
        )
        .route(
            &p("/executions/{id}"),
            get(executions::get_one)
                .put(operations::update)
                .delete(operations::cancel),
        )
        .route(&p("/executions/{id}/children"), get(executions::children))
        .route(&p("/executions/{id}/re_run"), post(operations::re_run))
        .route(&p("/executions/{id}/output"), get(operations::output))
        .route(&p("/executions/{id}/result"), get(operations::result))
        .route(&p("/actions"), get(resources::actions))
        .route(&p("/actions/{ref}"), get(resources::action))
        .route(&p("/runnertypes"), get(resources::runnertypes))
        .route(&p("/runnertypes/{name}"), get(resources::runnertype))
        .route(&p("/traces"), get(resources::traces))
        .route(&p("/traces/{id}"), get(resources::trace))
}

fn streams(prefix: &str, with_output: bool) -> Router<Arc<Emu>> {
    let r = Router::new().route(&format!("{prefix}/stream"), get(stream::events));
    match with_output {
        true => r.route(
            &format!("{prefix}/executions/{{id}}/output"),
            get(stream::output),
        ),
        false => r,
    }
}

fn tokens(prefix: &str) -> Router<Arc<Emu>> {
    Router::new()
        .route(&format!("{prefix}/tokens"), post(auth::create_token))
        .route(
            &format!("{prefix}/tokens/validate"),
            post(auth::validate_token),
        )
}

/// The whole service, ready for `axum::serve`.
pub fn router(emu: Arc<Emu>) -> Router {
    let authed = api("/api/v1")
        .merge(api("/v1"))
        .merge(streams("/stream/v1", true))
        .merge(streams("/v1", false))
        .route_layer(from_fn_with_state(emu.clone(), auth::require_auth));
    Router::new()
        .merge(authed)
        .merge(tokens("/auth/v1"))
        .merge(tokens("/v1"))
        .merge(admin::routes())
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "The resource could not be found.")
        })
        .layer(from_fn_with_state(emu.clone(), faults_and_counts))
        .with_state(emu)
}

/// Counts requests and applies latency / HTTP 500 faults (not to `/_emulator`).
async fn faults_and_counts(State(emu): State<Arc<Emu>>, req: Request, next: Next) -> Response {
    if req.uri().path().starts_with("/_emulator") {
        return next.run(req).await;
    }
    emu.stats.requests.fetch_add(1, Ordering::Relaxed);
    let latency = emu.faults.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if emu.faults.take_http500() {
        return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error")
            .into_response();
    }
    next.run(req).await
}

/// Strips one trailing slash before routing (`/executions/` == `/executions`), as st2's router does.
pub async fn strip_trailing_slash(mut req: Request, next: Next) -> Response {
    let uri = req.uri();
    let path = uri.path();
    if path.len() > 1 && path.ends_with('/') {
        let trimmed = &path[..path.len() - 1];
        let pq = match uri.query() {
            Some(q) => format!("{trimmed}?{q}"),
            None => trimmed.to_owned(),
        };
        if let Ok(new) = Uri::builder().path_and_query(pq).build() {
            *req.uri_mut() = new;
        }
    }
    next.run(req).await
}

/// The router wrapped so the slash is stripped before routing.
pub fn service(
    emu: Arc<Emu>,
) -> impl Clone
       + Send
       + 'static
       + tower::Service<Request, Response = Response, Error = std::convert::Infallible, Future: Send>
{
    use tower::Layer;
    from_fn(strip_trailing_slash).layer(router(emu))
}

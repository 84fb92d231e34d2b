//! The operator console: server-rendered HTML pages (maud templates compiled into the binary,
//! a little vanilla JS and CSS embedded with `include_bytes!`) that `whale run` serves at `/`
//! whatever its stages. Pages call the same functions as the JSON routes (index search and
//! trace, executions manager, approvals store, dead letters, audit trail, rule store), so the
//! console shows nothing the API would not. Access is the policy table's (`Access::Console`):
//! pages need `viewer`, actions `operator`; sessions are signed cookies
//! (`whale_kernel::session`) that any `whale run` holding the key accepts. docs/console.md.

mod i18n;
mod layout;
mod ops;
mod pages;
mod rules;

use std::sync::Arc;

use anyhow::Context as _;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;
use whale_kernel::audit::{self, Action, Caller};
use whale_kernel::auth::{Auth, ConsoleAuth, Principal, Role};
use whale_kernel::kv::{Bucket, KvError, Ttl};
use whale_kernel::session::Sessions;
use whale_kernel::{keys, subjects, Config, Nats};

pub use i18n::Lang;

/// What the pages read from. A part that lives in a stage this process does not run is None,
/// and its page says so.
pub struct Console {
    nats: Nats,
    cfg: Arc<Config>,
    auth: Arc<Auth>,
    sessions: Arc<Sessions>,
    /// The stages of this process (shown in the footer; decides what is local).
    stages: Vec<&'static str>,
    /// Search and trace: OpenSearch from anywhere, the embedded index only in the process
    /// that runs the index stage (it holds the index's one writer).
    index: Option<Arc<dyn whale_index::backend::Backend>>,
    execs: Option<whale_feedback::manage::Manager>,
    approvals: Option<whale_approve::store::Approvals>,
    dead: Option<whale_dispatch::dead_letters::DeadLetters>,
    /// Turns true when `whale run` stops: live streams end so the server can drain.
    stop: tokio::sync::watch::Receiver<bool>,
}

type App = Arc<Console>;

/// The session signer: `console.session_secret`, else the key kept in KV (created once by the
/// first process that needs it, so every `whale run` signs and accepts the same cookies).
pub async fn sessions(nats: &Nats, cfg: &Config) -> anyhow::Result<Arc<Sessions>> {
    let secure = cfg.http.tls_cert_file.is_some();
    if let Some(s) = cfg
        .console
        .session_secret
        .as_ref()
        .filter(|s| !s.is_empty())
    {
        return Ok(Arc::new(Sessions::new(
            s.expose().as_bytes(),
            cfg.console.session_ttl,
            secure,
        )?));
    }
    let kv = match Bucket::open(nats, subjects::KV_STATE).await {
        Ok(kv) => kv,
        Err(e) => {
            // Without `whale setup` nothing else works either; the console still starts, with a
            // key of this process only (a session is then valid on this process alone).
            tracing::warn!(
                "console sessions: {e:#}; signing sessions with a key of this process only \
                 (set console.session_secret, or run `whale setup`, to share sessions)"
            );
            let mut fresh = [0u8; 32];
            getrandom::fill(&mut fresh)
                .map_err(|e| anyhow::anyhow!("no randomness for the console key: {e}"))?;
            return Ok(Arc::new(Sessions::new(
                &fresh,
                cfg.console.session_ttl,
                secure,
            )?));
        }
    };
    let key = match kv.get(keys::CONSOLE_SESSION_KEY).await? {
        Some(k) => k.to_vec(),
        None => {
            let mut fresh = [0u8; 32];
            getrandom::fill(&mut fresh)
                .map_err(|e| anyhow::anyhow!("no randomness for the console key: {e}"))?;
            let fresh = hex::encode(fresh).into_bytes();
            match kv
                .create(keys::CONSOLE_SESSION_KEY, fresh.clone().into(), Ttl::Never)
                .await
            {
                Ok(_) => fresh,
                Err(KvError::Conflict) => kv
                    .get(keys::CONSOLE_SESSION_KEY)
                    .await?
                    .context("the console session key vanished while it was created")?
                    .to_vec(),
                Err(e) => return Err(e.into()),
            }
        }
    };
    Ok(Arc::new(Sessions::new(
        &key,
        cfg.console.session_ttl,
        secure,
    )?))
}

/// The console's routes, for `whale run` to merge (before the auth layer).
pub async fn router(
    nats: &Nats,
    cfg: Arc<Config>,
    auth: Arc<Auth>,
    stages: &[&'static str],
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Router> {
    let sessions = auth
        .sessions()
        .cloned()
        .context("the console needs Auth::with_sessions")?;
    let index = if cfg.index.opensearch_url.is_some() || stages.contains(&"index") {
        Some(whale_index::reader(&cfg)?)
    } else {
        None
    };
    let execs = part(
        whale_feedback::manage::Manager::new(nats, &cfg).await,
        "executions",
    );
    let approvals = part(whale_approve::store::bucket(nats, &cfg).await, "approvals");
    let dead = part(
        whale_dispatch::dead_letters::DeadLetters::new(nats).await,
        "dead letters",
    );
    let max_form = cfg.console.max_form_bytes;
    let app = Arc::new(Console {
        nats: nats.clone(),
        cfg,
        auth,
        sessions,
        stages: stages.to_vec(),
        index,
        execs,
        approvals,
        dead,
        stop,
    });
    Ok(Router::new()
        .route("/", get(root))
        .route("/ui/assets/{file}", get(asset))
        .route("/ui/sign-in", get(sign_in_page).post(sign_in))
        .route("/ui/sign-out", post(sign_out))
        .route("/ui/lang/{lang}", get(set_lang))
        .route("/ui/", get(pages::overview))
        .route("/ui/live", get(pages::live))
        .route("/ui/events", get(pages::events))
        .route("/ui/trace/{id}", get(pages::trace))
        .route("/ui/executions", get(ops::executions))
        .route("/ui/executions/{id}", get(ops::execution))
        .route("/ui/executions/{id}/{action}", post(ops::exec_action))
        .route("/ui/approvals", get(ops::approvals))
        .route("/ui/approvals/{id}/{action}", post(ops::decide))
        .route("/ui/dead-letters", get(ops::dead_letters))
        .route("/ui/dead-letters/{id}/retry", post(ops::dead_letter_retry))
        .route("/ui/audit", get(ops::audit))
        .route("/ui/rules", get(rules::show))
        .route("/ui/rules/try", post(rules::try_rules))
        .route("/ui/rules/diff", get(rules::diff))
        .route("/ui/rules/backtest", post(rules::backtest))
        .route("/ui/rules/rollback", post(rules::rollback))
        .layer(DefaultBodyLimit::max(max_form))
        .with_state(app))
}

/// A part of the console whose store cannot be opened: logged, and its page says so.
fn part<T>(r: anyhow::Result<T>, what: &str) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!("console: {what} unavailable: {e:#}");
            None
        }
    }
}

/// Who is looking, in which language, and the CSRF token their forms carry.
pub struct Ctx {
    pub lang: Lang,
    pub principal: Principal,
    pub how: ConsoleAuth,
    pub csrf: String,
    /// Whether auth is configured (without it everyone may do everything, on loopback).
    pub auth_on: bool,
    /// The request's path and query (the language switch comes back here).
    pub here: String,
}

impl Ctx {
    pub fn t(&self, key: &'static str) -> &'static str {
        self.lang.t(key)
    }

    /// Whether the viewer may use forms that need `role` (buttons are shown only then).
    pub fn may(&self, role: Role) -> bool {
        !self.auth_on || self.principal.role.is_some_and(|r| r.allows(role))
    }
}

impl FromRequestParts<App> for Ctx {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let principal = parts
            .extensions
            .get::<Principal>()
            .cloned()
            .unwrap_or_else(Principal::anonymous);
        let how = parts
            .extensions
            .get::<ConsoleAuth>()
            .cloned()
            .unwrap_or(ConsoleAuth::Open);
        let nonce = match &how {
            ConsoleAuth::Session(s) => s.nonce.clone(),
            _ => "anonymous".to_owned(),
        };
        Ok(Ctx {
            lang: Lang::of(&parts.headers),
            principal,
            how,
            csrf: app.sessions.csrf(&nonce),
            auth_on: app.auth.enabled(),
            here: parts
                .uri
                .path_and_query()
                .map_or("/ui/", |p| p.as_str())
                .to_owned(),
        })
    }
}

/// Refuses a form whose CSRF token is not the one of the signed-in session (a bearer-token
/// client has no cookie a foreign page could ride on, and needs none).
#[allow(clippy::result_large_err)]
pub fn check_csrf(app: &Console, ctx: &Ctx, token: &str) -> Result<(), Response> {
    let nonce = match &ctx.how {
        ConsoleAuth::Bearer => return Ok(()),
        ConsoleAuth::Session(s) => s.nonce.as_str(),
        ConsoleAuth::Open => "anonymous",
    };
    if app.sessions.csrf_ok(nonce, token) {
        return Ok(());
    }
    Err(layout::message(
        ctx,
        StatusCode::FORBIDDEN,
        ctx.t("refused"),
        "the form's CSRF token is missing or belongs to another session: reload the page and submit it again",
    ))
}

async fn root() -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, "/ui/")]).into_response()
}

const CSS: &[u8] = include_bytes!("assets/console.css");
const JS: &[u8] = include_bytes!("assets/console.js");

async fn asset(Path(file): Path<String>) -> Response {
    let (body, ty) = match file.as_str() {
        "console.css" => (CSS, "text/css; charset=utf-8"),
        "console.js" => (JS, "text/javascript; charset=utf-8"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, ty),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

#[derive(Deserialize)]
struct NextQuery {
    next: Option<String>,
    failed: Option<String>,
}

/// Only a path of this console is a place to go back to (never another site).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with("/ui/") && !n.starts_with("//") && !n.contains('\\') => {
            n.to_owned()
        }
        _ => "/ui/".to_owned(),
    }
}

async fn sign_in_page(
    State(app): State<App>,
    headers: HeaderMap,
    Query(q): Query<NextQuery>,
) -> Response {
    let lang = Lang::of(&headers);
    layout::sign_in(
        lang,
        &safe_next(q.next.as_deref()),
        q.failed.is_some(),
        !app.auth.enabled(),
    )
}

#[derive(Deserialize)]
struct SignInForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    next: String,
}

/// Checks the token as the API would (named token or OIDC JWT) and stores a session cookie.
/// Without auth configured anyone on loopback continues as `anonymous` (admin).
async fn sign_in(
    State(app): State<App>,
    headers: HeaderMap,
    Caller(from): Caller,
    Form(f): Form<SignInForm>,
) -> Response {
    let next = safe_next(Some(&f.next));
    if !whale_kernel::auth::same_origin(&headers) {
        return (
            StatusCode::FORBIDDEN,
            "sign-in must come from the console's own page",
        )
            .into_response();
    }
    // Audit records name the principal, or `unknown token`; never the token itself.
    let refused = |who: &str, role: Option<Role>, why: &str| {
        let mut actor = from.clone();
        actor.who = who.to_owned();
        actor.role = role.map(|r| r.as_str().to_owned());
        let rec = sign_record(&actor, Action::ConsoleSignIn)
            .outcome(audit::Outcome::Refused, Some(why.to_owned()));
        let nats = app.nats.clone();
        async move {
            // A refusal is recorded when the trail can take it; it never blocks the answer.
            if let Err(e) = audit::record(&nats, &rec).await {
                tracing::warn!("console sign-in refusal not audited: {e:#}");
            }
        }
    };
    let principal = if app.auth.enabled() {
        let mut h = HeaderMap::new();
        let Ok(v) = format!("Bearer {}", f.token.trim()).parse() else {
            refused(UNKNOWN_TOKEN, None, "the token is not a valid header value").await;
            return failed(&next);
        };
        h.insert(header::AUTHORIZATION, v);
        match app.auth.authenticate(&h, None) {
            Ok(p) => p,
            Err(why) => {
                tracing::info!("console sign-in refused: {why}");
                refused(UNKNOWN_TOKEN, None, &why).await;
                return failed(&next);
            }
        }
    } else {
        Principal {
            name: "anonymous".into(),
            role: Some(Role::Admin),
        }
    };
    let Some(role) = principal.role.filter(|r| *r != Role::Producer) else {
        tracing::info!(principal = %principal.name, "console sign-in refused: no viewer/operator/admin role");
        refused(
            &principal.name,
            principal.role,
            "no viewer, operator or admin role",
        )
        .await;
        return failed(&next);
    };
    // A sign-in is audited: while the trail cannot take the record, nobody signs in.
    if let Err(u) = audit::check(&app.nats).await {
        tracing::warn!("console sign-in refused: {u}");
        return layout::html_response(
            StatusCode::SERVICE_UNAVAILABLE,
            maud::html! { p #refusal { "sign-in is recorded in the audit trail, which cannot take records now: " (u.to_string()) } },
        );
    }
    let mut nonce = [0u8; 16];
    if getrandom::fill(&mut nonce).is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let (_, cookie) = app
        .sessions
        .issue(&principal.name, role, now, &hex::encode(nonce));
    let mut actor = from;
    actor.who = principal.name.clone();
    actor.role = Some(role.as_str().to_owned());
    if let Err(e) = audit::record(&app.nats, &sign_record(&actor, Action::ConsoleSignIn)).await {
        tracing::error!(
            "console sign-in of {} refused: its audit record cannot be written: {e:#}",
            principal.name
        );
        return layout::html_response(
            StatusCode::SERVICE_UNAVAILABLE,
            maud::html! { p #refusal { "the sign-in cannot be recorded in the audit trail: try again shortly" } },
        );
    }
    tracing::info!(principal = %principal.name, role = role.as_str(), "console sign-in");
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, app.sessions.set_cookie(&cookie)),
            (header::LOCATION, next),
        ],
    )
        .into_response()
}

fn failed(next: &str) -> Response {
    let to = format!(
        "/ui/sign-in?failed=1&next={}",
        whale_kernel::auth::url_escape(next)
    );
    (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response()
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// Who signed in or out ("the console session" is the target: a session is not stored).
fn sign_record(actor: &audit::Actor, action: Action) -> audit::Record {
    audit::Record::new(actor, action, audit::Target::new("console", "session"))
}

/// The name recorded for a sign-in with a token whale does not know (the token is never kept).
const UNKNOWN_TOKEN: &str = "unknown token";

async fn sign_out(
    State(app): State<App>,
    ctx: Ctx,
    Caller(actor): Caller,
    Form(f): Form<CsrfForm>,
) -> Response {
    if let Err(r) = check_csrf(&app, &ctx, &f.csrf) {
        return r;
    }
    // Signing out always works; its record is written when the trail can take it.
    if let Err(e) = audit::record(&app.nats, &sign_record(&actor, Action::ConsoleSignOut)).await {
        tracing::warn!("console sign-out of {} not audited: {e:#}", actor.who);
    }
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, app.sessions.clear_cookie()),
            (header::LOCATION, "/ui/sign-in".to_owned()),
        ],
    )
        .into_response()
}

#[derive(Deserialize)]
struct Back {
    back: Option<String>,
}

/// Stores the language choice and goes back to the page it was made on.
async fn set_lang(Path(lang): Path<String>, Query(b): Query<Back>) -> Response {
    let Some(l) = Lang::parse(&lang) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let short = if l == Lang::Zh { "zh" } else { "en" };
    (
        StatusCode::SEE_OTHER,
        [
            (
                header::SET_COOKIE,
                format!(
                    "{}={short}; Path=/; SameSite=Strict; Max-Age=31536000",
                    i18n::COOKIE
                ),
            ),
            (header::LOCATION, safe_next(b.back.as_deref())),
        ],
    )
        .into_response()
}

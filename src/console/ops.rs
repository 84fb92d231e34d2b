//! The operating pages: Executions (list, filter, detail with parameters, output and log;
//! retry/pause/resume/cancel), Approvals (pending tasks, approve or deny with a reason), Dead
//! letters (retry) and the Audit trail. Every action goes through the function its JSON route
//! uses, which checks and writes the audit record under the signed-in principal.

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use maud::html;
use serde::Deserialize;
use serde_json::Value;
use whale_kernel::audit::Caller;
use whale_kernel::auth::Role;

use super::layout::{self, csrf, not_here, page, time};
use super::{check_csrf, App, Ctx};

const NO_STORE: &str = "its KV bucket cannot be opened: run `whale setup` against this NATS";

/// After an action: back to `to` with a one-line note (`?done=`), so a reload repeats nothing.
pub(super) fn done(to: &str, note: &str) -> Response {
    let sep = if to.contains('?') { '&' } else { '?' };
    let loc = format!("{to}{sep}done={}", whale_kernel::auth::url_escape(note));
    (StatusCode::SEE_OTHER, [(header::LOCATION, loc)]).into_response()
}

#[derive(Deserialize, Default)]
pub struct Note {
    pub(super) done: Option<String>,
}

pub(super) fn note(ctx: &Ctx, n: &Option<String>) -> maud::Markup {
    html! { @if let Some(n) = n { p #message .ok role="status" { (ctx.t("done")) ": " (n) } } }
}

#[derive(Deserialize, Default)]
pub struct ExecQuery {
    rule: Option<String>,
    status: Option<String>,
    cluster: Option<String>,
    /// Only executions created at or after this time (RFC 3339 or an age such as `24h`).
    since: Option<String>,
    done: Option<String>,
}

pub async fn executions(State(app): State<App>, ctx: Ctx, Query(q): Query<ExecQuery>) -> Response {
    let title = ctx.t("nav.executions");
    let Some(m) = &app.execs else {
        return page(&ctx, "/ui/executions", title, not_here(&ctx, NO_STORE));
    };
    let pick = |s: &Option<String>| s.clone().filter(|v| !v.trim().is_empty());
    let (rule, status, cluster, since) = (
        pick(&q.rule),
        pick(&q.status),
        pick(&q.cluster),
        pick(&q.since),
    );
    let since_t = match since
        .as_deref()
        .map(whale_index::time::parse_time)
        .transpose()
    {
        Ok(t) => t,
        Err(e) => {
            return layout::message(
                &ctx,
                StatusCode::BAD_REQUEST,
                ctx.t("error"),
                &format!("since: {e}"),
            )
        }
    };
    let list = match m.list(rule.as_deref(), status.as_deref()).await {
        Ok(v) => v,
        Err(e) => {
            return layout::message(
                &ctx,
                StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_GATEWAY),
                ctx.t("error"),
                &e.to_string(),
            )
        }
    };
    let rows: Vec<_> = list
        .into_iter()
        .filter(|r| cluster.as_ref().is_none_or(|c| &r.cluster == c))
        .filter(|r| {
            since_t.is_none_or(|t| {
                time::OffsetDateTime::parse(
                    &r.created,
                    &time::format_description::well_known::Rfc3339,
                )
                .is_ok_and(|c| c >= t)
            })
        })
        .take(500)
        .collect();
    page(
        &ctx,
        "/ui/executions",
        title,
        html! {
            (note(&ctx, &q.done))
            form.search method="get" action="/ui/executions" aria-label=(ctx.t("exec.filter")) {
                label for="rule" { (ctx.t("rule")) } input #rule type="text" name="rule" value=(rule.as_deref().unwrap_or(""));
                label for="status" { (ctx.t("status")) }
                select #status name="status" {
                    option value="" { (ctx.t("any")) }
                    @for s in ["requested", "scheduled", "running", "paused", "succeeded", "failed", "canceled", "timeout", "abandoned"] {
                        option value=(s) selected[status.as_deref() == Some(s)] { (s) }
                    }
                }
                label for="cluster" { (ctx.t("cluster")) } input #cluster type="text" name="cluster" value=(cluster.as_deref().unwrap_or(""));
                label for="since" { (ctx.t("audit.since")) } input #since type="text" name="since" placeholder="24h" value=(since.as_deref().unwrap_or(""));
                button type="submit" { (ctx.t("exec.filter")) }
            }
            table #executions {
                thead { tr { th { (ctx.t("exec.created")) } th { (ctx.t("rule")) } th { (ctx.t("action")) } th { (ctx.t("cluster")) } th { (ctx.t("status")) } th { (ctx.t("execution")) } th { (ctx.t("event")) } } }
                tbody {
                    @for r in &rows {
                        tr data-task=(r.task_id) {
                            td { (time(&r.created)) }
                            td { (r.rule) }
                            td { (r.action) }
                            td { (r.cluster) }
                            td.status { (r.status) }
                            td { a href={ "/ui/executions/" (r.task_id) } { (r.execution_id) } }
                            td { a href={ "/ui/trace/" (r.event_id) } { (r.event_id) } }
                        }
                    }
                }
            }
            @if rows.is_empty() { p { (ctx.t("none")) } }
        },
    )
}

pub async fn execution(
    State(app): State<App>,
    ctx: Ctx,
    Path(id): Path<String>,
    Query(n): Query<Note>,
) -> Response {
    let title = format!("{} {id}", ctx.t("execution"));
    let Some(m) = &app.execs else {
        return page(&ctx, "/ui/executions", &title, not_here(&ctx, NO_STORE));
    };
    let found = match m.get(&id).await {
        Ok(f) => f,
        Err(e) => {
            return layout::message(
                &ctx,
                StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_GATEWAY),
                ctx.t("error"),
                &e.to_string(),
            )
        }
    };
    let log = m.logs(&id).await.map(|(_, t)| t).unwrap_or_default();
    let rec = &found.record;
    let ex = serde_json::to_value(&found.execution).unwrap_or(Value::Null);
    page(
        &ctx,
        "/ui/executions",
        &title,
        html! {
            (note(&ctx, &n.done))
            dl.facts {
                dt { (ctx.t("status")) } dd #exec-status { (ex.get("status").and_then(|v| v.as_str()).unwrap_or(&rec.status)) }
                dt { (ctx.t("rule")) } dd { a href="/ui/rules" { (rec.rule) } }
                dt { (ctx.t("action")) } dd { (rec.action) }
                dt { (ctx.t("cluster")) } dd { (rec.cluster) }
                dt { (ctx.t("execution")) } dd #exec-id { (rec.execution_id) }
                dt { (ctx.t("event")) } dd { a href={ "/ui/trace/" (rec.event_id) } { (rec.event_id) } }
                dt { (ctx.t("exec.created")) } dd { (time(&rec.created)) }
            }
            @if ctx.may(Role::Operator) {
                div.actions {
                    @for (a, key) in [("retry", "exec.retry"), ("pause", "exec.pause"), ("resume", "exec.resume"), ("cancel", "exec.cancel")] {
                        form method="post" action={ "/ui/executions/" (rec.task_id) "/" (a) } {
                            (csrf(&ctx))
                            button #{ "exec-" (a) } type="submit" { (ctx.t(key)) }
                        }
                    }
                }
            }
            h2 { (ctx.t("exec.parameters")) }
            (layout::json(ex.get("parameters").unwrap_or(&Value::Null)))
            h2 { (ctx.t("exec.output")) }
            (layout::json(ex.get("result").unwrap_or(&Value::Null)))
            h2 { (ctx.t("exec.log")) }
            pre.json #exec-log { (log) }
        },
    )
}

/// What every action form goes through first: its CSRF token, the store of the stage that
/// acts (503 when this process does not hold it) and the action's name (404 when unknown).
#[allow(clippy::result_large_err)]
fn gate<'a, S, A>(
    app: &App,
    ctx: &Ctx,
    csrf: &str,
    store: &'a Option<S>,
    action: Option<A>,
    unknown: &str,
) -> Result<(&'a S, A), Response> {
    check_csrf(app, ctx, csrf)?;
    let Some(store) = store else {
        return Err(layout::message(
            ctx,
            StatusCode::SERVICE_UNAVAILABLE,
            ctx.t("error"),
            NO_STORE,
        ));
    };
    let Some(action) = action else {
        return Err(layout::message(
            ctx,
            StatusCode::NOT_FOUND,
            ctx.t("error"),
            unknown,
        ));
    };
    Ok((store, action))
}

#[derive(Deserialize)]
pub struct ActForm {
    #[serde(default)]
    csrf: String,
}

pub async fn exec_action(
    State(app): State<App>,
    ctx: Ctx,
    Caller(who): Caller,
    Path((id, action)): Path<(String, String)>,
    Form(f): Form<ActForm>,
) -> Response {
    let (m, act) = match gate(
        &app,
        &ctx,
        &f.csrf,
        &app.execs,
        whale_feedback::manage::Action::parse(&action),
        "unknown action: use retry, pause, resume or cancel",
    ) {
        Ok(g) => g,
        Err(r) => return r,
    };
    // As the JSON route: admin (and no auth) may act on any execution, others on whale's own.
    let any = who.role.as_deref().is_none_or(|r| r == "admin");
    match m.act(&id, act, Value::Null, &who, any).await {
        Ok(f) => {
            let now = f
                .execution
                .as_ref()
                .map_or(f.record.execution_id.as_str(), |e| e.id.as_str());
            done(
                &format!("/ui/executions/{id}"),
                &format!("{action} → {now}"),
            )
        }
        Err(e) => layout::message(
            &ctx,
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_GATEWAY),
            ctx.t("refused"),
            &e.to_string(),
        ),
    }
}

pub async fn approvals(State(app): State<App>, ctx: Ctx, Query(n): Query<Note>) -> Response {
    let title = ctx.t("nav.approvals");
    let Some(kv) = &app.approvals else {
        return page(&ctx, "/ui/approvals", title, not_here(&ctx, NO_STORE));
    };
    let all = match whale_approve::store::list(kv).await {
        Ok(v) => v,
        Err(e) => {
            return layout::message(
                &ctx,
                StatusCode::SERVICE_UNAVAILABLE,
                ctx.t("error"),
                &format!("{e:#}"),
            )
        }
    };
    let (pending, decided): (Vec<_>, Vec<_>) = all.into_iter().partition(|a| a.is_pending());
    page(
        &ctx,
        "/ui/approvals",
        title,
        html! {
            (note(&ctx, &n.done))
            h2 { (ctx.t("approvals.pending")) " (" (pending.len()) ")" }
            @if pending.is_empty() { p { (ctx.t("none")) } }
            @for a in &pending {
                article.approval #{ "approval-" (a.task.task_id) } {
                    h3 { (a.task.rule) " → " (a.task.action) }
                    dl.facts {
                        dt { (ctx.t("task")) } dd { (a.task.task_id) }
                        dt { (ctx.t("event")) } dd { a href={ "/ui/trace/" (a.task.event_id) } { (a.task.event_id) } }
                        dt { (ctx.t("cluster")) } dd { (a.task.cluster) }
                        dt { (ctx.t("approvals.expires")) } dd { (time(&whale_approve::store::format_time(a.expires))) }
                    }
                    (layout::json(&a.task.parameters))
                    @if ctx.may(Role::Operator) {
                        form.decide method="post" action={ "/ui/approvals/" (a.task.task_id) "/approve" } {
                            (csrf(&ctx))
                            label for={ "reason-" (a.task.task_id) } { (ctx.t("approvals.reason")) }
                            input id={ "reason-" (a.task.task_id) } type="text" name="reason" maxlength="500";
                            button.approve type="submit" { (ctx.t("approvals.approve")) }
                            button.deny type="submit" formaction={ "/ui/approvals/" (a.task.task_id) "/deny" } { (ctx.t("approvals.deny")) }
                        }
                    }
                }
            }
            h2 { (ctx.t("approvals.decided")) }
            table #decided {
                thead { tr { th { (ctx.t("time")) } th { (ctx.t("rule")) } th { (ctx.t("status")) } th { (ctx.t("approvals.by")) } th { (ctx.t("approvals.reason")) } th { (ctx.t("task")) } } }
                tbody {
                    @for a in decided.iter().take(100) {
                        tr {
                            td { (time(&whale_approve::store::format_time(a.decided.unwrap_or(a.requested)))) }
                            td { (a.task.rule) }
                            td { (a.state) }
                            td { (a.decided_by.as_deref().unwrap_or("")) }
                            td { (a.reason.as_deref().unwrap_or("")) }
                            td { a href={ "/ui/executions/" (a.task.task_id) } { (a.task.task_id) } }
                        }
                    }
                }
            }
        },
    )
}

#[derive(Deserialize)]
pub struct DecideForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: String,
}

pub async fn decide(
    State(app): State<App>,
    ctx: Ctx,
    Caller(who): Caller,
    Path((id, action)): Path<(String, String)>,
    Form(f): Form<DecideForm>,
) -> Response {
    let (kv, verdict) = match gate(
        &app,
        &ctx,
        &f.csrf,
        &app.approvals,
        whale_approve::store::Verdict::parse(&action),
        "unknown decision: approve or deny",
    ) {
        Ok(g) => g,
        Err(r) => return r,
    };
    let reason =
        Some(f.reason.trim().chars().take(500).collect::<String>()).filter(|r| !r.is_empty());
    match whale_approve::store::decide(&app.nats, kv, &id, verdict, &who, reason).await {
        Ok(a) => done("/ui/approvals", &format!("{} {}", a.task.task_id, a.state)),
        Err(e) => {
            use whale_approve::store::DecideError as E;
            let code = match &e {
                E::NotFound(_) => StatusCode::NOT_FOUND,
                E::AlreadyDecided(_) | E::TimedOut(_) => StatusCode::GONE,
                E::AuditUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                E::Internal(_) | E::AuditMissing(..) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            layout::message(&ctx, code, ctx.t("refused"), &e.to_string())
        }
    }
}

#[derive(Deserialize, Default)]
pub struct DlQuery {
    all: Option<String>,
    done: Option<String>,
}

pub async fn dead_letters(State(app): State<App>, ctx: Ctx, Query(q): Query<DlQuery>) -> Response {
    let title = ctx.t("nav.dead_letters");
    let Some(d) = &app.dead else {
        return page(&ctx, "/ui/dead-letters", title, not_here(&ctx, NO_STORE));
    };
    let all = q.all.is_some();
    let list = match d.list(all).await {
        Ok(v) => v,
        Err(e) => {
            return layout::message(
                &ctx,
                StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_GATEWAY),
                ctx.t("error"),
                &e.to_string(),
            )
        }
    };
    page(
        &ctx,
        "/ui/dead-letters",
        title,
        html! {
            (note(&ctx, &q.done))
            p { a href=(if all { "/ui/dead-letters" } else { "/ui/dead-letters?all=1" }) { (ctx.t("dl.all")) } }
            table #dead-letters {
                thead { tr { th { (ctx.t("time")) } th { (ctx.t("rule")) } th { (ctx.t("action")) } th { (ctx.t("cluster")) } th { (ctx.t("status")) } th { (ctx.t("dl.reason")) } th {} } }
                tbody {
                    @for e in list.iter().rev() {
                        tr {
                            td { (time(&e.dead_at)) }
                            td { a href={ "/ui/trace/" (e.event_id) } { (e.rule) } }
                            td { (e.action) }
                            td { (e.cluster) }
                            td { (e.state) }
                            td { (e.reason) }
                            td {
                                @if ctx.may(Role::Operator) && e.state == "dead" {
                                    form method="post" action={ "/ui/dead-letters/" (e.task_id) "/retry" } {
                                        (csrf(&ctx))
                                        button type="submit" aria-label={ (ctx.t("dl.retry")) " " (e.task_id) } { (ctx.t("dl.retry")) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if list.is_empty() { p { (ctx.t("none")) } }
        },
    )
}

pub async fn dead_letter_retry(
    State(app): State<App>,
    ctx: Ctx,
    Caller(who): Caller,
    Path(id): Path<String>,
    Form(f): Form<ActForm>,
) -> Response {
    let (d, ()) = match gate(&app, &ctx, &f.csrf, &app.dead, Some(()), "") {
        Ok(g) => g,
        Err(r) => return r,
    };
    match d.retry(&id, &who).await {
        Ok(e) => done("/ui/dead-letters", &format!("{} → {}", e.task_id, e.state)),
        Err(e) => layout::message(
            &ctx,
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_GATEWAY),
            ctx.t("refused"),
            &e.to_string(),
        ),
    }
}

#[derive(Deserialize, Default)]
pub struct AuditQuery {
    since: Option<String>,
    who: Option<String>,
    action: Option<String>,
}

pub async fn audit(State(app): State<App>, ctx: Ctx, Query(q): Query<AuditQuery>) -> Response {
    let title = ctx.t("nav.audit");
    let pick = |s: &Option<String>| s.clone().filter(|v| !v.trim().is_empty());
    let (since, who, action) = (pick(&q.since), pick(&q.who), pick(&q.action));
    let filter = match whale_kernel::audit::make_filter(
        since.as_deref(),
        who.clone(),
        action.clone(),
        Some(200),
        &app.cfg,
    ) {
        Ok(f) => f,
        Err(e) => {
            return layout::message(
                &ctx,
                StatusCode::BAD_REQUEST,
                ctx.t("error"),
                &e.to_string(),
            )
        }
    };
    let records = match whale_kernel::audit::list(&app.nats, &filter).await {
        Ok(v) => v,
        Err(e) => {
            return layout::message(
                &ctx,
                StatusCode::SERVICE_UNAVAILABLE,
                ctx.t("error"),
                &format!("{e:#}"),
            )
        }
    };
    page(
        &ctx,
        "/ui/audit",
        title,
        html! {
            form.search method="get" action="/ui/audit" {
                label for="since" { (ctx.t("audit.since")) } input #since type="text" name="since" placeholder="24h" value=(since.as_deref().unwrap_or(""));
                label for="who" { (ctx.t("audit.who")) } input #who type="text" name="who" value=(who.as_deref().unwrap_or(""));
                label for="action" { (ctx.t("action")) } input #action type="text" name="action" placeholder="exec / approval.approve" value=(action.as_deref().unwrap_or(""));
                button type="submit" { (ctx.t("exec.filter")) }
            }
            table #audit {
                thead { tr { th { (ctx.t("time")) } th { (ctx.t("audit.who")) } th { (ctx.t("role")) } th { (ctx.t("action")) } th { (ctx.t("audit.target")) } th { (ctx.t("audit.outcome")) } th { (ctx.t("approvals.reason")) } } }
                tbody {
                    @for r in &records {
                        tr {
                            td { (time(&r.at)) }
                            td.who { (r.who) " " span.muted { "(" (r.via) ", " (r.from) ")" } }
                            td { (r.role.as_deref().unwrap_or("")) }
                            td.action { (r.action) }
                            td {
                                @if let Some(e) = &r.event_id { a href={ "/ui/trace/" (e) } { (r.target.kind) " " (r.target.id) } }
                                @else { (r.target.kind) " " (r.target.id) }
                            }
                            td { (r.outcome.as_str()) @if let Some(e) = &r.error { ": " (e) } }
                            td { (r.reason.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
            @if records.is_empty() { p { (ctx.t("none")) } }
        },
    )
}

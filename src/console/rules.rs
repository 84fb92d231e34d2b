//! The Rules page: the active rule set (version, when it was applied, each file); the history
//! of versions (who applied, when, the git commit and author) with a diff between two of them
//! and rollback for admins (`rules_api::rollback`, audited as `rules.rollback`); "try this rule
//! set on an event": a rule file (or the active set) evaluated on a stored event or a pasted
//! one, rule by rule — matched with its rendered parameters, or why not; and a backtest over a
//! time range (`backtest::dry_run`, the report of `whale replay --dry-run`). Nothing but a
//! rollback changes anything.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::Value;
use whale_rules::{RuleSet, RuleSource};

use whale_kernel::audit::{self, Action, Caller};
use whale_kernel::auth::Role;

use super::layout::{self, csrf, page, time};
use super::{check_csrf, App, Ctx};
use crate::backtest::{self, Scope};
use crate::rules_api;
use crate::rules_store;

/// Versions the page lists (the newest; `whale rules history --limit` shows more).
const HISTORY_ROWS: usize = 50;

fn try_form(ctx: &Ctx, rules: &str, event: &str) -> Markup {
    html! {
        section aria-labelledby="h-try" {
            h2 #h-try { (ctx.t("rules.try")) }
            form method="post" action="/ui/rules/try" {
                (csrf(ctx))
                label for="try-rules" { (ctx.t("rules.try_text")) }
                textarea #try-rules name="rules" rows="8" { (rules) }
                label for="try-event" { (ctx.t("rules.try_event")) }
                textarea #try-event name="event" rows="4" required { (event) }
                button #try-run type="submit" { (ctx.t("rules.try_run")) }
            }
        }
    }
}

pub async fn page_(app: &App, ctx: &Ctx, extra: Markup, rules: &str, event: &str) -> Response {
    let active = rules_store::active(&app.nats).await;
    let applied_at = rules_store::active_entry(&app.nats)
        .await
        .ok()
        .flatten()
        .map(|e| e.applied_at)
        .unwrap_or_default();
    page(
        ctx,
        "/ui/rules",
        ctx.t("nav.rules"),
        html! {
            (extra)
            @match &active {
                Err(e) => p.bad { (format!("{e:#}")) },
                Ok(None) => p { (ctx.t("rules.none")) },
                Ok(Some(s)) => {
                    p #rules-version { (ctx.t("rules.version")) ": " code { (s.version) } ", " (ctx.t("rules.applied")) " " (time(&applied_at)) }
                    h2 { (ctx.t("rules.files")) }
                    @let names = RuleSet::compile(&s.sources).map(|set| set.rules().iter().map(|r| (r.name().to_owned(), r.action().to_owned())).collect::<Vec<_>>()).unwrap_or_default();
                    ul { @for (n, a) in &names { li #{ "rule-" (n) } { strong { (n) } " → " (a) } } }
                    @for f in &s.sources {
                        details { summary { code { (f.path) } } pre.json { (f.text) } }
                    }
                }
            }
            (history(app, ctx).await)
            (try_form(ctx, rules, event))
            (backtest_form(ctx))
        },
    )
}

/// The history table, the diff chooser and, for admins, a rollback button per earlier version.
async fn history(app: &App, ctx: &Ctx) -> Markup {
    let entries =
        match rules_store::history(&app.nats, HISTORY_ROWS.min(app.cfg.rules.max_history)).await {
            Ok(e) => e,
            Err(e) => return html! { p.bad { (format!("{e:#}")) } },
        };
    let active = entries.first().map(|e| e.version.clone());
    let mut versions: Vec<&str> = Vec::new();
    for e in &entries {
        if !versions.contains(&e.version.as_str()) {
            versions.push(&e.version);
        }
    }
    let admin = ctx.may(Role::Admin);
    html! {
        section aria-labelledby="h-history" {
            h2 #h-history { (ctx.t("rules.history")) }
            table #rules-history {
                thead { tr {
                    th { (ctx.t("rules.applied_at")) } th { (ctx.t("action")) } th { (ctx.t("rules.ver")) }
                    th.num { (ctx.t("nav.rules")) } th { (ctx.t("rules.by")) } th { (ctx.t("rules.git")) } th {}
                } }
                tbody {
                    @for (i, e) in entries.iter().enumerate() {
                        tr data-version=(e.version) {
                            td { (time(&e.applied_at)) }
                            td { (e.action) }
                            td { code { (e.version) } @if i == 0 { " " span.ok { "(" (ctx.t("rules.active")) ")" } } }
                            td.num { (e.rules.map_or_else(|| "-".to_owned(), |n| n.to_string())) }
                            td { (e.provenance.by.as_deref().unwrap_or("")) " " span.muted { (e.provenance.via.as_deref().unwrap_or("")) } }
                            td {
                                @if let Some(g) = &e.provenance.git {
                                    code { (&g.commit[..g.commit.len().min(12)]) } " " (g.author) br; span.muted { (g.subject) }
                                    @if g.dirty { " " span.bad { (ctx.t("rules.dirty")) } }
                                }
                            }
                            td {
                                @if admin && active.as_deref() != Some(e.version.as_str()) {
                                    form method="post" action="/ui/rules/rollback" {
                                        (csrf(ctx))
                                        input type="hidden" name="version" value=(e.version);
                                        button.rollback type="submit" aria-label={ (ctx.t("rules.rollback")) " " (e.version) } { (ctx.t("rules.rollback")) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if entries.is_empty() { p { (ctx.t("none")) } }
            @if versions.len() > 1 {
                form.search #diff-form method="get" action="/ui/rules/diff" aria-label=(ctx.t("rules.diff")) {
                    label for="diff-a" { (ctx.t("rules.diff_from")) }
                    select #diff-a name="a" { @for (i, v) in versions.iter().enumerate() { option value=(v) selected[i == 1] { (v) } } }
                    label for="diff-b" { (ctx.t("rules.diff_to")) }
                    select #diff-b name="b" { @for (i, v) in versions.iter().enumerate() { option value=(v) selected[i == 0] { (v) } } }
                    button #diff-run type="submit" { (ctx.t("rules.diff")) }
                }
            }
        }
    }
}

fn backtest_form(ctx: &Ctx) -> Markup {
    html! {
        section aria-labelledby="h-backtest" {
            h2 #h-backtest { (ctx.t("rules.backtest")) }
            @if ctx.may(Role::Operator) {
                form.search method="post" action="/ui/rules/backtest" {
                    (csrf(ctx))
                    label for="bt-from" { (ctx.t("rules.bt_from")) } input #bt-from type="text" name="from" value="24h" required;
                    label for="bt-to" { (ctx.t("rules.bt_to")) } input #bt-to type="text" name="to" value="now";
                    label for="bt-type" { (ctx.t("rules.bt_type")) } input #bt-type type="text" name="event_type";
                    label for="bt-rule" { (ctx.t("rule")) } input #bt-rule type="text" name="rule";
                    button #bt-run type="submit" { (ctx.t("rules.bt_run")) }
                }
            } @else { p.muted { (ctx.t("rules.bt_operator")) } }
        }
    }
}

#[derive(Deserialize)]
pub struct DiffQuery {
    #[serde(default)]
    a: String,
    #[serde(default)]
    b: String,
}

/// The unified diff between two versions (`rules_api::diff`, as `GET /v1/rules/diff`).
pub async fn diff(State(app): State<App>, ctx: Ctx, Query(q): Query<DiffQuery>) -> Response {
    let files = match rules_api::diff(
        &app.nats,
        q.a.trim(),
        q.b.trim(),
        None,
        app.cfg.rules.max_diff_bytes,
    )
    .await
    {
        Ok(f) => f,
        Err((code, msg)) => return layout::message(&ctx, code, ctx.t("error"), &msg),
    };
    let extra = html! {
        section #rules-diff aria-labelledby="h-diff" {
            h2 #h-diff { (ctx.t("rules.diff")) " " code { (q.a) } " → " code { (q.b) } }
            @if files.is_empty() { p { (ctx.t("rules.same")) } }
            @for f in &files {
                h3 { code { (f.path) } " (" (f.status) ")" }
                pre.json.diff {
                    @for l in f.diff.lines() {
                        @let class = if l.starts_with('+') && !l.starts_with("+++") { "add" } else if l.starts_with('-') && !l.starts_with("---") { "del" } else { "" };
                        span class=(class) { (l) } "\n"
                    }
                }
            }
        }
    };
    page_(&app, &ctx, extra, "", "").await
}

#[derive(Deserialize)]
pub struct RollbackForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    version: String,
}

/// Makes an earlier version active again (admin; `rules_api::rollback`, which checks the audit
/// trail and records `rules.rollback` under the signed-in principal).
pub async fn rollback(
    State(app): State<App>,
    ctx: Ctx,
    Caller(actor): Caller,
    Form(f): Form<RollbackForm>,
) -> Response {
    if let Err(r) = check_csrf(&app, &ctx, &f.csrf) {
        return r;
    }
    match rules_api::rollback(&app.nats, f.version.trim(), &actor).await {
        Ok(r) => {
            let note = if r.changed {
                format!("{} {}", ctx.t("rules.rolled_back"), r.entry.version)
            } else {
                format!("{} {}", r.entry.version, ctx.t("rules.already"))
            };
            super::ops::done("/ui/rules", &note)
        }
        Err(e) => layout::message(&ctx, e.status(), ctx.t("refused"), &e.to_string()),
    }
}

#[derive(Deserialize)]
pub struct BacktestForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    event_type: String,
    #[serde(default)]
    rule: String,
}

/// The active set over a time range, compared with what fired (`backtest::dry_run`, bounded
/// by `console.backtest_max_events`), audited as `replay.dry_run` like `whale replay --dry-run`.
pub async fn backtest(
    State(app): State<App>,
    ctx: Ctx,
    Caller(actor): Caller,
    Form(f): Form<BacktestForm>,
) -> Response {
    if let Err(r) = check_csrf(&app, &ctx, &f.csrf) {
        return r;
    }
    let bad = |msg: String| layout::message(&ctx, StatusCode::BAD_REQUEST, ctx.t("error"), &msg);
    let time = |what: &str, v: &str| {
        whale_kernel::history::parse_time_arg(if v.trim().is_empty() { "now" } else { v })
            .map_err(|e| format!("{what}: {e:#}"))
    };
    let (from, to) = match (time("from", &f.from), time("to", &f.to)) {
        (Ok(a), Ok(b)) if a < b => (a, b),
        (Ok(_), Ok(_)) => return bad("from must be before to".into()),
        (Err(e), _) | (_, Err(e)) => return bad(e),
    };
    let pick = |s: &str| Some(s.trim().to_owned()).filter(|s| !s.is_empty());
    let scope = Scope {
        from,
        to,
        event_type: pick(&f.event_type),
        rule: pick(&f.rule),
        examples: 3,
        max_events: Some(app.cfg.console.backtest_max_events),
    };
    let set = match rules_store::active(&app.nats).await {
        Ok(Some(s)) => match RuleSet::compile(&s.sources) {
            Ok(set) => set,
            Err(e) => return bad(e.to_string()),
        },
        Ok(None) => return bad(ctx.t("rules.none").to_owned()),
        Err(e) => return bad(format!("{e:#}")),
    };
    if let Some(r) = scope.rule.as_deref().filter(|r| set.get(r).is_none()) {
        return bad(format!("rule {r:?} is not in the active rule set"));
    }
    // Audited as the CLI's dry run: while the trail cannot take the record, nothing runs.
    if let Err(u) = audit::check(&app.nats).await {
        return layout::message(
            &ctx,
            StatusCode::SERVICE_UNAVAILABLE,
            ctx.t("refused"),
            &u.to_string(),
        );
    }
    let report = match backtest::dry_run(&app.cfg, &app.nats, &set, false, &scope, |_| {}).await {
        Ok(r) => r,
        Err(e) => {
            return layout::message(
                &ctx,
                StatusCode::BAD_GATEWAY,
                ctx.t("error"),
                &format!("{e:#}"),
            )
        }
    };
    let rec = backtest::record(&actor, Action::ReplayDryRun, &scope)
        .details(backtest::dry_run_details(&report, None, &scope));
    if let Err(e) = audit::record(&app.nats, &rec).await {
        return layout::message(
            &ctx,
            StatusCode::INTERNAL_SERVER_ERROR,
            ctx.t("error"),
            &format!("the backtest ran, but its audit record is missing: {e:#}"),
        );
    }
    page_(&app, &ctx, report_view(&ctx, &report), "", "").await
}

/// The dry-run report: the same lines `whale replay --dry-run` prints.
fn report_view(ctx: &Ctx, r: &backtest::Report) -> Markup {
    let t = |v| whale_kernel::envelope::format_time(v);
    html! {
        section #backtest-result aria-live="polite" {
            h2 { (ctx.t("rules.backtest")) " " code { (r.rule_set) } }
            p #bt-summary {
                (ctx.t("rules.bt_examined")) ": " strong #bt-events { (r.events) }
                " (" (time(&t(r.from))) " → " (time(&t(r.to))) ")"
                @if r.limited { " — " span.bad #bt-limited { (ctx.t("rules.bt_limited")) } }
                @if r.unreadable > 0 { " — " (r.unreadable) " " (ctx.t("rules.bt_unreadable")) }
            }
            @for w in &r.warnings { p.notice role="status" { (w) } }
            ul.muted { @for s in &r.compared_with { li { (ctx.t("rules.bt_compared")) " " (s.describe()) } } }
            @for g in &r.not_comparable {
                p.muted { (ctx.t("rules.bt_nc")) " " (t(g.from)) ".." (t(g.to)) " (" (g.matches) "): " (g.reason) }
            }
            table #bt-rules {
                thead { tr {
                    th { (ctx.t("rule")) } th.num { (ctx.t("rules.bt_would")) } th.num { (ctx.t("rules.bt_fired")) }
                    th.num { "+" (ctx.t("rules.bt_new")) } th.num { "-" (ctx.t("rules.bt_gone")) } th.num { "N/C" }
                    th.num { (ctx.t("rules.bt_tasks")) } th { (ctx.t("rules.bt_examples")) }
                } }
                tbody {
                    @for l in &r.rules {
                        tr data-rule=(l.rule) {
                            td { (l.rule) }
                            td.num.would { (l.would_match) } td.num.fired { (l.actually_matched) }
                            td.num { (l.added) } td.num { (l.removed) } td.num { (l.not_comparable) }
                            td.num { (l.tasks) }
                            td { @for e in &l.examples { a href={ "/ui/trace/" (e.split(['[', ' ']).next().unwrap_or(e)) } { (e) } " " } }
                        }
                    }
                }
            }
            @if r.rules.is_empty() { p { (ctx.t("none")) } }
        }
    }
}

pub async fn show(State(app): State<App>, ctx: Ctx, Query(n): Query<super::ops::Note>) -> Response {
    page_(&app, &ctx, super::ops::note(&ctx, &n.done), "", "").await
}

#[derive(Deserialize)]
pub struct TryForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    rules: String,
    #[serde(default)]
    event: String,
}

/// Evaluates the rule text (or the active set) on the event and shows each rule's result.
pub async fn try_rules(State(app): State<App>, ctx: Ctx, Form(f): Form<TryForm>) -> Response {
    if let Err(r) = check_csrf(&app, &ctx, &f.csrf) {
        return r;
    }
    let result = evaluate(&app, &f.rules, f.event.trim()).await;
    let extra = match result {
        Err(e) => html! { p #message .bad role="alert" { (e) } },
        Ok(rows) => html! {
            section #try-result aria-live="polite" {
                h2 { (ctx.t("rules.try")) }
                @if rows.is_empty() { p { (ctx.t("none")) } }
                ul {
                    @for (rule, outcome) in &rows {
                        li {
                            strong { (rule) } ": "
                            @match outcome {
                                Ok(params) => { span.ok { (ctx.t("rules.matched")) } " — " (ctx.t("rules.rendered")) (layout::json(params)) }
                                Err(why) => { span.bad { (ctx.t("rules.not_matched")) } " — " (why) }
                            }
                        }
                    }
                }
            }
        },
    };
    page_(&app, &ctx, extra, &f.rules, &f.event).await
}

type Row = (String, Result<Value, String>);

async fn evaluate(app: &App, rules: &str, event: &str) -> Result<Vec<Row>, String> {
    let sources = if rules.trim().is_empty() {
        rules_store::active(&app.nats)
            .await
            .map_err(|e| format!("{e:#}"))?
            .ok_or("no active rule set: paste a rule file")?
            .sources
    } else {
        vec![RuleSource {
            path: "console".into(),
            text: rules.to_owned(),
        }]
    };
    let set = RuleSet::compile(&sources).map_err(|e| e.to_string())?;
    let ev: Value = if event.starts_with('{') {
        serde_json::from_str(event).map_err(|e| format!("the event is not JSON: {e}"))?
    } else {
        let ix = app
            .index
            .as_ref()
            .ok_or("this process has no index to read the event from: paste the event's JSON")?;
        whale_index::trace::trace(ix.as_ref(), event)
            .await
            .map_err(|e| e.to_string())?
            .event
            .ok_or_else(|| format!("the index holds no accepted event {event:?}"))?
    };
    let ty = ev
        .get("event_type")
        .and_then(|v| v.as_str())
        .ok_or("the event has no event_type")?
        .to_owned();
    let input = whale_rules::Input::new(ev);
    let mut out = Vec::new();
    for rule in set.rules_for(&ty).iter() {
        let e = rule.evaluate(&input);
        let r = if e.matched {
            rule.render(&input)
                .map(|t| t.parameters)
                .map_err(|e| e.to_string())
        } else {
            Err(crate::cli::trace::why(e.failed))
        };
        out.push((rule.name().to_owned(), r));
    }
    Ok(out)
}

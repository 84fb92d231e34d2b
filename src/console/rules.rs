//! The Rules page: the active rule set (version, when it was applied, each file), and "try this
//! rule set on an event": a rule file (or the active set) evaluated on a stored event or a
//! pasted one, rule by rule — matched with its rendered parameters, or why not. Nothing is
//! applied or published. Rule history, diff and rollback come with `whale rules history`.

use axum::extract::State;
use axum::response::Response;
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::Value;
use whale_rules::{RuleSet, RuleSource};

use super::layout::{self, csrf, page, time};
use super::{check_csrf, App, Ctx};
use crate::rules_store;

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
            (try_form(ctx, rules, event))
        },
    )
}

pub async fn show(State(app): State<App>, ctx: Ctx) -> Response {
    page_(&app, &ctx, html! {}, "", "").await
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

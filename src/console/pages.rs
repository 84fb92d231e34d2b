//! The reading pages: Overview (backlog, streams, clusters' breaker and drain, recent
//! rejections, failures and dead letters; refreshed over SSE), Events (the query language of
//! `whale events search`, a time range, counts by type and source, paging) and the Trace of
//! one event (`whale trace`'s story, each step linked).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};
use serde::Deserialize;
use whale_kernel::kv::Bucket;
use whale_kernel::subjects;

use super::layout::{self, not_here, page, time};
use super::{App, Console, Ctx};

const INDEX_ELSEWHERE: &str = "the embedded index lives in the process that runs the index stage: open the console of that `whale run` (or configure OpenSearch, reachable from any process)";

/// Stream sizes, for rates between two refreshes.
type Counts = BTreeMap<String, u64>;

async fn overview_body(
    app: &Console,
    ctx: &Ctx,
    before: Option<(&Counts, f64)>,
) -> (Markup, Counts) {
    let status = whale_kernel::status::status(&app.nats, &app.cfg).await;
    let mut counts = Counts::new();
    let clusters = cluster_rows(app).await;
    let rejections = match &app.index {
        Some(ix) => recent(app, ix.as_ref(), "rejected", 5).await,
        None => Err(INDEX_ELSEWHERE.to_owned()),
    };
    let failures = match &app.execs {
        Some(m) => m
            .list(None, Some("failed"))
            .await
            .map(|v| v.into_iter().take(5).collect::<Vec<_>>())
            .map_err(|e| e.to_string()),
        None => Err("the executions store cannot be opened (run `whale setup`)".into()),
    };
    let dead = match &app.dead {
        Some(d) => d
            .list(false)
            .await
            .map(|v| v.into_iter().take(5).collect::<Vec<_>>())
            .map_err(|e| e.to_string()),
        None => Err("dead letters cannot be read (run `whale setup`)".into()),
    };
    let m = html! {
        @match &status {
            Err(e) => p.bad { "NATS: " (format!("{e:#}")) },
            Ok(st) => {
                section aria-labelledby="h-backlog" {
                    h2 #h-backlog { (ctx.t("overview.backlog")) }
                    table #backlog {
                        thead { tr { th { (ctx.t("stage")) } th { (ctx.t("consumer")) } th.num { (ctx.t("pending")) } th.num { (ctx.t("ack_pending")) } th.num { (ctx.t("redelivered")) } } }
                        tbody {
                            @for c in &st.consumers {
                                tr {
                                    td { (c.stage) } td { (c.consumer) }
                                    @if let Some(e) = &c.error { td colspan="3" { (e) } } @else {
                                        td.num { (c.pending) } td.num { (c.ack_pending) } td.num { (c.redelivered) }
                                    }
                                }
                            }
                        }
                    }
                }
                section aria-labelledby="h-streams" {
                    h2 #h-streams { (ctx.t("overview.streams")) }
                    table {
                        thead { tr { th { (ctx.t("stream")) } th.num { (ctx.t("messages")) } th.num { (ctx.t("rate")) } } }
                        tbody {
                            @for s in &st.streams {
                                @let _ = counts.insert(s.name.clone(), s.messages);
                                tr {
                                    td { (s.name) }
                                    td.num { (s.messages) }
                                    td.num {
                                        @match before.and_then(|(b, secs)| b.get(&s.name).map(|n| (s.messages.saturating_sub(*n)) as f64 / secs.max(0.001))) {
                                            Some(r) => (format!("{r:.1}")),
                                            None => "—",
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        section aria-labelledby="h-clusters" {
            h2 #h-clusters { (ctx.t("overview.clusters")) }
            @match &clusters {
                Err(e) => p.bad { (e) },
                Ok(rows) => table {
                    thead { tr { th { (ctx.t("cluster")) } th { (ctx.t("breaker")) } th { (ctx.t("drain")) } } }
                    tbody {
                        @for (name, breaker, drained) in rows {
                            tr {
                                td { (name) }
                                td.(if *breaker { "bad" } else { "ok" }) { (if *breaker { ctx.t("open") } else { ctx.t("closed") }) }
                                td { (if *drained { ctx.t("drained") } else { ctx.t("serving") }) }
                            }
                        }
                    }
                },
            }
        }
        section aria-labelledby="h-rej" {
            h2 #h-rej { a href="/ui/events?kind=rejected" { (ctx.t("overview.rejections")) } }
            @match &rejections {
                Err(e) => (not_here(ctx, e)),
                Ok(docs) if docs.is_empty() => p { (ctx.t("none")) },
                Ok(docs) => ul {
                    @for d in docs {
                        li {
                            (time(&whale_index::time::format_ms(d.time))) " "
                            @if let Some(id) = &d.event_id { a href={ "/ui/trace/" (id) } { (id) } }
                            " " (d.event_type.as_deref().unwrap_or("?")) ": "
                            (d.detail.as_ref().and_then(|v| v.get("reason")).map(|v| whale_index::trace::compact(v, 160)).unwrap_or_else(|| whale_index::trace::compact(&d.record, 160)))
                        }
                    }
                },
            }
        }
        section aria-labelledby="h-fail" {
            h2 #h-fail { a href="/ui/executions?status=failed" { (ctx.t("overview.failures")) } }
            @match &failures {
                Err(e) => (not_here(ctx, e)),
                Ok(v) if v.is_empty() => p { (ctx.t("none")) },
                Ok(v) => ul {
                    @for r in v {
                        li { (time(&r.created)) " " a href={ "/ui/executions/" (r.task_id) } { (r.rule) " → " (r.action) } " " (r.status) }
                    }
                },
            }
        }
        section aria-labelledby="h-dl" {
            h2 #h-dl { a href="/ui/dead-letters" { (ctx.t("nav.dead_letters")) } }
            @match &dead {
                Err(e) => (not_here(ctx, e)),
                Ok(v) if v.is_empty() => p { (ctx.t("none")) },
                Ok(v) => ul {
                    @for d in v {
                        li { (time(&d.dead_at)) " " a href={ "/ui/trace/" (d.event_id) } { (d.rule) } " " (d.cluster) ": " (d.reason) }
                    }
                },
            }
        }
    };
    (m, counts)
}

/// (cluster, breaker open, drained) for every configured cluster, from the reports dispatch
/// workers keep in `whale_state` (no call to StackStorm: the page stays fast).
async fn cluster_rows(app: &Console) -> Result<Vec<(String, bool, bool)>, String> {
    let kv = Bucket::open(&app.nats, subjects::KV_STATE)
        .await
        .map_err(|e| format!("{e:#}"))?;
    let mut out = Vec::new();
    for name in app.cfg.clusters.keys() {
        let breaker = kv
            .get(&whale_dispatch::state::breaker_key(name))
            .await
            .ok()
            .flatten()
            .and_then(|v| serde_json::from_slice::<whale_dispatch::state::BreakerReport>(&v).ok())
            .is_some_and(|b| b.state == "open");
        let drained = kv
            .get(&whale_dispatch::state::drain_key(name))
            .await
            .ok()
            .flatten()
            .is_some_and(|v| whale_dispatch::state::DrainRecord::parse(&v).drained);
        out.push((name.clone(), breaker, drained));
    }
    Ok(out)
}

async fn recent(
    app: &Console,
    ix: &dyn whale_index::backend::Backend,
    kind: &str,
    n: usize,
) -> Result<Vec<whale_index::doc::Doc>, String> {
    let s = whale_index::http::make_search("*", None, None, Some(n), Some(kind), &app.cfg.index)?;
    ix.search(&s)
        .await
        .map(|h| h.hits)
        .map_err(|e| e.to_string())
}

pub async fn overview(State(app): State<App>, ctx: Ctx) -> Response {
    let (body, _) = overview_body(&app, &ctx, None).await;
    page(
        &ctx,
        "/ui/",
        ctx.t("nav.overview"),
        html! {
            p.muted { (ctx.t("overview.live")) " · whale run --stages " (app.stages.join(",")) }
            div #live data-live="/ui/live" { (body) }
        },
    )
}

/// Longest life of one live stream.
const LIVE_MAX: Duration = Duration::from_secs(600);

/// `text/event-stream`: the overview's body again every 5 s, with rates since the last one.
pub async fn live(State(app): State<App>, ctx: Ctx) -> Response {
    let stream = futures::stream::unfold(
        (
            app,
            ctx,
            None::<(Counts, std::time::Instant, std::time::Instant)>,
        ),
        |(app, ctx, last)| async move {
            if last.is_some() {
                let mut stop = app.stop.clone();
                let stopped = tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => false,
                    r = stop.wait_for(|s| *s) => r.is_ok(),
                };
                // Ends on shutdown (so the server can drain) and after LIVE_MAX (the browser
                // reconnects on its own).
                if stopped
                    || last
                        .as_ref()
                        .is_some_and(|(_, _, since)| since.elapsed() > LIVE_MAX)
                {
                    return None;
                }
            }
            let before = last
                .as_ref()
                .map(|(c, at, _)| (c, at.elapsed().as_secs_f64()));
            let since = last.as_ref().map_or_else(std::time::Instant::now, |l| l.2);
            let (m, counts) = overview_body(&app, &ctx, before).await;
            let ev = Event::default().event("overview").data(m.into_string());
            Some((
                Ok::<_, Infallible>(ev),
                (app, ctx, Some((counts, std::time::Instant::now(), since))),
            ))
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

#[derive(Deserialize, Default)]
pub struct EventsQuery {
    #[serde(default)]
    q: String,
    from: Option<String>,
    to: Option<String>,
    kind: Option<String>,
    #[serde(default)]
    page: usize,
}

/// Hits per page.
const PAGE: usize = 50;

pub async fn events(State(app): State<App>, ctx: Ctx, Query(p): Query<EventsQuery>) -> Response {
    let title = ctx.t("nav.events");
    let nonempty = |s: &Option<String>| s.clone().filter(|v| !v.trim().is_empty());
    let (from, to, kind) = (nonempty(&p.from), nonempty(&p.to), nonempty(&p.kind));
    let form = html! {
        form.search method="get" action="/ui/events" role="search" {
            label for="q" { (ctx.t("events.query")) }
            input #q type="search" name="q" value=(p.q) placeholder="type:vm.disk_usage AND detail.host:web-*";
            label for="from" { (ctx.t("events.from")) }
            input #from type="text" name="from" value=(from.as_deref().unwrap_or("")) placeholder="24h / 2026-01-01T00:00:00Z";
            label for="to" { (ctx.t("events.to")) }
            input #to type="text" name="to" value=(to.as_deref().unwrap_or("")) placeholder="now";
            label for="kind" { (ctx.t("events.kind")) }
            input #kind type="text" name="kind" value=(kind.as_deref().unwrap_or("")) placeholder="event,rejected";
            button #search type="submit" { (ctx.t("events.search")) }
        }
    };
    let Some(ix) = &app.index else {
        return page(
            &ctx,
            "/ui/events",
            title,
            html! { (form) (not_here(&ctx, INDEX_ELSEWHERE)) },
        );
    };
    let q = if p.q.trim().is_empty() {
        "*"
    } else {
        p.q.as_str()
    };
    let page_no = p.page.min(app.cfg.index.search_max_limit / PAGE);
    let want = (page_no + 1) * PAGE;
    let make = |limit: usize| {
        whale_index::http::make_search(
            q,
            from.as_deref(),
            to.as_deref(),
            Some(limit.min(app.cfg.index.search_max_limit)),
            kind.as_deref(),
            &app.cfg.index,
        )
    };
    let (s, sample) = match (make(want), make(app.cfg.console.count_sample)) {
        (Ok(s), Ok(c)) => (s, c),
        (Err(e), _) | (_, Err(e)) => {
            let mut r = page(
                &ctx,
                "/ui/events",
                title,
                html! { (form) p #message .bad role="alert" { (e) } },
            );
            *r.status_mut() = StatusCode::BAD_REQUEST;
            return r;
        }
    };
    let (hits, counted) = match tokio::try_join!(ix.search(&s), ix.search(&sample)) {
        Ok(v) => v,
        Err(e) => {
            return layout::message(
                &ctx,
                StatusCode::SERVICE_UNAVAILABLE,
                ctx.t("error"),
                &e.to_string(),
            );
        }
    };
    let mut by_type: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_source: BTreeMap<String, u64> = BTreeMap::new();
    for d in &counted.hits {
        *by_type
            .entry(
                d.event_type
                    .clone()
                    .unwrap_or_else(|| format!("({})", d.kind)),
            )
            .or_default() += 1;
        *by_source
            .entry(d.source.clone().unwrap_or_else(|| "—".into()))
            .or_default() += 1;
    }
    let shown: Vec<_> = hits.hits.iter().skip(page_no * PAGE).collect();
    let link = |n: usize| {
        let mut u = format!(
            "/ui/events?q={}&page={n}",
            whale_kernel::auth::url_escape(&p.q)
        );
        for (k, v) in [("from", &from), ("to", &to), ("kind", &kind)] {
            if let Some(v) = v {
                u.push_str(&format!("&{k}={}", whale_kernel::auth::url_escape(v)));
            }
        }
        u
    };
    let more = (hits.total as usize) > want;
    let counts = |title: &str, m: &BTreeMap<String, u64>| {
        let mut v: Vec<_> = m.iter().collect();
        v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        html! {
            div.counts {
                h3 { (title) }
                ul { @for (k, n) in v.iter().take(10) { li { (k) ": " strong { (n) } } } }
            }
        }
    };
    page(
        &ctx,
        "/ui/events",
        title,
        html! {
            (form)
            p #total { strong { (hits.total) } " " (ctx.t("events.total")) }
            div.countbox {
                p.muted { (ctx.t("events.sample")) " " (counted.hits.len()) }
                (counts(ctx.t("events.by_type"), &by_type))
                (counts(ctx.t("events.by_source"), &by_source))
            }
            table #hits {
                thead { tr { th { (ctx.t("time")) } th { (ctx.t("kind")) } th { (ctx.t("type")) } th { (ctx.t("source")) } th { (ctx.t("event")) } th { (ctx.t("summary")) } } }
                tbody {
                    @for d in &shown {
                        tr {
                            td { (time(&whale_index::time::format_ms(d.time))) }
                            td { (d.kind) }
                            td { (d.event_type.as_deref().unwrap_or("")) }
                            td { (d.source.as_deref().unwrap_or("")) }
                            td { @if let Some(id) = &d.event_id { a.trace href={ "/ui/trace/" (id) } { (id) } } }
                            td.summary { (whale_index::trace::compact(d.detail.as_ref().unwrap_or(&d.record), 140)) }
                        }
                    }
                }
            }
            nav.pager aria-label="pages" {
                @if page_no > 0 { a rel="prev" href=(link(page_no - 1)) { "← " (ctx.t("events.newer")) } }
                @if more { a rel="next" href=(link(page_no + 1)) { (ctx.t("events.older")) " →" } }
            }
        },
    )
}

pub async fn trace(State(app): State<App>, ctx: Ctx, Path(id): Path<String>) -> Response {
    let title = format!("{} {id}", ctx.t("trace.title"));
    let Some(ix) = &app.index else {
        return page(&ctx, "/ui/events", &title, not_here(&ctx, INDEX_ELSEWHERE));
    };
    let mut t = match whale_index::trace::trace(ix.as_ref(), &id).await {
        Ok(t) => t,
        Err(e) => {
            return layout::message(
                &ctx,
                StatusCode::SERVICE_UNAVAILABLE,
                ctx.t("error"),
                &e.to_string(),
            )
        }
    };
    if let Some(ev) = t.event.clone() {
        if let Some(ty) = ev
            .get("event_type")
            .and_then(|v| v.as_str())
            .map(str::to_owned)
        {
            crate::cli::trace::explain(&app.nats, &app.cfg, &mut t, &ev, &ty).await;
        }
    }
    let mut r = page(
        &ctx,
        "/ui/events",
        &title,
        html! {
            p #outcome { (ctx.t("trace.outcome")) ": " strong { (t.outcome) } }
            @if t.steps.is_empty() { p.bad { (ctx.t("trace.unknown")) } }
            ol.timeline #timeline {
                @for s in &t.steps {
                    li.step data-kind=(s.kind) {
                        div.when { (time(&s.seen)) }
                        div.what {
                            strong.kind { (s.kind) } " " (s.summary)
                            div.links {
                                @if let Some(r) = &s.rule { a href={ "/ui/rules#rule-" (r) } { (ctx.t("rule")) ": " (r) } " " }
                                @if let Some(tk) = &s.task_id {
                                    @if s.kind == "approval" || s.kind == "decision" { a href="/ui/approvals" { (ctx.t("nav.approvals")) } " " }
                                    a href={ "/ui/executions/" (tk) } { (ctx.t("task")) ": " (tk) } " "
                                }
                                @if let Some(c) = &s.cluster { span { (ctx.t("cluster")) ": " (c) } " " }
                                @if let Some(x) = &s.execution_id { span { (ctx.t("execution")) ": " (x) } " " }
                                @if s.kind == "dead_letter" { a href="/ui/dead-letters" { (ctx.t("nav.dead_letters")) } }
                                @if s.kind == "audit" { a href="/ui/audit" { (ctx.t("nav.audit")) } }
                            }
                            @for d in &s.details { div.detail { (d) } }
                            details { summary { "JSON" } (layout::json(&s.record)) }
                        }
                    }
                }
            }
            @if let Some(v) = &t.rule_version {
                h2 { (ctx.t("trace.version")) " " code { (v) } }
                p.muted { (t.rule_version_from.as_deref().unwrap_or("")) }
            }
            @if !t.not_matched.is_empty() {
                h2 { (ctx.t("trace.not_matched")) }
                ul #not-matched { @for m in &t.not_matched { li { strong { (m.rule) } ": " (m.reason) } } }
            }
            @if let Some(ev) = &t.event {
                details { summary { (ctx.t("trace.event")) } (layout::json(ev)) }
            }
        },
    );
    if t.steps.is_empty() {
        *r.status_mut() = StatusCode::NOT_FOUND;
    }
    r
}

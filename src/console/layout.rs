//! The page shell every console page shares (header, navigation, language switch, sign-out),
//! the sign-in page, message pages, and small pieces: `<time>` elements the browser shows in
//! its own time zone, JSON blocks.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};
use whale_kernel::auth::url_escape;

use super::{Ctx, Lang};

/// The pages of the navigation, in order: (path, text key).
pub const NAV: &[(&str, &str)] = &[
    ("/ui/", "nav.overview"),
    ("/ui/events", "nav.events"),
    ("/ui/executions", "nav.executions"),
    ("/ui/approvals", "nav.approvals"),
    ("/ui/dead-letters", "nav.dead_letters"),
    ("/ui/audit", "nav.audit"),
    ("/ui/rules", "nav.rules"),
];

fn head(lang: Lang, title: &str) -> Markup {
    html! {
        (DOCTYPE)
        meta charset="utf-8";
        meta name="viewport" content="width=device-width, initial-scale=1";
        title { (title) " · " (lang.t("app")) }
        link rel="stylesheet" href="/ui/assets/console.css";
        script src="/ui/assets/console.js" defer {}
    }
}

/// A whole page: `active` is the navigation entry it belongs to.
pub fn page(ctx: &Ctx, active: &str, title: &str, body: Markup) -> Response {
    let other = if ctx.lang == Lang::Zh { "en" } else { "zh" };
    let markup = html! {
        html lang=(ctx.lang.code()) {
            (head(ctx.lang, title))
            body {
                a.skip href="#main" { "Skip to content" }
                header {
                    a.brand href="/ui/" { (ctx.t("app")) }
                    nav aria-label=(ctx.t("nav.main")) {
                        ul {
                            @for (path, key) in NAV {
                                li {
                                    a href=(path) aria-current=[(*path == active).then_some("page")] { (ctx.t(key)) }
                                }
                            }
                        }
                    }
                    div.who {
                        a href={ "/ui/lang/" (other) "?back=" (url_escape(&ctx.here)) } lang=(if other == "zh" { "zh-CN" } else { "en" }) { (ctx.t("lang.switch")) }
                        span #principal {
                            (ctx.t("signed_in_as")) " " strong { (ctx.principal.name) }
                            @if let Some(r) = ctx.principal.role { " (" (ctx.t("role")) " " (r.as_str()) ")" }
                        }
                        @if ctx.auth_on {
                            form method="post" action="/ui/sign-out" {
                                (csrf(ctx))
                                button type="submit" { (ctx.t("sign_out")) }
                            }
                        }
                    }
                }
                main #main tabindex="-1" {
                    h1 { (title) }
                    (body)
                }
            }
        }
    };
    html_response(StatusCode::OK, markup)
}

pub fn html_response(code: StatusCode, m: Markup) -> Response {
    (
        code,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        m.into_string(),
    )
        .into_response()
}

/// The hidden CSRF field of a form.
pub fn csrf(ctx: &Ctx) -> Markup {
    html! { input type="hidden" name="csrf" value=(ctx.csrf); }
}

/// A page with one message (an action's result or a refusal).
pub fn message(ctx: &Ctx, code: StatusCode, title: &str, text: &str) -> Response {
    let mut r = page(
        ctx,
        "",
        title,
        html! { p #message .(if code.is_success() { "ok" } else { "bad" }) { (text) } },
    );
    *r.status_mut() = code;
    r
}

/// A section that cannot be shown by this process, and why.
pub fn not_here(ctx: &Ctx, why: &str) -> Markup {
    html! { p.notice role="status" { strong { (ctx.t("not_here")) ": " } (why) } }
}

/// A time the browser rewrites in its own zone (the UTC text stays for no-JS readers).
pub fn time(rfc3339: &str) -> Markup {
    html! { time datetime=(rfc3339) { (rfc3339) } }
}

/// A JSON value, pretty-printed.
pub fn json(v: &serde_json::Value) -> Markup {
    html! { pre.json { (serde_json::to_string_pretty(v).unwrap_or_default()) } }
}

/// The sign-in page (no session yet).
pub fn sign_in(lang: Lang, next: &str, failed: bool, open: bool) -> Response {
    let m = html! {
        html lang=(lang.code()) {
            (head(lang, lang.t("sign_in")))
            body.signin {
                main #main {
                    h1 { (lang.t("app")) }
                    @if failed { p #message .bad role="alert" { (lang.t("sign_in.refused")) } }
                    form method="post" action="/ui/sign-in" {
                        input type="hidden" name="next" value=(next);
                        @if open {
                            p { (lang.t("sign_in.open")) }
                        } @else {
                            p { (lang.t("sign_in.help")) }
                            label for="token" { (lang.t("sign_in.token")) }
                            input #token type="password" name="token" autocomplete="current-password" required autofocus;
                        }
                        button #sign-in type="submit" { (lang.t("sign_in")) }
                    }
                    p { a href={ "/ui/lang/" (if lang == Lang::Zh { "en" } else { "zh" }) "?back=" (url_escape(&format!("/ui/sign-in?next={}", url_escape(next)))) } { (lang.t("lang.switch")) } }
                }
            }
        }
    };
    html_response(StatusCode::OK, m)
}

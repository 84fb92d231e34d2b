//! The HTML a person sees when opening an approval link: the confirmation page (what the link
//! would decide, and a form that POSTs its signed token back), and the pages for a decision made
//! or refused. Self-contained (no scripts, no external assets), under a strict
//! Content-Security-Policy, never framed, never cached, never sending the link on as a referrer.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use whale_kernel::envelope::format_time;

use crate::store::Approval;

/// The page's only style, allowed by its hash in the Content-Security-Policy.
const STYLE: &str =
    "body{font-family:sans-serif;max-width:46em;margin:3em auto;padding:0 1em;color:#222}\
th{text-align:left;padding-right:1em;vertical-align:top}\
pre{background:#f4f4f4;padding:.8em;white-space:pre-wrap;word-break:break-all}\
button{font-size:1.1em;padding:.5em 1.5em;margin-top:1em}";

/// Longest parameters text shown on the confirmation page (longer is cut, marked `…`).
const MAX_PARAMS_CHARS: usize = 8000;

fn csp() -> String {
    let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(STYLE.as_bytes()));
    format!(
        "default-src 'none'; style-src 'sha256-{hash}'; form-action 'self'; \
         frame-ancestors 'none'; base-uri 'none'"
    )
}

/// HTML-escapes text for element content and quoted attribute values.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn html(code: StatusCode, title: &str, body: &str) -> Response {
    let page = format!(
        "<!doctype html><html lang=en><meta charset=utf-8>\
         <meta name=viewport content=\"width=device-width\"><title>whale: {t}</title>\
         <style>{STYLE}</style><body><h2>{t}</h2>{body}</body></html>",
        t = escape(title)
    );
    let mut r = (code, page).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(&csp()) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// The confirmation page of a verified link of a pending approval. `action` is `approve` or
/// `deny` (checked by the caller); the form posts to it relative to the link's own path.
pub fn confirm(a: &Approval, action: &str, exp: i64, sig: &str) -> Response {
    let t = &a.task;
    let verb = if action == "approve" {
        "Approve"
    } else {
        "Deny"
    };
    let mut params =
        serde_json::to_string_pretty(&t.parameters).unwrap_or_else(|_| t.parameters.to_string());
    if let Some((cut, _)) = params.char_indices().nth(MAX_PARAMS_CHARS) {
        params.truncate(cut);
        params.push('…');
    }
    let link_expires = OffsetDateTime::from_unix_timestamp(exp)
        .map(format_time)
        .unwrap_or_else(|_| exp.to_string());
    let (requested, expires) = (format_time(a.requested), format_time(a.expires));
    let rows = [
        ("Task", t.task_id.as_str()),
        ("Rule", t.rule.as_str()),
        ("Action", t.action.as_str()),
        ("Cluster", t.cluster.as_str()),
        ("Event", t.event_id.as_str()),
        ("Event type", t.event_type.as_str()),
        ("Requested", requested.as_str()),
        ("Approval expires", expires.as_str()),
        ("This link expires", link_expires.as_str()),
    ]
    .iter()
    .map(|(k, v)| format!("<tr><th>{k}</th><td>{}</td></tr>", escape(v)))
    .collect::<String>();
    let body = format!(
        "<p>Nothing has been decided yet. Check the task, then press the button to \
         <b>{action}</b> it.</p><table>{rows}</table><h3>Parameters</h3><pre>{params}</pre>\
         <form method=post action=\"{action}\">\
         <input type=hidden name=exp value=\"{exp}\">\
         <input type=hidden name=sig value=\"{sig}\">\
         <button type=submit>{verb} this task</button></form>",
        action = escape(action),
        params = escape(&params),
        sig = escape(sig),
    );
    html(
        StatusCode::OK,
        &format!("{verb} task {}?", t.task_id),
        &body,
    )
}

/// The page after the link's POST decided.
pub fn done(msg: &str) -> Response {
    html(StatusCode::OK, "Done", &format!("<p>{}</p>", escape(msg)))
}

/// The page for a refused link (nothing was decided).
pub fn refused(code: StatusCode, msg: &str) -> Response {
    html(
        code,
        "Not done",
        &format!("<p>{}</p><p>Nothing was decided.</p>", escape(msg)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_style_hash_is_the_one_in_the_policy() {
        let r = refused(StatusCode::GONE, "<script>x</script>");
        let csp = r.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            csp.starts_with("default-src 'none'; style-src 'sha256-"),
            "{csp}"
        );
        assert_eq!(r.headers()[header::X_FRAME_OPTIONS], "DENY");
        assert_eq!(
            escape("<a href='x'>&\""),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;"
        );
    }

    /// Whatever a task's parameters hold, the confirmation page carries no markup of them: every
    /// `<`, `>`, `"`, `'` and `&` of the parameters is escaped.
    #[test]
    fn parameters_never_reach_the_page_as_markup() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};
        let cases = 512;
        let mut runner = TestRunner::new(Config {
            cases,
            ..Config::default()
        });
        let chars = proptest::string::string_regex("[<>\"'&a-z /=\\\n]{0,64}").unwrap();
        runner
            .run(&chars, |s| {
                let e = escape(&s);
                prop_assert!(!e.contains(['<', '>', '"', '\'']));
                let back = e
                    .replace("&lt;", "<")
                    .replace("&gt;", ">")
                    .replace("&quot;", "\"")
                    .replace("&#39;", "'")
                    .replace("&amp;", "&");
                prop_assert_eq!(back, s);
                Ok(())
            })
            .unwrap();
        eprintln!("page::escape: {cases} proptest cases");
    }
}

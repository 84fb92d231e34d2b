//! `whale trace EVENT_ID [--json]`: one event's whole story from the index — accepted or rejected
//! (why), matched rules, render failures, the task (parameters, throttle key, cluster), the
//! throttle decision, approval, dispatch (cluster, execution id), dead letters, the result — in
//! the order it happened. Read-only, on whichever backend is configured.

use std::process::ExitCode;

use whale_index::trace::{NotMatched, Trace};
use whale_kernel::Config;

#[derive(clap::Args)]
pub struct Args {
    /// The event id (as accepted, or as given when it was rejected).
    event_id: String,
    /// Print the story as one JSON document.
    #[arg(long)]
    json: bool,
}

pub async fn run(cfg: Config, a: Args) -> anyhow::Result<ExitCode> {
    let backend = whale_index::reader(&cfg)?;
    let mut t = whale_index::trace::trace(&*backend, &a.event_id)
        .await
        .map_err(|e| anyhow::anyhow!("reading the {} index: {e}", backend.name()))?;
    t.not_matched = not_matched(&cfg, &t);
    if a.json {
        super::print_json(&t)?;
    } else {
        print!("{}", render(&t));
    }
    if t.outcome == "unknown" {
        eprintln!(
            "whale: the {} index holds nothing for event {:?}: check the id (`whale events search {:?}`) and that \
             the index stage runs (`whale run --stages index`) with the same WHALE_INDEX_DIR / WHALE_OPENSEARCH_URL",
            backend.name(),
            a.event_id,
            a.event_id
        );
        return Ok(ExitCode::from(3));
    }
    Ok(ExitCode::SUCCESS)
}

/// Rules that listened to the event's type and did not match, and why.
///
/// The place for the rules crate: nothing is published for a rule that does not match, so the
/// index cannot know. Evaluate the active rule set (KV `whale_rules`) against `t.event` here —
/// each rule whose `event_type` is the event's and whose condition is false becomes a
/// `NotMatched { rule, reason: "<which condition> was false: ..." }`. Until then: none listed.
fn not_matched(_cfg: &Config, _t: &Trace) -> Vec<NotMatched> {
    Vec::new()
}

/// The human view: a header, then one block per step, top to bottom.
pub fn render(t: &Trace) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let ev = t.event.as_ref();
    let field = |k: &str| {
        ev.and_then(|e| e.get(k))
            .and_then(|v| v.as_str())
            .unwrap_or("?")
            .to_owned()
    };
    let _ = writeln!(out, "event {} — {}", t.event_id, t.outcome);
    if ev.is_some() {
        let _ = writeln!(
            out,
            "  type {}, source {}, time {}",
            field("event_type"),
            field("source"),
            field("time")
        );
    }
    if t.steps.is_empty() {
        let _ = writeln!(out, "  (nothing stored for this event id)");
        return out;
    }
    let _ = writeln!(out);
    for s in &t.steps {
        let _ = writeln!(out, "{}  {:<13} {}", s.seen, s.kind, s.summary);
        for d in &s.details {
            let _ = writeln!(out, "{:<26} {:<13} {}", "", "", d);
        }
    }
    if !t.not_matched.is_empty() {
        let _ = writeln!(out, "\nrules that listened but did not match:");
        for m in &t.not_matched {
            let _ = writeln!(out, "  {}: {}", m.rule, m.reason);
        }
    }
    let last = t.steps.last().map(|s| s.kind.as_str()).unwrap_or("");
    let end = match (t.outcome.as_str(), last) {
        ("rejected", _) => "rejected at validation: nothing ran",
        (_, "event") => "accepted; no rule matched it (or matching has not happened yet)",
        (_, "result") => "finished",
        (_, "dead_letter") => "ended in the dead letter",
        (_, "throttled") => "throttled",
        (_, "render_failed") => "a matching rule could not be rendered",
        _ => "in progress (or its later records are not indexed yet)",
    };
    let _ = writeln!(out, "\n→ {end}");
    out
}

//! `whale trace EVENT_ID [--json]`: one event's whole story from the index — accepted or rejected
//! (why), matched rules, render failures, the task (parameters, throttle key, cluster), the
//! throttle decision, approval, dispatch (cluster, execution id), dead letters, the result — and
//! the audit records of its tasks and executions (who approved, retried, cancelled) — in the
//! order it happened. Read-only, on whichever backend is configured.

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
    not_matched(&cfg, &mut t).await;
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

/// Rules that listened to the event's type and did not match, and why, with the rule-set
/// version that was in force: the one recorded on the event's match records, else the one active
/// when the event was accepted (from the applied history), else the active one, said so. Nothing
/// is recorded for a non-match (only counted), so the answer comes from evaluating that version
/// on the stored event now; if NATS is unreachable the section is left out. Rules with
/// `for_each` are explained per element.
async fn not_matched(cfg: &Config, t: &mut Trace) {
    let Some(ev) = t.event.clone() else {
        return;
    };
    let Some(event_type) = ev
        .get("event_type")
        .and_then(|v| v.as_str())
        .map(str::to_owned)
    else {
        return;
    };
    let connect = super::connect(cfg, "trace");
    let Ok(Ok(nats)) = tokio::time::timeout(std::time::Duration::from_secs(3), connect).await
    else {
        return;
    };
    explain(&nats, cfg, t, &ev, &event_type).await;
}

/// Fills `t.not_matched` and the version it was evaluated with (also the console's trace page).
pub(crate) async fn explain(
    nats: &whale_kernel::Nats,
    cfg: &Config,
    t: &mut Trace,
    ev: &serde_json::Value,
    event_type: &str,
) {
    let ev = ev.clone();
    let Some((stored, from)) = version_in_force(nats, t).await else {
        return;
    };
    let Ok(set) = whale_rules::RuleSet::compile(&stored.sources) else {
        return;
    };
    t.rule_version = Some(stored.version.clone());
    t.rule_version_from = Some(from);
    let input = whale_rules::Input::new(ev);
    let max = cfg.rules.max_for_each_items;
    let mut out = Vec::new();
    for rule in set.rules_for(event_type).iter() {
        let name = rule.name().to_owned();
        if rule.for_each().is_none() {
            let e = rule.evaluate(&input);
            if !e.matched {
                out.push(NotMatched {
                    rule: name,
                    reason: why(e.failed),
                });
            }
            continue;
        }
        match rule.elements(&input, max) {
            Err(e) => out.push(NotMatched {
                rule: name,
                reason: format!("for_each: {}", e.reason),
            }),
            Ok(els) => {
                let els = els.unwrap_or_default();
                if els.is_empty() {
                    out.push(NotMatched {
                        rule: name.clone(),
                        reason: format!(
                            "for_each {} yielded no elements",
                            rule.for_each().unwrap_or_default()
                        ),
                    });
                }
                for el in els.into_iter().filter(|e| !e.evaluation.matched) {
                    out.push(NotMatched {
                        rule: format!("{name} [element {}]", el.index),
                        reason: why(el.evaluation.failed),
                    });
                }
            }
        }
    }
    t.not_matched = out;
}

pub(crate) fn why(failed: Option<whale_rules::StepFailure>) -> String {
    match failed {
        Some(f) => format!(
            "{} was false: saw {} ({})",
            f.step,
            f.saw
                .map(|v| v.to_string())
                .unwrap_or_else(|| "nothing (missing)".into()),
            f.reason
        ),
        None => "did not match".into(),
    }
}

/// The rule set to explain `t` with, and where its version comes from.
async fn version_in_force(
    nats: &whale_kernel::Nats,
    t: &Trace,
) -> Option<(crate::rules_store::Stored, String)> {
    use crate::rules_store;
    let recorded = t
        .steps
        .iter()
        .filter(|s| matches!(s.kind.as_str(), "matched" | "render_failed"))
        .find_map(|s| s.record.get("rule_version")?.as_str().map(str::to_owned));
    let active = rules_store::active(nats).await.ok().flatten();
    if let Some(v) = recorded {
        if let Ok(Some(stored)) = rules_store::version(nats, &v).await {
            return Some((stored, "recorded on the match".into()));
        }
        return active.map(|a| {
            let from =
                format!("the active set: rule set {v} recorded on the match is no longer stored");
            (a, from)
        });
    }
    let accepted = t
        .steps
        .iter()
        .find(|s| s.kind == "event")
        .map(|s| s.seen.clone());
    if let Some(at) = accepted {
        if let Ok(Some(stored)) = rules_store::in_force_at(nats, &at).await {
            return Some((
                stored,
                format!("in force when the event was accepted ({at})"),
            ));
        }
    }
    active.map(|a| {
        (
            a,
            "the active set (no rule set is known to have been in force when the event was accepted)"
                .into(),
        )
    })
}

/// The human view: a header, then one block per step, top to bottom. Every text that came from
/// the event or a record is escaped for the terminal ([`super::term::line`]).
pub fn render(t: &Trace) -> String {
    use super::term::line;
    use std::fmt::Write as _;
    let mut out = String::new();
    let ev = t.event.as_ref();
    let field = |k: &str| {
        line(
            ev.and_then(|e| e.get(k))
                .and_then(|v| v.as_str())
                .unwrap_or("?"),
        )
        .into_owned()
    };
    let _ = writeln!(out, "event {} — {}", line(&t.event_id), line(&t.outcome));
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
        let _ = writeln!(
            out,
            "{}  {:<13} {}",
            line(&s.seen),
            line(&s.kind),
            line(&s.summary)
        );
        for d in &s.details {
            let _ = writeln!(out, "{:<26} {:<13} {}", "", "", line(d));
        }
    }
    if let Some(v) = &t.rule_version {
        let _ = writeln!(
            out,
            "\nwhy not, evaluated with rule set {} ({}):",
            line(v),
            line(t.rule_version_from.as_deref().unwrap_or(""))
        );
    }
    if !t.not_matched.is_empty() {
        let _ = writeln!(out, "\nrules that listened but did not match:");
        for m in &t.not_matched {
            let _ = writeln!(out, "  {}: {}", line(&m.rule), line(&m.reason));
        }
    }
    // Audit records (who approved, retried) say nothing about where the event's story ended.
    let last = t
        .steps
        .iter()
        .rev()
        .find(|s| s.kind != "audit")
        .map(|s| s.kind.as_str())
        .unwrap_or("");
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

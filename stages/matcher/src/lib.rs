//! match stage: every accepted event meets the rules that listen to its type (and only those),
//! and each match becomes one `whale.pipe.matched` record whose msg id is derived from event id,
//! rule and rule-set version. Non-matches are only counted; `whale rules test` and `whale trace`
//! explain them on demand. The rule set is the live one from the `whale_rules` bucket.

use async_trait::async_trait;
use serde_json::Value;
use whale_kernel::kv::Live;
use whale_kernel::metrics::STAGE_EVENTS;
use whale_kernel::records::Matched;
use whale_kernel::subjects::{self, Pipe};
use whale_kernel::{Delivery, Envelope, Outcome, Output, Stage};
use whale_rules::RuleSet;

/// Label set by `whale replay --rule R`: only that rule may fire for the replayed event.
pub const REPLAY_RULE_LABEL: &str = "whale_replay_rule";
/// Label carrying the replay run id on replayed events.
pub const REPLAY_LABEL: &str = "whale_replay";

pub struct Match {
    pub rules: Live<RuleSet>,
}

impl Match {
    /// The records one event produces under `set` (pure; used by the stage and by replay).
    pub fn matches(set: &RuleSet, ev: &Envelope, value: Value) -> Vec<Matched> {
        let input = whale_expr::Input::new(value);
        let only = ev.labels.get(REPLAY_RULE_LABEL);
        let m = set.match_event(&input);
        if m.counts.type_mismatches > 0 {
            STAGE_EVENTS
                .with_label_values(&["match", "type_mismatch"])
                .inc_by(m.counts.type_mismatches as u64);
        }
        if m.counts.jq_errors > 0 {
            STAGE_EVENTS
                .with_label_values(&["match", "jq_error"])
                .inc_by(m.counts.jq_errors as u64);
        }
        m.matched
            .iter()
            .filter(|rule| only.is_none_or(|r| r == rule.name()))
            .map(|rule| Matched {
                event_id: ev.id.clone(),
                rule: rule.name().to_owned(),
                rule_version: set.version().to_owned(),
                event: ev.clone(),
                replay: ev.labels.get(REPLAY_LABEL).cloned(),
            })
            .collect()
    }
}

#[async_trait]
impl Stage for Match {
    fn name(&self) -> &'static str {
        "match"
    }

    async fn handle(&self, d: &Delivery) -> Outcome {
        let Some(set) = self.rules.current() else {
            // No rule set applied yet: nothing can match. History can be replayed later.
            STAGE_EVENTS.with_label_values(&["match", "no_rules"]).inc();
            return Outcome::Ack(vec![]);
        };
        let value: Value = match serde_json::from_slice(&d.payload) {
            Ok(v) => v,
            Err(e) => return skip(d, format!("not JSON: {e}")),
        };
        let ev: Envelope = match serde::Deserialize::deserialize(&value) {
            Ok(ev) => ev,
            Err(e) => return skip(d, format!("not an event envelope: {e}")),
        };
        let matched = Self::matches(&set, &ev, value);
        STAGE_EVENTS
            .with_label_values(&["match", "matched"])
            .inc_by(matched.len() as u64);
        if matched.is_empty() {
            STAGE_EVENTS.with_label_values(&["match", "no_match"]).inc();
        }
        let outs = matched
            .iter()
            .map(|m| {
                let id = format!("m:{}:{}:{}", m.event_id, m.rule, m.rule_version);
                Output::json(Pipe::Matched.subject(), id, m)
                    .header(subjects::HDR_EVENT_ID, m.event_id.clone())
                    .header(subjects::HDR_RULE, m.rule.clone())
            })
            .collect();
        Outcome::Ack(outs)
    }
}

/// Someone published something that is not an accepted event on `whale.events.*`: count it,
/// log it, and move on (it would fail forever).
fn skip(d: &Delivery, why: String) -> Outcome {
    STAGE_EVENTS
        .with_label_values(&["match", "unreadable"])
        .inc();
    tracing::warn!(parent: &d.span("match"), subject = %d.subject, "skipped: {why}");
    Outcome::Ack(vec![])
}

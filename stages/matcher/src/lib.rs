//! match stage: every accepted event meets the rules that listen to its type (and only those),
//! and each match becomes one `whale.pipe.matched` record whose msg id is derived from event id,
//! rule and rule-set version. Non-matches are only counted; `whale rules test` and `whale trace`
//! explain them on demand. The rule set is the live one from the `whale_rules` bucket.

use async_trait::async_trait;
use serde_json::Value;
use whale_kernel::kv::Live;
use whale_kernel::metrics::STAGE_EVENTS;
use whale_kernel::records::{Item, Matched, RenderFailed};
use whale_kernel::subjects::{self, Pipe};
use whale_kernel::{Delivery, Envelope, Outcome, Output, Stage};
use whale_rules::RuleSet;

/// Label set by `whale replay --rule R`: only that rule may fire for the replayed event.
pub const REPLAY_RULE_LABEL: &str = "whale_replay_rule";
/// Label carrying the replay run id on replayed events.
pub const REPLAY_LABEL: &str = "whale_replay";

pub struct Match {
    pub rules: Live<RuleSet>,
    /// Most elements one `for_each` may yield for one event (`rules.max_for_each_items`).
    pub max_items: usize,
}

/// What one event makes under a rule set: a match record per matching rule (per matching
/// element for rules with `for_each`), and a failure record per rule whose `for_each` yielded
/// more elements than allowed.
#[derive(Debug, Default)]
pub struct Outcomes {
    pub matched: Vec<Matched>,
    pub refused: Vec<RenderFailed>,
}

impl Match {
    /// The records one event produces under `set` with the default element bound (pure; used
    /// by replay).
    pub fn matches(set: &RuleSet, ev: &Envelope, value: Value) -> Vec<Matched> {
        Self::outcomes(set, ev, value, whale_rules::DEFAULT_MAX_ITEMS).matched
    }

    /// The records one event produces under `set` (pure; used by the stage and by replay).
    pub fn outcomes(set: &RuleSet, ev: &Envelope, value: Value, max_items: usize) -> Outcomes {
        let input = whale_expr::Input::new(value);
        let only = ev.labels.get(REPLAY_RULE_LABEL);
        let m = set.match_event_with(&input, max_items);
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
        let record = |rule: &str, item: Option<Item>| Matched {
            event_id: ev.id.clone(),
            rule: rule.to_owned(),
            rule_version: set.version().to_owned(),
            event: ev.clone(),
            replay: ev.labels.get(REPLAY_LABEL).cloned(),
            item,
        };
        let wanted = |rule: &str| only.is_none_or(|r| r == rule);
        let mut matched: Vec<Matched> = m
            .matched
            .iter()
            .filter(|rule| wanted(rule.name()))
            .map(|rule| record(rule.name(), None))
            .collect();
        for (rule, items) in m.fanned.iter().filter(|(r, _)| wanted(r.name())) {
            matched.extend(items.iter().map(|(index, value)| {
                record(
                    rule.name(),
                    Some(Item {
                        index: *index,
                        value: value.clone(),
                    }),
                )
            }));
        }
        let refused = m
            .refused
            .into_iter()
            .filter(|e| wanted(&e.rule))
            .map(|e| RenderFailed {
                event_id: ev.id.clone(),
                rule: e.rule,
                rule_version: set.version().to_owned(),
                field: "for_each".into(),
                reason: e.reason,
                item_index: None,
            })
            .collect();
        Outcomes { matched, refused }
    }

    /// The msg id of a match record: one per (event, rule, rule-set version, element).
    pub fn msg_id(m: &Matched) -> String {
        let base = format!("m:{}:{}:{}", m.event_id, m.rule, m.rule_version);
        match &m.item {
            None => base,
            Some(item) => format!("{base}:{}", whale_rules::item_key(&item.value)),
        }
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
        let Outcomes { matched, refused } = Self::outcomes(&set, &ev, value, self.max_items);
        STAGE_EVENTS
            .with_label_values(&["match", "matched"])
            .inc_by(matched.len() as u64);
        if matched.is_empty() {
            STAGE_EVENTS.with_label_values(&["match", "no_match"]).inc();
        }
        let mut outs: Vec<Output> = matched
            .iter()
            .map(|m| {
                Output::json(Pipe::Matched.subject(), Self::msg_id(m), m)
                    .header(subjects::HDR_EVENT_ID, m.event_id.clone())
                    .header(subjects::HDR_RULE, m.rule.clone())
            })
            .collect();
        for f in &refused {
            STAGE_EVENTS
                .with_label_values(&["match", "for_each_over_limit"])
                .inc();
            tracing::info!(parent: &d.span("match"), rule = %f.rule, "for_each refused: {}", f.reason);
            let id = format!("rf:fe:{}:{}:{}", f.event_id, f.rule, f.rule_version);
            outs.push(
                Output::json(Pipe::RenderFailed.subject(), id, f)
                    .header(subjects::HDR_EVENT_ID, f.event_id.clone())
                    .header(subjects::HDR_RULE, f.rule.clone()),
            );
        }
        Outcome::Ack(outs)
    }
}

/// Someone published something that is not an accepted event on `whale.events.*`: count it and
/// end it as malformed (logged and acked by the worker loop; it would fail forever).
fn skip(_d: &Delivery, why: String) -> Outcome {
    STAGE_EVENTS
        .with_label_values(&["match", "unreadable"])
        .inc();
    Outcome::Malformed { reason: why }
}

//! The backtest both `whale replay --dry-run` and the console's Rules page run: read the
//! accepted-event history of a time range, evaluate a rule set on each event, and compare with
//! what actually fired (match records from the pipe stream, then the index). One function, so
//! the CLI's report and the console's are the same numbers. `whale replay` without `--dry-run`
//! uses [`scan`] alone to find the events it re-injects.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde::Serialize;
use serde_json::{json, Value};
use time::OffsetDateTime;
use whale_kernel::audit::{Action, Actor, Record, Target};
use whale_kernel::{envelope, history, subjects, Config, Envelope, Nats};
use whale_match::Match;
use whale_rules::RuleSet;

pub mod fired;

/// What to read and report.
#[derive(Debug, Clone)]
pub struct Scope {
    pub from: OffsetDateTime,
    pub to: OffsetDateTime,
    /// Only events of this type.
    pub event_type: Option<String>,
    /// Only this rule is reported (and, live, may fire).
    pub rule: Option<String>,
    /// Examples kept per rule.
    pub examples: usize,
    /// Most events read (the console's `console.backtest_max_events`); None: the whole range.
    pub max_events: Option<u64>,
}

/// One rule's line of the report.
#[derive(Debug, Default, Clone, Serialize)]
pub struct RuleLine {
    pub rule: String,
    pub would_match: u64,
    pub actually_matched: u64,
    /// Would match now, did not fire then.
    pub added: u64,
    /// Fired then, would not match now.
    pub removed: u64,
    /// Tasks the matches would make: one per event, or one per matching element of a rule
    /// with `for_each`.
    pub tasks: u64,
    /// Events on which the rule's `for_each` yielded more elements than allowed (no task).
    pub refused: u64,
    /// Would match now, but no record says whether it fired then (outside every source's range).
    pub not_comparable: u64,
    /// Example event ids (`id[i]` for element i of a `for_each`).
    pub examples: Vec<String>,
}

/// What one read of the range found.
pub struct Scan {
    /// Events read (the readable and the unreadable).
    pub read: u64,
    pub unreadable: u64,
    /// The scope's `max_events` stopped the read before the end of the range.
    pub cut: bool,
    pub lines: BTreeMap<String, RuleLine>,
    /// Each would-be match (event, rule): whether a source covers its event's time, and that time.
    would: BTreeMap<(String, String), (bool, OffsetDateTime)>,
    read_ids: HashSet<String>,
    /// The events some rule matched (kept when asked: the live replay re-injects them).
    pub hits: Vec<Envelope>,
}

fn line<'a>(lines: &'a mut BTreeMap<String, RuleLine>, rule: &str) -> &'a mut RuleLine {
    lines.entry(rule.to_owned()).or_insert_with(|| RuleLine {
        rule: rule.to_owned(),
        ..Default::default()
    })
}

/// The warning when the range starts before the oldest stored event.
pub async fn retention_warning(
    cfg: &Config,
    nats: &Nats,
    from: OffsetDateTime,
) -> anyhow::Result<Option<String>> {
    Ok(history::oldest(nats, subjects::STREAM_EVENTS)
        .await?
        .filter(|oldest| from < *oldest)
        .map(|oldest| {
            format!(
                "the range starts before the oldest stored event ({}): older history is beyond retention ({}; WHALE_RETENTION)",
                envelope::format_time(oldest),
                humantime::format_duration(cfg.events.retention)
            )
        }))
}

/// Reads the scope's range and evaluates `set` on every event; `progress` is called with the
/// count read so far. `cover` (a backtest) tells which events can be compared with what fired.
pub async fn scan(
    cfg: &Config,
    nats: &Nats,
    set: &RuleSet,
    scope: &Scope,
    cover: Option<&fired::Coverage>,
    keep_hits: bool,
    mut progress: impl FnMut(u64),
) -> anyhow::Result<Scan> {
    let filter = match &scope.event_type {
        Some(t) => subjects::events(t),
        None => subjects::all(subjects::EVENTS_PREFIX),
    };
    let mut lines: BTreeMap<String, RuleLine> = BTreeMap::new();
    let mut would = BTreeMap::new();
    let mut read_ids = HashSet::new();
    let mut hits = Vec::new();
    let mut unreadable = 0u64;
    let mut seen = 0u64;
    let wanted = |r: &str| scope.rule.as_deref().is_none_or(|w| w == r);
    let each = |d: whale_kernel::worker::Delivery| {
        seen += 1;
        progress(seen);
        let comparable = cover.is_none_or(|c| c.covers(d.published));
        let Ok(value) = serde_json::from_slice::<Value>(&d.payload) else {
            unreadable += 1;
            return;
        };
        let Ok(ev) = serde::Deserialize::deserialize(&value).map(|e: Envelope| e) else {
            unreadable += 1;
            return;
        };
        if cover.is_some() {
            read_ids.insert(ev.id.clone());
        }
        let out = Match::outcomes(set, &ev, value, cfg.rules.max_for_each_items);
        let mut hit = false;
        for f in out.refused.into_iter().filter(|f| wanted(&f.rule)) {
            let l = line(&mut lines, &f.rule);
            l.refused += 1;
            if l.examples.len() < scope.examples {
                l.examples
                    .push(format!("{} (for_each over the limit)", f.event_id));
            }
        }
        for m in out.matched.into_iter().filter(|m| wanted(&m.rule)) {
            hit = true;
            let l = line(&mut lines, &m.rule);
            l.tasks += 1;
            if l.examples.len() < scope.examples {
                l.examples.push(match &m.item {
                    Some(item) => format!("{}[{}]", m.event_id, item.index),
                    None => m.event_id.clone(),
                });
            }
            // One would-match per (event, rule), however many elements of a `for_each` matched.
            if would
                .insert((m.event_id, m.rule), (comparable, d.published))
                .is_none()
            {
                l.would_match += 1;
            }
        }
        if hit && keep_hits {
            hits.push(ev);
        }
    };
    let (from, to) = (scope.from, scope.to);
    let (read, cut) = match scope.max_events {
        Some(max) => {
            history::read_at_most(nats, subjects::STREAM_EVENTS, &filter, from, to, max, each)
                .await?
        }
        None => (
            history::read(nats, subjects::STREAM_EVENTS, &filter, from, to, each).await?,
            false,
        ),
    };
    Ok(Scan {
        read,
        unreadable,
        cut,
        lines,
        would,
        read_ids,
        hits,
    })
}

/// The dry-run report, as `whale replay --dry-run --json` prints it.
#[derive(Debug, Serialize)]
pub struct Report {
    pub dry_run: bool,
    #[serde(serialize_with = "ser_time")]
    pub from: OffsetDateTime,
    #[serde(serialize_with = "ser_time")]
    pub to: OffsetDateTime,
    pub rule_set: String,
    pub candidate: bool,
    /// Events read.
    pub events: u64,
    pub unreadable: u64,
    /// The read stopped at `max_events` before the end of the range.
    pub limited: bool,
    pub rules: Vec<RuleLine>,
    pub warnings: Vec<String>,
    pub compared_with: Vec<fired::Source>,
    pub not_comparable: Vec<fired::Gap>,
    pub not_comparable_events: usize,
}

fn ser_time<S: serde::Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&envelope::format_time(*t))
}

/// The backtest: `set` (the active one, or a `candidate`) over the scope, compared with what
/// actually fired. Reads only; the caller writes the `replay.dry_run` audit record
/// ([`record`]) and checks the trail before ([`whale_kernel::audit::check`]).
pub async fn dry_run(
    cfg: &Config,
    nats: &Nats,
    set: &RuleSet,
    candidate: bool,
    scope: &Scope,
    progress: impl FnMut(u64),
) -> anyhow::Result<Report> {
    let mut warnings: Vec<String> = retention_warning(cfg, nats, scope.from)
        .await?
        .into_iter()
        .collect();
    // Find which part of the range a record of what fired covers.
    let mut cover = fired::Coverage::find(cfg, nats, scope.from, scope.to).await?;
    let scan = scan(cfg, nats, set, scope, Some(&cover), false, progress).await?;
    let mut lines = scan.lines;
    // What actually fired: the match records of the compared events, from the pipe stream
    // where it still holds them and from the index before that. A read error fails the run.
    let fired = cover
        .read(nats, scope.rule.as_deref(), &scan.read_ids)
        .await?;
    if fired.unreadable > 0 {
        warnings.push(format!(
            "{} match records could not be read (not JSON or without event_id/rule) and were not compared",
            fired.unreadable
        ));
    }
    for (e, r) in &fired.fired {
        let l = line(&mut lines, r);
        l.actually_matched += 1;
        if !scan.would.contains_key(&(e.clone(), r.clone())) {
            l.removed += 1;
        }
    }
    // A match with no record is "+new" only where a source covers its event's time; before
    // that, it cannot be told from one whose record is gone: not comparable.
    let mut not_comparable_events: BTreeSet<&str> = BTreeSet::new();
    for ((e, r), (covered, at)) in &scan.would {
        if fired.fired.contains(&(e.clone(), r.clone())) {
            continue;
        }
        let Some(l) = lines.get_mut(r) else {
            continue;
        };
        if *covered {
            l.added += 1;
        } else {
            l.not_comparable += 1;
            not_comparable_events.insert(e);
            cover.count_not_comparable(*at);
        }
    }
    cover.gaps.retain(|g| g.matches > 0);
    if scan.cut {
        warnings.push(format!(
            "the backtest stopped after {} events, before the end of the range (console.backtest_max_events): narrow the range or the event type",
            scan.read
        ));
    }
    Ok(Report {
        dry_run: true,
        from: scope.from,
        to: scope.to,
        rule_set: set.version().to_owned(),
        candidate,
        events: scan.read,
        unreadable: scan.unreadable,
        limited: scan.cut,
        rules: lines.into_values().collect(),
        warnings,
        not_comparable_events: not_comparable_events.len(),
        compared_with: cover.sources,
        not_comparable: cover.gaps,
    })
}

/// The audit record of a replay or backtest over the scope's range (its target: the range).
pub fn record(actor: &Actor, action: Action, scope: &Scope) -> Record {
    let mut rec = Record::new(
        actor,
        action,
        Target::new(
            "events",
            format!(
                "{}..{}",
                envelope::format_time(scope.from),
                envelope::format_time(scope.to)
            ),
        ),
    );
    rec.rule = scope.rule.clone();
    rec
}

/// The details a dry run's audit record keeps.
pub fn dry_run_details(report: &Report, candidate: Option<String>, scope: &Scope) -> Value {
    json!({
        "dry_run": true, "rule_set": report.rule_set, "candidate": candidate,
        "type": scope.event_type, "rule": scope.rule, "events": report.events,
        "limited": report.limited,
    })
}

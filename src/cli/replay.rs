//! `whale replay`: read the accepted-event history for a time range, in order. `--dry-run`
//! evaluates the active rule set, or a candidate one (`--rules DIR`), and reports per rule what
//! would have matched, with examples, and how that differs from what actually fired — a backtest
//! before `whale rules apply`. Without `--dry-run` the events are re-injected with fresh ids and
//! a replay marker, so the re-run is on purpose and traceable; throttles still apply.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use time::OffsetDateTime;

use anyhow::{bail, Context as _};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::{json, Value};
use whale_kernel::audit::{Action, Actor, Record, Target};
use whale_kernel::history::{self, parse_time_arg};
use whale_kernel::subjects;
use whale_kernel::{envelope, Config, Envelope, Output, Window};
use whale_match::{Match, REPLAY_LABEL, REPLAY_RULE_LABEL};
use whale_rules::RuleSet;

use crate::rules_store;

mod fired;

#[derive(clap::Args)]
pub struct Args {
    /// Start of the range: RFC 3339, or an age like 24h (ago).
    #[arg(long)]
    from: String,
    /// End of the range (default now).
    #[arg(long, default_value = "now")]
    to: String,
    /// Only events of this type.
    #[arg(long = "type")]
    event_type: Option<String>,
    /// Only this rule (dry run: report it alone; live: only it may fire).
    #[arg(long)]
    rule: Option<String>,
    /// Candidate rule set to evaluate instead of the active one.
    #[arg(long)]
    rules: Option<PathBuf>,
    /// Evaluate and report; publish nothing.
    #[arg(long)]
    dry_run: bool,
    /// Examples kept per rule in the report.
    #[arg(long, default_value_t = 3)]
    examples: usize,
    #[arg(long)]
    json: bool,
}

#[derive(Default, Serialize)]
struct RuleLine {
    rule: String,
    would_match: u64,
    actually_matched: u64,
    /// Would match now, did not fire then.
    added: u64,
    /// Fired then, would not match now.
    removed: u64,
    /// Tasks the matches would make: one per event, or one per matching element of a rule
    /// with `for_each`.
    tasks: u64,
    /// Events on which the rule's `for_each` yielded more elements than allowed (no task).
    refused: u64,
    /// Would match now, but no record says whether it fired then (outside every source's range).
    not_comparable: u64,
    /// Example event ids (`id[i]` for element i of a `for_each`).
    examples: Vec<String>,
}

pub async fn run(cfg: Config, a: Args) -> anyhow::Result<ExitCode> {
    let from = parse_time_arg(&a.from)?;
    let to = parse_time_arg(&a.to)?;
    if from >= to {
        bail!("--from must be before --to");
    }
    if a.rules.is_some() && !a.dry_run {
        bail!("--rules evaluates a candidate set and needs --dry-run; apply it with `whale rules apply` to run it live");
    }
    let nats = super::connect(&cfg, "replay").await?;
    // A replay is audited, dry run or not; while the trail cannot take a record, nothing runs.
    super::audit::preflight(&nats).await?;
    let set: RuleSet = match &a.rules {
        Some(dir) => RuleSet::load_dir(dir)?,
        None => {
            let stored = rules_store::active(&nats)
                .await?
                .context("no rule set is active: apply one, or give --rules DIR")?;
            RuleSet::compile(&stored.sources)?
        }
    };
    if let Some(r) = &a.rule {
        if set.get(r).is_none() {
            bail!(
                "rule {r:?} is not in the {} rule set",
                if a.rules.is_some() {
                    "candidate"
                } else {
                    "active"
                }
            );
        }
    }
    let mut warnings = Vec::new();
    if let Some(oldest) = history::oldest(&nats, subjects::STREAM_EVENTS).await? {
        if from < oldest {
            warnings.push(format!(
                "the range starts before the oldest stored event ({}): older history is beyond retention ({}; WHALE_RETENTION)",
                envelope::format_time(oldest),
                humantime::format_duration(cfg.events.retention)
            ));
        }
    }
    let filter = match &a.event_type {
        Some(t) => subjects::events(t),
        None => subjects::all(subjects::EVENTS_PREFIX),
    };
    let bar = if std::io::stderr().is_terminal() && !a.json {
        let b = ProgressBar::new_spinner();
        b.set_style(ProgressStyle::with_template("{spinner} {pos} events read {per_sec}").unwrap());
        b
    } else {
        ProgressBar::hidden()
    };
    // A backtest compares with what fired; find which part of the range a record of that covers.
    let cover = if a.dry_run {
        Some(fired::Coverage::find(&cfg, &nats, from, to).await?)
    } else {
        None
    };
    // Read the range; evaluate as we go.
    let mut lines: BTreeMap<String, RuleLine> = BTreeMap::new();
    // Each would-be match: whether a source covers its event's time, and that time.
    let mut would: BTreeMap<(String, String), (bool, OffsetDateTime)> = BTreeMap::new();
    let mut read_ids: HashSet<String> = HashSet::new();
    let mut to_inject: Vec<Envelope> = Vec::new();
    let mut unreadable = 0u64;
    let read = history::read(&nats, subjects::STREAM_EVENTS, &filter, from, to, |d| {
        bar.inc(1);
        let comparable = cover.as_ref().is_none_or(|c| c.covers(d.published));
        let Ok(value) = serde_json::from_slice::<Value>(&d.payload) else {
            unreadable += 1;
            return;
        };
        let Ok(ev) = serde::Deserialize::deserialize(&value).map(|e: Envelope| e) else {
            unreadable += 1;
            return;
        };
        if a.dry_run {
            read_ids.insert(ev.id.clone());
        }
        let out = Match::outcomes(&set, &ev, value, cfg.rules.max_for_each_items);
        let mut hit = false;
        for f in out.refused {
            if a.rule.as_ref().is_some_and(|r| *r != f.rule) {
                continue;
            }
            let line = lines.entry(f.rule.clone()).or_insert_with(|| RuleLine {
                rule: f.rule.clone(),
                ..Default::default()
            });
            line.refused += 1;
            if line.examples.len() < a.examples {
                line.examples
                    .push(format!("{} (for_each over the limit)", f.event_id));
            }
        }
        for m in out.matched {
            if a.rule.as_ref().is_some_and(|r| *r != m.rule) {
                continue;
            }
            hit = true;
            let line = lines.entry(m.rule.clone()).or_insert_with(|| RuleLine {
                rule: m.rule.clone(),
                ..Default::default()
            });
            line.tasks += 1;
            if line.examples.len() < a.examples {
                line.examples.push(match &m.item {
                    Some(item) => format!("{}[{}]", m.event_id, item.index),
                    None => m.event_id.clone(),
                });
            }
            // One would-match per (event, rule), however many elements of a `for_each` matched.
            if would
                .insert((m.event_id, m.rule), (comparable, d.published))
                .is_none()
            {
                line.would_match += 1;
            }
        }
        if hit && !a.dry_run {
            to_inject.push(ev);
        }
    })
    .await?;
    bar.finish_and_clear();

    if let Some(cover) = cover {
        // What actually fired: the match records of the compared events, from the pipe stream
        // where it still holds them and from the index before that. A read error fails the run.
        let mut cover = cover;
        let fired = cover.read(&nats, a.rule.as_deref(), &read_ids).await?;
        if fired.unreadable > 0 {
            warnings.push(format!(
                "{} match records could not be read (not JSON or without event_id/rule) and were not compared",
                fired.unreadable
            ));
        }
        for (e, r) in &fired.fired {
            let line = lines.entry(r.clone()).or_insert_with(|| RuleLine {
                rule: r.clone(),
                ..Default::default()
            });
            line.actually_matched += 1;
            if !would.contains_key(&(e.clone(), r.clone())) {
                line.removed += 1;
            }
        }
        // A match with no record is "+new" only where a source covers its event's time; before
        // that, it cannot be told from one whose record is gone: not comparable.
        let mut not_comparable_events: BTreeSet<&str> = BTreeSet::new();
        for ((e, r), (covered, at)) in &would {
            if fired.fired.contains(&(e.clone(), r.clone())) {
                continue;
            }
            let Some(line) = lines.get_mut(r) else {
                continue;
            };
            if *covered {
                line.added += 1;
            } else {
                line.not_comparable += 1;
                not_comparable_events.insert(e);
                cover.count_not_comparable(*at);
            }
        }
        cover.gaps.retain(|g| g.matches > 0);
        let not_comparable_events = not_comparable_events.len();
        let report = json!({
            "dry_run": true, "from": envelope::format_time(from), "to": envelope::format_time(to),
            "rule_set": set.version(), "candidate": a.rules.is_some(), "events": read, "unreadable": unreadable,
            "rules": lines.values().collect::<Vec<_>>(), "warnings": warnings,
            "compared_with": cover.sources, "not_comparable": cover.gaps, "not_comparable_events": not_comparable_events,
        });
        let rec = record(&a, Action::ReplayDryRun, from, to).details(json!({
            "dry_run": true, "rule_set": set.version(), "candidate": a.rules.as_ref().map(|d| d.display().to_string()),
            "type": a.event_type, "rule": a.rule, "events": read,
        }));
        let audited = super::audit::write(&nats, &rec, "the dry run").await;
        if a.json {
            super::print_json(&report)?;
        } else {
            for w in &warnings {
                eprintln!("whale: warning: {w}");
            }
            println!(
                "backtest of rule set {}{} over {read} events ({} → {})",
                set.version(),
                if a.rules.is_some() {
                    " (candidate)"
                } else {
                    ""
                },
                envelope::format_time(from),
                envelope::format_time(to)
            );
            for src in &cover.sources {
                println!("compared with {}", src.describe());
            }
            for g in &cover.gaps {
                println!(
                    "not comparable {}..{} ({} matches): {}",
                    envelope::format_time(g.from),
                    envelope::format_time(g.to),
                    g.matches,
                    g.reason
                );
            }
            println!(
                "{:<32} {:>10} {:>10} {:>8} {:>8} {:>8} {:>8}  examples",
                "RULE", "WOULD", "FIRED", "+NEW", "-GONE", "N/C", "TASKS"
            );
            for l in lines.values() {
                println!(
                    "{:<32} {:>10} {:>10} {:>8} {:>8} {:>8} {:>8}  {}",
                    l.rule,
                    l.would_match,
                    l.actually_matched,
                    l.added,
                    l.removed,
                    l.not_comparable,
                    l.tasks,
                    super::term::line(&l.examples.join(", "))
                );
            }
            for l in lines.values().filter(|l| l.refused > 0) {
                println!(
                    "{}: for_each yielded more than {} elements on {} event{}: no task for them (rules.max_for_each_items)",
                    l.rule,
                    cfg.rules.max_for_each_items,
                    l.refused,
                    if l.refused == 1 { "" } else { "s" }
                );
            }
        }
        audited?;
        return Ok(ExitCode::SUCCESS);
    }

    // Live: re-inject with fresh ids and the replay marker.
    let run_id = ulid::Ulid::new().to_string();
    let mut w: Window<()> = Window::on(&nats, 1024);
    for mut ev in to_inject.iter().cloned() {
        let original = ev.id.clone();
        ev.id = format!("replay-{run_id}-{original}");
        ev.labels.insert(REPLAY_LABEL.into(), run_id.clone());
        ev.labels.insert("whale_replay_of".into(), original);
        if let Some(r) = &a.rule {
            ev.labels.insert(REPLAY_RULE_LABEL.into(), r.clone());
        }
        let out = Output::json(subjects::events(&ev.event_type), ev.id.clone(), &ev)
            .header(subjects::HDR_EVENT_ID, ev.id.clone());
        w.send((), out).await;
    }
    w.drain().await;
    let s = w.stats;
    let report = json!({
        "dry_run": false, "replay": run_id, "events": read, "reinjected": s.published, "failed": s.failed,
        "rules": lines.values().collect::<Vec<_>>(), "warnings": warnings,
    });
    // The run id is the replay's natural id.
    let rec = record(&a, Action::ReplayRun, from, to)
        .natural_id(&run_id)
        .details(json!({
            "dry_run": false, "replay": run_id, "rule_set": set.version(), "type": a.event_type,
            "rule": a.rule, "events": read, "reinjected": s.published, "failed": s.failed,
        }));
    let audited = super::audit::write(&nats, &rec, "the replay").await;
    if a.json {
        super::print_json(&report)?;
    } else {
        for w in &warnings {
            eprintln!("whale: warning: {w}");
        }
        println!("replay {run_id}: {} of {read} events re-injected with fresh ids (label whale_replay={run_id}); {} failed", s.published, s.failed);
    }
    audited?;
    Ok(if s.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

/// The audit record of a replay over `from..to` (its target: the range of events).
fn record(
    a: &Args,
    action: Action,
    from: time::OffsetDateTime,
    to: time::OffsetDateTime,
) -> Record {
    let mut rec = Record::new(
        &Actor::cli(None),
        action,
        Target::new(
            "events",
            format!(
                "{}..{}",
                envelope::format_time(from),
                envelope::format_time(to)
            ),
        ),
    );
    rec.rule = a.rule.clone();
    rec
}

//! `whale replay`: read the accepted-event history for a time range, in order. `--dry-run`
//! evaluates the active rule set, or a candidate one (`--rules DIR`), and reports per rule what
//! would have matched, with examples, and how that differs from what actually fired — a backtest
//! before `whale rules apply`. Without `--dry-run` the events are re-injected with fresh ids and
//! a replay marker, so the re-run is on purpose and traceable; throttles still apply.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use whale_kernel::audit::{Action, Actor};
use whale_kernel::history::parse_time_arg;
use whale_kernel::subjects;
use whale_kernel::{envelope, Config, Output, Window};
use whale_match::{REPLAY_LABEL, REPLAY_RULE_LABEL};
use whale_rules::RuleSet;

use crate::backtest::{self, Scope};
use crate::rules_store;

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
    let scope = Scope {
        from,
        to,
        event_type: a.event_type.clone(),
        rule: a.rule.clone(),
        examples: a.examples,
        max_events: None,
    };
    let bar = if std::io::stderr().is_terminal() && !a.json {
        let b = ProgressBar::new_spinner();
        b.set_style(ProgressStyle::with_template("{spinner} {pos} events read {per_sec}").unwrap());
        b
    } else {
        ProgressBar::hidden()
    };
    if a.dry_run {
        let report =
            backtest::dry_run(&cfg, &nats, &set, a.rules.is_some(), &scope, |_| bar.inc(1)).await?;
        bar.finish_and_clear();
        let candidate = a.rules.as_ref().map(|d| d.display().to_string());
        let rec = backtest::record(&Actor::cli(None), Action::ReplayDryRun, &scope)
            .details(backtest::dry_run_details(&report, candidate, &scope));
        let audited = super::audit::write(&nats, &rec, "the dry run").await;
        if a.json {
            super::print_json(&report)?;
        } else {
            print_report(&report, cfg.rules.max_for_each_items);
        }
        audited?;
        return Ok(ExitCode::SUCCESS);
    }
    let warnings: Vec<String> = backtest::retention_warning(&cfg, &nats, from)
        .await?
        .into_iter()
        .collect();
    let scan = backtest::scan(&cfg, &nats, &set, &scope, None, true, |_| bar.inc(1)).await?;
    bar.finish_and_clear();
    let (read, lines, to_inject) = (scan.read, scan.lines, scan.hits);

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
    let rec = backtest::record(&Actor::cli(None), Action::ReplayRun, &scope)
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

/// The dry run's report as text (`--json` prints [`backtest::Report`] itself).
fn print_report(r: &backtest::Report, max_for_each_items: usize) {
    for w in &r.warnings {
        eprintln!("whale: warning: {w}");
    }
    println!(
        "backtest of rule set {}{} over {} events ({} → {})",
        r.rule_set,
        if r.candidate { " (candidate)" } else { "" },
        r.events,
        envelope::format_time(r.from),
        envelope::format_time(r.to)
    );
    for src in &r.compared_with {
        println!("compared with {}", src.describe());
    }
    for g in &r.not_comparable {
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
    for l in &r.rules {
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
    for l in r.rules.iter().filter(|l| l.refused > 0) {
        println!(
            "{}: for_each yielded more than {max_for_each_items} elements on {} event{}: no task for them (rules.max_for_each_items)",
            l.rule,
            l.refused,
            if l.refused == 1 { "" } else { "s" }
        );
    }
}

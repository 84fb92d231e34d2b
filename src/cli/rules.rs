//! `whale rules check|apply|test|show`: verify rule files (file, line, rule, what is wrong),
//! load them into the running pipeline atomically, try them offline against sample events
//! (with the "why not" of every non-match), and show what is active.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use serde_json::{json, Value};
use whale_kernel::audit::{Action, Actor, Record, Target};
use whale_kernel::envelope::{self, Defaults};
use whale_kernel::Config;
use whale_rules::RuleSet;

use crate::rules_store;

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Parse and compile every rule file in DIR (no server needed).
    Check {
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Check, then make DIR the active rule set of the running pipeline.
    Apply {
        dir: PathBuf,
        #[arg(long)]
        json: bool,
        /// Apply a directory with no rules, removing every active rule (refused otherwise).
        #[arg(long)]
        allow_empty: bool,
    },
    /// Run the rules in DIR on sample events, offline: what matched, what not and why.
    Test {
        dir: PathBuf,
        /// NDJSON file of events (envelopes or CloudEvents).
        #[arg(long)]
        events: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Show the active rule set.
    Show {
        #[arg(long)]
        json: bool,
    },
}

/// Loads a directory, printing every error with file, line and rule; None when refused.
fn load(dir: &Path, json_out: bool) -> anyhow::Result<Result<(RuleSet, f64), ExitCode>> {
    let t = Instant::now();
    match RuleSet::load_dir(dir) {
        Ok(set) => Ok(Ok((set, t.elapsed().as_secs_f64() * 1000.0))),
        Err(errs) => {
            if json_out {
                let list: Vec<Value> = errs
                    .errors()
                    .iter()
                    .map(|e| json!({"file": e.file, "line": e.line, "rule": e.rule, "message": e.message}))
                    .collect();
                super::print_json(&json!({"ok": false, "errors": list}))?;
            } else {
                for e in errs.errors() {
                    eprintln!("whale: {e}");
                }
                eprintln!(
                    "whale: rule set in {} refused ({} error(s)); nothing was applied",
                    dir.display(),
                    errs.errors().len()
                );
            }
            Ok(Err(ExitCode::from(3)))
        }
    }
}

pub async fn run(cfg: Config, cmd: Cmd) -> anyhow::Result<ExitCode> {
    match cmd {
        Cmd::Check { dir, json } => {
            let (set, ms) = match load(&dir, json)? {
                Ok(x) => x,
                Err(code) => return Ok(code),
            };
            if json {
                super::print_json(
                    &json!({"ok": true, "rules": set.len(), "version": set.version(), "compile_ms": ms}),
                )?;
            } else {
                println!(
                    "ok: {} rule(s) from {}, version {} (compiled in {ms:.1} ms)",
                    set.len(),
                    dir.display(),
                    set.version()
                );
            }
        }
        Cmd::Apply {
            dir,
            json,
            allow_empty,
        } => {
            let (set, _) = match load(&dir, json)? {
                Ok(x) => x,
                Err(code) => return Ok(code),
            };
            let nats = super::connect(&cfg, "rules").await?;
            let active = rules_store::active(&nats).await?;
            if set.is_empty() && !allow_empty {
                // An empty directory (a wrong path, a failed checkout) would silently stop
                // every automation: only on purpose.
                let active_rules = match &active {
                    Some(a) => whale_rules::RuleSet::compile(&a.sources)
                        .map(|s| s.len())
                        .unwrap_or(a.sources.len()),
                    None => 0,
                };
                let msg = format!(
                    "{} holds no rules: applying it would remove all {active_rules} active rule(s); nothing was applied (pass --allow-empty to do that on purpose)",
                    dir.display()
                );
                if json {
                    super::print_json(
                        &json!({"ok": false, "error": msg, "rules": 0, "would_remove": active_rules}),
                    )?;
                } else {
                    eprintln!("whale: {msg}");
                }
                return Ok(ExitCode::from(3));
            }
            let before = active.map(|s| s.version);
            let unchanged = before.as_deref() == Some(set.version());
            let mut audited = Ok(());
            if !unchanged {
                super::audit::preflight(&nats).await?;
                let revision = rules_store::apply(&nats, &set).await?;
                // The KV revision is the apply's natural id: a repeated write is stored once.
                let rec = Record::new(
                    &Actor::cli(None),
                    Action::RulesApply,
                    Target::new("rules", set.version()),
                )
                .natural_id(&revision.to_string())
                .before_after(
                    json!({"version": before}),
                    json!({"version": set.version(), "rules": set.len()}),
                )
                .details(json!({"dir": dir.display().to_string()}));
                audited = super::audit::write(&nats, &rec, "the rules apply").await;
            }
            if json {
                super::print_json(
                    &json!({"version": set.version(), "previous": before, "rules": set.len(), "changed": !unchanged}),
                )?;
            } else if unchanged {
                println!(
                    "unchanged: version {} is already active ({} rules)",
                    set.version(),
                    set.len()
                );
            } else {
                println!(
                    "applied version {} ({} rules) replacing {}; running workers switch now",
                    set.version(),
                    set.len(),
                    before.as_deref().unwrap_or("nothing")
                );
            }
            audited?;
        }
        Cmd::Test { dir, events, json } => {
            let (set, _) = match load(&dir, json)? {
                Ok(x) => x,
                Err(code) => return Ok(code),
            };
            let text = std::fs::read_to_string(&events)
                .with_context(|| format!("cannot read {}", events.display()))?;
            let limits = cfg.events.limits();
            let mut evs = Vec::new();
            for (i, line) in text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                let ev = envelope::parse_bytes(line.as_bytes(), &limits)
                    .map_err(|r| vec![r])
                    .and_then(|v| envelope::normalize(v, &Defaults::fresh(None, "rules-test")))
                    .map_err(|rs| {
                        anyhow::anyhow!(
                            "{}:{}: {}",
                            events.display(),
                            i + 1,
                            rs.iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join("; ")
                        )
                    })?;
                evs.push(serde_json::to_value(ev)?);
            }
            let reports = whale_rules::test_events_with(&set, &evs, cfg.rules.max_for_each_items);
            if json {
                super::print_json(&reports)?;
            } else {
                // Values of the events tested are quoted in the report: no raw escapes.
                print!(
                    "{}",
                    super::term::block(&whale_rules::format_human(&reports))
                );
            }
            // A rule that matches but cannot make its task is a broken rule: fail the test
            // (as the pipeline would record a render failure).
            let failures: usize = reports.iter().map(|r| r.failures()).sum();
            if failures > 0 {
                eprintln!(
                    "whale: {failures} matching rule{} could not be rendered (marked `!` above): \
                     fix the templates, or use `for_each` to run a rule once per element",
                    if failures == 1 { "" } else { "s" }
                );
                return Ok(ExitCode::from(1));
            }
        }
        Cmd::Show { json } => {
            let nats = super::connect(&cfg, "rules").await?;
            match rules_store::active(&nats).await? {
                None => println!("no rule set applied yet: `whale rules apply pipelines`"),
                Some(s) if json => super::print_json(
                    &json!({"version": s.version, "applied_at": s.applied_at, "files": s.sources.iter().map(|f| &f.path).collect::<Vec<_>>()}),
                )?,
                Some(s) => {
                    println!("active version {} applied at {}", s.version, s.applied_at);
                    for f in &s.sources {
                        println!("  {}", f.path);
                    }
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

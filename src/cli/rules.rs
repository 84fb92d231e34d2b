//! `whale rules check|apply|test|show|history|diff|rollback`: verify rule files (file, line,
//! rule, what is wrong), load them into the running pipeline atomically, try them offline
//! against sample events (with the "why not" of every non-match), show what is active, list
//! every applied version (who, when, git commit), diff two versions, and make an earlier one
//! active again.

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
    /// Every applied version, newest first: who applied it, when, and the git commit and
    /// author when it was applied from a git checkout.
    History {
        /// At most this many, the newest (default 50; at most `rules.max_history`).
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long)]
        json: bool,
    },
    /// Unified diff per file between two versions (`active` names the active one).
    Diff {
        a: String,
        b: String,
        /// Only this file (its path as stored, as `whale rules show` lists it).
        #[arg(long)]
        file: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Make an earlier version active again (atomically, audited as `rules.rollback`).
    Rollback {
        version: String,
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
            let active = rules_store::active_entry(&nats).await?;
            if set.is_empty() && !allow_empty {
                // An empty directory (a wrong path, a failed checkout) would silently stop
                // every automation: only on purpose.
                let active_rules = match &active {
                    Some(a) => match a.rules {
                        Some(n) => n,
                        None => rules_store::active(&nats)
                            .await?
                            .map(|s| {
                                whale_rules::RuleSet::compile(&s.sources)
                                    .map(|s| s.len())
                                    .unwrap_or(s.sources.len())
                            })
                            .unwrap_or(0),
                    },
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
                let actor = Actor::cli(None);
                let provenance = rules_store::Provenance {
                    by: Some(actor.who.clone()),
                    via: Some(actor.via.clone()),
                    dir: Some(dir.display().to_string()),
                    git: rules_store::git_of(&dir),
                };
                let (entry, revision) =
                    rules_store::apply(&nats, &set, provenance, "apply").await?;
                // The KV revision is the apply's natural id: a repeated write is stored once.
                let rec = Record::new(
                    &actor,
                    Action::RulesApply,
                    Target::new("rules", set.version()),
                )
                .natural_id(&revision.to_string())
                .before_after(
                    json!({"version": before}),
                    json!({"version": set.version(), "rules": set.len()}),
                )
                .details(json!({"dir": dir.display().to_string(), "git": entry.provenance.git}));
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
            match crate::rules_api::active_json(&nats).await? {
                None => println!("no rule set applied yet: `whale rules apply pipelines`"),
                Some(v) if json => super::print_json(&v)?,
                Some(v) => {
                    println!(
                        "active version {} applied at {}",
                        text(&v["version"]),
                        text(&v["applied_at"])
                    );
                    for f in v["files"].as_array().into_iter().flatten() {
                        println!("  {}", text(f));
                    }
                }
            }
        }
        Cmd::History { limit, json } => {
            let limit =
                crate::rules_api::history_limit(limit, &cfg).map_err(|e| anyhow::anyhow!(e))?;
            let nats = super::connect(&cfg, "rules").await?;
            let entries = rules_store::history(&nats, limit).await?;
            if json {
                super::print_json(&entries)?;
            } else {
                print!("{}", history_table(&entries));
            }
        }
        Cmd::Diff { a, b, file, json } => {
            let nats = super::connect(&cfg, "rules").await?;
            let files = match crate::rules_api::diff(
                &nats,
                &a,
                &b,
                file.as_deref(),
                cfg.rules.max_diff_bytes,
            )
            .await
            {
                Ok(f) => f,
                Err((_, msg)) => anyhow::bail!("{msg}"),
            };
            if json {
                super::print_json(&json!({"a": a, "b": b, "files": files}))?;
            } else if files.is_empty() {
                println!("no difference between {a} and {b}");
            } else {
                for f in &files {
                    print!("{}", super::term::block(&f.diff));
                }
            }
        }
        Cmd::Rollback { version, json } => {
            let nats = super::connect(&cfg, "rules").await?;
            use crate::rules_api::RollbackError;
            match crate::rules_api::rollback(&nats, &version, &Actor::cli(None)).await {
                Ok(r) if json => {
                    super::print_json(&json!({"changed": r.changed, "active": r.entry}))?
                }
                Ok(r) if !r.changed => println!("unchanged: version {version} is already active"),
                Ok(r) => println!(
                    "rolled back to version {} ({} rules) replacing {}; running workers switch now",
                    r.entry.version,
                    r.entry.rules.unwrap_or(0),
                    r.entry.previous.as_deref().unwrap_or("nothing")
                ),
                Err(e @ (RollbackError::Unknown(_) | RollbackError::Refused { .. })) => {
                    eprintln!("whale: {e}");
                    return Ok(ExitCode::from(3));
                }
                Err(RollbackError::AuditUnavailable(u)) => return Err(u.into()),
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn text(v: &Value) -> String {
    super::term::line(v.as_str().unwrap_or_default()).into_owned()
}

/// The human table of `whale rules history`: one line per apply or rollback, then its commit.
fn history_table(entries: &[rules_store::Entry]) -> String {
    use super::term::line;
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<24} {:<9} {:<13} {:>7} {:<16} GIT",
        "APPLIED AT", "ACTION", "VERSION", "RULES", "BY"
    );
    // Milliseconds are enough to read; `--json` keeps the full time.
    let ms = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    for e in entries {
        let p = &e.provenance;
        let at = time::OffsetDateTime::parse(
            &e.applied_at,
            &time::format_description::well_known::Rfc3339,
        )
        .ok()
        .and_then(|t| t.to_offset(time::UtcOffset::UTC).format(&ms).ok())
        .unwrap_or_else(|| e.applied_at.clone());
        let git = p.git.as_ref().map_or_else(String::new, |g| {
            format!(
                "{} {}{}",
                &g.commit[..g.commit.len().min(12)],
                g.author,
                if g.dirty {
                    " (uncommitted changes)"
                } else {
                    ""
                }
            )
        });
        let _ = writeln!(
            out,
            "{:<24} {:<9} {:<13} {:>7} {:<16} {}",
            line(&at),
            line(&e.action),
            line(&e.version),
            e.rules.map_or_else(|| "-".into(), |n| n.to_string()),
            line(p.by.as_deref().unwrap_or("-")),
            line(&git)
        );
    }
    out
}

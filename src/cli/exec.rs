//! `whale exec list|get|logs|retry|pause|resume|cancel`: manage StackStorm executions from
//! whale, on the cluster whale's own record names. IDs are whale task ids or StackStorm
//! execution ids. A StackStorm refusal (e.g. pausing an execution that is not a workflow) is
//! printed with StackStorm's message and exits 1.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use serde_json::Value;
use whale_feedback::manage::{Action, Found, Manager};
use whale_kernel::Config;

use super::term::line;

#[derive(Subcommand)]
pub enum Cmd {
    /// whale's executions, newest first (status as whale last saw it).
    List {
        /// Only this rule's executions.
        #[arg(long)]
        rule: Option<String>,
        /// Only executions in this status (running, succeeded, failed, ...).
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// One execution: whale's record and StackStorm's current view.
    Get {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// The execution's output (stdout and stderr).
    Logs { id: String },
    /// Run the execution again (StackStorm re_run); prints the new execution.
    Retry {
        id: String,
        /// Parameters (a JSON object) merged over the original ones.
        #[arg(long)]
        params: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Pause a running workflow.
    Pause {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Resume a paused workflow.
    Resume {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Cancel the execution.
    Cancel {
        id: String,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cfg: Config, cmd: Cmd) -> anyhow::Result<ExitCode> {
    let nats = super::connect(&cfg, "exec").await?;
    let m = Manager::new(&nats, &cfg).await?;
    match cmd {
        Cmd::List { rule, status, json } => {
            let list = m.list(rule.as_deref(), status.as_deref()).await?;
            if json {
                for r in &list {
                    println!("{}", serde_json::to_string(r)?);
                }
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<36} {:<26} {:<10} {:<10} {:<24} CREATED",
                "TASK", "EXECUTION", "CLUSTER", "STATUS", "RULE"
            );
            for r in &list {
                println!(
                    "{:<36} {:<26} {:<10} {:<10} {:<24} {}",
                    line(&r.task_id),
                    line(&r.execution_id),
                    line(&r.cluster),
                    line(&r.status),
                    line(&r.rule),
                    line(&r.created)
                );
            }
        }
        Cmd::Get { id, json } => {
            let f = m.get(&id).await?;
            if json {
                super::print_json(&f)?;
            } else {
                show(&f, "");
            }
        }
        Cmd::Logs { id } => {
            let (_, text) = m.logs(&id).await?;
            // The output of a command whose parameters came from events: no raw escapes.
            let text = super::term::block(&text);
            print!("{text}");
            if !text.is_empty() && !text.ends_with('\n') {
                println!();
            }
        }
        Cmd::Retry { id, params, json } => {
            let params = match params {
                Some(p) => {
                    serde_json::from_str::<Value>(&p).context("--params must be a JSON object")?
                }
                None => Value::Null,
            };
            act(&m, &id, Action::Retry, params, json).await?;
        }
        Cmd::Pause { id, json } => act(&m, &id, Action::Pause, Value::Null, json).await?,
        Cmd::Resume { id, json } => act(&m, &id, Action::Resume, Value::Null, json).await?,
        Cmd::Cancel { id, json } => act(&m, &id, Action::Cancel, Value::Null, json).await?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn act(
    m: &Manager,
    id: &str,
    action: Action,
    params: Value,
    json: bool,
) -> anyhow::Result<()> {
    let actor = whale_kernel::audit::Actor::cli(None);
    let f = m.act(id, action, params, &actor, true).await?;
    if json {
        return super::print_json(&f);
    }
    let e = f.execution.as_ref();
    let status = e
        .and_then(|e| e.status())
        .map(|s| s.as_str())
        .unwrap_or("?");
    match action {
        Action::Retry => println!(
            "re-ran execution {} (task {}) on cluster {} as execution {} ({})",
            line(&f.record.execution_id),
            line(&f.record.task_id),
            line(&f.record.cluster),
            line(e.map(|e| e.id.as_str()).unwrap_or("?")),
            line(status)
        ),
        _ => println!(
            "{} execution {} (task {}) on cluster {}: {}",
            action.as_str(),
            line(&f.record.execution_id),
            line(&f.record.task_id),
            line(&f.record.cluster),
            line(status)
        ),
    }
    Ok(())
}

fn show(f: &Found, indent: &str) {
    let r = &f.record;
    let e = f.execution.as_ref();
    let row = |k: &str, v: &str| println!("{indent}{k:<12} {}", line(v));
    row("task", &r.task_id);
    row("execution", &r.execution_id);
    row("cluster", &r.cluster);
    row("rule", &r.rule);
    row("event", &r.event_id);
    row("action", &r.action);
    row(
        "status",
        e.and_then(|e| e.status())
            .map(|s| s.as_str())
            .unwrap_or(&r.status),
    );
    if let Some(s) = e.and_then(|e| e.start_timestamp.as_deref()) {
        row("started", s);
    }
    if let Some(s) = e.and_then(|e| e.end_timestamp.as_deref()) {
        row("finished", s);
    }
    if let Some(s) = e.and_then(|e| e.elapsed_seconds) {
        row("elapsed", &format!("{s:.1}s"));
    }
    if let Some(u) = e
        .and_then(|e| e.web_url.as_deref())
        .or(r.web_url.as_deref())
    {
        row("web", u);
    }
    if let Some(res) = e.and_then(|e| e.result.as_ref()) {
        row("result", &res.to_string());
    }
}

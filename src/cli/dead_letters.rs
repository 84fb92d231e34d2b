//! `whale dead-letters list|show|retry`: the tasks dispatch gave up on, and a way out once the
//! cause is fixed. A retry keeps the task id, so the claim makes it at most one execution
//! (whale_dispatch::dead_letters). Also `/v1/dead-letters`.

use std::process::ExitCode;

use clap::Subcommand;
use whale_dispatch::dead_letters::{DeadLetters, Entry, Error};
use whale_kernel::Config;

use super::term::line;

#[derive(Subcommand)]
pub enum Cmd {
    /// Dead letters waiting for an operator, oldest first (`--all`: also retried and executed).
    List {
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// One dead letter: the task, why, its claim and retries.
    Show {
        task_id: String,
        #[arg(long)]
        json: bool,
    },
    /// Send the task to its cluster again, with the same task id (never a second execution).
    Retry {
        task_id: String,
        /// Who retries (default: $USER).
        #[arg(long)]
        by: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cfg: Config, cmd: Cmd) -> anyhow::Result<ExitCode> {
    let nats = super::connect(&cfg, "dead-letters").await?;
    let dl = DeadLetters::new(&nats).await?;
    let r = match cmd {
        Cmd::List { all, json } => dl.list(all).await.map(|list| {
            if json {
                for e in &list {
                    println!("{}", serde_json::to_string(e).unwrap_or_default());
                }
                return;
            }
            println!(
                "{:<36} {:<9} {:<24} {:<10} {:<20} REASON",
                "TASK", "STATE", "RULE", "CLUSTER", "DEAD AT"
            );
            for e in &list {
                println!(
                    "{:<36} {:<9} {:<24} {:<10} {:<20} {}",
                    line(&e.task_id),
                    e.state,
                    line(&e.rule),
                    line(&e.cluster),
                    line(&e.dead_at),
                    line(&e.reason)
                );
            }
        }),
        Cmd::Show { task_id, json } => dl.show(&task_id).await.map(|d| {
            if json {
                let _ = super::print_json(&d);
                return;
            }
            print_entry(&d.entry);
            println!("attempts:  {}", d.record.attempts);
            if let Some(f) = &d.record.faultstring {
                println!("stackstorm: {}", line(f));
            }
            println!("params:    {}", line(&d.record.task.parameters.to_string()));
            if let Some(c) = &d.claim {
                println!(
                    "claim:     {}",
                    line(&serde_json::to_string(c).unwrap_or_default())
                );
            }
        }),
        Cmd::Retry { task_id, by, json } => {
            let actor = whale_kernel::audit::Actor::cli(by.as_deref());
            dl.retry(&task_id, &actor).await.map(|e| {
                if json {
                    let _ = super::print_json(&e);
                } else {
                    println!(
                        "task {} re-sent to cluster {} (retry {}); dispatch checks the cluster for it before creating it",
                        line(&e.task_id),
                        line(&e.cluster),
                        e.retry.as_ref().map_or(1, |m| m.retries)
                    );
                }
            })
        }
    };
    match r {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(Error::Internal(e)) => Err(e),
        Err(e) => {
            eprintln!("whale: {e}");
            Ok(ExitCode::from(match e {
                Error::AuditUnavailable(_) | Error::AuditMissing { .. } => 1,
                Error::NotFound(_) => 4,
                _ => 5,
            }))
        }
    }
}

fn print_entry(e: &Entry) {
    println!("task:      {}", line(&e.task_id));
    println!("state:     {}", e.state);
    println!("rule:      {}", line(&e.rule));
    println!("event:     {}", line(&e.event_id));
    println!("action:    {}", line(&e.action));
    println!("cluster:   {}", line(&e.cluster));
    println!("dead at:   {}", line(&e.dead_at));
    println!("reason:    {}", line(&e.reason));
    if let Some(x) = &e.execution_id {
        println!("execution: {}", line(x));
    }
    if let Some(m) = &e.retry {
        println!(
            "retried:   {} time(s), last by {} at {}",
            m.retries,
            line(&m.by),
            line(&m.at)
        );
    }
}

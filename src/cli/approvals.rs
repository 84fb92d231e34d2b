//! `whale approvals list|approve|deny`: the approval gate from a shell. A decision is the same
//! compare-and-set the chat links and `/v1/approvals` make, recorded with who made it (`--by`,
//! default `$USER`) and published on `whale.pipe.decision`, and an audit record (`whale audit`);
//! an approved task then goes on to dispatch once.

use std::process::ExitCode;

use clap::Subcommand;
use whale_approve::store::{self, Approval, Verdict};
use whale_kernel::Config;

use super::term::line;

#[derive(Subcommand)]
pub enum Cmd {
    /// Approvals, pending first (with --all also decided and expired ones).
    List {
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Approve a held task: it goes on to dispatch.
    Approve(Decide),
    /// Deny a held task: it is recorded and not dispatched.
    Deny(Decide),
}

#[derive(clap::Args)]
pub struct Decide {
    /// The task id (see `whale approvals list`).
    id: String,
    /// Why (recorded with the decision).
    #[arg(long)]
    reason: Option<String>,
    /// Who decides (default: $USER).
    #[arg(long)]
    by: Option<String>,
    #[arg(long)]
    json: bool,
}

pub async fn run(cfg: Config, cmd: Cmd) -> anyhow::Result<ExitCode> {
    let nats = super::connect(&cfg, "approvals").await?;
    let kv = store::bucket(&nats, &cfg).await?;
    let (verdict, d) = match cmd {
        Cmd::List { all, json } => {
            let list: Vec<Approval> = store::list(&kv)
                .await?
                .into_iter()
                .filter(|a| all || a.is_pending())
                .collect();
            if json {
                for a in &list {
                    println!("{}", serde_json::to_string(a)?);
                }
            } else {
                println!(
                    "{:<36} {:<9} {:<24} {:<20} {:<21} BY",
                    "TASK", "STATE", "RULE", "ACTION", "EXPIRES"
                );
                for a in &list {
                    println!(
                        "{:<36} {:<9} {:<24} {:<20} {:<21} {}",
                        line(&a.task.task_id),
                        line(a.state.as_str()),
                        line(&a.task.rule),
                        line(&a.task.action),
                        line(&store::format_time(a.expires)),
                        line(a.decided_by.as_deref().unwrap_or(""))
                    );
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        Cmd::Approve(d) => (Verdict::Approve, d),
        Cmd::Deny(d) => (Verdict::Deny, d),
    };
    // Recorded as `by` and in the audit trail as who; the audit record's `from` is the OS
    // user and host whatever `--by` says.
    let actor = whale_kernel::audit::Actor::cli(d.by.as_deref());
    let by = actor.who.clone();
    let a = store::decide(&nats, &kv, &d.id, verdict, &actor, d.reason).await?;
    if d.json {
        super::print_json(&a)?;
    } else {
        println!(
            "{} {} (rule {}, action {} on cluster {}) by {}",
            line(a.state.as_str()),
            line(&a.task.task_id),
            line(&a.task.rule),
            line(&a.task.action),
            line(&a.task.cluster),
            line(&by)
        );
    }
    Ok(ExitCode::SUCCESS)
}

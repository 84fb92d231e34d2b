//! Command-line surface (docs/contract.md "CLI"): one subcommand per module. Data-printing
//! commands take `--json`.

mod approvals;
mod audit;
mod auth;
mod clusters;
mod dead_letters;
mod events;
mod exec;
mod hooks;
mod publish;
mod replay;
mod rules;
mod run;
mod schemas;
mod setup;
mod status;
mod term;
pub(crate) mod trace;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use whale_kernel::{Config, Nats};

#[derive(Parser)]
#[command(
    name = "whale",
    version,
    about = "Event-driven automation: events in, rules matched, StackStorm tasks out"
)]
pub struct Cli {
    /// Configuration file (default: $WHALE_CONFIG, then ./whale.toml if present).
    #[arg(long, global = true, env = "WHALE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

impl Cli {
    /// `whale run`: the long-running worker (see `purge_sooner` in main.rs).
    pub fn is_run(&self) -> bool {
        matches!(self.cmd, Cmd::Run(_))
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Run pipeline stages in this process (default: all).
    Run(run::Args),
    /// Create or update streams, consumers and buckets (idempotent).
    Setup(setup::Args),
    /// Publish events to whale.in.<type>.
    Publish(publish::Args),
    /// Manage event-type JSON Schemas.
    Schemas {
        #[command(subcommand)]
        cmd: schemas::Cmd,
    },
    /// Rule files: check, apply, test offline, show the active set.
    Rules {
        #[command(subcommand)]
        cmd: rules::Cmd,
    },
    /// StackStorm clusters: list with health, drain and undrain.
    Clusters {
        #[command(subcommand)]
        cmd: clusters::Cmd,
    },
    /// StackStorm task management: list, get, logs, retry, pause, resume, cancel.
    Exec {
        #[command(subcommand)]
        cmd: exec::Cmd,
    },
    /// Tasks dispatch gave up on: list, show, retry (same task id, never twice).
    DeadLetters {
        #[command(subcommand)]
        cmd: dead_letters::Cmd,
    },
    /// The approval gate: list, approve, deny held tasks.
    Approvals {
        #[command(subcommand)]
        cmd: approvals::Cmd,
    },
    /// Replay or backtest the accepted-event history through the rules.
    Replay(replay::Args),
    /// Search stored events, rejections and pipeline records.
    Events {
        #[command(subcommand)]
        cmd: events::Cmd,
    },
    /// One event's story: accepted or rejected, matched rules, tasks, throttle, dispatch, result.
    Trace(trace::Args),
    /// Stage health: server, streams, consumer backlog.
    Status(status::Args),
    /// API tokens and the HTTP route policy: hash-token, routes.
    Auth {
        #[command(subcommand)]
        cmd: auth::Cmd,
    },
    /// Webhook adapters (`POST /v1/hooks/<name>`): list them, test a body offline.
    Hooks {
        #[command(subcommand)]
        cmd: hooks::Cmd,
    },
    /// The audit trail: who approved, retried, applied, drained, replayed — newest first.
    Audit(audit::Args),
}

pub async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(cli.config.as_deref())?;
    match cli.cmd {
        Cmd::Run(a) => run::run(cfg, a).await,
        Cmd::Setup(a) => setup::run(cfg, a).await,
        Cmd::Publish(a) => publish::run(cfg, a).await,
        Cmd::Schemas { cmd } => schemas::run(cfg, cmd).await,
        Cmd::Rules { cmd } => rules::run(cfg, cmd).await,
        Cmd::Clusters { cmd } => clusters::run(cfg, cmd).await,
        Cmd::Exec { cmd } => exec::run(cfg, cmd).await,
        Cmd::Approvals { cmd } => approvals::run(cfg, cmd).await,
        Cmd::DeadLetters { cmd } => dead_letters::run(cfg, cmd).await,
        Cmd::Replay(a) => replay::run(cfg, a).await,
        Cmd::Events { cmd } => events::run(cfg, cmd).await,
        Cmd::Trace(a) => trace::run(cfg, a).await,
        Cmd::Status(a) => status::run(cfg, a).await,
        Cmd::Audit(a) => audit::run(cfg, a).await,
        Cmd::Auth { cmd } => auth::run(cmd),
        Cmd::Hooks { cmd } => hooks::run(cfg, cmd),
    }
}

/// Connects to NATS with the configured options and checks the server version.
pub async fn connect(cfg: &Config, role: &str) -> anyhow::Result<Nats> {
    let nats = Nats::connect(&cfg.nats, &format!("whale {role}")).await?;
    nats.check_server_version()?;
    Ok(nats)
}

/// Prints a value as pretty JSON on stdout.
pub fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

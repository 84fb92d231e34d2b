//! `whale clusters list|drain|undrain`: the StackStorm clusters dispatch routes to. Drains live
//! in the `whale_state` bucket, and running dispatch workers follow them at once: a drained
//! cluster gets no new tasks (they go to its failover, or wait) while in-flight ones finish.

use std::process::ExitCode;

use whale_dispatch::admin;
use whale_kernel::audit::{Action, Actor, Record, Target};
use whale_kernel::{Config, Nats};

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Every configured cluster: URL, failover, drained, last breaker change, health now.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Send no new tasks to NAME (they go to its failover, or wait); in-flight ones finish.
    Drain { name: String },
    /// Send new tasks to NAME again.
    Undrain { name: String },
}

/// The audit record of a drain or undrain that changed something.
async fn audited(nats: &Nats, action: Action, name: &str) -> anyhow::Result<()> {
    let mut rec = Record::new(&Actor::cli(None), action, Target::new("cluster", name));
    rec.cluster = Some(name.to_owned());
    super::audit::write(nats, &rec, &format!("the {}", action.as_str())).await
}

pub async fn run(cfg: Config, cmd: Cmd) -> anyhow::Result<ExitCode> {
    let nats = super::connect(&cfg, "clusters").await?;
    if matches!(cmd, Cmd::Drain { .. } | Cmd::Undrain { .. }) {
        super::audit::preflight(&nats).await?;
    }
    match cmd {
        Cmd::Drain { name } => {
            let failover = cfg.clusters.get(&name).and_then(|c| c.failover.clone());
            let changed = admin::drain(&nats, &cfg, &name).await?;
            let recorded = match changed {
                true => audited(&nats, Action::ClusterDrain, &name).await,
                false => Ok(()),
            };
            let then = match failover {
                Some(f) => format!("new tasks go to {f}"),
                None => "new tasks wait (no failover configured)".to_owned(),
            };
            match changed {
                true => println!("drained {name}: {then}; in-flight tasks finish"),
                false => println!("{name} was already drained: {then}"),
            }
            recorded?;
        }
        Cmd::Undrain { name } => match admin::undrain(&nats, &cfg, &name).await? {
            true => {
                let recorded = audited(&nats, Action::ClusterUndrain, &name).await;
                println!("undrained {name}: it takes new tasks again");
                recorded?;
            }
            false => println!("{name} was not drained"),
        },
        Cmd::List { json } => {
            let list = admin::list(&nats, &cfg).await?;
            if json {
                super::print_json(&list)?;
                return Ok(ExitCode::SUCCESS);
            }
            if list.is_empty() {
                println!(
                    "no cluster configured: set WHALE_ST2_URL, or [clusters.<name>] in whale.toml"
                );
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<12} {:<32} {:<10} {:<8} {:<8} HEALTH",
                "NAME", "URL", "FAILOVER", "DRAINED", "BREAKER"
            );
            for c in &list {
                let health = match (&c.health.error, &c.health.version) {
                    (Some(e), _) => format!("down: {e}"),
                    (None, Some(v)) => format!("ok ({v}, {} ms)", c.health.latency_ms),
                    (None, None) => format!("ok ({} ms)", c.health.latency_ms),
                };
                let breaker = c.breaker.as_ref().map_or("closed", |b| b.state.as_str());
                println!(
                    "{:<12} {:<32} {:<10} {:<8} {:<8} {health}",
                    c.name,
                    c.url,
                    c.failover.as_deref().unwrap_or("-"),
                    if c.drained { "yes" } else { "no" },
                    breaker,
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

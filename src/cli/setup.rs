//! `whale setup`: create or update streams, consumers and KV buckets, and say what changed.

use std::process::ExitCode;

use whale_kernel::setup::{self, Change};
use whale_kernel::Config;

#[derive(clap::Args)]
pub struct Args {
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(cfg: Config, a: Args) -> anyhow::Result<ExitCode> {
    let nats = super::connect(&cfg, "setup").await?;
    let report = setup::setup(&nats, &cfg).await?;
    if a.json {
        super::print_json(&report)?;
    } else {
        for item in &report {
            println!(
                "{:<9} {:<10} {}",
                item.kind,
                format!("{:?}", item.change).to_lowercase(),
                item.name
            );
        }
        let changed = report
            .iter()
            .filter(|i| i.change != Change::Unchanged)
            .count();
        println!(
            "setup done on nats-server {}: {changed} changed, {} unchanged (retention of accepted events: {})",
            nats.server_version(),
            report.len() - changed,
            humantime::format_duration(cfg.events.retention)
        );
    }
    Ok(ExitCode::SUCCESS)
}

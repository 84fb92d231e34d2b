//! `whale status`: server version, streams, and per stage its consumer backlog.

use std::process::ExitCode;

use whale_kernel::Config;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    json: bool,
}

pub async fn run(cfg: Config, a: Args) -> anyhow::Result<ExitCode> {
    let nats = super::connect(&cfg, "status").await?;
    let st = whale_kernel::status::status(&nats, &cfg).await?;
    if a.json {
        super::print_json(&st)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("nats-server {} ({})", st.server_version, st.server_name);
    println!(
        "\n{:<16} {:>10} {:>12} {:>9}",
        "STREAM", "MESSAGES", "BYTES", "CONSUMERS"
    );
    for s in &st.streams {
        match &s.error {
            Some(e) => println!("{:<16} {e}", s.name),
            None => println!(
                "{:<16} {:>10} {:>12} {:>9}",
                s.name, s.messages, s.bytes, s.consumers
            ),
        }
    }
    println!(
        "\n{:<10} {:<15} {:>10} {:>12} {:>12} {:>8}",
        "STAGE", "CONSUMER", "PENDING", "ACK-PENDING", "REDELIVERED", "WAITING"
    );
    for c in &st.consumers {
        match &c.error {
            Some(e) => println!("{:<10} {:<15} {e}", c.stage, c.consumer),
            None => println!(
                "{:<10} {:<15} {:>10} {:>12} {:>12} {:>8}",
                c.stage, c.consumer, c.pending, c.ack_pending, c.redelivered, c.waiting
            ),
        }
    }
    Ok(ExitCode::SUCCESS)
}

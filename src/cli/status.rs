//! `whale status`: server version, streams, per stage its consumer backlog, and Redis.

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
    let redis = redis_status(&cfg).await;
    if a.json {
        let mut v = serde_json::to_value(&st)?;
        v["redis"] = redis;
        super::print_json(&v)?;
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
    if st.consumers.iter().any(|c| c.own_position) {
        println!(
            "(the embedded index keeps its own place: its rows are its readings in stream order, nothing acked)"
        );
    }
    println!(
        "\n{}: {}",
        redis["servers"].as_str().unwrap_or("redis"),
        redis["error"].as_str().unwrap_or("ok")
    );
    Ok(ExitCode::SUCCESS)
}

/// What `redis.url` names (one server, a cluster, a Sentinel master; never a password) and
/// whether it answers the throttle's health probe now.
async fn redis_status(cfg: &Config) -> serde_json::Value {
    match whale_throttle::Limiter::from_config(&cfg.redis) {
        Err(e) => serde_json::json!({"servers": "redis", "ok": false, "error": e.to_string()}),
        Ok(l) => match l.ping().await {
            Ok(()) => serde_json::json!({"servers": l.servers(), "ok": true}),
            Err(e) => serde_json::json!({"servers": l.servers(), "ok": false, "error": e}),
        },
    }
}

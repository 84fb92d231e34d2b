//! `whale-bench`: whale's benchmarks, a binary of its own so that the product (`whale`) ships no
//! test helpers (the kernel's `testkit` starts private servers here). Every figure is printed
//! beside a raw JetStream reference measured on the same server in the same run.
//!
//! Build everything a run needs (this binary, `whale` and the StackStorm emulator, side by side):
//! `cargo build --release -p whale -p whale-bench -p st2-emulator`.

// The pipeline result is one `json!` object with more keys than the macro's default depth allows.
#![recursion_limit = "256"]

mod console;
mod pipeline;
mod raw;
mod rules_load;
mod scale;
mod validate;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use whale_kernel::{Config, Nats};

/// The allocator `whale` runs on, so that the work measured in this process (the validate
/// stage, the scale bench's in-process reference) runs as it does in the product.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "whale-bench",
    version,
    about = "whale benchmarks: figures beside a raw JetStream reference of the same run"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// validate stage: whale.in → whale.events events/s vs raw JetStream publish and consume+ack.
    Validate(validate::Args),
    /// The whole pipeline (all stages, NATS, Redis, StackStorm emulator) end to end: events/s,
    /// ingest→StackStorm latency, CPU/memory per process, beside raw JetStream rates.
    Pipeline(pipeline::Args),
    /// One CPU-heavy stage (match with 10,000 regex rules by default) working through a backlog
    /// with 1 process, then K: does it scale with copies?
    Scale(scale::Args),
    /// Rule-set load (check + apply + every worker switched) at 10,000 and 50,000 rules, one
    /// file and many, on a default-settings nats-server, beside raw KV puts of the same bytes;
    /// and the RSS of a match worker holding 10,000 rules.
    RulesLoad(rules_load::Args),
    /// The operator console: page weight of a first view and page response times with 100,000
    /// events indexed through the ingest path, beside the JSON route of the same data.
    Console(console::Args),
}

fn main() -> ExitCode {
    let args = Cli::parse();
    whale_kernel::telemetry::init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("whale-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let run = async {
        // Read as `whale` reads it ($WHALE_CONFIG, ./whale.toml, WHALE_*); the NATS URL is
        // replaced by the private server's.
        let cfg = Config::load(None)?;
        match args.cmd {
            Cmd::Validate(a) => validate::run(cfg, a).await,
            Cmd::Pipeline(a) => pipeline::run(cfg, a).await,
            Cmd::Scale(a) => scale::run(cfg, a).await,
            Cmd::RulesLoad(a) => rules_load::run(cfg, a).await,
            Cmd::Console(a) => console::run(cfg, a).await,
        }
    };
    match rt.block_on(run) {
        Ok(code) => code,
        Err(e) => {
            eprintln!(
                "whale-bench: {}",
                whale_kernel::telemetry::scrub(&format!("{e:#}"))
            );
            ExitCode::FAILURE
        }
    }
}

/// Connects to NATS with the configured options and checks the server version.
async fn connect(cfg: &Config, role: &str) -> anyhow::Result<Nats> {
    let nats = Nats::connect(&cfg.nats, &format!("whale-bench {role}")).await?;
    nats.check_server_version()?;
    Ok(nats)
}

/// Prints a value as pretty JSON on stdout.
fn print_json(v: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

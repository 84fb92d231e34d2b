//! The `whale` binary: parses the command line and hands off to one module per command. Errors
//! print as `whale: <what went wrong>: <why>` with the fix where one is known; exit code 1 means
//! the command failed, 2 a usage error, 3 that it ran but found problems (refused events, rules).

mod backtest;
mod cli;
mod console;
mod registry;
mod rules_api;
use whale_rulestore as rules_store;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of glibc malloc: every record in flight allocates (payloads, headers, JSON
/// values) on several runtime threads at once, and glibc's malloc, free and realloc took ~34%
/// of whale's CPU in the one-process pipeline (perf; docs/operations.md, "Whole pipeline").
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    whale_kernel::telemetry::init();
    whale_kernel::tls::install_crypto_provider();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("whale: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(cli::dispatch(args));
    drop(rt);
    whale_kernel::telemetry::shutdown();
    match result {
        Ok(code) => code,
        Err(e) => {
            // Errors may quote a configured URL: never with its credentials.
            eprintln!(
                "whale: {}",
                whale_kernel::telemetry::scrub(&format!("{e:#}"))
            );
            ExitCode::FAILURE
        }
    }
}

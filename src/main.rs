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

/// How long (ms) mimalloc keeps freed memory before giving it back to the system, in a
/// `whale run` whose environment does not set `MIMALLOC_PURGE_DELAY` (mimalloc's own default is
/// 1000).
const PURGE_DELAY_MS: &str = "100";

/// mimalloc reads its options from the environment once, as the process starts, and has no safe
/// way to change them later. With its default purge delay (1 s) the memory the embedded index
/// frees after each commit (about once a second) was still held when the next commit allocated:
/// a `whale run` with every stage, 10,000 rules and the embedded index at 2k events/s peaked at
/// 145–162 MB RSS over ten runs, and at 138–142 MB over five with 100 ms, for 2–5% more CPU at
/// full speed (docs/operations.md, "Memory"). So `whale run` starts itself again once (exec:
/// the same process id, arguments and environment) with `MIMALLOC_PURGE_DELAY=100`, unless the
/// environment already sets it (to any value: `1000` restores mimalloc's default).
fn purge_sooner() {
    use std::os::unix::process::CommandExt as _;
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_default();
    let err = std::process::Command::new(exe)
        .arg0(arg0)
        .args(args)
        .env("MIMALLOC_PURGE_DELAY", PURGE_DELAY_MS)
        .exec();
    // `exec` returns only when it failed: go on with mimalloc's defaults.
    eprintln!(
        "whale: could not start again with MIMALLOC_PURGE_DELAY={PURGE_DELAY_MS} ({err}); \
         going on with mimalloc's default (freed memory is held longer)"
    );
}

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    if args.is_run() {
        purge_sooner();
    }
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

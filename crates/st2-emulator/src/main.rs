//! `st2-emulator`: a StackStorm stand-in for whale's tests and local quick start, because
//! StackStorm itself cannot run on these machines. It serves, on one port as StackStorm behind
//! its nginx does, `/api/v1`, `/auth/v1` and `/stream/v1`, keeps everything in memory, and is
//! checked against the official `st2` CLI by this crate's tests. README.md here lists what it serves.

mod actions;
mod admin;
mod app;
mod auth;
mod execution;
mod executions;
mod faults;
mod lifecycle;
mod operations;
mod params;
mod resources;
mod runners;
mod state;
mod stream;
mod util;

use anyhow::Context;
use clap::Parser;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

/// A StackStorm API stand-in (executions, actions, traces, auth tokens, SSE stream).
#[derive(Debug, Parser)]
#[command(name = "st2-emulator", version)]
struct Args {
    /// Address to listen on; port 0 picks a free one (the real address is printed).
    #[arg(long, default_value = "127.0.0.1:9101")]
    listen: String,
    /// YAML file of actions (a list, or `{users: [{name, password}], actions: [...]}`).
    #[arg(long)]
    actions: Option<PathBuf>,
    /// Accept every action ref with any parameters (executions succeed).
    #[arg(long)]
    any_action: bool,
    /// Accept only this API key (and tokens issued here); without it any non-empty key works.
    #[arg(long, env = "ST2_EMULATOR_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Accept requests without any credentials (StackStorm with auth disabled).
    #[arg(long)]
    no_auth: bool,
    /// Base of `web_url` in executions (default: http://<listen address>).
    #[arg(long)]
    webui_url: Option<String>,
    /// Default and maximum token TTL in seconds.
    #[arg(long, default_value_t = 86_400)]
    token_ttl: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("ST2_EMULATOR_LOG"))
        .init();
    if let Err(e) = run(Args::parse()).await {
        eprintln!("st2-emulator: {e:#}");
        std::process::exit(2);
    }
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<()> {
    let file = match &args.actions {
        Some(p) => actions::ActionsFile::load(p)?,
        None => actions::ActionsFile::default(),
    };
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {} (is the port taken?)", args.listen))?;
    let addr = listener.local_addr()?;
    let cfg = state::Config {
        api_key: args.api_key.filter(|k| !k.is_empty()),
        any_action: args.any_action,
        no_auth: args.no_auth,
        webui_url: args.webui_url.unwrap_or_else(|| format!("http://{addr}")),
        token_ttl: args.token_ttl.max(1),
    };
    let faults = Arc::new(faults::Faults::default());
    let emu = Arc::new(state::Emu::new(
        cfg,
        file.actions,
        file.users,
        faults.clone(),
    ));
    let listener = faults::FaultyListener {
        inner: listener,
        faults,
    };
    let svc = app::service(emu);
    println!("listening on {addr}");
    std::io::stdout().flush()?;
    axum::serve(
        listener,
        axum::ServiceExt::<axum::extract::Request>::into_make_service(svc),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}

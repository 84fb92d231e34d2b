//! `whale hooks`: the webhook adapters this configuration serves, and what a body becomes
//! through one of them, offline (no NATS), so a mapping can be tried before a sender is pointed
//! at it.

use std::process::ExitCode;

use anyhow::Context as _;
use serde_json::json;
use whale_kernel::Config;
use whale_validate::hooks::Hooks;

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// The hooks served at `POST /v1/hooks/<name>`: adapter, limits, allowed tokens.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Run a body through a hook's adapter and print the envelopes (or the error); nothing is
    /// sent. Exits 1 when the body would be refused.
    Test {
        /// The hook's name (`whale hooks list`).
        name: String,
        /// The body, as the sender would post it (`-` for stdin).
        #[arg(long)]
        body: String,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cfg: Config, cmd: Cmd) -> anyhow::Result<ExitCode> {
    whale_rules::set_default_eval_time(Some(cfg.rules.eval_time_limit).filter(|d| !d.is_zero()));
    let hooks = Hooks::from_config(&cfg)?;
    match cmd {
        Cmd::List { json } => {
            let rows: Vec<_> = hooks
                .iter()
                .map(|h| {
                    json!({
                        "name": h.name,
                        "path": format!("/v1/hooks/{}", h.name),
                        "adapter": h.adapter.name(),
                        "emits": h.adapter.emits(),
                        "tokens": h.tokens,
                        "max_body_bytes": h.max_body_bytes,
                        "max_items": h.max_items,
                        "jq": h.jq,
                    })
                })
                .collect();
            if json {
                super::print_json(&rows)?;
            } else {
                println!(
                    "{:<16} {:<13} {:<26} {:>10} {:>6}  tokens",
                    "name", "adapter", "emits", "max_bytes", "items"
                );
                for h in hooks.iter() {
                    let tokens = if h.tokens.is_empty() {
                        "(any producer)".to_owned()
                    } else {
                        h.tokens.join(",")
                    };
                    println!(
                        "{:<16} {:<13} {:<26} {:>10} {:>6}  {tokens}",
                        h.name,
                        h.adapter.name(),
                        h.adapter.emits(),
                        h.max_body_bytes,
                        h.max_items
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Test { name, body, json } => {
            let Some(hook) = hooks.get(&name) else {
                anyhow::bail!(
                    "no hook named {name:?}: this configuration has {} (add others as [[hooks]] in whale.toml, see docs/sources.md)",
                    hooks.names().join(", ")
                );
            };
            let bytes = if body == "-" {
                let mut b = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)
                    .context("cannot read the body from stdin")?;
                b
            } else {
                std::fs::read(&body).with_context(|| format!("cannot read {body}"))?
            };
            let limits = cfg.events.limits();
            match hook.convert(&bytes, &limits, time::OffsetDateTime::now_utc()) {
                Ok(evs) => {
                    if json {
                        super::print_json(&json!({"hook": name, "events": evs}))?;
                    } else {
                        println!(
                            "hook {name} ({}): {} event(s)",
                            hook.adapter.name(),
                            evs.len()
                        );
                        for ev in &evs {
                            println!("{}", serde_json::to_string(ev)?);
                        }
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    if json {
                        super::print_json(&json!({
                            "hook": name,
                            "status": e.status.as_u16(),
                            "error": e.message,
                            "reasons": e.reasons,
                        }))?;
                    } else {
                        eprintln!("whale: {} ({})", e, e.status);
                    }
                    Ok(ExitCode::from(1))
                }
            }
        }
    }
}

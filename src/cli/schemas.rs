//! `whale schemas apply DIR`: check every schema file, then store the changed ones; running
//! validate workers pick them up without restart.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::{json, Value};
use whale_kernel::audit::{Action, Actor, Record, Target};
use whale_kernel::setup::Change;
use whale_kernel::{Config, Nats};
use whale_validate::schemas::Applied;

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Check and load the JSON Schemas in DIR (<event_type>.json each).
    Apply {
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Check the schema files in DIR without a server.
    Check { dir: PathBuf },
}

pub async fn run(cfg: Config, cmd: Cmd) -> anyhow::Result<ExitCode> {
    match cmd {
        Cmd::Check { dir } => {
            let files = whale_validate::schemas::read_dir(&dir, &cfg.api.schema_limits())?;
            for f in &files {
                println!("ok  {:<24} {}", f.event_type, f.path.display());
            }
            println!("{} schema(s) valid", files.len());
        }
        Cmd::Apply { dir, json } => {
            let nats = super::connect(&cfg, "schemas").await?;
            super::audit::preflight(&nats).await?;
            let applied =
                whale_validate::schemas::apply_dir(&nats, &dir, &cfg.api.schema_limits()).await?;
            let audited = audit_apply(&nats, &dir, &applied).await;
            if json {
                super::print_json(&applied)?;
            } else {
                for a in &applied {
                    println!(
                        "{:<10} {:<24} v{}",
                        format!("{:?}", a.change).to_lowercase(),
                        a.event_type,
                        a.version
                    );
                }
            }
            audited?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The audit record of an apply that changed something: each changed type's version before
/// (null: new) and after.
async fn audit_apply(nats: &Nats, dir: &Path, applied: &[Applied]) -> anyhow::Result<()> {
    let changed: Vec<&Applied> = applied
        .iter()
        .filter(|a| a.change != Change::Unchanged)
        .collect();
    if changed.is_empty() {
        return Ok(());
    }
    let mut before = serde_json::Map::new();
    let mut after = serde_json::Map::new();
    for a in &changed {
        let old = match a.change {
            Change::Updated => json!(a.version - 1),
            _ => Value::Null,
        };
        before.insert(a.event_type.clone(), old);
        after.insert(a.event_type.clone(), json!(a.version));
    }
    let types: Vec<&str> = changed.iter().map(|a| a.event_type.as_str()).collect();
    let versions: Vec<String> = changed
        .iter()
        .map(|a| format!("{}@{}", a.event_type, a.version))
        .collect();
    // Types and new versions identify the change: a repeated write is stored once.
    let natural =
        &whale_kernel::digest(&versions.iter().map(String::as_str).collect::<Vec<_>>())[..24];
    let rec = Record::new(
        &Actor::cli(None),
        Action::SchemasApply,
        Target::new("schemas", types.join(",")),
    )
    .natural_id(natural)
    .before_after(Value::Object(before), Value::Object(after))
    .details(json!({"dir": dir.display().to_string()}));
    super::audit::write(nats, &rec, "the schemas apply").await
}

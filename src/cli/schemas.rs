//! `whale schemas apply DIR`: check every schema file, then store the changed ones; running
//! validate workers pick them up without restart.

use std::path::PathBuf;
use std::process::ExitCode;

use whale_kernel::Config;

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
            let applied =
                whale_validate::schemas::apply_dir(&nats, &dir, &cfg.api.schema_limits()).await?;
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
        }
    }
    Ok(ExitCode::SUCCESS)
}

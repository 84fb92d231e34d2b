//! `whale auth`: make the config entry for an API token (only its hash is stored) and print the
//! route policy table the HTTP server enforces.

use std::io::Read as _;
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use serde_json::json;
use whale_kernel::auth::{self, Role};

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Read a token from stdin and print the `[[auth.tokens]]` entry to paste into whale.toml
    /// (or the tokens file): the token itself is never stored.
    HashToken {
        /// The principal's name, recorded as who acted.
        #[arg(long)]
        name: String,
        /// producer, viewer, operator or admin.
        #[arg(long, value_parser = parse_role)]
        role: Role,
    },
    /// Every HTTP route with the role it needs.
    Routes {
        #[arg(long)]
        json: bool,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    serde_json::from_value(json!(s))
        .map_err(|_| format!("unknown role {s:?}: use producer, viewer, operator or admin"))
}

pub fn run(cmd: Cmd) -> anyhow::Result<ExitCode> {
    match cmd {
        Cmd::HashToken { name, role } => {
            let mut token = String::new();
            std::io::stdin()
                .read_to_string(&mut token)
                .context("cannot read the token from stdin")?;
            let token = token.trim_end_matches(['\r', '\n']);
            if token.len() < 16 {
                bail!("the token on stdin is shorter than 16 characters: use a random one, e.g. `openssl rand -hex 32`");
            }
            println!("{}", auth::token_line(&name, role, token));
        }
        Cmd::Routes { json } => {
            let rows: Vec<_> = auth::POLICIES
                .iter()
                .map(|p| json!({"method": p.method, "route": p.route, "access": p.access.as_str()}))
                .collect();
            if json {
                super::print_json(&rows)?;
            } else {
                for p in auth::POLICIES {
                    println!("{:<6} {:<36} {}", p.method, p.route, p.access.as_str());
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

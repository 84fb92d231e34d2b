//! `whale audit [--since T] [--who NAME] [--action A] [--limit N] [--json]`: the audit trail,
//! newest first, read from its stream (`WHALE_AUDIT`, kept `audit.retention`, default 400 days).
//! Also the two calls every CLI command that changes something makes around its action
//! ([`preflight`] before, [`write`] after), so that the CLI audits the way the HTTP API does.

use std::process::ExitCode;

use anyhow::Context as _;
use whale_kernel::audit::{self, Filter, Record};
use whale_kernel::{Config, Nats};

use super::term::line;

#[derive(clap::Args)]
pub struct Args {
    /// Only records since this time: RFC 3339, or an age like 24h, 7d (default: all).
    #[arg(long)]
    since: Option<String>,
    /// Only this principal (an API token's name, `link:<channel>`, or a CLI user).
    #[arg(long)]
    who: Option<String>,
    /// Only this action (`exec.retry`) or area (`exec`, `approval`, `rules`, `cluster`, ...).
    #[arg(long)]
    action: Option<String>,
    /// At most this many, the newest (default 50; at most `audit.max_list`).
    #[arg(long)]
    limit: Option<usize>,
    /// One JSON record per line.
    #[arg(long)]
    json: bool,
}

pub async fn run(cfg: Config, a: Args) -> anyhow::Result<ExitCode> {
    let f: Filter = audit::make_filter(a.since.as_deref(), a.who, a.action, a.limit, &cfg)
        .map_err(anyhow::Error::msg)?;
    let nats = super::connect(&cfg, "audit").await?;
    let records = audit::list(&nats, &f).await?;
    if a.json {
        for r in &records {
            println!("{}", serde_json::to_string(r)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", render(&records));
    Ok(ExitCode::SUCCESS)
}

/// The human table: one line per record, then its explaining lines (reason, before → after,
/// error). Every text from a record is escaped for the terminal.
pub fn render(records: &[Record]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<24} {:<16} {:<16} {:<44} {:<8} FROM",
        "AT", "WHO", "ACTION", "TARGET", "OUTCOME"
    );
    for r in records {
        // Milliseconds are enough to read; the record keeps the full time.
        let ms = time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        );
        let at = whale_index::time::parse_time(&r.at)
            .ok()
            .and_then(|t| t.to_offset(time::UtcOffset::UTC).format(&ms).ok())
            .unwrap_or_else(|| r.at.clone());
        let _ = writeln!(
            out,
            "{:<24} {:<16} {:<16} {:<44} {:<8} {} {}",
            line(&at),
            line(&r.who),
            line(&r.action),
            line(&cut(&format!("{} {}", r.target.kind, r.target.id), 44)),
            r.outcome.as_str(),
            line(&r.via),
            line(&r.from)
        );
        let pad = " ".repeat(25);
        if let Some(reason) = &r.reason {
            let _ = writeln!(out, "{pad}reason: {}", line(reason));
        }
        if let (Some(b), Some(a)) = (&r.before, &r.after) {
            let _ = writeln!(
                out,
                "{pad}before {} → after {}",
                line(&whale_index::trace::compact(b, 300)),
                line(&whale_index::trace::compact(a, 300))
            );
        }
        if let Some(d) = &r.details {
            let _ = writeln!(out, "{pad}{}", line(&whale_index::trace::compact(d, 300)));
        }
        if let Some(e) = &r.error {
            let _ = writeln!(out, "{pad}error: {}", line(e));
        }
    }
    if records.is_empty() {
        let _ = writeln!(out, "(no audit records match)");
    }
    out
}

/// `s` cut to `max` characters (marked `…`).
fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}

/// Before a CLI command changes anything: refuses while the audit trail cannot take a record
/// (nothing is done then).
pub async fn preflight(nats: &Nats) -> anyhow::Result<()> {
    audit::check(nats).await.map_err(anyhow::Error::new)
}

/// After the change: writes its record; the error says the change was made but is not recorded
/// (the command exits 1 after printing what it did).
pub async fn write(nats: &Nats, rec: &Record, what: &str) -> anyhow::Result<()> {
    audit::record(nats, rec)
        .await
        .with_context(|| format!("{what} was done, but its audit record is missing"))
}

//! `whale events search QUERY [--from T] [--to T] [--limit N] [--kind K] [--json]`: searches what
//! the index stage stored, on whichever backend is configured (embedded index in WHALE_INDEX_DIR,
//! or WHALE_OPENSEARCH_URL). Read-only: it never takes the embedded index's writer, so it works
//! while `whale run --stages index` runs in another process. The same search is served as
//! `GET /v1/events` by a `whale run` that runs the index stage.

use std::process::ExitCode;

use serde_json::Value;
use whale_index::trace::compact;
use whale_index::{Doc, Error};
use whale_kernel::Config;

use super::term::line;

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Search stored events (newest first). Query syntax: `event_type:vm.disk_usage AND
    /// detail.host:web-12`, ranges `detail.usage_pct:[90 TO 100]` or `>=90`, free text `kernel
    /// oops`, phrases, wildcards `web-*`, `-field:value`, `_exists_:detail.code`.
    Search(SearchArgs),
}

#[derive(clap::Args)]
pub struct SearchArgs {
    /// The query; empty or `*` matches everything.
    #[arg(default_value = "*")]
    query: String,
    /// Earliest event time: RFC 3339, a date, or how long ago (15m, 1h, 7d).
    #[arg(long)]
    from: Option<String>,
    /// Latest event time (same forms as --from).
    #[arg(long)]
    to: Option<String>,
    /// Most hits to print (at most index.search_max_limit, 10000 by default).
    #[arg(long, default_value_t = whale_index::http::DEFAULT_LIMIT)]
    limit: usize,
    /// Document kinds: a comma list (event, rejected, matched, task, render_failed, admitted,
    /// throttled, approval, decision, dispatched, dead_letter, result, audit, unparsed) or `all`.
    #[arg(long, default_value = "event,rejected")]
    kind: String,
    /// Print one JSON document `{"total": N, "hits": [...]}`.
    #[arg(long)]
    json: bool,
}

pub async fn run(cfg: Config, cmd: Cmd) -> anyhow::Result<ExitCode> {
    let Cmd::Search(a) = cmd;
    let search = match whale_index::http::make_search(
        &a.query,
        a.from.as_deref(),
        a.to.as_deref(),
        Some(a.limit),
        Some(&a.kind),
        &cfg.index,
    ) {
        Ok(s) => s,
        Err(msg) => {
            eprintln!("whale: {msg}");
            return Ok(ExitCode::from(2));
        }
    };
    let backend = whale_index::reader(&cfg)?;
    let hits = match backend.search(&search).await {
        Ok(h) => h,
        Err(Error::Invalid(m)) => {
            eprintln!("whale: {m}");
            return Ok(ExitCode::from(2));
        }
        Err(e) => {
            return Err(anyhow::anyhow!(
                "search on the {} index: {e}",
                backend.name()
            ))
        }
    };
    if a.json {
        super::print_json(&hits)?;
        return Ok(ExitCode::SUCCESS);
    }
    if hits.hits.is_empty() {
        println!("no {} match {:?}", kinds_word(&a.kind), a.query);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<24}  {:<10}  {:<20}  {:<28}  WHAT",
        "TIME", "KIND", "TYPE", "EVENT ID"
    );
    for d in &hits.hits {
        // Every column comes from a stored record: escaped for the terminal.
        println!(
            "{:<24}  {:<10}  {:<20}  {:<28}  {}",
            line(&d.time_str()),
            line(&d.kind),
            line(d.event_type.as_deref().unwrap_or("-")),
            line(d.event_id.as_deref().unwrap_or("-")),
            line(&what(d))
        );
    }
    println!(
        "{} of {} matching {}, newest first{}",
        hits.hits.len(),
        hits.total,
        kinds_word(&a.kind),
        if (hits.hits.len() as u64) < hits.total {
            " (--limit for more)"
        } else {
            ""
        }
    );
    Ok(ExitCode::SUCCESS)
}

fn kinds_word(kind: &str) -> String {
    match kind {
        "event,rejected" => "events".into(),
        "all" | "*" => "records".into(),
        k => format!("records of kind {k}"),
    }
}

/// One line about a hit: an event's detail, a rejection's first reason, a record's summary.
fn what(d: &Doc) -> String {
    match d.kind.as_str() {
        "event" => d
            .detail
            .as_ref()
            .map(|v| compact(v, 100))
            .unwrap_or_default(),
        "rejected" => {
            let first = d.record["reasons"].get(0);
            let pointer = first.and_then(|r| r["pointer"].as_str()).unwrap_or("");
            let msg = first.and_then(|r| r["message"].as_str()).unwrap_or("");
            compact(&Value::String(format!("rejected: {pointer} {msg}")), 100)
                .trim_matches('"')
                .to_owned()
        }
        _ => whale_index::trace::step(d).summary,
    }
}

//! `whale publish`: one event from flags, or many from an NDJSON file (windowed async publish,
//! a progress bar on a terminal, a summary of counts at the end). Events are normalized here, so
//! a bad line is reported with its line number and never sent.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context as _};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use whale_kernel::envelope::{self, Defaults};
use whale_kernel::{Config, Window};
use whale_validate::ingest::ingest_output;

#[derive(clap::Args)]
pub struct Args {
    /// Event type (with --data: required; with --file: fills in events that have none).
    #[arg(long = "type")]
    event_type: Option<String>,
    /// The event's detail as JSON.
    #[arg(long, conflicts_with = "file")]
    data: Option<String>,
    /// NDJSON file of events (envelopes or CloudEvents), `-` for stdin.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Source of events that name none.
    #[arg(long, default_value = "whale-cli")]
    source: String,
    /// Event id (with --data); default: a new ULID.
    #[arg(long)]
    id: Option<String>,
    /// Label key=value (repeatable, with --data).
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not key=value"))
}

pub async fn run(cfg: Config, a: Args) -> anyhow::Result<ExitCode> {
    let limits = cfg.events.limits();
    let lines: Box<dyn Iterator<Item = std::io::Result<String>>> = match (&a.data, &a.file) {
        (Some(data), None) => {
            let Some(t) = &a.event_type else {
                bail!("--data needs --type")
            };
            let detail: Value = serde_json::from_str(data).context("--data is not JSON")?;
            let mut ev = json!({ "event_type": t, "detail": detail, "source": a.source });
            if let Some(id) = &a.id {
                ev["id"] = json!(id);
            }
            if !a.labels.is_empty() {
                ev["labels"] = json!(a
                    .labels
                    .iter()
                    .cloned()
                    .collect::<std::collections::BTreeMap<_, _>>());
            }
            Box::new(std::iter::once(Ok(ev.to_string())))
        }
        (None, Some(path)) if path.as_os_str() == "-" => Box::new(std::io::stdin().lock().lines()),
        (None, Some(path)) => {
            let f = std::fs::File::open(path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            Box::new(std::io::BufReader::new(f).lines())
        }
        _ => bail!("give --type T --data JSON, or --file F.ndjson"),
    };
    let total_hint = match &a.file {
        Some(p) if p.as_os_str() != "-" => std::fs::read(p).map(|b| bytecount(&b)).unwrap_or(0),
        _ => 0,
    };
    let nats = super::connect(&cfg, "publish").await?;
    let bar = if std::io::stderr().is_terminal() && total_hint > 1 {
        let b = ProgressBar::new(total_hint);
        b.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} events {per_sec} eta {eta}")
                .unwrap(),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let started = Instant::now();
    let mut window: Window<usize> = Window::new(nats.js.clone(), 1024);
    let mut refused: Vec<Value> = Vec::new();
    let mut ids = Vec::new();
    for (i, line) in lines.enumerate() {
        let line_no = i + 1;
        let line = line.with_context(|| format!("cannot read line {line_no}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let ev = envelope::parse_bytes(line.as_bytes(), &limits)
            .map_err(|r| vec![r])
            .and_then(|v| {
                envelope::normalize(v, &Defaults::fresh(a.event_type.as_deref(), &a.source))
            });
        match ev {
            Ok(ev) => {
                if a.data.is_some() {
                    ids.push(ev.id.clone());
                }
                for (_, r) in window.send(line_no, ingest_output(&ev)).await {
                    if let Err(e) = r {
                        tracing::warn!("publish failed: {e}");
                    }
                }
            }
            Err(reasons) => {
                let msg = reasons
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ");
                if !a.json {
                    eprintln!(
                        "whale: line {line_no}: refused: {}",
                        super::term::line(&msg)
                    );
                }
                refused.push(json!({ "line": line_no, "reasons": reasons }));
            }
        }
        bar.inc(1);
    }
    for (line, r) in window.drain().await {
        if let Err(e) = r {
            eprintln!("whale: line {line}: publish failed: {e}");
        }
    }
    bar.finish_and_clear();
    let s = window.stats;
    let secs = started.elapsed().as_secs_f64();
    if a.json {
        super::print_json(&json!({
            "published": s.published, "duplicates": s.duplicates, "failed": s.failed,
            "refused": refused.len(), "refused_lines": refused, "ids": ids, "seconds": secs,
        }))?;
    } else {
        for id in &ids {
            println!("{id}");
        }
        eprintln!(
            "published {}, duplicates {}, refused {}, failed {} in {:.2}s ({:.0} events/s)",
            s.published,
            s.duplicates,
            refused.len(),
            s.failed,
            secs,
            (s.published + s.duplicates) as f64 / secs.max(1e-9)
        );
    }
    Ok(if refused.is_empty() && s.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

fn bytecount(b: &[u8]) -> u64 {
    b.iter().filter(|c| **c == b'\n').count() as u64
}

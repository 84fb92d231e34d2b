//! `whale publish`: one event from flags, or many from an NDJSON file of any kind (regular file,
//! pipe, fifo, stdin; windowed async publish, a progress bar on a terminal, a summary of counts
//! at the end). Events are normalized here, so a bad line is reported with its line number and
//! never sent. An input that is not read to its end is an error, never a success; publishes NATS
//! did not confirm are retried with the same ids (deduplicated), then listed and the exit code is
//! non-zero.

use std::collections::HashMap;
use std::io::{BufRead, IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use whale_kernel::{Config, Nats, Output, Window};
use whale_validate::ingest::{ingest_output, is_stream_full, prepare_one};

/// Retries of publishes NATS did not confirm, and the first backoff (doubled each time): about
/// 31 s in all, far inside the deduplication window (`nats.duplicate_window`, 10 min), so a
/// retried event that was stored after all is dropped as a duplicate.
const RETRIES: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// How many not-stored events the error lists by line and id (plus the count).
const LIST_MAX: usize = 20;

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
    /// How often to send again, with the same ids, publishes NATS did not confirm (backoff 1 s,
    /// doubling; the default 5 takes about 31 s, far inside the deduplication window).
    #[arg(long, default_value_t = RETRIES)]
    retries: u32,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not key=value"))
}

pub async fn run(cfg: Config, a: Args) -> anyhow::Result<ExitCode> {
    let limits = cfg.events.limits();
    let mut input: Box<dyn BufRead> = match (&a.data, &a.file) {
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
            Box::new(std::io::Cursor::new(ev.to_string().into_bytes()))
        }
        (None, Some(path)) if path.as_os_str() == "-" => Box::new(std::io::stdin().lock()),
        (None, Some(path)) => {
            // Opened once and read once: a pipe, fifo or /dev/stdin has no second reading.
            let f = std::fs::File::open(path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            Box::new(std::io::BufReader::with_capacity(1 << 16, f))
        }
        _ => bail!("give --type T --data JSON, or --file F.ndjson"),
    };
    // Only a regular file can be counted ahead without consuming it.
    let total_hint = match &a.file {
        Some(p) if p.as_os_str() != "-" => match std::fs::metadata(p) {
            Ok(m) if m.is_file() => count_lines(p),
            _ => 0,
        },
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
    let mut p = Publisher::new(&nats);
    let mut refused: Vec<Value> = Vec::new();
    let mut ids = Vec::new();
    let mut line_no = 0usize;
    let mut buf = Vec::new();
    let mut read_error = None;
    loop {
        line_no += 1;
        let too_long = match read_line(&mut input, &mut buf, limits.max_bytes) {
            Ok(None) => break,
            Ok(Some(too_long)) => too_long,
            Err(e) => {
                read_error = Some(format!("cannot read line {line_no}: {e}"));
                break;
            }
        };
        if !too_long && buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let ev = if too_long {
            Err(vec![whale_kernel::envelope::Reason::new(
                "",
                format!(
                    "line is longer than {} bytes (events.max_bytes / WHALE_MAX_EVENT_BYTES)",
                    limits.max_bytes
                ),
            )])
        } else {
            prepare_one(&buf, &limits, a.event_type.as_deref(), &a.source)
        };
        match ev {
            Ok(ev) => {
                if a.data.is_some() {
                    ids.push(ev.id.clone());
                }
                p.send(line_no, ev.id.clone(), ingest_output(&ev)).await;
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
    p.settle().await;
    bar.finish_and_clear();
    p.retry(a.retries, a.json).await;
    let secs = started.elapsed().as_secs_f64();
    let line = |f: &Failed| json!({ "line": f.line, "id": f.id, "error": f.error });
    let unknown: Vec<&Failed> = p.failed.iter().filter(|f| !f.full).collect();
    let full: Vec<&Failed> = p.failed.iter().filter(|f| f.full).collect();
    if a.json {
        super::print_json(&json!({
            "published": p.published, "duplicates": p.duplicates,
            "failed": p.failed.len(),
            "unknown": unknown.iter().copied().map(line).collect::<Vec<_>>(),
            "not_stored": full.iter().copied().map(line).collect::<Vec<_>>(),
            "refused": refused.len(), "refused_lines": refused, "ids": ids, "seconds": secs,
            "input_error": read_error,
        }))?;
    } else {
        for id in &ids {
            println!("{id}");
        }
        eprintln!(
            "published {}, duplicates {}, refused {}, failed {} in {:.2}s ({:.0} events/s)",
            p.published,
            p.duplicates,
            refused.len(),
            p.failed.len(),
            secs,
            (p.published + p.duplicates) as f64 / secs.max(1e-9)
        );
        report_failed(
            &unknown,
            "storage unknown (NATS did not confirm them after retries; they may be stored later or never)",
        );
        report_failed(
            &full,
            &format!(
                "not stored: stream {} is full (nats.ingest_max_bytes); publish them again later",
                whale_kernel::subjects::STREAM_INGEST
            ),
        );
        if !p.failed.is_empty() {
            eprintln!("whale: publish the same events again with these ids (set \"id\" on each line) within the deduplication window (nats.duplicate_window): an id is stored once, so resending cannot create a second event");
        }
    }
    if let Some(e) = read_error {
        bail!("the input was not read to its end ({e}); the events before it were published as counted above");
    }
    Ok(if !p.failed.is_empty() {
        ExitCode::from(4)
    } else if !refused.is_empty() {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

fn report_failed(failed: &[&Failed], what: &str) {
    if failed.is_empty() {
        return;
    }
    eprintln!("whale: {} event(s) {what}:", failed.len());
    for f in failed.iter().take(LIST_MAX) {
        eprintln!("  line {} id {}: {}", f.line, f.id, f.error);
    }
    if failed.len() > LIST_MAX {
        eprintln!("  ... and {} more", failed.len() - LIST_MAX);
    }
}

/// A publish that was not confirmed.
struct Failed {
    line: usize,
    id: String,
    out: Output,
    error: String,
    /// The stream refused it for being full (known not stored); otherwise storage is unknown.
    full: bool,
}

/// Publishes through a window and keeps what is in flight, so unconfirmed publishes can be sent
/// again with the same msg id.
struct Publisher<'a> {
    nats: &'a Nats,
    window: Window<usize>,
    in_flight: HashMap<usize, (String, Output)>,
    failed: Vec<Failed>,
    published: u64,
    duplicates: u64,
}

impl<'a> Publisher<'a> {
    fn new(nats: &'a Nats) -> Self {
        Publisher {
            nats,
            window: Window::on(nats, 1024).fail_fast_on_disconnect(nats),
            in_flight: HashMap::new(),
            failed: Vec::new(),
            published: 0,
            duplicates: 0,
        }
    }

    async fn send(&mut self, line: usize, id: String, out: Output) {
        self.in_flight.insert(line, (id, out.clone()));
        let done = self.window.send(line, out).await;
        self.note(done);
    }

    async fn settle(&mut self) {
        let done = self.window.drain().await;
        self.note(done);
    }

    fn note(&mut self, done: Vec<(usize, Result<bool, String>)>) {
        for (line, r) in done {
            let Some((id, out)) = self.in_flight.remove(&line) else {
                continue;
            };
            match r {
                Ok(true) => self.published += 1,
                Ok(false) => self.duplicates += 1,
                Err(error) => self.failed.push(Failed {
                    line,
                    id,
                    out,
                    full: is_stream_full(&error),
                    error,
                }),
            }
        }
    }

    /// Sends the failed publishes again with their ids, with backoff, until they are confirmed
    /// or the retries are spent.
    async fn retry(&mut self, retries: u32, quiet: bool) {
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=retries {
            if self.failed.is_empty() {
                return;
            }
            if !quiet {
                eprintln!(
                    "whale: {} publish(es) not confirmed; retry {attempt}/{retries} in {}s with the same ids",
                    self.failed.len(),
                    backoff.as_secs()
                );
            }
            tokio::time::sleep(backoff).await;
            backoff *= 2;
            self.window = Window::on(self.nats, 1024).fail_fast_on_disconnect(self.nats);
            let mut failed = std::mem::take(&mut self.failed);
            failed.sort_by_key(|f| f.line);
            for f in failed {
                self.send(f.line, f.id, f.out).await;
            }
            self.settle().await;
        }
    }
}

/// Reads one line (without its newline) into `buf`, at most `max` bytes of it: `None` at the end
/// of the input, `Some(true)` when the line was longer (the rest of it is skipped).
fn read_line(r: &mut dyn BufRead, buf: &mut Vec<u8>, max: usize) -> std::io::Result<Option<bool>> {
    buf.clear();
    let n = Read::take(&mut *r, max as u64 + 1).read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        return Ok(Some(false));
    }
    if buf.len() <= max {
        return Ok(Some(false)); // the last line, without a newline
    }
    r.skip_until(b'\n')?;
    Ok(Some(true))
}

fn count_lines(p: &std::path::Path) -> u64 {
    let Ok(f) = std::fs::File::open(p) else {
        return 0;
    };
    let mut r = std::io::BufReader::with_capacity(1 << 16, f);
    let mut n = 0u64;
    loop {
        let chunk = match r.fill_buf() {
            Ok([]) | Err(_) => return n,
            Ok(c) => c,
        };
        n += chunk.iter().filter(|c| **c == b'\n').count() as u64;
        let len = chunk.len();
        r.consume(len);
    }
}

//! `whale-bench console`: the operator console's page weight (bytes of a first view: the HTML
//! and the assets it loads; the budget is 300 KB) and each page's response time with `--events`
//! (default 100,000) events indexed, beside the JSON route that serves the same data in the same
//! run (the reference). `whale run` ([`STAGES`]) runs as a process of its own against a private
//! nats-server and the StackStorm emulator; the events go through the normal ingest path (published on
//! `whale.in`, validated, indexed by the embedded index).

use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};
use whale_kernel::testkit::{free_port, NatsServer};
use whale_kernel::Config;

use crate::pipeline::{sibling, start_emulator, wait_ready, write_rules, write_schemas, ChildEnv};

#[derive(clap::Args)]
pub struct Args {
    /// Events published on `whale.in` and indexed before measuring.
    #[arg(long, default_value_t = 100_000)]
    events: usize,
    /// Requests per page (median, p99 and slowest are printed).
    #[arg(long, default_value_t = 50)]
    requests: usize,
    #[arg(long)]
    json: bool,
}

const TOKEN: &str = "whale-bench-console-admin-token";
const TYPES: usize = 4;
/// The stages whose JSON routes are the references (executions: feedback; approvals: approve;
/// dead letters: dispatch); the rules match no bench event, so nothing is dispatched.
const STAGES: &str = "validate,index,match,approve,dispatch,feedback";

fn event(i: usize) -> Value {
    json!({
        "id": format!("cbench-{i:010}"),
        "event_type": format!("bench.t{:03}", i % TYPES),
        "source": format!("whale-bench/{}", i % 7),
        "detail": {"host": format!("web-{}", i % 100), "code": 100 + (i % 50) as i64, "env": "prod",
                   "usage_pct": 50 + (i % 50), "message": format!("disk almost full on web-{}", i % 100)},
        "labels": {"team": "bench"}
    })
}

/// Times of `n` GETs of `path` (bearer token) and the size of the last body.
async fn measure(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    n: usize,
) -> anyhow::Result<(Vec<f64>, usize)> {
    let mut times = Vec::with_capacity(n);
    let mut bytes = 0;
    for _ in 0..n.max(1) {
        let t = Instant::now();
        let r = client
            .get(format!("{base}{path}"))
            .header("authorization", format!("Bearer {TOKEN}"))
            .send()
            .await?;
        let status = r.status();
        bytes = r.bytes().await?.len();
        times.push(t.elapsed().as_secs_f64() * 1e3);
        if !status.is_success() {
            bail!("GET {path}: {status}");
        }
    }
    times.sort_by(f64::total_cmp);
    Ok((times, bytes))
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len().max(1)) - 1;
    sorted.get(i).copied().unwrap_or(0.0)
}

fn stats(t: &[f64]) -> Value {
    json!({"median_ms": crate::pipeline::round2(pct(t, 0.5)), "p99_ms": crate::pipeline::round2(pct(t, 0.99)),
           "max_ms": crate::pipeline::round2(t.last().copied().unwrap_or(0.0))})
}

pub async fn run(mut cfg: Config, a: Args) -> anyhow::Result<ExitCode> {
    let exe = sibling("whale")?;
    let (mut emulator, emulator_url) = start_emulator(&sibling("st2-emulator")?)?;
    let work = tempfile::tempdir()?;
    let nats_server = NatsServer::start();
    cfg.nats.urls = vec![nats_server.url()];
    let nats = crate::connect(&cfg, "console").await?;
    let schemas = work.path().join("schemas");
    let rules = work.path().join("rules");
    write_schemas(&schemas, TYPES)?;
    // Rule j of a type fires on `detail.code == j`; bench events carry codes from 100 up.
    write_rules(&rules, TYPES * 2, TYPES)?;
    let env = ChildEnv {
        exe,
        vars: vec![
            ("WHALE_NATS_URL".into(), nats_server.url()),
            ("WHALE_LOG".into(), "warn".into()),
            ("WHALE_HTTP_TOKEN".into(), TOKEN.into()),
            ("WHALE_ST2_URL".into(), emulator_url),
            ("WHALE_ST2_API_KEY".into(), "bench-key".into()),
        ],
    };
    env.ok(&["setup"])?;
    env.ok(&["schemas", "apply", &schemas.to_string_lossy()])?;
    env.ok(&["rules", "apply", &rules.to_string_lossy()])?;
    let port = free_port();
    let mut child = env
        .cmd(&["run", "--stages", STAGES])
        .env("WHALE_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("WHALE_INDEX_DIR", work.path().join("index"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start whale run")?;
    let result = measure_all(&a, &nats, port).await;
    let _ = child.kill();
    let _ = child.wait();
    let _ = emulator.kill();
    let _ = emulator.wait();
    let report = result?;
    if a.json {
        crate::print_json(&report)?;
    } else {
        print_human(&report);
    }
    Ok(ExitCode::SUCCESS)
}

async fn measure_all(a: &Args, nats: &whale_kernel::Nats, port: u16) -> anyhow::Result<Value> {
    wait_ready(port).await?;
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();

    // Ingest: publish on whale.in, then wait until the index holds every event.
    let started = Instant::now();
    crate::pipeline::publish_events(nats, a.events, 0.0, |i, _| event(i)).await?;
    let mut indexed = 0u64;
    let mut last_change = Instant::now();
    while indexed < a.events as u64 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let r: Value = client
            .get(format!("{base}/v1/events?q=*&limit=1"))
            .header("authorization", format!("Bearer {TOKEN}"))
            .send()
            .await?
            .json()
            .await?;
        let now = r["total"].as_u64().unwrap_or(0);
        if now != indexed {
            indexed = now;
            last_change = Instant::now();
        } else if last_change.elapsed() > Duration::from_secs(60) {
            bail!(
                "the index stopped at {indexed} of {} events for 60 s",
                a.events
            );
        }
    }
    let ingest_s = started.elapsed().as_secs_f64();
    if !a.json {
        eprintln!(
            "published and indexed {} events in {ingest_s:.1}s",
            a.events
        );
    }

    // Page weight of a first view: the page, its stylesheet and its script (nothing else is
    // loaded: no images, fonts or frameworks).
    let (_, css) = measure(&client, &base, "/ui/assets/console.css", 1).await?;
    let (_, js) = measure(&client, &base, "/ui/assets/console.js", 1).await?;
    let pages: [(&str, Option<&str>); 9] = [
        (
            "/ui/",
            Some("/v1/events?q=kind:rejected&limit=5&kind=rejected"),
        ),
        ("/ui/events", Some("/v1/events?q=*&limit=50")),
        (
            "/ui/events?q=detail.host:web-7&from=24h",
            Some("/v1/events?q=detail.host:web-7&from=24h&limit=50"),
        ),
        (
            "/ui/trace/cbench-0000000042",
            Some("/v1/events?q=event_id:cbench-0000000042&kind=all"),
        ),
        ("/ui/executions", Some("/v1/executions")),
        ("/ui/approvals", Some("/v1/approvals")),
        ("/ui/dead-letters", Some("/v1/dead-letters")),
        ("/ui/audit", Some("/v1/audit?limit=200")),
        ("/ui/rules", Some("/v1/rules/history")),
    ];
    let mut rows = Vec::new();
    for (page, reference) in pages {
        let (t, html) = measure(&client, &base, page, a.requests).await?;
        let mut row = json!({"page": page, "first_view_bytes": html + css + js, "html_bytes": html,
        });
        row["page_ms"] = stats(&t);
        if let Some(r) = reference {
            let (rt, rb) = measure(&client, &base, r, a.requests).await?;
            row["reference"] = json!({"route": r, "bytes": rb});
            row["reference_ms"] = stats(&rt);
        }
        rows.push(row);
    }
    Ok(json!({
        "events": a.events, "requests": a.requests, "ingest_s": crate::pipeline::round2(ingest_s),
        "css_bytes": css, "js_bytes": js, "budget_first_view_bytes": 300 * 1024, "pages": rows,
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
    }))
}

fn print_human(r: &Value) {
    println!(
        "console with {} events indexed ({} build; {} requests per page; first view = HTML + console.css {} B + console.js {} B, uncompressed; budget {} B)",
        r["events"], r["build"].as_str().unwrap_or(""), r["requests"], r["css_bytes"], r["js_bytes"], r["budget_first_view_bytes"]
    );
    println!(
        "{:<42} {:>9} {:>8} {:>8} {:>8}   reference route (same run): median / p99 / max",
        "page", "bytes", "median", "p99", "max"
    );
    let ms = |v: &Value, k: &str| v[k].as_f64().unwrap_or(0.0);
    for p in r["pages"].as_array().into_iter().flatten() {
        let t = &p["page_ms"];
        let rt = &p["reference_ms"];
        println!(
            "{:<42} {:>9} {:>6.1}ms {:>6.1}ms {:>6.1}ms   {} ({} B): {:.1} / {:.1} / {:.1} ms",
            p["page"].as_str().unwrap_or(""),
            p["first_view_bytes"],
            ms(t, "median_ms"),
            ms(t, "p99_ms"),
            ms(t, "max_ms"),
            p["reference"]["route"].as_str().unwrap_or("-"),
            p["reference"]["bytes"],
            ms(rt, "median_ms"),
            ms(rt, "p99_ms"),
            ms(rt, "max_ms"),
        );
    }
}

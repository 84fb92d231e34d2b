//! `whale-bench pipeline`: the whole pipeline on this machine, measured from outside as an
//! operator would see it. It starts a private nats-server, redis-server and StackStorm emulator,
//! loads N generated rules over T event types, runs the stages as real `whale run` processes (all
//! in one, or one process per stage with K copies), publishes events as fast as possible or at a
//! fixed rate, and reports end-to-end rates, ingest→StackStorm-POST latency, CPU and memory per
//! process, and the raw JetStream rates of the same server in the same run with the ratio.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};
use whale_kernel::testkit::{free_port, NatsServer, RedisServer};
use whale_kernel::{history, subjects, Config, Nats, Output, Window};

use crate::raw::{Rates, Raw, Reference, Sample as RawSample};

/// What builds every binary a run needs, side by side in one target directory.
pub const BUILD: &str = "cargo build --release -p whale -p whale-bench -p st2-emulator";

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Events to publish.
    #[arg(long, default_value_t = 100_000)]
    events: usize,
    /// Events per second to publish at; 0 = as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Fraction of events that match a rule (each matching event matches exactly one).
    #[arg(long, default_value_t = 0.01)]
    match_fraction: f64,
    /// Rules to load.
    #[arg(long, default_value_t = 1000)]
    rules: usize,
    /// Event types the rules and events spread over.
    #[arg(long, default_value_t = 100)]
    types: usize,
    /// `one`: every stage in one `whale run` process; `split`: a process per stage copy;
    /// `index-apart`: the index stage in one process, every other stage in another.
    #[arg(long, value_enum, default_value_t = Procs::One)]
    procs: Procs,
    /// Copies per stage in split mode, e.g. `validate=2,index=2` (others: 1).
    #[arg(long, default_value = "")]
    copies: String,
    /// Stages to run (the pipeline needs validate, match, render, throttle, dispatch).
    #[arg(
        long,
        default_value = "validate,index,match,render,throttle,dispatch,feedback"
    )]
    stages: String,
    /// Give up when no stage made progress for this long.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    stall: Duration,
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Procs {
    One,
    Split,
    /// Two processes: the index stage, and every other stage.
    IndexApart,
}

/// A child process whose CPU and memory are reported.
struct Proc {
    name: String,
    child: Option<Child>,
    pid: u32,
    cpu_start: f64,
    http_port: Option<u16>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub async fn run(mut cfg: Config, a: Args) -> anyhow::Result<ExitCode> {
    if a.types == 0 || a.rules < a.types {
        bail!("--rules must be at least --types (each type gets rules / types rules)");
    }
    if !(0.0..=1.0).contains(&a.match_fraction) {
        bail!("--match-fraction must be between 0 and 1");
    }
    let stage_names = parse_stages(&a.stages)?;
    let copies = parse_copies(&a.copies, &stage_names)?;
    let exe = sibling("whale")?;
    let emulator_bin = sibling("st2-emulator")?;
    let work = tempfile::tempdir()?;
    progress(
        &a,
        "starting nats-server, redis-server and the StackStorm emulator",
    );
    let nats_server = NatsServer::start();
    let redis = RedisServer::start();
    let (emulator, emulator_url) = start_emulator(&emulator_bin)?;
    cfg.nats.urls = vec![nats_server.url()];
    let nats = crate::connect(&cfg, "pipeline").await?;
    let raw = Raw::connect(&nats_server.url()).await?;

    // The raw reference first, on the idle server (and again at the end: see `reference`).
    let n = a.events;
    // As the publisher sends them (`sent_us` as long as a real send time).
    let sample = || {
        let sent_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros();
        RawSample::of((0..n.min(100_000)).map(|i| event(&a, i, sent_us)))
    };
    progress(&a, "measuring raw JetStream publish and consume+ack");
    let payloads = sample()?;
    let before = raw.rates(&nats, &payloads).await?;
    let avg_bytes = payloads.avg_ingest_bytes();
    drop(payloads);

    // Schemas and rules through the real CLI paths.
    let schemas_dir = work.path().join("schemas");
    let rules_dir = work.path().join("rules");
    write_schemas(&schemas_dir, a.types)?;
    write_rules(&rules_dir, a.rules, a.types)?;
    let env = ChildEnv {
        exe: exe.clone(),
        vars: vec![
            ("WHALE_NATS_URL".into(), nats_server.url()),
            ("WHALE_REDIS_URL".into(), redis.url()),
            ("WHALE_ST2_URL".into(), emulator_url.clone()),
            ("WHALE_ST2_API_KEY".into(), "bench-key".into()),
            // Warnings, and the embedded index's priority floor leaving and re-entering the idle
            // class (docs/search.md "CPU priority"): a run says whether the floor acted.
            (
                "WHALE_LOG".into(),
                std::env::var("WHALE_BENCH_LOG")
                    .unwrap_or_else(|_| "warn,whale_index::embedded::priority=info".into()),
            ),
        ],
    };
    env.ok(&["setup"])?;
    env.ok(&["schemas", "apply", &schemas_dir.to_string_lossy()])?;
    let t = Instant::now();
    env.ok(&["rules", "apply", &rules_dir.to_string_lossy()])?;
    let rules_apply_ms = t.elapsed().as_millis();

    // The stages.
    let mut procs = Vec::new();
    let groups: Vec<(String, String)> = match a.procs {
        Procs::One => vec![("whale (all stages)".into(), stage_names.join(","))],
        Procs::Split => stage_names
            .iter()
            .flat_map(|s| {
                let k = copies.get(*s).copied().unwrap_or(1);
                (0..k).map(move |i| (format!("{s}#{}", i + 1), s.to_string()))
            })
            .collect(),
        Procs::IndexApart => {
            let (index, rest): (Vec<&str>, Vec<&str>) =
                stage_names.iter().partition(|s| **s == "index");
            [("whale (index)", index), ("whale (the rest)", rest)]
                .into_iter()
                .filter(|(_, s)| !s.is_empty())
                .map(|(label, s)| (label.to_string(), s.join(",")))
                .collect()
        }
    };
    progress(&a, &format!("starting {} whale process(es)", groups.len()));
    for (i, (label, stages)) in groups.iter().enumerate() {
        let port = free_port();
        let index_dir = work.path().join(format!("index-{i}"));
        let child = env
            .cmd(&["run", "--stages", stages])
            .env("WHALE_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("WHALE_INDEX_DIR", &index_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start whale run")?;
        let pid = child.id();
        procs.push(Proc {
            name: label.clone(),
            child: Some(child),
            pid,
            cpu_start: 0.0,
            http_port: Some(port),
        });
    }
    for p in &procs {
        wait_ready(p.http_port.unwrap())
            .await
            .with_context(|| format!("{} did not become ready", p.name))?;
    }
    for (name, pid) in [
        ("nats-server", nats_server.pid()),
        ("redis-server", redis.pid()),
        ("st2-emulator", Some(emulator.id())),
    ] {
        if let Some(pid) = pid {
            procs.push(Proc {
                name: name.into(),
                child: None,
                pid,
                cpu_start: 0.0,
                http_port: None,
            });
        }
    }
    procs.push(Proc {
        name: "bench publisher".into(),
        child: None,
        pid: std::process::id(),
        cpu_start: 0.0,
        http_port: None,
    });
    for p in &mut procs {
        p.cpu_start = cpu_seconds(p.pid).unwrap_or(0.0);
    }
    let expected = (0..n).filter(|&i| matches(&a, i)).count() as u64;

    // Publish while sampling progress.
    progress(
        &a,
        &format!(
            "publishing {n} events ({}), {expected} expected executions",
            if a.rate > 0.0 {
                format!("{} events/s", a.rate)
            } else {
                "as fast as possible".into()
            }
        ),
    );
    let started = Instant::now();
    let publisher = tokio::spawn(publish(nats.clone(), a.clone()));
    let mut timeline: Vec<Sample> = Vec::new();
    let mut last_change = Instant::now();
    let mut last = Sample::default();
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut drained_at: Option<f64> = None;
    let mut left: BTreeMap<String, u64>;
    let mut left_prev: BTreeMap<String, u64> = BTreeMap::new();
    let mut last_held = 0u64;
    let complete = loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let s = sample_counts(&raw, &emulator_url, started).await?;
        let held: u64 = left_prev.values().sum();
        if (s.accepted, s.matched, s.dispatched) != (last.accepted, last.matched, last.dispatched)
            || held != last_held
        {
            last_change = Instant::now();
        }
        last_held = held;
        let through = s.accepted >= n as u64 && s.matched >= expected && s.dispatched >= expected;
        // Done when everything is through and every stage (index, feedback too) has caught up.
        left = backlog(&nats, &cfg, &stage_names).await?;
        left_prev = left.clone();
        let done = through && left.is_empty();
        if through && drained_at.is_none() {
            drained_at = Some(s.t);
        }
        if !a.json && (tty || timeline.len().is_multiple_of(8) || done) {
            let end = if tty { "\r" } else { "\n" };
            eprint!(
                "  {:>6.1}s  accepted {:>8}  matched {:>7}  dispatched {:>7} / {expected}   {end}",
                s.t, s.accepted, s.matched, s.dispatched
            );
        }
        last = s.clone();
        timeline.push(s);
        if done {
            break true;
        }
        if last_change.elapsed() > a.stall && publisher.is_finished() {
            break false;
        }
    };
    if !a.json && tty {
        eprintln!();
    }
    let published = publisher.await??;
    let wall = started.elapsed().as_secs_f64();
    let mut usage = Vec::new();
    for p in &procs {
        let cpu = cpu_seconds(p.pid).unwrap_or(0.0) - p.cpu_start;
        let (rss, hwm) = memory_mb(p.pid);
        usage.push(json!({
            "process": p.name, "cpu_s": round2(cpu), "cpu_pct": (cpu / wall * 100.0).round(),
            "rss_mb": round2(rss), "peak_rss_mb": round2(hwm),
        }));
    }
    let busy = stage_busy(&procs).await;

    // Messaging actually done per event, counted on the server.
    // Each operation priced at its own raw rate: a publish of an ingest message or of a record
    // (about twice the bytes stored: the envelope and the headers every record carries), a
    // delivery of a durable consumer with its ack (on a work queue, where the ack also removes
    // the message, or on a stream that keeps it), a delivery of an ordered consumer (the
    // embedded index's own reading) without one. Deliveries are priced with the messages of
    // their stream: ingest messages from the work queue, records from the others (pipe records,
    // larger still, at the rates of event records).
    let ops = raw.ops().await?;
    let per = |x: u64| x as f64 / n as f64;
    let (p_per, i_per, a_per, q_per, u_per) = (
        per(ops.publishes),
        per(ops.ingest_publishes),
        per(ops.acked),
        per(ops.acked_queue),
        per(ops.unacked),
    );
    let bound_of = |r: Rates| {
        1.0 / (i_per / r.publish
            + (p_per - i_per) / r.publish_record
            + a_per / r.consume_ack
            + q_per / r.consume_ack_queue
            + u_per / r.consume_ordered)
    };

    let rate_of = |f: fn(&Sample) -> u64, total: u64| rate_to(&timeline, f, total);
    let accepted_per_s = rate_of(|s| s.accepted, n as u64);
    let matched_per_s = rate_of(|s| s.matched, expected);
    let dispatched_per_s = rate_of(|s| s.dispatched, expected);
    let sustained = sustained_rate(&timeline, n as u64);
    let events_per_s = if complete { n as f64 / wall } else { 0.0 };
    let ends = sent_and_posted(&emulator_url).await?;
    let lat = latencies(&ends);
    progress(&a, "reading record timestamps for the per-hop latency");
    let hops = hop_latencies(&nats, &ends).await?;
    let pct = |q: f64| -> Option<f64> {
        (!lat.is_empty()).then(|| lat[((lat.len() - 1) as f64 * q).round() as usize])
    };
    let executions = last.dispatched;

    for p in &procs {
        if let Some(c) = &p.child {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
        }
    }
    // The reference again on the same server, with whale stopped: the machine's load can change
    // within a run (on a shared VM the bound has moved by half between runs minutes apart), so
    // the bound is the mean of both, and both are printed.
    stop_all(&mut procs);
    drop(emulator_guard(emulator));
    progress(&a, "measuring raw JetStream publish and consume+ack again");
    let after = raw.rates(&nats, &sample()?).await?;
    let reference = Reference::of(before, after, bound_of);
    let bound = reference.bound;

    let result = json!({
        "events": n, "published": published, "avg_event_bytes": avg_bytes,
        "rate_target_per_s": a.rate, "match_fraction": a.match_fraction,
        "rules": a.rules, "types": a.types, "rules_apply_ms": rules_apply_ms,
        "procs": match a.procs { Procs::One => "one", Procs::Split => "split", Procs::IndexApart => "index-apart" },
        "copies": copies, "stages": stage_names,
        "complete": complete, "wall_s": round2(wall),
        "events_per_s": events_per_s.round(),
        "sustained_accepted_per_s": sustained.round(),
        "accepted_per_s": accepted_per_s.round(), "matched_per_s": matched_per_s.round(),
        "dispatched_per_s": dispatched_per_s.round(),
        "expected_executions": expected, "executions": executions,
        "latency_samples": lat.len(),
        "p50_ms": pct(0.5).map(round2), "p99_ms": pct(0.99).map(round2),
        "max_ms": lat.last().copied().map(round2),
        "raw_publish_per_s": reference.rates.publish.round(),
        "raw_publish_record_per_s": reference.rates.publish_record.round(),
        "raw_consume_ack_per_s": reference.rates.consume_ack.round(),
        "raw_consume_ack_queue_per_s": reference.rates.consume_ack_queue.round(),
        "raw_consume_ordered_per_s": reference.rates.consume_ordered.round(),
        "js_publishes_per_event": round2(p_per), "js_ingest_publishes_per_event": round2(i_per),
        "js_consumes_per_event": round2(a_per + q_per + u_per),
        "js_acked_consumes_per_event": round2(a_per + q_per),
        "js_acked_queue_consumes_per_event": round2(q_per),
        "js_unacked_consumes_per_event": round2(u_per),
        "jetstream_bound_per_s": bound.round(),
        "reference_before": reference.before, "reference_after": reference.after,
        "efficiency": round2(events_per_s / bound),
        "processes": usage, "stage_busy_s": busy, "hops_ms": hops,
        "all_through_s": drained_at.map(round2), "backlog_at_end": left,
        "nats_server": raw.server_version(),
    });
    if a.json {
        crate::print_json(&result)?;
    } else {
        print_human(&result);
    }
    Ok(if complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Stops the stage processes sent SIGTERM: waits up to 10 s for them to end, then kills the rest.
fn stop_all(procs: &mut Vec<Proc>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    for p in procs.iter_mut() {
        if let Some(c) = &mut p.child {
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    procs.clear();
}

fn progress(a: &Args, msg: &str) {
    if !a.json {
        eprintln!("bench pipeline: {msg}");
    }
}

/// A binary built beside this one (`whale`, `st2-emulator`); says how to build it when missing.
pub(crate) fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let here = std::env::current_exe().context("cannot find the whale-bench binary")?;
    let bin = here.with_file_name(name);
    if !bin.is_file() {
        bail!(
            "{} is missing (the bench runs it from its own directory): build everything with `{BUILD}`",
            bin.display()
        );
    }
    Ok(bin)
}

pub(crate) fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Whether event `i` matches a rule: spread evenly over the run (Bresenham-style).
fn matches(a: &Args, i: usize) -> bool {
    let f = a.match_fraction;
    ((i + 1) as f64 * f).floor() > (i as f64 * f).floor()
}

/// Event `i`: type `bench.tNNN`; `detail.code` picks the one rule it matches (or none).
fn event(a: &Args, i: usize, sent_us: u128) -> Value {
    let (rules, types) = (a.rules, a.types);
    let per_type = rules / types;
    let code = if matches(a, i) {
        ((i / types) % per_type) as i64
    } else {
        -1
    };
    json!({
        "id": format!("bench-{i:010}"),
        "event_type": format!("bench.t{:03}", i % types),
        "source": "whale-bench",
        "detail": {"host": format!("web-{}", i % 500), "code": code, "env": "prod",
                   "usage_pct": 50 + (i % 50), "sent_us": sent_us.to_string(),
                   "msg": ["bench event", "generated"]},
        "labels": {"team": "bench"}
    })
}

async fn publish(nats: Nats, a: Args) -> anyhow::Result<u64> {
    publish_events(&nats, a.events, a.rate, |i, sent_us| event(&a, i, sent_us)).await
}

/// Publishes `n` events (`event(i, sent_us)`, with `id` and `event_type`) on `whale.in`, at
/// `rate` per second (0: as fast as possible); fails when any publish failed.
pub(crate) async fn publish_events(
    nats: &Nats,
    n: usize,
    rate: f64,
    event: impl Fn(usize, u128) -> Value,
) -> anyhow::Result<u64> {
    let mut w: Window<()> = Window::on(nats, 1024);
    let started = Instant::now();
    let mut failed = 0u64;
    for i in 0..n {
        if rate > 0.0 {
            let due = started + Duration::from_secs_f64(i as f64 / rate);
            let now = Instant::now();
            if due > now + Duration::from_millis(1) {
                tokio::time::sleep_until(due.into()).await;
            }
        }
        let sent_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros();
        let e = event(i, sent_us);
        let ty = e["event_type"].as_str().unwrap_or_default().to_owned();
        let id = e["id"].as_str().unwrap_or_default().to_owned();
        let out = Output::new(subjects::ingest(&ty), id, serde_json::to_vec(&e)?);
        for (_, r) in w.send((), out).await {
            failed += r.is_err() as u64;
        }
    }
    for (_, r) in w.drain().await {
        failed += r.is_err() as u64;
    }
    if failed > 0 {
        bail!("{failed} publishes failed");
    }
    Ok(n as u64)
}

pub(crate) fn write_schemas(dir: &Path, types: usize) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    for t in 0..types {
        let schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object", "required": ["host", "code"],
            "properties": {"host": {"type": "string", "minLength": 1}, "code": {"type": "integer"},
                           "env": {"enum": ["prod", "staging", "dev"]},
                           "usage_pct": {"type": "number", "minimum": 0, "maximum": 100}}
        });
        std::fs::write(
            dir.join(format!("bench.t{t:03}.json")),
            serde_json::to_vec_pretty(&schema)?,
        )?;
    }
    Ok(())
}

/// `rules / types` rules per type; rule j of a type fires on `detail.code == j`. Every rule has
/// a (generous) throttle so each task costs a Redis decision, and routes to `default`.
pub(crate) fn write_rules(dir: &Path, rules: usize, types: usize) -> anyhow::Result<()> {
    write_rules_per_type(dir, "bench", rules, types, |t, j| {
        format!(
            "- name: bench-t{t:03}-r{j:02}\n  on: [bench.t{t:03}]\n  when:\n    - {{ path: .detail.code, eq: {j} }}\n    - {{ path: .detail.env, eq: prod }}\n  action: core.local\n  params:\n    cmd: \"echo {{{{ .detail.host }}}}\"\n    sent_us: \"{{{{ .detail.sent_us }}}}\"\n  throttle:\n    key: \"{{{{ .detail.host }}}}\"\n    limit: 1000000\n    per: 1m\n"
        )
    })
}

/// The one rule generator of the benchmarks: `rules / types` rules for each event type
/// `bench.tTTT`, one file `<prefix>-tTTT.yaml` per type, rule j of type t written by `rule(t, j)`.
pub(crate) fn write_rules_per_type(
    dir: &Path,
    prefix: &str,
    rules: usize,
    types: usize,
    rule: impl Fn(usize, usize) -> String,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let per_type = rules / types;
    for t in 0..types {
        let doc: String = (0..per_type).map(|j| rule(t, j)).collect();
        std::fs::write(dir.join(format!("{prefix}-t{t:03}.yaml")), doc)?;
    }
    Ok(())
}

pub(crate) struct ChildEnv {
    pub(crate) exe: PathBuf,
    pub(crate) vars: Vec<(String, String)>,
}

impl ChildEnv {
    pub(crate) fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.exe);
        c.args(args).env_remove("WHALE_CONFIG");
        for (k, v) in &self.vars {
            c.env(k, v);
        }
        c
    }

    pub(crate) fn ok(&self, args: &[&str]) -> anyhow::Result<()> {
        let out = self.cmd(args).output()?;
        if !out.status.success() {
            bail!(
                "whale {} failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

pub(crate) fn start_emulator(bin: &Path) -> anyhow::Result<(Child, String)> {
    use std::io::BufRead;
    let mut child = Command::new(bin)
        .args(["--listen", "127.0.0.1:0", "--any-action"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start st2-emulator")?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().context("emulator stdout")?)
        .read_line(&mut line)?;
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .with_context(|| format!("st2-emulator did not start: {line:?}"))?
        .to_owned();
    Ok((child, format!("http://{addr}")))
}

struct EmulatorGuard(Child);
impl Drop for EmulatorGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
fn emulator_guard(c: Child) -> EmulatorGuard {
    EmulatorGuard(c)
}

pub(crate) async fn wait_ready(port: u16) -> anyhow::Result<()> {
    let url = format!("http://127.0.0.1:{port}/readyz");
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(r) = reqwest::get(&url).await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("no 200 from {url} within 60 s")
}

#[derive(Clone, Default)]
struct Sample {
    t: f64,
    accepted: u64,
    matched: u64,
    dispatched: u64,
}

async fn sample_counts(raw: &Raw, emulator: &str, started: Instant) -> anyhow::Result<Sample> {
    let accepted = raw
        .subject_count(subjects::STREAM_EVENTS, "whale.events.>")
        .await?;
    let matched = raw
        .subject_count(subjects::STREAM_PIPE, "whale.pipe.matched")
        .await?;
    let stats: Value = reqwest::get(format!("{emulator}/_emulator/stats"))
        .await?
        .json()
        .await?;
    Ok(Sample {
        t: started.elapsed().as_secs_f64(),
        accepted,
        matched,
        dispatched: stats["executions_created"].as_u64().unwrap_or(0),
    })
}

/// Count / time at which the count reached `total` (first sample at or over it).
fn rate_to(timeline: &[Sample], f: fn(&Sample) -> u64, total: u64) -> f64 {
    if total == 0 {
        return 0.0;
    }
    timeline
        .iter()
        .find(|s| f(s) >= total)
        .map(|s| total as f64 / s.t)
        .unwrap_or(0.0)
}

/// Accepted events/s between the 10% and 90% marks (no ramp-up, no tail).
fn sustained_rate(timeline: &[Sample], n: u64) -> f64 {
    let at = |q: f64| timeline.iter().find(|s| s.accepted as f64 >= n as f64 * q);
    match (at(0.1), at(0.9)) {
        (Some(a), Some(b)) if b.t > a.t => (b.accepted - a.accepted) as f64 / (b.t - a.t),
        _ => 0.0,
    }
}

/// (sent, posted) in µs since the epoch for every execution: the event's publish time travels in
/// the action parameters; the emulator stamps the execution when the POST arrives.
async fn sent_and_posted(emulator: &str) -> anyhow::Result<Vec<(i128, i128)>> {
    let list: Value = reqwest::Client::new()
        .get(format!("{emulator}/api/v1/executions?limit=-1"))
        .header("St2-Api-Key", "bench-key")
        .send()
        .await?
        .json()
        .await?;
    let mut out = Vec::new();
    for e in list.as_array().map(Vec::as_slice).unwrap_or_default() {
        let sent = e["parameters"]["sent_us"]
            .as_str()
            .and_then(|s| s.parse::<i128>().ok());
        let start = e["start_timestamp"].as_str().and_then(|s| {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
        });
        if let (Some(sent), Some(start)) = (sent, start) {
            out.push((sent, start.unix_timestamp_nanos() / 1000));
        }
    }
    Ok(out)
}

/// Ingest → StackStorm POST latencies in ms, sorted.
fn latencies(ends: &[(i128, i128)]) -> Vec<f64> {
    let mut out: Vec<f64> = ends
        .iter()
        .map(|(sent, posted)| (posted - sent) as f64 / 1000.0)
        .collect();
    out.sort_by(f64::total_cmp);
    out
}

/// Messages not yet handled (pending + awaiting ack) per consumer of the stages run, read from
/// the same figures `whale status` shows.
async fn backlog(
    nats: &Nats,
    cfg: &Config,
    stages: &[&str],
) -> anyhow::Result<BTreeMap<String, u64>> {
    let st = whale_kernel::status::status(nats, cfg).await?;
    Ok(st
        .consumers
        .into_iter()
        .filter(|c| stages.contains(&c.stage.as_str()))
        .map(|c| (c.consumer, c.pending + c.ack_pending as u64))
        .filter(|(_, n)| *n > 0)
        .collect())
}

/// Where the ingest→POST time goes: for each dispatched event, the time between consecutive
/// records (JetStream stores each message's publish time), as p50/p99 per hop.
async fn hop_latencies(nats: &Nats, ends: &[(i128, i128)]) -> anyhow::Result<Value> {
    use std::collections::HashMap;
    // Keyed by the send time: the accepted event's payload carries it too (see below).
    let ends: HashMap<String, (i128, i128)> =
        ends.iter().map(|&(s, p)| (s.to_string(), (s, p))).collect();
    let steps = [
        (
            "accepted",
            subjects::STREAM_EVENTS,
            "whale.events.>".to_string(),
        ),
        (
            "matched",
            subjects::STREAM_PIPE,
            subjects::Pipe::Matched.filter(),
        ),
        ("task", subjects::STREAM_PIPE, subjects::Pipe::Task.filter()),
        (
            "admitted",
            subjects::STREAM_PIPE,
            subjects::Pipe::Admitted.filter(),
        ),
    ];
    // event id → time of each step; and event id → sent_us (from the accepted event's payload).
    let mut at: HashMap<String, Vec<i128>> = HashMap::new();
    let mut sent_of: HashMap<String, String> = HashMap::new();
    for (k, (_, stream, filter)) in steps.iter().enumerate() {
        for (id, t, payload) in read_times(nats, stream, filter).await? {
            if k == 0 {
                let v: Value = serde_json::from_slice(&payload).unwrap_or_default();
                if let Some(s) = v["detail"]["sent_us"].as_str() {
                    if ends.contains_key(s) {
                        sent_of.insert(id.clone(), s.to_owned());
                    } else {
                        continue;
                    }
                }
            }
            let v = at.entry(id).or_insert_with(|| vec![0; steps.len()]);
            if v[k] == 0 {
                v[k] = t;
            }
        }
    }
    let names = [
        "ingest→accepted",
        "accepted→matched",
        "matched→task",
        "task→admitted",
        "admitted→POST",
    ];
    let mut deltas: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    // With WHALE_BENCH_SAMPLES: one line per dispatched event, when it was sent (µs since the
    // epoch), then each hop (ms).
    let samples = std::env::var("WHALE_BENCH_SAMPLES").ok();
    let mut lines = String::new();
    for (id, times) in &at {
        let Some((sent, posted)) = sent_of.get(id).and_then(|s| ends.get(s)) else {
            continue;
        };
        if times.contains(&0) {
            continue;
        }
        let chain: Vec<i128> = std::iter::once(*sent)
            .chain(times.iter().copied())
            .chain(std::iter::once(*posted))
            .collect();
        if samples.is_some() {
            lines.push_str(&sent.to_string());
        }
        for (h, w) in chain.windows(2).enumerate() {
            let ms = (w[1] - w[0]) as f64 / 1000.0;
            deltas[h].push(ms);
            if samples.is_some() {
                lines.push_str(&format!(" {ms:.3}"));
            }
        }
        if samples.is_some() {
            lines.push('\n');
        }
    }
    if let Some(path) = samples {
        std::fs::write(&path, lines).with_context(|| format!("cannot write {path}"))?;
    }
    let mut out = Vec::new();
    for (name, mut d) in names.iter().zip(deltas) {
        d.sort_by(f64::total_cmp);
        if d.is_empty() {
            continue;
        }
        let q = |q: f64| round2(d[((d.len() - 1) as f64 * q).round() as usize]);
        out.push(json!({"hop": name, "p50": q(0.5), "p99": q(0.99), "max": q(1.0), "n": d.len()}));
    }
    Ok(Value::Array(out))
}

/// (event id, publish time in µs, payload) of every message on `filter` in `stream`.
async fn read_times(
    nats: &Nats,
    stream: &str,
    filter: &str,
) -> anyhow::Result<Vec<(String, i128, bytes::Bytes)>> {
    let mut out = Vec::new();
    let until = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    history::read(
        nats,
        stream,
        filter,
        time::OffsetDateTime::UNIX_EPOCH,
        until,
        |d| {
            out.push((
                d.event_id().to_owned(),
                d.published.unix_timestamp_nanos() / 1000,
                d.payload,
            ))
        },
    )
    .await?;
    Ok(out)
}

/// `/proc/<pid>/stat` user+system CPU seconds (clock ticks of 1/100 s on Linux).
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// (RSS, peak RSS) in MB from `/proc/<pid>/status`.
pub(crate) fn memory_mb(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (kb("VmRSS:"), kb("VmHWM:"))
}

/// Seconds each stage spent handling batches (`whale_stage_batch_seconds_sum`), summed over
/// processes: in one-process mode the only per-stage split of the work.
async fn stage_busy(procs: &[Proc]) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for p in procs {
        let Some(port) = p.http_port else { continue };
        let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await else {
            continue;
        };
        let text = r.text().await.unwrap_or_default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("whale_stage_batch_seconds_sum{stage=\"") {
                if let Some((stage, v)) = rest.split_once("\"} ") {
                    let v: f64 = v.trim().parse().unwrap_or(0.0);
                    *out.entry(stage.to_owned()).or_insert(0.0) += round2(v);
                }
            }
        }
    }
    out
}

/// `--stages`: a comma list of JetStream stages (`all` for every one); unknown names are
/// refused with the known list, as `whale run` would.
pub(crate) fn parse_stages(list: &str) -> anyhow::Result<Vec<&'static str>> {
    let mut out = Vec::new();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if name == "all" {
            return Ok(subjects::STAGES.to_vec());
        }
        match subjects::STAGES.iter().find(|n| **n == name) {
            Some(n) if !out.contains(n) => out.push(*n),
            Some(_) => {}
            None => bail!(
                "unknown stage {name:?}; known stages: {} (or all)",
                subjects::STAGES.join(", ")
            ),
        }
    }
    if out.is_empty() {
        bail!("--stages: no stages given: use all or a comma list");
    }
    Ok(out)
}

fn parse_copies(s: &str, stages: &[&'static str]) -> anyhow::Result<BTreeMap<String, usize>> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, k) = part
            .split_once('=')
            .with_context(|| format!("--copies: {part:?} is not STAGE=K"))?;
        if !stages.contains(&name) {
            bail!(
                "--copies: {name:?} is not one of the stages run ({})",
                stages.join(",")
            );
        }
        let k: usize = k
            .parse()
            .ok()
            .filter(|k| *k >= 1)
            .with_context(|| format!("--copies: {k:?} is not a positive count"))?;
        out.insert(name.to_owned(), k);
    }
    Ok(out)
}

fn print_human(r: &Value) {
    let f = |k: &str| r[k].as_f64().unwrap_or(0.0);
    println!(
        "pipeline bench: {} events of ~{} B, {} rules over {} types, {:.1}% matching, procs={} copies={}, nats-server {}",
        r["events"], r["avg_event_bytes"], r["rules"], r["types"], f("match_fraction") * 100.0,
        r["procs"].as_str().unwrap_or(""), r["copies"], r["nats_server"]
    );
    if !r["complete"].as_bool().unwrap_or(false) {
        println!(
            "  INCOMPLETE: the pipeline stalled before every event was through (counts below)"
        );
        println!(
            "  consumers still holding messages: {}",
            r["backlog_at_end"]
        );
    }
    println!(
        "  rules apply (1 CLI call)                 {:>10} ms",
        r["rules_apply_ms"]
    );
    let side = |when: &str, k: &str| r[when][k].as_f64().unwrap_or(0.0);
    println!(
        "  raw JetStream publish (window 1024)      {:>10.0} msg/s  (before {:.0}, after {:.0})",
        f("raw_publish_per_s"),
        side("reference_before", "raw_publish_per_s"),
        side("reference_after", "raw_publish_per_s")
    );
    println!(
        "  raw JetStream publish, records           {:>10.0} msg/s  (before {:.0}, after {:.0})",
        f("raw_publish_record_per_s"),
        side("reference_before", "raw_publish_record_per_s"),
        side("reference_after", "raw_publish_record_per_s")
    );
    println!(
        "  raw JetStream consume+ack, records       {:>10.0} msg/s  (before {:.0}, after {:.0})",
        f("raw_consume_ack_per_s"),
        side("reference_before", "raw_consume_ack_per_s"),
        side("reference_after", "raw_consume_ack_per_s")
    );
    println!(
        "  raw JetStream consume+ack, work queue    {:>10.0} msg/s  (before {:.0}, after {:.0})",
        f("raw_consume_ack_queue_per_s"),
        side("reference_before", "raw_consume_ack_queue_per_s"),
        side("reference_after", "raw_consume_ack_queue_per_s")
    );
    println!(
        "  raw JetStream consume, records, no ack   {:>10.0} msg/s  (before {:.0}, after {:.0})",
        f("raw_consume_ordered_per_s"),
        side("reference_before", "raw_consume_ordered_per_s"),
        side("reference_after", "raw_consume_ordered_per_s")
    );
    println!(
        "  JetStream ops per event (counted)        {:>10.2} publishes (of which {:.2} of ingest messages) + {:.2} consumes+acks (of which {:.2} from a work queue) + {:.2} consumes without ack",
        f("js_publishes_per_event"),
        f("js_ingest_publishes_per_event"),
        f("js_acked_consumes_per_event"),
        f("js_acked_queue_consumes_per_event"),
        f("js_unacked_consumes_per_event")
    );
    println!(
        "  JetStream bound for those ops            {:>10.0} events/s  (before {:.0}, after {:.0}; the mean is the bound)",
        f("jetstream_bound_per_s"),
        side("reference_before", "jetstream_bound_per_s"),
        side("reference_after", "jetstream_bound_per_s")
    );
    println!(
        "  whole pipeline, ingest → dispatched      {:>10.0} events/s  ({:.2} × bound)",
        f("events_per_s"),
        f("efficiency")
    );
    println!(
        "    accepted (all {} in)                  {:>10.0} events/s",
        r["events"],
        f("accepted_per_s")
    );
    println!(
        "    accepted, sustained 10%→90%           {:>10.0} events/s",
        f("sustained_accepted_per_s")
    );
    println!(
        "    matched                               {:>10.0} events/s",
        f("matched_per_s")
    );
    println!(
        "    dispatched ({} / {} executions)  {:>10.0} events/s",
        r["executions"],
        r["expected_executions"],
        f("dispatched_per_s")
    );
    println!(
        "  ingest → StackStorm POST ({} samples)    p50 {} ms  p99 {} ms  max {} ms",
        r["latency_samples"], r["p50_ms"], r["p99_ms"], r["max_ms"]
    );
    println!(
        "  {:<24} {:>8} {:>6} {:>9} {:>9}",
        "process", "cpu s", "cpu %", "rss MB", "peak MB"
    );
    for p in r["processes"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        println!(
            "  {:<24} {:>8} {:>6} {:>9} {:>9}",
            p["process"].as_str().unwrap_or(""),
            p["cpu_s"],
            p["cpu_pct"],
            p["rss_mb"],
            p["peak_rss_mb"]
        );
    }
    if let Some(h) = r["hops_ms"].as_array() {
        println!("  where the latency goes (ms, from JetStream message times):");
        for v in h {
            println!(
                "    {:<20} p50 {:>8}  p99 {:>8}  max {:>8}  (n={})",
                v["hop"].as_str().unwrap_or(""),
                v["p50"],
                v["p99"],
                v["max"],
                v["n"]
            );
        }
    }
    println!(
        "  stage busy seconds (batch handling; the index's batches overlap and include waiting for their commit): {}",
        r["stage_busy_s"]
    );
}

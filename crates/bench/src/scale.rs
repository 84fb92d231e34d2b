//! `whale-bench scale`: does a CPU-heavy stage scale with copies? On a small machine NATS
//! saturates first in the whole pipeline, so this measures one stage alone on a backlog it
//! has to work through: the same accepted events, consumed once by 1 process, then again (the
//! consumer recreated) by K processes, then by 1 process running K loops (`--concurrency`),
//! each figure beside the raw consume+ack rate of the same server and the same parse+match in
//! this process on 1 and K threads. The default shape is `match` with 10,000 rules that the
//! rule index cannot narrow (each rule a regex on one field, or with `--shape jq` a jq
//! predicate), so every event is checked against every rule of its type.

use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};
use whale_kernel::testkit::{free_port, NatsServer};
use whale_kernel::{subjects, Config, Window};

use crate::pipeline::{
    cpu_seconds, memory_mb, round2, sibling, wait_ready, write_rules_per_type, write_schemas,
    ChildEnv,
};
use crate::raw::{Raw, Sample};

#[derive(clap::Args)]
pub struct Args {
    /// The stage measured: match (the embedded index keeps its own place and does not scale by
    /// copies).
    #[arg(long, default_value = "match")]
    stage: String,
    /// Accepted events in the backlog.
    #[arg(long, default_value_t = 40_000)]
    events: usize,
    /// Rules to load (regex rules the index cannot narrow, at most 1,000 per type).
    #[arg(long, default_value_t = 10_000)]
    rules: usize,
    /// Event types the rules and events spread over.
    #[arg(long, default_value_t = 10)]
    types: usize,
    /// The rules' one test: `regex` on `detail.sig` (the compiled regexes of 10,000 rules take
    /// ~90 MB per process, so copies contend for the memory bus) or a `jq` predicate (small
    /// compiled form, all CPU). Neither is narrowed by the rule index.
    #[arg(long, value_enum, default_value_t = Shape::Regex)]
    shape: Shape,
    /// Processes in the second round (the first has one).
    #[arg(long, default_value_t = 2)]
    copies: usize,
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum Shape {
    Regex,
    Jq,
}

pub async fn run(mut cfg: Config, a: Args) -> anyhow::Result<ExitCode> {
    if a.stage != "match" {
        bail!(
            "--stage: {:?}: only match is measured (the embedded index keeps its own place, so \
             each copy indexes everything: it does not scale by copies)",
            a.stage
        );
    }
    if a.types == 0 || a.rules < a.types || a.rules / a.types > 1000 {
        bail!("--rules / --types must be between 1 and 1000 (rules of one type go in one file)");
    }
    if a.copies < 2 {
        bail!("--copies must be at least 2");
    }
    let exe = sibling("whale")?;
    let nats_server = NatsServer::start();
    cfg.nats.urls = vec![nats_server.url()];
    let nats = crate::connect(&cfg, "scale").await?;
    let raw = Raw::connect(&nats_server.url()).await?;
    let n = a.events;
    // The events as published to whale.in (the backlog below) and as validate's records.
    let events = Sample::of((0..n).map(|i| event(&a, i)))?;
    let sample: Vec<Vec<u8>> = events
        .ingest
        .iter()
        .take(REFERENCE_EVENTS)
        .map(|o| o.payload.to_vec())
        .collect();
    progress(&a, "measuring raw JetStream publish and consume+ack");
    let raw_consume = raw.rates(&nats, &events).await?.consume_ack;

    let work = tempfile::tempdir()?;
    let schemas_dir = work.path().join("schemas");
    let rules_dir = work.path().join("rules");
    write_schemas(&schemas_dir, a.types)?;
    match a.shape {
        Shape::Regex => write_regex_rules(&rules_dir, a.rules, a.types)?,
        Shape::Jq => write_jq_rules(&rules_dir, a.rules, a.types)?,
    }
    let env = ChildEnv {
        exe,
        vars: vec![
            ("WHALE_NATS_URL".into(), nats_server.url()),
            ("WHALE_LOG".into(), "warn".into()),
        ],
    };
    env.ok(&["setup"])?;
    env.ok(&["schemas", "apply", &schemas_dir.to_string_lossy()])?;
    env.ok(&["rules", "apply", &rules_dir.to_string_lossy()])?;

    // The backlog: every event accepted by validate, then validate stopped.
    progress(&a, &format!("accepting {n} events into the backlog"));
    let mut w: Window<()> = Window::on(&nats, 1024);
    for out in events.ingest {
        w.send((), out).await;
    }
    w.drain().await;
    let mut validate = spawn(&env, "validate", 1, work.path()).await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    while raw
        .subject_count(subjects::STREAM_EVENTS, "whale.events.>")
        .await?
        < n as u64
    {
        if Instant::now() > deadline {
            bail!("validate did not accept the {n} events within 5 min");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop(&mut validate.0);

    let reference = if a.stage == "match" {
        progress(
            &a,
            &format!(
                "the same matching in this process: 1 thread, then {}",
                a.copies
            ),
        );
        Some(cpu_reference(&rules_dir, &sample, a.copies)?)
    } else {
        None
    };
    let mut rounds = Vec::new();
    // (processes, worker loops in each): one, K copies, then one process with K loops
    // (`whale run --concurrency K`), whose loops share one compiled rule set
    for (k, loops) in [(1, 1), (a.copies, 1), (1, a.copies)] {
        progress(
            &a,
            &format!("{} with {k} process(es) of {loops} loop(s)", a.stage),
        );
        rounds.push(round(&a, &env, &raw, work.path(), k, loops).await?);
    }
    let one = rounds[0]["events_per_s"].as_f64().unwrap_or(0.0);
    let many = rounds[1]["events_per_s"].as_f64().unwrap_or(0.0);
    let loops = rounds[2]["events_per_s"].as_f64().unwrap_or(0.0);
    let result = json!({
        "stage": a.stage, "events": n, "rules": a.rules, "types": a.types,
        "rule_shape": match a.shape {
            Shape::Regex => "regex on detail.sig (not narrowed by the rule index)",
            Shape::Jq => "jq predicate (not narrowed by the rule index)",
        },
        "raw_consume_ack_per_s": raw_consume.round(),
        "rounds": rounds,
        "scale_factor": if one > 0.0 { round2(many / one) } else { 0.0 },
        "concurrency_scale_factor": if one > 0.0 { round2(loops / one) } else { 0.0 },
        "in_process_reference": reference,
        "nats_server": raw.server_version(),
    });
    if a.json {
        crate::print_json(&result)?;
    } else {
        print_human(&result);
    }
    Ok(ExitCode::SUCCESS)
}

/// Events the in-process reference parses and matches, over and over (every type many times).
const REFERENCE_EVENTS: usize = 500;

/// The same work without NATS or a worker loop: the bench's rule files compiled here, the same
/// event bytes parsed and matched for about 3 s by 1 thread, then by `k` threads sharing one
/// compiled set, then by `k` threads each with its own compiled set, as `k` processes have.
/// The last is the ceiling for `k` processes on this machine: it includes what the cores share
/// (caches, memory bandwidth), which a stage whose rules do not fit in the caches meets too.
fn cpu_reference(
    rules_dir: &std::path::Path,
    events: &[Vec<u8>],
    k: usize,
) -> anyhow::Result<Value> {
    let compile = || {
        whale_rules::RuleSet::load_dir(rules_dir)
            .map_err(|e| anyhow::anyhow!("the bench's own rules do not compile: {e}"))
    };
    let work = |set: &whale_rules::RuleSet| -> anyhow::Result<u64> {
        let until = Instant::now() + Duration::from_secs(3);
        let mut done = 0u64;
        while Instant::now() < until {
            for b in events {
                let input = whale_rules::Input::new(serde_json::from_slice(b)?);
                std::hint::black_box(set.match_event(&input));
                done += 1;
            }
        }
        Ok(done)
    };
    // events/s of one thread per set given
    let rate = |sets: &[&whale_rules::RuleSet]| -> anyhow::Result<f64> {
        let started = Instant::now();
        let done: u64 = std::thread::scope(|s| {
            let handles: Vec<_> = sets.iter().map(|set| s.spawn(|| work(set))).collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .map_err(|_| anyhow::anyhow!("a reference thread panicked"))?
                })
                .sum::<anyhow::Result<u64>>()
        })?;
        Ok(done as f64 / started.elapsed().as_secs_f64())
    };
    let shared = compile()?;
    let own: Vec<whale_rules::RuleSet> = (0..k).map(|_| compile()).collect::<Result<_, _>>()?;
    rate(&[&shared])?; // warm up: every regex and program met once
    let one = rate(&[&shared])?;
    let shared_k = rate(&vec![&shared; k])?;
    let own_k = rate(&own.iter().collect::<Vec<_>>())?;
    let factor = |r: f64| if one > 0.0 { round2(r / one) } else { 0.0 };
    Ok(json!({
        "threads": k,
        "one_thread_events_per_s": one.round(),
        "shared_set_events_per_s": shared_k.round(),
        "shared_set_scale_factor": factor(shared_k),
        "own_sets_events_per_s": own_k.round(),
        "own_sets_scale_factor": factor(own_k),
    }))
}

/// One round: the stage's consumer recreated (so it delivers the whole backlog again), `k`
/// processes of the stage, timed from the 10% to the 90% mark of the backlog.
async fn round(
    a: &Args,
    env: &ChildEnv,
    raw: &Raw,
    dir: &std::path::Path,
    k: usize,
    loops: usize,
) -> anyhow::Result<Value> {
    let inputs: Vec<_> = subjects::stage_inputs(&a.stage)
        .into_iter()
        .filter(|i| i.stream == subjects::STREAM_EVENTS)
        .collect();
    for input in &inputs {
        raw.delete_consumer(input.stream, input.consumer).await?;
    }
    env.ok(&["setup"])?;
    let total = raw.backlog(&inputs).await?;
    let mut procs = Vec::new();
    for _ in 0..k {
        procs.push(spawn(env, &a.stage, loops, dir).await?);
    }
    let cpu0: Vec<f64> = procs
        .iter()
        .map(|p| cpu_seconds(p.0.id()).unwrap_or(0.0))
        .collect();
    let started = Instant::now();
    let mut timeline: Vec<(f64, u64)> = Vec::new();
    let mut last_change = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let left = raw.backlog(&inputs).await?;
        let done = total.saturating_sub(left);
        if timeline.last().is_none_or(|l| l.1 != done) {
            last_change = Instant::now();
        }
        timeline.push((started.elapsed().as_secs_f64(), done));
        if left == 0 {
            break;
        }
        if last_change.elapsed() > Duration::from_secs(60) {
            bail!("{}: no progress for 60 s ({left} of {total} left)", a.stage);
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let at = |q: f64| timeline.iter().find(|s| s.1 as f64 >= total as f64 * q);
    let rate = match (at(0.1), at(0.9)) {
        (Some(x), Some(y)) if y.0 > x.0 => (y.1 - x.1) as f64 / (y.0 - x.0),
        _ => total as f64 / wall,
    };
    let mut usage = Vec::new();
    for (p, c0) in procs.iter().zip(cpu0) {
        let cpu = cpu_seconds(p.0.id()).unwrap_or(0.0) - c0;
        let (rss, peak) = memory_mb(p.0.id());
        usage.push(json!({"cpu_pct": (cpu / wall * 100.0).round(), "rss_mb": round2(rss), "peak_rss_mb": round2(peak)}));
    }
    for p in &mut procs {
        stop(&mut p.0);
    }
    Ok(
        json!({"processes": k, "loops_per_process": loops, "events": total, "wall_s": round2(wall), "events_per_s": rate.round(), "per_process": usage}),
    )
}

/// A `whale run --stages <stage>` child on its own port and index directory, once ready.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn spawn(
    env: &ChildEnv,
    stage: &str,
    loops: usize,
    dir: &std::path::Path,
) -> anyhow::Result<Child> {
    let port = free_port();
    let child = env
        .cmd(&[
            "run",
            "--stages",
            stage,
            "--concurrency",
            &loops.to_string(),
        ])
        .env("WHALE_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("WHALE_INDEX_DIR", dir.join(format!("index-{port}")))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start whale run")?;
    let child = Child(child);
    wait_ready(port).await?;
    Ok(child)
}

/// SIGTERM (a clean stop: prefetched messages are given back), then wait.
fn stop(c: &mut std::process::Child) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &c.id().to_string()])
        .status();
    let _ = c.wait();
}

/// Event `i`: type `bench.tNNN`, `detail.sig` is what the regex rules look at (none matches).
fn event(a: &Args, i: usize) -> Value {
    json!({
        "id": format!("scale-{i:010}"),
        "event_type": format!("bench.t{:03}", i % a.types),
        "source": "whale-bench",
        "detail": {"host": format!("web-{}", i % 500), "code": -1, "env": "prod",
                   "usage_pct": 50 + (i % 50), "sig": format!("s{:0>60}", i % 9973),
                   "msg": ["bench event", "generated"]},
        "labels": {"team": "bench"}
    })
}

/// `rules / types` rules per type, rule j: `detail.sig` (61 characters) matches `^s0*<j>[a-z]$`
/// (never true: it ends in a digit), a test the rule index cannot narrow and that reads the whole
/// value, so each event is checked against every rule of its type.
fn write_regex_rules(dir: &std::path::Path, rules: usize, types: usize) -> anyhow::Result<()> {
    write_rules_per_type(dir, "scale", rules, types, |t, j| {
        format!(
            "- name: scale-t{t:03}-r{j:04}\n  on: [bench.t{t:03}]\n  when:\n    - {{ path: .detail.sig, regex: \"^s0*{j}[a-z]$\" }}\n  action: core.local\n  params:\n    cmd: \"echo {{{{ .detail.host }}}}\"\n"
        )
    })
}

/// `rules / types` rules per type, rule j: a jq predicate that computes a number from
/// `detail.usage_pct` and `detail.code` and compares it with `j` (never true: `detail.code` is -1), so each event runs every rule's
/// program of its type; the compiled form is small, so the work stays in the CPU's caches.
fn write_jq_rules(dir: &std::path::Path, rules: usize, types: usize) -> anyhow::Result<()> {
    write_rules_per_type(dir, "scale", rules, types, |t, j| {
        format!(
            "- name: scale-t{t:03}-r{j:04}\n  on: [bench.t{t:03}]\n  when:\n    - jq: '(.detail.usage_pct * 7 + .detail.code) % 1000 == {j} and .detail.code > 0'\n  action: core.local\n  params:\n    cmd: \"echo {{{{ .detail.host }}}}\"\n"
        )
    })
}

fn progress(a: &Args, msg: &str) {
    if !a.json {
        eprintln!("bench scale: {msg}");
    }
}

fn print_human(r: &Value) {
    println!(
        "scale bench: stage {}, {} events, {} rules over {} types ({}), nats-server {}",
        r["stage"].as_str().unwrap_or(""),
        r["events"],
        r["rules"],
        r["types"],
        r["rule_shape"].as_str().unwrap_or(""),
        r["nats_server"]
    );
    println!(
        "  raw JetStream consume+ack (same server)  {:>10} msg/s",
        r["raw_consume_ack_per_s"]
    );
    for round in r["rounds"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        println!(
            "  {} process(es) × {} loop(s)                {:>10} events/s  (cpu % / rss MB per process: {})",
            round["processes"],
            round["loops_per_process"],
            round["events_per_s"],
            round["per_process"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|p| format!("{}% / {}", p["cpu_pct"], p["rss_mb"]))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!(
        "  scale factor, processes                  {:>10} ×",
        r["scale_factor"]
    );
    println!(
        "  scale factor, loops in one process       {:>10} ×  (--concurrency)",
        r["concurrency_scale_factor"]
    );
    let re = &r["in_process_reference"];
    if re.is_object() {
        println!("  reference: the same parse+match in this process, no NATS");
        println!(
            "    1 thread                               {:>10} events/s",
            re["one_thread_events_per_s"]
        );
        println!(
            "    {} threads, one compiled rule set       {:>10} events/s  {} ×",
            re["threads"], re["shared_set_events_per_s"], re["shared_set_scale_factor"]
        );
        println!(
            "    {} threads, a rule set each (as processes) {:>7} events/s  {} ×  (the ceiling for copies)",
            re["threads"], re["own_sets_events_per_s"], re["own_sets_scale_factor"]
        );
    }
}

//! The chaos run (docs/contract.md "Reliability targets"): the whole pipeline as separate
//! `whale run --stages <stage>` processes (some stages twice) against real nats-server,
//! redis-server and the StackStorm emulator, fed a steady stream of events with known ids while a
//! driver kills a random worker with -9 every second or two (every stage at least once, some
//! dispatch workers also die by the failpoint right after creating an execution), restarts
//! nats-server and redis-server, and makes StackStorm answer 500s and drop connections for a while.
//! Once the publisher is done and the pipeline has drained, the counts must be exact: every valid
//! event accepted and indexed once, every invalid one rejected once, one StackStorm execution per
//! task (counted and listed on the emulator), and every throttle limit held.
//!
//! Short by default (~45 s of events, a few minutes in all). Longer runs:
//!
//! ```text
//! WHALE_CHAOS=long       cargo test --test it chaos:: -- --nocapture   # ~12 min of events
//! WHALE_CHAOS_SECS=300   cargo test --test it chaos:: -- --nocapture   # N seconds of events
//! WHALE_CHAOS_RATE=400   events per second (default 100)
//! WHALE_CHAOS_KEEP=1     keep the workers' logs (the directory is printed)
//! ```
//!
//! Redis runs with an fsynced append-only file: the throttle's buckets must survive a Redis
//! restart, and production Redis must be run the same way (`appendonly yes`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use whale_kernel::subjects::{Pipe, STREAM_EVENTS, STREAM_PIPE};
use whale_kernel::testkit::RedisServer;
use whale_kernel::{Nats, Output};

use crate::harness::*;

/// Hosts the throttled rule keys on, apps the once-within rule keys on.
const HOSTS: usize = 40;
const APPS: usize = 6;
/// `chaos-limited` admits this many tasks per host per hour.
const LIMIT: usize = 3;
/// Events per index query (the search answers at most 10,000 hits): one `source` per batch.
const BATCH: usize = 5_000;

const RULES: &str = r#"
- name: chaos-every
  description: one execution for every hot production disk event
  on: [vm.disk_usage]
  when:
    - { path: .detail.env, eq: prod }
    - { path: .detail.usage_pct, gt: 90 }
  action: chaos.every
  params:
    host: "{{ .detail.host }}"
    event: "{{ .id }}"
- name: chaos-limited
  description: at most 3 per host per hour
  on: [vm.disk_usage]
  when:
    - { path: .detail.env, eq: prod }
    - { path: .detail.usage_pct, gt: 90 }
  action: chaos.limited
  params:
    host: "{{ .detail.host }}"
  throttle: { key: "{{ .detail.host }}", limit: 3, per: 1h }
- name: chaos-once
  description: once per app per hour
  on: [vm.disk_usage]
  when:
    - { path: .detail.env, eq: prod }
    - { path: .detail.usage_pct, gt: 90 }
  action: chaos.once
  params:
    app: "{{ .detail.app }}"
  throttle: { key: "{{ .detail.app }}", limit: 1, per: 1h, mode: once_within }
"#;

/// Retries fast enough for a test; a fault window must not turn tasks into dead letters.
const DISPATCH: &str = r#"[dispatch]
backoff_base = "100ms"
backoff_max = "1s"
breaker_cooldown = "1s"
wait_retry = "300ms"
request_timeout = "2s"
max_attempts = 100
"#;

/// The stages and how many copies of each run (the embedded index has one writer).
const STAGES: &[(&str, usize)] = &[
    ("validate", 2),
    ("index", 1),
    ("match", 2),
    ("render", 1),
    ("throttle", 2),
    ("dispatch", 2),
    ("feedback", 1),
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fate {
    /// Accepted, fires the three rules.
    Fires,
    /// Accepted, matches nothing.
    Quiet,
    /// Rejected (schema violation or a type without a schema).
    Rejected,
}

struct Event {
    /// The envelope id, or for an event sent without one, its `Nats-Msg-Id` (validate derives
    /// the id from the ingest stream sequence).
    id: String,
    has_id: bool,
    subject: String,
    body: Value,
    fate: Fate,
    host: String,
    app: String,
}

/// Source of the events sent without an id (one index query finds them all).
const NO_ID: &str = "chaos_noid";

fn event(i: usize) -> Event {
    let id = format!("chaos-{i:07}");
    let source = format!("chaos_b{}", i / BATCH);
    let host = format!("web-{}", (i * 7 + i / 10) % HOSTS);
    let app = format!("app{}", (i / 3) % APPS);
    if i % 20 == 19 {
        return Event {
            id: format!("noid-{i:07}"),
            has_id: false,
            subject: "whale.in.generic".into(),
            body: json!({"source": NO_ID, "detail": {"message": format!("noid {i}")}}),
            fate: Fate::Quiet,
            host,
            app,
        };
    }
    let detail =
        |env: &str, pct: Value| json!({"host": host, "usage_pct": pct, "env": env, "app": app});
    let (ty, detail, fate) = match i % 10 {
        0..=4 => ("vm.disk_usage", detail("prod", json!(95)), Fate::Fires),
        5 => ("vm.disk_usage", detail("prod", json!(50)), Fate::Quiet),
        6 => ("vm.disk_usage", detail("dev", json!(99)), Fate::Quiet),
        7 => (
            "generic",
            json!({"message": format!("chaos {i}"), "severity": "info"}),
            Fate::Quiet,
        ),
        8 => (
            "vm.disk_usage",
            detail("prod", json!("high")),
            Fate::Rejected,
        ),
        _ => ("chaos.unknown", json!({"n": i}), Fate::Rejected),
    };
    Event {
        subject: format!("whale.in.{ty}"),
        body: json!({"id": id, "event_type": ty, "source": source, "detail": detail}),
        id,
        has_id: true,
        fate,
        host,
        app,
    }
}

/// How long events are published: `WHALE_CHAOS_SECS`, else `WHALE_CHAOS=long`, else short.
fn publish_secs() -> u64 {
    if let Some(s) = std::env::var("WHALE_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return s;
    }
    match std::env::var("WHALE_CHAOS").as_deref() {
        Ok("long") => 720,
        _ => 45,
    }
}

/// Events published per second: `WHALE_CHAOS_RATE`, else 100.
fn rate() -> usize {
    std::env::var("WHALE_CHAOS_RATE")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|r| *r >= 10)
        .unwrap_or(100)
}

/// A random number in `range` (std only: the seed of a fresh `RandomState`).
fn random(range: std::ops::Range<u64>) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    range.start + r % (range.end - range.start)
}

/// One worker process, started again after each kill on the same port and log.
struct Proc {
    stage: &'static str,
    port: u16,
    log: PathBuf,
    worker: Worker,
    /// Started with the dispatch failpoint: it will kill itself, which is expected.
    failpoint: bool,
    kills: u32,
}

impl Proc {
    fn spawn(&mut self, env: &Env, failpoint: Option<u64>) {
        let after = failpoint.map(|n| n.to_string());
        let extra: Vec<(&str, &str)> = after
            .iter()
            .map(|n| (whale_dispatch::stage::KILL_AFTER_ENV, n.as_str()))
            .collect();
        self.worker = env.spawn_on(self.stage, self.port, &self.log, &extra);
        self.failpoint = failpoint.is_some();
    }

    fn name(&self) -> String {
        format!("{}:{}", self.stage, self.port)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

/// Publishes events `0..n` at `rate` a second to `whale.in.<type>` with msg id = event id; each one is
/// retried until JetStream acknowledges it (NATS restarts on the way). Events published more
/// than once go into `retried`.
async fn publish(
    nats: Nats,
    n: usize,
    rate: usize,
    retries: Arc<AtomicU64>,
    retried: Arc<Mutex<BTreeSet<usize>>>,
) {
    let tick = Duration::from_millis(100);
    let per_tick = rate / 10;
    let mut next = Instant::now();
    for start in (0..n).step_by(per_tick) {
        let batch = (start..(start + per_tick).min(n)).map(|i| {
            let nats = nats.clone();
            let retries = retries.clone();
            let retried = retried.clone();
            async move {
                let ev = event(i);
                let payload = bytes::Bytes::from(serde_json::to_vec(&ev.body).unwrap());
                loop {
                    let out = Output::new(ev.subject.clone(), ev.id.clone(), payload.clone());
                    if nats.publish(out).await.is_ok() {
                        return;
                    }
                    retries.fetch_add(1, Ordering::Relaxed);
                    retried.lock().unwrap().insert(i);
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        });
        futures::future::join_all(batch).await;
        next += tick;
        tokio::time::sleep_until(next.into()).await;
    }
}

/// What the driver did.
#[derive(Default, Debug)]
struct Chaos {
    kills: u32,
    failpoint_deaths: u32,
    nats_restarts: u32,
    redis_restarts: u32,
    fault_windows: u32,
    /// Workers that exited without being killed: each one is a bug.
    unexpected_deaths: Vec<String>,
}

/// Restarts every process that ended by itself; a failpoint death is expected, any other is
/// recorded.
fn revive(procs: &mut [Proc], env: &Env, chaos: &mut Chaos) {
    for p in procs.iter_mut() {
        if let Some(status) = p.worker.exited() {
            if p.failpoint {
                chaos.failpoint_deaths += 1;
            } else {
                chaos.unexpected_deaths.push(format!(
                    "{} exited by itself ({status}); log tail:\n{}",
                    p.name(),
                    p.log_tail()
                ));
            }
            p.spawn(env, None);
        }
    }
}

/// Stage consumers that still hold work (pending or un-acked), by name.
async fn busy_consumers(nats: &Nats) -> BTreeMap<String, (u64, usize)> {
    let mut out = BTreeMap::new();
    for s in [
        whale_kernel::subjects::STREAM_INGEST,
        STREAM_EVENTS,
        STREAM_PIPE,
    ] {
        let Ok(infos) = nats.consumers(s).await else {
            out.insert(format!("{s}?"), (0, 0));
            continue;
        };
        // The embedded index reads through ordered consumers of its own (`index-*_own_*`),
        // not its durable ones.
        let own: Vec<String> = infos
            .iter()
            .filter_map(|i| {
                i.name
                    .split_once(whale_kernel::subjects::OWN_READER)
                    .map(|(d, _)| d.to_owned())
            })
            .collect();
        for info in infos {
            let own_reader = info.name.contains(whale_kernel::subjects::OWN_READER);
            if (info.config.durable_name.is_none() && !own_reader) || own.contains(&info.name) {
                continue;
            }
            if info.num_pending > 0 || info.num_ack_pending > 0 {
                out.insert(info.name.clone(), (info.num_pending, info.num_ack_pending));
            }
        }
    }
    out
}

/// Ids of documents of `kind` from one source, via the index worker's `GET /v1/events`.
async fn indexed(port: u16, source: &str, kind: &str) -> Option<Vec<String>> {
    let url =
        format!("http://127.0.0.1:{port}/v1/events?q=source:{source}&kind={kind}&limit=10000");
    let v: Value = reqwest::get(&url).await.ok()?.json().await.ok()?;
    let hits = v["hits"].as_array()?;
    assert_eq!(
        hits.len() as u64,
        v["total"].as_u64()?,
        "a batch fits in one page"
    );
    Some(
        hits.iter()
            .map(|h| h["event_id"].as_str().unwrap_or("?").to_owned())
            .collect(),
    )
}

/// Number of accepted events in the index.
async fn indexed_total(port: u16) -> u64 {
    let url = format!("http://127.0.0.1:{port}/v1/events?kind=event&limit=1");
    match reqwest::get(&url).await {
        Ok(r) => r
            .json::<Value>()
            .await
            .map_or(0, |v| v["total"].as_u64().unwrap_or(0)),
        Err(_) => 0,
    }
}

fn dups<'a>(ids: impl IntoIterator<Item = &'a str>) -> (BTreeSet<String>, usize) {
    let mut set = BTreeSet::new();
    let mut dup = 0;
    for id in ids {
        if !set.insert(id.to_owned()) {
            dup += 1;
        }
    }
    (set, dup)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_kill9_and_server_restarts_lose_nothing_and_double_nothing() {
    let secs = publish_secs();
    let rate = rate();
    let n = secs as usize * rate;
    let events: Vec<Event> = (0..n).map(event).collect();
    let dir = tempfile::Builder::new()
        .prefix("whale-chaos")
        .tempdir()
        .unwrap();
    let emu = Emulator::start(&["--any-action"]);
    let mut redis = RedisServer::start_persistent();
    let mut env = Env::new();
    env.prepare_pipeline(
        dir.path(),
        DISPATCH,
        &redis.url(),
        &emu.url,
        &[("chaos.yaml", RULES)],
    );

    let mut procs: Vec<Proc> = Vec::new();
    for (stage, copies) in STAGES {
        for c in 0..*copies {
            let port = free_port();
            let log = dir.path().join(format!("{stage}-{c}.log"));
            let worker = env.spawn_on(stage, port, &log, &[]);
            procs.push(Proc {
                stage,
                port,
                log,
                worker,
                failpoint: false,
                kills: 0,
            });
        }
    }
    for p in &procs {
        assert!(
            ready(p.port, Duration::from_secs(60)).await,
            "{} not ready; log:\n{}",
            p.name(),
            p.log_tail()
        );
    }
    let index_port = procs.iter().find(|p| p.stage == "index").unwrap().port;

    // The publisher runs on its own; the driver below makes the weather.
    let nats = env.connect().await;
    let retries = Arc::new(AtomicU64::new(0));
    let retried = Arc::new(Mutex::new(BTreeSet::new()));
    let publisher = tokio::spawn(publish(
        nats.clone(),
        n,
        rate,
        retries.clone(),
        retried.clone(),
    ));
    let began = Instant::now();
    let mut chaos = Chaos::default();
    // Server faults, once per cycle of about three minutes, at fixed points of the cycle.
    let cycles = (secs / 180).max(1);
    let cycle = Duration::from_secs(secs) / cycles as u32;
    let mut next_server_fault = 0usize;
    let server_faults = ["nats", "emulator-500", "redis", "emulator-refuse"];
    let at = |k: usize| {
        let c = (k / server_faults.len()) as u32;
        let f = [0.3, 0.4, 0.55, 0.75][k % server_faults.len()];
        cycle * c + cycle.mul_f64(f)
    };
    // Every process is killed once, in a random order, before kills go random.
    let mut order: Vec<usize> = (0..procs.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, random(0..i as u64 + 1) as usize);
    }
    let mut kill_no = 0usize;
    while !publisher.is_finished() {
        tokio::time::sleep(Duration::from_millis(random(1000..2000))).await;
        revive(&mut procs, &env, &mut chaos);
        while next_server_fault < cycles as usize * server_faults.len()
            && began.elapsed() >= at(next_server_fault)
        {
            match server_faults[next_server_fault % server_faults.len()] {
                "nats" => {
                    // Down for a few seconds; a worker that crashes meanwhile starts again into
                    // the outage.
                    env.nats.stop();
                    tokio::time::sleep(Duration::from_millis(random(300..1500))).await;
                    let k = random(0..procs.len() as u64) as usize;
                    procs[k].worker.kill9();
                    procs[k].kills += 1;
                    chaos.kills += 1;
                    procs[k].spawn(&env, None);
                    tokio::time::sleep(Duration::from_millis(random(500..2500))).await;
                    env.nats.restart();
                    chaos.nats_restarts += 1;
                }
                "redis" => {
                    redis.stop();
                    tokio::time::sleep(Duration::from_millis(random(200..1500))).await;
                    redis.start_again();
                    chaos.redis_restarts += 1;
                }
                "emulator-500" => {
                    emu.fault(json!({"http_500": {"for_ms": 4000}})).await;
                    chaos.fault_windows += 1;
                }
                _ => {
                    emu.fault(json!({"refuse": {"for_ms": 2500}})).await;
                    chaos.fault_windows += 1;
                }
            }
            next_server_fault += 1;
        }
        let k = match order.get(kill_no) {
            Some(k) => *k,
            None => random(0..procs.len() as u64) as usize,
        };
        kill_no += 1;
        // Now and then every copy of the stage goes down together: its work piles up.
        let stage = procs[k].stage;
        let victims: Vec<usize> = match random(0..4) {
            0 => (0..procs.len())
                .filter(|i| procs[*i].stage == stage)
                .collect(),
            _ => vec![k],
        };
        for &v in &victims {
            procs[v].worker.kill9();
            procs[v].kills += 1;
            chaos.kills += 1;
        }
        if random(0..2) == 0 {
            tokio::time::sleep(Duration::from_millis(random(0..800))).await;
        }
        for &v in &victims {
            // A third of the new dispatch workers die right after creating an execution,
            // before recording it: the crash the claim protocol exists for.
            let failpoint = (stage == "dispatch" && random(0..3) == 0).then(|| random(3..40));
            procs[v].spawn(&env, failpoint);
        }
    }
    publisher.await.unwrap();
    // Calm: the failpoint workers are replaced by clean ones, every worker runs.
    revive(&mut procs, &env, &mut chaos);
    for p in procs.iter_mut().filter(|p| p.failpoint) {
        p.worker.kill9();
        p.spawn(&env, None);
    }
    let published_in = began.elapsed();
    for p in &procs {
        assert!(
            ready(p.port, Duration::from_secs(120)).await,
            "{} not ready after the chaos; log:\n{}",
            p.name(),
            p.log_tail()
        );
    }

    // What must come out.
    let valid: BTreeSet<&str> = events
        .iter()
        .filter(|e| e.fate != Fate::Rejected && e.has_id)
        .map(|e| e.id.as_str())
        .collect();
    let no_id: BTreeSet<String> = events
        .iter()
        .filter(|e| !e.has_id)
        .map(|e| e.body["detail"]["message"].as_str().unwrap().to_owned())
        .collect();
    let accepted = (valid.len() + no_id.len()) as u64;
    let rejected: BTreeSet<&str> = events
        .iter()
        .filter(|e| e.fate == Fate::Rejected)
        .map(|e| e.id.as_str())
        .collect();
    let fires: Vec<&Event> = events.iter().filter(|e| e.fate == Fate::Fires).collect();
    let mut per_host: BTreeMap<&str, usize> = BTreeMap::new();
    let mut per_app: BTreeMap<&str, usize> = BTreeMap::new();
    for e in &fires {
        *per_host.entry(e.host.as_str()).or_default() += 1;
        *per_app.entry(e.app.as_str()).or_default() += 1;
    }
    let limited: usize = per_host.values().map(|c| (*c).min(LIMIT)).sum();
    let once = per_app.len();
    let expected = fires.len() + limited + once;
    let throttled = 2 * fires.len() - limited - once;

    // Drained: every durable consumer empty, every count reached.
    let drained = eventually(Duration::from_secs(600 + secs), || async {
        busy_consumers(&nats).await.is_empty()
            && count(&nats, STREAM_EVENTS, "whale.events.>").await >= accepted
            && count(&nats, STREAM_EVENTS, "whale.rejected.>").await >= rejected.len() as u64
            && emu.created().await >= expected as u64
            && count(&nats, STREAM_PIPE, &Pipe::Result.subject()).await >= expected as u64
            && indexed_total(index_port).await >= accepted
    })
    .await;
    let drain_time = began.elapsed() - published_in;
    if !drained {
        revive(&mut procs, &env, &mut chaos);
        eprintln!(
            "chaos: not drained: consumers {:?}, accepted {}/{}, rejected {}/{}, executions {}/{}, results {}/{}, {} workers died by themselves",
            busy_consumers(&nats).await,
            count(&nats, STREAM_EVENTS, "whale.events.>").await,
            accepted,
            count(&nats, STREAM_EVENTS, "whale.rejected.>").await,
            rejected.len(),
            emu.created().await,
            expected,
            count(&nats, STREAM_PIPE, &Pipe::Result.subject()).await,
            expected,
            chaos.unexpected_deaths.len(),
        );
    }
    // Anything late shows up now rather than after the counts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    revive(&mut procs, &env, &mut chaos);

    // Accepted and rejected events, on the stream, by id.
    let acc = read_all(&nats, STREAM_EVENTS, "whale.events.>").await;
    let (with_id, without): (Vec<&Value>, Vec<&Value>) =
        acc.iter().partition(|e| e["source"] != NO_ID);
    let (acc_ids, acc_dups) = dups(with_id.iter().map(|e| e["id"].as_str().unwrap_or("?")));
    // Sent without an id: validate derived one from the ingest sequence, which a redelivery
    // keeps. Only a producer's own retry (a second publish) may make a second event.
    let (noid_ids, _) = dups(without.iter().map(|e| e["id"].as_str().unwrap_or("?")));
    let mut noid_msgs: BTreeMap<String, usize> = BTreeMap::new();
    for e in &without {
        *noid_msgs
            .entry(e["detail"]["message"].as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
    }
    let retried = retried.lock().unwrap().clone();
    let noid_doubled: Vec<&String> = noid_msgs
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(m, _)| m)
        .collect();
    let noid_dups = noid_doubled
        .iter()
        .filter(|m| {
            let i: usize = m.trim_start_matches("noid ").parse().unwrap_or(usize::MAX);
            !retried.contains(&i)
        })
        .count();
    let rej = read_all(&nats, STREAM_EVENTS, "whale.rejected.>").await;
    let (rej_ids, rej_dups) = dups(rej.iter().map(|e| e["id"].as_str().unwrap_or("?")));
    // The index, by id.
    let mut ix_events = Vec::new();
    let mut ix_rejected = Vec::new();
    for b in 0..n.div_ceil(BATCH) {
        let source = format!("chaos_b{b}");
        ix_events.extend(indexed(index_port, &source, "event").await.expect("search"));
        ix_rejected.extend(
            indexed(index_port, &source, "rejected")
                .await
                .expect("search"),
        );
    }
    let ix_noid = indexed(index_port, NO_ID, "event").await.expect("search");
    let (ix_noid_ids, ix_noid_dups) = dups(ix_noid.iter().map(String::as_str));
    let (ix_ids, ix_dups) = dups(ix_events.iter().map(String::as_str));
    let (ixr_ids, ixr_dups) = dups(ix_rejected.iter().map(String::as_str));
    // StackStorm's side: the count, and every execution by whale task id.
    let created = emu.created().await;
    let execs = emu.executions().await;
    let (task_ids, exec_dups) = dups(
        execs
            .iter()
            .map(|x| x["context"]["whale"]["task_id"].as_str().unwrap_or("?")),
    );
    let mut by_rule: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
    for x in &execs {
        by_rule
            .entry(x["context"]["whale"]["rule"].as_str().unwrap_or("?"))
            .or_default()
            .push(x);
    }
    let (every_events, _) = dups(
        by_rule
            .get("chaos-every")
            .into_iter()
            .flatten()
            .map(|x| x["context"]["whale"]["event_id"].as_str().unwrap_or("?")),
    );
    let mut limited_by_host: BTreeMap<String, usize> = BTreeMap::new();
    for x in by_rule.get("chaos-limited").into_iter().flatten() {
        *limited_by_host
            .entry(x["parameters"]["host"].as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
    }
    let mut once_by_app: BTreeMap<String, usize> = BTreeMap::new();
    for x in by_rule.get("chaos-once").into_iter().flatten() {
        *once_by_app
            .entry(x["parameters"]["app"].as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
    }
    // whale's own records of it.
    let dispatched = read_all(&nats, STREAM_PIPE, &Pipe::Dispatched.subject()).await;
    let (_, disp_dups) = dups(
        dispatched
            .iter()
            .map(|r| r["task"]["task_id"].as_str().unwrap_or("?")),
    );
    let results = read_all(&nats, STREAM_PIPE, &Pipe::Result.subject()).await;
    let (result_ids, _) = dups(
        results
            .iter()
            .map(|r| r["task"]["task_id"].as_str().unwrap_or("?")),
    );
    let throttled_recs = read_all(&nats, STREAM_PIPE, &Pipe::Throttled.subject()).await;
    let (thr_ids, thr_dups) = dups(
        throttled_recs
            .iter()
            .map(|r| r["task"]["task_id"].as_str().unwrap_or("?")),
    );
    let dead = read_all(&nats, STREAM_PIPE, &Pipe::DeadLetter.subject()).await;
    let duplicates = acc_dups
        + noid_dups
        + rej_dups
        + ix_dups
        + ixr_dups
        + ix_noid_dups
        + exec_dups
        + disp_dups
        + thr_dups;

    let stages_killed: BTreeSet<&str> = procs
        .iter()
        .filter(|p| p.kills > 0)
        .map(|p| p.stage)
        .collect();
    eprintln!(
        "chaos: {n} sent, {} accepted ({} without an id), {} rejected, {} indexed, {created} executions (expected {expected}), \
         {} kills (+{} by the dispatch failpoint) over {} of {} stages, nats restarted {}, redis restarted {}, \
         emulator faults {} windows, {duplicates} duplicates, {} dead letters, {} publish retries ({} id-less events doubled by them); \
         published in {:.0?}, drained in {:.0?}",
        acc_ids.len() + noid_ids.len(),
        noid_ids.len(),
        rej_ids.len(),
        ix_ids.len() + ix_noid_ids.len(),
        chaos.kills,
        chaos.failpoint_deaths,
        stages_killed.len(),
        STAGES.len(),
        chaos.nats_restarts,
        chaos.redis_restarts,
        chaos.fault_windows,
        dead.len(),
        retries.load(Ordering::Relaxed),
        noid_doubled.len() - noid_dups,
        published_in,
        drain_time,
    );
    if std::env::var_os("WHALE_CHAOS_KEEP").is_some() {
        eprintln!("chaos: logs kept in {}", dir.keep().display());
    }

    assert!(
        chaos.unexpected_deaths.is_empty(),
        "workers died without being killed:\n{}",
        chaos.unexpected_deaths.join("\n\n")
    );
    assert!(drained, "the pipeline did not drain (see above)");
    assert_eq!(stages_killed.len(), STAGES.len(), "every stage was killed");
    assert!(chaos.nats_restarts >= 1 && chaos.redis_restarts >= 1);
    // Events: none lost, none doubled, none misjudged.
    let valid_set: BTreeSet<String> = valid.iter().map(|s| s.to_string()).collect();
    let rejected_set: BTreeSet<String> = rejected.iter().map(|s| s.to_string()).collect();
    assert_eq!(acc_dups, 0, "an accepted event was recorded twice");
    assert_eq!(acc_ids, valid_set, "accepted events");
    assert_eq!(
        noid_msgs.keys().cloned().collect::<BTreeSet<_>>(),
        no_id,
        "events sent without an id"
    );
    assert_eq!(
        noid_dups, 0,
        "an event sent once without an id was accepted twice: {noid_doubled:?}"
    );
    assert_eq!(rej_dups, 0, "a rejection was recorded twice");
    assert_eq!(rej_ids, rejected_set, "rejected events");
    assert_eq!((ix_dups, ixr_dups), (0, 0), "an event was indexed twice");
    assert_eq!(ix_ids, valid_set, "indexed events");
    assert_eq!(ixr_ids, rejected_set, "indexed rejections");
    assert_eq!(ix_noid_dups, 0, "an event without id was indexed twice");
    assert_eq!(ix_noid_ids, noid_ids, "indexed events sent without an id");
    // Executions: exactly one per task, on StackStorm's side.
    assert_eq!(exec_dups, 0, "a task made two StackStorm executions");
    assert_eq!(created, expected as u64, "executions created");
    assert_eq!(execs.len(), expected, "executions listed");
    let fire_ids: BTreeSet<String> = fires.iter().map(|e| e.id.clone()).collect();
    assert_eq!(
        every_events, fire_ids,
        "chaos-every: one execution per event"
    );
    for (host, n) in &per_host {
        assert_eq!(
            limited_by_host.get(*host).copied().unwrap_or(0),
            (*n).min(LIMIT),
            "chaos-limited on {host}: the limit held ({n} events)"
        );
    }
    assert_eq!(limited_by_host.len(), per_host.len());
    for app in per_app.keys() {
        assert_eq!(once_by_app.get(*app), Some(&1), "chaos-once on {app}");
    }
    assert_eq!(once_by_app.len(), per_app.len());
    // whale's records agree: every task dispatched once, followed to a result, or throttled.
    assert!(dead.is_empty(), "dead letters: {dead:?}");
    assert_eq!(disp_dups, 0, "a task was recorded as dispatched twice");
    assert_eq!(dispatched.len(), expected, "dispatched records");
    assert_eq!(result_ids, task_ids, "one result per execution");
    assert_eq!(thr_dups, 0, "a task was throttled twice");
    assert_eq!(thr_ids.len(), throttled, "throttled records");
    assert!(
        thr_ids.is_disjoint(&task_ids),
        "a task both ran and was throttled"
    );
}
